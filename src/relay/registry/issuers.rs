//! The issuing CAs of the two-tier fleet CA: which one signs now, and when
//! the certificates of a rotated-out one stop being accepted.

use super::{Registry, RegistryError, now};
use rusqlite::{OptionalExtension, params};

/// An issuing CA as the registry knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuerRow {
    /// `SHA256:` fingerprint of its certificate.
    pub fingerprint: String,
    /// Its certificate, DER.
    pub cert: Vec<u8>,
    /// When it was recorded, Unix seconds.
    pub created: i64,
    /// The one that signs now.
    pub current: bool,
    /// From when the certificates it signed are refused.
    pub retire_at: Option<i64>,
}

impl Registry {
    /// Record `cert` (fingerprint `fingerprint`) as the current issuing CA;
    /// the previous current one keeps being accepted until `retire_prev_at`
    /// (`None`: until it is retired explicitly).
    pub fn set_current_issuer(
        &self,
        fingerprint: &str,
        cert: &[u8],
        retire_prev_at: Option<i64>,
    ) -> Result<(), RegistryError> {
        self.atomically(|r| {
            let previous: Option<String> = r
                .db
                .query_row(
                    "SELECT fingerprint FROM issuers WHERE current = 1",
                    [],
                    |row| row.get(0),
                )
                .optional()?;
            r.db.execute(
                "UPDATE issuers SET current = 0, retire_at = COALESCE(?1, retire_at) WHERE current = 1",
                params![retire_prev_at],
            )?;
            r.db.execute(
                "INSERT INTO issuers (fingerprint, cert, created, current) VALUES (?1, ?2, ?3, 1)
                 ON CONFLICT(fingerprint) DO UPDATE SET current = 1, retire_at = NULL",
                params![fingerprint, cert, now()],
            )?;
            let detail = match (&previous, retire_prev_at) {
                (Some(p), Some(at)) => {
                    format!("{fingerprint}; {p} accepted until {at} (Unix time)")
                }
                (Some(p), None) => format!("{fingerprint}; {p} still accepted"),
                (None, _) => fingerprint.to_string(),
            };
            r.audit("issuing_ca_current", "", "", &detail)
        })
    }

    /// Refuse the certificates of issuing CA `fingerprint` from `at` on.
    pub fn retire_issuer(&self, fingerprint: &str, at: i64) -> Result<bool, RegistryError> {
        self.atomically(|r| {
            let n = r.db.execute(
                "UPDATE issuers SET retire_at = ?2 WHERE fingerprint = ?1 AND current = 0",
                params![fingerprint, at],
            )?;
            if n == 1 {
                r.audit(
                    "issuing_ca_retired",
                    "",
                    "",
                    &format!("{fingerprint} from {at} (Unix time)"),
                )?;
            }
            Ok(n == 1)
        })
    }

    /// Every issuing CA, current first, then newest first.
    pub fn issuers(&self) -> Result<Vec<IssuerRow>, RegistryError> {
        let mut q = self.db.prepare(
            "SELECT fingerprint, cert, created, current, retire_at FROM issuers
             ORDER BY current DESC, created DESC, rowid DESC",
        )?;
        let rows = q.query_map([], |r| {
            Ok(IssuerRow {
                fingerprint: r.get(0)?,
                cert: r.get(1)?,
                created: r.get(2)?,
                current: r.get(3)?,
                retire_at: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}
