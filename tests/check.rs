//! `voxgate check` and `voxgate status` against real components: a relay
//! on loopback, an enrolled gateway (sealed key; a TPM-held one on swtpm)
//! running dropped to `nobody` with ALSA file devices and the phone
//! bridge, a phone registered by sipp. The healthy box passes every check;
//! then the box is broken one way at a time, and each of the 16 checks is
//! seen failing at least once (every failure carries a fix; the test ends
//! by asserting that none of the ids was left out).
//!
//! The clock: the kernel's synchronization state (`adjtimex`) is the
//! whole machine's and cannot be faked for one process, so these runs
//! read it from a file in `timedatectl show -p NTPSynchronized`'s format
//! (`--clock-source file:PATH`); the kernel path is unit-tested in
//! `diagnose::probes`. No test reaches an NTP server.

use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use voxgate_testkit::audio_env::AlsaFileDevices;
use voxgate_testkit::enroll::Setup;
use voxgate_testkit::lab::{Lab, bin, free_tcp, free_udp, free_udp_tcp, metric, wait_for};
use voxgate_testkit::proxy::LossyProxy;
use voxgate_testkit::sip::{Sipp, free_rtp_range, register_scenario};
use voxgate_testkit::swtpm::Swtpm;

/// The stable check ids, written out here on purpose rather than taken from
/// `voxgate::diagnose::check::IDS`: scripts depend on them, so a renamed or
/// dropped id must fail this test.
const IDS: [&str; 16] = [
    "config",
    "identity",
    "tpm",
    "cert.expiry",
    "clock",
    "dns",
    "relay.udp",
    "relay.quic",
    "relay.rtt",
    "audio.capture",
    "audio.playback",
    "sip.listen",
    "sip.phones",
    "service",
    "sandbox",
    "disk.state",
];

/// A box under test: the environment its `voxgate` commands get.
struct BoxEnv {
    env: Vec<(String, String)>,
    clock: PathBuf,
    failed: BTreeSet<String>,
}

impl BoxEnv {
    fn new(dir: &Path, alsa: &AlsaFileDevices) -> BoxEnv {
        let clock = dir.join("timedatectl.txt");
        std::fs::write(&clock, "NTPSynchronized=yes\n").unwrap();
        BoxEnv {
            env: vec![
                ("ALSA_CONFIG_PATH".into(), alsa.alsa_config_path_env()),
                ("LANG".into(), "C.UTF-8".into()),
                ("LC_ALL".into(), String::new()),
                ("TERM".into(), "xterm-256color".into()),
            ],
            clock,
            failed: BTreeSet::new(),
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin());
        c.args(args).env_remove("VOXGATE_LOG");
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }

    /// `voxgate check -o json`: the exit code and the document, whose
    /// checks are the 16 ids in order and whose `exit_code` is the code.
    fn check(&mut self, cfg: &Path) -> (i32, Value) {
        let out = self
            .command(&["check", "-o", "json", "--clock-source"])
            .arg(format!("file:{}", self.clock.display()))
            .arg("--config")
            .arg(cfg)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let doc: Value = serde_json::from_str(&text).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {text}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        let code = out.status.code().unwrap();
        assert_eq!(doc["exit_code"], code, "{doc:#}");
        let ids: Vec<&str> = doc["checks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, IDS, "{doc:#}");
        for c in doc["checks"].as_array().unwrap() {
            if c["status"] == "fail" {
                assert!(
                    c["hint"].as_str().is_some_and(|h| !h.is_empty()),
                    "a failure without a fix: {c}"
                );
                self.failed.insert(c["id"].as_str().unwrap().to_string());
            }
        }
        (code, doc)
    }
}

fn status_of<'a>(doc: &'a Value, id: &str) -> (&'a str, &'a str) {
    let c = doc["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == id)
        .unwrap();
    (
        c["status"].as_str().unwrap(),
        c["message"].as_str().unwrap(),
    )
}

#[track_caller]
fn expect(doc: &Value, id: &str, status: &str, says: &str) {
    let (s, m) = status_of(doc, id);
    assert!(
        s == status && m.contains(says),
        "{id}: want {status} saying {says:?}, got {s}: {m}\n{doc:#}"
    );
}

/// A copy of the config `base` with `from` replaced by `to` (each must
/// occur), beside it.
fn variant(base: &Path, name: &str, edits: &[(&str, &str)]) -> PathBuf {
    let mut text = std::fs::read_to_string(base).unwrap();
    for (from, to) in edits {
        assert!(text.contains(from), "{from:?} not in {}", base.display());
        text = text.replace(from, to);
    }
    let p = base.with_file_name(format!("check-{name}.toml"));
    std::fs::write(&p, text).unwrap();
    p
}

fn register_phone(dir: &Path, sip_port: u16, ext: &str, password: &str) {
    let scenario = register_scenario(ext, password, 200, false);
    let target = format!("127.0.0.1:{sip_port}");
    let out = Sipp {
        bin: Path::new("sipp"),
        dir,
        name: "register",
        scenario: &scenario,
        target: &target,
        args: &["-s", ext, "-i", "127.0.0.1"],
        limit: Duration::from_secs(20),
    }
    .output();
    assert!(
        out.status.success(),
        "sipp register: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A tmpfs of 256 KiB mounted on `dir`, unmounted when dropped.
struct SmallFs(PathBuf);

impl SmallFs {
    fn mount(dir: &Path) -> SmallFs {
        std::fs::create_dir_all(dir).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=256k,mode=0755", "voxgate-check"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(
            st.success(),
            "mount tmpfs on {} (tests run as root)",
            dir.display()
        );
        SmallFs(dir.to_path_buf())
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_healthy_box_passes_and_every_check_fails_when_its_part_breaks() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "this test needs root, as CI has"
    );
    let lab = Lab::new_public("check", "mode = \"none\"");
    let mut relay = lab.start_relay();
    let id = "gw-check";
    let cfg = Setup::new(&lab, id)
        .args(["--backend", "sealed-file"])
        .run();
    let gdir = lab.dir.join(id);

    // The speaker writes into a directory the dropped daemon may write.
    let spk = lab.dir.join("spk");
    std::fs::create_dir_all(&spk).unwrap();
    nix::unistd::chown(&spk, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
    let alsa = AlsaFileDevices::new(&lab.dir.join("alsa"), None, Some(&spk.join("out.raw")));
    let mut b = BoxEnv::new(&lab.dir, &alsa);
    let sip_port = free_udp_tcp();
    let (rtp_a, rtp_z) = free_rtp_range(10);
    let metrics: std::net::SocketAddr = format!("127.0.0.1:{}", free_tcp()).parse().unwrap();
    let d = lab.dir.display();
    let written = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        format!(
            "{written}\n[capture]\ndevice = \"voxcap\"\n[playback]\ndevice = \"voxplay\"\n\
             [sip]\nenabled = true\nlisten = \"127.0.0.1:{sip_port}\"\nrtp_ports = \"{rtp_a}-{rtp_z}\"\n\
             allow = [\"127.0.0.0/8\"]\ndigest = [\"md5\"]\n\
             [telemetry]\nlog = \"debug\"\nmetrics = \"{metrics}\"\nstatus_socket = \"{d}/status.sock\"\n\
             [privilege]\nuser = \"nobody\"\ngroups = [\"audio\"]\n\
             [sandbox]\nread = [\"{d}\"]\nwrite = [\"{}\"]\n",
            spk.display()
        ),
    )
    .unwrap();
    let password = voxgate_testkit::sip::add_phone(Path::new(bin()), &cfg, "201");

    // Not running yet: the service fails, and what needs it is skipped.
    let (code, doc) = b.check(&cfg);
    assert_eq!(code, 2, "{doc:#}");
    expect(&doc, "service", "fail", "no `voxgate run` runs");
    expect(&doc, "sandbox", "skip", "`service` failed");
    expect(&doc, "sip.phones", "skip", "`service` failed");
    expect(&doc, "sip.listen", "ok", "is free for the phone bridge");
    let st = b
        .command(&["status", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(st.status.code(), Some(3), "status of a stopped daemon");
    assert!(
        String::from_utf8_lossy(&st.stderr).contains("not running"),
        "{st:?}"
    );

    // The SIP port taken by another process.
    {
        let _squatter = std::net::UdpSocket::bind(("127.0.0.1", sip_port)).unwrap();
        let (_, doc) = b.check(&cfg);
        expect(
            &doc,
            "sip.listen",
            "fail",
            &format!(
                "UDP 127.0.0.1:{sip_port} is taken by pid {}",
                std::process::id()
            ),
        );
    }

    // Running: every check passes but the phones (none registered yet).
    let mut gw = lab.start_gateway(&cfg, &b.env);
    wait_for(Duration::from_secs(20), "streaming", || {
        gw.assert_running();
        metric(metrics, "voxgate_frames_sent_total") >= 10.0
    });
    let (code, doc) = b.check(&cfg);
    expect(&doc, "sip.phones", "fail", "0 of 1 extension(s)");
    assert_eq!(code, 2, "{doc:#}");
    register_phone(&lab.dir, sip_port, "201", &password);
    wait_for(Duration::from_secs(10), "registration", || {
        metric(metrics, "voxgate_sip_registered_extensions") >= 1.0
    });
    let (code, doc) = b.check(&cfg);
    for c in doc["checks"].as_array().unwrap() {
        assert_eq!(c["status"], "ok", "a healthy box: {c}\n{doc:#}");
    }
    assert_eq!((code, &doc["status"]), (0, &Value::from("ok")));
    expect(&doc, "service", "ok", &format!("pid {}", gw.pid()));
    expect(
        &doc,
        "sandbox",
        "ok",
        "as nobody: seccomp, no_new_privs, Landlock",
    );
    expect(&doc, "sip.listen", "ok", "the running voxgate listens");
    expect(
        &doc,
        "relay.quic",
        "ok",
        "proved it is `relay.voxgate.test`",
    );

    // The same as text: UTF-8 marks, or ASCII ones.
    let clock_arg = format!("file:{}", b.clock.display());
    let text = |extra: &[&str], lang: &str| {
        let out = b
            .command(&["check", "--clock-source", &clock_arg, "--config"])
            .arg(&cfg)
            .args(extra)
            .env("LANG", lang)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0));
        String::from_utf8(out.stdout).unwrap()
    };
    let utf8 = text(&[], "C.UTF-8");
    eprintln!("{utf8}");
    assert!(
        utf8.lines().filter(|l| l.starts_with('✓')).count() == 16,
        "{utf8}"
    );
    for ascii in [text(&["--ascii"], "C.UTF-8"), text(&[], "C")] {
        assert!(ascii.is_ascii(), "{ascii}");
        assert_eq!(
            ascii.lines().filter(|l| l.starts_with("[ok]")).count(),
            16,
            "{ascii}"
        );
    }

    // `voxgate status` on one screen, and as JSON.
    let out = b
        .command(&["status", "-o", "json", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let s: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["running"], true);
    assert_eq!(s["pid"], gw.pid());
    assert_eq!(s["device_id"], id);
    assert_eq!(s["relay"]["connected"], true);
    assert!(
        s["relay"]["rtt_ms"].as_f64().is_some_and(|r| r >= 0.0),
        "{s:#}"
    );
    assert!(
        s["frames"]["sent"].as_u64().is_some_and(|f| f >= 10),
        "{s:#}"
    );
    assert_eq!(s["phones"]["registered"], 1);
    assert_eq!(s["phones"]["calls_active"], 0);
    assert!(
        s["certificate"]["seconds_left"]
            .as_i64()
            .is_some_and(|l| l > 86_400),
        "{s:#}"
    );
    assert!(s["uptime_s"].as_u64().is_some(), "{s:#}");
    let out = b
        .command(&["status", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let screen = String::from_utf8_lossy(&out.stdout);
    eprintln!("{screen}");
    assert!(
        screen.contains(&format!("voxgate `{id}`: running (pid {})", gw.pid())),
        "{screen}"
    );
    assert!(
        screen.contains("connected") && screen.contains("1 extension(s) registered"),
        "{screen}"
    );

    // The clock unsynchronized (its source is the injected file, see above).
    std::fs::write(&b.clock, "NTPSynchronized=no\n").unwrap();
    let (code, doc) = b.check(&cfg);
    expect(&doc, "clock", "fail", "not synchronized");
    assert_eq!(code, 2);
    std::fs::write(&b.clock, "NTPSynchronized=yes\n").unwrap();

    let ca_line = format!("address = \"127.0.0.1:{}\"", lab.quic_port);
    // Nothing listening at the relay's address: no answer, not "unproven".
    let dead = variant(
        &cfg,
        "dead",
        &[(&ca_line, &format!("address = \"127.0.0.1:{}\"", free_udp()))],
    );
    let (_, doc) = b.check(&dead);
    expect(&doc, "relay.udp", "fail", "nothing listens");
    expect(&doc, "relay.quic", "skip", "`relay.udp` failed");
    expect(&doc, "dns", "ok", "nothing to resolve");

    // A name that does not resolve.
    let nxdomain = variant(
        &cfg,
        "nxdomain",
        &[(
            &ca_line,
            &format!(
                "address = \"relay.voxgate-check.invalid:{}\"",
                lab.quic_port
            ),
        )],
    );
    let (_, doc) = b.check(&nxdomain);
    expect(&doc, "dns", "fail", "relay.voxgate-check.invalid");
    expect(&doc, "relay.udp", "skip", "`dns` failed");

    // Another fleet's relay: it answers, but cannot prove our CA.
    let other = Lab::new("check-other", "mode = \"none\"");
    let mut other_relay = other.start_relay();
    let foreign = variant(
        &cfg,
        "foreign",
        &[(
            &ca_line,
            &format!("address = \"127.0.0.1:{}\"", other.quic_port),
        )],
    );
    let (_, doc) = b.check(&foreign);
    expect(&doc, "relay.udp", "ok", "a QUIC server answers");
    expect(
        &doc,
        "relay.quic",
        "fail",
        "answered but could not prove it holds the fleet CA",
    );
    expect(&doc, "relay.rtt", "skip", "`relay.quic` failed");
    other_relay.stop();

    // A far relay: 350 ms each way.
    let relay_addr: std::net::SocketAddr = format!("127.0.0.1:{}", lab.quic_port).parse().unwrap();
    let far = LossyProxy::start_with_delay(relay_addr, 0.0, 1, Duration::from_millis(350));
    let slow = variant(
        &cfg,
        "far",
        &[(&ca_line, &format!("address = \"127.0.0.1:{}\"", far.port))],
    );
    let (_, doc) = b.check(&slow);
    eprintln!("{}", status_of(&doc, "relay.rtt").1);
    expect(&doc, "relay.quic", "ok", "proved");
    expect(
        &doc,
        "relay.rtt",
        "fail",
        "ms round trip (fails from 600 ms)",
    );
    drop(far);

    // Audio devices that do not exist.
    let deaf = variant(
        &cfg,
        "deaf",
        &[
            ("device = \"voxcap\"", "device = \"nosuchmic\""),
            ("device = \"voxplay\"", "device = \"nosuchspeaker\""),
        ],
    );
    let (_, doc) = b.check(&deaf);
    expect(&doc, "audio.capture", "fail", "`nosuchmic` not found");
    expect(&doc, "audio.playback", "fail", "`nosuchspeaker` not found");

    // A broken config.
    let bad = cfg.with_file_name("check-bad.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&bad, format!("{text}\n[codec]\nframe_ms = 15\n")).unwrap();
    let (code, doc) = b.check(&bad);
    expect(&doc, "config", "fail", "codec.frame_ms");
    expect(&doc, "identity", "skip", "`config` failed");
    assert_eq!(code, 2);

    // The fleet CA file gone: the relay still answers, but cannot be verified.
    let ca = format!("ca = \"{}/ca.pem\"", gdir.display());
    let no_ca = variant(
        &cfg,
        "no-ca",
        &[(&ca, &format!("ca = \"{}/gone-ca.pem\"", gdir.display()))],
    );
    let (_, doc) = b.check(&no_ca);
    expect(&doc, "config", "fail", "missing relay.ca");
    expect(&doc, "relay.udp", "ok", "a QUIC server answers");
    expect(&doc, "relay.quic", "fail", "cannot read relay.ca");

    // The identity gone (certificate and key moved away).
    let cert_line = format!("cert = \"{}/device.pem\"", gdir.display());
    let lost = variant(
        &cfg,
        "lost",
        &[(
            &cert_line,
            &format!("cert = \"{}/gone.pem\"", gdir.display()),
        )],
    );
    let (_, doc) = b.check(&lost);
    expect(
        &doc,
        "identity",
        "fail",
        "not enrolled: no device certificate",
    );
    expect(&doc, "cert.expiry", "skip", "`identity` failed");

    // An expired certificate (a development one, valid for no time at all).
    let out = lab.relay_cmd(&[
        "dev-cert",
        "--device-id",
        "gw-expired",
        "--days",
        "0",
        "--out",
        &lab.dir.join("gw-expired").display().to_string(),
    ]);
    assert!(out.status.success(), "{out:?}");
    let (expired, _) = lab.gateway_config(
        "gw-expired",
        lab.quic_port,
        "[capture]\ndevice = \"voxcap\"\n",
    );
    std::thread::sleep(Duration::from_millis(1100));
    let (_, doc) = b.check(&expired);
    expect(&doc, "cert.expiry", "fail", "the certificate expired");
    expect(&doc, "identity", "ok", "opens here");

    // A full state filesystem.
    let full_dir = lab.dir.join("full");
    let _fs = SmallFs::mount(&full_dir);
    for f in ["device.pem", "device.key.sealed", "ca.pem"] {
        std::fs::copy(gdir.join(f), full_dir.join(f)).unwrap();
    }
    let _ = std::fs::write(full_dir.join("filler"), vec![0u8; 512 << 10]);
    let g = gdir.display().to_string();
    let full = variant(
        &cfg,
        "full",
        &[
            (
                &format!("{g}/device.pem"),
                &format!("{}/device.pem", full_dir.display()),
            ),
            (
                &format!("{g}/device.key.sealed"),
                &format!("{}/device.key.sealed", full_dir.display()),
            ),
        ],
    );
    let (_, doc) = b.check(&full);
    expect(&doc, "disk.state", "fail", "full");
    expect(&doc, "identity", "ok", "opens here");

    // The daemon stopped: the service fails; `voxgate status` says so.
    assert!(gw.stop().success(), "{}", gw.log_text());
    let (_, doc) = b.check(&cfg);
    expect(&doc, "service", "fail", "no `voxgate run` runs");
    let out = b
        .command(&["status", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("voxgate: not running"),
        "{out:?}"
    );

    // Running with the sandbox off, its status on the status socket alone
    // (no TCP metrics endpoint): the sandbox check fails.
    let open = variant(
        &cfg,
        "open",
        &[
            ("[sandbox]\n", "[sandbox]\nenabled = false\n"),
            (&format!("metrics = \"{metrics}\"\n"), ""),
        ],
    );
    let mut gw = lab.start_gateway(&open, &b.env);
    let mut s = Value::Null;
    wait_for(Duration::from_secs(20), "status over the socket", || {
        gw.assert_running();
        let out = b
            .command(&["status", "-o", "json", "--config"])
            .arg(&open)
            .output()
            .unwrap();
        s = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        out.status.success() && s["relay"]["connected"] == true
    });
    assert_eq!(
        (&s["pid"], &s["metrics"]),
        (&Value::from(gw.pid()), &Value::from(true)),
        "{s:#}"
    );
    assert!(
        voxgate_testkit::lab::scrape(metrics).is_none(),
        "no TCP endpoint"
    );
    let (_, doc) = b.check(&open);
    expect(&doc, "sandbox", "fail", "no seccomp filter");
    expect(&doc, "sip.phones", "fail", "0 of 1");
    gw.stop();
    relay.stop();

    // Every check failed once (`tpm` in the TPM test below).
    let missing: Vec<&str> = IDS
        .iter()
        .copied()
        .filter(|id| !b.failed.contains(*id) && *id != "tpm")
        .collect();
    assert!(missing.is_empty(), "checks never seen failing: {missing:?}");
}

#[test]
fn a_tpm_held_key_fails_when_the_tpm_is_gone() {
    let lab = Lab::new("check-tpm", "mode = \"none\"");
    let mut relay = lab.start_relay();
    let mut tpm = Swtpm::start("check");
    let cfg = Setup::new(&lab, "gw-tpm")
        .args(["--backend", "tpm", "--tpm", &tpm.spec()])
        .run();
    let alsa = AlsaFileDevices::new(&lab.dir.join("alsa"), None, None);
    let mut b = BoxEnv::new(&lab.dir, &alsa);
    let (_, doc) = b.check(&cfg);
    expect(&doc, "tpm", "ok", "answers");
    expect(&doc, "identity", "ok", "the tpm key opens here");
    relay.stop();
    tpm.stop();
    let (code, doc) = b.check(&cfg);
    expect(&doc, "tpm", "fail", "is gone");
    expect(&doc, "identity", "skip", "`tpm` failed");
    assert_eq!(code, 2);
    assert!(b.failed.contains("tpm"));
}

/// `voxgate setup` against a relay address where nothing listens says
/// there was no answer; it used to say the relay "could not prove it holds
/// the fleet CA", which sends the technician after the fingerprint.
#[test]
fn setup_tells_no_answer_from_an_unproven_relay() {
    let lab = Lab::new("check-setup", "mode = \"none\"");
    let (out, cfg) = Setup::new(&lab, "gw-nobody-home")
        .args(["--backend", "sealed-file"])
        .output();
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && !cfg.exists(), "{e}");
    assert!(
        e.contains("is unreachable") && !e.contains("could not prove"),
        "{e}"
    );
}
