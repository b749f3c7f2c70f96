//! Principals and data boundaries (DESIGN sections 10 and 11), over real sockets with the
//! stateful API fakes: response contracts keep only what they name (nothing else of an answer
//! is written anywhere under the data dir) and hide fields from the agent; the story of an
//! approved refund names the refund.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use base64::Engine;
use serde_json::Value;
use support::*;

const CAROL: &str = "demo-carol-token";
/// In the fakes' refund answers, and in nothing the agent sent: `keep` leaves it out.
const CHARGE: &str = "ch_1PgafuB7WZ01zgkWXYmPNZs8";

/// `needle` as it reads inside any base64 text (three alignments).
fn base64_forms(needle: &str) -> Vec<String> {
    let b64 = base64::engine::general_purpose::STANDARD;
    (0..3)
        .map(|k| {
            let mut bytes = vec![0u8; k];
            bytes.extend_from_slice(needle.as_bytes());
            let text = b64.encode(&bytes);
            let skip = (k * 4).div_ceil(3) + 1;
            text[skip..text.len().saturating_sub(4)].to_string()
        })
        .collect()
}

fn files_holding(dir: &std::path::Path, needles: &[String], out: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files_holding(&path, needles, out);
            continue;
        }
        let bytes = std::fs::read(&path).unwrap_or_default();
        for n in needles {
            if bytes.windows(n.len()).any(|w| w == n.as_bytes()) {
                out.push(format!("{} holds {n}", path.display()));
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_contracts_keep_and_hide_and_the_story_names_what_changed() {
    let (pki, fakes) = example_apis().await;
    let gate = examples_gate(&pki, fakes.addr, &[], |_| {}).await;
    let agent = staging(&gate);

    // An approved refund: the agent gets the whole answer, the store keeps the named fields.
    let approving = approver(&gate, "refund ok");
    let got = send(
        &agent,
        "POST",
        "https://api.stripe.com/v1/refunds",
        &[FORM, ("idempotency-key", "keep-1")],
        "payment_intent=pi_keep&amount=100",
    )
    .await
    .unwrap();
    approving.abort();
    assert_eq!(got.status, 200, "{}", got.text());
    let answer = got.json();
    assert_eq!(
        answer["charge"], CHARGE,
        "the first caller gets the whole answer"
    );
    let refund = answer["id"].as_str().unwrap().to_string();
    // The same call again: what was kept, nothing else.
    let again = send(
        &agent,
        "POST",
        "https://api.stripe.com/v1/refunds",
        &[FORM, ("idempotency-key", "keep-1")],
        "payment_intent=pi_keep&amount=100",
    )
    .await
    .unwrap();
    let kept = again.json();
    assert_eq!(kept["id"], refund.as_str());
    assert_eq!(kept["status"], "succeeded");
    assert!(kept.get("charge").is_none(), "{kept}");
    assert_eq!(fakes.count("POST", "/v1/refunds"), 1);

    // A read that hides fields: the agent never sees them; the upstream sent them.
    let created = send(
        &agent,
        "POST",
        "https://api.stripe.com/v1/customers",
        &[FORM, ("idempotency-key", "keep-c")],
        "email=hide@acme.com",
    )
    .await
    .unwrap()
    .json();
    let id = created["id"].as_str().unwrap();
    assert!(
        created.get("shipping").is_some(),
        "the fake answers with shipping"
    );
    let read = send(
        &agent,
        "GET",
        &format!("https://api.stripe.com/v1/customers/{id}"),
        &[],
        "",
    )
    .await
    .unwrap()
    .json();
    assert_eq!(read["email"], "hide@acme.com");
    for hidden in ["phone", "address", "shipping"] {
        assert!(read.get(hidden).is_none(), "{hidden} is hidden: {read}");
    }

    // Nothing of the refund's answer beyond the kept fields is written: not in the audit log,
    // not in any file under the data dir (plain or base64).
    let export = gate
        .admin("GET", "/api/audit/export", Some(CAROL), None)
        .await
        .text();
    assert!(export.contains(&refund), "the refund id is kept");
    assert!(
        !export.contains(CHARGE),
        "the audit log keeps no other field"
    );
    let mut needles = vec![CHARGE.to_string()];
    needles.extend(base64_forms(CHARGE));
    let mut found = Vec::new();
    files_holding(&gate.dir.path().join("data"), &needles, &mut found);
    assert!(found.is_empty(), "{found:?}");

    // The story of the approved refund says what it created.
    let list = gate
        .admin("GET", "/api/proposals?state=committed", Some(CAROL), None)
        .await
        .json();
    let proposal = list["proposals"][0]["id"].as_str().unwrap().to_string();
    let login = gate
        .page("POST", "/login", None, Some(format!("token={CAROL}")))
        .await;
    let cookie = login.headers["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let story = gate
        .page("GET", &format!("/stories/{proposal}"), Some(&cookie), None)
        .await
        .text();
    let changed = story
        .split("what changed:")
        .nth(1)
        .and_then(|t| t.split('<').next())
        .unwrap_or_default();
    assert!(
        changed.contains(&format!("created refund {refund} (")),
        "{changed}"
    );
    assert!(
        changed.contains("status succeeded") && changed.contains("amount 100"),
        "{changed}"
    );
    let _: Value = list;
}

const DAVE: &str = "demo-dave-token";

async fn issue(gate: &Toolgate, token: &str, body: serde_json::Value) -> Answer {
    gate.admin(
        "POST",
        "/api/agents/support-bot-staging/tokens",
        Some(token),
        Some(body),
    )
    .await
}

async fn read_with(gate: &Toolgate, agent: &str, token: &str) -> Answer {
    let client = client_via(
        gate.addr,
        Some((agent, token)),
        &gate.ca_pem,
        http::Version::HTTP_11,
    );
    send(
        &client,
        "GET",
        "https://api.github.com/repos/acme/widgets",
        &[],
        "",
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issued_tokens_work_expire_are_revoked_and_never_recorded() {
    let (pki, fakes) = example_apis().await;
    let gate = examples_gate(&pki, fakes.addr, &[], |_| {}).await;

    // Only group admin (or a group the agent names) issues; an agent's own token never does.
    let agent_token = issue(
        &gate,
        "demo-staging-token",
        serde_json::json!({"ttl": "15m"}),
    )
    .await;
    assert_eq!(agent_token.status, 401, "{}", agent_token.text());
    let carol = issue(&gate, CAROL, serde_json::json!({"ttl": "15m"})).await;
    assert_eq!(carol.status, 403, "{}", carol.text());
    let bad = issue(&gate, DAVE, serde_json::json!({"ttl": "30d"})).await;
    assert_eq!(bad.code(), "validation_error");

    let got = issue(
        &gate,
        DAVE,
        serde_json::json!({"ttl": "15m", "job": "job-token"}),
    )
    .await;
    assert_eq!(got.status, 201, "{}", got.text());
    let issued = got.json();
    let (id, token) = (
        issued["id"].as_str().unwrap().to_string(),
        issued["token"].as_str().unwrap().to_string(),
    );
    // It works as the agent's proxy password, for that agent only; its calls are the job's.
    let (status, text) = connect_with(&gate, "support-bot-staging", &token).await;
    assert_eq!(status, 200, "{text}");
    let ok = read_with(&gate, "support-bot-staging", &token).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(connect_with(&gate, "support-bot-prod", &token).await.0, 407);
    // (Recorded by the audit writer within its batch time.)
    let mut job = Value::Null;
    for _ in 0..40 {
        job = gate
            .admin("GET", "/api/audit/story/job-token", Some(CAROL), None)
            .await
            .json();
        if job["events"].is_array() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let events = job["events"].as_array().unwrap();
    assert!(
        events.iter().any(|e| e["kind"] == "request"),
        "the job's story holds the call: {job}"
    );
    assert!(
        events.iter().all(|e| e["token"] == id.as_str()),
        "every event of the call names the token id: {job}"
    );
    let listed = gate
        .admin(
            "GET",
            "/api/tokens?agent=support-bot-staging",
            Some(DAVE),
            None,
        )
        .await;
    assert!(listed.text().contains(&id) && !listed.text().contains(&token));

    // Revoked: refused at once, on a tunnel already open too.
    let client = client_via(
        gate.addr,
        Some(("support-bot-staging", &token)),
        &gate.ca_pem,
        http::Version::HTTP_11,
    );
    let read = "https://api.github.com/repos/acme/widgets";
    assert_eq!(
        send(&client, "GET", read, &[], "").await.unwrap().status,
        200
    );
    let revoked = gate
        .admin("DELETE", &format!("/api/tokens/{id}"), Some(DAVE), None)
        .await;
    assert_eq!(revoked.status, 200, "{}", revoked.text());
    let after = send(&client, "GET", read, &[], "").await.unwrap();
    assert_eq!(after.status, 407, "{}", after.text());
    let (status, text) = connect_with(&gate, "support-bot-staging", &token).await;
    assert_eq!(status, 407, "{text}");

    // Expired: a second-long token stops after its second.
    let short = issue(&gate, DAVE, serde_json::json!({"ttl": "1s"}))
        .await
        .json();
    let short_token = short["token"].as_str().unwrap().to_string();
    tokio::time::sleep(std::time::Duration::from_millis(1600)).await;
    let (status, text) = connect_with(&gate, "support-bot-staging", &short_token).await;
    assert_eq!(status, 407, "{text}");
    assert!(text.contains("expired or was revoked"), "{text}");

    // The same from the command line.
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_toolgate"))
            .args(["tokens"])
            .args(args)
            .args(["--server", &format!("http://{}", gate.admin_addr)])
            .env("TOOLGATE_TOKEN", DAVE)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{args:?}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    };
    let issued: Value = serde_json::from_str(&cli(&[
        "issue",
        "support-bot-staging",
        "--ttl",
        "5m",
        "--json",
    ]))
    .unwrap();
    let cli_id = issued["id"].as_str().unwrap().to_string();
    let cli_token = issued["token"].as_str().unwrap().to_string();
    assert_eq!(
        connect_with(&gate, "support-bot-staging", &cli_token)
            .await
            .0,
        200
    );
    assert!(cli(&["list", "support-bot-staging"]).contains(&cli_id));
    assert!(cli(&["revoke", &cli_id]).contains("revoked"));
    assert!(!cli(&["list"]).contains(&cli_id));
    assert_eq!(
        connect_with(&gate, "support-bot-staging", &cli_token)
            .await
            .0,
        407
    );

    // The tokens themselves are in no audit event and in no file under the data dir.
    let export = gate
        .admin("GET", "/api/audit/export", Some(CAROL), None)
        .await
        .text();
    assert!(export.contains("token.issued") && export.contains("token.revoked"));
    for t in [&token, &short_token] {
        assert!(
            !export.contains(t.as_str()),
            "the token is not in the audit log"
        );
        let mut found = Vec::new();
        files_holding(&gate.dir.path().join("data"), &[t.to_string()], &mut found);
        assert!(found.is_empty(), "{found:?}");
    }
}

/// A new tunnel with these credentials: its CONNECT status and answer.
async fn connect_with(gate: &Toolgate, agent: &str, token: &str) -> (u16, String) {
    let (status, text, _) =
        raw_connect(gate.addr, "api.github.com:443", Some((agent, token))).await;
    (status, text)
}
