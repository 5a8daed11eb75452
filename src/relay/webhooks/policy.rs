//! What a delivery may do, sans-IO: which URLs are endpoints, which
//! addresses may be connected, when to try again, and what an answer
//! means.
//!
//! The address check ([`Guard::check`]) is applied by the client to every
//! address it resolved, just before it connects to that same address, so a
//! name that resolves to a public address when added and to a private one
//! later (DNS rebinding) is refused at the connection.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

/// Longest endpoint URL.
pub const MAX_URL: usize = 2048;

/// An endpoint URL, parsed: HTTPS only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The host as written (a DNS name, lower case, or an IP literal
    /// without brackets).
    pub host: String,
    /// The port (443 unless given).
    pub port: u16,
    /// The path and query, from `/`.
    pub path: String,
}

/// Why a URL is not an endpoint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// Longer than [`MAX_URL`].
    #[error("the URL is longer than {MAX_URL} bytes")]
    TooLong,
    /// Not `https://`.
    #[error("webhook endpoints must be https:// URLs")]
    NotHttps,
    /// A user name or password in the URL.
    #[error(
        "the URL carries credentials (user@); put them nowhere: the signature authenticates the relay"
    )]
    Credentials,
    /// A fragment, spaces or control characters.
    #[error("the URL has a fragment, spaces or control characters")]
    BadCharacters,
    /// No host, or not a valid one.
    #[error("the URL's host is missing or not a DNS name or IP address")]
    BadHost,
    /// The port is not a number from 1 to 65535.
    #[error("the URL's port is not a number from 1 to 65535")]
    BadPort,
}

impl Target {
    /// Parse an endpoint URL (`https://host[:port][/path][?query]`).
    pub fn parse(url: &str) -> Result<Target, UrlError> {
        if url.len() > MAX_URL {
            return Err(UrlError::TooLong);
        }
        if url
            .bytes()
            .any(|b| b <= b' ' || b == 0x7f || b == b'#' || b == b'\\')
        {
            return Err(UrlError::BadCharacters);
        }
        let rest = match url.get(..8) {
            Some(s) if s.eq_ignore_ascii_case("https://") => &url[8..],
            _ => return Err(UrlError::NotHttps),
        };
        let cut = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(cut);
        if authority.contains('@') {
            return Err(UrlError::Credentials);
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let end = v6.find(']').ok_or(UrlError::BadHost)?;
            let ip: Ipv6Addr = v6[..end].parse().map_err(|_| UrlError::BadHost)?;
            (ip.to_string(), &v6[end + 1..])
        } else {
            match authority.find(':') {
                Some(i) => (authority[..i].to_ascii_lowercase(), &authority[i..]),
                None => (authority.to_ascii_lowercase(), ""),
            }
        };
        let port = match port {
            "" => 443,
            p => {
                let digits = p.strip_prefix(':').ok_or(UrlError::BadHost)?;
                match digits.parse::<u16>() {
                    Ok(n) if n > 0 && digits.len() <= 5 => n,
                    _ => return Err(UrlError::BadPort),
                }
            }
        };
        if host.parse::<IpAddr>().is_err() && !valid_dns_name(&host) {
            return Err(UrlError::BadHost);
        }
        let path = match path {
            "" => "/".to_string(),
            p if p.starts_with('?') => format!("/{p}"),
            p => p.to_string(),
        };
        Ok(Target { host, port, path })
    }

    /// The host as an IP address, when it is one.
    pub fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }

    /// The `Host` header's value.
    pub fn authority(&self) -> String {
        let host = match self.ip() {
            Some(IpAddr::V6(v6)) => format!("[{v6}]"),
            _ => self.host.clone(),
        };
        if self.port == 443 {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

fn valid_dns_name(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// The SSRF guard: public unicast addresses only, except for the hosts
/// the operator allows (`[webhooks] allow_hosts`).
#[derive(Debug, Clone, Default)]
pub struct Guard {
    allow_hosts: Vec<String>,
}

/// Why an address may not be connected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Not a public address, and the host is not allowed.
    #[error(
        "{addr} is not a public address (loopback, private, link-local or reserved); add the host to [webhooks] allow_hosts to allow it"
    )]
    NotPublic {
        /// The address.
        addr: IpAddr,
    },
    /// Never connectable (unspecified, multicast, broadcast).
    #[error("{addr} is not a unicast address")]
    NotUnicast {
        /// The address.
        addr: IpAddr,
    },
}

impl Guard {
    /// A guard allowing the hosts listed (names compared without case; IP
    /// literals as written in the endpoint's URL).
    pub fn new(allow_hosts: &[String]) -> Self {
        Guard {
            allow_hosts: allow_hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
        }
    }

    /// Whether `host` is on the allow-list.
    pub fn allows_host(&self, host: &str) -> bool {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        self.allow_hosts
            .iter()
            .any(|h| h.trim_start_matches('[').trim_end_matches(']') == host)
    }

    /// May the client connect to `addr`, resolved from `host`?
    pub fn check(&self, host: &str, addr: IpAddr) -> Result<(), Refused> {
        let addr = canonical(addr);
        if addr.is_unspecified() || addr.is_multicast() || addr == IpAddr::V4(Ipv4Addr::BROADCAST) {
            return Err(Refused::NotUnicast { addr });
        }
        if is_public(addr) || self.allows_host(host) {
            Ok(())
        } else {
            Err(Refused::NotPublic { addr })
        }
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(addr),
        v4 => v4,
    }
}

/// A globally routable unicast address.
pub fn is_public(addr: IpAddr) -> bool {
    match canonical(addr) {
        IpAddr::V4(v4) => public_v4(v4),
        IpAddr::V6(v6) => public_v6(v6),
    }
}

fn public_v4(a: Ipv4Addr) -> bool {
    let [o0, o1, o2, _] = a.octets();
    !(o0 == 0
        || o0 == 10
        || o0 == 127
        || (o0 == 100 && (64..128).contains(&o1))
        || (o0 == 169 && o1 == 254)
        || (o0 == 172 && (16..32).contains(&o1))
        || (o0 == 192 && o1 == 0 && o2 == 0)
        || (o0 == 192 && o1 == 0 && o2 == 2)
        || (o0 == 192 && o1 == 88 && o2 == 99)
        || (o0 == 192 && o1 == 168)
        || (o0 == 198 && (18..20).contains(&o1))
        || (o0 == 198 && o1 == 51 && o2 == 100)
        || (o0 == 203 && o1 == 0 && o2 == 113)
        || o0 >= 224)
}

fn public_v6(a: Ipv6Addr) -> bool {
    let s = a.segments();
    // Global unicast is 2000::/3; inside it, the ranges that embed or
    // reach IPv4 or are reserved.
    if s[0] & 0xe000 != 0x2000 {
        return false;
    }
    let embeds_v4 = s[0] == 0x2002 || (s[0] == 0x2001 && s[1] == 0);
    let documentation = s[0] == 0x2001 && s[1] == 0x0db8;
    let reserved = s[0] == 0x2001 && s[1] < 0x0200;
    !(embeds_v4 || documentation || reserved || s[0] == 0x3fff)
}

/// Retries and their spacing (`[webhooks]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// Attempts after the first.
    pub retries: u32,
    /// The wait before the first retry; each later one waits four times
    /// longer, up to [`MAX_BACKOFF`].
    pub backoff: Duration,
}

/// The longest wait between two attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(6 * 3600);

impl Retry {
    /// The wait after the `failed`-th failed attempt (from 1), with
    /// `jitter` in `0.0 ..= 1.0` taking it down to half at most. `None`
    /// when no attempt is left.
    pub fn after(&self, failed: u32, jitter: f64) -> Option<Duration> {
        if failed == 0 || failed > self.retries {
            return None;
        }
        let factor = 4u32.saturating_pow(failed.saturating_sub(1).min(15));
        let full = self.backoff.saturating_mul(factor).min(MAX_BACKOFF);
        Some(full.mul_f64(1.0 - 0.5 * jitter.clamp(0.0, 1.0)))
    }
}

/// What an answer means for the delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Delivered.
    Delivered,
    /// The endpoint is gone: disable it.
    Gone,
    /// A failure that may pass: retry.
    Retry,
}

/// The verdict on an HTTP status. Redirects are never followed: a 3xx is
/// a failure like a 5xx.
pub fn verdict(status: u16) -> Verdict {
    match status {
        200..=299 => Verdict::Delivered,
        410 => Verdict::Gone,
        _ => Verdict::Retry,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_https_with_a_host() {
        let t = Target::parse("https://Hooks.Example.com/in?x=1").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("hooks.example.com", 443, "/in?x=1")
        );
        let t = Target::parse("https://[::1]:8443").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("::1", 8443, "/")
        );
        assert_eq!(t.authority(), "[::1]:8443");
        assert_eq!(
            Target::parse("https://127.0.0.1:9/a").unwrap().authority(),
            "127.0.0.1:9"
        );
        for (bad, why) in [
            ("http://example.com/", UrlError::NotHttps),
            ("https://u:p@example.com/", UrlError::Credentials),
            ("https://example.com/#f", UrlError::BadCharacters),
            ("https://exa mple.com/", UrlError::BadCharacters),
            ("https://", UrlError::BadHost),
            ("https://example.com:0/", UrlError::BadPort),
            ("https://example.com:99999/", UrlError::BadPort),
            ("https://[::1/", UrlError::BadHost),
            ("https://-x.com/", UrlError::BadHost),
            ("ftp://x", UrlError::NotHttps),
            ("", UrlError::NotHttps),
        ] {
            assert_eq!(Target::parse(bad).unwrap_err(), why, "{bad}");
        }
    }

    #[test]
    fn only_public_unicast_addresses_pass_unless_allowed() {
        let g = Guard::new(&["localhost".into()]);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        for public in ["93.184.216.34", "1.1.1.1", "2606:4700::1111"] {
            assert!(g.check("example.com", ip(public)).is_ok(), "{public}");
        }
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "::1",
            "fe80::1",
            "fc00::1",
            "::ffff:127.0.0.1",
            "64:ff9b::7f00:1",
            "2002:7f00:1::1",
            "2001:db8::1",
            "198.18.0.1",
        ] {
            assert!(
                matches!(
                    g.check("example.com", ip(private)),
                    Err(Refused::NotPublic { .. })
                ),
                "{private}"
            );
        }
        assert!(g.check("localhost", ip("127.0.0.1")).is_ok());
        assert!(
            g.check("LOCALHOST".to_ascii_lowercase().as_str(), ip("::1"))
                .is_ok()
        );
        for never in ["0.0.0.0", "224.0.0.1", "255.255.255.255", "::"] {
            assert!(
                matches!(
                    g.check("localhost", ip(never)),
                    Err(Refused::NotUnicast { .. })
                ),
                "{never}"
            );
        }
    }

    #[test]
    fn backoff_grows_with_jitter_and_stops() {
        let r = Retry {
            retries: 3,
            backoff: Duration::from_secs(5),
        };
        assert_eq!(r.after(1, 0.0), Some(Duration::from_secs(5)));
        assert_eq!(r.after(2, 0.0), Some(Duration::from_secs(20)));
        assert_eq!(r.after(3, 1.0), Some(Duration::from_secs(40)));
        assert_eq!(r.after(4, 0.0), None);
        assert_eq!(r.after(0, 0.0), None);
        let long = Retry {
            retries: 40,
            backoff: Duration::from_secs(60),
        };
        assert_eq!(long.after(40, 0.0), Some(MAX_BACKOFF));
        assert_eq!(verdict(204), Verdict::Delivered);
        assert_eq!(verdict(410), Verdict::Gone);
        assert_eq!(verdict(301), Verdict::Retry);
        assert_eq!(verdict(503), Verdict::Retry);
    }
}
