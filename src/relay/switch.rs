//! The relay's call switch, sans-IO: a directory of extensions, the state of
//! every call, and the media routes between call legs. The server feeds it
//! control messages and a clock, and carries out the [`Action`]s it returns.
//!
//! Numbering plan (also in README.md):
//!
//! | dialled | goes to |
//! | --- | --- |
//! | `900` | echo service: the caller hears themself; digits are echoed as DTMF |
//! | `901` | recording service: the relay records the caller to Ogg Opus |
//! | any other extension | the phone that registered it, on whichever box |
//!
//! Extensions are unique across the fleet: 2 to 8 digits, not starting with
//! `9` (the relay's service range). The first box to announce an extension
//! owns it until its last phone unregisters or the box disconnects; a second
//! claim is refused with `ext_conflict` (the server checks the registry's
//! record of owners first, so that the claim holds across reconnects). A
//! new session of the same device takes its extensions over from the
//! session it replaces. A call's `from` may not be an extension another
//! device announced. Calls to the recording service are refused
//! (`unavailable`) when the relay does not record.
//!
//! Guarantees: every call ends with a `call_end` to each leg still connected,
//! on hang-up, refusal, ring timeout or disconnect, and its routes are
//! removed; ids from a device are checked, so a device cannot end or steer
//! another device's call; memory is bounded ([`MAX_CALLS_PER_SESSION`],
//! [`MAX_EXTS_PER_SESSION`]).

use crate::proto::signal::{EndReason, RELAY_CALL_BIT, valid_extension, valid_number};
use std::collections::HashMap;
use std::time::Duration;

/// A device session, as numbered by the server.
pub type SessionId = u64;
/// The echo service's number.
pub const ECHO: &str = "900";
/// The recording service's number.
pub const RECORD: &str = "901";
/// How long a callee may ring before the call ends with `timeout`.
pub const RING_TIMEOUT: Duration = Duration::from_secs(60);
/// Most simultaneous calls with a leg on one session (one box), so that a
/// box cannot exhaust the relay: a call past it is refused with `busy`
/// (486 Busy Here at the phone). A box's bridge takes at most 512 calls
/// itself (`bridge::MAX_CALLS`, then 503 to the phone).
pub const MAX_CALLS_PER_SESSION: usize = 512;
/// Most extensions one box may announce.
pub const MAX_EXTS_PER_SESSION: usize = 256;
/// First flow id the relay uses for call audio towards a device (flow 1 is
/// the capture downlink).
pub const FIRST_CALL_FLOW: u64 = 16;

/// An outgoing control message, owned.
pub use crate::proto::signal::CallSignal as Signal;

/// Where datagrams arriving on one (session, flow) go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// To `session` on `flow`, re-stamped with `ssrc`.
    Forward {
        /// Target session (the same one for the echo service).
        session: SessionId,
        /// Relay flow id towards it.
        flow: u64,
        /// SSRC the relay uses on that flow.
        ssrc: u32,
    },
    /// Into a recording of the call.
    Record,
}

/// What the server must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send a control message to a session.
    Send(SessionId, Signal),
    /// Install a media route for datagrams from (session, flow).
    Route((SessionId, u64), Route),
    /// Remove the route of (session, flow).
    Unroute((SessionId, u64)),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Service {
    Echo,
    Record,
}

#[derive(Debug, Clone)]
struct Leg {
    session: SessionId,
    call: u32,
    /// Flow the device sends this call's audio on (known after setup/answer).
    flow_in: Option<u64>,
    /// Relay flow (and SSRC) towards the device.
    flow_out: u64,
    ssrc_out: u32,
}

#[derive(Debug, Clone)]
enum Peer {
    Service(Service),
    Device(Leg),
}

#[derive(Debug, Clone)]
struct Call {
    caller: Leg,
    callee: Peer,
    answered: bool,
    ring_deadline: Duration,
}

#[derive(Debug, Default)]
struct Session {
    /// The device the session authenticated as (`None`: unnamed, tests).
    device: Option<String>,
    exts: Vec<String>,
    calls: usize,
    next_flow: u64,
    next_call: u32,
}

/// The switch.
#[derive(Debug)]
pub struct Switch {
    sessions: HashMap<SessionId, Session>,
    directory: HashMap<String, SessionId>,
    calls: HashMap<u64, Call>,
    /// (session, that session's call id) → call key.
    legs: HashMap<(SessionId, u32), u64>,
    next_key: u64,
    rng: fastrand::Rng,
    recording: bool,
}

impl Switch {
    /// An empty switch; `seed` drives SSRC choice (tests pass a fixed one).
    pub fn new(seed: u64) -> Self {
        Switch {
            sessions: HashMap::new(),
            directory: HashMap::new(),
            calls: HashMap::new(),
            legs: HashMap::new(),
            next_key: 1,
            rng: fastrand::Rng::with_seed(seed),
            recording: true,
        }
    }

    /// Whether calls to the recording service are taken (the default).
    pub fn set_recording(&mut self, on: bool) {
        self.recording = on;
    }

    /// A device connected.
    pub fn session_up(&mut self, s: SessionId) {
        self.sessions.insert(
            s,
            Session {
                next_flow: FIRST_CALL_FLOW,
                ..Session::default()
            },
        );
    }

    /// Device `device` connected as session `s`.
    pub fn device_up(&mut self, s: SessionId, device: &str) {
        self.session_up(s);
        if let Some(sess) = self.sessions.get_mut(&s) {
            sess.device = Some(device.to_string());
        }
    }

    /// A device disconnected: its extensions are freed and its calls end
    /// (the other legs hear `unavailable` before answer, `normal` after).
    pub fn session_down(&mut self, s: SessionId) -> Vec<Action> {
        let mut out = Vec::new();
        let keys: Vec<u64> = self
            .calls
            .iter()
            .filter(|(_, c)| {
                c.caller.session == s || matches!(&c.callee, Peer::Device(l) if l.session == s)
            })
            .map(|(&k, _)| k)
            .collect();
        for k in keys {
            let reason = if self.calls[&k].answered {
                EndReason::Normal
            } else {
                EndReason::Unavailable
            };
            self.end(k, |l| l.session == s, reason, &mut out);
        }
        self.directory.retain(|_, owner| *owner != s);
        self.sessions.remove(&s);
        out
    }

    /// Which session owns `ext`.
    pub fn owner(&self, ext: &str) -> Option<SessionId> {
        self.directory.get(ext).copied()
    }

    /// Number of calls in progress.
    pub fn calls(&self) -> usize {
        self.calls.len()
    }

    /// `ext_up` from a session.
    pub fn ext_up(&mut self, s: SessionId, ext: &str) -> Vec<Action> {
        let err = |code, message: String| vec![Action::Send(s, Signal::Error { code, message })];
        let Some(sess) = self.sessions.get_mut(&s) else {
            return Vec::new();
        };
        if !valid_extension(ext) {
            return err(
                "ext_invalid",
                format!(
                    "extension `{}` is not 2-8 digits outside 9xx",
                    ext.escape_debug()
                ),
            );
        }
        let device = sess.device.clone();
        match self.directory.get(ext) {
            Some(&o) if o == s => return Vec::new(),
            // The same device's earlier session (being replaced): the
            // extension moves to the new one.
            Some(&o)
                if device.is_some()
                    && self.sessions.get(&o).and_then(|x| x.device.as_ref()) == device.as_ref() =>
            {
                if let Some(old) = self.sessions.get_mut(&o) {
                    old.exts.retain(|e| e != ext);
                }
                self.directory.remove(ext);
            }
            Some(_) => {
                return err(
                    "ext_conflict",
                    format!("extension {ext} is registered at another box"),
                );
            }
            None => {}
        }
        let Some(sess) = self.sessions.get_mut(&s) else {
            return Vec::new();
        };
        if sess.exts.len() >= MAX_EXTS_PER_SESSION {
            return err(
                "ext_limit",
                format!("at most {MAX_EXTS_PER_SESSION} extensions per box"),
            );
        }
        sess.exts.push(ext.to_string());
        self.directory.insert(ext.to_string(), s);
        Vec::new()
    }

    /// Whether `ext` is announced by a session of another device than
    /// session `s`'s.
    fn owned_elsewhere(&self, s: SessionId, ext: &str) -> bool {
        let Some(&o) = self.directory.get(ext) else {
            return false;
        };
        if o == s {
            return false;
        }
        let device = |x| self.sessions.get(&x).and_then(|v| v.device.as_ref());
        !(device(s).is_some() && device(s) == device(o))
    }

    /// `ext_down` from a session.
    pub fn ext_down(&mut self, s: SessionId, ext: &str) {
        if self.directory.get(ext) == Some(&s) {
            self.directory.remove(ext);
            if let Some(sess) = self.sessions.get_mut(&s) {
                sess.exts.retain(|e| e != ext);
            }
        }
    }

    fn new_out_flow(&mut self, s: SessionId) -> (u64, u32) {
        let ssrc = self.rng.u32(..);
        let sess = self.sessions.get_mut(&s).expect("live session");
        let f = sess.next_flow;
        sess.next_flow += 1;
        (f, ssrc)
    }

    /// `call_setup` from a session (a phone dialled `to`).
    pub fn setup(
        &mut self,
        now: Duration,
        s: SessionId,
        call: u32,
        to: &str,
        from: &str,
        flow: u64,
    ) -> Vec<Action> {
        let mut out = Vec::new();
        let refuse = |reason| vec![Action::Send(s, Signal::End { call, reason })];
        if !self.sessions.contains_key(&s) {
            return out;
        }
        if call & RELAY_CALL_BIT != 0 || self.legs.contains_key(&(s, call)) {
            out.push(Action::Send(
                s,
                Signal::Error {
                    code: "bad_call_id",
                    message: format!("call id {call} is in use or in the relay's range"),
                },
            ));
            return out;
        }
        if !valid_number(to) || !valid_number(from) {
            return refuse(EndReason::NotFound);
        }
        // A box speaks only for its own phones: not as an extension
        // another box announced. (A phone may call without registering,
        // so an extension nobody announced is the box's word; the server
        // also checks the registry's owners, connected or not.)
        if self.owned_elsewhere(s, from) {
            out.push(Action::Send(
                s,
                Signal::Error {
                    code: "bad_from",
                    message: format!(
                        "caller {} is an extension of another box",
                        from.escape_debug()
                    ),
                },
            ));
            out.push(Action::Send(
                s,
                Signal::End {
                    call,
                    reason: EndReason::Declined,
                },
            ));
            return out;
        }
        if to == RECORD && !self.recording {
            return refuse(EndReason::Unavailable);
        }
        if self.sessions[&s].calls >= MAX_CALLS_PER_SESSION {
            return refuse(EndReason::Busy);
        }
        let (flow_out, ssrc_out) = self.new_out_flow(s);
        let caller = Leg {
            session: s,
            call,
            flow_in: Some(flow),
            flow_out,
            ssrc_out,
        };
        let key = self.next_key;
        self.next_key += 1;
        let callee = match to {
            ECHO => {
                out.push(Action::Route(
                    (s, flow),
                    Route::Forward {
                        session: s,
                        flow: flow_out,
                        ssrc: ssrc_out,
                    },
                ));
                Peer::Service(Service::Echo)
            }
            RECORD => {
                out.push(Action::Route((s, flow), Route::Record));
                Peer::Service(Service::Record)
            }
            _ => {
                let Some(b) = self.owner(to) else {
                    return refuse(EndReason::NotFound);
                };
                if self.sessions[&b].calls >= MAX_CALLS_PER_SESSION {
                    return refuse(EndReason::Busy);
                }
                let (bflow, bssrc) = self.new_out_flow(b);
                let sess = self.sessions.get_mut(&b).expect("live");
                sess.next_call = sess.next_call.wrapping_add(1) & !RELAY_CALL_BIT;
                let bcall = sess.next_call | RELAY_CALL_BIT;
                out.push(Action::Send(
                    b,
                    Signal::Setup {
                        call: bcall,
                        to: to.to_string(),
                        from: from.to_string(),
                        flow: bflow,
                        ssrc: bssrc,
                    },
                ));
                Peer::Device(Leg {
                    session: b,
                    call: bcall,
                    flow_in: None,
                    flow_out: bflow,
                    ssrc_out: bssrc,
                })
            }
        };
        let answered = matches!(callee, Peer::Service(_));
        if answered {
            out.push(Action::Send(
                s,
                Signal::Answer {
                    call,
                    flow: flow_out,
                    ssrc: ssrc_out,
                },
            ));
        }
        if let Peer::Device(l) = &callee {
            self.legs.insert((l.session, l.call), key);
            if let Some(sess) = self.sessions.get_mut(&l.session) {
                sess.calls += 1;
            }
        }
        self.legs.insert((s, call), key);
        if let Some(sess) = self.sessions.get_mut(&s) {
            sess.calls += 1;
        }
        self.calls.insert(
            key,
            Call {
                caller,
                callee,
                answered,
                ring_deadline: now + RING_TIMEOUT,
            },
        );
        out
    }

    /// The call `s` knows as `call`, when `s` is its callee.
    fn as_callee(&self, s: SessionId, call: u32) -> Option<u64> {
        let k = *self.legs.get(&(s, call))?;
        matches!(&self.calls[&k].callee, Peer::Device(l) if l.session == s).then_some(k)
    }

    /// `call_ringing` from the callee's box.
    pub fn ringing(&mut self, s: SessionId, call: u32) -> Vec<Action> {
        match self.as_callee(s, call) {
            Some(k) if !self.calls[&k].answered => {
                let c = &self.calls[&k].caller;
                vec![Action::Send(c.session, Signal::Ringing { call: c.call })]
            }
            _ => Vec::new(),
        }
    }

    /// `call_answer` from the callee's box.
    pub fn answer(&mut self, s: SessionId, call: u32, flow: u64) -> Vec<Action> {
        let Some(k) = self.as_callee(s, call) else {
            return Vec::new();
        };
        let c = self.calls.get_mut(&k).expect("indexed");
        if c.answered {
            return Vec::new();
        }
        c.answered = true;
        let Peer::Device(b) = &mut c.callee else {
            return Vec::new();
        };
        b.flow_in = Some(flow);
        let a = &c.caller;
        let mut out = vec![Action::Route(
            (b.session, flow),
            Route::Forward {
                session: a.session,
                flow: a.flow_out,
                ssrc: a.ssrc_out,
            },
        )];
        if let Some(af) = a.flow_in {
            out.push(Action::Route(
                (a.session, af),
                Route::Forward {
                    session: b.session,
                    flow: b.flow_out,
                    ssrc: b.ssrc_out,
                },
            ));
        }
        out.push(Action::Send(
            a.session,
            Signal::Answer {
                call: a.call,
                flow: a.flow_out,
                ssrc: a.ssrc_out,
            },
        ));
        out
    }

    /// `call_end` from either leg.
    pub fn hangup(&mut self, s: SessionId, call: u32, reason: EndReason) -> Vec<Action> {
        let mut out = Vec::new();
        if let Some(&k) = self.legs.get(&(s, call)) {
            // Both legs may be on this box (two of its phones): only the one
            // that hung up is skipped.
            self.end(k, |l| l.session == s && l.call == call, reason, &mut out);
        }
        out
    }

    /// `dtmf` from either leg: to the other leg, or back from the echo service.
    pub fn dtmf(&mut self, s: SessionId, call: u32, digit: char, duration_ms: u16) -> Vec<Action> {
        let Some(&k) = self.legs.get(&(s, call)) else {
            return Vec::new();
        };
        let c = &self.calls[&k];
        if !c.answered {
            return Vec::new();
        }
        let to = match &c.callee {
            Peer::Service(Service::Echo) => Some((c.caller.session, c.caller.call)),
            Peer::Service(Service::Record) => None,
            Peer::Device(b) if b.session == s && b.call == call => {
                Some((c.caller.session, c.caller.call))
            }
            Peer::Device(b) => Some((b.session, b.call)),
        };
        to.map(|(session, call)| {
            vec![Action::Send(
                session,
                Signal::Dtmf {
                    call,
                    digit,
                    duration_ms,
                },
            )]
        })
        .unwrap_or_default()
    }

    /// When [`Switch::poll`] next has something to do.
    pub fn poll_timeout(&self) -> Option<Duration> {
        self.calls
            .values()
            .filter(|c| !c.answered)
            .map(|c| c.ring_deadline)
            .min()
    }

    /// End calls that rang too long.
    pub fn poll(&mut self, now: Duration) -> Vec<Action> {
        let mut out = Vec::new();
        let due: Vec<u64> = self
            .calls
            .iter()
            .filter(|(_, c)| !c.answered && c.ring_deadline <= now)
            .map(|(&k, _)| k)
            .collect();
        for k in due {
            self.end(k, |_| false, EndReason::Timeout, &mut out);
        }
        out
    }

    /// Remove call `k`, telling every leg `skip` does not match (the leg
    /// that ended it, or a departed session's legs) why.
    fn end(
        &mut self,
        k: u64,
        skip: impl Fn(&Leg) -> bool,
        reason: EndReason,
        out: &mut Vec<Action>,
    ) {
        let Some(c) = self.calls.remove(&k) else {
            return;
        };
        let mut legs = vec![c.caller];
        if let Peer::Device(b) = c.callee {
            legs.push(b);
        }
        for l in legs {
            self.legs.remove(&(l.session, l.call));
            if let Some(sess) = self.sessions.get_mut(&l.session) {
                sess.calls = sess.calls.saturating_sub(1);
            }
            if let Some(f) = l.flow_in {
                out.push(Action::Unroute((l.session, f)));
            }
            if !skip(&l) {
                out.push(Action::Send(
                    l.session,
                    Signal::End {
                        call: l.call,
                        reason,
                    },
                ));
            }
        }
    }
}

#[cfg(test)]
#[path = "switch/tests.rs"]
mod tests;
