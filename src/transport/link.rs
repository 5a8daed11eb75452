//! The gateway's link to the relay as its other parts see it: the current
//! connection (for the encoder thread and the call media engine), the
//! channels between the relay session and the phone bridge, the routes of
//! call audio arriving from the relay, and connection errors in words a
//! technician can act on. The session that fills them is `gateway::session`.

use crate::proto::signal::CallSignal;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

/// The current relay connection, read by the encoder thread each frame.
#[derive(Debug, Default)]
pub struct ConnSlot {
    generation: AtomicU64,
    conn: Mutex<Option<quinn::Connection>>,
}

impl ConnSlot {
    /// Replace the connection.
    pub fn set(&self, c: Option<quinn::Connection>) {
        *self.conn.lock().unwrap_or_else(|p| p.into_inner()) = c;
        self.generation.fetch_add(1, Relaxed);
    }

    /// The connection, if it changed since generation `seen` (updated).
    pub fn current_if_changed(&self, seen: &mut u64) -> Option<Option<quinn::Connection>> {
        let g = self.generation.load(Relaxed);
        if g == *seen {
            return None;
        }
        *seen = g;
        Some(self.conn.lock().unwrap_or_else(|p| p.into_inner()).clone())
    }
}

/// What the connection tells the phone bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    /// A session with the relay is up: (re-)announce extensions.
    Up,
    /// The session ended: calls in progress are over.
    Down,
    /// A call message from the relay.
    Signal(CallSignal),
}

/// The phone bridge's side of the relay connection. Signals queued while
/// the relay is unreachable are dropped when the next session starts (the
/// bridge re-announces its state on [`LinkEvent::Up`]).
#[derive(Debug)]
pub struct CallLink {
    /// Events for the bridge.
    pub events: tokio::sync::mpsc::Sender<LinkEvent>,
    /// Call signals from the bridge, to send.
    pub signals: tokio::sync::mpsc::Receiver<CallSignal>,
    /// Where call audio from the relay goes, by flow id.
    pub media: Arc<FlowRoutes>,
}

/// Call audio from the relay: flow id → the channel of the bridge's media
/// engine. The bridge installs and removes routes; the datagram reader hands
/// each datagram of a routed flow, stamped with its arrival time, straight
/// to the engine (a read lock, no hop through the bridge's SIP task).
#[derive(Debug, Default)]
pub struct FlowRoutes(
    std::sync::RwLock<
        std::collections::HashMap<
            u64,
            tokio::sync::mpsc::Sender<(std::time::Instant, bytes::Bytes)>,
        >,
    >,
);

impl FlowRoutes {
    /// Send flow `flow`'s datagrams to `tx`.
    pub fn insert(
        &self,
        flow: u64,
        tx: tokio::sync::mpsc::Sender<(std::time::Instant, bytes::Bytes)>,
    ) {
        if let Ok(mut m) = self.0.write() {
            m.insert(flow, tx);
        }
    }

    /// Stop routing `flow`.
    pub fn remove(&self, flow: u64) {
        if let Ok(mut m) = self.0.write() {
            m.remove(&flow);
        }
    }

    /// Hand `d` to its call; false when no call takes `flow` or it lags
    /// (the datagram is dropped: audio never waits).
    pub fn route(&self, flow: u64, d: bytes::Bytes) -> bool {
        self.0
            .read()
            .ok()
            .and_then(|m| {
                m.get(&flow)
                    .map(|tx| tx.try_send((std::time::Instant::now(), d)).is_ok())
            })
            .unwrap_or(false)
    }
}

/// TLS alert `certificate_revoked` (RFC 8446 §6), as a QUIC crypto error.
const CRYPTO_CERT_REVOKED: u64 = 0x100 + 44;

/// What a refused certificate means to a technician.
const REFUSED: &str = "the relay refused this device's certificate as revoked (a revoked device, or a certificate superseded by a newer one or replaced by a re-enrollment); it must be re-enrolled: a re-enrollment token from the relay operator, then `voxgate setup` on the box";

/// A connection error in words a technician can act on.
pub fn describe(e: &quinn::ConnectionError) -> String {
    match e {
        quinn::ConnectionError::ApplicationClosed(c) => {
            let why = String::from_utf8_lossy(&c.reason);
            if why.contains("revoked") {
                "the relay revoked this device; it must be re-enrolled: a re-enrollment token from the relay operator, then `voxgate setup` on the box".into()
            } else if why.contains("superseded") || why.contains("registered key") {
                format!(
                    "the relay no longer accepts this certificate ({why}): another box renewed or re-enrolled under this device id; if this is the real box, it must be re-enrolled with a re-enrollment token, and the operator should read the relay's audit log (`voxgate relay audit --device ID`)"
                )
            } else {
                format!("the relay closed the connection: {why}")
            }
        }
        quinn::ConnectionError::TransportError(t) if u64::from(t.code) == CRYPTO_CERT_REVOKED => {
            REFUSED.into()
        }
        quinn::ConnectionError::ConnectionClosed(c)
            if u64::from(c.error_code) == CRYPTO_CERT_REVOKED =>
        {
            REFUSED.into()
        }
        quinn::ConnectionError::TimedOut => {
            "no answer from the relay for 3 s (keep-alive timeout)".into()
        }
        other => other.to_string(),
    }
}
