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
}

impl Registry {
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
        // The revocation and its audit row commit together.
        self.atomically(|r| {
            let exists: bool =
                r.db.query_row(
                    "SELECT 1 FROM devices WHERE id = ?1",
                    params![device],
                    |_| Ok(true),
                )
                .optional()?
                .unwrap_or(false);
            if !exists {
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
}
