//! The example MCP server (`policies/mcp.toml`): a helpdesk's tickets over MCP's streamable
//! HTTP transport at `POST /mcp` (JSON answers, sessions by `Mcp-Session-Id`). It lists its
//! tools as the official Python SDK lists them, so `get_ticket` matches the pin the example
//! contract carries, and it offers `search_tickets`, which no contract names (toolgate hides it).

use std::collections::{BTreeMap, BTreeSet};

use http::{HeaderName, Method};
use serde_json::{json, Value};

use super::{Call, Reply};

/// The protocol versions the server speaks, newest first.
const VERSIONS: [&str; 3] = ["2025-06-18", "2025-03-26", "2024-11-05"];

/// What the helpdesk holds.
#[derive(Debug, Default)]
pub struct Tickets {
    /// Ticket number (`T-1` is 1) -> ticket.
    pub tickets: BTreeMap<u64, Value>,
    sessions: BTreeSet<String>,
}

/// The server's answer without a valid key.
pub fn unauthorized() -> Reply {
    Reply::json(
        401,
        &json!({"error": "invalid_token", "error_description": "Authentication required"}),
    )
    .with(
        http::header::WWW_AUTHENTICATE,
        "Bearer error=\"invalid_token\", error_description=\"Authentication required\"",
    )
}

/// The tools as the server lists them.
pub fn listed() -> Value {
    let args = |name: &str, props: Value, required: &[&str]| {
        let mut schema =
            json!({"properties": props, "title": format!("{name}Arguments"), "type": "object"});
        if !required.is_empty() {
            schema["required"] = json!(required);
        }
        schema
    };
    json!([
        {"name": "get_ticket", "description": "Read one ticket",
         "inputSchema": args("get_ticket", json!({"id": {"title": "Id", "type": "string"}}), &["id"])},
        {"name": "create_ticket", "description": "Create a ticket",
         "inputSchema": args("create_ticket", json!({"title": {"title": "Title", "type": "string"},
                                                    "priority": {"default": "low", "title": "Priority", "type": "string"}}), &["title"])},
        {"name": "delete_all_tickets", "description": "Delete every ticket",
         "inputSchema": args("delete_all_tickets", json!({}), &[])},
        {"name": "search_tickets", "description": "Search tickets",
         "inputSchema": args("search_tickets", json!({"query": {"title": "Query", "type": "string"}}), &["query"])},
    ])
}

fn rpc_error(status: u16, id: Value, code: i64, message: &str) -> Reply {
    Reply::json(
        status,
        &json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}}),
    )
}

/// A tool's answer: its text, and the object it is about.
fn tool_result(text: String, structured: Option<Value>, is_error: bool) -> Value {
    let mut r = json!({"content": [{"type": "text", "text": text}], "isError": is_error});
    if let Some(s) = structured {
        r["structuredContent"] = s;
    }
    r
}

fn number_of(id: &str) -> Option<u64> {
    id.strip_prefix("T-")?.parse().ok()
}

impl Tickets {
    /// Three tickets, two of them open.
    pub fn seeded() -> Tickets {
        let mut t = Tickets::default();
        for (title, priority, state, by) in [
            ("Printer on fire", "high", "open", "dana@acme.com"),
            ("VPN drops every hour", "normal", "open", "eli@acme.com"),
            ("A second monitor", "low", "closed", "fay@acme.com"),
        ] {
            t.add(title, priority, state, by);
        }
        t
    }

    fn add(&mut self, title: &str, priority: &str, state: &str, by: &str) -> Value {
        let n = self.tickets.keys().max().copied().unwrap_or(0) + 1;
        let ticket = json!({"id": format!("T-{n}"), "title": title, "priority": priority,
                            "state": state, "reported_by": by});
        self.tickets.insert(n, ticket.clone());
        ticket
    }

    /// Answers a call with a valid key.
    pub fn handle(&mut self, call: &Call) -> Reply {
        if call.path != "/mcp" {
            return Reply::json(404, &json!({"detail": "Not Found"}));
        }
        let session = call.header_str("mcp-session-id").map(str::to_string);
        match call.method {
            Method::POST => {}
            Method::DELETE => {
                return match session.is_some_and(|s| self.sessions.remove(&s)) {
                    true => Reply::empty(200),
                    false => rpc_error(404, json!("server-error"), -32600, "Session not found"),
                }
            }
            _ => return Reply::empty(405).with(http::header::ALLOW, "POST, DELETE"),
        }
        let Some(message) = call.json().filter(Value::is_object) else {
            return rpc_error(
                400,
                Value::Null,
                -32700,
                "Parse error: expected one JSON-RPC message",
            );
        };
        let initialize = message["method"] == "initialize";
        if !initialize {
            match &session {
                None => {
                    return rpc_error(
                        400,
                        json!("server-error"),
                        -32600,
                        "Bad Request: Missing session ID",
                    )
                }
                Some(s) if !self.sessions.contains(s) => {
                    return rpc_error(404, json!("server-error"), -32600, "Session not found")
                }
                Some(_) => {}
            }
        }
        // Notifications and a client's answers are taken without a reply.
        let (Some(id), Some(method)) = (message.get("id").cloned(), message["method"].as_str())
        else {
            return Reply::empty(202);
        };
        let params = &message["params"];
        let result = match method {
            "initialize" => Ok(self.initialize(params)),
            "ping" => Ok(json!({})),
            "tools/list" => Ok(json!({"tools": listed()})),
            "tools/call" => Ok(self.call(params)),
            other => Err(format!("Method not found: {other}")),
        };
        let reply = match result {
            Ok(result) => Reply::json(200, &json!({"jsonrpc": "2.0", "id": id, "result": result})),
            Err(message) => rpc_error(200, id, -32601, &message),
        };
        match initialize {
            true => {
                let s = hex::encode(rand::random::<[u8; 16]>());
                self.sessions.insert(s.clone());
                reply.with(HeaderName::from_static("mcp-session-id"), s)
            }
            false => reply,
        }
    }

    fn initialize(&self, params: &Value) -> Value {
        let asked = params["protocolVersion"].as_str().unwrap_or("");
        let version = VERSIONS
            .into_iter()
            .find(|v| *v == asked)
            .unwrap_or(VERSIONS[0]);
        json!({"protocolVersion": version,
               "capabilities": {"tools": {"listChanged": false}},
               "serverInfo": {"name": "tickets", "version": "1.4.0"},
               "instructions": "A helpdesk's tickets: read one, open one, search them."})
    }

    fn call(&mut self, params: &Value) -> Value {
        let args = &params["arguments"];
        let text = |k: &str| args[k].as_str().map(str::to_string);
        match params["name"].as_str().unwrap_or("") {
            "get_ticket" => match text("id")
                .as_deref()
                .and_then(number_of)
                .and_then(|n| self.tickets.get(&n))
            {
                Some(t) => tool_result(
                    format!(
                        "{} ({}, priority {}): {}, reported by {}",
                        t["id"].as_str().unwrap_or(""),
                        t["state"].as_str().unwrap_or(""),
                        t["priority"].as_str().unwrap_or(""),
                        t["title"].as_str().unwrap_or(""),
                        t["reported_by"].as_str().unwrap_or("")
                    ),
                    Some(t.clone()),
                    false,
                ),
                None => tool_result(
                    format!("no ticket {}", text("id").unwrap_or_default()),
                    None,
                    true,
                ),
            },
            "create_ticket" => match text("title").filter(|t| !t.is_empty()) {
                Some(title) => {
                    let priority = text("priority").unwrap_or_else(|| "low".into());
                    let t = self.add(&title, &priority, "open", "acme-support-bot");
                    let id = t["id"].as_str().unwrap_or("").to_string();
                    tool_result(
                        format!("created ticket {id}: {title} (priority {priority})"),
                        Some(t),
                        false,
                    )
                }
                None => tool_result(
                    "Error executing tool create_ticket: title is required".into(),
                    None,
                    true,
                ),
            },
            "delete_all_tickets" => {
                let n = self.tickets.len();
                self.tickets.clear();
                tool_result(format!("deleted {n} tickets"), None, false)
            }
            "search_tickets" => {
                let q = text("query").unwrap_or_default().to_lowercase();
                let found: Vec<Value> = self
                    .tickets
                    .values()
                    .filter(|t| {
                        t["title"]
                            .as_str()
                            .is_some_and(|s| s.to_lowercase().contains(&q))
                    })
                    .cloned()
                    .collect();
                let ids: Vec<&str> = found.iter().filter_map(|t| t["id"].as_str()).collect();
                tool_result(
                    format!("found {}", ids.join(", ")),
                    Some(json!({"tickets": found})),
                    false,
                )
            }
            other => tool_result(format!("Unknown tool: {other}"), None, true),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn post(session: Option<&str>, message: Value) -> Call {
        let mut c = Call::new(Method::POST, "/mcp")
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(message.to_string());
        if let Some(s) = session {
            c = c.header("mcp-session-id", s);
        }
        c
    }

    #[test]
    fn get_ticket_is_listed_as_the_example_contract_pinned_it() {
        let tools = listed();
        let get = tools
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == "get_ticket")
            .unwrap();
        assert_eq!(
            crate::mcp::pin_of(get),
            "sha256:f23a114d3a8c7c8f07e59aaf8771d995a3482c4c080e0feec1665b7a3ba9a3f0"
        );
    }

    #[test]
    fn a_session_lists_calls_and_ends() {
        let mut t = Tickets::seeded();
        let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize",
                          "params": {"protocolVersion": "2025-03-26", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}});
        let got = t.handle(&post(None, init));
        assert_eq!(got.body_json()["result"]["protocolVersion"], "2025-03-26");
        let session = got.header("mcp-session-id").unwrap().to_string();
        let note = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
        assert_eq!(t.handle(&post(Some(session.as_str()), note)).status, 202);
        let list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"});
        let got = t.handle(&post(Some(session.as_str()), list.clone()));
        assert_eq!(
            got.body_json()["result"]["tools"].as_array().map(Vec::len),
            Some(4)
        );
        let call = json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
                          "params": {"name": "get_ticket", "arguments": {"id": "T-1"}}});
        let got = t.handle(&post(Some(session.as_str()), call)).body_json();
        assert_eq!(got["id"], 3);
        assert!(got["result"]["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("Printer on fire"));
        let create = json!({"jsonrpc": "2.0", "id": 4, "method": "tools/call",
                            "params": {"name": "create_ticket", "arguments": {"title": "Monitor flickers", "priority": "normal"}}});
        let got = t.handle(&post(Some(session.as_str()), create)).body_json();
        assert_eq!(got["result"]["structuredContent"]["id"], "T-4");
        // Without a session, or with an unknown one, nothing but initialize is answered.
        assert_eq!(t.handle(&post(None, list.clone())).status, 400);
        assert_eq!(t.handle(&post(Some("nope"), list.clone())).status, 404);
        let end = Call::new(Method::DELETE, "/mcp").header("mcp-session-id", &session);
        assert_eq!(t.handle(&end).status, 200);
        assert_eq!(t.handle(&post(Some(session.as_str()), list)).status, 404);
        assert_eq!(t.handle(&Call::new(Method::GET, "/mcp")).status, 405);
        assert_eq!(unauthorized().status, 401);
    }
}
