//! The relay's call plane: the IO shell around [`Switch`]. It keeps each
//! session's outbox for call signals, and the live media routes (with the
//! target connection resolved once, at install time), and carries out the
//! switch's actions: call signals to sessions, media routes, the fallback
//! message played into a call (a task per call, aborted when the call
//! ends), and call events onto a broadcast ([`CallPlane::subscribe`]) for
//! the webhooks and other observers. The API's side of it (start, list,
//! get, hang up) is in [`super::calls`].
//!
//! Locks: the switch mutex is held only while the switch runs (no IO under
//! it); the routes are read under a `RwLock` once per call datagram. Signals
//! go to sessions through bounded channels: a session that stops reading its
//! control stream loses signals (counted), it never blocks the relay.

use super::metrics::RelayMetrics;
use super::switch::{
    Action, CallEvent, CallId, CallSettings, EventKind, Route, SessionId, Signal, Switch,
};
use crate::media::flow;
use crate::media::rtp::{Packet, Repr};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Instant, SystemTime};
use tokio::sync::{broadcast, mpsc};
use tracing::{debug, info};

/// Signals queued per session before new ones are dropped.
const OUTBOX: usize = 64;
/// Call events a slow subscriber may lag behind before it misses some.
const EVENTS: usize = 1024;

/// A function every call event goes to, in order, as it happens (outside
/// the switch's lock; it must not block: the webhooks' outbox write is
/// handed to the blocking pool).
pub type EventSink = Box<dyn Fn(&CallEvent) + Send + Sync>;

struct Sink(EventSink);

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sink")
    }
}

/// Pre-encoded Opus packets (payload, 48 kHz samples).
pub type Packets = Arc<Vec<(Vec<u8>, u32)>>;

/// How the plane handles calls (`[calls]`): the switch's settings and the
/// fallback message's audio, when the fallback is a message.
#[derive(Debug, Clone, Default)]
pub struct CallOptions {
    /// Fallback and no-answer time.
    pub settings: CallSettings,
    /// The fallback message, encoded.
    pub message: Option<Packets>,
}

/// A route with its target connection.
#[derive(Debug, Clone)]
enum LiveRoute {
    Forward {
        conn: quinn::Connection,
        flow: u64,
        ssrc: u32,
    },
    Record,
    Discard,
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
    /// A call owns it, and its audio goes nowhere (a message plays).
    Discarded,
    /// Routed, but the target's connection refused it (gone or congested).
    Dropped,
}

/// Shared call state of the relay.
#[derive(Debug)]
pub struct CallPlane {
    switch: Mutex<Switch>,
    routes: RwLock<HashMap<(SessionId, u64), LiveRoute>>,
    outboxes: Mutex<HashMap<SessionId, (mpsc::Sender<Signal>, quinn::Connection)>>,
    pub(super) origin: Instant,
    /// The wall-clock time at `origin`.
    pub(super) wall_origin: SystemTime,
    metrics: Arc<RelayMetrics>,
    events: broadcast::Sender<CallEvent>,
    sink: std::sync::OnceLock<Sink>,
    message: Option<Packets>,
    players: Mutex<HashMap<CallId, tokio::task::AbortHandle>>,
}

impl CallPlane {
    /// An empty call plane; `recording`: whether calls to the recording
    /// service are taken.
    pub fn new(metrics: Arc<RelayMetrics>, recording: bool, options: CallOptions) -> Self {
        let mut switch = Switch::new(fastrand::u64(..));
        switch.set_first_call(first_call_id(SystemTime::now()));
        switch.set_recording(recording);
        switch.set_calls(options.settings);
        CallPlane {
            switch: Mutex::new(switch),
            routes: RwLock::default(),
            outboxes: Mutex::default(),
            origin: Instant::now(),
            wall_origin: SystemTime::now(),
            metrics,
            events: broadcast::channel(EVENTS).0,
            sink: std::sync::OnceLock::new(),
            message: options.message,
            players: Mutex::default(),
        }
    }

    /// Send every call event to `sink` as well (the webhooks: unlike a
    /// broadcast receiver, a sink never misses one). Set once: `false` if
    /// a sink was set already.
    pub fn set_sink(&self, sink: EventSink) -> bool {
        self.sink.set(Sink(sink)).is_ok()
    }

    /// Count a call started (the calls counter).
    pub(super) fn count_call(&self) {
        self.metrics.calls.inc();
    }

    /// Every call event from now on (a receiver that lags more than
    /// 1,024 events behind misses the oldest: `RecvError::Lagged`).
    pub fn subscribe(&self) -> broadcast::Receiver<CallEvent> {
        self.events.subscribe()
    }

    /// Run the switch under its lock, then carry out what it returned.
    pub(super) fn with_switch<T>(
        &self,
        f: impl FnOnce(&mut Switch, std::time::Duration) -> (T, Vec<Action>),
    ) -> Option<T> {
        let now = self.origin.elapsed();
        let mut sw = self.switch.lock().ok()?;
        let (t, actions) = f(&mut sw, now);
        let active = sw.calls();
        drop(sw);
        self.metrics.calls_active.set(active as f64);
        self.apply(actions);
        Some(t)
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
        let actions = sw.session_down(self.origin.elapsed(), s);
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
            Signal::Answer { call, flow, .. } => sw.answer(now, s, call, flow),
            Signal::End { call, reason } => sw.hangup(now, s, call, reason),
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
            Some(LiveRoute::Discard) => Forwarded::Discarded,
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

    pub(super) fn apply(&self, actions: Vec<Action>) {
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
                        Route::Discard => Some(LiveRoute::Discard),
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
                Action::Play {
                    call,
                    session,
                    flow,
                    ssrc,
                } => self.play(call, session, flow, ssrc),
                Action::StopPlay(call) => {
                    if let Some(h) = self.players.lock().ok().and_then(|mut p| p.remove(&call)) {
                        h.abort();
                    }
                }
                Action::Event(e) => {
                    info!(call = e.call, event = e.kind.name(), from = %e.from, to = %e.to, "call event");
                    if matches!(e.kind, EventKind::Fallback { .. }) {
                        self.metrics.call_fallbacks.inc();
                    }
                    if let Some(Sink(sink)) = self.sink.get() {
                        sink(&e);
                    }
                    // No subscriber is fine: nobody listens.
                    let _ = self.events.send(e);
                }
            }
        }
    }
}

impl CallPlane {
    /// Play the fallback message once into `call`, towards `session` on
    /// `flow` (a task, aborted by [`Action::StopPlay`]).
    fn play(&self, call: CallId, session: SessionId, flow: u64, ssrc: u32) {
        let conn = self
            .outboxes
            .lock()
            .ok()
            .and_then(|o| o.get(&session).map(|x| x.1.clone()));
        let (Some(conn), Some(packets)) = (conn, self.message.clone()) else {
            debug!(call, session, "no message to play, or the session is gone");
            return;
        };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let task = rt.spawn(super::server::play_once(
            conn,
            packets,
            flow,
            ssrc,
            self.metrics.clone(),
        ));
        if let Ok(mut p) = self.players.lock() {
            p.retain(|_, h| !h.is_finished());
            p.insert(call, task.abort_handle());
        }
    }
}

/// The first call id of a relay started at `now`: its wall clock in
/// microseconds. A relay would have to start more than a million calls a
/// second, on average over its whole run, for a restarted one to reuse an id.
fn first_call_id(now: SystemTime) -> CallId {
    now.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_micros() as CallId)
        .unwrap_or(1)
        .max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn call_ids_of_a_restarted_relay_start_past_the_earlier_ones_and_stay_exact_in_json() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_000_000);
        let mut first = Switch::new(1);
        first.set_first_call(first_call_id(t0));
        let a = first.next_key();
        let b = first.next_key();
        assert_eq!(b, a + 1);
        // A second later, after 999,999 more calls, a restart still starts past them.
        let mut second = Switch::new(1);
        second.set_first_call(first_call_id(t0 + Duration::from_secs(1)));
        assert!(second.next_key() > a + 999_999);
        // Until the year 2255 an id is below 2^53.
        let far = SystemTime::UNIX_EPOCH + Duration::from_secs(9_000_000_000);
        assert!(first_call_id(far) < 1 << 53);
        assert_eq!(first_call_id(SystemTime::UNIX_EPOCH), 1);
    }
}
