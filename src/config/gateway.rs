//! The appliance's config (`voxgate run`).

use super::{ConfigError, TelemetryConfig, base_dir, load_toml, resolve};
use crate::codec::CodecConfig;
use crate::identity::{DEFAULT_CREDENTIAL, IdentityBackend, IdentityConfig};
use crate::pki::name::valid_device_id;
use crate::transport::split_host_port;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Raw shape of the file; [`GatewayConfig::load`] turns it into typed values.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    device_id: String,
    #[serde(default)]
    board: Option<PathBuf>,
    relay: RawRelay,
    identity: RawIdentity,
    #[serde(default)]
    capture: RawCapture,
    #[serde(default)]
    playback: RawPlayback,
    #[serde(default)]
    codec: RawCodec,
    #[serde(default)]
    jitter: RawJitter,
    #[serde(default)]
    telemetry: TelemetryConfig,
    #[serde(default)]
    privilege: super::RawPrivilege,
    #[serde(default)]
    sandbox: super::RawSandbox,
    #[serde(default)]
    sip: super::sip::RawSip,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRelay {
    address: String,
    server_name: Option<String>,
    ca: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIdentity {
    #[serde(default)]
    backend: IdentityBackend,
    cert: PathBuf,
    #[serde(default)]
    key: Option<PathBuf>,
    #[serde(default = "default_tpm")]
    tpm: String,
    #[serde(default = "default_credential")]
    credential: String,
    #[serde(default = "super::default_machine_id")]
    machine_id: PathBuf,
    #[serde(default = "super::default_serial")]
    serial: Option<PathBuf>,
}

fn default_tpm() -> String {
    "device:/dev/tpmrm0".into()
}

fn default_credential() -> String {
    DEFAULT_CREDENTIAL.into()
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCapture {
    device: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlayback {
    #[serde(default = "yes")]
    enabled: bool,
    device: Option<String>,
}

impl Default for RawPlayback {
    fn default() -> Self {
        RawPlayback {
            enabled: true,
            device: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawCodec {
    frame_ms: u32,
    bitrate: u32,
    fec: bool,
    dtx: bool,
    expected_loss_percent: u32,
    complexity: u32,
}

impl Default for RawCodec {
    /// The codec's own defaults.
    fn default() -> Self {
        let d = CodecConfig::default();
        RawCodec {
            frame_ms: d.frame.as_millis() as u32,
            bitrate: d.bitrate,
            fec: d.fec,
            dtx: d.dtx,
            expected_loss_percent: u32::from(d.expected_loss_percent),
            complexity: u32::from(d.complexity),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawJitter {
    min_ms: u32,
    max_ms: u32,
}

impl Default for RawJitter {
    fn default() -> Self {
        RawJitter {
            min_ms: 20,
            max_ms: 300,
        }
    }
}

fn yes() -> bool {
    true
}

/// Where the relay is and how to recognise it.
#[derive(Debug, Clone)]
pub struct RelayTarget {
    /// `host:port` as written; resolved at every connection attempt.
    pub address: String,
    /// TLS server name checked against the relay certificate.
    pub server_name: String,
    /// The fleet CA that signed the relay certificate.
    pub ca: PathBuf,
}

/// Capture device selection.
#[derive(Debug, Clone)]
pub struct CaptureConfig {
    /// ALSA PCM id or description name; `None` means the default device.
    pub device: Option<String>,
}

/// Playback device selection.
#[derive(Debug, Clone)]
pub struct PlaybackConfig {
    /// Whether downlink audio is played at all.
    pub enabled: bool,
    /// ALSA PCM id or description name; `None` means the default device.
    pub device: Option<String>,
}

/// Downlink jitter buffer bounds.
#[derive(Debug, Clone, Copy)]
pub struct JitterSettings {
    /// Lowest playout delay.
    pub min_delay: Duration,
    /// Highest playout delay.
    pub max_delay: Duration,
}

/// The validated gateway configuration.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// File this came from (for messages).
    pub file: PathBuf,
    /// Device id announced to the relay; must match the certificate.
    pub device_id: String,
    /// Relay to connect to.
    pub relay: RelayTarget,
    /// Key and certificate source.
    pub identity: IdentityConfig,
    /// Microphone.
    pub capture: CaptureConfig,
    /// Speaker.
    pub playback: PlaybackConfig,
    /// Encoder settings.
    pub codec: CodecConfig,
    /// Jitter buffer bounds.
    pub jitter: JitterSettings,
    /// Logging and metrics.
    pub telemetry: TelemetryConfig,
    /// Privilege drop and sandbox.
    pub privilege: crate::privilege::PrivilegeSettings,
    /// The phone bridge, when `[sip] enabled = true`.
    pub sip: Option<crate::sip::SipConfig>,
}

impl GatewayConfig {
    /// Read and validate `file`.
    pub fn load(file: &Path) -> Result<Self, ConfigError> {
        let raw: Raw = load_toml(file)?;
        Self::validate(file, raw)
    }

    /// Validate config text as if read from `file`.
    pub fn parse(file: &Path, text: &str) -> Result<Self, ConfigError> {
        Self::validate(file, super::parse_toml(file, text)?)
    }

    fn validate(file: &Path, raw: Raw) -> Result<Self, ConfigError> {
        let bad = |key: &str, msg: String| ConfigError::invalid(file, key, msg);
        let base = base_dir(file);
        if !valid_device_id(&raw.device_id) {
            return Err(bad(
                "device_id",
                format!(
                    "`{}` must be 1-64 characters of a-z, 0-9, '-', '_' or '.'",
                    raw.device_id
                ),
            ));
        }
        let (host, _) = split_host_port(&raw.relay.address).ok_or_else(|| {
            bad(
                "relay.address",
                format!(
                    "`{}` is not HOST:PORT (for example relay.example.net:443 or [::1]:4433)",
                    raw.relay.address
                ),
            )
        })?;
        let server_name = raw.relay.server_name.unwrap_or_else(|| host.to_string());
        if rustls::pki_types::ServerName::try_from(server_name.as_str()).is_err() {
            return Err(bad(
                "relay.server_name",
                format!("`{server_name}` is not a valid TLS server name"),
            ));
        }
        let c = &raw.codec;
        if ![10, 20, 40, 60].contains(&c.frame_ms) {
            return Err(bad(
                "codec.frame_ms",
                format!("{} is not one of 10, 20, 40, 60", c.frame_ms),
            ));
        }
        if !(6_000..=128_000).contains(&c.bitrate) {
            return Err(bad(
                "codec.bitrate",
                format!("{} b/s is outside 6000..=128000", c.bitrate),
            ));
        }
        if c.expected_loss_percent > 100 {
            return Err(bad(
                "codec.expected_loss_percent",
                format!("{} is not a percentage", c.expected_loss_percent),
            ));
        }
        if c.complexity > 10 {
            return Err(bad(
                "codec.complexity",
                format!("{} is outside 0..=10", c.complexity),
            ));
        }
        let j = &raw.jitter;
        if j.min_ms == 0 || j.min_ms > j.max_ms || j.max_ms > 2_000 {
            return Err(bad(
                "jitter",
                format!(
                    "need 0 < min_ms <= max_ms <= 2000, got min_ms = {}, max_ms = {}",
                    j.min_ms, j.max_ms
                ),
            ));
        }
        let tpm: crate::identity::tpm::TpmSpec = raw
            .identity
            .tpm
            .parse()
            .map_err(|e: crate::identity::tpm::TpmError| bad("identity.tpm", e.to_string()))?;
        let cred = &raw.identity.credential;
        if cred.is_empty()
            || cred.len() > 64
            || !cred
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            || cred.starts_with('.')
        {
            return Err(bad(
                "identity.credential",
                format!("`{cred}` is not a credential name (1-64 of a-z, A-Z, 0-9, '-', '_', '.')"),
            ));
        }
        let key = match (&raw.identity.key, raw.identity.backend) {
            (Some(k), _) => k.clone(),
            // The key arrives from systemd, not from a file of ours.
            (None, IdentityBackend::SystemdCreds) => PathBuf::new(),
            (None, b) => {
                return Err(bad(
                    "identity.key",
                    format!("missing: the `{b}` backend needs the key file"),
                ));
            }
        };
        raw.telemetry.validate(file)?;
        let privilege = super::privilege_settings(file, raw.privilege, raw.sandbox)?;
        // The board profile supplies device defaults; the config overrides.
        let board = match &raw.board {
            Some(b) => Some(BoardDefaults::load(file, &resolve(&base, b))?),
            None => None,
        };
        let board_capture = board.as_ref().and_then(|b| b.capture.clone());
        let board_playback = board.as_ref().and_then(|b| b.playback.clone());
        let sip = crate::sip::SipConfig::validate(file, &base, &raw.device_id, raw.sip)?;
        Ok(GatewayConfig {
            sip,
            file: file.to_path_buf(),
            device_id: raw.device_id,
            relay: RelayTarget {
                address: raw.relay.address,
                server_name,
                ca: resolve(&base, &raw.relay.ca),
            },
            identity: IdentityConfig {
                backend: raw.identity.backend,
                tpm,
                credential: raw.identity.credential,
                cert: resolve(&base, &raw.identity.cert),
                key: resolve(&base, &key),
                machine_id: resolve(&base, &raw.identity.machine_id),
                serial: raw
                    .identity
                    .serial
                    .map(|p| resolve(&base, &p))
                    .filter(|p| p.exists()),
            },
            capture: CaptureConfig {
                device: raw
                    .capture
                    .device
                    .or(board_capture)
                    .filter(|d| d != "default"),
            },
            playback: PlaybackConfig {
                enabled: raw.playback.enabled,
                device: raw
                    .playback
                    .device
                    .or(board_playback)
                    .filter(|d| d != "default"),
            },
            codec: CodecConfig {
                frame: Duration::from_millis(u64::from(c.frame_ms)),
                bitrate: c.bitrate,
                fec: c.fec,
                dtx: c.dtx,
                expected_loss_percent: c.expected_loss_percent as u8,
                complexity: c.complexity as u8,
            },
            jitter: JitterSettings {
                min_delay: Duration::from_millis(u64::from(j.min_ms)),
                max_delay: Duration::from_millis(u64::from(j.max_ms)),
            },
            telemetry: raw.telemetry,
            privilege,
        })
    }
}

/// Defaults read from a board profile (`board/NAME/profile.toml`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BoardDefaults {
    /// Default ALSA capture PCM.
    pub capture: Option<String>,
    /// Default ALSA playback PCM.
    pub playback: Option<String>,
}

/// Why a board profile's `[audio]` defaults are not usable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BoardError {
    /// Not TOML (the parser's message).
    #[error("{0}")]
    Syntax(String),
    /// `audio` is not a table.
    #[error("[audio] must be a table")]
    AudioNotATable,
    /// A PCM name that is not a string.
    #[error("audio.{0} must be a string (an ALSA PCM name)")]
    NotAString(&'static str),
}

impl BoardDefaults {
    /// Read the `[audio]` defaults of a profile; other sections are for the
    /// installer and the firewall, and are ignored here.
    pub fn load(config: &Path, profile: &Path) -> Result<Self, ConfigError> {
        let bad = |msg: String| ConfigError::invalid(config, "board", msg);
        let text = std::fs::read_to_string(profile).map_err(|e| {
            bad(format!(
                "cannot read board profile {}: {e}",
                profile.display()
            ))
        })?;
        Self::parse(&text).map_err(|e| bad(format!("{}: {e}", profile.display())))
    }

    /// Parse profile text.
    pub fn parse(text: &str) -> Result<Self, BoardError> {
        let table: toml::Table =
            toml::from_str(text).map_err(|e| BoardError::Syntax(e.message().to_string()))?;
        let audio = match table.get("audio") {
            Some(toml::Value::Table(t)) => t,
            Some(_) => return Err(BoardError::AudioNotATable),
            None => return Ok(BoardDefaults::default()),
        };
        let get = |k: &'static str| match audio.get(k) {
            None => Ok(None),
            Some(toml::Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(BoardError::NotAString(k)),
        };
        Ok(BoardDefaults {
            capture: get("capture")?,
            playback: get("playback")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
device_id = "gw-1"
[relay]
address = "127.0.0.1:4433"
server_name = "relay.voxgate.test"
ca = "ca.pem"
[identity]
cert = "device.pem"
key = "/abs/device.key"
"#;

    fn load(text: &str) -> Result<GatewayConfig, ConfigError> {
        GatewayConfig::parse(Path::new("/etc/voxgate/voxgate.toml"), text)
    }

    fn err(text: &str) -> String {
        load(text).unwrap_err().to_string()
    }

    #[test]
    fn defaults_and_relative_paths() {
        let c = load(GOOD).unwrap();
        assert_eq!(c.relay.ca, Path::new("/etc/voxgate/ca.pem"));
        assert_eq!(c.identity.key, Path::new("/abs/device.key"));
        assert_eq!(c.codec.frame, Duration::from_millis(20));
        assert_eq!(c.codec.bitrate, 24_000);
        assert!(c.codec.fec && !c.codec.dtx);
        assert_eq!(c.codec.frame_samples(), 960);
        assert!(c.capture.device.is_none());
    }

    #[test]
    fn unknown_key_is_named() {
        let e = err(&format!("{GOOD}\n[codec]\nbitrat = 1\n"));
        assert!(
            e.starts_with("/etc/voxgate/voxgate.toml: key `codec"),
            "{e}"
        );
        assert!(e.contains("unknown field `bitrat`"), "{e}");
    }

    #[test]
    fn wrong_type_is_named() {
        let e = err(&format!("{GOOD}\n[codec]\nframe_ms = \"twenty\"\n"));
        assert!(e.contains("key `codec.frame_ms`"), "{e}");
        assert!(e.contains("invalid type"), "{e}");
    }

    #[test]
    fn bad_values_are_named() {
        for (extra, key) in [
            ("[codec]\nframe_ms = 30\n", "codec.frame_ms"),
            ("[codec]\nbitrate = 1000\n", "codec.bitrate"),
            ("[jitter]\nmin_ms = 500\nmax_ms = 100\n", "jitter"),
            (
                "[telemetry]\nmetrics = \"0.0.0.0:9000\"\n",
                "telemetry.metrics",
            ),
            ("[telemetry]\nlog = \"[[[\"\n", "telemetry.log"),
        ] {
            let e = err(&format!("{GOOD}\n{extra}"));
            assert!(e.contains(&format!("key `{key}`")), "{e}");
        }
        let e = err(&GOOD.replace("127.0.0.1:4433", "nowhere"));
        assert!(e.contains("key `relay.address`"), "{e}");
        let e = err(&GOOD.replace("gw-1", "GW 1"));
        assert!(e.contains("key `device_id`"), "{e}");
    }

    #[test]
    fn missing_section_and_syntax_error() {
        let e = err("device_id = \"a\"\n");
        assert!(e.contains("missing field `relay`"), "{e}");
        let e = err("device_id = \n");
        assert!(e.contains("key `.`"), "{e}");
    }

    #[test]
    fn board_profile_supplies_device_defaults() {
        let b = BoardDefaults::parse(
            "[board]\nname = \"rpi4\"\n[audio]\ncapture = \"dsnoop_mic\"\nplayback = \"dmix_spk\"\n",
        )
        .unwrap();
        assert_eq!(b.capture.as_deref(), Some("dsnoop_mic"));
        assert!(
            BoardDefaults::parse("[audio]\ncapture = 3\n")
                .unwrap_err()
                .to_string()
                .contains("audio.capture")
        );
        assert_eq!(BoardDefaults::parse("").unwrap(), BoardDefaults::default());
        let dir = std::env::temp_dir().join(format!("vg-board-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("board.toml"),
            "[audio]\ncapture = \"mic\"\nplayback = \"spk\"\n",
        )
        .unwrap();
        let cfg = dir.join("voxgate.toml");
        let with_board =
            format!("board = \"board.toml\"\n{GOOD}\n[playback]\ndevice = \"override\"\n");
        let c = GatewayConfig::parse(&cfg, &with_board).unwrap();
        assert_eq!(c.capture.device.as_deref(), Some("mic"));
        assert_eq!(c.playback.device.as_deref(), Some("override"));
        let e = GatewayConfig::parse(&cfg, &format!("board = \"nope.toml\"\n{GOOD}")).unwrap_err();
        assert!(e.to_string().contains("key `board`"), "{e}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn identity_backends_and_their_keys() {
        let c = load(GOOD).unwrap();
        assert_eq!(c.identity.backend, IdentityBackend::DevFile);
        assert_eq!(c.identity.tpm.to_string(), "device:/dev/tpmrm0");
        assert_eq!(c.identity.credential, DEFAULT_CREDENTIAL);
        let tpm = GOOD.replace(
            "[identity]\n",
            "[identity]\nbackend = \"tpm\"\ntpm = \"swtpm:127.0.0.1:2321\"\n",
        );
        let c = load(&tpm).unwrap();
        assert_eq!(c.identity.backend, IdentityBackend::Tpm);
        assert_eq!(c.identity.tpm.to_string(), "swtpm:127.0.0.1:2321");
        let e = err(&tpm.replace("swtpm:127.0.0.1:2321", "tpm0"));
        assert!(
            e.contains("key `identity.tpm`") && e.contains("unknown kind"),
            "{e}"
        );
        // Only systemd-creds may omit the key file.
        let creds = GOOD
            .replace("key = \"/abs/device.key\"\n", "")
            .replace("[identity]\n", "[identity]\nbackend = \"systemd-creds\"\n");
        let c = load(&creds).unwrap();
        assert_eq!(c.identity.backend, IdentityBackend::SystemdCreds);
        let e = err(&creds.replace("systemd-creds", "auto"));
        assert!(
            e.contains("key `identity.key`") && e.contains("`auto` backend"),
            "{e}"
        );
        let e = err(&creds.replace("[identity]\n", "[identity]\ncredential = \"../x\"\n"));
        assert!(e.contains("key `identity.credential`"), "{e}");
        let e = err(&creds.replace("systemd-creds", "tpm2"));
        assert!(e.contains("identity.backend"), "{e}");
    }

    #[test]
    fn host_port() {}
}
