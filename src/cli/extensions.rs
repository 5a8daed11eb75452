//! `voxgate relay ext {list,release}`: which device owns each extension.
//! The first device to announce an extension owns it, across reconnects
//! and restarts; releasing one (a phone moved to another box) lets the
//! next box that announces it take it. A running relay sees a release
//! within half a second; a box still connected with the extension keeps it
//! until its session ends.

use super::open_registry;
use crate::config::RelayConfig;
use anyhow::Result;
use clap::Subcommand;
use std::path::PathBuf;

#[derive(Debug, Subcommand)]
pub(super) enum ExtCommand {
    /// List every extension and the device that owns it.
    List {
        /// Relay config file.
        #[arg(long, short, default_value = "/etc/voxgate/relay.toml")]
        config: PathBuf,
    },
    /// Release an extension from its device (audited).
    Release {
        /// Relay config file.
        #[arg(long, short, default_value = "/etc/voxgate/relay.toml")]
        config: PathBuf,
        /// The extension.
        ext: String,
    },
}

pub(super) fn run(cmd: ExtCommand) -> Result<()> {
    match cmd {
        ExtCommand::List { config } => {
            let reg = open_registry(&RelayConfig::load(&config)?)?;
            let owners = reg.extension_owners()?;
            if owners.is_empty() {
                println!("no extension is owned yet");
            }
            for (ext, device) in owners {
                println!("{ext:<10} {device}");
            }
            Ok(())
        }
        ExtCommand::Release { config, ext } => {
            let reg = open_registry(&RelayConfig::load(&config)?)?;
            let released = reg.atomically(|r| {
                let owner = r
                    .extension_owners()?
                    .into_iter()
                    .find(|(e, _)| *e == ext)
                    .map(|(_, d)| d);
                if let Some(d) = &owner {
                    r.release_extension(&ext)?;
                    r.audit("extension_released", "", d, &ext)?;
                }
                Ok::<_, crate::relay::registry::RegistryError>(owner)
            })?;
            match released {
                Some(d) => println!(
                    "released {ext} from `{d}`: the next box to announce it owns it (a box still connected with it keeps it until its session ends)"
                ),
                None => println!("{ext} is owned by no device"),
            }
            Ok(())
        }
    }
}
