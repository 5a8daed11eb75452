//! The audit trail: who enrolled, renewed, was refused or revoked, which
//! tokens were made. Rows are appended with a keyed hash chain
//! ([`super::chain`]): each gets the next `seq` and a MAC over the previous
//! row's MAC and its own content.
//!
//! Appends from every process chain correctly: a row is chained inside a
//! write transaction (`BEGIN IMMEDIATE`, the database's one write lock),
//! which reads the head once (one indexed query) and then keeps it while
//! it holds the lock, so a group commit of many enrollments costs one query
//! and one HMAC per row.
//!
//! After each commit that appended, the head goes to the log (`info`,
//! fields `audit_head_seq` and `audit_head`). The relay also logs the heads
//! that other processes (`relay token create`, `relay revoke`) appended,
//! when it next polls the registry, and warns when the head goes back.
//!
//! Rows of a release before the chain are chained the first time a
//! registry is given its key, in their order, followed by an
//! `audit_chain_started` row saying how many there were; `--verify` reports
//! them as chained at upgrade, not attested before. A registry created by
//! this release starts with that row too. Rows without `seq` that appear
//! later are never chained: `--verify` reports each as inserted outside
//! voxgate.

use super::chain::{self, AuditKey, Fields, GENESIS, Head, Report, StoredRow, Verifier, ZERO};
use super::{Registry, RegistryError, now};
use rusqlite::types::ValueRef;
use rusqlite::{OptionalExtension, params};
use std::cell::Cell;
use tracing::{info, warn};

/// The head of an empty chain.
const EMPTY: Head = Head { seq: 0, mac: ZERO };

/// The chain's state in one registry handle.
#[derive(Default)]
pub(super) struct ChainState {
    key: Option<AuditKey>,
    /// The head, once read in the current write transaction.
    head: Cell<Option<Head>>,
    /// Rows appended in the current write transaction.
    appended: Cell<u32>,
    /// The head last written to the log.
    logged: Cell<Option<Head>>,
}

impl std::fmt::Debug for ChainState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChainState")
            .field("keyed", &self.key.is_some())
            .field("logged", &self.logged.get().map(|h| h.seq))
            .finish_non_exhaustive()
    }
}

/// The chain state at a savepoint, restored if it rolls back.
pub(super) type Mark = (Option<Head>, u32);

impl ChainState {
    /// The audit key this handle was given.
    pub(super) fn key(&self) -> Option<&AuditKey> {
        self.key.as_ref()
    }

    pub(super) fn mark(&self) -> Mark {
        (self.head.get(), self.appended.get())
    }

    pub(super) fn reset(&self, (head, appended): Mark) {
        self.head.set(head);
        self.appended.set(appended);
    }

    /// The write transaction committed: log the head it left.
    pub(super) fn committed(&self) {
        if let (Some(h), n @ 1..) = (self.head.get(), self.appended.get()) {
            info!(
                audit_head_seq = h.seq,
                audit_head = %chain::hex(&h.mac),
                appended = n,
                "audit log appended"
            );
            self.logged.set(Some(h));
        }
        self.reset((None, 0));
    }
}

/// A row of `voxgate relay audit`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRow {
    /// Sequence number in the chain (`None`: not chained).
    pub seq: Option<u64>,
    /// Unix seconds.
    pub ts: i64,
    /// Event name.
    pub event: String,
    /// Source address, or empty.
    pub source: String,
    /// Device id, or empty.
    pub device: String,
    /// Free text.
    pub detail: String,
}

/// Text of a column, whatever a hand edit stored there.
fn text(v: ValueRef<'_>) -> String {
    match v {
        ValueRef::Text(t) | ValueRef::Blob(t) => String::from_utf8_lossy(t).into_owned(),
        ValueRef::Integer(i) => i.to_string(),
        ValueRef::Real(r) => r.to_string(),
        ValueRef::Null => String::new(),
    }
}

fn int(v: ValueRef<'_>) -> Option<i64> {
    match v {
        ValueRef::Integer(i) => Some(i),
        _ => None,
    }
}

fn head_of(seq: i64, mac: Option<Vec<u8>>) -> Head {
    Head {
        seq: seq.max(0) as u64,
        mac: mac.and_then(|m| m.try_into().ok()).unwrap_or(ZERO),
    }
}

impl Registry {
    /// Append an audit event, chained. Inside [`Registry::atomically`] it
    /// commits with the rest; alone, it takes the write lock for itself.
    pub fn audit(
        &self,
        event: &str,
        source: &str,
        device: &str,
        detail: &str,
    ) -> Result<(), RegistryError> {
        if self.db.is_autocommit() {
            return self.atomically(|r| r.append(event, source, device, detail));
        }
        self.append(event, source, device, detail)
    }

    /// Chain one row. Only inside a write transaction.
    fn append(
        &self,
        event: &str,
        source: &str,
        device: &str,
        detail: &str,
    ) -> Result<(), RegistryError> {
        let key = self.chain.key.as_ref().ok_or(RegistryError::NoAuditKey)?;
        let prev = match self.chain.head.get() {
            Some(h) => h,
            None => self.read_head()?.unwrap_or(EMPTY),
        };
        let f = Fields {
            seq: prev.seq + 1,
            ts: now(),
            event,
            source,
            device,
            detail,
        };
        let mac = chain::mac(key, &prev.mac, &f);
        self.db
            .prepare_cached(
                "INSERT INTO audit (ts, event, source, device, detail, seq, mac)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![
                f.ts,
                event,
                source,
                device,
                detail,
                f.seq as i64,
                &mac[..]
            ])?;
        self.chain.head.set(Some(Head { seq: f.seq, mac }));
        self.chain.appended.set(self.chain.appended.get() + 1);
        Ok(())
    }

    /// The newest chained row (one query on the `seq` index).
    fn read_head(&self) -> Result<Option<Head>, RegistryError> {
        Ok(self
            .db
            .prepare_cached(
                "SELECT seq, mac FROM audit WHERE seq IS NOT NULL AND typeof(seq) = 'integer'
                 ORDER BY seq DESC LIMIT 1",
            )?
            .query_row([], |r| Ok(head_of(r.get(0)?, r.get(1).ok())))
            .optional()?)
    }

    /// A registry restored without the audit key of the relay that wrote
    /// it (`relay restore` without keys): its chain cannot be continued.
    /// The rows as they were (with their sequence numbers and MACs, which
    /// whoever holds the old key can still check) are copied to
    /// `audit_previous`, and the rows lose their place in the chain, so the
    /// next key given to the registry chains them again, after a genesis
    /// row that says so ([`Registry::set_audit_key`]).
    pub fn restart_audit_chain(&self) -> Result<(), RegistryError> {
        self.db.execute_batch(
            "BEGIN IMMEDIATE;
             CREATE TABLE IF NOT EXISTS audit_previous AS SELECT * FROM audit WHERE 0;
             INSERT INTO audit_previous SELECT * FROM audit WHERE seq IS NOT NULL;
             UPDATE audit SET seq = NULL, mac = NULL;
             COMMIT;",
        )?;
        Ok(())
    }

    /// Whether the audit log is chained yet (a key was given to it once).
    pub fn audit_chained(&self) -> Result<bool, RegistryError> {
        Ok(self.read_head()?.is_some())
    }

    /// Give the registry the audit log's key, once after opening it. The
    /// first time a registry gets a key, its rows (an earlier release's)
    /// are chained and an `audit_chain_started` row says how many.
    pub fn set_audit_key(&mut self, key: AuditKey) -> Result<(), RegistryError> {
        self.chain.key = Some(key);
        if self.read_head()?.is_none() {
            // Two processes may get here at once: the write lock decides,
            // the second finds the chain started.
            self.atomically(|r| match r.read_head()? {
                Some(_) => Ok(()),
                None => r.start_chain(),
            })?;
        }
        Ok(())
    }

    /// Chain every row (all written before the chain), then the genesis.
    fn start_chain(&self) -> Result<(), RegistryError> {
        let Some(key) = self.chain.key.as_ref() else {
            return Err(RegistryError::NoAuditKey);
        };
        let mut head = EMPTY;
        {
            let mut q = self.db.prepare(
                "SELECT rowid, ts, event, source, device, detail FROM audit
                 WHERE seq IS NULL ORDER BY rowid",
            )?;
            let mut set = self
                .db
                .prepare("UPDATE audit SET seq = ?2, mac = ?3 WHERE rowid = ?1")?;
            let mut rows = q.query([])?;
            while let Some(r) = rows.next()? {
                let rowid: i64 = r.get(0)?;
                let (event, source) = (text(r.get_ref(2)?), text(r.get_ref(3)?));
                let (device, detail) = (text(r.get_ref(4)?), text(r.get_ref(5)?));
                let f = Fields {
                    seq: head.seq + 1,
                    ts: int(r.get_ref(1)?).unwrap_or(0),
                    event: &event,
                    source: &source,
                    device: &device,
                    detail: &detail,
                };
                let mac = chain::mac(key, &head.mac, &f);
                set.execute(params![rowid, f.seq as i64, &mac[..]])?;
                head = Head { seq: f.seq, mac };
            }
        }
        self.chain.head.set(Some(head));
        let detail = match head.seq {
            0 => "new audit log".to_string(),
            n => format!(
                "{n} rows of an earlier release chained at upgrade (not attested before this row)"
            ),
        };
        info!(earlier_rows = head.seq, "audit log: hash chain started");
        self.append(GENESIS, "", "", &detail)
    }

    /// Log the head if it moved since this handle last logged it (the
    /// relay calls this when it polls the registry: rows appended by other
    /// processes). A head that went back is a warning: rows were removed.
    pub fn log_audit_head(&self) -> Result<Option<Head>, RegistryError> {
        let head = self.read_head()?;
        let last = self.chain.logged.get();
        if head == last {
            return Ok(head);
        }
        match (last, head) {
            (Some(l), h) if h.is_none_or(|h| h.seq < l.seq || (h.seq == l.seq && h != l)) => {
                warn!(
                    audit_head_seq = h.map_or(0, |h| h.seq),
                    audit_head = %h.map(|h| chain::hex(&h.mac)).unwrap_or_default(),
                    previous_head = %l,
                    "the audit log's head went back: rows were removed from the registry outside voxgate; run `voxgate relay audit --verify --head {l}` and see docs/INCIDENT.md"
                );
            }
            (_, Some(h)) => info!(
                audit_head_seq = h.seq,
                audit_head = %chain::hex(&h.mac),
                "audit log head"
            ),
            (_, None) => {}
        }
        self.chain.logged.set(head);
        Ok(head)
    }

    /// Audit rows, oldest first, at or after `since` (Unix seconds) and
    /// about `device`, when given.
    pub fn audit_rows(
        &self,
        since: Option<i64>,
        device: Option<&str>,
    ) -> Result<Vec<AuditRow>, RegistryError> {
        let mut q = self.db.prepare(
            "SELECT seq, ts, event, source, device, detail FROM audit
             WHERE (?1 IS NULL OR ts >= ?1) AND (?2 IS NULL OR device = ?2)
             ORDER BY rowid",
        )?;
        let mut rows = q.query(params![since, device])?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            out.push(AuditRow {
                seq: int(r.get_ref(0)?).and_then(|s| u64::try_from(s).ok()),
                ts: int(r.get_ref(1)?).unwrap_or(0),
                event: text(r.get_ref(2)?),
                source: text(r.get_ref(3)?),
                device: text(r.get_ref(4)?),
                detail: text(r.get_ref(5)?),
            });
        }
        Ok(out)
    }

    /// Audit events, oldest first: (event, source, device, detail).
    pub fn audit_events(&self) -> Result<Vec<(String, String, String, String)>, RegistryError> {
        Ok(self
            .audit_rows(None, None)?
            .into_iter()
            .map(|r| (r.event, r.source, r.device, r.detail))
            .collect())
    }

    /// Recompute the chain (needs the key). `logged` is the head the
    /// relay's log last showed: rows cut from the end are found only with
    /// it. Reads one snapshot without taking the write lock, so the relay
    /// keeps enrolling meanwhile.
    pub fn verify_audit(&self, logged: Option<Head>) -> Result<Report, RegistryError> {
        let key = self.chain.key.as_ref().ok_or(RegistryError::NoAuditKey)?;
        let snapshot = self.db.unchecked_transaction()?;
        let mut v = Verifier::new(key, logged);
        let mut q = snapshot.prepare(
            "SELECT rowid, seq, ts, event, source, device, detail, mac FROM audit
             ORDER BY seq IS NULL, seq, rowid",
        )?;
        let mut rows = q.query([])?;
        while let Some(r) = rows.next()? {
            let (event, source) = (text(r.get_ref(3)?), text(r.get_ref(4)?));
            let (device, detail) = (text(r.get_ref(5)?), text(r.get_ref(6)?));
            let seq = int(r.get_ref(1)?).filter(|&s| s >= 1);
            let fields = Fields {
                seq: seq.unwrap_or(0) as u64,
                ts: int(r.get_ref(2)?).unwrap_or(0),
                event: &event,
                source: &source,
                device: &device,
                detail: &detail,
            };
            if seq.is_none() {
                v.unchained(r.get(0)?, &fields);
                continue;
            }
            let mac = match r.get_ref(7)? {
                ValueRef::Blob(b) => Some(b),
                _ => None,
            };
            v.chained(&StoredRow { fields, mac });
        }
        Ok(v.finish())
    }
}
