//! The model's reason (issue 32, step 1): the tool calls a model answer asks for are recorded on
//! its `model_usage` event — OpenAI Chat Completions whole and streamed, Anthropic Messages
//! streamed — with the answer's id, never the model's text, and the stream is passed on whole.

use crate::support::*;
use http_body_util::Full;
use serde_json::{json, Value};

fn policy() -> String {
    r#"
[[agent]]
id = "writer"
token_sha256 = "WRITER"
owner = "alice@example.com"
environment = "staging"
tools = ["models.*"]

[[credential]]
name = "model-key"
file = "demo-secrets/stripe-test.key"
header = "Authorization"
format = "Bearer {secret}"

[[tool]]
name = "models.openai.chat"
host = "api.openai.com"
method = "POST"
path = "/v1/chat/completions"
side_effects = "none"
kind = "model"
body = { format = "json" }
credential = { staging = "model-key" }

[[tool]]
name = "models.anthropic.messages"
host = "api.anthropic.com"
method = "POST"
path = "/v1/messages"
side_effects = "none"
kind = "model"
body = { format = "json" }
credential = { staging = "model-key" }

# What the model's tool call becomes: a contracted call the model names refund_payment.
[[tool]]
name = "models.refunds.create"
host = "api.openai.com"
method = "POST"
path = "/v1/refunds"
side_effects = "none"
body = { format = "form" }
credential = { staging = "model-key" }
model_tools = ["refund_payment"]

# The same, held for a payments lead.
[[tool]]
name = "models.refunds.held"
host = "api.openai.com"
method = "POST"
path = "/v1/refunds/held"
side_effects = "none"
mode = "approve"
approval = { groups = ["payments-leads"], required = 1, hold = "1s" }
body = { format = "form" }
credential = { staging = "model-key" }
model_tools = ["refund_payment"]

# A tool no model names.
[[tool]]
name = "models.notes.create"
host = "api.openai.com"
method = "POST"
path = "/v1/notes"
side_effects = "none"
body = { format = "form" }
credential = { staging = "model-key" }
"#
    .replace("WRITER", &sha256_hex("writer-token"))
}

/// The payment intent a model asks to refund: the last message's text, if it names one.
fn intent_of(asked: &Value) -> String {
    let last = asked["messages"].as_array().and_then(|m| m.last());
    match last.and_then(|m| m["content"].as_str()) {
        Some(text) if text.starts_with("pi_") => text.to_string(),
        _ => "pi_123".to_string(),
    }
}

/// What the provider answers: a tool call to refund_payment, in the shape the path and the
/// body's `stream` ask for.
fn answer(path: &str, asked: &Value) -> (String, &'static str) {
    let stream = asked["stream"] == true;
    let pi = intent_of(asked);
    // A secret-looking value in a tool input, when the test asks for one (the audit redacts it).
    let mut args = json!({"payment_intent": pi, "amount": 500});
    if asked["secret"] == true {
        args["note"] = json!("key sk_live_51HfakeSecretValue99");
    }
    // The MCP server's ticket read, when the test asks for that tool instead.
    let (tool, args) = match asked["ticket"] == true {
        true => ("get_ticket", json!({"id": "T-9"}).to_string()),
        false => ("refund_payment", args.to_string()),
    };
    let sse = |events: Vec<Value>| {
        let mut out: String = events.iter().map(|e| format!("data: {e}\n\n")).collect();
        out.push_str("data: [DONE]\n\n");
        (out, "text/event-stream")
    };
    match (path, stream) {
        ("/v1/refunds" | "/v1/notes" | "/v1/refunds/held", _) => (json!({"id": "re_1", "object": "refund"}).to_string(), "application/json"),
        ("/v1/chat/completions", false) => (
            json!({"id": "chatcmpl-whole", "object": "chat.completion", "model": "gpt-test",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "I will refund the customer now",
                    "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": tool, "arguments": args}}]}, "finish_reason": "tool_calls"}],
                "created": 1_700_000_000,
                "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}})
            .to_string(),
            "application/json",
        ),
        ("/v1/chat/completions", true) => sse(vec![
            json!({"id": "chatcmpl-stream", "object": "chat.completion.chunk", "created": 1_700_000_000, "model": "gpt-test", "choices": [{"index": 0, "delta": {"role": "assistant", "tool_calls": [{"index": 0, "id": "call_2", "type": "function", "function": {"name": "refund_payment", "arguments": ""}}]}, "finish_reason": null}]}),
            json!({"id": "chatcmpl-stream", "object": "chat.completion.chunk", "created": 1_700_000_000, "model": "gpt-test", "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": format!("{{\"payment_intent\":\"{pi}\",")}}]}, "finish_reason": null}]}),
            json!({"id": "chatcmpl-stream", "object": "chat.completion.chunk", "created": 1_700_000_000, "model": "gpt-test", "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "\"amount\":500}"}}]}, "finish_reason": null}]}),
            json!({"id": "chatcmpl-stream", "object": "chat.completion.chunk", "created": 1_700_000_000, "model": "gpt-test", "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}),
        ]),
        _ => {
            let events = [
                ("message_start", json!({"type": "message_start", "message": {"id": "msg_stream", "type": "message", "role": "assistant", "model": "claude-test", "content": [], "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 9, "output_tokens": 1}}})),
                ("content_block_start", json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})),
                ("content_block_delta", json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "I will refund the customer now"}})),
                ("content_block_stop", json!({"type": "content_block_stop", "index": 0})),
                ("content_block_start", json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "toolu_3", "name": "refund_payment", "input": {}}})),
                ("content_block_delta", json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": format!("{{\"payment_intent\": \"{pi}\",")}})),
                ("content_block_delta", json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": " \"amount\": 500}"}})),
                ("content_block_stop", json!({"type": "content_block_stop", "index": 1})),
                ("message_delta", json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null}, "usage": {"output_tokens": 20}})),
                ("message_stop", json!({"type": "message_stop"})),
            ];
            let out = events
                .iter()
                .map(|(name, e)| format!("event: {name}\ndata: {e}\n\n"))
                .collect();
            (out, "text/event-stream")
        }
    }
}

async fn model_server(pki: &Pki) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hosts = ["api.openai.com", "api.anthropic.com"];
    serve_https(
        listener,
        pki.server_config(&hosts),
        |req: http::Request<hyper::body::Incoming>| async move {
            use http_body_util::BodyExt;
            let path = req.uri().path().to_string();
            let body = req
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let asked: Value = serde_json::from_slice(&body).unwrap_or_default();
            let (text, content_type) = answer(&path, &asked);
            Ok::<_, std::convert::Infallible>(
                http::Response::builder()
                    .header("content-type", content_type)
                    .body(Full::new(bytes::Bytes::from(text)))
                    .unwrap(),
            )
        },
    );
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tool_calls_a_model_asks_for_are_recorded_whole_and_streamed() {
    let pki = Pki::new("test model CA");
    let addr = model_server(&pki).await;
    let gate = GateBuilder::examples()
        .policy("models.toml", policy())
        .routed_to(&pki, addr)
        .config(move |c| {
            c.connect_to.insert(("api.anthropic.com".into(), 443), addr);
        })
        .start()
        .await;
    let client = gate.client(Some(("writer", "writer-token")), http::Version::HTTP_11);
    let openai = "https://api.openai.com/v1/chat/completions";
    let asks = [
        (
            openai,
            json!({"model": "gpt-test", "messages": [], "secret": true}),
        ),
        (
            openai,
            json!({"model": "gpt-test", "stream": true, "messages": []}),
        ),
        (
            "https://api.anthropic.com/v1/messages",
            json!({"model": "claude-test", "stream": true, "max_tokens": 10, "messages": []}),
        ),
    ];
    for (url, body) in asks {
        let got = send(&client, "POST", url, &[JSON], body.to_string())
            .await
            .unwrap();
        assert_eq!(got.status, 200, "{}", String::from_utf8_lossy(&got.body));
        // The agent gets the answer whole.
        assert!(String::from_utf8_lossy(&got.body).contains("refund_payment"));
    }
    let events = audit_events_once(&gate, "kind=model_usage", "three model answers", |e| {
        e.len() >= 3
    })
    .await;
    let mut answers: Vec<String> = Vec::new();
    for e in &events {
        let p = &e["payload"];
        let call = &p["tool_calls"][0];
        assert_eq!(call["name"], "refund_payment", "{p}");
        assert_eq!(call["arguments"]["payment_intent"], "pi_123", "{p}");
        assert_eq!(call["arguments"]["amount"], 500, "{p}");
        answers.push(p["answer_id"].as_str().unwrap_or("").to_string());
    }
    answers.sort();
    assert_eq!(answers, ["chatcmpl-stream", "chatcmpl-whole", "msg_stream"]);
    let all = serde_json::to_string(&audit_events(&gate, "agent=writer").await).unwrap();
    assert!(
        !all.contains("I will refund"),
        "the model's text is never recorded"
    );
    assert!(
        !all.contains("sk_live_51HfakeSecretValue99"),
        "a secret-looking value in a model's tool input is redacted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_is_joined_to_the_model_answer_that_asked_for_it() {
    let pki = Pki::new("test model CA");
    let addr = model_server(&pki).await;
    let gate = GateBuilder::examples()
        .policy("models.toml", policy())
        .routed_to(&pki, addr)
        .start()
        .await;
    let client = gate.client(Some(("writer", "writer-token")), http::Version::HTTP_11);
    let url = "https://api.openai.com/v1/chat/completions";
    let asked = send(
        &client,
        "POST",
        url,
        &[JSON],
        json!({"model": "gpt-test", "messages": []}).to_string(),
    )
    .await
    .unwrap();
    let model_request = request_id(&asked);
    audit_events_once(&gate, "kind=model_usage", "the model answer", |e| {
        !e.is_empty()
    })
    .await;
    // The refund the model asked for: exact (the contract names refund_payment, the values match).
    let form = "payment_intent=pi_123&amount=500";
    let got = send(
        &client,
        "POST",
        "https://api.openai.com/v1/refunds",
        &[FORM],
        form,
    )
    .await
    .unwrap();
    assert_eq!(got.status, 200, "{}", String::from_utf8_lossy(&got.body));
    let refund = request_id(&got);
    // A note no model asked for: none.
    let got = send(
        &client,
        "POST",
        "https://api.openai.com/v1/notes",
        &[FORM],
        "text=hello",
    )
    .await
    .unwrap();
    let note = request_id(&got);
    let requests = audit_events_once(&gate, "kind=request&agent=writer", "the calls", |e| {
        e.iter()
            .filter(|e| e["payload"]["requested_by"].is_object())
            .count()
            >= 2
    })
    .await;
    let by = |rid: &str| {
        requests
            .iter()
            .find(|e| e["request_id"] == rid)
            .map(|e| e["payload"]["requested_by"].clone())
            .unwrap()
    };
    let joined = by(&refund);
    assert_eq!(joined["match"], "exact", "{joined}");
    assert_eq!(joined["model_request"], model_request.as_str());
    assert_eq!(joined["answer_id"], "chatcmpl-whole");
    assert_eq!(joined["tool_call_id"], "call_1");
    assert_eq!(
        joined["matched_fields"],
        json!(["amount", "payment_intent"])
    );
    assert_eq!(by(&note)["match"], "none");
    let story = gate
        .admin(
            "GET",
            &format!("/api/audit/story/{refund}"),
            Some("demo-carol-token"),
            None,
        )
        .await
        .text();
    assert!(
        story.contains("gpt-test asked for refund_payment"),
        "{story}"
    );
    // The calls one answer led to.
    let led = audit_events(&gate, &format!("model_request={model_request}")).await;
    let ids: std::collections::BTreeSet<&str> = led
        .iter()
        .filter_map(|e| e["request_id"].as_str())
        .collect();
    assert_eq!(ids.into_iter().collect::<Vec<_>>(), [refund.as_str()]);
    // The reviewer's pages link the call and its model answer both ways.
    let cookie = gate.sign_in("demo-riley-token").await;
    let call_page = gate
        .page("GET", &format!("/traffic/{refund}"), Some(&cookie), None)
        .await
        .text();
    assert!(
        call_page.contains(&format!("/traffic/{model_request}")),
        "{call_page}"
    );
    let model_page = gate
        .page(
            "GET",
            &format!("/traffic/{model_request}"),
            Some(&cookie),
            None,
        )
        .await
        .text();
    assert!(
        model_page.contains("Calls this answer led to"),
        "{model_page}"
    );
    assert!(
        model_page.contains(&format!("/traffic/{refund}")),
        "{model_page}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_approvers_page_shows_what_the_model_asked_for_and_flags_a_change() {
    let pki = Pki::new("test model CA");
    let addr = model_server(&pki).await;
    let gate = GateBuilder::examples()
        .policy("models.toml", policy())
        .routed_to(&pki, addr)
        .start()
        .await;
    let client = gate.client(Some(("writer", "writer-token")), http::Version::HTTP_11);
    let url = "https://api.openai.com/v1/chat/completions";
    send(
        &client,
        "POST",
        url,
        &[JSON],
        json!({"model": "gpt-test", "messages": []}).to_string(),
    )
    .await
    .unwrap();
    audit_events_once(&gate, "kind=model_usage", "the model answer", |e| {
        !e.is_empty()
    })
    .await;
    // The agent sends ten times what the model asked for.
    let form = "payment_intent=pi_123&amount=5000";
    let held = send(
        &client,
        "POST",
        "https://api.openai.com/v1/refunds/held",
        &[FORM],
        form,
    )
    .await
    .unwrap();
    assert_eq!(held.status, 423, "{}", String::from_utf8_lossy(&held.body));
    let proposal = held.json()["error"]["proposal"]
        .as_str()
        .unwrap()
        .to_string();
    let cookie = gate.sign_in("demo-carol-token").await;
    let page = gate
        .page(
            "GET",
            &format!("/proposals/{proposal}"),
            Some(&cookie),
            None,
        )
        .await
        .text();
    assert!(page.contains("gpt-test asked for refund_payment"), "{page}");
    assert!(
        page.contains("model asked for amount 500; the call sends 5000"),
        "{page}"
    );
    // The same page in a real browser: the flag is shown, set apart from the model's row.
    let Some((dir, chromium)) = crate::support::browser::browser() else {
        return;
    };
    let out = tokio::process::Command::new("node")
        .arg(dir.join("proposal.mjs"))
        .arg(format!("http://{}", gate.admin_addr))
        .arg("demo-carol-token")
        .arg(&proposal)
        .env("CHROMIUM", &chromium)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(std::time::Duration::from_secs(90), out)
        .await
        .expect("the browser script ended within 90 s")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert!(
        seen["model"]
            .as_str()
            .unwrap()
            .contains("gpt-test asked for refund_payment"),
        "{seen}"
    );
    assert_eq!(
        seen["changed"],
        json!([{"text": "model asked for amount 500; the call sends 5000", "shown": true, "set_apart": true}]),
        "{seen}"
    );
    assert!(
        seen["payload"].as_str().unwrap().contains("amount=5000"),
        "{seen}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_model_sdks_and_stripe_python_are_joined_through_toolgate() {
    let python = crate::sdk::sdk_dir().join(".venv/bin/python");
    let have = std::process::Command::new(&python)
        .args(["-c", "import openai, anthropic, stripe"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        if std::env::var("TOOLGATE_REQUIRE_SDKS").as_deref() == Ok("1") {
            panic!(
                "TOOLGATE_REQUIRE_SDKS=1 but openai/anthropic are not installed in tests/sdk/.venv"
            );
        }
        crate::support::skips::skipped(
            "model_reason::the_official_model_sdks",
            "openai and anthropic are not installed in tests/sdk/.venv",
            crate::support::skips::SDKS,
        );
        return;
    }
    let (pki, fakes) = example_apis().await;
    let models = model_server(&pki).await;
    let writer = policy().replace(
        "tools = [\"models.*\"]",
        "tools = [\"models.*\", \"stripe.refunds.create\"]",
    );
    let gate = GateBuilder::examples()
        .policy("models.toml", writer)
        .routed_to(&pki, fakes.addr)
        .config(move |c| {
            c.connect_to.insert(("api.openai.com".into(), 443), models);
            c.connect_to
                .insert(("api.anthropic.com".into(), 443), models);
        })
        .start()
        .await;
    let approving = approver(&gate, "the model asked for it");
    let proxy = format!("http://writer:writer-token@{}", gate.addr);
    let mut py = tokio::process::Command::new(&python);
    py.arg(crate::sdk::sdk_dir().join("model_agent.py"))
        .env("TOOLGATE_PROXY", &proxy)
        .env("TOOLGATE_CA", gate.ca_path())
        .env("SSL_CERT_FILE", gate.ca_path())
        .env_remove("REQUESTS_CA_BUNDLE");
    let steps = crate::sdk::run_agent(py).await;
    approving.abort();
    let want = json!({"payment_intent": "pi_openai", "amount": 500});
    assert_eq!(
        crate::sdk::ok(&steps, "openai", "tool_call")["arguments"],
        want
    );
    let streamed = crate::sdk::ok(&steps, "openai", "streamed_tool_call");
    assert_eq!(streamed["arguments"]["payment_intent"], "pi_stream");
    let claude = crate::sdk::ok(&steps, "anthropic", "streamed_tool_call");
    assert_eq!(claude["arguments"]["payment_intent"], "pi_claude");
    crate::sdk::ok(&steps, "stripe-python", "refund");
    // The refund joins the Anthropic answer that asked for it, exactly; the story begins there.
    let refunds = |e: &Value| {
        e["payload"]["path"] == "/v1/refunds" && e["payload"]["requested_by"].is_object()
    };
    let requests = audit_events_once(&gate, "kind=request&agent=writer", "the refund", |e| {
        e.iter().any(refunds)
    })
    .await;
    let refund = requests.iter().find(|e| refunds(e)).unwrap();
    let joined = refund["payload"]["requested_by"]
        .as_object()
        .cloned()
        .unwrap();
    assert_eq!(joined["match"], "exact", "{joined:?}");
    assert_eq!(joined["answer_id"], "msg_stream");
    assert_eq!(joined["tool"], "refund_payment");
    let rid = refund["request_id"].as_str().unwrap();
    let story = gate
        .admin(
            "GET",
            &format!("/api/audit/story/{rid}"),
            Some("demo-carol-token"),
            None,
        )
        .await
        .text();
    assert!(
        story.contains("claude-test asked for refund_payment"),
        "{story}"
    );
}

/// The story of a job: the model turns (each answer that asked for tool calls), the calls each
/// led to, and the tool calls no call carried out — the model's request first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jobs_story_lists_the_model_turns_and_the_calls_each_led_to() {
    let pki = Pki::new("test model CA");
    let addr = model_server(&pki).await;
    let gate = GateBuilder::examples()
        .policy("models.toml", policy())
        .routed_to(&pki, addr)
        .start()
        .await;
    let client = gate.client(Some(("writer", "writer-token")), http::Version::HTTP_11);
    let job = ("toolgate-job", "job-refunds-7");
    let chat = "https://api.openai.com/v1/chat/completions";
    let mut turns = Vec::new();
    for pi in ["pi_first", "pi_second"] {
        let body = json!({"model": "gpt-test", "messages": [{"role": "user", "content": pi}]});
        let got = send(&client, "POST", chat, &[JSON, job], body.to_string())
            .await
            .unwrap();
        turns.push(request_id(&got));
        let seen = |e: &[Value]| e.iter().any(|e| e["request_id"] == turns[turns.len() - 1]);
        audit_events_once(&gate, "kind=model_usage", "the model answer", seen).await;
    }
    // The first answer's refund is carried out; the second's never is.
    let form = "payment_intent=pi_first&amount=500";
    let refunds = "https://api.openai.com/v1/refunds";
    let got = send(&client, "POST", refunds, &[FORM, job], form)
        .await
        .unwrap();
    assert_eq!(got.status, 200, "{}", String::from_utf8_lossy(&got.body));
    let refund = request_id(&got);
    // The second answer's refund, made in another job: a tool call asked in a job is carried
    // out in that job, so this call is the agent's own.
    let other = ("toolgate-job", "job-other-8");
    let form = "payment_intent=pi_second&amount=500";
    let got = send(&client, "POST", refunds, &[FORM, other], form)
        .await
        .unwrap();
    let elsewhere = request_id(&got);
    let of = |e: &Value| e["request_id"] == elsewhere.as_str();
    let events = audit_events_once(&gate, "kind=request", "the other job's call", |e| {
        e.iter().any(of)
    })
    .await;
    let call = events.iter().find(|e| of(e)).unwrap();
    assert_eq!(call["job"], "job-other-8");
    assert_eq!(call["payload"]["requested_by"]["match"], "none", "{call}");
    let story = || {
        gate.admin(
            "GET",
            "/api/audit/story/job-refunds-7",
            Some("demo-carol-token"),
            None,
        )
    };
    let summary = poll::until_some(
        "the job's story tells the refund",
        std::time::Duration::from_secs(10),
        || async {
            let story: Value = story().await.json();
            story
                .to_string()
                .contains(&refund)
                .then_some(story["summary"].clone())
        },
    )
    .await;
    let text = summary
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap().to_string())
        .collect::<Vec<_>>()
        .join("\n");
    let lines: Vec<&str> = text.lines().collect();
    let first = lines
        .iter()
        .position(|l| l.contains(&format!("model turn:    {}", turns[0])))
        .unwrap_or_else(|| panic!("no turn of {}: {text}", turns[0]));
    assert!(
        lines[first].contains(&format!(
            "refund_payment (call_1) -> {refund} models.refunds.create (matched exact)"
        )),
        "{text}"
    );
    let second = lines
        .iter()
        .position(|l| l.contains(&format!("model turn:    {}", turns[1])))
        .unwrap_or_else(|| panic!("no turn of {}: {text}", turns[1]));
    assert!(
        lines[second].contains("refund_payment (call_1) -> no call in this story"),
        "{text}"
    );
    let why = lines
        .iter()
        .position(|l| l.starts_with("why (the model)"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        first < why && second < why,
        "the story begins with the model: {text}"
    );
    // A call's own story begins with the model's turn that asked for it.
    let own: Value = gate
        .admin(
            "GET",
            &format!("/api/audit/story/{refund}"),
            Some("demo-carol-token"),
            None,
        )
        .await
        .json();
    let first = own["summary"][0].as_str().unwrap_or("");
    assert!(
        first.starts_with(&format!("model turn:    {}", turns[0])),
        "{own}"
    );
    // What changed is the refund; the model's answers changed nothing.
    let changed = own["summary"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l.as_str())
        .find(|l| l.starts_with("what changed"))
        .unwrap();
    assert_eq!(
        changed, "what changed:  models.refunds.create answered 200",
        "{own}"
    );
}

/// An MCP call made with the official MCP SDK client joins, exactly, the model answer (the
/// official OpenAI SDK's) that asked for that tool with those arguments.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mcp_call_joins_the_model_answer_exactly() {
    let Some(python) = crate::mcp::python() else {
        return;
    };
    let pki = Pki::new("test model CA");
    let addr = model_server(&pki).await;
    let tickets = crate::mcp::Server::start(&python, &pki, "mcp.tickets.example", "original").await;
    let port = tickets.port;
    let writer = policy().replace(
        r#"tools = ["models.*"]"#,
        r#"tools = ["models.*", "tickets.get_ticket"]"#,
    );
    let gate = GateBuilder::examples()
        .policy("models.toml", writer)
        .routed_to(&pki, addr)
        .config(move |c| {
            c.add_connect_to(&format!("mcp.tickets.example:443=127.0.0.1:{port}"))
                .unwrap();
        })
        .start()
        .await;
    let client = gate.client(Some(("writer", "writer-token")), http::Version::HTTP_11);
    let body = json!({"model": "gpt-test", "messages": [], "ticket": true});
    let chat = "https://api.openai.com/v1/chat/completions";
    let got = send(&client, "POST", chat, &[JSON], body.to_string())
        .await
        .unwrap();
    assert_eq!(got.status, 200);
    let model_request = request_id(&got);
    audit_events_once(&gate, "kind=model_usage", "the model answer", |e| {
        !e.is_empty()
    })
    .await;
    let url = "https://mcp.tickets.example/mcp";
    let steps =
        crate::mcp::agent_as(("writer", "writer-token"), &python, &gate, url, &["read"]).await;
    assert!(
        steps.iter().any(|s| s["step"] == "read" && s["ok"] == true),
        "{steps:?}"
    );
    assert_eq!(tickets.executed("get_ticket").len(), 1);
    let calls = audit_events_once(
        &gate,
        "kind=request&tool=tickets.get_ticket",
        "the MCP call",
        |e| !e.is_empty(),
    )
    .await;
    let by = &calls[0]["payload"]["requested_by"];
    assert_eq!(by["match"], "exact", "{by}");
    assert_eq!(by["tool"], "get_ticket");
    assert_eq!(by["arguments"], json!({"id": "T-9"}));
    assert_eq!(by["model_request"], model_request.as_str());
    assert_eq!(by["tool_call_id"], "call_1");
}

fn request_id(got: &crate::support::Answer) -> String {
    got.headers["toolgate-request-id"]
        .to_str()
        .unwrap()
        .to_string()
}

/// Replicas on one PostgreSQL database join a call to a model answer that went through the
/// other replica (the model's tool calls are read back from the shared audit log).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_through_one_replica_joins_the_model_answer_through_the_other() {
    let Some(cluster) =
        crate::support::pg::Cluster::start("a_call_through_one_replica_joins_the_model_answer")
    else {
        return;
    };
    let pki = Pki::new("test model CA");
    let addr = model_server(&pki).await;
    let policies = [("models.toml", policy())];
    let (a, b) = crate::postgres::two_gates(&cluster, &pki, addr, &policies).await;
    let writer = Some(("writer", "writer-token"));
    let via_a = client_via(a.addr, writer, &a.ca_pem, http::Version::HTTP_11);
    let via_b = client_via(b.addr, writer, &a.ca_pem, http::Version::HTTP_2);
    let chat = "https://api.openai.com/v1/chat/completions";
    let body =
        json!({"model": "gpt-test", "messages": [{"role": "user", "content": "pi_replica"}]});
    let got = send(&via_a, "POST", chat, &[JSON], body.to_string())
        .await
        .unwrap();
    assert_eq!(got.status, 200);
    let model_request = request_id(&got);
    // B sees A's model answer once it is in the shared log.
    let answered = |e: &[Value]| e.iter().any(|e| e["request_id"] == model_request.as_str());
    audit_events_once(
        &b,
        "kind=model_usage",
        "A's model answer, read through B",
        answered,
    )
    .await;
    let refunds = "https://api.openai.com/v1/refunds";
    let got = send(
        &via_b,
        "POST",
        refunds,
        &[FORM],
        "payment_intent=pi_replica&amount=500",
    )
    .await
    .unwrap();
    assert_eq!(got.status, 200, "{}", String::from_utf8_lossy(&got.body));
    let refund = request_id(&got);
    let got = send(
        &via_b,
        "POST",
        "https://api.openai.com/v1/notes",
        &[FORM],
        "text=hi",
    )
    .await
    .unwrap();
    let note = request_id(&got);
    let joined = |e: &[Value]| {
        e.iter()
            .filter(|e| e["payload"]["requested_by"].is_object())
            .count()
            >= 2
    };
    let calls = audit_events_once(&b, "kind=request&agent=writer", "both calls", joined).await;
    let by = |rid: &str| {
        let e = calls.iter().find(|e| e["request_id"] == rid).unwrap();
        e["payload"]["requested_by"].clone()
    };
    let refund_by = by(&refund);
    assert_eq!(refund_by["match"], "exact", "{refund_by}");
    assert_eq!(refund_by["model_request"], model_request.as_str());
    assert_eq!(refund_by["answer_id"], "chatcmpl-whole");
    // A model answered the agent (through A): a call no answer asked for says so on B too.
    assert_eq!(by(&note)["match"], "none");
    // An answer asked in a job (through A) is carried out in that job (through B), and only
    // there: the job is read back from the shared log with the answer.
    let job = ("toolgate-job", "job-replica-r");
    let body = json!({"model": "gpt-test", "messages": [{"role": "user", "content": "pi_jobr"}]});
    let got = send(&via_a, "POST", chat, &[JSON, job], body.to_string())
        .await
        .unwrap();
    let in_job = request_id(&got);
    let answered = |e: &[Value]| e.iter().any(|e| e["request_id"] == in_job.as_str());
    audit_events_once(&b, "kind=model_usage", "the job's model answer", answered).await;
    let form = "payment_intent=pi_jobr&amount=500";
    let elsewhere = ("toolgate-job", "job-replica-s");
    let mut ids = Vec::new();
    for header in [elsewhere, job] {
        let got = send(&via_b, "POST", refunds, &[FORM, header], form)
            .await
            .unwrap();
        ids.push(request_id(&got));
    }
    let seen = |e: &[Value]| {
        ids.iter().all(|id| {
            e.iter()
                .any(|e| e["request_id"] == id.as_str() && e["payload"]["requested_by"].is_object())
        })
    };
    let calls = audit_events_once(&b, "kind=request&agent=writer", "the jobs' calls", seen).await;
    let by = |rid: &str| {
        let e = calls.iter().find(|e| e["request_id"] == rid).unwrap();
        e["payload"]["requested_by"].clone()
    };
    let (other_job, same_job) = (by(&ids[0]), by(&ids[1]));
    assert_eq!(same_job["match"], "exact", "{same_job}");
    assert_eq!(same_job["model_request"], in_job.as_str());
    // In another job only the job-less answer fits, by its name alone.
    assert_eq!(other_job["match"], "name", "{other_job}");
    assert_eq!(other_job["model_request"], model_request.as_str());
}
