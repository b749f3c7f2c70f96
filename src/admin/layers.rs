//! The layers in front of the admin routes: failed authentication throttled per address, and
//! reviewers refused on every route that acts (before the handler's own extractor runs).

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tracing::warn;

use super::auth::{api_error, bearer, session, AdminState, READ_ONLY};
use super::peer::ClientIp;

/// In front of every route that acts (and the approvers' own pages): a reviewer, by session or
/// token, is refused with 403 before the handler runs.
pub(crate) async fn refuse_reviewers(
    State(app): State<AdminState>,
    req: Request,
    next: Next,
) -> Response {
    let headers = req.headers();
    let by_token = bearer(headers)
        .ok()
        .is_some_and(|t| app.policy().authenticate_reviewer(t).is_some());
    let by_session = match session(&app, headers).await {
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

/// Failed sign-ins and failed Bearer checks are counted per source address (the client a
/// trusted proxy names, see `peer`); past `auth_failures_per_minute` the address gets
/// `429 rate_limited` until its minute is over.
pub(crate) async fn throttle_failed_auth(
    State(app): State<AdminState>,
    ClientIp(ip): ClientIp,
    req: Request,
    next: Next,
) -> Response {
    const WHAT: &str = "admin_auth";
    let max = app.config().guards.auth_failures_per_minute;
    if let Some(secs) = app.sources().blocked(ip, WHAT, max) {
        let mut resp = api_error(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("too many failed sign-ins from {ip}; retry after {secs}s"),
        )
        .into_response();
        if let Ok(v) = axum::http::HeaderValue::from_str(&secs.to_string()) {
            resp.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, v);
        }
        return resp;
    }
    let resp = next.run(req).await;
    if resp.status() == StatusCode::UNAUTHORIZED {
        let (n, _) = app.sources().count(ip, WHAT);
        if n == max {
            warn!(peer = %ip, failures = n, "failed admin sign-ins: this address is refused for the rest of the minute");
        }
    }
    resp
}
