//! Response contracts (DESIGN section 11): what of a tool's answer toolgate keeps (`keep`: the
//! audit, the ledger and the idempotency store hold only these fields; the rest is never
//! written), what the agent sees (`hide`: removed before the answer reaches it), and the shape
//! the answer should have (`schema`: a mismatch is recorded, the answer still goes through).

use std::sync::Arc;

use serde_json::{Map, Value};

use super::contract::Schema;

/// A tool's response contract, compiled.
#[derive(Debug, Default)]
pub struct ResponseSpec {
    /// JSON pointers of the fields kept; empty: the whole answer is kept.
    pub keep: Vec<String>,
    /// JSON pointers removed before the agent sees the answer.
    pub hide: Vec<String>,
    pub schema: Option<Arc<Schema>>,
}

impl ResponseSpec {
    /// The answer as stored: only the kept fields (at their places), or the answer unchanged
    /// when nothing is named or it is not JSON. An answer that is not JSON keeps nothing of its
    /// body when `keep` names fields: only fields can be kept.
    pub fn kept(&self, body: &[u8]) -> Vec<u8> {
        if self.keep.is_empty() || body.is_empty() {
            return body.to_vec();
        }
        let Ok(answer) = serde_json::from_slice::<Value>(body) else {
            return Vec::new();
        };
        let mut out = Value::Object(Map::new());
        for pointer in &self.keep {
            if let Some(v) = answer.pointer(pointer) {
                put(&mut out, pointer, v.clone());
            }
        }
        serde_json::to_vec(&out).unwrap_or_default()
    }

    /// The answer as the agent sees it: the hidden fields removed (in a JSON answer, or in each
    /// JSON event of an event stream).
    pub fn shown(&self, body: &[u8], event_stream: bool) -> Vec<u8> {
        if self.hide.is_empty() || body.is_empty() {
            return body.to_vec();
        }
        crate::mcp::rewrite(event_stream, body, |v| self.hide_in(v))
    }

    fn hide_in(&self, v: &mut Value) {
        for pointer in &self.hide {
            let Some((parent, last)) = pointer.rsplit_once('/') else {
                continue;
            };
            let last = last.replace("~1", "/").replace("~0", "~");
            match v.pointer_mut(parent) {
                Some(Value::Object(m)) => {
                    m.remove(&last);
                }
                Some(Value::Array(a)) => {
                    if let Ok(i) = last.parse::<usize>() {
                        if i < a.len() {
                            a.remove(i);
                        }
                    }
                }
                _ => {}
            }
        }
    }

    /// Why the answer does not have the declared shape, if it does not. An answer with no body
    /// (`202 Accepted`, `204 No Content`) has no shape to check.
    pub fn mismatch(&self, body: &[u8]) -> Option<String> {
        let schema = self.schema.as_ref()?;
        if body.is_empty() {
            return None;
        }
        match serde_json::from_slice::<Value>(body) {
            Ok(v) => schema.check(&v).err(),
            Err(e) => Some(format!("the answer is not JSON: {e}")),
        }
    }
}

/// Sets `value` at `pointer` in `out`, making the objects on the way.
fn put(out: &mut Value, pointer: &str, value: Value) {
    let parts: Vec<String> = pointer
        .split('/')
        .skip(1)
        .map(|p| p.replace("~1", "/").replace("~0", "~"))
        .collect();
    let mut at = out;
    for (i, part) in parts.iter().enumerate() {
        let Value::Object(m) = at else { return };
        if i + 1 == parts.len() {
            m.insert(part.clone(), value);
            return;
        }
        at = m
            .entry(part.clone())
            .or_insert_with(|| Value::Object(Map::new()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn kept_fields_stay_at_their_places_and_nothing_else_is_written() {
        let spec = ResponseSpec {
            keep: vec!["/id".into(), "/card/last4".into(), "/missing".into()],
            hide: vec!["/card/number".into(), "/tags/0".into()],
            schema: None,
        };
        let answer = json!({"id": "re_1", "charge": "ch_secret", "card": {"last4": "4242", "number": "4242424242424242"}, "tags": ["a", "b"]});
        let bytes = serde_json::to_vec(&answer).unwrap();
        let kept: Value = serde_json::from_slice(&spec.kept(&bytes)).unwrap();
        assert_eq!(kept, json!({"id": "re_1", "card": {"last4": "4242"}}));
        let shown: Value = serde_json::from_slice(&spec.shown(&bytes, false)).unwrap();
        assert_eq!(shown["card"], json!({"last4": "4242"}));
        assert_eq!(shown["tags"], json!(["b"]));
        assert_eq!(shown["charge"], "ch_secret");
        // Not JSON: nothing of the body is kept when fields are named.
        assert!(spec.kept(b"<html>").is_empty());
        // In an event stream, every JSON event.
        let sse = b"data: {\"id\":\"x\",\"card\":{\"number\":\"1\",\"last4\":\"2\"}}\n\n";
        let out = String::from_utf8(spec.shown(sse, true)).unwrap();
        assert!(
            !out.contains("\"number\"") && out.contains("last4"),
            "{out}"
        );
    }

    #[test]
    fn a_mismatch_names_the_shape_and_an_empty_answer_has_none() {
        let schema = Schema::from_value(
            "test",
            json!({"type": "object", "properties": {"errors": {"type": "array"}}}),
        )
        .unwrap();
        let spec = ResponseSpec {
            schema: Some(Arc::new(schema)),
            ..Default::default()
        };
        assert!(spec.mismatch(b"").is_none(), "202 Accepted has no body");
        assert!(spec.mismatch(br#"{"errors": []}"#).is_none());
        assert!(spec.mismatch(br#"{"errors": "x"}"#).is_some());
        assert!(spec.mismatch(b"<html>").unwrap().contains("not JSON"));
    }
}
