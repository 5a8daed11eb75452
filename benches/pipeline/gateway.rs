//! Gateway runs: the file device (CPU, memory, latency, recording), playback
//! on, the paced PulseAudio microphone; the codec settings they check.

use super::*;

pub(crate) fn capture_extra(capture: &str, playback: Option<&str>) -> String {
    let pb = match playback {
        Some(dev) => format!("[playback]\nenabled = true\ndevice = \"{dev}\"\n"),
        None => "[playback]\nenabled = false\n".to_string(),
    };
    format!("[capture]\ndevice = \"{capture}\"\n{pb}{CODEC_TOML}")
}

pub(crate) fn gateway_env(extra: Vec<(String, String)>) -> Vec<(String, String)> {
    let mut env = extra;
    // The production level: `lab` writes `log = "debug"` into the config.
    env.push(("VOXGATE_LOG".into(), "info".into()));
    env
}

pub(crate) fn wait_metric(
    gw: &mut Proc,
    addr: SocketAddr,
    name: &str,
    at_least: f64,
    timeout: Duration,
    poll: Duration,
) -> f64 {
    let t0 = Instant::now();
    loop {
        gw.assert_running();
        let v = metric(addr, name);
        if v >= at_least {
            return v;
        }
        assert!(
            t0.elapsed() < timeout,
            "timed out waiting for {name} >= {at_least} (now {v}); gateway log:\n{}",
            tail(&gw.log_text(), 30)
        );
        std::thread::sleep(poll);
    }
}

pub(crate) fn tail(s: &str, n: usize) -> String {
    let l: Vec<&str> = s.lines().collect();
    l[l.len().saturating_sub(n)..].join("\n")
}

/// A CPU snapshot of the gateway, the relay, this process and the machine.
pub(crate) struct Snap {
    pub(crate) at: Instant,
    pub(crate) gw_ticks: u64,
    pub(crate) gw_threads: BTreeMap<i32, (String, [u64; 3])>,
    pub(crate) relay_ticks: u64,
    pub(crate) self_ticks: u64,
    /// Other processes of the set-up (the PulseAudio daemon).
    pub(crate) extra_ticks: u64,
    pub(crate) machine: u64,
}

pub(crate) fn snap(gw: i32, relay: i32, extra: &[u32]) -> Snap {
    Snap {
        at: Instant::now(),
        gw_ticks: try_proc_ticks(gw).unwrap_or(0),
        gw_threads: thread_ns(gw),
        relay_ticks: try_proc_ticks(relay).unwrap_or(0),
        self_ticks: try_proc_ticks("self").unwrap_or(0),
        extra_ticks: extra.iter().filter_map(try_proc_ticks).sum(),
        machine: machine_ticks(),
    }
}

/// CPU between two snapshots: the gateway's (stat, and schedstat per
/// thread), and how busy the rest of the machine was.
pub(crate) fn cpu_between(a: &Snap, b: &Snap, audio_s: f64, tck: f64) -> Value {
    let wall = (b.at - a.at).as_secs_f64();
    let gw_stat = b.gw_ticks.saturating_sub(a.gw_ticks) as f64 / tck;
    let relay = b.relay_ticks.saturating_sub(a.relay_ticks) as f64 / tck;
    // Per thread name: CPU s, run-queue wait s, times scheduled in.
    let mut threads = BTreeMap::<String, [f64; 3]>::new();
    let mut sched = 0.0;
    for (tid, (name, v1)) in &b.gw_threads {
        let v0 = a.gw_threads.get(tid).map(|t| t.1).unwrap_or([0; 3]);
        let d = |i: usize| v1[i].saturating_sub(v0[i]) as f64;
        sched += d(0) / 1e9;
        let e = threads.entry(name.clone()).or_default();
        e[0] += d(0) / 1e9;
        e[1] += d(1) / 1e9;
        e[2] += d(2);
    }
    let exited = a
        .gw_threads
        .keys()
        .filter(|t| !b.gw_threads.contains_key(t))
        .count();
    let machine_busy = b.machine.saturating_sub(a.machine) as f64 / tck;
    let ours = gw_stat
        + relay
        + (b.self_ticks.saturating_sub(a.self_ticks) + b.extra_ticks.saturating_sub(a.extra_ticks))
            as f64
            / tck;
    let mut tj: Vec<(String, [f64; 3])> = threads.into_iter().collect();
    tj.sort_by(|x, y| y.1[0].total_cmp(&x.1[0]));
    let mut j = Value::obj();
    j.set("wall_s", wall)
        .set("audio_s", audio_s)
        .set("cpu_s_stat", gw_stat)
        .set("cpu_s_schedstat", sched)
        .set("per_audio_s_stat", gw_stat / audio_s)
        .set("per_audio_s_schedstat", sched / audio_s)
        .set("threads_exited", exited)
        .set(
            "threads",
            Value::Array(
                tj.iter()
                    .map(|(n, v)| {
                        let mut o = Value::obj();
                        o.set("thread", n.as_str())
                            .set("cpu_s", v[0])
                            .set("per_audio_s", v[0] / audio_s)
                            .set("runqueue_wait_s", v[1])
                            .set("wakeups_per_s", v[2] / wall.max(1e-9))
                            .set("cpu_us_per_wakeup", (v[2] > 0.0).then(|| v[0] * 1e6 / v[2]));
                        o
                    })
                    .collect(),
            ),
        )
        .set("relay_cpu_s", relay)
        .set(
            "other_load_cores",
            ((machine_busy - ours) / wall.max(1e-9)).max(0.0),
        );
    j
}

/// Run 1: the file device, playback off. CPU, memory, latency, recording.
pub(crate) fn file_run(
    fx: &Fixture,
    codec: &CodecConfig,
    tck: f64,
    binary: Option<&Path>,
) -> (Value, Option<PathBuf>) {
    // Every run gets a lab of its own: a lab directory is wiped when another
    // one of the same name is made, and PESQ reads the recording of the kept
    // file run after the repeated and the static runs.
    static RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let kind = if binary.is_some() { "static" } else { "file" };
    let lab = Lab::new(&format!("bench-{kind}{n}"), "mode = \"none\"");
    let devs = AlsaFileDevices::new(&lab.dir, Some(&fx.raw), None);
    let mut relay = lab.start_relay();
    let (cfg, m) = lab.gateway_config("bench-gw", lab.quic_port, &capture_extra("voxcap", None));
    check_codec(&cfg, codec);
    let mut gw = match binary {
        Some(b) => lab.start_gateway_with(b, &cfg, &gateway_env(devs.env())),
        None => lab.start_gateway(&cfg, &gateway_env(devs.env())),
    };
    let gw_pid = gw.pid();
    wait_metric(
        &mut gw,
        m,
        "voxgate_frames_sent_total",
        1.0,
        Duration::from_secs(20),
        Duration::from_millis(10),
    );
    let text0 = scrape(m).unwrap_or_default();
    let s0 = snap(gw_pid, relay.pid(), &[]);
    let get = |t: &str, n: &str| voxgate::telemetry::metrics::scrape_value(t, n).unwrap_or(0.0);
    let (c0, f0) = (
        get(&text0, "voxgate_frames_captured_total"),
        get(&text0, "voxgate_frames_sent_total"),
    );
    // Memory after ~10 s of streaming (reading /proc costs the gateway nothing).
    while s0.at.elapsed() < RSS_AFTER {
        gw.assert_running();
        std::thread::sleep(Duration::from_millis(100));
    }
    let mem = memory_json(&gw_pid.to_string());
    // Few scrapes until the end of the file: each one costs the gateway CPU.
    let left = (fx.frames as f64 - c0).max(0.0) * codec.frame.as_secs_f64();
    let near = s0.at + Duration::from_secs_f64((left - 1.0).max(0.0));
    while Instant::now() < near {
        gw.assert_running();
        std::thread::sleep(Duration::from_millis(100));
    }
    let c1 = wait_metric(
        &mut gw,
        m,
        "voxgate_frames_captured_total",
        fx.frames as f64,
        Duration::from_secs_f64(left + 20.0),
        Duration::from_millis(50),
    );
    let s1 = snap(gw_pid, relay.pid(), &[]);
    let text1 = scrape(m).unwrap_or_default();
    let f1 = get(&text1, "voxgate_frames_sent_total");
    let audio_s = (c1 - c0) * codec.frame.as_secs_f64();
    let mut cpu = cpu_between(&s0, &s1, audio_s, tck);
    cpu.set("frames_captured", c1 - c0)
        .set("frames_sent", f1 - f0)
        .set(
            "frames_unsent_total",
            get(&text1, "voxgate_frames_unsent_total"),
        )
        .set(
            "overrun_samples_total",
            get(&text1, "voxgate_capture_overrun_samples_total"),
        );
    let latency = latency_json(&text1);
    let stopped = gw.stop();
    let relay_stopped = relay.stop();
    let recs = lab.recordings();
    let mut j = Value::obj();
    j.set("cpu", cpu)
        .set("memory", mem)
        .set("latency", latency)
        .set("gateway_exit_ok", stopped.success())
        .set("relay_exit_ok", relay_stopped.success())
        .set("recordings", recs.len());
    let rec = (recs.len() == 1).then(|| recs[0].clone());
    (j, rec)
}

/// Run 2: playback on (echo relay, `voxplay`): memory, and CPU with both directions.
pub(crate) fn echo_run(
    fx: &Fixture,
    codec: &CodecConfig,
    tck: f64,
    binary: Option<&Path>,
) -> Value {
    let kind = if binary.is_some() { "static" } else { "dyn" };
    let lab = Lab::new(&format!("bench-echo-{kind}"), "mode = \"echo\"");
    let out = lab.dir.join("speaker.raw");
    let devs = AlsaFileDevices::new(&lab.dir, Some(&fx.raw), Some(&out));
    let mut relay = lab.start_relay();
    let (cfg, m) = lab.gateway_config(
        "bench-gw-echo",
        lab.quic_port,
        &capture_extra("voxcap", Some("voxplay")),
    );
    check_codec(&cfg, codec);
    let mut gw = match binary {
        Some(b) => lab.start_gateway_with(b, &cfg, &gateway_env(devs.env())),
        None => lab.start_gateway(&cfg, &gateway_env(devs.env())),
    };
    let pid = gw.pid();
    wait_metric(
        &mut gw,
        m,
        "voxgate_downlink_packets_received_total",
        1.0,
        Duration::from_secs(20),
        Duration::from_millis(10),
    );
    let text0 = scrape(m).unwrap_or_default();
    let s0 = snap(pid, relay.pid(), &[]);
    while s0.at.elapsed() < RSS_AFTER {
        gw.assert_running();
        std::thread::sleep(Duration::from_millis(100));
    }
    let s1 = snap(pid, relay.pid(), &[]);
    let mem = memory_json(&pid.to_string());
    let text1 = scrape(m).unwrap_or_default();
    let get = |t: &str, n: &str| voxgate::telemetry::metrics::scrape_value(t, n).unwrap_or(0.0);
    let frames =
        get(&text1, "voxgate_frames_captured_total") - get(&text0, "voxgate_frames_captured_total");
    let mut cpu = cpu_between(&s0, &s1, frames * codec.frame.as_secs_f64(), tck);
    cpu.set(
        "downlink_packets",
        get(&text1, "voxgate_downlink_packets_received_total")
            - get(&text0, "voxgate_downlink_packets_received_total"),
    );
    let played = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0) as f64 / 96_000.0;
    let _ = gw.stop();
    let _ = relay.stop();
    let mut j = Value::obj();
    j.set("memory", mem)
        .set("cpu", cpu)
        .set("speaker_file_s", played);
    j
}

/// Run 3: the paced PulseAudio microphone: capture-to-send latency.
pub(crate) fn paced_run(fx: &Fixture, codec: &CodecConfig) -> Value {
    let lab = Lab::new("bench-paced", "mode = \"none\"");
    let pulse = PulseEnv::start(&lab.dir);
    let mut relay = lab.start_relay();
    let (cfg, m) = lab.gateway_config(
        "bench-gw-paced",
        lab.quic_port,
        &capture_extra("pulsemic", None),
    );
    check_codec(&cfg, codec);
    let mut gw = lab.start_gateway(&cfg, &gateway_env(pulse.env()));
    wait_metric(
        &mut gw,
        m,
        "voxgate_frames_sent_total",
        10.0,
        Duration::from_secs(20),
        Duration::from_millis(20),
    );
    let text0 = scrape(m).unwrap_or_default();
    let pulse_pid: Vec<u32> = pulse.daemon_pid().into_iter().collect();
    let s0 = snap(gw.pid(), relay.pid(), &pulse_pid);
    // Diagnostic, during the same 30 s: libopus in this process encoding one
    // frame every 20 ms (sleeping in between), i.e. with caches as cold as
    // a real-time encoder sees them. It uses ~1% of one core.
    let paced_baseline = paced_encode(fx.pcm.clone(), *codec);
    let mut player = ChildGuard(pulse.play_into_mic(&fx.wav));
    let status = wait_timeout(&mut player.0, Duration::from_secs_f64(fx.seconds + 20.0));
    let played = (Instant::now() - s0.at).as_secs_f64();
    let s1 = snap(gw.pid(), relay.pid(), &pulse_pid);
    let text1 = scrape(m).unwrap_or_default();
    let (pb_cpu, pb_audio) = paced_baseline.join().unwrap_or((f64::NAN, f64::NAN));
    std::thread::sleep(Duration::from_millis(500));
    gw.assert_running();
    let text = scrape(m).unwrap_or_default();
    let get = |t: &str, n: &str| voxgate::telemetry::metrics::scrape_value(t, n).unwrap_or(0.0);
    let sent = get(&text1, "voxgate_frames_sent_total") - get(&text0, "voxgate_frames_sent_total");
    let mut j = latency_json(&text);
    let mut pj = Value::obj();
    pj.set("cpu_s", pb_cpu)
        .set("audio_s", pb_audio)
        .set("per_audio_s", pb_cpu / pb_audio);
    j.set("paplay_ok", status.is_some_and(|s| s.success()))
        .set("paplay_s", played)
        .set("frames_sent", get(&text, "voxgate_frames_sent_total"))
        .set(
            "overrun_samples_total",
            get(&text, "voxgate_capture_overrun_samples_total"),
        )
        .set(
            "cpu",
            cpu_between(&s0, &s1, sent * codec.frame.as_secs_f64(), clk_tck()),
        )
        .set("libopus_paced_in_bench", pj);
    let _ = gw.stop();
    let _ = relay.stop();
    drop(pulse);
    j
}

/// libopus encoding the fixture in real time on its own thread: one frame,
/// then sleep until the next frame is due. Returns (CPU s, audio s).
pub(crate) fn paced_encode(
    pcm: Vec<i16>,
    codec: CodecConfig,
) -> std::thread::JoinHandle<(f64, f64)> {
    std::thread::spawn(move || {
        let n = codec.frame_samples();
        let mut enc = voxgate::codec::OpusEncoder::new(&codec).expect("encoder");
        let t0 = this_thread_ns();
        let start = Instant::now();
        let mut frames = 0u32;
        for f in pcm.chunks_exact(n) {
            std::hint::black_box(enc.encode(f).expect("encode"));
            frames += 1;
            let due = start + codec.frame * frames;
            if let Some(d) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(d);
            }
        }
        let t1 = this_thread_ns();
        (
            (t1 - t0) as f64 / 1e9,
            f64::from(frames) * codec.frame.as_secs_f64(),
        )
    })
}

/// The codec settings the gateway will run with, as the gateway reads them.
pub(crate) fn check_codec(cfg: &Path, codec: &CodecConfig) {
    let c = GatewayConfig::load(cfg)
        .unwrap_or_else(|e| panic!("{e}"))
        .codec;
    assert_eq!(
        (
            c.frame,
            c.bitrate,
            c.fec,
            c.dtx,
            c.expected_loss_percent,
            c.complexity
        ),
        (
            codec.frame,
            codec.bitrate,
            codec.fec,
            codec.dtx,
            codec.expected_loss_percent,
            codec.complexity
        ),
        "gateway config and baseline codec settings differ"
    );
}
