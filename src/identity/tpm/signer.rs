//! A TPM-held key as rustls and rcgen see it: rustls signs TLS 1.3
//! handshakes with it (ECDSA_NISTP256_SHA256), rcgen signs CSRs with it.
//!
//! Both libraries hand the signer the message, not a digest; [`Tpm::sign`]
//! hashes it in software and has the TPM sign the digest. rustls calls the
//! signer synchronously inside the handshake, so a slow TPM delays that
//! handshake (not other connections' audio: the encoder never waits on it).

use super::{KeyBlob, Tpm};
use rustls::pki_types::SubjectPublicKeyInfoDer;
use rustls::sign::{CertifiedKey, Signer, SigningKey};
use rustls::{SignatureAlgorithm, SignatureScheme};
use std::sync::Arc;

/// DER prefix of a P-256 SubjectPublicKeyInfo (id-ecPublicKey, prime256v1,
/// BIT STRING of 66 bytes); the 65-byte point follows.
const SPKI_P256_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x02, 0x01, 0x06, 0x08, 0x2A,
    0x86, 0x48, 0xCE, 0x3D, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// A device key held by a TPM, usable as a rustls [`SigningKey`] and as an
/// rcgen [`rcgen::SigningKey`].
#[derive(Debug, Clone)]
pub struct TpmKey {
    tpm: Arc<Tpm>,
    blob: KeyBlob,
    point: [u8; 65],
    spki: Vec<u8>,
}

impl TpmKey {
    /// Use `blob` on `tpm`. The public key comes from the blob; the first
    /// signature shows whether the blob belongs to this TPM.
    pub fn new(tpm: Arc<Tpm>, blob: KeyBlob) -> TpmKey {
        let point = blob.public_key();
        let mut spki = SPKI_P256_PREFIX.to_vec();
        spki.extend_from_slice(&point);
        TpmKey {
            tpm,
            blob,
            point,
            spki,
        }
    }

    /// The public point `04 || X || Y`.
    pub fn public_key(&self) -> [u8; 65] {
        self.point
    }

    /// The DER SubjectPublicKeyInfo of the public key.
    pub fn spki_der(&self) -> &[u8] {
        &self.spki
    }

    /// The TPM that holds the key.
    pub fn tpm(&self) -> &Arc<Tpm> {
        &self.tpm
    }

    /// The key's blob.
    pub fn blob(&self) -> &KeyBlob {
        &self.blob
    }

    /// A rustls certified key: `chain` (leaf first) with this key as signer.
    pub fn certified_key(
        &self,
        chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    ) -> CertifiedKey {
        CertifiedKey::new(chain, Arc::new(self.clone()))
    }
}

impl SigningKey for TpmKey {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
        offered
            .contains(&SignatureScheme::ECDSA_NISTP256_SHA256)
            .then(|| Box::new(self.clone()) as Box<dyn Signer>)
    }

    fn public_key(&self) -> Option<SubjectPublicKeyInfoDer<'_>> {
        Some(SubjectPublicKeyInfoDer::from(&self.spki[..]))
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        SignatureAlgorithm::ECDSA
    }
}

/// Run a blocking TPM call from wherever rustls or rcgen calls the signer.
///
/// rustls's [`Signer::sign`] is synchronous and must return the signature,
/// so the calling thread waits for the TPM whatever we do: a dedicated TPM
/// thread would only move the IO (the device transport already does that,
/// with a time limit) while the tokio worker still sat blocked on the
/// answer. `block_in_place` is what keeps the runtime going: on the
/// multi-thread runtime of `voxgate run` it hands this worker's other tasks
/// (the endpoint driver, the watchdog pings, metrics) to another thread for
/// as long as the TPM takes (tens of milliseconds on an SPI TPM, at most one
/// TPM time limit when it hangs). Outside a runtime, or on a current-thread
/// runtime (where `block_in_place` would panic and there is nothing else to
/// keep running), the call simply runs here.
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// What the operator should do when the TPM fails during a handshake.
fn recovery(e: &super::TpmError) -> &'static str {
    use super::RcKind;
    match e.rc_kind() {
        Some(RcKind::ForeignObject) => {
            "the TPM no longer holds this device's key (cleared or replaced): \
             re-enroll this device with `voxgate setup --backend tpm` and a new token"
        }
        _ => {
            "the gateway keeps retrying; if the TPM stays unusable, \
             re-enroll this device with `voxgate setup` (a new token, another backend)"
        }
    }
}

impl Signer for TpmKey {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        blocking(|| self.tpm.sign(&self.blob, message)).map_err(|e| {
            let what = recovery(&e);
            tracing::error!(error = %e, tpm = %self.tpm.spec(), recovery = what,
                "TPM signing failed during a TLS handshake");
            rustls::Error::General(format!("TPM signing failed: {e}; {what}"))
        })
    }

    fn scheme(&self) -> SignatureScheme {
        SignatureScheme::ECDSA_NISTP256_SHA256
    }
}

impl rcgen::PublicKeyData for TpmKey {
    fn der_bytes(&self) -> &[u8] {
        &self.point
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

impl rcgen::SigningKey for TpmKey {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        blocking(|| self.tpm.sign(&self.blob, msg)).map_err(|e| {
            tracing::error!(error = %e, "TPM signing failed for a certificate request");
            rcgen::Error::RemoteKeyError
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spki_prefix_matches_rcgen() {
        // rcgen builds the SPKI from der_bytes + algorithm; ours must agree.
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let spki = rcgen::PublicKeyData::subject_public_key_info(&kp);
        assert_eq!(&spki[..26], &SPKI_P256_PREFIX);
        assert_eq!(&spki[26..], rcgen::PublicKeyData::der_bytes(&kp));
    }
}
