//! `voxgate relay api-key {create,list,revoke,rotate}`: keys of the
//! operator API. A new key is printed once, on stdout, and never logged;
//! the registry keeps the SHA-256 of its secret.

use super::open_registry;
use crate::config::RelayConfig;
use crate::relay::api_key::Scopes;
use crate::relay::registry::now;
use anyhow::{Result, anyhow, bail};
use clap::Subcommand;
use std::path::PathBuf;

#[derive(Debug, Subcommand)]
pub(super) enum ApiKeyCommand {
    /// Create a key; it is printed once and only its hash is kept.
    Create {
        /// Relay config file.
        #[arg(long, short, default_value = "/etc/voxgate/relay.toml")]
        config: PathBuf,
        /// What uses it (shown by `list` and in the audit log).
        #[arg(long)]
        name: String,
        /// Scopes, separated by commas or spaces: calls:create calls:admin
        /// devices:read devices:write tokens:write recordings:read
        /// webhooks:manage audit:read keys:manage.
        #[arg(long)]
        scopes: String,
        /// Lifetime in seconds (default: no expiry).
        #[arg(long)]
        expires_in_s: Option<u64>,
    },
    /// List keys: id, name, scopes, state, expiry, last use (never a
    /// secret).
    List {
        /// Relay config file.
        #[arg(long, short, default_value = "/etc/voxgate/relay.toml")]
        config: PathBuf,
    },
    /// Revoke a key: its next request is refused.
    Revoke {
        /// Relay config file.
        #[arg(long, short, default_value = "/etc/voxgate/relay.toml")]
        config: PathBuf,
        /// Key id (from `list`).
        id: String,
    },
    /// Make a new key with the same name, scopes and expiry; the old one
    /// stays good for --overlap-s (then expires).
    Rotate {
        /// Relay config file.
        #[arg(long, short, default_value = "/etc/voxgate/relay.toml")]
        config: PathBuf,
        /// Key id (from `list`).
        id: String,
        /// Seconds the old key stays good (0: revoke it now).
        #[arg(long, default_value_t = 86_400)]
        overlap_s: u64,
    },
}

fn when(t: Option<i64>) -> String {
    t.map(crate::relay::registry::chain::iso8601)
        .unwrap_or_else(|| "-".into())
}

pub(super) fn run(cmd: ApiKeyCommand) -> Result<()> {
    match cmd {
        ApiKeyCommand::Create {
            config,
            name,
            scopes,
            expires_in_s,
        } => {
            let cfg = RelayConfig::load(&config)?;
            let scopes =
                Scopes::parse(&scopes).map_err(|s| anyhow!("--scopes: unknown scope `{s}`"))?;
            if scopes.is_empty() {
                bail!("--scopes: give at least one scope");
            }
            let expires = match expires_in_s {
                Some(0) => bail!("--expires-in-s must be at least 1"),
                Some(s) => Some(now().saturating_add(i64::try_from(s).unwrap_or(i64::MAX))),
                None => None,
            };
            let reg = open_registry(&cfg)?;
            let k = reg.create_api_key(&name, scopes, expires)?;
            // The only place a key is ever shown.
            println!("{}", k.secret.expose());
            eprintln!(
                "API key {} ({scopes}); it is not stored: keep it in the application's secret store. Revoke it with `voxgate relay api-key revoke {}`",
                k.id, k.id
            );
            Ok(())
        }
        ApiKeyCommand::List { config } => {
            let cfg = RelayConfig::load(&config)?;
            let reg = open_registry(&cfg)?;
            let at = now();
            let keys = reg.api_keys()?;
            if keys.is_empty() {
                println!("no API keys");
                return Ok(());
            }
            println!(
                "{:<10}  {:<8} {:<20}  {:<20}  {:<20}  {:<24} scopes",
                "id", "state", "created", "expires", "last used", "name"
            );
            for k in keys {
                println!(
                    "{:<10}  {:<8} {:<20}  {:<20}  {:<20}  {:<24} {}",
                    k.id,
                    k.state(at),
                    when(Some(k.created)),
                    when(k.expires),
                    when(k.last_used),
                    k.name,
                    k.scopes
                );
            }
            Ok(())
        }
        ApiKeyCommand::Revoke { config, id } => {
            let cfg = RelayConfig::load(&config)?;
            let reg = open_registry(&cfg)?;
            match reg.revoke_api_key(&id, "")? {
                Some(true) => println!("revoked API key {id}: its next request is refused"),
                Some(false) => println!("API key {id} was already revoked"),
                None => bail!("no API key `{id}` (see `voxgate relay api-key list`)"),
            }
            Ok(())
        }
        ApiKeyCommand::Rotate {
            config,
            id,
            overlap_s,
        } => {
            let cfg = RelayConfig::load(&config)?;
            if overlap_s > 30 * 86_400 {
                bail!("--overlap-s is at most 30 days");
            }
            let reg = open_registry(&cfg)?;
            let Some(k) = reg.rotate_api_key(&id, overlap_s, "")? else {
                bail!("no active API key `{id}` (see `voxgate relay api-key list`)");
            };
            println!("{}", k.secret.expose());
            eprintln!(
                "API key {} replaces {id}, which stays good for {overlap_s} s; it is not stored",
                k.id
            );
            Ok(())
        }
    }
}
