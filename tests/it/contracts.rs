//! Tool contracts end to end, with the repository's example policies (built from the real
//! Stripe, GitHub and SendGrid specs): validation, permissions, credentials, idempotency, dry
//! run, limits, kill switches and reload. Every test asserts what the upstream received.

use crate::support::*;
use serde_json::{json, Value};

const CUSTOMERS: &str = "https://api.stripe.com/v1/customers";
const ISSUES: &str = "https://api.github.com/repos/acme/web/issues";
const MAIL: &str = "https://api.sendgrid.com/v3/mail/send";

fn mail() -> Value {
    json!({
        "personalizations": [{"to": [{"email": "ann@acme.com", "name": "Ann"}]}],
        "from": {"email": "bot@acme.com"},
        "subject": "Your ticket",
        "content": [{"type": "text/plain", "value": "We are on it."}],
        "tracking_settings": {"click_tracking": {"enable": false}}
    })
}

fn issue() -> Value {
    json!({"title": "Checkout fails", "body": "Steps…", "labels": ["bug", {"name": "p1"}]})
}

struct Case {
    what: &'static str,
    method: &'static str,
    url: String,
    headers: Vec<(&'static str, &'static str)>,
    body: String,
    status: u16,
    code: &'static str,
}

fn case(
    what: &'static str,
    method: &'static str,
    url: &str,
    headers: &[(&'static str, &'static str)],
    body: impl Into<String>,
    status: u16,
    code: &'static str,
) -> Case {
    Case {
        what,
        method,
        url: url.to_string(),
        headers: headers.to_vec(),
        body: body.into(),
        status,
        code,
    }
}

fn with(mut v: Value, pointer: &str, value: Value) -> String {
    *v.pointer_mut(pointer)
        .unwrap_or_else(|| panic!("{pointer}")) = value;
    v.to_string()
}

fn nested(depth: usize) -> Value {
    (0..depth).fold(json!("x"), |acc, _| json!([acc]))
}

fn fuzz_table() -> Vec<Case> {
    const V: u16 = 422;
    const VE: &str = "validation_error";
    let key = ("idempotency-key", "fuzz-key");
    let form = [FORM, key];
    let customer = "https://api.stripe.com/v1/customers/cus_1";
    let pi = "https://api.stripe.com/v1/payment_intents";
    let refunds = "https://api.stripe.com/v1/refunds";
    let long = |n: usize| "a".repeat(n);
    vec![
        // Stripe customers.create: form body, closed schema, Idempotency-Key required.
        case(
            "unknown top-level form field",
            "POST",
            CUSTOMERS,
            &form,
            "name=Ann&evil=1",
            V,
            VE,
        ),
        case(
            "unknown nested form field",
            "POST",
            CUSTOMERS,
            &form,
            "address[line1]=x&address[evil]=1",
            V,
            VE,
        ),
        case(
            "unknown field two levels down",
            "POST",
            CUSTOMERS,
            &form,
            "shipping[name]=A&shipping[address][line1]=x&shipping[address][evil]=1",
            V,
            VE,
        ),
        case(
            "object where a string belongs",
            "POST",
            CUSTOMERS,
            &form,
            "name[first]=Ann",
            V,
            VE,
        ),
        case(
            "integer field given a word",
            "POST",
            CUSTOMERS,
            &form,
            "balance=lots",
            V,
            VE,
        ),
        case(
            "over-long name",
            "POST",
            CUSTOMERS,
            &form,
            format!("name={}", long(300)),
            V,
            VE,
        ),
        case(
            "over-long phone",
            "POST",
            CUSTOMERS,
            &form,
            format!("phone={}", long(21)),
            V,
            VE,
        ),
        case(
            "metadata value that is an object",
            "POST",
            CUSTOMERS,
            &form,
            "metadata[a][b]=1",
            V,
            VE,
        ),
        case(
            "form keys nested too deep",
            "POST",
            CUSTOMERS,
            &form,
            format!("metadata{}=1", "[a]".repeat(20)),
            V,
            VE,
        ),
        case(
            "bad percent-encoding",
            "POST",
            CUSTOMERS,
            &form,
            "name=%zz",
            V,
            VE,
        ),
        case(
            "unbalanced bracket",
            "POST",
            CUSTOMERS,
            &form,
            "address[line1=x",
            V,
            VE,
        ),
        case(
            "field given twice",
            "POST",
            CUSTOMERS,
            &form,
            "name=a&name=b",
            V,
            VE,
        ),
        case(
            "value and object for one field",
            "POST",
            CUSTOMERS,
            &form,
            "address=x&address[line1]=y",
            V,
            VE,
        ),
        case(
            "JSON body to a form tool",
            "POST",
            CUSTOMERS,
            &[JSON, key],
            r#"{"name":"Ann"}"#,
            V,
            VE,
        ),
        case(
            "body without a content type",
            "POST",
            CUSTOMERS,
            &[key],
            "name=Ann",
            V,
            VE,
        ),
        case(
            "text/plain body",
            "POST",
            CUSTOMERS,
            &[("content-type", "text/plain"), key],
            "name=Ann",
            V,
            VE,
        ),
        case(
            "query string on a tool without one",
            "POST",
            &format!("{CUSTOMERS}?debug=1"),
            &form,
            "name=Ann",
            V,
            VE,
        ),
        case(
            "body over 1 MiB",
            "POST",
            CUSTOMERS,
            &form,
            format!("description={}", long(1024 * 1024 + 10)),
            413,
            VE,
        ),
        case(
            "missing Idempotency-Key",
            "POST",
            CUSTOMERS,
            &[FORM],
            "name=Ann",
            428,
            "idempotency_key_required",
        ),
        // Stripe customers.retrieve: query schema, no body.
        case(
            "unknown query parameter",
            "GET",
            &format!("{customer}?evil=1"),
            &[],
            "",
            V,
            VE,
        ),
        case(
            "expand given as a string",
            "GET",
            &format!("{customer}?expand=x"),
            &[],
            "",
            V,
            VE,
        ),
        case(
            "bad query encoding",
            "GET",
            &format!("{customer}?expand[]=%G1"),
            &[],
            "",
            V,
            VE,
        ),
        case("body on a GET", "GET", customer, &[FORM], "x=1", V, VE),
        // Stripe payment_intents.create and refunds.create.
        case(
            "amount as a word",
            "POST",
            pi,
            &form,
            "amount=ten&currency=usd",
            V,
            VE,
        ),
        // `expand` would answer with the whole customer, past customers.retrieve's hide.
        case(
            "expand reaching a customer",
            "POST",
            pi,
            &form,
            "amount=100&currency=usd&expand[]=customer",
            V,
            VE,
        ),
        case(
            "missing required currency",
            "POST",
            pi,
            &form,
            "amount=100",
            V,
            VE,
        ),
        case(
            "boolean that is not",
            "POST",
            pi,
            &form,
            "amount=100&currency=usd&confirm=maybe",
            V,
            VE,
        ),
        case(
            "unknown field in a list item",
            "POST",
            pi,
            &form,
            "amount=100&currency=usd&payment_method_types[0][x]=1",
            V,
            VE,
        ),
        case(
            "over-long statement descriptor",
            "POST",
            pi,
            &form,
            format!("amount=1&currency=usd&statement_descriptor={}", long(23)),
            V,
            VE,
        ),
        case(
            "refund with unknown field",
            "POST",
            refunds,
            &form,
            "payment_intent=pi_1&evil=1",
            V,
            VE,
        ),
        case(
            "refund amount as a word",
            "POST",
            refunds,
            &form,
            "payment_intent=pi_1&amount=all",
            V,
            VE,
        ),
        // GitHub issues.create: JSON body.
        case(
            "unknown top-level JSON field",
            "POST",
            ISSUES,
            &[JSON],
            with(issue(), "/body", json!("x")).replace("\"body\"", "\"bodyy\""),
            V,
            VE,
        ),
        case(
            "unknown field inside a label object",
            "POST",
            ISSUES,
            &[JSON],
            with(issue(), "/labels/1", json!({"name": "p1", "evil": true})),
            V,
            VE,
        ),
        case(
            "title as an object",
            "POST",
            ISSUES,
            &[JSON],
            with(issue(), "/title", json!({"a": 1})),
            V,
            VE,
        ),
        case(
            "assignees as a string",
            "POST",
            ISSUES,
            &[JSON],
            json!({"title": "x", "assignees": "me"}).to_string(),
            V,
            VE,
        ),
        case(
            "milestone as a boolean",
            "POST",
            ISSUES,
            &[JSON],
            json!({"title": "x", "milestone": true}).to_string(),
            V,
            VE,
        ),
        case(
            "missing required title",
            "POST",
            ISSUES,
            &[JSON],
            "{}",
            V,
            VE,
        ),
        case(
            "truncated JSON",
            "POST",
            ISSUES,
            &[JSON],
            r#"{"title":"#,
            V,
            VE,
        ),
        case(
            "trailing garbage after JSON",
            "POST",
            ISSUES,
            &[JSON],
            r#"{"title":"x"} x"#,
            V,
            VE,
        ),
        case(
            "JSON array instead of an object",
            "POST",
            ISSUES,
            &[JSON],
            "[1,2]",
            V,
            VE,
        ),
        case("JSON null", "POST", ISSUES, &[JSON], "null", V, VE),
        case(
            "nesting deeper than the bound",
            "POST",
            ISSUES,
            &[JSON],
            json!({"title": "x", "body": nested(40)}).to_string(),
            V,
            VE,
        ),
        case(
            "nesting past the parser's limit",
            "POST",
            ISSUES,
            &[JSON],
            format!("{{\"title\":{}1{}}}", "[".repeat(200), "]".repeat(200)),
            V,
            VE,
        ),
        case(
            "form body to a JSON tool",
            "POST",
            ISSUES,
            &[FORM],
            "title=x",
            V,
            VE,
        ),
        case(
            "invalid UTF-8 in JSON",
            "POST",
            ISSUES,
            &[JSON],
            String::from_utf8_lossy(b"{\"title\":\"\xff\xfe\"}").replace('\u{FFFD}', "\\udc00"),
            V,
            VE,
        ),
        // SendGrid mail.send: JSON body with nested lists.
        case(
            "missing required from",
            "POST",
            MAIL,
            &[JSON],
            {
                let mut m = mail();
                m.as_object_mut().unwrap().remove("from");
                m.to_string()
            },
            V,
            VE,
        ),
        case(
            "unknown field in a personalization",
            "POST",
            MAIL,
            &[JSON],
            {
                let mut m = mail();
                m["personalizations"][0]["evil"] = json!(1);
                m.to_string()
            },
            V,
            VE,
        ),
        case(
            "unknown field in a recipient",
            "POST",
            MAIL,
            &[JSON],
            with(
                mail(),
                "/personalizations/0/to/0",
                json!({"email": "ann@acme.com", "x": 1}),
            ),
            V,
            VE,
        ),
        case(
            "unknown field in mail settings",
            "POST",
            MAIL,
            &[JSON],
            with(
                mail(),
                "/tracking_settings/click_tracking",
                json!({"enable": false, "evil": 1}),
            ),
            V,
            VE,
        ),
        case(
            "from.email as a number",
            "POST",
            MAIL,
            &[JSON],
            with(mail(), "/from/email", json!(42)),
            V,
            VE,
        ),
        case(
            "personalizations as an object",
            "POST",
            MAIL,
            &[JSON],
            with(mail(), "/personalizations", json!({"to": []})),
            V,
            VE,
        ),
        case(
            "too many categories",
            "POST",
            MAIL,
            &[JSON],
            {
                let mut m = mail();
                m["categories"] = json!((0..11).map(|i| format!("c{i}")).collect::<Vec<_>>());
                m.to_string()
            },
            V,
            VE,
        ),
        case(
            "a thousand and one personalizations",
            "POST",
            MAIL,
            &[JSON],
            {
                let mut m = mail();
                let p = m["personalizations"][0].clone();
                m["personalizations"] = Value::Array(vec![p; 1001]);
                m.to_string()
            },
            V,
            VE,
        ),
        case(
            "empty content value",
            "POST",
            MAIL,
            &[JSON],
            with(mail(), "/content/0/value", json!("")),
            V,
            VE,
        ),
    ]
}

#[tokio::test]
async fn launch_check_schema_fuzzing_refuses_every_malformed_or_hostile_input() {
    let (_pki, upstream, gate) = GateBuilder::examples().with_upstream().await;
    let client = staging(&gate);
    let table = fuzz_table();
    assert!(table.len() >= 40, "{} cases", table.len());
    for c in &table {
        let got = send(&client, c.method, &c.url, &c.headers, &c.body)
            .await
            .unwrap();
        assert_eq!(
            (got.status.as_u16(), got.code().as_str()),
            (c.status, c.code),
            "{}: {}",
            c.what,
            String::from_utf8_lossy(&got.body)
        );
        assert!(!got.message().is_empty(), "{}", c.what);
    }
    assert_eq!(
        upstream.count(),
        0,
        "no malformed input reached the upstream"
    );

    // The messages name the offending field by JSON pointer.
    let got = send(
        &client,
        "POST",
        ISSUES,
        &[JSON],
        with(issue(), "/labels/1", json!({"name": "p1", "evil": true})),
    )
    .await
    .unwrap();
    assert!(
        got.message().contains("/labels/1/evil"),
        "{}",
        got.message()
    );
    let got = send(
        &client,
        "POST",
        CUSTOMERS,
        &[FORM, ("idempotency-key", "k")],
        "shipping[name]=A&shipping[address][evil]=1",
    )
    .await
    .unwrap();
    assert!(
        got.message().contains("/shipping/address/evil"),
        "{}",
        got.message()
    );

    // And the valid versions pass, so the refusals above are about the input.
    for (url, headers, body) in [
        (
            CUSTOMERS,
            vec![FORM, ("idempotency-key", "ok-1")],
            "name=Ann&email=ann%40acme.com&metadata[order]=42&preferred_locales[]=en".to_string(),
        ),
        (ISSUES, vec![JSON], issue().to_string()),
        (MAIL, vec![JSON], mail().to_string()),
        (
            "https://api.stripe.com/v1/payment_intents",
            vec![FORM, ("idempotency-key", "ok-2")],
            "amount=100&currency=usd&confirm=false&payment_method_types[0]=card".to_string(),
        ),
    ] {
        let got = send(&client, "POST", url, &headers, &body).await.unwrap();
        assert_eq!(
            got.status,
            200,
            "{url}: {}",
            String::from_utf8_lossy(&got.body)
        );
    }
    let seen = upstream.received();
    assert_eq!(seen.len(), 4);
    // The upstream gets the agent's bytes as sent, not a re-encoding.
    assert_eq!(
        seen[0].body,
        "name=Ann&email=ann%40acme.com&metadata[order]=42&preferred_locales[]=en"
    );
}

/// Every JSON pointer of an object inside `v` (where a field can be added).
fn object_pointers(v: &Value, at: String, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            out.push(at.clone());
            for (k, child) in m {
                object_pointers(child, format!("{at}/{k}"), out);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                object_pointers(child, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

#[test]
fn property_an_unknown_field_anywhere_is_refused() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};

    let rt = tokio::runtime::Runtime::new().unwrap();
    let (_pki, upstream, gate) = rt.block_on(GateBuilder::examples().with_upstream());
    let client = staging(&gate);
    let bodies = [(ISSUES, issue()), (MAIL, mail())];
    let mut runner = TestRunner::new(Config {
        cases: 64,
        ..Config::default()
    });
    let strategy = (
        0..bodies.len(),
        any::<prop::sample::Index>(),
        "[a-z][a-z0-9_]{0,10}",
    );
    runner
        .run(&strategy, |(which, at, name)| {
            let (url, body) = &bodies[which];
            let mut pointers = Vec::new();
            object_pointers(body, String::new(), &mut pointers);
            let pointer = at.get(&pointers).clone();
            let field = format!("zz_{name}");
            let mut bad = body.clone();
            bad.pointer_mut(&pointer)
                .unwrap()
                .as_object_mut()
                .unwrap()
                .insert(field.clone(), json!(1));
            let got = rt
                .block_on(send(&client, "POST", url, &[JSON], &bad.to_string()))
                .unwrap();
            prop_assert_eq!(
                got.status.as_u16(),
                422,
                "{} {}",
                pointer,
                String::from_utf8_lossy(&got.body)
            );
            prop_assert_eq!(got.code(), "validation_error");
            let named = format!("{pointer}/{field}");
            prop_assert!(
                got.message().contains(&named),
                "{} not in {}",
                named,
                got.message()
            );
            Ok(())
        })
        .unwrap();
    assert_eq!(upstream.count(), 0);
}

#[tokio::test]
async fn launch_check_privilege_escalation_is_refused_and_nothing_is_sent() {
    let (_pki, upstream, gate) = GateBuilder::examples().with_upstream().await;
    let staging = staging(&gate);
    let prod = prod(&gate);

    // Another tenant's GitHub organisation.
    let got = send(
        &staging,
        "GET",
        "https://api.github.com/repos/evilcorp/secrets",
        &[],
        "",
    )
    .await
    .unwrap();
    assert_eq!(
        (got.status.as_u16(), got.code().as_str()),
        (403, "policy_violation")
    );
    assert!(
        got.message().contains("owner = \"acme\""),
        "{}",
        got.message()
    );
    let got = send(
        &staging,
        "POST",
        "https://api.github.com/repos/evilcorp/web/issues",
        &[JSON],
        issue().to_string(),
    )
    .await
    .unwrap();
    assert_eq!(got.status, 403);

    // An external email recipient, in to, cc or bcc.
    for pointer in [
        "/personalizations/0/to/0/email",
        "/personalizations/0/cc",
        "/personalizations/0/bcc",
    ] {
        let mut m = mail();
        if pointer.ends_with("email") {
            *m.pointer_mut(pointer).unwrap() = json!("mallory@evil.com");
        } else {
            m["personalizations"][0][pointer.rsplit('/').next().unwrap()] =
                json!([{"email": "mallory@evil.com"}]);
        }
        let got = send(&staging, "POST", MAIL, &[JSON], m.to_string())
            .await
            .unwrap();
        assert_eq!(got.status, 403, "{pointer}");
        assert!(
            got.message()
                .contains("external recipients are not allowed"),
            "{}",
            got.message()
        );
    }
    // Too many recipients.
    let mut m = mail();
    m["personalizations"][0]["to"] = json!((0..11)
        .map(|i| json!({"email": format!("u{i}@acme.com")}))
        .collect::<Vec<_>>());
    let got = send(&staging, "POST", MAIL, &[JSON], m.to_string())
        .await
        .unwrap();
    assert_eq!(got.status, 403);
    assert!(got.message().contains("too many recipients"));

    // A staging agent calling a prod-only tool: it has no credential for staging.
    let got = send(
        &staging,
        "DELETE",
        "https://api.github.com/repos/acme/web",
        &[],
        "",
    )
    .await
    .unwrap();
    assert_eq!(got.status, 403);
    assert!(
        got.message()
            .contains("no credential for environment \"staging\""),
        "{}",
        got.message()
    );

    // A tool outside the agent's list.
    let got = send(&prod, "POST", MAIL, &[JSON], mail().to_string())
        .await
        .unwrap();
    assert_eq!(got.status, 403);
    assert!(got
        .message()
        .contains("may not use tool sendgrid.mail.send"));

    // A spoofed Host inside a Stripe tunnel cannot reach GitHub.
    let (_, _, stream) = raw_connect(
        gate.addr,
        "api.stripe.com:443",
        Some(("support-bot-staging", "demo-staging-token")),
    )
    .await;
    let tls = tls_over(stream, "api.stripe.com", &gate.ca_pem, &[b"http/1.1"])
        .await
        .unwrap();
    let req = http::Request::get("/repos/acme/web")
        .header("host", "api.github.com")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let got = http1_over(tls, req).await;
    assert_eq!(got.status, 403);

    assert_eq!(upstream.count(), 0, "the upstream received nothing");

    // The agent's own Authorization header never reaches the upstream; the injected one does.
    let got = send(
        &staging,
        "GET",
        "https://api.stripe.com/v1/customers/cus_1",
        &[("authorization", "Bearer sk_live_stolen")],
        "",
    )
    .await
    .unwrap();
    assert_eq!(got.status, 200);
    let seen = upstream.received();
    let auth: Vec<_> = seen[0].headers.get_all("authorization").iter().collect();
    assert_eq!(auth, ["Bearer sk_test_toolgate_demo_placeholder"]);
}

#[tokio::test]
async fn launch_check_replayed_idempotency_key_executes_once() {
    let (_pki, upstream, gate) = GateBuilder::examples().with_upstream().await;
    let client = staging(&gate);
    let headers = [FORM, ("idempotency-key", "cust-1")];
    let first = send(&client, "POST", CUSTOMERS, &headers, "name=Ann")
        .await
        .unwrap();
    let second = send(&client, "POST", CUSTOMERS, &headers, "name=Ann")
        .await
        .unwrap();
    assert_eq!(first.status, 200);
    assert_eq!(second.status, 200);
    assert_eq!(second.body, first.body);
    assert_eq!(second.headers["toolgate-replayed"], "true");
    assert!(!first.headers.contains_key("toolgate-replayed"));
    assert_eq!(upstream.count(), 1);

    // The same key with another payload.
    let got = send(&client, "POST", CUSTOMERS, &headers, "name=Bob")
        .await
        .unwrap();
    assert_eq!(
        (got.status.as_u16(), got.code().as_str()),
        (409, "idempotency_conflict")
    );
    assert_eq!(upstream.count(), 1);

    // Twenty concurrent duplicates by payload (the sendgrid SDK sends no key): one send.
    let body = mail().to_string();
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let client = staging(&gate);
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            send(&client, "POST", MAIL, &[JSON], &body).await.unwrap()
        }));
    }
    let mut replayed = 0;
    for t in tasks {
        let got = t.await.unwrap();
        assert_eq!(got.status, 200, "{}", String::from_utf8_lossy(&got.body));
        replayed += got.headers.contains_key("toolgate-replayed") as usize;
    }
    assert_eq!(replayed, 19);
    let mails = upstream
        .received()
        .iter()
        .filter(|r| r.path == "/v3/mail/send")
        .count();
    assert_eq!(
        mails, 1,
        "twenty concurrent duplicates made one upstream request"
    );
}

#[tokio::test]
async fn a_call_whose_outcome_is_unknown_is_never_sent_again() {
    let (_pki, upstream, gate) = GateBuilder::examples().with_upstream().await;
    let client = staging(&gate);
    let body = json!({"title": "hang-upstream"}).to_string();
    // The upstream receives the call but does not answer before toolgate's timeout.
    let got = send(&client, "POST", ISSUES, &[JSON], &body).await.unwrap();
    assert_eq!(
        (got.status.as_u16(), got.code().as_str()),
        (504, "upstream_timeout")
    );
    let got = send(&client, "POST", ISSUES, &[JSON], &body).await.unwrap();
    assert_eq!(
        (got.status.as_u16(), got.code().as_str()),
        (409, "idempotency_conflict")
    );
    assert!(got.message().contains("unknown"), "{}", got.message());
    assert_eq!(upstream.count(), 1);

    // Still so after a restart over the same data directory: the marker is durable.
    let dir = gate.into_dir().await;
    let addr = upstream.addr;
    let ca = _pki.ca_path.clone();
    let gate = GateBuilder::reopen(dir)
        .config(move |c| {
            c.add_connect_to(&format!("api.github.com:443={addr}"))
                .unwrap();
            c.upstream_ca.push(ca);
        })
        .start()
        .await;
    let got = send(&staging(&gate), "POST", ISSUES, &[JSON], &body)
        .await
        .unwrap();
    assert_eq!(got.status, 409, "{}", String::from_utf8_lossy(&got.body));
    assert_eq!(upstream.count(), 1);
}

#[tokio::test]
async fn dry_run_previews_and_sends_nothing() {
    let extra = format!(
        r#"
[[agent]]
id = "rehearsal"
token_sha256 = "{}"
owner = "alice@example.com"
environment = "staging"
tools = ["stripe.*"]
dry_run = true
"#,
        sha256_hex("rehearsal-token")
    );
    let (_pki, upstream, gate) = GateBuilder::examples()
        .policies(&[("rehearsal.toml", extra)])
        .with_upstream()
        .await;
    let client = staging(&gate);
    let got = send(
        &client,
        "POST",
        CUSTOMERS,
        &[
            FORM,
            ("idempotency-key", "d-1"),
            ("toolgate-dry-run", "1"),
            ("authorization", "Bearer mine"),
        ],
        "name=Ann",
    )
    .await
    .unwrap();
    assert_eq!(got.status, 200);
    assert_eq!(got.headers["toolgate-dry-run"], "true");
    let preview = got.json();
    assert_eq!(preview["dry_run"], true);
    assert_eq!(preview["tool"], "stripe.customers.create");
    assert_eq!(preview["request"]["method"], "POST");
    assert_eq!(
        preview["request"]["url"],
        "https://api.stripe.com/v1/customers"
    );
    assert_eq!(preview["request"]["headers"]["authorization"], "[REDACTED]");
    assert_eq!(preview["request"]["body"], "name=Ann");
    assert!(!String::from_utf8_lossy(&got.body).contains("sk_test_toolgate_demo_placeholder"));

    // An agent with dry_run = true gets previews for every call with side effects…
    let rehearsal = gate.client(
        Some(("rehearsal", "rehearsal-token")),
        http::Version::HTTP_11,
    );
    let got = send(
        &rehearsal,
        "POST",
        CUSTOMERS,
        &[FORM, ("idempotency-key", "d-2")],
        "name=Bob",
    )
    .await
    .unwrap();
    assert_eq!(got.headers["toolgate-dry-run"], "true");
    assert_eq!(upstream.count(), 0, "dry runs send nothing");
    // …while reads, which change nothing, are forwarded.
    let got = send(
        &rehearsal,
        "GET",
        "https://api.stripe.com/v1/customers/cus_1",
        &[],
        "",
    )
    .await
    .unwrap();
    assert!(!got.headers.contains_key("toolgate-dry-run"));
    assert_eq!(upstream.count(), 1);
}

#[tokio::test]
async fn rate_limits_and_budgets_hold_across_a_restart() {
    let extra = r#"
[[tool]]
name = "stripe.charges.create"
host = "api.stripe.com"
method = "POST"
path = "/v1/charges"
side_effects = "irreversible"
idempotency = "key"
body = { format = "form", schema = "schemas/charges.json" }
credential = { staging = "stripe-test" }
budget = { field = "amount", max = 1000, per = "day" }

[[tool]]
name = "stripe.balance.get"
host = "api.stripe.com"
method = "GET"
path = "/v1/balance"
rate_limit = "2/minute"
"#;
    let schema = json!({"type": "object", "properties": {"amount": {"type": "integer"}}, "required": ["amount"]}).to_string();
    let (pki, upstream, gate) = GateBuilder::examples()
        .policies(&[
            ("charges.toml", extra.to_string()),
            ("schemas/charges.json", schema),
        ])
        .with_upstream()
        .await;
    let client = staging(&gate);
    for _ in 0..2 {
        assert_eq!(
            send(&client, "GET", "https://api.stripe.com/v1/balance", &[], "")
                .await
                .unwrap()
                .status,
            200
        );
    }
    let got = send(&client, "GET", "https://api.stripe.com/v1/balance", &[], "")
        .await
        .unwrap();
    assert_eq!(
        (got.status.as_u16(), got.code().as_str()),
        (429, "rate_limited")
    );
    let retry: u64 = got.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "{retry}");

    let charge = |key: &'static str, amount: u32| {
        let client = staging(&gate);
        async move {
            send(
                &client,
                "POST",
                "https://api.stripe.com/v1/charges",
                &[FORM, ("idempotency-key", key)],
                &format!("amount={amount}"),
            )
            .await
            .unwrap()
        }
    };
    assert_eq!(charge("c1", 600).await.status, 200);
    let got = charge("c2", 600).await;
    assert_eq!(
        (got.status.as_u16(), got.code().as_str()),
        (403, "policy_violation")
    );
    assert!(
        got.message().contains("budget exceeded") && got.message().contains("1000"),
        "{}",
        got.message()
    );
    assert_eq!(upstream.count(), 3);

    // A restart does not reset the budget.
    let dir = gate.into_dir().await;
    let addr = upstream.addr;
    let ca = pki.ca_path.clone();
    let gate = GateBuilder::reopen(dir)
        .config(move |c| {
            c.add_connect_to(&format!("api.stripe.com:443={addr}"))
                .unwrap();
            c.upstream_ca.push(ca);
        })
        .start()
        .await;
    let client = staging(&gate);
    let got = send(
        &client,
        "POST",
        "https://api.stripe.com/v1/charges",
        &[FORM, ("idempotency-key", "c3")],
        "amount=500",
    )
    .await
    .unwrap();
    assert_eq!(got.status, 403);
    let got = send(
        &client,
        "POST",
        "https://api.stripe.com/v1/charges",
        &[FORM, ("idempotency-key", "c4")],
        "amount=400",
    )
    .await
    .unwrap();
    assert_eq!(got.status, 200);
    assert_eq!(upstream.count(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_switch_takes_effect_on_an_open_tunnel() {
    let (_pki, upstream, gate) = GateBuilder::examples().with_upstream().await;
    let client = staging(&gate); // one pooled tunnel, reused for every call below
    let url = "https://api.stripe.com/v1/customers/cus_1";
    assert_eq!(
        send(&client, "GET", url, &[], "").await.unwrap().status,
        200
    );

    // Agent tokens and missing tokens cannot use the admin API.
    let got = gate
        .admin(
            "POST",
            "/api/tools/stripe.customers.retrieve/disable",
            Some("demo-staging-token"),
            None,
        )
        .await;
    assert_eq!(got.status, 401);
    let got = gate.admin("GET", "/api/tools", None, None).await;
    assert_eq!(got.status, 401);

    let got = gate
        .admin(
            "POST",
            "/api/tools/stripe.customers.retrieve/disable",
            Some("demo-carol-token"),
            Some(json!({"reason": "incident 42"})),
        )
        .await;
    assert_eq!(got.status, 200, "{}", String::from_utf8_lossy(&got.body));
    let got = send(&client, "GET", url, &[], "").await.unwrap();
    assert_eq!(
        (got.status.as_u16(), got.code().as_str()),
        (403, "tool_disabled")
    );
    assert!(got.message().contains("incident 42") && got.message().contains("carol@example.com"));

    // Enabling needs an admin.
    let got = gate
        .admin(
            "POST",
            "/api/tools/stripe.customers.retrieve/enable",
            Some("demo-carol-token"),
            None,
        )
        .await;
    assert_eq!(got.status, 403);
    let got = gate
        .admin(
            "POST",
            "/api/tools/stripe.customers.retrieve/enable",
            Some("demo-dave-token"),
            None,
        )
        .await;
    assert_eq!(got.status, 200);
    assert_eq!(
        send(&client, "GET", url, &[], "").await.unwrap().status,
        200
    );

    // The CLI, against the running server, for an agent.
    let cli = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_toolgate"))
            .args(args)
            .args(["--server", &format!("http://{}", gate.admin_addr)])
            .env("TOOLGATE_TOKEN", "demo-dave-token")
            .output()
            .unwrap()
    };
    let out = cli(&[
        "agents",
        "disable",
        "support-bot-staging",
        "--reason",
        "runaway loop",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = send(&client, "GET", url, &[], "").await.unwrap();
    assert_eq!(got.code(), "tool_disabled");
    assert!(got.message().contains("runaway loop"));
    let out = cli(&["agents", "list"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("DISABLED by dave@example.com"));
    let out = cli(&["agents", "enable", "support-bot-staging"]);
    assert!(out.status.success());
    let out = cli(&["tools", "disable", "no.such.tool"]);
    assert!(!out.status.success());
    assert_eq!(
        send(&client, "GET", url, &[], "").await.unwrap().status,
        200
    );
    assert_eq!(
        upstream.count(),
        3,
        "nothing was sent while a switch was thrown"
    );
}

#[tokio::test]
async fn policies_reload_when_changed_and_a_broken_set_leaves_the_old_one() {
    let (_pki, upstream, gate) = GateBuilder::examples().with_upstream().await;
    let client = staging(&gate);
    let url = "https://api.stripe.com/v1/balance";
    let wait_for = |want: u16| {
        let client = staging(&gate);
        async move {
            let what = format!("the reloaded policies answer {want}");
            poll::until(&what, poll::SOON, || async {
                send(&client, "GET", url, &[], "").await.unwrap().status == want
            })
            .await
        }
    };
    assert_eq!(
        send(&client, "GET", url, &[], "").await.unwrap().status,
        403
    );

    // A good change takes effect without a restart, on the open tunnel too.
    gate.write_policy("balance.toml", "[[tool]]\nname = \"stripe.balance.get\"\nhost = \"api.stripe.com\"\nmethod = \"GET\"\npath = \"/v1/balance\"\n");
    wait_for(200).await;
    assert_eq!(
        send(&client, "GET", url, &[], "").await.unwrap().status,
        200
    );

    // A broken change is refused whole: the previous set stays in force.
    gate.write_policy("balance.toml", "[[tool]]\nname = \"stripe.balance.get\"\nhost = \"api.stripe.com\"\nmethod = \"GET\"\npath = \"/v1/balance\"\nmdoe = \"deny\"\n");
    gate.write_policy("broken.toml", "this is not toml");
    let what = "the broken set is refused";
    audit_events_once(&gate, "kind=policy_reload", what, |events| {
        events.iter().any(|e| {
            e["payload"]["result"]
                .as_str()
                .unwrap_or("")
                .starts_with("refused")
        })
    })
    .await;
    assert_eq!(
        send(&client, "GET", url, &[], "").await.unwrap().status,
        200
    );

    // Fixed again: loads.
    std::fs::remove_file(gate.dir.path().join("policies/broken.toml")).unwrap();
    gate.write_policy("balance.toml", "[[tool]]\nname = \"stripe.balance.get\"\nhost = \"api.stripe.com\"\nmethod = \"GET\"\npath = \"/v1/balance\"\nmode = \"deny\"\n");
    wait_for(403).await;
    let before = upstream.count();
    assert_eq!(
        send(&client, "GET", url, &[], "").await.unwrap().status,
        403
    );
    assert_eq!(upstream.count(), before);
}
