//! The tool calls a model answer asks for (issue 32, DESIGN section 12's model calls), read as
//! the answer passes: OpenAI Chat Completions (`choices[].message.tool_calls`, and streamed
//! `delta.tool_calls` fragments put back together by index), OpenAI Responses (`function_call`
//! output items, whole or from the stream's `response.output_item.done` and
//! `response.completed` events), Anthropic Messages (`tool_use` content blocks, and streamed
//! `input_json_delta` fragments). The model's own text is never kept. What is kept is bounded:
//! at most [`MAX_CALLS`] calls, each call's arguments at most [`MAX_ARGUMENTS`] bytes.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

/// Tool calls kept per answer.
pub const MAX_CALLS: usize = 32;
/// Bytes of one call's arguments kept (as JSON text).
pub const MAX_ARGUMENTS: usize = 8 * 1024;

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
    answer_id: Option<String>,
    /// (choice or content index, tool call index) → the call.
    calls: BTreeMap<(u64, u64), Partial>,
    dropped: bool,
}

impl ToolRequests {
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
        if !self.calls.contains_key(&at) && self.calls.len() >= MAX_CALLS {
            self.dropped = true;
            return None;
        }
        Some(self.calls.entry(at).or_default())
    }

    /// Chat Completions: whole (`message.tool_calls`) or streamed (`delta.tool_calls`).
    fn chat(&mut self, v: &Value) {
        for (i, choice) in v["choices"].as_array().into_iter().flatten().enumerate() {
            let choice_at = choice["index"].as_u64().unwrap_or(i as u64);
            let (calls, streamed) = match choice["delta"]["tool_calls"].as_array() {
                Some(calls) => (calls, true),
                None => match choice["message"]["tool_calls"].as_array() {
                    Some(calls) => (calls, false),
                    None => continue,
                },
            };
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
                    append(p, args);
                }
            }
        }
    }

    /// Responses: the `function_call` items of a whole response.
    fn responses(&mut self, r: &Value) {
        for item in r["output"].as_array().into_iter().flatten() {
            self.responses_item(item);
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
        let Some(p) = self.call(at) else { return };
        p.id = id.map(str::to_string);
        p.name = item["name"].as_str().unwrap_or("").to_string();
        p.arguments.clear();
        append(p, item["arguments"].as_str().unwrap_or(""));
    }

    /// Messages: the `tool_use` blocks of a whole message.
    fn anthropic_message(&mut self, m: &Value) {
        for (i, block) in m["content"].as_array().into_iter().flatten().enumerate() {
            self.anthropic_block(i as u64, block);
        }
    }

    fn anthropic_block(&mut self, index: u64, block: &Value) {
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
        if v["delta"]["type"] != "input_json_delta" {
            return;
        }
        let at = (v["index"].as_u64().unwrap_or(0), 0);
        if let Some(p) = self.calls.get_mut(&at) {
            append(p, v["delta"]["partial_json"].as_str().unwrap_or(""));
        }
    }

    /// What the audit records: the answer's id and each tool call (name, id, arguments as
    /// JSON, or as text when they are not JSON or were cut). `None` when the answer asked for
    /// no tool.
    pub fn finish(self) -> Option<Value> {
        if self.calls.is_empty() {
            return None;
        }
        let calls: Vec<Value> = self.calls.into_values().map(recorded).collect();
        let mut out = Map::new();
        out.insert("answer_id".into(), json!(self.answer_id));
        out.insert("tool_calls".into(), Value::Array(calls));
        if self.dropped {
            out.insert("more_tool_calls_not_recorded".into(), Value::Bool(true));
        }
        Some(Value::Object(out))
    }
}

/// Appends an arguments fragment, within the bound.
fn append(p: &mut Partial, fragment: &str) {
    let room = MAX_ARGUMENTS.saturating_sub(p.arguments.len());
    if fragment.len() > room {
        let mut end = room;
        while !fragment.is_char_boundary(end) {
            end -= 1;
        }
        p.arguments.push_str(&fragment[..end]);
        p.cut = true;
    } else {
        p.arguments.push_str(fragment);
    }
}

fn recorded(p: Partial) -> Value {
    let arguments = match (p.input, p.cut) {
        (Some(input), _) => input,
        (None, false) if p.arguments.trim().is_empty() => json!({}),
        (None, false) => serde_json::from_str(&p.arguments).unwrap_or(Value::String(p.arguments)),
        (None, true) => Value::String(p.arguments),
    };
    let mut call = json!({"name": p.name, "id": p.id, "arguments": arguments});
    if p.cut {
        call["arguments_cut_at"] = json!(MAX_ARGUMENTS);
    }
    call
}

#[cfg(test)]
mod tests;
