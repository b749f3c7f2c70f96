//! People's OAuth connections (DESIGN section 16) against a real authorization server: the
//! certified oidc-provider (tests/oidc/oauth.mjs) issuing codes with PKCE, rotating refresh
//! tokens, 2-second access tokens when asked, revocation and introspection, and beside it a
//! GitHub-like API that takes only tokens the server issued (it asks the server's introspection
//! endpoint) and logs whose token each call carried. A person connects once through a one-time
//! link (the provider's login and consent forms posted as a browser would); the agent's calls
//! for them then carry their own token; a person without a connection gets 409
//! `user_connection_required` with a link that works.

use std::collections::HashMap;

use crate::sso::cookie_of;
use crate::sso_provider::{node_server, NodeIdp};
use crate::support::*;
use serde_json::{json, Value};

const CLIENT: &str = "toolgate-conn";
const SECRET: &str = "conn-client-secret-b7e1";
const ADMIN_TOKEN: &str = "conn-admin-token";
const STATIC_TOKEN: &str = "coder-static-token";
/// Where toolgate asks the provider to send the browser back (under `--admin-url`).
const ADMIN_URL: &str = "http://admin";
const CALLBACK: &str = "http://admin/connect/callback";
/// The company's identity provider, whose assertions the token-exchange grant takes.
const CORP: &str = "https://corp.example.com";

fn policy(issuer: &str) -> String {
    let sha = sha256_hex(STATIC_TOKEN);
    format!(
        r#"
[[connection]]
name = "github"
authorize_url = "{issuer}/auth"
token_url = "{issuer}/token"
revoke_url = "{issuer}/token/revocation"
client_id = "{CLIENT}"
client_secret_env = "CONN_CLIENT_SECRET"
scopes = ["openid", "repo"]
# The provider's ID token names the account by its subject (the person's email here).
user_claim = "sub"

[[connection]]
name = "github-short"
authorize_url = "{issuer}/auth"
token_url = "{issuer}/token"
client_id = "{CLIENT}"
client_secret_env = "CONN_CLIENT_SECRET"
scopes = ["openid", "repo", "short"]

[[connection]]
name = "github-post"
authorize_url = "{issuer}/auth"
token_url = "{issuer}/token"
client_id = "{CLIENT}-post"
client_secret_env = "CONN_CLIENT_SECRET"
client_auth = "client_secret_post"
scopes = ["openid", "repo", "short"]

[[credential]]
name = "github-post-user"
connection = "github-post"
header = "authorization"
format = "Bearer {{secret}}"

[[tool]]
name = "gh.post"
host = "api.github.test"
method = "GET"
path = "/post/user"
credential = {{ staging = "github-post-user" }}

[[credential]]
name = "github-user"
connection = "github"
header = "authorization"
format = "Bearer {{secret}}"

[[credential]]
name = "github-short-user"
connection = "github-short"
header = "authorization"
format = "Bearer {{secret}}"

[[agent]]
id = "coder"
token_sha256 = "{sha}"
owner = "platform@example.com"
environment = "staging"
tools = ["gh.*"]

[[approver]]
id = "admin@example.com"
token_env = "CONN_ADMIN_TOKEN"
groups = ["admin"]

[[tool]]
name = "gh.user"
host = "api.github.test"
method = "GET"
path = "/user"
credential = {{ staging = "github-user" }}

[[identity_provider]]
name = "corp"
issuer = "{CORP}"
audience = "toolgate"
jwks_file = "corp-jwks.json"

[[credential]]
name = "github-exchanged"
header = "authorization"
format = "Bearer {{secret}}"
exchange = {{ token_url = "{issuer}/token", audience = "github-api", scope = "repo", client_id = "{CLIENT}", client_secret_env = "CONN_CLIENT_SECRET", identity_provider = "corp" }}

[[tool]]
name = "gh.exchanged"
host = "api.github.test"
method = "GET"
path = "/x/user"
credential = {{ staging = "github-exchanged" }}

# The same, at most once a minute per agent.
[[tool]]
name = "gh.exchanged.limited"
host = "api.github.test"
method = "GET"
path = "/x/limited"
rate_limit = "1/minute"
credential = {{ staging = "github-exchanged" }}

[[tool]]
name = "gh.star"
host = "api.github.test"
method = "PUT"
path = "/user/starred/{{owner}}/{{repo}}"
side_effects = "irreversible"
mode = "approve"
idempotency = "payload"
approval = {{ groups = ["admin"], required = 1, send = "on_approval" }}
summary = "Star {{params.owner}}/{{params.repo}}"
rollback = {{ none = "a person unstars it" }}
credential = {{ staging = "github-user" }}

# Both echo the person's token back (a read, and a write that is committed).
[[tool]]
name = "gh.echo.read"
host = "api.github.test"
method = "GET"
path = "/echo/read"
credential = {{ staging = "github-user" }}

[[tool]]
name = "gh.echo.write"
host = "api.github.test"
method = "POST"
path = "/echo/write"
body = {{ format = "json" }}
side_effects = "reversible"
idempotency = "payload"
rollback = {{ none = "a test echo" }}
credential = {{ staging = "github-user" }}

[[tool]]
name = "gh.graphql.viewer"
host = "api.github.test"
path = "/graphql"
graphql = "query.viewer"
credential = {{ staging = "github-user" }}

[[tool]]
name = "gh.mcp.whoami"
host = "api.github.test"
path = "/mcp"
mcp_tool = "whoami"
side_effects = "none"
arguments = "whoami-args.json"
credential = {{ staging = "github-user" }}

[[tool]]
name = "gh.short"
host = "api.github.test"
method = "GET"
path = "/short/user"
credential = {{ staging = "github-short-user" }}
"#
    )
}

/// The authorization server, its API, and toolgate routed to both (and a second replica on
/// the same database, when there is one).
struct World {
    idp: NodeIdp,
    gate: Toolgate,
    replica: Option<Toolgate>,
    /// Signs the company's assertions about people.
    corp: jsonwebtoken::EncodingKey,
    /// Where the provider and the API are, and the PKI of their certificate.
    routes: (u16, std::net::SocketAddr, Pki),
}

async fn world() -> Option<World> {
    world_on(None).await
}

async fn world_on(database: Option<String>) -> Option<World> {
    world_with(database, false).await
}

/// The world, with two replicas on `database` when given (sharing the seal key, `--certs`).
/// For a `browser`, toolgate's links and callback are on its real admin address (no
/// `--admin-url`), which the provider, started after it, sends browsers back to.
async fn world_with(database: Option<String>, browser: bool) -> Option<World> {
    std::env::set_var("CONN_CLIENT_SECRET", SECRET);
    std::env::set_var("CONN_ADMIN_TOKEN", ADMIN_TOKEN);
    let pki = Pki::new("test oauth CA");
    let (corp, jwk) = es256_key("k1");
    let jwks = json!({ "keys": [jwk] }).to_string();
    let env = [
        ("CLIENT_ID", CLIENT.to_string()),
        ("CLIENT_SECRET", SECRET.to_string()),
        ("REDIRECT_URI", CALLBACK.to_string()),
        ("ASSERTION_JWKS", jwks.clone()),
        ("ASSERTION_ISSUER", CORP.to_string()),
    ];
    // The provider's port is named in the policy: held until the provider starts, so that
    // toolgate's own listeners (bound to port 0 meanwhile) cannot take it.
    let reserved = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = reserved.local_addr().unwrap().port();
    let idp_addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let api = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let api_addr = api.local_addr().unwrap();
    let issuer = format!("https://idp.acme.test:{port}");
    let start = |certs: Option<std::path::PathBuf>| {
        let (ca, database, jwks) = (pki.ca_path.clone(), database.clone(), jwks.clone());
        GateBuilder::new()
            .policy("conn.toml", policy(&issuer))
            .policy("corp-jwks.json", jwks)
            .policy("whoami-args.json", r#"{"type": "object"}"#)
            .config(move |c| {
                c.connect_to
                    .insert(("idp.acme.test".into(), port), idp_addr);
                c.connect_to
                    .insert(("api.github.test".into(), 443), api_addr);
                c.upstream_ca.push(ca);
                if !browser {
                    c.admin_url = ADMIN_URL.into();
                }
                c.database_url = database;
                if let Some(certs) = certs {
                    c.certs_dir = certs;
                }
            })
            .start()
    };
    let gate = start(None).await;
    let replica = match &database {
        Some(_) => Some(start(Some(gate.dir.path().join("certs"))).await),
        None => None,
    };
    let mut env = env.to_vec();
    if browser {
        env[2].1 = format!("http://{}/connect/callback", gate.admin_addr);
    }
    env.push(("API_PORT", api_addr.port().to_string()));
    drop((reserved, api));
    let idp = node_server(&pki, "oauth.mjs", port, &env).await?;
    Some(World {
        idp,
        gate,
        replica,
        corp,
        routes: (port, api_addr, pki),
    })
}

impl World {
    /// A token for agent coder acting for `user`.
    async fn token_for(&self, user: &str) -> String {
        let body = json!({"ttl": "1h", "user": user});
        let got = self
            .gate
            .admin(
                "POST",
                "/api/agents/coder/tokens",
                Some(ADMIN_TOKEN),
                Some(body),
            )
            .await;
        assert_eq!(got.status, 201, "{}", got.text());
        got.json()["token"].as_str().unwrap().to_string()
    }

    async fn call_as(&self, token: &str, path: &str, version: http::Version) -> Answer {
        let client = self.gate.client(Some(("coder", token)), version);
        send(
            &client,
            "GET",
            &format!("https://api.github.test{path}"),
            &[],
            "",
        )
        .await
        .unwrap()
    }

    /// A call as agent coder (its static token) with the company's assertion about `email`.
    async fn call_asserted(&self, email: &str, path: &str) -> Answer {
        self.call_asserted_via(&self.gate, email, path).await
    }

    /// [`World::call_asserted`] through `gate` (which mints leaves with the first's CA).
    async fn call_asserted_via(&self, gate: &Toolgate, email: &str, path: &str) -> Answer {
        let now = toolgate::store::now_unix() as i64;
        let claims =
            json!({"iss": CORP, "aud": "toolgate", "email": email, "iat": now, "exp": now + 600});
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some("k1".into());
        let assertion = jsonwebtoken::encode(&header, &claims, &self.corp).unwrap();
        let auth = Some(("coder", STATIC_TOKEN));
        let client = client_via(gate.addr, auth, &self.gate.ca_pem, http::Version::HTTP_11);
        let url = format!("https://api.github.test{path}");
        let headers = [("toolgate-user-assertion", assertion.as_str())];
        send(&client, "GET", &url, &headers, "").await.unwrap()
    }

    async fn control(&self, method: &str, path: &str) -> Value {
        let mut jar = HashMap::new();
        self.idp.send(&mut jar, method, path, None).await.json()
    }

    async fn counts(&self) -> Value {
        self.control("GET", "/_counts").await
    }

    /// The API's log: who each call's token belonged to.
    async fn seen(&self) -> Vec<Value> {
        self.control("GET", "/_seen")
            .await
            .as_array()
            .cloned()
            .unwrap()
    }

    async fn link(&self, user: &str, connection: &str) -> String {
        let body = json!({"user": user, "connection": connection});
        let got = self
            .gate
            .admin(
                "POST",
                "/api/connections/link",
                Some(ADMIN_TOKEN),
                Some(body),
            )
            .await;
        assert_eq!(got.status, 201, "{}", got.text());
        got.json()["link"].as_str().unwrap().to_string()
    }

    /// Opens `link` (as the person's browser), signs `email` in at the provider, consents, and
    /// comes back: toolgate's answer at the callback, and the callback's query.
    async fn connect(&self, link: &str, email: &str) -> (Answer, String) {
        self.connect_via(&self.gate, link, email).await
    }

    /// [`World::connect`] through `gate`.
    async fn connect_via(&self, gate: &Toolgate, link: &str, email: &str) -> (Answer, String) {
        let path = link.strip_prefix(ADMIN_URL).unwrap();
        let opened = gate.page("GET", path, None, None).await;
        assert_eq!(opened.status, 303, "{}", opened.text());
        let binding = cookie_of(&opened, "tg_connect").expect("a binding cookie");
        let authorize = opened.headers["location"].to_str().unwrap().to_string();
        assert!(
            authorize.contains("code_challenge_method=S256"),
            "{authorize}"
        );
        let back = self.idp.sign_in_until(&authorize, email, CALLBACK).await;
        let query = back.split_once('?').unwrap().1.to_string();
        let path = format!("/connect/callback?{query}");
        (gate.page("GET", &path, Some(&binding), None).await, query)
    }

    async fn connections(&self, user: &str) -> Vec<Value> {
        let path = format!("/api/connections?user={user}");
        let got = self.gate.admin("GET", &path, Some(ADMIN_TOKEN), None).await;
        got.json()["connections"].as_array().cloned().unwrap()
    }
}

/// The link a 409 `user_connection_required` carries.
fn link_in(refusal: &Answer) -> String {
    assert_eq!(refusal.status, 409, "{}", refusal.text());
    assert_eq!(refusal.code(), "user_connection_required");
    let message = refusal.message();
    let at = message.find("http://admin/connect/").expect("a link");
    message[at..].split_whitespace().next().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_person_connects_once_and_their_calls_carry_their_own_token() {
    let Some(w) = world().await else {
        return;
    };
    let alice = w.token_for("alice@example.com").await;
    let bob = w.token_for("bob@example.com").await;

    // alice has not connected: refused with a link for her, nothing sent.
    let refused = w.call_as(&alice, "/user", http::Version::HTTP_11).await;
    let link = link_in(&refused);
    assert!(refused
        .message()
        .contains("alice@example.com has not connected github"));
    assert!(w.seen().await.is_empty(), "nothing reached the API");
    // The agent retrying is shown the same link (until it is used).
    let again = w.call_as(&alice, "/user", http::Version::HTTP_11).await;
    assert_eq!(link_in(&again), link);
    let (connected, query) = w.connect(&link, "alice@example.com").await;
    assert_eq!(connected.status, 200, "{}", connected.text());
    assert!(
        connected.text().contains("Connected"),
        "{}",
        connected.text()
    );
    // The link and the provider's answer are good once.
    let again = w
        .gate
        .page("GET", link.strip_prefix(ADMIN_URL).unwrap(), None, None)
        .await;
    assert_eq!(again.status, 410, "{}", again.text());
    let replay = format!("/connect/callback?{query}");
    let replayed = w.gate.page("GET", &replay, None, None).await;
    assert_eq!(replayed.status, 400, "{}", replayed.text());

    let ok = w.call_as(&alice, "/user", http::Version::HTTP_11).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(ok.json()["login"], "alice@example.com");
    // An upstream that echoes alice's token (a read, and a committed write): the agent never
    // sees it, in the body or a header, and neither does the stored outcome.
    let client = w
        .gate
        .client(Some(("coder", alice.as_str())), http::Version::HTTP_11);
    let read = send(&client, "GET", "https://api.github.test/echo/read", &[], "")
        .await
        .unwrap();
    let write = send(
        &client,
        "POST",
        "https://api.github.test/echo/write",
        &[JSON],
        "{}",
    )
    .await
    .unwrap();
    let token = w
        .seen()
        .await
        .iter()
        .rev()
        .find_map(|s| s["token"].as_str().map(str::to_string))
        .unwrap();
    for got in [&read, &write] {
        assert_eq!(got.status, 200, "{}", got.text());
        assert_eq!(got.json()["login"], "alice@example.com");
        let told = format!("{:?} {}", got.headers, got.text());
        assert!(
            !told.contains(&token),
            "the person's token came back: {told}"
        );
    }
    // The same write again: its stored outcome answers, without the token.
    let replayed = send(
        &client,
        "POST",
        "https://api.github.test/echo/write",
        &[JSON],
        "{}",
    )
    .await
    .unwrap();
    assert!(!replayed.text().contains(&token), "{}", replayed.text());
    let echoed = w
        .seen()
        .await
        .iter()
        .filter(|s| s["path"] == "/echo/write")
        .count();
    assert_eq!(echoed, 1, "the write went once");

    let bob_link = link_in(&w.call_as(&bob, "/user", http::Version::HTTP_11).await);
    let (done, _) = w.connect(&bob_link, "bob@example.com").await;
    assert_eq!(done.status, 200, "{}", done.text());
    let ok = w.call_as(&bob, "/user", http::Version::HTTP_2).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(ok.json()["login"], "bob@example.com");
    let users: Vec<Value> = (w.seen().await.iter())
        .filter(|s| s["path"] == "/user")
        .map(|s| s["user"].clone())
        .collect();
    assert_eq!(
        users,
        vec![json!("alice@example.com"), json!("bob@example.com")]
    );

    // carol, over HTTP/2: toolgate's JSON refusal, with a link that works.
    let carol = w.token_for("carol@example.com").await;
    let refused = w.call_as(&carol, "/user", http::Version::HTTP_2).await;
    assert_eq!(refused.version, http::Version::HTTP_2);
    let (done, _) = w.connect(&link_in(&refused), "carol@example.com").await;
    assert_eq!(done.status, 200, "{}", done.text());
    let ok = w.call_as(&carol, "/user", http::Version::HTTP_11).await;
    assert_eq!(ok.json()["login"], "carol@example.com");

    // No person on the call: refused, saying why.
    let anon = w
        .call_as(STATIC_TOKEN, "/user", http::Version::HTTP_11)
        .await;
    assert_eq!(anon.status, 403, "{}", anon.text());
    assert!(
        anon.message().contains("names no person"),
        "{}",
        anon.text()
    );

    // The audit says which connection and scopes served each call, and who linked.
    let used = crate::sso::recorded(&w.gate, ADMIN_TOKEN, "connection.used", 3).await;
    assert_eq!(used[0]["payload"]["connection"], "github");
    assert!(used[0]["payload"]["scopes"].to_string().contains("repo"));
    crate::sso::recorded(&w.gate, ADMIN_TOKEN, "connection.linked", 3).await;

    // bob's connection revoked: toolgate forgets it, the provider is told; his next call is
    // refused with a link to reconnect.
    let body = json!({"user": "bob@example.com", "connection": "github"});
    let revoked = w
        .gate
        .admin(
            "POST",
            "/api/connections/revoke",
            Some(ADMIN_TOKEN),
            Some(body),
        )
        .await;
    assert_eq!(revoked.status, 200, "{}", revoked.text());
    assert_eq!(revoked.json()["provider_refused"], Value::Null);
    let refused = w.call_as(&bob, "/user", http::Version::HTTP_11).await;
    assert_ne!(
        link_in(&refused),
        bob_link,
        "a used link is never offered again"
    );
    assert!(refused.message().contains("revoked"), "{}", refused.text());
    assert_eq!(
        w.connections("bob@example.com").await[0]["state"],
        "revoked"
    );
    let revoked = crate::sso::recorded(&w.gate, ADMIN_TOKEN, "connection.revoked", 1).await;
    assert_eq!(revoked[0]["payload"]["provider"], "revoked the token");
    assert_eq!(revoked[0]["user"], "bob@example.com");

    // The links given in refusals are one-time credentials: answered, never recorded.
    let token_of = |l: &str| l.rsplit('/').next().unwrap().to_string();
    let (first, bobs) = (token_of(&link), token_of(&bob_link));
    no_secret_anywhere(&w, &[SECRET, &query_code(&query), &first, &bobs]).await;
}

fn query_code(query: &str) -> String {
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.into_owned())
        .unwrap()
}

/// No token the API received, no code, no client secret in the data dir, the audit export or
/// the pages.
async fn no_secret_anywhere(w: &World, more: &[&str]) {
    let mut needles: Vec<String> = more.iter().map(|s| s.to_string()).collect();
    for s in w.seen().await {
        if let Some(t) = s["token"].as_str() {
            needles.push(t.to_string());
        }
    }
    let export = w
        .gate
        .admin("GET", "/api/audit/export", Some(ADMIN_TOKEN), None)
        .await;
    let session = w.gate.sign_in(ADMIN_TOKEN).await;
    let page = w
        .gate
        .page("GET", "/connections", Some(&session), None)
        .await;
    assert_eq!(page.status, 200, "{}", page.text());
    let mut files = Vec::new();
    collect(w.gate.dir.path(), &mut files);
    for needle in &needles {
        assert!(
            !export.text().contains(needle.as_str()),
            "the audit export holds a secret"
        );
        assert!(
            !page.text().contains(needle.as_str()),
            "the page holds a secret"
        );
        for f in &files {
            let bytes = std::fs::read(f).unwrap_or_default();
            let found = bytes.windows(needle.len()).any(|w| w == needle.as_bytes());
            assert!(!found, "{} holds a secret", f.display());
        }
    }
}

fn collect(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        match p.is_dir() {
            true => collect(&p, out),
            false => out.push(p),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_two_second_token_is_refreshed_once_for_racing_calls_and_a_dead_grant_breaks_the_connection(
) {
    let Some(w) = world().await else {
        return;
    };
    let alice = w.token_for("alice@example.com").await;
    let link = w.link("alice@example.com", "github-short").await;
    let (done, _) = w.connect(&link, "alice@example.com").await;
    assert_eq!(done.status, 200, "{}", done.text());
    let ok = w
        .call_as(&alice, "/short/user", http::Version::HTTP_11)
        .await;
    assert_eq!(ok.status, 200, "{}", ok.text());

    // Once the token has expired, eight calls at once: one refresh, every call served.
    for round in 0..2 {
        expired(&w, "alice@example.com").await;
        let before = w.counts().await["refresh_token"].as_u64().unwrap_or(0);
        let calls = (0..8).map(|_| w.call_as(&alice, "/short/user", http::Version::HTTP_11));
        for got in futures_util::future::join_all(calls).await {
            assert_eq!(got.status, 200, "round {round}: {}", got.text());
            assert_eq!(got.json()["login"], "alice@example.com");
        }
        let after = w.counts().await["refresh_token"].as_u64().unwrap_or(0);
        assert_eq!(after, before + 1, "round {round}: one refresh");
    }
    crate::sso::recorded(&w.gate, ADMIN_TOKEN, "connection.refreshed", 2).await;

    // The provider ends alice's grant: her refresh token is refused, the connection breaks,
    // and her call is refused with a link to reconnect.
    w.control("POST", "/_break?account=alice%40example.com")
        .await;
    expired(&w, "alice@example.com").await;
    let refused = w
        .call_as(&alice, "/short/user", http::Version::HTTP_11)
        .await;
    let link = link_in(&refused);
    let message = refused.message();
    assert!(
        message.contains("broken") && message.contains("reconnect"),
        "{message}"
    );
    assert!(message.contains("invalid_grant"), "{message}");
    let broken = crate::sso::recorded(&w.gate, ADMIN_TOKEN, "connection.broken", 1).await;
    assert_eq!(broken[0]["user"], "alice@example.com");
    // Reconnecting mends it.
    let (done, _) = w.connect(&link, "alice@example.com").await;
    assert_eq!(done.status, 200, "{}", done.text());
    let ok = w
        .call_as(&alice, "/short/user", http::Version::HTTP_11)
        .await;
    assert_eq!(ok.status, 200, "{}", ok.text());
}

/// Waits until `user`'s github-short token has expired (by the vault's own clock).
async fn expired(w: &World, user: &str) {
    poll::until("the access token expires", poll::SOON, || async {
        let now = toolgate::store::now_unix();
        let all = w.connections(user).await;
        let c = all
            .iter()
            .find(|c| c["connection"] == "github-short")
            .unwrap();
        c["expires_unix"].as_u64().is_some_and(|e| e <= now)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_link_opened_eight_times_at_once_starts_one_authorization() {
    let Some(w) = world().await else {
        return;
    };
    let link = w.link("dave@example.com", "github").await;
    let path = link.strip_prefix(ADMIN_URL).unwrap().to_string();
    let opens = (0..8).map(|_| w.gate.page("GET", &path, None, None));
    let statuses: Vec<u16> = futures_util::future::join_all(opens)
        .await
        .iter()
        .map(|a| a.status.as_u16())
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 303).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 410).count(),
        7,
        "{statuses:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_persons_assertion_is_exchanged_for_their_token_once_and_a_refused_exchange_says_why() {
    let Some(w) = world().await else {
        return;
    };
    let exchanges = |c: Value| c["exchange"].as_u64().unwrap_or(0);
    let ok = w.call_asserted("alice@example.com", "/x/user").await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(ok.json()["login"], "alice@example.com");
    assert_eq!(exchanges(w.counts().await), 1);
    // The second call uses the token kept for alice.
    let again = w.call_asserted("alice@example.com", "/x/user").await;
    assert_eq!(again.json()["login"], "alice@example.com");
    assert_eq!(
        exchanges(w.counts().await),
        1,
        "the exchanged token is reused"
    );
    let bob = w.call_asserted("bob@example.com", "/x/user").await;
    assert_eq!(bob.json()["login"], "bob@example.com");
    assert_eq!(exchanges(w.counts().await), 2);

    // The provider refuses mallory's exchange: refused with its words, nothing sent.
    let before = w.seen().await.len();
    let refused = w.call_asserted("mallory@example.com", "/x/user").await;
    assert_eq!(refused.status, 502, "{}", refused.text());
    assert_eq!(refused.code(), "upstream_error");
    assert!(
        refused.message().contains("invalid_grant"),
        "{}",
        refused.text()
    );
    assert!(
        refused
            .message()
            .contains("may not act through this client"),
        "{}",
        refused.text()
    );
    assert_eq!(w.seen().await.len(), before, "nothing reached the API");

    // A person named by an issued token has no assertion to exchange.
    let carol = w.token_for("carol@example.com").await;
    let refused = w.call_as(&carol, "/x/user", http::Version::HTTP_11).await;
    assert_eq!(refused.status, 403, "{}", refused.text());
    assert!(
        refused.message().contains("issued token"),
        "{}",
        refused.text()
    );

    // A call past its rate limit is refused before toolgate asks the provider for anything.
    let first = w.call_asserted("dave@example.com", "/x/limited").await;
    assert_eq!(first.status, 200, "{}", first.text());
    let before = exchanges(w.counts().await);
    let limited = w.call_asserted("erin@example.com", "/x/limited").await;
    assert_eq!(limited.status, 429, "{}", limited.text());
    assert_eq!(
        exchanges(w.counts().await),
        before,
        "no exchange for a refused call"
    );

    let used = crate::sso::recorded(&w.gate, ADMIN_TOKEN, "connection.used", 3).await;
    assert_eq!(used[0]["payload"]["exchange"], "github-exchanged");
    no_secret_anywhere(&w, &[SECRET]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_connection_made_through_one_replica_serves_the_other_and_is_refreshed_once() {
    let Some(cluster) = crate::support::pg::Cluster::start("connections::replicas") else {
        return;
    };
    let Some(w) = world_on(Some(cluster.url.clone())).await else {
        return;
    };
    let b = w.replica.as_ref().unwrap();
    let alice = w.token_for("alice@example.com").await;
    // The link is made on replica A, opened and finished on replica B.
    let link = w.link("alice@example.com", "github-short").await;
    let (done, _) = w.connect_via(b, &link, "alice@example.com").await;
    assert_eq!(done.status, 200, "{}", done.text());
    // Both replicas mint leaves with the shared CA (A's).
    let via = |gate: &Toolgate| {
        client_via(
            gate.addr,
            Some(("coder", &alice)),
            &w.gate.ca_pem,
            http::Version::HTTP_11,
        )
    };
    for gate in [&w.gate, b] {
        let client = via(gate);
        let got = send(
            &client,
            "GET",
            "https://api.github.test/short/user",
            &[],
            "",
        )
        .await
        .unwrap();
        assert_eq!(got.status, 200, "{}", got.text());
        assert_eq!(got.json()["login"], "alice@example.com");
    }
    // Expired: eight calls, four on each replica, at once: one refresh in all.
    expired(&w, "alice@example.com").await;
    let before = w.counts().await["refresh_token"].as_u64().unwrap_or(0);
    let calls = (0..8).map(|i| {
        let client = via(if i % 2 == 0 { &w.gate } else { b });
        async move {
            send(
                &client,
                "GET",
                "https://api.github.test/short/user",
                &[],
                "",
            )
            .await
            .unwrap()
        }
    });
    for got in futures_util::future::join_all(calls).await {
        assert_eq!(got.status, 200, "{}", got.text());
    }
    let after = w.counts().await["refresh_token"].as_u64().unwrap_or(0);
    assert_eq!(after, before + 1, "one refresh across both replicas");

    // A token exchanged on one replica is reused by the other.
    let first = w
        .call_asserted_via(&w.gate, "erin@example.com", "/x/user")
        .await;
    assert_eq!(first.json()["login"], "erin@example.com");
    let second = w.call_asserted_via(b, "erin@example.com", "/x/user").await;
    assert_eq!(second.json()["login"], "erin@example.com");
    assert_eq!(
        w.counts().await["exchange"],
        1,
        "one exchange for both replicas"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn alice_connects_in_a_real_browser_and_her_call_carries_her_token() {
    let Some((browser_dir, chromium)) = browser() else {
        return;
    };
    let Some(w) = world_with(None, true).await else {
        return;
    };
    let alice = w.token_for("alice@example.com").await;
    let refused = w.call_as(&alice, "/user", http::Version::HTTP_11).await;
    assert_eq!(
        refused.code(),
        "user_connection_required",
        "{}",
        refused.text()
    );
    // Without --admin-url the link is a path on the admin listener.
    let message = refused.message();
    let at = message.find("/connect/").expect("a link");
    let path = message[at..].split_whitespace().next().unwrap();
    let link = format!("http://{}{path}", w.gate.admin_addr);
    let out = tokio::process::Command::new("node")
        .arg(browser_dir.join("connect.mjs"))
        .args([link.as_str(), "alice@example.com"])
        .env("CHROMIUM", &chromium)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(std::time::Duration::from_secs(90), out)
        .await
        .expect("the browser script finished")
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("CONNECTED") && text.contains("alice@example.com can now use github"),
        "{text}"
    );
    assert!(
        text.contains("AGAIN") && text.contains("used already"),
        "{text}"
    );
    let ok = w.call_as(&alice, "/user", http::Version::HTTP_11).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(ok.json()["login"], "alice@example.com");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_approved_call_is_sent_with_the_persons_token_as_it_is_at_approval() {
    let Some(w) = world().await else {
        return;
    };
    let star = |token: String, repo: &'static str| {
        let client = w
            .gate
            .client(Some(("coder", &token)), http::Version::HTTP_11);
        async move {
            let url = format!("https://api.github.test/user/starred/acme/{repo}");
            send(&client, "PUT", &url, &[], "").await.unwrap()
        }
    };
    let gate = &w.gate;
    let approve = |id: String| async move {
        let path = format!("/api/proposals/{id}/approve");
        let body = json!({"comment": "ok"});
        gate.admin("POST", &path, Some(ADMIN_TOKEN), Some(body))
            .await
    };
    // alice's call is held (no token needed yet); she connects; the approval sends it with
    // her token.
    let alice = w.token_for("alice@example.com").await;
    let held = star(alice.clone(), "one").await;
    assert_eq!(held.status, 423, "{}", held.text());
    let id = held.json()["error"]["proposal"]
        .as_str()
        .unwrap()
        .to_string();
    let link = w.link("alice@example.com", "github").await;
    assert_eq!(w.connect(&link, "alice@example.com").await.0.status, 200);
    let approved = approve(id.clone()).await;
    assert_eq!(approved.status, 200, "{}", approved.text());
    poll::until(
        "alice's starred call reaches the API",
        poll::SOON,
        || async {
            w.seen()
                .await
                .iter()
                .any(|s| s["path"] == "/user/starred/acme/one")
        },
    )
    .await;
    let seen = w.seen().await;
    let sent = seen
        .iter()
        .find(|s| s["path"] == "/user/starred/acme/one")
        .unwrap();
    assert_eq!(sent["user"], "alice@example.com");
    let used = crate::sso::recorded(&w.gate, ADMIN_TOKEN, "connection.used", 1).await;
    assert!(
        used.iter().any(|e| e["proposal"] == id.as_str()),
        "{used:?}"
    );

    // bob's call, approved while he has no connection: nothing is sent.
    let bob = w.token_for("bob@example.com").await;
    let held = star(bob, "two").await;
    let id = held.json()["error"]["proposal"]
        .as_str()
        .unwrap()
        .to_string();
    let answer = approve(id.clone()).await;
    let text = answer.text();
    assert!(
        text.contains("user_connection_required") || text.contains("has not connected"),
        "{text}"
    );
    // The person's one-time link is the agent's to show: never the approver's answer, the
    // log's or the audit's (anyone reading them could connect an account in bob's name).
    let export = w
        .gate
        .admin("GET", "/api/audit/export", Some(ADMIN_TOKEN), None)
        .await
        .text();
    for told in [&text, &export] {
        for (i, _) in told.match_indices("/connect/") {
            let rest = &told[i + "/connect/".len()..];
            assert!(
                rest.starts_with("[link not recorded]") || rest.starts_with("callback"),
                "a link leaked: {}",
                &told[i..(i + 60).min(told.len())]
            );
        }
    }
    assert!(!w
        .seen()
        .await
        .iter()
        .any(|s| s["path"] == "/user/starred/acme/two"));
}

/// A page of the admin listener at `admin` (as a browser sends it, Host `admin`).
async fn page_at(admin: &str, path: &str, cookie: Option<&str>) -> Answer {
    let mut req = http::Request::builder()
        .method("GET")
        .uri(path)
        .header("host", "admin");
    if let Some(c) = cookie {
        req = req.header("cookie", c);
    }
    let req = req
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let tcp = tokio::net::TcpStream::connect(admin).await.unwrap();
    http1_over(tcp, req).await
}

/// The toolgate binary at debug level, with a person connecting, calling, and refreshing:
/// neither its log nor its data dir holds a token, a code or the client secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_binarys_log_at_debug_holds_no_token_code_or_secret() {
    let pki = Pki::new("test oauth CA");
    let reserved = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = reserved.local_addr().unwrap().port();
    let issuer = format!("https://idp.acme.test:{port}");
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    let (_corp, jwk) = es256_key("k1");
    let jwks = json!({ "keys": [jwk] }).to_string();
    std::fs::write(policies.join("conn.toml"), policy(&issuer)).unwrap();
    std::fs::write(policies.join("corp-jwks.json"), &jwks).unwrap();
    std::fs::write(policies.join("whoami-args.json"), r#"{"type": "object"}"#).unwrap();
    let api = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let api_port = api.local_addr().unwrap().port();
    let env = [
        ("CLIENT_ID", CLIENT.to_string()),
        ("CLIENT_SECRET", SECRET.to_string()),
        ("REDIRECT_URI", CALLBACK.to_string()),
        ("ASSERTION_JWKS", jwks),
        ("API_PORT", api_port.to_string()),
    ];
    drop((reserved, api));
    let Some(idp) = node_server(&pki, "oauth.mjs", port, &env).await else {
        return;
    };
    let mut cmd = process::serve_command(env!("CARGO_BIN_EXE_toolgate"), dir.path());
    cmd.args(["--admin-url", ADMIN_URL, "--upstream-ca"])
        .arg(&pki.ca_path)
        .args([
            "--connect-to",
            &format!("idp.acme.test:{port}=127.0.0.1:{port}"),
        ])
        .args([
            "--connect-to",
            &format!("api.github.test:443=127.0.0.1:{api_port}"),
        ])
        .env("CONN_CLIENT_SECRET", SECRET)
        .env("CONN_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("RUST_LOG", "debug");
    let (mut child, proxy, admin, log) = process::start_command(cmd);
    let admin_addr: std::net::SocketAddr = admin.parse().unwrap();
    let body = json!({"ttl": "1h", "user": "alice@example.com"});
    let issued = admin_at(
        admin_addr,
        "POST",
        "/api/agents/coder/tokens",
        Some(ADMIN_TOKEN),
        Some(body),
    )
    .await;
    let alice = issued.json()["token"].as_str().unwrap().to_string();
    let ca = std::fs::read_to_string(dir.path().join("certs/ca.pem")).unwrap();
    let client = client_via(proxy, Some(("coder", &alice)), &ca, http::Version::HTTP_11);
    let call = || {
        send(
            &client,
            "GET",
            "https://api.github.test/short/user",
            &[],
            "",
        )
    };
    let refused = call().await.unwrap();
    let link = link_in(&refused);
    // The person connects (the link, the provider's forms, the callback).
    let opened = page_at(&admin, link.strip_prefix(ADMIN_URL).unwrap(), None).await;
    let binding = cookie_of(&opened, "tg_connect").unwrap();
    let authorize = opened.headers["location"].to_str().unwrap().to_string();
    let back = idp
        .sign_in_until(&authorize, "alice@example.com", CALLBACK)
        .await;
    let query = back.split_once('?').unwrap().1.to_string();
    let done = page_at(
        &admin,
        &format!("/connect/callback?{query}"),
        Some(&binding),
    )
    .await;
    assert_eq!(done.status, 200, "{}", done.text());
    // A call, then (the 2 s token expired) a refreshed call.
    assert_eq!(call().await.unwrap().status, 200);
    let mut jar = HashMap::new();
    poll::until("a refresh", poll::SOON, || async {
        assert_eq!(call().await.unwrap().status, 200);
        let counts = idp
            .send(&mut jar.clone(), "GET", "/_counts", None)
            .await
            .json();
        counts["refresh_token"].as_u64().unwrap_or(0) >= 1
    })
    .await;
    let seen = idp.send(&mut jar, "GET", "/_seen", None).await.json();
    let mut needles = vec![
        SECRET.to_string(),
        query_code(&query),
        link.rsplit('/').next().unwrap().to_string(),
    ];
    for s in seen.as_array().unwrap() {
        needles.extend(s["token"].as_str().map(str::to_string));
    }
    assert!(needles.len() >= 5, "two tokens at least: {needles:?}");
    process::signal(child.0.id(), "-TERM");
    process::exited(
        &mut child,
        "toolgate stops",
        std::time::Duration::from_secs(20),
    )
    .await;
    let log = log.join().unwrap().join("\n");
    assert!(
        log.contains("\"level\":\"DEBUG\""),
        "the log is at debug level"
    );
    let mut files = Vec::new();
    collect(dir.path(), &mut files);
    for needle in &needles {
        assert!(!log.contains(needle.as_str()), "the log holds a secret");
        for f in &files {
            let bytes = std::fs::read(f).unwrap_or_default();
            let found = bytes.windows(needle.len()).any(|w| w == needle.as_bytes());
            assert!(!found, "{} holds a secret", f.display());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_command_line_links_lists_and_revokes_connections() {
    let Some(w) = world().await else {
        return;
    };
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_toolgate"))
            .arg("connections")
            .args(args)
            .args(["--server", &format!("http://{}", w.gate.admin_addr)])
            .env("TOOLGATE_TOKEN", ADMIN_TOKEN)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.success(), text, err)
    };
    let (ok, link, _) = cli(&["link", "alice@example.com", "github", "--ttl", "5m"]);
    assert!(ok && link.starts_with("http://admin/connect/"), "{link}");
    let (done, _) = w.connect(link.trim(), "alice@example.com").await;
    assert_eq!(done.status, 200, "{}", done.text());
    let (ok, list, _) = cli(&["list", "--user", "alice@example.com"]);
    assert!(
        ok && list.contains("alice@example.com  github  live  scopes openid repo"),
        "{list}"
    );
    let (ok, said, _) = cli(&["revoke", "alice@example.com", "github"]);
    assert!(
        ok && said.contains("revoked alice@example.com's connection github"),
        "{said}"
    );
    let (_, list, _) = cli(&["list"]);
    assert!(list.contains("github  revoked"), "{list}");
    // bob connects; the page revokes his connection (its form, with the session's CSRF token).
    let bob_link = w.link("bob@example.com", "github").await;
    assert_eq!(w.connect(&bob_link, "bob@example.com").await.0.status, 200);
    let session = w.gate.sign_in(ADMIN_TOKEN).await;
    let page = w
        .gate
        .page("GET", "/connections", Some(&session), None)
        .await;
    assert!(page.text().contains("bob@example.com"), "{}", page.text());
    let csrf = csrf_of(&page.text());
    let form = format!("csrf={csrf}&user=bob%40example.com&connection=github");
    let posted = w
        .gate
        .page("POST", "/connections/revoke", Some(&session), Some(form))
        .await;
    assert_eq!(posted.status, 303, "{}", posted.text());
    let forged = "csrf=nope&user=alice%40example.com&connection=github".to_string();
    let refused = w
        .gate
        .page("POST", "/connections/revoke", Some(&session), Some(forged))
        .await;
    assert_eq!(refused.status, 403, "{}", refused.text());
    assert_eq!(
        w.connections("bob@example.com").await[0]["state"],
        "revoked"
    );
    // Refused with the reason: an unknown connection, a link of a week and more.
    let (ok, _, err) = cli(&["link", "alice@example.com", "gitlab"]);
    assert!(
        !ok && err.contains("no [[connection]] is named \"gitlab\""),
        "{err}"
    );
    let (ok, _, err) = cli(&["link", "alice@example.com", "github", "--ttl", "8d"]);
    assert!(!ok && err.contains("at most 7d"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_connection_made_on_sled_is_moved_to_the_database_by_db_import() {
    let Some(cluster) = crate::support::pg::Cluster::start("connections::import") else {
        return;
    };
    let Some(w) = world().await else {
        return;
    };
    let alice = w.token_for("alice@example.com").await;
    let link = w.link("alice@example.com", "github").await;
    assert_eq!(w.connect(&link, "alice@example.com").await.0.status, 200);
    let World {
        idp, gate, routes, ..
    } = w;
    let dir = gate.into_dir().await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_toolgate"))
        .args(["db", "import", "--database-url", &cluster.url, "--data-dir"])
        .arg(dir.path().join("data"))
        .arg("--certs")
        .arg(dir.path().join("certs"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && text.contains("1 connections"),
        "{text}"
    );
    let (port, api_addr, pki) = routes;
    let (url, ca) = (cluster.url.clone(), pki.ca_path.clone());
    let replica = GateBuilder::reopen(dir)
        .config(move |c| {
            let idp_addr = ([127, 0, 0, 1], port).into();
            c.connect_to
                .insert(("idp.acme.test".into(), port), idp_addr);
            c.connect_to
                .insert(("api.github.test".into(), 443), api_addr);
            c.upstream_ca.push(ca);
            c.admin_url = ADMIN_URL.into();
            c.database_url = Some(url);
        })
        .start()
        .await;
    let client = replica.client(Some(("coder", &alice)), http::Version::HTTP_11);
    let got = send(&client, "GET", "https://api.github.test/user", &[], "")
        .await
        .unwrap();
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.json()["login"], "alice@example.com");
    drop(idp);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_provider_that_takes_the_secret_in_the_form_links_and_refreshes() {
    let Some(w) = world().await else {
        return;
    };
    let alice = w.token_for("alice@example.com").await;
    let link = w.link("alice@example.com", "github-post").await;
    let (done, _) = w.connect(&link, "alice@example.com").await;
    assert_eq!(done.status, 200, "{}", done.text());
    let before = w.counts().await["refresh_token"].as_u64().unwrap_or(0);
    poll::until(
        "a refresh with the secret in the form",
        poll::SOON,
        || async {
            let got = w
                .call_as(&alice, "/post/user", http::Version::HTTP_11)
                .await;
            assert_eq!(got.status, 200, "{}", got.text());
            w.counts().await["refresh_token"].as_u64().unwrap_or(0) > before
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_graphql_field_with_a_per_user_credential_carries_the_persons_token() {
    let Some(w) = world().await else {
        return;
    };
    let alice = w.token_for("alice@example.com").await;
    let client = w
        .gate
        .client(Some(("coder", &alice)), http::Version::HTTP_2);
    let query = json!({"query": "{ viewer { login } }"}).to_string();
    let ask = || {
        send(
            &client,
            "POST",
            "https://api.github.test/graphql",
            &[JSON],
            query.clone(),
        )
    };
    let refused = ask().await.unwrap();
    assert_eq!(refused.status, 409, "{}", refused.text());
    assert!(
        refused.text().contains("user_connection_required"),
        "{}",
        refused.text()
    );
    assert!(refused.text().contains("/connect/"), "{}", refused.text());
    let link = w.link("alice@example.com", "github").await;
    assert_eq!(w.connect(&link, "alice@example.com").await.0.status, 200);
    let ok = ask().await.unwrap();
    assert_eq!(ok.status, 200, "{}", ok.text());
    let seen = w.seen().await;
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(
        (seen[0]["path"].as_str(), seen[0]["user"].as_str()),
        (Some("/graphql"), Some("alice@example.com"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_mcp_tool_with_a_per_user_credential_carries_the_persons_token() {
    let Some(w) = world().await else {
        return;
    };
    let alice = w.token_for("alice@example.com").await;
    let client = w
        .gate
        .client(Some(("coder", &alice)), http::Version::HTTP_11);
    let post = |message: Value, session: Option<String>| {
        let client = client.clone();
        async move {
            let mut headers = vec![JSON, ("accept", "application/json, text/event-stream")];
            if let Some(s) = &session {
                headers.push(("mcp-session-id", s.as_str()));
            }
            let url = "https://api.github.test/mcp";
            send(&client, "POST", url, &headers, message.to_string())
                .await
                .unwrap()
        }
    };
    let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}});
    // Before alice connects even the session cannot open: the server takes only her token.
    let refused = post(init.clone(), None).await;
    assert!(
        refused.text().contains("user_connection_required"),
        "{}",
        refused.text()
    );
    assert!(refused.text().contains("/connect/"), "{}", refused.text());
    let link = w.link("alice@example.com", "github").await;
    assert_eq!(w.connect(&link, "alice@example.com").await.0.status, 200);
    let opened = post(init, None).await;
    assert_eq!(opened.status, 200, "{}", opened.text());
    let session = opened.headers["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_string();
    let call = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                      "params": {"name": "whoami", "arguments": {}}});
    let got = post(call, Some(session)).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(
        got.json()["result"]["content"][0]["text"],
        "alice@example.com"
    );
    let users: Vec<Value> = w.seen().await.iter().map(|s| s["user"].clone()).collect();
    assert_eq!(
        users,
        vec![json!("alice@example.com"); 2],
        "initialize and the call"
    );
    // Each names the connection that served it in the audit, never the token.
    let used = crate::sso::recorded(&w.gate, ADMIN_TOKEN, "connection.used", 2).await;
    assert!(
        used.iter().all(|e| e["user"] == "alice@example.com"),
        "{used:?}"
    );
}

/// A person's link opened by someone else (the agent it was shown to, anyone it was forwarded
/// to) connects nothing: the account the provider signed in must be the person's.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_persons_link_opened_by_someone_else_connects_nothing() {
    let Some(w) = world().await else {
        return;
    };
    let alice = w.token_for("alice@example.com").await;
    let link = link_in(&w.call_as(&alice, "/user", http::Version::HTTP_11).await);
    let (answer, _) = w.connect(&link, "mallory@example.com").await;
    assert_eq!(answer.status, 400, "{}", answer.text());
    assert!(
        answer
            .text()
            .contains("the account signed in at the provider is mallory@example.com"),
        "{}",
        answer.text()
    );
    // alice has still not connected; nothing reached the API in her name.
    let again = w.call_as(&alice, "/user", http::Version::HTTP_11).await;
    assert_eq!(again.status, 409, "{}", again.text());
    assert!(w.seen().await.is_empty());
    assert!(w.connections("alice@example.com").await.is_empty());
    let refused = crate::sso::recorded(&w.gate, ADMIN_TOKEN, "connection.refused", 1).await;
    assert_eq!(refused[0]["user"], "alice@example.com");
    // Her own sign-in through a new link connects her.
    let (done, _) = w.connect(&link_in(&again), "alice@example.com").await;
    assert_eq!(done.status, 200, "{}", done.text());
    let ok = w.call_as(&alice, "/user", http::Version::HTTP_11).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    // The "Connected" page gives her her own link to disconnect: looking at it changes
    // nothing; confirming it revokes the connection, once.
    let page = done.text();
    let at = page
        .find("/connect/disconnect/")
        .expect("a disconnect link");
    let path: String = page[at..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || "/-_".contains(*c))
        .collect();
    let asked = w.gate.page("GET", &path, None, None).await;
    assert_eq!(asked.status, 200, "{}", asked.text());
    assert!(
        asked
            .text()
            .contains("Disconnect github from alice@example.com"),
        "{}",
        asked.text()
    );
    assert_eq!(
        w.call_as(&alice, "/user", http::Version::HTTP_11)
            .await
            .status,
        200
    );
    let gone = w.gate.page("POST", &path, None, None).await;
    assert_eq!(gone.status, 200, "{}", gone.text());
    assert!(gone.text().contains("Disconnected"), "{}", gone.text());
    let after = w.call_as(&alice, "/user", http::Version::HTTP_11).await;
    assert_eq!(after.status, 409, "{}", after.text());
    let revoked = crate::sso::recorded(&w.gate, ADMIN_TOKEN, "connection.revoked", 1).await;
    assert_eq!(revoked[0]["payload"]["by"], "alice@example.com");
    assert_eq!(w.gate.page("POST", &path, None, None).await.status, 410);
}
