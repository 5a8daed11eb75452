//! Devices, their certificates and revocations.

use super::{Registry, RegistryError, now};
use rusqlite::{OptionalExtension, params};

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
    /// Serial of the current certificate.
    pub serial: Option<String>,
    /// The issuing CA (fingerprint) of the current certificate (`None`:
    /// a single-tier fleet's CA).
    pub issuer: Option<String>,
}

/// A certificate the CA issued, as the registry records it.
#[derive(Debug, Clone, Copy)]
pub struct CertRecord<'a> {
    /// Serial, lowercase hex.
    pub serial: &'a str,
    /// SHA-256 of its SubjectPublicKeyInfo.
    pub spki: &'a [u8; 32],
    /// Validity, Unix seconds.
    pub not_before: i64,
    /// Validity, Unix seconds.
    pub not_after: i64,
    /// Fingerprint of the issuing CA that signed it.
    pub issuer: Option<&'a str>,
}

/// What happens to the device's earlier certificates when a new one
/// becomes current.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replace {
    /// A renewal: the previous current certificate is superseded now and
    /// accepted for the relay's grace (a renewal in flight).
    Grace,
    /// A re-enrollment: every earlier certificate is refused from now on,
    /// and a revocation of the device is undone.
    AtOnce,
}

/// One certificate the relay may still accept (see
/// [`Registry::trust_rows`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustRow {
    /// Device id.
    pub device: String,
    /// Serial, lowercase hex.
    pub serial: String,
    /// SHA-256 of its key (`None`: recorded by a release before keys
    /// were; checked by serial alone).
    pub spki: Option<[u8; 32]>,
    /// When a renewal superseded it (`None`: the current certificate).
    pub superseded_at: Option<i64>,
    /// Its issuing CA's fingerprint (`None`: the CA of a single-tier fleet).
    pub issuer: Option<String>,
    /// When its issuing CA stops being accepted.
    pub issuer_retire_at: Option<i64>,
}

impl Registry {
    /// Whether `device` has ever been enrolled (revoked or not).
    pub fn is_enrolled(&self, device: &str) -> Result<bool, RegistryError> {
        Ok(self
            .db
            .query_row(
                "SELECT 1 FROM devices WHERE id = ?1",
                params![device],
                |_| Ok(true),
            )
            .optional()?
            .unwrap_or(false))
    }

    /// The serial of `device`'s current certificate.
    pub fn current_serial(&self, device: &str) -> Result<Option<String>, RegistryError> {
        Ok(self
            .db
            .query_row(
                "SELECT current_serial FROM devices WHERE id = ?1",
                params![device],
                |r| r.get(0),
            )
            .optional()?
            .flatten())
    }

    /// Record a certificate issued to `device` (recorded if new) and make
    /// it the device's current one; `replace` says what becomes of the
    /// earlier ones.
    pub fn record_certificate(
        &self,
        device: &str,
        cert: CertRecord<'_>,
        replace: Replace,
    ) -> Result<(), RegistryError> {
        let t = now();
        self.db.execute(
            "INSERT INTO devices (id, enrolled) VALUES (?1, ?2) ON CONFLICT(id) DO NOTHING",
            params![device, t],
        )?;
        match replace {
            Replace::Grace => self.db.execute(
                "UPDATE certificates SET superseded_at = ?2 WHERE device = ?1
                 AND superseded_at IS NULL AND replaced_at IS NULL",
                params![device, t],
            )?,
            Replace::AtOnce => {
                self.db.execute(
                    "UPDATE devices SET revoked = NULL WHERE id = ?1",
                    params![device],
                )?;
                self.db.execute(
                    "UPDATE certificates SET replaced_at = ?2 WHERE device = ?1 AND replaced_at IS NULL",
                    params![device, t],
                )?
            }
        };
        self.db.execute(
            "INSERT INTO certificates (serial, device, not_before, not_after, spki, issuer)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                cert.serial,
                device,
                cert.not_before,
                cert.not_after,
                &cert.spki[..],
                cert.issuer
            ],
        )?;
        self.db.execute(
            "UPDATE devices SET current_serial = ?2 WHERE id = ?1",
            params![device, cert.serial],
        )?;
        Ok(())
    }

    /// The certificates the relay may accept at `at`: every device's
    /// current one, and those superseded less than `grace` seconds ago;
    /// none of a revoked device, none replaced by a re-enrollment, none
    /// expired. Certificates of a retired issuing CA stay, with its date:
    /// the trust table refuses them by that date, and says so.
    pub fn trust_rows(&self, at: i64, grace: i64) -> Result<Vec<TrustRow>, RegistryError> {
        let mut q = self.db.prepare(
            "SELECT c.device, c.serial, c.spki, c.superseded_at, c.serial = d.current_serial,
                    c.issuer, i.retire_at
             FROM certificates c JOIN devices d ON d.id = c.device
                  LEFT JOIN issuers i ON i.fingerprint = c.issuer
             WHERE d.revoked IS NULL AND c.replaced_at IS NULL AND c.not_after > ?1
               AND (c.serial = d.current_serial OR c.superseded_at > ?1 - ?2)",
        )?;
        let rows = q.query_map(params![at, grace], |r| {
            let spki: Option<Vec<u8>> = r.get(2)?;
            let current: bool = r.get(4)?;
            // The current certificate is the one `devices` names.
            let superseded_at: Option<i64> = if current { None } else { r.get(3)? };
            Ok(TrustRow {
                device: r.get(0)?,
                serial: r.get(1)?,
                spki: spki.and_then(|s| <[u8; 32]>::try_from(s.as_slice()).ok()),
                superseded_at,
                issuer: r.get(5)?,
                issuer_retire_at: r.get(6)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Mark a device revoked. Returns false if it already was.
    pub fn revoke(&self, device: &str) -> Result<bool, RegistryError> {
        // The revocation and its audit row commit together.
        self.atomically(|r| {
            if !r.is_enrolled(device)? {
                return Err(RegistryError::UnknownDevice(device.into()));
            }
            let changed = r.db.execute(
                "UPDATE devices SET revoked = ?2 WHERE id = ?1 AND revoked IS NULL",
                params![device, now()],
            )?;
            r.audit("device_revoked", "", device, "")?;
            Ok(changed == 1)
        })
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
            "SELECT d.id, d.enrolled, MAX(c.not_after), d.revoked, d.current_serial,
                    (SELECT issuer FROM certificates WHERE serial = d.current_serial)
             FROM devices d LEFT JOIN certificates c ON c.device = d.id
             GROUP BY d.id ORDER BY d.id",
        )?;
        let rows = q.query_map([], |r| {
            Ok(DeviceRow {
                id: r.get(0)?,
                enrolled: r.get(1)?,
                cert_expires: r.get(2)?,
                revoked: r.get(3)?,
                serial: r.get(4)?,
                issuer: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}
