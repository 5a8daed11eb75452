//! Phone to phone: the two phones' RTP ends, stamped on one clock, and
//! the one-way delay between them by cross-correlation (`phone.rs`).

use super::xcorr;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};
use voxgate_testkit::rtp::{parse_rtp, rtp};

/// The phones' packet time (ms), both ways.
pub(crate) const PTIME: u32 = 20;
/// Correlation windows over the call (seconds long, seconds apart): how
/// the delay moves during it.
pub(crate) const WINDOW_S: f64 = 2.0;
pub(crate) const HOP_S: f64 = 1.0;

/// Timed packets' payloads (u-law), in order: (when, payload).
pub(crate) type Timed = Vec<(SystemTime, Vec<u8>)>;

/// G.711 u-law to linear (ITU-T G.711).
pub(crate) fn ulaw_to_linear(b: u8) -> i16 {
    let b = !b;
    let exp = u32::from((b >> 4) & 7);
    let mag = ((i32::from(b & 0x0f) << 3) + 0x84) << exp;
    let v = mag - 0x84;
    (if b & 0x80 != 0 { -v } else { v }) as i16
}

/// The packets' audio at 48 kHz on the common clock from `t0`: each
/// packet's 8 kHz samples (linearly interpolated) from its own time on.
/// Packets before `t0` are left out; where packets overlap the later one
/// wins, where none was the signal is silence.
pub(crate) fn lay_out(packets: &[(SystemTime, Vec<u8>)], t0: SystemTime) -> Vec<i16> {
    let mut out = Vec::new();
    for (at, payload) in packets {
        let Ok(d) = at.duration_since(t0) else {
            continue;
        };
        let start = (d.as_secs_f64() * 48_000.0).round() as usize;
        let end = start + 6 * payload.len();
        if out.len() < end {
            out.resize(end, 0);
        }
        let pcm: Vec<i16> = payload.iter().map(|&b| ulaw_to_linear(b)).collect();
        for (i, &s) in pcm.iter().enumerate() {
            let next = pcm.get(i + 1).copied().unwrap_or(s);
            for k in 0..6 {
                let v = f64::from(s) + (f64::from(next) - f64::from(s)) * k as f64 / 6.0;
                out[start + 6 * i + k] = v as i16;
            }
        }
    }
    out
}

/// The delay of `heard` behind `said` over the whole call and per window:
/// (whole (ms, correlation), window delays in ms).
pub(crate) fn one_way(said: &Timed, heard: &Timed) -> (Option<(f64, f64)>, Vec<f64>) {
    let Some(t0) = said.first().map(|p| p.0) else {
        return (None, Vec::new());
    };
    let a = lay_out(said, t0);
    let b = lay_out(heard, t0);
    let whole = xcorr::delay_ms(&a, &b, 1000);
    let (w, hop) = ((WINDOW_S * 48_000.0) as usize, (HOP_S * 48_000.0) as usize);
    let windows = (0..a.len().saturating_sub(w))
        .step_by(hop)
        .filter_map(|from| xcorr::segment_delay_ms(&a, &b, from, from + w, 1000))
        .filter(|d| d.1 > 0.5)
        .map(|d| d.0)
        .collect();
    (whole, windows)
}

/// Phone A's media: waits for box A's first packet (its address), then
/// for `go`, then sends `ulaw` in 20 ms PCMU packets from the same socket,
/// paced on its own thread; returns each packet's payload with the wall
/// time just before its `send_to`.
pub(crate) struct Talker {
    pub port: u16,
    pub ready: mpsc::Receiver<SocketAddr>,
    pub go: mpsc::Sender<()>,
    /// Told when a second of the trailing silence is left.
    pub ending: mpsc::Receiver<()>,
    pub thread: std::thread::JoinHandle<Timed>,
}

impl Talker {
    pub(crate) fn spawn(ulaw: Vec<u8>) -> Talker {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = sock.local_addr().unwrap().port();
        let (ready_tx, ready) = mpsc::channel();
        let (go, go_rx) = mpsc::channel::<()>();
        let (ending_tx, ending) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            sock.set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            let t0 = Instant::now();
            let peer = loop {
                if t0.elapsed() > Duration::from_secs(40) {
                    return Vec::new();
                }
                if let Ok((_, from)) = sock.recv_from(&mut buf) {
                    break from;
                }
            };
            let _ = ready_tx.send(peer);
            if go_rx.recv_timeout(Duration::from_secs(30)).is_err() {
                return Vec::new();
            }
            sock.set_nonblocking(true).unwrap();
            let n = (8 * PTIME) as usize;
            let (mut seq, mut ts) = (fastrand::u16(..), fastrand::u32(..));
            let mut sent = Vec::with_capacity(ulaw.len() / n + 1);
            // A phone's packets keep no phase with box A's 10 ms clock
            // (which sent the packet this thread just answered).
            let start = Instant::now() + Duration::from_micros(fastrand::u64(0..20_000));
            let packets = ulaw.len().div_ceil(n);
            let mark = packets.saturating_sub((1000 / PTIME) as usize);
            for (k, chunk) in ulaw.chunks(n).enumerate() {
                if k == mark {
                    let _ = ending_tx.send(());
                }
                let due = start + Duration::from_millis(u64::from(PTIME) * k as u64);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                // What box A sends phone A (silence) is not measured.
                while sock.recv_from(&mut buf).is_ok() {}
                let mut frame = chunk.to_vec();
                frame.resize(n, 0xff);
                let p = rtp(0, k == 0, seq, ts, 0x5150_0017, &frame);
                let at = SystemTime::now();
                if sock.send_to(&p, peer).is_ok() {
                    sent.push((at, frame));
                }
                seq = seq.wrapping_add(1);
                ts = ts.wrapping_add(n as u32);
            }
            sent
        });
        Talker {
            port,
            ready,
            go,
            ending,
            thread,
        }
    }
}

/// Phone B's RTP port: keeps every PCMU packet with its kernel receive
/// time (`SO_TIMESTAMPNS`, the wall clock) until stopped.
pub(crate) struct Listener {
    pub port: u16,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Timed>,
}

impl Listener {
    pub(crate) fn spawn() -> Listener {
        use nix::sys::socket::{
            ControlMessageOwned, MsgFlags, SockaddrStorage, recvmsg, setsockopt, sockopt,
        };
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        setsockopt(&sock, sockopt::ReceiveTimestampns, &true).expect("SO_TIMESTAMPNS");
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let port = sock.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let halt = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut got = Vec::new();
            let mut buf = [0u8; 2048];
            let mut cmsg = nix::cmsg_space!(nix::sys::time::TimeSpec);
            let t0 = Instant::now();
            while !halt.load(Ordering::Relaxed) && t0.elapsed() < Duration::from_secs(120) {
                let mut iov = [std::io::IoSliceMut::new(&mut buf)];
                let Ok(r) = recvmsg::<SockaddrStorage>(
                    sock.as_raw_fd(),
                    &mut iov,
                    Some(&mut cmsg),
                    MsgFlags::empty(),
                ) else {
                    continue;
                };
                let at = r
                    .cmsgs()
                    .ok()
                    .and_then(|mut it| {
                        it.find_map(|c| match c {
                            ControlMessageOwned::ScmTimestampns(ts) => {
                                let d = Duration::new(
                                    ts.tv_sec().try_into().ok()?,
                                    ts.tv_nsec().try_into().ok()?,
                                );
                                SystemTime::UNIX_EPOCH.checked_add(d)
                            }
                            _ => None,
                        })
                    })
                    .unwrap_or_else(SystemTime::now);
                let len = r.bytes;
                if let Some(p) = parse_rtp(&buf[..len])
                    && p.pt == 0
                {
                    got.push((at, p.payload));
                }
            }
            got
        });
        Listener { port, stop, thread }
    }

    pub(crate) fn finish(self) -> Timed {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}
