//! Which device owns each extension. The first device to announce an
//! extension owns it from then on, across its reconnects and the relay's
//! restarts: another box cannot claim it while the owner is away.

use super::{Registry, RegistryError, now};
use rusqlite::{OptionalExtension, params};

/// The outcome of [`Registry::claim_extension`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The device owns the extension (now, or since earlier).
    Owned,
    /// Another device owns it.
    Taken(String),
    /// The device owns as many extensions as it may.
    Limit,
}

impl Registry {
    /// Claim `ext` for `device`, which may own at most `max` extensions.
    pub fn claim_extension(
        &self,
        device: &str,
        ext: &str,
        max: usize,
    ) -> Result<Claim, RegistryError> {
        let owner: Option<String> = self
            .db
            .query_row(
                "SELECT device FROM extensions WHERE ext = ?1",
                params![ext],
                |r| r.get(0),
            )
            .optional()?;
        match owner {
            Some(o) if o == device => return Ok(Claim::Owned),
            Some(o) => return Ok(Claim::Taken(o)),
            None => {}
        }
        let owned: i64 = self.db.query_row(
            "SELECT COUNT(*) FROM extensions WHERE device = ?1",
            params![device],
            |r| r.get(0),
        )?;
        if owned as usize >= max {
            return Ok(Claim::Limit);
        }
        self.db.execute(
            "INSERT INTO extensions (ext, device, claimed) VALUES (?1, ?2, ?3)",
            params![ext, device, now()],
        )?;
        Ok(Claim::Owned)
    }

    /// Every extension and its owner.
    pub fn extension_owners(&self) -> Result<Vec<(String, String)>, RegistryError> {
        let mut st = self
            .db
            .prepare("SELECT ext, device FROM extensions ORDER BY ext")?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Free `ext` (an operator's decision: the phone moved to another
    /// box); whether it was owned.
    pub fn release_extension(&self, ext: &str) -> Result<bool, RegistryError> {
        Ok(self
            .db
            .execute("DELETE FROM extensions WHERE ext = ?1", params![ext])?
            > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_claim_holds_until_released() {
        let r = Registry::in_memory().unwrap();
        assert_eq!(r.claim_extension("gw-a", "201", 2).unwrap(), Claim::Owned);
        assert_eq!(r.claim_extension("gw-a", "201", 2).unwrap(), Claim::Owned);
        assert_eq!(
            r.claim_extension("gw-b", "201", 2).unwrap(),
            Claim::Taken("gw-a".into())
        );
        assert_eq!(r.claim_extension("gw-a", "202", 2).unwrap(), Claim::Owned);
        assert_eq!(r.claim_extension("gw-a", "203", 2).unwrap(), Claim::Limit);
        assert!(r.release_extension("201").unwrap());
        assert_eq!(r.claim_extension("gw-b", "201", 2).unwrap(), Claim::Owned);
        assert_eq!(
            r.extension_owners().unwrap(),
            vec![("201".into(), "gw-b".into()), ("202".into(), "gw-a".into())]
        );
    }
}
