//! Deployment: every board folder (profile, firewall, ALSA sample,
//! config.txt fragment). CI runs as root, as on the box; nothing is
//! skipped: a missing tool fails with the Debian package to install.

use std::path::{Path, PathBuf};
use std::process::Command;
use voxgate_testkit::cmd::{assert_root, nft_check, read, run, show, text};
use voxgate_testkit::lab::{repo, test_dir};

const BOARDS: [&str; 5] = ["rpi3", "rpi4", "rpi5", "rpi-zero2w", "generic-arm64"];

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
