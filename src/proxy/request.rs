//! The phases of one request inside a tunnel: match, kill switch, authorize, validate, rules,
//! decide, idempotency, limits, inject, forward. Each phase returns a [`Refusal`] to stop.

use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response};
use http_body_util::{BodyExt, Limited};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::body::{self, ProxyBody};
use super::scrub::{Needles, Scrubbed};
use super::upstream::{self, strip_hop_by_hop};
use super::Target;
use crate::error::{Code, Refusal};
use crate::guard::{BodyReservation, Exceeded};
use crate::policy::contract::{self, MAX_DEPTH};
use crate::policy::rules::render_agent_template;
use crate::policy::{
    check_path, Agent, BodyFormat, Credential, Idempotency, Mode, Policy, SideEffects, Tool,
};
use crate::store::{now_unix, IdemRecord, IdemState, Outcome};
use crate::Gate;

/// Headers addressed to toolgate itself, never forwarded.
const CONTROL_HEADERS: [&str; 2] = ["toolgate-job", "toolgate-dry-run"];

/// Headers in which agents (or their SDKs) carry API credentials. Removed from every request:
/// the only credential that reaches an upstream is the one toolgate injects.
const AGENT_CREDENTIAL_HEADERS: [&str; 6] = [
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
const FORWARDED_HEADERS: [&str; 20] = [
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
/// Prefixes of forwarded headers (the OpenAI and Anthropic SDKs' telemetry).
const FORWARDED_PREFIXES: [&str; 2] = ["x-stainless-", "openai-beta"];
/// Headers that make an upstream act on another account, with another method or on another
/// URL than the one checked: refused unless the tool names them in `headers`.
const STEERING_HEADERS: [&str; 16] = [
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
const SINGLE_HEADERS: [&str; 4] = [
    "content-type",
    "content-length",
    "idempotency-key",
    "stripe-version",
];

/// The headers phase: what of the agent's headers goes upstream. Duplicated single-valued
/// headers and steering headers are refused; credentials, toolgate's own headers, hop-by-hop
/// headers and anything the tool does not forward are dropped.
fn forwarded_headers(tool: &Tool, sent: &HeaderMap) -> Result<HeaderMap, Refusal> {
    let named = |name: &str| {
        tool.def
            .headers
            .iter()
            .any(|h| h.eq_ignore_ascii_case(name))
    };
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
            || named(n);
        if forwarded {
            out.append(name.clone(), value.clone());
        }
    }
    strip_hop_by_hop(&mut out);
    Ok(out)
}

/// How long an `Idempotency-Key` is remembered (Stripe's own window).
const KEY_WINDOW_SECS: u64 = 24 * 3600;
/// The largest upstream answer to a mutating call that is stored whole for replays.
const MAX_STORED_OUTCOME: usize = 16 * 1024 * 1024;

pub(super) async fn process(
    gate: &Gate,
    target: &Target,
    req: Request<ProxyBody>,
    trail: &mut Trail,
) -> Result<Response<ProxyBody>, Refusal> {
    let request_id = trail.request_id.clone();
    let request_id = request_id.as_str();
    let policy = gate.policy();
    // The agent is looked up per request so that a reload or a kill switch takes effect on open
    // tunnels too.
    let agent = policy
        .agent(&target.agent_id)
        .cloned()
        .ok_or_else(|| Refusal::auth_error("this agent is no longer defined in the policies"))?;
    if let Some(k) = gate.kill_switch(&format!("agent:{}", agent.id)) {
        return Err(Refusal::new(
            Code::ToolDisabled,
            format!(
                "agent {} is disabled by {}: {}; no call is sent until it is enabled",
                agent.id, k.by, k.reason
            ),
        ));
    }
    if req.method() == Method::CONNECT {
        return Err(Refusal::policy(
            "CONNECT inside a tunnel is not allowed; open one tunnel per host through toolgate",
        ));
    }
    let path = req.uri().path().to_string();
    check_path(&path).map_err(|e| {
        Refusal::policy(format!(
            "{e}; send the path in canonical form, toolgate does not normalise it"
        ))
    })?;

    // match
    let matched = policy
        .match_tool(&target.host, target.port, req.method(), &path)
        .ok_or_else(|| no_match(&policy, target, req.method(), &path))?;
    let tool = matched.tool.clone();
    trail.tool = Some(tool.name.clone());
    trail.version = Some(tool.version);
    trail.owner = Some(agent.owner.clone());

    // kill switch
    if let Some(k) = gate.kill_switch(&format!("tool:{}", tool.name)) {
        return Err(Refusal::new(
            Code::ToolDisabled,
            format!(
                "tool {} is disabled by {}: {}; do not retry until it is enabled",
                tool.name, k.by, k.reason
            ),
        ));
    }

    // authorize
    let credential = authorize(&agent, &tool, &matched.params)?;

    // validate
    let (parts, incoming) = req.into_parts();
    let query = validate_query(&tool, parts.uri.query())?;
    let (body_bytes, _buffered) =
        read_body(gate, &agent.id, &tool, &parts.headers, incoming).await?;
    let body_json = validate_body(&tool, &parts.headers, &body_bytes)?;

    // rules
    check_rules(&agent, &tool, &parts, &matched.params, &query, &body_json)?;
    let amount = budget_amount(&tool, &body_json)?;

    // decide
    match tool.mode {
        Mode::Deny => {
            return Err(Refusal::policy(format!(
                "tool {} is in mode deny: no agent may call it",
                tool.name
            )))
        }
        Mode::Approve | Mode::Auto | Mode::DryRun => {}
    }
    let asked_dry_run = parts
        .headers
        .get("toolgate-dry-run")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| matches!(v.trim(), "1" | "true"));
    // An undo was asked for by an approver: it is not previewed, and not held.
    let undo_of = match &target.origin {
        super::Origin::Undo { of, .. } => Some(of.clone()),
        super::Origin::Agent => None,
    };
    let dry_run = undo_of.is_none()
        && (tool.mode == Mode::DryRun
            || (tool.side_effects != SideEffects::None && (agent.dry_run || asked_dry_run)));

    // inject
    let mut headers = forwarded_headers(&tool, &parts.headers)?;
    if let Some(cred) = &credential {
        headers.remove(&cred.header);
        headers.insert(cred.header.clone(), cred.header_value());
    }
    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| path.clone());

    let started = std::time::Instant::now();
    let redactor = gate.audit.redactor.clone();
    let body_event = if tool.def.redact.is_empty() || !body_json.is_object() {
        crate::audit::body_json(&body_bytes, crate::audit::BODY_CAP)
    } else {
        // Fields the contract names are never written, whatever they hold.
        let mut v = body_json.clone();
        for pointer in &tool.def.redact {
            if let Some(field) = v.pointer_mut(pointer) {
                *field = Value::String(crate::audit::REDACTED.into());
            }
        }
        json!({"json": v, "bytes": body_bytes.len()})
    };
    if dry_run {
        gate.audit.record(trail.rec(
            "decision",
            json!({"outcome": "dry_run", "mode": tool.mode.as_str(), "body": body_event}),
        ));
        return Ok(preview(
            target,
            &tool,
            &parts.method,
            &path_and_query,
            &headers,
            &body_bytes,
            credential.as_deref(),
        ));
    }

    let payload_sha = {
        let mut h = Sha256::new();
        h.update(parts.method.as_str());
        h.update([0]);
        h.update(&path_and_query);
        h.update([0]);
        h.update(&body_bytes);
        hex::encode(h.finalize())
    };

    // Limits that hold for calls held for approval as much as for calls sent at once.
    let key = idempotency_key(&tool, &parts.headers)?;
    if tool.mode == Mode::Approve && undo_of.is_none() {
        // The proposal stores the request without the credential; it is injected at commit.
        if let Some(cred) = &credential {
            headers.remove(&cred.header);
        }
        let job = trail.job.clone();
        let call = crate::approval::Call {
            agent: &agent,
            tool: &tool,
            request_id,
            job,
            host: &target.host,
            port: target.port,
            method: &parts.method,
            path_and_query: &path_and_query,
            headers: &headers,
            body: &body_bytes,
            payload_sha256: &payload_sha,
            summary_ctx: json!({"body": body_json, "params": matched.params, "query": query}),
            redactor: &gate.audit.redactor,
            budget_amount: amount,
        };
        return crate::approval::propose_and_wait(gate, call).await;
    }

    let build = |headers: HeaderMap| {
        let mut out = Request::new(body::full(body_bytes.clone()));
        *out.method_mut() = parts.method.clone();
        *out.uri_mut() = path_and_query.parse().unwrap_or_default();
        *out.headers_mut() = headers;
        out
    };

    if tool.side_effects == SideEffects::None {
        if let Some(limit) = &tool.rate_limit {
            gate.limiter
                .check(&agent.id, &tool.name, limit)
                .map_err(|secs| rate_limited(&tool, secs))?;
        }
        gate.audit.record(trail.rec(
            "decision",
            json!({"outcome": "allowed", "mode": tool.mode.as_str(), "body": body_event}),
        ));
        let resp = match gate
            .upstream
            .forward(&target.host, target.port, build(headers))
            .await
        {
            Ok(r) => r,
            Err(f) => {
                gate.audit.record(trail.rec(
                    "upstream_error",
                    json!({"code": f.refusal.code.as_str(), "message": f.refusal.message, "sent": !f.not_sent}),
                ));
                return Err(f.refusal);
            }
        };
        let (mut parts, body) = resp.into_parts();
        // The injected credential never reaches the agent, even if the upstream echoes it.
        let needles = Needles::new(credential.iter().flat_map(|c| {
            [
                c.secret().to_string(),
                String::from_utf8_lossy(c.header_value().as_bytes()).into_owned(),
            ]
        }));
        needles.scrub_headers(&mut parts.headers);
        let body = Scrubbed::new(body, needles);
        if tool.def.kind.as_deref() == Some("model") {
            let sse = parts
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("text/event-stream"));
            let audit = gate.audit.clone();
            let provider = super::model::provider(&target.host);
            let asked_model = body_json
                .get("model")
                .and_then(Value::as_str)
                .map(str::to_string);
            let status = parts.status.as_u16();
            let headers_event = crate::audit::headers_json(&parts.headers);
            let base = trail.rec("model_usage", Value::Null);
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
                    audit.record(rec);
                }),
            );
            gate.audit.record(trail.rec(
                "response",
                json!({"status": status, "body": {"streamed": true}, "latency_ms": started.elapsed().as_millis() as u64}),
            ));
            return Ok(Response::from_parts(parts, body::stream(tap)));
        }
        // A read's body streams to the agent and is not kept.
        gate.audit.record(trail.rec(
            "response",
            json!({
                "status": parts.status.as_u16(),
                "headers": crate::audit::headers_json(&parts.headers),
                "body": {"streamed": true},
                "latency_ms": started.elapsed().as_millis() as u64,
            }),
        ));
        return Ok(Response::from_parts(parts, body::stream(body)));
    }

    // idempotency: at most one execution per call.
    let (idem_id, window_secs) = match key {
        Some(key) => (idem_id("key", &agent.id, &tool.name, key), KEY_WINDOW_SECS),
        // A tool with side effects always has an idempotency mode (a load-time rule); payload is
        // the safe reading of anything else.
        None => (
            idem_id("payload", &agent.id, &tool.name, &payload_sha),
            tool.idempotency_window.as_secs(),
        ),
    };
    let _guard = gate.idem_locks.lock(&idem_id).await;
    let store_err = |e: crate::store::StoreError| {
        Refusal::internal(format!(
            "the idempotency store is unavailable ({e}); the call was not sent"
        ))
    };
    if let Some(rec) = gate.store.idem_get(&idem_id).map_err(store_err)? {
        let fresh = now_unix().saturating_sub(rec.created_unix) < window_secs;
        if fresh {
            if rec.payload_sha256 != payload_sha {
                return Err(Refusal::new(
                    Code::IdempotencyConflict,
                    format!(
                        "this Idempotency-Key was already used for a different request to {} (request {}); use a new key for a new call",
                        tool.name, rec.request_id
                    ),
                ));
            }
            return match (rec.state, rec.outcome) {
                (IdemState::Done, Some(outcome)) => {
                    gate.audit.record(trail.rec(
                        "idempotent_replay",
                        json!({"original_request": rec.request_id, "status": outcome.status}),
                    ));
                    Ok(replay(&outcome))
                }
                _ => Err(Refusal::new(
                    Code::IdempotencyConflict,
                    format!(
                        "the outcome of the earlier identical call to {} (request {}) is unknown: it was in flight when toolgate stopped or timed out; it will not be sent again. Check the upstream, then retry with a new Idempotency-Key if it did not happen",
                        tool.name, rec.request_id
                    ),
                )),
            };
        }
    }

    // limits: only calls that will execute count.
    if let Some(limit) = &tool.rate_limit {
        gate.limiter
            .check(&agent.id, &tool.name, limit)
            .map_err(|secs| rate_limited(&tool, secs))?;
    }
    let charged = charge_budget(gate, &agent.id, &tool, amount).await?;

    // Marked in flight, durably, before a byte leaves: a crash from here on is never re-sent.
    let mut rec = IdemRecord {
        state: IdemState::InFlight,
        payload_sha256: payload_sha,
        created_unix: now_unix(),
        request_id: request_id.to_string(),
        outcome: None,
    };
    gate.store
        .idem_put(&idem_id, &rec)
        .await
        .map_err(store_err)?;

    // record: the commit is durable in the audit log before the request leaves.
    gate.audit.record(trail.rec(
        "decision",
        json!({"outcome": "allowed", "mode": tool.mode.as_str(), "body": body_event}),
    ));
    if let Err(e) = gate
        .audit
        .record_durable(trail.rec(
            "commit",
            json!({
                "method": parts.method.as_str(),
                "url": format!("https://{}{}", upstream::authority(&target.host, target.port), path_and_query),
                "sha256": hex::encode(Sha256::digest(&body_bytes)),
                "body": body_event,
            }),
        ))
        .await
    {
        gate.store.idem_remove(&idem_id).await.map_err(store_err)?;
        return Err(Refusal::internal(format!(
            "the audit log is unavailable ({e}); the call was not sent"
        )));
    }

    // forward
    let resp = match gate
        .upstream
        .forward(&target.host, target.port, build(headers))
        .await
    {
        Ok(resp) => resp,
        Err(failure) => {
            gate.audit.record(trail.rec(
                "upstream_error",
                json!({"code": failure.refusal.code.as_str(), "message": failure.refusal.message, "sent": !failure.not_sent}),
            ));
            if failure.not_sent {
                // Nothing reached the upstream: the call may be retried, and spent nothing.
                gate.store.idem_remove(&idem_id).await.map_err(store_err)?;
                refund_budget(gate, charged).await;
            }
            return Err(failure.refusal);
        }
    };
    let (resp_parts, resp_body) = resp.into_parts();
    if !resp_parts.status.is_success() {
        // The upstream refused the call: it spent nothing of the budget.
        refund_budget(gate, charged).await;
    }
    let (bytes, truncated) = match Limited::new(resp_body, MAX_STORED_OUTCOME).collect().await {
        Ok(c) => (c.to_bytes(), false),
        Err(_) => (Bytes::new(), true),
    };
    let (mut outcome, bytes) = crate::audit::scrub_outcome(
        &redactor,
        resp_parts.status.as_u16(),
        &resp_parts.headers,
        &bytes,
    );
    if truncated {
        outcome
            .headers
            .push(("toolgate-outcome-truncated".into(), "true".into()));
    }
    crate::rollback::record(
        gate,
        crate::rollback::CommitFacts {
            request_id,
            proposal: None,
            job: &trail.job,
            agent: &agent.id,
            tool: &tool.name,
            tool_version: tool.version,
            host: &target.host,
            port: target.port,
            method: parts.method.as_str(),
            path_and_query: &path_and_query,
            content_type: parts
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok()),
            body: &body_bytes,
            body_json: &body_json,
            status: outcome.status,
            response: &bytes,
            undoes: undo_of.as_deref(),
        },
    );
    rec.state = IdemState::Done;
    rec.outcome = Some(outcome.clone());
    if let Err(e) = gate.store.idem_put(&idem_id, &rec).await {
        // The call executed; the agent gets its answer. A retry finds it in flight and is
        // refused as unknown rather than executed twice.
        tracing::error!(request_id, error = %e, "could not store the outcome of a committed call");
    }
    let _ = gate
        .audit
        .record_durable(trail.rec(
            "response",
            json!({
                "status": resp_parts.status.as_u16(),
                "headers": crate::audit::headers_json(&resp_parts.headers),
                "body": crate::audit::body_json(&bytes, crate::audit::BODY_CAP),
                "latency_ms": started.elapsed().as_millis() as u64,
            }),
        ))
        .await;
    // The agent gets what is stored: the same answer a duplicate would get.
    Ok(replay_first(&outcome))
}

/// The answer to the call that executed: the stored outcome, without the replay mark.
fn replay_first(outcome: &Outcome) -> Response<ProxyBody> {
    upstream::stored_answer(outcome)
}

/// Who and what a request is about, for its audit events.
pub(crate) struct Trail {
    pub request_id: String,
    pub job: String,
    pub agent: String,
    pub owner: Option<String>,
    pub tool: Option<String>,
    pub version: Option<u32>,
}

impl Trail {
    pub fn rec(&self, kind: &'static str, payload: Value) -> crate::audit::Record {
        crate::audit::Record {
            kind,
            request_id: Some(self.request_id.clone()),
            job: Some(self.job.clone()),
            proposal: None,
            agent: Some(self.agent.clone()),
            owner: self.owner.clone(),
            tool: self.tool.clone(),
            tool_version: self.version,
            payload,
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

/// The `Idempotency-Key` a keyed tool needs (428 without one); `None` for other tools.
fn idempotency_key<'h>(tool: &Tool, headers: &'h HeaderMap) -> Result<Option<&'h str>, Refusal> {
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

/// The store key of an agent's budget for a tool in the current period.
fn budget_key(agent: &str, tool: &Tool, budget: &crate::policy::Budget) -> String {
    format!("{agent}\0{}\0{}", tool.name, budget.per.bucket(now_unix()))
}

fn budget_exceeded(tool: &Tool, agent: &str, used: f64, amount: f64) -> Refusal {
    let (field, max, per) = tool
        .budget
        .as_ref()
        .map(|b| (b.field.as_str(), b.max, b.per.as_str()))
        .unwrap_or(("?", 0.0, "?"));
    Refusal::policy(format!(
        "budget exceeded: tool {} allows a total {field} of {max} per {per} for agent {agent}; {used} is used and this call asks for {amount}",
        tool.name
    ))
}

/// Checks, without charging, that `amount` still fits the agent's budget (a proposal is
/// refused at once when it could never be committed).
pub(crate) fn check_budget(
    gate: &Gate,
    agent: &str,
    tool: &Tool,
    amount: Option<f64>,
) -> Result<(), Refusal> {
    let (Some(budget), Some(amount)) = (&tool.budget, amount) else {
        return Ok(());
    };
    let used = gate
        .store
        .budget_get(&budget_key(agent, tool, budget))
        .map_err(|e| {
            Refusal::internal(format!(
                "the budget store is unavailable ({e}); nothing was sent"
            ))
        })?;
    if used + amount > budget.max {
        return Err(budget_exceeded(tool, agent, used, amount));
    }
    Ok(())
}

/// A charge to give back if the call does not take effect.
pub(crate) type Charge = Option<(String, f64)>;

/// Charges `amount` to the agent's budget, durably, or refuses the call.
pub(crate) async fn charge_budget(
    gate: &Gate,
    agent: &str,
    tool: &Tool,
    amount: Option<f64>,
) -> Result<Charge, Refusal> {
    let (Some(budget), Some(amount)) = (&tool.budget, amount) else {
        return Ok(None);
    };
    let key = budget_key(agent, tool, budget);
    match gate.store.budget_add(&key, amount, budget.max).await {
        Ok(Ok(_)) => Ok(Some((key, amount))),
        Ok(Err(used)) => Err(budget_exceeded(tool, agent, used, amount)),
        Err(e) => Err(Refusal::internal(format!(
            "the budget store is unavailable ({e}); the call was not sent"
        ))),
    }
}

/// Gives a charge back (the call was not sent, or the upstream refused it).
pub(crate) async fn refund_budget(gate: &Gate, charge: Charge) {
    if let Some((key, amount)) = charge {
        if let Err(e) = gate.store.budget_add(&key, -amount, f64::MAX).await {
            tracing::error!(error = %e, "could not give a budget charge back");
        }
    }
}

/// Admits a new proposal: the rate limit counts it, and its amount must fit the budget now.
pub(crate) fn admit_proposal(
    gate: &Gate,
    agent: &str,
    tool: &Tool,
    amount: Option<f64>,
) -> Result<(), Refusal> {
    if let Some(limit) = &tool.rate_limit {
        gate.limiter
            .check(agent, &tool.name, limit)
            .map_err(|secs| rate_limited(tool, secs))?;
    }
    check_budget(gate, agent, tool, amount)
}

fn rate_limited(tool: &Tool, secs: u64) -> Refusal {
    let mut r = Refusal::new(
        Code::RateLimited,
        format!(
            "rate limit of tool {} reached ({} per agent); retry after {secs}s",
            tool.name,
            tool.rate_limit
                .as_ref()
                .map(|l| l.text.as_str())
                .unwrap_or("")
        ),
    );
    r.retry_after = Some(secs);
    r
}

/// Permissions: the agent's tool list, its environment's credential, and path parameters bound
/// to its attributes.
fn authorize(
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
        let allowed = render_agent_template(binding, agent).ok_or_else(|| {
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

fn validation(message: impl Into<String>) -> Refusal {
    Refusal::new(Code::ValidationError, message)
}

fn validate_query(tool: &Tool, query: Option<&str>) -> Result<Value, Refusal> {
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

/// Reads the body whole, as it arrives: within the tool's size limit, the body read timeout,
/// and the agent's (and everyone's) cap on buffered bytes. The reservation holds those bytes
/// against the caps until the request is done.
async fn read_body(
    gate: &Gate,
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
    let mut reservation = gate.caps.body(agent);
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
    let timeout = gate.config.guards.body_read_timeout;
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

fn validate_body(tool: &Tool, headers: &HeaderMap, bytes: &Bytes) -> Result<Value, Refusal> {
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
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        });
    let ctype_ok = match (&ctype, spec.format) {
        (None, _) => bytes.is_empty(),
        (Some(c), BodyFormat::Json) => {
            c == want || (c.starts_with("application/") && c.ends_with("+json"))
        }
        (Some(c), BodyFormat::Form) => c == want,
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

fn check_rules(
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
    let request = json!({
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "params": params,
        "query": if query.is_null() { json!({}) } else { query.clone() },
        "body": if body.is_null() { json!({}) } else { body.clone() },
        "headers": headers,
    });
    let agent_v = json!({
        "id": agent.id,
        "owner": agent.owner,
        "tenant": agent.tenant.clone().unwrap_or_default(),
        "environment": agent.environment,
        "attrs": agent.attrs,
    });
    let tool_v = json!({
        "name": tool.name,
        "version": tool.version,
        "risk": tool.def.risk.clone().unwrap_or_default(),
        "side_effects": tool.side_effects.as_str(),
        "mode": tool.mode.as_str(),
    });
    for rule in &tool.rules {
        match rule.denies(&request, &agent_v, &tool_v) {
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
    let mut resp = upstream::stored_answer(outcome);
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
