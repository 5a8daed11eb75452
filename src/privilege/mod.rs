//! Bind, then drop: the daemons start as root only long enough to bind their
//! sockets and read their keys, then become an unprivileged user with no way
//! back, and sandbox themselves.
//!
//! Order (ARCHITECTURE.md, "Process start"), all before any thread exists, because
//! no_new_privs, Landlock and seccomp apply per thread:
//!
//! 0. [`dumps::forbid`], first thing in every command (`cli::main`): no
//!    core dump, non-dumpable; [`Plan::check_state_dirs`] refuses state
//!    directories owned by anyone but root or the service user;
//! 1. the caller binds every socket and loads its keys;
//! 2. [`apply`]: while still root, empty the ambient and bounding capability
//!    sets; set the supplementary groups, then `setresgid` and `setresuid`
//!    to the configured user (read from `/etc/passwd` and `/etc/group`);
//! 3. check that `setuid(0)` now fails;
//! 4. set no_new_privs and clear the effective, permitted and inheritable
//!    capability sets (a process started unprivileged with ambient
//!    `CAP_NET_BIND_SERVICE` loses it here; a set that is already empty is
//!    left alone, so the gateway's unit need not allow capset);
//! 5. Landlock ([`sandbox`]) and the seccomp allow-list ([`seccomp`]);
//! 6. the caller starts its runtime and audio and reports READY.
//!
//! Started as root without a usable user, [`plan`] refuses with a message
//! that says how to fix it. Staying root is possible only through the
//! explicit `privilege.stay_root` development switch, and is logged as an
//! error at every start.

pub mod accounts;
pub mod dumps;
pub mod realtime;
pub mod sandbox;
pub mod seccomp;
mod sys;

use caps::CapSet;
use nix::unistd::{Gid, Uid};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// The kernel clock's discipline as `adjtimex(2)` reports it, read without
/// changing anything: the clock state it returns (`libc::TIME_OK` ..
/// `libc::TIME_ERROR`), the status word (`libc::STA_UNSYNC`, ...) and the
/// maximum error in microseconds. `voxgate check` asks it whether the
/// clock is synchronized.
pub fn kernel_clock() -> std::io::Result<(i32, i32, i64)> {
    sys::adjtimex_read()
}

/// `[privilege]` and `[sandbox]` settings, shared by both roles.
#[derive(Debug, Clone, Default)]
pub struct PrivilegeSettings {
    /// User to become when started as root.
    pub user: Option<String>,
    /// Supplementary groups to keep (e.g. `audio`, `tss`).
    pub groups: Vec<String>,
    /// Development switch: stay root (logged as an error).
    pub stay_root: bool,
    /// Apply Landlock and seccomp.
    pub sandbox: bool,
    /// Extra read-only paths for Landlock.
    pub read: Vec<PathBuf>,
    /// Extra read-write paths for Landlock.
    pub write: Vec<PathBuf>,
}

/// Why the process refuses to continue.
#[derive(Debug, Error)]
pub enum PrivilegeError {
    /// Started as root and no user is configured.
    #[error(
        "{file}: started as root, but `privilege.user` is not set; set it to the service account (the systemd unit's sysusers.d entry creates `voxgate`), or start as that user"
    )]
    NoUser {
        /// Config file.
        file: PathBuf,
    },
    /// The configured user does not exist.
    #[error(
        "{file}: key `privilege.user`: user `{name}` is not in /etc/passwd; create it (`systemd-sysusers`, or `useradd --system --no-create-home --shell /usr/sbin/nologin {name}`)"
    )]
    UserMissing {
        /// Config file.
        file: PathBuf,
        /// User name.
        name: String,
    },
    /// The configured user is root or in group root.
    #[error(
        "{file}: key `privilege.user`: `{name}` has uid {uid} / gid {gid}; the service user must not be root or in group root"
    )]
    UserIsRoot {
        /// Config file.
        file: PathBuf,
        /// User name.
        name: String,
        /// Its uid.
        uid: u32,
        /// Its gid.
        gid: u32,
    },
    /// A configured group does not exist.
    #[error("{file}: key `privilege.groups`: group `{name}` is not in /etc/group")]
    GroupMissing {
        /// Config file.
        file: PathBuf,
        /// Group name.
        name: String,
    },
    /// /etc/passwd or /etc/group could not be read.
    #[error("cannot read {path}: {source}")]
    Accounts {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A step of the drop failed.
    #[error("privilege drop failed at {step}: {source}")]
    Step {
        /// What was being done.
        step: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// Root could be regained after the drop.
    #[error("setuid(0) succeeded after the privilege drop; refusing to run")]
    RootRegainable,
    /// A state directory belongs to another user, who could plant files
    /// or links the daemon would trust.
    #[error(
        "{dir} belongs to uid {owner}; a state directory must belong to root or to the service user (uid {service}): `chown -R {service} {dir}` if it is this service's, or set another directory in the config"
    )]
    StateDirOwner {
        /// The directory.
        dir: PathBuf,
        /// Its owner.
        owner: u32,
        /// The uid the daemon runs as.
        service: u32,
    },
    /// Landlock could not be applied.
    #[error("landlock: {0}")]
    Landlock(#[from] landlock::RulesetError),
}

fn step(step: &'static str) -> impl FnOnce(std::io::Error) -> PrivilegeError {
    move |source| PrivilegeError::Step { step, source }
}

fn caps_step(name: &'static str) -> impl FnOnce(caps::errors::CapsError) -> PrivilegeError {
    move |e| PrivilegeError::Step {
        step: name,
        source: std::io::Error::other(e.to_string()),
    }
}

/// Who to become.
#[derive(Debug, Clone)]
pub struct Target {
    /// The user.
    pub user: accounts::User,
    /// Supplementary group ids.
    pub groups: Vec<u32>,
}

/// The checked plan: made before any socket is bound, so that a
/// misconfiguration stops the process before it touches anything.
#[derive(Debug, Clone)]
pub struct Plan {
    target: Option<Target>,
    stay_root: bool,
    settings: PrivilegeSettings,
}

impl Plan {
    /// Also allow reading these trees under Landlock (what the daemon
    /// found it needs while preparing, e.g. the phone store's directory).
    pub fn with_read(mut self, paths: impl IntoIterator<Item = PathBuf>) -> Plan {
        for p in paths {
            if !self.settings.read.contains(&p) {
                self.settings.read.push(p);
            }
        }
        self
    }

    /// The uid the daemon runs as after [`apply`].
    pub fn service_uid(&self) -> u32 {
        match &self.target {
            Some(t) => t.user.uid,
            None => Uid::effective().as_raw(),
        }
    }

    /// Refuse a state directory owned by anyone but root or the service
    /// user, before anything in it is read. A directory that does not exist
    /// yet passes (the daemon creates it).
    pub fn check_state_dirs(&self, dirs: &[&Path]) -> Result<(), PrivilegeError> {
        check_owners(dirs, self.service_uid())
    }
}

fn check_owners(dirs: &[&Path], service: u32) -> Result<(), PrivilegeError> {
    use std::os::unix::fs::MetadataExt;
    for dir in dirs {
        let Ok(meta) = std::fs::metadata(dir) else {
            continue;
        };
        let owner = meta.uid();
        if owner != 0 && owner != service {
            return Err(PrivilegeError::StateDirOwner {
                dir: dir.to_path_buf(),
                owner,
                service,
            });
        }
    }
    Ok(())
}

/// For the commands that write a daemon's state without becoming its user
/// (`voxgate phones`): refuse a directory owned by anyone but root, the
/// configured service user, or the user running the command.
pub fn check_state_dirs_for(s: &PrivilegeSettings, dirs: &[&Path]) -> Result<(), PrivilegeError> {
    let me = Uid::effective().as_raw();
    let service = s
        .user
        .as_ref()
        .and_then(|name| {
            let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
            accounts::find_user(&passwd, name)
        })
        .map_or(me, |u| u.uid);
    for dir in dirs {
        // Either is allowed: the owner must be root, `service` or `me`.
        if check_owners(&[dir], service).is_err() {
            check_owners(&[dir], me)?;
        }
    }
    Ok(())
}

/// Check the settings against the accounts of this system.
pub fn plan(s: &PrivilegeSettings, file: &Path) -> Result<Plan, PrivilegeError> {
    plan_with(s, file, Uid::current().is_root(), Path::new("/etc"))
}

fn plan_with(
    s: &PrivilegeSettings,
    file: &Path,
    is_root: bool,
    etc: &Path,
) -> Result<Plan, PrivilegeError> {
    let base = Plan {
        target: None,
        stay_root: false,
        settings: s.clone(),
    };
    if !is_root {
        return Ok(base);
    }
    if s.stay_root {
        return Ok(Plan {
            stay_root: true,
            ..base
        });
    }
    let Some(name) = &s.user else {
        return Err(PrivilegeError::NoUser { file: file.into() });
    };
    let read = |f: &str| {
        let path = etc.join(f);
        std::fs::read_to_string(&path).map_err(|source| PrivilegeError::Accounts { path, source })
    };
    let passwd = read("passwd")?;
    let group = read("group")?;
    let user = accounts::find_user(&passwd, name).ok_or_else(|| PrivilegeError::UserMissing {
        file: file.into(),
        name: name.clone(),
    })?;
    if user.uid == 0 || user.gid == 0 {
        return Err(PrivilegeError::UserIsRoot {
            file: file.into(),
            name: name.clone(),
            uid: user.uid,
            gid: user.gid,
        });
    }
    let mut groups = Vec::new();
    for g in &s.groups {
        let found =
            accounts::find_group(&group, g).ok_or_else(|| PrivilegeError::GroupMissing {
                file: file.into(),
                name: g.clone(),
            })?;
        if found.gid == 0 {
            return Err(PrivilegeError::GroupMissing {
                file: file.into(),
                name: format!("{g} (gid 0 is not allowed)"),
            });
        }
        groups.push(found.gid);
    }
    Ok(Plan {
        target: Some(Target { user, groups }),
        ..base
    })
}

/// What [`apply`] did, for the start-up log.
#[derive(Debug, Clone)]
pub struct Report {
    /// The user now running, if the process changed user.
    pub became: Option<String>,
    /// Whether the process stayed root (development switch).
    pub stayed_root: bool,
    /// Landlock enforcement.
    pub landlock: Option<sandbox::Enforced>,
    /// Number of syscalls allowed by seccomp.
    pub seccomp_allowed: Option<usize>,
    /// A path outside the Landlock rules that could not be opened.
    pub landlock_probe: Option<PathBuf>,
}

impl Report {
    /// Log what was done; staying root is an error-level line every start.
    pub fn log(&self) {
        if self.stayed_root {
            tracing::error!(
                "running as root: privilege drop disabled by `privilege.stay_root` (development only; never on a deployed box)"
            );
        }
        match &self.became {
            Some(user) => tracing::info!(%user, "dropped privileges; setuid(0) verified to fail"),
            None if !self.stayed_root => {
                tracing::info!("started unprivileged; capabilities cleared")
            }
            None => {}
        }
        match (self.landlock, &self.landlock_probe) {
            (Some(l), Some(p)) => tracing::info!(landlock = ?l, denied = %p.display(),
                "filesystem sandbox on; a path outside it was verified unreadable"),
            (Some(l), None) => {
                tracing::warn!(landlock = ?l, "filesystem sandbox could not be verified: no readable path outside it was found, or the kernel does not enforce it")
            }
            (None, _) => tracing::warn!("filesystem sandbox disabled (`sandbox.enabled = false`)"),
        }
        if let Some(n) = self.seccomp_allowed {
            tracing::info!(allowed_syscalls = n, "seccomp allow-list on");
        }
    }
}

/// Drop privileges and sandbox the process. `state` are the read-write
/// directories the daemon owns; `probe` is a fallback path to prove the
/// sandbox with when no standard directory lies outside the rules.
pub fn apply(plan: &Plan, state: &[&Path], probe: &Path) -> Result<Report, PrivilegeError> {
    let mut report = Report {
        became: None,
        stayed_root: plan.stay_root,
        landlock: None,
        seccomp_allowed: None,
        landlock_probe: None,
    };
    if let Some(t) = &plan.target {
        // Still root: the bounding set can only be emptied with CAP_SETPCAP.
        caps::clear(None, CapSet::Ambient).map_err(caps_step("clear ambient capabilities"))?;
        for cap in caps::all() {
            caps::drop(None, CapSet::Bounding, cap).map_err(caps_step("drop bounding set"))?;
        }
        let gids: Vec<Gid> = t.groups.iter().map(|g| Gid::from_raw(*g)).collect();
        nix::unistd::setgroups(&gids).map_err(|e| step("setgroups")(e.into()))?;
        let gid = Gid::from_raw(t.user.gid);
        nix::unistd::setresgid(gid, gid, gid).map_err(|e| step("setresgid")(e.into()))?;
        let uid = Uid::from_raw(t.user.uid);
        nix::unistd::setresuid(uid, uid, uid).map_err(|e| step("setresuid")(e.into()))?;
        if nix::unistd::setuid(Uid::from_raw(0)).is_ok() || Uid::effective().is_root() {
            return Err(PrivilegeError::RootRegainable);
        }
        report.became = Some(t.user.name.clone());
    }
    nix::sys::prctl::set_no_new_privs().map_err(|e| step("no_new_privs")(e.into()))?;
    // Keys live in this process: no core dumps, no ptrace by the same user,
    // and /proc/PID files owned by root.
    nix::sys::prctl::set_dumpable(false).map_err(|e| step("set non-dumpable")(e.into()))?;
    if !plan.stay_root {
        // A process started unprivileged with ambient capabilities keeps
        // them until here; the bounding set needs CAP_SETPCAP, which such a
        // process does not have (systemd's CapabilityBoundingSet covers it).
        caps::clear(None, CapSet::Ambient).map_err(caps_step("clear ambient capabilities"))?;
        for set in [CapSet::Inheritable, CapSet::Effective, CapSet::Permitted] {
            // capset(2) only for a set that holds something: the systemd
            // unit starts the gateway with empty sets and does not allow
            // capset (capget is allowed).
            let held = caps::read(None, set).map_err(caps_step("read capabilities"))?;
            if !held.is_empty() {
                caps::clear(None, set).map_err(caps_step("clear capabilities"))?;
            }
        }
    }
    if plan.settings.sandbox {
        let policy = sandbox::FsPolicy::new(state, &plan.settings.read, &plan.settings.write);
        // A readable path outside the rules, checked before and after.
        let probe = policy
            .outside()
            .or_else(|| Some(probe.to_path_buf()).filter(|p| sandbox::can_read(p)));
        let enforced = sandbox::apply(&policy)?;
        report.landlock = Some(enforced);
        report.landlock_probe = probe.filter(|p| !sandbox::can_read(p));
        report.seccomp_allowed = Some(seccomp::apply().map_err(step("seccomp"))?);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn etc() -> PathBuf {
        let d = std::env::temp_dir().join(format!("vg-etc-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(
            d.join("passwd"),
            "root:x:0:0::/root:/bin/sh\nvoxgate:x:998:997::/var/lib/voxgate:/usr/sbin/nologin\nrooty:x:1000:0::/:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(d.join("group"), "root:x:0:\naudio:x:29:\nvoxgate:x:997:\n").unwrap();
        d
    }

    fn settings(user: Option<&str>, groups: &[&str]) -> PrivilegeSettings {
        PrivilegeSettings {
            user: user.map(str::to_string),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn root_needs_a_real_unprivileged_user() {
        let etc = etc();
        let f = Path::new("/etc/voxgate/voxgate.toml");
        let e = plan_with(&settings(None, &[]), f, true, &etc).unwrap_err();
        assert!(e.to_string().contains("`privilege.user` is not set"), "{e}");
        let e = plan_with(&settings(Some("ghost"), &[]), f, true, &etc).unwrap_err();
        assert!(e.to_string().contains("useradd --system"), "{e}");
        let e = plan_with(&settings(Some("root"), &[]), f, true, &etc).unwrap_err();
        assert!(
            matches!(e, PrivilegeError::UserIsRoot { uid: 0, .. }),
            "{e}"
        );
        let e = plan_with(&settings(Some("rooty"), &[]), f, true, &etc).unwrap_err();
        assert!(
            matches!(e, PrivilegeError::UserIsRoot { gid: 0, .. }),
            "{e}"
        );
        let e = plan_with(&settings(Some("voxgate"), &["nope"]), f, true, &etc).unwrap_err();
        assert!(e.to_string().contains("group `nope`"), "{e}");
        let p = plan_with(&settings(Some("voxgate"), &["audio"]), f, true, &etc).unwrap();
        let t = p.target.unwrap();
        assert_eq!((t.user.uid, t.user.gid, t.groups), (998, 997, vec![29]));
        // Not root: nothing to become.
        assert!(
            plan_with(&settings(None, &[]), f, false, &etc)
                .unwrap()
                .target
                .is_none()
        );
        std::fs::remove_dir_all(etc).unwrap();
    }

    #[test]
    fn state_dirs_of_another_user_are_refused() {
        let d = std::env::temp_dir().join(format!("vg-owner-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let me = Uid::effective().as_raw();
        // Root's or the service user's; one not there yet.
        check_owners(&[&d, &d.join("later")], me).unwrap();
        check_owners(&[Path::new("/")], 4242).unwrap();
        if me == 0 {
            std::os::unix::fs::chown(&d, Some(4242), None).unwrap();
            check_owners(&[&d], 4242).unwrap();
            let e = check_owners(&[&d], 998).unwrap_err();
            assert!(
                matches!(
                    e,
                    PrivilegeError::StateDirOwner {
                        owner: 4242,
                        service: 998,
                        ..
                    }
                ),
                "{e}"
            );
            assert!(e.to_string().contains("chown -R 998"), "{e}");
        }
        std::fs::remove_dir_all(&d).unwrap();
    }
}
