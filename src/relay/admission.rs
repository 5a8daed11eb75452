//! Admission of new QUIC connections, sans-IO: what the accept loop does
//! with each incoming handshake before the relay spends a signature on it.
//!
//! [`Admission::incoming`] takes the time, the source address and whether
//! QUIC already validated it (a Retry token came back), and returns a
//! [`Decision`]:
//!
//! - above [`Limits::retry_above_per_s`] handshakes per second (a sliding
//!   one-second window), every source not yet validated is sent a Retry:
//!   a spoofed source never answers it, so a flood of forged handshakes
//!   costs the relay one small packet each, no key share and no signature;
//! - at most [`Limits::max_handshakes`] handshakes are in flight at once,
//!   and at most [`Limits::max_per_source`] from one source (an IPv4
//!   address, or an IPv6 prefix of [`Limits::ipv6_prefix`] bits: one
//!   Internet host usually holds a whole /64);
//! - at most [`Limits::max_enrollments`] enrollments run at once
//!   ([`Admission::enrollment`]).
//!
//! A slot is held until [`Admission::done`] (or [`Admission::enrollment_done`]).
//! The table holds only sources with a handshake in flight, so it is
//! bounded by the global cap: memory does not grow with the number of
//! addresses a flood uses.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

/// The admission limits (`[limits]` in the relay's config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Handshakes per second above which unvalidated sources get a Retry.
    pub retry_above_per_s: u32,
    /// Handshakes in flight at once, in all.
    pub max_handshakes: usize,
    /// Handshakes in flight at once from one source.
    pub max_per_source: usize,
    /// Enrollments running at once.
    pub max_enrollments: usize,
    /// Bits of an IPv6 address that name one source.
    pub ipv6_prefix: u8,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            retry_above_per_s: 100,
            max_handshakes: 256,
            max_per_source: 8,
            max_enrollments: 32,
            ipv6_prefix: 64,
        }
    }
}

/// What to do with an incoming handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Go on with the handshake; call [`Admission::done`] with this source
    /// when it ends, whatever its outcome.
    Accept(Source),
    /// Send a QUIC Retry (the source must prove it receives our packets).
    Retry,
    /// Drop it: too many handshakes in flight.
    Refuse(Refusal),
}

/// Why a handshake was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// The relay-wide cap on handshakes in flight.
    Busy,
    /// The cap of one source.
    SourceBusy,
    /// The cap on enrollments running at once.
    EnrollmentsBusy,
}

impl Refusal {
    /// The audit log's and the logs' wording.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Busy => "too many handshakes in flight",
            Refusal::SourceBusy => "too many handshakes in flight from this source",
            Refusal::EnrollmentsBusy => "too many enrollments running",
        }
    }
}

/// A source as the limits count it: an IPv4 address, or an IPv6 address
/// cut to its prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Source(pub IpAddr);

impl Source {
    /// The source `ip` belongs to, IPv6 cut to `prefix` bits (IPv4-mapped
    /// IPv6 addresses count as their IPv4 address).
    pub fn of(ip: IpAddr, ipv6_prefix: u8) -> Source {
        match ip {
            IpAddr::V4(_) => Source(ip),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source(IpAddr::V4(v4)),
                None => {
                    let bits = u128::from(v6);
                    let keep = u32::from(ipv6_prefix.min(128));
                    let mask = u128::MAX.checked_shl(128 - keep).unwrap_or(0);
                    Source(IpAddr::V6((bits & mask).into()))
                }
            },
        }
    }
}

/// The admission state.
#[derive(Debug)]
pub struct Admission {
    limits: Limits,
    in_flight: HashMap<Source, usize>,
    total: usize,
    enrolling: usize,
    /// Handshakes seen in the current and the previous whole second.
    second: u64,
    this_second: u32,
    last_second: u32,
}

impl Admission {
    /// Nothing in flight.
    pub fn new(limits: Limits) -> Self {
        Admission {
            limits,
            in_flight: HashMap::new(),
            total: 0,
            enrolling: 0,
            second: 0,
            this_second: 0,
            last_second: 0,
        }
    }

    /// The limits.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Handshakes per second now: the previous second weighted by the part
    /// of it still inside the last second, plus the current one.
    pub fn rate(&mut self, now: Duration) -> f64 {
        self.roll(now);
        let frac = f64::from(now.subsec_millis()) / 1000.0;
        f64::from(self.last_second) * (1.0 - frac) + f64::from(self.this_second)
    }

    fn roll(&mut self, now: Duration) {
        let s = now.as_secs();
        if s != self.second {
            self.last_second = if s == self.second + 1 {
                self.this_second
            } else {
                0
            };
            self.this_second = 0;
            self.second = s;
        }
    }

    /// An incoming handshake from `ip` at `now`; `validated` when QUIC
    /// already checked the source (a Retry token came back).
    pub fn incoming(&mut self, now: Duration, ip: IpAddr, validated: bool) -> Decision {
        let rate = self.rate(now);
        self.this_second = self.this_second.saturating_add(1);
        if !validated && rate >= f64::from(self.limits.retry_above_per_s) {
            return Decision::Retry;
        }
        let source = Source::of(ip, self.limits.ipv6_prefix);
        if self.total >= self.limits.max_handshakes {
            return Decision::Refuse(Refusal::Busy);
        }
        let n = self.in_flight.entry(source).or_insert(0);
        if *n >= self.limits.max_per_source {
            return Decision::Refuse(Refusal::SourceBusy);
        }
        *n += 1;
        self.total += 1;
        Decision::Accept(source)
    }

    /// A handshake admitted by [`Admission::incoming`] ended.
    pub fn done(&mut self, source: Source) {
        if let Some(n) = self.in_flight.get_mut(&source) {
            *n -= 1;
            self.total -= 1;
            if *n == 0 {
                self.in_flight.remove(&source);
            }
        }
    }

    /// An enrollment starts: `Err` when the cap is reached.
    pub fn enrollment(&mut self) -> Result<(), Refusal> {
        if self.enrolling >= self.limits.max_enrollments {
            return Err(Refusal::EnrollmentsBusy);
        }
        self.enrolling += 1;
        Ok(())
    }

    /// An enrollment admitted by [`Admission::enrollment`] ended.
    pub fn enrollment_done(&mut self) {
        self.enrolling = self.enrolling.saturating_sub(1);
    }

    /// Handshakes in flight, and sources they come from.
    pub fn in_flight(&self) -> (usize, usize) {
        (self.total, self.in_flight.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(n: u32) -> IpAddr {
        IpAddr::from((0x0a00_0000u32 + n).to_be_bytes())
    }

    fn limits() -> Limits {
        Limits {
            retry_above_per_s: 10,
            max_handshakes: 20,
            max_per_source: 2,
            max_enrollments: 3,
            ipv6_prefix: 64,
        }
    }

    #[test]
    fn retry_starts_above_the_rate_and_stops_when_it_falls() {
        let mut a = Admission::new(limits());
        let t = Duration::from_secs(100);
        // Ten handshakes in the second: admitted and ended at once.
        for i in 0..10 {
            let d = a.incoming(t + Duration::from_millis(i * 10), v4(i as u32), false);
            let Decision::Accept(s) = d else {
                panic!("{i}: {d:?}")
            };
            a.done(s);
        }
        // The eleventh is over the threshold: Retry, unless validated.
        assert_eq!(
            a.incoming(t + Duration::from_millis(200), v4(50), false),
            Decision::Retry
        );
        assert!(matches!(
            a.incoming(t + Duration::from_millis(200), v4(50), true),
            Decision::Accept(_)
        ));
        // 0.1 s into the next second, 90% of the last one (12) counts.
        assert_eq!(
            a.incoming(t + Duration::from_millis(1100), v4(51), false),
            Decision::Retry
        );
        // Half way, half of it: 6 and the 1 of this second, under 10.
        assert!(matches!(
            a.incoming(t + Duration::from_millis(1500), v4(51), false),
            Decision::Accept(_)
        ));
        // Two quiet seconds later the window is empty.
        assert!(matches!(
            a.incoming(t + Duration::from_secs(4), v4(52), false),
            Decision::Accept(_)
        ));
    }

    #[test]
    fn caps_per_source_and_in_all_are_released_when_handshakes_end() {
        let mut a = Admission::new(Limits {
            retry_above_per_s: u32::MAX,
            ..limits()
        });
        let t = Duration::from_secs(5);
        let s1 = a.incoming(t, v4(1), false);
        let s2 = a.incoming(t, v4(1), false);
        assert!(matches!(s1, Decision::Accept(_)) && matches!(s2, Decision::Accept(_)));
        assert_eq!(
            a.incoming(t, v4(1), false),
            Decision::Refuse(Refusal::SourceBusy)
        );
        let Decision::Accept(s) = s1 else {
            unreachable!()
        };
        a.done(s);
        assert!(matches!(a.incoming(t, v4(1), false), Decision::Accept(_)));
        // The global cap: 20 in flight (2 from source 1 above).
        for i in 2..20 {
            assert!(matches!(a.incoming(t, v4(i), false), Decision::Accept(_)));
        }
        assert_eq!(a.in_flight().0, 20);
        assert_eq!(
            a.incoming(t, v4(99), false),
            Decision::Refuse(Refusal::Busy)
        );
    }

    #[test]
    fn ipv6_sources_are_counted_per_prefix() {
        let mut a = Admission::new(Limits {
            retry_above_per_s: u32::MAX,
            ..limits()
        });
        let t = Duration::ZERO;
        let host = |last: u16| IpAddr::from([0x2001, 0xdb8, 0, 1, 0, 0, 0, last]);
        assert!(matches!(a.incoming(t, host(1), false), Decision::Accept(_)));
        assert!(matches!(a.incoming(t, host(2), false), Decision::Accept(_)));
        assert_eq!(
            a.incoming(t, host(3), false),
            Decision::Refuse(Refusal::SourceBusy),
            "one /64"
        );
        let other = IpAddr::from([0x2001, 0xdb8, 0, 2, 0, 0, 0, 1]);
        assert!(matches!(a.incoming(t, other, false), Decision::Accept(_)));
        let mapped: IpAddr = "::ffff:10.0.0.7".parse().unwrap();
        assert_eq!(Source::of(mapped, 64), Source(v4(7)));
        assert_eq!(Source::of(host(9), 128), Source(host(9)));
        assert_eq!(
            Source::of(host(9), 0),
            Source(IpAddr::from([0u16; 8])),
            "prefix 0: one source"
        );
    }

    #[test]
    fn a_flood_of_addresses_keeps_the_table_bounded() {
        let mut a = Admission::new(Limits {
            retry_above_per_s: 1000,
            ..limits()
        });
        let mut t = Duration::ZERO;
        let (mut retried, mut refused) = (0, 0);
        for i in 0..100_000u32 {
            t += Duration::from_micros(100); // 10,000 a second
            match a.incoming(t, v4(i), false) {
                Decision::Retry => retried += 1,
                Decision::Refuse(_) => refused += 1,
                Decision::Accept(_) => {} // never completes: a spoofed source
            }
        }
        assert!(a.in_flight().0 <= 20 && a.in_flight().1 <= 20);
        assert!(retried > 85_000, "retried {retried}");
        assert!(refused > 0);
    }

    #[test]
    fn enrollments_are_capped() {
        let mut a = Admission::new(limits());
        for _ in 0..3 {
            assert_eq!(a.enrollment(), Ok(()));
        }
        assert_eq!(a.enrollment(), Err(Refusal::EnrollmentsBusy));
        a.enrollment_done();
        assert_eq!(a.enrollment(), Ok(()));
    }
}
