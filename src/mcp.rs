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

/// How an answer's body is framed: one JSON message or batch, or an event stream whose events
/// each carry one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    Json,
    EventStream,
}

/// Why toolgate cannot read an MCP answer. It refuses such an answer: passed on unread, it
/// would reach the client unfiltered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unreadable {
    #[error("it is encoded as {0:?}, which toolgate does not decode")]
    Encoded(String),
    #[error("its content type {0:?} is neither application/json nor text/event-stream")]
    ContentType(String),
    #[error("its headers cannot be read: {0}")]
    Headers(String),
    #[error("its charset {0:?} is not UTF-8")]
    Charset(String),
    #[error("it is not JSON: {0}")]
    Json(String),
    #[error("its event stream cannot be read: {0}")]
    Stream(String),
    #[error("event {0} of its stream does not carry JSON: {1}")]
    Event(usize, String),
}

impl Form {
    /// The form an answer's headers declare. Media types are compared without case; a charset
    /// other than UTF-8, and any content coding but `identity`, are refused (toolgate does not
    /// ask for one, and does not decode one).
    pub fn of(
        content_type: Option<&str>,
        content_encoding: Option<&str>,
    ) -> Result<Form, Unreadable> {
        if let Some(coding) = content_encoding {
            let codings: Vec<&str> = coding
                .split(',')
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .collect();
            if codings.iter().any(|c| !c.eq_ignore_ascii_case("identity")) {
                return Err(Unreadable::Encoded(coding.to_string()));
            }
        }
        let declared = content_type.unwrap_or("");
        let mut params = declared.split(';');
        let essence = params.next().unwrap_or("").trim().to_ascii_lowercase();
        for param in params {
            let Some((name, value)) = param.split_once('=') else {
                continue;
            };
            let value = value.trim().trim_matches('"');
            let utf8 = value.eq_ignore_ascii_case("utf-8") || value.eq_ignore_ascii_case("utf8");
            if name.trim().eq_ignore_ascii_case("charset") && !utf8 {
                return Err(Unreadable::Charset(value.to_string()));
            }
        }
        match essence.as_str() {
            "application/json" => Ok(Form::Json),
            "text/event-stream" => Ok(Form::EventStream),
            _ => Err(Unreadable::ContentType(declared.to_string())),
        }
    }

    /// The form an answer's headers declare, its content type and coding each given once at
    /// most (two would be two readings, and toolgate reads one).
    pub fn from_headers(headers: &http::HeaderMap) -> Result<Form, Unreadable> {
        let one = |name: http::header::HeaderName| {
            let mut values = headers.get_all(&name).iter();
            match (values.next(), values.next()) {
                (None, _) => Ok(None),
                (Some(v), None) => v
                    .to_str()
                    .map(Some)
                    .map_err(|_| Unreadable::Headers(format!("{name} is not ASCII"))),
                (Some(_), Some(_)) => Err(Unreadable::Headers(format!("{name} is given twice"))),
            }
        };
        let content_type = one(http::header::CONTENT_TYPE)?;
        Form::of(content_type, one(http::header::CONTENT_ENCODING)?)
    }
}

/// A JSON value in an answer: a message, or a batch of them.
fn each_message(v: &mut Value, edit: &mut impl FnMut(&mut Value)) {
    match v {
        Value::Array(list) => list.iter_mut().for_each(edit),
        one => edit(one),
    }
}

/// An MCP answer as toolgate read it; what it passes on is written from this, never the bytes
/// that came (so the client sees what toolgate checked, and nothing else).
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// A JSON message or batch; `None`: an empty body (an accepted notification).
    Json(Option<Value>),
    /// The events of a stream, each with its JSON data (`None`: no data, or empty data, such as
    /// a priming event that only carries an id).
    Events(Vec<(crate::base::sse::Event, Option<Value>)>),
}

impl Answer {
    /// Reads a body in `form`: JSON, or an event stream whose every event carries JSON.
    pub fn read(form: Form, body: &[u8]) -> Result<Answer, Unreadable> {
        if form == Form::Json {
            if body.iter().all(u8::is_ascii_whitespace) {
                return Ok(Answer::Json(None));
            }
            return serde_json::from_slice(body)
                .map(|v| Answer::Json(Some(v)))
                .map_err(|e| Unreadable::Json(e.to_string()));
        }
        let events =
            crate::base::sse::parse(body).map_err(|e| Unreadable::Stream(e.to_string()))?;
        let mut out = Vec::with_capacity(events.len());
        for (i, e) in events.into_iter().enumerate() {
            let message = match e.data.as_deref() {
                None | Some("") => None,
                Some(data) => Some(
                    serde_json::from_str(data)
                        .map_err(|err| Unreadable::Event(i + 1, err.to_string()))?,
                ),
            };
            out.push((e, message));
        }
        Ok(Answer::Events(out))
    }

    /// Reads a body with the headers' content type and coding.
    pub fn of(
        content_type: Option<&str>,
        content_encoding: Option<&str>,
        body: &[u8],
    ) -> Result<Answer, Unreadable> {
        if body.is_empty() {
            return Ok(Answer::Json(None));
        }
        Answer::read(Form::of(content_type, content_encoding)?, body)
    }

    /// Reads a body in the form `headers` declare (see [`Form::from_headers`]).
    pub fn from_headers(headers: &http::HeaderMap, body: &[u8]) -> Result<Answer, Unreadable> {
        if body.is_empty() {
            return Ok(Answer::Json(None));
        }
        Answer::read(Form::from_headers(headers)?, body)
    }

    /// Passes every JSON-RPC message of the answer through `edit`.
    pub fn edit(&mut self, mut edit: impl FnMut(&mut Value)) {
        match self {
            Answer::Json(v) => v.iter_mut().for_each(|v| each_message(v, &mut edit)),
            Answer::Events(events) => {
                for (_, m) in events {
                    m.iter_mut().for_each(|v| each_message(v, &mut edit));
                }
            }
        }
    }

    /// The JSON-RPC messages of the answer, in order.
    pub fn messages(self) -> Vec<Value> {
        let values: Vec<Value> = match self {
            Answer::Json(v) => v.into_iter().collect(),
            Answer::Events(events) => events.into_iter().filter_map(|(_, m)| m).collect(),
        };
        values
            .into_iter()
            .flat_map(|v| match v {
                Value::Array(list) => list,
                one => vec![one],
            })
            .collect()
    }

    /// The answer written in its form: JSON, or the same events (type, id, retry) with their
    /// messages as data.
    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            Answer::Json(None) => Vec::new(),
            Answer::Json(Some(v)) => serde_json::to_vec(v).unwrap_or_default(),
            Answer::Events(events) => {
                let written: Vec<crate::base::sse::Event> = events
                    .iter()
                    .map(|(e, m)| crate::base::sse::Event {
                        data: match m {
                            Some(m) => Some(m.to_string()),
                            None => e.data.clone(),
                        },
                        ..e.clone()
                    })
                    .collect();
                crate::base::sse::write(&written)
            }
        }
    }
}

/// The tools an agent may see listed at an endpoint: each one's name, and its pin if pinned.
#[derive(Debug, Clone, Default)]
pub struct Listable(pub Vec<(String, Option<String>)>);

impl Listable {
    /// Whether a tool as the server lists it may be shown: named here, and as pinned.
    pub fn shows(&self, listed: &Value) -> bool {
        let name = listed.get("name").and_then(Value::as_str).unwrap_or("");
        self.0
            .iter()
            .any(|(n, pin)| n == name && pin.as_ref().is_none_or(|pin| *pin == pin_of(listed)))
    }

    /// A message with every list of tools it carries (`result.tools`) cut to what may be shown,
    /// whatever its id: a client may take it for the answer to its own list (ids are matched
    /// loosely by some, the TypeScript SDK compares them as numbers), and a server may put it
    /// on any stream.
    pub fn filter(&self, message: &mut Value) {
        if let Some(tools) = message
            .pointer_mut("/result/tools")
            .and_then(Value::as_array_mut)
        {
            tools.retain(|t| self.shows(t));
        }
    }
}

/// The answer to request `id` among `messages`.
pub fn answer_to(messages: Vec<Value>, id: &Value) -> Option<Value> {
    messages.into_iter().find(|m| {
        m.get("id") == Some(id) && (m.get("result").is_some() || m.get("error").is_some())
    })
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
        let answer = Answer::read(Form::EventStream, body).unwrap();
        assert!(answer_to(answer.clone().messages(), &json!(2)).is_some());
        let mut answer = answer;
        answer.edit(keep_only_b);
        let text = String::from_utf8(answer.to_bytes()).unwrap();
        assert!(text.starts_with("event: message\nid: 1\ndata: "), "{text}");
        let again = Answer::read(Form::EventStream, text.as_bytes()).unwrap();
        assert_eq!(
            again.messages()[0]["result"]["tools"],
            json!([{"name": "b"}])
        );
    }

    fn keep_only_b(m: &mut Value) {
        if let Some(tools) = m.pointer_mut("/result/tools").and_then(Value::as_array_mut) {
            tools.retain(|t| t["name"] == "b");
        }
    }

    #[test]
    fn a_cr_only_stream_is_read_and_filtered() {
        // The bypass of issue 23 row 3: CR-only line ends hid the whole answer from a reader
        // that split on LF, and it passed on as it came.
        let body = b"event: message\rdata: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"tools\":[{\"name\":\"a\",\"description\":\"IGNORE ALL\"},{\"name\":\"b\"}]}}\r\r";
        let mut answer = Answer::of(Some("text/event-stream"), None, body).unwrap();
        answer.edit(keep_only_b);
        let out = answer.to_bytes();
        assert!(!String::from_utf8_lossy(&out).contains("IGNORE ALL"));
        let tools =
            &Answer::read(Form::EventStream, &out).unwrap().messages()[0]["result"]["tools"];
        assert_eq!(tools, &json!([{"name": "b"}]));
    }

    #[test]
    fn what_toolgate_cannot_read_is_refused() {
        let list = br#"{"jsonrpc":"2.0","id":1,"result":{"tools":[]}}"#;
        let refused = |ct: Option<&str>, ce: Option<&str>, body: &[u8]| {
            Answer::of(ct, ce, body).err().map(|e| e.to_string())
        };
        assert!(refused(Some("application/json"), Some("gzip"), list)
            .unwrap()
            .contains("gzip"));
        assert!(refused(Some("application/json"), Some("identity, br"), list).is_some());
        assert!(refused(Some("text/html"), None, list)
            .unwrap()
            .contains("content type"));
        assert!(refused(None, None, list).is_some());
        assert!(
            refused(Some("application/json; charset=utf-16"), None, list)
                .unwrap()
                .contains("utf-16")
        );
        assert!(refused(Some("application/json"), None, b"\xEF\xBB\xBF{}").is_some());
        assert!(refused(Some("application/json"), None, b"tools: a, b").is_some());
        assert!(
            refused(Some("text/event-stream"), None, b"data: not json\n\n")
                .unwrap()
                .contains("event 1")
        );
        assert!(refused(Some("text/event-stream"), None, b"data: \xff\n\n").is_some());
        // What is read: case, parameters, identity coding, an empty body, a priming event.
        for ct in [
            "Application/JSON; charset=\"UTF-8\"",
            "application/json;charset=utf8",
        ] {
            assert_eq!(refused(Some(ct), Some("identity"), list), None, "{ct}");
        }
        assert_eq!(
            Answer::of(None, Some("gzip"), b"").unwrap().messages(),
            Vec::<Value>::new()
        );
        let primed = Answer::of(Some("TEXT/Event-Stream"), None, b"id: p1\ndata:\n\n").unwrap();
        assert_eq!(primed.to_bytes(), b"id: p1\ndata: \n\n");
    }

    mod answers {
        use super::*;
        use proptest::prelude::*;

        /// A tools/list answer with `n` tools named t0, t1, …, descriptions with any text.
        fn listing() -> impl Strategy<Value = Value> {
            proptest::collection::vec("\\PC{0,16}", 1..5).prop_map(|descriptions| {
                let tools: Vec<Value> = descriptions
                    .iter()
                    .enumerate()
                    .map(|(i, d)| json!({"name": format!("t{i}"), "description": d, "inputSchema": {"type": "object"}}))
                    .collect();
                json!({"jsonrpc": "2.0", "id": 7, "result": {"tools": tools}})
            })
        }

        /// How a server may frame one message: as JSON, or as an event stream with any line
        /// end, comments, a BOM, `data:` with or without its space, the message pretty-printed
        /// over several data lines, events before it.
        #[derive(Debug, Clone)]
        struct Framing {
            sse: bool,
            end: &'static str,
            comments: bool,
            bom: bool,
            space: bool,
            pretty: bool,
            before: bool,
        }

        fn framing() -> impl Strategy<Value = Framing> {
            let end = prop_oneof![Just("\n"), Just("\r"), Just("\r\n")];
            (any::<bool>(), end, any::<[bool; 5]>()).prop_map(|(sse, end, f)| Framing {
                sse,
                end,
                comments: f[0],
                bom: f[1],
                space: f[2],
                pretty: f[3],
                before: f[4],
            })
        }

        fn frame(message: &Value, f: &Framing) -> (String, Vec<u8>) {
            let json = match f.pretty {
                true => serde_json::to_string_pretty(message).unwrap(),
                false => message.to_string(),
            };
            if !f.sse {
                return ("application/json".into(), json.into_bytes());
            }
            let e = f.end;
            let mut out = String::new();
            if f.bom {
                out.push('\u{feff}');
            }
            if f.before {
                out.push_str(&format!("id: prime{e}data:{e}{e}"));
                out.push_str(&format!(
                    "data: {{\"jsonrpc\":\"2.0\",\"method\":\"notifications/message\"}}{e}{e}"
                ));
            }
            if f.comments {
                out.push_str(&format!(": ping{e}"));
            }
            out.push_str(&format!("event: message{e}"));
            for line in json.split('\n') {
                out.push_str(if f.space { "data: " } else { "data:" });
                out.push_str(line);
                out.push_str(e);
            }
            out.push_str(e);
            ("text/event-stream".into(), out.into_bytes())
        }

        proptest! {
            #[test]
            fn every_framing_reads_the_same_message_and_passes_only_what_was_kept(
                message in listing(),
                f in framing(),
                keep in any::<prop::sample::Index>(),
            ) {
                let (ct, body) = frame(&message, &f);
                let mut answer = Answer::of(Some(&ct), None, &body).unwrap();
                let read = answer_to(answer.clone().messages(), &json!(7));
                prop_assert_eq!(read.as_ref(), Some(&message));
                let n = message["result"]["tools"].as_array().unwrap().len();
                let kept = format!("t{}", keep.index(n));
                answer.edit(|m| {
                    if let Some(tools) = m.pointer_mut("/result/tools").and_then(Value::as_array_mut) {
                        tools.retain(|t| t["name"] == kept.as_str());
                    }
                });
                let out = answer.to_bytes();
                let again = Answer::of(Some(&ct), None, &out).unwrap().messages();
                let names: Vec<&Value> = again.iter()
                    .filter_map(|m| m.pointer("/result/tools").and_then(Value::as_array))
                    .flatten()
                    .map(|t| &t["name"])
                    .collect();
                let kept = json!(kept);
                prop_assert_eq!(names, vec![&kept]);
                // Nor in another encoding of the same answer.
                prop_assert!(Answer::of(Some(&ct), Some("gzip"), &body).is_err());
            }

            #[test]
            fn a_damaged_answer_is_refused_or_passed_only_as_read(
                message in listing(),
                f in framing(),
                flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
            ) {
                let (ct, mut body) = frame(&message, &f);
                for (at, byte) in &flips {
                    let i = at.index(body.len());
                    body[i] = *byte;
                }
                if let Ok(mut answer) = Answer::of(Some(&ct), None, &body) {
                    answer.edit(keep_only_b);
                    let out = answer.to_bytes();
                    // What passes on reads back as exactly what toolgate read and edited.
                    let again = Answer::of(Some(&ct), None, &out).unwrap();
                    prop_assert_eq!(again.messages(), answer.messages());
                }
            }
        }
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
