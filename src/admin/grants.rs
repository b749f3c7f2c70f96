//! Time-bound grants on the admin listener (DESIGN section 10): `POST /api/grants`,
//! `DELETE /api/grants/{id}`, `GET /api/grants`, and the grants page (`/grants`) that lists
//! live ones, adds one and revokes one. Only group `admin` grants or revokes; nobody lends a
//! tool to an agent they own unless the tool allows self-approval.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::{self, api_error, ApiError, CsrfField, CsrfForm, Posted, Session, Signed};
use super::html::{esc, page, refused_page};
use crate::app::Console;
use crate::grants::MAX_GRANT_SECS;
use crate::model::Grant;
use crate::policy::Approver;
use crate::store::now_unix;

/// A grant asked for: `{"agent", "tool", "for": "1h", "reason"}`.
#[derive(Deserialize, Default)]
pub struct Ask {
    #[serde(default)]
    agent: String,
    #[serde(default)]
    tool: String,
    /// How long it lasts, e.g. 1h (at most 7 days).
    #[serde(default, rename = "for")]
    lasts: String,
    #[serde(default)]
    reason: String,
}

#[derive(Deserialize, Default)]
pub struct ListQuery {
    agent: Option<String>,
}

/// The page's form to add a grant (its CSRF token with the ask).
#[derive(Deserialize)]
pub struct AddForm {
    #[serde(default)]
    csrf: String,
    #[serde(flatten)]
    ask: Ask,
}

impl CsrfField for AddForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

/// The longest reason kept.
const MAX_REASON: usize = 1000;

fn store_down(e: crate::store::StoreError) -> ApiError {
    super::auth::store_down("grant", e)
}

fn admin_only(who: &Approver, what: &str) -> Result<(), ApiError> {
    if who.is_admin() {
        return Ok(());
    }
    Err(api_error(
        StatusCode::FORBIDDEN,
        "forbidden",
        format!("{what} takes an approver in group admin; {} is not", who.id),
    ))
}

fn invalid(message: String) -> ApiError {
    api_error(
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_error",
        message,
    )
}

/// The grant as the API and the CLI show it.
fn view(g: &Grant) -> Value {
    let mut v = crate::grants::facts(g);
    v["id"] = json!(g.id);
    v["agent"] = json!(g.agent);
    v["until_unix"] = json!(g.until_unix);
    v["created"] = json!(crate::audit::rfc3339(g.created_unix.saturating_mul(1000)));
    v
}

/// Checks an ask against the policy in force, stores the grant and records it.
pub(crate) async fn add(app: &Arc<Console>, who: &Approver, ask: Ask) -> Result<Grant, ApiError> {
    admin_only(who, "granting a tool")?;
    let policy = app.policy();
    let agent = policy.agent(&ask.agent).cloned().ok_or_else(|| {
        api_error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no agent {:?} in the policies in force", ask.agent),
        )
    })?;
    let tool = policy.tool(&ask.tool).cloned().ok_or_else(|| {
        api_error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!(
                "no tool {:?} in the policies in force; a grant names one tool exactly",
                ask.tool
            ),
        )
    })?;
    if agent.holds(&tool.name) {
        return Err(invalid(format!(
            "agent {} already holds {} through its tools; nothing to grant",
            agent.id, tool.name
        )));
    }
    if !tool.credentials.is_empty() && !tool.credentials.contains_key(&agent.environment) {
        return Err(invalid(format!(
            "tool {} has no credential for environment {:?}, so agent {} could not use it even with a grant",
            tool.name, agent.environment, agent.id
        )));
    }
    if agent.owner.eq_ignore_ascii_case(&who.id) && !tool.approval.allow_self_approval {
        return Err(api_error(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "{} owns agent {} and may not lend it {} (the tool does not allow self-approval); ask another admin",
                who.id, agent.id, tool.name
            ),
        ));
    }
    let secs = crate::base::lifetime_secs(&ask.lasts, MAX_GRANT_SECS).ok_or_else(|| {
        invalid(format!(
            "for {:?} must be a duration from 1s to 7d, e.g. 1h",
            ask.lasts
        ))
    })?;
    let reason = ask.reason.trim();
    if reason.is_empty() || reason.chars().count() > MAX_REASON {
        return Err(invalid(format!(
            "reason is required (at most {MAX_REASON} characters): say why the agent needs the tool"
        )));
    }
    let now = now_unix();
    let grant = Grant {
        id: crate::base::new_id("grant"),
        agent: agent.id.clone(),
        tool: tool.name.clone(),
        granted_by: who.id.clone(),
        reason: reason.to_string(),
        created_unix: now,
        until_unix: now + secs,
        ended: None,
    };
    app.store().grant_put(&grant).await.map_err(store_down)?;
    app.principals().grants_changed(&grant.agent).await;
    app.audit()
        .record(crate::audit::Record {
            kind: crate::audit::Kind::GrantAdded,
            agent: Some(grant.agent.clone()),
            owner: Some(agent.owner.clone()),
            tool: Some(grant.tool.clone()),
            payload: crate::grants::facts(&grant),
            ..Default::default()
        })
        .await;
    crate::grants::watch(app.core().clone(), &grant);
    Ok(grant)
}

/// Ends a grant now.
async fn revoke_grant(app: &Console, who: &Approver, id: &str) -> Result<Grant, ApiError> {
    admin_only(who, "revoking a grant")?;
    match crate::grants::end(app, id, crate::grants::Ending::Revoked, &who.id).await {
        Ok(Some(g)) => Ok(g),
        Ok(None) => match app.store().grant_get(id).await.map_err(store_down)? {
            Some(g) => Err(api_error(
                StatusCode::CONFLICT,
                "conflict",
                format!(
                    "grant {id} has ended already ({})",
                    g.ended.map(|e| e.how).unwrap_or_default()
                ),
            )),
            None => Err(api_error(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no grant {id}"),
            )),
        },
        Err(e) => Err(store_down(e)),
    }
}

/// Live grants, of `agent` or of all, soonest to end first.
async fn live(app: &Console, agent: Option<&str>) -> Result<Vec<Grant>, ApiError> {
    let now = now_unix();
    let mut grants = app.store().grant_open(agent).await.map_err(store_down)?;
    grants.retain(|g| g.live(now));
    grants.sort_by_key(|g| (g.until_unix, g.id.clone()));
    Ok(grants)
}

/// `POST /api/grants`.
pub async fn api_add(
    State(app): State<Arc<Console>>,
    auth::Approver(who): auth::Approver,
    Json(ask): Json<Ask>,
) -> Response {
    match add(&app, &who, ask).await {
        Ok(g) => (StatusCode::CREATED, Json(view(&g))).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `DELETE /api/grants/{id}`.
pub async fn api_revoke(
    State(app): State<Arc<Console>>,
    auth::Approver(who): auth::Approver,
    Path(id): Path<String>,
) -> Response {
    match revoke_grant(&app, &who, &id).await {
        Ok(g) => Json(json!({"id": g.id, "revoked": true})).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `GET /api/grants[?agent=ID]`: live grants.
pub async fn api_list(
    State(app): State<Arc<Console>>,
    _: auth::Approver,
    Query(q): Query<ListQuery>,
) -> Response {
    match live(&app, q.agent.as_deref()).await {
        Ok(grants) => {
            Json(json!({"grants": grants.iter().map(view).collect::<Vec<_>>()})).into_response()
        }
        Err(e) => e.into_response(),
    }
}

/// `GET /grants`: live grants with their revoke buttons, and (for admins) the form to add one.
pub async fn page_list(State(app): State<Arc<Console>>, Signed(s): Signed) -> Response {
    let grants = match live(&app, None).await {
        Ok(g) => g,
        Err(e) => return e.into_response(),
    };
    let admin = s.approver.is_admin();
    let csrf = esc(&s.csrf);
    let rows: String = grants
        .iter()
        .map(|g| {
            let revoke = match admin {
                true => format!(
                    "<form method=\"post\" action=\"/grants/{id}/revoke\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\"><button>Revoke</button></form>",
                    id = esc(&g.id)
                ),
                false => String::new(),
            };
            format!(
                "<tr class=\"grant\"><td>{agent}</td><td>{tool}</td><td>until {until}</td><td>by {by}: {reason}</td><td>{revoke}</td></tr>",
                agent = esc(&g.agent),
                tool = esc(&g.tool),
                until = super::html::when(g.until_unix),
                by = esc(&g.granted_by),
                reason = esc(&g.reason),
            )
        })
        .collect();
    let table = match rows.is_empty() {
        true => "<p>No live grants.</p>".to_string(),
        false => format!("<table id=\"grants\">{rows}</table>"),
    };
    let form = match admin {
        true => add_form(&app, &csrf),
        false => "<p>Only group admin grants or revokes.</p>".to_string(),
    };
    let body = format!(
        "<h1>Grants</h1><p>A grant lends an agent one tool its policy does not name, for a time. \
         Every other check still applies.</p>{table}{form}"
    );
    page("Grants", Some(&s), &body).into_response()
}

fn add_form(app: &Console, csrf: &str) -> String {
    let policy = app.policy();
    let mut agents: Vec<&str> = policy.agents().map(|a| a.id.as_str()).collect();
    agents.sort();
    let options = |names: &mut dyn Iterator<Item = &str>| -> String {
        names
            .map(|n| format!("<option>{}</option>", esc(n)))
            .collect()
    };
    let agents = options(&mut agents.into_iter());
    let tools = options(&mut policy.tools().iter().map(|t| t.name.as_str()));
    format!(
        "<h2>Grant a tool</h2><form method=\"post\" action=\"/grants\" class=\"card\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         <label>Agent <select name=\"agent\">{agents}</select></label> \
         <label>Tool <select name=\"tool\">{tools}</select></label> \
         <label>For <input type=\"text\" name=\"for\" value=\"1h\" style=\"width:6rem\"></label>\
         <label>Reason <input type=\"text\" name=\"reason\" required></label>\
         <button>Grant</button></form>"
    )
}

/// What a refused page action shows.
fn refused(s: &Session, e: ApiError) -> Response {
    refused_page(s, e.status, &e.message, "/grants")
}

/// `POST /grants`: the page's form.
pub async fn page_add(
    State(app): State<Arc<Console>>,
    Posted {
        session: s, form, ..
    }: Posted<Signed, AddForm>,
) -> Response {
    match add(&app, &s.approver, form.ask).await {
        Ok(_) => Redirect::to("/grants").into_response(),
        Err(e) => refused(&s, e),
    }
}

/// `POST /grants/{id}/revoke`.
pub async fn page_revoke(
    State(app): State<Arc<Console>>,
    Path(id): Path<String>,
    Posted { session: s, .. }: Posted<Signed, CsrfForm>,
) -> Response {
    match revoke_grant(&app, &s.approver, &id).await {
        Ok(_) => Redirect::to("/grants").into_response(),
        Err(e) => refused(&s, e),
    }
}
