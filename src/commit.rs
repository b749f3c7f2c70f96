//! The one commit routine: what happens between "this call may be sent" and its answer, for a
//! call sent at once and for an approved proposal alike. The `commit` event is durable before a
//! byte leaves; the answer is capped, scrubbed of secrets, put in the ledger and recorded as a
//! durable `response` event; a budget charge is given back when the call took no effect. The
//! caller keeps its own in-flight marker (an idempotency record, a proposal in `committing`) and
//! clears or settles it by what this returns.

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Limited};
use serde_json::{json, Value};

use crate::app::Core;
use crate::audit::{payload, Kind, Record};
use crate::base::body::ProxyBody;
use crate::error::Refusal;
use crate::limits::{refund_budget, Charge};
use crate::model::{Call, Outcome};

/// The largest upstream answer to a call with side effects that is stored whole.
pub const MAX_STORED_OUTCOME: usize = 16 * 1024 * 1024;

/// A call about to be committed.
pub(crate) struct Commit<'a> {
    /// Who and what, for the audit events (its kind and payload are replaced).
    pub who: Record,
    /// The `commit` event's payload.
    pub commit_payload: crate::audit::payload::Commit,
    /// The call (the ledger's entry is made from it with the answer).
    pub call: &'a Call,
    /// The request as it goes out, credential injected.
    pub request: Request<ProxyBody>,
    /// The budget charge to give back if the call takes no effect.
    pub charged: Charge,
    /// The tool's response contract: what of the answer is kept, and what the agent sees.
    pub response: Option<&'a crate::policy::response::ResponseSpec>,
}

/// The answer to a committed call: as stored (the kept fields), and as the agent sees it now
/// (the whole answer, hidden fields removed).
pub(crate) struct Sent {
    pub stored: Outcome,
    pub shown: Outcome,
}

/// Why a commit did not end with an answer.
#[derive(Debug)]
pub(crate) enum Failed {
    /// The audit log could not record the commit: nothing was sent, nothing was tried.
    NotRecorded(Refusal),
    /// The upstream could not be reached: nothing reached it, the call may be retried.
    NotSent(Refusal),
    /// The request may have reached the upstream; its outcome is unknown.
    Unknown(Refusal),
}

/// Sends a committed call and settles what it leaves behind.
#[tracing::instrument(level = "debug", name = "commit", skip_all)]
pub(crate) async fn send(app: &Core, c: Commit<'_>) -> Result<Sent, Failed> {
    let Commit {
        who,
        commit_payload,
        call,
        request,
        charged,
        response,
    } = c;
    let event = |kind: Kind, payload: Value| Record {
        kind,
        payload,
        ..who.clone()
    };
    if let Err(e) = app
        .audit()
        .record_durable(event(Kind::Commit, commit_payload.into_value()))
        .await
    {
        refund_budget(app.store(), charged).await;
        return Err(Failed::NotRecorded(Refusal::new(
            crate::error::Code::StoreUnavailable,
            format!("the audit log cannot be written ({e}); the call was not sent. Retry later"),
        )));
    }
    let started = std::time::Instant::now();
    let own = injected(request.headers());
    let resp = match app.upstream().forward(&call.host, call.port, request).await {
        Ok(resp) => resp,
        Err(failure) => {
            app.audit().record(event(
                Kind::UpstreamError,
                json!({"code": failure.refusal.code.as_str(), "message": failure.refusal.message, "sent": !failure.not_sent}),
            )).await;
            if failure.not_sent {
                refund_budget(app.store(), charged).await;
                return Err(Failed::NotSent(failure.refusal));
            }
            return Err(Failed::Unknown(failure.refusal));
        }
    };
    let (parts, body) = resp.into_parts();
    if !parts.status.is_success() {
        // The upstream refused the call: it spent nothing of the budget.
        refund_budget(app.store(), charged).await;
    }
    let (outcome, answer) = settle(app, parts, body, &own).await;
    let (sent, answer) = contract(app, response, outcome, answer, &event).await;
    let outcome = &sent.stored;
    crate::ledger::record(
        app.store(),
        &app.audit().redactor,
        call,
        outcome.status,
        &answer,
    )
    .await;
    // What happened is recorded whatever the log's state: kept and written later if need be.
    let recorded = payload::Response {
        status: Some(outcome.status),
        headers: Some(Value::Object(
            (outcome.headers.iter())
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect(),
        )),
        body: Some(crate::audit::body_json(&answer, crate::audit::BODY_CAP)),
        latency_ms: Some(started.elapsed().as_millis() as u64),
        ..Default::default()
    };
    let _ = app
        .audit()
        .record_happened(event(Kind::Response, payload::to_value(&recorded)))
        .await;
    Ok(sent)
}

/// A stored answer's header (the first of that name).
fn header<'a>(outcome: &'a Outcome, name: &str) -> Option<&'a str> {
    outcome
        .headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// An answer as the agent sees it: the hidden fields removed, or, where toolgate cannot remove
/// them, withheld (an MCP tool's result with `isError`, or a 502 `upstream_error`; the call
/// itself took place, and the stored answer and the ledger say so).
fn shown_body(
    spec: &crate::policy::response::ResponseSpec,
    outcome: &Outcome,
    answer: &[u8],
) -> Outcome {
    use base64::Engine;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let mut headers = outcome.headers.clone();
    headers.retain(|(k, _)| !k.eq_ignore_ascii_case("content-length"));
    let shown = spec.shown(
        answer,
        header(outcome, "content-type"),
        header(outcome, "content-encoding"),
    );
    let why = match shown {
        Ok(body) => {
            return Outcome {
                status: outcome.status,
                headers,
                body: b64(&body),
            }
        }
        Err(why) => why,
    };
    let message = format!("toolgate withheld the tool's answer: {why}; it cannot remove the fields the tool's contract hides. The call itself was made (status {})", outcome.status);
    let (status, body) = match spec.mcp {
        true => (200, crate::mcp::refused_result(&Value::Null, &message)),
        false => (
            502,
            json!({"error": {"code": "upstream_error", "message": message}}),
        ),
    };
    Outcome {
        status,
        headers: vec![("content-type".into(), "application/json".into())],
        body: b64(body.to_string().as_bytes()),
    }
}

/// A stored answer as the agent sees it: the hidden fields removed.
pub(crate) fn shown(spec: &crate::policy::response::ResponseSpec, outcome: &Outcome) -> Outcome {
    use base64::Engine;
    let engine = base64::engine::general_purpose::STANDARD;
    let body = engine.decode(&outcome.body).unwrap_or_default();
    shown_body(spec, outcome, &body)
}

/// The response contract applied: what is stored (and recorded) and what the agent gets; a
/// schema mismatch is an event. Without a contract both are the whole answer.
async fn contract(
    app: &Core,
    spec: Option<&crate::policy::response::ResponseSpec>,
    outcome: Outcome,
    answer: Bytes,
    event: &(dyn Fn(Kind, Value) -> Record + Sync),
) -> (Sent, Bytes) {
    let Some(spec) = spec else {
        return (
            Sent {
                stored: outcome.clone(),
                shown: outcome,
            },
            answer,
        );
    };
    use base64::Engine;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let subject = spec.subject(
        &answer,
        header(&outcome, "content-type"),
        header(&outcome, "content-encoding"),
    );
    if let Some(why) = spec.mismatch(&subject) {
        app.audit()
            .record(event(
                Kind::ResponseSchemaMismatch,
                json!({ "message": why }),
            ))
            .await;
    }
    let kept = Bytes::from(spec.kept(&answer));
    let shown = shown_body(spec, &outcome, &answer);
    let mut headers = outcome.headers.clone();
    headers.retain(|(k, _)| !k.eq_ignore_ascii_case("content-length"));
    let stored = Outcome {
        status: outcome.status,
        headers,
        body: b64(&kept),
    };
    (Sent { stored, shown }, kept)
}

/// The answer read whole (up to the cap, with a mark past it) and scrubbed of secrets: what is
/// stored, shown and handed to duplicates.
/// The credential injected into a call (its headers marked sensitive), as the header value and
/// as the secret in it: what the answer must not carry back to the agent or into the stored
/// outcome, even if the upstream echoes it. A person's token, filled in for this call alone, is
/// in no policy's list of secrets.
fn injected(headers: &http::HeaderMap) -> Vec<String> {
    let mut own = Vec::new();
    for value in headers.values().filter(|v| v.is_sensitive()) {
        let Ok(text) = value.to_str() else { continue };
        own.push(text.to_string());
        if let Some(secret) = text.rsplit(' ').next().filter(|s| s.len() >= 8) {
            own.push(secret.to_string());
        }
    }
    // Longest first, so that the header value goes whole before the secret inside it.
    own.sort_by_key(|s| std::cmp::Reverse(s.len()));
    own
}

async fn settle(
    app: &Core,
    parts: http::response::Parts,
    body: hyper::body::Incoming,
    own: &[String],
) -> (Outcome, Bytes) {
    let (bytes, truncated) = match Limited::new(body, MAX_STORED_OUTCOME).collect().await {
        Ok(c) => (c.to_bytes(), false),
        Err(_) => (Bytes::new(), true),
    };
    let (mut outcome, answer) = crate::audit::scrub_outcome(
        &app.audit().redactor,
        (parts.status.as_u16(), own),
        &parts.headers,
        &bytes,
    );
    if truncated {
        outcome
            .headers
            .push(("toolgate-outcome-truncated".into(), "true".into()));
    }
    (outcome, answer)
}

impl Failed {
    pub(crate) fn into_refusal(self) -> Refusal {
        match self {
            Failed::NotRecorded(r) | Failed::NotSent(r) | Failed::Unknown(r) => r,
        }
    }

    /// Nothing reached the upstream.
    pub(crate) fn sent_nothing(&self) -> bool {
        matches!(self, Failed::NotRecorded(_) | Failed::NotSent(_))
    }
}
