//! Deployment: what scripts/install sets up on the board besides voxgate's
//! own files: the firewall loaded at boot (nftables.service enabled, the
//! include in /etc/nftables.conf) and what it lets out (DNS, NTP, apt over
//! HTTP/HTTPS, the relay named by the gateway config), the hardware
//! watchdog drop-in, and config.txt changed only after the technician
//! confirms the printed diff. The traffic is checked between two network
//! namespaces this test creates: nothing leaves them.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use voxgate_testkit::cmd::{assert_root, read, run, show, text};
use voxgate_testkit::lab::{bin, repo, test_dir};

fn scratch_root(name: &str) -> PathBuf {
    let root = test_dir(name);
    let w = |rel: &str, s: &str| {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, s).unwrap();
    };
    w("etc/passwd", "root:x:0:0:root:/root:/bin/bash\n");
    w("etc/group", "root:x:0:\naudio:x:29:\n");
    w("etc/shadow", "root:*:19000:0:99999:7:::\n");
    w("etc/gshadow", "root:*::\naudio:*::\n");
    // Debian's nftables package: its unit and default ruleset (this host's).
    w(
        "usr/lib/systemd/system/nftables.service",
        &read(Path::new("/lib/systemd/system/nftables.service")),
    );
    w("etc/nftables.conf", &read(Path::new("/etc/nftables.conf")));
    w(
        "boot/firmware/config.txt",
        "[all]\narm_64bit=1\ndtparam=audio=on\n",
    );
    root
}

fn install(root: &Path, extra: &[&str], stdin: &str) -> Output {
    let mut c = Command::new("bash");
    c.arg(repo().join("scripts/install"))
        .args([
            "--root",
            root.to_str().unwrap(),
            "--board",
            "rpi4",
            "--binary",
            bin(),
        ])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("bash");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "scripts/install {extra:?}:\n{}",
        show(&o)
    );
    o
}

#[test]
fn install_enables_the_firewall_and_watchdog_and_asks_before_config_txt() {
    assert_root();
    let root = scratch_root("deploy-board-setup");
    let boot = root.join("boot/firmware/config.txt");
    let before = read(&boot);

    // Declined: the diff is printed, the file is untouched.
    let o = install(&root, &["--relay", "relay.example.net:4433"], "n\n");
    let out = text(&o.stdout);
    assert!(
        out.contains("+dtparam=watchdog=on") && out.contains("Apply this change"),
        "{out}"
    );
    assert!(!out.contains("+dtoverlay=tpm-slb9670"), "no --tpm:\n{out}");
    assert_eq!(read(&boot), before);
    assert!(out.contains("rerun with --yes"), "{out}");

    // The firewall: included by /etc/nftables.conf, loaded at boot.
    let conf = read(&root.join("etc/nftables.conf"));
    assert!(
        conf.lines()
            .any(|l| l == "include \"/etc/nftables.d/*.conf\""),
        "{conf}"
    );
    let wants = root.join("etc/systemd/system/sysinit.target.wants/nftables.service");
    assert_eq!(
        std::fs::read_link(&wants).unwrap(),
        Path::new("/usr/lib/systemd/system/nftables.service")
    );
    let fw = read(&root.join("etc/nftables.d/voxgate.conf"));
    assert!(
        fw.contains("udp dport 4433 accept comment \"voxgate relay\"")
            && fw.contains("tcp dport { 80, 443 } accept comment \"apt\""),
        "{fw}"
    );
    // The watchdog, from the profile's [watchdog].
    assert_eq!(
        read(&root.join("etc/systemd/system.conf.d/voxgate-watchdog.conf"))
            .lines()
            .filter(|l| !l.starts_with('#'))
            .collect::<Vec<_>>(),
        [
            "[Manager]",
            "RuntimeWatchdogSec=10",
            "WatchdogDevice=/dev/watchdog"
        ]
    );

    // Confirmed with --yes: applied (TPM lines with --tpm), the old kept.
    let o = install(
        &root,
        &["--relay", "relay.example.net:4433", "--tpm", "--yes"],
        "",
    );
    let after = read(&boot);
    assert!(after.starts_with(&before), "{after}");
    for l in [
        "dtparam=watchdog=on",
        "dtparam=spi=on",
        "dtoverlay=tpm-slb9670",
    ] {
        assert!(after.lines().any(|x| x == l), "{l}:\n{after}\n{}", show(&o));
    }
    assert_eq!(
        read(&root.join("boot/firmware/config.txt.voxgate-old")),
        before
    );

    // A rerun changes nothing, and asks nothing.
    let o = install(&root, &["--relay", "relay.example.net:4433", "--tpm"], "");
    let out = text(&o.stdout);
    assert!(out.contains("nothing to change"), "{out}");
    assert!(!out.contains("Apply this change"), "{out}");
    assert_eq!(read(&boot), after);
    std::fs::remove_dir_all(root).unwrap();
}

/// Two namespaces joined by a veth pair; deleted on drop.
struct Netns {
    box_ns: String,
    peer_ns: String,
}

impl Netns {
    fn new() -> Netns {
        let n = std::process::id() % 100_000;
        let ns = Netns {
            box_ns: format!("vgfw-box-{n}"),
            peer_ns: format!("vgfw-peer-{n}"),
        };
        let (b, p) = (format!("vgfb{n}"), format!("vgfp{n}"));
        for args in [
            vec!["netns", "add", &ns.box_ns],
            vec!["netns", "add", &ns.peer_ns],
            vec![
                "link",
                "add",
                &b,
                "netns",
                &ns.box_ns,
                "type",
                "veth",
                "peer",
                "name",
                &p,
                "netns",
                &ns.peer_ns,
            ],
            vec!["-n", &ns.box_ns, "addr", "add", "10.77.0.1/24", "dev", &b],
            vec!["-n", &ns.peer_ns, "addr", "add", "10.77.0.2/24", "dev", &p],
            vec!["-n", &ns.box_ns, "link", "set", &b, "up"],
            vec!["-n", &ns.peer_ns, "link", "set", &p, "up"],
            vec!["-n", &ns.box_ns, "link", "set", "lo", "up"],
            vec!["-n", &ns.peer_ns, "link", "set", "lo", "up"],
        ] {
            let o = run(Command::new("ip").args(&args), "iproute2");
            assert!(o.status.success(), "ip {args:?}: {}", show(&o));
        }
        ns
    }

    fn exec(&self, ns: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for ns in [&self.box_ns, &self.peer_ns] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// Listens on every port the client tries and answers each.
const PEER: &str = r#"
import socket, selectors, sys
sel = selectors.DefaultSelector()
for p in (53, 80, 443, 8080):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("10.77.0.2", p)); s.listen(); s.setblocking(False); sel.register(s, selectors.EVENT_READ, "tcp")
for p in (53, 123, 443, 4433, 4434, 9999):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("10.77.0.2", p))
    sel.register(s, selectors.EVENT_READ, "udp")
print("ready", flush=True)
while True:
    for key, _ in sel.select():
        if key.data == "tcp":
            c, _ = key.fileobj.accept(); c.sendall(b"hi"); c.close()
        else:
            data, addr = key.fileobj.recvfrom(2048); key.fileobj.sendto(b"hi", addr)
"#;

/// Tries each port from the box; prints `proto/port ok|blocked`.
const CLIENT: &str = r#"
import socket
for proto, p in (("udp", 53), ("tcp", 53), ("udp", 123), ("tcp", 80), ("tcp", 443),
                 ("udp", 4433), ("udp", 4434), ("udp", 443), ("tcp", 8080), ("udp", 9999)):
    try:
        if proto == "tcp":
            s = socket.create_connection(("10.77.0.2", p), timeout=1); ok = s.recv(2) == b"hi"
        else:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(1)
            s.sendto(b"x", ("10.77.0.2", p)); ok = s.recvfrom(16)[0] == b"hi"
    except OSError:
        ok = False
    print(f"{proto}/{p} {'ok' if ok else 'blocked'}", flush=True)
"#;

/// The rendered firewall, loaded in a namespace: DNS, NTP, apt and the
/// relay (the gateway config's address and port) get out; the relay's
/// port on another host, and everything else, does not.
#[test]
fn board_firewall_lets_dns_ntp_apt_and_the_relay_out() {
    assert_root();
    let root = scratch_root("deploy-board-fw");
    // The relay as `voxgate setup` writes it into the gateway config.
    std::fs::create_dir_all(root.join("etc/voxgate")).unwrap();
    std::fs::write(
        root.join("etc/voxgate/voxgate.toml"),
        "device_id = \"box-1\"\n[relay]\naddress = \"10.77.0.2:4433\"\nca = \"ca.pem\"\n",
    )
    .unwrap();
    install(&root, &[], "");
    let fw = root.join("etc/nftables.d/voxgate.conf");
    assert!(
        read(&fw).contains("ip daddr 10.77.0.2 udp dport 4433 accept comment \"voxgate relay\""),
        "{}",
        read(&fw)
    );
    let ns = Netns::new();
    let o = run(ns.exec(&ns.box_ns).args(["nft", "-f"]).arg(&fw), "nftables");
    assert!(o.status.success(), "nft -f: {}", show(&o));
    let mut peer = ns
        .exec(&ns.peer_ns)
        .args(["python3", "-c", PEER])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut line = String::new();
    BufReader::new(peer.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready");
    let o = run(
        ns.exec(&ns.box_ns).args(["python3", "-c", CLIENT]),
        "python3",
    );
    let _ = peer.kill();
    let _ = peer.wait();
    let got = text(&o.stdout);
    let want = "udp/53 ok\ntcp/53 ok\nudp/123 ok\ntcp/80 ok\ntcp/443 ok\nudp/4433 ok\nudp/4434 blocked\nudp/443 blocked\ntcp/8080 blocked\nudp/9999 blocked\n";
    assert_eq!(got, want, "{}", show(&o));
    drop(ns);
    std::fs::remove_dir_all(root).unwrap();
}
