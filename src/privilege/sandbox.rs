//! Landlock: after the drop, the filesystem shrinks to what the daemon needs.
//!
//! Read-only: system libraries and configuration (`/usr`, `/etc`, `/lib*`),
//! `/proc` and `/sys` (ALSA reads card information there). Read-write: the
//! state directory, `/dev/snd` and the TPM device nodes, `/dev/null`, and the
//! extra paths the config lists. Everything else, including the rest of
//! `/var` and `/home`, cannot be opened, even where file permissions allow.

use landlock::{
    ABI, Access, AccessFs, Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetStatus,
    path_beneath_rules,
};
use std::path::{Path, PathBuf};

/// The paths a daemon may use.
#[derive(Debug, Clone, Default)]
pub struct FsPolicy {
    /// Read-only trees.
    pub read: Vec<PathBuf>,
    /// Read-write trees.
    pub write: Vec<PathBuf>,
}

impl FsPolicy {
    /// The base policy plus the daemon's own state and any extras.
    pub fn new(state: &[&Path], extra_read: &[PathBuf], extra_write: &[PathBuf]) -> Self {
        let mut read: Vec<PathBuf> = ["/usr", "/etc", "/lib", "/lib64", "/bin", "/proc", "/sys"]
            .iter()
            .map(PathBuf::from)
            .collect();
        read.extend(extra_read.iter().cloned());
        // /dev/full and /dev/zero back ALSA's null plugin.
        let mut write: Vec<PathBuf> = [
            "/dev/snd",
            "/dev/tpmrm0",
            "/dev/tpm0",
            "/dev/null",
            "/dev/zero",
            "/dev/full",
            "/dev/urandom",
        ]
        .iter()
        .map(PathBuf::from)
        .collect();
        write.extend(state.iter().map(|p| p.to_path_buf()));
        write.extend(extra_write.iter().cloned());
        // Only existing paths can be added to a ruleset.
        read.retain(|p| p.exists());
        write.retain(|p| p.exists());
        FsPolicy { read, write }
    }

    /// A directory outside every rule that this process can read now, to
    /// prove the sandbox with.
    pub fn outside(&self) -> Option<PathBuf> {
        let inside = |c: &Path| {
            self.read
                .iter()
                .chain(&self.write)
                .any(|p| c.starts_with(p) || p.starts_with(c))
        };
        [
            "/root", "/home", "/var/log", "/var/lib", "/boot", "/srv", "/opt", "/mnt",
        ]
        .iter()
        .map(PathBuf::from)
        .find(|c| c.is_dir() && !inside(c))
    }
}

/// Whether `path` can be opened for reading (a directory listing for dirs).
pub fn can_read(path: &Path) -> bool {
    std::fs::read_dir(path).is_ok() || std::fs::File::open(path).is_ok()
}

/// What the kernel enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enforced {
    /// Every requested restriction is in force.
    Fully,
    /// The kernel's Landlock ABI lacks some rights; the rest are enforced.
    Partially,
    /// Landlock is unavailable on this kernel.
    Not,
}

/// Restrict this thread (and the threads it creates later) to `policy`.
pub fn apply(policy: &FsPolicy) -> Result<Enforced, landlock::RulesetError> {
    let abi = ABI::V5;
    let all = AccessFs::from_all(abi);
    let read = AccessFs::from_read(abi);
    let status = Ruleset::default()
        .handle_access(all)?
        .create()?
        .add_rules(path_beneath_rules(&policy.read, read))?
        .add_rules(path_beneath_rules(&policy.write, all))?
        .restrict_self()?;
    Ok(match status.ruleset {
        RulesetStatus::FullyEnforced => Enforced::Fully,
        RulesetStatus::PartiallyEnforced => Enforced::Partially,
        RulesetStatus::NotEnforced => Enforced::Not,
    })
}
