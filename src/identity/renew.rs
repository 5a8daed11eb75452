//! Certificate renewal on the device, over the live relay session: at two
//! thirds of the certificate's lifetime the client sends a CSR (`renew`),
//! the relay answers with a new certificate (`renewed`), and the new key and
//! certificate are stored and used for the next handshake. The running
//! connection is not touched, so audio never drops.
//!
//! A fresh key where the backend can make one: `sealed-file` (a new P-256
//! key, sealed like the first) and `tpm` (a new key created in the TPM).
//! `systemd-creds` keeps its key (the service cannot rewrite the encrypted
//! credential) and renews the certificate only. `dev-file` is not renewed.
//!
//! Crash safety: the certificate is written to `<cert>.new` first, then the
//! key file is replaced (rename), then `<cert>.new` is renamed over the
//! certificate. A crash between the two renames leaves the new key and
//! `<cert>.new`, which [`super::backend::load`] finishes on the next start.

use super::IdentityBackend;
use super::keys::{KeyError, NewKey, write_renewal_record};
use super::tpm::{TpmError, TpmKey};
use crate::pki::files::{FileError, pem, write_file};
use crate::pki::name::{common_name, hex};
use crate::pki::sealed::{self, SealError};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use thiserror::Error;
use zeroize::Zeroizing;

/// The certificate and signer the TLS client presents; swapped on renewal.
#[derive(Debug)]
pub struct CertHolder(RwLock<Arc<CertifiedKey>>);

impl CertHolder {
    /// Hold `key`.
    pub fn new(key: Arc<CertifiedKey>) -> Arc<Self> {
        Arc::new(CertHolder(RwLock::new(key)))
    }

    /// The current certificate and signer.
    pub fn get(&self) -> Arc<CertifiedKey> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set(&self, key: Arc<CertifiedKey>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = key;
    }
}

impl rustls::client::ResolvesClientCert for CertHolder {
    fn resolve(&self, _: &[&[u8]], _: &[rustls::SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }
    fn has_certs(&self) -> bool {
        true
    }
}

/// How the next key is made.
enum KeySource {
    /// A fresh software key, sealed to this box.
    Sealed(sealed::Material),
    /// A fresh key in this TPM.
    Tpm(Arc<super::tpm::Tpm>),
    /// The same software key (systemd credential).
    Same(Zeroizing<Vec<u8>>),
}

/// Renews one device's certificate.
pub struct Renewer {
    device_id: String,
    backend: IdentityBackend,
    cert: PathBuf,
    key: PathBuf,
    holder: Arc<CertHolder>,
    source: KeySource,
    /// When the next attempt is due (Unix seconds).
    due: Mutex<i64>,
}

impl std::fmt::Debug for Renewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Renewer")
            .field("device_id", &self.device_id)
            .field("backend", &self.backend)
            .field("due", &self.due)
            .finish_non_exhaustive()
    }
}

/// A key waiting for its certificate.
pub struct Pending {
    key: NewKey,
    public: Vec<u8>,
    /// Base64 DER of the CSR to send.
    pub csr: String,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending").finish_non_exhaustive()
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// When a certificate valid until `not_after`, obtained at `issued`, is
/// due for renewal: at two thirds of its lifetime.
pub fn due_at(issued: i64, not_after: i64) -> i64 {
    issued + (not_after - issued).max(0) * 2 / 3
}

/// When the current certificate was obtained: the renewal record's time
/// if it describes this certificate, else its notBefore.
pub fn issued_at(cert: &Path, not_before: i64, not_after: i64) -> i64 {
    let record = cert
        .parent()
        .map(|d| d.join(super::keys::RENEWAL_FILE))
        .and_then(|p| std::fs::read_to_string(p).ok());
    let field = |text: &str, name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse::<i64>().ok())
    };
    match record {
        Some(t) if field(&t, "not_after = ") == Some(not_after) => {
            field(&t, "last = ").unwrap_or(not_before)
        }
        _ => not_before,
    }
}

/// The validity of a certificate, Unix seconds.
fn validity(der: &[u8]) -> Option<(i64, i64)> {
    let (_, x) = x509_parser::parse_x509_certificate(der).ok()?;
    Some((
        x.validity().not_before.timestamp(),
        x.validity().not_after.timestamp(),
    ))
}

/// Why a renewal step failed (no secrets in the text).
#[derive(Debug, Error)]
pub enum RenewError {
    /// The next key could not be made or stored.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The TPM could not create the next key.
    #[error("cannot create the next key in the TPM: {0}")]
    Tpm(#[source] TpmError),
    /// The new key could not be sealed.
    #[error("cannot seal the new key: {0}")]
    Seal(#[source] SealError),
    /// A file could not be written.
    #[error(transparent)]
    File(#[from] FileError),
    /// A file could not be moved into place.
    #[error("cannot move {} to {}: {source}", from.display(), to.display())]
    Rename {
        /// The file moved.
        from: PathBuf,
        /// Where to.
        to: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The relay's answer does not parse as a certificate.
    #[error("the relay returned an unreadable certificate")]
    Unreadable,
    /// The relay's certificate is for another key.
    #[error("the relay returned a certificate for another key; not saving it")]
    OtherKey,
    /// The relay's certificate names another device.
    #[error("the relay returned a certificate for `{0}`")]
    OtherDevice(String),
    /// The blocking task that made or stored the key failed.
    #[error("renewal task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// The new key is not usable by rustls.
    #[error("the new key is not an ECDSA P-256 key")]
    KeyType,
}

impl Renewer {
    /// A renewer for the loaded identity; `None` for backends that are not
    /// renewed.
    pub(crate) fn new(
        device_id: &str,
        cfg: &super::IdentityConfig,
        backend: IdentityBackend,
        holder: Arc<CertHolder>,
        tpm: Option<&TpmKey>,
        pkcs8: Option<&[u8]>,
    ) -> Option<Arc<Renewer>> {
        let source = match (backend, tpm, pkcs8) {
            (IdentityBackend::Tpm, Some(k), _) => KeySource::Tpm(k.tpm().clone()),
            (IdentityBackend::SealedFile, _, _) => {
                KeySource::Sealed(sealed::material(&cfg.machine_id, cfg.serial.as_deref()).ok()?)
            }
            (IdentityBackend::SystemdCreds, _, Some(p)) => {
                KeySource::Same(Zeroizing::new(p.to_vec()))
            }
            _ => return None,
        };
        let chain = holder.get();
        let (not_before, not_after) = validity(chain.cert.first()?)?;
        let issued = issued_at(&cfg.cert, not_before, not_after);
        Some(Arc::new(Renewer {
            device_id: device_id.into(),
            backend,
            cert: cfg.cert.clone(),
            key: cfg.key.clone(),
            holder,
            source,
            due: Mutex::new(due_at(issued, not_after)),
        }))
    }

    /// Whether a renewal is due now.
    pub fn is_due(&self) -> bool {
        now() >= *self.due.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// After a failed attempt: try again later (a tenth of the time left,
    /// between 5 s and 10 min). Returns the delay.
    pub fn postpone(&self) -> Duration {
        let left = validity(&self.holder.get().cert[0]).map_or(0, |(_, na)| na - now());
        let wait = (left / 10).clamp(5, 600);
        *self.due.lock().unwrap_or_else(|p| p.into_inner()) = now() + wait;
        Duration::from_secs(wait as u64)
    }

    /// The relay asked for a renewal now (its issuing CA was rotated).
    pub fn renew_now(&self) {
        *self.due.lock().unwrap_or_else(|p| p.into_inner()) = now();
    }

    /// The backend renewed.
    pub fn backend(&self) -> IdentityBackend {
        self.backend
    }

    /// Make the next key and its CSR (blocking: the TPM creates a key).
    pub fn prepare(&self) -> Result<Pending, RenewError> {
        let key = match &self.source {
            KeySource::Sealed(_) => NewKey::software()?,
            KeySource::Tpm(tpm) => {
                let blob = tpm.create_device_key().map_err(RenewError::Tpm)?;
                NewKey::Tpm(Box::new(TpmKey::new(tpm.clone(), blob)))
            }
            KeySource::Same(pkcs8) => NewKey::Software(Zeroizing::new(pkcs8.to_vec())),
        };
        let public = key.public()?;
        let csr = key.csr(&self.device_id)?;
        Ok(Pending {
            key,
            public,
            csr: B64.encode(csr),
        })
    }

    /// Store the new certificate (base64 DER) and key, and present them
    /// from the next handshake on (blocking: file IO, sealing). Returns the
    /// new certificate's serial (hex).
    pub fn commit(&self, pending: Pending, cert_b64: &str) -> Result<String, RenewError> {
        let der = B64.decode(cert_b64).map_err(|_| RenewError::Unreadable)?;
        let (_, x) =
            x509_parser::parse_x509_certificate(&der).map_err(|_| RenewError::Unreadable)?;
        if x.public_key().subject_public_key.data.as_ref() != pending.public.as_slice() {
            return Err(RenewError::OtherKey);
        }
        let named = common_name(&CertificateDer::from(der.clone())).unwrap_or_default();
        if named != self.device_id {
            return Err(RenewError::OtherDevice(named));
        }
        let serial = hex(x.tbs_certificate.raw_serial());
        let not_after = x.validity().not_after.timestamp();
        let chain = vec![CertificateDer::from(der.clone())];

        // 1. The certificate beside the old one.
        let cert_new = pending_cert_path(&self.cert);
        write_file(&cert_new, pem(&der, "CERTIFICATE").as_bytes(), 0o644)?;
        // 2. The key (replaced by rename), and the signer to present.
        let certified = match (&pending.key, &self.source) {
            (NewKey::Tpm(k), _) => {
                replace(&self.key, &k.blob().to_bytes(), 0o600)?;
                k.certified_key(chain)
            }
            (NewKey::Software(pkcs8), KeySource::Sealed(m)) => {
                let sealed = sealed::seal(m, pkcs8).map_err(RenewError::Seal)?;
                replace(&self.key, &sealed, 0o600)?;
                software_key(pkcs8, chain)?
            }
            (NewKey::Software(pkcs8), _) => software_key(pkcs8, chain)?,
        };
        // 3. The certificate into place.
        rename(&cert_new, &self.cert)?;
        if let Some(dir) = self.cert.parent() {
            write_renewal_record(dir, "renewed", not_after)?;
        }
        self.holder.set(Arc::new(certified));
        *self.due.lock().unwrap_or_else(|p| p.into_inner()) = due_at(now(), not_after);
        Ok(serial)
    }
}

fn software_key(
    pkcs8: &[u8],
    chain: Vec<CertificateDer<'static>>,
) -> Result<CertifiedKey, RenewError> {
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8.to_vec()));
    let signer =
        rustls::crypto::ring::sign::any_ecdsa_type(&der).map_err(|_| RenewError::KeyType)?;
    Ok(CertifiedKey::new(chain, signer))
}

/// `<cert>.new`: a renewed certificate not yet moved into place.
pub fn pending_cert_path(cert: &Path) -> PathBuf {
    let mut s = cert.as_os_str().to_os_string();
    s.push(".new");
    PathBuf::from(s)
}

/// rename(2): atomic within the state directory (the seccomp allow-list
/// has rename, renameat and renameat2, whichever the libc uses).
fn rename(from: &Path, to: &Path) -> Result<(), RenewError> {
    std::fs::rename(from, to).map_err(|source| RenewError::Rename {
        from: from.to_path_buf(),
        to: to.to_path_buf(),
        source,
    })
}

/// Replace `path` atomically with `data` (a temporary file, then rename:
/// [`write_file`]).
fn replace(path: &Path, data: &[u8], mode: u32) -> Result<(), RenewError> {
    Ok(write_file(path, data, mode)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_at_two_thirds() {
        assert_eq!(due_at(1_000, 1_300), 1_200);
        assert_eq!(due_at(0, 30 * 86_400), 20 * 86_400);
        assert_eq!(
            due_at(500, 100),
            500,
            "an expired certificate is due at once"
        );
        assert_eq!(
            pending_cert_path(Path::new("/var/lib/voxgate/device.pem")),
            Path::new("/var/lib/voxgate/device.pem.new")
        );
    }
}
