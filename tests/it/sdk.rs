//! Launch check: real clients. The official SDKs (Python `stripe`, `PyGithub`, `sendgrid`; Node
//! `stripe`, `@octokit/rest`) and curl go through toolgate to the loopback fakes of the three
//! APIs. Each makes reads, a held write that an approver releases while it waits, a refused write
//! whose message must reach the caller, and a retried write that must execute once; the fakes'
//! state is the judge.
//!
//! The SDKs are installed by `.ci/run` into `tests/sdk/.venv` and `tests/sdk/node_modules`.
//! Without them this test prints why it skipped, unless `TOOLGATE_REQUIRE_SDKS=1`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support::*;
use serde_json::{json, Value};

const CAROL: &str = "demo-carol-token";

pub(crate) fn sdk_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk")
}

fn skip(why: &str) -> bool {
    if std::env::var("TOOLGATE_REQUIRE_SDKS").as_deref() == Ok("1") {
        panic!("TOOLGATE_REQUIRE_SDKS=1 but {why}");
    }
    crate::support::skips::skipped("launch_check_real_sdks", why, crate::support::skips::SDKS);
    true
}

/// The example policies, with GitHub's issue creation and SendGrid's mail send held for
/// approval (so every SDK has a held write), and a SendGrid read for the sendgrid SDK. GitHub's
/// issue schemas are imported from GitHub's whole REST description (npm `@octokit/openapi`,
/// installed beside the SDKs) by `contracts import`, so PyGithub and Octokit go through them.
fn policies() -> Vec<(String, String)> {
    let examples = example_policies();
    let text = |name: &str| examples.iter().find(|(n, _)| n == name).unwrap().1.clone();
    let hold = "mode = \"approve\"\napproval = { required = 1, hold = \"30s\" }";
    let github = text("github.toml").replacen(
        "side_effects = \"reversible\"\nmode = \"auto\"",
        &format!("side_effects = \"reversible\"\n{hold}"),
        1,
    );
    assert!(github.contains("30s"), "github.issues.create is held");
    let sendgrid = text("sendgrid.toml").replacen("mode = \"auto\"", hold, 1);
    let agents = text("agents.toml").replacen("\"sendgrid.mail.send\"", "\"sendgrid.*\"", 1);
    assert!(
        agents.contains("\"sendgrid.*\""),
        "the staging agent gets SendGrid's read"
    );
    let reads = r#"
[[tool]]
name = "sendgrid.templates.list"
host = "api.sendgrid.com"
method = "GET"
path = "/v3/templates"
query_schema = "schemas/sendgrid/templates.list.query.json"
credential = { staging = "sendgrid" }
"#;
    let schema = json!({"type": "object", "additionalProperties": false,
        "properties": {"generations": {"type": "string"}, "page_size": {"type": "string"}}});
    let mut files = vec![
        ("github.toml".to_string(), github),
        ("sendgrid.toml".into(), sendgrid),
        ("agents.toml".into(), agents),
        ("sdk-reads.toml".into(), reads.to_string()),
        (
            "schemas/sendgrid/templates.list.query.json".into(),
            schema.to_string(),
        ),
    ];
    let full = sdk_dir().join("node_modules/@octokit/openapi/generated/api.github.com.json");
    if full.exists() {
        let imported = toolgate::import::import(&toolgate::import::Options {
            spec: full,
            prefix: "github".into(),
            operation_ids: vec!["issues/create".into(), "issues/update".into()],
            max_spec_bytes: toolgate::import::spec::MAX_SPEC_BYTES,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(imported.schemas.len(), 2, "{:?}", imported.notes);
        for (name, text) in imported.schemas {
            files.push((format!("schemas/github/{name}"), text));
        }
    }
    files
}

async fn admin_json(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Value {
    let answer = admin_at(addr, method, path, Some(CAROL), body).await;
    serde_json::from_slice(&answer.body).unwrap_or(Value::Null)
}

/// Runs one agent program; returns its steps by (sdk, step).
pub(crate) async fn run_agent(mut cmd: tokio::process::Command) -> Vec<Value> {
    let out = tokio::time::timeout(Duration::from_secs(180), cmd.output())
        .await
        .expect("the agent finished within 180s")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "agent failed:\n{stdout}\n{stderr}");
    let steps: Vec<Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(!steps.is_empty(), "no steps:\n{stdout}\n{stderr}");
    eprintln!("{stdout}");
    steps
}

pub(crate) fn find<'a>(steps: &'a [Value], sdk: &str, step: &str) -> &'a Value {
    steps
        .iter()
        .find(|s| s["sdk"] == sdk && s["step"] == step)
        .unwrap_or_else(|| panic!("{sdk} did not report {step}: {steps:#?}"))
}

pub(crate) fn ok<'a>(steps: &'a [Value], sdk: &str, step: &str) -> &'a Value {
    let s = find(steps, sdk, step);
    assert_eq!(s["ok"], true, "{sdk} {step}: {s}");
    &s["detail"]
}

fn refused(steps: &[Value], sdk: &str, needle: &str) {
    let s = find(steps, sdk, "refused_write");
    assert_eq!(s["ok"], false, "{sdk}: the refused write must fail: {s}");
    let detail = s["detail"].as_str().unwrap();
    assert!(
        detail.contains(needle),
        "{sdk}: toolgate's message reaches the caller: {detail}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn launch_check_real_sdks() {
    let python = sdk_dir().join(".venv/bin/python");
    let modules = sdk_dir().join("node_modules");
    let have_python = python.exists();
    let have_node = modules.join("stripe").exists() && modules.join("@octokit/rest").exists();
    if !have_python && skip("the Python SDKs are not installed in tests/sdk/.venv") {
        return;
    }
    if !have_node && skip("the Node SDKs are not installed in tests/sdk/node_modules") {
        return;
    }

    let (pki, fakes) = example_apis().await;
    let files = policies();
    let extra: Vec<(&str, String)> = files.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
    let gate = GateBuilder::examples()
        .policies(&extra)
        .routed_to(&pki, fakes.addr)
        .config(|c| {
            c.upstream_timeout = Duration::from_secs(10);
        })
        .start()
        .await;
    let approving = approver(&gate, "released by the SDK test");
    let proxy = format!(
        "http://support-bot-staging:demo-staging-token@{}",
        gate.addr
    );
    let ca = gate.ca_path();
    let run = format!("r{}", std::process::id());

    // Python: stripe, PyGithub, sendgrid.
    let mut py = tokio::process::Command::new(&python);
    py.arg(sdk_dir().join("agent.py"))
        .env("TOOLGATE_PROXY", &proxy)
        .env("TOOLGATE_CA", &ca)
        .env("HTTPS_PROXY", &proxy)
        .env("REQUESTS_CA_BUNDLE", &ca)
        .env("SSL_CERT_FILE", &ca)
        .env("NO_PROXY", "")
        .env("SDK_RUN", &run);
    let steps = run_agent(py).await;

    let cus = ok(&steps, "stripe-python", "retried_write")
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        ok(&steps, "stripe-python", "read"),
        &json!(format!("py-{run}@acme.com"))
    );
    assert_eq!(ok(&steps, "stripe-python", "held_write"), "succeeded");
    refused(&steps, "stripe-python", "tax_exempt");
    let elsewhere = find(&steps, "stripe-python", "uncontracted_host");
    assert_eq!(elsewhere["ok"], false, "{elsewhere}");
    let detail = elsewhere["detail"].as_str().unwrap();
    assert!(
        detail.contains("api.unnamed-example.com is not named by any tool contract"),
        "stripe-python shows toolgate's message, not a tunnel failure: {detail}"
    );
    let n = ok(&steps, "pygithub", "held_write").clone();
    assert_eq!(
        ok(&steps, "pygithub", "retried_write"),
        &n,
        "the retry got the same issue"
    );
    assert_eq!(ok(&steps, "pygithub", "read"), "acme/widgets");
    refused(&steps, "pygithub", "evilcorp");
    assert_eq!(ok(&steps, "sendgrid-python", "read"), 200);
    assert_eq!(ok(&steps, "sendgrid-python", "held_write"), 202);
    assert_eq!(ok(&steps, "sendgrid-python", "retried_write"), 202);
    refused(
        &steps,
        "sendgrid-python",
        "external recipients are not allowed",
    );

    // Node: stripe, Octokit.
    let mut node = tokio::process::Command::new("node");
    node.arg(sdk_dir().join("agent.mjs"))
        .current_dir(sdk_dir())
        .env("TOOLGATE_PROXY", &proxy)
        .env("NODE_EXTRA_CA_CERTS", &ca)
        .env("SDK_RUN", &run);
    let steps = run_agent(node).await;
    let node_cus = ok(&steps, "stripe-node", "retried_write")
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        ok(&steps, "stripe-node", "read"),
        &json!(format!("node-{run}@acme.com"))
    );
    assert_eq!(ok(&steps, "stripe-node", "held_write"), "succeeded");
    refused(&steps, "stripe-node", "tax_exempt");
    let n2 = ok(&steps, "octokit", "held_write").clone();
    assert_eq!(ok(&steps, "octokit", "retried_write"), &n2);
    assert_eq!(ok(&steps, "octokit", "read"), "acme/widgets");
    refused(&steps, "octokit", "evilcorp");

    // curl, as the README shows it.
    let curl = |args: Vec<String>| {
        let proxy = proxy.clone();
        let ca = ca.clone();
        async move {
            let out = tokio::time::timeout(
                Duration::from_secs(60),
                tokio::process::Command::new("curl")
                    .args(["-sS", "--max-time", "40", "--proxy", &proxy, "--cacert"])
                    .arg(&ca)
                    .args(["-w", "\n%{http_code}"])
                    .args(&args)
                    .output(),
            )
            .await
            .unwrap()
            .unwrap();
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let (body, code) = text.rsplit_once('\n').unwrap_or((&text, "0"));
            (code.trim().parse::<u16>().unwrap_or(0), body.to_string())
        }
    };
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let create = s(&[
        "-H",
        "Idempotency-Key: curl-cust",
        "-d",
        "email=curl@acme.com",
        "https://api.stripe.com/v1/customers",
    ]);
    let (code, first) = curl(create.clone()).await;
    assert_eq!(code, 200, "{first}");
    let (code, again) = curl(create).await;
    assert_eq!(code, 200);
    assert_eq!(first, again, "the retry gets the stored answer");
    let curl_cus = serde_json::from_str::<Value>(&first).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (code, read) = curl(s(&[&format!(
        "https://api.stripe.com/v1/customers/{curl_cus}"
    )]))
    .await;
    assert_eq!(code, 200, "{read}");
    let (code, held) = curl(s(&[
        "-H",
        "Idempotency-Key: curl-refund",
        "-d",
        "payment_intent=pi_curl",
        "-d",
        "amount=300",
        "https://api.stripe.com/v1/refunds",
    ]))
    .await;
    assert_eq!(code, 200, "released while curl waited: {held}");
    let (code, bad) = curl(s(&[
        "-H",
        "Idempotency-Key: curl-bad",
        "-d",
        "email=curl2@acme.com",
        "-d",
        "tax_exempt=sometimes",
        "https://api.stripe.com/v1/customers",
    ]))
    .await;
    assert_eq!(code, 422, "{bad}");
    assert!(bad.contains("tax_exempt"), "{bad}");
    approving.abort();
    let committed = admin_json(
        gate.admin_addr,
        "GET",
        "/api/proposals?state=committed",
        None,
    )
    .await;
    let held: Vec<&str> = committed["proposals"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["tool"].as_str())
        .collect();
    assert_eq!(
        held.len(),
        6,
        "3 refunds, 2 issues and 1 mail were held, approved, committed: {held:?}"
    );

    // The judge: what the fake APIs hold.
    let st = fakes.state.lock().unwrap();
    let emails: Vec<&str> = st
        .customers
        .values()
        .filter_map(|c| c["email"].as_str())
        .collect();
    for (email, id) in [
        (format!("py-{run}@acme.com"), &cus),
        (format!("node-{run}@acme.com"), &node_cus),
        ("curl@acme.com".to_string(), &curl_cus),
    ] {
        assert_eq!(
            emails.iter().filter(|e| **e == email).count(),
            1,
            "{email} created once: {emails:?}"
        );
        assert!(st.customers.contains_key(id.as_str()));
    }
    assert!(
        !emails
            .iter()
            .any(|e| e.starts_with("py2-") || e.starts_with("node2-") || *e == "curl2@acme.com"),
        "refused writes sent nothing"
    );
    let refunds: Vec<&str> = st
        .refunds
        .iter()
        .filter_map(|r| r["payment_intent"].as_str())
        .collect();
    assert_eq!(refunds.len(), 3, "{refunds:?}");
    for pi in [
        format!("pi_py_{run}"),
        format!("pi_node_{run}"),
        "pi_curl".into(),
    ] {
        assert!(
            refunds.contains(&pi.as_str()),
            "{pi} refunded once: {refunds:?}"
        );
    }
    let titles: Vec<&str> = st
        .issues
        .values()
        .filter_map(|i| i["title"].as_str())
        .collect();
    assert_eq!(
        titles.len(),
        2,
        "one issue per SDK, retries included: {titles:?}"
    );
    assert!(!st.issues.keys().any(|(r, _)| r.starts_with("evilcorp")));
    let mails: Vec<&Value> = st
        .mails
        .iter()
        .filter(|m| m["subject"] == format!("Your ticket {run}"))
        .collect();
    assert_eq!(mails.len(), 1, "the retried mail was sent once");
    assert!(st
        .mails
        .iter()
        .all(|m| !m.to_string().contains("gmail.com")));
    // Every request that reached an API carried the real key, never the agent's dummy.
    for seen in &st.seen {
        let auth = seen.authorization.as_deref().unwrap_or("");
        assert!(!auth.contains("agent-holds-no-real-key"), "{seen:?}");
        assert!(
            seen.status < 400,
            "an API refused what toolgate sent: {seen:?}"
        );
    }
}
