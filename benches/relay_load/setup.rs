//! Set-up: the machine's quiet moments, the recordings directory, the
//! speech packets, and the relay as production runs it.

use super::*;

/// Waits (at most `max`, streams keep flowing) for a second in which
/// processes other than the relay and this one used less than `QUIET`
/// cores; returns that load and the time waited.
pub(crate) async fn wait_quiet(relay_pid: &str, tck: f64, max: Duration) -> (f64, f64) {
    let start = Instant::now();
    loop {
        let t0 = Instant::now();
        let a = (
            cpu_ticks().iter().sum::<u64>(),
            proc_ticks(relay_pid),
            proc_ticks("self"),
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        let b = (
            cpu_ticks().iter().sum::<u64>(),
            proc_ticks(relay_pid),
            proc_ticks("self"),
        );
        let ours = b.1.saturating_sub(a.1) + b.2.saturating_sub(a.2);
        let load =
            (b.0.saturating_sub(a.0) as f64 - ours as f64) / tck / t0.elapsed().as_secs_f64();
        let load = load.max(0.0);
        if load < QUIET || start.elapsed() >= max {
            if load >= QUIET {
                eprintln!(
                    "relay_load: machine still busy ({load:.2} cores) after {max:?}; measuring anyway"
                );
            }
            return (load, start.elapsed().as_secs_f64());
        }
    }
}

/// A recordings directory, removed when dropped (after the relay: declare
/// it first).
pub(crate) struct RecDir(pub(crate) PathBuf);

impl Drop for RecDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub(crate) fn tmpfs_dir() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some("/dev/shm") && l.contains(" tmpfs "))
        .then(|| {
            PathBuf::from(format!(
                "/dev/shm/voxgate-relay-load-{}",
                std::process::id()
            ))
        })
        .filter(|d| std::fs::create_dir_all(d).is_ok())
}

/// Pre-encoded Opus packets of speech, with the gateway's codec settings.
pub(crate) fn packets(dir: &Path) -> Vec<Vec<u8>> {
    let raw = voxgate_testkit::audio_env::speech_fixture(dir, TEXT);
    let pcm: Vec<i16> = std::fs::read(raw)
        .unwrap()
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect();
    let codec = CodecConfig::default();
    let mut enc = voxgate::codec::OpusEncoder::new(&codec).expect("encoder");
    pcm.chunks_exact(codec.frame_samples())
        .map(|f| enc.encode(f).expect("encode").to_vec())
        .collect()
}

/// The relay under test: this build's, or `$VOXGATE_RELAY_BIN` (another
/// build, to compare two relays under the same generator).
pub(crate) fn relay_bin() -> String {
    std::env::var("VOXGATE_RELAY_BIN")
        .ok()
        .filter(|b| !b.is_empty())
        .unwrap_or_else(|| voxgate_testkit::lab::bin().to_string())
}

/// `$VOXGATE_RELAY_LOAD_API=1`: the relay serves `[api]` (idle), to show
/// that a listening API costs the streams nothing (`scripts/bench-api-idle`).
pub(crate) fn api_on() -> bool {
    std::env::var("VOXGATE_RELAY_LOAD_API").is_ok_and(|v| v == "1")
}

pub(crate) fn start_relay(lab: &Lab, recordings: &Path) -> Proc {
    let cfg = lab.dir.join("relay-load.toml");
    std::fs::write(
        &cfg,
        format!(
            "listen = \"127.0.0.1:{}\"\nstate_dir = \"relay\"\nrecordings = \"{}\"\n\
             server_name = \"{SERVER_NAME}\"\n[downlink]\nmode = \"none\"\n\
             [recording]\nenabled = true\n\
             [limits]\nmax_handshakes_per_source = 64\n{retry}\
             [telemetry]\nlog = \"info\"\nmetrics = \"{}\"\n\
             [privilege]\nstay_root = true\n\
             [sandbox]\nread = [\"{dir}\", \"/tmp\"]\nwrite = [\"{dir}\", \"{rec}\"]\n{ca}{api}",
            lab.quic_port,
            recordings.display(),
            lab.relay_metrics,
            dir = lab.dir.display(),
            rec = recordings.display(),
            // The lab sealed the relay's keys to a machine id of its own.
            ca = lab.ca_section(),
            // The operator API listening and idle (no request reaches it).
            api = if api_on() {
                format!(
                    "\n[api]\nlisten = \"127.0.0.1:{}\"\n",
                    voxgate_testkit::lab::free_tcp()
                )
            } else {
                String::new()
            },
            retry = super::retry_above()
                .map(|r| format!("retry_above_handshakes_per_s = {r}\n"))
                .unwrap_or_default(),
        ),
    )
    .unwrap();
    let log = lab.dir.join("relay-load.log");
    lab.start_relay_pinned(&relay_bin(), &cfg, &log, 0)
}
