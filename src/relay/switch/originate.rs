//! Calls started by applications (click-to-call), and what the API sees of
//! every call: [`Switch::originate`], [`Switch::list`], [`Switch::get`],
//! [`Switch::end_call`].
//!
//! An application's call rings extension `from` first (leg A; its phone
//! shows `to` as the caller). When A answers, `to` is connected: the echo or
//! recording service at once, or extension `to` is rung (leg B; its phone
//! shows `from`) and the two are connected when B answers. Leg A rings for
//! [`RING_TIMEOUT`]; B as any callee does (the fallback may take over).
//! Ending a call through the API tells every leg (`call_end`: the boxes
//! send BYE, or CANCEL to a phone still ringing).

use super::{
    Action, CallId, ECHO, EndReason, EventKind, Origin, Peer, RECORD, RING_TIMEOUT, Route, Service,
    Switch,
};
use crate::proto::signal::valid_extension;
use serde::Serialize;
use std::time::Duration;
use thiserror::Error;

/// Why an application's call was not started.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum OriginateError {
    /// A number is not an extension (2-8 digits outside 9xx) nor, for the
    /// target, `900` or `901`.
    #[error(
        "`{0}` is not an extension (2-8 digits, not starting with 9) or, as the target, 900 (echo) or 901 (recording)"
    )]
    BadNumber(String),
    /// `from` and `to` are the same extension.
    #[error("a call from extension {0} to itself: give two different extensions")]
    SameNumber(String),
    /// No connected box has the extension registered.
    #[error(
        "extension {0} is not registered at any connected box: check that its phone is registered and its box online"
    )]
    Offline(String),
    /// The target is the recording service and the relay does not record.
    #[error("the relay does not record (`[recording] enabled = false`): 901 is not available")]
    RecordingOff,
    /// The box of an extension has as many calls as it may.
    #[error("the box of extension {0} has too many calls; retry later")]
    Busy(String),
}

/// Where a call is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "api", derive(utoipa::ToSchema))]
pub enum CallState {
    /// An application's leg A rings.
    Calling,
    /// The callee (or the fallback extension) rings.
    Ringing,
    /// Connected: two phones, or a phone and a service.
    Connected,
    /// The fallback message plays.
    Message,
}

/// A phone on a call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "api", derive(utoipa::ToSchema))]
pub struct LegInfo {
    /// Its extension.
    pub ext: String,
    /// The box it is on (its device id).
    pub device: Option<String>,
    /// Whether it answered (a phone that dialled: from the start).
    pub answered: bool,
}

/// A live call, as the API shows it (times since the switch's clock
/// started; the shell turns them into wall-clock times).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallInfo {
    /// The call's id.
    pub id: CallId,
    /// Who started it.
    pub origin: Origin,
    /// The calling extension.
    pub from: String,
    /// The number dialled or asked for.
    pub to: String,
    /// Where it is.
    pub state: CallState,
    /// Its phones: the caller (or leg A) first.
    pub legs: Vec<LegInfo>,
    /// When it started.
    pub started: Duration,
    /// When it was connected.
    pub answered: Option<Duration>,
    /// The fallback it took: an extension, or `message`.
    pub fallback: Option<String>,
}

impl Switch {
    /// An application's call: ring extension `from`, then connect it to
    /// `to` (an extension, [`ECHO`] or [`RECORD`]). Returns the call's id
    /// and the actions (the `call_setup` to `from`'s box).
    pub fn originate(
        &mut self,
        now: Duration,
        from: &str,
        to: &str,
    ) -> Result<(CallId, Vec<Action>), OriginateError> {
        if !valid_extension(from) {
            return Err(OriginateError::BadNumber(from.escape_debug().to_string()));
        }
        let service = matches!(to, ECHO | RECORD);
        if !service && !valid_extension(to) {
            return Err(OriginateError::BadNumber(to.escape_debug().to_string()));
        }
        if from == to {
            return Err(OriginateError::SameNumber(from.to_string()));
        }
        if to == RECORD && !self.recording {
            return Err(OriginateError::RecordingOff);
        }
        let a = self
            .owner(from)
            .ok_or_else(|| OriginateError::Offline(from.to_string()))?;
        if !self.has_room(a) {
            return Err(OriginateError::Busy(from.to_string()));
        }
        // An offline target is refused now, unless a fallback would take it.
        if !service && self.owner(to).is_none() && self.settings.fallback.is_none() {
            return Err(OriginateError::Offline(to.to_string()));
        }
        let k = self.next_key();
        let (leg, setup) = self
            .ring(k, a, from, to)
            .ok_or_else(|| OriginateError::Offline(from.to_string()))?;
        self.calls.insert(
            k,
            super::Call {
                origin: Origin::Api,
                from: from.to_string(),
                to: to.to_string(),
                caller: leg,
                caller_up: false,
                callee: Peer::Pending,
                answered: false,
                ring_deadline: now + RING_TIMEOUT,
                started: now,
                answered_at: None,
                fell_back: None,
                end_at: None,
            },
        );
        Ok((k, vec![setup]))
    }

    /// Leg A of application call `k` answered: connect the service, or ring
    /// the target extension.
    pub(super) fn connect_target(&mut self, now: Duration, k: CallId, out: &mut Vec<Action>) {
        let Some(c) = self.calls.get(&k) else {
            return;
        };
        let (to, from) = (c.to.clone(), c.from.clone());
        let a = c.caller.clone();
        let service = match (to.as_str(), a.flow_in) {
            (ECHO, Some(f)) => {
                out.push(Action::Route(
                    (a.session, f),
                    Route::Forward {
                        session: a.session,
                        flow: a.flow_out,
                        ssrc: a.ssrc_out,
                    },
                ));
                Some(Service::Echo)
            }
            (RECORD, Some(f)) => {
                out.push(Action::Route((a.session, f), Route::Record));
                Some(Service::Record)
            }
            _ => None,
        };
        if let Some(svc) = service {
            let Some(c) = self.calls.get_mut(&k) else {
                return;
            };
            c.callee = Peer::Service(svc);
            c.answered = true;
            c.answered_at = Some(now);
            out.push(c.event(k, EventKind::Answered { ext: to }));
            return;
        }
        let b = self.owner(&to).filter(|&b| self.has_room(b));
        let rung = b.and_then(|b| self.ring(k, b, &to, &from));
        let ring_for = self.callee_rings();
        match (rung, self.calls.get_mut(&k)) {
            (Some((leg, setup)), Some(c)) => {
                out.push(setup);
                c.callee = Peer::Device(leg);
                c.ring_deadline = now + ring_for;
            }
            _ => {
                let reason = if b.is_none() && self.owner(&to).is_some() {
                    EndReason::Busy
                } else {
                    EndReason::Unavailable
                };
                self.callee_failed(now, k, reason, out);
            }
        }
    }

    /// Every live call, oldest first.
    pub fn list(&self) -> Vec<CallInfo> {
        let mut ids: Vec<CallId> = self.calls.keys().copied().collect();
        ids.sort_unstable();
        ids.into_iter().filter_map(|k| self.get(k)).collect()
    }

    /// Live call `id`.
    pub fn get(&self, id: CallId) -> Option<CallInfo> {
        let c = self.calls.get(&id)?;
        let device = |s| self.sessions.get(&s).and_then(|x| x.device.clone());
        let mut legs = vec![LegInfo {
            ext: c.caller.ext.clone(),
            device: device(c.caller.session),
            answered: c.caller_up,
        }];
        if let Peer::Device(b) = &c.callee {
            legs.push(LegInfo {
                ext: b.ext.clone(),
                device: device(b.session),
                answered: c.answered,
            });
        }
        let state = match (&c.callee, c.answered, c.caller_up) {
            (_, false, false) => CallState::Calling,
            (Peer::Service(Service::Message), true, _) => CallState::Message,
            (_, true, _) => CallState::Connected,
            (_, false, true) => CallState::Ringing,
        };
        Some(CallInfo {
            id,
            origin: c.origin,
            from: c.from.clone(),
            to: c.to.clone(),
            state,
            legs,
            started: c.started,
            answered: c.answered_at,
            fallback: c.fell_back.clone(),
        })
    }

    /// Hang up call `id` (an application asked): every leg is told
    /// (`normal`). `None`: no such call.
    pub fn end_call(&mut self, id: CallId) -> Option<Vec<Action>> {
        if !self.calls.contains_key(&id) {
            return None;
        }
        let mut out = Vec::new();
        self.end(id, |_| false, EndReason::Normal, &mut out);
        Some(out)
    }
}
