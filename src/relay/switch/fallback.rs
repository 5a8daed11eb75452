//! Fallback routing: a callee that does not take a call is replaced, once
//! per call, by the configured fallback (`[calls]` in the relay's config).
//!
//! What counts as not taking it: no answer within
//! [`CallSettings::no_answer`], a refusal (busy, declined), a box that
//! cannot reach the phone (unavailable, not found) or disconnects while it
//! rings, or an extension that no connected box announced. An error (a protocol or media failure) or a
//! hang-up after the answer never falls back. The fallback extension rings
//! for [`super::RING_TIMEOUT`]; if it is offline, the caller's own
//! extension, the callee itself, or does not answer either, the call ends
//! with the callee's reason. A recorded message answers the call, plays
//! once (the shell plays it: [`super::Action::Play`]) and the switch ends
//! the call when the message's duration has passed.

use super::{
    Action, CallId, EndReason, EventKind, Origin, Peer, RING_TIMEOUT, Route, Service, Signal,
    Switch,
};
use std::time::Duration;

/// Time after a message's last packet before the call ends (the phone's
/// jitter buffer still plays it out).
pub const MESSAGE_TAIL: Duration = Duration::from_millis(500);

/// What replaces a callee that does not take a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fallback {
    /// Ring this extension instead.
    Extension(String),
    /// Answer with a recorded message (the shell holds its audio) of this
    /// length, then hang up.
    Message {
        /// How long the message plays.
        duration: Duration,
    },
}

/// The switch's `[calls]` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallSettings {
    /// The fallback, if any.
    pub fallback: Option<Fallback>,
    /// How long a callee rings before the fallback takes over (used only
    /// with a fallback; without one a callee rings [`RING_TIMEOUT`]).
    pub no_answer: Duration,
}

impl Default for CallSettings {
    fn default() -> Self {
        CallSettings {
            fallback: None,
            no_answer: Duration::from_secs(20),
        }
    }
}

/// Whether a callee that ended an unanswered call for `reason` is replaced
/// by the fallback.
pub(super) fn takes(reason: EndReason) -> bool {
    matches!(
        reason,
        EndReason::Busy
            | EndReason::Declined
            | EndReason::Timeout
            | EndReason::Unavailable
            | EndReason::NotFound
    )
}

impl Switch {
    /// Take the callee's leg off call `k` (the call stays, its callee
    /// pending); `tell`: send it `call_end` with `reason` (its box still
    /// rings the phone).
    pub(super) fn drop_callee(
        &mut self,
        k: CallId,
        tell: bool,
        reason: EndReason,
        out: &mut Vec<Action>,
    ) {
        let Some(c) = self.calls.get_mut(&k) else {
            return;
        };
        let Peer::Device(b) = std::mem::replace(&mut c.callee, Peer::Pending) else {
            return;
        };
        self.release(&b, out);
        if tell {
            out.push(Action::Send(
                b.session,
                Signal::End {
                    call: b.call,
                    reason,
                },
            ));
        }
    }

    /// Call `k`'s callee did not take it for `reason` (its leg already
    /// dropped): hand the call to the fallback, or end it.
    pub(super) fn callee_failed(
        &mut self,
        now: Duration,
        k: CallId,
        reason: EndReason,
        out: &mut Vec<Action>,
    ) {
        let taken = match self.usable_fallback(k) {
            Some(Fallback::Extension(f)) => self.fall_back_to_extension(now, k, &f, reason, out),
            Some(Fallback::Message { duration }) => {
                self.fall_back_to_message(now, k, duration, reason, out)
            }
            None => false,
        };
        if !taken {
            self.end(k, |_| false, reason, out);
        }
    }

    /// The fallback call `k` may take now, if any.
    fn usable_fallback(&self, k: CallId) -> Option<Fallback> {
        let c = self.calls.get(&k)?;
        if c.fell_back.is_some() || c.answered || !c.caller_up {
            return None;
        }
        match self.settings.fallback.clone()? {
            Fallback::Extension(f) => {
                let b = self.owner(&f)?;
                (f != c.to && f != c.caller.ext && self.has_room(b))
                    .then_some(Fallback::Extension(f))
            }
            m => Some(m),
        }
    }

    fn fall_back_to_extension(
        &mut self,
        now: Duration,
        k: CallId,
        f: &str,
        reason: EndReason,
        out: &mut Vec<Action>,
    ) -> bool {
        let Some(b) = self.owner(f) else {
            return false;
        };
        let Some(from) = self.calls.get(&k).map(|c| c.from.clone()) else {
            return false;
        };
        let Some((leg, setup)) = self.ring(k, b, f, &from) else {
            return false;
        };
        let Some(c) = self.calls.get_mut(&k) else {
            return false;
        };
        out.push(c.event(
            k,
            EventKind::Fallback {
                callee: c.to.clone(),
                target: f.to_string(),
                reason,
            },
        ));
        out.push(setup);
        c.callee = Peer::Device(leg);
        c.ring_deadline = now + RING_TIMEOUT;
        c.fell_back = Some(f.to_string());
        true
    }

    fn fall_back_to_message(
        &mut self,
        now: Duration,
        k: CallId,
        duration: Duration,
        reason: EndReason,
        out: &mut Vec<Action>,
    ) -> bool {
        let Some(c) = self.calls.get_mut(&k) else {
            return false;
        };
        out.push(c.event(
            k,
            EventKind::Fallback {
                callee: c.to.clone(),
                target: "message".into(),
                reason,
            },
        ));
        c.callee = Peer::Service(Service::Message);
        c.answered = true;
        c.answered_at = Some(now);
        c.end_at = Some(now + duration + MESSAGE_TAIL);
        c.fell_back = Some("message".into());
        let a = &c.caller;
        if c.origin == Origin::Phone {
            out.push(Action::Send(
                a.session,
                Signal::Answer {
                    call: a.call,
                    flow: a.flow_out,
                    ssrc: a.ssrc_out,
                },
            ));
        }
        if let Some(f) = a.flow_in {
            out.push(Action::Route((a.session, f), Route::Discard));
        }
        out.push(Action::Play {
            call: k,
            session: a.session,
            flow: a.flow_out,
            ssrc: a.ssrc_out,
        });
        true
    }
}
