//! The Model Context Protocol as toolgate reads it: JSON-RPC messages posted to a server's
//! streamable-HTTP endpoint, answered as JSON or as a server-sent event stream. What a message
//! asks (`classify`), the answers toolgate writes itself (a refused tool call is the tool's
//! result with `isError`, so the model reads what to change), the messages inside an answer,
//! and the pin of a listed tool.

use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

/// What one JSON-RPC message posted by a client asks for.
#[derive(Debug, PartialEq)]
pub enum Message {
    /// `tools/call`: the tool's name and arguments (an object; `{}` when absent).
    Call {
        id: Value,
        name: String,
        arguments: Value,
    },
    /// `tools/list`: answered by the server, filtered by toolgate.
    List { id: Value },
    /// Session set-up and upkeep: `initialize`, `ping`, `notifications/*`.
    SetUp,
    /// The client answering a request the server sent it (no method; a result or an error).
    Reply,
    /// Any other method: refused.
    Other { id: Option<Value>, method: String },
    /// Not a JSON-RPC 2.0 message toolgate can read.
    Invalid { id: Option<Value>, why: String },
}

/// Reads one message.
pub fn classify(message: &Value) -> Message {
    let Some(obj) = message.as_object() else {
        return Message::Invalid {
            id: None,
            why: "a JSON-RPC message is an object".into(),
        };
    };
    let id = obj.get("id").cloned();
    if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Message::Invalid {
            id,
            why: "jsonrpc must be \"2.0\"".into(),
        };
    }
    let Some(method) = obj.get("method") else {
        return match obj.contains_key("result") || obj.contains_key("error") {
            true => Message::Reply,
            false => Message::Invalid {
                id,
                why: "a message without a method must carry a result or an error".into(),
            },
        };
    };
    let Some(method) = method.as_str() else {
        return Message::Invalid {
            id,
            why: "method must be a string".into(),
        };
    };
    match (method, id) {
        ("tools/call", Some(id)) => call(obj, id),
        ("tools/list", Some(id)) => Message::List { id },
        ("initialize" | "ping", Some(_)) => Message::SetUp,
        (m, None) if m.starts_with("notifications/") => Message::SetUp,
        (m, id) => Message::Other {
            id,
            method: m.to_string(),
        },
    }
}

fn call(obj: &Map<String, Value>, id: Value) -> Message {
    let params = obj.get("params").and_then(Value::as_object);
    let Some(name) = params.and_then(|p| p.get("name")).and_then(Value::as_str) else {
        return Message::Invalid {
            id: Some(id),
            why: "tools/call needs params.name, the tool's name".into(),
        };
    };
    let arguments = match params.and_then(|p| p.get("arguments")) {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(a @ Value::Object(_)) => a.clone(),
        Some(_) => {
            return Message::Invalid {
                id: Some(id),
                why: "params.arguments must be an object".into(),
            }
        }
    };
    Message::Call {
        id,
        name: name.to_string(),
        arguments,
    }
}

/// A tool's result saying it did not run, with toolgate's message for the model.
pub fn refused_result(id: &Value, text: &str) -> Value {
    json!({
        "jsonrpc": "2.0",
        "id": id,
        "result": {"content": [{"type": "text", "text": text}], "isError": true},
    })
}

/// A JSON-RPC error (for what is not a tool call: another method, an unreadable message).
pub fn error_message(id: Option<&Value>, code: i64, message: &str) -> Value {
    json!({
        "jsonrpc": "2.0",
        "id": id.cloned().unwrap_or(Value::Null),
        "error": {"code": code, "message": message},
    })
}

/// JSON-RPC's "method not found" and "invalid request".
pub const METHOD_NOT_FOUND: i64 = -32601;
pub const INVALID_REQUEST: i64 = -32600;

/// Whether an answer is a server-sent event stream (else JSON).
pub fn is_event_stream(content_type: Option<&str>) -> bool {
    content_type.is_some_and(|c| c.trim_start().starts_with("text/event-stream"))
}

/// The JSON-RPC messages in an answer: a JSON message or batch, or the `data` of each event of
/// an event stream. What is not JSON is skipped.
pub fn messages_in(event_stream: bool, body: &[u8]) -> Vec<Value> {
    if !event_stream {
        return match serde_json::from_slice::<Value>(body) {
            Ok(Value::Array(list)) => list,
            Ok(v) => vec![v],
            Err(_) => Vec::new(),
        };
    }
    events(body)
        .iter()
        .filter_map(|e| serde_json::from_str(&e.data).ok())
        .collect()
}

/// The answer to request `id` among `messages`.
pub fn answer_to(messages: Vec<Value>, id: &Value) -> Option<Value> {
    messages.into_iter().find(|m| {
        m.get("id") == Some(id) && (m.get("result").is_some() || m.get("error").is_some())
    })
}

/// One server-sent event: its lines other than `data`, and its data joined.
#[derive(Debug, Default)]
struct Event {
    other: Vec<String>,
    data: String,
    has_data: bool,
}

fn events(body: &[u8]) -> Vec<Event> {
    let text = String::from_utf8_lossy(body);
    let mut out = Vec::new();
    let mut current = Event::default();
    for line in text.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() {
            if current.has_data || !current.other.is_empty() {
                out.push(std::mem::take(&mut current));
            }
            continue;
        }
        match line.strip_prefix("data:") {
            Some(d) => {
                if current.has_data {
                    current.data.push('\n');
                }
                current.data.push_str(d.strip_prefix(' ').unwrap_or(d));
                current.has_data = true;
            }
            None => current.other.push(line.to_string()),
        }
    }
    if current.has_data || !current.other.is_empty() {
        out.push(current);
    }
    out
}

/// The answer with every JSON-RPC message passed through `edit`, in the same form (JSON, or
/// the same events with their ids and names).
pub fn rewrite(event_stream: bool, body: &[u8], mut edit: impl FnMut(&mut Value)) -> Vec<u8> {
    if !event_stream {
        return match serde_json::from_slice::<Value>(body) {
            Ok(Value::Array(mut list)) => {
                list.iter_mut().for_each(&mut edit);
                serde_json::to_vec(&list).unwrap_or_default()
            }
            Ok(mut v) => {
                edit(&mut v);
                serde_json::to_vec(&v).unwrap_or_default()
            }
            Err(_) => body.to_vec(),
        };
    }
    let mut out = String::new();
    for e in events(body) {
        for line in &e.other {
            out.push_str(line);
            out.push('\n');
        }
        if e.has_data {
            let data = match serde_json::from_str::<Value>(&e.data) {
                Ok(mut v) => {
                    edit(&mut v);
                    v.to_string()
                }
                Err(_) => e.data.clone(),
            };
            for line in data.split('\n') {
                out.push_str("data: ");
                out.push_str(line);
                out.push('\n');
            }
        }
        out.push('\n');
    }
    out.into_bytes()
}

/// The pin of a tool as a server lists it: `sha256:` over its description and input schema,
/// serialised with sorted keys (the order a server writes them in does not change the pin).
pub fn pin_of(listed: &Value) -> String {
    let mut subject = Map::new();
    subject.insert(
        "description".into(),
        listed.get("description").cloned().unwrap_or(Value::Null),
    );
    subject.insert(
        "inputSchema".into(),
        listed.get("inputSchema").cloned().unwrap_or(Value::Null),
    );
    let mut bytes = Vec::new();
    canonical(&Value::Object(subject), &mut bytes);
    format!("sha256:{}", hex::encode(Sha256::digest(&bytes)))
}

/// JSON with object keys sorted at every depth.
fn canonical(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend(Value::String((*k).clone()).to_string().as_bytes());
                out.push(b':');
                canonical(&m[k.as_str()], out);
            }
            out.push(b'}');
        }
        Value::Array(list) => {
            out.push(b'[');
            for (i, x) in list.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                canonical(x, out);
            }
            out.push(b']');
        }
        other => out.extend(other.to_string().as_bytes()),
    }
}

/// What makes two calls of a tool the same call: the tool and its arguments (canonical), never
/// the JSON-RPC id, which a client changes on every retry.
pub fn call_identity(tool: &str, arguments: &Value) -> Vec<u8> {
    let mut out = tool.as_bytes().to_vec();
    out.push(0);
    canonical(arguments, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_read_for_what_they_ask() {
        let call = json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
            "params": {"name": "get_ticket", "arguments": {"id": "T-1"}}});
        assert_eq!(
            classify(&call),
            Message::Call {
                id: json!(3),
                name: "get_ticket".into(),
                arguments: json!({"id": "T-1"})
            }
        );
        let list = json!({"jsonrpc": "2.0", "id": "a", "method": "tools/list"});
        assert_eq!(classify(&list), Message::List { id: json!("a") });
        for m in [
            json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}}),
            json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
            json!({"jsonrpc": "2.0", "id": 9, "method": "ping"}),
        ] {
            assert_eq!(classify(&m), Message::SetUp, "{m}");
        }
        let reply = json!({"jsonrpc": "2.0", "id": 0, "result": {}});
        assert_eq!(classify(&reply), Message::Reply);
        let other = json!({"jsonrpc": "2.0", "id": 4, "method": "resources/read"});
        assert!(matches!(classify(&other), Message::Other { .. }));
        let bad = json!({"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": "x", "arguments": [1]}});
        assert!(matches!(classify(&bad), Message::Invalid { .. }));
        assert!(matches!(
            classify(&json!({"id": 1, "method": "ping"})),
            Message::Invalid { .. }
        ));
    }

    #[test]
    fn event_streams_are_read_and_rewritten_event_by_event() {
        let body = b"event: message\r\nid: 1\r\ndata: {\"jsonrpc\":\"2.0\",\"id\":2,\"result\":{\"tools\":[{\"name\":\"a\"},{\"name\":\"b\"}]}}\r\n\r\n";
        let messages = messages_in(true, body);
        assert_eq!(messages.len(), 1);
        assert!(answer_to(messages, &json!(2)).is_some());
        let out = rewrite(true, body, |m| {
            if let Some(tools) = m.pointer_mut("/result/tools").and_then(Value::as_array_mut) {
                tools.retain(|t| t["name"] == "b");
            }
        });
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("event: message\nid: 1\ndata: "), "{text}");
        let again = messages_in(true, text.as_bytes());
        assert_eq!(again[0]["result"]["tools"], json!([{"name": "b"}]));
    }

    #[test]
    fn a_pin_depends_on_description_and_schema_not_on_key_order() {
        let a = json!({"name": "t", "description": "d", "inputSchema": {"type": "object", "properties": {"x": {"type": "string"}}}});
        let b: Value = serde_json::from_str(
            r#"{"inputSchema": {"properties": {"x": {"type": "string"}}, "type": "object"}, "description": "d", "name": "t", "title": "ignored"}"#,
        )
        .unwrap();
        assert_eq!(pin_of(&a), pin_of(&b));
        let changed = json!({"name": "t", "description": "d", "inputSchema": {"type": "object", "properties": {"x": {"type": "integer"}}}});
        assert_ne!(pin_of(&a), pin_of(&changed));
        assert!(pin_of(&a).starts_with("sha256:") && pin_of(&a).len() == 71);
        assert_eq!(
            call_identity("t", &json!({"b": 1, "a": 2})),
            call_identity("t", &json!({"a": 2, "b": 1}))
        );
    }
}
