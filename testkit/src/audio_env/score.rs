//! Scoring: PESQ-WB, STOI and the alignment offset of a recording.

use super::*;

/// Result of `scripts/score.py --json`.
#[derive(Debug, Clone, PartialEq)]
pub struct Score {
    pub pesq_wb: f64,
    pub stoi: f64,
    /// > 0: the degraded signal lags the reference by this much.
    pub offset_ms: f64,
    pub pesq_nb: Option<f64>,
    pub ref_duration_s: f64,
    pub deg_duration_s: f64,
    pub overlap_s: f64,
    /// RMS level of the degraded signal over the scored overlap, dBFS.
    pub deg_rms_dbfs: f64,
}

/// Scores `degraded` against `reference` (WAV, or raw S16_LE 48 kHz mono
/// `.raw`/`.s16`) with `$REPO/.venv/bin/python $REPO/scripts/score.py --json`.
/// Panics with the script's stderr if it fails (unreadable input, overlap < 1 s,
/// a silent degraded signal).
pub fn score(reference: &Path, degraded: &Path) -> Score {
    try_score(reference, degraded).unwrap_or_else(|e| panic!("{e}"))
}

/// Like [`score`], but returns the script's error message instead of panicking
/// (a missing venv still panics: that is a broken environment, not a result).
pub fn try_score(reference: &Path, degraded: &Path) -> Result<Score, String> {
    let repo = repo_root();
    let py = repo.join(".venv/bin/python");
    let script = repo.join("scripts/score.py");
    assert!(py.is_file(), "{} missing: run scripts/deps", py.display());
    assert!(script.is_file(), "{} missing", script.display());
    let out = run_with_timeout(
        Command::new(&py)
            .arg(&script)
            .arg(reference)
            .arg(degraded)
            .arg("--json"),
        Duration::from_secs(180),
    )
    .map_err(|e| format!("score.py: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "score.py {} {} failed ({}): {}",
            reference.display(),
            degraded.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    parse_score(&stdout).map_err(|e| format!("score.py output {stdout:?}: {e}"))
}

/// Parses the flat JSON object printed by score.py --json (no serde).
pub fn parse_score(json: &str) -> Result<Score, String> {
    let num = |key: &str| -> Result<Option<f64>, String> {
        let pat = format!("\"{key}\"");
        let at = json.find(&pat).ok_or_else(|| format!("no key {key}"))?;
        let rest = json[at + pat.len()..].trim_start();
        let rest = rest
            .strip_prefix(':')
            .ok_or_else(|| format!("no ':' after {key}"))?
            .trim_start();
        let end = rest
            .find(|c: char| c == ',' || c == '}' || c.is_whitespace())
            .unwrap_or(rest.len());
        let tok = &rest[..end];
        if tok == "null" {
            return Ok(None);
        }
        tok.parse::<f64>()
            .map(Some)
            .map_err(|e| format!("{key}: {tok:?}: {e}"))
    };
    let req = |key: &str| num(key)?.ok_or_else(|| format!("{key} is null"));
    Ok(Score {
        pesq_wb: req("pesq_wb")?,
        stoi: req("stoi")?,
        offset_ms: req("offset_ms")?,
        pesq_nb: num("pesq_nb")?,
        ref_duration_s: req("ref_duration_s")?,
        deg_duration_s: req("deg_duration_s")?,
        overlap_s: req("overlap_s")?,
        deg_rms_dbfs: req("deg_rms_dbfs")?,
    })
}
