//! Field diagnostics: the probes that say whether this box can work, and
//! the two commands built on them, `voxgate check` and `voxgate status`.
//!
//! - [`probes`]: one function per question (is the clock synchronized,
//!   does the relay's name resolve, does the relay answer on UDP, does it
//!   prove it holds the fleet CA, what is the round trip, does the TPM
//!   answer, does an audio device open, is there room in the state
//!   directory). Each returns a [`Finding`]: a stable id, a [`Status`], a
//!   one-line message and, when it is not Ok, the fix. `voxgate setup`
//!   reuses them for its hardware step.
//! - [`daemon`]: the running `voxgate run` as seen from outside: its pid
//!   (systemd's `MainPID`, or the process whose command line runs this
//!   config), its sandbox from `/proc/<pid>/status`, the sockets it holds,
//!   its metrics endpoint.
//! - [`check`]: `voxgate check`, every probe against one config, in the
//!   order of [`check::IDS`]; [`render`] prints them (✓ ‼ × or ASCII, or
//!   JSON) and maps the worst to the exit code.
//! - [`status`]: `voxgate status`, the running daemon on one screen.
//!
//! Nothing here prints a secret: findings name files, addresses and
//! states, never key material or tokens.

pub mod check;
pub mod daemon;
pub mod probes;
pub mod render;
mod sip;
pub mod status;

use serde::Serialize;

/// The verdict of one check. Ordered: a worse status compares greater.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Not run, because something it needs failed first (that failure is
    /// reported under its own id). Does not count towards the exit code.
    Skip,
    /// Works.
    Ok,
    /// Works, but needs attention soon (a certificate near its expiry, a
    /// slow relay, little free space).
    Warn,
    /// Does not work: the box cannot do its job until it is fixed.
    Fail,
}

impl Status {
    /// The lower-case name used in JSON (`ok`, `warn`, `fail`, `skip`).
    pub fn name(self) -> &'static str {
        match self {
            Status::Skip => "skip",
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "fail",
        }
    }

    /// The process exit code for this as the worst result: 0 ok (or
    /// nothing run), 1 warn, 2 fail.
    pub fn exit_code(self) -> u8 {
        match self {
            Status::Skip | Status::Ok => 0,
            Status::Warn => 1,
            Status::Fail => 2,
        }
    }
}

/// The outcome of one probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Stable id (`clock`, `relay.quic`, ...: [`check::IDS`]).
    pub id: &'static str,
    /// Verdict.
    pub status: Status,
    /// What was found, in one line.
    pub message: String,
    /// What to do about it; `None` when there is nothing to do.
    pub hint: Option<String>,
}

impl Finding {
    /// A check that passed.
    pub fn ok(id: &'static str, message: impl Into<String>) -> Finding {
        Finding {
            id,
            status: Status::Ok,
            message: message.into(),
            hint: None,
        }
    }

    /// A warning, with what to do about it.
    pub fn warn(id: &'static str, message: impl Into<String>, hint: impl Into<String>) -> Finding {
        Finding {
            id,
            status: Status::Warn,
            message: message.into(),
            hint: Some(hint.into()),
        }
    }

    /// A failure, with the fix.
    pub fn fail(id: &'static str, message: impl Into<String>, hint: impl Into<String>) -> Finding {
        Finding {
            id,
            status: Status::Fail,
            message: message.into(),
            hint: Some(hint.into()),
        }
    }

    /// Not run because `because` (another check's id) failed.
    pub fn skip(id: &'static str, because: &str) -> Finding {
        Finding {
            id,
            status: Status::Skip,
            message: format!("not checked: `{because}` failed"),
            hint: None,
        }
    }
}

/// The worst status of `findings` (`Ok` when empty or all skipped).
pub fn worst(findings: &[Finding]) -> Status {
    findings
        .iter()
        .map(|f| f.status)
        .max()
        .unwrap_or(Status::Ok)
        .max(Status::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worst_status_sets_the_exit_code() {
        let ok = Finding::ok("a", "fine");
        let warn = Finding::warn("b", "soon", "do it");
        let fail = Finding::fail("c", "broken", "fix it");
        let skip = Finding::skip("d", "c");
        assert_eq!(worst(&[]), Status::Ok);
        assert_eq!(worst(std::slice::from_ref(&skip)), Status::Ok);
        assert_eq!(worst(&[ok.clone(), skip.clone()]).exit_code(), 0);
        assert_eq!(worst(&[ok.clone(), warn.clone()]).exit_code(), 1);
        assert_eq!(worst(&[warn, fail, ok, skip]).exit_code(), 2);
    }
}
