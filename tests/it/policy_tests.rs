//! Policy tests: `toolgate test` and `toolgate explain` run as the real binary on a policy
//! folder of their own, and the dry evaluation they share held against the live proxy on the
//! same requests (a forward, a hold and two refusals).

use std::path::Path;
use std::process::{Command, Output};

use crate::support::*;
use toolgate::verdict::{cases, evaluate, Outcome};

const BIN: &str = env!("CARGO_BIN_EXE_toolgate");

/// Agent `bot` (staging) and Stripe-shaped tools: a read, a keyed write, a held refund with a
/// rule, all with credential `k` (the file `k.key`).
fn policy() -> String {
    format!(
        r#"
[[agent]]
id = "bot"
token_sha256 = "{}"
owner = "alice@example.com"
environment = "staging"
tools = ["*"]

[[credential]]
name = "k"
file = "k.key"
header = "Authorization"
format = "Bearer {{secret}}"

[[tool]]
name = "customers.retrieve"
host = "api.stripe.com"
method = "GET"
path = "/v1/customers/{{customer}}"
credential = {{ staging = "k" }}

[[tool]]
name = "customers.create"
host = "api.stripe.com"
method = "POST"
path = "/v1/customers"
side_effects = "reversible"
idempotency = "key"
body = {{ format = "form" }}
credential = {{ staging = "k" }}

[[tool]]
name = "refunds.create"
host = "api.stripe.com"
method = "POST"
path = "/v1/refunds"
side_effects = "irreversible"
idempotency = "key"
mode = "approve"
body = {{ format = "form" }}
credential = {{ staging = "k" }}
rules = [ {{ deny_if = "!has(request.body.payment_intent)", message = "a refund must name its payment_intent" }} ]
approval = {{ required = 1, hold = "100ms" }}
"#,
        sha256_hex(BOT_TOKEN)
    )
}

const SECRET: &str = "sk_test_policy_tests_secret";

const PASSING: &str = r#"
[[case]]
name = "bot reads a customer"
agent = "bot"
request = { method = "GET", url = "https://api.stripe.com/v1/customers/cus_1" }
expect = "forward"
credential = "k"

[[case]]
name = "a refund is held"
agent = "bot"
request = { method = "POST", url = "https://api.stripe.com/v1/refunds", headers = { "Idempotency-Key" = "r-1" }, form = { payment_intent = "pi_1", amount = "100" } }
expect = "hold"
"#;

const FAILING: &str = r#"
[[case]]
name = "bot creates a customer"
agent = "bot"
request = { method = "POST", url = "https://api.stripe.com/v1/customers", headers = { "Idempotency-Key" = "c-1" }, form = { name = "Ann" } }
expect = "forward"

[[case]]
name = "a refund without a key is sent, wrongly expected"
agent = "bot"
request = { method = "POST", url = "https://api.stripe.com/v1/refunds", form = { payment_intent = "pi_1" } }
expect = "hold"
"#;

/// A policy folder with `policy()`, its key, and `tests/` holding `cases`.
fn folder(cases: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::write(p.join("p.toml"), policy()).unwrap();
    std::fs::write(p.join("k.key"), SECRET).unwrap();
    std::fs::create_dir(p.join("tests")).unwrap();
    for (name, text) in cases {
        std::fs::write(p.join("tests").join(name), text).unwrap();
    }
    dir
}

fn toolgate(dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .arg("--policies")
        .arg(dir)
        .env_remove("TOOLGATE_POLICIES")
        .output()
        .unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn toolgate_test_passes_a_good_file_and_fails_naming_the_case_and_the_reason() {
    let dir = folder(&[("a.toml", PASSING), ("b.toml", FAILING)]);
    let p = dir.path();
    // The cases in tests/ are not policy: the folder loads with them in it.
    let good = toolgate(p, &["test", p.join("tests/a.toml").to_str().unwrap()]);
    let text = stdout(&good);
    assert_eq!(good.status.code(), Some(0), "{text}");
    assert!(
        text.contains("PASS   a.toml bot reads a customer"),
        "{text}"
    );
    assert!(text.contains("2 case(s): 2 passed, 0 failed"), "{text}");

    // Every file of tests/ by default; one wrong expectation fails the run.
    let all = toolgate(p, &["test"]);
    let text = stdout(&all);
    assert_eq!(all.status.code(), Some(1), "{text}");
    assert!(
        text.contains("PASS   b.toml bot creates a customer"),
        "{text}"
    );
    assert!(
        text.contains("FAIL   b.toml a refund without a key is sent, wrongly expected"),
        "{text}"
    );
    assert!(text.contains("expected: hold"), "{text}");
    assert!(text.contains("decided:  refuse idempotency_key_required refunds.create: tool refunds.create changes things and needs an Idempotency-Key header"), "{text}");
    assert!(text.contains("phase:    decide"), "{text}");
    assert!(String::from_utf8_lossy(&all.stderr).contains("1 of 4 case(s) failed"));

    let json = toolgate(p, &["test", "--json"]);
    assert_eq!(json.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(
        (report["passed"].as_u64(), report["failed"].as_u64()),
        (Some(3), Some(1))
    );
    let failed = report["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["passed"] == false)
        .unwrap();
    assert_eq!(failed["decided"]["code"], "idempotency_key_required");
    assert_eq!(failed["decided"]["tool"], "refunds.create");

    // A broken cases file is an error naming the file and what to change.
    std::fs::write(
        p.join("tests/c.toml"),
        "[[case]]\nname = \"x\"\nagent = \"bot\"\n",
    )
    .unwrap();
    let broken = toolgate(p, &["test"]);
    assert_eq!(broken.status.code(), Some(1));
    let err = String::from_utf8_lossy(&broken.stderr);
    assert!(err.contains("c.toml") && err.contains("request"), "{err}");
}

#[test]
fn toolgate_explain_names_the_schema_error_and_the_closest_contract() {
    let dir = folder(&[]);
    let p = dir.path();
    let unmatched = toolgate(
        p,
        &[
            "explain",
            "--agent",
            "bot",
            "POST",
            "https://api.stripe.com/v1/refund",
        ],
    );
    let text = stdout(&unmatched);
    assert_eq!(unmatched.status.code(), Some(0), "{text}");
    assert!(
        text.contains(
            "match         REFUSED policy_violation: no tool contract matches POST /v1/refund"
        ),
        "{text}"
    );
    assert!(
        text.contains("closest contracts on api.stripe.com:"),
        "{text}"
    );
    assert!(
        text.contains(
            "refunds.create (POST /v1/refunds): segment 2 is \"refunds\", not \"refund\""
        ),
        "{text}"
    );

    let schema = serde_json::json!({"type": "object", "properties": {"name": {"type": "string"}}, "additionalProperties": false});
    std::fs::write(p.join("customer.json"), schema.to_string()).unwrap();
    let text = policy().replace(
        "body = { format = \"form\" }\ncredential = { staging = \"k\" }\n\n[[tool]]\nname = \"refunds.create\"",
        "body = { format = \"form\", schema = \"customer.json\" }\ncredential = { staging = \"k\" }\n\n[[tool]]\nname = \"refunds.create\"",
    );
    assert!(text.contains("customer.json"));
    std::fs::write(p.join("p.toml"), text).unwrap();
    std::fs::write(p.join("body.txt"), "name=Ann&evil=1").unwrap();
    let bad = toolgate(
        p,
        &[
            "explain",
            "--agent",
            "bot",
            "-H",
            "Idempotency-Key: e-1",
            "--body",
            p.join("body.txt").to_str().unwrap(),
            "POST",
            "https://api.stripe.com/v1/customers",
        ],
    );
    let text = stdout(&bad);
    assert!(
        text.contains("match         ok      tool customers.create (POST /v1/customers)"),
        "{text}"
    );
    assert!(
        text.contains("body          REFUSED validation_error:") && text.contains("evil"),
        "{text}"
    );
    assert!(
        text.contains("verdict: refuse validation_error customers.create"),
        "{text}"
    );
}

/// What the live proxy answered: its status, and the refusal's code and message if it refused.
async fn live(gate: &Toolgate, case: &cases::Case) -> (u16, String, String) {
    let a = &case.asked;
    let headers: Vec<(&str, &str)> = a
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.to_str().unwrap()))
        .collect();
    let url = a.url.to_string();
    let answer = send(&gate.bot(), a.method.as_str(), &url, &headers, &a.body)
        .await
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&answer.body).unwrap_or_default();
    let text = |v: &serde_json::Value| v.as_str().unwrap_or("").to_string();
    (
        answer.status.as_u16(),
        text(&json["error"]["code"]),
        text(&json["error"]["message"]),
    )
}

#[tokio::test]
async fn the_evaluator_agrees_with_the_live_proxy() {
    let (_pki, upstream, gate) = GateBuilder::new()
        .policy("p.toml", policy())
        .policy("k.key", SECRET)
        .with_upstream()
        .await;
    let policy = toolgate::policy::Policy::load_dir_dry(&gate.dir.path().join("policies")).unwrap();
    let requests = format!(
        "{PASSING}{}",
        r#"
[[case]]
name = "a customer without a key"
agent = "bot"
request = { method = "POST", url = "https://api.stripe.com/v1/customers", form = { name = "Ann" } }
expect = { refuse = "idempotency_key_required" }

[[case]]
name = "no contract"
agent = "bot"
request = { method = "DELETE", url = "https://api.stripe.com/v1/customers/cus_1" }
expect = { refuse = "policy_violation" }
"#
    );
    let all = cases::parse(&requests).unwrap();
    assert_eq!(all.len(), 4);
    for case in &all {
        let verdict = evaluate(&policy, &case.asked, &case.world);
        assert_eq!(
            case.expect.judge(&verdict),
            None,
            "{}: {}",
            case.name,
            cases::describe(&verdict)
        );
        let (status, code, message) = live(&gate, case).await;
        match &verdict.outcome {
            Outcome::Forward { credential } => {
                assert_eq!(status, 200, "{}", case.name);
                assert_eq!(credential.as_deref(), Some("k"));
                // The upstream saw the credential the evaluator named.
                let seen = upstream.received();
                assert_eq!(
                    seen.last().unwrap().headers["authorization"],
                    format!("Bearer {SECRET}").as_str()
                );
            }
            Outcome::Hold => assert_eq!(
                (status, code.as_str()),
                (423, "approval_pending"),
                "{}",
                case.name
            ),
            Outcome::Refused(r) => {
                assert_eq!(status, r.code.status().as_u16(), "{}", case.name);
                assert_eq!(
                    (code.as_str(), message.as_str()),
                    (r.code.as_str(), r.message.as_str())
                );
            }
            other => panic!("{}: {other:?}", case.name),
        }
    }
    // Only the read reached the upstream.
    assert_eq!(upstream.count(), 1);
}
