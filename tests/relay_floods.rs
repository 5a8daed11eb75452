//! The relay under the attacks of issue 14, each replayed against a real
//! running relay: a handshake flood from many forged loopback sources while
//! 50 devices stream; a box that claims another box's extension after a
//! reconnect, and calls as it; a second session of one device; Retry above
//! the handshake threshold; a flood of refused enrollments against the
//! audit log.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};
use voxgate::media::flow;
use voxgate::media::rtp::Repr;
use voxgate::proto::control::{self, CallSetup, Direction, Enroll, ExtUp, FlowOpen, Message, Ping};
use voxgate_testkit::flood::{Flood, initial_packets};
use voxgate_testkit::lab::{Lab, metric};
use voxgate_testkit::procfs::status_kib;
use voxgate_testkit::session::{Session, runtime};

const SERVER: &str = "relay.voxgate.test";
const WAIT: Duration = Duration::from_secs(5);

fn relay_v4(lab: &Lab) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::LOCALHOST, lab.quic_port)
}

/// Open an uplink flow on `s`, then send `frames` datagrams 20 ms apart;
/// returns how many quinn took.
async fn stream(s: Session, ssrc: u32, frames: u32, sent: Arc<AtomicU64>) -> Session {
    let mut s = s;
    s.tx(&Message::FlowOpen(FlowOpen {
        flow: 0,
        dir: Direction::Up,
        ssrc,
        codec: "opus",
        frame_ms: 20,
    }))
    .await
    .unwrap();
    let payload = [0xfcu8; 80];
    let mut buf = [0u8; 1500];
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    for seq in 0..frames {
        tick.tick().await;
        let repr = Repr {
            marker: seq == 0,
            payload_type: 111,
            sequence: seq as u16,
            timestamp: seq * 960,
            ssrc,
        };
        let n = flow::encode(0, &repr, &payload, &mut buf).unwrap();
        if s.conn
            .send_datagram(bytes::Bytes::copy_from_slice(&buf[..n]))
            .is_ok()
        {
            sent.fetch_add(1, Relaxed);
        }
    }
    s
}

#[test]
fn a_handshake_flood_from_many_addresses_spares_streaming_devices_and_memory() {
    let mut lab = Lab::new("relay-flood", "mode = \"none\"");
    lab.set_relay_sections("enabled = false", "");
    let mut relay = lab.start_relay();
    let ids = lab.dev_identities("fl", 51);
    std::thread::sleep(Duration::from_millis(700)); // the relay's trust reload
    let addr = SocketAddr::V4(relay_v4(&lab));
    // Distinct connections' Initials, made before the flood.
    let packets = initial_packets(addr, SERVER, ids[0].1.clone(), 4000);
    let sources: Vec<Ipv4Addr> = (2..=201).map(|x| Ipv4Addr::new(127, 0, 0, x)).collect();
    const FLOOD_PER_S: u32 = 1000;
    const FRAMES: u32 = 300; // 6 s of 20 ms frames
    let rt = runtime();
    let (sent, received, late_ok, flood_sent, rss_before, rss_peak) = rt.block_on(async {
        let mut sessions = Vec::new();
        for (id, cfg) in &ids[..50] {
            sessions.push(
                Session::open_with(&lab, cfg.clone(), id)
                    .await
                    .unwrap_or_else(|e| panic!("{id}: {e}")),
            );
        }
        let pid = relay.pid();
        let rss_before = status_kib(pid, "VmRSS").unwrap();
        let d0 = metric(lab.relay_metrics, "voxgate_relay_datagrams_total");
        let flood = Flood::start(
            relay_v4(&lab),
            packets,
            sources,
            FLOOD_PER_S,
            Duration::from_secs(8),
        );
        let sent = Arc::new(AtomicU64::new(0));
        let streams: Vec<_> = sessions
            .into_iter()
            .enumerate()
            .map(|(i, s)| tokio::spawn(stream(s, 1000 + i as u32, FRAMES, sent.clone())))
            .collect();
        // A device that connects in the middle of the flood gets in
        // (through the Retry).
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (late_id, late_cfg) = ids[50].clone();
        let late_ok = Session::open_with(&lab, late_cfg, &late_id).await;
        let mut rss_peak = rss_before;
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(4) {
            rss_peak = rss_peak.max(status_kib(pid, "VmRSS").unwrap_or(0.0));
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let mut kept = Vec::new();
        for s in streams {
            kept.push(s.await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let received = metric(lab.relay_metrics, "voxgate_relay_datagrams_total") - d0;
        rss_peak = rss_peak.max(status_kib(pid, "VmRSS").unwrap_or(0.0));
        let flood_sent = flood.stop();
        drop(kept);
        (
            sent.load(Relaxed),
            received,
            late_ok.map(|_| ()),
            flood_sent,
            rss_before,
            rss_peak,
        )
    });
    relay.assert_running();
    let loss = 1.0 - received / sent as f64;
    let retried = metric(lab.relay_metrics, "voxgate_relay_handshakes_retried_total");
    eprintln!(
        "flood: {flood_sent} forged handshakes from 200 addresses ({FLOOD_PER_S}/s), {retried} retried; \
         50 devices sent {sent} datagrams, relay received {received} (loss {:.3}%); \
         relay VmRSS {rss_before:.0} KiB before, {rss_peak:.0} KiB peak",
        loss * 100.0
    );
    assert_eq!(sent, 50 * u64::from(FRAMES));
    assert!(loss < 0.01, "loss {:.3}% (1% allowed)", loss * 100.0);
    assert!(flood_sent > 4000, "the flood sent only {flood_sent}");
    assert!(
        retried > flood_sent as f64 * 0.8,
        "only {retried} of {flood_sent} forged handshakes were sent a Retry"
    );
    assert!(
        rss_peak - rss_before < 48.0 * 1024.0,
        "relay memory grew by {:.0} KiB under the flood",
        rss_peak - rss_before
    );
    late_ok.expect("a device connecting during the flood");
    // Recording is off unless the config asks: 51 sessions, no file.
    assert!(lab.recordings().is_empty(), "{:?}", lab.recordings());
}

#[test]
fn a_second_session_of_a_device_closes_the_first() {
    let lab = Lab::new("relay-dup-session", "mode = \"none\"");
    let _relay = lab.start_relay();
    let ids = lab.dev_identities("dup", 1);
    std::thread::sleep(Duration::from_millis(700));
    let (id, cfg) = ids[0].clone();
    runtime().block_on(async {
        let first = Session::open_with(&lab, cfg.clone(), &id).await.unwrap();
        let mut second = Session::open_with(&lab, cfg, &id).await.unwrap();
        let why = first
            .closed_within(WAIT)
            .await
            .expect("the first session was not closed");
        assert!(why.contains("replaced"), "{why}");
        // The second one is the device's session now.
        second.tx(&Message::Ping(Ping { id: 5 })).await.unwrap();
        let pong = second
            .expect(WAIT, |m| {
                matches!(m, Message::Pong(p) if p.id == 5).then_some(())
            })
            .await;
        assert!(pong.is_some(), "the second session does not answer");
        assert_eq!(
            metric(lab.relay_metrics, "voxgate_relay_sessions_replaced_total"),
            1.0
        );
        assert_eq!(
            metric(lab.relay_metrics, "voxgate_relay_sessions_active"),
            1.0
        );
    });
}

/// No `error` before the answer to a ping: every message sent before it
/// was taken.
async fn accepted(s: &mut Session, id: u64) -> Result<(), String> {
    s.tx(&Message::Ping(Ping { id })).await?;
    s.expect(WAIT, |m| match m {
        Message::Error(e) => Some(Err(e.code.to_string())),
        Message::Pong(p) if p.id == id => Some(Ok(())),
        _ => None,
    })
    .await
    .unwrap_or_else(|| Err("no pong".into()))
}

#[test]
fn a_box_cannot_claim_another_boxs_extension_after_a_reconnect_nor_call_as_it() {
    let lab = Lab::new("relay-ext-owner", "mode = \"none\"");
    let mut relay = lab.start_relay();
    let ids = lab.dev_identities("box", 2);
    std::thread::sleep(Duration::from_millis(700));
    let ((a, acfg), (b, bcfg)) = (ids[0].clone(), ids[1].clone());
    runtime().block_on(async {
        let mut sa = Session::open_with(&lab, acfg.clone(), &a).await.unwrap();
        sa.tx(&Message::ExtUp(ExtUp { ext: "201" })).await.unwrap();
        assert_eq!(accepted(&mut sa, 1).await, Ok(()));
        // Box A goes away; box B connects and claims A's extension.
        sa.conn.close(0u32.into(), b"bye");
        drop(sa);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut sb = Session::open_with(&lab, bcfg, &b).await.unwrap();
        sb.tx(&Message::ExtUp(ExtUp { ext: "201" })).await.unwrap();
        assert_eq!(accepted(&mut sb, 2).await, Err("ext_conflict".into()));
        sb.tx(&Message::ExtUp(ExtUp { ext: "301" })).await.unwrap();
        assert_eq!(accepted(&mut sb, 3).await, Ok(()));
        // B calls the echo service as A's phone: refused.
        sb.tx(&Message::CallSetup(CallSetup {
            call: 1,
            to: "900",
            from: "201",
            flow: 40,
            ssrc: 9,
        }))
        .await
        .unwrap();
        assert_eq!(sb.next_error(WAIT).await.as_deref(), Some("bad_from"));
        // As its own phone: answered.
        sb.tx(&Message::CallSetup(CallSetup {
            call: 2,
            to: "900",
            from: "301",
            flow: 41,
            ssrc: 10,
        }))
        .await
        .unwrap();
        let answered = sb
            .expect(WAIT, |m| match m {
                Message::CallAnswer(c) if c.call == 2 => Some(Ok(c.call)),
                Message::CallEnd(c) if c.call == 2 => Some(Err(c.call)),
                _ => None,
            })
            .await;
        assert_eq!(answered, Some(Ok(2)));
        // A comes back: its extension is still its own.
        let mut sa = Session::open_with(&lab, acfg, &a).await.unwrap();
        sa.tx(&Message::ExtUp(ExtUp { ext: "201" })).await.unwrap();
        assert_eq!(accepted(&mut sa, 4).await, Ok(()));
        let owners = voxgate_testkit::enroll::registry(&lab)
            .extension_owners()
            .unwrap();
        assert_eq!(
            owners,
            vec![("201".into(), a.clone()), ("301".into(), b.clone())]
        );
        // The phone moves to box B: the operator releases 201 (A is gone).
        sa.conn.close(0u32.into(), b"bye");
        drop(sa);
        let out = lab.relay_cmd(&["ext", "release", "201"]);
        assert!(out.status.success(), "{out:?}");
        tokio::time::sleep(Duration::from_millis(800)).await;
        sb.tx(&Message::ExtUp(ExtUp { ext: "201" })).await.unwrap();
        assert_eq!(accepted(&mut sb, 5).await, Ok(()));
    });
    relay.assert_running();
    let audit = voxgate_testkit::enroll::audit(&lab);
    assert!(
        audit
            .iter()
            .any(|e| e.0 == "extension_released" && e.2 == a && e.3 == "201"),
        "{audit:?}"
    );
}

/// One enrollment attempt with a wrong token; `true` when the relay
/// answered (a refusal, or a close), `false` when it hung.
async fn bad_enrollment(
    relay: SocketAddrV4,
    verifier: Arc<voxgate::transport::tls::PinnedCaVerifier>,
    i: u32,
) -> bool {
    let cfg = voxgate::transport::tls::enroll_client_config(verifier).unwrap();
    let ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let attempt = async {
        let conn = ep
            .connect_with(cfg, SocketAddr::V4(relay), SERVER)
            .unwrap()
            .await
            .map_err(|e| e.to_string())?;
        let (mut send, recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        let mut buf = [0u8; control::MAX_MESSAGE + control::PREFIX];
        let device = format!("bad-{i}");
        let n = control::encode(
            &Message::Enroll(Enroll {
                token: "vxt_not-a-token",
                device: &device,
                csr: "AAAA",
            }),
            &mut buf,
        )
        .unwrap();
        send.write_all(&buf[..n]).await.map_err(|e| e.to_string())?;
        let mut reader = voxgate::transport::framed::FrameReader::new(recv);
        let _ = reader.next(|m| matches!(m, Message::Error(_))).await;
        Ok::<_, String>(())
    };
    let done = tokio::time::timeout(Duration::from_secs(10), attempt)
        .await
        .is_ok();
    ep.close(0u32.into(), b"");
    done
}

#[test]
fn retry_starts_above_the_threshold_and_refused_enrollments_leave_a_bounded_audit() {
    let mut lab = Lab::new("relay-retry-audit", "mode = \"none\"");
    lab.set_relay_sections("enabled = false", "retry_above_handshakes_per_s = 5");
    let mut relay = lab.start_relay();
    let before = voxgate_testkit::enroll::audit(&lab).len();
    let fp = voxgate_testkit::enroll::fingerprint(&lab);
    let verifier = voxgate::transport::tls::PinnedCaVerifier::new(&fp).unwrap();
    const ATTEMPTS: u32 = 200;
    let answered = runtime().block_on(async {
        let mut answered = 0;
        for batch in 0..ATTEMPTS / 8 {
            let mut set = tokio::task::JoinSet::new();
            for k in 0..8 {
                set.spawn(bad_enrollment(
                    relay_v4(&lab),
                    verifier.clone(),
                    batch * 8 + k,
                ));
            }
            while let Some(r) = set.join_next().await {
                answered += u32::from(r.unwrap());
            }
        }
        answered
    });
    relay.assert_running();
    let retried = metric(lab.relay_metrics, "voxgate_relay_handshakes_retried_total");
    let added = voxgate_testkit::enroll::audit(&lab).len() - before;
    eprintln!(
        "{ATTEMPTS} refused enrollments: {answered} answered, {retried} handshakes retried, {added} audit rows"
    );
    assert_eq!(answered, ATTEMPTS, "every attempt gets an answer");
    assert!(retried > 0.0, "no Retry above 5 handshakes/s");
    // Without the rate limit: one row per attempt. With it: 30 a minute
    // (the test may straddle a minute).
    assert!(added <= 61, "{added} audit rows for {ATTEMPTS} refusals");
}

#[test]
fn recordings_past_their_age_or_the_total_size_are_swept() {
    let mut lab = Lab::new("relay-retention", "mode = \"none\"");
    // 0.000002 GiB: 2,147 bytes.
    lab.set_relay_sections(
        "enabled = true\nmax_age_days = 1\nmax_total_gib = 0.000002",
        "",
    );
    let dir = lab.dir.join("recordings").join("gw-x");
    std::fs::create_dir_all(&dir).unwrap();
    let file = |name: &str, bytes: usize, age: &str| {
        let p = dir.join(name);
        std::fs::write(&p, vec![0u8; bytes]).unwrap();
        let ok = std::process::Command::new("touch")
            .args(["-d", age])
            .arg(&p)
            .status()
            .unwrap()
            .success();
        assert!(ok, "touch -d {age}");
        p
    };
    let old = file("old.ogg", 100, "2 days ago");
    let a = file("a.ogg", 1000, "3 hours ago");
    let b = file("b.ogg", 1000, "2 hours ago");
    let c = file("c.ogg", 1000, "1 hour ago");
    let mut relay = lab.start_relay();
    voxgate_testkit::lab::wait_for(WAIT, "the sweep", || !old.exists() && !a.exists());
    assert!(b.exists() && c.exists(), "the newest that fit were kept");
    voxgate_testkit::lab::wait_for(WAIT, "the metric", || {
        metric(lab.relay_metrics, "voxgate_relay_recordings_deleted_total") == 2.0
    });
    relay.assert_running();
}

#[test]
fn a_device_is_held_to_its_daily_quotas_of_renewals_and_recording() {
    let mut lab = Lab::new("relay-quotas", "mode = \"none\"");
    lab.set_relay_sections(
        "enabled = true\nper_device_mib_per_day = 1",
        "renewals_per_device_day = 2",
    );
    let mut relay = lab.start_relay();
    let ids = lab.dev_identities("quota", 2);
    std::thread::sleep(Duration::from_millis(700));
    let (id, cfg) = ids[0].clone();
    let (rec_id, rec_cfg) = ids[1].clone();
    let ca = lab.dir.join(&id).join("ca.pem");
    runtime().block_on(async {
        // Renewals: each from a new session on the certificate the last
        // one gave (a session may renew once per 5 s).
        let mut s = Session::open_with(&lab, cfg, &id).await.unwrap();
        for n in 0..3 {
            let got = s.renew().await;
            if n < 2 {
                let (cert, key) = got.unwrap_or_else(|e| panic!("renewal {n}: {e}"));
                let dir = lab.dir.join(format!("{id}-r{n}"));
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(dir.join("device.pem"), cert).unwrap();
                voxgate_testkit::enroll::secret_file(&dir, "device.key", &key);
                std::fs::copy(&ca, dir.join("ca.pem")).unwrap();
                s = Session::open(&lab, &dir, &id).await.unwrap();
            } else {
                let e = got.expect_err("a third renewal in a day");
                assert!(e.contains("renew_refused"), "{e}");
            }
        }
        // Recording: 1 MiB a day; 1,400 datagrams of 1,000 bytes go over.
        let mut r = Session::open_with(&lab, rec_cfg, &rec_id).await.unwrap();
        r.tx(&Message::FlowOpen(FlowOpen {
            flow: 0,
            dir: Direction::Up,
            ssrc: 7,
            codec: "opus",
            frame_ms: 20,
        }))
        .await
        .unwrap();
        assert_eq!(accepted(&mut r, 1).await, Ok(()));
        let payload = [0xfcu8; 1000];
        let mut buf = [0u8; 1500];
        for seq in 0..1400u32 {
            let repr = Repr {
                marker: seq == 0,
                payload_type: 111,
                sequence: seq as u16,
                timestamp: seq * 960,
                ssrc: 7,
            };
            let n = flow::encode(0, &repr, &payload, &mut buf).unwrap();
            let _ = r
                .conn
                .send_datagram(bytes::Bytes::copy_from_slice(&buf[..n]));
            if seq % 50 == 49 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        voxgate_testkit::lab::wait_for(WAIT, "the quota stop", || {
            metric(
                lab.relay_metrics,
                "voxgate_relay_recording_quota_stops_total",
            ) >= 1.0
        });
    });
    relay.assert_running();
    let log = voxgate_testkit::enroll::audit(&lab);
    assert!(
        log.iter()
            .any(|e| e.0 == "renew_rejected" && e.2 == id && e.3.contains("daily quota")),
        "{log:?}"
    );
    let recs = lab.recordings();
    let bytes: u64 = recs
        .iter()
        .map(|p| std::fs::metadata(p).map_or(0, |m| m.len()))
        .sum();
    assert!(
        bytes <= (1 << 20) + 64 * 1024,
        "{bytes} bytes recorded past a 1 MiB quota"
    );
}

#[test]
fn enrollments_past_the_cap_are_turned_away_until_one_ends() {
    let mut lab = Lab::new("relay-enroll-cap", "mode = \"none\"");
    lab.set_relay_sections("enabled = false", "max_enrollments = 1");
    let _relay = lab.start_relay();
    let fp = voxgate_testkit::enroll::fingerprint(&lab);
    let verifier = voxgate::transport::tls::PinnedCaVerifier::new(&fp).unwrap();
    let relay = SocketAddr::V4(relay_v4(&lab));
    runtime().block_on(async {
        let connect = || async {
            let cfg = voxgate::transport::tls::enroll_client_config(verifier.clone()).unwrap();
            let ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
            let conn = ep.connect_with(cfg, relay, SERVER).unwrap().await.unwrap();
            (ep, conn)
        };
        // One enrollment that says nothing holds the only slot.
        let (_ep1, first) = connect().await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (_ep2, second) = connect().await;
        let why = tokio::time::timeout(WAIT, second.closed())
            .await
            .expect("the second enrollment was not turned away");
        assert!(why.to_string().contains("busy"), "{why}");
        assert_eq!(
            metric(lab.relay_metrics, "voxgate_relay_enrollments_busy_total"),
            1.0
        );
        // The slot is free again once the first one ends.
        first.close(0u32.into(), b"");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (_ep3, third) = connect().await;
        assert!(
            tokio::time::timeout(Duration::from_millis(500), third.closed())
                .await
                .is_err(),
            "the third enrollment was turned away"
        );
    });
}
