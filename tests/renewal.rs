//! Certificate renewal over the live session: a relay issuing 15-second
//! certificates, a device enrolled with `voxgate setup` (sealed file, and
//! TPM on swtpm), `voxgate run` renews at two thirds of the lifetime with a
//! fresh key, stores it, keeps its connection (no reconnect, nothing
//! unsent), and a restarted gateway connects with the renewed pair.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use voxgate_testkit::audio_env::{AlsaFileDevices, speech_fixture};
use voxgate_testkit::enroll::{Setup, audit, cert_serial};
use voxgate_testkit::lab::{Lab, bin, dev_privilege, free_tcp, metric, wait_for};
use voxgate_testkit::swtpm::Swtpm;

const LIFETIME_S: u64 = 15;

fn lab(name: &str) -> Lab {
    Lab::new(
        name,
        &format!("mode = \"none\"\n[enrollment]\ncertificate_lifetime_s = {LIFETIME_S}"),
    )
}

fn enroll(lab: &Lab, id: &str, extra: &[&str]) -> PathBuf {
    Setup::new(lab, id).args(extra).run()
}

/// Enrolled device `id` renews while streaming, then reconnects after a
/// restart with the renewed certificate and key.
fn renews_while_streaming(lab: &Lab, id: &str, cfg: &Path, key_file: &str) {
    let mut relay = lab.start_relay();
    let dir = lab.dir.join(id);
    let cert = dir.join("device.pem");
    let serial0 = cert_serial(&cert);
    let cert0 = std::fs::read(&cert).unwrap();
    let key0 = std::fs::read(dir.join(key_file)).unwrap();

    let speech = speech_fixture(
        &lab.dir,
        "This device renews its certificate while it talks.",
    );
    let devs = AlsaFileDevices::new(&lab.dir, Some(&speech), None);
    let env = vec![("ALSA_CONFIG_PATH".to_string(), devs.alsa_config_path_env())];
    let m: std::net::SocketAddr = format!("127.0.0.1:{}", free_tcp()).parse().unwrap();
    let written = std::fs::read_to_string(cfg).unwrap();
    std::fs::write(
        cfg,
        format!(
            "{written}\n[capture]\ndevice = \"voxcap\"\n[playback]\nenabled = false\n[telemetry]\nlog = \"debug\"\nmetrics = \"{m}\"\n{}",
            // The lab is only readable inside the sandbox: the gateway must
            // open its own state directory for writing to renew.
            dev_privilege(&lab.dir).replace(
                &format!("write = [\"{}\"]", lab.dir.display()),
                "write = []"
            )
        ),
    )
    .unwrap();
    let mut gw = lab.start_gateway(cfg, &env);
    wait_for(Duration::from_secs(20), "streaming", || {
        gw.assert_running();
        metric(m, "voxgate_frames_sent_total") >= 50.0
    });
    // Frames captured before the first connection count as unsent; none
    // may be lost from here on.
    let unsent = metric(m, "voxgate_frames_unsent_total");
    // Due at two thirds of 15 s after enrollment.
    wait_for(Duration::from_secs(30), "the certificate renewal", || {
        gw.assert_running();
        gw.log_text().contains("certificate renewed")
    });
    assert_eq!(metric(m, "voxgate_relay_connected"), 1.0, "connection lost");
    assert_eq!(
        metric(m, "voxgate_relay_connects_total"),
        1.0,
        "reconnected"
    );
    assert_eq!(
        metric(m, "voxgate_frames_unsent_total"),
        unsent,
        "audio dropped"
    );
    gw.stop();

    let serial1 = cert_serial(&cert);
    assert_ne!(serial0, serial1, "certificate not replaced");
    assert_ne!(
        std::fs::read(dir.join(key_file)).unwrap(),
        key0,
        "no fresh key"
    );
    assert_eq!(
        std::fs::metadata(dir.join(key_file))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    assert!(!dir.join("device.pem.new").exists());
    let record = std::fs::read_to_string(dir.join("renewal.state")).unwrap();
    assert!(record.contains("event = \"renewed\""), "{record}");
    let audit = audit(lab);
    assert!(
        audit.iter().any(|e| e.0 == "renewed" && e.2 == id),
        "{audit:?}"
    );

    // keys status shows the renewal.
    let st = Command::new(bin())
        .args(["keys", "status", "--config"])
        .arg(cfg)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&st.stdout).into_owned();
    assert!(text.contains("(renewed)"), "{text}");

    // A stop between replacing the key and moving the new certificate into
    // place: the next start finishes the renewal.
    let renewed = std::fs::read(&cert).unwrap();
    std::fs::write(dir.join("device.pem.new"), &renewed).unwrap();
    std::fs::write(&cert, &cert0).unwrap();

    // A restart uses the renewed certificate and key.
    let connects = metric(lab.relay_metrics, "voxgate_relay_sessions_total");
    let mut gw = lab.start_gateway(cfg, &env);
    wait_for(
        Duration::from_secs(20),
        "reconnect with the renewed key",
        || {
            gw.assert_running();
            metric(m, "voxgate_relay_connected") == 1.0
        },
    );
    assert!(metric(lab.relay_metrics, "voxgate_relay_sessions_total") > connects);
    gw.stop();
    assert!(
        gw.log_text()
            .contains("finished a certificate renewal interrupted by a stop"),
        "{}",
        gw.log_text()
    );
    assert_eq!(std::fs::read(&cert).unwrap(), renewed);
    assert!(!dir.join("device.pem.new").exists());
    relay.stop();
}

#[test]
fn sealed_file_device_renews_with_a_fresh_key_without_reconnecting() {
    let lab = lab("renew-sealed");
    let mut relay = lab.start_relay();
    let cfg = enroll(&lab, "gw-rs", &["--backend", "sealed-file"]);
    relay.stop();
    renews_while_streaming(&lab, "gw-rs", &cfg, "device.key.sealed");
}

#[test]
fn tpm_device_renews_with_a_fresh_tpm_key_without_reconnecting() {
    let lab = lab("renew-tpm");
    let tpm = Swtpm::start_in(lab.dir.join("swtpm"));
    let mut relay = lab.start_relay();
    let cfg = enroll(&lab, "gw-rt", &["--backend", "tpm", "--tpm", &tpm.spec()]);
    relay.stop();
    renews_while_streaming(&lab, "gw-rt", &cfg, "device.key.tpm");
    drop(tpm);
}
