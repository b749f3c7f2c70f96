//! The drafted contracts as TOML a person reviews: one `[[tool]]` per operation, guesses marked.

use std::fmt::Write;

use serde_json::Value;

use super::spec::Docs;
use super::{Draft, Options};

/// The whole `PREFIX.toml`.
pub(super) fn toml(docs: &Docs, opts: &Options, host: &str, tools: &[Draft]) -> String {
    let file = docs
        .main()
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Drafted by `toolgate contracts import` from {file}.\n\
         # Review before deploying: lines marked \"guess\" are defaults from the HTTP method, and\n\
         # every object of the schemas in schemas/{}/ is closed (unknown fields refused) unless the\n\
         # spec says otherwise.",
        opts.prefix
    );
    for t in tools {
        out.push('\n');
        tool(&mut out, opts, host, t);
    }
    out
}

/// One `[[tool]]`: the guesses from the method marked, then what the spec says.
pub(super) fn tool(out: &mut String, opts: &Options, host: &str, t: &Draft) {
    let (side_effects, risk, mode) = match t.method.as_str() {
        "GET" | "HEAD" | "OPTIONS" => ("none", "low", "auto"),
        "DELETE" => ("irreversible", "high", "approve"),
        _ => ("reversible", "medium", "approve"),
    };
    let guess = format!("guess from {}: review", t.method);
    let description = if t.summary.is_empty() {
        t.operation_id.clone()
    } else {
        t.summary.clone()
    };
    head(
        out,
        &format!("{}.{}", opts.prefix, t.name),
        opts.owner.as_deref(),
        &description,
    );
    let _ = writeln!(out, "risk = {}  # {guess}", quote(risk));
    let undo = if side_effects == "reversible" {
        " (no undo declared yet: add rollback)"
    } else {
        ""
    };
    let _ = writeln!(
        out,
        "side_effects = {}  # {guess}{undo}",
        quote(side_effects)
    );
    let _ = writeln!(out, "mode = {}  # {guess}", quote(mode));
    let _ = writeln!(out, "host = {}", quote(host));
    let _ = writeln!(out, "method = {}", quote(&t.method));
    let _ = writeln!(out, "path = {}", quote(&t.path));
    // A parameter of any string needs no type.
    let types: Vec<String> = t
        .path_types
        .iter()
        .filter(|(_, schema)| *schema != serde_json::json!({"type": "string"}))
        .map(|(n, schema)| format!("{} = {}", key(n), inline_toml(schema)))
        .collect();
    if !types.is_empty() {
        let _ = writeln!(out, "path_params = {{ {} }}", types.join(", "));
    }
    inputs(out, opts, t);
    if side_effects != "none" {
        idempotency(out, t);
    }
    credential(out, &opts.credentials);
    let _ = writeln!(out, "summary = {}", quote(&summary(&description, t)));
    if !t.keep.is_empty() {
        let keep: Vec<String> = t.keep.iter().map(|k| quote(k)).collect();
        let _ = writeln!(out, "response = {{ keep = [{}] }}", keep.join(", "));
    }
}

/// A tool's first lines: `[[tool]]`, its name, version, owner (a placeholder when none is
/// given) and description.
pub(super) fn head(out: &mut String, name: &str, owner: Option<&str>, description: &str) {
    let _ = writeln!(out, "[[tool]]");
    let _ = writeln!(out, "name = {}", quote(name));
    let _ = writeln!(out, "version = 1");
    match owner {
        Some(owner) => {
            let _ = writeln!(out, "owner = {}", quote(owner));
        }
        None => {
            let _ = writeln!(out, "# owner = \"…\"  # who answers for this tool: set it");
        }
    }
    let _ = writeln!(out, "description = {}", quote(description));
}

/// `credential = { ENV = "NAME", … }`, in environment order; nothing when none is given.
pub(super) fn credential(out: &mut String, credentials: &[(String, String)]) {
    if credentials.is_empty() {
        return;
    }
    let mut creds: Vec<&(String, String)> = credentials.iter().collect();
    creds.sort();
    let pairs: Vec<String> = creds
        .iter()
        .map(|(env, name)| format!("{} = {}", key(env), quote(name)))
        .collect();
    let _ = writeln!(out, "credential = {{ {} }}", pairs.join(", "));
}

/// `body` and `query_schema`.
fn inputs(out: &mut String, opts: &Options, t: &Draft) {
    let schemas = format!("schemas/{}", opts.prefix);
    match &t.body {
        Some((format, Some(file))) => {
            let _ = writeln!(
                out,
                "body = {{ format = {}, schema = {} }}",
                quote(format),
                quote(&format!("{schemas}/{file}"))
            );
        }
        Some((format, None)) => {
            let _ = writeln!(
                out,
                "body = {{ format = {} }}  # the spec gives no schema: describe the body",
                quote(format)
            );
        }
        None => {}
    }
    if let Some(file) = &t.query {
        let _ = writeln!(
            out,
            "query_schema = {}",
            quote(&format!("{schemas}/{file}"))
        );
    }
}

/// How a write is made to run once: by the client's key where the spec declares one.
fn idempotency(out: &mut String, t: &Draft) {
    if t.idempotency_key {
        let _ = writeln!(
            out,
            "idempotency = \"key\"  # the spec declares an Idempotency-Key header"
        );
    } else {
        let _ = writeln!(
            out,
            "idempotency = \"payload\"  # no Idempotency-Key header is declared: identical calls within 10m are one"
        );
    }
}

/// What approvers read: the spec's summary and the path parameters' values.
fn summary(description: &str, t: &Draft) -> String {
    let params: Vec<String> = t
        .path_types
        .iter()
        .map(|(n, _)| format!("{n} {{params.{n}}}"))
        .collect();
    if params.is_empty() {
        description.to_string()
    } else {
        format!("{description}: {}", params.join(", "))
    }
}

/// A JSON Schema as a TOML inline value (TOML has no null: a `null` is left out).
fn inline_toml(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => quote(s),
        Value::Array(items) => {
            let items: Vec<String> = items
                .iter()
                .filter(|i| !i.is_null())
                .map(inline_toml)
                .collect();
            format!("[{}]", items.join(", "))
        }
        Value::Object(m) if m.is_empty() => "{}".into(),
        Value::Object(m) => {
            let fields: Vec<String> = m
                .iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| format!("{} = {}", key(k), inline_toml(v)))
                .collect();
            format!("{{ {} }}", fields.join(", "))
        }
    }
}

/// A TOML basic string.
pub(super) fn quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A TOML key: bare when it can be.
fn key(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        s.to_string()
    } else {
        quote(s)
    }
}
