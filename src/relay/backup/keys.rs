//! The keys a backup carries (`--with-keys`): unsealed from this machine,
//! then (in the backup) encrypted to the operator's passphrase; sealed
//! again to the new machine by a restore.

use crate::pki::files;
use crate::pki::sealed::{self, MachineBinding};
use crate::relay::audit_key::AUDIT_KEY_SEALED;
use crate::relay::authority::{self, ROOT_KEY_SEALED};
use crate::relay::ca::{self, CA_KEY_SEALED, CaError, RELAY_KEY_SEALED, key_pair};
use crate::relay::registry::Registry;
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// The relay's secret keys in memory.
pub struct KeyMaterial {
    /// The key that signs device and relay certificates: the current
    /// issuing CA's (a single-tier fleet's CA key).
    pub ca: Zeroizing<Vec<u8>>,
    /// The relay's TLS key.
    pub relay: Zeroizing<Vec<u8>>,
    /// The current issuing CA's certificate (PEM; `None`: single tier).
    pub issuing_cert: Option<Vec<u8>>,
    /// The audit log's chain key.
    pub audit: Option<Zeroizing<Vec<u8>>>,
    /// The root's key, where it is kept on the relay (labs).
    pub root: Option<Zeroizing<Vec<u8>>>,
}

impl std::fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyMaterial([redacted])")
    }
}

fn unseal(path: &Path, m: &sealed::Material) -> Result<Zeroizing<Vec<u8>>, CaError> {
    let file = std::fs::read(path).map_err(|source| CaError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    sealed::unseal(m, &file).map_err(|e| CaError::Sealed {
        path: path.to_path_buf(),
        what: e.to_string(),
    })
}

/// Unseal the relay's keys in `state_dir`.
pub fn unseal_keys(state_dir: &Path, binding: &MachineBinding) -> Result<KeyMaterial, CaError> {
    let m = binding.material()?;
    let registry = Registry::open(&state_dir.join(ca::REGISTRY))?;
    let current = registry.issuers()?.into_iter().find(|i| i.current);
    let (ca_key, issuing_cert) = match current {
        Some(row) => {
            if crate::relay::ca_key::key_path(state_dir, &row.fingerprint, "cred").exists() {
                return Err(CaError::Tpm(
                    "the issuing CA key is a systemd credential, sealed to this machine's TPM or host key: back up without --with-keys, and after a restore make a new issuing CA from the offline root (`voxgate relay ca recover`)".into(),
                ));
            }
            if crate::relay::ca_key::tpm_path(state_dir, &row.fingerprint).exists() {
                return Err(CaError::Tpm(
                    "the issuing CA key is held by a TPM and cannot leave it: back up without --with-keys, and after a restore make a new issuing CA from the offline root (`voxgate relay ca recover`)".into(),
                ));
            }
            let (cert, key) = authority::issuing_paths(state_dir, &row.fingerprint);
            let pem = std::fs::read(&cert).map_err(|source| CaError::Io { path: cert, source })?;
            (unseal(&key, &m)?, Some(pem))
        }
        None => (unseal(&state_dir.join(CA_KEY_SEALED), &m)?, None),
    };
    if crate::relay::ca_key::relay_key_path(state_dir, "cred").exists() {
        return Err(CaError::Tpm(
            "the relay's TLS key is a systemd credential, sealed to this machine's TPM or host key: back up without --with-keys, and after a restore make a new relay key from the offline root (`voxgate relay ca recover`)".into(),
        ));
    }
    if state_dir.join(crate::relay::ca_key::RELAY_KEY_TPM).exists() {
        return Err(CaError::Tpm(
            "the relay's TLS key is held by a TPM and cannot leave it: back up without --with-keys, and after a restore make a new relay key from the offline root (`voxgate relay ca recover`)".into(),
        ));
    }
    let relay = unseal(&state_dir.join(RELAY_KEY_SEALED), &m)?;
    for (der, name) in [(&ca_key, "the issuing CA key"), (&relay, RELAY_KEY_SEALED)] {
        key_pair(der).ok_or_else(|| CaError::KeyFormat(state_dir.join(name)))?;
    }
    let optional = |name: &str| -> Result<Option<Zeroizing<Vec<u8>>>, CaError> {
        let p = state_dir.join(name);
        if p.exists() {
            unseal(&p, &m).map(Some)
        } else {
            Ok(None)
        }
    };
    Ok(KeyMaterial {
        ca: ca_key,
        relay,
        issuing_cert,
        audit: optional(AUDIT_KEY_SEALED)?,
        root: optional(ROOT_KEY_SEALED)?,
    })
}

/// Seal the keys to this machine in `state_dir` (each file created
/// exclusively, 0600; the issuing CA's certificate beside its key) and
/// check that they open. Returns the files written (removed again on
/// failure).
pub fn seal_keys(
    state_dir: &Path,
    binding: &MachineBinding,
    keys: &KeyMaterial,
) -> Result<Vec<PathBuf>, CaError> {
    let material = binding.material()?;
    let mut written = Vec::new();
    let result = (|| {
        let ca_name = match &keys.issuing_cert {
            Some(pem) => {
                let der = files::parse_certs(pem)
                    .ok()
                    .and_then(|c| c.into_iter().next())
                    .ok_or_else(|| CaError::KeyFormat(PathBuf::from("issuing CA certificate")))?;
                let (cert, key) =
                    authority::issuing_paths(state_dir, &crate::pki::name::fingerprint(&der));
                files::write_new(&cert, pem, 0o644)?;
                written.push(cert);
                key
            }
            None => state_dir.join(CA_KEY_SEALED),
        };
        let mut all = vec![
            (&keys.ca, ca_name),
            (&keys.relay, state_dir.join(RELAY_KEY_SEALED)),
        ];
        if let Some(k) = &keys.audit {
            all.push((k, state_dir.join(AUDIT_KEY_SEALED)));
        }
        if let Some(k) = &keys.root {
            all.push((k, state_dir.join(ROOT_KEY_SEALED)));
        }
        for (der, path) in all {
            let sealed = sealed::seal(&material, der).map_err(CaError::Seal)?;
            files::write_new(&path, &sealed, 0o600)?;
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
