//! The technician's terminal: prompts read one key at a time with the
//! terminal's own echo and signals off, so that a hidden answer (the token)
//! is never shown, and Ctrl-C inside a prompt arrives as a key
//! ([`Interrupted`]) instead of killing the process mid-write. The
//! terminal's settings are restored when [`Term`] is dropped, whatever
//! happened.

use nix::sys::termios::{self, LocalFlags, SetArg};
use std::io::{Read, Write};
use zeroize::Zeroizing;

/// Ctrl-C (or end of input) at a prompt.
#[derive(Debug, thiserror::Error)]
#[error("interrupted")]
pub struct Interrupted;

/// Longest answer taken.
const MAX_ANSWER: usize = 256;

/// The controlling terminal, in our hands while setup runs.
#[derive(Debug)]
pub struct Term {
    tty: std::fs::File,
    saved: termios::Termios,
}

impl Term {
    /// Open `/dev/tty`; `None` without a terminal.
    pub fn open() -> Option<Term> {
        let tty = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/tty")
            .ok()?;
        let saved = termios::tcgetattr(&tty).ok()?;
        Some(Term { tty, saved })
    }

    /// Write `text` as it is.
    pub fn print(&self, text: &str) {
        let mut out = &self.tty;
        let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
    }

    /// Ask for a line shown as typed; an empty answer takes `default`.
    pub fn ask(&self, prompt: &str, default: Option<&str>) -> Result<String, Interrupted> {
        let shown = match default {
            Some(d) if !d.is_empty() => format!("{prompt} [{d}]: "),
            _ => format!("{prompt}: "),
        };
        let line = self.read_line(&shown, true)?;
        let line = line.trim();
        Ok(match (line.is_empty(), default) {
            (true, Some(d)) => d.to_string(),
            _ => line.to_string(),
        })
    }

    /// Ask for a line that is never shown (the token).
    pub fn secret(&self, prompt: &str) -> Result<Zeroizing<String>, Interrupted> {
        self.read_line(&format!("{prompt} (not shown): "), false)
    }

    /// Ask yes or no.
    pub fn confirm(&self, prompt: &str, default: bool) -> Result<bool, Interrupted> {
        let d = if default { "Y/n" } else { "y/N" };
        loop {
            let a = self.ask(&format!("{prompt} ({d})"), Some(""))?;
            match a.to_ascii_lowercase().as_str() {
                "" => return Ok(default),
                "y" | "yes" => return Ok(true),
                "n" | "no" => return Ok(false),
                _ => self.print("  answer y or n\n"),
            }
        }
    }

    /// Pick one of `options` (shown numbered); `default` is an index.
    pub fn choose(
        &self,
        prompt: &str,
        options: &[String],
        default: usize,
    ) -> Result<usize, Interrupted> {
        for (i, o) in options.iter().enumerate() {
            self.print(&format!("    {}) {o}\n", i + 1));
        }
        loop {
            let a = self.ask(prompt, Some(&(default + 1).to_string()))?;
            match a.parse::<usize>() {
                Ok(n) if (1..=options.len()).contains(&n) => return Ok(n - 1),
                _ => self.print(&format!("  a number from 1 to {}\n", options.len())),
            }
        }
    }

    fn read_line(&self, prompt: &str, echo: bool) -> Result<Zeroizing<String>, Interrupted> {
        let mut raw = self.saved.clone();
        raw.local_flags
            .remove(LocalFlags::ECHO | LocalFlags::ICANON | LocalFlags::ISIG);
        termios::tcsetattr(&self.tty, SetArg::TCSANOW, &raw).map_err(|_| Interrupted)?;
        self.print(prompt);
        let mut line = Zeroizing::new(String::new());
        let result = loop {
            let mut b = [0u8; 1];
            match (&self.tty).read(&mut b) {
                Ok(1) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                _ => break Err(Interrupted),
            }
            match b[0] {
                // Ctrl-C, or Ctrl-D on an empty line.
                0x03 => break Err(Interrupted),
                0x04 if line.is_empty() => break Err(Interrupted),
                b'\r' | b'\n' => break Ok(()),
                // An escape sequence (arrow keys, bracketed paste marks):
                // dropped whole, up to its final byte.
                0x1b => self.skip_escape(),
                0x7f | 0x08 => {
                    let erased = line.pop().is_some();
                    if erased && echo {
                        self.print("\x08 \x08");
                    }
                }
                c if (0x20..0x7f).contains(&c) && line.len() < MAX_ANSWER => {
                    line.push(char::from(c));
                    if echo {
                        self.print(&char::from(c).to_string());
                    }
                }
                _ => {}
            }
        };
        self.print("\n");
        let _ = termios::tcsetattr(&self.tty, SetArg::TCSANOW, &self.saved);
        result.map(|()| line)
    }
}

impl Term {
    /// Wait up to `tenths` tenths of a second for one key, with the
    /// terminal's echo, line editing and signals off (Ctrl-C arrives as
    /// 0x03); `None` when none came. For a screen that updates until a key
    /// is pressed.
    pub fn key_within(&self, tenths: u8) -> Option<u8> {
        use nix::sys::termios::SpecialCharacterIndices as Cc;
        let mut raw = self.saved.clone();
        raw.local_flags
            .remove(LocalFlags::ECHO | LocalFlags::ICANON | LocalFlags::ISIG);
        raw.control_chars[Cc::VMIN as usize] = 0;
        raw.control_chars[Cc::VTIME as usize] = tenths;
        termios::tcsetattr(&self.tty, SetArg::TCSANOW, &raw).ok()?;
        let mut b = [0u8; 1];
        let got = matches!((&self.tty).read(&mut b), Ok(1));
        if got && b[0] == 0x1b {
            self.skip_escape();
        }
        let _ = termios::tcsetattr(&self.tty, SetArg::TCSANOW, &self.saved);
        got.then_some(b[0])
    }

    /// Read and drop the rest of an escape sequence: `ESC [ ... final`
    /// (final byte 0x40-0x7e) or `ESC x`.
    fn skip_escape(&self) {
        let mut b = [0u8; 1];
        if !matches!((&self.tty).read(&mut b), Ok(1)) || b[0] != b'[' {
            return;
        }
        for _ in 0..16 {
            if !matches!((&self.tty).read(&mut b), Ok(1)) || (0x40..=0x7e).contains(&b[0]) {
                return;
            }
        }
    }
}

impl Drop for Term {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(&self.tty, SetArg::TCSANOW, &self.saved);
    }
}
