//! The phones' registrations as the running daemon shows them on its
//! status socket (`GET /phones`, JSON): every extension of the phone store,
//! whether a phone is registered for it, from where (the address its
//! REGISTER came from, its Contact's host and port, the transport), which
//! phone (its `User-Agent`), since when and until when. Never a password,
//! digest (HA1) or nonce: the view is built from the registrar's bindings
//! ([`super::switchboard::Registration`]), which hold none.
//!
//! The bridge task owns the switchboard; it publishes a new view into the
//! [`PhonesBoard`] when the switchboard's registrations change (a binding
//! made, refreshed or dropped, the phone store re-read), never on the media
//! path. The board keeps the view rendered, behind a lock held only to swap
//! or clone one `Arc` (never across an `await`), so a request to the status
//! socket costs the bridge nothing.

use super::switchboard::{Ports, Registration, Switchboard};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

/// Longest `User-Agent` shown; the rest is cut.
const MAX_USER_AGENT: usize = 80;

/// `GET /phones`: the phone bridge and its extensions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhonesView {
    /// Whether `[sip]` is on in the running daemon.
    pub bridge: bool,
    /// When this view was made (Unix seconds).
    pub updated: i64,
    /// Every extension of the phone store, in order.
    pub phones: Vec<PhoneState>,
}

/// One extension.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhoneState {
    /// The extension.
    pub extension: String,
    /// Whether a phone is registered for it.
    pub registered: bool,
    /// Its registered phones (contacts), oldest first.
    pub contacts: Vec<ContactState>,
}

/// One registered phone of an extension.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactState {
    /// Where its REGISTER came from, `HOST:PORT` (where calls go).
    pub source: String,
    /// Its Contact's host and port, as the phone wrote them.
    pub contact: String,
    /// `UDP` or `TCP`.
    pub transport: String,
    /// The phone's `User-Agent` (printable ASCII, at most 80 characters).
    pub user_agent: Option<String>,
    /// When it first registered (Unix seconds).
    pub registered_since: i64,
    /// When its registration lapses unless refreshed (Unix seconds).
    pub expires: i64,
}

impl PhoneState {
    /// The most recent registration, if any.
    pub fn latest(&self) -> Option<&ContactState> {
        self.contacts.iter().max_by_key(|c| c.registered_since)
    }
}

impl PhonesView {
    /// The view of `regs` at `now` (`wall`: the same instant in Unix
    /// seconds).
    pub fn of(regs: &[Registration], now: Instant, wall: i64) -> PhonesView {
        let unix = |t: Instant| {
            if t >= now {
                wall + (t - now).as_secs() as i64
            } else {
                wall - (now - t).as_secs() as i64
            }
        };
        PhonesView {
            bridge: true,
            updated: wall,
            phones: regs
                .iter()
                .map(|r| PhoneState {
                    extension: r.ext.clone(),
                    registered: !r.contacts.is_empty(),
                    contacts: r
                        .contacts
                        .iter()
                        .map(|c| ContactState {
                            source: c.source.to_string(),
                            contact: printable(&c.contact),
                            transport: printable(&c.transport),
                            user_agent: c.user_agent.as_deref().map(printable),
                            registered_since: unix(c.since),
                            expires: unix(c.expires_at),
                        })
                        .collect(),
                })
                .collect(),
        }
    }
}

/// `s` as printable ASCII (others become `?`), at most
/// [`MAX_USER_AGENT`] characters: what a phone sends ends up on a
/// technician's terminal.
fn printable(s: &str) -> String {
    s.chars()
        .take(MAX_USER_AGENT)
        .map(|c| if (' '..='~').contains(&c) { c } else { '?' })
        .collect()
}

/// Unix seconds now.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The last published view, rendered as JSON (shared by the bridge task,
/// which publishes, and the status socket, which serves it).
#[derive(Debug)]
pub struct PhonesBoard {
    json: Mutex<Arc<str>>,
}

impl PhonesBoard {
    /// A board for a daemon with the bridge on (`bridge`) or off; no
    /// extension until the bridge publishes.
    pub fn new(bridge: bool) -> Arc<PhonesBoard> {
        let view = PhonesView {
            bridge,
            updated: unix_now(),
            phones: Vec::new(),
        };
        Arc::new(PhonesBoard {
            json: Mutex::new(render(&view)),
        })
    }

    /// Publish the registrations as of `now`.
    pub fn publish(&self, regs: &[Registration], now: Instant) {
        let json = render(&PhonesView::of(regs, now, unix_now()));
        *self.json.lock().unwrap_or_else(|e| e.into_inner()) = json;
    }

    /// Publish `sb`'s registrations if they changed since the version in
    /// `seen` (`None`: never published), and note the version.
    pub fn follow<P: Ports>(&self, sb: &Switchboard<P>, seen: &mut Option<u64>) {
        let v = sb.registrations_version();
        if *seen != Some(v) {
            *seen = Some(v);
            let now = Instant::now();
            self.publish(&sb.registrations(now), now);
        }
    }

    /// The view as JSON.
    pub fn json(&self) -> Arc<str> {
        self.json.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

fn render(v: &PhonesView) -> Arc<str> {
    let mut text = serde_json::to_string(v).unwrap_or_else(|_| "{}".into());
    text.push('\n');
    text.into()
}

#[cfg(test)]
mod tests {
    use super::super::switchboard::RegisteredContact;
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_view_in_unix_seconds_and_printable() {
        let now = Instant::now();
        let regs = [
            Registration {
                ext: "101".into(),
                contacts: vec![RegisteredContact {
                    source: "127.0.0.1:5071".parse().unwrap(),
                    contact: "127.0.0.1:5071".into(),
                    transport: "UDP".into(),
                    user_agent: Some("Yealink\x1b[2J SIP-T46U".into()),
                    since: now - Duration::from_secs(10),
                    expires_at: now + Duration::from_secs(290),
                }],
            },
            Registration {
                ext: "102".into(),
                contacts: vec![],
            },
        ];
        let board = PhonesBoard::new(true);
        let empty: PhonesView = serde_json::from_str(&board.json()).unwrap();
        assert!(empty.bridge && empty.phones.is_empty());
        board.publish(&regs, now);
        let v: PhonesView = serde_json::from_str(&board.json()).unwrap();
        assert!(v.bridge);
        let [a, b] = &v.phones[..] else {
            panic!("{v:?}")
        };
        assert!(a.registered && !b.registered);
        let c = a.latest().unwrap();
        assert_eq!(c.source, "127.0.0.1:5071");
        assert_eq!(c.user_agent.as_deref(), Some("Yealink?[2J SIP-T46U"));
        assert_eq!(c.expires - c.registered_since, 300);
        assert!((c.registered_since - (v.updated - 10)).abs() <= 1);
        assert!(b.latest().is_none());
    }
}
