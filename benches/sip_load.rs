//! Phone bridge load benchmark (`cargo bench --bench sip_load`;
//! `scripts/bench-sip` runs it and writes the `sip` block of
//! docs/BENCHMARKS.md from its JSON summary).
//!
//! sipp (SIPp 3.7.3, Debian trixie's, from scripts/sipp-trixie) plays the
//! desk phones: each call is an INVITE to the echo service 900 with PCMU
//! only, answered after an MD5 digest challenge, then 20 ms PCMU RTP of
//! speech (`rtp_stream`: sipp's RTP threads each stream
//! `RTP_THREADTASKS` calls from their own sockets, reading what the gateway
//! sends back) until the BYE. The gateway transcodes PCMU → Opus
//! towards the relay, the relay echoes the call flow back, and the gateway
//! transcodes Opus → PCMU towards sipp: both directions of every call go
//! through the transcoder.
//!
//! Placement: the gateway (`voxgate run`, release build) is pinned to CPU 1
//! (`taskset -a -p`, every thread); the relay, sipp and this process to CPU 0.
//!
//! Phases, each bounded:
//! 1. idle RSS of the connected gateway;
//! 2. concurrency ramp: for each step N, one sipp run places N calls at
//!    `RAMP_CPS` and holds them; once all N are up, a `MEASURE` window reads
//!    the gateway's own counters (`voxgate_phone_*`, the
//!    `voxgate_phone_to_send_seconds` histogram), its CPU time and RSS, and
//!    the kernel's UDP drop counters. A step keeps up when every call was
//!    set up and no call failed, the phone RTP the gateway received and the
//!    uplink datagrams it sent are each at least 99% of what N calls at
//!    50 packets a second make, the relay round-trip loss is under 1%, the
//!    kernel dropped nothing on the gateway's sockets, and the gateway core
//!    is under 95%. Concealment at the jitter buffers (frames late or
//!    missing) is reported for both directions, not judged: it follows the
//!    timing of sipp and the relay on the shared CPU 0;
//! 3. call rate: sipp places calls at R per second for `RATE_SECONDS`
//!    (each held `RATE_HOLD` with RTP); R keeps up when no call failed and
//!    the gateway answered no request with 503.
//!
//! `VOXGATE_SIP_GATEWAY_BIN` runs the gateway from another build (the
//! script's before/after comparison); `VOXGATE_SIP_LEGACY=1` leaves out the
//! `[sip]` keys older builds do not know. Results: a table on stdout and
//! `$VOXGATE_BENCH_OUT/sip_load.json`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use voxgate_testkit::bench::{self, JsonExt, Value, json};
use voxgate_testkit::lab::{Lab, Proc, free_udp, scrape};
use voxgate_testkit::procfs::{
    clk_tck, cpu_busy_with_irq, proc_ticks, status_field, status_kib, taskset_all, udp_drops,
};
use voxgate_testkit::sip::add_phone;

/// Calls one sipp RTP thread streams (`-rtp_threadtasks`).
const RTP_THREADTASKS: usize = 128;
/// Concurrent calls per ramp step (the bridge takes at most 512).
const STEPS: [usize; 7] = [100, 200, 250, 300, 350, 400, 500];
/// Call set-up rate while ramping.
const RAMP_CPS: usize = 40;
/// Settling after the last call of a step is up, and the measured window.
const SETTLE: Duration = Duration::from_secs(2);
const MEASURE: Duration = Duration::from_secs(8);
/// Call-rate steps (calls per second), each for `RATE_SECONDS`.
const RATES: [usize; 6] = [20, 40, 60, 80, 120, 160];
const RATE_SECONDS: usize = 8;
const RATE_HOLD: Duration = Duration::from_secs(2);
/// Criteria.
const MAX_LOSS: f64 = 0.01;
const MAX_CORE: f64 = 95.0;
const TARGET_CALLS: usize = 300;
/// The whole benchmark (no step starts that would end after it).
const BUDGET: Duration = Duration::from_secs(420);
const PTIME_MS: u64 = 20;
const TEXT: &str = "Desk phones call through the relay. Six spoons of fresh snow peas, \
    five thick slabs of blue cheese, and maybe a snack for her brother Bob.";

fn gateway_bin() -> PathBuf {
    std::env::var_os("VOXGATE_SIP_GATEWAY_BIN")
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from(voxgate_testkit::lab::bin()), PathBuf::from)
}

/// A comma-separated list from `var` (quick runs of the harness), else `default`.
fn list(var: &str, default: &[usize]) -> Vec<usize> {
    std::env::var(var)
        .ok()
        .map(|v| {
            v.split(',')
                .filter_map(|x| x.trim().parse().ok())
                .collect::<Vec<_>>()
        })
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_vec())
}

fn legacy() -> bool {
    std::env::var("VOXGATE_SIP_LEGACY").is_ok_and(|v| v == "1")
}

// ---------------------------------------------------------------------------
// Gateway metrics
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Default)]
struct Metrics {
    values: BTreeMap<String, f64>,
    /// `voxgate_phone_to_send_seconds` buckets: (upper bound s, cumulative count).
    buckets: Vec<(f64, f64)>,
}

impl Metrics {
    fn get(&self, k: &str) -> Option<f64> {
        self.values.get(k).copied()
    }
}

fn metrics(addr: std::net::SocketAddr) -> Metrics {
    let mut m = Metrics::default();
    let Some(text) = scrape(addr) else { return m };
    for l in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, v)) = l.rsplit_once(' ') else {
            continue;
        };
        let Ok(v) = v.parse::<f64>() else { continue };
        if let Some(le) = name
            .strip_prefix("voxgate_phone_to_send_seconds_bucket{le=\"")
            .and_then(|r| r.strip_suffix("\"}"))
        {
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap_or(f64::INFINITY)
            };
            m.buckets.push((le, v));
        } else {
            m.values.insert(name.to_string(), v);
        }
    }
    m
}

/// Quantile `q` of the histogram between two scrapes, interpolated
/// linearly inside its bucket (seconds).
fn quantile(a: &Metrics, b: &Metrics, q: f64) -> Option<f64> {
    if a.buckets.len() != b.buckets.len() || b.buckets.is_empty() {
        return None;
    }
    let d: Vec<(f64, f64)> = b
        .buckets
        .iter()
        .zip(&a.buckets)
        .map(|((le, cb), (_, ca))| (*le, cb - ca))
        .collect();
    let total = d.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = total * q;
    let mut prev = (0.0, 0.0);
    for &(le, c) in &d {
        if c >= rank {
            if le.is_infinite() {
                return Some(prev.0);
            }
            let span = c - prev.1;
            let frac = if span > 0.0 {
                (rank - prev.1) / span
            } else {
                1.0
            };
            return Some(prev.0 + (le - prev.0) * frac);
        }
        prev = (le, c);
    }
    None
}

// ---------------------------------------------------------------------------
// Fixtures: raw PCMU speech, the sipp scenario, the credentials file
// ---------------------------------------------------------------------------

/// 8 kHz mu-law speech as a raw file (sipp loops it) for sipp's
/// `rtp_stream` (payload bytes only: 160 a packet at 20 ms).
fn pcmu_raw(dir: &Path) -> PathBuf {
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
fn sipp_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("VOXGATE_SIPP").filter(|v| !v.is_empty()) {
        return PathBuf::from(p);
    }
    voxgate_testkit::sip::sipp37()
}

/// The UAC scenario: INVITE 900, MD5 challenge, INVITE with credentials,
/// 200, ACK, RTP streamed from the raw PCMU file `audio` for `hold`, BYE.
fn scenario(audio: &Path, hold: Duration) -> String {
    format!(
        r#"<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="voxgate sip_load">
  <send retrans="500"><![CDATA[
INVITE sip:900@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
From: <sip:[field0]@[remote_ip]>;tag=[pid]L[call_number]
To: <sip:900@[remote_ip]>
Call-ID: [call_id]
CSeq: 1 INVITE
Contact: <sip:[field0]@[local_ip]:[local_port]>
Max-Forwards: 70
Content-Type: application/sdp
Content-Length: [len]

v=0
o=- [call_number] 1 IN IP[local_ip_type] [local_ip]
s=-
c=IN IP[media_ip_type] [media_ip]
t=0 0
m=audio [rtpstream_audio_port] RTP/AVP 0
a=rtpmap:0 PCMU/8000
a=ptime:20
]]></send>
  <recv response="100" optional="true"/>
  <recv response="401" auth="true"/>
  <send><![CDATA[
ACK sip:900@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
From: <sip:[field0]@[remote_ip]>;tag=[pid]L[call_number]
To: <sip:900@[remote_ip]>[peer_tag_param]
Call-ID: [call_id]
CSeq: 1 ACK
Max-Forwards: 70
Content-Length: 0

]]></send>
  <send retrans="500"><![CDATA[
INVITE sip:900@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
From: <sip:[field0]@[remote_ip]>;tag=[pid]L[call_number]
To: <sip:900@[remote_ip]>
Call-ID: [call_id]
CSeq: 2 INVITE
Contact: <sip:[field0]@[local_ip]:[local_port]>
[authentication]
Max-Forwards: 70
Content-Type: application/sdp
Content-Length: [len]

v=0
o=- [call_number] 2 IN IP[local_ip_type] [local_ip]
s=-
c=IN IP[media_ip_type] [media_ip]
t=0 0
m=audio [rtpstream_audio_port] RTP/AVP 0
a=rtpmap:0 PCMU/8000
a=ptime:20
]]></send>
  <recv response="100" optional="true"/>
  <recv response="180" optional="true"/>
  <recv response="200" rtd="true">
    <action><ereg regexp=";tag=[^;>[:space:]]*" search_in="hdr" header="To:" assign_to="totag"/></action>
  </recv>
  <send><![CDATA[
ACK sip:900@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
From: <sip:[field0]@[remote_ip]>;tag=[pid]L[call_number]
To: <sip:900@[remote_ip]>[$totag]
Call-ID: [call_id]
CSeq: 2 ACK
Max-Forwards: 70
Content-Length: 0

]]></send>
  <nop><action><exec rtp_stream="{audio},-1,0"/></action></nop>
  <pause milliseconds="{hold}"/>
  <send retrans="500"><![CDATA[
BYE sip:900@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
From: <sip:[field0]@[remote_ip]>;tag=[pid]L[call_number]
To: <sip:900@[remote_ip]>[$totag]
Call-ID: [call_id]
CSeq: 3 BYE
Max-Forwards: 70
Content-Length: 0

]]></send>
  <recv response="200"/>
</scenario>
"#,
        audio = audio.display(),
        hold = hold.as_millis()
    )
}

// ---------------------------------------------------------------------------
// sipp runs
// ---------------------------------------------------------------------------

struct Sipp {
    child: Child,
    stat: PathBuf,
    name: String,
}

/// The port range sipp's `rtp_stream` binds its calls' sockets in.
static SIPP_RTP: std::sync::OnceLock<(u16, u16)> = std::sync::OnceLock::new();

fn rtp_port_args() -> [String; 4] {
    let (lo, hi) = *SIPP_RTP.get().expect("sipp RTP range chosen in main");
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
fn write_scenario(file: &Path, scenario: &str, password: &str) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    assert!(scenario.contains("[authentication]"));
    let text = scenario.replace(
        "[authentication]",
        &voxgate_testkit::sip::sipp_auth("201", password),
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

/// Start sipp on CPU 0: `calls` calls at `cps`, at most `limit` at once.
#[allow(clippy::too_many_arguments)]
fn start_sipp(
    dir: &Path,
    name: &str,
    target: &str,
    scenario_file: &Path,
    inf: &Path,
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
        .arg(inf)
        // The digest uri must be the Request-URI (sipp's default drops the user).
        .args(["-auth_uri", &format!("900@{target}")])
        .args(["-i", "127.0.0.1", "-mi", "127.0.0.1", "-p"])
        .arg(free_udp().to_string())
        .args(rtp_port_args())
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
struct SippResult {
    ok: bool,
    successful: f64,
    failed: f64,
    /// The signal that killed sipp, if one did (SIPp 3.7.3 sometimes
    /// segfaults as a step's last calls end).
    signal: Option<i32>,
}

impl Sipp {
    /// Wait for sipp to exit (it is bounded by `timeout` already).
    fn finish(mut self, dir: &Path) -> SippResult {
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

// ---------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------

struct Bench {
    lab: Lab,
    metrics_addr: std::net::SocketAddr,
    target: String,
    inf: PathBuf,
    password: String,
    rtp_ports: (u16, u16),
    sip_port: u16,
    gw_pid: i32,
    relay_pid: i32,
    tck: f64,
    started: Instant,
}

struct Snap {
    at: Instant,
    m: Metrics,
    gw_ticks: u64,
    relay_ticks: u64,
    cpus: Vec<u64>,
    udp_err: u64,
    rss_kib: f64,
}

impl Bench {
    fn snap(&self) -> Snap {
        Snap {
            at: Instant::now(),
            m: metrics(self.metrics_addr),
            gw_ticks: proc_ticks(self.gw_pid),
            relay_ticks: proc_ticks(self.relay_pid),
            cpus: cpu_busy_with_irq(),
            udp_err: udp_drops(|p| {
                (self.rtp_ports.0..=self.rtp_ports.1).contains(&p) || p == self.sip_port
            }),
            rss_kib: status_kib(self.gw_pid, "VmRSS").unwrap_or(f64::NAN),
        }
    }

    fn left(&self) -> Duration {
        BUDGET.saturating_sub(self.started.elapsed())
    }

    fn active(&self) -> f64 {
        metrics(self.metrics_addr)
            .get("voxgate_sip_calls_active")
            .unwrap_or(f64::NAN)
    }

    /// Wait (bounded) until the gateway has no call and no lingering
    /// transaction keeps it busy.
    fn wait_idle(&self, max: Duration) {
        let t0 = Instant::now();
        while t0.elapsed() < max && self.active() > 0.0 {
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn step(&self, n: usize, audio: &Path) -> BTreeMap<String, f64> {
        let ramp = Duration::from_secs_f64(n as f64 / RAMP_CPS as f64);
        // Every call holds until the window after the last one is up is over.
        let hold = ramp + SETTLE + MEASURE + Duration::from_secs(3);
        let file = self.lab.dir.join(format!("step-{n}.xml"));
        write_scenario(&file, &scenario(audio, hold), &self.password);
        let bound = ramp + hold + Duration::from_secs(25);
        let sipp = start_sipp(
            &self.lab.dir,
            &format!("step-{n}"),
            &self.target,
            &file,
            &self.inf,
            n,
            RAMP_CPS,
            n,
            bound,
        );
        let mut r = BTreeMap::new();
        r.insert("calls".into(), n as f64);
        // Wait for every call to be up (or the ramp to be clearly over).
        let t0 = Instant::now();
        while t0.elapsed() < ramp + Duration::from_secs(5) && self.active() < n as f64 {
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(SETTLE);
        let a = self.snap();
        std::thread::sleep(MEASURE);
        let b = self.snap();
        let res = sipp.finish(&self.lab.dir);
        self.wait_idle(Duration::from_secs(20));
        let secs = b.at.duration_since(a.at).as_secs_f64();
        let d = |k: &str| match (a.m.get(k), b.m.get(k)) {
            (Some(x), Some(y)) => y - x,
            _ => f64::NAN,
        };
        let active = b.m.get("voxgate_sip_calls_active").unwrap_or(f64::NAN);
        let gw_core = (b.gw_ticks - a.gw_ticks) as f64 / self.tck / secs * 100.0;
        let relay_core = (b.relay_ticks - a.relay_ticks) as f64 / self.tck / secs * 100.0;
        let cpu0 = b.cpus.first().copied().unwrap_or(0) - a.cpus.first().copied().unwrap_or(0);
        let cpu1 = b.cpus.get(1).copied().unwrap_or(0) - a.cpus.get(1).copied().unwrap_or(0);
        let expected = n as f64 * secs * 1000.0 / PTIME_MS as f64;
        let rtp_in = d("voxgate_phone_rtp_received_total");
        let up_sent = d("voxgate_phone_uplink_datagrams_total");
        let up_conc = d("voxgate_phone_uplink_concealed_total");
        let relay_in = d("voxgate_phone_relay_received_total");
        let rtp_out = d("voxgate_phone_rtp_sent_total");
        let down_conc = d("voxgate_phone_downlink_concealed_total");
        let up_loss = up_conc / (up_sent.max(1.0));
        let rt_loss = 1.0 - relay_in / up_sent.max(1.0);
        let down_loss = down_conc / rtp_out.max(1.0);
        let rtp_in_share = rtp_in / expected;
        let udp_drops = (b.udp_err - a.udp_err) as f64;
        r.insert("active".into(), active);
        r.insert("gateway_core_pct".into(), gw_core);
        r.insert("relay_core_pct".into(), relay_core);
        r.insert(
            "cpu0_busy_pct".into(),
            cpu0 as f64 / self.tck / secs * 100.0,
        );
        r.insert(
            "cpu1_busy_pct".into(),
            cpu1 as f64 / self.tck / secs * 100.0,
        );
        r.insert("rtp_in_share".into(), rtp_in_share);
        r.insert("uplink_concealed".into(), up_loss);
        r.insert("relay_roundtrip_loss".into(), rt_loss);
        r.insert("downlink_concealed".into(), down_loss);
        r.insert("rtp_out_per_s".into(), rtp_out / secs);
        r.insert("udp_drops".into(), udp_drops);
        r.insert("rss_kib".into(), b.rss_kib);
        r.insert("sipp_successful".into(), res.successful);
        r.insert("sipp_failed".into(), res.failed);
        r.insert("sipp_signal".into(), res.signal.map_or(f64::NAN, f64::from));
        r.insert("sipp_ok".into(), f64::from(u8::from(res.ok)));
        for (q, k) in [(0.5, "p50"), (0.99, "p99"), (0.999, "p999")] {
            r.insert(
                format!("phone_to_send_{k}_ms"),
                quantile(&a.m, &b.m, q).map_or(f64::NAN, |s| s * 1e3),
            );
        }
        let have_metrics = !up_sent.is_nan();
        let mut why = Vec::new();
        if active < n as f64 {
            why.push(format!("{active} of {n} calls up"));
        }
        if !res.ok || res.failed > 0.0 {
            why.push(format!("sipp: {} failed calls", res.failed));
        }
        if gw_core >= MAX_CORE {
            why.push(format!("gateway core {gw_core:.0}%"));
        }
        if udp_drops > 0.0 {
            why.push(format!(
                "kernel dropped {udp_drops} datagrams to the gateway"
            ));
        }
        let up_share = up_sent / expected;
        r.insert("uplink_sent_share".into(), up_share);
        if have_metrics {
            if rtp_in_share < 1.0 - MAX_LOSS {
                why.push(format!("phone RTP received {:.1}%", rtp_in_share * 100.0));
            }
            if up_share < 1.0 - MAX_LOSS {
                why.push(format!("uplink datagrams sent {:.1}%", up_share * 100.0));
            }
            if rt_loss >= MAX_LOSS {
                why.push(format!("relay round trip lost {:.2}%", rt_loss * 100.0));
            }
        }
        // Concealment (frames late or missing at the jitter buffers) is
        // reported, not judged: it follows the timing of sipp's RTP and of
        // the relay's echo, both on the shared CPU 0.
        let mut notes = Vec::new();
        if up_loss >= MAX_LOSS {
            notes.push(format!("uplink concealed {:.2}%", up_loss * 100.0));
        }
        if down_loss >= MAX_LOSS {
            notes.push(format!("downlink concealed {:.2}%", down_loss * 100.0));
        }
        let _ = std::fs::write(
            self.lab.dir.join(format!("step-{n}.notes")),
            notes.join("; "),
        );
        r.insert("keeps_up".into(), f64::from(u8::from(why.is_empty())));
        let _ = std::fs::write(self.lab.dir.join(format!("step-{n}.why")), why.join("; "));
        r
    }

    fn rate(&self, cps: usize, audio: &Path) -> BTreeMap<String, f64> {
        let calls = cps * RATE_SECONDS;
        let file = self.lab.dir.join("rate.xml");
        write_scenario(&file, &scenario(audio, RATE_HOLD), &self.password);
        let a = self.snap();
        let bound = Duration::from_secs((RATE_SECONDS + 30) as u64);
        let sipp = start_sipp(
            &self.lab.dir,
            &format!("rate-{cps}"),
            &self.target,
            &file,
            &self.inf,
            calls,
            cps,
            calls,
            bound,
        );
        let res = sipp.finish(&self.lab.dir);
        let b = self.snap();
        self.wait_idle(Duration::from_secs(20));
        let secs = b.at.duration_since(a.at).as_secs_f64();
        let full = match (
            a.m.get("voxgate_sip_transactions_full_total"),
            b.m.get("voxgate_sip_transactions_full_total"),
        ) {
            (Some(x), Some(y)) => y - x,
            _ => f64::NAN,
        };
        let mut r = BTreeMap::new();
        r.insert("cps".into(), cps as f64);
        r.insert("calls".into(), calls as f64);
        r.insert("sipp_successful".into(), res.successful);
        r.insert("sipp_failed".into(), res.failed);
        r.insert("sipp_signal".into(), res.signal.map_or(f64::NAN, f64::from));
        r.insert("transactions_full".into(), full);
        r.insert(
            "max_transactions_live".into(),
            b.m.get("voxgate_sip_transactions").unwrap_or(f64::NAN),
        );
        r.insert(
            "gateway_core_pct".into(),
            (b.gw_ticks - a.gw_ticks) as f64 / self.tck / secs * 100.0,
        );
        let ok = res.ok && res.failed == 0.0 && res.successful == calls as f64 && full <= 0.0;
        r.insert(
            "keeps_up".into(),
            f64::from(u8::from(
                ok || (res.ok && full.is_nan() && res.failed == 0.0),
            )),
        );
        r
    }
}

/// `pairs` free RTP/RTCP pairs on loopback, outside `avoid`.
fn rtp_range(pairs: u16, avoid: (u16, u16)) -> (u16, u16) {
    for _ in 0..200 {
        let base = 20_000 + 2 * fastrand::u16(0..(20_000 - 2 * pairs) / 2);
        let last = base + 2 * pairs - 1;
        if base <= avoid.1 && avoid.0 <= last {
            continue;
        }
        let socks: Vec<_> = (base..=last)
            .map_while(|p| std::net::UdpSocket::bind(("127.0.0.1", p)).ok())
            .collect();
        if socks.len() == usize::from(2 * pairs) {
            return (base, last);
        }
    }
    panic!("no free RTP port range on loopback");
}

fn main() {
    let started = Instant::now();
    let tck = clk_tck();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert!(
        cpus >= 2,
        "needs two CPUs (gateway on one, load on the other)"
    );
    let _ = Command::new("taskset")
        .args(["-p", "-c", "0", &std::process::id().to_string()])
        .output();
    let lab = Lab::new("bench-sip-load", "mode = \"none\"");
    let mut relay = lab.start_relay();
    let relay_pid = relay.pid();
    let relay_pin = taskset_all(relay_pid, 0);
    let sip_port = free_udp();
    let (a, b) = rtp_range(1024, (0, 0));
    // sipp's own RTP sockets (one pair a call), away from the gateway's.
    let _ = SIPP_RTP.set(rtp_range(640, (a, b)));
    let extra_keys = if legacy() {
        String::new()
    } else {
        // One sipp stands for every phone: lift the per-source flood limit.
        "packets_per_source = 20000\n".to_string()
    };
    let extra = format!(
        "[capture]\ndevice = \"null\"\n[playback]\nenabled = false\n[sip]\nenabled = true\n\
         listen = \"127.0.0.1:{sip_port}\"\nrtp_ports = \"{a}-{b}\"\nallow = [\"127.0.0.0/8\"]\n\
         digest = [\"md5\"]\ncodecs = [\"pcmu\"]\n{extra_keys}"
    );
    let (cfg, metrics_addr) = lab.gateway_config("gw-load", lab.quic_port, &extra);
    let password = add_phone(&gateway_bin(), &cfg, "201");
    // SIPp does not expand injection fields inside `[authentication]` (it
    // emits them outside the keyword), so the credentials go into the
    // scenario files themselves (write_scenario), never into sipp's argv.
    let inf = lab.dir.join("phones.csv");
    std::fs::write(&inf, "SEQUENTIAL\n201;\n").unwrap();
    let gw_bin = gateway_bin();
    let mut gw: Proc = lab.start_gateway_with(
        &gw_bin,
        &cfg,
        &[(
            "VOXGATE_LOG".into(),
            std::env::var("VOXGATE_SIP_LOG").unwrap_or_else(|_| "warn".into()),
        )],
    );
    let gw_pid = gw.pid();
    let gw_pin = taskset_all(gw_pid, 1);
    let t0 = Instant::now();
    while metrics(metrics_addr)
        .get("voxgate_relay_connected")
        .unwrap_or(0.0)
        < 1.0
    {
        gw.assert_running();
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "gateway did not connect"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(2));
    let idle_rss = status_kib(gw_pid, "VmRSS").unwrap_or(f64::NAN);
    let step_list = list("VOXGATE_SIP_STEPS", &STEPS);
    let rate_list = list("VOXGATE_SIP_RATES", &RATES);
    let audio = pcmu_raw(&lab.dir);
    let bench = Bench {
        lab,
        metrics_addr,
        target: format!("127.0.0.1:{sip_port}"),
        inf,
        password,
        rtp_ports: (a, b),
        sip_port,
        gw_pid,
        relay_pid,
        tck,
        started,
    };

    // Concurrency ramp.
    let mut steps = Vec::new();
    let mut best: Option<usize> = None;
    for &n in &step_list {
        let need = Duration::from_secs_f64(2.0 * n as f64 / RAMP_CPS as f64)
            + MEASURE
            + SETTLE
            + Duration::from_secs(30);
        if bench.left() < need + Duration::from_secs(90) {
            eprintln!("step {n}: skipped (time budget)");
            break;
        }
        eprintln!("step {n}: ramping at {RAMP_CPS} calls/s");
        let r = bench.step(n, &audio);
        let ok = r["keeps_up"] > 0.0;
        let why = std::fs::read_to_string(bench.lab.dir.join(format!("step-{n}.why")))
            .unwrap_or_default();
        let notes = std::fs::read_to_string(bench.lab.dir.join(format!("step-{n}.notes")))
            .unwrap_or_default();
        eprintln!(
            "step {n}: {} (gateway core {:.0}%, p99 {:.1} ms) {why}",
            if ok { "keeps up" } else { "falls behind" },
            r["gateway_core_pct"],
            r["phone_to_send_p99_ms"]
        );
        steps.push((r, why, notes));
        if ok {
            best = Some(n);
        } else {
            break;
        }
    }

    // Call rate.
    let mut rates = Vec::new();
    let mut best_rate: Option<usize> = None;
    for &cps in &rate_list {
        if bench.left() < Duration::from_secs((RATE_SECONDS + 40) as u64) {
            eprintln!("rate {cps}: skipped (time budget)");
            break;
        }
        let mut r = bench.rate(cps, &audio);
        // A crash of the load tool says nothing of the gateway: the step is
        // measured once more, and the crash is kept in the record.
        if r["sipp_signal"].is_finite()
            && bench.left() > Duration::from_secs((RATE_SECONDS + 40) as u64)
        {
            eprintln!(
                "rate {cps}/s: sipp was killed by signal {} ({} calls ended, {} failed); measuring the step once more",
                r["sipp_signal"], r["sipp_successful"], r["sipp_failed"]
            );
            let crashed = r["sipp_signal"];
            r = bench.rate(cps, &audio);
            r.insert("sipp_crashed_before".into(), crashed);
        }
        let ok = r["keeps_up"] > 0.0;
        eprintln!(
            "rate {cps}/s: {} ({} ok, {} failed, {} x 503)",
            if ok { "keeps up" } else { "falls behind" },
            r["sipp_successful"],
            r["sipp_failed"],
            r["transactions_full"]
        );
        rates.push(r);
        if ok {
            best_rate = Some(cps);
        } else {
            break;
        }
    }

    let gw_threads = status_field(gw_pid, "Threads").unwrap_or_default();
    let gw_cpus = status_field(gw_pid, "Cpus_allowed_list").unwrap_or_default();
    let gw_ok = gw.stop();
    let relay_ok = relay.stop();
    let warnings: Vec<String> = gw
        .log_text()
        .lines()
        .filter(|l| (l.contains("WARN") || l.contains("ERROR")) && !l.contains("stay_root"))
        .take(5)
        .map(str::to_string)
        .collect();

    let map = |m: &BTreeMap<String, f64>| {
        Value::Object(
            m.iter()
                .map(|(k, v)| (k.clone(), Value::from(*v)))
                .collect(),
        )
    };
    let steps_json: Vec<Value> = steps
        .iter()
        .map(|(r, why, notes)| {
            let mut s = map(r);
            s.set("why", why.replace('"', "'"))
                .set("notes", notes.replace('"', "'"));
            s
        })
        .collect();
    let root = json!({
        "bench": "sip_load",
        "gateway_bin": gw_bin.display().to_string(),
        "legacy_config": legacy(),
        "gateway_cpus": gw_cpus,
        "gateway_threads": gw_threads,
        "gateway_pin": gw_pin.err().unwrap_or_else(|| "CPU 1".into()),
        "relay_pin": relay_pin.err().unwrap_or_else(|| "CPU 0".into()),
        "ramp_cps": RAMP_CPS,
        "rtp_threadtasks": RTP_THREADTASKS,
        "measure_s": MEASURE.as_secs(),
        "rate_seconds": RATE_SECONDS,
        "rate_hold_s": RATE_HOLD.as_secs(),
        "target_calls": TARGET_CALLS,
        "max_loss": MAX_LOSS,
        "max_core_pct": MAX_CORE,
        "idle_rss_kib": idle_rss,
        "max_calls_ok": best,
        "max_cps_ok": best_rate,
        "steps": steps_json,
        "rates": rates.iter().map(map).collect::<Vec<_>>(),
        "gateway_exit_ok": gw_ok.success(),
        "relay_exit_ok": relay_ok.success(),
        "gateway_warnings": warnings
            .iter()
            .map(|w| w.replace('"', "'"))
            .collect::<Vec<_>>(),
        "elapsed_s": started.elapsed().as_secs_f64(),
    });
    let name = std::env::var("VOXGATE_SIP_OUT_NAME").unwrap_or_else(|_| "sip_load.json".into());
    let path = bench::write_result(&name, &root);

    println!("\nvoxgate phone bridge load: gateway on CPU 1; relay, sipp on CPU 0");
    println!(
        "{:>6} {:>6} {:>7} {:>7} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}  verdict",
        "calls",
        "up",
        "gw %",
        "cpu0 %",
        "rtp in%",
        "upconc%",
        "rtloss%",
        "dnconc%",
        "p99 ms",
        "RSS MiB"
    );
    for (r, why, _) in &steps {
        println!(
            "{:>6.0} {:>6.0} {:>7.0} {:>7.0} {:>8.1} {:>8.2} {:>8.2} {:>8.2} {:>8.1} {:>8.1}  {}",
            r["calls"],
            r["active"],
            r["gateway_core_pct"],
            r["cpu0_busy_pct"],
            r["rtp_in_share"] * 100.0,
            r["uplink_concealed"] * 100.0,
            r["relay_roundtrip_loss"] * 100.0,
            r["downlink_concealed"] * 100.0,
            r["phone_to_send_p99_ms"],
            r["rss_kib"] / 1024.0,
            if why.is_empty() { "keeps up" } else { why }
        );
    }
    for r in &rates {
        println!(
            "rate {:>4.0}/s: {:.0} ok, {:.0} failed, {:.0} x 503, gateway {:.0}%",
            r["cps"],
            r["sipp_successful"],
            r["sipp_failed"],
            r["transactions_full"],
            r["gateway_core_pct"]
        );
    }
    println!(
        "max concurrent calls kept up: {} (target >= {TARGET_CALLS}); max calls/s: {}; idle RSS {:.1} MiB",
        best.map_or("none".into(), |b| b.to_string()),
        best_rate.map_or("none".into(), |b| b.to_string()),
        idle_rss / 1024.0
    );
    println!("summary: {}", path.display());
}
