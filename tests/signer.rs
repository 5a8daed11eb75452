//! The issuing CA's key never enters the Internet-facing relay process.
//!
//! `voxgate relay run` spawns the signer process, which holds the key and
//! signs what the relay asks for. The test reads the memory of both
//! processes (`/proc/PID/mem`, as root) and looks for the issuing key's
//! private scalar: found in the signer's (so the search works), never in
//! the relay's, before and after an issuing-CA rotation and the
//! enrollments and renewals that make the signer sign with the new key.
//! The signer is sandboxed (seccomp, no_new_privs), and when it is killed
//! the relay refuses enrollments with a clear error instead of hanging.

use std::time::Duration;
use voxgate::pki::sealed;
use voxgate_testkit::cmd::both as text;
use voxgate_testkit::enroll::{Setup, signing_issuer};
use voxgate_testkit::lab::{Lab, Proc, wait_for};

/// The private scalar of the issuing CA `fp`'s key (unsealed by the test).
fn issuing_scalar(lab: &Lab, fp: &str) -> Vec<u8> {
    let cfg = voxgate::config::RelayConfig::load(&lab.dir.join("relay.toml")).unwrap();
    let (_, key_path) = voxgate::relay::authority::issuing_paths(&cfg.state_dir, fp);
    let material = cfg.ca_binding.material().unwrap();
    let pkcs8 = sealed::unseal(&material, &std::fs::read(key_path).unwrap()).unwrap();
    // ECPrivateKey: version 1, then the 32-byte private key.
    let at = pkcs8
        .windows(5)
        .position(|w| w == [0x02, 0x01, 0x01, 0x04, 0x20])
        .expect("an EC private key");
    pkcs8[at + 5..at + 37].to_vec()
}

/// Whether `needle` is anywhere in the writable memory of process `pid`.
fn in_memory(pid: i32, needle: &[u8]) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let mut mem = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    let mut scanned = 0usize;
    for line in maps.lines() {
        let mut f = line.split_whitespace();
        let (range, perms) = (f.next().unwrap(), f.next().unwrap());
        if !perms.starts_with("rw") {
            continue;
        }
        let (a, b) = range.split_once('-').unwrap();
        let (a, b) = (
            u64::from_str_radix(a, 16).unwrap(),
            u64::from_str_radix(b, 16).unwrap(),
        );
        let mut buf = vec![0u8; (b - a) as usize];
        if mem.seek(SeekFrom::Start(a)).is_err() || mem.read_exact(&mut buf).is_err() {
            continue;
        }
        scanned += buf.len();
        if buf.windows(needle.len()).any(|w| w == needle) {
            return true;
        }
    }
    assert!(scanned > 1 << 20, "scanned only {scanned} bytes of {pid}");
    false
}

/// The relay's signer: its child process.
fn signer_of(relay: i32) -> i32 {
    let children = std::fs::read_to_string(format!("/proc/{relay}/task/{relay}/children")).unwrap();
    let pids: Vec<i32> = children
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(pids.len(), 1, "the relay's children: {pids:?}");
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", pids[0])).unwrap();
    assert!(
        String::from_utf8_lossy(&cmdline).contains("signer"),
        "{cmdline:?}"
    );
    pids[0]
}

fn status(pid: i32, field: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix(&format!("{field}:"))
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_default()
}

#[test]
fn the_issuing_key_lives_in_the_signer_process_only() {
    let lab = Lab::new("signer", "mode = \"none\"");
    let mut relay = lab.start_relay();
    let relay_pid = relay.pid();
    let signer = signer_of(relay_pid);
    // The signer signs: an enrollment goes through it.
    Setup::new(&lab, "gw-1").run();
    let first = signing_issuer(&lab);
    let key = issuing_scalar(&lab, &first);
    assert!(
        in_memory(signer, &key),
        "the search does not find the key in the signer"
    );
    assert!(
        !in_memory(relay_pid, &key),
        "the issuing key is in the relay's memory"
    );
    // Sandboxed: seccomp filter on, no new privileges.
    assert_eq!(status(signer, "Seccomp"), "2");
    assert_eq!(status(signer, "NoNewPrivs"), "1");

    // A rotation: the relay follows it, the signer signs with the new key
    // (the relay renews its own certificate from it at once).
    let o = lab.relay_cmd(&["ca", "rotate-issuing", "--retire-after", "1h"]);
    assert!(o.status.success(), "{}", text(&o));
    let second = signing_issuer(&lab);
    assert_ne!(second, first);
    wait_for(
        Duration::from_secs(10),
        "the relay certificate from the new CA",
        || {
            let chain = voxgate::pki::files::read_certs(&lab.dir.join("relay/relay.pem")).unwrap();
            voxgate::pki::name::fingerprint(&chain[1]) == second
        },
    );
    Setup::new(&lab, "gw-2").run();
    let key2 = issuing_scalar(&lab, &second);
    assert!(in_memory(signer, &key2));
    assert!(
        !in_memory(relay_pid, &key2),
        "the new issuing key is in the relay's memory"
    );
    assert!(!in_memory(relay_pid, &key));

    // Without its signer the relay refuses enrollments, with the reason.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(signer),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let (o, _) = Setup::new(&lab, "gw-3").output();
    assert!(!o.status.success(), "enrolled without a signer");
    wait_for(Duration::from_secs(5), "the relay's error", || {
        relay
            .log_text()
            .contains("the signer process does not answer")
    });
    relay.assert_running();
    relay.stop();
}

/// The signer as its own unit would run it (`voxgate relay signer
/// --listen`): under its own account (`nobody` here), on a socket, owning
/// the issuing keys, answering the relay's account only.
#[test]
fn the_signer_unit_serves_the_relays_account_only() {
    let lab = Lab::new_public("signer-unit", "mode = \"none\"");
    let socket = lab.dir.join("signer.sock");
    let cfg = lab.dir.join("relay.toml");
    let text0 = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        format!(
            "{text0}[signer]\nsocket = \"{}\"\nuser = \"nobody\"\n",
            socket.display()
        ),
    )
    .unwrap();
    // Run as root, the operator's commands give the issuing keys to the
    // signer's account (the relay's, the state directory's owner, keeps the
    // rest), and the directory lets it in (the unit's group does that).
    let o = lab.relay_cmd(&["ca", "rotate-issuing", "--retire-after", "1h"]);
    assert!(o.status.success(), "{}", text(&o));
    let state = lab.dir.join("relay");
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
    let fp = signing_issuer(&lab);
    let key_file = voxgate::relay::ca_key::key_path(&state, &fp, "sealed");
    let meta = std::fs::metadata(&key_file).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o777), (65534, 0o600));
    assert_eq!(std::fs::metadata(state.join("relay.pem")).unwrap().uid(), 0);

    let start_signer = || {
        let log = lab.dir.join(format!("signer-{}.log", fastrand::u32(..)));
        let child = std::process::Command::new(voxgate_testkit::lab::bin())
            .args(["relay", "signer", "--listen", "--config"])
            .arg(&cfg)
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        // Stopped when dropped, also when an assertion fails.
        let signer = Proc {
            child,
            name: "signer".into(),
            log: log.clone(),
        };
        wait_for(Duration::from_secs(10), "the signer's socket", || {
            std::fs::read_to_string(&log)
                .unwrap()
                .contains("signer ready")
        });
        (signer, log)
    };
    let (signer, signer_log) = start_signer();
    let signer_pid = signer.pid();
    assert_eq!(
        status(signer_pid, "Uid").split_whitespace().next(),
        Some("65534")
    );
    assert_eq!(status(signer_pid, "Seccomp"), "2");

    let mut relay = lab.start_relay();
    let relay_pid = relay.pid();
    // No child: the relay signs through the unit's socket.
    let children =
        std::fs::read_to_string(format!("/proc/{relay_pid}/task/{relay_pid}/children")).unwrap();
    assert!(children.trim().is_empty(), "the relay spawned {children}");
    Setup::new(&lab, "gw-1").run();
    let key = issuing_scalar(&lab, &fp);
    assert!(in_memory(signer_pid, &key), "the key is not in the signer");
    assert!(
        !in_memory(relay_pid, &key),
        "the issuing key is in the relay"
    );

    // Another account connects and asks: the signer hangs up unanswered.
    let attack = std::process::Command::new("setpriv")
        .args([
            "--reuid=daemon",
            "--regid=daemon",
            "--clear-groups",
            "/usr/bin/python3",
            "-c",
        ])
        .arg(
            "import socket,sys\n\
             s=socket.socket(socket.AF_UNIX)\n\
             s.connect(sys.argv[1])\n\
             s.settimeout(5)\n\
             try:\n\
             \x20s.sendall(bytes([0,4])+b'{}{}')\n\
             \x20print('answered' if s.recv(100) else 'closed')\n\
             except (BrokenPipeError, ConnectionResetError):\n\
             \x20print('closed')",
        )
        .arg(&socket)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&attack.stdout).trim(),
        "closed",
        "{}",
        text(&attack)
    );
    assert!(
        std::fs::read_to_string(&signer_log)
            .unwrap()
            .contains("a process of another account connected; refused"),
        "the refusal is not logged"
    );

    // The unit restarts (a rotation to a credential it is given at start):
    // the relay connects again by itself.
    drop(signer);
    let (_signer, _) = start_signer();
    Setup::new(&lab, "gw-2").run();
    relay.assert_running();
    relay.stop();
}
