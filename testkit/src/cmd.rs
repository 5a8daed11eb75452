//! Running programs from a test: a missing tool names its Debian package,
//! output is shown in full when an assertion fails.

use std::path::Path;
use std::process::{Command, Output};

/// Run a command; a missing program fails with the package that provides it.
pub fn run(cmd: &mut Command, package: &str) -> Output {
    cmd.output().unwrap_or_else(|e| {
        panic!(
            "cannot run {:?}: {e}; run scripts/deps (Debian package {package})",
            cmd.get_program()
        )
    })
}

/// Bytes as text (lossy).
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A command's standard output as text.
pub fn stdout(o: &Output) -> String {
    text(&o.stdout)
}

/// A command's standard error as text.
pub fn stderr(o: &Output) -> String {
    text(&o.stderr)
}

/// Standard output then standard error, as one text.
pub fn both(o: &Output) -> String {
    format!("{}{}", text(&o.stdout), text(&o.stderr))
}

/// Status, standard output and standard error, for an assertion message.
pub fn show(o: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}\n--- stderr\n{}",
        o.status,
        text(&o.stdout),
        text(&o.stderr)
    )
}

/// A file that must exist, as text.
pub fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Fails unless the test runs as root (as CI does).
pub fn assert_root() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "this test needs root, as CI has (scripts/install sets owners; nft needs a network namespace)"
    );
}

/// `nft -c` in a throwaway network namespace: it talks to the kernel, but
/// the host's ruleset is never touched.
pub fn nft_check(file: &Path) -> Output {
    run(
        Command::new("unshare")
            .args(["--net", "nft", "-c", "-f"])
            .arg(file),
        "nftables and util-linux",
    )
}
