//! The relay's `[calls]` section: fallback routing of calls a callee does
//! not take.
//!
//! ```toml
//! [calls]
//! fallback = "2001"              # ring this extension instead, or
//! fallback_message = "away.ogg"  # play this (Ogg Opus or WAV), then hang up
//! no_answer_seconds = 20         # how long a callee rings first
//! ```

use super::{ConfigError, resolve};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawCalls {
    fallback: Option<String>,
    fallback_message: Option<PathBuf>,
    fallback_agent: Option<String>,
    no_answer_seconds: u64,
}

impl Default for RawCalls {
    fn default() -> Self {
        RawCalls {
            fallback: None,
            fallback_message: None,
            fallback_agent: None,
            no_answer_seconds: 20,
        }
    }
}

/// What replaces a callee that does not take a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FallbackTarget {
    /// Ring this extension.
    Extension(String),
    /// Play this recorded message (Ogg Opus or WAV), then hang up.
    Message(PathBuf),
}

/// `[calls]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallsSettings {
    /// The fallback, if any.
    pub fallback: Option<FallbackTarget>,
    /// How long a callee rings before the fallback takes over.
    pub no_answer: Duration,
}

impl Default for CallsSettings {
    fn default() -> Self {
        CallsSettings {
            fallback: None,
            no_answer: Duration::from_secs(20),
        }
    }
}

pub(super) fn validate(
    file: &Path,
    base: &Path,
    r: RawCalls,
) -> Result<CallsSettings, ConfigError> {
    if r.fallback_agent.is_some() {
        return Err(ConfigError::invalid(
            file,
            "calls.fallback_agent",
            "agent endpoints are not available yet: use `fallback` (an extension) or `fallback_message` (a file)",
        ));
    }
    if !(1..=600).contains(&r.no_answer_seconds) {
        return Err(ConfigError::invalid(
            file,
            "calls.no_answer_seconds",
            format!("{} is outside 1 ..= 600 seconds", r.no_answer_seconds),
        ));
    }
    let fallback = match (r.fallback, r.fallback_message) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::invalid(
                file,
                "calls.fallback",
                "set `fallback` (an extension) or `fallback_message` (a file), not both",
            ));
        }
        (Some(ext), None) => {
            if !crate::proto::signal::valid_extension(&ext) {
                return Err(ConfigError::invalid(
                    file,
                    "calls.fallback",
                    format!(
                        "`{}` is not an extension (2-8 digits, not starting with 9)",
                        ext.escape_debug()
                    ),
                ));
            }
            Some(FallbackTarget::Extension(ext))
        }
        (None, Some(path)) => {
            let path = resolve(base, &path);
            if !path.is_file() {
                return Err(ConfigError::invalid(
                    file,
                    "calls.fallback_message",
                    format!(
                        "{} does not exist or is not a file (an .ogg Opus or .wav file)",
                        path.display()
                    ),
                ));
            }
            Some(FallbackTarget::Message(path))
        }
        (None, None) => None,
    };
    Ok(CallsSettings {
        fallback,
        no_answer: Duration::from_secs(r.no_answer_seconds),
    })
}

#[cfg(test)]
mod tests {
    use super::super::RelayConfig;
    use super::*;

    fn parse(calls: &str) -> Result<RelayConfig, ConfigError> {
        let dir = std::env::temp_dir();
        RelayConfig::parse(
            &dir.join("relay.toml"),
            &format!(
                "listen = \"127.0.0.1:4433\"\nstate_dir = \"s\"\nrecordings = \"r\"\n[calls]\n{calls}"
            ),
        )
    }

    #[test]
    fn calls_fallback_is_an_extension_or_a_message_file() {
        let c = parse("").unwrap();
        assert_eq!(c.calls, CallsSettings::default());
        let c = parse("fallback = \"2001\"\nno_answer_seconds = 3").unwrap();
        assert_eq!(
            c.calls.fallback,
            Some(FallbackTarget::Extension("2001".into()))
        );
        assert_eq!(c.calls.no_answer, Duration::from_secs(3));
        let msg = std::env::temp_dir().join(format!("vg-away-{}.wav", std::process::id()));
        std::fs::write(&msg, b"x").unwrap();
        let c = parse(&format!("fallback_message = \"{}\"", msg.display())).unwrap();
        assert_eq!(c.calls.fallback, Some(FallbackTarget::Message(msg.clone())));
        let _ = std::fs::remove_file(&msg);
        for (bad, key) in [
            ("fallback = \"900\"", "calls.fallback"),
            ("fallback = \"20 1\"", "calls.fallback"),
            (
                "fallback = \"2001\"\nfallback_message = \"x.wav\"",
                "calls.fallback",
            ),
            (
                "fallback_message = \"/nonexistent/away.ogg\"",
                "calls.fallback_message",
            ),
            ("fallback_agent = \"wss://agent\"", "calls.fallback_agent"),
            ("no_answer_seconds = 0", "calls.no_answer_seconds"),
        ] {
            match parse(bad) {
                Err(ConfigError::Invalid {
                    key: k, message, ..
                }) => {
                    assert_eq!(k, key, "{bad}: {message}")
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
    }
}
