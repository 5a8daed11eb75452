//! The phone bridge's SIP settings, as `config` parses them from `[sip]`.

use crate::codec::telephony::PhoneCodec;
use ipnet::IpNet;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// Whether `realm` can be a digest realm: 1-64 printable ASCII characters
/// without quotes or backslashes (it is quoted in challenges).
pub fn valid_realm(realm: &str) -> bool {
    (1..=64).contains(&realm.len())
        && realm
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
}

/// Most RTP ports one box binds (two per call: RTP and RTCP).
pub const MAX_RTP_PORTS: u32 = 2048;

/// The validated `[sip]` section.
#[derive(Debug, Clone, PartialEq)]
pub struct SipConfig {
    /// SIP address (UDP; TCP too when `tcp`).
    pub listen: SocketAddr,
    /// Also listen on TCP.
    pub tcp: bool,
    /// Address written into Via, Contact and SDP; `None`: the listen
    /// address, or the interface's address when listening on any.
    pub advertise: Option<IpAddr>,
    /// RTP port range, inclusive; starts even, even length (RTP + RTCP pairs).
    pub rtp_ports: (u16, u16),
    /// Digest realm (default: the device id).
    pub realm: String,
    /// Sources allowed to talk to us; `None`: the listening interface's subnets.
    pub allow: Option<Vec<IpNet>>,
    /// Failed authentications a source may make before it is banned.
    pub auth_failures: u32,
    /// How long a ban lasts.
    pub ban: Duration,
    /// Shortest registration accepted (423 Interval Too Brief below it).
    pub min_expires: Duration,
    /// Longest registration granted.
    pub max_expires: Duration,
    /// The sealed phone credential file.
    pub phones: PathBuf,
    /// Codecs in order of preference.
    pub codecs: Vec<PhoneCodec>,
    /// Packet time the box offers when it calls a phone; a phone's own
    /// `a=ptime` (10-60 ms) is what its call then uses, both ways.
    pub ptime: Duration,
    /// Opus encoder complexity (0-10) for transcoded phone legs.
    pub opus_complexity: u8,
    /// Digest algorithms challenged and accepted, most preferred first.
    pub digest: Vec<super::auth::Algorithm>,
    /// SIP packets one source may send per second (flood protection).
    pub packets_per_source: u32,
    /// Most live SIP transactions (a full table answers 503).
    pub max_transactions: usize,
    /// How long a digest nonce stays fresh.
    pub nonce_ttl: Duration,
    /// IPv6 sources sharing this prefix share one failure budget and ban
    /// (128: each address on its own).
    pub ipv6_prefix: u8,
    /// Most calls in progress for one extension (both directions).
    pub calls_per_extension: usize,
}
