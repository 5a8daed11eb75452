//! Child processes under guard, timed runs, and a UDP sink for peers.

use super::*;

/// A child that is stopped (SIGTERM, then SIGKILL) when dropped.
pub(crate) struct ChildGuard(pub(crate) Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        voxgate_testkit::audio_env::terminate(&mut self.0, Duration::from_secs(3));
    }
}

/// CPU of one child run: user and system seconds from its rusage (bash's
/// `time`, millisecond resolution), and wall seconds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timed {
    pub(crate) user: f64,
    pub(crate) sys: f64,
    pub(crate) wall: f64,
}

impl Timed {
    pub(crate) fn cpu(&self) -> f64 {
        self.user + self.sys
    }
}

/// Runs `argv` to completion under bash's `time` in its own process group
/// (killed as a group on timeout).
pub(crate) fn timed(argv: &[String], scratch: &Path, timeout: Duration) -> Result<Timed, String> {
    let tf = scratch.join("time.txt");
    let ef = scratch.join("stderr.txt");
    let _ = std::fs::remove_file(&tf);
    let mut child = Command::new("bash")
        .arg("-c")
        .arg(
            r#"TIMEFORMAT="%3U %3S %3R"; { time "$@" >/dev/null 2>"$VB_ERR" </dev/null; } 2>"$VB_TIME""#,
        )
        .arg("voxgate-bench-time")
        .args(argv)
        .env("VB_TIME", &tf)
        .env("VB_ERR", &ef)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("spawn bash: {e}"))?;
    let status = match wait_timeout(&mut child, timeout) {
        Some(s) => s,
        None => {
            let pg = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::killpg(pg, nix::sys::signal::Signal::SIGKILL);
            let _ = child.wait();
            return Err(format!("{} timed out after {timeout:?}", argv[0]));
        }
    };
    let err = std::fs::read_to_string(&ef).unwrap_or_default();
    if !status.success() {
        return Err(format!("{} failed ({status}): {}", argv[0], err.trim()));
    }
    let t = std::fs::read_to_string(&tf).map_err(|e| format!("{}: {e}", tf.display()))?;
    let v: Vec<f64> = t
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    match v[..] {
        [user, sys, wall] => Ok(Timed { user, sys, wall }),
        _ => Err(format!("cannot parse bash time output {t:?}")),
    }
}

/// A UDP port on loopback that reads and counts what peers send it.
pub(crate) struct UdpSink {
    pub(crate) port: u16,
    pub(crate) packets: Arc<AtomicU64>,
    pub(crate) stop: Arc<AtomicBool>,
    pub(crate) thread: Option<std::thread::JoinHandle<()>>,
}

impl UdpSink {
    pub(crate) fn new() -> UdpSink {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind udp sink");
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let port = sock.local_addr().unwrap().port();
        let packets = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (packets.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !s.load(Ordering::Relaxed) {
                if sock.recv(&mut buf).is_ok() {
                    p.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        UdpSink {
            port,
            packets,
            stop,
            thread: Some(thread),
        }
    }
    pub(crate) fn count(&self) -> u64 {
        self.packets.load(Ordering::Relaxed)
    }
}

impl Drop for UdpSink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
