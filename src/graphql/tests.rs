use proptest::prelude::*;
use serde_json::{json, Value};

use super::*;
use crate::error::Code;

fn post(query: &str, variables: Value) -> Request {
    Request::from_json(&json!({ "query": query, "variables": variables })).expect("request")
}

fn run(query: &str, variables: Value) -> Result<Operation, GraphqlError> {
    extract(&post(query, variables), &Limits::default())
}

fn fields(query: &str, variables: Value) -> Vec<(String, String, Value)> {
    run(query, variables)
        .expect("extracts")
        .fields
        .into_iter()
        .map(|f| (f.key().to_string(), f.name, f.arguments))
        .collect()
}

#[test]
fn lists_root_fields_with_aliases_and_arguments() {
    let op = run(
        r#"query Repo { repository(owner: "acme", name: "widgets") { id } me: viewer { login } }"#,
        json!({}),
    )
    .expect("extracts");
    assert_eq!(op.kind, OperationType::Query);
    assert_eq!(op.name.as_deref(), Some("Repo"));
    assert_eq!(op.fields.len(), 2);
    assert_eq!(op.fields[0].name, "repository");
    assert_eq!(
        op.fields[0].arguments,
        json!({"owner": "acme", "name": "widgets"})
    );
    assert_eq!(op.fields[1].alias.as_deref(), Some("me"));
    assert_eq!(op.fields[1].name, "viewer");
    assert_eq!(op.fields[1].arguments, json!({}));
}

#[test]
fn an_alias_never_hides_the_field_it_calls() {
    let op = run(
        r#"mutation { createIssue: deleteRef(input: {refId: "R"}) { clientMutationId } }"#,
        json!({}),
    )
    .expect("extracts");
    assert_eq!(op.fields[0].name, "deleteRef");
    assert_eq!(op.fields[0].key(), "createIssue");
    // A mutation field spread into a query is listed as the query's root field, which no
    // mutation contract matches.
    let op = run(
        r#"query { ...F } fragment F on Mutation { deleteRef(input: {refId: "R"}) { clientMutationId } }"#,
        json!({}),
    )
    .expect("extracts");
    assert_eq!(
        (op.kind, op.fields[0].name.as_str()),
        (OperationType::Query, "deleteRef")
    );
}

#[test]
fn variables_are_substituted_into_arguments() {
    let inline = fields(
        r#"mutation { createIssue(input: {repositoryId: "R_1", title: "Bug", labelIds: ["L1"], priority: HIGH, n: 3, f: 1.5, ok: true, none: null}) { issue { number } } }"#,
        json!({}),
    );
    let passed = fields(
        r#"mutation New($input: CreateIssueInput!) { createIssue(input: $input) { issue { number } } }"#,
        json!({"input": {"repositoryId": "R_1", "title": "Bug", "labelIds": ["L1"], "priority": "HIGH", "n": 3, "f": 1.5, "ok": true, "none": null}}),
    );
    assert_eq!(inline, passed);
    let nested = fields(
        r#"mutation ($t: String!, $l: [ID!]) { createIssue(input: {repositoryId: "R_1", title: $t, labelIds: $l, priority: HIGH, n: 3, f: 1.5, ok: true, none: null}) { issue { number } } }"#,
        json!({"t": "Bug", "l": ["L1"]}),
    );
    assert_eq!(inline, nested);
}

#[test]
fn defaults_apply_and_absent_variables_leave_the_argument_out() {
    let f = fields(
        r#"query ($n: Int = 5, $after: String) { viewer { repositories(first: $n, after: $after) { totalCount } } search(first: $n, after: $after, query: "x", type: REPOSITORY) { issueCount } }"#,
        json!({}),
    );
    assert_eq!(
        f[1].2,
        json!({"first": 5, "query": "x", "type": "REPOSITORY"})
    );
}

#[test]
fn fragments_and_inline_fragments_expand_to_the_same_fields() {
    let plain = fields(
        r#"mutation { deleteRef(input: {refId: "R"}) { clientMutationId } }"#,
        json!({}),
    );
    let spread = fields(
        r#"mutation { ...Hidden } fragment Hidden on Mutation { deleteRef(input: {refId: "R"}) { clientMutationId } }"#,
        json!({}),
    );
    let inline = fields(
        r#"mutation { ... on Mutation { ... { deleteRef(input: {refId: "R"}) { clientMutationId } } } }"#,
        json!({}),
    );
    assert_eq!(plain, spread);
    assert_eq!(plain, inline);
}

#[test]
fn the_same_field_and_arguments_twice_is_one_field() {
    let f = fields(
        r#"{ viewer { login } ... on Query { viewer { id } } __typename }"#,
        json!({}),
    );
    assert_eq!(f.len(), 1);
    let err = run(
        r#"{ a: repository(name: "x") { id } a: repository(name: "y") { id } }"#,
        json!({}),
    );
    assert!(matches!(err, Err(GraphqlError::Invalid(_))), "{err:?}");
}

#[test]
fn operations_are_chosen_by_name() {
    let doc = "query A { viewer { login } } mutation B { deleteRef(input: {refId: \"x\"}) { clientMutationId } }";
    let err = run(doc, json!({})).unwrap_err();
    assert!(
        matches!(err, GraphqlError::SeveralOperations { count: 2, .. }),
        "{err}"
    );
    assert_eq!(err.code(), Code::ValidationError);
    let mut req = post(doc, json!({}));
    req.operation_name = Some("B".into());
    let op = extract(&req, &Limits::default()).expect("B");
    assert_eq!(op.kind, OperationType::Mutation);
    assert_eq!(op.fields[0].name, "deleteRef");
    req.operation_name = Some("C".into());
    assert_eq!(
        extract(&req, &Limits::default()),
        Err(GraphqlError::UnknownOperation("C".into()))
    );
}

#[test]
fn ambiguous_documents_are_refused() {
    for doc in [
        "query A { a } query A { b }",
        "{ a } query B { b }",
        "{ ...F } fragment F on Query { a } fragment F on Query { b }",
        "type Query { a: Int }",
        "{ ...Missing }",
        "{ ...F } fragment F on Query { ...G } fragment G on Query { ...F }",
        "query { a(x: 1, x: 2) }",
        "query { a(x: {y: 1, y: 2}) }",
        "query { a(x: $undeclared) }",
        "query ($v: Int, $v: Int) { a(x: $v) }",
        "",
    ] {
        let err = run(doc, json!({})).unwrap_err();
        assert_eq!(err.code(), Code::ValidationError, "{doc}: {err}");
    }
}

#[test]
fn refusals_name_the_field_and_carry_their_code() {
    let cases: Vec<(&str, Value, Code, &str)> = vec![
        ("subscription { issueEvents { id } }", json!({}), Code::PolicyViolation, "issueEvents"),
        ("{ __schema { types { name } } }", json!({}), Code::PolicyViolation, "__schema"),
        ("{ ... on Query { __type(name: \"X\") { name } } }", json!({}), Code::PolicyViolation, "__type"),
        (
            "mutation { a: deleteRef(input: {refId: \"1\"}) { clientMutationId } b: deleteRef(input: {refId: \"2\"}) { clientMutationId } }",
            json!({}),
            Code::PolicyViolation,
            "deleteRef",
        ),
        ("{ viewer @cached { login } }", json!({}), Code::PolicyViolation, "@cached"),
        ("query ($n: Int!) { viewer { repositories(first: $n) { totalCount } } }", json!({"n": "ten"}), Code::ValidationError, "$n"),
        ("query ($n: Int!) { viewer { repositories(first: $n) { totalCount } } }", json!({}), Code::ValidationError, "$n"),
        ("mutation ($i: CreateIssueInput!) { createIssue(input: $i) { clientMutationId } }", json!({"i": "x"}), Code::ValidationError, "CreateIssueInput"),
        ("query ($l: [String!]!) { search(query: $l) { issueCount } }", json!({"l": ["a", null]}), Code::ValidationError, "[1]"),
        ("query ($b: Boolean) { a(x: $b) }", json!({"b": 1}), Code::ValidationError, "Boolean"),
        ("query ($i: ID) { node(id: $i) { id } }", json!({"i": 1.5}), Code::ValidationError, "ID"),
        ("query ($i: Int) { a(x: $i) }", json!({"i": 3_000_000_000u64}), Code::ValidationError, "Int"),
    ];
    for (doc, vars, code, named) in cases {
        let err = run(doc, vars).unwrap_err();
        assert_eq!(err.code(), code, "{doc}: {err}");
        assert!(err.to_string().contains(named), "{doc}: {err}");
    }
}

#[test]
fn well_typed_variables_pass() {
    let ok = run(
        "query ($n: Int!, $f: Float, $s: String, $b: Boolean!, $i: ID!, $j: ID, $l: [Int], $e: IssueState, $o: IssueOrder) { a(n: $n, f: $f, s: $s, b: $b, i: $i, j: $j, l: $l, e: $e, o: $o) }",
        json!({"n": 1, "f": 2, "s": null, "b": false, "i": "x", "j": 7, "l": 3, "e": "OPEN", "o": {"field": "CREATED_AT"}}),
    );
    assert!(ok.is_ok(), "{ok:?}");
}

#[test]
fn depth_and_width_have_limits() {
    let nest = |n: usize| format!("{{ {} leaf {} }}", "a {".repeat(n - 1), "}".repeat(n - 1));
    assert!(run(&nest(15), json!({})).is_ok());
    let err = run(&nest(16), json!({})).unwrap_err();
    assert!(
        matches!(err, GraphqlError::TooDeep { limit: 15, .. }),
        "{err}"
    );
    // Depth through fragments counts the same.
    let via_fragment = format!(
        "{{ a {{ ...F }} }} fragment F on A {{ {} leaf {} }}",
        "b {".repeat(14),
        "}".repeat(14)
    );
    assert!(matches!(
        run(&via_fragment, json!({})),
        Err(GraphqlError::TooDeep { .. })
    ));
    let wide: String = (0..11)
        .map(|i| format!("f{i}: viewer {{ login }} "))
        .collect();
    let err = run(&format!("{{ {wide} }}"), json!({})).unwrap_err();
    assert!(
        matches!(
            err,
            GraphqlError::TooManyFields {
                count: 11,
                limit: 10
            }
        ),
        "{err}"
    );
    let limits = Limits {
        max_depth: 20,
        max_root_fields: 11,
        allow_introspection: true,
    };
    assert!(extract(&post(&nest(20), json!({})), &limits).is_ok());
    assert!(extract(&post(&format!("{{ {wide} }}"), json!({})), &limits).is_ok());
    let intro = extract(
        &post("{ __schema { queryType { name } } }", json!({})),
        &limits,
    );
    assert_eq!(intro.expect("allowed").fields[0].name, "__schema");
}

#[test]
fn hostile_nesting_is_refused_without_running_out_of_stack() {
    let n = 100_000;
    for doc in [
        format!("{{ {} }}", "a {".repeat(n) + &"}".repeat(n)),
        format!("{{ a(x: {}1{}) }}", "[".repeat(n), "]".repeat(n)),
        format!("{{ a(x: {}1{}) }}", "{a: ".repeat(n), "}".repeat(n)),
        format!("query ($v: {}Int{}) {{ a }}", "[".repeat(n), "]".repeat(n)),
    ] {
        assert!(run(&doc, json!({})).is_err());
    }
    // Fragments spread many times each: bounded work.
    let mut doc = String::from("{ ...F0 }");
    for i in 0..30 {
        doc += &format!(" fragment F{i} on Query {{ ...F{} ...F{} }}", i + 1, i + 1);
    }
    doc += " fragment F30 on Query { a }";
    assert_eq!(
        run(&doc, json!({})),
        Err(GraphqlError::TooLarge(walk::MAX_VISITS))
    );
}

#[test]
fn mutations_are_refused_over_get_and_queries_read() {
    let get = Request::from_query_string(
        "query=mutation%20%7B%20deleteRef(input%3A%20%7BrefId%3A%20%22x%22%7D)%20%7B%20clientMutationId%20%7D%20%7D",
    )
    .expect("request");
    let err = extract(&get, &Limits::default()).unwrap_err();
    assert_eq!(err, GraphqlError::MutationOverGet("deleteRef".into()));
    assert_eq!(err.code(), Code::PolicyViolation);
    let get = Request::from_query_string(
        "query=query%20(%24o%3A%20String!)%20%7B%20repository(owner%3A%20%24o%2C%20name%3A%20%22w%22)%20%7B%20id%20%7D%20%7D&variables=%7B%22o%22%3A%22acme%22%7D&operationName=",
    )
    .expect("request");
    let op = extract(&get, &Limits::default()).expect("query");
    assert_eq!(
        op.fields[0].arguments,
        json!({"owner": "acme", "name": "w"})
    );
}

#[test]
fn http_requests_that_could_be_read_two_ways_are_refused() {
    for body in [
        json!([{"query": "{ a }"}]),
        json!({"query": "{ a }", "extra": 1}),
        json!({"variables": {}}),
        json!({"query": 1}),
        json!({"query": "{ a }", "variables": []}),
        json!({"query": "{ a }", "operationName": 2}),
    ] {
        let err = Request::from_json(&body).unwrap_err();
        assert_eq!(err.code(), Code::ValidationError, "{body}");
    }
    for qs in [
        "query=%7Ba%7D&query=%7Bb%7D",
        "query=%7Ba%7D&x=1",
        "variables=%7B%7D",
        "query=%7Ba%7D&variables=1",
    ] {
        assert!(Request::from_query_string(qs).is_err(), "{qs}");
    }
    let ok = Request::from_json(
        &json!({"query": "{ a }", "variables": null, "operationName": null, "extensions": {"x": 1}}),
    );
    assert!(ok.is_ok());
}

#[test]
fn refusals_are_written_as_graphql_errors() {
    let refusal = crate::error::Refusal::from(GraphqlError::Introspection("__schema".into()))
        .with_tool("github.graphql.viewer")
        .with_proposal("prop_1");
    let body = errors_body(&refusal, "req_1");
    let error = &body["errors"][0];
    assert!(error["message"]
        .as_str()
        .unwrap_or_default()
        .contains("__schema"));
    assert_eq!(error["extensions"]["code"], "policy_violation");
    assert_eq!(error["extensions"]["request_id"], "req_1");
    assert_eq!(error["extensions"]["tool"], "github.graphql.viewer");
    assert_eq!(error["extensions"]["proposal"], "prop_1");
    assert_eq!(body.as_object().map(|o| o.len()), Some(1));
}

#[test]
fn refusals_become_toolgate_refusals() {
    let r: crate::error::Refusal = GraphqlError::Introspection("__schema".into()).into();
    assert_eq!(r.code, Code::PolicyViolation);
    assert!(r.message.contains("__schema"));
}

/// A small JSON value of the kinds GraphQL inputs take.
fn input_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i32>().prop_map(|n| json!(n)),
        (-1.0e6f64..1.0e6).prop_map(|f| json!(f)),
        "[ -~]{0,12}".prop_map(Value::String),
        "[A-Z][A-Z_]{0,6}".prop_map(|s| json!({"enum": s})),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z][a-zA-Z0-9]{0,5}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A value written as a GraphQL literal (`{"enum": X}` as the enum value X).
fn literal(v: &Value) -> String {
    match v {
        Value::Object(m) if m.len() == 1 && m.get("enum").is_some_and(Value::is_string) => {
            m["enum"].as_str().unwrap_or_default().to_string()
        }
        Value::Object(m) => format!(
            "{{{}}}",
            m.iter()
                .map(|(k, v)| format!("{k}: {}", literal(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Value::Array(items) => format!(
            "[{}]",
            items.iter().map(literal).collect::<Vec<_>>().join(", ")
        ),
        other => other.to_string(),
    }
}

/// The value the upstream reads for a literal: enum values as their names.
fn read(v: &Value) -> Value {
    match v {
        Value::Object(m) if m.len() == 1 && m.get("enum").is_some_and(Value::is_string) => {
            m["enum"].clone()
        }
        Value::Object(m) => Value::Object(m.iter().map(|(k, v)| (k.clone(), read(v))).collect()),
        Value::Array(items) => Value::Array(items.iter().map(read).collect()),
        other => other.clone(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// An argument written inline and the same one passed through a variable give the same
    /// arguments, whether the field is written at the root, in a fragment or in an inline one.
    #[test]
    fn inline_and_passed_arguments_are_the_same(arg in input_value(), alias in proptest::option::of("[a-z]{1,6}"), wrap in 0..3usize) {
        let alias = alias.map(|a| format!("{a}: ")).unwrap_or_default();
        let place = |field: String| match wrap {
            0 => format!("mutation M($v: JSON) {{ {field} }}"),
            1 => format!("mutation M($v: JSON) {{ ...F }} fragment F on Mutation {{ {field} }}"),
            _ => format!("mutation M($v: JSON) {{ ... on Mutation {{ {field} }} }}"),
        };
        let inline = place(format!("{alias}createIssue(input: {}) {{ id }}", literal(&arg)));
        let passed = place(format!("{alias}createIssue(input: $v) {{ id }}"));
        let a = run(&inline, json!({})).expect("inline");
        let b = run(&passed, json!({"v": read(&arg)})).expect("passed");
        prop_assert_eq!(&a.fields, &b.fields);
        prop_assert_eq!(&a.fields[0].arguments, &json!({"input": read(&arg)}));
        prop_assert_eq!(a.fields[0].name.as_str(), "createIssue");
    }

    /// Arbitrary text never panics the extraction, as a query or inside a document.
    #[test]
    fn arbitrary_documents_never_panic(text in "\\PC{0,200}") {
        let _ = run(&text, json!({}));
        let _ = run(&format!("{{ a(x: {text}) }}"), json!({}));
        let _ = run(&format!("query ($v: {text}) {{ a(x: $v) }}"), json!({"v": 1}));
    }

    /// Documents made of GraphQL's own tokens never panic either.
    #[test]
    fn token_soup_never_panics(tokens in prop::collection::vec(prop_oneof![
        Just("{"), Just("}"), Just("("), Just(")"), Just("["), Just("]"), Just(":"), Just("..."),
        Just("$v"), Just("@skip(if: true)"), Just("@x"), Just("on"), Just("fragment"), Just("F"),
        Just("query"), Just("mutation"), Just("subscription"), Just("a"), Just("1"), Just("\"s\""),
        Just("\"\"\"b\"\"\""), Just("!"), Just("="), Just("__schema"), Just("null"), Just("E"),
    ], 0..60)) {
        let doc = tokens.join(" ");
        let _ = run(&doc, json!({"v": [1, {"x": null}]}));
    }

    /// Arbitrary variables never panic, and never change which root fields are listed.
    #[test]
    fn arbitrary_variables_keep_the_fields(vars in input_value()) {
        let doc = "query ($a: Int, $b: [String!], $c: SomeInput, $d: ID) { one: viewer { login } two: search(a: $a, b: $b, c: $c, d: $d) { n } }";
        if let Ok(op) = run(doc, json!({"a": vars.clone(), "b": vars.clone(), "c": vars.clone(), "d": vars})) {
            let names: Vec<&str> = op.fields.iter().map(RootField::key).collect();
            prop_assert_eq!(names, vec!["one", "two"]);
        }
    }
}

#[test]
fn an_alias_anywhere_below_a_root_field_is_noted() {
    let op = run(
        r#"query { viewer { e: email } repository(owner: "a", name: "b") { id } }"#,
        json!({}),
    )
    .expect("extracts");
    assert!(op.fields[0].nested_alias);
    assert!(!op.fields[1].nested_alias);
    // In an inline fragment, and in a fragment measured once and spread under a second root.
    let op = run(
        r#"query { viewer { ... on User { m: email } } a: repository(owner: "a", name: "b") { ...R } b: repository(owner: "c", name: "d") { ...R } }
           fragment R on Repository { owner { x: login } }"#,
        json!({}),
    )
    .expect("extracts");
    assert!(op.fields.iter().all(|f| f.nested_alias), "{:?}", op.fields);
}

#[test]
fn skip_and_include_decide_whether_a_root_field_runs() {
    let op = run(
        r#"mutation($s: Boolean!) { a: createIssue(input: {title: "x"}) @skip(if: $s) { clientMutationId }
             ... @include(if: false) { addComment(input: {body: "y"}) { clientMutationId } }
             deleteRef(input: {refId: "R"}) @include(if: true) { clientMutationId } }"#,
        json!({"s": true}),
    )
    .expect("extracts");
    let runs: Vec<(&str, bool)> = op
        .fields
        .iter()
        .map(|f| (f.name.as_str(), f.runs))
        .collect();
    assert_eq!(
        runs,
        [
            ("createIssue", false),
            ("addComment", false),
            ("deleteRef", true)
        ]
    );
}

#[test]
fn arguments_built_from_variables_are_bounded() {
    let uses = vec!["$v"; 2000].join(" ");
    let query = format!("query($v: String) {{ viewer(a: [{uses}]) {{ login }} }}");
    let big = "x".repeat(8 * 1024);
    let err = run(&query, json!({ "v": big })).expect_err("too large");
    assert_eq!(err.code(), Code::ValidationError);
    assert!(err.to_string().contains("pass each value once"), "{err}");
    // The same value used a few times passes.
    let query = "query($v: String) { viewer(a: [$v, $v]) { login } }";
    assert!(run(query, json!({ "v": big })).is_ok());
}

#[test]
fn thousands_of_root_fields_stop_at_the_limit() {
    let many: String = (0..5000)
        .map(|i| format!("f{i}: viewer {{ login }} "))
        .collect();
    let started = std::time::Instant::now();
    let err = run(&format!("{{ {many} }}"), json!({})).expect_err("too many");
    assert!(
        matches!(err, GraphqlError::TooManyFields { limit: 10, .. }),
        "{err}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

#[test]
fn a_syntax_error_never_quotes_the_token_it_met() {
    let err = run(
        r#"mutation { pay(card "4111111111111111") { id } }"#,
        json!({}),
    )
    .expect_err("syntax");
    assert!(!err.to_string().contains("4111"), "{err}");
}
