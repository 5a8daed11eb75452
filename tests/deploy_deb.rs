//! Deployment: the Debian packages of scripts/package-deb, from the static
//! release binaries of scripts/build-release (cached; the first aarch64 and
//! armv7 builds take a while).
//!
//! - lintian (Debian 12's) passes on each package: no error or warning
//!   that packaging/deb/lintian-overrides does not list with its reason;
//! - the armhf package's preinst refuses ARMv6 boards;
//! - the amd64 package, installed with dpkg into a Debian 12 root file
//!   system (debootstrap, cached by scripts/deb-rootfs) booted with
//!   systemd-nspawn: accounts, directories and the enabled unit come from
//!   the maintainer scripts, the gateway does not start before setup, a
//!   non-interactive `voxgate setup` enrolls with a relay this test runs
//!   on the host's loopback (the container shares the host's network),
//!   and the hardened unit then streams to it; purge removes the box's
//!   enrollment. Prints `DEB-TIMING` (docs/BENCHMARKS.md).
//! - the arm64 package, installed with dpkg into an arm64 root file system
//!   under qemu-user (binfmt_misc): the same files, owners, modes and
//!   maintainer-script results as on amd64. It is not started there:
//!   qemu-user cannot run the unit's sandbox (seccomp filters and Landlock
//!   apply to qemu's own system calls, not the guest's).
//!
//! CI runs as root; nothing is skipped: a missing tool fails with the
//! Debian package to install (scripts/deps).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use voxgate_testkit::cmd::{assert_root, run, show, stdout};
use voxgate_testkit::enroll::{fingerprint, secret_file, token};
use voxgate_testkit::lab::{Lab, repo, target_tmpdir, test_dir_in};

/// scripts/build-release for `build_arch`, then scripts/package-deb for
/// `deb_arch`: the package's path.
fn package(build_arch: &str, deb_arch: &str) -> PathBuf {
    let o = run(
        Command::new(repo().join("scripts/build-release")).arg(build_arch),
        "see scripts/build-release",
    );
    assert!(
        o.status.success(),
        "build-release {build_arch}: {}",
        show(&o)
    );
    let o = run(
        Command::new(repo().join("scripts/package-deb")).arg(deb_arch),
        "dpkg-dev",
    );
    assert!(o.status.success(), "package-deb {deb_arch}: {}", show(&o));
    let path = PathBuf::from(stdout(&o).trim());
    assert!(path.is_file(), "no package at {}", path.display());
    path
}

/// A fresh copy of the cached Debian 12 root file system for `arch`.
fn rootfs(arch: &str, dir: &Path) -> PathBuf {
    let o = run(
        Command::new(repo().join("scripts/deb-rootfs")).arg(arch),
        "debootstrap",
    );
    assert!(o.status.success(), "deb-rootfs {arch}: {}", show(&o));
    let tarball = stdout(&o).trim().to_string();
    let root = dir.join("root");
    std::fs::create_dir_all(&root).unwrap();
    let o = run(
        Command::new("tar")
            .args([
                "--numeric-owner",
                "--xattrs",
                "-I",
                "zstd",
                "-xpf",
                &tarball,
                "-C",
            ])
            .arg(&root),
        "tar and zstd",
    );
    assert!(o.status.success(), "extract {tarball}: {}", show(&o));
    root
}

fn results(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

/// Reports, as `key=value` lines, what the package's files and maintainer
/// scripts left in the root it runs in: the same script for amd64 (in the
/// booted container) and arm64 (in a chroot under qemu-user).
const INSPECT: &str = r#"
r() { printf '%s=%s\n' "$1" "$2"; }
r status "$(dpkg-query -W -f='${db:Status-Abbrev}' voxgate)"
r arch "$(dpkg-query -W -f='${Architecture}' voxgate)"
r files "$(stat -c '%n:%a:%U:%G' /usr/bin/voxgate /usr/lib/systemd/system/voxgate.service \
  /usr/lib/sysusers.d/voxgate.conf /usr/lib/sysusers.d/voxgate-tpm.conf /usr/lib/tmpfiles.d/voxgate.conf \
  /usr/share/voxgate/board/rpi4/profile.toml /etc/voxgate/voxgate.toml.example /etc/voxgate/relay.toml \
  /usr/share/man/man1/voxgate.1.gz /usr/share/bash-completion/completions/voxgate \
  /usr/share/doc/voxgate/copyright /usr/share/doc/voxgate/changelog.Debian.gz | tr '\n' ' ')"
r dirs "$(stat -c '%n:%a:%U:%G' /etc/voxgate /var/lib/voxgate /var/lib/voxgate-relay /etc/credstore.encrypted | tr '\n' ' ')"
r users "$(getent passwd voxgate voxgate-signer | cut -d: -f1,6,7 | tr '\n' ' ')"
r voxgate_groups "$(id -Gn voxgate)"
r conffiles "$(dpkg-query -W -f='${Conffiles}' voxgate | awk '{ print $1 }' | tr '\n' ' ')"
r wants "$(readlink /etc/systemd/system/multi-user.target.wants/voxgate.service)"
r relay_wants "$(ls /etc/systemd/system/multi-user.target.wants/ | grep -c '^voxgate-relay\|^voxgate-signer')"
r helper_state "$(ls /var/lib/systemd/deb-systemd-helper-enabled/ | grep -c voxgate)"
r version "$(voxgate --version)"
"#;

/// The expectations on [`INSPECT`]'s report, for both architectures.
fn assert_installed(r: &BTreeMap<String, String>, arch: &str, context: &str) {
    let get = |k: &str| r.get(k).map(String::as_str).unwrap_or("<missing>");
    assert_eq!(get("status"), "ii", "{context}");
    assert_eq!(get("arch"), arch, "{context}");
    for want in [
        "/usr/bin/voxgate:755:root:root",
        "/usr/lib/systemd/system/voxgate.service:644:root:root",
        "/usr/lib/sysusers.d/voxgate.conf:644:root:root",
        "/usr/lib/sysusers.d/voxgate-tpm.conf:644:root:root",
        "/usr/lib/tmpfiles.d/voxgate.conf:644:root:root",
        "/usr/share/voxgate/board/rpi4/profile.toml:644:root:root",
        "/etc/voxgate/voxgate.toml.example:644:root:root",
        "/etc/voxgate/relay.toml:644:root:root",
        "/usr/share/man/man1/voxgate.1.gz:644:root:root",
        "/usr/share/bash-completion/completions/voxgate:644:root:root",
        "/usr/share/doc/voxgate/copyright:644:root:root",
        "/usr/share/doc/voxgate/changelog.Debian.gz:644:root:root",
    ] {
        assert!(get("files").contains(want), "{want}:\n{context}");
    }
    // tmpfiles.d, applied by the postinst (the package ships /etc/voxgate
    // 0755 root:root; tmpfiles gives it to the account's group).
    for want in [
        "/etc/voxgate:750:root:voxgate",
        "/var/lib/voxgate:750:voxgate:voxgate",
        "/var/lib/voxgate-relay:750:voxgate:voxgate",
        "/etc/credstore.encrypted:700:root:root",
    ] {
        assert!(get("dirs").contains(want), "{want}:\n{context}");
    }
    // sysusers.d: both accounts, no login shell, voxgate in audio and tss.
    assert!(
        get("users").contains("voxgate:/var/lib/voxgate:/usr/sbin/nologin")
            && get("users").contains("voxgate-signer:"),
        "{context}"
    );
    let groups: Vec<&str> = get("voxgate_groups").split_whitespace().collect();
    assert!(
        groups.contains(&"audio") && groups.contains(&"tss"),
        "{context}"
    );
    assert_eq!(
        get("conffiles"),
        "/etc/voxgate/relay.toml /etc/voxgate/voxgate.toml.example",
        "{context}"
    );
    // deb-systemd-helper enabled the gateway, and only the gateway.
    // (/lib is /usr/lib on a merged-/usr system: either is the package's.)
    assert!(
        [
            "/lib/systemd/system/voxgate.service",
            "/usr/lib/systemd/system/voxgate.service"
        ]
        .contains(&get("wants")),
        "{context}"
    );
    assert_eq!(get("relay_wants"), "0", "{context}");
    assert_ne!(get("helper_state"), "0", "{context}");
    assert!(get("version").starts_with("voxgate "), "{context}");
}

#[test]
fn packages_pass_lintian() {
    assert_root();
    for (build, deb) in [
        ("x86_64", "amd64"),
        ("aarch64", "arm64"),
        ("armv7", "armhf"),
    ] {
        let p = package(build, deb);
        let o = run(Command::new("lintian").arg(&p), "lintian");
        let out = format!("{}{}", stdout(&o), String::from_utf8_lossy(&o.stderr));
        let tags: Vec<&str> = out
            .lines()
            .filter(|l| l.starts_with("E:") || l.starts_with("W:"))
            .collect();
        assert!(
            o.status.success() && tags.is_empty(),
            "lintian {deb}: {tags:?}\n{}",
            show(&o)
        );
        // The overrides are in use: a tag they silence is still there.
        let o = run(
            Command::new("lintian").arg("--show-overrides").arg(&p),
            "lintian",
        );
        assert!(
            stdout(&o).contains("O: voxgate: statically-linked-binary"),
            "{deb}: {}",
            show(&o)
        );
        let ls = stdout(&run(Command::new("dpkg-deb").arg("-c").arg(&p), "dpkg"));
        for want in [
            "./usr/bin/voxgate",
            "./usr/share/man/man1/voxgate-setup.1.gz",
            "./usr/share/zsh/vendor-completions/_voxgate",
            "./usr/share/fish/vendor_completions.d/voxgate.fish",
            "./usr/share/voxgate/board/rpi-zero2w/nftables.conf",
            "./usr/share/lintian/overrides/voxgate",
        ] {
            assert!(
                ls.lines().any(|l| l.ends_with(want)),
                "{deb}: {want} missing:\n{ls}"
            );
        }
        feature_gated_commands(&p, deb);
        println!("DEB-SIZE {deb} {} bytes", p.metadata().unwrap().len());
    }
}

/// The man pages and completions document the package's own binary: the
/// operator API's commands (`relay api-tls`, `relay webhook`, feature
/// `api`) are in the amd64 package (the relay's build) and absent from the
/// arm ones (`--no-default-features`).
fn feature_gated_commands(p: &Path, deb: &str) {
    let dir = test_dir_in(&target_tmpdir(), &format!("deploy-deb-docs-{deb}"));
    let o = run(Command::new("dpkg-deb").arg("-x").arg(p).arg(&dir), "dpkg");
    assert!(o.status.success(), "{}", show(&o));
    let man = dir.join("usr/share/man/man1");
    let gz = |name: &str| {
        let o = run(Command::new("gzip").arg("-dc").arg(man.join(name)), "gzip");
        assert!(o.status.success(), "{name}: {}", show(&o));
        stdout(&o)
    };
    let texts = [
        ("voxgate-relay.1", gz("voxgate-relay.1.gz")),
        (
            "bash completion",
            std::fs::read_to_string(dir.join("usr/share/bash-completion/completions/voxgate"))
                .unwrap(),
        ),
        (
            "zsh completion",
            std::fs::read_to_string(dir.join("usr/share/zsh/vendor-completions/_voxgate")).unwrap(),
        ),
        (
            "fish completion",
            std::fs::read_to_string(dir.join("usr/share/fish/vendor_completions.d/voxgate.fish"))
                .unwrap(),
        ),
    ];
    let with_api = deb == "amd64";
    for cmd in ["api-tls", "webhook"] {
        let page = man.join(format!("voxgate-relay-{cmd}.1.gz"));
        assert_eq!(page.exists(), with_api, "{deb}: {}", page.display());
        for (what, text) in &texts {
            // roff writes `-` as `\-`; "webhooks" (a scope of `relay
            // api-key`, which every build has) is not the command.
            let text = text.replace("\\-", "-").replace("webhooks", "");
            assert_eq!(
                text.contains(cmd),
                with_api,
                "{deb}: `relay {cmd}` in the {what}: {}",
                if with_api {
                    "missing"
                } else {
                    "named, but the binary lacks it"
                }
            );
        }
    }
    // Commands every build has are documented in every package.
    assert!(man.join("voxgate-relay-api-key.1.gz").exists(), "{deb}");
    assert!(texts[1].1.contains("api-key"), "{deb}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn armhf_preinst_refuses_armv6_boards() {
    assert_root();
    let p = package("armv7", "armhf");
    let dir = test_dir_in(&target_tmpdir(), "deploy-deb-preinst");
    let ctl = dir.join("DEBIAN");
    let o = run(Command::new("dpkg-deb").arg("-e").arg(&p).arg(&ctl), "dpkg");
    assert!(o.status.success(), "{}", show(&o));
    let control = std::fs::read_to_string(ctl.join("control")).unwrap();
    assert!(control.contains("refuses to install on ARMv6"), "{control}");
    let cpuinfo = |name: &str, model: &str| {
        let f = dir.join(name);
        std::fs::write(&f, format!("processor\t: 0\nmodel name\t: {model}\n")).unwrap();
        f
    };
    let pi1 = cpuinfo("pi1", "ARMv6-compatible processor rev 7 (v6l)");
    let pi3 = cpuinfo("pi3", "ARMv7 Processor rev 4 (v7l)");
    for (machine, info, ok) in [
        ("armv6l", &pi3, false),
        // A 64-bit kernel reports armv8l, the CPU model tells.
        ("armv8l", &pi1, false),
        ("armv7l", &pi3, true),
        ("armv8l", &pi3, true),
    ] {
        let o = run(
            Command::new(ctl.join("preinst"))
                .arg("install")
                .env("VOXGATE_MACHINE", machine)
                .env("VOXGATE_CPUINFO", info),
            "dpkg",
        );
        assert_eq!(
            o.status.success(),
            ok,
            "{machine} {}: {}",
            info.display(),
            show(&o)
        );
        if !ok {
            assert!(
                String::from_utf8_lossy(&o.stderr).contains("ARMv6 board"),
                "{}",
                show(&o)
            );
        }
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[path = "deploy_deb/boot.rs"]
mod boot;

#[test]
fn amd64_package_installs_enrolls_and_streams_under_systemd() {
    assert_root();
    let deb = package("x86_64", "amd64");
    let dir = test_dir_in(&target_tmpdir(), "deploy-deb-amd64");
    let root = rootfs("amd64", &dir);
    // Echo, recording on (the lab's default): what the box streamed is on
    // the relay's disk.
    let lab = Lab::new("deploy-deb-relay", "mode = \"echo\"");
    let relay = lab.start_relay();
    let token = secret_file(&dir, "token", &token(&lab, "box-deb", None));
    let r = boot::install_and_stream(&boot::Boot {
        dir: &dir,
        root: &root,
        deb: &deb,
        token: &token,
        relay: &format!("127.0.0.1:{}", lab.quic_port),
        relay_metrics: lab.relay_metrics,
        fingerprint: &fingerprint(&lab),
        inspect: INSPECT,
    });
    assert_installed(&r.results, "amd64", &r.context);
    r.assert_streamed(&lab);
    drop(relay);
    std::fs::remove_dir_all(&lab.dir).unwrap();
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn arm64_package_installs_under_qemu_user() {
    assert_root();
    let deb = package("aarch64", "arm64");
    let dir = test_dir_in(&target_tmpdir(), "deploy-deb-arm64");
    let root = rootfs("arm64", &dir);
    boot::ensure_qemu_aarch64();
    std::fs::copy(&deb, root.join("tmp/voxgate.deb")).unwrap();
    std::fs::write(root.join("tmp/inspect.sh"), INSPECT).unwrap();
    // dpkg and the maintainer scripts (systemd-sysusers, systemd-tmpfiles,
    // deb-systemd-helper: arm64 programs) run under qemu-aarch64, in a
    // private mount and PID namespace with its own /proc.
    let script = format!(
        "set -e\nmount -t proc proc {root}/proc\nchroot {root} dpkg -i /tmp/voxgate.deb >&2\nchroot {root} bash /tmp/inspect.sh\n",
        root = root.display()
    );
    let o = run(
        Command::new("timeout")
            .args(["300", "unshare", "--mount", "--pid", "--fork"])
            .args(["--propagation", "private", "bash", "-c", &script]),
        "util-linux and qemu-user-static",
    );
    let context = show(&o);
    assert!(o.status.success(), "{context}");
    let r = results(&stdout(&o));
    assert_installed(&r, "arm64", &context);
    let file = stdout(&run(
        Command::new("file").arg(root.join("usr/bin/voxgate")),
        "file",
    ));
    assert!(
        file.contains("ARM aarch64") && file.contains("statically linked"),
        "{file}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}
