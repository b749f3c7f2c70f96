//! Undo: every committed call that changed something is kept in the ledger (`ledger.rs`) with
//! what it asked and what the upstream answered. A tool's `rollback` template turns one entry into the request that
//! undoes it, and that request goes through the proxy's own phases (contract, kill switch,
//! permissions, validation, credential, audit) as the agent that made the call. Only the mode is
//! not applied: an approver asked for the undo, so it is neither held nor previewed.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::app::Gate;
pub use crate::audit::RollbackOutcome as Outcome;
use crate::ledger::{all, find};
use crate::model::{Committed, UndoApproval, Undone};
use crate::policy::rollback_def::placeholders;
use crate::policy::{Approver, BodyFormat, Policy, Rollback, Tool};
use crate::services::LockKey;
use crate::store::StoreError;

/// The result of undoing one call, as the API, the CLI and the page report it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// The call that was to be undone.
    pub request_id: String,
    pub tool: Option<String>,
    pub outcome: Outcome,
    pub message: String,
    /// The undo request's own id, when one was made.
    pub undo_request: Option<String>,
    pub status: Option<u16>,
}

impl Report {
    fn new(request_id: &str, tool: Option<&str>, outcome: Outcome, message: String) -> Report {
        Report {
            request_id: request_id.to_string(),
            tool: tool.map(str::to_string),
            outcome,
            message,
            undo_request: None,
            status: None,
        }
    }

    pub fn ok(&self) -> bool {
        self.outcome == Outcome::Undone
    }
}

/// `{response.a.b}` against the context `{"response": {...}, "params": {...}, ...}`.
fn lookup<'a>(ctx: &'a Value, name: &str) -> Option<&'a Value> {
    // Only a scalar can stand in a path or a field.
    crate::policy::template::dotted(ctx, name)
        .filter(|v| !matches!(v, Value::Null | Value::Object(_) | Value::Array(_)))
}

fn scalar_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Renders a template string. In a path every value is percent-encoded as one segment, so a
/// value can never add segments or a query.
fn render(template: &str, ctx: &Value, in_path: bool) -> Result<String, String> {
    let mut out = String::new();
    let mut last = 0;
    for (start, end, name) in placeholders(template)? {
        out.push_str(&template[last..start]);
        let v = lookup(ctx, name)
            .ok_or_else(|| format!("{{{name}}} has no value in the recorded call"))?;
        let text = scalar_text(v);
        if in_path {
            out.extend(percent_encode_segment(&text));
        } else {
            out.push_str(&text);
        }
        last = end + 1;
    }
    out.push_str(&template[last..]);
    Ok(out)
}

pub(crate) fn percent_encode_segment(s: &str) -> impl Iterator<Item = String> + '_ {
    s.bytes().map(|b| {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            (b as char).to_string()
        } else {
            format!("%{b:02X}")
        }
    })
}

/// A body template: a string that is exactly one placeholder keeps the value's JSON type.
fn render_value(v: &Value, ctx: &Value) -> Result<Value, String> {
    Ok(match v {
        Value::String(s) => {
            let ph = placeholders(s)?;
            match ph.as_slice() {
                [(0, end, name)] if *end == s.len() - 1 => lookup(ctx, name)
                    .cloned()
                    .ok_or_else(|| format!("{{{name}}} has no value in the recorded call"))?,
                _ => Value::String(render(s, ctx, false)?),
            }
        }
        Value::Array(a) => Value::Array(
            a.iter()
                .map(|x| render_value(x, ctx))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, x)| Ok((k.clone(), render_value(x, ctx)?)))
                .collect::<Result<Map<_, _>, String>>()?,
        ),
        other => other.clone(),
    })
}

/// JSON as a Stripe-style form: `a[b]=c`, `a[0]=x`.
pub fn encode_form(v: &Value) -> String {
    fn walk(prefix: &str, v: &Value, out: &mut form_urlencoded::Serializer<'_, String>) {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}[{k}]")
                    };
                    walk(&key, x, out);
                }
            }
            Value::Array(a) => {
                for (i, x) in a.iter().enumerate() {
                    walk(&format!("{prefix}[{i}]"), x, out);
                }
            }
            Value::Null => {
                out.append_pair(prefix, "");
            }
            other => {
                out.append_pair(prefix, &scalar_text(other));
            }
        }
    }
    let mut out = form_urlencoded::Serializer::new(String::new());
    walk("", v, &mut out);
    out.finish()
}

/// The undo request for a recorded call, or why there is none.
struct Plan {
    method: Method,
    path: String,
    body: Option<Value>,
}

fn plan(policy: &Policy, c: &Committed) -> Result<Plan, (Outcome, String)> {
    let tool = policy.tool(&c.tool).ok_or((
        Outcome::Refused,
        format!(
            "tool {} is no longer defined in the policies; its undo is unknown",
            c.tool
        ),
    ))?;
    let (method, path, body) = match tool.rollback.as_ref() {
        None => {
            return Err((
                Outcome::NotUndoable,
                format!("tool {} declares no rollback", c.tool),
            ))
        }
        Some(Rollback::None(why)) => {
            return Err((
                Outcome::NotUndoable,
                format!("tool {} cannot be undone: {why}", c.tool),
            ))
        }
        Some(Rollback::Request { method, path, body }) => (method, path, body),
    };
    let (path_only, query) = match c.path_and_query.split_once('?') {
        Some((p, q)) => (p, q),
        None => (c.path_and_query.as_str(), ""),
    };
    let params: BTreeMap<String, String> = tool.path.matches(path_only).unwrap_or_default();
    let query: Map<String, Value> = form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
        .collect();
    let ctx = json!({
        "response": c.response,
        "params": params,
        "body": c.body,
        "query": query,
    });
    let bad = |m: String| {
        (
            Outcome::Refused,
            format!("the rollback of tool {}: {m}", c.tool),
        )
    };
    let path = render(path, &ctx, true).map_err(bad)?;
    let body = match body {
        Some(v) => Some(render_value(v, &ctx).map_err(bad)?),
        None => None,
    };
    Ok(Plan {
        method: method.clone(),
        path,
        body,
    })
}

/// Undoes one committed call (a request id or a proposal id), at most once.
pub async fn undo(app: &Arc<Gate>, id: &str, who: &Approver) -> Report {
    let by = who.id.as_str();
    let found = match find(app.store(), id).await {
        Ok(Some(c)) => c,
        Ok(None) => {
            return Report::new(
                id,
                None,
                Outcome::NotFound,
                format!("no committed call {id}: only calls that changed something and succeeded can be undone"),
            )
        }
        Err(e) => {
            return Report::new(
                id,
                None,
                Outcome::Refused,
                format!("the store is unavailable ({e}); nothing was sent"),
            )
        }
    };
    // One lock per call (a proposal id and its request id are the same call), then read again
    // under it: an undo that finished meanwhile is seen.
    let _lock = app
        .locks()
        .lock(LockKey::Undo(found.request_id.clone()))
        .await;
    let mut c = match find(app.store(), &found.request_id).await {
        Ok(Some(fresh)) => fresh,
        _ => found,
    };
    let tool_name = c.tool.clone();
    let tool = Some(tool_name.as_str());
    if let Err(report) = undoable(&c) {
        return *report;
    }
    let policy = app.policy();
    let plan = match plan(&policy, &c) {
        Ok(p) => p,
        Err((outcome, message)) => return Report::new(&c.request_id, tool, outcome, message),
    };
    // The undo tool decides the body's encoding.
    let undo_tool = policy
        .match_tool(&c.host, c.port, &plan.method, &plan.path)
        .map(|m| m.tool.clone());
    if let Some(t) = &undo_tool {
        if let Err((outcome, message)) = approve_undo(app, &policy, &mut c, t, who).await {
            return Report::new(&c.request_id, tool, outcome, message);
        }
    }
    if let Err(report) = claim_undo(app, &c).await {
        return *report;
    }
    let report = send_undo(app, &mut c, &plan, undo_tool.as_deref(), by).await;
    release_undo(app, &c.request_id, c.undone.is_some()).await;
    let _ = app.store().flush().await;
    if let Some(undo_id) = &report.undo_request {
        record_rollback(app, &c, &plan, by, &report, undo_id).await;
    }
    report
}

/// Sends the undo of `c` as its agent's call (through every phase of the proxy), once its
/// sending is claimed, and marks `c` undone when the upstream took it.
async fn send_undo(
    app: &Arc<Gate>,
    c: &mut Committed,
    plan: &Plan,
    undo_tool: Option<&Tool>,
    by: &str,
) -> Report {
    let tool = Some(c.tool.clone());
    let tool = tool.as_deref();
    c.attempts += 1;
    if let Err(e) = app.store().ledger_put(c).await {
        let message = format!("the store is unavailable ({e}); nothing was sent");
        return Report::new(&c.request_id, tool, Outcome::Refused, message);
    }
    let req = match undo_request(plan, undo_tool, c) {
        Ok(req) => req,
        Err(message) => return Report::new(&c.request_id, tool, Outcome::Refused, message),
    };
    let target = crate::proxy::Target::undo(c, by);
    let (undo_id, resp, refused) = crate::proxy::internal_call(app.clone(), target, req).await;
    let status = resp.status().as_u16();
    // Upstream failures are toolgate's 502/504, but the call may have been sent: "failed".
    let refused_by_toolgate =
        refused.is_some_and(|code| code.source() != crate::error::ErrorSource::Upstream);
    let answer = crate::base::body::collect_capped(resp.into_body(), 64 * 1024).await;
    let text = String::from_utf8_lossy(&answer).into_owned();
    let mut report = outcome_report(c, plan, status, refused_by_toolgate, &text);
    report.undo_request = Some(undo_id.clone());
    report.status = Some(status);
    if (200..300).contains(&status) {
        c.undone = Some(Undone {
            by: by.to_string(),
            request_id: undo_id,
            status,
            unix_ms: crate::base::now_ms(),
        });
        if let Err(e) = app.store().ledger_put(c).await {
            tracing::error!(request_id = %c.request_id, error = %e, "could not mark the call undone");
        }
    }
    report
}

/// The key of the claim on undoing call `request_id`.
fn undo_claim(request_id: &str) -> String {
    format!("undo:{request_id}")
}

/// Claims the sending of an undo of `c`: a compare-and-set in the store (with the idempotency
/// records), so that of two approvers or replicas undoing one call at once only one sends, and
/// none sends once an undo succeeded. The other is told the undo is under way.
async fn claim_undo(app: &Gate, c: &Committed) -> Result<(), Box<Report>> {
    let claim = crate::model::IdemRecord {
        state: crate::model::IdemState::InFlight,
        payload_sha256: String::new(),
        created_unix: crate::base::now_unix(),
        request_id: c.request_id.clone(),
        outcome: None,
    };
    let report =
        |outcome, message| Box::new(Report::new(&c.request_id, Some(&c.tool), outcome, message));
    match app.store().idem_swap(&undo_claim(&c.request_id), None, &claim).await {
        Ok(true) => Ok(()),
        Ok(false) => Err(report(
            Outcome::AlreadyUndone,
            format!(
                "an undo of {} is already under way or done (another approver or replica); it is not sent twice",
                c.request_id
            ),
        )),
        Err(e) => Err(report(
            Outcome::Refused,
            format!("the store is unavailable ({e}); nothing was sent"),
        )),
    }
}

/// Ends the claim: kept when the undo succeeded (the ledger says so too), else removed so that
/// the undo may be asked for again.
async fn release_undo(app: &Gate, request_id: &str, undone: bool) {
    let key = undo_claim(request_id);
    let ended = match undone {
        true => match app.store().idem_get(&key).await {
            Ok(Some(mut rec)) => {
                rec.state = crate::model::IdemState::Done;
                app.store().idem_put(&key, &rec).await
            }
            other => other.map(|_| ()),
        },
        false => app.store().idem_remove(&key).await,
    };
    if let Err(e) = ended {
        tracing::error!(request_id = %request_id, error = %e, "could not end the claim on an undo");
    }
}

/// Whether a recorded call may be undone at all.
fn undoable(c: &Committed) -> Result<(), Box<Report>> {
    let tool = Some(c.tool.as_str());
    if let Some(u) = &c.undone {
        let mut r = Report::new(
            &c.request_id,
            tool,
            Outcome::AlreadyUndone,
            format!(
                "{} was already undone by {} (request {}); it is not undone twice",
                c.request_id, u.by, u.request_id
            ),
        );
        r.undo_request = Some(u.request_id.clone());
        return Err(Box::new(r));
    }
    if !(200..300).contains(&c.status) {
        return Err(Box::new(Report::new(
            &c.request_id,
            tool,
            Outcome::NotUndoable,
            format!(
                "{} was answered {}: it changed nothing to undo",
                c.request_id, c.status
            ),
        )));
    }
    if let Some(of) = &c.undoes {
        return Err(Box::new(Report::new(
            &c.request_id,
            tool,
            Outcome::NotUndoable,
            format!(
                "{} is itself the undo of {of}; it is not undone",
                c.request_id
            ),
        )));
    }
    Ok(())
}

/// The undo request: method, path, the body encoded as the undo tool takes it, and its own
/// `Idempotency-Key` per attempt.
fn undo_request(
    plan: &Plan,
    undo_tool: Option<&Tool>,
    c: &Committed,
) -> Result<Request<crate::base::body::ProxyBody>, String> {
    let (body, content_type) = match (&plan.body, undo_tool.and_then(|t| t.body.as_ref())) {
        (None, _) => (Bytes::new(), None),
        (Some(v), Some(spec)) if spec.format == BodyFormat::Form => (
            Bytes::from(encode_form(v)),
            Some("application/x-www-form-urlencoded"),
        ),
        (Some(v), _) => (
            Bytes::from(serde_json::to_vec(v).unwrap_or_default()),
            Some("application/json"),
        ),
    };
    let mut req = Request::new(crate::base::body::full(body));
    *req.method_mut() = plan.method.clone();
    *req.uri_mut() = plan
        .path
        .parse()
        .map_err(|e| format!("the undo path {:?} is not valid: {e}", plan.path))?;
    let h = req.headers_mut();
    if let Some(ct) = content_type {
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    }
    if let Ok(v) = HeaderValue::from_str(&format!("toolgate-undo-{}-{}", c.request_id, c.attempts))
    {
        h.insert("idempotency-key", v);
    }
    Ok(req)
}

/// What the answer to an undo means: undone (2xx), refused by toolgate, or failed upstream.
fn outcome_report(
    c: &Committed,
    plan: &Plan,
    status: u16,
    refused_by_toolgate: bool,
    text: &str,
) -> Report {
    let tool = Some(c.tool.as_str());
    let message_of = |text: &str| {
        serde_json::from_str::<Value>(text)
            .ok()
            .and_then(|v| {
                v.pointer("/error/message")
                    .or_else(|| v.pointer("/message"))
                    .and_then(Value::as_str)
                    .map(str::to_string)
            })
            .unwrap_or_else(|| text.chars().take(300).collect())
    };
    if (200..300).contains(&status) {
        Report::new(
            &c.request_id,
            tool,
            Outcome::Undone,
            format!("{} {} answered {status}", plan.method, plan.path),
        )
    } else if refused_by_toolgate {
        Report::new(&c.request_id, tool, Outcome::Refused, message_of(text))
    } else {
        Report::new(
            &c.request_id,
            tool,
            Outcome::Failed,
            format!(
                "{} {} answered {status}: {}",
                plan.method,
                plan.path,
                message_of(text)
            ),
        )
    }
}

/// The `rollback` event on the undone call, linking the undo's request.
async fn record_rollback(
    app: &Gate,
    c: &Committed,
    plan: &Plan,
    by: &str,
    report: &Report,
    undo_id: &str,
) {
    app.audit()
        .record(crate::audit::Record {
            kind: crate::audit::Kind::Rollback,
            request_id: Some(c.request_id.clone()),
            job: Some(c.job.clone()),
            proposal: c.proposal.clone(),
            agent: Some(c.agent.clone()),
            tool: Some(c.tool.clone()),
            tool_version: Some(c.tool_version),
            user: c.user.clone(),
            payload: crate::audit::payload::to_value(&crate::audit::payload::Rollback {
                by: by.to_string(),
                outcome: Some(report.outcome),
                undo_request: undo_id.to_string(),
                method: plan.method.to_string(),
                path: plan.path.clone(),
                status: report.status,
                message: report.message.clone(),
            }),
            ..Default::default()
        })
        .await;
}

/// An undo needs what approving its undo tool needs, when that tool is held for approval: an
/// approver in its groups, who does not own the agent (unless the tool allows it), and as many
/// different approvers as it requires. Until enough have asked, the request is recorded and the
/// undo waits (`awaiting_approval`).
async fn approve_undo(
    app: &Gate,
    policy: &Policy,
    c: &mut Committed,
    undo_tool: &Tool,
    who: &Approver,
) -> Result<(), (Outcome, String)> {
    if undo_tool.mode != crate::policy::Mode::Approve {
        return Ok(());
    }
    let spec = &undo_tool.approval;
    if !spec.groups.is_empty() && !who.groups.iter().any(|g| spec.groups.contains(g)) {
        return Err((
            Outcome::Refused,
            format!(
                "{} is not in the groups that approve {} ({}), so may not ask for this undo",
                who.id,
                undo_tool.name,
                spec.groups.join(", ")
            ),
        ));
    }
    let owner = policy.agent(&c.agent).map(|a| a.owner.as_str());
    if !spec.allow_self_approval && owner.is_some_and(|o| o.eq_ignore_ascii_case(&who.id)) {
        return Err((
            Outcome::Refused,
            format!(
                "{} owns agent {} and may not approve the undo of its calls through {}",
                who.id, c.agent, undo_tool.name
            ),
        ));
    }
    if spec.required <= 1 {
        return Ok(());
    }
    let now = crate::base::now_ms();
    let fresh_after = now.saturating_sub(spec.expires.as_millis() as u64);
    c.undo_approvals.retain(|a| a.unix_ms >= fresh_after);
    if !c.undo_approvals.iter().any(|a| a.by == who.id) {
        c.undo_approvals.push(UndoApproval {
            by: who.id.clone(),
            unix_ms: now,
        });
    }
    let have = c.undo_approvals.len() as u32;
    if have >= spec.required {
        return Ok(());
    }
    app.store().ledger_put(c).await.map_err(|e| {
        (
            Outcome::Refused,
            format!("the store is unavailable ({e}); nothing was sent"),
        )
    })?;
    let asked: Vec<&str> = c.undo_approvals.iter().map(|a| a.by.as_str()).collect();
    Err((
        Outcome::AwaitingApproval,
        format!(
            "the undo goes through {}, which needs {} different approvers; {have} asked so far ({}). Another approver must ask for the same undo",
            undo_tool.name,
            spec.required,
            asked.join(", ")
        ),
    ))
}

/// Undoes a job's committed calls, newest first, going on past failures.
pub async fn undo_job(
    app: &Arc<Gate>,
    job: &str,
    by: &Approver,
) -> Result<Vec<Report>, StoreError> {
    let mut calls: Vec<Committed> = all(app.store())
        .await?
        .into_iter()
        .filter(|c| c.job == job && c.undoes.is_none() && (200..300).contains(&c.status))
        .collect();
    calls.reverse();
    let mut out = Vec::new();
    for c in calls {
        out.push(undo(app, &c.request_id, by).await);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_render_and_encode_path_values() {
        let ctx = json!({"response": {"id": "cus_1", "number": 7, "odd": "a/../b"}, "params": {"owner": "acme"}});
        assert_eq!(
            render("/v1/customers/{response.id}", &ctx, true).unwrap(),
            "/v1/customers/cus_1"
        );
        assert_eq!(
            render(
                "/repos/{params.owner}/x/issues/{response.number}",
                &ctx,
                true
            )
            .unwrap(),
            "/repos/acme/x/issues/7"
        );
        assert_eq!(
            render("/x/{response.odd}", &ctx, true).unwrap(),
            "/x/a%2F..%2Fb"
        );
        assert!(render("/x/{response.missing}", &ctx, true).is_err());
        let body = render_value(&json!({"n": "{response.number}", "s": "closed"}), &ctx).unwrap();
        assert_eq!(body, json!({"n": 7, "s": "closed"}));
    }

    #[test]
    fn forms_use_bracket_notation() {
        let v = json!({"a": "1", "m": {"k": "v w"}, "l": ["x", "y"]});
        assert_eq!(encode_form(&v), "a=1&l%5B0%5D=x&l%5B1%5D=y&m%5Bk%5D=v+w");
    }
}
