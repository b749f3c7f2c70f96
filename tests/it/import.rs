//! `toolgate contracts import`: contracts drafted from OpenAPI documents load, pass `check`,
//! and are enforced by the gateway; the output is byte-identical run to run; each bad input is
//! refused with its reason; the example schemas are what the import writes.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use crate::support::*;

const BIN: &str = env!("CARGO_BIN_EXE_toolgate");

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/specs")
        .join(rel)
}

/// The real binary with `args` (shared with `import_graphql.rs`).
pub(crate) fn toolgate(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

/// Its standard output, after asserting it succeeded.
pub(crate) fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Its standard error, after asserting it failed.
pub(crate) fn refused(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "expected a refusal; stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn import(spec: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "contracts",
        "import",
        spec.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    toolgate(&args)
}

const STRIPE_OPS: &[&str] = &[
    "--operation",
    "POST /v1/customers=customers.create",
    "--operation",
    "GET /v1/customers/{customer}=customers.retrieve",
    "--operation",
    "POST /v1/refunds=refunds.create",
];

/// Every file under `dir`, as (relative path, text), in name order.
fn files(dir: &Path) -> Vec<(String, String)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                out.push((rel, std::fs::read_to_string(&p).unwrap()));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

#[tokio::test]
async fn stripe_refunds_and_customers_import_check_and_enforce_nested_fields() {
    let out = tempfile::tempdir().unwrap();
    let mut args = vec![
        "--prefix",
        "stripe",
        "--omit-param",
        "expand",
        "--owner",
        "payments-team",
    ];
    args.extend_from_slice(STRIPE_OPS);
    let said = ok(&import(
        &fixture("stripe/openapi-fragment.json"),
        out.path(),
        &args,
    ));
    assert!(said.contains("3 tool(s)"), "{said}");
    assert!(
        said.contains("closed (additionalProperties: false)"),
        "{said}"
    );
    let toml = std::fs::read_to_string(out.path().join("stripe.toml")).unwrap();
    for want in [
        "name = \"stripe.refunds.create\"",
        "body = { format = \"form\", schema = \"schemas/stripe/refunds.create.json\" }",
        "query_schema = \"schemas/stripe/customers.retrieve.query.json\"",
        "side_effects = \"reversible\"  # guess from POST",
        "mode = \"auto\"  # guess from GET",
        "idempotency = \"payload\"",
        "path = \"/v1/customers/{customer}\"",
        "path_params = { customer = { maxLength = 5000, type = \"string\" } }",
        "summary = \"Retrieves a Customer object: customer {params.customer}\"",
    ] {
        assert!(toml.contains(want), "{want} missing from:\n{toml}");
    }
    // `check` accepts the folder as written.
    let checked = ok(&toolgate(&[
        "check",
        "--policies",
        out.path().to_str().unwrap(),
    ]));
    assert!(checked.contains("ok: 3 tools"), "{checked}");

    // Through the gateway (modes set to auto by the reviewer, an agent beside them).
    let pki = Pki::new("test upstream CA");
    let upstream = Upstream::start(pki.server_config(&["api.stripe.com"])).await;
    let agent = format!(
        "[[agent]]\nid = \"bot\"\ntoken_sha256 = \"{}\"\nowner = \"a@example.com\"\nenvironment = \"staging\"\ntools = [\"stripe.*\"]\n",
        sha256_hex(BOT_TOKEN)
    );
    let mut policies: Vec<(String, String)> = files(out.path())
        .into_iter()
        .map(|(n, t)| (n, t.replace("mode = \"approve\"", "mode = \"auto\"")))
        .collect();
    policies.push(("agents.toml".into(), agent));
    let policies: Vec<(&str, String)> = policies
        .iter()
        .map(|(n, t)| (n.as_str(), t.clone()))
        .collect();
    let (addr, ca) = (upstream.addr, pki.ca_path.clone());
    let gate = GateBuilder::new()
        .policies(&policies)
        .config(move |c| {
            c.add_connect_to(&format!("api.stripe.com:443={addr}"))
                .unwrap();
            c.upstream_ca.push(ca);
            c.upstream_timeout = Duration::from_millis(1500);
        })
        .start()
        .await;
    let bot = gate.bot();
    let customers = "https://api.stripe.com/v1/customers";
    let good = "email=ann%40example.com&address[city]=Paris&metadata[order]=42";
    let a = send(&bot, "POST", customers, &[FORM], good).await.unwrap();
    assert_eq!(a.status, 200, "{}", a.text());
    let nested = "email=ann%40example.com&address[city]=Paris&address[evil]=1";
    let a = send(&bot, "POST", customers, &[FORM], nested)
        .await
        .unwrap();
    assert_eq!(a.status, 422, "{}", a.text());
    assert!(a.message().contains("/address/evil"), "{}", a.message());
    let refunds = "https://api.stripe.com/v1/refunds";
    let a = send(
        &bot,
        "POST",
        refunds,
        &[FORM],
        "payment_intent=pi_1&amount=100",
    )
    .await
    .unwrap();
    assert_eq!(a.status, 200, "{}", a.text());
    let a = send(
        &bot,
        "POST",
        refunds,
        &[FORM],
        "payment_intent=pi_1&amount=ten",
    )
    .await
    .unwrap();
    assert_eq!(a.status, 422, "{}", a.text());
    let a = send(
        &bot,
        "POST",
        refunds,
        &[FORM],
        "payment_intent=pi_1&expand[]=charge",
    )
    .await
    .unwrap();
    assert_eq!(a.status, 422, "expand is omitted: {}", a.text());
    let a = send(&bot, "GET", &format!("{customers}/cus_1"), &[], "")
        .await
        .unwrap();
    assert_eq!(a.status, 200, "{}", a.text());
    let a = send(
        &bot,
        "GET",
        &format!("{customers}/cus_1?expand[]=x"),
        &[],
        "",
    )
    .await
    .unwrap();
    assert_eq!(a.status, 422, "{}", a.text());
    let sent: Vec<String> = upstream
        .received()
        .iter()
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert_eq!(
        sent,
        [
            "POST /v1/customers",
            "POST /v1/refunds",
            "GET /v1/customers/cus_1"
        ]
    );
}

/// Whole-API matching through the gateway: a literal segment wins over a parameter at the same
/// place, and a typed parameter refuses a value of another type (without changing the match).
#[tokio::test]
async fn a_literal_segment_wins_and_typed_parameters_hold_through_the_gateway() {
    let pki = Pki::new("test upstream CA");
    let upstream = Upstream::start(pki.server_config(&["api.stripe.com", "api.github.com"])).await;
    let tool = |name: &str, host: &str, path: &str, extra: &str| {
        format!("[[tool]]\nname = \"{name}\"\nhost = \"{host}\"\nmethod = \"GET\"\npath = \"{path}\"\n{extra}\n")
    };
    let policy = [
        format!(
            "[[agent]]\nid = \"bot\"\ntoken_sha256 = \"{}\"\nowner = \"a@example.com\"\nenvironment = \"staging\"\ntools = [\"t.search\", \"t.get\", \"t.issue\"]\n\n",
            sha256_hex(BOT_TOKEN)
        ),
        tool("t.get", "api.stripe.com", "/v1/customers/{customer}", ""),
        tool("t.search", "api.stripe.com", "/v1/customers/search", ""),
        tool(
            "t.issue",
            "api.github.com",
            "/repos/{owner}/{repo}/issues/{issue_number}",
            "path_params = { issue_number = { type = \"integer\", minimum = 1 } }",
        ),
        tool("t.comments", "api.github.com", "/repos/{owner}/{repo}/issues/comments", ""),
    ]
    .concat();
    let (addr, ca) = (upstream.addr, pki.ca_path.clone());
    let gate = GateBuilder::new()
        .policies(&[("p.toml", policy)])
        .config(move |c| {
            c.add_connect_to(&format!("api.stripe.com:443={addr}"))
                .unwrap();
            c.add_connect_to(&format!("api.github.com:443={addr}"))
                .unwrap();
            c.upstream_ca.push(ca);
            c.upstream_timeout = Duration::from_millis(1500);
        })
        .start()
        .await;
    let bot = gate.bot();
    let get = |url: &'static str| send(&bot, "GET", url, &[], "");
    let a = get("https://api.stripe.com/v1/customers/search")
        .await
        .unwrap();
    assert_eq!(a.status, 200, "{}", a.text());
    let a = get("https://api.stripe.com/v1/customers/cus_1")
        .await
        .unwrap();
    assert_eq!(a.status, 200, "{}", a.text());
    // The literal `comments` matched t.comments, which this agent may not use.
    let a = get("https://api.github.com/repos/acme/web/issues/comments")
        .await
        .unwrap();
    assert_eq!(a.status, 403, "{}", a.text());
    assert!(a.message().contains("t.comments"), "{}", a.message());
    let a = get("https://api.github.com/repos/acme/web/issues/12")
        .await
        .unwrap();
    assert_eq!(a.status, 200, "{}", a.text());
    for bad in ["abc", "0"] {
        let url = format!("https://api.github.com/repos/acme/web/issues/{bad}");
        let a = send(&bot, "GET", &url, &[], "").await.unwrap();
        assert_eq!(a.status, 422, "{}", a.text());
        assert!(a.message().contains("/issue_number"), "{}", a.message());
    }
    let sent: Vec<String> = upstream.received().iter().map(|r| r.path.clone()).collect();
    assert_eq!(
        sent,
        [
            "/v1/customers/search",
            "/v1/customers/cus_1",
            "/repos/acme/web/issues/12"
        ]
    );
}

#[test]
fn the_import_is_byte_identical_twice_and_never_overwrites_without_force() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let spec = fixture("github/openapi-fragment.json");
    let args = [
        "--prefix",
        "github",
        "--tag",
        "issues",
        "--tag",
        "repos",
        "--credential",
        "staging=github",
        "--credential",
        "prod=github",
    ];
    ok(&import(&spec, a.path(), &args));
    ok(&import(&spec, b.path(), &args));
    let (fa, fb) = (files(a.path()), files(b.path()));
    assert_eq!(fa, fb);
    assert_eq!(
        fa.len(),
        3,
        "{:?}",
        fa.iter().map(|f| &f.0).collect::<Vec<_>>()
    );
    let toml = &fa.iter().find(|f| f.0 == "github.toml").unwrap().1;
    assert!(
        toml.contains("credential = { prod = \"github\", staging = \"github\" }"),
        "{toml}"
    );
    assert!(toml.contains("name = \"github.repos.delete\""), "{toml}");
    assert!(
        toml.contains("side_effects = \"irreversible\"  # guess from DELETE"),
        "{toml}"
    );
    // The fragment stubs its response schemas: no fields to keep.
    assert!(!toml.contains("response ="), "{toml}");
    let again = refused(&import(&spec, a.path(), &args));
    assert!(again.contains("exists; pass --force"), "{again}");
    ok(&import(
        &spec,
        a.path(),
        &[&args[..], &["--force"][..]].concat(),
    ));
    assert_eq!(files(a.path()), fb);
    let listed = ok(&toolgate(&[
        "contracts",
        "import",
        spec.to_str().unwrap(),
        "--list",
    ]));
    assert!(
        listed.contains("PATCH") && listed.contains("issues/update"),
        "{listed}"
    );
}

/// The command lines that make `policies/schemas/` (the example contracts are written by hand;
/// their schemas come from the specs): the README shows the same.
fn example_imports() -> Vec<(&'static str, Vec<&'static str>)> {
    vec![
        (
            "stripe/openapi-fragment.json",
            [
                &["--prefix", "stripe", "--omit-param", "expand"][..],
                STRIPE_OPS,
                &[
                    "--operation",
                    "POST /v1/payment_intents=payment_intents.create",
                ],
            ]
            .concat(),
        ),
        (
            "github/openapi-fragment.json",
            vec![
                "--prefix",
                "github",
                "--operation-id",
                "issues/create",
                "--operation-id",
                "issues/update",
            ],
        ),
        (
            "sendgrid/openapi-fragment.json",
            vec![
                "--prefix",
                "sendgrid",
                "--operation",
                "POST /v3/mail/send=mail.send",
            ],
        ),
    ]
}

#[test]
fn the_example_schemas_are_what_the_import_writes() {
    let out = tempfile::tempdir().unwrap();
    let policies = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    for (spec, args) in example_imports() {
        ok(&import(
            &fixture(spec),
            out.path(),
            &[&args[..], &["--schemas-only"][..]].concat(),
        ));
    }
    let written = files(out.path());
    assert_eq!(
        written.len(),
        7,
        "{:?}",
        written.iter().map(|f| &f.0).collect::<Vec<_>>()
    );
    for (rel, text) in written {
        assert!(!rel.ends_with(".toml"), "--schemas-only wrote {rel}");
        let committed = std::fs::read_to_string(policies.join(&rel)).unwrap_or_default();
        assert!(committed == text, "policies/{rel} differs from what the import writes: regenerate it (README, \"Writing contracts\")");
    }
}

#[test]
fn bad_inputs_are_refused_with_their_reason() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let stripe = fixture("stripe/openapi-fragment.json");
    let cases: Vec<(PathBuf, Vec<&str>, &str)> = vec![
        (dir.path().join("missing.json"), vec!["--prefix", "x", "--tag", "t"], "cannot read"),
        (write("bad.json", "{\"openapi\": "), vec!["--prefix", "x", "--tag", "t"], "is not JSON or YAML"),
        (write("swagger.json", "{\"swagger\": \"2.0\"}"), vec!["--prefix", "x", "--tag", "t"], "at /openapi: missing"),
        (
            write("paths.yaml", "openapi: 3.0.3\nservers: [{url: 'https://x.example'}]\npaths:\n  /a:\n    get: 7\n"),
            vec!["--prefix", "x", "--path-prefix", "/"],
            "at /paths/~1a/get: an operation must be an object",
        ),
        (stripe.clone(), vec!["--prefix", "x", "--operation", "POST /v1/nope"], "operation POST /v1/nope is not in the spec"),
        (stripe.clone(), vec!["--prefix", "x", "--operation-id", "Nope"], "operationId \"Nope\" is not in the spec"),
        (stripe.clone(), vec!["--prefix", "x", "--tag", "nope"], "no operation of the spec has tag"),
        (stripe.clone(), vec!["--prefix", "x"], "choose operations"),
        (stripe.clone(), vec!["--prefix", "x/y", "--tag", "t"], "--prefix \"x/y\""),
        (stripe.clone(), vec!["--prefix", "x", "--path-prefix", "/v1", "--max-spec-bytes", "1000"], "larger than 1000 bytes"),
        (
            write(
                "ref.yaml",
                "openapi: 3.1.0\nservers: [{url: 'https://x.example'}]\npaths:\n  /a:\n    post:\n      requestBody:\n        content:\n          application/json:\n            schema: {$ref: '#/components/schemas/Gone'}\n",
            ),
            vec!["--prefix", "x", "--path-prefix", "/"],
            "$ref \"#/components/schemas/Gone\"",
        ),
        (
            write(
                "remote.yaml",
                "openapi: 3.1.0\nservers: [{url: 'https://x.example'}]\npaths:\n  /a:\n    post:\n      requestBody:\n        content:\n          application/json:\n            schema: {$ref: 'https://evil.example/s.json'}\n",
            ),
            vec!["--prefix", "x", "--path-prefix", "/"],
            "remote references are not fetched",
        ),
    ];
    for (spec, args, want) in cases {
        let said = refused(&import(&spec, &out, &args));
        assert!(said.contains(want), "{args:?}: {said:?} lacks {want:?}");
    }
    assert!(!out.exists(), "a refused import wrote nothing");
}

/// OpenAPI 3.1 in YAML, with a `$ref` to another file, a cycle, `readOnly`, 3.0-style
/// `nullable` and a server with a base path and a variable.
#[test]
fn yaml_with_refs_across_files_cycles_read_only_and_nullable() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("api.yaml"),
        r#"openapi: 3.1.0
info: {title: Tickets, version: "1"}
servers:
  - url: https://{region}.tickets.example/api/
    variables: {region: {default: eu}}
paths:
  /tickets/{ticket-id}:
    parameters:
      - {name: ticket-id, in: path, required: true, schema: {type: integer}}
    put:
      operationId: updateTicket
      summary: Update a ticket
      parameters:
        - {name: Idempotency-Key, in: header, schema: {type: string}}
        - {name: notify, in: query, required: true, schema: {type: boolean}}
      requestBody:
        content:
          application/json:
            schema: {$ref: 'common.yaml#/Ticket'}
      responses:
        200:
          content:
            application/json:
              schema: {$ref: 'common.yaml#/Ticket'}
"#,
    )
    .unwrap();
    std::fs::write(
        dir.path().join("common.yaml"),
        r#"Ticket:
  type: object
  required: [id, title]
  properties:
    id: {type: string, readOnly: true}
    title: {type: string, description: "what it is about", nullable: true}
    state: {type: string, enum: [open, closed], nullable: true}
    parent: {$ref: '#/Ticket'}
    tags: {type: object, additionalProperties: {type: string}}
"#,
    )
    .unwrap();
    let out = dir.path().join("out");
    let said = ok(&import(
        &dir.path().join("api.yaml"),
        &out,
        &["--prefix", "tix", "--path-prefix", "/tickets"],
    ));
    assert!(said.contains("tix.update_ticket"), "{said}");
    let toml = std::fs::read_to_string(out.join("tix.toml")).unwrap();
    for want in [
        "host = \"eu.tickets.example\"",
        "path = \"/api/tickets/{ticket_id}\"",
        "path_params = { ticket_id = { type = \"integer\" } }",
        "idempotency = \"key\"",
        "response = { keep = [\"/id\"] }",
    ] {
        assert!(toml.contains(want), "{want} missing from:\n{toml}");
    }
    let body: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("schemas/tix/update_ticket.json")).unwrap(),
    )
    .unwrap();
    assert!(
        body.pointer("/properties/id").is_none(),
        "readOnly dropped: {body}"
    );
    assert_eq!(body["required"], serde_json::json!(["title"]));
    assert_eq!(
        body.pointer("/properties/title/type").unwrap(),
        &serde_json::json!(["string", "null"])
    );
    assert_eq!(
        body.pointer("/properties/state/enum").unwrap(),
        &serde_json::json!(["open", "closed", null])
    );
    assert!(body.pointer("/properties/title/description").is_none());
    assert_eq!(body["additionalProperties"], false);
    assert!(
        body.pointer("/properties/tags/additionalProperties/type")
            .is_some(),
        "declared open stays open"
    );
    // The cycle: a parent's parent is closed off with a schema that refuses anything.
    assert_eq!(
        body.pointer("/properties/parent/properties/parent"),
        Some(&serde_json::json!(false))
    );
    let query: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("schemas/tix/update_ticket.query.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(query["required"], serde_json::json!(["notify"]));
    let checked = ok(&toolgate(&["check", "--policies", out.to_str().unwrap()]));
    assert!(checked.contains("ok: 1 tools"), "{checked}");
}

/// A tag of many operations, with literal segments beside parameters at the same place (as
/// every real API has), loads as one policy set.
#[test]
fn a_whole_tag_of_many_operations_loads() {
    let mut paths = serde_json::Map::new();
    let op = |id: String| {
        serde_json::json!({"operationId": id, "tags": ["things"], "summary": "x",
        "responses": {"200": {"description": "ok"}}})
    };
    for i in 0..150 {
        paths.insert(format!("/things/{{owner}}/t{i}/{{thing_id}}"), serde_json::json!({"get": op(format!("things/get-{i}")), "delete": op(format!("things/delete-{i}"))}));
        paths.insert(
            format!("/things/{{owner}}/t{i}/search"),
            serde_json::json!({"get": op(format!("things/search-{i}"))}),
        );
        paths.insert(
            format!("/things/{{owner}}/t{i}/{{thing_id}}/comments"),
            serde_json::json!({"get": op(format!("things/comments-{i}"))}),
        );
        paths.insert(
            format!("/things/{{owner}}/t{i}/comments/{{comment_id}}"),
            serde_json::json!({"get": op(format!("things/comment-{i}"))}),
        );
    }
    let spec = serde_json::json!({"openapi": "3.0.3", "servers": [{"url": "https://api.things.example"}], "paths": paths});
    let dir = tempfile::tempdir().unwrap();
    let spec_path = dir.path().join("things.json");
    std::fs::write(&spec_path, spec.to_string()).unwrap();
    let out = dir.path().join("out");
    ok(&import(
        &spec_path,
        &out,
        &["--prefix", "things", "--tag", "things"],
    ));
    let policy = toolgate::policy::Policy::load_dir(&out).unwrap();
    assert_eq!(policy.tools().len(), 750);
    let get = http::Method::GET;
    let m = policy
        .match_tool(
            "api.things.example",
            443,
            &get,
            "/things/acme/t7/comments/5",
        )
        .unwrap();
    assert_eq!(m.tool.name, "things.things.comment_7");
    let m = policy
        .match_tool("api.things.example", 443, &get, "/things/acme/t7/search")
        .unwrap();
    assert_eq!(m.tool.name, "things.things.search_7");
    let m = policy
        .match_tool(
            "api.things.example",
            443,
            &get,
            "/things/acme/t7/x1/comments",
        )
        .unwrap();
    assert_eq!(
        (m.tool.name.as_str(), m.params["thing_id"].as_str()),
        ("things.things.comments_7", "x1")
    );
}

/// GitHub's whole REST description (npm `@octokit/openapi`, installed with the SDKs in
/// tests/sdk): single operations and the whole `issues` tag import, pass `check` and load.
#[test]
fn the_github_rest_description_imports() {
    let spec = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/sdk/node_modules/@octokit/openapi/generated/api.github.com.json");
    if !spec.exists() {
        if std::env::var_os("TOOLGATE_REQUIRE_SDKS").is_some() {
            panic!("{} is missing (npm ci in tests/sdk)", spec.display());
        }
        eprintln!(
            "skipped: {} is not installed (run npm ci in tests/sdk)",
            spec.display()
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let single = dir.path().join("single");
    let said = ok(&import(
        &spec,
        &single,
        &[
            "--prefix",
            "github",
            "--operation-id",
            "issues/create",
            "--operation-id",
            "issues/update",
            "--operation-id",
            "repos/get",
            "--operation-id",
            "pulls/merge",
            "--operation-id",
            "git/delete-ref",
        ],
    ));
    assert!(said.contains("5 tool(s)"), "{said}");
    let toml = std::fs::read_to_string(single.join("github.toml")).unwrap();
    assert!(
        toml.contains("path = \"/repos/{owner}/{repo}/pulls/{pull_number}/merge\""),
        "{toml}"
    );
    assert!(toml.contains("method = \"PUT\""), "{toml}");
    let issue: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(single.join("schemas/github/issues.create.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(issue["additionalProperties"], false);
    assert!(issue.pointer("/properties/title").is_some());
    ok(&toolgate(&[
        "check",
        "--policies",
        single.to_str().unwrap(),
    ]));

    let tag = dir.path().join("tag");
    ok(&import(
        &spec,
        &tag,
        &["--prefix", "github", "--tag", "issues"],
    ));
    let started = std::time::Instant::now();
    let policy = toolgate::policy::Policy::load_dir(&tag).unwrap();
    eprintln!(
        "tag issues: {} tools loaded in {:?}",
        policy.tools().len(),
        started.elapsed()
    );
    assert!(policy.tools().len() >= 50, "{}", policy.tools().len());
    let get = http::Method::GET;
    let m = policy
        .match_tool(
            "api.github.com",
            443,
            &get,
            "/repos/acme/web/issues/comments",
        )
        .unwrap();
    assert_eq!(m.tool.name, "github.issues.list_comments_for_repo");
    let m = policy
        .match_tool("api.github.com", 443, &get, "/repos/acme/web/issues/12")
        .unwrap();
    assert_eq!(m.tool.name, "github.issues.get");
    ok(&toolgate(&["check", "--policies", tag.to_str().unwrap()]));

    // Every operation: the literal-before-parameter pairs of a whole API load side by side.
    let all = dir.path().join("all");
    ok(&import(
        &spec,
        &all,
        &["--prefix", "github", "--path-prefix", "/"],
    ));
    let started = std::time::Instant::now();
    let policy = toolgate::policy::Policy::load_dir(&all).unwrap();
    eprintln!(
        "the whole description: {} tools loaded in {:?}",
        policy.tools().len(),
        started.elapsed()
    );
    assert!(policy.tools().len() >= 1200, "{}", policy.tools().len());
    ok(&toolgate(&["check", "--policies", all.to_str().unwrap()]));
}
