//! The approvers' page in a real headless Chromium (Debian's `chromium`, driven by
//! playwright-core from tests/browser): sign in, see a held request appear, approve it, and see
//! the agent's held call complete. `.ci/run` installs both and sets TOOLGATE_REQUIRE_BROWSER, so
//! in CI a missing browser fails the test instead of skipping it.

use std::process::Stdio;
use std::time::Duration;

use crate::support::*;
use tokio::io::{AsyncBufReadExt, BufReader};

const TOOL: &str = r#"
[[tool]]
name = "stripe.browser_refunds.create"
host = "api.stripe.com"
method = "POST"
path = "/v1/browser_refunds"
side_effects = "irreversible"
mode = "approve"
idempotency = "key"
body = { format = "form" }
credential = { staging = "stripe-test" }
summary = "Browser refund {body.amount} of {body.payment_intent}"
approval = { groups = ["payments-leads"], hold = "40s" }
"#;

async fn next(lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>) -> String {
    tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("the browser script stalled")
        .unwrap()
        .expect("the browser script ended early")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approver_approves_a_held_call_in_a_real_browser() {
    let Some((dir, chromium)) = browser() else {
        return;
    };
    let (_pki, upstream, gate) = GateBuilder::examples()
        .policies(&[("browser.toml", TOOL.to_string())])
        .with_upstream()
        .await;

    let mut node = tokio::process::Command::new("node")
        .arg(dir.join("approve.mjs"))
        .arg(format!("http://{}", gate.admin_addr))
        .arg("demo-carol-token")
        .arg("Browser refund 4200 of pi_browser")
        .env("CHROMIUM", &chromium)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(node.stdout.take().unwrap()).lines();
    assert_eq!(next(&mut lines).await, "READY");

    // The page is open; now the agent makes a call that needs approval.
    let client = staging(&gate);
    let held = tokio::spawn(async move {
        send(
            &client,
            "POST",
            "https://api.stripe.com/v1/browser_refunds",
            &[FORM, ("idempotency-key", "browser-1")],
            "payment_intent=pi_browser&amount=4200",
        )
        .await
        .unwrap()
    });

    assert_eq!(next(&mut lines).await, "SEEN");
    let payload = next(&mut lines).await;
    assert!(
        payload.contains("payment_intent=pi_browser&amount=4200"),
        "{payload}"
    );
    let state = next(&mut lines).await;
    assert!(
        ["STATE approved", "STATE committing", "STATE committed"].contains(&state.as_str()),
        "{state}"
    );
    let width: u32 = next(&mut lines)
        .await
        .trim_start_matches("WIDTH ")
        .parse()
        .unwrap();
    assert!(
        width <= 420,
        "the detail page fits a phone-sized screen ({width}px)"
    );
    assert!(node.wait().await.unwrap().success());

    let got = tokio::time::timeout(Duration::from_secs(30), held)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.status, 200, "{}", String::from_utf8_lossy(&got.body));
    assert_eq!(upstream.count(), 1);
}
