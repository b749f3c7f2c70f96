//! GraphQL endpoints through the proxy, with the example contracts of
//! `policies/github-graphql.toml`. Until the GraphQL adapter is routed, a request to a contracted
//! GraphQL endpoint is refused as uncontracted and never forwarded unchecked.

use crate::support::*;
use serde_json::json;

const GRAPHQL: &str = "https://api.github.com/graphql";

#[tokio::test]
async fn a_contracted_graphql_endpoint_is_refused_whole_until_its_adapter_reads_it() {
    let (_pki, upstream, gate) = GateBuilder::examples().with_upstream().await;
    let client = staging(&gate);
    let query = json!({"query": "{ viewer { login } }"}).to_string();
    let mutation = json!({
        "query": "mutation { deleteRef(input: {refId: \"REF_1\"}) { clientMutationId } }"
    })
    .to_string();
    for body in [query, mutation] {
        let got = send(&client, "POST", GRAPHQL, &[JSON], body).await.unwrap();
        assert_eq!(
            got.status.as_u16(),
            403,
            "{}",
            String::from_utf8_lossy(&got.body)
        );
        assert_eq!(got.code(), "policy_violation");
    }
    let url = format!("{GRAPHQL}?query=%7Bviewer%7Blogin%7D%7D");
    let got = send(&client, "GET", &url, &[], "").await.unwrap();
    assert_eq!(got.code(), "policy_violation");
    assert_eq!(upstream.count(), 0, "nothing reached the upstream");
}
