//! The gateway's metrics: counters and the latency histogram between two
//! scrapes.

use super::*;

#[derive(Debug, Clone, Default)]
pub(crate) struct Metrics {
    pub(crate) values: BTreeMap<String, f64>,
    /// `voxgate_phone_to_send_seconds` buckets: (upper bound s, cumulative count).
    pub(crate) buckets: Vec<(f64, f64)>,
}

impl Metrics {
    pub(crate) fn get(&self, k: &str) -> Option<f64> {
        self.values.get(k).copied()
    }
}

pub(crate) fn metrics(addr: std::net::SocketAddr) -> Metrics {
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
pub(crate) fn quantile(a: &Metrics, b: &Metrics, q: f64) -> Option<f64> {
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
