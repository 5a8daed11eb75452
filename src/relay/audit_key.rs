//! The audit log's MAC key and the one way to open the registry for
//! writing.
//!
//! The key is 32 random bytes in `audit.key.sealed` in the relay's state
//! directory, sealed to the machine like the fleet CA and TLS keys (the
//! sealed-file format of [`crate::pki::sealed`], the `[ca]` binding), so a
//! user who can write the SQLite file but not read the key cannot recompute
//! a row's MAC. `relay init` creates it; a relay initialised by an earlier
//! release gets it the first time a command opens its registry (and its
//! rows are chained then, see [`crate::relay::registry::chain`]).
//!
//! Every process that appends to the audit log (`relay run`, `relay token
//! create`, `relay revoke`, `relay dev-cert`) opens the registry with
//! [`open_registry`].

use super::ca::{self, CaError, REGISTRY};
use super::registry::{AuditKey, Registry};
use crate::pki::files::write_new;
use crate::pki::sealed::{self, MachineBinding, SealError};
use ring::rand::{SecureRandom, SystemRandom};
use std::path::Path;

/// Sealed audit key file name in the state directory.
pub const AUDIT_KEY_SEALED: &str = "audit.key.sealed";

/// Open (creating if needed) the registry in `state_dir` and give it the
/// audit key, creating the key if the registry's audit log is not chained
/// yet. A missing key for a chained log is an error: a new key would make
/// every row fail verification.
pub fn open_registry(state_dir: &Path, binding: &MachineBinding) -> Result<Registry, CaError> {
    let mut registry = Registry::open(&state_dir.join(REGISTRY))?;
    let key = load_or_create(state_dir, binding, registry.audit_chained()?)?;
    registry.set_audit_key(key)?;
    Ok(registry)
}

fn load_or_create(
    state_dir: &Path,
    binding: &MachineBinding,
    chained: bool,
) -> Result<AuditKey, CaError> {
    let path = state_dir.join(AUDIT_KEY_SEALED);
    if !path.exists() {
        if chained {
            return Err(CaError::AuditKeyMissing(path));
        }
        create(state_dir, binding)?;
    }
    let raw = ca::open_sealed(&path, binding)?;
    AuditKey::from_bytes(&raw).ok_or(CaError::KeyFormat(path))
}

/// Create the key file; if another process created it first, keep theirs.
fn create(state_dir: &Path, binding: &MachineBinding) -> Result<(), CaError> {
    let mut raw = zeroize::Zeroizing::new([0u8; AuditKey::LEN]);
    SystemRandom::new()
        .fill(&mut raw[..])
        .map_err(|_| CaError::Seal(SealError::Random))?;
    let file = sealed::seal(&binding.material()?, &raw[..]).map_err(CaError::Seal)?;
    let path = state_dir.join(AUDIT_KEY_SEALED);
    // Written whole under a private name, then linked into place: link(2)
    // never replaces, so of two processes creating it at once one wins and
    // the other reads a complete file.
    let tmp = state_dir.join(format!(".{AUDIT_KEY_SEALED}.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    write_new(&tmp, &file, 0o600)?;
    own_like(&tmp, state_dir);
    let linked = std::fs::hard_link(&tmp, &path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            tracing::info!(path = %path.display(), "audit log key created");
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(CaError::Io { path, source }),
    }
}

/// Give `file` the owner of `dir` when root creates it there (`relay token
/// create` run as root first after an upgrade): the relay, running as its
/// service user, must still read it.
fn own_like(file: &Path, dir: &Path) {
    use std::os::unix::fs::MetadataExt;
    if !nix::unistd::geteuid().is_root() {
        return;
    }
    if let Ok(m) = std::fs::metadata(dir)
        && m.uid() != 0
    {
        let _ = std::os::unix::fs::chown(file, Some(m.uid()), Some(m.gid()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_created_once_sealed_and_required_once_chained() {
        let dir = std::env::temp_dir().join(format!("vg-audit-key-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mid = dir.join("mid");
        std::fs::write(&mid, "0123456789abcdef0123456789abcdef\n").unwrap();
        let b = MachineBinding {
            machine_id: mid.clone(),
            serial: None,
        };
        let r = open_registry(&dir, &b).unwrap();
        r.audit("token_created", "", "", "x").unwrap();
        let key_file = dir.join(AUDIT_KEY_SEALED);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(std::fs::read(&key_file).unwrap().starts_with(sealed::MAGIC));
        drop(r);
        // Opened again: the same key, the chain verifies.
        let r = open_registry(&dir, &b).unwrap();
        r.audit("device_revoked", "", "gw-1", "").unwrap();
        let report = r.verify_audit(None).unwrap();
        assert!(report.ok(), "{report:?}");
        assert_eq!(report.rows, 3);
        drop(r);
        // Another machine cannot open it.
        let other = dir.join("other");
        std::fs::write(&other, "ffffffffffffffffffffffffffffffff\n").unwrap();
        let e = open_registry(
            &dir,
            &MachineBinding {
                machine_id: other,
                serial: None,
            },
        )
        .unwrap_err();
        assert!(matches!(e, CaError::Sealed { .. }), "{e}");
        // Gone while the log is chained: refused, not replaced.
        std::fs::remove_file(&key_file).unwrap();
        let e = open_registry(&dir, &b).unwrap_err();
        assert!(matches!(e, CaError::AuditKeyMissing(_)), "{e}");
        assert!(e.to_string().contains("docs/INCIDENT.md"), "{e}");
        assert!(!key_file.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
