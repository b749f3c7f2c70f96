//! The shape of a JSON value: a JSON Schema of its types and keys, never its values. It is
//! what the audit log records of a body that no contract describes, and what `contracts
//! suggest` infers a schema from: the shapes of many calls [`merge`] into one, where a key is
//! required when every call had it.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Map, Value};

/// Deeper than this, a value's shape is `{}` (anything).
pub const MAX_DEPTH: usize = 12;
/// An object's first keys (in key order) that its shape describes.
pub const MAX_KEYS: usize = 200;

/// The shape of one value: `{"type": …}`, an object's `properties` (every key it has is
/// `required`), an array's `items` (its elements' shapes merged).
pub fn of(v: &Value) -> Value {
    of_at(v, 0)
}

fn of_at(v: &Value, depth: usize) -> Value {
    if depth >= MAX_DEPTH {
        return json!({});
    }
    match v {
        Value::Null => json!({"type": "null"}),
        Value::Bool(_) => json!({"type": "boolean"}),
        Value::Number(n) if n.is_i64() || n.is_u64() => json!({"type": "integer"}),
        Value::Number(_) => json!({"type": "number"}),
        Value::String(_) => json!({"type": "string"}),
        Value::Array(items) => {
            let shapes: Vec<Value> = items.iter().map(|i| of_at(i, depth + 1)).collect();
            let mut out = json!({"type": "array"});
            if !shapes.is_empty() {
                out["items"] = merge(&shapes);
            }
            out
        }
        Value::Object(m) => {
            let named = m.iter().filter(|(k, _)| is_name(k)).take(MAX_KEYS);
            let props: Map<String, Value> = named
                .map(|(k, v)| (k.clone(), of_at(v, depth + 1)))
                .collect();
            let required = props.keys().cloned().collect();
            let mut out = object(props, required);
            // A map keyed by data (emails, ids, secrets): its values' shape, never its keys.
            let keyed_by_data: Vec<Value> = (m.iter().filter(|(k, _)| !is_name(k)))
                .take(MAX_KEYS)
                .map(|(_, v)| of_at(v, depth + 1))
                .collect();
            if !keyed_by_data.is_empty() {
                out["additionalProperties"] = merge(&keyed_by_data);
            }
            out
        }
    }
}

/// Whether an object's key reads as a field's name, which the shape may keep, rather than as
/// data (an email, an id, a key or token, a number): short, a letter or `_` first, letters,
/// digits, `_` and `-` only, few digits, and not a prefixed id (`cus_…`, `sk_live_…`).
pub fn is_name(key: &str) -> bool {
    let mut chars = key.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    let digits = key.chars().filter(char::is_ascii_digit).count();
    let prefixed_id = key.split_once('_').is_some_and(|(prefix, rest)| {
        prefix.len() <= 4 && rest.len() >= 8 && rest.chars().any(|c| c.is_ascii_digit())
    });
    first_ok && rest_ok && key.len() <= 40 && digits <= 3 && !prefixed_id
}

fn object(props: Map<String, Value>, required: BTreeSet<String>) -> Value {
    let mut out = json!({"type": "object", "properties": props});
    if !required.is_empty() {
        out["required"] = required.into_iter().map(Value::String).collect();
    }
    out
}

/// One shape that every given shape fits: types joined (an integer and a number are a number),
/// objects' keys joined (required: those every object requires), arrays' items merged.
/// Anything unknown (`{}`) among them makes the whole unknown.
pub fn merge(shapes: &[Value]) -> Value {
    let mut flat = Vec::new();
    for s in shapes {
        flatten(s, &mut flat);
    }
    let mut groups: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for s in &flat {
        match s.get("type").and_then(Value::as_str) {
            Some(t) => groups.entry(t.to_string()).or_default().push(s),
            None => return json!({}),
        }
    }
    if groups.is_empty() {
        return json!({});
    }
    if groups.contains_key("number") {
        if let Some(ints) = groups.remove("integer") {
            groups.entry("number".into()).or_default().extend(ints);
        }
    }
    let scalar = |t: &str| !matches!(t, "object" | "array");
    if groups.len() > 1 && groups.keys().all(|t| scalar(t)) {
        let types: Vec<Value> = groups.keys().cloned().map(Value::String).collect();
        return json!({"type": types});
    }
    let mut merged: Vec<Value> = groups
        .iter()
        .map(|(t, members)| merge_same(t, members))
        .collect();
    match merged.len() {
        1 => merged.remove(0),
        _ => json!({"anyOf": merged}),
    }
}

/// `anyOf` and lists of types, taken apart into shapes of one type each.
fn flatten(s: &Value, out: &mut Vec<Value>) {
    if let Some(Value::Array(any)) = s.get("anyOf") {
        for a in any {
            flatten(a, out);
        }
        return;
    }
    match s.get("type") {
        Some(Value::Array(types)) => {
            for t in types {
                out.push(json!({ "type": t }));
            }
        }
        _ => out.push(s.clone()),
    }
}

fn merge_same(t: &str, members: &[&Value]) -> Value {
    match t {
        "object" => {
            let mut props: BTreeMap<String, Vec<Value>> = BTreeMap::new();
            let mut required: Option<BTreeSet<String>> = None;
            for m in members {
                if let Some(p) = m.get("properties").and_then(Value::as_object) {
                    for (k, v) in p {
                        props.entry(k.clone()).or_default().push(v.clone());
                    }
                }
                let mine: BTreeSet<String> = (m.get("required").and_then(Value::as_array))
                    .map(|r| {
                        r.iter()
                            .filter_map(Value::as_str)
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default();
                required = Some(match required {
                    None => mine,
                    Some(r) => r.intersection(&mine).cloned().collect(),
                });
            }
            let props = (props.into_iter().take(MAX_KEYS))
                .map(|(k, v)| (k, merge(&v)))
                .collect();
            let mut out = object(props, required.unwrap_or_default());
            let keyed_by_data: Vec<Value> = (members.iter())
                .filter_map(|m| m.get("additionalProperties"))
                .cloned()
                .collect();
            if !keyed_by_data.is_empty() {
                out["additionalProperties"] = merge(&keyed_by_data);
            }
            out
        }
        "array" => {
            let items: Vec<Value> = members
                .iter()
                .filter_map(|m| m.get("items"))
                .cloned()
                .collect();
            let mut out = json!({"type": "array"});
            if !items.is_empty() {
                out["items"] = merge(&items);
            }
            out
        }
        t => json!({ "type": t }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_shape_has_types_and_keys_never_values() {
        let v = json!({"amount": 100, "currency": "usd", "meta": {"k": 1.5}, "tags": ["a", 2], "x": null});
        let s = of(&v);
        assert_eq!(
            s,
            json!({"type": "object", "required": ["amount", "currency", "meta", "tags", "x"], "properties": {
                "amount": {"type": "integer"}, "currency": {"type": "string"},
                "meta": {"type": "object", "properties": {"k": {"type": "number"}}, "required": ["k"]},
                "tags": {"type": "array", "items": {"type": ["integer", "string"]}},
                "x": {"type": "null"}}})
        );
        assert!(!s.to_string().contains("usd"));
    }

    #[test]
    fn merged_keys_are_required_only_when_every_call_had_them() {
        let a = of(&json!({"a": 1, "b": "x", "c": {"d": true}}));
        let b = of(&json!({"a": 2.5, "c": {"d": false, "e": "y"}}));
        let m = merge(&[a, b]);
        assert_eq!(m["required"], json!(["a", "c"]));
        assert_eq!(m["properties"]["a"], json!({"type": "number"}));
        assert_eq!(m["properties"]["c"]["required"], json!(["d"]));
        assert_eq!(
            merge(&[of(&json!(1)), of(&json!({}))])["anyOf"][0]["type"],
            "integer"
        );
        assert_eq!(merge(&[json!({}), of(&json!(1))]), json!({}));
    }

    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            (-1e6f64..1e6).prop_map(|f| json!(f)),
            "[A-Z]{2}[0-9a-z ]{0,8}".prop_map(|s| json!(format!("VAL{s}"))),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("[a-z]{1,6}", inner, 0..5)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// The merged shape, closed as a contract's schema is, accepts every value it came
        /// from, and holds none of their values.
        #[test]
        fn merged_shapes_accept_what_they_came_from(values in prop::collection::vec(value(), 1..5)) {
            let shapes: Vec<Value> = values.iter().map(of).collect();
            let mut schema = merge(&shapes);
            prop_assert!(!schema.to_string().contains("VAL"), "{}", schema);
            crate::policy::contract::close(&mut schema);
            let checker = crate::policy::contract::Schema::from_value("shape", schema.clone()).unwrap();
            for v in &values {
                prop_assert!(checker.check(v).is_ok(), "{} refused {}", schema, v);
            }
        }

        /// A key is required only if every object had it.
        #[test]
        fn required_keys_were_in_every_object(objs in prop::collection::vec(prop::collection::btree_map("[a-c]", any::<bool>(), 0..3), 1..6)) {
            let shapes: Vec<Value> = objs.iter().map(|m| of(&json!(m))).collect();
            let merged = merge(&shapes);
            for r in merged["required"].as_array().cloned().unwrap_or_default() {
                let k = r.as_str().unwrap();
                prop_assert!(objs.iter().all(|m| m.contains_key(k)));
            }
            for k in ["a", "b", "c"] {
                let everywhere = objs.iter().all(|m| m.contains_key(k));
                let listed = merged["required"].as_array().is_some_and(|r| r.contains(&json!(k)));
                prop_assert_eq!(everywhere, listed);
            }
        }
    }

    #[test]
    fn keys_that_are_data_are_never_kept() {
        let v = json!({"metadata": {"alice@example.com": 1, "sk_live_abc123": "x", "order": 2},
            "cus_NffrFeUfNV2Hib": true, "12345": 1, "amount": 5});
        let text = of(&v).to_string();
        for data in [
            "alice@example.com",
            "sk_live_abc123",
            "cus_NffrFeUfNV2Hib",
            "12345",
        ] {
            assert!(!text.contains(data), "{data} in {text}");
        }
        assert!(
            text.contains("\"order\"") && text.contains("\"amount\""),
            "{text}"
        );
        assert!(text.contains("additionalProperties"), "{text}");
        for name in [
            "payment_intent",
            "amount",
            "tax_id_12",
            "X-Custom",
            "_private",
        ] {
            assert!(is_name(name), "{name}");
        }
    }
}
