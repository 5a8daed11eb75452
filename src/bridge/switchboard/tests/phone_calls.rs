//! Calls a phone makes: set-up, answer, hold and re-INVITE, hang-up,
//! CANCEL, and the relay's refusals.

use super::*;

fn answered(lab: &mut Lab) -> (u32, Vec<u8>, Message) {
    let (call, invite, _) = lab.dial("900", SDP_PCMU);
    lab.relay(CallSignal::Ringing { call });
    let out = lab.relay(CallSignal::Answer {
        call,
        flow: 77,
        ssrc: 0xabcd,
    });
    let ok = out.sip().last().unwrap().1.clone();
    assert_eq!(ok.code(), Some(200));
    let ack = ack(&invite, &ok, Some("z9hG4bK-201-ack2"));
    assert!(lab.recv(phone_201(), &ack).0.is_empty());
    (call, invite, ok)
}

#[test]
fn a_phone_call_is_challenged_set_up_rung_answered_and_hung_up() {
    let mut lab = Lab::new();
    let (call, invite, out) = lab.dial("900", SDP_PCMU);
    assert_eq!(
        out.signals(),
        [CallSignal::Setup {
            call,
            to: "900".into(),
            from: "201".into(),
            flow: FIRST_FLOW,
            ssrc: out_ssrc(&out),
        }]
    );
    assert_eq!(out.sip()[0].0, phone_201(), "100 Trying goes to the phone");
    assert_eq!(lab.sb.stats().calls_active, 1);
    assert_eq!(lab.sb.ports().leased.len(), 1, "ports leased for the SDP");

    let out = lab.relay(CallSignal::Ringing { call });
    let ringing = out.one();
    assert_eq!(ringing.code(), Some(180));
    let tag = ringing.to().unwrap().tag().unwrap().to_string();
    assert_eq!(
        ringing.headers.get("Contact"),
        Some("<sip:192.168.1.2:5060>")
    );
    assert_eq!(ringing.cseq().unwrap().seq, 2);

    let mut out = lab.relay(CallSignal::Answer {
        call,
        flow: 77,
        ssrc: 0xabcd,
    });
    assert_eq!(
        out.media(),
        [format!(
            "start {call} 10000 Some(192.168.1.20:4000) Some(77)"
        )]
    );
    let (c, leg, pair) = out.started();
    assert_eq!(c, call);
    assert_eq!(leg.codec, PhoneCodec::Pcmu);
    assert_eq!((leg.phone_pt, leg.dtmf_pt), (0, Some(101)));
    assert_eq!(leg.ptime, Duration::from_millis(20));
    assert_eq!(leg.up_flow, FIRST_FLOW);
    assert_eq!(leg.opus.complexity, 1, "[sip] opus_complexity");
    assert_eq!(leg.opus.frame, Duration::from_millis(20));
    let ok = out.one();
    assert_eq!(ok.code(), Some(200));
    assert_eq!(ok.to().unwrap().tag(), Some(tag.as_str()), "same dialog");
    let sdp = String::from_utf8(ok.body.clone()).unwrap();
    assert!(sdp.contains("c=IN IP4 192.168.1.2\r\n"), "{sdp}");
    assert!(sdp.contains("m=audio 10000 RTP/AVP 0 101\r\n"), "{sdp}");
    assert!(
        out.signals().is_empty(),
        "the relay answered: nothing to say"
    );

    let ack = ack(&invite, &ok, Some("z9hG4bK-201-ack2"));
    assert!(lab.recv(phone_201(), &ack).0.is_empty());
    assert!(
        lab.wait(Duration::from_secs(40)).0.is_empty(),
        "acknowledged"
    );

    let bye = in_dialog_from_201("BYE", &invite, &ok, 3, "z9hG4bK-201-bye3", "");
    let out = lab.recv(phone_201(), &bye);
    assert_eq!(out.codes(), [200]);
    assert_eq!(
        out.signals(),
        [CallSignal::End {
            call,
            reason: EndReason::Normal
        }]
    );
    assert_eq!(
        out.media(),
        ["unroute 77".to_string(), format!("stop {call}")]
    );
    assert_eq!(lab.sb.stats().calls_active, 0);
    assert_eq!(lab.sb.stats().calls, 1);
    // The engine returns the ports once it stopped.
    assert_eq!(lab.sb.ports().leased.len(), 1);
    lab.sb.media_done(lab.now, pair);
    assert!(lab.sb.ports().leased.is_empty());
}

fn out_ssrc(out: &Out) -> u32 {
    match out.signals()[..] {
        [CallSignal::Setup { ssrc, .. }] => ssrc,
        _ => panic!("{:?}", out.0),
    }
}

#[test]
fn the_answer_is_these_bytes() {
    let mut lab = Lab::new();
    let (call, _, _) = lab.dial("900", SDP_PCMU);
    let out = lab.relay(CallSignal::Answer {
        call,
        flow: 77,
        ssrc: 1,
    });
    let ok = String::from_utf8(out.bytes().pop().unwrap()).unwrap();
    assert_eq!(ok, ANSWER, "{ok}");
}

const ANSWER: &str = "SIP/2.0 200 OK\r\n\
Via: SIP/2.0/UDP 192.168.1.20:5060;branch=z9hG4bK-201-inv2;rport=5060;received=192.168.1.20\r\n\
From: \"Desk 201\" <sip:201@192.168.1.2>;tag=7c1d9e2a0b3f4d5e\r\n\
To: <sip:900@192.168.1.2>;tag=0203040506070809\r\n\
Call-ID: 5f0e3c2b9a41c7d8\r\n\
CSeq: 2 INVITE\r\n\
Contact: <sip:192.168.1.2:5060>\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 206\r\n\
\r\n\
v=0\r\n\
o=voxgate 1001 1001 IN IP4 192.168.1.2\r\n\
s=-\r\n\
c=IN IP4 192.168.1.2\r\n\
t=0 0\r\n\
m=audio 10000 RTP/AVP 0 101\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=fmtp:101 0-15\r\n\
a=ptime:20\r\n\
a=sendrecv\r\n";

#[test]
fn hold_and_resume_by_reinvite_steer_the_media() {
    let mut lab = Lab::new();
    let (call, invite, ok) = answered(&mut lab);
    let hold = in_dialog_from_201("INVITE", &invite, &ok, 3, "z9hG4bK-201-hold", SDP_HOLD);
    let out = lab.recv(phone_201(), &hold);
    assert_eq!(out.codes(), [100, 200]);
    assert_eq!(
        out.media(),
        [
            format!("{call} Hold(true)"),
            format!("{call} Remote(192.168.1.20:4000)")
        ]
    );
    let answer = out.sip()[1].1.clone();
    assert_eq!(answer.to().unwrap().tag(), ok.to().unwrap().tag());
    let sdp = String::from_utf8(answer.body.clone()).unwrap();
    assert!(sdp.contains("a=recvonly"), "{sdp}");
    assert!(sdp.contains("o=voxgate 1001 1002 "), "next version: {sdp}");
    assert!(sdp.contains("m=audio 10000 "), "same port: {sdp}");
    assert!(out.signals().is_empty(), "hold stays on the box");
    lab.recv(phone_201(), &ack(&hold, &answer, Some("z9hG4bK-201-ack3")));

    let resume = in_dialog_from_201("INVITE", &invite, &ok, 4, "z9hG4bK-201-res", SDP_RESUME);
    let out = lab.recv(phone_201(), &resume);
    assert_eq!(out.codes(), [100, 200]);
    assert_eq!(
        out.media(),
        [
            format!("{call} Hold(false)"),
            format!("{call} Remote(192.168.1.20:4002)")
        ]
    );
    let sdp = String::from_utf8(out.sip()[1].1.body.clone()).unwrap();
    assert!(
        sdp.contains("a=sendrecv") && sdp.contains(" 1001 1003 "),
        "{sdp}"
    );
}

#[test]
fn hold_on_the_zero_address_stops_sending_without_a_new_remote() {
    let mut lab = Lab::new();
    let (call, invite, ok) = answered(&mut lab);
    let hold = in_dialog_from_201("INVITE", &invite, &ok, 3, "z9hG4bK-201-h0", SDP_HOLD_ZERO);
    let out = lab.recv(phone_201(), &hold);
    assert_eq!(out.codes(), [100, 200]);
    assert_eq!(out.media(), [format!("{call} Hold(true)")]);
}

#[test]
fn a_reinvite_outside_any_dialog_gets_481_and_a_bad_offer_488() {
    let mut lab = Lab::new();
    let (_, invite, ok) = answered(&mut lab);
    let re = in_dialog_from_201("INVITE", &invite, &ok, 3, "z9hG4bK-201-x", SDP_HOLD);
    let tag = ok.to().unwrap().tag().unwrap().to_string();
    let re = String::from_utf8(re).unwrap().replace(&tag, "deadbeef");
    let re = re.into_bytes();
    assert_eq!(lab.recv(phone_201(), &re).codes(), [100, 481]);
    let re = in_dialog_from_201("INVITE", &invite, &ok, 4, "z9hG4bK-201-v", SDP_VIDEO);
    let out = lab.recv(phone_201(), &re);
    assert_eq!(out.codes(), [100, 488]);
    assert!(out.media().is_empty());
}

#[test]
fn cancel_before_the_answer_gets_200_and_487_and_ends_the_call() {
    let mut lab = Lab::new();
    let (call, invite, _) = lab.dial("301", SDP_PCMU);
    lab.relay(CallSignal::Ringing { call });
    let out = lab.recv(phone_201(), &cancel_from_201(&invite));
    let sent = out.sip();
    assert_eq!(out.codes(), [200, 487], "{:?}", out.0);
    assert_eq!(sent[0].1.cseq().unwrap().method, Method::Cancel);
    assert_eq!(sent[1].1.cseq().unwrap().method, Method::Invite);
    assert_eq!(
        out.signals(),
        [CallSignal::End {
            call,
            reason: EndReason::Normal
        }]
    );
    assert!(out.media().is_empty(), "no media ran");
    assert!(lab.sb.ports().leased.is_empty(), "ports back at once");
    // The phone's ACK for the 487 ends the retransmissions.
    assert!(
        lab.recv(phone_201(), &ack(&invite, &sent[1].1, None))
            .0
            .is_empty()
    );
    assert!(lab.wait(Duration::from_secs(40)).0.is_empty());
    // A late answer from the relay finds no call.
    let late = lab.relay(CallSignal::Answer {
        call,
        flow: 9,
        ssrc: 9,
    });
    assert!(late.0.is_empty(), "{:?}", late.0);
}

#[test]
fn cancel_for_an_unknown_invite_gets_481() {
    let mut lab = Lab::new();
    let invite = invite_from_201("301", 7, "z9hG4bK-201-none", None, SDP_PCMU);
    assert_eq!(
        lab.recv(phone_201(), &cancel_from_201(&invite)).codes(),
        [481]
    );
}

#[test]
fn the_relay_saying_busy_becomes_486_busy_here() {
    let mut lab = Lab::new();
    let (call, invite, _) = lab.dial("301", SDP_PCMU);
    let out = lab.relay(CallSignal::End {
        call,
        reason: EndReason::Busy,
    });
    let busy = out.one();
    assert_eq!(busy.code(), Some(486));
    assert!(out.signals().is_empty(), "the relay ended it");
    assert!(lab.sb.ports().leased.is_empty());
    assert!(
        lab.recv(phone_201(), &ack(&invite, &busy, None))
            .0
            .is_empty()
    );
}

#[test]
fn refusals_map_to_their_sip_status() {
    for (reason, code) in [
        (EndReason::NotFound, 404),
        (EndReason::Timeout, 408),
        (EndReason::Declined, 603),
        (EndReason::Unavailable, 480),
        (EndReason::Error, 500),
    ] {
        let mut lab = Lab::new();
        let (call, _, _) = lab.dial("301", SDP_PCMU);
        let out = lab.relay(CallSignal::End { call, reason });
        assert_eq!(out.codes(), [code], "{reason:?}");
    }
}

#[test]
fn the_relay_hanging_up_an_answered_call_sends_bye() {
    let mut lab = Lab::new();
    let (call, _, ok) = answered(&mut lab);
    let out = lab.relay(CallSignal::End {
        call,
        reason: EndReason::Normal,
    });
    assert_eq!(out.methods(), ["BYE"]);
    let (dest, bye) = out.sip()[0].clone();
    assert_eq!(dest, phone_201());
    assert_eq!(bye.to().unwrap().uri.user.as_deref(), Some("201"));
    assert_eq!(bye.from().unwrap().tag(), ok.to().unwrap().tag());
    assert_eq!(bye.call_id().unwrap(), "5f0e3c2b9a41c7d8");
    assert_eq!(
        out.media(),
        ["unroute 77".to_string(), format!("stop {call}")]
    );
    assert!(out.signals().is_empty());
}

#[test]
fn calls_the_bridge_cannot_take_are_refused_and_leak_no_port() {
    // Relay down: 480.
    let mut lab = Lab::new();
    lab.link(LinkEvent::Down);
    let src = phone_201();
    let first = invite_from_201("301", 1, "z9hG4bK-a1", None, SDP_PCMU);
    let challenge = lab.recv(src, &first).sip()[1].1.clone();
    let auth = authorization(&challenge, "201", "INVITE", "sip:301@192.168.1.2");
    let inv = invite_from_201("301", 2, "z9hG4bK-a2", Some(&auth), SDP_PCMU);
    assert_eq!(lab.recv(src, &inv).codes(), [100, 480]);

    // No usable offer: 488, the pair goes back.
    let mut lab = Lab::new();
    let challenge = lab.recv(src, &first).sip()[1].1.clone();
    let auth = authorization(&challenge, "201", "INVITE", "sip:301@192.168.1.2");
    let inv = invite_from_201("301", 2, "z9hG4bK-a2", Some(&auth), SDP_VIDEO);
    let out = lab.recv(src, &inv);
    assert_eq!(out.codes(), [100, 488]);
    assert!(out.signals().is_empty());
    assert!(lab.sb.ports().leased.is_empty());

    // No free port pair: 503.
    let mut lab = Lab::with(sip_config(), FakePorts::new(1));
    lab.dial("301", SDP_PCMU);
    // (The fixture's Call-ID is the first call's: its CSeq goes on.)
    let first = invite_from_201("302", 3, "z9hG4bK-b1", None, SDP_PCMU);
    let challenge = lab.recv(src, &first).sip()[1].1.clone();
    let auth = authorization(&challenge, "201", "INVITE", "sip:302@192.168.1.2");
    let inv = invite_from_201("302", 4, "z9hG4bK-b2", Some(&auth), SDP_PCMU);
    let out = lab.recv(src, &inv);
    assert_eq!(out.codes(), [100, 503]);
    assert!(out.signals().is_empty());
    assert_eq!(lab.sb.stats().calls, 1);
}

#[test]
fn a_wrong_password_is_challenged_again_and_counted() {
    let mut lab = Lab::new();
    let src = phone_201();
    let first = invite_from_201("301", 1, "z9hG4bK-w1", None, SDP_PCMU);
    let challenge = lab.recv(src, &first).sip()[1].1.clone();
    let auth = authorization(&challenge, "201", "INVITE", "sip:301@192.168.1.2")
        .replace("response=\"", "response=\"0");
    let inv = invite_from_201("301", 2, "z9hG4bK-w2", Some(&auth), SDP_PCMU);
    let out = lab.recv(src, &inv);
    assert_eq!(out.codes(), [100, 401]);
    assert!(out.signals().is_empty());
    assert_eq!(lab.sb.stats().auth_failures, 1);
    assert_eq!(lab.sb.stats().calls, 0);
}

#[test]
fn digits_go_both_ways_while_media_runs() {
    let mut lab = Lab::new();
    let (call, _, _) = answered(&mut lab);
    let out = lab.relay(CallSignal::Dtmf {
        call,
        digit: '5',
        duration_ms: 160,
    });
    assert_eq!(out.media(), [format!("{call} Digit(Digit('5'), 160)")]);
    lab.sb.handle_key(
        lab.now,
        call,
        KeyPress {
            digit: Digit::from_char('*').unwrap(),
            timestamp: 8000,
        },
    );
    let out = lab.drain();
    assert_eq!(
        out.signals(),
        [CallSignal::Dtmf {
            call,
            digit: '*',
            duration_ms: 100
        }]
    );
}

#[test]
fn a_call_whose_media_cannot_start_goes_on_without_media_commands() {
    let mut lab = Lab::new();
    let (call, invite, _) = lab.dial("900", SDP_PCMU);
    let mut out = lab.relay(CallSignal::Answer {
        call,
        flow: 77,
        ssrc: 1,
    });
    let (_, _, pair) = out.started();
    lab.sb.media_failed(lab.now, call, pair);
    assert!(lab.sb.ports().leased.is_empty(), "the pair is back");
    let ok = out.one();
    lab.recv(phone_201(), &ack(&invite, &ok, Some("z9hG4bK-201-ack2")));
    let hold = in_dialog_from_201("INVITE", &invite, &ok, 3, "z9hG4bK-201-hold", SDP_HOLD);
    let out = lab.recv(phone_201(), &hold);
    assert_eq!(out.codes(), [100, 200]);
    assert!(out.media().is_empty(), "{:?}", out.0);
    let out = lab.relay(CallSignal::End {
        call,
        reason: EndReason::Normal,
    });
    assert_eq!(out.methods(), ["BYE"]);
    assert_eq!(out.media(), ["unroute 77"], "no media to stop");
}

#[test]
fn dialling_something_that_is_not_a_number_gets_404() {
    let mut lab = Lab::new();
    let src = phone_201();
    let first = invite_from_201("alice", 1, "z9hG4bK-n1", None, SDP_PCMU);
    let challenge = lab.recv(src, &first).sip()[1].1.clone();
    let auth = authorization(&challenge, "201", "INVITE", "sip:alice@192.168.1.2");
    let inv = invite_from_201("alice", 2, "z9hG4bK-n2", Some(&auth), SDP_PCMU);
    let out = lab.recv(src, &inv);
    assert_eq!(out.codes(), [100, 404]);
    assert!(out.signals().is_empty());
    assert!(lab.sb.ports().leased.is_empty());
}
