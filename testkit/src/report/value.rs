//! Reading bench results for the report: a JSON value that may be absent,
//! with the lookups and number formats the report uses ("n/a" for a figure
//! that is missing or null).

use serde_json::Value;

/// A value in a results file, or its absence (a missing key, a missing
/// file section, an index out of range).
#[derive(Debug, Clone, Copy)]
pub enum V<'a> {
    Missing,
    Val(&'a Value),
}

impl<'a> V<'a> {
    pub fn new(v: &'a Value) -> V<'a> {
        V::Val(v)
    }

    /// The member `k` of an object (missing for anything else).
    pub fn get(self, k: &str) -> V<'a> {
        match self {
            V::Val(Value::Object(m)) => m.get(k).map_or(V::Missing, V::Val),
            _ => V::Missing,
        }
    }

    /// A path of members.
    pub fn at(self, path: &[&str]) -> V<'a> {
        path.iter().fold(self, |v, k| v.get(k))
    }

    /// Element `i` of an array (negative: from the end).
    pub fn idx(self, i: isize) -> V<'a> {
        match self {
            V::Val(Value::Array(a)) => {
                let n = a.len() as isize;
                let j = if i < 0 { n + i } else { i };
                if (0..n).contains(&j) {
                    V::Val(&a[j as usize])
                } else {
                    V::Missing
                }
            }
            _ => V::Missing,
        }
    }

    /// Whether this is an object holding `k`.
    pub fn has(self, k: &str) -> bool {
        matches!(self, V::Val(Value::Object(m)) if m.contains_key(k))
    }

    /// Missing or null.
    pub fn is_none(self) -> bool {
        matches!(self, V::Missing | V::Val(Value::Null))
    }

    /// Whether the value counts as set: not missing, null, false, zero,
    /// empty text, an empty array or an empty object.
    pub fn truthy(self) -> bool {
        match self {
            V::Missing | V::Val(Value::Null) => false,
            V::Val(Value::Bool(b)) => *b,
            V::Val(Value::Number(n)) => n.as_f64().is_some_and(|x| x != 0.0),
            V::Val(Value::String(s)) => !s.is_empty(),
            V::Val(Value::Array(a)) => !a.is_empty(),
            V::Val(Value::Object(m)) => !m.is_empty(),
        }
    }

    /// A number (booleans count as 0 and 1).
    pub fn num(self) -> Option<f64> {
        match self {
            V::Val(Value::Number(n)) => n.as_f64(),
            V::Val(Value::Bool(b)) => Some(f64::from(u8::from(*b))),
            _ => None,
        }
    }

    /// A number; 0 when absent (for sums and comparisons with a default).
    pub fn num_or(self, d: f64) -> f64 {
        self.num().unwrap_or(d)
    }

    pub fn str(self) -> Option<&'a str> {
        match self {
            V::Val(Value::String(s)) => Some(s),
            _ => None,
        }
    }

    /// The elements of an array (none for anything else).
    pub fn list(self) -> Vec<V<'a>> {
        match self {
            V::Val(Value::Array(a)) => a.iter().map(V::Val).collect(),
            _ => Vec::new(),
        }
    }

    /// The members of an object, in file order.
    pub fn items(self) -> Vec<(&'a str, V<'a>)> {
        match self {
            V::Val(Value::Object(m)) => m.iter().map(|(k, v)| (k.as_str(), V::Val(v))).collect(),
            _ => Vec::new(),
        }
    }

    /// The value as text: numbers as written (`3`, `0.5`, `30.0`), `None`
    /// for null or missing, `True`/`False`.
    pub fn text(self) -> String {
        match self {
            V::Missing | V::Val(Value::Null) => "None".into(),
            V::Val(Value::Bool(true)) => "True".into(),
            V::Val(Value::Bool(false)) => "False".into(),
            V::Val(Value::Number(n)) => {
                if let Some(i) = n.as_i64() {
                    i.to_string()
                } else if let Some(u) = n.as_u64() {
                    u.to_string()
                } else {
                    float_text(n.as_f64().unwrap_or(f64::NAN))
                }
            }
            V::Val(Value::String(s)) => s.clone(),
            V::Val(v) => v.to_string(),
        }
    }

    /// [`V::text`], or `default` when the key is missing (a null stays
    /// `None`).
    pub fn or(self, default: &str) -> String {
        match self {
            V::Missing => default.into(),
            v => v.text(),
        }
    }

    /// [`V::text`], or `default` when the value does not count as set
    /// ([`V::truthy`]).
    pub fn or_unset(self, default: &str) -> String {
        if self.truthy() {
            self.text()
        } else {
            default.into()
        }
    }
}

/// A float as the shortest text that reads back the same, with `.0` for
/// whole numbers and an exponent (`1e-05`, `1e+16`) outside 1e-4..1e16.
pub fn float_text(x: f64) -> String {
    if x.is_nan() {
        return "nan".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf".into() } else { "-inf".into() };
    }
    let a = x.abs();
    if a != 0.0 && !(1e-4..1e16).contains(&a) {
        let s = format!("{x:e}");
        let (m, e) = s.split_once('e').unwrap();
        let e: i32 = e.parse().unwrap();
        let sign = if e < 0 { '-' } else { '+' };
        return format!("{m}e{sign}{:02}", e.abs());
    }
    if x.fract() == 0.0 {
        format!("{x:.1}")
    } else {
        format!("{x}")
    }
}

/// `v` with `d` decimals, or `n/a` when absent or not a number.
pub fn f(v: Option<f64>, d: usize) -> String {
    match v {
        Some(x) if !x.is_nan() => format!("{x:.d$}"),
        _ => "n/a".into(),
    }
}

/// [`f`] followed by `unit` (nothing after `n/a`).
pub fn fu(v: Option<f64>, d: usize, unit: &str) -> String {
    match v {
        Some(x) if !x.is_nan() => format!("{x:.d$}{unit}"),
        _ => "n/a".into(),
    }
}

/// Microseconds: `n/a`, `> 1 s` (the histogram's +Inf bucket), or `N µs`.
pub fn us(v: Option<f64>) -> String {
    match v {
        None => "n/a".into(),
        Some(x) if x == f64::INFINITY => "> 1 s".into(),
        Some(x) => format!("{x:.0} µs"),
    }
}

/// KiB to MiB.
pub fn mib(kib: Option<f64>) -> Option<f64> {
    kib.map(|k| k / 1024.0)
}

/// `**yes**`, `**no**` or `n/a`.
pub fn verdict(ok: Option<bool>) -> String {
    match ok {
        None => "n/a".into(),
        Some(true) => "**yes**".into(),
        Some(false) => "**no**".into(),
    }
}

/// ` (error: ...)` when a section failed.
pub fn err(d: V) -> String {
    let e = d.get("error");
    if e.truthy() {
        format!(" (error: {})", e.text())
    } else {
        String::new()
    }
}

/// Cores of other load, two decimals.
pub fn load(v: Option<f64>) -> String {
    match v {
        None => "n/a".into(),
        Some(x) => format!("{x:.2}"),
    }
}

/// The largest of the numbers present.
pub fn max_or(v: &[Option<f64>]) -> Option<f64> {
    v.iter().flatten().copied().reduce(f64::max)
}

pub fn le(v: Option<f64>, t: Option<f64>) -> Option<bool> {
    Some(v? <= t?)
}

pub fn lt(v: Option<f64>, t: Option<f64>) -> Option<bool> {
    Some(v? < t?)
}

/// Reads a results file; a missing or unreadable one is `{"error": ...}`.
pub fn load_json(path: &std::path::Path) -> Value {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    match std::fs::read_to_string(path)
        .map_err(|e| io_error_text(&e, path))
        .and_then(|t| serde_json::from_str(&t).map_err(|e| e.to_string()))
    {
        Ok(v) => v,
        Err(e) => serde_json::json!({ "error": format!("{name}: {e}") }),
    }
}

/// An I/O error as the report has always shown it:
/// `[Errno 2] No such file or directory: 'PATH'`.
pub fn io_error_text(e: &std::io::Error, path: &std::path::Path) -> String {
    match e.raw_os_error() {
        Some(code) => {
            let text = e.to_string();
            let msg = text
                .strip_suffix(&format!(" (os error {code})"))
                .unwrap_or(&text);
            format!("[Errno {code}] {msg}: '{}'", path.display())
        }
        None => e.to_string(),
    }
}

/// Replaces the block `<!-- NAME:begin ... <!-- NAME:end -->` of `doc`
/// with `block`; without one, puts it before `## Method and limits`, or at
/// the end.
pub fn replace_block(doc: &str, name: &str, block: &str) -> String {
    let begin = format!("<!-- {name}:begin");
    let end = format!("<!-- {name}:end -->");
    if let Some(a) = doc.find(&begin)
        && let Some(e) = doc[a..].find(&end)
    {
        let b = a + e + end.len();
        return format!("{}{block}{}", &doc[..a], &doc[b..]);
    }
    match doc.find("## Method and limits") {
        Some(i) => format!("{}{block}\n\n{}", &doc[..i], &doc[i..]),
        None => format!("{}\n\n{block}\n", doc.trim_end()),
    }
}

/// Every `<!-- NAME:begin ... <!-- NAME:end -->` block of `doc`, in order.
pub fn blocks(doc: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = doc;
    while let Some(a) = rest.find("<!-- ") {
        let tail = &rest[a + 5..];
        let name: String = tail
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() && tail[name.len()..].starts_with(":begin") {
            let end = format!("<!-- {name}:end -->");
            if let Some(e) = rest[a..].find(&end) {
                out.push(rest[a..a + e + end.len()].to_string());
                rest = &rest[a + e + end.len()..];
                continue;
            }
        }
        rest = &rest[a + 5..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_read_as_written() {
        assert_eq!(float_text(30.0), "30.0");
        assert_eq!(float_text(1.05), "1.05");
        assert_eq!(float_text(0.00001), "1e-05");
        assert_eq!(float_text(2e16), "2e+16");
        assert_eq!(V::new(&serde_json::json!(3)).text(), "3");
        assert_eq!(V::Missing.or("?"), "?");
        assert_eq!(V::new(&Value::Null).or("?"), "None");
        assert_eq!(f(Some(2.5), 0), "2");
        assert_eq!(f(None, 2), "n/a");
    }

    #[test]
    fn blocks_are_kept_and_replaced() {
        let doc = "# t\n\n<!-- a:begin x -->\nA\n<!-- a:end -->\n\n## Method and limits\n";
        assert_eq!(blocks(doc), vec!["<!-- a:begin x -->\nA\n<!-- a:end -->"]);
        let d = replace_block(doc, "a", "<!-- a:begin -->\nB\n<!-- a:end -->");
        assert!(d.contains("\nB\n") && !d.contains("\nA\n"));
        let d = replace_block(doc, "b", "<!-- b:begin -->\nC\n<!-- b:end -->");
        assert!(d.contains("<!-- b:end -->\n\n## Method and limits"));
    }
}
