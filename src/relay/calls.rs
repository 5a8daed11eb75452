//! Call control for applications: what the HTTP API's `calls` handlers
//! call. Start a call ([`CallPlane::create`]: ring extension `from`, then
//! connect it to an extension, the echo or the recording service), list the
//! live calls, get one, hang one up; and the call events
//! ([`CallPlane::subscribe`]: ringing, answered, fallback, ended, failed)
//! that the webhooks deliver.
//!
//! Each of these takes the switch's lock once, for as long as the sans-IO
//! switch runs; the actions it returns (signals to boxes, routes, the
//! message player, events) are carried out after the lock is released.

use super::call_plane::CallPlane;
use super::switch::{CallId, CallInfo, CallState, LegInfo, Origin, OriginateError};
use serde::Serialize;
use std::time::{Duration, UNIX_EPOCH};
use tracing::info;

/// A live call, as the API returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "api", derive(utoipa::ToSchema))]
pub struct CallView {
    /// The call's id (the `{id}` of `/v1/calls/{id}`, and `call` in events).
    pub id: CallId,
    /// `api` (started through the API) or `phone` (a phone dialled).
    pub origin: Origin,
    /// The calling extension (leg A of an application's call).
    pub from: String,
    /// The target: an extension, `900` (echo) or `901` (recording).
    pub to: String,
    /// `calling` (leg A rings), `ringing` (the callee rings), `connected`,
    /// `message` (the fallback message plays).
    pub state: CallState,
    /// The phones on the call, the calling one first.
    pub legs: Vec<LegInfo>,
    /// When the call started (Unix time, seconds).
    pub started_at: u64,
    /// When it was connected (Unix time, seconds).
    pub answered_at: Option<u64>,
    /// The fallback it took (an extension, or `message`), if any.
    pub fallback: Option<String>,
}

impl CallPlane {
    /// Start an application's call from extension `from` to `to`; returns
    /// the new call as it is now (`calling`).
    pub fn create(&self, from: &str, to: &str) -> Result<CallView, OriginateError> {
        let r = self
            .with_switch(|sw, now| match sw.originate(now, from, to) {
                Ok((id, actions)) => (Ok(sw.get(id)), actions),
                Err(e) => (Err(e), Vec::new()),
            })
            .unwrap_or(Err(OriginateError::Busy(from.to_string())))?;
        let view = r
            .map(|c| self.view(c))
            .ok_or_else(|| OriginateError::Offline(from.to_string()))?;
        self.count_call();
        info!(call = view.id, %from, %to, "call started by an application");
        Ok(view)
    }

    /// Every live call, oldest first.
    pub fn list(&self) -> Vec<CallView> {
        self.with_switch(|sw, _| (sw.list(), Vec::new()))
            .unwrap_or_default()
            .into_iter()
            .map(|c| self.view(c))
            .collect()
    }

    /// Live call `id`.
    pub fn get(&self, id: CallId) -> Option<CallView> {
        self.with_switch(|sw, _| (sw.get(id), Vec::new()))
            .flatten()
            .map(|c| self.view(c))
    }

    /// Hang up call `id`: every phone on it gets a BYE (or a CANCEL while
    /// it rings). `false`: no such call.
    pub fn hangup(&self, id: CallId) -> bool {
        let ended = self
            .with_switch(|sw, _| match sw.end_call(id) {
                Some(a) => (true, a),
                None => (false, Vec::new()),
            })
            .unwrap_or(false);
        if ended {
            info!(call = id, "call hung up by an application");
        }
        ended
    }

    fn view(&self, c: CallInfo) -> CallView {
        let unix = |d: Duration| {
            (self.wall_origin + d)
                .duration_since(UNIX_EPOCH)
                .map_or(0, |t| t.as_secs())
        };
        CallView {
            id: c.id,
            origin: c.origin,
            from: c.from,
            to: c.to,
            state: c.state,
            legs: c.legs,
            started_at: unix(c.started),
            answered_at: c.answered.map(unix),
            fallback: c.fallback,
        }
    }
}
