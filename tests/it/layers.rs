//! The crate's shape, checked: a top-level module of `src/` imports (`crate::x`, `crate::{x, y}`,
//! and the root's re-exports such as `crate::App`, which count as their module) only modules
//! of a lower layer, nothing but the store touches sled, no two files import each other through
//! any chain of `crate::`, `super::` or `self::` paths (submodules included; a module and its own
//! submodules excepted), and no function outside tests is longer than 80 lines (counted as
//! `../shared/tools/layers.py` counts them).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Layers from the bottom. A module may import modules of lower layers only.
const LAYERS: &[&[&str]] = &[
    // helpers that import nothing of the crate
    &["base", "telemetry"],
    // errors, stored records, start-up configuration; leaves with no crate imports (`tls`: the
    // certificates of toolgate's own listeners, reloaded when their files change)
    &[
        "error", "model", "config", "logging", "metrics", "ca", "mcp", "tls",
    ],
    // GraphQL as toolgate reads it (over the error codes): below the policy that names fields
    &["graphql"],
    // storage (the interface and its implementations), policies, the upstream client, the
    // admin API's client (for the command line)
    &["store", "policy", "upstream", "client"],
    // the demo's sandbox of the example APIs: an HTTPS server reached like any upstream
    &["sandbox"],
    // the person a call acts for: signed assertions verified against the policy's providers
    &["identity"],
    // what sits on storage and policy: the audit log, the policy phases, limits,
    // notifications, connection caps
    &["audit", "checks", "limits", "notify", "guard", "import"],
    // dry evaluation of a request (`toolgate test`, `explain`): the proxy's decisions over the
    // policy phases, without network or store
    &["verdict"],
    // services that own state (kill switches, the policy in force, sessions, locks, waiters),
    // and the rollback ledger (redacted through the audit's redactor)
    &["services", "ledger", "sink"],
    // the composition root that builds them all from the configuration
    &["app"],
    // the one commit routine (calls sent at once and approved proposals), and grants (what
    // they lend an agent on the request path, their ends)
    &["commit", "grants"],
    // approvals (proposals, their waiters, the commit)
    &["approval"],
    // the proxy and its request phases
    &["proxy"],
    // what acts through the proxy, or on the records
    &["rollback", "replay", "sweep", "mcp_pin"],
    // what start-up says: where everything is, published tokens in force
    &["orient"],
    // the admin listener
    &["admin"],
    // `toolgate demo`: the sandbox routed, the next steps
    &["demo"],
    // the command line
    &["cli"],
];

const MAX_LINES: usize = 80;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap();
    let top = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    top.trim_end_matches(".rs").to_string()
}

/// The lines of a file up to its first `#[cfg(test)]`: tests may import anything.
fn code_lines(text: &str) -> Vec<&str> {
    text.lines()
        .take_while(|l| !l.trim_start().starts_with("#[cfg(test)]"))
        .collect()
}

/// What the crate root re-exports, by the module that defines it: `crate::App` is a use of
/// `app` as much as `crate::app::App` is.
const REEXPORTS: &[(&str, &str)] = &[("App", "app"), ("StartError", "app"), ("Config", "config")];

/// The module a path segment after `crate::` names: a module, or a root re-export.
fn module_named(segment: &str) -> Option<String> {
    if segment.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Some(segment.to_string());
    }
    REEXPORTS
        .iter()
        .find(|(name, _)| *name == segment)
        .map(|(_, module)| module.to_string())
}

/// The modules a line names through `crate::` paths, grouped ones (`crate::{a, b::C}`) too.
fn crate_refs(line: &str) -> Vec<String> {
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut out = Vec::new();
    let mut rest = line;
    while let Some(i) = rest.find("crate::") {
        let after = &rest[i + "crate::".len()..];
        let segments: Vec<String> = match after.strip_prefix('{') {
            Some(group) => group
                .split('}')
                .next()
                .unwrap_or("")
                .split(',')
                .map(|part| ident(part.trim()))
                .collect(),
            None => vec![ident(after)],
        };
        out.extend(segments.iter().filter_map(|s| module_named(s)));
        rest = after;
    }
    out
}

/// Functions and their lengths in lines (from the `fn` line to its closing brace).
fn functions(lines: &[&str]) -> Vec<(String, usize)> {
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let t = without_visibility(line.trim_start());
        let t = t.strip_prefix("async ").unwrap_or(t).trim_start();
        let Some(sig) = t.strip_prefix("fn ") else {
            continue;
        };
        if line.trim_end().ends_with(';') {
            continue;
        }
        let name: String = sig
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        let (mut depth, mut started) = (0i64, false);
        let mut end = i;
        for (j, l) in lines.iter().enumerate().skip(i) {
            let code = strip_literals(l);
            depth += code.matches('{').count() as i64 - code.matches('}').count() as i64;
            started |= code.contains('{');
            end = j;
            if started && depth <= 0 {
                break;
            }
        }
        out.push((name, end - i + 1));
    }
    out
}

/// An item's text after its `pub`, `pub(crate)`, `pub(in path)`, if any.
fn without_visibility(t: &str) -> &str {
    let Some(rest) = t.strip_prefix("pub") else {
        return t;
    };
    let rest = match rest.strip_prefix('(') {
        Some(inner) => inner.split_once(')').map_or(rest, |(_, after)| after),
        None => rest,
    };
    if rest.starts_with(char::is_whitespace) {
        rest.trim_start()
    } else {
        t
    }
}

/// A line without string and char literals and without its `//` comment, for brace counting.
fn strip_literals(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                while let Some(d) = chars.next() {
                    if d == '\\' {
                        chars.next();
                    } else if d == '"' {
                        break;
                    }
                }
            }
            '\'' => {
                // A char literal ('{' or '\''); a lifetime has no closing quote soon after.
                let ahead: String = chars.clone().take(3).collect();
                if let Some(close) = ahead.find('\'').filter(|&i| i > 0) {
                    for _ in 0..=close {
                        chars.next();
                    }
                }
            }
            '/' if chars.peek() == Some(&'/') => break,
            c => out.push(c),
        }
    }
    out
}

/// A file's module path under `src/`: `proxy/mod.rs` is `proxy`, `proxy/mcp.rs` is `proxy::mcp`,
/// `lib.rs` the root (empty).
fn module_path(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    if parts == ["lib"] || parts == ["main"] {
        parts.clear();
    }
    parts
}

/// The paths a text names through `crate::`, `super::` and `self::` (groups `{a, b::c}` one
/// level deep), as segments from the crate root, seen from module `here`.
fn paths_from(here: &[String], text: &str) -> Vec<Vec<String>> {
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut out = Vec::new();
    for (at, _) in text.match_indices("::") {
        let before = &text[..at];
        let head = ["crate", "super", "self"]
            .into_iter()
            .find(|k| before.ends_with(k));
        let Some(head) = head else { continue };
        let start = at - head.len();
        let boundary = text[..start]
            .chars()
            .next_back()
            .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'));
        if !boundary {
            continue;
        }
        let mut base: Vec<String> = match head {
            "crate" => Vec::new(),
            "self" => here.to_vec(),
            _ => here[..here.len().saturating_sub(1)].to_vec(),
        };
        let mut rest = &text[at + 2..];
        while let Some(more) = rest.strip_prefix("super::") {
            base.pop();
            rest = more;
        }
        let mut prefix = base;
        loop {
            if let Some(group) = rest.strip_prefix('{') {
                let inner = group.split('}').next().unwrap_or("");
                for part in inner.split(',') {
                    let mut path = prefix.clone();
                    path.extend(part.trim().split("::").map(ident).filter(|s| !s.is_empty()));
                    out.push(path);
                }
                break;
            }
            let seg = ident(rest);
            if seg.is_empty() {
                out.push(prefix);
                break;
            }
            rest = &rest[seg.len()..];
            prefix.push(seg);
            match rest.strip_prefix("::") {
                Some(more) => rest = more,
                None => {
                    out.push(prefix);
                    break;
                }
            }
        }
    }
    out
}

/// The names of items declared `pub` (at any visibility) in a text, for `crate::App`-style
/// re-exports.
fn pub_items(text: &str) -> Vec<String> {
    let kinds = ["struct ", "enum ", "trait ", "type ", "fn "];
    text.lines()
        .filter_map(|l| {
            let t = l.trim_start();
            let rest = without_visibility(t);
            if rest.len() == t.len() {
                return None;
            }
            let after = kinds.iter().find_map(|k| rest.strip_prefix(k))?;
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            (!name.is_empty()).then_some(name)
        })
        .collect()
}

/// Import cycles between files: an edge for every path that resolves to another file (the
/// longest module prefix of the path, or the one file that declares a capitalised name), except
/// between a module and its own submodules. Each cycle once, as `a/b -> c -> a/b`.
fn file_cycles(src: &Path, files: &[PathBuf]) -> Vec<String> {
    let texts: BTreeMap<Vec<String>, String> = files
        .iter()
        .map(|f| {
            let text = std::fs::read_to_string(f).unwrap();
            let code = text.split("#[cfg(test)]").next().unwrap_or("").to_string();
            (module_path(src, f), code)
        })
        .collect();
    let mut declared: BTreeMap<String, BTreeSet<Vec<String>>> = BTreeMap::new();
    for (module, text) in &texts {
        for name in pub_items(text) {
            declared.entry(name).or_default().insert(module.clone());
        }
    }
    let resolve = |path: &[String]| -> Option<Vec<String>> {
        for n in (1..=path.len()).rev() {
            if texts.contains_key(&path[..n]) {
                return Some(path[..n].to_vec());
            }
        }
        let first = path.first()?;
        let owners = declared.get(first)?;
        (first.starts_with(char::is_uppercase) && owners.len() == 1)
            .then(|| owners.iter().next().cloned())
            .flatten()
    };
    let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for (module, text) in &texts {
        let targets = paths_from(module, text)
            .iter()
            .filter_map(|p| resolve(p))
            .filter(|t| !t.is_empty() && !t.starts_with(module) && !module.starts_with(t))
            .collect();
        edges.insert(module.clone(), targets);
    }
    let mut cycles = BTreeSet::new();
    let mut seen = BTreeSet::new();
    for start in edges.keys() {
        let mut stack = Vec::new();
        walk(start, &edges, &mut seen, &mut stack, &mut cycles);
    }
    cycles.into_iter().collect()
}

/// Depth-first from `at`, adding every cycle closed through the current `stack`.
fn walk(
    at: &Vec<String>,
    edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
    seen: &mut BTreeSet<Vec<String>>,
    stack: &mut Vec<Vec<String>>,
    cycles: &mut BTreeSet<String>,
) {
    if !seen.insert(at.clone()) {
        return;
    }
    stack.push(at.clone());
    for next in edges.get(at).into_iter().flatten() {
        if let Some(i) = stack.iter().position(|m| m == next) {
            let mut cycle = stack[i..].to_vec();
            let least = (0..cycle.len()).min_by_key(|&k| &cycle[k]).unwrap_or(0);
            cycle.rotate_left(least);
            cycle.push(cycle[0].clone());
            let names: Vec<String> = cycle.iter().map(|m| m.join("/")).collect();
            cycles.insert(names.join(" -> "));
        } else {
            walk(next, edges, seen, stack, cycles);
        }
    }
    stack.pop();
}

#[test]
fn modules_import_only_lower_layers_and_functions_stay_short() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let layer_of: BTreeMap<&str, usize> = LAYERS
        .iter()
        .enumerate()
        .flat_map(|(i, mods)| mods.iter().map(move |m| (*m, i)))
        .collect();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let modules: BTreeSet<String> = files.iter().map(|f| module_of(&src, f)).collect();
    let mut problems = Vec::new();
    for file in &files {
        let module = module_of(&src, file);
        let rel = file
            .strip_prefix(&src)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        let text = std::fs::read_to_string(file).unwrap();
        let lines = code_lines(&text);
        if module != "lib" && module != "main" {
            let Some(&mine) = layer_of.get(module.as_str()) else {
                problems.push(format!(
                    "{rel}: module {module} has no layer in tests/layers.rs"
                ));
                continue;
            };
            for (n, line) in lines.iter().enumerate() {
                for dep in crate_refs(line) {
                    if dep == module || !modules.contains(&dep) {
                        continue;
                    }
                    match layer_of.get(dep.as_str()) {
                        Some(&theirs) if theirs < mine => {}
                        _ => problems.push(format!(
                            "{rel}:{}: {module} imports {dep}, which is not in a lower layer",
                            n + 1
                        )),
                    }
                }
            }
        }
        // The database stays behind the storage interface.
        if module != "store" {
            for (n, line) in lines.iter().enumerate() {
                let code = line.split("//").next().unwrap_or("");
                if code.contains("sled::") || code.contains("use sled") {
                    problems.push(format!("{rel}:{}: sled outside store/", n + 1));
                }
            }
        }
        for (name, len) in functions(&lines) {
            if len > MAX_LINES {
                problems.push(format!(
                    "{rel}: fn {name} has {len} lines; split it below {MAX_LINES}"
                ));
            }
        }
    }
    for cycle in file_cycles(&src, &files) {
        problems.push(format!("files import each other: {cycle}"));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_checker_sees_imports_and_long_functions() {
    assert_eq!(
        crate_refs("use crate::store::{Store}; crate::base::now_ms()"),
        vec!["store", "base"]
    );
    assert_eq!(
        crate_refs("use crate::{audit, store::Store}; fn f(app: &crate::App, c: crate::Config)"),
        vec!["audit", "store", "app", "config"]
    );
    let body: Vec<String> = std::iter::once("fn long() {".to_string())
        .chain((0..120).map(|i| format!("    let x{i} = \"{{\";")))
        .chain(std::iter::once("}".to_string()))
        .collect();
    let lines: Vec<&str> = body.iter().map(String::as_str).collect();
    assert_eq!(functions(&lines), vec![("long".to_string(), 122)]);
    let lines = ["    pub(in crate::proxy) async fn short() {", "}"];
    assert_eq!(functions(&lines), vec![("short".to_string(), 2)]);
    let here = ["proxy".to_string(), "mcp".to_string()];
    let paths = paths_from(
        &here,
        "use super::request::{Call, x}; self::y::z; super::super::App",
    );
    let paths: Vec<String> = paths.iter().map(|p| p.join("::")).collect();
    assert_eq!(
        paths,
        [
            "proxy::request::Call",
            "proxy::request::x",
            "proxy::mcp::y::z",
            "App"
        ]
    );
    let lines = ["#[cfg(test)]", "fn x() { crate::cli::main() }"];
    assert!(code_lines(&lines.join("\n")).is_empty());
}

#[test]
fn the_checker_sees_cycles_between_submodules() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    std::fs::create_dir_all(src.join("a")).unwrap();
    let files = [
        ("lib.rs", "mod a;"),
        ("a/mod.rs", "mod b; mod c; use self::b::B;"),
        ("a/b.rs", "use super::c::C; pub struct B;"),
        (
            "a/c.rs",
            "pub struct C; fn f() -> crate::a::b::B { todo!() }",
        ),
    ];
    for (name, text) in files {
        std::fs::write(src.join(name), text).unwrap();
    }
    let paths: Vec<PathBuf> = files.iter().map(|(n, _)| src.join(n)).collect();
    assert_eq!(file_cycles(src, &paths), ["a/b -> a/c -> a/b"]);
    std::fs::write(src.join("a/c.rs"), "pub struct C;").unwrap();
    assert!(file_cycles(src, &paths).is_empty());
}
