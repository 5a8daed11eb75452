//! The fleet CA of this release: `voxgate relay init` creates it and the
//! relay's own certificate; `voxgate relay dev-cert` issues development
//! device certificates from it.
//!
//! Key files are written 0600 and created exclusively, so an existing CA is
//! never overwritten. (Sealing the CA key is the identity issue's work.)

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::CertificateDer;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use thiserror::Error;
use time::{Duration, OffsetDateTime};

/// CA certificate file name in the state directory.
pub const CA_CERT: &str = "ca.pem";
/// CA key file name in the state directory.
pub const CA_KEY: &str = "ca.key";
/// Relay certificate file name.
pub const RELAY_CERT: &str = "relay.pem";
/// Relay key file name.
pub const RELAY_KEY: &str = "relay.key";

/// A CA operation failed.
#[derive(Debug, Error)]
pub enum CaError {
    /// Certificate generation failed.
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// A file could not be written or read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// The state directory already holds a CA.
    #[error(
        "{0} already exists; the fleet CA is never overwritten (move it away to start a new fleet)"
    )]
    Exists(PathBuf),
    /// The state directory holds no CA.
    #[error("no fleet CA in {0}; run `voxgate relay init --config FILE` first")]
    Missing(PathBuf),
    /// The registry could not record the certificate.
    #[error("device registry: {0}")]
    Registry(String),
    /// The device id is not usable in a certificate.
    #[error("device id `{0}` must be 1-64 characters of a-z, 0-9, '-', '_' or '.'")]
    BadId(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CaError + '_ {
    move |source| CaError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Write `data` to a new file with `mode`; fails if it exists.
pub fn write_new(path: &Path, data: &[u8], mode: u32) -> Result<(), CaError> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                CaError::Exists(path.to_path_buf())
            } else {
                CaError::Io {
                    path: path.to_path_buf(),
                    source: e,
                }
            }
        })?;
    f.write_all(data).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::minutes(5);
    params.not_after = now + Duration::days(days);
}

fn ca_params() -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "voxgate fleet CA");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p
}

/// Create the CA and the relay certificate in `state_dir`. Returns the CA
/// fingerprint (`SHA256:` + hex of the DER).
pub fn init(state_dir: &Path, server_name: &str) -> Result<String, CaError> {
    std::fs::create_dir_all(state_dir).map_err(io(state_dir))?;
    let ca_cert_path = state_dir.join(CA_CERT);
    if ca_cert_path.exists() {
        return Err(CaError::Exists(ca_cert_path));
    }
    let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = ca_params();
    validity(&mut params, 3650);
    let ca = params.self_signed(&ca_key)?;
    let issuer = Issuer::new(params, &ca_key);

    let relay_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut rp = CertificateParams::new(vec![server_name.to_string()])?;
    rp.distinguished_name.push(DnType::CommonName, server_name);
    rp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    validity(&mut rp, 365);
    let relay = rp.signed_by(&relay_key, &issuer)?;

    write_new(
        &state_dir.join(CA_KEY),
        ca_key.serialize_pem().as_bytes(),
        0o600,
    )?;
    write_new(
        &state_dir.join(RELAY_KEY),
        relay_key.serialize_pem().as_bytes(),
        0o600,
    )?;
    // The relay presents its chain with the CA, so that a device enrolling
    // with only the CA fingerprint can find and pin it.
    let chain = format!("{}{}", relay.pem(), ca.pem());
    write_new(&state_dir.join(RELAY_CERT), chain.as_bytes(), 0o644)?;
    write_new(&ca_cert_path, ca.pem().as_bytes(), 0o644)?;
    super::registry::Registry::open(&state_dir.join(REGISTRY))
        .map_err(|e| CaError::Registry(e.to_string()))?;
    Ok(fingerprint(ca.der()))
}

/// `SHA256:` and the lowercase hex SHA-256 of a certificate's DER.
pub fn fingerprint(der: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, der);
    let hex: String = d.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("SHA256:{hex}")
}

/// Issue a development device certificate for `device_id`, valid `days`,
/// writing `device.pem`, `device.key` (0600) and `ca.pem` into `out`.
pub fn issue_dev_cert(
    state_dir: &Path,
    device_id: &str,
    days: i64,
    out: &Path,
) -> Result<(), CaError> {
    if !crate::config::valid_device_id(device_id) {
        return Err(CaError::BadId(device_id.into()));
    }
    let ca_cert_path = state_dir.join(CA_CERT);
    let ca_key_path = state_dir.join(CA_KEY);
    if !ca_cert_path.exists() {
        return Err(CaError::Missing(state_dir.to_path_buf()));
    }
    let ca_pem = std::fs::read_to_string(&ca_cert_path).map_err(io(&ca_cert_path))?;
    let key_pem =
        zeroize::Zeroizing::new(std::fs::read_to_string(&ca_key_path).map_err(io(&ca_key_path))?);
    let ca_key = KeyPair::from_pem(&key_pem)?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, &ca_key)?;

    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut p = CertificateParams::default();
    let serial = random_serial();
    p.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
    p.distinguished_name.push(DnType::CommonName, device_id);
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    validity(&mut p, days);
    let cert = p.signed_by(&key, &issuer)?;
    let registry = super::registry::Registry::open(&state_dir.join(REGISTRY))
        .map_err(|e| CaError::Registry(e.to_string()))?;
    registry
        .record_certificate(
            device_id,
            &hex(&serial),
            p.not_before.unix_timestamp(),
            p.not_after.unix_timestamp(),
        )
        .map_err(|e| CaError::Registry(e.to_string()))?;
    let _ = registry.audit("dev_cert_issued", "", device_id, &hex(&serial));

    std::fs::create_dir_all(out).map_err(io(out))?;
    write_new(
        &out.join("device.key"),
        key.serialize_pem().as_bytes(),
        0o600,
    )?;
    write_new(&out.join("device.pem"), cert.pem().as_bytes(), 0o644)?;
    write_new(&out.join("ca.pem"), ca_pem.as_bytes(), 0o644)?;
    Ok(())
}

/// Registry database file name in the state directory.
pub const REGISTRY: &str = "registry.sqlite3";

/// 16 random bytes with the top bit clear (a positive DER integer).
fn random_serial() -> [u8; 16] {
    let mut s = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut s)
        .expect("system random generator");
    s[0] &= 0x7f;
    s[0] |= 0x01;
    s
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The subject common name of a certificate.
pub fn common_name(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, x) = x509_parser::parse_x509_certificate(cert).ok()?;
    x.subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_then_issue_and_refuse_overwrite() {
        let dir = std::env::temp_dir().join(format!("vg-ca-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let fp = init(&dir, "relay.test").unwrap();
        assert!(fp.starts_with("SHA256:") && fp.len() == 7 + 64);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join(CA_KEY))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(matches!(init(&dir, "relay.test"), Err(CaError::Exists(_))));
        issue_dev_cert(&dir, "gw-7", 30, &dir.join("dev")).unwrap();
        let certs = crate::transport::tls::read_certs(&dir.join("dev/device.pem")).unwrap();
        assert_eq!(common_name(&certs[0]).as_deref(), Some("gw-7"));
        assert!(matches!(
            issue_dev_cert(&dir, "Bad Id", 30, &dir.join("x")),
            Err(CaError::BadId(_))
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
