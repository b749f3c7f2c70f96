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

/// `Authorization: Bearer <approver token>`. Agent tokens are not approver tokens and fail here.
/// The approver behind `Authorization: Bearer <token>`, for every admin API call.
pub(crate) fn approver(app: &App, headers: &HeaderMap) -> Result<Arc<Approver>, ApiError> {
    let token = headers
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
        })?;
    app.policy().authenticate_approver(token).ok_or_else(|| {
        api_error(
            StatusCode::UNAUTHORIZED,
            "auth_error",
            "the token is not an approver's token",
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

pub(crate) async fn signed(app: &App, headers: &HeaderMap) -> Option<Signed> {
    let session = session_id(headers)?;
    let found = app.sessions.get(&session).await?;
    let approver = app.policy().approver(&found.approver).cloned()?;
    let csrf = found.csrf;
    Some(Signed {
        approver,
        csrf,
        session,
    })
}

/// True when the request carries a live session.
pub async fn is_signed_in(app: &App, headers: &HeaderMap) -> bool {
    signed(app, headers).await.is_some()
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

pub(crate) fn csrf_ok(s: &Signed, form: &CsrfForm) -> bool {
    use subtle::ConstantTimeEq;
    !form.csrf.is_empty() && bool::from(form.csrf.as_bytes().ct_eq(s.csrf.as_bytes()))
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

/// The session behind a form post whose CSRF token matches it.
pub(crate) async fn signed_form(
    app: &App,
    headers: &HeaderMap,
    form: &CsrfForm,
) -> Result<Signed, FormRefused> {
    let s = signed(app, headers).await.ok_or(FormRefused::SignIn)?;
    if !csrf_ok(&s, form) {
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
