//! `toolgate contracts suggest`: contracts drafted from the calls agents were refused because
//! no contract matched them (DESIGN section 14). Calls are grouped by host, port, method and
//! path template: a path segment that looks like an id (a number, a UUID, a `cus_…`-style
//! prefixed id, long hex, a long opaque token) becomes a parameter; with an OpenAPI document the
//! spec's own templates win and its schemas describe the body and query. Without one, the body
//! and query schemas are inferred from the shapes the audit log recorded (types and keys, never
//! values), keys seen in every call required, every object closed. It suggests, never applies:
//! the output is TOML (and schema files) a person reviews and writes into the policies folder.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::PathBuf;

use serde::Serialize;
use serde_json::{json, Value};

use super::spec::Docs;
use super::{render, ImportError, Imported, Offered, Operation};
use crate::base::shape;
use crate::model::Unmatched;
use crate::policy::PathTemplate;

/// What to draft from and how to name it.
#[derive(Debug, Clone, Default)]
pub struct SuggestOptions {
    /// Tool names start with `PREFIX.`; `--out` writes `PREFIX.toml` and `schemas/PREFIX/`.
    pub prefix: String,
    /// An OpenAPI document whose templates and schemas win over the inferred ones.
    pub spec: Option<PathBuf>,
    pub max_spec_bytes: u64,
}

/// One drafted contract and the refused calls it would have admitted.
#[derive(Debug, Clone, Serialize)]
pub struct Group {
    pub tool: String,
    pub host: String,
    pub port: u16,
    pub method: String,
    pub template: String,
    pub calls: usize,
    /// Calls per agent.
    pub agents: BTreeMap<String, usize>,
    /// The spec's operationId when the spec described it; empty when inferred.
    pub operation_id: String,
    /// This tool's TOML, comments included.
    pub toml: String,
    /// Its schema files (relative to `schemas/PREFIX/`) and their text.
    pub schemas: Vec<(String, String)>,
}

/// Every drafted contract, and the whole file (`imported.toml`) with its schemas.
#[derive(Debug, Default)]
pub struct Suggested {
    pub groups: Vec<Group>,
    pub imported: Imported,
}

/// Drafts one contract per group of refused calls.
pub fn suggest(calls: &[Unmatched], opts: &SuggestOptions) -> Result<Suggested, ImportError> {
    let import_opts = super::Options {
        prefix: opts.prefix.clone(),
        max_spec_bytes: opts.max_spec_bytes,
        ..super::Options::default()
    };
    check_prefix(&opts.prefix)?;
    let mut spec = match &opts.spec {
        Some(path) => Some(SpecOps::open(path, opts.max_spec_bytes)?),
        None => None,
    };
    let mut groups: BTreeMap<Key, Vec<&Unmatched>> = BTreeMap::new();
    for call in calls {
        let key = match spec.as_ref().and_then(|s| s.find(call)) {
            Some(key) => key,
            None => match template_of(&call.path) {
                Some(template) => Key::of(call, template, None),
                None => continue,
            },
        };
        groups.entry(key).or_default().push(call);
    }
    let mut out = Suggested::default();
    let mut taken: BTreeMap<String, usize> = BTreeMap::new();
    for (key, members) in &groups {
        let group = draft(key, members, spec.as_mut(), &import_opts, &mut taken)?;
        out.imported.schemas.extend(group.schemas.clone());
        out.imported.tools.push(group.tool.clone());
        out.groups.push(group);
    }
    out.imported.toml = whole_file(calls.len(), &out.groups);
    Ok(out)
}

fn check_prefix(prefix: &str) -> Result<(), ImportError> {
    let ok = !prefix.is_empty()
        && prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    match ok {
        true => Ok(()),
        false => Err(ImportError::Selection(format!(
            "--prefix {prefix:?} must be letters, digits, '_' or '-' (it names a file and a folder)"
        ))),
    }
}

/// What calls are grouped by; `op` is the spec operation that describes them.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    host: String,
    port: u16,
    method: String,
    template: String,
    op: Option<usize>,
}

impl Key {
    fn of(call: &Unmatched, template: String, op: Option<usize>) -> Key {
        Key {
            host: call.host.clone(),
            port: call.port,
            method: call.method.clone(),
            template,
            op,
        }
    }
}

/// Whether a path segment looks like an id rather than a name: a number, a UUID, a prefixed id
/// (`cus_NffrFeUfNV2Hib`, `pi_3Mtw…`: a short lowercase prefix, `_`, then letters and digits
/// with a digit or a capital), long hex (12 or more, with a digit), or a long opaque token (20 or
/// more letters and digits, with both). Names (`customers`, `payment_intents`, `hello-world`,
/// `v1`) are not ids.
pub fn is_id(seg: &str) -> bool {
    let alnum = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric());
    let has_digit = |s: &str| s.bytes().any(|b| b.is_ascii_digit());
    let has_letter = |s: &str| s.bytes().any(|b| b.is_ascii_alphabetic());
    if !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()) {
        return true;
    }
    if is_uuid(seg) {
        return true;
    }
    if let Some((prefix, rest)) = seg.split_once('_') {
        let prefix_ok =
            (1..=8).contains(&prefix.len()) && prefix.bytes().all(|b| b.is_ascii_lowercase());
        let marked = has_digit(rest) || rest.bytes().any(|b| b.is_ascii_uppercase());
        if prefix_ok && alnum(rest) && marked {
            return true;
        }
    }
    let hex = seg.len() >= 12 && seg.bytes().all(|b| b.is_ascii_hexdigit()) && has_digit(seg);
    let opaque = seg.len() >= 20 && alnum(seg) && has_digit(seg) && has_letter(seg);
    hex || opaque
}

fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

/// A request path as a template: each id-like segment a parameter named after the segment
/// before it (`/v1/customers/cus_1` → `/v1/customers/{customer}`), `{id}` when none names it.
/// None when the path makes no template (an empty segment).
pub fn template_of(path: &str) -> Option<String> {
    if path == "/" {
        return Some("/".into());
    }
    let mut out = Vec::new();
    let mut used: BTreeMap<String, usize> = BTreeMap::new();
    let mut previous: Option<&str> = None;
    for seg in path.strip_prefix('/')?.split('/') {
        if is_id(seg) {
            let mut name = previous.map(singular).unwrap_or_else(|| "id".into());
            let n = used.entry(name.clone()).or_insert(0);
            *n += 1;
            if *n > 1 {
                name = format!("{name}_{n}");
            }
            out.push(format!("{{{name}}}"));
            previous = None;
        } else {
            out.push(seg.to_string());
            previous = Some(seg);
        }
    }
    let template = format!("/{}", out.join("/"));
    PathTemplate::parse(&template).ok().map(|_| template)
}

/// `customers` → `customer`, `entries` → `entry`, `addresses` → `address`, `check-runs` →
/// `check_run`: a parameter's name from the collection it is in.
fn singular(seg: &str) -> String {
    let s: String = seg
        .chars()
        .map(|c| match c.is_ascii_alphanumeric() {
            true => c.to_ascii_lowercase(),
            false => '_',
        })
        .collect();
    let s = if let Some(stem) = s.strip_suffix("ies") {
        format!("{stem}y")
    } else if s.ends_with("sses") || s.ends_with("xes") || s.ends_with("ches") {
        s[..s.len() - 2].to_string()
    } else if s.ends_with('s') && !s.ends_with("ss") {
        s[..s.len() - 1].to_string()
    } else {
        s
    };
    let s = s.trim_matches('_').to_string();
    match s.chars().next() {
        Some(c) if c.is_ascii_alphabetic() => s,
        _ => "id".into(),
    }
}

/// A spec's operations, as templates on its server's host.
struct SpecOps {
    docs: Docs,
    host: String,
    ops: Vec<(Operation, PathTemplate)>,
}

impl SpecOps {
    fn open(path: &std::path::Path, max: u64) -> Result<SpecOps, ImportError> {
        let (mut docs, root) = Docs::open(path, max)?;
        let (host, base) = super::server(&mut docs, &root, None)?;
        let mut ops = Vec::new();
        for op in super::operations(&mut docs, &root)? {
            let Ok(p) = super::path_template(&op.offered.path) else {
                continue;
            };
            let full = match p.as_str() {
                "/" if !base.is_empty() => base.clone(),
                p => format!("{base}{p}"),
            };
            if let Ok(t) = PathTemplate::parse(&full) {
                ops.push((op, t));
            }
        }
        Ok(SpecOps { docs, host, ops })
    }

    /// The spec operation that describes a call: its method, and the template that matches
    /// its path with the fewest parameters (a literal wins over a parameter).
    fn find(&self, call: &Unmatched) -> Option<Key> {
        if call.host != self.host {
            return None;
        }
        let (i, (_, t)) = self
            .ops
            .iter()
            .enumerate()
            .filter(|(_, (op, t))| {
                op.offered.method == call.method && t.matches(&call.path).is_some()
            })
            .min_by_key(|(_, (_, t))| t.params().count())?;
        Some(Key::of(call, t.as_str().to_string(), Some(i)))
    }
}

/// One group's contract: from the spec's operation, or inferred from the calls.
fn draft(
    key: &Key,
    calls: &[&Unmatched],
    spec: Option<&mut SpecOps>,
    opts: &super::Options,
    taken: &mut BTreeMap<String, usize>,
) -> Result<Group, ImportError> {
    let mut imported = Imported::default();
    let (name, draft, operation_id) = match (key.op, spec) {
        (Some(i), Some(spec)) => {
            let (op, template) = &spec.ops[i];
            let name = unique(super::readable_name(&op.offered), taken);
            let d = super::contract(&mut spec.docs, op, &name, opts, &mut imported)?;
            let d = d.map(|mut d| {
                d.path = template.as_str().to_string();
                d
            });
            (name, d, op.offered.operation_id.clone())
        }
        _ => {
            let offered = Offered {
                method: key.method.clone(),
                path: key.template.clone(),
                operation_id: String::new(),
                summary: String::new(),
                tags: Vec::new(),
            };
            let name = unique(super::readable_name(&offered), taken);
            let d = inferred(key, &name, calls, &mut imported);
            (name, Some(d), String::new())
        }
    };
    let Some(draft) = draft else {
        return Err(ImportError::Selection(imported.notes.join("; ")));
    };
    let mut agents: BTreeMap<String, usize> = BTreeMap::new();
    for c in calls {
        *agents.entry(c.agent.clone()).or_insert(0) += 1;
    }
    let mut toml = comments(calls.len(), &agents, &operation_id, &imported.notes);
    let host = crate::base::authority(&key.host, key.port);
    render::tool(&mut toml, opts, &host, &draft);
    Ok(Group {
        tool: format!("{}.{}", opts.prefix, name),
        host: key.host.clone(),
        port: key.port,
        method: key.method.clone(),
        template: key.template.clone(),
        calls: calls.len(),
        agents,
        operation_id,
        toml,
        schemas: imported.schemas,
    })
}

fn unique(name: String, taken: &mut BTreeMap<String, usize>) -> String {
    let seen = taken.entry(name.clone()).or_insert(0);
    *seen += 1;
    match *seen {
        1 => name,
        n => format!("{name}_{n}"),
    }
}

/// What a reviewer reads above a drafted tool: what it would have admitted, from where.
fn comments(
    calls: usize,
    agents: &BTreeMap<String, usize>,
    operation_id: &str,
    notes: &[String],
) -> String {
    let by: Vec<String> = agents.iter().map(|(a, n)| format!("{a} ({n})")).collect();
    let mut out = format!(
        "# Would have admitted {calls} refused call(s), by {}.\n",
        by.join(", ")
    );
    if !operation_id.is_empty() {
        let _ = writeln!(out, "# From the spec's operation {operation_id}.");
    }
    for note in notes {
        let _ = writeln!(out, "# {note}");
    }
    out
}

/// A contract for calls the spec does not describe: the template, and the body and query
/// schemas inferred from the shapes recorded.
fn inferred(key: &Key, name: &str, calls: &[&Unmatched], imported: &mut Imported) -> super::Draft {
    let path_types = PathTemplate::parse(&key.template)
        .map(|t| {
            t.params()
                .map(|p| (p.to_string(), json!({"type": "string"})))
                .collect()
        })
        .unwrap_or_default();
    let body = inferred_body(key, name, calls, imported);
    let queries: Vec<Option<&Value>> = calls.iter().map(|c| c.query_shape.as_ref()).collect();
    let query = inferred_schema(&queries).map(|mut schema| {
        let file = format!("{name}.query.json");
        super::finish_schema(&mut schema, &[]);
        imported.notes.push(format!(
            "query_schema inferred from {} calls: types only, keys seen in every call required, closed",
            calls.len()
        ));
        imported.schemas.push((file.clone(), super::schema_text(&schema)));
        file
    });
    super::Draft {
        name: name.to_string(),
        method: key.method.clone(),
        path: key.template.clone(),
        summary: format!(
            "{} {} (drafted from refused calls: say what it does)",
            key.method, key.template
        ),
        operation_id: String::new(),
        body,
        query,
        path_types,
        idempotency_key: false,
        keep: Vec::new(),
    }
}

/// The body: the format most calls sent, its schema merged from their shapes.
fn inferred_body(
    key: &Key,
    name: &str,
    calls: &[&Unmatched],
    imported: &mut Imported,
) -> Option<(&'static str, Option<String>)> {
    let forms = calls
        .iter()
        .filter(|c| c.body_format.as_deref() == Some("form"))
        .count();
    let jsons = calls
        .iter()
        .filter(|c| c.body_format.as_deref() == Some("json"))
        .count();
    if forms + jsons == 0 {
        if !matches!(key.method.as_str(), "GET" | "HEAD" | "OPTIONS" | "DELETE") {
            imported.notes.push(
                "no JSON or form body was seen (or it was over 16 KiB): add `body` if it takes one"
                    .into(),
            );
        }
        return None;
    }
    let format = if forms > jsons { "form" } else { "json" };
    let shapes: Vec<Option<&Value>> = calls
        .iter()
        .map(|c| match c.body_format.as_deref() == Some(format) {
            true => c.body_shape.as_ref(),
            false => None,
        })
        .collect();
    let mut schema = inferred_schema(&shapes)?;
    super::finish_schema(&mut schema, &[]);
    imported.notes.push(format!(
        "body schema inferred from {} calls: types only, keys seen in every call required, closed",
        forms.max(jsons)
    ));
    let file = format!("{name}.json");
    imported
        .schemas
        .push((file.clone(), super::schema_text(&schema)));
    Some((format, Some(file)))
}

/// The shapes merged, a call without one counting as an empty object (so no key it lacked is
/// required); none when no call had one.
pub fn inferred_schema(shapes: &[Option<&Value>]) -> Option<Value> {
    if shapes.iter().all(Option::is_none) {
        return None;
    }
    let empty = shape::of(&json!({}));
    let all: Vec<Value> = shapes
        .iter()
        .map(|s| s.cloned().unwrap_or_else(|| empty.clone()))
        .collect();
    Some(shape::merge(&all))
}

/// The whole file: what it is, then each drafted tool.
fn whole_file(calls: usize, groups: &[Group]) -> String {
    let mut out = format!(
        "# Drafted by `toolgate contracts suggest` from {calls} call(s) refused because no tool\n\
         # contract matched them. A suggestion only: nothing changes until a person reviews it and\n\
         # writes it into the policies folder. Lines marked \"guess\" are defaults from the HTTP\n\
         # method; inferred schemas hold the types seen (never values), closed to other keys.\n"
    );
    for g in groups {
        out.push('\n');
        out.push_str(&g.toml);
    }
    out
}

/// The drafted file with its schema files after it as comments, for a terminal: the output
/// stays one valid TOML document (`--out` writes the schema files themselves).
pub fn printable(s: &Suggested, prefix: &str) -> String {
    s.imported.printable(prefix)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ids_are_numbers_uuids_prefixed_ids_and_hex() {
        for id in [
            "42",
            "cus_NffrFeUfNV2Hib",
            "pi_3MtwBwLkdIwHu7ix28a3tqPa",
            "cus_1",
            "550e8400-e29b-41d4-a716-446655440000",
            "a94a8fe5ccb19ba61c4c0873d391e987982fbbd3",
            "01HZX3K9Q7M2B8N4V6C1D5E0FA",
        ] {
            assert!(is_id(id), "{id}");
        }
        for name in [
            "customers",
            "payment_intents",
            "v1",
            "octocat",
            "hello-world",
            "rust-lang",
            "issues",
            "search",
            "deadbeefcafe",
            "",
        ] {
            assert!(!is_id(name), "{name}");
        }
    }

    #[test]
    fn paths_become_templates_named_after_their_collections() {
        let t = |p: &str| template_of(p).unwrap();
        assert_eq!(t("/v1/customers/cus_A1b2"), "/v1/customers/{customer}");
        assert_eq!(
            t("/repos/octocat/hello-world/issues/42/comments"),
            "/repos/octocat/hello-world/issues/{issue}/comments"
        );
        assert_eq!(t("/42/43"), "/{id}/{id_2}");
        assert_eq!(t("/v1/entries/7"), "/v1/entries/{entry}");
        assert_eq!(t("/"), "/");
        assert_eq!(template_of("/a//b"), None);
    }

    proptest! {
        #[test]
        fn generated_ids_are_ids(n in any::<u64>(), u in any::<u128>(), p in "[a-z]{1,6}", s in "[A-Za-z0-9]{0,20}[0-9][A-Za-z0-9]{0,4}", h in "[0-9a-f]{11,40}[0-9]") {
            prop_assert!(is_id(&n.to_string()));
            let x = format!("{u:032x}");
            let uuid = format!("{}-{}-{}-{}-{}", &x[..8], &x[8..12], &x[12..16], &x[16..20], &x[20..]);
            prop_assert!(is_id(&uuid));
            let prefixed = format!("{p}_{s}");
            prop_assert!(is_id(&prefixed), "{}", prefixed);
            prop_assert!(is_id(&h));
        }

        /// Words (letters, '-' and '_', no digit) are names, as GitHub's owner/repo are.
        #[test]
        fn words_are_not_ids(w in "[a-z][a-z_-]{0,30}") {
            prop_assert!(!is_id(&w));
            let path = format!("/repos/{w}/{w}x/issues");
            let template = template_of(&path);
            prop_assert_eq!(template.as_deref(), Some(path.as_str()));
        }

        /// Every path a template was made of matches it.
        #[test]
        fn a_template_matches_its_path(segs in prop::collection::vec("[a-z]{1,8}|[0-9]{1,6}|cus_[A-Za-z0-9]{4,10}", 1..6)) {
            let path = format!("/{}", segs.join("/"));
            let t = template_of(&path).unwrap();
            prop_assert!(PathTemplate::parse(&t).unwrap().matches(&path).is_some(), "{} {}", t, path);
        }
    }

    fn call(agent: &str, method: &str, path: &str, body: Option<Value>) -> Unmatched {
        Unmatched {
            agent: agent.into(),
            method: method.into(),
            host: "api.stripe.com".into(),
            port: 443,
            path: path.into(),
            body_format: body.as_ref().map(|_| "form".into()),
            body_shape: body.as_ref().map(shape::of),
            ..Unmatched::default()
        }
    }

    /// With a spec, its templates and schemas win; calls it does not describe are inferred.
    #[test]
    fn a_spec_names_the_templates_and_describes_the_bodies() {
        let spec = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/specs/stripe/openapi-fragment.json");
        let calls = [
            call("bot", "GET", "/v1/customers/cus_Aa1", None),
            call("bot", "GET", "/v1/customers/alice", None),
            call(
                "ops",
                "POST",
                "/v1/refunds",
                Some(json!({"payment_intent": "pi_secretvalue"})),
            ),
            call("bot", "GET", "/v1/balance_transactions/txn_9Zz", None),
        ];
        let opts = SuggestOptions {
            prefix: "stripe".into(),
            spec: Some(spec),
            max_spec_bytes: super::super::spec::MAX_SPEC_BYTES,
        };
        let s = suggest(&calls, &opts).unwrap();
        let by_template: Vec<(&str, usize, &str)> = s
            .groups
            .iter()
            .map(|g| (g.template.as_str(), g.calls, g.operation_id.as_str()))
            .collect();
        assert_eq!(
            by_template,
            [
                ("/v1/balance_transactions/{balance_transaction}", 1, ""),
                ("/v1/customers/{customer}", 2, "GetCustomersCustomer"),
                ("/v1/refunds", 1, "PostRefunds"),
            ]
        );
        let toml = &s.imported.toml;
        assert!(
            toml.contains("From the spec's operation PostRefunds"),
            "{toml}"
        );
        assert!(
            !toml.contains("secretvalue") && !toml.contains("alice"),
            "{toml}"
        );
        let refund = s
            .imported
            .schemas
            .iter()
            .find(|(f, _)| f == "post_refunds.json");
        assert!(
            refund.is_some_and(|(_, text)| text.contains("\"amount\"")),
            "{:?}",
            s.imported.schemas
        );
        toml::from_str::<crate::policy::PolicyFile>(toml).unwrap();
    }

    #[test]
    fn schemas_are_inferred_from_shapes_without_values() {
        let a = shape::of(&json!({"amount": 100, "note": "secret-ish"}));
        let b = shape::of(&json!({"amount": 5}));
        let s = inferred_schema(&[Some(&a), Some(&b), None]).unwrap();
        assert_eq!(s["properties"]["amount"], json!({"type": "integer"}));
        assert_eq!(
            s.get("required"),
            None,
            "a call with no body requires nothing"
        );
        let s = inferred_schema(&[Some(&a), Some(&b)]).unwrap();
        assert_eq!(s["required"], json!(["amount"]));
        assert!(!s.to_string().contains("secret-ish"));
        assert_eq!(inferred_schema(&[None, None]), None);
    }
}
