//! `voxgate setup`: one-time enrollment of a device, non-interactive and
//! scriptable.
//!
//! 1. Read the token from a file or stdin (never argv, never the log).
//! 2. Create a fresh P-256 key and seal it to this box (0600).
//! 3. Connect to the relay with ALPN `voxgate-enroll/1`, trusting only the
//!    CA whose fingerprint the technician was given: a relay that cannot
//!    show that CA fails the handshake, before the token is sent.
//! 4. Send the token and a CSR signed by the new key; store the returned
//!    certificate and the CA; write a config that holds no secret.

use super::backend::material;
use super::sealed;
use crate::telemetry::Secret;
use crate::transport::control::{Enroll, Message};
use crate::transport::framed::{self, FrameReader};
use crate::transport::tls::{self, PinnedCaVerifier};
use anyhow::{Context, Result, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use clap::Args;
use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair as _};
use std::io::Read;
use std::path::PathBuf;
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
    /// Where the sealed key, certificate and CA go.
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
}

fn read_token(path: &PathBuf) -> Result<Secret<String>> {
    let mut raw = Zeroizing::new(String::new());
    if path.as_os_str() == "-" {
        std::io::stdin()
            .read_to_string(&mut raw)
            .context("cannot read the token from stdin")?;
    } else {
        tls::check_key_mode(path).context("the token file")?;
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

/// Run the enrollment.
pub fn run(a: SetupArgs) -> Result<()> {
    if !crate::config::valid_device_id(&a.device_id) {
        bail!(
            "device id `{}` must be 1-64 characters of a-z, 0-9, '-', '_' or '.'",
            a.device_id
        );
    }
    let (host, _) = crate::config::split_host_port(&a.relay)
        .with_context(|| format!("--relay `{}` is not HOST:PORT", a.relay))?;
    let _ = host;
    if a.config_out.exists() {
        bail!(
            "{} already exists; move it away to enroll again",
            a.config_out.display()
        );
    }
    let verifier = PinnedCaVerifier::new(&a.ca_fingerprint)?;
    let token = read_token(&a.token_file)?;
    let serial = a.serial.exists().then_some(a.serial.as_path());
    let m = material(&a.machine_id, serial)?;

    // A fresh key, sealed before anything leaves the box.
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = Zeroizing::new(
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
            .map_err(|_| anyhow::anyhow!("key generation failed"))?
            .as_ref()
            .to_vec(),
    );
    let public = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &pkcs8, &rng)
        .map_err(|_| anyhow::anyhow!("key generation failed"))?
        .public_key()
        .as_ref()
        .to_vec();
    let csr = {
        let kp = rcgen::KeyPair::try_from(&rustls::pki_types::PrivatePkcs8KeyDer::from(
            pkcs8.as_slice(),
        ))
        .context("key generation failed")?;
        let mut p = rcgen::CertificateParams::default();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, a.device_id.as_str());
        p.serialize_request(&kp).context("CSR")?.der().to_vec()
    };

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
    let named = crate::relay::ca::common_name(&cert_der.clone().into()).unwrap_or_default();
    if named != a.device_id {
        bail!(
            "the relay returned a certificate for `{named}`, not `{}`",
            a.device_id
        );
    }

    std::fs::create_dir_all(&a.dir)
        .with_context(|| format!("cannot create {}", a.dir.display()))?;
    let sealed_path = a.dir.join("device.key.sealed");
    let sealed = sealed::seal(&m, &pkcs8)?;
    write(&sealed_path, &sealed, 0o600)?;
    write(&a.dir.join("device.pem"), cert_pem.as_bytes(), 0o644)?;
    write(
        &a.dir.join("ca.pem"),
        pem(&ca, "CERTIFICATE").as_bytes(),
        0o644,
    )?;
    if let Some(parent) = a.config_out.parent() {
        std::fs::create_dir_all(parent).ok();
    }
    let serial_line = match serial {
        Some(s) => format!("serial = \"{}\"\n", s.display()),
        None => String::new(),
    };
    let config = format!(
        "# Written by `voxgate setup`: holds no secret.\ndevice_id = \"{id}\"\n\n[relay]\naddress = \"{relay}\"\nserver_name = \"{sn}\"\nca = \"{dir}/ca.pem\"\n\n[identity]\nbackend = \"sealed-file\"\ncert = \"{dir}/device.pem\"\nkey = \"{dir}/device.key.sealed\"\nmachine_id = \"{mid}\"\n{serial_line}",
        id = a.device_id,
        relay = a.relay,
        sn = a.server_name,
        dir = a.dir.display(),
        mid = a.machine_id.display(),
    );
    write(&a.config_out, config.as_bytes(), 0o640)?;
    let expires = time::OffsetDateTime::from_unix_timestamp(not_after)
        .map(|t| t.to_string())
        .unwrap_or_default();
    println!("enrolled `{}` with {}", a.device_id, a.relay);
    println!(
        "  key:         {} (sealed to this box)",
        sealed_path.display()
    );
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
                crate::transport::client::describe(&e)
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
                crate::transport::client::describe(&r)
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

fn pem(der: &[u8], label: &str) -> String {
    let b64 = B64.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn write(path: &std::path::Path, data: &[u8], mode: u32) -> Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(data)?;
    f.sync_all()?;
    Ok(())
}
