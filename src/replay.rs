//! Replay: re-sends recorded calls (of a request, a proposal or a job) to a sandbox target with
//! the tool's `sandbox` credential, and records each as a `replay` event linked to the original.
//! A replay never goes to the original host, nor to any host a tool contract names.

use std::collections::BTreeSet;
use std::sync::Arc;

use http::{header, HeaderValue, Method, Request};
use http_body_util::{BodyExt, Limited};
use serde::Serialize;
use serde_json::json;

use crate::app::Core;
use crate::audit::Payload;
use crate::base::body;
use crate::model::Call;

/// The environment whose credential a replay sends.
pub const SANDBOX_ENVIRONMENT: &str = "sandbox";

/// One call to re-send, and when it was made.
struct Recorded {
    call: Call,
    unix_ms: u64,
}

/// What happened to one re-sent call.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub request_id: String,
    pub tool: String,
    pub method: String,
    pub path: String,
    /// `sent` (the sandbox answered), `refused` (toolgate did not send it), `failed` (no answer).
    pub outcome: String,
    pub status: Option<u16>,
    pub message: String,
    pub replay_id: String,
}

/// Why a replay could not start at all.
#[derive(Debug)]
pub struct ReplayError(pub String);

/// The calls recorded for `id` (a request, a proposal or a job), oldest first: committed calls
/// from the ledger, and forwarded reads from the audit log.
async fn calls(app: &Core, id: &str) -> Result<Vec<Call>, ReplayError> {
    let err = |e: crate::store::StoreError| ReplayError(format!("the store is unavailable: {e}"));
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for c in crate::ledger::all(app.store()).await.map_err(err)? {
        if c.request_id == id || c.proposal.as_deref() == Some(id) || c.job == id {
            seen.insert(c.request_id.clone());
            out.push(Recorded {
                call: Call::from(&c),
                unix_ms: c.unix_ms,
            });
        }
    }
    // Reads: a request event whose call was forwarded and answered.
    let events = app.audit().story(id).map_err(err)?;
    // Answered: a `response` event, or a read told in one event (its payload has the answer).
    let answered: BTreeSet<&str> = events
        .iter()
        .filter(|e| e.body().answers())
        .filter_map(|e| e.request_id.as_deref())
        .collect();
    // The request event is written before the tool is known; later events name it.
    let tools: std::collections::BTreeMap<&str, &str> = events
        .iter()
        .filter_map(|e| Some((e.request_id.as_deref()?, e.tool.as_deref()?)))
        .collect();
    for e in &events {
        let Some(rid) = e.request_id.as_deref() else {
            continue;
        };
        if seen.contains(rid) || !answered.contains(rid) {
            continue;
        }
        let (Payload::Request(asked), Some(tool)) = (e.body(), tools.get(rid)) else {
            continue;
        };
        let tool = tool.to_string();
        let method = asked.method.as_str();
        if !matches!(method, "GET" | "HEAD") {
            continue;
        }
        let path = match asked.path.as_str() {
            "" => "/",
            path => path,
        };
        let query = asked.query.as_str();
        let call = Call {
            request_id: rid.to_string(),
            job: e.job.clone().unwrap_or_default(),
            proposal: e.proposal.clone(),
            agent: e.agent.clone().unwrap_or_default(),
            user: e.user.clone(),
            tool,
            host: asked.host.clone(),
            method: method.to_string(),
            path_and_query: if query.is_empty() {
                path.to_string()
            } else {
                format!("{path}?{query}")
            },
            ..Call::default()
        };
        out.push(Recorded {
            call,
            unix_ms: e.unix_ms,
        });
    }
    out.sort_by_key(|c| c.unix_ms);
    Ok(out.into_iter().map(|r| r.call).collect())
}

/// A host name as compared: lower case, without brackets or the root's trailing dot
/// (`API.Stripe.com.` is `api.stripe.com`).
fn normalize_host(host: &str) -> String {
    host.trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .trim_end_matches('.')
        .to_ascii_lowercase()
}

/// Re-sends the calls recorded for `id` to `to` (HOST:PORT).
pub async fn replay(
    app: &Arc<Core>,
    id: &str,
    to: &str,
    by: &str,
) -> Result<Vec<Report>, ReplayError> {
    let (to_host, to_port) = crate::base::split_host_port(to, 443)
        .map(|(h, p)| (normalize_host(&h), p))
        .filter(|(h, _)| !h.is_empty())
        .ok_or_else(|| ReplayError(format!("--to {to:?} is not HOST:PORT")))?;
    let policy = app.policy();
    if policy.port_for_host(&to_host).is_some() {
        return Err(ReplayError(format!(
            "{to_host} is a host a tool contract names; a replay only goes to a sandbox, never to a real API"
        )));
    }
    let calls = calls(app, id).await?;
    if calls.is_empty() {
        return Err(ReplayError(format!(
            "no recorded call that was sent belongs to {id}; replay takes a request, proposal or job id"
        )));
    }
    let authority = crate::base::authority(&to_host, to_port);
    let mut out = Vec::new();
    for call in calls {
        let replay_id = crate::base::new_id("rpl");
        let mut report = Report {
            request_id: call.request_id.clone(),
            tool: call.tool.clone(),
            method: call.method.clone(),
            path: call.path_and_query.clone(),
            outcome: "refused".into(),
            status: None,
            message: String::new(),
            replay_id: replay_id.clone(),
        };
        let started = std::time::Instant::now();
        let result = send(app, &policy, &call, &to_host, to_port, &replay_id).await;
        let mut payload = json!({
            "replay_id": replay_id,
            "to": authority,
            "original_host": call.host,
            "method": call.method,
            "path": call.path_and_query,
            "by": by,
        });
        match result {
            Ok((status, text)) => {
                report.outcome = "sent".into();
                report.status = Some(status);
                report.message = format!("{authority} answered {status}");
                payload["status"] = json!(status);
                payload["latency_ms"] = json!(started.elapsed().as_millis() as u64);
                payload["body"] = crate::audit::body_json(text.as_bytes(), crate::audit::BODY_CAP);
            }
            Err((outcome, message)) => {
                report.outcome = outcome.into();
                report.message = message.clone();
                payload["outcome"] = json!(outcome);
                payload["message"] = json!(message);
            }
        }
        app.audit()
            .record(crate::audit::Record {
                kind: crate::audit::Kind::Replay,
                request_id: Some(call.request_id.clone()),
                job: Some(call.job.clone()).filter(|j| !j.is_empty()),
                proposal: call.proposal.clone(),
                agent: Some(call.agent.clone()).filter(|a| !a.is_empty()),
                tool: Some(call.tool.clone()),
                user: call.user.clone(),
                payload,
                ..Default::default()
            })
            .await;
        out.push(report);
    }
    Ok(out)
}

async fn send(
    app: &Core,
    policy: &crate::policy::Policy,
    call: &Call,
    to_host: &str,
    to_port: u16,
    replay_id: &str,
) -> Result<(u16, String), (&'static str, String)> {
    let tool = policy.tool(&call.tool).ok_or((
        "refused",
        format!("tool {} is no longer defined in the policies", call.tool),
    ))?;
    if to_host == normalize_host(&call.host) {
        return Err((
            "refused",
            format!("{to_host} is the original host of this call; a replay never goes there"),
        ));
    }
    let credential = if tool.credentials.is_empty() {
        None
    } else {
        Some(tool.credentials.get(SANDBOX_ENVIRONMENT).ok_or((
            "refused",
            format!(
                "tool {} has no credential for environment \"{SANDBOX_ENVIRONMENT}\": add credential.{SANDBOX_ENVIRONMENT} to the tool; a replay never sends another environment's credential",
                tool.name
            ),
        ))?)
    };
    if let Some(c) = credential.filter(|c| c.source().is_some()) {
        return Err((
            "refused",
            format!("credential {} takes a person's own token, which a replay never sends: give the tool a shared {SANDBOX_ENVIRONMENT} credential", c.name),
        ));
    }
    let method = Method::from_bytes(call.method.as_bytes())
        .map_err(|e| ("refused", format!("recorded method: {e}")))?;
    let mut req = Request::new(body::full(call.body.clone()));
    *req.method_mut() = method.clone();
    *req.uri_mut() = call
        .path_and_query
        .parse()
        .map_err(|e| ("refused", format!("recorded path: {e}")))?;
    let h = req.headers_mut();
    if let Some(ct) = call
        .content_type
        .as_deref()
        .and_then(|v| HeaderValue::from_str(v).ok())
    {
        h.insert(header::CONTENT_TYPE, ct);
    }
    if let Ok(v) = HeaderValue::from_str(replay_id) {
        h.insert("toolgate-replay", v.clone());
        if !matches!(method, Method::GET | Method::HEAD) {
            h.insert("idempotency-key", v);
        }
    }
    h.insert(
        header::USER_AGENT,
        HeaderValue::from_static("toolgate-replay"),
    );
    if let Some(c) = credential {
        h.insert(c.header.clone(), c.header_value());
    }
    let resp = app
        .upstream()
        .send_to_sandbox(to_host, to_port, req)
        .await
        .map_err(|f| ("failed", f.refusal.message))?;
    let status = resp.status().as_u16();
    let bytes = Limited::new(resp.into_body(), 64 * 1024)
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn hosts_are_normalised_before_comparing() {
        assert_eq!(super::normalize_host("API.Stripe.com."), "api.stripe.com");
        assert_eq!(super::normalize_host("[::1]"), "::1");
    }
}
