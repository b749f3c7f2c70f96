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
    /// The tool is an MCP tool (its answers are JSON-RPC messages).
    pub mcp: bool,
}

/// Where an MCP tool's `hide` pointers point: into the tool's structured output.
pub const MCP_HIDDEN_UNDER: &str = "/result/structuredContent";

/// Why an answer cannot be shown with its hidden fields out: it is withheld.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unhideable(pub String);

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

    /// The answer as the agent sees it: the hidden fields removed (in a JSON answer, in each
    /// JSON event of an event stream, and for an MCP tool in every copy of its answer). An
    /// answer in a content coding is not read, so it is withheld (toolgate asks for none).
    pub fn shown(
        &self,
        body: &[u8],
        content_type: Option<&str>,
        content_encoding: Option<&str>,
    ) -> Result<Vec<u8>, Unhideable> {
        if self.hide.is_empty() || body.is_empty() {
            return Ok(body.to_vec());
        }
        if self.mcp {
            return self.shown_mcp(body, content_type, content_encoding);
        }
        if content_encoding.is_some_and(|c| !c.trim().eq_ignore_ascii_case("identity")) {
            return Err(Unhideable(format!(
                "the answer is encoded as {content_encoding:?}, which toolgate does not decode, so it cannot remove the hidden fields"
            )));
        }
        let stream = content_type.is_some_and(|c| {
            c.trim_start()
                .to_ascii_lowercase()
                .starts_with("text/event-stream")
        });
        if !stream {
            // An HTTP answer that is not JSON has no fields to hide.
            return Ok(match serde_json::from_slice::<Value>(body) {
                Ok(mut v) => {
                    self.hide_in(&mut v);
                    serde_json::to_vec(&v).unwrap_or_default()
                }
                Err(_) => body.to_vec(),
            });
        }
        let mut events = crate::base::sse::parse(body)
            .map_err(|e| Unhideable(format!("the answer's event stream cannot be read: {e}")))?;
        for data in events.iter_mut().filter_map(|e| e.data.as_mut()) {
            if let Ok(mut v) = serde_json::from_str::<Value>(data) {
                self.hide_in(&mut v);
                *data = v.to_string();
            }
        }
        Ok(crate::base::sse::write(&events))
    }

    /// [`ResponseSpec::shown`] for an MCP tool's answer.
    fn shown_mcp(
        &self,
        body: &[u8],
        content_type: Option<&str>,
        content_encoding: Option<&str>,
    ) -> Result<Vec<u8>, Unhideable> {
        let mut answer = crate::mcp::Answer::of(content_type, content_encoding, body)
            .map_err(|e| Unhideable(format!("the tool's answer could not be read: {e}")))?;
        let mut failed = None;
        answer.edit(|m| {
            if let Err(e) = self.hide_in_message(m) {
                failed.get_or_insert(e);
            }
        });
        match failed {
            Some(e) => Err(e),
            None => Ok(answer.to_bytes()),
        }
    }

    /// The hidden fields out of one JSON-RPC message: out of `result.structuredContent`, and
    /// out of each text (of a text block or an embedded resource) that copies it.
    fn hide_in_message(&self, m: &mut Value) -> Result<(), Unhideable> {
        let Some(result) = m.get_mut("result").filter(|r| r.is_object()) else {
            return Ok(());
        };
        let inside: Vec<&str> = self
            .hide
            .iter()
            .filter_map(|p| p.strip_prefix(MCP_HIDDEN_UNDER))
            .filter(|rest| rest.starts_with('/'))
            .collect();
        let mut removed = Vec::new();
        if let Some(structured) = result.get_mut("structuredContent") {
            for pointer in &inside {
                removed.extend(remove(structured, pointer));
            }
        }
        let mut hidden = Vec::new();
        removed.iter().for_each(|v| scalars(v, &mut hidden));
        let stand_in = result.get("structuredContent").map(Value::to_string);
        let Some(content) = result.get_mut("content").and_then(Value::as_array_mut) else {
            return Ok(());
        };
        for block in content {
            let text = match block.get("type").and_then(Value::as_str) {
                Some("text") => block.get_mut("text"),
                Some("resource") => block.pointer_mut("/resource/text"),
                // Images, audio and links carry no text that copies the answer.
                _ => None,
            };
            let Some(Value::String(text)) = text else {
                continue;
            };
            let shown = match serde_json::from_str::<Value>(text) {
                Ok(mut copy) => {
                    for pointer in &inside {
                        remove(&mut copy, pointer);
                    }
                    copy.to_string()
                }
                Err(_) => match &stand_in {
                    Some(s) => s.clone(),
                    None => return Err(Unhideable(
                        "the tool answered with text that is not JSON and no structuredContent, so toolgate cannot tell the hidden fields in it".into(),
                    )),
                },
            };
            // A copy in another shape that still holds a hidden value is replaced too.
            *text = match (hidden.iter().any(|h| shown.contains(h.as_str())), &stand_in) {
                (false, _) => shown,
                (true, Some(s)) => s.clone(),
                (true, None) => return Err(Unhideable("a text block holds a hidden value".into())),
            };
        }
        Ok(())
    }

    fn hide_in(&self, v: &mut Value) {
        for pointer in &self.hide {
            remove(v, pointer);
        }
    }

    /// What `keep` and `schema` look at in an answer: for an MCP tool answering with an event
    /// stream, its JSON-RPC answer as JSON (its pointers name fields of that message); else the
    /// body as it is.
    pub fn subject(
        &self,
        body: &[u8],
        content_type: Option<&str>,
        content_encoding: Option<&str>,
    ) -> Vec<u8> {
        if !self.mcp
            || crate::mcp::Form::of(content_type, content_encoding).ok()
                != Some(crate::mcp::Form::EventStream)
        {
            return body.to_vec();
        }
        let answer = crate::mcp::Answer::read(crate::mcp::Form::EventStream, body)
            .ok()
            .and_then(|a| {
                a.messages()
                    .into_iter()
                    .find(|m| m.get("result").is_some() || m.get("error").is_some())
            });
        answer
            .map(|m| m.to_string().into_bytes())
            .unwrap_or_default()
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

/// Removes what `pointer` names in `v` (an object's field, an array's element), returning it.
fn remove(v: &mut Value, pointer: &str) -> Option<Value> {
    let (parent, last) = pointer.rsplit_once('/')?;
    let last = last.replace("~1", "/").replace("~0", "~");
    match v.pointer_mut(parent)? {
        Value::Object(m) => m.remove(&last),
        Value::Array(a) => match last.parse::<usize>() {
            Ok(i) if i < a.len() => Some(a.remove(i)),
            _ => None,
        },
        _ => None,
    }
}

/// The strings and numbers in `v`, as text (what a copy in other words would show of them).
fn scalars(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) if !s.is_empty() => out.push(s.clone()),
        Value::Number(n) => out.push(n.to_string()),
        Value::Array(list) => list.iter().for_each(|x| scalars(x, out)),
        Value::Object(m) => m.values().for_each(|x| scalars(x, out)),
        _ => {}
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
            mcp: false,
        };
        let answer = json!({"id": "re_1", "charge": "ch_secret", "card": {"last4": "4242", "number": "4242424242424242"}, "tags": ["a", "b"]});
        let bytes = serde_json::to_vec(&answer).unwrap();
        let kept: Value = serde_json::from_slice(&spec.kept(&bytes)).unwrap();
        assert_eq!(kept, json!({"id": "re_1", "card": {"last4": "4242"}}));
        let shown: Value =
            serde_json::from_slice(&spec.shown(&bytes, None, None).unwrap()).unwrap();
        assert_eq!(shown["card"], json!({"last4": "4242"}));
        assert_eq!(shown["tags"], json!(["b"]));
        assert_eq!(shown["charge"], "ch_secret");
        // Not JSON: nothing of the body is kept when fields are named.
        assert!(spec.kept(b"<html>").is_empty());
        // In an event stream, every JSON event.
        let sse = b"data: {\"id\":\"x\",\"card\":{\"number\":\"1\",\"last4\":\"2\"}}\n\n";
        let out =
            String::from_utf8(spec.shown(sse, Some("text/event-stream"), None).unwrap()).unwrap();
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

    #[test]
    fn an_mcp_answer_loses_its_hidden_fields_in_every_copy() {
        let spec = ResponseSpec {
            hide: vec![
                "/result/structuredContent/email".into(),
                "/result/structuredContent/phone".into(),
            ],
            mcp: true,
            ..Default::default()
        };
        let customer =
            json!({"id": "cus_1", "email": "ada@example.com", "phone": 5550100, "plan": "pro"});
        let shown_customer = json!({"id": "cus_1", "plan": "pro"});
        let answer = |content: Value, structured: Option<&Value>| {
            let mut m = json!({"jsonrpc": "2.0", "id": 1, "result": {"content": content}});
            if let Some(s) = structured {
                m["result"]["structuredContent"] = s.clone();
            }
            m.to_string().into_bytes()
        };
        let json = Some("application/json");
        let read = |bytes: Vec<u8>| serde_json::from_slice::<Value>(&bytes).unwrap();
        // JSON text and an embedded resource's JSON text: the same fields out.
        let both = answer(
            json!([{"type": "text", "text": customer.to_string()},
                   {"type": "resource", "resource": {"uri": "crm://1", "text": customer.to_string()}},
                   {"type": "image", "data": "aGk=", "mimeType": "image/png"}]),
            Some(&customer),
        );
        let shown = read(spec.shown(&both, json, None).unwrap());
        assert_eq!(shown["result"]["structuredContent"], shown_customer);
        let text = &shown["result"]["content"][0]["text"];
        assert_eq!(
            serde_json::from_str::<Value>(text.as_str().unwrap()).unwrap(),
            shown_customer
        );
        let text = &shown["result"]["content"][1]["resource"]["text"];
        assert_eq!(
            serde_json::from_str::<Value>(text.as_str().unwrap()).unwrap(),
            shown_customer
        );
        assert_eq!(shown["result"]["content"][2]["data"], "aGk=");
        // Text in words is replaced by the structured content without the hidden fields; so is
        // JSON text in another shape that still holds a hidden value.
        for text in [
            "Ada <ada@example.com>, 5550100".to_string(),
            json!({"customer": customer}).to_string(),
        ] {
            let words = answer(json!([{"type": "text", "text": text}]), Some(&customer));
            let shown = read(spec.shown(&words, json, None).unwrap());
            let text = shown["result"]["content"][0]["text"].as_str().unwrap();
            assert_eq!(serde_json::from_str::<Value>(text).unwrap(), shown_customer);
        }
        // Words and nothing to stand in for them: withheld.
        let words = answer(json!([{"type": "text", "text": "call 5550100"}]), None);
        assert!(spec.shown(&words, json, None).is_err());
        // In a CR-only event stream too; an encoded or unreadable answer is withheld.
        let body = String::from_utf8(both.clone()).unwrap();
        let stream = format!("event: message\rdata: {body}\r\r");
        let shown = spec
            .shown(stream.as_bytes(), Some("text/event-stream"), None)
            .unwrap();
        let shown = String::from_utf8(shown).unwrap();
        assert!(
            !shown.contains("ada@example.com") && !shown.contains("5550100"),
            "{shown}"
        );
        assert!(shown.contains("pro"));
        assert!(spec.shown(&both, json, Some("gzip")).is_err());
        assert!(spec
            .shown(b"ada@example.com", Some("text/plain"), None)
            .is_err());
        // An error message without the fields is shown as it is when structured content stands
        // by; the JSON-RPC error of a failed call has no result to hide in.
        let error = json!({"jsonrpc": "2.0", "id": 1, "error": {"code": -1, "message": "no such customer"}});
        let bytes = error.to_string().into_bytes();
        assert_eq!(read(spec.shown(&bytes, json, None).unwrap()), error);
    }

    #[test]
    fn an_mcp_stream_is_kept_and_checked_by_its_answer() {
        let schema = Schema::from_value(
            "test",
            json!({"type": "object", "required": ["result"], "properties": {
                "jsonrpc": {"const": "2.0"}, "id": {}, "result": {"type": "object", "additionalProperties": true}}}),
        )
        .unwrap();
        let spec = ResponseSpec {
            keep: vec!["/result/structuredContent/id".into()],
            schema: Some(Arc::new(schema)),
            mcp: true,
            ..Default::default()
        };
        let stream = b"event: message\rdata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\"}\r\rdata: {\"jsonrpc\":\"2.0\",\"id\":3,\"result\":{\"structuredContent\":{\"id\":\"cus_1\",\"email\":\"a@b\"}}}\r\r";
        let subject = spec.subject(stream, Some("text/event-stream"), None);
        assert_eq!(spec.mismatch(&subject), None);
        let kept: Value = serde_json::from_slice(&spec.kept(&subject)).unwrap();
        assert_eq!(
            kept,
            json!({"result": {"structuredContent": {"id": "cus_1"}}})
        );
        // A JSON answer, or an HTTP tool's stream, is its own subject.
        assert_eq!(spec.subject(b"{}", Some("application/json"), None), b"{}");
        let http = ResponseSpec::default();
        assert_eq!(
            http.subject(stream, Some("text/event-stream"), None),
            stream
        );
    }
}
