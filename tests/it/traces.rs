//! Traces: an agent instrumented with the official OpenTelemetry Python SDK calls through
//! toolgate (the real binary, `--otlp-endpoint`), and a real OTLP/HTTP receiver built on the
//! official protobuf messages collects both sides' spans. One trace holds the agent's span,
//! toolgate's call span (its child, continued from `traceparent`), the phase spans and the
//! upstream exchange; the attributes follow the conventions; the held call's trace shows the
//! approval wait with the approver as an event; and no secret, body or hidden field is in any
//! span.
//!
//! The Python SDK is installed by `.ci/run` into `tests/sdk/.venv`; without it this test skips
//! (unless `TOOLGATE_REQUIRE_SDKS=1`).

use serde_json::Value;

use crate::support::otlp::{Received, Receiver};
use crate::support::process::{copy_dir, serve_command, start_command};
use crate::support::*;

const BIN: &str = env!("CARGO_BIN_EXE_toolgate");

fn skip(why: &str) -> bool {
    if std::env::var("TOOLGATE_REQUIRE_SDKS").as_deref() == Ok("1") {
        panic!("TOOLGATE_REQUIRE_SDKS=1 but {why}");
    }
    crate::support::skips::skipped("traces", why, crate::support::skips::SDKS);
    true
}

fn step<'a>(steps: &'a [Value], name: &str) -> &'a Value {
    steps
        .iter()
        .find(|s| s["step"] == name)
        .unwrap_or_else(|| panic!("the agent did not report {name}: {steps:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agents_trace_continues_through_toolgate_with_its_phases_and_no_secret() {
    let python = crate::sdk::sdk_dir().join(".venv/bin/python");
    let check = std::process::Command::new(&python)
        .args([
            "-c",
            "import opentelemetry.sdk, opentelemetry.exporter.otlp.proto.http",
        ])
        .status();
    if !check.is_ok_and(|s| s.success())
        && skip("the OpenTelemetry Python SDK is not installed in tests/sdk/.venv")
    {
        return;
    }
    let receiver = Receiver::start().await;
    let (pki, _fakes) = example_apis().await;
    let dir = tempfile::tempdir().unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    copy_dir(&root.join("policies"), &dir.path().join("policies"));
    let mut cmd = serve_command(BIN, dir.path());
    cmd.args([
        "--connect-to",
        &format!("api.stripe.com:443={}", _fakes.addr),
    ])
    .arg("--upstream-ca")
    .arg(&pki.ca_path)
    .args(["--otlp-endpoint", &receiver.base_url()])
    .env("OTEL_BSP_SCHEDULE_DELAY", "100")
    .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    .env_remove("OTEL_TRACES_SAMPLER");
    let (_child, proxy, admin, _log) = start_command(cmd);
    let approver = approver_at(admin.parse().unwrap(), "traced approval");

    let mut py = tokio::process::Command::new(&python);
    py.arg(crate::sdk::sdk_dir().join("trace_agent.py"))
        .env(
            "TOOLGATE_PROXY",
            format!("http://support-bot-staging:demo-staging-token@{proxy}"),
        )
        .env("TOOLGATE_CA", dir.path().join("certs/ca.pem"))
        .env(
            "OTLP_TRACES_URL",
            format!("{}/v1/traces", receiver.base_url()),
        )
        .env("SDK_RUN", "t1");
    let steps = crate::sdk::run_agent(py).await;
    approver.abort();
    assert_eq!(step(&steps, "create")["status"], 200, "{steps:#?}");
    assert_eq!(step(&steps, "read")["status"], 200);
    assert_eq!(step(&steps, "refused")["status"], 403);
    assert_eq!(step(&steps, "held")["status"], 200, "{steps:#?}");

    // Every call's trace: the agent's span, toolgate's call span below it, phases below that.
    let calls = |spans: &[Received]| {
        spans
            .iter()
            .filter(|s| s.service == "toolgate" && s.span.name == "toolgate.call")
            .count()
    };
    poll::until(
        "toolgate's call spans reach the receiver",
        poll::SOON,
        || {
            let n = calls(&receiver.spans());
            async move { n >= 4 }
        },
    )
    .await;
    // The held call's phase spans end before its call span: all there once the call span is.
    let spans = receiver.spans();
    for name in ["create", "read", "refused", "held"] {
        trace_of(&spans, step(&steps, name), name);
    }
    approval_in(&spans, step(&steps, "held"));
    no_secret_in(&spans, root);
    story_names_its_trace(&spans, step(&steps, "read"), admin.parse().unwrap()).await;
}

/// The request's audit event carries its trace id, and its page links to the trace.
async fn story_names_its_trace(spans: &[Received], step: &Value, admin: std::net::SocketAddr) {
    let trace_id = step["trace_id"].as_str().unwrap();
    let call = spans
        .iter()
        .find(|s| s.trace_id() == trace_id && s.span.name == "toolgate.call")
        .unwrap();
    let request_id = call.attr("toolgate.request_id").unwrap();
    let path = format!("/api/audit/story/{request_id}");
    let story = admin_at(admin, "GET", &path, Some("demo-riley-token"), None).await;
    let story: Value = serde_json::from_slice(&story.body).unwrap();
    assert!(
        story
            .to_string()
            .contains(&format!("\"trace_id\":\"{trace_id}\"")),
        "{story}"
    );
}

/// The spans of one call's trace, checked: toolgate's call span is the child of the agent's
/// span, with the attributes of the conventions, and the phases are its descendants.
fn trace_of(spans: &[Received], step: &Value, name: &str) {
    let trace_id = step["trace_id"].as_str().unwrap();
    let agent_span = step["span_id"].as_str().unwrap();
    let in_trace: Vec<&Received> = spans.iter().filter(|s| s.trace_id() == trace_id).collect();
    assert!(
        in_trace
            .iter()
            .any(|s| s.service == "trace-agent" && s.span_id() == agent_span),
        "{name}: the agent's own span is in its trace"
    );
    let call = in_trace
        .iter()
        .find(|s| s.service == "toolgate" && s.span.name == "toolgate.call")
        .unwrap_or_else(|| {
            let calls: Vec<_> = spans
                .iter()
                .filter(|s| s.service == "toolgate")
                .map(|s| (s.span.name.clone(), s.trace_id(), s.parent_id()))
                .collect();
            panic!("{name}: toolgate's call span is in the agent's trace {trace_id}: {calls:#?}")
        });
    assert_eq!(
        call.parent_id(),
        agent_span,
        "{name}: continued from traceparent"
    );
    assert_eq!(
        call.attr("toolgate.agent").as_deref(),
        Some("support-bot-staging")
    );
    assert_eq!(
        call.attr("server.address").as_deref(),
        Some("api.stripe.com")
    );
    assert!(call
        .attr("toolgate.request_id")
        .is_some_and(|r| r.starts_with("req")));
    let status = call.attr("http.response.status_code").unwrap();
    assert_eq!(status, step["status"].to_string(), "{name}");
    let phases: Vec<&str> = in_trace
        .iter()
        .filter(|s| s.service == "toolgate")
        .map(|s| s.span.name.as_str())
        .collect();
    for phase in ["route", "identify"] {
        assert!(
            phases.contains(&phase),
            "{name}: phase {phase} in {phases:?}"
        );
    }
    if name == "refused" {
        assert_eq!(call.attr("toolgate.decision").as_deref(), Some("refused"));
        assert!(call.attr("error.type").is_some());
        assert!(
            call.span.events.iter().any(|e| e.name == "denial"),
            "{name}"
        );
        return;
    }
    assert_eq!(
        call.attr("gen_ai.operation.name").as_deref(),
        Some("execute_tool")
    );
    assert!(call
        .attr("gen_ai.tool.name")
        .is_some_and(|t| t.starts_with("stripe.customers.")));
    assert!(call.attr("toolgate.owner").is_some(), "{name}");
    for phase in ["match", "decide"] {
        assert!(
            phases.contains(&phase),
            "{name}: phase {phase} in {phases:?}"
        );
    }
    // The upstream exchange: a client span named by its method (HTTP client conventions).
    let upstream = in_trace
        .iter()
        .find(|s| s.service == "toolgate" && s.span.kind == 3)
        .unwrap_or_else(|| panic!("{name}: the upstream exchange is in {phases:?}"));
    assert!(["GET", "POST", "DELETE"].contains(&upstream.span.name.as_str()));
    assert!(upstream.attr("http.response.status_code").is_some());
}

/// The held call's trace shows the wait for approval and who approved.
fn approval_in(spans: &[Received], step: &Value) {
    let trace_id = step["trace_id"].as_str().unwrap();
    let wait = spans
        .iter()
        .find(|s| s.trace_id() == trace_id && s.span.name == "approval wait")
        .expect("the held call's trace has its approval wait");
    let event = wait
        .span
        .events
        .iter()
        .find(|e| e.name == "approval")
        .expect("the approval is an event of the wait");
    let by = crate::support::otlp::text_of(&event.attributes, "toolgate.approver");
    assert_eq!(by.as_deref(), Some("carol@example.com"));
}

/// No demo secret, no body, no hidden field in any span toolgate exported.
fn no_secret_in(spans: &[Received], root: &std::path::Path) {
    let everything = format!(
        "{:?}",
        spans
            .iter()
            .filter(|s| s.service == "toolgate")
            .map(|s| &s.span)
            .collect::<Vec<_>>()
    );
    let secrets = std::fs::read_dir(root.join("policies/demo-secrets")).unwrap();
    for f in secrets {
        let secret = std::fs::read_to_string(f.unwrap().path()).unwrap();
        let secret = secret.trim();
        assert!(!secret.is_empty());
        assert!(!everything.contains(secret), "a secret is in a span");
    }
    for body in [
        "Hidden Street",
        "+1-555-0100",
        "trace-t1@acme.com",
        "agent-holds-no-real-key",
    ] {
        assert!(!everything.contains(body), "{body} is in a span");
    }
}

/// A collector that takes connections and never answers: the exporter's queue fills.
async fn black_hole() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        // Bounded: a test makes a handful of export connections.
        for _ in 0..64 {
            match listener.accept().await {
                Ok((stream, _)) => held.push(stream),
                Err(_) => return,
            }
        }
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_never_answers_costs_dropped_spans_never_calls() {
    let (hole, _held) = black_hole().await;
    let pki = Pki::new("trace drop CA");
    let upstream = Upstream::start(pki.server_config(&API_HOSTS)).await;
    let dir = tempfile::tempdir().unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    copy_dir(&root.join("policies"), &dir.path().join("policies"));
    let mut cmd = serve_command(BIN, dir.path());
    cmd.args([
        "--connect-to",
        &format!("api.stripe.com:443={}", upstream.addr),
    ])
    .arg("--upstream-ca")
    .arg(&pki.ca_path)
    .args(["--otlp-endpoint", &format!("http://{hole}")])
    .env("OTEL_BSP_MAX_QUEUE_SIZE", "16")
    .env("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "8")
    .env("OTEL_BSP_SCHEDULE_DELAY", "50")
    .env("OTEL_EXPORTER_OTLP_TIMEOUT", "60000")
    .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    .env_remove("OTEL_TRACES_SAMPLER");
    let (_child, proxy, admin, _log) = start_command(cmd);
    let ca = std::fs::read_to_string(dir.path().join("certs/ca.pem")).unwrap();
    let client = client_via(
        proxy,
        Some(("support-bot-staging", "demo-staging-token")),
        &ca,
        http::Version::HTTP_11,
    );
    for i in 0..60 {
        let url = format!("https://api.stripe.com/v1/customers/cus_{i}");
        let got = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            send(&client, "GET", &url, &[], ""),
        )
        .await
        .expect("a call is never held back by the exporter")
        .unwrap();
        assert_eq!(got.status, 200);
    }
    let admin: std::net::SocketAddr = admin.parse().unwrap();
    poll::until("spans are counted as dropped", poll::SOON, || async move {
        let metrics = admin_at(admin, "GET", "/metrics", Some("demo-riley-token"), None)
            .await
            .text();
        metrics
            .lines()
            .find(|l| l.starts_with("toolgate_trace_spans_dropped_total"))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|n| n.parse::<f64>().ok())
            .is_some_and(|n| n > 0.0)
    })
    .await;
}
