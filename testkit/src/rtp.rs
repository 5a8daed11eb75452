//! RTP for scripted phones: packets built here (RFC 3550 headers, PCMU
//! from sox's own u-law encoder, RFC 4733 events), written to pcap files
//! that sipp's `play_pcap_audio` plays, and parsed back from what a test's
//! own UDP sink receives.

use std::io::Write;
use std::net::UdpSocket;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One RTP packet: version 2, no padding, extension or CSRC.
pub fn rtp(pt: u8, marker: bool, seq: u16, ts: u32, ssrc: u32, payload: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(12 + payload.len());
    p.push(0x80);
    p.push(pt | if marker { 0x80 } else { 0 });
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&ts.to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

/// A parsed RTP header (what a sink needs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rtp {
    pub pt: u8,
    pub marker: bool,
    pub seq: u16,
    pub ts: u32,
    pub ssrc: u32,
    pub payload: Vec<u8>,
}

/// Parse a plain RTP packet (CSRCs and extension skipped); `None` if malformed.
pub fn parse_rtp(b: &[u8]) -> Option<Rtp> {
    if b.len() < 12 || b[0] >> 6 != 2 {
        return None;
    }
    let cc = usize::from(b[0] & 0x0f);
    let mut off = 12 + 4 * cc;
    if b[0] & 0x10 != 0 {
        let words = usize::from(u16::from_be_bytes([*b.get(off + 2)?, *b.get(off + 3)?]));
        off += 4 + 4 * words;
    }
    let mut end = b.len();
    if b[0] & 0x20 != 0 {
        end = end.checked_sub(usize::from(*b.last()?))?;
    }
    Some(Rtp {
        pt: b[1] & 0x7f,
        marker: b[1] & 0x80 != 0,
        seq: u16::from_be_bytes([b[2], b[3]]),
        ts: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
        ssrc: u32::from_be_bytes([b[8], b[9], b[10], b[11]]),
        payload: b.get(off..end)?.to_vec(),
    })
}

/// RTP packets with their send times, in order.
pub type Timed = Vec<(Duration, Vec<u8>)>;

/// The speech in `wav` as G.711 u-law (sox's encoder, 8 kHz mono).
pub fn ulaw_of(wav: &Path, dir: &Path) -> Vec<u8> {
    let out = dir.join(format!("{}.ul", wav.file_stem().unwrap().to_string_lossy()));
    let st = Command::new("sox")
        .arg(wav)
        .args(["-r", "8000", "-c", "1", "-e", "u-law", "-t", "raw"])
        .arg(&out)
        .status()
        .expect("sox (scripts/deps)");
    assert!(st.success(), "sox u-law of {}", wav.display());
    std::fs::read(out).unwrap()
}

/// Where a stream continues: next sequence number and timestamp.
#[derive(Debug, Clone, Copy)]
pub struct Stream {
    pub ssrc: u32,
    pub seq: u16,
    pub ts: u32,
    /// Send time of the next packet.
    pub at: Duration,
}

impl Stream {
    pub fn new(ssrc: u32) -> Stream {
        Stream {
            ssrc,
            seq: fastrand::u16(..),
            ts: fastrand::u32(..),
            at: Duration::ZERO,
        }
    }

    /// PCMU (PT 0) packets of `ptime_ms` each; the first has the marker bit.
    pub fn pcmu(&mut self, ulaw: &[u8], ptime_ms: u32, out: &mut Timed) {
        let n = (8 * ptime_ms) as usize;
        for (i, chunk) in ulaw.chunks(n).enumerate() {
            let mut frame = chunk.to_vec();
            frame.resize(n, 0xff); // u-law silence
            out.push((
                self.at,
                rtp(0, i == 0, self.seq, self.ts, self.ssrc, &frame),
            ));
            self.seq = self.seq.wrapping_add(1);
            self.ts = self.ts.wrapping_add(n as u32);
            self.at += Duration::from_millis(u64::from(ptime_ms));
        }
    }

    /// u-law silence for `ms`.
    pub fn silence(&mut self, ms: u32, ptime_ms: u32, out: &mut Timed) {
        self.pcmu(&vec![0xff; (8 * ms) as usize], ptime_ms, out);
    }

    /// One RFC 4733 event (`event` 0-15 for 0-9 * # A-D) on payload type
    /// `pt` lasting `ms`: updates every 20 ms, the end packet three times,
    /// all with the event's start timestamp (RFC 4733 2.5). Audio packets
    /// stop meanwhile, and the stream's timestamp moves past the event.
    pub fn event(&mut self, pt: u8, event: u8, ms: u32, out: &mut Timed) {
        let start = self.ts;
        let steps = ms / 20;
        for i in 1..=steps {
            let end = i == steps;
            let dur = (i * 160) as u16;
            let payload = [
                event,
                if end { 0x80 } else { 0 } | 10,
                (dur >> 8) as u8,
                dur as u8,
            ];
            let copies = if end { 3 } else { 1 };
            for _ in 0..copies {
                out.push((
                    self.at,
                    rtp(pt, i == 1, self.seq, start, self.ssrc, &payload),
                ));
                self.seq = self.seq.wrapping_add(1);
            }
            self.at += Duration::from_millis(20);
        }
        self.ts = self.ts.wrapping_add(steps * 160);
    }
}

/// Write `packets` as a pcap (Ethernet, IPv4, UDP 127.0.0.1:40000 ->
/// 127.0.0.1:40002) for sipp's `play_pcap_audio`, which keeps the
/// timing and payloads and replaces the addresses and ports.
pub fn write_pcap(path: &Path, packets: &Timed) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    // Global header: magic, v2.4, zone 0, sigfigs 0, snaplen, DLT_EN10MB.
    let mut h = Vec::new();
    h.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    h.extend_from_slice(&2u16.to_le_bytes());
    h.extend_from_slice(&4u16.to_le_bytes());
    h.extend_from_slice(&0i32.to_le_bytes());
    h.extend_from_slice(&0u32.to_le_bytes());
    h.extend_from_slice(&65_535u32.to_le_bytes());
    h.extend_from_slice(&1u32.to_le_bytes());
    f.write_all(&h).unwrap();
    let base = 1_700_000_000u64;
    for (at, payload) in packets {
        let udp_len = 8 + payload.len();
        let ip_len = 20 + udp_len;
        let mut frame = Vec::with_capacity(14 + ip_len);
        frame.extend_from_slice(&[0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 1, 0x08, 0x00]);
        let mut ip = vec![0x45, 0];
        ip.extend_from_slice(&(ip_len as u16).to_be_bytes());
        ip.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0, 127, 0, 0, 1, 127, 0, 0, 1]);
        let sum = !ip
            .chunks(2)
            .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
            .fold(0u32, |a, w| {
                let s = a + w;
                (s & 0xffff) + (s >> 16)
            }) as u16;
        ip[10..12].copy_from_slice(&sum.to_be_bytes());
        frame.extend_from_slice(&ip);
        frame.extend_from_slice(&40_000u16.to_be_bytes());
        frame.extend_from_slice(&40_002u16.to_be_bytes());
        frame.extend_from_slice(&(udp_len as u16).to_be_bytes());
        frame.extend_from_slice(&[0, 0]); // no UDP checksum (IPv4)
        frame.extend_from_slice(payload);
        let mut rec = Vec::with_capacity(16);
        rec.extend_from_slice(&((base + at.as_secs()) as u32).to_le_bytes());
        rec.extend_from_slice(&at.subsec_micros().to_le_bytes());
        rec.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        rec.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        f.write_all(&rec).unwrap();
        f.write_all(&frame).unwrap();
    }
    f.flush().unwrap();
}

/// A UDP socket on 127.0.0.1 served by a thread until dropped (and at most
/// a minute, whatever the test does): `serve` runs again and again with the
/// socket (its read timeout `poll`) and the list of what it keeps.
pub struct UdpThread<T> {
    pub port: u16,
    kept: Arc<Mutex<Vec<T>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl<T: Send + 'static> UdpThread<T> {
    pub fn spawn(
        poll: Duration,
        mut serve: impl FnMut(&UdpSocket, &Mutex<Vec<T>>) + Send + 'static,
    ) -> UdpThread<T> {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(poll)).unwrap();
        let port = sock.local_addr().unwrap().port();
        let kept = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (k, s) = (kept.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let t0 = Instant::now();
            while !s.load(Ordering::Relaxed) && t0.elapsed() < Duration::from_secs(60) {
                serve(&sock, &k);
            }
        });
        UdpThread {
            port,
            kept,
            stop,
            thread: Some(thread),
        }
    }

    /// What it has kept so far.
    pub fn kept(&self) -> std::sync::MutexGuard<'_, Vec<T>> {
        self.kept.lock().unwrap()
    }
}

impl<T> Drop for UdpThread<T> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
