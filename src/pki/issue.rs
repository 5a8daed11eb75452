//! Issuing certificates: one helper for the CA's development certificates
//! (`voxgate relay dev-cert`) and for enrollment and renewal, so that every
//! device certificate carries the same profile: the device id as subject
//! common name, client authentication only, a random 16-byte serial, valid
//! from five minutes before now (clock skew between relay and box) until
//! its lifetime from now. The relay's own certificate (`relay init` and its
//! renewal) has one helper too: the server name as common name and only
//! DNS name, server authentication only, the same serials and validity.

use super::name::{RandomError, Serial};
use rcgen::{
    CertificateParams, DnType, ExtendedKeyUsagePurpose, Issuer, PublicKeyData, SerialNumber,
    SigningKey,
};
use thiserror::Error;
use time::{Duration, OffsetDateTime};

/// How far a new certificate's validity reaches back, for boxes whose clock
/// runs a little behind the relay's.
pub const BACKDATE: Duration = Duration::minutes(5);

/// A certificate could not be issued.
#[derive(Debug, Error)]
pub enum IssueError {
    /// No serial number could be drawn.
    #[error(transparent)]
    Random(#[from] RandomError),
    /// rcgen refused to sign.
    #[error("signing failed: {0}")]
    Sign(#[from] rcgen::Error),
}

/// A freshly issued device certificate.
#[derive(Debug)]
pub struct Issued {
    /// The certificate.
    pub cert: rcgen::Certificate,
    /// Its serial.
    pub serial: Serial,
    /// Start of validity, Unix seconds.
    pub not_before: i64,
    /// End of validity, Unix seconds.
    pub not_after: i64,
}

/// Issue a client certificate naming `device_id` for `public_key`, signed by
/// `issuer`, valid from [`BACKDATE`] before now until `lifetime` from now.
pub fn device_certificate(
    issuer: &Issuer<'_, impl SigningKey>,
    public_key: &impl PublicKeyData,
    device_id: &str,
    lifetime: Duration,
) -> Result<Issued, IssueError> {
    let serial = Serial::random()?;
    let mut p = CertificateParams::default();
    p.serial_number = Some(SerialNumber::from_slice(serial.bytes()));
    p.distinguished_name.push(DnType::CommonName, device_id);
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let now = OffsetDateTime::now_utc();
    p.not_before = now - BACKDATE;
    p.not_after = now + lifetime;
    let cert = p.signed_by(public_key, issuer)?;
    Ok(Issued {
        cert,
        serial,
        not_before: p.not_before.unix_timestamp(),
        not_after: p.not_after.unix_timestamp(),
    })
}

/// Issue the relay's server certificate naming `server_name` (subject
/// common name and its one DNS subject alternative name) for `public_key`,
/// signed by `issuer`, valid from [`BACKDATE`] before now until `lifetime`
/// from now.
pub fn relay_certificate(
    issuer: &Issuer<'_, impl SigningKey>,
    public_key: &impl PublicKeyData,
    server_name: &str,
    lifetime: Duration,
) -> Result<Issued, IssueError> {
    named(
        issuer,
        public_key,
        server_name,
        lifetime,
        &[ExtendedKeyUsagePurpose::ServerAuth],
    )
}

/// Issue a relay cluster node's certificate: the relay profile, for both
/// ends of a TLS connection (server and client authentication).
pub fn node_certificate(
    issuer: &Issuer<'_, impl SigningKey>,
    public_key: &impl PublicKeyData,
    node: &str,
    lifetime: Duration,
) -> Result<Issued, IssueError> {
    named(
        issuer,
        public_key,
        node,
        lifetime,
        &[
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
    )
}

fn named(
    issuer: &Issuer<'_, impl SigningKey>,
    public_key: &impl PublicKeyData,
    server_name: &str,
    lifetime: Duration,
    usages: &[ExtendedKeyUsagePurpose],
) -> Result<Issued, IssueError> {
    let serial = Serial::random()?;
    let mut p = CertificateParams::new(vec![server_name.to_string()])?;
    p.serial_number = Some(SerialNumber::from_slice(serial.bytes()));
    p.distinguished_name.push(DnType::CommonName, server_name);
    p.extended_key_usages = usages.to_vec();
    let now = OffsetDateTime::now_utc();
    p.not_before = now - BACKDATE;
    p.not_after = now + lifetime;
    let cert = p.signed_by(public_key, issuer)?;
    Ok(Issued {
        cert,
        serial,
        not_before: p.not_before.unix_timestamp(),
        not_after: p.not_after.unix_timestamp(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, IsCa, KeyPair};

    #[test]
    fn device_certificates_name_the_device_and_are_client_only() {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::default();
        ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        let issuer = Issuer::new(ca, &ca_key);
        let key = KeyPair::generate().unwrap();
        let a = device_certificate(&issuer, &key, "box-7", Duration::days(30)).unwrap();
        let b = device_certificate(&issuer, &key, "box-7", Duration::days(30)).unwrap();
        assert_ne!(a.serial, b.serial);
        let der = a.cert.der().clone();
        assert_eq!(
            super::super::name::common_name(&der).as_deref(),
            Some("box-7")
        );
        let (_, x) = x509_parser::parse_x509_certificate(&der).unwrap();
        let eku = x.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth);
        assert_eq!(a.not_after - a.not_before, 30 * 86_400 + 300);
        let now = OffsetDateTime::now_utc().unix_timestamp();
        assert!((now - 310..=now - 290).contains(&a.not_before));
        assert_eq!(x.raw_serial(), a.serial.bytes());
        // The facts the relay's verifier checks: the same key gives the
        // same SPKI hash, another key another.
        let fa = super::super::name::cert_facts(&der).unwrap();
        assert_eq!(
            (fa.device.as_str(), fa.serial.clone()),
            ("box-7", a.serial.hex())
        );
        let fb = super::super::name::cert_facts(b.cert.der()).unwrap();
        assert_eq!(fa.spki, fb.spki);
        let other = KeyPair::generate().unwrap();
        let c = device_certificate(&issuer, &other, "box-7", Duration::days(30)).unwrap();
        assert_ne!(
            super::super::name::cert_facts(c.cert.der()).unwrap().spki,
            fa.spki
        );
    }

    #[test]
    fn relay_certificates_name_the_relay_and_are_server_only() {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::default();
        ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        let issuer = Issuer::new(ca, &ca_key);
        let key = KeyPair::generate().unwrap();
        let a = relay_certificate(&issuer, &key, "relay.test", Duration::seconds(30)).unwrap();
        let b = relay_certificate(&issuer, &key, "relay.test", Duration::seconds(30)).unwrap();
        assert_ne!(a.serial, b.serial, "the same key gets a new serial");
        let der = a.cert.der().clone();
        assert_eq!(
            super::super::name::common_name(&der).as_deref(),
            Some("relay.test")
        );
        let (_, x) = x509_parser::parse_x509_certificate(&der).unwrap();
        let eku = x.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && !eku.client_auth);
        let san = x.subject_alternative_name().unwrap().unwrap().value;
        assert_eq!(
            san.general_names,
            vec![x509_parser::extensions::GeneralName::DNSName("relay.test")]
        );
        assert_eq!(a.not_after - a.not_before, 30 + 300);
        assert_eq!(x.raw_serial(), a.serial.bytes());
    }
}
