//! What every bench shares: its JSON result (a `serde_json::Value` built
//! section by section, written to `$VOXGATE_BENCH_OUT/NAME.json`), the
//! sections that `VOXGATE_BENCH_ONLY` selects, and small statistics.

use serde::{Deserialize, Serialize};
pub use serde_json::{Map, Value, json};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Building and reading a bench's JSON object.
pub trait JsonExt {
    /// An empty object.
    fn obj() -> Value;
    /// Sets `k` (replacing an earlier value); chains.
    fn set(&mut self, k: &str, v: impl Into<Value>) -> &mut Value;
    /// A finite number at `k`.
    fn num(&self, k: &str) -> Option<f64>;
    /// A string at `k`.
    fn str(&self, k: &str) -> Option<&str>;
    /// Pretty JSON with a final newline; whole numbers are written as
    /// integers (`3`, not `3.0`), non-finite ones as `null`.
    fn render(&self) -> String;
}

impl JsonExt for Value {
    fn obj() -> Value {
        Value::Object(Map::new())
    }

    fn set(&mut self, k: &str, v: impl Into<Value>) -> &mut Value {
        if let Value::Object(m) = self {
            m.shift_remove(k);
            m.insert(k.to_string(), v.into());
        }
        self
    }

    fn num(&self, k: &str) -> Option<f64> {
        self.get(k)?.as_f64().filter(|n| n.is_finite())
    }

    fn str(&self, k: &str) -> Option<&str> {
        self.get(k)?.as_str()
    }

    fn render(&self) -> String {
        let mut v = self.clone();
        integers(&mut v);
        let mut s = serde_json::to_string_pretty(&v).expect("JSON");
        s.push('\n');
        s
    }
}

/// Whole `f64`s as integers, as the benches have always written them.
fn integers(v: &mut Value) {
    match v {
        Value::Number(n) => {
            if let Some(f) = n.as_f64()
                && n.is_f64()
                && f.fract() == 0.0
                && f.abs() < 1e15
            {
                *v = Value::from(f as i64);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(integers),
        Value::Object(m) => m.values_mut().for_each(integers),
        _ => {}
    }
}

/// A typed result as JSON.
pub fn to_value(v: &impl Serialize) -> Value {
    serde_json::to_value(v).expect("results are JSON")
}

/// An array of numbers (non-finite ones as `null`).
pub fn nums(v: &[f64]) -> Value {
    Value::Array(v.iter().map(|&x| Value::from(x)).collect())
}

/// Where results go: `$VOXGATE_BENCH_OUT`, else `<target>/bench-results`.
pub fn out_dir() -> PathBuf {
    match std::env::var_os("VOXGATE_BENCH_OUT") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => crate::lab::target_tmpdir()
            .parent()
            .unwrap()
            .join("bench-results"),
    }
}

/// Writes `out_dir()/file` and returns its path.
pub fn write_result(file: &str, v: &Value) -> PathBuf {
    let dir = out_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(file);
    std::fs::write(&path, v.render()).unwrap();
    path
}

/// Whether a section runs: all of them, unless `VOXGATE_BENCH_ONLY` names
/// some (comma-separated parts of their names, e.g. `paced,PESQ`), for
/// re-measuring one figure by hand. The bench scripts always run all.
pub fn wanted(name: &str) -> bool {
    match std::env::var("VOXGATE_BENCH_ONLY") {
        Ok(only) if !only.trim().is_empty() => only
            .split(',')
            .any(|w| !w.trim().is_empty() && name.contains(w.trim())),
        _ => true,
    }
}

/// Runs section `name` of bench `bench`; a panic becomes `{"error": ...}`
/// (guards have run by then), a section not [`wanted`] `{"skipped": true}`.
pub fn section(bench: &str, name: &str, f: impl FnOnce() -> Value) -> Value {
    if !wanted(name) {
        return json!({ "skipped": true });
    }
    let t0 = Instant::now();
    eprintln!("{bench}: {name} ...");
    let r = catch(f);
    eprintln!(
        "{bench}: {name} done in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    r.unwrap_or_else(|msg| json!({ "error": msg }))
}

/// Runs `f`; a panic becomes its message (`panic` when it carries no text).
pub fn catch<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|e| {
        e.downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panic".into())
    })
}

/// Pins this process to CPU 1 when the machine has two or more; call it
/// before any other thread exists (they inherit it). The CPUs it may run
/// on, or why it is not pinned.
pub fn pin_to_cpu1() -> Result<String, String> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus >= 2 {
        crate::procfs::pin_self(1)
    } else {
        Err("one CPU only".into())
    }
}

/// [`pin_to_cpu1`]'s result as a result field.
pub fn pinned_text(pinned: &Result<String, String>) -> String {
    match pinned {
        Ok(c) => c.clone(),
        Err(e) => format!("not pinned: {e}"),
    }
}

/// `v` with `digits` decimals, or `n/a`.
pub fn fmt(v: Option<f64>, digits: usize) -> String {
    v.map(|x| format!("{x:.digits$}"))
        .unwrap_or_else(|| "n/a".into())
}

/// The median (mean of the middle two for an even count); NaN if empty.
pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    if s.is_empty() {
        return f64::NAN;
    }
    let m = s.len() / 2;
    if s.len() % 2 == 1 {
        s[m]
    } else {
        (s[m - 1] + s[m]) / 2.0
    }
}

/// A path's display form, for a result field.
pub fn path_str(p: &Path) -> String {
    p.display().to_string()
}

/// `phone_leg.json`: the phone leg's transcoding cost (benches/phone_leg
/// writes it, the report reads it).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PhoneLegResults {
    pub seconds_per_run: u32,
    pub rows: Vec<PhoneLegRow>,
}

/// One codec and Opus complexity: CPU seconds per call second of the leg
/// (both directions) and of libopus alone doing the same Opus work.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PhoneLegRow {
    pub codec: String,
    pub opus_complexity: u8,
    pub leg_cpu_s_per_call_s: f64,
    pub libopus_cpu_s_per_call_s: f64,
    pub ratio: f64,
    pub calls_per_core: f64,
}

impl PhoneLegResults {
    /// Reads `phone_leg.json`; the error names the file.
    pub fn read(path: &Path) -> Result<PhoneLegResults, String> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("{name}: {}", crate::report::value::io_error_text(&e, path)))?;
        serde_json::from_str(&text).map_err(|e| format!("{name}: {e}"))
    }
}
