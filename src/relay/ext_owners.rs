//! Which device owns each extension, as the relay enforces it: a copy of
//! the registry's record ([`Registry::claim_extension`]), read without
//! touching the registry; a device's first claim of an extension is
//! written through the group commit on the blocking pool, never on an
//! async worker. A box therefore cannot take another box's extension, nor
//! call as it, whether the owner is connected or not.

use super::commit::GroupCommit;
use super::registry::{Claim, Registry, RegistryError};
use super::switch::MAX_EXTS_PER_SESSION;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// The owners.
#[derive(Debug)]
pub struct ExtOwners {
    owners: RwLock<HashMap<String, String>>,
    writes: Arc<GroupCommit>,
}

impl ExtOwners {
    /// The owners the registry records now (blocking: call it before the
    /// runtime, or on the blocking pool).
    pub fn load(registry: &Registry, writes: Arc<GroupCommit>) -> Result<Self, RegistryError> {
        Ok(ExtOwners {
            owners: RwLock::new(registry.extension_owners()?.into_iter().collect()),
            writes,
        })
    }

    /// Take the registry's owners again (another process released an
    /// extension: `voxgate relay ext release`). Blocking.
    pub fn reload(&self, registry: &Registry) -> Result<(), RegistryError> {
        let owners = registry.extension_owners()?.into_iter().collect();
        *self.owners.write().unwrap_or_else(|p| p.into_inner()) = owners;
        Ok(())
    }

    /// The device that owns `ext`, if another than `device` (a call from
    /// `ext` by `device` is then refused). Reads the copy only.
    pub fn other_owner(&self, device: &str, ext: &str) -> Option<String> {
        self.owners
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(ext)
            .filter(|o| *o != device)
            .cloned()
    }

    /// `device` announces `ext`: owned by it (now or since earlier), or
    /// why not.
    pub async fn claim(&self, device: &str, ext: &str) -> Result<Claim, RegistryError> {
        let known = self
            .owners
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(ext)
            .cloned();
        match known {
            Some(o) if o == device => return Ok(Claim::Owned),
            Some(o) => return Ok(Claim::Taken(o)),
            None => {}
        }
        // Not a valid extension: the switch refuses it with the reason,
        // and the registry keeps no record of it.
        if !crate::proto::signal::valid_extension(ext) {
            return Ok(Claim::Owned);
        }
        let writes = self.writes.clone();
        let (d, e) = (device.to_string(), ext.to_string());
        let claim = tokio::task::spawn_blocking(move || {
            writes.run(move |r| r.claim_extension(&d, &e, MAX_EXTS_PER_SESSION))
        })
        .await
        .map_err(|e| RegistryError::Commit(e.to_string()))??;
        let owner = match &claim {
            Claim::Owned => device.to_string(),
            Claim::Taken(o) => o.clone(),
            Claim::Limit => return Ok(claim),
        };
        self.owners
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(ext.to_string(), owner);
        Ok(claim)
    }
}
