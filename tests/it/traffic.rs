//! The security reviewer's view of captured traffic (DESIGN section 12): a read-only principal
//! that every acting page and API refuses, `/traffic` filtered and paged over the audit indexes
//! (each request once), one request as recorded with secrets redacted and agent markup escaped,
//! and, in headless Chromium, a reviewer who knows only the agent's name finding its refused
//! calls and the approved refund.

use std::collections::HashSet;
use std::time::Duration;

use crate::support::*;
use serde_json::{json, Value};

const CAROL: &str = "demo-carol-token";
const RILEY: &str = "demo-riley-token";
const STAGING: Option<(&str, &str)> = Some(("support-bot-staging", "demo-staging-token"));

/// What the tests read: a refused call (schema), a refund approved by carol, a call with markup
/// in its headers and body, and `noise` refused reads. Returns the refund's request id.
async fn fill(gate: &Toolgate, noise: usize) -> String {
    let agent = client_via(gate.addr, STAGING, &gate.ca_pem, http::Version::HTTP_11);
    // Refused by the schema; the agent's own key in the header is never recorded.
    let got = send(
        &agent,
        "POST",
        "https://api.stripe.com/v1/customers",
        &[
            FORM,
            ("idempotency-key", "t-bad"),
            ("authorization", "Bearer sk_live_agent_should_not_show"),
        ],
        "email=bad@acme.com&tax_exempt=sometimes",
    )
    .await
    .unwrap();
    assert_eq!(got.code(), "validation_error");
    // Markup in what an agent sends: a header and a body.
    let got = send(
        &agent,
        "POST",
        "https://api.github.com/repos/acme/widgets/issues",
        &[JSON, ("user-agent", "<script>alert('ua')</script>")],
        &json!({"title": "<b id=\"pwned\">pwned</b>"}).to_string(),
    )
    .await
    .unwrap();
    assert!(got.status.is_success(), "{}", got.text());
    // A refund held and approved by carol.
    let approving = approver(gate, "refund approved for the review");
    let got = send(
        &agent,
        "POST",
        "https://api.stripe.com/v1/refunds",
        &[FORM, ("idempotency-key", "t-refund")],
        "payment_intent=pi_review&amount=100",
    )
    .await
    .unwrap();
    approving.abort();
    assert_eq!(got.status, 200, "{}", got.text());
    let refund = got.headers[toolgate::proxy::REQUEST_ID_HEADER]
        .to_str()
        .unwrap()
        .to_string();
    for i in 0..noise {
        let got = send(
            &agent,
            "GET",
            &format!("https://api.stripe.com/v1/charges/ch_{i}"),
            &[],
            "",
        )
        .await
        .unwrap();
        assert_eq!(got.code(), "policy_violation");
    }
    refund
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reviewer_reads_every_request_once_and_can_act_on_nothing() {
    let (pki, fakes) = example_apis().await;
    let gate = GateBuilder::examples()
        .routed_to(&pki, fakes.addr)
        .start()
        .await;
    let noise = 1500;
    let refund = fill(&gate, noise).await;

    // Reading: the traffic, one request, stories, search, export, verify, metrics.
    for path in [
        "/api/traffic".to_string(),
        format!("/api/traffic/{refund}"),
        format!("/api/audit/story/{refund}"),
        "/api/audit/search?agent=support-bot-staging".into(),
        "/api/audit/export".into(),
        "/api/audit/verify".into(),
        "/metrics".into(),
    ] {
        let got = gate.admin("GET", &path, Some(RILEY), None).await;
        assert_eq!(got.status, 200, "{path}: {}", got.text());
    }
    // Acting, or the approvers' own views: 403, and nothing changed.
    for (method, path) in [
        ("GET", "/api/tools"),
        ("POST", "/api/tools/stripe.refunds.create/disable"),
        ("POST", "/api/tools/stripe.refunds.create/enable"),
        ("GET", "/api/agents"),
        ("POST", "/api/agents/support-bot-staging/disable"),
        ("POST", "/api/agents/support-bot-staging/enable"),
        ("GET", "/api/proposals"),
        ("POST", "/api/proposals/prop_x/approve"),
        ("POST", "/api/proposals/prop_x/deny"),
        ("POST", "/api/rollback/req_x"),
        ("POST", "/api/jobs/job_x/rollback"),
        ("POST", "/api/replay/req_x"),
        ("POST", "/api/audit/purge"),
    ] {
        let got = gate
            .admin(method, path, Some(RILEY), Some(json!({"reason": "r"})))
            .await;
        assert_eq!(got.status, 403, "{method} {path}: {}", got.text());
        assert_eq!(got.code(), "forbidden");
    }
    let cookie = gate.sign_in(RILEY).await;
    for (method, path) in [
        ("GET", "/queue"),
        ("GET", "/queue/fragment"),
        ("GET", "/history"),
        ("GET", "/switches"),
        ("GET", "/rollback"),
        ("GET", "/proposals/prop_x"),
        ("POST", "/proposals/prop_x/approve"),
        ("POST", "/switches/tool/stripe.refunds.create/disable"),
        ("POST", "/rollback/request/req_x"),
    ] {
        let got = gate
            .page(method, path, Some(&cookie), Some("csrf=x".into()))
            .await;
        assert_eq!(got.status, 403, "{method} {path}");
    }
    let kills = gate
        .admin("GET", "/api/tools", Some(CAROL), None)
        .await
        .json();
    assert!(!kills.to_string().contains("\"disabled\":true"), "{kills}");
    for path in [
        "/traffic",
        &format!("/traffic/{refund}"),
        &format!("/stories/{refund}"),
    ] {
        let got = gate.page("GET", path, Some(&cookie), None).await;
        assert_eq!(got.status, 200, "{path}");
    }

    // Paging over every request of the agent, newest first: each request exactly once.
    let mut seen = HashSet::new();
    let mut cursor = String::new();
    let mut pages = 0;
    loop {
        let path = format!("/api/traffic?agent=support-bot-staging&limit=97&cursor={cursor}");
        let page = gate.admin("GET", &path, Some(RILEY), None).await.json();
        for row in page["requests"].as_array().unwrap() {
            let id = row["request_id"].as_str().unwrap().to_string();
            assert!(seen.insert(id.clone()), "{id} listed twice");
        }
        pages += 1;
        assert!(pages < 100, "paging ends");
        match page["next_cursor"].as_str() {
            Some(c) => cursor = c.to_string(),
            None => break,
        }
    }
    assert_eq!(seen.len(), noise + 3, "every request of the agent, once");
    // Newest first; filters by code and by decision.
    let first = gate
        .admin("GET", "/api/traffic?limit=1", Some(RILEY), None)
        .await
        .json();
    assert_eq!(
        first["requests"][0]["path"],
        format!("/v1/charges/ch_{}", noise - 1)
    );
    let refused = gate
        .admin(
            "GET",
            "/api/traffic?agent=support-bot-staging&code=validation_error",
            Some(RILEY),
            None,
        )
        .await
        .json();
    let rows = refused["requests"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{refused}");
    assert!(
        rows[0]["message"].as_str().unwrap().contains("tax_exempt"),
        "{refused}"
    );
    let held = gate
        .admin("GET", "/api/traffic?code=held", Some(RILEY), None)
        .await
        .json();
    assert_eq!(held["requests"][0]["request_id"], refund.as_str());
    let text = gate
        .admin("GET", "/api/traffic?q=/ch_1499", Some(RILEY), None)
        .await
        .json();
    assert_eq!(text["requests"].as_array().unwrap().len(), 1, "{text}");

    // One request as recorded: the approver, no secret, the agent's markup as text.
    let detail = gate
        .admin("GET", &format!("/api/traffic/{refund}"), Some(RILEY), None)
        .await;
    assert!(
        detail.text().contains("carol@example.com"),
        "{}",
        detail.text()
    );
    let page = gate
        .page("GET", &format!("/traffic/{refund}"), Some(&cookie), None)
        .await
        .text();
    assert!(page.contains("carol@example.com") && page.contains("refund approved for the review"));
    let all = gate
        .page(
            "GET",
            "/traffic?agent=support-bot-staging&limit=500",
            Some(&cookie),
            None,
        )
        .await
        .text();
    let export = gate
        .page(
            "GET",
            "/traffic/export?agent=support-bot-staging",
            Some(&cookie),
            None,
        )
        .await
        .text();
    assert_eq!(export.lines().count(), noise + 3);
    for text in [&all, &export, &page] {
        assert!(
            !text.contains("sk_live_agent_should_not_show"),
            "no agent secret shown"
        );
        assert!(
            !text.contains("sk_test_toolgate_demo_placeholder"),
            "no injected secret shown"
        );
    }
    let markup: Value = gate
        .admin(
            "GET",
            "/api/traffic?tool=github.issues.create",
            Some(RILEY),
            None,
        )
        .await
        .json();
    let id = markup["requests"][0]["request_id"]
        .as_str()
        .unwrap()
        .to_string();
    let page = gate
        .page("GET", &format!("/traffic/{id}"), Some(&cookie), None)
        .await
        .text();
    assert!(
        !page.contains("<script>alert") && !page.contains("<b id="),
        "markup is escaped"
    );
    assert!(
        page.contains("&lt;script&gt;alert(&#39;ua&#39;)&lt;/script&gt;"),
        "{page}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reviewer_finds_refused_calls_and_the_approved_refund_in_a_real_browser() {
    let Some((dir, chromium)) = browser() else {
        return;
    };
    let (pki, fakes) = example_apis().await;
    let gate = GateBuilder::examples()
        .routed_to(&pki, fakes.addr)
        .start()
        .await;
    fill(&gate, 120).await;
    let out = tokio::process::Command::new("node")
        .arg(dir.join("review.mjs"))
        .arg(format!("http://{}", gate.admin_addr))
        .arg(RILEY)
        .env("CHROMIUM", &chromium)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), out)
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    eprintln!("{seen:#}");
    assert_eq!(seen["refused_rows"], 1, "{seen}");
    assert!(
        seen["why"].as_str().unwrap().contains("tax_exempt"),
        "{seen}"
    );
    assert_eq!(seen["secret_shown"], false);
    assert!(
        seen["approvals"]
            .as_str()
            .unwrap()
            .contains("carol@example.com"),
        "{seen}"
    );
    assert_eq!(seen["queue_status"], 403);
    assert_eq!(seen["markup_elements"], 0, "{seen}");
    let shown = seen["markup_text"].as_str().unwrap();
    assert!(
        shown.contains("<b id=") && shown.contains("pwned</b>"),
        "shown as text: {seen}"
    );
    assert!(shown.contains("<script>alert('ua')</script>"), "{seen}");
    assert!(seen["dialog"].is_null(), "no markup ran: {seen}");
    assert!(seen["phone_width"].as_u64().unwrap() <= 420, "{seen}");
    assert_eq!(
        seen["pages_rows"], 123,
        "every request once over the pages: {seen}"
    );
}
