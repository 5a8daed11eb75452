//! Secret canary: a whole enroll + stream cycle with every log at trace
//! level. The token, the private key (its scalar and its PKCS#8, in hex and
//! base64) must appear in no log, no stdout or stderr, and no process's
//! /proc/PID/cmdline or /proc/PID/environ. The cycle includes a
//! certificate renewal with a fresh key (15-second certificates): the
//! enrolled key and the renewed key are both checked, and so are the
//! relay's fleet CA key and TLS key.

use base64::Engine as _;
use std::time::Duration;
use voxgate_testkit::audio_env::{AlsaFileDevices, speech_fixture};
use voxgate_testkit::enroll::{Setup, create_token, secret_file};
use voxgate_testkit::lab::{Lab, dev_privilege, metric, wait_for};

fn forms(bytes: &[u8]) -> Vec<String> {
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    vec![
        hex.clone(),
        hex.to_uppercase(),
        base64::engine::general_purpose::STANDARD.encode(bytes),
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(bytes),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes),
    ]
}

#[test]
fn no_secret_reaches_logs_output_argv_or_environment() {
    let lab = Lab::new(
        "canary",
        "mode = \"echo\"\n[enrollment]\ncertificate_lifetime_s = 15",
    );
    // Trace everything in the relay too.
    let rc = lab.dir.join("relay.toml");
    let text = std::fs::read_to_string(&rc)
        .unwrap()
        .replace("log = \"debug\"", "log = \"trace\"");
    std::fs::write(&rc, text).unwrap();
    let mut relay = lab.start_relay();
    let out = create_token(&lab, "gw-canary", None);
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let token_stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let tok = secret_file(&lab.dir, "token", &token);
    let cfg = lab.dir.join("gw.toml");
    let (setup, _) = Setup::new(&lab, "gw-canary")
        .token_file(&tok)
        .dir(&lab.dir.join("gw"))
        .config_out(&cfg)
        .no_serial()
        .args(["--backend", "sealed-file"])
        .env("VOXGATE_LOG", "trace")
        .output();
    assert!(
        setup.status.success(),
        "{}",
        String::from_utf8_lossy(&setup.stderr)
    );

    let speech = speech_fixture(&lab.dir, "Nothing secret should be written down.");
    let devs = AlsaFileDevices::new(&lab.dir, Some(&speech), Some(&lab.dir.join("spk.raw")));
    let metrics = format!("127.0.0.1:{}", voxgate_testkit::lab::free_tcp());
    let written = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        format!(
            "{written}\n[capture]\ndevice = \"voxcap\"\n[playback]\ndevice = \"voxplay\"\n[telemetry]\nlog = \"trace\"\nmetrics = \"{metrics}\"\n{}",
            dev_privilege(&lab.dir)
        ),
    )
    .unwrap();
    let env = vec![("ALSA_CONFIG_PATH".to_string(), devs.alsa_config_path_env())];
    let mut gw = lab.start_gateway(&cfg, &env);
    let m = metrics.parse().unwrap();
    // The enrolled key, before renewal replaces it.
    let enrolled_key = std::fs::read(lab.dir.join("gw/device.key.sealed")).unwrap();
    wait_for(Duration::from_secs(15), "streaming", || {
        gw.assert_running();
        metric(m, "voxgate_frames_sent_total") >= 50.0
    });
    wait_for(Duration::from_secs(30), "the certificate renewal", || {
        gw.assert_running();
        gw.log_text().contains("certificate renewed")
    });
    // What the kernel shows about the running processes.
    let mut proc_text = String::new();
    for pid in [gw.pid(), relay.pid()] {
        for f in ["cmdline", "environ"] {
            proc_text.push_str(&String::from_utf8_lossy(
                &std::fs::read(format!("/proc/{pid}/{f}")).unwrap_or_default(),
            ));
        }
    }
    gw.stop();
    relay.stop();

    // The secrets, recovered the way only this test may.
    let renewed_key = std::fs::read(lab.dir.join("gw/device.key.sealed")).unwrap();
    assert_ne!(renewed_key, enrolled_key, "renewal made no fresh key");
    let material =
        voxgate::pki::sealed::Material::new("0123456789abcdef0123456789abcdef", None).unwrap();
    let mut needles = vec![token.clone()];
    for sealed in [&enrolled_key, &renewed_key] {
        let pkcs8 = voxgate::pki::sealed::unseal(&material, sealed).unwrap();
        // The P-256 scalar sits after the fixed PKCS#8/ECPrivateKey prefix.
        needles.extend(forms(&pkcs8[36..68]));
        needles.extend(forms(&pkcs8));
    }
    // The relay's own keys: the fleet CA (issuing) key and its TLS key.
    let relay_cfg = voxgate::config::RelayConfig::load(&lab.dir.join("relay.toml")).unwrap();
    let state = lab.dir.join("relay");
    let ca_key = voxgate::relay::ca::load_ca_key(&state, &relay_cfg.ca_binding).unwrap();
    let tls_key = voxgate::relay::ca::load_relay_key(&state, &relay_cfg.ca_binding).unwrap();
    for pkcs8 in [ca_key.serialize_der(), tls_key.secret_der().to_vec()] {
        needles.extend(forms(&pkcs8[36..68]));
        needles.extend(forms(&pkcs8));
    }

    let mut haystack = vec![
        (
            "setup stdout",
            String::from_utf8_lossy(&setup.stdout).into_owned(),
        ),
        (
            "setup stderr",
            String::from_utf8_lossy(&setup.stderr).into_owned(),
        ),
        ("token stderr", token_stderr),
        ("/proc", proc_text),
        ("gateway log", gw.log_text()),
        ("relay log", relay.log_text()),
        ("config", std::fs::read_to_string(&cfg).unwrap()),
    ];
    for entry in std::fs::read_dir(&lab.dir).unwrap().flatten() {
        if entry.path().extension().is_some_and(|e| e == "log") {
            haystack.push((
                "log file",
                std::fs::read_to_string(entry.path()).unwrap_or_default(),
            ));
        }
    }
    assert!(
        haystack
            .iter()
            .any(|(_, t)| t.contains("TRACE") || t.contains("\"level\":\"TRACE\"")),
        "trace logging was not on"
    );
    for (name, text) in &haystack {
        for n in &needles {
            assert!(
                !text.contains(n.as_str()),
                "a secret ({} chars) leaked into {name}",
                n.len()
            );
        }
    }
}
