//! The signer as a process, two ways:
//!
//! - a child of the relay ([`spawn`]): `voxgate relay run` starts
//!   `voxgate relay signer --stdio` before dropping its own privileges,
//!   connected by a socket pair on the child's standard input;
//! - its own unit ([`connect`]): `voxgate-signer.service` runs
//!   `voxgate relay signer --listen` under its own account, bound to
//!   `[signer] socket`, and answers only the relay's account
//!   (`SO_PEERCRED`).
//!
//! Either way it loads the issuing CA a request names (its key sealed, in
//! a TPM, or a systemd credential), drops privileges, sandboxes itself and
//! answers until the relay closes the socket.

use super::IssuingRef;
use super::proto::Policy;
use super::remote::RemoteSigner;
use super::serve::Signer;
use crate::config::RelayConfig;
use anyhow::{Context, Result};
use std::os::fd::{AsFd as _, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use tracing::{info, warn};

/// Start the signer for `cfg` and connect to it.
pub fn spawn(cfg: &RelayConfig, issuing: IssuingRef) -> Result<(RemoteSigner, Child)> {
    let (ours, theirs) = UnixStream::pair().context("cannot create the signer's socket pair")?;
    // The running binary itself (`/proc/self/exe` needs no search
    // permission on the directories it was started from); nothing of the
    // relay's environment: the signer reads its config file.
    let child = Command::new("/proc/self/exe")
        .args(["relay", "signer", "--stdio", "--config"])
        .arg(&cfg.file)
        .env_clear()
        .stdin(Stdio::from(OwnedFd::from(theirs)))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("cannot start the signer process (`voxgate relay signer`)")?;
    let signer = RemoteSigner::new(ours, issuing).context("signer socket")?;
    Ok((signer, child))
}

/// Connect to the signer unit's socket `[signer] socket`.
pub fn connect(socket: PathBuf, issuing: IssuingRef) -> Result<RemoteSigner> {
    RemoteSigner::connect(socket.clone(), issuing).with_context(|| {
        format!(
            "cannot reach the signer at {} (`[signer] socket`): is voxgate-signer.service running? (`systemctl status voxgate-signer`)",
            socket.display()
        )
    })
}

/// The signer for `cfg`, with the sealing inputs read now (before the
/// sandbox hides them).
fn signer(cfg: &RelayConfig) -> Result<Signer> {
    Ok(Signer::new(
        cfg.state_dir.clone(),
        cfg.ca_binding.material()?,
        Policy {
            server_name: cfg.server_name.clone(),
            max_device_s: cfg.certificate_lifetime.as_secs(),
            max_relay_s: cfg.relay_cert_lifetime.as_secs(),
        },
    ))
}

/// Drop to the signer's account (when root) into its own sandbox: the
/// state directory and the unit's credentials read-only, nothing writable
/// but the TPMs that hold issuing keys.
fn sandbox(cfg: &RelayConfig, write: Vec<PathBuf>) -> Result<()> {
    let mut settings = cfg.privilege.clone();
    if let Some(user) = &cfg.signer.user {
        settings.user = Some(user.clone());
        settings.groups = Vec::new();
        settings.stay_root = false;
    }
    settings.read = vec![cfg.state_dir.clone()];
    settings
        .read
        .extend(std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from));
    settings.write = write;
    let plan = crate::privilege::plan(&settings, &cfg.file)?;
    let report = crate::privilege::apply(&plan, &[], &cfg.file)?;
    report.log();
    Ok(())
}

/// `voxgate relay signer --stdio --config FILE`.
pub fn run(cfg: RelayConfig) -> Result<()> {
    let stream = UnixStream::from(
        std::io::stdin()
            .as_fd()
            .try_clone_to_owned()
            .context("standard input")?,
    );
    // Standard input must be the relay's socket, not a terminal or a file.
    stream
        .peer_addr()
        .context("`voxgate relay signer --stdio` serves the relay on a socket given as standard input; `voxgate relay run` starts it")?;
    let state = &cfg.state_dir;
    let mut signer = signer(&cfg)?;
    // The issuing CA that signs now, loaded before the privilege drop.
    let registry = crate::relay::registry::Registry::open(&state.join(crate::relay::ca::REGISTRY))
        .with_context(|| format!("cannot open the device registry in {}", state.display()))?;
    let mut tpm_device = None;
    if let Some(current) = registry.issuers()?.into_iter().find(|i| i.current) {
        signer
            .preload(&current.fingerprint)
            .map_err(anyhow::Error::msg)?;
        tpm_device = crate::relay::ca_key::tpm_device(state, &current.fingerprint);
    }
    drop(registry);
    sandbox(&cfg, tpm_device.into_iter().collect())?;
    info!("signer ready");
    signer.serve(stream).context("signer socket")?;
    info!("the relay closed the signer's socket; signer stopped");
    Ok(())
}

/// The relay's account (uid, gid): `[privilege] user`, or else the owner
/// of the state directory (the account the relay unit runs as).
pub fn relay_account(cfg: &RelayConfig) -> Result<(u32, u32)> {
    match &cfg.privilege.user {
        Some(u) => nix::unistd::User::from_name(u)
            .ok()
            .flatten()
            .map(|u| (u.uid.as_raw(), u.gid.as_raw()))
            .with_context(|| {
                format!(
                    "{}: [privilege] user `{u}` is not in /etc/passwd",
                    cfg.file.display()
                )
            }),
        None => {
            use std::os::unix::fs::MetadataExt as _;
            let m = std::fs::metadata(&cfg.state_dir)
                .with_context(|| format!("{}", cfg.state_dir.display()))?;
            Ok((m.uid(), m.gid()))
        }
    }
}

/// Connections served at once (the relay keeps one; a restart opens the
/// next while the old one closes).
const MAX_CONNECTIONS: usize = 4;

/// `voxgate relay signer --listen --config FILE`: the signer unit.
pub fn listen(cfg: RelayConfig) -> Result<()> {
    let listener = bind(&cfg)?;
    // Who may ask: the relay's account only.
    let (relay_uid, _) = relay_account(&cfg)?;
    let signer = signer(&cfg)?;
    // The TPMs that hold issuing keys, found from their key files (the
    // registry is the relay's own).
    sandbox(&cfg, crate::relay::ca_key::tpm_devices(&cfg.state_dir))?;
    info!(relay_uid, "signer ready");
    crate::systemd::ready("signing for the relay");
    let signer = Arc::new(Mutex::new(signer));
    let open = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for conn in listener.incoming() {
        let stream = match conn {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "signer: accept failed");
                std::thread::sleep(std::time::Duration::from_millis(100));
                continue;
            }
        };
        let peer =
            nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials);
        match peer {
            Ok(c) if c.uid() == relay_uid => {}
            Ok(c) => {
                warn!(
                    uid = c.uid(),
                    pid = c.pid(),
                    "signer: a process of another account connected; refused"
                );
                continue;
            }
            Err(e) => {
                warn!(error = %e, "signer: no peer credentials; refused");
                continue;
            }
        }
        if open.load(std::sync::atomic::Ordering::Acquire) >= MAX_CONNECTIONS {
            warn!("signer: too many connections; refused");
            continue;
        }
        open.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        let (signer, open) = (signer.clone(), open.clone());
        let spawned = std::thread::Builder::new()
            .name("signer-conn".into())
            .spawn(move || {
                if let Err(e) = Signer::serve_shared(&signer, stream) {
                    warn!(error = %e, "signer: connection ended");
                }
                open.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
            });
        if let Err(e) = spawned {
            warn!(error = %e, "signer: cannot start a connection thread");
        }
    }
    Ok(())
}

/// Bind `[signer] socket` (a stale socket file of an earlier run is
/// replaced; anything else there is refused).
fn bind(cfg: &RelayConfig) -> Result<UnixListener> {
    let path = cfg.signer.socket.as_ref().with_context(|| {
        format!(
            "{}: `voxgate relay signer --listen` needs [signer] socket = \"/run/voxgate-signer/signer.sock\"",
            cfg.file.display()
        )
    })?;
    use std::os::unix::fs::FileTypeExt as _;
    if let Ok(m) = std::fs::symlink_metadata(path) {
        if !m.file_type().is_socket() {
            anyhow::bail!(
                "{} exists and is not a socket; refusing to replace it",
                path.display()
            );
        }
        std::fs::remove_file(path).with_context(|| format!("{}", path.display()))?;
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("cannot bind {}", path.display()))?;
    // Anyone may connect; only the relay's account is answered.
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o666))
        .with_context(|| format!("{}", path.display()))?;
    Ok(listener)
}
