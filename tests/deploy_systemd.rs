//! Deployment: the units under a real systemd (252, in a container over a
//! throwaway overlay of this host). CI runs as root, as on the box; nothing
//! is skipped: a missing tool fails with the Debian package to install.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use voxgate_testkit::cmd::{assert_root, run, show};
use voxgate_testkit::lab::{repo, test_dir};

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
# As root: the issuing key becomes a systemd credential (root's only), the
# rest goes to the relay's account (the state directory's owner).
# An empty credential directory (the sealed backends) starts a unit.
# The credential directories exist from boot (tmpfiles), so a relay whose
# keys are sealed starts with an empty one.
r creds_dirs "$(stat -c '%n:%a:%U' /var/lib/voxgate-relay/creds-* | tr '\n' ' ')"
systemd-run --wait -q -u vg-empty -p LoadCredentialEncrypted=vg-empty:/var/lib/voxgate-relay/creds-tls /bin/true
r empty_creds_dir $?
voxgate relay init --keep-root --issuing-key-creds --tls-key-creds --config /etc/voxgate/relay.toml
r sealed_keys "$(ls /var/lib/voxgate-relay | grep -cE '^(relay|issuing-).*key')"
r relay_reads_creds "$(runuser -u voxgate -- ls /var/lib/voxgate-relay/creds-issuing /var/lib/voxgate-relay/creds-tls >/dev/null 2>&1 && echo yes || echo no)"
r relay_owns "$(stat -c '%U' /var/lib/voxgate-relay/relay.pem /var/lib/voxgate-relay/registry.db | sort -u | tr '\n' ' ')"
systemctl start voxgate-signer.service; r signer.start $?
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
spid="$(systemctl show -p MainPID --value voxgate-signer.service)"
r signer.uid "$(awk '$1 == "Uid:" { print $2 }' /proc/$spid/status)"
r signer.credentials "$(ls /run/credentials/voxgate-signer.service | tr '\n' ' ')"
r relay.credentials "$(ls /run/credentials/voxgate-relay.service | tr '\n' ' ')"
rpid="$(systemctl show -p MainPID --value voxgate-relay.service)"
r relay.uid "$(awk '$1 == "Uid:" { print $2 }' /proc/$rpid/status)"
r relay.nice "$(awk '{ print $19 }' /proc/$rpid/stat)"
r relay.CPUWeight "$(systemctl show -p CPUWeight --value voxgate-relay.service)"
r uid.voxgate-signer "$(id -u voxgate-signer)"
r uid.voxgate "$(id -u voxgate)"
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
  r "$u.core" "$(awk '/^Max core file size/ { print $5 ":" $6 }' /proc/$pid/limits)"
done
exec 3<>/dev/tcp/127.0.0.1/9464 && printf 'GET /metrics HTTP/1.0\r\n\r\n' >&3 \
  && r frames_sent "$(awk '$1 == "voxgate_frames_sent_total" { print $2 }' <&3)"
exec 3<&-
# The field commands against the unit: systemd's MainPID, the status socket.
voxgate check -o json --config /etc/voxgate/voxgate.toml >/out/check.json 2>/out/check.err; r check.rc $?
voxgate status -o json --config /etc/voxgate/voxgate.toml >/out/status.json 2>>/out/check.err; r status.rc $?
r status_sock "$(stat -c '%a:%U:%G' /run/voxgate/status.sock)"
r voxgate.MainPID "$(systemctl show -p MainPID --value voxgate.service)"
r signer.ActiveState "$(systemctl show -p ActiveState --value voxgate-signer.service)"
journalctl -u voxgate.service -u voxgate-relay.service -u voxgate-signer.service -o cat --no-pager >/out/journal.log
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
[ca]
# Renewed at 8 s, while the harness waits: through the signer unit.
relay_cert_lifetime_s = 12
[signer]
socket = "/run/voxgate-signer/signer.sock"
user = "voxgate-signer"
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
            sys.join("voxgate-signer.service"),
            "/etc/systemd/system/voxgate-signer.service",
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
            // LimitCORE=0 (soft:hard).
            ("core", "0:0"),
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
    // The signer unit: its own account, the only one given the issuing
    // key (a systemd credential root keeps), and the relay's certificate
    // renewed through it while the gateway streams.
    assert_eq!(get("signer.start"), "0", "{context}");
    assert_eq!(get("signer.ActiveState"), "active", "{context}");
    assert_eq!(get("signer.uid"), get("uid.voxgate-signer"), "{context}");
    assert_eq!(get("relay.uid"), get("uid.voxgate"), "{context}");
    // The relay's priority over other work on a shared host (Nice=-10,
    // CPUWeight=1000), as the kernel and systemd report it.
    assert_eq!(get("relay.nice"), "-10", "{context}");
    assert_eq!(get("relay.CPUWeight"), "1000", "{context}");
    assert_ne!(get("signer.uid"), get("relay.uid"), "{context}");
    assert_eq!(
        get("creds_dirs").trim(),
        "/var/lib/voxgate-relay/creds-issuing:700:root /var/lib/voxgate-relay/creds-tls:700:root",
        "{context}"
    );
    assert_eq!(get("relay_reads_creds"), "no", "{context}");
    assert_eq!(get("relay_owns").trim(), "voxgate", "{context}");
    assert!(
        get("signer.credentials").starts_with("voxgate-issuing_issuing-")
            && get("signer.credentials").trim().ends_with(".key.cred")
            && get("signer.credentials").split_whitespace().count() == 1,
        "the signer was not given the issuing key (alone):\n{context}"
    );
    assert_eq!(
        get("relay.credentials").trim(),
        "voxgate-tls_relay.key.cred",
        "the relay is given its TLS key, and nothing else:\n{context}"
    );
    // No issuing or TLS key file beside the certificates: both are
    // credentials.
    assert_eq!(get("sealed_keys"), "0", "{context}");
    assert_eq!(get("empty_creds_dir"), "0", "{context}");
    assert!(
        journal.contains("relay certificate renewed"),
        "the relay did not renew its certificate through the signer:\n{context}"
    );
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
    // The gateway, the relay and the relay's signer process.
    assert!(
        journal.contains("signer ready"),
        "the relay's signer did not start:\n{context}"
    );
    assert_eq!(
        journal.matches(landlock).count(),
        3,
        "the gateway, the relay and its signer should report {landlock}:\n{context}"
    );
    assert_eq!(
        journal.matches("seccomp allow-list on").count(),
        3,
        "{context}"
    );

    // `voxgate status` and `voxgate check` see the unit: its MainPID, its
    // status socket (RuntimeDirectory=, mode 0660 for the service's group).
    assert_eq!(get("status.rc"), "0", "{context}");
    assert_eq!(get("status_sock"), "660:voxgate:voxgate", "{context}");
    let read_json = |name: &str| -> serde_json::Value {
        let text = std::fs::read_to_string(out.join(name)).unwrap_or_default();
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}: {text}\n{context}"))
    };
    let status = read_json("status.json");
    let main_pid: i64 = get("voxgate.MainPID").parse().unwrap_or(-1);
    assert_eq!(status["pid"], main_pid, "{status:#}");
    assert_eq!(status["relay"]["connected"], true, "{status:#}");
    assert_eq!(status["metrics"], true, "{status:#}");
    let check = read_json("check.json");
    let verdict = |id: &str| {
        let c = check["checks"]
            .as_array()
            .and_then(|a| a.iter().find(|c| c["id"] == id))
            .unwrap_or_else(|| panic!("no {id} in {check:#}"));
        (
            c["status"].as_str().unwrap_or("?").to_string(),
            c["message"].as_str().unwrap_or("").to_string(),
        )
    };
    let (st, msg) = verdict("service");
    assert!(
        st == "ok"
            && msg.contains(&format!("pid {main_pid}"))
            && msg.contains("voxgate.service is active"),
        "{check:#}"
    );
    for id in [
        "config",
        "identity",
        "relay.quic",
        "audio.capture",
        "audio.playback",
    ] {
        assert_eq!(verdict(id).0, "ok", "{id}: {check:#}");
    }
    let (st, msg) = verdict("sandbox");
    assert!(msg.contains("as voxgate"), "{check:#}");
    assert_eq!(
        st,
        if kernel_has_landlock() { "ok" } else { "fail" },
        "{check:#}"
    );

    // With the credential stored, systemd decrypts it for the service only.
    assert_eq!(get("cred.restart"), "0", "{context}");
    assert_eq!(get("cred.file"), "400:voxgate", "{context}");
    assert_eq!(get("cred.active"), "active", "{context}");
    std::fs::remove_dir_all(dir).unwrap();
}
