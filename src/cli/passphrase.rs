//! Where an operator's passphrase comes from: `--passphrase-file PATH`
//! (its first line; the file must be 0600 or 0400), `--passphrase-stdin`
//! (the first line of standard input), or else the controlling terminal
//! with echo off, asked twice for a new file. Never from the command line
//! or the environment: those are readable by other users (`/proc/PID/
//! cmdline`, `environ`) and end up in shell histories and unit files.
//!
//! Every buffer that held the passphrase is zeroizing; the value itself is
//! a [`Passphrase`], whose `Debug` is redacted.

use crate::pki::passphrase::{MAX_PASSPHRASE, Passphrase, PassphraseRule};
use clap::Args;
use nix::sys::termios::{self, LocalFlags, SetArg};
use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use thiserror::Error;
use zeroize::Zeroizing;

/// The passphrase options of a command (flattened into it).
#[derive(Debug, Args, Default, Clone)]
pub struct PassphraseArgs {
    /// Read the passphrase from the first line of this file (mode 0600 or
    /// 0400; never give the passphrase itself on the command line).
    #[arg(long, value_name = "PATH", conflicts_with = "passphrase_stdin")]
    pub passphrase_file: Option<PathBuf>,
    /// Read the passphrase from the first line of standard input.
    #[arg(long)]
    pub passphrase_stdin: bool,
}

/// What the passphrase is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Encrypting a new file: at least
    /// [`crate::pki::passphrase::MIN_NEW_PASSPHRASE`] characters, typed
    /// twice at a terminal.
    New,
    /// Opening an existing file: asked once.
    Existing,
}

/// A passphrase could not be read.
#[derive(Debug, Error)]
pub enum InputError {
    /// The passphrase file could not be read.
    #[error("cannot read the passphrase file {path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: std::io::Error,
    },
    /// The passphrase file is open to other users.
    #[error(
        "the passphrase file {path} is accessible to other users (mode {mode:04o}); it must be 0600 or 0400: run `chmod 600 {path}`"
    )]
    FileMode {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Standard input could not be read.
    #[error("cannot read the passphrase from standard input: {0}")]
    Stdin(std::io::Error),
    /// No source was given and there is no terminal to ask.
    #[error(
        "no passphrase: give --passphrase-file PATH (a 0600 file) or --passphrase-stdin, or run this on a terminal"
    )]
    NoTerminal,
    /// The terminal failed.
    #[error("cannot read the passphrase from the terminal: {0}")]
    Terminal(std::io::Error),
    /// The two entries differ.
    #[error("the passphrases do not match")]
    Mismatch,
    /// The passphrase breaks a rule.
    #[error(transparent)]
    Rule(#[from] PassphraseRule),
}

/// The terminal the process belongs to.
const TTY: &str = "/dev/tty";

impl PassphraseArgs {
    /// Whether a non-interactive source was named.
    pub fn given(&self) -> bool {
        self.passphrase_file.is_some() || self.passphrase_stdin
    }

    /// Read the passphrase from the source these options name, or from
    /// the controlling terminal.
    pub fn read(&self, purpose: Purpose, what: &str) -> Result<Passphrase, InputError> {
        let p = if let Some(path) = &self.passphrase_file {
            Passphrase::new(read_file(path)?)?
        } else if self.passphrase_stdin {
            let stdin = std::io::stdin();
            Passphrase::new(first_line(&mut stdin.lock()).map_err(InputError::Stdin)?)?
        } else {
            let tty = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(TTY)
                .map_err(|_| InputError::NoTerminal)?;
            from_terminal(&tty, purpose, what)?
        };
        if purpose == Purpose::New {
            p.check_new()?;
        }
        Ok(p)
    }
}

/// The first line of a file only its owner can read.
pub fn read_file(path: &Path) -> Result<Zeroizing<Vec<u8>>, InputError> {
    use std::os::unix::fs::PermissionsExt;
    let err = |reason| InputError::File {
        path: path.to_path_buf(),
        reason,
    };
    let f = std::fs::File::open(path).map_err(err)?;
    // The mode of the file that was opened, not of whatever the path
    // names a moment later.
    let mode = f.metadata().map_err(err)?.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(InputError::FileMode {
            path: path.to_path_buf(),
            mode,
        });
    }
    first_line(&mut std::io::BufReader::new(f)).map_err(err)
}

/// The first line of `r` (without its `\n` or `\r\n`), read no further
/// than a passphrase can be long.
pub fn first_line(r: &mut impl BufRead) -> std::io::Result<Zeroizing<Vec<u8>>> {
    let mut line = Zeroizing::new(Vec::with_capacity(MAX_PASSPHRASE + 2));
    r.take(MAX_PASSPHRASE as u64 + 2)
        .read_until(b'\n', &mut line)?;
    if line.last() == Some(&b'\n') {
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
    } else if line.len() > MAX_PASSPHRASE {
        // Cut off: longer than any passphrase (Passphrase::new says so).
        line.truncate(MAX_PASSPHRASE + 1);
    }
    Ok(line)
}

/// Ask on `tty` with echo off: once, or twice for a new file.
pub fn from_terminal(
    tty: &std::fs::File,
    purpose: Purpose,
    what: &str,
) -> Result<Passphrase, InputError> {
    let first = prompt(tty, &format!("Passphrase for {what}: "))?;
    let first = Passphrase::new(first)?;
    if purpose == Purpose::New {
        first.check_new()?;
        let again = prompt(tty, "Repeat the passphrase: ")?;
        if again.as_slice() != first.expose() {
            return Err(InputError::Mismatch);
        }
    }
    Ok(first)
}

/// Restores the terminal's settings when dropped (an error or a panic
/// between turning echo off and reading the line leaves echo on).
struct EchoOff<'a> {
    tty: &'a std::fs::File,
    saved: termios::Termios,
}

impl Drop for EchoOff<'_> {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(self.tty, SetArg::TCSANOW, &self.saved);
    }
}

fn prompt(tty: &std::fs::File, text: &str) -> Result<Zeroizing<Vec<u8>>, InputError> {
    let saved = termios::tcgetattr(tty).map_err(|e| InputError::Terminal(e.into()))?;
    let mut quiet = saved.clone();
    // Line editing stays (ICANON); the characters are not shown, the
    // newline is. Echo goes off before the prompt shows, so nothing typed
    // in answer to it is ever echoed.
    quiet.local_flags.remove(LocalFlags::ECHO);
    quiet.local_flags.insert(LocalFlags::ECHONL);
    termios::tcsetattr(tty, SetArg::TCSANOW, &quiet).map_err(|e| InputError::Terminal(e.into()))?;
    let guard = EchoOff { tty, saved };
    let mut out = tty;
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(InputError::Terminal)?;
    // One byte at a time: nothing past the line is taken from the terminal.
    let line = first_line(&mut std::io::BufReader::with_capacity(1, tty));
    drop(guard);
    line.map_err(InputError::Terminal)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("voxgate-pass-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn first_line_only_without_its_line_ending() {
        for (input, want) in [
            (
                &b"hunter2 hunter2\nsecond line\n"[..],
                &b"hunter2 hunter2"[..],
            ),
            (b"crlf passphrase\r\n", b"crlf passphrase"),
            (b"no newline at all", b"no newline at all"),
            (b"  spaces kept  \n", b"  spaces kept  "),
            (b"\n", b""),
            (b"", b""),
        ] {
            let got = first_line(&mut &input[..]).unwrap();
            assert_eq!(got.as_slice(), want);
        }
        let long = vec![b'a'; 10_000];
        let got = first_line(&mut &long[..]).unwrap();
        assert_eq!(got.len(), MAX_PASSPHRASE + 1);
        assert!(matches!(Passphrase::new(got), Err(PassphraseRule::TooLong)));
    }

    #[test]
    fn passphrase_file_must_be_private() {
        let d = tmp("file");
        let p = d.join("pass");
        std::fs::write(&p, "a long enough passphrase\nignored\n").unwrap();
        for mode in [0o644, 0o640, 0o604, 0o620] {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            let e = read_file(&p).unwrap_err();
            assert!(
                matches!(e, InputError::FileMode { mode: m, .. } if m == mode),
                "{e}"
            );
            let text = e.to_string();
            assert!(
                text.contains("chmod 600") && !text.contains("long enough"),
                "{text}"
            );
        }
        for mode in [0o600, 0o400] {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            assert_eq!(
                read_file(&p).unwrap().as_slice(),
                b"a long enough passphrase"
            );
        }
        let args = PassphraseArgs {
            passphrase_file: Some(p.clone()),
            passphrase_stdin: false,
        };
        assert!(args.given());
        args.read(Purpose::New, "the test").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&p, "short\n").unwrap();
        assert!(matches!(
            args.read(Purpose::New, "the test"),
            Err(InputError::Rule(PassphraseRule::TooShort))
        ));
        // Any length opens an existing file.
        args.read(Purpose::Existing, "the test").unwrap();
        std::fs::write(&p, "\n").unwrap();
        assert!(matches!(
            args.read(Purpose::Existing, "the test"),
            Err(InputError::Rule(PassphraseRule::Empty))
        ));
        assert!(matches!(
            read_file(&d.join("missing")),
            Err(InputError::File { .. })
        ));
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// A pseudo-terminal: the test answers each prompt at the master as
    /// an operator would, and what the terminal shows must hold none of it.
    fn converse(
        purpose: Purpose,
        script: &[(&str, &[u8])],
    ) -> (Result<Passphrase, InputError>, String) {
        use nix::pty::openpty;
        let pty = openpty(None, None).unwrap();
        let mut master = std::fs::File::from(pty.master);
        let slave = std::fs::File::from(pty.slave);
        let asker = std::thread::spawn(move || {
            let before = termios::tcgetattr(&slave).unwrap();
            assert!(before.local_flags.contains(LocalFlags::ECHO));
            let got = from_terminal(&slave, purpose, "the backup's keys");
            let after = termios::tcgetattr(&slave).unwrap();
            assert_eq!(
                after.local_flags, before.local_flags,
                "terminal not restored"
            );
            got
        });
        let mut shown = Vec::new();
        let mut buf = [0u8; 256];
        for (expect, reply) in script {
            while !String::from_utf8_lossy(&shown).contains(expect) {
                let n = master.read(&mut buf).unwrap();
                shown.extend_from_slice(&buf[..n]);
            }
            master.write_all(reply).unwrap();
        }
        let got = asker.join().unwrap();
        // The slave is closed: read what is left until EIO.
        while let Ok(n) = master.read(&mut buf) {
            if n == 0 {
                break;
            }
            shown.extend_from_slice(&buf[..n]);
        }
        (got, String::from_utf8_lossy(&shown).into_owned())
    }

    #[test]
    fn terminal_echo_is_off_and_a_new_passphrase_is_asked_twice() {
        let (got, shown) = converse(
            Purpose::New,
            &[
                (
                    "Passphrase for the backup's keys: ",
                    b"correct horse battery\n",
                ),
                ("Repeat the passphrase: ", b"correct horse battery\n"),
            ],
        );
        assert_eq!(got.unwrap().expose(), b"correct horse battery");
        assert!(!shown.contains("horse"), "echoed: {shown}");

        let (got, shown) = converse(
            Purpose::New,
            &[
                ("Passphrase for", b"correct horse battery\n"),
                ("Repeat", b"correct horse batterY\n"),
            ],
        );
        assert!(matches!(got, Err(InputError::Mismatch)));
        assert!(!shown.contains("horse"), "echoed: {shown}");
        let (got, _) = converse(Purpose::New, &[("Passphrase for", b"short\n")]);
        assert!(matches!(
            got,
            Err(InputError::Rule(PassphraseRule::TooShort))
        ));
        let (got, shown) = converse(Purpose::Existing, &[("Passphrase for", b"opened once\n")]);
        assert_eq!(got.unwrap().expose(), b"opened once");
        assert!(
            !shown.contains("Repeat") && !shown.contains("opened"),
            "{shown}"
        );
    }
}
