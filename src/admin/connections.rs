//! People's OAuth connections on the admin listener (DESIGN section 16):
//! `POST /api/connections/link` makes a one-time link for a person to connect a
//! `[[connection]]` (admins, and approvers in a group that issues some agent's tokens, as
//! `tokens issue`); `GET /connect/{token}` (the link) sends the browser to the provider with
//! state and a PKCE challenge; `GET /connect/callback` exchanges the code and stores the tokens,
//! sealed; `GET /api/connections[?user=]` lists them (never a token); `POST
//! /api/connections/revoke` and the page's `/connections` revoke one (and tell the provider).

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::auth::{self, api_error, cookie, secure, ApiError, CsrfField, Posted, Signed};
use super::html::{esc, page, refused_page};
use super::sso::admin_base;
use crate::app::Console;
use crate::policy::Approver;
use crate::services::connections::{State as ConnState, Summary, BINDING, LINK_FOR};

/// `{"user", "connection", "ttl": "15m"}`.
#[derive(Deserialize, Default)]
pub struct LinkAsk {
    #[serde(default)]
    user: String,
    #[serde(default)]
    connection: String,
    ttl: Option<String>,
}

/// `{"user", "connection"}`, or the page's form with its CSRF token.
#[derive(Deserialize, Default)]
pub struct Which {
    #[serde(default)]
    user: String,
    #[serde(default)]
    connection: String,
    #[serde(default)]
    csrf: String,
}

impl CsrfField for Which {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

#[derive(Deserialize, Default)]
pub struct ListQuery {
    user: Option<String>,
}

/// The longest a link may be asked to last.
const MAX_LINK_SECS: u64 = 7 * 24 * 3600;

/// Who may make links and revoke connections: admins, and approvers in a group that issues
/// some agent's tokens (an orchestrator connecting the people it starts jobs for).
fn may_manage(app: &Console, who: &Approver) -> Result<(), ApiError> {
    if who.is_admin() || app.policy().agents().any(|a| a.token_issuer(who)) {
        return Ok(());
    }
    Err(api_error(
        StatusCode::FORBIDDEN,
        "forbidden",
        format!(
            "people's connections are managed by group admin or an agent's token issuers; {} is neither",
            who.id
        ),
    ))
}

fn invalid(message: String) -> ApiError {
    api_error(
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_error",
        message,
    )
}

/// `POST /api/connections/link`.
pub async fn api_link(
    State(app): State<Arc<Console>>,
    auth::Approver(who): auth::Approver,
    headers: HeaderMap,
    Json(ask): Json<LinkAsk>,
) -> Response {
    if let Err(e) = may_manage(&app, &who) {
        return e.into_response();
    }
    if !crate::identity::user_id_ok(&ask.user) {
        return invalid(format!("user: {}", crate::identity::USER_ID_RULE)).into_response();
    }
    if app.policy().connection(&ask.connection).is_none() {
        let known: Vec<String> = app.policy().connections().map(|c| c.name.clone()).collect();
        let message = format!(
            "no [[connection]] is named {:?} (defined: {})",
            ask.connection,
            if known.is_empty() {
                "none".into()
            } else {
                known.join(", ")
            }
        );
        return invalid(message).into_response();
    }
    let ttl = match ask.ttl.as_deref().map(crate::base::parse_duration) {
        None => LINK_FOR,
        Some(Ok(d)) if d.as_secs() > 0 && d.as_secs() <= MAX_LINK_SECS => d,
        Some(_) => {
            return invalid("ttl: a duration such as 15m, at most 7d".into()).into_response()
        }
    };
    match app.vault().make_link(&ask.user, &ask.connection, ttl).await {
        Ok(link) => (
            StatusCode::CREATED,
            Json(json!({
                "user": ask.user, "connection": ask.connection,
                "link": format!("{}{}", admin_base(&app, &headers), link.path),
                "expires": crate::audit::rfc3339(link.expires_unix.saturating_mul(1000)),
            })),
        )
            .into_response(),
        Err(e) => auth::store_down("connection", e).into_response(),
    }
}

fn view(s: &Summary) -> serde_json::Value {
    let mut v = serde_json::to_value(s).unwrap_or_default();
    v["linked"] = json!(crate::audit::rfc3339(s.linked_unix.saturating_mul(1000)));
    v
}

/// `GET /api/connections[?user=U]`.
pub async fn api_list(
    State(app): State<Arc<Console>>,
    _: auth::Approver,
    Query(q): Query<ListQuery>,
) -> Response {
    match app.vault().list(q.user.as_deref()).await {
        Ok(all) => {
            Json(json!({"connections": all.iter().map(view).collect::<Vec<_>>()})).into_response()
        }
        Err(e) => auth::store_down("connection", e).into_response(),
    }
}

async fn revoke(
    app: &Console,
    who: &Approver,
    which: &Which,
) -> Result<serde_json::Value, ApiError> {
    may_manage(app, who)?;
    let policy = app.policy();
    let conn = policy.connection(&which.connection);
    let done = app
        .vault()
        .revoke(
            app.upstream(),
            conn.map(|c| c.as_ref()),
            &which.user,
            &which.connection,
            &who.id,
        )
        .await
        .map_err(|e| auth::store_down("connection", e))?;
    match done {
        None => Err(api_error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{} has no connection {}", which.user, which.connection),
        )),
        Some(provider) => Ok(json!({
            "user": which.user, "connection": which.connection, "revoked": true,
            "provider_refused": provider,
        })),
    }
}

/// `POST /api/connections/revoke`.
pub async fn api_revoke(
    State(app): State<Arc<Console>>,
    auth::Approver(who): auth::Approver,
    Json(which): Json<Which>,
) -> Response {
    match revoke(&app, &who, &which).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `POST /connections/revoke` (the page's form).
pub async fn page_revoke(
    State(app): State<Arc<Console>>,
    Posted {
        session: s, form, ..
    }: Posted<Signed, Which>,
) -> Response {
    match revoke(&app, &s.approver, &form).await {
        Ok(_) => Redirect::to("/connections").into_response(),
        Err(e) => refused_page(&s, e.status, &e.message, "/connections"),
    }
}

/// `GET /connections`: people's connections, with revoke buttons for those who may.
pub async fn page_list(State(app): State<Arc<Console>>, Signed(s): Signed) -> Response {
    let all = match app.vault().list(None).await {
        Ok(a) => a,
        Err(e) => return auth::store_down("connection", e).into_response(),
    };
    let may = may_manage(&app, &s.approver).is_ok();
    let csrf = esc(&s.csrf);
    let rows: String = all
        .iter()
        .map(|c| {
            let state = match &c.state {
                ConnState::Live => "live".to_string(),
                ConnState::Broken { reason } => format!("broken: {reason}"),
                ConnState::Revoked => "revoked".to_string(),
            };
            let button = match may && c.state != ConnState::Revoked {
                true => format!(
                    "<form method=\"post\" action=\"/connections/revoke\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\"><input type=\"hidden\" name=\"user\" value=\"{u}\"><input type=\"hidden\" name=\"connection\" value=\"{n}\"><button>Revoke</button></form>",
                    u = esc(&c.user),
                    n = esc(&c.connection)
                ),
                false => String::new(),
            };
            format!(
                "<tr class=\"connection\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{button}</td></tr>",
                esc(&c.user),
                esc(&c.connection),
                esc(&state),
                esc(&c.scopes.join(" ")),
            )
        })
        .collect();
    let table = match rows.is_empty() {
        true => "<p>No one has connected an account.</p>".to_string(),
        false => format!("<table id=\"connections\">{rows}</table>"),
    };
    let body = format!(
        "<h1>Connections</h1><p>The accounts people connected for agents to act with (their tokens are never shown). \
         Make a link with <code>toolgate connections link USER CONNECTION</code>.</p>{table}"
    );
    page("Connections", Some(&s), &body).into_response()
}

fn plain_page(status: StatusCode, title: &str, text: &str) -> Response {
    let body = format!(
        "<h1>{}</h1><p class=\"flash\">{}</p>",
        esc(title),
        esc(text)
    );
    (status, page(title, None, &body)).into_response()
}

/// `GET /connect/{token}`: the link, once: off to the provider.
pub async fn open(
    State(app): State<Arc<Console>>,
    Path(token): Path<String>,
    headers: HeaderMap,
) -> Response {
    let redirect_uri = format!("{}/connect/callback", admin_base(&app, &headers));
    let policy = app.policy();
    match app.vault().open_link(&policy, &token, &redirect_uri).await {
        Ok(opened) => {
            let cookie = format!(
                "{BINDING}={}; HttpOnly; SameSite=Lax; Path=/connect; Max-Age=600{}",
                opened.binding_cookie,
                secure(&app)
            );
            (
                [(header::SET_COOKIE, cookie)],
                Redirect::to(&opened.authorize),
            )
                .into_response()
        }
        Err(why) => plain_page(StatusCode::GONE, "Connect", &why),
    }
}

#[derive(Deserialize, Default)]
pub struct Callback {
    #[serde(default)]
    state: String,
    code: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

/// `GET /connect/callback`: the provider sends the browser back with a code.
pub async fn callback(
    State(app): State<Arc<Console>>,
    headers: HeaderMap,
    Query(q): Query<Callback>,
) -> Response {
    let Some(code) = q.code.as_deref() else {
        let why = format!(
            "The provider did not connect the account: {} {}",
            q.error.as_deref().unwrap_or("no code"),
            q.error_description.as_deref().unwrap_or("")
        );
        return plain_page(StatusCode::BAD_REQUEST, "Connect", &why);
    };
    let policy = app.policy();
    let binding = cookie(&headers, BINDING);
    match app
        .vault()
        .finish(app.upstream(), &policy, &q.state, code, binding)
        .await
    {
        Ok(done) => {
            let text = format!(
                "Connected: {} can now use {} through toolgate (scopes: {}). You can close this page.",
                done.user,
                done.connection,
                done.scopes.join(" ")
            );
            let clear = format!(
                "{BINDING}=; HttpOnly; SameSite=Lax; Path=/connect; Max-Age=0{}",
                secure(&app)
            );
            let keep = done.disconnect.as_deref().map(|path| {
                let url = format!("{}{path}", admin_base(&app, &headers));
                format!(
                    "<p>To disconnect later, keep this link (it is yours alone, and works once): <a id=\"disconnect\" href=\"{}\">{}</a></p>",
                    esc(&url),
                    esc(&url)
                )
            });
            let body = format!(
                "<h1 id=\"connected\">Connected</h1><p>{}</p>{}",
                esc(&text),
                keep.unwrap_or_default()
            );
            (
                [(header::SET_COOKIE, clear)],
                page("Connected", None, &body),
            )
                .into_response()
        }
        Err(why) => plain_page(StatusCode::BAD_REQUEST, "Connect", &why),
    }
}

/// `GET /connect/disconnect/{token}`: the person's own disconnect link asks before it acts (a
/// link preview or a crawler following it disconnects nothing).
pub async fn disconnect_page(
    State(app): State<Arc<Console>>,
    Path(token): Path<String>,
) -> Response {
    match app.vault().disconnect_for(&token).await {
        Ok((user, connection)) => {
            let body = format!(
                "<h1>Disconnect</h1><p>Disconnect {} from {}? Agents acting for {} will no longer be able to use it until it is connected again.</p>\
                 <form method=\"post\"><button id=\"disconnect\">Disconnect</button></form>",
                esc(&connection),
                esc(&user),
                esc(&user)
            );
            page("Disconnect", None, &body).into_response()
        }
        Err(why) => plain_page(StatusCode::GONE, "Disconnect", &why),
    }
}

/// `POST /connect/disconnect/{token}`: disconnects, once (the provider is told, as an admin's
/// revocation tells it).
pub async fn disconnect(State(app): State<Arc<Console>>, Path(token): Path<String>) -> Response {
    let policy = app.policy();
    match app
        .vault()
        .disconnect(app.upstream(), &policy, &token)
        .await
    {
        Ok((user, connection)) => {
            let text = format!("{connection} is disconnected from {user}.");
            let body = format!(
                "<h1 id=\"disconnected\">Disconnected</h1><p>{}</p>",
                esc(&text)
            );
            page("Disconnected", None, &body).into_response()
        }
        Err(why) => plain_page(StatusCode::GONE, "Disconnect", &why),
    }
}
