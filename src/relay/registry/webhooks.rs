//! The webhooks' tables: endpoints, their sealed secrets, and the durable
//! outbox (events and one delivery per endpoint).
//!
//! An event is written once ([`Registry::webhook_emit`]), in the caller's
//! transaction when it has one (an enrollment's event commits with the
//! enrollment), with a delivery for each enabled endpoint whose filter
//! takes it. The delivery worker reads due deliveries
//! ([`Registry::webhook_due`]) and records each attempt
//! ([`Registry::webhook_record`]); nothing is removed when the receiver is
//! down or the relay restarts, and the event's id (the `webhook-id`) is
//! the same on every attempt and replay.
//!
//! Secrets are sealed (AES-256-GCM) under a key derived from the audit key,
//! so a handle without the audit key cannot read them, and a backup
//! carries them with that key.

use super::{Registry, RegistryError, now};
use crate::relay::webhooks::sign::WebhookSecret;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use rusqlite::{OptionalExtension, params};

const SEAL_LABEL: &[u8] = b"voxgate webhook secrets v1";

/// A delivery's state.
pub mod state {
    /// Waiting for its next attempt.
    pub const PENDING: &str = "pending";
    /// The receiver answered 2xx.
    pub const DELIVERED: &str = "delivered";
    /// Every attempt failed, or it can never succeed.
    pub const FAILED: &str = "failed";
}

/// One endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointRow {
    /// Its id (`ep_…`).
    pub id: String,
    /// Where deliveries go (`https://…`).
    pub url: String,
    /// The event types it takes; empty: all.
    pub events: Vec<String>,
    /// The operator's note.
    pub description: String,
    /// Deliveries are made only while enabled.
    pub enabled: bool,
    /// Why it was disabled (`410 Gone`, the operator).
    pub disabled_reason: Option<String>,
    /// Unix seconds.
    pub created: i64,
    /// Secrets in use (more than one during a rotation).
    pub secrets: usize,
}

impl EndpointRow {
    /// Whether this endpoint takes events of `kind`.
    pub fn takes(&self, kind: &str) -> bool {
        self.events.is_empty() || self.events.iter().any(|e| e == kind)
    }
}

/// One delivery, for listings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryRow {
    /// Its number.
    pub id: i64,
    /// The event's id (the `webhook-id`).
    pub event: String,
    /// The event's type.
    pub kind: String,
    /// The endpoint.
    pub endpoint: String,
    /// [`state`].
    pub state: String,
    /// Attempts made.
    pub attempts: u32,
    /// When the next attempt is due (Unix milliseconds), while pending.
    pub next_at_ms: i64,
    /// The HTTP status of the last attempt, if one came back.
    pub last_status: Option<u16>,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// Unix seconds of the last change.
    pub updated: i64,
}

/// A delivery due now, with what sending it needs.
#[derive(Debug, Clone)]
pub struct DueDelivery {
    /// The delivery's number.
    pub id: i64,
    /// The endpoint's id.
    pub endpoint: String,
    /// The endpoint's URL.
    pub url: String,
    /// The event's id: the `webhook-id`.
    pub event: String,
    /// The body (JSON).
    pub body: String,
    /// Attempts already made.
    pub attempts: u32,
}

/// The result of one attempt, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// 2xx.
    Delivered {
        /// The status.
        status: u16,
    },
    /// Failed; tried again at `next_at_ms`.
    Retry {
        /// The status, if an answer came.
        status: Option<u16>,
        /// What went wrong.
        error: String,
        /// The next attempt (Unix milliseconds).
        next_at_ms: i64,
    },
    /// Failed for good (attempts spent, or never deliverable).
    Failed {
        /// The status, if an answer came.
        status: Option<u16>,
        /// What went wrong.
        error: String,
    },
    /// 410 Gone: the endpoint is disabled.
    Gone,
}

fn random_id(prefix: &str, bytes: usize) -> Result<String, RegistryError> {
    use ring::rand::SecureRandom;
    let mut raw = vec![0u8; bytes];
    ring::rand::SystemRandom::new()
        .fill(&mut raw)
        .map_err(|_| RegistryError::Random)?;
    Ok(format!("{prefix}{}", B64URL.encode(raw)))
}

/// A fresh event id, `msg_` + 22 characters (128 random bits).
pub fn new_event_id() -> Result<String, RegistryError> {
    random_id("msg_", 16)
}

fn events_of(text: String) -> Vec<String> {
    text.split(',')
        .filter(|e| !e.is_empty())
        .map(str::to_string)
        .collect()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Registry {
    fn webhook_seal_key(&self) -> Result<LessSafeKey, RegistryError> {
        let key = self.chain.key().ok_or(RegistryError::NoAuditKey)?;
        let raw = key.derive(SEAL_LABEL);
        let unbound = UnboundKey::new(&AES_256_GCM, &raw[..]).map_err(|_| RegistryError::Random)?;
        Ok(LessSafeKey::new(unbound))
    }

    fn seal_secret(
        &self,
        endpoint: &str,
        secret: &WebhookSecret,
    ) -> Result<Vec<u8>, RegistryError> {
        use ring::rand::SecureRandom;
        let key = self.webhook_seal_key()?;
        let mut nonce = [0u8; NONCE_LEN];
        ring::rand::SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| RegistryError::Random)?;
        let mut buf = secret.bytes().to_vec();
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(endpoint.as_bytes()),
            &mut buf,
        )
        .map_err(|_| RegistryError::Random)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        zeroize::Zeroize::zeroize(&mut buf);
        Ok(out)
    }

    fn unseal_secret(&self, endpoint: &str, sealed: &[u8]) -> Result<WebhookSecret, RegistryError> {
        let key = self.webhook_seal_key()?;
        let bad = || {
            RegistryError::Damaged(format!(
                "a secret of webhook endpoint {endpoint} does not open"
            ))
        };
        if sealed.len() < NONCE_LEN + 16 {
            return Err(bad());
        }
        let (nonce, ct) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| bad())?;
        let mut buf = zeroize::Zeroizing::new(ct.to_vec());
        let plain = key
            .open_in_place(nonce, Aad::from(endpoint.as_bytes()), &mut buf)
            .map_err(|_| bad())?;
        WebhookSecret::from_bytes(plain).map_err(|_| bad())
    }

    /// Add an endpoint with a fresh secret, returned to be shown once.
    pub fn webhook_endpoint_add(
        &self,
        url: &str,
        events: &[String],
        description: &str,
    ) -> Result<(EndpointRow, WebhookSecret), RegistryError> {
        let id = random_id("ep_", 9)?;
        let secret = WebhookSecret::generate().map_err(|_| RegistryError::Random)?;
        let sealed = self.seal_secret(&id, &secret)?;
        self.atomically(|r| {
            r.db.execute(
                "INSERT INTO webhook_endpoints (id, url, events, description, created)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![id, url, events.join(","), description, now()],
            )?;
            r.db.execute(
                "INSERT INTO webhook_secrets (endpoint, sealed, created) VALUES (?1, ?2, ?3)",
                params![id, sealed, now()],
            )?;
            r.audit("webhook_added", "", "", &format!("{id} {url}"))
        })?;
        let row = self
            .webhook_endpoint(&id)?
            .ok_or_else(|| RegistryError::Commit("the endpoint vanished".into()))?;
        Ok((row, secret))
    }

    /// Every endpoint, oldest first.
    pub fn webhook_endpoints(&self) -> Result<Vec<EndpointRow>, RegistryError> {
        let mut st = self.db.prepare(
            "SELECT id, url, events, description, enabled, disabled_reason, created,
                    (SELECT COUNT(*) FROM webhook_secrets s WHERE s.endpoint = e.id
                       AND (s.expires IS NULL OR s.expires > ?1))
             FROM webhook_endpoints e ORDER BY created, id",
        )?;
        let rows = st.query_map(params![now()], |r| {
            Ok(EndpointRow {
                id: r.get(0)?,
                url: r.get(1)?,
                events: events_of(r.get(2)?),
                description: r.get(3)?,
                enabled: r.get::<_, i64>(4)? != 0,
                disabled_reason: r.get(5)?,
                created: r.get(6)?,
                secrets: r.get::<_, i64>(7)? as usize,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// One endpoint.
    pub fn webhook_endpoint(&self, id: &str) -> Result<Option<EndpointRow>, RegistryError> {
        Ok(self.webhook_endpoints()?.into_iter().find(|e| e.id == id))
    }

    /// Change an endpoint: its URL, filter, note, or enabled state (what is
    /// `None` stays). `false` when there is no such endpoint.
    pub fn webhook_endpoint_update(
        &self,
        id: &str,
        url: Option<&str>,
        events: Option<&[String]>,
        description: Option<&str>,
        enabled: Option<bool>,
    ) -> Result<bool, RegistryError> {
        self.atomically(|r| {
            let n = r.db.execute(
                "UPDATE webhook_endpoints SET url = COALESCE(?2, url),
                     events = COALESCE(?3, events), description = COALESCE(?4, description),
                     enabled = COALESCE(?5, enabled),
                     disabled_reason = CASE WHEN ?5 IS NULL THEN disabled_reason
                                            WHEN ?5 = 1 THEN NULL ELSE 'disabled by the operator' END
                 WHERE id = ?1",
                params![id, url, events.map(|e| e.join(",")), description, enabled],
            )?;
            if n > 0 {
                r.audit("webhook_changed", "", "", id)?;
            }
            Ok(n > 0)
        })
    }

    /// Remove an endpoint, its secrets and deliveries. `false` when there
    /// is no such endpoint.
    pub fn webhook_endpoint_remove(&self, id: &str) -> Result<bool, RegistryError> {
        self.atomically(|r| {
            r.db.execute(
                "DELETE FROM webhook_deliveries WHERE endpoint = ?1",
                params![id],
            )?;
            r.db.execute(
                "DELETE FROM webhook_secrets WHERE endpoint = ?1",
                params![id],
            )?;
            let n =
                r.db.execute("DELETE FROM webhook_endpoints WHERE id = ?1", params![id])?;
            if n > 0 {
                r.audit("webhook_removed", "", "", id)?;
            }
            Ok(n > 0)
        })
    }

    /// A new secret for `id`; the ones in use stay valid for `overlap_s`
    /// seconds (each delivery meanwhile carries a signature per secret).
    /// `None` when there is no such endpoint.
    pub fn webhook_rotate_secret(
        &self,
        id: &str,
        overlap_s: i64,
    ) -> Result<Option<WebhookSecret>, RegistryError> {
        if self.webhook_endpoint(id)?.is_none() {
            return Ok(None);
        }
        let secret = WebhookSecret::generate().map_err(|_| RegistryError::Random)?;
        let sealed = self.seal_secret(id, &secret)?;
        let at = now();
        self.atomically(|r| {
            r.db.execute(
                "UPDATE webhook_secrets SET expires = MIN(COALESCE(expires, ?2), ?2)
                 WHERE endpoint = ?1",
                params![id, at + overlap_s.max(0)],
            )?;
            // One second newer than any other: the current one sorts first.
            r.db.execute(
                "INSERT INTO webhook_secrets (endpoint, sealed, created) VALUES (?1, ?2,
                   MAX(?3, (SELECT COALESCE(MAX(created), 0) + 1 FROM webhook_secrets WHERE endpoint = ?1)))",
                params![id, sealed, at],
            )?;
            r.audit("webhook_secret_rotated", "", "", &format!("{id}: old secret valid {overlap_s} s more"))
        })?;
        Ok(Some(secret))
    }

    /// The secrets `endpoint` signs with now, the newest first; expired
    /// ones are deleted.
    pub fn webhook_secrets(&self, endpoint: &str) -> Result<Vec<WebhookSecret>, RegistryError> {
        let at = now();
        self.db.execute(
            "DELETE FROM webhook_secrets WHERE endpoint = ?1 AND expires IS NOT NULL AND expires <= ?2",
            params![endpoint, at],
        )?;
        let mut st = self.db.prepare(
            "SELECT sealed FROM webhook_secrets WHERE endpoint = ?1 ORDER BY created DESC, rowid DESC",
        )?;
        let sealed: Vec<Vec<u8>> = st
            .query_map(params![endpoint], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        sealed
            .iter()
            .map(|s| self.unseal_secret(endpoint, s))
            .collect()
    }

    /// Write an event to the outbox with a delivery for each enabled
    /// endpoint that takes `kind` (or only for `only`, whatever its
    /// filter: a test message). Returns the deliveries made (none: nothing
    /// is written).
    pub fn webhook_emit(
        &self,
        id: &str,
        kind: &str,
        body: &str,
        only: Option<&str>,
    ) -> Result<usize, RegistryError> {
        let targets: Vec<String> = self
            .webhook_endpoints()?
            .into_iter()
            .filter(|e| match only {
                Some(one) => e.id == one,
                None => e.enabled && e.takes(kind),
            })
            .map(|e| e.id)
            .collect();
        if targets.is_empty() {
            return Ok(0);
        }
        let at_ms = now_ms();
        self.atomically(|r| {
            r.db.execute(
                "INSERT OR IGNORE INTO webhook_events (id, type, created, body) VALUES (?1, ?2, ?3, ?4)",
                params![id, kind, now(), body],
            )?;
            for t in &targets {
                r.db.execute(
                    "INSERT INTO webhook_deliveries (event, endpoint, next_at_ms, updated)
                     VALUES (?1, ?2, ?3, ?4)",
                    params![id, t, at_ms, now()],
                )?;
            }
            Ok::<_, RegistryError>(())
        })?;
        Ok(targets.len())
    }

    /// Up to `limit` pending deliveries due at `now_ms` to enabled
    /// endpoints, the oldest first, skipping the numbers in `busy`.
    pub fn webhook_due(
        &self,
        now_ms: i64,
        limit: usize,
        busy: &std::collections::HashSet<i64>,
    ) -> Result<Vec<DueDelivery>, RegistryError> {
        let mut st = self.db.prepare(
            "SELECT d.id, d.endpoint, e.url, d.event, v.body, d.attempts
             FROM webhook_deliveries d
             JOIN webhook_endpoints e ON e.id = d.endpoint
             JOIN webhook_events v ON v.id = d.event
             WHERE d.state = 'pending' AND d.next_at_ms <= ?1 AND e.enabled = 1
             ORDER BY d.next_at_ms, d.id LIMIT ?2",
        )?;
        let rows = st.query_map(params![now_ms, (limit + busy.len()) as i64], |r| {
            Ok(DueDelivery {
                id: r.get(0)?,
                endpoint: r.get(1)?,
                url: r.get(2)?,
                event: r.get(3)?,
                body: r.get(4)?,
                attempts: r.get::<_, i64>(5)? as u32,
            })
        })?;
        let mut out = Vec::new();
        for row in rows {
            let row = row?;
            if !busy.contains(&row.id) && out.len() < limit {
                out.push(row);
            }
        }
        Ok(out)
    }

    /// The earliest next attempt of a pending delivery (Unix ms).
    pub fn webhook_next_due(&self) -> Result<Option<i64>, RegistryError> {
        Ok(self.db.query_row(
            "SELECT MIN(d.next_at_ms) FROM webhook_deliveries d JOIN webhook_endpoints e ON e.id = d.endpoint
             WHERE d.state = 'pending' AND e.enabled = 1",
            [],
            |r| r.get(0),
        )?)
    }

    /// Record an attempt of delivery `id`. A [`Recorded::Gone`] disables
    /// its endpoint (audited).
    pub fn webhook_record(&self, id: i64, result: &Recorded) -> Result<(), RegistryError> {
        let (st, status, error, next): (&str, Option<u16>, Option<&str>, Option<i64>) = match result
        {
            Recorded::Delivered { status } => (state::DELIVERED, Some(*status), None, None),
            Recorded::Retry {
                status,
                error,
                next_at_ms,
            } => (state::PENDING, *status, Some(error), Some(*next_at_ms)),
            Recorded::Failed { status, error } => (state::FAILED, *status, Some(error), None),
            Recorded::Gone => (
                state::FAILED,
                Some(410),
                Some("410 Gone: the endpoint is disabled"),
                None,
            ),
        };
        self.db.execute(
            "UPDATE webhook_deliveries SET state = ?2, attempts = attempts + 1,
                 last_status = ?3, last_error = ?4, next_at_ms = COALESCE(?5, next_at_ms), updated = ?6
             WHERE id = ?1",
            params![id, st, status, error, next, now()],
        )?;
        if *result == Recorded::Gone {
            let endpoint: Option<String> = self
                .db
                .query_row(
                    "SELECT endpoint FROM webhook_deliveries WHERE id = ?1",
                    params![id],
                    |r| r.get(0),
                )
                .optional()?;
            if let Some(ep) = endpoint {
                self.db.execute(
                    "UPDATE webhook_endpoints SET enabled = 0, disabled_reason = '410 Gone from the receiver' WHERE id = ?1",
                    params![ep],
                )?;
                self.audit(
                    "webhook_disabled",
                    "",
                    "",
                    &format!("{ep}: the receiver answered 410 Gone"),
                )?;
            }
        }
        Ok(())
    }

    /// The newest `limit` deliveries, of one endpoint or all.
    pub fn webhook_deliveries(
        &self,
        endpoint: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DeliveryRow>, RegistryError> {
        let mut st = self.db.prepare(
            "SELECT d.id, d.event, v.type, d.endpoint, d.state, d.attempts, d.next_at_ms,
                    d.last_status, d.last_error, d.updated
             FROM webhook_deliveries d JOIN webhook_events v ON v.id = d.event
             WHERE ?1 IS NULL OR d.endpoint = ?1 ORDER BY d.id DESC LIMIT ?2",
        )?;
        let rows = st.query_map(params![endpoint, limit as i64], |r| {
            Ok(DeliveryRow {
                id: r.get(0)?,
                event: r.get(1)?,
                kind: r.get(2)?,
                endpoint: r.get(3)?,
                state: r.get(4)?,
                attempts: r.get::<_, i64>(5)? as u32,
                next_at_ms: r.get(6)?,
                last_status: r.get::<_, Option<i64>>(7)?.map(|s| s as u16),
                last_error: r.get(8)?,
                updated: r.get(9)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Send delivery `id` (of `endpoint`, when given) again, now, with
    /// the same `webhook-id` (its attempts start over). `false` when there
    /// is no such delivery.
    pub fn webhook_replay(&self, id: i64, endpoint: Option<&str>) -> Result<bool, RegistryError> {
        let n = self.db.execute(
            "UPDATE webhook_deliveries SET state = 'pending', attempts = 0, next_at_ms = ?2, updated = ?3
             WHERE id = ?1 AND (?4 IS NULL OR endpoint = ?4)",
            params![id, now_ms(), now(), endpoint],
        )?;
        Ok(n > 0)
    }

    /// Forget deliveries that ended (delivered or failed) before `before`
    /// (Unix seconds), and the events left without a delivery. Returns
    /// the deliveries removed.
    pub fn webhook_purge(&self, before: i64) -> Result<usize, RegistryError> {
        self.atomically(|r| {
            let n = r.db.execute(
                "DELETE FROM webhook_deliveries WHERE state != 'pending' AND updated < ?1",
                params![before],
            )?;
            r.db.execute(
                "DELETE FROM webhook_events WHERE id NOT IN (SELECT event FROM webhook_deliveries)",
                [],
            )?;
            Ok(n)
        })
    }

    /// Send every failed delivery of `endpoint` again; returns how many.
    pub fn webhook_replay_failed(&self, endpoint: &str) -> Result<usize, RegistryError> {
        Ok(self.db.execute(
            "UPDATE webhook_deliveries SET state = 'pending', attempts = 0, next_at_ms = ?2, updated = ?3
             WHERE endpoint = ?1 AND state = 'failed'",
            params![endpoint, now_ms(), now()],
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outbox_keeps_the_id_and_records_attempts() {
        let r = Registry::in_memory().unwrap();
        let (ep, secret) = r
            .webhook_endpoint_add("https://example.com/hook", &["device.online".into()], "")
            .unwrap();
        assert!(ep.enabled);
        assert_eq!(
            r.webhook_secrets(&ep.id).unwrap()[0].bytes(),
            secret.bytes()
        );
        assert_eq!(
            r.webhook_emit("msg_a", "device.offline", "{}", None)
                .unwrap(),
            0
        );
        assert_eq!(
            r.webhook_emit("msg_b", "device.online", "{}", None)
                .unwrap(),
            1
        );
        let busy = Default::default();
        let due = r.webhook_due(now_ms(), 10, &busy).unwrap();
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].event, "msg_b");
        let retry = Recorded::Retry {
            status: Some(500),
            error: "500".into(),
            next_at_ms: now_ms() + 60_000,
        };
        r.webhook_record(due[0].id, &retry).unwrap();
        assert!(r.webhook_due(now_ms(), 10, &busy).unwrap().is_empty());
        assert!(!r.webhook_replay(due[0].id, Some("ep_other")).unwrap());
        assert!(r.webhook_replay(due[0].id, Some(&ep.id)).unwrap());
        let again = r.webhook_due(now_ms(), 10, &busy).unwrap();
        assert_eq!(again[0].event, "msg_b");
        r.webhook_record(again[0].id, &Recorded::Gone).unwrap();
        let ep = r.webhook_endpoint(&ep.id).unwrap().unwrap();
        assert!(!ep.enabled);
        assert_eq!(
            r.webhook_emit("msg_c", "device.online", "{}", None)
                .unwrap(),
            0
        );
        let d = r.webhook_deliveries(None, 10).unwrap();
        assert_eq!(
            (d[0].state.as_str(), d[0].attempts, d[0].last_status),
            ("failed", 1, Some(410))
        );
    }

    #[test]
    fn rotation_keeps_both_secrets_for_the_overlap() {
        let r = Registry::in_memory().unwrap();
        let (ep, old) = r
            .webhook_endpoint_add("https://example.com/", &[], "")
            .unwrap();
        let new = r.webhook_rotate_secret(&ep.id, 3600).unwrap().unwrap();
        let s = r.webhook_secrets(&ep.id).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].bytes(), new.bytes());
        assert_eq!(s[1].bytes(), old.bytes());
        r.webhook_rotate_secret(&ep.id, 0).unwrap().unwrap();
        assert_eq!(r.webhook_secrets(&ep.id).unwrap().len(), 1);
        assert!(r.webhook_rotate_secret("ep_none", 0).unwrap().is_none());
        // Sealed at rest: the key's bytes are not in the table.
        let sealed: Vec<u8> =
            r.db.query_row("SELECT sealed FROM webhook_secrets LIMIT 1", [], |x| {
                x.get(0)
            })
            .unwrap();
        assert!(
            !sealed
                .windows(8)
                .any(|w| old.bytes().windows(8).any(|k| k == w))
        );
    }
}
