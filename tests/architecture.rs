//! The shape of the code, checked: dependencies point one way (no import cycles, no module
//! importing one above its layer, no backend importing another), only the binary's entry
//! imports the command line, no source file over 600 lines, and no function nested more
//! than five levels deep.
//!
//! A module "imports" another when its code names it with a `crate::` or `super::` path.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const MAX_LINES: usize = 600;
const MAX_NESTING: usize = 5;

/// The backends crate's layers, bottom first: a module may import its own layer (without
/// cycles) or any lower one, never a higher one.
const BACKEND_LAYERS: &[&[&str]] = &[
    &["sys"],
    &["book", "notice"],
    &["log"],
    &["config"],
    &["shared"],
    &["accept", "handoff", "table", "worker", "backend"],
    &["epoll", "uring", "threads"],
    &["server"],
    &["variant"],
];
/// Modules that are backends: none may import another.
const BACKENDS: &[&str] = &["epoll", "uring", "threads"];

/// The tool crate's layers: result types and files at the bottom, then what runs, then
/// the command line, then the binary's entry.
const TOOL_LAYERS: &[&[&str]] = &[
    &["files", "results", "guard", "workload"],
    &["client", "server_proc", "steal", "report"],
    &["env", "probe", "hosts"],
    &["matrix"],
    &["cli"],
    &["app"],
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return out };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(rust_files(&p));
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// The code of a file with comments, strings and character literals blanked out, so
/// braces and paths inside them do not count.
fn code_only(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            while i < b.len() && !b[i..].starts_with(b"*/") {
                i += 1;
            }
            i += 2;
        } else if b[i] == b'"' || (b[i] == b'r' && b.get(i + 1) == Some(&b'"')) {
            i += if b[i] == b'r' { 2 } else { 1 };
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if b[i] == b'\'' && b.get(i + 2) == Some(&b'\'') {
            i += 3;
        } else if b[i] == b'\'' && b.get(i + 1) == Some(&b'\\') {
            i += 2;
            while i < b.len() && b[i] != b'\'' {
                i += 1;
            }
            i += 1;
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

/// The module path of a source file under `src` (`uring::conn`, `uring` for its mod.rs).
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts.join("::")
}

/// The modules `code` (in module `me`) names, resolved against `modules`.
fn imports(code: &str, me: &str, is_mod_rs: bool, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let mut paths = Vec::new();
    for (prefix, base) in [("crate::", String::new()), ("super::", parent_of(me, is_mod_rs))] {
        let mut rest = code;
        while let Some(at) = rest.find(prefix) {
            let before = rest[..at].chars().last();
            rest = &rest[at + prefix.len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue;
            }
            for tail in expand(rest) {
                paths.push(if base.is_empty() { tail } else { format!("{base}::{tail}") });
            }
        }
    }
    let mut out = BTreeSet::new();
    for p in paths {
        let segs: Vec<&str> = p.split("::").collect();
        let found = (1..=segs.len()).rev().map(|n| segs[..n].join("::")).find(|m| modules.contains(m));
        if let Some(m) = found.filter(|m| m != me && !me.starts_with(&format!("{m}::"))) {
            out.insert(m);
        }
    }
    out
}

/// The module that `super::` names from module `me`.
fn parent_of(me: &str, _is_mod_rs: bool) -> String {
    me.rsplit_once("::").map(|(p, _)| p.to_string()).unwrap_or_default()
}

/// The paths a `crate::`/`super::` occurrence names: `a::b` or each of `{a, b::c}`.
fn expand(rest: &str) -> Vec<String> {
    let ident = |s: &str| s.chars().take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':').collect::<String>();
    if let Some(inner) = rest.strip_prefix('{') {
        let end = inner.find('}').unwrap_or(inner.len());
        inner[..end].split(',').map(|s| ident(s.trim())).filter(|s| !s.is_empty()).collect()
    } else {
        let p = ident(rest);
        let p = p.trim_end_matches(':').to_string();
        if p.ends_with("::") || p.is_empty() {
            Vec::new()
        } else {
            vec![p]
        }
    }
}

struct Crate {
    name: &'static str,
    src: PathBuf,
    layers: &'static [&'static [&'static str]],
}

/// Every module of a crate and what it imports.
fn graph(c: &Crate) -> BTreeMap<String, BTreeSet<String>> {
    let files = rust_files(&c.src);
    let modules: BTreeSet<String> = files.iter().map(|f| module_of(&c.src, f)).filter(|m| !m.is_empty()).collect();
    let mut g = BTreeMap::new();
    for f in &files {
        let me = module_of(&c.src, f);
        if me.is_empty() || me == "main" {
            continue;
        }
        let code = code_only(&std::fs::read_to_string(f).unwrap());
        let is_mod_rs = f.file_name().is_some_and(|n| n == "mod.rs");
        g.insert(me.clone(), imports(&code, &me, is_mod_rs, &modules));
    }
    g
}

fn top(m: &str) -> &str {
    m.split("::").next().unwrap()
}

fn find_cycle(g: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match state.get(n) {
            Some(1) => {
                let i = path.iter().position(|p| p == n).unwrap();
                let mut cycle = path[i..].to_vec();
                cycle.push(n.to_string());
                return Some(cycle);
            }
            Some(2) => return None,
            _ => {}
        }
        state.insert(n.to_string(), 1);
        path.push(n.to_string());
        for m in g.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, g, state, path) {
                return Some(c);
            }
        }
        path.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    g.keys().find_map(|n| visit(n, g, &mut state, &mut Vec::new()))
}

fn crates() -> [Crate; 2] {
    [
        Crate { name: "ringbench-backends", src: root().join("backends/src"), layers: BACKEND_LAYERS },
        Crate { name: "ringbench", src: root().join("src"), layers: TOOL_LAYERS },
    ]
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    for c in crates() {
        let g = graph(&c);
        assert!(g.len() > 5, "{}: found only {:?}", c.name, g.keys());
        if let Some(cycle) = find_cycle(&g) {
            panic!("{}: import cycle {}", c.name, cycle.join(" -> "));
        }
    }
}

#[test]
fn dependencies_point_down_the_layers() {
    for c in crates() {
        let rank = |m: &str| c.layers.iter().position(|l| l.contains(&top(m)));
        for (m, deps) in graph(&c) {
            let Some(r) = rank(&m) else {
                // lib.rs re-exports; every other module must have a layer.
                assert_eq!(m, "lib", "{}: module {m} is in no layer of tests/architecture.rs", c.name);
                continue;
            };
            for d in deps.iter().filter(|d| top(d) != top(&m)) {
                let rd = rank(d).unwrap_or_else(|| panic!("{}: {d} is in no layer", c.name));
                assert!(rd <= r, "{}: {m} (layer {r}) imports {d} (layer {rd}), which is above it", c.name);
                assert!(
                    !(BACKENDS.contains(&top(&m)) && BACKENDS.contains(&top(d)) && c.name == "ringbench-backends"),
                    "backend {m} imports another backend, {d}"
                );
            }
        }
    }
}

#[test]
fn only_the_entry_point_imports_the_command_line() {
    let c = &crates()[1];
    for (m, deps) in graph(c) {
        if deps.contains("cli") {
            assert_eq!(m, "app", "{m} imports the command line");
        }
    }
}

#[test]
fn no_source_file_is_over_600_lines() {
    for dir in ["backends/src", "src", "tests", "bench"] {
        for f in rust_files(&root().join(dir)) {
            let n = std::fs::read_to_string(&f).unwrap().lines().count();
            assert!(n <= MAX_LINES, "{} has {n} lines (at most {MAX_LINES})", f.display());
        }
    }
}

/// The deepest block nesting inside any function of `code`, with its name: a function's
/// body is level 0, each `{` inside it one more.
fn deepest(code: &str) -> Vec<(String, usize)> {
    let mut out = Vec::new();
    let mut depth = 0usize;
    // (name, depth of its body's brace, deepest seen)
    let mut open: Vec<(String, usize, usize)> = Vec::new();
    let mut pending: Option<String> = None;
    let mut word = String::new();
    let mut last_word = String::new();
    for ch in code.chars() {
        if ch.is_alphanumeric() || ch == '_' {
            word.push(ch);
            continue;
        }
        if !word.is_empty() {
            if last_word == "fn" {
                pending = Some(word.clone());
            }
            last_word = std::mem::take(&mut word);
        }
        match ch {
            '{' => {
                depth += 1;
                if let Some(name) = pending.take() {
                    open.push((name, depth, 0));
                } else if let Some(f) = open.last_mut() {
                    f.2 = f.2.max(depth - f.1);
                }
            }
            '}' => {
                if open.last().is_some_and(|f| f.1 == depth) {
                    let (name, _, d) = open.pop().unwrap();
                    out.push((name, d));
                }
                depth = depth.saturating_sub(1);
            }
            ';' => pending = None,
            _ => {}
        }
    }
    out
}

#[test]
fn no_function_nests_deeper_than_five_levels() {
    for dir in ["backends/src", "src", "tests", "bench"] {
        for f in rust_files(&root().join(dir)) {
            let code = code_only(&std::fs::read_to_string(&f).unwrap());
            for (name, d) in deepest(&code) {
                assert!(d <= MAX_NESTING, "{}: fn {name} nests {d} levels (at most {MAX_NESTING})", f.display());
            }
        }
    }
}

#[test]
fn the_checks_see_what_they_check() {
    let code = code_only("fn f() { if a { if b { if c { if d { if e { x } } } } } } // { {\nfn g() { \"{{{\" }");
    assert_eq!(deepest(&code), [("f".to_string(), 5), ("g".to_string(), 0)]);
    let mods: BTreeSet<String> = ["a", "a::b", "c"].map(String::from).into();
    let i = imports("use crate::{a::b::X, c}; use super::b::Y;", "a::d", false, &mods);
    assert_eq!(i, ["a::b", "c"].map(String::from).into());
    let g: BTreeMap<String, BTreeSet<String>> =
        [("x".to_string(), ["y".to_string()].into()), ("y".to_string(), ["x".to_string()].into())].into();
    assert!(find_cycle(&g).is_some());
}
