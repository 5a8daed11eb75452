use super::*;

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vg-servercert-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn binding(d: &Path) -> MachineBinding {
    let p = d.join("machine-id");
    std::fs::write(&p, "0123456789abcdef0123456789abcdef\n").unwrap();
    MachineBinding {
        machine_id: p,
        serial: None,
    }
}

fn load(d: &Path, b: &MachineBinding, lifetime: Duration) -> Arc<ServerCert> {
    let signer: Arc<dyn crate::relay::signer::FleetSigner> =
        crate::relay::authority::signer(d, b).unwrap();
    ServerCert::load(Settings {
        state_dir: d,
        binding: b,
        key: ca::load_relay_key(d, b).unwrap(),
        server_name: "relay.test",
        lifetime,
        signer,
        registry: None,
    })
    .unwrap()
}

#[test]
fn due_at_two_thirds_of_the_lifetime_without_the_backdate() {
    let s = Served {
        serial: String::new(),
        issued: issued_at(1_000 - 300, 1_030),
        not_after: 1_030,
    };
    assert_eq!(s.issued, 1_000);
    assert_eq!(s.due(), 1_020);
    assert_eq!(s.warn_from(), 1_020, "a short certificate warns once due");
    let year = Served {
        serial: String::new(),
        issued: 0,
        not_after: 365 * 86_400,
    };
    assert_eq!(year.due(), 243 * 86_400 + 8 * 3_600);
    assert_eq!(year.warn_from(), 351 * 86_400);
    assert_eq!(
        issued_at(500, 100),
        100,
        "an expired certificate is due at once"
    );
    assert_eq!(human(30), "30 s");
    assert_eq!(human(13 * 86_400 + 5), "13 days");
}

#[test]
fn renewal_stores_a_fresh_key_and_a_new_serial_that_chain_to_the_fleet_ca() {
    let d = dir("renew");
    let b = binding(&d);
    ca::init(
        &d,
        "relay.test",
        &b,
        Duration::from_secs(30),
        crate::relay::authority::RootKeyOut::Keep,
    )
    .unwrap();
    let key0 = std::fs::read(d.join(ca::RELAY_KEY_SEALED)).unwrap();
    let cert = load(&d, &b, Duration::from_secs(30));
    let before = cert.served();
    assert!((before.due() - now() - 20).abs() <= 2, "{before:?}");
    let held = cert.holder().get();
    let r = cert.renew().unwrap();
    assert_eq!(r.previous, before);
    assert_ne!(r.served.serial, before.serial);
    assert_eq!(cert.served(), r.served);
    let now_held = cert.holder().get();
    assert!(!Arc::ptr_eq(&held, &now_held), "holder not swapped");
    assert_ne!(
        held.key.public_key().unwrap().as_ref(),
        now_held.key.public_key().unwrap().as_ref(),
        "no fresh key"
    );
    let ca_certs = files::read_certs(&d.join(ca::CA_CERT)).unwrap();
    tls::verify_relay_chain(&ca_certs, &now_held.cert, "relay.test").unwrap();
    assert_eq!(
        now_held.cert.len(),
        3,
        "leaf, issuing CA, root: a device pinning the root finds it"
    );
    assert_eq!(now_held.cert[2], ca_certs[0], "the chain carries the root");
    // On disk: the new pair, sealed, nothing left over.
    assert_ne!(std::fs::read(d.join(ca::RELAY_KEY_SEALED)).unwrap(), key0);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(d.join(ca::RELAY_KEY_SEALED))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(!d.join(ca::RELAY_CERT_PENDING).exists());
    let again = load(&d, &b, Duration::from_secs(30));
    assert_eq!(
        again.served(),
        r.served,
        "a restart serves the renewed pair"
    );
    assert_eq!(again.holder().get().cert, now_held.cert);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn a_renewal_stopped_between_the_renames_is_finished_at_load() {
    let d = dir("interrupted");
    let b = binding(&d);
    ca::init(
        &d,
        "relay.test",
        &b,
        Duration::from_secs(3_600),
        crate::relay::authority::RootKeyOut::Keep,
    )
    .unwrap();
    let cert = load(&d, &b, Duration::from_secs(3_600));
    let old_pem = std::fs::read(d.join(ca::RELAY_CERT)).unwrap();
    let r = cert.renew().unwrap();
    let new_pem = std::fs::read(d.join(ca::RELAY_CERT)).unwrap();
    // The key replaced, the certificate still in relay.pem.new.
    std::fs::write(d.join(ca::RELAY_CERT_PENDING), &new_pem).unwrap();
    std::fs::write(d.join(ca::RELAY_CERT), &old_pem).unwrap();
    let again = load(&d, &b, Duration::from_secs(3_600));
    assert_eq!(again.served(), r.served);
    assert_eq!(std::fs::read(d.join(ca::RELAY_CERT)).unwrap(), new_pem);
    assert!(!d.join(ca::RELAY_CERT_PENDING).exists());

    // Stopped before the key was replaced: the stale pending
    // certificate is dropped and the pair on disk is served.
    std::fs::write(d.join(ca::RELAY_CERT_PENDING), &old_pem).unwrap();
    let again = load(&d, &b, Duration::from_secs(3_600));
    assert_eq!(again.served(), r.served);
    assert!(!d.join(ca::RELAY_CERT_PENDING).exists());

    // A certificate for another key, and nothing pending: refused.
    std::fs::write(d.join(ca::RELAY_CERT), &old_pem).unwrap();
    let signer: Arc<dyn crate::relay::signer::FleetSigner> =
        crate::relay::authority::signer(&d, &b).unwrap();
    let e = ServerCert::load(Settings {
        state_dir: &d,
        binding: &b,
        key: ca::load_relay_key(&d, &b).unwrap(),
        server_name: "relay.test",
        lifetime: Duration::from_secs(3_600),
        signer,
        registry: None,
    })
    .unwrap_err();
    assert!(matches!(e, ServerCertError::Mismatch { .. }), "{e}");
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn a_certificate_devices_would_refuse_is_not_served() {
    let d = dir("foreign");
    let b = binding(&d);
    ca::init(
        &d,
        "relay.test",
        &b,
        Duration::from_secs(3_600),
        crate::relay::authority::RootKeyOut::Keep,
    )
    .unwrap();
    // Another fleet's CA: what it signs does not chain to this one.
    let other = d.join("other");
    ca::init(
        &other,
        "relay.test",
        &b,
        Duration::from_secs(3_600),
        crate::relay::authority::RootKeyOut::Keep,
    )
    .unwrap();
    let signer: Arc<dyn crate::relay::signer::FleetSigner> =
        crate::relay::authority::signer(&other, &b).unwrap();
    let cert = ServerCert::load(Settings {
        state_dir: &d,
        binding: &b,
        key: ca::load_relay_key(&d, &b).unwrap(),
        server_name: "relay.test",
        lifetime: Duration::from_secs(3_600),
        signer,
        registry: None,
    })
    .unwrap();
    let before = cert.served();
    let pem0 = std::fs::read(d.join(ca::RELAY_CERT)).unwrap();
    let e = cert.renew().unwrap_err();
    assert!(matches!(e, ServerCertError::Tls(_)), "{e}");
    assert_eq!(cert.served(), before);
    assert_eq!(std::fs::read(d.join(ca::RELAY_CERT)).unwrap(), pem0);
    std::fs::remove_dir_all(&d).unwrap();
}

#[tokio::test]
async fn an_expired_certificate_is_renewed_at_the_first_step_and_failures_back_off() {
    let d = dir("step");
    let b = binding(&d);
    ca::init(
        &d,
        "relay.test",
        &b,
        Duration::from_secs(10),
        crate::relay::authority::RootKeyOut::Keep,
    )
    .unwrap();
    let cert = load(&d, &b, Duration::from_secs(3_600));
    // Pretend it is long past: served notAfter in the past.
    *cert.served.lock().unwrap() = Served {
        serial: "00".into(),
        issued: now() - 100,
        not_after: now() - 50,
    };
    let gauge = Gauge::default();
    let mut st = Upkeep::default();
    cert.step(&mut st, &gauge).await;
    let s = cert.served();
    assert_ne!(s.serial, "00");
    assert!((gauge.get() - 3_600.0).abs() <= 2.0, "{}", gauge.get());
    assert_eq!(
        st.last_warned, None,
        "a renewed certificate is not warned about"
    );

    // Renewal fails (the state directory is gone): retried with backoff,
    // the expiry still reported, the warning once.
    *cert.served.lock().unwrap() = Served {
        serial: "01".into(),
        issued: now() - 100,
        not_after: now() + 10,
    };
    std::fs::remove_dir_all(&d).unwrap();
    cert.step(&mut st, &gauge).await;
    assert_eq!(cert.served().serial, "01");
    assert!(st.retry_at >= now() + MIN_BACKOFF_S - 1);
    assert_eq!(st.backoff, 2 * MIN_BACKOFF_S);
    assert!(st.last_warned.is_some());
    assert!(gauge.get() <= 10.0 && gauge.get() >= 8.0, "{}", gauge.get());
    let retry = st.retry_at;
    cert.step(&mut st, &gauge).await;
    assert_eq!(st.retry_at, retry, "no attempt before the retry time");
}
