//! The vault of per-user OAuth connections (DESIGN section 16): per person and `[[connection]]`,
//! the access and refresh tokens, their expiry and scopes and the connection's state (live,
//! broken, revoked), sealed at rest under the store's seal key; the one-time links that start a
//! connection and the authorizations under way (PKCE verifier, state, the browser's cookie).
//!
//! Every change is a compare-and-set on the sealed record in the store, so it holds across
//! replicas: a link or a state is taken once, and a token is refreshed by one replica at a time
//! (it writes a lease into the record; the others wait for the fresh token).

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::oidc::{b64, random};
use crate::audit::{Audit, Kind, Record};
use crate::base::{now_ms, now_unix};
use crate::error::{Code, Refusal};
use crate::policy::{Connection, Credential, EndUser, PerUser, Policy};
use crate::services::oidc::{token_request, token_request_in_body, TokenFailure};
use crate::store::{Store, StoreError};
use crate::upstream::Upstream;

mod exchange;
mod link;
mod refresh;
mod resolve;

pub use resolve::Resolved;

/// How long a link stays good, unless asked otherwise.
pub const LINK_FOR: Duration = Duration::from_secs(15 * 60);
/// How long a person may take at the provider between opening a link and coming back.
const AUTHORIZE_FOR: Duration = Duration::from_secs(10 * 60);
/// A token is refreshed this long before it expires (or at half its life, if shorter).
const REFRESH_AHEAD: u64 = 60;
/// How long a replica holds the right to refresh a connection before another may take it.
const LEASE_MS: u64 = 30_000;
/// How often, and how many times, a call waiting for another's refresh looks again: for longer
/// than a lease, so that a replica that died refreshing leaves its lease to the waiters.
const WAIT_STEP: Duration = Duration::from_millis(50);
const WAIT_ROUNDS: usize = 700;
/// The cookie binding an authorization under way to the browser that opened the link.
pub const BINDING: &str = "tg_connect";

/// A connection's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum State {
    Live,
    /// Its refresh failed for good: the person must link it again.
    Broken {
        reason: String,
    },
    Revoked,
}

/// A person's connection as stored (sealed): never printed.
#[derive(Clone, Serialize, Deserialize)]
struct Held {
    user: String,
    connection: String,
    access: String,
    refresh: Option<String>,
    expires_unix: Option<u64>,
    /// The token's life when issued, in seconds (when the provider said).
    lifetime: Option<u64>,
    scopes: Vec<String>,
    #[serde(flatten)]
    state: State,
    linked_unix: u64,
    /// A replica refreshing the token holds it until then.
    lease_until_ms: Option<u64>,
}

/// A connection as lists show it: never a token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    pub user: String,
    pub connection: String,
    #[serde(flatten)]
    pub state: State,
    pub scopes: Vec<String>,
    pub expires_unix: Option<u64>,
    pub linked_unix: u64,
    /// The person's own disconnect link (path), when it was just made: shown to them once.
    #[serde(skip)]
    pub disconnect: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct LinkRec {
    user: String,
    connection: String,
    expires_unix: u64,
}

#[derive(Serialize, Deserialize)]
struct AuthRec {
    user: String,
    connection: String,
    verifier: String,
    redirect_uri: String,
    /// The sha256 (hex) of the cookie set on the browser that opened the link.
    binding: String,
    expires_unix: u64,
}

/// A link made: the path on the admin listener (`/connect/TOKEN`) and when it stops working.
pub struct Link {
    pub path: String,
    pub expires_unix: u64,
}

/// Where an opened link sends the browser, and the cookie it keeps meanwhile.
pub struct Opened {
    pub authorize: String,
    pub binding_cookie: String,
}

/// The token a call is sent with, and the scopes it carries.
pub struct Served {
    pub access: String,
    pub scopes: Vec<String>,
}

/// Why a person's connection gives no token now.
#[derive(Debug)]
pub enum Unavailable {
    /// They never linked it (or it was removed).
    Missing,
    Broken(String),
    Revoked,
    /// The provider or the store failed; the connection itself may be fine.
    Failed(String),
}

/// The vault: its records live in the store; it keeps no state of its own.
pub struct Vault {
    store: Store,
    audit: Arc<Audit>,
}

fn sha_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// The key of a person's connection: the pair hashed, so that no name with a `/` in it can
/// take another pair's key.
fn conn_key(connection: &str, user: &str) -> String {
    format!("conn/{}", pair_hash(connection, user))
}

fn pair_hash(a: &str, b: &str) -> String {
    sha_hex(&serde_json::json!([a, b]).to_string())
}

impl Vault {
    pub fn new(store: Store, audit: Arc<Audit>) -> Vault {
        Vault { store, audit }
    }

    fn seal<T: Serialize>(&self, record: &T) -> Result<Vec<u8>, StoreError> {
        let plain = serde_json::to_vec(record)?;
        Ok(self.store.sealer().seal(&plain)?.into_bytes())
    }

    fn open<T: serde::de::DeserializeOwned>(&self, raw: &[u8]) -> Result<T, StoreError> {
        let plain = std::str::from_utf8(raw)
            .ok()
            .and_then(|s| self.store.sealer().open_sealed(s))
            .ok_or_else(|| {
                StoreError::from_message(
                    "a vault record could not be opened (the seal key changed or the record was altered)"
                        .into(),
                )
            })?;
        Ok(serde_json::from_slice(&plain)?)
    }

    async fn read<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<(Vec<u8>, T)>, StoreError> {
        match self.store.vault_get(key).await? {
            Some(raw) => {
                let rec = self.open(&raw)?;
                Ok(Some((raw, rec)))
            }
            None => Ok(None),
        }
    }

    /// Takes the record under `key` once: read, then removed by compare-and-set, so that of
    /// two takers (on any replica) one has it.
    async fn take<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        let Some((raw, rec)) = self.read(key).await? else {
            return Ok(None);
        };
        match self.store.vault_swap(key, Some(&raw), None).await? {
            true => Ok(Some(rec)),
            false => Ok(None),
        }
    }

    /// Writes a connection whatever was stored before (a person linking again).
    async fn put(&self, held: &Held) -> Result<(), StoreError> {
        let key = conn_key(&held.connection, &held.user);
        let next = self.seal(held)?;
        for _ in 0..WAIT_ROUNDS {
            let seen = self.store.vault_get(&key).await?;
            if self
                .store
                .vault_swap(&key, seen.as_deref(), Some(&next))
                .await?
            {
                return Ok(());
            }
        }
        Err(StoreError::conflict(format!("{key} kept changing")))
    }

    async fn event(&self, kind: Kind, held: &Held, extra: Value) {
        let mut payload = json!({
            "connection": held.connection,
            "scopes": held.scopes,
        });
        if let (Some(p), Value::Object(more)) = (payload.as_object_mut(), extra) {
            p.extend(more);
        }
        self.audit
            .record(Record {
                kind,
                user: Some(held.user.clone()),
                payload,
                ..Default::default()
            })
            .await;
    }

    /// Records a link that connected nothing (the account was not the person's).
    async fn refused(&self, user: &str, payload: Value) {
        self.audit
            .record(Record {
                kind: Kind::ConnectionRefused,
                user: Some(user.to_string()),
                payload,
                ..Default::default()
            })
            .await;
    }

    /// The connections stored, of `user` or of everyone.
    pub async fn list(&self, user: Option<&str>) -> Result<Vec<Summary>, StoreError> {
        let mut out = Vec::new();
        for (_, raw) in self.store.vault_scan("conn/").await? {
            let held: Held = self.open(&raw)?;
            if user.is_none_or(|u| u == held.user) {
                out.push(summary(&held));
            }
        }
        out.sort_by(|a, b| (&a.user, &a.connection).cmp(&(&b.user, &b.connection)));
        Ok(out)
    }

    /// Revokes `user`'s connection: its tokens are forgotten at once (the state says revoked),
    /// then the provider's revocation endpoint (RFC 7009) is told, when it has one. `Ok(None)`:
    /// there was no such connection. The provider's refusal does not undo the revocation here;
    /// it is said in the answer.
    pub async fn revoke(
        &self,
        upstream: &Upstream,
        conn: Option<&Connection>,
        user: &str,
        connection: &str,
        by: &str,
    ) -> Result<Option<Option<String>>, StoreError> {
        let key = conn_key(connection, user);
        for _ in 0..WAIT_ROUNDS {
            let Some((raw, held)) = self.read::<Held>(&key).await? else {
                return Ok(None);
            };
            let mut next = held.clone();
            next.state = State::Revoked;
            next.access = String::new();
            next.refresh = None;
            next.lease_until_ms = None;
            let sealed = self.seal(&next)?;
            if !self
                .store
                .vault_swap(&key, Some(&raw), Some(&sealed))
                .await?
            {
                continue;
            }
            let told = match conn {
                Some(c) => tell_provider(upstream, c, &held).await,
                None => None,
            };
            let provider = match (conn.and_then(|c| c.revoke.as_ref()), &told) {
                (None, _) => "has no revocation endpoint".to_string(),
                (Some(_), None) => "revoked the token".to_string(),
                (Some(_), Some(why)) => format!("refused: {why}"),
            };
            let payload = json!({"by": by, "provider": provider});
            self.event(Kind::ConnectionRevoked, &next, payload).await;
            return Ok(Some(told));
        }
        Err(StoreError::conflict(format!("{key} kept changing")))
    }
}

/// The longest a call to a provider's endpoint may take, answer included: well inside a
/// refresh lease ([`LEASE_MS`]), so that no other replica takes the lease (and sends the same
/// refresh token, which a rotating provider then refuses) while this one still waits.
const PROVIDER_WITHIN: Duration = Duration::from_secs(10);

/// A form POSTed to one of the connection's endpoints, with its client authentication.
async fn to_provider(
    upstream: &Upstream,
    conn: &Connection,
    at: &crate::policy::HttpsUrl,
    body: String,
) -> Result<Value, TokenFailure> {
    let (id, secret) = (&conn.client_id, &conn.client_secret);
    let asked = async {
        match conn.client_auth {
            crate::policy::ClientAuth::Basic => token_request(upstream, at, id, secret, body).await,
            crate::policy::ClientAuth::Post => {
                token_request_in_body(upstream, at, id, secret, body).await
            }
        }
    };
    match tokio::time::timeout(PROVIDER_WITHIN, asked).await {
        Ok(answer) => answer,
        Err(_) => Err(TokenFailure {
            error: None,
            message: format!(
                "the provider did not answer within {}s",
                PROVIDER_WITHIN.as_secs()
            ),
        }),
    }
}

/// The connection a token endpoint's answer makes (a code's, or a refresh's over `before`).
fn issued(
    conn: &Connection,
    user: &str,
    answer: &Value,
    before: Option<&Held>,
) -> Result<Held, String> {
    let access = answer["access_token"]
        .as_str()
        .filter(|a| !a.is_empty())
        .ok_or("the provider's answer has no access_token")?
        .to_string();
    let now = now_unix();
    let lifetime = answer["expires_in"].as_u64();
    let scopes = match answer["scope"].as_str() {
        Some(s) => s.split_whitespace().map(str::to_string).collect(),
        None => before.map_or_else(|| conn.scopes.clone(), |b| b.scopes.clone()),
    };
    Ok(Held {
        user: user.to_string(),
        connection: conn.name.clone(),
        access,
        // A provider that does not rotate keeps the refresh token it gave before.
        refresh: answer["refresh_token"]
            .as_str()
            .map(str::to_string)
            .or_else(|| before.and_then(|b| b.refresh.clone())),
        expires_unix: lifetime.map(|l| now.saturating_add(l)),
        lifetime,
        scopes,
        state: State::Live,
        linked_unix: before.map_or(now, |b| b.linked_unix),
        lease_until_ms: None,
    })
}

fn summary(held: &Held) -> Summary {
    Summary {
        user: held.user.clone(),
        connection: held.connection.clone(),
        state: held.state.clone(),
        scopes: held.scopes.clone(),
        expires_unix: held.expires_unix,
        linked_unix: held.linked_unix,
        disconnect: None,
    }
}

/// Tells the provider's revocation endpoint (RFC 7009) to forget the refresh token (or the
/// access token when there is none): None when told (or it has no endpoint), else why not.
async fn tell_provider(upstream: &Upstream, conn: &Connection, held: &Held) -> Option<String> {
    let at = conn.revoke.as_ref()?;
    let (token, hint) = match &held.refresh {
        Some(r) => (r.as_str(), "refresh_token"),
        None => (held.access.as_str(), "access_token"),
    };
    if token.is_empty() {
        return None;
    }
    let body = form_urlencoded::Serializer::new(String::new())
        .append_pair("token", token)
        .append_pair("token_type_hint", hint)
        .finish();
    to_provider(upstream, conn, at, body)
        .await
        .err()
        .map(|f| f.message)
}

#[cfg(test)]
mod tests {
    use super::link::authorize_url;
    use super::refresh::fresh;
    use super::*;
    use crate::policy::identity_def::https_url;

    fn conn() -> Connection {
        Connection {
            name: "gh".into(),
            authorize_url: "https://idp.example.com/auth".into(),
            token: https_url("t", "https://idp.example.com/token").unwrap(),
            revoke: None,
            client_id: "c".into(),
            client_secret: crate::policy::ClientSecret("s".into()),
            scopes: vec!["repo".into()],
            client_auth: crate::policy::ClientAuth::Basic,
            user_claim: None,
        }
    }

    #[test]
    fn a_token_answer_makes_a_live_connection_and_a_refresh_keeps_what_it_does_not_replace() {
        let first = json!({"access_token": "a1", "refresh_token": "r1", "expires_in": 2, "scope": "repo user"});
        let held = issued(&conn(), "alice", &first, None).unwrap();
        assert_eq!(
            (held.access.as_str(), held.refresh.as_deref()),
            ("a1", Some("r1"))
        );
        assert_eq!(held.scopes, vec!["repo", "user"]);
        let now = now_unix();
        assert!(
            fresh(&held, now),
            "2 s left of 2: refreshed at half its life"
        );
        assert!(!fresh(&held, now + 1));
        // No rotation, no scope: the refresh token and the scopes stay.
        let next = issued(
            &conn(),
            "alice",
            &json!({"access_token": "a2"}),
            Some(&held),
        )
        .unwrap();
        assert_eq!(
            (next.refresh.as_deref(), next.scopes.clone()),
            (Some("r1"), held.scopes.clone())
        );
        assert!(fresh(&next, now + 10_000), "no expiry: used until refused");
        let url = authorize_url(
            &conn(),
            &AuthRec {
                user: "alice".into(),
                connection: "gh".into(),
                verifier: "v".into(),
                redirect_uri: "https://tg/connect/callback".into(),
                binding: String::new(),
                expires_unix: 0,
            },
            "st",
        );
        assert!(url.starts_with("https://idp.example.com/auth?response_type=code&client_id=c"));
        assert!(url.contains("code_challenge_method=S256") && url.contains("scope=repo"));
    }

    #[tokio::test]
    async fn links_are_taken_once_and_the_sweep_removes_only_those_whose_time_is_up() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::open(dir.path()).unwrap();
        let vault = Vault::new(store.clone(), Arc::new(Audit::open(&store).unwrap()));
        let old = vault
            .make_link("alice", "gh", Duration::ZERO)
            .await
            .unwrap();
        let live = vault.make_link("bob", "gh", LINK_FOR).await.unwrap();
        assert_eq!(vault.sweep().await.unwrap(), 1);
        let token = |l: &Link| l.path.rsplit('/').next().unwrap().to_string();
        let taken: Option<LinkRec> = vault
            .take(&format!("link/{}", sha_hex(&token(&live))))
            .await
            .unwrap();
        assert_eq!(taken.unwrap().user, "bob");
        let again: Option<LinkRec> = vault
            .take(&format!("link/{}", sha_hex(&token(&live))))
            .await
            .unwrap();
        assert!(again.is_none(), "once");
        let gone: Option<LinkRec> = vault
            .take(&format!("link/{}", sha_hex(&token(&old))))
            .await
            .unwrap();
        assert!(gone.is_none(), "swept");
        // Sealed at rest: the store holds neither the person nor the connection in clear.
        let raw = store.vault_scan("").await.unwrap();
        assert!(raw
            .iter()
            .all(|(_, v)| !String::from_utf8_lossy(v).contains("alice")));
    }

    #[tokio::test]
    async fn a_connection_moved_under_another_persons_key_serves_no_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::open(dir.path()).unwrap();
        let vault = Vault::new(store.clone(), Arc::new(Audit::open(&store).unwrap()));
        let answer = json!({"access_token": "alices", "expires_in": 3600});
        vault
            .put(&issued(&conn(), "alice", &answer, None).unwrap())
            .await
            .unwrap();
        // Someone who can write the store (but not seal) copies alice's row to mallory's key.
        let row = store
            .vault_get(&conn_key("gh", "alice"))
            .await
            .unwrap()
            .unwrap();
        let mallorys = conn_key("gh", "mallory");
        assert!(store.vault_swap(&mallorys, None, Some(&row)).await.unwrap());
        let upstream = Upstream::new(
            rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth(),
            Arc::new(crate::upstream::Routes::new(
                std::collections::HashMap::new(),
            )),
            Duration::from_secs(2),
        );
        let got = vault.served(&upstream, &conn(), "mallory").await;
        assert!(
            matches!(&got, Err(Unavailable::Failed(m)) if m.contains("not theirs")),
            "{:?}",
            got.err()
        );
        let alice = vault.served(&upstream, &conn(), "alice").await;
        assert_eq!(alice.ok().map(|s| s.access).as_deref(), Some("alices"));
    }

    #[tokio::test]
    async fn a_lease_left_by_a_replica_that_died_is_taken_and_a_failed_refresh_gives_it_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::open(dir.path()).unwrap();
        let vault = Vault::new(store.clone(), Arc::new(Audit::open(&store).unwrap()));
        let answer = json!({"access_token": "a1", "refresh_token": "r1", "expires_in": 2});
        let mut held = issued(&conn(), "alice", &answer, None).unwrap();
        held.expires_unix = Some(now_unix().saturating_sub(5));
        held.lease_until_ms = Some(now_ms().saturating_sub(1));
        vault.put(&held).await.unwrap();
        // The token endpoint cannot be reached (nothing listens on the route).
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = closed.local_addr().unwrap();
        drop(closed);
        let mut routes = std::collections::HashMap::new();
        routes.insert(("idp.example.com".to_string(), 443), addr);
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
        let upstream = Upstream::new(
            tls,
            Arc::new(crate::upstream::Routes::new(routes)),
            Duration::from_secs(2),
        );
        let got = vault.served(&upstream, &conn(), "alice").await;
        assert!(
            matches!(&got, Err(Unavailable::Failed(m)) if m.contains("could not be refreshed")),
            "{:?}",
            got.err()
        );
        let (_, after) = vault
            .read::<Held>(&conn_key("gh", "alice"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(after.lease_until_ms, None, "the lease is given back");
        assert_eq!(
            (after.state, after.refresh.as_deref()),
            (State::Live, Some("r1"))
        );
    }

    proptest::proptest! {
        /// Whatever a token endpoint answers, reading it never panics, and a connection is made
        /// only from an answer with a non-empty access token, which is the token kept.
        #[test]
        fn any_token_answer_is_read_without_panic(text in ".{0,200}", exp in proptest::option::of(0u64..u64::MAX)) {
            for answer in [
                serde_json::from_str::<Value>(&text).unwrap_or(Value::Null),
                json!({"access_token": text, "expires_in": exp, "scope": text}),
            ] {
                if let Ok(h) = issued(&conn(), "u", &answer, None) {
                    proptest::prop_assert!(!h.access.is_empty());
                    proptest::prop_assert_eq!(Some(h.access.as_str()), answer["access_token"].as_str());
                }
            }
        }
    }
}
