//! The policy phases that decide about a request without sending it: headers, permissions,
//! query and body validation, rules, the idempotency key and the budget field. The proxy runs
//! them on every request; a commit runs them again on the stored request (`recheck`).

pub(crate) mod graphql;

use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderMap, Method, Request};
use serde_json::{json, Value};

use crate::base::strip_hop_by_hop;
use crate::error::{Code, Refusal};
use crate::policy::contract::{self, MAX_DEPTH};
use crate::policy::{
    check_path, Agent, BodyFormat, Credential, Idempotency, Policy, SideEffects, Tool,
};

/// Headers addressed to toolgate itself, never forwarded.
pub(crate) const CONTROL_HEADERS: [&str; 3] = [
    "toolgate-job",
    "toolgate-dry-run",
    crate::identity::ASSERTION_HEADER,
];

/// Headers in which agents (or their SDKs) carry API credentials. Removed from every request:
/// the only credential that reaches an upstream is the one toolgate injects.
pub(crate) const AGENT_CREDENTIAL_HEADERS: [&str; 6] = [
    "authorization",
    "x-api-key",
    "api-key",
    "x-auth-token",
    "x-goog-api-key",
    "private-token",
];

/// Headers forwarded to every tool: what HTTP clients and the official SDKs send. Anything else
/// an agent sends is dropped unless the tool names it in `headers`. `Accept-Encoding` is not
/// among them: toolgate must read answers in clear to scrub secrets from them.
pub(crate) const FORWARDED_HEADERS: [&str; 20] = [
    "accept",
    "accept-language",
    "cache-control",
    "content-type",
    "content-length",
    "user-agent",
    "idempotency-key",
    "if-match",
    "if-none-match",
    "if-modified-since",
    "if-unmodified-since",
    "x-request-id",
    "traceparent",
    "tracestate",
    "stripe-version",
    "x-stripe-client-user-agent",
    "x-stripe-client-telemetry",
    "x-github-api-version",
    "anthropic-version",
    "anthropic-beta",
];

/// The headers of an MCP session, forwarded to MCP tools.
pub(crate) const MCP_HEADERS: [&str; 3] =
    ["mcp-session-id", "mcp-protocol-version", "last-event-id"];

/// Prefixes of forwarded headers (the OpenAI and Anthropic SDKs' telemetry).
pub(crate) const FORWARDED_PREFIXES: [&str; 2] = ["x-stainless-", "openai-beta"];

/// Headers that make an upstream act on another account, with another method or on another
/// URL than the one checked: refused unless the tool names them in `headers`.
pub(crate) const STEERING_HEADERS: [&str; 16] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-original-method",
    "stripe-account",
    "stripe-context",
    "openai-organization",
    "openai-project",
    "x-forwarded-host",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-prefix",
    "forwarded",
    "x-original-url",
    "x-rewrite-url",
    "x-original-host",
];

/// Headers an upstream may read first-wins or last-wins: more than one is refused.
pub(crate) const SINGLE_HEADERS: [&str; 4] = [
    "content-type",
    "content-length",
    "idempotency-key",
    "stripe-version",
];

/// The headers phase: what of the agent's headers goes upstream. Duplicated single-valued
/// headers and steering headers are refused; credentials, toolgate's own headers, hop-by-hop
/// headers and anything the tool does not forward are dropped.
pub(crate) fn forwarded_headers(tool: &Tool, sent: &HeaderMap) -> Result<HeaderMap, Refusal> {
    let named = |name: &str| tool.headers.iter().any(|h| h.eq_ignore_ascii_case(name));
    for name in SINGLE_HEADERS {
        if sent.get_all(name).iter().count() > 1 {
            return Err(validation(format!(
                "the request has more than one {name} header; send it once"
            )));
        }
    }
    for name in STEERING_HEADERS {
        if sent.contains_key(name) && !named(name) {
            return Err(Refusal::policy(format!(
                "header {name} is not allowed on tool {}: it would make the upstream act on another account, method or URL than the one checked; remove it",
                tool.name
            )));
        }
    }
    let mut out = HeaderMap::new();
    for (name, value) in sent {
        let n = name.as_str();
        if CONTROL_HEADERS.contains(&n) || AGENT_CREDENTIAL_HEADERS.contains(&n) {
            continue;
        }
        let forwarded = FORWARDED_HEADERS.contains(&n)
            || FORWARDED_PREFIXES.iter().any(|p| n.starts_with(p))
            || (tool.mcp.is_some() && MCP_HEADERS.contains(&n))
            || named(n);
        if forwarded {
            out.append(name.clone(), value.clone());
        }
    }
    strip_hop_by_hop(&mut out);
    Ok(out)
}

/// A request as stored for a later commit.
#[derive(Clone, Copy)]
pub(crate) struct StoredCall<'a> {
    pub host: &'a str,
    pub port: u16,
    pub method: &'a Method,
    pub path_and_query: &'a str,
    pub headers: &'a HeaderMap,
    pub body: &'a Bytes,
}

/// What the policy phases decided about a stored request.
pub(crate) struct Rechecked {
    pub credential: Option<Arc<Credential>>,
    pub body: Value,
}

/// The policy phases again, over a stored request (an approved proposal at commit): the path
/// still matches the same tool, the agent may still use it with these parameters and its
/// environment's credential, and the headers, query, body, rules and budget field still pass.
pub(crate) fn recheck(
    policy: &Policy,
    agent: &Agent,
    tool: &Tool,
    call: &StoredCall<'_>,
) -> Result<Rechecked, Refusal> {
    let StoredCall {
        host,
        port,
        method,
        path_and_query,
        headers,
        body,
    } = *call;
    let uri: http::Uri = path_and_query
        .parse()
        .map_err(|e| Refusal::policy(format!("the stored URI is not valid: {e}")))?;
    let path = uri.path();
    check_path(path).map_err(|e| Refusal::policy(e.to_string()))?;
    if tool.mcp.is_some() {
        return recheck_mcp(policy, agent, tool, call, uri);
    }
    if tool.graphql.is_some() {
        return graphql::recheck(policy, agent, tool, call, &uri);
    }
    let matched = policy
        .match_tool(host, port, method, path)
        .filter(|m| m.tool.name == tool.name)
        .ok_or_else(|| {
            Refusal::policy(format!(
                "{method} {path} no longer matches tool {}",
                tool.name
            ))
        })?;
    let credential = authorize(agent, tool, &matched.params)?;
    validate_path(tool, &matched.params)?;
    forwarded_headers(tool, headers)?;
    let query = validate_query(tool, uri.query())?;
    let body_json = validate_body(tool, headers, body)?;
    let mut req = Request::new(());
    *req.method_mut() = method.clone();
    *req.uri_mut() = uri;
    *req.headers_mut() = headers.clone();
    let (parts, ()) = req.into_parts();
    check_rules(agent, tool, &parts, &matched.params, &query, &body_json)?;
    budget_amount(tool, &body_json)?;
    Ok(Rechecked {
        credential,
        body: body_json,
    })
}

/// [`recheck`] of a stored MCP tool call: the endpoint still serves the tool, and the stored
/// message still calls it with arguments that pass its schema, rules and budget field.
fn recheck_mcp(
    policy: &Policy,
    agent: &Agent,
    tool: &Tool,
    call: &StoredCall<'_>,
    uri: http::Uri,
) -> Result<Rechecked, Refusal> {
    let gone = || {
        Refusal::policy(format!(
            "MCP tool {} is no longer contracted at {}{}",
            tool.name,
            call.host,
            uri.path()
        ))
    };
    let spec = tool.mcp.as_ref().ok_or_else(gone)?;
    let served = policy.mcp_endpoint(call.host, call.port, uri.path());
    if !served.iter().any(|t| t.name == tool.name) {
        return Err(gone());
    }
    let message = contract::parse_json_strict(call.body)
        .map_err(|e| validation(format!("the stored MCP message is not JSON: {e}")))?;
    let arguments = match crate::mcp::classify(&message) {
        crate::mcp::Message::Call {
            name, arguments, ..
        } if name == spec.name => arguments,
        _ => return Err(gone()),
    };
    let params = Default::default();
    let credential = authorize(agent, tool, &params)?;
    forwarded_headers(tool, call.headers)?;
    let mut req = Request::new(());
    *req.method_mut() = call.method.clone();
    *req.uri_mut() = uri;
    *req.headers_mut() = call.headers.clone();
    let (parts, ()) = req.into_parts();
    arguments_pass(agent, tool, &parts, &arguments)?;
    Ok(Rechecked {
        credential,
        body: arguments,
    })
}

/// The `Idempotency-Key` a keyed tool needs (428 without one); `None` for other tools.
pub(crate) fn idempotency_key<'h>(
    tool: &Tool,
    headers: &'h HeaderMap,
) -> Result<Option<&'h str>, Refusal> {
    if tool.side_effects == SideEffects::None || tool.idempotency != Some(Idempotency::Key) {
        return Ok(None);
    }
    headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .filter(|k| !k.trim().is_empty())
        .map(Some)
        .ok_or_else(|| {
            Refusal::new(
                Code::IdempotencyKeyRequired,
                format!(
                    "tool {} changes things and needs an Idempotency-Key header: send a unique key per call and reuse it when retrying",
                    tool.name
                ),
            )
            .with_tool(tool.name.clone())
        })
}

/// What a call asks of its tool's budget. The field must be there (an upstream may read a
/// missing amount as "all of it"), a number, and not negative (it would credit the budget).
pub(crate) fn budget_amount(tool: &Tool, body: &Value) -> Result<Option<f64>, Refusal> {
    let Some(budget) = &tool.budget else {
        return Ok(None);
    };
    let field = &budget.field;
    // Form bodies without a schema keep their values as text.
    let amount = match body.get(field) {
        Some(Value::String(s)) => s.trim().parse::<f64>().ok(),
        Some(v) => v.as_f64(),
        None => None,
    };
    match amount {
        None => Err(validation(format!(
            "field /{field} is required: tool {} counts it against a budget; send it explicitly",
            tool.name
        ))),
        Some(n) if n < 0.0 || !n.is_finite() => Err(validation(format!(
            "field /{field} must not be negative (got {n})"
        ))),
        Some(n) => Ok(Some(n)),
    }
}

/// Permissions: the agent's tool list, its environment's credential, and path parameters bound
/// to its attributes.
pub(crate) fn authorize(
    agent: &Agent,
    tool: &Tool,
    params: &std::collections::BTreeMap<String, String>,
) -> Result<Option<Arc<Credential>>, Refusal> {
    if !agent.may_use(&tool.name) {
        return Err(Refusal::policy(format!(
            "agent {} may not use tool {}; its policy allows: {}",
            agent.id,
            tool.name,
            agent.tools.join(", ")
        )));
    }
    // A tool that uses credentials must have one for the agent's environment, so a staging agent
    // can never be handed a prod key.
    let credential = if tool.credentials.is_empty() {
        None
    } else {
        let found =
            tool.credentials.get(&agent.environment).ok_or_else(|| {
                Refusal::policy(format!(
                "tool {} has no credential for environment {:?}; it is available to agents in: {}",
                tool.name,
                agent.environment,
                tool.credentials.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
            })?;
        Some(found.clone())
    };
    for (name, binding) in &tool.params {
        let allowed = agent.render_binding(binding).ok_or_else(|| {
            Refusal::policy(format!(
                "tool {} binds {{{name}}} to {binding}, which agent {} does not have",
                tool.name, agent.id
            ))
        })?;
        let got = params.get(name).map(String::as_str).unwrap_or("");
        if !got.eq_ignore_ascii_case(&allowed) {
            return Err(Refusal::policy(format!(
                "agent {} may only use {} with {name} = {allowed:?}, not {got:?}",
                agent.id, tool.name
            )));
        }
    }
    Ok(credential)
}

pub(crate) fn validation(message: impl Into<String>) -> Refusal {
    Refusal::new(Code::ValidationError, message)
}

/// The path parameters, of the types `path_params` gives them (strings coerced as in a query).
pub(crate) fn validate_path(
    tool: &Tool,
    params: &std::collections::BTreeMap<String, String>,
) -> Result<(), Refusal> {
    let Some(schema) = &tool.path_schema else {
        return Ok(());
    };
    let mut value = Value::Object(
        params
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect(),
    );
    contract::coerce(&mut value, &schema.value);
    schema
        .check(&value)
        .map_err(|e| validation(format!("path parameter: {e}")))
}

pub(crate) fn validate_query(tool: &Tool, query: Option<&str>) -> Result<Value, Refusal> {
    let query = query.unwrap_or("");
    let Some(schema) = &tool.query else {
        if query.is_empty() {
            return Ok(Value::Null);
        }
        return Err(validation(format!(
            "tool {} takes no query string; remove ?{}",
            tool.name,
            query.chars().take(100).collect::<String>()
        )));
    };
    let mut value = contract::decode_form(query.as_bytes())
        .map_err(|e| validation(format!("query string: {e}")))?;
    contract::coerce(&mut value, &schema.value);
    if contract::depth(&value) > MAX_DEPTH {
        return Err(validation(format!(
            "query string nests deeper than {MAX_DEPTH} levels"
        )));
    }
    schema
        .check(&value)
        .map_err(|e| validation(format!("query string: {e}")))?;
    Ok(value)
}

/// The media type of a request's `Content-Type`, lowercased, without its parameters.
pub(crate) fn media_type(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
}

/// The body format a media type names: JSON (`application/json`, or `application/…+json`) or a
/// form; none for anything else.
pub(crate) fn body_format(media_type: &str) -> Option<BodyFormat> {
    let json = media_type == "application/json"
        || (media_type.starts_with("application/") && media_type.ends_with("+json"));
    match media_type {
        _ if json => Some(BodyFormat::Json),
        "application/x-www-form-urlencoded" => Some(BodyFormat::Form),
        _ => None,
    }
}

pub(crate) fn validate_body(
    tool: &Tool,
    headers: &HeaderMap,
    bytes: &Bytes,
) -> Result<Value, Refusal> {
    let Some(spec) = &tool.body else {
        if bytes.is_empty() {
            return Ok(Value::Null);
        }
        return Err(validation(format!(
            "tool {} takes no request body; send none",
            tool.name
        )));
    };
    let (want, name) = match spec.format {
        BodyFormat::Json => ("application/json", "JSON"),
        BodyFormat::Form => ("application/x-www-form-urlencoded", "form"),
    };
    let ctype = media_type(headers);
    let ctype_ok = match &ctype {
        None => bytes.is_empty(),
        Some(c) => body_format(c) == Some(spec.format),
    };
    if !ctype_ok {
        return Err(validation(format!(
            "tool {} takes a {name} body: send Content-Type: {want} (got {})",
            tool.name,
            ctype.as_deref().unwrap_or("none")
        )));
    }
    let mut value = if bytes.is_empty() {
        Value::Object(Default::default())
    } else {
        match spec.format {
            BodyFormat::Json => contract::parse_json_strict(bytes)
                .map_err(|e| validation(format!("the body is not valid JSON: {e}")))?,
            BodyFormat::Form => contract::decode_form(bytes).map_err(validation)?,
        }
    };
    if contract::depth(&value) > MAX_DEPTH {
        return Err(validation(format!(
            "the body nests deeper than {MAX_DEPTH} levels"
        )));
    }
    if let Some(schema) = &spec.schema {
        if spec.format == BodyFormat::Form {
            contract::coerce(&mut value, &schema.value);
        }
        schema.check(&value).map_err(validation)?;
    }
    Ok(value)
}

/// The checks of a tool call's arguments (an MCP tool's, or a GraphQL field's, in the place of
/// a body): nesting, the contract's argument schema, the rules, the budget field. Returns what
/// the call asks of the budget.
pub(crate) fn arguments_pass(
    agent: &Agent,
    tool: &Tool,
    parts: &http::request::Parts,
    arguments: &Value,
) -> Result<Option<f64>, Refusal> {
    let deep = contract::depth(arguments) > MAX_DEPTH;
    if let Some(mcp) = &tool.mcp {
        if deep {
            return Err(validation("the arguments nest too deeply"));
        }
        mcp.arguments
            .check(arguments)
            .map_err(|e| validation(format!("MCP tool {} arguments: {e}", mcp.name)))?;
    }
    if let Some(spec) = &tool.graphql {
        let label = spec.label();
        if deep {
            return Err(validation(format!(
                "the arguments of GraphQL field {label} nest too deeply"
            )));
        }
        spec.arguments
            .check(arguments)
            .map_err(|e| validation(format!("GraphQL field {label} arguments: {e}")))?;
    }
    check_rules(
        agent,
        tool,
        parts,
        &Default::default(),
        &Value::Null,
        arguments,
    )?;
    budget_amount(tool, arguments)
}

pub(crate) fn check_rules(
    agent: &Agent,
    tool: &Tool,
    parts: &http::request::Parts,
    params: &std::collections::BTreeMap<String, String>,
    query: &Value,
    body: &Value,
) -> Result<(), Refusal> {
    if tool.rules.is_empty() {
        return Ok(());
    }
    let headers: serde_json::Map<String, Value> = parts
        .headers
        .iter()
        .filter(|(k, _)| !AGENT_CREDENTIAL_HEADERS.contains(&k.as_str()))
        .filter_map(|(k, v)| v.to_str().ok().map(|v| (k.to_string(), Value::from(v))))
        .collect();
    let mut request = json!({
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "params": params,
        "query": if query.is_null() { json!({}) } else { query.clone() },
        "body": if body.is_null() { json!({}) } else { body.clone() },
        "headers": headers,
    });
    // An MCP tool's (or GraphQL field's) rules read its arguments (which are what `body` holds
    // for it).
    if tool.mcp.is_some() || tool.graphql.is_some() {
        request["arguments"] = request["body"].clone();
    }
    let agent_v = json!({
        "id": agent.id,
        "owner": agent.owner,
        "tenant": agent.tenant.clone().unwrap_or_default(),
        "environment": agent.environment,
        "attrs": agent.attrs,
    });
    // The person the call acts for (`user.id` empty when none).
    let user_v = match &agent.user {
        Some(u) => json!({"id": u.id, "groups": u.groups, "via": u.via}),
        None => json!({"id": "", "groups": [], "via": ""}),
    };
    let tool_v = json!({
        "name": tool.name,
        "version": tool.version,
        "risk": tool.risk_text(),
        "side_effects": tool.side_effects.as_str(),
        "mode": tool.mode.as_str(),
    });
    for rule in &tool.rules {
        match rule.denies(&request, &agent_v, &tool_v, &user_v) {
            Ok(false) => {}
            Ok(true) => return Err(Refusal::policy(rule.message.clone())),
            Err(e) => {
                return Err(Refusal::policy(format!(
                    "{} (the rule could not be checked against this request: {e})",
                    rule.message
                )))
            }
        }
    }
    Ok(())
}
