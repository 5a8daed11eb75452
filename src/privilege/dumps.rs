//! No core dumps, from the start of every subcommand: the process reads
//! private keys, sealed stores and phone passwords, and a core file would
//! carry them to disk. [`forbid`] runs first in `cli::main`, before any
//! secret is read, for every command (`run`, `setup`, `phones`, `relay *`).
//!
//! Two guards, each enough on its own: `RLIMIT_CORE` 0 (soft and hard, so
//! no later code or child raises it), and the non-dumpable flag, which also
//! refuses ptrace by the same user and makes `/proc/PID` files root's.
//! Under the systemd units `@resources` is denied: glibc and musl set the
//! limit with `prlimit64`, which `@default` allows, but the older
//! `setrlimit` call is refused, so setting the limit may fail there; the
//! units' `LimitCORE=0` holds instead, and that failure is not an error. Becoming non-dumpable is allowed everywhere,
//! and its failure stops the command.

use nix::sys::resource::{Resource, getrlimit, setrlimit};
use thiserror::Error;

/// The process could not be made non-dumpable.
#[derive(Debug, Error)]
#[error(
    "cannot make the process non-dumpable (prctl PR_SET_DUMPABLE): {0}; a core dump could expose keys, so voxgate stops"
)]
pub struct DumpError(#[source] pub std::io::Error);

/// What [`forbid`] achieved for the core size limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CoreLimit {
    /// `RLIMIT_CORE` is now 0 (soft and hard).
    Zero,
    /// Setting it was refused (e.g. a unit's seccomp filter) but the limit
    /// in force is already 0 (`LimitCORE=0`).
    AlreadyZero,
    /// Setting it was refused and the soft limit is not 0: only the
    /// non-dumpable flag prevents core dumps.
    Refused,
}

/// Set `RLIMIT_CORE` to 0 and make the process non-dumpable.
pub fn forbid() -> Result<CoreLimit, DumpError> {
    let limit = match setrlimit(Resource::RLIMIT_CORE, 0, 0) {
        Ok(()) => CoreLimit::Zero,
        Err(_) => match getrlimit(Resource::RLIMIT_CORE) {
            Ok((0, _)) => CoreLimit::AlreadyZero,
            _ => CoreLimit::Refused,
        },
    };
    nix::sys::prctl::set_dumpable(false).map_err(|e| DumpError(e.into()))?;
    Ok(limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_forbid_no_core_and_not_dumpable() {
        // The test process itself: harmless, it only loses core dumps.
        assert_eq!(forbid().unwrap(), CoreLimit::Zero);
        assert_eq!(getrlimit(Resource::RLIMIT_CORE).unwrap(), (0, 0));
        assert!(!nix::sys::prctl::get_dumpable().unwrap());
        // Raising it again is refused to an unprivileged process; root
        // could, so only the soft limit within the hard one is checked.
        assert!(setrlimit(Resource::RLIMIT_CORE, 1, 0).is_err());
    }
}
