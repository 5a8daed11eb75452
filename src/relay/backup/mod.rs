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

pub use archive::{Archive, ArchiveError, MAX_FILE, Meta, decode_keys, encode_keys};

use super::ca::{self, CaError, KeyMaterial};
use super::registry::{Registry, RegistryError, Snapshot};
use crate::pki::files::{self, FileError};
use crate::pki::passphrase::{self, Passphrase, PassphraseError};
use crate::pki::sealed::{BindingError, MachineBinding};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Where a restore without keys keeps the backup's certificates (the old
/// fleet's public half, for reference): inside the state directory.
pub const PREVIOUS_FLEET: &str = "previous-fleet";

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
            let material = ca::unseal_keys(state_dir, binding)?;
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
    for (der, cert, what) in [
        (&keys.ca, ca_cert, "CA certificate"),
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

/// What the operator does after a restore. This is the hook a two-tier CA
/// extends: with an offline root, a restore without keys keeps the root
/// certificate, and the next step is a new issuing CA and relay certificate
/// signed by the root, with no device re-enrolling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterRestore {
    /// The keys were restored: start the relay; devices reconnect as they
    /// were.
    Ready,
    /// No keys: the backup's CA can neither issue nor serve again. A new
    /// fleet CA (`voxgate relay init`, which keeps the restored registry)
    /// and every device re-enrolled (`voxgate setup` with a new token).
    NewFleetCa,
}

impl AfterRestore {
    /// The operator's next steps, for the relay config `config`.
    pub fn instructions(&self, config: &Path, state_dir: &Path) -> String {
        let c = config.display();
        match self {
            AfterRestore::Ready => format!(
                "start the relay (`voxgate relay run --config {c}`, or `systemctl start voxgate-relay`); devices reconnect with the certificates they have"
            ),
            AfterRestore::NewFleetCa => format!(
                "this backup holds no keys, so its fleet CA can no longer issue or serve (its certificates are kept in {} for reference). Next:\n  1. `voxgate relay init --config {c}` creates a new fleet CA and relay certificate (it keeps the restored registry) and prints the new CA fingerprint;\n  2. re-enroll every device: `voxgate relay token create --config {c}` for each, then `voxgate setup` on the box with the new fingerprint (`voxgate relay devices` lists them; revocations are kept)",
                state_dir.join(PREVIOUS_FLEET).display()
            ),
        }
    }
}

/// How a restore treats the backup's keys.
#[derive(Debug, Clone, Copy)]
pub enum KeysChoice<'a> {
    /// Decrypt them with this passphrase and seal them to this machine.
    Passphrase(&'a Passphrase),
    /// Leave them out (the backup has none, or the passphrase is lost).
    Without,
}

/// What a restore did.
#[derive(Debug, Clone)]
pub struct RestoreReport {
    /// The backup's metadata.
    pub meta: Meta,
    /// The restored registry.
    pub registry: Snapshot,
    /// Files written.
    pub written: Vec<PathBuf>,
    /// What the operator does next.
    pub next: AfterRestore,
}

/// Refuse a state directory that has anything in it.
fn check_empty(dir: &Path) -> Result<bool, BackupError> {
    match std::fs::read_dir(dir) {
        Ok(entries) => {
            let names: Vec<String> = entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            if let Some(first) = names.first() {
                return Err(BackupError::NotEmpty {
                    dir: dir.to_path_buf(),
                    first: first.clone(),
                    more: match names.len() - 1 {
                        0 => String::new(),
                        n => format!(", and {n} more"),
                    },
                });
            }
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(BackupError::Io {
            path: dir.to_path_buf(),
            reason: e,
        }),
    }
}

/// Restore `archive` into `state_dir`, which must be empty or missing; the
/// keys (if restored) are sealed to `binding`. Everything is checked before
/// the first file is written; a failure after that removes what it wrote.
pub fn restore(
    archive: &Archive,
    state_dir: &Path,
    binding: &MachineBinding,
    keys: KeysChoice<'_>,
) -> Result<RestoreReport, BackupError> {
    let existed = check_empty(state_dir)?;
    let known = super::registry::schema_version();
    if archive.meta.schema_version > known {
        return Err(BackupError::NewerSchema {
            found: archive.meta.schema_version,
            known,
            release: archive.meta.voxgate_version.clone(),
        });
    }
    public_key(&archive.ca_cert, "CA certificate")?;
    public_key(&archive.relay_cert, "relay certificate")?;
    let material = match (keys, &archive.keys) {
        (KeysChoice::Passphrase(pass), Some(blob)) => {
            let plain = passphrase::open(pass, blob).map_err(BackupError::Keys)?;
            let k = decode_keys(&plain)
                .map_err(|_| BackupError::KeyMismatch("the decrypted key bundle does not parse"))?;
            check_keys(&archive.ca_cert, &archive.relay_cert, &k)?;
            // This machine's sealing inputs, before anything is written.
            binding.material()?;
            Some(k)
        }
        (KeysChoice::Without, _) | (KeysChoice::Passphrase(_), None) => None,
    };

    let mut written: Vec<PathBuf> = Vec::new();
    let result = write_state(archive, state_dir, binding, material.as_ref(), &mut written);
    match result {
        Ok(registry) => Ok(RestoreReport {
            meta: archive.meta.clone(),
            registry,
            written,
            next: if material.is_some() {
                AfterRestore::Ready
            } else {
                AfterRestore::NewFleetCa
            },
        }),
        Err(e) => {
            // Undo, newest first: files, then the directories made.
            for p in written.iter().rev() {
                if p.is_dir() {
                    let _ = std::fs::remove_dir(p);
                } else {
                    let _ = std::fs::remove_file(p);
                }
            }
            for suffix in ["-wal", "-shm", "-journal"] {
                let mut p = state_dir.join(ca::REGISTRY).into_os_string();
                p.push(suffix);
                let _ = std::fs::remove_file(p);
            }
            if !existed {
                let _ = std::fs::remove_dir(state_dir);
            }
            Err(e)
        }
    }
}

fn make_dir(dir: &Path, written: &mut Vec<PathBuf>) -> Result<(), BackupError> {
    use std::os::unix::fs::DirBuilderExt;
    if !dir.exists() {
        // As the relay unit's StateDirectoryMode.
        std::fs::DirBuilder::new()
            .mode(0o750)
            .create(dir)
            .map_err(io(dir))?;
        written.push(dir.to_path_buf());
    }
    Ok(())
}

fn put(
    path: PathBuf,
    data: &[u8],
    mode: u32,
    written: &mut Vec<PathBuf>,
) -> Result<(), BackupError> {
    files::write_new(&path, data, mode)?;
    written.push(path);
    Ok(())
}

fn write_state(
    archive: &Archive,
    state_dir: &Path,
    binding: &MachineBinding,
    keys: Option<&KeyMaterial>,
    written: &mut Vec<PathBuf>,
) -> Result<Snapshot, BackupError> {
    if let Some(parent) = state_dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io(parent))?;
    }
    make_dir(state_dir, written)?;
    let db = state_dir.join(ca::REGISTRY);
    put(db.clone(), &archive.registry, 0o600, written)?;
    // Opening migrates a registry of an earlier release in place.
    let snap = Registry::open(&db)?.check()?;
    let certs = match keys {
        Some(k) => {
            put(
                state_dir.join(ca::CA_CERT),
                &archive.ca_cert,
                0o644,
                written,
            )?;
            put(
                state_dir.join(ca::RELAY_CERT),
                &archive.relay_cert,
                0o644,
                written,
            )?;
            written.extend(ca::seal_keys(state_dir, binding, k)?);
            state_dir.to_path_buf()
        }
        None => {
            let prev = state_dir.join(PREVIOUS_FLEET);
            make_dir(&prev, written)?;
            put(prev.join(ca::CA_CERT), &archive.ca_cert, 0o644, written)?;
            put(
                prev.join(ca::RELAY_CERT),
                &archive.relay_cert,
                0o644,
                written,
            )?;
            prev
        }
    };
    sync_parent(&certs.join(ca::CA_CERT));
    sync_parent(&db);
    Ok(snap)
}

#[cfg(test)]
mod tests {
    use super::*;
    use zeroize::Zeroizing;

    fn binding(dir: &Path, name: &str, id: &str) -> MachineBinding {
        let p = dir.join(name);
        std::fs::write(&p, format!("{id}\n")).unwrap();
        MachineBinding {
            machine_id: p,
            serial: None,
        }
    }

    fn pass(s: &str) -> Passphrase {
        Passphrase::new(Zeroizing::new(s.as_bytes().to_vec())).unwrap()
    }

    #[test]
    fn restore_checks_before_writing_and_undoes_a_failed_write() {
        let dir = std::env::temp_dir().join(format!("vg-backup-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let old = binding(&dir, "old-mid", "0123456789abcdef0123456789abcdef");
        let new = binding(&dir, "new-mid", "fedcba9876543210fedcba9876543210");
        let (a, b) = (dir.join("fleet-a"), dir.join("fleet-b"));
        ca::init(&a, "relay.test", &old).unwrap();
        ca::init(&b, "relay.test", &old).unwrap();
        let p = pass("a passphrase for tests");
        let report = backup(&a, &old, &dir.join("a.vxb"), Some(&p)).unwrap();
        assert!(report.meta.with_keys && report.meta.devices == 0);
        assert!(matches!(
            backup(&a, &old, &dir.join("a.vxb"), None),
            Err(BackupError::Exists(_))
        ));
        let archive = read_archive(&dir.join("a.vxb")).unwrap();

        // Restored with keys, sealed to the new machine only.
        let target = dir.join("restored");
        let r = restore(&archive, &target, &new, KeysChoice::Passphrase(&p)).unwrap();
        assert_eq!(r.next, AfterRestore::Ready);
        ca::load_ca_key(&target, &new).unwrap();
        assert!(ca::load_ca_key(&target, &old).is_err());
        // Not again into the same (now full) directory.
        let e = restore(&archive, &target, &new, KeysChoice::Passphrase(&p)).unwrap_err();
        assert!(matches!(e, BackupError::NotEmpty { .. }), "{e}");

        // The keys of fleet B under fleet A's certificates: refused.
        let keys_b = ca::unseal_keys(&b, &old).unwrap();
        let mut swapped = archive.clone();
        swapped.keys = Some(passphrase::seal_with(&p, &encode_keys(&keys_b), 1_000).unwrap());
        let target = dir.join("swapped");
        let e = restore(&swapped, &target, &new, KeysChoice::Passphrase(&p)).unwrap_err();
        assert!(matches!(e, BackupError::KeyMismatch(_)), "{e}");
        assert!(!target.exists());

        // A registry that is no database: the failure comes after the
        // first write, and what was written is removed again.
        let mut broken = archive.clone();
        broken.registry = b"not a database at all, but long enough to be read".repeat(100);
        let e = restore(&broken, &target, &new, KeysChoice::Passphrase(&p)).unwrap_err();
        assert!(matches!(e, BackupError::Registry(_)), "{e}");
        assert!(!target.exists(), "left behind after a failed restore");
        // An existing empty directory stays, and stays empty.
        std::fs::create_dir_all(&target).unwrap();
        restore(&broken, &target, &new, KeysChoice::Without).unwrap_err();
        assert_eq!(std::fs::read_dir(&target).unwrap().count(), 0);

        // A wrong passphrase writes nothing.
        let e = restore(
            &archive,
            &target,
            &new,
            KeysChoice::Passphrase(&pass("not it")),
        )
        .unwrap_err();
        assert!(
            matches!(e, BackupError::Keys(PassphraseError::WrongPassphrase)),
            "{e}"
        );
        assert_eq!(std::fs::read_dir(&target).unwrap().count(), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
