//! The native seccomp filter under both C libraries voxgate is built with:
//! a small C program (`sandbox_libc/threads.c`) installs exactly the
//! program `privilege::seccomp::program()` builds, then creates threads
//! and tries forbidden calls. With glibc, `pthread_create` asks `clone3`,
//! gets ENOSYS and falls back to `clone`; with static musl (the release
//! binaries' libc) it uses `clone` alone. Threads must run under both, and
//! the forbidden calls fail with the filter's errno.
//!
//! Needs gcc and musl-gcc (Debian `build-essential`, `musl-tools`); a
//! missing compiler fails the test.

use std::path::Path;
use std::process::Command;
use voxgate_testkit::lab::test_dir;

fn filter_file(dir: &Path) -> std::path::PathBuf {
    let mut bytes = Vec::new();
    for i in voxgate::privilege::seccomp::program() {
        bytes.extend_from_slice(&i.code.to_ne_bytes());
        bytes.push(i.jt);
        bytes.push(i.jf);
        bytes.extend_from_slice(&i.k.to_ne_bytes());
    }
    let p = dir.join("filter.bin");
    std::fs::write(&p, bytes).unwrap();
    p
}

fn build_and_run(dir: &Path, cc: &str, extra: &[&str], filter: &Path) -> String {
    let src = voxgate_testkit::lab::repo().join("tests/sandbox_libc/threads.c");
    let exe = dir.join(format!("threads-{cc}"));
    let out = Command::new(cc)
        .args(["-O2", "-o"])
        .arg(&exe)
        .arg(&src)
        .args(extra)
        .arg("-lpthread")
        .output()
        .unwrap_or_else(|e| panic!("{cc}: {e} (scripts/deps installs it)"));
    assert!(
        out.status.success(),
        "{cc}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = Command::new(&exe).arg(filter).output().unwrap();
    let text = String::from_utf8_lossy(&run.stdout).into_owned();
    assert!(
        run.status.success(),
        "{cc}: {text}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    text
}

fn result(text: &str, what: &str) -> (i64, i32) {
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("{what} ")))
        .unwrap_or_else(|| panic!("no {what} in {text}"));
    let v: Vec<&str> = line.split_whitespace().collect();
    (v[1].parse().unwrap(), v[2].parse().unwrap())
}

#[test]
fn threads_start_and_forbidden_calls_fail_under_glibc_and_static_musl() {
    let dir = test_dir("sandbox-libc");
    let filter = filter_file(&dir);
    for (cc, extra) in [("gcc", &[][..]), ("musl-gcc", &["-static"][..])] {
        let text = build_and_run(&dir, cc, extra, &filter);
        assert!(text.contains("threads 4"), "{cc}: {text}");
        assert_eq!(result(&text, "clone3"), (-1, libc::ENOSYS), "{cc}");
        assert_eq!(result(&text, "unshare"), (-1, libc::EPERM), "{cc}");
        assert_eq!(result(&text, "af_packet"), (-1, libc::EAFNOSUPPORT), "{cc}");
        assert!(result(&text, "af_inet").0 >= 0, "{cc}: {text}");
        assert_eq!(result(&text, "set_dumpable"), (-1, libc::EPERM), "{cc}");
        assert_eq!(result(&text, "set_name"), (0, 0), "{cc}");
        assert_eq!(result(&text, "tiocsti"), (-1, libc::EPERM), "{cc}");
    }
}
