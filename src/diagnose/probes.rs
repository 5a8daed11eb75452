//! The probes: one question about the box each, answered as a
//! [`Finding`]. Each takes what it needs as arguments (no config type), so
//! `voxgate check` and `voxgate setup` call the same functions; the
//! verdict of each is a pure function of what was read (`*_verdict`,
//! [`clock`], [`relay::quic`], [`relay::rtt`]), unit-tested without IO.
//!
//! | probe | reads |
//! | --- | --- |
//! | [`ClockSource::read`] + [`clock`] | `adjtimex(2)` (no modes: a read): `TIME_ERROR` / `STA_UNSYNC`; or `timedatectl show -p NTPSynchronized`; or a file holding that output (tests) |
//! | [`relay::dns`] | the system resolver (`getaddrinfo`: `/etc/hosts`, `/etc/resolv.conf`) |
//! | [`relay::udp`] | one UDP datagram: a QUIC Initial of a reserved version, which every QUIC server answers with Version Negotiation (RFC 9000 §6); ICMP port unreachable, silence, or the answer and its round trip |
//! | [`relay::handshake`] + [`relay::quic`], [`relay::rtt`] | a QUIC + TLS 1.3 handshake verified by the caller's verifier (no client certificate: the relay records nothing), and quinn's RTT estimate |
//! | [`tpm_state`] + [`tpm`] | a TPM2_GetRandom at the configured TPM, bounded by `identity::setup::PROBE_TIMEOUT` |
//! | [`audio`] | the ALSA device opened through cpal and started for a moment; on failure, whether the daemon holds it (`/proc/<pid>/fd`) |
//! | [`disk`] | `statvfs(2)` of the state directory (space for unprivileged users), and a 4 KiB file written and removed |

//!
//! `voxgate setup`'s hardware step, before the box has a config or a CA
//! file, asks the same questions with what it has:
//!
//! ```no_run
//! use voxgate::audio::device::Dir;
//! use voxgate::diagnose::probes::{self, ClockSource};
//! use voxgate::transport::tls::PinnedCaVerifier;
//!
//! let pinned = PinnedCaVerifier::new(&format!("SHA256:{}", "ab".repeat(32))).unwrap();
//! let relay = probes::relay::probe("relay.example.net:443", "relay.voxgate.local", pinned);
//! let spec = "device:/dev/tpmrm0".parse().unwrap();
//! let findings = [
//!     probes::clock(ClockSource::Kernel.read()),
//!     probes::tpm(&spec, &probes::tpm_state(&spec), false),
//!     probes::audio(Dir::Capture, probes::open_audio(None, Dir::Capture), None),
//!     probes::audio(Dir::Playback, probes::open_audio(None, Dir::Playback), None),
//!     probes::disk(std::path::Path::new("/var/lib/voxgate")),
//! ];
//! for f in relay.into_vec().iter().chain(&findings) {
//!     println!("{} {:?} {} {}", f.id, f.status, f.message, f.hint.as_deref().unwrap_or(""));
//! }
//! ```

pub mod relay;

use super::Finding;
use crate::audio::device::{self, Dir};
use crate::identity::tpm::{TpmError, TpmSpec};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where the clock's synchronization state comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClockSource {
    /// The kernel's own discipline, `adjtimex(2)`: whatever synchronizes
    /// it (systemd-timesyncd, chrony, ntpd) clears `STA_UNSYNC`.
    Kernel,
    /// `timedatectl show -p NTPSynchronized`.
    Timedatectl,
    /// A file holding `timedatectl show -p NTPSynchronized`'s output
    /// (`NTPSynchronized=yes|no`): the tests' stand-in, since the kernel's
    /// state cannot be faked without changing the whole machine's clock.
    File(PathBuf),
}

impl std::str::FromStr for ClockSource {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "kernel" => Ok(ClockSource::Kernel),
            "timedatectl" => Ok(ClockSource::Timedatectl),
            _ => match s.strip_prefix("file:") {
                Some(p) if !p.is_empty() => Ok(ClockSource::File(PathBuf::from(p))),
                _ => Err("one of kernel, timedatectl, file:PATH".into()),
            },
        }
    }
}

/// What a clock source said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClockReading {
    /// Whether the clock is synchronized to a time source.
    pub synchronized: bool,
    /// The kernel's maximum error estimate, microseconds (kernel only).
    pub max_error_us: Option<i64>,
    /// Where this came from, for the message.
    pub source: String,
}

/// The kernel's answer turned into a reading: unsynchronized when
/// `adjtimex` returns `TIME_ERROR` or the status has `STA_UNSYNC`.
pub fn kernel_reading(state: i32, status: i32, max_error_us: i64) -> ClockReading {
    ClockReading {
        synchronized: state != libc::TIME_ERROR && status & libc::STA_UNSYNC == 0,
        max_error_us: Some(max_error_us),
        source: "kernel (adjtimex)".into(),
    }
}

/// `NTPSynchronized=yes|no` from `timedatectl show`'s output.
pub fn parse_timedatectl(text: &str) -> Option<bool> {
    text.lines()
        .find_map(|l| l.trim().strip_prefix("NTPSynchronized="))
        .and_then(|v| match v.trim() {
            "yes" => Some(true),
            "no" => Some(false),
            _ => None,
        })
}

impl ClockSource {
    /// Read the synchronization state.
    pub fn read(&self) -> Result<ClockReading, String> {
        let from_text = |text: &str, source: String| {
            parse_timedatectl(text)
                .map(|synchronized| ClockReading {
                    synchronized,
                    max_error_us: None,
                    source: source.clone(),
                })
                .ok_or_else(|| format!("{source} gave no NTPSynchronized=yes|no"))
        };
        match self {
            ClockSource::Kernel => crate::privilege::kernel_clock()
                .map(|(state, status, max)| kernel_reading(state, status, max))
                .map_err(|e| format!("adjtimex failed: {e}")),
            ClockSource::Timedatectl => {
                let out = std::process::Command::new("timedatectl")
                    .args(["show", "-p", "NTPSynchronized"])
                    .stdin(std::process::Stdio::null())
                    .output()
                    .map_err(|e| format!("cannot run timedatectl: {e}"))?;
                from_text(&String::from_utf8_lossy(&out.stdout), "timedatectl".into())
            }
            ClockSource::File(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| format!("cannot read {}: {e}", p.display()))?;
                from_text(&text, p.display().to_string())
            }
        }
    }
}

/// A kernel error estimate above this is a warning even when synchronized.
pub const CLOCK_MAX_ERROR_WARN_US: i64 = 1_000_000;

/// `clock`: whether the clock can be trusted for certificate validity.
pub fn clock(reading: Result<ClockReading, String>) -> Finding {
    const ID: &str = "clock";
    let fix = "enable time synchronization (`timedatectl set-ntp true` for systemd-timesyncd, or chrony) and let UDP port 123 reach your NTP server; certificates look expired or not yet valid on a clock that is off";
    match reading {
        Err(e) => Finding::warn(
            ID,
            format!("cannot tell whether the clock is synchronized: {e}"),
            fix,
        ),
        Ok(r) if !r.synchronized => Finding::fail(
            ID,
            format!("the clock is not synchronized ({})", r.source),
            fix,
        ),
        Ok(r) => match r.max_error_us {
            Some(e) if e > CLOCK_MAX_ERROR_WARN_US => Finding::warn(
                ID,
                format!(
                    "synchronized, but the kernel estimates the error at up to {} ms ({})",
                    e / 1000,
                    r.source
                ),
                "check the time server's reachability (`timedatectl timesync-status` or `chronyc tracking`)",
            ),
            Some(e) => Finding::ok(
                ID,
                format!("synchronized ({}; max error {} ms)", r.source, e / 1000),
            ),
            None => Finding::ok(ID, format!("synchronized ({})", r.source)),
        },
    }
}

/// What probing a TPM found.
#[derive(Debug)]
pub enum TpmState {
    /// It answered a TPM2_GetRandom.
    Works,
    /// There is none: no device node, nothing listening on the simulator's
    /// port.
    Absent(TpmError),
    /// It is there but does not work (hung, failure mode, locked out).
    Broken(TpmError),
}

/// Probe the TPM at `spec` (bounded by `identity::setup::PROBE_TIMEOUT`
/// per exchange).
pub fn tpm_state(spec: &TpmSpec) -> TpmState {
    match crate::identity::setup::probe_tpm(spec) {
        Ok(_) => TpmState::Works,
        Err(e) if crate::identity::setup::tpm_absent(spec, &e) => TpmState::Absent(e),
        Err(e) => TpmState::Broken(e),
    }
}

/// `tpm`: the TPM at `spec` and whether the device key needs it (`used`).
pub fn tpm(spec: &TpmSpec, state: &TpmState, used: bool) -> Finding {
    const ID: &str = "tpm";
    match (state, used) {
        (TpmState::Works, true) => Finding::ok(ID, format!("the TPM at {spec} answers")),
        (TpmState::Works, false) => Finding::ok(
            ID,
            format!("the TPM at {spec} answers (this box's key is not in it)"),
        ),
        (TpmState::Absent(_), false) => Finding::ok(
            ID,
            format!("no TPM at {spec}; this box's key does not use one"),
        ),
        (TpmState::Absent(e), true) => Finding::fail(
            ID,
            format!(
                "the TPM at {spec} is gone ({e}); the device key is in it, so the box cannot connect"
            ),
            "check that the TPM is enabled and its driver loaded (`ls /dev/tpm*`, `dmesg | grep -i tpm`); a replaced board needs a new enrollment (`voxgate setup` with a re-enrollment token)",
        ),
        (TpmState::Broken(e), true) => Finding::fail(
            ID,
            format!("the TPM at {spec} is present but does not work: {e}"),
            "run `tpm2_getrandom 8`; a TPM in failure mode needs a reboot, a locked-out one waits out its lockout",
        ),
        (TpmState::Broken(e), false) => Finding::warn(
            ID,
            format!(
                "the TPM at {spec} is present but does not work: {e} (this box's key does not use it)"
            ),
            "run `tpm2_getrandom 8`; a TPM in failure mode needs a reboot",
        ),
    }
}

/// The check id of an audio direction.
pub fn audio_id(dir: Dir) -> &'static str {
    match dir {
        Dir::Capture => "audio.capture",
        Dir::Playback => "audio.playback",
    }
}

/// Open the `dir` device `name` (`None`: the default) the way the daemon
/// does, start it for a moment and close it.
pub fn open_audio(name: Option<&str>, dir: Dir) -> Result<String, String> {
    device::quietly(|| open_audio_now(name, dir))
}

fn open_audio_now(name: Option<&str>, dir: Dir) -> Result<String, String> {
    use cpal::traits::{DeviceTrait, StreamTrait};
    let dev = device::find(name, dir).map_err(|e| e.to_string())?;
    let cfg = device::choose_config(&dev, dir).map_err(|e| e.to_string())?;
    let sc = device::stream_config(&cfg, 20);
    let label = dev.to_string();
    let fail = |e: cpal::Error| format!("{dir} device `{label}`: {e}");
    let stream = match dir {
        Dir::Capture => dev.build_input_stream_raw(
            sc,
            cfg.sample_format(),
            |_: &cpal::Data, _: &cpal::InputCallbackInfo| {},
            |_| {},
            Some(Duration::from_secs(2)),
        ),
        Dir::Playback => dev.build_output_stream_raw(
            sc,
            cfg.sample_format(),
            |d: &mut cpal::Data, _: &cpal::OutputCallbackInfo| {
                if let Some(s) = d.as_slice_mut::<i16>() {
                    s.fill(0);
                } else if let Some(s) = d.as_slice_mut::<f32>() {
                    s.fill(0.0);
                }
            },
            |_| {},
            Some(Duration::from_secs(2)),
        ),
    }
    .map_err(fail)?;
    stream.play().map_err(fail)?;
    std::thread::sleep(Duration::from_millis(50));
    drop(stream);
    Ok(format!(
        "`{label}` opens: {} Hz, {} channel(s), {}",
        cfg.sample_rate(),
        cfg.channels(),
        cfg.sample_format()
    ))
}

/// `audio.capture` / `audio.playback`: the result of [`open_audio`], and
/// the daemon (its pid) when it holds a sound device of this direction,
/// which explains a device that is busy.
pub fn audio(dir: Dir, opened: Result<String, String>, held_by: Option<i32>) -> Finding {
    let id = audio_id(dir);
    match (opened, held_by) {
        (Ok(m), _) => Finding::ok(id, m),
        (Err(_), Some(pid)) => Finding::ok(
            id,
            format!("in use by the running voxgate (pid {pid}), which holds the {dir} device"),
        ),
        (Err(e), None) => Finding::fail(
            id,
            e,
            format!(
                "set `{dir}.device` to a device that `voxgate run --list-devices` lists, or connect the device; `arecord -l` / `aplay -l` show what ALSA sees"
            ),
        ),
    }
}

/// Below this much space for unprivileged users the state directory fails.
pub const DISK_FAIL_BYTES: u64 = 1 << 20;
/// Below this much it warns.
pub const DISK_WARN_BYTES: u64 = 16 << 20;

/// What the state filesystem's free space means.
pub fn disk_verdict(available: u64) -> super::Status {
    match available {
        a if a < DISK_FAIL_BYTES => super::Status::Fail,
        a if a < DISK_WARN_BYTES => super::Status::Warn,
        _ => super::Status::Ok,
    }
}

/// `disk.state`: room to renew the certificate and write state in `dir`.
pub fn disk(dir: &Path) -> Finding {
    const ID: &str = "disk.state";
    let fix = format!(
        "free space on the filesystem of {} (renewals and the phone store are written there): remove old logs or files, or grow the filesystem",
        dir.display()
    );
    let st = match nix::sys::statvfs::statvfs(dir) {
        Ok(s) => s,
        Err(e) => {
            return Finding::fail(ID, format!("cannot stat {}: {e}", dir.display()), fix);
        }
    };
    let available = st.blocks_available() as u64 * st.fragment_size() as u64;
    let total = st.blocks() as u64 * st.fragment_size() as u64;
    let mib = |b: u64| b as f64 / f64::from(1u32 << 20);
    let what = format!(
        "{:.1} MiB free of {:.1} MiB at {}",
        mib(available),
        mib(total),
        dir.display()
    );
    // A write proves more than the counters (inodes, read-only mounts).
    let probe = dir.join(format!(".voxgate-check-{}", std::process::id()));
    let written = write_probe(&probe);
    let _ = std::fs::remove_file(&probe);
    match (disk_verdict(available), written) {
        (_, Err(e)) => Finding::fail(ID, format!("{what}; writing a file there failed: {e}"), fix),
        (super::Status::Fail, _) => Finding::fail(ID, format!("{what}: full"), fix),
        (super::Status::Warn, _) => Finding::warn(ID, format!("{what}: nearly full"), fix),
        _ => Finding::ok(ID, what),
    }
}

fn write_probe(path: &Path) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)?;
    f.write_all(&[0u8; 4096])?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnose::Status;

    #[test]
    fn clock_sources_parse() {
        assert_eq!("kernel".parse(), Ok(ClockSource::Kernel));
        assert_eq!(
            "file:/x".parse(),
            Ok(ClockSource::File(PathBuf::from("/x")))
        );
        assert!("file:".parse::<ClockSource>().is_err());
        assert!("ntp".parse::<ClockSource>().is_err());
        assert_eq!(parse_timedatectl("NTPSynchronized=yes\n"), Some(true));
        assert_eq!(parse_timedatectl("X=1\nNTPSynchronized=no"), Some(false));
        assert_eq!(parse_timedatectl("NTPSynchronized=maybe"), None);
        assert_eq!(parse_timedatectl(""), None);
    }

    #[test]
    fn kernel_state_and_status_decide_synchronization() {
        assert!(kernel_reading(libc::TIME_OK, 0, 500).synchronized);
        assert!(!kernel_reading(libc::TIME_ERROR, 0, 500).synchronized);
        assert!(!kernel_reading(libc::TIME_OK, libc::STA_UNSYNC, 500).synchronized);
        // The real syscall answers (whatever this machine's state is).
        assert!(ClockSource::Kernel.read().is_ok());
    }

    #[test]
    fn clock_verdicts() {
        let r = |synchronized, max_error_us| {
            Ok(ClockReading {
                synchronized,
                max_error_us,
                source: "t".into(),
            })
        };
        assert_eq!(clock(r(true, Some(2_000))).status, Status::Ok);
        assert_eq!(clock(r(true, None)).status, Status::Ok);
        assert_eq!(clock(r(true, Some(5_000_000))).status, Status::Warn);
        let f = clock(r(false, Some(0)));
        assert_eq!(f.status, Status::Fail);
        assert!(f.hint.unwrap().contains("timedatectl set-ntp true"));
        assert_eq!(clock(Err("x".into())).status, Status::Warn);
    }

    #[test]
    fn disk_thresholds() {
        assert_eq!(disk_verdict(0), Status::Fail);
        assert_eq!(disk_verdict(DISK_FAIL_BYTES - 1), Status::Fail);
        assert_eq!(disk_verdict(DISK_FAIL_BYTES), Status::Warn);
        assert_eq!(disk_verdict(DISK_WARN_BYTES), Status::Ok);
        let dir = std::env::temp_dir();
        let f = disk(&dir);
        assert_ne!(f.status, Status::Skip, "{f:?}");
        assert!(f.message.contains("MiB free"), "{f:?}");
        assert_eq!(disk(Path::new("/no/such/dir")).status, Status::Fail);
    }

    #[test]
    fn tpm_verdicts_depend_on_whether_the_key_uses_it() {
        let spec: TpmSpec = "swtpm:127.0.0.1:1".parse().unwrap();
        let absent = || {
            TpmState::Absent(TpmError::Open {
                spec: spec.to_string(),
                source: std::io::ErrorKind::ConnectionRefused.into(),
                hint: "",
            })
        };
        assert_eq!(tpm(&spec, &absent(), false).status, Status::Ok);
        assert_eq!(tpm(&spec, &absent(), true).status, Status::Fail);
        assert_eq!(tpm(&spec, &TpmState::Works, true).status, Status::Ok);
        // Nothing listens on port 1: absent, not broken.
        assert!(matches!(tpm_state(&spec), TpmState::Absent(_)));
    }

    #[test]
    fn a_busy_device_held_by_the_daemon_is_not_a_failure() {
        let busy = || Err("device busy".to_string());
        assert_eq!(audio(Dir::Capture, busy(), Some(7)).status, Status::Ok);
        let f = audio(Dir::Playback, busy(), None);
        assert_eq!((f.id, f.status), ("audio.playback", Status::Fail));
        assert!(f.hint.unwrap().contains("playback.device"));
    }
}
