//! Relay load benchmark (`cargo bench --bench relay_load`; `scripts/bench`
//! runs it and renders docs/BENCHMARKS.md from its JSON summary).
//!
//! How many concurrent device streams one relay core records with under 1%
//! loss on loopback. The release relay runs pinned to CPU 0 (`taskset -c 0`)
//! in record mode, recordings on tmpfs. This process is the load generator,
//! pinned to CPU 1 (`support/loadgen.rs`). A stream is what one gateway
//! sends: its own QUIC connection with mutual TLS (a development
//! certificate of its own: the relay keeps one session per device), the device's control handshake (hello, welcome,
//! flow_open of up flow 0 with its own SSRC, 20 ms frames), then one real
//! Opus packet (pre-encoded speech, each stream starting at another packet)
//! every 20 ms as an RTP-over-QUIC datagram, framed by `RtpSender`. The
//! relay's per-connection cost (handshake, ACKs, timers, one session task)
//! is therefore in the figure. The generator drives all connections from
//! one thread (quinn-proto state machines, one socket, one wake-up per
//! 1 ms send slot) so that it can offer more than the relay takes.
//!
//! N steps up (connections are added at a bounded rate and kept); each step
//! streams for `MEASURE` after the ramp. Loss = 1 - (relay
//! `voxgate_relay_datagrams_total` delta) / (datagrams handed to quinn
//! without error). The generator checks itself: the rate it offered, and
//! the DATAGRAM frames quinn really transmitted (quinn silently drops queued
//! datagrams it could not send in time). A step where the generator fell
//! short is reported as a generator limit, not as relay capacity.
//!
//! Results: a table on stdout and `$VOXGATE_BENCH_OUT/relay_load.json`.
//! Bounded: every wait has a deadline and the whole run a time budget; the
//! relay is stopped by a guard, also on panic.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};
use voxgate::codec::CodecConfig;
use voxgate_testkit::bench::{self, JsonExt, Value};
use voxgate_testkit::lab::{Lab, Proc, scrape};
use voxgate_testkit::loadgen::Generator;
use voxgate_testkit::procfs::{
    clk_tck, cpu_ticks, proc_ticks, renice_all, status_field, status_kib, sysctl, udp_counters,
    udp_drops, udp_rx_queue,
};

mod flood;
mod setup;
mod steps;

use flood::*;
use setup::*;
use steps::*;

/// The generator thread's scheduling policy, for the summary.
static GEN_SCHED: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Concurrent streams per step.
const STEPS: [usize; 7] = [250, 500, 1000, 1500, 2000, 2500, 3000];

/// `STEPS`, or `$VOXGATE_RELAY_LOAD_STEPS` (comma-separated counts, for a
/// quick comparison at chosen loads).
fn step_counts() -> Vec<usize> {
    std::env::var("VOXGATE_RELAY_LOAD_STEPS")
        .ok()
        .map(|v| {
            v.split(',')
                .filter_map(|x| x.trim().parse().ok())
                .filter(|&n| n > 0)
                .collect::<Vec<usize>>()
        })
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| STEPS.to_vec())
}
/// `$VOXGATE_RELAY_LOAD_EVERY=1`: run every step of the list in order,
/// without stopping or bisecting at a failure.
fn every_step() -> bool {
    std::env::var("VOXGATE_RELAY_LOAD_EVERY").is_ok_and(|v| v == "1")
}

/// The relay's nice value (`$VOXGATE_RELAY_LOAD_NICE`, default -19; 0 leaves
/// it alone): on a shared machine, a process at the default priority that
/// wants CPU 0 takes half of it from the relay (CFS shares it evenly), and
/// the relay's socket overflows well below its capacity; the generator
/// runs at SCHED_FIFO for the same reason.
fn relay_nice() -> i32 {
    std::env::var("VOXGATE_RELAY_LOAD_NICE")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(-19)
}

/// Streaming time measured per step, after the ramp and `SETTLE`.
const MEASURE: Duration = Duration::from_secs(10);
const SETTLE: Duration = Duration::from_secs(1);
/// Longest wait for the relay's count to stop moving with the media paused.
const DRAIN_MAX: Duration = Duration::from_secs(3);
/// New connections per second during a ramp.
const RAMP_PER_S: f64 = 250.0;
/// Handshakes in flight at once.
const CONNECT_CONCURRENCY: usize = 32;
/// Load of other processes (cores) above which a window is repeated; under
/// `QUIET` the machine counts as quiet, which each step waits for (at most
/// `QUIET_WAIT`) before it starts.
const DISTURBED: f64 = 0.15;
const QUIET: f64 = 0.10;
const QUIET_WAIT: Duration = Duration::from_secs(30);
/// The target: loss under this fraction.
const MAX_LOSS: f64 = 0.01;
const TARGET_STREAMS: usize = 2000;
/// The generator must offer at least this share of the nominal rate, and
/// quinn must transmit at least this share of what it was handed.
const GENERATOR_MIN: f64 = 0.99;
/// Share of the generator's 1 ms send slots that may run more than 2 ms late.
const MAX_LATE_SLOTS: f64 = 0.05;
/// Bisection steps after the first failing step, and their granularity.
const REFINEMENTS: usize = 2;
const REFINE_GRAIN: usize = 50;
/// Whole benchmark, start to end (the step in progress is not cut short,
/// but no step starts that would end after it).
const BUDGET: Duration = Duration::from_secs(300);
const SERVER_NAME: &str = "relay.voxgate.test";
const DEVICE: &str = "loadgen";
const TEXT: &str = "Voice gateways carry speech from the microphone to the relay. \
    Six spoons of fresh snow peas, five thick slabs of blue cheese, and a snack for Bob.";

/// The JSON result's file name: `relay_load.json` (`relay_load_flood.json`
/// in flood mode), or `$VOXGATE_RELAY_LOAD_RESULT` (scripts/bench measures
/// the static relay, `VOXGATE_RELAY_BIN`, into `relay_load_static.json`).
fn result_name() -> String {
    std::env::var("VOXGATE_RELAY_LOAD_RESULT")
        .ok()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| {
            if flood_mode() {
                "relay_load_flood.json".into()
            } else {
                "relay_load.json".into()
            }
        })
}

fn main() {
    let started = Instant::now();
    let tck = clk_tck();
    // Before any other thread exists: the runtime's threads inherit it.
    let pinned = bench::pin_to_cpu1();
    let lab = Lab::new("bench-relay-load", "mode = \"none\"");
    let packets = packets(&lab.dir);
    let mean_packet = packets.iter().map(Vec::len).sum::<usize>() as f64 / packets.len() as f64;
    let (recordings_on, rec) = match tmpfs_dir() {
        Some(d) => ("tmpfs (/dev/shm)", RecDir(d)),
        None => (
            "disk (no writable /dev/shm)",
            RecDir(lab.dir.join("recordings-load")),
        ),
    };
    let mut relay = start_relay(&lab, &rec.0);
    let relay_nice = relay_nice();
    if relay_nice != 0
        && let Err(e) = renice_all(relay.pid(), relay_nice)
    {
        eprintln!("relay_load: relay not reniced to {relay_nice}: {e}");
    }
    let relay_cpus = status_field(relay.pid(), "Cpus_allowed_list");
    let relay_threads = status_field(relay.pid(), "Threads");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (steps, end) = bench::catch(|| rt.block_on(run(&lab, &mut relay, packets, started, tck)))
        .unwrap_or_else(|msg| (Vec::new(), format!("error: {msg}")));
    drop(rt);
    let relay_ok = relay.stop().success();
    // What the kernel granted the relay's socket (its "relay ready" line).
    let relay_rcvbuf = relay
        .log_text()
        .lines()
        .find(|l| l.contains("relay ready"))
        .and_then(|l| l.split("udp_recv_buffer").nth(1))
        .map(|v| {
            v.chars()
                .skip_while(|c| !c.is_ascii_digit())
                .take_while(char::is_ascii_digit)
                .collect::<String>()
        })
        .unwrap_or_default();
    let log_tail = relay.warnings();
    drop(relay);
    drop(rec);

    let best = steps
        .iter()
        .filter(|s| s.str("verdict") == Some("ok"))
        .filter_map(|s| s.num("connected"))
        .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
    let limit = steps
        .iter()
        .find(|s| s.str("verdict") != Some("ok"))
        .and_then(|s| s.str("verdict"))
        .unwrap_or("none within the steps")
        .to_string();
    let mut root = Value::obj();
    let mut setup = Value::obj();
    setup
        .set("relay_cpus", relay_cpus.unwrap_or_default())
        .set("relay_threads_at_start", relay_threads.unwrap_or_default())
        .set("generator_cpus", bench::pinned_text(&pinned))
        .set("relay_binary", relay_bin())
        .set("relay_nice", relay_nice)
        .set("recordings", recordings_on)
        .set(
            "generator",
            "one thread driving quinn-proto connections on one UDP socket; \
             one QUIC connection (mutual TLS, own control stream, own SSRC) per stream",
        )
        .set("relay_udp_recv_buffer", relay_rcvbuf.clone())
        .set(
            "generator_sched",
            GEN_SCHED.get().cloned().unwrap_or_default(),
        )
        .set("downlink", "none (record mode)")
        .set("api", if api_on() { "listening, idle" } else { "off" })
        .set(
            "steps",
            Value::Array(step_counts().into_iter().map(Value::from).collect()),
        )
        .set("measure_s", MEASURE.as_secs_f64())
        .set("ramp_per_s", RAMP_PER_S)
        .set("frame_ms", 20u64)
        .set("mean_opus_payload_bytes", mean_packet)
        .set(
            "net.core.rmem_default",
            sysctl("/proc/sys/net/core/rmem_default"),
        )
        .set("net.core.rmem_max", sysctl("/proc/sys/net/core/rmem_max"))
        .set("nofile_limit", {
            let out = Command::new("sh").args(["-c", "ulimit -n"]).output();
            out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                .unwrap_or_default()
        });
    root.set("bench", "relay_load")
        .set("setup", setup)
        .set("target_streams", TARGET_STREAMS)
        .set("max_loss", MAX_LOSS)
        .set("max_streams_ok", best)
        .set("limit", limit.as_str())
        .set("relay_limit_reached", limit == "loss over 1%")
        .set("end", end.as_str())
        .set("relay_exit_ok", relay_ok)
        .set(
            "relay_warnings",
            Value::Array(log_tail.into_iter().map(Value::String).collect()),
        )
        .set("steps", Value::Array(steps.clone()))
        .set("elapsed_s", started.elapsed().as_secs_f64());
    if flood_mode() {
        root.set("bench", "relay_load_flood")
            .set("flood_streams", FLOOD_STREAMS);
    }
    let path = bench::write_result(&result_name(), &root);

    let mut t = String::new();
    let _ = writeln!(
        t,
        "\nvoxgate relay load: one relay core (CPU 0), generator on CPU 1, {} s per step",
        MEASURE.as_secs()
    );
    let _ = writeln!(
        t,
        "{:>8} {:>9} {:>9} {:>10} {:>10} {:>8} {:>9} {:>9} {:>9}  verdict",
        "streams",
        "connected",
        "loss %",
        "handed",
        "received",
        "relay %",
        "gen CPU%",
        "offered%",
        "sent%"
    );
    for s in &steps {
        let f = |k: &str, scale: f64, d: usize| {
            s.num(k)
                .map(|v| format!("{:.d$}", v * scale))
                .unwrap_or_else(|| "n/a".into())
        };
        let _ = writeln!(
            t,
            "{:>8} {:>9} {:>9} {:>10} {:>10} {:>8} {:>9} {:>9} {:>9}  {}",
            f("streams", 1.0, 0),
            f("connected", 1.0, 0),
            f("loss", 100.0, 3),
            f("drained_handed", 1.0, 0),
            f("drained_received", 1.0, 0),
            f("relay_cpu_pct", 1.0, 0),
            f("generator_cpu_pct", 1.0, 0),
            f("offered_share", 100.0, 1),
            f("transmitted_share", 100.0, 1),
            s.str("verdict").unwrap_or("?")
        );
    }
    let _ = writeln!(
        t,
        "max streams recorded with loss < 1%: {}{} (target >= {TARGET_STREAMS}); {end}",
        best.map(|b| format!("{b:.0}"))
            .unwrap_or_else(|| "none".into()),
        if limit == "loss over 1%" {
            ""
        } else {
            " or more (the relay's limit was not reached)"
        }
    );
    let _ = writeln!(t, "summary: {}", path.display());
    println!("{t}");
    if end.starts_with("error") {
        std::process::exit(1);
    }
}
