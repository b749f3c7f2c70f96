//! `toolgate contracts import`: tool contracts drafted from an OpenAPI 3.0/3.1 description
//! (DESIGN section 14). Each chosen operation becomes a `[[tool]]` with its request body, query
//! string and path parameters described by self-contained, closed JSON Schemas, and defaults a
//! reviewer sees marked as guesses. The output is a pure function of the spec and the flags:
//! the same input writes the same bytes. `suggest.rs` drafts contracts from refused calls with
//! the same rendering; `graphql.rs` drafts GraphQL root fields from a schema (SDL, read by
//! `sdl.rs`) and writes them the same way.

pub mod graphql;
mod render;
mod sdl;
pub mod spec;
pub mod suggest;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

use spec::{At, Docs, Inliner};

/// Why an import was refused.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("cannot read {}: {message}", path.display())]
    Read { path: PathBuf, message: String },
    #[error("{} is not JSON or YAML: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("{} is not a GraphQL schema (SDL): {message}", path.display())]
    Sdl { path: PathBuf, message: String },
    #[error("{}: the spec is larger than {max} bytes (with the files its $refs name); raise --max-spec-bytes if it is trusted", path.display())]
    TooLarge { path: PathBuf, max: u64 },
    #[error("invalid spec: {at}: {message}")]
    Invalid { at: String, message: String },
    #[error("$ref {reference:?} at {at} cannot be resolved: {why}")]
    UnresolvedRef {
        at: String,
        reference: String,
        why: String,
    },
    #[error("{0}")]
    Selection(String),
    #[error("{} exists; pass --force to overwrite it", .0.display())]
    Exists(PathBuf),
    #[error("cannot write {}: {message}", path.display())]
    Write { path: PathBuf, message: String },
}

/// What to import and how.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub spec: PathBuf,
    /// Tool names start with `PREFIX.`; files are `PREFIX.toml` and `schemas/PREFIX/`.
    pub prefix: String,
    /// `METHOD PATH`, optionally `=NAME` to name the tool (without the prefix).
    pub operations: Vec<String>,
    pub operation_ids: Vec<String>,
    pub tags: Vec<String>,
    pub path_prefix: Option<String>,
    /// The host the tools name; default the spec's first server.
    pub host: Option<String>,
    /// `(environment, credential name)`.
    pub credentials: Vec<(String, String)>,
    pub owner: Option<String>,
    /// Query parameters and top-level body fields left out of every schema, whatever the spec
    /// says (Stripe's `expand`, which answers with objects another tool hides).
    pub omit_params: Vec<String>,
    pub max_spec_bytes: u64,
}

/// One operation the spec offers, for `--list`.
#[derive(Debug, Clone)]
pub struct Offered {
    pub method: String,
    pub path: String,
    pub operation_id: String,
    pub summary: String,
    pub tags: Vec<String>,
}

/// What an import made: the TOML text, the schema files (relative to `schemas/PREFIX/`), and
/// what a reviewer should know.
#[derive(Debug, Default)]
pub struct Imported {
    pub toml: String,
    pub schemas: Vec<(String, String)>,
    pub tools: Vec<String>,
    /// Object schemas closed (`additionalProperties: false`) where the spec said nothing.
    pub closed: usize,
    pub notes: Vec<String>,
}

impl Imported {
    /// The TOML with each schema file after it as comments, for printing instead of writing
    /// `FOLDER.toml` and `schemas/FOLDER/`.
    pub fn printable(&self, folder: &str) -> String {
        use std::fmt::Write;
        let mut out = self.toml.clone();
        for (file, text) in &self.schemas {
            let _ = writeln!(
                out,
                "\n# --- schemas/{folder}/{file} (written by --out) ---"
            );
            for line in text.lines() {
                let _ = writeln!(out, "# {line}");
            }
        }
        out
    }
}

const METHODS: &[&str] = &[
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// The operations of a spec, in path then method order.
pub fn list(spec: &Path, max_bytes: u64) -> Result<Vec<Offered>, ImportError> {
    let (mut docs, root) = Docs::open(spec, max_bytes)?;
    Ok(operations(&mut docs, &root)?
        .into_iter()
        .map(|op| op.offered)
        .collect())
}

/// An operation found in the spec.
struct Operation {
    offered: Offered,
    at: At,
    /// The path item's own location (its parameters apply to each operation).
    item: At,
}

fn operations(docs: &mut Docs, root: &At) -> Result<Vec<Operation>, ImportError> {
    let paths_at = root.child("paths");
    let paths = match docs.get(root)?.get("paths") {
        Some(Value::Object(p)) => p.clone(),
        Some(_) => return Err(spec::invalid(&paths_at, "paths must be an object")),
        None => Map::new(),
    };
    let mut out = Vec::new();
    for path in paths.keys() {
        let (item, item_at) = docs.deref(&paths_at.child(path))?;
        for method in METHODS {
            let Some(op) = item.get(*method) else {
                continue;
            };
            let at = item_at.child(method);
            if !op.is_object() {
                return Err(spec::invalid(&at, "an operation must be an object"));
            }
            let text = |k: &str| op.get(k).and_then(Value::as_str).unwrap_or("").to_string();
            let tags = op
                .get("tags")
                .and_then(Value::as_array)
                .map(|t| {
                    t.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default();
            out.push(Operation {
                offered: Offered {
                    method: method.to_ascii_uppercase(),
                    path: path.clone(),
                    operation_id: text("operationId"),
                    summary: summary_of(&text("summary"), &text("description")),
                    tags,
                },
                at,
                item: item_at.clone(),
            });
        }
    }
    Ok(out)
}

/// The operations the flags choose, each with the tool name (without prefix) it gets. An
/// operation named explicitly that the spec lacks is an error.
fn select(ops: Vec<Operation>, opts: &Options) -> Result<Vec<(Operation, String)>, ImportError> {
    let mut named: BTreeMap<(String, String), Option<String>> = BTreeMap::new();
    for text in &opts.operations {
        let (op, name) = match text.split_once('=') {
            Some((op, name)) => (op, Some(name.trim().to_string())),
            None => (text.as_str(), None),
        };
        let (method, path) = op.trim().split_once(' ').ok_or_else(|| {
            ImportError::Selection(format!(
                "--operation {text:?} is not 'METHOD PATH' (e.g. 'POST /v1/refunds')"
            ))
        })?;
        named.insert(
            (method.trim().to_ascii_uppercase(), path.trim().to_string()),
            name,
        );
    }
    for key in named.keys() {
        if !ops
            .iter()
            .any(|o| o.offered.method == key.0 && o.offered.path == key.1)
        {
            return Err(ImportError::Selection(format!(
                "operation {} {} is not in the spec (`--list` shows what it offers)",
                key.0, key.1
            )));
        }
    }
    for id in &opts.operation_ids {
        if !ops.iter().any(|o| &o.offered.operation_id == id) {
            return Err(ImportError::Selection(format!(
                "operationId {id:?} is not in the spec (`--list` shows what it offers)"
            )));
        }
    }
    for tag in &opts.tags {
        if !ops.iter().any(|o| o.offered.tags.contains(tag)) {
            return Err(ImportError::Selection(format!(
                "no operation of the spec has tag {tag:?}"
            )));
        }
    }
    let everything = opts.operations.is_empty()
        && opts.operation_ids.is_empty()
        && opts.tags.is_empty()
        && opts.path_prefix.is_none();
    if everything {
        return Err(ImportError::Selection(
            "choose operations with --operation, --operation-id, --tag or --path-prefix (`--list` shows them)".into(),
        ));
    }
    let mut out = Vec::new();
    let mut taken: BTreeMap<String, usize> = BTreeMap::new();
    for op in ops {
        let o = &op.offered;
        let given = named.get(&(o.method.clone(), o.path.clone()));
        let chosen = given.is_some()
            || opts.operation_ids.contains(&o.operation_id)
            || o.tags.iter().any(|t| opts.tags.contains(t))
            || opts
                .path_prefix
                .as_deref()
                .is_some_and(|p| o.path.starts_with(p));
        if !chosen {
            continue;
        }
        let mut name = match given.cloned().flatten() {
            Some(n) => n,
            None => readable_name(o),
        };
        let seen = taken.entry(name.clone()).or_insert(0);
        *seen += 1;
        if *seen > 1 {
            name = format!("{name}_{seen}");
        }
        out.push((op, name));
    }
    Ok(out)
}

/// `issues/create` → `issues.create`, `PostPaymentIntents` → `post_payment_intents`,
/// `git/delete-ref` → `git.delete_ref`; without an operationId, the method and path.
fn readable_name(o: &Offered) -> String {
    let source = if o.operation_id.is_empty() {
        format!("{} {}", o.method.to_ascii_lowercase(), o.path)
    } else {
        o.operation_id.clone()
    };
    let mut out = String::new();
    let mut prev_lower = false;
    for c in source.chars() {
        if c.is_ascii_uppercase() {
            if prev_lower {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
            prev_lower = false;
        } else if c.is_ascii_alphanumeric() {
            out.push(c);
            prev_lower = true;
        } else if c == '/' || c == '.' {
            out.push('.');
            prev_lower = false;
        } else {
            out.push('_');
            prev_lower = false;
        }
    }
    let parts: Vec<String> = out
        .split('.')
        .map(|p| {
            p.split('_')
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join("_")
        })
        .filter(|p| !p.is_empty())
        .collect();
    parts.join(".")
}

/// The spec's summary, else the first sentence of its description (HTML tags removed).
fn summary_of(summary: &str, description: &str) -> String {
    let one_line = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    if !summary.trim().is_empty() {
        return one_line(summary);
    }
    let mut text = String::new();
    let mut in_tag = false;
    for c in description.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => {
                in_tag = false;
                text.push(' ');
            }
            c if !in_tag => text.push(c),
            _ => {}
        }
    }
    let text = one_line(&text);
    let first = match text.find(". ") {
        Some(i) => &text[..=i],
        None => text.as_str(),
    };
    let first = first.trim_end_matches('.');
    first.chars().take(120).collect()
}

/// Imports the chosen operations.
pub fn import(opts: &Options) -> Result<Imported, ImportError> {
    if opts.prefix.is_empty()
        || !opts
            .prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(ImportError::Selection(format!(
            "--prefix {:?} must be letters, digits, '_' or '-' (it names a file and a folder)",
            opts.prefix
        )));
    }
    let (mut docs, root) = Docs::open(&opts.spec, opts.max_spec_bytes)?;
    let (host, base_path) = server(&mut docs, &root, opts.host.as_deref())?;
    let chosen = select(operations(&mut docs, &root)?, opts)?;
    let mut imported = Imported::default();
    let mut tools = Vec::new();
    for (op, name) in chosen {
        if let Some(mut t) = contract(&mut docs, &op, &name, opts, &mut imported)? {
            if !base_path.is_empty() {
                t.path = match t.path.as_str() {
                    "/" => base_path.clone(),
                    p => format!("{base_path}{p}"),
                };
            }
            tools.push(t);
        }
    }
    if tools.is_empty() {
        return Err(ImportError::Selection(format!(
            "none of the chosen operations can be imported: {}",
            imported.notes.join("; ")
        )));
    }
    imported.tools = tools
        .iter()
        .map(|t| format!("{}.{}", opts.prefix, t.name))
        .collect();
    imported.toml = render::toml(&docs, opts, &host, &tools);
    Ok(imported)
}

/// The host of `--host` or the first server, and the server URL's path (the operations' paths
/// are relative to it).
fn server(docs: &mut Docs, root: &At, host: Option<&str>) -> Result<(String, String), ImportError> {
    let first = docs.get(root)?.pointer("/servers/0").cloned();
    let url = first
        .as_ref()
        .and_then(|s| s.get("url"))
        .and_then(Value::as_str);
    let url = url.map(|u| {
        // Server variables take their defaults: `https://{region}.api.example.com`.
        let mut u = u.to_string();
        if let Some(Value::Object(vars)) = first.as_ref().and_then(|s| s.get("variables")) {
            for (name, var) in vars {
                if let Some(d) = var.get("default").and_then(Value::as_str) {
                    u = u.replace(&format!("{{{name}}}"), d);
                }
            }
        }
        u
    });
    let (server_host, base) = match &url {
        Some(u) => {
            let rest = u.split_once("://").map_or(u.as_str(), |(_, r)| r);
            let (h, p) = rest.split_once('/').unwrap_or((rest, ""));
            (Some(h.to_string()), p.trim_end_matches('/').to_string())
        }
        None => (None, String::new()),
    };
    let base = if base.is_empty() {
        base
    } else {
        format!("/{base}")
    };
    let host = match (host, server_host) {
        (Some(h), _) => h.to_string(),
        (None, Some(h)) if !h.is_empty() && !h.contains('{') => h,
        _ => {
            return Err(ImportError::Selection(
                "the spec names no usable server: give the API's host with --host".into(),
            ))
        }
    };
    Ok((host, base))
}

/// One operation's contract, before rendering.
pub(crate) struct Draft {
    pub name: String,
    pub method: String,
    pub path: String,
    pub summary: String,
    pub operation_id: String,
    pub body: Option<(&'static str, Option<String>)>,
    pub query: Option<String>,
    /// Each path parameter's schema, in the order of the path.
    pub path_types: Vec<(String, Value)>,
    pub idempotency_key: bool,
    pub keep: Vec<String>,
}

fn contract(
    docs: &mut Docs,
    op: &Operation,
    name: &str,
    opts: &Options,
    imported: &mut Imported,
) -> Result<Option<Draft>, ImportError> {
    let o = &op.offered;
    let path = match path_template(&o.path) {
        Ok(p) => p,
        Err(why) => {
            let what = format!("{} {}", o.method, o.path);
            imported.notes.push(format!("{what}: skipped: {why}"));
            return Ok(None);
        }
    };
    let params = typed_parameters(docs, op, opts)?;
    let query = params.query.map(|mut q| {
        let file = format!("{name}.query.json");
        imported.closed += finish_schema(&mut q, &[]);
        imported.schemas.push((file.clone(), schema_text(&q)));
        file
    });
    Ok(Some(Draft {
        name: name.to_string(),
        method: o.method.clone(),
        path_types: in_path_order(&path, params.path_types),
        path,
        summary: o.summary.clone(),
        operation_id: o.operation_id.clone(),
        body: body(docs, op, name, opts, imported)?,
        query,
        idempotency_key: params.idempotency_key,
        keep: keep(docs, op)?,
    }))
}

/// What an operation's parameters say about a call: the path parameters' schemas (as the spec
/// declares them), the query's schema (None: it takes no query) and whether it takes an
/// `Idempotency-Key` header.
struct Params {
    path_types: Vec<(String, Value)>,
    query: Option<Value>,
    idempotency_key: bool,
}

fn typed_parameters(
    docs: &mut Docs,
    op: &Operation,
    opts: &Options,
) -> Result<Params, ImportError> {
    let mut out = Params {
        path_types: Vec::new(),
        query: None,
        idempotency_key: false,
    };
    let mut query_props = Map::new();
    let mut query_required = Vec::new();
    let mut any_query = false;
    for (p, p_at) in &parameters(docs, op)? {
        let pname = p.get("name").and_then(Value::as_str).unwrap_or("");
        let schema = match p.get("schema") {
            Some(_) => Inliner::new(docs).schema(&p_at.child("schema"))?,
            None => json!({}),
        };
        match p.get("in").and_then(Value::as_str) {
            Some("path") => out.path_types.push((sanitize(pname), schema)),
            Some("query") if opts.omit_params.iter().any(|x| x == pname) => {
                // Still a query schema: one that refuses the omitted parameter.
                any_query = true;
            }
            Some("query") => {
                any_query = true;
                query_props.insert(pname.to_string(), schema);
                if p.get("required") == Some(&Value::Bool(true)) {
                    query_required.push(Value::String(pname.to_string()));
                }
            }
            Some("header") if pname.eq_ignore_ascii_case("idempotency-key") => {
                out.idempotency_key = true;
            }
            _ => {}
        }
    }
    if any_query {
        let mut q = json!({"type": "object", "properties": query_props});
        if !query_required.is_empty() {
            q["required"] = Value::Array(query_required);
        }
        out.query = Some(q);
    }
    Ok(out)
}

/// The path parameters' schemas in the order of the path, with "string" where the spec
/// declares no parameter.
fn in_path_order(path: &str, declared: Vec<(String, Value)>) -> Vec<(String, Value)> {
    let Ok(t) = crate::policy::PathTemplate::parse(path) else {
        return Vec::new();
    };
    t.params()
        .map(|name| {
            let ty = declared
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, t)| t.clone());
            (
                name.to_string(),
                ty.unwrap_or_else(|| json!({"type": "string"})),
            )
        })
        .collect()
}

/// The operation's parameters: the path item's, then the operation's (which win by name and
/// place), each dereferenced, in a stable order.
fn parameters(docs: &mut Docs, op: &Operation) -> Result<Vec<(Value, At)>, ImportError> {
    let mut by_key: BTreeMap<(String, String), (Value, At)> = BTreeMap::new();
    for base in [&op.item, &op.at] {
        let list_at = base.child("parameters");
        let list = match docs.get(base)?.get("parameters") {
            Some(Value::Array(l)) => l.len(),
            Some(_) => return Err(spec::invalid(&list_at, "parameters must be a list")),
            None => 0,
        };
        for i in 0..list {
            let (p, p_at) = docs.deref(&list_at.child(&i.to_string()))?;
            let (Some(name), Some(place)) = (
                p.get("name").and_then(Value::as_str),
                p.get("in").and_then(Value::as_str),
            ) else {
                return Err(spec::invalid(
                    &p_at,
                    "a parameter needs a \"name\" and an \"in\"",
                ));
            };
            by_key.insert((place.to_string(), name.to_string()), (p.clone(), p_at));
        }
    }
    Ok(by_key.into_values().collect())
}

/// The request body: JSON (any `…json` media type) or form-encoded, as the spec declares.
fn body(
    docs: &mut Docs,
    op: &Operation,
    name: &str,
    opts: &Options,
    imported: &mut Imported,
) -> Result<Option<(&'static str, Option<String>)>, ImportError> {
    let what = format!("{} {}", op.offered.method, op.offered.path);
    if docs.get(&op.at)?.get("requestBody").is_none() {
        return Ok(None);
    }
    if matches!(op.offered.method.as_str(), "GET" | "HEAD") {
        // Stripe declares (empty) form bodies on reads; no client sends one.
        imported.notes.push(format!(
            "{what}: its request body is left out: a {} sends none",
            op.offered.method
        ));
        return Ok(None);
    }
    let (rb, rb_at) = docs.deref(&op.at.child("requestBody"))?;
    let content = rb
        .get("content")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let json_type = content
        .keys()
        .find(|k| *k == "application/json")
        .or_else(|| content.keys().find(|k| k.contains("json")));
    let form_type = content
        .keys()
        .find(|k| *k == "application/x-www-form-urlencoded");
    let (format, media) = match (json_type, form_type) {
        (Some(m), _) => ("json", m.clone()),
        (None, Some(m)) => ("form", m.clone()),
        (None, None) => {
            imported.notes.push(format!(
                "{what}: request body {} is neither JSON nor form-encoded: the contract takes no body; describe it by hand",
                content.keys().cloned().collect::<Vec<_>>().join(", ")
            ));
            return Ok(None);
        }
    };
    let media_at = rb_at.child("content").child(&media);
    if content.get(&media).and_then(|m| m.get("schema")).is_none() {
        imported.notes.push(format!(
            "{what}: the spec gives no schema for its {media} body"
        ));
        return Ok(Some((format, None)));
    }
    let mut inliner = Inliner::new(docs);
    let mut schema = inliner.schema(&media_at.child("schema"))?;
    for c in inliner.cycles {
        imported.notes.push(format!(
            "{what}: cycle closed (deeper input refused) at {c}"
        ));
    }
    spec::drop_read_only(&mut schema);
    let file = format!("{name}.json");
    imported.closed += finish_schema(&mut schema, &opts.omit_params);
    imported.schemas.push((file.clone(), schema_text(&schema)));
    Ok(Some((format, Some(file))))
}

/// Removes omitted top-level fields, closes every object that says nothing of other keys (as
/// the policy loader would), and names the dialect. Returns how many objects it closed.
fn finish_schema(schema: &mut Value, omit: &[String]) -> usize {
    if let Some(obj) = schema.as_object_mut() {
        if let Some(Value::Object(props)) = obj.get_mut("properties") {
            props.retain(|k, _| !omit.contains(k));
        }
        if let Some(Value::Array(req)) = obj.get_mut("required") {
            req.retain(|r| !r.as_str().is_some_and(|r| omit.iter().any(|o| o == r)));
        }
    }
    let (closed, _open) = crate::policy::contract::close(schema);
    if let Some(obj) = schema.as_object_mut() {
        obj.insert(
            "$schema".into(),
            "https://json-schema.org/draft/2020-12/schema".into(),
        );
    }
    closed
}

/// Sorted keys, one-space indent, a final newline: the layout of the example schemas.
fn schema_text(schema: &Value) -> String {
    let mut out = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b" ");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
    // serde_json's map is ordered by key (no preserve_order feature): the output is sorted.
    let _ = serde::Serialize::serialize(schema, &mut ser);
    let mut text = String::from_utf8_lossy(&out).into_owned();
    text.push('\n');
    text
}

/// The response contract: the `id`-like fields of the first 2xx JSON answer the spec
/// describes as an object.
fn keep(docs: &mut Docs, op: &Operation) -> Result<Vec<String>, ImportError> {
    let responses = match docs.get(&op.at)?.get("responses") {
        Some(Value::Object(r)) => r.clone(),
        _ => return Ok(Vec::new()),
    };
    let Some(code) = responses.keys().find(|c| c.starts_with('2')) else {
        return Ok(Vec::new());
    };
    let (resp, resp_at) = docs.deref(&op.at.child("responses").child(code))?;
    let Some(content) = resp.get("content").and_then(Value::as_object) else {
        return Ok(Vec::new());
    };
    let Some(media) = content.keys().find(|k| k.contains("json")).cloned() else {
        return Ok(Vec::new());
    };
    if content.get(&media).and_then(|m| m.get("schema")).is_none() {
        return Ok(Vec::new());
    }
    let schema_at = resp_at.child("content").child(&media).child("schema");
    let (schema, _) = docs.deref(&schema_at)?;
    let mut keep: Vec<String> = schema
        .get("properties")
        .and_then(Value::as_object)
        .map(|p| {
            p.keys()
                .filter(|k| id_like(k))
                .map(|k| format!("/{k}"))
                .collect()
        })
        .unwrap_or_default();
    keep.sort();
    Ok(keep)
}

fn id_like(name: &str) -> bool {
    matches!(name, "id" | "number" | "object" | "node_id") || name.ends_with("_id")
}

/// A spec path as a toolgate template; parameter names other than letters, digits and `_`
/// become `_` (`{gist-id}` → `{gist_id}`). A parameter inside a segment cannot be matched.
fn path_template(path: &str) -> Result<String, String> {
    let mut out = Vec::new();
    for seg in path.trim_start_matches('/').split('/') {
        match seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            Some(name) if !name.contains(['{', '}']) => out.push(format!("{{{}}}", sanitize(name))),
            _ if seg.contains(['{', '}']) => {
                return Err(format!(
                    "segment {seg:?} mixes a parameter with text; toolgate matches whole segments"
                ))
            }
            _ => out.push(seg.to_string()),
        }
    }
    let template = format!("/{}", out.join("/"));
    crate::policy::PathTemplate::parse(&template)?;
    Ok(template)
}

fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Writes `DIR/PREFIX.toml` (unless `schemas_only`) and `DIR/schemas/PREFIX/…`. Nothing is
/// written when a file exists and `force` is off.
pub fn write(
    out: &Path,
    prefix: &str,
    imported: &Imported,
    force: bool,
    schemas_only: bool,
) -> Result<Vec<PathBuf>, ImportError> {
    let dir = out.join("schemas").join(prefix);
    let mut files: Vec<(PathBuf, &str)> = imported
        .schemas
        .iter()
        .map(|(name, text)| (dir.join(name), text.as_str()))
        .collect();
    if !schemas_only {
        files.insert(
            0,
            (out.join(format!("{prefix}.toml")), imported.toml.as_str()),
        );
    }
    if !force {
        if let Some((path, _)) = files.iter().find(|(p, _)| p.exists()) {
            return Err(ImportError::Exists(path.clone()));
        }
    }
    let write_err = |path: &Path, e: std::io::Error| ImportError::Write {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    std::fs::create_dir_all(&dir).map_err(|e| write_err(&dir, e))?;
    for (path, text) in &files {
        std::fs::write(path, text).map_err(|e| write_err(path, e))?;
    }
    Ok(files.into_iter().map(|(p, _)| p).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offered(method: &str, path: &str, id: &str) -> Offered {
        Offered {
            method: method.into(),
            path: path.into(),
            operation_id: id.into(),
            summary: String::new(),
            tags: Vec::new(),
        }
    }

    #[test]
    fn names_are_readable_forms_of_the_operation_id() {
        for (id, want) in [
            ("issues/create", "issues.create"),
            ("git/delete-ref", "git.delete_ref"),
            ("PostPaymentIntents", "post_payment_intents"),
            ("getURLForThing", "get_urlfor_thing"),
            ("SendMail", "send_mail"),
        ] {
            assert_eq!(readable_name(&offered("POST", "/x", id)), want, "{id}");
        }
        assert_eq!(
            readable_name(&offered("GET", "/v1/customers/{customer}", "")),
            "get.v1.customers.customer"
        );
    }

    #[test]
    fn summaries_come_from_the_summary_or_the_first_sentence() {
        assert_eq!(summary_of("  Create\n an issue ", "x"), "Create an issue");
        assert_eq!(
            summary_of(
                "",
                "<p>Creates a PaymentIntent object.</p>\n\n<p>After it…</p>"
            ),
            "Creates a PaymentIntent object"
        );
        assert_eq!(summary_of("", ""), "");
    }

    #[test]
    fn spec_paths_become_templates_or_are_skipped_with_a_reason() {
        assert_eq!(
            path_template("/gists/{gist-id}/star").unwrap(),
            "/gists/{gist_id}/star"
        );
        assert_eq!(path_template("/").unwrap(), "/");
        let why = path_template("/repos/{owner}/{repo}/compare/{base}...{head}").unwrap_err();
        assert!(why.contains("whole segments"), "{why}");
    }
}
