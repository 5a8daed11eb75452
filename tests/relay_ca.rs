//! The relay's keys at rest: `voxgate relay init` writes the fleet CA key
//! and the relay TLS key sealed to the relay's machine, `voxgate relay run`
//! unseals them (and `dev-cert` issues with the CA), a copy on another
//! machine does not open, and plaintext `ca.key` / `relay.key` files of an
//! older release are refused until `voxgate relay seal-ca` seals them.

use std::process::Command;
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

#[test]
fn fleet_ca_key_is_sealed_refused_elsewhere_and_legacy_keys_are_sealed_on_request() {
    // Lab::new runs `relay init` with a machine id of the lab's own.
    let lab = Lab::new("relay-ca", "mode = \"none\"");
    let state = lab.dir.join("relay");
    let sealed_path = state.join("ca.key.sealed");
    let sealed = std::fs::read(&sealed_path).unwrap();
    assert!(sealed.starts_with(b"VXSEAL1\n"), "not a sealed file");
    assert!(!state.join("ca.key").exists(), "plaintext CA key written");
    assert!(
        !state.join("relay.key").exists(),
        "plaintext relay key written"
    );
    assert!(
        std::fs::read(state.join("relay.key.sealed"))
            .unwrap()
            .starts_with(b"VXSEAL1\n")
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&sealed_path)
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    // The relay unseals it and serves; dev-cert issues with it.
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

    // An older release's plaintext ca.key: refused with the command.
    let material =
        voxgate::pki::sealed::Material::new(std::fs::read_to_string(&mid).unwrap().trim(), None)
            .unwrap();
    let pkcs8 = voxgate::pki::sealed::unseal(&material, &sealed).unwrap();
    let key =
        rcgen::KeyPair::try_from(&rustls::pki_types::PrivatePkcs8KeyDer::from(&pkcs8[..])).unwrap();
    std::fs::remove_file(&sealed_path).unwrap();
    let plain = state.join("ca.key");
    std::fs::write(&plain, key.serialize_pem()).unwrap();
    std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o600)).unwrap();
    // And the relay key the same way.
    let relay_sealed = std::fs::read(state.join("relay.key.sealed")).unwrap();
    let relay_pkcs8 = voxgate::pki::sealed::unseal(&material, &relay_sealed).unwrap();
    let relay_key = rcgen::KeyPair::try_from(&rustls::pki_types::PrivatePkcs8KeyDer::from(
        &relay_pkcs8[..],
    ))
    .unwrap();
    std::fs::remove_file(state.join("relay.key.sealed")).unwrap();
    let relay_plain = state.join("relay.key");
    std::fs::write(&relay_plain, relay_key.serialize_pem()).unwrap();
    std::fs::set_permissions(&relay_plain, std::fs::Permissions::from_mode(0o600)).unwrap();
    let e = relay_run_fails(&lab);
    assert!(
        e.contains("is a plaintext relay TLS key") && e.contains("voxgate relay seal-ca"),
        "{e}"
    );
    let out = Command::new(bin())
        .args(["relay", "seal-ca", "--config"])
        .arg(&rc)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!plain.exists() && sealed_path.exists());
    assert!(!relay_plain.exists() && state.join("relay.key.sealed").exists());
    let mut relay = lab.start_relay();
    relay.stop();
}
