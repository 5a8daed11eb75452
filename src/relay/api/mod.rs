//! The relay's operator HTTP API (`[api]`, cargo feature `api`): JSON
//! under `/v1/` over HTTPS, for applications and operators' tools.
//!
//! - [`prepare`] (before the privilege drop) binds the listener, loads the
//!   certificate and key, and opens the API's two registry handles (one
//!   that writes, one that watches for changes); [`serve`] (after) accepts
//!   connections ([`serve`]'s module: TLS, HTTP/1.1, a cap on connections).
//! - Every `/v1/` route but `/v1/openapi.json` is authenticated
//!   ([`auth`]: API keys, scopes, rate limits); errors are problem
//!   details ([`problem`]); CORS admits the configured origins only.
//! - The OpenAPI document is generated from the handlers ([`openapi`]).
//! - Writes that are frequent and may lag (keys' last use, rate-limit
//!   windows, audit lines of requests, devices last seen) are batched and
//!   written once a second on the blocking pool, and once more at
//!   shutdown; everything else goes to the registry on the blocking pool
//!   as it happens ([`ApiState::db`]). No async worker waits for the disk.
//!
//! Resources: [`devices`], [`tokens`], [`calls`], [`recordings`], [`audit`],
//! [`webhooks`] and `api-keys` ([`keys`]).

pub mod audit;
pub mod auth;
pub mod calls;
pub mod devices;
pub mod keys;
pub mod limits;
pub mod openapi;
pub mod problem;
pub mod recordings;
mod serve;
pub mod tls_key;
pub mod tokens;
pub mod webhooks;

pub use auth::{Caller, Need, ScopeOf, scope};
pub use problem::{Body, Errors, Problem};
pub use serve::{ApiHandle, Prepared, prepare, serve};

use crate::config::ApiSettings;
use crate::relay::metrics::RelayMetrics;
use crate::relay::registry::{RateRow, Registry, RegistryError, now};
use crate::relay::server::RelayCtx;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

/// The API's shared state.
pub type Api = Arc<ApiState>;

/// The peer of an HTTP connection (a request extension).
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

/// Audit lines queued at most between two flushes; past it they are
/// counted and summed up in one line.
const MAX_QUEUED_AUDIT: usize = 1000;

/// What the API holds.
#[derive(Debug)]
pub struct ApiState {
    /// `[api]`.
    pub settings: ApiSettings,
    /// The relay's shared state (live sessions, calls, recordings).
    pub relay: Arc<RelayCtx>,
    /// The relay's metrics.
    pub metrics: Arc<RelayMetrics>,
    registry: Arc<Mutex<Registry>>,
    keys: Mutex<auth::Keys>,
    limiter: Mutex<limits::Limiter>,
    pending: Mutex<Pending>,
    seen: Mutex<HashMap<String, i64>>,
    last_seen_saved: std::sync::atomic::AtomicI64,
}

/// Writes that wait for the next flush.
#[derive(Debug, Default)]
struct Pending {
    used: HashMap<String, i64>,
    audit: Vec<(&'static str, String, String)>,
    dropped: u64,
}

impl ApiState {
    fn lock_limiter(&self) -> MutexGuard<'_, limits::Limiter> {
        self.limiter.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn pending(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queue an audit line (written at the next flush).
    pub fn audit(&self, event: &'static str, source: String, detail: String) {
        let mut p = self.pending();
        if p.audit.len() < MAX_QUEUED_AUDIT {
            p.audit.push((event, source, detail));
        } else {
            p.dropped += 1;
        }
    }

    fn used(&self, key: &str, at: i64) {
        let mut p = self.pending();
        if let Some(t) = p.used.get_mut(key) {
            *t = at;
        } else {
            p.used.insert(key.to_string(), at);
        }
    }

    /// Run `f` on the registry on the blocking pool; its errors become
    /// problems. (A key `f` changes reaches the key cache through the
    /// registry's `data_version`: the cache watches on another handle.)
    pub async fn db<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Registry) -> Result<T, Problem> + Send + 'static,
    ) -> Result<T, Problem> {
        let registry = self.registry.clone();
        tokio::task::spawn_blocking(move || {
            let r = registry.lock().unwrap_or_else(|p| p.into_inner());
            f(&r)
        })
        .await
        .map_err(|e| Problem::internal("a registry task failed", &e))?
    }

    /// When `device` was last seen online (now, if it is).
    pub fn last_seen(&self, device: &str, online: bool) -> Option<i64> {
        if online {
            return Some(now());
        }
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(device)
            .copied()
    }

    /// The devices with a live session.
    pub fn online(&self) -> std::collections::HashSet<String> {
        self.relay
            .live
            .lock()
            .map(|l| l.values().map(|s| s.cert.device.clone()).collect())
            .unwrap_or_default()
    }

    /// Write what waits: keys' last use, rate-limit windows, audit lines,
    /// devices seen online.
    async fn flush(self: &Arc<Self>) {
        let at = now();
        let (rows, expired) = self.lock_limiter().take_dirty(at);
        let (used, audit, dropped) = {
            let mut p = self.pending();
            let used: Vec<(String, i64)> = p.used.drain().collect();
            (
                used,
                std::mem::take(&mut p.audit),
                std::mem::take(&mut p.dropped),
            )
        };
        let online: Vec<String> = self.online().into_iter().collect();
        // Once every 30 s is enough for "last seen" at rest.
        let saved = &self.last_seen_saved;
        let save_seen = at - saved.load(std::sync::atomic::Ordering::Relaxed) >= 30;
        if save_seen {
            saved.store(at, std::sync::atomic::Ordering::Relaxed);
        }
        {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            for d in &online {
                seen.insert(d.clone(), at);
            }
        }
        let registry = self.registry.clone();
        let done = tokio::task::spawn_blocking(move || {
            write_batch(
                &registry,
                &rows,
                &expired,
                &used,
                &audit,
                dropped,
                save_seen.then_some(&online[..]),
                at,
            )
        })
        .await;
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "api: cannot write its batch to the registry"),
            Err(e) => tracing::warn!(error = %e, "api: the registry batch task failed"),
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn write_batch(
    registry: &Mutex<Registry>,
    rows: &[RateRow],
    expired: &[(String, i64)],
    used: &[(String, i64)],
    audit: &[(&'static str, String, String)],
    dropped: u64,
    online: Option<&[String]>,
    at: i64,
) -> Result<(), RegistryError> {
    let r = registry.lock().unwrap_or_else(|p| p.into_inner());
    r.atomically(|tx| {
        if !rows.is_empty() {
            tx.save_rate_rows(rows, expired)?;
        }
        tx.touch_api_keys(used)?;
        for (event, source, detail) in audit {
            tx.audit(event, source, "", detail)?;
        }
        if dropped > 0 {
            tx.audit(
                "api_audit_suppressed",
                "",
                "",
                &format!("{dropped} more API audit lines not written: rate limit"),
            )?;
        }
        if let Some(online) = online {
            tx.save_seen(online, at)?;
        }
        Ok(())
    })
}

/// The flush loop: once a second until the task is aborted.
async fn flush_loop(api: Api) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tick.tick().await;
        api.flush().await;
    }
}
