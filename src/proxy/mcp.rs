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
use super::request::{self, Trail};
use super::scrub::{Needles, Scrubbed};
use super::Target;
use crate::checks::{authorize, validation};
use crate::error::Refusal;
use crate::mcp::{self, Message};
use crate::policy::{Agent, Mode, SideEffects, Tool};
use crate::services::mcp_sessions::{Opener, Standing};
use crate::App;

/// The largest `tools/list` answer or stored answer toolgate reads whole to rewrite.
const ANSWER_CAP: usize = 8 * 1024 * 1024;

/// How a refusal of this request is written: as the tool's result (a `tools/call`), as a
/// JSON-RPC error (another message), or as toolgate's JSON error (no message read yet).
#[derive(Debug, Clone)]
pub(crate) enum Reply {
    ToolResult(Value),
    Error(Option<Value>),
}

/// An MCP endpoint's request.
pub(super) async fn process(
    app: &Arc<App>,
    target: &Target,
    agent: Arc<Agent>,
    endpoint: Vec<Arc<Tool>>,
    req: Request<ProxyBody>,
    trail: &mut Trail,
) -> Result<Response<ProxyBody>, Refusal> {
    trail.owner = Some(agent.owner.clone());
    let agent = crate::grants::for_tools(app, agent, &endpoint).await?;
    let Some(via) = endpoint.iter().find(|t| agent.may_use(&t.name)).cloned() else {
        return Err(Refusal::policy(format!(
            "agent {} holds no tool on the MCP server at {}{}; ask for a contract for the tool you need",
            agent.id,
            target.host,
            req.uri().path()
        )));
    };
    if req.uri().query().is_some() {
        return Err(validation(
            "an MCP endpoint takes no query string: send everything in the JSON-RPC message",
        ));
    }
    let what = match *req.method() {
        Method::POST => None,
        Method::GET => Some("stream"),
        Method::DELETE => Some("end of session"),
        _ => {
            return Err(Refusal::policy(
                "an MCP endpoint takes POST (messages), GET (the server's stream) and DELETE (the end of a session)",
            ))
        }
    };
    let key = endpoint_key(target, &endpoint);
    let session = session_id(req.headers())?;
    if let Some(session) = &session {
        owned(app, &key, session, &opener(&agent, trail))?;
    }
    let (parts, incoming) = req.into_parts();
    if let Some(what) = what {
        let ending = parts.method == Method::DELETE;
        let resp = pass(
            app,
            target,
            &agent,
            &via,
            (parts, Bytes::new()),
            Some(trail),
            what,
        )
        .await?;
        let gone = resp.status() == StatusCode::NOT_FOUND || (ending && resp.status().is_success());
        if let Some(session) = session.filter(|_| gone) {
            app.mcp_sessions.ended(&key, &session);
        }
        return guarded(app, &agent, &endpoint, resp).await;
    }
    let (body, buffered) =
        request::read_body(app, &agent.id, &via, &parts.headers, incoming).await?;
    let message = crate::policy::contract::parse_json_strict(&body)
        .map_err(|e| validation(format!("an MCP message must be JSON: {e}")))?;
    match message {
        Value::Array(list) => batch(app, target, parts, list, trail).await,
        message => {
            let who = (agent, via, endpoint.as_slice());
            one(app, target, who, (parts, body, buffered), message, trail).await
        }
    }
}

/// One message: set-up passes, a list is filtered, a tool call takes the request path, and
/// anything else is refused.
async fn one(
    app: &Arc<App>,
    target: &Target,
    (agent, via, endpoint): (Arc<Agent>, Arc<Tool>, &[Arc<Tool>]),
    (parts, body, buffered): (http::request::Parts, Bytes, crate::guard::BodyReservation),
    message: Value,
    trail: &mut Trail,
) -> Result<Response<ProxyBody>, Refusal> {
    match mcp::classify(&message) {
        Message::SetUp | Message::Reply => {
            let method = message
                .get("method")
                .and_then(Value::as_str)
                .unwrap_or("reply");
            let who = (&agent, &via, endpoint);
            set_up(app, target, who, (parts, body), method, trail).await
        }
        Message::List { id } => {
            let answer = pass(
                app,
                target,
                &agent,
                &via,
                (parts, body),
                Some(trail),
                "tools/list",
            );
            filter_list(app, target, &agent, endpoint, &id, answer.await?).await
        }
        Message::Call {
            id,
            name,
            arguments,
        } => {
            trail.mcp = Some(Reply::ToolResult(id.clone()));
            let tool = endpoint
                .iter()
                .find(|t| t.mcp.as_ref().is_some_and(|m| m.name == name))
                .cloned()
                .ok_or_else(|| {
                    Refusal::policy(format!(
                        "no contract allows MCP tool {name:?} on {}{}; call only the tools tools/list shows you",
                        target.host, parts.uri.path()
                    ))
                })?;
            let answer = call_tool(
                app,
                target,
                (agent.clone(), tool),
                (parts, body, buffered),
                (id, arguments),
                trail,
            );
            guarded(app, &agent, endpoint, answer.await?).await
        }
        Message::Other { id, method } => {
            trail.mcp = Some(Reply::Error(id));
            Err(Refusal::policy(format!(
                "MCP method {method} is not allowed through toolgate: only tools/call of contracted tools, tools/list and session set-up pass"
            )))
        }
        Message::Invalid { id, why } => {
            trail.mcp = Some(Reply::Error(id));
            Err(validation(format!("not a JSON-RPC 2.0 message: {why}")))
        }
    }
}

/// A set-up message (or the client's reply to the server): passed on with the endpoint's
/// credential. The session an `initialize` opens is bound to its agent (and token).
async fn set_up(
    app: &Arc<App>,
    target: &Target,
    (agent, via, endpoint): (&Arc<Agent>, &Arc<Tool>, &[Arc<Tool>]),
    message: (http::request::Parts, Bytes),
    method: &str,
    trail: &mut Trail,
) -> Result<Response<ProxyBody>, Refusal> {
    let resp = pass(app, target, agent, via, message, Some(trail), method).await?;
    let opened = resp
        .headers()
        .get(MCP_SESSION)
        .and_then(|v| v.to_str().ok());
    if let Some(session) = opened.filter(|_| method == "initialize") {
        let key = endpoint_key(target, endpoint);
        app.mcp_sessions.opened(&key, session, opener(agent, trail));
    }
    guarded(app, agent, endpoint, resp).await
}

/// `tools/call` of a contracted tool: its kill switch and pin, then the request path's phases
/// with the arguments in the place of a body.
async fn call_tool(
    app: &Arc<App>,
    target: &Target,
    (agent, tool): (Arc<Agent>, Arc<Tool>),
    read: (http::request::Parts, Bytes, crate::guard::BodyReservation),
    (id, arguments): (Value, Value),
    trail: &mut Trail,
) -> Result<Response<ProxyBody>, Refusal> {
    trail.tool = Some(tool.name.clone());
    trail.version = Some(tool.version);
    request::tool_enabled(app, &tool)?;
    pinned(app, target, &agent, &tool, &read.0).await?;
    let call = request::mcp_call(target, agent, tool.clone(), read, (id.clone(), arguments))?;
    let answer = request::decide(app, target, call, trail).await?;
    // A stored answer (a write's, a replay's, an approved call's) carries the id of the call
    // that executed; the agent gets it under its own.
    let stored = tool.side_effects != SideEffects::None || tool.mode == Mode::Approve;
    Ok(match stored {
        true => answer_as(&id, answer).await,
        false => answer,
    })
}

/// A refusal as the MCP client reads it: the tool's result with `isError` and toolgate's
/// message (a tool call), or a JSON-RPC error; HTTP 200 either way, the error in the message.
pub(super) fn refusal_answer(reply: &Reply, refusal: &Refusal) -> Response<ProxyBody> {
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
        Reply::ToolResult(id) => mcp::refused_result(id, &text),
        Reply::Error(id) => {
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
pub(super) fn preview(
    id: &Value,
    tool: &Tool,
    arguments: &Value,
    host: &str,
) -> Response<ProxyBody> {
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

/// Sends a message (or the GET stream, or the DELETE) as it is, with the credential of a tool
/// the agent holds on this endpoint; the answer streams back with the credential cut out.
/// Recorded in `trail` (toolgate's own look at a server has none).
async fn pass(
    app: &App,
    target: &Target,
    agent: &Agent,
    via: &Tool,
    (parts, body): (http::request::Parts, Bytes),
    trail: Option<&Trail>,
    what: &str,
) -> Result<Response<ProxyBody>, Refusal> {
    let no_params = std::collections::BTreeMap::new();
    let credential = authorize(agent, via, &no_params)?;
    let headers = request::upstream_headers(via, &parts.headers, credential.as_deref())?;
    let mut out = Request::new(body::full(body));
    *out.method_mut() = parts.method.clone();
    *out.uri_mut() = request::path_and_query(&parts).parse().unwrap_or_default();
    *out.headers_mut() = headers;
    let decision = json!({"outcome": "allowed", "mcp": what});
    let (resp, event) = match trail {
        Some(trail) => {
            let event = trail.call_event(&app.audit, decision, Instant::now());
            let (resp, event) = super::exchange::forward(app, target, out, event).await?;
            (resp, Some(event))
        }
        None => {
            let resp = app.upstream.forward(&target.host, target.port, out).await;
            (resp.map_err(|f| f.refusal)?, None)
        }
    };
    let (mut parts, body) = resp.into_parts();
    let needles = Needles::new(credential.iter().flat_map(|c| {
        [
            c.secret().to_string(),
            String::from_utf8_lossy(c.header_value().as_bytes()).into_owned(),
        ]
    }));
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

/// The answer to the call, under the agent's JSON-RPC id, as one JSON message.
async fn answer_as(id: &Value, resp: Response<ProxyBody>) -> Response<ProxyBody> {
    let status = resp.status();
    let read = match read_whole(resp).await {
        Ok((parts, bytes)) => read_answer(&parts, &bytes).map(|a| (parts, a)),
        Err(refusal) => Err(refusal),
    };
    let (parts, answer) = match read {
        Ok(read) => read,
        Err(refusal) => return refusal_answer(&Reply::ToolResult(id.clone()), &refusal),
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
    app: &App,
    target: &Target,
    agent: &Agent,
    endpoint: &[Arc<Tool>],
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
    let key = endpoint_key(target, endpoint);
    let listable = listable(app, agent, endpoint);
    answer.edit(|m| {
        if m.get("id") == Some(id) {
            if let Some(tools) = m.pointer(LISTED).and_then(Value::as_array) {
                remember_pins(app, &key, endpoint, tools);
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
fn opener(agent: &Agent, trail: &Trail) -> Opener {
    Opener {
        agent: agent.id.clone(),
        token: trail.token.clone(),
    }
}

/// A session is used only by the agent (and the token) that opened it: another agent's use is
/// refused before it reaches the server, so the session and its state stay its opener's.
fn owned(app: &App, key: &str, session: &str, who: &Opener) -> Result<(), Refusal> {
    match app.mcp_sessions.standing(key, session, who) {
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
fn listable(app: &App, agent: &Agent, endpoint: &[Arc<Tool>]) -> mcp::Listable {
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
    app: &App,
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
    let path = endpoint.first().map(|t| t.def.path.as_str()).unwrap_or("");
    format!("{}:{}{}", target.host, target.port, path)
}

/// Notes what the server listed for each pinned tool of the endpoint.
fn remember_pins(app: &App, key: &str, endpoint: &[Arc<Tool>], listed: &[Value]) {
    for t in endpoint {
        let Some(m) = t.mcp.as_ref().filter(|m| m.pin.is_some()) else {
            continue;
        };
        let seen = listed
            .iter()
            .find(|l| l.get("name").and_then(Value::as_str) == Some(m.name.as_str()))
            .map(mcp::pin_of);
        app.pins.saw(key, &m.name, seen);
    }
}

/// A pinned tool is called only while the server lists it as pinned: from what it last
/// listed (within a few seconds), else toolgate asks it now, in the agent's session.
async fn pinned(
    app: &App,
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
    let seen = match app.pins.fresh(&key, &m.name) {
        Some(seen) => seen,
        None => {
            let ask = json!({"jsonrpc": "2.0", "id": "toolgate-pin-check", "method": "tools/list"});
            let mut ask_parts = Request::new(()).into_parts().0;
            ask_parts.method = Method::POST;
            ask_parts.uri = parts.uri.clone();
            ask_parts.headers = parts.headers.clone();
            ask_parts.headers.remove(header::CONTENT_LENGTH);
            let body = Bytes::from(ask.to_string());
            let answer = pass(
                app,
                target,
                agent,
                tool,
                (ask_parts, body),
                None,
                "pin check",
            );
            let (parts, bytes) = read_whole(answer.await?).await?;
            let listed = mcp::answer_to(read_answer(&parts, &bytes)?.messages(), &ask["id"])
                .and_then(|a| {
                    a.pointer("/result/tools")
                        .and_then(Value::as_array)
                        .cloned()
                })
                .unwrap_or_default();
            remember_pins(app, &key, endpoint, &listed);
            app.pins.fresh(&key, &m.name).unwrap_or_default()
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

/// A request handled: the answer, and the refusal's code if it was refused.
type Handled<'a> = std::pin::Pin<
    Box<
        dyn std::future::Future<Output = (Response<ProxyBody>, Option<crate::error::Code>)>
            + Send
            + 'a,
    >,
>;

/// One message of a batch through the whole request path. Boxed as a trait object: the request
/// path reaches this function again, and a future cannot contain itself.
fn handle_one<'a>(
    app: Arc<App>,
    target: &'a Target,
    req: Request<ProxyBody>,
    request_id: String,
) -> Handled<'a> {
    Box::pin(super::handle(app, target, req, request_id, Instant::now()))
}

/// A batch: each message a request of its own (its own id, decision and events), answered
/// together as a JSON array in the order asked (notifications get no answer).
async fn batch(
    app: &Arc<App>,
    target: &Target,
    parts: http::request::Parts,
    list: Vec<Value>,
    trail: &Trail,
) -> Result<Response<ProxyBody>, Refusal> {
    if list.is_empty() {
        return Err(validation("an empty JSON-RPC batch asks for nothing"));
    }
    trail
        .record(
            &app.audit,
            crate::audit::Kind::Decision,
            json!({"outcome": "batch", "messages": list.len()}),
        )
        .await;
    let mut answers = Vec::new();
    for (i, message) in list.into_iter().enumerate() {
        let id = message.get("id").cloned();
        let mut req = Request::new(body::full(Bytes::from(message.to_string())));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = parts.uri.clone();
        *req.headers_mut() = parts.headers.clone();
        req.headers_mut().remove(header::CONTENT_LENGTH);
        let request_id = format!("{}.{}", trail.request_id, i + 1);
        let (resp, _) = handle_one(app.clone(), target, req, request_id).await;
        let Some(id) = id else { continue };
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
        answers.push(answer);
    }
    Ok(json_answer(StatusCode::OK, &Value::Array(answers)))
}
