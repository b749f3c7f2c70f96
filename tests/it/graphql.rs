//! GraphQL endpoints through the proxy, field by field, with the example contracts of
//! `policies/github-graphql.toml` and real clients: the `gh` CLI (Debian package `gh`) and
//! Octokit's GraphQL client (`@octokit/graphql`, `tests/sdk/graphql_agent.mjs`), against the fake
//! of GitHub's GraphQL API (`support/gh_fake.rs`), which logs every request it receives. Queries
//! are forwarded, auto mutations written once, approve-mode ones held; refusals come back in
//! GraphQL's error shape with toolgate's code, and nothing refused reaches the fake. The
//! adapter's own cases against the generic recording upstream are in `graphql_adapter`.
//!
//! Without `gh` or the Node SDKs the client tests print why they skipped, unless
//! `TOOLGATE_REQUIRE_SDKS=1`.

use std::path::Path;
use std::time::Duration;

use http::Version;
use serde_json::{json, Value};

use crate::approvals::traffic_rows;
use crate::sdk::{find, ok, run_agent, sdk_dir};
use crate::support::fakes::Keys;
use crate::support::gh_fake::GhFake;
use crate::support::*;

const GRAPHQL: &str = "https://api.github.com/graphql";
const STAGING: (&str, &str) = ("support-bot-staging", "demo-staging-token");
/// A platform lead: approves the held GraphQL mutations.
const DAVE: &str = "demo-dave-token";
/// What the agent holds instead of a GitHub key; toolgate replaces it.
const PLACEHOLDER: &str = "agent-holds-no-real-key";

/// The example policies, routed to a fresh fake of GitHub's GraphQL API.
async fn gate_and_fake() -> (Pki, GhFake, Toolgate) {
    let pki = Pki::new("test upstream CA");
    let fake = GhFake::start(&pki).await;
    let gate = GateBuilder::examples()
        .routed_to(&pki, fake.addr)
        .config(|c| c.upstream_timeout = Duration::from_secs(10))
        .start()
        .await;
    (pki, fake, gate)
}

/// The `Authorization` toolgate injects: the example `github` credential.
fn real_authorization() -> String {
    format!("Bearer {}", Keys::examples().github[0])
}

/// Every request the fake received carried the real key, never the agent's placeholder.
fn all_with_the_real_key(fake: &GhFake) {
    for seen in fake.seen() {
        assert_eq!(
            seen.authorization.as_deref(),
            Some(real_authorization().as_str()),
            "toolgate injects the real credential: {}",
            fake.log()
        );
    }
}

/// Whether this test must skip (printed, recorded) because `what` is missing; a failure under
/// `TOOLGATE_REQUIRE_SDKS=1`.
fn skip(suite: &str, why: &str, install: &str) -> bool {
    if std::env::var("TOOLGATE_REQUIRE_SDKS").as_deref() == Ok("1") {
        panic!("TOOLGATE_REQUIRE_SDKS=1 but {why}");
    }
    skips::skipped(suite, why, install);
    true
}

fn have_gh() -> bool {
    std::process::Command::new("gh")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A gate over the example policies and the fake, and a home for `gh`; None (after saying why)
/// when `gh` is missing and the test skips.
async fn with_gh(suite: &str) -> Option<(Pki, GhFake, Toolgate, tempfile::TempDir)> {
    if !have_gh() && skip(suite, "gh is not installed", skips::GH) {
        return None;
    }
    let (pki, fake, gate) = gate_and_fake().await;
    Some((pki, fake, gate, tempfile::tempdir().unwrap()))
}

/// What a `gh` run ended with.
#[derive(Debug)]
struct GhRun {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// Runs `gh` as an agent would through toolgate: HTTPS_PROXY with the staging agent's token,
/// toolgate's CA as the only trusted root, a placeholder GitHub token, a fresh config.
async fn gh(gate: &Toolgate, home: &Path, args: &[&str]) -> GhRun {
    let proxy = format!("http://{}:{}@{}", STAGING.0, STAGING.1, gate.addr);
    let mut cmd = tokio::process::Command::new("gh");
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("GH_CONFIG_DIR", home.join("gh"))
        .env("HTTPS_PROXY", &proxy)
        .env("SSL_CERT_FILE", gate.ca_path())
        .env("GH_TOKEN", PLACEHOLDER)
        .env("GH_PROMPT_DISABLED", "1")
        .env("GH_NO_UPDATE_NOTIFIER", "1")
        .env("NO_COLOR", "1")
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("gh finished within 60s")
        .unwrap();
    let run = GhRun {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    eprintln!("gh {args:?}: {run:?}");
    run
}

/// Asserts a refusal in GraphQL's shape ([`graphql_refusal`]); returns the one error.
fn refused_as_graphql(got: &Answer, status: u16, code: &str, needle: &str) -> Value {
    graphql_refusal(got, status, code, needle).unwrap_or_else(|why| panic!("{why}"))
}

/// Whether `got` is a refusal in GraphQL's shape: `status`, content-type JSON,
/// `{"errors":[{"message", "extensions":{"code", "request_id"}}]}` with toolgate's `code`, the
/// request id of the `Toolgate-Request-Id` header, no `data`, and a message containing `needle`.
/// The one error, or what differs.
fn graphql_refusal(got: &Answer, status: u16, code: &str, needle: &str) -> Result<Value, String> {
    let text = got.text();
    let fail = |why: &str| Err(format!("{why}: {} {text}", got.status));
    if got.status.as_u16() != status {
        return fail(&format!("status {} expected", status));
    }
    let ctype = got
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok());
    if !ctype.is_some_and(|c| c.starts_with("application/json")) {
        return fail(&format!("content-type {ctype:?}, not application/json"));
    }
    let body: Value = serde_json::from_slice(&got.body).unwrap_or(Value::Null);
    let Some([error]) = body["errors"].as_array().map(Vec::as_slice) else {
        return fail("not one error in {\"errors\": [...]}, the shape a GraphQL client reads");
    };
    if error["extensions"]["code"] != code {
        return fail(&format!("extensions.code {code:?} expected"));
    }
    if !error["message"]
        .as_str()
        .is_some_and(|m| m.contains(needle))
    {
        return fail(&format!("the message does not name {needle:?}"));
    }
    let id = got
        .headers
        .get("toolgate-request-id")
        .and_then(|v| v.to_str().ok());
    if id.is_none() || error["extensions"]["request_id"].as_str() != id {
        return fail(&format!(
            "extensions.request_id is not the Toolgate-Request-Id header {id:?}"
        ));
    }
    if !body.get("data").is_none_or(Value::is_null) {
        return fail("a refusal carries no data");
    }
    Ok(error.clone())
}

async fn post(client: &TestClient, body: Value) -> Answer {
    send(client, "POST", GRAPHQL, &[JSON], body.to_string())
        .await
        .unwrap()
}

async fn get(client: &TestClient, query: &str) -> Answer {
    let q: String = form_urlencoded::byte_serialize(query.as_bytes()).collect();
    send(client, "GET", &format!("{GRAPHQL}?query={q}"), &[], "")
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gh_issue_create_goes_through_with_the_real_token_and_creates_once() {
    let Some((_pki, fake, gate, home)) = with_gh("graphql::gh_issue_create").await else {
        return;
    };
    let args = [
        "issue",
        "create",
        "--repo",
        "acme/widgets",
        "--title",
        "T",
        "--body",
        "B",
    ];
    let first = gh(&gate, home.path(), &args).await;
    assert!(first.ok, "{first:?}\n{}", fake.log());
    assert_eq!(
        first.stdout.trim(),
        "https://github.com/acme/widgets/issues/42",
        "{first:?}"
    );
    // gh 2.23 reads the repository (its id, through a fragment), then creates the issue.
    assert_eq!(fake.calls("query.repository"), 1, "{}", fake.log());
    assert_eq!(fake.calls("mutation.createIssue"), 1, "{}", fake.log());
    let sent = fake.body_of("mutation.createIssue");
    assert_eq!(
        sent["variables"]["input"],
        json!({"repositoryId": "R_1", "title": "T", "body": "B"}),
        "the mutation reached the fake as gh sent it"
    );

    // gh run again: the same mutation with the same arguments is answered from the store.
    let again = gh(&gate, home.path(), &args).await;
    assert!(again.ok, "{again:?}\n{}", fake.log());
    assert_eq!(again.stdout, first.stdout, "the stored answer");
    assert_eq!(fake.calls("query.repository"), 2, "reads are forwarded");
    assert_eq!(
        fake.calls("mutation.createIssue"),
        1,
        "written once: {}",
        fake.log()
    );
    all_with_the_real_key(&fake);

    // /traffic tells gh's calls apart by field, and the story names the field and what it made.
    let rows = traffic_rows(&gate, "github.graphql.createIssue", 2).await;
    assert_eq!(rows.len(), 2, "{rows:#?}");
    let reads = traffic_rows(&gate, "github.graphql.repository", 2).await;
    assert_eq!(reads.len(), 2, "{reads:#?}");
    let sent = rows[0]["request_id"].as_str().unwrap().to_string();
    let story = gate
        .admin("GET", &format!("/api/audit/story/{sent}"), Some(DAVE), None)
        .await;
    let summary = story.json()["summary"].to_string();
    assert!(
        summary.contains("github.graphql.createIssue created issue I_42"),
        "{summary}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gh_delete_ref_is_held_until_a_platform_lead_approves_then_sent_once() {
    let Some((_pki, fake, gate, home)) = with_gh("graphql::gh_delete_ref").await else {
        return;
    };
    let query = r#"query=mutation { deleteRef(input:{refId:"REF_1"}) { clientMutationId } }"#;
    let args = ["api", "graphql", "-f", query];
    let held = gh(&gate, home.path(), &args).await;
    assert!(!held.ok, "held, gh fails: {held:?}");
    let id = pending_proposal(gate.admin_addr, "REF_1").await;
    assert!(
        held.stderr.contains("needs approval") && held.stderr.contains(&id),
        "gh prints toolgate's message, with the proposal {id}: {held:?}"
    );
    assert!(fake.seen().is_empty(), "held: nothing sent: {}", fake.log());

    let ok = gate
        .admin(
            "POST",
            &format!("/api/proposals/{id}/approve"),
            Some(DAVE),
            Some(json!({"comment": "stale branch"})),
        )
        .await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    // The example approves deleteRef with send = "on_retry": the agent's next call sends it.
    let sent = gh(&gate, home.path(), &args).await;
    assert!(sent.ok, "{sent:?}\n{}", fake.log());
    let answer: Value = serde_json::from_str(&sent.stdout).unwrap();
    assert_eq!(
        answer,
        json!({"data": {"deleteRef": {"clientMutationId": null}}})
    );
    assert_eq!(fake.calls("mutation.deleteRef"), 1, "{}", fake.log());

    // Once more: the stored answer, and the fake still saw one deleteRef.
    let again = gh(&gate, home.path(), &args).await;
    assert!(again.ok, "{again:?}");
    assert_eq!(again.stdout, sent.stdout, "the stored answer");
    assert_eq!(fake.calls("mutation.deleteRef"), 1, "{}", fake.log());
    assert_eq!(fake.seen().len(), 1, "{}", fake.log());
    all_with_the_real_key(&fake);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gh_prints_toolgates_message_for_an_uncontracted_mutation() {
    let Some((_pki, fake, gate, home)) = with_gh("graphql::gh_uncontracted").await else {
        return;
    };
    let query = r#"query=mutation { deleteIssue(input:{issueId:"I_1"}) { clientMutationId } }"#;
    let run = gh(&gate, home.path(), &["api", "graphql", "-f", query]).await;
    assert!(!run.ok, "{run:?}");
    assert!(
        run.stderr
            .contains("no contract allows GraphQL field mutation.deleteIssue"),
        "gh prints toolgate's message: {run:?}"
    );
    // gh's own GraphQL client prints it too: a repository of another organisation (a rule).
    let args = [
        "issue",
        "create",
        "--repo",
        "evilcorp/secrets",
        "--title",
        "T",
        "--body",
        "B",
    ];
    let run = gh(&gate, home.path(), &args).await;
    assert!(!run.ok, "{run:?}");
    assert!(
        run.stderr
            .contains("repository owner must be your organisation"),
        "gh prints toolgate's message: {run:?}"
    );
    assert!(fake.seen().is_empty(), "{}", fake.log());
}

/// Reads go through as sent (POST and GET), auto mutations are written once, by field and
/// arguments: inline or through variables is the same call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_are_forwarded_and_an_auto_mutation_is_written_once() {
    let (_pki, fake, gate) = gate_and_fake().await;
    let client = staging(&gate);
    let read = json!({
        "query": "query Repo($owner: String!) { repository(owner: $owner, name: \"widgets\") { id nameWithOwner } viewer { login } }",
        "variables": {"owner": "acme"},
    });
    let got = send(
        &client,
        "POST",
        GRAPHQL,
        &[JSON, ("authorization", "bearer agent-holds-no-real-key")],
        read.to_string(),
    )
    .await
    .unwrap();
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(
        got.json(),
        json!({"data": {"repository": {"id": "R_1", "nameWithOwner": "acme/widgets"}, "viewer": {"login": "toolgate-bot"}}})
    );
    let got = get(&client, "{ viewer { login } }").await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.json()["data"]["viewer"]["login"], "toolgate-bot");
    assert_eq!(fake.seen().len(), 2, "{}", fake.log());
    assert_eq!(fake.seen()[0].body, read.to_string(), "forwarded as sent");

    let inline = json!({"query": "mutation { createIssue(input: {repositoryId: \"R_1\", title: \"Once\"}) { issue { number } } }"});
    let first = post(&client, inline).await;
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(first.json()["data"]["createIssue"]["issue"]["number"], 42);
    let through_variables = json!({
        "query": "mutation Open($input: CreateIssueInput!) { createIssue(input: $input) { issue { number } } }",
        "variables": {"input": {"repositoryId": "R_1", "title": "Once"}},
        "operationName": "Open",
    });
    let again = post(&client, through_variables).await;
    assert_eq!(again.status, 200, "{}", again.text());
    assert_eq!(
        again
            .headers
            .get("toolgate-replayed")
            .and_then(|v| v.to_str().ok()),
        Some("true"),
        "the same field and arguments within the window: {:?}",
        again.headers
    );
    assert_eq!(again.json(), first.json(), "the stored answer");
    assert_eq!(fake.calls("mutation.createIssue"), 1, "{}", fake.log());
    all_with_the_real_key(&fake);
}

/// Every way of asking for more than the contracts allow is refused in GraphQL's shape, with
/// toolgate's code and a message naming what to change, and nothing reaches the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_answer_in_graphql_shape_and_nothing_reaches_the_upstream() {
    let (_pki, fake, gate) = gate_and_fake().await;
    let client = staging(&gate);
    let deep = format!("{{ viewer {}{} }}", "{ f ".repeat(19), "}".repeat(19));
    let issue = |title: &str| {
        format!("createIssue(input: {{repositoryId: \"R_1\", title: \"{title}\"}}) {{ issue {{ id }} }}")
    };
    let cases: Vec<(&str, Value, u16, &str, &str)> = vec![
        (
            "an uncontracted mutation",
            json!({"query": "mutation { deleteIssue(input: {issueId: \"I_1\"}) { clientMutationId } }"}),
            403,
            "policy_violation",
            "no contract allows GraphQL field mutation.deleteIssue on api.github.com/graphql",
        ),
        (
            "a mutation hidden in a fragment",
            json!({"query": "mutation { ...F } fragment F on Mutation { deleteIssue(input: {issueId: \"I_1\"}) { clientMutationId } }"}),
            403,
            "policy_violation",
            "mutation.deleteIssue",
        ),
        (
            "an alias calling a mutation twice",
            json!({"query": format!("mutation {{ a: {} b: {} }}", issue("a"), issue("b"))}),
            403,
            "policy_violation",
            "createIssue",
        ),
        (
            "two operations without operationName",
            json!({"query": "query A { viewer { login } } query B { viewer { id } }"}),
            422,
            "validation_error",
            "operationName",
        ),
        (
            "an operationName that names no operation",
            json!({"query": "query A { viewer { login } }", "operationName": "B"}),
            422,
            "validation_error",
            "\"B\"",
        ),
        (
            "introspection",
            json!({"query": "{ __schema { types { name } } }"}),
            403,
            "policy_violation",
            "__schema",
        ),
        (
            "depth 20",
            json!({"query": deep}),
            403,
            "policy_violation",
            "viewer",
        ),
        (
            "a variable of the wrong type",
            json!({"query": "query R($owner: String!) { repository(owner: $owner, name: \"widgets\") { id } }", "variables": {"owner": 7}}),
            422,
            "validation_error",
            "$owner",
        ),
        (
            "an input variable that is not an object",
            json!({"query": "mutation M($input: CreateIssueInput!) { createIssue(input: $input) { issue { id } } }", "variables": {"input": "R_1"}}),
            422,
            "validation_error",
            "$input",
        ),
        (
            "an unknown argument",
            json!({"query": "{ repository(owner: \"acme\", name: \"widgets\", evil: true) { id } }"}),
            422,
            "validation_error",
            "evil",
        ),
        (
            "an unknown input field, through variables",
            json!({"query": "mutation M($input: CreateIssueInput!) { createIssue(input: $input) { issue { id } } }", "variables": {"input": {"repositoryId": "R_1", "title": "t", "bogus": "x"}}}),
            422,
            "validation_error",
            "bogus",
        ),
        (
            "an argument a rule forbids (another organisation)",
            json!({"query": "{ repository(owner: \"evilcorp\", name: \"secrets\") { id } }"}),
            403,
            "policy_violation",
            "organisation",
        ),
        (
            "a subscription",
            json!({"query": "subscription { issueCreated { id } }"}),
            403,
            "policy_violation",
            "subscription",
        ),
        (
            "an approve-mode field beside another field",
            json!({"query": "mutation { deleteRef(input: {refId: \"REF_1\"}) { clientMutationId } addComment(input: {subjectId: \"I_1\", body: \"x\"}) { clientMutationId } }"}),
            403,
            "policy_violation",
            "deleteRef",
        ),
        (
            "a document that does not parse",
            json!({"query": "mutation { createIssue(input: {"}),
            422,
            "validation_error",
            "GraphQL",
        ),
    ];
    let mut failed = Vec::new();
    for (what, body, status, code, needle) in cases {
        let got = post(&client, body).await;
        if let Err(why) = graphql_refusal(&got, status, code, needle) {
            failed.push(format!("{what}: {why}"));
        }
    }
    // A mutation as GET query=: GraphQL over HTTP allows only queries there.
    let got = get(&client, &format!("mutation {{ {} }}", issue("over GET"))).await;
    if let Err(why) = graphql_refusal(&got, 403, "policy_violation", "GET") {
        failed.push(format!("a mutation over GET: {why}"));
    }
    assert!(
        failed.is_empty(),
        "refused otherwise than expected:\n{}",
        failed.join("\n")
    );
    assert!(
        fake.seen().is_empty(),
        "nothing reached the upstream: {}",
        fake.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_graphql_mutation_answers_423_in_graphql_shape_with_its_proposal() {
    let (_pki, fake, gate) = gate_and_fake().await;
    let client = staging(&gate);
    let body = json!({"query": "mutation { mergePullRequest(input: {pullRequestId: \"PR_7\"}) { pullRequest { merged } } }"});
    let got = post(&client, body).await;
    let error = refused_as_graphql(&got, 423, "approval_pending", "");
    let id = pending_proposal(gate.admin_addr, "PR_7").await;
    assert_eq!(
        error["extensions"]["proposal"],
        id.as_str(),
        "{}",
        got.text()
    );
    assert_eq!(
        error["extensions"]["tool"],
        "github.graphql.mergePullRequest"
    );
    assert!(fake.seen().is_empty(), "{}", fake.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_refusal_arrives_as_a_graphql_errors_body() {
    let (_pki, fake, gate) = gate_and_fake().await;
    let client = gate.client(Some(STAGING), Version::HTTP_2);
    let body = json!({"query": "mutation { deleteIssue(input: {issueId: \"I_1\"}) { clientMutationId } }"});
    let got = send(&client, "POST", GRAPHQL, &[JSON], body.to_string())
        .await
        .expect("an answer, not a reset stream");
    assert_eq!(got.version, Version::HTTP_2);
    refused_as_graphql(&got, 403, "policy_violation", "mutation.deleteIssue");
    // The connection still serves: a query on it goes through.
    let got = post(&client, json!({"query": "{ viewer { login } }"})).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.version, Version::HTTP_2);
    assert_eq!(fake.calls("mutation.deleteIssue"), 0, "{}", fake.log());
    assert_eq!(fake.seen().len(), 1, "{}", fake.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn octokit_graphql_queries_and_mutates_through_toolgate() {
    let graphql = sdk_dir().join("node_modules/@octokit/graphql");
    if !graphql.exists()
        && skip(
            "graphql::octokit_graphql",
            "@octokit/graphql is not installed in tests/sdk/node_modules",
            skips::SDKS,
        )
    {
        return;
    }
    let (_pki, fake, gate) = gate_and_fake().await;
    let mut node = tokio::process::Command::new("node");
    node.arg(sdk_dir().join("graphql_agent.mjs"))
        .current_dir(sdk_dir())
        .env(
            "TOOLGATE_PROXY",
            format!("http://{}:{}@{}", STAGING.0, STAGING.1, gate.addr),
        )
        .env("NODE_EXTRA_CA_CERTS", gate.ca_path())
        .env("SDK_RUN", format!("r{}", std::process::id()))
        .kill_on_drop(true);
    let steps = run_agent(node).await;
    let sdk = "octokit-graphql";
    assert_eq!(ok(&steps, sdk, "query"), "acme/widgets");
    assert_eq!(ok(&steps, sdk, "mutation"), 42);
    let refused = find(&steps, sdk, "refused_mutation");
    assert_eq!(refused["ok"], false, "{refused}");
    assert!(
        refused["detail"]
            .as_str()
            .is_some_and(|d| d.contains("no contract allows GraphQL field mutation.deleteIssue")),
        "Octokit surfaces toolgate's message: {refused}"
    );
    assert_eq!(fake.calls("query.repository"), 1, "{}", fake.log());
    assert_eq!(fake.calls("mutation.createIssue"), 1, "{}", fake.log());
    assert_eq!(fake.calls("mutation.deleteIssue"), 0, "{}", fake.log());
    let sent = fake.body_of("mutation.createIssue");
    assert_eq!(sent["variables"]["input"]["repositoryId"], "R_1", "{sent}");
    all_with_the_real_key(&fake);
}

/// The fake itself, straight (no toolgate): it runs the operation named, expands fragments,
/// answers under aliases, reads variables, and turns away any key but the real one.
#[tokio::test]
async fn the_fake_answers_the_fields_a_document_selects() {
    let pki = Pki::new("test upstream CA");
    let fake = GhFake::start(&pki).await;
    let ca = std::fs::read_to_string(&pki.ca_path).unwrap();
    let ask = |auth: String, body: Value| {
        let ca = ca.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect(fake.addr).await.unwrap();
            let tls = tls_over(tcp, "api.github.com", &ca, &[b"http/1.1"])
                .await
                .unwrap();
            let req = http::Request::post("/graphql")
                .header("host", "api.github.com")
                .header("authorization", auth)
                .body(http_body_util::Full::new(bytes::Bytes::from(
                    body.to_string(),
                )))
                .unwrap();
            http1_over(tls, req).await
        }
    };
    let doc = "fragment repo on Repository { id owner { login } }
        query Other { viewer { login } }
        query RepositoryInfo($owner: String!, $name: String!) {
          r: repository(owner: $owner, name: $name) { ...repo parent { ...repo } ... on Repository { hasIssuesEnabled } }
        }";
    let body = json!({"query": doc, "variables": {"owner": "acme", "name": "widgets"}, "operationName": "RepositoryInfo"});
    let got = ask(real_authorization(), body.clone()).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(
        got.json(),
        json!({"data": {"r": {"id": "R_1", "owner": {"login": "acme"}, "parent": null, "hasIssuesEnabled": true}}})
    );
    let got = ask(format!("Bearer {PLACEHOLDER}"), body).await;
    assert_eq!(got.status, 401, "{}", got.text());
    let seen = fake.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].fields, ["query.repository"]);
    assert_eq!(
        fake.calls("query.repository"),
        1,
        "a refused key runs nothing"
    );
}
