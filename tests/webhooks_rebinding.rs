//! DNS rebinding cannot pass the webhooks' SSRF guard. The real relay
//! runs in a network namespace the test makes (only its loopback), with a
//! resolver the test controls: dnsmasq in that namespace, answering from a
//! hosts file the test rewrites (`ip netns exec` puts the namespace's
//! `/etc/netns/NAME/resolv.conf`, `nameserver 127.0.0.1`, in place of
//! `/etc/resolv.conf`, for the relay and the receiver only).
//!
//! - `allowed.test` (on `allow_hosts`) resolves to 127.0.0.1: delivered to
//!   the receiver in the namespace, TLS verified for the name (SNI), so
//!   the resolver, the guard and the client work together.
//! - `rebind.test` first resolves to a public address: the guard lets it
//!   through and the connection fails (no route in the namespace). Then
//!   the name is rebound to 127.0.0.1: the next attempt is refused by the
//!   guard at the address it would have connected, and the receiver, which
//!   listens there, never sees it.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use voxgate_testkit::lab::{bin, wait_for};
use voxgate_testkit::webhooks::{add, deliveries, lab_with_webhooks_allowing, ok, test_message};

/// A network namespace with its loopback up, its resolv.conf, and dnsmasq
/// answering from `hosts`; all removed on drop.
struct Netns {
    name: String,
    etc: PathBuf,
    pid_file: PathBuf,
    hosts: PathBuf,
}

impl Netns {
    fn new(dir: &std::path::Path, hosts: &str) -> Netns {
        let name = format!("vxwh{}", std::process::id());
        let run = |args: &[&str]| {
            let out = Command::new("ip").args(args).output().unwrap();
            assert!(
                out.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(&["netns", "add", &name]);
        let ns = Netns {
            etc: PathBuf::from("/etc/netns").join(&name),
            pid_file: dir.join("dnsmasq.pid"),
            hosts: dir.join("dns.hosts"),
            name,
        };
        run(&["-n", &ns.name, "link", "set", "lo", "up"]);
        std::fs::create_dir_all(&ns.etc).unwrap();
        std::fs::write(ns.etc.join("resolv.conf"), "nameserver 127.0.0.1\n").unwrap();
        std::fs::write(&ns.hosts, hosts).unwrap();
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns.name,
                "dnsmasq",
                "--no-resolv",
                "--no-hosts",
            ])
            .arg(format!("--addn-hosts={}", ns.hosts.display()))
            .args([
                "--listen-address=127.0.0.1",
                "--bind-interfaces",
                "-u",
                "root",
                "--local-ttl=0",
            ])
            .arg(format!("--pid-file={}", ns.pid_file.display()))
            .arg(format!(
                "--log-facility={}",
                dir.join("dnsmasq.log").display()
            ))
            .arg("--log-queries")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "dnsmasq: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        ns
    }

    fn dnsmasq_pid(&self) -> String {
        std::fs::read_to_string(&self.pid_file)
            .unwrap_or_default()
            .trim()
            .to_string()
    }

    /// Answer from new hosts lines (dnsmasq re-reads them on SIGHUP).
    fn rebind(&self, hosts: &str) {
        std::fs::write(&self.hosts, hosts).unwrap();
        assert!(
            Command::new("kill")
                .args(["-HUP", &self.dnsmasq_pid()])
                .status()
                .unwrap()
                .success()
        );
    }

    fn resolve(&self, name: &str) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name, "getent", "hosts", name])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let pid = self.dnsmasq_pid();
        if !pid.is_empty() {
            let _ = Command::new("kill").arg(&pid).status();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        let _ = std::fs::remove_dir_all(&self.etc);
    }
}

struct Relay(Child, PathBuf);

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn dns_rebinding_to_loopback_is_refused_at_the_connection() {
    let (lab, mut rx) = lab_with_webhooks_allowing("webhooks-rebind", "\"allowed.test\"");
    let ns = Netns::new(
        &lab.dir,
        "93.184.216.34 rebind.test\n127.0.0.1 allowed.test\n",
    );
    assert!(
        ns.resolve("rebind.test").starts_with("93.184.216.34"),
        "{}",
        ns.resolve("rebind.test")
    );
    let only_tests = "security.token_misuse";
    let (allowed, s1) = add(&lab, &rx.url("allowed.test", "/hook"), only_tests);
    let (rebind, s2) = add(&lab, &rx.url("rebind.test", "/hook"), only_tests);
    std::fs::write(&rx.secrets, format!("{s1}\n{s2}\n")).unwrap();
    rx.netns = Some(ns.name.clone());
    rx.start();

    let log = lab.dir.join("relay-netns.log");
    let child = Command::new("ip")
        .args(["netns", "exec", &ns.name, bin(), "relay", "run", "--config"])
        .arg(lab.dir.join("relay.toml"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut relay = Relay(child, log);
    wait_for(
        Duration::from_secs(15),
        "the relay in the namespace",
        || {
            assert!(relay.0.try_wait().unwrap().is_none(), "the relay exited");
            std::fs::read_to_string(&relay.1)
                .unwrap_or_default()
                .contains("relay ready")
        },
    );

    // The control: resolved by dnsmasq, allowed, connected, verified.
    let good = test_message(&lab, &allowed);
    wait_for(Duration::from_secs(15), "delivery to allowed.test", || {
        rx.processed().contains_key(&good)
    });

    // A public answer passes the guard (and finds no route here).
    let bad = test_message(&lab, &rebind);
    let row = |id: &str| deliveries(&lab).into_iter().find(|d| d[0] == id).unwrap();
    wait_for(
        Duration::from_secs(15),
        "an attempt at the public address",
        || row(&bad)[6].contains("93.184.216.34"),
    );
    // Rebound to loopback: the next attempt is refused where it connects.
    ns.rebind("127.0.0.1 rebind.test\n127.0.0.1 allowed.test\n");
    assert!(ns.resolve("rebind.test").starts_with("127.0.0.1"));
    let n = deliveries(&lab)
        .into_iter()
        .position(|d| d[0] == bad)
        .unwrap();
    let number = ok(lab.relay_cmd(&["webhook", "deliveries", "--limit", "1000"]))
        .lines()
        .nth(n + 1)
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap();
    ok(lab.relay_cmd(&["webhook", "replay", &number]));
    wait_for(Duration::from_secs(15), "the guard's refusal", || {
        let d = row(&bad);
        d[3] == "failed" && d[6].contains("SSRF") && d[6].contains("127.0.0.1")
    });
    assert!(
        rx.entries().iter().all(|e| e["id"] != bad.as_str()),
        "the rebound name reached the receiver"
    );
    let _ = relay.0.kill();
    let text = std::fs::read_to_string(&relay.1).unwrap();
    assert!(
        text.contains("filesystem sandbox on"),
        "the relay ran sandboxed"
    );
}
