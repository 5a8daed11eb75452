//! Bad input gets a clear error and never a crash: config files through the
//! real binary, and malformed datagrams and control messages sent at a real
//! relay by a real QUIC client holding a valid certificate.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;
use voxgate::proto::control::{self, Hello, Message};
use voxgate::transport::tls;
use voxgate_testkit::lab::{Lab, bin, metric, test_dir};

fn run_with(cfg_text: &str, name: &str) -> (bool, String) {
    let dir = test_dir(name);
    let cfg = dir.join("voxgate.toml");
    std::fs::write(&cfg, cfg_text).unwrap();
    let out = Command::new(bin())
        .args(["run", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const BASE: &str = "device_id = \"gw-1\"\n[relay]\naddress = \"127.0.0.1:9\"\nca = \"ca.pem\"\n[identity]\ncert = \"device.pem\"\nkey = \"device.key\"\n";

#[test]
fn config_unknown_key_is_named() {
    let (ok, err) = run_with(&format!("{BASE}[codec]\nbitrat = 24000\n"), "cfg-unknown");
    assert!(!ok);
    assert!(err.contains("voxgate.toml: key `codec"), "{err}");
    assert!(err.contains("unknown field `bitrat`"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn config_wrong_type_is_named() {
    let (ok, err) = run_with(&format!("{BASE}[codec]\nframe_ms = \"20ms\"\n"), "cfg-type");
    assert!(!ok);
    assert!(err.contains("key `codec.frame_ms`"), "{err}");
    assert!(err.contains("invalid type"), "{err}");
}

#[test]
fn config_missing_file_and_garbage() {
    let out = Command::new(bin())
        .args(["run", "--config", "/nonexistent/voxgate.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/nonexistent/voxgate.toml: cannot read"),
        "{err}"
    );
    let (ok, err) = run_with("\u{0}\u{1}binary garbage [[[", "cfg-garbage");
    assert!(!ok);
    assert!(err.contains("key `.`"), "{err}");
}

#[test]
fn config_unreachable_device_is_named_before_network() {
    let lab = Lab::new("cfg-device", "mode = \"none\"");
    let (cfg, _) = lab.gateway_config(
        "gw-dev",
        lab.quic_port,
        "[capture]\ndevice = \"no-such-mic\"\n",
    );
    let out = Command::new(bin())
        .args(["run", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("key `capture.device`"), "{err}");
    assert!(err.contains("`no-such-mic` not found"), "{err}");
    // It never got as far as the network: no connection attempt was logged.
    // (Paths are taken out first: a build directory may be named "relay...".)
    let dir = cfg.parent().unwrap().to_string_lossy().into_owned();
    let words = err.replace(&dir, "<dir>");
    assert!(!words.contains("relay"), "{err}");
}

/// Run `voxgate relay run` on `text`; it must fail, and stderr is returned.
fn relay_run_fails(text: &str) -> String {
    let dir = test_dir(&format!("relay-cfg-{}", fastrand::u32(..)));
    let cfg = dir.join("relay.toml");
    std::fs::write(&cfg, text).unwrap();
    let out = Command::new(bin())
        .args(["relay", "run", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success(), "relay accepted:\n{text}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn relay_config_errors_are_named() {
    const BASE: &str = "state_dir = \"s\"\nrecordings = \"r\"\n[privilege]\nstay_root = true\n";
    let err = relay_run_fails(&format!(
        "listen = \"127.0.0.1:1\"\n{BASE}[downlink]\nmode = \"file\"\n"
    ));
    assert!(err.contains("key `downlink.file`"), "{err}");
    let err = relay_run_fails(&format!("listen = \"localhost\"\n{BASE}"));
    assert!(err.contains("key `listen`"), "{err}");
    // A relay without a CA says how to make one.
    let err = relay_run_fails(&format!("listen = \"127.0.0.1:1\"\n{BASE}"));
    assert!(err.contains("voxgate relay init"), "{err}");
}

async fn connect(lab: &Lab, id: &str) -> quinn::Connection {
    lab.gateway_config(id, lab.quic_port, "");
    let gdir = lab.dir.join(id);
    let cfg = voxgate_testkit::lab::device_client_config(&gdir, id);
    let ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.connect_with(
        cfg,
        format!("127.0.0.1:{}", lab.quic_port).parse().unwrap(),
        "relay.voxgate.test",
    )
    .unwrap()
    .await
    .unwrap()
}

async fn hello(conn: &quinn::Connection, id: &str) -> (quinn::SendStream, quinn::RecvStream) {
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let mut buf = [0u8; 512];
    let n = control::encode(
        &Message::Hello(Hello {
            device: id,
            version: "test",
            caps: Default::default(),
        }),
        &mut buf,
    )
    .unwrap();
    send.write_all(&buf[..n]).await.unwrap();
    let mut got = vec![0u8; 256];
    let n = recv.read(&mut got).await.unwrap().unwrap();
    let (m, _) = control::decode_frame(&got[..n]).unwrap().unwrap();
    assert!(matches!(m, Message::Welcome(_)), "{m:?}");
    (send, recv)
}

/// The relay refuses with an error frame and closes with the reason; the
/// close may overtake the frame, so either one proves the refusal.
async fn expect_refusal(recv: &mut quinn::RecvStream, code: &str, reason: &str) {
    let mut got = vec![0u8; 512];
    match tokio::time::timeout(Duration::from_secs(3), recv.read(&mut got))
        .await
        .expect("no answer within 3 s")
    {
        Ok(Some(n)) => {
            let (m, _) = control::decode_frame(&got[..n]).unwrap().unwrap();
            let Message::Error(e) = m else {
                panic!("expected error, got {m:?}")
            };
            assert_eq!(e.code, code);
        }
        Ok(None) => panic!("stream finished without an answer"),
        Err(e) => assert!(format!("{e:?}").contains(reason), "{e:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_survives_malformed_datagrams_and_control() {
    let lab = Lab::new("relay-fuzz", "mode = \"echo\"");
    let mut relay = lab.start_relay();

    // 1. Malformed datagrams from an authenticated device.
    let conn = connect(&lab, "gw-bad").await;
    let (mut send, mut recv) = hello(&conn, "gw-bad").await;
    let garbage: [&[u8]; 6] = [
        &[],
        &[0x40],                                                 // truncated varint
        &[0x00, 0x40, 0, 0],                                     // RTP version 1
        &[0x00, 0x8f, 0x6f, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],       // CSRCs missing
        &[0x05, 0x80, 0x6f, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0xfc], // unopened flow 5
        &[0xff; 900],
    ];
    for _ in 0..50 {
        for g in garbage {
            let _ = conn.send_datagram(bytes::Bytes::copy_from_slice(g));
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(metric(lab.relay_metrics, "voxgate_relay_datagrams_malformed_total") >= 100.0);
    assert!(
        metric(
            lab.relay_metrics,
            "voxgate_relay_datagrams_unknown_flow_total"
        ) >= 50.0
    );
    relay.assert_running();

    // 2. An unknown control type gets an error answer.
    let body = br#"{"type":"launch","x":1}"#;
    let mut frame = (body.len() as u16).to_be_bytes().to_vec();
    frame.extend_from_slice(body);
    send.write_all(&frame).await.unwrap();
    let mut got = vec![0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(3), recv.read(&mut got))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let (m, _) = control::decode_frame(&got[..n]).unwrap().unwrap();
    let Message::Error(e) = m else {
        panic!("expected error, got {m:?}")
    };
    assert_eq!(e.code, "bad_message");
    assert!(
        e.message.contains("unknown control message type"),
        "{}",
        e.message
    );

    // 3. An oversize length prefix ends the session, not the relay.
    let conn2 = connect(&lab, "gw-big").await;
    let (mut send2, _recv2) = hello(&conn2, "gw-big").await;
    send2.write_all(&[0xff, 0xff, b'{']).await.unwrap();
    let reason = tokio::time::timeout(Duration::from_secs(5), conn2.closed())
        .await
        .unwrap();
    assert!(format!("{reason}").contains("protocol error"), "{reason}");

    // 4. A hello claiming another device's id is refused.
    let conn3 = connect(&lab, "gw-liar").await;
    let (mut send3, mut recv3) = conn3.open_bi().await.unwrap();
    let mut buf = [0u8; 256];
    let n = control::encode(
        &Message::Hello(Hello {
            device: "gw-bad",
            version: "t",
            caps: Default::default(),
        }),
        &mut buf,
    )
    .unwrap();
    send3.write_all(&buf[..n]).await.unwrap();
    expect_refusal(&mut recv3, "identity", "certificate names `gw-liar`").await;

    // 5. A client without a certificate never gets in.
    let ca = voxgate::pki::files::read_certs(&lab.dir.join("relay/ca.pem")).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca[0].clone()).unwrap();
    let mut anon = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    anon.alpn_protocols = vec![tls::ALPN.to_vec()];
    let qc = quinn::crypto::rustls::QuicClientConfig::try_from(anon).unwrap();
    let ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let res = ep
        .connect_with(
            quinn::ClientConfig::new(Arc::new(qc)),
            format!("127.0.0.1:{}", lab.quic_port).parse().unwrap(),
            "relay.voxgate.test",
        )
        .unwrap()
        .await;
    if let Ok(c) = res {
        // TLS 1.3 may complete on the client before the server rejects.
        let r = tokio::time::timeout(Duration::from_secs(5), c.closed())
            .await
            .unwrap();
        assert!(!format!("{r}").is_empty());
    }

    // The relay is still healthy and serves a well-behaved device.
    relay.assert_running();
    let ok = connect(&lab, "gw-good").await;
    let _streams = hello(&ok, "gw-good").await;
    assert!(metric(lab.relay_metrics, "voxgate_relay_sessions_total") >= 4.0);
    drop(ok);
    let status = relay.stop();
    assert!(
        status.success(),
        "relay exit: {status}; log:\n{}",
        relay.log_text()
    );
    let log = relay.log_text();
    assert!(!log.contains("panicked"), "{log}");
}
