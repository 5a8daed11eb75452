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

/// `[ca]`: what the fleet CA key is sealed to, and the lifetime of the
/// relay's own certificate.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCa {
    #[serde(default = "super::default_machine_id")]
    machine_id: PathBuf,
    #[serde(default = "super::default_serial")]
    serial: Option<PathBuf>,
    #[serde(default)]
    relay_cert_days: Option<u64>,
    /// A test setting: the lifetime in seconds, for tests that watch a
    /// renewal happen.
    #[serde(default)]
    relay_cert_lifetime_s: Option<u64>,
}

impl Default for RawCa {
    fn default() -> Self {
        RawCa {
            machine_id: super::default_machine_id(),
            serial: super::default_serial(),
            relay_cert_days: None,
            relay_cert_lifetime_s: None,
        }
    }
}

/// Default lifetime of the relay's certificate, in days.
pub const RELAY_CERT_DAYS: u64 = 365;
/// Longest lifetime of the relay's certificate: the fleet CA's own.
const MAX_RELAY_CERT_DAYS: u64 = 3650;

/// The relay certificate's lifetime from `[ca] relay_cert_days` or the
/// test setting `relay_cert_lifetime_s` (one of them, or neither).
fn relay_cert_lifetime(file: &Path, ca: &RawCa) -> Result<std::time::Duration, ConfigError> {
    let secs = match (ca.relay_cert_days, ca.relay_cert_lifetime_s) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::invalid(
                file,
                "ca.relay_cert_lifetime_s",
                "set relay_cert_days or the test setting relay_cert_lifetime_s, not both",
            ));
        }
        (Some(d), None) => {
            if !(1..=MAX_RELAY_CERT_DAYS).contains(&d) {
                return Err(ConfigError::invalid(
                    file,
                    "ca.relay_cert_days",
                    format!(
                        "{d} days is outside 1 ..= {MAX_RELAY_CERT_DAYS} (the fleet CA's own lifetime)"
                    ),
                ));
            }
            d * 86_400
        }
        (None, Some(s)) => {
            if !(10..=MAX_RELAY_CERT_DAYS * 86_400).contains(&s) {
                return Err(ConfigError::invalid(
                    file,
                    "ca.relay_cert_lifetime_s",
                    format!("{s} s is outside 10 s ..= {MAX_RELAY_CERT_DAYS} days"),
                ));
            }
            s
        }
        (None, None) => RELAY_CERT_DAYS * 86_400,
    };
    Ok(std::time::Duration::from_secs(secs))
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
    /// Lifetime of the relay's own certificate (`[ca] relay_cert_days`):
    /// `relay init` issues it, the running relay renews it at two thirds.
    pub relay_cert_lifetime: std::time::Duration,
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
        let relay_cert_lifetime = relay_cert_lifetime(file, &raw.ca)?;
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
            relay_cert_lifetime,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(ca: &str) -> Result<RelayConfig, ConfigError> {
        RelayConfig::parse(
            Path::new("/etc/voxgate/relay.toml"),
            &format!(
                "listen = \"127.0.0.1:4433\"\nstate_dir = \"s\"\nrecordings = \"r\"\n[ca]\n{ca}"
            ),
        )
    }

    #[test]
    fn relay_certificate_lifetime() {
        let day = std::time::Duration::from_secs(86_400);
        assert_eq!(parse("").unwrap().relay_cert_lifetime, day * 365);
        assert_eq!(
            parse("relay_cert_days = 90").unwrap().relay_cert_lifetime,
            day * 90
        );
        assert_eq!(
            parse("relay_cert_lifetime_s = 30")
                .unwrap()
                .relay_cert_lifetime
                .as_secs(),
            30
        );
        for bad in [
            "relay_cert_days = 0",
            "relay_cert_days = 3651",
            "relay_cert_lifetime_s = 9",
            "relay_cert_days = 90\nrelay_cert_lifetime_s = 30",
        ] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.contains("ca.relay_cert_"), "{bad}: {e}");
        }
    }
}
