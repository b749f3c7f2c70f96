//! The phases of one request inside a tunnel: match, kill switch, authorize, validate, rules,
//! decide, idempotency, limits, inject, forward. Each phase returns a [`Refusal`] to stop.

use base64::Engine;
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::body::{self, ProxyBody};
use super::scrub::{Needles, Scrubbed};
use super::upstream::{self};
use super::Target;
use crate::checks::{
    authorize, budget_amount, check_rules, forwarded_headers, idempotency_key, validate_body,
    validate_query, validation,
};
use crate::error::{Code, Refusal};
use crate::guard::{BodyReservation, Exceeded};
use crate::limits::{charge_budget, rate_limited};
use crate::policy::{check_path, Credential, Mode, Policy, SideEffects, Tool};
use crate::store::{now_unix, IdemRecord, IdemState, Outcome};
use crate::Gate;

/// How long an `Idempotency-Key` is remembered (Stripe's own window).
const KEY_WINDOW_SECS: u64 = 24 * 3600;

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
    let charged = charge_budget(&gate.store, &agent.id, &tool, amount).await?;

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

    gate.audit.record(trail.rec(
        "decision",
        json!({"outcome": "allowed", "mode": tool.mode.as_str(), "body": body_event}),
    ));
    let commit = crate::commit::Commit {
        who: trail.rec("commit", Value::Null),
        commit_payload: json!({
            "method": parts.method.as_str(),
            "url": format!("https://{}{}", upstream::authority(&target.host, target.port), path_and_query),
            "sha256": hex::encode(Sha256::digest(&body_bytes)),
            "body": body_event,
        }),
        host: &target.host,
        port: target.port,
        request: build(headers),
        ledger: crate::ledger::CommitFacts {
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
            status: 0,
            response: &[],
            undoes: undo_of.as_deref(),
        },
        charged,
    };
    let outcome = match crate::commit::send(gate, commit).await {
        Ok(outcome) => outcome,
        Err(failed @ crate::commit::Failed::NotSent(_)) => {
            // Nothing reached the upstream: the call may be retried.
            gate.store.idem_remove(&idem_id).await.map_err(store_err)?;
            return Err(failed.into_refusal());
        }
        Err(failed) => return Err(failed.into_refusal()),
    };
    rec.state = IdemState::Done;
    rec.outcome = Some(outcome.clone());
    if let Err(e) = gate.store.idem_put(&idem_id, &rec).await {
        // The call executed; the agent gets its answer. A retry finds it in flight and is
        // refused as unknown rather than executed twice.
        tracing::error!(request_id, error = %e, "could not store the outcome of a committed call");
    }
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
