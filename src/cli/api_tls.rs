//! `voxgate relay api-tls request`: the operator API's TLS key, made in a
//! TPM, as a systemd credential or sealed to this machine, and a
//! certificate request (CSR) for the operator's CA. The key is never
//! written in the clear; `[api] key` then names the file.

use crate::config::RelayConfig;
use crate::identity::tpm::TpmSpec;
use crate::relay::api::tls_key;
use crate::relay::ca_key::KeyStore;
use anyhow::Result;
use clap::Subcommand;
use std::path::PathBuf;

#[derive(Debug, Subcommand)]
pub(super) enum ApiTlsCommand {
    /// Make the API's key and a certificate request: `DIR/api.key.tpm`,
    /// `.cred` or `.sealed` (0600) and `DIR/api.csr.pem`.
    Request {
        /// Relay config file (its `[ca]` binding seals the key).
        #[arg(long, short, default_value = "/etc/voxgate/relay.toml")]
        config: PathBuf,
        /// The API's host name or IP address (repeat for more); the first
        /// is the subject's common name.
        #[arg(long = "name", required = true)]
        names: Vec<String>,
        /// Make the key inside this TPM (`/dev/tpmrm0`, or
        /// `simulator:HOST:PORT`).
        #[arg(long, conflicts_with = "creds")]
        tpm: Option<TpmSpec>,
        /// Keep the key as a systemd credential (needs root: the host key or
        /// the TPM encrypts it).
        #[arg(long)]
        creds: bool,
        /// Where the two files go.
        #[arg(long, default_value = "/etc/voxgate")]
        dir: PathBuf,
    },
}

pub(super) fn run(cmd: ApiTlsCommand) -> Result<()> {
    match cmd {
        ApiTlsCommand::Request {
            config,
            names,
            tpm,
            creds,
            dir,
        } => {
            let cfg = RelayConfig::load(&config)?;
            let store = match (tpm, creds) {
                (Some(spec), _) => KeyStore::Tpm(spec),
                (None, true) => KeyStore::Creds,
                (None, false) => KeyStore::Sealed,
            };
            let made = tls_key::request(&cfg, &store, &names, &dir)?;
            println!("{}", made.csr.display());
            let unit = if matches!(store, KeyStore::Creds) {
                format!(
                    "\n  and give it to the relay unit: LoadCredentialEncrypted={}:{}",
                    tls_key::API_CRED_ID,
                    made.key.display()
                )
            } else {
                String::new()
            };
            eprintln!(
                "made {} and the certificate request {}.\nNext: have your CA sign the request, put the chain (leaf first) in a file, and set\n  [api]\n  cert = \"<the chain>\"\n  key = \"{}\"{unit}",
                made.key.display(),
                made.csr.display(),
                made.key.display()
            );
            Ok(())
        }
    }
}
