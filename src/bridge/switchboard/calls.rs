//! Call handling of the bridge: INVITE in both directions, answers, the
//! relay's call signals, media start and hang-up.

use super::{Action, Call, MAX_CALLS, MediaCmd, Origin, Ports, Switchboard};
use super::{to_phone_codec, to_sip_codec};
use crate::codec::CodecConfig;
use crate::media::dtmf::Digit;
use crate::media::leg::PhoneLegConfig;
use crate::proto::signal::{CallSignal, EndReason};
use crate::sip::dialog::{Dialog, DialogState};
use crate::sip::offer::{self, Codec, Direction, LocalMedia};
use crate::sip::sdp::Session;
use crate::sip::transaction::{TxKey, cancel_for};
use crate::sip::{Message, Method};
use crate::transport::link::LinkEvent;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// The phone legs' jitter buffer margin over the arrival jitter (both
/// directions): one tick of the media engine (`bridge::media::BASE_TICK`),
/// which reads a leg's packets and pops its buffer on the same tick.
pub const PHONE_JITTER_MIN: Duration = Duration::from_millis(10);

impl<P: Ports> Switchboard<P> {
    pub(super) fn local_media(&mut self, port: u16) -> LocalMedia {
        let id = u64::from(self.entropy.u32());
        LocalMedia {
            addr: self.advertise,
            port,
            session_id: id,
            session_version: id,
        }
    }

    pub(super) fn prefs(&self) -> Vec<Codec> {
        self.cfg.codecs.iter().map(|&c| to_sip_codec(c)).collect()
    }

    fn next_call_id(&mut self) -> (u32, u64) {
        self.next_call = self.next_call.wrapping_add(1) & 0x7fff_ffff;
        let up_flow = self.next_flow;
        self.next_flow += 1;
        (self.next_call, up_flow)
    }

    pub(super) fn on_invite(
        &mut self,
        now: Instant,
        key: TxKey,
        msg: Message,
        src: SocketAddr,
        reliable: bool,
        user: String,
    ) {
        let dialled = msg.request_uri().and_then(|u| u.user.clone()).filter(|d| {
            !d.is_empty()
                && d.len() <= 32
                && d.bytes()
                    .all(|b| b.is_ascii_digit() || b == b'*' || b == b'#')
        });
        let Some(dialled) = dialled else {
            self.respond(now, &key, &msg, 404);
            return;
        };
        if !self.relay_up {
            self.respond(now, &key, &msg, 480);
            return;
        }
        if self.calls.len() >= MAX_CALLS {
            self.respond(now, &key, &msg, 503);
            return;
        }
        if self.calls_of(&user) >= self.cfg.calls_per_extension {
            info!(ext = %user, "too many calls for this extension ([sip] calls_per_extension)");
            self.respond(now, &key, &msg, 486);
            return;
        }
        let Ok(offer_sdp) = Session::parse(&msg.body) else {
            self.respond(now, &key, &msg, 488);
            return;
        };
        let Some(pair) = self.ports.lease(now) else {
            warn!("no free RTP port pair; refusing the call ([sip] rtp_ports)");
            self.respond(now, &key, &msg, 503);
            return;
        };
        let local = self.local_media(P::port(&pair));
        let (answer, neg) = match offer::answer(&offer_sdp, &local, &self.prefs()) {
            Ok(x) => x,
            Err(e) => {
                debug!(error = %e, "offer refused");
                self.ports.release(pair, now);
                self.respond(now, &key, &msg, 488);
                return;
            }
        };
        let local_tag = self.new_tag();
        let dialog = Dialog::uas(
            &msg,
            &local_tag,
            self.local_uri(Some(&user)),
            DialogState::Early,
        )
        .ok();
        let (call, up_flow) = self.next_call_id();
        let up_ssrc = self.entropy.u32();
        info!(call, from = %user, to = %dialled, %src, codec = ?neg.codec, "call from a phone");
        let ext = user.clone();
        self.stats.calls += 1;
        self.signal(CallSignal::Setup {
            call,
            to: dialled,
            from: user,
            flow: up_flow,
            ssrc: up_ssrc,
        });
        self.calls.insert(
            call,
            Call {
                origin: Origin::Phone,
                relay_call: call,
                invite: key,
                our_invite: None,
                their_invite: Some(msg),
                phone: src,
                ext,
                ack: None,
                reliable,
                local_tag,
                dialog,
                negotiated: Some(neg),
                answer_sdp: Some(answer.encode()),
                pair: Some(pair),
                local,
                up_flow,
                up_ssrc,
                relay_flow: None,
                media: false,
                answered: false,
            },
        );
        self.update_active();
    }

    pub(super) fn on_reinvite(&mut self, now: Instant, key: TxKey, msg: Message) {
        let Some(c) = Dialog::id_of_request(&msg).and_then(|id| self.call_by_dialog(&id)) else {
            self.respond(now, &key, &msg, 481);
            return;
        };
        let prefs = self.prefs();
        let call = self.calls.get_mut(&c).expect("indexed");
        if let Some(d) = call.dialog.as_mut()
            && d.on_request(&msg).is_err()
        {
            self.respond(now, &key, &msg, 500);
            return;
        }
        // The port pair itself belongs to the media engine once the call is
        // answered; the SDP only needs what was announced for it.
        let Ok(offer_sdp) = Session::parse(&msg.body) else {
            self.respond(now, &key, &msg, 488);
            return;
        };
        // Same session, next version (RFC 3264 8).
        call.local.session_version += 1;
        let local = call.local.clone();
        match offer::answer(&offer_sdp, &local, &prefs) {
            Ok((answer, neg)) => {
                // On hold when the phone only sends (music on hold) or sends
                // nothing, or parks the stream on c=0.0.0.0 / port 0.
                let hold = matches!(neg.direction, Direction::RecvOnly | Direction::Inactive)
                    || neg.remote.is_none();
                let local_tag = call.local_tag.clone();
                if call.media {
                    self.actions
                        .push_back(Action::Media(c, MediaCmd::Hold(hold)));
                    // Only an address inside the allowlist is ever sent to
                    // (and taken RTP from).
                    if let Some(to) = neg.remote.filter(|r| self.guard.allowed(r.ip())) {
                        self.actions
                            .push_back(Action::Media(c, MediaCmd::Remote(to)));
                    }
                }
                info!(call = c, hold, direction = ?neg.direction, "re-INVITE from the phone");
                let mut r = Message::response_to(&msg, 200);
                r.set_to_tag(&local_tag);
                r.headers
                    .push("Contact", format!("<{}>", self.local_uri(None)));
                r.headers.push("Content-Type", "application/sdp");
                r.body = answer.encode();
                let _ = self.txs.send_response(now, &key, r);
            }
            Err(_) => self.respond(now, &key, &msg, 488),
        }
    }

    /// Responses to our INVITEs (calls to a phone) and BYEs.
    pub(super) fn on_response(&mut self, now: Instant, key: TxKey, msg: Message) {
        let Some(c) = self.call_by_invite(&key) else {
            return;
        };
        let code = msg.code().unwrap_or(500);
        let Some(call) = self.calls.get(&c) else {
            return;
        };
        if call.origin != Origin::Relay {
            return;
        }
        if call.answered {
            // A retransmitted 2xx: our ACK was lost, send it again
            // (RFC 3261 13.2.2.4).
            if (200..300).contains(&code)
                && let Some(ack) = &call.ack
            {
                let (ack, phone, reliable) = (ack.clone(), call.phone, call.reliable);
                self.txs.send_stateless(&ack, phone, reliable);
            }
            return;
        }
        let (relay_call, reliable, phone) = (call.relay_call, call.reliable, call.phone);
        let our = call.our_invite.clone();
        match code {
            180 | 183 => self.signal(CallSignal::Ringing { call: relay_call }),
            100..=199 => {}
            200..=299 => {
                let Some(our) = our else { return };
                let dialog = Dialog::uac(&our, &msg, self.local_uri(None)).ok();
                let neg = Session::parse(&msg.body)
                    .ok()
                    .and_then(|s| offer::accept_answer(&s).ok());
                // ACK the 2xx (outside the transaction, RFC 3261 13.2.2.4).
                let mut sent = None;
                if let Some(d) = &dialog {
                    let seq = our.cseq().map(|c| c.seq).unwrap_or(1);
                    let ack = d.ack(seq, &self.via(reliable));
                    self.txs.send_stateless(&ack, phone, reliable);
                    sent = Some(ack);
                }
                let call = self.calls.get_mut(&c).expect("indexed");
                call.dialog = dialog;
                call.ack = sent;
                match neg {
                    Some(n) => {
                        call.negotiated = Some(n);
                        call.answered = true;
                        let (up_flow, up_ssrc) = (call.up_flow, call.up_ssrc);
                        self.start_media(c);
                        self.signal(CallSignal::Answer {
                            call: relay_call,
                            flow: up_flow,
                            ssrc: up_ssrc,
                        });
                        info!(call = c, "phone answered");
                    }
                    None => {
                        warn!(call = c, "phone answered with an unusable SDP; hanging up");
                        call.answered = true;
                        self.end_call(now, c, EndReason::Error, true, true);
                    }
                }
            }
            _ => {
                let reason = EndReason::from_sip_status(code);
                info!(call = c, code, ?reason, "phone refused the call");
                self.end_call(now, c, reason, true, false);
            }
        }
    }

    /// Hand the call's leg and ports to the media engine.
    pub(super) fn start_media(&mut self, c: u32) {
        let down_ssrc = self.entropy.u32();
        let initial = (
            self.entropy.u16(),
            self.entropy.u32(),
            self.entropy.u16(),
            self.entropy.u32(),
        );
        let Some(call) = self.calls.get_mut(&c) else {
            return;
        };
        let (Some(neg), Some(pair)) = (call.negotiated.clone(), call.pair.take()) else {
            return;
        };
        let leg = PhoneLegConfig {
            codec: to_phone_codec(neg.codec),
            phone_pt: neg.pt,
            dtmf_pt: neg.dtmf_pt,
            // The packet time the phone asked for (its SDP); the Opus frame
            // on the QUIC side stays the gateway's.
            ptime: Duration::from_millis(neg.ptime.into()),
            opus: CodecConfig {
                complexity: self.cfg.opus_complexity,
                ..self.opus
            },
            up_flow: call.up_flow,
            up_ssrc: call.up_ssrc,
            down_ssrc,
            initial,
            // One engine tick of margin over the arrival jitter (the
            // jitter buffer's module docs): a frame more was 20 ms of each
            // box's share of a phone-to-phone call (docs/BENCHMARKS.md).
            min_delay: PHONE_JITTER_MIN,
            max_delay: Duration::from_millis(200),
        };
        call.media = true;
        let remote = neg.remote.filter(|r| self.guard.allowed(r.ip()));
        let mut sources = vec![call.phone.ip().to_canonical()];
        if let Some(r) = remote
            && !sources.contains(&r.ip().to_canonical())
        {
            sources.push(r.ip().to_canonical());
        }
        sources.retain(|ip| self.guard.allowed(*ip));
        let relay_flow = call.relay_flow;
        self.actions.push_back(Action::StartMedia {
            call: c,
            leg: Box::new(leg),
            pair,
            remote,
            sources,
            relay_flow,
        });
    }

    /// End call `c`: tell the relay unless it ended the call, and the phone
    /// unless the phone ended it.
    pub(super) fn end_call(
        &mut self,
        now: Instant,
        c: u32,
        reason: EndReason,
        tell_relay: bool,
        tell_phone: bool,
    ) {
        let Some(mut call) = self.calls.remove(&c) else {
            return;
        };
        self.update_active();
        if let Some(f) = call.relay_flow {
            self.actions.push_back(Action::Unroute(f));
        }
        // The engine stops the call's media and returns the ports.
        if call.media {
            self.actions.push_back(Action::StopMedia(c));
        }
        if let Some(p) = call.pair.take() {
            self.ports.release(p, now);
        }
        if tell_relay {
            self.signal(CallSignal::End {
                call: call.relay_call,
                reason,
            });
        }
        info!(call = c, ?reason, "call ended");
        if !tell_phone {
            return;
        }
        match (call.origin, call.answered) {
            (Origin::Phone, false) => {
                if let Some(inv) = &call.their_invite {
                    let mut r = Message::response_to(inv, reason.sip_status());
                    r.set_to_tag(&call.local_tag);
                    let _ = self.txs.send_response(now, &call.invite, r);
                }
            }
            (Origin::Relay, false) => {
                if let Some(inv) = &call.our_invite {
                    let cancel = cancel_for(inv);
                    let _ = self
                        .txs
                        .send_request(now, cancel, call.phone, call.reliable);
                }
            }
            (_, true) => {
                let via = self.via(call.reliable);
                if let Some(d) = call.dialog.as_mut()
                    && let Ok(bye) = d.request(Method::Bye, &via)
                {
                    let _ = self.txs.send_request(now, bye, call.phone, call.reliable);
                }
            }
        }
    }

    pub(super) fn on_link(&mut self, now: Instant, ev: LinkEvent) {
        match ev {
            LinkEvent::Up => {
                self.relay_up = true;
                let exts: Vec<String> = self
                    .phones
                    .iter()
                    .filter(|(e, _)| !self.registrar.lookup(now, e).is_empty())
                    .map(|(e, _)| e.to_string())
                    .collect();
                for e in exts {
                    self.signal(CallSignal::ExtUp(e));
                }
            }
            LinkEvent::Down => {
                self.relay_up = false;
                let calls: Vec<u32> = self.calls.keys().copied().collect();
                for c in calls {
                    self.end_call(now, c, EndReason::Unavailable, false, true);
                }
            }
            LinkEvent::Signal(s) => self.on_signal(now, s),
        }
    }

    pub(super) fn call_by_relay_id(&self, relay_call: u32) -> Option<u32> {
        self.calls
            .iter()
            .find(|(_, c)| c.relay_call == relay_call)
            .map(|(&k, _)| k)
    }

    pub(super) fn on_signal(&mut self, now: Instant, s: CallSignal) {
        match s {
            CallSignal::Ringing { call } => {
                let Some(c) = self.call_by_relay_id(call) else {
                    return;
                };
                let contact = format!("<{}>", self.local_uri(None));
                let call = &self.calls[&c];
                if let (Origin::Phone, Some(inv)) = (call.origin, &call.their_invite) {
                    let mut r = Message::response_to(inv, 180);
                    r.set_to_tag(&call.local_tag);
                    r.headers.push("Contact", contact);
                    let key = call.invite.clone();
                    let _ = self.txs.send_response(now, &key, r);
                }
            }
            CallSignal::Answer { call, flow, .. } => {
                let Some(c) = self.call_by_relay_id(call) else {
                    return;
                };
                let contact = format!("<{}>", self.local_uri(None));
                let Some(cl) = self.calls.get_mut(&c) else {
                    return;
                };
                if cl.origin != Origin::Phone || cl.answered {
                    return;
                }
                cl.answered = true;
                cl.relay_flow = Some(flow);
                if let Some(inv) = &cl.their_invite {
                    let mut r = Message::response_to(inv, 200);
                    r.set_to_tag(&cl.local_tag);
                    r.headers.push("Contact", contact);
                    r.headers.push("Content-Type", "application/sdp");
                    r.body = cl.answer_sdp.clone().unwrap_or_default();
                    if let Some(d) = cl.dialog.as_mut() {
                        d.state = DialogState::Confirmed;
                    }
                    let key = cl.invite.clone();
                    let _ = self.txs.send_response(now, &key, r);
                }
                self.start_media(c);
                info!(call = c, "call answered");
            }
            CallSignal::End { call, reason } => {
                if let Some(c) = self.call_by_relay_id(call) {
                    self.end_call(now, c, reason, false, true);
                }
            }
            CallSignal::Dtmf {
                call,
                digit,
                duration_ms,
            } => {
                if let (Some(c), Some(d)) = (self.call_by_relay_id(call), Digit::from_char(digit))
                    && self.calls.get(&c).is_some_and(|c| c.media)
                {
                    self.actions
                        .push_back(Action::Media(c, MediaCmd::Digit(d, u32::from(duration_ms))));
                }
            }
            CallSignal::Setup {
                call,
                to,
                from,
                flow,
                ..
            } => self.call_phone(now, call, to, from, flow),
            CallSignal::Error { code, message } => {
                warn!(code, message = %message, "relay refused a call request");
            }
            CallSignal::ExtUp(_) | CallSignal::ExtDown(_) => {}
        }
    }

    /// The relay calls extension `to`.
    pub(super) fn call_phone(
        &mut self,
        now: Instant,
        relay_call: u32,
        to: String,
        from: String,
        relay_flow: u64,
    ) {
        let refuse = |me: &mut Self, reason| {
            me.signal(CallSignal::End {
                call: relay_call,
                reason,
            })
        };
        let Some(binding) = self
            .registrar
            .lookup(now, &to)
            .first()
            .map(|b| (*b).clone())
        else {
            let reason = if self.phones.get(&to).is_some() {
                EndReason::Unavailable
            } else {
                EndReason::NotFound
            };
            return refuse(self, reason);
        };
        if self.calls.len() >= MAX_CALLS || self.calls_of(&to) >= self.cfg.calls_per_extension {
            return refuse(self, EndReason::Busy);
        }
        let Some(pair) = self.ports.lease(now) else {
            return refuse(self, EndReason::Busy);
        };
        let reliable = binding.transport.eq_ignore_ascii_case("TCP");
        let local = self.local_media(P::port(&pair));
        let sdp = offer::offer(
            &local,
            Direction::SendRecv,
            self.cfg.ptime.as_millis() as u32,
        );
        let mut inv = Message::request(Method::Invite, binding.contact.uri.clone());
        let via = self.via(reliable);
        inv.headers.push("Via", via.to_string());
        inv.headers.push("Max-Forwards", "70");
        let from_tag = self.new_tag();
        inv.headers.push(
            "From",
            format!("<{}>;tag={}", self.local_uri(Some(&from)), from_tag),
        );
        inv.headers
            .push("To", format!("<sip:{to}@{}>", self.advertise));
        let call_id = crate::sip::auth::hex(&self.secure::<12>());
        inv.headers
            .push("Call-ID", format!("{call_id}@{}", self.advertise));
        inv.headers.push("CSeq", "1 INVITE");
        inv.headers
            .push("Contact", format!("<{}>", self.local_uri(None)));
        inv.headers
            .push("Allow", "INVITE, ACK, BYE, CANCEL, OPTIONS");
        inv.headers.push("Content-Type", "application/sdp");
        inv.body = sdp.encode();
        let key = match self
            .txs
            .send_request(now, inv.clone(), binding.source, reliable)
        {
            Ok(k) => k,
            Err(e) => {
                warn!(error = %e, "INVITE to the phone not sent");
                self.ports.release(pair, now);
                return refuse(self, EndReason::Error);
            }
        };
        let (c, up_flow) = self.next_call_id();
        info!(call = c, %to, %from, phone = %binding.source, "calling a phone");
        self.stats.calls += 1;
        let up_ssrc = self.entropy.u32();
        self.calls.insert(
            c,
            Call {
                origin: Origin::Relay,
                relay_call,
                invite: key,
                our_invite: Some(inv),
                their_invite: None,
                phone: binding.source,
                ext: to.clone(),
                ack: None,
                reliable,
                local_tag: String::new(),
                dialog: None,
                negotiated: None,
                answer_sdp: None,
                pair: Some(pair),
                local,
                up_flow,
                up_ssrc,
                relay_flow: Some(relay_flow),
                media: false,
                answered: false,
            },
        );
        self.update_active();
    }
}
