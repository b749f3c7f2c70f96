//! Sign-in to the page through the company's identity provider (an `[[identity_provider]]`
//! with `login`): `GET /login/oidc/NAME` sends the browser to the provider with state, nonce and
//! a PKCE challenge; `GET /login/oidc/callback` takes the code back, exchanges it, verifies the
//! ID token (issuer, audience = the client id, signature by the provider's keys, expiry, nonce)
//! and signs in the approver or reviewer whose id is the token's user claim, with the groups
//! the provider's `group_map` grants. Every sign-in and every refusal is an audit event naming
//! the person (when known), the provider and the client's address.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use serde_json::json;

use super::auth::{cookie, secure, session_cookie};
use super::html::{esc, page};
use super::peer::ClientIp;
use crate::app::Console;
use crate::policy::IdentityProvider;
use crate::services::oidc::{exchange, mapped_groups, Pending, PENDING_FOR};

/// The cookie binding a sign-in under way to the browser that began it.
const BINDING: &str = "tg_oidc";

/// "Sign in with NAME" for each provider with `login`, unless `--page-login token`.
pub fn buttons(app: &Console) -> String {
    if !app.config().page_login.oidc() {
        return String::new();
    }
    let policy = app.policy();
    let links: String = policy
        .login_providers()
        .map(|p| {
            format!(
                "<p><a class=\"button\" href=\"/login/oidc/{0}\">Sign in with {1}</a></p>",
                form_urlencoded::byte_serialize(p.name.as_bytes()).collect::<String>(),
                esc(&p.name)
            )
        })
        .collect();
    match links.is_empty() {
        true => String::new(),
        false => format!("<div class=\"card\" id=\"sso\">{links}</div>"),
    }
}

fn refused_page(status: StatusCode, why: &str) -> Response {
    let body = format!(
        "<h1>Sign in</h1><p class=\"flash\">{}</p><p><a href=\"/login\">Back to sign-in</a></p>",
        esc(why)
    );
    (status, page("Sign in", None, &body)).into_response()
}

/// Where the provider sends the browser back: under `--admin-url`, else the host the browser
/// asked for.
fn redirect_uri(app: &Console, headers: &HeaderMap) -> String {
    format!("{}/login/oidc/callback", admin_base(app, headers))
}

/// The admin listener's address as people reach it: `--admin-url`, else the scheme it serves
/// and the host the browser asked for.
pub(super) fn admin_base(app: &Console, headers: &HeaderMap) -> String {
    let base = app.config().admin_url.trim_end_matches('/').to_string();
    if !base.is_empty() {
        return base;
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    let scheme = if app.config().admin_https() {
        "https"
    } else {
        "http"
    };
    format!("{scheme}://{host}")
}

/// `GET /login/oidc/NAME`: off to the provider.
pub async fn start(
    State(app): State<Arc<Console>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    if !app.config().page_login.oidc() {
        return refused_page(
            StatusCode::NOT_FOUND,
            "Signing in through an identity provider is turned off here (--page-login token).",
        );
    }
    let policy = app.policy();
    let Some(provider) = policy.identity_provider_named(&name).cloned() else {
        return refused_page(
            StatusCode::NOT_FOUND,
            &format!("No identity provider is named {name:?}."),
        );
    };
    let Some(login) = provider.login.as_ref() else {
        return refused_page(
            StatusCode::NOT_FOUND,
            &format!(
                "Identity provider {name} has no login: it does not sign people in to this page."
            ),
        );
    };
    let endpoints = match app.oidc().endpoints(app.upstream(), &provider, login).await {
        Ok(e) => e,
        Err(why) => {
            tracing::warn!(provider = %name, error = %why, "the identity provider's endpoints could not be read");
            let msg = format!(
                "Identity provider {name} cannot be reached now ({why}). Try again shortly."
            );
            return refused_page(StatusCode::BAD_GATEWAY, &msg);
        }
    };
    let begun = match app
        .oidc()
        .begin(&provider, login, &endpoints, &redirect_uri(&app, &headers))
    {
        Ok(b) => b,
        Err(why) => return refused_page(StatusCode::SERVICE_UNAVAILABLE, &why),
    };
    let cookie = format!(
        "{BINDING}={}; HttpOnly; SameSite=Lax; Path=/login/oidc; Max-Age={}{}",
        begun.binding_cookie,
        PENDING_FOR.as_secs(),
        secure(&app)
    );
    (
        [(header::SET_COOKIE, cookie)],
        Redirect::to(&begun.authorize),
    )
        .into_response()
}

#[derive(Deserialize, Default)]
pub struct Callback {
    #[serde(default)]
    state: String,
    code: Option<String>,
    /// The issuer the authorization response names (RFC 9207), when the provider sends it.
    iss: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

/// Why a sign-in was refused: who (when the ID token named someone), through which provider.
struct Refused {
    status: StatusCode,
    who: Option<String>,
    provider: Option<String>,
    why: String,
}

fn refused(status: StatusCode, provider: Option<&str>, why: String) -> Refused {
    Refused {
        status,
        who: None,
        provider: provider.map(str::to_string),
        why,
    }
}

/// `GET /login/oidc/callback`: the provider sends the browser back with a code.
pub async fn callback(
    State(app): State<Arc<Console>>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    Query(q): Query<Callback>,
) -> Response {
    let result = match person(&app, &headers, &q).await {
        Ok(found) => sign_in(&app, found).await,
        Err(r) => Err(r),
    };
    match result {
        Ok((provider, who, groups, cookie)) => {
            record(
                &app,
                crate::audit::Kind::SignIn,
                Some(&who),
                Some(&provider),
                ip,
                json!({"groups": groups}),
            )
            .await;
            signed_in_page(&app, &who, &provider, &cookie)
        }
        // A callback with no sign-in under way is refused without a record: anyone can send
        // one, and the log must not fill with them.
        Err(r) if r.provider.is_none() => refused_page(r.status, &r.why),
        Err(r) => {
            let extra = json!({"reason": r.why});
            record(
                &app,
                crate::audit::Kind::SignInRefused,
                r.who.as_deref(),
                r.provider.as_deref(),
                ip,
                extra,
            )
            .await;
            refused_page(r.status, &r.why)
        }
    }
}

/// The person the provider vouches for: the sign-in under way, the code exchanged, the ID
/// token verified.
async fn person(
    app: &Console,
    headers: &HeaderMap,
    q: &Callback,
) -> Result<(Arc<IdentityProvider>, crate::policy::EndUser), Refused> {
    let pending: Pending = app
        .oidc()
        .take(&q.state, cookie(headers, BINDING))
        .ok_or_else(|| refused(StatusCode::BAD_REQUEST, None, "This sign-in is unknown, used already, expired, or was begun in another browser: sign in again.".into()))?;
    let name = pending.provider.clone();
    let at = |status, why: String| refused(status, Some(&name), why);
    if let Some(e) = &q.error {
        let said = q.error_description.as_deref().unwrap_or("");
        return Err(at(
            StatusCode::UNAUTHORIZED,
            format!("Identity provider {name} did not sign you in: {e} {said}"),
        ));
    }
    let code = q.code.as_deref().filter(|c| !c.is_empty()).ok_or_else(|| {
        at(
            StatusCode::BAD_REQUEST,
            "The identity provider sent no code back: sign in again.".into(),
        )
    })?;
    let policy = app.policy();
    let provider = policy.identity_provider_named(&name).cloned();
    let (provider, login) = match provider
        .as_ref()
        .and_then(|p| p.login.as_ref().map(|l| (p, l)))
    {
        Some((p, l)) => (p.clone(), l),
        None => {
            return Err(at(
                StatusCode::NOT_FOUND,
                format!("Identity provider {name} no longer signs people in here."),
            ))
        }
    };
    same_issuer(q, &provider).map_err(|why| at(StatusCode::BAD_REQUEST, why))?;
    let gateway = |why: String| {
        at(
            StatusCode::BAD_GATEWAY,
            format!("Identity provider {name} could not complete the sign-in: {why}"),
        )
    };
    let endpoints = app
        .oidc()
        .endpoints(app.upstream(), &provider, login)
        .await
        .map_err(gateway)?;
    let token = exchange(app.upstream(), &endpoints.token, login, code, &pending)
        .await
        .map_err(gateway)?;
    let bad = |why: String| {
        at(
            StatusCode::UNAUTHORIZED,
            format!("The ID token from {name} is refused: {why}"),
        )
    };
    let asserted = crate::identity::read_for(provider.clone(), &token).map_err(bad)?;
    let keys = app
        .jwks()
        .of(app.upstream(), &provider, asserted.kid())
        .await
        .map_err(bad)?;
    let user = asserted
        .verify_id_token(&keys, &login.client_id, &pending.nonce)
        .map_err(bad)?;
    Ok((provider, user))
}

/// A code answered by another provider than the one the sign-in went to (an IdP mix-up, seen
/// through RFC 9207's `iss`) is never sent anywhere.
fn same_issuer(q: &Callback, provider: &IdentityProvider) -> Result<(), String> {
    match q.iss.as_deref() {
        Some(iss) if iss != provider.issuer => Err(format!(
            "The answer names another issuer than identity provider {}: sign in again.",
            provider.name
        )),
        _ => Ok(()),
    }
}

/// A page session for the approver or reviewer the ID token names.
async fn sign_in(
    app: &Console,
    (provider, user): (Arc<IdentityProvider>, crate::policy::EndUser),
) -> Result<(String, String, Vec<String>, String), Refused> {
    let policy = app.policy();
    let (reviewer, bound) = match (policy.approver(&user.id), policy.reviewer(&user.id)) {
        (Some(a), _) => (false, a.sso.clone()),
        (None, Some(r)) => (true, r.sso.clone()),
        (None, None) => {
            return Err(Refused {
                status: StatusCode::FORBIDDEN,
                who: Some(user.id.clone()),
                provider: Some(provider.name.clone()),
                why: format!(
                    "{} signed in with {}, but is not an approver or a reviewer here: ask an admin to add an [[approver]] or [[reviewer]] with id = {:?}.",
                    user.id, provider.name, user.id
                ),
            })
        }
    };
    // A person is vouched for by the provider their entry names; with several providers that
    // sign people in, one must be named (else any of them could name anyone).
    let several = policy.login_providers().count() > 1;
    let allowed = match &bound {
        Some(name) => *name == provider.name,
        None => !several,
    };
    if !allowed {
        return Err(Refused {
            status: StatusCode::FORBIDDEN,
            who: Some(user.id.clone()),
            provider: Some(provider.name.clone()),
            why: format!(
                "{} may not sign in through {}: their [[approver]] or [[reviewer]] entry names {} (sso = \"NAME\"), and only that provider vouches for them.",
                user.id,
                provider.name,
                bound.as_deref().unwrap_or("no provider, and several sign people in")
            ),
        });
    }
    let groups = mapped_groups(&provider, &user.groups);
    match app
        .sessions()
        .create(
            &user.id,
            reviewer,
            (
                groups.clone(),
                Some(format!("signed in via {}", provider.name)),
            ),
        )
        .await
    {
        Ok((id, _)) => Ok((provider.name.clone(), user.id, groups, id)),
        Err(e) => {
            tracing::warn!(error = %e, "could not store a new session");
            Err(Refused {
                status: StatusCode::SERVICE_UNAVAILABLE,
                who: Some(user.id),
                provider: Some(provider.name.clone()),
                why: "Signing in is unavailable: the session store cannot be written. Try again shortly.".into(),
            })
        }
    }
}

/// The session's cookie, and a page that moves on to the queue: a page rather than a redirect,
/// so the browser sends the `SameSite=Strict` cookie on the next request (this one came from
/// the provider's site).
fn signed_in_page(app: &Console, who: &str, provider: &str, id: &str) -> Response {
    let body = format!(
        "<h1>Signed in</h1><p id=\"signed-in\">Signed in as <b>{}</b> via {}.</p><p><a href=\"/\">Continue</a></p>",
        esc(who),
        esc(provider)
    );
    let html = page("Signed in", None, &body).0.replace(
        "<head>",
        "<head><meta http-equiv=\"refresh\" content=\"0;url=/\">",
    );
    let clear = format!(
        "{BINDING}=; HttpOnly; SameSite=Lax; Path=/login/oidc; Max-Age=0{}",
        secure(app)
    );
    let mut resp = axum::response::Html(html).into_response();
    let headers = resp.headers_mut();
    for c in [session_cookie(app, id), clear] {
        if let Ok(v) = header::HeaderValue::from_str(&c) {
            headers.append(header::SET_COOKIE, v);
        }
    }
    resp
}

/// The audit event of a sign-in or a refusal.
async fn record(
    app: &Console,
    kind: crate::audit::Kind,
    who: Option<&str>,
    provider: Option<&str>,
    ip: std::net::IpAddr,
    extra: serde_json::Value,
) {
    let mut payload = json!({
        "who": who,
        "provider": provider,
        "via": provider.map(|p| format!("signed in via {p}")),
        "address": ip.to_string(),
    });
    if let (Some(m), serde_json::Value::Object(e)) = (payload.as_object_mut(), extra) {
        m.extend(e);
    }
    app.audit()
        .record(crate::audit::Record {
            kind,
            user: who.map(str::to_string),
            payload,
            ..Default::default()
        })
        .await;
}
