//! Audio test environment for voxgate integration tests, on machines with no
//! audio hardware (Debian 12, run as root). Standard library (and nix) only.
//!
//! Everything here shells out to Debian tools installed by `scripts/deps`
//! (espeak-ng, sox, alsa-utils, libasound2-plugins, pulseaudio, pulseaudio-utils)
//! and to `$REPO/.venv/bin/python scripts/score.py`. Every wait is bounded.
//!
//! Pieces:
//! - [`speech_fixture`]: espeak-ng speech as raw S16_LE 48 kHz mono (+ a .wav).
//! - [`AlsaFileDevices`]: ALSA PCMs `voxcap` / `voxcap_f32` (capture from a raw
//!   file) and `voxplay` (playback into a raw file). Unpaced: capture delivers
//!   as fast as it is read. Good for bit-exact, deterministic tests.
//! - [`PulseEnv`]: a private PulseAudio daemon with two null sinks, giving
//!   real-time paced ALSA PCMs `pulsemic` (the `mic` sink's monitor) and
//!   `pulsespk` (the `spk` sink), fed/recorded with paplay/parec.
//! - [`score`]: PESQ-WB / STOI / alignment offset of a recording vs its reference.
//!
//! ALSA file-plugin facts (alsa-lib 1.2.8, Debian 12), checked with arecord/aplay:
//! - `type file` needs an output `file` even for capture ("file is not defined"
//!   otherwise); capture PCMs here use `/dev/null`. It also expands `%` escapes
//!   in `file` (%r rate, %c channels, ...), so paths containing `%` are refused.
//! - Capture with the client asking exactly S16_LE / 48000 Hz / 1 channel (the
//!   format of the infile) is bit-exact, through readi (arecord, cpal) and mmap
//!   (arecord -M). `voxcap_f32` is the same for FLOAT_LE / 48000 / 1 (its infile
//!   is an f32 copy of the S16 infile, written here).
//! - Infile EOF: no error and no EOF indication, and NOT silence. pcm_file
//!   copies only the bytes it could read and leaves the rest of the buffer as
//!   it was; the `null` slave writes nothing. So past EOF a client gets stale
//!   data, as fast as it reads: with mmap (arecord -M) old audio from the ring
//!   buffer repeating, with readi (arecord, cpal) whatever was in its buffer
//!   (zeros in one run, junk in another; an empty infile gave junk at once).
//!   Hence [`AlsaFileDevices`] captures from a copy of the infile followed by
//!   `silence_tail` of real zeros (default 30 s), and from `/dev/zero` (true
//!   silence forever) when there is no infile. Each open of the PCM starts
//!   again at the beginning of the infile.
//! - Any conversion on capture is BROKEN: `voxcap` is a `plug` around the file
//!   PCM so opening it with another format/rate/channel count succeeds, but the
//!   conversion plugins read their slave through mmap, and pcm_file's
//!   mmap_begin reads a whole buffer's worth of infile while the converter
//!   commits only one period, so ~(buffer-period)/buffer of the audio is
//!   skipped (e.g. FLOAT_LE on `voxcap` gave the first 6000 frames right, then
//!   jumps of 18000 frames). Ask `voxcap` for S16_LE/48k/mono, or `voxcap_f32`
//!   for FLOAT_LE/48k/mono; for anything else use PulseEnv's `pulsemic`.
//! - Playback through `voxplay` (a `plug` around a file PCM writing raw
//!   S16_LE/48k/mono) converts correctly: S16 and float clients both gave the
//!   exact samples. The outfile is truncated each time the PCM is configured
//!   (every new stream/open), and the client's last partial period is padded
//!   with zeros by aplay (the file may be up to one period longer than the input).
//!
//! PulseAudio facts (pulseaudio 16.1):
//! - The null sinks are loaded with `norewinds=1`. Without it, when a playback
//!   stream starts the sink rewinds what it had rendered ahead, but the monitor
//!   source has already handed that to its recorders, so recordings lose the
//!   first ~buffer of every new stream (aplay with a 100 ms buffer: exactly
//!   100 ms lost; default parec: up to 625 ms) and arrive in bursts. With it, a
//!   recorder started t ms before playback measures offset t ms, the samples
//!   pass through unchanged (PESQ 4.64 = the source against itself), and a 3 s
//!   file takes 3.0 s to play (paplay, aplay -D pulsespk) or record (arecord -d 3).
//! - A capture stream only hears what is played after it connects; call
//!   [`PulseEnv::wait_capture_streams`] before playing.
//! - Two PulseEnv in different dirs do not interfere: each daemon has its own
//!   XDG_RUNTIME_DIR (socket, pid file), HOME (cookie; by default every root
//!   daemon would share /root/.config/pulse), and clients get PULSE_SERVER.
//! - With PulseEnv's env, Debian's /etc/alsa/conf.d/99-pulse.conf makes the ALSA
//!   `default` PCM a pulse PCM; PulseEnv sets the default sink to `spk` and the
//!   default source to `mic.monitor`, so `default` behaves like a desk headset.

use std::collections::hash_map::DefaultHasher;
use std::fs;
use std::hash::{Hash, Hasher};
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

mod alsa;
mod pulse;
mod score;

pub use alsa::*;
pub use pulse::*;
pub use score::*;

/// Sample rate of all fixtures and file devices.
pub const RATE: u32 = 48_000;

/// sox's description of the raw fixtures: `RATE` Hz mono S16.
const RAW_48K_S16: [&str; 10] = [
    "-t",
    "raw",
    "-r",
    "48000",
    "-c",
    "1",
    "-b",
    "16",
    "-e",
    "signed-integer",
];

const SIGKILL: i32 = 9;
const SIGTERM: i32 = 15;

fn send_signal(pid: u32, sig: i32) -> bool {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    if pid == 0 || pid > i32::MAX as u32 {
        return false;
    }
    let Ok(sig) = Signal::try_from(sig) else {
        return false;
    };
    kill(Pid::from_raw(pid as i32), sig).is_ok()
}

pub fn repo_root() -> PathBuf {
    match std::env::var_os("VOXGATE_REPO") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => crate::lab::repo().to_path_buf(),
    }
}

/// A fresh, empty directory for one test: `<target>/tmp/voxgate-audio/<name>-<pid>-<n>`.
pub fn scratch_dir(name: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let base = crate::lab::target_tmpdir().join("voxgate-audio");
    let d = base.join(format!(
        "{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap_or_else(|e| panic!("create {}: {e}", d.display()));
    d
}

fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Panics with a "run scripts/deps" hint if `name` is not on PATH.
pub fn require_tool(name: &str, package: &str) -> PathBuf {
    find_tool(name).unwrap_or_else(|| {
        panic!("`{name}` not found on PATH (Debian package {package}): run scripts/deps")
    })
}

/// Runs `cmd` to completion with its output captured, killing it after `timeout`.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Result<Output, String> {
    let desc = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawn {desc}: {e}"))?;
    // Drain the pipes on threads so a chatty child cannot block on a full pipe.
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let to = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = so.read_to_end(&mut v);
        v
    });
    let te = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = se.read_to_end(&mut v);
        v
    });
    let status = match wait_timeout(&mut child, timeout) {
        Some(s) => s,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{desc}: timed out after {timeout:?}"));
        }
    };
    Ok(Output {
        status,
        stdout: to.join().unwrap_or_default(),
        stderr: te.join().unwrap_or_default(),
    })
}

/// Waits for `child` at most `timeout`; `None` if it is still running.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(s)) => return Some(s),
            Ok(None) => {}
            Err(_) => return None,
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Stops a child politely: SIGTERM (lets parec/arecord finalize a WAV header),
/// waits up to `timeout`, then SIGKILL. Always reaps the child.
pub fn terminate(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    if let Ok(Some(s)) = child.try_wait() {
        return Some(s);
    }
    send_signal(child.id(), SIGTERM);
    if let Some(s) = wait_timeout(child, timeout) {
        return Some(s);
    }
    let _ = child.kill();
    child.wait().ok()
}

fn check_output(what: &str, out: Result<Output, String>) -> Output {
    match out {
        Ok(o) if o.status.success() => o,
        Ok(o) => panic!(
            "{what} failed ({}): {}{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => panic!("{what}: {e}"),
    }
}

fn abs_path(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir().expect("current dir").join(p)
    }
}

/// Speaks `text` with espeak-ng and converts it with sox to raw S16_LE 48 kHz
/// mono at `dir/speech-<hash>.raw`, plus the same samples as `.wav` beside it.
/// Returns the raw path. Deterministic (sox -R, no dither, 3 dB of headroom).
pub fn speech_fixture(dir: &Path, text: &str) -> PathBuf {
    let espeak = require_tool("espeak-ng", "espeak-ng");
    let sox = require_tool("sox", "sox");
    fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    let mut h = DefaultHasher::new();
    text.hash(&mut h);
    let stem = format!("speech-{:016x}", h.finish());
    static N: AtomicUsize = AtomicUsize::new(0);
    let tag = format!(
        "{}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst),
        stem
    );
    let spoken = dir.join(format!(".{tag}.espeak.wav"));
    let raw_tmp = dir.join(format!(".{tag}.raw"));
    let wav_tmp = dir.join(format!(".{tag}.wav"));
    let raw = dir.join(format!("{stem}.raw"));
    let wav = dir.join(format!("{stem}.wav"));

    // Text goes in on stdin so that a text starting with '-' is not an option.
    let mut child = Command::new(&espeak)
        .arg("--stdin")
        .arg("-w")
        .arg(&spoken)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn espeak-ng: {e} (run scripts/deps)"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .expect("write text to espeak-ng");
    match wait_timeout(&mut child, Duration::from_secs(30)) {
        Some(s) if s.success() => {}
        Some(s) => {
            let mut e = String::new();
            let _ = child.stderr.take().unwrap().read_to_string(&mut e);
            panic!("espeak-ng failed ({s}): {e}");
        }
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("espeak-ng timed out");
        }
    }
    check_output(
        "sox (espeak wav -> raw S16LE 48k mono)",
        run_with_timeout(
            Command::new(&sox)
                .args(["-R", "-D"])
                .arg(&spoken)
                .args(RAW_48K_S16)
                .arg(&raw_tmp)
                .args(["gain", "-3"]),
            Duration::from_secs(30),
        ),
    );
    check_output(
        "sox (raw -> wav)",
        run_with_timeout(
            Command::new(&sox)
                .arg("-R")
                .args(RAW_48K_S16)
                .arg(&raw_tmp)
                .arg("-t")
                .arg("wav")
                .arg(&wav_tmp),
            Duration::from_secs(30),
        ),
    );
    let _ = fs::remove_file(&spoken);
    fs::rename(&wav_tmp, &wav).expect("rename fixture wav");
    fs::rename(&raw_tmp, &raw).expect("rename fixture raw");
    raw
}

/// Duration in seconds of a raw S16_LE 48 kHz mono file.
pub fn raw_duration_s(raw: &Path) -> f64 {
    let len = fs::metadata(raw)
        .unwrap_or_else(|e| panic!("{}: {e}", raw.display()))
        .len();
    len as f64 / 2.0 / RATE as f64
}

/// Writes `frames` of raw S16_LE 48 kHz mono pseudo-random noise (a deterministic LCG).
pub fn noise_fixture(path: &Path, seconds: f64, amplitude: i16) -> PathBuf {
    let n = (seconds * RATE as f64) as usize;
    let mut state: u32 = 0x1234_5678;
    let mut buf = Vec::with_capacity(n * 2);
    for _ in 0..n {
        state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        let v = ((state >> 16) as i32 - 32768) * amplitude as i32 / 32768;
        buf.extend_from_slice(&(v as i16).to_le_bytes());
    }
    fs::write(path, buf).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    path.to_path_buf()
}
