//! The admin listener: health, and the JSON API for kill switches (the approvers' page, the
//! approval API and metrics build on it). A separate listener, never reachable through the
//! proxy, authenticated by approver tokens only.

pub mod actions;
pub mod audit;
pub mod auth;
pub mod connections;
pub mod grants;
pub mod html;
mod layers;
mod listen;
pub mod pages;
pub mod peer;
pub mod sso;
pub mod tokens;
pub mod traffic;
pub mod unmatched;

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::app::Console;
use crate::approval::{self, Action};
use crate::model::KillScope;
use crate::model::KillTarget;
use actions::{apply_switch, rollback_status};
use auth::{api_error, Approver};

/// The admin routes.
pub fn router(app: Arc<Console>) -> Router {
    // What approvers do, and their own pages: a reviewer is refused (403) before the handler.
    let acting = Router::new()
        .route("/api/tools", get(list_tools))
        .route("/api/tools/{name}/disable", post(disable_tool))
        .route("/api/tools/{name}/enable", post(enable_tool))
        .route("/api/agents", get(list_agents))
        .route("/api/agents/{id}/disable", post(disable_agent))
        .route("/api/agents/{id}/enable", post(enable_agent))
        .route("/api/agents/{id}/tokens", post(tokens::issue))
        .route("/api/tokens", get(tokens::list))
        .route("/api/tokens/{id}", axum::routing::delete(tokens::revoke))
        .route("/api/grants", get(grants::api_list).post(grants::api_add))
        .route(
            "/api/grants/{id}",
            axum::routing::delete(grants::api_revoke),
        )
        .route("/api/proposals", get(list_proposals))
        .route("/api/proposals/{id}", get(get_proposal))
        .route("/api/proposals/{id}/{action}", post(decide_proposal))
        .route("/api/rollback/{id}", post(rollback_call))
        .route("/api/jobs/{job}/rollback", post(rollback_job))
        .route("/api/replay/{id}", post(replay))
        .route("/api/audit/purge", post(crate::admin::audit::purge))
        .route("/queue", get(pages::queue))
        .route("/queue/fragment", get(pages::queue_fragment))
        .route("/proposals/{id}", get(pages::detail))
        .route("/proposals/{id}/{action}", post(pages::act))
        .route("/history", get(pages::history))
        .route("/switches", get(pages::switches))
        .route("/rollback", get(pages::rollback_list))
        .route("/rollback/{what}/{id}", post(pages::rollback_act))
        .route("/switches/{kind}/{name}/{action}", post(pages::switch))
        .route("/grants", get(grants::page_list).post(grants::page_add))
        .route("/grants/{id}/revoke", post(grants::page_revoke))
        .route("/api/connections", get(connections::api_list))
        .route("/api/connections/link", post(connections::api_link))
        .route("/api/connections/revoke", post(connections::api_revoke))
        .route("/connections", get(connections::page_list))
        .route("/connections/revoke", post(connections::page_revoke))
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            layers::refuse_reviewers,
        ));
    // What reviewers (and approvers) read.
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/api/audit/story/{id}", get(crate::admin::audit::story))
        .route("/api/audit/search", get(crate::admin::audit::search))
        .route("/api/audit/export", get(crate::admin::audit::export))
        .route("/api/audit/verify", get(crate::admin::audit::verify))
        .route("/api/traffic", get(traffic::api_list))
        .route("/api/traffic/no-contract", get(unmatched::api))
        .route("/api/traffic/{id}", get(traffic::api_detail))
        .route("/traffic", get(traffic::list_page))
        .route("/traffic/export", get(traffic::export))
        .route("/traffic/no-contract", get(unmatched::view))
        .route("/traffic/{id}", get(traffic::detail_page))
        .route("/stories/{id}", get(crate::admin::audit::story_page))
        .route("/metrics", get(crate::admin::audit::metrics))
        .route("/", get(pages::root))
        .route("/login", get(pages::login_form).post(pages::login))
        .route("/login/oidc/callback", get(sso::callback))
        .route("/connect/callback", get(connections::callback))
        .route("/connect/{token}", get(connections::open))
        .route(
            "/connect/disconnect/{token}",
            get(connections::disconnect_page).post(connections::disconnect),
        )
        .route("/login/oidc/{name}", get(sso::start))
        .route("/logout", post(pages::logout))
        .merge(acting)
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            layers::throttle_failed_auth,
        ))
        .with_state(app)
}

/// `/metrics` alone, without a token, for `--metrics-listen` (a private scrape network); over
/// TLS with the admin listener's certificate when that serves TLS.
pub async fn serve_metrics(listener: TcpListener, app: Arc<Console>) {
    let how = listen::Listening {
        tls: app.admin_tls().cloned(),
        handshake_timeout: app.config().handshake_timeout,
        cancel: app.cancel().clone(),
        what: "metrics",
        router: Router::new()
            .route("/metrics", get(crate::admin::audit::metrics_open))
            .with_state(app),
    };
    listen::serve(listener, how).await;
}

/// `ok` while the process is alive; with `?detail`, JSON with the audit sinks' state (how far
/// each is behind, its failures and last error).
async fn healthz(
    State(app): State<Arc<Console>>,
    axum::extract::Query(q): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> Response {
    if !q.contains_key("detail") {
        return "ok\n".into_response();
    }
    let head = app.audit().head().map(|(seq, _)| seq).unwrap_or(0);
    Json(json!({"status": "ok", "audit_head": head, "sinks": app.sinks().detail(head)}))
        .into_response()
}

/// Whether this toolgate can take calls now: 503 `store_unavailable` while its audit log cannot
/// be written (it refuses every call then), so a load balancer sends agents to a replica that
/// can. `/healthz` stays `ok` meanwhile: the process is alive and must not be restarted for a
/// database that is away.
async fn readyz(State(app): State<Arc<Console>>) -> Response {
    if app.audit().writable() {
        return "ready\n".into_response();
    }
    let refusal = crate::error::Refusal::store_unavailable();
    let body = json!({"error": {"code": refusal.code.as_str(), "message": refusal.message}});
    (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
}

#[derive(Debug, Default, Deserialize)]
struct StateQuery {
    state: Option<String>,
}

async fn list_proposals(
    State(app): State<Arc<Console>>,
    _: Approver,
    axum::extract::Query(q): axum::extract::Query<StateQuery>,
) -> Response {
    let state = match q.state.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => match approval::State::parse(s) {
            Some(st) => Some(st),
            None => {
                return api_error(
                    StatusCode::BAD_REQUEST,
                    "validation_error",
                    format!("state {s:?} is not one of pending, approved, committing, committed, failed, denied, expired, cancelled, revoked, outcome_unknown"),
                )
                .into_response()
            }
        },
    };
    match approval::list(&app, state).await {
        Ok(list) => Json(pages::proposals_json(&app, &list)).into_response(),
        Err(e) => api_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "internal_error",
            e.to_string(),
        )
        .into_response(),
    }
}

async fn get_proposal(
    State(app): State<Arc<Console>>,
    _: Approver,
    Path(id): Path<String>,
) -> Response {
    match approval::load(&app, &id).await {
        Ok(Some(p)) => Json(pages::proposal_json(&app, &p)).into_response(),
        Ok(None) => api_error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no proposal {id}"),
        )
        .into_response(),
        Err(e) => api_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "internal_error",
            e.to_string(),
        )
        .into_response(),
    }
}

#[derive(Debug, Default, Deserialize)]
struct Comment {
    #[serde(default)]
    comment: Option<String>,
}

async fn decide_proposal(
    State(app): State<Arc<Console>>,
    Approver(who): Approver,
    Path((id, action)): Path<(String, String)>,
    body: Option<Json<Comment>>,
) -> Response {
    let Some(action) = Action::parse(&action) else {
        return api_error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no action {action:?}; use approve, deny, revoke or cancel"),
        )
        .into_response();
    };
    let comment = body.and_then(|Json(c)| c.comment).unwrap_or_default();
    match approval::decide(app.core(), &who, &id, action, &comment).await {
        Ok(d) => {
            let mut v = pages::proposal_json(&app, &d.proposal);
            v["status_text"] = json!(d.status_text());
            Json(v).into_response()
        }
        Err(e) => api_error(e.status, e.code, e.message).into_response(),
    }
}

/// `POST /api/rollback/{id}`: undoes one committed call (a request or proposal id).
async fn rollback_call(
    State(app): State<Arc<Console>>,
    Approver(who): Approver,
    Path(id): Path<String>,
) -> Response {
    let report = crate::rollback::undo(app.gate(), &id, &who).await;
    (rollback_status(report.outcome), Json(json!(report))).into_response()
}

/// `POST /api/jobs/{job}/rollback`: undoes a job's committed calls, newest first. Answers 200
/// with a report per call; `complete` says whether everything was undone.
async fn rollback_job(
    State(app): State<Arc<Console>>,
    Approver(who): Approver,
    Path(job): Path<String>,
) -> Response {
    match crate::rollback::undo_job(app.gate(), &job, &who).await {
        Ok(reports) if reports.is_empty() => api_error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("job {job} has no committed call that succeeded"),
        )
        .into_response(),
        Ok(reports) => {
            let complete = reports
                .iter()
                .all(|r| r.ok() || r.outcome == crate::rollback::Outcome::AlreadyUndone);
            Json(json!({"job": job, "complete": complete, "results": reports})).into_response()
        }
        Err(e) => api_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            format!("the store is unavailable ({e}); nothing was sent"),
        )
        .into_response(),
    }
}

#[derive(Debug, Deserialize)]
struct ReplayBody {
    to: String,
}

/// `POST /api/replay/{id}` with `{"to": "HOST:PORT"}`: re-sends the recorded calls of a request,
/// proposal or job to a sandbox. Admins only: it sends a credential to a host named at run time.
async fn replay(
    State(app): State<Arc<Console>>,
    Approver(who): Approver,
    Path(id): Path<String>,
    body: Option<Json<ReplayBody>>,
) -> Response {
    if !who.is_admin() {
        return api_error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "replays send a sandbox credential to the host you name: only group admin may start one",
        )
        .into_response();
    }
    let Some(Json(body)) = body else {
        return api_error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "send {\"to\": \"HOST:PORT\"}, the sandbox to replay against",
        )
        .into_response();
    };
    match crate::replay::replay(app.core(), &id, &body.to, &who.id).await {
        Ok(results) => Json(json!({"id": id, "to": body.to, "results": results})).into_response(),
        Err(e) => {
            api_error(StatusCode::UNPROCESSABLE_ENTITY, "replay_refused", e.0).into_response()
        }
    }
}

#[derive(Debug, Default, Deserialize)]
struct Reason {
    #[serde(default)]
    reason: Option<String>,
}

fn kill_json(app: &Console, target: &KillTarget) -> Value {
    match app.kill().get(target) {
        Some(k) => json!({"by": k.by, "reason": k.reason, "at_unix": k.at_unix}),
        None => Value::Null,
    }
}

async fn list_tools(State(app): State<Arc<Console>>, _: Approver) -> Response {
    let policy = app.policy();
    let tools: Vec<Value> = policy
        .tools()
        .iter()
        .map(|t| {
            json!({
                "name": t.name,
                "version": t.version,
                "owner": t.owner,
                "risk": t.risk.map(|r| r.as_str()),
                "side_effects": t.side_effects.as_str(),
                "mode": t.mode.as_str(),
                "host": t.host,
                "method": t.method.as_str(),
                "path": t.path.as_str(),
                "disabled": kill_json(&app, &KillTarget::Tool(t.name.clone())),
            })
        })
        .collect();
    Json(json!({ "tools": tools })).into_response()
}

async fn list_agents(State(app): State<Arc<Console>>, _: Approver) -> Response {
    let policy = app.policy();
    let mut agents: Vec<Value> = policy
        .agents()
        .map(|a| {
            json!({
                "id": a.id,
                "owner": a.owner,
                "environment": a.environment,
                "tools": a.tools,
                "disabled": kill_json(&app, &KillTarget::Agent(a.id.clone())),
            })
        })
        .collect();
    agents.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    Json(json!({ "agents": agents })).into_response()
}

async fn switch(
    app: Arc<Console>,
    who: Arc<crate::policy::Approver>,
    scope: KillScope,
    name: String,
    disable: bool,
    reason: Option<String>,
) -> Response {
    let prefix = scope.as_str();
    match apply_switch(&app, &who, scope, &name, disable, reason).await {
        Ok(key) => Json(json!({ prefix: name, "disabled": kill_json(&app, &key) })).into_response(),
        Err(e) => e.into_response(),
    }
}

fn reason_of(body: Option<Json<Reason>>) -> Option<String> {
    body.and_then(|Json(r)| r.reason)
}

async fn disable_tool(
    State(app): State<Arc<Console>>,
    Approver(who): Approver,
    Path(name): Path<String>,
    body: Option<Json<Reason>>,
) -> Response {
    switch(app, who, KillScope::Tool, name, true, reason_of(body)).await
}

async fn enable_tool(
    State(app): State<Arc<Console>>,
    Approver(who): Approver,
    Path(name): Path<String>,
) -> Response {
    switch(app, who, KillScope::Tool, name, false, None).await
}

async fn disable_agent(
    State(app): State<Arc<Console>>,
    Approver(who): Approver,
    Path(id): Path<String>,
    body: Option<Json<Reason>>,
) -> Response {
    switch(app, who, KillScope::Agent, id, true, reason_of(body)).await
}

async fn enable_agent(
    State(app): State<Arc<Console>>,
    Approver(who): Approver,
    Path(id): Path<String>,
) -> Response {
    switch(app, who, KillScope::Agent, id, false, None).await
}

/// Serves the admin listener (over TLS with `--admin-tls-cert/-key`) until the app shuts down.
pub async fn serve(listener: TcpListener, app: Arc<Console>) {
    let how = listen::Listening {
        tls: app.admin_tls().cloned(),
        handshake_timeout: app.config().handshake_timeout,
        cancel: app.cancel().clone(),
        what: "admin",
        router: router(app),
    };
    listen::serve(listener, how).await;
}
