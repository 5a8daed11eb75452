//! The running `voxgate run`, seen from outside: which process it is,
//! what systemd says of it, its sandbox (`/proc/<pid>/status`), the
//! sockets and sound devices it holds (`/proc/net/*`, `/proc/<pid>/fd`),
//! and its metrics endpoint. The parsers are pure functions of the text
//! read, unit-tested with fixtures.

use crate::audio::device::Dir;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The gateway's systemd unit.
pub const UNIT: &str = "voxgate.service";

/// Whether systemd is the init system here (`/run/systemd/system`).
pub fn systemd_booted() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

/// What systemd says of [`UNIT`]: its `ActiveState` and `MainPID`.
pub fn systemd_unit() -> Option<(String, i32)> {
    let out = std::process::Command::new("systemctl")
        .args(["show", "-p", "ActiveState", "-p", "MainPID", UNIT])
        .stdin(std::process::Stdio::null())
        .output()
        .ok()?;
    parse_systemctl_show(&String::from_utf8_lossy(&out.stdout))
}

/// `ActiveState=` and `MainPID=` from `systemctl show`'s output.
pub fn parse_systemctl_show(text: &str) -> Option<(String, i32)> {
    let mut state = None;
    let mut pid = 0;
    for l in text.lines() {
        if let Some(v) = l.strip_prefix("ActiveState=") {
            state = Some(v.trim().to_string());
        } else if let Some(v) = l.strip_prefix("MainPID=") {
            pid = v.trim().parse().unwrap_or(0);
        }
    }
    state.map(|s| (s, pid))
}

/// The config file a `voxgate run` command line names (`None`: it is not
/// `voxgate run`); relative paths are taken from `cwd`.
pub fn run_config_of(args: &[&str], cwd: &Path) -> Option<PathBuf> {
    let exe = Path::new(args.first()?).file_name()?.to_str()?;
    if !exe.starts_with("voxgate") || args.get(1) != Some(&"run") {
        return None;
    }
    let mut config = PathBuf::from("/etc/voxgate/voxgate.toml");
    let mut it = args[2..].iter();
    while let Some(a) = it.next() {
        if *a == "--list-devices" {
            return None;
        }
        if let Some(v) = a.strip_prefix("--config=") {
            config = PathBuf::from(v);
        } else if *a == "--config" || *a == "-c" {
            config = PathBuf::from(it.next()?);
        }
    }
    Some(cwd.join(config))
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

/// The pid of the `voxgate run` that runs `config`: systemd's `MainPID`
/// when the unit is active, else a process whose command line runs it.
pub fn find_pid(config: &Path) -> Option<i32> {
    if systemd_booted()
        && let Some((state, pid)) = systemd_unit()
        && state == "active"
        && pid > 0
    {
        return Some(pid);
    }
    let me = std::process::id() as i32;
    let dir = std::fs::read_dir("/proc").ok()?;
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != me)
        .find(|pid| {
            let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            let text = String::from_utf8_lossy(&raw);
            let args: Vec<&str> = text.split('\0').filter(|a| !a.is_empty()).collect();
            let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap_or_default();
            run_config_of(&args, &cwd).is_some_and(|c| same_file(&c, config))
        })
}

/// The sandbox-related lines of `/proc/<pid>/status`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcStatus {
    /// Effective user id.
    pub uid: Option<u32>,
    /// `Seccomp:` 0 off, 1 strict, 2 filter.
    pub seccomp: Option<u8>,
    /// `NoNewPrivs:`.
    pub no_new_privs: Option<bool>,
    /// `CapEff:` as a bit set.
    pub cap_eff: Option<u64>,
}

/// Parse `/proc/<pid>/status`.
pub fn parse_status(text: &str) -> ProcStatus {
    let mut s = ProcStatus::default();
    for l in text.lines() {
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        let v = v.trim();
        match k {
            // Real, effective, saved, filesystem.
            "Uid" => s.uid = v.split_whitespace().nth(1).and_then(|u| u.parse().ok()),
            "Seccomp" => s.seccomp = v.parse().ok(),
            "NoNewPrivs" => s.no_new_privs = Some(v == "1"),
            "CapEff" => s.cap_eff = u64::from_str_radix(v, 16).ok(),
            _ => {}
        }
    }
    s
}

/// `/proc/<pid>/status` of `pid`.
pub fn proc_status(pid: i32) -> std::io::Result<ProcStatus> {
    std::fs::read_to_string(format!("/proc/{pid}/status")).map(|t| parse_status(&t))
}

/// The name of user `uid` (from /etc/passwd), or the number.
pub fn user_name(uid: u32) -> String {
    nix::unistd::User::from_uid(uid.into())
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| uid.to_string())
}

/// A process's short name (`/proc/<pid>/comm`).
pub fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|c| c.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

/// Whether `pid` holds an ALSA PCM of direction `dir` open
/// (`/dev/snd/pcmC<card>D<dev>c` or `...p`).
pub fn holds_sound(pid: i32, dir: Dir) -> bool {
    let want = match dir {
        Dir::Capture => 'c',
        Dir::Playback => 'p',
    };
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten().any(|e| {
                std::fs::read_link(e.path()).is_ok_and(|t| {
                    let t = t.to_string_lossy();
                    t.starts_with("/dev/snd/pcmC") && t.ends_with(want)
                })
            })
        })
        .unwrap_or(false)
}

/// Socket inodes bound to local `port` in a `/proc/net/{udp,tcp}[6]`
/// table; for TCP (`listening`) only sockets in the LISTEN state.
pub fn inodes_on_port(table: &str, port: u16, listening: bool) -> Vec<u64> {
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let local = f.get(1)?;
            let p = u16::from_str_radix(local.rsplit_once(':')?.1, 16).ok()?;
            let state = f.get(3)?;
            (p == port && (!listening || *state == "0A"))
                .then(|| f.get(9)?.parse().ok())
                .flatten()
        })
        .collect()
}

/// The processes holding a socket bound to `port` (UDP, or TCP listening).
pub fn port_holders(port: u16, tcp: bool) -> Vec<i32> {
    let tables: &[&str] = if tcp {
        &["/proc/net/tcp", "/proc/net/tcp6"]
    } else {
        &["/proc/net/udp", "/proc/net/udp6"]
    };
    let inodes: Vec<u64> = tables
        .iter()
        .filter_map(|t| std::fs::read_to_string(t).ok())
        .flat_map(|t| inodes_on_port(&t, port, tcp))
        .filter(|i| *i != 0)
        .collect();
    if inodes.is_empty() {
        return Vec::new();
    }
    let wanted: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|d| {
                d.flatten().any(|e| {
                    std::fs::read_link(e.path())
                        .is_ok_and(|t| wanted.iter().any(|w| t.as_os_str() == w.as_str()))
                })
            })
        })
        .collect()
}

/// `GET /metrics` from the daemon's loopback endpoint (2 s at most).
pub fn scrape(addr: SocketAddr) -> Option<String> {
    let s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    get_metrics(s)
}

/// `GET /metrics` over the daemon's status socket (2 s at most).
pub fn scrape_unix(path: &Path) -> Option<String> {
    let s = std::os::unix::net::UnixStream::connect(path).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.set_write_timeout(Some(Duration::from_secs(2))).ok()?;
    get_metrics(s)
}

fn get_metrics(s: impl Read + Write) -> Option<String> {
    get(s, "/metrics")
}

fn get(mut s: impl Read + Write, path: &str) -> Option<String> {
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
        .ok()?;
    let mut body = String::new();
    s.take(1 << 20).read_to_string(&mut body).ok()?;
    let (head, body) = body.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_string())
}

/// `GET /phones` over the daemon's status socket at `path` (2 s at most):
/// every extension and its registered phones.
pub fn phones_at(path: &Path) -> Option<crate::bridge::registrations::PhonesView> {
    let s = std::os::unix::net::UnixStream::connect(path).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.set_write_timeout(Some(Duration::from_secs(2))).ok()?;
    serde_json::from_str(&get(s, "/phones")?).ok()
}

/// The daemon's phones, from its status socket (the only place it shows
/// them).
pub fn read_phones(
    t: &crate::config::TelemetryConfig,
) -> Option<crate::bridge::registrations::PhonesView> {
    t.status_socket().and_then(|p| phones_at(&p))
}

/// The daemon's metrics: from its status socket, else its TCP endpoint.
pub fn read_metrics(t: &crate::config::TelemetryConfig) -> Option<String> {
    t.status_socket()
        .and_then(|p| scrape_unix(&p))
        .or_else(|| t.metrics.and_then(scrape))
}

/// One value of the daemon's metrics text.
pub fn value(text: &str, name: &str) -> Option<f64> {
    crate::telemetry::metrics::scrape_value(text, name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines_of_the_daemon() {
        let cwd = Path::new("/srv");
        assert_eq!(
            run_config_of(&["/usr/bin/voxgate", "run", "--config", "/etc/v.toml"], cwd),
            Some(PathBuf::from("/etc/v.toml"))
        );
        assert_eq!(
            run_config_of(&["voxgate", "run", "-c", "gw.toml"], cwd),
            Some(PathBuf::from("/srv/gw.toml"))
        );
        assert_eq!(
            run_config_of(&["voxgate", "run"], cwd),
            Some(PathBuf::from("/etc/voxgate/voxgate.toml"))
        );
        assert_eq!(run_config_of(&["voxgate", "check"], cwd), None);
        assert_eq!(
            run_config_of(&["voxgate", "run", "--list-devices"], cwd),
            None
        );
        assert_eq!(run_config_of(&["bash", "run"], cwd), None);
        assert_eq!(run_config_of(&["voxgate", "run", "--config"], cwd), None);
    }

    #[test]
    fn proc_status_fields() {
        let s = parse_status(
            "Name:\tvoxgate\nUid:\t65534\t65534\t65534\t65534\nCapEff:\t0000000000000000\nNoNewPrivs:\t1\nSeccomp:\t2\nSeccomp_filters:\t1\n",
        );
        assert_eq!(
            s,
            ProcStatus {
                uid: Some(65534),
                seccomp: Some(2),
                no_new_privs: Some(true),
                cap_eff: Some(0),
            }
        );
        assert_eq!(parse_status(""), ProcStatus::default());
    }

    #[test]
    fn systemctl_show_output() {
        assert_eq!(
            parse_systemctl_show("MainPID=42\nActiveState=active\n"),
            Some(("active".into(), 42))
        );
        assert_eq!(
            parse_systemctl_show("ActiveState=inactive\nMainPID=0"),
            Some(("inactive".into(), 0))
        );
        assert_eq!(parse_systemctl_show(""), None);
    }

    #[test]
    fn sockets_on_a_port() {
        let udp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n  1: 0100007F:13C4 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4242 2 0 0\n  2: 0100007F:13C5 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4343 2 0 0\n";
        assert_eq!(inodes_on_port(udp, 5060, false), vec![4242]);
        assert!(inodes_on_port(udp, 5060, true).is_empty(), "not LISTEN");
        let tcp = udp.replace(" 07 ", " 0A ");
        assert_eq!(inodes_on_port(&tcp, 5061, true), vec![4343]);
        assert!(inodes_on_port("", 1, false).is_empty());
        // This process's own socket is found.
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = s.local_addr().unwrap().port();
        assert!(port_holders(port, false).contains(&(std::process::id() as i32)));
    }
}
