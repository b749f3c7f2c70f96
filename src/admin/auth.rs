//! Who is asking, on the admin listener: approver tokens (`Authorization: Bearer`) for the API,
//! sessions with a CSRF token for the page. Siblings import this module and `html`, never each
//! other.

use std::sync::Arc;

use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use crate::policy::Approver;
use crate::App;

/// An admin API error: the same JSON shape as the proxy's refusals.
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    code: &'static str,
    pub(crate) message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        (self.status, Json(body)).into_response()
    }
}

pub(crate) fn api_error(
    status: StatusCode,
    code: &'static str,
    message: impl Into<String>,
) -> ApiError {
    ApiError {
        status,
        code,
        message: message.into(),
    }
}

/// The token of `Authorization: Bearer <token>`.
fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            api_error(
                StatusCode::UNAUTHORIZED,
                "auth_required",
                "send an approver token: Authorization: Bearer <token> (TOOLGATE_TOKEN for the CLI)",
            )
        })
}

/// What a reviewer is told when they try to act.
pub(crate) const READ_ONLY: &str =
    "reviewers read traffic, stories, exports and metrics; they cannot approve, switch, roll back or replay";

/// The approver behind `Authorization: Bearer <token>`, for every admin API call that acts.
/// Agent tokens are not approver tokens and fail here; a reviewer's token is refused (403).
pub(crate) fn approver(app: &App, headers: &HeaderMap) -> Result<Arc<Approver>, ApiError> {
    let token = bearer(headers)?;
    let policy = app.policy();
    if let Some(a) = policy.authenticate_approver(token) {
        return Ok(a);
    }
    if policy.authenticate_reviewer(token).is_some() {
        return Err(api_error(StatusCode::FORBIDDEN, "forbidden", READ_ONLY));
    }
    Err(api_error(
        StatusCode::UNAUTHORIZED,
        "auth_error",
        "the token is not an approver's token",
    ))
}

/// Whoever may read (an approver or a reviewer), for the API calls that only read.
pub(crate) fn reader(app: &App, headers: &HeaderMap) -> Result<Arc<Approver>, ApiError> {
    let token = bearer(headers)?;
    let policy = app.policy();
    policy
        .authenticate_approver(token)
        .or_else(|| policy.authenticate_reviewer(token))
        .ok_or_else(|| {
            api_error(
                StatusCode::UNAUTHORIZED,
                "auth_error",
                "the token is not an approver's or a reviewer's token",
            )
        })
}

pub(crate) const COOKIE: &str = "tg_session";

pub(crate) use crate::services::sessions::SESSION_TTL;

/// The signed-in approver (looked up in the policy in force, so removing one signs them out).
pub(crate) struct Signed {
    pub(crate) approver: Arc<Approver>,
    pub(crate) csrf: String,
    pub(crate) session: String,
    /// A reviewer's session (reads only).
    pub(crate) reviewer: bool,
}

pub(crate) fn session_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
}

/// The signed-in approver (a reviewer's session is not one).
pub(crate) async fn signed(app: &App, headers: &HeaderMap) -> Option<Signed> {
    signed_reader(app, headers).await.filter(|s| !s.reviewer)
}

/// Whoever is signed in, approver or reviewer.
pub(crate) async fn signed_reader(app: &App, headers: &HeaderMap) -> Option<Signed> {
    let session = session_id(headers)?;
    let found = app.sessions.get(&session).await?;
    let policy = app.policy();
    let approver = match found.reviewer {
        true => policy.reviewer(&found.approver).cloned()?,
        false => policy.approver(&found.approver).cloned()?,
    };
    Some(Signed {
        approver,
        csrf: found.csrf,
        session,
        reviewer: found.reviewer,
    })
}

/// In front of every route that acts (and the approvers' own pages): a reviewer, by session or
/// token, is refused with 403 before the handler runs.
pub(crate) async fn refuse_reviewers(
    axum::extract::State(app): axum::extract::State<Arc<App>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let headers = req.headers();
    let by_token = bearer(headers)
        .ok()
        .is_some_and(|t| app.policy().authenticate_reviewer(t).is_some());
    let by_session = match signed_reader(&app, headers).await {
        Some(s) => s.reviewer,
        None => false,
    };
    if by_token || by_session {
        if by_session && !by_token {
            let body = format!(
                "<h1>Read only</h1><p>{READ_ONLY}.</p><p><a href=\"/traffic\">Traffic</a></p>"
            );
            return (
                StatusCode::FORBIDDEN,
                super::html::page("Read only", None, &body),
            )
                .into_response();
        }
        return api_error(StatusCode::FORBIDDEN, "forbidden", READ_ONLY).into_response();
    }
    next.run(req).await
}

pub(crate) fn to_login() -> Response {
    Redirect::to("/login").into_response()
}

#[derive(Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    pub(crate) csrf: String,
    #[serde(default)]
    pub(crate) comment: String,
    #[serde(default)]
    pub(crate) reason: String,
}

/// A store that did not answer, as the admin API says it (`what`: "token", "grant").
pub(crate) fn store_down(what: &str, e: crate::store::StoreError) -> ApiError {
    api_error(
        StatusCode::SERVICE_UNAVAILABLE,
        "internal_error",
        format!("the {what} store is unavailable ({e})"),
    )
}

/// Whether a form's CSRF token is the session's.
pub(crate) fn csrf_ok(s: &Signed, csrf: &str) -> bool {
    use subtle::ConstantTimeEq;
    !csrf.is_empty() && bool::from(csrf.as_bytes().ct_eq(s.csrf.as_bytes()))
}

/// Why a form post was not accepted.
pub(crate) enum FormRefused {
    SignIn,
    Csrf,
}

impl IntoResponse for FormRefused {
    fn into_response(self) -> Response {
        match self {
            FormRefused::SignIn => to_login(),
            FormRefused::Csrf => csrf_refused(),
        }
    }
}

/// The session behind a form post whose CSRF token (`csrf`, the form's field) matches it.
pub(crate) async fn signed_form(
    app: &App,
    headers: &HeaderMap,
    csrf: &str,
) -> Result<Signed, FormRefused> {
    let s = signed(app, headers).await.ok_or(FormRefused::SignIn)?;
    if !csrf_ok(&s, csrf) {
        return Err(FormRefused::Csrf);
    }
    Ok(s)
}

pub(crate) fn csrf_refused() -> Response {
    (
        StatusCode::FORBIDDEN,
        Html(
            "<p>The form's CSRF token is missing or wrong; reload the page and try again.</p>"
                .to_string(),
        ),
    )
        .into_response()
}
