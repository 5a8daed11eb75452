//! The running relay follows its fleet CA: when `voxgate relay ca
//! rotate-issuing` (another process) makes a new issuing CA current, the
//! relay signs with it from then on, trusts device certificates from it,
//! renews its own certificate from it, and its sessions ask their devices
//! to renew onto it ([`crate::proto::control::RenewNow`]); when a retired
//! issuing CA's date passes, its device certificates stop being anchors
//! (the trust table already refuses them).

use super::authority;
use super::ca::{CaError, IssuingCa};
use super::registry::{Registry, now};
use crate::pki::sealed::Material;
use crate::transport::tls::ClientVerifier;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// What the relay keeps to follow rotations.
#[derive(Debug)]
pub struct Fleet {
    /// The CA that signs now.
    pub issuing: Arc<IssuingCa>,
    /// The TLS verifier whose anchors follow the issuing CAs.
    pub verifier: Arc<ClientVerifier>,
    /// The sealing inputs, read before the privilege drop.
    pub material: Material,
    /// The state directory.
    pub state_dir: PathBuf,
    /// Fingerprints of the anchors the verifier has.
    pub anchors: Mutex<Vec<String>>,
}

impl Fleet {
    /// Catch up with the registry (call it holding the registry). Returns
    /// the new issuing CA's fingerprint when it changed.
    pub fn follow(&self, registry: &Registry) -> Result<Option<String>, CaError> {
        let current = registry.issuers()?.into_iter().find(|i| i.current);
        let mut changed = None;
        if let Some(row) = current
            && row.fingerprint != self.issuing.current().fingerprint()
        {
            let ca =
                authority::load_issuing_with(&self.state_dir, &self.material, &row.fingerprint)?;
            self.issuing.set(ca);
            changed = Some(row.fingerprint);
        }
        let anchors = authority::client_anchors(&self.state_dir, registry, now())?;
        let fps: Vec<String> = anchors
            .iter()
            .map(|c| crate::pki::name::fingerprint(c))
            .collect();
        let mut have = self.anchors.lock().unwrap_or_else(|p| p.into_inner());
        if *have != fps {
            self.verifier.set_anchors(&anchors)?;
            tracing::info!(anchors = fps.len(), "device certificate anchors updated");
            *have = fps;
        }
        Ok(changed)
    }
}
