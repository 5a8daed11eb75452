//! `voxgate setup` on a real terminal (tmux), against a relay on loopback
//! and the ALSA file devices: every prompt answered by keystrokes, the
//! token typed and never shown, the audio devices picked from the list,
//! the round trip through the relay (the `echo` control message) measured,
//! the config installed at the end. A wrong token and an unreachable relay
//! say so and write nothing; Ctrl-C at a prompt after the relay issued the
//! certificate leaves nothing installed (only the pending key), restores
//! the terminal, and the re-run with the same token gets the same
//! certificate.
//!
//! [`phones`]: the phones step, live against the running service;
//! [`clock`]: an unsynchronized clock, and a bad `--sip-listen`.

mod clock;
mod phones;

use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;
use voxgate_testkit::audio_env::AlsaFileDevices;
use voxgate_testkit::cmd::stderr;
use voxgate_testkit::enroll::{
    MACHINE_ID, SERVER_NAME, audit, cert_serial, fingerprint, machine_id, secret_file,
    synced_clock, token,
};
use voxgate_testkit::lab::{Lab, bin, free_udp};
use voxgate_testkit::tmux::{Tmux, choice, restored};

const T: Duration = Duration::from_secs(30);

/// The ALSA file devices (`voxcap` reads one second of a tone), as the
/// environment of the terminal's command.
fn alsa_env(lab: &Lab) -> Vec<(String, String)> {
    let tone: Vec<u8> = (0..48_000)
        .flat_map(|i| {
            let s = (f64::from(i) * 440.0 * std::f64::consts::TAU / 48_000.0).sin() * 8000.0;
            (s as i16).to_le_bytes()
        })
        .collect();
    let raw = lab.dir.join("tone.s16");
    std::fs::write(&raw, tone).unwrap();
    let devs = AlsaFileDevices::new(&lab.dir.join("alsa"), Some(&raw), None);
    vec![("ALSA_CONFIG_PATH".into(), devs.alsa_config_path_env())]
}

/// The options every run here takes: where to write, the sealing input,
/// a sealed key, no service.
fn base_args(lab: &Lab, id: &str) -> Vec<String> {
    let mid = machine_id(&lab.dir, "machine-id", MACHINE_ID);
    vec![
        "setup".into(),
        "--server-name".into(),
        SERVER_NAME.into(),
        "--dir".into(),
        state(lab, id).display().to_string(),
        "--config-out".into(),
        config(lab, id).display().to_string(),
        "--machine-id".into(),
        mid.display().to_string(),
        "--serial".into(),
        lab.dir.join("no-serial").display().to_string(),
        "--backend".into(),
        "sealed-file".into(),
        "--no-service".into(),
        "--clock-source".into(),
        synced_clock(&lab.dir),
    ]
}

/// [`base_args`] with the relay at `relay`, the fleet CA `fp` and device
/// id `id`, then `extra`.
fn enroll_args(lab: &Lab, id: &str, relay: &str, fp: &str, extra: &[&str]) -> Vec<String> {
    let mut args = base_args(lab, id);
    args.extend(
        ["--relay", relay, "--ca-fingerprint", fp, "--device-id", id]
            .iter()
            .chain(extra)
            .map(|a| a.to_string()),
    );
    args
}

fn state(lab: &Lab, id: &str) -> PathBuf {
    lab.dir.join(id)
}

fn config(lab: &Lab, id: &str) -> PathBuf {
    lab.dir.join(format!("{id}.toml"))
}

/// Nothing installed in `dir` and no config: no certificate, no key, no
/// staging directory left behind.
fn nothing_installed(lab: &Lab, id: &str) {
    assert!(!config(lab, id).exists(), "a config was written");
    let dir = state(lab, id);
    let left: Vec<String> = std::fs::read_dir(&dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n != "setup.pending")
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "left in {}: {left:?}", dir.display());
}

fn pending(lab: &Lab, id: &str) -> PathBuf {
    state(lab, id).join("setup.pending")
}

/// `voxgate setup --yes` with every answer in the options, `relay` as the
/// relay, and a token file (never sent: the relay is not there).
fn no_terminal(lab: &Lab, id: &str, relay: &str, fp: &str) -> Output {
    let tok = secret_file(&lab.dir, "unsent.token", "AAAABBBBCCCCDDDDEEEEFFFFGGGGHHHH");
    std::process::Command::new(bin())
        .args(base_args(lab, id))
        .args(["--relay", relay, "--ca-fingerprint", fp, "--device-id", id])
        .args(["--skip-audio", "--yes", "--token-file"])
        .arg(tok)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn every_step_on_a_terminal_with_the_token_typed_hidden() {
    let lab = Lab::new("setup-tty", "mode = \"none\"");
    let mut relay = lab.start_relay();
    let id = "gw-tty";
    let tok = token(&lab, id, Some(3600));
    let fp = fingerprint(&lab);
    let tty = Tmux::start(
        &lab.dir,
        "tty",
        bin(),
        &base_args(&lab, id),
        &alsa_env(&lab),
    );
    tty.wait_for("Relay address (HOST:PORT):", T);
    tty.line(&format!("127.0.0.1:{}", lab.quic_port));
    tty.wait_for("Fleet CA fingerprint", T);
    tty.line(&fp);
    tty.wait_for("Device id:", T);
    // A bad id is explained and asked again.
    tty.line("Not Valid!");
    tty.wait_for("must be 1-64 characters", T);
    // Line editing: a typo erased, an arrow key ignored.
    tty.type_text(&format!("{id}x"));
    tty.key("BSpace");
    tty.key("Left");
    tty.key("Enter");
    let s = tty.wait_for("Which microphone", T);
    tty.line(&choice(&s, "voxcap"));
    let s = tty.wait_for("Which speaker", T);
    tty.line(&choice(&s, "voxplay"));
    let s = tty.wait_for("Enrollment token (not shown):", T);
    assert!(s.contains("[1/5] Hardware"), "{s}");
    assert!(s.contains("ok    microphone: voxcap"), "{s}");
    assert!(s.contains("ok    speaker: voxplay"), "{s}");
    assert!(
        s.contains(&format!(
            "ok    DNS: 127.0.0.1:{0} is 127.0.0.1:{0}",
            lab.quic_port
        )),
        "{s}"
    );
    assert!(s.contains("ok    UDP: a QUIC server answers at"), "{s}");
    assert!(s.contains("holds the fleet CA"), "{s}");
    assert!(
        s.contains("ok    audio.capture: `voxgate test mic: raw S16_LE"),
        "{s}"
    );
    tty.line(&tok);
    // The level meter heard the tone `voxcap` plays (8000 of 32768:
    // -12.2 dBFS); the test tone was played.
    let s = tty.wait_for("Did you hear the tone?", T);
    assert!(s.contains("microphone: speak now"), "{s}");
    let peak: f32 = s
        .split("ok    microphone: peak ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no peak:\n{s}"));
    assert!((-13.5..-11.0).contains(&peak), "{peak}");
    assert!(s.contains("ok    speaker: played 1.0 s of the tone"), "{s}");
    tty.line("y");
    tty.wait_for("Desk phones: extensions to create", T);
    // A bad extension is explained and asked again.
    tty.line("201 999");
    tty.wait_for("`999` is not an extension", T);
    tty.line("201 202");
    let s = tty.wait_for(
        "SIP address the phones register at (IP:PORT) [0.0.0.0:5060]",
        T,
    );
    assert!(s.contains("0.0.0.0 listens on every address"), "{s}");
    // A bad address is explained and asked again.
    tty.line("0.0.0.0:99999");
    tty.wait_for("`0.0.0.0:99999` is not IP:PORT", T);
    let sip_port = voxgate_testkit::lab::free_udp_tcp();
    tty.line(&format!("127.0.0.1:{sip_port}"));
    let s = tty.wait_for("Install the identity", T);
    assert!(
        s.contains(&format!(
            "ok    phone bridge: listens on 127.0.0.1:{sip_port}"
        )),
        "{s}"
    );
    assert!(
        s.contains("ok    key: new, in the sealed-file backend"),
        "{s}"
    );
    assert!(s.contains(&format!("ok    enrolled `{id}`")), "{s}");
    // The round trip through the relay: the relay echoed this session's
    // flow (its downlink mode is none), so packets came back.
    let rtt = s
        .lines()
        .find(|l| l.contains("round trip through the relay:"))
        .unwrap_or_else(|| panic!("no round trip:\n{s}"));
    let back: u32 = rtt
        .split("relay: ")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(back >= 45, "{rtt}");
    assert!(rtt.contains("RTT min") && rtt.contains("ok "), "{rtt}");
    // The relay records uplinks (the lab turns recording on), but not a
    // flow echoed for measurement.
    let recorded = lab.dir.join("recordings").join(id);
    let files = std::fs::read_dir(&recorded).map(|d| d.count()).unwrap_or(0);
    assert_eq!(
        files,
        0,
        "the echoed flow was recorded in {}",
        recorded.display()
    );
    // Nothing is installed before the technician says so.
    assert!(!config(&lab, id).exists());
    tty.line("y");
    // The service was not started (--no-service): setup watches for it
    // anyway, each phone waiting, until Enter.
    let s = tty.wait_for("Enter stops waiting", T);
    assert!(s.contains("the service is not running: start it"), "{s}");
    tty.wait_for("202      waiting... (the service does not answer)", T);
    tty.key("Enter");
    let (code, s) = tty.exit(T);
    assert_eq!(code, 0, "{s}");
    assert!(s.contains("Setup complete"), "{s}");
    assert!(s.contains("service not started (--no-service); start it with: systemctl enable --now voxgate.service"), "{s}");
    assert!(
        s.contains("201      not registered (the service does not answer)"),
        "{s}"
    );
    assert!(!s.contains(&tok), "the token was shown:\n{s}");
    // Each phone's password, shown once; the store holds the accounts.
    for ext in ["201", "202"] {
        assert!(
            s.contains(&format!("ok    extension {ext}: enter in the phone")),
            "{s}"
        );
    }
    let passwords: Vec<&str> = s
        .lines()
        .filter_map(|l| l.trim().strip_prefix("password:"))
        .map(str::trim)
        .collect();
    assert_eq!(passwords.len(), 2, "{s}");
    for p in &passwords {
        assert!(p.len() >= 16, "{p}");
        assert_eq!(s.matches(p).count(), 1, "shown more than once:\n{s}");
    }
    let listed = std::process::Command::new(bin())
        .args(["phones", "list", "--config"])
        .arg(config(&lab, id))
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.contains("201\t") && listed.contains("202\t"),
        "{listed}"
    );
    assert!(!passwords.iter().any(|p| listed.contains(p)));
    let written = std::fs::read_to_string(config(&lab, id)).unwrap();
    assert!(
        written.contains(&format!("device_id = \"{id}\"")),
        "{written}"
    );
    assert!(
        written.contains("[capture]\ndevice = \"voxcap\""),
        "{written}"
    );
    assert!(
        written.contains("[playback]\ndevice = \"voxplay\""),
        "{written}"
    );
    assert!(
        written.contains(&format!(
            "[sip]\nenabled = true\nlisten = \"127.0.0.1:{sip_port}\""
        )),
        "{written}"
    );
    assert!(!written.contains(&tok));
    assert!(state(&lab, id).join("device.key.sealed").exists());
    assert!(!pending(&lab, id).exists(), "the pending key stayed");
    // The config it wrote loads as a gateway config.
    voxgate::config::GatewayConfig::load(&config(&lab, id)).unwrap();
    relay.stop();
}

#[test]
fn a_wrong_token_and_an_unreachable_relay_say_so_and_write_nothing() {
    let lab = Lab::new("setup-wrong", "mode = \"none\"");
    let mut relay = lab.start_relay();
    let id = "gw-wrong";
    let fp = fingerprint(&lab);
    let _issued = token(&lab, id, Some(3600));
    let relay_at = format!("127.0.0.1:{}", lab.quic_port);
    let args = enroll_args(
        &lab,
        id,
        &relay_at,
        &fp,
        &[
            "--skip-audio",
            "--capture",
            "voxcap",
            "--playback",
            "voxplay",
        ],
    );
    let tty = Tmux::start(&lab.dir, "wrong", bin(), &args, &alsa_env(&lab));
    tty.wait_for("Enrollment token (not shown):", T);
    // Not a token at all: asked again.
    tty.line("not-a-token!");
    tty.wait_for("must be the 32 letters and digits", T);
    tty.line("AAAABBBBCCCCDDDDEEEEFFFFGGGGHHHH");
    let (code, s) = tty.exit(T);
    assert_ne!(code, 0, "{s}");
    assert!(s.contains("FAIL  enrollment refused"), "{s}");
    assert!(s.contains("Check the token for a typo"), "{s}");
    nothing_installed(&lab, id);
    assert!(!pending(&lab, id).exists(), "a refused token keeps no key");
    // The terminal is as it was: echo, line editing and signals on.
    assert!(
        restored(&s),
        "the terminal was not restored:
{s}"
    );

    // Nothing listens on the port: ICMP says so, and setup says
    // unreachable (not a certificate problem).
    let port = free_udp();
    let o = no_terminal(&lab, id, &format!("127.0.0.1:{port}"), &fp);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("is unreachable: nothing listens on that UDP port"),
        "{e}"
    );
    assert!(!e.contains("fleet CA"), "{e}");
    nothing_installed(&lab, id);
    // A host that swallows the datagrams: no answer, unreachable.
    let sink = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let o = no_terminal(&lab, id, &sink.local_addr().unwrap().to_string(), &fp);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("is unreachable: no answer ("), "{e}");
    nothing_installed(&lab, id);
    assert!(!pending(&lab, id).exists());
    // Without a terminal a missing option is an error that names it.
    let o = std::process::Command::new(bin())
        .args(["setup", "--dir"])
        .arg(state(&lab, id))
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("--relay is missing, and there is no terminal to ask on"),
        "{e}"
    );

    // For scripts: every answer in the options, no terminal, the summary
    // as JSON on stdout and the phone's password on stderr only.
    let id2 = "gw-script";
    let tok = secret_file(&lab.dir, "script.token", &token(&lab, id2, Some(3600)));
    let o = std::process::Command::new(bin())
        .args(base_args(&lab, id2))
        .args(["--relay", &format!("127.0.0.1:{}", lab.quic_port)])
        .args(["--ca-fingerprint", &fp, "--device-id", id2])
        .args([
            "--yes",
            "--json",
            "--skip-audio",
            "--phone",
            "301",
            "--token-file",
        ])
        .arg(&tok)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stdout)));
    assert_eq!(summary["device"], id2);
    assert_eq!(summary["phones"][0]["extension"], "301");
    // Not started (--no-service), no terminal to watch on: unknown.
    assert_eq!(summary["phones"][0]["state"], "unknown");
    assert_eq!(summary["sip_listen"], "0.0.0.0:5060");
    assert_eq!(
        summary["certificate_serial"].as_str().unwrap(),
        cert_serial(&state(&lab, id2).join("device.pem"))
    );
    let e = stderr(&o);
    let password = e
        .lines()
        .find_map(|l| l.trim().strip_prefix("password:"))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no password on stderr: {e}"));
    assert!(!String::from_utf8_lossy(&o.stdout).contains(password));
    relay.stop();
}

#[test]
fn ctrl_c_after_the_certificate_then_the_same_token_completes_with_the_same_certificate() {
    let lab = Lab::new("setup-ctrlc", "mode = \"none\"");
    let mut relay = lab.start_relay();
    let id = "gw-cc";
    let fp = fingerprint(&lab);
    let tok_file = secret_file(&lab.dir, "cc.token", &token(&lab, id, Some(3600)));
    let relay_at = format!("127.0.0.1:{}", lab.quic_port);
    let tok_path = tok_file.display().to_string();
    let run_args = || {
        enroll_args(
            &lab,
            id,
            &relay_at,
            &fp,
            &[
                "--token-file",
                &tok_path,
                "--capture",
                "voxcap",
                "--playback",
                "voxplay",
            ],
        )
    };

    // Ctrl-C at the first prompt: nothing at all, not even a key.
    let mut early = base_args(&lab, id);
    early.push("--skip-audio".into());
    let tty = Tmux::start(&lab.dir, "early", bin(), &early, &alsa_env(&lab));
    tty.wait_for("Relay address", T);
    tty.type_text("127.0.0.1:");
    tty.key("C-c");
    let (code, s) = tty.exit(T);
    assert_eq!(code, 130, "{s}");
    assert!(
        s.contains("voxgate setup interrupted: nothing was installed."),
        "{s}"
    );
    assert!(!state(&lab, id).exists() || !pending(&lab, id).exists());
    nothing_installed(&lab, id);
    drop(tty);

    // Ctrl-C in the middle of a step (the level meter listens: SIGINT,
    // not a key), after the relay issued the certificate.
    let tty = Tmux::start(&lab.dir, "cc0", bin(), &run_args(), &alsa_env(&lab));
    let s = tty.wait_for("microphone: speak now", T);
    assert!(s.contains(&format!("ok    enrolled `{id}`")), "{s}");
    tty.key("C-c");
    let (code, s) = tty.exit(T);
    assert_eq!(code, 130, "{s}");
    assert!(s.contains("The new key is kept as pending"), "{s}");
    assert!(restored(&s), "the terminal was not restored:\n{s}");
    nothing_installed(&lab, id);
    assert!(pending(&lab, id).join("key.sealed").exists());
    drop(tty);

    // Ctrl-C at the last prompt: the relay answered the same token and
    // key again.
    let tty = Tmux::start(&lab.dir, "cc1", bin(), &run_args(), &alsa_env(&lab));
    tty.wait_for("Did you hear the tone?", T);
    tty.line("y");
    tty.wait_for("Desk phones", T);
    tty.key("Enter");
    let s = tty.wait_for("Install the identity", T);
    assert!(
        s.contains("key: taken over from the interrupted setup"),
        "{s}"
    );
    assert!(s.contains(&format!("ok    enrolled `{id}`")), "{s}");
    tty.key("C-c");
    let (code, s) = tty.exit(T);
    assert_eq!(code, 130, "{s}");
    assert!(s.contains("The new key is kept as pending"), "{s}");
    assert!(
        restored(&s),
        "the terminal was not restored:
{s}"
    );
    nothing_installed(&lab, id);
    assert!(pending(&lab, id).join("key.sealed").exists());
    let issued: Vec<String> = audit(&lab)
        .into_iter()
        .filter(|e| e.0 == "enrolled" && e.2 == id)
        .map(|e| e.3)
        .collect();
    assert_eq!(issued.len(), 1, "{issued:?}");
    drop(tty);

    // Again with the same token: the same key, the same certificate.
    let tty = Tmux::start(&lab.dir, "cc2", bin(), &run_args(), &alsa_env(&lab));
    tty.wait_for("Did you hear the tone?", T);
    tty.line("n");
    tty.wait_for("Desk phones", T);
    tty.key("Enter");
    let s = tty.wait_for("Install the identity", T);
    assert!(s.contains("WARN  speaker: not heard"), "{s}");
    assert!(
        s.contains("key: taken over from the interrupted setup"),
        "{s}"
    );
    tty.line("y");
    let (code, s) = tty.exit(T);
    assert_eq!(code, 0, "{s}");
    let serial = cert_serial(&state(&lab, id).join("device.pem"));
    assert!(issued[0].contains(&serial), "{serial} is not {issued:?}");
    let events: Vec<String> = audit(&lab)
        .into_iter()
        .filter(|e| e.2 == id)
        .map(|e| e.0)
        .collect();
    assert_eq!(
        events.iter().filter(|e| *e == "enrolled").count(),
        1,
        "{events:?}"
    );
    assert_eq!(
        events.iter().filter(|e| *e == "enroll_repeated").count(),
        2,
        "{events:?}"
    );
    assert!(!pending(&lab, id).exists());
    assert!(config(&lab, id).exists());
    relay.stop();
}
