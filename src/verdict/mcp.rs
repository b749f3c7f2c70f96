//! A request to an MCP endpoint, evaluated dry: the endpoint's checks, then a `tools/call`
//! through the same checks as a contracted path, its arguments in the place of a body. The
//! refusals here are the proxy's MCP adapter's own (it calls them).

use std::sync::Arc;

use http::Method;
use serde_json::Value;

use super::{
    decide, lend, parts_of, tool_switch, within_limit, Asked, Outcome, Target, Trail, World,
};
use crate::checks::{authorize, forwarded_headers, validation};
use crate::error::Refusal;
use crate::mcp::Message;
use crate::policy::{Agent, Tool};

/// The tool the agent holds on an MCP endpoint serving `tools` (what is not a tool call is sent
/// with its credential); an endpoint takes no query string.
pub(crate) fn endpoint_via(
    agent: &Agent,
    tools: &[Arc<Tool>],
    host: &str,
    path: &str,
    query: Option<&str>,
) -> Result<Arc<Tool>, Refusal> {
    let Some(via) = tools.iter().find(|t| agent.may_use(&t.name)).cloned() else {
        return Err(Refusal::policy(format!(
            "agent {} holds no tool on the MCP server at {host}{path}; ask for a contract for the tool you need",
            agent.id,
        )));
    };
    if query.is_some() {
        return Err(validation(
            "an MCP endpoint takes no query string: send everything in the JSON-RPC message",
        ));
    }
    Ok(via)
}

/// What an MCP endpoint's method asks: messages (POST, `None`), the server's stream (GET) or
/// the end of a session (DELETE); anything else is refused.
pub(crate) fn endpoint_method(method: &Method) -> Result<Option<&'static str>, Refusal> {
    match *method {
        Method::POST => Ok(None),
        Method::GET => Ok(Some("stream")),
        Method::DELETE => Ok(Some("end of session")),
        _ => Err(Refusal::policy(
            "an MCP endpoint takes POST (messages), GET (the server's stream) and DELETE (the end of a session)",
        )),
    }
}

/// The contract of MCP tool `name` on the endpoint.
pub(crate) fn contracted(
    tools: &[Arc<Tool>],
    name: &str,
    host: &str,
    path: &str,
) -> Result<Arc<Tool>, Refusal> {
    tools
        .iter()
        .find(|t| t.mcp.as_ref().is_some_and(|m| m.name == name))
        .cloned()
        .ok_or_else(|| {
            Refusal::policy(format!(
                "no contract allows MCP tool {name:?} on {host}{path}; call only the tools tools/list shows you"
            ))
        })
}

/// A JSON-RPC method toolgate does not pass.
pub(crate) fn other_method(method: &str) -> Refusal {
    Refusal::policy(format!(
        "MCP method {method} is not allowed through toolgate: only tools/call of contracted tools, tools/list and session set-up pass"
    ))
}

/// A message that is not JSON-RPC 2.0.
pub(crate) fn invalid_message(why: &str) -> Refusal {
    validation(format!("not a JSON-RPC 2.0 message: {why}"))
}

/// A request to the MCP endpoint serving `tools`.
pub(super) fn evaluate(
    asked: &Asked,
    world: &World,
    agent: Arc<Agent>,
    tools: Vec<Arc<Tool>>,
    at: &Target<'_>,
    t: &mut Trail,
) -> Result<Outcome, Refusal> {
    let agent = lend(agent, world, |name| tools.iter().any(|t| t.name == name));
    let via = endpoint_via(&agent, &tools, at.host, at.path, asked.url.query());
    let via = t.check("mcp endpoint", via, |v| {
        format!("{} tool(s) served; the agent holds {}", tools.len(), v.name)
    })?;
    let what = t.check("mcp method", endpoint_method(&asked.method), |w| {
        w.unwrap_or("messages").to_string()
    })?;
    if what.is_some() {
        return passed(&agent, &via, asked, t);
    }
    t.check("body size", within_limit(&via, asked), |n| {
        format!("{n} bytes")
    })?;
    let parsed = crate::policy::contract::parse_json_strict(&asked.body)
        .map_err(|e| validation(format!("an MCP message must be JSON: {e}")));
    let message = t.check("mcp message", parsed, |_| "JSON".into())?;
    if message.is_array() {
        return Ok(Outcome::Unsupported(
            "a JSON-RPC batch: the proxy handles each message as a request of its own; write one case per message".into(),
        ));
    }
    match crate::mcp::classify(&message) {
        Message::SetUp | Message::Reply | Message::List { .. } => passed(&agent, &via, asked, t),
        Message::Call {
            name, arguments, ..
        } => {
            let tool = t.check("match", contracted(&tools, &name, at.host, at.path), |c| {
                format!("tool {} (MCP tool {name})", c.name)
            })?;
            call(asked, world, &agent, &tool, &arguments, t)
        }
        Message::Other { method, .. } => Err(other_method(&method)),
        Message::Invalid { why, .. } => Err(invalid_message(&why)),
    }
}

/// A message passed on as it is (set-up, a list, the stream), with the credential of the tool
/// the agent holds on the endpoint.
fn passed(agent: &Agent, via: &Tool, asked: &Asked, t: &mut Trail) -> Result<Outcome, Refusal> {
    let no_params = Default::default();
    let credential = t.check("authorize", authorize(agent, via, &no_params), |c| {
        super::credential_note(agent, c.as_deref())
    })?;
    t.check("headers", forwarded_headers(via, &asked.headers), |h| {
        format!(
            "{} header(s) forwarded; passed on, not a tool call",
            h.len()
        )
    })?;
    Ok(Outcome::Forward {
        credential: credential.map(|c| c.name.clone()),
    })
}

/// A `tools/call` of a contracted tool: its kill switch, the checks of its arguments, decide.
fn call(
    asked: &Asked,
    world: &World,
    agent: &Agent,
    tool: &Arc<Tool>,
    arguments: &Value,
    t: &mut Trail,
) -> Result<Outcome, Refusal> {
    t.tool = Some(tool.name.clone());
    t.check("kill switch", tool_switch(world, tool), |()| {
        format!(
            "tool {} is not disabled (its pin is not checked)",
            tool.name
        )
    })?;
    let parts = parts_of(asked);
    let checked = super::arguments(agent, tool, &parts, arguments);
    let (credential, amount) = t.check("arguments", checked, |(c, _)| {
        format!(
            "pass the schema and rules; {}",
            super::credential_note(agent, c.as_deref())
        )
    })?;
    t.check("headers", forwarded_headers(tool, &asked.headers), |h| {
        format!("{} header(s) forwarded", h.len())
    })?;
    let call = super::Decided {
        credential,
        amount,
        spent: world.spent,
    };
    decide(agent, tool, &asked.headers, call, t)
}
