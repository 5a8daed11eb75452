//! The switchboard's registrations as a view: every extension of the
//! phone store with its live bindings, and a version that changes when
//! the view would.

use super::{Ports, Switchboard};
use std::net::SocketAddr;
use std::time::Instant;

/// One extension of the phone store and the phones registered for it
/// ([`Switchboard::registrations`]). Holds no credential and no nonce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// The extension.
    pub ext: String,
    /// Its live bindings, oldest first (none: not registered).
    pub contacts: Vec<RegisteredContact>,
}

/// One live binding of an extension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisteredContact {
    /// Where the REGISTER came from (where requests go).
    pub source: SocketAddr,
    /// The Contact URI's host and port, as the phone wrote them.
    pub contact: String,
    /// The REGISTER's transport (`UDP`, `TCP`).
    pub transport: String,
    /// The phone's `User-Agent`, if it sent one.
    pub user_agent: Option<String>,
    /// When the phone first registered this contact.
    pub since: Instant,
    /// When the binding lapses unless refreshed.
    pub expires_at: Instant,
}

impl<P: Ports> Switchboard<P> {
    /// Every extension of the phone store, in order, with its live
    /// bindings at `now`.
    pub fn registrations(&self, now: Instant) -> Vec<Registration> {
        let mut v: Vec<Registration> = self
            .phones
            .iter()
            .map(|(ext, _)| {
                let mut contacts: Vec<RegisteredContact> = self
                    .registrar
                    .lookup(now, ext)
                    .into_iter()
                    .map(|b| RegisteredContact {
                        source: b.source,
                        contact: match b.contact.uri.port {
                            Some(p) => format!("{}:{p}", b.contact.uri.host),
                            None => b.contact.uri.host.clone(),
                        },
                        transport: b.transport.clone(),
                        user_agent: b.user_agent.clone(),
                        since: b.since,
                        expires_at: b.expires_at,
                    })
                    .collect();
                contacts.sort_by_key(|c| c.since);
                Registration {
                    ext: ext.to_string(),
                    contacts,
                }
            })
            .collect();
        v.sort_by(|a, b| a.ext.cmp(&b.ext));
        v
    }

    /// Changes whenever [`Switchboard::registrations`] may give another
    /// list: a binding made, refreshed or dropped, the phone store replaced.
    pub fn registrations_version(&self) -> u64 {
        self.registrar.generation() + self.phones_generation
    }
}
