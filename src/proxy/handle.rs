//! One request inside a tunnel (or in absolute form), from its head to its record phase: the
//! context is made ([`asked`]), the request is routed to the adapter its target takes (an MCP
//! endpoint's messages, or a contracted path), a refusal from any phase is answered at the one
//! rescue point ([`rescue`]), and the record phase runs on every exit: here when the request
//! ends, or in the context's `Drop` when hyper drops it because its client went away.
//!
//! Refusals before a tunnel exists (authentication, the CONNECT target) have no request context
//! yet; they are recorded and answered at [`refuse_outer`].

use std::sync::Arc;
use std::time::Instant;

use http::{HeaderValue, Method, Request, Response};
use tracing::{info, warn};

use super::body::ProxyBody;
use super::ctx::{Origin, Outer, Reply, RequestCtx, Target};
use super::mcp::{self, Routed};
use super::request;
use super::REQUEST_ID_HEADER;
use crate::app::Gate;
use crate::audit::payload::{Asked, Decision};
use crate::audit::Kind;
use crate::base::new_request_id;
use crate::error::{Code, Refusal};
use crate::policy::Policy;

/// A call toolgate makes itself on an agent's behalf (an undo), through every phase an agent's
/// call takes, with its own request id and audit events. Returns that id, the answer, and the
/// refusal code when toolgate refused it.
pub(crate) async fn internal_call(
    app: Arc<Gate>,
    target: Target,
    req: Request<ProxyBody>,
) -> (String, Response<ProxyBody>, Option<Code>) {
    let request_id = new_request_id();
    let (target, policy) = (Arc::new(target), app.policy());
    let started = Instant::now();
    let (resp, code) = handle(app, target, policy, req, request_id.clone(), started).await;
    (request_id, resp, code)
}

/// A request handled: the answer, and the refusal's code if it was refused.
type Handled = std::pin::Pin<
    Box<dyn std::future::Future<Output = (Response<ProxyBody>, Option<Code>)> + Send>,
>;

/// One request: every phase, then the record phase; a refusal from any phase is answered at
/// the one rescue point. `policy` is the snapshot it is judged by: taken for it when it
/// arrives in a tunnel, or the one its absolute-form request or its batch was judged by.
/// Boxed: a batch of MCP messages handles each message as a request of its own, and a future
/// cannot contain itself.
pub(super) fn handle(
    app: Arc<Gate>,
    target: Arc<Target>,
    policy: Arc<Policy>,
    req: Request<ProxyBody>,
    request_id: String,
    started: Instant,
) -> Handled {
    let span = super::trace::call_span(&app, &target, &req, &request_id);
    let call = async move {
        let audit = app.audit().clone();
        let mut ctx = RequestCtx::new(request_id, started, policy, target, audit);
        ctx.span = tracing::Span::current();
        let (method, path) = (req.method().clone(), req.uri().path().to_string());
        let job = match job_of(&app, &mut ctx, req.headers()).await {
            Ok(()) => super::person::user_of(&app, &mut ctx, req.headers()).await,
            Err(refusal) => Err(refusal),
        };
        asked(&ctx, &req);
        let result = match job {
            Ok(()) => route(&app, &mut ctx, req).await,
            Err(refusal) => Err(refusal),
        };
        let (mut resp, refused) = match result {
            Ok(resp) => (resp, None),
            Err(refusal) => {
                let code = refusal.code;
                (rescue(&ctx, refusal).await, Some(code))
            }
        };
        // The record phase: a path that recorded nothing else still records what was asked.
        ctx.flush().await;
        if let Ok(v) = HeaderValue::from_str(&ctx.id) {
            resp.headers_mut().insert(REQUEST_ID_HEADER, v);
        }
        observe(&app, &ctx, &method, &path, resp.status().as_u16(), refused);
        (resp, refused)
    };
    Box::pin(tracing::Instrument::instrument(call, span))
}

/// The request's metrics and its log line.
fn observe(
    app: &Gate,
    ctx: &RequestCtx,
    method: &Method,
    path: &str,
    status: u16,
    refused: Option<Code>,
) {
    let (decision, code) = match refused {
        None => ("forwarded", ""),
        Some(code) => ("refused", code.as_str()),
    };
    super::trace::ended(ctx, method, status, refused);
    let tool_name = ctx.tool.as_deref().unwrap_or("-");
    let latency = ctx.started.elapsed().as_secs_f64();
    app.metrics().observe(tool_name, decision, status, latency);
    let target = &ctx.target;
    info!(
        request_id = %ctx.id, agent = %target.agent_id, peer = %target.peer, host = %target.host,
        method = %method, path = %path, tool = tool_name, decision, code, status,
        latency_ms = latency * 1000.0, "request"
    );
}

/// The adapter the request takes: an MCP endpoint's messages, or a contracted path. Each ends
/// in the same phases (match, validate, decide) and writes the answer in its own form.
#[tracing::instrument(level = "debug", name = "route", skip_all, fields(request_id = %ctx.id, phase = "route"))]
async fn route(
    app: &Arc<Gate>,
    ctx: &mut RequestCtx,
    req: Request<ProxyBody>,
) -> Result<Response<ProxyBody>, Refusal> {
    request::recordable(app)?;
    let agent = request::identify(app, ctx, &req)?;
    let target = ctx.target.clone();
    let (host, port, path) = (&target.host, target.port, req.uri().path());
    let graphql = ctx.policy.graphql_endpoint(host, port, path);
    if !graphql.is_empty() {
        let answer = super::graphql::process(app, ctx, agent, graphql, req).await?;
        return Ok(answer.into_http(&target));
    }
    let endpoint = ctx.policy.mcp_endpoint(host, port, path);
    if endpoint.is_empty() {
        let answer = request::process(app, ctx, agent, req).await?;
        return Ok(answer.into_http(&target));
    }
    match mcp::process(app, ctx, agent, endpoint, req).await? {
        Routed::Answered(resp) => Ok(resp),
        Routed::Batch(mut batch) => {
            // Each message a request of its own, judged by the batch's policy snapshot.
            for i in 0..batch.len() {
                let id = format!("{}.{}", ctx.id, i + 1);
                let (app, target, policy) = (app.clone(), target.clone(), ctx.policy.clone());
                let message = batch.request(i);
                let (resp, _) = handle(app, target, policy, message, id, Instant::now()).await;
                batch.answered(i, resp).await?;
            }
            Ok(batch.answer())
        }
    }
}

/// The start of the record phase: the request's own event, what was asked, held until the next
/// event of the request (or folded into one event with the answer of a read).
fn asked(ctx: &RequestCtx, req: &Request<ProxyBody>) {
    let target = &ctx.target;
    let (undoes, asked_by) = match &target.origin {
        Origin::Undo { of, by } => (Some(of.clone()), Some(by.clone())),
        Origin::Agent => (None, None),
    };
    let asked = Asked {
        method: req.method().as_str().to_string(),
        host: target.host.clone(),
        port: target.port,
        path: crate::audit::cap_text(req.uri().path(), crate::audit::URI_CAP),
        query: crate::audit::cap_text(req.uri().query().unwrap_or(""), crate::audit::URI_CAP),
        peer: target.peer.clone(),
        undoes,
        asked_by,
        headers: crate::audit::headers_json(req.headers()),
        trace_id: super::trace::trace_id(ctx),
        ..Asked::default()
    };
    ctx.hold_request(asked.into_value());
}

/// The one rescue point: a refusal from any phase is recorded and answered here, as JSON with
/// its code (or, for an MCP message, as the JSON-RPC error its client reads; on a GraphQL
/// endpoint, in GraphQL's `errors` shape).
#[tracing::instrument(level = "debug", name = "rescue", skip_all, fields(request_id = %ctx.id, phase = "rescue"))]
async fn rescue(ctx: &RequestCtx, refusal: Refusal) -> Response<ProxyBody> {
    let refusal = match &ctx.tool {
        Some(t) if refusal.tool.is_none() => refusal.with_tool(t.clone()),
        _ => refusal,
    };
    if refusal.code.source() == crate::error::ErrorSource::Upstream {
        warn!(request_id = %ctx.id, error = %refusal.message, "upstream failure");
    }
    super::trace::refused(ctx, &refusal);
    record_refused(ctx, &refusal).await;
    match &ctx.reply {
        Reply::Http => refusal.into_response(&ctx.id),
        Reply::Mcp(reply) => mcp::refusal_answer(reply, &refusal),
        Reply::Graphql => super::graphql::refusal_answer(refusal, &ctx.id),
    }
}

/// The record phase of a refused request: what was asked, then the refusal.
#[tracing::instrument(level = "debug", name = "record", skip_all, fields(request_id = %ctx.id, phase = "record"))]
async fn record_refused(ctx: &RequestCtx, refusal: &Refusal) {
    let code = refusal.code;
    let refused = Decision {
        outcome: "refused".into(),
        code: Some(code.as_str().into()),
        status: Some(code.status().as_u16()),
        message: Some(refusal.recorded_message().into_owned()),
        body_shape: ctx.body_shape.clone(),
        ..Decision::default()
    };
    let mut rec = ctx.rec(Kind::Decision, refused.into_value());
    rec.proposal = refusal.proposal.clone();
    if code == Code::StoreUnavailable {
        // The log's queue does not drain while it cannot be written: the refusal is recorded
        // if there is room, and never waits for it.
        ctx.flush_if_room();
        ctx.record_if_room(rec);
    } else {
        ctx.flush().await;
        ctx.record_as(rec).await;
    }
}

/// The job a request belongs to: its `Toolgate-Job`, else its tunnel. A job belongs to the agent
/// that named it first (or to agents of the same owner): another agent naming it is refused, so
/// it cannot slip calls into someone else's story or rollback set.
async fn job_of(
    app: &Gate,
    ctx: &mut RequestCtx,
    headers: &http::HeaderMap,
) -> Result<(), Refusal> {
    let target = ctx.target.clone();
    if let Some(t) = &target.token {
        // Checked on every request: an expiry or a revocation ends an open tunnel too.
        let current = app
            .principals()
            .token(&t.id)
            .await
            .map_err(|e| Refusal::internal(format!("the token store is unavailable ({e})")))?;
        super::in_force(current.as_ref(), &t.id)?;
        // A job-bound token's calls belong to its job.
        if let Some(job) = &t.job {
            ctx.job = job.clone();
            return Ok(());
        }
    }
    let Some(value) = headers.get("toolgate-job") else {
        return Ok(());
    };
    let job = value
        .to_str()
        .ok()
        .filter(|j| crate::base::job_id_ok(j))
        .ok_or_else(|| {
            Refusal::new(
                Code::ValidationError,
                format!("Toolgate-Job must be {}", crate::base::JOB_ID_RULE),
            )
        })?;
    // Toolgate's own calls (undos) carry the job of the call they undo.
    if matches!(target.origin, Origin::Undo { .. }) {
        ctx.job = job.to_string();
        return Ok(());
    }
    let owner = ctx
        .policy
        .agent(&target.agent_id)
        .map(|a| a.owner.clone())
        .unwrap_or_default();
    match app.store().job_claim(job, &target.agent_id, &owner).await {
        Ok(None) => {
            ctx.job = job.to_string();
            Ok(())
        }
        Ok(Some(holder)) => Err(Refusal::policy(format!(
            "job {job} belongs to agent {holder}; name a job of your own in Toolgate-Job"
        ))),
        Err(e) => Err(Refusal::internal(format!(
            "the job store is unavailable ({e}); nothing was sent"
        ))),
    }
}

/// The rescue point for refusals before a tunnel exists: recorded and answered.
pub(super) async fn refuse_outer(
    app: &Gate,
    outer: &Outer,
    refusal: Refusal,
) -> Response<ProxyBody> {
    record_outer(app, outer, &refusal).await;
    refusal.into_response(&outer.request_id)
}

/// The record phase of a refusal before a tunnel exists (answered at [`refuse_outer`], or
/// inside TLS). What one refusal records is capped, and a flood of one kind from one address is
/// recorded as its first events plus a count: unauthenticated clients must not be able to fill
/// the disk.
pub(super) async fn record_outer(app: &Gate, outer: &Outer, refusal: &Refusal) {
    let peer = outer.peer.ip();
    let (count, ended) = app.sources().count(peer, refusal.code.as_str());
    if let Some(n) = ended.filter(|n| *n > REFUSALS_RECORDED_PER_MINUTE) {
        app.audit().record(crate::audit::Record {
            kind: Kind::Decision,
            agent: outer.agent.clone(),
            payload: serde_json::json!({
                "outcome": "refused", "code": refusal.code.as_str(), "peer": peer.to_string(),
                "repeated": n - REFUSALS_RECORDED_PER_MINUTE,
                "note": "refusals of this kind from this address in the minute before, not recorded one by one",
            }),
            ..Default::default()
        }).await;
    }
    if count <= REFUSALS_RECORDED_PER_MINUTE {
        app.audit().record(crate::audit::Record {
            kind: Kind::Decision,
            request_id: Some(outer.request_id.clone()),
            agent: outer.agent.clone(),
            payload: serde_json::json!({
                "outcome": "refused", "code": refusal.code.as_str(), "status": refusal.code.status().as_u16(),
                "message": crate::audit::cap_text(&refusal.message, crate::audit::URI_CAP),
                "method": outer.method.as_str(),
                "host": crate::audit::cap_text(&outer.host, 256),
                "target": crate::audit::cap_text(&outer.target, crate::audit::URI_CAP),
                "peer": peer.to_string(),
            }),
            ..Default::default()
        }).await;
    }
    info!(
        request_id = %outer.request_id, agent = outer.agent.as_deref().unwrap_or("-"),
        host = %crate::audit::cap_text(&outer.host, 256), method = %outer.method,
        path = %crate::audit::cap_text(&outer.target, 256), tool = "-", decision = "refused",
        code = refusal.code.as_str(), status = refusal.code.status().as_u16(),
        latency_ms = outer.started.elapsed().as_secs_f64() * 1000.0, "request"
    );
}

/// Refusals of one kind from one address recorded one by one per minute; the rest are counted.
const REFUSALS_RECORDED_PER_MINUTE: u32 = 20;
