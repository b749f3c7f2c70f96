//! Hardening (one test or more per finding of the hostile review): an agent with its own proxy
//! token, or an approver acting alone, cannot exhaust, fool or bypass toolgate. Each test asserts
//! what the upstream received (nothing for a refused call) and, where it matters, what is on disk.
//! The freeze, memory and descriptor findings are tested against the real binary in `binary.rs`.

use std::time::Duration;

use crate::support::*;
use serde_json::{json, Value};

const SECRET: &str = "sk_test_toolgate_demo_placeholder";

/// Test tools beside the examples, an approver pair for two-person rules and an agent of
/// another owner.
fn extra() -> Vec<(&'static str, String)> {
    let text = format!(
        r#"
[[approver]]
id = "erin@example.com"
token_sha256 = "{erin}"
groups = ["payments-leads"]

[[approver]]
id = "alice@example.com"
token_sha256 = "{alice}"
groups = ["payments-leads"]

[[agent]]
id = "other-bot"
token_sha256 = "{other}"
owner = "mallory@example.com"
environment = "staging"
tools = ["stripe.*", "github.*", "test.*"]
attrs = {{ github_org = "acme" }}

[[agent]]
id = "helper-bot"
token_sha256 = "{helper}"
owner = "alice@example.com"
environment = "staging"
tools = ["github.*"]
attrs = {{ github_org = "acme" }}

[[tool]]
name = "stripe.held_refunds.create"
host = "api.stripe.com"
method = "POST"
path = "/v1/held_refunds"
side_effects = "irreversible"
mode = "approve"
idempotency = "key"
body = {{ format = "form" }}
credential = {{ staging = "stripe-test" }}
rate_limit = "3/minute"
budget = {{ field = "amount", max = 500000, per = "day" }}
approval = {{ groups = ["payments-leads"], hold = "300ms" }}

[[tool]]
name = "stripe.noted_refunds.create"
host = "api.stripe.com"
method = "POST"
path = "/v1/noted_refunds"
side_effects = "irreversible"
mode = "approve"
idempotency = "key"
body = {{ format = "form" }}
headers = ["X-Client-Note"]
credential = {{ staging = "stripe-test" }}
approval = {{ groups = ["payments-leads"], hold = "10s" }}

[[tool]]
name = "stripe.auto_refunds.create"
host = "api.stripe.com"
method = "POST"
path = "/v1/auto_refunds"
side_effects = "irreversible"
mode = "auto"
idempotency = "key"
body = {{ format = "form" }}
credential = {{ staging = "stripe-test" }}
budget = {{ field = "amount", max = 500000, per = "day" }}

[[tool]]
name = "stripe.connected.create"
host = "api.stripe.com"
method = "POST"
path = "/v1/connected"
side_effects = "reversible"
mode = "auto"
idempotency = "key"
body = {{ format = "form" }}
headers = ["Stripe-Account"]
credential = {{ staging = "stripe-test" }}
rollback = {{ none = "test" }}

[[tool]]
name = "stripe.echo"
host = "api.stripe.com"
method = "GET"
path = "/v1/echo"
headers = ["X-Echo"]
credential = {{ staging = "stripe-test" }}
"#,
        erin = sha256_hex("erin-token"),
        alice = sha256_hex("alice-token"),
        other = sha256_hex("other-token"),
        helper = sha256_hex("helper-token"),
    );
    vec![("hardening.toml", text)]
}

fn other(gate: &Toolgate) -> TestClient {
    gate.client(Some(("other-bot", "other-token")), http::Version::HTTP_11)
}

async fn events(gate: &Toolgate, query: &str) -> Vec<Value> {
    audit_events(gate, query).await
}

async fn post_form(
    gate: &Toolgate,
    url: &str,
    key: &str,
    body: &str,
    extra_headers: &[(&str, &str)],
) -> Answer {
    let mut headers = vec![FORM, ("idempotency-key", key)];
    headers.extend_from_slice(extra_headers);
    send(&staging(gate), "POST", url, &headers, body)
        .await
        .unwrap()
}

async fn approve(gate: &Toolgate, id: &str, token: &str) -> Answer {
    gate.admin(
        "POST",
        &format!("/api/proposals/{id}/approve"),
        Some(token),
        Some(json!({"comment": "ok"})),
    )
    .await
}

fn proposal_of(a: &Answer) -> String {
    a.headers["toolgate-proposal"].to_str().unwrap().to_string()
}

// Finding 4: what a flood of refusals may write is capped and aggregated.
#[tokio::test]
async fn a_flood_of_refused_requests_records_a_bounded_amount() {
    let (_pki, upstream, gate) = GateBuilder::examples()
        .policies(&extra())
        .with_upstream()
        .await;
    let long_path = format!("/v1/customers/{}", "x".repeat(60 * 1024));
    for i in 0..60 {
        // Unauthenticated, absolute form, a 60 KB URI.
        let mut s = tokio::net::TcpStream::connect(gate.addr).await.unwrap();
        let req = format!(
            "GET http://api.stripe.com{long_path} HTTP/1.1\r\nHost: api.stripe.com\r\nX-Pad: {}\r\n\r\n",
            "p".repeat(2000 + i)
        );
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).await.unwrap();
        let head = String::from_utf8_lossy(&buf[..n]);
        assert!(head.starts_with("HTTP/1.1 407"), "{head}");
    }
    // An agent's refused call with large headers.
    let got = send(
        &staging(&gate),
        "GET",
        "https://api.stripe.com/v1/charges",
        &[("x-large", &"h".repeat(30_000))],
        "",
    )
    .await
    .unwrap();
    assert_eq!(got.status, 403);
    // Wait until the first 20 are written, then give the other 40 time to show if they were.
    let what = "the first 20 refusals are written";
    audit_events_once(&gate, "code=auth_required", what, |e| e.len() >= 20).await;
    // A sleep: a window in which refusals past the first 20 would show.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let refused = events(&gate, "code=auth_required").await;
    assert_eq!(refused.len(), 20, "the first 20 of the minute are recorded");
    assert!(
        refused.len() <= 20,
        "{} refusals recorded one by one",
        refused.len()
    );
    for e in &refused {
        assert!(e["payload"]["target"].as_str().unwrap().len() < 1200);
    }
    let big = poll::until_some("the refused call's request event", poll::SOON, || async {
        let requests = events(&gate, "kind=request").await;
        requests
            .into_iter()
            .find(|e| e["payload"]["path"] == "/v1/charges")
    })
    .await;
    let headers = big["payload"]["headers"].to_string();
    assert!(
        headers.len() < 5000,
        "{} bytes of headers recorded",
        headers.len()
    );
    assert!(headers.contains("truncated"), "{headers}");
    assert_eq!(upstream.count(), 0);
}

// Finding 4: proposals, idempotency records and ledger entries expire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_records_proposals_and_ledger_entries_expire() {
    let (_pki, upstream, gate) = GateBuilder::examples()
        .policies(&extra())
        .config(|c| {
            c.guards.idempotency_retention = Duration::from_secs(1);
            c.guards.proposal_retention = Duration::from_secs(1);
            c.guards.ledger_retention = Duration::from_secs(1);
            c.guards.sweep_interval = Duration::from_millis(200);
        })
        .with_upstream()
        .await;
    let url = "https://api.stripe.com/v1/connected";
    let first = post_form(&gate, url, "exp-1", "name=a", &[]).await;
    assert_eq!(first.status, 200, "{}", first.text());
    let request_id = first.headers["toolgate-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let again = post_form(&gate, url, "exp-1", "name=a", &[]).await;
    assert_eq!(again.headers["toolgate-replayed"], "true");
    let held = post_form(
        &gate,
        "https://api.stripe.com/v1/held_refunds",
        "exp-2",
        "amount=1",
        &[],
    )
    .await;
    let id = proposal_of(&held);
    let denied = gate
        .admin(
            "POST",
            &format!("/api/proposals/{id}/deny"),
            Some("demo-carol-token"),
            Some(json!({"comment": "no"})),
        )
        .await;
    assert_eq!(denied.status, 200);
    assert_eq!(upstream.count(), 1);

    // The sweep removes the denied proposal, the newest of the three records, last.
    let swept = || async {
        let path = format!("/api/proposals/{id}");
        gate.admin("GET", &path, Some("demo-carol-token"), None)
            .await
            .status
            == 404
    };
    poll::until("the sweep removes the proposal", poll::SOON, swept).await;
    // The record is gone: the same key executes again.
    let later = post_form(&gate, url, "exp-1", "name=a", &[]).await;
    assert_eq!(later.status, 200);
    assert!(!later.headers.contains_key("toolgate-replayed"));
    assert_eq!(upstream.count(), 2);
    let p = gate
        .admin(
            "GET",
            &format!("/api/proposals/{id}"),
            Some("demo-carol-token"),
            None,
        )
        .await;
    assert_eq!(p.status, 404, "{}", p.text());
    let undo = gate
        .admin(
            "POST",
            &format!("/api/rollback/{request_id}"),
            Some("demo-carol-token"),
            None,
        )
        .await;
    assert_eq!(undo.json()["outcome"], "not_found", "{}", undo.text());
}

// Finding 5: approve-mode tools obey the rate limit, the budget and the key rule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_calls_obey_rate_limits_and_budgets_charged_at_commit() {
    let (_pki, upstream, gate) = GateBuilder::examples()
        .policies(&extra())
        .with_upstream()
        .await;
    let url = "https://api.stripe.com/v1/held_refunds";
    let mut ids = Vec::new();
    for i in 0..3 {
        let got = post_form(
            &gate,
            url,
            &format!("b-{i}"),
            &format!("amount=400000&n={i}"),
            &[],
        )
        .await;
        assert_eq!(got.status, 423, "{}", got.text());
        ids.push(proposal_of(&got));
    }
    // A fourth proposal within the minute passes the 3/minute rate limit: refused.
    let got = post_form(&gate, url, "b-3", "amount=1&n=3", &[]).await;
    assert_eq!(
        (got.status.as_u16(), got.code().as_str()),
        (429, "rate_limited")
    );
    // An amount that could never fit is refused at once.
    for id in &ids {
        assert_eq!(approve(&gate, id, "demo-carol-token").await.status, 200);
    }
    let mut outcomes = Vec::new();
    for i in 0..3 {
        let got = post_form(
            &gate,
            url,
            &format!("b-{i}-retry"),
            &format!("amount=400000&n={i}"),
            &[],
        )
        .await;
        outcomes.push((got.status.as_u16(), got.text()));
    }
    assert_eq!(outcomes[0].0, 200, "{outcomes:?}");
    for (status, text) in &outcomes[1..] {
        assert_eq!(*status, 403, "{text}");
        assert!(text.contains("budget exceeded"), "{text}");
    }
    assert_eq!(
        upstream.count(),
        1,
        "only the commit within the budget was sent"
    );
}

// Finding 7: the budget field is required, never negative, and given back when refused.
#[tokio::test]
async fn budget_amounts_are_required_non_negative_and_refunded_on_refusal() {
    let (_pki, upstream, gate) = GateBuilder::examples()
        .policies(&extra())
        .with_upstream()
        .await;
    let url = "https://api.stripe.com/v1/auto_refunds";
    let got = post_form(&gate, url, "m-1", "payment_intent=pi_1", &[]).await;
    assert_eq!(
        (got.status.as_u16(), got.code().as_str()),
        (422, "validation_error")
    );
    assert!(
        got.message().contains("/amount is required"),
        "{}",
        got.message()
    );
    let got = post_form(&gate, url, "m-2", "amount=-400000", &[]).await;
    assert_eq!(got.status, 422, "{}", got.text());
    assert_eq!(upstream.count(), 0);
    // The upstream refuses this one: its charge is given back...
    let got = post_form(
        &gate,
        url,
        "m-3",
        "amount=400000&note=upstream-refuses",
        &[],
    )
    .await;
    assert_eq!(got.status, 400);
    // ...so the whole budget is still there.
    let got = post_form(&gate, url, "m-4", "amount=500000", &[]).await;
    assert_eq!(got.status, 200, "{}", got.text());
    let got = post_form(&gate, url, "m-5", "amount=1", &[]).await;
    assert!(got.message().contains("budget exceeded"), "{}", got.text());
    assert_eq!(upstream.count(), 2);
}

// Finding 8: headers that steer the upstream, duplicates and unknown headers.
#[tokio::test]
async fn steering_and_duplicate_headers_are_refused_and_unknown_ones_dropped() {
    let (_pki, upstream, gate) = GateBuilder::examples()
        .policies(&extra())
        .with_upstream()
        .await;
    let customers = "https://api.stripe.com/v1/customers";
    let got = post_form(
        &gate,
        customers,
        "h-1",
        "email=a@acme.com",
        &[("stripe-account", "acct_OTHER")],
    )
    .await;
    assert_eq!(
        (got.status.as_u16(), got.code().as_str()),
        (403, "policy_violation")
    );
    assert!(
        got.message().contains("stripe-account"),
        "{}",
        got.message()
    );
    let got = post_form(
        &gate,
        customers,
        "h-2",
        "email=a@acme.com",
        &[("x-http-method-override", "DELETE")],
    )
    .await;
    assert_eq!(got.status, 403);
    let got = send(
        &staging(&gate),
        "POST",
        customers,
        &[
            FORM,
            ("content-type", "application/json"),
            ("idempotency-key", "h-3"),
        ],
        "email=a@acme.com",
    )
    .await
    .unwrap();
    assert_eq!(
        (got.status.as_u16(), got.code().as_str()),
        (422, "validation_error")
    );
    assert_eq!(upstream.count(), 0, "nothing refused was sent");

    // A tool that names Stripe-Account forwards it; unknown headers never leave.
    let got = post_form(
        &gate,
        "https://api.stripe.com/v1/connected",
        "h-4",
        "name=x",
        &[("stripe-account", "acct_OWN"), ("x-internal-debug", "1")],
    )
    .await;
    assert_eq!(got.status, 200, "{}", got.text());
    let seen = upstream.received();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].headers["stripe-account"], "acct_OWN");
    assert!(!seen[0].headers.contains_key("x-internal-debug"));
    assert!(!seen[0].headers.contains_key("accept-encoding"));
}

// Findings 9, 10 and 18: bodies, paths and form keys that upstreams read differently.
#[tokio::test]
async fn ambiguous_bodies_paths_and_form_keys_are_refused_unsent() {
    let (_pki, upstream, gate) = GateBuilder::examples()
        .policies(&extra())
        .with_upstream()
        .await;
    let got = send(
        &staging(&gate),
        "POST",
        "https://api.github.com/repos/acme/web/issues",
        &[JSON],
        r#"{"title": "ok", "title": "other"}"#,
    )
    .await
    .unwrap();
    assert_eq!(
        (got.status.as_u16(), got.code().as_str()),
        (422, "validation_error")
    );
    assert!(
        got.message().contains("more than once"),
        "{}",
        got.message()
    );

    let got = post_form(
        &gate,
        "https://api.stripe.com/v1/connected",
        "f-1",
        "items[00]=a",
        &[],
    )
    .await;
    assert_eq!(got.status, 422, "{}", got.text());
    assert!(got.message().contains("leading zero"), "{}", got.message());

    for path in [
        "/repos/acme/x\\..\\..\\evilcorp\\secrets",
        "/repos/acme/..;/evilcorp",
        "/repos/acme/.;x/issues",
    ] {
        let mut tls = github_tunnel(&gate).await;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        tls.write_all(format!("GET {path} HTTP/1.1\r\nHost: api.github.com\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut buf = vec![0u8; 8192];
        let n = tls.read(&mut buf).await.unwrap();
        let answer = String::from_utf8_lossy(&buf[..n]);
        assert!(
            answer.starts_with("HTTP/1.1 403") || answer.starts_with("HTTP/1.1 400"),
            "{path}: {answer}"
        );
        if answer.starts_with("HTTP/1.1 403") {
            assert!(answer.contains("policy_violation"), "{answer}");
        }
    }
    assert_eq!(upstream.count(), 0);
}

// Finding 11: an undo needs what approving its undo tool needs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undo_needs_the_groups_count_and_independence_of_its_undo_tool() {
    let (pki, fakes) = example_apis().await;
    // The examples with customers.delete needing two approvers.
    let stripe = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/stripe.toml"),
    )
    .unwrap();
    let at = stripe.find("name = \"stripe.customers.delete\"").unwrap();
    let (head, tail) = stripe.split_at(at);
    let tail = tail.replacen("required = 1", "required = 2", 1);
    let mut files = extra();
    files.push(("stripe.toml", format!("{head}{tail}")));
    let gate = GateBuilder::examples()
        .policies(&files)
        .routed_to(&pki, fakes.addr)
        .start()
        .await;

    let created = post_form(
        &gate,
        "https://api.stripe.com/v1/customers",
        "u-1",
        "email=jane@acme.com",
        &[],
    )
    .await;
    assert_eq!(created.status, 200, "{}", created.text());
    let rid = created.headers["toolgate-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let undo = |token: &'static str| {
        let gate = &gate;
        let rid = rid.clone();
        async move {
            gate.admin("POST", &format!("/api/rollback/{rid}"), Some(token), None)
                .await
                .json()
        }
    };
    let deletes = || fakes.seen().iter().filter(|s| s.method == "DELETE").count();
    // dave is an admin but not in the undo tool's groups.
    let r = undo("demo-dave-token").await;
    assert_eq!(r["outcome"], "refused", "{r}");
    assert!(
        r["message"].as_str().unwrap().contains("not in the groups"),
        "{r}"
    );
    // alice owns the agent.
    let r = undo("alice-token").await;
    assert_eq!(r["outcome"], "refused", "{r}");
    assert!(r["message"].as_str().unwrap().contains("owns agent"), "{r}");
    // Two different approvers of the group.
    let r = undo("demo-carol-token").await;
    assert_eq!(r["outcome"], "awaiting_approval", "{r}");
    let r = undo("demo-carol-token").await;
    assert_eq!(
        r["outcome"], "awaiting_approval",
        "the same approver counts once: {r}"
    );
    assert_eq!(deletes(), 0, "nothing sent before two approvers asked");
    let r = undo("erin-token").await;
    assert_eq!(r["outcome"], "undone", "{r}");
    assert_eq!(deletes(), 1);
}

// Finding 12: the injected key never reaches the agent, even echoed in a streamed read.
#[tokio::test]
async fn an_upstream_echoing_the_injected_key_does_not_hand_it_to_the_agent() {
    let (_pki, upstream, gate) = GateBuilder::examples()
        .policies(&extra())
        .with_upstream()
        .await;
    let got = send(
        &staging(&gate),
        "GET",
        "https://api.stripe.com/v1/echo",
        &[("x-echo", "1")],
        "",
    )
    .await
    .unwrap();
    assert_eq!(got.status, 200);
    assert_eq!(
        upstream.received()[0].headers["authorization"],
        format!("Bearer {SECRET}"),
        "the upstream did get the key"
    );
    assert!(!got.text().contains(SECRET), "{}", got.text());
    assert!(got.text().contains("[REDACTED]"), "{}", got.text());
    for (name, value) in &got.headers {
        assert!(
            !value.to_str().unwrap_or("").contains(SECRET),
            "header {name} carries the key"
        );
    }
}

// Finding 14: a job belongs to the agent that named it.
#[tokio::test]
async fn another_agent_cannot_put_calls_into_a_foreign_job() {
    let (_pki, upstream, gate) = GateBuilder::examples()
        .policies(&extra())
        .with_upstream()
        .await;
    let job = ("toolgate-job", "job-owned");
    let url = "https://api.github.com/repos/acme/web";
    let got = send(&staging(&gate), "GET", url, &[job], "").await.unwrap();
    assert_eq!(got.status, 200);
    let got = send(&other(&gate), "GET", url, &[job], "").await.unwrap();
    assert_eq!(
        (got.status.as_u16(), got.code().as_str()),
        (403, "policy_violation")
    );
    assert!(
        got.message()
            .contains("belongs to agent support-bot-staging"),
        "{}",
        got.message()
    );
    // Agents of the same owner share jobs.
    let got = send(
        &gate.client(Some(("helper-bot", "helper-token")), http::Version::HTTP_11),
        "GET",
        url,
        &[job],
        "",
    )
    .await
    .unwrap();
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(upstream.count(), 2);
    // The helper's call was recorded after the other bot's refusal: once it is in the story,
    // the refusal would be too.
    let told = || async {
        let path = "/api/audit/story/job-owned";
        let story = gate
            .admin("GET", path, Some("demo-carol-token"), None)
            .await
            .json();
        let events = story["events"].as_array()?;
        events
            .iter()
            .any(|e| e["agent"] == "helper-bot")
            .then_some(story)
    };
    let story = poll::until_some("the helper's call is in the story", poll::SOON, told).await;
    for e in story["events"].as_array().unwrap() {
        assert_ne!(e["agent"], "other-bot", "{e}");
    }
}

// Finding 16: metrics need a token; failed sign-ins are throttled per address.
#[tokio::test]
async fn failed_sign_ins_are_throttled() {
    let (_pki, _upstream, gate) = GateBuilder::examples()
        .policies(&extra())
        .config(|c| {
            c.guards.auth_failures_per_minute = 5;
        })
        .with_upstream()
        .await;
    for _ in 0..5 {
        let got = gate
            .page("POST", "/login", None, Some("token=wrong".into()))
            .await;
        assert_eq!(got.status, 401);
    }
    let got = gate
        .page("POST", "/login", None, Some("token=wrong".into()))
        .await;
    assert_eq!(got.status, 429);
    assert!(got.headers.contains_key("retry-after"));
    // Even a right token waits out the minute from that address.
    let got = gate
        .admin("GET", "/api/proposals", Some("demo-carol-token"), None)
        .await;
    assert_eq!(got.status, 429);
}

// Finding 17: a commit re-runs the policy on what it sends, and sends what was held exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_rechecks_the_policy_in_force_and_sends_the_sealed_headers() {
    let (_pki, upstream, gate) = GateBuilder::examples()
        .policies(&extra())
        .with_upstream()
        .await;
    let url = "https://api.stripe.com/v1/noted_refunds";
    let gate2 = &gate;
    let held = async move { post_form(gate2, url, "c-1", "amount=700", &[]).await };
    let change_then_approve = async {
        let id = pending_of(&gate, "stripe.noted_refunds.create").await["id"]
            .as_str()
            .unwrap()
            .to_string();
        // A rule added after the proposal (same tool version) refuses it at commit.
        let mut files = extra();
        files[0].1 = files[0].1.replace(
            "headers = [\"X-Client-Note\"]",
            "headers = [\"X-Client-Note\"]\nrules = [ { deny_if = \"int(request.body.amount) > 500\", message = \"refunds over 500 are closed today\" } ]",
        );
        gate.write_policy("hardening.toml", &files[0].1);
        let what = "the changed policy is loaded";
        audit_events_once(&gate, "kind=policy_reload", what, |e| {
            e.iter().any(|e| e["payload"]["result"] == "loaded")
        })
        .await;
        assert_eq!(approve(&gate, &id, "demo-carol-token").await.status, 200);
    };
    let (got, ()) = tokio::join!(held, change_then_approve);
    assert_eq!(
        (got.status.as_u16(), got.code().as_str()),
        (403, "approval_denied"),
        "{}",
        got.text()
    );
    assert!(
        got.message().contains("refunds over 500 are closed today"),
        "{}",
        got.message()
    );
    assert_eq!(upstream.count(), 0);

    // A header that looks like a secret is shown redacted and sent as it was.
    let note = "sk_live_abcdefghijklmnopqrstuvwx";
    let gate2 = &gate;
    let held = async move {
        post_form(
            gate2,
            "https://api.stripe.com/v1/noted_refunds",
            "c-3",
            "amount=5",
            &[("x-client-note", note)],
        )
        .await
    };
    let decide = async {
        let p = pending_of(&gate, "stripe.noted_refunds.create").await;
        let shown = p["request"]["headers"].to_string();
        assert!(!shown.contains(note), "{shown}");
        assert!(shown.contains("REDACTED"), "{shown}");
        let id = p["id"].as_str().unwrap().to_string();
        assert_eq!(approve(&gate, &id, "demo-carol-token").await.status, 200);
    };
    let (got, ()) = tokio::join!(held, decide);
    assert_eq!(got.status, 200, "{}", got.text());
    let seen = upstream.received();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].headers["x-client-note"], note);
    // Nothing on disk holds it in clear.
    let data = gate.dir.path().join("data");
    let mut clear = false;
    for entry in walk(&data) {
        let bytes = std::fs::read(&entry).unwrap_or_default();
        if bytes.windows(note.len()).any(|w| w == note.as_bytes()) {
            clear = true;
        }
    }
    assert!(!clear, "the header value is on disk in clear");
}

/// An HTTP/1.1-over-TLS tunnel to `api.github.com` as the staging agent, for bytes no client
/// library would send.
async fn github_tunnel(gate: &Toolgate) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let (status, _, stream) = raw_connect(
        gate.addr,
        "api.github.com:443",
        Some(("support-bot-staging", "demo-staging-token")),
    )
    .await;
    assert_eq!(status, 200);
    tls_over(stream, "api.github.com", &gate.ca_pem, &[b"http/1.1"])
        .await
        .unwrap()
}

/// The first pending proposal of `tool`, waiting for it to appear.
async fn pending_of(gate: &Toolgate, tool: &str) -> Value {
    let what = format!("a proposal of {tool} is pending");
    poll::until_some(&what, poll::SOON, || async {
        let path = "/api/proposals?state=pending";
        let got = gate
            .admin("GET", path, Some("demo-carol-token"), None)
            .await;
        let proposals = got.json()["proposals"].as_array().unwrap().clone();
        proposals.into_iter().find(|p| p["tool"] == tool)
    })
    .await
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

// Finding 3: a half-sent HTTP/1.1 body times out with a JSON refusal, and nothing is sent.
#[tokio::test]
async fn a_half_sent_body_times_out_and_is_never_forwarded() {
    let timeout = Duration::from_millis(500);
    let within = Duration::from_secs(10);
    let (answer, took, sent) = half_sent_body(timeout, "/repos/acme/web/issues", within).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"validation_error\""), "{answer}");
    assert!(took < Duration::from_secs(5));
    assert_eq!(sent, 0);
}

// Review of `contracts suggest`: a call no contract matches notes its body's shape for the
// record, but its refusal is never held back for a body that does not come (it once waited
// for the whole body read timeout), and nothing is sent.
#[tokio::test]
async fn an_unmatched_call_is_refused_without_waiting_for_its_body() {
    // Far below the 120 s body read timeout: the refusal does not wait for the rest.
    let timeout = Duration::from_secs(120);
    let within = crate::support::poll::SOON;
    let (answer, _, sent) = half_sent_body(timeout, "/no/contract/here", within).await;
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(answer.contains("no tool contract matches"), "{answer}");
    assert_eq!(sent, 0);
}

/// A JSON POST to `path` on api.github.com whose body stops half-way (1,000 bytes declared, 15
/// sent), through a gate whose body read timeout is `body_read_timeout`: its first answer (which
/// must come within `within`), how long after the half body it came, and how many requests the
/// upstream received.
async fn half_sent_body(
    body_read_timeout: Duration,
    path: &str,
    within: Duration,
) -> (String, Duration, usize) {
    let (_pki, upstream, gate) = GateBuilder::examples()
        .policies(&extra())
        .config(move |c| {
            c.guards.body_read_timeout = body_read_timeout;
        })
        .with_upstream()
        .await;
    let mut tls = github_tunnel(&gate).await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: api.github.com\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"title\": \"half"
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    let started = std::time::Instant::now();
    let mut buf = vec![0u8; 8192];
    let n = tokio::time::timeout(within, tls.read(&mut buf))
        .await
        .expect("the half-sent body was never answered")
        .unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]).into_owned();
    (answer, started.elapsed(), upstream.count())
}

/// Opens a connection to `proxy` from `from` (a loopback address of the test's choosing).
async fn connect_from(from: &str, proxy: std::net::SocketAddr) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    socket.connect(proxy).await.unwrap()
}

/// One address cannot hold the proxy listener's connection slots with request heads that never
/// finish: past its cap of unauthenticated connections it is closed at once, while agents from
/// other addresses are served, and connections that authenticated no longer count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_holds_a_bounded_number_of_unauthenticated_connections() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_pki, _upstream, gate) = GateBuilder::examples().with_upstream().await;
    let cap = toolgate::guard::UNAUTHENTICATED_PER_ADDRESS;
    let mut held = Vec::new();
    for _ in 0..cap + 1 {
        let mut s = connect_from("127.0.0.2", gate.addr).await;
        s.write_all(b"CONNECT api.github.com:443 HTTP/1.1\r\nHost: api.gi")
            .await
            .unwrap();
        held.push(s);
    }
    // One over the cap (whichever the listener took last): closed unserved, at once (not after
    // the header timeout); the others stay open.
    let mut closed = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while closed.is_empty() && tokio::time::Instant::now() < deadline {
        for (i, s) in held.iter_mut().enumerate() {
            let mut buf = [0u8; 64];
            if let Ok(read) = tokio::time::timeout(Duration::from_millis(5), s.read(&mut buf)).await
            {
                assert!(
                    matches!(read, Ok(0) | Err(_)),
                    "closed, not answered: {read:?}"
                );
                closed.push(i);
            }
        }
    }
    assert_eq!(closed.len(), 1, "exactly one over the cap: {closed:?}");
    // Another address (the agent's) is served meanwhile, and its authenticated tunnels do not
    // count against its address: more of them than the cap stay open.
    let agent = Some(("support-bot-staging", "demo-staging-token"));
    let mut tunnels = Vec::new();
    for _ in 0..cap + 8 {
        let (status, text, stream) = raw_connect(gate.addr, "api.github.com:443", agent).await;
        assert_eq!(status, 200, "{text}");
        tunnels.push(stream);
    }
    // Released with the connections: the address may connect again.
    drop(held);
    let served = || async {
        let s = connect_from("127.0.0.2", gate.addr).await;
        let mut probe = [0u8; 1];
        // Served: it stays open (no immediate close) while it sends nothing.
        let peeked = tokio::time::timeout(Duration::from_millis(100), s.peek(&mut probe)).await;
        peeked.is_err().then_some(s)
    };
    let what = "the address's count drops with its connections";
    let _again = poll::until_some(what, poll::SOON, served).await;
}
