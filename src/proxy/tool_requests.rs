//! The tool calls a model answer asks for (issue 32, DESIGN section 12's model calls), read as
//! the answer passes: OpenAI Chat Completions (`choices[].message.tool_calls`, and streamed
//! `delta.tool_calls` fragments put back together by index), OpenAI Responses (`function_call`
//! output items, whole or from the stream's `response.output_item.done` and
//! `response.completed` events), Anthropic Messages (`tool_use` content blocks, and streamed
//! `input_json_delta` fragments). What is kept is bounded by the model tool's `model_answer`
//! ([`ModelAnswerLimits`]): so many calls, so many bytes of each call's arguments, and the
//! model's own text only when a policy asks for it (none by default).

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use crate::policy::ModelAnswerLimits;

/// One tool call as it is put together.
#[derive(Debug, Default)]
struct Partial {
    id: Option<String>,
    name: String,
    /// The arguments as JSON text, as they arrived (fragments appended).
    arguments: String,
    /// The arguments arrived whole as a JSON value (Anthropic's `input`).
    input: Option<Value>,
    cut: bool,
}

/// The tool calls seen in one model answer, by their place in it.
#[derive(Debug, Default)]
pub struct ToolRequests {
    limits: ModelAnswerLimits,
    answer_id: Option<String>,
    /// (choice or content index, tool call index) → the call.
    calls: BTreeMap<(u64, u64), Partial>,
    dropped: bool,
    /// The model's own text, when the limits keep some.
    text: String,
    text_cut: bool,
}

impl ToolRequests {
    /// Reads answers keeping what `limits` allow.
    pub fn new(limits: ModelAnswerLimits) -> ToolRequests {
        ToolRequests {
            limits,
            ..Default::default()
        }
    }

    /// Reads one JSON value: a whole answer, or one event of a stream.
    pub fn see(&mut self, v: &Value) {
        self.answer_id_of(v);
        match v["type"].as_str() {
            Some("message_start") => self.anthropic_message(&v["message"]),
            Some("message") => self.anthropic_message(v),
            Some("content_block_start") => {
                self.anthropic_block(v["index"].as_u64().unwrap_or(0), &v["content_block"])
            }
            Some("content_block_delta") => self.anthropic_delta(v),
            Some("response.output_item.done") => self.responses_item(&v["item"]),
            Some("response.completed") => self.responses(&v["response"]),
            _ if v["object"] == "response" => self.responses(v),
            _ => self.chat(v),
        }
    }

    fn answer_id_of(&mut self, v: &Value) {
        if self.answer_id.is_some() {
            return;
        }
        let id = v["id"]
            .as_str()
            .or_else(|| v["message"]["id"].as_str())
            .or_else(|| v["response"]["id"].as_str());
        self.answer_id = id.map(str::to_string);
    }

    /// The call at `at`, made if there is room.
    fn call(&mut self, at: (u64, u64)) -> Option<&mut Partial> {
        if !self.calls.contains_key(&at) && self.calls.len() >= self.limits.tool_calls {
            self.dropped = true;
            return None;
        }
        Some(self.calls.entry(at).or_default())
    }

    /// Chat Completions: whole (`message.tool_calls`) or streamed (`delta.tool_calls`).
    fn chat(&mut self, v: &Value) {
        for (i, choice) in v["choices"].as_array().into_iter().flatten().enumerate() {
            let choice_at = choice["index"].as_u64().unwrap_or(i as u64);
            let text = choice["delta"]["content"].as_str();
            self.text(text.or_else(|| choice["message"]["content"].as_str()));
            let (calls, streamed) = match choice["delta"]["tool_calls"].as_array() {
                Some(calls) => (calls, true),
                None => match choice["message"]["tool_calls"].as_array() {
                    Some(calls) => (calls, false),
                    None => continue,
                },
            };
            let max = self.limits.argument_bytes;
            for (j, tc) in calls.iter().enumerate() {
                let at = (choice_at, tc["index"].as_u64().unwrap_or(j as u64));
                let Some(p) = self.call(at) else { continue };
                if let Some(id) = tc["id"].as_str() {
                    p.id = Some(id.to_string());
                }
                if let Some(name) = tc["function"]["name"].as_str() {
                    match streamed {
                        true => p.name.push_str(name),
                        false => p.name = name.to_string(),
                    }
                }
                if let Some(args) = tc["function"]["arguments"].as_str() {
                    if !streamed {
                        p.arguments.clear();
                    }
                    append(p, args, max);
                }
            }
        }
    }

    /// Responses: the `function_call` items of a whole response, and its text (read from the
    /// whole response only, which a stream also ends with).
    fn responses(&mut self, r: &Value) {
        for item in r["output"].as_array().into_iter().flatten() {
            self.responses_item(item);
            if item["type"] == "message" {
                for part in item["content"].as_array().into_iter().flatten() {
                    if part["type"] == "output_text" {
                        self.text(part["text"].as_str());
                    }
                }
            }
        }
    }

    fn responses_item(&mut self, item: &Value) {
        if item["type"] != "function_call" {
            return;
        }
        let id = item["call_id"].as_str().or_else(|| item["id"].as_str());
        // The same call seen whole twice (its item, then the completed response) is one call.
        let at = self
            .calls
            .iter()
            .find(|(_, p)| p.id.as_deref() == id && id.is_some())
            .map(|(at, _)| *at)
            .unwrap_or((0, self.calls.len() as u64));
        let max = self.limits.argument_bytes;
        let Some(p) = self.call(at) else { return };
        p.id = id.map(str::to_string);
        p.name = item["name"].as_str().unwrap_or("").to_string();
        p.arguments.clear();
        append(p, item["arguments"].as_str().unwrap_or(""), max);
    }

    /// Messages: the `tool_use` blocks of a whole message.
    fn anthropic_message(&mut self, m: &Value) {
        for (i, block) in m["content"].as_array().into_iter().flatten().enumerate() {
            self.anthropic_block(i as u64, block);
        }
    }

    fn anthropic_block(&mut self, index: u64, block: &Value) {
        if block["type"] == "text" {
            self.text(block["text"].as_str());
        }
        if block["type"] != "tool_use" {
            return;
        }
        let Some(p) = self.call((index, 0)) else {
            return;
        };
        p.id = block["id"].as_str().map(str::to_string);
        p.name = block["name"].as_str().unwrap_or("").to_string();
        // A streamed block starts with an empty `input` its deltas then fill.
        match &block["input"] {
            Value::Object(m) if m.is_empty() => {}
            Value::Null => {}
            input => p.input = Some(input.clone()),
        }
    }

    fn anthropic_delta(&mut self, v: &Value) {
        if v["delta"]["type"] == "text_delta" {
            self.text(v["delta"]["text"].as_str());
        }
        if v["delta"]["type"] != "input_json_delta" {
            return;
        }
        let at = (v["index"].as_u64().unwrap_or(0), 0);
        if let Some(p) = self.calls.get_mut(&at) {
            let max = self.limits.argument_bytes;
            append(p, v["delta"]["partial_json"].as_str().unwrap_or(""), max);
        }
    }

    /// Keeps the model's text, within `text_bytes` (none by default).
    fn text(&mut self, text: Option<&str>) {
        let Some(text) = text.filter(|_| self.limits.text_bytes > 0) else {
            return;
        };
        if self.text_cut {
            return;
        }
        let room = self.limits.text_bytes.saturating_sub(self.text.len());
        let kept = cut(text, room);
        self.text.push_str(kept);
        if kept.len() < text.len() {
            self.text_cut = true;
            unword(&mut self.text);
        }
    }

    /// What the audit records: the answer's id and each tool call (name, id, arguments as
    /// JSON, or as text when they are not JSON or were cut). `None` when the answer asked for
    /// no tool.
    pub fn finish(self) -> Option<Value> {
        if self.calls.is_empty() && self.text.is_empty() && !self.dropped {
            return None;
        }
        let max = self.limits.argument_bytes;
        let calls: Vec<Value> = self.calls.into_values().map(|p| recorded(p, max)).collect();
        let mut out = Map::new();
        out.insert("answer_id".into(), json!(self.answer_id));
        out.insert("tool_calls".into(), Value::Array(calls));
        if self.dropped {
            out.insert("more_tool_calls_not_recorded".into(), Value::Bool(true));
        }
        if !self.text.is_empty() {
            out.insert("text".into(), Value::String(self.text));
        }
        if self.text_cut {
            out.insert("text_cut_at".into(), json!(self.limits.text_bytes));
        }
        Some(Value::Object(out))
    }
}

/// The longest start of `s` of at most `room` bytes that ends on a character boundary.
fn cut(s: &str, room: usize) -> &str {
    let mut end = room.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Takes a cut word off the end of what is kept: a key cut in two is no longer one the audit's
/// redaction knows, so its first half would be kept in clear. What a cut keeps ends before the
/// word (letters, digits and the characters keys and base64 use) the cut fell in.
fn unword(kept: &mut String) {
    let word = |c: char| c.is_alphanumeric() || matches!(c, '_' | '-' | '+' | '/' | '=' | '.');
    let end = kept.trim_end_matches(word).len();
    kept.truncate(end);
}

/// Appends an arguments fragment, within `max` bytes.
fn append(p: &mut Partial, fragment: &str, max: usize) {
    if p.cut {
        return;
    }
    let kept = cut(fragment, max.saturating_sub(p.arguments.len()));
    p.arguments.push_str(kept);
    if kept.len() < fragment.len() {
        p.cut = true;
        unword(&mut p.arguments);
    }
}

fn recorded(mut p: Partial, max: usize) -> Value {
    // A whole input (Anthropic's `input`) is bounded as streamed arguments are.
    let whole = p.input.as_ref().map(Value::to_string);
    if let Some(text) = whole.filter(|t| t.len() > max) {
        p.input = None;
        append(&mut p, &text, max);
    }
    let arguments = match (p.input, p.cut) {
        (Some(input), _) => input,
        (None, false) if p.arguments.trim().is_empty() => json!({}),
        (None, false) => serde_json::from_str(&p.arguments).unwrap_or(Value::String(p.arguments)),
        (None, true) => Value::String(p.arguments),
    };
    let mut call = json!({"name": p.name, "id": p.id, "arguments": arguments});
    if p.cut {
        call["arguments_cut_at"] = json!(max);
    }
    call
}

#[cfg(test)]
mod tests;
