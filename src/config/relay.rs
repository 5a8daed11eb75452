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
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    recording: RawRecording,
    #[serde(default)]
    webhooks: super::webhooks::RawWebhooks,
    #[serde(default)]
    calls: super::calls::RawCalls,
    api: Option<super::api::RawApi>,
    #[serde(default)]
    signer: RawSigner,
}

/// `[signer]`: where the process that holds the issuing CA key runs.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSigner {
    socket: Option<PathBuf>,
    user: Option<String>,
}

/// `[signer]`: the signer process ([`crate::relay::signer`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SignerSettings {
    /// The socket of a signer that runs as its own unit
    /// (`voxgate-signer.service`); `None`: `relay run` starts the signer as
    /// its child.
    pub socket: Option<PathBuf>,
    /// The signer's own account: it owns the issuing keys, and the signer
    /// drops to it when started as root.
    pub user: Option<String>,
}

/// `[limits]`: what one source, one device, or everyone at once may cost
/// the relay.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLimits {
    retry_above_handshakes_per_s: u32,
    max_handshakes: usize,
    max_handshakes_per_source: usize,
    max_enrollments: usize,
    ipv6_prefix: u8,
    renewals_per_device_day: u64,
}

impl Default for RawLimits {
    fn default() -> Self {
        let d = RelayLimits::default();
        RawLimits {
            retry_above_handshakes_per_s: d.retry_above_per_s,
            max_handshakes: d.max_handshakes,
            max_handshakes_per_source: d.max_per_source,
            max_enrollments: d.max_enrollments,
            ipv6_prefix: d.ipv6_prefix,
            renewals_per_device_day: d.renewals_per_device_day,
        }
    }
}

/// `[recording]`: whether the relay records uplinks, and for how long.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawRecording {
    enabled: bool,
    max_age_days: u64,
    max_total_gib: f64,
    per_device_mib_per_day: u64,
}

impl Default for RawRecording {
    fn default() -> Self {
        RawRecording {
            enabled: false,
            max_age_days: 30,
            max_total_gib: 10.0,
            per_device_mib_per_day: 2048,
        }
    }
}

/// The relay's limits (`[limits]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayLimits {
    /// Handshakes per second above which sources must pass a QUIC Retry.
    pub retry_above_per_s: u32,
    /// Handshakes in flight at once, in all.
    pub max_handshakes: usize,
    /// Handshakes in flight at once from one source.
    pub max_per_source: usize,
    /// Enrollments running at once.
    pub max_enrollments: usize,
    /// Bits of an IPv6 address that name one source.
    pub ipv6_prefix: u8,
    /// Certificate renewals one device may make per day.
    pub renewals_per_device_day: u64,
}

impl Default for RelayLimits {
    fn default() -> Self {
        RelayLimits {
            retry_above_per_s: 100,
            max_handshakes: 256,
            max_per_source: 8,
            max_enrollments: 32,
            ipv6_prefix: 64,
            renewals_per_device_day: 24,
        }
    }
}

/// The relay's recordings (`[recording]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordingSettings {
    /// Whether uplinks and calls to the recording service are recorded.
    pub enabled: bool,
    /// Recordings older than this are deleted.
    pub max_age: std::time::Duration,
    /// The recordings together are kept under this many bytes.
    pub max_total_bytes: u64,
    /// Bytes of recordings one device may add per day.
    pub per_device_bytes_per_day: u64,
}

fn validate_limits(file: &Path, l: RawLimits) -> Result<RelayLimits, ConfigError> {
    let positive = [
        (
            "limits.retry_above_handshakes_per_s",
            l.retry_above_handshakes_per_s as u64,
        ),
        ("limits.max_handshakes", l.max_handshakes as u64),
        (
            "limits.max_handshakes_per_source",
            l.max_handshakes_per_source as u64,
        ),
        ("limits.max_enrollments", l.max_enrollments as u64),
        ("limits.renewals_per_device_day", l.renewals_per_device_day),
    ];
    for (key, v) in positive {
        if v == 0 {
            return Err(ConfigError::invalid(file, key, "must be at least 1"));
        }
    }
    if !(16..=128).contains(&l.ipv6_prefix) {
        return Err(ConfigError::invalid(
            file,
            "limits.ipv6_prefix",
            format!("{} is outside 16 ..= 128 bits", l.ipv6_prefix),
        ));
    }
    Ok(RelayLimits {
        retry_above_per_s: l.retry_above_handshakes_per_s,
        max_handshakes: l.max_handshakes,
        max_per_source: l.max_handshakes_per_source,
        max_enrollments: l.max_enrollments,
        ipv6_prefix: l.ipv6_prefix,
        renewals_per_device_day: l.renewals_per_device_day,
    })
}

fn validate_recording(file: &Path, r: RawRecording) -> Result<RecordingSettings, ConfigError> {
    if !(1..=3650).contains(&r.max_age_days) {
        return Err(ConfigError::invalid(
            file,
            "recording.max_age_days",
            format!("{} is outside 1 ..= 3650", r.max_age_days),
        ));
    }
    if !(r.max_total_gib.is_finite() && r.max_total_gib > 0.0) {
        return Err(ConfigError::invalid(
            file,
            "recording.max_total_gib",
            "must be a size above 0 (GiB; fractions allowed)",
        ));
    }
    if r.per_device_mib_per_day == 0 {
        return Err(ConfigError::invalid(
            file,
            "recording.per_device_mib_per_day",
            "must be at least 1",
        ));
    }
    Ok(RecordingSettings {
        enabled: r.enabled,
        max_age: std::time::Duration::from_secs(r.max_age_days * 86_400),
        max_total_bytes: (r.max_total_gib * f64::from(1u32 << 30)) as u64,
        per_device_bytes_per_day: r.per_device_mib_per_day.saturating_mul(1 << 20),
    })
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
    /// What one source, one device or everyone may cost (`[limits]`).
    pub limits: RelayLimits,
    /// Recording and retention (`[recording]`).
    pub recording: RecordingSettings,
    /// Where the signer runs (`[signer]`).
    pub signer: SignerSettings,
    /// Webhook delivery (`[webhooks]`).
    pub webhooks: super::WebhookSettings,
    /// Fallback routing of calls (`[calls]`).
    pub calls: super::CallsSettings,
    /// The operator HTTP API (`[api]`; `None`: off).
    pub api: Option<super::api::ApiSettings>,
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
        let limits = validate_limits(file, raw.limits)?;
        let recording = validate_recording(file, raw.recording)?;
        let signer = validate_signer(file, raw.signer, &privilege)?;
        let webhooks = super::webhooks::validate(file, &base, raw.webhooks)?;
        let calls = super::calls::validate(file, &base, raw.calls)?;
        let api = raw
            .api
            .map(|a| super::api::validate(file, &base, a))
            .transpose()?;
        Ok(RelayConfig {
            webhooks,
            calls,
            api,
            limits,
            recording,
            signer,
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

fn validate_signer(
    file: &Path,
    raw: RawSigner,
    privilege: &crate::privilege::PrivilegeSettings,
) -> Result<SignerSettings, ConfigError> {
    if let Some(socket) = &raw.socket
        && !socket.is_absolute()
    {
        return Err(ConfigError::invalid(
            file,
            "signer.socket",
            format!(
                "`{}` is not an absolute path (the signer unit's socket, e.g. /run/voxgate-signer.sock)",
                socket.display()
            ),
        ));
    }
    if let Some(user) = &raw.user {
        let why = if user.is_empty() || user == "root" {
            Some("must name an account of its own, not root")
        } else if privilege.user.as_deref() == Some(user.as_str()) {
            Some(
                "must differ from [privilege] user (the relay's account): the signer's account is what keeps the issuing key from the relay",
            )
        } else {
            None
        };
        if let Some(why) = why {
            return Err(ConfigError::invalid(
                file,
                "signer.user",
                format!("`{user}` {why}"),
            ));
        }
    }
    Ok(SignerSettings {
        socket: raw.socket,
        user: raw.user,
    })
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
    fn limits_and_recording_have_defaults_and_are_checked() {
        let base = "listen = \"127.0.0.1:4433\"\nstate_dir = \"s\"\nrecordings = \"r\"\n";
        let p = |extra: &str| RelayConfig::parse(Path::new("/r.toml"), &format!("{base}{extra}"));
        let c = p("").unwrap();
        assert_eq!(c.limits, RelayLimits::default());
        assert!(!c.recording.enabled, "recording is off unless asked for");
        assert_eq!(c.recording.max_total_bytes, 10 << 30);
        assert_eq!(c.recording.max_age.as_secs(), 30 * 86_400);
        let c = p("[recording]\nenabled = true\nmax_total_gib = 0.5\n[limits]\nretry_above_handshakes_per_s = 5\n").unwrap();
        assert!(c.recording.enabled);
        assert_eq!(c.recording.max_total_bytes, 1 << 29);
        assert_eq!(c.limits.retry_above_per_s, 5);
        assert_eq!(c.signer, SignerSettings::default());
        let c = p("[signer]\nsocket = \"/run/s.sock\"\nuser = \"vs\"\n").unwrap();
        assert_eq!(c.signer.socket.as_deref(), Some(Path::new("/run/s.sock")));
        assert_eq!(c.signer.user.as_deref(), Some("vs"));
        for bad in [
            "[signer]\nsocket = \"run/s.sock\"",
            "[signer]\nuser = \"root\"",
            "[signer]\nuser = \"nobody\"\n[privilege]\nuser = \"nobody\"",
            "[signer]\nbogus = 1",
            "[limits]\nmax_handshakes = 0",
            "[limits]\nipv6_prefix = 8",
            "[recording]\nmax_total_gib = 0",
            "[recording]\nmax_age_days = 0",
            "[limits]\nbogus = 1",
        ] {
            assert!(p(bad).is_err(), "{bad}");
        }
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
