//! The audit log on the admin listener: the story of any request, proposal or job (JSON and a
//! page), search, export as JSON Lines, verify, purge; and `/metrics`.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::auth::{api_error as api_error_body, approver, is_signed_in};
use super::html::esc;
use crate::audit::{describe, parse_time, Filter};
use crate::App;

fn api_error(status: StatusCode, code: &'static str, message: impl Into<String>) -> Response {
    api_error_body(status, code, message).into_response()
}

/// The admin API's approver check, shared with the rest of the API.
fn authorized(app: &App, headers: &HeaderMap) -> Result<(), Box<Response>> {
    approver(app, headers)
        .map(|_| ())
        .map_err(|e| Box::new(e.into_response()))
}

pub async fn story(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(r) = authorized(&app, &headers) {
        return *r;
    }
    match app.audit.story(&id) {
        Ok(events) if events.is_empty() => api_error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no events mention {id}"),
        ),
        Ok(events) => Json(json!({"id": id, "events": events})).into_response(),
        Err(e) => api_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "internal_error",
            e.to_string(),
        ),
    }
}

pub async fn search(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Query(f): Query<Filter>,
) -> Response {
    if let Err(r) = authorized(&app, &headers) {
        return *r;
    }
    match app.audit.search(&f) {
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
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Query(q): Query<Since>,
) -> Response {
    if let Err(r) = authorized(&app, &headers) {
        return *r;
    }
    let since = match crate::audit::time_filter("since", &q.since) {
        Ok(since) => since,
        Err(why) => return api_error(StatusCode::BAD_REQUEST, "validation_error", why),
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(4);
    let audit = app.audit.clone();
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

pub async fn verify(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if let Err(r) = authorized(&app, &headers) {
        return *r;
    }
    let purges = app.audit.purges().unwrap_or_default();
    match app.audit.verify() {
        Ok(n) => Json(json!({"ok": true, "events": n, "purges": purges})).into_response(),
        Err((seq, why)) => Json(json!({"ok": false, "seq": seq, "reason": why})).into_response(),
    }
}

#[derive(Deserialize)]
pub struct Before {
    before: String,
    #[serde(default)]
    reason: String,
}

/// Purges old events: approvers in group `admin` only, never inside the retention minimum, and
/// always leaving a `purge` event.
pub async fn purge(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Json(b): Json<Before>,
) -> Response {
    let who = match approver(&app, &headers) {
        Ok(who) => who,
        Err(e) => return e.into_response(),
    };
    if !who.groups.iter().any(|g| g == "admin") {
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
    if let Err(why) = crate::audit::check_purge_cut(ms, app.config.guards.audit_retention_min) {
        return api_error(StatusCode::BAD_REQUEST, "validation_error", why);
    }
    match app.audit.purge(ms, &who.id, &b.reason).await {
        Ok(r) => Json(json!({"removed": r.removed, "from_seq": r.first_seq, "to_seq": r.last_seq}))
            .into_response(),
        Err(e) => api_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "internal_error",
            e.to_string(),
        ),
    }
}

/// The story as a page for approvers and reviewers (session sign-in, like the queue).
pub async fn story_page(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if !is_signed_in(&app, &headers).await {
        return axum::response::Redirect::to("/login").into_response();
    }
    let events = app.audit.story(&id).unwrap_or_default();
    let rows: String = events
        .iter()
        .map(|e| format!("<li><code>{}</code></li>", esc(&describe(e))))
        .collect();
    let summary: String = crate::audit::summary(&events)
        .iter()
        .map(|l| format!("<li>{}</li>", esc(l)))
        .collect();
    let body = if rows.is_empty() {
        format!("<p>No events mention {}.</p>", esc(&id))
    } else {
        format!("<ul class=\"card\">{summary}</ul><ol class=\"card\">{rows}</ol>")
    };
    Html(format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>Story of {id}</title><style>body{{font-family:system-ui,sans-serif;margin:1rem;overflow-wrap:anywhere}}li{{margin:.4rem 0}}</style></head>\
         <body><p><a href=\"/queue\">Queue</a></p><h1>Story of {id}</h1>{body}</body></html>",
        id = esc(&id)
    ))
    .into_response()
}

/// Prometheus metrics, for approvers (`Authorization: Bearer`); `--metrics-listen` serves the
/// same without a token on an address of its own.
pub async fn metrics(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if let Err(r) = authorized(&app, &headers) {
        return *r;
    }
    metrics_open(State(app)).await
}

/// Prometheus metrics, unauthenticated (the `--metrics-listen` listener only).
pub async fn metrics_open(State(app): State<Arc<App>>) -> Response {
    let mut out = app.metrics.render();
    let pending = crate::approval::list(&app, Some(crate::model::State::Pending))
        .await
        .map(|l| l.len())
        .unwrap_or(0);
    out.push_str("# HELP toolgate_pending_proposals Proposals waiting for a decision.\n# TYPE toolgate_pending_proposals gauge\n");
    out.push_str(&format!("toolgate_pending_proposals {pending}\n"));
    out.push_str("# HELP toolgate_audit_flush_seconds Duration of the last audit group-commit flush.\n# TYPE toolgate_audit_flush_seconds gauge\n");
    out.push_str(&format!(
        "toolgate_audit_flush_seconds {}\n",
        app.audit
            .last_flush_us
            .load(std::sync::atomic::Ordering::Relaxed) as f64
            / 1e6
    ));
    let (queued, peak) = app.audit.queued();
    out.push_str("# HELP toolgate_audit_queued Audit events waiting for the writer now.\n# TYPE toolgate_audit_queued gauge\n");
    out.push_str(&format!("toolgate_audit_queued {queued}\n"));
    out.push_str("# HELP toolgate_audit_queued_peak The most audit events that ever waited for the writer at once.\n# TYPE toolgate_audit_queued_peak gauge\n");
    out.push_str(&format!("toolgate_audit_queued_peak {peak}\n"));
    let size = app.store.size_on_disk();
    let alarm = u8::from(size > app.config.guards.store_alarm_bytes);
    out.push_str("# HELP toolgate_store_bytes Bytes the store takes on disk.\n# TYPE toolgate_store_bytes gauge\n");
    out.push_str(&format!("toolgate_store_bytes {size}\n"));
    out.push_str("# HELP toolgate_store_alarm 1 when the store is larger than --store-alarm.\n# TYPE toolgate_store_alarm gauge\n");
    out.push_str(&format!("toolgate_store_alarm {alarm}\n"));
    out.push_str("# HELP toolgate_buffered_body_bytes Request-body bytes buffered now.\n# TYPE toolgate_buffered_body_bytes gauge\n");
    out.push_str(&format!(
        "toolgate_buffered_body_bytes {}\n",
        app.caps.buffered_bytes()
    ));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}
