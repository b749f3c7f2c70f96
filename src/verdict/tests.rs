use std::path::Path;

use http::HeaderValue;
use proptest::prelude::*;

use super::cases::{self, encode_form, Expect};
use super::*;

fn examples() -> Policy {
    Policy::load_dir_dry(&Path::new(env!("CARGO_MANIFEST_DIR")).join("policies"))
        .expect("the example policies load")
}

fn one(text: &str) -> cases::Case {
    let mut all = cases::parse(text).expect("the case parses");
    assert_eq!(all.len(), 1);
    all.remove(0)
}

fn verdict_of(policy: &Policy, text: &str) -> Verdict {
    let case = one(text);
    evaluate(policy, &case.asked, &case.world)
}

fn refused(v: &Verdict) -> &Refusal {
    match &v.outcome {
        Outcome::Refused(r) => r,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn the_shipped_example_cases_all_pass() {
    let policy = examples();
    let text = include_str!("../../policies/tests/examples.toml");
    let all = cases::parse(text).expect("examples.toml parses");
    assert!(all.len() >= 30, "{} cases", all.len());
    for case in all {
        let verdict = evaluate(&policy, &case.asked, &case.world);
        assert_eq!(
            case.expect.judge(&verdict),
            None,
            "case {:?}: {}",
            case.name,
            cases::describe(&verdict)
        );
    }
}

#[test]
fn a_case_reads_agent_request_expectation_and_state() {
    let case = one(r#"
[[case]]
name = "n"
agent = "a"
request = { method = "post", url = "https://h.example/p?q=1", headers = { "X-A" = "1" }, form = { a = { b = "c" }, n = 1 } }
expect = "forward"
credential = "cred"
disabled = ["tool:t"]
grants = ["g"]
"#);
    assert_eq!(case.asked.who, Who::Agent("a".into()));
    assert_eq!(case.asked.method, Method::POST);
    assert_eq!(case.asked.url.query(), Some("q=1"));
    assert_eq!(case.asked.headers["x-a"], "1");
    assert_eq!(
        case.asked.headers["content-type"],
        "application/x-www-form-urlencoded"
    );
    assert_eq!(&case.asked.body[..], b"a%5Bb%5D=c&n=1");
    assert_eq!(
        case.expect,
        Expect::Forward {
            credential: Some("cred".into())
        }
    );
    assert_eq!(case.world.disabled, vec![KillTarget::Tool("t".into())]);
    assert_eq!(case.world.grants, vec!["g".to_string()]);
}

#[test]
fn a_case_file_says_what_is_wrong_with_it() {
    let head = "[[case]]\nname = \"n\"\n";
    let req = "request = { method = \"GET\", url = \"https://h/\" }\n";
    let bad = [
        (format!("{head}{req}expect = \"forward\""), "exactly one of agent"),
        (
            format!("{head}agent = \"a\"\nsource = \"10.0.0.1\"\n{req}expect = \"hold\""),
            "exactly one of agent",
        ),
        (format!("{head}source = \"nope\"\n{req}expect = \"hold\""), "not an IP address"),
        (format!("{head}agent = \"a\"\n{req}expect = \"allow\""), "expect = \"allow\""),
        (
            format!("{head}agent = \"a\"\n{req}expect = {{ refuse = \"nope\" }}"),
            "not a code",
        ),
        (
            format!("{head}agent = \"a\"\n{req}expect = \"hold\"\ncredential = \"c\""),
            "belongs to an expect = \"forward\"",
        ),
        (
            format!("{head}agent = \"a\"\nrequest = {{ method = \"GET\", url = \"/p\" }}\nexpect = \"hold\""),
            "must be absolute",
        ),
        (
            format!("{head}agent = \"a\"\nrequest = {{ method = \"GET\", url = \"https://h/\", body = \"x\", json = {{}} }}\nexpect = \"hold\""),
            "at most one of body, json or form",
        ),
        (
            format!("{head}agent = \"a\"\n{req}expect = \"hold\"\ndisabled = [\"x\"]"),
            "tool:NAME or agent:ID",
        ),
        (format!("{head}agent = \"a\"\n{req}expect = \"hold\"\ntypo = 1"), "typo"),
        (String::new(), "no [[case]]"),
    ];
    for (text, want) in bad {
        let err = cases::parse(&text).expect_err(&text);
        assert!(err.contains(want), "{text:?}: {err}");
    }
}

#[test]
fn a_forward_names_its_credential_and_a_failure_says_what_was_decided() {
    let policy = examples();
    let v = verdict_of(
        &policy,
        r#"[[case]]
name = "read"
agent = "support-bot-prod"
request = { method = "GET", url = "https://api.stripe.com/v1/customers/cus_1" }
expect = "forward"
credential = "stripe-test"
"#,
    );
    assert_eq!(v.tool.as_deref(), Some("stripe.customers.retrieve"));
    let expect = Expect::Forward {
        credential: Some("stripe-test".into()),
    };
    assert_eq!(
        expect.judge(&v).as_deref(),
        Some("forwarded with credential stripe-live, not stripe-test")
    );
    assert_eq!(
        Expect::Hold.judge(&v).as_deref(),
        Some("decided forward stripe.customers.retrieve with credential stripe-live")
    );
    let names: Vec<&str> = v.phases.iter().map(|p| p.name).collect();
    assert_eq!(
        names,
        [
            "identify",
            "egress",
            "job",
            "kill switch",
            "path",
            "user",
            "match",
            "kill switch",
            "authorize",
            "path params",
            "query",
            "body size",
            "body",
            "rules",
            "budget field",
            "headers",
            "decide"
        ]
    );
}

#[test]
fn a_refusal_stops_at_its_phase_with_the_proxys_message() {
    let policy = examples();
    let v = verdict_of(
        &policy,
        r#"[[case]]
name = "unknown field"
agent = "support-bot-staging"
request = { method = "POST", url = "https://api.github.com/repos/acme/web/issues", json = { title = "t", evil = 1 } }
expect = "forward"
"#,
    );
    let r = refused(&v);
    assert_eq!(r.code, Code::ValidationError);
    let last = v.phases.last().expect("phases");
    assert_eq!((last.name, last.passed), ("body", false));
    assert!(last.note.contains("evil"), "{}", last.note);
    let expect = Expect::Refuse {
        code: "validation_error".into(),
        message: Some("no such text".into()),
    };
    assert_eq!(
        expect.judge(&v).as_deref(),
        Some("the refusal's message does not contain \"no such text\"")
    );
}

#[test]
fn no_match_lists_the_contracts_and_the_closest_say_why_not() {
    let policy = examples();
    let path = "/v1/refund";
    let r = no_match(&policy, "api.stripe.com", 443, &Method::POST, path);
    assert!(r
        .message
        .contains("no tool contract matches POST /v1/refund on api.stripe.com"));
    assert!(r.message.contains("POST /v1/refunds"), "{}", r.message);
    let near = closest(&policy, "api.stripe.com", 443, &Method::POST, path, 3);
    // The nearest first: a segment one letter short beats other paths.
    assert_eq!(
        near[0],
        "stripe.refunds.create (POST /v1/refunds): segment 2 is \"refunds\", not \"refund\"",
        "{near:?}"
    );
    let got = closest(
        &policy,
        "api.stripe.com",
        443,
        &Method::PUT,
        "/v1/refunds",
        1,
    );
    assert!(got[0].contains("it takes POST, not PUT"), "{got:?}");
}

/// An agent, a dry-run agent, and a tool of each kind the decide phase tells apart.
const ROUTES: &str = r#"
[[agent]]
id = "a"
token_env = "T"
owner = "o"
environment = "staging"
tools = ["*"]

[[agent]]
id = "dry"
token_env = "T"
owner = "o"
environment = "staging"
tools = ["*"]
dry_run = true

[[tool]]
name = "w"
host = "h.example"
method = "POST"
path = "/w"
side_effects = "reversible"
idempotency = "key"

[[tool]]
name = "r"
host = "h.example"
method = "GET"
path = "/r"

[[tool]]
name = "held"
host = "h.example"
method = "POST"
path = "/held"
side_effects = "irreversible"
idempotency = "payload"
mode = "approve"

[[tool]]
name = "no"
host = "h.example"
method = "POST"
path = "/no"
side_effects = "none"
mode = "deny"
"#;

#[test]
fn route_denies_previews_holds_reads_and_writes_as_the_proxy_decides() {
    let policy = crate::policy::for_tests(ROUTES);
    let (a, dry) = (
        policy.agent("a").expect("a").clone(),
        policy.agent("dry").expect("dry").clone(),
    );
    let tool = |n: &str| policy.tool(n).expect("tool").clone();
    let mut keyed = HeaderMap::new();
    keyed.insert("idempotency-key", HeaderValue::from_static("k"));
    let none = HeaderMap::new();
    assert_eq!(route(&a, &tool("r"), &none, false).ok(), Some(Route::Read));
    assert_eq!(
        route(&a, &tool("w"), &keyed, false).ok(),
        Some(Route::Write(Some("k".into())))
    );
    let missing = route(&a, &tool("w"), &none, false).expect_err("no key");
    assert_eq!(missing.code, Code::IdempotencyKeyRequired);
    assert_eq!(
        route(&a, &tool("held"), &none, false).ok(),
        Some(Route::Propose)
    );
    assert_eq!(
        route(&dry, &tool("w"), &none, false).ok(),
        Some(Route::Preview)
    );
    assert_eq!(
        route(&dry, &tool("r"), &none, false).ok(),
        Some(Route::Read)
    );
    // An undo an approver asked for is neither previewed nor held.
    assert_eq!(
        route(&dry, &tool("w"), &keyed, true).ok(),
        Some(Route::Write(Some("k".into())))
    );
    assert_eq!(
        route(&a, &tool("held"), &none, true).ok(),
        Some(Route::Write(None))
    );
    let denied = route(&a, &tool("no"), &none, false).expect_err("deny");
    assert!(denied.message.contains("mode deny"));
}

#[test]
fn an_mcp_batch_is_not_judged_and_fails_its_case() {
    let policy = examples();
    let v = verdict_of(
        &policy,
        r#"[[case]]
name = "batch"
agent = "support-bot-staging"
request = { method = "POST", url = "https://mcp.tickets.example/mcp", body = "[]", headers = { "Content-Type" = "application/json" } }
expect = "forward"
"#,
    );
    assert!(matches!(v.outcome, Outcome::Unsupported(_)));
    assert!(Expect::Forward { credential: None }.judge(&v).is_some());
}

fn form_value() -> impl Strategy<Value = serde_json::Value> {
    let key = "[a-z][a-z0-9_]{0,6}";
    let leaf = any::<String>().prop_map(serde_json::Value::String);
    leaf.prop_recursive(3, 16, 4, move |inner| {
        prop::collection::btree_map(key, inner, 1..4)
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect()))
    })
}

proptest! {
    /// A case's form table reaches the body checks as the same object the proxy decodes.
    #[test]
    fn a_form_encodes_to_what_the_proxy_decodes(
        map in prop::collection::btree_map("[a-z][a-z0-9_]{0,6}", form_value(), 0..5)
    ) {
        let value = serde_json::Value::Object(map.into_iter().collect());
        let text = encode_form(&value);
        let decoded = crate::policy::contract::decode_form(text.as_bytes());
        prop_assert_eq!(decoded.ok(), Some(value));
    }

    /// Any text is read as a cases file or refused with a message, never a panic.
    #[test]
    fn any_text_parses_or_is_refused(text in ".{0,400}") {
        let _ = cases::parse(&text);
    }
}

#[test]
fn a_case_names_the_person_and_an_agent_that_needs_one_refuses_without() {
    let dir = tempfile::tempdir().unwrap();
    let policy_text = r#"
[[agent]]
id = "desk"
token_env = "UNSET_DESK_TOKEN"
owner = "ops@example.com"
environment = "staging"
tools = ["t.*"]
users = "required"

[[tool]]
name = "t.read"
host = "api.example.com"
method = "GET"
path = "/x"
rules = [{ deny_if = '!("support" in user.groups) || user.via != "the case"', message = "support only" }]
"#;
    std::fs::write(dir.path().join("p.toml"), policy_text).unwrap();
    let policy = Policy::load_dir_dry(dir.path()).unwrap();
    let case = |extra: &str| {
        format!(
            "[[case]]\nname = \"n\"\nagent = \"desk\"\nrequest = {{ method = \"GET\", url = \"https://api.example.com/x\" }}\nexpect = \"forward\"\n{extra}"
        )
    };
    let nobody = verdict_of(&policy, &case(""));
    assert_eq!(refused(&nobody).code, Code::UserAuthError);
    let sales = verdict_of(
        &policy,
        &case("user = \"bob@example.com\"\nuser_groups = [\"sales\"]"),
    );
    assert!(refused(&sales).message.contains("support only"));
    let support = verdict_of(
        &policy,
        &case("user = \"alice@example.com\"\nuser_groups = [\"support\"]"),
    );
    assert!(
        matches!(support.outcome, Outcome::Forward { .. }),
        "{}",
        cases::describe(&support)
    );
}
