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
//! 2. concurrency ramp: for each step N, sipp places N calls at
//!    `RAMP_CPS` and holds them (one sipp a phone, each its own extension
//!    with at most `CALLS_PER_PHONE` calls at once: the gateway allows a
//!    phone only `[sip] calls_per_extension` calls, 64 at most, so the
//!    calls are spread over `N / CALLS_PER_PHONE` sipps run together); once all N are up, a `MEASURE` window reads
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
use voxgate_testkit::sip::{add_phone, assert_filled, fill, sipp_file};

mod metrics;
mod run;
mod sipp;

use metrics::*;
use run::*;
use sipp::*;

/// Calls one sipp RTP thread streams (`-rtp_threadtasks`).
const RTP_THREADTASKS: usize = 128;
/// Concurrent calls per ramp step (the bridge takes at most 512).
const STEPS: [usize; 7] = [100, 200, 250, 300, 350, 400, 500];
/// Call set-up rate while ramping.
const RAMP_CPS: usize = 40;
/// Settling after the last call of a step is up, and the measured window.
const SETTLE: Duration = Duration::from_secs(2);
const MEASURE: Duration = Duration::from_secs(8);
/// Calls one sipp (one extension) holds at once at most: the gateway's
/// `[sip] calls_per_extension`, set to this in the bench's config.
const CALLS_PER_PHONE: usize = 64;
/// Extensions (and sipps) the bench can run at once: 640 calls.
const MAX_PHONES: usize = 10;
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
        // The sipps stand for every phone from one address: lift the
        // per-source flood limit; each of them is one extension with up to
        // `CALLS_PER_PHONE` calls at once (the config allows 64).
        format!("packets_per_source = 20000\ncalls_per_extension = {CALLS_PER_PHONE}\n")
    };
    let extra = format!(
        "[capture]\ndevice = \"null\"\n[playback]\nenabled = false\n[sip]\nenabled = true\n\
         listen = \"127.0.0.1:{sip_port}\"\nrtp_ports = \"{a}-{b}\"\nallow = [\"127.0.0.0/8\"]\n\
         digest = [\"md5\"]\ncodecs = [\"pcmu\"]\n{extra_keys}"
    );
    let (cfg, metrics_addr) = lab.gateway_config("gw-load", lab.quic_port, &extra);
    // One extension a sipp: the gateway holds at most `calls_per_extension`
    // calls for one phone, so a step's calls are spread over
    // `phones_for(n)` sipps, each its own extension (201, 202, ...).
    // SIPp does not expand injection fields inside `[authentication]` (it
    // emits them outside the keyword), so the credentials go into the
    // scenario files themselves (write_scenario), never into sipp's argv.
    let phones: Vec<Phone> = (0..MAX_PHONES)
        .map(|i| {
            let ext = (201 + i).to_string();
            let password = add_phone(&gateway_bin(), &cfg, &ext);
            let inf = lab.dir.join(format!("phone-{ext}.csv"));
            std::fs::write(&inf, format!("SEQUENTIAL\n{ext};\n")).unwrap();
            Phone { ext, password, inf }
        })
        .collect();
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
        phones,
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
    let warnings = gw.warnings();

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
