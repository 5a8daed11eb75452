//! Unit tests of `sip::auth`.
use super::*;

// RFC 7616 3.9.1.
const NONCE: &str = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v";
const CNONCE: &str = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ";

#[test]
fn rfc7616_vectors() {
    let ha1 = Ha1Pair::derive("Mufasa", "http-auth@example.org", "Circle of Life");
    let r = |alg, ha1: &str| {
        digest_response(
            alg,
            ha1,
            NONCE,
            "00000001",
            CNONCE,
            "auth",
            "GET",
            "/dir/index.html",
        )
    };
    assert_eq!(
        r(Algorithm::Md5, &ha1.md5),
        "8ca523f5e9506fed4657c9700eebdbec"
    );
    assert_eq!(
        r(Algorithm::Sha256, &ha1.sha256),
        "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"
    );
}

fn server(t0: Instant) -> DigestServer {
    DigestServer::new("voxgate", &[7; 32], t0, Duration::from_secs(60))
}

fn answer(srv: &DigestServer, nonce: &str, alg: Algorithm, password: &str, user: &str) -> String {
    answer_nc(srv, nonce, alg, password, user, "00000001")
}

fn answer_nc(
    srv: &DigestServer,
    nonce: &str,
    alg: Algorithm,
    password: &str,
    user: &str,
    nc: &str,
) -> String {
    let ha1 = Ha1Pair::derive(user, "voxgate", password);
    let resp = digest_response(
        alg,
        ha1.get(alg),
        nonce,
        nc,
        "abc",
        "auth",
        "REGISTER",
        "sip:box.lan",
    );
    format!(
        "Digest username=\"{user}\", realm=\"{}\", nonce=\"{nonce}\", uri=\"sip:box.lan\", response=\"{resp}\", algorithm={}, cnonce=\"abc\", qop=auth, nc={nc}",
        srv.realm(),
        alg.name()
    )
}

fn store(u: &str) -> Option<Ha1Pair> {
    (u == "101").then(|| Ha1Pair::derive("101", "voxgate", "s3cret"))
}

fn check(srv: &mut DigestServer, h: &str, now: Instant, src: IpAddr) -> AuthOutcome {
    let uri = SipUri::parse("sip:box.lan").unwrap();
    srv.verify(now, src, &Method::Register, &uri, std::iter::once(h), store)
}

#[test]
fn challenge_answer_cycle() {
    let t0 = Instant::now();
    let mut srv = server(t0);
    let src: IpAddr = "192.0.2.10".parse().unwrap();
    let uri = SipUri::parse("sip:box.lan").unwrap();
    let ch = srv.challenges(t0, src, false, 0);
    assert!(ch[0].contains("algorithm=SHA-256") && ch[1].contains("algorithm=MD5"));
    let nonce = srv.nonce(t0, src);
    assert!(ch[0].contains(&nonce));
    for (alg, nc) in [
        (Algorithm::Sha256, "00000001"),
        (Algorithm::Md5, "00000002"),
    ] {
        let ok = answer_nc(&srv, &nonce, alg, "s3cret", "101", nc);
        assert_eq!(
            check(&mut srv, &ok, t0, src),
            AuthOutcome::Ok { user: "101".into() }
        );
        // Expired nonce, right password: stale, not a failure.
        let later = t0 + Duration::from_secs(61);
        assert_eq!(
            check(&mut srv, &ok, later, src),
            AuthOutcome::Stale { user: "101".into() }
        );
        // Nonce issued to another address: stale (challenge again).
        assert!(matches!(
            check(&mut srv, &ok, t0, "192.0.2.11".parse().unwrap()),
            AuthOutcome::Stale { .. }
        ));
    }
    let wrong = answer(&srv, &nonce, Algorithm::Sha256, "guess", "101");
    let unknown = answer(&srv, &nonce, Algorithm::Sha256, "s3cret", "999");
    let bad = FailReason::BadCredentials;
    assert_eq!(
        check(&mut srv, &wrong, t0, src),
        AuthOutcome::Failed {
            user: "101".into(),
            reason: bad
        }
    );
    assert_eq!(
        check(&mut srv, &unknown, t0, src),
        AuthOutcome::Failed {
            user: "999".into(),
            reason: bad
        }
    );
    assert_eq!(
        srv.verify(t0, src, &Method::Register, &uri, std::iter::empty(), store),
        AuthOutcome::NoCredentials
    );
    // A digest for another URI, with our nonce, is a malformed failure.
    let other = answer(&srv, &nonce, Algorithm::Md5, "s3cret", "101")
        .replace("uri=\"sip:box.lan\"", "uri=\"sip:evil\"");
    assert!(matches!(
        check(&mut srv, &other, t0, src),
        AuthOutcome::Failed {
            reason: FailReason::Malformed,
            ..
        }
    ));
}

#[test]
fn only_answers_to_a_fresh_nonce_issued_to_the_source_are_failures() {
    let t0 = Instant::now();
    let mut srv = server(t0);
    let src: IpAddr = "192.0.2.10".parse().unwrap();
    let forger: IpAddr = "192.0.2.66".parse().unwrap();
    let unproven = |o: AuthOutcome| matches!(o, AuthOutcome::Unproven { .. });
    // Unparseable: no nonce at all.
    assert!(unproven(check(&mut srv, "Digest garbage", t0, src)));
    // A forged nonce with the right realm: wrong and malformed alike.
    let forged = "0000000000000000deadbeefdeadbeefdeadbeefdeadbeef";
    let wrong = answer(&srv, forged, Algorithm::Sha256, "guess", "101");
    assert!(unproven(check(&mut srv, &wrong, t0, src)));
    assert!(unproven(check(
        &mut srv,
        &wrong.replace("qop=auth", "qop=auth-int"),
        t0,
        src
    )));
    // Our nonce, but issued to another source (a spoofed copy).
    let theirs = srv.nonce(t0, forger);
    let wrong = answer(&srv, &theirs, Algorithm::Sha256, "guess", "101");
    assert!(unproven(check(&mut srv, &wrong, t0, src)));
    assert!(matches!(
        check(&mut srv, &wrong, t0, forger),
        AuthOutcome::Failed { .. }
    ));
    // Our nonce to this source, expired: not proof the sender hears us now.
    let old = srv.nonce(t0, src);
    let wrong = answer(&srv, &old, Algorithm::Sha256, "guess", "101");
    assert!(unproven(check(
        &mut srv,
        &wrong,
        t0 + Duration::from_secs(61),
        src
    )));
    assert!(matches!(
        check(&mut srv, &wrong, t0, src),
        AuthOutcome::Failed { .. }
    ));
}

#[test]
fn a_replayed_nonce_and_count_is_refused() {
    let t0 = Instant::now();
    let mut srv = server(t0);
    let src: IpAddr = "192.0.2.10".parse().unwrap();
    let nonce = srv.nonce(t0, src);
    let first = answer_nc(&srv, &nonce, Algorithm::Sha256, "s3cret", "101", "00000001");
    let ok = AuthOutcome::Ok { user: "101".into() };
    assert_eq!(check(&mut srv, &first, t0, src), ok);
    // The same request again (a captured copy): refused.
    assert_eq!(
        check(&mut srv, &first, t0 + Duration::from_secs(1), src),
        AuthOutcome::Replayed { user: "101".into() }
    );
    // The same nonce with the next count: the client's next request.
    let next = answer_nc(&srv, &nonce, Algorithm::Sha256, "s3cret", "101", "00000002");
    assert_eq!(check(&mut srv, &next, t0, src), ok);
    // A count that is not hex is malformed.
    let bad = answer_nc(&srv, &nonce, Algorithm::Sha256, "s3cret", "101", "0000000g");
    assert!(matches!(
        check(&mut srv, &bad, t0, src),
        AuthOutcome::Failed {
            reason: FailReason::Malformed,
            ..
        }
    ));
    assert_eq!(srv.nonce_ttl(), Duration::from_secs(60));
}

#[test]
fn passwords_are_strong_and_distinct() {
    let rng = rand::SystemRandom::new();
    let a = generate_password(&rng).unwrap();
    let b = generate_password(&rng).unwrap();
    assert_eq!(a.len(), 22);
    assert!(a.bytes().all(|c| PASSWORD_ALPHABET.contains(&c)));
    assert_ne!(a, b);
    assert_eq!(
        format!("{:?}", Ha1Pair::derive("a", "b", "c")),
        "Ha1Pair(<redacted>)"
    );
}
