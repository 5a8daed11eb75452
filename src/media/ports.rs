//! The RTP port pool of the phone bridge.
//!
//! Every RTP/RTCP socket pair is bound when the daemon starts, before the
//! privilege drop (so the sandbox never needs `bind` on new ports, and a
//! port range that is taken fails the start, not a call). A call leases a
//! pair; when it ends the pair is drained of queued datagrams and rests in
//! quarantine for [`QUARANTINE`], so late packets of the old call never reach
//! the next one. RTP sockets carry the kernel's receive time of each
//! datagram (`SO_TIMESTAMPNS`): the media engine reads them on its clock
//! and still knows when each packet arrived.
//!
//! A lease takes a free pair at random (from the system's CSPRNG), not the
//! next in order: a host on the LAN cannot tell which ports the next call
//! will use.

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

/// How long a released pair rests before it is leased again.
pub const QUARANTINE: Duration = Duration::from_secs(2);

/// One RTP port and the RTCP port above it.
#[derive(Debug)]
pub struct PortPair {
    /// The RTP socket (even port), non-blocking.
    pub rtp: UdpSocket,
    /// The RTCP socket (RTP port + 1), non-blocking.
    pub rtcp: UdpSocket,
}

impl PortPair {
    /// The RTP port.
    pub fn port(&self) -> u16 {
        self.rtp.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    /// Discard every datagram queued on both sockets; returns how many.
    pub fn drain(&self) -> usize {
        let mut buf = [0u8; 2048];
        let mut n = 0;
        for s in [&self.rtp, &self.rtcp] {
            while s.recv_from(&mut buf).is_ok() {
                n += 1;
            }
        }
        n
    }
}

/// Why the pool could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot bind RTP port {addr} (choose a free [sip] rtp_ports range)")]
pub struct BindError {
    /// The address that failed.
    pub addr: SocketAddr,
    /// The OS error.
    #[source]
    pub source: io::Error,
}

/// The pool.
#[derive(Debug)]
pub struct PortPool {
    free: VecDeque<PortPair>,
    resting: VecDeque<(Instant, PortPair)>,
    total: usize,
}

impl PortPool {
    /// Bind every pair of `first..=last` (even `first`, whole pairs) on `ip`.
    pub fn bind(ip: IpAddr, first: u16, last: u16) -> Result<PortPool, BindError> {
        let mut free = VecDeque::new();
        let mut port = first;
        while port < last {
            let bind = |p: u16| {
                let addr = SocketAddr::new(ip, p);
                UdpSocket::bind(addr)
                    .and_then(|s| s.set_nonblocking(true).map(|()| s))
                    .map_err(|source| BindError { addr, source })
            };
            let rtp = bind(port)?;
            // Without receive timestamps the engine takes its tick's time.
            let _ = nix::sys::socket::setsockopt(
                &rtp,
                nix::sys::socket::sockopt::ReceiveTimestampns,
                &true,
            );
            free.push_back(PortPair {
                rtp,
                rtcp: bind(port + 1)?,
            });
            match port.checked_add(2) {
                Some(p) => port = p,
                None => break,
            }
        }
        let total = free.len();
        Ok(PortPool {
            free,
            resting: VecDeque::new(),
            total,
        })
    }

    /// Pairs in the pool.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Pairs that could be leased at `now`.
    pub fn available(&mut self, now: Instant) -> usize {
        self.wake(now);
        self.free.len()
    }

    fn wake(&mut self, now: Instant) {
        while self.resting.front().is_some_and(|(t, _)| *t <= now) {
            if let Some((_, p)) = self.resting.pop_front() {
                // Drained again: packets may have arrived while it rested.
                p.drain();
                self.free.push_back(p);
            }
        }
    }

    /// Lease a free pair chosen at random, or `None` when all are in use.
    pub fn lease(&mut self, now: Instant) -> Option<PortPair> {
        self.wake(now);
        let n = self.free.len();
        if n == 0 {
            return None;
        }
        self.free.swap_remove_back(random_below(n))
    }

    /// Return a pair after its call: drained now and after its quarantine.
    pub fn release(&mut self, pair: PortPair, now: Instant) {
        pair.drain();
        self.resting.push_back((now + QUARANTINE, pair));
    }
}

/// A uniform index below `n` (> 0) from the system's CSPRNG (rejection
/// sampling: no modulo bias); 0 if the generator fails.
fn random_below(n: usize) -> usize {
    use ring::rand::{SecureRandom, SystemRandom};
    let n = n as u64;
    let zone = u64::MAX - (u64::MAX % n);
    let rng = SystemRandom::new();
    loop {
        let mut b = [0u8; 8];
        if rng.fill(&mut b).is_err() {
            return 0;
        }
        let x = u64::from_le_bytes(b);
        if x < zone {
            return (x % n) as usize;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn pool(pairs: u16) -> PortPool {
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        for _ in 0..50 {
            let first = 20_000 + 2 * fastrand::u16(0..15_000);
            if let Ok(p) = PortPool::bind(lo, first, first + 2 * pairs - 1) {
                return p;
            }
        }
        panic!("no free port range on loopback");
    }

    #[test]
    fn pairs_are_even_and_adjacent_and_leased_until_exhausted() {
        let mut p = pool(3);
        let t = Instant::now();
        assert_eq!((p.total(), p.available(t)), (3, 3));
        let a = p.lease(t).unwrap();
        assert_eq!(a.port() % 2, 0);
        assert_eq!(a.rtcp.local_addr().unwrap().port(), a.port() + 1);
        let _b = p.lease(t).unwrap();
        let _c = p.lease(t).unwrap();
        assert!(p.lease(t).is_none());
        p.release(a, t);
        assert!(p.lease(t).is_none(), "quarantined");
        assert!(p.lease(t + QUARANTINE).is_some());
    }

    #[test]
    fn a_released_pair_comes_back_without_the_old_calls_packets() {
        let mut p = pool(1);
        let t = Instant::now();
        let a = p.lease(t).unwrap();
        let port = a.port();
        let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
        peer.send_to(b"old call", ("127.0.0.1", port)).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        p.release(a, t);
        // A straggler during the quarantine is drained too.
        peer.send_to(b"straggler", ("127.0.0.1", port)).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let b = p.lease(t + QUARANTINE).unwrap();
        assert_eq!(b.port(), port);
        let mut buf = [0u8; 64];
        assert!(
            b.rtp.recv_from(&mut buf).is_err(),
            "stale datagram leaked into the next call"
        );
        peer.send_to(b"new call", ("127.0.0.1", port)).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let (n, _) = b.rtp.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"new call");
    }

    #[test]
    fn pairs_are_leased_in_no_predictable_order() {
        let mut p = pool(16);
        let t = Instant::now();
        let first: Vec<u16> = (0..16).map(|_| p.lease(t).unwrap().port()).collect();
        let mut sorted = first.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 16, "every pair once");
        // In order would be one of 16! orders; the chance a random draw is
        // ascending is 1 / 16! (about 5e-14).
        assert_ne!(first, sorted, "leased in port order");
        assert!(random_below(1) == 0);
        assert!((0..1000).all(|_| random_below(7) < 7));
    }

    #[test]
    fn a_taken_port_fails_the_bind_with_its_address() {
        let taken = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port() & !1;
        // One of the pair's two ports is the taken one.
        let e = PortPool::bind(IpAddr::V4(Ipv4Addr::LOCALHOST), port, port + 1).unwrap_err();
        assert!(e.to_string().contains("rtp_ports"), "{e}");
    }
}
