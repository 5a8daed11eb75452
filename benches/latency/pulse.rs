//! The paced device: the gateway on a private PulseAudio daemon's null
//! sinks (`pulsemic`, `pulsespk`, real-time clocked), against the same echo
//! relay. PulseAudio's own share is taken out by recording both monitors
//! in the same run, as the two channels of one GStreamer pipeline
//! (`audiointerleave` aligns them by the pipeline clock): speech played
//! into `mic` is recorded from `mic.monitor` (what the gateway's capture
//! hears) and from `spk.monitor` (what its playback said); the delay
//! between the two channels is the gateway's round trip from its capture stream to its playback stream,
//! their PulseAudio buffers included, the `paplay` → `mic` leg excluded.

use super::*;
use voxgate_testkit::audio_env::{PulseEnv, terminate, wait_timeout};

/// Both monitors into one raw stereo S16LE file, channel-aligned.
fn record_both(pulse: &PulseEnv, out: &Path) -> std::process::Child {
    let caps = "audio/x-raw,rate=48000,channels=1,format=S16LE";
    let pipeline = format!(
        "audiointerleave name=i ! audio/x-raw,channels=2 ! filesink location={} \
         pulsesrc device=mic.monitor ! {caps} ! queue ! i.sink_0 \
         pulsesrc device=spk.monitor ! {caps} ! queue ! i.sink_1",
        out.display()
    );
    pulse
        .command("gst-launch-1.0")
        .arg("-q")
        .args(pipeline.split_whitespace())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("gst-launch-1.0 missing (gstreamer1.0-tools, scripts/deps)")
}

/// The two channels of a raw stereo S16LE file.
fn split(p: &Path) -> (Vec<i16>, Vec<i16>) {
    let raw = xcorr::read_raw(p);
    let l = raw.iter().step_by(2).copied().collect();
    let r = raw.iter().skip(1).step_by(2).copied().collect();
    (l, r)
}

pub(crate) fn run(raw: &Path, speech_s: f64, v: &Variant) -> Value {
    let lab = Lab::new(
        &format!("bench-latency-pulse-{}", v.min_ms),
        "mode = \"echo\"",
    );
    let pulse = PulseEnv::start(&lab.dir);
    let mut relay = lab.start_relay();
    let extra = format!(
        "[capture]\ndevice = \"pulsemic\"\n[playback]\nenabled = true\ndevice = \"pulsespk\"\n\
         {CODEC_TOML}[jitter]\nmin_ms = {}\nmax_ms = 300\n",
        v.min_ms
    );
    let (cfg, m) = lab.gateway_config("bench-gw-latency-pulse", lab.quic_port, &extra);
    let mut env = pulse.env();
    env.push(("VOXGATE_LOG".into(), "info".into()));
    let mut gw = match &v.binary {
        Some(b) => lab.start_gateway_with(b, &cfg, &env),
        None => lab.start_gateway(&cfg, &env),
    };
    let t = Duration::from_secs(20);
    assert!(pulse.wait_capture_streams(1, t), "no capture stream");
    assert!(pulse.wait_playback_streams(1, t), "no playback stream");
    let both = lab.dir.join("monitors.raw");
    let mut rec = record_both(&pulse, &both);
    assert!(
        pulse.wait_capture_streams(3, t),
        "recorders did not connect"
    );
    std::thread::sleep(Duration::from_millis(300));
    let mut play = pulse.play_into_mic(raw);
    std::thread::sleep(Duration::from_secs_f64(WARM_S));
    let text0 = scrape(m).unwrap_or_default();
    let done = wait_timeout(&mut play, Duration::from_secs_f64(speech_s + 10.0));
    std::thread::sleep(Duration::from_millis(500));
    gw.assert_running();
    let text = scrape(m).unwrap_or_default();
    terminate(&mut rec, Duration::from_secs(5));
    let _ = gw.stop();
    let _ = relay.stop();
    drop(pulse);
    let (mic, spk) = split(&both);
    let warm = ((WARM_S + 0.3) * 48_000.0) as usize;
    let delay = xcorr::segment_delay_ms(&mic, &spk, warm, mic.len(), 1000);
    let mut j = stage_json(&text0, &text, v);
    j.set("paplay_ok", done.is_some_and(|s| s.success()))
        .set("round_trip_ms", delay.map(|d| d.0))
        .set("correlation", delay.map(|d| d.1));
    j
}
