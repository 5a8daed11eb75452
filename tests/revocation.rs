//! Revocation cuts a streaming device within a second and refuses its
//! reconnects in the TLS handshake; `voxgate relay devices` shows it.

use std::process::Command;
use std::time::{Duration, Instant};
use voxgate_testkit::audio_env::{AlsaFileDevices, speech_fixture};
use voxgate_testkit::lab::{Lab, bin, metric, wait_for};

#[test]
fn revocation_cuts_a_streaming_device_and_blocks_reconnects() {
    let lab = Lab::new("revoke", "mode = \"none\"");
    let speech = speech_fixture(
        &lab.dir,
        "This device is about to be revoked by the operator.",
    );
    let devs = AlsaFileDevices::new(&lab.dir, Some(&speech), None);
    let mut relay = lab.start_relay();
    let (cfg, gw) = lab.gateway_config(
        "gw-rev",
        lab.quic_port,
        "[capture]\ndevice = \"voxcap\"\n[playback]\nenabled = false\n",
    );
    let env = vec![("ALSA_CONFIG_PATH".to_string(), devs.alsa_config_path_env())];
    let mut gateway = lab.start_gateway(&cfg, &env);
    wait_for(Duration::from_secs(15), "streaming", || {
        gateway.assert_running();
        metric(gw, "voxgate_frames_sent_total") >= 50.0
            && metric(gw, "voxgate_relay_connected") == 1.0
    });
    let relay_cfg = lab.dir.join("relay.toml");
    let listed = Command::new(bin())
        .args(["relay", "devices", "--config"])
        .arg(&relay_cfg)
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert!(
        listed.contains("gw-rev") && listed.contains("active"),
        "{listed}"
    );

    let t0 = Instant::now();
    let out = Command::new(bin())
        .args(["relay", "revoke", "--config"])
        .arg(&relay_cfg)
        .arg("gw-rev")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for(Duration::from_secs(3), "the connection to drop", || {
        metric(gw, "voxgate_relay_connected") == 0.0
    });
    let cut = t0.elapsed();
    println!("revocation cut the device after {cut:?}");
    assert!(cut < Duration::from_millis(1_200), "took {cut:?}");

    // Its reconnects fail in the handshake, and it never streams again.
    let rejected0 = metric(lab.relay_metrics, "voxgate_relay_sessions_rejected_total");
    wait_for(Duration::from_secs(10), "a refused reconnect", || {
        metric(lab.relay_metrics, "voxgate_relay_sessions_rejected_total") > rejected0
    });
    assert_eq!(metric(gw, "voxgate_relay_connects_total"), 1.0);
    assert_eq!(
        metric(lab.relay_metrics, "voxgate_relay_sessions_total"),
        1.0
    );
    gateway.assert_running();
    let log = gateway.log_text();
    assert!(
        log.contains("the relay revoked this device"),
        "gateway should say why: {log}"
    );
    assert!(
        log.contains("refused this device's certificate as revoked"),
        "and why reconnects fail: {log}"
    );

    let listed = Command::new(bin())
        .args(["relay", "devices", "--config"])
        .arg(&relay_cfg)
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert!(listed.contains("REVOKED"), "{listed}");
    let again = Command::new(bin())
        .args(["relay", "revoke", "--config"])
        .arg(&relay_cfg)
        .arg("nobody-here")
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("no device `nobody-here`"));
    gateway.stop();
    relay.stop();
}
