//! A real terminal for interactive commands: a tmux session on a private
//! socket, driven with `send-keys` and read with `capture-pane`. The
//! command runs from a script that then prints its exit status and the
//! terminal's settings (`stty -a`), and keeps the pane open.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// One tmux server and session, killed on drop.
pub struct Tmux {
    socket: PathBuf,
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

impl Tmux {
    /// Run `program args` with `env` in a fresh 200x60 terminal; `name`
    /// names the socket and the script in `dir`.
    pub fn start(
        dir: &Path,
        name: &str,
        program: &str,
        args: &[String],
        env: &[(String, String)],
    ) -> Tmux {
        let socket = dir.join(format!("{name}.tmux"));
        let script = dir.join(format!("{name}.sh"));
        // Ctrl-C reaches the whole foreground group: the script survives it
        // (a handler, not an ignore, so the command gets the default).
        let mut text = String::from("#!/bin/sh\ntrap ':' INT\n");
        for (k, v) in env {
            text.push_str(&format!("export {k}={}\n", quote(v)));
        }
        text.push_str(&quote(program));
        for a in args {
            text.push(' ');
            text.push_str(&quote(a));
        }
        text.push_str("\necho \"[exit $?]\"\nstty -a | tr ';' '\\n' | grep -E '(^| )-?(echo|icanon|isig)( |$)' | tr '\\n' ' '\necho '[stty]'\nexec sleep 3600\n");
        std::fs::write(&script, text).unwrap();
        let _ = Command::new("chmod").arg("755").arg(&script).status();
        let ok = Command::new("tmux")
            .arg("-S")
            .arg(&socket)
            .args(["new-session", "-d", "-x", "200", "-y", "60"])
            .arg(&script)
            .status()
            .unwrap();
        assert!(ok.success(), "tmux new-session failed");
        Tmux { socket }
    }

    fn tmux(&self) -> Command {
        let mut c = Command::new("tmux");
        c.arg("-S").arg(&self.socket);
        c
    }

    /// Type `text` literally.
    pub fn type_text(&self, text: &str) {
        assert!(
            self.tmux()
                .args(["send-keys", "-l", text])
                .status()
                .unwrap()
                .success()
        );
    }

    /// Press a key by tmux's name (`Enter`, `C-c`, `BSpace`).
    pub fn key(&self, key: &str) {
        assert!(
            self.tmux()
                .args(["send-keys", key])
                .status()
                .unwrap()
                .success()
        );
    }

    /// Type `text`, then Enter.
    pub fn line(&self, text: &str) {
        self.type_text(text);
        self.key("Enter");
    }

    /// What the terminal shows now, with its scrollback.
    pub fn screen(&self) -> String {
        let o = self
            .tmux()
            .args(["capture-pane", "-p", "-J", "-S", "-2000"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Wait until the screen shows `text` (as its `n`-th occurrence);
    /// panics with the screen after `timeout`.
    pub fn wait_for_nth(&self, text: &str, n: usize, timeout: Duration) -> String {
        let end = Instant::now() + timeout;
        loop {
            let s = self.screen();
            if s.matches(text).count() >= n {
                return s;
            }
            assert!(
                Instant::now() < end,
                "the terminal never showed {text:?}; it shows:\n{s}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Wait until the screen shows `text`.
    pub fn wait_for(&self, text: &str, timeout: Duration) -> String {
        self.wait_for_nth(text, 1, timeout)
    }

    /// Wait for the command to end; its exit status and the screen.
    pub fn exit(&self, timeout: Duration) -> (i32, String) {
        let s = self.wait_for("[stty]", timeout);
        let code = s
            .split("[exit ")
            .nth(1)
            .and_then(|r| r.split(']').next())
            .and_then(|c| c.parse().ok())
            .expect("an exit status");
        (code, s)
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.tmux().arg("kill-server").status();
    }
}

/// The number a terminal shows before `name` in a numbered list
/// (`  3) name  description`), as typed to pick it; panics with the screen
/// when it is not listed.
pub fn choice(screen: &str, name: &str) -> String {
    screen
        .lines()
        .find_map(|l| {
            let (n, rest) = l.trim().split_once(") ")?;
            (rest.split_whitespace().next() == Some(name)).then(|| n.to_string())
        })
        .unwrap_or_else(|| panic!("{name} is not listed:\n{screen}"))
}

/// Whether the terminal's settings after the command (`stty -a`, as
/// [`Tmux::start`]'s script prints them) have echo, line editing and
/// signals on: a program that took them over gave them back.
pub fn restored(screen: &str) -> bool {
    let stty = screen
        .lines()
        .find(|l| l.ends_with("[stty]"))
        .unwrap_or_default();
    let words: Vec<&str> = stty.split_whitespace().collect();
    ["echo", "icanon", "isig"].iter().all(|w| words.contains(w))
}
