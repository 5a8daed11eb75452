//! `voxgate phones add/list/remove` through the real binary: the password
//! is printed once by `add`, never stored, and the store is sealed to the
//! box's machine id.

use std::process::Command;
use voxgate_testkit::lab::{bin, test_dir};

fn voxgate(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(bin()).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn config(dir: &std::path::Path, sip: bool, machine_id: &str) -> String {
    std::fs::write(
        dir.join(format!("machine-id-{machine_id}")),
        format!("{machine_id}\n"),
    )
    .unwrap();
    let cfg = dir.join(format!("gw-{machine_id}.toml"));
    std::fs::write(
        &cfg,
        format!(
            "device_id = \"gw-1\"\n[relay]\naddress = \"127.0.0.1:4433\"\nca = \"ca.pem\"\n\
             [identity]\ncert = \"device.pem\"\nkey = \"device.key\"\nmachine_id = \"machine-id-{machine_id}\"\nserial = \"none\"\n\
             [sip]\nenabled = {sip}\nallow = [\"127.0.0.0/8\"]\n"
        ),
    )
    .unwrap();
    cfg.display().to_string()
}

#[test]
fn add_list_remove_and_the_password_is_shown_once() {
    let dir = test_dir("phones-cli");
    let cfg = config(&dir, true, "5f3c0a1e9b8d4c7e8a6b2d1f0e9c8b7a");
    let (ok, out, err) = voxgate(&["phones", "list", "-c", &cfg]);
    assert!(ok, "{err}");
    assert!(out.contains("no phones"), "{out}");

    let (ok, out, err) = voxgate(&["phones", "add", "201", "-c", &cfg]);
    assert!(ok, "{err}");
    let password = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("password:"))
        .map(str::trim)
        .expect("password line")
        .to_string();
    assert_eq!(password.len(), 22, "{out}");
    assert!(out.contains("realm:      gw-1"), "{out}");
    let store = std::fs::read(dir.join("phones.sealed")).unwrap();
    assert!(!store.windows(22).any(|w| w == password.as_bytes()));
    assert!(
        !store.windows(3).any(|w| w == b"201"),
        "extensions are sealed too"
    );

    let (ok, _, err) = voxgate(&["phones", "add", "201", "-c", &cfg]);
    assert!(!ok && err.contains("already has a password"), "{err}");
    let (ok, _, err) = voxgate(&["phones", "add", "901", "-c", &cfg]);
    assert!(!ok && err.contains("must be 2-8 digits"), "{err}");
    let (ok, out, _) = voxgate(&["phones", "add", "202", "-c", &cfg]);
    assert!(ok);
    assert!(!out.contains(&password), "a new phone gets a new password");

    let (ok, out, _) = voxgate(&["phones", "list", "-c", &cfg]);
    assert!(ok);
    let exts: Vec<&str> = out.lines().map(|l| l.split('\t').next().unwrap()).collect();
    assert_eq!(exts, ["201", "202"]);
    assert!(!out.contains(&password));

    // On another box (another machine id) the store does not open.
    let other = config(&dir, true, "00000000000000000000000000000001");
    let (ok, _, err) = voxgate(&["phones", "list", "-c", &other]);
    assert!(!ok && err.contains("does not open on this box"), "{err}");

    let (ok, _, err) = voxgate(&["phones", "remove", "201", "-c", &cfg]);
    assert!(ok, "{err}");
    let (ok, _, err) = voxgate(&["phones", "remove", "201", "-c", &cfg]);
    assert!(!ok && err.contains("no phone with extension 201"), "{err}");
    let (_, out, _) = voxgate(&["phones", "list", "-c", &cfg]);
    assert_eq!(out.lines().count(), 1);

    let off = dir.join("off.toml");
    std::fs::write(
        &off,
        std::fs::read_to_string(&cfg)
            .unwrap()
            .replace("enabled = true", "enabled = false"),
    )
    .unwrap();
    let (ok, _, err) = voxgate(&["phones", "list", "-c", off.to_str().unwrap()]);
    assert!(!ok && err.contains("[sip] enabled = true"), "{err}");
}
