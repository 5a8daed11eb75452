//! Identity backends end to end against a real relay: `voxgate setup
//! --backend tpm` on a real software TPM (swtpm) then `voxgate run` streams
//! with the TPM-held key, across a gateway and TPM restart; a foreign or
//! missing TPM stops the gateway with the recovery command; `--backend
//! auto` without a TPM falls back to a sealed file and says why;
//! `--backend systemd-creds` writes an encrypted credential that `voxgate
//! run` reads from a CREDENTIALS_DIRECTORY; `voxgate keys status` reports
//! and fails when not enrolled.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};
use voxgate_testkit::audio_env::{AlsaFileDevices, speech_fixture};
use voxgate_testkit::cmd::{stderr, stdout};
use voxgate_testkit::enroll::Setup;
use voxgate_testkit::lab::{Lab, bin, dev_privilege, free_tcp, metric, opusdec, wait_for};
use voxgate_testkit::swtpm::Swtpm;

/// `voxgate setup` for `id` with extra arguments; returns its output and
/// the config it writes.
fn setup(lab: &Lab, id: &str, extra: &[&str], env: &[(&str, &str)]) -> (Output, PathBuf) {
    let mut s = Setup::new(lab, id).args(extra);
    for (k, v) in env {
        s = s.env(k, v);
    }
    s.output()
}

/// The config `setup` wrote, plus the lab's audio, metrics and development
/// privilege sections. Returns the metrics address.
fn run_config(lab: &Lab, cfg: &Path, written: &str) -> std::net::SocketAddr {
    let metrics: std::net::SocketAddr = format!("127.0.0.1:{}", free_tcp()).parse().unwrap();
    std::fs::write(
        cfg,
        format!(
            "{written}\n[capture]\ndevice = \"voxcap\"\n[playback]\nenabled = false\n[telemetry]\nlog = \"debug\"\nmetrics = \"{metrics}\"\n{}",
            dev_privilege(&lab.dir)
        ),
    )
    .unwrap();
    metrics
}

fn alsa(lab: &Lab, text: &str) -> (AlsaFileDevices, Vec<(String, String)>) {
    let speech = speech_fixture(&lab.dir, text);
    let devs = AlsaFileDevices::new(&lab.dir, Some(&speech), None);
    let env = vec![("ALSA_CONFIG_PATH".to_string(), devs.alsa_config_path_env())];
    (devs, env)
}

/// Start `voxgate run` and wait until it has sent `frames` frames.
fn stream(
    lab: &Lab,
    cfg: &Path,
    m: std::net::SocketAddr,
    env: &[(String, String)],
    frames: f64,
) -> voxgate_testkit::lab::Proc {
    let mut gw = lab.start_gateway(cfg, env);
    wait_for(Duration::from_secs(20), "streaming", || {
        gw.assert_running();
        metric(m, "voxgate_frames_sent_total") >= frames
            && metric(m, "voxgate_relay_connected") == 1.0
    });
    gw
}

/// Run `voxgate run` expecting it to stop at start-up; its stderr.
fn run_fails(cfg: &Path, env: &[(String, String)]) -> String {
    let t0 = Instant::now();
    let mut c = Command::new(bin());
    c.args(["run", "--config"]).arg(cfg);
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    assert!(!out.status.success(), "voxgate run should have failed");
    assert!(
        t0.elapsed() < Duration::from_secs(30),
        "took {:?}",
        t0.elapsed()
    );
    stderr(&out)
}

/// Every recording decodes to audible sound (speech, not silence).
fn assert_recordings_hold_audio(lab: &Lab, at_least: usize) {
    let recs = lab.recordings();
    assert!(recs.len() >= at_least, "{recs:?}");
    for r in recs
        .iter()
        .filter(|r| r.extension().is_some_and(|e| e == "ogg"))
    {
        let wav = opusdec(r);
        let mut rd = hound::WavReader::open(&wav).unwrap();
        let samples: Vec<f64> = rd.samples::<i16>().map(|s| f64::from(s.unwrap())).collect();
        assert!(
            samples.len() > 48_000 / 2,
            "{}: {} samples",
            r.display(),
            samples.len()
        );
        let rms = (samples.iter().map(|s| s * s).sum::<f64>() / samples.len() as f64).sqrt();
        assert!(rms > 200.0, "{}: RMS {rms:.0}: silence", r.display());
    }
}

#[test]
fn tpm_backend_enrolls_streams_survives_restarts_and_names_the_recovery() {
    let lab = Lab::new("id-tpm", "mode = \"none\"");
    let mut relay = lab.start_relay();
    let tpm = Swtpm::start_in(lab.dir.join("swtpm"));
    let spec = tpm.spec();
    let (out, cfg) = setup(&lab, "gw-tpm", &["--backend", "tpm", "--tpm", &spec], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("backend:     tpm"),
        "{}",
        stdout(&out)
    );
    let blob_path = lab.dir.join("gw-tpm/device.key.tpm");
    let blob = std::fs::read(&blob_path).unwrap();
    assert!(blob.starts_with(b"VXTPMOBJ"), "not a TPM blob");
    assert_eq!(
        std::fs::metadata(&blob_path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(!lab.dir.join("gw-tpm/device.key.sealed").exists());
    let written = std::fs::read_to_string(&cfg).unwrap();
    assert!(written.contains("backend = \"tpm\""), "{written}");
    assert!(written.contains(&format!("tpm = \"{spec}\"")), "{written}");

    // keys status: enrolled, TPM reachable and holding the key.
    let st = Command::new(bin())
        .args(["keys", "status", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let text = stdout(&st);
    assert!(st.status.success(), "{text}{}", stderr(&st));
    for want in [
        "device:        gw-tpm",
        "backend:       tpm",
        "serial:",
        "left)",
        "renewal due:",
        "last renewal:",
        "(enrolled)",
        "reachable; holds the device key",
    ] {
        assert!(text.contains(want), "`{want}` missing from:\n{text}");
    }

    // Stream with the TPM-held key.
    let (_devs, env) = alsa(&lab, "This device signs its handshakes in the TPM.");
    let m = run_config(&lab, &cfg, &written);
    let mut gw = stream(&lab, &cfg, m, &env, 50.0);
    gw.stop();
    let log = gw.log_text();
    assert!(log.contains("TPM holds the device key"), "{log}");
    assert!(
        log.contains("backend=tpm") || log.contains("\"backend\":\"tpm\""),
        "{log}"
    );

    // Restart the TPM (same state, new port) and the gateway: the same blob
    // loads again and the device reconnects.
    let tpm = tpm.restart();
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace(&spec, &tpm.spec());
    std::fs::write(&cfg, text).unwrap();
    assert_eq!(std::fs::read(&blob_path).unwrap(), blob);
    let mut gw = stream(&lab, &cfg, m, &env, 50.0);

    // The TPM dies while the gateway runs; the relay restarts, so the next
    // handshake needs a signature: the gateway says why it cannot connect
    // and what to do, and keeps running (no silent stop).
    let mut tpm = tpm;
    tpm.stop();
    relay.stop();
    let mut relay = lab.start_relay();
    wait_for(
        Duration::from_secs(20),
        "the TPM failure to be reported",
        || {
            gw.assert_running();
            gw.log_text()
                .contains("TPM signing failed during a TLS handshake")
        },
    );
    let log = gw.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("TPM signing failed during a TLS handshake"))
        .unwrap();
    assert!(line.contains("voxgate setup"), "{line}");
    assert!(line.contains(&tpm.spec()), "names the TPM: {line}");
    gw.assert_running();
    gw.stop();
    relay.stop();
    assert_recordings_hold_audio(&lab, 2);

    // A TPM that does not hold the key (cleared or replaced): the gateway
    // stops at start-up and names the recovery.
    let cleared = Swtpm::start_in(lab.dir.join("swtpm-cleared"));
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace(&tpm.spec(), &cleared.spec());
    std::fs::write(&cfg, &text).unwrap();
    let e = run_fails(&cfg, &env);
    assert!(e.contains("voxgate setup --backend tpm"), "{e}");
    assert!(e.contains("re-enroll"), "{e}");

    // No TPM at all: a clear error too, and keys status fails.
    let mut cleared = cleared;
    cleared.stop();
    let e = run_fails(&cfg, &env);
    assert!(
        e.contains(&format!("cannot open TPM {}", cleared.spec())),
        "{e}"
    );
    assert!(e.contains("voxgate setup"), "{e}");
    let st = Command::new(bin())
        .args(["keys", "status", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!st.status.success());
    assert!(stdout(&st).contains("UNREACHABLE"), "{}", stdout(&st));
    assert!(stderr(&st).contains("does not answer"), "{}", stderr(&st));
}

/// A TPM that is there but fails is no reason to put the key in a file:
/// `--backend auto` stops with the reason unless `--allow-fallback` says
/// otherwise; only a TPM that does not exist at all falls back by itself.
#[test]
fn auto_with_a_present_but_failing_tpm_stops_unless_fallback_is_allowed() {
    let lab = Lab::new("id-auto-fail", "mode = \"none\"");
    let mut relay = lab.start_relay();
    // A real TPM that hangs: swtpm frozen, its port still accepting.
    let tpm = Swtpm::start("auto-hung");
    tpm.freeze();
    // A device node that exists but is no TPM.
    for (id, spec) in [
        ("gw-hung", tpm.spec()),
        ("gw-null", "device:/dev/null".into()),
    ] {
        let (out, cfg) = setup(&lab, id, &["--backend", "auto", "--tpm", &spec], &[]);
        let e = stderr(&out);
        assert!(!out.status.success(), "{id}: enrolled anyway: {e}");
        assert!(
            e.contains(&format!(
                "the TPM at {spec} is present but failed the probe"
            )),
            "{id}: {e}"
        );
        assert!(e.contains("--allow-fallback"), "{id}: {e}");
        assert!(!cfg.exists(), "{id}: a config was written");
        assert!(!lab.dir.join(id).join("device.key.sealed").exists());
    }
    // --allow-fallback: sealed, and the reason says the TPM failed.
    let (out, cfg) = setup(
        &lab,
        "gw-allowed",
        &[
            "--backend",
            "auto",
            "--tpm",
            &tpm.spec(),
            "--allow-fallback",
        ],
        &[],
    );
    let e = stderr(&out);
    assert!(out.status.success(), "{e}");
    assert!(e.contains("is present but failed"), "{e}");
    let written = std::fs::read_to_string(&cfg).unwrap();
    assert!(written.contains("backend = \"sealed-file\""), "{written}");
    assert!(written.contains("present but failed"), "{written}");
    // No device node at all: no TPM, the sealed file by itself.
    let (out, cfg) = setup(
        &lab,
        "gw-nodev",
        &[
            "--backend",
            "auto",
            "--tpm",
            "device:/dev/voxgate-no-such-tpm",
        ],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("there is none"), "{}", stderr(&out));
    assert!(
        std::fs::read_to_string(&cfg)
            .unwrap()
            .contains("sealed-file")
    );
    relay.stop();
}

#[test]
fn auto_without_a_tpm_falls_back_to_a_sealed_file_and_says_why() {
    let lab = Lab::new("id-auto", "mode = \"none\"");
    let mut relay = lab.start_relay();
    // Nothing listens on this port: no TPM.
    let nowhere = format!("swtpm:127.0.0.1:{}", free_tcp());
    let t0 = Instant::now();
    let (out, cfg) = setup(
        &lab,
        "gw-auto",
        &["--backend", "auto", "--tpm", &nowhere],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(t0.elapsed() < Duration::from_secs(20), "probe not bounded");
    let e = stderr(&out);
    assert!(
        e.contains(&format!("no usable TPM at {nowhere}")) && e.contains("sealed to this box"),
        "{e}"
    );
    let written = std::fs::read_to_string(&cfg).unwrap();
    assert!(written.contains("backend = \"sealed-file\""), "{written}");
    assert!(
        written.contains("no usable TPM"),
        "the reason is kept: {written}"
    );
    assert!(lab.dir.join("gw-auto/device.key.sealed").exists());
    assert!(!lab.dir.join("gw-auto/device.key.tpm").exists());

    // `backend = "auto"` in the config reads the sealed file and says so.
    let (_devs, env) = alsa(&lab, "No TPM here, so the key is sealed to the box.");
    let m = run_config(
        &lab,
        &cfg,
        &written.replace("backend = \"sealed-file\"", "backend = \"auto\""),
    );
    let mut gw = stream(&lab, &cfg, m, &env, 50.0);
    gw.stop();
    relay.stop();
    let log = gw.log_text();
    assert!(log.contains("the key is a sealed file"), "{log}");
    assert_recordings_hold_audio(&lab, 1);

    // keys status: the sealed file, no TPM used.
    let st = Command::new(bin())
        .args(["keys", "status", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let text = stdout(&st);
    assert!(st.status.success(), "{text}{}", stderr(&st));
    assert!(text.contains("backend:       auto: sealed-file"), "{text}");
    assert!(text.contains("key usable:    yes"), "{text}");
    assert!(text.contains("not used by this backend"), "{text}");
    // The same key on "another box": status says so and fails.
    let mid = lab.dir.join("machine-id");
    std::fs::write(&mid, "ffffffffffffffffffffffffffffffff\n").unwrap();
    let st = Command::new(bin())
        .args(["keys", "status", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!st.status.success());
    assert!(stdout(&st).contains("key usable:    NO"), "{}", stdout(&st));
    assert!(stderr(&st).contains("voxgate setup"), "{}", stderr(&st));
}

#[test]
fn systemd_creds_backend_reads_the_credentials_directory() {
    let lab = Lab::new("id-creds", "mode = \"none\"");
    let mut relay = lab.start_relay();
    // A host key of the test's own, so that nothing outside the lab changes.
    let secret = lab.dir.join("credential.secret");
    let secret_env = secret.display().to_string();
    let store = lab.dir.join("credstore.encrypted/voxgate-device-key");
    let (out, cfg) = setup(
        &lab,
        "gw-creds",
        &[
            "--backend",
            "systemd-creds",
            "--credential-out",
            &store.display().to_string(),
            "--credential-key",
            "host",
        ],
        &[("SYSTEMD_CREDENTIAL_SECRET", &secret_env)],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let written = std::fs::read_to_string(&cfg).unwrap();
    assert!(written.contains("backend = \"systemd-creds\""), "{written}");
    assert!(
        written.contains("credential = \"voxgate-device-key\""),
        "{written}"
    );
    let enc = std::fs::read(&store).unwrap();
    assert!(
        !String::from_utf8_lossy(&enc).contains("PRIVATE KEY"),
        "credential not encrypted"
    );
    // No plaintext key anywhere in the state directory.
    for f in std::fs::read_dir(lab.dir.join("gw-creds"))
        .unwrap()
        .flatten()
    {
        let t = std::fs::read(f.path()).unwrap();
        assert!(
            !String::from_utf8_lossy(&t).contains("PRIVATE KEY"),
            "{}",
            f.path().display()
        );
    }

    // What systemd does at service start: decrypt into a private directory.
    let creds = lab.dir.join("run-credentials");
    std::fs::create_dir_all(&creds).unwrap();
    std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o700)).unwrap();
    let plain = creds.join("voxgate-device-key");
    let dec = Command::new("systemd-creds")
        .args(["decrypt", "--name=voxgate-device-key"])
        .arg(&store)
        .arg(&plain)
        .env("SYSTEMD_CREDENTIAL_SECRET", &secret_env)
        .output()
        .expect("systemd-creds missing");
    assert!(dec.status.success(), "{}", stderr(&dec));
    std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o400)).unwrap();

    let (_devs, mut env) = alsa(&lab, "The key came from a systemd credential.");
    let m = run_config(&lab, &cfg, &written);
    // Without the directory: a clear error naming the unit setting.
    let e = run_fails(&cfg, &env);
    assert!(
        e.contains("CREDENTIALS_DIRECTORY is not set")
            && e.contains("LoadCredentialEncrypted=voxgate-device-key"),
        "{e}"
    );
    env.push(("CREDENTIALS_DIRECTORY".into(), creds.display().to_string()));
    let mut gw = stream(&lab, &cfg, m, &env, 50.0);
    gw.stop();
    relay.stop();
    let log = gw.log_text();
    assert!(log.contains("systemd-creds"), "{log}");
    assert_recordings_hold_audio(&lab, 1);
}

#[test]
fn keys_status_fails_clearly_when_not_enrolled() {
    let dir = voxgate_testkit::lab::test_dir("id-status");
    let cfg = dir.join("voxgate.toml");
    let st = Command::new(bin())
        .args(["keys", "status", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!st.status.success());
    let e = stderr(&st);
    assert!(
        e.contains("not enrolled") && e.contains("voxgate setup"),
        "{e}"
    );

    // A config whose certificate is not there yet.
    std::fs::write(
        &cfg,
        "device_id = \"gw-x\"\n[relay]\naddress = \"127.0.0.1:1\"\nca = \"ca.pem\"\n[identity]\nbackend = \"sealed-file\"\ncert = \"device.pem\"\nkey = \"device.key.sealed\"\n",
    )
    .unwrap();
    let st = Command::new(bin())
        .args(["keys", "status", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!st.status.success());
    let e = stderr(&st);
    assert!(e.contains("not enrolled: no device certificate"), "{e}");
}
