//! An MCP server's endpoint (DESIGN section 9): every tool behind one `POST /mcp`, told apart
//! by the JSON-RPC message. Session set-up passes for an agent holding a tool there;
//! `tools/list` answers are filtered to the tools it may call (and whose pins hold);
//! `tools/call` takes the whole request path with the MCP tool as the tool; any other method is
//! refused. A batch is answered message by message, each one a request of its own.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};

use super::body::{self, ProxyBody};
use super::ctx::{McpReply, Reply, RequestCtx, Target};
use super::exchange::CallEvent;
use super::read::{read_body, Read};
use super::request::{self, Answer};
use super::scrub::{Needles, Scrubbed};
use crate::app::Gate;
use crate::audit::Kind;
use crate::checks::{authorize, validation};
use crate::error::Refusal;
use crate::mcp::{self, Message};
use crate::policy::{Agent, Mode, Tool};
use crate::services::mcp_sessions::{Opener, Standing};
use crate::verdict::mcp as verdict;

/// The largest `tools/list` answer or stored answer toolgate reads whole to rewrite.
const ANSWER_CAP: usize = 8 * 1024 * 1024;

/// What the adapter did with a request: answered it, or found a batch, whose messages the
/// request path then takes one by one, each a request of its own.
pub(super) enum Routed {
    Answered(Response<ProxyBody>),
    Batch(Batch),
}

/// The MCP endpoint a request reached, as its agent stands there.
struct Endpoint {
    agent: Arc<Agent>,
    /// A tool the agent holds here: what is not a tool call is sent with its credential.
    via: Arc<Tool>,
    /// Every tool contracted on the endpoint.
    tools: Vec<Arc<Tool>>,
    /// Its name in the pin and session caches.
    key: String,
}

/// An MCP endpoint's request.
#[tracing::instrument(level = "debug", name = "mcp", skip_all, fields(request_id = %ctx.id, phase = "mcp"))]
pub(super) async fn process(
    app: &Arc<Gate>,
    ctx: &mut RequestCtx,
    agent: Arc<Agent>,
    tools: Vec<Arc<Tool>>,
    req: Request<ProxyBody>,
) -> Result<Routed, Refusal> {
    ctx.owner = Some(agent.owner.clone());
    let agent = crate::grants::for_tools(app, agent, &tools).await?;
    let (uri, host) = (req.uri(), &ctx.target.host);
    let via = verdict::endpoint_via(&agent, &tools, host, uri.path(), uri.query())?;
    let what = verdict::endpoint_method(req.method())?;
    let key = endpoint_key(&ctx.target, &tools);
    let ep = Endpoint {
        agent,
        via,
        tools,
        key,
    };
    let session = session_id(req.headers())?;
    if let Some(session) = &session {
        owned(app, &ep.key, session, &opener(&ep.agent, ctx))?;
    }
    let (parts, incoming) = req.into_parts();
    if let Some(what) = what {
        return stream_or_end(app, ctx, &ep, parts, session, what).await;
    }
    let read = read_body(app, &ep.agent.id, &ep.via, parts, incoming).await?;
    let message = crate::policy::contract::parse_json_strict(&read.body)
        .map_err(|e| validation(format!("an MCP message must be JSON: {e}")))?;
    match message {
        Value::Array(list) => batch(ctx, read, list).await.map(Routed::Batch),
        message => one(app, ctx, &ep, read, message)
            .await
            .map(Routed::Answered),
    }
}

/// The server's stream (GET) or the end of a session (DELETE): passed on; a session the
/// server no longer knows, or one ended, is forgotten.
async fn stream_or_end(
    app: &Gate,
    ctx: &RequestCtx,
    ep: &Endpoint,
    parts: http::request::Parts,
    session: Option<String>,
    what: &str,
) -> Result<Routed, Refusal> {
    let ending = parts.method == Method::DELETE;
    let message = ep.passed(parts, Bytes::new(), what);
    let resp = pass(app, &ctx.target, message, Some(ctx)).await?;
    let gone = resp.status() == StatusCode::NOT_FOUND || (ending && resp.status().is_success());
    if let Some(session) = session.filter(|_| gone) {
        app.mcp_sessions().ended(&ep.key, &session);
    }
    guarded(app, &ep.agent, &ep.tools, resp)
        .await
        .map(Routed::Answered)
}

impl Endpoint {
    /// A message passed on with the credential of the tool the agent holds here.
    fn passed<'a>(&'a self, parts: http::request::Parts, body: Bytes, what: &'a str) -> Passed<'a> {
        Passed {
            agent: &self.agent,
            tool: &self.via,
            parts,
            body,
            what,
        }
    }
}

/// One message: set-up passes, a list is filtered, a tool call takes the request path, and
/// anything else is refused.
async fn one(
    app: &Arc<Gate>,
    ctx: &mut RequestCtx,
    ep: &Endpoint,
    read: Read,
    message: Value,
) -> Result<Response<ProxyBody>, Refusal> {
    if !ctx.span.is_disabled() {
        let method = message.get("method").and_then(Value::as_str).unwrap_or("");
        let session = read.parts.headers.get("mcp-session-id");
        let session = session.and_then(|v| v.to_str().ok());
        super::trace::mcp_method(ctx, method, session);
    }
    match mcp::classify(&message) {
        Message::SetUp | Message::Reply => {
            let method = message
                .get("method")
                .and_then(Value::as_str)
                .unwrap_or("reply");
            set_up(app, ctx, ep, read, method).await
        }
        Message::List { id } => {
            let message = ep.passed(read.parts, read.body, "tools/list");
            let answer = pass(app, &ctx.target, message, Some(ctx)).await?;
            filter_list(app, ep, &id, answer).await
        }
        Message::Call {
            id,
            name,
            arguments,
        } => {
            ctx.reply = Reply::Mcp(McpReply::ToolResult(id.clone()));
            let path = read.parts.uri.path();
            let tool = verdict::contracted(&ep.tools, &name, &ctx.target.host, path)?;
            let answer = call_tool(app, ctx, ep, tool, read, id, arguments).await?;
            guarded(app, &ep.agent, &ep.tools, answer).await
        }
        Message::Other { id, method } => {
            ctx.reply = Reply::Mcp(McpReply::Error(id));
            Err(verdict::other_method(&method))
        }
        Message::Invalid { id, why } => {
            ctx.reply = Reply::Mcp(McpReply::Error(id));
            Err(verdict::invalid_message(&why))
        }
    }
}

/// A set-up message (or the client's reply to the server): passed on with the endpoint's
/// credential. The session an `initialize` opens is bound to its agent (and token).
async fn set_up(
    app: &Arc<Gate>,
    ctx: &RequestCtx,
    ep: &Endpoint,
    read: Read,
    method: &str,
) -> Result<Response<ProxyBody>, Refusal> {
    let message = ep.passed(read.parts, read.body, method);
    let resp = pass(app, &ctx.target, message, Some(ctx)).await?;
    let opened = resp
        .headers()
        .get(MCP_SESSION)
        .and_then(|v| v.to_str().ok());
    if let Some(session) = opened.filter(|_| method == "initialize") {
        app.mcp_sessions()
            .opened(&ep.key, session, opener(&ep.agent, ctx));
    }
    guarded(app, &ep.agent, &ep.tools, resp).await
}

/// `tools/call` of a contracted tool: its kill switch and pin, then the request path's phases
/// with the arguments in the place of a body; the answer under the agent's JSON-RPC id.
async fn call_tool(
    app: &Arc<Gate>,
    ctx: &mut RequestCtx,
    ep: &Endpoint,
    tool: Arc<Tool>,
    read: Read,
    id: Value,
    arguments: Value,
) -> Result<Response<ProxyBody>, Refusal> {
    ctx.matched(&tool);
    request::tool_enabled(app, &tool)?;
    pinned(app, &ctx.target, &ep.agent, &tool, &read.parts).await?;
    let call = request::arguments_call(ctx, ep.agent.clone(), tool, read, arguments)?;
    Ok(match request::decide(app, ctx, call).await? {
        Answer::Preview(call) => preview(&id, call.tool(), call.arguments(), &ctx.target.host),
        Answer::Passed(resp) => resp,
        // A stored answer (a write's, a replay's, an approved call's) carries the id of the
        // call that executed; the agent gets it under its own.
        Answer::Stored(resp) => answer_as(&id, resp).await,
    })
}

/// A refusal as the MCP client reads it: the tool's result with `isError` and toolgate's
/// message (a tool call), or a JSON-RPC error; HTTP 200 either way, the error in the message.
pub(super) fn refusal_answer(reply: &McpReply, refusal: &Refusal) -> Response<ProxyBody> {
    let text = match &refusal.proposal {
        Some(p) if !refusal.message.contains(p.as_str()) => {
            format!("{} (proposal {p})", refusal.message)
        }
        _ => refusal.message.clone(),
    };
    let text = format!(
        "toolgate refused this call ({}): {text}",
        refusal.code.as_str()
    );
    let message = match reply {
        McpReply::ToolResult(id) => mcp::refused_result(id, &text),
        McpReply::Error(id) => {
            let code = match refusal.code {
                crate::error::Code::ValidationError => mcp::INVALID_REQUEST,
                _ => mcp::METHOD_NOT_FOUND,
            };
            mcp::error_message(id.as_ref(), code, &text)
        }
    };
    json_answer(StatusCode::OK, &message)
}

/// A dry run's preview as the tool's result: what would be called, nothing sent. Marked
/// `isError`: it is not the tool's output, and a client checks a successful result against the
/// tool's output schema, which a preview cannot meet.
fn preview(id: &Value, tool: &Tool, arguments: &Value, host: &str) -> Response<ProxyBody> {
    let name = tool.mcp.as_ref().map(|m| m.name.as_str()).unwrap_or("");
    let text = format!(
        "dry run: toolgate would call MCP tool {name} on {host} with arguments {arguments}; nothing was sent (tool {} runs in dry-run mode for this agent)",
        tool.name
    );
    json_answer(StatusCode::OK, &mcp::refused_result(id, &text))
}

fn json_answer(status: StatusCode, message: &Value) -> Response<ProxyBody> {
    let mut resp = Response::new(body::full(Bytes::from(message.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// A message (or the GET stream, or the DELETE) to send on as it is, with the credential of
/// `tool` as `agent` holds it; `what` names it in the audit.
struct Passed<'a> {
    agent: &'a Agent,
    tool: &'a Tool,
    parts: http::request::Parts,
    body: Bytes,
    what: &'a str,
}

/// Sends a message on; the answer streams back with the credential cut out. Recorded in `ctx`
/// (toolgate's own look at a server has none).
async fn pass(
    app: &Gate,
    target: &Target,
    message: Passed<'_>,
    ctx: Option<&RequestCtx>,
) -> Result<Response<ProxyBody>, Refusal> {
    let Passed {
        agent,
        tool,
        parts,
        body,
        what,
    } = message;
    let no_params = std::collections::BTreeMap::new();
    let credential = authorize(agent, tool, &no_params)?;
    let user = ctx.and_then(|c| c.user.as_deref());
    let resolved = app
        .vault()
        .credential(
            app.upstream(),
            &app.policy(),
            credential.as_ref(),
            user,
            &app.config().admin_url,
        )
        .await?;
    // Which person's connection served the call, as on every other path.
    if let (Some(ctx), Some(facts)) = (ctx, resolved.used) {
        ctx.record_beside(crate::audit::Kind::ConnectionUsed, facts)
            .await;
    }
    let credential = resolved.credential;
    let headers = request::upstream_headers(tool, &parts.headers, credential.as_deref())?;
    let mut out = Request::new(body::full(body));
    *out.method_mut() = parts.method.clone();
    *out.uri_mut() = request::path_and_query(&parts).parse().unwrap_or_default();
    *out.headers_mut() = headers;
    super::trace::propagate(&mut out, tool);
    let decision = json!({"outcome": "allowed", "mcp": what});
    let (resp, event) = match ctx {
        Some(ctx) => {
            let event = CallEvent::of(ctx, decision, Instant::now());
            let (resp, event) = super::exchange::forward(app, target, out, event).await?;
            (resp, Some(event))
        }
        None => {
            let resp = app.upstream().forward(&target.host, target.port, out).await;
            (resp.map_err(|f| f.refusal)?, None)
        }
    };
    let (mut parts, body) = resp.into_parts();
    let needles = Needles::of_credential(credential.as_deref());
    needles.scrub_headers(&mut parts.headers);
    let mut response = json!({"status": parts.status.as_u16(), "body": {"streamed": true}});
    response["headers"] = crate::audit::headers_json(&parts.headers);
    if let Some(event) = event {
        event.record(response).await;
    }
    Ok(Response::from_parts(
        parts,
        body::stream(Scrubbed::new(body, needles)),
    ))
}

/// Reads an answer whole (within [`ANSWER_CAP`]): its parts and bytes.
async fn read_whole(resp: Response<ProxyBody>) -> Result<(http::response::Parts, Bytes), Refusal> {
    let (parts, mut body) = resp.into_parts();
    let too_big = || {
        Refusal::new(
            crate::error::Code::UpstreamError,
            format!("the MCP server's answer is larger than {ANSWER_CAP} bytes; toolgate reads such answers whole"),
        )
    };
    let mut bytes = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            Refusal::new(
                crate::error::Code::UpstreamError,
                format!("the MCP server's answer could not be read whole: {e}"),
            )
        })?;
        if let Ok(data) = frame.into_data() {
            if bytes.len() + data.len() > ANSWER_CAP {
                return Err(too_big());
            }
            bytes.extend_from_slice(&data);
        }
    }
    Ok((parts, Bytes::from(bytes)))
}

/// The refusal of an MCP answer toolgate cannot read: passed on unread, it would reach the
/// client unchecked.
pub(crate) fn unreadable(why: mcp::Unreadable) -> Refusal {
    Refusal::new(
        crate::error::Code::UpstreamError,
        format!("the MCP server's answer could not be read: {why}. toolgate passes on only what it can read and check; the server must answer as JSON or as a UTF-8 event stream, without a content coding"),
    )
}

/// Reads an MCP answer by its headers.
fn read_answer(parts: &http::response::Parts, bytes: &[u8]) -> Result<mcp::Answer, Refusal> {
    mcp::Answer::from_headers(&parts.headers, bytes).map_err(unreadable)
}

/// The answer to the call, under the agent's JSON-RPC id, as one JSON message. The call took
/// place: an answer toolgate cannot read is withheld (the tool's result with `isError` and
/// why), not refused — the call's events already tell what was sent and answered, as a
/// withheld answer of a committed call does (`commit::shown`).
async fn answer_as(id: &Value, resp: Response<ProxyBody>) -> Response<ProxyBody> {
    let status = resp.status();
    let read = match read_whole(resp).await {
        Ok((parts, bytes)) => read_answer(&parts, &bytes).map(|a| (parts, a)),
        Err(refusal) => Err(refusal),
    };
    let (parts, answer) = match read {
        Ok(read) => read,
        Err(withheld) => return refusal_answer(&McpReply::ToolResult(id.clone()), &withheld),
    };
    let found = answer
        .clone()
        .messages()
        .into_iter()
        .find(|m| m.get("result").is_some() || m.get("error").is_some());
    match found {
        Some(mut m) => {
            m["id"] = id.clone();
            let mut resp = json_answer(status, &m);
            for (name, value) in &parts.headers {
                if name == header::CONTENT_TYPE || name == header::CONTENT_LENGTH {
                    continue;
                }
                resp.headers_mut().append(name.clone(), value.clone());
            }
            resp
        }
        None => {
            let mut parts = parts;
            parts.headers.remove(header::CONTENT_LENGTH);
            Response::from_parts(parts, body::full(Bytes::from(answer.to_bytes())))
        }
    }
}

/// A `tools/list` answer with only the tools the agent may call: contracted here, held by the
/// agent, and listed as pinned (a tool whose description or schema changed is hidden). What
/// the agent gets is written from what toolgate read; an answer it cannot read is refused (an
/// HTTP error status with a body that is neither JSON nor a stream passes: no client reads a
/// list from it).
async fn filter_list(
    app: &Gate,
    ep: &Endpoint,
    id: &Value,
    resp: Response<ProxyBody>,
) -> Result<Response<ProxyBody>, Refusal> {
    let (mut parts, bytes) = read_whole(resp).await?;
    let mut answer = match read_answer(&parts, &bytes) {
        Ok(answer) => answer,
        Err(_) if !parts.status.is_success() => {
            return Ok(Response::from_parts(parts, body::full(bytes)))
        }
        Err(refusal) => return Err(refusal),
    };
    if parts.status.is_success() && mcp::answer_to(answer.clone().messages(), id).is_none() {
        return Err(unreadable(mcp::Unreadable::Json(format!(
            "it holds no answer to tools/list (id {id})"
        ))));
    }
    let listable = listable(app, &ep.agent, &ep.tools);
    answer.edit(|m| {
        if m.get("id") == Some(id) {
            if let Some(tools) = m.pointer(LISTED).and_then(Value::as_array) {
                remember_pins(app, &ep.key, &ep.tools, tools);
            }
        }
        listable.filter(m);
    });
    parts.headers.remove(header::CONTENT_LENGTH);
    Ok(Response::from_parts(
        parts,
        body::full(Bytes::from(answer.to_bytes())),
    ))
}

/// The header that carries an MCP session's id.
const MCP_SESSION: &str = "mcp-session-id";

/// The session a request names, if any (once at most: two would be two sessions to check).
fn session_id(headers: &http::HeaderMap) -> Result<Option<String>, Refusal> {
    let mut values = headers.get_all(MCP_SESSION).iter();
    match (values.next(), values.next()) {
        (None, _) => Ok(None),
        (Some(v), None) => v
            .to_str()
            .map(|s| Some(s.to_string()))
            .map_err(|_| validation("Mcp-Session-Id must be visible ASCII, as the server gave it")),
        (Some(_), Some(_)) => Err(validation(
            "the request has more than one Mcp-Session-Id header; send the session's id once",
        )),
    }
}

/// Who a request comes from, as a session's opener: the agent and its issued token.
fn opener(agent: &Agent, ctx: &RequestCtx) -> Opener {
    Opener {
        agent: agent.id.clone(),
        token: ctx.token.clone(),
    }
}

/// A session is used only by the agent (and the token) that opened it: another agent's use is
/// refused before it reaches the server, so the session and its state stay its opener's.
fn owned(app: &Gate, key: &str, session: &str, who: &Opener) -> Result<(), Refusal> {
    match app.mcp_sessions().standing(key, session, who) {
        Standing::Own => Ok(()),
        Standing::Another(opener) if opener.agent == who.agent => Err(Refusal::policy(
            "this MCP session was opened with another token of this agent; open a new session (initialize without an Mcp-Session-Id) with the token you use now",
        )),
        Standing::Another(_) => Err(Refusal::policy(
            "this MCP session belongs to another agent: a session is used only by the agent that opened it. Open your own session (initialize without an Mcp-Session-Id)",
        )),
        Standing::Unknown => Err(Refusal::new(
            crate::error::Code::SessionUnknown,
            "toolgate knows no such MCP session here (it ended, was not opened through toolgate, or toolgate restarted): open a new session (initialize without an Mcp-Session-Id)",
        )),
    }
}

/// Where a message carries a list of tools.
const LISTED: &str = "/result/tools";

/// The tools `agent` may see listed at `endpoint`: contracted, held, not in mode deny, not
/// switched off (and as pinned).
fn listable(app: &Gate, agent: &Agent, endpoint: &[Arc<Tool>]) -> mcp::Listable {
    let shown = endpoint.iter().filter(|t| {
        agent.may_use(&t.name) && t.mode != Mode::Deny && request::tool_enabled(app, t).is_ok()
    });
    mcp::Listable(
        shown
            .filter_map(|t| t.mcp.as_ref().map(|m| (m.name.clone(), m.pin.clone())))
            .collect(),
    )
}

/// Any answer of the server, as it reaches the agent: every list of tools in it cut to what
/// the agent may see (a server may put one in any answer, or on the GET stream), and written
/// from what toolgate read. A JSON answer is read whole, a stream event by event; an empty one
/// passes; a successful answer of another form is refused, an error status's body passes (no
/// client reads messages from it).
pub(super) async fn guarded(
    app: &Gate,
    agent: &Agent,
    endpoint: &[Arc<Tool>],
    resp: Response<ProxyBody>,
) -> Result<Response<ProxyBody>, Refusal> {
    let listable = listable(app, agent, endpoint);
    if mcp::Form::from_headers(resp.headers()) == Ok(mcp::Form::EventStream) {
        let (mut parts, body) = resp.into_parts();
        parts.headers.remove(header::CONTENT_LENGTH);
        let body = crate::base::sse::map_events(body, move |e| guard_event(&listable, e));
        return Ok(Response::from_parts(parts, body));
    }
    let status = resp.status();
    let (mut parts, bytes) = read_whole(resp).await?;
    let mut answer = match read_answer(&parts, &bytes) {
        Ok(answer) => answer,
        Err(_) if !status.is_success() => {
            return Ok(Response::from_parts(parts, body::full(bytes)))
        }
        Err(refusal) => return Err(refusal),
    };
    answer.edit(|m| listable.filter(m));
    parts.headers.remove(header::CONTENT_LENGTH);
    Ok(Response::from_parts(
        parts,
        body::full(Bytes::from(answer.to_bytes())),
    ))
}

/// One event of a stream passed on: its lists of tools cut to what the agent may see. Data that
/// is not JSON carries no message a client reads: the event is dropped, never passed on unread.
fn guard_event(
    listable: &mcp::Listable,
    mut e: crate::base::sse::Event,
) -> Option<crate::base::sse::Event> {
    let Some(data) = e.data.as_deref().filter(|d| !d.is_empty()) else {
        return Some(e);
    };
    let mut message = serde_json::from_str::<Value>(data).ok()?;
    match &mut message {
        Value::Array(list) => list.iter_mut().for_each(|m| listable.filter(m)),
        m => listable.filter(m),
    }
    e.data = Some(message.to_string());
    Some(e)
}

/// The endpoint's name in the pin cache.
fn endpoint_key(target: &Target, endpoint: &[Arc<Tool>]) -> String {
    let path = endpoint.first().map(|t| t.path.as_str()).unwrap_or("");
    format!("{}:{}{}", target.host, target.port, path)
}

/// Notes what the server listed for each pinned tool of the endpoint.
fn remember_pins(app: &Gate, key: &str, endpoint: &[Arc<Tool>], listed: &[Value]) {
    for t in endpoint {
        let Some(m) = t.mcp.as_ref().filter(|m| m.pin.is_some()) else {
            continue;
        };
        let seen = listed
            .iter()
            .find(|l| l.get("name").and_then(Value::as_str) == Some(m.name.as_str()))
            .map(mcp::pin_of);
        app.pins().saw(key, &m.name, seen);
    }
}

/// A pinned tool is called only while the server lists it as pinned: from what it last
/// listed (within a few seconds), else toolgate asks it now, in the agent's session.
async fn pinned(
    app: &Gate,
    target: &Target,
    agent: &Agent,
    tool: &Arc<Tool>,
    parts: &http::request::Parts,
) -> Result<(), Refusal> {
    let Some(m) = tool.mcp.as_ref() else {
        return Ok(());
    };
    let Some(pin) = &m.pin else {
        return Ok(());
    };
    let endpoint = std::slice::from_ref(tool);
    let key = endpoint_key(target, endpoint);
    let seen = match app.pins().fresh(&key, &m.name) {
        Some(seen) => seen,
        None => {
            let ask = json!({"jsonrpc": "2.0", "id": "toolgate-pin-check", "method": "tools/list"});
            let mut ask_parts = Request::new(()).into_parts().0;
            ask_parts.method = Method::POST;
            ask_parts.uri = parts.uri.clone();
            ask_parts.headers = parts.headers.clone();
            ask_parts.headers.remove(header::CONTENT_LENGTH);
            let message = Passed {
                agent,
                tool,
                parts: ask_parts,
                body: Bytes::from(ask.to_string()),
                what: "pin check",
            };
            let answer = pass(app, target, message, None);
            let (parts, bytes) = read_whole(answer.await?).await?;
            let listed = mcp::answer_to(read_answer(&parts, &bytes)?.messages(), &ask["id"])
                .and_then(|a| {
                    a.pointer("/result/tools")
                        .and_then(Value::as_array)
                        .cloned()
                })
                .unwrap_or_default();
            remember_pins(app, &key, endpoint, &listed);
            app.pins().fresh(&key, &m.name).unwrap_or_default()
        }
    };
    if seen == *pin {
        return Ok(());
    }
    let now = match seen.is_empty() {
        true => "the server no longer lists it".to_string(),
        false => format!("the server now lists it as {seen}"),
    };
    Err(Refusal::policy(format!(
        "MCP tool {} is pinned to {pin} but {now}: its description or input schema changed. It stays refused until its contract's pin is reviewed and updated",
        m.name
    )))
}

/// A batch of JSON-RPC messages: each a request of its own (its own id, decision and events),
/// answered together as a JSON array in the order asked (notifications get no answer). The
/// messages run one after the other; each answer is read as soon as its message has run, and
/// the batch's body stays held against the buffer caps until the batch is answered.
pub(super) struct Batch {
    parts: http::request::Parts,
    list: Vec<Value>,
    answers: Vec<Value>,
    _buffered: crate::guard::BodyReservation,
}

/// A batch, as the request that brought it records it.
async fn batch(ctx: &RequestCtx, read: Read, list: Vec<Value>) -> Result<Batch, Refusal> {
    if list.is_empty() {
        return Err(validation("an empty JSON-RPC batch asks for nothing"));
    }
    ctx.record(
        Kind::Decision,
        json!({"outcome": "batch", "messages": list.len()}),
    )
    .await;
    Ok(Batch {
        parts: read.parts,
        list,
        answers: Vec::new(),
        _buffered: read.buffered,
    })
}

impl Batch {
    /// How many messages it holds.
    pub(super) fn len(&self) -> usize {
        self.list.len()
    }

    /// Message `i` as a request of its own.
    pub(super) fn request(&self, i: usize) -> Request<ProxyBody> {
        let message = self.list.get(i).map(Value::to_string).unwrap_or_default();
        let mut req = Request::new(body::full(Bytes::from(message)));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = self.parts.uri.clone();
        *req.headers_mut() = self.parts.headers.clone();
        req.headers_mut().remove(header::CONTENT_LENGTH);
        req
    }

    /// Reads the answer to message `i` (nothing for a notification); an answer that cannot be
    /// read ends the batch before its next message is sent.
    pub(super) async fn answered(
        &mut self,
        i: usize,
        resp: Response<ProxyBody>,
    ) -> Result<(), Refusal> {
        let Some(id) = self.list.get(i).and_then(|m| m.get("id")).cloned() else {
            return Ok(());
        };
        let (parts, bytes) = read_whole(resp).await?;
        let messages = read_answer(&parts, &bytes)
            .map(mcp::Answer::messages)
            .unwrap_or_default();
        let answer = mcp::answer_to(messages, &id).unwrap_or_else(|| {
            mcp::error_message(
                Some(&id),
                mcp::INVALID_REQUEST,
                "toolgate: no answer to this message",
            )
        });
        self.answers.push(answer);
        Ok(())
    }

    /// The batch's answer: the answer to each message that has an id, in order.
    pub(super) fn answer(self) -> Response<ProxyBody> {
        json_answer(StatusCode::OK, &Value::Array(self.answers))
    }
}
