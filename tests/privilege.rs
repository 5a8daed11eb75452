//! Bind, then drop: `voxgate run` started as root ends up unprivileged,
//! capability-less, under no_new_privs, Landlock and seccomp, and still
//! streams. Misconfigurations stop it before it does anything as root.
//! CI runs as root, as on the box; the tests skip nothing.

use std::process::Command;
use std::time::Duration;
use voxgate_testkit::audio_env::{AlsaFileDevices, speech_fixture};
use voxgate_testkit::lab::{Lab, bin, metric, wait_for};

fn status_field(pid: i32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("{field} not in /proc/{pid}/status"))
        .trim()
        .to_string()
}

fn drop_to(user: &str, lab: &Lab) -> String {
    let d = lab.dir.display();
    format!(
        "[privilege]\nuser = \"{user}\"\ngroups = [\"audio\"]\n[sandbox]\nread = [\"{d}\"]\nwrite = []\n[capture]\ndevice = \"voxcap\"\n[playback]\nenabled = false\n"
    )
}

#[test]
fn started_as_root_runs_unprivileged_and_sandboxed_while_streaming() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "this test needs root, as CI has"
    );
    let lab = Lab::new_public("priv-drop", "mode = \"none\"");
    let speech = speech_fixture(
        &lab.dir,
        "Privileges are dropped before any audio is captured.",
    );
    let devs = AlsaFileDevices::new(&lab.dir, Some(&speech), None);
    let mut relay = lab.start_relay();
    let (cfg, gw_metrics) = lab.gateway_config("gw-priv", lab.quic_port, "");
    // Replace the development settings with a real drop to `nobody`.
    let text = std::fs::read_to_string(&cfg).unwrap();
    let text = &text[..text.find("[privilege]").unwrap()];
    std::fs::write(&cfg, format!("{text}{}", drop_to("nobody", &lab))).unwrap();
    let env = vec![("ALSA_CONFIG_PATH".to_string(), devs.alsa_config_path_env())];
    let mut gw = lab.start_gateway(&cfg, &env);
    wait_for(Duration::from_secs(20), "streaming", || {
        gw.assert_running();
        metric(gw_metrics, "voxgate_frames_sent_total") >= 50.0
    });
    let pid = gw.pid();
    let uid = status_field(pid, "Uid");
    let gid = status_field(pid, "Gid");
    assert!(uid.split_whitespace().all(|u| u == "65534"), "Uid: {uid}");
    assert!(gid.split_whitespace().all(|g| g != "0"), "Gid: {gid}");
    let groups = status_field(pid, "Groups");
    assert!(
        !groups.split_whitespace().any(|g| g == "0"),
        "Groups: {groups}"
    );
    for cap in ["CapEff", "CapPrm", "CapBnd", "CapAmb", "CapInh"] {
        assert_eq!(status_field(pid, cap), "0000000000000000", "{cap}");
    }
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");
    assert_eq!(status_field(pid, "Seccomp"), "2");
    // Non-dumpable: its /proc files belong to root although it runs as nobody.
    use std::os::unix::fs::MetadataExt;
    let environ = std::fs::metadata(format!("/proc/{pid}/environ")).unwrap();
    assert_eq!(environ.uid(), 0, "the process is dumpable");
    // Still streaming after the checks.
    let before = metric(gw_metrics, "voxgate_frames_sent_total");
    wait_for(Duration::from_secs(5), "more frames", || {
        metric(gw_metrics, "voxgate_frames_sent_total") >= before + 25.0
    });
    // The process proved it to itself: setuid(0) failed, and a path outside
    // the Landlock rules could not be opened although permissions allow it.
    let log = gw.log_text();
    assert!(
        log.contains("dropped privileges; setuid(0) verified to fail"),
        "{log}"
    );
    assert!(
        log.contains("a path outside it was verified unreadable"),
        "{log}"
    );
    assert!(log.contains("\"user\":\"nobody\""), "{log}");
    assert!(gw.stop().success(), "{log}");
    relay.stop();
}

fn refused(name: &str, privilege: &str, expect: &str) {
    let lab = Lab::new(name, "mode = \"none\"");
    let (cfg, metrics) = lab.gateway_config("gw-bad", lab.quic_port, "");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let text = &text[..text.find("[privilege]").unwrap()];
    std::fs::write(&cfg, format!("{text}{privilege}")).unwrap();
    let out = Command::new(bin())
        .args(["run", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{name}: it ran:\n{err}");
    assert!(err.contains(expect), "{name}: {err}");
    // It stopped before binding anything.
    assert!(voxgate_testkit::lab::scrape(metrics).is_none());
}

#[test]
fn misconfigurations_stop_before_running_as_root() {
    refused("priv-nouser", "", "`privilege.user` is not set");
    refused(
        "priv-ghost",
        "[privilege]\nuser = \"voxgate-no-such-user\"\n",
        "user `voxgate-no-such-user` is not in /etc/passwd",
    );
    refused(
        "priv-root",
        "[privilege]\nuser = \"root\"\n",
        "must not be root",
    );
    refused(
        "priv-group",
        "[privilege]\nuser = \"nobody\"\ngroups = [\"no-such-group\"]\n",
        "group `no-such-group` is not in /etc/group",
    );
}

#[test]
fn a_key_file_others_can_read_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let lab = Lab::new("priv-keymode", "mode = \"none\"");
    let (cfg, _) = lab.gateway_config("gw-key", lab.quic_port, "");
    let key = lab.dir.join("gw-key/device.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = Command::new(bin())
        .args(["run", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("is readable by others (mode 0644)"), "{err}");
    assert!(err.contains("chmod 600"), "{err}");
    assert!(
        !err.contains("BEGIN"),
        "the key must never be printed: {err}"
    );
}

/// Started unprivileged with ambient CAP_NET_BIND_SERVICE (as systemd does
/// with AmbientCapabilities=), the relay binds a privileged port and then
/// drops the capability.
#[test]
fn ambient_bind_capability_is_dropped_after_binding() {
    let lab = Lab::new_public("priv-ambient", "mode = \"none\"");
    // The relay runs as nobody: it must own its state.
    let st = Command::new("chown")
        .args(["-R", "nobody"])
        .arg(lab.dir.join("relay"))
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::create_dir_all(lab.dir.join("recordings")).unwrap();
    Command::new("chown")
        .args(["nobody"])
        .arg(lab.dir.join("recordings"))
        .status()
        .unwrap();
    let port = 400 + (std::process::id() % 100) as u16; // privileged, per-run
    let metrics = format!("127.0.0.1:{}", voxgate_testkit::lab::free_tcp());
    let cfg = lab.dir.join("relay-ambient.toml");
    let d = lab.dir.display();
    std::fs::write(
        &cfg,
        format!("listen = \"127.0.0.1:{port}\"\nstate_dir = \"relay\"\nrecordings = \"recordings\"\nserver_name = \"relay.voxgate.test\"\n[telemetry]\nmetrics = \"{metrics}\"\n[sandbox]\nread = [\"{d}\"]\n{}", lab.ca_section()),
    )
    .unwrap();
    let log = lab.dir.join("relay-ambient.log");
    let child = Command::new("setpriv")
        .args([
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            "--inh-caps=+net_bind_service",
            "--ambient-caps=+net_bind_service",
            bin(),
            "relay",
            "run",
            "--config",
        ])
        .arg(&cfg)
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("setpriv (util-linux)");
    let mut p = voxgate_testkit::lab::Proc {
        child,
        name: "relay (ambient)".into(),
        log,
    };
    let addr = metrics.parse().unwrap();
    wait_for(Duration::from_secs(10), "the relay to start", || {
        p.assert_running();
        voxgate_testkit::lab::scrape(addr).is_some()
    });
    let pid = p.pid();
    assert_eq!(status_field(pid, "CapAmb"), "0000000000000000");
    assert_eq!(status_field(pid, "CapEff"), "0000000000000000");
    assert_eq!(status_field(pid, "CapPrm"), "0000000000000000");
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");
    // It holds the privileged port.
    let udp = std::fs::read_to_string("/proc/net/udp").unwrap();
    assert!(
        udp.contains(&format!(":{port:04X} ")),
        "port {port} not bound"
    );
    assert!(p.stop().success(), "{}", p.log_text());
}

/// A state directory that another user owns could hold files or links
/// planted by that user: the daemon refuses it before reading anything.
#[test]
fn a_state_directory_of_another_user_is_refused() {
    let lab = Lab::new("priv-stateowner", "mode = \"none\"");
    let state = lab.dir.join("relay");
    std::os::unix::fs::chown(&state, Some(4242), None).unwrap();
    let out = Command::new(bin())
        .args(["relay", "run", "--config"])
        .arg(lab.dir.join("relay.toml"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "it ran:\n{err}");
    assert!(err.contains("belongs to uid 4242"), "{err}");
    assert!(
        err.contains("must belong to root or to the service user"),
        "{err}"
    );
    assert!(voxgate_testkit::lab::scrape(lab.relay_metrics).is_none());
    // Given back to root, the same relay starts.
    std::os::unix::fs::chown(&state, Some(0), None).unwrap();
    let mut relay = lab.start_relay();
    relay.stop();
}

/// Every command starts without core dumps: `voxgate setup`, started as
/// `nobody` and waiting for a relay that never answers (a UDP socket this
/// test holds and never reads: setup's hardware step waits for it before
/// it reads the token), already has `RLIMIT_CORE` 0 and is non-dumpable
/// (its /proc files belong to root, not to nobody).
#[test]
fn commands_other_than_the_daemons_cannot_dump_core_either() {
    use std::os::unix::fs::MetadataExt;
    let dir = voxgate_testkit::lab::test_dir_in(&std::env::temp_dir(), "priv-nocore");
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let relay = silent.local_addr().unwrap().to_string();
    let mut child = Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", bin()])
        .args(["setup", "--relay", &relay, "--device-id", "gw-nocore"])
        .args(["--ca-fingerprint", &format!("SHA256:{}", "ab".repeat(32))])
        // The clock is not this test's matter (setup stops on an
        // unsynchronized one before it reads the token).
        .args(["--ignore-clock", "--token-file", "-", "--dir"])
        .arg(&dir)
        .arg("--config-out")
        .arg(dir.join("gw.toml"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("setpriv (util-linux)");
    let pid = child.id() as i32;
    let core = || {
        std::fs::read_to_string(format!("/proc/{pid}/limits"))
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("Max core file size"))
            .map(|l| {
                l.split_whitespace()
                    .skip(4)
                    .take(2)
                    .collect::<Vec<_>>()
                    .join(":")
            })
    };
    // setpriv execs voxgate in the same process: wait for voxgate's limit.
    wait_for(Duration::from_secs(10), "voxgate setup to start", || {
        assert!(child.try_wait().unwrap().is_none(), "setup exited");
        status_field(pid, "Uid").starts_with("65534") && core().as_deref() == Some("0:0")
    });
    let environ = std::fs::metadata(format!("/proc/{pid}/environ")).unwrap();
    assert_eq!(environ.uid(), 0, "setup is dumpable");
    let _ = child.kill();
    let _ = child.wait();
    drop(silent);
}
