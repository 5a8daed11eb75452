//! Per-source limits on enrollment attempts (sans-IO: time is passed in).
//!
//! Each address gets a token bucket of attempts (burst [`BURST`], refilled
//! at one per [`REFILL`]) and a budget of failures: after [`MAX_FAILURES`]
//! failed attempts within [`WINDOW`] the address is refused until the window
//! passes. At most [`MAX_TRACKED`] addresses are remembered; the stalest is
//! forgotten first, so a spoofing flood cannot grow memory.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

/// Attempts allowed back to back.
pub const BURST: u32 = 5;
/// One attempt regained per this interval.
pub const REFILL: Duration = Duration::from_secs(2);
/// Failures allowed per window.
pub const MAX_FAILURES: u32 = 5;
/// Failure window.
pub const WINDOW: Duration = Duration::from_secs(600);
/// Addresses remembered.
pub const MAX_TRACKED: usize = 4096;

#[derive(Debug, Clone, Copy)]
struct Entry {
    tokens: f64,
    last: Duration,
    failures: u32,
    window_start: Duration,
}

/// Why an attempt is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Too many attempts in a short time.
    TooFast,
    /// Too many failures in the window.
    TooManyFailures,
}

/// The limiter.
#[derive(Debug, Default)]
pub struct Limiter {
    by_ip: HashMap<IpAddr, Entry>,
}

impl Limiter {
    /// May `ip` attempt now? Consumes one attempt when allowed.
    pub fn attempt(&mut self, ip: IpAddr, now: Duration) -> Result<(), Refusal> {
        if self.by_ip.len() >= MAX_TRACKED
            && !self.by_ip.contains_key(&ip)
            && let Some(stalest) = self
                .by_ip
                .iter()
                .min_by_key(|(_, e)| e.last)
                .map(|(k, _)| *k)
        {
            self.by_ip.remove(&stalest);
        }
        let e = self.by_ip.entry(ip).or_insert(Entry {
            tokens: f64::from(BURST),
            last: now,
            failures: 0,
            window_start: now,
        });
        if now.saturating_sub(e.window_start) >= WINDOW {
            e.failures = 0;
            e.window_start = now;
        }
        let refill = now.saturating_sub(e.last).as_secs_f64() / REFILL.as_secs_f64();
        e.tokens = (e.tokens + refill).min(f64::from(BURST));
        e.last = now;
        if e.failures >= MAX_FAILURES {
            return Err(Refusal::TooManyFailures);
        }
        if e.tokens < 1.0 {
            return Err(Refusal::TooFast);
        }
        e.tokens -= 1.0;
        Ok(())
    }

    /// Record a failed attempt from `ip`.
    pub fn failed(&mut self, ip: IpAddr, now: Duration) {
        if let Some(e) = self.by_ip.get_mut(&ip) {
            if now.saturating_sub(e.window_start) >= WINDOW {
                e.failures = 0;
                e.window_start = now;
            }
            e.failures += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, n])
    }

    #[test]
    fn failures_lock_an_address_out_and_spare_others() {
        let mut l = Limiter::default();
        let mut t = Duration::ZERO;
        for _ in 0..MAX_FAILURES {
            t += REFILL;
            assert_eq!(l.attempt(ip(1), t), Ok(()));
            l.failed(ip(1), t);
        }
        t += REFILL;
        assert_eq!(l.attempt(ip(1), t), Err(Refusal::TooManyFailures));
        assert_eq!(l.attempt(ip(2), t), Ok(()));
        // The window passes.
        assert_eq!(l.attempt(ip(1), t + WINDOW), Ok(()));
    }

    #[test]
    fn bursts_are_limited_then_refill() {
        let mut l = Limiter::default();
        let t = Duration::from_secs(100);
        for _ in 0..BURST {
            assert_eq!(l.attempt(ip(3), t), Ok(()));
        }
        assert_eq!(l.attempt(ip(3), t), Err(Refusal::TooFast));
        assert_eq!(l.attempt(ip(3), t + REFILL), Ok(()));
    }

    #[test]
    fn memory_is_bounded() {
        let mut l = Limiter::default();
        for i in 0..(MAX_TRACKED as u32 + 100) {
            let _ = l.attempt(
                IpAddr::from(i.to_be_bytes()),
                Duration::from_millis(u64::from(i)),
            );
        }
        assert!(l.by_ip.len() <= MAX_TRACKED);
    }
}
