//! Approvals end to end: held calls, decisions through the API and the page, the rules of who
//! may approve, commit at most once, and what the upstream received in each case.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::*;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};

const REFUNDS: &str = "https://api.stripe.com/v1/refunds";
const QUICK: &str = "https://api.stripe.com/v1/quick_refunds";
const BIG: &str = "https://api.stripe.com/v1/big_refunds";
const EXPIRING: &str = "https://api.stripe.com/v1/expiring_refunds";

fn extra() -> Vec<(&'static str, String)> {
    let text = format!(
        r#"
[[approver]]
id = "alice@example.com"
token_sha256 = "{alice}"
groups = ["payments-leads"]

[[approver]]
id = "erin@example.com"
token_sha256 = "{erin}"
groups = ["payments-leads"]

[[tool]]
name = "stripe.quick_refunds.create"
host = "api.stripe.com"
method = "POST"
path = "/v1/quick_refunds"
side_effects = "irreversible"
mode = "approve"
idempotency = "key"
body = {{ format = "form" }}
credential = {{ staging = "stripe-test" }}
summary = "Quick refund {{body.amount}} of {{body.payment_intent}}"
approval = {{ groups = ["payments-leads"], required = 1, hold = "300ms" }}

[[tool]]
name = "stripe.big_refunds.create"
host = "api.stripe.com"
method = "POST"
path = "/v1/big_refunds"
side_effects = "irreversible"
mode = "approve"
idempotency = "key"
body = {{ format = "form" }}
credential = {{ staging = "stripe-test" }}
approval = {{ groups = ["payments-leads"], required = 2, hold = "300ms" }}

[[tool]]
name = "stripe.expiring_refunds.create"
host = "api.stripe.com"
method = "POST"
path = "/v1/expiring_refunds"
side_effects = "irreversible"
mode = "approve"
idempotency = "key"
body = {{ format = "form" }}
credential = {{ staging = "stripe-test" }}
approval = {{ required = 1, hold = "200ms", expires = "2s" }}
"#,
        alice = sha256_hex("alice-token"),
        erin = sha256_hex("erin-token"),
    );
    vec![("approvals-test.toml", text)]
}

async fn call(gate: &Toolgate, url: &str, key: &str, body: &str) -> Answer {
    send(
        &staging(gate),
        "POST",
        url,
        &[FORM, ("idempotency-key", key)],
        body,
    )
    .await
    .unwrap()
}

async fn pending_ids(gate: &Toolgate) -> Vec<String> {
    let got = gate
        .admin(
            "GET",
            "/api/proposals?state=pending",
            Some("demo-carol-token"),
            None,
        )
        .await;
    assert_eq!(got.status, 200, "{}", String::from_utf8_lossy(&got.body));
    got.json()["proposals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_string())
        .collect()
}

async fn decide(gate: &Toolgate, id: &str, action: &str, token: &str, comment: &str) -> Answer {
    gate.admin(
        "POST",
        &format!("/api/proposals/{id}/{action}"),
        Some(token),
        Some(json!({ "comment": comment })),
    )
    .await
}

async fn proposal(gate: &Toolgate, id: &str) -> Value {
    gate.admin(
        "GET",
        &format!("/api/proposals/{id}"),
        Some("demo-carol-token"),
        None,
    )
    .await
    .json()
}

#[tokio::test]
async fn approved_within_the_hold_the_held_call_gets_the_upstream_response() {
    let (_pki, upstream, gate) = GateBuilder::examples()
        .policies(&extra())
        .with_upstream()
        .await;
    let client = staging(&gate);
    let held = tokio::spawn(async move {
        send(
            &client,
            "POST",
            REFUNDS,
            &[FORM, ("idempotency-key", "r-1")],
            "payment_intent=pi_123&amount=120000",
        )
        .await
        .unwrap()
    });
    let listed = || async {
        let ids = pending_ids(&gate).await;
        (!ids.is_empty()).then_some(ids)
    };
    let ids = poll::until_some("the call is pending", Duration::from_secs(2), listed).await;
    assert_eq!(ids.len(), 1);
    let p = proposal(&gate, &ids[0]).await;
    assert_eq!(p["summary"], "Refund 120000 (minor units) of pi_123");
    assert_eq!(p["request"]["body"], "payment_intent=pi_123&amount=120000");
    assert_eq!(p["agent"], "support-bot-staging");
    assert_eq!(p["owner"], "alice@example.com");
    // The stored request holds no secret.
    assert!(!p.to_string().contains("sk_test_toolgate_demo_placeholder"));
    assert_eq!(upstream.count(), 0, "nothing is sent before approval");

    let got = decide(
        &gate,
        &ids[0],
        "approve",
        "demo-carol-token",
        "ok, customer called",
    )
    .await;
    assert_eq!(got.status, 200, "{}", String::from_utf8_lossy(&got.body));
    let got = held.await.unwrap();
    assert_eq!(got.status, 200, "{}", String::from_utf8_lossy(&got.body));
    assert_eq!(got.json()["path"], "/v1/refunds");
    let seen = upstream.received();
    assert_eq!(seen.len(), 1, "committed exactly once");
    assert_eq!(seen[0].body, "payment_intent=pi_123&amount=120000");
    assert_eq!(
        seen[0].headers["authorization"],
        "Bearer sk_test_toolgate_demo_placeholder"
    );
    assert_eq!(proposal(&gate, &ids[0]).await["state"], "committed");
}

#[tokio::test]
async fn no_decision_in_time_gives_423_and_the_same_call_later_gets_the_stored_response() {
    let (_pki, upstream, gate) = GateBuilder::examples()
        .policies(&extra())
        .with_upstream()
        .await;
    let got = call(&gate, QUICK, "q-1", "payment_intent=pi_9&amount=500").await;
    assert_eq!(
        (got.status.as_u16(), got.code().as_str()),
        (423, "approval_pending")
    );
    let id = got.headers["toolgate-proposal"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(got.json()["error"]["proposal"], id.as_str());
    assert!(!got.headers.contains_key("retry-after"));

    // The SDK retries with a new key: it joins the same proposal.
    let again = call(&gate, QUICK, "q-2", "payment_intent=pi_9&amount=500").await;
    assert_eq!(again.headers["toolgate-proposal"].to_str().unwrap(), id);
    assert_eq!(pending_ids(&gate).await, vec![id.clone()]);

    assert_eq!(
        decide(&gate, &id, "approve", "demo-carol-token", "")
            .await
            .status,
        200
    );
    let got = call(&gate, QUICK, "q-3", "payment_intent=pi_9&amount=500").await;
    assert_eq!(got.status, 200);
    let again = call(&gate, QUICK, "q-4", "payment_intent=pi_9&amount=500").await;
    assert_eq!(again.status, 200);
    assert_eq!(again.body, got.body);
    assert_eq!(upstream.count(), 1, "the upstream received it once");
}

#[tokio::test]
async fn denial_expiry_and_revocation_never_send() {
    let (_pki, upstream, gate) = GateBuilder::examples()
        .policies(&extra())
        .with_upstream()
        .await;
    // Deny: 403 with the approver's comment.
    let got = call(&gate, QUICK, "d-1", "payment_intent=pi_d").await;
    let id = got.headers["toolgate-proposal"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(
        decide(
            &gate,
            &id,
            "deny",
            "demo-carol-token",
            "not without a ticket"
        )
        .await
        .status,
        200
    );
    let got = call(&gate, QUICK, "d-2", "payment_intent=pi_d").await;
    assert_eq!(
        (got.status.as_u16(), got.code().as_str()),
        (403, "approval_denied")
    );
    assert!(
        got.message().contains("not without a ticket"),
        "{}",
        got.message()
    );

    // Expiry: 410.
    let got = call(&gate, EXPIRING, "e-1", "payment_intent=pi_e").await;
    assert_eq!(got.status, 423);
    // Until it expires the same call is held again (423); then it is refused.
    let expired = || async {
        let got = call(&gate, EXPIRING, "e-2", "payment_intent=pi_e").await;
        (got.status != 423).then_some(got)
    };
    let got = poll::until_some("the proposal expires", Duration::from_secs(10), expired).await;
    assert_eq!(
        (got.status.as_u16(), got.code().as_str()),
        (410, "approval_expired")
    );

    // Revoked before the commit: never sent.
    let got = call(&gate, QUICK, "v-1", "payment_intent=pi_v").await;
    let id = got.headers["toolgate-proposal"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(
        decide(&gate, &id, "approve", "demo-carol-token", "")
            .await
            .status,
        200
    );
    assert_eq!(
        decide(&gate, &id, "revoke", "demo-carol-token", "wrong customer")
            .await
            .status,
        200
    );
    let got = call(&gate, QUICK, "v-2", "payment_intent=pi_v").await;
    assert_eq!(got.code(), "approval_denied");
    assert!(got.message().contains("wrong customer"));

    // A kill switch thrown between approval and commit: never sent.
    let got = call(&gate, QUICK, "k-1", "payment_intent=pi_k").await;
    let id = got.headers["toolgate-proposal"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(
        decide(&gate, &id, "approve", "demo-carol-token", "")
            .await
            .status,
        200
    );
    let off = gate
        .admin(
            "POST",
            "/api/tools/stripe.quick_refunds.create/disable",
            Some("demo-carol-token"),
            Some(json!({"reason": "freeze"})),
        )
        .await;
    assert_eq!(off.status, 200);
    let got = call(&gate, QUICK, "k-2", "payment_intent=pi_k").await;
    assert_eq!(got.code(), "tool_disabled");
    assert_eq!(proposal(&gate, &id).await["state"], "approved");

    assert_eq!(upstream.count(), 0, "nothing was sent");
}

#[tokio::test]
async fn two_person_rule_self_approval_and_agent_tokens() {
    let (_pki, upstream, gate) = GateBuilder::examples()
        .policies(&extra())
        .with_upstream()
        .await;
    let got = call(&gate, BIG, "b-1", "payment_intent=pi_big").await;
    let id = got.headers["toolgate-proposal"]
        .to_str()
        .unwrap()
        .to_string();

    // An agent's token cannot approve.
    let got = decide(&gate, &id, "approve", "demo-staging-token", "").await;
    assert_eq!(got.status, 401);
    // The agent's owner may not approve their own agent's call.
    let got = decide(&gate, &id, "approve", "alice-token", "").await;
    assert_eq!(got.status, 403);
    assert!(got.message().contains("owns agent"), "{}", got.message());
    // An approver outside the tool's groups.
    let got = decide(&gate, &id, "approve", "demo-dave-token", "").await;
    assert_eq!(got.status, 403);

    assert_eq!(
        decide(&gate, &id, "approve", "demo-carol-token", "")
            .await
            .status,
        200
    );
    assert_eq!(
        proposal(&gate, &id).await["state"],
        "pending",
        "one of two approvals"
    );
    let got = decide(&gate, &id, "approve", "demo-carol-token", "").await;
    assert_eq!(got.status, 409, "the same person cannot approve twice");
    assert_eq!(
        call(&gate, BIG, "b-2", "payment_intent=pi_big")
            .await
            .status,
        423
    );
    assert_eq!(upstream.count(), 0);

    assert_eq!(
        decide(&gate, &id, "approve", "erin-token", "").await.status,
        200
    );
    let got = call(&gate, BIG, "b-3", "payment_intent=pi_big").await;
    assert_eq!(got.status, 200);
    assert_eq!(upstream.count(), 1);
    let p = proposal(&gate, &id).await;
    assert_eq!(p["state"], "committed");
    assert_eq!(p["approvals"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn the_page_needs_a_session_and_a_csrf_token() {
    let (_pki, upstream, gate) = GateBuilder::examples()
        .policies(&extra())
        .with_upstream()
        .await;
    let got = call(&gate, QUICK, "p-1", "payment_intent=pi_page&amount=7").await;
    let id = got.headers["toolgate-proposal"]
        .to_str()
        .unwrap()
        .to_string();

    let raw = |method: &'static str, path: String, cookie: Option<String>, form: Option<String>| {
        let gate = &gate;
        async move { gate.page(method, &path, cookie.as_deref(), form).await }
    };
    // Not signed in: to the sign-in page.
    let got = raw("GET", "/queue".into(), None, None).await;
    assert_eq!(got.status, 303);
    // An agent token does not sign in.
    let got = raw(
        "POST",
        "/login".into(),
        None,
        Some("token=demo-staging-token".into()),
    )
    .await;
    assert_eq!(got.status, 401);
    let got = raw(
        "POST",
        "/login".into(),
        None,
        Some("token=demo-carol-token".into()),
    )
    .await;
    assert_eq!(got.status, 303);
    let set = got.headers["set-cookie"].to_str().unwrap().to_string();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    let cookie = set.split(';').next().unwrap().to_string();

    let queue = raw("GET", "/queue".into(), Some(cookie.clone()), None).await;
    let html = String::from_utf8_lossy(&queue.body).to_string();
    assert!(html.contains("Quick refund 7 of pi_page"), "{html}");
    let detail = raw(
        "GET",
        format!("/proposals/{id}"),
        Some(cookie.clone()),
        None,
    )
    .await;
    let html = String::from_utf8_lossy(&detail.body).to_string();
    assert!(
        html.contains("payment_intent=pi_page&amp;amount=7"),
        "the exact payload is shown"
    );
    let csrf = csrf_of(&html);

    // A form post without the CSRF token is refused, and so is a wrong one.
    let got = raw(
        "POST",
        format!("/proposals/{id}/approve"),
        Some(cookie.clone()),
        Some("comment=x".into()),
    )
    .await;
    assert_eq!(got.status, 403);
    let got = raw(
        "POST",
        format!("/proposals/{id}/approve"),
        Some(cookie.clone()),
        Some("csrf=00&comment=x".into()),
    )
    .await;
    assert_eq!(got.status, 403);
    assert_eq!(proposal(&gate, &id).await["state"], "pending");
    let got = raw(
        "POST",
        format!("/proposals/{id}/approve"),
        Some(cookie.clone()),
        Some(format!("csrf={csrf}&comment=fine")),
    )
    .await;
    assert_eq!(got.status, 303);
    assert_eq!(proposal(&gate, &id).await["state"], "approved");
    assert_eq!(upstream.count(), 0);

    // Kill switches from the page follow the API's rules: any approver stops, only admins start.
    let path = "/switches/tool/stripe.customers.retrieve".to_string();
    let got = raw(
        "POST",
        format!("{path}/disable"),
        Some(cookie.clone()),
        Some(format!("csrf={csrf}&reason=page+test")),
    )
    .await;
    assert_eq!(got.status, 303);
    let tools = gate
        .admin("GET", "/api/tools", Some("demo-carol-token"), None)
        .await
        .json();
    let t = tools["tools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "stripe.customers.retrieve")
        .unwrap()
        .clone();
    assert_eq!(t["disabled"]["reason"], "page test");
    let got = raw(
        "POST",
        format!("{path}/enable"),
        Some(cookie.clone()),
        Some(format!("csrf={csrf}")),
    )
    .await;
    assert_eq!(got.status, 403);
    let got = raw(
        "POST",
        "/switches/tool/no.such.tool/disable".into(),
        Some(cookie.clone()),
        Some(format!("csrf={csrf}")),
    )
    .await;
    assert_eq!(got.status, 404);
    assert_eq!(
        call(&gate, QUICK, "p-2", "payment_intent=pi_page&amount=7")
            .await
            .status,
        200
    );
    assert_eq!(upstream.count(), 1);
}

/// A loopback webhook receiver that fails its first `fail` deliveries.
async fn webhook_receiver(fail: usize) -> (std::net::SocketAddr, Arc<Mutex<Vec<Value>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let seen = got.clone();
    let calls = Arc::new(Mutex::new(0usize));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let seen = seen.clone();
            let calls = calls.clone();
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let seen = seen.clone();
                        let calls = calls.clone();
                        async move {
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let n = {
                                let mut c = calls.lock().unwrap();
                                *c += 1;
                                *c
                            };
                            let status = if n <= fail {
                                500
                            } else {
                                seen.lock()
                                    .unwrap()
                                    .push(serde_json::from_slice(&body).unwrap());
                                200
                            };
                            Ok::<_, std::convert::Infallible>(
                                http::Response::builder()
                                    .status(status)
                                    .body(Full::new(Bytes::new()))
                                    .unwrap(),
                            )
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, got)
}

#[tokio::test]
async fn a_new_proposal_is_announced_to_the_webhook_even_after_failures() {
    let (hook, received) = webhook_receiver(1).await;
    let (_pki, _upstream, gate) = GateBuilder::examples()
        .policies(&extra())
        .config(move |c| {
            c.webhook = Some(format!("http://{hook}/hook"));
            c.admin_url = "https://toolgate.example.internal".into();
        })
        .with_upstream()
        .await;
    let got = call(&gate, QUICK, "w-1", "payment_intent=pi_hook&amount=42").await;
    let id = got.headers["toolgate-proposal"]
        .to_str()
        .unwrap()
        .to_string();
    let notified = || async { !received.lock().unwrap().is_empty() };
    poll::until("the webhook is called", Duration::from_secs(5), notified).await;
    let got = received.lock().unwrap().clone();
    assert_eq!(got.len(), 1, "delivered once, after one failed attempt");
    let text = got[0]["text"].as_str().unwrap();
    assert!(text.contains("Quick refund 42 of pi_hook"), "{text}");
    assert!(
        text.contains(&format!("https://toolgate.example.internal/proposals/{id}")),
        "{text}"
    );
    assert_eq!(got[0]["proposal"], id.as_str());
}

#[tokio::test]
async fn a_broken_webhook_never_blocks_a_proposal() {
    // Nothing listens there.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let (_pki, _upstream, gate) = GateBuilder::examples()
        .policies(&extra())
        .config(move |c| {
            c.webhook = Some(format!("http://{addr}/hook"));
        })
        .with_upstream()
        .await;
    let got = call(&gate, QUICK, "x-1", "payment_intent=pi_x").await;
    assert_eq!(got.status, 423);
    assert_eq!(pending_ids(&gate).await.len(), 1);
}

/// An approved call whose waiting agent goes away while it is being sent is still settled:
/// committed, its answer stored and recorded, and the agent's retry gets that answer. Nothing
/// is left `committing` for want of a listener, nothing is sent twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approved_commit_finishes_when_its_agent_goes_away() {
    let slow = vec![(
        "slow.toml",
        r#"
[[tool]]
name = "stripe.slow_refunds.create"
host = "api.stripe.com"
method = "POST"
path = "/delay/{ms}"
side_effects = "irreversible"
mode = "approve"
idempotency = "key"
body = { format = "form" }
credential = { staging = "stripe-test" }
summary = "Slow refund {body.amount}"
approval = { required = 1, hold = "10s" }
"#
        .to_string(),
    )];
    let (_pki, upstream, gate) = GateBuilder::examples()
        .policies(&slow)
        .with_upstream()
        .await;
    let url = "https://api.stripe.com/delay/800";
    let held = {
        let client = staging(&gate);
        tokio::spawn(async move {
            send(
                &client,
                "POST",
                url,
                &[FORM, ("idempotency-key", "gone-1")],
                "amount=7",
            )
            .await
        })
    };
    let id = pending_proposal(gate.admin_addr, "Slow refund 7").await;
    let approved = decide(&gate, &id, "approve", "demo-carol-token", "ok").await;
    assert_eq!(approved.status, 200, "{}", approved.text());
    // The upstream has it (it answers 0.8 s later): the agent gives up now.
    let sent = || {
        upstream
            .received()
            .iter()
            .filter(|r| r.path == "/delay/800")
            .count()
    };
    poll::until("the call is sent", Duration::from_secs(2), || async {
        sent() == 1
    })
    .await;
    held.abort();
    assert!(held.await.is_err(), "the agent went away before the answer");
    let committed = || async { proposal(&gate, &id).await["state"] == "committed" };
    poll::until(
        "the proposal is committed",
        Duration::from_secs(5),
        committed,
    )
    .await;
    let again = call(&gate, url, "gone-2", "amount=7").await;
    assert_eq!(again.status, 200, "{}", again.text());
    assert!(again.text().contains("delayed_ms"), "{}", again.text());
    assert_eq!(sent(), 1, "sent once");
}

/// Tools that say when an approved call is sent: on the agent's retry, or at once on approval
/// (one holding the agent briefly, one holding it long enough to be approved meanwhile).
fn sending() -> Vec<(&'static str, String)> {
    let tool = |name: &str, hold: &str, send: &str, keep: &str| {
        format!(
            r#"
[[tool]]
name = "stripe.{name}.create"
host = "api.stripe.com"
method = "POST"
path = "/v1/{name}"
side_effects = "irreversible"
mode = "approve"
idempotency = "key"
body = {{ format = "form" }}
credential = {{ staging = "stripe-test" }}
summary = "{name} {{body.amount}} of {{body.payment_intent}}"
response = {{ keep = [{keep}] }}
approval = {{ groups = ["payments-leads"], required = 1, hold = "{hold}", send = "{send}" }}
"#
        )
    };
    let mut files = extra();
    files.push((
        "sending.toml",
        [
            tool("retry_refunds", "300ms", "on_retry", "\"/path\""),
            tool("prompt_refunds", "300ms", "on_approval", "\"/path\""),
            tool("waited_refunds", "10s", "on_approval", "\"/method\""),
        ]
        .concat(),
    ));
    files
}

/// The rows `/api/traffic` lists for a tool, oldest first, once there are `n` (the log is
/// written behind the calls: polled, bounded).
pub(crate) async fn traffic_rows(gate: &Toolgate, tool: &str, n: usize) -> Vec<Value> {
    let what = format!("/api/traffic lists {n} complete rows of {tool}");
    let mut rows = poll::until_some(&what, poll::SOON, || async {
        let path = format!("/api/traffic?tool={tool}");
        let got = gate
            .admin("GET", &path, Some("demo-carol-token"), None)
            .await;
        let rows = got.json()["requests"].as_array().unwrap().clone();
        // Each row complete: its answer's status recorded.
        let complete = rows.len() >= n && rows.iter().all(|r| r["status"].is_u64());
        complete.then_some(rows)
    })
    .await;
    rows.reverse();
    rows
}

/// The summary lines of a story.
async fn story_summary(gate: &Toolgate, id: &str) -> String {
    let story = gate
        .admin(
            "GET",
            &format!("/api/audit/story/{id}"),
            Some("demo-carol-token"),
            None,
        )
        .await
        .json();
    story["summary"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap().to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Runs the real `toolgate` binary against the test server's admin listener.
async fn cli(gate: &Toolgate, args: &[&str]) -> (bool, String) {
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_toolgate"))
            .args(args)
            .env("TOOLGATE_SERVER", format!("http://{}", gate.admin_addr))
            .env("TOOLGATE_TOKEN", "demo-carol-token")
            .output(),
    )
    .await
    .expect("the CLI answered within 60s")
    .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Polls until the upstream received `n` requests (bounded), then says how many it did.
async fn upstream_reaches(upstream: &Upstream, n: usize) -> usize {
    let reached = || async { upstream.count() >= n };
    poll::until("the upstream is reached", Duration::from_secs(2), reached).await;
    upstream.count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_retry_an_approval_sends_nothing_until_the_agent_sends_the_call_again() {
    let (_pki, upstream, gate) = GateBuilder::examples()
        .policies(&sending())
        .with_upstream()
        .await;
    let url = "https://api.stripe.com/v1/retry_refunds";
    let body = "payment_intent=pi_retry&amount=100";
    let first = call(&gate, url, "rr-1", body).await;
    assert_eq!(first.status, 423, "{}", first.text());
    let id = first.headers["toolgate-proposal"]
        .to_str()
        .unwrap()
        .to_string();

    // `toolgate approve` says plainly what happens next, and nothing is sent yet.
    let (ok, out) = cli(&gate, &["approve", &id, "--comment", "customer called"]).await;
    assert!(ok, "{out}");
    assert!(
        out.contains("approved; sent when the agent sends the call again, until 20"),
        "{out}"
    );
    // A sleep: a window in which a send behind the approval would show.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(upstream.count(), 0, "approved on_retry: nothing sent yet");
    let p = proposal(&gate, &id).await;
    assert_eq!(p["state"], "approved");
    assert_eq!(p["send"], "on_retry");
    // So does the page.
    let cookie = gate.sign_in("demo-carol-token").await;
    let page = gate
        .page("GET", &format!("/proposals/{id}"), Some(&cookie), None)
        .await
        .text();
    assert!(
        page.contains("approved; sent when the agent sends the call again, until 20"),
        "{page}"
    );
    // Times read as ISO 8601 in UTC and how long ago, never epoch seconds.
    let approved_at = p["approvals"][0]["at_unix"].as_u64().unwrap().to_string();
    assert!(
        page.contains("carol@example.com at <time datetime=\"20")
            && (page.contains(" ago)") || page.contains("(just now)")),
        "{page}"
    );
    assert!(!page.contains(&approved_at), "{page}");

    // The agent's retry sends it, once; the next retry gets the stored answer.
    let sent = call(&gate, url, "rr-2", body).await;
    assert_eq!(sent.status, 200, "{}", sent.text());
    assert_eq!(sent.json()["path"], "/v1/retry_refunds");
    let again = call(&gate, url, "rr-3", body).await;
    assert_eq!(again.status, 200, "{}", again.text());
    assert_eq!(
        again.json(),
        json!({"path": "/v1/retry_refunds"}),
        "the kept fields"
    );
    assert_eq!(upstream.count(), 1, "sent exactly once");
    assert_eq!(upstream.received()[0].body, body);

    // The story: what was proposed, who approved with their comment, and when it is sent.
    let summary = story_summary(&gate, &id).await;
    let sha = p["request"]["sha256"].as_str().unwrap();
    assert!(
        summary.contains(&format!(
            "what was proposed: retry_refunds 100 of pi_retry (payload sha256 {sha})"
        )),
        "{summary}"
    );
    assert!(
        summary.contains("who approved:  carol@example.com at 20")
            && summary.contains(": \"customer called\" (approved; sent when the agent sends the call again, until 20"),
        "{summary}"
    );
    assert!(
        summary.contains("what executed: POST https://api.stripe.com/v1/retry_refunds"),
        "{summary}"
    );

    // /traffic: the first request was held and answered 423; the retry that sent it shows the
    // upstream's status and latency; the last one was answered from the stored result.
    let rows = traffic_rows(&gate, "stripe.retry_refunds.create", 3).await;
    assert_eq!(rows.len(), 3, "{rows:#?}");
    assert_eq!(
        rows[0]["request_id"],
        first.headers["toolgate-request-id"].to_str().unwrap()
    );
    assert_eq!(
        (&rows[0]["decision"], &rows[0]["status"], &rows[0]["code"]),
        (&json!("held"), &json!(423), &json!("approval_pending")),
        "{rows:#?}"
    );
    assert!(rows[0]["latency_ms"].is_null(), "{rows:#?}");
    assert_eq!(
        rows[1]["request_id"],
        sent.headers["toolgate-request-id"].to_str().unwrap()
    );
    assert_eq!(
        (&rows[1]["decision"], &rows[1]["status"]),
        (&json!("held"), &json!(200))
    );
    assert!(rows[1]["latency_ms"].is_u64(), "{rows:#?}");
    assert_eq!(rows[2]["status"], 200, "{rows:#?}");
    let list = gate
        .page(
            "GET",
            "/traffic?tool=stripe.retry_refunds.create",
            Some(&cookie),
            None,
        )
        .await
        .text();
    assert!(
        list.contains("<td><time datetime=\"20")
            && (list.contains(" ago)</td>") || list.contains("(just now)</td>")),
        "{list}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_approval_the_approval_sends_it_once_though_the_agent_is_gone() {
    let (_pki, upstream, gate) = GateBuilder::examples()
        .policies(&sending())
        .with_upstream()
        .await;
    let url = "https://api.stripe.com/v1/prompt_refunds";
    let body = "payment_intent=pi_prompt&amount=200";
    // The agent's call is held, answered 423, and the agent goes away.
    let first = call(&gate, url, "pr-1", body).await;
    assert_eq!(first.status, 423, "{}", first.text());
    let id = first.headers["toolgate-proposal"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(upstream.count(), 0);

    // Approving sends it at once, and says so.
    let got = decide(&gate, &id, "approve", "demo-carol-token", "send it now").await;
    assert_eq!(got.status, 200, "{}", got.text());
    let decided = got.json();
    assert_eq!(decided["state"], "committed", "{decided}");
    assert_eq!(
        decided["status_text"], "approved and sent; the upstream answered 200",
        "{decided}"
    );
    assert_eq!(
        upstream_reaches(&upstream, 1).await,
        1,
        "sent by the approval"
    );
    // A sleep: a window in which a second send would show.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(upstream.count(), 1, "sent exactly once");
    let cookie = gate.sign_in("demo-carol-token").await;
    let page = gate
        .page("GET", &format!("/proposals/{id}"), Some(&cookie), None)
        .await
        .text();
    assert!(
        page.contains("approved and sent; the upstream answered 200")
            && page.contains("at once on approval (on_approval)"),
        "{page}"
    );

    // The agent's retry gets the stored result; nothing more is sent.
    let retry = call(&gate, url, "pr-2", body).await;
    assert_eq!(retry.status, 200, "{}", retry.text());
    assert_eq!(
        retry.json(),
        json!({"path": "/v1/prompt_refunds"}),
        "the kept fields"
    );
    assert_eq!(retry.headers["toolgate-proposal"].to_str().unwrap(), id);
    assert_eq!(upstream.count(), 1, "the retry sent nothing");

    let summary = story_summary(&gate, &id).await;
    assert!(
        summary.contains("what was proposed: prompt_refunds 200 of pi_prompt (payload sha256 "),
        "{summary}"
    );
    assert!(
        summary.contains(": \"send it now\" (approved; sent at once on approval)"),
        "{summary}"
    );
    // /traffic: the held call shows 423 (it never got the answer); the retry the stored 200.
    let rows = traffic_rows(&gate, "stripe.prompt_refunds.create", 2).await;
    assert_eq!(rows.len(), 2, "{rows:#?}");
    assert_eq!(
        (&rows[0]["decision"], &rows[0]["status"]),
        (&json!("held"), &json!(423)),
        "{rows:#?}"
    );
    assert_eq!(
        (&rows[1]["decision"], &rows[1]["status"]),
        (&json!("held"), &json!(200))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_approval_the_held_call_gets_the_whole_answer_and_a_kill_switch_stops_the_send() {
    let (_pki, upstream, gate) = GateBuilder::examples()
        .policies(&sending())
        .with_upstream()
        .await;
    let url = "https://api.stripe.com/v1/waited_refunds";
    let body = "payment_intent=pi_waited&amount=300";
    let held = {
        let client = staging(&gate);
        tokio::spawn(async move {
            send(
                &client,
                "POST",
                url,
                &[FORM, ("idempotency-key", "wr-1")],
                body,
            )
            .await
            .unwrap()
        })
    };
    let id = pending_proposal(gate.admin_addr, "pi_waited").await;
    let got = decide(&gate, &id, "approve", "demo-carol-token", "").await;
    assert_eq!(got.status, 200, "{}", got.text());
    let held = held.await.unwrap();
    assert_eq!(held.status, 200, "{}", held.text());
    assert_eq!(
        held.json()["path"],
        "/v1/waited_refunds",
        "the whole answer"
    );
    assert_eq!(upstream.count(), 1);
    let retry = call(&gate, url, "wr-2", body).await;
    assert_eq!(
        retry.json(),
        json!({"method": "POST"}),
        "a retry gets the kept fields"
    );
    assert_eq!(upstream.count(), 1, "sent exactly once");

    // A kill switch thrown between the proposal and its approval: the approval sends nothing,
    // says why, and the proposal stays approved; the held call is refused.
    let client = staging(&gate);
    let held = tokio::spawn(async move {
        send(
            &client,
            "POST",
            url,
            &[FORM, ("idempotency-key", "wr-3")],
            "payment_intent=pi_frozen&amount=1",
        )
        .await
        .unwrap()
    });
    let frozen = pending_proposal(gate.admin_addr, "pi_frozen").await;
    let off = gate
        .admin(
            "POST",
            "/api/tools/stripe.waited_refunds.create/disable",
            Some("demo-carol-token"),
            Some(json!({"reason": "freeze"})),
        )
        .await;
    assert_eq!(off.status, 200);
    let got = decide(&gate, &frozen, "approve", "demo-carol-token", "").await;
    assert_eq!(got.status, 200, "{}", got.text());
    let text = got.json()["status_text"].as_str().unwrap().to_string();
    assert!(
        text.starts_with("approved, but not sent:") && text.contains("freeze"),
        "{text}"
    );
    assert_eq!(proposal(&gate, &frozen).await["state"], "approved");
    let got = held.await.unwrap();
    assert_eq!(got.code(), "tool_disabled", "{}", got.text());
    assert_eq!(upstream.count(), 1, "nothing more was sent");
}
