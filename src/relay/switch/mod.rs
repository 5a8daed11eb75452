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
//! on hang-up (a phone's or the API's), refusal, ring timeout or disconnect,
//! and its routes (and a fallback message's player) are removed, reported
//! by one `ended` or `failed` event; ids from a device are checked, so a
//! device cannot end or steer another device's call; memory is bounded
//! ([`MAX_CALLS_PER_SESSION`], which applications' calls count against too,
//! and [`MAX_EXTS_PER_SESSION`]).
//!
//! Calls come two ways ([`Origin`]): a phone dials (`call_setup` from its
//! box), or an application asks the relay ([`Switch::originate`]). An
//! application's call works as a PBX's click-to-call: the relay rings the
//! first extension (leg A, `call_setup` to its box, showing the target as
//! the caller); once A answers, it connects A to the echo or recording
//! service, or rings the target extension (leg B) and connects the two when
//! B answers. Every call has a [`CallId`] the API addresses
//! ([`Switch::list`], [`Switch::get`], [`Switch::end_call`]).
//!
//! Fallback ([`Fallback`], `[calls]` in the relay's config): a callee
//! extension that does not answer within `no_answer`, refuses (busy,
//! declined), cannot be reached by its box, or is not online at all, is
//! replaced once by the fallback: another extension (rung for
//! [`RING_TIMEOUT`]), or a recorded message the shell plays to the caller
//! ([`Action::Play`]) before the call ends. This holds for phones' calls and
//! applications' calls alike. Each step is reported as a [`CallEvent`]
//! ([`Action::Event`]).

mod events;
mod fallback;
mod originate;
mod signals;

pub use events::{CallEvent, EventKind};
pub use fallback::{CallSettings, Fallback};
pub use originate::{CallInfo, CallState, LegInfo, OriginateError};

use crate::proto::signal::{EndReason, RELAY_CALL_BIT, valid_extension};
use std::collections::HashMap;
use std::time::Duration;

/// A device session, as numbered by the server.
pub type SessionId = u64;
/// A call, as the switch, its events and the API number it (unique for the
/// life of the relay process).
pub type CallId = u64;
/// The echo service's number.
pub const ECHO: &str = "900";
/// The recording service's number.
pub const RECORD: &str = "901";
/// How long a callee may ring before the call ends with `timeout` (without
/// a fallback; with one, `[calls] no_answer_seconds`).
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
    /// Nowhere: the caller's audio while a recorded message plays.
    Discard,
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
    /// Play the fallback message once to `session` on relay flow `flow`
    /// with `ssrc` (the switch ends the call when it has played).
    Play {
        /// The call it belongs to.
        call: CallId,
        /// The caller's session.
        session: SessionId,
        /// The relay's flow towards the caller.
        flow: u64,
        /// Its SSRC.
        ssrc: u32,
    },
    /// Stop playing into this call.
    StopPlay(CallId),
    /// Report what happened (for webhooks and observers).
    Event(CallEvent),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Service {
    Echo,
    Record,
    Message,
}

/// Who started a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "api", derive(utoipa::ToSchema))]
pub enum Origin {
    /// A phone dialled.
    Phone,
    /// An application, through [`Switch::originate`].
    Api,
}

#[derive(Debug, Clone)]
struct Leg {
    session: SessionId,
    call: u32,
    /// The extension of the phone on this leg.
    ext: String,
    /// Flow the device sends this call's audio on (known after setup/answer).
    flow_in: Option<u64>,
    /// Relay flow (and SSRC) towards the device.
    flow_out: u64,
    ssrc_out: u32,
    /// Whether its ringing was reported.
    rang: bool,
}

#[derive(Debug, Clone)]
enum Peer {
    /// Not rung yet (an application's call before leg A answers), or no
    /// phone (an offline callee, until the fallback takes over).
    Pending,
    Service(Service),
    Device(Leg),
}

#[derive(Debug, Clone)]
struct Call {
    origin: Origin,
    from: String,
    to: String,
    /// The phone that dialled, or an application's leg A.
    caller: Leg,
    /// Whether the caller's leg is up (a phone's: from the start; leg A:
    /// once it answered).
    caller_up: bool,
    callee: Peer,
    /// Whether the call is connected (the callee or a service answered).
    answered: bool,
    ring_deadline: Duration,
    started: Duration,
    answered_at: Option<Duration>,
    /// The fallback taken (its target), at most once per call.
    fell_back: Option<String>,
    /// When a playing message ends the call.
    end_at: Option<Duration>,
}

impl Call {
    fn event(&self, k: CallId, kind: EventKind) -> Action {
        Action::Event(CallEvent {
            call: k,
            from: self.from.clone(),
            to: self.to.clone(),
            kind,
        })
    }
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
    calls: HashMap<CallId, Call>,
    /// (session, that session's call id) → call key.
    legs: HashMap<(SessionId, u32), CallId>,
    next_key: CallId,
    rng: fastrand::Rng,
    recording: bool,
    settings: CallSettings,
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
            settings: CallSettings::default(),
        }
    }

    /// Number the calls from `first` on (a fresh switch starts at 1).
    /// The call plane passes the wall clock in microseconds, so that a
    /// restarted relay never hands an application the id of an earlier
    /// call (ids stay below 2^53, exact as JSON numbers in JavaScript).
    pub fn set_first_call(&mut self, first: CallId) {
        self.next_key = self.next_key.max(first);
    }

    /// Whether calls to the recording service are taken (the default).
    pub fn set_recording(&mut self, on: bool) {
        self.recording = on;
    }

    /// The fallback and no-answer time (`[calls]`); none by default.
    pub fn set_calls(&mut self, settings: CallSettings) {
        self.settings = settings;
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

    /// A device disconnected at `now`: its extensions are freed and its
    /// calls end (the other legs hear `unavailable` before answer, `normal`
    /// after), except that a callee still ringing on it is replaced by the
    /// fallback, if any.
    pub fn session_down(&mut self, now: Duration, s: SessionId) -> Vec<Action> {
        let mut out = Vec::new();
        let mut keys: Vec<CallId> = self
            .calls
            .iter()
            .filter(|(_, c)| {
                c.caller.session == s || matches!(&c.callee, Peer::Device(l) if l.session == s)
            })
            .map(|(&k, _)| k)
            .collect();
        keys.sort_unstable();
        // Its extensions are gone before a fallback looks for an owner.
        self.directory.retain(|_, owner| *owner != s);
        for k in keys {
            let Some(c) = self.calls.get(&k) else {
                continue;
            };
            if !c.answered && c.caller.session != s {
                self.drop_callee(k, false, EndReason::Unavailable, &mut out);
                self.callee_failed(now, k, EndReason::Unavailable, &mut out);
                continue;
            }
            let reason = if c.answered {
                EndReason::Normal
            } else {
                EndReason::Unavailable
            };
            self.end(k, |l| l.session == s, reason, &mut out);
        }
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

    /// A new relay flow and SSRC towards session `s` (which must be live).
    fn new_out_flow(&mut self, s: SessionId) -> Option<(u64, u32)> {
        let ssrc = self.rng.u32(..);
        let sess = self.sessions.get_mut(&s)?;
        let f = sess.next_flow;
        sess.next_flow += 1;
        Some((f, ssrc))
    }

    /// Whether session `s` may take one more call.
    fn has_room(&self, s: SessionId) -> bool {
        self.sessions
            .get(&s)
            .is_some_and(|x| x.calls < MAX_CALLS_PER_SESSION)
    }

    /// Ring extension `ext` (on session `b`) for call `k` from `from`: a
    /// `call_setup` with a relay call id and a fresh relay flow; the leg is
    /// indexed and counted.
    fn ring(&mut self, k: CallId, b: SessionId, ext: &str, from: &str) -> Option<(Leg, Action)> {
        let (flow, ssrc) = self.new_out_flow(b)?;
        let sess = self.sessions.get_mut(&b)?;
        sess.next_call = sess.next_call.wrapping_add(1) & !RELAY_CALL_BIT;
        let call = sess.next_call | RELAY_CALL_BIT;
        sess.calls += 1;
        self.legs.insert((b, call), k);
        let setup = Signal::Setup {
            call,
            to: ext.to_string(),
            from: from.to_string(),
            flow,
            ssrc,
        };
        let leg = Leg {
            session: b,
            call,
            ext: ext.to_string(),
            flow_in: None,
            flow_out: flow,
            ssrc_out: ssrc,
            rang: false,
        };
        Some((leg, Action::Send(b, setup)))
    }

    /// How long a callee rings: `no_answer` when a fallback may take over.
    fn callee_rings(&self) -> Duration {
        if self.settings.fallback.is_some() {
            self.settings.no_answer
        } else {
            RING_TIMEOUT
        }
    }

    pub(crate) fn next_key(&mut self) -> CallId {
        let k = self.next_key;
        self.next_key += 1;
        k
    }

    /// When [`Switch::poll`] next has something to do.
    pub fn poll_timeout(&self) -> Option<Duration> {
        self.calls
            .values()
            .filter_map(|c| {
                if c.answered {
                    c.end_at
                } else {
                    Some(c.ring_deadline)
                }
            })
            .min()
    }

    /// End calls that rang too long (or hand them to the fallback), and
    /// calls whose message has played.
    pub fn poll(&mut self, now: Duration) -> Vec<Action> {
        let mut out = Vec::new();
        let mut due: Vec<(CallId, bool)> = self
            .calls
            .iter()
            .filter_map(|(&k, c)| match (c.answered, c.end_at) {
                (true, Some(t)) if t <= now => Some((k, true)),
                (false, _) if c.ring_deadline <= now => Some((k, false)),
                _ => None,
            })
            .collect();
        due.sort_unstable();
        for (k, played) in due {
            if played {
                self.end(k, |_| false, EndReason::Normal, &mut out);
                continue;
            }
            let callee_rang = self.calls.get(&k).is_some_and(|c| c.caller_up);
            if callee_rang {
                self.drop_callee(k, true, EndReason::Timeout, &mut out);
                self.callee_failed(now, k, EndReason::Timeout, &mut out);
            } else {
                self.end(k, |_| false, EndReason::Timeout, &mut out);
            }
        }
        out
    }

    /// Remove call `k`, telling every leg `skip` does not match (the leg
    /// that ended it, or a departed session's legs) why.
    fn end(
        &mut self,
        k: CallId,
        skip: impl Fn(&Leg) -> bool,
        reason: EndReason,
        out: &mut Vec<Action>,
    ) {
        let Some(c) = self.calls.remove(&k) else {
            return;
        };
        let kind = if c.answered {
            EventKind::Ended { reason }
        } else {
            EventKind::Failed { reason }
        };
        let event = c.event(k, kind);
        if matches!(c.callee, Peer::Service(Service::Message)) {
            out.push(Action::StopPlay(k));
        }
        let mut legs = vec![c.caller];
        if let Peer::Device(b) = c.callee {
            legs.push(b);
        }
        for l in legs {
            self.release(&l, out);
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
        out.push(event);
    }

    /// Forget leg `l`: its index, its session's count, its route.
    fn release(&mut self, l: &Leg, out: &mut Vec<Action>) {
        self.legs.remove(&(l.session, l.call));
        if let Some(sess) = self.sessions.get_mut(&l.session) {
            sess.calls = sess.calls.saturating_sub(1);
        }
        if let Some(f) = l.flow_in {
            out.push(Action::Unroute((l.session, f)));
        }
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_api;
