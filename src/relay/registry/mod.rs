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
//!
//! The audit trail is a keyed hash chain ([`chain`]): the relay layer gives
//! the registry its key after opening it ([`Registry::set_audit_key`]);
//! a registry without one reads but cannot append.
//!
//! [`Registry::snapshot`] copies it, as of one moment, while the relay
//! writes it (`voxgate relay backup`).

mod api_keys;
mod audit;
pub mod chain;
mod devices;
mod extensions;
mod issuers;
mod roots;
mod schema;
mod snapshot;
mod tokens;
pub mod webhooks;

pub use api_keys::{ApiKeyRow, NewApiKey, RateRow};
pub use audit::AuditRow;
pub use chain::{AuditKey, Head};
pub use devices::{CertRecord, DeviceRow, Replace, TrustRow};
pub use extensions::Claim;
pub use issuers::IssuerRow;
pub use roots::RootRow;
pub use snapshot::{SNAPSHOT_WAIT, Snapshot, schema_version};
pub use tokens::{NewToken, Redeemed, Repeat, TokenRejection, TokenRow};

use rusqlite::Connection;
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
    /// Not a usable device id.
    #[error("`{0}` is not a device id (1-64 of a-z, 0-9, `-`, `_`, `.`)")]
    BadDeviceId(String),
    /// A plain token for an id that is enrolled.
    #[error(
        "device `{0}` is already enrolled; to replace its certificate (a new box, a re-keyed one, or to undo a revocation) create a re-enrollment token with `--reenroll`"
    )]
    Enrolled(String),
    /// A second token for an id that has an unused one.
    #[error(
        "device `{device}` already has an unused token ({id}); revoke it first with `voxgate relay token revoke {id}`"
    )]
    TokenOutstanding {
        /// The device id.
        device: String,
        /// The public id of its unused token.
        id: String,
    },
    /// The transaction a write belonged to did not commit.
    #[error("device registry: the write was not committed: {0}")]
    Commit(String),
    /// An append without the audit log's key.
    #[error(
        "device registry: no audit log key was given to this handle, so it cannot append (open it with `relay::audit_key::open_registry`)"
    )]
    NoAuditKey,
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
    /// A copy of the registry fails SQLite's integrity check.
    #[error("device registry: the copy fails its integrity check ({0})")]
    Damaged(String),
    /// A snapshot found no moment to read the registry.
    #[error(
        "device registry: no read lock within {} s (another process holds the database locked)",
        snapshot::SNAPSHOT_WAIT.as_secs()
    )]
    Busy,
}

/// Current Unix time in seconds.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The registry.
#[derive(Debug)]
pub struct Registry {
    db: Connection,
    chain: audit::ChainState,
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

    /// An in-memory registry (tests, benchmarks), its audit log chained
    /// with a random key that is never stored.
    pub fn in_memory() -> Result<Self, RegistryError> {
        let mut r = Self::init(Connection::open_in_memory()?)?;
        r.set_audit_key(AuditKey::random().ok_or(RegistryError::Random)?)?;
        Ok(r)
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
        schema::migrate(&mut db)?;
        Ok(Registry {
            db,
            chain: Default::default(),
        })
    }

    /// SQLite's `data_version`: changes when another connection (another
    /// process) commits.
    pub fn data_version(&self) -> Result<i64, RegistryError> {
        Ok(self
            .db
            .pragma_query_value(None, "data_version", |r| r.get(0))?)
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
        // The audit chain's cached head is only good while the write lock
        // is held: a new transaction reads it again, a rolled-back
        // savepoint restores it.
        let mark = if outer { (None, 0) } else { self.chain.mark() };
        self.db.execute_batch(begin).map_err(RegistryError::from)?;
        self.chain.reset(mark);
        let result = match f(self) {
            Ok(v) => match self.db.execute_batch(commit) {
                Ok(()) => Ok(v),
                Err(e) => Err(RegistryError::from(e).into()),
            },
            Err(e) => Err(e),
        };
        match &result {
            Ok(_) if outer => self.chain.committed(),
            Ok(_) => {}
            Err(_) => {
                let _ = self.db.execute_batch(rollback);
                self.chain.reset(mark);
            }
        }
        result
    }
}

#[cfg(test)]
mod tests;
