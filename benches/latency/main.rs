//! The mouth-to-ear latency budget (issue 17): a gateway against an echo
//! relay on loopback, the demo's ALSA file devices (speech in the
//! microphone file, the echo in the speaker file), measured per stage and
//! end to end in one run, for each jitter-buffer floor it compares.
//!
//! Ground truth: the delay of the speaker file behind the microphone file,
//! by cross-correlation. Stages: the gateway's histograms
//! (`voxgate_capture_to_send_seconds`, `voxgate_jitter_hold_seconds`,
//! `voxgate_playback_queue_seconds`), its QUIC round-trip gauge, the frame
//! length, and the devices' positions in their streams sampled together
//! (`voxgate_{capture,playback}_samples_total`: the file devices' pacing
//! leads and opening offset). What the stages do not explain is shown as a
//! residual.
//!
//! Writes `$VOXGATE_BENCH_OUT/latency.json` and, with
//! `VOXGATE_BENCH_DOC=path`, the `latency` block of docs/BENCHMARKS.md.
//! `scripts/bench-latency` runs it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use voxgate_testkit::audio_env::{AlsaFileDevices, speech_fixture};
use voxgate_testkit::bench::{JsonExt, Value};
use voxgate_testkit::lab::{Lab, metric, scrape};
use voxgate_testkit::procfs::{machine_ticks, try_proc_ticks};

mod phone;
mod phone_media;
mod pulse;
mod xcorr;

const TEXT: &str = "The quick brown fox jumps over the lazy dog. Voice gateways carry \
speech from one place to another, and every millisecond counts. Numbers for the \
test: one, two, three, four, five.";
const CODEC_TOML: &str = "[codec]\nframe_ms = 20\nbitrate = 24000\nfec = true\ndtx = false\n";
const FRAME_MS: f64 = 20.0;

/// One jitter-buffer setting (and binary) under test.
struct Variant {
    name: String,
    min_ms: u32,
    /// Another build of `voxgate` (the baseline), else this one.
    binary: Option<PathBuf>,
}

fn variants() -> Vec<Variant> {
    let mut v = Vec::new();
    if let Some(b) = std::env::var_os("VOXGATE_LATENCY_BASELINE_BIN").filter(|b| !b.is_empty()) {
        // The old binary's jitter floor: 40 by default (the floor before
        // issue 17), or VOXGATE_LATENCY_BASELINE_MIN_MS.
        let min_ms = std::env::var("VOXGATE_LATENCY_BASELINE_MIN_MS")
            .ok()
            .and_then(|m| m.parse().ok())
            .unwrap_or(40);
        v.push(Variant {
            name: format!("baseline binary (min_ms = {min_ms})"),
            min_ms,
            binary: Some(b.into()),
        });
    }
    v.push(Variant {
        name: "fixed 40 ms floor (min_ms = 40, the old default)".into(),
        min_ms: 40,
        binary: None,
    });
    v.push(Variant {
        name: "adaptive floor (min_ms = 20, the default)".into(),
        min_ms: 20,
        binary: None,
    });
    v
}

/// True if `bin` is an ELF executable without a program interpreter
/// (statically linked). Unreadable or not ELF: false.
fn is_static(bin: &Path) -> bool {
    let Ok(b) = std::fs::read(bin) else {
        return false;
    };
    let u16_at = |o: usize| b.get(o..o + 2).map(|x| u16::from_le_bytes([x[0], x[1]]));
    let u64_at = |o: usize| {
        b.get(o..o + 8)
            .map(|x| u64::from_le_bytes(x.try_into().unwrap()))
    };
    // ELF64 little-endian only (what this machine runs).
    if b.get(..6) != Some(&[0x7f, b'E', b'L', b'F', 2, 1][..]) {
        return false;
    }
    let (Some(phoff), Some(phsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return false;
    };
    const PT_INTERP: u32 = 3;
    !(0..usize::from(phnum)).any(|i| {
        let o = phoff as usize + i * usize::from(phsize);
        b.get(o..o + 4)
            .is_some_and(|x| u32::from_le_bytes(x.try_into().unwrap()) == PT_INTERP)
    })
}

/// Seconds after the first echo when the steady state is measured from:
/// the adaptive floor starts at 40 ms and decays with a 4 s time constant.
const WARM_S: f64 = 12.0;

/// Mean of a histogram between two scrapes, in ms.
fn hist_mean_ms(t0: &str, t1: &str, name: &str) -> Option<f64> {
    let get = |t: &str, k: &str| {
        voxgate::telemetry::metrics::scrape_value(t, &format!("{name}_{k}")).unwrap_or(0.0)
    };
    let (s, c) = (
        get(t1, "sum") - get(t0, "sum"),
        get(t1, "count") - get(t0, "count"),
    );
    (c > 0.0).then(|| s / c * 1000.0)
}

/// Cores other processes used in the second before a run (nothing of the
/// bench's own is running then): the load behind each figure.
fn other_load() -> f64 {
    let tck = voxgate_testkit::procfs::clk_tck();
    let (t0, m0, s0) = (Instant::now(), machine_ticks(), try_proc_ticks("self"));
    std::thread::sleep(Duration::from_secs(1));
    let wall = t0.elapsed().as_secs_f64();
    let own = try_proc_ticks("self").unwrap_or(0) - s0.unwrap_or(0);
    (machine_ticks() - m0).saturating_sub(own) as f64 / tck / wall
}

/// Runs the echo once; returns its figures.
fn run(raw: &Path, speech_s: f64, v: &Variant) -> Value {
    let tag = if v.binary.is_some() { "base" } else { "this" };
    let lab = Lab::new(
        &format!("bench-latency-{tag}-{}", v.min_ms),
        "mode = \"echo\"",
    );
    let out = lab.dir.join("speaker.raw");
    let devs = AlsaFileDevices::with_silence_tail(&lab.dir, Some(raw), Some(&out), 4.0);
    let mut relay = lab.start_relay();
    let extra = format!(
        "[capture]\ndevice = \"voxcap\"\n[playback]\nenabled = true\ndevice = \"voxplay\"\n\
         {CODEC_TOML}[jitter]\nmin_ms = {}\nmax_ms = 300\n",
        v.min_ms
    );
    let (cfg, m) = lab.gateway_config("bench-gw-latency", lab.quic_port, &extra);
    let mut env = devs.env();
    env.push(("VOXGATE_LOG".into(), "info".into()));
    let mut gw = match &v.binary {
        Some(b) => lab.start_gateway_with(b, &cfg, &env),
        None => lab.start_gateway(&cfg, &env),
    };
    wait_metric(&mut gw, m, "voxgate_downlink_packets_received_total");
    let echo = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(WARM_S));
    let text0 = scrape(m).unwrap_or_default();
    // The devices' positions, sampled together: how far the speaker's
    // stream is ahead of the microphone's (the devices' leads over the wall
    // clock and their opening offset).
    let mut offsets = Vec::new();
    let end = echo + Duration::from_secs_f64(speech_s + 0.5);
    while Instant::now() < end {
        let t = scrape(m).unwrap_or_default();
        let g = |n: &str| voxgate::telemetry::metrics::scrape_value(&t, n);
        if let (Some(p), Some(c)) = (
            g("voxgate_playback_samples_total"),
            g("voxgate_capture_samples_total"),
        ) {
            offsets.push((p - c) / 48.0);
        }
        std::thread::sleep(Duration::from_millis(23));
    }
    gw.assert_running();
    let text = scrape(m).unwrap_or_default();
    let _ = gw.stop();
    let _ = relay.stop();
    let mic = xcorr::read_raw(raw);
    let spk = xcorr::read_raw(&out);
    // The microphone's position at the first echo is about the wall time
    // since the start: the steady window starts WARM_S later.
    let warm = ((WARM_S + 1.0) * 48_000.0) as usize;
    let delay = xcorr::segment_delay_ms(&mic, &spk, warm, mic.len(), 1000);
    let start = xcorr::segment_delay_ms(&mic, &spk, 0, 6 * 48_000, 1000);
    let mut j = stage_json(&text0, &text, v);
    j.set("round_trip_ms", delay.map(|d| d.0))
        .set("correlation", delay.map(|d| d.1))
        .set("round_trip_start_ms", start.map(|d| d.0))
        .set(
            "device_offset_ms",
            (!offsets.is_empty()).then(|| offsets.iter().sum::<f64>() / offsets.len() as f64),
        );
    j
}

/// The stages and counters between two scrapes of the gateway's metrics.
pub(crate) fn stage_json(text0: &str, text: &str, v: &Variant) -> Value {
    let get = |n: &str| voxgate::telemetry::metrics::scrape_value(text, n).unwrap_or(0.0);
    let get0 = |n: &str| voxgate::telemetry::metrics::scrape_value(text0, n).unwrap_or(0.0);
    let steady = |n: &str| get(n) - get0(n);
    let mut j = Value::obj();
    j.set("variant", v.name.as_str())
        .set("min_ms", f64::from(v.min_ms))
        .set("frame_ms", FRAME_MS)
        .set(
            "capture_to_send_ms",
            hist_mean_ms(text0, text, "voxgate_capture_to_send_seconds"),
        )
        .set("quic_rtt_ms", get("voxgate_rtt_seconds") * 1000.0)
        .set(
            "jitter_hold_ms",
            hist_mean_ms(text0, text, "voxgate_jitter_hold_seconds"),
        )
        .set(
            "playback_queue_ms",
            hist_mean_ms(text0, text, "voxgate_playback_queue_seconds"),
        )
        .set(
            "jitter_target_ms",
            get("voxgate_jitter_buffer_target_seconds") * 1000.0,
        )
        .set(
            "concealed",
            steady("voxgate_downlink_frames_concealed_total"),
        )
        .set("skipped", steady("voxgate_downlink_frames_skipped_total"))
        .set("late", steady("voxgate_downlink_packets_late_total"))
        .set(
            "underrun_samples",
            steady("voxgate_playback_underrun_samples_total"),
        );
    j
}

fn wait_metric(gw: &mut voxgate_testkit::lab::Proc, m: std::net::SocketAddr, name: &str) {
    let t0 = Instant::now();
    while metric(m, name) < 1.0 {
        gw.assert_running();
        assert!(t0.elapsed() < Duration::from_secs(20), "no {name}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn env_or(k: &str) -> String {
    std::env::var(k).unwrap_or_else(|_| "unknown".into())
}

fn f(v: &Value, k: &str) -> Option<f64> {
    v.num(k)
}

fn cell(x: Option<f64>) -> String {
    x.map(|x| format!("{x:.1}")).unwrap_or_else(|| "n/a".into())
}

const STAGES: [(&str, &str); 6] = [
    (
        "frame_ms",
        "packetization (one 20 ms frame fills before it is encoded)",
    ),
    (
        "capture_to_send_ms",
        "capture ring + encoder + RTP/QUIC send (`voxgate_capture_to_send_seconds`)",
    ),
    (
        "quic_rtt_ms",
        "QUIC → relay (echo) → QUIC back (`voxgate_rtt_seconds`)",
    ),
    (
        "jitter_hold_ms",
        "jitter buffer hold (`voxgate_jitter_hold_seconds`)",
    ),
    (
        "playback_queue_ms",
        "playback ring ahead of each frame (`voxgate_playback_queue_seconds`)",
    ),
    (
        "device_offset_ms",
        "devices: the speaker's position minus the microphone's (`voxgate_{playback,capture}_samples_total`): leads over the wall clock, opening offset",
    ),
];

fn table(title: &str, runs: &[&Value], stages: &[(&str, &str)], rest: &str) -> String {
    let mut s = format!("| {title} |");
    for r in runs {
        s += &format!(" {} |", r.str("variant").unwrap_or("?"));
    }
    s += "\n|---|";
    s += &"---:|".repeat(runs.len());
    s += "\n";
    for (k, label) in stages {
        s += &format!("| {label} |");
        for r in runs {
            s += &format!(" {} |", cell(f(r, k)));
        }
        s += "\n";
    }
    // A build without a stage's metric has no sum.
    let sum = |r: &Value| stages.iter().map(|(k, _)| f(r, k)).sum::<Option<f64>>();
    s += "| **sum of the stages** |";
    for r in runs {
        s += &format!(" {} |", cell(sum(r)));
    }
    s += "\n| **round trip, cross-correlation** |";
    for r in runs {
        s += &format!(" **{}** |", cell(f(r, "round_trip_ms")));
    }
    s += &format!("\n| {rest} |");
    for r in runs {
        let rest = f(r, "round_trip_ms").zip(sum(r)).map(|(t, s)| t - s);
        s += &format!(" {} |", cell(rest));
    }
    s += "\n| round trip in the first 6 s (the floor starts at 40 ms) |";
    for r in runs {
        s += &format!(" {} |", cell(f(r, "round_trip_start_ms")));
    }
    s += "\n| jitter buffer target at the end |";
    for r in runs {
        s += &format!(" {} |", cell(f(r, "jitter_target_ms")));
    }
    s += "\n| steady window: frames concealed / skipped, packets late |";
    for r in runs {
        let g = |k| f(r, k).unwrap_or(0.0);
        s += &format!(" {} / {} / {} |", g("concealed"), g("skipped"), g("late"));
    }
    s += "\n| steady window: underrun samples |";
    for r in runs {
        s += &format!(" {} |", f(r, "underrun_samples").unwrap_or(0.0));
    }
    s += "\n| other processes' load in the second before the run (cores) |";
    for r in runs {
        s += &format!(" {} |", cell(f(r, "other_load")));
    }
    s
}

fn render(runs: &[(Value, Option<Value>)], phones: &[Value], secs: u64) -> String {
    let mut s = String::from(
        "<!-- latency:begin (generated by scripts/bench-latency; scripts/bench keeps this block) -->\n\
         ## Latency budget\n\n",
    );
    s += &format!(
        "Reproduce with `scripts/bench-latency` ({secs} s here; `cargo bench --bench latency`; \
         commit `{}`, {}). \
         The echo round trip (microphone → gateway → relay echo → gateway → speaker) on \
         loopback with the demo's ALSA file devices, end to end by cross-correlating the \
         speaker file with the microphone file, and per stage (means) from the gateway's \
         metrics. The jitter buffer hold counts from the datagram's arrival, so it includes the \
         wait for the decoder thread (woken by each playback callback). The last stage is \
         where the two devices stand in their streams at the same instant: a file device \
         has no clock and is paced by `audio::clock` (capture 30 ms ahead of the wall \
         clock, which makes the audio early; playback runs about 100 ms ahead before it is \
         found clockless, sleeps that lead away in its silent callbacks before the first packet \
         arrives, and keeps no lead after), and the two open at slightly different times. Stage means and the \
         round trip are taken from {WARM_S} s after the first echo to the end of the \
         speech (the adaptive floor starts at 40 ms and decays with a 4 s time \
         constant).\n\n",
        env_or("VOXGATE_BENCH_COMMIT"),
        env_or("VOXGATE_BENCH_MACHINE"),
    );
    s += &table(
        "latency budget, echo round trip, ALSA file devices (ms)",
        &runs.iter().map(|r| &r.0).collect::<Vec<_>>(),
        &STAGES,
        "residual (round trip minus the stages)",
    );
    s += "\n\nThe paced device: the same echo with the gateway on a private PulseAudio \
          daemon's null sinks (`pulsemic`, `pulsespk`, clocked in real time). Speech is \
          played into the `mic` sink and recorded from both monitors in the same run; the \
          round trip is the delay of the `spk.monitor` recording behind the `mic.monitor` \
          one (two channels of one GStreamer pipeline, aligned by its clock), so PulseAudio's \
          own loop (`paplay` into the sink) is not in it, while the \
          gateway's capture and playback streams (its device buffers) are.\n\n";
    s += &table(
        "latency budget, echo round trip, PulseAudio (ms)",
        &runs.iter().filter_map(|r| r.1.as_ref()).collect::<Vec<_>>(),
        &STAGES[..5],
        "PulseAudio stream buffers of the gateway (capture + playback): the rest",
    );
    s += "\n\nPacing slack on the file devices (ARCHITECTURE.md, Invariant 1) is the \
          devices row: the playback file runs about 100 ms (`PLAYBACK_SLACK` + 1 %) ahead \
          before it is found clockless (until issue 17 it kept that lead while playing; \
          then it stayed in the file as leading silence; now the callbacks that play only \
          silence while the decoder has no stream sleep it away, `ClockGuard::after_quiet`, \
          and what is left when the first packet arrives stays), minus the capture file's \
          30 ms lead (`CAPTURE_SLACK`, audio delivered early), plus the offset between the \
          two devices' openings. A device with a clock has neither: its share is its own \
          buffer.";
    if !phones.is_empty() {
        s += "\n\n";
        s += PHONE_TEXT;
        s += &phone::table(phones);
    }
    s += "\n<!-- latency:end -->";
    s
}

const PHONE_TEXT: &str = "Phone to phone, one way (`benches/latency/phone.rs`): two boxes \
    (gateways with the SIP bridge) on one relay, on loopback; phone 201 on box A calls \
    phone 301 on box B, SIPp 3.7.3 doing both phones' signalling (A's INVITE with digest, \
    B's REGISTER and answer), PCMU at 20 ms both ways, the boxes' Opus at 20 ms. The \
    phones' RTP ends are two sockets of the bench, stamped on one clock: phone A sends \
    the speech in 20 ms packets, each stamped just before `send_to`; phone B's port keeps \
    the kernel's receive time of every packet (`SO_TIMESTAMPNS`). The one-way figure is \
    the cross-correlation of what B received against what A sent, each packet's audio \
    laid out from its departure (A) or arrival (B) time (what the phones would play if \
    each played a packet the moment it had it), over the whole call. Stages are the \
    boxes' histograms (means over the call); the relay hop is what they leave (a stretch \
    in a call shows as a spread of its 2 s windows, and makes the rest negative: the \
    stages average over it, the correlation takes the call's main delay). \
    Each box reads a leg's packets and plays its jitter buffer out on the leg's 20 ms \
    tick of the media engine's 10 ms clock, so a packet waits the buffer's target and \
    then for the next tick: 0 to 20 ms, 10 on average, drawn anew each call (phone A \
    starts at a random phase; another call on box B, phone 302 to the echo service, \
    starts B's clock at a moment of its own, as two boxes' clocks are on a real \
    network). The target on a clean link was one frame plus 3 × jitter (20 ms + the \
    `min_delay` of 20 ms, whichever larger); it is now the phone legs' `min_delay`, \
    one engine tick (10 ms), plus 3 × jitter: the pop tick's phase needs no frame of \
    its own (`media::jitter`). What is left per box is about 10 ms of margin, \
    3 × jitter and 10 ms of tick phase on average; besides, Opus's 6.5 ms lookahead \
    and well under a millisecond of QUIC and relay. `--baseline BINARY` measures an \
    older build in the same run, calls alternating (before \
    `voxgate_phone_relay_to_rtp_seconds` its box B stage and the rest are n/a).\n\n";

/// The phone-to-phone runs (`VOXGATE_LATENCY_PHONE=0` skips them): the
/// baseline binary's (if any), then this build's.
fn phone_runs(out_dir: &Path) -> Vec<Value> {
    if std::env::var("VOXGATE_LATENCY_PHONE").is_ok_and(|v| v == "0") {
        return Vec::new();
    }
    let raw = speech_fixture(out_dir, TEXT);
    let wav = raw.with_extension("wav");
    let mut variants = Vec::new();
    if let Some(b) = std::env::var_os("VOXGATE_LATENCY_BASELINE_BIN").filter(|b| !b.is_empty()) {
        variants.push(phone::PhoneVariant {
            name: "baseline binary".into(),
            binary: Some(b.into()),
            sip_extra: String::new(),
        });
    }
    variants.push(phone::PhoneVariant {
        name: "this build".into(),
        binary: None,
        sip_extra: String::new(),
    });
    // Calls alternate between the variants (the machine's load moves).
    let calls: usize = std::env::var("VOXGATE_LATENCY_PHONE_CALLS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(3)
        .max(1);
    let mut per: Vec<Vec<Value>> = variants.iter().map(|_| Vec::new()).collect();
    for n in 0..calls {
        for (i, v) in variants.iter().enumerate() {
            let l = other_load();
            let mut r = phone::run(&wav, v, n * variants.len() + i);
            r.set("other_load", l);
            eprintln!(
                "latency: phone to phone, {}, call {} → {:?} ms (box A {:?}, box B {:?}, load {l:.1})",
                v.name,
                n + 1,
                f(&r, "one_way_ms"),
                f(&r, "box_a_ms"),
                f(&r, "box_b_ms")
            );
            per[i].push(r);
        }
    }
    variants
        .iter()
        .zip(&per)
        .map(|(v, calls)| phone::combine(&v.name, calls))
        .collect()
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let t0 = Instant::now();
    let out_dir = std::env::var_os("VOXGATE_BENCH_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| voxgate_testkit::lab::target_tmpdir().join("bench-latency"));
    std::fs::create_dir_all(&out_dir).unwrap();
    let raw = speech_fixture(&out_dir, &[TEXT; 3].join(" "));
    let speech_s = voxgate_testkit::audio_env::raw_duration_s(&raw);
    let mut runs = Vec::new();
    let pulse_wanted = std::env::var("VOXGATE_LATENCY_PULSE").map_or(true, |v| v != "0");
    // VOXGATE_LATENCY_ECHO=0 (while iterating on the phone section) leaves
    // the echo out, and the document alone.
    let echo_wanted = std::env::var("VOXGATE_LATENCY_ECHO").map_or(true, |v| v != "0");
    for v in variants().iter().filter(|_| echo_wanted) {
        let l = other_load();
        let mut r = run(&raw, speech_s, v);
        r.set("other_load", l);
        eprintln!(
            "latency: file, {} → {:?} ms",
            v.name,
            f(&r, "round_trip_ms")
        );
        // A static binary's alsa-lib has no plugins to load: it cannot open
        // the pulse PCM, so a static baseline is measured on files only.
        let static_bin = v.binary.as_deref().is_some_and(is_static);
        if pulse_wanted && static_bin {
            eprintln!(
                "latency: pulse, {}: skipped (a static binary cannot load the pulse PCM plugin)",
                v.name
            );
        }
        let p = (pulse_wanted && !static_bin).then(|| {
            let l = other_load();
            let mut p = pulse::run(&raw, speech_s, v);
            p.set("other_load", l);
            eprintln!(
                "latency: pulse, {} → {:?} ms",
                v.name,
                f(&p, "round_trip_ms")
            );
            p
        });
        runs.push((r, p));
    }
    let phones = phone_runs(&out_dir);
    let block = render(&runs, &phones, t0.elapsed().as_secs());
    println!("{block}");
    let mut j = Value::obj();
    j.set(
        "file",
        Value::Array(runs.iter().map(|r| r.0.clone()).collect()),
    )
    .set(
        "pulse",
        Value::Array(runs.iter().filter_map(|r| r.1.clone()).collect()),
    )
    .set("phone", Value::Array(phones));
    std::fs::write(out_dir.join("latency.json"), j.render()).unwrap();
    if let Some(doc) = std::env::var_os("VOXGATE_BENCH_DOC").filter(|_| echo_wanted) {
        voxgate_testkit::report::write_block(Path::new(&doc), "latency", &block);
    }
}
