//! The fleet CA of this release: `voxgate relay init` creates it and the
//! relay's own certificate; `voxgate relay dev-cert` issues development
//! device certificates from it. A [`LocalCa`] is a CA with its key, for the
//! operator's commands and the signer process; the running relay signs
//! through [`super::signer::FleetSigner`] and never holds the key.
//!
//! Key files are written 0600 and created exclusively, so an existing CA is
//! never overwritten. The CA key and the relay's TLS key are sealed to the
//! relay's machine like a device key (`ca.key.sealed`, the sealed-file format of
//! [`crate::pki::sealed`]: PKCS#8 under AES-256-GCM, key derived with
//! HKDF from `[ca] machine_id` and the SoC serial); it is unsealed into
//! zeroizing memory when loaded. A plaintext `ca.key` or `relay.key` from
//! an older release is refused with the command that seals it (`voxgate
//! relay seal-ca`).

use super::registry::RegistryError;
use crate::pki::files::{self, FileError, write_new};
use crate::pki::issue::{self, IssueError};
use crate::pki::name::{fingerprint, valid_device_id};
use crate::pki::sealed::{self, BindingError, MachineBinding, SealError};
use rcgen::{Issuer, KeyPair, PKCS_ECDSA_P256_SHA256};
use rustls::pki_types::CertificateDer;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use thiserror::Error;
use time::Duration;

/// CA certificate file name in the state directory.
pub const CA_CERT: &str = "ca.pem";
/// Plaintext CA key file name of older releases (refused; see
/// [`seal_legacy_keys`]).
pub const CA_KEY: &str = "ca.key";
/// Sealed CA key file name in the state directory.
pub const CA_KEY_SEALED: &str = "ca.key.sealed";
/// Relay certificate file name: the relay's certificate, then the CA's.
pub const RELAY_CERT: &str = "relay.pem";
/// A renewed relay certificate not yet moved over [`RELAY_CERT`].
pub const RELAY_CERT_PENDING: &str = "relay.pem.new";
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
    /// The audit log's key is gone but its rows are chained with it.
    #[error(
        "{0} is missing, but the registry's audit log is chained with the key it held; restore the file from the state directory's backup (a new key would make every row fail `voxgate relay audit --verify`), and see docs/INCIDENT.md"
    )]
    AuditKeyMissing(PathBuf),
    /// The device id is not usable in a certificate.
    #[error("device id `{0}` must be 1-64 characters of a-z, 0-9, '-', '_' or '.'")]
    BadId(String),
    /// The root's key is not on this machine (exported at `relay init`).
    #[error(
        "the root CA key is not on this relay ({0} has no root.key.sealed): give the file `relay init --root-key-out` wrote, with `--root-key FILE`"
    )]
    RootKeyAway(PathBuf),
    /// The root's key file does not open.
    #[error("{path}: {why}")]
    RootKeyFile {
        /// The file.
        path: PathBuf,
        /// Why (wrong passphrase, not such a file).
        why: String,
    },
    /// The system random generator failed.
    #[error("the system random generator failed")]
    Random,
    /// The TLS layer refused the new anchors.
    #[error("device certificate anchors: {0}")]
    Anchors(#[from] crate::transport::tls::TlsError),
    /// A retire date before now.
    #[error("the old issuing CA's certificates cannot be refused from a time in the past")]
    RetireInPast,
    /// A TPM that holds (or is to hold) an issuing CA key failed.
    #[error("TPM: {0}")]
    Tpm(String),
    /// The signer process failed or refused.
    #[error("{0}")]
    Signer(String),
    /// A root rotation while the previous one's overlap still runs.
    #[error(
        "root {0} is still trusted beside the current root (an earlier rotation's overlap): rotate again after it is retired, so that every device can follow the chain of cross certificates"
    )]
    RootOverlap(String),
}

pub(super) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CaError + '_ {
    move |source| CaError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// [`write_new`], with an existing file reported as the CA's own refusal.
pub(super) fn create(path: &Path, data: &[u8], mode: u32) -> Result<(), CaError> {
    write_new(path, data, mode).map_err(|e| match e {
        FileError::Exists(p) => CaError::Exists(p),
        e => e.into(),
    })
}

/// Write `data` to `path` in one step: beside it first (`.tmp`), then
/// renamed over it, so a reader sees the old file or the new one.
pub(super) fn replace(path: &Path, data: &[u8], mode: u32) -> Result<(), CaError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    create(&tmp, data, mode)?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// Create the two-tier fleet CA and the relay certificate (valid
/// `relay_lifetime`) in `state_dir`: the root (`ca.pem`, the CA devices
/// pin), its key where `root_out` says, an issuing CA under it (sealed to
/// the machine) that signs the relay certificate and every device
/// certificate. Returns the root's fingerprint (`SHA256:` + hex of the
/// DER) and where its key went (`None`: sealed in the state directory).
pub fn init(
    state_dir: &Path,
    server_name: &str,
    binding: &MachineBinding,
    relay_lifetime: std::time::Duration,
    root_out: super::authority::RootKeyOut<'_>,
) -> Result<(String, Option<PathBuf>), CaError> {
    let sealed = super::ca_key::KeyStore::Sealed;
    init_in(
        state_dir,
        server_name,
        binding,
        relay_lifetime,
        root_out,
        (&sealed, &sealed),
    )
}

/// [`init`], with the issuing CA's key and the relay's TLS key made where
/// `(issuing, tls)` say (a TPM).
pub fn init_in(
    state_dir: &Path,
    server_name: &str,
    binding: &MachineBinding,
    relay_lifetime: std::time::Duration,
    root_out: super::authority::RootKeyOut<'_>,
    (store, tls_store): (&super::ca_key::KeyStore, &super::ca_key::KeyStore),
) -> Result<(String, Option<PathBuf>), CaError> {
    use super::authority;
    std::fs::create_dir_all(state_dir).map_err(io(state_dir))?;
    let ca_cert_path = state_dir.join(CA_CERT);
    if ca_cert_path.exists() {
        return Err(CaError::Exists(ca_cert_path));
    }
    let material = binding.material()?;
    let (root, root_key, root_params) = authority::new_root()?;
    // The root's key first: if the operator's file cannot be written,
    // nothing else is.
    let root_file = authority::store_root_key(state_dir, binding, &root_key, root_out)?;
    create(&ca_cert_path, root.pem().as_bytes(), 0o644)?;
    // The registry, and the audit log's key (`audit.key.sealed`) with it.
    let registry = super::audit_key::open_registry(state_dir, binding)?;
    let issuing = authority::install_issuing_in(
        state_dir,
        binding,
        store,
        &registry,
        &Issuer::new(root_params, &root_key),
        None,
    )?;
    drop(root_key);

    let (relay_key, key_file, ext) = tls_store.new_key(super::ca_key::Sealing::Held(&material))?;
    let relay = issue::relay_certificate(
        issuing.issuer(),
        &relay_key,
        server_name,
        super::signer::lifetime(relay_lifetime),
    )?;
    let key_path = super::ca_key::relay_key_path(state_dir, ext);
    super::ca_key::make_parent(&key_path, state_dir)?;
    create(&key_path, &key_file, 0o600)?;
    // The relay presents its chain with the issuing CA and the root, so
    // that a device enrolling with only the root's fingerprint can find
    // and pin it.
    let chain = format!(
        "{}{}{}",
        relay.cert.pem(),
        files::pem(issuing.cert(), "CERTIFICATE"),
        root.pem()
    );
    create(&state_dir.join(RELAY_CERT), chain.as_bytes(), 0o644)?;
    registry.audit("relay_cert_issued", "", server_name, &relay.serial.hex())?;
    Ok((fingerprint(root.der()), root_file))
}

/// A CA that signs device and relay certificates (the issuing CA, or the
/// single-tier CA of an older fleet), with its key: in the signer process
/// and the operator's commands, never in the running relay.
pub struct LocalCa {
    issuer: Issuer<'static, super::ca_key::HeldKey>,
    cert: CertificateDer<'static>,
    fingerprint: String,
}

impl std::fmt::Debug for LocalCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCa")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

impl LocalCa {
    /// The CA of certificate `ca_pem` (its first certificate) and its `key`.
    pub fn new(ca_pem: &str, key: KeyPair) -> Result<Self, CaError> {
        Self::with_key(ca_pem, super::ca_key::HeldKey::Soft(key))
    }

    /// The CA of certificate `ca_pem` and its key, wherever it is.
    pub fn with_key(ca_pem: &str, key: super::ca_key::HeldKey) -> Result<Self, CaError> {
        let cert = files::parse_certs(ca_pem.as_bytes())
            .ok()
            .and_then(|c| c.into_iter().next())
            .ok_or_else(|| CaError::KeyFormat(PathBuf::from("CA certificate")))?;
        Ok(LocalCa {
            issuer: Issuer::from_ca_cert_pem(ca_pem, key)?,
            fingerprint: fingerprint(&cert),
            cert,
        })
    }

    /// The issuer that signs device certificates (enrollment, renewal).
    pub fn issuer(&self) -> &Issuer<'static, super::ca_key::HeldKey> {
        &self.issuer
    }

    /// Its certificate.
    pub fn cert(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// `SHA256:` fingerprint of its certificate (the registry's issuer id).
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }
}

/// The CA the relay signs with now: swapped when the issuing CA rotates,
/// so enrollment, renewal and the relay's own certificate move to the new
/// one together.
#[derive(Debug)]
pub struct IssuingCa(std::sync::RwLock<Arc<LocalCa>>);

impl IssuingCa {
    /// Sign with `ca`.
    pub fn new(ca: LocalCa) -> Arc<Self> {
        Arc::new(IssuingCa(std::sync::RwLock::new(Arc::new(ca))))
    }

    /// The CA signing now.
    pub fn current(&self) -> Arc<LocalCa> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Sign with `ca` from now on.
    pub fn set(&self, ca: LocalCa) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(ca);
    }
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
    open_sealed(&sealed_path, binding)
}

/// Unseal the relay's sealed key file `sealed_path` (mode 0600 or
/// stricter) into a zeroizing buffer.
pub(super) fn open_sealed(
    sealed_path: &Path,
    binding: &MachineBinding,
) -> Result<zeroize::Zeroizing<Vec<u8>>, CaError> {
    files::check_key_mode(sealed_path)?;
    let file = std::fs::read(sealed_path).map_err(io(sealed_path))?;
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
            path: sealed_path.to_path_buf(),
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
) -> Result<super::ca_key::HeldKey, CaError> {
    if state_dir.join(super::ca_key::RELAY_KEY_TPM).exists()
        || matches!(
            super::ca_key::KeyStore::of_relay(state_dir)?,
            super::ca_key::KeyStore::Creds
        )
    {
        return super::ca_key::load_relay(state_dir, &binding.material()?);
    }
    let pkcs8 = load_sealed(state_dir, KEYS[1], binding)?;
    key_pair(&pkcs8)
        .map(super::ca_key::HeldKey::Soft)
        .ok_or_else(|| CaError::KeyFormat(state_dir.join(RELAY_KEY_SEALED)))
}

/// The key pair of a PKCS#8 P-256 key.
pub fn key_pair(pkcs8: &[u8]) -> Option<KeyPair> {
    KeyPair::try_from(&rustls::pki_types::PrivatePkcs8KeyDer::from(pkcs8)).ok()
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
    issue_dev_certs(state_dir, binding, &[(device_id, out)], days)
}

/// [`issue_dev_cert`] for many devices at once (each `(id, out)`): the CA
/// is loaded and the registry written once (labs and benches that drive
/// hundreds of devices).
pub fn issue_dev_certs(
    state_dir: &Path,
    binding: &MachineBinding,
    devices: &[(&str, &Path)],
    days: i64,
) -> Result<(), CaError> {
    if let Some((bad, _)) = devices.iter().find(|(id, _)| !valid_device_id(id)) {
        return Err(CaError::BadId(bad.to_string()));
    }
    let ca_cert_path = state_dir.join(CA_CERT);
    if !ca_cert_path.exists() {
        return Err(CaError::Missing(state_dir.to_path_buf()));
    }
    let ca_pem = std::fs::read_to_string(&ca_cert_path).map_err(io(&ca_cert_path))?;
    let registry = super::audit_key::open_registry(state_dir, binding)?;
    let ca = super::authority::migrate_single_tier(state_dir, binding, &registry)?
        .map_or_else(
            || super::authority::load_current(state_dir, binding, &registry),
            |c| Ok(Some(c)),
        )?
        .ok_or_else(|| CaError::Missing(state_dir.to_path_buf()))?;
    let mut issued_all = Vec::with_capacity(devices.len());
    for &(device_id, _) in devices {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let issued = issue::device_certificate(ca.issuer(), &key, device_id, Duration::days(days))?;
        let spki = crate::pki::name::cert_facts(issued.cert.der())
            .map(|f| f.spki)
            .ok_or(CaError::BadId(device_id.into()))?;
        issued_all.push((key, issued, spki));
    }
    // A development certificate replaces whatever the id had, at once.
    registry.atomically(|r| {
        for (&(device_id, _), (_, issued, spki)) in devices.iter().zip(&issued_all) {
            let serial = issued.serial.hex();
            r.record_certificate(
                device_id,
                crate::relay::registry::CertRecord {
                    serial: &serial,
                    spki,
                    not_before: issued.not_before,
                    not_after: issued.not_after,
                    issuer: Some(ca.fingerprint()),
                },
                crate::relay::registry::Replace::AtOnce,
            )?;
            r.audit("dev_cert_issued", "", device_id, &serial)?;
        }
        Ok::<_, CaError>(())
    })?;
    for (&(_, out), (key, issued, _)) in devices.iter().zip(&issued_all) {
        std::fs::create_dir_all(out).map_err(io(out))?;
        create(
            &out.join("device.key"),
            key.serialize_pem().as_bytes(),
            0o600,
        )?;
        // The certificate and the issuing CA it chains through to the root.
        let chain = format!(
            "{}{}",
            issued.cert.pem(),
            files::pem(ca.cert(), "CERTIFICATE")
        );
        create(&out.join("device.pem"), chain.as_bytes(), 0o644)?;
        create(&out.join("ca.pem"), ca_pem.as_bytes(), 0o644)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const YEAR: std::time::Duration = std::time::Duration::from_secs(365 * 86_400);

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
        let keep = || super::super::authority::RootKeyOut::Keep;
        let (fp, file) = init(&dir, "relay.test", &b, YEAR, keep()).unwrap();
        assert!(fp.starts_with("SHA256:") && fp.len() == 7 + 64);
        assert_eq!(file, None, "the root key stayed, sealed");
        use std::os::unix::fs::PermissionsExt;
        let root_key = dir.join(super::super::authority::ROOT_KEY_SEALED);
        let mode = std::fs::metadata(&root_key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!dir.join(CA_KEY).exists(), "no plaintext CA key");
        assert!(!dir.join(RELAY_KEY).exists(), "no plaintext relay key");
        let sealed = std::fs::read(&root_key).unwrap();
        assert!(sealed.starts_with(sealed::MAGIC));
        assert!(!String::from_utf8_lossy(&sealed).contains("PRIVATE KEY"));
        assert!(matches!(
            init(&dir, "relay.test", &b, YEAR, keep()),
            Err(CaError::Exists(_))
        ));
        // Two tiers: the root pinned in ca.pem, the issuing CA under it
        // signs the relay's certificate and devices'.
        let root = files::read_certs(&dir.join(CA_CERT)).unwrap();
        assert_eq!(fingerprint(&root[0]), fp);
        let relay = files::read_certs(&dir.join(RELAY_CERT)).unwrap();
        assert_eq!(relay.len(), 3, "leaf, issuing CA, root");
        assert!(!super::super::authority::is_self_signed(&relay[1]));
        assert_eq!(relay[2], root[0]);
        crate::transport::tls::verify_relay_chain(&root, &relay, "relay.test").unwrap();
        issue_dev_cert(&dir, &b, "gw-7", 30, &dir.join("dev")).unwrap();
        let certs = files::read_certs(&dir.join("dev/device.pem")).unwrap();
        assert_eq!(
            crate::pki::name::common_name(&certs[0]).as_deref(),
            Some("gw-7")
        );
        assert_eq!(certs[1], relay[1], "issued by the issuing CA");
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
        init(
            &dir,
            "relay.test",
            &here,
            YEAR,
            super::super::authority::RootKeyOut::Keep,
        )
        .unwrap();
        // A single-tier fleet of an earlier release: its CA key sealed as
        // `ca.key.sealed`.
        std::fs::copy(
            dir.join(super::super::authority::ROOT_KEY_SEALED),
            dir.join(CA_KEY_SEALED),
        )
        .unwrap();
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
