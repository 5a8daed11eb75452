//! Lock-free counters, gauges and a fixed-bucket latency histogram, rendered
//! as Prometheus text (exposition format 0.0.4).
//!
//! Updating a metric is one relaxed atomic operation: safe from the encoder
//! thread, the network tasks, and anything else that must not take a lock.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Add one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Relaxed);
    }
    /// Add `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Relaxed);
    }
    /// Current value.
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// A value that goes up and down, stored as `f64` bits.
#[derive(Debug, Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    /// Set the value.
    pub fn set(&self, v: f64) {
        self.0.store(v.to_bits(), Relaxed);
    }
    /// Current value.
    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Relaxed))
    }
}

/// Upper bounds of the latency buckets, in microseconds.
/// (5 ms steps from 20 to 60 ms: a phone call's jitter-buffered path lives there.)
pub const LATENCY_BUCKETS_US: [u64; 29] = [
    25, 50, 75, 100, 150, 200, 300, 400, 500, 750, 1_000, 1_500, 2_000, 3_000, 5_000, 10_000,
    20_000, 25_000, 30_000, 35_000, 40_000, 45_000, 50_000, 55_000, 60_000, 100_000, 250_000,
    500_000, 1_000_000,
];

/// A latency histogram with fixed microsecond buckets (plus +Inf).
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS_US.len() + 1],
    sum_us: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    /// Record one observation.
    pub fn observe_us(&self, us: u64) {
        let i = LATENCY_BUCKETS_US
            .iter()
            .position(|&b| us <= b)
            .unwrap_or(LATENCY_BUCKETS_US.len());
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum_us.fetch_add(us, Relaxed);
        self.count.fetch_add(1, Relaxed);
    }

    /// Number of observations.
    pub fn count(&self) -> u64 {
        self.count.load(Relaxed)
    }

    /// Upper bound (µs) of the bucket holding quantile `q` (0..=1), or `None`
    /// when empty. `u64::MAX` stands for the +Inf bucket.
    pub fn quantile_upper_us(&self, q: f64) -> Option<u64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            seen += b.load(Relaxed);
            if seen >= rank {
                return Some(LATENCY_BUCKETS_US.get(i).copied().unwrap_or(u64::MAX));
            }
        }
        Some(u64::MAX)
    }
}

#[derive(Debug)]
enum Kind {
    Counter(Arc<Counter>),
    Gauge(Arc<Gauge>),
    Histogram(Arc<Histogram>),
}

/// A set of named metrics, registered once at start-up.
#[derive(Debug, Default)]
pub struct Registry {
    entries: Vec<(&'static str, &'static str, Kind)>,
}

impl Registry {
    /// Register a counter; `name` should end in `_total`.
    pub fn counter(&mut self, name: &'static str, help: &'static str) -> Arc<Counter> {
        let c = Arc::new(Counter::default());
        self.entries.push((name, help, Kind::Counter(c.clone())));
        c
    }

    /// Register a gauge.
    pub fn gauge(&mut self, name: &'static str, help: &'static str) -> Arc<Gauge> {
        let g = Arc::new(Gauge::default());
        self.entries.push((name, help, Kind::Gauge(g.clone())));
        g
    }

    /// Register a latency histogram; it is exported in seconds.
    pub fn histogram(&mut self, name: &'static str, help: &'static str) -> Arc<Histogram> {
        let h = Arc::new(Histogram::default());
        self.entries.push((name, help, Kind::Histogram(h.clone())));
        h
    }

    /// Render every metric as Prometheus text.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        for (name, help, kind) in &self.entries {
            let _ = writeln!(out, "# HELP {name} {help}");
            match kind {
                Kind::Counter(c) => {
                    let _ = writeln!(out, "# TYPE {name} counter\n{name} {}", c.get());
                }
                Kind::Gauge(g) => {
                    let _ = writeln!(out, "# TYPE {name} gauge\n{name} {}", g.get());
                }
                Kind::Histogram(h) => {
                    let _ = writeln!(out, "# TYPE {name} histogram");
                    let mut cumulative = 0;
                    for (i, b) in h.buckets.iter().enumerate() {
                        cumulative += b.load(Relaxed);
                        match LATENCY_BUCKETS_US.get(i) {
                            Some(us) => {
                                let le = *us as f64 / 1e6;
                                let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
                            }
                            None => {
                                let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
                            }
                        }
                    }
                    let sum = h.sum_us.load(Relaxed) as f64 / 1e6;
                    let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {}", h.count());
                }
            }
        }
        out
    }
}

/// Read one sample's value back out of Prometheus text (tests, demo display).
pub fn scrape_value(text: &str, name: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (n, v) = l.split_once(' ')?;
        (n == name).then(|| v.trim().parse().ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_and_scrapes() {
        let mut r = Registry::default();
        let c = r.counter("x_total", "things");
        let g = r.gauge("y", "level");
        let h = r.histogram("lat_seconds", "latency");
        c.add(3);
        g.set(0.25);
        for us in [40, 90, 90, 900, 2_000_000] {
            h.observe_us(us);
        }
        let text = r.render();
        assert_eq!(scrape_value(&text, "x_total"), Some(3.0));
        assert_eq!(scrape_value(&text, "y"), Some(0.25));
        assert_eq!(scrape_value(&text, "lat_seconds_count"), Some(5.0));
        assert!(text.contains("lat_seconds_bucket{le=\"0.0001\"} 3"));
        assert!(text.contains("lat_seconds_bucket{le=\"0.000025\"} 0"));
        assert!(text.contains("lat_seconds_bucket{le=\"+Inf\"} 5"));
        assert_eq!(h.quantile_upper_us(0.5), Some(100));
        assert_eq!(h.quantile_upper_us(0.8), Some(1_000));
        assert_eq!(h.quantile_upper_us(1.0), Some(u64::MAX));
    }
}
