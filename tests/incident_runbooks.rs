//! Every runbook in docs/INCIDENT.md, run end to end: the test extracts the
//! blocks marked `runbook=NAME` from the document and runs them with bash,
//! in order, against a running relay and real devices, then checks that
//! the incident is over (the stolen box refused within a second and its
//! replacement enrolled under the same id, the leaked token useless).
//!
//! `where=box` blocks run as on another box: `voxgate` on their PATH is a
//! wrapper that gives `voxgate setup` this lab's key directory, machine id
//! and config path (what a real box has at the default places); every other
//! command is the real binary, unchanged.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};
use voxgate_testkit::enroll::{Setup, audit, secret_file, token};
use voxgate_testkit::lab::Lab;
use voxgate_testkit::runbook::{Runner, runbook};
use voxgate_testkit::session::{Session, runtime};

/// A box enrolled with `voxgate setup` (sealed-file key) running `voxgate
/// run` without audio (the `null` device): its process and metrics address.
fn sealed_gateway(lab: &Lab, id: &str) -> (voxgate_testkit::lab::Proc, std::net::SocketAddr) {
    let (cfg, m) = voxgate_testkit::enroll::sealed_gateway_config(lab, id, "null");
    (lab.start_gateway(&cfg, &[]), m)
}

#[test]
fn stolen_box() {
    let lab = Lab::new("runbook-stolen", "mode = \"none\"");
    let mut relay = lab.start_relay();
    let device = "shop-12";
    let stolen_cfg = Setup::new(&lab, device).run();
    let replacement = lab.dir.join("replacement");
    let runner = Runner::new(&lab, device, &replacement);
    let blocks = runbook("stolen-box");
    assert_eq!(
        blocks.iter().map(|b| b.place.as_str()).collect::<Vec<_>>(),
        ["relay", "box", "relay"]
    );
    let rt = runtime();
    let live = rt
        .block_on(Session::open_enrolled(&lab, &stolen_cfg, device))
        .expect("the stolen box is online");
    // The first block cuts it off: within a second.
    let t0 = Instant::now();
    let cut = std::thread::scope(|s| {
        let waiter = s.spawn(|| {
            rt.block_on(live.closed_within(Duration::from_secs(5)))
                .map(|why| (t0.elapsed(), why))
        });
        let out = runner.run(&blocks[0]);
        let audit_text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(audit_text.contains("device_revoked"), "{audit_text}");
        waiter.join().unwrap()
    });
    let (after, why) = cut.expect("the stolen box's session stayed open");
    println!("stolen box cut after {after:?}: {why}");
    assert!(after < Duration::from_millis(1_200), "took {after:?}");
    assert!(why.contains("revoked"), "{why}");
    // The replacement enrolls under the same id; the relay lists it.
    runner.run(&blocks[1]);
    let listed = runner.run(&blocks[2]);
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    let line = listed
        .lines()
        .find(|l| l.starts_with(device))
        .unwrap_or_else(|| panic!("{listed}"));
    assert!(line.contains("active"), "{line}");
    rt.block_on(async {
        Session::open_enrolled(&lab, &replacement.with_extension("toml"), device)
            .await
            .expect("the replacement connects");
        let e = Session::open_enrolled(&lab, &stolen_cfg, device)
            .await
            .err()
            .expect("the stolen box connected again");
        assert!(e.contains("revoked"), "{e}");
    });
    let log = audit(&lab);
    assert!(
        log.iter()
            .any(|e| e.0 == "reenrolled" && e.2 == device && e.3.contains("revocation undone")),
        "{log:?}"
    );
    relay.stop();
}

#[test]
fn leaked_token() {
    let lab = Lab::new("runbook-token", "mode = \"none\"");
    let mut relay = lab.start_relay();
    let device = "shop-3";
    let leaked = token(&lab, device, Some(3600));
    let real_box = lab.dir.join("real-box");
    let runner = Runner::new(&lab, device, &real_box);
    for block in runbook("leaked-token") {
        assert_eq!(block.place, "relay");
        let out = runner.run(&block);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(!text.contains(&leaked), "a secret in the runbook's output");
    }
    // The leaked token enrolls nothing.
    let (o, _) = Setup::new(&lab, device)
        .token_file(&secret_file(&lab.dir, "leaked", &leaked))
        .dir(&lab.dir.join("attacker"))
        .config_out(&lab.dir.join("attacker.toml"))
        .output();
    assert!(!o.status.success(), "the leaked token enrolled a box");
    // The new one, from the runbook's token file, does.
    let new_token = lab.dir.join("runbook.token");
    assert_eq!(
        std::fs::metadata(&new_token).unwrap().permissions().mode() & 0o777,
        0o600
    );
    Setup::new(&lab, device).token_file(&new_token).run();
    let log = audit(&lab);
    assert!(
        log.iter()
            .any(|e| e.0 == "enroll_rejected" && e.2 == device && e.3 == "token revoked"),
        "{log:?}"
    );
    assert!(log.iter().any(|e| e.0 == "token_revoked" && e.2 == device));
    relay.stop();
}

#[test]
fn leaked_issuing_key() {
    let lab = Lab::new(
        "runbook-issuing",
        "mode = \"none\"\n[enrollment]\ncertificate_lifetime_s = 86400",
    );
    // As on a production relay: the root key is in a file off the machine.
    let pass = secret_file(&lab.dir, "root.pass", "correct horse battery staple");
    let root_key = lab.dir.join("root.key.enc");
    let o = std::process::Command::new(voxgate_testkit::lab::bin())
        .args(["relay", "ca", "export-root", "--config"])
        .arg(lab.dir.join("relay.toml"))
        .arg("--out")
        .arg(&root_key)
        .arg("--passphrase-file")
        .arg(&pass)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // An offline-at-rotation device (a development key: it cannot renew).
    lab.gateway_config("gw-offline", lab.quic_port, "");
    let mut relay = lab.start_relay();
    // A box that renews over its session.
    let (mut gw, m) = sealed_gateway(&lab, "gw-online");
    voxgate_testkit::lab::wait_for(Duration::from_secs(20), "connected", || {
        gw.assert_running();
        voxgate_testkit::lab::metric(m, "voxgate_relay_connected") == 1.0
    });
    let rt = runtime();
    let offline = rt
        .block_on(Session::open(
            &lab,
            &lab.dir.join("gw-offline"),
            "gw-offline",
        ))
        .expect("the leaked CA's certificates work before the rotation");
    let serial0 = voxgate_testkit::enroll::cert_serial(&lab.dir.join("gw-online/device.pem"));

    let mut runner = Runner::new(&lab, "gw-online", &lab.dir.join("box"));
    runner.set("ROOT_KEY", &root_key.display().to_string());
    runner.set("PASSPHRASE_FILE", &pass.display().to_string());
    runner.set("RETIRE_AFTER", "8s");
    let blocks = runbook("issuing-key");
    let t0 = Instant::now();
    let status = runner.run(&blocks[0]);
    let status = String::from_utf8_lossy(&status.stdout).into_owned();
    assert!(
        status.contains("signing") && status.contains("accepted until"),
        "{status}"
    );
    voxgate_testkit::lab::wait_for(Duration::from_secs(10), "the box's renewal", || {
        voxgate_testkit::enroll::cert_serial(&lab.dir.join("gw-online/device.pem")) != serial0
    });
    let log = runner.run(&blocks[1]);
    let log = String::from_utf8_lossy(&log.stdout).into_owned();
    assert!(
        log.contains("issuing_ca_current") && log.contains("renewed"),
        "{log}"
    );
    // After the retire date the leaked CA's certificates are refused.
    let closed = rt
        .block_on(offline.closed_within(Duration::from_secs(15)))
        .expect("the leaked CA's session outlived the retire date");
    assert!(closed.contains("retired issuing CA"), "{closed}");
    println!("old chain cut {:?} after the rotation", t0.elapsed());
    gw.assert_running();
    assert_eq!(
        voxgate_testkit::lab::metric(m, "voxgate_relay_connects_total"),
        1.0
    );
    gw.stop();
    relay.stop();
}

#[test]
fn leaked_root_key() {
    let lab = Lab::new(
        "runbook-root",
        "mode = \"none\"\n[enrollment]\ncertificate_lifetime_s = 86400",
    );
    let pass = secret_file(&lab.dir, "root.pass", "correct horse battery staple");
    let root_key = lab.dir.join("root.key.enc");
    let o = lab.relay_cmd(&[
        "ca",
        "export-root",
        "--out",
        root_key.to_str().unwrap(),
        "--passphrase-file",
        pass.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let old_root = voxgate_testkit::enroll::fingerprint(&lab);
    let mut relay = lab.start_relay();
    let (mut gw, m) = sealed_gateway(&lab, "gw-root");
    voxgate_testkit::lab::wait_for(Duration::from_secs(20), "connected", || {
        gw.assert_running();
        voxgate_testkit::lab::metric(m, "voxgate_relay_connected") == 1.0
    });
    let new_key = lab.dir.join("root2.key.enc");
    let mut runner = Runner::new(&lab, "gw-root", &lab.dir.join("box"));
    runner.set("ROOT_KEY", &root_key.display().to_string());
    runner.set("NEW_ROOT_KEY", &new_key.display().to_string());
    runner.set("PASSPHRASE_FILE", &pass.display().to_string());
    runner.set("RETIRE_AFTER", "8s");
    let blocks = runbook("root-key");
    let out = runner.run(&blocks[0]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.contains("trusted until") && text.contains(&old_root),
        "{text}"
    );
    assert!(new_key.exists(), "the new root key file");
    // The box learns the new root, renews onto the new issuing CA, and
    // after the retire date trusts the new root alone.
    let bundle = || {
        voxgate::pki::files::read_certs(&lab.dir.join("gw-root/ca.pem"))
            .map(|c| c.len())
            .unwrap_or(0)
    };
    voxgate_testkit::lab::wait_for(Duration::from_secs(10), "the new root on the box", || {
        bundle() == 2
    });
    let log = runner.run(&blocks[1]);
    let log = String::from_utf8_lossy(&log.stdout).into_owned();
    assert!(
        log.contains("root_rotated") && log.contains("renewed"),
        "{log}"
    );
    voxgate_testkit::lab::wait_for(Duration::from_secs(20), "the old root dropped", || {
        bundle() == 1
    });
    // The box logs it just after it replaced its bundle.
    voxgate_testkit::lab::wait_for(Duration::from_secs(5), "the box's log line", || {
        gw.log_text().contains("trusting only the new fleet root")
    });
    assert_eq!(
        voxgate_testkit::lab::metric(m, "voxgate_relay_connects_total"),
        1.0,
        "the box reconnected"
    );
    gw.stop();
    relay.stop();
}

#[test]
fn compromised_relay() {
    let lab = Lab::new(
        "runbook-relay",
        "mode = \"none\"\n[enrollment]\ncertificate_lifetime_s = 86400",
    );
    let bin = voxgate_testkit::lab::bin();
    let relay_cfg = lab.dir.join("relay.toml");
    let cmd = |args: &[&str], cfg: &std::path::Path| {
        let o = std::process::Command::new(bin)
            .arg("relay")
            .args(args)
            .arg("--config")
            .arg(cfg)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        o
    };
    let pass = secret_file(&lab.dir, "root.pass", "correct horse battery staple");
    let root_key = lab.dir.join("root.key.enc");
    cmd(
        &[
            "ca",
            "export-root",
            "--out",
            root_key.to_str().unwrap(),
            "--passphrase-file",
            pass.to_str().unwrap(),
        ],
        &relay_cfg,
    );
    let mut relay = lab.start_relay();
    let (mut gw, m) = sealed_gateway(&lab, "gw-box");
    let connects = || voxgate_testkit::lab::metric(m, "voxgate_relay_connects_total");
    voxgate_testkit::lab::wait_for(Duration::from_secs(20), "connected", || {
        gw.assert_running();
        connects() >= 1.0
    });
    let backup = lab.dir.join("relay.vxbackup");
    cmd(&["backup", backup.to_str().unwrap()], &relay_cfg);
    let old_chain = voxgate::pki::files::read_certs(&lab.dir.join("relay/relay.pem")).unwrap();
    // The relay is compromised: it goes, and a clean machine takes its
    // place (another state directory and machine id, the same address).
    relay.stop();
    let new_mid = lab.dir.join("new-machine-id");
    std::fs::write(&new_mid, "00112233445566778899aabbccddeeff\n").unwrap();
    let new_cfg = lab.dir.join("relay-new.toml");
    std::fs::write(
        &new_cfg,
        std::fs::read_to_string(&relay_cfg)
            .unwrap()
            .replace("state_dir = \"relay\"", "state_dir = \"relay-new\"")
            .replace(
                &lab.dir.join("ca-machine-id").display().to_string(),
                &new_mid.display().to_string(),
            ),
    )
    .unwrap();
    let mut runner = Runner::new(&lab, "gw-box", &lab.dir.join("box"));
    runner.set("RELAY_CONFIG", &new_cfg.display().to_string());
    runner.set("BACKUP", &backup.display().to_string());
    runner.set("ROOT_KEY", &root_key.display().to_string());
    runner.set("PASSPHRASE_FILE", &pass.display().to_string());
    runner.set("RETIRE_AFTER", "1h");
    let blocks = runbook("compromised-relay");
    runner.run(&blocks[0]);
    let mut relay = lab.start_relay_with_config(&new_cfg);
    // The box comes back by itself and renews onto the new issuing CA.
    let serial0 = voxgate_testkit::enroll::cert_serial(&lab.dir.join("gw-box/device.pem"));
    voxgate_testkit::lab::wait_for(Duration::from_secs(30), "the box's renewal", || {
        gw.assert_running();
        voxgate_testkit::enroll::cert_serial(&lab.dir.join("gw-box/device.pem")) != serial0
    });
    assert!(connects() >= 2.0, "the box reconnected to the new relay");
    let new_chain = voxgate::pki::files::read_certs(&lab.dir.join("relay-new/relay.pem")).unwrap();
    let spki =
        |c: &rustls::pki_types::CertificateDer<'_>| voxgate::pki::name::cert_facts(c).unwrap().spki;
    assert_ne!(spki(&new_chain[0]), spki(&old_chain[0]), "a new relay key");
    assert_ne!(new_chain[1], old_chain[1], "a new issuing CA");
    assert_eq!(new_chain[2], old_chain[2], "the same root");
    let out = runner.run(&blocks[1]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.contains("ca_recovered") && text.contains("renewed"),
        "{text}"
    );
    gw.stop();
    relay.stop();
}
