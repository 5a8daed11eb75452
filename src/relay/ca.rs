//! The fleet CA of this release: `voxgate relay init` creates it and the
//! relay's own certificate; `voxgate relay dev-cert` issues development
//! device certificates from it.
//!
//! Key files are written 0600 and created exclusively, so an existing CA is
//! never overwritten. The CA key and the relay's TLS key are sealed to the
//! relay's machine like a device key (`ca.key.sealed`, the sealed-file format of
//! [`crate::pki::sealed`]: PKCS#8 under AES-256-GCM, key derived with
//! HKDF from `[ca] machine_id` and the SoC serial); it is unsealed into
//! zeroizing memory when loaded. A plaintext `ca.key` or `relay.key` from
//! an older release is refused with the command that seals it (`voxgate
//! relay seal-ca`).

use super::registry::{Registry, RegistryError};
use crate::pki::files::{self, FileError, write_new};
use crate::pki::issue::{self, IssueError};
use crate::pki::name::{fingerprint, valid_device_id};
use crate::pki::sealed::{self, BindingError, MachineBinding, SealError};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use std::path::{Path, PathBuf};
use thiserror::Error;
use time::{Duration, OffsetDateTime};

/// CA certificate file name in the state directory.
pub const CA_CERT: &str = "ca.pem";
/// Plaintext CA key file name of older releases (refused; see
/// [`seal_legacy_keys`]).
pub const CA_KEY: &str = "ca.key";
/// Sealed CA key file name in the state directory.
pub const CA_KEY_SEALED: &str = "ca.key.sealed";
/// Relay certificate file name.
pub const RELAY_CERT: &str = "relay.pem";
/// Plaintext relay TLS key file name of older releases (refused).
pub const RELAY_KEY: &str = "relay.key";
/// Sealed relay TLS key file name.
pub const RELAY_KEY_SEALED: &str = "relay.key.sealed";
/// Registry database file name in the state directory.
pub const REGISTRY: &str = "registry.sqlite3";

/// A CA operation failed.
#[derive(Debug, Error)]
pub enum CaError {
    /// Certificate generation failed.
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// A device certificate could not be issued.
    #[error(transparent)]
    Issue(#[from] IssueError),
    /// A file could not be written or read.
    #[error(transparent)]
    File(#[from] FileError),
    /// A file could not be read.
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
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The sealing inputs could not be read.
    #[error("fleet CA key: {0}")]
    Binding(#[from] BindingError),
    /// A key could not be sealed.
    #[error("fleet CA key: {0}")]
    Seal(#[source] SealError),
    /// The sealed CA key does not open here.
    #[error(
        "{path}: {what}. The relay's keys open only on the machine that sealed them (its machine-id, `[ca] machine_id`); restore that machine's identity, or start a new fleet with `voxgate relay init` in an empty state directory (every device then re-enrolls with `voxgate setup`)"
    )]
    Sealed {
        /// The sealed key file.
        path: PathBuf,
        /// Why, in the CA's terms.
        what: String,
    },
    /// A plaintext key from an older release.
    #[error(
        "{path} is a plaintext {what} (written by an older `voxgate relay init`); seal it to this machine with `voxgate relay seal-ca --config FILE`, which replaces it with a `.sealed` file"
    )]
    LegacyPlainKey {
        /// The plaintext key file.
        path: PathBuf,
        /// Which key.
        what: &'static str,
    },
    /// A key does not parse.
    #[error("{0}: the key does not parse as an ECDSA P-256 key")]
    KeyFormat(PathBuf),
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

/// [`write_new`], with an existing file reported as the CA's own refusal.
fn create(path: &Path, data: &[u8], mode: u32) -> Result<(), CaError> {
    write_new(path, data, mode).map_err(|e| match e {
        FileError::Exists(p) => CaError::Exists(p),
        e => e.into(),
    })
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - issue::BACKDATE;
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
pub fn init(
    state_dir: &Path,
    server_name: &str,
    binding: &MachineBinding,
) -> Result<String, CaError> {
    std::fs::create_dir_all(state_dir).map_err(io(state_dir))?;
    let ca_cert_path = state_dir.join(CA_CERT);
    if ca_cert_path.exists() {
        return Err(CaError::Exists(ca_cert_path));
    }
    let material = binding.material()?;
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

    for (key, name) in [(&ca_key, CA_KEY_SEALED), (&relay_key, RELAY_KEY_SEALED)] {
        let pkcs8 = zeroize::Zeroizing::new(key.serialize_der());
        let sealed = sealed::seal(&material, &pkcs8).map_err(CaError::Seal)?;
        create(&state_dir.join(name), &sealed, 0o600)?;
    }
    // The relay presents its chain with the CA, so that a device enrolling
    // with only the CA fingerprint can find and pin it.
    let chain = format!("{}{}", relay.pem(), ca.pem());
    create(&state_dir.join(RELAY_CERT), chain.as_bytes(), 0o644)?;
    create(&ca_cert_path, ca.pem().as_bytes(), 0o644)?;
    Registry::open(&state_dir.join(REGISTRY))?;
    Ok(fingerprint(ca.der()))
}

/// The relay's keys at rest: (plaintext name of older releases, sealed
/// name, what it is).
const KEYS: [(&str, &str, &str); 2] = [
    (CA_KEY, CA_KEY_SEALED, "fleet CA key"),
    (RELAY_KEY, RELAY_KEY_SEALED, "relay TLS key"),
];

/// Unseal `sealed` in `state_dir` into a zeroizing PKCS#8 buffer; a
/// plaintext `plain` of an older release is refused with the command
/// that seals it.
fn load_sealed(
    state_dir: &Path,
    (plain, sealed, what): (&str, &str, &'static str),
    binding: &MachineBinding,
) -> Result<zeroize::Zeroizing<Vec<u8>>, CaError> {
    let sealed_path = state_dir.join(sealed);
    let plain_path = state_dir.join(plain);
    if !sealed_path.exists() {
        if plain_path.exists() {
            return Err(CaError::LegacyPlainKey {
                path: plain_path,
                what,
            });
        }
        return Err(CaError::Missing(state_dir.to_path_buf()));
    }
    files::check_key_mode(&sealed_path)?;
    let file = std::fs::read(&sealed_path).map_err(io(&sealed_path))?;
    let material = binding.material()?;
    sealed::unseal(&material, &file).map_err(|e| {
        let what = match e {
            SealError::Open(binding) => {
                format!("does not open: it was modified, or sealed on another machine ({binding})")
            }
            SealError::BindingMismatch => {
                "was sealed with a SoC serial, but this machine has none".into()
            }
            other => other.to_string(),
        };
        CaError::Sealed {
            path: sealed_path.clone(),
            what,
        }
    })
}

/// Unseal the fleet CA key in `state_dir`.
pub fn load_ca_key(state_dir: &Path, binding: &MachineBinding) -> Result<KeyPair, CaError> {
    let pkcs8 = load_sealed(state_dir, KEYS[0], binding)?;
    KeyPair::try_from(&rustls::pki_types::PrivatePkcs8KeyDer::from(&pkcs8[..]))
        .map_err(|_| CaError::KeyFormat(state_dir.join(CA_KEY_SEALED)))
}

/// Unseal the relay's TLS key in `state_dir`.
pub fn load_relay_key(
    state_dir: &Path,
    binding: &MachineBinding,
) -> Result<rustls::pki_types::PrivateKeyDer<'static>, CaError> {
    let pkcs8 = load_sealed(state_dir, KEYS[1], binding)?;
    Ok(rustls::pki_types::PrivateKeyDer::Pkcs8(
        rustls::pki_types::PrivatePkcs8KeyDer::from(pkcs8.to_vec()),
    ))
}

/// The relay's two private keys as PKCS#8, unsealed into zeroizing
/// memory: what `voxgate relay backup --with-keys` encrypts to the
/// operator's passphrase (the sealed files are bound to this machine and
/// would not open on another), and what `relay restore` seals again to the
/// new machine.
pub struct KeyMaterial {
    /// The fleet CA key.
    pub ca: zeroize::Zeroizing<Vec<u8>>,
    /// The relay's TLS key.
    pub relay: zeroize::Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyMaterial([redacted])")
    }
}

/// Unseal both keys in `state_dir` (each must parse as a P-256 key).
pub fn unseal_keys(state_dir: &Path, binding: &MachineBinding) -> Result<KeyMaterial, CaError> {
    let ca = load_sealed(state_dir, KEYS[0], binding)?;
    let relay = load_sealed(state_dir, KEYS[1], binding)?;
    for (der, name) in [(&ca, CA_KEY_SEALED), (&relay, RELAY_KEY_SEALED)] {
        key_pair(der).ok_or_else(|| CaError::KeyFormat(state_dir.join(name)))?;
    }
    Ok(KeyMaterial { ca, relay })
}

/// The key pair of a PKCS#8 P-256 key.
pub fn key_pair(pkcs8: &[u8]) -> Option<KeyPair> {
    KeyPair::try_from(&rustls::pki_types::PrivatePkcs8KeyDer::from(pkcs8)).ok()
}

/// Seal both keys to this machine as `ca.key.sealed` and
/// `relay.key.sealed` in `state_dir` (created exclusively, 0600), and check
/// that they open. Returns the files written (removed again on failure).
pub fn seal_keys(
    state_dir: &Path,
    binding: &MachineBinding,
    keys: &KeyMaterial,
) -> Result<Vec<PathBuf>, CaError> {
    let material = binding.material()?;
    let mut written = Vec::new();
    let result = (|| {
        for (der, name) in [(&keys.ca, CA_KEY_SEALED), (&keys.relay, RELAY_KEY_SEALED)] {
            let sealed = sealed::seal(&material, der).map_err(CaError::Seal)?;
            let path = state_dir.join(name);
            create(&path, &sealed, 0o600)?;
            written.push(path);
        }
        unseal_keys(state_dir, binding).map(|_| ())
    })();
    match result {
        Ok(()) => Ok(written),
        Err(e) => {
            for p in &written {
                let _ = std::fs::remove_file(p);
            }
            Err(e)
        }
    }
}

/// Seal the plaintext `ca.key` and `relay.key` of an older release to this
/// machine: write each `.sealed` file, check that it opens, then overwrite
/// and remove the plaintext. Returns the sealed files written.
pub fn seal_legacy_keys(
    state_dir: &Path,
    binding: &MachineBinding,
) -> Result<Vec<PathBuf>, CaError> {
    let mut done = Vec::new();
    for k @ (plain, sealed_name, _) in KEYS {
        let plain_path = state_dir.join(plain);
        let sealed_path = state_dir.join(sealed_name);
        if !plain_path.exists() {
            continue;
        }
        let pem =
            zeroize::Zeroizing::new(std::fs::read_to_string(&plain_path).map_err(io(&plain_path))?);
        let key = KeyPair::from_pem(&pem).map_err(|_| CaError::KeyFormat(plain_path.clone()))?;
        let pkcs8 = zeroize::Zeroizing::new(key.serialize_der());
        let material = binding.material()?;
        let sealed = sealed::seal(&material, &pkcs8).map_err(CaError::Seal)?;
        create(&sealed_path, &sealed, 0o600)?;
        // The sealed copy opens: only now drop the plaintext (overwritten
        // first, as far as the file system lets an overwrite reach).
        load_sealed(state_dir, k, binding).inspect_err(|_| {
            let _ = std::fs::remove_file(&sealed_path);
        })?;
        std::fs::write(&plain_path, vec![0u8; pem.len()]).map_err(io(&plain_path))?;
        std::fs::remove_file(&plain_path).map_err(io(&plain_path))?;
        done.push(sealed_path);
    }
    if done.is_empty() {
        let sealed = state_dir.join(CA_KEY_SEALED);
        return Err(if sealed.exists() {
            CaError::Exists(sealed)
        } else {
            CaError::Missing(state_dir.to_path_buf())
        });
    }
    Ok(done)
}

/// Issue a development device certificate for `device_id`, valid `days`,
/// writing `device.pem`, `device.key` (0600) and `ca.pem` into `out`.
pub fn issue_dev_cert(
    state_dir: &Path,
    binding: &MachineBinding,
    device_id: &str,
    days: i64,
    out: &Path,
) -> Result<(), CaError> {
    if !valid_device_id(device_id) {
        return Err(CaError::BadId(device_id.into()));
    }
    let ca_cert_path = state_dir.join(CA_CERT);
    if !ca_cert_path.exists() {
        return Err(CaError::Missing(state_dir.to_path_buf()));
    }
    let ca_pem = std::fs::read_to_string(&ca_cert_path).map_err(io(&ca_cert_path))?;
    let ca_key = load_ca_key(state_dir, binding)?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, &ca_key)?;

    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let issued = issue::device_certificate(&issuer, &key, device_id, Duration::days(days))?;
    let serial = issued.serial.hex();
    let registry = Registry::open(&state_dir.join(REGISTRY))?;
    registry.record_certificate(device_id, &serial, issued.not_before, issued.not_after)?;
    let _ = registry.audit("dev_cert_issued", "", device_id, &serial);

    std::fs::create_dir_all(out).map_err(io(out))?;
    create(
        &out.join("device.key"),
        key.serialize_pem().as_bytes(),
        0o600,
    )?;
    create(&out.join("device.pem"), issued.cert.pem().as_bytes(), 0o644)?;
    create(&out.join("ca.pem"), ca_pem.as_bytes(), 0o644)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(dir: &Path, name: &str, id: &str) -> MachineBinding {
        let p = dir.join(name);
        std::fs::write(&p, format!("{id}\n")).unwrap();
        MachineBinding {
            machine_id: p,
            serial: None,
        }
    }

    #[test]
    fn init_then_issue_and_refuse_overwrite() {
        let dir = std::env::temp_dir().join(format!("vg-ca-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let b = binding(&dir, "mid", "0123456789abcdef0123456789abcdef");
        let fp = init(&dir, "relay.test", &b).unwrap();
        assert!(fp.starts_with("SHA256:") && fp.len() == 7 + 64);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join(CA_KEY_SEALED))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!dir.join(CA_KEY).exists(), "no plaintext CA key");
        assert!(!dir.join(RELAY_KEY).exists(), "no plaintext relay key");
        let sealed = std::fs::read(dir.join(CA_KEY_SEALED)).unwrap();
        assert!(sealed.starts_with(sealed::MAGIC));
        assert!(!String::from_utf8_lossy(&sealed).contains("PRIVATE KEY"));
        assert!(matches!(
            init(&dir, "relay.test", &b),
            Err(CaError::Exists(_))
        ));
        issue_dev_cert(&dir, &b, "gw-7", 30, &dir.join("dev")).unwrap();
        let certs = files::read_certs(&dir.join("dev/device.pem")).unwrap();
        assert_eq!(
            crate::pki::name::common_name(&certs[0]).as_deref(),
            Some("gw-7")
        );
        assert!(matches!(
            issue_dev_cert(&dir, &b, "Bad Id", 30, &dir.join("x")),
            Err(CaError::BadId(_))
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn sealed_ca_key_is_bound_to_the_machine_and_legacy_keys_are_sealed_on_request() {
        let dir = std::env::temp_dir().join(format!("vg-ca-seal-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let here = binding(&dir, "mid", "0123456789abcdef0123456789abcdef");
        let other = binding(&dir, "other", "ffffffffffffffffffffffffffffffff");
        init(&dir, "relay.test", &here).unwrap();
        let key = load_ca_key(&dir, &here).unwrap();
        let e = load_ca_key(&dir, &other).unwrap_err().to_string();
        assert!(
            e.contains("sealed on another machine") && e.contains("[ca] machine_id"),
            "{e}"
        );

        load_relay_key(&dir, &here).unwrap();
        assert!(load_relay_key(&dir, &other).is_err());

        // An older release's plaintext keys: refused, with the command.
        std::fs::remove_file(dir.join(CA_KEY_SEALED)).unwrap();
        write_new(&dir.join(CA_KEY), key.serialize_pem().as_bytes(), 0o600).unwrap();
        let e = load_ca_key(&dir, &here).unwrap_err();
        assert!(matches!(e, CaError::LegacyPlainKey { .. }), "{e}");
        assert!(e.to_string().contains("voxgate relay seal-ca"), "{e}");
        let relay_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        std::fs::remove_file(dir.join(RELAY_KEY_SEALED)).unwrap();
        write_new(
            &dir.join(RELAY_KEY),
            relay_key.serialize_pem().as_bytes(),
            0o600,
        )
        .unwrap();
        let e = load_relay_key(&dir, &here).unwrap_err().to_string();
        assert!(e.contains("plaintext relay TLS key"), "{e}");
        let sealed = seal_legacy_keys(&dir, &here).unwrap();
        assert_eq!(sealed.len(), 2);
        assert!(!dir.join(CA_KEY).exists(), "plaintext left behind");
        assert!(!dir.join(RELAY_KEY).exists(), "plaintext left behind");
        let again = load_ca_key(&dir, &here).unwrap();
        assert_eq!(again.public_key_raw(), key.public_key_raw());
        load_relay_key(&dir, &here).unwrap();
        assert!(matches!(
            seal_legacy_keys(&dir, &here),
            Err(CaError::Exists(_))
        ));
        // The CA still issues.
        issue_dev_cert(&dir, &here, "gw-8", 30, &dir.join("dev")).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
