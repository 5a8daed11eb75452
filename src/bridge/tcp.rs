//! SIP over TCP: the listener, one reader task per connection (framed by
//! `sip::framing`), and a writer per peer address so responses and requests
//! reuse the phone's connection (RFC 3261 18.2.2).
//!
//! Guarantees:
//! - a connection from outside the SIP allowlist, or from a banned source,
//!   is closed at accept without a byte read or written ([`Gate`]); a
//!   source banned while connected is cut off before its next bytes are
//!   framed;
//! - at most [`MAX_CONNECTIONS`] connections, at most
//!   [`MAX_PER_SOURCE`] from one source (per address; IPv6 per the
//!   guard's prefix);
//! - a new connection must bring a whole SIP message within
//!   [`FIRST_MESSAGE`] (CRLF keep-alives do not count), after that it may
//!   stay idle up to [`IDLE`];
//! - a framing error closes only that connection.

use crate::bridge::metrics::BridgeMetrics;
use crate::bridge::switchboard::Screen;
use crate::sip::Message;
use crate::sip::framing::{Frame, next_frame};
use crate::sip::guard::{Cidr, source_key};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tracing::debug;

/// Most simultaneous TCP connections.
pub const MAX_CONNECTIONS: usize = 256;
/// A connection with no traffic for this long is closed (phones re-register
/// or send CRLF keep-alives well within it).
pub const IDLE: Duration = Duration::from_secs(3600);
/// Most simultaneous connections from one source (a phone needs one).
pub const MAX_PER_SOURCE: usize = 4;
/// A new connection that has not sent a whole SIP message by then is closed.
pub const FIRST_MESSAGE: Duration = Duration::from_secs(3);

/// Who may connect: the allowlist, the bans the bridge task publishes
/// ([`Gate::publish`]) and the connections open per source.
#[derive(Debug)]
pub struct Gate {
    allow: Vec<Cidr>,
    screen: Mutex<Screen>,
    open: Mutex<HashMap<IpAddr, usize>>,
    metrics: Arc<BridgeMetrics>,
}

/// A connection's place in its source's count, given back when dropped.
#[derive(Debug)]
struct Slot {
    gate: Arc<Gate>,
    key: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut m) = self.gate.open.lock()
            && let Some(n) = m.get_mut(&self.key)
        {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.key);
            }
        }
    }
}

impl Gate {
    /// A gate admitting `allow`, nobody banned yet.
    pub fn new(allow: Vec<Cidr>, ipv6_prefix: u8, metrics: Arc<BridgeMetrics>) -> Arc<Gate> {
        Arc::new(Gate {
            allow,
            screen: Mutex::new(Screen {
                bans: Vec::new(),
                ipv6_prefix,
            }),
            open: Mutex::new(HashMap::new()),
            metrics,
        })
    }

    /// The bans in force from now on (the bridge task calls this when its
    /// switchboard's bans change).
    pub fn publish(&self, screen: Screen) {
        if let Ok(mut s) = self.screen.lock() {
            *s = screen;
        }
    }

    /// Allowed and not banned.
    fn admits(&self, ip: IpAddr) -> bool {
        self.allow.iter().any(|c| c.contains(ip))
            && self
                .screen
                .lock()
                .map(|s| !s.banned(Instant::now(), ip))
                .unwrap_or(false)
    }

    /// A slot for a new connection from `ip`, or `None` (refused, counted).
    fn enter(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        if !self.admits(ip) {
            self.metrics.sip_tcp_refused.inc();
            return None;
        }
        let key = match self.screen.lock() {
            Ok(s) => source_key(ip, s.ipv6_prefix),
            Err(_) => return None,
        };
        let mut open = self.open.lock().ok()?;
        let n = open.entry(key).or_insert(0);
        if *n >= MAX_PER_SOURCE {
            self.metrics.sip_tcp_refused.inc();
            return None;
        }
        *n += 1;
        Some(Slot {
            gate: self.clone(),
            key,
        })
    }
}

/// Writers by peer address.
#[derive(Debug, Clone, Default)]
pub struct Writers(Arc<Mutex<HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>>>);

impl Writers {
    /// Queue `bytes` on the connection to `peer`; false if there is none.
    pub fn send(&self, peer: SocketAddr, bytes: Vec<u8>) -> bool {
        let tx = self.0.lock().ok().and_then(|m| m.get(&peer).cloned());
        tx.is_some_and(|tx| tx.try_send(bytes).is_ok())
    }

    fn len(&self) -> usize {
        self.0.lock().map(|m| m.len()).unwrap_or(0)
    }
}

/// A parsed message from a TCP peer (or `None` for a framing error, to count).
pub type Inbound = (SocketAddr, Option<Box<Message>>);

/// Accept connections until the listener fails; every message goes to `to_core`.
pub async fn serve(
    listener: TcpListener,
    writers: Writers,
    to_core: mpsc::Sender<Inbound>,
    gate: Arc<Gate>,
) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        // Dropping the stream closes it: nothing read, nothing written.
        let Some(slot) = gate.enter(peer.ip()) else {
            debug!(%peer, "SIP TCP connection refused: not allowed, banned or too many from it");
            continue;
        };
        if writers.len() >= MAX_CONNECTIONS {
            gate.metrics.sip_tcp_refused.inc();
            debug!(%peer, "SIP TCP connection refused: too many connections");
            continue;
        }
        tokio::spawn(connection(
            stream,
            peer,
            writers.clone(),
            to_core.clone(),
            gate.clone(),
            Some(slot),
        ));
    }
}

/// Open a connection to `peer` (a phone registered over TCP whose connection
/// is gone) and send `bytes` on it.
pub async fn connect_and_send(
    peer: SocketAddr,
    bytes: Vec<u8>,
    writers: Writers,
    to_core: mpsc::Sender<Inbound>,
    gate: Arc<Gate>,
) {
    match tokio::time::timeout(Duration::from_secs(3), TcpStream::connect(peer)).await {
        Ok(Ok(stream)) => {
            let w = writers.clone();
            tokio::spawn(connection(stream, peer, writers, to_core, gate, None));
            // The writer is registered by the connection task; give it a moment.
            for _ in 0..20 {
                if w.send(peer, bytes.clone()) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        _ => debug!(%peer, "SIP TCP connect failed"),
    }
}

/// One connection; `slot` is an accepted connection's place in its
/// source's count (`None`: a connection we opened).
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    writers: Writers,
    to_core: mpsc::Sender<Inbound>,
    gate: Arc<Gate>,
    slot: Option<Slot>,
) {
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(64);
    if let Ok(mut m) = writers.0.lock() {
        m.insert(peer, tx.clone());
    }
    let writer = tokio::spawn(async move {
        while let Some(b) = rx.recv().await {
            if wr.write_all(&b).await.is_err() {
                break;
            }
        }
    });
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    // An accepted connection must prove itself quickly; ours may idle.
    let mut first_by = slot
        .as_ref()
        .map(|_| tokio::time::Instant::now() + FIRST_MESSAGE);
    'conn: loop {
        let limit = first_by.unwrap_or_else(|| tokio::time::Instant::now() + IDLE);
        let n = match tokio::time::timeout_at(limit, rd.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => n,
            Ok(_) => break,
            Err(_) => {
                if first_by.is_some() {
                    gate.metrics.sip_tcp_refused.inc();
                    debug!(%peer, "SIP TCP connection closed: no SIP message in time");
                }
                break;
            }
        };
        // Banned while connected: cut off before its bytes are framed.
        if !gate.admits(peer.ip()) {
            debug!(%peer, "SIP TCP connection closed: source banned");
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        loop {
            match next_frame(&buf) {
                Ok(Frame::Incomplete) => break,
                Ok(Frame::KeepAlive { used, ping }) => {
                    buf.drain(..used);
                    if ping {
                        let _ = tx.try_send(b"\r\n".to_vec());
                    }
                }
                Ok(Frame::Message { msg, used }) => {
                    buf.drain(..used);
                    first_by = None;
                    if to_core.send((peer, Some(msg))).await.is_err() {
                        break 'conn;
                    }
                }
                Err(e) => {
                    debug!(%peer, error = %e, "SIP TCP framing error; closing the connection");
                    let _ = to_core.send((peer, None)).await;
                    break 'conn;
                }
            }
        }
    }
    if let Ok(mut m) = writers.0.lock()
        && m.get(&peer).is_some_and(|t| t.same_channel(&tx))
    {
        m.remove(&peer);
    }
    drop(tx);
    writer.abort();
    drop(slot);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate() -> Arc<Gate> {
        let m = BridgeMetrics::register(&mut crate::telemetry::metrics::Registry::default());
        Gate::new(
            vec![
                Cidr::parse("192.168.1.0/24").unwrap(),
                Cidr::parse("fd00::/8").unwrap(),
            ],
            128,
            m,
        )
    }

    #[test]
    fn the_gate_admits_the_allowlist_a_few_per_source_and_no_banned_source() {
        let g = gate();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(g.enter(ip("10.0.0.1")).is_none(), "outside the allowlist");
        let held: Vec<Slot> = (0..MAX_PER_SOURCE)
            .map(|_| g.enter(ip("192.168.1.20")).expect("under the cap"))
            .collect();
        assert!(g.enter(ip("192.168.1.20")).is_none(), "over the cap");
        assert!(g.enter(ip("192.168.1.21")).is_some(), "another source");
        drop(held);
        assert!(g.enter(ip("192.168.1.20")).is_some(), "slots come back");
        assert!(g.open.lock().unwrap().is_empty(), "no count left behind");
        // A ban published by the bridge task: refused at accept and while
        // connected; expired, admitted again.
        let until = Instant::now() + Duration::from_secs(60);
        g.publish(Screen {
            bans: vec![(ip("fd00::66"), until)],
            ipv6_prefix: 128,
        });
        assert!(g.enter(ip("fd00::66")).is_none());
        assert!(!g.admits(ip("fd00::66")));
        assert!(g.admits(ip("fd00::67")), "IPv6 per address");
        g.publish(Screen {
            bans: vec![(ip("fd00::66"), Instant::now())],
            ipv6_prefix: 128,
        });
        assert!(g.admits(ip("fd00::66")));
        assert_eq!(g.metrics.sip_tcp_refused.get(), 3);
    }
}
