//! The amd64 package in a booted Debian 12: systemd-nspawn over a copy of
//! the debootstrap root file system, sharing the host's network (the relay
//! listens on the host's loopback), and the qemu-user set-up for arm64.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use voxgate_testkit::cmd::{run, show};
use voxgate_testkit::lab::Lab;

/// Runs as root inside the container (vg-test.service): installs the
/// package as a technician would, enrolls, starts the gateway and waits
/// for its first frame at the relay; then purges. `key=value` lines go
/// to /out/result. @RELAY@, @FP@ and @METRICS_PORT@ are filled in.
const HARNESS: &str = r#"#!/bin/bash
exec >/out/harness.log 2>&1
set -x
r() { printf '%s=%s\n' "$1" "$2" >>/out/result; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
# The relay's count of datagrams received (the host's loopback: the
# container shares its network).
relay_datagrams() {
  exec 3<>/dev/tcp/127.0.0.1/@METRICS_PORT@ || { echo 0; return; }
  printf 'GET /metrics HTTP/1.0\r\n\r\n' >&3
  awk '$1 == "voxgate_relay_datagrams_total" { v = $2 } END { print v + 0 }' <&3
  exec 3<&-
}
t=$(now)
dpkg -i /vg/voxgate.deb; r dpkg $?
r dpkg_s "$(since "$t")"
bash /vg/inspect.sh >>/out/result
# The postinst's start was skipped: not set up yet.
r before.active "$(systemctl is-active voxgate.service)"
r before.condition "$(systemctl show -p ConditionResult --value voxgate.service)"
systemctl start voxgate.service; r before.start $?
r before.active2 "$(systemctl is-active voxgate.service)"
# The box's audio (a board's asound.conf would name its card): silence
# from /dev/zero, to /dev/null, both allowed by DevicePolicy=closed.
cat >/etc/asound.conf <<'EOF'
pcm.voxcap_file { type file slave.pcm "null" file "/dev/null" infile "/dev/zero" format "raw" }
pcm.voxcap { type plug slave { pcm "voxcap_file" format S16_LE rate 48000 channels 1 } }
pcm.voxplay_file { type file slave.pcm "null" file "/dev/null" format "raw" }
pcm.voxplay { type plug slave { pcm "voxplay_file" format S16_LE rate 48000 channels 1 } }
pcm.!default { type asym capture.pcm "voxcap" playback.pcm "voxplay" }
EOF
base="$(relay_datagrams)"
# From here: what a technician runs on an unpacked box.
t=$(now)
# --ignore-clock: the container's clock is the host's, whose
# synchronization is not this test's matter (setup stops on an
# unsynchronized clock without it).
voxgate setup --relay @RELAY@ --ca-fingerprint @FP@ --device-id box-deb \
  --server-name relay.voxgate.test --token-file /vg/token --ignore-clock; r setup $?
r setup_s "$(since "$t")"
systemctl start voxgate.service; r start $?
for _ in $(seq 300); do
  [ "$(relay_datagrams)" -gt "$base" ] && break
  sleep 0.05
done
r first_frame_s "$(since "$t")"
r relay_datagrams "$(relay_datagrams)"
sleep 3
r config "$(stat -c '%a:%U:%G' /etc/voxgate/voxgate.toml)"
r state "$(stat -c '%n:%a:%U' /var/lib/voxgate/device.key.sealed /var/lib/voxgate/device.pem | tr '\n' ' ')"
for p in ActiveState SubState NRestarts User; do
  r "unit.$p" "$(systemctl show -p $p --value voxgate.service)"
done
pid="$(systemctl show -p MainPID --value voxgate.service)"
for f in Uid CapEff CapBnd NoNewPrivs Seccomp; do
  r "proc.$f" "$(awk -v f="$f:" '$1 == f { print $2 }' /proc/$pid/status)"
done
r uid.voxgate "$(id -u voxgate)"
journalctl -u voxgate.service -o cat --no-pager >/out/journal.log
dpkg --purge voxgate; r purge $?
r purged.state "$(ls -A /var/lib/voxgate 2>&1)"
r purged.etc "$(ls -A /etc/voxgate 2>&1)"
r purged.wants "$(ls /etc/systemd/system/multi-user.target.wants/ | grep -c voxgate)"
r done yes
systemctl start --no-block --job-mode=replace-irreversibly poweroff.target
"#;

const TEST_UNIT: &str = "[Unit]
Description=voxgate package harness
After=basic.target
[Service]
Type=oneshot
ExecStart=/vg/harness.sh
";

const TEST_TARGET: &str = "[Unit]
Description=voxgate package harness
Requires=basic.target vg-test.service
After=vg-test.service
AllowIsolate=yes
";

/// What the container is given.
pub struct Boot<'a> {
    pub dir: &'a Path,
    pub root: &'a Path,
    pub deb: &'a Path,
    pub token: &'a Path,
    pub relay: &'a str,
    pub relay_metrics: SocketAddr,
    pub fingerprint: &'a str,
    pub inspect: &'a str,
}

/// What the harness reported.
pub struct Report {
    pub results: BTreeMap<String, String>,
    pub context: String,
}

/// Boots the root file system with the harness as its default target.
pub fn install_and_stream(b: &Boot) -> Report {
    let (out, vg) = (b.dir.join("out"), b.dir.join("vg"));
    std::fs::create_dir_all(&out).unwrap();
    std::fs::create_dir_all(&vg).unwrap();
    let harness = HARNESS
        .replace("@RELAY@", b.relay)
        .replace("@FP@", b.fingerprint)
        .replace("@METRICS_PORT@", &b.relay_metrics.port().to_string());
    std::fs::write(vg.join("harness.sh"), harness).unwrap();
    std::fs::set_permissions(
        vg.join("harness.sh"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::fs::write(vg.join("inspect.sh"), b.inspect).unwrap();
    std::fs::copy(b.deb, vg.join("voxgate.deb")).unwrap();
    // 0600, as setup wants a token file.
    std::fs::rename(b.token, vg.join("token")).unwrap();
    let units = b.root.join("etc/systemd/system");
    std::fs::write(units.join("vg-test.service"), TEST_UNIT).unwrap();
    std::fs::write(units.join("vg-test.target"), TEST_TARGET).unwrap();
    // No --private-network: 127.0.0.1 is the host's, where the relay is.
    // nspawn's own seccomp filter (systemd 252) predates Landlock and
    // would refuse it in the whole container; the unit's filter applies.
    let o = run(
        Command::new("timeout")
            .args(["--kill-after=10", "300", "systemd-nspawn", "-D"])
            .arg(b.root)
            .args([
                "--register=no",
                "--keep-unit",
                "--link-journal=no",
                "--console=pipe",
            ])
            .arg(format!("--bind={}:/out", out.display()))
            .arg(format!("--bind-ro={}:/vg", vg.display()))
            .args(["-b", "--", "systemd.unit=vg-test.target"])
            .env("SYSTEMD_SECCOMP", "0"),
        "systemd-container",
    );
    let read = |f: &str| std::fs::read_to_string(out.join(f)).unwrap_or_default();
    let text = read("result");
    let context = format!(
        "--- nspawn\n{}\n--- results\n{text}\n--- journal\n{}\n--- harness\n{}",
        show(&o),
        read("journal.log"),
        read("harness.log")
    );
    let results = text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect();
    Report { results, context }
}

impl Report {
    fn get(&self, k: &str) -> &str {
        self.results
            .get(k)
            .map(String::as_str)
            .unwrap_or("<missing>")
    }

    /// Not started before setup; set up, started, streamed under the
    /// unit's sandbox; purged.
    pub fn assert_streamed(&self, lab: &Lab) {
        let c = &self.context;
        assert_eq!(self.get("done"), "yes", "the harness did not finish:\n{c}");
        assert_eq!(self.get("dpkg"), "0", "{c}");
        for k in ["before.active", "before.active2"] {
            assert_eq!(self.get(k), "inactive", "{k}:\n{c}");
        }
        assert_eq!(self.get("before.condition"), "no", "{c}");
        assert_eq!(self.get("before.start"), "0", "{c}");
        assert_eq!(self.get("setup"), "0", "{c}");
        assert_eq!(self.get("start"), "0", "{c}");
        assert_eq!(self.get("config"), "640:root:voxgate", "{c}");
        assert!(
            self.get("state").contains("device.key.sealed:600:voxgate"),
            "{c}"
        );
        for (k, v) in [
            ("unit.ActiveState", "active"),
            ("unit.SubState", "running"),
            ("unit.NRestarts", "0"),
            ("unit.User", "voxgate"),
            ("proc.CapEff", "0000000000000000"),
            ("proc.CapBnd", "0000000000000000"),
            ("proc.NoNewPrivs", "1"),
            ("proc.Seccomp", "2"),
        ] {
            assert_eq!(self.get(k), v, "{k}:\n{c}");
        }
        assert_eq!(self.get("proc.Uid"), self.get("uid.voxgate"), "{c}");
        assert_ne!(self.get("proc.Uid"), "0", "{c}");
        let first: f64 = self.get("first_frame_s").parse().unwrap_or(f64::MAX);
        assert!(
            first < 15.0,
            "no frame reached the relay within 15 s of setup:\n{c}"
        );
        // The relay recorded the box's stream.
        let recs: Vec<_> = lab
            .recordings()
            .into_iter()
            .filter(|p| p.to_string_lossy().contains("box-deb"))
            .collect();
        assert!(
            recs.iter()
                .any(|p| p.metadata().map(|m| m.len() > 1000).unwrap_or(false)),
            "no recording of box-deb at the relay: {recs:?}\n{c}"
        );
        // Purge: the enrollment is gone, the unit's symlinks too.
        assert_eq!(self.get("purge"), "0", "{c}");
        assert!(self.get("purged.state").contains("No such file"), "{c}");
        assert!(self.get("purged.etc").contains("No such file"), "{c}");
        assert_eq!(self.get("purged.wants"), "0", "{c}");
        println!(
            "DEB-TIMING dpkg -i {} s; setup {} s; setup to first frame at the relay {} s",
            self.get("dpkg_s"),
            self.get("setup_s"),
            self.get("first_frame_s")
        );
    }
}

/// binfmt_misc mounted, with qemu-user-static's qemu-aarch64 registered
/// (the F flag: the interpreter is opened now, so no copy in the root).
pub fn ensure_qemu_aarch64() {
    let bm = Path::new("/proc/sys/fs/binfmt_misc");
    if !bm.join("register").exists() {
        let o = run(
            Command::new("mount")
                .args(["-t", "binfmt_misc", "binfmt_misc"])
                .arg(bm),
            "mount",
        );
        assert!(o.status.success(), "mount binfmt_misc: {}", show(&o));
    }
    if !bm.join("qemu-aarch64").exists() {
        let conf = std::fs::read("/usr/lib/binfmt.d/qemu-aarch64.conf")
            .expect("/usr/lib/binfmt.d/qemu-aarch64.conf: install qemu-user-static (scripts/deps)");
        std::fs::write(bm.join("register"), conf).expect("register qemu-aarch64");
    }
}
