//! The messages of a call from the boxes, after the switch's
//! [`super::Switch::setup`]: a phone's `call_setup`, then `call_ringing`,
//! `call_answer`, `call_end` and `dtmf` from either leg. Ids are checked
//! against the legs the switch made, so a box reaches only its own calls.

use super::{
    Action, Call, ECHO, EventKind, Leg, Origin, Peer, RECORD, Route, Service, SessionId, Signal,
    Switch, fallback,
};
use crate::proto::signal::{EndReason, RELAY_CALL_BIT, valid_extension, valid_number};
use std::time::Duration;

impl Switch {
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
        if !self.has_room(s) {
            return refuse(EndReason::Busy);
        }
        let service = matches!(to, ECHO | RECORD);
        let owner = self.owner(to).filter(|_| !service);
        // A callee that cannot take the call now: on no connected box, or
        // its box at its limit. The fallback takes it, if there is one.
        let unreachable = match owner {
            _ if service => None,
            None if valid_extension(to) => Some(EndReason::Unavailable),
            None => return refuse(EndReason::NotFound),
            Some(b) if !self.has_room(b) => Some(EndReason::Busy),
            Some(_) => None,
        };
        match unreachable {
            Some(EndReason::Busy) if self.settings.fallback.is_none() => {
                return refuse(EndReason::Busy);
            }
            Some(_) if self.settings.fallback.is_none() => return refuse(EndReason::NotFound),
            _ => {}
        }
        let owner = owner.filter(|_| unreachable.is_none());
        let Some((flow_out, ssrc_out)) = self.new_out_flow(s) else {
            return out;
        };
        let k = self.next_key();
        let caller = Leg {
            session: s,
            call,
            ext: from.to_string(),
            flow_in: Some(flow),
            flow_out,
            ssrc_out,
            rang: false,
        };
        let callee = match (to, owner) {
            (ECHO, _) => {
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
            (RECORD, _) => {
                out.push(Action::Route((s, flow), Route::Record));
                Peer::Service(Service::Record)
            }
            (_, Some(b)) => match self.ring(k, b, to, from) {
                Some((leg, setup)) => {
                    out.push(setup);
                    Peer::Device(leg)
                }
                None => return refuse(EndReason::Unavailable),
            },
            (_, None) => Peer::Pending,
        };
        let answered = matches!(callee, Peer::Service(_));
        self.legs.insert((s, call), k);
        if let Some(sess) = self.sessions.get_mut(&s) {
            sess.calls += 1;
        }
        let c = Call {
            origin: Origin::Phone,
            from: from.to_string(),
            to: to.to_string(),
            caller,
            caller_up: true,
            callee,
            answered,
            ring_deadline: now + self.callee_rings(),
            started: now,
            answered_at: answered.then_some(now),
            fell_back: None,
            end_at: None,
        };
        if answered {
            out.push(Action::Send(
                s,
                Signal::Answer {
                    call,
                    flow: flow_out,
                    ssrc: ssrc_out,
                },
            ));
            out.push(c.event(
                k,
                EventKind::Answered {
                    ext: to.to_string(),
                },
            ));
        }
        self.calls.insert(k, c);
        if let Some(reason) = unreachable {
            self.callee_failed(now, k, reason, &mut out);
        }
        out
    }

    /// `call_ringing` from a box: a callee rings (the caller hears it), or
    /// an application's leg A does.
    pub fn ringing(&mut self, s: SessionId, call: u32) -> Vec<Action> {
        let Some(&k) = self.legs.get(&(s, call)) else {
            return Vec::new();
        };
        let Some(c) = self.calls.get_mut(&k) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let leg = match &mut c.callee {
            Peer::Device(b) if (b.session, b.call) == (s, call) && !c.answered => {
                if c.origin == Origin::Phone {
                    out.push(Action::Send(
                        c.caller.session,
                        Signal::Ringing {
                            call: c.caller.call,
                        },
                    ));
                }
                b
            }
            _ if c.origin == Origin::Api && !c.caller_up && c.caller.call == call => &mut c.caller,
            _ => return out,
        };
        if !std::mem::replace(&mut leg.rang, true) {
            let ext = leg.ext.clone();
            out.push(c.event(k, EventKind::Ringing { ext }));
        }
        out
    }

    /// `call_answer` from a box: the callee answered (the call connects),
    /// or an application's leg A did (its target is connected or rung).
    pub fn answer(&mut self, now: Duration, s: SessionId, call: u32, flow: u64) -> Vec<Action> {
        let Some(&k) = self.legs.get(&(s, call)) else {
            return Vec::new();
        };
        let Some(c) = self.calls.get_mut(&k) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        if c.origin == Origin::Api && !c.caller_up && (c.caller.session, c.caller.call) == (s, call)
        {
            c.caller_up = true;
            c.caller.flow_in = Some(flow);
            out.push(c.event(
                k,
                EventKind::Answered {
                    ext: c.caller.ext.clone(),
                },
            ));
            self.connect_target(now, k, &mut out);
            return out;
        }
        if c.answered {
            return out;
        }
        let Peer::Device(b) = &mut c.callee else {
            return out;
        };
        if (b.session, b.call) != (s, call) {
            return out;
        }
        c.answered = true;
        c.answered_at = Some(now);
        b.flow_in = Some(flow);
        let a = &c.caller;
        out.push(Action::Route(
            (b.session, flow),
            Route::Forward {
                session: a.session,
                flow: a.flow_out,
                ssrc: a.ssrc_out,
            },
        ));
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
        // Leg A of an application's call answered long ago.
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
        let ext = b.ext.clone();
        out.push(c.event(k, EventKind::Answered { ext }));
        out
    }

    /// `call_end` from either leg. A callee that refuses before answering
    /// (busy, declined, unavailable, not found, timeout) is replaced by the
    /// fallback when one is configured.
    pub fn hangup(
        &mut self,
        now: Duration,
        s: SessionId,
        call: u32,
        reason: EndReason,
    ) -> Vec<Action> {
        let mut out = Vec::new();
        let Some(&k) = self.legs.get(&(s, call)) else {
            return out;
        };
        let refused = self.calls.get(&k).is_some_and(|c| {
            !c.answered && matches!(&c.callee, Peer::Device(b) if (b.session, b.call) == (s, call))
        });
        if refused && fallback::takes(reason) {
            // The refusing leg is gone on its box already.
            self.drop_callee(k, false, reason, &mut out);
            self.callee_failed(now, k, reason, &mut out);
            return out;
        }
        // Both legs may be on this box (two of its phones): only the one
        // that hung up is skipped.
        self.end(k, |l| l.session == s && l.call == call, reason, &mut out);
        out
    }

    /// `dtmf` from either leg: to the other leg, or back from the echo service.
    pub fn dtmf(&mut self, s: SessionId, call: u32, digit: char, duration_ms: u16) -> Vec<Action> {
        let Some(&k) = self.legs.get(&(s, call)) else {
            return Vec::new();
        };
        let Some(c) = self.calls.get(&k).filter(|c| c.answered) else {
            return Vec::new();
        };
        let to = match &c.callee {
            Peer::Service(Service::Echo) => Some((c.caller.session, c.caller.call)),
            Peer::Service(_) | Peer::Pending => None,
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
}
