//! The device's keys and records on disk: a new key for enrollment or
//! renewal (in memory until sealed, or inside the TPM), its CSR, and the
//! renewal record that `voxgate keys status` reads.

use super::tpm::TpmKey;
use crate::pki::files::{FileError, write_file};
use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair as _};
use std::path::Path;
use thiserror::Error;
use zeroize::Zeroizing;

/// A key could not be made, used or stored.
#[derive(Debug, Error)]
pub enum KeyError {
    /// ring could not make or read a P-256 key.
    #[error("key generation failed")]
    Generate,
    /// The certificate request could not be made.
    #[error("CSR: {0}")]
    Csr(#[source] rcgen::Error),
    /// The TPM did not sign the certificate request.
    #[error("the TPM could not sign the certificate request: {0}")]
    TpmCsr(#[source] rcgen::Error),
    /// A file could not be written.
    #[error(transparent)]
    File(#[from] FileError),
}

/// The device key being enrolled.
pub(crate) enum NewKey {
    /// PKCS#8, in memory only until sealed or handed to systemd-creds.
    Software(Zeroizing<Vec<u8>>),
    /// Created in the TPM; only its wrapped blob exists outside it.
    Tpm(Box<TpmKey>),
}

impl NewKey {
    pub(crate) fn software() -> Result<NewKey, KeyError> {
        let rng = ring::rand::SystemRandom::new();
        Ok(NewKey::Software(Zeroizing::new(
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
                .map_err(|_| KeyError::Generate)?
                .as_ref()
                .to_vec(),
        )))
    }

    /// The public point `04 || X || Y`.
    pub(crate) fn public(&self) -> Result<Vec<u8>, KeyError> {
        Ok(match self {
            NewKey::Software(pkcs8) => {
                let rng = ring::rand::SystemRandom::new();
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8, &rng)
                    .map_err(|_| KeyError::Generate)?
                    .public_key()
                    .as_ref()
                    .to_vec()
            }
            NewKey::Tpm(k) => k.public_key().to_vec(),
        })
    }

    pub(crate) fn csr(&self, device_id: &str) -> Result<Vec<u8>, KeyError> {
        let mut p = rcgen::CertificateParams::default();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, device_id);
        Ok(match self {
            NewKey::Software(pkcs8) => {
                let kp = rcgen::KeyPair::try_from(&rustls::pki_types::PrivatePkcs8KeyDer::from(
                    pkcs8.as_slice(),
                ))
                .map_err(|_| KeyError::Generate)?;
                p.serialize_request(&kp)
                    .map_err(KeyError::Csr)?
                    .der()
                    .to_vec()
            }
            NewKey::Tpm(k) => p
                .serialize_request(k.as_ref())
                .map_err(KeyError::TpmCsr)?
                .der()
                .to_vec(),
        })
    }
}

/// The renewal record in the state directory: when the current certificate
/// was obtained and how. `voxgate keys status` shows it; renewal will
/// rewrite it.
pub const RENEWAL_FILE: &str = "renewal.state";

/// Write the renewal record (no secret in it).
pub fn write_renewal_record(dir: &Path, event: &str, not_after: i64) -> Result<(), KeyError> {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let text = format!(
        "# voxgate identity: when the current certificate was obtained\nlast = {now}\nevent = \"{event}\"\nnot_after = {not_after}\n"
    );
    Ok(write_file(&dir.join(RENEWAL_FILE), text.as_bytes(), 0o644)?)
}
