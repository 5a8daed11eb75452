//! The device's fleet roots: the bundle file (`relay.ca`, written by
//! `voxgate setup` into the state directory), the verifier the QUIC client
//! checks the relay with, and what a `trust_root` announcement does to both
//! during a root rotation.
//!
//! A new root is taken only with a cross certificate from a root the
//! device already trusts ([`crate::pki::roots::adopt`]); the bundle is
//! written beside itself and renamed over, so a stop leaves the old bundle
//! or the new one. A bundle that cannot be written (a read-only `/etc`)
//! still changes the verifier, with an error that says the device will not
//! reach the relay after a restart once the old root is retired.

use crate::pki::files::{self, FileError};
use crate::pki::roots::{Announcement, RootError, adopt};
use crate::transport::relay_roots::RelayVerifier;
use crate::transport::tls::TlsError;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use thiserror::Error;

/// Why an announced root was not taken.
#[derive(Debug, Error)]
pub enum RootsError {
    /// The announcement was not base64.
    #[error("the announced root is not base64")]
    Base64,
    /// The announcement did not verify.
    #[error(transparent)]
    Refused(#[from] RootError),
    /// The verifier could not take the roots.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// What an announcement changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Adopted {
    /// Roots trusted now.
    pub roots: usize,
    /// The bundle could not be written (why).
    pub unsaved: Option<String>,
}

/// The device's roots: the bundle file and the verifier.
#[derive(Debug)]
pub struct DeviceRoots {
    path: PathBuf,
    verifier: Arc<RelayVerifier>,
    /// One announcement at a time.
    lock: Mutex<()>,
}

impl DeviceRoots {
    /// Read the bundle at `path`.
    pub fn load(path: &Path) -> Result<Arc<Self>, TlsError> {
        let ca = files::read_certs(path)?;
        Ok(Arc::new(DeviceRoots {
            path: path.to_path_buf(),
            verifier: RelayVerifier::new(&ca)?,
            lock: Mutex::new(()),
        }))
    }

    /// The verifier the QUIC client checks the relay with.
    pub fn verifier(&self) -> Arc<RelayVerifier> {
        self.verifier.clone()
    }

    /// The directory the bundle is rewritten in (kept writable by the
    /// sandbox).
    pub fn dir(&self) -> Option<&Path> {
        self.path.parent().filter(|d| !d.as_os_str().is_empty())
    }

    /// Apply a `trust_root` announcement (blocking: file IO). `Ok(None)`
    /// when the device holds these roots already.
    pub fn apply(
        &self,
        root_b64: &str,
        cross_b64: &str,
        only: bool,
        now_unix: i64,
    ) -> Result<Option<Adopted>, RootsError> {
        let root = B64.decode(root_b64).map_err(|_| RootsError::Base64)?;
        let cross = B64.decode(cross_b64).map_err(|_| RootsError::Base64)?;
        let _one = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let held = self.verifier.roots();
        let a = Announcement {
            root: &root,
            cross: &cross,
            only,
        };
        let Some(next) = adopt(&held, a, now_unix)? else {
            return Ok(None);
        };
        let text: String = next.iter().map(|c| files::pem(c, "CERTIFICATE")).collect();
        let unsaved = write_bundle(&self.path, text.as_bytes())
            .err()
            .map(|e| e.to_string());
        self.verifier.set_roots(&next)?;
        Ok(Some(Adopted {
            roots: next.len(),
            unsaved,
        }))
    }
}

fn write_bundle(path: &Path, data: &[u8]) -> Result<(), FileError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".new");
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    files::write_new(&tmp, data, 0o644)?;
    std::fs::rename(&tmp, path).map_err(|source| FileError::Write {
        path: path.to_path_buf(),
        source,
    })
}
