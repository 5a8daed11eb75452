//! The operator API's state: its keys (id, SHA-256 of the secret, scopes,
//! expiry, revocation, last use), the rate limits' windows and when each
//! device was last seen. A key's secret is returned once, at creation, and
//! never stored.

use super::{Registry, RegistryError, now};
use crate::relay::api_key::{self, Scopes};
use crate::telemetry::Secret;
use ring::rand::{SecureRandom, SystemRandom};
use rusqlite::{OptionalExtension, params};

/// A key as `api-key create` or `rotate` made it.
#[derive(Debug)]
pub struct NewApiKey {
    /// The whole key; the registry keeps only its secret's hash.
    pub secret: Secret<String>,
    /// Its public id.
    pub id: String,
}

/// A key as the registry holds it (never the secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRow {
    /// Public id.
    pub id: String,
    /// SHA-256 of the secret.
    pub hash: [u8; 32],
    /// The operator's name for it.
    pub name: String,
    /// What it may do.
    pub scopes: Scopes,
    /// Creation, Unix seconds.
    pub created: i64,
    /// Expiry, Unix seconds (`None`: none).
    pub expires: Option<i64>,
    /// Revocation, Unix seconds.
    pub revoked: Option<i64>,
    /// Last authenticated request (recorded in batches).
    pub last_used: Option<i64>,
}

impl ApiKeyRow {
    /// `active`, `expired` or `revoked` at `at`.
    pub fn state(&self, at: i64) -> &'static str {
        match (self.revoked, self.expires) {
            (Some(_), _) => "revoked",
            (None, Some(e)) if e <= at => "expired",
            _ => "active",
        }
    }
}

/// One rate-limit window: `count` requests by `subject` under `rule` since
/// `start` (Unix seconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateRow {
    /// The rule's name.
    pub rule: String,
    /// A client address or a key id.
    pub subject: String,
    /// The window's start.
    pub start: i64,
    /// Requests counted in it.
    pub count: u32,
}

fn new_key() -> Result<(String, Secret<String>), RegistryError> {
    for _ in 0..4 {
        let mut raw = [0u8; 96];
        SystemRandom::new()
            .fill(&mut raw)
            .map_err(|_| RegistryError::Random)?;
        if let Some((id, key)) = api_key::from_random(&raw) {
            return Ok((id, Secret::new(key)));
        }
    }
    Err(RegistryError::Random)
}

impl Registry {
    /// Create a key named `name` with `scopes`, expiring at `expires`.
    pub fn create_api_key(
        &self,
        name: &str,
        scopes: Scopes,
        expires: Option<i64>,
    ) -> Result<NewApiKey, RegistryError> {
        self.atomically(|tx| tx.insert_api_key(name, scopes, expires, "api_key_created", ""))
    }

    fn insert_api_key(
        &self,
        name: &str,
        scopes: Scopes,
        expires: Option<i64>,
        event: &str,
        extra: &str,
    ) -> Result<NewApiKey, RegistryError> {
        let (id, secret) = new_key()?;
        let parsed = api_key::parse(secret.expose()).map_err(|_| RegistryError::Random)?;
        let hash = api_key::secret_hash(parsed.secret);
        self.db.execute(
            "INSERT INTO api_keys (id, hash, name, scopes, created, expires)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![id, &hash[..], name, scopes.to_string(), now(), expires],
        )?;
        self.audit(
            event,
            "",
            "",
            &format!("api key {id} ({name}): {scopes}{extra}"),
        )?;
        Ok(NewApiKey { secret, id })
    }

    /// Every key, newest first.
    pub fn api_keys(&self) -> Result<Vec<ApiKeyRow>, RegistryError> {
        let mut q = self.db.prepare_cached(
            "SELECT id, hash, name, scopes, created, expires, revoked_at, last_used
             FROM api_keys ORDER BY created DESC, rowid DESC",
        )?;
        let rows = q.query_map([], |r| {
            let hash: Vec<u8> = r.get(1)?;
            let scopes: String = r.get(3)?;
            Ok(ApiKeyRow {
                id: r.get(0)?,
                hash: hash.try_into().unwrap_or([0; 32]),
                name: r.get(2)?,
                scopes: Scopes::parse(&scopes).unwrap_or_default(),
                created: r.get(4)?,
                expires: r.get(5)?,
                revoked: r.get(6)?,
                last_used: r.get(7)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The key `id`.
    pub fn api_key(&self, id: &str) -> Result<Option<ApiKeyRow>, RegistryError> {
        Ok(self.api_keys()?.into_iter().find(|k| k.id == id))
    }

    /// Revoke the key `id`: `None` when there is none, `Some(false)` when
    /// it was revoked already.
    pub fn revoke_api_key(&self, id: &str, by: &str) -> Result<Option<bool>, RegistryError> {
        self.atomically(|tx| {
            if tx.api_key(id)?.is_none() {
                return Ok(None);
            }
            let changed = tx.db.execute(
                "UPDATE api_keys SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
                params![id, now()],
            )?;
            if changed == 1 {
                tx.audit("api_key_revoked", by, "", &format!("api key {id}"))?;
            }
            Ok(Some(changed == 1))
        })
    }

    /// A new key with the name, scopes and expiry of `id`, which stays
    /// good for `overlap_s` more seconds (then expires), so that clients
    /// move over without a gap. `None` when `id` is no active key.
    pub fn rotate_api_key(
        &self,
        id: &str,
        overlap_s: u64,
        by: &str,
    ) -> Result<Option<NewApiKey>, RegistryError> {
        self.atomically(|tx| {
            let t = now();
            let Some(old) = tx.api_key(id)?.filter(|k| k.state(t) == "active") else {
                return Ok(None);
            };
            let until = t.saturating_add(i64::try_from(overlap_s).unwrap_or(i64::MAX));
            let until = old.expires.map_or(until, |e| e.min(until));
            tx.db.execute(
                "UPDATE api_keys SET expires = ?2 WHERE id = ?1",
                params![id, until],
            )?;
            let extra = format!("; replaces {id}, which expires at {until}");
            let new = tx.insert_api_key(
                &old.name,
                old.scopes,
                old.expires,
                "api_key_rotated",
                &extra,
            )?;
            if !by.is_empty() {
                tx.audit("api_request", by, "", &format!("rotated api key {id}"))?;
            }
            Ok(Some(new))
        })
    }

    /// Record when keys were last used (a batch).
    pub fn touch_api_keys(&self, used: &[(String, i64)]) -> Result<(), RegistryError> {
        if used.is_empty() {
            return Ok(());
        }
        self.atomically(|tx| {
            let mut q = tx.db.prepare_cached(
                "UPDATE api_keys SET last_used = MAX(COALESCE(last_used, 0), ?2) WHERE id = ?1",
            )?;
            for (id, at) in used {
                q.execute(params![id, at])?;
            }
            Ok(())
        })
    }

    /// The rate limits' windows.
    pub fn rate_rows(&self) -> Result<Vec<RateRow>, RegistryError> {
        let mut q = self
            .db
            .prepare("SELECT rule, subject, start, count FROM api_rate")?;
        let rows = q.query_map([], |r| {
            Ok(RateRow {
                rule: r.get(0)?,
                subject: r.get(1)?,
                start: r.get(2)?,
                count: r.get::<_, i64>(3)?.clamp(0, i64::from(u32::MAX)) as u32,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Write rate-limit windows (a batch), and drop those that ended
    /// before `expired_before` per rule (`(rule, oldest start kept)`).
    pub fn save_rate_rows(
        &self,
        rows: &[RateRow],
        expired: &[(String, i64)],
    ) -> Result<(), RegistryError> {
        self.atomically(|tx| {
            let mut up = tx.db.prepare_cached(
                "INSERT INTO api_rate (rule, subject, start, count) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(rule, subject) DO UPDATE SET start = ?3, count = ?4",
            )?;
            for r in rows {
                up.execute(params![r.rule, r.subject, r.start, r.count])?;
            }
            for (rule, before) in expired {
                tx.db.execute(
                    "DELETE FROM api_rate WHERE rule = ?1 AND start < ?2",
                    params![rule, before],
                )?;
            }
            Ok(())
        })
    }

    /// When each device was last seen online.
    pub fn devices_seen(&self) -> Result<Vec<(String, i64)>, RegistryError> {
        let mut q = self
            .db
            .prepare("SELECT device, last_seen FROM device_seen")?;
        let rows = q.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Record devices seen online at `at`.
    pub fn save_seen(&self, devices: &[String], at: i64) -> Result<(), RegistryError> {
        if devices.is_empty() {
            return Ok(());
        }
        self.atomically(|tx| {
            let mut q = tx.db.prepare_cached(
                "INSERT INTO device_seen (device, last_seen) VALUES (?1, ?2)
                 ON CONFLICT(device) DO UPDATE SET last_seen = ?2",
            )?;
            for d in devices {
                q.execute(params![d, at])?;
            }
            Ok(())
        })
    }

    /// The id of the key whose secret hashes to `hash` (what a test uses
    /// to check that the hash, not the secret, is stored).
    pub fn api_key_by_hash(&self, hash: &[u8; 32]) -> Result<Option<String>, RegistryError> {
        Ok(self
            .db
            .query_row(
                "SELECT id FROM api_keys WHERE hash = ?1",
                params![&hash[..]],
                |r| r.get(0),
            )
            .optional()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::api_key::Scope;

    #[test]
    fn keys_are_stored_as_hashes_and_rotation_overlaps() {
        let r = Registry::in_memory().unwrap();
        let scopes = Scopes::default().with(Scope::DevicesRead);
        let k = r.create_api_key("ci", scopes, None).unwrap();
        let p = api_key::parse(k.secret.expose()).unwrap();
        assert_eq!(p.id, k.id);
        let h = api_key::secret_hash(p.secret);
        assert_eq!(r.api_key_by_hash(&h).unwrap(), Some(k.id.clone()));
        let row = r.api_key(&k.id).unwrap().unwrap();
        assert_eq!((row.scopes, row.state(now())), (scopes, "active"));
        let new = r.rotate_api_key(&k.id, 3600, "").unwrap().unwrap();
        assert_ne!(new.id, k.id);
        let old = r.api_key(&k.id).unwrap().unwrap();
        assert_eq!(old.state(now()), "active", "overlap");
        assert!(old.expires.unwrap() <= now() + 3600);
        assert_eq!(r.revoke_api_key(&k.id, "").unwrap(), Some(true));
        assert_eq!(r.revoke_api_key(&k.id, "").unwrap(), Some(false));
        assert_eq!(r.revoke_api_key("nope", "").unwrap(), None);
        assert_eq!(r.api_key(&k.id).unwrap().unwrap().state(now()), "revoked");
        assert!(r.rotate_api_key(&k.id, 0, "").unwrap().is_none());
        r.touch_api_keys(&[(new.id.clone(), 77)]).unwrap();
        assert_eq!(r.api_key(&new.id).unwrap().unwrap().last_used, Some(77));
        let events: Vec<String> = r.audit_events().unwrap().into_iter().map(|e| e.0).collect();
        assert!(
            events.contains(&"api_key_rotated".to_string()),
            "{events:?}"
        );
    }

    #[test]
    fn rate_windows_persist() {
        let r = Registry::in_memory().unwrap();
        let row = |s: &str, start| RateRow {
            rule: "calls.create/address/3/86400".into(),
            subject: s.into(),
            start,
            count: 3,
        };
        r.save_rate_rows(&[row("192.0.2.1", 100), row("192.0.2.2", 10)], &[])
            .unwrap();
        r.save_rate_rows(&[], &[("calls.create/address/3/86400".into(), 50)])
            .unwrap();
        assert_eq!(r.rate_rows().unwrap(), vec![row("192.0.2.1", 100)]);
        r.save_seen(&["gw-1".into()], 5).unwrap();
        assert_eq!(r.devices_seen().unwrap(), vec![("gw-1".into(), 5)]);
    }
}
