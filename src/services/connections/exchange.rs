//! Token exchange (RFC 8693) for a `[[credential]]` with `exchange = {...}`: the call's verified
//! user assertion is sent as the `subject_token` to the credential's token endpoint (toolgate's
//! own client authentication, `client_secret_basic`), with its audience and scope; the token
//! issued is kept per (credential, person), sealed in the store (so replicas share it), until
//! shortly before it expires.

use super::*;
use crate::policy::{Assertion, Exchange};

const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";

/// An exchanged token kept for reuse (sealed).
#[derive(Serialize, Deserialize)]
struct Cached {
    token: String,
    expires_unix: Option<u64>,
    lifetime: Option<u64>,
    scopes: Vec<String>,
}

fn refused(message: String) -> Refusal {
    Refusal::new(Code::PolicyViolation, message)
}

impl Vault {
    /// The token `cred` exchanges the person's assertion for: the cached one while it has
    /// time left, else a fresh exchange. A person named by an issued token (no assertion) is
    /// refused, as is an assertion of another provider than the one the credential names.
    pub(super) async fn exchanged(
        &self,
        upstream: &Upstream,
        cred: &Credential,
        x: &Exchange,
        user: &str,
        assertion: Option<&Assertion>,
    ) -> Result<Served, Refusal> {
        let Some(a) = assertion else {
            return Err(refused(format!(
                "credential {} exchanges the person's signed assertion for a token (RFC 8693), and this call names {user} by an issued token, which carries none: send the person's Toolgate-User-Assertion",
                cred.name
            )));
        };
        if let Some(p) = x.identity_provider.as_deref().filter(|p| *p != a.provider) {
            return Err(refused(format!(
                "credential {} exchanges assertions of identity provider {p} only; this one is from {}",
                cred.name, a.provider
            )));
        }
        // One cache entry per person *of a provider*, and per exchange as configured now: a
        // reload that changes where or for what tokens are exchanged starts afresh, and one
        // provider's "alice" never gets the token issued for another's.
        let asked = serde_json::json!([
            a.provider,
            user,
            x.token.host,
            x.token.port,
            x.token.path,
            x.audience,
            x.scope,
            x.client_id,
        ]);
        let key = format!("xchg/{}", pair_hash(&cred.name, &asked.to_string()));
        let (seen, fresh) = self.cached(&key).await;
        if let Some(served) = fresh {
            return Ok(served);
        }
        let answer = token_request(
            upstream,
            &x.token,
            &x.client_id,
            &x.client_secret,
            exchange_form(x, a),
        )
        .await
        .map_err(|f| {
            Refusal::new(
                Code::UpstreamError,
                format!(
                    "credential {}: the token exchange was refused: {}; nothing was sent",
                    cred.name, f.message
                ),
            )
        })?;
        let cached = read_answer(x, &answer).map_err(|why| {
            Refusal::new(
                Code::UpstreamError,
                format!("credential {}: {why}; nothing was sent", cred.name),
            )
        })?;
        // A cache: a store that cannot keep it costs an exchange next time, nothing else.
        if let Ok(sealed) = self.seal(&cached) {
            let _ = self
                .store
                .vault_swap(&key, seen.as_deref(), Some(&sealed))
                .await;
        }
        Ok(Served {
            access: cached.token,
            scopes: cached.scopes,
        })
    }
}

/// The exchange request's form: the assertion as the subject token, the audience and scope.
fn exchange_form(x: &Exchange, a: &Assertion) -> String {
    let mut form = form_urlencoded::Serializer::new(String::new());
    form.append_pair("grant_type", TOKEN_EXCHANGE)
        .append_pair("subject_token", &a.token)
        .append_pair("subject_token_type", x.subject_token_type)
        .append_pair("requested_token_type", ACCESS_TOKEN);
    if let Some(audience) = &x.audience {
        form.append_pair("audience", audience);
    }
    if let Some(scope) = &x.scope {
        form.append_pair("scope", scope);
    }
    form.finish()
}

/// The token an exchange answer issued.
fn read_answer(x: &Exchange, answer: &Value) -> Result<Cached, String> {
    let token = answer["access_token"]
        .as_str()
        .filter(|t| !t.is_empty())
        .ok_or("the token exchange's answer has no access_token")?
        .to_string();
    let lifetime = answer["expires_in"].as_u64();
    let scope = answer["scope"]
        .as_str()
        .or(x.scope.as_deref())
        .unwrap_or("");
    Ok(Cached {
        token,
        expires_unix: lifetime.map(|l| now_unix().saturating_add(l)),
        lifetime,
        scopes: scope.split_whitespace().map(str::to_string).collect(),
    })
}

/// Whether a cached token has time left (as a connection's: refreshed at half a short life).
fn cached_fresh(c: &Cached, now: u64) -> bool {
    let Some(expires) = c.expires_unix else {
        return false;
    };
    let ahead = c
        .lifetime
        .map_or(REFRESH_AHEAD, |l| (l / 2).min(REFRESH_AHEAD));
    expires > now.saturating_add(ahead)
}

impl Vault {
    /// The exchange cache under `key`, read once: its bytes (what a new token replaces, by
    /// compare-and-set) and the token in it while it has time left.
    async fn cached(&self, key: &str) -> (Option<Vec<u8>>, Option<Served>) {
        let seen = self.store.vault_get(key).await.ok().flatten();
        let fresh = (seen.as_deref())
            .and_then(|raw| self.open::<Cached>(raw).ok())
            .filter(|c| cached_fresh(c, now_unix()))
            .map(|c| Served {
                access: c.token,
                scopes: c.scopes,
            });
        (seen, fresh)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Whatever an exchange answers, reading it never panics, and only a non-empty
        /// access token is taken.
        #[test]
        fn any_exchange_answer_is_read_without_panic(text in ".{0,200}", exp in proptest::option::of(0u64..u64::MAX)) {
            let x = Exchange {
                token: crate::policy::identity_def::https_url("t", "https://idp/t").unwrap(),
                audience: Some("api".into()),
                scope: Some("read".into()),
                client_id: "c".into(),
                client_secret: crate::policy::ClientSecret("s".into()),
                identity_provider: None,
                subject_token_type: "urn:ietf:params:oauth:token-type:jwt",
            };
            for answer in [
                serde_json::from_str::<Value>(&text).unwrap_or(Value::Null),
                json!({"access_token": text, "expires_in": exp}),
            ] {
                if let Ok(c) = read_answer(&x, &answer) {
                    proptest::prop_assert!(!c.token.is_empty());
                    let _ = cached_fresh(&c, now_unix());
                }
            }
        }
    }
}
