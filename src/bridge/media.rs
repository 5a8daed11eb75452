//! Call media: one task (the media engine) drives the [`PhoneLeg`] of every
//! answered call from a shared 10 ms clock, between the phones' RTP sockets
//! and the relay connection.
//!
//! Each clock tick, for every leg whose packet-time tick is due (a leg's tick
//! is the greatest common divisor of the phone's packet time and the Opus
//! frame: 10, 20, 40 or 60 ms; legs with a 20 ms tick are spread over the
//! two 10 ms phases), the engine
//!
//! 1. drains the leg's RTP socket (non-blocking `recvmsg`; the kernel's
//!    receive timestamp, `SO_TIMESTAMPNS`, is the packet's arrival time for
//!    the jitter buffer and the latency histogram, so reading late does not
//!    change what the jitter buffer sees; an Opus phone's packets, forwarded
//!    without transcoding, are read on every 10 ms tick);
//! 2. polls the uplink (one Opus frame → `send_datagram`) and the downlink
//!    (one phone packet → `send_to`).
//!
//! Relay datagrams of every call arrive on one channel (stamped with their
//! arrival time by the connection's datagram reader) and are handed to
//! their legs at the start of each tick. Nothing wakes per packet: one task
//! wake-up per 10 ms serves every call, the sockets are never registered with
//! the reactor, and the uplink datagrams of one tick reach quinn together, so
//! it packs several into each QUIC packet.
//!
//! Symmetric RTP, but only with the phone: a leg takes RTP only from the
//! addresses the switchboard vouches for ([`CallMedia::sources`]: the
//! phone's signalling address and its SDP `c=` address, each only inside
//! the SIP allowlist). Packets go to the SDP address until the first valid
//! packet from one of those arrives, then to that packet's source (so a
//! phone behind a LAN NAT works), and from then on packets from any other
//! address are dropped. Another host on the LAN that sprays the RTP ports
//! is never latched to: it neither hears the call nor speaks in it. What
//! queued on the leg's sockets before its media started (between the
//! INVITE and the answer) is discarded at start.

use crate::bridge::metrics::BridgeMetrics;
use crate::media::dtmf::KeyPress;
use crate::media::flow;
use crate::media::jitter::Push;
use crate::media::leg::{FromPhone, LegStats, PhoneLeg};
use crate::media::ports::PortPair;
use crate::transport::link::ConnSlot;
use bytes::{Bytes, BytesMut};
use std::collections::HashMap;
use std::io::IoSliceMut;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::mpsc;
use tracing::debug;

/// The engine's clock: every leg's tick is a multiple of it.
pub const BASE_TICK: Duration = Duration::from_millis(10);
/// A clock that fell further behind than this skips the missed ticks
/// instead of running them back to back.
const MAX_LAG: Duration = Duration::from_millis(100);
/// A receive timestamp older than this is taken for a step of the wall
/// clock (NTP setting the time at boot on a board without a real-time
/// clock), not a late read: the packet counts as arriving now.
const MAX_ARRIVAL_AGE: Duration = Duration::from_millis(500);
/// Datagrams read from one phone socket per leg tick (more wait for the next).
const MAX_READS: usize = 32;
/// Relay datagrams waiting for the engine (all calls).
pub const RELAY_QUEUE: usize = 64 * super::MAX_CALLS;

pub use super::switchboard::MediaCmd;

/// What the bridge tells the engine.
#[derive(Debug)]
pub enum EngineCmd {
    /// Start a call's media.
    Start(Box<CallMedia>),
    /// A command for a running call.
    Call(u32, MediaCmd),
    /// Stop a call's media; its port pair comes back as [`MediaEvent::Done`].
    Stop(u32),
}

/// What the engine reports to the bridge.
#[derive(Debug)]
pub enum MediaEvent {
    /// The phone pressed a key.
    Key(u32, KeyPress),
    /// The call's media stopped; the port pair goes back to the pool.
    Done(u32, PortPair),
}

/// Everything one call's media owns.
#[derive(Debug)]
pub struct CallMedia {
    /// The bridge's call id.
    pub call: u32,
    /// The call leg.
    pub leg: PhoneLeg,
    /// The leased RTP/RTCP pair.
    pub pair: PortPair,
    /// Where the phone said to send (SDP); replaced by the first packet's source.
    pub remote: Option<SocketAddr>,
    /// The only addresses RTP is taken from (and latched to).
    pub sources: Vec<IpAddr>,
    /// The flow the relay sends this call's audio on.
    pub relay_flow: Option<u64>,
}

/// Whether a leg takes a datagram from `src`: once latched only from the
/// latched address, before that from any port of an address it vouches for.
fn accepts(latched: bool, remote: Option<SocketAddr>, sources: &[IpAddr], src: SocketAddr) -> bool {
    match latched {
        true => remote == Some(src),
        false => sources.contains(&src.ip().to_canonical()) || sources.contains(&src.ip()),
    }
}

/// Arrival times of the last phone packets, by sequence number, for the
/// phone-to-QUIC latency histogram.
const ARRIVALS: usize = 64;

struct Leg {
    m: CallMedia,
    latched: bool,
    held: bool,
    /// The leg ticks every `every` engine ticks, on those where
    /// `(tick + phase) % every == 0`.
    every: u64,
    phase: u64,
    /// The leg forwards the phone's Opus (read on every engine tick).
    forwards: bool,
    arrivals: Box<[(u16, Duration); ARRIVALS]>,
    seen: LegStats,
}

/// Counters of one engine tick, added to the gateway's metrics once.
#[derive(Default)]
struct Tally {
    rtp_in: u64,
    up_sent: u64,
    relay_in: u64,
    rtp_out: u64,
    dtmf_sent: u64,
    keys: u64,
    up_concealed: u64,
    down_concealed: u64,
    rtp_refused: u64,
}

impl Tally {
    fn flush(&mut self, m: &BridgeMetrics) {
        for (n, c) in [
            (self.rtp_in, &m.phone_rtp_in),
            (self.up_sent, &m.phone_up_sent),
            (self.relay_in, &m.phone_relay_in),
            (self.rtp_out, &m.phone_rtp_out),
            (self.dtmf_sent, &m.phone_dtmf_sent),
            (self.keys, &m.phone_keys_received),
            (self.up_concealed, &m.phone_up_concealed),
            (self.down_concealed, &m.phone_down_concealed),
            (self.rtp_refused, &m.phone_rtp_refused),
        ] {
            if n > 0 {
                c.add(n);
            }
        }
        *self = Tally::default();
    }
}

/// Uplink datagrams carved out of one shared allocation (quinn takes
/// `Bytes`): one allocation per many datagrams instead of one each.
struct Carver(BytesMut);

impl Carver {
    fn bytes(&mut self, b: &[u8]) -> Bytes {
        if self.0.capacity() < b.len() {
            self.0 = BytesMut::with_capacity(32 * 1024);
        }
        self.0.extend_from_slice(b);
        self.0.split().freeze()
    }
}

/// One datagram read from a phone socket.
struct Received {
    len: usize,
    src: SocketAddr,
    /// The kernel's receive time (`SO_TIMESTAMPNS`), wall clock.
    at: Option<SystemTime>,
}

/// Read one datagram without blocking; `None` when the socket is empty or failed.
fn recv(sock: &UdpSocket, buf: &mut [u8], cmsg: &mut [u8]) -> Option<Received> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, SockaddrStorage, recvmsg};
    let mut iov = [IoSliceMut::new(buf)];
    let r = recvmsg::<SockaddrStorage>(
        sock.as_raw_fd(),
        &mut iov,
        Some(cmsg),
        MsgFlags::MSG_DONTWAIT,
    )
    .ok()?;
    let src = r.address.and_then(|a| {
        a.as_sockaddr_in()
            .map(|s| SocketAddr::from((s.ip(), s.port())))
            .or_else(|| {
                a.as_sockaddr_in6()
                    .map(|s| SocketAddr::from((s.ip(), s.port())))
            })
    })?;
    let at = r.cmsgs().ok().and_then(|mut it| {
        it.find_map(|c| match c {
            ControlMessageOwned::ScmTimestampns(ts) => {
                let d = Duration::new(ts.tv_sec().try_into().ok()?, ts.tv_nsec().try_into().ok()?);
                SystemTime::UNIX_EPOCH.checked_add(d)
            }
            _ => None,
        })
    });
    Some(Received {
        len: r.bytes,
        src,
        at,
    })
}

/// The media engine (see the module docs).
pub struct Engine {
    /// Commands from the bridge.
    pub cmds: mpsc::UnboundedReceiver<EngineCmd>,
    /// Reports to the bridge.
    pub events: mpsc::Sender<MediaEvent>,
    /// The relay connection.
    pub slot: Arc<ConnSlot>,
    /// The gateway's counters (phone RTP, relay datagrams, concealment, latency).
    pub metrics: Arc<BridgeMetrics>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").finish_non_exhaustive()
    }
}

/// The engine's state between ticks.
struct State {
    origin: Instant,
    legs: HashMap<u32, Leg>,
    by_flow: HashMap<u64, u32>,
    /// Port pairs of stopped calls not yet handed back (the event queue was full).
    done: Vec<(u32, PortPair)>,
    started: u64,
    conn: Option<quinn::Connection>,
    conn_gen: u64,
    buf: Box<[u8; 2048]>,
    out: Box<[u8; 1500]>,
    cmsg: Vec<u8>,
    carver: Carver,
    tally: Tally,
    from_relay: mpsc::Receiver<(Instant, Bytes)>,
}

impl Engine {
    /// Run until the bridge drops its command sender.
    pub async fn run(mut self, from_relay: mpsc::Receiver<(Instant, Bytes)>) {
        let mut st = State {
            from_relay,
            origin: Instant::now(),
            legs: HashMap::new(),
            by_flow: HashMap::new(),
            done: Vec::new(),
            started: 0,
            conn: None,
            conn_gen: 0,
            buf: Box::new([0; 2048]),
            out: Box::new([0; 1500]),
            cmsg: nix::cmsg_space!(nix::sys::time::TimeSpec),
            carver: Carver(BytesMut::new()),
            tally: Tally::default(),
        };
        let mut tick: u64 = 0;
        let mut next = tokio::time::Instant::now() + BASE_TICK;
        loop {
            let busy = !st.legs.is_empty() || !st.done.is_empty();
            tokio::select! {
                biased;
                c = self.cmds.recv() => {
                    let Some(c) = c else { break };
                    if !busy {
                        // The clock starts with the first call.
                        next = tokio::time::Instant::now() + BASE_TICK;
                    }
                    self.command(&mut st, c);
                }
                () = tokio::time::sleep_until(next), if busy => {
                    self.tick(&mut st, tick);
                    tick += 1;
                    next += BASE_TICK;
                    let now = tokio::time::Instant::now();
                    if now > next + MAX_LAG {
                        next = now + BASE_TICK;
                    }
                }
            }
            while let Some((c, pair)) = st.done.pop() {
                match self.events.try_send(MediaEvent::Done(c, pair)) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(MediaEvent::Done(c, pair))) => {
                        st.done.push((c, pair));
                        break;
                    }
                    // The bridge is gone: the pairs go with it.
                    Err(_) => break,
                }
            }
        }
    }

    fn command(&self, st: &mut State, c: EngineCmd) {
        match c {
            EngineCmd::Start(m) => {
                // Whatever reached the ports between the INVITE and the
                // answer is not the phone's call audio.
                let stale = m.pair.drain();
                if stale > 0 {
                    debug!(
                        call = m.call,
                        stale, "datagrams queued before the call's media started discarded"
                    );
                }
                let every = (m.leg.tick().as_millis() / BASE_TICK.as_millis()).max(1) as u64;
                let phase = st.started % every;
                st.started += 1;
                if let Some(f) = m.relay_flow {
                    st.by_flow.insert(f, m.call);
                }
                let seen = m.leg.stats();
                let forwards = m.leg.forwards();
                let call = m.call;
                let old = st.legs.insert(
                    call,
                    Leg {
                        m: *m,
                        latched: false,
                        held: false,
                        every,
                        phase,
                        forwards,
                        arrivals: Box::new([(0, Duration::ZERO); ARRIVALS]),
                        seen,
                    },
                );
                if let Some(old) = old {
                    st.done.push((call, old.m.pair));
                }
            }
            EngineCmd::Call(c, cmd) => {
                let Some(l) = st.legs.get_mut(&c) else { return };
                match cmd {
                    MediaCmd::Digit(d, ms) => {
                        l.m.leg.send_digit(d, ms);
                    }
                    MediaCmd::Hold(h) => l.held = h,
                    MediaCmd::Remote(to) => {
                        if l.m.remote != Some(to) {
                            l.m.remote = Some(to);
                            l.latched = false;
                            if !l.m.sources.contains(&to.ip()) {
                                l.m.sources.push(to.ip());
                            }
                        }
                    }
                }
            }
            EngineCmd::Stop(c) => {
                if let Some(l) = st.legs.remove(&c) {
                    if let Some(f) = l.m.relay_flow
                        && st.by_flow.get(&f) == Some(&c)
                    {
                        st.by_flow.remove(&f);
                    }
                    st.done.push((c, l.m.pair));
                }
            }
        }
    }

    fn tick(&self, st: &mut State, tick: u64) {
        if let Some(c) = self.slot.current_if_changed(&mut st.conn_gen) {
            st.conn = c;
        }
        let origin = st.origin;
        let now = origin.elapsed();
        let wall = SystemTime::now();
        let m = &*self.metrics;
        let State {
            legs,
            by_flow,
            conn,
            buf,
            out,
            cmsg,
            carver,
            tally,
            from_relay,
            ..
        } = st;
        // Relay audio first: it is played out below in the same tick.
        while let Ok((at, d)) = from_relay.try_recv() {
            tally.relay_in += 1;
            if let Ok((f, pkt)) = flow::decode(&d)
                && let Some(c) = by_flow.get(&f)
                && let Some(l) = legs.get_mut(c)
            {
                l.m.leg
                    .push_relay(at.saturating_duration_since(origin), &pkt);
            }
        }
        for l in legs.values_mut() {
            let due = (tick + l.phase).is_multiple_of(l.every);
            // Forwarded Opus is read every engine tick: it waits for no clock.
            if !due && !l.forwards {
                continue;
            }
            // The phone's packets since the last tick, at their arrival times.
            for _ in 0..MAX_READS {
                let Some(r) = recv(&l.m.pair.rtp, &mut buf[..], cmsg) else {
                    break;
                };
                if !accepts(l.latched, l.m.remote, &l.m.sources, r.src) {
                    tally.rtp_refused += 1;
                    continue;
                }
                let age =
                    r.at.and_then(|t| wall.duration_since(t).ok())
                        .filter(|a| *a <= MAX_ARRIVAL_AGE)
                        .unwrap_or(Duration::ZERO);
                let arrived = now.saturating_sub(age);
                tally.rtp_in += 1;
                match l.m.leg.push_phone(arrived, &buf[..r.len], &mut out[..]) {
                    Ok(FromPhone::Forward(len)) => {
                        if let Some(c) = conn.as_ref()
                            && c.send_datagram(carver.bytes(&out[..len])).is_ok()
                        {
                            tally.up_sent += 1;
                            m.phone_to_send.observe_us(
                                origin.elapsed().saturating_sub(arrived).as_micros() as u64,
                            );
                        }
                    }
                    Ok(FromPhone::Buffered(Push::Accepted)) => {
                        if let Ok(p) = crate::media::rtp::Packet::new_checked(&buf[..r.len]) {
                            let seq = p.sequence();
                            l.arrivals[usize::from(seq) % ARRIVALS] = (seq, arrived);
                        }
                    }
                    Ok(FromPhone::Key(k)) => {
                        tally.keys += 1;
                        let _ = self.events.try_send(MediaEvent::Key(l.m.call, k));
                    }
                    Ok(_) => {}
                    Err(e) => {
                        debug!(call = l.m.call, error = %e, "phone packet dropped");
                        continue;
                    }
                }
                if !l.latched {
                    l.latched = true;
                    l.m.remote = Some(r.src);
                }
            }
            if !due {
                continue;
            }
            if let Some(len) = l.m.leg.poll_uplink(now, &mut out[..])
                && let Some(c) = conn.as_ref()
                && c.send_datagram(carver.bytes(&out[..len])).is_ok()
            {
                tally.up_sent += 1;
                if let Some(seq) = l.m.leg.uplink_played_seq()
                    && let (s, at) = l.arrivals[usize::from(seq) % ARRIVALS]
                    && s == seq
                {
                    m.phone_to_send
                        .observe_us(origin.elapsed().saturating_sub(at).as_micros() as u64);
                }
            }
            let dtmf_before = l.m.leg.stats().dtmf_packets;
            if let Some(len) = l.m.leg.poll_downlink(now, &mut out[..])
                && !l.held
                && let Some(to) = l.m.remote
                && l.m.pair.rtp.send_to(&out[..len], to).is_ok()
            {
                tally.rtp_out += 1;
                if l.m.leg.stats().dtmf_packets > dtmf_before {
                    tally.dtmf_sent += 1;
                }
                if let Some(at) = l.m.leg.downlink_played_arrival() {
                    m.phone_relay_to_rtp
                        .observe_us(origin.elapsed().saturating_sub(at).as_micros() as u64);
                }
            }
            let s = l.m.leg.stats();
            tally.up_concealed += s.uplink_concealed - l.seen.uplink_concealed;
            tally.down_concealed += s.downlink_lost - l.seen.downlink_lost;
            l.seen = s;
        }
        tally.flush(m);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::ports::PortPool;
    use std::net::{IpAddr, Ipv4Addr};

    fn pair() -> PortPair {
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        for _ in 0..50 {
            let first = 20_000 + 2 * fastrand::u16(0..6_000);
            if let Ok(mut p) = PortPool::bind(lo, first, first + 1) {
                return p.lease(std::time::Instant::now()).unwrap();
            }
        }
        panic!("no free port pair on loopback");
    }

    #[test]
    fn a_leg_latches_only_to_the_addresses_it_vouches_for() {
        let phone: IpAddr = "192.168.1.20".parse().unwrap();
        let sdp: SocketAddr = "192.168.1.20:4000".parse().unwrap();
        let sources = [phone];
        let from = |s: &str| s.parse::<SocketAddr>().unwrap();
        // Not latched: any port of the phone's address, nobody else.
        assert!(accepts(
            false,
            Some(sdp),
            &sources,
            from("192.168.1.20:4000")
        ));
        assert!(accepts(
            false,
            Some(sdp),
            &sources,
            from("192.168.1.20:5555")
        ));
        assert!(accepts(
            false,
            Some(sdp),
            &sources,
            from("[::ffff:192.168.1.20]:4000")
        ));
        assert!(!accepts(
            false,
            Some(sdp),
            &sources,
            from("192.168.1.66:4000")
        ));
        assert!(!accepts(false, None, &[], from("192.168.1.20:4000")));
        // Latched (to a NAT's port): that address only.
        let latched = Some(from("192.168.1.20:5555"));
        assert!(accepts(true, latched, &sources, from("192.168.1.20:5555")));
        assert!(!accepts(true, latched, &sources, from("192.168.1.20:4000")));
        assert!(!accepts(true, latched, &sources, from("192.168.1.66:5555")));
    }

    #[test]
    fn a_packet_read_late_keeps_its_kernel_arrival_time() {
        let p = pair();
        let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
        let (mut buf, mut cmsg) = ([0u8; 64], nix::cmsg_space!(nix::sys::time::TimeSpec));
        // The first SO_TIMESTAMPNS socket on a machine turns the kernel's
        // receive timestamps on from a work queue, a moment later; until
        // then a datagram is stamped when it is read. (The gateway binds its
        // pool at start-up, long before a call.) So allow a few rounds.
        let mut ages = Vec::new();
        for _ in 0..10 {
            peer.send_to(b"rtp", ("127.0.0.1", p.port())).unwrap();
            let sent = SystemTime::now();
            std::thread::sleep(Duration::from_millis(40));
            let r = recv(&p.rtp, &mut buf, &mut cmsg).expect("the datagram");
            assert_eq!(&buf[..r.len], b"rtp");
            assert_eq!(r.src, peer.local_addr().unwrap());
            let at = r.at.expect("SO_TIMESTAMPNS set by the pool");
            assert!(recv(&p.rtp, &mut buf, &mut cmsg).is_none(), "drained");
            // Read 40 ms late, but stamped when it arrived.
            let age = SystemTime::now().duration_since(at).unwrap();
            if age >= Duration::from_millis(35) {
                assert!(at.duration_since(sent).unwrap_or_default() < Duration::from_millis(20));
                return;
            }
            ages.push(age);
        }
        panic!("datagrams stamped when read, not when they arrived: ages {ages:?}");
    }
}
