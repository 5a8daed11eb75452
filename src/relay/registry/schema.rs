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
    // 2: tokens bound to one device id (NULL: a token of an earlier
    // release, good for one id that is not enrolled), re-enrollment
    // tokens, withdrawn tokens; per-certificate state: the public key
    // (SHA-256 of the SPKI; NULL for certificates of earlier releases,
    // checked by serial alone until the device renews), when a renewal
    // superseded it (accepted for a grace) and when a re-enrollment
    // replaced it (refused at once); each device's current serial.
    "ALTER TABLE tokens ADD COLUMN device TEXT;
     ALTER TABLE tokens ADD COLUMN reenroll INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE tokens ADD COLUMN revoked_at INTEGER;
     CREATE INDEX tokens_device ON tokens(device);
     ALTER TABLE certificates ADD COLUMN spki BLOB;
     ALTER TABLE certificates ADD COLUMN superseded_at INTEGER;
     ALTER TABLE certificates ADD COLUMN replaced_at INTEGER;
     CREATE INDEX certificates_device ON certificates(device);
     ALTER TABLE devices ADD COLUMN current_serial TEXT;
     UPDATE devices SET current_serial = (
         SELECT serial FROM certificates c WHERE c.device = devices.id
         ORDER BY not_after DESC, rowid DESC LIMIT 1);
     UPDATE certificates SET superseded_at = CAST(strftime('%s', 'now') AS INTEGER)
         WHERE serial NOT IN (SELECT current_serial FROM devices WHERE current_serial IS NOT NULL);",
    // The audit log's hash chain (issue 13): each row's sequence number and
    // MAC (see `chain`). Rows already present stay NULL here and are
    // chained when the registry is first given its key. The unique index
    // finds the head in one lookup and makes a fork of the chain (two rows
    // with one `seq`) a constraint error instead of a silent branch.
    "ALTER TABLE audit ADD COLUMN seq INTEGER;
     ALTER TABLE audit ADD COLUMN mac BLOB;
     CREATE UNIQUE INDEX audit_seq ON audit(seq);",
    // The issuing CAs (two-tier CA): each one's certificate, and the time
    // from which certificates it signed are refused (set when it is
    // rotated out); which issuing CA signed each device certificate (NULL:
    // the single-tier CA of earlier releases, which became the root).
    "CREATE TABLE issuers (
         fingerprint TEXT PRIMARY KEY,
         cert BLOB NOT NULL,
         created INTEGER NOT NULL,
         current INTEGER NOT NULL DEFAULT 0,
         retire_at INTEGER);
     ALTER TABLE certificates ADD COLUMN issuer TEXT;",
    // Root rotation: each fleet root's certificate, the cross certificate
    // that vouches for it (its name and key signed by the root before it;
    // NULL for the first root), the current one, and from when an older
    // root is no longer trusted. Empty until the first rotation: the root
    // is then `ca.pem`'s.
    "CREATE TABLE roots (
         fingerprint TEXT PRIMARY KEY,
         cert BLOB NOT NULL,
         cross_cert BLOB,
         created INTEGER NOT NULL,
         current INTEGER NOT NULL DEFAULT 0,
         retire_at INTEGER);",
    // Which device owns each extension (issue 14): the first device to
    // announce it keeps it across reconnects, so that another box cannot
    // take it while the owner is away.
    "CREATE TABLE extensions (
         ext TEXT PRIMARY KEY,
         device TEXT NOT NULL,
         claimed INTEGER NOT NULL);
     CREATE INDEX extensions_device ON extensions(device);",
    // The operator API (issue 15): its keys (the id is public, only the
    // SHA-256 of the secret is kept; scopes space-separated; revoked keys
    // stay listed), the rate limits' windows (so that a restart does not
    // reset them: rule name, client address or key id, window start,
    // requests in it), and when each device was last seen online.
    "CREATE TABLE api_keys (
         id TEXT PRIMARY KEY,
         hash BLOB NOT NULL,
         name TEXT NOT NULL DEFAULT '',
         scopes TEXT NOT NULL,
         created INTEGER NOT NULL,
         expires INTEGER,
         revoked_at INTEGER,
         last_used INTEGER);
     CREATE TABLE api_rate (
         rule TEXT NOT NULL,
         subject TEXT NOT NULL,
         start INTEGER NOT NULL,
         count INTEGER NOT NULL,
         PRIMARY KEY (rule, subject));
     CREATE TABLE device_seen (
         device TEXT PRIMARY KEY,
         last_seen INTEGER NOT NULL);",
    // 8: signed webhooks (issue 15): the receivers' endpoints (an event
    // filter, enabled or disabled and why), their secrets (sealed with a
    // key derived from the audit key; several during a rotation, the old
    // ones until `expires`), and the durable outbox: one row per event
    // (its `id` is the `webhook-id`, the same on every attempt) and one
    // delivery per endpoint, with its state, attempts, next attempt and
    // last result.
    "CREATE TABLE webhook_endpoints (
         id TEXT PRIMARY KEY,
         url TEXT NOT NULL,
         events TEXT NOT NULL DEFAULT '',
         description TEXT NOT NULL DEFAULT '',
         enabled INTEGER NOT NULL DEFAULT 1,
         disabled_reason TEXT,
         created INTEGER NOT NULL);
     CREATE TABLE webhook_secrets (
         endpoint TEXT NOT NULL REFERENCES webhook_endpoints(id) ON DELETE CASCADE,
         sealed BLOB NOT NULL,
         created INTEGER NOT NULL,
         expires INTEGER);
     CREATE INDEX webhook_secrets_endpoint ON webhook_secrets(endpoint);
     CREATE TABLE webhook_events (
         id TEXT PRIMARY KEY,
         type TEXT NOT NULL,
         created INTEGER NOT NULL,
         body TEXT NOT NULL);
     CREATE TABLE webhook_deliveries (
         id INTEGER PRIMARY KEY,
         event TEXT NOT NULL REFERENCES webhook_events(id),
         endpoint TEXT NOT NULL REFERENCES webhook_endpoints(id) ON DELETE CASCADE,
         state TEXT NOT NULL DEFAULT 'pending',
         attempts INTEGER NOT NULL DEFAULT 0,
         next_at_ms INTEGER NOT NULL,
         last_status INTEGER,
         last_error TEXT,
         updated INTEGER NOT NULL);
     CREATE INDEX webhook_deliveries_due ON webhook_deliveries(state, next_at_ms);
     CREATE INDEX webhook_deliveries_endpoint ON webhook_deliveries(endpoint, id);",
    // 9: idempotent enrollment (issue 16): the certificate a token paid
    // for (its serial and DER), so that a device whose setup stopped after
    // the relay issued it can ask again with the same token and the same
    // key, within the token's lifetime, and get the same certificate.
    "ALTER TABLE tokens ADD COLUMN issued_serial TEXT;
     ALTER TABLE tokens ADD COLUMN issued_cert BLOB;",
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
