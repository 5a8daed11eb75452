//! README's main job: `voxgate demo` streams on loopback, shows figures and
//! leaves a playable recording.

use std::process::Command;
use voxgate_testkit::lab::{bin, opusdec, test_dir};

#[test]
fn demo_streams_and_leaves_a_recording() {
    let dir = test_dir("demo").join("run");
    let out = Command::new(bin())
        .args(["demo", "--seconds", "4", "--dir"])
        .arg(&dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    // It says what it is listening to on a machine without a sound card.
    assert!(stdout.contains("microphone:"), "{stdout}");
    // Live figures: a header and at least three rows with frames sent.
    assert!(stdout.contains("captured    sent"), "{stdout}");
    let rows: Vec<f64> = stdout
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2)?.parse().ok())
        .collect();
    assert!(rows.len() >= 3, "{stdout}");
    assert!(rows.last().unwrap() > &100.0, "frames sent: {rows:?}");
    let rec = stdout
        .lines()
        .skip_while(|l| !l.starts_with("recording (Ogg Opus)"))
        .nth(1)
        .expect("recording path printed")
        .trim()
        .to_string();
    let wav = opusdec(std::path::Path::new(&rec));
    let secs = (std::fs::metadata(&wav).unwrap().len() - 44) as f64 / 2.0 / 48_000.0;
    assert!(secs >= 3.0, "recording is {secs:.1} s");
    // A second run into the same directory refuses instead of clobbering it.
    let again = Command::new(bin())
        .args(["demo", "--seconds", "1", "--dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already holds a demo"));
}

/// On a desktop a PulseAudio (or PipeWire) server runs: the demo's
/// gateway, sandboxed, must not load ALSA's pulse plugin, whose libpulse
/// cannot create its directories there and printed "Failed to create
/// secure directory" at every device look-up.
#[test]
fn demo_beside_a_pulseaudio_server_is_quiet() {
    let dir = test_dir("demo-pulse");
    let pulse = voxgate_testkit::audio_env::PulseEnv::start(&dir.join("pulse"));
    let run = dir.join("run");
    // A desktop session: the server at $XDG_RUNTIME_DIR/pulse/native, found
    // by the conf.d hook of the system's ALSA config.
    let runtime = pulse
        .env()
        .into_iter()
        .find(|(k, _)| k == "XDG_RUNTIME_DIR")
        .unwrap()
        .1;
    let out = Command::new(bin())
        .env("XDG_RUNTIME_DIR", runtime)
        .env_remove("ALSA_CONFIG_PATH")
        .env_remove("PULSE_SERVER")
        .env_remove("PULSE_COOKIE")
        .args(["demo", "--seconds", "2", "--dir"])
        .arg(&run)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "demo failed:\n{text}");
    let gateway = std::fs::read_to_string(run.join("gateway.log")).unwrap();
    for noise in ["secure directory", "Failed to create"] {
        assert!(!text.contains(noise), "{noise}:\n{text}");
        assert!(!gateway.contains(noise), "{noise}:\n{gateway}");
    }
    drop(pulse);
    std::fs::remove_dir_all(dir).unwrap();
}
