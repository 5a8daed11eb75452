//! The audit trail.

use super::{Registry, RegistryError, now};
use rusqlite::params;

impl Registry {
    /// Append an audit event.
    pub fn audit(
        &self,
        event: &str,
        source: &str,
        device: &str,
        detail: &str,
    ) -> Result<(), RegistryError> {
        self.db.execute(
            "INSERT INTO audit (ts, event, source, device, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![now(), event, source, device, detail],
        )?;
        Ok(())
    }

    /// Audit events, oldest first: (event, source, device, detail).
    pub fn audit_events(&self) -> Result<Vec<(String, String, String, String)>, RegistryError> {
        let mut q = self
            .db
            .prepare("SELECT event, source, device, detail FROM audit ORDER BY rowid")?;
        let rows = q.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}
