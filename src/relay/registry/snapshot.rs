//! Consistent copies of the registry while the relay runs and writes it
//! (SQLite's online backup), and the check a copy passes before it is
//! trusted.

use super::{Registry, RegistryError, schema};
use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, OpenFlags};
use std::path::Path;
use std::time::{Duration, Instant};

/// How long a snapshot waits for a read lock (a writer of another process
/// that holds it, a WAL recovery) before it gives up.
pub const SNAPSHOT_WAIT: Duration = Duration::from_secs(30);

/// What a registry copy holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    /// Its schema version (`PRAGMA user_version`).
    pub schema_version: i64,
    /// Devices it knows.
    pub devices: i64,
}

impl Registry {
    /// Copy the registry at `src` into a new database file `dst`, as of one
    /// moment: the whole database is copied in one step of SQLite's online
    /// backup, inside one read transaction. In WAL mode that transaction
    /// blocks no writer, so a running relay goes on enrolling; what it
    /// commits after the moment is not in the copy. `src` is neither
    /// created nor migrated; `dst` is a self-contained file (rollback
    /// journal, no `-wal`), checked like [`Registry::check`].
    pub fn snapshot(src: &Path, dst: &Path) -> Result<Snapshot, RegistryError> {
        // No CREATE: a missing registry is an error, not a new empty one.
        let from = Connection::open_with_flags(
            src,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        from.busy_timeout(Duration::from_secs(2))?;
        let mut to = Connection::open(dst)?;
        {
            let backup = Backup::new(&from, &mut to)?;
            let deadline = Instant::now() + SNAPSHOT_WAIT;
            loop {
                match backup.step(-1)? {
                    StepResult::Done => break,
                    StepResult::More => {}
                    _ if Instant::now() > deadline => return Err(RegistryError::Busy),
                    _ => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
        drop(from);
        to.execute_batch("PRAGMA journal_mode = DELETE;")?;
        check(&to)
    }

    /// Check this registry: SQLite's integrity check, a schema this build
    /// knows; returns what it holds.
    pub fn check(&self) -> Result<Snapshot, RegistryError> {
        check(&self.db)
    }
}

fn check(db: &Connection) -> Result<Snapshot, RegistryError> {
    let verdict: String = db.query_row("PRAGMA integrity_check(1)", [], |r| r.get(0))?;
    if verdict != "ok" {
        return Err(RegistryError::Damaged(verdict));
    }
    let found: i64 = db.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let known = schema::MIGRATIONS.len() as i64;
    if found > known {
        return Err(RegistryError::Newer { found, known });
    }
    // A registry of a release before versioning is at version 0 with the
    // tables; an empty file has none.
    let has_devices: bool = db.query_row(
        "SELECT COUNT(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'devices'",
        [],
        |r| r.get(0),
    )?;
    let devices = if has_devices {
        db.query_row("SELECT COUNT(*) FROM devices", [], |r| r.get(0))?
    } else {
        0
    };
    Ok(Snapshot {
        schema_version: found,
        devices,
    })
}

/// The schema version this build writes.
pub fn schema_version() -> i64 {
    schema::MIGRATIONS.len() as i64
}
