//! The running relay follows its fleet CA: when `voxgate relay ca
//! rotate-issuing` (another process) makes a new issuing CA current, the
//! relay signs with it from then on, trusts device certificates from it,
//! renews its own certificate from it, and its sessions ask their devices
//! to renew onto it ([`crate::proto::control::RenewNow`]); when a retired
//! issuing CA's date passes, its device certificates stop being anchors
//! (the trust table already refuses them).
//!
//! Root rotations ([`super::roots`]) are followed the same way: the served
//! chain carries the cross certificate during the overlap, `ca.pem` and the
//! anchors follow the live roots, and every session is told of the new
//! root ([`crate::proto::control::TrustRoot`], through [`Fleet::notices`]).

use super::authority;
use super::ca::CaError;
use super::registry::{Registry, now};
use super::roots::{self, FleetRoots, RootNotice};
use super::server_cert::ServerCert;
use super::signer::FleetSigner;
use crate::pki::sealed::Material;
use crate::transport::tls::ClientVerifier;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// What devices are told of the roots, shared with every session.
pub type Notices = watch::Receiver<Option<Arc<RootNotice>>>;

/// What the relay keeps to follow rotations.
#[derive(Debug)]
pub struct Fleet {
    /// The CA that signs now.
    issuing: Arc<dyn FleetSigner>,
    /// The TLS verifier whose anchors follow the issuing CAs and roots.
    verifier: Arc<ClientVerifier>,
    /// The relay's certificate, whose chain follows the roots.
    cert: Arc<ServerCert>,
    /// The sealing inputs, read before the privilege drop.
    material: Material,
    /// The state directory.
    state_dir: PathBuf,
    /// Fingerprints of the anchors the verifier has.
    anchors: Mutex<Vec<String>>,
    /// The roots as last followed.
    roots: Mutex<FleetRoots>,
    notices: watch::Sender<Option<Arc<RootNotice>>>,
    /// When a retirement changes the anchors or roots by itself (Unix s).
    next_due: AtomicI64,
}

impl Fleet {
    /// Follow from here (blocking: reads the registry and `ca.pem`; before
    /// the privilege drop). The relay's chain gets the roots' tail.
    pub fn new(
        issuing: Arc<dyn FleetSigner>,
        verifier: Arc<ClientVerifier>,
        cert: Arc<ServerCert>,
        material: Material,
        state_dir: PathBuf,
        registry: &Registry,
    ) -> Result<Arc<Fleet>, CaError> {
        let (notices, _) = watch::channel(None);
        let fleet = Fleet {
            issuing,
            verifier,
            cert,
            material,
            state_dir,
            anchors: Mutex::new(Vec::new()),
            roots: Mutex::new(FleetRoots::default()),
            notices,
            next_due: AtomicI64::new(i64::MAX),
        };
        fleet.follow(registry)?;
        Ok(Arc::new(fleet))
    }

    /// The issuing CA that signs now.
    pub fn issuing(&self) -> Arc<dyn FleetSigner> {
        self.issuing.clone()
    }

    /// What each session tells its device of the roots.
    pub fn notices(&self) -> Notices {
        self.notices.subscribe()
    }

    /// Whether a retirement date has passed since the last [`Fleet::follow`].
    pub fn due(&self, at: i64) -> bool {
        at >= self.next_due.load(Relaxed)
    }

    /// Catch up with the registry (call it holding the registry). Returns
    /// the new issuing CA's fingerprint when it changed.
    pub fn follow(&self, registry: &Registry) -> Result<Option<String>, CaError> {
        let current = registry.issuers()?.into_iter().find(|i| i.current);
        let mut changed = None;
        if let Some(row) = current
            && row.fingerprint != self.issuing.issuing().fingerprint
        {
            self.issuing
                .switch_to(&self.state_dir, &self.material, &row.fingerprint)?;
            changed = Some(row.fingerprint);
        }
        let at = now();
        let fleet_roots = roots::fleet_roots(&self.state_dir, registry, at)?;
        self.follow_roots(&fleet_roots);
        let anchors = authority::client_anchors(&self.state_dir, registry, at)?;
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
        let next_issuer = registry
            .issuers()?
            .iter()
            .filter_map(|i| i.retire_at)
            .filter(|&t| t > at)
            .min();
        let next = [fleet_roots.next_change, next_issuer]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(i64::MAX);
        self.next_due.store(next, Relaxed);
        Ok(changed)
    }

    fn follow_roots(&self, now: &FleetRoots) {
        let mut have = self.roots.lock().unwrap_or_else(|p| p.into_inner());
        if *have == *now {
            return;
        }
        match roots::sync_ca_pem(&self.state_dir, &now.live) {
            Ok(true) => tracing::info!(
                roots = now.live.len(),
                "ca.pem rewritten for the fleet's live roots"
            ),
            Ok(false) => {}
            Err(e) => {
                tracing::error!(error = %e, "cannot rewrite ca.pem for the fleet's live roots")
            }
        }
        if let Err(e) = self.cert.set_roots(now.live.clone(), now.tail()) {
            tracing::error!(error = %e, "the relay's chain cannot lead to the new roots yet; it will after its certificate is renewed");
        }
        if now.notice.is_some() {
            tracing::warn!(
                live = now.live.len(),
                cross = now.crosses.len(),
                "fleet roots changed: telling every device"
            );
        }
        self.notices.send_replace(now.notice.clone().map(Arc::new));
        *have = now.clone();
    }
}
