//! Where the relay's keys live: the issuing CA's and the relay's own TLS
//! key, each sealed to the machine (a software key, `*.key.sealed`), or
//! inside a TPM (`*.key.tpm`: the TPM's wrapped blob, usable only by that
//! TPM, behind a one-line header that names the TPM). With a TPM the key
//! never exists outside it: the signer process signs certificates through
//! it, the relay its TLS handshakes.
//!
//! Either may also be a systemd credential (`creds-issuing/*.key.cred`,
//! `creds-tls/relay.key.cred`, encrypted by `systemd-creds` to the
//! machine's TPM or host key, in a directory only root reads): systemd
//! gives the issuing keys to `voxgate-signer.service` and the TLS key to
//! `voxgate-relay.service` at start (`LoadCredentialEncrypted=`), and the
//! operator's commands, as root, decrypt them with `systemd-creds`.
//!
//! A new key goes where the one it replaces is ([`KeyStore::follow`],
//! [`KeyStore::of_relay`]), so a key in a TPM stays there across rotations
//! and renewals; `voxgate relay init --issuing-key-tpm SPEC --tls-key-tpm
//! SPEC` puts the first ones there.

use super::ca::CaError;
use crate::identity::tpm::{KeyBlob, Tpm, TpmKey, TpmOptions, TpmSpec};
use crate::pki::sealed::{self, Material};
use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256, SignatureAlgorithm};
use std::path::Path;
use std::sync::Arc;
use zeroize::Zeroizing;

/// The relay's TLS key when a TPM holds it (else `relay.key.sealed`).
pub const RELAY_KEY_TPM: &str = "relay.key.tpm";

/// The first line of a `.key.tpm` file, before the TPM's spec.
pub(crate) const TPM_HEADER: &str = "voxgate-tpm-key v1 ";

/// A signing key of the relay (one per issuing CA, one TLS key, held for
/// the process's life: its size does not matter).
#[allow(clippy::large_enum_variant)]
pub enum HeldKey {
    /// In this process's memory (unsealed).
    Soft(KeyPair),
    /// In a TPM.
    Tpm(TpmKey),
}

impl std::fmt::Debug for HeldKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HeldKey::Soft(_) => "HeldKey::Soft",
            HeldKey::Tpm(_) => "HeldKey::Tpm",
        })
    }
}

impl HeldKey {
    /// Its DER SubjectPublicKeyInfo.
    pub fn spki(&self) -> Vec<u8> {
        use rcgen::PublicKeyData as _;
        match self {
            HeldKey::Soft(k) => k.subject_public_key_info(),
            HeldKey::Tpm(k) => k.spki_der().to_vec(),
        }
    }

    /// A rustls certified key: `chain` (leaf first, for this key) with this
    /// key as the signer.
    pub fn certified(
        &self,
        chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    ) -> Result<rustls::sign::CertifiedKey, CaError> {
        let leaf_spki = chain
            .first()
            .and_then(|c| x509_parser::parse_x509_certificate(c).ok())
            .map(|(_, x)| x.public_key().raw.to_vec());
        if leaf_spki.as_deref() != Some(self.spki().as_slice()) {
            return Err(CaError::Tpm("the certificate is not for this key".into()));
        }
        match self {
            HeldKey::Soft(k) => {
                let der = rustls::pki_types::PrivateKeyDer::Pkcs8(
                    rustls::pki_types::PrivatePkcs8KeyDer::from(k.serialize_der()),
                );
                crate::transport::tls::certified_key(chain, &der).map_err(CaError::Anchors)
            }
            HeldKey::Tpm(k) => Ok(k.certified_key(chain)),
        }
    }
}

impl rcgen::PublicKeyData for HeldKey {
    fn der_bytes(&self) -> &[u8] {
        match self {
            HeldKey::Soft(k) => k.der_bytes(),
            HeldKey::Tpm(k) => k.der_bytes(),
        }
    }
    fn algorithm(&self) -> &'static SignatureAlgorithm {
        match self {
            HeldKey::Soft(k) => k.algorithm(),
            HeldKey::Tpm(k) => rcgen::PublicKeyData::algorithm(k),
        }
    }
}

impl rcgen::SigningKey for HeldKey {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        match self {
            HeldKey::Soft(k) => k.sign(msg),
            HeldKey::Tpm(k) => rcgen::SigningKey::sign(k, msg),
        }
    }
}

/// What a new sealed key is sealed with.
#[derive(Debug, Clone, Copy)]
pub enum Sealing<'a> {
    /// The machine's inputs, read now.
    Read(&'a crate::pki::sealed::MachineBinding),
    /// Inputs read before (a sandboxed daemon).
    Held(&'a Material),
}

/// Where new keys are made.
#[derive(Debug, Clone)]
pub enum KeyStore {
    /// A software key, sealed to this machine.
    Sealed,
    /// A key made inside this TPM.
    Tpm(TpmSpec),
    /// A software key encrypted as a systemd credential (made by root:
    /// the running relay renews its certificate for the same key).
    Creds,
}

/// The directories of the state directory that hold the relay's keys
/// kept as systemd credentials (root's only, each directly in the state
/// directory, so that systemd-tmpfiles creates them with no unsafe path
/// transition): the issuing keys for the signer unit, the TLS key for the
/// relay unit.
pub const CREDENTIALS_DIRS: [&str; 2] = ["creds-issuing", "creds-tls"];

/// The credential id prefix the signer unit loads the issuing keys under
/// (`LoadCredentialEncrypted=voxgate-issuing:/var/lib/voxgate-relay/creds-issuing`).
pub const ISSUING_CRED_ID: &str = "voxgate-issuing";

/// The credential id prefix the relay unit loads its TLS key under
/// (`LoadCredentialEncrypted=voxgate-tls:/var/lib/voxgate-relay/creds-tls`).
pub const TLS_CRED_ID: &str = "voxgate-tls";

/// Where issuing CA `fp`'s key file with extension `ext` goes.
pub fn key_path(state_dir: &Path, fp: &str, ext: &str) -> std::path::PathBuf {
    let (_, sealed) = super::authority::issuing_paths(state_dir, fp);
    let name = sealed.with_extension(ext);
    if ext == "cred" {
        let file = name.file_name().unwrap_or_default().to_owned();
        state_dir.join(CREDENTIALS_DIRS[0]).join(file)
    } else {
        name
    }
}

/// Where the relay's TLS key file with extension `ext` goes.
pub fn relay_key_path(state_dir: &Path, ext: &str) -> std::path::PathBuf {
    let name = format!("relay.key.{ext}");
    if ext == "cred" {
        state_dir.join(CREDENTIALS_DIRS[1]).join(name)
    } else {
        state_dir.join(name)
    }
}

/// Create the directories above a credential file, root's only.
pub fn make_parent(path: &Path, state_dir: &Path) -> Result<(), CaError> {
    use std::os::unix::fs::DirBuilderExt as _;
    match path.parent() {
        Some(dir) if dir != state_dir => std::fs::DirBuilder::new()
            .mode(0o700)
            .recursive(true)
            .create(dir)
            .map_err(super::ca::io(dir)),
        _ => Ok(()),
    }
}

/// A credential systemd gave this unit: `$CREDENTIALS_DIRECTORY/<prefix>_<file>`.
fn given(prefix: &str, file: &Path) -> Option<std::path::PathBuf> {
    let dir = std::env::var_os("CREDENTIALS_DIRECTORY")?;
    let name = file.file_name()?.to_string_lossy();
    let p = Path::new(&dir).join(format!("{prefix}_{name}"));
    p.exists().then_some(p)
}

/// The key kept as credential `cred`: as systemd gave it to this unit, or
/// decrypted by root's `systemd-creds`; `None` when it is not one.
fn load_cred(prefix: &str, cred: &Path) -> Result<Option<HeldKey>, CaError> {
    if let Some(p) = given(prefix, cred) {
        let pkcs8 = Zeroizing::new(std::fs::read(&p).map_err(super::ca::io(&p))?);
        return soft(&pkcs8, &p).map(Some);
    }
    if cred.exists() {
        let path = cred.to_string_lossy();
        let pkcs8 = systemd_creds(&["decrypt", "--name=", &path, "-"], &[])?;
        return soft(&pkcs8, cred).map(Some);
    }
    Ok(None)
}

/// Run `systemd-creds` with `input` on its standard input; its output.
pub(crate) fn systemd_creds(args: &[&str], input: &[u8]) -> Result<Zeroizing<Vec<u8>>, CaError> {
    use std::io::Write as _;
    let fail = |what: String| CaError::Signer(format!("systemd-creds {}: {what}", args[0]));
    let mut cmd = std::process::Command::new("systemd-creds");
    cmd.args(args).env_clear();
    // systemd-creds' own variable naming its host key file (a lab's or a
    // test's key instead of /var/lib/systemd/credential.secret); no secret.
    if let Some(v) = std::env::var_os("SYSTEMD_CREDENTIAL_SECRET") {
        cmd.env("SYSTEMD_CREDENTIAL_SECRET", v);
    }
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| {
            fail(format!(
                "cannot run it ({e}); it is in Debian's `systemd` package"
            ))
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input)
            .map_err(|e| fail(format!("cannot write to it: {e}")))?;
    }
    let out = child.wait_with_output().map_err(|e| fail(e.to_string()))?;
    let out_bytes = Zeroizing::new(out.stdout);
    if !out.status.success() {
        return Err(fail(format!(
            "{} ({}); it needs root (the host key /var/lib/systemd/credential.secret, or the TPM)",
            String::from_utf8_lossy(&out.stderr).trim(),
            out.status
        )));
    }
    Ok(out_bytes)
}

impl KeyStore {
    /// Where the current issuing CA's key is (`Sealed` when there is none
    /// yet, or it is sealed).
    pub fn follow(state_dir: &Path, current_fp: Option<&str>) -> Result<KeyStore, CaError> {
        match current_fp {
            Some(fp) if key_path(state_dir, fp, "cred").exists() => Ok(KeyStore::Creds),
            Some(fp) => Self::of_file(&tpm_path(state_dir, fp)),
            None => Ok(KeyStore::Sealed),
        }
    }

    /// Where the relay's TLS key is.
    pub fn of_relay(state_dir: &Path) -> Result<KeyStore, CaError> {
        let cred = relay_key_path(state_dir, "cred");
        if given(TLS_CRED_ID, &cred).is_some() || cred.exists() {
            return Ok(KeyStore::Creds);
        }
        Self::of_file(&state_dir.join(RELAY_KEY_TPM))
    }

    fn of_file(tpm_file: &Path) -> Result<KeyStore, CaError> {
        if !tpm_file.exists() {
            return Ok(KeyStore::Sealed);
        }
        let file = std::fs::read(tpm_file).map_err(super::ca::io(tpm_file))?;
        Ok(KeyStore::Tpm(parse_tpm_file(tpm_file, &file)?.0))
    }

    /// A new key here, and the file that keeps it (its bytes, and the
    /// extension of `issuing-<fp>.key.*`).
    pub fn new_key(
        &self,
        sealing: Sealing<'_>,
    ) -> Result<(HeldKey, Vec<u8>, &'static str), CaError> {
        match self {
            KeyStore::Sealed => {
                let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
                let pkcs8 = Zeroizing::new(key.serialize_der());
                let file = match sealing {
                    Sealing::Held(m) => sealed::seal(m, &pkcs8),
                    Sealing::Read(b) => sealed::seal(&b.material()?, &pkcs8),
                }
                .map_err(CaError::Seal)?;
                Ok((HeldKey::Soft(key), file, "sealed"))
            }
            KeyStore::Tpm(spec) => {
                let tpm = open(spec)?;
                let blob = tpm
                    .create_device_key()
                    .map_err(|e| CaError::Tpm(e.to_string()))?;
                let mut file = format!("{TPM_HEADER}{spec}\n").into_bytes();
                file.extend_from_slice(&blob.to_bytes());
                Ok((HeldKey::Tpm(TpmKey::new(tpm, blob)), file, "tpm"))
            }
            KeyStore::Creds => {
                let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
                let pkcs8 = Zeroizing::new(key.serialize_der());
                // No name embedded: the unit loads it under an id made from
                // its file name, which holds the certificate's fingerprint.
                let file = systemd_creds(&["encrypt", "--name=", "-", "-"], &pkcs8)?;
                Ok((HeldKey::Soft(key), file.to_vec(), "cred"))
            }
        }
    }
}

pub(crate) fn open(spec: &TpmSpec) -> Result<Arc<Tpm>, CaError> {
    // The signer and the operator's commands use the TPM in turn: a
    // simulator serves one connection at a time.
    let options = TpmOptions {
        shared: matches!(spec, TpmSpec::Simulator(_)),
        ..TpmOptions::recommended(spec)
    };
    Tpm::open_with(spec.clone(), options)
        .map(Arc::new)
        .map_err(|e| CaError::Tpm(format!("{spec}: {e}")))
}

/// The `.key.tpm` file of issuing CA `fp`.
pub fn tpm_path(state_dir: &Path, fp: &str) -> std::path::PathBuf {
    let (_, sealed) = super::authority::issuing_paths(state_dir, fp);
    sealed.with_extension("tpm")
}

pub(crate) fn parse_tpm_file(path: &Path, file: &[u8]) -> Result<(TpmSpec, KeyBlob), CaError> {
    let bad = |what: &str| CaError::Tpm(format!("{}: {what}", path.display()));
    let nl = file
        .iter()
        .position(|&b| b == b'\n')
        .ok_or_else(|| bad("no header line"))?;
    let header = std::str::from_utf8(&file[..nl]).map_err(|_| bad("header is not text"))?;
    let spec: TpmSpec = header
        .strip_prefix(TPM_HEADER)
        .ok_or_else(|| bad("not a voxgate TPM key file"))?
        .parse()
        .map_err(|e: crate::identity::tpm::TpmError| bad(&e.to_string()))?;
    let blob = KeyBlob::from_bytes(&file[nl + 1..]).map_err(|e| bad(&e.to_string()))?;
    Ok((spec, blob))
}

/// The key of issuing CA `fp`: from the TPM its `.key.tpm` file names, or
/// unsealed from `.key.sealed`.
pub fn load(state_dir: &Path, material: &Material, fp: &str) -> Result<HeldKey, CaError> {
    if let Some(key) = load_cred(ISSUING_CRED_ID, &key_path(state_dir, fp, "cred"))? {
        return Ok(key);
    }
    let (_, key_path) = super::authority::issuing_paths(state_dir, fp);
    if !tpm_path(state_dir, fp).exists()
        && !key_path.exists()
        && std::fs::metadata(state_dir.join(CREDENTIALS_DIRS[0]))
            .is_err_and(|e| e.kind() == std::io::ErrorKind::PermissionDenied)
    {
        return Err(CaError::Signer(format!(
            "issuing CA {fp}: its key is not here, and {} is not readable: if it is a systemd credential, only root and voxgate-signer.service (which loads it at start: `systemctl restart voxgate-signer` after a rotation) can use it",
            state_dir.join(CREDENTIALS_DIRS[0]).display()
        )));
    }
    load_either(&tpm_path(state_dir, fp), &key_path, material)
}

pub(crate) fn soft(pkcs8: &[u8], path: &Path) -> Result<HeldKey, CaError> {
    KeyPair::try_from(&rustls::pki_types::PrivatePkcs8KeyDer::from(pkcs8))
        .map(HeldKey::Soft)
        .map_err(|_| CaError::KeyFormat(path.to_path_buf()))
}

/// The relay's TLS key: a systemd credential, from its TPM
/// (`relay.key.tpm`), or unsealed.
pub fn load_relay(state_dir: &Path, material: &Material) -> Result<HeldKey, CaError> {
    if let Some(key) = load_cred(TLS_CRED_ID, &relay_key_path(state_dir, "cred"))? {
        return Ok(key);
    }
    load_either(
        &state_dir.join(RELAY_KEY_TPM),
        &state_dir.join(super::ca::RELAY_KEY_SEALED),
        material,
    )
}

fn load_either(tpm_file: &Path, key_path: &Path, material: &Material) -> Result<HeldKey, CaError> {
    if tpm_file.exists() {
        let file = std::fs::read(tpm_file).map_err(super::ca::io(tpm_file))?;
        let (spec, blob) = parse_tpm_file(tpm_file, &file)?;
        let tpm = open(&spec)?;
        // Loading the blob proves it belongs to this TPM.
        tpm.public_key(&blob)
            .map_err(|e| CaError::Tpm(format!("{}: {e}", tpm_file.display())))?;
        return Ok(HeldKey::Tpm(TpmKey::new(tpm, blob)));
    }
    let key_path = key_path.to_path_buf();
    let file = std::fs::read(&key_path).map_err(super::ca::io(&key_path))?;
    let pkcs8 = sealed::unseal(material, &file).map_err(|e| CaError::Sealed {
        path: key_path.clone(),
        what: e.to_string(),
    })?;
    soft(&pkcs8, &key_path)
}

/// The TPM device the current issuing key needs (kept writable by the
/// signer's sandbox), if it is in one.
pub fn tpm_device(state_dir: &Path, fp: &str) -> Option<std::path::PathBuf> {
    match KeyStore::follow(state_dir, Some(fp)) {
        Ok(KeyStore::Tpm(TpmSpec::Device(p))) => Some(p),
        _ => None,
    }
}

/// Every TPM device an issuing key in `state_dir` needs (from the
/// `issuing-*.key.tpm` files).
pub fn tpm_devices(state_dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(state_dir).into_iter().flatten().flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !(name.starts_with("issuing-") && name.ends_with(".key.tpm")) {
            continue;
        }
        if let Ok(KeyStore::Tpm(TpmSpec::Device(p))) = KeyStore::of_file(&entry.path())
            && !out.contains(&p)
        {
            out.push(p);
        }
    }
    out
}
