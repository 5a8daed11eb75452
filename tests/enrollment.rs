//! Enrollment end to end: `voxgate relay token create` → `voxgate setup`
//! (sealed key, pinned CA) → `voxgate run` streams with the sealed key.
//! Tokens are single use, expire, are audited when wrong, and floods from
//! one address are limited. A wrong CA fingerprint aborts before the token
//! leaves the box. Sealed keys refuse tampering, another machine, and loose
//! file modes.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;
use voxgate_testkit::audio_env::{AlsaFileDevices, speech_fixture};
use voxgate_testkit::cmd::stderr;
use voxgate_testkit::enroll::{Setup, audit, fingerprint, machine_id, secret_file, token};
use voxgate_testkit::lab::{Lab, bin, dev_privilege, metric, wait_for};

/// `voxgate setup --backend sealed-file` with the given fingerprint, token
/// file and machine id.
fn setup(lab: &Lab, id: &str, fp: &str, tok: &Path, mid: &Path) -> (Output, PathBuf) {
    Setup::new(lab, id)
        .fingerprint(fp)
        .token_file(tok)
        .machine_id(mid)
        .args(["--backend", "sealed-file"])
        .output()
}

#[test]
fn enroll_then_stream_with_the_sealed_key() {
    let lab = Lab::new("enroll-ok", "mode = \"none\"");
    let mut relay = lab.start_relay();
    let fp = fingerprint(&lab);
    let tok = token(&lab, "gw-enr", Some(3600));
    let mid = machine_id(&lab.dir, "machine-id", "5f3c0a1e9b8d4c7e8a6b2d1f0e9c8b7a");
    let (out, cfg) = setup(
        &lab,
        "gw-enr",
        &fp,
        &secret_file(&lab.dir, "tok", &tok),
        &mid,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains("enrolled `gw-enr`"), "{printed}");
    // No secret in what setup wrote or printed.
    let written = std::fs::read_to_string(&cfg).unwrap();
    for text in [written.as_str(), &printed, &stderr(&out)] {
        assert!(!text.contains(&tok), "token leaked: {text}");
        assert!(!text.contains("PRIVATE KEY"));
    }
    let sealed = lab.dir.join("gw-enr/device.key.sealed");
    assert_eq!(
        std::fs::metadata(&sealed).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // The written config, plus the lab's audio and development sections.
    let speech = speech_fixture(&lab.dir, "Enrolled with a sealed key.");
    let devs = AlsaFileDevices::new(&lab.dir, Some(&speech), None);
    let metrics = format!("127.0.0.1:{}", voxgate_testkit::lab::free_tcp());
    std::fs::write(
        &cfg,
        format!(
            "{written}\n[capture]\ndevice = \"voxcap\"\n[playback]\nenabled = false\n[telemetry]\nmetrics = \"{metrics}\"\n{}",
            dev_privilege(&lab.dir)
        ),
    )
    .unwrap();
    let env = vec![("ALSA_CONFIG_PATH".to_string(), devs.alsa_config_path_env())];
    let mut gw = lab.start_gateway(&cfg, &env);
    let m = metrics.parse().unwrap();
    wait_for(
        Duration::from_secs(15),
        "streaming with the sealed key",
        || {
            gw.assert_running();
            metric(m, "voxgate_frames_sent_total") >= 50.0
        },
    );
    gw.stop();
    relay.stop();
    assert!(!relay.log_text().contains(&tok), "token in the relay log");
    let events: Vec<String> = audit(&lab).into_iter().map(|e| e.0).collect();
    assert!(events.contains(&"enrolled".to_string()), "{events:?}");
}

#[test]
fn tokens_are_single_use_expire_and_failures_are_audited_and_limited() {
    let lab = Lab::new("enroll-tokens", "mode = \"none\"");
    let mut relay = lab.start_relay();
    let fp = fingerprint(&lab);
    let mid = machine_id(&lab.dir, "machine-id", "0123456789abcdef0123456789abcdef");

    let tok = token(&lab, "gw-a", Some(3600));
    let f = secret_file(&lab.dir, "t1", &tok);
    assert!(setup(&lab, "gw-a", &fp, &f, &mid).0.status.success());
    let (again, _) = setup(&lab, "gw-b", &fp, &f, &mid);
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("enrollment refused"),
        "{}",
        stderr(&again)
    );

    let short = token(&lab, "gw-c", Some(1));
    std::thread::sleep(Duration::from_millis(2_100));
    let (late, _) = setup(
        &lab,
        "gw-c",
        &fp,
        &secret_file(&lab.dir, "t2", &short),
        &mid,
    );
    assert!(!late.status.success());

    let (wrong, _) = setup(
        &lab,
        "gw-d",
        &fp,
        &secret_file(&lab.dir, "t3", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
        &mid,
    );
    assert!(!wrong.status.success());
    let log = audit(&lab);
    let reasons: Vec<&str> = log
        .iter()
        .filter(|e| e.0 == "enroll_rejected")
        .map(|e| e.3.as_str())
        .collect();
    assert!(reasons.contains(&"token already used"), "{log:?}");
    assert!(reasons.contains(&"token expired"), "{log:?}");
    assert!(reasons.contains(&"unknown token"), "{log:?}");
    assert!(
        log.iter()
            .any(|e| e.0 == "enroll_rejected" && e.1 == "127.0.0.1"),
        "source audited: {log:?}"
    );

    // A flood of guesses from one address is cut off.
    let bad = secret_file(&lab.dir, "t4", "BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB");
    let mut limited = false;
    for i in 0..8 {
        let (o, _) = setup(&lab, &format!("gw-f{i}"), &fp, &bad, &mid);
        assert!(!o.status.success());
        if stderr(&o).contains("too many enrollment attempts") {
            limited = true;
            break;
        }
    }
    assert!(limited, "no rate limit after repeated failures");
    assert!(audit(&lab).iter().any(|e| e.0 == "enroll_limited"));
    // Still limited even with a good token: the address is locked out.
    let good = token(&lab, "gw-g", Some(3600));
    let (o, _) = setup(&lab, "gw-g", &fp, &secret_file(&lab.dir, "t5", &good), &mid);
    assert!(
        stderr(&o).contains("too many enrollment attempts"),
        "{}",
        stderr(&o)
    );
    relay.stop();
}

#[test]
fn a_wrong_ca_fingerprint_aborts_before_anything_is_sent() {
    let lab = Lab::new("enroll-fp", "mode = \"none\"");
    let mut relay = lab.start_relay();
    let mid = machine_id(&lab.dir, "machine-id", "0123456789abcdef0123456789abcdef");
    let tok = token(&lab, "gw-x", Some(3600));
    let before = audit(&lab).len();
    let wrong = format!("SHA256:{}", "ab".repeat(32));
    let (o, cfg) = setup(
        &lab,
        "gw-x",
        &wrong,
        &secret_file(&lab.dir, "t", &tok),
        &mid,
    );
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("could not prove it holds the fleet CA") && e.contains("nothing was sent"),
        "{e}"
    );
    assert_eq!(
        audit(&lab).len(),
        before,
        "the relay saw an enrollment attempt"
    );
    assert!(!cfg.exists() && !lab.dir.join("gw-x/device.key.sealed").exists());
    // The token is still good: it was never sent.
    let (ok, _) = setup(
        &lab,
        "gw-x",
        &fingerprint(&lab),
        &secret_file(&lab.dir, "t", &tok),
        &mid,
    );
    assert!(ok.status.success(), "{}", stderr(&ok));
    relay.stop();
}

#[test]
fn sealed_keys_refuse_tampering_other_machines_and_loose_modes() {
    let lab = Lab::new("enroll-sealed", "mode = \"none\"");
    let mut relay = lab.start_relay();
    let mid = machine_id(&lab.dir, "machine-id", "0123456789abcdef0123456789abcdef");
    let tok = token(&lab, "gw-s", Some(3600));
    let (o, cfg) = setup(
        &lab,
        "gw-s",
        &fingerprint(&lab),
        &secret_file(&lab.dir, "t", &tok),
        &mid,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    relay.stop();
    let written = std::fs::read_to_string(&cfg).unwrap();
    let run = |cfg_text: &str| {
        let c = lab.dir.join("run.toml");
        std::fs::write(&c, format!("{cfg_text}\n{}", dev_privilege(&lab.dir))).unwrap();
        let out = Command::new(bin())
            .args(["run", "--config"])
            .arg(&c)
            .output()
            .unwrap();
        assert!(!out.status.success());
        stderr(&out)
    };
    let sealed = lab.dir.join("gw-s/device.key.sealed");
    let original = std::fs::read(&sealed).unwrap();

    // Another machine: the binding input differs.
    let other = machine_id(&lab.dir, "other-id", "ffffffffffffffffffffffffffffffff");
    let e = run(&written.replace(&mid.display().to_string(), &other.display().to_string()));
    assert!(e.contains("sealed on another machine"), "{e}");

    // Tampering: one flipped bit.
    let mut bad = original.clone();
    bad[60] ^= 1;
    std::fs::write(&sealed, &bad).unwrap();
    let e = run(&written);
    assert!(e.contains("does not open") && e.contains("modified"), "{e}");

    // Readable by the group: refused before it is read.
    std::fs::write(&sealed, &original).unwrap();
    std::fs::set_permissions(&sealed, std::fs::Permissions::from_mode(0o640)).unwrap();
    let e = run(&written);
    assert!(e.contains("readable by others (mode 0640)"), "{e}");
}
