//! `voxgate relay webhook {add,list,remove,test,rotate-secret,deliveries,replay}`:
//! the receivers of the relay's signed webhooks. A secret is printed once,
//! when made (`add`, `rotate-secret`), and kept sealed in the registry.

use super::open_registry;
use crate::config::RelayConfig;
use crate::relay::webhooks::{self, Event, EventKind};
use anyhow::{Context, Result, bail};
use clap::Subcommand;
use std::path::PathBuf;

#[derive(Debug, Subcommand)]
pub(super) enum WebhookCommand {
    /// Add an endpoint: prints its id and its secret (`whsec_…`, shown
    /// once; the receiver verifies signatures with it).
    Add {
        /// Relay config file.
        #[arg(long, short, default_value = "/etc/voxgate/relay.toml")]
        config: PathBuf,
        /// The receiver's URL (https:// only).
        url: String,
        /// Event types it takes, comma-separated (default: all). Known:
        /// device.enrolled, device.online, device.offline, device.revoked,
        /// call.ringing, call.answered, call.ended, call.failed,
        /// call.fallback, recording.ready, security.auth_failures,
        /// security.token_misuse.
        #[arg(long, value_delimiter = ',')]
        events: Vec<String>,
        /// A note (who receives it).
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List endpoints (never a secret).
    List {
        /// Relay config file.
        #[arg(long, short, default_value = "/etc/voxgate/relay.toml")]
        config: PathBuf,
    },
    /// Remove an endpoint, its secrets and its deliveries.
    Remove {
        /// Relay config file.
        #[arg(long, short, default_value = "/etc/voxgate/relay.toml")]
        config: PathBuf,
        /// Endpoint id (`ep_…`).
        id: String,
    },
    /// Enable or disable an endpoint (a 410 from the receiver disables it).
    Enable {
        /// Relay config file.
        #[arg(long, short, default_value = "/etc/voxgate/relay.toml")]
        config: PathBuf,
        /// Endpoint id.
        id: String,
        /// Disable instead.
        #[arg(long)]
        off: bool,
    },
    /// Queue a `webhook.test` message for one endpoint (the running relay
    /// sends it within a second; see `deliveries`).
    Test {
        /// Relay config file.
        #[arg(long, short, default_value = "/etc/voxgate/relay.toml")]
        config: PathBuf,
        /// Endpoint id.
        id: String,
    },
    /// Make a new secret (printed once); the old one keeps signing beside
    /// it for `[webhooks] rotation_overlap` (or --overlap).
    RotateSecret {
        /// Relay config file.
        #[arg(long, short, default_value = "/etc/voxgate/relay.toml")]
        config: PathBuf,
        /// Endpoint id.
        id: String,
        /// How long the old secret still signs (`0s`: not at all).
        #[arg(long)]
        overlap: Option<String>,
    },
    /// The newest deliveries: state, attempts, last status and error.
    Deliveries {
        /// Relay config file.
        #[arg(long, short, default_value = "/etc/voxgate/relay.toml")]
        config: PathBuf,
        /// Only this endpoint's.
        #[arg(long)]
        endpoint: Option<String>,
        /// How many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Send a delivery again (same `webhook-id`), or every failed one of
    /// an endpoint (`--failed ep_…`).
    Replay {
        /// Relay config file.
        #[arg(long, short, default_value = "/etc/voxgate/relay.toml")]
        config: PathBuf,
        /// Delivery number (from `deliveries`).
        #[arg(required_unless_present = "failed", conflicts_with = "failed")]
        delivery: Option<i64>,
        /// Every failed delivery of this endpoint.
        #[arg(long)]
        failed: Option<String>,
    },
}

pub(super) fn run(cmd: WebhookCommand) -> Result<()> {
    match cmd {
        WebhookCommand::Add {
            config,
            url,
            events,
            description,
        } => {
            let cfg = RelayConfig::load(&config)?;
            let reg = open_registry(&cfg)?;
            webhooks::policy::Target::parse(&url).with_context(|| format!("`{url}`"))?;
            let filter = webhooks::parse_filter(&events).map_err(anyhow::Error::msg)?;
            let (ep, secret) = reg.webhook_endpoint_add(&url, &filter, &description)?;
            println!("endpoint {} added for {}", ep.id, ep.url);
            println!(
                "events: {}",
                if filter.is_empty() {
                    "all".into()
                } else {
                    filter.join(",")
                }
            );
            println!("secret (shown once; the receiver verifies with it):");
            println!("{}", secret.reveal().as_str());
            Ok(())
        }
        WebhookCommand::List { config } => {
            let cfg = RelayConfig::load(&config)?;
            let reg = open_registry(&cfg)?;
            let rows = reg.webhook_endpoints()?;
            if rows.is_empty() {
                println!("no webhook endpoints");
                return Ok(());
            }
            println!(
                "{:<16} {:<9} {:<8} {:<40} events",
                "id", "state", "secrets", "url"
            );
            for e in rows {
                let state = if e.enabled {
                    "enabled".to_string()
                } else {
                    "disabled".to_string()
                };
                let events = if e.events.is_empty() {
                    "all".into()
                } else {
                    e.events.join(",")
                };
                println!(
                    "{:<16} {:<9} {:<8} {:<40} {events}",
                    e.id, state, e.secrets, e.url
                );
                if let Some(why) = e.disabled_reason {
                    println!("{:<16} ({why})", "");
                }
            }
            Ok(())
        }
        WebhookCommand::Remove { config, id } => {
            let cfg = RelayConfig::load(&config)?;
            if !open_registry(&cfg)?.webhook_endpoint_remove(&id)? {
                bail!("no webhook endpoint `{id}` (see `voxgate relay webhook list`)");
            }
            println!("endpoint {id} removed, with its secrets and deliveries");
            Ok(())
        }
        WebhookCommand::Enable { config, id, off } => {
            let cfg = RelayConfig::load(&config)?;
            if !open_registry(&cfg)?.webhook_endpoint_update(&id, None, None, None, Some(!off))? {
                bail!("no webhook endpoint `{id}` (see `voxgate relay webhook list`)");
            }
            println!("endpoint {id} {}", if off { "disabled" } else { "enabled" });
            Ok(())
        }
        WebhookCommand::Test { config, id } => {
            let cfg = RelayConfig::load(&config)?;
            let reg = open_registry(&cfg)?;
            let test = Event::new(EventKind::Test, serde_json::json!({ "endpoint": id }));
            match webhooks::emit_to(&reg, &test, Some(&id))? {
                Some(msg) => println!(
                    "test message {msg} queued for {id}; `voxgate relay webhook deliveries --endpoint {id}` shows the result"
                ),
                None => bail!("no webhook endpoint `{id}` (see `voxgate relay webhook list`)"),
            }
            Ok(())
        }
        WebhookCommand::RotateSecret {
            config,
            id,
            overlap,
        } => {
            let cfg = RelayConfig::load(&config)?;
            let overlap = match overlap {
                Some(t) => crate::config::parse_duration(&t).with_context(|| {
                    format!("--overlap `{t}` is not a duration (`0s`, `30m`, `24h`)")
                })?,
                None => cfg.webhooks.rotation_overlap,
            };
            let reg = open_registry(&cfg)?;
            let Some(secret) = reg.webhook_rotate_secret(&id, overlap.as_secs() as i64)? else {
                bail!("no webhook endpoint `{id}` (see `voxgate relay webhook list`)");
            };
            println!(
                "new secret for {id} (shown once); the old one still signs for {} s:",
                overlap.as_secs()
            );
            println!("{}", secret.reveal().as_str());
            Ok(())
        }
        WebhookCommand::Deliveries {
            config,
            endpoint,
            limit,
        } => {
            let cfg = RelayConfig::load(&config)?;
            let reg = open_registry(&cfg)?;
            let rows = reg.webhook_deliveries(endpoint.as_deref(), limit)?;
            println!(
                "{:<6} {:<28} {:<22} {:<14} {:<10} {:<8} {:<6} last error",
                "n", "webhook-id", "type", "endpoint", "state", "attempts", "status"
            );
            for d in rows {
                println!(
                    "{:<6} {:<28} {:<22} {:<14} {:<10} {:<8} {:<6} {}",
                    d.id,
                    d.event,
                    d.kind,
                    d.endpoint,
                    d.state,
                    d.attempts,
                    d.last_status
                        .map(|s| s.to_string())
                        .unwrap_or_else(|| "-".into()),
                    d.last_error.unwrap_or_default()
                );
            }
            Ok(())
        }
        WebhookCommand::Replay {
            config,
            delivery,
            failed,
        } => {
            let cfg = RelayConfig::load(&config)?;
            let reg = open_registry(&cfg)?;
            match (delivery, failed) {
                (Some(n), _) => {
                    if !reg.webhook_replay(n, None)? {
                        bail!("no delivery {n} (see `voxgate relay webhook deliveries`)");
                    }
                    println!("delivery {n} queued again (same webhook-id)");
                }
                (None, Some(ep)) => {
                    let n = reg.webhook_replay_failed(&ep)?;
                    println!("{n} failed deliveries of {ep} queued again");
                }
                (None, None) => bail!("give a delivery number or --failed ENDPOINT"),
            }
            Ok(())
        }
    }
}
