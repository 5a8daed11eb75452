//! Attacks on the switchboard (issue 14): forged sources, a spoofed RTP
//! sender, too many calls, and the small protocol slips they led to.

use super::relay_calls::{R, ring_202};
use super::*;

/// The relay calls 202 as call `call`.
fn setup(call: u32) -> CallSignal {
    CallSignal::Setup {
        call,
        to: "202".into(),
        from: "201".into(),
        flow: 40 + u64::from(call & 0xff),
        ssrc: 0x1234,
    }
}

/// The one media start's RTP sources.
fn sources(out: &Out) -> Vec<IpAddr> {
    out.0
        .iter()
        .find_map(|a| match a {
            Action::StartMedia { sources, .. } => Some(sources.clone()),
            _ => None,
        })
        .expect("media started")
}

#[test]
fn forged_registers_from_a_phones_address_never_ban_it() {
    let mut lab = Lab::new();
    let src = phone_201();
    // The attacker saw a 401 (the realm) but cannot read the phone's
    // replies: it forges nonces.
    let forged = "Digest username=\"201\", realm=\"voxgate\", nonce=\"00000000000000000123456789abcdef0123456789abcdef\", uri=\"sip:192.168.1.2:5060\", response=\"0000\", algorithm=SHA-256, cnonce=\"x\", qop=auth, nc=00000001";
    for i in 0..50 {
        let out = lab.recv(src, &register("201", src, 100 + i, Some(forged), 300));
        assert_eq!(out.codes(), [401], "challenged, never dropped");
    }
    assert_eq!(lab.sb.stats().auth_failures, 0);
    assert_eq!(lab.sb.stats().bans, 0);
    assert!(lab.sb.screen(lab.now).bans.is_empty());
    // The phone itself registers at once.
    lab.register_at("201", src, 300, 500);
    // A wrong password answering our own nonce still counts (3 allowed).
    for i in 0..4 {
        let first = lab.recv(src, &register("201", src, 600 + 2 * i, None, 300));
        let auth = authorization_with(
            &first.one(),
            "201",
            "guess",
            "REGISTER",
            &format!("sip:{BOX}:5060"),
        );
        lab.recv(src, &register("201", src, 601 + 2 * i, Some(&auth), 300));
    }
    assert_eq!(lab.sb.stats().auth_failures, 4);
    assert_eq!(lab.sb.stats().bans, 1);
    assert!(lab.sb.screen(lab.now).banned(lab.now, src.ip()));
    assert!(!lab.sb.screen(lab.now).banned(lab.now, phone_202().ip()));
}

#[test]
fn a_replayed_register_is_challenged_again_not_obeyed() {
    let mut lab = Lab::new();
    let src = phone_201();
    let first = lab.recv(src, &register("201", src, 1, None, 300));
    let auth = authorization(&first.one(), "201", "REGISTER", &format!("sip:{BOX}:5060"));
    let ok = lab.recv(src, &register("201", src, 2, Some(&auth), 300));
    assert_eq!(ok.codes(), [200]);
    // A captured copy (a new transaction, same nonce and count), e.g. one
    // that would unregister the phone with Expires: 0.
    let replay = lab.recv(src, &register("201", src, 3, Some(&auth), 0));
    let r = replay.one();
    assert_eq!(r.code(), Some(401));
    assert!(
        r.headers
            .get("WWW-Authenticate")
            .unwrap()
            .contains("stale=true")
    );
    assert_eq!(lab.sb.stats().registered, 1, "still registered");
    assert_eq!(lab.sb.stats().auth_failures, 0);
}

#[test]
fn an_outsider_is_dropped_once_before_parsing() {
    let mut lab = Lab::new();
    let outsider: SocketAddr = "10.9.9.9:5060".parse().unwrap();
    assert!(lab.recv(outsider, b"not even SIP").0.is_empty());
    assert!(
        lab.recv(outsider, &register("201", outsider, 1, None, 300))
            .0
            .is_empty()
    );
    assert_eq!(lab.sb.stats().dropped, 2, "one count per message");
    // Over TCP the same.
    lab.recv_tcp(outsider, &register("201", outsider, 2, None, 300));
    assert_eq!(lab.sb.stats().dropped, 3);
    assert!(!lab.sb.allowed(outsider.ip()));
    // Malformed bytes from inside are dropped (and counted) too.
    assert!(lab.recv(phone_201(), b"garbage").0.is_empty());
    assert_eq!(lab.sb.stats().dropped, 4);
}

#[test]
fn the_487_after_cancel_carries_the_tag_of_the_180() {
    let mut lab = Lab::new();
    let (call, invite, _) = lab.dial("301", SDP_PCMU);
    let ringing = lab.relay(CallSignal::Ringing { call }).one();
    let tag = ringing.to().unwrap().tag().unwrap().to_string();
    let out = lab.recv(phone_201(), &cancel_from_201(&invite));
    let sent = out.sip();
    assert_eq!(out.codes(), [200, 487]);
    assert_eq!(sent[1].1.to().unwrap().tag(), Some(tag.as_str()));
}

#[test]
fn a_retransmitted_200_ok_is_acknowledged_again() {
    let mut lab = Lab::new();
    let invite = ring_202(&mut lab);
    let ok = response_from_202(&invite, 200, "OK", SDP_202_G722);
    let first = lab.recv(phone_202(), &ok);
    let ack = first
        .sip()
        .into_iter()
        .find(|(_, m)| m.method() == Some(&Method::Ack))
        .expect("ACK")
        .1;
    // Our ACK was lost: the phone sends its 200 again, twice.
    for _ in 0..2 {
        let again = lab.recv(phone_202(), &ok);
        let sent = again.sip();
        assert_eq!(sent.len(), 1, "{:?}", again.0);
        assert_eq!(sent[0].0, phone_202());
        assert_eq!(sent[0].1.encode(), ack.encode(), "the same ACK");
        assert!(again.signals().is_empty(), "no second answer");
        assert!(again.media().is_empty());
    }
}

#[test]
fn media_takes_rtp_only_from_the_phone_inside_the_allowlist() {
    let mut lab = Lab::new();
    let (call, _, _) = lab.dial("900", SDP_PCMU);
    let out = lab.relay(CallSignal::Answer {
        call,
        flow: 77,
        ssrc: 1,
    });
    assert_eq!(sources(&out), ["192.168.1.20".parse::<IpAddr>().unwrap()]);
    // An SDP naming another allowed host adds it; one outside the
    // allowlist is never sent to nor taken from.
    let mut lab = Lab::new();
    let (call, _, _) = lab.dial(
        "900",
        &SDP_PCMU.replace("c=IN IP4 192.168.1.20", "c=IN IP4 192.168.1.99"),
    );
    let out = lab.relay(CallSignal::Answer {
        call,
        flow: 77,
        ssrc: 1,
    });
    assert_eq!(
        sources(&out),
        [
            "192.168.1.20".parse::<IpAddr>().unwrap(),
            "192.168.1.99".parse().unwrap()
        ]
    );
    let mut lab = Lab::new();
    let (call, _, _) = lab.dial(
        "900",
        &SDP_PCMU.replace("c=IN IP4 192.168.1.20", "c=IN IP4 203.0.113.5"),
    );
    let out = lab.relay(CallSignal::Answer {
        call,
        flow: 77,
        ssrc: 1,
    });
    assert_eq!(sources(&out), ["192.168.1.20".parse::<IpAddr>().unwrap()]);
    assert_eq!(
        out.media(),
        [format!("start {call} 10000 None Some(77)")],
        "nothing sent outside the allowlist before the phone's RTP arrives"
    );
}

#[test]
fn calls_per_extension_are_capped_both_ways() {
    let mut lab = Lab::with(
        SipConfig {
            calls_per_extension: 2,
            ..sip_config()
        },
        FakePorts::new(8),
    );
    let src = phone_201();
    lab.dial("301", SDP_PCMU);
    // dial() uses fixed branches; the second call takes others.
    for (n, to) in [(3u32, "302"), (5, "303")] {
        let first = invite_from_201(to, n, &format!("z9hG4bK-cap-{n}"), None, SDP_PCMU);
        let challenge = lab.recv(src, &first).sip()[1].1.clone();
        let auth = authorization(&challenge, "201", "INVITE", &format!("sip:{to}@{BOX}"));
        let inv = invite_from_201(
            to,
            n + 1,
            &format!("z9hG4bK-cap-{}", n + 1),
            Some(&auth),
            SDP_PCMU,
        );
        let out = lab.recv(src, &inv);
        if to == "302" {
            assert_eq!(out.codes(), [100], "the second call is taken");
        } else {
            assert_eq!(out.codes(), [100, 486], "the third is busy");
            assert!(out.signals().is_empty());
        }
    }
    assert_eq!(lab.sb.stats().calls_active, 2);
    assert_eq!(lab.sb.ports().leased.len(), 2, "no port leaked");
    // The relay calling 202 twice: the third call to it is refused busy.
    let mut lab = Lab::with(
        SipConfig {
            calls_per_extension: 2,
            ..sip_config()
        },
        FakePorts::new(8),
    );
    ring_202(&mut lab);
    let out = lab.relay(setup(R + 1));
    assert_eq!(out.methods(), ["INVITE"]);
    let out = lab.relay(setup(R + 2));
    assert_eq!(
        out.signals(),
        [CallSignal::End {
            call: R + 2,
            reason: EndReason::Busy
        }]
    );
    assert!(out.sip().is_empty());
}
