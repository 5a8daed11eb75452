//! The API's TLS key under the same backends as the relay's other keys.
//!
//! `[api] key` names the operator's key by its file name:
//!
//! - `*.key.tpm`: made inside a TPM (`voxgate-tpm-key v1 <spec>` and the
//!   TPM's wrapped blob); every handshake signs through the TPM.
//! - `*.key.cred`: a systemd credential. The relay unit is given it
//!   decrypted (`LoadCredentialEncrypted=voxgate-api:/etc/voxgate/api.key.cred`,
//!   found as `$CREDENTIALS_DIRECTORY/voxgate-api`); a relay started by
//!   root without the unit decrypts it with `systemd-creds`.
//! - `*.key.sealed`: sealed to this machine (the `[ca]` binding).
//! - anything else: a PEM file that only its owner may read (0600).
//!
//! `voxgate relay api-tls request` makes such a key and a certificate
//! request for the operator's CA, so that no backend's key is ever written
//! in the clear.

use crate::config::RelayConfig;
use crate::relay::ca_key::{self, HeldKey, KeyStore, Sealing};
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// The credential id the relay unit loads the API's key under.
pub const API_CRED_ID: &str = "voxgate-api";

/// The backend `path`'s name says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `*.key.tpm`.
    Tpm,
    /// `*.key.cred`.
    Creds,
    /// `*.key.sealed`.
    Sealed,
    /// A PEM file, 0600.
    Pem,
}

impl Backend {
    /// The backend of the key file at `path`.
    pub fn of(path: &Path) -> Backend {
        match path.extension().and_then(|e| e.to_str()) {
            Some("tpm") => Backend::Tpm,
            Some("cred") => Backend::Creds,
            Some("sealed") => Backend::Sealed,
            _ => Backend::Pem,
        }
    }
}

/// `[api] cert`'s chain with `[api] key` as its signer.
pub fn certified(
    cfg: &RelayConfig,
    path: &Path,
    chain: Vec<rustls::pki_types::CertificateDer<'static>>,
) -> Result<rustls::sign::CertifiedKey> {
    if Backend::of(path) == Backend::Pem {
        // Any key rustls signs with (RSA too), read from its 0600 file.
        let der = crate::pki::files::read_key(path)
            .with_context(|| format!("{}: [api] key", cfg.file.display()))?;
        return Ok(crate::transport::tls::certified_key(chain, &der)?);
    }
    Ok(load(cfg, path)?.certified(chain)?)
}

/// Load `[api] key` from a TPM, a credential or a sealed file.
pub fn load(cfg: &RelayConfig, path: &Path) -> Result<HeldKey> {
    let what = || format!("{}: [api] key {}", cfg.file.display(), path.display());
    match Backend::of(path) {
        Backend::Tpm => {
            let file = std::fs::read(path).with_context(what)?;
            let (spec, blob) = ca_key::parse_tpm_file(path, &file).with_context(what)?;
            let tpm = ca_key::open(&spec).with_context(what)?;
            tpm.public_key(&blob)
                .map_err(|e| anyhow::anyhow!("{}: the TPM cannot load it: {e}", what()))?;
            Ok(HeldKey::Tpm(crate::identity::tpm::TpmKey::new(tpm, blob)))
        }
        Backend::Creds => {
            let given = std::env::var_os("CREDENTIALS_DIRECTORY")
                .map(|d| PathBuf::from(d).join(API_CRED_ID))
                .filter(|p| p.exists());
            let pkcs8 = match given {
                Some(p) => Zeroizing::new(std::fs::read(&p).with_context(what)?),
                None => {
                    let name = path.to_string_lossy();
                    ca_key::systemd_creds(&["decrypt", "--name=", &name, "-"], &[]).with_context(
                        || {
                            format!(
                                "{}: not given by systemd (LoadCredentialEncrypted={API_CRED_ID}:{}) and cannot be decrypted here",
                                what(),
                                path.display()
                            )
                        },
                    )?
                }
            };
            Ok(ca_key::soft(&pkcs8, path)?)
        }
        Backend::Sealed => {
            let file = std::fs::read(path).with_context(what)?;
            let material = cfg.ca_binding.material()?;
            let pkcs8 = crate::pki::sealed::unseal(&material, &file).with_context(|| {
                format!(
                    "{}: cannot unseal it with this machine's [ca] binding",
                    what()
                )
            })?;
            Ok(ca_key::soft(&pkcs8, path)?)
        }
        Backend::Pem => bail!("{}: a PEM key is read by `certified`", what()),
    }
}

/// What `request` made.
#[derive(Debug)]
pub struct Request {
    /// The key file (`api.key.<backend>`).
    pub key: PathBuf,
    /// The certificate request (PEM).
    pub csr: PathBuf,
}

/// Make a key in `store` and a certificate request for `names` (DNS names
/// or IP addresses) in `dir`: `api.key.{sealed,tpm,cred}` (0600) and
/// `api.csr.pem`. Never overwrites either.
pub fn request(
    cfg: &RelayConfig,
    store: &KeyStore,
    names: &[String],
    dir: &Path,
) -> Result<Request> {
    if names.is_empty() {
        bail!("give the API's host name with --name (a DNS name or an IP address)");
    }
    let mut params = rcgen::CertificateParams::new(names.to_vec())
        .context("--name: not a DNS name or IP address")?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, names[0].clone());
    let (key, file, ext) = store.new_key(Sealing::Read(&cfg.ca_binding))?;
    let csr = params
        .serialize_request(&key)
        .context("cannot sign the certificate request")?
        .pem()
        .context("cannot encode the certificate request")?;
    let out = Request {
        key: dir.join(format!("api.key.{ext}")),
        csr: dir.join("api.csr.pem"),
    };
    for p in [&out.key, &out.csr] {
        if p.exists() {
            bail!(
                "{} exists: move it away first (nothing was written)",
                p.display()
            );
        }
    }
    crate::pki::files::write_new(&out.key, &file, 0o600)?;
    crate::pki::files::write_new(&out.csr, csr.as_bytes(), 0o644)?;
    Ok(out)
}
