//! Approvers sign in to the page through the company's identity provider (an
//! `[[identity_provider]]` with `login`): the code flow driven over HTTP against a provider on
//! loopback whose token endpoint answers the ID token the test chose, so every forgery can be
//! tried.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::support::es256_key as key;
use crate::support::*;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::{json, Value};

const ISSUER: &str = "https://idp.acme.test";
const CLIENT: &str = "toolgate-page";

fn policy() -> String {
    format!(
        r#"
[[identity_provider]]
name = "acme-sso"
issuer = "{ISSUER}"
audience = "toolgate"
jwks_file = "acme-jwks.json"
groups_claim = "groups"
login = {{ client_id = "{CLIENT}", client_secret_env = "ACME_SSO_SECRET", authorize_url = "{ISSUER}/authorize", token_url = "{ISSUER}/token" }}
group_map = {{ "idp-payments" = "payments-leads" }}

[[approver]]
id = "carol@example.com"
token_env = "CAROL_SSO_TOKEN"
"#
    )
}

/// The provider's token endpoint: answers `{"id_token": ...}` with what the test put in, and
/// keeps what it was sent.
struct TokenEndpoint {
    addr: std::net::SocketAddr,
    id_token: Arc<Mutex<String>>,
    sent: Arc<Mutex<Vec<(String, String)>>>,
}

async fn token_endpoint(pki: &Pki) -> TokenEndpoint {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let id_token = Arc::new(Mutex::new(String::new()));
    let sent = Arc::new(Mutex::new(Vec::new()));
    let (answer, kept) = (id_token.clone(), sent.clone());
    serve_https(
        listener,
        pki.server_config(&["idp.acme.test"]),
        move |req: http::Request<hyper::body::Incoming>| {
            let (answer, kept) = (answer.clone(), kept.clone());
            async move {
                use http_body_util::BodyExt;
                let auth = req
                    .headers()
                    .get("authorization")
                    .map(|v| v.to_str().unwrap().to_string())
                    .unwrap_or_default();
                let body = req.into_body().collect().await.unwrap().to_bytes();
                kept.lock()
                    .unwrap()
                    .push((auth, String::from_utf8_lossy(&body).into_owned()));
                let body = json!({"id_token": *answer.lock().unwrap(), "token_type": "Bearer"});
                Ok::<_, std::convert::Infallible>(
                    http::Response::builder()
                        .header("content-type", "application/json")
                        .body(http_body_util::Full::new(bytes::Bytes::from(
                            body.to_string(),
                        )))
                        .unwrap(),
                )
            }
        },
    );
    TokenEndpoint {
        addr,
        id_token,
        sent,
    }
}

fn id_token(key: &EncodingKey, claims: &Value) -> String {
    let mut header = Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some("k1".into());
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

fn claims(email: &str, nonce: &str, groups: &[&str]) -> Value {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    json!({"iss": ISSUER, "aud": CLIENT, "email": email, "groups": groups, "nonce": nonce,
           "iat": now, "exp": now + 300})
}

pub(crate) fn cookie_of(answer: &Answer, name: &str) -> Option<String> {
    answer
        .headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_string())
        .find(|c| c.starts_with(&format!("{name}=")) && c.len() > name.len() + 1)
}

/// The events of `kind`, once there are `at_least` (read with approver `token`).
pub(crate) async fn recorded(
    gate: &Toolgate,
    token: &str,
    kind: &str,
    at_least: usize,
) -> Vec<Value> {
    let path = format!("/api/audit/search?kind={kind}");
    poll::until_some(
        &format!("{at_least} {kind} events are recorded"),
        poll::SOON,
        || async {
            let got = gate.admin("GET", &path, Some(token), None).await;
            let all = got.json()["events"].as_array().cloned().unwrap_or_default();
            (all.len() >= at_least).then_some(all)
        },
    )
    .await
}

/// Begins a sign-in: the authorization request's parameters and the binding cookie.
async fn begin(gate: &Toolgate) -> (HashMap<String, String>, String) {
    let start = gate.page("GET", "/login/oidc/acme-sso", None, None).await;
    assert_eq!(start.status, 303, "{}", start.text());
    let location = start.headers["location"].to_str().unwrap().to_string();
    assert!(
        location.starts_with(&format!("{ISSUER}/authorize?")),
        "{location}"
    );
    let query = location.split_once('?').unwrap().1;
    let params: HashMap<String, String> = form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    (params, cookie_of(&start, "tg_oidc").unwrap())
}

async fn come_back(gate: &Toolgate, params: &HashMap<String, String>, cookie: &str) -> Answer {
    let path = format!(
        "/login/oidc/callback?code=the-code&state={}",
        params["state"]
    );
    gate.page("GET", &path, Some(cookie), None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approver_signs_in_through_the_identity_provider_and_forgeries_are_refused() {
    std::env::set_var("ACME_SSO_SECRET", "s3cret:with/odd chars");
    std::env::set_var("CAROL_SSO_TOKEN", "carol-sso-token");
    let (signing, jwk) = key("k1");
    let (stranger, _) = key("k1");
    let pki = Pki::new("test idp CA");
    let idp = token_endpoint(&pki).await;
    let idp_addr = idp.addr;
    let gate = GateBuilder::new()
        .policy("sso.toml", policy())
        .policy("acme-jwks.json", json!({ "keys": [jwk] }).to_string())
        .routed_to(&pki, idp_addr)
        .config(move |c| {
            c.connect_to.insert(("idp.acme.test".into(), 443), idp_addr);
        })
        .start()
        .await;
    let form = gate.page("GET", "/login", None, None).await;
    assert!(
        form.text().contains("Sign in with acme-sso"),
        "{}",
        form.text()
    );

    // carol: the code flow with PKCE, state and nonce; a session; the queue is hers.
    let (params, binding) = begin(&gate).await;
    assert_eq!(params["client_id"], CLIENT);
    assert_eq!(params["code_challenge_method"], "S256");
    assert!(params["scope"].split(' ').any(|s| s == "openid"));
    *idp.id_token.lock().unwrap() = id_token(
        &signing,
        &claims("carol@example.com", &params["nonce"], &[]),
    );
    let back = come_back(&gate, &params, &binding).await;
    assert_eq!(back.status, 200, "{}", back.text());
    let session = cookie_of(&back, "tg_session").expect("a session");
    assert!(back.text().contains("carol@example.com"));
    let queue = gate.page("GET", "/queue", Some(&session), None).await;
    assert_eq!(queue.status, 200, "{}", queue.text());
    {
        let sent = idp.sent.lock().unwrap();
        let (auth, body) = sent.last().unwrap();
        assert!(auth.starts_with("Basic "), "client_secret_basic");
        assert!(
            body.contains("code_verifier=") && body.contains("code=the-code"),
            "{body}"
        );
    }
    // The state is one-time.
    let again = come_back(&gate, &params, &binding).await;
    assert_eq!(again.status, 400, "{}", again.text());
    // Two callbacks racing on one state: exactly one signs in.
    let (params, binding) = begin(&gate).await;
    *idp.id_token.lock().unwrap() = id_token(
        &signing,
        &claims("carol@example.com", &params["nonce"], &[]),
    );
    let (a, b) = tokio::join!(
        come_back(&gate, &params, &binding),
        come_back(&gate, &params, &binding)
    );
    let mut statuses = [a.status, b.status];
    statuses.sort();
    assert_eq!(statuses, [200, 400], "{} / {}", a.text(), b.text());
    // Another browser (without the binding cookie) cannot finish a sign-in it did not begin.
    let (params, _) = begin(&gate).await;
    let stolen = come_back(&gate, &params, "tg_oidc=someone-elses").await;
    assert_eq!(stolen.status, 400);

    // eve is no approver: refused, named.
    let (params, binding) = begin(&gate).await;
    *idp.id_token.lock().unwrap() =
        id_token(&signing, &claims("eve@example.com", &params["nonce"], &[]));
    let eve = come_back(&gate, &params, &binding).await;
    assert_eq!(eve.status, 403, "{}", eve.text());
    assert!(eve.text().contains("eve@example.com") && eve.text().contains("not an approver"));
    assert!(cookie_of(&eve, "tg_session").is_none());

    // Forgeries, each refused: a key not in the JWKS, a wrong nonce, expired, a wrong audience.
    type Forge<'a> = Box<dyn Fn(&str) -> String + 'a>;
    let forged: Vec<(&str, Forge)> = vec![
        (
            "signature",
            Box::new(|n: &str| id_token(&stranger, &claims("carol@example.com", n, &[]))),
        ),
        (
            "nonce",
            Box::new(|_: &str| id_token(&signing, &claims("carol@example.com", "another", &[]))),
        ),
        (
            "expired",
            Box::new(|n: &str| {
                let mut c = claims("carol@example.com", n, &[]);
                c["exp"] = json!(c["iat"].as_i64().unwrap() - 3600);
                id_token(&signing, &c)
            }),
        ),
        (
            "audience",
            Box::new(|n: &str| {
                let mut c = claims("carol@example.com", n, &[]);
                c["aud"] = json!("toolgate");
                id_token(&signing, &c)
            }),
        ),
        (
            "verified",
            Box::new(|n: &str| {
                let mut c = claims("carol@example.com", n, &[]);
                c["email_verified"] = json!(false);
                id_token(&signing, &c)
            }),
        ),
    ];
    for (why, make) in forged {
        let (params, binding) = begin(&gate).await;
        *idp.id_token.lock().unwrap() = make(&params["nonce"]);
        let got = come_back(&gate, &params, &binding).await;
        assert_eq!(got.status, 401, "{why}: {}", got.text());
        assert!(got.text().contains(why), "{why}: {}", got.text());
        assert!(cookie_of(&got, "tg_session").is_none(), "{why}");
    }

    // A code answered by another issuer than the sign-in went to (RFC 9207 `iss`): refused,
    // and the code is never sent to the token endpoint.
    let (params, binding) = begin(&gate).await;
    let before = idp.sent.lock().unwrap().len();
    let path = format!(
        "/login/oidc/callback?code=the-code&state={}&iss=https%3A%2F%2Fevil.example",
        params["state"]
    );
    let mixed = gate.page("GET", &path, Some(&binding), None).await;
    assert_eq!(mixed.status, 400, "{}", mixed.text());
    assert!(mixed.text().contains("another issuer"), "{}", mixed.text());
    assert_eq!(idp.sent.lock().unwrap().len(), before);

    // Every sign-in and refusal is on the record, naming the person, the provider and the
    // address (a callback with no sign-in under way is not: anyone can send one).
    let events = |kind: &'static str| {
        let gate = &gate;
        async move {
            let path = format!("/api/audit/search?kind={kind}");
            let got = gate
                .admin("GET", &path, Some("carol-sso-token"), None)
                .await;
            got.json()["events"].as_array().cloned().unwrap_or_default()
        }
    };
    let signed = poll::until_some("the sign-in is recorded", poll::SOON, || async {
        let all = events("sign_in").await;
        (!all.is_empty()).then_some(all)
    })
    .await;
    let p = &signed[0]["payload"];
    assert_eq!(p["who"], "carol@example.com");
    assert_eq!(p["via"], "signed in via acme-sso");
    assert_eq!(p["address"], "127.0.0.1");
    assert_eq!(signed[0]["user"], "carol@example.com");
    let refused = recorded(&gate, "carol-sso-token", "sign_in.refused", 7).await;
    let text = Value::Array(refused).to_string();
    assert!(
        text.contains("eve@example.com") && text.contains("not an approver"),
        "{text}"
    );
    assert!(
        !text.contains("s3cret") && !text.contains("the-code"),
        "{text}"
    );
}

/// Signs `email` in through the provider with the provider's `groups`: the session cookie.
async fn sign_in_as(
    gate: &Toolgate,
    idp: &TokenEndpoint,
    key: &EncodingKey,
    email: &str,
    groups: &[&str],
) -> String {
    let (params, binding) = begin(gate).await;
    *idp.id_token.lock().unwrap() = id_token(key, &claims(email, &params["nonce"], groups));
    let back = come_back(gate, &params, &binding).await;
    assert_eq!(back.status, 200, "{}", back.text());
    cookie_of(&back, "tg_session").expect("a session")
}

/// Approves proposal `id` on the page as the session's approver: the answer's status.
async fn approve_on_page(gate: &Toolgate, session: &str, id: &str) -> u16 {
    let detail = gate
        .page("GET", &format!("/proposals/{id}"), Some(session), None)
        .await;
    assert_eq!(detail.status, 200, "{}", detail.text());
    let csrf = csrf_of(&detail.text());
    let form = format!("csrf={csrf}&comment=ok");
    let got = gate
        .page(
            "POST",
            &format!("/proposals/{id}/approve"),
            Some(session),
            Some(form),
        )
        .await;
    got.status.as_u16()
}

async fn proposal_state(gate: &Toolgate, id: &str) -> Value {
    gate.admin(
        "GET",
        &format!("/api/proposals/{id}"),
        Some("demo-carol-token"),
        None,
    )
    .await
    .json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_providers_groups_mapped_let_an_approver_approve_and_oidc_only_pages_keep_the_api() {
    std::env::set_var("ACME_SSO_SECRET", "s3cret:with/odd chars");
    std::env::set_var("CAROL_SSO_TOKEN", "carol-sso-token");
    let (signing, jwk) = key("k1");
    let pki = Pki::new("test upstream and idp CA");
    let upstream = Upstream::start(pki.server_config(&API_HOSTS)).await;
    let idp = token_endpoint(&pki).await;
    let idp_addr = idp.addr;
    // sam approves through the provider only; the refunds tool needs group payments-leads,
    // which sam has only when the provider says idp-payments.
    let sso = policy()
        .replace("carol@example.com", "sam@example.com")
        .replace(
            "token_env = \"CAROL_SSO_TOKEN\"",
            &format!("token_sha256 = \"{}\"", sha256_hex("unused-sam-token")),
        );
    let gate = GateBuilder::examples()
        .policy("sso.toml", sso.clone())
        .policy("acme-jwks.json", json!({ "keys": [jwk] }).to_string())
        .routed_to(&pki, upstream.addr)
        .config(move |c| {
            c.connect_to.insert(("idp.acme.test".into(), 443), idp_addr);
            c.page_login = toolgate::config::PageLogin::Oidc;
        })
        .start()
        .await;
    // --page-login oidc: no token sign-in on the page; the API still takes bearer tokens.
    let form = gate.page("GET", "/login", None, None).await;
    assert!(!form.text().contains("name=\"token\""), "{}", form.text());
    let by_token = gate
        .page(
            "POST",
            "/login",
            None,
            Some("token=demo-carol-token".into()),
        )
        .await;
    assert_eq!(by_token.status, 403);

    let client = staging(&gate);
    let held = tokio::spawn(async move {
        let headers = [FORM, ("idempotency-key", "sso-1")];
        send(
            &client,
            "POST",
            "https://api.stripe.com/v1/refunds",
            &headers,
            "payment_intent=pi_sso&amount=5",
        )
        .await
    });
    let id = poll::until_some("the refund is held", poll::SOON, || async {
        let got = gate
            .admin(
                "GET",
                "/api/proposals?state=pending",
                Some("demo-carol-token"),
                None,
            )
            .await;
        got.json()["proposals"][0]["id"]
            .as_str()
            .map(str::to_string)
    })
    .await;
    let plain = sign_in_as(&gate, &idp, &signing, "sam@example.com", &["idp-other"]).await;
    assert_ne!(approve_on_page(&gate, &plain, &id).await, 303);
    assert_eq!(proposal_state(&gate, &id).await["state"], "pending");
    let lead = sign_in_as(
        &gate,
        &idp,
        &signing,
        "sam@example.com",
        &["idp-payments", "idp-other"],
    )
    .await;
    assert_eq!(approve_on_page(&gate, &lead, &id).await, 303);
    let p = proposal_state(&gate, &id).await;
    assert!(
        matches!(p["state"].as_str(), Some("approved" | "committed")),
        "{p}"
    );
    assert_eq!(p["approvals"][0]["by"], "sam@example.com", "{p}");
    let path = format!("/api/audit/story/{id}");
    let story = gate
        .admin("GET", &path, Some("demo-carol-token"), None)
        .await
        .text();
    assert!(
        story.contains("sam@example.com (signed in via acme-sso)"),
        "{story}"
    );
    held.abort();

    // sam removed from the policies: the sessions end at the reload.
    gate.write_policy(
        "sso.toml",
        &sso.replace("id = \"sam@example.com\"", "id = \"someone@example.com\""),
    );
    poll::until("sam's session ends", poll::SOON, || async {
        gate.page("GET", "/queue", Some(&lead), None).await.status == 303
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_is_vouched_for_only_by_the_provider_their_entry_names() {
    std::env::set_var("ACME_SSO_SECRET", "s3cret:with/odd chars");
    std::env::set_var("CAROL_SSO_TOKEN", "carol-sso-token");
    let (signing, jwk) = key("k1");
    let pki = Pki::new("test idp CA");
    let idp = token_endpoint(&pki).await;
    let idp_addr = idp.addr;
    // carol's entry names another provider: acme-sso cannot vouch for her.
    let bound = policy().replace(
        "token_env = \"CAROL_SSO_TOKEN\"",
        "token_env = \"CAROL_SSO_TOKEN\"\nsso = \"contractors-sso\"",
    );
    let gate = GateBuilder::new()
        .policy("sso.toml", bound)
        .policy("acme-jwks.json", json!({ "keys": [jwk] }).to_string())
        .routed_to(&pki, idp_addr)
        .config(move |c| {
            c.connect_to.insert(("idp.acme.test".into(), 443), idp_addr);
        })
        .start()
        .await;
    let (params, binding) = begin(&gate).await;
    *idp.id_token.lock().unwrap() = id_token(
        &signing,
        &claims("carol@example.com", &params["nonce"], &[]),
    );
    let back = come_back(&gate, &params, &binding).await;
    assert_eq!(back.status, 403, "{}", back.text());
    assert!(
        back.text().contains("may not sign in through acme-sso"),
        "{}",
        back.text()
    );
    assert!(cookie_of(&back, "tg_session").is_none());
}
