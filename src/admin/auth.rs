//! Who is asking, on the admin listener: approver and reviewer tokens (`Authorization: Bearer`)
//! for the API, sessions with a CSRF token for the page. Each is an axum extractor, so a handler
//! names who it serves in its signature and authentication (and, for form posts, the CSRF check)
//! happens here, once, before it runs. Siblings import this module and `html`, never each other.

use std::sync::Arc;

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::{Form, Json};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::json;

use crate::app::Console;
use crate::policy;

/// The state every admin handler and extractor reads: the admin listener's handle.
pub type AdminState = Arc<Console>;

/// An admin API error: the same JSON shape as the proxy's refusals.
pub struct ApiError {
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
pub(crate) fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
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
/// Agent tokens are not approver tokens and are refused (401); a reviewer's token too (403).
pub struct Approver(pub(crate) Arc<policy::Approver>);

impl FromRequestParts<AdminState> for Approver {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AdminState) -> Result<Self, ApiError> {
        let token = bearer(&parts.headers)?;
        let policy = app.policy();
        if let Some(a) = policy.authenticate_approver(token) {
            return Ok(Approver(a));
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
}

/// Whoever may read (an approver or a reviewer) by `Authorization: Bearer <token>`, for the API
/// calls that only read (they answer everyone alike, so who it is is not kept).
pub struct Reviewer;

impl FromRequestParts<AdminState> for Reviewer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AdminState) -> Result<Self, ApiError> {
        let token = bearer(&parts.headers)?;
        let policy = app.policy();
        policy
            .authenticate_approver(token)
            .or_else(|| policy.authenticate_reviewer(token))
            .map(|_| Reviewer)
            .ok_or_else(|| {
                api_error(
                    StatusCode::UNAUTHORIZED,
                    "auth_error",
                    "the token is not an approver's or a reviewer's token",
                )
            })
    }
}

pub(crate) const COOKIE: &str = "tg_session";

/// A session on the page: its approver or reviewer (looked up in the policy in force, so
/// removing one signs them out) and its CSRF token.
pub struct Session {
    pub(crate) approver: Arc<policy::Approver>,
    pub(crate) csrf: String,
    pub(crate) session: String,
    /// A reviewer's session (reads only).
    pub(crate) reviewer: bool,
}

fn session_id(headers: &HeaderMap) -> Option<String> {
    cookie(headers, COOKIE).map(str::to_string)
}

/// The value of the request's cookie `name`.
pub(crate) fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Whoever is signed in, approver or reviewer.
pub(crate) async fn session(app: &Console, headers: &HeaderMap) -> Option<Session> {
    let session = session_id(headers)?;
    let found = app.sessions().get(&session).await?;
    let policy = app.policy();
    let mut approver = match found.reviewer {
        true => policy.reviewer(&found.approver).cloned()?,
        false => policy.approver(&found.approver).cloned()?,
    };
    // Groups the sign-in granted (an identity provider's, mapped): the approver's own and
    // these, for this session only.
    let granted: Vec<&String> = found
        .groups
        .iter()
        .filter(|g| !approver.groups.contains(g))
        .collect();
    if !granted.is_empty() || found.via.is_some() {
        let mut with = (*approver).clone();
        with.groups.extend(granted.into_iter().cloned());
        with.signed_in_via = found.via;
        approver = Arc::new(with);
    }
    Some(Session {
        approver,
        csrf: found.csrf,
        session,
        reviewer: found.reviewer,
    })
}

/// The signed-in approver, for the page's approver views; anyone else is sent to sign in.
pub struct Signed(pub(crate) Session);

impl FromRequestParts<AdminState> for Signed {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, app: &AdminState) -> Result<Self, Response> {
        match session(app, &parts.headers).await {
            Some(s) if !s.reviewer => Ok(Signed(s)),
            _ => Err(to_login()),
        }
    }
}

/// Whoever is signed in, approver or reviewer, for the views both read; anyone else is sent to
/// sign in.
pub struct SignedReviewer(pub(crate) Session);

impl FromRequestParts<AdminState> for SignedReviewer {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, app: &AdminState) -> Result<Self, Response> {
        match session(app, &parts.headers).await {
            Some(s) => Ok(SignedReviewer(s)),
            None => Err(to_login()),
        }
    }
}

/// A reader by session or by token: what both the page's links and scripts fetch (the
/// traffic export). Without a session, the token's refusal is the answer.
pub struct SignedOrReviewer;

impl FromRequestParts<AdminState> for SignedOrReviewer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AdminState) -> Result<Self, ApiError> {
        if session(app, &parts.headers).await.is_some() {
            return Ok(SignedOrReviewer);
        }
        Reviewer::from_request_parts(parts, app).await?;
        Ok(SignedOrReviewer)
    }
}

impl From<Signed> for Session {
    fn from(s: Signed) -> Session {
        s.0
    }
}

impl From<SignedReviewer> for Session {
    fn from(s: SignedReviewer) -> Session {
        s.0
    }
}

pub(crate) fn to_login() -> Response {
    Redirect::to("/login").into_response()
}

/// A form that carries the session's CSRF token.
pub trait CsrfField {
    fn csrf(&self) -> &str;
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

impl CsrfField for CsrfForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

/// A form post from the page: the session (`S`, [`Signed`] or [`SignedReviewer`]: without one,
/// the sign-in page) and its form, whose CSRF token must be the session's (else 403).
pub struct Posted<S, F> {
    pub(crate) session: Session,
    pub(crate) form: F,
    who: std::marker::PhantomData<S>,
}

impl<S, F> FromRequest<AdminState> for Posted<S, F>
where
    S: FromRequestParts<AdminState, Rejection = Response> + Into<Session>,
    F: DeserializeOwned + CsrfField + Send,
{
    type Rejection = Response;

    async fn from_request(req: Request, app: &AdminState) -> Result<Self, Response> {
        let (mut parts, body) = req.into_parts();
        let session: Session = S::from_request_parts(&mut parts, app).await?.into();
        let req = Request::from_parts(parts, body);
        let Form(form) = Form::<F>::from_request(req, app)
            .await
            .map_err(IntoResponse::into_response)?;
        if !csrf_ok(&session, form.csrf()) {
            return Err(csrf_refused());
        }
        Ok(Posted {
            session,
            form,
            who: std::marker::PhantomData,
        })
    }
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
fn csrf_ok(s: &Session, csrf: &str) -> bool {
    use subtle::ConstantTimeEq;
    !csrf.is_empty() && bool::from(csrf.as_bytes().ct_eq(s.csrf.as_bytes()))
}

fn csrf_refused() -> Response {
    (
        StatusCode::FORBIDDEN,
        Html(
            "<p>The form's CSRF token is missing or wrong; reload the page and try again.</p>"
                .to_string(),
        ),
    )
        .into_response()
}

/// The `Set-Cookie` of a new page session.
pub(crate) fn session_cookie(app: &Console, id: &str) -> String {
    format!(
        "{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}{}",
        app.sessions().ttl().as_secs(),
        secure(app)
    )
}

/// `; Secure` when the page is reached over HTTPS: the browser then never sends the session
/// over plain HTTP.
pub(crate) fn secure(app: &Console) -> &'static str {
    match app.config().admin_https() {
        true => "; Secure",
        false => "",
    }
}
