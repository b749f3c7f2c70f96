//! The phases of one request inside a tunnel, each a function over the request's [`Call`]:
//! identify, match (and the tool's kill switch), validate (authorize, query, body, rules,
//! budget field, headers and credential), decide (deny, preview, propose, read, write). Each
//! returns a [`Refusal`] to stop; the record phase (`super::handle`) runs on every exit.

use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::body::{self, ProxyBody};
use super::exchange::{self, CallEvent};
use super::scrub::{Needles, Scrubbed};
use super::Target;
use crate::checks::{
    authorize, budget_amount, check_rules, forwarded_headers, idempotency_key, validate_body,
    validate_path, validate_query, validation,
};
use crate::error::{Code, Refusal};
use crate::guard::{BodyReservation, Exceeded};
use crate::limits::charge_budget;
use crate::model::KillTarget;
use crate::policy::{check_path, Agent, Credential, Mode, Policy, SideEffects, Tool};
use crate::services::LockKey;
use crate::store::{now_unix, IdemRecord, IdemState, Outcome};
use crate::upstream;
use crate::App;

/// How long an `Idempotency-Key` is remembered (Stripe's own window).
const KEY_WINDOW_SECS: u64 = 24 * 3600;

/// Everything the phases learn about one request, filled in as it goes.
pub(super) struct Call {
    agent: Arc<Agent>,
    tool: Arc<Tool>,
    params: std::collections::BTreeMap<String, String>,
    credential: Option<Arc<Credential>>,
    parts: http::request::Parts,
    query: Value,
    body: Bytes,
    body_json: Value,
    /// What the call asks of the tool's budget.
    amount: Option<f64>,
    path_and_query: String,
    /// The headers that go upstream, credential injected.
    headers: HeaderMap,
    /// The body as the audit log records it (fields the contract names redacted).
    body_event: Value,
    /// The call being undone, when toolgate itself sends an undo.
    undo_of: Option<String>,
    /// An MCP tool call: its JSON-RPC id (the tool's name is the contract's `mcp_tool`).
    mcp_id: Option<Value>,
    started: std::time::Instant,
    /// The body's bytes held against the buffer caps until the call is done.
    _buffered: BodyReservation,
}

/// The phases of one request inside a tunnel: identify, match, authorize and validate, then
/// decide (deny, preview, propose, read or write).
pub(super) async fn process(
    app: &Arc<App>,
    target: &Target,
    req: Request<ProxyBody>,
    trail: &mut Trail,
) -> Result<Response<ProxyBody>, Refusal> {
    recordable(app)?;
    let policy = app.policy();
    let agent = identify(app, &policy, target, req.method())?;
    canonical(req.uri().path())?;
    let endpoint = policy.mcp_endpoint(&target.host, target.port, req.uri().path());
    if !endpoint.is_empty() {
        return super::mcp::process(app, target, agent, endpoint, req, trail).await;
    }
    let matched = match_tool(app, &policy, target, &req)?;
    trail.tool = Some(matched.tool.name.clone());
    trail.version = Some(matched.tool.version);
    trail.owner = Some(agent.owner.clone());
    let agent = crate::grants::for_tool(app, agent, &matched.tool.name).await?;
    let call = validate(app, target, agent, matched, req).await?;
    decide(app, target, call, trail).await
}

/// Audit before forward: while the audit log cannot be written (a batch the store refused is
/// still being retried, or the shared store does not answer), nothing goes on, so nothing is
/// sent that could not be recorded. Checked once, before every phase that could forward
/// (MCP messages included); an approved call's commit fails closed on its durable event.
fn recordable(app: &App) -> Result<(), Refusal> {
    match app.audit.writable() {
        true => Ok(()),
        false => Err(Refusal::store_unavailable()),
    }
}

/// The identify phase: the agent, looked up per request so that a reload or a kill switch
/// takes effect on open tunnels too.
fn identify(
    app: &App,
    policy: &Policy,
    target: &Target,
    method: &Method,
) -> Result<Arc<Agent>, Refusal> {
    let agent = policy
        .agent(&target.agent_id)
        .cloned()
        .ok_or_else(|| Refusal::auth_error("this agent is no longer defined in the policies"))?;
    if let Some(k) = app.kill.get(&KillTarget::Agent(agent.id.clone())) {
        return Err(Refusal::new(
            Code::ToolDisabled,
            format!(
                "agent {} is disabled by {}: {}; no call is sent until it is enabled",
                agent.id, k.by, k.reason
            ),
        ));
    }
    if method == Method::CONNECT {
        return Err(Refusal::policy(
            "CONNECT inside a tunnel is not allowed; open one tunnel per host through toolgate",
        ));
    }
    Ok(agent)
}

/// The match phase: a canonical path, the one contract it matches, and that tool's kill switch.
fn match_tool(
    app: &App,
    policy: &Policy,
    target: &Target,
    req: &Request<ProxyBody>,
) -> Result<crate::policy::Matched, Refusal> {
    let path = req.uri().path();
    let matched = policy
        .match_tool(&target.host, target.port, req.method(), path)
        .ok_or_else(|| no_match(policy, target, req.method(), path))?;
    tool_enabled(app, &matched.tool)?;
    Ok(matched)
}

/// The path as sent must be canonical: toolgate matches it as it is and never normalises it.
fn canonical(path: &str) -> Result<(), Refusal> {
    check_path(path).map_err(|e| {
        Refusal::policy(format!(
            "{e}; send the path in canonical form, toolgate does not normalise it"
        ))
    })
}

/// The tool's kill switch.
pub(super) fn tool_enabled(app: &App, tool: &Tool) -> Result<(), Refusal> {
    match app.kill.get(&KillTarget::Tool(tool.name.clone())) {
        Some(k) => Err(Refusal::new(
            Code::ToolDisabled,
            format!(
                "tool {} is disabled by {}: {}; do not retry until it is enabled",
                tool.name, k.by, k.reason
            ),
        )),
        None => Ok(()),
    }
}

/// An MCP tool call read from its JSON-RPC message: the authorize and validate phases with the
/// arguments in the place of a body (the body read is the message, sent as it is).
pub(super) fn mcp_call(
    target: &Target,
    agent: Arc<Agent>,
    tool: Arc<Tool>,
    (parts, body, buffered): (http::request::Parts, Bytes, BodyReservation),
    (id, arguments): (Value, Value),
) -> Result<Call, Refusal> {
    let params = Default::default();
    let credential = authorize(&agent, &tool, &params)?;
    if let Some(mcp) = &tool.mcp {
        if crate::policy::contract::depth(&arguments) > crate::policy::contract::MAX_DEPTH {
            return Err(validation("the arguments nest too deeply"));
        }
        mcp.arguments
            .check(&arguments)
            .map_err(|e| validation(format!("MCP tool {} arguments: {e}", mcp.name)))?;
    }
    check_rules(&agent, &tool, &parts, &params, &Value::Null, &arguments)?;
    let amount = budget_amount(&tool, &arguments)?;
    let headers = upstream_headers(&tool, &parts.headers, credential.as_deref())?;
    let path_and_query = path_and_query(&parts);
    let body_event = arguments_event(&tool, &arguments);
    let undo_of = undo_of(target);
    Ok(Call {
        agent,
        tool,
        params,
        credential,
        parts,
        query: Value::Null,
        body,
        body_json: arguments,
        amount,
        path_and_query,
        headers,
        body_event,
        undo_of,
        mcp_id: Some(id),
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

/// The call being undone, when toolgate itself sends an undo.
fn undo_of(target: &Target) -> Option<String> {
    match &target.origin {
        super::Origin::Undo { of, .. } => Some(of.clone()),
        super::Origin::Agent => None,
    }
}

/// An MCP call's arguments as the audit log records them (fields the contract names redacted).
fn arguments_event(tool: &Tool, arguments: &Value) -> Value {
    let mut v = arguments.clone();
    for pointer in &tool.def.redact {
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
    app: &App,
    target: &Target,
    agent: Arc<Agent>,
    matched: crate::policy::Matched,
    req: Request<ProxyBody>,
) -> Result<Call, Refusal> {
    let tool = matched.tool;
    let credential = authorize(&agent, &tool, &matched.params)?;
    validate_path(&tool, &matched.params)?;
    let (parts, incoming) = req.into_parts();
    let query = validate_query(&tool, parts.uri.query())?;
    let (body, buffered) = read_body(app, &agent.id, &tool, &parts.headers, incoming).await?;
    let body_json = validate_body(&tool, &parts.headers, &body)?;
    check_rules(&agent, &tool, &parts, &matched.params, &query, &body_json)?;
    let amount = budget_amount(&tool, &body_json)?;
    let headers = upstream_headers(&tool, &parts.headers, credential.as_deref())?;
    let path_and_query = path_and_query(&parts);
    let body_event = body_event(&tool, &body, &body_json);
    let undo_of = undo_of(target);
    Ok(Call {
        agent,
        tool,
        params: matched.params,
        credential,
        parts,
        query,
        body,
        body_json,
        amount,
        path_and_query,
        headers,
        body_event,
        undo_of,
        mcp_id: None,
        started: std::time::Instant::now(),
        _buffered: buffered,
    })
}

/// The body as the audit log records it: fields the contract names are never written.
fn body_event(tool: &Tool, body: &Bytes, body_json: &Value) -> Value {
    if tool.def.redact.is_empty() || !body_json.is_object() {
        return crate::audit::body_json(body, crate::audit::BODY_CAP);
    }
    let mut v = body_json.clone();
    for pointer in &tool.def.redact {
        if let Some(field) = v.pointer_mut(pointer) {
            *field = Value::String(crate::audit::REDACTED.into());
        }
    }
    json!({"json": v, "bytes": body.len()})
}

/// The decide phase: deny, preview, hold for approval, or send (a read, or a write).
pub(super) async fn decide(
    app: &Arc<App>,
    target: &Target,
    mut call: Call,
    trail: &Trail,
) -> Result<Response<ProxyBody>, Refusal> {
    let tool = call.tool.clone();
    if let Some(g) = call.agent.grant(&tool.name) {
        trail
            .record_beside(
                &app.audit,
                crate::audit::Kind::GrantUsed,
                crate::grants::facts(g),
            )
            .await;
    }
    if tool.mode == Mode::Deny {
        return Err(Refusal::policy(format!(
            "tool {} is in mode deny: no agent may call it",
            tool.name
        )));
    }
    let asked_dry_run = call
        .parts
        .headers
        .get("toolgate-dry-run")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| matches!(v.trim(), "1" | "true"));
    // An undo was asked for by an approver: it is not previewed, and not held.
    let dry_run = call.undo_of.is_none()
        && (tool.mode == Mode::DryRun
            || (tool.side_effects != SideEffects::None && (call.agent.dry_run || asked_dry_run)));
    if dry_run {
        trail
            .record(
                &app.audit,
                crate::audit::Kind::Decision,
                decision("dry_run", &call),
            )
            .await;
        if let Some(id) = &call.mcp_id {
            return Ok(super::mcp::preview(
                id,
                &tool,
                &call.body_json,
                &target.host,
            ));
        }
        return Ok(preview(
            target,
            &tool,
            &call.parts.method,
            &call.path_and_query,
            &call.headers,
            &call.body,
            call.credential.as_deref(),
        ));
    }
    // Limits that hold for calls held for approval as much as for calls sent at once.
    let key = idempotency_key(&tool, &call.parts.headers)?.map(str::to_string);
    if tool.mode == Mode::Approve && call.undo_of.is_none() {
        // The proposal stores the request without the credential; it is injected at commit.
        if let Some(cred) = &call.credential {
            call.headers.remove(&cred.header);
        }
        trail.flush(&app.audit).await;
        return propose(app, target, &call, trail).await;
    }
    if tool.side_effects == SideEffects::None {
        return read(app, target, call, trail).await;
    }
    trail.flush(&app.audit).await;
    write(app, target, call, key.as_deref(), trail).await
}

/// The payload of a call's `decision` event when it goes on (sent, or previewed).
fn decision(outcome: &str, call: &Call) -> Value {
    // Built by hand: `json!` would copy the body through a serializer.
    let mut m = serde_json::Map::new();
    m.insert("outcome".into(), outcome.into());
    m.insert("mode".into(), call.tool.mode.as_str().into());
    m.insert("body".into(), call.body_event.clone());
    Value::Object(m)
}

/// sha256 of method, path and query, and body: what makes two calls the same call. For an MCP
/// call, of the tool and its arguments: a retry carries a new JSON-RPC id and is the same call.
fn payload_sha(call: &Call) -> String {
    if call.mcp_id.is_some() {
        let name = call
            .tool
            .mcp
            .as_ref()
            .map(|m| m.name.as_str())
            .unwrap_or("");
        return hex::encode(Sha256::digest(crate::mcp::call_identity(
            name,
            &call.body_json,
        )));
    }
    let mut h = Sha256::new();
    h.update(call.parts.method.as_str());
    h.update([0]);
    h.update(&call.path_and_query);
    h.update([0]);
    h.update(&call.body);
    hex::encode(h.finalize())
}

/// The request as it goes upstream (the headers move into it).
fn outgoing(call: &mut Call) -> Request<ProxyBody> {
    let mut out = Request::new(body::full(call.body.clone()));
    *out.method_mut() = call.parts.method.clone();
    *out.uri_mut() = call.path_and_query.parse().unwrap_or_default();
    *out.headers_mut() = std::mem::take(&mut call.headers);
    out
}

/// Holds the call for a person: a new or joined proposal.
async fn propose(
    app: &Arc<App>,
    target: &Target,
    call: &Call,
    trail: &Trail,
) -> Result<Response<ProxyBody>, Refusal> {
    let payload = payload_sha(call);
    let proposal = crate::approval::Call {
        agent: &call.agent,
        tool: &call.tool,
        request_id: &trail.request_id,
        job: trail.job.clone(),
        host: &target.host,
        port: target.port,
        method: &call.parts.method,
        path_and_query: &call.path_and_query,
        headers: &call.headers,
        body: &call.body,
        payload_sha256: &payload,
        summary_ctx: json!({"body": call.body_json, "arguments": call.body_json, "params": call.params, "query": call.query}),
        redactor: &app.audit.redactor,
        budget_amount: call.amount,
        token: trail.token.as_deref(),
    };
    crate::approval::propose_and_wait(app, proposal).await
}

/// A call without side effects: sent at once, its answer streamed back, secrets cut out.
async fn read(
    app: &App,
    target: &Target,
    mut call: Call,
    trail: &Trail,
) -> Result<Response<ProxyBody>, Refusal> {
    let tool = call.tool.clone();
    app.limiter.admit(&call.agent.id, &tool).await?;
    let event = trail.call_event(&app.audit, decision("allowed", &call), call.started);
    let (resp, event) = exchange::forward(app, target, outgoing(&mut call), event).await?;
    let (mut parts, body) = resp.into_parts();
    // The injected credential never reaches the agent, even if the upstream echoes it.
    let needles = Needles::new(call.credential.iter().flat_map(|c| {
        [
            c.secret().to_string(),
            String::from_utf8_lossy(c.header_value().as_bytes()).into_owned(),
        ]
    }));
    needles.scrub_headers(&mut parts.headers);
    let body = Scrubbed::new(body, needles);
    let latency_ms = call.started.elapsed().as_millis() as u64;
    if tool.def.kind.as_deref() == Some("model") {
        return Ok(model_answer(app, target, &call, trail, event, parts, body).await);
    }
    if let Some(spec) = &tool.response {
        return contracted_read(event, (parts, body), spec, latency_ms).await;
    }
    // One event tells the whole read: what was asked, the decision, and the answer (whose
    // body streams to the agent and is not kept).
    let mut response = json!({
        "status": parts.status.as_u16(),
        "body": {"streamed": true},
        "latency_ms": latency_ms,
    });
    response["headers"] = crate::audit::headers_json(&parts.headers);
    event.record(response).await;
    Ok(Response::from_parts(parts, body::stream(body)))
}

/// The largest answer of a read with a response contract that toolgate reads whole.
const CONTRACTED_ANSWER_CAP: usize = 16 * 1024 * 1024;

/// A read whose tool has a response contract: the answer is read whole, the agent gets it with
/// the hidden fields out, and the audit keeps the kept fields (a schema mismatch is an event).
async fn contracted_read(
    mut event: CallEvent,
    (mut parts, mut body): (http::response::Parts, Scrubbed<hyper::body::Incoming>),
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
            .record_first(
                crate::audit::Kind::ResponseSchemaMismatch,
                json!({ "message": why }),
            )
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
    app: &App,
    target: &Target,
    call: &Call,
    trail: &Trail,
    event: CallEvent,
    parts: http::response::Parts,
    body: Scrubbed<hyper::body::Incoming>,
) -> Response<ProxyBody> {
    let sse = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let audit = app.audit.clone();
    let provider = super::model::provider(&target.host);
    let asked_model = call
        .body_json
        .get("model")
        .and_then(Value::as_str)
        .map(str::to_string);
    let status = parts.status.as_u16();
    let headers_event = crate::audit::headers_json(&parts.headers);
    let base = trail.rec(crate::audit::Kind::ModelUsage, Value::Null);
    let started = call.started;
    let tap = super::model::UsageTap::new(
        body,
        sse,
        Box::new(move |model, usage| {
            let mut rec = base;
            rec.payload = json!({
                "provider": provider,
                "model": model.or(asked_model),
                "usage": usage,
                "status": status,
                "streamed": sse,
                "headers": headers_event,
                "latency_ms": started.elapsed().as_millis() as u64,
            });
            audit.record_now(rec);
        }),
    );
    event
        .record_apart(json!({"status": status, "body": {"streamed": true}, "latency_ms": started.elapsed().as_millis() as u64}))
        .await;
    Response::from_parts(parts, body::stream(tap))
}

/// A call with side effects: at most once per idempotency identity, within the limits, then
/// the one commit routine.
async fn write(
    app: &Arc<App>,
    target: &Target,
    call: Call,
    key: Option<&str>,
    trail: &Trail,
) -> Result<Response<ProxyBody>, Refusal> {
    let (agent, tool) = (call.agent.clone(), call.tool.clone());
    let payload = payload_sha(&call);
    let (idem_id, window_secs) = match key {
        Some(key) => (idem_id("key", &agent.id, &tool.name, key), KEY_WINDOW_SECS),
        // A tool with side effects always has an idempotency mode (a load-time rule); payload is
        // the safe reading of anything else.
        None => (
            idem_id("payload", &agent.id, &tool.name, &payload),
            tool.idempotency_window.as_secs(),
        ),
    };
    let guard = app.locks.lock(LockKey::Call(idem_id.clone())).await;
    let earlier = app.store.idem_get(&idem_id).await.map_err(idem_store_err)?;
    if let Some(answer) =
        earlier_answer(app, &tool, earlier.as_ref(), window_secs, &payload, trail).await?
    {
        return answer;
    }
    // limits: only calls that will execute count.
    app.limiter.admit(&agent.id, &tool).await?;
    let charged = charge_budget(&app.store, &agent.id, &tool, call.amount).await?;
    // Marked in flight, durably, before a byte leaves: a crash from here on is never re-sent.
    let rec = IdemRecord {
        state: IdemState::InFlight,
        payload_sha256: payload,
        created_unix: now_unix(),
        request_id: trail.request_id.clone(),
        outcome: None,
    };
    // Compare-and-set against the record read above: of two identical calls racing (on two
    // replicas of a shared store), one marks it and sends; the other is told it is in flight.
    let holder = earlier.as_ref().map(|r| r.request_id.as_str());
    let swapped = app.store.idem_swap(&idem_id, holder, &rec).await;
    if !matches!(swapped, Ok(true)) {
        crate::limits::refund_budget(&app.store, charged).await;
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
    let settling = (idem_id, rec, charged, guard);
    let detached = (app.clone(), target.clone(), trail.detached());
    let settled = app.tasks.spawn(commit_and_settle(detached, call, settling));
    settled.await.unwrap_or_else(|e| {
        Err(Refusal::internal(format!(
            "the commit ended without an answer ({e}); its outcome is unknown"
        )))
    })
}

/// A write marked in flight: committed, then its idempotency record settled (cleared when
/// nothing was sent, else the outcome stored), the key's lock held until then.
async fn commit_and_settle(
    (app, target, trail): (Arc<App>, Target, Trail),
    mut call: Call,
    (idem_id, mut rec, charged, _guard): (
        String,
        IdemRecord,
        crate::limits::Charge,
        tokio::sync::OwnedMutexGuard<()>,
    ),
) -> Result<Response<ProxyBody>, Refusal> {
    let app = app.as_ref();
    trail
        .record(
            &app.audit,
            crate::audit::Kind::Decision,
            decision("allowed", &call),
        )
        .await;
    let request = outgoing(&mut call);
    let commit = commit_of(&target, &call, &trail, (request, charged));
    let sent = match crate::commit::send(app, commit).await {
        Ok(sent) => sent,
        Err(failed) if failed.sent_nothing() => {
            // Nothing reached the upstream: the call may be retried.
            app.store
                .idem_remove(&idem_id)
                .await
                .map_err(idem_store_err)?;
            return Err(failed.into_refusal());
        }
        Err(failed) => return Err(failed.into_refusal()),
    };
    rec.state = IdemState::Done;
    rec.outcome = Some(sent.stored);
    if let Err(e) = app.store.idem_put(&idem_id, &rec).await {
        // The call executed; the agent gets its answer. A retry finds it in flight and is
        // refused as unknown rather than executed twice.
        tracing::error!(request_id = %trail.request_id, error = %e, "could not store the outcome of a committed call");
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
    app: &App,
    tool: &Tool,
    earlier: Option<&IdemRecord>,
    window_secs: u64,
    payload: &str,
    trail: &Trail,
) -> Result<Option<Result<Response<ProxyBody>, Refusal>>, Refusal> {
    let Some(rec) = earlier.cloned() else {
        return Ok(None);
    };
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
            trail.record(&app.audit,
                crate::audit::Kind::IdempotentReplay,
                json!({"original_request": rec.request_id, "status": outcome.status}),
            ).await;
            Ok(match &tool.response {
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
    target: &'a Target,
    call: &'a Call,
    trail: &'a Trail,
    (request, charged): (Request<ProxyBody>, crate::limits::Charge),
) -> crate::commit::Commit<'a> {
    crate::commit::Commit {
        who: trail.rec(crate::audit::Kind::Commit, Value::Null),
        commit_payload: json!({
            "method": call.parts.method.as_str(),
            "url": format!("https://{}{}", upstream::authority(&target.host, target.port), call.path_and_query),
            "sha256": hex::encode(Sha256::digest(&call.body)),
            "body": call.body_event,
        }),
        host: &target.host,
        port: target.port,
        request,
        ledger: crate::ledger::CommitFacts {
            request_id: &trail.request_id,
            proposal: None,
            job: &trail.job,
            agent: &call.agent.id,
            tool: &call.tool.name,
            tool_version: call.tool.version,
            host: &target.host,
            port: target.port,
            method: call.parts.method.as_str(),
            path_and_query: &call.path_and_query,
            content_type: call
                .parts
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok()),
            body: &call.body,
            body_json: &call.body_json,
            status: 0,
            response: &[],
            undoes: call.undo_of.as_deref(),
        },
        charged,
        response: call.tool.response.as_ref(),
    }
}

/// The answer to the call that executed: the stored outcome, without the replay mark.
fn replay_first(outcome: &Outcome) -> Response<ProxyBody> {
    crate::model::stored_answer(outcome)
}

/// Who and what a request is about, for its audit events. The request's own event is held
/// until the next event of the request is recorded (then it goes first), or folded with the
/// decision and the answer into one event when the call is a read sent at once (then the
/// forward phase takes it, [`super::exchange`]).
///
/// A guard too: hyper drops a request's future when its client goes away, and a trail dropped
/// with its request's event still held records it then, marked `client_gone`.
pub(crate) struct Trail {
    pub request_id: String,
    pub job: String,
    pub agent: String,
    pub owner: Option<String>,
    pub tool: Option<String>,
    pub version: Option<u32>,
    /// The id of the issued token the request came in with.
    pub token: Option<String>,
    /// An MCP message: how a refusal is written (inside JSON-RPC rather than as HTTP).
    pub mcp: Option<super::mcp::Reply>,
    /// The request's event, not yet recorded.
    held: std::sync::Mutex<Option<crate::audit::Record>>,
    /// Where the held event goes if the request is dropped.
    audit: Arc<crate::audit::Audit>,
}

impl Trail {
    pub fn new(
        request_id: String,
        job: String,
        agent: String,
        audit: Arc<crate::audit::Audit>,
    ) -> Trail {
        Trail {
            request_id,
            job,
            agent,
            owner: None,
            tool: None,
            version: None,
            token: None,
            mcp: None,
            held: std::sync::Mutex::new(None),
            audit,
        }
    }

    pub fn rec(&self, kind: crate::audit::Kind, payload: Value) -> crate::audit::Record {
        crate::audit::Record {
            kind,
            request_id: Some(self.request_id.clone()),
            job: Some(self.job.clone()),
            proposal: None,
            agent: Some(self.agent.clone()),
            owner: self.owner.clone(),
            tool: self.tool.clone(),
            tool_version: self.version,
            token: self.token.clone(),
            payload,
            at_ms: 0,
        }
    }

    /// Holds the request's own event (stamped now, the request's time).
    pub fn hold_request(&self, payload: Value) {
        let mut rec = self.rec(crate::audit::Kind::Request, payload);
        rec.at_ms = crate::base::now_ms();
        *self.held.lock().unwrap_or_else(|p| p.into_inner()) = Some(rec);
    }

    /// The held request event, if it is still held.
    pub(super) fn take_request(&self) -> Option<crate::audit::Record> {
        self.held.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Records the held request event, if any is still held. It stays held while the queue
    /// has no room, so that a request dropped meanwhile still records it.
    pub async fn flush(&self, audit: &crate::audit::Audit) {
        audit.record_from(|| self.take_request()).await;
    }

    /// Records the held request event without waiting for room (see
    /// [`crate::audit::Audit::record_if_room`]).
    pub fn flush_if_room(&self, audit: &crate::audit::Audit) {
        if let Some(rec) = self.take_request() {
            audit.record_if_room(rec);
        }
    }

    /// A copy for a task of its own (what it records comes after the request's own event,
    /// which stays here).
    pub(super) fn detached(&self) -> Trail {
        let mut t = Trail::new(
            self.request_id.clone(),
            self.job.clone(),
            self.agent.clone(),
            self.audit.clone(),
        );
        t.owner = self.owner.clone();
        t.tool = self.tool.clone();
        t.version = self.version;
        t.token = self.token.clone();
        t.mcp = self.mcp.clone();
        t
    }

    /// The events of this request's call as it is forwarded, its own event taken from the
    /// trail into them (the forward phase records them, whatever happens to the client).
    pub(super) fn call_event(
        &self,
        audit: &Arc<crate::audit::Audit>,
        decision: Value,
        started: std::time::Instant,
    ) -> CallEvent {
        let who = (
            self.take_request(),
            self.rec(crate::audit::Kind::Decision, Value::Null),
        );
        CallEvent::new(audit, who, decision, started)
    }

    /// Records an event of this request, after the request's own event.
    pub async fn record(
        &self,
        audit: &crate::audit::Audit,
        kind: crate::audit::Kind,
        payload: Value,
    ) {
        self.flush(audit).await;
        self.record_beside(audit, kind, payload).await;
    }

    /// Records an event of this request while its own event stays held, so that a read is
    /// still told in one event after it: what let the request through (a grant's use).
    pub async fn record_beside(
        &self,
        audit: &crate::audit::Audit,
        kind: crate::audit::Kind,
        payload: Value,
    ) {
        audit.record(self.rec(kind, payload)).await;
    }
}

impl Drop for Trail {
    /// The record phase of a request dropped mid-way (its client went away): what was asked is
    /// recorded all the same, without waiting (a drop cannot).
    fn drop(&mut self) {
        if let Some(mut rec) = self.take_request() {
            if let Value::Object(m) = &mut rec.payload {
                m.insert("client_gone".into(), Value::Bool(true));
            }
            self.audit.record_now(rec);
        }
    }
}

fn idem_id(kind: &str, agent: &str, tool: &str, key: &str) -> String {
    let mut h = Sha256::new();
    for part in [kind, agent, tool, key] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    hex::encode(h.finalize())
}

/// Reads the body whole, as it arrives: within the tool's size limit, the body read timeout,
/// and the agent's (and everyone's) cap on buffered bytes. The reservation holds those bytes
/// against the caps until the request is done.
pub(super) async fn read_body(
    app: &App,
    agent: &str,
    tool: &Tool,
    headers: &HeaderMap,
    body: ProxyBody,
) -> Result<(Bytes, BodyReservation), Refusal> {
    let limit = tool.max_body_bytes;
    let too_large = || {
        Refusal::new(
            Code::PayloadTooLarge,
            format!(
                "the request body is larger than tool {}'s limit of {limit} bytes",
                tool.name
            ),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let mut reservation = app.caps.body(agent);
    let over_cap = |e: Exceeded| {
        let message = match e {
            Exceeded::Agent(cap) => format!(
                "agent {agent} already has {cap} bytes of request bodies in toolgate's buffers, its cap; send fewer large bodies at once"
            ),
            Exceeded::Total(cap) => format!(
                "toolgate is buffering its maximum of {cap} bytes of request bodies; retry shortly"
            ),
        };
        let mut r = Refusal::new(Code::RateLimited, message);
        r.retry_after = Some(1);
        r
    };
    let timeout = app.config.guards.body_read_timeout;
    let read = async {
        // Read frame by frame with the limits checked as data arrives.
        let mut body = body;
        let mut out = bytes::BytesMut::new();
        while let Some(frame) = body.frame().await {
            let frame = frame
                .map_err(|e| validation(format!("the request body could not be read: {e}")))?;
            if let Ok(data) = frame.into_data() {
                if out.len() + data.len() > limit {
                    return Err(too_large());
                }
                reservation.grow(data.len()).map_err(over_cap)?;
                out.extend_from_slice(&data);
            }
        }
        Ok(out.freeze())
    };
    match tokio::time::timeout(timeout, read).await {
        Ok(Ok(bytes)) => Ok((bytes, reservation)),
        Ok(Err(refusal)) => Err(refusal),
        Err(_) => Err(Refusal::new(
            Code::RequestTimeout,
            format!(
                "the request body did not arrive whole within {}s; send it at once",
                timeout.as_secs_f64()
            ),
        )),
    }
}

/// The dry-run answer: the request toolgate would send, secrets redacted, nothing sent.
fn preview(
    target: &Target,
    tool: &Tool,
    method: &Method,
    path_and_query: &str,
    headers: &HeaderMap,
    body: &Bytes,
    credential: Option<&Credential>,
) -> Response<ProxyBody> {
    let mut shown = serde_json::Map::new();
    for (name, value) in headers {
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
            "method": method.as_str(),
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

fn no_match(policy: &Policy, target: &Target, method: &Method, path: &str) -> Refusal {
    let known: Vec<String> = policy
        .tools()
        .iter()
        .filter(|t| t.port == target.port && t.host == target.host)
        .take(20)
        .map(|t| format!("{} {}", t.method, t.path.as_str()))
        .collect();
    Refusal::policy(format!(
        "no tool contract matches {method} {path} on {}; the contracts on this host allow: {}",
        upstream::authority(&target.host, target.port),
        known.join(", ")
    ))
}
