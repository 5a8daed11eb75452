//! SIPp: the PCMU speech, the scenario (tests/sipp/load-call.xml) with
//! the phone's credentials, and the runs.

use super::*;

/// 8 kHz mu-law speech as a raw file (sipp loops it) for sipp's
/// `rtp_stream` (payload bytes only: 160 a packet at 20 ms).
pub(crate) fn pcmu_raw(dir: &Path) -> PathBuf {
    let raw = voxgate_testkit::audio_env::speech_fixture(dir, TEXT);
    let pcm48: Vec<i16> = std::fs::read(raw)
        .unwrap()
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect();
    let pcm8: Vec<i16> = pcm48
        .chunks_exact(6)
        .map(|c| (c.iter().map(|&s| i32::from(s)).sum::<i32>() / 6) as i16)
        .collect();
    let mut mu = vec![0u8; pcm8.len() / 160 * 160];
    voxgate::codec::g711::encode(voxgate::codec::g711::Law::Mu, &pcm8[..mu.len()], &mut mu);
    let path = dir.join("speech.pcmu");
    std::fs::write(&path, mu).unwrap();
    path
}

/// SIPp 3.7.3 from scripts/sipp-trixie (its `rtp_stream` gives each call its
/// own RTP socket; bookworm's 3.6.1 streams every call from one port).
pub(crate) fn sipp_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("VOXGATE_SIPP").filter(|v| !v.is_empty()) {
        return PathBuf::from(p);
    }
    voxgate_testkit::sip::sipp37()
}

/// The UAC scenario (tests/sipp/load-call.xml): INVITE 900, MD5
/// challenge, INVITE with credentials, 200, ACK, RTP streamed from the raw
/// PCMU file `audio` for `hold`, BYE.
pub(crate) fn scenario(audio: &Path, hold: Duration) -> String {
    fill(
        &sipp_file("load-call.xml"),
        &[
            ("AUDIO", &audio.display().to_string()),
            ("HOLD_MS", &hold.as_millis().to_string()),
        ],
    )
}

// sipp runs

pub(crate) struct Sipp {
    pub(crate) child: Child,
    pub(crate) stat: PathBuf,
    pub(crate) name: String,
}

/// The port range sipp's `rtp_stream` binds its calls' sockets in.
pub(crate) static SIPP_RTP: std::sync::OnceLock<(u16, u16)> = std::sync::OnceLock::new();

pub(crate) fn rtp_port_args(phone: usize) -> [String; 4] {
    let (lo, hi) = *SIPP_RTP.get().expect("sipp RTP range chosen in main");
    // Each sipp (phone) its own slice of the range: sipps do not know of
    // each other's ports.
    let span = (hi - lo + 1) / MAX_PHONES as u16 / 2 * 2;
    let lo = lo + span * phone as u16;
    let hi = lo + span - 1;
    [
        "-min_rtp_port".into(),
        lo.to_string(),
        "-max_rtp_port".into(),
        hi.to_string(),
    ]
}

/// Writes a scenario (mode 0600) with the phone's digest credentials in its
/// `[authentication]` keyword, so that the password is not in sipp's argv
/// (SIPp does not expand injection fields inside that keyword).
pub(crate) fn write_scenario(file: &Path, scenario: &str, phone: &Phone) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    assert!(scenario.contains("[authentication]"));
    assert_filled(scenario);
    let text = scenario.replace(
        "[authentication]",
        &voxgate_testkit::sip::sipp_auth(&phone.ext, &phone.password),
    );
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(file)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .unwrap();
}

/// One desk phone that a sipp plays: its extension, its digest password
/// and its injection file.
pub(crate) struct Phone {
    pub(crate) ext: String,
    pub(crate) password: String,
    pub(crate) inf: PathBuf,
}

/// Start sipp on CPU 0 as phone number `index` of the bench's:
/// `calls` calls at `cps`, at most `limit` at once.
#[allow(clippy::too_many_arguments)]
pub(crate) fn start_sipp(
    dir: &Path,
    name: &str,
    target: &str,
    scenario_file: &Path,
    (index, phone): (usize, &Phone),
    calls: usize,
    cps: usize,
    limit: usize,
    bound: Duration,
) -> Sipp {
    let stat = dir.join(format!("{name}-stat.csv"));
    let _ = std::fs::remove_file(&stat);
    let child = Command::new("taskset")
        .args(["-c", "0", "timeout", "-s", "INT", "-k", "5"])
        .arg(bound.as_secs().to_string())
        .arg(sipp_bin())
        .args([target, "-sf"])
        .arg(scenario_file)
        .arg("-inf")
        .arg(&phone.inf)
        // The digest uri must be the Request-URI (sipp's default drops the user).
        .args(["-auth_uri", &format!("900@{target}")])
        .args(["-i", "127.0.0.1", "-mi", "127.0.0.1", "-p"])
        .arg(free_udp().to_string())
        .args(rtp_port_args(index))
        .args(["-rtp_threadtasks", &RTP_THREADTASKS.to_string()])
        .args(["-m", &calls.to_string(), "-l", &limit.to_string()])
        .args(["-r", &cps.to_string(), "-rp", "1000"])
        .args(["-nostdin", "-max_socket", "4096", "-timeout_error"])
        .args(["-recv_timeout", "10000"])
        .args(["-trace_stat", "-fd", "1", "-stf"])
        .arg(&stat)
        .args(["-trace_err", "-error_file"])
        .arg(dir.join(format!("{name}-errors.log")))
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join(format!("{name}.stderr"))).unwrap())
        .spawn()
        .expect("sipp (Debian package sip-tester; scripts/deps installs it)");
    Sipp {
        child,
        stat,
        name: name.into(),
    }
}

#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct SippResult {
    pub(crate) ok: bool,
    pub(crate) successful: f64,
    pub(crate) failed: f64,
    /// The signal that killed sipp, if one did (SIPp 3.7.3 sometimes
    /// segfaults as a step's last calls end).
    pub(crate) signal: Option<i32>,
}

impl Sipp {
    /// Wait for sipp to exit (it is bounded by `timeout` already).
    pub(crate) fn finish(mut self, dir: &Path) -> SippResult {
        let status = self.child.wait().ok();
        let (mut successful, mut failed) = (f64::NAN, f64::NAN);
        if let Ok(text) = std::fs::read_to_string(&self.stat) {
            let mut lines = text.lines().filter(|l| !l.trim().is_empty());
            if let Some(h) = lines.next() {
                let cols: Vec<&str> = h.split(';').collect();
                if let Some(last) = lines.next_back() {
                    let vals: Vec<&str> = last.split(';').collect();
                    let col = |name: &str| {
                        cols.iter()
                            .position(|c| *c == name)
                            .and_then(|i| vals.get(i))
                            .and_then(|v| v.trim().parse::<f64>().ok())
                            .unwrap_or(f64::NAN)
                    };
                    successful = col("SuccessfulCall(C)");
                    failed = col("FailedCall(C)");
                }
            }
        }
        // Exit 253 is SIPp's RTP echo check (`rtp_stream` compares what
        // comes back with what it sent, byte for byte): transcoded audio never
        // matches, so it is not a failure here. Calls are judged by sipp's
        // counters, RTP by the gateway's.
        let ok = status.is_some_and(|s| s.success() || s.code() == Some(253));
        if !ok {
            let err = std::fs::read_to_string(dir.join(format!("{}.stderr", self.name)))
                .unwrap_or_default();
            eprintln!(
                "sipp {}: exit {:?}, {} successful, {} failed; {}",
                self.name,
                status.and_then(|s| s.code()),
                successful,
                failed,
                err.lines().rev().take(3).collect::<Vec<_>>().join(" | ")
            );
        }
        SippResult {
            ok,
            successful,
            failed,
            signal: status.and_then(|s| std::os::unix::process::ExitStatusExt::signal(&s)),
        }
    }
}
