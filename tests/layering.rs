//! One direction of dependencies: every `crate::` path in `src/` (in `use`
//! items, grouped or not, and written inline), and every `super::` path that
//! climbs out of its top-level module, is an edge between two top-level
//! modules. An edge may go down the layer order that ARCHITECTURE.md's
//! "Layers" table gives, or sideways within a layer, never up; and the
//! edges must form no cycle. The table is read from ARCHITECTURE.md itself,
//! so the document and the code cannot drift apart.
//!
//! Comments and string literals are not code: a doc link to a higher module
//! is not a dependency.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Dependencies allowed against the rule. Empty, and it stays empty: a
/// module that needs something from a higher one means that thing belongs
/// lower.
const EXCEPTIONS: &[(&str, &str)] = &[];

/// `src/a/b.rs` and `src/a/b/mod.rs` → `["a", "b"]`; the crate root is `[]`.
fn module_path(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap();
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().unwrap();
    let stem = last.trim_end_matches(".rs");
    if !matches!(stem, "mod" | "lib" | "main") {
        parts.push(stem.to_string());
    }
    parts
}

/// The text with comments and string literals blanked (lengths kept).
fn code_only(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            let mut depth = 0;
            while i < b.len() {
                if b[i..].starts_with(b"/*") {
                    depth += 1;
                    i += 2;
                } else if b[i..].starts_with(b"*/") {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if b[i] == b'"' {
            // Raw strings are rare in src; plain ones with escapes suffice.
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if b[i] == b'\'' && i + 2 < b.len() && (b[i + 2] == b'\'' || b[i + 1] == b'\\') {
            // A char literal such as '"' or '\n' (lifetimes have no closing quote).
            let end = b[i + 1..]
                .iter()
                .position(|&c| c == b'\'')
                .map_or(b.len(), |p| i + 2 + p);
            i = end;
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

fn ident_at(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// The top-level modules that `code` (of the module at `path`) refers to.
fn references(path: &[String], code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let bytes = code.as_bytes();
    for (at, _) in code.match_indices("crate::") {
        // `voxgate_crate::` or `$crate::` are other things.
        if at > 0
            && (bytes[at - 1].is_ascii_alphanumeric()
                || bytes[at - 1] == b'_'
                || bytes[at - 1] == b'$')
        {
            continue;
        }
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // `crate::{a, b::c, d::{e, f}}`: the first name of each item at depth 0.
            let mut depth = 0;
            let mut item_start = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && (c.is_ascii_alphabetic() || c == '_') => {
                        found.insert(ident_at(&group[i..]).to_string());
                        item_start = false;
                    }
                    c if c.is_whitespace() => {}
                    _ => item_start = false,
                }
            }
        } else {
            let name = ident_at(rest);
            if !name.is_empty() {
                found.insert(name.to_string());
            }
        }
    }
    // `super::super::x` climbing to the crate root names top-level `x`.
    for (at, _) in code.match_indices("super::") {
        if at > 0
            && (bytes[at - 1].is_ascii_alphanumeric()
                || bytes[at - 1] == b'_'
                || bytes[at - 1] == b':')
        {
            continue;
        }
        let mut rest = &code[at..];
        let mut ups = 0;
        while let Some(r) = rest.strip_prefix("super::") {
            ups += 1;
            rest = r;
        }
        if ups == path.len() {
            let name = ident_at(rest);
            if !name.is_empty() {
                found.insert(name.to_string());
            }
        }
    }
    found.retain(|m| m != "self" && m != "super" && !m.is_empty());
    found
}

/// Top-level module → the top-level modules it uses, over every file in `src`.
fn edges(src: &Path) -> BTreeMap<String, BTreeMap<String, BTreeSet<PathBuf>>> {
    let mut files = Vec::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                files.push(p);
            }
        }
    }
    let mut out: BTreeMap<String, BTreeMap<String, BTreeSet<PathBuf>>> = BTreeMap::new();
    for f in files {
        let path = module_path(src, &f);
        let Some(top) = path.first() else { continue };
        let code = code_only(&std::fs::read_to_string(&f).unwrap());
        for to in references(&path, &code) {
            if &to != top {
                out.entry(top.clone())
                    .or_default()
                    .entry(to)
                    .or_default()
                    .insert(f.clone());
            }
        }
    }
    out
}

/// Layer number → modules, from the "## Layers" table of ARCHITECTURE.md:
/// rows `| N | `a`, `b` | ... |`.
fn layers(architecture: &str) -> BTreeMap<String, u32> {
    let mut out = BTreeMap::new();
    let section = architecture
        .split("\n## ")
        .find(|s| s.starts_with("Layers"))
        .expect("ARCHITECTURE.md has a \"## Layers\" section");
    for line in section.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() < 4 {
            continue;
        }
        let Ok(n) = cells[1].parse::<u32>() else {
            continue;
        };
        for m in cells[2].split('`').skip(1).step_by(2) {
            assert!(
                out.insert(m.to_string(), n).is_none(),
                "`{m}` is in two layers"
            );
        }
    }
    out
}

/// The problems with `edges` under `layers`: unknown modules, upward edges,
/// cycles.
fn problems(
    modules: &BTreeSet<String>,
    layers: &BTreeMap<String, u32>,
    edges: &BTreeMap<String, BTreeMap<String, BTreeSet<PathBuf>>>,
) -> Vec<String> {
    let mut out = Vec::new();
    for m in modules {
        if !layers.contains_key(m) {
            out.push(format!(
                "`{m}` (in src/lib.rs) has no layer in ARCHITECTURE.md"
            ));
        }
    }
    for m in layers.keys() {
        if !modules.contains(m) {
            out.push(format!(
                "ARCHITECTURE.md layers `{m}`, which src/lib.rs does not declare"
            ));
        }
    }
    for (from, tos) in edges {
        for (to, files) in tos {
            if EXCEPTIONS.contains(&(from.as_str(), to.as_str())) || !modules.contains(to) {
                continue;
            }
            let (Some(lf), Some(lt)) = (layers.get(from), layers.get(to)) else {
                continue;
            };
            if lt > lf {
                let files: Vec<_> = files.iter().map(|f| f.display().to_string()).collect();
                out.push(format!(
                    "`{from}` (layer {lf}) uses `{to}` (layer {lt}), up a layer, in {}",
                    files.join(", ")
                ));
            }
        }
    }
    // Cycles: depth-first search over the edges that count.
    let mut state: BTreeMap<&str, u8> = BTreeMap::new(); // 1 = on stack, 2 = done
    fn visit<'a>(
        m: &'a str,
        edges: &'a BTreeMap<String, BTreeMap<String, BTreeSet<PathBuf>>>,
        state: &mut BTreeMap<&'a str, u8>,
        stack: &mut Vec<&'a str>,
        out: &mut Vec<String>,
    ) {
        state.insert(m, 1);
        stack.push(m);
        for to in edges.get(m).into_iter().flat_map(|t| t.keys()) {
            if EXCEPTIONS.contains(&(m, to.as_str())) {
                continue;
            }
            match state.get(to.as_str()) {
                Some(1) => {
                    let start = stack.iter().position(|s| s == to).unwrap();
                    out.push(format!("cycle: {} -> {to}", stack[start..].join(" -> ")));
                }
                Some(_) => {}
                None => visit(to, edges, state, stack, out),
            }
        }
        stack.pop();
        state.insert(m, 2);
    }
    for m in edges.keys() {
        if !state.contains_key(m.as_str()) {
            visit(m, edges, &mut state, &mut Vec::new(), &mut out);
        }
    }
    out
}

fn declared_modules(lib: &str) -> BTreeSet<String> {
    lib.lines()
        .filter_map(|l| {
            l.trim()
                .strip_prefix("pub mod ")
                .or(l.trim().strip_prefix("mod "))
        })
        .map(|l| l.trim_end_matches(';').trim().to_string())
        .collect()
}

#[test]
fn dependencies_go_down_the_layers_and_close_no_cycle() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let architecture = std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap();
    let layers = layers(&architecture);
    let modules = declared_modules(&std::fs::read_to_string(root.join("src/lib.rs")).unwrap());
    assert!(
        modules.len() >= 10,
        "read the modules of src/lib.rs: {modules:?}"
    );
    let edges = edges(&root.join("src"));
    assert!(
        edges.values().map(BTreeMap::len).sum::<usize>() >= 20,
        "the scan found the crate's dependencies: {edges:?}"
    );
    let found = problems(&modules, &layers, &edges);
    assert!(found.is_empty(), "layering:\n{}", found.join("\n"));
    assert!(EXCEPTIONS.is_empty());
}

/// The scanner itself: the forms of path it must see, and the ones it must not.
#[test]
fn the_scanner_finds_every_form_of_path_and_flags_up_and_cycles() {
    let code = code_only(
        r#"
        use crate::{pki::name, proto::{control, signal}, self as me};
        use crate::media::rtp;
        fn f() { let _ = crate::config::GatewayConfig::load(p); }
        // crate::relay in a comment is no dependency
        /// [`crate::cli`] in a doc link neither
        const S: &str = "crate::demo in a string";
        let c = '"'; let d = crate::codec::x;
        fn g() { super::super::bridge::x(); super::local(); }
        "#,
    );
    let path = vec!["media".to_string(), "leg".to_string()];
    let found = references(&path, &code);
    let want: BTreeSet<String> = ["pki", "proto", "media", "config", "codec", "bridge"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(found, want);

    let table = "# x\n\n## Layers\n\n| layer | modules |\n| --- | --- |\n| 1 | `a`, `b` | x |\n| 2 | `c` | y |\n\n## Next\n| 3 | `z` | |\n";
    let layers = layers(table);
    assert_eq!(layers.len(), 3);
    let modules: BTreeSet<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
    let mut edges: BTreeMap<String, BTreeMap<String, BTreeSet<PathBuf>>> = BTreeMap::new();
    let add =
        |edges: &mut BTreeMap<String, BTreeMap<String, BTreeSet<PathBuf>>>, f: &str, t: &str| {
            edges
                .entry(f.into())
                .or_default()
                .entry(t.into())
                .or_default()
                .insert(PathBuf::from(format!("src/{f}.rs")));
        };
    add(&mut edges, "c", "a");
    add(&mut edges, "a", "b");
    assert!(problems(&modules, &layers, &edges).is_empty());
    add(&mut edges, "a", "c");
    add(&mut edges, "b", "a");
    let p = problems(&modules, &layers, &edges);
    assert!(
        p.iter()
            .any(|e| e.contains("`a` (layer 1) uses `c` (layer 2)")),
        "{p:?}"
    );
    assert!(
        p.iter().any(|e| e.starts_with("cycle: a -> b -> a")),
        "{p:?}"
    );
}
