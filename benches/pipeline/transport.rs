//! Diagnostic: the gateway's QUIC transport alone.

use super::*;

/// Diagnostic: the gateway's QUIC client on its own. The same code the
/// gateway runs (`voxgate::gateway::session`: quinn, mutual TLS, the
/// control handshake) on a one-worker tokio runtime like the gateway's,
/// connected to a release relay, sends the baseline's Opus packets as
/// RTP-over-QUIC datagrams from a plain thread, as the encoder thread hands
/// them over: once at one datagram per frame (sleeping in between) and once
/// as fast as quinn takes them. No audio device and no codec: what the
/// transport alone costs on this machine, paced and flat out.
pub(crate) fn transport_run(packets: &[Vec<u8>], codec: &CodecConfig, tck: f64) -> Value {
    use voxgate::gateway::session::{self, ClientParams, UPLINK_FLOW, Wiring};
    use voxgate::transport::link::ConnSlot;
    let lab = Lab::new("bench-quic", "mode = \"none\"");
    let mut relay = lab.start_relay();
    let (cfg_path, _) =
        lab.gateway_config("bench-quic", lab.quic_port, &capture_extra("voxcap", None));
    let cfg = GatewayConfig::load(&cfg_path).unwrap_or_else(|e| panic!("{e}"));
    let identity =
        voxgate::identity::backend::load(&cfg.device_id, &cfg.identity).expect("device identity");
    let roots = voxgate::gateway::roots::DeviceRoots::load(&cfg.relay.ca).expect("relay CA");
    let client_cfg =
        voxgate::transport::tls::client_config_with(roots.verifier(), identity.identity.as_ref())
            .expect("QUIC client config");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("quic-alone")
        .enable_all()
        .build()
        .expect("tokio runtime");
    let endpoint = {
        let _guard = rt.enter();
        quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            None,
            UdpSocket::bind("127.0.0.1:0").expect("UDP socket"),
            Arc::new(voxgate::gateway::runtime::GatewayRuntime),
        )
        .expect("QUIC endpoint")
    };
    let slot = Arc::new(ConnSlot::default());
    let (down_tx, _down_rx) = std::sync::mpsc::sync_channel(256);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let ssrc = 0x5eed_0001;
    let params = ClientParams {
        address: format!("127.0.0.1:{}", lab.quic_port),
        server_name: cfg.relay.server_name.clone(),
        device_id: cfg.device_id.clone(),
        ssrc,
        frame_ms: frame_ms(codec) as u16,
        renewal: None,
        roots,
    };
    let wiring = Wiring {
        slot: slot.clone(),
        down: down_tx,
        metrics: voxgate::gateway::metrics::GatewayMetrics::new(),
        calls: None,
    };
    let task = rt.spawn(session::run(
        endpoint,
        client_cfg,
        params,
        wiring,
        async move {
            let _ = stop_rx.await;
        },
    ));
    let mut seen = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    let conn = loop {
        if let Some(Some(c)) = slot.current_if_changed(&mut seen) {
            break c;
        }
        assert!(
            Instant::now() < deadline,
            "the QUIC client did not connect to the relay within 10 s:\n{}",
            tail(&relay.log_text(), 20)
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    let pid = std::process::id() as i32;
    // On-CPU ns and times scheduled in of the runtime's threads.
    // The runtime's threads: tid, and schedstat (on-CPU ns, wait ns, runs).
    let runtime_threads = || {
        thread_ns(pid)
            .into_iter()
            .filter(|(_, (name, _))| name.starts_with("quic-alone"))
            .map(|(tid, (_, v))| (tid, v))
            .collect::<Vec<_>>()
    };
    let workers = || {
        runtime_threads()
            .iter()
            .fold((0u64, 0u64), |a, (_, v)| (a.0 + v[0], a.1 + v[2]))
    };
    let received = || metric(lab.relay_metrics, "voxgate_relay_datagrams_total");
    let n = codec.frame_samples() as u32;
    let mut rtp = voxgate::media::sender::RtpSender::new(
        UPLINK_FLOW,
        voxgate::codec::OPUS_PAYLOAD_TYPE,
        ssrc,
        1,
        1,
    );
    let mut buf = vec![0u8; 1500];
    let mut out = Value::obj();
    // Flat out, every thread involved shares one CPU, so that a datagram
    // costs its work and a context switch, not a wake-up of an idle core.
    let cpu = std::thread::available_parallelism().map_or(0, |n| n.get() - 1);
    for (name, paced) in [("paced", true), ("flat_out_one_cpu", false)] {
        // Let the previous run's acknowledgements settle first.
        std::thread::sleep(Duration::from_millis(300));
        if !paced {
            for (tid, _) in runtime_threads() {
                pin(tid, cpu);
            }
        }
        let t0 = (
            Instant::now(),
            machine_ticks(),
            try_proc_ticks("self").unwrap_or(0),
        );
        let (r0, tx0) = (received(), conn.stats().frame_tx.datagram);
        let w0 = workers();
        let start = Instant::now();
        let (sender, handed) = std::thread::scope(|sc| {
            sc.spawn(|| {
                if !paced {
                    pin(0, cpu);
                }
                let s0 = this_thread_ns();
                let start = Instant::now();
                for (i, p) in packets.iter().enumerate() {
                    let len = rtp
                        .frame(p, n, &mut buf)
                        .expect("an Opus packet fits a datagram");
                    let _ = conn.send_datagram(bytes::Bytes::copy_from_slice(&buf[..len]));
                    if paced {
                        // As the encoder thread: sleep until the next frame.
                        let due = start + codec.frame * (i as u32 + 1);
                        if let Some(d) = due.checked_duration_since(Instant::now()) {
                            std::thread::sleep(d);
                        }
                    } else {
                        // Each datagram in a packet of its own, as in real
                        // time: the next one only once quinn has sent this
                        // one (queued together, they would share packets).
                        let want = tx0 + i as u64 + 1;
                        let give_up = Instant::now() + Duration::from_secs(1);
                        while conn.stats().frame_tx.datagram < want && Instant::now() < give_up {
                            std::thread::yield_now();
                        }
                    }
                }
                let handed = start.elapsed();
                ((this_thread_ns() - s0) as f64 / 1e9, handed)
            })
            .join()
            .expect("sender thread")
        });
        // Until quinn has put every datagram on the wire and its
        // acknowledgements are in (the relay acknowledges within 25 ms).
        let deadline = Instant::now() + Duration::from_secs(10);
        while conn.stats().frame_tx.datagram - tx0 < packets.len() as u64
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(100));
        let w1 = workers();
        let wall = start.elapsed().as_secs_f64();
        let other = other_since(t0, tck);
        let stats = conn.stats();
        let on_wire = stats.frame_tx.datagram - tx0;
        let got = received() - r0;
        let worker = (w1.0 - w0.0) as f64 / 1e9;
        let audio = packets.len() as f64 * codec.frame.as_secs_f64();
        let mut j = Value::obj();
        j.set("datagrams", packets.len())
            .set("on_wire", on_wire)
            .set("relay_received", got)
            .set("udp_sent_total", stats.udp_tx.datagrams)
            .set("audio_s", audio)
            .set("handed_over_s", handed.as_secs_f64())
            .set("wall_s", wall)
            .set("sender_cpu_s", sender)
            .set("runtime_cpu_s", worker)
            .set("cpu_s", sender + worker)
            .set("per_audio_s", (sender + worker) / audio)
            .set(
                "us_per_datagram",
                (sender + worker) * 1e6 / packets.len() as f64,
            )
            .set("runtime_runs_per_s", (w1.1 - w0.1) as f64 / wall.max(1e-9))
            .set("other_load_cores", other);
        out.set(name, j);
    }
    let _ = stop_tx.send(());
    let _ = rt.block_on(async { tokio::time::timeout(Duration::from_secs(3), task).await });
    let relay_exit = relay.stop();
    out.set("relay_exit_ok", relay_exit.success());
    out
}

/// Pins thread `tid` (0: the calling thread) to `cpu`, with taskset(1).
pub(crate) fn pin(tid: i32, cpu: usize) {
    let tid = if tid == 0 {
        std::fs::read_link("/proc/thread-self")
            .ok()
            .and_then(|l| l.file_name()?.to_str()?.parse().ok())
            .expect("/proc/thread-self names the thread")
    } else {
        tid
    };
    let ok = Command::new("taskset")
        .args(["-p", "-c", &cpu.to_string(), &tid.to_string()])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "taskset cannot pin thread {tid} to CPU {cpu}");
}
