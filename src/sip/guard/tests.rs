//! Unit tests of `sip::guard`.
use super::*;
use crate::sip::auth::{Algorithm, digest_response};

fn register(auth: Option<String>) -> Message {
    let mut s = String::from(
        "REGISTER sip:box.lan SIP/2.0\r\nVia: SIP/2.0/UDP 192.168.1.20:5060;branch=z9hG4bK1;rport\r\nFrom: <sip:101@box.lan>;tag=ph1\r\nTo: <sip:101@box.lan>\r\nCall-ID: reg1@phone\r\nCSeq: 2 REGISTER\r\nContact: <sip:101@192.168.1.20:5060>\r\n",
    );
    if let Some(a) = auth {
        s.push_str(&format!("Authorization: {a}\r\n"));
    }
    s.push_str("Content-Length: 0\r\n\r\n");
    Message::parse(s.as_bytes()).unwrap()
}

fn answer(nonce: &str, user: &str, password: &str) -> String {
    let ha1 = Ha1Pair::derive(user, "voxgate", password);
    let r = digest_response(
        Algorithm::Sha256,
        &ha1.sha256,
        nonce,
        "00000001",
        "cn",
        "auth",
        "REGISTER",
        "sip:box.lan",
    );
    format!(
        "Digest username=\"{user}\", realm=\"voxgate\", nonce=\"{nonce}\", uri=\"sip:box.lan\", response=\"{r}\", algorithm=SHA-256, cnonce=\"cn\", qop=auth, nc=00000001"
    )
}

fn store(u: &str) -> Option<Ha1Pair> {
    (u == "101").then(|| Ha1Pair::derive("101", "voxgate", "right"))
}

fn guard(t0: Instant, max_sources: usize) -> (Guard, DigestServer) {
    let cfg = GuardConfig {
        allow: vec![
            Cidr::parse("192.168.1.0/24").unwrap(),
            Cidr::parse("fd00::/8").unwrap(),
        ],
        max_failures: 3,
        window: Duration::from_secs(60),
        ban: Duration::from_secs(300),
        max_sources,
        max_packets: 10,
        packet_window: Duration::from_secs(1),
        ipv6_prefix: 128,
    };
    let d = || DigestServer::new("voxgate", &[1; 32], t0, Duration::from_secs(30));
    (Guard::new(cfg, d()), d())
}

#[test]
fn cidr() {
    let c = Cidr::parse("192.168.1.0/24").unwrap();
    assert!(c.contains("192.168.1.77".parse().unwrap()));
    assert!(c.contains("::ffff:192.168.1.77".parse().unwrap()));
    assert!(!c.contains("192.168.2.1".parse().unwrap()));
    assert!(
        Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap())
    );
    assert!(
        Cidr::parse("fd00::/8")
            .unwrap()
            .contains("fd12::1".parse().unwrap())
    );
    assert!(Cidr::parse("10.0.0.0/33").is_err());
    assert!(Cidr::parse("nope/8").is_err());
}

#[test]
fn unknown_user_and_wrong_password_are_byte_identical() {
    let t0 = Instant::now();
    let (mut g, d) = guard(t0, 16);
    let src: SocketAddr = "192.168.1.20:5060".parse().unwrap();
    let nonce = d.nonce(t0, src.ip());
    let (a, ea) = g.authenticate(
        t0,
        src,
        &register(Some(answer(&nonce, "999", "right"))),
        store,
    );
    let (b, eb) = g.authenticate(
        t0,
        src,
        &register(Some(answer(&nonce, "101", "wrong"))),
        store,
    );
    let (Decision::Respond(a), Decision::Respond(b)) = (a, b) else {
        panic!("expected 401s")
    };
    assert_eq!(a.encode(), b.encode());
    assert_eq!(a.code(), Some(401));
    let ch: Vec<_> = a.headers.get_all("WWW-Authenticate").collect();
    assert!(ch[0].contains("SHA-256") && ch[1].contains("MD5"));
    let reason = |e: &[AuditEvent]| match &e[0] {
        AuditEvent::AuthFailed { reason, .. } => *reason,
        other => panic!("{other:?}"),
    };
    assert_eq!(reason(&ea), reason(&eb));
}

#[test]
fn budget_ban_and_first_challenge_not_counted() {
    let t0 = Instant::now();
    let (mut g, d) = guard(t0, 16);
    let src: SocketAddr = "192.168.1.20:5060".parse().unwrap();
    // Many credential-less requests: always a challenge, never a ban.
    for _ in 0..50 {
        assert!(matches!(
            g.authenticate(t0, src, &register(None), store).0,
            Decision::Respond(_)
        ));
    }
    let nonce = d.nonce(t0, src.ip());
    let good = register(Some(answer(&nonce, "101", "right")));
    let bad = register(Some(answer(&nonce, "101", "wrong")));
    for _ in 0..3 {
        assert!(matches!(
            g.authenticate(t0, src, &bad, store).0,
            Decision::Respond(_)
        ));
    }
    // A correct answer in between resets nothing.
    assert_eq!(
        g.authenticate(t0, src, &good, store).0,
        Decision::Authenticated { user: "101".into() }
    );
    let (dec, ev) = g.authenticate(t0, src, &bad, store);
    assert_eq!(dec, Decision::Drop);
    assert!(ev.iter().any(|e| matches!(e, AuditEvent::Banned { .. })));
    // Banned: even the right password is dropped, other sources are not.
    assert_eq!(g.authenticate(t0, src, &good, store).0, Decision::Drop);
    let other: SocketAddr = "192.168.1.21:5060".parse().unwrap();
    assert!(matches!(
        g.authenticate(t0, other, &register(None), store).0,
        Decision::Respond(_)
    ));
    // After the ban the source is admitted again (with a fresh nonce).
    let later = t0 + Duration::from_secs(301);
    assert!(g.admit(later, src.ip()).0);
    let fresh = register(Some(answer(&d.nonce(later, src.ip()), "101", "right")));
    assert_eq!(
        g.authenticate(later, src, &fresh, store).0,
        Decision::Authenticated { user: "101".into() }
    );
}

#[test]
fn floods_are_clipped_per_window_without_a_ban() {
    let t0 = Instant::now();
    let (mut g, _) = guard(t0, 16);
    let ip: IpAddr = "192.168.1.30".parse().unwrap();
    let verdicts: Vec<_> = (0..15).map(|_| g.admit(t0, ip)).collect();
    assert!(verdicts[..10].iter().all(|v| v.0));
    assert_eq!(verdicts[10], (false, Some(AuditEvent::Flood { src: ip })));
    assert_eq!(verdicts[11], (false, None), "reported once per window");
    assert!(
        g.admit(t0, "192.168.1.31".parse().unwrap()).0,
        "others unaffected"
    );
    assert!(
        g.admit(t0 + Duration::from_secs(1), ip).0,
        "next window admits again"
    );
}

#[test]
fn outsiders_dropped_and_memory_bounded() {
    let t0 = Instant::now();
    let (mut g, d) = guard(t0, 8);
    let outsider: SocketAddr = "203.0.113.5:5060".parse().unwrap();
    let (dec, ev) = g.authenticate(t0, outsider, &register(None), store);
    assert_eq!(dec, Decision::Drop);
    assert_eq!(ev, vec![AuditEvent::NotAllowed { src: outsider.ip() }]);
    // One banned source, then a flood of failing IPv6 sources.
    let src: SocketAddr = "192.168.1.20:5060".parse().unwrap();
    let bad = register(Some(answer(&d.nonce(t0, src.ip()), "101", "wrong")));
    for _ in 0..4 {
        g.authenticate(t0, src, &bad, store);
    }
    for i in 0..100u32 {
        let a: SocketAddr = format!("[fd00:{:x}::1]:5060", i + 1).parse().unwrap();
        g.authenticate(t0, a, &bad, store);
        assert!(g.tracked() <= 8);
    }
    assert!(!g.admit(t0, src.ip()).0, "ban survives eviction pressure");
    // IPv6 addresses are keyed per address unless a prefix is set.
    let (a, b) = ("fd00:1::1".parse().unwrap(), "fd00:1::2".parse().unwrap());
    assert_ne!(g.key(a), g.key(b));
    assert_eq!(source_key(a, 64), source_key(b, 64));
    assert_ne!(source_key(a, 127), source_key(b, 127));
    assert_eq!(
        source_key(a, 0),
        source_key("2001:db8::1".parse().unwrap(), 0)
    );
    assert_eq!(
        source_key("::ffff:192.168.1.7".parse().unwrap(), 64),
        "192.168.1.7".parse::<IpAddr>().unwrap()
    );
}

#[test]
fn forged_answers_from_a_phones_address_never_ban_it() {
    let t0 = Instant::now();
    let (mut g, d) = guard(t0, 16);
    let phone: SocketAddr = "192.168.1.20:5060".parse().unwrap();
    // The attacker read the realm from a 401 but cannot receive the
    // phone's replies: forged nonces, garbage, nonces for its own address.
    let forged = "0000000000000000deadbeefdeadbeefdeadbeefdeadbeef";
    let theirs = d.nonce(t0, "192.168.1.66".parse().unwrap());
    let junk = [
        answer(forged, "101", "wrong"),
        answer(&theirs, "101", "wrong"),
        "Digest realm=\"voxgate\", nonce=\"x\"".to_string(),
        "Digest nonsense".to_string(),
    ];
    for i in 0..100 {
        let (dec, ev) = g.authenticate(t0, phone, &register(Some(junk[i % 4].clone())), store);
        assert!(
            matches!(dec, Decision::Respond(_)),
            "challenged, not dropped"
        );
        assert!(
            ev.iter()
                .all(|e| matches!(e, AuditEvent::AuthUnproven { .. })),
            "{ev:?}"
        );
    }
    let good = register(Some(answer(&d.nonce(t0, phone.ip()), "101", "right")));
    assert_eq!(
        g.authenticate(t0, phone, &good, store).0,
        Decision::Authenticated { user: "101".into() }
    );
    // A replay of that request is challenged again, not counted.
    for _ in 0..10 {
        let (dec, ev) = g.authenticate(t0, phone, &good, store);
        assert!(
            matches!(dec, Decision::Respond(ref r) if r.headers.get("WWW-Authenticate").is_some_and(|w| w.contains("stale=true")))
        );
        assert!(matches!(ev[..], [AuditEvent::Replayed { .. }]));
    }
    assert!(g.bans(t0).is_empty());
}

#[test]
fn one_ipv6_host_banned_leaves_its_neighbours_in_the_64_alone() {
    let t0 = Instant::now();
    let (mut g, d) = guard(t0, 16);
    let bad_host: SocketAddr = "[fd00:1::66]:5060".parse().unwrap();
    let phone: SocketAddr = "[fd00:1::20]:5060".parse().unwrap();
    let wrong = register(Some(answer(&d.nonce(t0, bad_host.ip()), "101", "wrong")));
    for _ in 0..4 {
        g.authenticate(t0, bad_host, &wrong, store);
    }
    assert!(!g.admit(t0, bad_host.ip()).0, "banned");
    assert_eq!(
        g.bans(t0),
        vec![(bad_host.ip(), t0 + Duration::from_secs(300))]
    );
    assert!(g.admit(t0, phone.ip()).0, "its neighbour is not");
    // Configured per /64 (an Internet-facing listener): one budget.
    let (mut g, _) = guard(t0, 16);
    g.cfg.ipv6_prefix = 64;
    for _ in 0..4 {
        g.authenticate(t0, bad_host, &wrong, store);
    }
    assert!(!g.admit(t0, phone.ip()).0);
}
