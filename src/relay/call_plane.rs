//! The relay's call plane: the IO shell around [`Switch`]. It keeps each
//! session's outbox for call signals, and the live media routes (with the
//! target connection resolved once, at install time), and carries out the
//! switch's actions.
//!
//! Locks: the switch mutex is held only while the switch runs (no IO under
//! it); the routes are read under a `RwLock` once per call datagram. Signals
//! go to sessions through bounded channels: a session that stops reading its
//! control stream loses signals (counted), it never blocks the relay.

use super::metrics::RelayMetrics;
use super::switch::{Action, Route, SessionId, Signal, Switch};
use crate::media::flow;
use crate::media::rtp::{Packet, Repr};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;
use tokio::sync::mpsc;
use tracing::{debug, info};

/// Signals queued per session before new ones are dropped.
const OUTBOX: usize = 64;

/// A route with its target connection.
#[derive(Debug, Clone)]
enum LiveRoute {
    Forward {
        conn: quinn::Connection,
        flow: u64,
        ssrc: u32,
    },
    Record,
}

/// What became of a datagram offered to [`CallPlane::forward`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forwarded {
    /// Sent to the other leg (or back, for the echo service).
    Sent,
    /// For the session's call recorder.
    Record,
    /// No call owns this flow.
    NoRoute,
    /// Routed, but the target's connection refused it (gone or congested).
    Dropped,
}

/// Shared call state of the relay.
#[derive(Debug)]
pub struct CallPlane {
    switch: Mutex<Switch>,
    routes: RwLock<HashMap<(SessionId, u64), LiveRoute>>,
    outboxes: Mutex<HashMap<SessionId, (mpsc::Sender<Signal>, quinn::Connection)>>,
    origin: Instant,
    metrics: Arc<RelayMetrics>,
}

impl CallPlane {
    /// An empty call plane; `recording`: whether calls to the recording
    /// service are taken.
    pub fn new(metrics: Arc<RelayMetrics>, recording: bool) -> Self {
        let mut switch = Switch::new(fastrand::u64(..));
        switch.set_recording(recording);
        CallPlane {
            switch: Mutex::new(switch),
            routes: RwLock::default(),
            outboxes: Mutex::default(),
            origin: Instant::now(),
            metrics,
        }
    }

    /// Device `device` started session `s`; returns its signal inbox.
    pub fn join(
        &self,
        s: SessionId,
        device: &str,
        conn: quinn::Connection,
    ) -> mpsc::Receiver<Signal> {
        let (tx, rx) = mpsc::channel(OUTBOX);
        if let Ok(mut o) = self.outboxes.lock() {
            o.insert(s, (tx, conn));
        }
        if let Ok(mut sw) = self.switch.lock() {
            sw.device_up(s, device);
        }
        rx
    }

    /// A device session ended: its calls end and its extensions are freed.
    pub fn leave(&self, s: SessionId) {
        if let Ok(mut o) = self.outboxes.lock() {
            o.remove(&s);
        }
        let Ok(mut sw) = self.switch.lock() else {
            return;
        };
        let actions = sw.session_down(s);
        self.metrics.calls_active.set(sw.calls() as f64);
        drop(sw);
        self.apply(actions);
    }

    /// A call message from session `s`.
    pub fn handle(&self, s: SessionId, m: Signal) {
        let now = self.origin.elapsed();
        let Ok(mut sw) = self.switch.lock() else {
            return;
        };
        let actions = match m {
            Signal::ExtUp(ext) => {
                let a = sw.ext_up(s, &ext);
                if a.is_empty() {
                    info!(session = s, %ext, "extension registered");
                }
                a
            }
            Signal::ExtDown(ext) => {
                sw.ext_down(s, &ext);
                Vec::new()
            }
            Signal::Setup {
                call,
                to,
                from,
                flow,
                ..
            } => {
                info!(session = s, call, %to, %from, "call set-up");
                self.metrics.calls.inc();
                sw.setup(now, s, call, &to, &from, flow)
            }
            Signal::Ringing { call } => sw.ringing(s, call),
            Signal::Answer { call, flow, .. } => sw.answer(s, call, flow),
            Signal::End { call, reason } => sw.hangup(s, call, reason),
            Signal::Dtmf {
                call,
                digit,
                duration_ms,
            } => sw.dtmf(s, call, digit, duration_ms),
            // Messages only the relay sends.
            Signal::Error { .. } => Vec::new(),
        };
        let active = sw.calls();
        drop(sw);
        self.metrics.calls_active.set(active as f64);
        self.apply(actions);
    }

    /// End calls that rang too long (call about once a second).
    pub fn tick(&self) {
        let now = self.origin.elapsed();
        let (actions, n) = match self.switch.lock() {
            Ok(mut sw) => {
                let a = sw.poll(now);
                (a, sw.calls())
            }
            Err(_) => return,
        };
        self.metrics.calls_active.set(n as f64);
        self.apply(actions);
    }

    /// Route a datagram that arrived from session `s` on `flow_id`.
    pub fn forward(
        &self,
        s: SessionId,
        flow_id: u64,
        pkt: &Packet<&[u8]>,
        out: &mut [u8],
    ) -> Forwarded {
        let route = match self.routes.read() {
            Ok(r) => r.get(&(s, flow_id)).cloned(),
            Err(_) => None,
        };
        match route {
            None => Forwarded::NoRoute,
            Some(LiveRoute::Record) => Forwarded::Record,
            Some(LiveRoute::Forward { conn, flow, ssrc }) => {
                let repr = Repr {
                    ssrc,
                    ..Repr::parse(pkt)
                };
                match flow::encode(flow, &repr, pkt.payload(), out) {
                    Some(n)
                        if conn
                            .send_datagram(bytes::Bytes::copy_from_slice(&out[..n]))
                            .is_ok() =>
                    {
                        self.metrics.forwarded.inc();
                        Forwarded::Sent
                    }
                    _ => Forwarded::Dropped,
                }
            }
        }
    }

    /// Whether (s, flow) still has a route (a recorder may close when not).
    pub fn routed(&self, s: SessionId, flow_id: u64) -> bool {
        self.routes
            .read()
            .is_ok_and(|r| r.contains_key(&(s, flow_id)))
    }

    fn apply(&self, actions: Vec<Action>) {
        for a in actions {
            match a {
                Action::Send(s, sig) => {
                    let tx = self
                        .outboxes
                        .lock()
                        .ok()
                        .and_then(|o| o.get(&s).map(|x| x.0.clone()));
                    match tx.map(|tx| tx.try_send(sig)) {
                        Some(Ok(())) => {}
                        Some(Err(e)) => {
                            self.metrics.control_errors.inc();
                            debug!(session = s, error = %e, "call signal dropped");
                        }
                        None => debug!(session = s, "call signal for a session that is gone"),
                    }
                }
                Action::Route(key, r) => {
                    let live = match r {
                        Route::Record => Some(LiveRoute::Record),
                        Route::Forward {
                            session,
                            flow,
                            ssrc,
                        } => self
                            .outboxes
                            .lock()
                            .ok()
                            .and_then(|o| o.get(&session).map(|x| x.1.clone()))
                            .map(|conn| LiveRoute::Forward { conn, flow, ssrc }),
                    };
                    if let (Some(live), Ok(mut routes)) = (live, self.routes.write()) {
                        routes.insert(key, live);
                    }
                }
                Action::Unroute(key) => {
                    if let Ok(mut routes) = self.routes.write() {
                        routes.remove(&key);
                    }
                }
            }
        }
    }
}
