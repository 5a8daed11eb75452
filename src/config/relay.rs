//! The relay's config (`voxgate relay run`).

use super::{ConfigError, TelemetryConfig, base_dir, load_toml, resolve};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    listen: SocketAddr,
    state_dir: PathBuf,
    recordings: PathBuf,
    #[serde(default = "default_name")]
    server_name: String,
    #[serde(default)]
    downlink: RawDownlink,
    #[serde(default)]
    enrollment: RawEnrollment,
    #[serde(default)]
    ca: RawCa,
    #[serde(default)]
    telemetry: TelemetryConfig,
    #[serde(default)]
    privilege: super::RawPrivilege,
    #[serde(default)]
    sandbox: super::RawSandbox,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDownlink {
    #[serde(default)]
    mode: RawMode,
    file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEnrollment {
    #[serde(default = "default_lifetime")]
    certificate_lifetime_s: u64,
    #[serde(default = "default_grace")]
    superseded_grace_s: u64,
}

impl Default for RawEnrollment {
    fn default() -> Self {
        RawEnrollment {
            certificate_lifetime_s: default_lifetime(),
            superseded_grace_s: default_grace(),
        }
    }
}

/// How long a certificate a renewal superseded is still accepted: a
/// renewal in flight (the box got the new certificate, the answer was
/// lost, its next handshake still uses the old one) reconnects.
fn default_grace() -> u64 {
    300
}

/// `[ca]`: what the fleet CA key is sealed to.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCa {
    #[serde(default = "super::default_machine_id")]
    machine_id: PathBuf,
    #[serde(default = "super::default_serial")]
    serial: Option<PathBuf>,
}

impl Default for RawCa {
    fn default() -> Self {
        RawCa {
            machine_id: super::default_machine_id(),
            serial: super::default_serial(),
        }
    }
}

fn default_lifetime() -> u64 {
    30 * 86_400
}

#[derive(Debug, Default, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum RawMode {
    #[default]
    None,
    Echo,
    File,
}

fn default_name() -> String {
    "relay.voxgate.local".into()
}

/// What the relay sends down to each device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DownlinkMode {
    /// Nothing.
    None,
    /// The device's own uplink, straight back.
    Echo,
    /// An Ogg Opus or WAV file, looped.
    File(PathBuf),
}

/// The validated relay configuration.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// File this came from.
    pub file: PathBuf,
    /// UDP address for QUIC.
    pub listen: SocketAddr,
    /// CA and relay certificate live here.
    pub state_dir: PathBuf,
    /// Ogg recordings of uplink flows.
    pub recordings: PathBuf,
    /// DNS name in the relay certificate.
    pub server_name: String,
    /// Downlink audio policy.
    pub downlink: DownlinkMode,
    /// Lifetime of device certificates issued at enrollment.
    pub certificate_lifetime: std::time::Duration,
    /// How long a certificate superseded by a renewal is still accepted.
    pub superseded_grace: std::time::Duration,
    /// Logging and metrics.
    pub telemetry: TelemetryConfig,
    /// Privilege drop and sandbox.
    pub privilege: crate::privilege::PrivilegeSettings,
    /// What the fleet CA key is sealed to (`[ca]`).
    pub ca_binding: crate::pki::sealed::MachineBinding,
}

impl RelayConfig {
    /// Read and validate `file`.
    pub fn load(file: &Path) -> Result<Self, ConfigError> {
        Self::validate(file, load_toml(file)?)
    }

    /// Validate config text as if read from `file`.
    pub fn parse(file: &Path, text: &str) -> Result<Self, ConfigError> {
        Self::validate(file, super::parse_toml(file, text)?)
    }

    fn validate(file: &Path, raw: Raw) -> Result<Self, ConfigError> {
        let base = base_dir(file);
        if rustls::pki_types::ServerName::try_from(raw.server_name.as_str()).is_err() {
            return Err(ConfigError::invalid(
                file,
                "server_name",
                format!("`{}` is not a valid DNS name", raw.server_name),
            ));
        }
        let downlink = match (raw.downlink.mode, raw.downlink.file) {
            (RawMode::None, _) => DownlinkMode::None,
            (RawMode::Echo, _) => DownlinkMode::Echo,
            (RawMode::File, Some(f)) => {
                let f = resolve(&base, &f);
                if !f.is_file() {
                    return Err(ConfigError::invalid(
                        file,
                        "downlink.file",
                        format!("{} does not exist or is not a file", f.display()),
                    ));
                }
                DownlinkMode::File(f)
            }
            (RawMode::File, None) => {
                return Err(ConfigError::invalid(
                    file,
                    "downlink.file",
                    "mode = \"file\" needs file = \"PATH\" (an .ogg Opus or .wav file)",
                ));
            }
        };
        raw.telemetry.validate(file)?;
        let life = raw.enrollment.certificate_lifetime_s;
        if !(10..=398 * 86_400).contains(&life) {
            return Err(ConfigError::invalid(
                file,
                "enrollment.certificate_lifetime_s",
                format!("{life} s is outside 10 s ..= 398 days"),
            ));
        }
        let grace = raw.enrollment.superseded_grace_s;
        if grace > 86_400 {
            return Err(ConfigError::invalid(
                file,
                "enrollment.superseded_grace_s",
                format!("{grace} s is over a day: a copied certificate would stay good that long"),
            ));
        }
        let privilege = super::privilege_settings(file, raw.privilege, raw.sandbox)?;
        Ok(RelayConfig {
            superseded_grace: std::time::Duration::from_secs(grace),
            file: file.to_path_buf(),
            listen: raw.listen,
            state_dir: resolve(&base, &raw.state_dir),
            recordings: resolve(&base, &raw.recordings),
            server_name: raw.server_name,
            downlink,
            certificate_lifetime: std::time::Duration::from_secs(life),
            telemetry: raw.telemetry,
            privilege,
            ca_binding: crate::pki::sealed::MachineBinding {
                machine_id: resolve(&base, &raw.ca.machine_id),
                serial: raw
                    .ca
                    .serial
                    .map(|p| resolve(&base, &p))
                    .filter(|p| p.exists()),
            },
        })
    }
}
