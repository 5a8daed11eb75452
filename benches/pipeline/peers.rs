//! Baselines and peers: in-process libopus, `opusenc`, GStreamer, ffmpeg.

use super::*;

/// `opusenc` (opus-tools, Debian's libopus) with the gateway's settings:
/// VoIP application, constrained VBR, FEC, expected loss, DTX, complexity.
pub(crate) fn opusenc_matched(c: &CodecConfig, wav: &Path, out: &str) -> Vec<String> {
    let mut v: Vec<String> = [
        "opusenc",
        "--quiet",
        "--bitrate",
        &kbps(c),
        "--framesize",
        &frame_ms(c).to_string(),
        "--comp",
        &c.complexity.to_string(),
        "--cvbr",
        "--expect-loss",
        &c.expected_loss_percent.to_string(),
        "--set-ctl-int",
        &format!("{OPUS_SET_INBAND_FEC}={}", u8::from(c.fec)),
        "--set-ctl-int",
        &format!("{OPUS_SET_DTX}={}", u8::from(c.dtx)),
        "--set-ctl-int",
        &format!("{OPUS_SET_APPLICATION}={OPUS_APPLICATION_VOIP}"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.push(wav.display().to_string());
    v.push(out.to_string());
    v
}

pub(crate) fn gst_cmd(c: &CodecConfig, wav: &Path, port: u16, sync: bool) -> Vec<String> {
    [
        "gst-launch-1.0".to_string(),
        "-q".into(),
        "filesrc".into(),
        format!("location={}", wav.display()),
        "!".into(),
        "wavparse".into(),
        "!".into(),
        "audioconvert".into(),
        "!".into(),
        "audioresample".into(),
        "!".into(),
        "audio/x-raw,rate=48000,channels=1".into(),
        "!".into(),
        "opusenc".into(),
        format!("bitrate={}", c.bitrate),
        format!("frame-size={}", frame_ms(c)),
        "audio-type=voice".into(),
        format!("inband-fec={}", c.fec),
        format!("packet-loss-percentage={}", c.expected_loss_percent),
        format!("complexity={}", c.complexity),
        "bitrate-type=constrained-vbr".into(),
        format!("dtx={}", c.dtx),
        "!".into(),
        "rtpopuspay".into(),
        "!".into(),
        "udpsink".into(),
        "host=127.0.0.1".into(),
        format!("port={port}"),
        format!("sync={sync}"),
    ]
    .to_vec()
}

pub(crate) fn ffmpeg_cmd(c: &CodecConfig, wav: &Path, port: u16, realtime: bool) -> Vec<String> {
    let mut v: Vec<String> = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    if realtime {
        v.push("-re".into());
    }
    v.extend([
        "-i".to_string(),
        wav.display().to_string(),
        "-ac".into(),
        "1".into(),
        "-ar".into(),
        "48000".into(),
        "-c:a".into(),
        "libopus".into(),
        "-b:a".into(),
        format!("{}k", kbps(c)),
        "-frame_duration".into(),
        frame_ms(c).to_string(),
        "-application".into(),
        "voip".into(),
        // Stream-qualified: unqualified `-fec` is taken by the RTP muxer.
        "-fec:a".into(),
        u8::from(c.fec).to_string(),
        "-packet_loss:a".into(),
        c.expected_loss_percent.to_string(),
        "-vbr:a".into(),
        "constrained".into(),
        "-compression_level:a".into(),
        c.complexity.to_string(),
        "-f".into(),
        "rtp".into(),
        format!("rtp://127.0.0.1:{port}"),
    ]);
    v
}

pub(crate) fn tool_version(argv: &[&str]) -> String {
    Command::new(argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .output()
        .ok()
        .map(|o| {
            let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
            s.push_str(&String::from_utf8_lossy(&o.stderr));
            s.lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .unwrap_or_else(|| "not found".into())
}

/// libopus (the build the gateway links) encoding the fixture in this
/// thread, as fast as possible: CPU seconds of each repetition. Also
/// returns the packets of the last repetition.
pub(crate) fn baseline_encode(fx: &Fixture, codec: &CodecConfig) -> (Vec<f64>, Vec<Vec<u8>>) {
    let n = codec.frame_samples();
    let mut runs = Vec::new();
    let mut packets = Vec::new();
    // One untimed warm-up pass (page faults, caches), then the timed ones.
    for rep in 0..=BASELINE_REPS {
        let mut enc = voxgate::codec::OpusEncoder::new(codec).expect("encoder");
        packets.clear();
        let t0 = this_thread_ns();
        for f in fx.pcm.chunks_exact(n) {
            let p = enc.encode(f).expect("encode");
            packets.push(std::hint::black_box(p).to_vec());
        }
        let t1 = this_thread_ns();
        if rep > 0 {
            runs.push((t1 - t0) as f64 / 1e9);
        }
    }
    (runs, packets)
}

/// Builds a peer's command line for an input file and a UDP port.
pub(crate) type Build = Box<dyn Fn(&Path, u16) -> Vec<String>>;

pub(crate) struct PeerRuns {
    pub(crate) long: Vec<Timed>,
    pub(crate) short: Vec<Timed>,
    pub(crate) packets_per_long_run: f64,
}

pub(crate) fn peer_json(
    name: &str,
    lib: &str,
    cmd: &[String],
    r: &PeerRuns,
    fx: &Fixture,
) -> Value {
    let long: Vec<f64> = r.long.iter().map(Timed::cpu).collect();
    let short: Vec<f64> = r.short.iter().map(Timed::cpu).collect();
    let (ml, ms) = (median(&long), median(&short));
    let mut j = Value::obj();
    j.set("name", name)
        .set("libopus", lib)
        .set("command", cmd.join(" "))
        .set("cpu_s_runs", nums(&long))
        .set(
            "wall_s_runs",
            nums(&r.long.iter().map(|t| t.wall).collect::<Vec<_>>()),
        )
        .set("short_cpu_s_runs", nums(&short))
        .set("cpu_s", ml)
        .set("short_cpu_s", ms)
        .set("per_audio_s_total", ml / fx.seconds)
        .set(
            "per_audio_s_marginal",
            (ml - ms) / (fx.seconds - fx.short_seconds),
        )
        .set(
            "startup_cpu_s_est",
            ms - (ml - ms) / (fx.seconds - fx.short_seconds) * fx.short_seconds,
        )
        .set(
            "packets_per_run",
            (r.packets_per_long_run > 0.0).then_some(r.packets_per_long_run),
        );
    j
}

pub(crate) fn run_peer(
    build: &dyn Fn(&Path, u16) -> Vec<String>,
    fx: &Fixture,
    scratch: &Path,
) -> Result<(PeerRuns, Vec<String>), String> {
    run_peer_reps(build, fx, scratch, PEER_REPS)
}

pub(crate) fn run_peer_reps(
    build: &dyn Fn(&Path, u16) -> Vec<String>,
    fx: &Fixture,
    scratch: &Path,
    reps: usize,
) -> Result<(PeerRuns, Vec<String>), String> {
    let sink = UdpSink::new();
    let mut long = Vec::new();
    let mut short = Vec::new();
    let before = sink.count();
    for _ in 0..reps {
        long.push(timed(
            &build(&fx.wav, sink.port),
            scratch,
            Duration::from_secs(60),
        )?);
    }
    std::thread::sleep(Duration::from_millis(200));
    let sent = (sink.count() - before) as f64 / reps as f64;
    for _ in 0..reps {
        short.push(timed(
            &build(&fx.short_wav, sink.port),
            scratch,
            Duration::from_secs(30),
        )?);
    }
    Ok((
        PeerRuns {
            long,
            short,
            packets_per_long_run: sent,
        },
        build(&fx.wav, sink.port),
    ))
}

/// A peer's resident memory on the same job in real time, after `after`.
pub(crate) fn peer_rss(build: &dyn Fn(u16) -> Vec<String>, after: Duration) -> Value {
    let sink = UdpSink::new();
    let argv = build(sink.port);
    let child = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let mut j = Value::obj();
    let Ok(child) = child else {
        j.set("error", format!("cannot start {}", argv[0]));
        return j;
    };
    let mut g = ChildGuard(child);
    std::thread::sleep(after);
    let running = matches!(g.0.try_wait(), Ok(None));
    j = memory_json(&g.0.id().to_string());
    j.set("command", argv.join(" "))
        .set("running_when_read", running)
        .set("after_s", after.as_secs_f64())
        .set("packets_so_far", sink.count());
    drop(g);
    j
}
