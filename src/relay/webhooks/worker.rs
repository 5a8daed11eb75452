//! The delivery worker: takes due deliveries from the outbox, signs and
//! sends each (several at once, up to `[webhooks] concurrency`), and
//! records every attempt.
//!
//! It wakes when an event is emitted in this process, at the next due
//! retry, and at least every [`POLL`] (events written by another process:
//! `relay revoke`, `relay webhook test`, `replay`). A delivery is in at
//! most one attempt at a time (the `busy` set). The registry is only
//! touched on the blocking pool.

use super::client::{Client, Request};
use super::policy::{Retry, Verdict, verdict};
use super::sign::signature_header;
use crate::relay::commit::GroupCommit;
use crate::relay::registry::webhooks::{DueDelivery, Recorded};
use crate::relay::registry::{Registry, now};
use crate::telemetry::metrics::Counter;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, Semaphore};

/// The longest the worker sleeps without looking at the outbox.
pub const POLL: Duration = Duration::from_millis(500);
/// How long finished deliveries (and their events) stay listed.
pub const KEEP_FINISHED: Duration = Duration::from_secs(30 * 86_400);
/// How often finished deliveries past [`KEEP_FINISHED`] are removed.
const PURGE_EVERY: Duration = Duration::from_secs(3600);

/// The worker's parts.
#[derive(Debug)]
pub struct Worker {
    /// The registry (reads).
    pub registry: Arc<Mutex<Registry>>,
    /// The group commit (the attempts' records).
    pub commits: Arc<GroupCommit>,
    /// The HTTPS client.
    pub client: Client,
    /// Retries and their spacing.
    pub retry: Retry,
    /// Deliveries at once.
    pub concurrency: usize,
    /// Woken by emitted events.
    pub wake: Arc<Notify>,
}

/// Counts of what the worker did (the relay's metrics).
#[derive(Debug, Default, Clone)]
pub struct Counts {
    /// Deliveries that reached a 2xx.
    pub delivered: Arc<Counter>,
    /// Attempts that failed.
    pub failed_attempts: Arc<Counter>,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Start the worker for `[webhooks]` (the CA store is read here, at run
/// time, after the privilege drop).
pub fn spawn(
    cfg: &crate::config::WebhookSettings,
    registry: Arc<Mutex<Registry>>,
    commits: Arc<GroupCommit>,
    wake: Arc<Notify>,
    counts: Counts,
) -> Result<tokio::task::JoinHandle<()>, rustls::Error> {
    let roots = super::client::load_roots(cfg.ca_bundle.as_deref());
    let client = Client::new(
        roots,
        super::policy::Guard::new(&cfg.allow_hosts),
        super::client::Resolver::System,
        cfg.timeout,
    )?;
    let worker = Worker {
        registry,
        commits,
        client,
        retry: Retry {
            retries: cfg.retries,
            backoff: cfg.backoff,
        },
        concurrency: cfg.concurrency,
        wake,
    };
    Ok(tokio::spawn(worker.run(Arc::new(counts))))
}

impl Worker {
    /// Deliver until the task is aborted.
    pub async fn run(self, counts: Arc<Counts>) {
        let this = Arc::new(self);
        let busy: Arc<Mutex<HashSet<i64>>> = Default::default();
        let slots = Arc::new(Semaphore::new(this.concurrency));
        let done = Arc::new(Notify::new());
        let mut purged = std::time::Instant::now();
        loop {
            if purged.elapsed() >= PURGE_EVERY {
                purged = std::time::Instant::now();
                let commits = this.commits.clone();
                let before = now() - KEEP_FINISHED.as_secs() as i64;
                let _ = tokio::task::spawn_blocking(move || {
                    commits.run(move |r| r.webhook_purge(before))
                })
                .await;
            }
            let free = slots.available_permits();
            let mut next_due = None;
            let mut started = 0usize;
            if free > 0 {
                let (registry, taken) = (this.registry.clone(), busy.clone());
                let fetched = tokio::task::spawn_blocking(move || {
                    let r = registry.lock().unwrap_or_else(|p| p.into_inner());
                    let skip = taken.lock().unwrap_or_else(|p| p.into_inner()).clone();
                    let due = r.webhook_due(now_ms(), free, &skip)?;
                    let next = r.webhook_next_due()?;
                    Ok::<_, crate::relay::registry::RegistryError>((due, next))
                })
                .await;
                match fetched {
                    Ok(Ok((due, next))) => {
                        next_due = next;
                        started = due.len();
                        for d in due {
                            let Ok(permit) = slots.clone().try_acquire_owned() else {
                                break;
                            };
                            busy.lock().unwrap_or_else(|p| p.into_inner()).insert(d.id);
                            let (this, busy, done, counts) =
                                (this.clone(), busy.clone(), done.clone(), counts.clone());
                            tokio::spawn(async move {
                                let id = d.id;
                                this.deliver(d, &counts).await;
                                busy.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
                                drop(permit);
                                done.notify_one();
                            });
                        }
                    }
                    Ok(Err(e)) => tracing::warn!(error = %e, "cannot read the webhook outbox"),
                    Err(e) => tracing::warn!(error = %e, "webhook outbox task failed"),
                }
            }
            // A retry due later: sleep until then (at most POLL). Due now
            // but all in flight, or nothing pending: wait for a finished
            // attempt, a new event or POLL (never spin on the registry).
            let now = now_ms();
            let wait = match next_due {
                _ if started > 0 => Duration::ZERO,
                Some(at) if at > now => Duration::from_millis((at - now) as u64).min(POLL),
                _ => POLL,
            };
            tokio::select! {
                _ = this.wake.notified() => {}
                _ = done.notified() => {}
                _ = tokio::time::sleep(wait.max(Duration::from_millis(1))) => {}
            }
        }
    }

    /// One attempt of `d`, recorded.
    async fn deliver(&self, d: DueDelivery, counts: &Counts) {
        let registry = self.registry.clone();
        let endpoint = d.endpoint.clone();
        let secrets = tokio::task::spawn_blocking(move || {
            registry
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .webhook_secrets(&endpoint)
        })
        .await;
        let secrets = match secrets {
            Ok(Ok(s)) if !s.is_empty() => s,
            Ok(Ok(_)) => {
                return self
                    .record(
                        &d,
                        Recorded::Failed {
                            status: None,
                            error: "the endpoint has no secret; rotate one in".into(),
                        },
                    )
                    .await;
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, endpoint = %d.endpoint, "cannot read the endpoint's secrets");
                return;
            }
            Err(_) => return,
        };
        let ts = now();
        let signature = signature_header(&secrets, &d.event, ts, d.body.as_bytes());
        drop(secrets);
        let request = Request {
            url: &d.url,
            headers: vec![
                ("webhook-id", d.event.clone()),
                ("webhook-timestamp", ts.to_string()),
                ("webhook-signature", signature),
            ],
            body: bytes::Bytes::from(d.body.clone()),
        };
        let attempt = d.attempts + 1;
        let result = self.client.post(request).await;
        let retry_or_fail =
            |status: Option<u16>, error: String| match self.retry.after(attempt, fastrand::f64()) {
                Some(wait) => Recorded::Retry {
                    status,
                    error,
                    next_at_ms: now_ms() + wait.as_millis() as i64,
                },
                None => Recorded::Failed { status, error },
            };
        let recorded = match result {
            Ok(status) => match verdict(status) {
                Verdict::Delivered => Recorded::Delivered { status },
                Verdict::Gone => Recorded::Gone,
                Verdict::Retry if (300..400).contains(&status) => retry_or_fail(
                    Some(status),
                    format!("HTTP {status}: redirects are not followed"),
                ),
                Verdict::Retry => retry_or_fail(Some(status), format!("HTTP {status}")),
            },
            Err(e) if e.permanent() => Recorded::Failed {
                status: None,
                error: e.to_string(),
            },
            Err(e) => retry_or_fail(None, e.to_string()),
        };
        match &recorded {
            Recorded::Delivered { status } => {
                counts.delivered.inc();
                tracing::info!(delivery = d.id, endpoint = %d.endpoint, id = %d.event, status, attempt, "webhook delivered");
            }
            Recorded::Gone => {
                counts.failed_attempts.inc();
                tracing::warn!(delivery = d.id, endpoint = %d.endpoint, "the receiver answered 410 Gone: endpoint disabled");
            }
            Recorded::Retry {
                error, next_at_ms, ..
            } => {
                counts.failed_attempts.inc();
                tracing::info!(delivery = d.id, endpoint = %d.endpoint, id = %d.event, attempt, %error, retry_in_ms = next_at_ms - now_ms(), "webhook attempt failed; retrying");
            }
            Recorded::Failed { error, .. } => {
                counts.failed_attempts.inc();
                tracing::warn!(delivery = d.id, endpoint = %d.endpoint, id = %d.event, attempt, %error, "webhook delivery failed for good (`voxgate relay webhook replay` sends it again)");
            }
        }
        self.record(&d, recorded).await;
    }

    async fn record(&self, d: &DueDelivery, recorded: Recorded) {
        let commits = self.commits.clone();
        let id = d.id;
        let r = tokio::task::spawn_blocking(move || {
            commits.run(move |r| r.webhook_record(id, &recorded))
        })
        .await;
        if let Ok(Err(e)) = r {
            tracing::warn!(error = %e, delivery = id, "cannot record a webhook attempt");
        }
    }
}
