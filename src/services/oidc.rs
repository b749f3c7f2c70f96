//! The page's sign-in through an identity provider's `login` (OIDC authorization code flow with
//! PKCE): the provider's endpoints (given, or read from its
//! `/.well-known/openid-configuration` through the upstream client and cached), the sign-ins
//! under way (state, nonce and PKCE verifier kept here, one-time, short-lived, bound to a
//! cookie of the browser that began them), and the code's exchange for an ID token at the
//! token endpoint (`client_secret_basic`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use http::{header, Method, Request};
use http_body_util::BodyExt;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::base::body::full;
use crate::policy::identity_def::https_url;
use crate::policy::{HttpsUrl, IdentityProvider, Login, LoginEndpoints};
use crate::upstream::Upstream;

/// How long a sign-in may take between leaving for the provider and coming back.
pub const PENDING_FOR: Duration = Duration::from_secs(600);
/// Sign-ins under way at most: more are refused until some end.
const MAX_PENDING: usize = 10_000;
/// How long a provider's discovered endpoints are used before they are read again.
const DISCOVERY_FRESH_FOR: Duration = Duration::from_secs(3600);
/// The largest discovery document or token answer read.
const MAX_ANSWER: usize = 256 * 1024;

/// A sign-in under way: what the browser that began it must come back with.
pub struct Pending {
    /// The provider's name.
    pub provider: String,
    pub nonce: String,
    pub verifier: String,
    pub redirect_uri: String,
    /// The sha256 of the cookie set on the browser that began it.
    binding: [u8; 32],
    began: Instant,
}

/// Where a sign-in sends the browser, and what the browser keeps.
pub struct Begun {
    pub authorize: String,
    pub binding_cookie: String,
}

#[derive(Default)]
pub struct Oidc {
    pending: Mutex<HashMap<String, Pending>>,
    discovered: Mutex<HashMap<String, (LoginEndpoints, Instant)>>,
}

/// Bytes as unpadded URL-safe base64 (PKCE challenges, states, one-time tokens).
pub(crate) fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// 32 random bytes as unpadded URL-safe base64: a state, a PKCE verifier, a one-time token.
pub(crate) fn random() -> String {
    b64(&rand::random::<[u8; 32]>())
}

impl Oidc {
    /// Begins a sign-in at `provider` whose code comes back to `redirect_uri`: the
    /// authorization URL (with state, nonce and the S256 PKCE challenge) and the cookie that
    /// binds the sign-in to this browser.
    pub fn begin(
        &self,
        provider: &IdentityProvider,
        login: &Login,
        endpoints: &LoginEndpoints,
        redirect_uri: &str,
    ) -> Result<Begun, String> {
        let (state, nonce, verifier, binding) = (random(), random(), random(), random());
        let challenge = b64(&Sha256::digest(verifier.as_bytes()));
        let mut pending = self.lock_pending();
        pending.retain(|_, p| p.began.elapsed() < PENDING_FOR);
        if pending.len() >= MAX_PENDING {
            return Err("too many sign-ins are under way; try again in a few minutes".into());
        }
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("response_type", "code")
            .append_pair("client_id", &login.client_id)
            .append_pair("redirect_uri", redirect_uri)
            .append_pair("scope", &login.scopes.join(" "))
            .append_pair("state", &state)
            .append_pair("nonce", &nonce)
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256")
            .finish();
        let sep = if endpoints.authorize_url.contains('?') {
            '&'
        } else {
            '?'
        };
        pending.insert(
            state,
            Pending {
                provider: provider.name.clone(),
                nonce,
                verifier,
                redirect_uri: redirect_uri.to_string(),
                binding: Sha256::digest(binding.as_bytes()).into(),
                began: Instant::now(),
            },
        );
        Ok(Begun {
            authorize: format!("{}{sep}{query}", endpoints.authorize_url),
            binding_cookie: binding,
        })
    }

    /// The sign-in `state` names, once: only for the browser holding its cookie, and only
    /// within [`PENDING_FOR`].
    pub fn take(&self, state: &str, binding_cookie: Option<&str>) -> Option<Pending> {
        use subtle::ConstantTimeEq;
        let mut pending = self.lock_pending();
        let p = pending.get(state)?;
        let hash: [u8; 32] = Sha256::digest(binding_cookie?.as_bytes()).into();
        if !bool::from(hash.ct_eq(&p.binding)) {
            return None;
        }
        let p = pending.remove(state)?;
        (p.began.elapsed() < PENDING_FOR).then_some(p)
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, HashMap<String, Pending>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The provider's authorization and token endpoints: as `login` gives them, or read from
    /// its discovery document (cached for [`DISCOVERY_FRESH_FOR`]).
    pub async fn endpoints(
        &self,
        upstream: &Upstream,
        provider: &IdentityProvider,
        login: &Login,
    ) -> Result<LoginEndpoints, String> {
        if let Some(e) = &login.endpoints {
            return Ok(e.clone());
        }
        let cached = {
            let map = self.discovered.lock().unwrap_or_else(|p| p.into_inner());
            map.get(&provider.issuer)
                .filter(|(_, at)| at.elapsed() < DISCOVERY_FRESH_FOR)
                .map(|(e, _)| e.clone())
        };
        if let Some(e) = cached {
            return Ok(e);
        }
        let found = discover(upstream, &provider.issuer).await?;
        self.discovered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(provider.issuer.clone(), (found.clone(), Instant::now()));
        Ok(found)
    }
}

/// Reads the issuer's `/.well-known/openid-configuration`: its issuer must be the provider's.
async fn discover(upstream: &Upstream, issuer: &str) -> Result<LoginEndpoints, String> {
    let url = format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    );
    let at = https_url("the issuer's discovery document", &url)?;
    let doc = send(upstream, &at, Method::GET, None, Bytes::new()).await?;
    if doc["issuer"].as_str() != Some(issuer) {
        return Err(format!(
            "{url} names issuer {}, not {issuer:?}",
            doc["issuer"]
        ));
    }
    let field = |name: &str| {
        doc[name]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| format!("{url} has no {name}"))
    };
    let authorize_url = field("authorization_endpoint")?;
    https_url("authorization_endpoint", &authorize_url)?;
    Ok(LoginEndpoints {
        authorize_url,
        token: https_url("token_endpoint", &field("token_endpoint")?)?,
    })
}

/// Exchanges `code` at the token endpoint (`client_secret_basic`, with the PKCE verifier) for
/// the ID token.
pub async fn exchange(
    upstream: &Upstream,
    token: &HttpsUrl,
    login: &Login,
    code: &str,
    pending: &Pending,
) -> Result<String, String> {
    let body = form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", "authorization_code")
        .append_pair("code", code)
        .append_pair("redirect_uri", &pending.redirect_uri)
        .append_pair("code_verifier", &pending.verifier)
        .finish();
    let answer = token_request(
        upstream,
        token,
        &login.client_id,
        &login.client_secret,
        body,
    )
    .await
    .map_err(|f| f.message)?;
    answer["id_token"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| "the token endpoint's answer has no id_token".into())
}

/// Why a token endpoint gave no token: its OAuth `error` code when it answered with one, and
/// a message naming the endpoint, its status, `error` and `error_description` (never the
/// request, which held secrets).
#[derive(Debug)]
pub struct TokenFailure {
    pub error: Option<String>,
    pub message: String,
}

/// POSTs the form `body` to an OAuth endpoint (token, revocation) with `client_secret_basic`
/// and reads its JSON answer (an empty successful answer reads as null).
pub async fn token_request(
    upstream: &Upstream,
    at: &HttpsUrl,
    client_id: &str,
    secret: &crate::policy::ClientSecret,
    body: String,
) -> Result<Value, TokenFailure> {
    // RFC 6749 2.3.1: the id and secret form-encoded, then joined and base64'd.
    let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let basic = base64::engine::general_purpose::STANDARD.encode(format!(
        "{}:{}",
        enc(client_id),
        enc(&secret.0)
    ));
    send_detailed(
        upstream,
        at,
        Method::POST,
        Some(format!("Basic {basic}")),
        Bytes::from(body),
    )
    .await
}

/// [`token_request`] with the client's id and secret in the form (`client_secret_post`), for
/// providers that take no Basic authentication (GitHub's OAuth apps).
pub async fn token_request_in_body(
    upstream: &Upstream,
    at: &HttpsUrl,
    client_id: &str,
    secret: &crate::policy::ClientSecret,
    body: String,
) -> Result<Value, TokenFailure> {
    let form = form_urlencoded::Serializer::new(body)
        .append_pair("client_id", client_id)
        .append_pair("client_secret", &secret.0)
        .finish();
    send_detailed(upstream, at, Method::POST, None, Bytes::from(form)).await
}

/// Sends one request through the upstream client and reads its JSON answer.
async fn send(
    upstream: &Upstream,
    at: &HttpsUrl,
    method: Method,
    authorization: Option<String>,
    body: Bytes,
) -> Result<Value, String> {
    send_detailed(upstream, at, method, authorization, body)
        .await
        .map_err(|f| f.message)
}

fn failure(message: String) -> TokenFailure {
    TokenFailure {
        error: None,
        message,
    }
}

/// [`send`], saying which OAuth error the endpoint answered with.
async fn send_detailed(
    upstream: &Upstream,
    at: &HttpsUrl,
    method: Method,
    authorization: Option<String>,
    body: Bytes,
) -> Result<Value, TokenFailure> {
    let form = !body.is_empty();
    let mut req = Request::new(full(body));
    *req.method_mut() = method;
    *req.uri_mut() = at
        .path
        .parse()
        .map_err(|_| failure("a bad path".to_string()))?;
    let headers = req.headers_mut();
    headers.insert(
        header::ACCEPT,
        http::HeaderValue::from_static("application/json"),
    );
    if form {
        headers.insert(
            header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
    }
    if let Some(a) = authorization {
        let mut value = http::HeaderValue::from_str(&a)
            .map_err(|_| failure("a bad client secret".to_string()))?;
        value.set_sensitive(true);
        headers.insert(header::AUTHORIZATION, value);
    }
    let resp = upstream
        .forward(&at.host, at.port, req)
        .await
        .map_err(|f| failure(f.refusal.message))?;
    let status = resp.status();
    let bytes = http_body_util::Limited::new(resp.into_body(), MAX_ANSWER)
        .collect()
        .await
        .map_err(|e| failure(format!("its answer could not be read: {e}")))?
        .to_bytes();
    if status.is_success() && bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    let value: Value = serde_json::from_slice(&bytes).map_err(|_| {
        failure(format!(
            "https://{}{} answered {status} without JSON",
            at.host, at.path
        ))
    })?;
    if !status.is_success() {
        // The provider's error code and description, never the request (it held the secret).
        let error = value["error"].as_str().map(str::to_string);
        return Err(TokenFailure {
            message: format!(
                "https://{}{} answered {status}: {} {}",
                at.host,
                at.path,
                error.as_deref().unwrap_or(""),
                value["error_description"].as_str().unwrap_or("")
            ),
            error,
        });
    }
    Ok(value)
}

/// The toolgate groups `groups` (the provider's) grant through its `group_map`.
pub fn mapped_groups(provider: &IdentityProvider, groups: &[String]) -> Vec<String> {
    let mut out: Vec<String> = groups
        .iter()
        .filter_map(|g| provider.group_map.get(g).cloned())
        .collect();
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_is_taken_once_and_only_with_its_cookie() {
        let oidc = Oidc::default();
        let (provider, login, endpoints) = fixture();
        let begun = oidc
            .begin(
                &provider,
                &login,
                &endpoints,
                "https://tg/login/oidc/callback",
            )
            .unwrap();
        let url = url_query(&begun.authorize);
        assert_eq!(url["code_challenge_method"], "S256");
        assert_eq!(url["response_type"], "code");
        let state = url["state"].clone();
        assert!(oidc.take(&state, Some("another browser")).is_none());
        assert!(oidc.take(&state, None).is_none());
        let p = oidc.take(&state, Some(&begun.binding_cookie)).unwrap();
        assert_eq!(p.nonce, url["nonce"]);
        assert_eq!(
            url["code_challenge"],
            b64(&Sha256::digest(p.verifier.as_bytes()))
        );
        assert!(
            oidc.take(&state, Some(&begun.binding_cookie)).is_none(),
            "once"
        );
    }

    fn fixture() -> (IdentityProvider, Login, LoginEndpoints) {
        let login = Login {
            client_id: "toolgate".into(),
            client_secret: crate::policy::ClientSecret("s".into()),
            scopes: vec!["openid".into()],
            endpoints: None,
        };
        let endpoints = LoginEndpoints {
            authorize_url: "https://idp.example.com/auth".into(),
            token: https_url("t", "https://idp.example.com/token").unwrap(),
        };
        let provider = IdentityProvider {
            name: "corp".into(),
            issuer: "https://idp.example.com".into(),
            audience: "toolgate".into(),
            keys: crate::policy::JwksSource::File(std::sync::Arc::new(jsonwebtoken::jwk::JwkSet {
                keys: vec![],
            })),
            algorithms: vec![jsonwebtoken::Algorithm::ES256],
            user_claim: "email".into(),
            groups_claim: None,
            leeway: Duration::from_secs(60),
            login: None,
            group_map: Default::default(),
        };
        (provider, login, endpoints)
    }

    proptest::proptest! {
        #[test]
        fn no_made_up_state_or_cookie_takes_a_sign_in(state in ".{0,80}", cookie in ".{0,80}") {
            let oidc = Oidc::default();
            let (provider, login, endpoints) = fixture();
            let begun = oidc.begin(&provider, &login, &endpoints, "https://tg/cb").unwrap();
            proptest::prop_assert!(oidc.take(&state, Some(&cookie)).is_none());
            let real = url_query(&begun.authorize)["state"].clone();
            proptest::prop_assert!(oidc.take(&real, Some(&cookie)).is_none());
        }
    }

    fn url_query(url: &str) -> HashMap<String, String> {
        let q = url.split_once('?').unwrap().1;
        form_urlencoded::parse(q.as_bytes()).into_owned().collect()
    }
}
