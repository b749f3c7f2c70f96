//! The audit log on the admin listener: the story of any request, proposal or job (JSON and a
//! page), search, export as JSON Lines, verify, purge; and `/metrics`.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::auth::{api_error as api_error_body, Approver, Reviewer, SignedReviewer};
use super::html::esc;
use crate::app::Console;
use crate::audit::{describe, parse_time, Filter};

fn api_error(status: StatusCode, code: &'static str, message: impl Into<String>) -> Response {
    api_error_body(status, code, message).into_response()
}

pub async fn story(
    State(app): State<Arc<Console>>,
    _: Reviewer,
    Path(id): Path<String>,
) -> Response {
    match app.audit().story(&id) {
        Ok(events) if events.is_empty() => api_error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no events mention {id}"),
        ),
        Ok(events) => Json(json!({
            "id": id,
            "summary": crate::audit::summary(&events),
            "events": events,
        }))
        .into_response(),
        Err(e) => api_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "internal_error",
            e.to_string(),
        ),
    }
}

pub async fn search(
    State(app): State<Arc<Console>>,
    _: Reviewer,
    Query(f): Query<Filter>,
) -> Response {
    match app.audit().search(&f) {
        Ok(events) => Json(json!({"events": events})).into_response(),
        Err(e) => api_error(StatusCode::BAD_REQUEST, "validation_error", e),
    }
}

#[derive(Deserialize, Default)]
pub struct Since {
    since: Option<String>,
}

/// The log as JSON Lines, streamed: read on a blocking thread a chunk at a time, so memory
/// stays flat whatever the log's size.
pub async fn export(
    State(app): State<Arc<Console>>,
    _: Reviewer,
    Query(q): Query<Since>,
) -> Response {
    let since = match crate::audit::time_filter("since", &q.since) {
        Ok(since) => since,
        Err(why) => return api_error(StatusCode::BAD_REQUEST, "validation_error", why),
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(4);
    let audit = app.audit().clone();
    tokio::task::spawn_blocking(move || export_chunks(&audit, since, &tx));
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    });
    (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        axum::body::Body::from_stream(stream),
    )
        .into_response()
}

type Chunks = tokio::sync::mpsc::Sender<Result<bytes::Bytes, std::io::Error>>;

/// Sends the events as JSON Lines in chunks of about 64 KiB; stops when the client goes.
fn export_chunks(audit: &crate::audit::Audit, since: Option<u64>, tx: &Chunks) {
    const CHUNK: usize = 64 * 1024;
    let mut buf = Vec::with_capacity(CHUNK + 4096);
    for e in audit.export(since) {
        let e = match e {
            Ok(e) => e,
            Err(e) => {
                let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
                return;
            }
        };
        if serde_json::to_writer(&mut buf, &e).is_ok() {
            buf.push(b'\n');
        }
        if buf.len() >= CHUNK
            && tx
                .blocking_send(Ok(bytes::Bytes::from(std::mem::take(&mut buf))))
                .is_err()
        {
            return;
        }
    }
    if !buf.is_empty() {
        let _ = tx.blocking_send(Ok(bytes::Bytes::from(buf)));
    }
}

pub async fn verify(State(app): State<Arc<Console>>, _: Reviewer) -> Response {
    let purges = app.audit().purges().unwrap_or_default();
    let recoveries = app.audit().recoveries().unwrap_or_default();
    match app.audit().verify() {
        Ok(n) => Json(json!({"ok": true, "events": n, "purges": purges, "recoveries": recoveries}))
            .into_response(),
        Err((seq, why)) => Json(json!({"ok": false, "seq": seq, "reason": why})).into_response(),
    }
}

#[derive(Deserialize)]
pub struct Before {
    before: String,
    #[serde(default)]
    reason: String,
    /// Purge events an audit sink has not delivered too.
    #[serde(default)]
    force: bool,
}

/// Purges old events: approvers in group `admin` only, never inside the retention minimum, and
/// always leaving a `purge` event.
pub async fn purge(
    State(app): State<Arc<Console>>,
    Approver(who): Approver,
    Json(b): Json<Before>,
) -> Response {
    if !who.is_admin() {
        return api_error(
            StatusCode::FORBIDDEN,
            "policy_violation",
            format!(
                "{} may not purge the audit log: that needs group admin",
                who.id
            ),
        );
    }
    let Some(ms) = parse_time(&b.before) else {
        return api_error(
            StatusCode::BAD_REQUEST,
            "validation_error",
            format!("before {:?} is not a time", b.before),
        );
    };
    if let Err(why) = crate::audit::check_purge_cut(ms, app.config().guards.audit_retention_min) {
        return api_error(StatusCode::BAD_REQUEST, "validation_error", why);
    }
    let delivered = match b.force {
        true => None,
        false => app.sinks().lowest_cursor(app.store()).await,
    };
    match app.audit().purge(ms, &who.id, &b.reason, delivered).await {
        Ok(r) => {
            let note = r.kept_for_sinks.then_some(
                "events an audit sink has not delivered were kept; purge with force: true to remove them anyway",
            );
            Json(json!({"removed": r.removed, "from_seq": r.first_seq, "to_seq": r.last_seq, "kept_for_sinks": r.kept_for_sinks, "note": note}))
                .into_response()
        }
        Err(e) => api_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "internal_error",
            e.to_string(),
        ),
    }
}

/// The story as a page for approvers and reviewers (session sign-in, like the queue).
pub async fn story_page(
    State(app): State<Arc<Console>>,
    SignedReviewer(who): SignedReviewer,
    Path(id): Path<String>,
) -> Response {
    let events = app.audit().story(&id).unwrap_or_default();
    let summary: String = crate::audit::summary(&events)
        .iter()
        .map(|l| format!("<li>{}</li>", esc(l)))
        .collect();
    let body = if events.is_empty() {
        format!("<h1>Story of {}</h1><p>No events mention it.</p>", esc(&id))
    } else {
        let (first, last) = (
            events.first().map(|e| e.unix_ms).unwrap_or(0),
            events.last().map(|e| e.unix_ms).unwrap_or(0),
        );
        format!(
            "<h1>Story of {}</h1><p id=\"span\">From {} to {}</p><ul class=\"card\" id=\"summary\">{summary}</ul>{}",
            esc(&id),
            super::html::when_ms(first),
            super::html::when_ms(last),
            story_blocks(&events)
        )
    };
    super::html::page(&format!("Story of {id}"), Some(&who), &body).into_response()
}

/// A story's events grouped per request (a collapsible block per call, its decision and outcome
/// in the heading), in the order the calls began; events of no request (a proposal's decisions
/// after its call, a kill switch) in blocks of their own.
fn story_blocks(events: &[crate::audit::Event]) -> String {
    let mut order: Vec<String> = Vec::new();
    let mut groups: std::collections::HashMap<String, Vec<&crate::audit::Event>> =
        std::collections::HashMap::new();
    for e in events {
        let key = e
            .request_id
            .clone()
            .or_else(|| e.proposal.clone().map(|p| format!("proposal {p}")))
            .unwrap_or_else(|| format!("event {}", e.seq));
        if !groups.contains_key(&key) {
            order.push(key.clone());
        }
        groups.entry(key).or_default().push(e);
    }
    order
        .iter()
        .map(|key| {
            let list = &groups[key];
            let owned: Vec<crate::audit::Event> = list.iter().map(|e| (*e).clone()).collect();
            let row = crate::audit::Row::of(key, &owned);
            let head = match row.method.is_empty() {
                true => esc(key),
                false => format!(
                    "{} {}{} — {} {}{}",
                    esc(&row.method),
                    esc(&row.host),
                    esc(&row.path),
                    esc(&row.decision),
                    esc(&row.code),
                    row.status.map(|s| format!(" → {s}")).unwrap_or_default()
                ),
            };
            let lines: String = list
                .iter()
                .map(|e| format!("<li><code>{}</code></li>", esc(&describe(e))))
                .collect();
            let link = match row.method.is_empty() {
                true => String::new(),
                false => format!(
                    "<p><a href=\"/traffic/{}\">The request as recorded</a></p>",
                    esc(key)
                ),
            };
            format!("<details class=\"call\" open><summary>{head}</summary><ol>{lines}</ol>{link}</details>")
        })
        .collect()
}

/// Prometheus metrics, for approvers (`Authorization: Bearer`); `--metrics-listen` serves the
/// same without a token on an address of its own.
pub async fn metrics(State(app): State<Arc<Console>>, _: Reviewer) -> Response {
    metrics_open(State(app)).await
}

/// Prometheus metrics, unauthenticated (the `--metrics-listen` listener only).
pub async fn metrics_open(State(app): State<Arc<Console>>) -> Response {
    let mut out = app.metrics().render();
    let pending = crate::approval::list(&app, Some(crate::model::State::Pending))
        .await
        .map(|l| l.len())
        .unwrap_or(0);
    out.push_str("# HELP toolgate_pending_proposals Proposals waiting for a decision.\n# TYPE toolgate_pending_proposals gauge\n");
    out.push_str(&format!("toolgate_pending_proposals {pending}\n"));
    out.push_str("# HELP toolgate_audit_flush_seconds Duration of the last audit group-commit flush.\n# TYPE toolgate_audit_flush_seconds gauge\n");
    out.push_str(&format!(
        "toolgate_audit_flush_seconds {}\n",
        app.audit()
            .last_flush_us
            .load(std::sync::atomic::Ordering::Relaxed) as f64
            / 1e6
    ));
    let (queued, peak) = app.audit().queued();
    out.push_str("# HELP toolgate_audit_queued Audit events waiting for the writer now.\n# TYPE toolgate_audit_queued gauge\n");
    out.push_str(&format!("toolgate_audit_queued {queued}\n"));
    out.push_str("# HELP toolgate_audit_queued_peak The most audit events that ever waited for the writer at once.\n# TYPE toolgate_audit_queued_peak gauge\n");
    out.push_str(&format!("toolgate_audit_queued_peak {peak}\n"));
    let writable = u8::from(app.audit().writable());
    let (failures, unrecorded) = app.audit().write_failures();
    out.push_str("# HELP toolgate_audit_writable 1 when the audit log can be written; 0 while calls are refused with store_unavailable.\n# TYPE toolgate_audit_writable gauge\n");
    out.push_str(&format!("toolgate_audit_writable {writable}\n"));
    out.push_str("# HELP toolgate_audit_write_failures_total Audit batch writes the store refused (each is kept and tried again).\n# TYPE toolgate_audit_write_failures_total counter\n");
    out.push_str(&format!("toolgate_audit_write_failures_total {failures}\n"));
    let recovered = app.audit().recoveries().map(|r| r.len()).unwrap_or(0);
    out.push_str("# HELP toolgate_audit_recoveries_total Torn tails the audit log cut off at open after a crash (each is reported by audit verify).\n# TYPE toolgate_audit_recoveries_total counter\n");
    out.push_str(&format!("toolgate_audit_recoveries_total {recovered}\n"));
    out.push_str("# HELP toolgate_audit_unrecorded_refusals_total Events of store_unavailable refusals not recorded because the audit queue was full.\n# TYPE toolgate_audit_unrecorded_refusals_total counter\n");
    out.push_str(&format!(
        "toolgate_audit_unrecorded_refusals_total {unrecorded}\n"
    ));
    let size = app.store().size_on_disk();
    // A sink far behind is as urgent as a full disk: the log is its only buffer.
    let head = app.audit().head().map(|(seq, _)| seq).unwrap_or(0);
    out.push_str(&app.sinks().render(head));
    let alarm = u8::from(size > app.config().guards.store_alarm_bytes || app.sinks().alarm(head));
    out.push_str("# HELP toolgate_store_bytes Bytes the store takes on disk.\n# TYPE toolgate_store_bytes gauge\n");
    out.push_str(&format!("toolgate_store_bytes {size}\n"));
    out.push_str("# HELP toolgate_store_alarm 1 when the store is larger than --store-alarm, or an audit sink is further behind than --audit-sink-max-lag.\n# TYPE toolgate_store_alarm gauge\n");
    out.push_str(&format!("toolgate_store_alarm {alarm}\n"));
    out.push_str("# HELP toolgate_buffered_body_bytes Request-body bytes buffered now.\n# TYPE toolgate_buffered_body_bytes gauge\n");
    out.push_str(&format!(
        "toolgate_buffered_body_bytes {}\n",
        app.gate().caps().buffered_bytes()
    ));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}
