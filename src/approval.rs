//! Approvals: propose -> review -> commit (DESIGN section 3).
//!
//! An `approve`-mode call becomes a proposal holding the exact request that will be sent. The
//! agent's connection is held up to the tool's `hold`; approvers decide through the admin API,
//! the CLI or the web page. An approved proposal is committed when the agent claims it (the held
//! connection, or the same call sent again; `approval.send = "on_retry"`), or at once by the
//! approval itself (`"on_approval"`), after re-checking the kill switches and the policy in
//! force, at most once: whoever moves it from `approved` to `committing` (a compare-and-set in
//! the store) sends it, `committing` is stored durably before the request leaves, and a
//! proposal found `committing` at start-up becomes `outcome_unknown`, never re-sent.

use crate::audit::payload;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use crate::app::Core;
use crate::base::body::{self, ProxyBody};
use crate::error::{Code, Refusal};
use crate::model::KillTarget;
use crate::policy::{Agent, Approver, SendOn, Tool};
use crate::store::{now_unix, Outcome, StoreError};

/// How long a finished proposal still answers the same call (denial, expiry, stored response).
const REMEMBER_SECS: u64 = 24 * 3600;

pub use crate::model::{Decision, Proposal, State, StoredRequest};

/// An audit record about a proposal.
fn record(p: &Proposal, kind: crate::audit::Kind, payload: Value) -> crate::audit::Record {
    crate::audit::Record {
        kind,
        request_id: Some(p.request_id.clone()),
        job: Some(p.job.clone()),
        proposal: Some(p.id.clone()),
        agent: Some(p.agent.clone()),
        owner: Some(p.owner.clone()),
        tool: Some(p.tool.clone()),
        tool_version: Some(p.tool_version),
        token: p.token.clone(),
        user: p.user.clone(),
        payload,
        at_ms: 0,
    }
}

/// An audit record about a proposal that no request of the agent's made (what its approval's
/// own commit met).
fn record_apart(p: &Proposal, kind: crate::audit::Kind, payload: Value) -> crate::audit::Record {
    crate::audit::Record {
        request_id: None,
        ..record(p, kind, payload)
    }
}

/// When the proposal's tool sends an approved call, under the policy in force.
pub fn send_on(app: &Core, p: &Proposal) -> SendOn {
    app.policy()
        .tool(&p.tool)
        .map(|t| t.approval.send)
        .unwrap_or_default()
}

/// What a proposal's state means, in the words an approver reads on the page, from the CLI and
/// in the API (`status_text`).
pub fn status_text(p: &Proposal, send: SendOn) -> String {
    let until = crate::audit::rfc3339(p.expires_unix.saturating_mul(1000));
    match p.state {
        State::Pending => format!(
            "pending: {} of {} approval(s); expires {until}",
            p.approvals.len(),
            p.required
        ),
        State::Approved => match send {
            SendOn::Retry => {
                format!("approved; sent when the agent sends the call again, until {until}")
            }
            SendOn::Approval => format!(
                "approved; sent at once on approval (not sent yet: it stays approved until {until}, and the agent's next identical call sends it)"
            ),
        },
        State::Committing => "approved; being sent now".to_string(),
        State::Committed => format!(
            "approved and sent; the upstream answered {}",
            p.outcome
                .as_ref()
                .map(|o| o.status.to_string())
                .unwrap_or_else(|| "-".into())
        ),
        State::Failed => format!(
            "approved, but it could not be sent: {}",
            p.note.as_deref().unwrap_or("unknown error")
        ),
        State::Denied | State::Revoked | State::Cancelled => {
            let d = p.decision.as_ref();
            format!(
                "{} by {}{}{}; nothing was sent",
                p.state.as_str(),
                d.map(|d| d.by.as_str()).unwrap_or("toolgate"),
                d.filter(|d| !d.comment.is_empty())
                    .map(|d| format!(": {}", d.comment))
                    .unwrap_or_default(),
                p.note
                    .as_ref()
                    .map(|n| format!(" ({n})"))
                    .unwrap_or_default()
            )
        }
        State::Expired => "expired without a decision; nothing was sent".to_string(),
        State::OutcomeUnknown => format!(
            "outcome unknown: {}",
            p.note.as_deref().unwrap_or("it was being sent when toolgate stopped")
        ),
    }
}

fn store_err(e: StoreError) -> Refusal {
    Refusal::internal(format!(
        "the proposal store is unavailable ({e}); the call was not sent"
    ))
}

/// Renders a summary template such as `Refund {body.amount} of {body.payment_intent}`.
pub fn render_summary(template: &str, ctx: &Value) -> String {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let Some(end) = rest[start..].find('}').map(|e| e + start) else {
            out.push_str(&rest[start..]);
            return out;
        };
        let path = &rest[start + 1..end];
        let text = match crate::policy::template::dotted(ctx, path) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Null) | None => "?".to_string(),
            Some(v) => v.to_string(),
        };
        out.push_str(&text.chars().take(200).collect::<String>());
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

/// A call held for approval: the call, with what the agent's request contributes to its
/// proposal.
pub struct Held<'a> {
    pub call: &'a crate::model::Call,
    pub agent: &'a Agent,
    pub tool: &'a Tool,
    /// Headers as they will be sent, without the agent's credentials and before injection.
    pub headers: &'a HeaderMap,
    pub payload_sha256: &'a str,
    /// `{body, params, query}` for the summary.
    pub summary_ctx: Value,
    pub redactor: &'a crate::audit::Redactor,
    /// What the call asks of the tool's budget (charged at commit).
    pub budget_amount: Option<f64>,
    /// The id of the issued token the call came in with.
    pub token: Option<&'a str>,
    /// Which model answer asked for the call, when one did.
    pub requested_by: Option<Value>,
}

/// The agent side: create or join the proposal for this call, hold the connection, and commit
/// once approved.
pub async fn propose_and_wait(
    app: &std::sync::Arc<Core>,
    held: Held<'_>,
) -> Result<Response<ProxyBody>, Refusal> {
    let identity = {
        let mut h = Sha256::new();
        for part in [
            held.agent.id.as_str(),
            held.tool.name.as_str(),
            held.payload_sha256,
        ] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        // A call for one person never joins another's proposal.
        if let Some(user) = &held.agent.user {
            h.update(b"user\0");
            h.update(user.id.as_bytes());
            h.update([0]);
        }
        hex::encode(h.finalize())
    };
    let id = join_or_propose(app, &held, identity).await?;
    app.audit()
        .record(crate::audit::Record {
            kind: crate::audit::Kind::Decision,
            request_id: Some(held.call.request_id.to_string()),
            job: Some(held.call.job.clone()),
            proposal: Some(id.clone()),
            agent: Some(held.agent.id.clone()),
            owner: Some(held.agent.owner.clone()),
            tool: Some(held.tool.name.clone()),
            tool_version: Some(held.tool.version),
            token: held.token.map(str::to_string),
            user: held.agent.user.as_ref().map(|u| u.id.clone()),
            payload: payload::to_value(&payload::Decision {
                outcome: "held for approval".into(),
                mode: Some("approve".into()),
                proposal: Some(id.clone()),
                ..Default::default()
            }),
            at_ms: 0,
        })
        .await;
    let hold = held.tool.approval.hold;
    let wait = tracing::debug_span!("approval wait", toolgate.proposal = %id);
    tracing::Instrument::instrument(wait_and_claim(app, &id, hold, &held.call.request_id), wait)
        .await
}

/// The decision a held call waited for, as an event of its trace: who approved or denied it
/// (never the comment, which is free text).
fn trace_decision(p: &Proposal) {
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let span = tracing::Span::current();
    if span.is_disabled() {
        return;
    }
    let name = match p.state {
        State::Denied => "denial",
        State::Expired => "expiry",
        State::Cancelled => "cancellation",
        State::Revoked => "revocation",
        _ => "approval",
    };
    let mut attributes = vec![
        opentelemetry::KeyValue::new("toolgate.proposal", p.id.clone()),
        opentelemetry::KeyValue::new("toolgate.state", format!("{:?}", p.state).to_lowercase()),
    ];
    // Who decided: the denier (or revoker), else the approvers.
    let by: Vec<&str> = match &p.decision {
        Some(d) => vec![d.by.as_str()],
        None => p.approvals.iter().map(|a| a.by.as_str()).collect(),
    };
    if !by.is_empty() {
        attributes.push(opentelemetry::KeyValue::new(
            "toolgate.approver",
            by.join(", "),
        ));
    }
    span.add_event(name, attributes);
}

/// How many times a caller that lost a compare-and-set on a proposal reads it again before
/// giving up (each loss means another caller moved it meanwhile).
const SWAP_TRIES: usize = 16;

/// The proposal this call joins (an open one, or one finished lately, whose outcome it gets),
/// else a new one. Creating it is a compare-and-set on the call's identity in the store: of two
/// requests proposing the same call at once, on one replica or two, one creates it and the
/// other joins it.
async fn join_or_propose(app: &Core, held: &Held<'_>, identity: String) -> Result<String, Refusal> {
    let mut admitted = false;
    for _ in 0..SWAP_TRIES {
        let existing = app
            .store()
            .proposal_for(&identity)
            .await
            .map_err(store_err)?;
        let replacing = match existing {
            Some(p)
                if p.state.is_open()
                    || now_unix().saturating_sub(p.created_unix) < REMEMBER_SECS =>
            {
                return Ok(p.id)
            }
            Some(p) => Some(p.id),
            None => None,
        };
        if !admitted {
            crate::limits::admit_proposal(
                app.limiter(),
                app.store(),
                &held.agent.id,
                held.tool,
                held.budget_amount,
            )
            .await?;
            admitted = true;
        }
        let mut p = new_proposal(held, identity.clone());
        let exact: Vec<(&str, &str)> = held
            .headers
            .iter()
            .filter(|(k, _)| *k != header::HOST)
            .filter_map(|(k, v)| v.to_str().ok().map(|v| (k.as_str(), v)))
            .collect();
        let plain = serde_json::to_vec(&exact).map_err(|e| store_err(e.into()))?;
        p.request.sealed_headers = Some(app.store().sealer().seal(&plain).map_err(store_err)?);
        if !app
            .store()
            .proposal_create(&p, replacing.as_deref())
            .await
            .map_err(store_err)?
        {
            continue;
        }
        app.audit()
            .record(record(
                &p,
                crate::audit::Kind::Proposal,
                payload::to_value(&payload::Proposed {
                    summary: p.summary.clone(),
                    required: p.required,
                    groups: p.groups.clone(),
                    method: p.request.method.clone(),
                    url: p.request.url(),
                    sha256: p.request.sha256.clone(),
                    body: crate::audit::body_json(&p.request.body_bytes(), crate::audit::BODY_CAP),
                    risk: p.risk.clone(),
                }),
            ))
            .await;
        info!(proposal = %p.id, tool = %p.tool, agent = %p.agent, summary = %p.summary, "proposal created");
        app.notifier()
            .new_proposal(&p, held.tool.approval.webhook.as_deref());
        return Ok(p.id);
    }
    Err(Refusal::internal(
        "the proposal for this call kept changing while toolgate made it; nothing was sent. Send the same call again",
    ))
}

/// The one way a stored proposal changes: a compare-and-set from `seen` (its state and version
/// as read) to `next`, in the store. `Some` (with its new version) when this caller won, and
/// whoever waits on it is woken; `None` when another request or replica changed it first.
async fn advance(
    app: &Core,
    seen: &Proposal,
    mut next: Proposal,
) -> Result<Option<Proposal>, StoreError> {
    if !app.store().proposal_swap(seen, &next).await? {
        return Ok(None);
    }
    next.version = seen.version + 1;
    app.waiters().notify(&next.id);
    Ok(Some(next))
}

fn new_proposal(held: &Held<'_>, identity: String) -> Proposal {
    let now = now_unix();
    let spec = &held.tool.approval;
    let mut ctx = held.summary_ctx.clone();
    ctx["agent"] = json!({"id": held.agent.id, "owner": held.agent.owner, "tenant": held.agent.tenant, "environment": held.agent.environment});
    let summary = match &held.tool.summary {
        Some(t) => render_summary(t, &ctx),
        None => format!("{} {}", held.call.method, held.call.path_and_query),
    };
    Proposal {
        id: crate::base::new_id("prop"),
        state: State::Pending,
        version: 0,
        tool: held.tool.name.clone(),
        tool_version: held.tool.version,
        risk: held.tool.risk_text().to_string(),
        agent: held.agent.id.clone(),
        owner: held.agent.owner.clone(),
        environment: held.agent.environment.clone(),
        job: held.call.job.clone(),
        request_id: held.call.request_id.to_string(),
        summary,
        request: StoredRequest {
            method: held.call.method.to_string(),
            host: held.call.host.to_string(),
            port: held.call.port,
            path_and_query: held.call.path_and_query.to_string(),
            // The Host header came from the agent; the target is the tunnel's, shown in the URL.
            // Values that look like secrets are redacted: what approvers see is what is sent.
            headers: held
                .headers
                .iter()
                .filter(|(k, _)| *k != header::HOST)
                .filter_map(|(k, v)| {
                    v.to_str()
                        .ok()
                        .map(|v| (k.to_string(), held.redactor.text(v)))
                })
                .collect(),
            body: base64::engine::general_purpose::STANDARD.encode(&held.call.body),
            sha256: hex::encode(Sha256::digest(&held.call.body)),
            sealed_headers: None,
        },
        identity,
        created_unix: now,
        expires_unix: now + spec.expires.as_secs(),
        required: spec.required,
        groups: spec.groups.clone(),
        allow_self_approval: spec.allow_self_approval,
        approvals: Vec::new(),
        decision: None,
        note: None,
        outcome: None,
        committed_unix: None,
        committing_unix: None,
        committing_by: None,
        token: held.token.map(str::to_string),
        requested_by: held.requested_by.clone(),
        user: held.agent.user.as_ref().map(|u| u.id.clone()),
        user_groups: held
            .agent
            .user
            .as_ref()
            .map(|u| u.groups.clone())
            .unwrap_or_default(),
    }
}

/// Reads a proposal, expiring it first when its time is up.
pub async fn load(app: &Core, id: &str) -> Result<Option<Proposal>, StoreError> {
    for _ in 0..SWAP_TRIES {
        let Some(p) = app.store().proposal_get(id).await? else {
            return Ok(None);
        };
        if !(p.state.is_open() && now_unix() >= p.expires_unix) {
            return Ok(Some(p));
        }
        let mut next = p.clone();
        next.state = State::Expired;
        if let Some(expired) = advance(app, &p, next).await? {
            app.audit()
                .record(record(&expired, crate::audit::Kind::Expiry, json!({})))
                .await;
            info!(proposal = %id, "proposal expired");
            return Ok(Some(expired));
        }
    }
    app.store().proposal_get(id).await
}

fn pending(p: &Proposal) -> Refusal {
    let message = match p.state {
        State::Approved | State::Committing => format!(
            "{} is approved and being sent (proposal {}). Send the same call again later to get its result; it will not be sent twice",
            p.tool, p.id
        ),
        _ => format!(
            "{} needs approval ({} of {} approvals so far; proposal {}). Nothing was sent. Send the same call again later to get its result; it will not create a second proposal",
            p.tool,
            p.approvals.len(),
            p.required,
            p.id
        ),
    };
    Refusal::new(Code::ApprovalPending, message).with_proposal(p.id.clone())
}

/// How long after an approval a claimant leaves an `on_approval` commit to the approval's own
/// task (here or on the replica that approved) before it commits the proposal itself: that
/// task may have died with its replica, or been refused (a kill switch) and left it approved.
const APPROVAL_SENDS: u64 = 5;

/// Whether the approval's own commit is (or should be) on its way, so a claimant waits for it
/// instead of racing it.
fn approval_sends(app: &Core, p: &Proposal) -> bool {
    send_on(app, p) == SendOn::Approval
        && p.approvals
            .last()
            .is_some_and(|a| now_unix() < a.at_unix + APPROVAL_SENDS)
}

/// How often a call held on a shared store looks for a decision made on another replica.
const SHARED_POLL: Duration = Duration::from_secs(1);

/// Holds the call of request `claimant` on proposal `id` until it is decided, committed, or the
/// hold ends; commits it when it is approved (unless the approval sends it itself).
async fn wait_and_claim(
    app: &std::sync::Arc<Core>,
    id: &str,
    hold: Duration,
    claimant: &str,
) -> Result<Response<ProxyBody>, Refusal> {
    let deadline = tokio::time::Instant::now() + hold;
    // Whether this call was held while the proposal was still open or being sent: such a call
    // gets the whole answer of a commit its approval sent here (a later one the stored answer).
    let mut waited = false;
    // Whether the decision is in the call's trace yet.
    let mut told = false;
    loop {
        let notify = app.waiters().get(id);
        let notified = notify.notified();
        tokio::pin!(notified);
        // Registered before the state is read, so a decision in between is not missed.
        notified.as_mut().enable();
        let p = load(app, id).await.map_err(store_err)?.ok_or_else(|| {
            Refusal::internal(format!("proposal {id} vanished; nothing was sent"))
        })?;
        let waiting = match p.state {
            State::Pending | State::Committing => true,
            State::Approved => approval_sends(app, &p),
            _ => false,
        };
        if !waiting && !told {
            told = true;
            trace_decision(&p);
        }
        match p.state {
            _ if waiting => {
                waited = true;
                // Wake at a decision, at the end of the hold, or at expiry.
                let mut until = deadline.min(
                    tokio::time::Instant::now()
                        + Duration::from_secs(p.expires_unix.saturating_sub(now_unix())),
                );
                // Other replicas announce their decisions; if one is lost, look again each second
                // (and while an approval's own commit is awaited, in case it never comes).
                if app.store().shared() || p.state == State::Approved {
                    until = until.min(tokio::time::Instant::now() + SHARED_POLL);
                }
                if tokio::time::timeout_at(until, notified).await.is_err()
                    && tokio::time::Instant::now() >= deadline
                {
                    return Err(pending(&p));
                }
            }
            State::Approved => {
                if let Some(resp) = commit_detached(app, id, claimant).await? {
                    return Ok(resp);
                }
            }
            State::Committed => return Ok(answer_committed(app, &p, waited, claimant).await),
            // Pending and committing proposals are waited on above.
            State::Pending | State::Committing => {}
            _ => return Err(finished(&p)),
        }
    }
}

/// The refusal a call gets for a proposal that ended without a stored answer.
fn finished(p: &Proposal) -> Refusal {
    let d = p.decision.as_ref();
    let refusal = match p.state {
        State::Expired => Refusal::new(
            Code::ApprovalExpired,
            format!(
                "proposal {} for {} expired without a decision; nothing was sent",
                p.id, p.tool
            ),
        ),
        State::Failed => Refusal::upstream(format!(
            "proposal {} was approved but could not be sent: {}",
            p.id,
            p.note.as_deref().unwrap_or("unknown error")
        )),
        State::OutcomeUnknown => Refusal::new(
            Code::IdempotencyConflict,
            format!(
                "proposal {} was being committed when toolgate stopped or the upstream timed out: its outcome is unknown and it will not be sent again. Check the upstream",
                p.id
            ),
        ),
        _ => Refusal::new(
            Code::ApprovalDenied,
            format!(
                "proposal {} for {} was {} by {}{}{}. Do not retry the same call",
                p.id,
                p.tool,
                p.state.as_str(),
                d.map(|d| d.by.as_str()).unwrap_or("policy"),
                d.filter(|d| !d.comment.is_empty())
                    .map(|d| format!(": {}", d.comment))
                    .unwrap_or_default(),
                p.note
                    .as_ref()
                    .map(|n| format!(" ({n})"))
                    .unwrap_or_default(),
            ),
        ),
    };
    refusal.with_proposal(p.id.clone())
}

/// The answer of a committed proposal to the call of request `claimant`: the whole answer if
/// it waited here while its approval sent it, else the stored one.
async fn answer_committed(
    app: &Core,
    p: &Proposal,
    waited: bool,
    claimant: &str,
) -> Response<ProxyBody> {
    let resp = match waited.then(|| app.waiters().answer(&p.id)).flatten() {
        Some(whole) => answer_of(p, &whole),
        None => stored_response(app, p),
    };
    if claimant != p.request_id {
        // Another request (or the approval) sent it: this one got its answer.
        app.audit()
            .record(crate::audit::Record {
                request_id: Some(claimant.to_string()),
                ..record(
                    p,
                    crate::audit::Kind::IdempotentReplay,
                    json!({"original_request": p.request_id, "status": resp.status().as_u16()}),
                )
            })
            .await;
    }
    resp
}

fn stored_response(app: &Core, p: &Proposal) -> Response<ProxyBody> {
    let outcome = p.outcome.clone().unwrap_or(Outcome {
        status: 502,
        headers: vec![],
        body: String::new(),
    });
    // What is stored is shown as the tool shows answers now (hidden fields out).
    let policy = app.policy();
    let shown = match policy.tool(&p.tool).and_then(|t| t.response.as_ref()) {
        Some(spec) => crate::commit::shown(spec, &outcome),
        None => outcome,
    };
    answer_of(p, &shown)
}

/// An answer to the proposal's call, naming the proposal.
fn answer_of(p: &Proposal, outcome: &Outcome) -> Response<ProxyBody> {
    let mut resp = crate::model::stored_answer(outcome);
    if let Ok(v) = HeaderValue::from_str(&p.id) {
        resp.headers_mut().insert("toolgate-proposal", v);
    }
    resp
}

/// [`commit`] as a task of its own: once the commit starts it finishes and is settled (its
/// outcome stored, its response recorded) even if the agent waiting for it goes away, so a
/// call that was sent never stays `committing` for want of a listener.
async fn commit_detached(
    app: &std::sync::Arc<Core>,
    id: &str,
    claimant: &str,
) -> Result<Option<Response<ProxyBody>>, Refusal> {
    let (app, id, claimant) = (app.clone(), id.to_string(), claimant.to_string());
    let task = app.tasks().spawn({
        let app = app.clone();
        let committing = async move { commit(&app, &id, Some(&claimant)).await };
        // In the held call's trace, though a task of its own.
        tracing::Instrument::in_current_span(committing)
    });
    task.await.unwrap_or_else(|e| {
        Err(Refusal::internal(format!(
            "the commit ended without an answer ({e}); its outcome is unknown"
        )))
    })
}

/// Refuses the commit of `p` while its agent's or its tool's kill switch is thrown (the
/// proposal stays approved).
fn not_killed(app: &Core, p: &Proposal) -> Result<(), Refusal> {
    for key in [
        KillTarget::Agent(p.agent.clone()),
        KillTarget::Tool(p.tool.clone()),
    ] {
        if let Some(k) = app.kill().get(&key) {
            return Err(Refusal::new(
                Code::ToolDisabled,
                format!(
                    "proposal {} is approved, but {} is disabled by {}: {}; it was not sent",
                    p.id, key, k.by, k.reason
                ),
            )
            .with_proposal(p.id.clone()));
        }
    }
    Ok(())
}

/// Why `p` may not be sent any more because the issued token it came in with expired or was
/// revoked, if so.
async fn token_ended(app: &Core, p: &Proposal) -> Result<Option<String>, Refusal> {
    let Some(token) = &p.token else {
        return Ok(None);
    };
    let current = app.store().token_get(token).await.map_err(store_err)?;
    Ok((!current.is_some_and(|t| t.live(now_unix())))
        .then(|| format!("the issued token it came in with ({token}) has expired or was revoked")))
}

/// Commits an approved proposal, at most once. `Ok(None)`: it was not approved any more (the
/// caller reads it again). `claimant`: the request whose call sends it (the held one, or the
/// same call sent again); `None` when its approval sends it (`on_approval`).
async fn commit(
    app: &Core,
    id: &str,
    claimant: Option<&str>,
) -> Result<Option<Response<ProxyBody>>, Refusal> {
    let Some(p) = app.store().proposal_get(id).await.map_err(store_err)? else {
        return Ok(None);
    };
    if p.state != State::Approved {
        return Ok(None);
    }
    // The kill switches and the policy in force now, not at proposal time.
    not_killed(app, &p)?;
    let policy = app.policy();
    let (Some(tool), Some(agent)) = (
        policy.tool(&p.tool).cloned(),
        policy.agent(&p.agent).cloned(),
    ) else {
        let why = "the policy in force no longer has this tool or agent";
        return cancel(app, &p, why).await;
    };
    // A call held under an issued token is sent only while that token is in force: a
    // revocation or expiry after approval cancels it, as a grant's end does.
    if let Some(why) = token_ended(app, &p).await? {
        return cancel(app, &p, &why).await;
    }
    // A call proposed under a grant is sent only while the grant lasts; one made for a person
    // is judged for them again.
    let agent = for_person(crate::grants::for_tool(app, agent, &tool.name).await?, &p);
    let unnamed = agent.user.is_none() && agent.users == crate::policy::Users::Required;
    if unnamed || !agent.may_use(&tool.name) || tool.mode != crate::policy::Mode::Approve {
        return cancel(app, &p, "the policy in force no longer allows this call").await;
    }
    if tool.version != p.tool_version {
        let mut next = p.clone();
        next.note = Some(format!(
            "tool {} changed from version {} to {} after approval; it needs approving again",
            tool.name, p.tool_version, tool.version
        ));
        next.tool_version = tool.version;
        next.approvals.clear();
        next.state = State::Pending;
        advance(app, &p, next).await.map_err(store_err)?;
        return Ok(None);
    }
    let Some(headers) = sent_headers(app, &p.request) else {
        return cancel(app, &p, "its stored headers could not be opened (the seal key changed or the record was altered)").await;
    };
    let sent = Bytes::from(p.request.body_bytes());
    let method: http::Method = p.request.method.parse().unwrap_or(http::Method::POST);
    // Every policy phase again, on exactly what will be sent, under the policy in force now.
    let stored = crate::checks::StoredCall {
        host: &p.request.host,
        port: p.request.port,
        method: &method,
        path_and_query: &p.request.path_and_query,
        headers: &headers,
        body: &sent,
    };
    let checked = match crate::checks::recheck(&policy, &agent, &tool, &stored) {
        Ok(c) => c,
        Err(refusal) => {
            let why = format!("the policy in force refuses it now: {}", refusal.message);
            return cancel(app, &p, &why).await;
        }
    };
    let amount = crate::checks::budget_amount(&tool, &checked.body).unwrap_or(None);
    let charged = match crate::limits::charge_budget(app.store(), &agent.id, &tool, amount).await {
        Ok(c) => c,
        Err(refusal) if refusal.code == Code::Internal => {
            return Err(refusal.with_proposal(p.id.clone()))
        }
        Err(refusal) => return cancel(app, &p, &refusal.message).await,
    };
    let credential = credential_now(app, &policy, &p, checked.credential, &charged).await?;
    let call = crate::model::Call::of_proposal(&p, sent, checked.body);
    let request = outgoing(&call, method, headers, credential.as_deref());
    send_approved(app, &p, &call, request, charged, claimant).await
}

/// The approved call's credential, ready to inject: a person's token (a per-user credential)
/// is found now, as for a call sent at once. Refused (the budget given back, the proposal left
/// approved, to be retried): the person has no live connection now, or none is named.
async fn credential_now(
    app: &Core,
    policy: &crate::policy::Policy,
    p: &Proposal,
    credential: Option<std::sync::Arc<crate::policy::Credential>>,
    charged: &crate::limits::Charge,
) -> Result<Option<std::sync::Arc<crate::policy::Credential>>, Refusal> {
    let user = p.user.as_ref().map(|id| crate::policy::EndUser {
        id: id.clone(),
        groups: p.user_groups.clone(),
        via: format!("proposal {}", p.id),
        assertion: None,
    });
    let resolved = app
        .vault()
        .credential(
            app.upstream(),
            policy,
            credential.as_ref(),
            user.as_ref(),
            &app.config().admin_url,
        )
        .await;
    match resolved {
        Ok(r) => {
            if let Some(facts) = r.used {
                let rec = crate::audit::Record {
                    kind: crate::audit::Kind::ConnectionUsed,
                    proposal: Some(p.id.clone()),
                    job: Some(p.job.clone()),
                    agent: Some(p.agent.clone()),
                    tool: Some(p.tool.clone()),
                    user: p.user.clone(),
                    payload: facts,
                    ..Default::default()
                };
                app.audit().record(rec).await;
            }
            Ok(r.credential)
        }
        Err(refusal) => {
            crate::limits::refund_budget(app.store(), charged.clone()).await;
            Err(refusal.with_proposal(p.id.clone()))
        }
    }
}

/// The request an approved call sends: what was proposed, with the tool's credential.
fn outgoing(
    call: &crate::model::Call,
    method: http::Method,
    mut headers: HeaderMap,
    credential: Option<&crate::policy::Credential>,
) -> Request<ProxyBody> {
    if let Some(c) = credential {
        headers.remove(&c.header);
        headers.insert(c.header.clone(), c.header_value());
    }
    let mut req = Request::new(body::full(call.body.clone()));
    *req.method_mut() = method;
    *req.uri_mut() = call.path_and_query.parse().unwrap_or_default();
    *req.headers_mut() = headers;
    req
}

/// Moves `approved` to `committing`, durably, before a byte leaves (then, in `commit::send`,
/// the commit event): a compare-and-set from the record as read (state and version), so
/// whoever moves it first, on any replica, sends it, and a decision made meanwhile makes this
/// one lose (`None`). The budget charged for it is given back when it is not sent.
async fn claim_commit(
    app: &Core,
    approved: &Proposal,
    charged: &crate::limits::Charge,
) -> Result<Option<Proposal>, Refusal> {
    let mut next = approved.clone();
    next.state = State::Committing;
    next.committing_unix = Some(now_unix());
    next.committing_by = app.store().replica().map(str::to_string);
    match advance(app, approved, next).await {
        Ok(claimed) => Ok(claimed),
        Err(e) => {
            crate::limits::refund_budget(app.store(), charged.clone()).await;
            Err(store_err(e))
        }
    }
}

/// Sends an approved proposal through the one commit routine: `committing` is durable first.
async fn send_approved(
    app: &Core,
    approved: &Proposal,
    call: &crate::model::Call,
    request: Request<ProxyBody>,
    charged: crate::limits::Charge,
    claimant: Option<&str>,
) -> Result<Option<Response<ProxyBody>>, Refusal> {
    let Some(p) = claim_commit(app, approved, &charged).await? else {
        crate::limits::refund_budget(app.store(), charged).await;
        return Ok(None);
    };
    info!(proposal = %p.id, tool = %p.tool, "committing");
    let policy = app.policy();
    let response = policy.tool(&p.tool).and_then(|t| t.response.as_deref());
    // The commit and its answer belong to the request that sent it (the proposal's own first
    // request when the approval sends it): that request's row shows the upstream's answer.
    let who = crate::audit::Record {
        request_id: Some(claimant.unwrap_or(&p.request_id).to_string()),
        ..record(&p, crate::audit::Kind::Commit, Value::Null)
    };
    let commit = crate::commit::Commit {
        who,
        commit_payload: payload::Commit {
            method: p.request.method.clone(),
            url: p.request.url(),
            sha256: p.request.sha256.clone(),
            body: None,
            approvals: Some(payload::to_value(&p.approvals)),
        },
        call,
        request,
        charged,
        response,
    };
    let result = crate::commit::send(app, commit).await;
    if let (None, Ok(sent)) = (claimant, &result) {
        // Sent by its approval: a call held here meanwhile gets the whole answer too.
        app.waiters().keep_answer(&p.id, &sent.shown);
    }
    settle_commit(app, &p, result).await
}

/// Stores how a commit ended and wakes whoever waits on the proposal. Only the replica whose
/// compare-and-set moved the proposal to `committing` gets here, and it writes from that
/// record; the sweep may have taken it for abandoned meanwhile (`outcome_unknown`), and then
/// what the commit really did replaces that guess.
async fn settle_commit(
    app: &Core,
    committing: &Proposal,
    result: Result<crate::commit::Sent, crate::commit::Failed>,
) -> Result<Option<Response<ProxyBody>>, Refusal> {
    let mut next = committing.clone();
    let answer = match result {
        Ok(sent) => {
            // Stored: the kept fields. The held call gets the whole answer, hidden fields out.
            next.outcome = Some(sent.stored);
            next.state = State::Committed;
            next.committed_unix = Some(now_unix());
            Ok(Some(answer_of(&next, &sent.shown)))
        }
        Err(failed) => {
            next.state = match failed {
                // Toolgate could not record the commit: nothing was tried, the approval stands
                // (only this sender may move its own `committing` record back).
                crate::commit::Failed::NotRecorded(_) => State::Approved,
                crate::commit::Failed::NotSent(_) => State::Failed,
                crate::commit::Failed::Unknown(_) => State::OutcomeUnknown,
            };
            let refusal = failed.into_refusal();
            if next.state != State::Approved {
                next.note = Some(refusal.message.clone());
            }
            Err(refusal.with_proposal(next.id.clone()))
        }
    };
    let mut seen = committing.clone();
    for _ in 0..SWAP_TRIES {
        match advance(app, &seen, next.clone()).await {
            Ok(Some(_)) => return answer,
            Ok(None) => {}
            Err(e) => {
                warn!(proposal = %next.id, error = %e, state = next.state.as_str(), "the end of a commit could not be stored");
                return answer;
            }
        }
        match app.store().proposal_get(&next.id).await {
            // The sweep's guess, or a retry of ours: what happened is known here.
            Ok(Some(fresh))
                if fresh.state == State::OutcomeUnknown && next.state != State::Approved =>
            {
                seen = fresh
            }
            _ => break,
        }
    }
    warn!(proposal = %next.id, state = next.state.as_str(), "the end of a commit was not stored: the proposal changed meanwhile");
    answer
}

/// Cancels an approved proposal that can no longer be committed, saying why. A decision made
/// meanwhile wins (the caller reads the proposal again either way).
async fn cancel(
    app: &Core,
    seen: &Proposal,
    why: &str,
) -> Result<Option<Response<ProxyBody>>, Refusal> {
    let mut next = seen.clone();
    next.state = State::Cancelled;
    next.note = Some(why.to_string());
    if let Some(p) = advance(app, seen, next).await.map_err(store_err)? {
        app.audit()
            .record(record(
                &p,
                crate::audit::Kind::Cancellation,
                payload::to_value(&payload::Act {
                    by: "toolgate".into(),
                    reason: Some(why.to_string()),
                    ..Default::default()
                }),
            ))
            .await;
    }
    Ok(None)
}

/// The headers an approved call sends: unsealed, or for proposals stored before sealing, the
/// shown ones. `None` when a seal does not open (fail closed).
fn sent_headers(app: &Core, r: &StoredRequest) -> Option<HeaderMap> {
    let pairs: Vec<(String, String)> = match &r.sealed_headers {
        Some(sealed) => serde_json::from_slice(&app.store().sealer().open_sealed(sealed)?).ok()?,
        None => r.headers.clone(),
    };
    let mut headers = HeaderMap::new();
    for (k, v) in pairs {
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(&v),
        ) {
            headers.append(k, v);
        }
    }
    Some(headers)
}

/// A proposal found `committing` by a process that is not sending it may or may not have
/// reached the upstream. It becomes `outcome_unknown` and is never sent again. On a local store
/// that is every one found at start-up. On a shared store another replica may be sending it
/// right now: a commit is taken once the replica sending it stopped showing it is alive (a
/// replica killed mid-send), or once it is older than `in_flight`, the longest a send can take
/// (a live replica that lost track of it). Run at start and every few seconds on a shared store.
pub async fn recover(
    store: &crate::store::Store,
    audit: &crate::audit::Audit,
    in_flight: Duration,
) -> Result<usize, StoreError> {
    let found = store.proposal_in_state(State::Committing).await?;
    if found.is_empty() {
        return Ok(0);
    }
    let alive = match store.shared() {
        true => store.replicas_alive().await?,
        false => Vec::new(),
    };
    let cut = now_unix().saturating_sub(in_flight.as_secs());
    let mut n = 0;
    for seen in found {
        if store.shared() {
            // Records from before replicas named themselves have only their age to go by.
            let sender_alive = seen
                .committing_by
                .as_ref()
                .is_none_or(|r| alive.contains(r));
            let young = seen.committing_unix.is_some_and(|t| t > cut);
            if sender_alive && young {
                continue;
            }
        }
        let mut p = seen.clone();
        p.state = State::OutcomeUnknown;
        p.note = Some(
            "toolgate stopped while this call was being sent; it will not be sent again".into(),
        );
        // Compare-and-set: a replica that finished the commit meanwhile keeps its record.
        if !store.proposal_swap(&seen, &p).await? {
            continue;
        }
        p.version = seen.version + 1;
        audit
            .record(record(
                &p,
                crate::audit::Kind::OutcomeUnknown,
                json!({"note": p.note}),
            ))
            .await;
        warn!(proposal = %p.id, tool = %p.tool, "found committing at start-up: outcome unknown");
        n += 1;
    }
    Ok(n)
}

/// What an approver asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Approve,
    Deny,
    Revoke,
    Cancel,
}

impl Action {
    /// The action as the admin API's paths name it (`/api/proposals/{id}/approve`).
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Approve => "approve",
            Action::Deny => "deny",
            Action::Revoke => "revoke",
            Action::Cancel => "cancel",
        }
    }

    /// The action a path names, if any.
    pub fn parse(name: &str) -> Option<Action> {
        [
            Action::Approve,
            Action::Deny,
            Action::Revoke,
            Action::Cancel,
        ]
        .into_iter()
        .find(|a| a.as_str() == name)
    }

    /// The audit event an action records.
    pub fn event_kind(self) -> crate::audit::Kind {
        match self {
            Action::Approve => crate::audit::Kind::Approval,
            Action::Deny => crate::audit::Kind::Denial,
            Action::Revoke => crate::audit::Kind::Revocation,
            Action::Cancel => crate::audit::Kind::Cancellation,
        }
    }
}

/// Why an approver's action was refused, with the HTTP status the API answers.
#[derive(Debug)]
pub struct ActionError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

fn action_error(status: StatusCode, code: &'static str, message: impl Into<String>) -> ActionError {
    ActionError {
        status,
        code,
        message: message.into(),
    }
}

/// What an approver's action did.
#[derive(Debug)]
pub struct Decided {
    /// The proposal as it is now (after the approval's own commit, when it sent it at once).
    pub proposal: Proposal,
    /// When its tool sends an approved call.
    pub send: SendOn,
    /// Why the approval's own commit did not send it (a kill switch, say): it stays approved.
    pub unsent: Option<String>,
}

impl Decided {
    /// What the decision led to, in plain words.
    pub fn status_text(&self) -> String {
        match &self.unsent {
            Some(why) => format!(
                "approved, but not sent: {why}. It stays approved until {}; the agent's next identical call tries again",
                crate::audit::rfc3339(self.proposal.expires_unix.saturating_mul(1000))
            ),
            None => status_text(&self.proposal, self.send),
        }
    }
}

/// How long an approver's request waits for the commit its approval started (`on_approval`)
/// before it answers with the proposal as it stands; the commit goes on either way.
const SEND_WAIT: Duration = Duration::from_secs(10);

/// The approver side: approve, deny, revoke or cancel. An approval that completes a proposal of
/// an `on_approval` tool commits it at once, in a task of its own (the compare-and-set from
/// `approved` to `committing` decides who sends it, here or on another replica), and waits for
/// it up to [`SEND_WAIT`].
pub async fn decide(
    app: &std::sync::Arc<Core>,
    who: &Approver,
    id: &str,
    action: Action,
    comment: &str,
) -> Result<Decided, ActionError> {
    let p = decide_only(app, who, id, action, comment).await?;
    let send = send_on(app, &p);
    if !(action == Action::Approve && p.state == State::Approved && send == SendOn::Approval) {
        return Ok(Decided {
            proposal: p,
            send,
            unsent: None,
        });
    }
    let task = app.tasks().spawn({
        let (app, id) = (app.clone(), p.id.clone());
        async move {
            let r = commit(&app, &id, None).await.err()?;
            // A refusal that left it approved (a kill switch, the store) is told here; one that
            // settled it (failed, outcome unknown) is in its state and its events.
            let p = app.store().proposal_get(&id).await.ok().flatten()?;
            if p.state != State::Approved {
                return None;
            }
            // A refusal may carry a person's one-time link: never recorded, logged or shown
            // to anyone but the agent it was answered to.
            let message = r.recorded_message().into_owned();
            warn!(proposal = %id, code = r.code.as_str(), error = %message, "an approval's commit was refused; the proposal stays approved");
            app.audit()
                .record(record_apart(
                    &p,
                    crate::audit::Kind::Decision,
                    payload::to_value(&payload::Decision {
                        outcome: "refused".into(),
                        code: Some(r.code.as_str().into()),
                        status: Some(r.code.status().as_u16()),
                        message: Some(message.clone()),
                        at: Some("commit on approval".into()),
                        ..Default::default()
                    }),
                ))
                .await;
            Some(message)
        }
    });
    let unsent = match tokio::time::timeout(SEND_WAIT, task).await {
        Ok(Ok(unsent)) => unsent,
        _ => None,
    };
    let proposal = match app.store().proposal_get(&p.id).await {
        Ok(Some(now)) => now,
        _ => p,
    };
    Ok(Decided {
        proposal,
        send,
        unsent,
    })
}

async fn decide_only(
    app: &Core,
    who: &Approver,
    id: &str,
    action: Action,
    comment: &str,
) -> Result<Proposal, ActionError> {
    let internal = |e: StoreError| {
        action_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "internal_error",
            e.to_string(),
        )
    };
    let decision = Decision {
        by: who.id.clone(),
        at_unix: now_unix(),
        comment: comment.chars().take(2000).collect(),
    };
    // Read, decide, compare-and-set; a loss means another decision (or a commit) landed first,
    // so the action is judged again against what it did: approving a proposal denied meanwhile
    // gets 409 naming that state, never a write over it.
    for _ in 0..SWAP_TRIES {
        let p = load(app, id).await.map_err(internal)?.ok_or_else(|| {
            action_error(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no proposal {id}"),
            )
        })?;
        let eligible = p.groups.is_empty() || who.groups.iter().any(|g| p.groups.contains(g));
        if !eligible {
            return Err(action_error(
                StatusCode::FORBIDDEN,
                "policy_violation",
                format!(
                    "{} is not in the groups that decide on {} ({})",
                    who.id,
                    p.tool,
                    p.groups.join(", ")
                ),
            ));
        }
        let mut next = p.clone();
        transition(&mut next, who, action, decision.clone())?;
        let Some(p) = advance(app, &p, next).await.map_err(internal)? else {
            continue;
        };
        let mut act = payload::Act {
            by: who.id.clone(),
            via: who.signed_in_via.clone(),
            comment: Some(comment.to_string()),
            state: Some(p.state.as_str().into()),
            approvals: Some(p.approvals.len()),
            required: Some(p.required),
            ..Default::default()
        };
        if p.state == State::Approved {
            // What the approval leads to, for the story: sent now, or on the agent's retry.
            act.send = Some(send_on(app, &p).as_str().into());
            act.until = Some(crate::audit::rfc3339(p.expires_unix.saturating_mul(1000)));
        }
        let act = payload::to_value(&act);
        app.audit()
            .record(record(&p, action.event_kind(), act))
            .await;
        info!(proposal = %p.id, by = %who.id, action = ?action, state = p.state.as_str(), "proposal decision");
        return Ok(p);
    }
    Err(action_error(
        StatusCode::CONFLICT,
        "invalid_state",
        format!(
            "proposal {id} kept changing while this decision was made; read it and decide again"
        ),
    ))
}

/// What an approver's action does to a proposal, or why it may not.
/// The agent as it acts for the proposal's person (a call made for a person is judged for them
/// again at commit).
fn for_person(agent: std::sync::Arc<Agent>, p: &Proposal) -> std::sync::Arc<Agent> {
    match &p.user {
        Some(user) => agent.acting_for(crate::policy::EndUser {
            id: user.clone(),
            groups: p.user_groups.clone(),
            via: format!("proposal {}", p.id),
            assertion: None,
        }),
        None => agent,
    }
}

/// An approver may not approve a call made for them (unless the tool allows self-approval).
fn not_for_themselves(p: &Proposal, who: &Approver) -> Result<(), ActionError> {
    let for_them = p
        .user
        .as_deref()
        .is_some_and(|u| u.eq_ignore_ascii_case(&who.id));
    match !p.allow_self_approval && for_them {
        true => Err(action_error(
            StatusCode::FORBIDDEN,
            "policy_violation",
            format!(
                "{} may not approve a call made for themselves (agent {} acting for {}); another approver must",
                who.id,
                p.agent,
                p.user.as_deref().unwrap_or("")
            ),
        )),
        false => Ok(()),
    }
}

fn transition(
    p: &mut Proposal,
    who: &Approver,
    action: Action,
    decision: Decision,
) -> Result<(), ActionError> {
    let conflict = |p: &Proposal, what: &str| {
        action_error(
            StatusCode::CONFLICT,
            "invalid_state",
            format!(
                "proposal {} is {}; it cannot be {what}",
                p.id,
                p.state.as_str()
            ),
        )
    };
    match action {
        Action::Approve => {
            if p.state != State::Pending {
                return Err(conflict(p, "approved"));
            }
            not_for_themselves(p, who)?;
            if !p.allow_self_approval && who.id.eq_ignore_ascii_case(&p.owner) {
                return Err(action_error(
                    StatusCode::FORBIDDEN,
                    "policy_violation",
                    format!(
                        "{} owns agent {} and may not approve its calls",
                        who.id, p.agent
                    ),
                ));
            }
            if p.approvals.iter().any(|a| a.by == who.id) {
                return Err(action_error(
                    StatusCode::CONFLICT,
                    "invalid_state",
                    format!(
                        "{} has already approved proposal {}; it needs a different approver",
                        who.id, p.id
                    ),
                ));
            }
            p.approvals.push(decision);
            if p.approvals.len() as u32 >= p.required {
                p.state = State::Approved;
            }
        }
        Action::Deny => {
            if !p.state.is_open() {
                return Err(conflict(p, "denied"));
            }
            p.state = State::Denied;
            p.decision = Some(decision);
        }
        Action::Revoke => match p.state {
            State::Approved => {
                p.state = State::Revoked;
                p.decision = Some(decision);
            }
            State::Pending if p.approvals.iter().any(|a| a.by == who.id) => {
                p.approvals.retain(|a| a.by != who.id);
            }
            _ => {
                return Err(conflict(
                    p,
                    "revoked (only an approval whose commit has not started can be)",
                ))
            }
        },
        Action::Cancel => {
            if !p.state.is_open() {
                return Err(conflict(p, "cancelled"));
            }
            p.state = State::Cancelled;
            p.decision = Some(decision);
        }
    }
    Ok(())
}

/// Proposals, newest first, optionally of one state.
pub async fn list(app: &Core, state: Option<State>) -> Result<Vec<Proposal>, StoreError> {
    let mut out = Vec::new();
    for p in app.store().proposal_list().await? {
        let p = if p.state.is_open() && now_unix() >= p.expires_unix {
            load(app, &p.id).await?.unwrap_or(p)
        } else {
            p
        };
        if state.is_none_or(|s| s == p.state) {
            out.push(p);
        }
    }
    out.sort_by(|a, b| b.created_unix.cmp(&a.created_unix).then(b.id.cmp(&a.id)));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_render_from_the_call() {
        let ctx = json!({"body": {"amount": 120000, "payment_intent": "pi_123"}, "params": {"owner": "acme"}});
        assert_eq!(
            render_summary("Refund {body.amount} of {body.payment_intent}", &ctx),
            "Refund 120000 of pi_123"
        );
        assert_eq!(
            render_summary("Delete {params.owner}/{params.repo}", &ctx),
            "Delete acme/?"
        );
        assert_eq!(render_summary("no {brace", &ctx), "no {brace");
    }

    #[test]
    fn states_round_trip() {
        for s in ["pending", "approved", "committed", "outcome_unknown"] {
            assert_eq!(State::parse(s).map(State::as_str), Some(s));
        }
        assert!(State::parse("nope").is_none());
    }
}
