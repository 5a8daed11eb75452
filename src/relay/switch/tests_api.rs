//! Applications' calls and fallback routing, in simulated time: leg A rings
//! first, then the target; fallback on no answer, refusal and offline
//! callees; the events each step reports.

use super::*;

const A: SessionId = 1;
const B: SessionId = 2;
const C: SessionId = 3;
const T0: Duration = Duration::ZERO;

/// Boxes A (201), B (301) and C (401), with `fallback` and a 5 s no-answer time.
fn three_boxes(fallback: Option<Fallback>) -> Switch {
    let mut sw = Switch::new(7);
    sw.set_calls(CallSettings {
        fallback,
        no_answer: Duration::from_secs(5),
    });
    for (s, ext, dev) in [
        (A, "201", "box-a"),
        (B, "301", "box-b"),
        (C, "401", "box-c"),
    ] {
        sw.device_up(s, dev);
        assert!(sw.ext_up(s, ext).is_empty());
    }
    sw
}

fn sends(actions: &[Action]) -> Vec<(SessionId, Signal)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send(s, m) => Some((*s, m.clone())),
            _ => None,
        })
        .collect()
}

fn events(actions: &[Action]) -> Vec<EventKind> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Event(e) => Some(e.kind.clone()),
            _ => None,
        })
        .collect()
}

fn routes(actions: &[Action]) -> Vec<((SessionId, u64), Route)> {
    let mut r: Vec<_> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Route(k, r) => Some((*k, *r)),
            _ => None,
        })
        .collect();
    r.sort_by_key(|x| x.0);
    r
}

/// The one `call_setup` in `out`: (session, call id, to, from, relay flow, ssrc).
fn setup_in(out: &[Action]) -> (SessionId, u32, String, String, u64, u32) {
    let s = sends(out);
    let found: Vec<_> = s
        .into_iter()
        .filter_map(|(s, m)| match m {
            Signal::Setup {
                call,
                to,
                from,
                flow,
                ssrc,
            } => Some((s, call, to, from, flow, ssrc)),
            _ => None,
        })
        .collect();
    assert_eq!(found.len(), 1, "{out:?}");
    found.into_iter().next().unwrap()
}

fn ringing(ext: &str) -> EventKind {
    EventKind::Ringing { ext: ext.into() }
}

fn answered(ext: &str) -> EventKind {
    EventKind::Answered { ext: ext.into() }
}

#[test]
fn an_application_call_rings_a_first_then_b_and_connects_them_then_hangs_up_both() {
    let mut sw = three_boxes(None);
    let (id, out) = sw.originate(T0, "201", "301").unwrap();
    // A's phone rings first, showing the target as the caller.
    let (s, acall, to, from, aflow, assrc) = setup_in(&out);
    assert_eq!((s, to.as_str(), from.as_str()), (A, "201", "301"));
    assert!(acall & RELAY_CALL_BIT != 0);
    assert_eq!(sw.get(id).unwrap().state, CallState::Calling);
    assert_eq!(events(&sw.ringing(A, acall)), vec![ringing("201")]);
    assert!(events(&sw.ringing(A, acall)).is_empty(), "reported once");
    // A answers: B is rung with A's extension as the caller; no media yet.
    let out = sw.answer(Duration::from_secs(2), A, acall, 40);
    assert_eq!(events(&out), vec![answered("201")]);
    assert!(routes(&out).is_empty());
    let (s, bcall, to, from, bflow, bssrc) = setup_in(&out);
    assert_eq!((s, to.as_str(), from.as_str()), (B, "301", "201"));
    let info = sw.get(id).unwrap();
    assert_eq!(info.state, CallState::Ringing);
    assert_eq!(info.origin, Origin::Api);
    assert_eq!(
        info.legs,
        vec![
            LegInfo {
                ext: "201".into(),
                device: Some("box-a".into()),
                answered: true
            },
            LegInfo {
                ext: "301".into(),
                device: Some("box-b".into()),
                answered: false
            }
        ]
    );
    assert_eq!(events(&sw.ringing(B, bcall)), vec![ringing("301")]);
    assert!(
        sends(&sw.ringing(B, bcall)).is_empty(),
        "A is not a SIP caller"
    );
    // B answers: both directions routed, A is not sent an answer (it answered).
    let out = sw.answer(Duration::from_secs(4), B, bcall, 50);
    assert!(sends(&out).is_empty(), "{out:?}");
    assert_eq!(events(&out), vec![answered("301")]);
    assert_eq!(
        routes(&out),
        vec![
            (
                (A, 40),
                Route::Forward {
                    session: B,
                    flow: bflow,
                    ssrc: bssrc
                }
            ),
            (
                (B, 50),
                Route::Forward {
                    session: A,
                    flow: aflow,
                    ssrc: assrc
                }
            ),
        ]
    );
    let info = sw.get(id).unwrap();
    assert_eq!(info.state, CallState::Connected);
    assert_eq!(
        (info.started, info.answered),
        (T0, Some(Duration::from_secs(4)))
    );
    assert_eq!(sw.list(), vec![info]);
    // DTMF crosses as in any call.
    assert_eq!(sends(&sw.dtmf(A, acall, '5', 80)).len(), 1);
    // Hung up through the API: both phones are told, routes removed.
    let out = sw.end_call(id).unwrap();
    let mut s = sends(&out);
    s.sort_by_key(|x| x.0);
    assert_eq!(
        s,
        vec![
            (
                A,
                Signal::End {
                    call: acall,
                    reason: EndReason::Normal
                }
            ),
            (
                B,
                Signal::End {
                    call: bcall,
                    reason: EndReason::Normal
                }
            ),
        ]
    );
    assert!(out.contains(&Action::Unroute((A, 40))));
    assert!(out.contains(&Action::Unroute((B, 50))));
    assert_eq!(
        events(&out),
        vec![EventKind::Ended {
            reason: EndReason::Normal
        }]
    );
    assert!(sw.list().is_empty());
    assert!(sw.end_call(id).is_none(), "gone");
    assert_eq!(sw.calls(), 0);
}

#[test]
fn an_application_call_to_the_echo_connects_when_a_answers_and_echoes_digits() {
    let mut sw = three_boxes(None);
    let (id, out) = sw.originate(T0, "201", ECHO).unwrap();
    let (_, acall, _, from, aflow, assrc) = setup_in(&out);
    assert_eq!(from, "900");
    let out = sw.answer(T0, A, acall, 40);
    assert_eq!(events(&out), vec![answered("201"), answered("900")]);
    assert_eq!(
        routes(&out),
        vec![(
            (A, 40),
            Route::Forward {
                session: A,
                flow: aflow,
                ssrc: assrc
            }
        )]
    );
    assert_eq!(sw.get(id).unwrap().state, CallState::Connected);
    assert_eq!(
        sends(&sw.dtmf(A, acall, '#', 60)),
        vec![(
            A,
            Signal::Dtmf {
                call: acall,
                digit: '#',
                duration_ms: 60
            }
        )]
    );
    // The phone hangs up: the call ends, reported as ended.
    let out = sw.hangup(T0, A, acall, EndReason::Normal);
    assert!(sends(&out).is_empty());
    assert_eq!(
        events(&out),
        vec![EventKind::Ended {
            reason: EndReason::Normal
        }]
    );
    // And to the recording service.
    let (_, out) = sw.originate(T0, "201", RECORD).unwrap();
    let (_, acall, ..) = setup_in(&out);
    assert_eq!(
        routes(&sw.answer(T0, A, acall, 41)),
        vec![((A, 41), Route::Record)]
    );
}

#[test]
fn bad_application_calls_are_refused_with_what_to_fix() {
    let mut sw = three_boxes(None);
    let e = |sw: &mut Switch, from, to| sw.originate(T0, from, to).unwrap_err();
    assert_eq!(
        e(&mut sw, "2x1", "301"),
        OriginateError::BadNumber("2x1".into())
    );
    assert_eq!(
        e(&mut sw, "201", "902"),
        OriginateError::BadNumber("902".into())
    );
    assert_eq!(
        e(&mut sw, "900", "301"),
        OriginateError::BadNumber("900".into())
    );
    assert_eq!(
        e(&mut sw, "201", "201"),
        OriginateError::SameNumber("201".into())
    );
    assert_eq!(
        e(&mut sw, "555", "301"),
        OriginateError::Offline("555".into())
    );
    assert_eq!(
        e(&mut sw, "201", "555"),
        OriginateError::Offline("555".into())
    );
    sw.set_recording(false);
    assert_eq!(e(&mut sw, "201", RECORD), OriginateError::RecordingOff);
    assert!(e(&mut sw, "201", "555").to_string().contains("registered"));
    assert_eq!(sw.calls(), 0);
    // With a fallback, an offline target is the fallback's to take.
    let mut sw = three_boxes(Some(Fallback::Extension("401".into())));
    assert!(sw.originate(T0, "201", "555").is_ok());
}

#[test]
fn leg_a_that_never_answers_fails_the_call_with_timeout() {
    let mut sw = three_boxes(Some(Fallback::Extension("401".into())));
    let (_, out) = sw.originate(T0, "201", "301").unwrap();
    let (_, acall, ..) = setup_in(&out);
    assert_eq!(sw.poll_timeout(), Some(RING_TIMEOUT));
    let out = sw.poll(RING_TIMEOUT);
    assert_eq!(
        sends(&out),
        vec![(
            A,
            Signal::End {
                call: acall,
                reason: EndReason::Timeout
            }
        )]
    );
    // No fallback for the phone the application rang first.
    assert_eq!(
        events(&out),
        vec![EventKind::Failed {
            reason: EndReason::Timeout
        }]
    );
    assert_eq!(sw.calls(), 0);
}

/// Phone 201 (call 5, flow 40) dials `to`; returns the actions.
fn dial(sw: &mut Switch, to: &str) -> Vec<Action> {
    sw.setup(T0, A, 5, to, "201", 40)
}

fn fallback_event(callee: &str, target: &str, reason: EndReason) -> EventKind {
    EventKind::Fallback {
        callee: callee.into(),
        target: target.into(),
        reason,
    }
}

#[test]
fn a_callee_that_does_not_answer_in_time_is_replaced_by_the_fallback_extension() {
    let mut sw = three_boxes(Some(Fallback::Extension("401".into())));
    let out = dial(&mut sw, "301");
    let (_, bcall, ..) = setup_in(&out);
    // The callee rings for no_answer, not the full ring timeout.
    let five = Duration::from_secs(5);
    assert_eq!(sw.poll_timeout(), Some(five));
    assert!(sw.poll(five - Duration::from_millis(1)).is_empty());
    let out = sw.poll(five);
    // B's phone stops ringing; C's rings, showing the original caller.
    assert!(sends(&out).contains(&(
        B,
        Signal::End {
            call: bcall,
            reason: EndReason::Timeout
        }
    )));
    let (s, ccall, to, from, cflow, cssrc) = setup_in(&out);
    assert_eq!((s, to.as_str(), from.as_str()), (C, "401", "201"));
    assert_eq!(
        events(&out),
        vec![fallback_event("301", "401", EndReason::Timeout)]
    );
    assert!(
        !sends(&out).iter().any(|(s, _)| *s == A),
        "the caller keeps ringing"
    );
    // The fallback rings for the full ring timeout.
    assert_eq!(sw.poll_timeout(), Some(five + RING_TIMEOUT));
    // A late answer from B is ignored; C answers and is connected.
    assert!(sw.answer(five, B, bcall, 50).is_empty());
    let out = sw.answer(five, C, ccall, 60);
    assert!(sends(&out).contains(&(
        A,
        Signal::Answer {
            call: 5,
            flow: FIRST_CALL_FLOW,
            ssrc: match routes(&out)[1].1 {
                Route::Forward { ssrc, .. } => ssrc,
                r => panic!("{r:?}"),
            }
        }
    )));
    assert_eq!(
        routes(&out)[0],
        (
            (A, 40),
            Route::Forward {
                session: C,
                flow: cflow,
                ssrc: cssrc
            }
        )
    );
    let info = &sw.list()[0];
    assert_eq!(info.fallback.as_deref(), Some("401"));
    assert_eq!(info.legs[1].ext, "401");
    assert_eq!(info.state, CallState::Connected);
}

#[test]
fn a_busy_or_declining_callee_is_replaced_by_the_fallback_but_an_error_is_not() {
    for reason in [EndReason::Busy, EndReason::Declined, EndReason::Unavailable] {
        let mut sw = three_boxes(Some(Fallback::Extension("401".into())));
        let (_, bcall, ..) = setup_in(&dial(&mut sw, "301"));
        let out = sw.hangup(T0, B, bcall, reason);
        let (s, ..) = setup_in(&out);
        assert_eq!(s, C);
        assert_eq!(sends(&out).len(), 1, "nothing to B or A: {out:?}");
        assert_eq!(events(&out), vec![fallback_event("301", "401", reason)]);
    }
    let mut sw = three_boxes(Some(Fallback::Extension("401".into())));
    let (_, bcall, ..) = setup_in(&dial(&mut sw, "301"));
    let out = sw.hangup(T0, B, bcall, EndReason::Error);
    assert_eq!(
        sends(&out),
        vec![(
            A,
            Signal::End {
                call: 5,
                reason: EndReason::Error
            }
        )]
    );
    assert_eq!(
        events(&out),
        vec![EventKind::Failed {
            reason: EndReason::Error
        }]
    );
}

#[test]
fn an_offline_callee_goes_to_the_fallback_at_once() {
    let mut sw = three_boxes(Some(Fallback::Extension("401".into())));
    let out = dial(&mut sw, "555");
    let (s, _, to, from, ..) = setup_in(&out);
    assert_eq!((s, to.as_str(), from.as_str()), (C, "401", "201"));
    assert_eq!(
        events(&out),
        vec![fallback_event("555", "401", EndReason::Unavailable)]
    );
    // Not a valid extension (a service number, or too long): not found.
    assert_eq!(
        sends(&sw.setup(T0, A, 6, "123456789", "201", 41)),
        vec![(
            A,
            Signal::End {
                call: 6,
                reason: EndReason::NotFound
            }
        )]
    );
}

#[test]
fn a_callee_whose_box_is_full_is_replaced_by_the_fallback() {
    let mut sw = three_boxes(Some(Fallback::Extension("401".into())));
    for i in 0..MAX_CALLS_PER_SESSION as u32 {
        sw.setup(T0, B, i + 1, RECORD, "301", 100 + u64::from(i));
    }
    let out = dial(&mut sw, "301");
    let (s, ..) = setup_in(&out);
    assert_eq!(s, C);
    assert_eq!(
        events(&out),
        vec![fallback_event("301", "401", EndReason::Busy)]
    );
    // Without a fallback, busy.
    sw.set_calls(CallSettings::default());
    assert_eq!(
        sends(&sw.setup(T0, A, 6, "301", "201", 41)),
        vec![(
            A,
            Signal::End {
                call: 6,
                reason: EndReason::Busy
            }
        )]
    );
}

#[test]
fn a_callee_whose_box_leaves_while_it_rings_is_replaced_by_the_fallback() {
    let mut sw = three_boxes(Some(Fallback::Extension("401".into())));
    setup_in(&dial(&mut sw, "301"));
    let out = sw.session_down(T0, B);
    let (s, _, to, ..) = setup_in(&out);
    assert_eq!((s, to.as_str()), (C, "401"));
    assert_eq!(
        events(&out),
        vec![fallback_event("301", "401", EndReason::Unavailable)]
    );
    assert!(!sends(&out).iter().any(|(s, _)| *s == A), "A rings on");
    // The fallback's own box leaving ends the call: one fallback per call.
    let out = sw.session_down(T0, C);
    assert_eq!(
        sends(&out),
        vec![(
            A,
            Signal::End {
                call: 5,
                reason: EndReason::Unavailable
            }
        )]
    );
}

#[test]
fn the_fallback_is_taken_once_and_never_rings_the_caller_or_an_offline_phone() {
    // The fallback does not answer either: the call fails with timeout.
    let mut sw = three_boxes(Some(Fallback::Extension("401".into())));
    setup_in(&dial(&mut sw, "301"));
    let out = sw.poll(Duration::from_secs(5));
    let (_, ccall, ..) = setup_in(&out);
    let out = sw.poll(Duration::from_secs(5) + RING_TIMEOUT);
    let mut s = sends(&out);
    s.sort_by_key(|x| x.0);
    assert_eq!(
        s,
        vec![
            (
                A,
                Signal::End {
                    call: 5,
                    reason: EndReason::Timeout
                }
            ),
            (
                C,
                Signal::End {
                    call: ccall,
                    reason: EndReason::Timeout
                }
            )
        ]
    );
    assert_eq!(
        events(&out),
        vec![EventKind::Failed {
            reason: EndReason::Timeout
        }]
    );
    // The fallback busy too: no second fallback.
    let mut sw = three_boxes(Some(Fallback::Extension("401".into())));
    let (_, bcall, ..) = setup_in(&dial(&mut sw, "301"));
    let (_, ccall, ..) = setup_in(&sw.hangup(T0, B, bcall, EndReason::Busy));
    let out = sw.hangup(T0, C, ccall, EndReason::Busy);
    assert_eq!(
        sends(&out),
        vec![(
            A,
            Signal::End {
                call: 5,
                reason: EndReason::Busy
            }
        )]
    );
    // The fallback is the caller itself, or offline: the callee's reason.
    for fallback in ["201", "777"] {
        let mut sw = three_boxes(Some(Fallback::Extension(fallback.into())));
        let (_, bcall, ..) = setup_in(&dial(&mut sw, "301"));
        let out = sw.hangup(T0, B, bcall, EndReason::Busy);
        assert_eq!(
            sends(&out),
            vec![(
                A,
                Signal::End {
                    call: 5,
                    reason: EndReason::Busy
                }
            )],
            "{fallback}"
        );
        assert_eq!(sw.calls(), 0);
    }
}

#[test]
fn a_fallback_message_answers_plays_and_hangs_up_after_its_length() {
    let three = Duration::from_secs(3);
    let mut sw = three_boxes(Some(Fallback::Message { duration: three }));
    let (_, bcall, ..) = setup_in(&dial(&mut sw, "301"));
    let t = Duration::from_secs(1);
    let out = sw.hangup(t, B, bcall, EndReason::Declined);
    let [
        (
            A,
            Signal::Answer {
                call: 5,
                flow,
                ssrc,
            },
        ),
    ] = sends(&out)[..]
    else {
        panic!("{out:?}")
    };
    assert_eq!(routes(&out), vec![((A, 40), Route::Discard)]);
    assert!(out.contains(&Action::Play {
        call: 1,
        session: A,
        flow,
        ssrc
    }));
    assert_eq!(
        events(&out),
        vec![fallback_event("301", "message", EndReason::Declined)]
    );
    assert_eq!(sw.list()[0].state, CallState::Message);
    // It plays for its length (and a tail), then the caller gets a BYE.
    let end = t + three + fallback::MESSAGE_TAIL;
    assert_eq!(sw.poll_timeout(), Some(end));
    assert!(sw.poll(end - Duration::from_millis(1)).is_empty());
    let out = sw.poll(end);
    assert_eq!(
        sends(&out),
        vec![(
            A,
            Signal::End {
                call: 5,
                reason: EndReason::Normal
            }
        )]
    );
    assert!(out.contains(&Action::StopPlay(1)));
    assert!(out.contains(&Action::Unroute((A, 40))));
    assert_eq!(
        events(&out),
        vec![EventKind::Ended {
            reason: EndReason::Normal
        }]
    );
    // A caller who hangs up during the message stops it.
    let (_, bcall, ..) = setup_in(&dial(&mut sw, "301"));
    sw.hangup(T0, B, bcall, EndReason::Busy);
    let out = sw.hangup(T0, A, 5, EndReason::Normal);
    assert!(out.contains(&Action::StopPlay(2)));
    assert!(sends(&out).is_empty());
}

#[test]
fn an_application_call_whose_target_does_not_answer_falls_back_too() {
    let mut sw = three_boxes(Some(Fallback::Extension("401".into())));
    let (id, out) = sw.originate(T0, "201", "301").unwrap();
    let (_, acall, ..) = setup_in(&out);
    let t = Duration::from_secs(10);
    let out = sw.answer(t, A, acall, 40);
    let (_, bcall, ..) = setup_in(&out);
    assert_eq!(sw.poll_timeout(), Some(t + Duration::from_secs(5)));
    let out = sw.poll(t + Duration::from_secs(5));
    assert!(sends(&out).contains(&(
        B,
        Signal::End {
            call: bcall,
            reason: EndReason::Timeout
        }
    )));
    let (s, _, to, from, ..) = setup_in(&out);
    assert_eq!((s, to.as_str(), from.as_str()), (C, "401", "201"));
    assert_eq!(sw.get(id).unwrap().fallback.as_deref(), Some("401"));
    // With a message as the fallback, leg A (answered already) hears it.
    let mut sw = three_boxes(Some(Fallback::Message {
        duration: Duration::from_secs(2),
    }));
    let (id, out) = sw.originate(T0, "201", "555").unwrap();
    let (_, acall, _, _, aflow, assrc) = setup_in(&out);
    let out = sw.answer(T0, A, acall, 40);
    assert!(sends(&out).is_empty(), "no answer to A: it answered");
    assert!(out.contains(&Action::Play {
        call: id,
        session: A,
        flow: aflow,
        ssrc: assrc
    }));
    assert_eq!(
        events(&out),
        vec![
            answered("201"),
            fallback_event("555", "message", EndReason::Unavailable)
        ]
    );
}

#[test]
fn a_box_that_leaves_ends_the_application_calls_on_it() {
    let mut sw = three_boxes(None);
    let (_, out) = sw.originate(T0, "201", "301").unwrap();
    let (_, acall, ..) = setup_in(&out);
    let (_, bcall, ..) = setup_in(&sw.answer(T0, A, acall, 40));
    let out = sw.session_down(T0, A);
    assert_eq!(
        sends(&out),
        vec![(
            B,
            Signal::End {
                call: bcall,
                reason: EndReason::Unavailable
            }
        )]
    );
    assert_eq!(sw.calls(), 0);
    // Messages about the old legs do nothing.
    assert!(sw.answer(T0, B, bcall, 50).is_empty());
    assert!(sw.ringing(B, bcall).is_empty());
}
