//! What setup keeps across an interrupted run, and what it installs only
//! at the end.
//!
//! **The pending key.** Setup creates the device key before the token
//! leaves the box, and keeps it in `STATE/setup.pending/` (0700) at once:
//! the TPM's wrapped blob (`key.tpm`), or the PKCS#8 key sealed to this
//! box (`key.sealed`, whatever the backend: a systemd credential is made
//! from it only at the end), beside the device id it is for (`device`).
//! It is not the identity: no config names it, `voxgate run` never reads
//! it. If setup stops after the relay issued the certificate (Ctrl-C, a
//! power cut, a failed step after enrollment), the next run for the same
//! device id takes the same key, sends the same token again, and the relay
//! answers a repeat of the same token with the same key, within the
//! token's lifetime, with the same certificate (`relay::enroll`). A run
//! for another device id, or a key of another kind than the backend wants,
//! discards the pending key and makes a new one. The pending directory is
//! removed once the identity is installed.
//!
//! **Staging.** Everything setup writes into the state directory is first
//! written into `STATE/.setup-staging-PID/` (0700), and renamed into place
//! only at the end ([`Staging::commit`]), the config last (written
//! atomically: a temporary file and a rename), so that a config exists
//! only when everything it names does. An interrupted run removes its
//! staging directory ([`Staging`]'s `Drop`) and leaves the box as it was,
//! but for the pending key.

use super::super::keys::NewKey;
use super::super::tpm::{KeyBlob, Tpm, TpmKey};
use crate::pki::files::{replace_file, write_file};
use crate::pki::sealed::{self, Material};
use anyhow::{Context, Result};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The pending key's directory in the state directory.
pub const PENDING_DIR: &str = "setup.pending";

/// The key an unfinished setup created (see the module docs).
#[derive(Debug)]
pub struct Pending {
    dir: PathBuf,
}

impl Pending {
    /// The pending key of the state directory `state`.
    pub fn at(state: &Path) -> Pending {
        Pending {
            dir: state.join(PENDING_DIR),
        }
    }

    /// Whether one is there.
    pub fn exists(&self) -> bool {
        self.dir.join("device").exists()
    }

    /// The device id it was created for.
    pub fn device(&self) -> Option<String> {
        std::fs::read_to_string(self.dir.join("device"))
            .ok()
            .map(|s| s.trim().to_string())
    }

    /// The pending key for `device`, if an earlier run left one of the
    /// kind this run makes (in the TPM when `tpm` is given, else sealed
    /// with `m`). A pending key for another device or of another kind is
    /// discarded, and `None` returned.
    pub(crate) fn take(
        &self,
        device: &str,
        tpm: Option<&Arc<Tpm>>,
        m: Option<&Material>,
    ) -> Result<Option<NewKey>> {
        if !self.exists() {
            return Ok(None);
        }
        if self.device().as_deref() != Some(device) {
            self.discard();
            return Ok(None);
        }
        let key = match (tpm, m) {
            (Some(tpm), _) => match std::fs::read(self.dir.join("key.tpm")) {
                Ok(b) => {
                    let blob = KeyBlob::from_bytes(&b).map_err(|e| {
                        anyhow::anyhow!(
                            "the pending key {} is damaged ({e}); remove {} and run setup again",
                            self.dir.join("key.tpm").display(),
                            self.dir.display()
                        )
                    })?;
                    Some(NewKey::Tpm(Box::new(TpmKey::new(tpm.clone(), blob))))
                }
                Err(_) => None,
            },
            (None, Some(m)) => match std::fs::read(self.dir.join("key.sealed")) {
                Ok(b) => {
                    let pkcs8 = sealed::unseal(m, &b).with_context(|| {
                        format!(
                            "the pending key {} does not open on this box; remove {} and run setup again",
                            self.dir.join("key.sealed").display(),
                            self.dir.display()
                        )
                    })?;
                    Some(NewKey::Software(pkcs8))
                }
                Err(_) => None,
            },
            (None, None) => None,
        };
        if key.is_none() {
            self.discard();
        }
        Ok(key)
    }

    /// Keep `key` for `device` (before its CSR leaves the box).
    pub(crate) fn store(&self, device: &str, key: &NewKey, m: Option<&Material>) -> Result<()> {
        self.discard();
        if let Some(state) = self.dir.parent() {
            std::fs::create_dir_all(state)
                .with_context(|| format!("cannot create {}", state.display()))?;
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .with_context(|| format!("cannot create {}", self.dir.display()))?;
        match (key, m) {
            (NewKey::Tpm(k), _) => {
                write_file(&self.dir.join("key.tpm"), &k.blob().to_bytes(), 0o600)?
            }
            (NewKey::Software(pkcs8), Some(m)) => write_file(
                &self.dir.join("key.sealed"),
                &sealed::seal(m, pkcs8)?,
                0o600,
            )?,
            (NewKey::Software(_), None) => anyhow::bail!("no sealing inputs for the pending key"),
        }
        // Written last: a pending key counts only once its key file is whole.
        write_file(&self.dir.join("device"), device.as_bytes(), 0o600)?;
        Ok(())
    }

    /// Remove it (the identity is installed, or it is for another id).
    pub fn discard(&self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Files written for the state directory, renamed into place at the end
/// (see the module docs). Dropped without [`Staging::commit`], it removes
/// what it wrote.
#[derive(Debug)]
pub struct Staging {
    dir: PathBuf,
    target: PathBuf,
    names: Vec<String>,
}

impl Staging {
    /// A fresh staging directory in `target` (created if missing).
    pub fn new(target: &Path) -> Result<Staging> {
        std::fs::create_dir_all(target)
            .with_context(|| format!("cannot create {}", target.display()))?;
        let dir = target.join(format!(".setup-staging-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(Staging {
            dir,
            target: target.to_path_buf(),
            names: Vec::new(),
        })
    }

    /// Stage `name` (its final path is `target/name`).
    pub fn write(&mut self, name: &str, data: &[u8], mode: u32) -> Result<()> {
        write_file(&self.dir.join(name), data, mode)?;
        if !self.names.iter().any(|n| n == name) {
            self.names.push(name.to_string());
        }
        Ok(())
    }

    /// Count `name`, written into [`Staging::path`]`("")` by other code,
    /// as staged.
    pub fn track(&mut self, name: &str) {
        if !self.names.iter().any(|n| n == name) {
            self.names.push(name.to_string());
        }
    }

    /// The staged file `name`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The final path of `name`.
    pub fn final_path(&self, name: &str) -> PathBuf {
        self.target.join(name)
    }

    /// Rename every staged file into place, then write `config` to
    /// `config_out` (atomically, mode 0640), then remove the staging
    /// directory.
    ///
    /// Run as root, the staged files first go to the state directory's
    /// owner and group (the service account, from tmpfiles.d: systemd does
    /// not chown the contents of a `StateDirectory=` whose top is already
    /// the account's), while they are still in the root-only staging
    /// directory; the config goes to root and its directory's group
    /// (`/etc/voxgate` is `root:voxgate` 0750), as the installed configs
    /// do, so that the service can read it.
    pub fn commit(self, config_out: &Path, config: &str) -> Result<()> {
        let root = nix::unistd::geteuid().is_root();
        let owner = std::fs::metadata(&self.target)
            .with_context(|| format!("{}", self.target.display()))?;
        for name in &self.names {
            let staged = self.dir.join(name);
            if root {
                std::os::unix::fs::lchown(&staged, Some(owner.uid()), Some(owner.gid()))
                    .with_context(|| {
                        format!(
                            "cannot give {name} to the owner of {}",
                            self.target.display()
                        )
                    })?;
            }
            let to = self.target.join(name);
            std::fs::rename(&staged, &to)
                .with_context(|| format!("cannot install {}", to.display()))?;
        }
        if let Some(parent) = config_out.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        let group = config_out
            .parent()
            .filter(|p| root && !p.as_os_str().is_empty())
            .and_then(|d| std::fs::metadata(d).ok())
            .map(|m| (0, m.gid()));
        replace_file(config_out, config.as_bytes(), 0o640, group)?;
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
