#![no_main]
//! Digest `Authorization` values: parsed and checked (nonce, count, URI,
//! response) without panicking; an answer is never accepted twice (the
//! (nonce, nc) replay table), and garbage is never a counted failure
//! unless it carries a nonce the server issued to the source.
use libfuzzer_sys::fuzz_target;
use std::net::IpAddr;
use std::time::{Duration, Instant};
use voxgate::sip::auth::{AuthOutcome, Credentials, DigestServer, Ha1Pair};
use voxgate::sip::{Method, SipUri};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = Credentials::parse(text);
    let t0 = Instant::now();
    let mut srv = DigestServer::new("voxgate", &[3; 32], t0, Duration::from_secs(60));
    let src: IpAddr = "192.0.2.1".parse().unwrap();
    let uri = SipUri::parse("sip:box.lan").unwrap();
    let store = |u: &str| (u == "101").then(|| Ha1Pair::derive("101", "voxgate", "pw"));
    // The nonce the server issues (salt 0) may be spliced in by the fuzzer.
    let text = text.replace("NONCE", &srv.nonce(t0, src));
    let first = srv.verify(t0, src, &Method::Register, &uri, std::iter::once(text.as_str()), store);
    let again = srv.verify(t0, src, &Method::Register, &uri, std::iter::once(text.as_str()), store);
    if matches!(first, AuthOutcome::Ok { .. }) {
        assert!(matches!(again, AuthOutcome::Replayed { .. }), "{again:?}");
    }
    // From another source nothing in it was issued to that source.
    let other: IpAddr = "192.0.2.2".parse().unwrap();
    let elsewhere = srv.verify(t0, other, &Method::Register, &uri, std::iter::once(text.as_str()), store);
    assert!(!matches!(elsewhere, AuthOutcome::Failed { .. } | AuthOutcome::Ok { .. }), "{elsewhere:?}");
});
