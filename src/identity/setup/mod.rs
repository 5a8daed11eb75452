//! `voxgate setup`: one-time enrollment of a device. The steps and the
//! terminal are `cli::setup`'s; this module holds the enrollment itself,
//! below the command line (the layers): the options, the key backend, the
//! token, the pending key and the staging ([`pending`]), and the
//! connection to the relay ([`connect`]).
//!
//! 1. The token comes from a file, stdin, or the terminal with echo off
//!    (`cli::setup`); never argv, never the log.
//! 2. A fresh P-256 key where `--backend` says: inside the TPM
//!    (`tpm`; the file is the TPM-wrapped blob), sealed to this box
//!    (`sealed-file`), the TPM when one answers a bounded probe and sealed
//!    when there is no TPM at all (`auto`, the default; the reason is
//!    printed), or encrypted
//!    with `systemd-creds encrypt` into the credential store
//!    (`systemd-creds`; the PKCS#8 key goes to its stdin, never to a file).
//!    `auto` falls back only when the TPM does not exist (no device node,
//!    nothing listening on the simulator's port): a TPM that is there but
//!    fails the probe (hung, in failure mode, locked out) stops setup with
//!    the reason, since a silent fallback would leave a box that should
//!    hold its key in hardware with a key in a file. `--allow-fallback`
//!    accepts the sealed file then, and says why. The key is kept as the
//!    pending key before anything leaves the box ([`pending`]): an
//!    interrupted setup run again with the same token gets the same
//!    certificate.
//! 3. Connect to the relay with ALPN `voxgate-enroll/1`, trusting only the
//!    CA whose fingerprint the technician was given: a relay that cannot
//!    show that CA fails the handshake, before the token is sent; one that
//!    does not answer is reported as unreachable ([`connect`]).
//! 4. Send the token and a CSR signed by the new key (by the TPM for a
//!    TPM-held key); stage the returned certificate, the CA and the renewal
//!    record; install them and a config that holds no secret at the end.

pub mod connect;
pub mod pending;

use super::IdentityBackend;
use super::keys::{NewKey, write_renewal_record};
use super::tpm::{Tpm, TpmError, TpmKey, TpmOptions, TpmSpec};
use crate::pki::files::pem;
use crate::pki::sealed::{self, Material, material};
use crate::telemetry::Secret;
use crate::transport::tls::PinnedCaVerifier;
use anyhow::{Context, Result, bail};
use clap::Args;
use pending::{Pending, Staging};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use zeroize::Zeroizing;

/// Options of `voxgate setup`. On a terminal, the relay, the CA
/// fingerprint, the device id and the token are asked for when missing;
/// without one (or with `--yes`) they must be given.
#[derive(Debug, Args)]
pub struct SetupArgs {
    /// Relay address, HOST:PORT.
    #[arg(long)]
    pub relay: Option<String>,
    /// Fleet CA fingerprint as printed by `voxgate relay init` (SHA256:...).
    #[arg(long)]
    pub ca_fingerprint: Option<String>,
    /// File holding the one-time token; `-` reads it from stdin. Without
    /// it: asked on the terminal (not shown), or read from stdin.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Device id to enroll as.
    #[arg(long)]
    pub device_id: Option<String>,
    /// TLS name of the relay.
    #[arg(long, default_value = "relay.voxgate.local")]
    pub server_name: String,
    /// Where the key file, certificate, CA and renewal record go.
    #[arg(long, default_value = "/var/lib/voxgate")]
    pub dir: PathBuf,
    /// The config file to write (never overwritten).
    #[arg(long, default_value = "/etc/voxgate/voxgate.toml")]
    pub config_out: PathBuf,
    /// Sealing input: the machine id.
    #[arg(long, default_value = "/etc/machine-id")]
    pub machine_id: PathBuf,
    /// Sealing input: the SoC serial, used when the file exists.
    #[arg(long, default_value = "/sys/firmware/devicetree/base/serial-number")]
    pub serial: PathBuf,
    /// Where the device key lives: tpm, sealed-file, auto (the TPM if one
    /// answers, else sealed-file) or systemd-creds.
    #[arg(long, default_value = "auto", value_parser = parse_backend)]
    pub backend: IdentityBackend,
    /// With `--backend auto`: seal the key to this box even when a TPM is
    /// present but fails the probe (without it, setup stops with the reason).
    #[arg(long)]
    pub allow_fallback: bool,
    /// The TPM: `device:/dev/tpmrm0`, or `swtpm:HOST:PORT` (tests).
    #[arg(long, default_value = "device:/dev/tpmrm0")]
    pub tpm: TpmSpec,
    /// systemd-creds: the credential's name (the unit's
    /// `LoadCredentialEncrypted=` name).
    #[arg(long, default_value = super::DEFAULT_CREDENTIAL)]
    pub credential: String,
    /// systemd-creds: the encrypted credential file to write.
    #[arg(long, default_value = "/etc/credstore.encrypted/voxgate-device-key")]
    pub credential_out: PathBuf,
    /// systemd-creds: `--with-key=` of `systemd-creds encrypt` (auto, host,
    /// tpm2, host+tpm2).
    #[arg(long, default_value = "auto")]
    pub credential_key: String,
    /// Ask nothing: every answer comes from the options (scripts).
    #[arg(long)]
    pub yes: bool,
    /// Print the summary as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
    /// The capture device to write into the config (one of those setup
    /// lists); asked for on a terminal when there are several.
    #[arg(long)]
    pub capture: Option<String>,
    /// The playback device to write into the config.
    #[arg(long)]
    pub playback: Option<String>,
    /// Skip the audio checks (level meter, test tone, round trip).
    #[arg(long)]
    pub skip_audio: bool,
    /// Do not enable or start the systemd service; print what to run.
    #[arg(long)]
    pub no_service: bool,
    /// A desk phone's extension to create once the box is set up (its
    /// password is printed once); repeat for more. On a terminal without
    /// it, setup asks.
    #[arg(long = "phone", value_name = "EXT")]
    pub phones: Vec<String>,
    /// The systemd unit to enable and start.
    #[arg(long, default_value = "voxgate.service")]
    pub service: String,
    /// The address the phone bridge listens on for the phones, IP:PORT (or
    /// an IP, port 5060): one of this box's addresses, or 0.0.0.0 for all.
    /// On a terminal without it, setup asks (offering the box's LAN
    /// addresses) when phones are to be created.
    #[arg(long, value_name = "ADDR:PORT")]
    pub sip_listen: Option<String>,
    /// The status socket the service serves (written as `[telemetry]
    /// status_socket`; default /run/voxgate/status.sock, the unit's
    /// runtime directory): where setup watches the phones register.
    #[arg(long, value_name = "PATH")]
    pub status_socket: Option<PathBuf>,
    /// Go on even though the clock is not synchronized (certificates then
    /// look expired or not yet valid). Without it, `--yes` stops there; on
    /// a terminal setup asks.
    #[arg(long)]
    pub ignore_clock: bool,
    /// Where the clock's synchronization comes from: `kernel` (adjtimex),
    /// `timedatectl`, or `file:PATH` (tests).
    #[arg(long, default_value = "kernel", hide = true)]
    pub clock_source: String,
}

fn parse_backend(s: &str) -> Result<IdentityBackend, String> {
    match s {
        "tpm" => Ok(IdentityBackend::Tpm),
        "sealed-file" => Ok(IdentityBackend::SealedFile),
        "auto" => Ok(IdentityBackend::Auto),
        "systemd-creds" => Ok(IdentityBackend::SystemdCreds),
        _ => Err("one of tpm, sealed-file, auto, systemd-creds".into()),
    }
}

/// Time limit of each TPM exchange while probing (`--backend auto`).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Whether the TPM at `spec` answers: opened, and a TPM2_GetRandom
/// answered within [`PROBE_TIMEOUT`].
pub fn probe_tpm(spec: &TpmSpec) -> Result<Arc<Tpm>, TpmError> {
    let options = TpmOptions {
        timeout: PROBE_TIMEOUT,
        ..TpmOptions::recommended(spec)
    };
    let tpm = Tpm::open_with(spec.clone(), options)?;
    tpm.get_random(8)?;
    Ok(Arc::new(tpm))
}

/// Whether a failed probe means that there is no TPM at all: the device
/// node does not exist, or nothing listens on the simulator's port. Any
/// other failure is a TPM that is present but does not work.
pub fn tpm_absent(spec: &TpmSpec, e: &TpmError) -> bool {
    match spec {
        TpmSpec::Device(path) => {
            std::fs::symlink_metadata(path).is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound)
        }
        TpmSpec::Simulator(_) => matches!(
            e,
            TpmError::Open { source, .. } if source.kind() == std::io::ErrorKind::ConnectionRefused
        ),
    }
}

/// Read the token from `path` (a 0600 file, or `-` for stdin).
pub fn read_token(path: &Path) -> Result<Secret<String>> {
    let mut raw = Zeroizing::new(String::new());
    if path.as_os_str() == "-" {
        std::io::stdin()
            .read_to_string(&mut raw)
            .context("cannot read the token from stdin")?;
    } else {
        crate::pki::files::check_key_mode(path).context("the token file")?;
        std::fs::File::open(path)
            .and_then(|mut f| f.read_to_string(&mut raw))
            .with_context(|| format!("cannot read the token file {}", path.display()))?;
    }
    check_token(&raw)
}

/// The token, if `raw` (surrounding white space ignored) looks like one.
pub fn check_token(raw: &str) -> Result<Secret<String>> {
    let token = raw.trim().to_string();
    if token.is_empty() || token.len() > 128 || !token.bytes().all(|b| b.is_ascii_alphanumeric()) {
        bail!("the token must be the 32 letters and digits `voxgate relay token create` printed");
    }
    Ok(Secret::new(token))
}

/// Check the device id, the relay address and the fingerprint; the
/// verifier that pins the fingerprint.
pub fn check_inputs(device: &str, relay: &str, fingerprint: &str) -> Result<Arc<PinnedCaVerifier>> {
    if !crate::pki::name::valid_device_id(device) {
        bail!("device id `{device}` must be 1-64 characters of a-z, 0-9, '-', '_' or '.'");
    }
    crate::transport::split_host_port(relay)
        .with_context(|| format!("relay address `{relay}` is not HOST:PORT"))?;
    Ok(PinnedCaVerifier::new(fingerprint)?)
}

/// Resolve `auto` and open what the backend needs, before any key exists.
/// Returns the backend, the TPM for a TPM-held key, and why it was chosen.
pub fn choose_backend(a: &SetupArgs) -> Result<(IdentityBackend, Option<Arc<Tpm>>, String)> {
    match a.backend {
        IdentityBackend::Tpm => {
            let tpm = probe_tpm(&a.tpm).with_context(|| {
                format!(
                    "the TPM at {} does not answer; check it, or enroll with `--backend sealed-file`",
                    a.tpm
                )
            })?;
            Ok((IdentityBackend::Tpm, Some(tpm), "--backend tpm".into()))
        }
        IdentityBackend::Auto => match probe_tpm(&a.tpm) {
            Ok(tpm) => {
                tracing::info!(tpm = %a.tpm, "backend auto: the TPM answered; the key is created in it");
                let why = format!("--backend auto: the TPM at {} answered", a.tpm);
                Ok((IdentityBackend::Tpm, Some(tpm), why))
            }
            Err(e) if tpm_absent(&a.tpm, &e) => {
                tracing::warn!(tpm = %a.tpm, error = %e, "backend auto: no TPM; falling back to sealed-file");
                let why = format!(
                    "--backend auto: no usable TPM at {} (there is none: {e}); the key is sealed to this box instead",
                    a.tpm
                );
                eprintln!("voxgate: {why}");
                Ok((IdentityBackend::SealedFile, None, why))
            }
            Err(e) if a.allow_fallback => {
                tracing::warn!(tpm = %a.tpm, error = %e, "backend auto: the TPM is present but failed; --allow-fallback: sealed-file");
                let why = format!(
                    "--backend auto --allow-fallback: the TPM at {} is present but failed ({e}); the key is sealed to this box instead",
                    a.tpm
                );
                eprintln!("voxgate: {why}");
                Ok((IdentityBackend::SealedFile, None, why))
            }
            Err(e) => Err(anyhow::Error::new(e).context(format!(
                "--backend auto: the TPM at {} is present but failed the probe, so no key was created; fix the TPM (`tpm2_getrandom 8`, or reboot if it is in failure mode), or enroll with `--allow-fallback` to seal the key to this box instead",
                a.tpm
            ))),
        },
        IdentityBackend::SystemdCreds => {
            let ok = std::process::Command::new("systemd-creds")
                .arg("--version")
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                bail!(
                    "`systemd-creds` is not available (systemd 250 or later); enroll with `--backend tpm` or `--backend sealed-file`"
                );
            }
            Ok((
                IdentityBackend::SystemdCreds,
                None,
                "--backend systemd-creds".into(),
            ))
        }
        b => Ok((b, None, format!("--backend {b}"))),
    }
}

/// Encrypt `pkcs8` (PEM, through stdin: never argv, env or a plain file)
/// into the credential store with `systemd-creds encrypt`.
fn store_credential(a: &SetupArgs, pkcs8: &[u8]) -> Result<()> {
    use std::io::Write as _;
    if let Some(parent) = a.credential_out.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let pem_key = Zeroizing::new(pem(pkcs8, "PRIVATE KEY"));
    let mut child = std::process::Command::new("systemd-creds")
        .arg("encrypt")
        .arg(format!("--name={}", a.credential))
        .arg(format!("--with-key={}", a.credential_key))
        .arg("-")
        .arg(&a.credential_out)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("cannot start systemd-creds")?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(pem_key.as_bytes())
            .context("cannot hand the key to systemd-creds")?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "systemd-creds encrypt failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The device key of this enrollment and where it will live.
pub struct PreparedKey {
    pub(crate) key: NewKey,
    /// The backend (`auto` resolved).
    pub backend: IdentityBackend,
    /// Why this backend.
    pub why: String,
    material: Option<Material>,
    serial: Option<PathBuf>,
    /// Taken over from an interrupted run (the pending key).
    pub reused: bool,
}

impl std::fmt::Debug for PreparedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedKey")
            .field("backend", &self.backend)
            .field("reused", &self.reused)
            .finish_non_exhaustive()
    }
}

impl PreparedKey {
    /// The key's public point.
    pub fn public(&self) -> Result<Vec<u8>> {
        Ok(self.key.public()?)
    }

    /// A CSR naming `device`, signed by the key.
    pub fn csr(&self, device: &str) -> Result<Vec<u8>> {
        Ok(self.key.csr(device)?)
    }

    /// The key and `chain` as rustls' signing key (for a session before
    /// the identity is installed: setup's round trip).
    pub fn certified(
        &self,
        chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    ) -> Result<Arc<rustls::sign::CertifiedKey>> {
        Ok(Arc::new(match &self.key {
            NewKey::Software(pkcs8) => {
                let der = rustls::pki_types::PrivateKeyDer::Pkcs8(
                    rustls::pki_types::PrivatePkcs8KeyDer::from(pkcs8.to_vec()),
                );
                let signer = rustls::crypto::ring::sign::any_ecdsa_type(&der)
                    .map_err(|_| anyhow::anyhow!("the new key is not usable for TLS"))?;
                rustls::sign::CertifiedKey::new(chain, signer)
            }
            NewKey::Tpm(k) => k.certified_key(chain),
        }))
    }
}

/// The key for `device`: the pending key an interrupted run for the same
/// device left ([`pending`]), or a new one (in `tpm` when given, else in
/// memory), kept as the pending key before it is used.
pub fn prepare_key(
    a: &SetupArgs,
    device: &str,
    backend: IdentityBackend,
    tpm: Option<Arc<Tpm>>,
    why: String,
) -> Result<PreparedKey> {
    let serial = a.serial.exists().then(|| a.serial.clone());
    let m = match &tpm {
        None => Some(material(&a.machine_id, serial.as_deref())?),
        Some(_) => None,
    };
    std::fs::create_dir_all(&a.dir)
        .with_context(|| format!("cannot create {}", a.dir.display()))?;
    let pending = Pending::at(&a.dir);
    let (key, reused) = match pending.take(device, tpm.as_ref(), m.as_ref())? {
        Some(k) => (k, true),
        None => {
            let key = match &tpm {
                Some(tpm) => {
                    let blob = tpm.create_device_key().with_context(|| {
                        format!("cannot create the device key in the TPM at {}", a.tpm)
                    })?;
                    NewKey::Tpm(Box::new(TpmKey::new(tpm.clone(), blob)))
                }
                None => NewKey::software()?,
            };
            pending.store(device, &key, m.as_ref())?;
            (key, false)
        }
    };
    Ok(PreparedKey {
        key,
        backend,
        why,
        material: m,
        serial,
        reused,
    })
}

/// The certificate the relay returned must be for our key and our id.
pub fn check_certificate(der: &[u8], key: &PreparedKey, device: &str) -> Result<()> {
    let (_, x) = x509_parser::parse_x509_certificate(der)
        .map_err(|_| anyhow::anyhow!("the relay returned an unreadable certificate"))?;
    if x.public_key().subject_public_key.data.as_ref() != key.public()?.as_slice() {
        bail!("the relay returned a certificate for another key; not saving it");
    }
    let named = crate::pki::name::common_name(&der.to_vec().into()).unwrap_or_default();
    if named != device {
        bail!("the relay returned a certificate for `{named}`, not `{device}`");
    }
    Ok(())
}

/// What [`stage`] made.
#[derive(Debug)]
pub struct Staged {
    /// The config to write at the end (no secret in it).
    pub config: String,
    /// Where the key lives, for the summary.
    pub key_where: String,
}

/// What the config names besides the identity.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// The device id.
    pub device: &'a str,
    /// HOST:PORT.
    pub relay: &'a str,
    /// Config lines for the audio devices (may be empty).
    pub audio: &'a str,
}

/// Stage the key file, the certificate, the CA and the renewal record;
/// return the config that names them at their final paths.
pub fn stage(
    a: &SetupArgs,
    t: Target<'_>,
    key: &PreparedKey,
    cert_der: &[u8],
    ca_der: &[u8],
    not_after: i64,
    staging: &mut Staging,
) -> Result<Staged> {
    let (key_lines, key_where) = match (&key.key, &key.material) {
        (NewKey::Tpm(k), _) => {
            staging.write("device.key.tpm", &k.blob().to_bytes(), 0o600)?;
            let path = staging.final_path("device.key.tpm");
            (
                format!("key = \"{}\"\ntpm = \"{}\"\n", path.display(), a.tpm),
                format!(
                    "{} (held by the TPM at {}; the file is usable only there)",
                    path.display(),
                    a.tpm
                ),
            )
        }
        (NewKey::Software(pkcs8), Some(m)) if key.backend == IdentityBackend::SealedFile => {
            staging.write("device.key.sealed", &sealed::seal(m, pkcs8)?, 0o600)?;
            let path = staging.final_path("device.key.sealed");
            let serial_line = match &key.serial {
                Some(s) => format!("serial = \"{}\"\n", s.display()),
                None => String::new(),
            };
            (
                format!(
                    "key = \"{}\"\nmachine_id = \"{}\"\n{serial_line}",
                    path.display(),
                    a.machine_id.display()
                ),
                format!("{} (sealed to this box)", path.display()),
            )
        }
        (NewKey::Software(_), _) => (
            format!("credential = \"{}\"\n", a.credential),
            format!(
                "{} (systemd credential `{}`, delivered by LoadCredentialEncrypted=)",
                a.credential_out.display(),
                a.credential
            ),
        ),
    };
    staging.write("device.pem", pem(cert_der, "CERTIFICATE").as_bytes(), 0o644)?;
    staging.write("ca.pem", pem(ca_der, "CERTIFICATE").as_bytes(), 0o644)?;
    write_renewal_record(&staging.path(""), "enrolled", not_after)?;
    staging.track(super::keys::RENEWAL_FILE);
    let config = format!(
        "# Written by `voxgate setup`: holds no secret.\n# Key backend chosen by {why}.\ndevice_id = \"{id}\"\n\n[relay]\naddress = \"{relay}\"\nserver_name = \"{sn}\"\nca = \"{ca}\"\n\n[identity]\nbackend = \"{backend}\"\ncert = \"{cert}\"\n{key_lines}{audio}",
        why = key.why.replace('\n', " "),
        id = t.device,
        relay = t.relay,
        sn = a.server_name,
        ca = staging.final_path("ca.pem").display(),
        backend = key.backend,
        cert = staging.final_path("device.pem").display(),
        audio = t.audio,
    );
    Ok(Staged { config, key_where })
}

/// Install the identity: the systemd credential (for that backend), the
/// staged files, the config last; then drop the pending key.
pub fn install(a: &SetupArgs, key: &PreparedKey, staging: Staging, config: &str) -> Result<()> {
    if a.config_out.exists() {
        bail!(
            "{} appeared while setup ran; nothing was installed",
            a.config_out.display()
        );
    }
    if let (NewKey::Software(pkcs8), IdentityBackend::SystemdCreds) = (&key.key, key.backend) {
        store_credential(a, pkcs8)?;
    }
    staging.commit(&a.config_out, config)?;
    Pending::at(&a.dir).discard();
    Ok(())
}
