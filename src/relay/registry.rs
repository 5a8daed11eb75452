//! The relay's device registry: an embedded SQLite database holding
//! enrollment tokens (as SHA-256 hashes only, with expiry and single use),
//! devices, their certificate serials, revocations, and an audit trail.
//!
//! A token is shown once, at creation, and never stored: the database holds
//! its hash. Redeeming is one conditional UPDATE, so two devices racing with
//! the same token cannot both win.
//!
//! Writes that belong together run in one transaction
//! ([`Registry::atomically`]): an enrollment consumes its token, records the
//! device and its certificate and audits it in one commit, so no token is
//! ever spent without the device it enrolled (and each enrollment costs one
//! journal sync, not four).

use crate::telemetry::Secret;
use ring::digest::{SHA256, digest};
use ring::rand::{SecureRandom, SystemRandom};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use thiserror::Error;

/// Registry failures.
#[derive(Debug, Error)]
pub enum RegistryError {
    /// The database failed.
    #[error("device registry: {0}")]
    Db(#[from] rusqlite::Error),
    /// The random generator failed.
    #[error("system random generator failed")]
    Random,
    /// No such device.
    #[error("no device `{0}` in the registry (see `voxgate relay devices`)")]
    UnknownDevice(String),
    /// The transaction a write belonged to did not commit.
    #[error("device registry: the write was not committed: {0}")]
    Commit(String),
    /// The registry was written by a newer release.
    #[error(
        "device registry: its schema is version {found}, newer than this voxgate knows ({known}); run the release that upgraded it, or restore the state directory's backup"
    )]
    Newer {
        /// The registry's schema version.
        found: i64,
        /// The newest this build knows.
        known: i64,
    },
}

/// The registry's schema, one step per change: a registry records in
/// `PRAGMA user_version` how many steps it has taken, and [`Registry::open`]
/// takes the rest, in one transaction, before anything else reads it. Steps
/// are only ever appended. Step 1 is the schema of the releases before
/// versioning (`IF NOT EXISTS`: a registry they wrote is at version 0 and
/// already has it).
const MIGRATIONS: &[&str] = &["CREATE TABLE IF NOT EXISTS tokens (
         hash BLOB PRIMARY KEY,
         created INTEGER NOT NULL,
         expires INTEGER NOT NULL,
         used_at INTEGER,
         used_by TEXT,
         note TEXT NOT NULL DEFAULT '');
     CREATE TABLE IF NOT EXISTS devices (
         id TEXT PRIMARY KEY,
         enrolled INTEGER NOT NULL,
         revoked INTEGER);
     CREATE TABLE IF NOT EXISTS certificates (
         serial TEXT PRIMARY KEY,
         device TEXT NOT NULL REFERENCES devices(id),
         not_before INTEGER NOT NULL,
         not_after INTEGER NOT NULL);
     CREATE TABLE IF NOT EXISTS audit (
         ts INTEGER NOT NULL,
         event TEXT NOT NULL,
         source TEXT NOT NULL DEFAULT '',
         device TEXT NOT NULL DEFAULT '',
         detail TEXT NOT NULL DEFAULT '');"];

/// Bring `db` to the newest schema. Concurrent openers (the relay and a
/// `relay token create`) serialize on the write lock and the second finds
/// nothing left to do.
fn migrate(db: &mut Connection) -> Result<i64, RegistryError> {
    let known = MIGRATIONS.len() as i64;
    let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let found: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if found > known {
        return Err(RegistryError::Newer { found, known });
    }
    for (step, sql) in (1..).zip(MIGRATIONS).skip(found.max(0) as usize) {
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", step)?;
    }
    tx.commit()?;
    Ok(known)
}

/// Why a token was not accepted. The device is told only "rejected"; the
/// reason goes to the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRejection {
    /// No token with this hash.
    Unknown,
    /// Already redeemed.
    Used,
    /// Past its expiry.
    Expired,
}

impl TokenRejection {
    /// Audit log wording.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenRejection::Unknown => "unknown token",
            TokenRejection::Used => "token already used",
            TokenRejection::Expired => "token expired",
        }
    }
}

/// A row of `voxgate relay devices`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRow {
    /// Device id.
    pub id: String,
    /// Enrollment time, Unix seconds.
    pub enrolled: i64,
    /// Expiry of the newest certificate, Unix seconds.
    pub cert_expires: Option<i64>,
    /// Revocation time, if revoked.
    pub revoked: Option<i64>,
}

/// Current Unix time in seconds.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn token_hash(token: &str) -> Vec<u8> {
    digest(&SHA256, token.trim().as_bytes()).as_ref().to_vec()
}

/// The registry.
#[derive(Debug)]
pub struct Registry {
    db: Connection,
}

impl Registry {
    /// Open (creating if needed) the registry at `path`, mode 0600.
    pub fn open(path: &Path) -> Result<Self, RegistryError> {
        let existed = path.exists();
        let db = Connection::open(path)?;
        if !existed {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
        }
        Self::init(db)
    }

    /// An in-memory registry (tests, benchmarks).
    pub fn in_memory() -> Result<Self, RegistryError> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(mut db: Connection) -> Result<Self, RegistryError> {
        // Another process (`voxgate relay token create`, `relay revoke`)
        // may hold the write lock for a moment: wait for it, bounded.
        db.busy_timeout(Duration::from_secs(2))?;
        // temp_store = MEMORY: a large transaction (a group commit of
        // many enrollments, each in a savepoint) spills its statement
        // journal to a temporary file otherwise, and the relay's sandbox
        // lets it create none (SQLITE_CANTOPEN: "unable to open database
        // file", seen in benches/identity at 400 enrollments/s).
        db.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA temp_store = MEMORY;
             PRAGMA foreign_keys = ON;",
        )?;
        migrate(&mut db)?;
        Ok(Registry { db })
    }

    /// Run `f` in one transaction: every registry write it makes is
    /// committed together when it returns `Ok`, and none when it returns
    /// `Err` (rolled back). Inside another `atomically` it is a savepoint:
    /// its writes are undone alone on `Err`, and on `Ok` they commit with
    /// the enclosing transaction.
    pub fn atomically<T, E>(&self, f: impl FnOnce(&Registry) -> Result<T, E>) -> Result<T, E>
    where
        E: From<RegistryError>,
    {
        let outer = self.db.is_autocommit();
        // IMMEDIATE: take the write lock now, so that a concurrent writer
        // (`voxgate relay revoke` in another process) makes this wait at
        // the start rather than fail at the first write.
        let (begin, commit, rollback) = if outer {
            ("BEGIN IMMEDIATE", "COMMIT", "ROLLBACK")
        } else {
            ("SAVEPOINT w", "RELEASE w", "ROLLBACK TO w; RELEASE w")
        };
        self.db.execute_batch(begin).map_err(RegistryError::from)?;
        match f(self) {
            Ok(v) => {
                if let Err(e) = self.db.execute_batch(commit) {
                    let _ = self.db.execute_batch(rollback);
                    return Err(RegistryError::from(e).into());
                }
                Ok(v)
            }
            Err(e) => {
                let _ = self.db.execute_batch(rollback);
                Err(e)
            }
        }
    }

    /// Create a single-use token valid for `ttl`. The returned secret is the
    /// only copy; the registry keeps its hash.
    pub fn create_token(&self, ttl: Duration, note: &str) -> Result<Secret<String>, RegistryError> {
        let mut raw = [0u8; 20];
        SystemRandom::new()
            .fill(&mut raw)
            .map_err(|_| RegistryError::Random)?;
        // Base32 without padding: 32 characters, easy to read out by phone.
        let token = Secret::new(base32(&raw));
        let t = now();
        self.db.execute(
            "INSERT INTO tokens (hash, created, expires, note) VALUES (?1, ?2, ?3, ?4)",
            params![
                token_hash(token.expose()),
                t,
                t + ttl.as_secs() as i64,
                note
            ],
        )?;
        self.audit(
            "token_created",
            "",
            "",
            &format!("expires in {} s", ttl.as_secs()),
        )?;
        Ok(token)
    }

    /// Redeem `token` for `device`: succeeds once, before expiry.
    pub fn redeem(
        &self,
        token: &str,
        device: &str,
        at: i64,
    ) -> Result<Result<(), TokenRejection>, RegistryError> {
        let hash = token_hash(token);
        let changed = self.db.execute(
            "UPDATE tokens SET used_at = ?2, used_by = ?3
             WHERE hash = ?1 AND used_at IS NULL AND expires > ?2",
            params![hash, at, device],
        )?;
        if changed == 1 {
            return Ok(Ok(()));
        }
        let row: Option<(Option<i64>, i64)> = self
            .db
            .query_row(
                "SELECT used_at, expires FROM tokens WHERE hash = ?1",
                params![hash],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        Ok(Err(match row {
            None => TokenRejection::Unknown,
            Some((Some(_), _)) => TokenRejection::Used,
            Some((None, _)) => TokenRejection::Expired,
        }))
    }

    /// Record a device (idempotent) and a certificate issued to it.
    pub fn record_certificate(
        &self,
        device: &str,
        serial: &str,
        not_before: i64,
        not_after: i64,
    ) -> Result<(), RegistryError> {
        self.db.execute(
            "INSERT INTO devices (id, enrolled) VALUES (?1, ?2) ON CONFLICT(id) DO NOTHING",
            params![device, now()],
        )?;
        self.db.execute(
            "INSERT INTO certificates (serial, device, not_before, not_after) VALUES (?1, ?2, ?3, ?4)",
            params![serial, device, not_before, not_after],
        )?;
        Ok(())
    }

    /// Mark a device revoked. Returns false if it already was.
    pub fn revoke(&self, device: &str) -> Result<bool, RegistryError> {
        let exists: bool = self
            .db
            .query_row(
                "SELECT 1 FROM devices WHERE id = ?1",
                params![device],
                |_| Ok(true),
            )
            .optional()?
            .unwrap_or(false);
        if !exists {
            return Err(RegistryError::UnknownDevice(device.into()));
        }
        let changed = self.db.execute(
            "UPDATE devices SET revoked = ?2 WHERE id = ?1 AND revoked IS NULL",
            params![device, now()],
        )?;
        self.audit("device_revoked", "", device, "")?;
        Ok(changed == 1)
    }

    /// Whether `device` is revoked.
    pub fn is_revoked(&self, device: &str) -> Result<bool, RegistryError> {
        Ok(self
            .db
            .query_row(
                "SELECT revoked IS NOT NULL FROM devices WHERE id = ?1",
                params![device],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or(false))
    }

    /// Ids of every revoked device.
    pub fn revoked_devices(&self) -> Result<Vec<String>, RegistryError> {
        let mut q = self
            .db
            .prepare("SELECT id FROM devices WHERE revoked IS NOT NULL")?;
        let rows = q.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Every device, for `voxgate relay devices`.
    pub fn devices(&self) -> Result<Vec<DeviceRow>, RegistryError> {
        let mut q = self.db.prepare(
            "SELECT d.id, d.enrolled, MAX(c.not_after), d.revoked
             FROM devices d LEFT JOIN certificates c ON c.device = d.id
             GROUP BY d.id ORDER BY d.id",
        )?;
        let rows = q.query_map([], |r| {
            Ok(DeviceRow {
                id: r.get(0)?,
                enrolled: r.get(1)?,
                cert_expires: r.get(2)?,
                revoked: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Append an audit event.
    pub fn audit(
        &self,
        event: &str,
        source: &str,
        device: &str,
        detail: &str,
    ) -> Result<(), RegistryError> {
        self.db.execute(
            "INSERT INTO audit (ts, event, source, device, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![now(), event, source, device, detail],
        )?;
        Ok(())
    }

    /// Audit events, oldest first: (event, source, device, detail).
    pub fn audit_events(&self) -> Result<Vec<(String, String, String, String)>, RegistryError> {
        let mut q = self
            .db
            .prepare("SELECT event, source, device, detail FROM audit ORDER BY rowid")?;
        let rows = q.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

/// RFC 4648 base32 (uppercase, no padding).
fn base32(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::with_capacity(bytes.len() * 8 / 5 + 1);
    let (mut buf, mut bits) = (0u32, 0u32);
    for &b in bytes {
        buf = (buf << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((buf >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((buf << (5 - bits)) & 31) as usize] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(r: &Registry) -> i64 {
        r.db.pragma_query_value(None, "user_version", |row| row.get(0))
            .unwrap()
    }

    #[test]
    fn schema_is_versioned_and_old_registries_upgrade_in_place() {
        let known = MIGRATIONS.len() as i64;
        assert_eq!(version(&Registry::in_memory().unwrap()), known);

        let dir = std::env::temp_dir().join(format!("vg-reg-mig-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // A registry as releases before versioning left it: the tables,
        // user_version 0, a device and a token in it.
        let path = dir.join("registry.sqlite3");
        {
            let old = Connection::open(&path).unwrap();
            old.execute_batch(MIGRATIONS[0]).unwrap();
            old.execute(
                "INSERT INTO devices (id, enrolled) VALUES ('shop-5', 7)",
                [],
            )
            .unwrap();
            let v: i64 = old
                .pragma_query_value(None, "user_version", |r| r.get(0))
                .unwrap();
            assert_eq!(v, 0);
        }
        let r = Registry::open(&path).unwrap();
        assert_eq!(version(&r), known);
        assert_eq!(r.devices().unwrap()[0].id, "shop-5", "data kept");
        drop(r);
        // Opening again (the relay, then `relay token create`) is a no-op.
        assert_eq!(version(&Registry::open(&path).unwrap()), known);

        // A registry from a newer release is refused, not half-read.
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", known + 1)
            .unwrap();
        let e = Registry::open(&path).unwrap_err();
        assert!(
            matches!(e, RegistryError::Newer { found, .. } if found == known + 1),
            "{e}"
        );
        assert!(e.to_string().contains("newer than this voxgate"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn tokens_are_single_use_expiring_and_stored_hashed() {
        let r = Registry::in_memory().unwrap();
        let tok = r
            .create_token(Duration::from_secs(3600), "shop 12")
            .unwrap();
        assert_eq!(tok.expose().len(), 32);
        // Only the hash is stored.
        let stored: Vec<u8> =
            r.db.query_row("SELECT hash FROM tokens", [], |row| row.get(0))
                .unwrap();
        assert_eq!(stored.len(), 32);
        assert!(
            !stored
                .windows(8)
                .any(|w| tok.expose().as_bytes().windows(8).any(|t| t == w))
        );
        let t = now();
        assert_eq!(
            r.redeem("WRONGTOKEN", "gw-1", t).unwrap(),
            Err(TokenRejection::Unknown)
        );
        assert_eq!(r.redeem(tok.expose(), "gw-1", t).unwrap(), Ok(()));
        assert_eq!(
            r.redeem(tok.expose(), "gw-2", t).unwrap(),
            Err(TokenRejection::Used)
        );
        let short = r.create_token(Duration::from_secs(60), "").unwrap();
        assert_eq!(
            r.redeem(short.expose(), "gw-3", t + 61).unwrap(),
            Err(TokenRejection::Expired)
        );
    }

    #[test]
    fn devices_certificates_and_revocation() {
        let r = Registry::in_memory().unwrap();
        r.record_certificate("gw-1", "01ab", 100, 200).unwrap();
        r.record_certificate("gw-1", "02cd", 150, 300).unwrap();
        r.record_certificate("gw-2", "03ef", 100, 250).unwrap();
        let d = r.devices().unwrap();
        assert_eq!(d.len(), 2);
        assert_eq!((d[0].id.as_str(), d[0].cert_expires), ("gw-1", Some(300)));
        assert!(!r.is_revoked("gw-1").unwrap());
        assert!(r.revoke("gw-1").unwrap());
        assert!(!r.revoke("gw-1").unwrap());
        assert!(r.is_revoked("gw-1").unwrap());
        assert!(matches!(
            r.revoke("ghost"),
            Err(RegistryError::UnknownDevice(_))
        ));
        let events: Vec<String> = r.audit_events().unwrap().into_iter().map(|e| e.0).collect();
        assert!(events.contains(&"device_revoked".to_string()));
    }

    #[test]
    fn atomically_commits_all_or_nothing() {
        let r = Registry::in_memory().unwrap();
        let tok = r.create_token(Duration::from_secs(3600), "").unwrap();
        let t = now();
        // A failure after the token was redeemed and the device recorded:
        // nothing of it stays, and the token is still good.
        let failed: Result<(), RegistryError> = r.atomically(|tx| {
            assert_eq!(tx.redeem(tok.expose(), "gw-1", t)?, Ok(()));
            tx.record_certificate("gw-1", "01", t, t + 10)?;
            Err(RegistryError::UnknownDevice("simulated failure".into()))
        });
        assert!(failed.is_err());
        assert!(r.devices().unwrap().is_empty());
        let ok: Result<(), RegistryError> = r.atomically(|tx| {
            assert_eq!(tx.redeem(tok.expose(), "gw-1", t)?, Ok(()));
            tx.record_certificate("gw-1", "02", t, t + 10)?;
            tx.audit("enrolled", "", "gw-1", "02")
        });
        ok.unwrap();
        assert_eq!(r.devices().unwrap().len(), 1);
        assert_eq!(
            r.redeem(tok.expose(), "gw-2", t).unwrap(),
            Err(TokenRejection::Used)
        );
        // Nested: a savepoint, undone alone.
        let nested: Result<(), RegistryError> = r.atomically(|tx| {
            tx.audit("kept", "", "", "")?;
            let inner: Result<(), RegistryError> = tx.atomically(|t| {
                t.audit("undone", "", "", "")?;
                Err(RegistryError::Random)
            });
            assert!(inner.is_err());
            Ok(())
        });
        nested.unwrap();
        let events: Vec<String> = r.audit_events().unwrap().into_iter().map(|e| e.0).collect();
        assert!(events.contains(&"kept".to_string()));
        assert!(!events.contains(&"undone".to_string()));
    }

    #[test]
    fn base32_rfc4648_vectors() {
        assert_eq!(base32(b"f"), "MY");
        assert_eq!(base32(b"fo"), "MZXQ");
        assert_eq!(base32(b"foobar"), "MZXW6YTBOI");
    }
}
