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

impl Signer for TpmKey {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        self.tpm.sign(&self.blob, message).map_err(|e| {
            tracing::error!(error = %e, "TPM signing failed during a TLS handshake");
            rustls::Error::General(format!("TPM signing failed: {e}"))
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
        self.tpm.sign(&self.blob, msg).map_err(|e| {
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
