//! Acting for a person (DESIGN section 16), over real sockets: the person a call acts for is
//! named by a signed assertion (verified against a JWKS) or by a token issued for them; a bad
//! assertion is refused with nothing sent; every event of the call names the person; rules read
//! `user`; a person may not approve a call made for them; the assertion never goes upstream.

use crate::support::es256_key as key;
use crate::support::*;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const ISSUER: &str = "https://idp.acme.test";
const GRAPHQL: &str = "https://api.github.com/graphql";
const HELPDESK_TOKEN: &str = "helpdesk-test-token";

fn assertion(key: &EncodingKey, email: &str, groups: &[&str], exp_in: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let claims = json!({"iss": ISSUER, "aud": "toolgate", "email": email, "groups": groups,
                        "iat": now, "exp": now + exp_in});
    let mut header = Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some("k1".into());
    jsonwebtoken::encode(&header, &claims, key).unwrap()
}

fn people_policy() -> String {
    let sha = hex::encode(Sha256::digest(HELPDESK_TOKEN.as_bytes()));
    format!(
        r#"
[[identity_provider]]
name = "acme-sso"
issuer = "{ISSUER}"
audience = "toolgate"
jwks_file = "acme-jwks.json"
groups_claim = "groups"

[[agent]]
id = "helpdesk-bot"
token_sha256 = "{sha}"
owner = "ops@example.com"
environment = "staging"
tools = ["github.graphql.*", "github.issues.*"]
attrs = {{ github_org = "acme" }}
users = "required"

# alice approves platform changes, and asks the helpdesk bot for some.
[[approver]]
id = "alice@example.com"
token_env = "ALICE_APPROVER_TOKEN"
groups = ["platform-leads"]

[[tool]]
name = "github.graphql.organization"
host = "api.github.com"
path = "/graphql"
graphql = "query.organization"
arguments = "org-args.json"
credential = {{ staging = "github" }}
rules = [{{ deny_if = '!("support" in user.groups)', message = "only people in group support may read the organisation through the helpdesk bot" }}]
"#
    )
}

fn body(query: &str) -> String {
    json!({ "query": query }).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_person_a_call_acts_for_is_verified_recorded_and_judged() {
    std::env::set_var("ALICE_APPROVER_TOKEN", "alice-approver-token");
    let (signing, jwk) = key("k1");
    let (stranger, _) = key("k1");
    let (_pki, upstream, gate) = GateBuilder::examples()
        .policy("people.toml", people_policy())
        .policy("acme-jwks.json", json!({ "keys": [jwk] }).to_string())
        .policy(
            "org-args.json",
            r#"{"type": "object", "properties": {"login": {"type": "string"}}}"#,
        )
        .with_upstream()
        .await;
    let bot = gate.client(
        Some(("helpdesk-bot", HELPDESK_TOKEN)),
        http::Version::HTTP_11,
    );
    let read = body("{ viewer { login } }");
    let as_alice = assertion(&signing, "alice@example.com", &["support"], 600);

    // No person: refused. A bad assertion: refused, saying why. Nothing is sent.
    let bad = [
        (None, "acts for people"),
        (
            Some(assertion(&signing, "alice@example.com", &[], -3600)),
            "expired",
        ),
        (
            Some(assertion(&stranger, "alice@example.com", &[], 600)),
            "signature",
        ),
        (Some("not-a-jwt".to_string()), "not a JWT"),
    ];
    for (sent, why) in bad {
        let mut headers = vec![JSON];
        if let Some(a) = &sent {
            headers.push(("toolgate-user-assertion", a.as_str()));
        }
        let got = send(&bot, "POST", GRAPHQL, &headers, read.clone())
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&got.body).to_string();
        assert_eq!(got.status.as_u16(), 401, "{why}: {text}");
        assert!(
            text.contains("auth_error") && text.contains(why),
            "{why}: {text}"
        );
    }
    // Over HTTP/2 too, the refusal arrives as toolgate's answer, not a reset stream.
    let h2 = gate.client(
        Some(("helpdesk-bot", HELPDESK_TOKEN)),
        http::Version::HTTP_2,
    );
    let got = send(&h2, "POST", GRAPHQL, &[JSON], read.clone())
        .await
        .unwrap();
    assert_eq!(got.version, http::Version::HTTP_2);
    assert_eq!(got.status.as_u16(), 401);
    assert_eq!(
        got.code(),
        "auth_error",
        "{}",
        String::from_utf8_lossy(&got.body)
    );
    assert_eq!(
        upstream.count(),
        0,
        "nothing was sent for a call without its person"
    );

    // alice's read goes through; the assertion never goes upstream.
    let headers = [JSON, ("toolgate-user-assertion", as_alice.as_str())];
    let got = send(&bot, "POST", GRAPHQL, &headers, read.clone())
        .await
        .unwrap();
    assert_eq!(
        got.status.as_u16(),
        200,
        "{}",
        String::from_utf8_lossy(&got.body)
    );
    let request_id = got.headers["toolgate-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let seen = upstream.received();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].headers.get("toolgate-user-assertion").is_none());

    // A rule over user.groups: bob is not in support.
    let as_bob = assertion(&signing, "bob@example.com", &["sales"], 600);
    let org = body("{ organization(login: \"acme\") { name } }");
    let headers = [JSON, ("toolgate-user-assertion", as_bob.as_str())];
    let got = send(&bot, "POST", GRAPHQL, &headers, org.clone())
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&got.body).contains("only people in group support"));
    let headers = [JSON, ("toolgate-user-assertion", as_alice.as_str())];
    let got = send(&bot, "POST", GRAPHQL, &headers, org).await.unwrap();
    assert_eq!(
        got.status.as_u16(),
        200,
        "{}",
        String::from_utf8_lossy(&got.body)
    );
    assert_eq!(upstream.count(), 2);

    // Every event of alice's read names her; the search by person finds them; the story says so.
    let search = poll::until_some("alice's events are searchable", poll::SOON, || async {
        let got = gate
            .admin(
                "GET",
                "/api/audit/search?user=alice@example.com",
                Some("demo-riley-token"),
                None,
            )
            .await;
        let text = got.text();
        (text.contains(&request_id) && text.contains("\"response\"")).then_some(got)
    })
    .await;
    let events = search.json()["events"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let of_read: Vec<&Value> = events
        .iter()
        .filter(|e| e["request_id"] == request_id.as_str())
        .collect();
    assert!(!of_read.is_empty(), "{}", search.text());
    assert!(of_read.iter().all(|e| e["user"] == "alice@example.com"));
    assert!(
        !search.text().contains(&as_alice),
        "the assertion is never recorded"
    );
    let story = gate
        .admin(
            "GET",
            &format!("/api/audit/story/{request_id}"),
            Some("demo-riley-token"),
            None,
        )
        .await;
    assert!(
        story.text().contains("helpdesk-bot for alice@example.com"),
        "{}",
        story.text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_issued_for_a_person_acts_for_them_and_they_may_not_approve_it() {
    std::env::set_var("ALICE_APPROVER_TOKEN", "alice-approver-token");
    let (signing, jwk) = key("k1");
    let (_pki, upstream, gate) = GateBuilder::examples()
        .policy("people.toml", people_policy())
        .policy("acme-jwks.json", json!({ "keys": [jwk] }).to_string())
        .policy("org-args.json", r#"{"type": "object"}"#)
        .with_upstream()
        .await;
    let issued = gate
        .admin(
            "POST",
            "/api/agents/helpdesk-bot/tokens",
            Some("demo-dave-token"),
            Some(json!({"ttl": "15m", "user": "alice@example.com"})),
        )
        .await;
    assert_eq!(issued.status, 201, "{}", issued.text());
    assert_eq!(issued.json()["user"], "alice@example.com");
    let token = issued.json()["token"].as_str().unwrap().to_string();
    let bot = gate.client(Some(("helpdesk-bot", &token)), http::Version::HTTP_11);
    // The token acts for alice: an assertion naming bob on it is refused, nothing sent.
    let as_bob = assertion(&signing, "bob@example.com", &[], 600);
    let headers = [JSON, ("toolgate-user-assertion", as_bob.as_str())];
    let got = send(
        &bot,
        "POST",
        GRAPHQL,
        &headers,
        body("{ viewer { login } }"),
    )
    .await
    .unwrap();
    assert_eq!(got.status.as_u16(), 401);
    assert!(String::from_utf8_lossy(&got.body).contains("issued for alice@example.com"));
    // A deleteRef for alice is held; alice may not approve it, dave may.
    let delete = body("mutation { deleteRef(input: {refId: \"REF_9\"}) { clientMutationId } }");
    let got = send(&bot, "POST", GRAPHQL, &[JSON], delete.clone())
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&got.body).to_string();
    assert_eq!(got.status.as_u16(), 423, "{text}");
    let proposal = got.json()["errors"][0]["extensions"]["proposal"]
        .as_str()
        .unwrap()
        .to_string();
    let listed = gate
        .admin(
            "GET",
            &format!("/api/proposals/{proposal}"),
            Some("demo-dave-token"),
            None,
        )
        .await;
    assert_eq!(
        listed.json()["user"],
        "alice@example.com",
        "{}",
        listed.text()
    );
    let path = format!("/api/proposals/{proposal}/approve");
    let by_alice = gate
        .admin(
            "POST",
            &path,
            Some("alice-approver-token"),
            Some(json!({"comment": "mine"})),
        )
        .await;
    assert_eq!(by_alice.status, 403, "{}", by_alice.text());
    assert!(
        by_alice.text().contains("made for themselves"),
        "{}",
        by_alice.text()
    );
    let by_dave = gate
        .admin(
            "POST",
            &path,
            Some("demo-dave-token"),
            Some(json!({"comment": "ok"})),
        )
        .await;
    assert_eq!(by_dave.status, 200, "{}", by_dave.text());
    let sent = send(&bot, "POST", GRAPHQL, &[JSON], delete).await.unwrap();
    assert_eq!(
        sent.status.as_u16(),
        200,
        "{}",
        String::from_utf8_lossy(&sent.body)
    );
    assert_eq!(upstream.count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undo_acts_for_the_person_the_call_acted_for() {
    std::env::set_var("ALICE_APPROVER_TOKEN", "alice-approver-token");
    let (signing, jwk) = key("k1");
    let (pki, fakes) = example_apis().await;
    let gate = GateBuilder::examples()
        .policy("people.toml", people_policy())
        .policy("acme-jwks.json", json!({ "keys": [jwk] }).to_string())
        .policy("org-args.json", r#"{"type": "object"}"#)
        .routed_to(&pki, fakes.addr)
        .start()
        .await;
    let bot = gate.client(
        Some(("helpdesk-bot", HELPDESK_TOKEN)),
        http::Version::HTTP_11,
    );
    let as_alice = assertion(&signing, "alice@example.com", &["support"], 600);
    // Two assertions on one call: refused.
    let twice = [
        JSON,
        ("toolgate-user-assertion", as_alice.as_str()),
        ("toolgate-user-assertion", as_alice.as_str()),
    ];
    let issue = json!({"title": "Printer on fire"}).to_string();
    let url = "https://api.github.com/repos/acme/widgets/issues";
    let got = send(&bot, "POST", url, &twice, issue.clone())
        .await
        .unwrap();
    assert_eq!(
        got.status.as_u16(),
        401,
        "{}",
        String::from_utf8_lossy(&got.body)
    );
    let headers = [JSON, ("toolgate-user-assertion", as_alice.as_str())];
    let created = send(&bot, "POST", url, &headers, issue).await.unwrap();
    assert_eq!(
        created.status.as_u16(),
        201,
        "{}",
        String::from_utf8_lossy(&created.body)
    );
    let rid = created.headers["toolgate-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let undone = gate
        .admin(
            "POST",
            &format!("/api/rollback/{rid}"),
            Some("demo-dave-token"),
            None,
        )
        .await;
    assert_eq!(undone.status, 200, "{}", undone.text());
    assert_eq!(undone.json()["outcome"], "undone", "{}", undone.text());
    let events = poll::until_some("the rollback event", poll::SOON, || async {
        let got = gate
            .admin(
                "GET",
                "/api/audit/search?user=alice@example.com",
                Some("demo-riley-token"),
                None,
            )
            .await
            .json();
        let events = got["events"].as_array().cloned().unwrap_or_default();
        events
            .iter()
            .any(|e| e["kind"] == "rollback")
            .then_some(events)
    })
    .await;
    let undo_request = events
        .iter()
        .find(|e| e["kind"] == "rollback")
        .and_then(|e| e["payload"]["undo_request"].as_str())
        .unwrap()
        .to_string();
    assert!(
        events
            .iter()
            .any(|e| e["request_id"] == undo_request.as_str()),
        "the undo's own events name alice"
    );
}

/// An identity provider's `jwks_uri` on loopback (HTTPS, the test PKI): serves what `keys`
/// holds now, and counts the fetches.
struct JwksServer {
    addr: std::net::SocketAddr,
    keys: std::sync::Arc<std::sync::Mutex<Value>>,
    fetches: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

async fn jwks_server(pki: &Pki, keys: Value) -> JwksServer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let keys = std::sync::Arc::new(std::sync::Mutex::new(keys));
    let fetches = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (served, counted) = (keys.clone(), fetches.clone());
    serve_https(
        listener,
        pki.server_config(&["idp.acme.test"]),
        move |_req| {
            let (served, counted) = (served.clone(), counted.clone());
            async move {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let body = served.lock().unwrap().to_string();
                Ok::<_, std::convert::Infallible>(
                    http::Response::builder()
                        .header("content-type", "application/json")
                        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                        .unwrap(),
                )
            }
        },
    );
    JwksServer {
        addr,
        keys,
        fetches,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_fetched_from_the_providers_jwks_uri_verify_and_follow_a_rotation() {
    std::env::set_var("ALICE_APPROVER_TOKEN", "alice-approver-token");
    let (signing, jwk) = key("k1");
    let (rotated, rotated_jwk) = key("k2");
    let pki = Pki::new("test idp CA");
    let idp = jwks_server(&pki, json!({ "keys": [jwk] })).await;
    let upstream = Upstream::start(pki.server_config(&API_HOSTS)).await;
    let policy = people_policy().replace(
        "jwks_file = \"acme-jwks.json\"",
        "jwks_url = \"https://idp.acme.test/.well-known/jwks.json\"",
    );
    let idp_addr = idp.addr;
    let gate = GateBuilder::examples()
        .policy("people.toml", policy)
        .policy("org-args.json", r#"{"type": "object"}"#)
        .routed_to(&pki, upstream.addr)
        .config(move |c| {
            c.connect_to.insert(("idp.acme.test".into(), 443), idp_addr);
        })
        .start()
        .await;
    let bot = gate.client(
        Some(("helpdesk-bot", HELPDESK_TOKEN)),
        http::Version::HTTP_11,
    );
    let read = body("{ viewer { login } }");
    let call = |assertion: String| {
        let (bot, read) = (&bot, read.clone());
        async move {
            let headers = [JSON, ("toolgate-user-assertion", assertion.as_str())];
            send(bot, "POST", GRAPHQL, &headers, read).await.unwrap()
        }
    };
    // Eight calls racing on the first use: the keys are fetched once, and every call verified.
    let racing = (0..8).map(|_| call(assertion(&signing, "alice@example.com", &[], 600)));
    for got in futures_util::future::join_all(racing).await {
        assert_eq!(
            got.status.as_u16(),
            200,
            "{}",
            String::from_utf8_lossy(&got.body)
        );
    }
    let got = call(assertion(&signing, "alice@example.com", &[], 600)).await;
    assert_eq!(got.status.as_u16(), 200);
    assert_eq!(
        idp.fetches.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the keys are fetched once, then cached"
    );
    // The provider rotates: an assertion under the new key id is verified after one fetch.
    *idp.keys.lock().unwrap() = json!({ "keys": [rotated_jwk] });
    let mut header_k2 = assertion(&rotated, "alice@example.com", &[], 600);
    // `assertion` signs under kid k1; re-sign under k2.
    {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let claims = json!({"iss": ISSUER, "aud": "toolgate", "email": "alice@example.com",
                            "iat": now, "exp": now + 600});
        let mut header = Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some("k2".into());
        header_k2 = jsonwebtoken::encode(&header, &claims, &rotated).unwrap_or(header_k2);
    }
    let got = call(header_k2.clone()).await;
    assert_eq!(
        got.status.as_u16(),
        200,
        "{}",
        String::from_utf8_lossy(&got.body)
    );
    assert_eq!(idp.fetches.load(std::sync::atomic::Ordering::SeqCst), 2);
    // A key id the provider does not publish is refused; the keys were just fetched for a
    // missing key id, so toolgate does not fetch them again for it (rate-limited).
    let (stranger, _) = key("k9");
    let mut header = Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some("k9".into());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let claims = json!({"iss": ISSUER, "aud": "toolgate", "email": "alice@example.com",
                        "iat": now, "exp": now + 600});
    let forged = jsonwebtoken::encode(&header, &claims, &stranger).unwrap();
    for _ in 0..3 {
        let got = call(forged.clone()).await;
        assert_eq!(
            got.status.as_u16(),
            401,
            "{}",
            String::from_utf8_lossy(&got.body)
        );
    }
    assert_eq!(idp.fetches.load(std::sync::atomic::Ordering::SeqCst), 2);
    assert_eq!(
        upstream.count(),
        10,
        "nothing was sent for the refused calls"
    );
}
