//! Signed webhooks (Standard Webhooks): the relay tells receivers what
//! happened (devices, calls, recordings, security), from a durable outbox
//! in the registry.
//!
//! - [`Event`]: the events and their JSON bodies (`type`, `timestamp`,
//!   `data`).
//! - [`emit`] writes one into the outbox, in the caller's registry
//!   transaction; [`Emitter::emit`] is the same from async code (off the
//!   workers, group-committed), and wakes the delivery worker.
//! - [`sign`]: `webhook-signature`, sans-IO. [`policy`]: endpoint URLs,
//!   the SSRF guard, backoff and what an answer means, sans-IO.
//! - `client` and `worker` (feature `api`): the HTTPS client that connects
//!   only to the address it checked, and the delivery loop.
//!
//! Guarantees: an event written to the outbox is delivered to every
//! endpoint that took it when it was written, across relay restarts and
//! while the receiver is down, until its attempts (`[webhooks] retries`)
//! are spent (then it stays, failed, for `relay webhook replay`). Every
//! attempt and replay carries the same `webhook-id`, signed afresh with the
//! attempt's timestamp and every secret in use. Secrets are never logged.

pub mod policy;
pub mod sign;

#[cfg(feature = "api")]
pub mod client;
#[cfg(feature = "api")]
pub mod worker;

use super::commit::GroupCommit;
use super::registry::{Registry, RegistryError};
use serde_json::{Value, json};
use std::sync::Arc;

/// The types of event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// A device enrolled (or re-enrolled).
    DeviceEnrolled,
    /// A device's session started.
    DeviceOnline,
    /// A device's session ended.
    DeviceOffline,
    /// A device was revoked.
    DeviceRevoked,
    /// A call rings its callee.
    CallRinging,
    /// A call was answered.
    CallAnswered,
    /// A call ended.
    CallEnded,
    /// A call could not be set up.
    CallFailed,
    /// A call went to its fallback.
    CallFallback,
    /// A recording file was closed.
    RecordingReady,
    /// A burst of authentication failures from one source.
    SecurityAuthFailures,
    /// A token was used where it may not be (spent, withdrawn, another
    /// device's).
    SecurityTokenMisuse,
    /// A test message (`relay webhook test`), sent to one endpoint.
    Test,
}

impl EventKind {
    /// Every type an endpoint can subscribe to.
    pub const ALL: [EventKind; 12] = [
        EventKind::DeviceEnrolled,
        EventKind::DeviceOnline,
        EventKind::DeviceOffline,
        EventKind::DeviceRevoked,
        EventKind::CallRinging,
        EventKind::CallAnswered,
        EventKind::CallEnded,
        EventKind::CallFailed,
        EventKind::CallFallback,
        EventKind::RecordingReady,
        EventKind::SecurityAuthFailures,
        EventKind::SecurityTokenMisuse,
    ];

    /// Its name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::DeviceEnrolled => "device.enrolled",
            EventKind::DeviceOnline => "device.online",
            EventKind::DeviceOffline => "device.offline",
            EventKind::DeviceRevoked => "device.revoked",
            EventKind::CallRinging => "call.ringing",
            EventKind::CallAnswered => "call.answered",
            EventKind::CallEnded => "call.ended",
            EventKind::CallFailed => "call.failed",
            EventKind::CallFallback => "call.fallback",
            EventKind::RecordingReady => "recording.ready",
            EventKind::SecurityAuthFailures => "security.auth_failures",
            EventKind::SecurityTokenMisuse => "security.token_misuse",
            EventKind::Test => "webhook.test",
        }
    }

    /// The type named `name` (subscribable types only).
    pub fn parse(name: &str) -> Option<EventKind> {
        Self::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

/// Check an endpoint's event filter: every name must be a known type;
/// `*` or nothing means all. Returns the filter as stored (empty: all).
pub fn parse_filter(names: &[String]) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for n in names.iter().flat_map(|n| n.split(',')).map(str::trim) {
        match n {
            "" => {}
            "*" => return Ok(Vec::new()),
            n if EventKind::parse(n).is_some() => {
                if !out.iter().any(|o| o == n) {
                    out.push(n.to_string());
                }
            }
            n => {
                let known: Vec<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
                return Err(format!(
                    "unknown event type `{n}` (known: {})",
                    known.join(", ")
                ));
            }
        }
    }
    Ok(out)
}

/// One event: its type and its data.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The type.
    pub kind: EventKind,
    /// The `data` object of the body.
    pub data: Value,
}

impl Event {
    /// An event of `kind` with `data`.
    pub fn new(kind: EventKind, data: Value) -> Self {
        Event { kind, data }
    }

    /// `device.enrolled`.
    pub fn device_enrolled(device: &str, serial: &str, reenrolled: bool) -> Self {
        Self::new(
            EventKind::DeviceEnrolled,
            json!({ "device": device, "serial": serial, "reenrolled": reenrolled }),
        )
    }

    /// `device.online`.
    pub fn device_online(device: &str, remote: &str, serial: &str) -> Self {
        Self::new(
            EventKind::DeviceOnline,
            json!({ "device": device, "remote": remote, "serial": serial }),
        )
    }

    /// `device.offline`.
    pub fn device_offline(device: &str, reason: &str) -> Self {
        Self::new(
            EventKind::DeviceOffline,
            json!({ "device": device, "reason": reason }),
        )
    }

    /// `device.revoked`.
    pub fn device_revoked(device: &str) -> Self {
        Self::new(EventKind::DeviceRevoked, json!({ "device": device }))
    }

    /// A call event (`call.ringing`, `call.answered`, `call.ended`,
    /// `call.failed`, `call.fallback`): the call's id, its caller and
    /// callee extensions, and `extra` (a reason, the fallback's target,
    /// the duration: an object merged into `data`, or `Value::Null`).
    ///
    /// The calls engine emits it with `RelayCtx::webhooks.emit(..)`.
    pub fn call(kind: EventKind, call: &str, from: &str, to: &str, extra: Value) -> Self {
        let mut data = json!({ "call": call, "from": from, "to": to });
        if let (Some(d), Value::Object(more)) = (data.as_object_mut(), extra) {
            for (k, v) in more {
                d.entry(k).or_insert(v);
            }
        }
        Self::new(kind, data)
    }

    /// `recording.ready`.
    pub fn recording_ready(device: &str, file: &str, bytes: u64) -> Self {
        Self::new(
            EventKind::RecordingReady,
            json!({ "device": device, "file": file, "bytes": bytes }),
        )
    }

    /// `security.auth_failures`: `count` failures of `what` from `source`.
    pub fn auth_failures(source: &str, what: &str, count: u64) -> Self {
        Self::new(
            EventKind::SecurityAuthFailures,
            json!({ "source": source, "what": what, "count": count }),
        )
    }

    /// `security.token_misuse`.
    pub fn token_misuse(source: &str, device: &str, reason: &str) -> Self {
        Self::new(
            EventKind::SecurityTokenMisuse,
            json!({ "source": source, "device": device, "reason": reason }),
        )
    }

    /// The body sent: `{"type", "timestamp", "data"}` (RFC 3339 UTC).
    pub fn body(&self, unix_s: i64) -> String {
        json!({ "type": self.kind.as_str(), "timestamp": rfc3339(unix_s), "data": self.data })
            .to_string()
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ`: the audit log's format.
pub fn rfc3339(unix_s: i64) -> String {
    super::registry::chain::iso8601(unix_s)
}

/// Write `event` to the outbox (inside the caller's transaction when it
/// has one), for every enabled endpoint that takes it. Returns its id, or
/// `None` when no endpoint takes it (nothing is written).
pub fn emit(registry: &Registry, event: &Event) -> Result<Option<String>, RegistryError> {
    emit_to(registry, event, None)
}

/// [`emit`] to one endpoint only, whatever its filter (a test message).
pub fn emit_to(
    registry: &Registry,
    event: &Event,
    only: Option<&str>,
) -> Result<Option<String>, RegistryError> {
    let id = super::registry::webhooks::new_event_id()?;
    let body = event.body(super::registry::now());
    let n = registry.webhook_emit(&id, event.kind.as_str(), &body, only)?;
    Ok((n > 0).then_some(id))
}

/// Revoke `device` and emit `device.revoked`, in one transaction.
/// `false` when it was revoked already (no event then).
pub fn revoke_device(registry: &Registry, device: &str) -> Result<bool, RegistryError> {
    registry.atomically(|r| {
        let changed = r.revoke(device)?;
        if changed {
            emit(r, &Event::device_revoked(device))?;
        }
        Ok(changed)
    })
}

/// Emits events from async code: each is written by the group commit on
/// the blocking pool, then the delivery worker is woken.
#[derive(Debug, Clone)]
pub struct Emitter {
    commits: Arc<GroupCommit>,
    wake: Arc<tokio::sync::Notify>,
}

impl Emitter {
    /// An emitter writing through `commits`.
    pub fn new(commits: Arc<GroupCommit>) -> Self {
        Emitter {
            commits,
            wake: Arc::new(tokio::sync::Notify::new()),
        }
    }

    /// What the delivery worker waits on.
    pub fn wake(&self) -> Arc<tokio::sync::Notify> {
        self.wake.clone()
    }

    /// Write `event` to the outbox without waiting (a failure is logged).
    /// Call from inside a tokio runtime.
    pub fn emit(&self, event: Event) {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.emit_blocking(&event));
    }

    /// Write `event` to the outbox and wake the worker; blocks on the
    /// commit.
    pub fn emit_blocking(&self, event: &Event) -> Option<String> {
        let e = event.clone();
        match self.commits.run(move |r| emit(r, &e)) {
            Ok(id) => {
                if id.is_some() {
                    self.wake.notify_one();
                }
                id
            }
            Err(err) => {
                tracing::warn!(error = %err, event = event.kind.as_str(), "cannot write a webhook event to the outbox");
                None
            }
        }
    }

    /// Wake the worker (an event written in another transaction).
    pub fn notify(&self) {
        self.wake.notify_one();
    }
}

/// Turns a stream of failures into at most one event a minute: the first
/// failure is reported at once, later ones counted and reported together
/// when a minute has passed.
#[derive(Debug, Default)]
pub struct Burst {
    pending: u64,
    last: Option<std::time::Instant>,
}

impl Burst {
    /// The minimum spacing of two events.
    pub const EVERY: std::time::Duration = std::time::Duration::from_secs(60);

    /// Count `n` failures at `now`; the count to report now, if any.
    pub fn add(&mut self, n: u64, now: std::time::Instant) -> Option<u64> {
        self.pending += n;
        let due = self
            .last
            .is_none_or(|l| now.duration_since(l) >= Self::EVERY);
        if self.pending > 0 && due {
            self.last = Some(now);
            return Some(std::mem::take(&mut self.pending));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_have_names_filters_and_bodies() {
        for k in EventKind::ALL {
            assert_eq!(EventKind::parse(k.as_str()), Some(k));
        }
        assert_eq!(EventKind::parse("webhook.test"), None);
        assert_eq!(
            parse_filter(&["device.online, call.ended".into()])
                .unwrap()
                .len(),
            2
        );
        assert!(parse_filter(&["*".into()]).unwrap().is_empty());
        assert!(parse_filter(&["device.exploded".into()]).is_err());
        let body = Event::device_online("box-1", "192.0.2.1:5000", "0a").body(1_700_000_000);
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["type"], "device.online");
        assert_eq!(v["timestamp"], "2023-11-14T22:13:20Z");
        assert_eq!(v["data"]["device"], "box-1");
        let c = Event::call(
            EventKind::CallFallback,
            "c7",
            "2001",
            "2002",
            json!({ "fallback": "2099", "call": "no" }),
        );
        assert_eq!(
            c.data,
            json!({ "call": "c7", "from": "2001", "to": "2002", "fallback": "2099" })
        );
    }

    #[test]
    fn bursts_are_reported_once_a_minute() {
        let t0 = std::time::Instant::now();
        let mut b = Burst::default();
        assert_eq!(b.add(0, t0), None);
        assert_eq!(b.add(2, t0), Some(2));
        assert_eq!(b.add(3, t0 + Burst::EVERY / 2), None);
        assert_eq!(b.add(1, t0 + Burst::EVERY), Some(4));
    }

    #[test]
    fn emit_writes_only_for_endpoints_that_take_it() {
        let r = Registry::in_memory().unwrap();
        assert_eq!(emit(&r, &Event::device_revoked("a")).unwrap(), None);
        let (ep, _) = r
            .webhook_endpoint_add("https://example.com/", &["device.revoked".into()], "")
            .unwrap();
        let id = emit(&r, &Event::device_revoked("a")).unwrap().unwrap();
        assert!(id.starts_with("msg_"));
        assert_eq!(emit(&r, &Event::device_online("a", "", "")).unwrap(), None);
        assert!(
            emit_to(&r, &Event::new(EventKind::Test, json!({})), Some(&ep.id))
                .unwrap()
                .is_some()
        );
        assert_eq!(r.webhook_deliveries(None, 10).unwrap().len(), 2);
    }
}
