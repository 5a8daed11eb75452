//! Device identity benchmark (`cargo bench --bench identity`;
//! `scripts/bench-identity` runs it and writes the `identity` block of
//! docs/BENCHMARKS.md from its JSON summary).
//!
//! One release relay (`voxgate relay run`, its fleet CA and TLS keys sealed
//! as `relay init` writes them, registry on disk, log level `info`) runs
//! pinned to CPU 0 (`taskset -c 0`). This process is the device side and the
//! load generator, pinned to CPU 1 with everything it starts (swtpm too).
//!
//! 1. Handshakes: three devices, enrolled the way the product does it
//!    (`voxgate relay token create` + `voxgate setup --backend sealed-file`,
//!    `--backend tpm` on swtpm) plus the development plaintext `dev-file`
//!    identity (`voxgate relay dev-cert`) as the baseline. Each identity is
//!    loaded with `identity::backend::load` and presented through
//!    `transport::tls::client_config` exactly as `voxgate run` does (a
//!    one-worker multi-thread runtime, so the TPM signs under
//!    `block_in_place`). Timed: `connect` to the established connection
//!    (client side: the client certificate and its CertificateVerify,
//!    signed in the backend, are sent), and on to the relay's `welcome`
//!    (the relay has checked the certificate). The backends take turns, so
//!    the machine's noise is spread evenly over them.
//! 2. Renewal: for sealed-file and TPM, a fresh key each time
//!    (`Renewer::prepare`, timed separately), then from sending `renew` on
//!    the live control stream to the new chain and key stored
//!    (`Renewer::commit`: three files written with fsync, the TLS resolver
//!    swapped). Each renewal uses a new session (the relay allows one
//!    renewal per 5 s per session), which also proves the renewed pair
//!    handshakes.
//! 3. Enrollment throughput of the one relay core: tokens created with
//!    `Registry::create_token` (what `voxgate relay token create` runs) in
//!    the relay's registry; a fresh P-256 key and CSR per device, made
//!    before each step; open-loop offered rates in steps, each enrollment a
//!    real `voxgate-enroll/1` client (pinned-CA verifier, `enroll` message,
//!    certificate checked against the key and the device id) on its own
//!    source address in 127.1.0.0/16, used once, so the relay's per-address
//!    limiter (burst 5) never refuses a valid client and stays unchanged.
//!    Then floods of wrong tokens: from many addresses next to valid
//!    enrollments, and from one address.
//!
//! Results: a table on stdout and `$VOXGATE_BENCH_OUT/identity.json`.
//! Bounded: every network wait has a deadline, the steps a time budget;
//! the relay and swtpm are stopped by guards, also on panic.

#[allow(dead_code)]
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use voxgate::config::GatewayConfig;
use voxgate::identity::backend::{self, LoadedIdentity};
use voxgate::relay::registry::Registry;
use voxgate::transport::control::{Enroll, Hello, Message, Renew};
use voxgate::transport::framed::{self, FrameReader};
use voxgate::transport::tls;
use voxgate_testkit::lab::{Lab, Proc, scrape};

/// Handshakes per backend.
const HANDSHAKES: usize = 200;
/// Renewals per renewing backend.
const RENEWALS: usize = 40;
/// Offered enrollment rates (per second), each for `STEP`.
const RATES: [f64; 8] = [200.0, 400.0, 600.0, 800.0, 1000.0, 1200.0, 1600.0, 2000.0];
const STEP: Duration = Duration::from_secs(4);
/// A step passes when nothing failed and the achieved rate is at least
/// this share of the offered one.
const ACHIEVED_MIN: f64 = 0.97;
/// Enrollments in flight at most; beyond it the generator counts a miss.
const MAX_IN_FLIGHT: usize = 2000;
const TARGET_ENROLL_PER_S: f64 = 200.0;
const TIMEOUT: Duration = Duration::from_secs(10);
/// All enrollment steps together.
const BUDGET: Duration = Duration::from_secs(300);
/// Wrong-token flood beside valid enrollments, per second.
const FLOOD_RATE: f64 = 600.0;
const FLOOD_VALID_RATE: f64 = 100.0;
/// Attempts of the one-address flood, per second.
const ONE_ADDR_ATTEMPTS: usize = 60;
const ONE_ADDR_RATE: f64 = 30.0;
const SERVER_NAME: &str = "relay.voxgate.test";
/// Other load (cores) under which the machine counts as quiet, and the
/// longest wait for it before a measurement starts anyway.
const QUIET: f64 = 0.25;
const QUIET_WAIT: Duration = Duration::from_secs(45);

// ---------------------------------------------------------------------------
// A minimal JSON value (no serde_json in the dependency tree).
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum J {
    B(bool),
    N(f64),
    S(String),
    A(Vec<J>),
    O(Vec<(String, J)>),
}

impl J {
    fn obj() -> J {
        J::O(Vec::new())
    }
    fn set(&mut self, k: &str, v: impl Into<J>) -> &mut J {
        if let J::O(v0) = self {
            v0.retain(|(key, _)| key != k);
            v0.push((k.to_string(), v.into()));
        }
        self
    }
    fn get(&self, k: &str) -> Option<&J> {
        match self {
            J::O(v) => v.iter().find(|(key, _)| key == k).map(|(_, v)| v),
            _ => None,
        }
    }
    fn num(&self, k: &str) -> Option<f64> {
        match self.get(k) {
            Some(J::N(n)) if n.is_finite() => Some(*n),
            _ => None,
        }
    }
    fn write(&self, out: &mut String, indent: usize) {
        let pad = "  ".repeat(indent + 1);
        match self {
            J::B(b) => out.push_str(if *b { "true" } else { "false" }),
            J::N(n) if n.is_finite() => {
                let _ = write!(out, "{}", (n * 1e4).round() / 1e4);
            }
            J::N(_) => out.push_str("null"),
            J::S(s) => {
                out.push('"');
                for c in s.chars() {
                    match c {
                        '"' => out.push_str("\\\""),
                        '\\' => out.push_str("\\\\"),
                        c if (c as u32) < 0x20 => {
                            let _ = write!(out, "\\u{:04x}", c as u32);
                        }
                        c => out.push(c),
                    }
                }
                out.push('"');
            }
            J::A(v) => {
                out.push('[');
                for (i, x) in v.iter().enumerate() {
                    out.push_str(if i == 0 { "\n" } else { ",\n" });
                    out.push_str(&pad);
                    x.write(out, indent + 1);
                }
                if !v.is_empty() {
                    let _ = write!(out, "\n{}", "  ".repeat(indent));
                }
                out.push(']');
            }
            J::O(v) => {
                out.push('{');
                for (i, (k, x)) in v.iter().enumerate() {
                    out.push_str(if i == 0 { "\n" } else { ",\n" });
                    let _ = write!(out, "{pad}\"{k}\": ");
                    x.write(out, indent + 1);
                }
                if !v.is_empty() {
                    let _ = write!(out, "\n{}", "  ".repeat(indent));
                }
                out.push('}');
            }
        }
    }
    fn render(&self) -> String {
        let mut s = String::new();
        self.write(&mut s, 0);
        s.push('\n');
        s
    }
}

impl From<f64> for J {
    fn from(v: f64) -> J {
        J::N(v)
    }
}
impl From<usize> for J {
    fn from(v: usize) -> J {
        J::N(v as f64)
    }
}
impl From<bool> for J {
    fn from(v: bool) -> J {
        J::B(v)
    }
}
impl From<&str> for J {
    fn from(v: &str) -> J {
        J::S(v.to_string())
    }
}
impl From<String> for J {
    fn from(v: String) -> J {
        J::S(v)
    }
}
impl From<Option<f64>> for J {
    fn from(v: Option<f64>) -> J {
        v.map_or(J::N(f64::NAN), J::N)
    }
}

// ---------------------------------------------------------------------------
// /proc and set-up
// ---------------------------------------------------------------------------

fn clk_tck() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// utime + stime of a whole process, in ticks.
fn proc_ticks(pid: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = text.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let n = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
    n(11) + n(12)
}

/// user + nice + system + steal of every CPU, in ticks.
fn cpu_ticks() -> u64 {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let mut sum = 0;
    for l in text.lines() {
        let mut f = l.split_whitespace();
        let Some(name) = f.next() else { continue };
        if name.len() > 3 && name.starts_with("cpu") {
            let n: Vec<u64> = f.filter_map(|x| x.parse().ok()).collect();
            let at = |i: usize| n.get(i).copied().unwrap_or(0);
            sum += at(0) + at(1) + at(2) + at(7);
        }
    }
    sum
}

/// CPU use over a stretch of time: the relay's, this process's (with its
/// children: swtpm), and everything else on the machine ("other load").
struct CpuWindow {
    t0: Instant,
    all: u64,
    relay: u64,
    me: u64,
    tpm: u64,
    relay_pid: String,
    tpm_pid: Option<String>,
}

impl CpuWindow {
    fn start(relay_pid: &str, tpm_pid: Option<&str>) -> CpuWindow {
        CpuWindow {
            t0: Instant::now(),
            all: cpu_ticks(),
            relay: proc_ticks(relay_pid),
            me: proc_ticks("self"),
            tpm: tpm_pid.map_or(0, proc_ticks),
            relay_pid: relay_pid.into(),
            tpm_pid: tpm_pid.map(str::to_string),
        }
    }

    /// (relay cores, this process's + swtpm's cores, other load in cores)
    fn end(&self, tck: f64) -> (f64, f64, f64) {
        let s = self.t0.elapsed().as_secs_f64().max(1e-3);
        let relay = proc_ticks(&self.relay_pid).saturating_sub(self.relay);
        let me = proc_ticks("self").saturating_sub(self.me)
            + self
                .tpm_pid
                .as_deref()
                .map_or(0, |p| proc_ticks(p).saturating_sub(self.tpm));
        let all = cpu_ticks().saturating_sub(self.all);
        let other = all.saturating_sub(relay + me);
        let c = |t: u64| t as f64 / tck / s;
        (c(relay), c(me), c(other))
    }
}

fn status_field(pid: &str, key: &str) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k == key).then(|| v.trim().to_string())
        })
}

/// Pins every thread of this process (only the main one exists yet; the
/// runtime's threads and the children started later inherit it) to `cpu`.
fn pin_self(cpu: usize) -> Result<String, String> {
    let out = Command::new("taskset")
        .args(["-a", "-p", "-c", &cpu.to_string()])
        .arg(std::process::id().to_string())
        .output()
        .map_err(|e| format!("taskset: {e} (util-linux)"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    status_field("self", "Cpus_allowed_list").ok_or_else(|| "no Cpus_allowed_list".into())
}

fn fs_type(dir: &Path) -> String {
    Command::new("findmnt")
        .args(["-n", "-o", "FSTYPE", "-T"])
        .arg(dir)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

/// The relay as production runs it (log level info), pinned to CPU 0.
fn start_relay(lab: &Lab) -> Proc {
    let cfg = lab.dir.join("relay-identity.toml");
    std::fs::write(
        &cfg,
        format!(
            "listen = \"127.0.0.1:{}\"\nstate_dir = \"relay\"\nrecordings = \"recordings\"\n\
             server_name = \"{SERVER_NAME}\"\n[downlink]\nmode = \"none\"\n\
             [telemetry]\nlog = \"info\"\nmetrics = \"{}\"\n{}{}",
            lab.quic_port,
            lab.relay_metrics,
            voxgate_testkit::lab::dev_privilege(&lab.dir),
            lab.ca_section(),
        ),
    )
    .unwrap();
    let log = lab.dir.join("relay-identity.log");
    let child = Command::new("taskset")
        .args(["-c", "0"])
        .arg(voxgate_testkit::lab::bin())
        .args(["relay", "run", "--config"])
        .arg(&cfg)
        .env_remove("VOXGATE_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("spawn taskset (util-linux)");
    let mut p = Proc {
        child,
        name: "relay".into(),
        log,
    };
    let t0 = Instant::now();
    while scrape(lab.relay_metrics).is_none() {
        p.assert_running();
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "relay did not start"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
    p
}

fn fingerprint(lab: &Lab) -> String {
    let ca = tls::read_certs(&lab.dir.join("relay/ca.pem")).unwrap();
    voxgate::relay::ca::fingerprint(&ca[0])
}

/// `voxgate relay token create` then `voxgate setup` with `backend`;
/// returns the config setup wrote.
fn setup(lab: &Lab, id: &str, backend: &[&str]) -> PathBuf {
    let out = Command::new(voxgate_testkit::lab::bin())
        .args(["relay", "token", "create", "--config"])
        .arg(lab.dir.join("relay.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "token create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tok = lab.dir.join(format!("{id}.token"));
    std::fs::write(&tok, String::from_utf8(out.stdout).unwrap().trim()).unwrap();
    std::fs::set_permissions(&tok, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mid = lab.dir.join("machine-id");
    std::fs::write(&mid, "0123456789abcdef0123456789abcdef\n").unwrap();
    let cfg = lab.dir.join(format!("{id}.toml"));
    let out = Command::new(voxgate_testkit::lab::bin())
        .args(["setup", "--relay", &format!("127.0.0.1:{}", lab.quic_port)])
        .args(["--ca-fingerprint", &fingerprint(lab), "--device-id", id])
        .args(["--server-name", SERVER_NAME, "--token-file"])
        .arg(&tok)
        .arg("--dir")
        .arg(lab.dir.join(id))
        .arg("--config-out")
        .arg(&cfg)
        .arg("--machine-id")
        .arg(&mid)
        .arg("--serial")
        .arg(lab.dir.join("no-serial"))
        .args(backend)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&tok);
    assert!(
        out.status.success(),
        "setup {id}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    cfg
}

/// A device as `voxgate run` loads it.
struct Device {
    name: &'static str,
    id: String,
    loaded: LoadedIdentity,
    cfg: quinn::ClientConfig,
    key: PathBuf,
    cert: PathBuf,
}

fn device(name: &'static str, cfg_path: &Path) -> Device {
    let cfg = GatewayConfig::load(cfg_path).expect("the written config loads");
    let loaded = backend::load(&cfg.device_id, &cfg.identity).expect("identity loads");
    loaded.verify().expect("the backend holds the key");
    let ca = tls::read_certs(&cfg.relay.ca).unwrap();
    let client = tls::client_config(&ca, loaded.identity.as_ref()).unwrap();
    Device {
        name,
        id: cfg.device_id.clone(),
        loaded,
        cfg: client,
        key: cfg.identity.key.clone(),
        cert: cfg.identity.cert.clone(),
    }
}

// ---------------------------------------------------------------------------
// Statistics
// ---------------------------------------------------------------------------

fn quantile(v: &[f64], q: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let i = ((s.len() as f64 - 1.0) * q).round() as usize;
    Some(s[i.min(s.len() - 1)])
}

fn dist(v: &[f64]) -> J {
    let mut o = J::obj();
    o.set("n", v.len())
        .set("median_ms", quantile(v, 0.5))
        .set("p90_ms", quantile(v, 0.9))
        .set("p99_ms", quantile(v, 0.99))
        .set("min_ms", quantile(v, 0.0))
        .set("max_ms", quantile(v, 1.0));
    o
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

// ---------------------------------------------------------------------------
// Device sessions: handshakes and renewals
// ---------------------------------------------------------------------------

type Control = (quinn::SendStream, FrameReader);

/// Connect, then hello/welcome. Returns the connection, its control stream,
/// and the times to established and to welcome.
async fn session(
    endpoint: &quinn::Endpoint,
    d: &Device,
    relay: SocketAddr,
) -> Result<(quinn::Connection, Control, f64, f64), String> {
    let t0 = Instant::now();
    let connecting = endpoint
        .connect_with(d.cfg.clone(), relay, SERVER_NAME)
        .map_err(|e| e.to_string())?;
    let conn = tokio::time::timeout(TIMEOUT, connecting)
        .await
        .map_err(|_| "handshake timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let established = ms(t0.elapsed());
    let hello = async {
        let (mut send, recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        let mut reader = FrameReader::new(recv);
        let mut caps = serde_json_core::heapless::Vec::new();
        let _ = caps.push("opus");
        framed::send(
            &mut send,
            &Message::Hello(Hello {
                device: &d.id,
                version: env!("CARGO_PKG_VERSION"),
                caps,
            }),
        )
        .await
        .map_err(|e| e.to_string())?;
        reader
            .next(|m| match m {
                Message::Welcome(_) => Ok(()),
                Message::Error(e) => Err(format!("refused: {}: {}", e.code, e.message)),
                other => Err(format!("expected welcome, got {other:?}")),
            })
            .await
            .map_err(|e| e.to_string())??;
        Ok::<_, String>((send, reader))
    };
    let control = tokio::time::timeout(TIMEOUT, hello)
        .await
        .map_err(|_| "welcome timed out".to_string())??;
    let welcomed = ms(t0.elapsed());
    Ok((conn, control, established, welcomed))
}

struct HandshakeResult {
    established: Vec<f64>,
    welcomed: Vec<f64>,
    errors: usize,
    first_error: Option<String>,
}

async fn handshakes(devices: &[Device], relay: SocketAddr, n: usize) -> Vec<HandshakeResult> {
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let mut out: Vec<HandshakeResult> = devices
        .iter()
        .map(|_| HandshakeResult {
            established: Vec::new(),
            welcomed: Vec::new(),
            errors: 0,
            first_error: None,
        })
        .collect();
    // Warm-up: one of each, not counted.
    for d in devices {
        if let Ok((c, _, _, _)) = session(&endpoint, d, relay).await {
            c.close(0u32.into(), b"bench");
        }
    }
    for _ in 0..n {
        for (d, r) in devices.iter().zip(out.iter_mut()) {
            match session(&endpoint, d, relay).await {
                Ok((conn, _control, e, w)) => {
                    r.established.push(e);
                    r.welcomed.push(w);
                    conn.close(0u32.into(), b"bench");
                }
                Err(e) => {
                    r.errors += 1;
                    r.first_error.get_or_insert(e);
                }
            }
            // Let the relay finish the closed session before the next one.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    endpoint.close(0u32.into(), b"done");
    let _ = tokio::time::timeout(Duration::from_secs(3), endpoint.wait_idle()).await;
    out
}

struct RenewResult {
    prepare: Vec<f64>,
    renew: Vec<f64>,
    errors: usize,
    first_error: Option<String>,
    fresh_keys: usize,
}

async fn renew_once(
    endpoint: &quinn::Endpoint,
    d: &Device,
    relay: SocketAddr,
) -> Result<(f64, f64, bool), String> {
    let renewer = d
        .loaded
        .renewer
        .clone()
        .ok_or("this backend does not renew")?;
    let (conn, (mut send, mut reader), _, _) = session(endpoint, d, relay).await?;
    let key_before = std::fs::read(&d.key).map_err(|e| e.to_string())?;
    // The next key (fresh where the backend allows), off the workers as
    // the client does it.
    let t0 = Instant::now();
    let r = renewer.clone();
    let pending = tokio::task::spawn_blocking(move || r.prepare())
        .await
        .map_err(|e| e.to_string())??;
    let prepare = ms(t0.elapsed());
    let t1 = Instant::now();
    framed::send(&mut send, &Message::Renew(Renew { csr: &pending.csr }))
        .await
        .map_err(|e| e.to_string())?;
    let cert = tokio::time::timeout(TIMEOUT, async {
        loop {
            let m = reader
                .next(|m| match m {
                    Message::Renewed(e) => Ok(Some(e.cert.to_string())),
                    Message::Error(e) => Err(format!("refused: {}: {}", e.code, e.message)),
                    _ => Ok(None),
                })
                .await
                .map_err(|e| e.to_string())??;
            if let Some(c) = m {
                return Ok::<_, String>(c);
            }
        }
    })
    .await
    .map_err(|_| "no renewed answer".to_string())??;
    let r = renewer.clone();
    let serial = tokio::task::spawn_blocking(move || r.commit(pending, &cert))
        .await
        .map_err(|e| e.to_string())??;
    let renew = ms(t1.elapsed());
    conn.close(0u32.into(), b"bench");
    // Stored: the certificate file carries the new serial.
    let stored = tls::read_certs(&d.cert).map_err(|e| e.to_string())?;
    let (_, x) = x509_parser::parse_x509_certificate(&stored[0]).map_err(|e| e.to_string())?;
    let on_disk: String = x
        .tbs_certificate
        .raw_serial()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if on_disk != serial {
        return Err(format!("stored serial {on_disk} != renewed {serial}"));
    }
    let fresh = std::fs::read(&d.key).map_err(|e| e.to_string())? != key_before;
    Ok((prepare, renew, fresh))
}

async fn renewals(devices: &[&Device], relay: SocketAddr, n: usize) -> Vec<RenewResult> {
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let mut out: Vec<RenewResult> = devices
        .iter()
        .map(|_| RenewResult {
            prepare: Vec::new(),
            renew: Vec::new(),
            errors: 0,
            first_error: None,
            fresh_keys: 0,
        })
        .collect();
    for _ in 0..n {
        for (d, r) in devices.iter().zip(out.iter_mut()) {
            match renew_once(&endpoint, d, relay).await {
                Ok((p, t, fresh)) => {
                    r.prepare.push(p);
                    r.renew.push(t);
                    r.fresh_keys += usize::from(fresh);
                }
                Err(e) => {
                    r.errors += 1;
                    r.first_error.get_or_insert(e);
                }
            }
        }
    }
    endpoint.close(0u32.into(), b"done");
    let _ = tokio::time::timeout(Duration::from_secs(3), endpoint.wait_idle()).await;
    out
}

// ---------------------------------------------------------------------------
// Enrollment load
// ---------------------------------------------------------------------------

/// One enrollment attempt: a token, a device, a CSR of a fresh key, the
/// source address.
struct Job {
    token: voxgate::telemetry::Secret<String>,
    device: String,
    csr: String,
    public: Vec<u8>,
    src: IpAddr,
    valid: bool,
}

/// The `k`-th source address of 127.1.0.0 onward (no .0 or .255).
fn source(k: usize) -> IpAddr {
    let a = 1 + k / (254 * 254);
    let b = (k / 254) % 254 + 1;
    let c = k % 254 + 1;
    IpAddr::V4(Ipv4Addr::new(127, a as u8, b as u8, c as u8))
}

/// A fresh P-256 key's CSR (base64 DER) and public point.
fn csr(device: &str) -> (String, Vec<u8>) {
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = rcgen::CertificateParams::default();
    p.distinguished_name.push(rcgen::DnType::CommonName, device);
    let der = p.serialize_request(&kp).unwrap();
    (B64.encode(der.der()), kp.public_key_raw().to_vec())
}

/// Addresses handed out so far (each is used once).
struct Sources(usize);

impl Sources {
    fn next(&mut self) -> IpAddr {
        self.0 += 1;
        source(self.0)
    }
}

/// `n` attempts; every `valid_every`-th (from the first) has a valid token,
/// the others a wrong one (`valid_every == 1`: all valid; 0: none). Tokens are made
/// in one registry transaction, as many `relay token create` would.
fn jobs(
    registry: &Registry,
    sources: &mut Sources,
    n: usize,
    valid_every: usize,
    tag: &str,
) -> Vec<Job> {
    let is_valid = |i: usize| valid_every != 0 && i.is_multiple_of(valid_every);
    let valid = (0..n).filter(|&i| is_valid(i)).count();
    let mut tokens = registry
        .atomically(|r| {
            (0..valid)
                .map(|_| r.create_token(Duration::from_secs(3600), "identity bench"))
                .collect::<Result<Vec<_>, _>>()
        })
        .expect("tokens")
        .into_iter();
    (0..n)
        .map(|i| {
            let device = format!("bench-{tag}-{i}");
            let (csr, public) = csr(&device);
            let ok = is_valid(i);
            let token = if ok {
                tokens.next().unwrap()
            } else {
                let raw: String = (0..32)
                    .map(|_| b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"[fastrand::usize(..32)] as char)
                    .collect();
                voxgate::telemetry::Secret::new(raw)
            };
            Job {
                token,
                device,
                csr,
                public,
                src: sources.next(),
                valid: ok,
            }
        })
        .collect()
}

#[derive(Debug)]
enum Outcome {
    /// Enrolled; the certificate names the device and carries its key.
    Enrolled(f64),
    /// The relay answered `refused` (a wrong or used token).
    Refused(f64),
    /// The relay's limiter closed the connection.
    Limited(f64),
    Failed(String),
}

async fn enroll_once(cfg: quinn::ClientConfig, relay: SocketAddr, job: Arc<Job>) -> Outcome {
    let endpoint = match quinn::Endpoint::client(SocketAddr::new(job.src, 0)) {
        Ok(e) => e,
        Err(e) => return Outcome::Failed(format!("bind {}: {e}", job.src)),
    };
    let t0 = Instant::now();
    let attempt = async {
        let conn = endpoint
            .connect_with(cfg, relay, SERVER_NAME)
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let limited = |conn: &quinn::Connection| {
            matches!(conn.close_reason(), Some(quinn::ConnectionError::ApplicationClosed(a))
                if String::from_utf8_lossy(&a.reason).contains("too many"))
        };
        let exchange = async {
            let (mut send, recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
            framed::send(
                &mut send,
                &Message::Enroll(Enroll {
                    token: job.token.expose(),
                    device: &job.device,
                    csr: &job.csr,
                }),
            )
            .await
            .map_err(|e| e.to_string())?;
            let mut reader = FrameReader::new(recv);
            reader
                .next(|m| match m {
                    Message::Enrolled(e) => Ok(Ok(e.cert.to_string())),
                    Message::Error(e) => Ok(Err(e.code.to_string())),
                    other => Err(format!("unexpected answer {other:?}")),
                })
                .await
                .map_err(|e| e.to_string())?
        };
        let answer: Result<Result<String, String>, String> = exchange.await;
        let ms_now = ms(t0.elapsed());
        let out = match answer {
            Ok(Ok(cert)) => {
                let der = B64.decode(cert).map_err(|_| "certificate not base64")?;
                let (_, x) = x509_parser::parse_x509_certificate(&der)
                    .map_err(|_| "certificate does not parse")?;
                if x.public_key().subject_public_key.data.as_ref() != job.public.as_slice() {
                    return Err("certificate for another key".to_string());
                }
                let named = voxgate::relay::ca::common_name(&der.clone().into());
                if named.as_deref() != Some(job.device.as_str()) {
                    return Err(format!("certificate names {named:?}"));
                }
                Outcome::Enrolled(ms_now)
            }
            Ok(Err(code)) if code == "refused" => Outcome::Refused(ms_now),
            Ok(Err(code)) => Outcome::Failed(format!("error {code}")),
            Err(_) if limited(&conn) => Outcome::Limited(ms_now),
            Err(e) => Outcome::Failed(e),
        };
        conn.close(0u32.into(), b"done");
        Ok::<_, String>(out)
    };
    let out = match tokio::time::timeout(TIMEOUT, attempt).await {
        Ok(Ok(o)) => o,
        Ok(Err(e)) => Outcome::Failed(e),
        Err(_) => Outcome::Failed("timed out".into()),
    };
    // The endpoint sends the close and drains by itself once dropped.
    drop(endpoint);
    out
}

#[derive(Default)]
struct Tally {
    attempts: usize,
    enrolled: usize,
    refused: usize,
    limited: usize,
    failed: usize,
    first_error: Option<String>,
    latency: Vec<f64>,
}

impl Tally {
    fn add(&mut self, o: Outcome) {
        self.attempts += 1;
        match o {
            Outcome::Enrolled(t) => {
                self.enrolled += 1;
                self.latency.push(t);
            }
            Outcome::Refused(t) => {
                self.refused += 1;
                self.latency.push(t);
            }
            Outcome::Limited(t) => {
                self.limited += 1;
                self.latency.push(t);
            }
            Outcome::Failed(e) => {
                self.failed += 1;
                self.first_error.get_or_insert(e);
            }
        }
    }

    fn json(&self) -> J {
        let mut o = J::obj();
        o.set("attempts", self.attempts)
            .set("enrolled", self.enrolled)
            .set("refused", self.refused)
            .set("limited", self.limited)
            .set("failed", self.failed)
            .set("first_error", self.first_error.clone().unwrap_or_default())
            .set("latency", dist(&self.latency));
        o
    }
}

struct Load<'a> {
    cfg: &'a quinn::ClientConfig,
    relay: SocketAddr,
    relay_pid: String,
    tck: f64,
}

/// Offer `jobs` at `rate` per second (open loop); (valid, wrong) tallies
/// and the step's figures.
async fn offer(load: &Load<'_>, jobs: Vec<Job>, rate: f64) -> (Tally, Tally, J) {
    let n = jobs.len();
    let cpu = CpuWindow::start(&load.relay_pid, None);
    let mut set = tokio::task::JoinSet::new();
    let mut pending = jobs.into_iter().map(Arc::new);
    let (mut valid, mut wrong) = (Tally::default(), Tally::default());
    let mut missed = 0usize;
    let mut late_ms: f64 = 0.0;
    let t0 = Instant::now();
    let mut next = 0usize;
    while next < n {
        let due = ((t0.elapsed().as_secs_f64() * rate) as usize + 1).min(n);
        let behind = (t0.elapsed().as_secs_f64() - next as f64 / rate) * 1e3;
        late_ms = late_ms.max(behind);
        while next < due {
            let job = pending.next().unwrap();
            next += 1;
            if set.len() >= MAX_IN_FLIGHT {
                missed += 1;
                continue;
            }
            let cfg = load.cfg.clone();
            let relay = load.relay;
            set.spawn(async move {
                let is_valid = job.valid;
                (is_valid, enroll_once(cfg, relay, job).await)
            });
        }
        while let Some(r) = set.try_join_next() {
            if let Ok((v, o)) = r {
                if v { valid.add(o) } else { wrong.add(o) }
            }
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let offered_for = t0.elapsed().as_secs_f64();
    while let Ok(Some(r)) =
        tokio::time::timeout(TIMEOUT + Duration::from_secs(1), set.join_next()).await
    {
        if let Ok((v, o)) = r {
            if v { valid.add(o) } else { wrong.add(o) }
        }
    }
    set.abort_all();
    let elapsed = t0.elapsed().as_secs_f64();
    let (relay_cores, gen_cores, other) = cpu.end(load.tck);
    let mut o = J::obj();
    o.set("offered_per_s", rate)
        .set("attempts_scheduled", n)
        .set("offered_over_s", offered_for)
        .set("elapsed_s", elapsed)
        .set("achieved_enrolled_per_s", valid.enrolled as f64 / elapsed)
        .set("generator_missed", missed)
        .set("generator_max_late_ms", late_ms)
        .set("relay_cpu_cores", relay_cores)
        .set("generator_cpu_cores", gen_cores)
        .set("other_load_cores", other);
    (valid, wrong, o)
}

/// Waits (at most `QUIET_WAIT`) until the relay is idle (under 5% of a
/// core, so that a step does not start on the backlog of an overloaded
/// one) and the machine quiet (other processes under `QUIET` cores), each
/// over half a second. Returns the time waited.
async fn relay_idle(relay_pid: &str, tck: f64) -> f64 {
    let t0 = Instant::now();
    loop {
        let cpu = CpuWindow::start(relay_pid, None);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (relay, _, other) = cpu.end(tck);
        if (relay < 0.05 && other < QUIET) || t0.elapsed() > QUIET_WAIT {
            return t0.elapsed().as_secs_f64();
        }
    }
}

fn audit_rows(lab: &Lab) -> usize {
    Registry::open(&lab.dir.join("relay/registry.sqlite3"))
        .and_then(|r| r.audit_events())
        .map_or(0, |v| v.len())
}

async fn enrollment(lab: &Lab, load: &Load<'_>) -> J {
    let registry = Registry::open(&lab.dir.join("relay/registry.sqlite3")).unwrap();
    let mut sources = Sources(0);
    let started = Instant::now();
    let mut steps = Vec::new();
    let mut best: Option<(f64, f64)> = None;
    let mut end = "all steps passed".to_string();
    for (i, &rate) in RATES.iter().enumerate() {
        if started.elapsed() + STEP * 3 > BUDGET {
            end = format!("time budget reached before {rate}/s");
            break;
        }
        let n = (rate * STEP.as_secs_f64()) as usize;
        let jobs = jobs(&registry, &mut sources, n, 1, &format!("s{i}"));
        let waited = relay_idle(&load.relay_pid, load.tck).await;
        let (valid, _, mut o) = offer(load, jobs, rate).await;
        o.set("waited_for_idle_relay_s", waited);
        let achieved = o.num("achieved_enrolled_per_s").unwrap_or(0.0);
        let missed = o.num("generator_missed").unwrap_or(0.0);
        let pass = valid.failed == 0
            && valid.refused == 0
            && valid.limited == 0
            && missed == 0.0
            && valid.enrolled == n
            && achieved >= ACHIEVED_MIN * rate;
        o.set("result", valid.json()).set("pass", pass);
        println!(
            "enroll {rate:>6.0}/s offered: {}/{} enrolled, {} refused, {} limited, {} failed, achieved {achieved:.0}/s, p90 {:.1} ms, relay CPU {:.2}, other load {:.2}{}",
            valid.enrolled,
            n,
            valid.refused,
            valid.limited,
            valid.failed,
            quantile(&valid.latency, 0.9).unwrap_or(f64::NAN),
            o.num("relay_cpu_cores").unwrap_or(0.0),
            o.num("other_load_cores").unwrap_or(0.0),
            valid
                .first_error
                .as_deref()
                .map(|e| format!("; first error: {e}"))
                .unwrap_or_default()
        );
        steps.push(o);
        if pass {
            best = Some((rate, achieved));
        } else {
            end = format!("first failing step: {rate}/s offered");
            break;
        }
    }

    // A wrong-token flood from many addresses, with valid enrollments
    // among it.
    let every = ((FLOOD_RATE + FLOOD_VALID_RATE) / FLOOD_VALID_RATE).round() as usize;
    let n = ((FLOOD_RATE + FLOOD_VALID_RATE) * STEP.as_secs_f64()) as usize;
    let flood_jobs = jobs(&registry, &mut sources, n, every, "flood");
    let waited = relay_idle(&load.relay_pid, load.tck).await;
    let audit0 = audit_rows(lab);
    let (fv, fw, mut flood) = offer(load, flood_jobs, FLOOD_RATE + FLOOD_VALID_RATE).await;
    let audit1 = audit_rows(lab);
    flood
        .set("wrong_per_s", FLOOD_RATE)
        .set("valid_per_s", FLOOD_VALID_RATE)
        .set("valid", fv.json())
        .set("wrong", fw.json())
        .set("audit_rows_written", audit1.saturating_sub(audit0))
        .set("waited_for_idle_relay_s", waited);
    println!(
        "wrong-token flood {FLOOD_RATE}/s + valid {FLOOD_VALID_RATE}/s: valid {}/{} enrolled (p90 {:.1} ms), wrong: {} refused, {} limited, {} failed; relay CPU {:.2}",
        fv.enrolled,
        fv.attempts,
        quantile(&fv.latency, 0.9).unwrap_or(f64::NAN),
        fw.refused,
        fw.limited,
        fw.failed,
        flood.num("relay_cpu_cores").unwrap_or(0.0)
    );

    // One address guessing: the limiter's failure budget cuts it off, and
    // then even a valid token from there is refused.
    let one = Ipv4Addr::new(127, 0, 0, 77);
    let mut one_jobs = jobs(&registry, &mut sources, ONE_ADDR_ATTEMPTS + 1, 0, "one");
    let last = one_jobs.len() - 1;
    one_jobs[last] = {
        let mut j = jobs(&registry, &mut sources, 1, 1, "one-valid").remove(0);
        j.valid = true;
        j
    };
    for j in &mut one_jobs {
        j.src = IpAddr::V4(one);
    }
    // Everything from one address: tally the wrong ones, then the valid.
    relay_idle(&load.relay_pid, load.tck).await;
    let (ov, ow, mut single) = offer(load, one_jobs, ONE_ADDR_RATE).await;
    single
        .set("source", one.to_string())
        .set("wrong", ow.json())
        .set("valid_after", ov.json());
    println!(
        "one address, {ONE_ADDR_ATTEMPTS} wrong tokens at {ONE_ADDR_RATE}/s: {} refused, {} limited; then a valid token: {} enrolled, {} limited",
        ow.refused, ow.limited, ov.enrolled, ov.limited
    );

    let mut o = J::obj();
    o.set("steps", J::A(steps))
        .set("end", end.as_str())
        .set("best_offered_per_s", best.map(|b| b.0))
        .set("best_achieved_per_s", best.map(|b| b.1))
        .set("target_per_s", TARGET_ENROLL_PER_S)
        .set(
            "met",
            best.is_some_and(|b| b.0 >= TARGET_ENROLL_PER_S),
        )
        .set("flood", flood)
        .set("one_address_flood", single)
        .set(
            "sources",
            "each attempt from its own loopback address in 127.1.0.0/16, used once; the relay's limiter (burst 5, 5 failures per 10 min per address) is unchanged",
        );
    o
}

// ---------------------------------------------------------------------------
// main
// ---------------------------------------------------------------------------

fn out_dir() -> PathBuf {
    match std::env::var_os("VOXGATE_BENCH_OUT") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => Path::new(env!("CARGO_TARGET_TMPDIR"))
            .parent()
            .unwrap()
            .join("bench-results"),
    }
}

fn handshake_json(d: &Device, r: &HandshakeResult) -> J {
    let mut o = J::obj();
    o.set("backend", d.name)
        .set("established", dist(&r.established))
        .set("welcomed", dist(&r.welcomed))
        .set("errors", r.errors)
        .set("first_error", r.first_error.clone().unwrap_or_default());
    o
}

fn renewal_json(d: &Device, r: &RenewResult) -> J {
    let mut o = J::obj();
    o.set("backend", d.name)
        .set("renew", dist(&r.renew))
        .set("prepare_key_and_csr", dist(&r.prepare))
        .set("fresh_keys", r.fresh_keys)
        .set("errors", r.errors)
        .set("first_error", r.first_error.clone().unwrap_or_default());
    o
}

async fn run(lab: &Lab, relay: &Proc, tpm: &voxgate_testkit::swtpm::Swtpm, tck: f64) -> J {
    let relay_addr: SocketAddr = format!("127.0.0.1:{}", lab.quic_port).parse().unwrap();
    let relay_pid = relay.pid().to_string();
    let tpm_pid = tpm_pid(tpm);
    // The devices, enrolled and loaded as the product does it.
    let (dev_cfg, _) = lab.gateway_config("bench-dev", lab.quic_port, "");
    let sealed_cfg = setup(lab, "bench-sealed", &["--backend", "sealed-file"]);
    let tpm_cfg = setup(
        lab,
        "bench-tpm",
        &["--backend", "tpm", "--tpm", &tpm.spec()],
    );
    let devices = vec![
        device("dev-file", &dev_cfg),
        device("sealed-file", &sealed_cfg),
        device("tpm (swtpm)", &tpm_cfg),
    ];

    relay_idle(&relay_pid, tck).await;
    let cpu = CpuWindow::start(&relay_pid, tpm_pid.as_deref());
    let hs = handshakes(&devices, relay_addr, HANDSHAKES).await;
    let (hs_relay, hs_dev, hs_other) = cpu.end(tck);
    let mut hs_rows = Vec::new();
    for (d, r) in devices.iter().zip(&hs) {
        println!(
            "handshake {:<12} established median {:.2} ms p90 {:.2} ms; to welcome median {:.2} ms p90 {:.2} ms; {} errors{}",
            d.name,
            quantile(&r.established, 0.5).unwrap_or(f64::NAN),
            quantile(&r.established, 0.9).unwrap_or(f64::NAN),
            quantile(&r.welcomed, 0.5).unwrap_or(f64::NAN),
            quantile(&r.welcomed, 0.9).unwrap_or(f64::NAN),
            r.errors,
            r.first_error
                .as_deref()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default()
        );
        hs_rows.push(handshake_json(d, r));
    }
    let mut handshake = J::obj();
    handshake
        .set("per_backend", HANDSHAKES)
        .set("rows", J::A(hs_rows))
        .set("relay_cpu_cores", hs_relay)
        .set("device_cpu_cores", hs_dev)
        .set("other_load_cores", hs_other);

    let renewing = [&devices[1], &devices[2]];
    relay_idle(&relay_pid, tck).await;
    let cpu = CpuWindow::start(&relay_pid, tpm_pid.as_deref());
    let rn = renewals(&renewing, relay_addr, RENEWALS).await;
    let (_, _, rn_other) = cpu.end(tck);
    let mut rn_rows = Vec::new();
    for (d, r) in renewing.iter().zip(&rn) {
        println!(
            "renewal   {:<12} request to stored median {:.2} ms p90 {:.2} ms; fresh key + CSR median {:.2} ms; {} fresh keys, {} errors{}",
            d.name,
            quantile(&r.renew, 0.5).unwrap_or(f64::NAN),
            quantile(&r.renew, 0.9).unwrap_or(f64::NAN),
            quantile(&r.prepare, 0.5).unwrap_or(f64::NAN),
            r.fresh_keys,
            r.errors,
            r.first_error
                .as_deref()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default()
        );
        rn_rows.push(renewal_json(d, r));
    }
    let mut renewal = J::obj();
    renewal
        .set("per_backend", RENEWALS)
        .set("rows", J::A(rn_rows))
        .set("other_load_cores", rn_other);

    // Enrollment load: one client config, as `voxgate setup` builds it.
    let verifier = tls::PinnedCaVerifier::new(&fingerprint(lab)).unwrap();
    let cfg = tls::enroll_client_config(verifier).unwrap();
    let load = Load {
        cfg: &cfg,
        relay: relay_addr,
        relay_pid,
        tck,
    };
    let enroll = enrollment(lab, &load).await;

    let mut root = J::obj();
    root.set("handshake", handshake)
        .set("renewal", renewal)
        .set("enrollment", enroll);
    root
}

fn tpm_pid(tpm: &voxgate_testkit::swtpm::Swtpm) -> Option<String> {
    // swtpm is this process's child, listening on its port.
    let out = Command::new("pgrep")
        .args(["-P", &std::process::id().to_string(), "swtpm"])
        .output()
        .ok()?;
    let _ = tpm;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .map(str::to_string)
}

fn main() {
    let started = Instant::now();
    let tck = clk_tck();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pinned = if cpus >= 2 {
        pin_self(1)
    } else {
        Err("one CPU only".into())
    };
    let lab = Lab::new("bench-identity", "mode = \"none\"");
    let sealed_ca = lab
        .dir
        .join("relay")
        .join(voxgate::relay::ca::CA_KEY_SEALED)
        .exists()
        && !lab
            .dir
            .join("relay")
            .join(voxgate::relay::ca::CA_KEY)
            .exists();
    let tpm = voxgate_testkit::swtpm::Swtpm::start_in(lab.dir.join("swtpm"));
    let mut relay = start_relay(&lab);
    let relay_cpus = status_field(&relay.pid().to_string(), "Cpus_allowed_list");
    // One worker, as `voxgate run` has: the TPM signs under block_in_place.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        rt.block_on(run(&lab, &relay, &tpm, tck))
    }));
    drop(rt);
    let relay_ok = relay.stop().success();
    let warnings: Vec<J> = relay
        .log_text()
        .lines()
        .filter(|l| (l.contains("WARN") || l.contains("ERROR")) && !l.contains("stay_root"))
        .take(5)
        .map(|l| J::S(l.to_string()))
        .collect();
    let (mut root, error) = match result {
        Ok(r) => (r, None),
        Err(e) => {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic".into());
            (J::obj(), Some(msg))
        }
    };
    let mut setup = J::obj();
    setup
        .set("relay_cpus", relay_cpus.unwrap_or_default())
        .set(
            "device_and_generator_cpus",
            match &pinned {
                Ok(c) => c.clone(),
                Err(e) => format!("not pinned: {e}"),
            },
        )
        .set("ca_key_sealed", sealed_ca)
        .set("registry_filesystem", fs_type(&lab.dir))
        .set("relay_log", "info");
    root.set("bench", "identity")
        .set("setup", setup)
        .set("relay_exit_ok", relay_ok)
        .set("relay_warnings", J::A(warnings))
        .set("error", error.clone().unwrap_or_default())
        .set("elapsed_s", started.elapsed().as_secs_f64());
    drop(tpm);
    let dir = out_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("identity.json");
    std::fs::write(&path, root.render()).unwrap();
    println!("summary: {}", path.display());
    if let Some(e) = error {
        eprintln!("identity bench failed: {e}");
        std::process::exit(1);
    }
}
