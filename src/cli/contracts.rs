//! `toolgate contracts …`: drafting contracts from an API description (DESIGN section 14).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use crate::import::{self, Options};

#[derive(Debug, Subcommand)]
pub enum ContractsCommand {
    /// Draft `[[tool]]`s and their JSON Schemas from an OpenAPI 3.0/3.1 document (JSON or
    /// YAML): writes DIR/PREFIX.toml and DIR/schemas/PREFIX/. The same spec and flags write the
    /// same bytes.
    Import(Box<ImportArgs>),
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

pub fn run(command: ContractsCommand) -> ExitCode {
    match command {
        ContractsCommand::Import(args) => import_cmd(*args),
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
    let mut credentials = Vec::new();
    for c in &args.credentials {
        match c.split_once('=') {
            Some((env, name)) if !env.is_empty() && !name.is_empty() => {
                credentials.push((env.to_string(), name.to_string()))
            }
            _ => {
                return super::fail(&format!(
                    "--credential {c:?} is not ENV=NAME (e.g. prod=github)"
                ))
            }
        }
    }
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
