//! The phases of one request inside a tunnel, each a function over the request's [`Call`]:
//! identify, match (and the tool's kill switch), validate (authorize, query, body, rules,
//! budget field, headers and credential), decide (deny, preview, propose, read, write). Each
//! returns a [`Refusal`] to stop; the record phase (in `handle`) runs on every exit.

use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::body::{self, ProxyBody};
use super::ctx::{RequestCtx, Target};
use super::exchange::{self, CallEvent};
use super::read::{read_body, Read};
use super::scrub::{Needles, Scrubbed};
use crate::app::Gate;
use crate::audit::{payload, Kind};
use crate::checks::{
    authorize, budget_amount, check_rules, forwarded_headers, validate_body, validate_path,
    validate_query,
};
use crate::error::{Code, Refusal};
use crate::guard::BodyReservation;
use crate::limits::charge_budget;
use crate::model::{Call, KillTarget};
use crate::policy::response::ResponseSpec;
use crate::policy::{Agent, Credential, EndUser, Tool, ToolKind};
use crate::services::LockKey;
use crate::store::{now_unix, IdemRecord, IdemState, Outcome};
use crate::upstream;
use crate::verdict::{self, Route};

/// How long an `Idempotency-Key` is remembered (Stripe's own window).
const KEY_WINDOW_SECS: u64 = 24 * 3600;

/// A call past the validate phase: the [`Call`] (as approval, commit, the ledger and replay
/// take it) with what the decide phase needs of the request: an HTTP request to a contracted
/// path, or a tool call an adapter (MCP) read out of a message.
pub(super) struct Checked {
    call: Call,
    agent: Arc<Agent>,
    tool: Arc<Tool>,
    params: std::collections::BTreeMap<String, String>,
    credential: Option<Arc<Credential>>,
    /// The head as sent.
    parts: http::request::Parts,
    query: Value,
    /// What the call asks of the tool's budget.
    amount: Option<f64>,
    /// The headers that go upstream, credential injected.
    headers: HeaderMap,
    /// The body as the audit log records it (fields the contract names redacted).
    body_event: Value,
    /// What the call is of the request: the request itself, an MCP tool call, or the root
    /// fields of a GraphQL operation.
    form: Form,
    /// The response contract the answer is held to: the tool's, or for a GraphQL operation
    /// those of its fields, at the keys its answer has.
    response: Option<Arc<ResponseSpec>>,
    started: std::time::Instant,
    /// The body's bytes held against the buffer caps until the call is done.
    _buffered: BodyReservation,
}

/// What a call is of the request that carries it.
pub(super) enum Form {
    /// The request is the call.
    Http,
    /// An MCP `tools/call` (the tool's name is the contract's `mcp_tool`).
    Mcp,
    /// A GraphQL operation: its root fields (the call's tool is the one whose mode decides).
    Graphql(Box<crate::graphql::Operation>),
}

impl Checked {
    /// The tool the call is for.
    pub(super) fn tool(&self) -> &Arc<Tool> {
        &self.tool
    }

    /// The arguments (an MCP call's) or the body as JSON.
    pub(super) fn arguments(&self) -> &Value {
        &self.call.body_json
    }
}

/// The call a request of `ctx` makes: to `tool`, with the head and body as sent and the body
/// (or arguments) as the contract reads it.
fn call_of(
    ctx: &RequestCtx,
    tool: &Tool,
    parts: &http::request::Parts,
    body: Bytes,
    body_json: Value,
) -> Call {
    Call {
        request_id: ctx.id.clone(),
        proposal: None,
        job: ctx.job.clone(),
        agent: ctx.agent().to_string(),
        tool: tool.name.clone(),
        tool_version: tool.version,
        host: ctx.target.host.clone(),
        port: ctx.target.port,
        method: parts.method.as_str().to_string(),
        path_and_query: path_and_query(parts),
        content_type: parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        body,
        body_json,
        undoes: ctx.target.undoes().map(str::to_string),
        user: ctx.user.as_ref().map(|u| u.id.clone()),
        user_groups: ctx
            .user
            .as_ref()
            .map(|u| u.groups.clone())
            .unwrap_or_default(),
    }
}

/// What the decide phase ends with, for the adapter the call came through (HTTP, MCP) to write
/// in its own form.
pub(super) enum Answer {
    /// Nothing was sent: the call, for a preview of what would have been.
    Preview(Box<Checked>),
    /// The upstream's answer to a read, passed on as it comes.
    Passed(Response<ProxyBody>),
    /// A stored answer: of a write, of an earlier identical call, of an approved proposal.
    Stored(Response<ProxyBody>),
}

impl Answer {
    /// The answer as an HTTP client reads it.
    pub(super) fn into_http(self, target: &Target) -> Response<ProxyBody> {
        match self {
            Answer::Preview(checked) => preview(target, &checked),
            Answer::Passed(resp) | Answer::Stored(resp) => resp,
        }
    }
}

/// Audit before forward: while the audit log cannot be written (a batch the store refused is
/// still being retried, or the shared store does not answer), nothing goes on, so nothing is
/// sent that could not be recorded. Checked once, before every phase that could forward
/// (MCP messages included); an approved call's commit fails closed on its durable event.
pub(super) fn recordable(app: &Gate) -> Result<(), Refusal> {
    match app.audit().writable() {
        true => Ok(()),
        false => Err(Refusal::store_unavailable()),
    }
}

/// The identify phase: the agent, looked up per request so that a reload or a kill switch
/// takes effect on open tunnels too; and the path, which must be canonical.
#[tracing::instrument(level = "debug", name = "identify", skip_all, fields(request_id = %ctx.id, phase = "identify"))]
pub(super) fn identify(
    app: &Gate,
    ctx: &mut RequestCtx,
    req: &Request<ProxyBody>,
) -> Result<Arc<Agent>, Refusal> {
    let agent =
        ctx.policy.agent(ctx.agent()).cloned().ok_or_else(|| {
            Refusal::auth_error("this agent is no longer defined in the policies")
        })?;
    if let Some(k) = app.kill().get(&KillTarget::Agent(agent.id.clone())) {
        return Err(verdict::agent_disabled(&agent.id, &k));
    }
    if req.method() == Method::CONNECT {
        return Err(Refusal::policy(
            "CONNECT inside a tunnel is not allowed; open one tunnel per host through toolgate",
        ));
    }
    verdict::canonical(req.uri().path())?;
    match &ctx.user {
        Some(user) => Ok(agent.acting_for(EndUser::clone(user))),
        None if agent.users == crate::policy::Users::Required => Err(Refusal::new(
            Code::UserAuthError,
            format!(
                "agent {} acts for people, and this call names none: send the person's signed assertion in Toolgate-User-Assertion, or use a token issued for them (toolgate tokens issue {} --for-user ID)",
                agent.id, agent.id
            ),
        )),
        None => Ok(agent),
    }
}

/// The phases of a request to a contracted path: match, authorize and validate, then decide.
#[tracing::instrument(level = "debug", name = "match", skip_all, fields(request_id = %ctx.id, phase = "match and validate"))]
pub(super) async fn process(
    app: &Arc<Gate>,
    ctx: &mut RequestCtx,
    agent: Arc<Agent>,
    req: Request<ProxyBody>,
) -> Result<Answer, Refusal> {
    let Some(matched) = match_tool(app, ctx, &req)? else {
        return Err(super::unmatched::refuse(app, ctx, req).await);
    };
    ctx.matched(&matched.tool);
    ctx.owner = Some(agent.owner.clone());
    let agent = crate::grants::for_tool(app, agent, &matched.tool.name).await?;
    let checked = validate(app, ctx, agent, matched, req).await?;
    decide(app, ctx, checked).await
}

/// The match phase: the one contract the path matches (none: refused, see
/// [`super::unmatched`]), and that tool's kill switch.
fn match_tool(
    app: &Gate,
    ctx: &RequestCtx,
    req: &Request<ProxyBody>,
) -> Result<Option<crate::policy::Matched>, Refusal> {
    let (target, path) = (&ctx.target, req.uri().path());
    let Some(matched) = ctx
        .policy
        .match_tool(&target.host, target.port, req.method(), path)
    else {
        return Ok(None);
    };
    tool_enabled(app, &matched.tool)?;
    Ok(Some(matched))
}

/// The tool's kill switch.
pub(super) fn tool_enabled(app: &Gate, tool: &Tool) -> Result<(), Refusal> {
    match app.kill().get(&KillTarget::Tool(tool.name.clone())) {
        Some(k) => Err(verdict::tool_disabled(tool, &k)),
        None => Ok(()),
    }
}

/// A tool call an adapter read from a message (an MCP `tools/call`): the authorize and
/// validate phases with the arguments in the place of a body (the body read is the message,
/// sent as it is).
pub(super) fn arguments_call(
    ctx: &RequestCtx,
    agent: Arc<Agent>,
    tool: Arc<Tool>,
    read: Read,
    arguments: Value,
) -> Result<Checked, Refusal> {
    let (credential, amount) = verdict::arguments(&agent, &tool, &read.parts, &arguments)?;
    let Read {
        parts,
        body,
        buffered,
    } = read;
    let headers = upstream_headers(&tool, &parts.headers, credential.as_deref())?;
    let body_event = arguments_event(&tool, &arguments);
    let response = tool.response.clone();
    Ok(Checked {
        call: call_of(ctx, &tool, &parts, body, arguments),
        agent,
        tool,
        params: Default::default(),
        credential,
        parts,
        query: Value::Null,
        amount,
        headers,
        body_event,
        form: Form::Mcp,
        response,
        started: std::time::Instant::now(),
        _buffered: buffered,
    })
}

/// A GraphQL operation its adapter read and held field by field: the operation, the field
/// whose contract decides, the response contract of its fields, and how the audit records it.
pub(super) struct Fielded {
    pub(super) op: crate::graphql::Operation,
    pub(super) field: crate::checks::graphql::Field,
    pub(super) response: Option<Arc<ResponseSpec>>,
    pub(super) body_event: Value,
}

/// A GraphQL operation as one call: the request as sent, judged by the deciding field's
/// contract, whose arguments stand in the place of a body (for its summary, its budget, its
/// story).
pub(super) fn graphql_call(
    ctx: &RequestCtx,
    agent: Arc<Agent>,
    fielded: Fielded,
    read: Read,
) -> Result<Checked, Refusal> {
    let Fielded {
        op,
        field,
        response,
        body_event,
    } = fielded;
    let Read {
        parts,
        body,
        buffered,
    } = read;
    let tool = field.tool;
    let headers = upstream_headers(&tool, &parts.headers, field.credential.as_deref())?;
    Ok(Checked {
        call: call_of(ctx, &tool, &parts, body, field.root.arguments),
        agent,
        tool,
        params: Default::default(),
        credential: field.credential,
        parts,
        query: Value::Null,
        amount: field.amount,
        headers,
        body_event,
        form: Form::Graphql(Box::new(op)),
        response,
        started: std::time::Instant::now(),
        _buffered: buffered,
    })
}

/// The headers that go upstream: the agent's, as the tool forwards them, with the tool's
/// credential in place of anything the agent sent.
pub(super) fn upstream_headers(
    tool: &Tool,
    sent: &HeaderMap,
    credential: Option<&Credential>,
) -> Result<HeaderMap, Refusal> {
    let mut headers = forwarded_headers(tool, sent)?;
    if let Some(cred) = credential {
        headers.remove(&cred.header);
        headers.insert(cred.header.clone(), cred.header_value());
    }
    Ok(headers)
}

/// The path and query as sent.
pub(super) fn path_and_query(parts: &http::request::Parts) -> String {
    parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| parts.uri.path().to_string())
}

/// An MCP call's arguments as the audit log records them (fields the contract names redacted).
fn arguments_event(tool: &Tool, arguments: &Value) -> Value {
    let mut v = arguments.clone();
    for pointer in &tool.redact {
        if let Some(field) = v.pointer_mut(pointer) {
            *field = Value::String(crate::audit::REDACTED.into());
        }
    }
    let name = tool.mcp.as_ref().map(|m| m.name.as_str()).unwrap_or("");
    json!({"mcp_tool": name, "arguments": v})
}

/// The authorize and validate phases: permissions and credential, query, body (read within
/// the caps), rules, the budget field and the headers that go upstream.
async fn validate(
    app: &Gate,
    ctx: &RequestCtx,
    agent: Arc<Agent>,
    matched: crate::policy::Matched,
    req: Request<ProxyBody>,
) -> Result<Checked, Refusal> {
    let tool = matched.tool;
    let credential = authorize(&agent, &tool, &matched.params)?;
    validate_path(&tool, &matched.params)?;
    let (parts, incoming) = req.into_parts();
    let query = validate_query(&tool, parts.uri.query())?;
    let Read {
        parts,
        body,
        buffered,
    } = read_body(app, &agent.id, &tool, parts, incoming).await?;
    let body_json = validate_body(&tool, &parts.headers, &body)?;
    check_rules(&agent, &tool, &parts, &matched.params, &query, &body_json)?;
    let amount = budget_amount(&tool, &body_json)?;
    let headers = upstream_headers(&tool, &parts.headers, credential.as_deref())?;
    let body_event = body_event(&tool, &body, &body_json);
    let response = tool.response.clone();
    Ok(Checked {
        call: call_of(ctx, &tool, &parts, body, body_json),
        agent,
        tool,
        params: matched.params,
        credential,
        parts,
        query,
        amount,
        headers,
        body_event,
        form: Form::Http,
        response,
        started: std::time::Instant::now(),
        _buffered: buffered,
    })
}

/// The body as the audit log records it: fields the contract names are never written.
fn body_event(tool: &Tool, body: &Bytes, body_json: &Value) -> Value {
    if tool.redact.is_empty() || !body_json.is_object() {
        return crate::audit::body_json(body, crate::audit::BODY_CAP);
    }
    let mut v = body_json.clone();
    for pointer in &tool.redact {
        if let Some(field) = v.pointer_mut(pointer) {
            *field = Value::String(crate::audit::REDACTED.into());
        }
    }
    json!({"json": v, "bytes": body.len()})
}

/// Which model answer asked for the call: one this replica saw, else (on a shared store) one
/// another replica recorded.
async fn joined(app: &Arc<Gate>, ctx: &RequestCtx, checked: &Checked) -> Option<Value> {
    use super::requested_by::{join, recorded_elsewhere, settled, Carried};
    let carried = Carried {
        arguments: &checked.call.body_json,
        query: &checked.query,
        params: &checked.params,
    };
    let whose = crate::services::Whose {
        agent: ctx.agent(),
        job: ctx.named_job(),
        user: ctx.user.as_ref().map(|u| u.id.as_str()),
    };
    let here = join(app.model_asks(), &whose, None, &checked.tool, &carried);
    if settled(&here) {
        return here;
    }
    match recorded_elsewhere(app, &checked.agent, &ctx.policy).await {
        Some(elsewhere) => join(
            app.model_asks(),
            &whose,
            Some(elsewhere),
            &checked.tool,
            &carried,
        ),
        None => here,
    }
}

/// The decide phase: deny, preview, hold for approval, or send (a read, or a write).
#[tracing::instrument(level = "debug", name = "decide", skip_all, fields(request_id = %ctx.id, phase = "decide"))]
pub(super) async fn decide(
    app: &Arc<Gate>,
    ctx: &RequestCtx,
    mut checked: Checked,
) -> Result<Answer, Refusal> {
    let tool = checked.tool.clone();
    // An undo was asked for by an approver: it is not previewed, and not held.
    let undo = checked.call.undoes.is_some();
    let joined = match tool.kind != ToolKind::Model && !undo {
        true => joined(app, ctx, &checked).await,
        false => None,
    };
    if let Some(joined) = &joined {
        ctx.note_requested_by(joined.clone());
    }
    if let Some(g) = checked.agent.grant(&tool.name) {
        ctx.record_beside(Kind::GrantUsed, crate::grants::facts(g))
            .await;
    }
    match verdict::route(&checked.agent, &tool, &checked.parts.headers, undo)? {
        Route::Preview => {
            ctx.record(Kind::Decision, decision("dry_run", &checked))
                .await;
            Ok(Answer::Preview(Box::new(checked)))
        }
        Route::Propose => {
            // The proposal stores the request without the credential; it is injected at commit.
            if let Some(cred) = &checked.credential {
                checked.headers.remove(&cred.header);
            }
            ctx.flush().await;
            propose(app, ctx, &checked, joined)
                .await
                .map(Answer::Stored)
        }
        Route::Read => read(app, ctx, checked).await.map(Answer::Passed),
        Route::Write(key) => {
            ctx.flush().await;
            write(app, ctx, checked, key.as_deref())
                .await
                .map(Answer::Stored)
        }
    }
}

/// The inject phase: the call's credential made ready to go (a per-user one filled with the
/// token of the person the call acts for) and put in the headers that go upstream; which
/// connection and scopes served the call is recorded (never the token).
async fn inject(app: &Gate, ctx: &RequestCtx, checked: &mut Checked) -> Result<(), Refusal> {
    let resolved = app
        .vault()
        .credential(
            app.upstream(),
            &ctx.policy,
            checked.credential.as_ref(),
            ctx.user.as_deref(),
            &app.config().admin_url,
        )
        .await?;
    if let Some(c) = &resolved.credential {
        checked.headers.remove(&c.header);
        checked.headers.insert(c.header.clone(), c.header_value());
    }
    if let Some(facts) = resolved.used {
        ctx.record_beside(Kind::ConnectionUsed, facts).await;
    }
    checked.credential = resolved.credential;
    Ok(())
}

/// The payload of a call's `decision` event when it goes on (sent, or previewed).
fn decision(outcome: &str, checked: &Checked) -> Value {
    payload::Decision {
        outcome: outcome.into(),
        mode: Some(checked.tool.mode.as_str().into()),
        body: Some(checked.body_event.clone()),
        ..payload::Decision::default()
    }
    .into_value()
}

/// sha256 of method, path and query, and body: what makes two calls the same call. For an MCP
/// call, of the tool and its arguments: a retry carries a new JSON-RPC id and is the same call.
fn payload_sha(checked: &Checked) -> String {
    match &checked.form {
        Form::Http => {}
        Form::Mcp => {
            let name = checked
                .tool
                .mcp
                .as_ref()
                .map(|m| m.name.as_str())
                .unwrap_or("");
            return hex::encode(Sha256::digest(crate::mcp::call_identity(
                name,
                &checked.call.body_json,
            )));
        }
        Form::Graphql(op) => return crate::checks::graphql::identity(op),
    }
    let mut h = Sha256::new();
    h.update(checked.parts.method.as_str());
    h.update([0]);
    h.update(&checked.call.path_and_query);
    h.update([0]);
    h.update(&checked.call.body);
    hex::encode(h.finalize())
}

/// The request as it goes upstream (the headers move into it).
fn outgoing(checked: &mut Checked) -> Request<ProxyBody> {
    let mut out = Request::new(body::full(checked.call.body.clone()));
    *out.method_mut() = checked.parts.method.clone();
    *out.uri_mut() = checked.call.path_and_query.parse().unwrap_or_default();
    *out.headers_mut() = std::mem::take(&mut checked.headers);
    super::trace::propagate(&mut out, &checked.tool);
    out
}

/// Holds the call for a person: a new or joined proposal.
async fn propose(
    app: &Arc<Gate>,
    ctx: &RequestCtx,
    checked: &Checked,
    requested_by: Option<Value>,
) -> Result<Response<ProxyBody>, Refusal> {
    let payload = payload_sha(checked);
    let held = crate::approval::Held {
        call: &checked.call,
        agent: &checked.agent,
        tool: &checked.tool,
        headers: &checked.headers,
        payload_sha256: &payload,
        summary_ctx: json!({"body": checked.call.body_json, "arguments": checked.call.body_json, "params": checked.params, "query": checked.query}),
        redactor: &app.audit().redactor,
        budget_amount: checked.amount,
        token: ctx.token.as_deref(),
        requested_by,
    };
    crate::approval::propose_and_wait(app.core(), held).await
}

/// A call without side effects: sent at once, its answer streamed back, secrets cut out.
async fn read(
    app: &Gate,
    ctx: &RequestCtx,
    mut checked: Checked,
) -> Result<Response<ProxyBody>, Refusal> {
    let tool = checked.tool.clone();
    app.limiter().admit(&checked.agent.id, &tool).await?;
    // The person's token is fetched (refreshed, exchanged) only for a call within its limits:
    // a refused call never makes toolgate call a provider.
    inject(app, ctx, &mut checked).await?;
    let event = CallEvent::of(ctx, decision("allowed", &checked), checked.started);
    let (resp, event) = exchange::forward(app, &ctx.target, outgoing(&mut checked), event).await?;
    let (mut parts, body) = resp.into_parts();
    // The injected credential never reaches the agent, even if the upstream echoes it.
    let needles = Needles::of_credential(checked.credential.as_deref());
    needles.scrub_headers(&mut parts.headers);
    let body = Scrubbed::new(body, needles);
    let latency_ms = checked.started.elapsed().as_millis() as u64;
    if tool.kind == ToolKind::Model {
        return Ok(model_answer(app, ctx, &checked, event, parts, body).await);
    }
    if let Some(spec) = &checked.response {
        return contracted_read(event, parts, body, spec, latency_ms).await;
    }
    // One event tells the whole read: what was asked, the decision, and the answer (whose
    // body streams to the agent and is not kept).
    let response = payload::Response {
        status: Some(parts.status.as_u16()),
        headers: Some(crate::audit::headers_json(&parts.headers)),
        body: Some(json!({"streamed": true})),
        latency_ms: Some(latency_ms),
        ..payload::Response::default()
    };
    event.record(response.into_value()).await;
    Ok(Response::from_parts(parts, body::stream(body)))
}

/// The largest answer of a read with a response contract that toolgate reads whole.
const CONTRACTED_ANSWER_CAP: usize = 16 * 1024 * 1024;

/// A read whose tool has a response contract: the answer is read whole, the agent gets it with
/// the hidden fields out, and the audit keeps the kept fields (a schema mismatch is an event).
async fn contracted_read(
    mut event: CallEvent,
    mut parts: http::response::Parts,
    mut body: Scrubbed<hyper::body::Incoming>,
    spec: &crate::policy::response::ResponseSpec,
    latency_ms: u64,
) -> Result<Response<ProxyBody>, Refusal> {
    let mut response = json!({
        "status": parts.status.as_u16(),
        "latency_ms": latency_ms,
    });
    response["headers"] = crate::audit::headers_json(&parts.headers);
    let mut bytes = Vec::new();
    let mut unread = None;
    while let Some(frame) = body.frame().await {
        let data = match frame.map(|f| f.into_data()) {
            Ok(Ok(data)) => data,
            Ok(Err(_)) => continue,
            Err(e) => {
                unread = Some(format!("the answer could not be read: {e}"));
                break;
            }
        };
        if bytes.len() + data.len() > CONTRACTED_ANSWER_CAP {
            unread = Some(format!("the answer is larger than {CONTRACTED_ANSWER_CAP} bytes, which a tool with a response contract reads whole"));
            break;
        }
        bytes.extend_from_slice(&data);
    }
    if let Some(why) = unread {
        // The call went out and was answered: its event says so, and why the agent gets none.
        response["error"] = Value::String(why.clone());
        event.record(response).await;
        return Err(Refusal::new(Code::UpstreamError, why));
    }
    let value_of = |name| parts.headers.get(name).and_then(|v| v.to_str().ok());
    let (content_type, content_encoding) = (
        value_of(header::CONTENT_TYPE),
        value_of(header::CONTENT_ENCODING),
    );
    let subject = spec.subject(&bytes, content_type, content_encoding);
    if let Some(why) = spec.mismatch(&subject) {
        event
            .record_first(Kind::ResponseSchemaMismatch, json!({ "message": why }))
            .await;
    }
    let kept = spec.kept(&subject);
    let shown = spec.shown(&bytes, content_type, content_encoding);
    response["body"] = crate::audit::body_json(&kept, crate::audit::BODY_CAP);
    event.record(response).await;
    let shown = shown.map_err(|why| {
        Refusal::new(
            Code::UpstreamError,
            format!("toolgate withheld the answer: {why}; it cannot remove the fields the tool's contract hides"),
        )
    })?;
    parts.headers.remove(header::CONTENT_LENGTH);
    Ok(Response::from_parts(parts, body::full(Bytes::from(shown))))
}

/// A model provider's answer: streamed as it comes, its usage recorded when it ends.
async fn model_answer(
    app: &Gate,
    ctx: &RequestCtx,
    checked: &Checked,
    event: CallEvent,
    parts: http::response::Parts,
    body: Scrubbed<hyper::body::Incoming>,
) -> Response<ProxyBody> {
    let sse = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let audit = app.audit().clone();
    let provider = super::model::provider(&ctx.target.host);
    let asked_model = checked
        .call
        .body_json
        .get("model")
        .and_then(Value::as_str)
        .map(str::to_string);
    let status = parts.status.as_u16();
    let headers_event = crate::audit::headers_json(&parts.headers);
    let base = ctx.rec(Kind::ModelUsage, Value::Null);
    let started = checked.started;
    let (asks, agent, model_request) = (
        app.model_asks().clone(),
        ctx.agent().to_string(),
        ctx.id.clone(),
    );
    let job = ctx.named_job().map(str::to_string);
    let user = ctx.user.as_ref().map(|u| u.id.clone());
    let tap = super::model::UsageTap::new(
        body,
        sse,
        checked.tool.model_answer,
        Box::new(move |seen: super::model::Seen| {
            noted(&asks, &agent, (job.clone(), user), &model_request, &seen);
            let mut rec = base;
            rec.payload = json!({
                "provider": provider,
                "model": seen.model.or(asked_model),
                "usage": seen.usage,
                "status": status,
                "streamed": sse,
                "headers": headers_event,
                "latency_ms": started.elapsed().as_millis() as u64,
            });
            // The tool calls the model asked for (their arguments redacted as every payload
            // is, when recorded); the model's own text is not kept.
            if let (Some(Value::Object(asked)), Value::Object(m)) =
                (seen.tool_requests, &mut rec.payload)
            {
                m.extend(asked);
                // The job the model call named: its tool calls are carried out in it.
                if let Some(job) = job {
                    m.insert("asked_in_job".into(), Value::String(job));
                }
            }
            audit.record_now(rec);
        }),
    );
    event
        .record_apart(json!({"status": status, "body": {"streamed": true}, "latency_ms": started.elapsed().as_millis() as u64}))
        .await;
    Response::from_parts(parts, body::stream(tap))
}

/// Notes the tool calls a model answer asked for, for joining the calls that carry them out.
fn noted(
    asks: &crate::services::ModelAsks,
    agent: &str,
    (job, user): (Option<String>, Option<String>),
    model_request: &str,
    seen: &super::model::Seen,
) {
    let none = Value::Null;
    let asked = seen.tool_requests.as_ref().unwrap_or(&none);
    let answer_id = asked["answer_id"].as_str().map(str::to_string);
    let list = asked["tool_calls"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|call| {
            crate::services::model_asks::ModelAsk::new(
                model_request,
                seen.model.clone(),
                answer_id.clone(),
                call,
            )
            .within(job.clone(), user.clone())
        })
        .collect();
    asks.asked(agent, list);
}

/// A call with side effects: at most once per idempotency identity, within the limits, then
/// the one commit routine.
async fn write(
    app: &Arc<Gate>,
    ctx: &RequestCtx,
    mut checked: Checked,
    key: Option<&str>,
) -> Result<Response<ProxyBody>, Refusal> {
    let (agent, tool) = (checked.agent.clone(), checked.tool.clone());
    let payload = payload_sha(&checked);
    let (idem_id, window_secs) = idempotency_of(&checked, key, &payload);
    let guard = app.locks().lock(LockKey::Call(idem_id.clone())).await;
    let earlier = app
        .store()
        .idem_get(&idem_id)
        .await
        .map_err(idem_store_err)?;
    if let Some(answer) =
        earlier_answer(ctx, &checked, earlier.as_ref(), window_secs, &payload).await?
    {
        return answer;
    }
    // limits: only calls that will execute count.
    app.limiter().admit(&agent.id, &tool).await?;
    // The person's token, only for a call that will execute (not for a replayed answer, nor
    // past a limit): before the budget is charged, so that a refusal here charges nothing.
    inject(app, ctx, &mut checked).await?;
    let charged = charge_budget(app.store(), &agent.id, &tool, checked.amount).await?;
    // Marked in flight, durably, before a byte leaves: a crash from here on is never re-sent.
    let rec = IdemRecord {
        state: IdemState::InFlight,
        payload_sha256: payload,
        created_unix: now_unix(),
        request_id: ctx.id.clone(),
        outcome: None,
    };
    // Compare-and-set against the record read above: of two identical calls racing (on two
    // replicas of a shared store), one marks it and sends; the other is told it is in flight.
    let holder = earlier.as_ref().map(|r| r.request_id.as_str());
    let swapped = app.store().idem_swap(&idem_id, holder, &rec).await;
    if !matches!(swapped, Ok(true)) {
        crate::limits::refund_budget(app.store(), charged).await;
        return Err(match swapped {
            Err(e) => idem_store_err(e),
            _ => Refusal::new(
                Code::IdempotencyConflict,
                format!(
                    "an identical call to {} is being sent right now; it was not sent twice. Retry shortly to get its answer",
                    tool.name
                ),
            ),
        });
    }
    // Marked in flight: from here the commit and what settles it run as a task of their own,
    // so that a client going away (hyper drops this future) cannot leave the call in flight
    // with its answer unrecorded (a retry then gets the stored answer).
    let settling = Settling {
        idem_id,
        rec,
        charged,
        _guard: guard,
    };
    let settling = commit_and_settle(app.clone(), ctx.detached(), checked, settling);
    // In the call's trace, though a task of its own.
    let settled = app
        .tasks()
        .spawn(tracing::Instrument::in_current_span(settling));
    settled.await.unwrap_or_else(|e| {
        Err(Refusal::internal(format!(
            "the commit ended without an answer ({e}); its outcome is unknown"
        )))
    })
}

/// The idempotency identity of a write and how long it is remembered: its key's (within the
/// key window) or its payload's (within the tool's window), per agent and tool. A call for one
/// person is never answered with another's: the person is part of who asks.
fn idempotency_of(checked: &Checked, key: Option<&str>, payload: &str) -> (String, u64) {
    let (agent, tool) = (&checked.agent, &checked.tool);
    let who = match &agent.user {
        Some(user) => format!("{}\u{0}for\u{0}{}", agent.id, user.id),
        None => agent.id.clone(),
    };
    match key {
        Some(key) => (idem_id("key", &who, &tool.name, key), KEY_WINDOW_SECS),
        // A tool with side effects always has an idempotency mode (a load-time rule); payload is
        // the safe reading of anything else.
        None => (
            idem_id("payload", &who, &tool.name, payload),
            tool.idempotency_window.as_secs(),
        ),
    }
}

/// A write marked in flight, until it is settled: its idempotency record, the budget charged,
/// and the key's lock.
struct Settling {
    idem_id: String,
    rec: IdemRecord,
    charged: crate::limits::Charge,
    _guard: tokio::sync::OwnedMutexGuard<()>,
}

/// A write marked in flight: committed, then its idempotency record settled (cleared when
/// nothing was sent, else the outcome stored), the key's lock held until then.
async fn commit_and_settle(
    app: Arc<Gate>,
    ctx: RequestCtx,
    mut checked: Checked,
    settling: Settling,
) -> Result<Response<ProxyBody>, Refusal> {
    let app = app.as_ref();
    let Settling {
        idem_id,
        mut rec,
        charged,
        _guard,
    } = settling;
    ctx.record(Kind::Decision, decision("allowed", &checked))
        .await;
    let request = outgoing(&mut checked);
    let commit = commit_of(&ctx, &checked, request, charged);
    let sent = match crate::commit::send(app, commit).await {
        Ok(sent) => sent,
        Err(failed) if failed.sent_nothing() => {
            // Nothing reached the upstream: the call may be retried.
            app.store()
                .idem_remove(&idem_id)
                .await
                .map_err(idem_store_err)?;
            return Err(failed.into_refusal());
        }
        Err(failed) => return Err(failed.into_refusal()),
    };
    rec.state = IdemState::Done;
    rec.outcome = Some(sent.stored);
    if let Err(e) = app.store().idem_put(&idem_id, &rec).await {
        // The call executed; the agent gets its answer. A retry finds it in flight and is
        // refused as unknown rather than executed twice.
        tracing::error!(request_id = %ctx.id, error = %e, "could not store the outcome of a committed call");
    }
    // The agent gets the answer (hidden fields out); a duplicate gets what is stored.
    Ok(replay_first(&sent.shown))
}

fn idem_store_err(e: crate::store::StoreError) -> Refusal {
    Refusal::internal(format!(
        "the idempotency store is unavailable ({e}); the call was not sent"
    ))
}

/// The answer an identical earlier call already got (or why it cannot be given), if one is
/// remembered within the window.
async fn earlier_answer(
    ctx: &RequestCtx,
    checked: &Checked,
    earlier: Option<&IdemRecord>,
    window_secs: u64,
    payload: &str,
) -> Result<Option<Result<Response<ProxyBody>, Refusal>>, Refusal> {
    let Some(rec) = earlier.cloned() else {
        return Ok(None);
    };
    let tool = &checked.tool;
    if now_unix().saturating_sub(rec.created_unix) >= window_secs {
        return Ok(None);
    }
    if rec.payload_sha256 != payload {
        return Err(Refusal::new(
            Code::IdempotencyConflict,
            format!(
                "this Idempotency-Key was already used for a different request to {} (request {}); use a new key for a new call",
                tool.name, rec.request_id
            ),
        ));
    }
    Ok(Some(match (rec.state, rec.outcome) {
        (IdemState::Done, Some(outcome)) => {
            ctx.record(
                Kind::IdempotentReplay,
                json!({"original_request": rec.request_id, "status": outcome.status}),
            ).await;
            Ok(match &checked.response {
                Some(spec) => replay(&crate::commit::shown(spec, &outcome)),
                None => replay(&outcome),
            })
        }
        _ => Err(Refusal::new(
            Code::IdempotencyConflict,
            format!(
                "the outcome of the earlier identical call to {} (request {}) is unknown: it was in flight when toolgate stopped or timed out; it will not be sent again. Check the upstream, then retry with a new Idempotency-Key if it did not happen",
                tool.name, rec.request_id
            ),
        )),
    }))
}

/// What the commit routine needs to know about a call sent at once.
fn commit_of<'a>(
    ctx: &RequestCtx,
    checked: &'a Checked,
    request: Request<ProxyBody>,
    charged: crate::limits::Charge,
) -> crate::commit::Commit<'a> {
    let call = &checked.call;
    crate::commit::Commit {
        who: ctx.rec(Kind::Commit, Value::Null),
        commit_payload: payload::Commit {
            method: call.method.clone(),
            url: call.url(),
            sha256: hex::encode(Sha256::digest(&call.body)),
            body: Some(checked.body_event.clone()),
            approvals: None,
        },
        call,
        request,
        charged,
        response: checked.response.as_deref(),
    }
}

/// The answer to the call that executed: the stored outcome, without the replay mark.
fn replay_first(outcome: &Outcome) -> Response<ProxyBody> {
    crate::model::stored_answer(outcome)
}

fn idem_id(kind: &str, agent: &str, tool: &str, key: &str) -> String {
    let mut h = Sha256::new();
    for part in [kind, agent, tool, key] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    hex::encode(h.finalize())
}

/// The dry-run answer: the request toolgate would send, secrets redacted, nothing sent.
fn preview(target: &Target, checked: &Checked) -> Response<ProxyBody> {
    let (tool, credential) = (&checked.tool, checked.credential.as_deref());
    let (body, path_and_query) = (&checked.call.body, &checked.call.path_and_query);
    let mut shown = serde_json::Map::new();
    for (name, value) in &checked.headers {
        let text = value.to_str().unwrap_or("<binary>");
        let secret = credential.is_some_and(|c| name == c.header || text.contains(c.secret()));
        let text = if secret || value.is_sensitive() {
            "[REDACTED]"
        } else {
            text
        };
        shown.insert(name.to_string(), Value::from(text));
    }
    let body_text = match std::str::from_utf8(body) {
        Ok(t) => match credential {
            Some(c) => t.replace(c.secret(), "[REDACTED]"),
            None => t.to_string(),
        },
        Err(_) => format!(
            "base64:{}",
            base64::engine::general_purpose::STANDARD.encode(body)
        ),
    };
    let preview = json!({
        "dry_run": true,
        "tool": tool.name,
        "version": tool.version,
        "request": {
            "method": checked.parts.method.as_str(),
            "url": format!("https://{}{}", upstream::authority(&target.host, target.port), path_and_query),
            "headers": shown,
            "body": body_text,
        },
        "note": "nothing was sent",
    });
    let mut resp = Response::new(body::full(preview.to_string()));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp.headers_mut()
        .insert("toolgate-dry-run", HeaderValue::from_static("true"));
    resp
}

/// A stored outcome, answered again.
fn replay(outcome: &Outcome) -> Response<ProxyBody> {
    let mut resp = crate::model::stored_answer(outcome);
    resp.headers_mut()
        .insert("toolgate-replayed", HeaderValue::from_static("true"));
    resp
}
