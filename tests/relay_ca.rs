//! The relay's keys at rest and its two-tier fleet CA: `voxgate relay
//! init --keep-root` writes the root, issuing CA and relay TLS keys sealed
//! to the relay's machine, `voxgate relay run` unseals them (and `dev-cert`
//! issues with the issuing CA), a copy on another machine does not open;
//! a single-tier fleet of an earlier release (its plaintext `ca.key`
//! refused until `voxgate relay seal-ca` seals it) becomes the root of a
//! new issuing CA at the relay's next start, devices keeping the
//! fingerprint they pinned, and `relay ca export-root` moves the root key
//! off the machine.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use voxgate_testkit::cmd::both as text;
use voxgate_testkit::enroll::secret_file;
use voxgate_testkit::lab::{Lab, bin};

fn relay_run_fails(lab: &Lab) -> String {
    let out = Command::new(bin())
        .args(["relay", "run", "--config"])
        .arg(lab.dir.join("relay.toml"))
        .output()
        .unwrap();
    assert!(!out.status.success(), "relay run should have failed");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn issuing_files(state: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(state)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("issuing-"))
        })
        .collect();
    v.sort();
    v
}

#[test]
fn relay_keys_are_sealed_and_a_single_tier_fleet_becomes_two_tier() {
    // Lab::new runs `relay init --keep-root` with a machine id of its own.
    let lab = Lab::new("relay-ca", "mode = \"none\"");
    let state = lab.dir.join("relay");
    for name in ["root.key.sealed", "relay.key.sealed"] {
        let p = state.join(name);
        assert!(
            std::fs::read(&p).unwrap().starts_with(b"VXSEAL1\n"),
            "{name}"
        );
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    assert_eq!(issuing_files(&state).len(), 2, "an issuing CA and its key");
    assert!(!state.join("ca.key").exists() && !state.join("relay.key").exists());
    // `relay init` without saying where the root key goes is refused.
    let again = Lab::new("relay-ca-b", "mode = \"none\"");
    std::fs::remove_dir_all(again.dir.join("relay")).unwrap();
    let o = again.relay_cmd(&["init"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("--root-key-out"), "{}", text(&o));

    // The relay unseals them and serves; dev-cert issues with them.
    let mut relay = lab.start_relay();
    relay.stop();
    let (_cfg, _) = lab.gateway_config("gw-ca", lab.quic_port, "");
    assert!(lab.dir.join("gw-ca/device.pem").exists());

    // Another machine: the same state directory does not open.
    let rc = lab.dir.join("relay.toml");
    let original = std::fs::read_to_string(&rc).unwrap();
    let mid = lab.dir.join("ca-machine-id");
    let other = lab.dir.join("other-machine-id");
    std::fs::write(&other, "ffffffffffffffffffffffffffffffff\n").unwrap();
    std::fs::write(
        &rc,
        original.replace(&mid.display().to_string(), &other.display().to_string()),
    )
    .unwrap();
    let e = relay_run_fails(&lab);
    assert!(
        e.contains("sealed on another machine") && e.contains("voxgate relay init"),
        "{e}"
    );
    std::fs::write(&rc, &original).unwrap();

    // The state directory of an earlier release: one CA, its key a
    // plaintext `ca.key` (the root here), no issuing CA.
    let material =
        voxgate::pki::sealed::Material::new(std::fs::read_to_string(&mid).unwrap().trim(), None)
            .unwrap();
    let root_pkcs8 = voxgate::pki::sealed::unseal(
        &material,
        &std::fs::read(state.join("root.key.sealed")).unwrap(),
    )
    .unwrap();
    let root_key = rcgen::KeyPair::try_from(&rustls::pki_types::PrivatePkcs8KeyDer::from(
        &root_pkcs8[..],
    ))
    .unwrap();
    std::fs::remove_file(state.join("root.key.sealed")).unwrap();
    for f in issuing_files(&state) {
        std::fs::remove_file(f).unwrap();
    }
    rusqlite::Connection::open(state.join("registry.sqlite3"))
        .unwrap()
        .execute("DELETE FROM issuers", [])
        .unwrap();
    let plain = state.join("ca.key");
    std::fs::write(&plain, root_key.serialize_pem()).unwrap();
    std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o600)).unwrap();
    let e = relay_run_fails(&lab);
    assert!(
        e.contains("is a plaintext fleet CA key") && e.contains("voxgate relay seal-ca"),
        "{e}"
    );
    let out = lab.relay_cmd(&["seal-ca"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!plain.exists() && state.join("ca.key.sealed").exists());

    // The next start migrates: the old CA is the root, a new issuing CA
    // signs; the root key is still here, and the relay says so.
    let fp_before = voxgate_testkit::enroll::fingerprint(&lab);
    let mut relay = lab.start_relay();
    relay.stop();
    assert!(
        relay.log_text().contains("voxgate relay ca export-root"),
        "{}",
        relay.log_text()
    );
    assert_eq!(voxgate_testkit::enroll::fingerprint(&lab), fp_before);
    assert_eq!(issuing_files(&state).len(), 2);
    assert!(!state.join("ca.key.sealed").exists());
    let status = text(&lab.relay_cmd(&["ca", "status"]));
    assert!(
        status.contains("ON THIS MACHINE") && status.contains("signing"),
        "{status}"
    );
    // A device enrolled under the new issuing CA works with the same pin.
    let (_cfg, _) = lab.gateway_config("gw-new", lab.quic_port, "");
    let mut relay = lab.start_relay();
    let rt = voxgate_testkit::session::runtime();
    rt.block_on(voxgate_testkit::session::Session::open(
        &lab,
        &lab.dir.join("gw-new"),
        "gw-new",
    ))
    .expect("a device of the new issuing CA");
    relay.stop();

    // Export the root key: off the machine, encrypted.
    let pass = secret_file(&lab.dir, "root.pass", "correct horse battery staple");
    let out_file = lab.dir.join("root.key.enc");
    let out = lab.relay_cmd(&[
        "ca",
        "export-root",
        "--out",
        out_file.to_str().unwrap(),
        "--passphrase-file",
        pass.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!state.join("root.key.sealed").exists());
    assert_eq!(
        std::fs::metadata(&out_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let status = text(&lab.relay_cmd(&["ca", "status"]));
    assert!(status.contains("off this machine"), "{status}");
}
