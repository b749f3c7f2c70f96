//! Validation of request bodies and query strings against a contract's JSON Schema.
//!
//! JSON bodies are parsed as they are; form bodies and query strings (Stripe's bracket notation,
//! `a[b][0]=c`) are decoded to JSON first and their strings coerced to the types the schema asks
//! for. Object schemas that list `properties` without saying `additionalProperties` are closed at
//! load time, so an unknown field anywhere is refused.

use std::path::Path;
use std::sync::Arc;

use serde_json::{Map, Value};

/// Deepest nesting accepted in a body or query (objects and arrays).
pub const MAX_DEPTH: usize = 32;
/// Most bracket segments in one form key.
const MAX_FORM_SEGMENTS: usize = 16;
/// Longest message excerpt of a schema error, so a huge value is not echoed back whole.
const MAX_MESSAGE: usize = 300;

/// A compiled schema and what loading it decided.
pub struct Schema {
    pub path: String,
    pub value: Value,
    validator: Arc<jsonschema::Validator>,
    /// Schema pointers of object schemas that were closed (no `additionalProperties` given).
    pub closed: Vec<String>,
    /// Schema pointers of free-form objects (`{"type": "object"}` with no `properties`), which
    /// accept any keys by declaration.
    pub open: Vec<String>,
}

impl std::fmt::Debug for Schema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Schema")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Schema {
    /// Loads, closes and compiles a JSON Schema (2020-12) file. Remote `$ref`s are never fetched.
    pub fn load(path: &Path) -> Result<Schema, String> {
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("schema {}: {e}", path.display()))?;
        let value: Value = serde_json::from_str(&text)
            .map_err(|e| format!("schema {}: not JSON: {e}", path.display()))?;
        Schema::from_value(&path.display().to_string(), value)
    }

    pub fn from_value(name: &str, mut value: Value) -> Result<Schema, String> {
        let mut closed = Vec::new();
        let mut open = Vec::new();
        close_objects(&mut value, String::new(), &mut closed, &mut open);
        let validator = jsonschema::draft202012::options()
            .build(&value)
            .map_err(|e| format!("schema {name}: {e}"))?;
        Ok(Schema {
            path: name.to_string(),
            value,
            validator: Arc::new(validator),
            closed,
            open,
        })
    }

    /// The first violation, as a message naming the field by JSON pointer.
    pub fn check(&self, instance: &Value) -> Result<(), String> {
        let Some(first) = self.validator.iter_errors(instance).next() else {
            return Ok(());
        };
        let err = most_specific(&first);
        let at = err.instance_path().to_string();
        if let jsonschema::error::ValidationErrorKind::AdditionalProperties { unexpected } =
            err.kind()
        {
            let name = unexpected.first().map(String::as_str).unwrap_or("");
            return Err(format!(
                "field {at}/{} is not allowed by the contract (unknown field); remove it",
                escape_pointer(name)
            ));
        }
        let at = if at.is_empty() { "/".to_string() } else { at };
        let mut msg = err.to_string();
        if msg.len() > MAX_MESSAGE {
            let mut cut = MAX_MESSAGE;
            while !msg.is_char_boundary(cut) {
                cut -= 1;
            }
            msg.truncate(cut);
            msg.push('…');
        }
        Err(format!("field {at}: {msg}"))
    }
}

/// For an `anyOf`/`oneOf` failure, the error inside the branch the value was meant for (the one
/// whose type it has), so the message names the real field instead of the union.
fn most_specific<'a>(
    err: &'a jsonschema::ValidationError<'a>,
) -> &'a jsonschema::ValidationError<'a> {
    use jsonschema::error::ValidationErrorKind as K;
    let context = match err.kind() {
        K::AnyOf { context } | K::OneOfNotValid { context } => context,
        _ => return err,
    };
    let here = err.instance_path().to_string();
    let fits = |branch: &&Vec<jsonschema::ValidationError<'static>>| {
        !branch.iter().any(|e| {
            e.instance_path().to_string() == here
                && matches!(
                    e.kind(),
                    K::Type { .. } | K::Enum { .. } | K::Constant { .. }
                )
        })
    };
    match context.iter().find(fits).and_then(|b| b.first()) {
        Some(inner) => most_specific(inner),
        None => err,
    }
}

fn escape_pointer(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}

/// Closes every object schema of `schema` that lists `properties` and says nothing about other
/// keys, as loading does. Returns how many it closed and how many free-form objects it found.
pub fn close(schema: &mut Value) -> (usize, usize) {
    let mut closed = Vec::new();
    let mut open = Vec::new();
    close_objects(schema, String::new(), &mut closed, &mut open);
    (closed.len(), open.len())
}

/// Walks a schema, adding `"additionalProperties": false` to every object schema that lists
/// `properties` and says nothing about other keys.
fn close_objects(
    node: &mut Value,
    pointer: String,
    closed: &mut Vec<String>,
    open: &mut Vec<String>,
) {
    let Some(obj) = node.as_object_mut() else {
        return;
    };
    let says_other = obj.contains_key("additionalProperties")
        || obj.contains_key("unevaluatedProperties")
        || obj.contains_key("patternProperties");
    let is_object = obj.get("type").is_some_and(|t| {
        t == "object"
            || t.as_array()
                .is_some_and(|a| a.iter().any(|x| x == "object"))
    });
    if obj.contains_key("properties") && !says_other {
        obj.insert("additionalProperties".into(), Value::Bool(false));
        closed.push(if pointer.is_empty() {
            "/".into()
        } else {
            pointer.clone()
        });
    } else if is_object && !obj.contains_key("properties") && !says_other {
        open.push(if pointer.is_empty() {
            "/".into()
        } else {
            pointer.clone()
        });
    }
    for key in ["properties", "$defs", "definitions", "patternProperties"] {
        if let Some(Value::Object(children)) = obj.get_mut(key) {
            for (name, child) in children.iter_mut() {
                close_objects(
                    child,
                    format!("{pointer}/{key}/{}", escape_pointer(name)),
                    closed,
                    open,
                );
            }
        }
    }
    for key in ["anyOf", "oneOf", "prefixItems"] {
        if let Some(Value::Array(children)) = obj.get_mut(key) {
            for (i, child) in children.iter_mut().enumerate() {
                close_objects(child, format!("{pointer}/{key}/{i}"), closed, open);
            }
        }
    }
    // allOf members are left as written: closing each would refuse the properties of the others.
    for key in [
        "items",
        "additionalProperties",
        "not",
        "if",
        "then",
        "else",
        "contains",
    ] {
        if let Some(child) = obj.get_mut(key) {
            close_objects(child, format!("{pointer}/{key}"), closed, open);
        }
    }
}

/// How deep a value nests.
pub fn depth(v: &Value) -> usize {
    match v {
        Value::Object(m) => 1 + m.values().map(depth).max().unwrap_or(0),
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// Parses a JSON body, refusing an object that names a key twice: validation would see one
/// value and an upstream that keeps the first one would act on the other.
pub fn parse_json_strict(bytes: &[u8]) -> Result<Value, String> {
    use serde::de::DeserializeSeed;
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = StrictValue
        .deserialize(&mut de)
        .map_err(|e| e.to_string())?;
    de.end().map_err(|e| e.to_string())?;
    Ok(value)
}

struct StrictValue;

impl<'de> serde::de::DeserializeSeed<'de> for StrictValue {
    type Value = Value;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(StrictVisitor)
    }
}

struct StrictVisitor;

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(v) = seq.next_element_seed(StrictValue)? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(serde::de::Error::custom(format!(
                    "field {key:?} is given more than once"
                )));
            }
            let value = map.next_value_seed(StrictValue)?;
            out.insert(key, value);
        }
        Ok(Value::Object(out))
    }
}

/// Decodes `application/x-www-form-urlencoded` (or a query string) with bracket notation into a
/// JSON object of strings. `a[b]=1` is `{"a":{"b":"1"}}`, `a[]=x` appends, `a[0]=x` makes an
/// object keyed "0" that [`coerce`] turns into an array where the schema wants one.
pub fn decode_form(bytes: &[u8]) -> Result<Value, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "the form body is not UTF-8".to_string())?;
    check_percent_encoding(text)?;
    let mut root = Value::Object(Map::new());
    for (key, value) in form_urlencoded::parse(text.as_bytes()) {
        let segments = parse_key(&key)?;
        insert(&mut root, &segments, value.into_owned(), &key)?;
    }
    Ok(root)
}

fn check_percent_encoding(text: &str) -> Result<(), String> {
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let ok =
                b.len() >= i + 3 && b[i + 1].is_ascii_hexdigit() && b[i + 2].is_ascii_hexdigit();
            if !ok {
                return Err(format!(
                    "malformed percent-encoding at byte {i} of the form data"
                ));
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    Ok(())
}

fn parse_key(key: &str) -> Result<Vec<String>, String> {
    let bad = || format!("malformed form key {key:?}: expected name, name[key] or name[]");
    let (name, mut rest) = match key.find('[') {
        Some(i) => (&key[..i], &key[i..]),
        None => (key, ""),
    };
    if name.is_empty() || name.contains(']') {
        return Err(bad());
    }
    let mut segments = vec![name.to_string()];
    while !rest.is_empty() {
        let inner = rest.strip_prefix('[').ok_or_else(bad)?;
        let end = inner.find(']').ok_or_else(bad)?;
        let seg = &inner[..end];
        if seg.contains('[') {
            return Err(bad());
        }
        // `a[0]` and `a[00]` would name one element to some decoders and two to others.
        if seg.len() > 1 && seg.starts_with('0') && seg.bytes().all(|b| b.is_ascii_digit()) {
            let canonical = match seg.trim_start_matches('0') {
                "" => "0",
                rest => rest,
            };
            return Err(format!(
                "form key {key:?} has an index with a leading zero ([{seg}]); write [{canonical}]"
            ));
        }
        segments.push(seg.to_string());
        rest = &inner[end + 1..];
        if segments.len() > MAX_FORM_SEGMENTS {
            return Err(format!(
                "form key {key:?} nests deeper than {MAX_FORM_SEGMENTS} levels"
            ));
        }
    }
    Ok(segments)
}

fn pointer_of(segments: &[String]) -> String {
    segments
        .iter()
        .map(|s| format!("/{}", escape_pointer(s)))
        .collect()
}

fn insert(node: &mut Value, segments: &[String], value: String, key: &str) -> Result<(), String> {
    let (seg, rest) = match segments.split_first() {
        Some(x) => x,
        None => return Err(format!("malformed form key {key:?}")),
    };
    if seg.is_empty() {
        // `a[]`: append. Only a leaf may be appended this way.
        let Value::Array(items) = node else {
            return Err(format!("form key {key:?} mixes [] with named keys"));
        };
        if !rest.is_empty() {
            return Err(format!(
                "form key {key:?}: use indexes (a[0][b]) for lists of objects"
            ));
        }
        items.push(Value::String(value));
        return Ok(());
    }
    let Value::Object(map) = node else {
        return Err(format!("form key {key:?} mixes [] with named keys"));
    };
    if rest.is_empty() {
        if map.contains_key(seg.as_str()) {
            return Err(format!(
                "field {} is given more than once",
                pointer_of(&parse_key(key)?)
            ));
        }
        map.insert(seg.clone(), Value::String(value));
        return Ok(());
    }
    let child = map.entry(seg.clone()).or_insert_with(|| {
        if rest[0].is_empty() {
            Value::Array(Vec::new())
        } else {
            Value::Object(Map::new())
        }
    });
    if child.is_string() {
        return Err(format!(
            "field {} is given both as a value and as an object",
            pointer_of(&parse_key(key)?)
        ));
    }
    insert(child, rest, value, key)
}

/// The schema and its `anyOf`/`oneOf`/`allOf` members (one level), where a keyword may be found.
fn branches(s: &Value) -> Vec<&Map<String, Value>> {
    let mut out = Vec::new();
    if let Some(obj) = s.as_object() {
        out.push(obj);
        for key in ["anyOf", "oneOf", "allOf"] {
            if let Some(Value::Array(members)) = obj.get(key) {
                out.extend(members.iter().filter_map(Value::as_object));
            }
        }
    }
    out
}

fn types(s: &Value) -> Vec<&str> {
    branches(s)
        .into_iter()
        .filter_map(|b| b.get("type"))
        .flat_map(|t| match t {
            Value::String(x) => vec![x.as_str()],
            Value::Array(xs) => xs.iter().filter_map(Value::as_str).collect(),
            _ => vec![],
        })
        .collect()
}

/// Turns form-decoded strings into the schema's types: numbers, booleans, and index-keyed objects
/// into arrays. Values that cannot be coerced are left for validation to refuse.
pub fn coerce(v: &mut Value, schema: &Value) {
    let ts = types(schema);
    match v {
        Value::String(s) => {
            if ts.contains(&"integer") {
                if let Ok(n) = s.parse::<i64>() {
                    *v = Value::from(n);
                    return;
                }
            }
            if ts.contains(&"number") {
                if let Some(n) = s.parse::<f64>().ok().and_then(serde_json::Number::from_f64) {
                    *v = Value::Number(n);
                    return;
                }
            }
            if ts.contains(&"boolean") && (s == "true" || s == "false") {
                *v = Value::Bool(s == "true");
            }
        }
        Value::Object(map) => {
            let wants_array = ts.contains(&"array") && !ts.contains(&"object");
            if wants_array && !map.is_empty() && map.keys().all(|k| k.parse::<usize>().is_ok()) {
                let mut items: Vec<(usize, Value)> = std::mem::take(map)
                    .into_iter()
                    .filter_map(|(k, v)| k.parse().ok().map(|i| (i, v)))
                    .collect();
                items.sort_by_key(|(i, _)| *i);
                *v = Value::Array(items.into_iter().map(|(_, v)| v).collect());
                coerce(v, schema);
                return;
            }
            for (key, child) in map.iter_mut() {
                let sub = branches(schema).into_iter().find_map(|b| {
                    b.get("properties")
                        .and_then(|p| p.get(key))
                        .or_else(|| b.get("additionalProperties").filter(|a| a.is_object()))
                });
                if let Some(sub) = sub {
                    coerce(child, sub);
                }
            }
        }
        Value::Array(items) => {
            if let Some(sub) = branches(schema).into_iter().find_map(|b| b.get("items")) {
                for item in items {
                    coerce(item, sub);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Schema {
        Schema::from_value(
            "t",
            json!({
                "type": "object",
                "properties": {
                    "amount": {"type": "integer"},
                    "capture": {"type": "boolean"},
                    "expand": {"type": "array", "items": {"type": "string"}},
                    "items": {"type": "array", "items": {"type": "object", "properties": {"price": {"type": "string"}, "quantity": {"type": "integer"}}}},
                    "metadata": {"anyOf": [{"type": "object", "additionalProperties": {"type": "string"}}, {"type": "string", "enum": [""]}]},
                    "free": {"type": "object"}
                },
                "required": ["amount"]
            }),
        )
        .unwrap()
    }

    #[test]
    fn stripe_form_bodies_decode_and_coerce() {
        let s = schema();
        let mut v = decode_form(
            b"amount=100&capture=true&expand[]=customer&expand[]=charges&items[0][price]=p_1&items[0][quantity]=2&metadata[order]=42",
        )
        .unwrap();
        coerce(&mut v, &s.value);
        assert_eq!(
            v,
            json!({"amount": 100, "capture": true, "expand": ["customer", "charges"],
                   "items": [{"price": "p_1", "quantity": 2}], "metadata": {"order": "42"}})
        );
        s.check(&v).unwrap();
    }

    #[test]
    fn unknown_fields_are_named_by_pointer() {
        let s = schema();
        assert!(s.closed.contains(&"/".to_string()));
        assert!(s.open.contains(&"/properties/free".to_string()));
        let err = s
            .check(&json!({"amount": 1, "items": [{"price": "p", "evil": 1}]}))
            .unwrap_err();
        assert!(err.contains("/items/0/evil"), "{err}");
        let err = s.check(&json!({"amount": "x"})).unwrap_err();
        assert!(err.contains("/amount"), "{err}");
    }

    #[test]
    fn malformed_forms_are_refused() {
        for bad in [
            &b"a[b=1"[..],
            b"a]=1",
            b"=1",
            b"a=%zz",
            b"a=1&a=2",
            b"a[]=1&a[x]=2",
            b"a=1&a[b]=2",
            b"\xff=1",
        ] {
            assert!(
                decode_form(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let deep = (0..20).map(|_| "[a]").collect::<String>();
        assert!(decode_form(format!("x{deep}=1").as_bytes()).is_err());
    }

    #[test]
    fn depth_counts_nesting() {
        assert_eq!(depth(&json!({"a": [{"b": 1}]})), 3);
        assert_eq!(depth(&json!(1)), 0);
    }
}

#[cfg(test)]
mod strict_tests {
    use super::*;

    #[test]
    fn duplicate_json_keys_are_refused_at_any_depth() {
        assert!(parse_json_strict(br#"{"to":"a","to":"b"}"#).is_err());
        let e = parse_json_strict(br#"{"x":[{"a":1,"a":2}]}"#).unwrap_err();
        assert!(e.contains("\"a\" is given more than once"), "{e}");
        assert_eq!(
            parse_json_strict(br#"{"a":1.5,"b":[true,null,"s"],"c":{"d":-1}}"#).unwrap(),
            serde_json::json!({"a":1.5,"b":[true,null,"s"],"c":{"d":-1}})
        );
        assert!(parse_json_strict(b"{} x").is_err());
    }

    #[test]
    fn form_indexes_with_leading_zeros_are_refused() {
        let e = decode_form(b"items[00][price]=p").unwrap_err();
        assert!(e.contains("write [0]"), "{e}");
        assert!(decode_form(b"items[01]=p").is_err());
        assert!(decode_form(b"items[0]=a&items[10]=b").is_ok());
    }
}
