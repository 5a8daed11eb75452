//! The two-tier fleet CA: a root that devices pin, whose key leaves the
//! relay, and an issuing CA under it that signs device and relay
//! certificates and can be rotated with no site visit.
//!
//! State directory layout:
//!
//! | file | what |
//! | --- | --- |
//! | `ca.pem` | the root (the CA devices pin; a single-tier fleet's CA became it); during a root rotation's overlap the new root, then the old one ([`super::roots`]) |
//! | `issuing-<fp>.pem`, `issuing-<fp>.key.sealed` or `.key.tpm` | each issuing CA, its key sealed to the machine or held by a TPM ([`super::ca_key`]) |
//! | `root.key.sealed` | the root's key, only where the operator keeps it on the relay (`relay init --keep-root`: labs and the demo; or a migrated fleet until `relay ca export-root`) |
//!
//! The registry's `issuers` table says which issuing CA signs now and from
//! when a rotated-out one's certificates are refused; the relay reads it
//! twice a second, so a rotation made by `voxgate relay ca rotate-issuing`
//! in another process reaches the running relay by itself.
//!
//! The root's key is written once, at `relay init`, to a file the operator
//! chooses, encrypted under a passphrase ([`crate::pki::passphrase`]); it is
//! needed again only to make the next issuing CA.

use super::ca::{CaError, IssuingCa, LocalCa, create, io};
use super::ca_key::KeyStore;
use super::registry::{Registry, now};
use crate::pki::files;
use crate::pki::issue;
use crate::pki::name::fingerprint;
use crate::pki::passphrase::{self, Passphrase};
use crate::pki::sealed::{self, MachineBinding};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PublicKeyData as _,
};
use rustls::pki_types::CertificateDer;
use std::path::{Path, PathBuf};
use time::{Duration, OffsetDateTime};
use zeroize::Zeroizing;

/// The root's key, sealed to this machine (labs, the demo, a migrated
/// fleet before `relay ca export-root`).
pub const ROOT_KEY_SEALED: &str = "root.key.sealed";
/// Lifetime of a root, days.
pub const ROOT_DAYS: i64 = 20 * 365;
/// Lifetime of an issuing CA, days.
pub const ISSUING_DAYS: i64 = 5 * 365;

/// Where the root's key goes at `relay init`.
#[derive(Debug)]
pub enum RootKeyOut<'a> {
    /// Sealed in the state directory, like the relay's other keys: for labs
    /// and the demo, where the relay's machine is the whole fleet.
    Keep,
    /// Encrypted under the passphrase into a new file the operator keeps
    /// off the relay.
    Export(&'a Path, &'a Passphrase),
}

/// Where the root's key comes from when it is needed (a new issuing CA).
#[derive(Debug)]
pub enum RootKeyIn<'a> {
    /// Sealed in the state directory.
    Machine,
    /// The file `relay init` exported, and its passphrase.
    File(&'a Path, &'a Passphrase),
}

/// Whether `cert` is self-signed (a root): its subject is its issuer.
pub fn is_self_signed(cert: &CertificateDer<'_>) -> bool {
    x509_parser::parse_x509_certificate(cert)
        .map(|(_, x)| x.subject().as_raw() == x.issuer().as_raw())
        .unwrap_or(false)
}

pub(super) fn ca_params(cn: &str, path_len: u8, days: i64) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let now = OffsetDateTime::now_utc();
    p.not_before = now - issue::BACKDATE;
    p.not_after = now + Duration::days(days);
    p
}

/// `what` and the time now (UTC), as CA names are made unique.
pub(super) fn stamped(what: &str) -> String {
    let t = OffsetDateTime::now_utc();
    format!(
        "{what} {:04}-{:02}-{:02} {:02}{:02}{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// A random certificate serial number.
pub(super) fn random_serial() -> Result<rcgen::SerialNumber, CaError> {
    Ok(rcgen::SerialNumber::from_slice(
        crate::pki::name::Serial::random()
            .map_err(|_| CaError::Random)?
            .bytes(),
    ))
}

/// A new root: its certificate and key.
pub fn new_root() -> Result<(rcgen::Certificate, KeyPair, CertificateParams), CaError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let params = ca_params("voxgate fleet root CA", 1, ROOT_DAYS);
    let cert = params.self_signed(&key)?;
    Ok((cert, key, params))
}

/// The issuing CA files of the CA with fingerprint `fp`.
pub fn issuing_paths(state_dir: &Path, fp: &str) -> (PathBuf, PathBuf) {
    let short: String = fp.trim_start_matches("SHA256:").chars().take(16).collect();
    (
        state_dir.join(format!("issuing-{short}.pem")),
        state_dir.join(format!("issuing-{short}.key.sealed")),
    )
}

/// Make a new issuing CA under `root`, store it (certificate, key where
/// the current one's is: sealed, or in its TPM) and make it the one that
/// signs; the previous one's certificates are refused from
/// `retire_prev_at` on. Returns it, ready to sign.
pub fn install_issuing(
    state_dir: &Path,
    binding: &MachineBinding,
    registry: &Registry,
    root: &Issuer<'_, impl rcgen::SigningKey>,
    retire_prev_at: Option<i64>,
) -> Result<LocalCa, CaError> {
    let current = registry.issuers()?.into_iter().find(|i| i.current);
    let store = KeyStore::follow(state_dir, current.as_ref().map(|i| i.fingerprint.as_str()))?;
    install_issuing_in(state_dir, binding, &store, registry, root, retire_prev_at)
}

/// [`install_issuing`] with the key made in `store`.
pub fn install_issuing_in(
    state_dir: &Path,
    binding: &MachineBinding,
    store: &KeyStore,
    registry: &Registry,
    root: &Issuer<'_, impl rcgen::SigningKey>,
    retire_prev_at: Option<i64>,
) -> Result<LocalCa, CaError> {
    let (key, key_file, ext) = store.new_key(super::ca_key::Sealing::Read(binding))?;
    let mut params = ca_params(&stamped("voxgate issuing CA"), 0, ISSUING_DAYS);
    params.serial_number = Some(random_serial()?);
    let cert = params.signed_by(&key, root)?;
    let fp = fingerprint(cert.der());
    let (cert_path, _) = issuing_paths(state_dir, &fp);
    let key_path = super::ca_key::key_path(state_dir, &fp, ext);
    super::ca_key::make_parent(&key_path, state_dir)?;
    create(&key_path, &key_file, 0o600)?;
    create(&cert_path, cert.pem().as_bytes(), 0o644)?;
    registry.set_current_issuer(&fp, cert.der(), retire_prev_at)?;
    LocalCa::with_key(&cert.pem(), key)
}

/// The issuing CA the registry names current, unsealed; `None` for a
/// single-tier fleet that was not migrated yet.
pub fn load_current(
    state_dir: &Path,
    binding: &MachineBinding,
    registry: &Registry,
) -> Result<Option<LocalCa>, CaError> {
    let Some(row) = registry.issuers()?.into_iter().find(|i| i.current) else {
        return Ok(None);
    };
    load_issuing(state_dir, binding, &row.fingerprint).map(Some)
}

/// The issuing CA with fingerprint `fp`, unsealed.
pub fn load_issuing(
    state_dir: &Path,
    binding: &MachineBinding,
    fp: &str,
) -> Result<LocalCa, CaError> {
    load_issuing_with(state_dir, &binding.material()?, fp)
}

/// [`load_issuing`] with the sealing inputs read before (the signer
/// process, whose sandbox hides the machine id).
pub fn load_issuing_with(
    state_dir: &Path,
    material: &sealed::Material,
    fp: &str,
) -> Result<LocalCa, CaError> {
    let (cert_path, _) = issuing_paths(state_dir, fp);
    let pem = std::fs::read_to_string(&cert_path).map_err(io(&cert_path))?;
    LocalCa::with_key(&pem, super::ca_key::load(state_dir, material, fp)?)
}

/// The roots in `ca.pem`.
pub fn roots(state_dir: &Path) -> Result<Vec<CertificateDer<'static>>, CaError> {
    Ok(files::read_certs(&state_dir.join(super::ca::CA_CERT))?)
}

/// What the relay accepts device certificates from at `at`: the live roots
/// (a single-tier fleet's certificates) and every issuing CA not retired.
pub fn client_anchors(
    state_dir: &Path,
    registry: &Registry,
    at: i64,
) -> Result<Vec<CertificateDer<'static>>, CaError> {
    let mut anchors = super::roots::fleet_roots(state_dir, registry, at)?.live;
    for i in registry.issuers()? {
        if i.retire_at.is_none_or(|r| r > at) {
            anchors.push(CertificateDer::from(i.cert));
        }
    }
    Ok(anchors)
}

/// The root as an issuer: its certificate (`ca.pem`) and its key.
pub fn root_issuer(
    state_dir: &Path,
    binding: &MachineBinding,
    key: RootKeyIn<'_>,
) -> Result<Issuer<'static, KeyPair>, CaError> {
    let ca_path = state_dir.join(super::ca::CA_CERT);
    // The current root is the first in `ca.pem` (a root rotation's
    // overlap lists the older one after it).
    let root = files::read_certs(&ca_path)?
        .into_iter()
        .next()
        .ok_or_else(|| CaError::Missing(state_dir.to_path_buf()))?;
    let (pkcs8, from) = match key {
        RootKeyIn::Machine => {
            let sealed_path = state_dir.join(ROOT_KEY_SEALED);
            if sealed_path.exists() {
                (super::ca::open_sealed(&sealed_path, binding)?, sealed_path)
            } else {
                return Err(CaError::RootKeyAway(state_dir.to_path_buf()));
            }
        }
        RootKeyIn::File(path, pass) => {
            let file = std::fs::read(path).map_err(io(path))?;
            let pkcs8 = passphrase::open(pass, &file).map_err(|e| CaError::RootKeyFile {
                path: path.to_path_buf(),
                why: e.to_string(),
            })?;
            (pkcs8, path.to_path_buf())
        }
    };
    let key = KeyPair::try_from(&rustls::pki_types::PrivatePkcs8KeyDer::from(&pkcs8[..]))
        .map_err(|_| CaError::KeyFormat(from.clone()))?;
    // The key of a root that was rotated out signs nothing any more.
    let spki_matches = x509_parser::parse_x509_certificate(&root)
        .is_ok_and(|(_, x)| x.public_key().raw == key.subject_public_key_info().as_slice());
    if !spki_matches {
        return Err(CaError::RootKeyFile {
            path: from,
            why: format!(
                "not the key of the current root {} (after a root rotation, give the new root's key)",
                fingerprint(&root)
            ),
        });
    }
    let issuer = Issuer::from_ca_cert_der(&root, key)?;
    Ok(issuer)
}

/// Write the root's key where `out` says.
pub fn store_root_key(
    state_dir: &Path,
    binding: &MachineBinding,
    key: &KeyPair,
    out: RootKeyOut<'_>,
) -> Result<Option<PathBuf>, CaError> {
    let pkcs8 = Zeroizing::new(key.serialize_der());
    match out {
        RootKeyOut::Keep => {
            let material = binding.material()?;
            let sealed_key = sealed::seal(&material, &pkcs8).map_err(CaError::Seal)?;
            create(&state_dir.join(ROOT_KEY_SEALED), &sealed_key, 0o600)?;
            Ok(None)
        }
        RootKeyOut::Export(path, pass) => {
            let file = passphrase::seal(pass, &pkcs8).map_err(|e| CaError::RootKeyFile {
                path: path.to_path_buf(),
                why: e.to_string(),
            })?;
            create(path, &file, 0o600)?;
            Ok(Some(path.to_path_buf()))
        }
    }
}

/// Move the root's key off the relay: encrypt the sealed copy to `out`
/// under the passphrase, check that it opens, then overwrite and remove
/// the sealed copy.
pub fn export_root(
    state_dir: &Path,
    binding: &MachineBinding,
    out: &Path,
    pass: &Passphrase,
) -> Result<(), CaError> {
    let sealed_path = state_dir.join(ROOT_KEY_SEALED);
    if !sealed_path.exists() {
        return Err(CaError::RootKeyAway(state_dir.to_path_buf()));
    }
    let pkcs8 = super::ca::open_sealed(&sealed_path, binding)?;
    let file = passphrase::seal(pass, &pkcs8).map_err(|e| CaError::RootKeyFile {
        path: out.to_path_buf(),
        why: e.to_string(),
    })?;
    create(out, &file, 0o600)?;
    let back = passphrase::open(pass, &std::fs::read(out).map_err(io(out))?).map_err(|e| {
        CaError::RootKeyFile {
            path: out.to_path_buf(),
            why: e.to_string(),
        }
    })?;
    if back[..] != pkcs8[..] {
        let _ = std::fs::remove_file(out);
        return Err(CaError::RootKeyFile {
            path: out.to_path_buf(),
            why: "the written file does not read back".into(),
        });
    }
    shred(&sealed_path)
}

/// Overwrite `path` with zeros and remove it; nothing to do when it is
/// not there.
pub(super) fn shred(path: &Path) -> Result<(), CaError> {
    let Ok(meta) = std::fs::metadata(path) else {
        return Ok(());
    };
    std::fs::write(path, vec![0u8; meta.len() as usize]).map_err(io(path))?;
    std::fs::remove_file(path).map_err(io(path))
}

/// An existing single-tier fleet (its CA key in `ca.key.sealed`, no issuing
/// CA in the registry): its CA becomes the root (devices keep the
/// fingerprint they pinned), a new issuing CA is made under it, and the
/// root's key moves to `root.key.sealed`, still on the machine until the
/// operator runs `voxgate relay ca export-root`. `None` when there is
/// nothing to migrate.
pub fn migrate_single_tier(
    state_dir: &Path,
    binding: &MachineBinding,
    registry: &Registry,
) -> Result<Option<LocalCa>, CaError> {
    if registry.issuers()?.iter().any(|i| i.current) {
        return Ok(None);
    }
    let legacy = state_dir.join(super::ca::CA_KEY_SEALED);
    if !legacy.exists() {
        if state_dir.join(super::ca::CA_KEY).exists() {
            // A plaintext key of an older release: refused with the
            // command that seals it.
            super::ca::load_ca_key(state_dir, binding)?;
        }
        return Ok(None);
    }
    let root_sealed = state_dir.join(ROOT_KEY_SEALED);
    if !root_sealed.exists() {
        std::fs::copy(&legacy, &root_sealed).map_err(io(&root_sealed))?;
    }
    let root = root_issuer(state_dir, binding, RootKeyIn::Machine)?;
    let issuing = install_issuing(state_dir, binding, registry, &root, None)?;
    registry.audit(
        "ca_migrated",
        "",
        "",
        &format!(
            "single-tier CA became the root; issuing CA {}",
            issuing.fingerprint()
        ),
    )?;
    std::fs::remove_file(&legacy).map_err(io(&legacy))?;
    Ok(Some(issuing))
}

/// A rotation of the issuing CA: a new one under the root signs from now
/// on; the previous one's certificates are accepted until `retire_at`.
pub fn rotate_issuing(
    state_dir: &Path,
    binding: &MachineBinding,
    registry: &Registry,
    root: RootKeyIn<'_>,
    retire_at: i64,
) -> Result<LocalCa, CaError> {
    let root = root_issuer(state_dir, binding, root)?;
    if retire_at < now() {
        return Err(CaError::RetireInPast);
    }
    install_issuing(state_dir, binding, registry, &root, Some(retire_at))
}

/// The issuing CA that signs now, for a command or a test in its own
/// process (the relay keeps its [`IssuingCa`] current by itself).
pub fn signer(
    state_dir: &Path,
    binding: &MachineBinding,
) -> Result<std::sync::Arc<IssuingCa>, CaError> {
    let registry = super::audit_key::open_registry(state_dir, binding)?;
    let ca = migrate_single_tier(state_dir, binding, &registry)?
        .map_or_else(
            || load_current(state_dir, binding, &registry),
            |c| Ok(Some(c)),
        )?
        .ok_or_else(|| CaError::Missing(state_dir.to_path_buf()))?;
    Ok(IssuingCa::new(ca))
}

/// After a compromise, or a restore without keys: from the offline root, a
/// new issuing CA and a new relay key and certificate, with every earlier
/// issuing CA's certificates refused from `retire_at` (devices online until
/// then renew onto the new one; the root they pinned does not change). The
/// root certificate comes back from `previous-fleet/` after a keyless
/// restore. Returns the new issuing CA's fingerprint.
pub fn recover(
    state_dir: &Path,
    binding: &MachineBinding,
    registry: &Registry,
    root: RootKeyIn<'_>,
    retire_at: i64,
    server_name: &str,
    relay_lifetime: std::time::Duration,
) -> Result<String, CaError> {
    if retire_at < now() {
        return Err(CaError::RetireInPast);
    }
    let ca_path = state_dir.join(super::ca::CA_CERT);
    let previous = state_dir
        .join(super::backup::PREVIOUS_FLEET)
        .join(super::ca::CA_CERT);
    if !ca_path.exists() && previous.exists() {
        let pem = std::fs::read(&previous).map_err(io(&previous))?;
        create(&ca_path, &pem, 0o644)?;
    }
    let root = root_issuer(state_dir, binding, root)?;
    let issuing = install_issuing(state_dir, binding, registry, &root, Some(retire_at))?;
    for old in registry.issuers()? {
        if !old.current && old.retire_at.is_none_or(|r| r > retire_at) {
            registry.retire_issuer(&old.fingerprint, retire_at)?;
        }
    }
    // A new relay key and certificate: the old key was on the machine (a
    // TPM-held key is made anew in its TPM).
    let (relay_key, key_file, ext) =
        KeyStore::of_relay(state_dir)?.new_key(super::ca_key::Sealing::Read(binding))?;
    let relay = issue::relay_certificate(
        issuing.issuer(),
        &relay_key,
        server_name,
        Duration::seconds(i64::try_from(relay_lifetime.as_secs()).unwrap_or(i64::MAX / 1_000)),
    )?;
    let roots = files::read_certs(&ca_path)?;
    let chain = format!(
        "{}{}{}",
        relay.cert.pem(),
        files::pem(issuing.cert(), "CERTIFICATE"),
        files::pem(&roots[0], "CERTIFICATE")
    );
    let key_path = super::ca_key::relay_key_path(state_dir, ext);
    super::ca_key::make_parent(&key_path, state_dir)?;
    for (path, data, mode) in [
        (key_path, key_file.as_slice(), 0o600),
        (
            state_dir.join(super::ca::RELAY_CERT),
            chain.as_bytes(),
            0o644,
        ),
    ] {
        super::ca::replace(&path, data, mode)?;
    }
    registry.audit(
        "ca_recovered",
        "",
        server_name,
        &format!(
            "issuing CA {}; earlier issuing CAs refused from {retire_at} (Unix time); new relay key, certificate {}",
            issuing.fingerprint(),
            relay.serial.hex()
        ),
    )?;
    Ok(issuing.fingerprint().to_string())
}
