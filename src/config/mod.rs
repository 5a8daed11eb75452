//! Configuration: one TOML file per role, validated once into typed values.
//!
//! Every error names the file, the key and what is wrong, and is raised before
//! the process touches the network or audio. Later code never re-validates:
//! it receives [`GatewayConfig`] or [`RelayConfig`] and trusts them.
//! Relative paths in a file are resolved against that file's directory.

mod api;
mod calls;
mod gateway;
mod relay;
mod sip;
mod webhooks;

pub use api::{ApiCert, ApiSettings, LimitPer, LimitRule, parse_window};
pub use calls::{CallsSettings, FallbackTarget};
pub use gateway::{
    BoardDefaults, BoardError, CaptureConfig, GatewayConfig, JitterSettings, PlaybackConfig,
    RelayTarget,
};
pub use relay::{DownlinkMode, RELAY_CERT_DAYS, RecordingSettings, RelayConfig, RelayLimits};
pub use sip::DEFAULT_RTP_PORTS;
pub use webhooks::{WebhookSettings, parse_duration};

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// A configuration problem, located as precisely as possible.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{file}: cannot read: {source}")]
    Read {
        /// The config file.
        file: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The TOML is malformed, a key is unknown, or a value has the wrong type.
    #[error("{file}: key `{key}`: {message}")]
    Invalid {
        /// The config file.
        file: PathBuf,
        /// Dotted path of the offending key (`.` when it is the whole file).
        key: String,
        /// What is wrong and what is expected.
        message: String,
    },
}

impl ConfigError {
    pub(crate) fn invalid(file: &Path, key: &str, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            file: file.to_path_buf(),
            key: key.to_string(),
            message: message.into(),
        }
    }
}

/// Read and deserialize a TOML file, mapping every error to file + key.
pub(crate) fn load_toml<T: for<'de> Deserialize<'de>>(file: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Read {
        file: file.to_path_buf(),
        source,
    })?;
    parse_toml(file, &text)
}

pub(crate) fn parse_toml<T: for<'de> Deserialize<'de>>(
    file: &Path,
    text: &str,
) -> Result<T, ConfigError> {
    let de = toml::Deserializer::parse(text)
        .map_err(|e| ConfigError::invalid(file, ".", one_line(&e.to_string())))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        ConfigError::invalid(file, &key, one_line(&e.into_inner().to_string()))
    })
}

/// toml's messages carry a multi-line source excerpt; keep the first line with
/// the position and the last line with the explanation.
fn one_line(msg: &str) -> String {
    let lines: Vec<&str> = msg
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    match lines.as_slice() {
        [] => String::from("invalid value"),
        [only] => (*only).to_string(),
        [first, .., last] => {
            let explanation = last.trim_start_matches('|').trim();
            let explanation = explanation.trim_start_matches('^').trim();
            if explanation.is_empty() {
                (*first).to_string()
            } else {
                format!("{first}: {explanation}")
            }
        }
    }
}

pub(crate) fn resolve(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

pub(crate) fn base_dir(file: &Path) -> PathBuf {
    file.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// `[privilege]`: who the daemon becomes after binding its sockets.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPrivilege {
    #[serde(default)]
    user: Option<String>,
    #[serde(default = "default_groups")]
    groups: Vec<String>,
    #[serde(default)]
    stay_root: bool,
}

impl Default for RawPrivilege {
    fn default() -> Self {
        RawPrivilege {
            user: None,
            groups: default_groups(),
            stay_root: false,
        }
    }
}

fn default_groups() -> Vec<String> {
    vec!["audio".into()]
}

/// `[sandbox]`: Landlock and seccomp after the drop.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSandbox {
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default)]
    read: Vec<PathBuf>,
    #[serde(default)]
    write: Vec<PathBuf>,
}

impl Default for RawSandbox {
    fn default() -> Self {
        RawSandbox {
            enabled: true,
            read: Vec::new(),
            write: Vec::new(),
        }
    }
}

fn yes() -> bool {
    true
}

pub(crate) fn privilege_settings(
    file: &Path,
    p: RawPrivilege,
    s: RawSandbox,
) -> Result<crate::privilege::PrivilegeSettings, ConfigError> {
    let base = base_dir(file);
    if let Some(u) = &p.user
        && (u.is_empty() || u.contains([':', '\n', '/']))
    {
        return Err(ConfigError::invalid(
            file,
            "privilege.user",
            format!("`{u}` is not a user name"),
        ));
    }
    Ok(crate::privilege::PrivilegeSettings {
        user: p.user,
        groups: p.groups,
        stay_root: p.stay_root,
        sandbox: s.enabled,
        read: s.read.iter().map(|r| resolve(&base, r)).collect(),
        write: s.write.iter().map(|w| resolve(&base, w)).collect(),
    })
}

/// The sealing input every role binds its keys to by default.
fn default_machine_id() -> PathBuf {
    PathBuf::from(crate::pki::sealed::MACHINE_ID)
}

/// The SoC serial of device-tree boards, used when the file exists.
fn default_serial() -> Option<PathBuf> {
    Some(PathBuf::from(crate::pki::sealed::SOC_SERIAL))
}

/// Telemetry settings shared by both roles.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Default log filter (`error`, `warn`, `info`, `debug`, `trace`, or a
    /// tracing directive list).
    #[serde(default = "default_log")]
    pub log: String,
    /// Loopback address of the Prometheus endpoint; absent disables it.
    #[serde(default)]
    pub metrics: Option<SocketAddr>,
    /// The gateway's status socket (the same metrics on a Unix socket,
    /// mode 0660); absent: `/run/voxgate/status.sock` when `/run/voxgate`
    /// exists (the unit's `RuntimeDirectory=`). The relay has none.
    #[serde(default)]
    pub status_socket: Option<PathBuf>,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            log: default_log(),
            metrics: None,
            status_socket: None,
        }
    }
}

fn default_log() -> String {
    "info".into()
}

impl TelemetryConfig {
    /// The status socket to serve and read: the configured one, else
    /// [`crate::telemetry::http::DEFAULT_STATUS_SOCKET`] when its directory
    /// exists.
    pub fn status_socket(&self) -> Option<PathBuf> {
        self.status_socket.clone().or_else(|| {
            let d = PathBuf::from(crate::telemetry::http::DEFAULT_STATUS_SOCKET);
            d.parent().is_some_and(Path::is_dir).then_some(d)
        })
    }

    pub(crate) fn validate(&self, file: &Path) -> Result<(), ConfigError> {
        if tracing_subscriber::EnvFilter::try_new(&self.log).is_err() {
            return Err(ConfigError::invalid(
                file,
                "telemetry.log",
                format!("`{}` is not a log level or filter", self.log),
            ));
        }
        if let Some(p) = &self.status_socket
            && !p.is_absolute()
        {
            return Err(ConfigError::invalid(
                file,
                "telemetry.status_socket",
                format!("`{}` must be an absolute path", p.display()),
            ));
        }
        if let Some(addr) = self.metrics
            && !addr.ip().is_loopback()
        {
            return Err(ConfigError::invalid(
                file,
                "telemetry.metrics",
                format!(
                    "{addr} is not a loopback address; metrics are local-only (use 127.0.0.1:PORT)"
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_examples_parse() {
        let g = GatewayConfig::parse(
            Path::new("/etc/voxgate/voxgate.toml"),
            include_str!("../../examples/voxgate.toml"),
        )
        .unwrap();
        assert_eq!(g.device_id, "shop-12");
        assert_eq!(g.telemetry.metrics, Some("127.0.0.1:9464".parse().unwrap()));
        let r = RelayConfig::parse(
            Path::new("/etc/voxgate/relay.toml"),
            include_str!("../../examples/relay.toml"),
        )
        .unwrap();
        assert_eq!(r.downlink, DownlinkMode::Echo);
        assert_eq!(r.listen.port(), 443);
    }
}
