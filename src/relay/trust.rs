//! The relay's per-certificate trust: which certificate each device may
//! use now, asked by the TLS verifier in every handshake
//! ([`ClientGate`]) and by the enforcer for every live session.
//!
//! The table is a copy of the registry's accepted certificates
//! ([`Registry::trust_rows`]): each device's current certificate and key,
//! and the ones a renewal superseded less than the grace ago. It is
//! reloaded when another process writes the registry (`relay revoke`,
//! `relay token create`: `PRAGMA data_version` changes) and updated in
//! place by this relay's own enrollments and renewals right after they
//! commit, so a device that just enrolled is admitted at once.
//!
//! Refusals are kept for the audit log, at most one line per device per
//! minute and [`AUDIT_PER_MINUTE`] in all ([`super::audit_limit`]), so a
//! flood of handshakes with a revoked certificate cannot fill the disk.

use super::registry::{Registry, RegistryError, Replace, TrustRow, now};
use crate::pki::name::CertFacts;
use crate::transport::tls::{ClientGate, Refusal};
use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, RwLock};

/// Refusal lines written to the audit log per minute, in all.
pub const AUDIT_PER_MINUTE: u32 = super::audit_limit::PER_MINUTE;

#[derive(Debug, Clone)]
struct Entry {
    serial: String,
    spki: Option<[u8; 32]>,
    superseded_at: Option<i64>,
    issuer: Option<String>,
}

#[derive(Debug, Default)]
struct Table {
    devices: HashMap<String, Vec<Entry>>,
    revoked: HashSet<String>,
    /// Issuing CAs with a date from which their certificates are refused.
    retiring: HashMap<String, i64>,
}

/// A refused handshake or session, for the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The device the certificate names.
    pub device: String,
    /// Its serial.
    pub serial: String,
    /// Why.
    pub why: Refusal,
    /// Refusals not written since the last line (rate limit).
    pub suppressed: u64,
    /// The address it was offered from (empty: not known).
    pub source: String,
}

#[derive(Debug, Default)]
struct RefusalLog {
    pending: Vec<Refused>,
    budget: super::audit_limit::AuditBudget,
}

/// The trust table.
#[derive(Debug)]
pub struct TrustTable {
    table: RwLock<Table>,
    grace: i64,
    log: Mutex<RefusalLog>,
}

impl TrustTable {
    /// An empty table whose superseded certificates stay good for `grace`
    /// seconds.
    pub fn new(grace: std::time::Duration) -> Self {
        TrustTable {
            table: RwLock::default(),
            grace: grace.as_secs() as i64,
            log: Mutex::default(),
        }
    }

    /// The grace of superseded certificates, in seconds.
    pub fn grace(&self) -> i64 {
        self.grace
    }

    /// Replace the table with the registry's. Call it holding the
    /// registry (its lock), so that an enrollment committed meanwhile is
    /// either in the rows or applied by [`TrustTable::accept`] afterwards.
    pub fn reload(&self, registry: &Registry) -> Result<(), RegistryError> {
        let rows = registry.trust_rows(now(), self.grace)?;
        let revoked: HashSet<String> = registry.revoked_devices()?.into_iter().collect();
        self.install(rows, revoked);
        Ok(())
    }

    fn install(&self, rows: Vec<TrustRow>, revoked: HashSet<String>) {
        let mut devices: HashMap<String, Vec<Entry>> = HashMap::with_capacity(rows.len());
        let mut retiring = HashMap::new();
        for r in rows {
            if let (Some(i), Some(at)) = (&r.issuer, r.issuer_retire_at) {
                retiring.insert(i.clone(), at);
            }
            devices.entry(r.device).or_default().push(Entry {
                serial: r.serial,
                spki: r.spki,
                superseded_at: r.superseded_at,
                issuer: r.issuer,
            });
        }
        let mut t = self.table.write().unwrap_or_else(|p| p.into_inner());
        *t = Table {
            devices,
            revoked,
            retiring,
        };
    }

    /// The issuing CA (fingerprint) of an accepted certificate.
    pub fn issuer_of(&self, device: &str, serial: &str) -> Option<String> {
        let t = self.table.read().unwrap_or_else(|p| p.into_inner());
        t.devices
            .get(device)?
            .iter()
            .find(|e| e.serial == serial)?
            .issuer
            .clone()
    }

    /// A certificate this relay just issued and committed: it becomes the
    /// device's current one (idempotent).
    pub fn accept(
        &self,
        device: &str,
        serial: &str,
        spki: [u8; 32],
        replace: Replace,
        issuer: Option<&str>,
    ) {
        let at = now();
        let mut t = self.table.write().unwrap_or_else(|p| p.into_inner());
        let entries = t.devices.entry(device.to_string()).or_default();
        if entries.iter().any(|e| e.serial == serial) {
            return;
        }
        match replace {
            Replace::Grace => {
                for e in entries.iter_mut() {
                    e.superseded_at.get_or_insert(at);
                }
            }
            Replace::AtOnce => entries.clear(),
        }
        entries.push(Entry {
            serial: serial.to_string(),
            spki: Some(spki),
            superseded_at: None,
            issuer: issuer.map(str::to_string),
        });
        if replace == Replace::AtOnce {
            t.revoked.remove(device);
        }
    }

    /// The decision for `cert` at `at` (Unix seconds), without logging it.
    pub fn decide(&self, cert: &CertFacts, at: i64) -> Result<(), Refusal> {
        let t = self.table.read().unwrap_or_else(|p| p.into_inner());
        if t.revoked.contains(&cert.device) {
            return Err(Refusal::Revoked);
        }
        let Some(entries) = t.devices.get(&cert.device) else {
            return Err(Refusal::UnknownDevice);
        };
        let Some(e) = entries.iter().find(|e| e.serial == cert.serial) else {
            return Err(Refusal::NotCurrent);
        };
        if e.spki.is_some_and(|k| k != cert.spki) {
            return Err(Refusal::UnknownKey);
        }
        let retire_at = e.issuer.as_ref().and_then(|i| t.retiring.get(i));
        if retire_at.is_some_and(|&r| at >= r) {
            return Err(Refusal::RetiredIssuer);
        }
        match e.superseded_at {
            Some(t) if at - t >= self.grace => Err(Refusal::NotCurrent),
            _ => Ok(()),
        }
    }

    /// Whether `cert` is its device's current certificate (not one a
    /// renewal superseded and the grace still accepts).
    pub fn is_current(&self, cert: &CertFacts) -> bool {
        let t = self.table.read().unwrap_or_else(|p| p.into_inner());
        t.devices.get(&cert.device).is_some_and(|entries| {
            entries
                .iter()
                .any(|e| e.serial == cert.serial && e.superseded_at.is_none())
        })
    }

    /// Note a refusal for the audit log, rate-limited.
    pub fn note_refusal(
        &self,
        cert: &CertFacts,
        why: Refusal,
        at: i64,
        source: Option<std::net::IpAddr>,
    ) {
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        let Some(suppressed) = log.budget.admit(&cert.device, at) else {
            return;
        };
        log.pending.push(Refused {
            device: cert.device.clone(),
            serial: cert.serial.clone(),
            why,
            suppressed,
            source: source.map(|s| s.to_string()).unwrap_or_default(),
        });
    }

    /// The refusals noted since the last call.
    pub fn take_refusals(&self) -> Vec<Refused> {
        std::mem::take(&mut self.log.lock().unwrap_or_else(|p| p.into_inner()).pending)
    }
}

impl ClientGate for TrustTable {
    fn check(&self, cert: &CertFacts, source: Option<std::net::IpAddr>) -> Result<(), Refusal> {
        let at = now();
        self.decide(cert, at).inspect_err(|&why| {
            self.note_refusal(cert, why, at, source);
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(device: &str, serial: &str, key: u8) -> CertFacts {
        CertFacts {
            device: device.into(),
            serial: serial.into(),
            spki: [key; 32],
        }
    }

    #[test]
    fn current_superseded_replaced_and_foreign_keys() {
        let t = TrustTable::new(std::time::Duration::from_secs(300));
        let at = now();
        assert_eq!(
            t.decide(&facts("gw", "01", 1), at),
            Err(Refusal::UnknownDevice)
        );
        t.accept("gw", "01", [1; 32], Replace::AtOnce, None);
        assert_eq!(t.decide(&facts("gw", "01", 1), at), Ok(()));
        // The same serial with another key: minted with a stolen issuing key.
        assert_eq!(
            t.decide(&facts("gw", "01", 9), at),
            Err(Refusal::UnknownKey)
        );
        // A serial the registry never recorded.
        assert_eq!(
            t.decide(&facts("gw", "77", 1), at),
            Err(Refusal::NotCurrent)
        );
        // Renewal: the old one is good for the grace, then refused.
        t.accept("gw", "02", [2; 32], Replace::Grace, None);
        assert_eq!(t.decide(&facts("gw", "02", 2), at), Ok(()));
        assert!(t.is_current(&facts("gw", "02", 2)));
        assert!(!t.is_current(&facts("gw", "01", 1)), "superseded");
        assert_eq!(t.decide(&facts("gw", "01", 1), at + 299), Ok(()));
        assert_eq!(
            t.decide(&facts("gw", "01", 1), at + 300),
            Err(Refusal::NotCurrent)
        );
        // Re-enrollment: every earlier certificate at once.
        t.accept("gw", "03", [3; 32], Replace::AtOnce, None);
        assert_eq!(
            t.decide(&facts("gw", "02", 2), at),
            Err(Refusal::NotCurrent)
        );
        assert_eq!(t.decide(&facts("gw", "03", 3), at), Ok(()));
    }

    #[test]
    fn reload_follows_the_registry() {
        let r = Registry::in_memory().unwrap();
        let t = TrustTable::new(std::time::Duration::from_secs(300));
        let rec = |serial: &'static str, k: &'static [u8; 32]| crate::relay::registry::CertRecord {
            serial,
            spki: k,
            not_before: 0,
            not_after: now() + 3600,
            issuer: None,
        };
        r.record_certificate("gw", rec("01", &[1; 32]), Replace::AtOnce)
            .unwrap();
        r.record_certificate("gw", rec("02", &[2; 32]), Replace::Grace)
            .unwrap();
        t.reload(&r).unwrap();
        let at = now();
        assert_eq!(t.decide(&facts("gw", "01", 1), at), Ok(()), "in grace");
        assert_eq!(t.decide(&facts("gw", "02", 2), at), Ok(()));
        assert_eq!(
            t.decide(&facts("gw", "01", 1), at + 301),
            Err(Refusal::NotCurrent)
        );
        r.revoke("gw").unwrap();
        t.reload(&r).unwrap();
        assert_eq!(t.decide(&facts("gw", "02", 2), at), Err(Refusal::Revoked));
        // A re-enrollment undoes the revocation, with a new key only.
        r.record_certificate("gw", rec("03", &[3; 32]), Replace::AtOnce)
            .unwrap();
        t.reload(&r).unwrap();
        assert_eq!(t.decide(&facts("gw", "03", 3), at), Ok(()));
        assert_eq!(
            t.decide(&facts("gw", "02", 2), at),
            Err(Refusal::NotCurrent)
        );
    }

    #[test]
    fn refusals_are_rate_limited() {
        let t = TrustTable::new(std::time::Duration::from_secs(300));
        let at = 6000;
        for _ in 0..1000 {
            t.note_refusal(&facts("gw", "01", 1), Refusal::Revoked, at, None);
        }
        let first = t.take_refusals();
        assert_eq!(first.len(), 1, "one line per device per minute");
        for i in 0..1000 {
            t.note_refusal(
                &facts(&format!("d{i}"), "01", 1),
                Refusal::Revoked,
                at + 1,
                None,
            );
        }
        let many = t.take_refusals();
        assert_eq!(many.len() as u32, AUDIT_PER_MINUTE - 1, "a cap per minute");
        assert_eq!(
            many[0].suppressed, 999,
            "the next line counts what was left out"
        );
        t.note_refusal(
            &facts("gw", "01", 1),
            Refusal::Revoked,
            at + 61,
            "192.0.2.7".parse().ok(),
        );
        let next = t.take_refusals();
        assert_eq!(next.len(), 1);
        assert_eq!(next[0].suppressed, 1000 - (AUDIT_PER_MINUTE as u64 - 1));
        assert_eq!(next[0].source, "192.0.2.7", "where it came from");
        assert_eq!(first[0].source, "", "not known");
    }
}
