//! Registrar (RFC 3261 10.3): contact bindings per extension.
//!
//! Guarantees:
//! - only an authenticated extension's own address-of-record can be changed
//!   (To user == authenticated user, else 403);
//! - a REGISTER is applied all-or-nothing: any bad contact, too-brief
//!   interval (423 with Min-Expires) or out-of-order CSeq for a known Call-ID
//!   (500) leaves the bindings untouched;
//! - `Contact: *` is accepted only alone and with `Expires: 0`;
//! - expiries are clamped to `max_expires`; bindings past their expiry are
//!   never returned by [`Registrar::lookup`];
//! - at most `max_contacts` bindings per extension and `max_aors` extensions.
//!
//! Time is passed in; [`Registrar::poll_timeout`] says when the next binding
//! expires so the shell can call [`Registrar::expire`]. Every change of the
//! bindings (a new one, a refresh, one gone) advances
//! [`Registrar::generation`], so that a view of them is rebuilt only when
//! it would differ.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::message::{Contact, Message, parse_delta};
use super::uri::NameAddr;

/// Registrar settings.
#[derive(Debug, Clone)]
pub struct RegistrarConfig {
    /// Shortest accepted non-zero expiry (seconds); shorter gets 423.
    pub min_expires: u32,
    /// Longest granted expiry (seconds); longer is clamped.
    pub max_expires: u32,
    /// Expiry when the request names none.
    pub default_expires: u32,
    /// Most contacts per extension.
    pub max_contacts: usize,
    /// Most extensions with bindings.
    pub max_aors: usize,
}

impl Default for RegistrarConfig {
    fn default() -> Self {
        RegistrarConfig {
            min_expires: 60,
            max_expires: 3600,
            default_expires: 3600,
            max_contacts: 4,
            max_aors: 1024,
        }
    }
}

/// One registered contact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// The Contact as registered (URI and header params).
    pub contact: NameAddr,
    /// When it lapses.
    pub expires_at: Instant,
    /// Call-ID of the REGISTER that set it.
    pub call_id: String,
    /// CSeq of the REGISTER that set it.
    pub cseq: u32,
    /// Where the REGISTER came from (send requests here: NAT-safe).
    pub source: SocketAddr,
    /// Transport of the REGISTER (`UDP`, `TCP`, ...), from its top Via.
    pub transport: String,
    /// The REGISTER's `User-Agent` (the phone's make and firmware), if any.
    pub user_agent: Option<String>,
    /// When this contact was first bound (kept across refreshes).
    pub since: Instant,
}

/// The registrar state.
#[derive(Debug, Default)]
pub struct Registrar {
    cfg: RegistrarConfig,
    aors: HashMap<String, Vec<Binding>>,
    /// Advanced by every change of the bindings.
    generation: u64,
}

/// A change made by a REGISTER, for the audit trail and the shell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegisterEvent {
    /// The extension's binding set changed; `contacts` bindings remain.
    Updated {
        /// Extension.
        user: String,
        /// Bindings after the change.
        contacts: usize,
    },
}

impl Registrar {
    /// An empty registrar.
    pub fn new(cfg: RegistrarConfig) -> Self {
        Registrar {
            cfg,
            aors: HashMap::new(),
            generation: 0,
        }
    }

    /// Handles an authenticated REGISTER from `src` for `user`; returns the
    /// response to send and, when bindings changed, an event.
    pub fn register(
        &mut self,
        now: Instant,
        user: &str,
        req: &Message,
        src: SocketAddr,
    ) -> (Message, Option<RegisterEvent>) {
        match self.apply(now, user, req, src) {
            Ok(changed) => {
                let mut resp = Message::response_to(req, 200);
                for b in self.lookup(now, user) {
                    let left = b.expires_at.saturating_duration_since(now).as_secs();
                    let mut c = b.contact.clone();
                    c.params.set("expires", Some(left.to_string()));
                    resp.headers.push("Contact", c.to_string());
                }
                let event = changed.then(|| RegisterEvent::Updated {
                    user: user.to_string(),
                    contacts: self.lookup(now, user).len(),
                });
                (resp, event)
            }
            Err(resp) => (*resp, None),
        }
    }

    fn error(req: &Message, code: u16, reason: Option<&str>) -> Box<Message> {
        let mut r = Message::response_to(req, code);
        if let (Some(reason), super::message::StartLine::Response { reason: r0, .. }) =
            (reason, &mut r.start)
        {
            *r0 = reason.to_string();
        }
        Box::new(r)
    }

    fn apply(
        &mut self,
        now: Instant,
        user: &str,
        req: &Message,
        src: SocketAddr,
    ) -> Result<bool, Box<Message>> {
        let bad = |code, reason| Self::error(req, code, reason);
        let to = req.to().map_err(|_| bad(400, None))?;
        if to.uri.user.as_deref() != Some(user) {
            return Err(bad(403, Some("Forbidden (not your extension)")));
        }
        let call_id = req.call_id().map_err(|_| bad(400, None))?.to_string();
        let cseq = req.cseq().map_err(|_| bad(400, None))?.seq;
        let transport = req.top_via().map_err(|_| bad(400, None))?.transport;
        let user_agent = req.headers.get("User-Agent").map(str::to_string);
        let contacts = req.contacts().map_err(|_| bad(400, Some("Bad Contact")))?;
        let header_expires = match req.headers.get("Expires") {
            Some(v) => Some(parse_delta(v).ok_or_else(|| bad(400, Some("Bad Expires")))?),
            None => None,
        };
        let mut list: Vec<Binding> = self
            .aors
            .get(user)
            .map(|l| l.iter().filter(|b| b.expires_at > now).cloned().collect())
            .unwrap_or_default();
        let before = list.clone();
        let in_order = |b: &Binding| b.call_id != call_id || cseq > b.cseq;

        if contacts.contains(&Contact::Star) {
            if contacts.len() != 1 || header_expires != Some(0) {
                return Err(bad(400, Some("Bad Request (Contact: * needs Expires: 0)")));
            }
            if !list.iter().all(in_order) {
                return Err(bad(500, Some("Server Internal Error (CSeq out of order)")));
            }
            list.clear();
        } else {
            for c in &contacts {
                let Contact::Addr(addr) = c else { continue };
                let expires = match addr.params.value("expires") {
                    Some(v) => parse_delta(v).ok_or_else(|| bad(400, Some("Bad Expires")))?,
                    None => header_expires.unwrap_or(self.cfg.default_expires),
                };
                if expires != 0 && expires < self.cfg.min_expires {
                    let mut r = bad(423, None);
                    r.headers
                        .push("Min-Expires", self.cfg.min_expires.to_string());
                    return Err(r);
                }
                let existing = list.iter().position(|b| b.contact.uri == addr.uri);
                let mut since = now;
                if let Some(i) = existing {
                    if !in_order(&list[i]) {
                        return Err(bad(500, Some("Server Internal Error (CSeq out of order)")));
                    }
                    since = list.remove(i).since;
                }
                if expires == 0 {
                    continue;
                }
                let mut contact = addr.clone();
                contact.params.remove("expires");
                let secs = expires.min(self.cfg.max_expires);
                list.push(Binding {
                    contact,
                    expires_at: now
                        .checked_add(Duration::from_secs(u64::from(secs)))
                        .unwrap_or(now),
                    call_id: call_id.clone(),
                    cseq,
                    source: src,
                    transport: transport.clone(),
                    user_agent: user_agent.clone(),
                    since,
                });
            }
            if list.len() > self.cfg.max_contacts {
                return Err(bad(403, Some("Forbidden (too many contacts)")));
            }
        }
        if !self.aors.contains_key(user) && !list.is_empty() && self.aors.len() >= self.cfg.max_aors
        {
            self.expire(now);
            if self.aors.len() >= self.cfg.max_aors {
                return Err(bad(503, None));
            }
        }
        let changed = list != before;
        if changed {
            self.generation += 1;
        }
        if list.is_empty() {
            self.aors.remove(user);
        } else {
            self.aors.insert(user.to_string(), list);
        }
        Ok(changed)
    }

    /// Live bindings of `user`.
    pub fn lookup(&self, now: Instant, user: &str) -> Vec<&Binding> {
        self.aors
            .get(user)
            .map(|l| l.iter().filter(|b| b.expires_at > now).collect())
            .unwrap_or_default()
    }

    /// Drops every binding of `user` (its credentials changed: the phone
    /// must register again); whether it had a live one.
    pub fn remove(&mut self, now: Instant, user: &str) -> bool {
        let removed = self.aors.remove(user);
        if removed.is_some() {
            self.generation += 1;
        }
        removed.is_some_and(|l| l.iter().any(|b| b.expires_at > now))
    }

    /// Drops lapsed bindings; returns the extensions that lost their last one.
    pub fn expire(&mut self, now: Instant) -> Vec<String> {
        let mut gone = Vec::new();
        let mut dropped = false;
        self.aors.retain(|user, l| {
            let before = l.len();
            l.retain(|b| b.expires_at > now);
            dropped |= l.len() != before;
            if l.is_empty() {
                gone.push(user.clone());
            }
            !l.is_empty()
        });
        if dropped {
            self.generation += 1;
        }
        gone
    }

    /// Advanced by every change of the bindings: new, refreshed, dropped.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// When the next binding lapses.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.aors.values().flatten().map(|b| b.expires_at).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(call_id: &str, cseq: u32, contacts: &[&str], expires: Option<&str>) -> Message {
        let mut s = format!(
            "REGISTER sip:box.lan SIP/2.0\r\nVia: SIP/2.0/UDP 192.168.1.20;branch=z9hG4bK{cseq}\r\nFrom: <sip:101@box.lan>;tag=a\r\nTo: <sip:101@box.lan>\r\nCall-ID: {call_id}\r\nCSeq: {cseq} REGISTER\r\nUser-Agent: Yealink SIP-T46U 66.86.0.15\r\n"
        );
        for c in contacts {
            s.push_str(&format!("Contact: {c}\r\n"));
        }
        if let Some(e) = expires {
            s.push_str(&format!("Expires: {e}\r\n"));
        }
        s.push_str("Content-Length: 0\r\n\r\n");
        Message::parse(s.as_bytes()).unwrap()
    }

    const SRC: &str = "192.168.1.20:5060";

    fn code(r: &(Message, Option<RegisterEvent>)) -> u16 {
        r.0.code().unwrap()
    }

    #[test]
    fn register_refresh_unregister() {
        let t0 = Instant::now();
        let mut r = Registrar::new(RegistrarConfig::default());
        let src = SRC.parse().unwrap();
        let ok = r.register(
            t0,
            "101",
            &reg(
                "c1",
                1,
                &["<sip:101@192.168.1.20>", "<sip:101@10.0.0.9>;expires=120"],
                Some("7200"),
            ),
            src,
        );
        assert_eq!(code(&ok), 200);
        assert_eq!(ok.0.headers.get_all("Contact").count(), 2);
        assert!(
            ok.0.headers
                .get("Contact")
                .unwrap()
                .contains("expires=3600"),
            "clamped to max"
        );
        assert_eq!(r.lookup(t0, "101").len(), 2);
        assert_eq!(r.poll_timeout(), Some(t0 + Duration::from_secs(120)));
        let g0 = r.generation();
        assert!(g0 > 0);
        // A refresh keeps when the contact was first bound, and is a change.
        let t_half = t0 + Duration::from_secs(30);
        let refresh = reg("c1", 2, &["<sip:101@192.168.1.20>"], Some("3600"));
        assert_eq!(code(&r.register(t_half, "101", &refresh, src)), 200);
        assert!(r.generation() > g0);
        let b = r
            .lookup(t_half, "101")
            .into_iter()
            .find(|b| b.contact.uri.host == "192.168.1.20")
            .unwrap();
        assert_eq!(b.since, t0);
        assert_eq!(b.user_agent.as_deref(), Some("Yealink SIP-T46U 66.86.0.15"));
        let g1 = r.generation();
        // The 120 s contact lapses.
        let t1 = t0 + Duration::from_secs(121);
        assert_eq!(r.lookup(t1, "101").len(), 1);
        assert!(r.expire(t1).is_empty());
        assert!(r.generation() > g1, "a lapsed contact is a change");
        let g2 = r.generation();
        assert!(r.expire(t1).is_empty());
        assert_eq!(r.generation(), g2, "nothing lapsed: no change");
        // Same Call-ID, older CSeq: refused, nothing changes.
        assert_eq!(
            code(&r.register(
                t1,
                "101",
                &reg("c1", 1, &["<sip:101@192.168.1.20>"], Some("0")),
                src
            )),
            500
        );
        assert_eq!(r.lookup(t1, "101").len(), 1);
        // Too brief.
        let brief = r.register(
            t1,
            "101",
            &reg("c1", 2, &["<sip:101@192.168.1.20>"], Some("10")),
            src,
        );
        assert_eq!(code(&brief), 423);
        assert_eq!(brief.0.headers.get("Min-Expires"), Some("60"));
        // Contact: * needs Expires: 0 ...
        assert_eq!(
            code(&r.register(t1, "101", &reg("c1", 3, &["*"], Some("60")), src)),
            400
        );
        // ... and then clears everything.
        let gone = r.register(t1, "101", &reg("c1", 4, &["*"], Some("0")), src);
        assert_eq!(code(&gone), 200);
        assert_eq!(
            gone.1,
            Some(RegisterEvent::Updated {
                user: "101".into(),
                contacts: 0
            })
        );
        assert!(r.lookup(t1, "101").is_empty());
        assert_eq!(r.poll_timeout(), None);
    }

    #[test]
    fn remove_drops_every_binding_of_one_extension() {
        let t0 = Instant::now();
        let mut r = Registrar::new(RegistrarConfig::default());
        let src = SRC.parse().unwrap();
        let two = reg(
            "c1",
            1,
            &["<sip:101@192.168.1.20>", "<sip:101@10.0.0.9>"],
            None,
        );
        assert_eq!(code(&r.register(t0, "101", &two, src)), 200);
        assert!(r.remove(t0, "101"));
        assert!(r.lookup(t0, "101").is_empty());
        assert_eq!(r.poll_timeout(), None);
        assert!(!r.remove(t0, "101"), "nothing left to drop");
        // Only lapsed bindings: dropped, but there was nothing live to report.
        assert_eq!(code(&r.register(t0, "101", &two, src)), 200);
        assert!(!r.remove(t0 + Duration::from_secs(7200), "101"));
        assert_eq!(r.poll_timeout(), None);
    }

    #[test]
    fn only_own_extension_and_bounded() {
        let t0 = Instant::now();
        let mut r = Registrar::new(RegistrarConfig {
            max_contacts: 2,
            ..Default::default()
        });
        let src = SRC.parse().unwrap();
        // Authenticated as 102 but registering 101.
        assert_eq!(
            code(&r.register(t0, "102", &reg("c1", 1, &["<sip:x@h>"], None), src)),
            403
        );
        let three = ["<sip:a@h1>", "<sip:b@h2>", "<sip:c@h3>"];
        assert_eq!(
            code(&r.register(t0, "101", &reg("c1", 1, &three, None), src)),
            403
        );
        assert!(r.lookup(t0, "101").is_empty(), "all-or-nothing");
        // Per-contact unregister with Expires: 0 on one contact.
        assert_eq!(
            code(&r.register(t0, "101", &reg("c1", 2, &three[..2], None), src)),
            200
        );
        assert_eq!(
            code(&r.register(
                t0,
                "101",
                &reg("c2", 1, &["<sip:a@h1>;expires=0"], None),
                src
            )),
            200
        );
        let left = r.lookup(t0, "101");
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].contact.uri.host, "h2");
        assert_eq!(left[0].source, src);
        assert_eq!(
            code(&r.register(t0, "101", &reg("c3", 1, &["<sip:a@h1>"], Some("soon")), src)),
            400
        );
    }
}
