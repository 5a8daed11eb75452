//! Retransmissions and timeouts over UDP, in simulated time (T1 500 ms,
//! T2 4 s): what the phones see, and when.

use super::relay_calls::{R, ring_202};
use super::*;

/// Seconds since the lab started, with what was sent then (code or method).
fn timeline(v: &[(Duration, Message)]) -> Vec<(f64, String)> {
    v.iter()
        .map(|(t, m)| {
            let what = m.code().map_or_else(
                || m.method().unwrap().as_str().to_string(),
                |c| c.to_string(),
            );
            (t.as_secs_f64(), what)
        })
        .collect()
}

fn at(times: &[f64], what: &str) -> Vec<(f64, String)> {
    times.iter().map(|&t| (t, what.to_string())).collect()
}

#[test]
fn an_error_response_is_retransmitted_until_the_phone_acknowledges_it() {
    let mut lab = Lab::new();
    let (call, invite, _) = lab.dial("301", SDP_PCMU);
    let busy = lab
        .relay(CallSignal::End {
            call,
            reason: EndReason::Busy,
        })
        .one();
    // Timer G: T1, doubling.
    let sent = lab.wait_timed(Duration::from_millis(3600));
    assert_eq!(timeline(&sent), at(&[0.5, 1.5, 3.5], "486"));
    assert_eq!(sent[0].1.encode(), busy.encode(), "the same bytes");
    assert!(
        lab.recv(phone_201(), &ack(&invite, &busy, None))
            .0
            .is_empty()
    );
    assert!(lab.wait(Duration::from_secs(60)).0.is_empty());
}

#[test]
fn an_error_response_never_acknowledged_gives_up_on_timer_h() {
    let mut lab = Lab::new();
    let (call, _, _) = lab.dial("301", SDP_PCMU);
    lab.relay(CallSignal::End {
        call,
        reason: EndReason::Busy,
    });
    let sent = lab.wait_timed(Duration::from_secs(40));
    // T1 doubling to T2 (4 s) until timer H, 64*T1 after the response.
    let times: Vec<f64> = sent.iter().map(|(t, _)| t.as_secs_f64()).collect();
    assert_eq!(
        times,
        [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    );
    assert_eq!(lab.sb.stats().transactions, 0, "all forgotten");
}

#[test]
fn an_answer_is_retransmitted_until_the_phone_acknowledges_it() {
    let mut lab = Lab::new();
    let (call, invite, _) = lab.dial("900", SDP_PCMU);
    let ok = lab
        .relay(CallSignal::Answer {
            call,
            flow: 77,
            ssrc: 1,
        })
        .one();
    let sent = lab.wait_timed(Duration::from_secs(4));
    assert_eq!(timeline(&sent), at(&[0.5, 1.5, 3.5], "200"));
    let ack = ack(&invite, &ok, Some("z9hG4bK-201-ack2"));
    assert!(lab.recv(phone_201(), &ack).0.is_empty());
    assert!(lab.wait(Duration::from_secs(60)).0.is_empty());
    assert_eq!(lab.sb.stats().calls_active, 1, "the call goes on");
}

#[test]
fn an_answer_never_acknowledged_is_hung_up_after_64_t1() {
    let mut lab = Lab::new();
    let (call, _, _) = lab.dial("900", SDP_PCMU);
    lab.relay(CallSignal::Answer {
        call,
        flow: 77,
        ssrc: 1,
    });
    let sent = lab.wait_timed(Duration::from_millis(31_900));
    assert_eq!(sent.len(), 10, "{:?}", timeline(&sent));
    assert!(sent.iter().all(|(_, m)| m.code() == Some(200)));
    let out = lab.wait(Duration::from_millis(200));
    assert_eq!(
        out.signals(),
        [CallSignal::End {
            call,
            reason: EndReason::Error
        }]
    );
    assert_eq!(out.methods(), ["BYE"]);
    assert_eq!(
        out.media(),
        ["unroute 77".to_string(), format!("stop {call}")]
    );
}

#[test]
fn a_retransmitted_invite_gets_the_last_response_again_and_nothing_more() {
    let mut lab = Lab::new();
    let (call, invite, _) = lab.dial("900", SDP_PCMU);
    let ringing = lab.relay(CallSignal::Ringing { call }).one();
    let out = lab.recv(phone_201(), &invite);
    assert_eq!(out.one().encode(), ringing.encode());
    assert!(out.signals().is_empty(), "no second call_setup");
    assert_eq!(lab.sb.stats().calls, 1);
    // A 1xx is not retransmitted by us.
    assert!(lab.wait(Duration::from_secs(10)).0.is_empty());
}

#[test]
fn our_invite_is_retransmitted_on_timer_a_and_times_out_on_timer_b() {
    let mut lab = Lab::new();
    let invite = ring_202(&mut lab);
    let sent = lab.wait_timed(Duration::from_millis(31_900));
    assert_eq!(
        timeline(&sent),
        at(&[0.5, 1.5, 3.5, 7.5, 15.5, 31.5], "INVITE")
    );
    assert!(sent.iter().all(|(_, m)| m.encode() == invite.encode()));
    assert_eq!(lab.sb.stats().calls_active, 1);
    let out = lab.wait(Duration::from_millis(200));
    assert_eq!(
        out.signals(),
        [CallSignal::End {
            call: R,
            reason: EndReason::Timeout
        }]
    );
    assert!(out.sip().is_empty(), "a timed-out INVITE is not cancelled");
    assert!(lab.sb.ports().leased.is_empty());
    assert_eq!(lab.sb.stats().calls_active, 0);
}

#[test]
fn a_provisional_response_stops_our_retransmissions() {
    let mut lab = Lab::new();
    let invite = ring_202(&mut lab);
    let sent = lab.wait_timed(Duration::from_millis(600));
    assert_eq!(timeline(&sent), at(&[0.5], "INVITE"));
    lab.recv(phone_202(), &response_from_202(&invite, 180, "Ringing", ""));
    assert!(lab.wait(Duration::from_secs(120)).0.is_empty(), "rings on");
    assert_eq!(lab.sb.stats().calls_active, 1);
}

#[test]
fn our_bye_is_retransmitted_on_timer_e_until_answered() {
    let mut lab = Lab::new();
    let invite = ring_202(&mut lab);
    lab.recv(
        phone_202(),
        &response_from_202(&invite, 200, "OK", SDP_202_G722),
    );
    let bye = lab
        .relay(CallSignal::End {
            call: R,
            reason: EndReason::Normal,
        })
        .one();
    let sent = lab.wait_timed(Duration::from_secs(8));
    assert_eq!(timeline(&sent), at(&[0.5, 1.5, 3.5, 7.5], "BYE"));
    let out = lab.recv(phone_202(), &response_from_202(&bye, 200, "OK", ""));
    assert!(out.0.is_empty());
    assert!(lab.wait(Duration::from_secs(60)).0.is_empty());
    assert_eq!(lab.sb.stats().transactions, 0);
}

#[test]
fn our_bye_never_answered_gives_up_on_timer_f_quietly() {
    let mut lab = Lab::new();
    let invite = ring_202(&mut lab);
    lab.recv(
        phone_202(),
        &response_from_202(&invite, 200, "OK", SDP_202_G722),
    );
    lab.relay(CallSignal::End {
        call: R,
        reason: EndReason::Normal,
    });
    let sent = lab.wait_timed(Duration::from_millis(31_900));
    let times: Vec<f64> = sent.iter().map(|(t, _)| t.as_secs_f64()).collect();
    // Timer E: T1 doubling to T2, until timer F (64*T1) ends the transaction.
    assert_eq!(
        times,
        [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    );
    assert!(sent.iter().all(|(_, m)| m.method() == Some(&Method::Bye)));
    let out = lab.wait(Duration::from_secs(10));
    assert!(out.0.is_empty(), "the 408 of timer F: {:?}", out.0);
    assert_eq!(lab.sb.stats().transactions, 0);
    assert_eq!(lab.sb.stats().calls_active, 0);
}
