//! Dialogs (RFC 3261 12): state from the dialog-creating exchange, checks on
//! in-dialog requests, and construction of in-dialog requests (BYE,
//! re-INVITE, ACK for a 2xx).
//!
//! Guarantees: the route set is taken from Record-Route (reversed for the
//! UAC) and never changed afterwards (RFC 3261 12.2); target refreshes
//! (re-INVITE, UPDATE and their 2xx) update the remote target; remote CSeq
//! numbers must increase (ACK and CANCEL excepted), otherwise
//! [`DialogError::OutOfOrder`] (answer 500); our CSeq increases by one per
//! request and never wraps past 2^31 - 1. Strict (non-`lr`) first routes
//! are handled as RFC 3261 12.2.1.1 says.

use thiserror::Error;

use super::message::{Contact, Message, ParseError};
use super::uri::{Method, NameAddr, SipUri, Via};

/// Why a message cannot create or continue a dialog.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DialogError {
    /// A header needed for the dialog is missing or invalid.
    #[error("invalid dialog message: {0}")]
    Message(#[from] ParseError),
    /// The message has no usable Contact (remote target).
    #[error("no Contact for the remote target")]
    NoContact,
    /// The remote side did not tag its From/To.
    #[error("missing dialog tag")]
    NoTag,
    /// The request's CSeq is not above the last one seen (answer 500).
    #[error("CSeq out of order")]
    OutOfOrder,
    /// The message belongs to another dialog.
    #[error("message does not match this dialog")]
    Mismatch,
    /// Our CSeq space is exhausted.
    #[error("CSeq exhausted")]
    CSeqExhausted,
}

/// The three values that identify a dialog.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DialogId {
    /// Call-ID.
    pub call_id: String,
    /// Our tag.
    pub local_tag: String,
    /// The peer's tag.
    pub remote_tag: String,
}

/// Early (after a tagged 1xx) or confirmed (after a 2xx).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DialogState {
    /// Created by a provisional response.
    Early,
    /// Created or confirmed by a 2xx.
    Confirmed,
}

/// One dialog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dialog {
    /// Identity.
    pub id: DialogId,
    /// Early or confirmed.
    pub state: DialogState,
    /// Our URI with our tag (From in our requests).
    pub local: NameAddr,
    /// The peer's URI with its tag (To in our requests).
    pub remote: NameAddr,
    /// Our last CSeq.
    pub local_seq: u32,
    /// The peer's last CSeq, if it sent a request yet.
    pub remote_seq: Option<u32>,
    /// Where in-dialog requests go (the peer's Contact).
    pub remote_target: SipUri,
    /// Route set, in the order our requests carry it.
    pub route_set: Vec<NameAddr>,
    /// Our Contact, sent in target-refreshing requests.
    pub local_contact: SipUri,
}

fn first_contact(msg: &Message) -> Result<SipUri, DialogError> {
    match msg.contacts()?.into_iter().next() {
        Some(Contact::Addr(a)) => Ok(a.uri),
        _ => Err(DialogError::NoContact),
    }
}

fn is_target_refresh(m: &Method) -> bool {
    *m == Method::Invite || m.as_str() == "UPDATE"
}

impl Dialog {
    /// The UAS side: `req` is the INVITE we answer, `local_tag` the tag our
    /// response carries in To.
    pub fn uas(
        req: &Message,
        local_tag: &str,
        local_contact: SipUri,
        state: DialogState,
    ) -> Result<Dialog, DialogError> {
        let from = req.from()?;
        let remote_tag = from.tag().ok_or(DialogError::NoTag)?.to_string();
        let mut local = req.to()?;
        local.params.set("tag", Some(local_tag.to_string()));
        Ok(Dialog {
            id: DialogId {
                call_id: req.call_id()?.to_string(),
                local_tag: local_tag.to_string(),
                remote_tag,
            },
            state,
            local,
            remote: from,
            local_seq: 0,
            remote_seq: Some(req.cseq()?.seq),
            remote_target: first_contact(req)?,
            route_set: req.routes("Record-Route")?,
            local_contact,
        })
    }

    /// The UAC side: `req` is our INVITE, `resp` a tagged 1xx or a 2xx.
    pub fn uac(
        req: &Message,
        resp: &Message,
        local_contact: SipUri,
    ) -> Result<Dialog, DialogError> {
        let local = req.from()?;
        let remote = resp.to()?;
        let mut route_set = resp.routes("Record-Route")?;
        route_set.reverse();
        let state = match resp.code() {
            Some(c) if (200..300).contains(&c) => DialogState::Confirmed,
            _ => DialogState::Early,
        };
        Ok(Dialog {
            id: DialogId {
                call_id: req.call_id()?.to_string(),
                local_tag: local.tag().ok_or(DialogError::NoTag)?.to_string(),
                remote_tag: remote.tag().ok_or(DialogError::NoTag)?.to_string(),
            },
            state,
            local,
            remote,
            local_seq: req.cseq()?.seq,
            remote_seq: None,
            remote_target: first_contact(resp)?,
            route_set,
            local_contact,
        })
    }

    /// The dialog id of an incoming request (our tag is in To), for lookup.
    pub fn id_of_request(req: &Message) -> Option<DialogId> {
        Some(DialogId {
            call_id: req.call_id().ok()?.to_string(),
            local_tag: req.to().ok()?.tag()?.to_string(),
            remote_tag: req.from().ok()?.tag()?.to_string(),
        })
    }

    /// Checks and records an in-dialog request from the peer.
    pub fn on_request(&mut self, req: &Message) -> Result<(), DialogError> {
        if Self::id_of_request(req).as_ref() != Some(&self.id) {
            return Err(DialogError::Mismatch);
        }
        let cseq = req.cseq()?;
        if !matches!(cseq.method, Method::Ack | Method::Cancel) {
            if self.remote_seq.is_some_and(|s| cseq.seq <= s) {
                return Err(DialogError::OutOfOrder);
            }
            self.remote_seq = Some(cseq.seq);
        }
        if is_target_refresh(&cseq.method)
            && let Ok(uri) = first_contact(req)
        {
            self.remote_target = uri;
        }
        Ok(())
    }

    /// Records a response to one of our in-dialog requests (2xx confirms an
    /// early dialog; a 2xx to a target refresh updates the remote target).
    pub fn on_response(&mut self, resp: &Message) -> Result<(), DialogError> {
        let cseq = resp.cseq()?;
        let ok = resp.code().is_some_and(|c| (200..300).contains(&c));
        if ok {
            self.state = DialogState::Confirmed;
            if is_target_refresh(&cseq.method)
                && let Ok(uri) = first_contact(resp)
            {
                self.remote_target = uri;
            }
        }
        Ok(())
    }

    /// A new in-dialog request (BYE, re-INVITE, INFO, ...; not ACK, see
    /// [`Dialog::ack`]). `via` carries the new branch.
    pub fn request(&mut self, method: Method, via: &Via) -> Result<Message, DialogError> {
        if self.local_seq >= (1 << 31) - 1 {
            return Err(DialogError::CSeqExhausted);
        }
        self.local_seq += 1;
        let seq = self.local_seq;
        Ok(self.build(method, seq, via))
    }

    /// The ACK for a 2xx to our INVITE with CSeq number `invite_seq` (a new
    /// branch in `via`; sent outside any transaction).
    pub fn ack(&self, invite_seq: u32, via: &Via) -> Message {
        self.build(Method::Ack, invite_seq, via)
    }

    fn build(&self, method: Method, seq: u32, via: &Via) -> Message {
        // Loose routing: R-URI is the remote target. Strict first route:
        // R-URI is that route and the target goes last (RFC 3261 12.2.1.1).
        let (uri, routes): (SipUri, Vec<String>) = match self.route_set.first() {
            Some(first) if !first.uri.params.has("lr") => {
                let mut r: Vec<String> =
                    self.route_set[1..].iter().map(|n| n.to_string()).collect();
                r.push(format!("<{}>", self.remote_target));
                (first.uri.clone(), r)
            }
            _ => (
                self.remote_target.clone(),
                self.route_set.iter().map(|n| n.to_string()).collect(),
            ),
        };
        let refresh = is_target_refresh(&method);
        let mut m = Message::request(method.clone(), uri);
        m.headers.push("Via", via.to_string());
        m.headers.push("Max-Forwards", "70");
        for r in routes {
            m.headers.push("Route", r);
        }
        m.headers.push("From", self.local.to_string());
        m.headers.push("To", self.remote.to_string());
        m.headers.push("Call-ID", self.id.call_id.clone());
        m.headers.push("CSeq", format!("{seq} {method}"));
        if refresh {
            m.headers
                .push("Contact", format!("<{}>", self.local_contact));
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INVITE: &str = "INVITE sip:200@box.lan SIP/2.0\r\nVia: SIP/2.0/UDP 192.168.1.20:5060;branch=z9hG4bKp1\r\nRecord-Route: <sip:p1.lan;lr>, <sip:p2.lan;lr>\r\nFrom: \"Desk\" <sip:101@box.lan>;tag=ph\r\nTo: <sip:200@box.lan>\r\nCall-ID: call-1\r\nCSeq: 10 INVITE\r\nContact: <sip:101@192.168.1.20:5060>\r\nContent-Length: 0\r\n\r\n";

    fn via(branch: &str) -> Via {
        Via::parse(&format!(
            "SIP/2.0/UDP 192.168.1.2:5060;branch={branch};rport"
        ))
        .unwrap()
    }

    fn me() -> SipUri {
        SipUri::parse("sip:gw@192.168.1.2:5060").unwrap()
    }

    #[test]
    fn uas_dialog_bye_and_ordering() {
        let inv = Message::parse(INVITE.as_bytes()).unwrap();
        let mut d = Dialog::uas(&inv, "gw1", me(), DialogState::Confirmed).unwrap();
        assert_eq!(d.id.remote_tag, "ph");
        assert_eq!(d.route_set.len(), 2);
        let bye = d.request(Method::Bye, &via("z9hG4bKb1")).unwrap();
        let bye = Message::parse(&bye.encode()).unwrap();
        assert_eq!(
            bye.request_uri().unwrap().to_string(),
            "sip:101@192.168.1.20:5060"
        );
        assert_eq!(bye.to().unwrap().tag(), Some("ph"));
        assert_eq!(bye.from().unwrap().tag(), Some("gw1"));
        assert_eq!(bye.cseq().unwrap().seq, 1);
        let routes: Vec<_> = bye.headers.get_all("Route").collect();
        assert_eq!(routes, ["<sip:p1.lan;lr>", "<sip:p2.lan;lr>"]);
        // The phone's re-INVITE: higher CSeq, new Contact -> target refresh.
        let reinv = INVITE
            .replace("To: <sip:200@box.lan>", "To: <sip:200@box.lan>;tag=gw1")
            .replace("CSeq: 10", "CSeq: 11")
            .replace("192.168.1.20:5060>", "192.168.1.30:5060>");
        d.on_request(&Message::parse(reinv.as_bytes()).unwrap())
            .unwrap();
        assert_eq!(d.remote_target.host, "192.168.1.30");
        // Same CSeq again: out of order.
        assert_eq!(
            d.on_request(&Message::parse(reinv.as_bytes()).unwrap()),
            Err(DialogError::OutOfOrder)
        );
        // Another dialog's request.
        let other = reinv.replace("tag=gw1", "tag=zzz");
        assert_eq!(
            d.on_request(&Message::parse(other.as_bytes()).unwrap()),
            Err(DialogError::Mismatch)
        );
    }

    #[test]
    fn uac_dialog_ack_and_strict_route() {
        let inv = Message::parse(INVITE.as_bytes()).unwrap();
        let mut ok = Message::response_to(&inv, 200);
        ok.set_to_tag("callee");
        ok.headers.push("Contact", "<sip:200@192.168.1.40>");
        ok.headers.set("Record-Route", "<sip:strict.lan>");
        ok.headers.push("Record-Route", "<sip:loose.lan;lr>");
        let d = Dialog::uac(&inv, &ok, me()).unwrap();
        assert_eq!(d.state, DialogState::Confirmed);
        assert_eq!(d.id.remote_tag, "callee");
        // Reversed: loose first, so plain loose routing.
        assert_eq!(d.route_set[0].uri.host, "loose.lan");
        let ack = d.ack(10, &via("z9hG4bKa2"));
        assert_eq!(ack.cseq().unwrap().to_string(), "10 ACK");
        assert_eq!(ack.request_uri().unwrap().host, "192.168.1.40");
        // A strict first route: R-URI is the route, the target goes last.
        let mut s = d.clone();
        s.route_set.reverse();
        let mut s2 = s.clone();
        let bye = s2.request(Method::Bye, &via("z9hG4bKb3")).unwrap();
        assert_eq!(bye.request_uri().unwrap().host, "strict.lan");
        let routes: Vec<_> = bye.headers.get_all("Route").collect();
        assert_eq!(routes, ["<sip:loose.lan;lr>", "<sip:200@192.168.1.40>"]);
        assert_eq!(s2.local_seq, 11);
        // Re-INVITE carries our Contact.
        let re = s2.request(Method::Invite, &via("z9hG4bKr")).unwrap();
        assert_eq!(re.headers.get("Contact"), Some("<sip:gw@192.168.1.2:5060>"));
        // No tag in the response: no dialog.
        let untagged = Message::response_to(&inv, 180);
        assert_eq!(Dialog::uac(&inv, &untagged, me()), Err(DialogError::NoTag));
    }
}
