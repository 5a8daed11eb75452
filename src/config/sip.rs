//! The `[sip]` section of the appliance config: the phone bridge.
//!
//! ```toml
//! [sip]
//! enabled = true
//! listen = "0.0.0.0:5060"         # UDP, and TCP unless tcp = false
//! advertise = "192.168.1.10"      # the address phones reach us at (Via, Contact, SDP)
//! rtp_ports = "10000-10199"       # bound before the privilege drop
//! allow = ["192.168.1.0/24"]      # default: the subnets of the listening interface
//! auth_failures = 5               # failed logins per source before a ban
//! ban_seconds = 600
//! phones = "phones.sealed"        # credentials, sealed like the device key
//! codecs = ["opus", "g722", "pcmu", "pcma"]
//! opus_complexity = 1             # Opus encoder effort for transcoded calls
//! digest = ["sha-256", "md5"]     # challenges offered; ["md5"] for phones that abort on SHA-256
//! packets_per_source = 200        # SIP packets per second from one address before the excess is dropped
//! max_transactions = 8192         # default: from the box's memory (1/64 of it at 2 KiB each, 1024-65536)
//! nonce_seconds = 300             # how long a digest challenge's nonce stays fresh (10-3600)
//! ipv6_prefix = 128               # IPv6 sources sharing this prefix share a failure budget and ban (32-128)
//! calls_per_extension = 4         # calls in progress for one extension, both directions (1-64)
//! ```

use super::ConfigError;
use crate::codec::telephony::PhoneCodec;
use crate::sip::settings::{MAX_RTP_PORTS, SipConfig, valid_realm};
use ipnet::IpNet;
use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Raw `[sip]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSip {
    #[serde(default)]
    enabled: bool,
    #[serde(default = "default_listen")]
    listen: String,
    #[serde(default = "yes")]
    tcp: bool,
    advertise: Option<String>,
    #[serde(default = "default_rtp_ports")]
    rtp_ports: String,
    realm: Option<String>,
    allow: Option<Vec<String>>,
    #[serde(default = "default_failures")]
    auth_failures: u32,
    #[serde(default = "default_ban")]
    ban_seconds: u64,
    #[serde(default = "default_min_reg")]
    min_expires_s: u32,
    #[serde(default = "default_max_reg")]
    max_expires_s: u32,
    #[serde(default = "default_phones")]
    phones: PathBuf,
    #[serde(default = "default_codecs")]
    codecs: Vec<String>,
    #[serde(default = "default_ptime")]
    ptime_ms: u32,
    #[serde(default = "default_opus_complexity")]
    opus_complexity: u8,
    #[serde(default = "default_digest")]
    digest: Vec<String>,
    #[serde(default = "default_packets_per_source")]
    packets_per_source: u32,
    max_transactions: Option<usize>,
    #[serde(default = "default_nonce_seconds")]
    nonce_seconds: u32,
    #[serde(default = "default_ipv6_prefix")]
    ipv6_prefix: u8,
    #[serde(default = "default_calls_per_extension")]
    calls_per_extension: u32,
}

impl Default for RawSip {
    fn default() -> Self {
        RawSip {
            enabled: false,
            listen: default_listen(),
            tcp: true,
            advertise: None,
            rtp_ports: default_rtp_ports(),
            realm: None,
            allow: None,
            auth_failures: default_failures(),
            ban_seconds: default_ban(),
            min_expires_s: default_min_reg(),
            max_expires_s: default_max_reg(),
            phones: default_phones(),
            codecs: default_codecs(),
            ptime_ms: default_ptime(),
            opus_complexity: default_opus_complexity(),
            digest: default_digest(),
            packets_per_source: default_packets_per_source(),
            max_transactions: None,
            nonce_seconds: default_nonce_seconds(),
            ipv6_prefix: default_ipv6_prefix(),
            calls_per_extension: default_calls_per_extension(),
        }
    }
}

fn default_nonce_seconds() -> u32 {
    300
}
fn default_ipv6_prefix() -> u8 {
    // Per address: a LAN is usually one /64, and a /64 key would let one
    // host ban (and share a packet budget with) every IPv6 phone.
    128
}
fn default_calls_per_extension() -> u32 {
    4
}

fn default_packets_per_source() -> u32 {
    200
}

/// Bytes a lingering SIP transaction may hold (the request's key, the last
/// response with its SDP), for sizing the table from memory.
const TRANSACTION_BYTES: u64 = 2048;

/// The transaction table's size when `[sip] max_transactions` is not set:
/// 1/64 of the box's memory at [`TRANSACTION_BYTES`] each, within
/// 1024-65536 (a 1 GiB box gets 8192: at about 40 transaction-seconds a
/// call, 200 call set-ups a second).
pub fn default_max_transactions() -> usize {
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(512 << 20, |kib| kib * 1024);
    ((mem / 64 / TRANSACTION_BYTES) as usize).clamp(1024, 65_536)
}

fn yes() -> bool {
    true
}
fn default_listen() -> String {
    "0.0.0.0:5060".into()
}
/// The RTP port range when `[sip] rtp_ports` is not set.
pub const DEFAULT_RTP_PORTS: (u16, u16) = (10_000, 10_199);

fn default_rtp_ports() -> String {
    format!("{}-{}", DEFAULT_RTP_PORTS.0, DEFAULT_RTP_PORTS.1)
}
fn default_failures() -> u32 {
    5
}
fn default_ban() -> u64 {
    600
}
fn default_min_reg() -> u32 {
    60
}
fn default_max_reg() -> u32 {
    3600
}
fn default_phones() -> PathBuf {
    PathBuf::from("phones.sealed")
}
fn default_codecs() -> Vec<String> {
    ["opus", "g722", "pcmu", "pcma"].map(String::from).to_vec()
}
fn default_ptime() -> u32 {
    20
}
fn default_digest() -> Vec<String> {
    ["sha-256", "md5"].map(String::from).to_vec()
}
fn default_opus_complexity() -> u8 {
    // Phone audio is 8 or 16 kHz: low complexity costs little quality and
    // keeps a transcoded call at about 35 µs per 20 ms (benches/phone_leg.rs).
    1
}

/// Why an RTP port range is not usable (the text the config error shows).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
enum PortRangeError {
    #[error("`{0}` is not a range like 10000-10199")]
    NotARange(String),
    #[error("`{0}` is not a range of port numbers")]
    NotPorts(String),
    #[error("`{0}` must be ascending and above 1023")]
    Order(String),
    #[error("`{0}` must start on an even port and hold whole RTP/RTCP pairs (e.g. 10000-10199)")]
    Pairs(String),
    #[error("`{0}` holds more than {MAX_RTP_PORTS} ports")]
    TooMany(String),
}

/// Parse an RTP port range `A-B`.
fn port_range(s: &str) -> Result<(u16, u16), PortRangeError> {
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| PortRangeError::NotARange(s.into()))?;
    let (a, b): (u16, u16) = match (a.trim().parse(), b.trim().parse()) {
        (Ok(a), Ok(b)) => (a, b),
        _ => return Err(PortRangeError::NotPorts(s.into())),
    };
    if a < 1024 || b < a {
        return Err(PortRangeError::Order(s.into()));
    }
    if a % 2 != 0 || (u32::from(b) - u32::from(a) + 1) % 2 != 0 {
        return Err(PortRangeError::Pairs(s.into()));
    }
    if u32::from(b) - u32::from(a) + 1 > MAX_RTP_PORTS {
        return Err(PortRangeError::TooMany(s.into()));
    }
    Ok((a, b))
}

fn codec(name: &str) -> Option<PhoneCodec> {
    Some(match name.to_ascii_lowercase().as_str() {
        "opus" => PhoneCodec::Opus,
        "g722" => PhoneCodec::G722,
        "pcmu" => PhoneCodec::Pcmu,
        "pcma" => PhoneCodec::Pcma,
        _ => return None,
    })
}

impl SipConfig {
    /// Validate `raw` (from `file`, relative paths against `base`); `None`
    /// when the bridge is off.
    pub(crate) fn validate(
        file: &Path,
        base: &Path,
        device_id: &str,
        raw: RawSip,
    ) -> Result<Option<SipConfig>, ConfigError> {
        let bad = |key: &str, msg: String| ConfigError::invalid(file, &format!("sip.{key}"), msg);
        if !raw.enabled {
            return Ok(None);
        }
        let listen: SocketAddr = raw.listen.parse().map_err(|_| {
            bad(
                "listen",
                format!("`{}` is not IP:PORT (for example 0.0.0.0:5060)", raw.listen),
            )
        })?;
        let advertise = raw
            .advertise
            .map(|a| {
                a.parse::<IpAddr>()
                    .ok()
                    .filter(|ip| !ip.is_unspecified())
                    .ok_or_else(|| bad("advertise", format!("`{a}` is not a unicast IP address")))
            })
            .transpose()?;
        let rtp_ports = port_range(&raw.rtp_ports).map_err(|e| bad("rtp_ports", e.to_string()))?;
        if (rtp_ports.0..=rtp_ports.1).contains(&listen.port()) {
            return Err(bad(
                "rtp_ports",
                format!(
                    "{}-{} includes the SIP port {}",
                    rtp_ports.0,
                    rtp_ports.1,
                    listen.port()
                ),
            ));
        }
        let realm = raw.realm.unwrap_or_else(|| device_id.to_string());
        if !valid_realm(&realm) {
            return Err(bad(
                "realm",
                "must be 1-64 printable characters without quotes or backslashes".into(),
            ));
        }
        let allow = raw
            .allow
            .map(|v| {
                v.iter()
                    .map(|n| {
                        n.parse::<IpNet>()
                            .or_else(|_| n.parse::<IpAddr>().map(IpNet::from))
                            .map(|n| n.trunc())
                            .map_err(|_| {
                                bad(
                                    "allow",
                                    format!("`{n}` is not a subnet like 192.168.1.0/24"),
                                )
                            })
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?;
        if allow.as_ref().is_some_and(Vec::is_empty) {
            return Err(bad(
                "allow",
                "is empty: no phone could register (leave it out to allow the LAN)".into(),
            ));
        }
        if !(1..=100).contains(&raw.auth_failures) {
            return Err(bad("auth_failures", "must be 1-100".into()));
        }
        if !(1..=7 * 86_400).contains(&raw.ban_seconds) {
            return Err(bad("ban_seconds", "must be 1-604800 (a week)".into()));
        }
        if raw.min_expires_s < 10
            || raw.max_expires_s < raw.min_expires_s
            || raw.max_expires_s > 86_400
        {
            return Err(bad(
                "max_expires_s",
                "registrations need 10 <= min_expires_s <= max_expires_s <= 86400".into(),
            ));
        }
        let mut codecs = Vec::new();
        for c in &raw.codecs {
            let c = codec(c).ok_or_else(|| {
                bad(
                    "codecs",
                    format!("`{c}` is not one of opus, g722, pcmu, pcma"),
                )
            })?;
            if !codecs.contains(&c) {
                codecs.push(c);
            }
        }
        if codecs.is_empty() {
            return Err(bad("codecs", "name at least one codec".into()));
        }
        let mut digest = Vec::new();
        for a in &raw.digest {
            let alg = match a.to_ascii_lowercase().as_str() {
                "sha-256" => crate::sip::auth::Algorithm::Sha256,
                "md5" => crate::sip::auth::Algorithm::Md5,
                _ => return Err(bad("digest", format!("`{a}` is not sha-256 or md5"))),
            };
            if !digest.contains(&alg) {
                digest.push(alg);
            }
        }
        if digest.is_empty() {
            return Err(bad("digest", "name at least one of sha-256, md5".into()));
        }
        if raw.opus_complexity > 10 {
            return Err(bad("opus_complexity", "must be 0-10".into()));
        }
        if !(10..=60).contains(&raw.ptime_ms) || !raw.ptime_ms.is_multiple_of(10) {
            return Err(bad("ptime_ms", "must be 10, 20, 30, 40, 50 or 60".into()));
        }
        if !(10..=100_000).contains(&raw.packets_per_source) {
            return Err(bad("packets_per_source", "must be 10-100000".into()));
        }
        let max_transactions = raw
            .max_transactions
            .unwrap_or_else(default_max_transactions);
        if !(64..=1_000_000).contains(&max_transactions) {
            return Err(bad("max_transactions", "must be 64-1000000".into()));
        }
        if !(10..=3600).contains(&raw.nonce_seconds) {
            return Err(bad("nonce_seconds", "must be 10-3600".into()));
        }
        if !(32..=128).contains(&raw.ipv6_prefix) {
            return Err(bad(
                "ipv6_prefix",
                "must be 32-128 (128: each IPv6 address on its own)".into(),
            ));
        }
        if !(1..=64).contains(&raw.calls_per_extension) {
            return Err(bad("calls_per_extension", "must be 1-64".into()));
        }
        Ok(Some(SipConfig {
            listen,
            tcp: raw.tcp,
            advertise,
            rtp_ports,
            realm,
            allow,
            auth_failures: raw.auth_failures,
            ban: Duration::from_secs(raw.ban_seconds),
            min_expires: Duration::from_secs(raw.min_expires_s.into()),
            max_expires: Duration::from_secs(raw.max_expires_s.into()),
            phones: super::resolve(base, &raw.phones),
            codecs,
            ptime: Duration::from_millis(raw.ptime_ms.into()),
            opus_complexity: raw.opus_complexity,
            digest,
            packets_per_source: raw.packets_per_source,
            max_transactions,
            nonce_ttl: Duration::from_secs(raw.nonce_seconds.into()),
            ipv6_prefix: raw.ipv6_prefix,
            calls_per_extension: raw.calls_per_extension as usize,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Option<SipConfig>, String> {
        let raw: RawSip = toml::from_str(text).map_err(|e| e.to_string())?;
        SipConfig::validate(
            Path::new("/etc/voxgate/voxgate.toml"),
            Path::new("/etc/voxgate"),
            "gw-1",
            raw,
        )
        .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_are_off_then_sane_when_enabled() {
        assert_eq!(parse("").unwrap(), None);
        let c = parse("enabled = true").unwrap().unwrap();
        assert_eq!(c.listen, "0.0.0.0:5060".parse().unwrap());
        assert!(c.tcp);
        assert_eq!(c.rtp_ports, (10_000, 10_199));
        assert_eq!(c.realm, "gw-1");
        assert_eq!(c.allow, None);
        assert_eq!((c.auth_failures, c.ban), (5, Duration::from_secs(600)));
        assert_eq!(
            (c.nonce_ttl, c.ipv6_prefix, c.calls_per_extension),
            (Duration::from_secs(300), 128, 4)
        );
        let c =
            parse("enabled = true\nnonce_seconds = 60\nipv6_prefix = 64\ncalls_per_extension = 2")
                .unwrap()
                .unwrap();
        assert_eq!(
            (c.nonce_ttl, c.ipv6_prefix, c.calls_per_extension),
            (Duration::from_secs(60), 64, 2)
        );
        assert_eq!(c.phones, PathBuf::from("/etc/voxgate/phones.sealed"));
        assert_eq!(
            c.codecs,
            vec![
                PhoneCodec::Opus,
                PhoneCodec::G722,
                PhoneCodec::Pcmu,
                PhoneCodec::Pcma
            ]
        );
    }

    #[test]
    fn every_key_is_validated_and_named() {
        for (text, key) in [
            ("listen = \"5060\"", "sip.listen"),
            ("advertise = \"0.0.0.0\"", "sip.advertise"),
            ("rtp_ports = \"10001-10100\"", "sip.rtp_ports"),
            ("rtp_ports = \"10000-10000\"", "sip.rtp_ports"),
            ("rtp_ports = \"500-600\"", "sip.rtp_ports"),
            ("rtp_ports = \"10000-60000\"", "sip.rtp_ports"),
            ("listen = \"0.0.0.0:10010\"", "sip.rtp_ports"),
            ("realm = \"a\\\"b\"", "sip.realm"),
            ("allow = [\"192.168.1.0/33\"]", "sip.allow"),
            ("allow = []", "sip.allow"),
            ("auth_failures = 0", "sip.auth_failures"),
            ("ban_seconds = 0", "sip.ban_seconds"),
            ("min_expires_s = 5", "sip.max_expires_s"),
            ("codecs = [\"gsm\"]", "sip.codecs"),
            ("codecs = []", "sip.codecs"),
            ("ptime_ms = 25", "sip.ptime_ms"),
            ("opus_complexity = 11", "sip.opus_complexity"),
            ("digest = [\"sha-1\"]", "sip.digest"),
            ("digest = []", "sip.digest"),
            ("nonce_seconds = 5", "sip.nonce_seconds"),
            ("ipv6_prefix = 129", "sip.ipv6_prefix"),
            ("ipv6_prefix = 16", "sip.ipv6_prefix"),
            ("calls_per_extension = 0", "sip.calls_per_extension"),
        ] {
            let err = parse(&format!("enabled = true\n{text}")).unwrap_err();
            assert!(err.contains(key), "{text}: {err}");
        }
        assert!(
            parse("enabled = true\nbogus = 1")
                .unwrap_err()
                .contains("bogus")
        );
    }

    #[test]
    fn subnets_and_hosts_are_accepted() {
        let c = parse("enabled = true\nallow = [\"192.168.1.7/24\", \"10.0.0.5\", \"fd00::/8\"]\ncodecs = [\"PCMA\", \"pcma\", \"opus\"]")
            .unwrap()
            .unwrap();
        let allow: Vec<String> = c.allow.unwrap().iter().map(ToString::to_string).collect();
        assert_eq!(allow, ["192.168.1.0/24", "10.0.0.5/32", "fd00::/8"]);
        assert_eq!(c.codecs, vec![PhoneCodec::Pcma, PhoneCodec::Opus]);
    }

    #[test]
    fn flood_limit_and_transaction_table_size() {
        let c = parse("enabled = true").unwrap().unwrap();
        assert_eq!(c.packets_per_source, 200);
        assert!((1024..=65_536).contains(&c.max_transactions));
        assert_eq!(c.max_transactions, default_max_transactions());
        let c = parse("enabled = true\npackets_per_source = 5000\nmax_transactions = 100")
            .unwrap()
            .unwrap();
        assert_eq!((c.packets_per_source, c.max_transactions), (5000, 100));
        for bad in ["packets_per_source = 5", "max_transactions = 10"] {
            let err = parse(&format!("enabled = true\n{bad}")).unwrap_err();
            assert!(err.contains(bad.split(' ').next().unwrap()), "{err}");
        }
    }
}
