//! The steps: ramping the generator's sessions, snapshots of the relay
//! and the machine, one measured window per load, the whole run.

use super::*;

/// Opens sessions until `n` stream (at most `RAMP_PER_S` new a second,
/// `CONNECT_CONCURRENCY` in set-up at once) or `deadline`; returns
/// (failures during the ramp, first error).
pub(crate) async fn ramp_to(g: &Generator, n: usize, deadline: Instant) -> (usize, Option<String>) {
    let before = g.status().await;
    g.target(n, RAMP_PER_S, CONNECT_CONCURRENCY);
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let s = g.status().await;
        let failed = s.failed - before.failed;
        if s.streaming >= n || Instant::now() > deadline {
            // Stop opening more: a step measures what is up now.
            g.target(s.streaming, RAMP_PER_S, CONNECT_CONCURRENCY);
            let short = n.saturating_sub(s.streaming);
            return (failed.max(short), s.first_error);
        }
    }
}

/// The relay's counters.
pub(crate) async fn relay_metrics(addr: SocketAddr) -> BTreeMap<&'static str, f64> {
    let text = tokio::task::spawn_blocking(move || scrape(addr))
        .await
        .ok()
        .flatten()
        .unwrap_or_default();
    let mut m = BTreeMap::new();
    for (k, name) in [
        ("datagrams", "voxgate_relay_datagrams_total"),
        ("recorded", "voxgate_relay_frames_recorded_total"),
        ("unknown_flow", "voxgate_relay_datagrams_unknown_flow_total"),
        ("malformed", "voxgate_relay_datagrams_malformed_total"),
        ("active", "voxgate_relay_sessions_active"),
        ("rejected", "voxgate_relay_sessions_rejected_total"),
    ] {
        if let Some(v) = voxgate::telemetry::metrics::scrape_value(&text, name) {
            m.insert(k, v);
        }
    }
    m
}

pub(crate) struct Snap {
    pub(crate) at: Instant,
    pub(crate) handed: u64,
    pub(crate) refused: u64,
    pub(crate) ticks: u64,
    pub(crate) late_ticks: u64,
    pub(crate) send_drops: u64,
    pub(crate) tx: u64,
    pub(crate) live: usize,
    pub(crate) relay: BTreeMap<&'static str, f64>,
    pub(crate) relay_ticks: u64,
    pub(crate) self_ticks: u64,
    pub(crate) relay_drops: u64,
    /// Bytes waiting in the relay's socket receive buffer.
    pub(crate) relay_rx_queue: u64,
    pub(crate) gen_drops: u64,
    pub(crate) udp: BTreeMap<String, u64>,
    pub(crate) cpus: Vec<u64>,
    /// The generator's quinn-side view (send backlog, loss detection).
    pub(crate) quinn: voxgate_testkit::loadgen::Status,
}

pub(crate) struct Ports {
    pub(crate) relay: u16,
    pub(crate) generator: u16,
}

pub(crate) async fn snap(
    g: &Generator,
    relay_pid: &str,
    metrics: SocketAddr,
    ports: &Ports,
) -> Snap {
    // The generator's counters first, then the relay's: datagrams in flight
    // at the two ends of the window cancel out.
    let c = &g.counters;
    let st = g.status().await;
    let s = Snap {
        at: Instant::now(),
        handed: c.handed.load(Relaxed),
        refused: c.refused.load(Relaxed),
        ticks: c.ticks.load(Relaxed),
        late_ticks: c.late_ticks.load(Relaxed),
        send_drops: c.send_drops.load(Relaxed),
        tx: st.datagrams_tx,
        live: st.streaming,
        relay_ticks: proc_ticks(relay_pid),
        self_ticks: proc_ticks("self"),
        relay_drops: udp_drops(|p| p == ports.relay),
        relay_rx_queue: udp_rx_queue(|p| p == ports.relay),
        gen_drops: udp_drops(|p| p == ports.generator),
        udp: udp_counters(),
        cpus: cpu_ticks(),
        relay: BTreeMap::new(),
        quinn: st,
    };
    Snap {
        relay: relay_metrics(metrics).await,
        ..s
    }
}

/// Pauses the media until the relay's count and the generator's send
/// queues stop moving (at most `DRAIN_MAX`), snaps, resumes; returns the
/// snapshot and the time the drain took.
pub(crate) async fn drained_snap(
    g: &Generator,
    relay_pid: &str,
    metrics: SocketAddr,
    ports: &Ports,
) -> (Snap, f64) {
    let t0 = Instant::now();
    g.pause(true);
    let mut last = (f64::NAN, u64::MAX);
    let mut still = 0;
    while t0.elapsed() < DRAIN_MAX {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = (
            relay_metrics(metrics)
                .await
                .get("datagrams")
                .copied()
                .unwrap_or(f64::NAN),
            g.status().await.unsent,
        );
        still = if now == last && now.1 == 0 {
            still + 1
        } else {
            0
        };
        last = now;
        if still >= 3 {
            break;
        }
    }
    let drain = t0.elapsed().as_secs_f64();
    let s = snap(g, relay_pid, metrics, ports).await;
    g.pause(false);
    (s, drain)
}

/// What a step streams and measures with: the generator, the relay and its
/// metrics address, both ends' UDP ports, and clock ticks per second.
pub(crate) struct Rig<'a> {
    pub(crate) g: &'a Generator,
    pub(crate) relay: &'a mut Proc,
    pub(crate) metrics: SocketAddr,
    pub(crate) ports: &'a Ports,
    pub(crate) tck: f64,
}

/// Streams one step at `n` connections (ramping up or closing some first)
/// and measures it.
pub(crate) async fn step(rig: &mut Rig<'_>, n: usize) -> Value {
    let g = rig.g;
    let t_ramp = Instant::now();
    let have = g.status().await.streaming;
    let (failed, first_err) = if n >= have {
        let ramp_s = (n - have) as f64 / RAMP_PER_S;
        ramp_to(g, n, t_ramp + Duration::from_secs_f64(ramp_s * 2.0 + 10.0)).await
    } else {
        g.shrink(n);
        (0, None)
    };
    let ramp_took = t_ramp.elapsed().as_secs_f64();
    tokio::time::sleep(SETTLE).await;
    // Other processes share this machine: a window during which they took
    // a noticeable part of either core is measured once more, and the
    // quieter of the two is kept.
    let mut best: Option<Value> = None;
    for attempt in 1..=2u64 {
        let mut j = window(rig, n).await;
        j.set("attempt", attempt)
            .set("connect_failures", failed)
            .set(
                "first_connect_error",
                first_err.clone().map(Value::String).unwrap_or(Value::Null),
            )
            .set("ramp_s", ramp_took);
        let other = |j: &Value| j.num("other_load_cores_max").unwrap_or(f64::INFINITY);
        if best.as_ref().is_none_or(|b| other(&j) < other(b)) {
            best = Some(j);
        }
        if best.as_ref().is_some_and(|b| other(b) <= DISTURBED) {
            break;
        }
    }
    let j = best.expect("one window");
    eprintln!(
        "relay_load: {n} streams: loss {:.3}%, relay CPU {:.0}%, generator CPU {:.0}%, offered {:.1}%, transmitted {:.1}%, other load {:.2} core -> {}",
        j.num("loss").unwrap_or(f64::NAN) * 100.0,
        j.num("relay_cpu_pct").unwrap_or(f64::NAN),
        j.num("generator_cpu_pct").unwrap_or(f64::NAN),
        j.num("offered_share").unwrap_or(f64::NAN) * 100.0,
        j.num("transmitted_share").unwrap_or(f64::NAN) * 100.0,
        j.num("other_load_cores_max").unwrap_or(f64::NAN),
        j.str("verdict").unwrap_or("?"),
    );
    j
}

/// One measured window of `MEASURE` at the current connections.
pub(crate) async fn window(rig: &mut Rig<'_>, n: usize) -> Value {
    let Rig {
        g,
        metrics,
        ports,
        tck,
        ..
    } = *rig;
    let relay_pid = rig.relay.pid().to_string();
    // Loss is counted between two drained snapshots: the media paused
    // until the relay's count stops moving, so that no datagram is in
    // flight or queued (socket buffer, quinn) at either edge. Between
    // them, the CPU window: undrained snapshots at steady state (their
    // count difference is what the loss read before; it also moves with
    // the relay's queue).
    let (da, drain0) = drained_snap(g, &relay_pid, metrics, ports).await;
    tokio::time::sleep(SETTLE).await;
    g.counters.max_late_us.store(0, Relaxed);
    let a = snap(g, &relay_pid, metrics, ports).await;
    let live0 = a.live;
    tokio::time::sleep(MEASURE).await;
    let b = snap(g, &relay_pid, metrics, ports).await;
    let live1 = b.live;
    let (db, drain1) = drained_snap(g, &relay_pid, metrics, ports).await;
    rig.relay.assert_running();
    let drained_handed = db.handed.saturating_sub(da.handed) as f64;
    let drained_received = db.relay.get("datagrams").copied().unwrap_or(f64::NAN)
        - da.relay.get("datagrams").copied().unwrap_or(f64::NAN);
    let drained_loss = 1.0 - drained_received / drained_handed;

    let window = (b.at - a.at).as_secs_f64();
    let handed = (b.handed - a.handed) as f64;
    // A UDP packet the generator's socket refused never left: not sent.
    let send_drops = b.send_drops.saturating_sub(a.send_drops) as f64;
    let tx = (b.tx - a.tx) as f64 - send_drops;
    let d = |k: &str| {
        b.relay.get(k).copied().unwrap_or(f64::NAN) - a.relay.get(k).copied().unwrap_or(f64::NAN)
    };
    let received = d("datagrams");
    let connected = live0.min(live1);
    let nominal = connected as f64 * 50.0 * window;
    let offered = handed / nominal;
    let tx_share = tx / handed;
    // What the relay's count missed at the window's end, less what it
    // missed at its start: positive when its queue grew.
    let loss_in_window = 1.0 - received / handed;
    let loss = drained_loss;
    let relay_cpu = b.relay_ticks.saturating_sub(a.relay_ticks) as f64 / tck / window * 100.0;
    let gen_cpu = b.self_ticks.saturating_sub(a.self_ticks) as f64 / tck / window * 100.0;
    let udp = |k: &str| {
        let v = |s: &Snap| s.udp.get(k).copied().unwrap_or(0);
        v(&b).saturating_sub(v(&a)) as f64
    };
    // The generator kept up: it offered the nominal rate, quinn sent what
    // it was handed, and its 1 ms send slots ran on time (a late slot sends
    // its datagrams in a burst with the next ones).
    let ticks = b.ticks.saturating_sub(a.ticks) as f64;
    let late_share = b.late_ticks.saturating_sub(a.late_ticks) as f64 / ticks.max(1.0);
    let generator_ok =
        offered >= GENERATOR_MIN && tx_share >= GENERATOR_MIN && late_share <= MAX_LATE_SLOTS;
    let verdict = if !generator_ok {
        "generator limit"
    } else if (connected as f64) < n as f64 * 0.99 {
        "connections failed"
    } else if loss.is_nan() || loss >= MAX_LOSS {
        "loss over 1%"
    } else if loss_in_window >= MAX_LOSS {
        // Nothing lost, but the relay's queue grew by 1% of the window's
        // datagrams: it did not keep up.
        "falling behind"
    } else {
        "ok"
    };
    let cpu = |s: &Snap, i: usize| s.cpus.get(i).copied().unwrap_or(0);
    let other0 = cpu(&b, 0).saturating_sub(cpu(&a, 0)) as f64 / tck / window - relay_cpu / 100.0;
    let other1 = cpu(&b, 1).saturating_sub(cpu(&a, 1)) as f64 / tck / window - gen_cpu / 100.0;
    let mut j = Value::obj();
    j.set("streams", n)
        .set("connected", connected)
        .set("window_s", window)
        .set("nominal_datagrams", nominal)
        .set("handed_to_quinn", handed)
        .set(
            "refused_by_quinn",
            b.refused.saturating_sub(a.refused) as f64,
        )
        .set("quinn_transmitted", tx)
        .set("generator_send_drops", send_drops)
        .set("relay_received", received)
        .set("relay_recorded", d("recorded"))
        .set("relay_unknown_flow", d("unknown_flow"))
        // The generator's quinn: datagrams not yet sent at the edges,
        // packets declared lost, and how far the relay's queue had grown
        // (RTT).
        .set("generator_unsent_start", a.quinn.unsent as f64)
        .set("generator_unsent_end", b.quinn.unsent as f64)
        .set(
            "generator_lost_packets",
            b.quinn.lost_packets as f64 - a.quinn.lost_packets as f64,
        )
        .set("generator_min_cwnd_end", b.quinn.min_cwnd as f64)
        .set("generator_max_rtt_us_end", b.quinn.max_rtt_us as f64)
        .set("relay_malformed", d("malformed"))
        .set("relay_sessions_active", b.relay.get("active").copied())
        .set("offered_share", offered)
        .set("transmitted_share", tx_share)
        .set("loss", loss)
        .set("loss_in_window", loss_in_window)
        .set("drained_handed", drained_handed)
        .set("drained_received", drained_received)
        // Over the drained window (what `loss` counts), not only the CPU one.
        .set(
            "relay_socket_drops_drained",
            db.relay_drops.saturating_sub(da.relay_drops) as f64,
        )
        .set("drain_s_start", drain0)
        .set("drain_s_end", drain1)
        .set("relay_rx_queue_start", a.relay_rx_queue as f64)
        .set("relay_rx_queue_end", b.relay_rx_queue as f64)
        .set("wire_loss", 1.0 - received / tx)
        .set("relay_cpu_pct", relay_cpu)
        .set("generator_cpu_pct", gen_cpu)
        .set("generator_ticks_share", ticks / (window * 1000.0))
        .set("generator_late_slot_share", late_share)
        .set(
            "generator_late_ticks",
            b.late_ticks.saturating_sub(a.late_ticks) as f64,
        )
        .set(
            "generator_max_tick_late_us",
            g.counters.max_late_us.load(Relaxed) as f64,
        )
        .set("relay_rss_kib", status_kib(&relay_pid, "VmRSS"))
        .set(
            "relay_socket_drops",
            b.relay_drops.saturating_sub(a.relay_drops) as f64,
        )
        .set(
            "generator_socket_drops",
            b.gen_drops.saturating_sub(a.gen_drops) as f64,
        )
        .set("udp_rcvbuf_errors", udp("RcvbufErrors"))
        .set("udp_in_errors", udp("InErrors"))
        .set("udp_sndbuf_errors", udp("SndbufErrors"))
        .set("other_load_cpu0_cores", other0.max(0.0))
        .set("other_load_cpu1_cores", other1.max(0.0))
        .set("other_load_cores_max", other0.max(other1).max(0.0))
        .set("verdict", verdict);
    j
}

pub(crate) async fn run(
    lab: &Lab,
    relay: &mut Proc,
    packets: Vec<Vec<u8>>,
    started: Instant,
    tck: f64,
) -> (Vec<Value>, String) {
    // One identity per stream: the relay keeps one session per device.
    let most = if flood_mode() {
        FLOOD_STREAMS
    } else {
        step_counts().into_iter().max().unwrap_or(0)
    };
    let identities = lab.dev_identities(DEVICE, most);
    let flood_packets = if flood_mode() {
        let addr = format!("127.0.0.1:{}", lab.quic_port).parse().unwrap();
        voxgate_testkit::flood::initial_packets(addr, SERVER_NAME, identities[0].1.clone(), 8000)
    } else {
        Vec::new()
    };
    tokio::time::sleep(Duration::from_millis(600)).await; // the relay reloads its trust
    let relay_addr: SocketAddr = format!("127.0.0.1:{}", lab.quic_port).parse().unwrap();
    let g = Generator::start(relay_addr, SERVER_NAME, identities, Arc::new(packets))
        .expect("generator");
    let ports = Ports {
        relay: lab.quic_port,
        generator: g.local_port,
    };
    let _ = g.status().await; // the thread has set its policy by now
    let _ = GEN_SCHED.set(if g.counters.fifo.load(Relaxed) {
        "SCHED_FIFO 10".into()
    } else {
        "normal (SCHED_FIFO refused)".into()
    });
    let mut rig = Rig {
        g: &g,
        relay,
        metrics: lab.relay_metrics,
        ports: &ports,
        tck,
    };
    if flood_mode() {
        let (steps, end) = flood_steps(&mut rig, lab.quic_port, flood_packets).await;
        g.stop();
        return (steps, end);
    }
    let mut steps: Vec<Value> = Vec::new();
    let mut end = String::from("every step passed");
    // Step up; after the first failure, bisect (twice) between the last
    // passing and the first failing count.
    let mut up = step_counts().into_iter();
    let (mut lo, mut hi) = (0usize, None::<usize>);
    let mut refinements = 0;
    loop {
        let n = match hi {
            None => match up.next() {
                Some(n) => n,
                None => break,
            },
            Some(h) if refinements < REFINEMENTS && h - lo > 2 * REFINE_GRAIN => {
                refinements += 1;
                (lo + h) / 2 / REFINE_GRAIN * REFINE_GRAIN
            }
            Some(_) => break,
        };
        rig.relay.assert_running();
        let (quiet, waited) = wait_quiet(&rig.relay.pid().to_string(), tck, QUIET_WAIT).await;
        // A step takes its ramp, the settle time and one or two windows.
        let have = g.status().await.streaming;
        let step_s = n.saturating_sub(have) as f64 / RAMP_PER_S
            + SETTLE.as_secs_f64()
            + 2.0 * MEASURE.as_secs_f64()
            + 3.0;
        if started.elapsed().as_secs_f64() + step_s > BUDGET.as_secs_f64() {
            end = format!(
                "time budget ({} s) reached before {n} streams",
                BUDGET.as_secs()
            );
            break;
        }
        eprintln!("relay_load: {n} streams ...");
        let mut j = step(&mut rig, n).await;
        j.set("phase", if refinements > 0 { "bisect" } else { "step up" })
            .set("quiet_before_cores", quiet)
            .set("waited_for_quiet_s", waited);
        let verdict = j.str("verdict").unwrap_or("?").to_string();
        let j_other = j.num("other_load_cores_max").unwrap_or(0.0);
        steps.push(j);
        if every_step() {
            // Each listed count in turn, whatever the verdicts (what an
            // overload leaves behind for the next, lower step).
            continue;
        }
        match verdict.as_str() {
            "ok" => lo = lo.max(n),
            // Neither says anything about the relay's capacity: stop.
            "connections failed" | "generator limit" => {
                let busy = j_other > DISTURBED;
                end = format!(
                    "stopped at {n} streams: {verdict}{}",
                    if busy {
                        " (other processes were using the machine)"
                    } else {
                        ""
                    }
                );
                break;
            }
            v => {
                if hi.is_none() {
                    end = format!("first failure at {n} streams: {v}");
                }
                hi = Some(hi.map_or(n, |h| h.min(n)));
            }
        }
    }
    // Closes every session (bounded) and joins the generator's thread.
    g.stop();
    (steps, end)
}
