//! Logging, secrets and metrics.
//!
//! - Logs go through `tracing`: human-readable on a terminal, one JSON object
//!   per line otherwise (journald, files, CI).
//! - [`Secret`] keeps keys and tokens out of every formatter.
//! - [`metrics`] holds lock-free counters; [`http`] serves them as Prometheus
//!   text on a loopback-only endpoint.

pub mod http;
pub mod metrics;
pub mod secret;

pub use secret::Secret;

use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

/// Install the global subscriber. `default_level` applies when neither
/// `VOXGATE_LOG` nor `RUST_LOG` is set. Safe to call more than once.
pub fn init(default_level: &str) {
    let filter = std::env::var("VOXGATE_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .ok()
        .and_then(|s| EnvFilter::try_new(s).ok())
        .unwrap_or_else(|| EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if std::io::stderr().is_terminal() {
        builder.with_target(false).try_init()
    } else {
        builder.json().flatten_event(true).try_init()
    };
}
