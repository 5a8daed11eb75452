//! Calls from the relay to a registered phone.

use super::*;
use crate::proto::signal::RELAY_CALL_BIT;

pub(super) const R: u32 = RELAY_CALL_BIT | 5;

pub(super) fn setup_to(to: &str) -> CallSignal {
    CallSignal::Setup {
        call: R,
        to: to.into(),
        from: "201".into(),
        flow: 40,
        ssrc: 0x1234,
    }
}

/// 202 registered, the relay calls it: returns our INVITE.
pub(super) fn ring_202(lab: &mut Lab) -> Message {
    let out = lab.register("202", phone_202(), 300);
    assert_eq!(out.signals(), [CallSignal::ExtUp("202".into())]);
    let out = lab.relay(setup_to("202"));
    assert!(out.signals().is_empty(), "{:?}", out.0);
    let sent = out.sip();
    assert_eq!(sent.len(), 1, "{:?}", out.0);
    assert_eq!(sent[0].0, phone_202(), "to where the REGISTER came from");
    sent[0].1.clone()
}

#[test]
fn the_relay_calls_a_registered_phone_that_rings_answers_and_hangs_up() {
    let mut lab = Lab::new();
    let invite = ring_202(&mut lab);
    assert_eq!(invite.method(), Some(&Method::Invite));
    assert_eq!(
        invite.request_uri().unwrap().to_string(),
        "sip:202@192.168.1.21:5062",
        "the registered contact"
    );
    let via = invite.top_via().unwrap();
    assert_eq!(via.transport, "UDP");
    assert!(via.is_rfc3261());
    assert!(
        invite
            .headers
            .get("From")
            .unwrap()
            .starts_with("<sip:201@192.168.1.2:5060>;tag="),
        "{invite:?}"
    );
    assert_eq!(invite.headers.get("To"), Some("<sip:202@192.168.1.2>"));
    assert_eq!(invite.headers.get("CSeq"), Some("1 INVITE"));
    let offer = String::from_utf8(invite.body.clone()).unwrap();
    assert!(
        offer.contains("m=audio 10000 RTP/AVP 111 9 0 8 101\r\n"),
        "{offer}"
    );
    assert!(offer.contains("a=ptime:20\r\n"), "{offer}");
    assert_eq!(lab.sb.stats().calls_active, 1);

    let ringing = response_from_202(&invite, 180, "Ringing", "");
    let out = lab.recv(phone_202(), &ringing);
    assert_eq!(out.signals(), [CallSignal::Ringing { call: R }]);
    assert!(out.sip().is_empty());

    let ok = response_from_202(&invite, 200, "OK", SDP_202_G722);
    let mut out = lab.recv(phone_202(), &ok);
    let ok = Message::parse(&ok).unwrap();
    let local = lab.sb.calls.keys().copied().next().unwrap();
    let start = out
        .0
        .iter()
        .position(|a| matches!(a, Action::StartMedia { .. }));
    let answer = out
        .0
        .iter()
        .position(|a| matches!(a, Action::Signal(CallSignal::Answer { .. })));
    assert!(
        start < answer,
        "media runs before the relay hears the answer"
    );
    assert_eq!(
        out.media(),
        [format!(
            "start {local} 10000 Some(192.168.1.21:6000) Some(40)"
        )]
    );
    let (_, leg, pair) = out.started();
    assert_eq!(leg.codec, PhoneCodec::G722);
    assert_eq!((leg.phone_pt, leg.dtmf_pt), (9, Some(101)));
    assert_eq!(leg.ptime, Duration::from_millis(30), "the phone's ptime");
    let [CallSignal::Answer { call, flow, .. }] = out.signals()[..] else {
        panic!("{:?}", out.0)
    };
    assert_eq!((call, flow), (R, FIRST_FLOW));
    let ack = out.one();
    assert_eq!(ack.method(), Some(&Method::Ack));
    assert_eq!(
        ack.request_uri().unwrap().to_string(),
        "sip:202@192.168.1.21:5062;transport=UDP",
        "the phone's Contact"
    );
    assert_eq!(ack.headers.get("CSeq"), Some("1 ACK"));
    assert_eq!(ack.to().unwrap().tag(), Some("4343SIPpTag01202"));
    assert_ne!(
        ack.top_via().unwrap().branch(),
        via.branch(),
        "an ACK for a 2xx is a new transaction"
    );

    let bye = bye_from_202(&invite, &ok);
    let out = lab.recv(phone_202(), &bye);
    assert_eq!(out.codes(), [200]);
    assert_eq!(
        out.signals(),
        [CallSignal::End {
            call: R,
            reason: EndReason::Normal
        }]
    );
    assert_eq!(
        out.media(),
        ["unroute 40".to_string(), format!("stop {local}")]
    );
    lab.sb.media_done(lab.now, pair);
    assert!(lab.sb.ports().leased.is_empty());
}

#[test]
fn the_relay_hanging_up_an_answered_call_to_a_phone_sends_bye() {
    let mut lab = Lab::new();
    let invite = ring_202(&mut lab);
    let ok = response_from_202(&invite, 200, "OK", SDP_202_G722);
    lab.recv(phone_202(), &ok);
    let ok = Message::parse(&ok).unwrap();
    let out = lab.relay(CallSignal::End {
        call: R,
        reason: EndReason::Normal,
    });
    let bye = out.one();
    assert_eq!(bye.method(), Some(&Method::Bye));
    assert_eq!(
        bye.request_uri().unwrap().to_string(),
        "sip:202@192.168.1.21:5062;transport=UDP"
    );
    assert_eq!(bye.to().unwrap().tag(), ok.to().unwrap().tag());
    assert_eq!(bye.cseq().unwrap().seq, 2);
    assert!(out.signals().is_empty());
    let out = lab.recv(phone_202(), &response_from_202(&bye, 200, "OK", ""));
    assert!(out.0.is_empty());
    assert!(lab.wait(Duration::from_secs(40)).0.is_empty(), "answered");
}

#[test]
fn a_call_to_an_extension_without_a_registered_phone_is_refused() {
    let mut lab = Lab::new();
    for (to, reason) in [
        ("203", EndReason::NotFound),
        ("202", EndReason::Unavailable),
    ] {
        let out = lab.relay(setup_to(to));
        assert_eq!(out.signals(), [CallSignal::End { call: R, reason }], "{to}");
        assert!(out.sip().is_empty());
    }
    assert_eq!(lab.sb.stats().calls, 0);
    assert!(lab.sb.ports().leased.is_empty());
}

#[test]
fn a_phone_refusing_the_call_ends_it_with_the_mapped_reason() {
    for (code, text, reason) in [
        (486, "Busy Here", EndReason::Busy),
        (603, "Decline", EndReason::Declined),
        (480, "Temporarily Unavailable", EndReason::Unavailable),
        (404, "Not Found", EndReason::NotFound),
        (500, "Server Internal Error", EndReason::Error),
    ] {
        let mut lab = Lab::new();
        let invite = ring_202(&mut lab);
        let out = lab.recv(phone_202(), &response_from_202(&invite, code, text, ""));
        assert_eq!(
            out.signals(),
            [CallSignal::End { call: R, reason }],
            "{code}"
        );
        let ack = out.one();
        assert_eq!(ack.method(), Some(&Method::Ack), "{code}");
        assert_eq!(
            ack.top_via().unwrap().branch(),
            invite.top_via().unwrap().branch(),
            "the transaction acknowledges an error response"
        );
        assert_eq!(out.media(), ["unroute 40"]);
        assert!(lab.sb.ports().leased.is_empty());
        assert_eq!(lab.sb.stats().calls_active, 0);
    }
}

#[test]
fn the_relay_giving_up_while_the_phone_rings_cancels_the_invite() {
    let mut lab = Lab::new();
    let invite = ring_202(&mut lab);
    lab.recv(phone_202(), &response_from_202(&invite, 180, "Ringing", ""));
    let out = lab.relay(CallSignal::End {
        call: R,
        reason: EndReason::Timeout,
    });
    let cancel = out.one();
    assert_eq!(cancel.method(), Some(&Method::Cancel));
    assert_eq!(cancel.headers.get("CSeq"), Some("1 CANCEL"));
    assert_eq!(
        cancel.top_via().unwrap().branch(),
        invite.top_via().unwrap().branch()
    );
    assert!(out.signals().is_empty(), "the relay ended it");
    assert!(lab.sb.ports().leased.is_empty());

    // SIPp: 200 for the CANCEL, 487 for the INVITE; we ACK the 487.
    let out = lab.recv(phone_202(), &response_from_202(&cancel, 200, "OK", ""));
    assert!(out.0.is_empty());
    let out = lab.recv(
        phone_202(),
        &response_from_202(&invite, 487, "Request Terminated", ""),
    );
    assert_eq!(out.methods(), ["ACK"]);
    assert!(out.signals().is_empty(), "the call is already over");
}

#[test]
fn digits_from_the_relay_reach_an_answered_phone_only() {
    let mut lab = Lab::new();
    let invite = ring_202(&mut lab);
    let dtmf = CallSignal::Dtmf {
        call: R,
        digit: '#',
        duration_ms: 100,
    };
    assert!(lab.relay(dtmf.clone()).0.is_empty(), "no media yet");
    lab.recv(
        phone_202(),
        &response_from_202(&invite, 200, "OK", SDP_202_G722),
    );
    let local = lab.sb.calls.keys().copied().next().unwrap();
    assert_eq!(
        lab.relay(dtmf).media(),
        [format!("{local} Digit(Digit('#'), 100)")]
    );
}

#[test]
fn a_phone_registered_over_tcp_is_called_over_tcp() {
    let mut lab = Lab::new();
    let src = phone_202();
    let tcp = |b: Vec<u8>| {
        String::from_utf8(b)
            .unwrap()
            .replace("SIP/2.0/UDP", "SIP/2.0/TCP")
            .into_bytes()
    };
    let challenge = lab.recv_tcp(src, &tcp(register("202", src, 1, None, 300)));
    let auth = authorization(&challenge.one(), "202", "REGISTER", "sip:192.168.1.2:5060");
    let out = lab.recv_tcp(src, &tcp(register("202", src, 2, Some(&auth), 300)));
    assert_eq!(out.signals(), [CallSignal::ExtUp("202".into())]);
    assert!(out.0.iter().all(|a| match a {
        Action::SendSip(t) => t.reliable,
        _ => true,
    }));

    let out = lab.relay(setup_to("202"));
    let Action::SendSip(t) = &out.0[0] else {
        panic!("{:?}", out.0)
    };
    assert!(t.reliable, "on the phone's connection");
    assert_eq!(out.one().top_via().unwrap().transport, "TCP");
    // No retransmissions over TCP; timer B still ends the call.
    let timed = lab.wait_timed(Duration::from_secs(31));
    assert!(timed.is_empty(), "{timed:?}");
    let out = lab.wait(Duration::from_secs(2));
    assert_eq!(
        out.signals(),
        [CallSignal::End {
            call: R,
            reason: EndReason::Timeout
        }]
    );
}

#[test]
fn an_answer_without_usable_sdp_is_hung_up() {
    let mut lab = Lab::new();
    let invite = ring_202(&mut lab);
    let out = lab.recv(
        phone_202(),
        &response_from_202(&invite, 200, "OK", SDP_VIDEO),
    );
    assert_eq!(
        out.signals(),
        [CallSignal::End {
            call: R,
            reason: EndReason::Error
        }]
    );
    let mut methods = out.methods();
    methods.sort();
    assert_eq!(methods, ["ACK", "BYE"], "acknowledged, then hung up");
    assert_eq!(out.media(), ["unroute 40"]);
    assert!(lab.sb.ports().leased.is_empty());
}

/// An application's call (click-to-call) is a relay call like any other:
/// the phone rung first shows the target (an extension or a service
/// number) as the caller.
#[test]
fn a_call_an_application_started_shows_its_target_as_the_caller() {
    for target in ["301", "900", "901"] {
        let mut lab = Lab::new();
        lab.register("202", phone_202(), 300);
        let out = lab.relay(CallSignal::Setup {
            call: R,
            to: "202".into(),
            from: target.into(),
            flow: 40,
            ssrc: 0x1234,
        });
        let sent = out.sip();
        assert_eq!(sent.len(), 1, "{:?}", out.0);
        let from = sent[0].1.headers.get("From").unwrap().to_string();
        assert!(
            from.starts_with(&format!("<sip:{target}@192.168.1.2:5060>;tag=")),
            "{from}"
        );
    }
}
