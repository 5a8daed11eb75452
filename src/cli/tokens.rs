//! `voxgate relay token {create,list,revoke}`: enrollment tokens, each
//! bound to one device id.

use super::open_registry;
use crate::config::RelayConfig;
use anyhow::Result;
use clap::Subcommand;
use std::path::PathBuf;

#[derive(Debug, Subcommand)]
pub(super) enum TokenCommand {
    /// Create a single-use enrollment token bound to one device id; it is
    /// printed once and only its hash is kept.
    Create {
        /// Relay config file.
        #[arg(long, short, default_value = "/etc/voxgate/relay.toml")]
        config: PathBuf,
        /// The device id the token enrolls (and no other).
        #[arg(long)]
        device: String,
        /// A re-enrollment token: the id is enrolled already (a replaced
        /// box, a re-keyed one, or a revocation to undo). Using it replaces
        /// every earlier certificate of the device at once.
        #[arg(long)]
        reenroll: bool,
        /// Validity in seconds.
        #[arg(long, default_value_t = 86_400)]
        ttl_s: u64,
        /// A note for the audit log (where the token is going).
        #[arg(long, default_value = "")]
        note: String,
    },
    /// List tokens: id, device, kind, state, expiry (never a secret: the
    /// relay keeps none).
    List {
        /// Relay config file.
        #[arg(long, short, default_value = "/etc/voxgate/relay.toml")]
        config: PathBuf,
        /// Also list used, expired and revoked tokens.
        #[arg(long)]
        all: bool,
    },
    /// Withdraw unused tokens: by token id (from `token list`), by the
    /// device id they are bound to, or all of them (`--all`).
    Revoke {
        /// Relay config file.
        #[arg(long, short, default_value = "/etc/voxgate/relay.toml")]
        config: PathBuf,
        /// Token id or device id.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<String>,
        /// Every unused token (after a compromise of the relay).
        #[arg(long)]
        all: bool,
    },
}

fn when(t: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t)
        .map(|x| x.date().to_string() + " " + &x.time().to_string()[..8])
        .unwrap_or_default()
}

pub(super) fn run(cmd: TokenCommand) -> Result<()> {
    match cmd {
        TokenCommand::Create {
            config,
            device,
            reenroll,
            ttl_s,
            note,
        } => {
            let cfg = RelayConfig::load(&config)?;
            if !(1..=30 * 86_400).contains(&ttl_s) {
                anyhow::bail!("--ttl-s must be between 1 s and 30 days");
            }
            let reg = open_registry(&cfg)?;
            let token = reg.create_token(
                &device,
                reenroll,
                std::time::Duration::from_secs(ttl_s),
                &note,
            )?;
            // The only place a token is ever shown.
            println!("{}", token.secret.expose());
            let kind = if reenroll {
                "re-enrollment token (replaces the device's certificates when used)"
            } else {
                "enrollment token"
            };
            eprintln!(
                "single-use {kind} {} for device `{device}`, valid {ttl_s} s; give it to the technician (stdin or a 0600 file for `voxgate setup`); it is not stored. Withdraw it with `voxgate relay token revoke {}`",
                token.id, token.id
            );
            Ok(())
        }
        TokenCommand::List { config, all } => {
            let cfg = RelayConfig::load(&config)?;
            let reg = open_registry(&cfg)?;
            let at = crate::relay::registry::now();
            let rows: Vec<_> = reg
                .tokens()?
                .into_iter()
                .filter(|t| all || t.state(at) == "unused")
                .collect();
            if rows.is_empty() {
                println!("no {}tokens", if all { "" } else { "unused " });
                return Ok(());
            }
            println!(
                "{:<8}  {:<24} {:<8} {:<8} {:<19}  {:<19}  note",
                "id", "device", "kind", "state", "created", "expires"
            );
            for t in rows {
                let state = match &t.used {
                    Some((_, by)) => format!("used by {by}"),
                    None => t.state(at).to_string(),
                };
                println!(
                    "{:<8}  {:<24} {:<8} {:<8} {:<19}  {:<19}  {}",
                    t.id,
                    t.device.as_deref().unwrap_or("(any new)"),
                    if t.reenroll { "reenroll" } else { "enroll" },
                    state,
                    when(t.created),
                    when(t.expires),
                    t.note
                );
            }
            Ok(())
        }
        TokenCommand::Revoke { config, id, all } => {
            let cfg = RelayConfig::load(&config)?;
            let reg = open_registry(&cfg)?;
            let revoked = match &id {
                Some(id) => reg.revoke_token(id)?,
                None => {
                    let at = crate::relay::registry::now();
                    let mut all_ids = Vec::new();
                    for t in reg.tokens()? {
                        if t.state(at) == "unused" {
                            all_ids.extend(reg.revoke_token(&t.id)?);
                        }
                    }
                    all_ids
                }
            };
            if revoked.is_empty() && !all {
                anyhow::bail!(
                    "no unused token with id or device `{}` (see `voxgate relay token list --all`)",
                    id.unwrap_or_default()
                );
            }
            for t in revoked {
                println!("revoked token {t}");
            }
            Ok(())
        }
    }
}
