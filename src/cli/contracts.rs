//! `toolgate contracts …`: drafting contracts from an API description, or from the calls agents
//! were refused because no contract matched them (DESIGN section 14).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use crate::audit::{UnmatchedCalls, UNMATCHED_MAX};
use crate::import::graphql::{self, GraphqlOptions};
use crate::import::suggest::{self, SuggestOptions};
use crate::import::{self, Options};

#[derive(Debug, Subcommand)]
pub enum ContractsCommand {
    /// Draft `[[tool]]`s and their JSON Schemas from an OpenAPI 3.0/3.1 document (JSON or
    /// YAML): writes DIR/PREFIX.toml and DIR/schemas/PREFIX/. The same spec and flags write the
    /// same bytes.
    Import(Box<ImportArgs>),
    /// Draft `[[tool]]`s from the calls agents were refused because no contract matched them
    /// (read from the audit log of a running server, or with --data-dir of a stopped one):
    /// grouped by host, method and path template, each with the refused calls it would have
    /// admitted and by which agents. It suggests, never applies: prints the TOML (or writes it
    /// with --out) for a person to review and put into the policies folder.
    Suggest(Box<SuggestArgs>),
    /// Draft `[[tool]]`s for GraphQL root fields and the JSON Schemas of their arguments from a
    /// GraphQL schema (SDL) file, such as GitHub's schema.graphql (npm @octokit/graphql-schema):
    /// writes DIR/PREFIX-graphql.toml and DIR/schemas/PREFIX-graphql/FIELD.json with --out,
    /// else prints them. Queries are drafted as reads; mutations with the most cautious defaults
    /// (irreversible, approve, high risk) for a reviewer to loosen.
    Graphql(Box<GraphqlArgs>),
}

#[derive(Debug, Args)]
pub struct GraphqlArgs {
    /// The schema in GraphQL SDL (a local file).
    pub schema: PathBuf,
    /// A root field, OPERATION.FIELD (e.g. mutation.createIssue, query.repository). Repeatable.
    #[arg(long = "field", required = true)]
    pub fields: Vec<String>,
    /// The API's host (e.g. api.github.com).
    #[arg(long)]
    pub host: String,
    /// The GraphQL endpoint's path.
    #[arg(long, default_value = "/graphql")]
    pub path: String,
    /// Tool names are PREFIX.graphql.FIELD (default: from the host, api.github.com → github).
    #[arg(long)]
    pub prefix: Option<String>,
    /// ENV=NAME: the tools use credential NAME for agents of environment ENV. Repeatable.
    #[arg(long = "credential")]
    pub credentials: Vec<String>,
    /// The owner the tools name (the team that answers for them).
    #[arg(long)]
    pub owner: Option<String>,
    /// Write PREFIX-graphql.toml and schemas/PREFIX-graphql/ here instead of printing them.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Overwrite files that exist (with --out).
    #[arg(long)]
    pub force: bool,
    /// The most bytes read from the schema file.
    #[arg(long, default_value_t = import::spec::MAX_SPEC_BYTES)]
    pub max_schema_bytes: u64,
}

#[derive(Debug, Args)]
pub struct SuggestArgs {
    /// Only calls refused since this time (RFC 3339, YYYY-MM-DD or unix seconds).
    #[arg(long)]
    pub since: Option<String>,
    /// Only this agent's calls.
    #[arg(long)]
    pub agent: Option<String>,
    /// An OpenAPI document (local file): its path templates win over the guessed ones, and its
    /// schemas describe the bodies and queries instead of the inferred ones.
    #[arg(long)]
    pub spec: Option<PathBuf>,
    /// Tool names start with PREFIX.; --out writes PREFIX.toml and schemas/PREFIX/.
    #[arg(long, default_value = "suggested")]
    pub prefix: String,
    /// Write PREFIX.toml and schemas/PREFIX/ here instead of printing them.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Overwrite files that exist (with --out).
    #[arg(long)]
    pub force: bool,
    /// The most bytes read from the spec and the files it names.
    #[arg(long, default_value_t = import::spec::MAX_SPEC_BYTES)]
    pub max_spec_bytes: u64,
    /// Open the store of a stopped toolgate directly instead of asking a running one.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    #[command(flatten)]
    pub server: super::ServerArgs,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The OpenAPI document (a local file; the files its $refs name are read beside it).
    pub spec: PathBuf,
    /// Print the operations the spec offers (method, path, operationId, summary) and exit.
    #[arg(long)]
    pub list: bool,
    /// Tool names start with PREFIX.; the files are PREFIX.toml and schemas/PREFIX/.
    #[arg(long, required_unless_present = "list")]
    pub prefix: Option<String>,
    /// An operation, 'METHOD PATH' (e.g. 'POST /v1/refunds'); 'METHOD PATH=NAME' names its
    /// tool PREFIX.NAME. Repeatable.
    #[arg(long = "operation")]
    pub operations: Vec<String>,
    /// An operation by its operationId. Repeatable.
    #[arg(long = "operation-id")]
    pub operation_ids: Vec<String>,
    /// Every operation with this tag. Repeatable.
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// Every operation whose path starts with this.
    #[arg(long)]
    pub path_prefix: Option<String>,
    /// The API's host (default: the spec's first server).
    #[arg(long)]
    pub host: Option<String>,
    /// ENV=NAME: the tools use credential NAME for agents of environment ENV. Repeatable.
    #[arg(long = "credential")]
    pub credentials: Vec<String>,
    /// The owner the tools name (the team that answers for them).
    #[arg(long)]
    pub owner: Option<String>,
    /// A query parameter or top-level body field left out of every schema (so refused),
    /// whatever the spec says: e.g. Stripe's expand. Repeatable.
    #[arg(long = "omit-param")]
    pub omit_params: Vec<String>,
    /// Where to write PREFIX.toml and schemas/PREFIX/.
    #[arg(long, required_unless_present = "list")]
    pub out: Option<PathBuf>,
    /// Write the schemas only (for contracts kept by hand that take their schemas from a spec).
    #[arg(long)]
    pub schemas_only: bool,
    /// Overwrite files that exist.
    #[arg(long)]
    pub force: bool,
    /// The most bytes read from the spec and the files it names.
    #[arg(long, default_value_t = import::spec::MAX_SPEC_BYTES)]
    pub max_spec_bytes: u64,
}

pub async fn run(command: ContractsCommand) -> ExitCode {
    match command {
        ContractsCommand::Import(args) => import_cmd(*args),
        ContractsCommand::Suggest(args) => suggest_cmd(*args).await,
        ContractsCommand::Graphql(args) => graphql_cmd(*args),
    }
}

/// `--credential ENV=NAME`s as pairs.
fn credential_pairs(given: &[String]) -> Result<Vec<(String, String)>, String> {
    given
        .iter()
        .map(|c| match c.split_once('=') {
            Some((env, name)) if !env.is_empty() && !name.is_empty() => {
                Ok((env.to_string(), name.to_string()))
            }
            _ => Err(format!(
                "--credential {c:?} is not ENV=NAME (e.g. prod=github)"
            )),
        })
        .collect()
}

/// `contracts graphql`: the chosen fields of an SDL file drafted, written with --out or printed.
fn graphql_cmd(args: GraphqlArgs) -> ExitCode {
    let credentials = match credential_pairs(&args.credentials) {
        Ok(c) => c,
        Err(e) => return super::fail(&e),
    };
    let opts = GraphqlOptions {
        sdl: args.schema,
        fields: args.fields,
        host: args.host,
        path: args.path,
        prefix: args.prefix,
        credentials,
        owner: args.owner,
        max_bytes: args.max_schema_bytes,
    };
    let drafted = match graphql::draft(&opts) {
        Ok(d) => d,
        Err(e) => return super::fail(&e.to_string()),
    };
    let tools = drafted.imported.tools.join(", ");
    let Some(out) = &args.out else {
        say!(raw "{}", drafted.imported.printable(&drafted.stem));
        eprintln!(
            "{} tool(s): {tools}. Review before deploying.",
            drafted.imported.tools.len()
        );
        return ExitCode::SUCCESS;
    };
    match import::write(out, &drafted.stem, &drafted.imported, args.force, false) {
        Ok(written) => {
            for path in &written {
                say!("wrote {}", path.display());
            }
            say!(
                "{} tool(s): {tools}. Review before deploying: mutations are drafted irreversible, held for approval and high risk",
                drafted.imported.tools.len()
            );
            ExitCode::SUCCESS
        }
        Err(e) => super::fail(&e.to_string()),
    }
}

/// `contracts suggest`: the refused calls, read offline or from the server, drafted.
async fn suggest_cmd(args: SuggestArgs) -> ExitCode {
    let read = match &args.data_dir {
        Some(dir) => super::audit::open_offline(Some(dir.as_path()), false).and_then(|a| match a {
            Some(a) => a.unmatched(args.since.clone(), args.agent.clone(), UNMATCHED_MAX),
            None => Err("no audit log".into()),
        }),
        None => {
            let q = crate::client::query_param;
            let path = format!(
                "/api/traffic/no-contract?{}{}",
                q("since", &args.since),
                q("agent", &args.agent)
            );
            args.server.client().get(&path).await.and_then(|v| {
                serde_json::from_value::<UnmatchedCalls>(v)
                    .map_err(|e| format!("the server's answer does not read: {e}"))
            })
        }
    };
    let read = match read {
        Ok(r) => r,
        Err(e) => return super::fail(&e),
    };
    let opts = SuggestOptions {
        prefix: args.prefix.clone(),
        spec: args.spec.clone(),
        max_spec_bytes: args.max_spec_bytes,
    };
    let drafted = match suggest::suggest(&read.calls, &opts) {
        Ok(d) => d,
        Err(e) => return super::fail(&e.to_string()),
    };
    if read.truncated {
        eprintln!("note: only the newest {UNMATCHED_MAX} refused calls were read; narrow with --since or --agent");
    }
    eprintln!(
        "{} call(s) refused for want of a contract; {} drafted tool(s). Review before deploying: nothing was applied.",
        read.calls.len(),
        drafted.groups.len()
    );
    let Some(out) = &args.out else {
        say!(raw "{}", suggest::printable(&drafted, &args.prefix));
        return ExitCode::SUCCESS;
    };
    if drafted.groups.is_empty() {
        return ExitCode::SUCCESS;
    }
    match import::write(out, &args.prefix, &drafted.imported, args.force, false) {
        Ok(written) => {
            for path in &written {
                say!("wrote {}", path.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => super::fail(&e.to_string()),
    }
}

fn import_cmd(args: ImportArgs) -> ExitCode {
    if args.list {
        return match import::list(&args.spec, args.max_spec_bytes) {
            Ok(ops) => {
                for o in ops {
                    say!(
                        "{:<7} {:<60} {:<40} {}",
                        o.method,
                        o.path,
                        o.operation_id,
                        o.summary
                    );
                }
                ExitCode::SUCCESS
            }
            Err(e) => super::fail(&e.to_string()),
        };
    }
    let credentials = match credential_pairs(&args.credentials) {
        Ok(c) => c,
        Err(e) => return super::fail(&e),
    };
    let (Some(prefix), Some(out)) = (args.prefix, args.out) else {
        return super::fail("--prefix and --out are required");
    };
    let opts = Options {
        spec: args.spec,
        prefix,
        operations: args.operations,
        operation_ids: args.operation_ids,
        tags: args.tags,
        path_prefix: args.path_prefix,
        host: args.host,
        credentials,
        owner: args.owner,
        omit_params: args.omit_params,
        max_spec_bytes: args.max_spec_bytes,
    };
    let imported = match import::import(&opts) {
        Ok(i) => i,
        Err(e) => return super::fail(&e.to_string()),
    };
    let written = match import::write(&out, &opts.prefix, &imported, args.force, args.schemas_only)
    {
        Ok(w) => w,
        Err(e) => return super::fail(&e.to_string()),
    };
    for note in &imported.notes {
        eprintln!("note: {note}");
    }
    for path in &written {
        say!("wrote {}", path.display());
    }
    say!(
        "{} tool(s): {}; {} object schema(s) closed (additionalProperties: false) where the spec said nothing",
        imported.tools.len(),
        imported.tools.join(", "),
        imported.closed
    );
    ExitCode::SUCCESS
}
