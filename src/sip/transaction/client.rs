//! Client transactions (RFC 3261 17.1, RFC 6026 7.2).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::{Out, Timers, Transmit, TxEvent, TxKey};
use crate::sip::message::Message;
use crate::sip::uri::Method;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Calling (INVITE) or Trying (non-INVITE).
    Calling,
    Proceeding,
    Completed,
    /// INVITE got a 2xx (RFC 6026): more 2xx go to the TU until timer M.
    Accepted,
    Terminated,
}

#[derive(Debug)]
pub(crate) struct ClientTx {
    key: TxKey,
    invite: bool,
    request: Message,
    bytes: Vec<u8>,
    dest: SocketAddr,
    reliable: bool,
    state: State,
    /// Timer A or E.
    retransmit_at: Option<Instant>,
    interval: Duration,
    /// Timer B, F (timeout) or D, K, M (linger).
    timeout_at: Option<Instant>,
    ack: Option<Vec<u8>>,
}

impl ClientTx {
    pub(crate) fn start(
        now: Instant,
        key: TxKey,
        request: Message,
        dest: SocketAddr,
        reliable: bool,
        t: &Timers,
        out: &mut Out,
    ) -> ClientTx {
        let bytes = request.encode();
        out.transmits.push_back(Transmit {
            dest,
            reliable,
            bytes: bytes.clone(),
        });
        ClientTx {
            invite: key.method == Method::Invite,
            key,
            request,
            bytes,
            dest,
            reliable,
            state: State::Calling,
            retransmit_at: (!reliable).then(|| now + t.t1),
            interval: t.t1,
            timeout_at: Some(now + 64 * t.t1),
            ack: None,
        }
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
            dest: self.dest,
            reliable: self.reliable,
            bytes,
        });
    }

    /// Timers D and K: zero on reliable transports.
    fn linger(&mut self, now: Instant, d: Duration) {
        self.retransmit_at = None;
        if self.reliable {
            self.state = State::Terminated;
        } else {
            self.timeout_at = Some(now + d);
        }
    }

    pub(crate) fn on_response(&mut self, now: Instant, resp: Message, t: &Timers, out: &mut Out) {
        let Some(code) = resp.code() else { return };
        let key = self.key.clone();
        let deliver = |out: &mut Out, resp: Message| {
            out.events.push_back(TxEvent::Response {
                key,
                msg: Box::new(resp),
            })
        };
        match (self.invite, self.state) {
            (_, State::Calling | State::Proceeding) if code < 200 => {
                self.state = State::Proceeding;
                if self.invite {
                    // Timer A stops; timer B only runs in Calling.
                    self.retransmit_at = None;
                    self.timeout_at = None;
                }
                deliver(out, resp);
            }
            (false, State::Calling | State::Proceeding) => {
                self.state = State::Completed;
                self.linger(now, t.t4); // timer K
                deliver(out, resp);
            }
            (true, State::Calling | State::Proceeding) if code < 300 => {
                self.state = State::Accepted;
                self.retransmit_at = None;
                self.timeout_at = Some(now + 64 * t.t1); // timer M
                deliver(out, resp);
            }
            (true, State::Calling | State::Proceeding) => {
                let ack = ack_for(&self.request, &resp).encode();
                self.send(ack.clone(), out);
                self.ack = Some(ack);
                self.state = State::Completed;
                self.linger(now, Duration::from_secs(32)); // timer D
                deliver(out, resp);
            }
            (true, State::Completed) if code >= 300 => {
                if let Some(ack) = self.ack.clone() {
                    self.send(ack, out);
                }
            }
            (true, State::Accepted) if (200..300).contains(&code) => deliver(out, resp),
            _ => {}
        }
    }

    pub(crate) fn on_timeout(&mut self, now: Instant, t: &Timers, out: &mut Out) {
        if self.timeout_at.is_some_and(|at| at <= now) {
            self.timeout_at = None;
            self.retransmit_at = None;
            let timed_out = matches!(self.state, State::Calling)
                || (!self.invite && self.state == State::Proceeding);
            if timed_out {
                let r = Message::response_to(&self.request, 408);
                out.events.push_back(TxEvent::Response {
                    key: self.key.clone(),
                    msg: Box::new(r),
                });
            }
            self.state = State::Terminated;
            return;
        }
        if self.retransmit_at.is_some_and(|at| at <= now) {
            self.send(self.bytes.clone(), out);
            self.interval = match (self.invite, self.state) {
                (true, _) => self.interval * 2,
                (false, State::Proceeding) => t.t2,
                (false, _) => (self.interval * 2).min(t.t2),
            };
            self.retransmit_at = Some(now + self.interval);
        }
    }
}

/// The ACK for a non-2xx final response (RFC 3261 17.1.1.3).
pub(crate) fn ack_for(req: &Message, resp: &Message) -> Message {
    let uri = req.request_uri().cloned().unwrap_or_else(invalid_uri);
    let mut ack = Message::request(Method::Ack, uri);
    if let Some(v) = req.headers.get("Via") {
        ack.headers.push("Via", v);
    }
    ack.headers.push("Max-Forwards", "70");
    for name in ["From", "Call-ID"] {
        if let Some(v) = req.headers.get(name) {
            ack.headers.push(name, v);
        }
    }
    if let Some(v) = resp.headers.get("To") {
        ack.headers.push("To", v);
    }
    if let Ok(c) = req.cseq() {
        ack.headers.push("CSeq", format!("{} ACK", c.seq));
    }
    for r in req.headers.get_all("Route") {
        ack.headers.push("Route", r);
    }
    ack
}

fn invalid_uri() -> crate::sip::uri::SipUri {
    crate::sip::uri::SipUri {
        secure: false,
        user: None,
        host: "invalid".into(),
        port: None,
        params: Default::default(),
        headers: None,
    }
}

/// The CANCEL for a pending INVITE we sent (RFC 3261 9.1): same Request-URI,
/// Call-ID, From, To, CSeq number and top Via (so the same branch), and the
/// INVITE's Route headers. Send it with `Transactions::send_request`.
pub fn cancel_for(invite: &Message) -> Message {
    let uri = invite.request_uri().cloned().unwrap_or_else(invalid_uri);
    let mut c = Message::request(Method::Cancel, uri);
    if let Some(v) = invite.headers.get("Via") {
        c.headers.push("Via", v);
    }
    c.headers.push("Max-Forwards", "70");
    for name in ["From", "To", "Call-ID"] {
        if let Some(v) = invite.headers.get(name) {
            c.headers.push(name, v);
        }
    }
    if let Ok(cs) = invite.cseq() {
        c.headers.push("CSeq", format!("{} CANCEL", cs.seq));
    }
    for r in invite.headers.get_all("Route") {
        c.headers.push("Route", r);
    }
    c
}
