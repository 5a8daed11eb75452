//! Secret canary: a whole enroll + stream cycle with every log at trace
//! level. The token, the private key (its scalar and its PKCS#8, in hex and
//! base64) must appear in no log, no stdout or stderr, and no process's
//! /proc/PID/cmdline or /proc/PID/environ. The cycle includes a
//! certificate renewal with a fresh key (15-second certificates): the
//! enrolled key and the renewed key are both checked, and so are the
//! relay's fleet CA key and TLS key.
//!
//! The phone bridge is on too: the desk phone passwords that `voxgate phones
//! add` and `phones rotate` print (on their stdout, once: the only place they
//! may appear), and the digests derived from them (HA1, SHA-256 and MD5), must
//! appear in no log, in the phone store file (sealed), in the commands'
//! stderr, and in no argv, while phones register and are rotated on the
//! running gateway.
//!
//! Webhook secrets too: the `whsec_` secrets `relay webhook add` and
//! `rotate-secret` print (on their stdout, once) and their key bytes appear
//! in no log (the relay signs deliveries with both at trace level), no
//! listing, and no file (the registry holds them sealed).
//!
//! The operator API is on: an API key made by `voxgate relay api-key
//! create` (printed on its stdout, once), one made through the API (in the
//! answer, once) and one made by `api-key rotate` are used against the
//! running relay; neither the keys nor their secrets may appear anywhere
//! else (the registry keeps the SHA-256 of each secret).
//!
//! It also includes a
//! relay backup with keys (`relay backup --with-keys`, the passphrase on
//! stdin) while the relay runs, and its restore on another machine (the
//! passphrase in a file): the passphrase and the relay's keys appear in
//! none of the above, nor in the backup file itself.
//!
//! Secrets are also looked for the way a careless dump would write them:
//! PEM-wrapped (the base64 body split over lines, so each haystack is also
//! searched with its line breaks and `\n` escapes removed), and in every
//! file the run left in its directories, except the two files the test
//! itself wrote secrets into (the token and the passphrase) and the SIP
//! test phones' scenarios (a phone's own password). No process of the run
//! may dump core: the daemons run with `RLIMIT_CORE` 0, and no core file
//! is left anywhere in the run's directories.

use base64::Engine as _;
use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;
use voxgate_testkit::audio_env::{AlsaFileDevices, speech_fixture};
use voxgate_testkit::enroll::{Setup, create_token, secret_file};
use voxgate_testkit::lab::{Lab, bin, dev_privilege, free_udp, metric, wait_for};
use voxgate_testkit::sip::{Sipp, free_rtp_range, register_scenario, sipp37};

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

/// `voxgate phones ARGS -c CFG` at trace level; its argv is added to `argv`.
fn phones(cfg: &Path, args: &[&str], argv: &mut String) -> Output {
    let mut c = Command::new(bin());
    c.arg("phones").args(args).arg("-c").arg(cfg);
    c.env("VOXGATE_LOG", "trace");
    for a in std::iter::once(c.get_program()).chain(c.get_args()) {
        argv.push_str(&a.to_string_lossy());
        argv.push(' ');
    }
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "phones {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// What the kernel shows of a running process: its argv and environment.
fn proc_of(pid: u32) -> String {
    let mut text = String::new();
    for f in ["cmdline", "environ"] {
        text.push_str(&String::from_utf8_lossy(
            &std::fs::read(format!("/proc/{pid}/{f}")).unwrap_or_default(),
        ));
    }
    text
}

/// Start `voxgate relay ARGS` at trace level with piped standard streams.
fn relay_command(args: &[&str], cfg: &Path, file: &Path, extra: &[&str]) -> Child {
    Command::new(bin())
        .arg("relay")
        .args(args)
        .arg("--config")
        .arg(cfg)
        .arg(file)
        .args(extra)
        .env("VOXGATE_LOG", "trace")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Give `child` `input` on stdin, read its /proc while it works (the key
/// derivation takes about half a second), and wait for it.
fn feed_and_watch(mut child: Child, input: &[u8], proc_text: &mut String) -> Output {
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input).unwrap();
    drop(stdin);
    proc_text.push_str(&proc_of(child.id()));
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The passwords `phones add` (`password: PW`) or `phones rotate`
/// (`EXT<TAB>PW`) printed, with their extensions.
fn printed_passwords(out: &Output) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(&out.stdout);
    let added = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("password:"))
        .map(str::trim);
    match added {
        Some(pw) => {
            let ext = text
                .lines()
                .find_map(|l| l.trim().strip_prefix("user:"))
                .unwrap()
                .trim();
            vec![(ext.to_string(), pw.to_string())]
        }
        None => text
            .lines()
            .map(|l| {
                let (e, p) = l.split_once('\t').unwrap();
                (e.to_string(), p.to_string())
            })
            .collect(),
    }
}

/// REGISTER `ext` with `password` at `port` (SIPp 3.7.3, SHA-256 digest);
/// whether the answer was `expect`.
fn register(dir: &Path, port: u16, ext: &str, password: &str, expect: u16, name: &str) -> bool {
    let target = format!("127.0.0.1:{port}");
    Sipp {
        bin: &sipp37(),
        dir,
        name,
        scenario: &register_scenario(ext, password, expect, false),
        target: &target,
        args: &["-s", ext],
        limit: Duration::from_secs(20),
    }
    .output()
    .status
    .success()
}

fn unhex(h: &str) -> Vec<u8> {
    (0..h.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap())
        .collect()
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
    // Webhooks to a loopback port where nothing listens: every delivery is
    // signed (both secrets after the rotation) and fails, at trace level.
    let text = format!(
        "{text}[webhooks]\nallow_hosts = [\"127.0.0.1\"]\nbackoff = \"100ms\"\nretries = 30\n"
    );
    std::fs::write(&rc, text).unwrap();
    let hook_url = format!(
        "https://127.0.0.1:{}/hook",
        voxgate_testkit::lab::free_tcp()
    );
    let hook_add = lab.relay_cmd(&["webhook", "add", &hook_url]);
    assert!(
        hook_add.status.success(),
        "{}",
        String::from_utf8_lossy(&hook_add.stderr)
    );
    let hook_out = String::from_utf8_lossy(&hook_add.stdout).into_owned();
    let hook_id = hook_out.split_whitespace().nth(1).unwrap().to_string();
    let hook_rotate = lab.relay_cmd(&["webhook", "rotate-secret", &hook_id]);
    assert!(hook_rotate.status.success());
    let mut webhook_secrets: Vec<String> = [&hook_add, &hook_rotate]
        .iter()
        .flat_map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .filter(|l| l.starts_with("whsec_"))
        .collect();
    assert_eq!(webhook_secrets.len(), 2);
    let mut webhook_stderr = String::new();
    for o in [&hook_add, &hook_rotate] {
        webhook_stderr.push_str(&String::from_utf8_lossy(&o.stderr));
    }
    let api = voxgate_testkit::api::enable(&lab, "", None);
    let mut relay = lab.start_relay();
    let (api_keys, api_key_stderr) = use_api_keys(&lab, &api);
    let hook_test = lab.relay_cmd(&["webhook", "test", &hook_id]);
    assert!(hook_test.status.success());
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
    let sip_port = free_udp();
    let (rtp_a, rtp_b) = free_rtp_range(8);
    std::fs::write(
        &cfg,
        format!(
            "{written}\n[capture]\ndevice = \"voxcap\"\n[playback]\ndevice = \"voxplay\"\n[telemetry]\nlog = \"trace\"\nmetrics = \"{metrics}\"\n\
             [sip]\nenabled = true\nlisten = \"127.0.0.1:{sip_port}\"\nrtp_ports = \"{rtp_a}-{rtp_b}\"\nallow = [\"127.0.0.0/8\"]\n{}",
            dev_privilege(&lab.dir)
        ),
    )
    .unwrap();
    // Desk phones, added before the gateway starts.
    let mut phones_argv = String::new();
    let mut phones_stderr = String::new();
    let mut phone_passwords: Vec<(String, String)> = Vec::new();
    for ext in ["201", "202"] {
        let out = phones(&cfg, &["add", ext], &mut phones_argv);
        phones_stderr.push_str(&String::from_utf8_lossy(&out.stderr));
        phone_passwords.extend(printed_passwords(&out));
    }
    assert_eq!(phone_passwords.len(), 2);
    let env = vec![("ALSA_CONFIG_PATH".to_string(), devs.alsa_config_path_env())];
    let mut gw = lab.start_gateway(&cfg, &env);
    let m = metrics.parse().unwrap();
    // The enrolled key, before renewal replaces it.
    let enrolled_key = std::fs::read(lab.dir.join("gw/device.key.sealed")).unwrap();
    wait_for(Duration::from_secs(15), "streaming", || {
        gw.assert_running();
        metric(m, "voxgate_frames_sent_total") >= 50.0
    });
    // The phones register, are rotated one and then all on the running
    // gateway, and register again with what `phones rotate` printed.
    let sipp_dir = lab.dir.join("sipp");
    std::fs::create_dir_all(&sipp_dir).unwrap();
    let pw = |v: &[(String, String)], ext: &str| {
        v.iter().rev().find(|(e, _)| e == ext).unwrap().1.clone()
    };
    let p201 = pw(&phone_passwords, "201");
    assert!(register(&sipp_dir, sip_port, "201", &p201, 200, "first"));
    let out = phones(&cfg, &["rotate", "201"], &mut phones_argv);
    phones_stderr.push_str(&String::from_utf8_lossy(&out.stderr));
    phone_passwords.extend(printed_passwords(&out));
    let n201 = pw(&phone_passwords, "201");
    assert_ne!(n201, p201);
    assert!(register(&sipp_dir, sip_port, "201", &p201, 401, "old"));
    assert!(register(&sipp_dir, sip_port, "201", &n201, 200, "new"));
    let out = phones(&cfg, &["rotate", "--all"], &mut phones_argv);
    phones_stderr.push_str(&String::from_utf8_lossy(&out.stderr));
    let all = printed_passwords(&out);
    assert_eq!(all.len(), 2);
    phone_passwords.extend(all);
    for ext in ["201", "202"] {
        let name = format!("all-{ext}");
        assert!(register(
            &sipp_dir,
            sip_port,
            ext,
            &pw(&phone_passwords, ext),
            200,
            &name
        ));
    }
    assert_eq!(gw.log_text().matches("phone store reloaded").count(), 2);
    let store = std::fs::read(lab.dir.join("phones.sealed")).unwrap();
    wait_for(Duration::from_secs(30), "the certificate renewal", || {
        gw.assert_running();
        gw.log_text().contains("certificate renewed")
    });
    // The field commands against the running box, at trace level: what
    // they print (their JSON too) is searched like everything else.
    let mut field_output = String::new();
    for args in [
        &["check", "-o", "json"][..],
        &["check"][..],
        &["status", "-o", "json"][..],
        &["status"][..],
    ] {
        let out = Command::new(bin())
            .args(args)
            .arg("--config")
            .arg(&cfg)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("VOXGATE_LOG", "trace")
            .output()
            .unwrap();
        field_output.push_str(&String::from_utf8_lossy(&out.stdout));
        field_output.push_str(&String::from_utf8_lossy(&out.stderr));
    }
    assert!(
        field_output.contains("\"checks\"") && field_output.contains("\"running\": true"),
        "{field_output}"
    );
    // What the kernel shows about the running processes.
    let mut proc_text = String::new();
    for pid in [gw.pid(), relay.pid()] {
        proc_text.push_str(&proc_of(pid as u32));
        assert_no_core_limit(pid as u32);
    }

    // A backup with the relay's keys while it runs, the passphrase on
    // stdin; then its restore on another machine, the passphrase in a file.
    let passphrase = format!("canary passphrase {:016x}", fastrand::u64(..));
    let backup_file = lab.dir.join("canary.vxbackup");
    let backup = feed_and_watch(
        relay_command(
            &["backup"],
            &rc,
            &backup_file,
            &["--with-keys", "--passphrase-stdin"],
        ),
        format!("{passphrase}\n").as_bytes(),
        &mut proc_text,
    );
    gw.stop();
    // Listings and the deliveries' errors name no secret.
    let hook_list = lab.relay_cmd(&["webhook", "list"]);
    let hook_deliveries = lab.relay_cmd(&["webhook", "deliveries"]);
    for o in [&hook_test, &hook_list, &hook_deliveries] {
        webhook_stderr.push_str(&String::from_utf8_lossy(&o.stdout));
        webhook_stderr.push_str(&String::from_utf8_lossy(&o.stderr));
    }
    assert!(
        String::from_utf8_lossy(&hook_deliveries.stdout).contains("cannot connect"),
        "the webhook was attempted"
    );
    relay.stop();
    let other_mid = lab.dir.join("other-machine-id");
    std::fs::write(&other_mid, "fedcba9876543210fedcba9876543210\n").unwrap();
    let restored_cfg = lab.dir.join("restored.toml");
    std::fs::write(
        &restored_cfg,
        std::fs::read_to_string(&rc)
            .unwrap()
            .replace("state_dir = \"relay\"", "state_dir = \"restored\"")
            .replace(
                &lab.dir.join("ca-machine-id").display().to_string(),
                &other_mid.display().to_string(),
            ),
    )
    .unwrap();
    let pass_file = secret_file(&lab.dir, "backup.pass", &passphrase);
    let restore = feed_and_watch(
        relay_command(
            &["restore"],
            &restored_cfg,
            &backup_file,
            &["--passphrase-file", pass_file.to_str().unwrap()],
        ),
        b"",
        &mut proc_text,
    );
    assert!(lab.dir.join("restored/relay.key.sealed").exists());

    // The secrets, recovered the way only this test may.
    let renewed_key = std::fs::read(lab.dir.join("gw/device.key.sealed")).unwrap();
    assert_ne!(renewed_key, enrolled_key, "renewal made no fresh key");
    let material =
        voxgate::pki::sealed::Material::new("0123456789abcdef0123456789abcdef", None).unwrap();
    let mut needles = vec![token.clone()];
    // The webhook secrets: their text and their key bytes.
    for w in webhook_secrets.drain(..) {
        let key = base64::engine::general_purpose::STANDARD
            .decode(w.trim_start_matches("whsec_"))
            .unwrap();
        needles.extend(forms(&key));
        needles.push(w);
    }
    for k in &api_keys {
        needles.push(k.clone());
        needles.push(
            voxgate::relay::api_key::parse(k)
                .unwrap()
                .secret
                .to_string(),
        );
    }
    // Every phone password ever printed, and its digests (HA1s) in every form.
    for (ext, pw) in &phone_passwords {
        assert_eq!(pw.len(), 22);
        needles.push(pw.clone());
        let e = voxgate::bridge::phone_store::PhoneEntry::derive(ext, "gw-canary", pw, 0);
        needles.extend(forms(&unhex(&e.ha1_sha256)));
        needles.extend(forms(&unhex(&e.ha1_md5)));
    }
    assert_eq!(phone_passwords.len(), 5);
    for sealed in [&enrolled_key, &renewed_key] {
        let pkcs8 = voxgate::pki::sealed::unseal(&material, sealed).unwrap();
        // The P-256 scalar sits after the fixed PKCS#8/ECPrivateKey prefix.
        needles.extend(forms(&pkcs8[36..68]));
        needles.extend(forms(&pkcs8));
    }
    // The relay's own keys: the root and issuing CA keys, its TLS key (the
    // one it renewed to as well) and the audit log's key.
    let relay_keys = lab.relay_secrets();
    assert!(relay_keys.len() >= 4, "root, issuing, TLS, audit");
    for key in relay_keys {
        if key.len() >= 68 {
            needles.extend(forms(&key[36..68]));
        }
        needles.extend(forms(&key));
    }

    // The relay's own keys, and the backup passphrase.
    let relay_keys = voxgate::relay::backup::unseal_keys(
        &lab.dir.join("relay"),
        &voxgate::pki::sealed::MachineBinding {
            machine_id: lab.dir.join("ca-machine-id"),
            serial: None,
        },
    )
    .unwrap();
    for pkcs8 in [&relay_keys.ca, &relay_keys.relay] {
        needles.extend(forms(&pkcs8[36..68]));
        needles.extend(forms(pkcs8));
    }
    needles.push(passphrase.clone());
    needles.extend(forms(passphrase.as_bytes()));
    // The backup file holds them encrypted only: not as bytes, nor as text.
    let backup_bytes = std::fs::read(&backup_file).unwrap();
    for raw in [
        passphrase.as_bytes(),
        &relay_keys.ca[..],
        &relay_keys.ca[36..68],
        &relay_keys.relay[..],
        &relay_keys.relay[36..68],
    ] {
        assert!(
            !backup_bytes.windows(raw.len()).any(|w| w == raw),
            "a secret ({} bytes) is in the backup file",
            raw.len()
        );
    }

    let mut haystack = vec![
        (
            "backup file",
            String::from_utf8_lossy(&backup_bytes).into_owned(),
        ),
        (
            "backup stdout",
            String::from_utf8_lossy(&backup.stdout).into_owned(),
        ),
        (
            "backup stderr",
            String::from_utf8_lossy(&backup.stderr).into_owned(),
        ),
        (
            "restore stdout",
            String::from_utf8_lossy(&restore.stdout).into_owned(),
        ),
        (
            "restore stderr",
            String::from_utf8_lossy(&restore.stderr).into_owned(),
        ),
        (
            "setup stdout",
            String::from_utf8_lossy(&setup.stdout).into_owned(),
        ),
        (
            "setup stderr",
            String::from_utf8_lossy(&setup.stderr).into_owned(),
        ),
        ("token stderr", token_stderr),
        ("webhook commands", webhook_stderr),
        ("api-key stderr", api_key_stderr),
        ("/proc", proc_text),
        ("gateway log", gw.log_text()),
        ("relay log", relay.log_text()),
        ("config", std::fs::read_to_string(&cfg).unwrap()),
        ("phones stderr", phones_stderr),
        ("check and status", field_output),
        ("phones argv", phones_argv),
        ("phone store", String::from_utf8_lossy(&store).into_owned()),
    ];
    // Every file the run left, but those that hold a secret on purpose.
    let exempt = [tok.clone(), pass_file.clone()];
    let mut files = Vec::new();
    walk(&lab.dir, &mut files);
    let mut cores = Vec::new();
    for f in &files {
        if exempt.contains(f) || f.starts_with(&sipp_dir) {
            continue;
        }
        let bytes = std::fs::read(f).unwrap_or_default();
        if is_core(f, &bytes) {
            cores.push(f.clone());
        }
        haystack.push((
            "a file of the run",
            String::from_utf8_lossy(&bytes).into_owned(),
        ));
    }
    assert!(files.len() > 20, "the walk found {} files", files.len());
    assert!(cores.is_empty(), "core files left: {cores:?}");
    assert!(
        haystack
            .iter()
            .any(|(_, t)| t.contains("TRACE") || t.contains("\"level\":\"TRACE\"")),
        "trace logging was not on"
    );
    for (name, text) in &haystack {
        let joined = unwrapped(text);
        for n in &needles {
            assert!(
                !text.contains(n.as_str()) && !joined.contains(n.as_str()),
                "a secret ({} chars) leaked into {name}",
                n.len()
            );
        }
        for label in ["PRIVATE KEY-----", "ENCRYPTED PRIVATE KEY"] {
            assert!(!text.contains(label), "a PEM private key in {name}");
        }
    }
}

/// Make API keys three ways (the CLI at trace level, the API, a rotation)
/// and use each; returns the keys and the commands' stderr.
fn use_api_keys(lab: &Lab, api: &voxgate_testkit::api::Api) -> (Vec<String>, String) {
    use voxgate_testkit::api::{Req, key_id};
    let mut stderr = String::new();
    let mut cli = |args: &[&str]| {
        let out = Command::new(bin())
            .args(["relay", "api-key"])
            .args(args)
            .arg("--config")
            .arg(lab.dir.join("relay.toml"))
            .env("VOXGATE_LOG", "trace")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stderr.push_str(&String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let first = cli(&[
        "create",
        "--name",
        "canary",
        "--scopes",
        "devices:read,keys:manage",
    ]);
    assert_eq!(api.get("/v1/devices", &first).status, 200);
    let made = api.send(
        Req::new("POST", "/v1/api-keys", Some(&first))
            .json(r#"{"name":"canary-api","scopes":["devices:read"]}"#),
    );
    assert_eq!(made.status, 201, "{made:?}");
    let second = made.json()["key"].as_str().unwrap().to_string();
    assert_eq!(api.get("/v1/devices", &second).status, 200);
    let third = cli(&["rotate", &key_id(&second), "--overlap-s", "60"]);
    assert_eq!(api.get("/v1/devices", &third).status, 200);
    assert_eq!(api.get("/v1/devices", &second).status, 200, "overlap");
    (vec![first, second, third], stderr)
}

/// `text` with line breaks, `\n` escapes (JSON logs) and blanks removed:
/// a PEM body or any base64 wrapped over lines becomes one run again.
fn unwrapped(text: &str) -> String {
    text.replace("\\r", "")
        .replace("\\n", "")
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect()
}

/// Every regular file under `dir`.
fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let Ok(t) = e.file_type() else { continue };
        if t.is_dir() {
            walk(&e.path(), out);
        } else if t.is_file() {
            out.push(e.path());
        }
    }
}

/// A core dump: named like one (`core`, `core.PID`, `*.core`), or an ELF
/// file of type ET_CORE.
fn is_core(path: &Path, bytes: &[u8]) -> bool {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let named = name == "core" || name.starts_with("core.") || name.ends_with(".core");
    let elf_core = bytes.len() > 18 && bytes.starts_with(b"\x7fELF") && bytes[16] == 4;
    named || elf_core
}

/// The running process `pid` may not dump core: `RLIMIT_CORE` is 0.
fn assert_no_core_limit(pid: u32) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap();
    let v: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(&v[4..6], ["0", "0"], "pid {pid}: {line}");
}
