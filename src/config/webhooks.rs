//! `[webhooks]`: how the relay delivers its signed webhooks.

use super::{ConfigError, resolve};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawWebhooks {
    retries: u32,
    timeout: String,
    backoff: String,
    concurrency: usize,
    allow_hosts: Vec<String>,
    ca_bundle: Option<PathBuf>,
    rotation_overlap: String,
}

impl Default for RawWebhooks {
    fn default() -> Self {
        RawWebhooks {
            retries: 3,
            timeout: "30s".into(),
            backoff: "5s".into(),
            concurrency: 16,
            allow_hosts: Vec::new(),
            ca_bundle: None,
            rotation_overlap: "24h".into(),
        }
    }
}

/// The relay's webhook delivery (`[webhooks]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookSettings {
    /// Attempts after the first (the seed's `WEBHOOK_RETRIES=3`).
    pub retries: u32,
    /// The longest one attempt may take, connection included (the seed's
    /// `WEBHOOK_TIMEOUT=30`).
    pub timeout: Duration,
    /// The wait before the first retry; each later one waits four times
    /// longer (with jitter).
    pub backoff: Duration,
    /// Deliveries in flight at once.
    pub concurrency: usize,
    /// Hosts whose addresses may be private or loopback (the SSRF guard
    /// refuses them otherwise).
    pub allow_hosts: Vec<String>,
    /// CA certificates (PEM) trusted for receivers besides the system's.
    pub ca_bundle: Option<PathBuf>,
    /// How long the old secret still signs after `rotate-secret`.
    pub rotation_overlap: Duration,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        WebhookSettings {
            retries: 3,
            timeout: Duration::from_secs(30),
            backoff: Duration::from_secs(5),
            concurrency: 16,
            allow_hosts: Vec::new(),
            ca_bundle: None,
            rotation_overlap: Duration::from_secs(86_400),
        }
    }
}

/// A duration written `500ms`, `30s`, `5m`, `24h` or `2d`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = text.split_at(split);
    let n: u64 = n.parse().ok()?;
    let ms = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    Some(Duration::from_millis(n.checked_mul(ms)?))
}

pub(super) fn validate(
    file: &Path,
    base: &Path,
    w: RawWebhooks,
) -> Result<WebhookSettings, ConfigError> {
    let duration = |key: &str, text: &str, min: Duration, max: Duration| match parse_duration(text)
    {
        Some(d) if d >= min && d <= max => Ok(d),
        Some(_) => Err(ConfigError::invalid(
            file,
            key,
            format!("`{text}` is outside {min:?} ..= {max:?}"),
        )),
        None => Err(ConfigError::invalid(
            file,
            key,
            format!("`{text}` is not a duration (`500ms`, `30s`, `5m`, `24h`, `2d`)"),
        )),
    };
    let ms = Duration::from_millis;
    let timeout = duration("webhooks.timeout", &w.timeout, ms(100), ms(300_000))?;
    let backoff = duration("webhooks.backoff", &w.backoff, ms(10), ms(86_400_000))?;
    let rotation_overlap = duration(
        "webhooks.rotation_overlap",
        &w.rotation_overlap,
        ms(0),
        ms(30 * 86_400_000),
    )?;
    if w.retries > 30 {
        return Err(ConfigError::invalid(file, "webhooks.retries", "at most 30"));
    }
    if !(1..=1024).contains(&w.concurrency) {
        return Err(ConfigError::invalid(
            file,
            "webhooks.concurrency",
            "1 ..= 1024",
        ));
    }
    for h in &w.allow_hosts {
        if h.is_empty() || h.contains(['/', ':', ' ']) && h.parse::<std::net::IpAddr>().is_err() {
            return Err(ConfigError::invalid(
                file,
                "webhooks.allow_hosts",
                format!("`{h}` is not a host name or IP address"),
            ));
        }
    }
    let ca_bundle = w.ca_bundle.map(|p| resolve(base, &p));
    if let Some(p) = &ca_bundle
        && !p.is_file()
    {
        return Err(ConfigError::invalid(
            file,
            "webhooks.ca_bundle",
            format!("{} does not exist or is not a file", p.display()),
        ));
    }
    Ok(WebhookSettings {
        retries: w.retries,
        timeout,
        backoff,
        concurrency: w.concurrency,
        allow_hosts: w.allow_hosts,
        ca_bundle,
        rotation_overlap,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_defaults() {
        assert_eq!(parse_duration("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("2d"), Some(Duration::from_secs(172_800)));
        for bad in ["", "s", "30", "3x", "-1s", "99999999999999999999s"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
        let d = validate(Path::new("/r.toml"), Path::new("/"), RawWebhooks::default()).unwrap();
        assert_eq!(d, WebhookSettings::default());
        let bad = RawWebhooks {
            timeout: "10m".into(),
            ..Default::default()
        };
        assert!(validate(Path::new("/r.toml"), Path::new("/"), bad).is_err());
    }
}
