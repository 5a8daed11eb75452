//! `[api]`: the relay's operator HTTP API (off unless the section is
//! there). Its own listen address, the operator's certificate and key (or,
//! for labs, the relay's own certificate from the fleet CA), the browser
//! origins allowed by CORS (an exact list: `*` is refused here), the
//! proxies whose `X-Forwarded-For` is believed, and the rate limits
//! (`[[api.limit]]`: a route class, per client address or per key, a count
//! in a window).

use super::{ConfigError, resolve};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The `[api]` section as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawApi {
    listen: SocketAddr,
    #[serde(default)]
    cert: Option<PathBuf>,
    #[serde(default)]
    key: Option<PathBuf>,
    #[serde(default)]
    cors_origins: Vec<String>,
    #[serde(default)]
    trusted_proxies: Vec<String>,
    #[serde(default = "default_body")]
    max_body_bytes: usize,
    #[serde(default = "default_auth_failures")]
    auth_failures_per_minute: u32,
    #[serde(default)]
    limit: Vec<RawLimit>,
}

fn default_body() -> usize {
    64 << 10
}

fn default_auth_failures() -> u32 {
    20
}

/// One `[[api.limit]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimit {
    route: String,
    per: LimitPer,
    count: u32,
    window: String,
}

/// Whom a limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LimitPer {
    /// The client's address (the socket's, or the one a trusted proxy
    /// names).
    Address,
    /// The API key.
    Key,
}

impl LimitPer {
    /// `address` or `key`.
    pub fn as_str(self) -> &'static str {
        match self {
            LimitPer::Address => "address",
            LimitPer::Key => "key",
        }
    }
}

/// A rate limit: at most `count` requests of the route class `route` per
/// `per` within `window`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitRule {
    /// A route class (`devices.list`, `calls.create`: resource and action),
    /// a resource (`calls`: every action on it) or `*` (every route).
    pub route: String,
    /// Per client address or per key.
    pub per: LimitPer,
    /// Requests allowed in one window.
    pub count: u32,
    /// The window, counted from the first request in it.
    pub window: Duration,
}

impl LimitRule {
    /// Whether the rule counts requests of route class `class`.
    pub fn applies_to(&self, class: &str) -> bool {
        self.route == "*"
            || self.route == class
            || class
                .split_once('.')
                .is_some_and(|(resource, _)| resource == self.route)
    }

    /// The rule's stable name (its key in the persisted state).
    pub fn name(&self) -> String {
        format!(
            "{}/{}/{}/{}",
            self.route,
            self.per.as_str(),
            self.count,
            self.window.as_secs()
        )
    }
}

/// Where the API's certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiCert {
    /// The relay's own certificate (the fleet CA's): for labs and tests.
    Relay,
    /// The operator's chain (PEM) and key: a PEM file (mode 0600) or a
    /// file sealed to the machine (`*.sealed`, as the relay's keys are).
    Files {
        /// The chain, leaf first.
        cert: PathBuf,
        /// The key.
        key: PathBuf,
    },
}

/// The validated `[api]` section.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    /// TCP address of the HTTPS listener.
    pub listen: SocketAddr,
    /// Its certificate.
    pub cert: ApiCert,
    /// Browser origins allowed to call the API (exact `scheme://host[:port]`).
    pub cors_origins: Vec<String>,
    /// Proxies whose `X-Forwarded-For` names the client.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// The largest request body accepted.
    pub max_body_bytes: usize,
    /// Failed authentications one address may make per minute.
    pub auth_failures_per_minute: u32,
    /// Rate limits.
    pub limits: Vec<LimitRule>,
}

/// Parse a window: whole seconds, or a number with `s`, `m`, `h` or `d`.
pub fn parse_window(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (num, unit) = match s.char_indices().last()? {
        (i, c) if c.is_ascii_alphabetic() => (&s[..i], c),
        _ => (s, 's'),
    };
    if num.is_empty() || num.len() > 9 || !num.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = num.parse().ok()?;
    let secs = match unit {
        's' => n,
        'm' => n * 60,
        'h' => n * 3_600,
        'd' => n * 86_400,
        _ => return None,
    };
    (1..=366 * 86_400)
        .contains(&secs)
        .then(|| Duration::from_secs(secs))
}

/// Whether `o` is one exact origin: `http(s)://host[:port]`, no path.
fn valid_origin(o: &str) -> bool {
    let Some(rest) = o
        .strip_prefix("https://")
        .or_else(|| o.strip_prefix("http://"))
    else {
        return false;
    };
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || rest.starts_with('[') => (h, Some(p)),
        _ => (rest, None),
    };
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.[]:".contains(&b));
    let port_ok = port.is_none_or(|p| !p.is_empty() && p.parse::<u16>().is_ok());
    host_ok && port_ok && o == o.to_ascii_lowercase()
}

/// Validate `[api]`.
pub(super) fn validate(file: &Path, base: &Path, raw: RawApi) -> Result<ApiSettings, ConfigError> {
    let cert = match (raw.cert, raw.key) {
        (None, None) => ApiCert::Relay,
        (Some(c), Some(k)) => ApiCert::Files {
            cert: resolve(base, &c),
            key: resolve(base, &k),
        },
        _ => {
            return Err(ConfigError::invalid(
                file,
                "api.cert",
                "set both cert and key (the operator's certificate), or neither (the relay's own certificate from the fleet CA, for labs)",
            ));
        }
    };
    for o in &raw.cors_origins {
        if o.trim() == "*" {
            return Err(ConfigError::invalid(
                file,
                "api.cors_origins",
                "`*` would let any web page call the API: list each allowed origin exactly (\"https://app.example.com\")",
            ));
        }
        if !valid_origin(o) {
            return Err(ConfigError::invalid(
                file,
                "api.cors_origins",
                format!(
                    "`{o}` is not an origin: give scheme, host and optional port, lowercase, no path (\"https://app.example.com:8443\")"
                ),
            ));
        }
    }
    let mut trusted_proxies = Vec::new();
    for p in &raw.trusted_proxies {
        let net = p
            .parse::<ipnet::IpNet>()
            .or_else(|_| p.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
            .map_err(|_| {
                ConfigError::invalid(
                    file,
                    "api.trusted_proxies",
                    format!("`{p}` is not an address or CIDR network (10.0.0.5, 10.0.0.0/8)"),
                )
            })?;
        trusted_proxies.push(net.trunc());
    }
    if !(1024..=16 << 20).contains(&raw.max_body_bytes) {
        return Err(ConfigError::invalid(
            file,
            "api.max_body_bytes",
            format!("{} is outside 1024 ..= 16 MiB", raw.max_body_bytes),
        ));
    }
    if raw.auth_failures_per_minute == 0 {
        return Err(ConfigError::invalid(
            file,
            "api.auth_failures_per_minute",
            "must be at least 1",
        ));
    }
    let mut limits = Vec::new();
    for (i, l) in raw.limit.into_iter().enumerate() {
        let key = |k: &str| format!("api.limit[{i}].{k}");
        let route_ok = l.route == "*"
            || (!l.route.is_empty()
                && l.route.len() <= 64
                && l.route
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'.' || b == b'-' || b == b'_'));
        if !route_ok {
            return Err(ConfigError::invalid(
                file,
                &key("route"),
                format!(
                    "`{}` is not a route class: `*`, a resource (`calls`) or resource.action (`calls.create`)",
                    l.route
                ),
            ));
        }
        if l.count == 0 {
            return Err(ConfigError::invalid(
                file,
                &key("count"),
                "must be at least 1",
            ));
        }
        let window = parse_window(&l.window).ok_or_else(|| {
            ConfigError::invalid(
                file,
                &key("window"),
                format!(
                    "`{}` is not a window: seconds, or a number with s, m, h or d (\"1d\"), at most 366 days",
                    l.window
                ),
            )
        })?;
        limits.push(LimitRule {
            route: l.route,
            per: l.per,
            count: l.count,
            window,
        });
    }
    Ok(ApiSettings {
        listen: raw.listen,
        cert,
        cors_origins: raw.cors_origins,
        trusted_proxies,
        max_body_bytes: raw.max_body_bytes,
        auth_failures_per_minute: raw.auth_failures_per_minute,
        limits,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RelayConfig;

    fn parse(api: &str) -> Result<RelayConfig, ConfigError> {
        RelayConfig::parse(
            Path::new("/etc/voxgate/relay.toml"),
            &format!("listen = \"127.0.0.1:4433\"\nstate_dir = \"s\"\nrecordings = \"r\"\n{api}"),
        )
    }

    #[test]
    fn api_is_off_unless_configured() {
        assert!(parse("").unwrap().api.is_none());
        let c = parse("[api]\nlisten = \"127.0.0.1:8443\"").unwrap();
        let a = c.api.unwrap();
        assert_eq!(a.cert, ApiCert::Relay);
        assert!(a.cors_origins.is_empty() && a.limits.is_empty());
    }

    #[test]
    fn the_seeds_three_calls_per_address_per_day_is_expressible() {
        let c = parse(
            "[api]\nlisten = \"127.0.0.1:8443\"\ncert = \"api.pem\"\nkey = \"api.key.sealed\"\n\
             cors_origins = [\"https://app.example.com\", \"http://127.0.0.1:8080\"]\n\
             trusted_proxies = [\"10.0.0.0/8\", \"192.0.2.7\"]\n\
             [[api.limit]]\nroute = \"calls.create\"\nper = \"address\"\ncount = 3\nwindow = \"1d\"\n",
        )
        .unwrap();
        let a = c.api.unwrap();
        assert_eq!(
            a.limits,
            vec![LimitRule {
                route: "calls.create".into(),
                per: LimitPer::Address,
                count: 3,
                window: Duration::from_secs(86_400)
            }]
        );
        assert!(a.limits[0].applies_to("calls.create") && !a.limits[0].applies_to("calls.list"));
        assert_eq!(
            a.cert,
            ApiCert::Files {
                cert: "/etc/voxgate/api.pem".into(),
                key: "/etc/voxgate/api.key.sealed".into()
            }
        );
        assert_eq!(a.trusted_proxies.len(), 2);
    }

    #[test]
    fn a_wildcard_origin_is_refused_with_the_reason() {
        let e = parse("[api]\nlisten = \"127.0.0.1:8443\"\ncors_origins = [\"*\"]")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("api.cors_origins") && e.contains("any web page"),
            "{e}"
        );
        for bad in [
            "cors_origins = [\"https://a.example/path\"]",
            "cors_origins = [\"a.example\"]",
            "cors_origins = [\"https://A.example\"]",
            "cert = \"x.pem\"",
            "trusted_proxies = [\"nope\"]",
            "max_body_bytes = 10",
            "[[api.limit]]\nroute = \"calls.create\"\nper = \"address\"\ncount = 3\nwindow = \"1y\"",
            "[[api.limit]]\nroute = \"calls.create\"\nper = \"ip\"\ncount = 3\nwindow = \"1d\"",
            "[[api.limit]]\nroute = \"Calls\"\nper = \"key\"\ncount = 3\nwindow = \"1d\"",
            "[[api.limit]]\nroute = \"*\"\nper = \"key\"\ncount = 0\nwindow = \"1d\"",
            "bogus = 1",
        ] {
            assert!(
                parse(&format!("[api]\nlisten = \"127.0.0.1:8443\"\n{bad}")).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn windows() {
        assert_eq!(parse_window("60"), Some(Duration::from_secs(60)));
        assert_eq!(parse_window("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_window("1h"), Some(Duration::from_secs(3600)));
        for bad in ["", "0", "d", "1y", "-1s", "400d", "99999999999"] {
            assert_eq!(parse_window(bad), None, "{bad}");
        }
    }
}
