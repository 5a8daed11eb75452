//! Enrollment on the relay, against an in-memory registry and a CA made
//! for the test: the repeat of an enrollment (issue 16).

use super::*;
use crate::relay::ca::{IssuingCa, LocalCa};
use crate::relay::trust::TrustTable;

fn enroller() -> (Arc<Enroller>, Arc<Mutex<Registry>>) {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "test fleet CA");
    let key = rcgen::KeyPair::generate().unwrap();
    let ca_pem = params.self_signed(&key).unwrap().pem();
    let ca = IssuingCa::new(LocalCa::new(&ca_pem, key).unwrap());
    let registry = Arc::new(Mutex::new(Registry::in_memory().unwrap()));
    let e = Enroller::new(
        registry.clone(),
        Arc::new(TrustTable::new(Duration::from_secs(300))),
        ca,
        Duration::from_secs(30 * 86_400),
        EnrollLimits {
            ipv6_prefix: 64,
            renewals_per_day: 10,
        },
    );
    (Arc::new(e), registry)
}

/// A CSR for `key` naming `device`, base64.
fn csr(key: &rcgen::KeyPair, device: &str) -> String {
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(rcgen::DnType::CommonName, device);
    B64.encode(p.serialize_request(key).unwrap().der())
}

fn token(r: &Mutex<Registry>, device: &str, ttl: u64) -> String {
    r.lock()
        .unwrap()
        .create_token(device, false, Duration::from_secs(ttl), "")
        .unwrap()
        .secret
        .expose()
        .to_string()
}

fn events(r: &Mutex<Registry>) -> Vec<(String, String)> {
    r.lock()
        .unwrap()
        .audit_events()
        .unwrap()
        .into_iter()
        .map(|e| (e.0, e.3))
        .collect()
}

#[test]
fn the_same_token_and_key_again_get_the_same_certificate() {
    let (e, r) = enroller();
    let tok = token(&r, "box-1", 3600);
    let key = rcgen::KeyPair::generate().unwrap();
    let (first, not_after) = e
        .issue(&tok, "box-1", &csr(&key, "box-1"), "10.0.0.1")
        .unwrap();
    // The setup stopped before it kept the certificate: it asks again with
    // the same key (a fresh CSR, same key) and the same token.
    let (again, again_after) = e
        .issue(&tok, "box-1", &csr(&key, "box-1"), "10.0.0.1")
        .unwrap();
    assert_eq!(again, first, "the same certificate, byte for byte");
    assert_eq!(again_after, not_after);
    let ev = events(&r);
    assert!(ev.iter().any(|(k, _)| k == "enroll_repeated"), "{ev:?}");
    let issued = ev.iter().filter(|(k, _)| k == "enrolled").count();
    assert_eq!(issued, 1, "no second certificate was issued: {ev:?}");
}

#[test]
fn the_same_token_with_another_key_stays_refused_as_misuse() {
    let (e, r) = enroller();
    let tok = token(&r, "box-2", 3600);
    let key = rcgen::KeyPair::generate().unwrap();
    e.issue(&tok, "box-2", &csr(&key, "box-2"), "10.0.0.1")
        .unwrap();
    let thief = rcgen::KeyPair::generate().unwrap();
    let err = e
        .issue(&tok, "box-2", &csr(&thief, "box-2"), "10.0.0.9")
        .unwrap_err();
    assert!(
        matches!(err, EnrollError::Token(TokenRejection::OtherKey)),
        "{err}"
    );
    // Another device id with the same token: refused as before.
    let err = e
        .issue(&tok, "box-3", &csr(&key, "box-3"), "10.0.0.1")
        .unwrap_err();
    assert!(matches!(err, EnrollError::Token(_)), "{err}");
}

#[test]
fn no_repeat_after_the_token_expired_or_the_device_renewed() {
    let (e, r) = enroller();
    let tok = token(&r, "box-4", 3600);
    let key = rcgen::KeyPair::generate().unwrap();
    let (der, _) = e
        .issue(&tok, "box-4", &csr(&key, "box-4"), "10.0.0.1")
        .unwrap();
    let spki = crate::pki::name::cert_facts(&der).unwrap().spki;
    let reg = r.lock().unwrap();
    // Past the token's lifetime: the repeat is over.
    assert_eq!(
        reg.repeat(&tok, "box-4", &spki, now() + 3601).unwrap(),
        Repeat::No
    );
    assert!(matches!(
        reg.repeat(&tok, "box-4", &spki, now()).unwrap(),
        Repeat::Same { .. }
    ));
    drop(reg);
    // A renewal made another certificate current: no repeat of the old one.
    let serial = crate::pki::name::cert_facts(&der).unwrap().serial;
    let next = rcgen::KeyPair::generate().unwrap();
    e.renew("box-4", &serial, &csr(&next, "box-4"), "10.0.0.1")
        .unwrap();
    let err = e
        .issue(&tok, "box-4", &csr(&key, "box-4"), "10.0.0.1")
        .unwrap_err();
    assert!(
        matches!(err, EnrollError::Token(TokenRejection::Used)),
        "{err}"
    );
}
