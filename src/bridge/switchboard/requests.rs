//! Requests and responses from the phones: the guard, digest
//! authentication, REGISTER, INVITE (new and re-INVITE), BYE, CANCEL and
//! OPTIONS, and the transaction layer's events.

use super::{Ports, Switchboard};
use crate::proto::signal::{CallSignal, EndReason};
use crate::sip::auth::Ha1Pair;
use crate::sip::dialog::{Dialog, DialogId, DialogState};
use crate::sip::guard::Decision;
use crate::sip::transaction::{TxEvent, TxKey};
use crate::sip::{Message, Method};
use std::net::SocketAddr;
use std::time::Instant;
use tracing::info;

impl<P: Ports> Switchboard<P> {
    /// A datagram or stream message from `src`, admitted by the guard.
    pub(super) fn on_message(
        &mut self,
        now: Instant,
        mut msg: Message,
        src: SocketAddr,
        reliable: bool,
    ) {
        if msg.is_request() {
            // RFC 3261 18.2.1 / RFC 3581: record where it really came from.
            if let Ok(mut via) = msg.top_via() {
                via.stamp_source(src);
                msg.headers.replace_first("Via", via.to_string());
            }
        }
        self.txs.handle_message(now, msg, src, reliable);
    }

    /// Authenticate a request; `Some(user)` when it may proceed.
    fn authenticate(
        &mut self,
        now: Instant,
        key: &TxKey,
        msg: &Message,
        src: SocketAddr,
    ) -> Option<String> {
        let phones = &self.phones;
        let (d, events) = self.guard.authenticate(now, src, msg, |u| {
            phones.get(u).map(|e| Ha1Pair {
                sha256: e.ha1_sha256.clone(),
                md5: e.ha1_md5.clone(),
            })
        });
        self.audit(events);
        match d {
            Decision::Drop => {
                self.stats.dropped += 1;
                None
            }
            Decision::Respond(r) => {
                let _ = self.txs.send_response(now, key, *r);
                None
            }
            Decision::Authenticated { user } => Some(user),
        }
    }

    pub(super) fn on_tx_event(&mut self, now: Instant, ev: TxEvent) {
        match ev {
            TxEvent::Request {
                key,
                msg,
                src,
                reliable,
            } => self.on_request(now, key, *msg, src, reliable),
            TxEvent::Ack { msg, .. } => {
                if let Some(id) = Dialog::id_of_request(&msg)
                    && let Some(c) = self.call_by_dialog(&id)
                    && let Some(d) = self.calls.get_mut(&c).and_then(|c| c.dialog.as_mut())
                {
                    d.state = DialogState::Confirmed;
                }
            }
            TxEvent::Response { key, msg } => self.on_response(now, key, *msg),
            TxEvent::AckTimeout { key } => {
                if let Some(c) = self.call_by_invite(&key) {
                    info!(
                        call = c,
                        "the phone never acknowledged the answer; hanging up"
                    );
                    self.end_call(now, c, EndReason::Error, true, true);
                }
            }
        }
    }

    pub(super) fn call_by_dialog(&self, id: &DialogId) -> Option<u32> {
        self.calls
            .iter()
            .find(|(_, c)| c.dialog.as_ref().is_some_and(|d| &d.id == id))
            .map(|(&k, _)| k)
    }

    pub(super) fn call_by_invite(&self, key: &TxKey) -> Option<u32> {
        self.calls
            .iter()
            .find(|(_, c)| &c.invite == key)
            .map(|(&k, _)| k)
    }

    fn on_request(
        &mut self,
        now: Instant,
        key: TxKey,
        msg: Message,
        src: SocketAddr,
        reliable: bool,
    ) {
        let Some(method) = msg.method().cloned() else {
            return;
        };
        let in_dialog = msg
            .to()
            .ok()
            .and_then(|t| t.tag().map(str::to_string))
            .is_some();
        match method {
            Method::Register => {
                let Some(user) = self.authenticate(now, &key, &msg, src) else {
                    return;
                };
                // A phone registers only its own extension.
                let to_user = msg.to().ok().and_then(|t| t.uri.user.clone());
                if to_user.as_deref() != Some(user.as_str()) {
                    self.respond(now, &key, &msg, 403);
                    return;
                }
                let before = !self.registrar.lookup(now, &user).is_empty();
                let (resp, _) = self.registrar.register(now, &user, &msg, src);
                let _ = self.txs.send_response(now, &key, resp);
                let after = !self.registrar.lookup(now, &user).is_empty();
                if before != after {
                    info!(ext = %user, %src, registered = after, "phone registration changed");
                    self.signal(if after {
                        CallSignal::ExtUp(user)
                    } else {
                        CallSignal::ExtDown(user)
                    });
                    self.update_registered(now);
                }
            }
            Method::Invite if in_dialog => self.on_reinvite(now, key, msg),
            Method::Invite => {
                let Some(user) = self.authenticate(now, &key, &msg, src) else {
                    return;
                };
                self.on_invite(now, key, msg, src, reliable, user);
            }
            Method::Bye => {
                match Dialog::id_of_request(&msg).and_then(|id| self.call_by_dialog(&id)) {
                    Some(c) => {
                        self.respond(now, &key, &msg, 200);
                        self.end_call(now, c, EndReason::Normal, true, false);
                    }
                    None => self.respond(now, &key, &msg, 481),
                }
            }
            Method::Cancel => {
                let invite = self.txs.invite_for_cancel(&key);
                match invite.and_then(|k| self.call_by_invite(&k).map(|c| (k, c))) {
                    Some((ik, c)) if !self.calls[&c].answered => {
                        self.respond(now, &key, &msg, 200);
                        // The 487 carries the To tag of the call's
                        // provisional responses (one dialog, RFC 3261 9.2).
                        if let Some(call) = self.calls.get(&c)
                            && let Some(inv) = &call.their_invite
                        {
                            let mut r = Message::response_to(inv, 487);
                            r.set_to_tag(&call.local_tag);
                            let _ = self.txs.send_response(now, &ik, r);
                        }
                        self.end_call(now, c, EndReason::Normal, true, false);
                    }
                    _ => self.respond(now, &key, &msg, 481),
                }
            }
            Method::Options => {
                // A keep-alive to the box itself is answered; one addressed to
                // a user is challenged like REGISTER and INVITE, so a scanner
                // sees the same answer for every extension.
                let to_user = msg.request_uri().is_some_and(|u| u.user.is_some());
                if to_user && self.authenticate(now, &key, &msg, src).is_none() {
                    return;
                }
                let mut r = Message::response_to(&msg, 200);
                r.set_to_tag(&self.new_tag());
                r.headers
                    .push("Allow", "INVITE, ACK, BYE, CANCEL, OPTIONS, REGISTER");
                r.headers.push("Accept", "application/sdp");
                let _ = self.txs.send_response(now, &key, r);
            }
            Method::Ack => {}
            _ => self.respond(now, &key, &msg, 405),
        }
    }
}
