//! Loading the device identity named by `[identity]`: the development PEM
//! key, or the sealed key file bound to this box.

use super::sealed::{self, Material};
use crate::config::{IdentityBackend, IdentityConfig};
use crate::transport::tls::{self, DeviceIdentity, TlsError};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;
use std::path::Path;
use std::sync::Arc;
use thiserror::Error;

/// Why the identity could not be loaded.
#[derive(Debug, Error)]
pub enum IdentityError {
    /// Certificate or key file problem.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The sealed key does not open here.
    #[error("{path}: {source}")]
    Sealed {
        /// The sealed file.
        path: String,
        /// Why.
        source: sealed::SealError,
    },
    /// A binding input could not be read.
    #[error("cannot read {path} (a sealing input): {source}")]
    Binding {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The unsealed key is not a P-256 PKCS#8 key.
    #[error("{0}: the sealed key is not an ECDSA P-256 key")]
    KeyType(String),
}

/// Read the sealing inputs: the machine id, and the SoC serial if the board
/// has one.
pub fn material(machine_id: &Path, serial: Option<&Path>) -> Result<Material, IdentityError> {
    let id = std::fs::read_to_string(machine_id).map_err(|source| IdentityError::Binding {
        path: machine_id.display().to_string(),
        source,
    })?;
    let serial = serial.and_then(|p| std::fs::read(p).ok());
    let serial = serial.map(|s| String::from_utf8_lossy(&s).into_owned());
    Material::new(&id, serial.as_deref()).map_err(|source| IdentityError::Sealed {
        path: machine_id.display().to_string(),
        source,
    })
}

/// An identity whose key was unsealed into memory (zeroized by ring/rustls
/// on drop of the signer).
#[derive(Debug)]
struct Loaded {
    device_id: String,
    key: Arc<CertifiedKey>,
}

#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl rustls::client::ResolvesClientCert for Fixed {
    fn resolve(&self, _: &[&[u8]], _: &[rustls::SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
    fn has_certs(&self) -> bool {
        true
    }
}

impl DeviceIdentity for Loaded {
    fn device_id(&self) -> &str {
        &self.device_id
    }
    fn resolver(&self) -> Arc<dyn rustls::client::ResolvesClientCert> {
        Arc::new(Fixed(self.key.clone()))
    }
}

/// Load the identity `cfg` names for `device_id`.
pub fn load(
    device_id: &str,
    cfg: &IdentityConfig,
) -> Result<Box<dyn DeviceIdentity>, IdentityError> {
    match cfg.backend {
        IdentityBackend::DevFile => Ok(Box::new(tls::DevFileIdentity::load(
            device_id, &cfg.cert, &cfg.key,
        )?)),
        IdentityBackend::SealedFile => {
            tls::check_key_mode(&cfg.key)?;
            let file = std::fs::read(&cfg.key).map_err(|source| {
                IdentityError::Tls(TlsError::Read {
                    path: cfg.key.clone(),
                    source,
                })
            })?;
            let m = material(&cfg.machine_id, cfg.serial.as_deref())?;
            let pkcs8 = sealed::unseal(&m, &file).map_err(|source| IdentityError::Sealed {
                path: cfg.key.display().to_string(),
                source,
            })?;
            let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8.to_vec()));
            let signer = rustls::crypto::ring::sign::any_ecdsa_type(&der)
                .map_err(|_| IdentityError::KeyType(cfg.key.display().to_string()))?;
            let chain = tls::read_certs(&cfg.cert)?;
            let named = crate::relay::ca::common_name(&chain[0]).unwrap_or_default();
            if named != device_id {
                return Err(TlsError::Pem {
                    path: cfg.cert.clone(),
                    what: format!(
                        "names device `{named}`, but the config's device_id is `{device_id}`"
                    ),
                }
                .into());
            }
            Ok(Box::new(Loaded {
                device_id: device_id.into(),
                key: Arc::new(CertifiedKey::new(chain, signer)),
            }))
        }
    }
}
