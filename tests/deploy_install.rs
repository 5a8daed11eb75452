//! Deployment: `scripts/install` into a scratch root file system, run
//! twice (the second run changes nothing), both roles, and its refusals.
//! CI runs as root, as on the box; nothing is skipped: a missing tool
//! fails with the Debian package to install.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use voxgate_testkit::cmd::{assert_root, nft_check, read, run, show, text};
use voxgate_testkit::lab::{repo, test_dir};

/// A minimal Debian root: the accounts a fresh image has that matter here.
fn scratch_root(name: &str) -> PathBuf {
    let root = test_dir(name);
    let etc = root.join("etc");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::write(
        etc.join("passwd"),
        "root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
    )
    .unwrap();
    std::fs::write(
        etc.join("group"),
        "root:x:0:\naudio:x:29:\nnogroup:x:65534:\n",
    )
    .unwrap();
    std::fs::write(
        etc.join("shadow"),
        "root:*:19000:0:99999:7:::\nnobody:*:19000:0:99999:7:::\n",
    )
    .unwrap();
    std::fs::write(etc.join("gshadow"), "root:*::\naudio:*::\nnogroup:*::\n").unwrap();
    root
}

fn install(args: &[&str]) -> Output {
    run(
        Command::new("bash")
            .arg(repo().join("scripts/install"))
            .args(args),
        "bash",
    )
}

fn id_in(db: &Path, name: &str) -> u32 {
    read(db)
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f[0] == name).then(|| f[2].parse().unwrap())
        })
        .unwrap_or_else(|| panic!("{name} is not in {}", db.display()))
}

fn members(root: &Path, group: &str) -> Vec<String> {
    read(&root.join("etc/group"))
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f[0] == group).then(|| {
                f[3].split(',')
                    .filter(|m| !m.is_empty())
                    .map(str::to_string)
                    .collect()
            })
        })
        .unwrap_or_else(|| panic!("group {group} is not in the scratch root"))
}

/// Mode and owners (by name, resolved in the scratch root's databases).
fn assert_meta(root: &Path, rel: &str, mode: u32, user: &str, group: &str) {
    let p = root.join(rel);
    let m = std::fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("/{rel}: {e}"));
    let uid = id_in(&root.join("etc/passwd"), user);
    let gid = id_in(&root.join("etc/group"), group);
    assert_eq!(
        (m.mode() & 0o7777, m.uid(), m.gid()),
        (mode, uid, gid),
        "/{rel}: want {mode:04o} {user}({uid}):{group}({gid})"
    );
}

fn assert_same(root: &Path, rel: &str, src: &Path) {
    assert_eq!(
        std::fs::read(root.join(rel)).unwrap_or_else(|e| panic!("/{rel}: {e}")),
        std::fs::read(src).unwrap(),
        "/{rel} differs from {}",
        src.display()
    );
}

type Snapshot = BTreeMap<PathBuf, (u32, u32, u32, u64, i64, i64, i64, i64, Vec<u8>)>;

/// Everything observable about a tree: mode, owners, size, mtime, ctime, content.
fn snapshot(root: &Path) -> Snapshot {
    fn walk(root: &Path, dir: &Path, out: &mut Snapshot) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let content = if m.is_file() {
                std::fs::read(&p).unwrap()
            } else {
                Vec::new()
            };
            out.insert(
                p.strip_prefix(root).unwrap().to_path_buf(),
                (
                    m.mode(),
                    m.uid(),
                    m.gid(),
                    m.len(),
                    m.mtime(),
                    m.mtime_nsec(),
                    m.ctime(),
                    m.ctime_nsec(),
                    content,
                ),
            );
            if m.is_dir() {
                walk(root, &p, out);
            }
        }
    }
    let mut out = Snapshot::new();
    walk(root, root, &mut out);
    out
}

fn diff(a: &Snapshot, b: &Snapshot) -> Vec<String> {
    let mut d = Vec::new();
    for (p, v) in a {
        match b.get(p) {
            None => d.push(format!("removed /{}", p.display())),
            Some(w) if w != v => d.push(format!("changed /{}", p.display())),
            _ => {}
        }
    }
    for p in b.keys().filter(|p| !a.contains_key(*p)) {
        d.push(format!("added /{}", p.display()));
    }
    d
}

#[test]
fn install_into_a_scratch_root_then_rerun_changes_nothing() {
    assert_root();
    // A copy, so that a concurrent rebuild cannot change the binary between runs.
    let work = test_dir("deploy-install-bin");
    let binary = work.join("voxgate");
    std::fs::copy(voxgate_testkit::lab::bin(), &binary).unwrap();
    let root = scratch_root("deploy-install");
    let r = root.to_str().unwrap();
    let args = [
        "--root",
        r,
        "--board",
        "rpi4",
        "--binary",
        binary.to_str().unwrap(),
    ];
    let o = install(&args);
    assert!(o.status.success(), "scripts/install:\n{}", show(&o));
    let out = text(&o.stdout);
    // The boot configuration is printed, never edited.
    assert!(
        out.contains("dtparam=watchdog=on") && out.contains("dtoverlay=tpm-slb9670"),
        "the config.txt lines are not printed:\n{out}"
    );

    // The account, in the scratch root's databases.
    let passwd = read(&root.join("etc/passwd"));
    let account = passwd
        .lines()
        .find(|l| l.starts_with("voxgate:"))
        .unwrap_or_else(|| panic!("no voxgate account:\n{passwd}"));
    let f: Vec<&str> = account.split(':').collect();
    assert_eq!(f[5], "/var/lib/voxgate", "home: {account}");
    assert!(f[6].ends_with("nologin"), "shell: {account}");
    assert_ne!(f[2], "0", "{account}");
    assert_eq!(f[3], id_in(&root.join("etc/group"), "voxgate").to_string());
    assert!(members(&root, "audio").contains(&"voxgate".to_string()));
    assert!(
        !read(&root.join("etc/group")).contains("tss"),
        "tss without --tpm"
    );

    let src = |p: &str| repo().join(p);
    for (rel, from, mode, user, group) in [
        ("usr/bin/voxgate", binary.clone(), 0o755, "root", "root"),
        (
            "usr/lib/systemd/system/voxgate.service",
            src("systemd/voxgate.service"),
            0o644,
            "root",
            "root",
        ),
        (
            "usr/lib/sysusers.d/voxgate.conf",
            src("systemd/voxgate.sysusers"),
            0o644,
            "root",
            "root",
        ),
        (
            "usr/lib/tmpfiles.d/voxgate.conf",
            src("systemd/voxgate.tmpfiles"),
            0o644,
            "root",
            "root",
        ),
        (
            "usr/share/voxgate/board/rpi4/profile.toml",
            src("board/rpi4/profile.toml"),
            0o644,
            "root",
            "root",
        ),
        (
            "usr/share/voxgate/board/rpi4/asound.conf",
            src("board/rpi4/asound.conf"),
            0o644,
            "root",
            "root",
        ),
        (
            "usr/share/voxgate/board/rpi4/config.txt.fragment",
            src("board/rpi4/config.txt.fragment"),
            0o644,
            "root",
            "root",
        ),
        (
            "usr/share/voxgate/board/rpi4/nftables.conf",
            src("board/rpi4/nftables.conf"),
            0o644,
            "root",
            "root",
        ),
        (
            "etc/voxgate/board.toml",
            src("board/rpi4/profile.toml"),
            0o640,
            "root",
            "voxgate",
        ),
        (
            "etc/voxgate/voxgate.toml.example",
            src("examples/voxgate.toml"),
            0o640,
            "root",
            "voxgate",
        ),
        (
            "etc/asound.conf",
            src("board/rpi4/asound.conf"),
            0o644,
            "root",
            "root",
        ),
        (
            "etc/nftables.d/voxgate.conf",
            src("board/rpi4/nftables.conf"),
            0o644,
            "root",
            "root",
        ),
    ] {
        assert_same(&root, rel, &from);
        assert_meta(&root, rel, mode, user, group);
    }
    for (rel, mode, user, group) in [
        ("var/lib/voxgate", 0o750, "voxgate", "voxgate"),
        ("etc/voxgate", 0o750, "root", "voxgate"),
        ("var/lib/voxgate-relay", 0o750, "voxgate", "voxgate"),
        (
            "var/lib/voxgate-relay/recordings",
            0o750,
            "voxgate",
            "voxgate",
        ),
    ] {
        assert!(root.join(rel).is_dir(), "/{rel} is not a directory");
        assert_meta(&root, rel, mode, user, group);
    }
    // Role gateway: no relay unit, no relay config, no TPM group.
    for rel in [
        "usr/lib/systemd/system/voxgate-relay.service",
        "usr/lib/systemd/system/voxgate-signer.service",
        "etc/voxgate/relay.toml",
        "usr/lib/sysusers.d/voxgate-tpm.conf",
    ] {
        assert!(
            !root.join(rel).exists(),
            "/{rel} installed for role gateway"
        );
    }

    // Second run: nothing changes, not even a time stamp.
    let before = snapshot(&root);
    let o = install(&args);
    assert!(o.status.success(), "second run:\n{}", show(&o));
    assert!(
        text(&o.stdout).contains("nothing to change"),
        "second run:\n{}",
        show(&o)
    );
    let changes = diff(&before, &snapshot(&root));
    assert!(changes.is_empty(), "the second run changed: {changes:?}");

    // An edited config (and a box's own asound.conf) survive a rerun.
    let edited = "# edited on the box\ndevice_id = \"shop-99\"\n";
    std::fs::write(root.join("etc/voxgate/voxgate.toml.example"), edited).unwrap();
    std::fs::write(root.join("etc/asound.conf"), "# the box's own\n").unwrap();
    let o = install(&args);
    assert!(o.status.success(), "third run:\n{}", show(&o));
    assert_eq!(read(&root.join("etc/voxgate/voxgate.toml.example")), edited);
    // `voxgate setup` writes voxgate.toml: the installer never makes one.
    assert!(!root.join("etc/voxgate/voxgate.toml").exists());
    assert_eq!(read(&root.join("etc/asound.conf")), "# the box's own\n");
    let all = format!("{}{}", text(&o.stdout), text(&o.stderr));
    assert!(
        all.contains("kept existing /etc/voxgate/voxgate.toml.example"),
        "third run:\n{all}"
    );
    // The box's asound.conf lacks the board's PCMs: the installer says how to add them.
    assert!(
        all.contains("</usr/share/voxgate/board/rpi4/asound.conf>"),
        "third run:\n{all}"
    );

    std::fs::remove_dir_all(root).unwrap();
    std::fs::remove_dir_all(work).unwrap();
}

#[test]
fn install_both_roles_with_a_tpm_and_a_narrowed_lan() {
    assert_root();
    let root = scratch_root("deploy-install-both");
    let r = root.to_str().unwrap();
    let o = install(&[
        "--root",
        r,
        "--board",
        "rpi-zero2w",
        "--binary",
        voxgate_testkit::lab::bin(),
        "--role",
        "both",
        "--tpm",
        "--lan-v4",
        "192.168.10.0/24,10.20.0.0/16",
        "--lan-v6",
        "fd00:10::/64",
    ]);
    assert!(o.status.success(), "scripts/install:\n{}", show(&o));
    for rel in [
        "usr/lib/systemd/system/voxgate.service",
        "usr/lib/systemd/system/voxgate-relay.service",
        "usr/lib/systemd/system/voxgate-signer.service",
    ] {
        assert_meta(&root, rel, 0o644, "root", "root");
    }
    assert_same(
        &root,
        "etc/voxgate/relay.toml",
        &repo().join("examples/relay.toml"),
    );
    assert_meta(&root, "etc/voxgate/relay.toml", 0o640, "root", "voxgate");
    assert_same(
        &root,
        "usr/lib/sysusers.d/voxgate-tpm.conf",
        &repo().join("systemd/voxgate-tpm.sysusers"),
    );
    assert!(members(&root, "tss").contains(&"voxgate".to_string()));
    assert!(members(&root, "audio").contains(&"voxgate".to_string()));
    assert_same(
        &root,
        "etc/asound.conf",
        &repo().join("board/rpi-zero2w/asound.conf"),
    );

    let fw = root.join("etc/nftables.d/voxgate.conf");
    let rules = read(&fw);
    assert!(
        rules.contains("elements = { 192.168.10.0/24, 10.20.0.0/16 }")
            && rules.contains("elements = { fd00:10::/64 }")
            && !rules.contains("172.16.0.0/12"),
        "the LAN sets were not narrowed:\n{rules}"
    );
    let o = nft_check(&fw);
    assert!(o.status.success(), "narrowed firewall:\n{}", show(&o));
    std::fs::remove_dir_all(root).unwrap();
}

#[test]
fn install_refuses_clearly() {
    assert_root();
    let root = scratch_root("deploy-install-refuse");
    let r = root.to_str().unwrap();
    let missing = root.join("no-such-dir");
    let bin = voxgate_testkit::lab::bin();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "--root",
                missing.to_str().unwrap(),
                "--board",
                "rpi4",
                "--binary",
                bin,
            ],
            "does not exist",
        ),
        (
            vec!["--root", r, "--board", "rpi9", "--binary", bin],
            "unknown board `rpi9`; known boards: generic-arm64 rpi-zero2w rpi3 rpi4 rpi5",
        ),
        (
            vec![
                "--root",
                r,
                "--board",
                "rpi4",
                "--binary",
                "/nonexistent/voxgate",
            ],
            "binary /nonexistent/voxgate does not exist",
        ),
        (
            vec!["--board", "rpi4", "--binary", bin],
            "--root DIR is required",
        ),
        (
            vec!["--root", r, "--binary", bin],
            "--board NAME is required",
        ),
        (
            vec![
                "--root", r, "--board", "rpi4", "--binary", bin, "--role", "cloud",
            ],
            "--role must be gateway, relay or both",
        ),
    ];
    for (args, want) in cases {
        let before = snapshot(&root);
        let o = install(&args);
        assert!(!o.status.success(), "{args:?} succeeded:\n{}", show(&o));
        assert!(
            text(&o.stderr).contains(want),
            "{args:?}: stderr lacks `{want}`:\n{}",
            show(&o)
        );
        assert!(
            diff(&before, &snapshot(&root)).is_empty(),
            "{args:?} changed the root although it refused"
        );
    }
    // A directory that is not a root file system.
    let empty = test_dir("deploy-install-empty");
    let o = install(&[
        "--root",
        empty.to_str().unwrap(),
        "--board",
        "rpi4",
        "--binary",
        bin,
    ]);
    assert!(
        !o.status.success() && text(&o.stderr).contains("does not look like a root file system"),
        "{}",
        show(&o)
    );
    std::fs::remove_dir_all(root).unwrap();
    std::fs::remove_dir_all(empty).unwrap();
}
