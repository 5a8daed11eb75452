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

/// The `EXT<TAB>PASSWORD` lines `phones rotate` printed.
fn rotated(out: &str) -> Vec<(String, String)> {
    out.lines()
        .map(|l| {
            let (ext, pw) = l.split_once('\t').unwrap_or_else(|| panic!("{out}"));
            (ext.to_string(), pw.to_string())
        })
        .collect()
}

#[test]
fn rotate_prints_each_new_password_once_and_refuses_unknown_or_ambiguous() {
    let dir = test_dir("phones-rotate");
    let cfg = config(&dir, true, "5f3c0a1e9b8d4c7e8a6b2d1f0e9c8b7a");
    let store = dir.join("phones.sealed");
    let mut old = Vec::new();
    for ext in ["201", "202", "203"] {
        let (ok, out, err) = voxgate(&["phones", "add", ext, "-c", &cfg]);
        assert!(ok, "{err}");
        old.push(
            out.lines()
                .find_map(|l| l.trim().strip_prefix("password:"))
                .unwrap()
                .trim()
                .to_string(),
        );
    }
    let digests = |path: &std::path::Path| {
        let m =
            voxgate::pki::sealed::Material::new("5f3c0a1e9b8d4c7e8a6b2d1f0e9c8b7a", None).unwrap();
        let s = voxgate::bridge::phone_store::PhoneStore::load(path, &m, "gw-1").unwrap();
        s.iter()
            .map(|(e, x)| (e.to_string(), x.clone()))
            .collect::<Vec<_>>()
    };
    let derive = |ext: &str, pw: &str, created: u64| {
        voxgate::bridge::phone_store::PhoneEntry::derive(ext, "gw-1", pw, created)
    };

    // Unknown extension, neither EXT nor --all, both: refused, store untouched.
    let before = std::fs::read(&store).unwrap();
    let (ok, out, err) = voxgate(&["phones", "rotate", "299", "-c", &cfg]);
    assert!(!ok && err.contains("no phone with extension 299"), "{err}");
    assert!(out.is_empty(), "{out}");
    let (ok, out, err) = voxgate(&["phones", "rotate", "-c", &cfg]);
    assert!(
        !ok && err.contains("<EXT|--all>") && out.is_empty(),
        "{err}"
    );
    let (ok, out, err) = voxgate(&["phones", "rotate", "201", "--all", "-c", &cfg]);
    assert!(
        !ok && err.contains("cannot be used with") && out.is_empty(),
        "{err}"
    );
    let (ok, _, err) = voxgate(&["phones", "rotate", "9x", "-c", &cfg]);
    assert!(!ok && err.contains("no phone with extension 9x"), "{err}");
    assert_eq!(std::fs::read(&store).unwrap(), before, "store changed");

    // One extension: one line, its new password; both digests replaced, the
    // others untouched; only digests stored.
    let start = digests(&store);
    let (ok, out, err) = voxgate(&["phones", "rotate", "202", "-c", &cfg]);
    assert!(ok, "{err}");
    let lines = rotated(&out);
    assert_eq!(lines.len(), 1, "{out}");
    let (ext, p202) = &lines[0];
    assert_eq!(ext, "202");
    assert_eq!(p202.len(), 22);
    assert!(!old.contains(p202));
    assert!(!err.contains(p202.as_str()), "the password only on stdout");
    let now = digests(&store);
    assert_eq!(now[0], start[0]);
    assert_eq!(now[2], start[2]);
    assert_eq!(now[1].1, derive("202", p202, start[1].1.created));
    assert_ne!(now[1].1.ha1_md5, start[1].1.ha1_md5);
    assert_ne!(now[1].1.ha1_sha256, start[1].1.ha1_sha256);
    let raw = std::fs::read(&store).unwrap();
    assert!(!raw.windows(22).any(|w| w == p202.as_bytes()));
    assert!(!dir.join("phones.sealed.tmp").exists());

    // --all: every extension, each once, each its own new password.
    let (ok, out, err) = voxgate(&["phones", "rotate", "--all", "-c", &cfg]);
    assert!(ok, "{err}");
    assert!(err.contains("3 new password(s)"), "{err}");
    let lines = rotated(&out);
    let exts: Vec<&str> = lines.iter().map(|(e, _)| e.as_str()).collect();
    assert_eq!(exts, ["201", "202", "203"], "{out}");
    let mut seen: Vec<&str> = lines.iter().map(|(_, p)| p.as_str()).collect();
    for (ext, pw) in &lines {
        assert_eq!(pw.len(), 22);
        assert_eq!(out.matches(pw.as_str()).count(), 1, "{ext} printed once");
        assert!(!err.contains(pw.as_str()));
        assert!(!old.contains(pw) && pw != p202, "{ext}: not a new password");
    }
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen.len(), 3, "distinct passwords");
    let after = digests(&store);
    for ((ext, pw), (e, entry)) in lines.iter().zip(&after) {
        assert_eq!(ext, e);
        assert_eq!(*entry, derive(ext, pw, entry.created));
    }
    // `list` still shows the phones, no secret.
    let (ok, out, _) = voxgate(&["phones", "list", "-c", &cfg]);
    assert!(ok && out.lines().count() == 3, "{out}");
    for (_, pw) in &lines {
        assert!(!out.contains(pw.as_str()));
    }

    // An empty store: nothing to rotate, nothing printed.
    let (_, _, _) = voxgate(&["phones", "remove", "201", "-c", &cfg]);
    let (_, _, _) = voxgate(&["phones", "remove", "202", "-c", &cfg]);
    let (_, _, _) = voxgate(&["phones", "remove", "203", "-c", &cfg]);
    let (ok, out, err) = voxgate(&["phones", "rotate", "--all", "-c", &cfg]);
    assert!(
        ok && out.is_empty() && err.contains("no phones"),
        "{out}{err}"
    );
}

/// The phone store's directory must belong to root, the service user or
/// the caller: another user could have planted files or links in it.
#[test]
fn a_store_directory_of_another_user_is_refused() {
    let dir = test_dir("phones-owner");
    let cfg = config(&dir, true, "0a1b2c3d4e5f60718293a4b5c6d7e8f9");
    std::os::unix::fs::chown(&dir, Some(4242), None).unwrap();
    let (ok, _, err) = voxgate(&["phones", "add", "201", "-c", &cfg]);
    assert!(!ok, "it wrote the store");
    assert!(err.contains("belongs to uid 4242"), "{err}");
    assert!(!dir.join("phones.sealed").exists());
    // The configured service user's directory is fine.
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, format!("{text}[privilege]\nuser = \"nobody\"\n")).unwrap();
    std::os::unix::fs::chown(&dir, Some(65534), None).unwrap();
    let (ok, _, err) = voxgate(&["phones", "add", "201", "-c", &cfg]);
    assert!(ok, "{err}");
}
