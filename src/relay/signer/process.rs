//! The signer as a process: `voxgate relay run` spawns it before dropping
//! its own privileges ([`spawn`]), connected by a socket pair on the
//! child's standard input; `voxgate relay signer --stdio` ([`run`]) loads
//! the current issuing CA, drops privileges, sandboxes itself and answers
//! until the relay closes the socket.

use super::IssuingRef;
use super::proto::Policy;
use super::remote::RemoteSigner;
use super::serve::Signer;
use crate::config::RelayConfig;
use anyhow::{Context, Result};
use std::os::fd::AsFd as _;
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};

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
        .stdin(Stdio::from(std::os::fd::OwnedFd::from(theirs)))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("cannot start the signer process (`voxgate relay signer`)")?;
    let signer = RemoteSigner::new(ours, issuing).context("signer socket")?;
    Ok((signer, child))
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
    let material = cfg.ca_binding.material()?;
    let mut signer = Signer::new(
        state.clone(),
        material,
        Policy {
            server_name: cfg.server_name.clone(),
            max_device_s: cfg.certificate_lifetime.as_secs(),
            max_relay_s: cfg.relay_cert_lifetime.as_secs(),
        },
    );
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
    // Its own sandbox: the state directory read-only, nothing writable but
    // the TPM that holds the issuing key (if one does).
    let mut settings = cfg.privilege.clone();
    settings.read = vec![state.clone()];
    settings.write = tpm_device.into_iter().collect();
    let plan = crate::privilege::plan(&settings, &cfg.file)?;
    let report = crate::privilege::apply(&plan, &[], &cfg.file)?;
    report.log();
    tracing::info!("signer ready");
    signer.serve(stream).context("signer socket")?;
    tracing::info!("the relay closed the signer's socket; signer stopped");
    Ok(())
}
