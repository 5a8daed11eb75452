//! How findings are shown: one line per check with a mark (✓ ‼ × –, or
//! `[ok]` `[warn]` `[FAIL]` `[skip]` where the locale is not UTF-8 or with
//! `--ascii`) and the fix under each that is not Ok; or a JSON document
//! whose shape is stable:
//!
//! ```json
//! {"version": 1, "config": "/etc/voxgate/voxgate.toml", "status": "fail",
//!  "exit_code": 2,
//!  "checks": [{"id": "config", "status": "ok", "message": "...", "hint": null}, ...]}
//! ```

use super::{Finding, Status, worst};
use std::path::Path;

/// Whether the locale says UTF-8 (`LC_ALL`, else `LC_CTYPE`, else `LANG`,
/// as `setlocale` reads them; unset means the C locale: ASCII).
pub fn locale_is_utf8(var: impl Fn(&str) -> Option<String>) -> bool {
    ["LC_ALL", "LC_CTYPE", "LANG"]
        .iter()
        .find_map(|k| var(k).filter(|v| !v.is_empty()))
        .is_some_and(|v| {
            let v = v.to_ascii_lowercase();
            v.contains("utf-8") || v.contains("utf8")
        })
}

/// Write `text` to stdout; a closed pipe (`| head`) is not an error.
pub fn emit(text: &str) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

/// The mark of a status.
pub fn mark(s: Status, ascii: bool) -> &'static str {
    match (s, ascii) {
        (Status::Ok, false) => "✓",
        (Status::Warn, false) => "‼",
        (Status::Fail, false) => "×",
        (Status::Skip, false) => "–",
        (Status::Ok, true) => "[ok]",
        (Status::Warn, true) => "[warn]",
        (Status::Fail, true) => "[FAIL]",
        (Status::Skip, true) => "[skip]",
    }
}

/// The findings as text lines (`ascii`: marks without UTF-8).
pub fn text(findings: &[Finding], ascii: bool) -> String {
    let width = findings.iter().map(|f| f.id.len()).max().unwrap_or(0);
    let mut out = String::new();
    for f in findings {
        out.push_str(&format!(
            "{:<6} {:<width$}  {}\n",
            mark(f.status, ascii),
            f.id,
            f.message
        ));
        if let Some(h) = &f.hint
            && f.status != Status::Ok
        {
            out.push_str(&format!("{:<6} {:<width$}  fix: {h}\n", "", ""));
        }
    }
    let w = worst(findings);
    let count = |s| findings.iter().filter(|f| f.status == s).count();
    out.push_str(&format!(
        "{}: {} ok, {} warning(s), {} failed, {} skipped\n",
        match w {
            Status::Fail => "FAILED",
            Status::Warn => "WARNINGS",
            _ => "OK",
        },
        count(Status::Ok),
        count(Status::Warn),
        count(Status::Fail),
        count(Status::Skip)
    ));
    out
}

/// The findings as the JSON document described above.
pub fn json(config: &Path, findings: &[Finding]) -> String {
    let w = worst(findings);
    let doc = serde_json::json!({
        "version": 1,
        "config": config.display().to_string(),
        "status": w.name(),
        "exit_code": w.exit_code(),
        "checks": findings,
    });
    serde_json::to_string_pretty(&doc).unwrap_or_else(|_| "{}".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_locale_decides_the_marks() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert!(locale_is_utf8(env(&[("LANG", "en_US.UTF-8")])));
        assert!(locale_is_utf8(env(&[("LC_ALL", "C.utf8"), ("LANG", "C")])));
        assert!(!locale_is_utf8(env(&[
            ("LC_ALL", "C"),
            ("LANG", "C.UTF-8")
        ])));
        assert!(!locale_is_utf8(env(&[])));
        assert!(locale_is_utf8(env(&[
            ("LC_ALL", ""),
            ("LANG", "de_DE.UTF-8")
        ])));
    }

    #[test]
    fn text_and_json() {
        let f = vec![
            Finding::ok("config", "fine"),
            Finding::fail("dns", "gone", "fix dns"),
            Finding::skip("relay.udp", "dns"),
        ];
        let t = text(&f, true);
        assert!(t.contains("[ok]   config"), "{t}");
        assert!(t.contains("[FAIL] dns"), "{t}");
        assert!(t.contains("fix: fix dns"), "{t}");
        assert!(
            t.contains("FAILED: 1 ok, 0 warning(s), 1 failed, 1 skipped"),
            "{t}"
        );
        assert!(text(&f, false).contains("× dns") || text(&f, false).contains("×      dns"));
        let j: serde_json::Value = serde_json::from_str(&json(Path::new("/c"), &f)).unwrap();
        assert_eq!(j["status"], "fail");
        assert_eq!(j["exit_code"], 2);
        assert_eq!(j["checks"][1]["id"], "dns");
        assert_eq!(j["checks"][1]["hint"], "fix dns");
        assert_eq!(j["checks"][2]["status"], "skip");
        assert!(j["checks"][0]["hint"].is_null());
    }
}
