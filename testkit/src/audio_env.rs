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

/// Sample rate of all fixtures and file devices.
pub const RATE: u32 = 48_000;

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

// ---------------------------------------------------------------------------
// Speech fixtures
// ---------------------------------------------------------------------------

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
                .args([
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
                ])
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
                .args([
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
                ])
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

// ---------------------------------------------------------------------------
// ALSA file devices (unpaced)
// ---------------------------------------------------------------------------

fn alsa_quote(p: &Path) -> String {
    let s = p
        .to_str()
        .unwrap_or_else(|| panic!("non-UTF-8 path {}", p.display()));
    assert!(
        !s.contains('%'),
        "path {s:?} contains '%': ALSA's file plugin would expand it"
    );
    let mut q = String::from("\"");
    for c in s.chars() {
        if c == '"' || c == '\\' {
            q.push('\\');
        }
        q.push(c);
    }
    q.push('"');
    q
}

/// ALSA PCMs backed by raw files, defined in a generated config:
///
/// - `voxcap`: capture, S16_LE 48 kHz mono, reads `capture_infile` bit-exactly,
///   then `silence_tail` of zeros, then stale data (see the module docs); unpaced.
///   Only S16_LE/48000/1 clients are exact.
/// - `voxcap_f32`: the same audio for FLOAT_LE/48000/1 clients (sample/32768).
/// - `voxplay`: playback; whatever a client plays is converted to S16_LE 48 kHz
///   mono and written to `playback_outfile` (unpaced: as fast as it is written).
///
/// With no infile the capture PCMs read `/dev/zero` (silence forever); with no
/// outfile playback goes to /dev/null.
pub struct AlsaFileDevices {
    pub config_path: PathBuf,
    /// The caller's raw S16_LE file (not modified).
    pub capture_infile: Option<PathBuf>,
    /// What `voxcap` really reads: a copy of `capture_infile` + the silence tail.
    pub capture_infile_padded: Option<PathBuf>,
    /// What `voxcap_f32` reads: the same samples as FLOAT_LE (s / 32768) + the tail.
    pub capture_infile_f32: Option<PathBuf>,
    pub playback_outfile: Option<PathBuf>,
}

/// Seconds of zeros appended after the capture infile by [`AlsaFileDevices::new`].
pub const DEFAULT_SILENCE_TAIL_S: f64 = 30.0;

impl AlsaFileDevices {
    pub fn new(dir: &Path, capture_infile: Option<&Path>, playback_outfile: Option<&Path>) -> Self {
        Self::with_silence_tail(
            dir,
            capture_infile,
            playback_outfile,
            DEFAULT_SILENCE_TAIL_S,
        )
    }

    /// Like [`AlsaFileDevices::new`] with `silence_tail_s` seconds of zeros after the infile.
    pub fn with_silence_tail(
        dir: &Path,
        capture_infile: Option<&Path>,
        playback_outfile: Option<&Path>,
        silence_tail_s: f64,
    ) -> Self {
        fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let dir = abs_path(dir);
        let tail_frames = (silence_tail_s.max(0.0) * RATE as f64) as usize;
        let capture_infile = capture_infile.map(|p| {
            let p = abs_path(p);
            let meta =
                fs::metadata(&p).unwrap_or_else(|e| panic!("capture infile {}: {e}", p.display()));
            assert!(
                meta.len().is_multiple_of(2),
                "capture infile {} is not raw S16_LE (odd size)",
                p.display()
            );
            p
        });
        let mut capture_infile_padded = None;
        let mut capture_infile_f32 = None;
        if let Some(p) = &capture_infile {
            let bytes = fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
            let mut s16 = bytes.clone();
            s16.resize(bytes.len() + tail_frames * 2, 0);
            let f = dir.join("voxcap-infile.s16");
            fs::write(&f, s16).unwrap_or_else(|e| panic!("write {}: {e}", f.display()));
            capture_infile_padded = Some(f);
            let mut f32s = Vec::with_capacity(bytes.len() * 2 + tail_frames * 4);
            for s in bytes.chunks_exact(2) {
                let v = i16::from_le_bytes([s[0], s[1]]) as f32 / 32768.0;
                f32s.extend_from_slice(&v.to_le_bytes());
            }
            f32s.resize(bytes.len() * 2 + tail_frames * 4, 0); // 0x00000000 == 0.0f
            let f = dir.join("voxcap-infile.f32");
            fs::write(&f, f32s).unwrap_or_else(|e| panic!("write {}: {e}", f.display()));
            capture_infile_f32 = Some(f);
        }
        let playback_outfile = playback_outfile.map(abs_path);

        let infile_line = |p: &Option<PathBuf>| match p {
            Some(p) => format!("    infile {}\n", alsa_quote(p)),
            // Not "no infile": the null slave leaves the buffer untouched (junk).
            None => String::from("    infile \"/dev/zero\"\n"),
        };
        let outfile = playback_outfile
            .as_deref()
            .map(alsa_quote)
            .unwrap_or_else(|| "\"/dev/null\"".into());
        let conf = format!(
            r#"# Generated by testkit/src/audio_env.rs (AlsaFileDevices).
# Load with ALSA_CONFIG_PATH=/usr/share/alsa/alsa.conf:<this file>.
# The *_file PCMs do the file I/O over the `null` slave (no real-time pacing);
# the public PCMs are `plug` wrappers pinned to the file format.
# Capture is bit-exact only for clients asking the pinned format (see audio_env.rs).

pcm.voxcap_file {{
    type file
    slave.pcm "null"
    file "/dev/null"
{cap}    format "raw"
    hint.show off
}}
pcm.voxcap {{
    type plug
    slave {{ pcm "voxcap_file" format S16_LE rate 48000 channels 1 }}
    hint {{ show on description "voxgate test mic: raw S16_LE 48 kHz mono file (unpaced)" }}
}}

pcm.voxcap_f32_file {{
    type file
    slave.pcm "null"
    file "/dev/null"
{cap32}    format "raw"
    hint.show off
}}
pcm.voxcap_f32 {{
    type plug
    slave {{ pcm "voxcap_f32_file" format FLOAT_LE rate 48000 channels 1 }}
    hint {{ show on description "voxgate test mic: raw FLOAT_LE 48 kHz mono file (unpaced)" }}
}}

pcm.voxplay_file {{
    type file
    slave.pcm "null"
    file {outfile}
    format "raw"
    perm 0644
    hint.show off
}}
pcm.voxplay {{
    type plug
    slave {{ pcm "voxplay_file" format S16_LE rate 48000 channels 1 }}
    hint {{ show on description "voxgate test speaker: writes raw S16_LE 48 kHz mono file (unpaced)" }}
}}
"#,
            cap = infile_line(&capture_infile_padded),
            cap32 = infile_line(&capture_infile_f32),
        );
        let config_path = dir.join("asound-voxgate-file.conf");
        fs::write(&config_path, conf)
            .unwrap_or_else(|e| panic!("write {}: {e}", config_path.display()));
        AlsaFileDevices {
            config_path,
            capture_infile,
            capture_infile_padded,
            capture_infile_f32,
            playback_outfile,
        }
    }

    /// Value for ALSA_CONFIG_PATH: the stock config followed by ours.
    pub fn alsa_config_path_env(&self) -> String {
        format!("/usr/share/alsa/alsa.conf:{}", self.config_path.display())
    }

    /// Environment to give a process that should see these devices.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![("ALSA_CONFIG_PATH".into(), self.alsa_config_path_env())]
    }
}

// ---------------------------------------------------------------------------
// PulseAudio (paced)
// ---------------------------------------------------------------------------

/// A private PulseAudio daemon (as root, `-n`, own XDG_RUNTIME_DIR and HOME)
/// with two null sinks at 48 kHz mono: `mic` (play into it; its monitor
/// `mic.monitor` is a real-time microphone, ALSA PCM `pulsemic`, and the
/// default source) and `spk` (a real-time speaker, ALSA PCM `pulsespk`, the
/// default sink; record it with [`PulseEnv::record_speaker`]).
///
/// The daemon runs under a small `sh` watchdog holding a pipe from this
/// process: if the test process dies without running Drop, the pipe closes
/// and the watchdog stops the daemon. Drop stops it by the pid in
/// `$XDG_RUNTIME_DIR/pulse/pid` and waits (bounded).
pub struct PulseEnv {
    pub dir: PathBuf,
    pub runtime_dir: PathBuf,
    pub socket: PathBuf,
    pub alsa_config: PathBuf,
    pub log_path: PathBuf,
    home: PathBuf,
    runtime_is_tmp: bool,
    watchdog: Option<Child>,
    watchdog_stdin: Option<ChildStdin>,
}

/// Longest unix socket path (sun_path is 108 bytes with the NUL), with margin.
const MAX_SOCKET_PATH: usize = 100;

impl PulseEnv {
    /// Starts the daemon and waits (at most 10 s) until `pactl info` answers
    /// and both sinks exist; panics with the daemon log otherwise.
    pub fn start(dir: &Path) -> Self {
        let pulseaudio = require_tool("pulseaudio", "pulseaudio");
        require_tool("pactl", "pulseaudio-utils");
        fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let dir = abs_path(dir);
        let mut runtime_dir = dir.join("pulse-run");
        let mut runtime_is_tmp = false;
        if runtime_dir.join("pulse/native").as_os_str().len() > MAX_SOCKET_PATH {
            // The socket path would be too long for a unix socket: use /tmp.
            static N: AtomicUsize = AtomicUsize::new(0);
            runtime_dir = PathBuf::from(format!(
                "/tmp/voxgate-pulse-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::SeqCst)
            ));
            runtime_is_tmp = true;
        }
        let _ = fs::remove_dir_all(&runtime_dir); // never reuse a stale pid file/socket
        fs::create_dir_all(&runtime_dir).expect("create runtime dir");
        fs::set_permissions(&runtime_dir, fs::Permissions::from_mode(0o700)).expect("chmod 700");
        let home = dir.join("pulse-home");
        fs::create_dir_all(home.join(".config/pulse")).expect("create pulse home");
        let socket = runtime_dir.join("pulse").join("native");
        let log_path = dir.join("pulseaudio.log");
        let log = fs::File::create(&log_path).expect("create pulseaudio.log");

        let alsa_config = dir.join("asound-voxgate-pulse.conf");
        let server = format!("unix:{}", socket.display());
        fs::write(
            &alsa_config,
            format!(
                r#"# Generated by testkit/src/audio_env.rs (PulseEnv).
# Load with ALSA_CONFIG_PATH=/usr/share/alsa/alsa.conf:<this file>.
# Real-time paced PCMs on a private PulseAudio daemon (libasound2-plugins' pulse PCM).
pcm.pulsemic {{
    type pulse
    server "{server}"
    device "mic.monitor"
    hint {{ show on description "voxgate test mic: PulseAudio mic.monitor (paced)" }}
}}
pcm.pulsespk {{
    type pulse
    server "{server}"
    device "spk"
    hint {{ show on description "voxgate test speaker: PulseAudio spk (paced)" }}
}}
"#
            ),
        )
        .expect("write pulse asound config");

        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(
                // $0 = pulseaudio binary, "$@" = its arguments. The watchdog's
                // stdin is a pipe from this process; the reader subshell's `read`
                // returns when our end closes (Drop, or this process dying) and
                // then stops the daemon (TERM, up to 5 s, then KILL). The shell
                // itself exits when the daemon does, so an early exit is seen.
                r#"exec 3<&0
                   "$0" "$@" </dev/null 3<&- & pid=$!
                   alive() { [ "$(cat /proc/$pid/comm 2>/dev/null)" = pulseaudio ]; }
                   ( read -r _ <&3 || true
                     alive && kill -TERM $pid 2>/dev/null
                     i=0; while alive && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
                     alive && kill -KILL $pid 2>/dev/null
                   ) </dev/null &
                   exec 3<&-
                   wait $pid"#,
            )
            .arg(&pulseaudio)
            .args([
                "-n",
                "--daemonize=no",
                "--system=no",
                "--exit-idle-time=-1",
                "--disallow-exit",
                "--use-pid-file=yes",
                "--log-target=stderr",
                "--log-level=notice",
                "--load=module-null-sink sink_name=mic rate=48000 channels=1 format=s16le norewinds=1",
                "--load=module-null-sink sink_name=spk rate=48000 channels=1 format=s16le norewinds=1",
                "--load=module-native-protocol-unix auth-anonymous=1",
            ])
            .env("XDG_RUNTIME_DIR", &runtime_dir)
            .env("HOME", &home)
            .env("XDG_CONFIG_HOME", home.join(".config"))
            .env_remove("PULSE_SERVER")
            .env_remove("PULSE_RUNTIME_PATH")
            .env_remove("PULSE_STATE_PATH")
            .env_remove("DBUS_SESSION_BUS_ADDRESS")
            .stdin(Stdio::piped())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log);
        let mut watchdog = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn pulseaudio: {e} (run scripts/deps)"));
        let watchdog_stdin = watchdog.stdin.take();
        let mut env = PulseEnv {
            dir,
            runtime_dir,
            socket,
            alsa_config,
            log_path,
            home,
            runtime_is_tmp,
            watchdog: Some(watchdog),
            watchdog_stdin,
        };

        let deadline = Instant::now() + Duration::from_secs(10);
        let mut last = String::new();
        loop {
            if let Some(w) = env.watchdog.as_mut()
                && let Ok(Some(s)) = w.try_wait()
            {
                panic!("pulseaudio exited early ({s}); log:\n{}", env.log_tail());
            }
            if env.socket.exists() {
                match run_with_timeout(
                    env.command("pactl").args(["list", "short", "sinks"]),
                    Duration::from_secs(3),
                ) {
                    Ok(o) if o.status.success() => {
                        let s = String::from_utf8_lossy(&o.stdout);
                        let names: Vec<&str> =
                            s.lines().filter_map(|l| l.split('\t').nth(1)).collect();
                        if names.contains(&"mic") && names.contains(&"spk") {
                            break;
                        }
                        last = format!("sinks: {s}");
                    }
                    Ok(o) => last = String::from_utf8_lossy(&o.stderr).into_owned(),
                    Err(e) => last = e,
                }
            }
            if Instant::now() >= deadline {
                panic!(
                    "pulseaudio not answering after 10 s (last: {last}); log:\n{}",
                    env.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // `default` ALSA device: Debian's 99-pulse.conf routes it to pulse when
        // a server answers. Make it capture the mic and play to the speaker.
        for args in [
            ["set-default-source", "mic.monitor"],
            ["set-default-sink", "spk"],
        ] {
            check_output(
                "pactl set-default",
                run_with_timeout(env.command("pactl").args(args), Duration::from_secs(5)),
            );
        }
        env
    }

    fn log_tail(&self) -> String {
        let s = fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    /// Environment for clients of this daemon: XDG_RUNTIME_DIR, PULSE_SERVER,
    /// PULSE_COOKIE and ALSA_CONFIG_PATH (with `pulsemic` / `pulsespk`).
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            (
                "XDG_RUNTIME_DIR".into(),
                self.runtime_dir.display().to_string(),
            ),
            (
                "PULSE_SERVER".into(),
                format!("unix:{}", self.socket.display()),
            ),
            (
                "PULSE_COOKIE".into(),
                self.home.join(".config/pulse/cookie").display().to_string(),
            ),
            (
                "ALSA_CONFIG_PATH".into(),
                format!("/usr/share/alsa/alsa.conf:{}", self.alsa_config.display()),
            ),
        ]
    }

    /// A Command for `program` with [`PulseEnv::env`] applied.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new(program);
        c.envs(self.env());
        c
    }

    /// The pid of the daemon, from `$XDG_RUNTIME_DIR/pulse/pid`.
    pub fn daemon_pid(&self) -> Option<u32> {
        fs::read_to_string(self.runtime_dir.join("pulse/pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// `paplay` of a WAV (or raw S16_LE 48 kHz mono `.raw`/`.s16`) into the
    /// `mic` sink; it plays in real time and exits when done (it also waits for
    /// the sink to drain, ~0.2-0.5 s more).
    pub fn play_into_mic(&self, wav_or_raw: &Path) -> Child {
        self.paplay("mic", wav_or_raw)
    }

    /// `paplay` into the `spk` sink (stands in for the gateway's speaker output).
    pub fn play_into_speaker(&self, wav_or_raw: &Path) -> Child {
        self.paplay("spk", wav_or_raw)
    }

    fn paplay(&self, sink: &str, file: &Path) -> Child {
        require_tool("paplay", "pulseaudio-utils");
        let mut c = self.command("paplay");
        c.arg(format!("--device={sink}"));
        let ext = file.extension().and_then(|e| e.to_str()).unwrap_or("");
        if ext == "raw" || ext == "s16" || ext == "pcm" {
            c.args(["--raw", "--format=s16le", "--rate=48000", "--channels=1"]);
        }
        c.arg(file).stdin(Stdio::null()).stdout(Stdio::null());
        c.spawn().unwrap_or_else(|e| panic!("spawn paplay: {e}"))
    }

    /// `parec` of `spk.monitor` into a 48 kHz mono S16 WAV. Stop it with
    /// [`terminate`] (SIGTERM) so the WAV header is finalized.
    pub fn record_speaker(&self, out_wav: &Path) -> Child {
        self.parec("spk.monitor", out_wav)
    }

    /// `parec` of `mic.monitor` (what is being played into the mic).
    pub fn record_mic(&self, out_wav: &Path) -> Child {
        self.parec("mic.monitor", out_wav)
    }

    fn parec(&self, source: &str, out_wav: &Path) -> Child {
        require_tool("parec", "pulseaudio-utils");
        self.command("parec")
            .arg(format!("--device={source}"))
            .args([
                "--rate=48000",
                "--channels=1",
                "--format=s16le",
                "--file-format=wav",
            ])
            .arg(out_wav)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn parec: {e}"))
    }

    fn count(&self, what: &str) -> usize {
        match run_with_timeout(
            self.command("pactl").args(["list", "short", what]),
            Duration::from_secs(3),
        ) {
            Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter(|l| !l.trim().is_empty())
                .count(),
            _ => 0,
        }
    }

    /// Waits until at least `n` recording streams (source-outputs: arecord on
    /// `pulsemic`, parec, the gateway's capture) are connected. A capture stream
    /// hears only what is played after it connects, so call this before playing.
    pub fn wait_capture_streams(&self, n: usize, timeout: Duration) -> bool {
        self.wait_count("source-outputs", n, timeout)
    }

    /// Waits until at least `n` playback streams (sink-inputs) are connected.
    pub fn wait_playback_streams(&self, n: usize, timeout: Duration) -> bool {
        self.wait_count("sink-inputs", n, timeout)
    }

    fn wait_count(&self, what: &str, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.count(what) >= n {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for PulseEnv {
    fn drop(&mut self) {
        let pid = self.daemon_pid();
        if let Some(pid) = pid {
            send_signal(pid, SIGTERM);
        }
        drop(self.watchdog_stdin.take()); // the watchdog also stops it
        if let Some(mut w) = self.watchdog.take()
            && wait_timeout(&mut w, Duration::from_secs(8)).is_none()
        {
            if let Some(pid) = pid {
                send_signal(pid, SIGKILL);
            }
            let _ = w.kill();
            let _ = wait_timeout(&mut w, Duration::from_secs(2));
        }
        if let Some(pid) = pid {
            // Bounded check that the daemon is really gone.
            let deadline = Instant::now() + Duration::from_secs(2);
            while Path::new(&format!("/proc/{pid}")).exists()
                && fs::read_to_string(format!("/proc/{pid}/comm"))
                    .map(|c| c.trim() == "pulseaudio")
                    .unwrap_or(false)
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        if self.runtime_is_tmp {
            let _ = fs::remove_dir_all(&self.runtime_dir);
        }
    }
}

// ---------------------------------------------------------------------------
// Scoring
// ---------------------------------------------------------------------------

/// Result of `scripts/score.py --json`.
#[derive(Debug, Clone, PartialEq)]
pub struct Score {
    pub pesq_wb: f64,
    pub stoi: f64,
    /// > 0: the degraded signal lags the reference by this much.
    pub offset_ms: f64,
    pub pesq_nb: Option<f64>,
    pub ref_duration_s: f64,
    pub deg_duration_s: f64,
    pub overlap_s: f64,
    /// RMS level of the degraded signal over the scored overlap, dBFS.
    pub deg_rms_dbfs: f64,
}

/// Scores `degraded` against `reference` (WAV, or raw S16_LE 48 kHz mono
/// `.raw`/`.s16`) with `$REPO/.venv/bin/python $REPO/scripts/score.py --json`.
/// Panics with the script's stderr if it fails (unreadable input, overlap < 1 s,
/// a silent degraded signal).
pub fn score(reference: &Path, degraded: &Path) -> Score {
    try_score(reference, degraded).unwrap_or_else(|e| panic!("{e}"))
}

/// Like [`score`], but returns the script's error message instead of panicking
/// (a missing venv still panics: that is a broken environment, not a result).
pub fn try_score(reference: &Path, degraded: &Path) -> Result<Score, String> {
    let repo = repo_root();
    let py = repo.join(".venv/bin/python");
    let script = repo.join("scripts/score.py");
    assert!(py.is_file(), "{} missing: run scripts/deps", py.display());
    assert!(script.is_file(), "{} missing", script.display());
    let out = run_with_timeout(
        Command::new(&py)
            .arg(&script)
            .arg(reference)
            .arg(degraded)
            .arg("--json"),
        Duration::from_secs(180),
    )
    .map_err(|e| format!("score.py: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "score.py {} {} failed ({}): {}",
            reference.display(),
            degraded.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    parse_score(&stdout).map_err(|e| format!("score.py output {stdout:?}: {e}"))
}

/// Parses the flat JSON object printed by score.py --json (no serde).
pub fn parse_score(json: &str) -> Result<Score, String> {
    let num = |key: &str| -> Result<Option<f64>, String> {
        let pat = format!("\"{key}\"");
        let at = json.find(&pat).ok_or_else(|| format!("no key {key}"))?;
        let rest = json[at + pat.len()..].trim_start();
        let rest = rest
            .strip_prefix(':')
            .ok_or_else(|| format!("no ':' after {key}"))?
            .trim_start();
        let end = rest
            .find(|c: char| c == ',' || c == '}' || c.is_whitespace())
            .unwrap_or(rest.len());
        let tok = &rest[..end];
        if tok == "null" {
            return Ok(None);
        }
        tok.parse::<f64>()
            .map(Some)
            .map_err(|e| format!("{key}: {tok:?}: {e}"))
    };
    let req = |key: &str| num(key)?.ok_or_else(|| format!("{key} is null"));
    Ok(Score {
        pesq_wb: req("pesq_wb")?,
        stoi: req("stoi")?,
        offset_ms: req("offset_ms")?,
        pesq_nb: num("pesq_nb")?,
        ref_duration_s: req("ref_duration_s")?,
        deg_duration_s: req("deg_duration_s")?,
        overlap_s: req("overlap_s")?,
        deg_rms_dbfs: req("deg_rms_dbfs")?,
    })
}
