//! `toolgate contracts suggest` and the reviewers' "Refused: no contract" page: an agent's calls
//! refused because no contract matched them (through a real gate, a real client over loopback)
//! are drafted as one contract per endpoint, with the right counts and agents and no value of
//! any body; once the draft is written into the policies folder, the same calls pass.

use std::process::Output;

use std::time::Duration;
use tokio::process::Command;

use serde_json::json;

use crate::support::*;

const BIN: &str = env!("CARGO_BIN_EXE_toolgate");
const HELPER_TOKEN: &str = "helper-token-456";
const RITA: &str = "rita-reviewer-token";

fn policy() -> String {
    format!(
        r#"
[[agent]]
id = "bot"
token_sha256 = "{bot}"
owner = "alice@example.com"
environment = "staging"
tools = ["*"]

[[agent]]
id = "helper"
token_sha256 = "{helper}"
owner = "bob@example.com"
environment = "staging"
tools = ["*"]

[[reviewer]]
id = "rita"
token_sha256 = "{rita}"

[[tool]]
name = "known.balance"
host = "api.stripe.com"
method = "GET"
path = "/v1/balance"

[[tool]]
name = "known.zen"
host = "api.github.com"
method = "GET"
path = "/zen"
"#,
        bot = sha256_hex(BOT_TOKEN),
        helper = sha256_hex(HELPER_TOKEN),
        rita = sha256_hex(RITA),
    )
}

/// One call: method, URL, headers, body.
type Call = (
    &'static str,
    String,
    Vec<(&'static str, &'static str)>,
    String,
);

/// The bot's 30 calls to four endpoints with ids in their paths, bodies carrying values that
/// must never reach a suggestion.
fn bot_calls() -> Vec<Call> {
    let mut calls: Vec<Call> = Vec::new();
    let auth = ("authorization", "Bearer sk_live_agentkey0000000000000000");
    for i in 0..8 {
        let url = format!(
            "https://api.stripe.com/v1/customers/cus_Q{i}w2e3R4t5/balance_transactions?limit={i}"
        );
        calls.push(("GET", url, vec![auth], String::new()));
    }
    for i in 0..7 {
        let url = format!("https://api.stripe.com/v1/charges/ch_3Abc{i}Def9Ghi/capture");
        let body = format!("amount={}&metadata[order]=order-value-{i}", 100 + i);
        calls.push(("POST", url, vec![FORM], body));
    }
    for i in 0..8 {
        let url = format!(
            "https://api.github.com/repos/acme/widgets/issues/{}",
            4200 + i
        );
        calls.push(("GET", url, vec![], String::new()));
    }
    for i in 0..7 {
        let url = format!(
            "https://api.github.com/repos/acme/widgets/pulls/{}/reviews",
            77 + i
        );
        let mut body = json!({"body": format!("LGTM private-remark-{i}"), "event": "APPROVE",
                              "comments": [{"path": "src/a.rs", "line": i}]});
        if i == 0 {
            body["<i>note</i>"] = json!(true);
        }
        calls.push(("POST", url, vec![JSON], body.to_string()));
    }
    calls
}

async fn send_all(client: &TestClient, calls: &[Call]) -> Vec<Answer> {
    let mut out = Vec::new();
    for (method, url, headers, body) in calls {
        out.push(send(client, method, url, headers, body).await.unwrap());
    }
    out
}

/// The real binary, asking the gate's admin API (as reviewer rita) or reading `--data-dir`.
async fn suggest(args: &[&str], gate: Option<&Toolgate>) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(["contracts", "suggest"]).args(args);
    if let Some(g) = gate {
        cmd.env("TOOLGATE_SERVER", format!("http://{}", g.admin_addr))
            .env("TOOLGATE_TOKEN", RITA);
    }
    tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("the CLI answered within 60s")
        .unwrap()
}

fn stdout_ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// No value any call carried: ids, body values, the agent's key.
fn assert_no_values(text: &str) {
    for value in [
        "cus_Q",
        "ch_3Abc",
        "4200",
        "order-value",
        "private-remark",
        "src/a.rs",
        "APPROVE",
        "sk_live",
        "limit=",
    ] {
        assert!(!text.contains(value), "{value:?} leaked into:\n{text}");
    }
}

#[tokio::test]
async fn refused_calls_become_four_drafted_contracts_that_then_pass() {
    let (_pki, _upstream, gate) = GateBuilder::new()
        .policy("base.toml", policy())
        .config(|c| c.reload_interval = Duration::from_millis(100))
        .with_upstream()
        .await;
    let calls = bot_calls();
    for got in send_all(&gate.bot(), &calls).await {
        assert_eq!(got.code(), "policy_violation", "{}", got.text());
        assert!(got.message().starts_with("no tool contract matches"));
    }
    let helper = gate.client(Some(("helper", HELPER_TOKEN)), http::Version::HTTP_11);
    send_all(&helper, &calls[15..17]).await;
    let api = "/api/traffic/no-contract";
    poll::until(
        "the 32 refusals are in the audit log",
        poll::SOON,
        || async {
            gate.admin("GET", api, Some(RITA), None).await.json()["calls"]
                .as_array()
                .is_some_and(|c| c.len() == 32)
        },
    )
    .await;

    // Online, as a reviewer: four templates, counts and agents, no values.
    let text = stdout_ok(&suggest(&[], Some(&gate)).await);
    assert_eq!(text.matches("[[tool]]").count(), 4, "{text}");
    for (template, line) in [
        (
            "/v1/customers/{customer}/balance_transactions",
            "8 refused call(s), by bot (8).",
        ),
        (
            "/v1/charges/{charge}/capture",
            "7 refused call(s), by bot (7).",
        ),
        (
            "/repos/acme/widgets/issues/{issue}",
            "10 refused call(s), by bot (8), helper (2).",
        ),
        (
            "/repos/acme/widgets/pulls/{pull}/reviews",
            "7 refused call(s), by bot (7).",
        ),
    ] {
        assert!(
            text.contains(&format!("path = \"{template}\"")),
            "{template}: {text}"
        );
        assert!(text.contains(line), "{line}: {text}");
    }
    assert!(text.contains("inferred from 7 calls"), "{text}");
    assert_no_values(&text);
    let only = stdout_ok(&suggest(&["--agent", "helper"], Some(&gate)).await);
    assert_eq!(only.matches("[[tool]]").count(), 1, "{only}");
    assert!(only.contains("2 refused call(s), by helper (2)."), "{only}");

    reviewer_page(&gate).await;

    // Written out (never over a file without --force), reviewed (the writes' guessed mode set
    // to auto), then put in the policies folder: the gate reloads only the reviewed drafts.
    let drafts = tempfile::tempdir().unwrap();
    let d = drafts.path().to_str().unwrap();
    stdout_ok(&suggest(&["--out", d], Some(&gate)).await);
    let again = suggest(&["--out", d], Some(&gate)).await;
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
    let reviewed = std::fs::read_to_string(drafts.path().join("suggested.toml"))
        .unwrap()
        .replace("mode = \"approve\"", "mode = \"auto\"");
    std::fs::write(drafts.path().join("suggested.toml"), reviewed).unwrap();
    let policies = gate.dir.path().join("policies");
    let p = policies.to_str().unwrap();
    copy_tree(drafts.path(), &policies);
    let check = Command::new(BIN)
        .args(["check", "--policies", p])
        .output()
        .await
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let bot = gate.bot();
    poll::until("the drafted contracts are in force", poll::SOON, || async {
        let (m, u, h, b) = &calls[0];
        send(&bot, m, u, h, b).await.unwrap().status == 200
    })
    .await;
    for (got, call) in send_all(&bot, &calls).await.iter().zip(&calls) {
        assert_eq!(got.status, 200, "{} {}: {}", call.0, call.1, got.text());
    }
    // The inferred schema is closed: a field no call sent is refused.
    let extra = json!({"body": "x", "event": "COMMENT", "comments": [], "surprise": 1});
    let url = "https://api.github.com/repos/acme/widgets/pulls/9/reviews";
    let got = send(&bot, "POST", url, &[JSON], extra.to_string())
        .await
        .unwrap();
    assert_eq!(got.code(), "validation_error", "{}", got.text());

    // Offline, on the stopped gate's store: what the server says (the wait for the reload may
    // have added refusals of the first call).
    let online = stdout_ok(&suggest(&[], Some(&gate)).await);
    let dir = gate.into_dir().await;
    let data = dir.path().join("data");
    let offline = stdout_ok(&suggest(&["--data-dir", data.to_str().unwrap()], None).await);
    assert_eq!(offline, online);
}

/// The "Refused: no contract" page: the table and the drafted TOML, escaped.
async fn reviewer_page(gate: &Toolgate) {
    let cookie = gate.sign_in(RITA).await;
    let page = gate
        .page("GET", "/traffic/no-contract", Some(&cookie), None)
        .await;
    assert_eq!(page.status, 200, "{}", page.text());
    let html = page.text();
    assert!(html.contains("<table id=\"no-contract\">"), "{html}");
    assert_eq!(
        html.matches("<tr class=\"unmatched\">").count(),
        4,
        "{html}"
    );
    assert!(html.contains("/repos/acme/widgets/issues/{issue}"));
    assert!(html.contains("bot (8), helper (2)"));
    assert!(
        html.contains("name = &quot;suggested.get.repos.acme.widgets.issues.issue&quot;"),
        "{html}"
    );
    // A key that does not read as a field's name (markup here) is data: never shown, escaped
    // or not; the TOML's quotes show the page escapes what it shows.
    assert!(
        !html.contains("<i>note</i>") && !html.contains("&lt;i&gt;note"),
        "{html}"
    );
    assert_no_values(&html);
    let filtered = gate
        .page(
            "GET",
            "/traffic/no-contract?agent=helper",
            Some(&cookie),
            None,
        )
        .await
        .text();
    assert_eq!(filtered.matches("<tr class=\"unmatched\">").count(), 1);
    let anonymous = gate.page("GET", "/traffic/no-contract", None, None).await;
    assert_ne!(anonymous.status, 200);
}

/// Copies every file under `from` into `to`, schemas first and the TOML last (so that a reload
/// in between never sees a tool whose schema is not there yet), each renamed into place (a
/// reload never reads half a file).
fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    let mut files = Vec::new();
    let mut dirs = vec![from.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            match path.is_dir() {
                true => dirs.push(path),
                false => files.push(path),
            }
        }
    }
    files.sort_by_key(|f| f.extension().is_some_and(|e| e == "toml"));
    for file in files {
        let dest = to.join(file.strip_prefix(from).unwrap());
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        let part = dest.with_extension("part");
        std::fs::copy(&file, &part).unwrap();
        std::fs::rename(&part, &dest).unwrap();
    }
}
