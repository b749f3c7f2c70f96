//! `toolgate mcp pin https://HOST/PATH`: what an MCP server lists now, with the pin of each tool
//! and how it stands against the contracts. toolgate opens a session of its own with the
//! credential the contracts give the endpoint (the same one calls get), lists the tools (every
//! page), and ends the session.

use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request};
use http_body_util::BodyExt;
use serde_json::{json, Value};

use crate::base::body;
use crate::policy::{Credential, Policy, Tool};
use crate::upstream::Upstream;

/// How many pages of `tools/list` are read at most.
const MAX_PAGES: usize = 100;

/// Where the server is: host, port and endpoint path, from `https://HOST[:PORT]/PATH`.
/// An MCP server's endpoint: where its messages are posted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub path: String,
}

pub fn parse_endpoint(url: &str) -> Result<Endpoint, String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("{url} is not a URL: {e}"))?;
    if uri.scheme_str() != Some("https") {
        return Err(format!("{url}: an MCP endpoint is reached over https"));
    }
    let host = uri
        .host()
        .ok_or_else(|| format!("{url} names no host"))?
        .trim_matches(|c| c == '[' || c == ']')
        .to_ascii_lowercase();
    let path = match uri.path() {
        "" => "/".to_string(),
        p => p.to_string(),
    };
    let port = uri.port_u16().unwrap_or(443);
    Ok(Endpoint { host, port, path })
}

/// The tools contracted at an endpoint, and the credential toolgate uses to reach it.
pub type Contracted = (Vec<Arc<Tool>>, Option<Arc<Credential>>);

/// The endpoint's tools and the credential for `environment` (or the one environment they all
/// name).
pub fn contracted(
    policy: &Policy,
    endpoint: &Endpoint,
    environment: Option<&str>,
) -> Result<Contracted, String> {
    let (host, port, path) = (
        endpoint.host.as_str(),
        endpoint.port,
        endpoint.path.as_str(),
    );
    let tools = policy.mcp_endpoint(host, port, path);
    if tools.is_empty() {
        return Err(format!(
            "no MCP tool is contracted at https://{host}:{port}{path}"
        ));
    }
    let mut environments: Vec<&String> = tools.iter().flat_map(|t| t.credentials.keys()).collect();
    environments.sort();
    environments.dedup();
    let environment = match (environment, environments.as_slice()) {
        (Some(e), _) => e.to_string(),
        (None, []) => return Ok((tools, None)),
        (None, [one]) => one.to_string(),
        (None, many) => {
            let names: Vec<&str> = many.iter().map(|s| s.as_str()).collect();
            return Err(format!(
                "the contracts name credentials for several environments ({}): choose one with --environment",
                names.join(", ")
            ));
        }
    };
    let credential = tools
        .iter()
        .find_map(|t| t.credentials.get(&environment).cloned())
        .ok_or_else(|| {
            format!("no contract at this endpoint has a credential for {environment}")
        })?;
    Ok((tools, Some(credential)))
}

/// An MCP session of toolgate's own with the server.
struct Session<'a> {
    upstream: &'a Upstream,
    host: &'a str,
    port: u16,
    path: &'a str,
    headers: HeaderMap,
    next_id: u64,
}

impl Session<'_> {
    /// Posts a message; its answer (for a request) and the answer's headers.
    async fn post(&mut self, mut message: Value) -> Result<(Option<Value>, HeaderMap), String> {
        let id = match message.get("method").is_some() && message.get("id").is_some() {
            true => {
                self.next_id += 1;
                message["id"] = json!(format!("toolgate-pin-{}", self.next_id));
                Some(message["id"].clone())
            }
            false => None,
        };
        let mut req = Request::new(body::full(Bytes::from(message.to_string())));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = self.path.parse().map_err(|e| format!("{e}"))?;
        *req.headers_mut() = self.headers.clone();
        let resp = self
            .upstream
            .forward(self.host, self.port, req)
            .await
            .map_err(|f| f.refusal.message)?;
        let (parts, body) = resp.into_parts();
        let bytes = body
            .collect()
            .await
            .map_err(|e| format!("the server's answer could not be read: {e}"))?
            .to_bytes();
        if !parts.status.is_success() {
            return Err(format!(
                "the server answered {}: {}",
                parts.status,
                String::from_utf8_lossy(&bytes)
                    .chars()
                    .take(300)
                    .collect::<String>()
            ));
        }
        let answer = match id {
            Some(id) => {
                let read = crate::mcp::Answer::from_headers(&parts.headers, &bytes)
                    .map_err(|e| format!("the server's answer could not be read: {e}"))?;
                crate::mcp::answer_to(read.messages(), &id)
            }
            None => None,
        };
        if let Some(error) = answer.as_ref().and_then(|a| a.get("error")) {
            return Err(format!("the server refused: {error}"));
        }
        Ok((answer, parts.headers))
    }
}

/// Every tool the server lists (all pages).
pub async fn list(
    upstream: &Upstream,
    endpoint: &Endpoint,
    credential: Option<&Credential>,
) -> Result<Vec<Value>, String> {
    let (host, port, path) = (
        endpoint.host.as_str(),
        endpoint.port,
        endpoint.path.as_str(),
    );
    let mut headers = HeaderMap::new();
    headers.insert(
        header::ACCEPT,
        HeaderValue::from_static("application/json, text/event-stream"),
    );
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(c) = credential {
        if c.source().is_some() {
            return Err(format!(
                "credential {} takes the token of the person a call acts for, and listing the server's tools acts for no one: pin with an environment whose credential is shared (--environment)",
                c.name
            ));
        }
        headers.insert(c.header.clone(), c.header_value());
    }
    let mut session = Session {
        upstream,
        host,
        port,
        path,
        headers,
        next_id: 0,
    };
    let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "toolgate-mcp-pin", "version": env!("CARGO_PKG_VERSION")}}});
    let (answer, got) = session.post(init).await?;
    if let Some(id) = got.get("mcp-session-id") {
        session.headers.insert("mcp-session-id", id.clone());
    }
    let version = answer
        .as_ref()
        .and_then(|a| a.pointer("/result/protocolVersion"))
        .and_then(Value::as_str)
        .and_then(|v| HeaderValue::from_str(v).ok());
    if let Some(v) = version {
        session.headers.insert("mcp-protocol-version", v);
    }
    session
        .post(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
        .await?;
    let mut tools = Vec::new();
    let mut cursor: Option<Value> = None;
    for _ in 0..MAX_PAGES {
        let mut ask = json!({"jsonrpc": "2.0", "id": 0, "method": "tools/list"});
        if let Some(c) = cursor.take() {
            ask["params"] = json!({"cursor": c});
        }
        let (answer, _) = session.post(ask).await?;
        let result = answer
            .and_then(|a| a.get("result").cloned())
            .unwrap_or_default();
        tools.extend(result["tools"].as_array().cloned().unwrap_or_default());
        match result.get("nextCursor") {
            Some(c) if !c.is_null() => cursor = Some(c.clone()),
            _ => break,
        }
    }
    end(&session).await;
    Ok(tools)
}

/// Ends the session (best effort: a server may not keep sessions).
async fn end(session: &Session<'_>) {
    if !session.headers.contains_key("mcp-session-id") {
        return;
    }
    let mut req = Request::new(body::full(Bytes::new()));
    *req.method_mut() = Method::DELETE;
    if let Ok(uri) = session.path.parse() {
        *req.uri_mut() = uri;
    }
    *req.headers_mut() = session.headers.clone();
    let _ = session
        .upstream
        .forward(session.host, session.port, req)
        .await;
}

/// One line per tool: its name, its pin now, and how that stands against the contracts.
pub fn report(listed: &[Value], contracts: &[Arc<Tool>]) -> Vec<String> {
    let mut lines = Vec::new();
    for t in listed {
        let name = t.get("name").and_then(Value::as_str).unwrap_or("");
        let pin = crate::mcp::pin_of(t);
        let contract = contracts
            .iter()
            .find(|c| c.mcp.as_ref().is_some_and(|m| m.name == name));
        let stands = match contract.map(|c| (c, c.mcp.as_ref().and_then(|m| m.pin.as_ref()))) {
            None => "not contracted (hidden from agents, refused)".to_string(),
            Some((c, None)) => format!("contracted as {}, not pinned", c.name),
            Some((c, Some(p))) if *p == pin => format!("contracted as {}, pin matches", c.name),
            Some((c, Some(p))) => format!(
                "contracted as {}, pinned to {p}: CHANGED (hidden and refused until the pin is updated)",
                c.name
            ),
        };
        lines.push(format!("{name}\t{pin}\t{stands}"));
    }
    for c in contracts {
        let Some(m) = &c.mcp else { continue };
        let listed_here = listed
            .iter()
            .any(|t| t.get("name").and_then(Value::as_str) == Some(m.name.as_str()));
        if !listed_here {
            lines.push(format!(
                "{}\t-\tcontracted as {}, but the server does not list it",
                m.name, c.name
            ));
        }
    }
    lines
}
