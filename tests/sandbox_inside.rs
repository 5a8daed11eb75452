//! The seccomp sandbox holds without systemd: `voxgate run` started as
//! root (the README's path without the unit) drops to `nobody`, and then
//! calls that would escape or widen the sandbox fail *inside the running
//! daemon*.
//!
//! How code runs inside it: gdb attaches to the serving daemon (root may
//! trace a non-dumpable process) and calls libc's `syscall()` in one of
//! its threads, which seccomp's TSYNC put under the same filter as every
//! other thread. Each forbidden call is chosen so that, without the filter,
//! it would succeed or fail with a different errno: the test tells the
//! filter's answer from the kernel's. Allowed calls made the same way
//! succeed, so a broken injection cannot pass for a refusal. The relay
//! (root, sandbox on) gets the same calls.
//!
//! The gateway also resolves the relay by name and starts its audio and
//! blocking-pool threads after the drop: DNS and thread creation work
//! inside the sandbox (glibc asks `clone3`, gets ENOSYS and uses `clone`).

use std::process::Command;
use std::time::Duration;
use voxgate_testkit::audio_env::{AlsaFileDevices, speech_fixture};
use voxgate_testkit::lab::{Lab, metric, wait_for};

/// The result and errno of each `syscall(args)` run inside `pid`.
fn syscalls_inside(pid: i32, calls: &[String]) -> Vec<(i64, i32)> {
    let mut cmd = Command::new("gdb");
    cmd.args(["-batch", "-nx", "-p", &pid.to_string()]);
    for c in calls {
        // Reset errno, call, read errno: three values per call.
        cmd.args([
            "-ex",
            "print *((int *(*)(void))__errno_location)() = 0",
            "-ex",
            &format!("print (long)syscall({c})"),
            "-ex",
            "print *((int *(*)(void))__errno_location)()",
        ]);
    }
    let out = cmd.output().expect("gdb (Debian package gdb)");
    let text = String::from_utf8_lossy(&out.stdout);
    let values: Vec<i64> = text
        .lines()
        .filter_map(|l| l.strip_prefix('$'))
        .filter_map(|l| l.split_once(" = "))
        .map(|(_, v)| v.trim().parse().unwrap_or_else(|_| panic!("gdb: {v}")))
        .collect();
    assert_eq!(
        values.len(),
        calls.len() * 3,
        "gdb did not run every call:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    values
        .chunks(3)
        .map(|v| (v[1], i32::try_from(v[2]).unwrap()))
        .collect()
}

fn call(nr: libc::c_long, args: &[u64]) -> String {
    let mut s = format!("{nr}L");
    for a in args {
        s.push_str(&format!(", {a}L"));
    }
    s
}

const CLONE_NEWUSER: u64 = libc::CLONE_NEWUSER as u64;
const CLONE_NEWNET: u64 = libc::CLONE_NEWNET as u64;
const CLONE_NEWNS: u64 = libc::CLONE_NEWNS as u64;
const CLONE_THREAD: u64 = libc::CLONE_THREAD as u64;
/// asm-generic ioctls.h, the same on all three architectures.
const TIOCSTI: u64 = 0x5412;

#[test]
fn forbidden_calls_fail_inside_the_running_daemon() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "this test needs root, as CI has"
    );
    let lab = Lab::new_public("sandbox-inside", "mode = \"none\"");
    let speech = speech_fixture(&lab.dir, "The sandbox holds without systemd.");
    let devs = AlsaFileDevices::new(&lab.dir, Some(&speech), None);
    let mut relay = lab.start_relay();
    let (cfg, gw_metrics) = lab.gateway_config("gw-inside", lab.quic_port, "");
    // The relay by name: the gateway resolves it after the drop, inside the
    // sandbox (hosts file, NSS, and glibc's netlink probe refused).
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        &format!("address = \"127.0.0.1:{}\"", lab.quic_port),
        &format!("address = \"localhost:{}\"", lab.quic_port),
    );
    assert!(text.contains("address = \"localhost:"), "{text}");
    let text = &text[..text.find("[privilege]").unwrap()];
    let d = lab.dir.display();
    std::fs::write(
        &cfg,
        format!(
            "{text}[privilege]\nuser = \"nobody\"\ngroups = [\"audio\"]\n[sandbox]\nread = [\"{d}\"]\nwrite = []\n[capture]\ndevice = \"voxcap\"\n[playback]\nenabled = false\n"
        ),
    )
    .unwrap();
    let env = vec![("ALSA_CONFIG_PATH".to_string(), devs.alsa_config_path_env())];
    let mut gw = lab.start_gateway(&cfg, &env);
    wait_for(Duration::from_secs(20), "streaming", || {
        gw.assert_running();
        metric(gw_metrics, "voxgate_frames_sent_total") >= 50.0
    });
    let pid = gw.pid();

    use libc::{
        AF_INET, AF_NETLINK, AF_PACKET, EAFNOSUPPORT, ENOSYS, EPERM, PR_SET_DUMPABLE,
        PR_SET_PDEATHSIG, SIGKILL, SOCK_DGRAM, SOCK_RAW, SYS_clone, SYS_clone3, SYS_getpid,
        SYS_ioctl, SYS_prctl, SYS_setns, SYS_socket, SYS_unshare,
    };
    let cases: Vec<(&str, String, Result<(), i32>)> = vec![
        // Allowed: the daemon's own kinds of calls still work.
        ("getpid", call(SYS_getpid, &[]), Ok(())),
        (
            "socket(AF_INET, SOCK_DGRAM)",
            call(SYS_socket, &[AF_INET as u64, SOCK_DGRAM as u64, 0]),
            Ok(()),
        ),
        ("prctl(PR_GET_DUMPABLE)", call(SYS_prctl, &[3]), Ok(())),
        // Without the filter nobody may create a user namespace (and with
        // it a network namespace): unshare would succeed.
        (
            "unshare(CLONE_NEWUSER|CLONE_NEWNET)",
            call(SYS_unshare, &[CLONE_NEWUSER | CLONE_NEWNET]),
            Err(EPERM),
        ),
        ("setns(0, 0)", call(SYS_setns, &[0, 0]), Err(EPERM)),
        // Without the filter: EINVAL (CLONE_THREAD without CLONE_SIGHAND),
        // so nothing is forked even if the filter were broken.
        (
            "clone(CLONE_NEWUSER|CLONE_NEWNET|CLONE_NEWNS|CLONE_THREAD)",
            call(
                SYS_clone,
                &[
                    CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWNS | CLONE_THREAD,
                    0,
                    0,
                    0,
                    0,
                ],
            ),
            Err(EPERM),
        ),
        // Without the filter: EINVAL (size 0) or EFAULT.
        ("clone3(NULL, 0)", call(SYS_clone3, &[0, 0]), Err(ENOSYS)),
        // Without the filter: EPERM for nobody (no CAP_NET_RAW).
        (
            "socket(AF_PACKET, SOCK_RAW)",
            call(SYS_socket, &[AF_PACKET as u64, SOCK_RAW as u64, 0]),
            Err(EAFNOSUPPORT),
        ),
        // Without the filter: a route netlink socket opens for anyone.
        (
            "socket(AF_NETLINK, SOCK_RAW, NETLINK_ROUTE)",
            call(SYS_socket, &[AF_NETLINK as u64, SOCK_RAW as u64, 0]),
            Err(EAFNOSUPPORT),
        ),
        // Without the filter: succeeds, and makes the keys' memory
        // readable by ptrace and core dumps again.
        (
            "prctl(PR_SET_DUMPABLE, 1)",
            call(SYS_prctl, &[PR_SET_DUMPABLE as u64, 1]),
            Err(EPERM),
        ),
        // Without the filter: ENOTTY on a descriptor that is no terminal,
        // and on the terminal of a root shell, a typed command.
        (
            "ioctl(0, TIOCSTI)",
            call(SYS_ioctl, &[0, TIOCSTI, 0]),
            Err(EPERM),
        ),
        // Without the filter: succeeds (any process may do it).
        (
            "prctl(PR_SET_PDEATHSIG, SIGKILL)",
            call(SYS_prctl, &[PR_SET_PDEATHSIG as u64, SIGKILL as u64]),
            Err(EPERM),
        ),
    ];
    // The gateway, and the relay (root with `privilege.stay_root`, sandbox
    // on): for root without the filter, unshare and AF_PACKET would succeed.
    for (who, pid) in [("gateway", pid), ("relay", relay.pid())] {
        let calls: Vec<String> = cases.iter().map(|(_, c, _)| c.clone()).collect();
        let results = syscalls_inside(pid, &calls);
        let wrong: Vec<String> = cases
            .iter()
            .zip(&results)
            .filter(|((_, _, want), (rc, errno))| match want {
                Ok(()) => *rc < 0,
                Err(e) => (*rc, *errno) != (-1, *e),
            })
            .map(|((name, _, want), (rc, errno))| {
                format!("{who}: {name}: expected {want:?}, got rc {rc} errno {errno}")
            })
            .collect();
        assert!(wrong.is_empty(), "{wrong:#?}");
        assert_eq!(
            results[0].0,
            i64::from(pid),
            "getpid ran in another process"
        );
        assert_eq!(results[2].0, 0, "the {who} is dumpable");
    }

    // Still non-dumpable, still in its own namespaces, still streaming.
    use std::os::unix::fs::MetadataExt;
    let environ = std::fs::metadata(format!("/proc/{pid}/environ")).unwrap();
    assert_eq!(environ.uid(), 0, "the process became dumpable");
    for ns in ["net", "user"] {
        assert_eq!(
            std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).unwrap(),
            std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap(),
            "the daemon entered a new {ns} namespace"
        );
    }
    let before = metric(gw_metrics, "voxgate_frames_sent_total");
    wait_for(Duration::from_secs(10), "more frames", || {
        gw.assert_running();
        metric(gw_metrics, "voxgate_frames_sent_total") >= before + 25.0
    });
    let log = gw.log_text();
    assert!(gw.stop().success(), "{log}");
    relay.stop();
    // The relay (sandboxed too) made the recording 0600 in 0700 directories.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let recordings = lab.recordings();
    assert!(!recordings.is_empty());
    for r in recordings {
        assert_eq!(mode(&r), 0o600, "{}", r.display());
        for d in r.ancestors().skip(1).take(2) {
            assert_eq!(mode(d), 0o700, "{}", d.display());
        }
    }
}
