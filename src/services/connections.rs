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

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::audit::{Audit, Kind, Record};
use crate::base::{now_ms, now_unix};
use crate::error::{Code, Refusal};
use crate::policy::{Connection, Credential, EndUser, PerUser, Policy};
use crate::services::oidc::{token_request, token_request_in_body, TokenFailure};
use crate::store::{Store, StoreError};
use crate::upstream::Upstream;

mod exchange;

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

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn random() -> String {
    b64(&rand::random::<[u8; 32]>())
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

    /// A one-time link for `user` to connect `connection`, good for `ttl`.
    pub async fn make_link(
        &self,
        user: &str,
        connection: &str,
        ttl: Duration,
    ) -> Result<Link, StoreError> {
        let token = random();
        let rec = LinkRec {
            user: user.to_string(),
            connection: connection.to_string(),
            expires_unix: now_unix() + ttl.as_secs(),
        };
        let raw = self.seal(&rec)?;
        let key = format!("link/{}", sha_hex(&token));
        if !self.store.vault_swap(&key, None, Some(&raw)).await? {
            return Err(StoreError::from_message(
                "a link collided; ask again".into(),
            ));
        }
        Ok(Link {
            path: format!("/connect/{token}"),
            expires_unix: rec.expires_unix,
        })
    }

    /// The link a refusal offers `user` to connect `connection`: the one offered before while
    /// it is unused and has more than half its time left, else a new one. An agent retrying
    /// a refused call shows the same link and adds no record.
    async fn offer(&self, user: &str, connection: &str) -> Result<Link, StoreError> {
        #[derive(Serialize, Deserialize)]
        struct Offered {
            token: String,
            expires_unix: u64,
        }
        let key = format!("offer/{}", pair_hash(connection, user));
        let seen = self.read::<Offered>(&key).await.ok().flatten();
        if let Some((_, o)) = &seen {
            let unused = self
                .store
                .vault_get(&format!("link/{}", sha_hex(&o.token)))
                .await?
                .is_some();
            if unused && o.expires_unix > now_unix() + LINK_FOR.as_secs() / 2 {
                return Ok(Link {
                    path: format!("/connect/{}", o.token),
                    expires_unix: o.expires_unix,
                });
            }
        }
        let link = self.make_link(user, connection, LINK_FOR).await?;
        let offered = Offered {
            token: link.path.trim_start_matches("/connect/").to_string(),
            expires_unix: link.expires_unix,
        };
        // Remembered for the next refusal; one not remembered only costs a new link.
        let raw = self.seal(&offered)?;
        let before = seen.map(|(raw, _)| raw);
        let _ = self
            .store
            .vault_swap(&key, before.as_deref(), Some(&raw))
            .await;
        Ok(link)
    }

    /// Opens a link, once: the authorization under way is stored and the browser is sent to
    /// the provider with the state, the PKCE challenge (S256) and the scopes.
    pub async fn open_link(
        &self,
        policy: &Policy,
        token: &str,
        redirect_uri: &str,
    ) -> Result<Opened, String> {
        let key = format!("link/{}", sha_hex(token));
        let rec: LinkRec = self
            .take(&key)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("This link is unknown or was used already. Ask for a new one.")?;
        if rec.expires_unix <= now_unix() {
            return Err("This link expired. Ask for a new one.".into());
        }
        let conn = policy
            .connection(&rec.connection)
            .ok_or_else(|| format!("No connection is named {:?} any more.", rec.connection))?;
        let (state, verifier, binding) = (random(), random(), random());
        let auth = AuthRec {
            user: rec.user,
            connection: rec.connection,
            verifier,
            redirect_uri: redirect_uri.to_string(),
            binding: sha_hex(&binding),
            expires_unix: now_unix() + AUTHORIZE_FOR.as_secs(),
        };
        let raw = self.seal(&auth).map_err(|e| e.to_string())?;
        let akey = format!("auth/{}", sha_hex(&state));
        let stored = self.store.vault_swap(&akey, None, Some(&raw)).await;
        if !stored.map_err(|e| e.to_string())? {
            return Err("Could not begin; open a new link.".into());
        }
        Ok(Opened {
            authorize: authorize_url(conn, &auth, &state),
            binding_cookie: binding,
        })
    }

    /// The provider sent the browser back with `code` for `state`: the code is exchanged
    /// (client_secret_basic, the PKCE verifier) and the tokens are stored, live.
    pub async fn finish(
        &self,
        upstream: &Upstream,
        policy: &Policy,
        state: &str,
        code: &str,
        binding_cookie: Option<&str>,
    ) -> Result<Summary, String> {
        use subtle::ConstantTimeEq;
        let akey = format!("auth/{}", sha_hex(state));
        let unknown = "This sign-in is unknown, was finished already or began in another browser: open a new link.";
        let Some((raw, auth)) = self
            .read::<AuthRec>(&akey)
            .await
            .map_err(|e| e.to_string())?
        else {
            return Err(unknown.into());
        };
        let cookie = sha_hex(binding_cookie.unwrap_or(""));
        if !bool::from(cookie.as_bytes().ct_eq(auth.binding.as_bytes())) {
            return Err(unknown.into());
        }
        let taken = self.store.vault_swap(&akey, Some(&raw), None).await;
        if !taken.map_err(|e| e.to_string())? {
            return Err(unknown.into());
        }
        if auth.expires_unix <= now_unix() {
            return Err("This sign-in took too long. Open a new link.".into());
        }
        let conn = policy
            .connection(&auth.connection)
            .ok_or_else(|| format!("No connection is named {:?} any more.", auth.connection))?;
        let body = form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "authorization_code")
            .append_pair("code", code)
            .append_pair("redirect_uri", &auth.redirect_uri)
            .append_pair("code_verifier", &auth.verifier)
            .finish();
        let answer = to_provider(upstream, conn, &conn.token, body)
            .await
            .map_err(|f| format!("The provider did not give a token: {}", f.message))?;
        let held = issued(conn, &auth.user, &answer, None)?;
        self.put(&held).await.map_err(|e| e.to_string())?;
        self.event(Kind::ConnectionLinked, &held, json!({})).await;
        Ok(summary(&held))
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

    /// Removes the links and authorizations under way whose time is up (compare-and-set: one
    /// taken meanwhile is left to its taker); returns how many.
    pub async fn sweep(&self) -> Result<usize, StoreError> {
        #[derive(Deserialize)]
        struct Until {
            expires_unix: u64,
        }
        let now = now_unix();
        let mut removed = 0;
        for prefix in ["link/", "auth/", "offer/"] {
            for (key, raw) in self.store.vault_scan(prefix).await? {
                // A record that cannot be opened (another seal key) is of no use to anyone.
                let over = self
                    .open::<Until>(&raw)
                    .map_or(true, |u| u.expires_unix <= now);
                if over && self.store.vault_swap(&key, Some(&raw), None).await? {
                    removed += 1;
                }
            }
        }
        Ok(removed)
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
            let payload =
                json!({"by": by, "provider": told.clone().unwrap_or_else(|| "told".into())});
            self.event(Kind::ConnectionRevoked, &next, payload).await;
            return Ok(Some(told));
        }
        Err(StoreError::conflict(format!("{key} kept changing")))
    }

    /// `user`'s token from `conn` for a call: as stored while it has time left, else refreshed
    /// first (by one replica at a time: the others wait for its token).
    pub async fn served(
        &self,
        upstream: &Upstream,
        conn: &Connection,
        user: &str,
    ) -> Result<Served, Unavailable> {
        let key = conn_key(&conn.name, user);
        let failed = |e: StoreError| Unavailable::Failed(e.to_string());
        for _ in 0..WAIT_ROUNDS {
            let Some((raw, held)) = self.read::<Held>(&key).await.map_err(failed)? else {
                return Err(Unavailable::Missing);
            };
            match &held.state {
                State::Live => {}
                State::Broken { reason } => return Err(Unavailable::Broken(reason.clone())),
                State::Revoked => return Err(Unavailable::Revoked),
            }
            let now = now_unix();
            if fresh(&held, now)
                || (held.refresh.is_none() && held.expires_unix.is_none_or(|e| e > now))
            {
                return Ok(Served {
                    access: held.access,
                    scopes: held.scopes,
                });
            }
            if held.lease_until_ms.is_some_and(|l| l > now_ms()) {
                tokio::time::sleep(WAIT_STEP).await;
                continue;
            }
            let mut leased = held.clone();
            leased.lease_until_ms = Some(now_ms() + LEASE_MS);
            let sealed = self.seal(&leased).map_err(failed)?;
            if self
                .store
                .vault_swap(&key, Some(&raw), Some(&sealed))
                .await
                .map_err(failed)?
            {
                return self.refresh(upstream, conn, &key, sealed, leased).await;
            }
        }
        Err(Unavailable::Failed(
            "another refresh of this connection did not finish in time; retry".into(),
        ))
    }

    /// Refreshes a connection this replica holds the lease of. A rotated refresh token
    /// replaces the old one; `invalid_grant` breaks the connection (the person must link it
    /// again); any other failure gives the lease back and leaves the connection as it was.
    async fn refresh(
        &self,
        upstream: &Upstream,
        conn: &Connection,
        key: &str,
        leased_raw: Vec<u8>,
        leased: Held,
    ) -> Result<Served, Unavailable> {
        let failed = |e: StoreError| Unavailable::Failed(e.to_string());
        let Some(refresh) = leased.refresh.clone() else {
            let reason = "its token expired and the provider gave no refresh token".to_string();
            return self.broken(key, &leased_raw, leased, reason).await;
        };
        let body = form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "refresh_token")
            .append_pair("refresh_token", &refresh)
            .finish();
        let answer = to_provider(upstream, conn, &conn.token, body).await;
        match answer {
            Ok(answer) => {
                let next = issued(conn, &leased.user, &answer, Some(&leased))
                    .map_err(Unavailable::Failed)?;
                let sealed = self.seal(&next).map_err(failed)?;
                if !self
                    .store
                    .vault_swap(key, Some(&leased_raw), Some(&sealed))
                    .await
                    .map_err(failed)?
                {
                    return Err(Unavailable::Failed(
                        "the connection changed while it was refreshed (revoked?); retry".into(),
                    ));
                }
                let rotated = next.refresh != leased.refresh;
                self.event(
                    Kind::ConnectionRefreshed,
                    &next,
                    json!({"rotated": rotated}),
                )
                .await;
                Ok(Served {
                    access: next.access,
                    scopes: next.scopes,
                })
            }
            Err(f) if f.error.as_deref() == Some("invalid_grant") => {
                let reason = format!("the provider refused its refresh token ({})", f.message);
                self.broken(key, &leased_raw, leased, reason).await
            }
            Err(f) => {
                let mut back = leased;
                back.lease_until_ms = None;
                if let Ok(sealed) = self.seal(&back) {
                    let _ = self
                        .store
                        .vault_swap(key, Some(&leased_raw), Some(&sealed))
                        .await;
                }
                Err(Unavailable::Failed(format!(
                    "the token could not be refreshed: {}",
                    f.message
                )))
            }
        }
    }

    async fn broken(
        &self,
        key: &str,
        leased_raw: &[u8],
        leased: Held,
        reason: String,
    ) -> Result<Served, Unavailable> {
        let mut next = leased;
        next.state = State::Broken {
            reason: reason.clone(),
        };
        next.access = String::new();
        next.refresh = None;
        next.lease_until_ms = None;
        let sealed = self
            .seal(&next)
            .map_err(|e| Unavailable::Failed(e.to_string()))?;
        let _ = self
            .store
            .vault_swap(key, Some(leased_raw), Some(&sealed))
            .await;
        self.event(Kind::ConnectionBroken, &next, json!({"reason": reason}))
            .await;
        Err(Unavailable::Broken(reason))
    }
}

/// A form POSTed to one of the connection's endpoints, with its client authentication.
async fn to_provider(
    upstream: &Upstream,
    conn: &Connection,
    at: &crate::policy::HttpsUrl,
    body: String,
) -> Result<Value, TokenFailure> {
    let (id, secret) = (&conn.client_id, &conn.client_secret);
    match conn.client_auth {
        crate::policy::ClientAuth::Basic => token_request(upstream, at, id, secret, body).await,
        crate::policy::ClientAuth::Post => {
            token_request_in_body(upstream, at, id, secret, body).await
        }
    }
}

/// Whether a token has time left before it should be refreshed.
fn fresh(held: &Held, now: u64) -> bool {
    let Some(expires) = held.expires_unix else {
        return true;
    };
    let ahead = held
        .lifetime
        .map_or(REFRESH_AHEAD, |l| (l / 2).min(REFRESH_AHEAD));
    expires > now + ahead
}

/// The provider's authorization URL for an authorization under way.
fn authorize_url(conn: &Connection, auth: &AuthRec, state: &str) -> String {
    let challenge = b64(&Sha256::digest(auth.verifier.as_bytes()));
    let mut q = form_urlencoded::Serializer::new(String::new());
    q.append_pair("response_type", "code")
        .append_pair("client_id", &conn.client_id)
        .append_pair("redirect_uri", &auth.redirect_uri)
        .append_pair("state", state)
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256");
    if !conn.scopes.is_empty() {
        q.append_pair("scope", &conn.scopes.join(" "));
    }
    let sep = if conn.authorize_url.contains('?') {
        '&'
    } else {
        '?'
    };
    format!("{}{sep}{}", conn.authorize_url, q.finish())
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

/// A call's credential as it is injected: a shared secret as the policy holds it, or a
/// person's token (then what served the call: the connection or exchange and the scopes, for
/// the call's audit event; never the token).
pub struct Resolved {
    pub credential: Option<Arc<Credential>>,
    pub used: Option<Value>,
}

impl Vault {
    /// The one place a call's credential is made ready to inject, for every path a call goes
    /// out by (a request, an MCP message, a GraphQL operation, the commit of an approved
    /// call): a shared secret as it is; a per-user credential filled with the token of the
    /// person the call acts for (from their connection, or exchanged for their assertion). No
    /// person, or no live connection: refused, saying what to do (for a missing or broken
    /// connection, with a fresh link for the person to connect).
    pub async fn credential(
        &self,
        upstream: &Upstream,
        policy: &Policy,
        cred: Option<&Arc<Credential>>,
        user: Option<&EndUser>,
        admin_url: &str,
    ) -> Result<Resolved, Refusal> {
        let Some(cred) = cred else {
            return Ok(Resolved {
                credential: None,
                used: None,
            });
        };
        let Some(source) = cred.source() else {
            return Ok(Resolved {
                credential: Some(cred.clone()),
                used: None,
            });
        };
        let Some(user) = user else {
            return Err(Refusal::new(
                Code::PolicyViolation,
                format!("credential {} sends the token of the person the call acts for, and this call names no person: send Toolgate-User-Assertion, or use a token issued --for-user", cred.name),
            ));
        };
        let (served, mut used) = match source {
            PerUser::Exchange(x) => {
                let s = self
                    .exchanged(upstream, cred, x, &user.id, user.assertion.as_ref())
                    .await?;
                (s, json!({"exchange": cred.name, "audience": x.audience}))
            }
            PerUser::Connection(name) => {
                let conn = policy.connection(name).ok_or_else(|| {
                    Refusal::new(Code::Internal, format!("connection {name} is not defined"))
                })?;
                match self.served(upstream, conn, &user.id).await {
                    Ok(s) => (s, json!({"connection": name})),
                    Err(why) => return Err(self.unavailable(&user.id, name, why, admin_url).await),
                }
            }
        };
        let filled = cred.with_token(&served.access).map_err(|why| {
            Refusal::new(
                Code::UpstreamError,
                format!("credential {}: {why}", cred.name),
            )
        })?;
        used["credential"] = json!(cred.name);
        used["scopes"] = json!(served.scopes);
        Ok(Resolved {
            credential: Some(Arc::new(filled)),
            used: Some(used),
        })
    }

    /// The refusal for a person whose connection gives no token: with a fresh link when they
    /// must connect (again).
    async fn unavailable(
        &self,
        user: &str,
        name: &str,
        why: Unavailable,
        admin_url: &str,
    ) -> Refusal {
        let what = match why {
            Unavailable::Failed(m) => {
                return Refusal::new(
                    Code::UpstreamError,
                    format!("{user}'s connection {name} could not give a token now: {m}; nothing was sent, retry later"),
                )
            }
            Unavailable::Missing => format!("{user} has not connected {name}"),
            Unavailable::Revoked => format!("{user}'s connection {name} was revoked: reconnect"),
            Unavailable::Broken(r) => format!("{user}'s connection {name} is broken ({r}): reconnect"),
        };
        let link = match self.offer(user, name).await {
            Ok(l) => match admin_url.trim_end_matches('/') {
                "" => format!("{} on toolgate's admin listener", l.path),
                base => format!("{base}{}", l.path),
            },
            Err(e) => {
                return Refusal::new(
                    Code::StoreUnavailable,
                    format!(
                        "{what}, and no link could be made for them now ({e}); nothing was sent"
                    ),
                )
            }
        };
        Refusal::new(
            Code::UserConnectionRequired,
            format!("{what}. Ask them to open {link} (good for {} minutes, once) to connect, then retry the call; nothing was sent", LINK_FOR.as_secs() / 60),
        )
    }
}

#[cfg(test)]
mod tests {
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
