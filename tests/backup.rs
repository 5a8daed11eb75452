//! `voxgate relay backup` and `relay restore` against a real relay: a
//! backup made while devices enroll is one consistent moment of the
//! registry; restored on another machine (another `[ca]` binding) the relay
//! serves the same fleet, its devices reconnect with the certificates they
//! have and revocations hold; a wrong passphrase or a non-empty state
//! directory is refused and leaves nothing behind; a backup without
//! `--with-keys` holds no key material; one without keys restores the
//! registry and leads to a new fleet CA.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use voxgate_testkit::audio_env::{AlsaFileDevices, speech_fixture};
use voxgate_testkit::cmd::{show, stderr, stdout};
use voxgate_testkit::enroll::{MACHINE_ID, Setup, machine_id, secret_file, token_file};
use voxgate_testkit::lab::{Lab, Proc, bin, dev_privilege, free_tcp, metric, wait_for};

const PASSPHRASE: &str = "staple battery horse correct";

fn relay_cmd(args: &[&str], cfg: &Path) -> Command {
    let mut c = Command::new(bin());
    c.arg("relay").args(args).arg("--config").arg(cfg);
    c
}

fn run(c: &mut Command) -> Output {
    c.output().unwrap()
}

/// `relay backup` of `cfg` into `file`, with extra arguments.
fn backup(cfg: &Path, file: &Path, extra: &[&str]) -> Output {
    run(relay_cmd(&["backup"], cfg).arg(file).args(extra))
}

/// `relay restore` of `file` with `cfg`, with extra arguments.
fn restore(cfg: &Path, file: &Path, extra: &[&str]) -> Output {
    run(relay_cmd(&["restore"], cfg).arg(file).args(extra))
}

/// A relay config for "another machine": the lab's listen and metrics
/// addresses, state in `state`, the CA keys sealed to the machine id file
/// `mid` (holding `id`).
fn other_machine(lab: &Lab, name: &str, state: &str, id: &str) -> PathBuf {
    let mid = lab.dir.join(format!("{name}-machine-id"));
    std::fs::write(&mid, format!("{id}\n")).unwrap();
    let text = std::fs::read_to_string(lab.dir.join("relay.toml"))
        .unwrap()
        .replace("state_dir = \"relay\"", &format!("state_dir = \"{state}\""))
        .replace(
            "recordings = \"recordings\"",
            &format!("recordings = \"{state}-recordings\""),
        )
        .replace(
            &lab.dir.join("ca-machine-id").display().to_string(),
            &mid.display().to_string(),
        );
    assert!(text.contains(&mid.display().to_string()));
    let cfg = lab.dir.join(format!("{name}.toml"));
    std::fs::write(&cfg, text).unwrap();
    cfg
}

fn binding(mid: &Path) -> voxgate::pki::sealed::MachineBinding {
    voxgate::pki::sealed::MachineBinding {
        machine_id: mid.to_path_buf(),
        serial: None,
    }
}

/// The devices in a backup's registry, as the registry lists them.
fn backup_devices(lab: &Lab, file: &Path) -> Vec<voxgate::relay::registry::DeviceRow> {
    let archive = voxgate::relay::backup::read_archive(file).unwrap();
    let db = lab
        .dir
        .join(format!("inspect-{}.sqlite3", fastrand::u32(..)));
    std::fs::write(&db, &archive.registry).unwrap();
    let rows = voxgate::relay::registry::Registry::open(&db)
        .unwrap()
        .devices()
        .unwrap();
    assert_eq!(rows.len() as i64, archive.meta.devices);
    rows
}

/// Enroll `id` with a sealed key (to the machine id in `lab.dir/
/// machine-id`); returns its gateway config. All enrollments come from
/// 127.0.0.1, and the relay allows one address a burst of five and then
/// one every two seconds: a refused attempt (the token is not spent) is
/// tried again.
fn enroll(lab: &Lab, id: &str) -> PathBuf {
    let tok = token_file(lab, id, &format!("{id}.token"));
    let mid = lab.dir.join("machine-id");
    let mut attempt = 0;
    loop {
        let (out, cfg) = Setup::new(lab, id)
            .token_file(&tok)
            .machine_id(&mid)
            .args(["--backend", "sealed-file"])
            .output();
        if out.status.success() {
            return cfg;
        }
        let e = stderr(&out);
        assert!(
            e.contains("too many enrollment attempts") && attempt < 40,
            "setup {id}: {e}"
        );
        attempt += 1;
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Add audio and metrics to a config `voxgate setup` wrote; returns the
/// metrics address.
fn with_audio(lab: &Lab, cfg: &Path) -> std::net::SocketAddr {
    let metrics: std::net::SocketAddr = format!("127.0.0.1:{}", free_tcp()).parse().unwrap();
    let written = std::fs::read_to_string(cfg).unwrap();
    std::fs::write(
        cfg,
        format!(
            "{written}\n[capture]\ndevice = \"voxcap\"\n[playback]\nenabled = false\n[telemetry]\nmetrics = \"{metrics}\"\n{}",
            dev_privilege(&lab.dir)
        ),
    )
    .unwrap();
    metrics
}

/// A state directory's entries (none if it does not exist).
fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn backup_while_enrolling_then_restore_on_another_machine_and_devices_reconnect() {
    let lab = Lab::new("backup", "mode = \"none\"");
    let relay_cfg = lab.dir.join("relay.toml");
    let state = lab.dir.join("relay");
    let mut relay = lab.start_relay();
    machine_id(&lab.dir, "machine-id", MACHINE_ID);
    let gw_a = enroll(&lab, "gw-a");
    let gw_rev = enroll(&lab, "gw-rev");
    let out = run(relay_cmd(&["revoke"], &relay_cfg).arg("gw-rev"));
    assert!(out.status.success(), "{}", show(&out));

    // Enrollments keep going in three threads, each device after the
    // other, until both backups are done (and at least one each).
    let pass = secret_file(&lab.dir, "backup.pass", &format!("{PASSPHRASE}\n"));
    let with_keys = lab.dir.join("fleet.vxbackup");
    let without_keys = lab.dir.join("fleet-nokeys.vxbackup");
    let done = AtomicBool::new(false);
    let (enrolled, outs) = std::thread::scope(|s| {
        let workers: Vec<_> = (0..3)
            .map(|t| {
                let (lab, done) = (&lab, &done);
                s.spawn(move || {
                    let mut ids = Vec::new();
                    while !done.load(Ordering::Relaxed) || ids.is_empty() {
                        let id = format!("gw-live-{t}-{}", ids.len());
                        enroll(lab, &id);
                        ids.push(id);
                    }
                    ids
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(300));
        let a = backup(
            &relay_cfg,
            &with_keys,
            &["--with-keys", "--passphrase-file", pass.to_str().unwrap()],
        );
        let b = backup(&relay_cfg, &without_keys, &[]);
        done.store(true, Ordering::Relaxed);
        let enrolled: Vec<String> = workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect();
        (enrolled, [a, b])
    });
    for o in &outs {
        assert!(o.status.success(), "{}", show(o));
    }
    relay.assert_running();
    assert!(enrolled.len() >= 3, "{enrolled:?}");
    let said = stdout(&outs[0]);
    assert!(said.contains("encrypted to the passphrase"), "{said}");
    assert!(
        stdout(&outs[1]).contains("no key is in it"),
        "{}",
        stdout(&outs[1])
    );

    use std::os::unix::fs::PermissionsExt;
    for f in [&with_keys, &without_keys] {
        let mode = std::fs::metadata(f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", f.display());
    }
    // No scratch left beside them.
    let leftovers: Vec<String> = entries(&lab.dir)
        .into_iter()
        .filter(|n| n.contains(".partial"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // Never overwritten.
    let again = backup(&relay_cfg, &with_keys, &[]);
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("already exists"),
        "{}",
        show(&again)
    );

    // One moment of the registry: whole enrollments only (every device
    // with its certificate), the ones before it all there.
    let rows = backup_devices(&lab, &with_keys);
    let ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
    assert!(ids.contains(&"gw-a") && ids.contains(&"gw-rev"), "{ids:?}");
    assert!(rows.iter().all(|r| r.cert_expires.is_some()), "{rows:?}");
    assert!(
        rows.iter()
            .find(|r| r.id == "gw-rev")
            .unwrap()
            .revoked
            .is_some()
    );
    println!(
        "backup with keys: {} devices of {} enrolled by the end",
        rows.len(),
        enrolled.len() + 2
    );
    let in_backup: Vec<&String> = enrolled
        .iter()
        .filter(|id| ids.contains(&id.as_str()))
        .collect();

    // The relay's keys, read the way only a test may: none of their bytes
    // is in either file, and the keyless one has no PKCS#8 at all.
    let keys =
        voxgate::relay::backup::unseal_keys(&state, &binding(&lab.dir.join("ca-machine-id")))
            .unwrap();
    let plain_file = std::fs::read(&without_keys).unwrap();
    let keys_file = std::fs::read(&with_keys).unwrap();
    for der in [&keys.ca, &keys.relay] {
        // The P-256 scalar sits after the fixed PKCS#8/ECPrivateKey prefix.
        for needle in [&der[..], &der[36..68]] {
            assert!(
                !contains(&plain_file, needle),
                "key bytes in the keyless backup"
            );
            assert!(
                !contains(&keys_file, needle),
                "plaintext key bytes in the backup"
            );
        }
    }
    // PKCS#8 version 0 then the id-ecPublicKey algorithm: a private key's
    // opening (a certificate's public key has no version before it).
    let pkcs8_opening = [
        0x02, 0x01, 0x00, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01,
    ];
    assert!(
        contains(&keys.ca, &pkcs8_opening),
        "the pattern is a PKCS#8's"
    );
    assert!(!contains(&plain_file, &pkcs8_opening));
    assert!(!contains(&plain_file, b"PRIVATE KEY"));
    assert!(!contains(&plain_file, b"VXPASS1"));
    assert!(!contains(&plain_file, b"VXSEAL1"));
    assert!(contains(&keys_file, b"VXPASS1"));
    assert!(!contains(&keys_file, PASSPHRASE.as_bytes()));

    // The old machine is gone.
    relay.stop();

    // The new machine: another machine id, an empty state directory.
    let new_cfg = other_machine(&lab, "new", "relay-new", "fedcba9876543210fedcba9876543210");
    let new_state = lab.dir.join("relay-new");
    // A wrong passphrase: refused, and nothing is left behind.
    let wrong = secret_file(&lab.dir, "wrong.pass", "staple battery horse incorrect\n");
    let out = restore(
        &new_cfg,
        &with_keys,
        &["--passphrase-file", wrong.to_str().unwrap()],
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("wrong passphrase"), "{}", show(&out));
    assert!(
        !new_state.exists(),
        "a refused restore left {:?}",
        entries(&new_state)
    );
    // Same with the passphrase on stdin.
    let mut c = relay_cmd(&["restore"], &new_cfg);
    c.arg(&with_keys)
        .arg("--passphrase-stdin")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"not it at all\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(stderr(&out).contains("wrong passphrase"), "{}", show(&out));
    assert!(!new_state.exists());
    // A damaged file: refused as damaged, not as a wrong passphrase.
    let mut damaged = keys_file.clone();
    let mid = damaged.len() / 2;
    damaged[mid] ^= 0x40;
    let damaged_path = lab.dir.join("damaged.vxbackup");
    std::fs::write(&damaged_path, &damaged).unwrap();
    let out = restore(
        &new_cfg,
        &damaged_path,
        &["--passphrase-file", pass.to_str().unwrap()],
    );
    assert!(stderr(&out).contains("damaged"), "{}", show(&out));
    assert!(!new_state.exists());
    // A state directory with something in it: refused, untouched.
    std::fs::create_dir_all(&new_state).unwrap();
    std::fs::write(new_state.join("notes.txt"), "keep me").unwrap();
    let out = restore(
        &new_cfg,
        &with_keys,
        &["--passphrase-file", pass.to_str().unwrap()],
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("is not empty"), "{}", show(&out));
    assert_eq!(entries(&new_state), ["notes.txt"]);
    std::fs::remove_dir_all(&new_state).unwrap();

    let out = restore(
        &new_cfg,
        &with_keys,
        &["--passphrase-file", pass.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", show(&out));
    let said = stdout(&out);
    assert!(
        said.contains("sealed to this machine") && said.contains("relay run"),
        "{said}"
    );
    // The keys are sealed to the new machine, and only to it.
    let new_binding = binding(&lab.dir.join("new-machine-id"));
    let restored = voxgate::relay::backup::unseal_keys(&new_state, &new_binding).unwrap();
    assert_eq!(restored.ca, keys.ca);
    assert!(
        voxgate::relay::backup::unseal_keys(&new_state, &binding(&lab.dir.join("ca-machine-id")))
            .is_err()
    );
    assert_eq!(
        std::fs::read(new_state.join("ca.pem")).unwrap(),
        std::fs::read(state.join("ca.pem")).unwrap()
    );

    // The relay runs there; the registry it restored knows the fleet.
    let mut relay = lab.start_relay_with_config(&new_cfg);
    let listed = stdout(&run(&mut relay_cmd(&["devices"], &new_cfg)));
    for id in &ids {
        assert!(listed.contains(id), "{id} missing: {listed}");
    }
    assert!(listed.contains("REVOKED"), "{listed}");

    // The devices reconnect with the certificates they have: one enrolled
    // before, one enrolled while the backup ran (if the moment caught
    // one); the revoked one stays refused.
    let speech = speech_fixture(&lab.dir, "Back on a new machine.");
    let devs = AlsaFileDevices::new(&lab.dir, Some(&speech), None);
    let env = vec![("ALSA_CONFIG_PATH".to_string(), devs.alsa_config_path_env())];
    let mut streaming: Vec<(Proc, std::net::SocketAddr)> = Vec::new();
    let mut configs = vec![gw_a];
    configs.extend(
        in_backup
            .first()
            .map(|id| lab.dir.join(format!("{id}.toml"))),
    );
    for cfg in &configs {
        let m = with_audio(&lab, cfg);
        streaming.push((lab.start_gateway(cfg, &env), m));
    }
    for (gw, m) in &mut streaming {
        wait_for(
            Duration::from_secs(20),
            "a device back on the restored relay",
            || {
                gw.assert_running();
                metric(*m, "voxgate_relay_connected") == 1.0
                    && metric(*m, "voxgate_frames_sent_total") >= 25.0
            },
        );
    }
    let m_rev = with_audio(&lab, &gw_rev);
    let mut rev = lab.start_gateway(&gw_rev, &env);
    let rejected0 = metric(lab.relay_metrics, "voxgate_relay_sessions_rejected_total");
    wait_for(
        Duration::from_secs(15),
        "the revoked device refused",
        || metric(lab.relay_metrics, "voxgate_relay_sessions_rejected_total") > rejected0,
    );
    assert_eq!(metric(m_rev, "voxgate_relay_connected"), 0.0);
    rev.stop();
    for (mut gw, _) in streaming {
        gw.stop();
    }
    relay.stop();
    let log = relay.log_text();
    assert!(!log.contains(PASSPHRASE), "passphrase in the relay log");

    // The keyless backup on a third machine: the registry comes back, the
    // certificates are kept aside, and `relay init` makes the new CA.
    let third_cfg = other_machine(
        &lab,
        "third",
        "relay-third",
        "00112233445566778899aabbccddeeff",
    );
    let third = lab.dir.join("relay-third");
    let out = restore(
        &third_cfg,
        &without_keys,
        &["--passphrase-file", pass.to_str().unwrap()],
    );
    assert!(!out.status.success(), "a passphrase for a keyless backup");
    assert!(stderr(&out).contains("holds no keys"), "{}", show(&out));
    assert!(!third.exists());
    let out = restore(&third_cfg, &without_keys, &[]);
    assert!(out.status.success(), "{}", show(&out));
    let said = stdout(&out);
    assert!(
        said.contains("holds no keys") && said.contains("relay init") && said.contains("re-enroll"),
        "{said}"
    );
    assert!(!third.join("ca.pem").exists() && !third.join("ca.key.sealed").exists());
    assert!(third.join("previous-fleet/ca.pem").exists());
    let out = run(&mut relay_cmd(&["init", "--keep-root"], &third_cfg));
    assert!(out.status.success(), "{}", show(&out));
    assert_ne!(
        std::fs::read(third.join("ca.pem")).unwrap(),
        std::fs::read(state.join("ca.pem")).unwrap(),
        "a new fleet CA"
    );
    // The old audit key stayed behind: the log starts a new chain over the
    // restored rows, and verifies.
    let verified = run(&mut relay_cmd(&["audit", "--verify"], &third_cfg));
    assert!(verified.status.success(), "{}", show(&verified));
    let listed = stdout(&run(&mut relay_cmd(&["devices"], &third_cfg)));
    assert!(
        listed.contains("gw-a") && listed.contains("REVOKED"),
        "{listed}"
    );

    // A backup with keys restored without them (the passphrase is lost).
    let fourth_cfg = other_machine(
        &lab,
        "fourth",
        "relay-fourth",
        "ffeeddccbbaa99887766554433221100",
    );
    let out = restore(&fourth_cfg, &with_keys, &["--without-keys"]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(stdout(&out).contains("relay init"), "{}", show(&out));
    assert!(!lab.dir.join("relay-fourth/ca.key.sealed").exists());
}

#[test]
fn backup_refuses_what_it_cannot_do_well() {
    let lab = Lab::new("backup-refusals", "mode = \"none\"");
    let cfg = lab.dir.join("relay.toml");
    let file = lab.dir.join("b.vxbackup");
    // A passphrase file others can read.
    let loose = lab.dir.join("loose.pass");
    std::fs::write(&loose, format!("{PASSPHRASE}\n")).unwrap();
    let out = backup(
        &cfg,
        &file,
        &["--with-keys", "--passphrase-file", loose.to_str().unwrap()],
    );
    assert!(!out.status.success());
    let e = stderr(&out);
    assert!(
        e.contains("accessible to other users") && e.contains("chmod 600"),
        "{e}"
    );
    assert!(!file.exists());
    // A short passphrase for a new file.
    let short = secret_file(&lab.dir, "short.pass", "short\n");
    let out = backup(
        &cfg,
        &file,
        &["--with-keys", "--passphrase-file", short.to_str().unwrap()],
    );
    assert!(
        stderr(&out).contains("at least 12 characters"),
        "{}",
        show(&out)
    );
    assert!(!file.exists());
    // A passphrase without --with-keys.
    let good = secret_file(&lab.dir, "good.pass", PASSPHRASE);
    let out = backup(&cfg, &file, &["--passphrase-file", good.to_str().unwrap()]);
    assert!(stderr(&out).contains("--with-keys"), "{}", show(&out));
    // --with-keys and no terminal (a session of its own: `setsid`), no
    // file, no stdin option.
    let out = run(Command::new("setsid")
        .arg("--wait")
        .arg(bin())
        .args(["relay", "backup", "--config"])
        .arg(&cfg)
        .arg(&file)
        .arg("--with-keys")
        .stdin(std::process::Stdio::null()));
    assert!(!out.status.success());
    let e = stderr(&out);
    assert!(
        e.contains("--passphrase-file") && e.contains("--passphrase-stdin"),
        "{e}"
    );
    // There is no way to give the passphrase itself on the command line.
    let out = backup(&cfg, &file, &["--with-keys", "--passphrase", PASSPHRASE]);
    assert!(!out.status.success());
    assert!(!file.exists());
    // The sealed keys of another machine do not open: no backup with keys.
    let moved = other_machine(&lab, "moved", "relay", "99999999999999999999999999999999");
    let out = backup(
        &moved,
        &file,
        &["--with-keys", "--passphrase-file", good.to_str().unwrap()],
    );
    assert!(
        stderr(&out).contains("sealed on another machine"),
        "{}",
        show(&out)
    );
    assert!(!file.exists());
    // Without keys it works there (nothing is unsealed).
    let out = backup(&moved, &file, &[]);
    assert!(out.status.success(), "{}", show(&out));
    // Not a backup at all.
    let junk = lab.dir.join("junk");
    std::fs::write(&junk, "hello").unwrap();
    let fresh = other_machine(
        &lab,
        "fresh",
        "relay-fresh",
        "88888888888888888888888888888888",
    );
    let out = restore(&fresh, &junk, &[]);
    assert!(
        stderr(&out).contains("not a voxgate relay backup"),
        "{}",
        show(&out)
    );
}
