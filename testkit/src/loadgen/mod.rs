//! The relay_load bench's load generator: many device sessions, driven by
//! one thread without a task or timer per connection.
//!
//! Each stream is what a gateway sends: its own QUIC connection (mutual TLS
//! with a device certificate of its own, ALPN `voxgate/1`: the relay keeps
//! one session per device, so the generator holds a pool of identities
//! and never runs two streams on one), the control handshake
//! (hello, welcome, `flow_open` of up flow 0 with its own SSRC) on one
//! bidirectional stream, then one RTP-over-QUIC datagram (flow id + RTP +
//! one real Opus packet) every 20 ms, for the life of the connection.
//! Only the machinery differs from `quinn`'s: the connections are
//! `quinn_proto` state machines owned by one loop, all on one UDP socket,
//! so a datagram costs no task wake-up, no lock and no channel hop. The
//! loop wakes every 1 ms slot (a timer; the socket is polled, not
//! registered), sends the datagrams of the streams in that
//! slot (each stream sits in one of 20 slots, so that the streams' packets
//! spread over the 20 ms like those of independent devices), reads what
//! the relay sent (ACKs, PINGs, stats), and fires connection timers that
//! are due, found by scanning one vector of deadlines.

use crate::sendbatch::SendBatch;
use bytes::{Bytes, BytesMut};
use quinn::udp::{RecvMeta, UdpSocketState};
use quinn_proto::{
    ClientConfig, Connection, ConnectionHandle, DatagramEvent, Dir, EcnCodepoint, Endpoint,
    EndpointConfig, Event, StreamEvent, StreamId,
};
use std::io::IoSliceMut;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use voxgate::media::sender::RtpSender;
use voxgate::proto::control::{Direction, FlowOpen, Hello, Message};

mod control;
mod status;
use control::{read_control, write_msg};
pub use status::Status;

/// Send slots per 20 ms frame.
const SLOTS: u64 = 20;
const SLOT: Duration = Duration::from_millis(1);
/// A slot that fires later than this is counted as late.
const LATE: Duration = Duration::from_millis(2);
const RX_BATCH: usize = 32;
const RX_SLOT: usize = 1500;
const DEVICE_CAPS: [&str; 2] = ["opus", "fec"];

/// Counters the bench reads at any time.
#[derive(Debug, Default)]
pub struct Counters {
    /// Datagrams handed to quinn-proto without error.
    pub handed: AtomicU64,
    /// Datagrams quinn-proto refused.
    pub refused: AtomicU64,
    /// Slots run, slots run more than 2 ms late, and the worst lateness (µs).
    pub ticks: AtomicU64,
    pub late_ticks: AtomicU64,
    pub max_late_us: AtomicU64,
    /// UDP packets the socket would not take (dropped by the generator).
    pub send_drops: AtomicU64,
    /// Whether the generator thread runs at SCHED_FIFO.
    pub fifo: std::sync::atomic::AtomicBool,
}

enum Cmd {
    /// Open sessions until `n` are streaming or setting up.
    Target {
        n: usize,
        per_s: f64,
        concurrency: usize,
    },
    /// Close streaming sessions until `n` are left.
    Shrink(usize),
    /// Stop (`true`) or resume handing datagrams to quinn; connections
    /// stay up and are driven as before.
    Pause(bool),
    Status(oneshot::Sender<Status>),
    Stop,
}

/// Handle of the generator thread.
pub struct Generator {
    cmd: mpsc::UnboundedSender<Cmd>,
    pub counters: Arc<Counters>,
    pub local_port: u16,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Generator {
    /// Starts the generator thread (it inherits this thread's CPU affinity).
    /// `identities`: a device id and its client config for each stream
    /// that may run at once (more streams than identities are not opened).
    pub fn start(
        relay: SocketAddr,
        server_name: &str,
        identities: Vec<(String, ClientConfig)>,
        packets: Arc<Vec<Vec<u8>>>,
    ) -> std::io::Result<Generator> {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0")?;
        let local_port = sock.local_addr()?.port();
        let (tx, rx) = mpsc::unbounded_channel();
        let counters = Arc::new(Counters::default());
        let c = counters.clone();
        let name = server_name.to_string();
        let thread = std::thread::Builder::new()
            .name("loadgen".into())
            .spawn(move || {
                // A load generator must not be the one that runs late:
                // SCHED_FIFO (root) keeps other processes on its CPU from
                // delaying its 1 ms slots by a time slice. Refused, it runs
                // at the normal policy and its late slots are counted.
                let fifo = matches!(
                    voxgate::privilege::realtime::promote_current_thread("loadgen", 10),
                    voxgate::privilege::realtime::Promotion::Fifo(_)
                );
                c.fifo.store(fifo, Relaxed);
                let mut g =
                    Gen::new(sock, relay, name, identities, packets, c).expect("generator socket");
                g.run(rx);
            })?;
        Ok(Generator {
            cmd: tx,
            counters,
            local_port,
            thread: Some(thread),
        })
    }

    pub fn target(&self, n: usize, per_s: f64, concurrency: usize) {
        let _ = self.cmd.send(Cmd::Target {
            n,
            per_s,
            concurrency,
        });
    }

    pub fn shrink(&self, n: usize) {
        let _ = self.cmd.send(Cmd::Shrink(n));
    }

    /// Pauses (or resumes) the media: no datagram is handed to quinn while
    /// paused, so that what is in flight can arrive (the bench reads the
    /// relay's count with nothing queued in front of it).
    pub fn pause(&self, paused: bool) {
        let _ = self.cmd.send(Cmd::Pause(paused));
    }

    pub async fn status(&self) -> Status {
        let (tx, rx) = oneshot::channel();
        if self.cmd.send(Cmd::Status(tx)).is_err() {
            return Status::default();
        }
        tokio::time::timeout(Duration::from_secs(5), rx)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default()
    }

    /// Closes every session and stops the thread (bounded).
    pub fn stop(mut self) {
        let _ = self.cmd.send(Cmd::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[derive(PartialEq)]
enum Phase {
    Handshake,
    AwaitWelcome,
    Streaming,
    Closing,
}

struct Dev {
    conn: Connection,
    /// Its identity in the pool.
    identity: usize,
    phase: Phase,
    ctrl: Option<StreamId>,
    rx: Vec<u8>,
    rtp: RtpSender,
    ssrc: u32,
    pos: usize,
    /// Datagrams handed to quinn on this connection.
    handed: u64,
}

struct Gen {
    /// Non-blocking and registered with no poller: the relay's packets are
    /// read once a slot, and their arrival wakes nobody (a registered socket
    /// would have the kernel wake this thread, from the relay's CPU, for
    /// every ACK on loopback). Connected to the relay: every packet goes
    /// there, in one `sendmmsg` per pass ([`SendBatch`]).
    sock: std::net::UdpSocket,
    /// `None` with `$VOXGATE_LOADGEN_SENDMSG=1`: the socket is not
    /// connected and each packet leaves in a `sendmsg` of its own (the
    /// generator before batching, to compare the two).
    out: Option<SendBatch>,
    state: UdpSocketState,
    endpoint: Endpoint,
    relay: SocketAddr,
    server_name: String,
    identities: Vec<(String, ClientConfig)>,
    /// Identities no connection holds.
    free: Vec<usize>,
    packets: Arc<Vec<Vec<u8>>>,
    counters: Arc<Counters>,
    /// Connections by `ConnectionHandle.0`.
    devs: Vec<Option<Dev>>,
    /// Each connection's next timer, by the same index.
    deadlines: Vec<Option<Instant>>,
    /// Streaming sessions per send slot.
    slots: Vec<Vec<usize>>,
    dirty: Vec<usize>,
    target: usize,
    per_s: f64,
    concurrency: usize,
    failed: usize,
    first_error: Option<String>,
    /// Datagram frames sent by connections that are gone.
    tx_closed: u64,
    tx_buf: Vec<u8>,
    /// Receive buffers: `RX_BATCH` slots of `rx_stride` bytes (GRO batches).
    rx_bufs: Vec<u8>,
    rx_stride: usize,
    resp: Vec<u8>,
    frame: [u8; 1500],
    last_connect: Instant,
    /// No datagrams are handed while set ([`Generator::pause`]).
    paused: bool,
}

impl Gen {
    fn new(
        sock: std::net::UdpSocket,
        relay: SocketAddr,
        server_name: String,
        identities: Vec<(String, ClientConfig)>,
        packets: Arc<Vec<Vec<u8>>>,
        counters: Arc<Counters>,
    ) -> std::io::Result<Gen> {
        sock.set_nonblocking(true)?;
        let batched = std::env::var("VOXGATE_LOADGEN_SENDMSG").map_or(true, |v| v != "1");
        if batched {
            sock.connect(relay)?;
        }
        let state = UdpSocketState::new((&sock).into())?;
        // Room for the relay's ACKs of a few thousand connections.
        let _ = state.set_recv_buffer_size((&sock).into(), 4 << 20);
        let _ = state.set_send_buffer_size((&sock).into(), 4 << 20);
        let gro = state.gro_segments();
        Ok(Gen {
            sock,
            out: batched.then(SendBatch::new),
            state,
            endpoint: Endpoint::new(Arc::new(EndpointConfig::default()), None, true, None),
            relay,
            server_name,
            free: (0..identities.len()).rev().collect(),
            identities,
            packets,
            counters,
            devs: Vec::new(),
            deadlines: Vec::new(),
            rx_bufs: vec![0; RX_BATCH * RX_SLOT * gro],
            rx_stride: RX_SLOT * gro,
            resp: Vec::new(),
            slots: vec![Vec::new(); SLOTS as usize],
            dirty: Vec::new(),
            target: 0,
            per_s: 1.0,
            concurrency: 1,
            failed: 0,
            first_error: None,
            tx_closed: 0,
            tx_buf: Vec::with_capacity(1500),
            frame: [0; 1500],
            last_connect: Instant::now(),
            paused: false,
        })
    }

    fn run(&mut self, mut rx: mpsc::UnboundedReceiver<Cmd>) {
        let start = Instant::now();
        let mut slot_n: u64 = 0;
        let mut stopping: Option<Instant> = None;
        loop {
            // One wake-up per 1 ms slot: what arrived since the last one
            // waits in the socket buffer (4 MiB) until then. A plain
            // `nanosleep` (no timer wheel rounding up to the next
            // millisecond; a real-time thread has no timer slack).
            let next_slot = start + SLOT * slot_n as u32;
            if let Some(d) = next_slot.checked_duration_since(Instant::now()) {
                std::thread::sleep(d);
            }
            while let Ok(cmd) = rx.try_recv() {
                match cmd {
                    Cmd::Target {
                        n,
                        per_s,
                        concurrency,
                    } => {
                        self.target = n;
                        self.per_s = per_s;
                        self.concurrency = concurrency;
                    }
                    Cmd::Shrink(n) => self.shrink(n),
                    Cmd::Pause(p) => self.paused = p,
                    Cmd::Status(tx) => {
                        let _ = tx.send(self.status());
                    }
                    Cmd::Stop => {
                        self.target = 0;
                        self.shrink(0);
                        stopping.get_or_insert(Instant::now());
                    }
                }
            }
            if rx.is_closed() {
                stopping.get_or_insert(Instant::now());
            }
            self.receive();
            let now = Instant::now();
            // Send slots that are due (a late one is counted, then caught up).
            while now >= start + SLOT * slot_n as u32 {
                let due = start + SLOT * slot_n as u32;
                let late = now.saturating_duration_since(due);
                let c = &self.counters;
                c.ticks.fetch_add(1, Relaxed);
                c.max_late_us.fetch_max(late.as_micros() as u64, Relaxed);
                if late > LATE {
                    c.late_ticks.fetch_add(1, Relaxed);
                }
                self.send_slot((slot_n % SLOTS) as usize);
                slot_n += 1;
            }
            // Timers that are due (one dense vector, scanned once a slot).
            for (i, t) in self.deadlines.iter().enumerate() {
                if t.is_some_and(|t| t <= now)
                    && let Some(Some(d)) = self.devs.get_mut(i)
                {
                    d.conn.handle_timeout(now);
                    self.dirty.push(i);
                }
            }
            self.connect_more(now);
            self.flush(now);
            if let Some(t) = stopping
                && (self.devs.iter().all(Option::is_none) || t.elapsed() > Duration::from_secs(3))
            {
                return;
            }
        }
    }

    fn send_slot(&mut self, slot: usize) {
        if self.paused {
            return;
        }
        let mut list = std::mem::take(&mut self.slots[slot]);
        list.retain(|&i| {
            let Some(d) = self.devs.get_mut(i).and_then(Option::as_mut) else {
                return false;
            };
            if d.phase != Phase::Streaming {
                return false;
            }
            let p = &self.packets[d.pos % self.packets.len()];
            d.pos += 1;
            if let Some(len) = d.rtp.frame(p, 960, &mut self.frame) {
                match d
                    .conn
                    .datagrams()
                    .send(Bytes::copy_from_slice(&self.frame[..len]), true)
                {
                    Ok(()) => {
                        d.handed += 1;
                        self.counters.handed.fetch_add(1, Relaxed)
                    }
                    Err(_) => self.counters.refused.fetch_add(1, Relaxed),
                };
                self.dirty.push(i);
            }
            true
        });
        self.slots[slot] = list;
    }

    fn connect_more(&mut self, now: Instant) {
        let (mut live, mut setting_up) = (0, 0);
        for d in self.devs.iter().flatten() {
            match d.phase {
                Phase::Handshake | Phase::AwaitWelcome => setting_up += 1,
                Phase::Streaming => {}
                Phase::Closing => continue,
            }
            live += 1;
        }
        let gap = Duration::from_secs_f64(1.0 / self.per_s.max(1.0));
        if live >= self.target
            || setting_up >= self.concurrency
            || now.duration_since(self.last_connect) < gap
        {
            return;
        }
        let Some(identity) = self.free.pop() else {
            return;
        };
        self.last_connect = now;
        match self.endpoint.connect(
            now,
            self.identities[identity].1.clone(),
            self.relay,
            &self.server_name,
        ) {
            Ok((ch, conn)) => {
                let ssrc = fastrand::u32(..);
                if self.devs.len() <= ch.0 {
                    self.devs.resize_with(ch.0 + 1, || None);
                    self.deadlines.resize(ch.0 + 1, None);
                }
                self.devs[ch.0] = Some(Dev {
                    conn,
                    identity,
                    phase: Phase::Handshake,
                    ctrl: None,
                    rx: Vec::new(),
                    rtp: RtpSender::new(0, 111, ssrc, fastrand::u16(..), fastrand::u32(..)),
                    ssrc,
                    pos: fastrand::usize(..1000),
                    handed: 0,
                });
                self.dirty.push(ch.0);
            }
            Err(e) => {
                self.free.push(identity);
                self.fail(format!("connect: {e}"))
            }
        }
    }

    fn fail(&mut self, why: String) {
        self.failed += 1;
        self.first_error.get_or_insert(why);
    }

    fn shrink(&mut self, n: usize) {
        let now = Instant::now();
        let mut kept = 0;
        for i in 0..self.devs.len() {
            let Some(d) = &mut self.devs[i] else { continue };
            if d.phase == Phase::Closing {
                continue;
            }
            if kept < n && d.phase == Phase::Streaming {
                kept += 1;
                continue;
            }
            d.conn
                .close(now, 0u32.into(), Bytes::from_static(b"fewer streams"));
            d.phase = Phase::Closing;
            self.dirty.push(i);
        }
        self.target = self.target.min(n);
    }

    fn status(&self) -> Status {
        let mut s = Status {
            failed: self.failed,
            first_error: self.first_error.clone(),
            datagrams_tx: self.tx_closed,
            ..Status::default()
        };
        for d in self.devs.iter().flatten() {
            match d.phase {
                Phase::Streaming => s.streaming += 1,
                Phase::Handshake | Phase::AwaitWelcome => s.setting_up += 1,
                Phase::Closing => {}
            }
            s.add(&d.conn, d.handed, d.phase == Phase::Streaming);
        }
        s
    }

    /// Reads every datagram waiting on the socket into the endpoint.
    fn receive(&mut self) {
        let mut meta = [RecvMeta::default(); RX_BATCH];
        loop {
            let mut slices: Vec<IoSliceMut<'_>> = self
                .rx_bufs
                .chunks_mut(self.rx_stride)
                .map(IoSliceMut::new)
                .collect();
            let n = match self.state.recv((&self.sock).into(), &mut slices, &mut meta) {
                Ok(n) => n,
                Err(_) => return, // WouldBlock: read again next slot
            };
            drop(slices);
            let now = Instant::now();
            for (k, m) in meta.iter().enumerate().take(n) {
                let at = k * self.rx_stride;
                let stride = m.stride.max(1);
                let mut off = 0;
                while off < m.len {
                    let end = (off + stride).min(m.len);
                    let seg = BytesMut::from(&self.rx_bufs[at + off..at + end]);
                    off = end;
                    let ecn = m.ecn.and_then(|e| EcnCodepoint::from_bits(e as u8));
                    self.resp.clear();
                    match self
                        .endpoint
                        .handle(now, m.addr, m.dst_ip, ecn, seg, &mut self.resp)
                    {
                        Some(DatagramEvent::ConnectionEvent(ch, ev)) => {
                            if let Some(Some(d)) = self.devs.get_mut(ch.0) {
                                d.conn.handle_event(ev);
                                self.dirty.push(ch.0);
                            }
                        }
                        Some(DatagramEvent::Response(t)) => {
                            let buf = std::mem::take(&mut self.resp);
                            self.send_raw(&t, &buf);
                            self.resp = buf;
                        }
                        Some(DatagramEvent::NewConnection(_)) | None => {}
                    }
                }
            }
        }
    }

    /// Queues a packet for the relay; [`Gen::flush`] sends the pass's
    /// packets together. quinn-proto's ECN mark is not applied (the
    /// socket sets no `IP_TOS`); it stops marking when no ACK echoes it.
    fn send_raw(&mut self, t: &quinn_proto::Transmit, buf: &[u8]) {
        debug_assert_eq!(t.destination, self.relay);
        let Some(out) = &mut self.out else {
            let tr = quinn::udp::Transmit {
                destination: t.destination,
                ecn: t
                    .ecn
                    .and_then(|e| quinn::udp::EcnCodepoint::from_bits(e as u8)),
                contents: &buf[..t.size],
                segment_size: t.segment_size,
                src_ip: t.src_ip,
            };
            if self.state.try_send((&self.sock).into(), &tr).is_err() {
                self.counters.send_drops.fetch_add(1, Relaxed);
            }
            return;
        };
        match t.segment_size {
            Some(seg) => buf[..t.size].chunks(seg).for_each(|p| out.push(p)),
            None => out.push(&buf[..t.size]),
        }
    }

    /// Drives every connection touched since the last flush: endpoint
    /// events, application events, transmits, next deadline.
    fn flush(&mut self, now: Instant) {
        let mut dirty = std::mem::take(&mut self.dirty);
        dirty.sort_unstable();
        dirty.dedup();
        for &i in &dirty {
            self.drive(i, now);
        }
        let refused = self.out.as_mut().map_or(0, |o| o.flush(&self.sock).1);
        if refused > 0 {
            self.counters.send_drops.fetch_add(refused as u64, Relaxed);
        }
        dirty.clear();
        if self.dirty.is_empty() {
            self.dirty = dirty;
        }
    }

    fn drive(&mut self, i: usize, now: Instant) {
        let max_segments = self.state.max_gso_segments();
        let Some(mut d) = self.devs.get_mut(i).and_then(Option::take) else {
            return;
        };
        let ch = ConnectionHandle(i);
        while let Some(ev) = d.conn.poll_endpoint_events() {
            if let Some(back) = self.endpoint.handle_event(ch, ev) {
                d.conn.handle_event(back);
            }
        }
        let mut streaming_now = false;
        while let Some(ev) = d.conn.poll() {
            match ev {
                Event::Connected => {
                    let Some(id) = d.conn.streams().open(Dir::Bi) else {
                        self.fail("no control stream".into());
                        d.conn
                            .close(now, 1u32.into(), Bytes::from_static(b"no stream"));
                        d.phase = Phase::Closing;
                        continue;
                    };
                    d.ctrl = Some(id);
                    let mut caps = serde_json_core::heapless::Vec::new();
                    for c in DEVICE_CAPS {
                        let _ = caps.push(c);
                    }
                    let hello = Message::Hello(Hello {
                        device: &self.identities[d.identity].0,
                        version: crate::VERSION,
                        caps,
                    });
                    let written = write_msg(&mut d.conn, id, &hello);
                    drop(hello);
                    if let Err(e) = written {
                        self.fail(e);
                        d.phase = Phase::Closing;
                        continue;
                    }
                    d.phase = Phase::AwaitWelcome;
                }
                Event::Stream(StreamEvent::Readable { id }) if Some(id) == d.ctrl => {
                    match read_control(&mut d, id) {
                        Ok(true) if d.phase == Phase::AwaitWelcome => {
                            let open = Message::FlowOpen(FlowOpen {
                                flow: 0,
                                dir: Direction::Up,
                                ssrc: d.ssrc,
                                codec: "opus",
                                frame_ms: 20,
                            });
                            match write_msg(&mut d.conn, id, &open) {
                                Ok(()) => {
                                    d.phase = Phase::Streaming;
                                    streaming_now = true;
                                }
                                Err(e) => {
                                    self.fail(e);
                                    d.conn.close(now, 1u32.into(), Bytes::new());
                                    d.phase = Phase::Closing;
                                }
                            }
                        }
                        Ok(_) => {}
                        Err(e) => {
                            if d.phase != Phase::Streaming {
                                self.fail(e);
                            }
                            d.conn.close(now, 1u32.into(), Bytes::new());
                            d.phase = Phase::Closing;
                        }
                    }
                }
                Event::ConnectionLost { reason } => {
                    if matches!(d.phase, Phase::Handshake | Phase::AwaitWelcome) {
                        self.fail(format!("connection lost: {reason}"));
                    }
                    d.phase = Phase::Closing;
                }
                _ => {}
            }
        }
        if streaming_now {
            self.slots[i % SLOTS as usize].push(i);
        }
        loop {
            self.tx_buf.clear();
            let Some(t) = d.conn.poll_transmit(now, max_segments, &mut self.tx_buf) else {
                break;
            };
            let buf = std::mem::take(&mut self.tx_buf);
            self.send_raw(&t, &buf);
            self.tx_buf = buf;
        }
        self.deadlines[i] = d.conn.poll_timeout();
        if d.conn.is_drained() {
            self.deadlines[i] = None;
            self.free.push(d.identity);
            self.tx_closed += d.conn.stats().frame_tx.datagram;
            while let Some(ev) = d.conn.poll_endpoint_events() {
                let _ = self.endpoint.handle_event(ch, ev);
            }
            return; // dropped: the slot lists skip it
        }
        self.devs[i] = Some(d);
    }
}
