//! `voxgate relay backup` and `voxgate relay restore`: the relay's state
//! in one file, made while the relay runs, brought back on a new machine.
//!
//! A backup holds the registry as of one moment (SQLite's online backup,
//! [`Registry::snapshot`]: the relay goes on enrolling meanwhile), the fleet
//! CA certificate and the relay's certificate chain, and metadata
//! ([`Meta`]). It holds no private key and no other secret the relay keeps,
//! unless asked (`--with-keys`): then the CA key and the relay's TLS key,
//! unsealed from this machine's binding (a sealed file opens only here),
//! are encrypted together to the operator's passphrase
//! ([`crate::pki::passphrase`]) and only that ciphertext is written. What
//! goes in is a fixed list of named files, so a secret added to the state
//! directory later is never swept in by accident. Recordings are not part
//! of it.
//!
//! The file is written 0600 into a private temporary directory beside
//! the target, synced, and linked into place: it is never overwritten, and
//! a failed backup leaves no partial file under the target's name. (On a
//! file system without hard links it is created exclusively in place.)
//!
//! A restore goes into an empty (or missing) state directory and checks
//! everything before it writes anything: the file's digest, the registry's
//! schema, the passphrase and that the keys are those of the certificates.
//! With keys, it seals them to the new machine's `[ca]` binding and the
//! relay starts as before: same CA, same certificates, devices reconnect.
//! Without them (or `--without-keys`) it restores the registry and keeps
//! the certificates aside: see [`AfterRestore`].

mod archive;
mod keys;
mod restore;

pub use archive::{Archive, ArchiveError, MAX_FILE, Meta, decode_keys, encode_keys};
pub use keys::{KeyMaterial, seal_keys, unseal_keys};
pub use restore::{AfterRestore, KeysChoice, PREVIOUS_FLEET, RestoreReport, restore};

use super::ca::{self, CaError};
use super::registry::{Registry, RegistryError};
use crate::pki::files::{self, FileError};
use crate::pki::passphrase::{self, Passphrase, PassphraseError};
use crate::pki::sealed::{BindingError, MachineBinding};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// A backup or restore failed.
#[derive(Debug, Error)]
pub enum BackupError {
    /// The target file exists.
    #[error("{0} already exists; a backup never overwrites a file (choose another name)")]
    Exists(PathBuf),
    /// A file could not be read or written.
    #[error("{path}: {reason}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: std::io::Error,
    },
    /// A file could not be written.
    #[error(transparent)]
    File(#[from] FileError),
    /// The backup file does not parse.
    #[error("{path}: {reason}")]
    Archive {
        /// The backup file.
        path: PathBuf,
        /// Why.
        reason: ArchiveError,
    },
    /// The state directory holds no fleet CA.
    #[error("no fleet CA in {0}; nothing to back up (is `state_dir` in the config right?)")]
    NoCa(PathBuf),
    /// The CA's keys or files failed.
    #[error(transparent)]
    Ca(#[from] CaError),
    /// The registry failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The passphrase-encrypted keys failed.
    #[error("the backup's keys: {0}")]
    Keys(PassphraseError),
    /// The keys decrypted but are not those of the certificates.
    #[error(
        "the backup's keys do not belong to its certificates ({0}); the file was tampered with"
    )]
    KeyMismatch(&'static str),
    /// A certificate does not parse.
    #[error("the backup's {0} does not parse")]
    BadCertificate(&'static str),
    /// The backup holds keys and no passphrase was given.
    #[error("the backup holds keys encrypted to a passphrase; give it, or restore --without-keys")]
    NeedPassphrase,
    /// The state directory is not empty.
    #[error(
        "{dir} is not empty (it holds {first}{more}); a restore only writes into an empty state directory: move the old one away, or point `state_dir` in the config at a new one"
    )]
    NotEmpty {
        /// The state directory.
        dir: PathBuf,
        /// One of its entries.
        first: String,
        /// ", and N more" or nothing.
        more: String,
    },
    /// The sealing inputs of this machine cannot be read.
    #[error(transparent)]
    Binding(#[from] BindingError),
    /// The registry in the backup is from a newer release.
    #[error(
        "the backup's registry has schema version {found}, newer than this voxgate knows ({known}); restore with the release that made it ({release})"
    )]
    NewerSchema {
        /// The backup's schema.
        found: i64,
        /// This build's.
        known: i64,
        /// The release named in the backup.
        release: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BackupError + '_ {
    move |reason| BackupError::Io {
        path: path.to_path_buf(),
        reason,
    }
}

/// What a backup wrote.
#[derive(Debug, Clone)]
pub struct BackupReport {
    /// The metadata it carries.
    pub meta: Meta,
    /// Its size in bytes.
    pub bytes: usize,
}

/// Removes a directory tree when dropped (the backup's scratch space).
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn scratch_beside(target: &Path) -> Result<Scratch, BackupError> {
    use std::os::unix::fs::DirBuilderExt;
    let parent = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let dir = parent.join(format!(
        ".{name}.partial-{}-{}",
        std::process::id(),
        fastrand::u32(..)
    ));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(io(&dir))?;
    Ok(Scratch(dir))
}

fn source_host() -> String {
    nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn utc(t: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t)
        .map(|d| {
            format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
                d.year(),
                u8::from(d.month()),
                d.day(),
                d.hour(),
                d.minute(),
                d.second()
            )
        })
        .unwrap_or_default()
}

fn read(path: &Path) -> Result<Vec<u8>, BackupError> {
    std::fs::read(path).map_err(io(path))
}

/// Back up the relay state in `state_dir` (keys unsealed with `binding`)
/// to the new file `out`. With `keys`, the CA and relay keys go in
/// encrypted to that passphrase; without, no key material at all.
pub fn backup(
    state_dir: &Path,
    binding: &MachineBinding,
    out: &Path,
    keys: Option<&Passphrase>,
) -> Result<BackupReport, BackupError> {
    if out.symlink_metadata().is_ok() {
        return Err(BackupError::Exists(out.to_path_buf()));
    }
    let ca_path = state_dir.join(ca::CA_CERT);
    if !ca_path.exists() {
        return Err(BackupError::NoCa(state_dir.to_path_buf()));
    }
    let ca_cert = read(&ca_path)?;
    let relay_cert = read(&state_dir.join(ca::RELAY_CERT))?;
    let ca_der =
        files::parse_certs(&ca_cert).map_err(|_| BackupError::BadCertificate("CA certificate"))?;
    // The keys first: a backup that cannot hold what was asked for fails
    // before it copies anything.
    let keys = match keys {
        Some(pass) => {
            let material = unseal_keys(state_dir, binding)?;
            check_keys(&ca_cert, &relay_cert, &material)?;
            let plain = encode_keys(&material);
            Some(passphrase::seal(pass, &plain).map_err(BackupError::Keys)?)
        }
        None => None,
    };

    let scratch = scratch_beside(out)?;
    let db = scratch.0.join(ca::REGISTRY);
    let snap = Registry::snapshot(&state_dir.join(ca::REGISTRY), &db)?;
    let registry = read(&db)?;
    let created = super::registry::now();
    let meta = Meta {
        voxgate_version: env!("CARGO_PKG_VERSION").into(),
        schema_version: snap.schema_version,
        devices: snap.devices,
        created,
        created_utc: utc(created),
        source_host: source_host(),
        ca_fingerprint: crate::pki::name::fingerprint(&ca_der[0]),
        with_keys: keys.is_some(),
    };
    let archive = Archive {
        meta: meta.clone(),
        ca_cert,
        relay_cert,
        registry,
        keys,
    };
    let bytes = archive.encode();
    let staged = scratch.0.join("backup");
    files::write_new(&staged, &bytes, 0o600)?;
    // link(2) refuses an existing name: the check at the top, without its
    // race, and the file appears whole or not at all.
    match std::fs::hard_link(&staged, out) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(BackupError::Exists(out.to_path_buf()));
        }
        // A file system without hard links (a FAT-formatted stick): the
        // file is created exclusively and written in place, and removed
        // again if the write fails.
        Err(_) => files::write_new(out, &bytes, 0o600).map_err(|e| {
            if !matches!(e, FileError::Exists(_)) {
                let _ = std::fs::remove_file(out);
            }
            match e {
                FileError::Exists(p) => BackupError::Exists(p),
                e => e.into(),
            }
        })?,
    }
    sync_parent(out);
    drop(scratch);
    Ok(BackupReport {
        meta,
        bytes: bytes.len(),
    })
}

fn sync_parent(path: &Path) {
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty())
        && let Ok(d) = std::fs::File::open(dir)
    {
        let _ = d.sync_all();
    }
}

/// The public key (SPKI's key bits) of the first certificate in `pem`.
fn public_key(pem: &[u8], what: &'static str) -> Result<Vec<u8>, BackupError> {
    let certs = files::parse_certs(pem).map_err(|_| BackupError::BadCertificate(what))?;
    let (_, cert) = x509_parser::parse_x509_certificate(&certs[0])
        .map_err(|_| BackupError::BadCertificate(what))?;
    Ok(cert.public_key().subject_public_key.data.to_vec())
}

/// That the CA key is the CA certificate's and the relay key the relay
/// certificate's.
fn check_keys(ca_cert: &[u8], relay_cert: &[u8], keys: &KeyMaterial) -> Result<(), BackupError> {
    // The signing key is the issuing CA's (two tiers), or the CA's.
    let signing_cert = keys.issuing_cert.as_deref().unwrap_or(ca_cert);
    for (der, cert, what) in [
        (&keys.ca, signing_cert, "CA certificate"),
        (&keys.relay, relay_cert, "relay certificate"),
    ] {
        let pair = ca::key_pair(der).ok_or(BackupError::KeyMismatch("a key does not parse"))?;
        if pair.public_key_raw() != public_key(cert, what)? {
            return Err(BackupError::KeyMismatch(what));
        }
    }
    Ok(())
}

/// Read and check a backup file.
pub fn read_archive(path: &Path) -> Result<Archive, BackupError> {
    let len = std::fs::metadata(path).map_err(io(path))?.len();
    if len > MAX_FILE as u64 {
        return Err(BackupError::Archive {
            path: path.to_path_buf(),
            reason: ArchiveError::TooLarge(len as usize),
        });
    }
    Archive::parse(&read(path)?).map_err(|reason| BackupError::Archive {
        path: path.to_path_buf(),
        reason,
    })
}
