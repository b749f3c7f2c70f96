//! The crate's shape, checked: a top-level module of `src/` imports (`crate::x`, `crate::{x, y}`,
//! and the root's re-exports such as `crate::App`, which count as their module) only modules
//! of a lower layer, nothing but the store touches sled, and no function outside tests is
//! longer than 100 lines.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Layers from the bottom. A module may import modules of lower layers only.
const LAYERS: &[&[&str]] = &[
    // helpers that import nothing of the crate
    &["base"],
    // errors, stored records, start-up configuration; leaves with no crate imports
    &[
        "error", "model", "config", "logging", "metrics", "ca", "mcp",
    ],
    // storage (the interface and its implementations), policies, the upstream client, the
    // admin API's client (for the command line)
    &["store", "policy", "upstream", "client"],
    // the demo's sandbox of the example APIs: an HTTPS server reached like any upstream
    &["sandbox"],
    // what sits on storage and policy: the audit log, the policy phases, limits,
    // notifications, connection caps
    &["audit", "checks", "limits", "notify", "guard", "import"],
    // services that own state (kill switches, the policy in force, sessions, locks, waiters),
    // and the rollback ledger (redacted through the audit's redactor)
    &["services", "ledger"],
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

const MAX_LINES: usize = 100;

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
        let t = line.trim_start();
        let t = t
            .strip_prefix("pub(crate) ")
            .or_else(|| t.strip_prefix("pub(super) "))
            .or_else(|| t.strip_prefix("pub "))
            .unwrap_or(t);
        let t = t.strip_prefix("async ").unwrap_or(t);
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
    let lines = ["#[cfg(test)]", "fn x() { crate::cli::main() }"];
    assert!(code_lines(&lines.join("\n")).is_empty());
}
