//! Captured traffic for security reviewers (and approvers): `/traffic` (the list, filtered and
//! paged), `/traffic/{request_id}` (one request as a reviewer reads it), `/traffic/export` (the
//! list's rows as JSON Lines), and the same in `GET /api/traffic` and `GET /api/traffic/{id}`.
//! Everything an agent sent is escaped before it is written into a page. The "Refused: no
//! contract" view is in `unmatched.rs`.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::auth::{api_error, Reviewer, Session, SignedOrReviewer, SignedReviewer};
use super::html::{esc, page, when_ms};
use crate::app::Console;
use crate::audit::payload::Asked;
use crate::audit::{describe, Event, Kind, Payload, Row, TrafficFilter};

/// The most rows an export writes.
const EXPORT_ROWS: usize = 100_000;

/// Reads off a blocking thread (the audit log's readers block).
pub(super) async fn blocking<T: Send + 'static>(
    app: &Arc<Console>,
    f: impl FnOnce(&crate::audit::Audit) -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    let audit = app.audit().clone();
    tokio::task::spawn_blocking(move || f(&audit))
        .await
        .map_err(|e| format!("the audit read stopped: {e}"))?
}

/// What the agent came in with: an issued token (by id) or not, and a grant if one lent the tool.
fn credential_text(row: &Row) -> String {
    let token = match row.token.as_str() {
        "" => "no issued token (its static token or its source network)".to_string(),
        id => format!("issued token {id}"),
    };
    match row.grant.as_str() {
        "" => token,
        g => format!("{token}; the tool lent by grant {g}"),
    }
}

/// A path segment for a link: percent-encoded, so an id an agent chose stays one segment.
fn seg(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `GET /api/traffic?…`: a page of rows and the next cursor.
pub async fn api_list(
    State(app): State<Arc<Console>>,
    _: Reviewer,
    Query(f): Query<TrafficFilter>,
) -> Response {
    match blocking(&app, move |a| a.traffic(&f)).await {
        Ok(page) => Json(page).into_response(),
        Err(why) => api_error(StatusCode::BAD_REQUEST, "validation_error", why).into_response(),
    }
}

/// `GET /api/traffic/{id}`: one request's row, its events, and its proposal's.
pub async fn api_detail(
    State(app): State<Arc<Console>>,
    _: Reviewer,
    Path(id): Path<String>,
) -> Response {
    match one(&app, &id).await.ok().flatten() {
        Some((row, events, proposal)) => {
            Json(json!({"request": row, "events": events, "proposal_events": proposal}))
                .into_response()
        }
        None => api_error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no request {id} in the audit log"),
        )
        .into_response(),
    }
}

/// A request's row, its events, and the events of its proposal (approvals, decisions).
async fn one(app: &Arc<Console>, id: &str) -> Result<Option<Detail>, String> {
    let id = id.to_string();
    blocking(app, move |a| {
        let events = a.request_events(&id).map_err(|e| e.to_string())?;
        if events.is_empty() {
            return Ok(None);
        }
        let row = Row::of(&id, &events);
        let proposal = match row.proposal.as_str() {
            "" => Vec::new(),
            p => a
                .story(p)
                .unwrap_or_default()
                .into_iter()
                .filter(|e| e.proposal.as_deref() == Some(p))
                .collect(),
        };
        Ok(Some((row, events, proposal)))
    })
    .await
}

/// A request's row, its events, and its proposal's events.
type Detail = (Row, Vec<Event>, Vec<Event>);

/// `/traffic/export?…` and the page's export link: every row the filters select, as JSON
/// Lines (a session or a reader's token).
pub async fn export(
    State(app): State<Arc<Console>>,
    _: SignedOrReviewer,
    Query(f): Query<TrafficFilter>,
) -> Response {
    let rows = blocking(&app, move |a| {
        let mut out = String::new();
        let mut f = f;
        let mut written = 0;
        loop {
            let page = a.traffic(&f)?;
            for row in &page.requests {
                out.push_str(&serde_json::to_string(row).unwrap_or_default());
                out.push('\n');
                written += 1;
            }
            match page.next_cursor {
                Some(c) if written < EXPORT_ROWS => f.cursor = Some(c),
                _ => return Ok::<_, String>(out),
            }
        }
    })
    .await;
    match rows {
        Ok(text) => ([(header::CONTENT_TYPE, "application/x-ndjson")], text).into_response(),
        Err(why) => api_error(StatusCode::BAD_REQUEST, "validation_error", why).into_response(),
    }
}

/// `/traffic`: the filter form, a page of rows, the next page's link and the export link.
pub async fn list_page(
    State(app): State<Arc<Console>>,
    SignedReviewer(s): SignedReviewer,
    Query(f): Query<TrafficFilter>,
) -> Response {
    let filter = f.clone();
    let page_rows = blocking(&app, move |a| a.traffic(&filter)).await;
    let (rows, next) = match page_rows {
        Ok(p) => (p.requests, p.next_cursor),
        Err(why) => {
            let body = format!("{}<p class=\"flash\">{}</p>", form(&f), esc(&why));
            return (StatusCode::BAD_REQUEST, page("Traffic", Some(&s), &body)).into_response();
        }
    };
    let query = f.query();
    let table: String = rows.iter().map(row_html).collect();
    let table = match table.is_empty() {
        true => "<p id=\"empty\">No captured request matches.</p>".to_string(),
        false => format!(
            "<table id=\"traffic\"><thead><tr><th>Time</th><th>Agent</th><th>Request</th><th>Tool</th>\
             <th>Decision</th><th>Status</th><th>Latency</th></tr></thead><tbody>{table}</tbody></table>"
        ),
    };
    let amp = if query.is_empty() { "" } else { "&" };
    let next = next
        .map(|c| {
            format!(
                "<p><a id=\"older\" href=\"/traffic?{}{amp}cursor={}\">Older requests →</a></p>",
                esc(&query),
                esc(&c)
            )
        })
        .unwrap_or_default();
    let body = format!(
        "<h1>Traffic</h1>{}<p><a id=\"export\" href=\"/traffic/export?{}\">Export these as JSON Lines</a> · <a id=\"no-contract\" href=\"/traffic/no-contract\">Refused: no contract</a> (calls no contract matched, with drafted contracts)</p>{table}{next}",
        form(&f),
        esc(&query)
    );
    page("Traffic", Some(&s), &body).into_response()
}

/// The filter form, filled with the filters in force.
fn form(f: &TrafficFilter) -> String {
    let field = |name: &str, label: &str, v: &Option<String>| {
        format!(
            "<label>{label} <input type=\"text\" name=\"{name}\" value=\"{}\"></label>",
            esc(v.as_deref().unwrap_or(""))
        )
    };
    format!(
        "<form method=\"get\" action=\"/traffic\" class=\"card filters\">{}{}{}{}{}{}{}{}{}{}{}<button>Filter</button></form>",
        field("agent", "Agent", &f.agent),
        field("tool", "Tool", &f.tool),
        field("host", "Host", &f.host),
        field("code", "Decision or code", &f.code),
        field("status", "Status", &f.status),
        field("job", "Job", &f.job),
        field("token", "Token id", &f.token),
        field("user", "For (person)", &f.user),
        field("since", "Since", &f.since),
        field("until", "Until", &f.until),
        field("q", "Path contains", &f.q),
    )
}

fn decision_text(r: &Row) -> String {
    match r.code.as_str() {
        "" => r.decision.clone(),
        code => format!("{} {code}", r.decision),
    }
}

/// "bot-staging for alice@example.com", or the agent alone.
fn for_whom(agent: &str, user: &str) -> String {
    match user {
        "" => agent.to_string(),
        u => format!("{agent} for {u}"),
    }
}

fn row_html(r: &Row) -> String {
    format!(
        "<tr class=\"request\"><td>{time}</td><td>{agent}</td>\
         <td><a href=\"/traffic/{link}\">{method} {host}{path}</a></td><td>{tool}</td>\
         <td class=\"decision\">{decision}</td><td>{status}</td><td>{latency}</td></tr>",
        time = when_ms(r.unix_ms),
        agent = esc(&for_whom(&r.agent, &r.user)),
        link = seg(&r.request_id),
        method = esc(&r.method),
        host = esc(&r.host),
        path = esc(&r.path),
        tool = esc(&r.tool),
        decision = esc(&decision_text(r)),
        status = r.status.map(|s| s.to_string()).unwrap_or_default(),
        latency = r.latency_ms.map(|l| format!("{l} ms")).unwrap_or_default(),
    )
}

/// `/traffic/{request_id}`: who, what, the decision and the policy behind it, the proposal and
/// its approvals, what came back, and links to the story, the job and the undo.
pub async fn detail_page(
    State(app): State<Arc<Console>>,
    SignedReviewer(s): SignedReviewer,
    Path(id): Path<String>,
) -> Response {
    let Some((row, events, proposal)) = one(&app, &id).await.ok().flatten() else {
        let body = format!(
            "<h1>Not found</h1><p>No request {} in the audit log.</p>",
            esc(&id)
        );
        return (StatusCode::NOT_FOUND, page("Not found", Some(&s), &body)).into_response();
    };
    // A model call's answer may have led to calls: each links back here.
    let led: Vec<String> = app
        .audit()
        .search(&crate::audit::Filter {
            model_request: Some(id.clone()),
            kind: Some("request".into()),
            ..Default::default()
        })
        .unwrap_or_default()
        .into_iter()
        .filter_map(|e| e.request_id)
        .collect();
    let template = app.config().trace_url_template.as_deref();
    let body = detail_html(&row, &events, &proposal, &s, template) + &led_html(&led);
    page(&format!("Request {id}"), Some(&s), &body).into_response()
}

/// A link to the request's trace (`--trace-url-template` with `{trace_id}` and
/// `{request_id}`), when it has one.
fn trace_link(template: Option<&str>, asked: &Asked, request_id: &str) -> String {
    match (template, &asked.trace_id) {
        (Some(t), Some(trace)) => {
            let url = t
                .replace("{trace_id}", trace)
                .replace("{request_id}", request_id);
            format!(" <a id=\"trace\" href=\"{}\">Its trace</a>", esc(&url))
        }
        _ => String::new(),
    }
}

fn detail_html(
    row: &Row,
    events: &[Event],
    proposal: &[Event],
    s: &Session,
    trace_url: Option<&str>,
) -> String {
    let asked: Box<Asked> = (events.iter())
        .find_map(|e| match e.body() {
            Payload::Request(r) => Some(r),
            _ => None,
        })
        .unwrap_or_default();
    let lines: String = events
        .iter()
        .map(|e| format!("<li><code>{}</code></li>", esc(&describe(e))))
        .collect();
    let undo = match (s.reviewer, row.decision.as_str()) {
        (false, "allowed" | "held") => format!(
            "<a href=\"/rollback\">Undo (approvers: the roll back page lists {})</a>",
            esc(&row.request_id)
        ),
        _ => String::new(),
    };
    format!(
        "<h1>{method} {host}{path}</h1>\
         <div class=\"card\"><table>\
         <tr><th>Who</th><td id=\"who\">{agent} (owner {owner}) from {peer}</td></tr>\
         <tr><th>Token</th><td id=\"token\">{token}</td></tr>\
         <tr><th>When</th><td>{time}</td></tr>\
         <tr><th>Tool</th><td>{tool}{version}</td></tr>\
         <tr><th>Decision</th><td id=\"decision\">{decision}</td></tr>\
         <tr><th>Why</th><td id=\"why\">{message}</td></tr>{model}\
         <tr><th>Answer</th><td>{status}{latency}</td></tr>\
         <tr><th>Job</th><td><a href=\"/stories/{job_q}\">{job}</a></td></tr></table></div>\
         <h2>As recorded</h2><pre id=\"recorded\">{recorded}</pre>\
         {proposal_html}<h2>Events</h2><ol class=\"card\">{lines}</ol>\
         <p><a href=\"/stories/{id_q}\">The story of this request</a>{trace} {undo}</p>",
        trace = trace_link(trace_url, &asked, &row.request_id),
        method = esc(&row.method),
        host = esc(&row.host),
        path = esc(&row.path),
        agent = esc(&for_whom(&row.agent, &row.user)),
        owner = esc(&row.owner),
        peer = esc(Some(asked.peer.as_str())
            .filter(|p| !p.is_empty())
            .unwrap_or("-")),
        token = esc(&credential_text(row)),
        time = when_ms(row.unix_ms),
        tool = esc(&row.tool),
        version = row
            .tool_version
            .map(|v| format!(" v{v}"))
            .unwrap_or_default(),
        decision = esc(&decision_text(row)),
        message = esc(&row.message),
        status = row
            .status
            .map(|s| s.to_string())
            .unwrap_or_else(|| "-".into()),
        latency = row
            .latency_ms
            .map(|l| format!(" in {l} ms"))
            .unwrap_or_default(),
        job = esc(&row.job),
        job_q = seg(&row.job),
        recorded = recorded_html(row, &asked, events),
        proposal_html = proposal_html(row, proposal),
        id_q = seg(&row.request_id),
        model = model_row(&asked),
    )
}

/// Which model answer asked for the call, linked to the model call's own page.
fn model_row(asked: &Asked) -> String {
    let Some(by) = &asked.requested_by else {
        return String::new();
    };
    let text = match by["match"].as_str() {
        Some("none") => "no model answer asked for this call".to_string(),
        Some("ambiguous") => {
            "more than one model answer could have asked for it (see the story)".into()
        }
        _ => {
            let m = by["model_request"].as_str().unwrap_or("");
            return format!(
                "<tr><th>Asked by</th><td id=\"asked-by\">{} in answer {} (<a href=\"/traffic/{}\">{}</a>; matched {})</td></tr>",
                esc(by["model"].as_str().unwrap_or("a model")),
                esc(by["answer_id"].as_str().unwrap_or("?")),
                seg(m),
                esc(m),
                esc(by["match"].as_str().unwrap_or("?")),
            );
        }
    };
    format!(
        "<tr><th>Asked by</th><td id=\"asked-by\">{}</td></tr>",
        esc(&text)
    )
}

/// The calls a model call's answer led to, linked.
fn led_html(led: &[String]) -> String {
    if led.is_empty() {
        return String::new();
    }
    let items: String = led
        .iter()
        .map(|r| format!("<li><a href=\"/traffic/{}\">{}</a></li>", seg(r), esc(r)))
        .collect();
    format!("<h2>Calls this answer led to</h2><ul class=\"card\" id=\"led\">{items}</ul>")
}

/// The request as recorded (`request`, the payload of its request event): the request line,
/// the headers, and the body the first event with one holds, all escaped.
fn recorded_html(row: &Row, request: &Asked, events: &[Event]) -> String {
    let headers: String = (request.headers.as_object())
        .map(|h| {
            h.iter()
                .map(|(k, v)| {
                    format!(
                        "{}: {}\n",
                        esc(k),
                        esc(v.as_str().unwrap_or(&v.to_string()))
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let body = events
        .iter()
        .find_map(|e| {
            let b = &e.payload["body"];
            (!b.is_null()).then(|| serde_json::to_string_pretty(b).unwrap_or_default())
        })
        .unwrap_or_default();
    let query = match request.query.as_str() {
        "" => String::new(),
        q => format!("?{}", esc(q)),
    };
    format!(
        "{} {}{}{query}\n{headers}\n{}",
        esc(&row.method),
        esc(&row.host),
        esc(&row.path),
        esc(&body)
    )
}

/// The request's proposal and its decisions (approvals, denials, …), when it was held.
fn proposal_html(row: &Row, proposal: &[Event]) -> String {
    let decided: String = proposal
        .iter()
        .filter(|e| e.kind.is_approval_act() || e.kind == Kind::Expiry)
        .map(|e| format!("<li class=\"approval\">{}</li>", esc(&describe(e))))
        .collect();
    match row.proposal.as_str() {
        "" => String::new(),
        pid => format!(
            "<h2>Proposal</h2><div class=\"card\"><p>{pid} — {summary}</p><ul>{decided}</ul></div>",
            pid = esc(pid),
            summary = esc(&row.message),
        ),
    }
}
