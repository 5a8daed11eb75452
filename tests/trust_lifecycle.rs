//! The fleet's trust lifecycle against a running relay, each test replaying
//! an attack the review found and showing that it now fails:
//!
//! - a token is bound to one device id: another id's token, a second token
//!   for an enrolled id, and a withdrawn token are refused;
//! - a renewal supersedes the old certificate: a copy of the old key and
//!   certificate cannot renew, and is refused once the grace is over, while
//!   the real box's session carries on;
//! - a certificate minted with the issuing key for a key the registry does
//!   not know is refused, with or without the device's real serial;
//! - a stolen box is revoked, and its replacement is enrolled under the
//!   same id with a re-enrollment token, which replaces every earlier
//!   certificate (the stolen copy stays refused) and undoes the
//!   revocation.

use std::path::Path;
use std::time::Duration;
use voxgate_testkit::cmd::both as text;
use voxgate_testkit::enroll::{
    Setup, audit, create_token, reenroll_token, secret_file, token, token_command,
};
use voxgate_testkit::lab::Lab;
use voxgate_testkit::session::{Session, runtime};

const GRACE_S: u64 = 3;

fn lab(name: &str) -> Lab {
    Lab::new(
        name,
        &format!("mode = \"none\"\n[enrollment]\nsuperseded_grace_s = {GRACE_S}"),
    )
}

/// A copy of a device directory (a stolen SD card, a backup).
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for f in ["device.pem", "device.key", "ca.pem"] {
        std::fs::copy(from.join(f), to.join(f)).unwrap();
    }
}

type AuditRow = (String, String, String, String);

/// The first audit row matching `f`, waited for (3 s at most).
fn wait_audit(lab: &Lab, f: impl Fn(&AuditRow) -> bool) -> AuditRow {
    let t0 = std::time::Instant::now();
    loop {
        let log = audit(lab);
        if let Some(row) = log.iter().find(|e| f(e)) {
            return row.clone();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(3),
            "not audited: {log:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn dev_cert(lab: &Lab, id: &str) -> std::path::PathBuf {
    lab.gateway_config(id, lab.quic_port, "");
    lab.dir.join(id)
}

#[test]
fn tokens_are_bound_to_one_device_id() {
    let lab = lab("trust-tokens");
    let mut relay = lab.start_relay();
    let t5 = token(&lab, "shop-5", Some(3600));
    // A second token for an id with an unused one is refused.
    let second = create_token(&lab, "shop-5", None);
    assert!(!second.status.success());
    assert!(
        text(&second).contains("already has an unused token"),
        "{}",
        text(&second)
    );
    let t6 = token(&lab, "shop-6", Some(3600));

    // The attack: a token leaked for shop-6 used to clone shop-5.
    let (o, _) = Setup::new(&lab, "shop-5")
        .token_file(&secret_file(&lab.dir, "t6", &t6))
        .output();
    assert!(!o.status.success(), "another id's token enrolled shop-5");
    assert!(
        audit(&lab)
            .iter()
            .any(|e| e.0 == "enroll_rejected" && e.2 == "shop-5" && e.3.contains("another device")),
        "{:?}",
        audit(&lab)
    );
    // The right token works, once.
    Setup::new(&lab, "shop-5")
        .token_file(&secret_file(&lab.dir, "t5", &t5))
        .run();
    // An enrolled id gets no plain token...
    let again = create_token(&lab, "shop-5", None);
    assert!(!again.status.success());
    assert!(text(&again).contains("--reenroll"), "{}", text(&again));
    // ...and the spent token cannot enroll it a second time.
    let (o, _) = Setup::new(&lab, "shop-5")
        .token_file(&secret_file(&lab.dir, "t5b", &t5))
        .dir(&lab.dir.join("shop-5-clone"))
        .output();
    assert!(!o.status.success(), "a spent token enrolled a second box");

    // The list shows ids, devices and states, never a secret.
    let list = lab.relay_cmd(&["token", "list", "--all"]);
    let listed = text(&list);
    assert!(list.status.success(), "{listed}");
    assert!(!listed.contains(&t5) && !listed.contains(&t6), "{listed}");
    assert!(listed.contains("used by shop-5"), "{listed}");
    assert!(
        listed.contains("shop-6") && listed.contains("unused"),
        "{listed}"
    );

    // A withdrawn token is refused.
    let rv = lab.relay_cmd(&["token", "revoke", "shop-6"]);
    assert!(rv.status.success(), "{}", text(&rv));
    let (o, _) = Setup::new(&lab, "shop-6")
        .token_file(&secret_file(&lab.dir, "t6b", &t6))
        .output();
    assert!(!o.status.success(), "a revoked token enrolled");
    let log = audit(&lab);
    assert!(
        log.iter()
            .any(|e| e.0 == "enroll_rejected" && e.3 == "token revoked"),
        "{log:?}"
    );
    assert!(
        log.iter()
            .any(|e| e.0 == "token_revoked" && e.2 == "shop-6")
    );
    assert!(!relay.log_text().contains(&t5), "token in the relay log");
    relay.stop();
}

#[test]
fn a_copied_key_cannot_renew_and_is_refused_after_the_grace() {
    let lab = lab("trust-renew");
    let real = dev_cert(&lab, "gw-r");
    let mut relay = lab.start_relay();
    let copy = lab.dir.join("gw-r-copy");
    copy_dir(&real, &copy);
    let rt = runtime();
    rt.block_on(async {
        // The real box renews over its live session.
        let mut box_session = Session::open(&lab, &real, "gw-r").await.unwrap();
        let (cert, key) = box_session.renew().await.expect("the real box renews");
        let renewed = lab.dir.join("gw-r-new");
        std::fs::create_dir_all(&renewed).unwrap();
        std::fs::write(renewed.join("device.pem"), cert).unwrap();
        secret_file(&renewed, "device.key", &key);
        std::fs::copy(real.join("ca.pem"), renewed.join("ca.pem")).unwrap();

        // Within the grace the copy still connects (a renewal in flight
        // looks the same), but it cannot renew: only the current
        // certificate may.
        let mut clone = Session::open(&lab, &copy, "gw-r")
            .await
            .expect("within the grace");
        let refused = clone.renew().await.expect_err("the copy renewed");
        assert!(refused.contains("renew_refused"), "{refused}");
        // Once the grace is over the relay closes the copy's session and
        // refuses its handshakes; the real box's session (now standing
        // for its new certificate) carries on.
        let closed = clone
            .closed_within(Duration::from_secs(GRACE_S + 3))
            .await
            .expect("the copy's session was not closed after the grace");
        assert!(closed.contains("superseded"), "{closed}");
        let e = Session::open(&lab, &copy, "gw-r")
            .await
            .err()
            .expect("the copy connected after the grace");
        assert!(e.contains("revoked") || e.contains("superseded"), "{e}");
        assert!(box_session.conn.close_reason().is_none(), "real box cut");
        // The renewed pair works, and renews again.
        let mut next = Session::open(&lab, &renewed, "gw-r").await.unwrap();
        next.renew().await.expect("the renewed pair renews");
    });
    let log = audit(&lab);
    assert!(
        log.iter().any(|e| e.0 == "renew_rejected"
            && e.2 == "gw-r"
            && e.3.contains("not the device's current certificate")),
        "{log:?}"
    );
    // Refused handshakes reach the audit log within the relay's next
    // half-second tick.
    let refused = wait_audit(&lab, |e| e.0 == "handshake_refused" && e.2 == "gw-r");
    assert!(refused.3.contains("superseded"), "{refused:?}");
    assert_eq!(refused.1, "127.0.0.1", "where the copy connected from");
    relay.stop();
}

#[test]
fn a_certificate_minted_with_the_issuing_key_for_another_key_is_refused() {
    let lab = lab("trust-mint");
    let real = dev_cert(&lab, "gw-m");
    let mut relay = lab.start_relay();
    let rt = runtime();
    rt.block_on(async {
        Session::open(&lab, &real, "gw-m")
            .await
            .expect("the real certificate");
    });
    // The attacker holds the issuing key (read here the way the relay
    // reads it) and mints certificates naming gw-m for a key of their own.
    let cfg = voxgate::config::RelayConfig::load(&lab.dir.join("relay.toml")).unwrap();
    let state = lab.dir.join("relay");
    let signer = voxgate::relay::authority::signer(&state, &cfg.ca_binding).unwrap();
    let ca = signer.current();
    let issuer = ca.issuer();
    let ca_pem = std::fs::read_to_string(state.join("ca.pem")).unwrap();
    let real_serial = voxgate_testkit::enroll::cert_serial(&real.join("device.pem"));
    let mint = |name: &str, serial: Option<&str>| {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, "gw-m");
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        if let Some(s) = serial {
            let bytes: Vec<u8> = (0..s.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
                .collect();
            p.serial_number = Some(rcgen::SerialNumber::from_slice(&bytes));
        }
        let cert = p.signed_by(&key, issuer).unwrap();
        let dir = lab.dir.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("device.pem"), cert.pem()).unwrap();
        secret_file(&dir, "device.key", &key.serialize_pem());
        std::fs::write(dir.join("ca.pem"), &ca_pem).unwrap();
        dir
    };
    let fresh = mint("mint-fresh", None);
    let same_serial = mint("mint-serial", Some(&real_serial));
    rt.block_on(async {
        for dir in [&fresh, &same_serial] {
            let e = Session::open(&lab, dir, "gw-m")
                .await
                .err()
                .unwrap_or_else(|| panic!("{} was admitted", dir.display()));
            assert!(e.contains("revoked"), "refused in the handshake: {e}");
        }
        // The real box is untouched.
        Session::open(&lab, &real, "gw-m").await.unwrap();
    });
    // The relay audits the refusal, with the reason (one line per device
    // per minute: the first of the two).
    let refused = wait_audit(&lab, |e| e.0 == "handshake_refused" && e.2 == "gw-m");
    assert!(
        refused.3.contains("superseded or replaced") || refused.3.contains("registered key"),
        "{refused:?}"
    );
    assert_eq!(
        refused.1, "127.0.0.1",
        "where the minted certificate came from"
    );
    relay.stop();
}

#[test]
fn a_stolen_box_is_revoked_and_replaced_under_the_same_id() {
    let lab = lab("trust-stolen");
    let mut relay = lab.start_relay();
    let old_cfg = Setup::new(&lab, "shop-9").run();
    let rt = runtime();
    // The box is enrolled with a sealed key; the thief has the whole SD
    // card (and the machine id: the box itself). Revoke it: its live
    // session is cut and its handshakes refused.
    let live = rt.block_on(Session::open_enrolled(&lab, &old_cfg, "shop-9"));
    let live = live.expect("the box connects");
    let rv = lab.relay_cmd(&["revoke", "shop-9"]);
    assert!(rv.status.success(), "{}", text(&rv));
    rt.block_on(async {
        let cut = live.closed_within(Duration::from_secs(2)).await;
        assert!(cut.is_some_and(|r| r.contains("revoked")), "not cut");
        let e = Session::open_enrolled(&lab, &old_cfg, "shop-9").await.err();
        assert!(e.as_ref().is_some_and(|e| e.contains("revoked")), "{e:?}");
    });
    // A plain token cannot bring the id back; a re-enrollment token can.
    let plain = token_command(&lab, "shop-9", None, false);
    assert!(!plain.status.success(), "{}", text(&plain));
    let re = reenroll_token(&lab, "shop-9");
    let old_serial = voxgate_testkit::enroll::cert_serial(&lab.dir.join("shop-9/device.pem"));
    Setup::new(&lab, "shop-9")
        .token_file(&secret_file(&lab.dir, "re", &re))
        .dir(&lab.dir.join("shop-9-new"))
        .config_out(&lab.dir.join("shop-9-new.toml"))
        .run();
    let new_serial = voxgate_testkit::enroll::cert_serial(&lab.dir.join("shop-9-new/device.pem"));
    assert_ne!(old_serial, new_serial);
    // The replacement connects; the stolen box stays refused (its
    // certificate was replaced, not just revoked).
    rt.block_on(async {
        let new_cfg = lab.dir.join("shop-9-new.toml");
        Session::open_enrolled(&lab, &new_cfg, "shop-9")
            .await
            .expect("the replacement connects");
        let e = Session::open_enrolled(&lab, &old_cfg, "shop-9").await.err();
        assert!(
            e.is_some_and(|e| e.contains("revoked")),
            "the stolen box is back"
        );
    });
    let devices = text(&lab.relay_cmd(&["devices"]));
    assert!(
        devices.contains("shop-9") && devices.contains(&new_serial) && !devices.contains("REVOKED"),
        "{devices}"
    );
    let log = audit(&lab);
    assert!(
        log.iter()
            .any(|e| e.0 == "reenrolled" && e.2 == "shop-9" && e.3.contains("revocation undone")),
        "{log:?}"
    );
    relay.stop();
}
