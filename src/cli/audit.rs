//! `voxgate relay audit`: the relay's audit log as aligned text or JSON
//! lines, filtered by time and device; `--verify` recomputes its hash chain
//! and exits non-zero on any break.

use crate::config::RelayConfig;
use crate::relay::registry::chain::iso8601;
use crate::relay::registry::{AuditRow, Head, Registry, now};
use anyhow::{Result, anyhow, bail};
use clap::Args;
use std::io::Write;
use std::path::PathBuf;

/// `voxgate relay audit`.
#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Relay config file.
    #[arg(long, short, default_value = "/etc/voxgate/relay.toml")]
    config: PathBuf,
    /// Only rows at or after WHEN: Unix seconds, a UTC date or time
    /// (`2026-12-01`, `2026-12-01T08:30:00Z`) or an age (`30m`, `1h`, `7d`,
    /// `2w`).
    #[arg(long, value_name = "WHEN")]
    since: Option<String>,
    /// Only rows about this device.
    #[arg(long)]
    device: Option<String>,
    /// One JSON object per line: seq, ts, time, event, source, device,
    /// detail.
    #[arg(long)]
    json: bool,
    /// Recompute the hash chain and report every break: an edited row, a
    /// deleted one (a gap in seq), a row inserted by hand. Exits non-zero on
    /// any.
    #[arg(long, conflicts_with_all = ["since", "device", "json"])]
    verify: bool,
    /// With --verify: the head the relay last logged, as SEQ:HEX (its
    /// `audit_head_seq` and `audit_head` fields), to detect rows cut from
    /// the end.
    #[arg(long, requires = "verify", value_name = "SEQ:HEX")]
    head: Option<Head>,
}

/// Run `voxgate relay audit`.
pub fn run(a: AuditArgs) -> Result<()> {
    let cfg = RelayConfig::load(&a.config)?;
    let since = a
        .since
        .as_deref()
        .map(|s| parse_since(s, now()))
        .transpose()
        .map_err(|e| anyhow!("--since: {e}"))?;
    let reg = super::open_registry(&cfg)?;
    if a.verify {
        return verify(&reg, a.head);
    }
    let rows = reg.audit_rows(since, a.device.as_deref())?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if a.json {
        for r in &rows {
            writeln!(out, "{}", json_line(r))?;
        }
    } else if rows.is_empty() {
        eprintln!("no audit rows match");
    } else {
        for line in text_lines(&rows) {
            writeln!(out, "{line}")?;
        }
    }
    out.flush()?;
    Ok(())
}

fn verify(reg: &Registry, logged: Option<Head>) -> Result<()> {
    let report = reg.verify_audit(logged)?;
    match report.head {
        Some(h) => println!("audit log: {} chained rows, head {h}", report.rows),
        None => println!("audit log: no chained rows"),
    }
    if let Some((n, at)) = report.pre_chain {
        println!(
            "seq 1..{n}: written by an earlier release, before the chain; chained at upgrade ({}): unchanged since then, not attested before",
            iso8601(at)
        );
    }
    if report.ok() {
        match logged {
            Some(h) => println!(
                "the head the relay logged ({}) is in the chain: nothing was cut from the end up to it",
                h.seq
            ),
            None => println!(
                "rows cut from the end show only against the relay's log: pass its last `audit_head_seq`:`audit_head` with --head SEQ:HEX"
            ),
        }
        println!("OK: every row verifies");
        return Ok(());
    }
    for p in &report.problems {
        println!("BROKEN: {p}");
    }
    let more = report.problem_count - report.problems.len() as u64;
    if more > 0 {
        println!("... and {more} more");
    }
    let first = &report.problems[0];
    bail!(
        "the audit log does not verify ({} problem{}; the first: {first}). Treat the registry as tampered with: keep copies of it and of the relay's logs before anything else, and follow docs/INCIDENT.md",
        report.problem_count,
        if report.problem_count == 1 { "" } else { "s" },
    )
}

/// A value of `--since` as Unix seconds, given the time `now`.
pub fn parse_since(s: &str, now: i64) -> Result<i64, String> {
    let s = s.trim();
    let bad = || {
        format!(
            "`{s}` is not a time: give Unix seconds (1796083200), a UTC date or time (2026-12-01, 2026-12-01T08:30:00Z) or an age (30m, 1h, 7d, 2w)"
        )
    };
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse().map_err(|_| bad());
    }
    if let Some(unit) = s.chars().last().filter(char::is_ascii_alphabetic)
        && let Ok(n) = s[..s.len() - 1].parse::<u32>()
    {
        let secs = match unit {
            's' => 1,
            'm' => 60,
            'h' => 3_600,
            'd' => 86_400,
            'w' => 7 * 86_400,
            _ => return Err(bad()),
        };
        return Ok(now - i64::from(n) * secs);
    }
    parse_utc(s).ok_or_else(bad)
}

/// `YYYY-MM-DD`, or with `THH:MM[:SS]` (or a space) and an optional `Z`.
fn parse_utc(s: &str) -> Option<i64> {
    let s = s.strip_suffix('Z').unwrap_or(s);
    let (date, clock) = match s.split_once(['T', ' ']) {
        Some((d, c)) => (d, Some(c)),
        None => (s, None),
    };
    let num = |p: &str, len: usize| {
        (p.len() == len && p.bytes().all(|b| b.is_ascii_digit()))
            .then(|| p.parse::<u32>().ok())
            .flatten()
    };
    let mut d = date.split('-');
    let (y, m, day) = (num(d.next()?, 4)?, num(d.next()?, 2)?, num(d.next()?, 2)?);
    if d.next().is_some() {
        return None;
    }
    let month = time::Month::try_from(u8::try_from(m).ok()?).ok()?;
    let date = time::Date::from_calendar_date(y as i32, month, u8::try_from(day).ok()?).ok()?;
    let (h, min, sec) = match clock {
        None => (0, 0, 0),
        Some(c) => {
            let mut t = c.split(':');
            let h = num(t.next()?, 2)?;
            let min = num(t.next()?, 2)?;
            let sec = t.next().map_or(Some(0), |x| num(x, 2))?;
            if t.next().is_some() {
                return None;
            }
            (h, min, sec)
        }
    };
    let at = date
        .with_hms(
            h.try_into().ok()?,
            min.try_into().ok()?,
            sec.try_into().ok()?,
        )
        .ok()?;
    Some(at.assume_utc().unix_timestamp())
}

/// Control characters as escapes, so that no stored text can forge a line
/// of the listing or drive the terminal.
fn printable(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// A header and one aligned line per row: time, seq, event, device,
/// source, detail (`-` for an empty field).
pub fn text_lines(rows: &[AuditRow]) -> Vec<String> {
    let dash = |s: &str| {
        if s.is_empty() {
            "-".to_string()
        } else {
            printable(s)
        }
    };
    let cells: Vec<[String; 6]> = rows
        .iter()
        .map(|r| {
            [
                iso8601(r.ts),
                r.seq.map_or_else(|| "-".into(), |s| s.to_string()),
                dash(&r.event),
                dash(&r.device),
                dash(&r.source),
                printable(&r.detail),
            ]
        })
        .collect();
    let header = ["time", "seq", "event", "device", "source", "detail"].map(String::from);
    let mut width = [0usize; 5];
    for row in std::iter::once(&header).chain(&cells) {
        for (w, c) in width.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    std::iter::once(&header)
        .chain(&cells)
        .map(|c| {
            let line = format!(
                "{:<w0$}  {:>w1$}  {:<w2$}  {:<w3$}  {:<w4$}  {}",
                c[0],
                c[1],
                c[2],
                c[3],
                c[4],
                c[5],
                w0 = width[0],
                w1 = width[1],
                w2 = width[2],
                w3 = width[3],
                w4 = width[4],
            );
            line.trim_end().to_string()
        })
        .collect()
}

fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\u{:04x}", u32::from(c)));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// One JSON object for a row.
pub fn json_line(r: &AuditRow) -> String {
    format!(
        "{{\"seq\":{},\"ts\":{},\"time\":{},\"event\":{},\"source\":{},\"device\":{},\"detail\":{}}}",
        r.seq.map_or_else(|| "null".into(), |s| s.to_string()),
        r.ts,
        json_str(&iso8601(r.ts)),
        json_str(&r.event),
        json_str(&r.source),
        json_str(&r.device),
        json_str(&r.detail),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_unix_time_dates_and_ages() {
        let now = 1_796_083_200; // 2026-12-01T00:00:00Z
        assert_eq!(parse_since("1796083200", now), Ok(now));
        assert_eq!(parse_since("2026-12-01", now), Ok(now));
        assert_eq!(parse_since("2026-12-01T08:30:00Z", now), Ok(now + 30_600));
        assert_eq!(parse_since("2026-12-01 08:30", now), Ok(now + 30_600));
        assert_eq!(parse_since("1h", now), Ok(now - 3_600));
        assert_eq!(parse_since("7d", now), Ok(now - 7 * 86_400));
        assert_eq!(parse_since("30m", now), Ok(now - 1_800));
        assert_eq!(parse_since("2w", now), Ok(now - 14 * 86_400));
        for bad in [
            "",
            "yesterday",
            "1y",
            "2026-13-01",
            "2026-02-30",
            "h",
            "-5",
            "12:00",
        ] {
            let e = parse_since(bad, now).unwrap_err();
            assert!(e.contains("is not a time"), "{bad}: {e}");
        }
    }

    fn row(seq: Option<u64>, event: &str, device: &str, detail: &str) -> AuditRow {
        AuditRow {
            seq,
            ts: 1_796_083_200,
            event: event.into(),
            source: "".into(),
            device: device.into(),
            detail: detail.into(),
        }
    }

    #[test]
    fn text_is_aligned_and_cannot_forge_lines() {
        let rows = [
            row(Some(1), "audit_chain_started", "", "new audit log"),
            row(Some(12), "enrolled", "gw-1", "01ab"),
            row(None, "x", "gw-22", "two\nlines\x1b[2J"),
        ];
        let lines = text_lines(&rows);
        assert_eq!(lines.len(), 4);
        assert!(
            lines[1].starts_with("2026-12-01T00:00:00Z    1  audit_chain_started  -"),
            "{}",
            lines[1]
        );
        let col = |l: &str, word: &str| l.find(word).unwrap();
        assert_eq!(col(&lines[1], "audit_chain"), col(&lines[2], "enrolled"));
        assert_eq!(col(&lines[2], "gw-1"), col(&lines[3], "gw-22"));
        assert_eq!(col(&lines[0], "event"), col(&lines[2], "enrolled"));
        assert!(lines[3].ends_with("two\\nlines\\u{1b}[2J"), "{}", lines[3]);
    }

    #[test]
    fn json_lines_escape() {
        let j = json_line(&row(Some(3), "enroll_rejected", "gw\"1", "a\\b\n\u{1}"));
        assert_eq!(
            j,
            r#"{"seq":3,"ts":1796083200,"time":"2026-12-01T00:00:00Z","event":"enroll_rejected","source":"","device":"gw\"1","detail":"a\\b\n\u0001"}"#
        );
        assert!(json_line(&row(None, "e", "", "")).starts_with(r#"{"seq":null,"#));
    }
}
