//! Receiver statistics for one incoming RTP flow (RFC 3550 §6.4.1 and
//! Appendix A.3): packets received, expected from the sequence numbers,
//! lost, and interarrival jitter. Time is passed in; no clock is read.

use std::time::Duration;

/// Running statistics of one flow.
#[derive(Debug, Clone, Default)]
pub struct ReceiveStats {
    base_seq: Option<u64>,
    max_seq: u64,
    received: u64,
    jitter: f64,
    last_transit: Option<f64>,
}

impl ReceiveStats {
    /// Account for a packet with `seq` and `ts` (48 kHz) arriving at `now`.
    pub fn update(&mut self, now: Duration, seq: u16, ts: u32) {
        let ext = match self.base_seq {
            None => {
                self.base_seq = Some(u64::from(seq) + (1 << 16));
                self.max_seq = u64::from(seq) + (1 << 16);
                self.max_seq
            }
            Some(_) => {
                let cand = (self.max_seq & !0xffff) | u64::from(seq);
                let ext = [cand.wrapping_sub(1 << 16), cand, cand + (1 << 16)]
                    .into_iter()
                    .min_by_key(|c| c.abs_diff(self.max_seq))
                    .unwrap_or(cand);
                self.max_seq = self.max_seq.max(ext);
                ext
            }
        };
        let _ = ext;
        self.received += 1;
        let arrival = now.as_secs_f64() * 48_000.0;
        let transit = arrival - f64::from(ts);
        if let Some(last) = self.last_transit {
            let mut d = (transit - last).abs();
            // A 32-bit timestamp wrap shows up as a jump of ~2^32.
            if d > 2f64.powi(31) {
                d = (d - 2f64.powi(32)).abs();
            }
            self.jitter += (d - self.jitter) / 16.0;
        }
        self.last_transit = Some(transit);
    }

    /// Packets received (duplicates included, as in RFC 3550).
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Packets expected from the highest sequence number seen.
    pub fn expected(&self) -> u64 {
        self.base_seq.map_or(0, |b| self.max_seq - b + 1)
    }

    /// Cumulative packets lost (never negative).
    pub fn lost(&self) -> u64 {
        self.expected().saturating_sub(self.received)
    }

    /// Interarrival jitter in microseconds.
    pub fn jitter_us(&self) -> u32 {
        (self.jitter / 48.0 * 1000.0) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_loss_across_wrap_and_measures_jitter() {
        let mut s = ReceiveStats::default();
        let mut seq = u16::MAX - 5;
        let mut ts = 0u32;
        for i in 0..100u64 {
            if i % 10 != 3 {
                // ±5 ms of alternating delay.
                let skew = if i % 2 == 0 { 5 } else { 0 };
                s.update(Duration::from_millis(i * 20 + skew), seq, ts);
            }
            seq = seq.wrapping_add(1);
            ts = ts.wrapping_add(960);
        }
        assert_eq!(s.expected(), 100);
        assert_eq!(s.lost(), 10);
        let j = s.jitter_us();
        assert!((3_000..=6_000).contains(&j), "{j}");
    }
}
