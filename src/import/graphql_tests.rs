use super::*;
use crate::policy::contract::Schema;
use proptest::prelude::*;

/// The drafted schema of `field` from `sdl`, compiled as the policy loader compiles it.
fn drafted(sdl: &str, field: &str) -> (Value, Schema) {
    let value = schema_of(sdl, field).unwrap();
    let schema = Schema::from_value(field, value.clone()).unwrap();
    (value, schema)
}

fn schema_of(sdl: &str, field: &str) -> Result<Value, String> {
    let parsed = Sdl::parse(sdl)?;
    let (op, name) = field.split_once('.').unwrap();
    let op = OperationType::parse(op).unwrap();
    let (root, f) = find(&parsed, op, name).map_err(|e| e.to_string())?;
    arguments_schema(&parsed, op, root, f, "test.graphql")
}

fn accepts(s: &Schema, v: Value) {
    assert!(s.check(&v).is_ok(), "refused {v}: {:?}", s.check(&v));
}

fn refuses(s: &Schema, v: Value) -> String {
    s.check(&v).expect_err(&format!("accepted {v}"))
}

/// Drafts from an SDL text written to a temporary file.
fn draft_text(sdl: &str, fields: &[&str]) -> Result<Drafted, String> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("schema.graphql");
    std::fs::write(&path, sdl).unwrap();
    draft(&GraphqlOptions {
        sdl: path,
        fields: fields.iter().map(|f| f.to_string()).collect(),
        host: "api.example.com".into(),
        path: "/graphql".into(),
        max_bytes: 1 << 20,
        ..Default::default()
    })
    .map_err(|e| e.to_string())
}

#[test]
fn required_nullable_and_defaults_follow_the_sdl() {
    let sdl = r#"
type Query {
  "Find things."
  find(
    "the name"
    name: String!
    limit: Int
    exact: Boolean! = true
    weight: Float = 1.5
    id: ID
  ): String
}"#;
    let (v, s) = drafted(sdl, "query.find");
    assert_eq!(v["required"], json!(["name"]));
    assert_eq!(v["description"], "Find things.");
    assert_eq!(v["properties"]["name"]["description"], "the name");
    assert_eq!(v["properties"]["exact"]["default"], true);
    assert_eq!(v["properties"]["weight"]["default"], 1.5);
    assert_eq!(v["additionalProperties"], false);
    accepts(&s, json!({"name": "a"}));
    accepts(
        &s,
        json!({"name": "a", "limit": null, "weight": null, "id": null}),
    );
    accepts(
        &s,
        json!({"name": "a", "limit": -2147483648, "exact": false, "weight": 2, "id": "x"}),
    );
    refuses(&s, json!({}));
    refuses(&s, json!({"name": null}));
    // Non-null with a default: may be left out, never null.
    refuses(&s, json!({"name": "a", "exact": null}));
    refuses(&s, json!({"name": "a", "limit": 2147483648_i64}));
    refuses(&s, json!({"name": "a", "limit": 1.5}));
    refuses(&s, json!({"name": 1}));
    let e = refuses(&s, json!({"name": "a", "other": 1}));
    assert!(e.contains("/other"), "{e}");
}

#[test]
fn enums_list_their_values_and_note_deprecated_ones() {
    let sdl = r#"
"How to merge."
enum Method { MERGE "one commit per commit" REBASE SQUASH @deprecated(reason: "use MERGE") }
type Mutation { merge(method: Method = MERGE, must: Method!): Int }
type Query { x: Int }"#;
    let (v, s) = drafted(sdl, "mutation.merge");
    let def = &v["$defs"]["Method"];
    assert_eq!(def["enum"], json!(["MERGE", "REBASE", "SQUASH"]));
    let text = def["description"].as_str().unwrap();
    assert!(text.contains("How to merge."), "{text}");
    assert!(text.contains("SQUASH: deprecated: use MERGE"), "{text}");
    assert_eq!(v["properties"]["method"]["default"], "MERGE");
    accepts(&s, json!({"must": "SQUASH", "method": null}));
    accepts(&s, json!({"must": "REBASE", "method": "MERGE"}));
    refuses(&s, json!({"must": "merge"}));
    refuses(&s, json!({"must": null}));
    refuses(&s, json!({"must": "MERGE", "method": "FAST"}));
}

#[test]
fn lists_are_arrays_of_their_item_type() {
    let sdl = "type Query { f(ids: [ID!]!, tags: [String], grid: [[Int!]]): Int }";
    let (_, s) = drafted(sdl, "query.f");
    accepts(&s, json!({"ids": []}));
    accepts(
        &s,
        json!({"ids": ["a", "b"], "tags": [null, "x"], "grid": [[1], null]}),
    );
    accepts(&s, json!({"ids": ["a"], "tags": null}));
    refuses(&s, json!({"ids": [null]}));
    refuses(&s, json!({"ids": "a"}));
    refuses(&s, json!({"ids": null}));
    refuses(&s, json!({"ids": [], "grid": [[null]]}));
    refuses(&s, json!({"ids": [], "grid": [1]}));
}

#[test]
fn nested_and_recursive_inputs_are_closed_definitions() {
    let sdl = r#"
"A filter."
input Filter { and: [Filter!] not: Filter name: String range: Range }
input Range { from: Int! to: Int! = 10 }
type Query { search(filter: Filter!): Int }"#;
    let (v, s) = drafted(sdl, "query.search");
    assert_eq!(v["properties"]["filter"]["$ref"], "#/$defs/Filter");
    assert_eq!(v["$defs"]["Filter"]["additionalProperties"], false);
    assert_eq!(v["$defs"]["Filter"]["description"], "A filter.");
    assert_eq!(v["$defs"]["Range"]["required"], json!(["from"]));
    let deep =
        json!({"filter": {"and": [{"not": {"and": [{"name": "a", "range": {"from": 1}}]}}]}});
    accepts(&s, deep);
    accepts(&s, json!({"filter": {"not": null, "and": null}}));
    let e = refuses(
        &s,
        json!({"filter": {"and": [{"not": {"name": "a", "evil": 1}}]}}),
    );
    assert!(e.contains("evil"), "{e}");
    refuses(&s, json!({"filter": {"range": {"to": 3}}}));
    refuses(&s, json!({"filter": {"range": {"from": 1, "to": null}}}));
    refuses(&s, json!({"filter": null}));
}

#[test]
fn custom_scalars_are_strings_named_in_their_description() {
    let sdl = r#"
"An ISO-8601 encoded UTC date string."
scalar DateTime
scalar URI
type Query { since(at: DateTime!, link: URI): Int }"#;
    let (v, s) = drafted(sdl, "query.since");
    let text = v["$defs"]["DateTime"]["description"].as_str().unwrap();
    assert!(text.starts_with("DateTime (a custom scalar"), "{text}");
    assert!(text.contains("ISO-8601"), "{text}");
    assert_eq!(v["$defs"]["URI"]["type"], "string");
    accepts(&s, json!({"at": "2024-01-01T00:00:00Z", "link": null}));
    refuses(&s, json!({"at": 5}));
    refuses(&s, json!({"at": null}));
}

#[test]
fn deprecated_arguments_are_kept_and_noted() {
    let sdl = r#"type Query { f("old way" old: Int @deprecated(reason: "Use new."), gone: Int @deprecated, new: Int): Int }"#;
    let (v, s) = drafted(sdl, "query.f");
    assert_eq!(
        v["properties"]["old"]["description"],
        "old way\n\nDeprecated: Use new."
    );
    assert_eq!(
        v["properties"]["gone"]["description"],
        "Deprecated: No longer supported"
    );
    accepts(&s, json!({"old": 1, "new": 2}));
}

#[test]
fn a_schema_definition_renames_the_roots() {
    let sdl = r#"
schema { query: Root mutation: Change }
type Root { read: Int }
type Change { write(v: Int!): Int }
type Mutation { other(v: Int): Int }"#;
    let (v, _) = drafted(sdl, "mutation.write");
    assert!(v["$comment"]
        .as_str()
        .unwrap()
        .contains("Change.write(v: Int!)"));
    let e = schema_of(sdl, "mutation.other").unwrap_err();
    assert!(e.contains("Change has no field other"), "{e}");
    // `extend schema` and `extend type` are read too.
    let sdl = r#"
type Root { read: Int }
schema { query: Root }
type Edit { a: Int }
extend schema { mutation: Edit }
extend type Edit { b(x: String): Int }"#;
    let (v, _) = drafted(sdl, "mutation.b");
    assert_eq!(v["properties"]["x"]["type"], json!(["string", "null"]));
}

#[test]
fn extensions_of_inputs_and_enums_are_merged() {
    let sdl = r#"
extend input Opts { more: Boolean }
input Opts { size: Int! }
enum Color { RED }
extend enum Color { BLUE }
type Query { f(o: Opts!, c: Color): Int }"#;
    let (v, s) = drafted(sdl, "query.f");
    assert_eq!(v["$defs"]["Color"]["enum"], json!(["RED", "BLUE"]));
    accepts(&s, json!({"o": {"size": 1, "more": true}, "c": "BLUE"}));
    refuses(&s, json!({"o": {"more": true}}));
    let e = schema_of(
        "enum Opts { A } extend input Opts { b: Int } type Query { a: Int }",
        "query.a",
    )
    .unwrap_err();
    assert!(e.contains("Opts is another kind of type"), "{e}");
}

#[test]
fn one_of_inputs_take_exactly_one_field() {
    let sdl = "input By @oneOf { id: ID name: String } type Query { user(by: By!): Int }";
    let (_, s) = drafted(sdl, "query.user");
    accepts(&s, json!({"by": {"id": "1"}}));
    refuses(&s, json!({"by": {}}));
    refuses(&s, json!({"by": {"id": "1", "name": "a"}}));
    refuses(&s, json!({"by": {"id": null}}));
}

#[test]
fn bad_sdl_and_bad_fields_are_refused_with_what_to_change() {
    let sdl = "type Query { a(x: Int): Int }\ntype Mutation { createIssue(t: String): Int }";
    for (fields, want) in [
        (
            vec!["mutation.createIsue"],
            "did you mean mutation.createIssue",
        ),
        (vec!["query.nope"], "Query has no field nope"),
        (vec!["subscription.a"], "subscriptions cannot be contracted"),
        (vec!["createIssue"], "is not OPERATION.FIELD"),
        (vec!["muta.createIssue"], "unknown operation type \"muta\""),
        (vec!["query.1a"], "is not a GraphQL field name"),
        (vec!["query.__schema"], "GraphQL's own fields"),
        (vec!["query.a", "mutation.a"], "draft them in two runs"),
        (vec![], "choose fields with --field"),
    ] {
        let e = draft_text(sdl, &fields).unwrap_err();
        assert!(e.contains(want), "{fields:?}: {e}");
    }
    let e = draft_text("type Query { a(x: Int): Int }", &["mutation.a"]).unwrap_err();
    assert!(e.contains("the SDL has no mutation type"), "{e}");
    let e = draft_text("type Query {\n  a(x: Int: Int\n}", &["query.a"]).unwrap_err();
    assert!(
        e.contains("not a GraphQL schema (SDL)") && e.contains("line 2"),
        "{e}"
    );
    let e = draft_text("query { viewer { login } }", &["query.viewer"]).unwrap_err();
    assert!(e.contains("an operation or fragment"), "{e}");
    let e = draft_text("type Query { a(x: Nope): Int }", &["query.a"]).unwrap_err();
    assert!(
        e.contains("argument x has type Nope, which the SDL does not define"),
        "{e}"
    );
    let e = draft_text(
        "type User { a: Int } type Query { a(x: User): Int }",
        &["query.a"],
    )
    .unwrap_err();
    assert!(e.contains("an object type (output only)"), "{e}");
    let e = draft_text("type Query { a: Int } type Query { b: Int }", &["query.a"]).unwrap_err();
    assert!(e.contains("type Query is defined twice"), "{e}");
    let e = draft_text(
        "extend type Mutation { a: Int } type Query { a: Int }",
        &["query.a"],
    )
    .unwrap_err();
    assert!(e.contains("does not define Mutation"), "{e}");
}

#[test]
fn the_draft_names_tools_and_marks_mutation_defaults() {
    let sdl = r#"
type Query {
  "The currently authenticated user."
  viewer: Int
}
type Mutation {
  "Creates a new issue. More text."
  createIssue(title: String!): Int
  old: Int @deprecated(reason: "gone")
}"#;
    let d = draft_text(
        sdl,
        &["query.viewer", "mutation.createIssue", "mutation.old"],
    )
    .unwrap();
    assert_eq!(d.stem, "example-graphql");
    assert_eq!(
        d.imported.tools,
        [
            "example.graphql.viewer",
            "example.graphql.createIssue",
            "example.graphql.old"
        ]
    );
    assert_eq!(d.imported.schemas.len(), 1);
    assert_eq!(d.imported.schemas[0].0, "createIssue.json");
    let toml = &d.imported.toml;
    for want in [
        "name = \"example.graphql.viewer\"",
        "side_effects = \"none\"\nmode = \"auto\"",
        "# viewer takes no arguments",
        "graphql = \"mutation.createIssue\"",
        "arguments = \"schemas/example-graphql/createIssue.json\"",
        "description = \"Creates a new issue\"",
        "side_effects = \"irreversible\"  # mutation default: review",
        "mode = \"approve\"  # mutation default: review",
        "risk = \"high\"",
        "idempotency = \"payload\"",
        "rollback = { none = ",
        "# Mutation.old is deprecated: gone",
        "# credential = ",
    ] {
        assert!(toml.contains(want), "{want} missing from:\n{toml}");
    }
    let parsed: toml::Value = toml::from_str(toml).unwrap();
    assert_eq!(parsed["tool"].as_array().unwrap().len(), 3);
}

#[test]
fn prefixes_come_from_the_host() {
    for (host, want) in [
        ("api.github.com", "github"),
        ("gitlab.com", "gitlab"),
        ("api.linear.app:443", "linear"),
        ("countries.trevorblades.com", "trevorblades"),
        ("my-host.example", "my_host"),
        ("localhost", "localhost"),
    ] {
        assert_eq!(host_prefix(host).unwrap(), want, "{host}");
    }
    assert!(host_prefix("api.com").is_err());
    assert!(host_prefix("[::1]:8080").is_err());
}

/// A GraphQL input type for the property tests: a value of it can be built and the drafted
/// schema must accept it.
#[derive(Debug, Clone)]
enum T {
    String,
    Int,
    Float,
    Boolean,
    Id,
    Custom,
    Enum,
    List(Box<F>),
    Input(Vec<F>),
}

#[derive(Debug, Clone)]
struct F {
    t: T,
    non_null: bool,
}

fn field_strategy() -> impl Strategy<Value = F> {
    let leaf = prop_oneof![
        Just(T::String),
        Just(T::Int),
        Just(T::Float),
        Just(T::Boolean),
        Just(T::Id),
        Just(T::Custom),
        Just(T::Enum),
    ];
    let t = leaf.prop_recursive(4, 24, 4, |inner| {
        let f = (inner, any::<bool>()).prop_map(|(t, non_null)| F { t, non_null });
        prop_oneof![
            f.clone().prop_map(|f| T::List(Box::new(f))),
            prop::collection::vec(f, 1..4).prop_map(T::Input),
        ]
    });
    (t, any::<bool>()).prop_map(|(t, non_null)| F { t, non_null })
}

/// The SDL type of `f`, defining its input types into `defs`.
fn sdl_type(f: &F, defs: &mut Vec<String>) -> String {
    let base = match &f.t {
        T::String => "String".to_string(),
        T::Int => "Int".into(),
        T::Float => "Float".into(),
        T::Boolean => "Boolean".into(),
        T::Id => "ID".into(),
        T::Custom => "DateTime".into(),
        T::Enum => "Color".into(),
        T::List(item) => format!("[{}]", sdl_type(item, defs)),
        T::Input(fields) => {
            let members: Vec<String> = fields
                .iter()
                .enumerate()
                .map(|(i, f)| format!("  f{i}: {}", sdl_type(f, defs)))
                .collect();
            let name = format!("In{}", defs.len());
            defs.push(format!("input {name} {{\n{}\n}}", members.join("\n")));
            name
        }
    };
    if f.non_null {
        format!("{base}!")
    } else {
        base
    }
}

/// A value of `f`; `seed` picks nulls, omissions and values.
fn value_of(f: &F, seed: &mut u64) -> Option<Value> {
    let mut next = || {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed
    };
    if !f.non_null && next() % 4 == 0 {
        return Some(Value::Null);
    }
    let n = next();
    Some(match &f.t {
        T::String | T::Id | T::Custom => json!(format!("s{n}")),
        T::Int => json!(i64::from(n as i32)),
        T::Float => json!((n % 1000) as f64 / 7.0),
        T::Boolean => json!(n % 2 == 0),
        T::Enum => json!(["RED", "GREEN", "BLUE"][(n % 3) as usize]),
        T::List(item) => {
            let len = (n % 3) as usize;
            Value::Array((0..len).filter_map(|_| value_of(item, seed)).collect())
        }
        T::Input(fields) => Value::Object(object_of(fields, seed)),
    })
}

/// An object with the fields of `fields`: the non-null ones always, the others sometimes.
fn object_of(fields: &[F], seed: &mut u64) -> Map<String, Value> {
    let mut out = Map::new();
    for (i, f) in fields.iter().enumerate() {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
        if f.non_null || *seed % 3 != 0 {
            if let Some(v) = value_of(f, seed) {
                out.insert(format!("f{i}"), v);
            }
        }
    }
    out
}

/// The JSON pointer of the first object nested in `v` (not `v` itself), to put an unknown key
/// into.
fn nested_object(v: &Value, at: &str) -> Option<String> {
    let children: Vec<(String, &Value)> = match v {
        Value::Object(m) => m.iter().map(|(k, c)| (format!("{at}/{k}"), c)).collect(),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, c)| (format!("{at}/{i}"), c))
            .collect(),
        _ => return None,
    };
    children.into_iter().find_map(|(p, c)| match c {
        Value::Object(_) => Some(p),
        other => nested_object(other, &p),
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn drafted_schemas_accept_values_of_the_sdl_types_and_refuse_unknown_keys(
        args in prop::collection::vec(field_strategy(), 1..5),
        seed in 1u64..,
    ) {
        let mut defs = vec!["scalar DateTime".to_string(), "enum Color { RED GREEN BLUE }".into()];
        let list: Vec<String> = args
            .iter()
            .enumerate()
            .map(|(i, f)| format!("f{i}: {}", sdl_type(f, &mut defs)))
            .collect();
        let sdl = format!("{}\ntype Query {{ q({}): Int }}", defs.join("\n"), list.join(", "));
        let (_, schema) = drafted(&sdl, "query.q");
        let mut seed = seed;
        let mut value = Value::Object(object_of(&args, &mut seed));
        prop_assert!(schema.check(&value).is_ok(), "{sdl}\n{value}\n{:?}", schema.check(&value));
        if let Some(pointer) = nested_object(&value, "") {
            let mut bad = value.clone();
            if let Some(Value::Object(inner)) = bad.pointer_mut(&pointer) {
                inner.insert("zz_unknown".into(), json!(1));
            }
            prop_assert!(schema.check(&bad).is_err(), "{sdl}\n{bad}");
        }
        if let Value::Object(m) = &mut value {
            m.insert("zz_unknown".into(), json!(1));
        }
        prop_assert!(schema.check(&value).is_err(), "{sdl}\n{value}");
    }

    #[test]
    fn any_text_is_read_or_refused_without_panicking(text in "\\PC{0,200}") {
        let _ = Sdl::parse(&text);
    }

    #[test]
    fn sdl_like_text_is_read_or_refused_without_panicking(
        text in "(type|input|enum|scalar|schema|extend|directive|@deprecated|@oneOf|[A-Za-z_]{1,6}|[{}()\\[\\]!:=,\"]|\"\"\"|[0-9.e-]{1,4}| |\n){0,60}",
    ) {
        if let Ok(sdl) = Sdl::parse(&text) {
            for op in [OperationType::Query, OperationType::Mutation] {
                let Some(root) = sdl.root(op) else { continue };
                if let Some(TypeDef::Object { fields }) = sdl.types.get(root) {
                    for f in fields {
                        let _ = arguments_schema(&sdl, op, root, f, "x");
                    }
                }
            }
        }
    }
}
