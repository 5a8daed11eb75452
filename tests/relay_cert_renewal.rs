//! The relay renews its own TLS certificate: a relay initialised with a
//! 30-second certificate (`[ca] relay_cert_lifetime_s`, a test setting)
//! renews it at two thirds (about 20 s) while a device streams speech
//! through it. The device keeps its connection and its stream shows no gap
//! beyond one frame; a fresh handshake sees the new serial, accepted as is
//! by a device's own TLS configuration (the fleet CA file) and by an
//! enrolling device's pinned CA fingerprint; the expiry metric follows the
//! new certificate; and a restarted relay serves the renewed certificate
//! from disk.

use rustls::pki_types::CertificateDer;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use voxgate::transport::tls;
use voxgate_testkit::audio_env::{AlsaFileDevices, speech_fixture};
use voxgate_testkit::enroll::{SERVER_NAME, audit, cert_serial, fingerprint};
use voxgate_testkit::lab::{Lab, device_client_config, metric, wait_for};

const LIFETIME_S: i64 = 30;
const EXPIRY: &str = "voxgate_relay_cert_expiry_seconds";

fn serial(cert: &CertificateDer<'_>) -> (String, i64) {
    let (_, x) = x509_parser::parse_x509_certificate(cert).unwrap();
    let hex = x
        .tbs_certificate
        .raw_serial()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    (hex, x.validity().not_after.timestamp())
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A fresh handshake with `cfg`: the relay's chain as the device saw it
/// (the handshake fails unless the device accepts it).
fn handshake(addr: SocketAddr, cfg: quinn::ClientConfig) -> Vec<CertificateDer<'static>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        let conn = tokio::time::timeout(
            Duration::from_secs(5),
            ep.connect_with(cfg, addr, SERVER_NAME).unwrap(),
        )
        .await
        .expect("handshake timed out")
        .expect("the device refused the relay's certificate");
        let chain = *conn
            .peer_identity()
            .unwrap()
            .downcast::<Vec<CertificateDer<'static>>>()
            .unwrap();
        conn.close(0u32.into(), b"probe");
        let _ = tokio::time::timeout(Duration::from_secs(2), ep.wait_idle()).await;
        chain
    })
}

/// The relay's leaf certificate (serial, notAfter) as a device with a
/// certificate sees it, and as a device enrolling with only the CA
/// fingerprint sees it; both must agree.
fn served(lab: &Lab, probe: &Path) -> (String, i64) {
    let addr: SocketAddr = format!("127.0.0.1:{}", lab.quic_port).parse().unwrap();
    let device = handshake(addr, device_client_config(probe, "probe"));
    let pinned = tls::PinnedCaVerifier::new(&fingerprint(lab)).unwrap();
    let enrolling = handshake(addr, tls::enroll_client_config(pinned.clone()).unwrap());
    assert_eq!(device[0], enrolling[0], "one certificate for both");
    assert!(pinned.ca().is_some(), "the chain carries the pinned CA");
    serial(&device[0])
}

#[test]
fn relay_renews_its_certificate_while_a_device_streams() {
    let lab = Lab::with_ca(
        "relay-cert-renew",
        "mode = \"none\"",
        &format!("relay_cert_lifetime_s = {LIFETIME_S}"),
    );
    let state = lab.dir.join("relay");
    let relay_pem = state.join("relay.pem");
    let key0 = std::fs::read(state.join("relay.key.sealed")).unwrap();
    let serial0 = cert_serial(&relay_pem);

    // A device certificate for the probes, and the streaming device.
    lab.gateway_config("probe", lab.quic_port, "");
    let probe = lab.dir.join("probe");
    let speech = speech_fixture(
        &lab.dir,
        "The relay renews its own certificate while this device talks to it.",
    );
    let devs = AlsaFileDevices::new(&lab.dir, Some(&speech), None);
    let env = vec![("ALSA_CONFIG_PATH".to_string(), devs.alsa_config_path_env())];
    let (cfg, m) = lab.gateway_config(
        "gw-rc",
        lab.quic_port,
        "[capture]\ndevice = \"voxcap\"\n[playback]\nenabled = false\n",
    );

    let mut relay = lab.start_relay();
    let (s, not_after0) = served(&lab, &probe);
    assert_eq!(
        s, serial0,
        "the relay serves the certificate `relay init` wrote"
    );
    let left = metric(lab.relay_metrics, EXPIRY);
    assert!(left > 0.0 && left <= LIFETIME_S as f64, "{EXPIRY} = {left}");
    assert!((left - (not_after0 - unix_now()) as f64).abs() <= 2.0);

    let mut gw = lab.start_gateway(&cfg, &env);
    wait_for(Duration::from_secs(20), "streaming", || {
        gw.assert_running();
        metric(m, "voxgate_frames_sent_total") >= 50.0
    });
    let unsent = metric(m, "voxgate_frames_unsent_total");
    assert!(
        !relay.log_text().contains("relay certificate renewed"),
        "renewed before the device streamed; the test proves nothing"
    );

    // Due at two thirds of 30 s after `relay init`.
    wait_for(
        Duration::from_secs(30),
        "the relay certificate renewal",
        || {
            relay.assert_running();
            gw.assert_running();
            relay.log_text().contains("relay certificate renewed")
        },
    );
    let sent_at_renewal = metric(m, "voxgate_frames_sent_total");
    // Keep streaming across and after the swap.
    wait_for(
        Duration::from_secs(10),
        "streaming after the renewal",
        || {
            gw.assert_running();
            metric(m, "voxgate_frames_sent_total") >= sent_at_renewal + 100.0
        },
    );
    assert_eq!(metric(m, "voxgate_relay_connected"), 1.0, "connection lost");
    assert_eq!(
        metric(m, "voxgate_relay_connects_total"),
        1.0,
        "the device reconnected"
    );
    assert_eq!(
        metric(m, "voxgate_frames_unsent_total"),
        unsent,
        "uplink frames dropped"
    );

    // A fresh handshake sees the new certificate, from the same CA.
    let (serial1, not_after1) = served(&lab, &probe);
    assert_ne!(
        serial1, serial0,
        "the relay still serves the old certificate"
    );
    assert_eq!(serial1, cert_serial(&relay_pem), "not the one on disk");
    assert!(not_after1 > not_after0);
    let left = metric(lab.relay_metrics, EXPIRY);
    assert!(
        (left - (not_after1 - unix_now()) as f64).abs() <= 2.0,
        "{EXPIRY} = {left}, the new certificate has {} s",
        not_after1 - unix_now()
    );

    // The stream: one recording, no gap beyond one frame.
    gw.stop();
    wait_for(Duration::from_secs(10), "the session to end", || {
        metric(lab.relay_metrics, "voxgate_relay_sessions_active") == 0.0
            && metric(lab.relay_metrics, "voxgate_relay_frames_recorded_total") > 0.0
    });
    let gaps = metric(lab.relay_metrics, "voxgate_relay_gap_frames_total");
    assert!(gaps <= 1.0, "{gaps} frames missing from the recording");
    let recordings = lab.recordings();
    assert_eq!(recordings.len(), 1, "{recordings:?}");

    // On disk: a fresh key, sealed, nothing left over; audited.
    let key1 = std::fs::read(state.join("relay.key.sealed")).unwrap();
    assert_ne!(key1, key0, "no fresh key");
    assert!(key1.starts_with(b"VXSEAL1\n"));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(state.join("relay.key.sealed"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(!state.join("relay.pem.new").exists());
    assert!(!state.join("relay.key.sealed.tmp").exists());
    let trail = audit(&lab);
    assert!(
        trail
            .iter()
            .any(|e| e.0 == "relay_cert_renewed" && e.2 == SERVER_NAME && e.3 == serial1),
        "{trail:?}"
    );
    assert!(relay.warnings().is_empty(), "{:?}", relay.warnings());
    assert!(relay.stop().success(), "{}", relay.log_text());

    // A restart serves the renewed certificate from disk (due again only
    // 20 s after the renewal).
    let mut relay = lab.start_relay();
    let (s, _) = served(&lab, &probe);
    assert_eq!(
        s, serial1,
        "a restarted relay does not serve the renewed certificate"
    );
    assert!(!relay.log_text().contains("relay certificate renewed"));
    let left = metric(lab.relay_metrics, EXPIRY);
    assert!((left - (not_after1 - unix_now()) as f64).abs() <= 2.0);
    assert!(relay.stop().success(), "{}", relay.log_text());
}

/// A relay that was down past its certificate's expiry renews it at start,
/// before it serves anyone: a device connects without any change.
#[test]
fn relay_down_past_expiry_renews_at_start() {
    let lab = Lab::with_ca(
        "relay-cert-expired",
        "mode = \"none\"",
        "relay_cert_lifetime_s = 10",
    );
    let relay_pem = lab.dir.join("relay/relay.pem");
    let serial0 = cert_serial(&relay_pem);
    lab.gateway_config("probe", lab.quic_port, "");
    // Expired (notAfter is 10 s after init; one more second for the clock).
    std::thread::sleep(Duration::from_secs(11));
    let mut relay = lab.start_relay();
    let (s, not_after) = served(&lab, &lab.dir.join("probe"));
    assert_ne!(s, serial0, "an expired certificate was served");
    assert_eq!(s, cert_serial(&relay_pem));
    assert!(not_after > unix_now());
    assert!(relay.log_text().contains("relay certificate renewed"));
    assert!(metric(lab.relay_metrics, EXPIRY) > 0.0);
    relay.stop();
}
