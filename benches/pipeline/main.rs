//! Gateway pipeline benchmark (`cargo bench --bench pipeline`; `scripts/bench`
//! runs it and renders docs/BENCHMARKS.md from its JSON summary).
//!
//! Every figure is compared with a baseline measured in the same run:
//!
//! 1. CPU per stream: the release `voxgate run` streaming a ~30 s speech file
//!    from the ALSA `file` device `voxcap` (paced in software) to a relay,
//!    CPU from /proc/PID/stat between the first sent frame and the end of
//!    the file, against libopus (the same build, linked into this process)
//!    encoding the same PCM with the same `CodecConfig` (thread CPU, median
//!    of 5). Peers (GStreamer, ffmpeg; Debian's libopus 1.3.1) against
//!    `opusenc` (the same Debian libopus) with the same settings.
//! 2. Capture callback to datagram handed to quinn: p50/p99 from the
//!    gateway's `voxgate_capture_to_send_seconds` histogram, on the file
//!    device and on a paced PulseAudio device.
//! 3. Resident memory after ~10 s of streaming, playback off and on; peers'
//!    resident memory on the same job in real time.
//! 4. PESQ-WB of the relay's recording against `opusenc` at the same bitrate.
//! 5. Size of the stripped release binary.
//!
//! Results: a table on stdout and `$VOXGATE_BENCH_OUT/pipeline.json`
//! (default `<target>/bench-results/`). Every wait is bounded; every child
//! process is stopped by a guard, also when a section panics.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{SocketAddr, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use voxgate::codec::CodecConfig;
use voxgate::config::GatewayConfig;
use voxgate_testkit::audio_env::{
    AlsaFileDevices, PulseEnv, speech_fixture, try_score, wait_timeout,
};
use voxgate_testkit::bench::{self, JsonExt, Value, fmt, median, nums, wanted};
use voxgate_testkit::lab::{Lab, Proc, metric, scrape};
use voxgate_testkit::procfs::{
    clk_tck, machine_ticks, smaps_rollup_kib, smaps_top, status_kib_all, this_thread_ns, thread_ns,
    try_proc_ticks,
};

mod children;
mod fixture;
mod gateway;
mod measure;
mod peers;
mod quality;
mod table;
mod transport;

use children::*;
use fixture::*;
use gateway::*;
use measure::*;
use peers::*;
use quality::*;
use table::*;
use transport::*;

/// About 30 s of espeak-ng speech (the issue asks for ~30 s).
const TEXT: &str = "The quick brown fox jumps over the lazy dog. Voice gateways carry speech \
    from the microphone to the relay, and the relay records every word it hears. Please call \
    Stella and ask her to bring these things with her from the store: six spoons of fresh snow \
    peas, five thick slabs of blue cheese, and maybe a snack for her brother Bob. We also need a \
    small plastic snake and a big toy frog for the kids. She can scoop these things into three \
    red bags, and we will go meet her Wednesday at the train station. Seven, eight, nine, ten.";

/// The gateway's codec settings, written out so that every encoder below is
/// configured from the same values (read back through `GatewayConfig::load`).
const CODEC_TOML: &str = "[codec]\nframe_ms = 20\nbitrate = 24000\nfec = true\ndtx = false\n\
    expected_loss_percent = 5\ncomplexity = 9\n";

/// Issue 17: the gateway's CPU per audio second against libopus paced at
/// one frame every 20 ms (`paced_run`'s `libopus_paced_in_bench`).
const TARGET_CPU_RATIO: f64 = 1.3;
const TARGET_P99_US: f64 = 1000.0;
const TARGET_RSS_KIB: f64 = 8192.0;
const TARGET_PESQ_DIFF: f64 = 0.1;
const BASELINE_REPS: usize = 5;
/// Other processes' load (cores) under which the machine counts as quiet,
/// and above which a measurement is repeated once; the longest wait.
const QUIET: f64 = 0.15;
const DISTURBED: f64 = 0.25;
const QUIET_WAIT: Duration = Duration::from_secs(30);
const PEER_REPS: usize = 3;
/// Seconds of the fixture used to estimate a peer's fixed start-up cost.
const SHORT_CLIP_S: f64 = 3.0;
/// When resident memory is read, counted from the first sent frame.
const RSS_AFTER: Duration = Duration::from_secs(10);
/// libopus request numbers (opus_defines.h), for `opusenc --set-ctl-int`.
const OPUS_SET_APPLICATION: u32 = 4000;
const OPUS_APPLICATION_VOIP: u32 = 2048;
const OPUS_SET_INBAND_FEC: u32 = 4012;
const OPUS_SET_DTX: u32 = 4016;

/// One measurement of the baseline and the gateway on the file device.
struct CpuTry {
    /// Most cores other processes used during either.
    disturbance: f64,
    baseline: Value,
    file: Value,
    packets: Vec<Vec<u8>>,
    recording: Option<PathBuf>,
}

/// A section of this bench ([`bench::section`]).
fn section(name: &str, f: impl FnOnce() -> Value) -> Value {
    bench::section("pipeline", name, f)
}

fn main() {
    let started = Instant::now();
    let tck = clk_tck();
    let codec_dir = voxgate_testkit::audio_env::scratch_dir("bench-pipeline");
    // The codec settings, as the gateway reads them from its config; every
    // gateway run checks that its config yields the same (`check_codec`).
    let probe = format!(
        "device_id = \"bench\"\n[relay]\naddress = \"127.0.0.1:9\"\nca = \"ca.pem\"\n\
         [identity]\ncert = \"device.pem\"\nkey = \"device.key\"\n{}",
        capture_extra("voxcap", None)
    );
    let codec = GatewayConfig::parse(Path::new("bench-probe.toml"), &probe)
        .unwrap_or_else(|e| panic!("{e}"))
        .codec;
    let fx = fixture(&codec_dir, codec.frame_samples());
    eprintln!(
        "pipeline: fixture {:.1} s ({} frames of {} ms), libopus in-process: {}",
        fx.seconds,
        fx.frames,
        frame_ms(&codec),
        opus::version()
    );

    let mut root = Value::obj();
    root.set("bench", "pipeline");
    let mut fj = Value::obj();
    fj.set("seconds", fx.seconds)
        .set("frames", fx.frames)
        .set("short_clip_s", fx.short_seconds)
        .set("source", "espeak-ng, 48 kHz mono S16, 3 dB headroom");
    root.set("fixture", fj);
    let mut cj = Value::obj();
    cj.set("bitrate", u64::from(codec.bitrate))
        .set("frame_ms", frame_ms(&codec) as u64)
        .set("fec", codec.fec)
        .set("dtx", codec.dtx)
        .set(
            "expected_loss_percent",
            u64::from(codec.expected_loss_percent),
        )
        .set("complexity", u64::from(codec.complexity))
        .set("application", "voip")
        .set("vbr", "constrained");
    root.set("codec", cj);
    let deb_opus = format!(
        "Debian libopus {}",
        tool_version(&["dpkg-query", "-W", "-f", "${Version}", "libopus0"])
    );
    let mut vj = Value::obj();
    vj.set("libopus_gateway", opus::version())
        .set("opusenc", tool_version(&["opusenc", "--version"]))
        .set("gst", tool_version(&["gst-launch-1.0", "--version"]))
        .set("ffmpeg", tool_version(&["ffmpeg", "-version"]))
        .set(
            "libopus_debian",
            tool_version(&["dpkg-query", "-W", "-f", "${Version}", "libopus0"]),
        );
    root.set("versions", vj);

    // 1 and 2: the in-process baseline, right before the gateway on the file
    // device. Other processes share this machine: when they used more than
    // `DISTURBED` cores during either measurement, both are measured once
    // more (after waiting for a quiet moment) and the quieter pair is kept.
    let mut tries: Vec<CpuTry> = Vec::new();
    for attempt in 1..=2u64 {
        let (quiet, waited) = if wanted("gateway on the ALSA file device") {
            wait_quiet(tck, QUIET_WAIT)
        } else {
            (f64::NAN, 0.0)
        };
        let mut packets = Vec::new();
        let mut baseline = section("baseline: libopus in-process", || {
            let t0 = (
                Instant::now(),
                machine_ticks(),
                try_proc_ticks("self").unwrap_or(0),
            );
            let (runs, p) = baseline_encode(&fx, &codec);
            let other = other_since(t0, tck);
            packets = p;
            let m = median(&runs);
            let mut j = Value::obj();
            j.set("cpu_s_runs", nums(&runs))
                .set("cpu_s", m)
                .set("per_audio_s", m / fx.seconds)
                .set("audio_s", fx.seconds)
                .set("packets", packets.len())
                .set(
                    "mean_packet_bytes",
                    packets.iter().map(Vec::len).sum::<usize>() as f64
                        / packets.len().max(1) as f64,
                )
                .set("other_load_cores", other);
            j
        });
        let mut recording = None;
        let mut file = section("gateway on the ALSA file device", || {
            let (j, rec) = file_run(&fx, &codec, tck, None);
            recording = rec;
            j
        });
        if let (Some(b), Some(cpu)) = (baseline.num("per_audio_s"), file.get("cpu").cloned()) {
            let mut cpu = cpu;
            if let Some(g) = cpu.num("per_audio_s_stat") {
                cpu.set("ratio_stat", g / b);
            }
            if let Some(g) = cpu.num("per_audio_s_schedstat") {
                cpu.set("ratio_schedstat", g / b);
            }
            file.set("cpu", cpu);
        }
        let disturbance = baseline.num("other_load_cores").unwrap_or(0.0).max(
            file.get("cpu")
                .and_then(|c| c.num("other_load_cores"))
                .unwrap_or(0.0),
        );
        baseline
            .set("attempt", attempt)
            .set("quiet_before_cores", quiet)
            .set("waited_for_quiet_s", waited);
        eprintln!("pipeline: attempt {attempt}: other processes used {disturbance:.2} cores");
        tries.push(CpuTry {
            disturbance,
            baseline,
            file,
            packets,
            recording,
        });
        if disturbance <= DISTURBED {
            break;
        }
    }
    tries.sort_by(|x, y| x.disturbance.total_cmp(&y.disturbance));
    let attempts = tries.len();
    let CpuTry {
        mut baseline,
        mut file,
        packets,
        recording,
        ..
    } = tries.swap_remove(0);
    baseline.set("attempts", attempts);

    // 3. Peers and the Debian libopus baseline, as fast as possible.
    let peers = section("peers: opusenc, gst-launch, ffmpeg", || {
        let scratch = codec_dir.join("peers");
        std::fs::create_dir_all(&scratch).unwrap();
        let mut j = Value::obj();
        let c = codec;
        let base = run_peer(
            &|w: &Path, _: u16| opusenc_matched(&c, w, "/dev/null"),
            &fx,
            &scratch,
        );
        let base_j = match &base {
            Ok((r, cmd)) => peer_json("opusenc", &deb_opus, cmd, r, &fx),
            Err(e) => {
                let mut o = Value::obj();
                o.set("error", e.as_str());
                o
            }
        };
        j.set("debian_baseline", base_j.clone());
        let builders: [(&str, Build); 2] = [
            (
                "gst-launch",
                Box::new(move |w: &Path, p: u16| gst_cmd(&c, w, p, false)),
            ),
            (
                "ffmpeg",
                Box::new(move |w: &Path, p: u16| ffmpeg_cmd(&c, w, p, false)),
            ),
        ];
        // Each peer's runs against the opusenc baseline.
        let measure = |peers: &[(&str, Build)], reps: usize| {
            let mut list = Vec::new();
            for (name, b) in peers {
                let mut pj = match run_peer_reps(b.as_ref(), &fx, &scratch, reps) {
                    Ok((r, cmd)) => peer_json(name, &deb_opus, &cmd, &r, &fx),
                    Err(e) => {
                        let mut o = Value::obj();
                        o.set("name", *name).set("error", e);
                        o
                    }
                };
                for k in ["per_audio_s_total", "per_audio_s_marginal"] {
                    if let (Some(p), Some(b)) = (pj.num(k), base_j.num(k)) {
                        pj.set(&k.replace("per_audio_s", "ratio"), p / b);
                    }
                }
                list.push(pj);
            }
            Value::Array(list)
        };
        j.set("peers", measure(&builders, PEER_REPS));
        // The same peers paced to real time (GStreamer's udpsink clock,
        // ffmpeg -re), as the gateway is: once each, whole file and short
        // clip. Their ratio to the flat-out opusenc shows what pacing alone
        // costs on this machine.
        let paced: [(&str, Build); 2] = [
            (
                "gst-launch (sync=true)",
                Box::new(move |w: &Path, p: u16| gst_cmd(&c, w, p, true)),
            ),
            (
                "ffmpeg -re",
                Box::new(move |w: &Path, p: u16| ffmpeg_cmd(&c, w, p, true)),
            ),
        ];
        j.set("real_time", measure(&paced, 1));
        j
    });

    // 4. Playback on.
    let echo = section("gateway with playback (echo relay, voxplay)", || {
        echo_run(&fx, &codec, tck, None)
    });

    // 4b. A static release binary (musl, libasound and libopus linked in):
    // scripts/bench builds the one with the boxes' features (no API, the
    // stand-in for the ARM binaries) and names it in VOXGATE_STATIC_BIN.
    let static_bin = std::env::var_os("VOXGATE_STATIC_BIN").map(PathBuf::from);
    let mut static_run = match static_bin.as_deref() {
        Some(b) if b.is_file() => section("static release binary on the ALSA file device", || {
            let (mut j, _) = file_run(&fx, &codec, tck, Some(b));
            if let (Some(base), Some(mut cpu)) =
                (baseline.num("per_audio_s"), j.get("cpu").cloned())
            {
                if let Some(g) = cpu.num("per_audio_s_stat") {
                    cpu.set("ratio_stat", g / base);
                }
                j.set("cpu", cpu);
            }
            j.set("binary", b.display().to_string());
            // The same binary with playback on: the memory of a box that
            // also plays the relay's audio.
            j.set("echo", echo_run(&fx, &codec, tck, Some(b)));
            j
        }),
        Some(b) => {
            let mut j = Value::obj();
            j.set(
                "error",
                format!("VOXGATE_STATIC_BIN={} is not a file", b.display()),
            );
            j
        }
        None => Value::Null,
    };

    // 5. Paced device.
    let mut paced = Value::Null;
    for attempt in 1..=2u64 {
        let (quiet, waited) = if wanted("gateway on the paced PulseAudio mic") {
            wait_quiet(tck, QUIET_WAIT)
        } else {
            (f64::NAN, 0.0)
        };
        let mut j = section("gateway on the paced PulseAudio mic", || {
            paced_run(&fx, &codec)
        });
        j.set("attempt", attempt)
            .set("quiet_before_cores", quiet)
            .set("waited_for_quiet_s", waited);
        let other = |j: &Value| {
            j.get("cpu")
                .and_then(|c| c.num("other_load_cores"))
                .unwrap_or(f64::INFINITY)
        };
        if other(&j) < other(&paced) || matches!(paced, Value::Null) {
            paced = j;
        }
        if other(&paced) <= DISTURBED {
            break;
        }
    }

    // 5b. The QUIC transport alone (diagnostic), in a quiet moment.
    if wanted("QUIC transport alone") {
        wait_quiet(tck, QUIET_WAIT);
    }
    let transport = section("QUIC transport alone", || {
        transport_run(&packets, &codec, tck)
    });

    // 6. Peers' memory in real time.
    let peer_mem = section("peers' resident memory (real time)", || {
        let mut j = Value::obj();
        j.set(
            "gst-launch",
            peer_rss(
                &|p| gst_cmd(&codec, &fx.wav, p, true),
                Duration::from_secs(5),
            ),
        );
        j.set(
            "ffmpeg",
            peer_rss(
                &|p| ffmpeg_cmd(&codec, &fx.wav, p, true),
                Duration::from_secs(5),
            ),
        );
        j
    });

    // 7. Speech quality.
    let pesq = section("PESQ-WB", || {
        let dir = codec_dir.join("pesq");
        std::fs::create_dir_all(&dir).unwrap();
        let mut j = Value::obj();
        let gw = match &recording {
            Some(ogg) => {
                let wav = dir.join("gateway-recording.wav");
                match opusdec(ogg, &wav) {
                    Ok(()) => score_json(&fx.wav, &wav),
                    Err(e) => {
                        let mut o = Value::obj();
                        o.set("error", e);
                        o
                    }
                }
            }
            None => {
                let mut o = Value::obj();
                o.set("error", "no single recording from the file run");
                o
            }
        };
        j.set("gateway", gw.clone());
        let plain_ogg = dir.join("opusenc.ogg");
        let plain: Vec<String> = [
            "opusenc".to_string(),
            "--quiet".into(),
            "--bitrate".into(),
            kbps(&codec),
            "--framesize".into(),
            frame_ms(&codec).to_string(),
            "--comp".into(),
            codec.complexity.to_string(),
            fx.wav.display().to_string(),
            plain_ogg.display().to_string(),
        ]
        .to_vec();
        let reference = opusenc_score(&plain, &plain_ogg, &fx);
        j.set("opusenc", reference.clone());
        let matched_ogg = dir.join("opusenc-matched.ogg");
        j.set(
            "opusenc_matched",
            opusenc_score(
                &opusenc_matched(&codec, &fx.wav, &matched_ogg.display().to_string()),
                &matched_ogg,
                &fx,
            ),
        );
        j.set(
            "libopus_inprocess",
            inprocess_score(&packets, codec.frame_samples() as u32, &dir, &fx),
        );
        if let (Some(g), Some(r)) = (gw.num("pesq_wb"), reference.num("pesq_wb")) {
            j.set("difference", g - r);
        }
        j
    });

    // 8. Binary size.
    let binary = section("binary size", || {
        let bin = Path::new(voxgate_testkit::lab::bin());
        let copy = codec_dir.join("voxgate-stripped");
        std::fs::copy(bin, &copy).unwrap();
        let ok = Command::new("strip")
            .arg(&copy)
            .status()
            .is_ok_and(|s| s.success());
        let mut j = Value::obj();
        j.set("path", bin.display().to_string())
            .set(
                "as_built_bytes",
                std::fs::metadata(bin)
                    .map(|m| m.len())
                    .ok()
                    .map(|v| v as f64),
            )
            .set(
                "stripped_bytes",
                ok.then(|| std::fs::metadata(&copy).map(|m| m.len() as f64).ok())
                    .flatten(),
            )
            .set("target", "x86_64-unknown-linux-gnu");
        j
    });

    // The target's ratio: against libopus paced (measured in the paced run).
    let paced_opus = paced
        .get("libopus_paced_in_bench")
        .and_then(|p| p.num("per_audio_s"));
    with_paced_ratio(&mut file, paced_opus);
    with_paced_ratio(&mut static_run, paced_opus);

    let mut tj = Value::obj();
    tj.set("cpu_ratio", TARGET_CPU_RATIO)
        .set("cpu_ratio_against", "libopus paced, one frame every 20 ms")
        .set("p99_us", TARGET_P99_US)
        .set("rss_kib", TARGET_RSS_KIB)
        .set("pesq_diff", TARGET_PESQ_DIFF);
    root.set("targets", tj)
        .set("baseline", baseline.clone())
        .set("file_run", file.clone())
        .set("static_run", static_run)
        .set("peers", peers.clone())
        .set("echo_run", echo.clone())
        .set("paced_run", paced.clone())
        .set("transport_alone", transport.clone())
        .set("peer_memory", peer_mem.clone())
        .set("pesq", pesq.clone())
        .set("binary", binary.clone())
        .set("clk_tck", tck)
        .set("elapsed_s", started.elapsed().as_secs_f64());

    let path = bench::write_result("pipeline.json", &root);
    print_summary(&root, &path, fx.seconds);
}

/// Adds `ratio_paced_stat` and `ratio_paced_schedstat` to `run`'s CPU:
/// its CPU per audio second over libopus paced's (`paced`).
fn with_paced_ratio(run: &mut Value, paced: Option<f64>) {
    let (Some(p), Some(mut cpu)) = (paced.filter(|p| *p > 0.0), run.get("cpu").cloned()) else {
        return;
    };
    for (k, out) in [
        ("per_audio_s_stat", "ratio_paced_stat"),
        ("per_audio_s_schedstat", "ratio_paced_schedstat"),
    ] {
        if let Some(g) = cpu.num(k) {
            cpu.set(out, g / p);
        }
    }
    run.set("cpu", cpu);
}
