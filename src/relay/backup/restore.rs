//! `voxgate relay restore`: a backup into an empty state directory, keys
//! sealed to this machine, or the registry alone and what comes next
//! ([`AfterRestore`]).

use super::keys::{KeyMaterial, seal_keys};
use super::{Archive, BackupError, Meta, check_keys, decode_keys, io, public_key, sync_parent};
use crate::pki::files;
use crate::pki::passphrase::{self, Passphrase};
use crate::pki::sealed::MachineBinding;
use crate::relay::ca;
use crate::relay::registry::{self, Registry, Snapshot};
use std::path::{Path, PathBuf};

/// Where a restore without keys keeps the backup's certificates (the old
/// fleet's public half, for reference): inside the state directory.
pub const PREVIOUS_FLEET: &str = "previous-fleet";

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
                "this backup holds no keys, so its issuing CA and relay key can no longer sign or serve (its certificates are kept in {} for reference). Next, with the offline root CA key: `voxgate relay ca recover --config {c} --root-key FILE` makes a new issuing CA and relay certificate under the same root; devices keep their pinned fingerprint and renew onto the new CA when they reconnect. Without the root key (or for a single-tier fleet): `voxgate relay init --config {c} --root-key-out FILE` starts a new fleet CA (it keeps the restored registry) and every device re-enrolls: `voxgate relay token create --config {c} --device ID --reenroll` for each, then `voxgate setup` with the new fingerprint (`voxgate relay devices` lists them; revocations are kept)",
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
    let known = registry::schema_version();
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
    let registry = Registry::open(&db)?;
    let snap = registry.check()?;
    if keys.is_none_or(|k| k.audit.is_none()) {
        // The old audit key stays behind: the log starts a new chain (the
        // old one kept in `audit_previous`).
        registry.restart_audit_chain()?;
    }
    drop(registry);
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
            written.extend(seal_keys(state_dir, binding, k)?);
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
    use super::super::{backup, encode_keys, read_archive};
    use super::*;
    use crate::pki::passphrase::PassphraseError;
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
        ca::init(
            &a,
            "relay.test",
            &old,
            std::time::Duration::from_secs(3600),
            crate::relay::authority::RootKeyOut::Keep,
        )
        .unwrap();
        ca::init(
            &b,
            "relay.test",
            &old,
            std::time::Duration::from_secs(3600),
            crate::relay::authority::RootKeyOut::Keep,
        )
        .unwrap();
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
        crate::relay::authority::signer(&target, &new).unwrap();
        assert!(crate::relay::authority::signer(&target, &old).is_err());
        // Not again into the same (now full) directory.
        let e = restore(&archive, &target, &new, KeysChoice::Passphrase(&p)).unwrap_err();
        assert!(matches!(e, BackupError::NotEmpty { .. }), "{e}");

        // The keys of fleet B under fleet A's certificates: refused.
        let keys_b = crate::relay::backup::unseal_keys(&b, &old).unwrap();
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
