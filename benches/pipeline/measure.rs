//! Load of other processes, memory and latency from /proc and the
//! gateway's metrics.

use super::*;

/// Cores' worth of CPU other processes used since `t0` (instant, machine
/// ticks, this process's ticks).
pub(crate) fn other_since(t0: (Instant, u64, u64), tck: f64) -> f64 {
    let wall = t0.0.elapsed().as_secs_f64().max(1e-3);
    let machine = machine_ticks().saturating_sub(t0.1) as f64;
    let own = try_proc_ticks("self").unwrap_or(0).saturating_sub(t0.2) as f64;
    ((machine - own) / tck / wall).max(0.0)
}

/// Waits (at most `max`) for a second in which other processes used less
/// than `QUIET` cores; returns that load and the time waited.
pub(crate) fn wait_quiet(tck: f64, max: Duration) -> (f64, f64) {
    let start = Instant::now();
    loop {
        let t0 = (
            Instant::now(),
            machine_ticks(),
            try_proc_ticks("self").unwrap_or(0),
        );
        std::thread::sleep(Duration::from_secs(1));
        let load = other_since(t0, tck);
        if load < QUIET || start.elapsed() >= max {
            if load >= QUIET {
                eprintln!(
                    "pipeline: machine still busy ({load:.2} cores) after {max:?}; measuring anyway"
                );
            }
            return (load, start.elapsed().as_secs_f64());
        }
    }
}

pub(crate) fn memory_json(pid: &str) -> Value {
    let st = status_kib_all(pid);
    let mut j = Value::obj();
    for k in ["VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem", "VmSize"] {
        j.set(k, st.get(k).map(|&v| v as f64));
    }
    // Proportional and private figures: shared library pages count once
    // per sharer in VmRSS.
    let mut rollup = Value::obj();
    let keys = [
        "Pss",
        "Pss_Anon",
        "Pss_File",
        "Shared_Clean",
        "Private_Clean",
        "Private_Dirty",
    ];
    for (k, n) in smaps_rollup_kib(pid, &keys) {
        rollup.set(&k, n);
    }
    j.set("smaps_rollup_kib", rollup);
    j.set(
        "top_mappings_kib",
        Value::Array(
            smaps_top(pid, 8)
                .into_iter()
                .map(|(name, kb)| {
                    let mut o = Value::obj();
                    o.set("mapping", name).set("rss_kib", kb);
                    o
                })
                .collect(),
        ),
    );
    j
}

/// Cumulative buckets (upper bound in µs, +inf for +Inf) of a histogram.
pub(crate) fn histogram(text: &str, name: &str) -> Vec<(f64, u64)> {
    let prefix = format!("{name}_bucket{{le=\"");
    let mut v = Vec::new();
    for l in text.lines() {
        let Some(rest) = l.strip_prefix(&prefix) else {
            continue;
        };
        let Some((le, count)) = rest.split_once("\"} ") else {
            continue;
        };
        let le_us = if le == "+Inf" {
            f64::INFINITY
        } else {
            le.parse::<f64>().unwrap_or(f64::NAN) * 1e6
        };
        if let Ok(c) = count.trim().parse::<f64>() {
            v.push(((le_us * 1000.0).round() / 1000.0, c as u64));
        }
    }
    v
}

/// Upper bound (µs) of the bucket holding quantile `q`.
pub(crate) fn quantile_us(buckets: &[(f64, u64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total == 0 {
        return None;
    }
    let rank = ((total as f64) * q).ceil().max(1.0) as u64;
    buckets.iter().find(|(_, c)| *c >= rank).map(|(le, _)| *le)
}

pub(crate) fn latency_json(text: &str) -> Value {
    let name = "voxgate_capture_to_send_seconds";
    let b = histogram(text, name);
    let count = voxgate::telemetry::metrics::scrape_value(text, &format!("{name}_count"));
    let sum = voxgate::telemetry::metrics::scrape_value(text, &format!("{name}_sum"));
    let mut j = Value::obj();
    j.set("count", count)
        .set(
            "mean_us",
            match (sum, count) {
                (Some(s), Some(c)) if c > 0.0 => Some(s / c * 1e6),
                _ => None,
            },
        )
        .set("p50_us", quantile_us(&b, 0.50))
        .set("p90_us", quantile_us(&b, 0.90))
        .set("p99_us", quantile_us(&b, 0.99))
        .set("max_bucket_us", {
            let mut prev = 0;
            let mut top = None;
            for (le, c) in &b {
                if *c > prev {
                    top = Some(*le);
                }
                prev = *c;
            }
            top
        })
        .set(
            "buckets",
            Value::Array(
                b.iter()
                    .map(|(le, c)| {
                        let mut o = Value::obj();
                        o.set("le_us", *le).set("cumulative", *c);
                        o
                    })
                    .collect(),
            ),
        );
    j
}
