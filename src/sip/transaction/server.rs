//! Server transactions (RFC 3261 17.2, RFC 6026 7.1).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::{Out, Timers, Transmit, TxError, TxEvent, TxKey};
use crate::sip::message::Message;
use crate::sip::uri::Method;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Non-INVITE before any response.
    Trying,
    Proceeding,
    Completed,
    /// INVITE: ACK for a non-2xx received (timer I).
    Confirmed,
    /// INVITE: 2xx sent (RFC 6026, timer L); INVITE retransmissions absorbed.
    Accepted,
    Terminated,
}

#[derive(Debug)]
pub(crate) struct ServerTx {
    key: TxKey,
    invite: bool,
    peer: SocketAddr,
    reliable: bool,
    state: State,
    last: Option<Vec<u8>>,
    /// Timer G.
    retransmit_at: Option<Instant>,
    interval: Duration,
    /// Timer H, I, J or L.
    timeout_at: Option<Instant>,
    /// Call-ID, CSeq number and From tag, to match the ACK for a 2xx.
    dialog_key: (String, u32, String),
    /// The ACK for our 2xx arrived.
    acked: bool,
}

impl ServerTx {
    /// A new server transaction; an INVITE gets an immediate 100 Trying.
    pub(crate) fn start(
        now: Instant,
        key: TxKey,
        req: &Message,
        peer: SocketAddr,
        reliable: bool,
        t: &Timers,
        out: &mut Out,
    ) -> ServerTx {
        let invite = key.method == Method::Invite;
        let mut tx = ServerTx {
            key,
            invite,
            peer,
            reliable,
            state: if invite {
                State::Proceeding
            } else {
                State::Trying
            },
            last: None,
            retransmit_at: None,
            interval: Duration::ZERO,
            timeout_at: None,
            dialog_key: (
                req.call_id().unwrap_or("").to_string(),
                req.cseq().map(|c| c.seq).unwrap_or(0),
                req.from()
                    .ok()
                    .and_then(|f| f.tag().map(str::to_string))
                    .unwrap_or_default(),
            ),
            acked: false,
        };
        if !invite {
            // Not an RFC timer: a non-INVITE request the transaction user
            // never answers is forgotten when the client's timer F would
            // have fired, so the table cannot fill up with them.
            tx.timeout_at = Some(now + 64 * t.t1);
        }
        if invite {
            let trying = Message::response_to(req, 100).encode();
            tx.send(trying.clone(), out);
            tx.last = Some(trying);
        }
        tx
    }

    pub(crate) fn dialog_key(&self) -> &(String, u32, String) {
        &self.dialog_key
    }

    /// A 2xx was sent and the transaction waits for its ACK (or timer L).
    pub(crate) fn accepted(&self) -> bool {
        self.state == State::Accepted
    }

    pub(crate) fn terminated(&self) -> bool {
        self.state == State::Terminated
    }

    pub(crate) fn next_timer(&self) -> Option<Instant> {
        match (self.retransmit_at, self.timeout_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn send(&self, bytes: Vec<u8>, out: &mut Out) {
        out.transmits.push_back(Transmit {
            dest: self.peer,
            reliable: self.reliable,
            bytes,
        });
    }

    pub(crate) fn respond(
        &mut self,
        now: Instant,
        resp: Message,
        t: &Timers,
        out: &mut Out,
    ) -> Result<(), TxError> {
        let code = resp.code().ok_or(TxError::WrongKind)?;
        if !matches!(self.state, State::Trying | State::Proceeding) {
            return Err(TxError::AlreadyFinal);
        }
        let bytes = resp.encode();
        self.send(bytes.clone(), out);
        self.last = Some(bytes);
        if code < 200 {
            self.state = State::Proceeding;
        } else if !self.invite {
            // Timer J.
            self.state = State::Completed;
            if self.reliable {
                self.state = State::Terminated;
            } else {
                self.timeout_at = Some(now + 64 * t.t1);
            }
        } else if code < 300 {
            // Timer L; the 2xx is retransmitted like a final response under
            // timer G until its ACK arrives (RFC 3261 13.3.1.4, done here so
            // that the transaction user cannot forget it).
            self.state = State::Accepted;
            self.interval = t.t1;
            self.retransmit_at = (!self.reliable).then(|| now + t.t1);
            self.timeout_at = Some(now + 64 * t.t1);
        } else {
            // Timers G and H.
            self.state = State::Completed;
            self.interval = t.t1;
            self.retransmit_at = (!self.reliable).then(|| now + t.t1);
            self.timeout_at = Some(now + 64 * t.t1);
        }
        Ok(())
    }

    /// The same request again: resend the last response (if any).
    pub(crate) fn on_retransmission(&mut self, out: &mut Out) {
        if matches!(self.state, State::Proceeding | State::Completed)
            && let Some(b) = self.last.clone()
        {
            self.send(b, out);
        }
    }

    pub(crate) fn on_ack(&mut self, now: Instant, t: &Timers) {
        if self.invite && self.state == State::Completed {
            self.retransmit_at = None;
            if self.reliable {
                self.state = State::Terminated;
            } else {
                self.state = State::Confirmed;
                self.timeout_at = Some(now + t.t4); // timer I
            }
        }
    }

    /// True when `ack` (which matched no transaction) acknowledges our 2xx.
    pub(crate) fn is_ack_for_2xx(&self, ack: &Message) -> bool {
        self.state == State::Accepted
            && ack.call_id().is_ok_and(|c| c == self.dialog_key.0)
            && ack.cseq().is_ok_and(|c| c.seq == self.dialog_key.1)
            && ack
                .from()
                .is_ok_and(|f| f.tag().unwrap_or("") == self.dialog_key.2)
    }

    /// The ACK for our 2xx arrived: stop retransmitting it, and linger only
    /// T4 for a stray INVITE copy (the client stopped retransmitting at our
    /// 100 Trying), none on a reliable transport.
    pub(crate) fn on_ack_for_2xx(&mut self, now: Instant, t: &Timers) {
        self.acked = true;
        self.retransmit_at = None;
        if self.reliable {
            self.state = State::Terminated;
            self.timeout_at = None;
        } else {
            let linger = now + t.t4;
            self.timeout_at = Some(self.timeout_at.map_or(linger, |at| at.min(linger)));
        }
    }

    pub(crate) fn on_timeout(&mut self, now: Instant, t: &Timers, out: &mut Out) {
        if self.timeout_at.is_some_and(|at| at <= now) {
            let unacked_2xx = self.state == State::Accepted && !self.acked;
            if self.invite && (self.state == State::Completed || unacked_2xx) {
                out.events.push_back(TxEvent::AckTimeout {
                    key: self.key.clone(),
                });
            }
            self.timeout_at = None;
            self.retransmit_at = None;
            self.state = State::Terminated;
            return;
        }
        if self.retransmit_at.is_some_and(|at| at <= now) {
            if let Some(b) = self.last.clone() {
                self.send(b, out);
            }
            self.interval = (self.interval * 2).min(t.t2);
            self.retransmit_at = Some(now + self.interval);
        }
    }
}
