//! A lossy UDP proxy between a gateway and a relay, on loopback. QUIC
//! passes through unchanged; a seeded fraction of packets in each direction
//! is dropped, and every packet may be held for a fixed delay (a far relay). Runs until dropped; each recv has a timeout so it stops by
//! itself.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::thread::JoinHandle;
use std::time::Duration;

pub struct LossyProxy {
    pub port: u16,
    stop: Arc<AtomicBool>,
    pub forwarded: Arc<AtomicU64>,
    pub dropped: Arc<AtomicU64>,
    threads: Vec<JoinHandle<()>>,
}

impl LossyProxy {
    /// Listen on a free loopback port and forward to `relay`, dropping
    /// `loss` (0..1) of the packets in each direction.
    pub fn start(relay: SocketAddr, loss: f64, seed: u64) -> LossyProxy {
        Self::start_with_delay(relay, loss, seed, Duration::ZERO)
    }

    /// [`LossyProxy::start`], each packet forwarded `delay` after it came
    /// (both directions: the round trip grows by twice `delay`).
    pub fn start_with_delay(
        relay: SocketAddr,
        loss: f64,
        seed: u64,
        delay: Duration,
    ) -> LossyProxy {
        let front = UdpSocket::bind("127.0.0.1:0").unwrap();
        let back = UdpSocket::bind("127.0.0.1:0").unwrap();
        back.connect(relay).unwrap();
        for s in [&front, &back] {
            s.set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
        }
        let port = front.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let forwarded = Arc::new(AtomicU64::new(0));
        let dropped = Arc::new(AtomicU64::new(0));
        let client: Arc<std::sync::Mutex<Option<SocketAddr>>> = Arc::default();
        let front = Arc::new(front);
        let back = Arc::new(back);
        let mut threads = Vec::new();
        for dir in 0..2 {
            let (front, back, stop, client) =
                (front.clone(), back.clone(), stop.clone(), client.clone());
            let (fwd, drp) = (forwarded.clone(), dropped.clone());
            let mut rng = fastrand::Rng::with_seed(seed + dir);
            // The delay line: packets leave in order, each `delay` after it came.
            let (line_tx, line_rx) = std::sync::mpsc::channel::<(std::time::Instant, Vec<u8>)>();
            let (out_front, out_back, out_client) = (front.clone(), back.clone(), client.clone());
            threads.push(std::thread::spawn(move || {
                while let Ok((due, p)) = line_rx.recv() {
                    std::thread::sleep(due.saturating_duration_since(std::time::Instant::now()));
                    if dir == 0 {
                        let _ = out_back.send(&p);
                    } else if let Some(c) = *out_client.lock().unwrap() {
                        let _ = out_front.send_to(&p, c);
                    }
                }
            }));
            threads.push(std::thread::spawn(move || {
                let mut buf = [0u8; 2048];
                while !stop.load(Relaxed) {
                    let n = if dir == 0 {
                        match front.recv_from(&mut buf) {
                            Ok((n, from)) => {
                                *client.lock().unwrap() = Some(from);
                                n
                            }
                            Err(_) => continue,
                        }
                    } else {
                        match back.recv(&mut buf) {
                            Ok(n) => n,
                            Err(_) => continue,
                        }
                    };
                    if rng.f64() < loss {
                        drp.fetch_add(1, Relaxed);
                        continue;
                    }
                    fwd.fetch_add(1, Relaxed);
                    if !delay.is_zero() {
                        let _ =
                            line_tx.send((std::time::Instant::now() + delay, buf[..n].to_vec()));
                    } else if dir == 0 {
                        let _ = back.send(&buf[..n]);
                    } else if let Some(c) = *client.lock().unwrap() {
                        let _ = front.send_to(&buf[..n], c);
                    }
                }
            }));
        }
        LossyProxy {
            port,
            stop,
            forwarded,
            dropped,
            threads,
        }
    }
}

impl Drop for LossyProxy {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
