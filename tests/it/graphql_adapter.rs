//! The GraphQL adapter over real sockets, with the generic recording upstream: what passes,
//! what is written once, what is held, and that refusals reach the client in GraphQL's shape
//! with nothing sent.

use crate::support::*;
use serde_json::{json, Value};

const GRAPHQL: &str = "https://api.github.com/graphql";

fn body(query: &str, variables: Value) -> String {
    json!({"query": query, "variables": variables}).to_string()
}

fn errors_code(got: &Answer) -> String {
    got.json()["errors"][0]["extensions"]["code"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

#[tokio::test]
async fn a_query_of_allowed_fields_is_read_with_the_real_credential() {
    let (_pki, upstream, gate) = GateBuilder::examples().with_upstream().await;
    let client = staging(&gate);
    let q = body(
        "query Q($o: String!) { viewer { login } repo: repository(owner: $o, name: \"widgets\") { id } }",
        json!({"o": "acme"}),
    );
    let got = send(
        &client,
        "POST",
        GRAPHQL,
        &[JSON, ("authorization", "bearer agents-own-token")],
        q,
    )
    .await
    .unwrap();
    assert_eq!(
        got.status.as_u16(),
        200,
        "{}",
        String::from_utf8_lossy(&got.body)
    );
    let seen = upstream.received();
    assert_eq!(seen.len(), 1);
    let auth = seen[0].headers["authorization"].to_str().unwrap();
    assert_eq!(
        auth, "Bearer toolgate-demo-github-placeholder",
        "the real credential, never the agent's"
    );
}

#[tokio::test]
async fn refusals_arrive_as_graphql_errors_and_nothing_is_sent() {
    let (_pki, upstream, gate) = GateBuilder::examples().with_upstream().await;
    let client = staging(&gate);
    let cases: Vec<(&str, Value, &str, &str)> = vec![
        ("mutation { deleteIssue(input: {issueId: \"I_1\"}) { clientMutationId } }", json!({}), "policy_violation", "mutation.deleteIssue"),
        ("query { repository(owner: \"evil\", name: \"x\") { id } }", json!({}), "policy_violation", "organisation"),
        ("mutation { a: createIssue(input: {repositoryId: \"R\", title: \"x\"}) { clientMutationId } b: createIssue(input: {repositoryId: \"R\", title: \"y\"}) { clientMutationId } }", json!({}), "policy_violation", "createIssue"),
        ("mutation { deleteRef(input: {refId: \"R\"}) { clientMutationId } createIssue(input: {repositoryId: \"R\", title: \"x\"}) { clientMutationId } }", json!({}), "policy_violation", "alone"),
        ("mutation M($i: CreateIssueInput!) { createIssue(input: $i) { clientMutationId } }", json!({"i": {"repositoryId": "R", "title": "x", "bogus": 1}}), "validation_error", "createIssue"),
    ];
    for (query, vars, code, says) in cases {
        let got = send(&client, "POST", GRAPHQL, &[JSON], body(query, vars))
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&got.body).to_string();
        assert_eq!(errors_code(&got), code, "{query}: {text}");
        assert!(text.contains(says), "{query}: {text}");
        assert!(
            got.json()["errors"][0]["extensions"]["request_id"].is_string(),
            "{text}"
        );
    }
    assert_eq!(upstream.count(), 0, "nothing reached the upstream");
}

#[tokio::test]
async fn an_auto_mutation_is_written_once_by_field_and_arguments() {
    let (_pki, upstream, gate) = GateBuilder::examples().with_upstream().await;
    let client = staging(&gate);
    let inline = body(
        "mutation { createIssue(input: {repositoryId: \"R_1\", title: \"Bug\"}) { issue { number } } }",
        json!({}),
    );
    let through_vars = body(
        "mutation Create($input: CreateIssueInput!) { created: createIssue(input: $input) { clientMutationId } }",
        json!({"input": {"repositoryId": "R_1", "title": "Bug"}}),
    );
    let first = send(&client, "POST", GRAPHQL, &[JSON], inline)
        .await
        .unwrap();
    assert_eq!(
        first.status.as_u16(),
        200,
        "{}",
        String::from_utf8_lossy(&first.body)
    );
    let again = send(&client, "POST", GRAPHQL, &[JSON], through_vars)
        .await
        .unwrap();
    assert_eq!(
        again.status.as_u16(),
        200,
        "{}",
        String::from_utf8_lossy(&again.body)
    );
    assert_eq!(
        again
            .headers
            .get("toolgate-replayed")
            .map(|v| v.to_str().unwrap()),
        Some("true")
    );
    assert_eq!(upstream.count(), 1, "the same mutation ran once");
}

#[tokio::test]
async fn an_approve_mode_mutation_is_held_then_sent_once_when_approved() {
    let (_pki, upstream, gate) = GateBuilder::examples().with_upstream().await;
    let client = staging(&gate);
    let q = body(
        "mutation { deleteRef(input: {refId: \"REF_1\"}) { clientMutationId } }",
        json!({}),
    );
    let got = send(&client, "POST", GRAPHQL, &[JSON], q.clone())
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&got.body).to_string();
    assert_eq!(errors_code(&got), "approval_pending", "{text}");
    let proposal = got.json()["errors"][0]["extensions"]["proposal"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(upstream.count(), 0, "nothing is sent while it is held");
    assert_eq!(pending_proposal(gate.admin_addr, "REF_1").await, proposal);
    // The approver reads the field, its arguments and the document.
    let cookie = gate.sign_in("demo-dave-token").await;
    let page = gate
        .page(
            "GET",
            &format!("/proposals/{proposal}"),
            Some(&cookie),
            None,
        )
        .await
        .text();
    assert!(page.contains("mutation.deleteRef"), "{page}");
    assert!(
        page.contains("&quot;refId&quot;: &quot;REF_1&quot;"),
        "{page}"
    );
    assert!(page.contains("GraphQL document"), "{page}");
    let path = format!("/api/proposals/{proposal}/approve");
    let approved = gate
        .admin(
            "POST",
            &path,
            Some("demo-dave-token"),
            Some(json!({"comment": "ok"})),
        )
        .await;
    assert_eq!(approved.status, 200, "{}", approved.text());
    // send = "on_retry": the agent's retry of the same document sends it, once.
    let sent = send(&client, "POST", GRAPHQL, &[JSON], q.clone())
        .await
        .unwrap();
    assert_eq!(
        sent.status.as_u16(),
        200,
        "{}",
        String::from_utf8_lossy(&sent.body)
    );
    let again = send(&client, "POST", GRAPHQL, &[JSON], q).await.unwrap();
    assert_eq!(
        again.status.as_u16(),
        200,
        "{}",
        String::from_utf8_lossy(&again.body)
    );
    let seen = upstream.received();
    assert_eq!(seen.len(), 1, "the approved mutation ran once");
    assert!(String::from_utf8_lossy(&seen[0].body).contains("deleteRef"));
}

#[tokio::test]
async fn over_http2_a_refusal_is_a_graphql_answer_and_a_get_query_is_read() {
    let (_pki, upstream, gate) = GateBuilder::examples().with_upstream().await;
    let client = gate.client(
        Some(("support-bot-staging", "demo-staging-token")),
        http::Version::HTTP_2,
    );
    let refused = body("subscription { issueEvents { id } }", json!({}));
    let got = send(&client, "POST", GRAPHQL, &[JSON], refused)
        .await
        .unwrap();
    assert_eq!(got.version, http::Version::HTTP_2);
    assert_eq!(got.status.as_u16(), 403);
    assert_eq!(errors_code(&got), "policy_violation");
    let mutation_get = format!(
        "{GRAPHQL}?query={}",
        "mutation%20%7B%20createIssue(input%3A%20%7BrepositoryId%3A%20%22R%22%2C%20title%3A%20%22x%22%7D)%20%7B%20clientMutationId%20%7D%20%7D"
    );
    let got = send(&client, "GET", &mutation_get, &[], "").await.unwrap();
    assert_eq!(
        errors_code(&got),
        "policy_violation",
        "{}",
        String::from_utf8_lossy(&got.body)
    );
    assert_eq!(upstream.count(), 0, "nothing reached the upstream");
    let read = send(
        &client,
        "GET",
        &format!("{GRAPHQL}?query=%7Bviewer%7Blogin%7D%7D"),
        &[],
        "",
    )
    .await
    .unwrap();
    assert_eq!(
        read.status.as_u16(),
        200,
        "{}",
        String::from_utf8_lossy(&read.body)
    );
    assert_eq!(upstream.count(), 1);
}

#[tokio::test]
async fn a_dry_run_answers_what_would_be_sent_in_graphql_shape() {
    let (_pki, upstream, gate) = GateBuilder::examples().with_upstream().await;
    let client = staging(&gate);
    let q = body(
        "mutation { createIssue(input: {repositoryId: \"R_1\", title: \"Bug\"}) { clientMutationId } }",
        json!({}),
    );
    let got = send(
        &client,
        "POST",
        GRAPHQL,
        &[JSON, ("toolgate-dry-run", "true")],
        q,
    )
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&got.body).to_string();
    assert_eq!(got.status.as_u16(), 200, "{text}");
    assert_eq!(errors_code(&got), "dry_run", "{text}");
    assert!(text.contains("mutation.createIssue"), "{text}");
    assert!(got.json()["data"].is_null(), "{text}");
    assert_eq!(upstream.count(), 0, "nothing was sent");
}

#[tokio::test]
async fn what_a_server_could_read_differently_is_refused_and_nothing_is_sent() {
    let hide = r#"
[[tool]]
name = "github.graphql.user"
host = "api.github.com"
path = "/graphql"
graphql = "query.user"
arguments = "user-args.json"
credential = { staging = "github" }
response = { hide = ["/data/user/email"] }
"#;
    let (_pki, upstream, gate) = GateBuilder::examples()
        .policy("user.toml", hide)
        .policy(
            "user-args.json",
            r#"{"type": "object", "properties": {"login": {"type": "string"}}}"#,
        )
        .with_upstream()
        .await;
    let client = staging(&gate);
    let mutation = body(
        "mutation { createIssue(input: {repositoryId: \"R\", title: \"x\"}) { clientMutationId } }",
        json!({}),
    );
    let deletes = "mutation%7BdeleteRef(input%3A%7BrefId%3A%22R%22%7D)%7BclientMutationId%7D%7D";
    let cases = [
        // A POST whose URL carries another document.
        (
            "POST",
            format!("{GRAPHQL}?query={deletes}"),
            mutation.clone(),
        ),
        // A GET with a body beside its query string.
        (
            "GET",
            format!("{GRAPHQL}?query=%7Bviewer%7Blogin%7D%7D"),
            mutation,
        ),
        // A raw ';', which some servers split parameters on.
        (
            "GET",
            format!("{GRAPHQL}?query=%7Bviewer%7Blogin%7D%7D%23;query={deletes}"),
            String::new(),
        ),
        // An alias below a field whose contract hides part of its answer.
        (
            "POST",
            GRAPHQL.to_string(),
            body(
                "{ user(login: \"x\") { ... on User { m: email } } }",
                json!({}),
            ),
        ),
    ];
    for (method, url, sent) in cases {
        let got = send(&client, method, &url, &[JSON], sent).await.unwrap();
        let text = String::from_utf8_lossy(&got.body).to_string();
        assert!(
            matches!(
                errors_code(&got).as_str(),
                "validation_error" | "policy_violation"
            ),
            "{method} {url}: {text}"
        );
    }
    assert_eq!(upstream.count(), 0, "nothing reached the upstream");
    // Without the alias, the field is read and its hidden field removed.
    let read = body("{ user(login: \"x\") { email login } }", json!({}));
    let got = send(&client, "POST", GRAPHQL, &[JSON], read).await.unwrap();
    assert_eq!(
        got.status.as_u16(),
        200,
        "{}",
        String::from_utf8_lossy(&got.body)
    );
    assert_eq!(upstream.count(), 1);
}
