//! Reading an OpenAPI document (3.0 or 3.1, JSON or YAML) and the other files its `$ref`s name,
//! and turning its schemas into the self-contained JSON Schemas (2020-12) toolgate loads.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::ImportError;

/// Largest spec accepted, all its files together (GitHub's whole description is about 12 MB).
pub const MAX_SPEC_BYTES: u64 = 64 * 1024 * 1024;
/// How many times one `$ref` may be open inside itself before the cycle is closed with a
/// schema that refuses anything (`false`).
const CYCLE_DEPTH: usize = 2;
/// Most `$ref`s open inside one another while inlining.
const MAX_REF_DEPTH: usize = 64;
/// Most schema nodes one inlined schema may have: `$ref`s can multiply a small spec.
const MAX_NODES: usize = 500_000;

/// Keys that say nothing about what is valid (annotations, OpenAPI-only keywords). `readOnly`
/// is kept while inlining and removed with its properties from request schemas afterwards.
const DROP: &[&str] = &[
    "description",
    "example",
    "examples",
    "externalDocs",
    "title",
    "deprecated",
    "writeOnly",
    "discriminator",
    "xml",
    "$comment",
    "$id",
    "$schema",
    "$anchor",
];

/// The spec's files, each parsed once, with the bytes read so far (for the cap).
pub struct Docs {
    main: PathBuf,
    files: HashMap<PathBuf, Value>,
    bytes: u64,
    max_bytes: u64,
}

/// A place in one of the spec's files: the file and a JSON pointer.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct At {
    pub file: PathBuf,
    pub pointer: String,
}

impl At {
    pub fn child(&self, key: &str) -> At {
        At {
            file: self.file.clone(),
            pointer: format!(
                "{}/{}",
                self.pointer,
                key.replace('~', "~0").replace('/', "~1")
            ),
        }
    }
}

impl std::fmt::Display for At {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ptr = if self.pointer.is_empty() {
            "/"
        } else {
            &self.pointer
        };
        write!(f, "{} at {ptr}", self.file.display())
    }
}

impl Docs {
    /// Reads the main document and checks it is OpenAPI 3.0 or 3.1.
    pub fn open(path: &Path, max_bytes: u64) -> Result<(Docs, At), ImportError> {
        let path = &normalize(path);
        let mut docs = Docs {
            main: path.to_path_buf(),
            files: HashMap::new(),
            bytes: 0,
            max_bytes,
        };
        docs.load(path)?;
        let root = At {
            file: path.to_path_buf(),
            pointer: String::new(),
        };
        let version = docs
            .get(&root)?
            .get("openapi")
            .and_then(Value::as_str)
            .map(str::to_string);
        match version.as_deref() {
            Some(v) if v.starts_with("3.0") || v.starts_with("3.1") => {}
            Some(v) => {
                return Err(invalid(
                    &root.child("openapi"),
                    format!("OpenAPI {v} is not supported (3.0 and 3.1 are)"),
                ))
            }
            None => return Err(invalid(
                &root.child("openapi"),
                "missing: not an OpenAPI 3 document (a Swagger 2.0 one must be converted first)",
            )),
        }
        Ok((docs, root))
    }

    pub fn main(&self) -> &Path {
        &self.main
    }

    fn load(&mut self, path: &Path) -> Result<(), ImportError> {
        if self.files.contains_key(path) {
            return Ok(());
        }
        let read = |e: std::io::Error| ImportError::Read {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        let size = std::fs::metadata(path).map_err(read)?.len();
        self.bytes += size;
        if self.bytes > self.max_bytes {
            return Err(ImportError::TooLarge {
                path: path.to_path_buf(),
                max: self.max_bytes,
            });
        }
        let text = std::fs::read_to_string(path).map_err(read)?;
        let yaml = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("yaml") || e.eq_ignore_ascii_case("yml"));
        let parse = |message: String| ImportError::Parse {
            path: path.to_path_buf(),
            message,
        };
        let value: Value = if yaml || !text.trim_start().starts_with('{') {
            serde_norway::from_str(&text).map_err(|e| parse(e.to_string()))?
        } else {
            serde_json::from_str(&text).map_err(|e| parse(e.to_string()))?
        };
        self.files.insert(path.to_path_buf(), value);
        Ok(())
    }

    /// The value at a place (its file loaded on first use).
    pub fn get(&mut self, at: &At) -> Result<&Value, ImportError> {
        self.load(&at.file)?;
        self.files
            .get(&at.file)
            .and_then(|doc| doc.pointer(&at.pointer))
            .ok_or_else(|| invalid(at, "nothing is there"))
    }

    /// Where a `$ref` written at `from` points: `#/…` in the same file, `other.yaml#/…` or
    /// `other.yaml` beside it. Remote references are refused: an import never fetches.
    pub fn target(&self, from: &At, reference: &str) -> Result<At, ImportError> {
        let unresolved = |why: &str| ImportError::UnresolvedRef {
            at: from.to_string(),
            reference: reference.to_string(),
            why: why.to_string(),
        };
        if reference.contains("://") {
            return Err(unresolved("remote references are not fetched"));
        }
        let (file, fragment) = reference.split_once('#').unwrap_or((reference, ""));
        if !fragment.is_empty() && !fragment.starts_with('/') {
            return Err(unresolved(
                "only JSON-pointer fragments (#/…) are supported",
            ));
        }
        let file = if file.is_empty() {
            from.file.clone()
        } else {
            normalize(&from.file.parent().unwrap_or(Path::new(".")).join(file))
        };
        let pointer = fragment
            .split('/')
            .map(percent_decode)
            .collect::<Vec<_>>()
            .join("/");
        Ok(At { file, pointer })
    }

    /// Follows `$ref`s from a node until one that is not a reference (parameters, request
    /// bodies and responses may be references too).
    pub fn deref(&mut self, at: &At) -> Result<(Value, At), ImportError> {
        let mut at = at.clone();
        for _ in 0..32 {
            let node = self.get(&at)?;
            match node.get("$ref").and_then(Value::as_str) {
                Some(r) => {
                    let r = r.to_string();
                    let next = self.target(&at, &r)?;
                    self.get(&next).map_err(|_| ImportError::UnresolvedRef {
                        at: at.to_string(),
                        reference: r,
                        why: "it resolves nowhere".into(),
                    })?;
                    at = next;
                }
                None => return Ok((node.clone(), at)),
            }
        }
        Err(invalid(
            &at,
            "$ref chain longer than 32 (a reference to itself?)",
        ))
    }
}

/// `a/b/../c` as `a/c`, so that one file has one name (cycles are found by name).
fn normalize(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir
                if matches!(out.components().next_back(), Some(Component::Normal(_))) =>
            {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// A `$ref` fragment is a URI fragment: `%7B` is `{` (`~1` and `~0` are the pointer's own).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn invalid(at: &At, message: impl Into<String>) -> ImportError {
    ImportError::Invalid {
        at: at.to_string(),
        message: message.into(),
    }
}

/// Turns a schema of the spec into one self-contained JSON Schema: `$ref`s inlined (cycles
/// closed), annotations dropped, `nullable` made a `null` type, OpenAPI 3.0's boolean
/// `exclusiveMinimum`/`exclusiveMaximum` made numbers.
pub struct Inliner<'d> {
    docs: &'d mut Docs,
    open: Vec<At>,
    nodes: usize,
    max_nodes: usize,
    /// Where cycles were closed, for the report.
    pub cycles: Vec<String>,
}

impl<'d> Inliner<'d> {
    pub fn new(docs: &'d mut Docs) -> Self {
        Inliner {
            docs,
            open: Vec::new(),
            nodes: 0,
            max_nodes: MAX_NODES,
            cycles: Vec::new(),
        }
    }

    /// A smaller cap on the nodes of one inlined schema.
    #[cfg(test)]
    fn with_max_nodes(mut self, n: usize) -> Self {
        self.max_nodes = n;
        self
    }

    /// The schema at `at`, inlined.
    pub fn schema(&mut self, at: &At) -> Result<Value, ImportError> {
        self.nodes = 0;
        let node = self.docs.get(at)?.clone();
        self.inline(&node, at)
    }

    fn inline(&mut self, node: &Value, at: &At) -> Result<Value, ImportError> {
        self.nodes += 1;
        if self.nodes > self.max_nodes {
            return Err(invalid(
                at,
                format!(
                    "the schema expands past {} nodes once its $refs are inlined",
                    self.max_nodes
                ),
            ));
        }
        let obj = match node {
            Value::Object(obj) => obj,
            Value::Bool(_) => return Ok(node.clone()),
            _ => return Err(invalid(at, "a schema must be an object or a boolean")),
        };
        if let Some(reference) = obj.get("$ref") {
            return self.reference(obj, reference, at);
        }
        let mut out = Map::new();
        for (key, value) in obj {
            if DROP.contains(&key.as_str()) || key.starts_with("x-") {
                continue;
            }
            let here = at.child(key);
            let v = match subschemas(key, value) {
                Some(Subschemas::Named) => self.each_named(value, &here)?,
                Some(Subschemas::Listed) => self.each_listed(value, &here)?,
                Some(Subschemas::One) => self.inline(value, &here)?,
                None => value.clone(),
            };
            out.insert(key.clone(), v);
        }
        Ok(openapi_to_json_schema(out))
    }

    fn reference(
        &mut self,
        obj: &Map<String, Value>,
        reference: &Value,
        at: &At,
    ) -> Result<Value, ImportError> {
        let reference = reference
            .as_str()
            .ok_or_else(|| invalid(&at.child("$ref"), "$ref must be a string"))?;
        let target = self.docs.target(at, reference)?;
        if self.open.len() >= MAX_REF_DEPTH {
            return Err(invalid(
                at,
                format!(
                    "$refs nest deeper than {MAX_REF_DEPTH} (inlined, the schema would not end)"
                ),
            ));
        }
        if self.open.iter().filter(|o| **o == target).count() >= CYCLE_DEPTH {
            self.cycles.push(format!("{reference} (at {at})"));
            return Ok(Value::Bool(false));
        }
        let node = self
            .docs
            .get(&target)
            .map_err(|_| ImportError::UnresolvedRef {
                at: at.to_string(),
                reference: reference.to_string(),
                why: "it resolves nowhere".into(),
            })?
            .clone();
        self.open.push(target.clone());
        let inlined = self.inline(&node, &target);
        self.open.pop();
        let mut inlined = inlined?;
        // OpenAPI 3.1 allows keywords beside a $ref; those that constrain are kept where the
        // target does not say the same thing.
        let siblings: Map<String, Value> = obj
            .iter()
            .filter(|(k, _)| *k != "$ref" && !DROP.contains(&k.as_str()) && !k.starts_with("x-"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if let (Value::Object(merged), false) = (&mut inlined, siblings.is_empty()) {
            let siblings = match self.inline(&Value::Object(siblings), at)? {
                Value::Object(m) => m,
                _ => Map::new(),
            };
            for (k, v) in siblings {
                merged.entry(k).or_insert(v);
            }
        }
        Ok(inlined)
    }

    fn each_named(&mut self, value: &Value, at: &At) -> Result<Value, ImportError> {
        let Value::Object(children) = value else {
            return Err(invalid(at, "expected an object of schemas"));
        };
        let mut out = Map::new();
        for (name, child) in children {
            out.insert(name.clone(), self.inline(child, &at.child(name))?);
        }
        Ok(Value::Object(out))
    }

    fn each_listed(&mut self, value: &Value, at: &At) -> Result<Value, ImportError> {
        let Value::Array(children) = value else {
            return Err(invalid(at, "expected a list of schemas"));
        };
        let mut out = Vec::new();
        for (i, child) in children.iter().enumerate() {
            out.push(self.inline(child, &at.child(&i.to_string()))?);
        }
        Ok(Value::Array(out))
    }
}

/// OpenAPI 3.0's dialect into JSON Schema 2020-12: `nullable: true` adds the `null` type (and
/// `null` to an `enum`), boolean `exclusiveMinimum`/`exclusiveMaximum` become the bound itself.
fn openapi_to_json_schema(mut out: Map<String, Value>) -> Value {
    if out.remove("nullable") == Some(Value::Bool(true)) {
        if let Some(Value::Array(values)) = out.get_mut("enum") {
            if !values.contains(&Value::Null) {
                values.push(Value::Null);
            }
        }
        match out.get_mut("type") {
            Some(Value::String(t)) => {
                let t = std::mem::take(t);
                out.insert(
                    "type".into(),
                    Value::Array(vec![Value::String(t), "null".into()]),
                );
            }
            Some(Value::Array(types)) => {
                if !types.iter().any(|t| t == "null") {
                    types.push("null".into());
                }
            }
            _ => {
                let inner = Value::Object(std::mem::take(&mut out));
                out.insert(
                    "anyOf".into(),
                    Value::Array(vec![inner, serde_json::json!({"type": "null"})]),
                );
            }
        }
    }
    for (flag, bound) in [
        ("exclusiveMinimum", "minimum"),
        ("exclusiveMaximum", "maximum"),
    ] {
        match out.get(flag) {
            Some(Value::Bool(true)) => {
                if let Some(b) = out.remove(bound) {
                    out.insert(flag.into(), b);
                } else {
                    out.remove(flag);
                }
            }
            Some(Value::Bool(false)) => {
                out.remove(flag);
            }
            _ => {}
        }
    }
    Value::Object(out)
}

/// Removes `readOnly` properties (and their `required` entries) from a request schema, and the
/// `readOnly` keyword everywhere: a client does not send what the server alone writes.
pub fn drop_read_only(node: &mut Value) {
    let Some(obj) = node.as_object_mut() else {
        return;
    };
    obj.remove("readOnly");
    let mut dropped = Vec::new();
    if let Some(Value::Object(props)) = obj.get_mut("properties") {
        props.retain(|name, p| {
            let ro = p.get("readOnly") == Some(&Value::Bool(true));
            if ro {
                dropped.push(name.clone());
            }
            !ro
        });
    }
    if !dropped.is_empty() {
        if let Some(Value::Array(required)) = obj.get_mut("required") {
            required.retain(|r| !r.as_str().is_some_and(|r| dropped.iter().any(|d| d == r)));
            if required.is_empty() {
                obj.remove("required");
            }
        }
    }
    for_each_subschema(obj, &mut drop_read_only);
}

/// How a JSON Schema keyword holds schemas: a map of them, a list of them, or one.
#[derive(Clone, Copy)]
enum Subschemas {
    Named,
    Listed,
    One,
}

/// Whether keyword `key` (with `value`) holds schemas, and how.
fn subschemas(key: &str, value: &Value) -> Option<Subschemas> {
    match key {
        "properties" | "patternProperties" | "$defs" | "definitions" | "dependentSchemas" => {
            Some(Subschemas::Named)
        }
        "allOf" | "anyOf" | "oneOf" | "prefixItems" => Some(Subschemas::Listed),
        "items" if value.is_array() => Some(Subschemas::Listed),
        "items"
        | "additionalProperties"
        | "unevaluatedProperties"
        | "not"
        | "if"
        | "then"
        | "else"
        | "contains"
        | "propertyNames"
        | "additionalItems" => Some(Subschemas::One),
        _ => None,
    }
}

/// Calls `f` on every schema directly inside a schema object.
pub fn for_each_subschema(obj: &mut Map<String, Value>, f: &mut dyn FnMut(&mut Value)) {
    for (key, value) in obj.iter_mut() {
        match (subschemas(key, value), value) {
            (Some(Subschemas::Named), Value::Object(children)) => {
                children.values_mut().for_each(&mut *f)
            }
            (Some(Subschemas::Listed), Value::Array(children)) => {
                children.iter_mut().for_each(&mut *f)
            }
            (Some(Subschemas::One), child) => f(child),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn docs_with(spec: &Value) -> (tempfile::TempDir, Docs, At) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spec.json");
        std::fs::write(&path, spec.to_string()).unwrap();
        let (docs, root) = Docs::open(&path, MAX_SPEC_BYTES).unwrap();
        (dir, docs, root)
    }

    #[test]
    fn openapi_3_0_keywords_become_json_schema() {
        let s = |v: Value| match v {
            Value::Object(m) => openapi_to_json_schema(m),
            _ => unreachable!(),
        };
        assert_eq!(
            s(json!({"type": "string", "nullable": true, "enum": ["a"]})),
            json!({"type": ["string", "null"], "enum": ["a", null]})
        );
        assert_eq!(
            s(json!({"oneOf": [{"type": "string"}], "nullable": true})),
            json!({"anyOf": [{"oneOf": [{"type": "string"}]}, {"type": "null"}]})
        );
        assert_eq!(
            s(
                json!({"type": "integer", "minimum": 1, "exclusiveMinimum": true, "maximum": 9, "exclusiveMaximum": false})
            ),
            json!({"type": "integer", "exclusiveMinimum": 1, "maximum": 9})
        );
        assert_eq!(
            normalize(Path::new("a/./b/../c.yaml")),
            PathBuf::from("a/c.yaml")
        );
        assert_eq!(percent_decode("/paths/~1a%7Bb%7D"), "/paths/~1a{b}");
    }

    #[test]
    fn a_ref_to_a_ref_to_nowhere_names_where_it_is_written() {
        let spec = json!({"openapi": "3.0.0", "components": {"schemas": {
            "A": {"type": "object", "properties": {"b": {"$ref": "#/components/schemas/B"}}},
            "B": {"$ref": "#/components/schemas/Gone"}}}});
        let (_dir, mut docs, root) = docs_with(&spec);
        let at = root.child("components").child("schemas").child("A");
        let err = Inliner::new(&mut docs).schema(&at).unwrap_err().to_string();
        assert!(err.contains("#/components/schemas/Gone"), "{err}");
        assert!(err.contains("/components/schemas/B"), "{err}");
    }

    fn schema_tree() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(json!({"type": "string"})),
            Just(json!({"type": "integer", "description": "n"})),
            Just(json!({"type": "string", "nullable": true, "example": "x"})),
            Just(json!({"enum": ["a", "b"], "nullable": true})),
            (0..4u8).prop_map(|k| json!({"$ref": format!("#/components/schemas/c{k}")})),
        ];
        leaf.prop_recursive(4, 24, 3, |inner| {
            prop_oneof![
                (inner.clone(), inner.clone()).prop_map(|(a, b)| json!({
                    "type": "object", "properties": {"p0": a, "p1": b}, "required": ["p0"]})),
                inner
                    .clone()
                    .prop_map(|a| json!({"type": "array", "items": a})),
                (inner.clone(), inner.clone()).prop_map(|(a, b)| json!({"anyOf": [a, b]})),
                inner.clone().prop_map(|a| json!({"allOf": [a]})),
                inner.prop_map(|a| json!({"type": "object", "required": ["ro", "x"],
                    "properties": {"ro": {"type": "string", "readOnly": true}, "x": a}})),
            ]
        })
    }

    fn keys(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, child) in m {
                    out.push(k.clone());
                    keys(child, out);
                }
            }
            Value::Array(items) => items.iter().for_each(|i| keys(i, out)),
            _ => {}
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Whatever the components and their references (cycles included), inlining ends, is
        /// the same twice, leaves no reference, annotation or OpenAPI-only keyword, and gives a
        /// schema the policy loader compiles.
        #[test]
        fn inlining_ends_and_gives_a_self_contained_schema(components in proptest::collection::vec(schema_tree(), 4)) {
            let schemas: Map<String, Value> = components
                .into_iter()
                .enumerate()
                .map(|(i, s)| (format!("c{i}"), s))
                .collect();
            let spec = json!({"openapi": "3.0.3", "paths": {}, "components": {"schemas": schemas}});
            let (_dir, mut docs, root) = docs_with(&spec);
            let at = root.child("components").child("schemas").child("c0");
            let once = Inliner::new(&mut docs).with_max_nodes(5_000).schema(&at);
            let twice = Inliner::new(&mut docs).with_max_nodes(5_000).schema(&at);
            let (mut once, twice) = match (once, twice) {
                (Ok(a), Ok(b)) => (a, b),
                (Err(a), Err(b)) => {
                    prop_assert_eq!(a.to_string(), b.to_string());
                    prop_assert!(a.to_string().contains("expands past"), "{}", a);
                    return Ok(());
                }
                (a, b) => panic!("{a:?} / {b:?}"),
            };
            prop_assert_eq!(&once, &twice);
            drop_read_only(&mut once);
            crate::policy::contract::close(&mut once);
            let mut found = Vec::new();
            keys(&once, &mut found);
            for bad in ["$ref", "nullable", "description", "example", "readOnly", "ro"] {
                prop_assert!(!found.iter().any(|k| k == bad), "{} left in {}", bad, once);
            }
            prop_assert!(crate::policy::contract::Schema::from_value("t", once.clone()).is_ok(), "{}", once);
        }
    }
}
