//! Loading the device identity named by `[identity]`: the development PEM
//! key, the sealed key file bound to this box, the TPM-held key, or the key
//! systemd hands over as an encrypted credential.
//!
//! Everything here runs before the privilege drop: the TPM is opened (its
//! device descriptor, or the simulator's socket, stays open for the life of
//! the process), sealed keys and credentials are read into zeroizing memory.
//! [`LoadedIdentity::verify`] then asks the TPM, after the drop, whether it
//! still holds the key (the TPM's IO thread must be created inside the
//! sandbox, since Landlock and seccomp apply per thread).

use super::renew::{CertHolder, Renewer, pending_cert_path};
use super::tpm::{KeyBlob, Tpm, TpmError, TpmKey};
use super::{IdentityBackend, IdentityConfig};
use crate::pki::files::{self, FileError};
use crate::pki::name::common_name;
use crate::pki::sealed::{self, BindingError};
use crate::transport::tls::{self, DeviceIdentity, TlsError};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;
use std::path::{Path, PathBuf};
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
    /// A sealing input could not be read.
    #[error(transparent)]
    Binding(#[from] BindingError),
    /// A certificate or key file is not usable.
    #[error(transparent)]
    File(#[from] FileError),
    /// The unsealed key is not a P-256 PKCS#8 key.
    #[error("{0}: the sealed key is not an ECDSA P-256 key")]
    KeyType(String),
    /// The TPM cannot be used, or does not hold the device key.
    #[error("TPM {spec}: {source}; {recovery}")]
    Tpm {
        /// Where the TPM is.
        spec: String,
        /// Why.
        source: TpmError,
        /// What to do.
        recovery: &'static str,
    },
    /// The key blob file is not usable.
    #[error(
        "{path}: {source}; re-enroll this device (`voxgate setup --backend tpm` with a new token)"
    )]
    Blob {
        /// The blob file.
        path: String,
        /// Why.
        source: crate::identity::tpm::BlobError,
    },
    /// `auto`: the key file is neither a TPM blob nor a sealed key.
    #[error(
        "{0}: neither a TPM key blob nor a sealed key file; re-enroll this device (`voxgate setup --backend auto` with a new token)"
    )]
    UnknownKeyFile(String),
    /// `systemd-creds`: the credential is not there.
    #[error(
        "{what}; run voxgate under systemd with `LoadCredentialEncrypted={name}` (systemd/voxgate.service), or enroll with another backend (`voxgate setup --backend ...`)"
    )]
    Credential {
        /// What is missing.
        what: String,
        /// The credential's name.
        name: String,
    },
    /// The certificate does not belong to the key.
    #[error(
        "{cert} was issued for another key than the one the `{backend}` backend holds; re-enroll this device (`voxgate setup --backend {backend}` with a new token)"
    )]
    Mismatch {
        /// The certificate file.
        cert: String,
        /// The backend.
        backend: IdentityBackend,
    },
}

const TPM_RECOVERY: &str = "if the TPM was cleared or replaced, re-enroll this device (`voxgate setup --backend tpm` with a new token)";

/// An identity whose key was unsealed into memory (zeroized by ring/rustls
/// on drop of the signer) or is held by the TPM; renewal swaps it.
#[derive(Debug)]
struct Loaded {
    device_id: String,
    key: Arc<CertHolder>,
}

impl DeviceIdentity for Loaded {
    fn device_id(&self) -> &str {
        &self.device_id
    }
    fn resolver(&self) -> Arc<dyn rustls::client::ResolvesClientCert> {
        self.key.clone()
    }
}

/// A loaded identity and how it was loaded.
#[derive(Debug)]
pub struct LoadedIdentity {
    /// What the TLS stack uses.
    pub identity: Box<dyn DeviceIdentity>,
    /// The backend actually used (`auto` resolved).
    pub backend: IdentityBackend,
    /// The TPM-held key, when the backend is the TPM.
    pub tpm: Option<TpmKey>,
    /// Certificate renewal, for the backends that renew.
    pub renewer: Option<Arc<Renewer>>,
}

impl LoadedIdentity {
    /// Ask the TPM whether it still loads the key and reports its public
    /// key (call after the privilege drop; blocks for a few TPM commands).
    /// Without a TPM-held key there is nothing to check.
    pub fn verify(&self) -> Result<(), IdentityError> {
        match &self.tpm {
            Some(k) => verify_tpm_key(k),
            None => Ok(()),
        }
    }
}

/// Load the blob into the TPM and compare the public key it reports.
pub fn verify_tpm_key(k: &TpmKey) -> Result<(), IdentityError> {
    let tpm_err = |source| IdentityError::Tpm {
        spec: k.tpm().spec().to_string(),
        source,
        recovery: TPM_RECOVERY,
    };
    let point = k.tpm().public_key(k.blob()).map_err(tpm_err)?;
    if point != k.public_key() {
        return Err(tpm_err(TpmError::Malformed {
            command: "TPM2_ReadPublic",
            what: "the loaded key's public key differs from the blob's".into(),
        }));
    }
    Ok(())
}

fn read_key_file(path: &Path) -> Result<zeroize::Zeroizing<Vec<u8>>, IdentityError> {
    files::check_key_mode(path)?;
    std::fs::read(path)
        .map(zeroize::Zeroizing::new)
        .map_err(|source| {
            FileError::Read {
                path: path.into(),
                source,
            }
            .into()
        })
}

/// The certificate chain at `cert`, checked to name `device_id` and to
/// carry `spki` (the DER SubjectPublicKeyInfo of the backend's key).
fn chain_for(
    device_id: &str,
    cert: &Path,
    spki: &[u8],
    backend: IdentityBackend,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, IdentityError> {
    let for_key = |chain: &[rustls::pki_types::CertificateDer<'static>]| {
        x509_parser::parse_x509_certificate(&chain[0])
            .map(|(_, x)| x.public_key().raw == spki)
            .unwrap_or(false)
    };
    let mut chain = files::read_certs(cert)?;
    if !for_key(&chain) {
        // A renewal that stopped between replacing the key and moving the
        // new certificate into place: finish it.
        let pending = pending_cert_path(cert);
        match files::read_certs(&pending) {
            Ok(new) if for_key(&new) => {
                std::fs::rename(&pending, cert).map_err(|source| FileError::Write {
                    path: pending.clone(),
                    source,
                })?;
                tracing::warn!(cert = %cert.display(), "finished a certificate renewal interrupted by a stop");
                chain = new;
            }
            _ => {
                return Err(IdentityError::Mismatch {
                    cert: cert.display().to_string(),
                    backend,
                });
            }
        }
    }
    let named = common_name(&chain[0]).unwrap_or_default();
    if named != device_id {
        return Err(TlsError::Pem {
            path: cert.into(),
            what: format!("names device `{named}`, but the config's device_id is `{device_id}`"),
        }
        .into());
    }
    Ok(chain)
}

/// A software key (PKCS#8 P-256) with its certificate.
fn software(
    device_id: &str,
    cfg: &IdentityConfig,
    pkcs8: &[u8],
    what: &str,
    backend: IdentityBackend,
) -> Result<LoadedIdentity, IdentityError> {
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8.to_vec()));
    let signer = rustls::crypto::ring::sign::any_ecdsa_type(&der)
        .map_err(|_| IdentityError::KeyType(what.into()))?;
    let spki = signer
        .public_key()
        .ok_or_else(|| IdentityError::KeyType(what.into()))?;
    let chain = chain_for(device_id, &cfg.cert, spki.as_ref(), backend)?;
    let holder = CertHolder::new(Arc::new(CertifiedKey::new(chain, signer)));
    let renewer = Renewer::new(device_id, cfg, backend, holder.clone(), None, Some(pkcs8));
    Ok(LoadedIdentity {
        identity: Box::new(Loaded {
            device_id: device_id.into(),
            key: holder,
        }),
        backend,
        tpm: None,
        renewer,
    })
}

fn sealed_file(
    device_id: &str,
    cfg: &IdentityConfig,
    file: &[u8],
    backend: IdentityBackend,
) -> Result<LoadedIdentity, IdentityError> {
    let m = sealed::material(&cfg.machine_id, cfg.serial.as_deref())?;
    let pkcs8 = sealed::unseal(&m, file).map_err(|source| IdentityError::Sealed {
        path: cfg.key.display().to_string(),
        source,
    })?;
    software(
        device_id,
        cfg,
        &pkcs8,
        &cfg.key.display().to_string(),
        backend,
    )
}

/// Open the TPM named by `cfg` (before the privilege drop).
pub fn open_tpm(spec: &crate::identity::tpm::TpmSpec) -> Result<Arc<Tpm>, IdentityError> {
    let options = crate::identity::tpm::TpmOptions::recommended(spec);
    Tpm::open_with(spec.clone(), options)
        .map(Arc::new)
        .map_err(|source| IdentityError::Tpm {
            spec: spec.to_string(),
            source,
            recovery: "check `identity.tpm`; a box whose TPM is gone must be re-enrolled with another backend (`voxgate setup --backend sealed-file`)",
        })
}

fn tpm_key(
    device_id: &str,
    cfg: &IdentityConfig,
    file: &[u8],
) -> Result<LoadedIdentity, IdentityError> {
    let blob = KeyBlob::from_bytes(file).map_err(|source| IdentityError::Blob {
        path: cfg.key.display().to_string(),
        source,
    })?;
    let tpm = open_tpm(&cfg.tpm)?;
    let key = TpmKey::new(tpm, blob);
    let chain = chain_for(device_id, &cfg.cert, key.spki_der(), IdentityBackend::Tpm)?;
    let holder = CertHolder::new(Arc::new(key.certified_key(chain)));
    let renewer = Renewer::new(
        device_id,
        cfg,
        IdentityBackend::Tpm,
        holder.clone(),
        Some(&key),
        None,
    );
    Ok(LoadedIdentity {
        identity: Box::new(Loaded {
            device_id: device_id.into(),
            key: holder,
        }),
        backend: IdentityBackend::Tpm,
        tpm: Some(key),
        renewer,
    })
}

/// Where a `systemd-creds` key is: `$CREDENTIALS_DIRECTORY/<name>`.
pub fn credential_path(name: &str) -> Result<PathBuf, IdentityError> {
    match std::env::var_os("CREDENTIALS_DIRECTORY") {
        Some(d) if !d.is_empty() => Ok(Path::new(&d).join(name)),
        _ => Err(IdentityError::Credential {
            what: "CREDENTIALS_DIRECTORY is not set".into(),
            name: name.into(),
        }),
    }
}

/// The PKCS#8 key in a credential: PEM (`PRIVATE KEY`) or DER.
fn credential_key(name: &str) -> Result<(PathBuf, zeroize::Zeroizing<Vec<u8>>), IdentityError> {
    let path = credential_path(name)?;
    if !path.exists() {
        return Err(IdentityError::Credential {
            what: format!("{} does not exist", path.display()),
            name: name.into(),
        });
    }
    let raw = read_key_file(&path)?;
    if raw.starts_with(b"-----") {
        return match files::parse_key(&raw) {
            Some(PrivateKeyDer::Pkcs8(k)) => {
                Ok((path, zeroize::Zeroizing::new(k.secret_pkcs8_der().to_vec())))
            }
            _ => Err(IdentityError::KeyType(path.display().to_string())),
        };
    }
    Ok((path, raw))
}

/// What the key file holds, by its magic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyFileKind {
    /// A TPM key blob.
    TpmBlob,
    /// A sealed key file.
    Sealed,
}

/// Tell a TPM blob from a sealed key file.
pub fn key_file_kind(file: &[u8]) -> Option<KeyFileKind> {
    if file.starts_with(crate::identity::tpm::blob::MAGIC) {
        Some(KeyFileKind::TpmBlob)
    } else if file.starts_with(sealed::MAGIC) {
        Some(KeyFileKind::Sealed)
    } else {
        None
    }
}

/// Load the identity `cfg` names for `device_id`.
pub fn load(device_id: &str, cfg: &IdentityConfig) -> Result<LoadedIdentity, IdentityError> {
    match cfg.backend {
        IdentityBackend::DevFile => Ok(LoadedIdentity {
            identity: Box::new(tls::DevFileIdentity::load(device_id, &cfg.cert, &cfg.key)?),
            backend: IdentityBackend::DevFile,
            tpm: None,
            renewer: None,
        }),
        IdentityBackend::SealedFile => {
            let file = read_key_file(&cfg.key)?;
            sealed_file(device_id, cfg, &file, IdentityBackend::SealedFile)
        }
        IdentityBackend::Tpm => {
            let file = read_key_file(&cfg.key)?;
            tpm_key(device_id, cfg, &file)
        }
        IdentityBackend::Auto => {
            let file = read_key_file(&cfg.key)?;
            match key_file_kind(&file) {
                Some(KeyFileKind::TpmBlob) => {
                    tracing::info!(key = %cfg.key.display(), tpm = %cfg.tpm,
                        "identity backend auto: the key is held by the TPM");
                    tpm_key(device_id, cfg, &file)
                }
                Some(KeyFileKind::Sealed) => {
                    tracing::info!(key = %cfg.key.display(),
                        "identity backend auto: the key is a sealed file (no TPM answered when this device was enrolled)");
                    sealed_file(device_id, cfg, &file, IdentityBackend::SealedFile)
                }
                None => Err(IdentityError::UnknownKeyFile(cfg.key.display().to_string())),
            }
        }
        IdentityBackend::SystemdCreds => {
            let (path, pkcs8) = credential_key(&cfg.credential)?;
            software(
                device_id,
                cfg,
                &pkcs8,
                &path.display().to_string(),
                IdentityBackend::SystemdCreds,
            )
        }
    }
}
