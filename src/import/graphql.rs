//! `toolgate contracts graphql`: contracts drafted from a GraphQL schema (SDL) for chosen root
//! fields (`--field mutation.createIssue`). Each field becomes a `[[tool]]` with
//! `graphql = "OPERATION.FIELD"` and, when it takes arguments, the closed JSON Schema of its
//! arguments as one object (after the request's variables are put in, as the gateway checks
//! them). Named input types, enums and custom scalars live under `$defs` and are referenced by
//! `$ref`, so recursive input objects end. A query is drafted as a read; a mutation gets the most
//! cautious defaults (irreversible, held for approval, high risk) for a reviewer to loosen. The
//! output is a pure function of the SDL and the flags.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::PathBuf;

use serde_json::{json, Map, Value};

use crate::graphql::OperationType;

use super::render::{self, quote};
use super::sdl::{Field, InputValue, Sdl, TypeDef};
use super::{schema_text, summary_of, ImportError, Imported};
use crate::graphql::TypeRef as Ty;

/// What to draft and how.
#[derive(Debug, Clone, Default)]
pub struct GraphqlOptions {
    /// The SDL file (GitHub's is `schema.graphql` of the npm package `@octokit/graphql-schema`).
    pub sdl: PathBuf,
    /// `OPERATION.FIELD`, as the contracts name them.
    pub fields: Vec<String>,
    pub host: String,
    /// The endpoint's path (`/graphql`).
    pub path: String,
    /// Tool names are `PREFIX.graphql.FIELD`; default from the host (`api.github.com` → `github`).
    pub prefix: Option<String>,
    /// `(environment, credential name)`.
    pub credentials: Vec<(String, String)>,
    pub owner: Option<String>,
    pub max_bytes: u64,
}

/// What a run drafted: the files are `STEM.toml` and `schemas/STEM/FIELD.json`, where the stem
/// is `PREFIX-graphql` (as `policies/github-graphql.toml` is named).
#[derive(Debug)]
pub struct Drafted {
    pub stem: String,
    pub imported: Imported,
}

/// One chosen field, found in the SDL.
struct Chosen<'a> {
    op: OperationType,
    root: &'a str,
    field: &'a Field,
    /// Its schema file (under `schemas/STEM/`), when it takes arguments.
    file: Option<String>,
}

/// Drafts the chosen fields. Nothing is written here (see [`super::write`]).
pub fn draft(opts: &GraphqlOptions) -> Result<Drafted, ImportError> {
    let prefix = match &opts.prefix {
        Some(p) => p.clone(),
        None => host_prefix(&opts.host)?,
    };
    if prefix.is_empty()
        || !prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(ImportError::Selection(format!(
            "--prefix {prefix:?} must be letters, digits, '_' or '-' (it starts the tool names and names the files)"
        )));
    }
    endpoint(&opts.host, &opts.path)?;
    let wanted = wanted_fields(&opts.fields)?;
    let sdl = read(opts)?;
    let stem = format!("{prefix}-graphql");
    let mut imported = Imported::default();
    let mut chosen = Vec::new();
    for (op, name) in &wanted {
        let (root, field) = find(&sdl, *op, name)?;
        let file = if field.arguments.is_empty() {
            None
        } else {
            let schema = arguments_schema(&sdl, *op, root, field, &file_label(opts))
                .map_err(|why| ImportError::Selection(format!("{}.{name}: {why}", op.as_str())))?;
            let file = format!("{name}.json");
            imported.schemas.push((file.clone(), schema_text(&schema)));
            Some(file)
        };
        chosen.push(Chosen {
            op: *op,
            root,
            field,
            file,
        });
    }
    imported.tools = chosen
        .iter()
        .map(|c| format!("{prefix}.graphql.{}", c.field.name))
        .collect();
    imported.toml = toml(opts, &prefix, &stem, &chosen);
    Ok(Drafted { stem, imported })
}

/// `api.github.com` → `github`: the host's name without `api.`/`www.`-like labels and its
/// top-level domain.
fn host_prefix(host: &str) -> Result<String, ImportError> {
    let name = host.split(':').next().unwrap_or("").to_ascii_lowercase();
    let mut labels: Vec<&str> = name.split('.').filter(|l| !l.is_empty()).collect();
    if labels.len() > 1 {
        labels.pop();
    }
    labels.retain(|l| !matches!(*l, "api" | "www" | "graphql" | "gql"));
    let last = labels.last().copied().unwrap_or("");
    let prefix: String = last
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if labels.is_empty() || !prefix.chars().any(|c| c.is_ascii_alphanumeric()) {
        return Err(ImportError::Selection(format!(
            "no tool name prefix can be made from host {host:?}: give one with --prefix"
        )));
    }
    Ok(prefix)
}

/// The host alone and a literal path, as a GraphQL contract takes them.
fn endpoint(host: &str, path: &str) -> Result<(), ImportError> {
    let refuse = |m: String| Err(ImportError::Selection(m));
    if host.is_empty() || host.contains("://") || host.contains('/') {
        return refuse(format!(
            "--host {host:?}: give the API's host alone (for example api.github.com)"
        ));
    }
    let template = crate::policy::PathTemplate::parse(path)
        .map_err(|e| ImportError::Selection(format!("--path {path:?}: {e}")))?;
    if template.params().next().is_some() {
        return refuse(format!(
            "--path {path:?}: a GraphQL endpoint's path is literal (such as /graphql): remove the {{parameters}}"
        ));
    }
    Ok(())
}

/// The `--field`s as (operation type, field name), each once, in the order given.
fn wanted_fields(fields: &[String]) -> Result<Vec<(OperationType, String)>, ImportError> {
    let refuse = |m: String| Err(ImportError::Selection(m));
    if fields.is_empty() {
        return refuse(
            "choose fields with --field OPERATION.FIELD (for example --field mutation.createIssue)"
                .into(),
        );
    }
    let mut out: Vec<(OperationType, String)> = Vec::new();
    for text in fields {
        let (op, name) = match crate::graphql::parse_label(text) {
            Ok(label) => label,
            Err(why) if why.starts_with("is not") => {
                return refuse(format!("--field {text:?} {why}"))
            }
            Err(why) => return refuse(format!("--field {text:?}: {why}")),
        };
        let name = name.as_str();
        if name.starts_with("__") {
            return refuse(format!(
                "--field {text:?}: GraphQL's own fields are not in the SDL; write the contract for query.__schema or query.__type by hand"
            ));
        }
        if let Some((other, _)) = out.iter().find(|(o, n)| n == name && *o != op) {
            return refuse(format!(
                "--field {text:?} and {}.{name} would both be the tool …graphql.{name}: draft them in two runs with different --prefix",
                other.as_str()
            ));
        }
        if !out.iter().any(|(o, n)| *o == op && n == name) {
            out.push((op, name.to_string()));
        }
    }
    Ok(out)
}

/// Reads and parses the SDL file, bounded by `max_bytes`.
fn read(opts: &GraphqlOptions) -> Result<Sdl, ImportError> {
    let path = &opts.sdl;
    let read_err = |message: String| ImportError::Read {
        path: path.clone(),
        message,
    };
    let size = std::fs::metadata(path)
        .map_err(|e| read_err(e.to_string()))?
        .len();
    if size > opts.max_bytes {
        return Err(read_err(format!(
            "it is larger than {} bytes; raise --max-schema-bytes if it is trusted",
            opts.max_bytes
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|e| read_err(e.to_string()))?;
    Sdl::parse(&text).map_err(|message| ImportError::Sdl {
        path: path.clone(),
        message,
    })
}

/// The file's name, for the schemas' `$comment`.
fn file_label(opts: &GraphqlOptions) -> String {
    opts.sdl
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The root type of `op` and its field `name`.
fn find<'a>(
    sdl: &'a Sdl,
    op: OperationType,
    name: &str,
) -> Result<(&'a str, &'a Field), ImportError> {
    let refuse = |m: String| Err(ImportError::Selection(m));
    let what = format!("{}.{name}", op.as_str());
    let Some(root) = sdl.root(op) else {
        return refuse(format!(
            "--field {what}: the SDL has no {} type (neither schema {{ {}: … }} nor a type {})",
            op.as_str(),
            op.as_str(),
            default_root(op)
        ));
    };
    let Some(TypeDef::Object { fields }) = sdl.types.get(root) else {
        return refuse(format!(
            "--field {what}: the schema's {} type {root} is not defined as an object type",
            op.as_str()
        ));
    };
    match fields.iter().find(|f| f.name == name) {
        Some(f) => Ok((root, f)),
        None => {
            let near = nearest(name, fields.iter().map(|f| f.name.as_str()));
            let hint = match near {
                Some(n) => format!(" (did you mean {}.{n}?)", op.as_str()),
                None => String::new(),
            };
            refuse(format!(
                "--field {what}: {root} has no field {name}{hint}; field names are case-sensitive"
            ))
        }
    }
}

fn default_root(op: OperationType) -> &'static str {
    match op {
        OperationType::Query => "Query",
        OperationType::Mutation => "Mutation",
        OperationType::Subscription => "Subscription",
    }
}

/// The closest name by edit distance (case ignored), if it is close.
fn nearest<'a>(name: &str, names: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let want = name.to_ascii_lowercase();
    names
        .map(|n| (distance(&want, &n.to_ascii_lowercase()), n))
        .filter(|(d, _)| *d <= 2.max(want.len() / 4))
        .min()
        .map(|(_, n)| n)
}

/// Levenshtein distance.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let here = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(here + 1);
            prev = here;
        }
    }
    row[b.len()]
}

/// The JSON Schema of a field's arguments: one closed object, an argument a property.
fn arguments_schema(
    sdl: &Sdl,
    op: OperationType,
    root: &str,
    field: &Field,
    file: &str,
) -> Result<Value, String> {
    let mut b = Builder {
        sdl,
        defs: BTreeMap::new(),
    };
    let (properties, required) = b.members(&field.arguments, "argument", false)?;
    let signature: Vec<String> = field
        .arguments
        .iter()
        .map(|a| match &a.default {
            Some(d) => format!("{}: {} = {d}", a.name, a.ty.show()),
            None => format!("{}: {}", a.name, a.ty.show()),
        })
        .collect();
    let mut schema = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$comment": format!(
            "Arguments of {root}.{}({}) in {file}, drafted by `toolgate contracts graphql` ({} field): review before deploying.",
            field.name,
            signature.join(", "),
            op.as_str()
        ),
        "type": "object",
        "additionalProperties": false,
        "properties": properties,
    });
    if !required.is_empty() {
        schema["required"] = Value::Array(required);
    }
    if let Some(d) = described(field.description.as_deref(), field.deprecated.as_deref()) {
        schema["description"] = Value::String(d);
    }
    if !b.defs.is_empty() {
        schema["$defs"] = Value::Object(b.defs.into_iter().collect());
    }
    Ok(schema)
}

/// A description with the deprecation noted.
fn described(description: Option<&str>, deprecated: Option<&str>) -> Option<String> {
    match (description, deprecated) {
        (d, Some(why)) => Some(format!(
            "{}Deprecated: {why}",
            d.map(|d| format!("{d}\n\n")).unwrap_or_default()
        )),
        (Some(d), None) => Some(d.to_string()),
        (None, None) => None,
    }
}

/// Builds schemas for one field, collecting the named types it reaches under `$defs`.
struct Builder<'a> {
    sdl: &'a Sdl,
    defs: BTreeMap<String, Value>,
}

impl Builder<'_> {
    /// Arguments or input fields as `properties` and `required`. In a `@oneOf` input object
    /// none may be null (exactly one is given, and not null).
    fn members(
        &mut self,
        values: &[InputValue],
        what: &str,
        one_of: bool,
    ) -> Result<(Map<String, Value>, Vec<Value>), String> {
        let mut properties = Map::new();
        let mut required = Vec::new();
        for v in values {
            let at = format!("{what} {}", v.name);
            let mut s = if one_of {
                self.non_null(&v.ty, &at)?
            } else {
                self.of(&v.ty, &at)?
            };
            annotate(&mut s, v);
            if properties.insert(v.name.clone(), s).is_some() {
                return Err(format!("{at} is declared twice"));
            }
            if v.required() && !one_of {
                required.push(Value::String(v.name.clone()));
            }
        }
        Ok((properties, required))
    }

    /// A value of type `ty`: null allowed unless it is non-null.
    fn of(&mut self, ty: &Ty, at: &str) -> Result<Value, String> {
        match ty {
            Ty::NonNull(inner) => self.non_null(inner, at),
            other => Ok(or_null(self.non_null(other, at)?)),
        }
    }

    fn non_null(&mut self, ty: &Ty, at: &str) -> Result<Value, String> {
        match ty {
            Ty::NonNull(inner) => self.non_null(inner, at),
            Ty::List(item) => Ok(json!({"type": "array", "items": self.of(item, at)?})),
            Ty::Named(name) => self.named(name, at),
        }
    }

    fn named(&mut self, name: &str, at: &str) -> Result<Value, String> {
        Ok(match name {
            "String" | "ID" => json!({"type": "string"}),
            "Int" => json!({"type": "integer", "minimum": i32::MIN, "maximum": i32::MAX}),
            "Float" => json!({"type": "number"}),
            "Boolean" => json!({"type": "boolean"}),
            _ => {
                self.define(name, at)?;
                json!({"$ref": format!("#/$defs/{name}")})
            }
        })
    }

    /// Puts the schema of a named type under `$defs`, once.
    fn define(&mut self, name: &str, at: &str) -> Result<(), String> {
        if self.defs.contains_key(name) {
            return Ok(());
        }
        let Some(def) = self.sdl.types.get(name) else {
            return Err(format!(
                "{at} has type {name}, which the SDL does not define"
            ));
        };
        let schema = match def {
            TypeDef::Scalar { description } => scalar(name, description.as_deref()),
            TypeDef::Enum {
                description,
                values,
            } => enumeration(description.as_deref(), values),
            TypeDef::Input {
                description,
                fields,
                one_of,
            } => {
                // Taken before its fields are read, so that a recursive input type ends here.
                self.defs.insert(name.to_string(), Value::Null);
                self.input(name, description.as_deref(), fields, *one_of)?
            }
            TypeDef::Object { .. } => {
                return Err(format!(
                "{at} has type {name}, an object type (output only): the SDL is not valid GraphQL"
            ))
            }
            TypeDef::Output(kind) => {
                return Err(format!(
                    "{at} has type {name}, an {kind} (output only): the SDL is not valid GraphQL"
                ))
            }
        };
        self.defs.insert(name.to_string(), schema);
        Ok(())
    }

    fn input(
        &mut self,
        name: &str,
        description: Option<&str>,
        fields: &[InputValue],
        one_of: bool,
    ) -> Result<Value, String> {
        let (properties, required) = self.members(fields, &format!("{name} field"), one_of)?;
        let mut schema = json!({
            "type": "object",
            "additionalProperties": false,
            "properties": properties,
        });
        if !required.is_empty() {
            schema["required"] = Value::Array(required);
        }
        let mut text = description.unwrap_or("").to_string();
        if one_of {
            schema["minProperties"] = json!(1);
            schema["maxProperties"] = json!(1);
            text = format!("{text}\n\n@oneOf: exactly one field, not null.")
                .trim()
                .to_string();
        }
        if !text.is_empty() {
            schema["description"] = Value::String(text);
        }
        Ok(schema)
    }
}

/// A custom scalar travels as a string (`DateTime`, `URI`, `GitObjectID`, `Base64String`…).
fn scalar(name: &str, description: Option<&str>) -> Value {
    let text = match description {
        Some(d) => format!("{name} (a custom scalar, sent as a string): {d}"),
        None => format!("{name} (a custom scalar, sent as a string)"),
    };
    json!({"type": "string", "description": text})
}

fn enumeration(description: Option<&str>, values: &[super::sdl::EnumValue]) -> Value {
    let names: Vec<Value> = values.iter().map(|v| json!(v.name)).collect();
    let mut lines: Vec<String> = description.map(str::to_string).into_iter().collect();
    for v in values {
        match (&v.description, &v.deprecated) {
            (_, Some(why)) => lines.push(format!("{}: deprecated: {why}", v.name)),
            (Some(d), None) => lines.push(format!("{}: {d}", v.name)),
            (None, None) => {}
        }
    }
    let mut schema = json!({"type": "string", "enum": names});
    if !lines.is_empty() {
        schema["description"] = Value::String(lines.join("\n"));
    }
    schema
}

/// Allows null beside what `schema` allows.
fn or_null(mut schema: Value) -> Value {
    if schema.get("$ref").is_none() {
        if let Some(Value::String(t)) = schema.get("type").cloned() {
            schema["type"] = json!([t, "null"]);
            return schema;
        }
    }
    json!({"anyOf": [schema, {"type": "null"}]})
}

/// An argument's or input field's description, deprecation and default, on its schema.
fn annotate(schema: &mut Value, v: &InputValue) {
    if let Some(d) = described(v.description.as_deref(), v.deprecated.as_deref()) {
        schema["description"] = Value::String(d);
    }
    if let Some(default) = &v.default {
        schema["default"] = default.clone();
    }
}

/// The whole `STEM.toml`.
fn toml(opts: &GraphqlOptions, prefix: &str, stem: &str, chosen: &[Chosen]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Drafted by `toolgate contracts graphql` from {}.\n\
         # Review before deploying: a query is drafted as a read (side_effects \"none\", mode \"auto\");\n\
         # a mutation gets the most cautious defaults (irreversible, held for approval, high risk) to\n\
         # loosen where the field allows. Every object of the schemas in schemas/{stem}/ is closed\n\
         # (unknown arguments and input fields refused).",
        file_label(opts)
    );
    for c in chosen {
        out.push('\n');
        tool(&mut out, opts, prefix, stem, c);
    }
    out
}

/// One `[[tool]]`.
fn tool(out: &mut String, opts: &GraphqlOptions, prefix: &str, stem: &str, c: &Chosen) {
    let f = c.field;
    let first = summary_of("", f.description.as_deref().unwrap_or(""));
    let description = if first.is_empty() {
        format!("GraphQL {} {}", c.op.as_str(), f.name)
    } else {
        first
    };
    render::head(
        out,
        &format!("{prefix}.graphql.{}", f.name),
        opts.owner.as_deref(),
        &description,
    );
    if let Some(why) = &f.deprecated {
        let _ = writeln!(
            out,
            "# {}.{} is deprecated: {}",
            c.root,
            f.name,
            one_line(why)
        );
    }
    effects(out, c.op);
    let _ = writeln!(out, "host = {}", quote(&opts.host));
    let _ = writeln!(out, "path = {}", quote(&opts.path));
    let _ = writeln!(
        out,
        "graphql = {}",
        quote(&format!("{}.{}", c.op.as_str(), f.name))
    );
    match &c.file {
        Some(file) => {
            let _ = writeln!(
                out,
                "arguments = {}",
                quote(&format!("schemas/{stem}/{file}"))
            );
        }
        None => {
            let _ = writeln!(
                out,
                "# {} takes no arguments: a contract without `arguments` allows none.",
                f.name
            );
        }
    }
    if c.op == OperationType::Mutation {
        let _ = writeln!(out, "idempotency = \"payload\"  # GraphQL clients send no Idempotency-Key: the same field with the same arguments within 10m is one call");
    }
    credentials(out, &opts.credentials);
    let _ = writeln!(out, "summary = {}", quote(&description));
    if c.op == OperationType::Mutation {
        let _ = writeln!(out, "rollback = {{ none = \"not reviewed: say how this mutation is undone, or why it cannot be\" }}");
    }
}

/// What a query or a mutation does, as far as a draft can tell.
fn effects(out: &mut String, op: OperationType) {
    if op == OperationType::Query {
        let _ = writeln!(out, "risk = \"low\"  # a query reads: review");
        let _ = writeln!(out, "side_effects = \"none\"");
        let _ = writeln!(out, "mode = \"auto\"");
        return;
    }
    let _ = writeln!(
        out,
        "# A mutation: these are the most cautious defaults, not what the field does. Review them\n\
         # and loosen side_effects, mode, risk and rollback to what it really does."
    );
    let _ = writeln!(out, "risk = \"high\"  # mutation default: review");
    let _ = writeln!(
        out,
        "side_effects = \"irreversible\"  # mutation default: review"
    );
    let _ = writeln!(out, "mode = \"approve\"  # mutation default: review");
}

fn credentials(out: &mut String, credentials: &[(String, String)]) {
    if credentials.is_empty() {
        let _ = writeln!(
            out,
            "# credential = {{ prod = \"…\" }}  # which credential each environment's agents use: set it"
        );
    }
    render::credential(out, credentials);
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
#[path = "graphql_tests.rs"]
mod tests;
