//! Landlock: after the drop, the filesystem shrinks to what the daemon needs.
//!
//! Read-only: system libraries and configuration (`/usr`, `/etc`, `/lib*`),
//! `/proc` and `/sys` (ALSA reads card information there). Read-write: the
//! state directory, `/dev/snd` and the TPM device nodes, `/dev/null`, and the
//! extra paths the config lists. Everything else, including the rest of
//! `/var` and `/home`, cannot be opened, even where file permissions allow.
//!
//! `/etc` stays a tree rather than a list of files: Landlock binds a rule
//! to an inode, and the resolver's files (`/etc/resolv.conf`, `/etc/hosts`)
//! are replaced by rename when DHCP or an operator changes them, so a rule
//! on the file would leave a long-running relay unable to resolve its
//! webhook receivers. Where such a file is a symlink out of the read trees
//! (systemd-resolved's `/etc/resolv.conf` -> `/run/systemd/resolve/...`),
//! the directory it points into is added, for the same reason.

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
        let targets = resolver_dirs(&read, RESOLVER_FILES.iter().map(Path::new));
        read.extend(targets);
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

/// The files the resolver and the clock read on every look-up.
const RESOLVER_FILES: [&str; 4] = [
    "/etc/resolv.conf",
    "/etc/hosts",
    "/etc/nsswitch.conf",
    "/etc/localtime",
];

/// The directories that `files` resolve into when a symlink takes them out
/// of the `read` trees.
fn resolver_dirs<'a>(read: &[PathBuf], files: impl Iterator<Item = &'a Path>) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    for f in files {
        let Ok(real) = std::fs::canonicalize(f) else {
            continue;
        };
        let Some(dir) = real.parent() else { continue };
        if !read.iter().any(|r| real.starts_with(r)) && !dirs.iter().any(|d| d == dir) {
            dirs.push(dir.to_path_buf());
        }
    }
    dirs
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resolver_file_linked_out_of_the_read_trees_brings_its_directory() {
        let d = std::env::temp_dir().join(format!("vg-resolv-{}", std::process::id()));
        let etc = d.join("etc");
        let run = d.join("run/systemd/resolve");
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::create_dir_all(&run).unwrap();
        std::fs::write(run.join("stub-resolv.conf"), "nameserver 127.0.0.53\n").unwrap();
        std::os::unix::fs::symlink(run.join("stub-resolv.conf"), etc.join("resolv.conf")).unwrap();
        std::fs::write(etc.join("hosts"), "127.0.0.1 localhost\n").unwrap();
        let read = vec![etc.clone()];
        let files = [
            etc.join("resolv.conf"),
            etc.join("hosts"),
            etc.join("absent"),
        ];
        let dirs = resolver_dirs(&read, files.iter().map(|p| p.as_path()));
        // The symlink's directory, once; the plain file is already inside.
        assert_eq!(dirs, vec![std::fs::canonicalize(&run).unwrap()]);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
