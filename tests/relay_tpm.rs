//! The relay's keys in a TPM (swtpm here; a cloud VM's vTPM in production).
//! `voxgate relay init --issuing-key-tpm` makes the issuing CA's key inside
//! the TPM: the signer process signs through it (enrollment, the relay's
//! own certificate), a rotation makes the next issuing key in the same TPM,
//! and the key file is usable only by that TPM. `--tls-key-tpm` does the
//! same for the relay's TLS key: every handshake signs through the TPM, and
//! the certificate's renewal makes the next key there. A backup with keys
//! says it cannot carry a key that never leaves the TPM.

use std::time::Duration;
use voxgate::relay::ca_key;
use voxgate_testkit::cmd::both as text;
use voxgate_testkit::enroll::{Setup, secret_file, signing_issuer};
use voxgate_testkit::lab::{Lab, wait_for};
use voxgate_testkit::swtpm::Swtpm;

/// `voxgate relay backup --with-keys` of the lab's relay.
fn backup_with_keys(lab: &Lab) -> std::process::Output {
    let pass = secret_file(&lab.dir, "backup.pass", "correct horse battery staple");
    lab.relay_cmd(&[
        "backup",
        lab.dir.join("with-keys.vgb").to_str().unwrap(),
        "--with-keys",
        "--passphrase-file",
        pass.to_str().unwrap(),
    ])
}

#[test]
fn the_issuing_key_is_made_and_used_in_the_tpm() {
    let tpm = Swtpm::start("relay-issuing");
    let lab = Lab::new("relay-tpm", "mode = \"none\"");
    // A fleet of its own, its issuing key in the TPM.
    std::fs::remove_dir_all(lab.dir.join("relay")).unwrap();
    let o = lab.relay_cmd(&["init", "--keep-root", "--issuing-key-tpm", &tpm.spec()]);
    assert!(o.status.success(), "{}", text(&o));
    let state = lab.dir.join("relay");
    let first = signing_issuer(&lab);
    let tpm_file = ca_key::tpm_path(&state, &first);
    assert!(tpm_file.exists(), "no {}", tpm_file.display());
    let (_, sealed) = voxgate::relay::authority::issuing_paths(&state, &first);
    assert!(!sealed.exists(), "a sealed issuing key beside the TPM's");

    // The relay signs through the TPM: a device enrolls and streams.
    let mut relay = lab.start_relay();
    Setup::new(&lab, "gw-tpm-1").run();
    // A rotation makes the next issuing key in the same TPM, and the
    // running relay renews its certificate from it.
    let o = lab.relay_cmd(&["ca", "rotate-issuing", "--retire-after", "1h"]);
    assert!(o.status.success(), "{}", text(&o));
    let second = signing_issuer(&lab);
    assert_ne!(first, second);
    assert!(ca_key::tpm_path(&state, &second).exists());
    wait_for(
        Duration::from_secs(10),
        "the relay certificate from the new CA",
        || {
            let chain = voxgate::pki::files::read_certs(&state.join("relay.pem")).unwrap();
            voxgate::pki::name::fingerprint(&chain[1]) == second
        },
    );
    Setup::new(&lab, "gw-tpm-2").run();
    relay.assert_running();
    relay.stop();

    // The key file is the TPM's wrapped blob: another TPM cannot load it.
    let cfg = voxgate::config::RelayConfig::load(&lab.dir.join("relay.toml")).unwrap();
    let material = cfg.ca_binding.material().unwrap();
    ca_key::load(&state, &material, &second).expect("the TPM loads its own key");
    let other = Swtpm::start("relay-other");
    let file = std::fs::read(ca_key::tpm_path(&state, &second)).unwrap();
    let moved = String::from_utf8_lossy(&file).replacen(&tpm.spec(), &other.spec(), 1);
    let nl = file.iter().position(|&b| b == b'\n').unwrap();
    let mut forged = moved.as_bytes()[..moved.find('\n').unwrap() + 1].to_vec();
    forged.extend_from_slice(&file[nl + 1..]);
    std::fs::write(ca_key::tpm_path(&state, &second), &forged).unwrap();
    let e = ca_key::load(&state, &material, &second).unwrap_err();
    assert!(e.to_string().contains("TPM"), "{e}");
    std::fs::write(ca_key::tpm_path(&state, &second), &file).unwrap();

    // A backup with keys cannot carry it, and says what to do instead.
    let o = backup_with_keys(&lab);
    assert!(!o.status.success());
    assert!(text(&o).contains("relay ca recover"), "{}", text(&o));
    let o = lab.relay_cmd(&["backup", lab.dir.join("no-keys.vgb").to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn the_relay_tls_key_lives_in_the_tpm_and_renews_there() {
    let tpm = Swtpm::start("relay-tls");
    // A relay certificate of 12 s: renewed at two thirds, while we watch.
    let lab = Lab::with_ca(
        "relay-tpm-tls",
        "mode = \"none\"",
        "relay_cert_lifetime_s = 12",
    );
    std::fs::remove_dir_all(lab.dir.join("relay")).unwrap();
    let o = lab.relay_cmd(&[
        "init",
        "--keep-root",
        "--issuing-key-tpm",
        &tpm.spec(),
        "--tls-key-tpm",
        &tpm.spec(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let state = lab.dir.join("relay");
    let key_file = state.join(ca_key::RELAY_KEY_TPM);
    let blob0 = std::fs::read(&key_file).expect("the TLS key's TPM blob");
    assert!(!state.join("relay.key.sealed").exists());
    let serial0 = voxgate_testkit::enroll::cert_serial(&state.join("relay.pem"));
    // Handshakes sign through the TPM: a box enrolls (its pinned-CA
    // handshake) and a session opens with its certificate.
    let mut relay = lab.start_relay();
    let cfg = Setup::new(&lab, "gw-tls").run();
    let rt = voxgate_testkit::session::runtime();
    rt.block_on(voxgate_testkit::session::Session::open_enrolled(
        &lab, &cfg, "gw-tls",
    ))
    .expect("a session with the TPM-held relay key");
    // The renewal makes a fresh key in the same TPM.
    wait_for(
        Duration::from_secs(20),
        "the relay certificate renewal",
        || voxgate_testkit::enroll::cert_serial(&state.join("relay.pem")) != serial0,
    );
    let blob1 = std::fs::read(&key_file).unwrap();
    assert_ne!(blob0, blob1, "the renewal kept the old key");
    assert!(!state.join("relay.key.sealed").exists());
    rt.block_on(voxgate_testkit::session::Session::open_enrolled(
        &lab, &cfg, "gw-tls",
    ))
    .expect("a session with the renewed TPM-held key");
    relay.assert_running();
    relay.stop();
    // A backup with keys cannot carry it.
    let o = backup_with_keys(&lab);
    assert!(!o.status.success());
    assert!(text(&o).contains("held by a TPM"), "{}", text(&o));
}

/// `voxgate relay api-tls request` makes the operator API's key in the TPM
/// or as a systemd credential (never in the clear) with a certificate
/// request; the operator's CA signs it, and the API serves HTTPS with it:
/// from the TPM (every handshake signs there), from a credential the relay
/// decrypts with `systemd-creds` (started by root without the unit), and
/// from the decrypted credential systemd gives the unit
/// (`$CREDENTIALS_DIRECTORY/voxgate-api`).
#[test]
fn the_api_tls_key_is_made_in_the_tpm_or_as_a_credential() {
    use voxgate_testkit::api;
    let tpm = Swtpm::start("relay-api-tls");
    let lab = Lab::new("relay-api-tls", "mode = \"none\"");
    let cfg = lab.dir.join("relay.toml");
    let base = std::fs::read_to_string(&cfg).unwrap();
    // A host key of the test's own for systemd-creds: nothing outside the
    // lab changes.
    let secret = lab.dir.join("credential.secret");
    let envs: [(&str, &std::path::Path); 1] = [("SYSTEMD_CREDENTIAL_SECRET", &secret)];
    let request = |dir: &str, backend: &[&str]| {
        let d = lab.dir.join(dir);
        std::fs::create_dir_all(&d).unwrap();
        let mut args = vec![
            "api-tls",
            "request",
            "--name",
            "localhost",
            "--name",
            "127.0.0.1",
        ];
        args.extend(backend);
        args.extend(["--dir", d.to_str().unwrap()]);
        let run = || {
            std::process::Command::new(voxgate_testkit::lab::bin())
                .arg("relay")
                .args(&args)
                .arg("--config")
                .arg(&cfg)
                .env("SYSTEMD_CREDENTIAL_SECRET", &secret)
                .output()
                .unwrap()
        };
        let o = run();
        assert!(o.status.success(), "{}", text(&o));
        assert!(text(&o).contains("LoadCredentialEncrypted") == backend.contains(&"--creds"));
        // Asked again, it overwrites nothing.
        let again = run();
        assert!(
            !again.status.success() && text(&again).contains("exists"),
            "{}",
            text(&again)
        );
        d
    };
    let serve = |key: &std::path::Path, env: &[(&str, &std::path::Path)]| {
        let dir = key.parent().unwrap();
        let cert = api::sign_request(dir, &dir.join("api.csr.pem"), key);
        std::fs::write(&cfg, &base).unwrap();
        let a = api::enable(&lab, "", Some(&cert));
        let mut relay = lab.start_relay_env(&cfg, env);
        let k = api::create_key(&lab, "tls", "audit:read", &[]);
        let answer = a.get("/v1/audit?limit=1", &k);
        assert_eq!(answer.status, 200, "{answer:?}");
        relay.assert_running();
        relay.stop();
    };

    // In the TPM: the file is the TPM's blob, no key in the clear.
    let d = request("tpm", &["--tpm", &tpm.spec()]);
    let key = d.join("api.key.tpm");
    let file = std::fs::read(&key).unwrap();
    assert!(file.starts_with(b"voxgate-tpm-key v1 "));
    assert!(!String::from_utf8_lossy(&file).contains("PRIVATE KEY"));
    serve(&key, &[]);
    // Another TPM cannot serve it: the relay refuses to start, and says why.
    let other = Swtpm::start("relay-api-tls-other");
    let moved = String::from_utf8_lossy(&file).replacen(&tpm.spec(), &other.spec(), 1);
    let nl = file.iter().position(|&b| b == b'\n').unwrap();
    let mut forged = moved.as_bytes()[..moved.find('\n').unwrap() + 1].to_vec();
    forged.extend_from_slice(&file[nl + 1..]);
    std::fs::write(&key, &forged).unwrap();
    let o = std::process::Command::new(voxgate_testkit::lab::bin())
        .args(["relay", "run", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(text(&o).contains("[api] key"), "{}", text(&o));

    // A systemd credential: decrypted by the relay itself (root, no unit).
    let d = request("creds", &["--creds"]);
    let key = d.join("api.key.cred");
    let enc = std::fs::read(&key).unwrap();
    assert!(!String::from_utf8_lossy(&enc).contains("PRIVATE KEY"));
    serve(&key, &envs);
    // As the unit gets it: decrypted into $CREDENTIALS_DIRECTORY by systemd
    // (here by systemd-creds, as LoadCredentialEncrypted= would), with no
    // host key in reach of the relay.
    let creds_dir = lab.dir.join("credentials");
    std::fs::create_dir_all(&creds_dir).unwrap();
    let o = std::process::Command::new("systemd-creds")
        .args(["decrypt", "--name="])
        .arg(&key)
        .arg(creds_dir.join("voxgate-api"))
        .env("SYSTEMD_CREDENTIAL_SECRET", &secret)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    std::fs::remove_file(&secret).unwrap();
    serve(&key, &[("CREDENTIALS_DIRECTORY", &creds_dir)]);
}
