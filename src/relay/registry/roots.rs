//! The fleet roots after a root rotation: which one is current, the cross
//! certificate that vouches for each new one, and from when an older one is
//! no longer trusted. Empty until the first rotation (the root is then
//! `ca.pem`'s alone).

use super::{Registry, RegistryError, now};
use rusqlite::params;

/// A fleet root as the registry knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootRow {
    /// `SHA256:` fingerprint of its certificate.
    pub fingerprint: String,
    /// Its certificate, DER.
    pub cert: Vec<u8>,
    /// Its name and key signed by the root before it (`None`: the first).
    pub cross: Option<Vec<u8>>,
    /// When it was recorded, Unix seconds.
    pub created: i64,
    /// The one that signs issuing CAs now.
    pub current: bool,
    /// From when devices and the relay stop trusting it.
    pub retire_at: Option<i64>,
}

impl RootRow {
    /// Still trusted at `at`.
    pub fn live(&self, at: i64) -> bool {
        self.retire_at.is_none_or(|r| r > at)
    }
}

impl Registry {
    /// Record a root rotation: `previous` (the root until now; recorded
    /// here if the registry did not know it) is trusted until `retire_at`,
    /// and `fingerprint` with its `cross` certificate becomes current.
    pub fn rotate_root(
        &self,
        previous: (&str, &[u8]),
        new: (&str, &[u8], &[u8]),
        retire_at: i64,
    ) -> Result<(), RegistryError> {
        self.atomically(|r| {
            let t = now();
            r.db.execute(
                "INSERT INTO roots (fingerprint, cert, created, current) VALUES (?1, ?2, ?3, 0)
                 ON CONFLICT(fingerprint) DO NOTHING",
                params![previous.0, previous.1, t],
            )?;
            r.db.execute(
                "UPDATE roots SET current = 0, retire_at = MIN(COALESCE(retire_at, ?1), ?1)
                 WHERE fingerprint != ?2 AND (retire_at IS NULL OR retire_at > ?1)",
                params![retire_at, new.0],
            )?;
            r.db.execute(
                "INSERT INTO roots (fingerprint, cert, cross_cert, created, current)
                 VALUES (?1, ?2, ?3, ?4, 1)",
                params![new.0, new.1, new.2, t],
            )?;
            r.audit(
                "root_rotated",
                "",
                "",
                &format!(
                    "{}; {} trusted until {retire_at} (Unix time)",
                    new.0, previous.0
                ),
            )
        })
    }

    /// Every recorded root, current first, then newest first.
    pub fn roots(&self) -> Result<Vec<RootRow>, RegistryError> {
        let mut q = self.db.prepare(
            "SELECT fingerprint, cert, cross_cert, created, current, retire_at FROM roots
             ORDER BY current DESC, created DESC, rowid DESC",
        )?;
        let rows = q.query_map([], |r| {
            Ok(RootRow {
                fingerprint: r.get(0)?,
                cert: r.get(1)?,
                cross: r.get(2)?,
                created: r.get(3)?,
                current: r.get(4)?,
                retire_at: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}
