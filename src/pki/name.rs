//! What certificates and devices are called: the device id rule, a
//! certificate's subject common name, its fingerprint, and serial numbers.

use ring::rand::{SecureRandom, SystemRandom};
use rustls::pki_types::CertificateDer;

/// Device ids are used in file names and certificate names: 1-64
/// characters of `a-z`, `0-9`, `-`, `_` or `.`, not starting with a dot.
pub fn valid_device_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
        && !id.starts_with('.')
}

/// The subject common name of a certificate, if it parses and has one.
pub fn common_name(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, x) = x509_parser::parse_x509_certificate(cert).ok()?;
    x.subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_string)
}

/// What the relay checks of a device certificate beyond the CA's
/// signature: whom it names, which certificate it is, and which key it
/// carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFacts {
    /// The subject common name (the device id).
    pub device: String,
    /// The serial number, lowercase hex (as the registry records it).
    pub serial: String,
    /// SHA-256 of the DER SubjectPublicKeyInfo.
    pub spki: [u8; 32],
}

/// The [`CertFacts`] of a certificate, if it parses and names a subject.
pub fn cert_facts(cert: &[u8]) -> Option<CertFacts> {
    let (_, x) = x509_parser::parse_x509_certificate(cert).ok()?;
    let device = x
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())?
        .to_string();
    let d = ring::digest::digest(&ring::digest::SHA256, x.public_key().raw);
    let mut spki = [0u8; 32];
    spki.copy_from_slice(d.as_ref());
    Some(CertFacts {
        device,
        serial: hex(x.raw_serial()),
        spki,
    })
}

/// `SHA256:` and the lowercase hex SHA-256 of a certificate's DER.
pub fn fingerprint(der: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, der);
    format!("SHA256:{}", hex(d.as_ref()))
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A certificate serial number: 16 random bytes, a positive DER integer
/// with no leading zero byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Serial([u8; 16]);

/// The system random generator failed.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the system random generator failed")]
pub struct RandomError;

impl Serial {
    /// A fresh random serial.
    pub fn random() -> Result<Serial, RandomError> {
        let mut s = [0u8; 16];
        SystemRandom::new().fill(&mut s).map_err(|_| RandomError)?;
        s[0] = (s[0] & 0x7f) | 0x01;
        Ok(Serial(s))
    }

    /// The serial's bytes.
    pub fn bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// Lowercase hex, as the registry and the audit log record it.
    pub fn hex(&self) -> String {
        hex(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_ids() {
        for ok in ["a", "box-1", "pi_2.lab", &"x".repeat(64)] {
            assert!(valid_device_id(ok), "{ok}");
        }
        for bad in ["", ".hidden", "Box", "a/b", "a b", &"x".repeat(65)] {
            assert!(!valid_device_id(bad), "{bad}");
        }
    }

    #[test]
    fn serials_are_positive_and_distinct() {
        let a = Serial::random().unwrap();
        let b = Serial::random().unwrap();
        assert_ne!(a, b);
        for s in [a, b] {
            assert_eq!(s.bytes()[0] & 0x80, 0);
            assert_ne!(s.bytes()[0], 0);
            assert_eq!(s.hex().len(), 32);
        }
    }

    #[test]
    fn fingerprint_is_sha256_hex() {
        assert_eq!(
            fingerprint(b""),
            "SHA256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
