//! Switch tests: whole call flows as message sequences, in simulated time.

use super::*;

const A: SessionId = 1;
const B: SessionId = 2;
const T0: Duration = Duration::ZERO;

fn two_boxes() -> Switch {
    let mut sw = Switch::new(1);
    sw.session_up(A);
    sw.session_up(B);
    assert!(sw.ext_up(A, "201").is_empty());
    assert!(sw.ext_up(B, "301").is_empty());
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

fn routes(actions: &[Action]) -> Vec<((SessionId, u64), Route)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Route(k, r) => Some((*k, *r)),
            _ => None,
        })
        .collect()
}

fn unroutes(actions: &[Action]) -> Vec<(SessionId, u64)> {
    let mut v: Vec<_> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Unroute(k) => Some(*k),
            _ => None,
        })
        .collect();
    v.sort();
    v
}

/// A (201, call 5, flow 40) calls 301 on B; returns B's call id and relay flow to B.
fn dial(sw: &mut Switch) -> (u32, u64) {
    let out = sw.setup(T0, A, 5, "301", "201", 40);
    let s = sends(&out);
    assert_eq!(s.len(), 1, "{out:?}");
    let (
        to,
        Signal::Setup {
            call,
            to: num,
            from,
            flow,
            ..
        },
    ) = &s[0]
    else {
        panic!("{out:?}")
    };
    assert_eq!((*to, num.as_str(), from.as_str()), (B, "301", "201"));
    assert!(call & RELAY_CALL_BIT != 0);
    assert!(*flow >= FIRST_CALL_FLOW);
    assert!(routes(&out).is_empty(), "no media before answer");
    (*call, *flow)
}

#[test]
fn device_to_device_call_rings_answers_routes_both_ways_and_hangs_up() {
    let mut sw = two_boxes();
    let (bcall, bflow) = dial(&mut sw);
    assert_eq!(
        sends(&sw.ringing(B, bcall)),
        vec![(A, Signal::Ringing { call: 5 })]
    );
    let out = sw.answer(T0, B, bcall, 50);
    let s = sends(&out);
    let [
        (
            A,
            Signal::Answer {
                call: 5,
                flow: aflow,
                ssrc: assrc,
            },
        ),
    ] = s[..]
    else {
        panic!("{out:?}")
    };
    let mut r = routes(&out);
    r.sort_by_key(|x| x.0);
    let bssrc = match r[0] {
        (
            (A, 40),
            Route::Forward {
                session: B,
                flow,
                ssrc,
            },
        ) if flow == bflow => ssrc,
        _ => panic!("{r:?}"),
    };
    assert_eq!(
        r[1],
        (
            (B, 50),
            Route::Forward {
                session: A,
                flow: aflow,
                ssrc: assrc
            }
        )
    );
    assert_ne!(assrc, bssrc);
    // DTMF crosses over with each side's call id.
    assert_eq!(
        sends(&sw.dtmf(A, 5, '7', 100)),
        vec![(
            B,
            Signal::Dtmf {
                call: bcall,
                digit: '7',
                duration_ms: 100
            }
        )]
    );
    assert_eq!(
        sends(&sw.dtmf(B, bcall, '#', 80)),
        vec![(
            A,
            Signal::Dtmf {
                call: 5,
                digit: '#',
                duration_ms: 80
            }
        )]
    );
    // Hang-up from the callee: the caller is told, both routes go.
    let out = sw.hangup(T0, B, bcall, EndReason::Normal);
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
    assert_eq!(unroutes(&out), vec![(A, 40), (B, 50)]);
    assert_eq!(sw.calls(), 0);
    // The ids are free again; a late message about the old call does nothing.
    assert!(sw.hangup(T0, A, 5, EndReason::Normal).is_empty());
    assert!(sw.dtmf(B, bcall, '1', 100).is_empty());
}

#[test]
fn caller_hang_up_before_answer_cancels_the_callee() {
    let mut sw = two_boxes();
    let (bcall, _) = dial(&mut sw);
    let out = sw.hangup(T0, A, 5, EndReason::Normal);
    assert_eq!(
        sends(&out),
        vec![(
            B,
            Signal::End {
                call: bcall,
                reason: EndReason::Normal
            }
        )]
    );
    assert_eq!(unroutes(&out), vec![(A, 40)]);
    // An answer that crosses the cancel is ignored.
    assert!(sw.answer(T0, B, bcall, 50).is_empty());
}

#[test]
fn refusals_map_to_end_reasons() {
    let mut sw = two_boxes();
    // Unknown number.
    assert_eq!(
        sends(&sw.setup(T0, A, 1, "555", "201", 40)),
        vec![(
            A,
            Signal::End {
                call: 1,
                reason: EndReason::NotFound
            }
        )]
    );
    // Callee busy: its box refuses, the caller hears busy.
    let (bcall, _) = dial(&mut sw);
    assert_eq!(
        sends(&sw.hangup(T0, B, bcall, EndReason::Busy)),
        vec![(
            A,
            Signal::End {
                call: 5,
                reason: EndReason::Busy
            }
        )]
    );
    // Ring timeout: both legs hear it.
    let (bcall, _) = dial(&mut sw);
    assert_eq!(sw.poll_timeout(), Some(RING_TIMEOUT));
    assert!(sw.poll(RING_TIMEOUT - Duration::from_millis(1)).is_empty());
    let mut s = sends(&sw.poll(RING_TIMEOUT));
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
                B,
                Signal::End {
                    call: bcall,
                    reason: EndReason::Timeout
                }
            )
        ]
    );
    assert_eq!(sw.poll_timeout(), None);
    // Garbage numbers are not found; ids in the relay's range are refused.
    assert!(matches!(
        sends(&sw.setup(T0, A, 2, "30 1", "201", 41))[..],
        [(
            A,
            Signal::End {
                reason: EndReason::NotFound,
                ..
            }
        )]
    ));
    assert!(matches!(
        sends(&sw.setup(T0, A, RELAY_CALL_BIT | 3, "301", "201", 41))[..],
        [(
            A,
            Signal::Error {
                code: "bad_call_id",
                ..
            }
        )]
    ));
}

#[test]
fn echo_and_record_services_answer_at_once() {
    let mut sw = two_boxes();
    let out = sw.setup(T0, A, 9, ECHO, "201", 60);
    let [
        (
            A,
            Signal::Answer {
                call: 9,
                flow,
                ssrc,
            },
        ),
    ] = sends(&out)[..]
    else {
        panic!("{out:?}")
    };
    assert_eq!(
        routes(&out),
        vec![(
            (A, 60),
            Route::Forward {
                session: A,
                flow,
                ssrc
            }
        )]
    );
    // Digits come back.
    assert_eq!(
        sends(&sw.dtmf(A, 9, '5', 120)),
        vec![(
            A,
            Signal::Dtmf {
                call: 9,
                digit: '5',
                duration_ms: 120
            }
        )]
    );
    let out = sw.setup(T0, A, 10, RECORD, "201", 61);
    assert_eq!(routes(&out), vec![((A, 61), Route::Record)]);
    assert!(matches!(
        sends(&out)[..],
        [(A, Signal::Answer { call: 10, .. })]
    ));
    let out = sw.hangup(T0, A, 9, EndReason::Normal);
    assert!(sends(&out).is_empty(), "the hanging-up leg is not told");
    assert_eq!(unroutes(&out), vec![(A, 60)]);
}

#[test]
fn two_phones_on_one_box_call_each_other_through_the_relay() {
    let mut sw = two_boxes();
    assert!(sw.ext_up(A, "202").is_empty());
    let out = sw.setup(T0, A, 1, "202", "201", 40);
    let [(A, Signal::Setup { call: bcall, .. })] = sends(&out)[..] else {
        panic!("{out:?}")
    };
    assert!(matches!(
        sends(&sw.answer(T0, A, bcall, 41))[..],
        [(A, Signal::Answer { call: 1, .. })]
    ));
    // The callee phone hangs up: only the caller's leg is told.
    assert_eq!(
        sends(&sw.hangup(T0, A, bcall, EndReason::Normal)),
        vec![(
            A,
            Signal::End {
                call: 1,
                reason: EndReason::Normal
            }
        )]
    );
}

#[test]
fn a_box_that_disconnects_ends_its_calls_and_frees_its_extensions() {
    let mut sw = two_boxes();
    let (bcall, _) = dial(&mut sw);
    sw.answer(T0, B, bcall, 50);
    let out = sw.session_down(T0, B);
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
    assert_eq!(unroutes(&out), vec![(A, 40), (B, 50)]);
    assert_eq!(sw.owner("301"), None);
    // Unanswered calls to a vanished box are `unavailable`.
    sw.session_up(B);
    assert!(sw.ext_up(B, "301").is_empty());
    let (_, _) = dial(&mut sw);
    assert_eq!(
        sends(&sw.session_down(T0, B)),
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
fn extensions_are_validated_and_owned_by_one_box() {
    let mut sw = two_boxes();
    for bad in ["1", "123456789", "9001", "20a", "", "2 1"] {
        assert!(
            matches!(
                sends(&sw.ext_up(A, bad))[..],
                [(
                    A,
                    Signal::Error {
                        code: "ext_invalid",
                        ..
                    }
                )]
            ),
            "{bad:?}"
        );
    }
    assert!(matches!(
        sends(&sw.ext_up(B, "201"))[..],
        [(
            B,
            Signal::Error {
                code: "ext_conflict",
                ..
            }
        )]
    ));
    assert!(sw.ext_up(A, "201").is_empty(), "re-announcing is fine");
    // Only the owner can withdraw it.
    sw.ext_down(B, "201");
    assert_eq!(sw.owner("201"), Some(A));
    sw.ext_down(A, "201");
    assert_eq!(sw.owner("201"), None);
    assert!(sw.ext_up(B, "201").is_empty());
}

#[test]
fn a_call_from_another_boxs_extension_is_refused() {
    let mut sw = two_boxes();
    // B claims to call as A's phone 201.
    let out = sw.setup(T0, B, 7, "900", "201", 40);
    assert!(matches!(
        &sends(&out)[..],
        [
            (
                B,
                Signal::Error {
                    code: "bad_from",
                    ..
                }
            ),
            (
                B,
                Signal::End {
                    call: 7,
                    reason: EndReason::Declined
                }
            )
        ]
    ));
    assert!(routes(&out).is_empty());
    assert_eq!(sw.calls(), 0);
    // As a number nobody announced (a phone that calls without
    // registering), or its own: the call goes on.
    assert_eq!(sends(&sw.setup(T0, B, 8, "900", "555", 41)).len(), 1);
    assert_eq!(sends(&sw.setup(T0, B, 9, "900", "301", 42)).len(), 1);
    assert_eq!(sw.calls(), 2);
}

#[test]
fn a_new_session_of_the_same_device_takes_its_extensions_over() {
    let mut sw = Switch::new(1);
    sw.device_up(A, "gw-a");
    sw.device_up(B, "gw-b");
    assert!(sw.ext_up(A, "201").is_empty());
    // gw-a reconnects (session 3) before session A is gone.
    sw.device_up(3, "gw-a");
    assert!(sw.ext_up(3, "201").is_empty());
    assert_eq!(sw.owner("201"), Some(3));
    // Another device still cannot.
    assert!(matches!(
        sends(&sw.ext_up(B, "201"))[..],
        [(
            B,
            Signal::Error {
                code: "ext_conflict",
                ..
            }
        )]
    ));
    // The old session's end leaves the extension with the new one.
    sw.session_down(T0, A);
    assert_eq!(sw.owner("201"), Some(3));
}

#[test]
fn the_recording_service_is_unavailable_when_the_relay_does_not_record() {
    let mut sw = two_boxes();
    sw.set_recording(false);
    let out = sw.setup(T0, A, 10, RECORD, "201", 61);
    assert_eq!(
        sends(&out),
        vec![(
            A,
            Signal::End {
                call: 10,
                reason: EndReason::Unavailable
            }
        )]
    );
    assert!(routes(&out).is_empty());
}

#[test]
fn a_device_cannot_touch_calls_it_is_not_in() {
    let mut sw = two_boxes();
    sw.session_up(3);
    let (bcall, _) = dial(&mut sw);
    assert!(sw.answer(T0, 3, bcall, 70).is_empty());
    assert!(sw.ringing(3, bcall).is_empty());
    assert!(sw.hangup(T0, 3, bcall, EndReason::Normal).is_empty());
    assert!(sw.hangup(T0, 3, 5, EndReason::Normal).is_empty());
    // The caller cannot answer its own call either.
    assert!(sw.answer(T0, A, 5, 70).is_empty());
    assert_eq!(sw.calls(), 1);
}

#[test]
fn calls_per_session_are_bounded() {
    let mut sw = two_boxes();
    for i in 0..MAX_CALLS_PER_SESSION as u32 {
        sw.setup(T0, A, i + 1, RECORD, "201", 100 + u64::from(i));
    }
    assert!(matches!(
        sends(&sw.setup(T0, A, 999_999, ECHO, "201", 99))[..],
        [(
            A,
            Signal::End {
                reason: EndReason::Busy,
                ..
            }
        )]
    ));
}
