//! The policy set as a whole: loading, matching, and the load-time errors.

use super::*;
use crate::base::split_host_port;

fn build(toml_text: &str) -> Result<Policy, PolicyError> {
    let file: PolicyFile = toml::from_str(toml_text).map_err(|e| PolicyError {
        path: "t.toml".into(),
        message: e.to_string(),
    })?;
    Policy::build(vec![("t.toml".into(), file)], &|v| {
        (v == "TOKEN").then(|| "secret".to_string())
    })
}

/// An MCP tool on mcp.example.com/mcp (`extra` lines added), its schema in a temp file.
fn mcp_tool(name: &str, mcp: &str, extra: &str, schema: &std::path::Path) -> String {
    format!(
            "[[tool]]\nname = \"{name}\"\nhost = \"mcp.example.com\"\npath = \"/mcp\"\nmcp_tool = \"{mcp}\"\narguments = \"{}\"\n{extra}\n",
            schema.display()
        )
}

/// A temp dir holding an MCP tool's argument schema, and the schema's path.
fn mcp_schema() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let schema = dir.path().join("args.json");
    std::fs::write(
        &schema,
        r#"{"type": "object", "properties": {"id": {"type": "string"}}}"#,
    )
    .unwrap();
    (dir, schema)
}

#[test]
fn mcp_tools_share_an_endpoint_and_are_checked_at_load() {
    let (_dir, schema) = mcp_schema();
    let two = format!(
        "{BASE}{}{}",
        mcp_tool("t.get", "get", "side_effects = \"none\"", &schema),
        mcp_tool(
            "t.create",
            "create",
            "side_effects = \"reversible\"\nidempotency = \"payload\"",
            &schema
        )
    );
    let p = build(&two).unwrap();
    let served = p.mcp_endpoint("mcp.example.com", 443, "/mcp");
    assert_eq!(served.len(), 2);
    assert!(served.iter().all(|t| t.method == http::Method::POST));
    assert!(p.mcp_endpoint("mcp.example.com", 443, "/other").is_empty());
    // MCP tools are never matched by method and path alone.
    assert!(p
        .match_tool("mcp.example.com", 443, &http::Method::POST, "/mcp")
        .is_none());

    let refused = |extra: &str, why: &str| {
        let text = format!("{BASE}{}", mcp_tool("t.x", "x", extra, &schema));
        let err = build(&text).unwrap_err().to_string();
        assert!(err.contains(why), "{extra}: {err}");
    };
    refused(
        "side_effects = \"reversible\"\nidempotency = \"key\"",
        "no Idempotency-Key",
    );
    refused("side_effects = \"none\"\nmethod = \"GET\"", "POST");
    refused(
        "side_effects = \"none\"\nbody = { format = \"json\" }",
        "not a body",
    );
    refused(
        "side_effects = \"none\"\npin = \"sha256:abc\"",
        "sha256:<64 hex>",
    );
    refused(
            "side_effects = \"reversible\"\nidempotency = \"payload\"\nrollback = { method = \"POST\", path = \"/mcp\" }",
            "rollback = { none",
        );
    // An MCP tool hides fields of its structured output, which toolgate finds in every
    // copy of the answer; a field anywhere else it could not.
    for elsewhere in [
        "/email",
        "/result/content/0/text",
        "/result/structuredContent",
        "/result/structuredContent/",
    ] {
        refused(
            &format!("side_effects = \"none\"\nresponse = {{ hide = [\"{elsewhere}\"] }}"),
            "/result/structuredContent/FIELD",
        );
    }
    let hides = format!(
        "{BASE}{}",
        mcp_tool(
            "t.h",
            "h",
            "side_effects = \"none\"\nresponse = { hide = [\"/result/structuredContent/email\"] }",
            &schema
        )
    );
    let policy = build(&hides).unwrap();
    assert!(policy.tool("t.h").unwrap().response.as_ref().unwrap().mcp);
    let no_args = format!(
            "{BASE}[[tool]]\nname = \"t.y\"\nhost = \"mcp.example.com\"\npath = \"/mcp\"\nmcp_tool = \"y\"\nside_effects = \"none\"\n"
        );
    assert!(build(&no_args)
        .unwrap_err()
        .to_string()
        .contains("needs arguments"));
}

#[test]
fn an_mcp_endpoint_is_shared_by_distinct_mcp_tools_only() {
    let (_dir, schema) = mcp_schema();
    // The same MCP tool contracted twice on one endpoint, or an HTTP tool on the endpoint.
    let twice = format!(
        "{BASE}{}{}",
        mcp_tool("t.a", "same", "side_effects = \"none\"", &schema),
        mcp_tool("t.b", "same", "side_effects = \"none\"", &schema)
    );
    assert!(build(&twice)
        .unwrap_err()
        .to_string()
        .contains("both contract MCP tool"));
    let http_too = format!(
            "{BASE}{}[[tool]]\nname = \"t.http\"\nhost = \"mcp.example.com\"\nmethod = \"POST\"\npath = \"/mcp\"\nside_effects = \"none\"\n",
            mcp_tool("t.a", "a", "side_effects = \"none\"", &schema)
        );
    assert!(build(&http_too)
        .unwrap_err()
        .to_string()
        .contains("could match the same request"));
}

const BASE: &str = r#"
[[agent]]
id = "bot"
token_env = "TOKEN"
owner = "alice@example.com"
environment = "staging"
tools = ["stripe.*"]

[[tool]]
name = "stripe.customers.retrieve"
host = "api.stripe.com"
method = "GET"
path = "/v1/customers/{customer}"
"#;

#[test]
fn agents_are_known_by_source_networks_that_never_overlap() {
    let agents = |a: &str, b: &str| {
        format!(
                "{BASE}\n[[agent]]\nid = \"t1\"\nowner = \"o\"\nenvironment = \"staging\"\nsources = [{a}]\n\n\
                 [[agent]]\nid = \"t2\"\nowner = \"o\"\nenvironment = \"staging\"\nsources = [{b}]\n"
            )
    };
    let p = build(&agents(r#""10.0.3.0/28""#, r#""fd00::5/128", "10.0.4.7""#)).unwrap();
    let who = |ip: &str| {
        p.agent_for_source(ip.parse().unwrap())
            .map(|a| a.id.clone())
    };
    assert_eq!(who("10.0.3.9").as_deref(), Some("t1"));
    assert_eq!(who("::ffff:10.0.3.9").as_deref(), Some("t1"));
    assert_eq!(who("10.0.4.7").as_deref(), Some("t2"));
    assert_eq!(who("fd00::5").as_deref(), Some("t2"));
    assert_eq!(who("10.0.3.16"), None);
    // Known by source only: no token works on the proxy listener.
    assert!(p.authenticate("t1", "").is_none());
    let e = build(&agents(r#""10.0.3.0/24""#, r#""10.0.3.8/29""#)).unwrap_err();
    assert!(e.message.contains("overlaps"), "{}", e.message);
    let e = build(&agents(r#""10.0.3.1/24""#, r#""10.0.9.0/24""#)).unwrap_err();
    assert!(e.message.contains("host bits"), "{}", e.message);
    let e = build(&agents(r#""not-an-address""#, r#""10.0.9.0/24""#)).unwrap_err();
    assert!(e.message.contains("not an address"), "{}", e.message);
}

#[test]
fn authenticates_and_matches() {
    let p = build(BASE).unwrap();
    assert!(p.authenticate("bot", "secret").is_some());
    assert!(p.authenticate("bot", "wrong").is_none());
    assert!(p.authenticate("nobody", "secret").is_none());
    assert!(p.allows_host("API.STRIPE.COM", 443));
    assert!(!p.allows_host("api.stripe.com", 8443));
    let m = p
        .match_tool(
            "api.stripe.com",
            443,
            &http::Method::GET,
            "/v1/customers/cus_1",
        )
        .unwrap();
    assert_eq!(m.params["customer"], "cus_1");
    assert!(p
        .match_tool(
            "api.stripe.com",
            443,
            &http::Method::DELETE,
            "/v1/customers/cus_1"
        )
        .is_none());
}

#[test]
fn unknown_keys_name_the_line() {
    let e = build(&format!("{BASE}\nsurprise = 1\n")).unwrap_err();
    assert!(e.message.contains("surprise"), "{e}");
    assert!(e.message.contains("line"), "{e}");
}

#[test]
fn a_literal_segment_wins_and_only_true_duplicates_are_a_load_error() {
    let tool = |name: &str, path: &str| {
        format!("\n[[tool]]\nname = \"{name}\"\nhost = \"api.stripe.com\"\nmethod = \"GET\"\npath = \"{path}\"\n")
    };
    let text = format!(
        "{BASE}{}",
        tool("stripe.customers.search", "/v1/customers/search")
    );
    let p = build(&text).unwrap();
    let name = |host: &str, path: &str| {
        p.match_tool(host, 443, &http::Method::GET, path)
            .map(|m| (m.tool.name.clone(), m.params))
    };
    let (n, params) = name("api.stripe.com", "/v1/customers/search").unwrap();
    assert_eq!((n.as_str(), params.len()), ("stripe.customers.search", 0));
    let (n, params) = name("API.Stripe.com", "/v1/customers/cus_1").unwrap();
    assert_eq!(n, "stripe.customers.retrieve");
    assert_eq!(params["customer"], "cus_1");
    assert!(name("api.stripe.com", "/v1/customers").is_none());
    assert!(p
        .match_tool(
            "api.stripe.com",
            443,
            &http::Method::POST,
            "/v1/customers/search"
        )
        .is_none());
    // The same shape under other parameter names matches the very same requests.
    let text = format!(
        "{BASE}{}",
        tool("stripe.customers.get", "/v1/customers/{id}")
    );
    let e = build(&text).unwrap_err();
    assert!(e.message.contains("match the same requests"), "{e}");
    assert!(
        e.message.contains("stripe.customers.retrieve")
            && e.message.contains("stripe.customers.get"),
        "{e}"
    );
    let e = build(&format!(
        "{BASE}{}",
        tool("stripe.customers.retrieve", "/x")
    ))
    .unwrap_err();
    assert!(e.message.contains("defined twice"), "{e}");
    // Typed path parameters: only parameters of the path, each a schema written as a table.
    let typed = |extra: &str| {
        format!(
            "{BASE}{}{extra}\n",
            tool("stripe.customers.search", "/v1/customers/search/{page}")
        )
    };
    assert!(build(&typed("path_params = { page = { type = \"integer\" } }")).is_ok());
    let e = build(&typed("path_params = { nope = { type = \"integer\" } }")).unwrap_err();
    assert!(
        e.message.contains("{nope}, which is not a parameter"),
        "{e}"
    );
    let e = build(&typed("path_params = { page = \"integer\" }")).unwrap_err();
    assert!(
        e.message
            .contains("must be a JSON Schema written as a table"),
        "{e}"
    );
}

#[test]
fn missing_token_env_names_the_variable() {
    let e = build(&BASE.replace("token_env = \"TOKEN\"", "token_env = \"NOPE\"")).unwrap_err();
    assert!(e.message.contains("NOPE"), "{e}");
}

#[test]
fn credentials_resolve_per_environment_and_never_print_the_secret() {
    let text = format!(
            "{BASE}\ncredential = {{ staging = \"c\" }}\n\n[[credential]]\nname = \"c\"\nenv = \"TOKEN\"\nheader = \"X-Key\"\nformat = \"Token {{secret}}\"\n"
        );
    let p = build(&text).unwrap();
    let tool = &p.tools()[0];
    let cred = &tool.credentials["staging"];
    assert_eq!(cred.header_value(), "Token secret");
    assert!(cred.header_value().is_sensitive());
    assert!(!format!("{:?}", p).contains("Token secret"));
    let missing = BASE.to_string() + "credential = { staging = \"nope\" }\n";
    assert!(build(&missing).unwrap_err().message.contains("\"nope\""));
}

#[test]
fn globs() {
    assert!(glob_match("*", "stripe.refunds.create"));
    assert!(glob_match("stripe.*", "stripe.refunds.create"));
    assert!(glob_match("*.create", "stripe.refunds.create"));
    assert!(glob_match("stripe.*.create", "stripe.refunds.create"));
    assert!(!glob_match("stripe.*", "github.repos.get"));
    assert!(!glob_match(
        "stripe.customers.create",
        "stripe.customers.created"
    ));
    assert!(!glob_match("a*a", "a"));
}

#[test]
fn host_port_splitting() {
    assert_eq!(split_host_port("a.b", 443), Some(("a.b".into(), 443)));
    assert_eq!(split_host_port("A.b:8443", 443), Some(("a.b".into(), 8443)));
    assert_eq!(split_host_port("[::1]:9", 443), Some(("::1".into(), 9)));
    assert_eq!(split_host_port("[::1]", 443), Some(("::1".into(), 443)));
    assert_eq!(split_host_port("a:b", 443), None);
}

#[test]
fn agent_bindings_render_or_refuse() {
    let agent = Agent {
        id: "bot".into(),
        token_sha256: None,
        owner: "o".into(),
        tenant: Some("acme".into()),
        environment: "staging".into(),
        tools: vec![],
        attrs: [("github_org".to_string(), "acme".to_string())].into(),
        dry_run: false,
        sources: vec![],
        token_issuers: vec![],
        static_token: true,
        granted: vec![],
        users: Default::default(),
        user: None,
    };
    assert_eq!(
        agent.render_binding("{agent.attrs.github_org}").as_deref(),
        Some("acme")
    );
    assert_eq!(
        agent.render_binding("t-{agent.tenant}").as_deref(),
        Some("t-acme")
    );
    assert_eq!(agent.render_binding("{agent.attrs.nope}"), None);
}

/// A GraphQL field's contract on api.github.com/graphql (`extra` lines added).
fn graphql_tool(name: &str, field: &str, extra: &str) -> String {
    format!(
        "[[tool]]\nname = \"{name}\"\nhost = \"api.github.com\"\npath = \"/graphql\"\ngraphql = \"{field}\"\n{extra}\n"
    )
}

#[test]
fn graphql_fields_share_an_endpoint_and_are_checked_at_load() {
    let (_dir, schema) = mcp_schema();
    let args = format!("arguments = \"{}\"", schema.display());
    let mutation = format!("side_effects = \"reversible\"\nidempotency = \"payload\"\n{args}");
    let three = format!(
        "{BASE}{}{}{}",
        graphql_tool("gh.viewer", "query.viewer", ""),
        graphql_tool("gh.repository", "query.repository", &args),
        graphql_tool("gh.createIssue", "mutation.createIssue", &mutation),
    );
    let p = build(&three).unwrap();
    let served = p.graphql_endpoint("api.github.com", 443, "/graphql");
    assert_eq!(served.len(), 3);
    let viewer = p.tool("gh.viewer").unwrap();
    let spec = viewer.graphql.as_ref().unwrap();
    assert_eq!(spec.label(), "query.viewer");
    assert_eq!(viewer.side_effects, SideEffects::None);
    assert_eq!(viewer.method, http::Method::POST);
    // A field declared without arguments takes none.
    assert!(spec.arguments.check(&serde_json::json!({})).is_ok());
    assert!(spec.arguments.check(&serde_json::json!({"x": 1})).is_err());
    let create = p.tool("gh.createIssue").unwrap().graphql.as_ref().unwrap();
    assert_eq!(create.operation, crate::graphql::OperationType::Mutation);
    assert_eq!(create.field, "createIssue");
    assert!(create
        .arguments
        .check(&serde_json::json!({"id": "x"}))
        .is_ok());
    assert!(create
        .arguments
        .check(&serde_json::json!({"other": "x"}))
        .is_err());
    // GraphQL fields are never matched by method and path alone, nor listed as MCP tools.
    assert!(p
        .match_tool("api.github.com", 443, &http::Method::POST, "/graphql")
        .is_none());
    assert!(p.mcp_endpoint("api.github.com", 443, "/graphql").is_empty());
    assert!(p
        .graphql_endpoint("api.github.com", 443, "/other")
        .is_empty());
    assert!(p.allows_host("api.github.com", 443));
}

#[test]
fn graphql_contracts_that_cannot_hold_are_refused_at_load() {
    let (_dir, schema) = mcp_schema();
    let refused = |field: &str, extra: &str, why: &str| {
        let text = format!("{BASE}{}", graphql_tool("gh.x", field, extra));
        let err = build(&text).unwrap_err().to_string();
        assert!(err.contains(why), "{field} {extra}: {err}");
    };
    refused("createIssue", "", "not OPERATION.FIELD");
    refused("muta.createIssue", "", "unknown operation type \"muta\"");
    refused(
        "subscription.issueEvents",
        "",
        "subscriptions cannot be contracted",
    );
    refused("mutation.create-issue", "", "not a GraphQL field name");
    refused("mutation.1x", "", "not a GraphQL field name");
    refused("query.", "", "not a GraphQL field name");
    refused("mutation.__schema", "", "only query.__schema");
    refused("query.__typename", "", "only query.__schema");
    refused("mutation.createIssue", "", "side_effects");
    refused(
        "query.viewer",
        "response = { hide = [\"/data/viewerX/email\"] }",
        "start at its own answer, /data/viewer",
    );
    refused(
        "query.viewer",
        "response = { keep = [\"/login\"] }",
        "start at its own answer",
    );
    refused("query.viewer", "method = \"PUT\"", "remove method \"PUT\"");
    refused("query.viewer", "mcp_tool = \"v\"", "not both");
    refused("query.viewer", "body = { format = \"json\" }", "not a body");
    refused(
        "query.viewer",
        "pin = \"sha256:00\"",
        "pin is for MCP tools",
    );
    refused(
        "mutation.createIssue",
        "side_effects = \"reversible\"\nidempotency = \"key\"",
        "no Idempotency-Key",
    );
    refused(
        "mutation.createIssue",
        "side_effects = \"reversible\"\nidempotency = \"payload\"\nrollback = { method = \"POST\", path = \"/graphql\" }",
        "rollback = { none",
    );
    refused(
        "query.viewer",
        "arguments = \"missing.json\"",
        "missing.json",
    );
    let templated = format!(
        "{BASE}[[tool]]\nname = \"gh.x\"\nhost = \"api.github.com\"\npath = \"/{{v}}/graphql\"\ngraphql = \"query.viewer\"\n"
    );
    assert!(build(&templated)
        .unwrap_err()
        .to_string()
        .contains("literal"));
    // Allowed: introspection by contract, POST named, arguments for a GraphQL field.
    let ok = format!(
        "{BASE}{}{}",
        graphql_tool("gh.schema", "query.__schema", "method = \"post\""),
        graphql_tool(
            "gh.repo",
            "query.repository",
            &format!("arguments = \"{}\"", schema.display())
        ),
    );
    assert!(build(&ok).is_ok());
}

#[test]
fn a_graphql_endpoint_holds_one_contract_per_field_and_no_http_contract() {
    let twice = format!(
        "{BASE}{}{}",
        graphql_tool("gh.a", "query.viewer", ""),
        graphql_tool("gh.b", "query.viewer", "")
    );
    let err = build(&twice).unwrap_err().to_string();
    assert!(
        err.contains("both contract GraphQL field query.viewer"),
        "{err}"
    );
    // The same name as a query and as a mutation are two fields.
    let both = format!(
        "{BASE}{}{}",
        graphql_tool("gh.a", "query.thing", ""),
        graphql_tool("gh.b", "mutation.thing", "side_effects = \"none\"")
    );
    assert!(build(&both).is_ok());
    // Another endpoint may contract the same field.
    let elsewhere = format!(
        "{BASE}{}[[tool]]\nname = \"gh.b\"\nhost = \"ghe.example.com\"\npath = \"/api/graphql\"\ngraphql = \"query.viewer\"\n",
        graphql_tool("gh.a", "query.viewer", ""),
    );
    assert!(build(&elsewhere).is_ok());
    // An HTTP contract on the endpoint, whatever its method (GraphQL reads GET too).
    for method in ["POST", "GET"] {
        let http_too = format!(
            "{BASE}{}[[tool]]\nname = \"gh.http\"\nhost = \"api.github.com\"\nmethod = \"{method}\"\npath = \"/graphql\"\nside_effects = \"none\"\n",
            graphql_tool("gh.a", "query.viewer", "")
        );
        let err = build(&http_too).unwrap_err().to_string();
        assert!(
            err.contains("could match the same request"),
            "{method}: {err}"
        );
    }
    // An MCP endpoint at the same path.
    let (_dir, schema) = mcp_schema();
    let mcp_too = format!(
        "{BASE}{}[[tool]]\nname = \"t.m\"\nhost = \"api.github.com\"\npath = \"/graphql\"\nmcp_tool = \"m\"\narguments = \"{}\"\nside_effects = \"none\"\n",
        graphql_tool("gh.a", "query.viewer", ""),
        schema.display()
    );
    assert!(build(&mcp_too)
        .unwrap_err()
        .to_string()
        .contains("could match the same request"));
}

#[test]
fn the_example_github_graphql_contracts_load_and_check_arguments() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let policy = Policy::load_dir(&dir).unwrap();
    let served = policy.graphql_endpoint("api.github.com", 443, "/graphql");
    let mut labels: Vec<String> = served
        .iter()
        .map(|t| t.graphql.as_ref().unwrap().label())
        .collect();
    labels.sort();
    assert_eq!(
        labels,
        [
            "mutation.addComment",
            "mutation.createIssue",
            "mutation.deleteRef",
            "mutation.mergePullRequest",
            "query.repository",
            "query.viewer"
        ]
    );
    let tool = |name: &str| policy.tool(name).unwrap().clone();
    let args = |name: &str| tool(name).graphql.as_ref().unwrap().arguments.clone();
    let create = args("github.graphql.createIssue");
    assert!(create
        .check(&serde_json::json!({"input": {"repositoryId": "R_kgDO", "title": "Bug", "body": null, "labelIds": ["LA_1"]}}))
        .is_ok());
    assert!(create
        .check(
            &serde_json::json!({"input": {"repositoryId": "R_kgDO", "title": "Bug", "draft": true}})
        )
        .is_err());
    assert!(create
        .check(&serde_json::json!({"input": {"title": "Bug"}}))
        .is_err());
    let merge = args("github.graphql.mergePullRequest");
    assert!(merge
        .check(&serde_json::json!({"input": {"pullRequestId": "PR_1", "mergeMethod": "SQUASH"}}))
        .is_ok());
    assert!(merge
        .check(&serde_json::json!({"input": {"pullRequestId": "PR_1", "mergeMethod": "FAST"}}))
        .is_err());
    let repo = args("github.graphql.repository");
    assert!(repo
        .check(&serde_json::json!({"owner": "acme", "name": "widgets"}))
        .is_ok());
    assert!(repo.check(&serde_json::json!({"owner": "acme"})).is_err());
    assert!(args("github.graphql.viewer")
        .check(&serde_json::json!({"login": "x"}))
        .is_err());
    assert_eq!(tool("github.graphql.mergePullRequest").mode, Mode::Approve);
    let delete = tool("github.graphql.deleteRef");
    assert_eq!(delete.mode, Mode::Approve);
    assert_eq!(delete.side_effects, SideEffects::Irreversible);
    assert_eq!(tool("github.graphql.createIssue").mode, Mode::Auto);
}

#[test]
fn graphql_endpoint_limits_are_declared_once_beside_their_fields() {
    let text = format!(
        "{BASE}{}[[graphql_endpoint]]\nhost = \"api.github.com\"\npath = \"/graphql\"\nmax_depth = 8\nmax_root_fields = 3\n",
        graphql_tool("gh.viewer", "query.viewer", "response = { keep = [\"/data/viewer/login\", \"/errors\"] }")
    );
    let p = build(&text).unwrap();
    let limits = p.graphql_limits("api.github.com", 443, "/graphql");
    assert_eq!((limits.max_depth, limits.max_root_fields), (8, 3));
    assert_eq!(
        p.graphql_limits("api.github.com", 443, "/other"),
        crate::graphql::Limits::default()
    );
    let refused = |extra: &str, why: &str| {
        let text = format!(
            "{BASE}{}{extra}",
            graphql_tool("gh.viewer", "query.viewer", "")
        );
        let err = build(&text).unwrap_err().to_string();
        assert!(err.contains(why), "{extra}: {err}");
    };
    let endpoint = "[[graphql_endpoint]]\nhost = \"api.github.com\"\npath = \"/graphql\"\n";
    refused(&format!("{endpoint}{endpoint}"), "declared twice");
    refused(
        "[[graphql_endpoint]]\nhost = \"api.github.com\"\npath = \"/v4\"\n",
        "serves no contracted GraphQL field",
    );
    refused(
        &format!("{endpoint}max_depth = 0\n"),
        "max_depth must be between 1 and 64",
    );
    refused(
        &format!("{endpoint}max_root_fields = 1000\n"),
        "max_root_fields must be between 1 and 100",
    );
}

#[test]
fn a_models_contract_bounds_what_the_audit_keeps_of_its_answers() {
    let model = |extra: &str| {
        format!("{BASE}side_effects = \"none\"\n{extra}\n").replace(
            "method = \"GET\"\npath = \"/v1/customers/{customer}\"",
            "method = \"POST\"\npath = \"/v1/chat/completions\"\nbody = { format = \"json\" }",
        )
    };
    let p = build(&model("kind = \"model\"")).unwrap();
    assert_eq!(p.tools()[0].model_answer, ModelAnswerLimits::default());
    let p = build(&model(
        "kind = \"model\"\nmodel_answer = { tool_calls = 4, text_bytes = 1024 }",
    ))
    .unwrap();
    let limits = p.tools()[0].model_answer;
    assert_eq!(
        (limits.tool_calls, limits.argument_bytes, limits.text_bytes),
        (4, 8192, 1024)
    );
    let e = build(&model("model_answer = { tool_calls = 4 }")).unwrap_err();
    assert!(e.message.contains("kind = \"model\""), "{e}");
    let e = build(&model(
        "kind = \"model\"\nmodel_answer = { argument_bytes = 1000000 }",
    ))
    .unwrap_err();
    assert!(
        e.message
            .contains("model_answer.argument_bytes = 1000000 is above 65536"),
        "{e}"
    );
    let e = build(&model("kind = \"model\"\nmodel_answer = { calls = 1 }")).unwrap_err();
    assert!(e.message.contains("calls"), "{e}");
}

const CONNECTION: &str = "\n[[connection]]\nname = \"gh\"\nauthorize_url = \"https://github.com/login/oauth/authorize\"\ntoken_url = \"https://github.com/login/oauth/access_token\"\nclient_id = \"Iv1.abc\"\nclient_secret_env = \"TOKEN\"\nscopes = [\"repo\"]\n";

#[test]
fn a_per_user_credential_names_a_connection_and_never_a_secret() {
    let cred = |body: &str| {
        format!(
            "{BASE}\ncredential = {{ staging = \"c\" }}\n{CONNECTION}\n[[credential]]\nname = \"c\"\nheader = \"Authorization\"\nformat = \"Bearer {{secret}}\"\n{body}\n"
        )
    };
    let p = build(&cred("connection = \"gh\"")).unwrap();
    let c = &p.tools()[0].credentials["staging"];
    assert!(matches!(c.source(), Some(PerUser::Connection(n)) if n == "gh"));
    assert_eq!(
        c.header_value(),
        "",
        "no value until a person's token fills it"
    );
    let filled = c.with_token("gho_person").unwrap();
    assert_eq!(filled.header_value(), "Bearer gho_person");
    assert!(filled.header_value().is_sensitive());
    assert!(!format!("{filled:?}{:?}", p).contains("secret\""));
    assert!(p.connection("gh").is_some());

    let refused = [
        ("connection = \"nope\"", "connection \"nope\" is not defined"),
        ("connection = \"gh\"\nenv = \"TOKEN\"", "remove env and file"),
        (
            "connection = \"gh\"\nexchange = { token_url = \"https://idp/t\", audience = \"a\", client_id = \"x\", client_secret_env = \"TOKEN\" }",
            "name one of connection and exchange",
        ),
        (
            "exchange = { token_url = \"http://idp/t\", audience = \"a\", client_id = \"x\", client_secret_env = \"TOKEN\" }",
            "must be https",
        ),
        (
            "exchange = { token_url = \"https://idp/t\", client_id = \"x\", client_secret_env = \"TOKEN\" }",
            "audience or the scope",
        ),
    ];
    for (body, why) in refused {
        let e = build(&cred(body)).unwrap_err();
        assert!(e.message.contains(why), "{body}: {e}");
    }
}

#[test]
fn a_connection_is_https_with_its_secret_outside_the_policy() {
    let with = |from: &str, to: &str| build(&format!("{BASE}{}", CONNECTION.replace(from, to)));
    assert!(with("", "").is_ok());
    let refused = [
        (
            "https://github.com/login/oauth/authorize",
            "http://github.com/a",
            "authorize_url",
        ),
        (
            "https://github.com/login/oauth/access_token",
            "http://github.com/t",
            "token_url",
        ),
        (
            "client_secret_env = \"TOKEN\"",
            "",
            "client_secret_env and client_secret_file",
        ),
        (
            "client_secret_env = \"TOKEN\"",
            "client_secret_env = \"UNSET\"",
            "UNSET",
        ),
        (
            "client_secret_env = \"TOKEN\"",
            "client_secret = \"inline\"",
            "unknown field",
        ),
        (
            "scopes = ",
            "client_auth = \"jwt\"\nscopes = ",
            "client_auth \"jwt\" is not",
        ),
    ];
    for (from, to, why) in refused {
        let e = with(from, to).unwrap_err();
        assert!(e.message.contains(why), "{to}: {e}");
    }
    let twice = format!("{BASE}{CONNECTION}{CONNECTION}");
    assert!(build(&twice).unwrap_err().message.contains("defined twice"));
}
