//! Deployment files: the systemd units (hardening scored by
//! `systemd-analyze security`, checked by `systemd-analyze verify`), the
//! sysusers.d/tmpfiles.d entries, every board folder (profile, firewall,
//! ALSA sample, config.txt fragment), and `scripts/install` into a scratch
//! root file system, run twice. CI runs as root, as on the box; nothing is
//! skipped: a missing tool fails with the Debian package to install.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use voxgate_testkit::lab::test_dir;

/// Required by the issue: the gateway unit's overall exposure.
const GATEWAY_MAX_EXPOSURE: f64 = 1.5;
/// The relay holds CAP_NET_BIND_SERVICE (UDP 443) until it has bound and
/// therefore cannot use PrivateUsers=; it reaches 1.5 (systemd 252).
const RELAY_MAX_EXPOSURE: f64 = 1.5;

const BOARDS: [&str; 5] = ["rpi3", "rpi4", "rpi5", "rpi-zero2w", "generic-arm64"];

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Run a command; a missing program fails with the package that provides it.
fn run(cmd: &mut Command, package: &str) -> Output {
    cmd.output().unwrap_or_else(|e| {
        panic!(
            "cannot run {:?}: {e}; run scripts/deps (Debian package {package})",
            cmd.get_program()
        )
    })
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn show(o: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}\n--- stderr\n{}",
        o.status,
        text(&o.stdout),
        text(&o.stderr)
    )
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn assert_root() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "this test needs root, as CI has (scripts/install sets owners; nft needs a network namespace)"
    );
}

// --- systemd units -----------------------------------------------------------------

/// `systemd-analyze security --offline=true UNIT`: the overall exposure and
/// the full report.
fn exposure(unit: &Path) -> (f64, String) {
    let o = run(
        Command::new("systemd-analyze")
            .args(["security", "--offline=true", "--no-pager"])
            .arg(unit)
            .env("SYSTEMD_COLORS", "0"),
        "systemd",
    );
    let report = show(&o);
    assert!(
        o.status.success(),
        "systemd-analyze security failed:\n{report}"
    );
    // systemd 252: "→ Overall exposure level for voxgate.service: 1.4 OK 🙂"
    let line = text(&o.stdout)
        .lines()
        .find(|l| l.contains("Overall exposure level for"))
        .unwrap_or_else(|| panic!("no \"Overall exposure level\" line:\n{report}"))
        .to_string();
    let value = line
        .rsplit_once(": ")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("cannot parse the exposure in `{line}`:\n{report}"));
    // Warnings (unknown keys, unparsable values) would silently weaken the unit.
    assert!(
        o.stderr.is_empty(),
        "systemd-analyze warned about {}:\n{report}",
        unit.display()
    );
    (value, report)
}

#[test]
fn gateway_unit_exposure_is_at_most_1_5() {
    let (value, report) = exposure(&repo().join("systemd/voxgate.service"));
    assert!(
        value <= GATEWAY_MAX_EXPOSURE,
        "voxgate.service exposure {value} > {GATEWAY_MAX_EXPOSURE}:\n{report}"
    );
}

#[test]
fn relay_unit_exposure_is_at_most_1_5() {
    let (value, report) = exposure(&repo().join("systemd/voxgate-relay.service"));
    assert!(
        value <= RELAY_MAX_EXPOSURE,
        "voxgate-relay.service exposure {value} > {RELAY_MAX_EXPOSURE}:\n{report}"
    );
}

/// `Key=value` assignments of a unit file, in order.
fn assignments(unit: &Path) -> Vec<(String, String)> {
    read(unit)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('['))
        .map(|l| {
            let (k, v) = l
                .split_once('=')
                .unwrap_or_else(|| panic!("{}: `{l}` is not Key=value", unit.display()));
            (k.to_string(), v.to_string())
        })
        .collect()
}

fn assert_set(a: &[(String, String)], key: &str, value: &str, unit: &str) {
    assert!(
        a.iter().any(|(k, v)| k == key && v == value),
        "{unit}: expected `{key}={value}`; it has: {:?}",
        a.iter().filter(|(k, _)| k == key).collect::<Vec<_>>()
    );
}

#[test]
fn units_run_the_documented_commands_with_their_sandbox_needs() {
    let g = assignments(&repo().join("systemd/voxgate.service"));
    let unit = "voxgate.service";
    for (k, v) in [
        ("Type", "notify"),
        ("WatchdogSec", "10s"),
        ("Restart", "on-failure"),
        (
            "ExecStart",
            "/usr/bin/voxgate run --config /etc/voxgate/voxgate.toml",
        ),
        ("User", "voxgate"),
        ("CapabilityBoundingSet", ""),
        ("AmbientCapabilities", ""),
        ("NoNewPrivileges", "yes"),
        ("StateDirectory", "voxgate"),
        ("StateDirectoryMode", "0750"),
        ("ConfigurationDirectory", "voxgate"),
        ("ConfigurationDirectoryMode", "0750"),
        ("LoadCredentialEncrypted", "voxgate-device-key"),
        ("DevicePolicy", "closed"),
        ("DeviceAllow", "char-alsa rw"),
        ("DeviceAllow", "/dev/tpmrm0 rw"),
        ("PrivateUsers", "yes"),
        ("ProtectSystem", "strict"),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("UMask", "0077"),
        ("SystemCallErrorNumber", "EPERM"),
    ] {
        assert_set(&g, k, v, unit);
    }
    // The binary installs its own sandbox after systemd's filter (Landlock,
    // seccomp; without them it refuses to run, or runs without Landlock), and
    // its audio threads ask for SCHED_FIFO within LimitRTPRIO. capset is not
    // needed: the unit starts it with empty capability sets, and the binary
    // calls capset only for a set that is not empty.
    assert_set(&g, "RestrictRealtime", "no", unit);
    assert_set(
        &g,
        "LimitRTPRIO",
        &voxgate::privilege::realtime::AUDIO_PRIORITY.to_string(),
        unit,
    );
    let filters: Vec<&str> = g
        .iter()
        .filter(|(k, _)| k == "SystemCallFilter")
        .map(|(_, v)| v.as_str())
        .collect();
    let last_allow = filters.last().expect("SystemCallFilter=");
    for call in [
        "seccomp",
        "landlock_create_ruleset",
        "landlock_add_rule",
        "landlock_restrict_self",
        "sched_setscheduler",
    ] {
        assert!(
            last_allow.split_whitespace().any(|c| c == call),
            "{unit}: the last SystemCallFilter= line must allow {call}: {filters:?}"
        );
    }

    let r = assignments(&repo().join("systemd/voxgate-relay.service"));
    let unit = "voxgate-relay.service";
    for (k, v) in [
        ("Type", "notify"),
        ("WatchdogSec", "10s"),
        (
            "ExecStart",
            "/usr/bin/voxgate relay run --config /etc/voxgate/relay.toml",
        ),
        ("User", "voxgate"),
        ("CapabilityBoundingSet", "CAP_NET_BIND_SERVICE"),
        ("AmbientCapabilities", "CAP_NET_BIND_SERVICE"),
        ("StateDirectory", "voxgate-relay voxgate-relay/recordings"),
        ("StateDirectoryMode", "0750"),
        ("PrivateDevices", "yes"),
    ] {
        assert_set(&r, k, v, unit);
    }
    // A capability held in a private user namespace does not count for the
    // host's network namespace: the relay could not bind UDP 443.
    assert!(
        !r.iter().any(|(k, v)| k == "PrivateUsers" && v == "yes"),
        "{unit}: PrivateUsers=yes breaks binding port 443"
    );
}

#[test]
fn sysusers_and_tmpfiles_entries_match_the_units() {
    let sysusers = read(&repo().join("systemd/voxgate.sysusers"));
    let lines: Vec<Vec<&str>> = sysusers
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert!(
        lines
            .iter()
            .any(|f| f[0] == "u" && f[1] == "voxgate" && f.contains(&"/var/lib/voxgate")),
        "voxgate.sysusers: no `u voxgate ... /var/lib/voxgate` line:\n{sysusers}"
    );
    assert!(
        lines.iter().any(|f| f == &["m", "voxgate", "audio"]),
        "voxgate.sysusers: voxgate must join audio:\n{sysusers}"
    );
    let tpm = read(&repo().join("systemd/voxgate-tpm.sysusers"));
    assert!(
        tpm.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["m", "voxgate", "tss"]),
        "voxgate-tpm.sysusers must add voxgate to tss:\n{tpm}"
    );

    let tmpfiles = read(&repo().join("systemd/voxgate.tmpfiles"));
    let entries: Vec<Vec<&str>> = tmpfiles
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map(|l| l.split_whitespace().collect())
        .collect();
    for want in [
        ["d", "/var/lib/voxgate", "0750", "voxgate", "voxgate"],
        ["d", "/etc/voxgate", "0750", "root", "voxgate"],
        ["d", "/var/lib/voxgate-relay", "0750", "voxgate", "voxgate"],
        [
            "d",
            "/var/lib/voxgate-relay/recordings",
            "0750",
            "voxgate",
            "voxgate",
        ],
    ] {
        assert!(
            entries.iter().any(|e| e.len() >= 5 && e[..5] == want),
            "voxgate.tmpfiles: missing `{}`:\n{tmpfiles}",
            want.join(" ")
        );
    }
}

/// `systemd-analyze verify` needs the units the service depends on
/// (sysinit.target, ...) and its binary: a scratch root with the host's
/// system units, the voxgate units and a binary at /usr/bin/voxgate.
#[test]
fn units_pass_systemd_analyze_verify() {
    let root = test_dir("deploy-verify");
    let units = root.join("usr/lib/systemd/system");
    std::fs::create_dir_all(&units).unwrap();
    std::fs::create_dir_all(root.join("usr/bin")).unwrap();
    std::fs::create_dir_all(root.join("etc")).unwrap();
    let host = ["/usr/lib/systemd/system", "/lib/systemd/system"]
        .iter()
        .map(Path::new)
        .find(|p| p.join("sysinit.target").exists())
        .expect("no sysinit.target on this host: run scripts/deps (Debian package systemd)");
    for e in std::fs::read_dir(host).unwrap() {
        let e = e.unwrap();
        let ft = e.file_type().unwrap();
        if ft.is_file() || ft.is_symlink() {
            let _ = std::fs::copy(e.path(), units.join(e.file_name()));
        }
    }
    // verify only checks that ExecStart= names an executable.
    let exe = root.join("usr/bin/voxgate");
    std::fs::write(&exe, "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&exe, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    for u in ["voxgate.service", "voxgate-relay.service"] {
        std::fs::copy(repo().join("systemd").join(u), units.join(u)).unwrap();
    }
    let o = run(
        Command::new("systemd-analyze")
            .arg("verify")
            .arg(format!("--root={}", root.display()))
            .args(["voxgate.service", "voxgate-relay.service"])
            .env("SYSTEMD_COLORS", "0"),
        "systemd",
    );
    assert!(
        o.status.success() && o.stdout.is_empty() && o.stderr.is_empty(),
        "systemd-analyze verify:\n{}",
        show(&o)
    );
    std::fs::remove_dir_all(root).unwrap();
}

// --- boards ----------------------------------------------------------------------------

fn board_dir(b: &str) -> PathBuf {
    repo().join("board").join(b)
}

fn profile(b: &str) -> toml::Table {
    let p = board_dir(b).join("profile.toml");
    toml::from_str::<toml::Table>(&read(&p)).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn get<'a>(t: &'a toml::Table, section: &str, key: &str, board: &str) -> &'a toml::Value {
    t.get(section)
        .and_then(|s| s.as_table())
        .unwrap_or_else(|| panic!("board/{board}/profile.toml: no [{section}] table"))
        .get(key)
        .unwrap_or_else(|| panic!("board/{board}/profile.toml: no `{section}.{key}`"))
}

fn get_str<'a>(t: &'a toml::Table, section: &str, key: &str, board: &str) -> &'a str {
    let v = get(t, section, key, board);
    let s = v.as_str().unwrap_or_else(|| {
        panic!("board/{board}/profile.toml: `{section}.{key}` must be a string, not {v}")
    });
    assert!(
        !s.trim().is_empty(),
        "board/{board}/profile.toml: `{section}.{key}` is empty"
    );
    s
}

#[test]
fn every_board_folder_is_complete() {
    let found: Vec<String> = std::fs::read_dir(repo().join("board"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    for b in BOARDS {
        assert!(found.iter().any(|f| f == b), "board/{b} is missing");
        for f in [
            "profile.toml",
            "asound.conf",
            "config.txt.fragment",
            "nftables.conf",
        ] {
            assert!(board_dir(b).join(f).is_file(), "board/{b}/{f} is missing");
        }
    }
}

#[test]
fn board_profiles_parse_with_the_required_keys() {
    for b in BOARDS {
        let t = profile(b);
        assert_eq!(get_str(&t, "board", "name", b), b, "board/{b}: board.name");
        get_str(&t, "board", "description", b);
        get_str(&t, "audio", "capture", b);
        get_str(&t, "audio", "playback", b);
        let dev = get_str(&t, "watchdog", "device", b);
        assert!(
            dev.starts_with("/dev/"),
            "board/{b}: watchdog.device `{dev}`"
        );
        let timeout = get(&t, "watchdog", "timeout_s", b);
        let timeout = timeout.as_integer().unwrap_or_else(|| {
            panic!("board/{b}: watchdog.timeout_s must be an integer, not {timeout}")
        });
        assert!(
            (1..=300).contains(&timeout),
            "board/{b}: watchdog.timeout_s {timeout}"
        );
        let module = get_str(&t, "watchdog", "module", b);
        if module == "bcm2835_wdt" {
            assert!(timeout <= 15, "board/{b}: bcm2835-wdt cannot exceed 15 s");
        }
        let fragment = read(&board_dir(b).join("config.txt.fragment"));
        let active: Vec<&str> = fragment
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect();
        let dtparam = get_str(&t, "watchdog", "dtparam", b);
        let overlay = get_str(&t, "tpm", "overlay", b);
        for (key, line, prefix) in [
            ("watchdog.dtparam", dtparam, "dtparam="),
            ("tpm.overlay", overlay, "dtoverlay="),
        ] {
            if line != "none" {
                assert!(
                    line.starts_with(prefix),
                    "board/{b}: {key} must be \"none\" or start with {prefix}: `{line}`"
                );
                assert!(
                    active.contains(&line),
                    "board/{b}/config.txt.fragment lacks `{line}` ({key})"
                );
            }
        }
        for l in &active {
            assert!(
                l.starts_with("dtparam=") || l.starts_with("dtoverlay="),
                "board/{b}/config.txt.fragment: unexpected line `{l}`"
            );
        }
    }
}

/// `nft -c` in a throwaway network namespace: it talks to the kernel, but
/// the host's ruleset is never touched.
fn nft_check(file: &Path) -> Output {
    run(
        Command::new("unshare")
            .args(["--net", "nft", "-c", "-f"])
            .arg(file),
        "nftables and util-linux",
    )
}

#[test]
fn board_firewalls_pass_nft_check() {
    assert_root();
    let nft = run(Command::new("nft").arg("--version"), "nftables");
    assert!(nft.status.success(), "nft --version:\n{}", show(&nft));
    for b in BOARDS {
        let file = board_dir(b).join("nftables.conf");
        let o = nft_check(&file);
        assert!(
            o.status.success(),
            "board/{b}/nftables.conf does not pass `nft -c`:\n{}",
            show(&o)
        );
        let rules = read(&file);
        for want in [
            "set lan_v4",
            "set lan_v6",
            "hook input priority filter; policy drop;",
            "hook output priority filter; policy drop;",
            "tcp dport 22",
            "udp dport 443 accept",
            "udp dport 10000-10999",
        ] {
            assert!(
                rules.contains(want),
                "board/{b}/nftables.conf lacks `{want}`"
            );
        }
    }
    // The check itself catches mistakes: an unknown set is refused.
    let dir = test_dir("deploy-nft");
    let bad = dir.join("bad.nft");
    std::fs::write(
        &bad,
        read(&board_dir("rpi4").join("nftables.conf")).replace("@lan_v4 tcp", "@lan_v9 tcp"),
    )
    .unwrap();
    assert!(
        !nft_check(&bad).status.success(),
        "nft -c accepted a reference to an undefined set"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// alsa-lib with only its own configuration and the board's file.
fn alsa(tool: &str, file: &Path) -> Command {
    let mut c = Command::new(tool);
    c.env(
        "ALSA_CONFIG_PATH",
        format!("/usr/share/alsa/alsa.conf:{}", file.display()),
    );
    c
}

#[test]
fn board_asound_confs_parse_and_define_the_profile_pcms() {
    for b in BOARDS {
        let file = board_dir(b).join("asound.conf");
        let t = profile(b);
        let o = run(alsa("aplay", &file).arg("-L"), "alsa-utils");
        let out = text(&o.stdout);
        assert!(
            o.status.success() && !text(&o.stderr).contains("ALSA lib"),
            "board/{b}/asound.conf: aplay -L:\n{}",
            show(&o)
        );
        let names: Vec<&str> = out.lines().filter(|l| !l.starts_with(' ')).collect();
        for key in ["capture", "playback"] {
            let pcm = get_str(&t, "audio", key, b);
            assert!(
                names.contains(&pcm),
                "board/{b}: audio.{key} `{pcm}` is not listed by aplay -L with its asound.conf:\n{out}"
            );
        }
        // The shipped example config says device = "default": ALSA's default
        // must be the profile's PCMs, which work inside the daemon's sandbox.
        let conf = read(&file);
        let default = conf
            .split("pcm.!default")
            .nth(1)
            .and_then(|rest| rest.split('}').next())
            .unwrap_or_else(|| panic!("board/{b}/asound.conf: no pcm.!default"));
        for key in ["capture", "playback"] {
            let pcm = get_str(&t, "audio", key, b);
            assert!(
                default.contains(&format!("{key}.pcm \"{pcm}\"")),
                "board/{b}/asound.conf: pcm.!default must use `{pcm}` for {key}:{default}"
            );
        }
        // Opening each PCM evaluates its whole definition: without the card it
        // must fail for that reason ("No such device"), never for a typo.
        let mut pcms: Vec<&str> = names
            .iter()
            .copied()
            .filter(|n| n.starts_with("voxgate_"))
            .collect();
        pcms.push("default");
        for pcm in pcms {
            let tools: &[&str] = if pcm.contains("capture") {
                &["arecord"]
            } else if pcm.contains("playback") {
                &["aplay"]
            } else {
                &["arecord", "aplay"]
            };
            for tool in tools {
                let data = if *tool == "arecord" {
                    "/dev/null"
                } else {
                    "/dev/zero"
                };
                let o = run(
                    alsa(tool, &file).args([
                        "-q", "-D", pcm, "-s", "480", "-f", "S16_LE", "-r", "48000", "-c", "1",
                        "-t", "raw", data,
                    ]),
                    "alsa-utils",
                );
                let err = text(&o.stderr);
                assert!(
                    o.status.success()
                        || err.contains("No such device")
                        || err.contains("Device or resource busy"),
                    "board/{b}/asound.conf: `{tool} -D {pcm}` failed for another reason than a missing card:\n{}",
                    show(&o)
                );
            }
        }
    }
}

// --- scripts/install ------------------------------------------------------------------

/// A minimal Debian root: the accounts a fresh image has that matter here.
fn scratch_root(name: &str) -> PathBuf {
    let root = test_dir(name);
    let etc = root.join("etc");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::write(
        etc.join("passwd"),
        "root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
    )
    .unwrap();
    std::fs::write(
        etc.join("group"),
        "root:x:0:\naudio:x:29:\nnogroup:x:65534:\n",
    )
    .unwrap();
    std::fs::write(
        etc.join("shadow"),
        "root:*:19000:0:99999:7:::\nnobody:*:19000:0:99999:7:::\n",
    )
    .unwrap();
    std::fs::write(etc.join("gshadow"), "root:*::\naudio:*::\nnogroup:*::\n").unwrap();
    root
}

fn install(args: &[&str]) -> Output {
    run(
        Command::new("bash")
            .arg(repo().join("scripts/install"))
            .args(args),
        "bash",
    )
}

fn id_in(db: &Path, name: &str) -> u32 {
    read(db)
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f[0] == name).then(|| f[2].parse().unwrap())
        })
        .unwrap_or_else(|| panic!("{name} is not in {}", db.display()))
}

fn members(root: &Path, group: &str) -> Vec<String> {
    read(&root.join("etc/group"))
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f[0] == group).then(|| {
                f[3].split(',')
                    .filter(|m| !m.is_empty())
                    .map(str::to_string)
                    .collect()
            })
        })
        .unwrap_or_else(|| panic!("group {group} is not in the scratch root"))
}

/// Mode and owners (by name, resolved in the scratch root's databases).
fn assert_meta(root: &Path, rel: &str, mode: u32, user: &str, group: &str) {
    let p = root.join(rel);
    let m = std::fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("/{rel}: {e}"));
    let uid = id_in(&root.join("etc/passwd"), user);
    let gid = id_in(&root.join("etc/group"), group);
    assert_eq!(
        (m.mode() & 0o7777, m.uid(), m.gid()),
        (mode, uid, gid),
        "/{rel}: want {mode:04o} {user}({uid}):{group}({gid})"
    );
}

fn assert_same(root: &Path, rel: &str, src: &Path) {
    assert_eq!(
        std::fs::read(root.join(rel)).unwrap_or_else(|e| panic!("/{rel}: {e}")),
        std::fs::read(src).unwrap(),
        "/{rel} differs from {}",
        src.display()
    );
}

type Snapshot = BTreeMap<PathBuf, (u32, u32, u32, u64, i64, i64, i64, i64, Vec<u8>)>;

/// Everything observable about a tree: mode, owners, size, mtime, ctime, content.
fn snapshot(root: &Path) -> Snapshot {
    fn walk(root: &Path, dir: &Path, out: &mut Snapshot) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let content = if m.is_file() {
                std::fs::read(&p).unwrap()
            } else {
                Vec::new()
            };
            out.insert(
                p.strip_prefix(root).unwrap().to_path_buf(),
                (
                    m.mode(),
                    m.uid(),
                    m.gid(),
                    m.len(),
                    m.mtime(),
                    m.mtime_nsec(),
                    m.ctime(),
                    m.ctime_nsec(),
                    content,
                ),
            );
            if m.is_dir() {
                walk(root, &p, out);
            }
        }
    }
    let mut out = Snapshot::new();
    walk(root, root, &mut out);
    out
}

fn diff(a: &Snapshot, b: &Snapshot) -> Vec<String> {
    let mut d = Vec::new();
    for (p, v) in a {
        match b.get(p) {
            None => d.push(format!("removed /{}", p.display())),
            Some(w) if w != v => d.push(format!("changed /{}", p.display())),
            _ => {}
        }
    }
    for p in b.keys().filter(|p| !a.contains_key(*p)) {
        d.push(format!("added /{}", p.display()));
    }
    d
}

#[test]
fn install_into_a_scratch_root_then_rerun_changes_nothing() {
    assert_root();
    // A copy, so that a concurrent rebuild cannot change the binary between runs.
    let work = test_dir("deploy-install-bin");
    let binary = work.join("voxgate");
    std::fs::copy(voxgate_testkit::lab::bin(), &binary).unwrap();
    let root = scratch_root("deploy-install");
    let r = root.to_str().unwrap();
    let args = [
        "--root",
        r,
        "--board",
        "rpi4",
        "--binary",
        binary.to_str().unwrap(),
    ];
    let o = install(&args);
    assert!(o.status.success(), "scripts/install:\n{}", show(&o));
    let out = text(&o.stdout);
    // The boot configuration is printed, never edited.
    assert!(
        out.contains("dtparam=watchdog=on") && out.contains("dtoverlay=tpm-slb9670"),
        "the config.txt lines are not printed:\n{out}"
    );

    // The account, in the scratch root's databases.
    let passwd = read(&root.join("etc/passwd"));
    let account = passwd
        .lines()
        .find(|l| l.starts_with("voxgate:"))
        .unwrap_or_else(|| panic!("no voxgate account:\n{passwd}"));
    let f: Vec<&str> = account.split(':').collect();
    assert_eq!(f[5], "/var/lib/voxgate", "home: {account}");
    assert!(f[6].ends_with("nologin"), "shell: {account}");
    assert_ne!(f[2], "0", "{account}");
    assert_eq!(f[3], id_in(&root.join("etc/group"), "voxgate").to_string());
    assert!(members(&root, "audio").contains(&"voxgate".to_string()));
    assert!(
        !read(&root.join("etc/group")).contains("tss"),
        "tss without --tpm"
    );

    let src = |p: &str| repo().join(p);
    for (rel, from, mode, user, group) in [
        ("usr/bin/voxgate", binary.clone(), 0o755, "root", "root"),
        (
            "usr/lib/systemd/system/voxgate.service",
            src("systemd/voxgate.service"),
            0o644,
            "root",
            "root",
        ),
        (
            "usr/lib/sysusers.d/voxgate.conf",
            src("systemd/voxgate.sysusers"),
            0o644,
            "root",
            "root",
        ),
        (
            "usr/lib/tmpfiles.d/voxgate.conf",
            src("systemd/voxgate.tmpfiles"),
            0o644,
            "root",
            "root",
        ),
        (
            "usr/share/voxgate/board/rpi4/profile.toml",
            src("board/rpi4/profile.toml"),
            0o644,
            "root",
            "root",
        ),
        (
            "usr/share/voxgate/board/rpi4/asound.conf",
            src("board/rpi4/asound.conf"),
            0o644,
            "root",
            "root",
        ),
        (
            "usr/share/voxgate/board/rpi4/config.txt.fragment",
            src("board/rpi4/config.txt.fragment"),
            0o644,
            "root",
            "root",
        ),
        (
            "usr/share/voxgate/board/rpi4/nftables.conf",
            src("board/rpi4/nftables.conf"),
            0o644,
            "root",
            "root",
        ),
        (
            "etc/voxgate/board.toml",
            src("board/rpi4/profile.toml"),
            0o640,
            "root",
            "voxgate",
        ),
        (
            "etc/voxgate/voxgate.toml",
            src("examples/voxgate.toml"),
            0o640,
            "root",
            "voxgate",
        ),
        (
            "etc/asound.conf",
            src("board/rpi4/asound.conf"),
            0o644,
            "root",
            "root",
        ),
        (
            "etc/nftables.d/voxgate.conf",
            src("board/rpi4/nftables.conf"),
            0o644,
            "root",
            "root",
        ),
    ] {
        assert_same(&root, rel, &from);
        assert_meta(&root, rel, mode, user, group);
    }
    for (rel, mode, user, group) in [
        ("var/lib/voxgate", 0o750, "voxgate", "voxgate"),
        ("etc/voxgate", 0o750, "root", "voxgate"),
        ("var/lib/voxgate-relay", 0o750, "voxgate", "voxgate"),
        (
            "var/lib/voxgate-relay/recordings",
            0o750,
            "voxgate",
            "voxgate",
        ),
    ] {
        assert!(root.join(rel).is_dir(), "/{rel} is not a directory");
        assert_meta(&root, rel, mode, user, group);
    }
    // Role gateway: no relay unit, no relay config, no TPM group.
    for rel in [
        "usr/lib/systemd/system/voxgate-relay.service",
        "etc/voxgate/relay.toml",
        "usr/lib/sysusers.d/voxgate-tpm.conf",
    ] {
        assert!(
            !root.join(rel).exists(),
            "/{rel} installed for role gateway"
        );
    }

    // Second run: nothing changes, not even a time stamp.
    let before = snapshot(&root);
    let o = install(&args);
    assert!(o.status.success(), "second run:\n{}", show(&o));
    assert!(
        text(&o.stdout).contains("nothing to change"),
        "second run:\n{}",
        show(&o)
    );
    let changes = diff(&before, &snapshot(&root));
    assert!(changes.is_empty(), "the second run changed: {changes:?}");

    // An edited config (and a box's own asound.conf) survive a rerun.
    let edited = "# edited on the box\ndevice_id = \"shop-99\"\n";
    std::fs::write(root.join("etc/voxgate/voxgate.toml"), edited).unwrap();
    std::fs::write(root.join("etc/asound.conf"), "# the box's own\n").unwrap();
    let o = install(&args);
    assert!(o.status.success(), "third run:\n{}", show(&o));
    assert_eq!(read(&root.join("etc/voxgate/voxgate.toml")), edited);
    assert_eq!(read(&root.join("etc/asound.conf")), "# the box's own\n");
    let all = format!("{}{}", text(&o.stdout), text(&o.stderr));
    assert!(
        all.contains("kept existing /etc/voxgate/voxgate.toml"),
        "third run:\n{all}"
    );
    // The box's asound.conf lacks the board's PCMs: the installer says how to add them.
    assert!(
        all.contains("</usr/share/voxgate/board/rpi4/asound.conf>"),
        "third run:\n{all}"
    );

    std::fs::remove_dir_all(root).unwrap();
    std::fs::remove_dir_all(work).unwrap();
}

#[test]
fn install_both_roles_with_a_tpm_and_a_narrowed_lan() {
    assert_root();
    let root = scratch_root("deploy-install-both");
    let r = root.to_str().unwrap();
    let o = install(&[
        "--root",
        r,
        "--board",
        "rpi-zero2w",
        "--binary",
        voxgate_testkit::lab::bin(),
        "--role",
        "both",
        "--tpm",
        "--lan-v4",
        "192.168.10.0/24,10.20.0.0/16",
        "--lan-v6",
        "fd00:10::/64",
    ]);
    assert!(o.status.success(), "scripts/install:\n{}", show(&o));
    for rel in [
        "usr/lib/systemd/system/voxgate.service",
        "usr/lib/systemd/system/voxgate-relay.service",
    ] {
        assert_meta(&root, rel, 0o644, "root", "root");
    }
    assert_same(
        &root,
        "etc/voxgate/relay.toml",
        &repo().join("examples/relay.toml"),
    );
    assert_meta(&root, "etc/voxgate/relay.toml", 0o640, "root", "voxgate");
    assert_same(
        &root,
        "usr/lib/sysusers.d/voxgate-tpm.conf",
        &repo().join("systemd/voxgate-tpm.sysusers"),
    );
    assert!(members(&root, "tss").contains(&"voxgate".to_string()));
    assert!(members(&root, "audio").contains(&"voxgate".to_string()));
    assert_same(
        &root,
        "etc/asound.conf",
        &repo().join("board/rpi-zero2w/asound.conf"),
    );

    let fw = root.join("etc/nftables.d/voxgate.conf");
    let rules = read(&fw);
    assert!(
        rules.contains("elements = { 192.168.10.0/24, 10.20.0.0/16 }")
            && rules.contains("elements = { fd00:10::/64 }")
            && !rules.contains("172.16.0.0/12"),
        "the LAN sets were not narrowed:\n{rules}"
    );
    let o = nft_check(&fw);
    assert!(o.status.success(), "narrowed firewall:\n{}", show(&o));
    std::fs::remove_dir_all(root).unwrap();
}

#[test]
fn install_refuses_clearly() {
    assert_root();
    let root = scratch_root("deploy-install-refuse");
    let r = root.to_str().unwrap();
    let missing = root.join("no-such-dir");
    let bin = voxgate_testkit::lab::bin();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "--root",
                missing.to_str().unwrap(),
                "--board",
                "rpi4",
                "--binary",
                bin,
            ],
            "does not exist",
        ),
        (
            vec!["--root", r, "--board", "rpi9", "--binary", bin],
            "unknown board `rpi9`; known boards: generic-arm64 rpi-zero2w rpi3 rpi4 rpi5",
        ),
        (
            vec![
                "--root",
                r,
                "--board",
                "rpi4",
                "--binary",
                "/nonexistent/voxgate",
            ],
            "binary /nonexistent/voxgate does not exist",
        ),
        (
            vec!["--board", "rpi4", "--binary", bin],
            "--root DIR is required",
        ),
        (
            vec!["--root", r, "--binary", bin],
            "--board NAME is required",
        ),
        (
            vec![
                "--root", r, "--board", "rpi4", "--binary", bin, "--role", "cloud",
            ],
            "--role must be gateway, relay or both",
        ),
    ];
    for (args, want) in cases {
        let before = snapshot(&root);
        let o = install(&args);
        assert!(!o.status.success(), "{args:?} succeeded:\n{}", show(&o));
        assert!(
            text(&o.stderr).contains(want),
            "{args:?}: stderr lacks `{want}`:\n{}",
            show(&o)
        );
        assert!(
            diff(&before, &snapshot(&root)).is_empty(),
            "{args:?} changed the root although it refused"
        );
    }
    // A directory that is not a root file system.
    let empty = test_dir("deploy-install-empty");
    let o = install(&[
        "--root",
        empty.to_str().unwrap(),
        "--board",
        "rpi4",
        "--binary",
        bin,
    ]);
    assert!(
        !o.status.success() && text(&o.stderr).contains("does not look like a root file system"),
        "{}",
        show(&o)
    );
    std::fs::remove_dir_all(root).unwrap();
    std::fs::remove_dir_all(empty).unwrap();
}

// --- the units under a real systemd ------------------------------------------------

/// Whether this kernel enforces Landlock: probed on a throwaway thread (the
/// restriction is per thread and ends with it).
fn kernel_has_landlock() -> bool {
    std::thread::spawn(|| {
        use landlock::{ABI, Access, AccessFs, LandlockStatus, Ruleset, RulesetAttr};
        let status = Ruleset::default()
            .handle_access(AccessFs::from_all(ABI::V1))
            .and_then(|r| r.create())
            .and_then(|r| r.restrict_self());
        matches!(
            status.map(|s| s.landlock),
            Ok(LandlockStatus::Available { .. })
        )
    })
    .join()
    .unwrap()
}

/// Runs as root inside the container: sets up a relay and a gateway from the
/// installed units, starts them with systemctl, and reports `key=value` lines.
const HARNESS: &str = r#"#!/bin/bash
exec >/out/harness.log 2>&1
set -x
r() { printf '%s=%s\n' "$1" "$2" >>/out/result; }
install -m 0755 /vg/voxgate /usr/bin/voxgate
r audio_gid "$(getent group audio | cut -d: -f3)"
r voxgate_groups "$(id -Gn voxgate)"
r dirs "$(stat -c '%n:%a:%U:%G' /etc/voxgate /var/lib/voxgate /var/lib/voxgate-relay /var/lib/voxgate-relay/recordings | tr '\n' ' ')"
install -m 0640 -o root -g voxgate /vg/voxgate.toml /vg/relay.toml /etc/voxgate/
install -m 0644 /vg/asound.conf /etc/asound.conf
runuser -u voxgate -- voxgate relay init --config /etc/voxgate/relay.toml
voxgate relay dev-cert --config /etc/voxgate/relay.toml --device-id box-1 --out /run/box
install -m 0644 /run/box/device.pem /run/box/ca.pem /etc/voxgate/
install -m 0600 -o voxgate -g voxgate /run/box/device.key /etc/voxgate/
# The gateway's sandbox around a probe script instead of the daemon.
sed -e 's|^ExecStart=.*|ExecStart=/vg/probe.sh|' -e 's|^Type=notify|Type=oneshot|' \
    -e '/^WatchdogSec/d' -e '/^Restart=/d' /etc/systemd/system/voxgate.service \
    >/run/systemd/system/vg-probe.service
install -m 0640 -o root -g audio /dev/null /etc/vg-audio-probe
systemctl daemon-reload
systemctl start vg-probe.service; r probe_rc $?
journalctl -u vg-probe.service -o cat --no-pager >/out/probe.log
systemctl start voxgate-relay.service; r voxgate-relay.start $?
systemctl start voxgate.service; r voxgate.start $?
# Longer than WatchdogSec=10s: a daemon that does not ping is restarted.
sleep 13
for u in voxgate voxgate-relay; do
  for p in ActiveState SubState NRestarts WatchdogUSec StatusText; do
    r "$u.$p" "$(systemctl show -p $p --value $u.service)"
  done
  pid="$(systemctl show -p MainPID --value $u.service)"
  for f in CapInh CapPrm CapEff CapBnd CapAmb NoNewPrivs Seccomp Groups; do
    r "$u.$f" "$(awk -v f="$f:" '$1 == f { $1 = ""; sub(/^ /, ""); sub(/ +$/, ""); print }' /proc/$pid/status)"
  done
done
exec 3<>/dev/tcp/127.0.0.1/9464 && printf 'GET /metrics HTTP/1.0\r\n\r\n' >&3 \
  && r frames_sent "$(awk '$1 == "voxgate_frames_sent_total" { print $2 }' <&3)"
exec 3<&-
journalctl -u voxgate.service -u voxgate-relay.service -o cat --no-pager >/out/journal.log
# The optional device-key credential, now present.
mkdir -p /etc/credstore.encrypted
printf 'not-a-real-key' | systemd-creds encrypt --name=voxgate-device-key --with-key=host - \
  /etc/credstore.encrypted/voxgate-device-key
systemctl restart voxgate.service; r cred.restart $?
r cred.file "$(stat -c '%a:%U' /run/credentials/voxgate.service/voxgate-device-key)"
r cred.active "$(systemctl is-active voxgate.service)"
r done yes
systemctl poweroff --no-block
"#;

/// Runs inside voxgate.service's sandbox (see HARNESS).
const PROBE: &str = r#"#!/bin/bash
r() { printf 'probe.%s=%s\n' "$1" "$2"; }
r uid "$(id -u)"
cat /etc/vg-audio-probe >/dev/null 2>&1 && r audio_file readable || r audio_file denied
[ -e /proc/cpuinfo ] && r cpuinfo visible || r cpuinfo hidden
r pids "$(ls -d /proc/[0-9]* | wc -l)"
touch /etc/vg-write-probe 2>/dev/null && r etc writable || r etc read-only
touch /var/lib/voxgate/probe 2>/dev/null && r state writable || r state read-only
ls /var/lib/voxgate-relay >/dev/null 2>&1 && r relay_state visible || r relay_state hidden
r credentials "$(ls -A "${CREDENTIALS_DIRECTORY:-/nonexistent}" 2>&1 | tr '\n' ' ')"
"#;

const TEST_UNIT: &str = "[Unit]
Description=voxgate unit harness
After=basic.target systemd-sysusers.service systemd-tmpfiles-setup.service
[Service]
Type=oneshot
ExecStart=/vg/harness.sh
";

const TEST_TARGET: &str = "[Unit]
Description=voxgate unit harness
Requires=basic.target vg-test.service
After=vg-test.service
AllowIsolate=yes
";

const GATEWAY_CONFIG: &str = r#"device_id = "box-1"
[relay]
address = "127.0.0.1:443"
server_name = "relay.voxgate.local"
ca = "ca.pem"
[identity]
cert = "device.pem"
key = "device.key"
[capture]
device = "voxcap"
[playback]
device = "voxplay"
[telemetry]
log = "info"
metrics = "127.0.0.1:9464"
"#;

const RELAY_CONFIG: &str = r#"listen = "0.0.0.0:443"
state_dir = "/var/lib/voxgate-relay"
recordings = "/var/lib/voxgate-relay/recordings"
server_name = "relay.voxgate.local"
[downlink]
mode = "echo"
[telemetry]
log = "info"
"#;

/// Silence from /dev/zero in, /dev/null out: both allowed by DevicePolicy=closed.
const ASOUND: &str = r#"pcm.voxcap_file { type file slave.pcm "null" file "/dev/null" infile "/dev/zero" format "raw" hint.show off }
pcm.voxcap { type plug slave { pcm "voxcap_file" format S16_LE rate 48000 channels 1 } hint { show on description "test mic" } }
pcm.voxplay_file { type file slave.pcm "null" file "/dev/null" format "raw" hint.show off }
pcm.voxplay { type plug slave { pcm "voxplay_file" format S16_LE rate 48000 channels 1 } hint { show on description "test speaker" } }
"#;

/// Boots systemd 252 in a container over a throwaway overlay of this host
/// (`systemd-nspawn --volatile=overlay`: nothing is written to the host), with
/// the repository's units, sysusers.d and tmpfiles.d entries, and starts the
/// relay and the gateway with `systemctl start`. Checks what no score can:
/// both daemons reach READY under the full hardening, keep the watchdog fed,
/// run with the expected credentials, the gateway streams to the relay on
/// UDP 443, the device-key credential is optional, and the binary's own
/// Landlock and seccomp still install under SystemCallFilter=.
#[test]
fn units_start_and_stream_under_systemd() {
    assert_root();
    let dir = test_dir("deploy-systemd");
    let (root, out, vg) = (dir.join("root"), dir.join("out"), dir.join("vg"));
    for d in [&root, &out, &vg] {
        std::fs::create_dir_all(d).unwrap();
    }
    let exe = |p: &Path, text: &str| {
        std::fs::write(p, text).unwrap();
        std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    };
    exe(&vg.join("harness.sh"), HARNESS);
    exe(&vg.join("probe.sh"), PROBE);
    for (name, text) in [
        ("vg-test.service", TEST_UNIT),
        ("vg-test.target", TEST_TARGET),
        ("voxgate.toml", GATEWAY_CONFIG),
        ("relay.toml", RELAY_CONFIG),
        ("asound.conf", ASOUND),
    ] {
        std::fs::write(vg.join(name), text).unwrap();
    }
    std::fs::copy(voxgate_testkit::lab::bin(), vg.join("voxgate")).unwrap();

    let sys = repo().join("systemd");
    let binds = [
        (out.clone(), "/out", false),
        (vg.clone(), "/vg", true),
        (
            sys.join("voxgate.service"),
            "/etc/systemd/system/voxgate.service",
            true,
        ),
        (
            sys.join("voxgate-relay.service"),
            "/etc/systemd/system/voxgate-relay.service",
            true,
        ),
        (
            sys.join("voxgate.sysusers"),
            "/etc/sysusers.d/voxgate.conf",
            true,
        ),
        (
            sys.join("voxgate.tmpfiles"),
            "/etc/tmpfiles.d/voxgate.conf",
            true,
        ),
        (
            vg.join("vg-test.service"),
            "/etc/systemd/system/vg-test.service",
            true,
        ),
        (
            vg.join("vg-test.target"),
            "/etc/systemd/system/vg-test.target",
            true,
        ),
    ];
    let mut nspawn = format!(
        "exec systemd-nspawn -D {} --volatile=overlay --register=no --keep-unit --link-journal=no --private-network --console=pipe",
        root.display()
    );
    for (src, dst, ro) in &binds {
        let opt = if *ro { "--bind-ro" } else { "--bind" };
        nspawn.push_str(&format!(" {opt}={}:{dst}", src.display()));
    }
    nspawn.push_str(" -b -- systemd.unit=vg-test.target");
    // In a private mount namespace: the bind of / disappears with it.
    // nspawn's own seccomp filter (systemd 252) predates Landlock and would
    // refuse it in the whole container; the units' filters still apply.
    let script = format!(
        "set -e\nmount --bind / {root}\nexport SYSTEMD_SECCOMP=0\n{nspawn}\n",
        root = root.display()
    );
    let o = run(
        Command::new("timeout")
            .args([
                "--kill-after=10",
                "300",
                "unshare",
                "--mount",
                "--propagation",
                "private",
            ])
            .args(["bash", "-c", &script]),
        "systemd-container and util-linux",
    );
    let harness = std::fs::read_to_string(out.join("harness.log")).unwrap_or_default();
    let journal = std::fs::read_to_string(out.join("journal.log")).unwrap_or_default();
    let probe = std::fs::read_to_string(out.join("probe.log")).unwrap_or_default();
    let results = std::fs::read_to_string(out.join("result")).unwrap_or_default();
    let context = format!(
        "--- nspawn\n{}\n--- results\n{results}\n--- probe\n{probe}\n--- journal\n{journal}\n--- harness\n{harness}",
        show(&o)
    );
    let mut r: BTreeMap<String, String> = BTreeMap::new();
    for l in results.lines().chain(probe.lines()) {
        if let Some((k, v)) = l.split_once('=') {
            r.insert(k.to_string(), v.to_string());
        }
    }
    let get = |k: &str| r.get(k).map(String::as_str).unwrap_or("<missing>");
    assert_eq!(get("done"), "yes", "the harness did not finish:\n{context}");

    // sysusers.d and tmpfiles.d at boot.
    let audio_gid = get("audio_gid").to_string();
    assert!(
        get("voxgate_groups")
            .split_whitespace()
            .any(|g| g == "audio"),
        "voxgate is not in audio:\n{context}"
    );
    for want in [
        "/etc/voxgate:750:root:voxgate",
        "/var/lib/voxgate:750:voxgate:voxgate",
        "/var/lib/voxgate-relay:750:voxgate:voxgate",
        "/var/lib/voxgate-relay/recordings:750:voxgate:voxgate",
    ] {
        assert!(get("dirs").contains(want), "{want}:\n{context}");
    }

    // The gateway's sandbox: audio group effective under PrivateUsers=,
    // /proc reduced, file system read-only except the state directory, no
    // credential when none is stored.
    assert_eq!(get("probe_rc"), "0", "{context}");
    for (k, v) in [
        ("probe.audio_file", "readable"),
        ("probe.cpuinfo", "hidden"),
        ("probe.etc", "read-only"),
        ("probe.state", "writable"),
        ("probe.relay_state", "hidden"),
        ("probe.credentials", ""),
    ] {
        assert_eq!(get(k), v, "{k}:\n{context}");
    }
    assert_ne!(get("probe.uid"), "0", "{context}");

    // Both daemons: READY reached, still running after the watchdog period,
    // no capabilities left (the relay keeps CAP_NET_BIND_SERVICE only in its
    // bounding set, which nothing can raise under no_new_privs).
    for (u, bounding) in [
        ("voxgate", "0000000000000000"),
        ("voxgate-relay", "0000000000000400"),
    ] {
        for (k, v) in [
            ("start", "0"),
            ("ActiveState", "active"),
            ("SubState", "running"),
            ("NRestarts", "0"),
            ("WatchdogUSec", "10s"),
            ("CapInh", "0000000000000000"),
            ("CapPrm", "0000000000000000"),
            ("CapEff", "0000000000000000"),
            ("CapAmb", "0000000000000000"),
            ("CapBnd", bounding),
            ("NoNewPrivs", "1"),
            ("Seccomp", "2"),
        ] {
            assert_eq!(get(&format!("{u}.{k}")), v, "{u}.{k}:\n{context}");
        }
        assert!(
            get(&format!("{u}.Groups"))
                .split_whitespace()
                .any(|g| g == audio_gid),
            "{u} runs without the audio group:\n{context}"
        );
    }
    let sent: f64 = get("frames_sent").parse().unwrap_or(0.0);
    assert!(
        sent > 0.0,
        "the gateway sent nothing to the relay:\n{context}"
    );
    let landlock = if kernel_has_landlock() {
        "\"landlock\":\"Fully\""
    } else {
        "\"landlock\":\"Not\""
    };
    assert_eq!(
        journal.matches(landlock).count(),
        2,
        "both daemons should report {landlock}:\n{context}"
    );
    assert_eq!(
        journal.matches("seccomp allow-list on").count(),
        2,
        "{context}"
    );

    // With the credential stored, systemd decrypts it for the service only.
    assert_eq!(get("cred.restart"), "0", "{context}");
    assert_eq!(get("cred.file"), "400:voxgate", "{context}");
    assert_eq!(get("cred.active"), "active", "{context}");
    std::fs::remove_dir_all(dir).unwrap();
}
