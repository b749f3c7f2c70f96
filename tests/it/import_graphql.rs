//! `toolgate contracts graphql`: contracts drafted from GitHub's GraphQL schema (a trimmed
//! excerpt in tests/fixtures, and the whole `schema.graphql` of `@octokit/graphql-schema` when it
//! is installed beside the SDKs) pass `check`; the drafted argument schemas accept and refuse the
//! same arguments as the hand-written examples in policies/schemas/github-graphql/; the output is
//! byte-identical run to run; each bad input is refused with its reason and nothing written.

use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::{json, Value};
use toolgate::policy::contract::Schema;

use crate::import::{ok, refused, toolgate};

/// Where the whole schema is read from instead of the SDKs' node_modules.
const SCHEMA_ENV: &str = "TOOLGATE_GRAPHQL_SCHEMA";

/// The six fields of policies/github-graphql.toml.
const FIELDS: &[&str] = &[
    "query.viewer",
    "query.repository",
    "mutation.createIssue",
    "mutation.addComment",
    "mutation.mergePullRequest",
    "mutation.deleteRef",
];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn excerpt() -> PathBuf {
    root().join("tests/fixtures/graphql/github-excerpt.graphql")
}

/// `contracts graphql SDL --host api.github.com --field …` with `extra` after.
fn draft(sdl: &Path, fields: &[&str], extra: &[&str]) -> Output {
    let mut args = vec![
        "contracts",
        "graphql",
        sdl.to_str().unwrap(),
        "--host",
        "api.github.com",
    ];
    for f in fields {
        args.extend(["--field", f]);
    }
    args.extend_from_slice(extra);
    toolgate(&args)
}

fn schema(path: &Path) -> Schema {
    Schema::load(path).unwrap()
}

/// Arguments each example schema and each drafted one must agree on: (field, arguments,
/// accepted).
fn samples() -> Vec<(&'static str, Value, bool)> {
    vec![
        (
            "createIssue",
            json!({"input": {"repositoryId": "R_1", "title": "Bug"}}),
            true,
        ),
        (
            "createIssue",
            json!({"input": {"repositoryId": "R_1", "title": "Bug", "body": "text",
                "labelIds": ["L_1"], "assigneeIds": null, "milestoneId": null,
                "clientMutationId": "c1"}}),
            true,
        ),
        (
            "createIssue",
            json!({"input": {"repositoryId": "R_1"}}),
            false,
        ),
        ("createIssue", json!({"input": {"title": "Bug"}}), false),
        (
            "createIssue",
            json!({"input": {"repositoryId": "R_1", "title": 5}}),
            false,
        ),
        (
            "createIssue",
            json!({"input": {"repositoryId": "R_1", "title": "B", "labelIds": [1]}}),
            false,
        ),
        (
            "createIssue",
            json!({"input": {"repositoryId": "R_1", "title": "B", "state": "OPEN"}}),
            false,
        ),
        (
            "createIssue",
            json!({"input": {"repositoryId": "R_1", "title": "B"}, "extra": 1}),
            false,
        ),
        ("createIssue", json!({}), false),
        ("createIssue", json!({"input": null}), false),
        ("repository", json!({"owner": "acme", "name": "web"}), true),
        (
            "repository",
            json!({"owner": "acme", "name": "web", "followRenames": false}),
            true,
        ),
        ("repository", json!({"owner": "acme"}), false),
        (
            "repository",
            json!({"owner": "acme", "name": "web", "x": 1}),
            false,
        ),
        (
            "addComment",
            json!({"input": {"subjectId": "I_1", "body": "hi"}}),
            true,
        ),
        ("addComment", json!({"input": {"subjectId": "I_1"}}), false),
        (
            "mergePullRequest",
            json!({"input": {"pullRequestId": "PR_1", "mergeMethod": "SQUASH"}}),
            true,
        ),
        (
            "mergePullRequest",
            json!({"input": {"pullRequestId": "PR_1", "mergeMethod": "FAST"}}),
            false,
        ),
        (
            "mergePullRequest",
            json!({"input": {"mergeMethod": "MERGE"}}),
            false,
        ),
        ("deleteRef", json!({"input": {"refId": "REF_1"}}), true),
        (
            "deleteRef",
            json!({"input": {"refId": "REF_1", "force": true}}),
            false,
        ),
        ("deleteRef", json!({"input": {}}), false),
    ]
}

/// Drafts the six fields from `sdl` into a fresh folder, checks it, and holds the drafted
/// schemas to the samples (and to the examples' verdicts on them).
fn draft_check_and_compare(sdl: &Path) {
    let out = tempfile::tempdir().unwrap();
    let said = ok(&draft(
        sdl,
        FIELDS,
        &["--out", out.path().to_str().unwrap()],
    ));
    assert!(
        said.contains("6 tool(s): github.graphql.viewer, github.graphql.repository"),
        "{said}"
    );
    let toml = std::fs::read_to_string(out.path().join("github-graphql.toml")).unwrap();
    for want in [
        "name = \"github.graphql.createIssue\"",
        "graphql = \"mutation.createIssue\"",
        "arguments = \"schemas/github-graphql/createIssue.json\"",
        "graphql = \"query.viewer\"\n# viewer takes no arguments",
        "side_effects = \"irreversible\"  # mutation default: review",
        "mode = \"approve\"  # mutation default: review",
        "description = \"Lookup a given repository by the owner and repository name\"",
    ] {
        assert!(toml.contains(want), "{want} missing from:\n{toml}");
    }
    let checked = ok(&toolgate(&[
        "check",
        "--policies",
        out.path().to_str().unwrap(),
    ]));
    assert!(checked.contains("ok: 6 tools"), "{checked}");
    let examples = root().join("policies/schemas/github-graphql");
    let drafted = out.path().join("schemas/github-graphql");
    for (field, args, accepted) in samples() {
        let file = format!("{field}.json");
        let (example, ours) = (schema(&examples.join(&file)), schema(&drafted.join(&file)));
        assert_eq!(
            example.check(&args).is_ok(),
            accepted,
            "example {field}: {args}"
        );
        assert_eq!(
            ours.check(&args).is_ok(),
            accepted,
            "drafted {field}: {args}: {:?}",
            ours.check(&args)
        );
    }
}

#[test]
fn github_excerpt_drafts_pass_check_and_agree_with_the_examples() {
    draft_check_and_compare(&excerpt());
}

#[test]
fn the_output_is_the_same_bytes_printed_or_written_and_never_overwritten() {
    let first = tempfile::tempdir().unwrap();
    let second = tempfile::tempdir().unwrap();
    for dir in [&first, &second] {
        ok(&draft(
            &excerpt(),
            FIELDS,
            &["--out", dir.path().to_str().unwrap()],
        ));
    }
    let toml = |d: &Path| std::fs::read_to_string(d.join("github-graphql.toml")).unwrap();
    assert_eq!(toml(first.path()), toml(second.path()));
    let schema_file = |d: &Path| {
        std::fs::read_to_string(d.join("schemas/github-graphql/mergePullRequest.json")).unwrap()
    };
    assert_eq!(schema_file(first.path()), schema_file(second.path()));
    // Again into the same folder: refused, nothing changed; --force overwrites.
    let again = refused(&draft(
        &excerpt(),
        FIELDS,
        &["--out", first.path().to_str().unwrap()],
    ));
    assert!(again.contains("exists; pass --force"), "{again}");
    ok(&draft(
        &excerpt(),
        &["mutation.deleteRef"],
        &[
            "--out",
            first.path().to_str().unwrap(),
            "--force",
            "--prefix",
            "gh",
            "--credential",
            "prod=github",
        ],
    ));
    let gh = std::fs::read_to_string(first.path().join("gh-graphql.toml")).unwrap();
    assert!(gh.contains("name = \"gh.graphql.deleteRef\""), "{gh}");
    assert!(gh.contains("credential = { prod = \"github\" }"), "{gh}");
    // Without --out: the TOML and the schemas as comments, on standard output.
    let printed = ok(&draft(&excerpt(), &["mutation.deleteRef"], &[]));
    assert!(
        printed.contains("name = \"github.graphql.deleteRef\""),
        "{printed}"
    );
    assert!(
        printed.contains("# --- schemas/github-graphql/deleteRef.json"),
        "{printed}"
    );
    toml::from_str::<toml::Value>(&printed).unwrap();
}

#[test]
fn bad_fields_and_bad_schemas_are_refused_and_nothing_is_written() {
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().to_str().unwrap();
    let bad_sdl = out.path().join("bad.graphql");
    std::fs::write(&bad_sdl, "type Query {\n  a(x: Int: Int\n}\n").unwrap();
    let sub_sdl = out.path().join("sub.graphql");
    std::fs::write(
        &sub_sdl,
        "type Query { a: Int }\ntype Subscription { s: Int }\n",
    )
    .unwrap();
    let cases: Vec<(PathBuf, Vec<&str>, Vec<&str>, &str)> = vec![
        (
            excerpt(),
            vec!["mutation.createIsue"],
            vec![],
            "did you mean mutation.createIssue",
        ),
        (
            excerpt(),
            vec!["createIssue"],
            vec![],
            "is not OPERATION.FIELD",
        ),
        (
            sub_sdl,
            vec!["subscription.s"],
            vec![],
            "subscriptions cannot be contracted",
        ),
        (
            bad_sdl,
            vec!["query.a"],
            vec![],
            "is not a GraphQL schema (SDL)",
        ),
        (
            out.path().join("missing.graphql"),
            vec!["query.a"],
            vec![],
            "cannot read",
        ),
        (
            excerpt(),
            vec!["query.viewer"],
            vec!["--path", "/graphql/{v}"],
            "literal",
        ),
        (
            excerpt(),
            vec!["query.viewer"],
            vec!["--credential", "github"],
            "is not ENV=NAME",
        ),
        (
            excerpt(),
            vec!["query.viewer"],
            vec!["--max-schema-bytes", "10"],
            "--max-schema-bytes",
        ),
    ];
    for (sdl, fields, extra, want) in cases {
        let mut extra = extra;
        extra.extend(["--out", dir]);
        let e = refused(&draft(&sdl, &fields, &extra));
        assert!(e.contains(want), "{fields:?} {extra:?}: {e}");
        let written: Vec<_> = std::fs::read_dir(out.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| !n.to_string_lossy().ends_with(".graphql"))
            .collect();
        assert!(written.is_empty(), "{fields:?}: wrote {written:?}");
    }
    let usage = refused(&toolgate(&[
        "contracts",
        "graphql",
        "x.graphql",
        "--host",
        "h",
    ]));
    assert!(usage.contains("--field"), "{usage}");
}

/// GitHub's whole schema, when the SDKs are installed (or `TOOLGATE_GRAPHQL_SCHEMA` names it).
#[test]
fn githubs_whole_schema_drafts_the_six_example_fields() {
    let path = match std::env::var_os(SCHEMA_ENV) {
        Some(p) => PathBuf::from(p),
        None => root().join("tests/sdk/node_modules/@octokit/graphql-schema/schema.graphql"),
    };
    if !path.exists() {
        let why = format!(
            "{} is missing (npm @octokit/graphql-schema)",
            path.display()
        );
        if std::env::var("TOOLGATE_REQUIRE_SDKS").as_deref() == Ok("1") {
            panic!("TOOLGATE_REQUIRE_SDKS=1 but {why}");
        }
        crate::support::skips::skipped(
            "githubs_whole_schema_drafts_the_six_example_fields",
            &why,
            &format!(
                "{}; or set {SCHEMA_ENV} to a schema.graphql",
                crate::support::skips::SDKS
            ),
        );
        return;
    }
    draft_check_and_compare(&path);
}
