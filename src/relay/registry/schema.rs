//! The registry's schema migrations.

use super::RegistryError;
use rusqlite::{Connection, TransactionBehavior};

/// The registry's schema, one step per change: a registry records in
/// `PRAGMA user_version` how many steps it has taken, and [`Registry::open`]
/// takes the rest, in one transaction, before anything else reads it. Steps
/// are only ever appended. Step 1 is the schema of the releases before
/// versioning (`IF NOT EXISTS`: a registry they wrote is at version 0 and
/// already has it).
pub(super) const MIGRATIONS: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS tokens (
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
         detail TEXT NOT NULL DEFAULT '');",
    // The audit log's hash chain (issue 13): each row's sequence number and
    // MAC (see `chain`). Rows already present stay NULL here and are
    // chained when the registry is first given its key. The unique index
    // finds the head in one lookup and makes a fork of the chain (two rows
    // with one `seq`) a constraint error instead of a silent branch.
    "ALTER TABLE audit ADD COLUMN seq INTEGER;
     ALTER TABLE audit ADD COLUMN mac BLOB;
     CREATE UNIQUE INDEX audit_seq ON audit(seq);",
];

/// Bring `db` to the newest schema. Concurrent openers (the relay and a
/// `relay token create`) serialize on the write lock and the second finds
/// nothing left to do.
pub(super) fn migrate(db: &mut Connection) -> Result<i64, RegistryError> {
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
