//! `voxgate setup`: one-time enrollment of a device, non-interactive and
//! scriptable.
//!
//! 1. Read the token from a file or stdin (never argv, never the log).
//! 2. Create a fresh P-256 key where `--backend` says: inside the TPM
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
//!    accepts the sealed file then, and says why.
//! 3. Connect to the relay with ALPN `voxgate-enroll/1`, trusting only the
//!    CA whose fingerprint the technician was given: a relay that cannot
//!    show that CA fails the handshake, before the token is sent.
//! 4. Send the token and a CSR signed by the new key (by the TPM for a
//!    TPM-held key); store the returned certificate, the CA and the renewal
//!    record; write a config that holds no secret.

use super::IdentityBackend;
use super::keys::{NewKey, write_renewal_record};
use super::tpm::{Tpm, TpmError, TpmKey, TpmOptions, TpmSpec};
use crate::pki::files::{pem, replace_file, write_file};
use crate::pki::sealed::{self, material};
use crate::proto::control::{Enroll, Message};
use crate::telemetry::Secret;
use crate::transport::framed::{self, FrameReader};
use crate::transport::tls::{self, PinnedCaVerifier};
use anyhow::{Context, Result, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use clap::Args;
use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use zeroize::Zeroizing;

/// Options of `voxgate setup`.
#[derive(Debug, Args)]
pub struct SetupArgs {
    /// Relay address, HOST:PORT.
    #[arg(long)]
    pub relay: String,
    /// Fleet CA fingerprint as printed by `voxgate relay init` (SHA256:...).
    #[arg(long)]
    pub ca_fingerprint: String,
    /// File holding the one-time token; `-` reads it from stdin.
    #[arg(long, default_value = "-")]
    pub token_file: PathBuf,
    /// Device id to enroll as.
    #[arg(long)]
    pub device_id: String,
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

fn read_token(path: &PathBuf) -> Result<Secret<String>> {
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
    let token = raw.trim().to_string();
    if token.is_empty() || token.len() > 128 || !token.bytes().all(|b| b.is_ascii_alphanumeric()) {
        bail!("the token must be the 32 letters and digits `voxgate relay token create` printed");
    }
    Ok(Secret::new(token))
}

/// Resolve `auto` and open what the backend needs, before any key exists.
/// Returns the backend, the TPM for a TPM-held key, and why it was chosen.
fn choose_backend(a: &SetupArgs) -> Result<(IdentityBackend, Option<Arc<Tpm>>, String)> {
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

/// Owner of the config `voxgate setup` writes: root and the group of its
/// directory when run as root; the caller's otherwise.
fn config_owner(path: &std::path::Path) -> Option<(u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    if !nix::unistd::geteuid().is_root() {
        return None;
    }
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty())?;
    std::fs::metadata(dir).ok().map(|m| (0, m.gid()))
}

/// As root, give the files setup just wrote in `dir` (created by it,
/// `O_EXCL`: no link to follow) to `dir`'s owner and group.
fn hand_over(dir: &std::path::Path, files: &[PathBuf]) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    if !nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    let m = std::fs::metadata(dir).with_context(|| format!("{}", dir.display()))?;
    for f in files {
        std::os::unix::fs::lchown(f, Some(m.uid()), Some(m.gid())).with_context(|| {
            format!(
                "cannot give {} to the owner of {}",
                f.display(),
                dir.display()
            )
        })?;
    }
    Ok(())
}

/// Run the enrollment.
pub fn run(a: SetupArgs) -> Result<()> {
    if !crate::pki::name::valid_device_id(&a.device_id) {
        bail!(
            "device id `{}` must be 1-64 characters of a-z, 0-9, '-', '_' or '.'",
            a.device_id
        );
    }
    crate::transport::split_host_port(&a.relay)
        .with_context(|| format!("--relay `{}` is not HOST:PORT", a.relay))?;
    if a.config_out.exists() {
        bail!(
            "{} already exists; move it away to enroll again",
            a.config_out.display()
        );
    }
    let verifier = PinnedCaVerifier::new(&a.ca_fingerprint)?;
    let token = read_token(&a.token_file)?;
    let serial = a.serial.exists().then_some(a.serial.as_path());
    let (backend, tpm, why) = choose_backend(&a)?;
    let m = match backend {
        IdentityBackend::SealedFile => Some(material(&a.machine_id, serial)?),
        _ => None,
    };

    // A fresh key, created (in the TPM, or in memory) before anything
    // leaves the box.
    let key = match &tpm {
        Some(tpm) => {
            let blob = tpm
                .create_device_key()
                .with_context(|| format!("cannot create the device key in the TPM at {}", a.tpm))?;
            NewKey::Tpm(Box::new(TpmKey::new(tpm.clone(), blob)))
        }
        None => NewKey::software()?,
    };
    let public = key.public()?;
    let csr = key.csr(&a.device_id)?;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (cert_der, not_after) = rt.block_on(enroll(&a, verifier.clone(), &token, &csr))?;
    let ca = verifier
        .ca()
        .context("the relay's CA was not recorded during the handshake")?;

    // The certificate must be for our key and our id.
    let (_, x) = x509_parser::parse_x509_certificate(&cert_der)
        .map_err(|_| anyhow::anyhow!("the relay returned an unreadable certificate"))?;
    if x.public_key().subject_public_key.data.as_ref() != public.as_slice() {
        bail!("the relay returned a certificate for another key; not saving it");
    }
    let cert_pem = pem(&cert_der, "CERTIFICATE");
    let named = crate::pki::name::common_name(&cert_der.clone().into()).unwrap_or_default();
    if named != a.device_id {
        bail!(
            "the relay returned a certificate for `{named}`, not `{}`",
            a.device_id
        );
    }

    std::fs::create_dir_all(&a.dir)
        .with_context(|| format!("cannot create {}", a.dir.display()))?;
    let (key_lines, key_where) = match (&key, &m) {
        (NewKey::Tpm(k), _) => {
            let path = a.dir.join("device.key.tpm");
            write_file(&path, &k.blob().to_bytes(), 0o600)?;
            (
                format!("key = \"{}\"\ntpm = \"{}\"\n", path.display(), a.tpm),
                format!(
                    "{} (held by the TPM at {}; the file is usable only there)",
                    path.display(),
                    a.tpm
                ),
            )
        }
        (NewKey::Software(pkcs8), Some(m)) => {
            let path = a.dir.join("device.key.sealed");
            write_file(&path, &sealed::seal(m, pkcs8)?, 0o600)?;
            let serial_line = match serial {
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
        (NewKey::Software(pkcs8), None) => {
            store_credential(&a, pkcs8)?;
            (
                format!("credential = \"{}\"\n", a.credential),
                format!(
                    "{} (systemd credential `{}`, delivered by LoadCredentialEncrypted=)",
                    a.credential_out.display(),
                    a.credential
                ),
            )
        }
    };
    write_file(&a.dir.join("device.pem"), cert_pem.as_bytes(), 0o644)?;
    write_file(
        &a.dir.join("ca.pem"),
        pem(&ca, "CERTIFICATE").as_bytes(),
        0o644,
    )?;
    write_renewal_record(&a.dir, "enrolled", not_after)?;
    // Run as root, the files go to the state directory's owner (the
    // service account, from tmpfiles.d): systemd does not chown the
    // contents of a StateDirectory= whose top is already the account's.
    let key_file = match (&key, &m) {
        (NewKey::Tpm(_), _) => Some("device.key.tpm"),
        (_, Some(_)) => Some("device.key.sealed"),
        // systemd-creds: the key is in the credential store, root's.
        (_, None) => None,
    };
    let written: Vec<PathBuf> = ["device.pem", "ca.pem", super::keys::RENEWAL_FILE]
        .into_iter()
        .chain(key_file)
        .map(|f| a.dir.join(f))
        .collect();
    hand_over(&a.dir, &written)?;
    if let Some(parent) = a.config_out.parent() {
        std::fs::create_dir_all(parent).ok();
    }
    let config = format!(
        "# Written by `voxgate setup`: holds no secret.\n# Key backend chosen by {why}.\ndevice_id = \"{id}\"\n\n[relay]\naddress = \"{relay}\"\nserver_name = \"{sn}\"\nca = \"{dir}/ca.pem\"\n\n[identity]\nbackend = \"{backend}\"\ncert = \"{dir}/device.pem\"\n{key_lines}",
        why = why.replace('\n', " "),
        id = a.device_id,
        relay = a.relay,
        sn = a.server_name,
        dir = a.dir.display(),
    );
    // The service account must read it: as root, the file takes the group
    // of its directory (/etc/voxgate is root:voxgate 0750, from the
    // package's tmpfiles.d entry), as the installed configs do.
    replace_file(
        &a.config_out,
        config.as_bytes(),
        0o640,
        config_owner(&a.config_out),
    )?;
    let expires = time::OffsetDateTime::from_unix_timestamp(not_after)
        .map(|t| t.to_string())
        .unwrap_or_default();
    println!("enrolled `{}` with {}", a.device_id, a.relay);
    println!("  backend:     {backend} ({why})");
    println!("  key:         {key_where}");
    println!(
        "  certificate: {} (expires {expires})",
        a.dir.join("device.pem").display()
    );
    println!("  config:      {}", a.config_out.display());
    Ok(())
}

async fn enroll(
    a: &SetupArgs,
    verifier: std::sync::Arc<PinnedCaVerifier>,
    token: &Secret<String>,
    csr: &[u8],
) -> Result<(Vec<u8>, i64)> {
    let addr = tokio::net::lookup_host(&a.relay)
        .await
        .with_context(|| format!("cannot resolve {}", a.relay))?
        .next()
        .with_context(|| format!("{} resolves to no address", a.relay))?;
    let bind: std::net::SocketAddr = if addr.is_ipv6() {
        "[::]:0"
    } else {
        "0.0.0.0:0"
    }
    .parse()?;
    let endpoint = quinn::Endpoint::client(bind)?;
    let cfg = tls::enroll_client_config(verifier)?;
    let conn = tokio::time::timeout(Duration::from_secs(10), endpoint.connect_with(cfg, addr, &a.server_name)?)
        .await
        .with_context(|| format!("no answer from {addr}"))?
        .map_err(|e| {
            anyhow::anyhow!(
                "the relay at {addr} could not prove it holds the fleet CA {} ({}); nothing was sent. Check --ca-fingerprint and --server-name",
                a.ca_fingerprint,
                crate::transport::link::describe(&e)
            )
        })?;
    let (mut send, recv) = conn.open_bi().await?;
    let csr_b64 = B64.encode(csr);
    framed::send(
        &mut send,
        &Message::Enroll(Enroll {
            token: token.expose(),
            device: &a.device_id,
            csr: &csr_b64,
        }),
    )
    .await?;
    let mut reader = FrameReader::new(recv);
    let answer = tokio::time::timeout(
        Duration::from_secs(10),
        reader.next(|m| match m {
            Message::Enrolled(e) => Ok((e.cert.to_string(), e.not_after)),
            Message::Error(e) => Err(anyhow::anyhow!("{}", e.message)),
            _ => Err(anyhow::anyhow!("unexpected answer from the relay")),
        }),
    )
    .await
    .context("the relay did not answer the enrollment")?;
    let (cert_b64, not_after) = match answer {
        Ok(inner) => inner?,
        Err(e) => match conn.close_reason() {
            Some(r) => bail!(
                "enrollment refused: {}",
                crate::transport::link::describe(&r)
            ),
            None => return Err(e.into()),
        },
    };
    conn.close(0u32.into(), b"enrolled");
    endpoint.wait_idle().await;
    Ok((
        B64.decode(cert_b64).context("certificate encoding")?,
        not_after,
    ))
}
