//! The command line of DESIGN section 6: the clap types and the dispatch. Each command group
//! lives in a file of its own; those that act on a running server go through
//! [`crate::client`], the admin API's client.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::approval::Action;
use crate::client::AdminClient;
use crate::config::env;

/// Writes to standard output. A reader that went away (`toolgate audit story ID | head -1`)
/// ends the command quietly, as Unix tools do, instead of a panic on the closed pipe.
macro_rules! say {
    () => { $crate::cli::write_out(format_args!(""), true) };
    (raw $($t:tt)*) => { $crate::cli::write_out(format_args!($($t)*), false) };
    ($($t:tt)*) => { $crate::cli::write_out(format_args!($($t)*), true) };
}

/// [`say!`]'s writer: any other write error is reported once on standard error.
pub(crate) fn write_out(text: std::fmt::Arguments<'_>, newline: bool) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let written = out
        .write_fmt(text)
        .and_then(|()| {
            if newline {
                out.write_all(b"\n")
            } else {
                Ok(())
            }
        })
        .and_then(|()| out.flush());
    match written {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => {
            eprintln!("error: could not write the output: {e}");
            std::process::exit(1)
        }
    }
}

mod approvals;
mod audit;
mod ca;
mod check;
mod connections;
mod contracts;
mod db;
mod explain;
mod grants;
mod mcp;
mod rollback;
mod serve;
mod switches;
mod test;
mod tokens;

pub use audit::AuditCommand;
pub use ca::CaCommand;
pub use connections::ConnectionsCommand;
pub use contracts::{ContractsCommand, GraphqlArgs, ImportArgs, SuggestArgs};
pub use db::DbCommand;
pub use explain::ExplainArgs;
pub use grants::GrantsCommand;
pub use mcp::McpCommand;
pub use serve::ServeArgs;
pub use switches::SwitchCommand;
pub use test::TestArgs;
pub use tokens::TokensCommand;

#[derive(Debug, Parser)]
#[command(
    name = "toolgate",
    version,
    about = "An egress gateway that makes AI-agent tool calls safe to run in production"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy and the admin listener.
    Serve(Box<ServeArgs>),
    /// Run the policies (the examples by default) against a built-in local sandbox of the
    /// example APIs (Stripe, GitHub, SendGrid, the tickets MCP server), and print the next
    /// steps: a read, a refusal, a held refund, its approval and its story. Takes serve's flags.
    Demo(Box<ServeArgs>),
    /// Manage the local certificate authority agents trust.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
    /// The PostgreSQL store: `db migrate` applies this version's schema migrations and exits.
    Db {
        #[command(subcommand)]
        command: DbCommand,
    },
    /// MCP servers: `mcp pin URL` lists a server's tools with their current pins.
    Mcp {
        #[command(subcommand)]
        command: McpCommand,
    },
    /// Draft tool contracts: `contracts import SPEC` from an OpenAPI document, `contracts
    /// suggest` from the calls agents were refused because no contract matched them.
    Contracts {
        #[command(subcommand)]
        command: ContractsCommand,
    },
    /// Validate a policy folder without serving; prints the tools, warns of likely mistakes
    /// (file:line), and exits non-zero on error (and, with --strict, on a warning).
    Check {
        #[arg(long, env = env::POLICIES, default_value = "./policies")]
        policies: PathBuf,
        /// Treat the warnings (a glob that names no tool, an approval group without approvers,
        /// an unused credential, a tool no agent may call) as errors.
        #[arg(long)]
        strict: bool,
    },
    /// Run policy test cases (POLICIES/tests/*.toml, or the files named) through the proxy's
    /// decision phases, without network or store: a table of PASS/FAIL, and for a failure what
    /// was decided and why. Exits non-zero when a case fails.
    Test(TestArgs),
    /// One request through the proxy's decision phases, without network or store, each phase's
    /// verdict printed: the contract it matched (or the closest ones and why not), the schema
    /// error, the rule. What to run when an agent says "I was refused".
    Explain(Box<ExplainArgs>),
    /// Short-lived agent tokens, through a running server's admin API (group admin, or a group
    /// the agent names in token_issuers).
    Tokens {
        #[command(subcommand)]
        command: TokensCommand,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// People's OAuth connections (a one-time link to connect, the list, revocation), through a
    /// running server's admin API (group admin, or an agent's token issuers).
    Connections {
        #[command(subcommand)]
        command: ConnectionsCommand,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Time-bound grants, through a running server's admin API (group admin).
    Grants {
        #[command(subcommand)]
        command: GrantsCommand,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// List proposals waiting for approval, through a running server's admin API.
    Pending {
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Approve a proposal.
    Approve(Decision),
    /// Deny a proposal.
    Deny(Decision),
    /// Revoke an approval before its commit starts.
    Revoke(Decision),
    /// Undo one committed call (request or proposal id), or a job's calls newest first, through
    /// a running server. Exits non-zero unless everything asked for was undone.
    Rollback {
        /// A request id or a proposal id.
        #[arg(required_unless_present = "job", conflicts_with = "job")]
        id: Option<String>,
        /// Undo every committed call of this job, newest first, going on past failures.
        #[arg(long)]
        job: Option<String>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Re-send the recorded calls of a request, proposal or job to a sandbox, with each tool's
    /// `sandbox` credential (admins only). Never sends to a host a contract names.
    Replay {
        id: String,
        /// The sandbox, HOST:PORT (HTTPS).
        #[arg(long)]
        to: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// The audit log: stories, search, export, verify, purge.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
        #[command(flatten)]
        server: ServerArgs,
        /// Open the store of a stopped toolgate directly instead of asking a running one.
        #[arg(long, global = true)]
        data_dir: Option<PathBuf>,
    },
    /// Kill switches for tools, through a running server's admin API.
    Tools {
        #[command(subcommand)]
        command: SwitchCommand,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Kill switches for agents, through a running server's admin API.
    Agents {
        #[command(subcommand)]
        command: SwitchCommand,
        #[command(flatten)]
        server: ServerArgs,
    },
}

/// Where the admin API is; the approver token comes from TOOLGATE_TOKEN.
#[derive(Debug, clap::Args)]
pub struct ServerArgs {
    #[arg(long, env = env::SERVER, default_value = "http://127.0.0.1:8081", global = true)]
    pub server: String,
    /// CA certificates (PEM) to trust for an https:// --server, besides the public roots.
    #[arg(long, env = env::CACERT, global = true)]
    pub cacert: Option<std::path::PathBuf>,
}

/// A decision on a proposal: `approve`, `deny` or `revoke` ID.
#[derive(Debug, clap::Args)]
pub struct Decision {
    pub id: String,
    #[arg(long)]
    pub comment: Option<String>,
    #[command(flatten)]
    pub server: ServerArgs,
}

impl ServerArgs {
    fn client(&self) -> AdminClient<'_> {
        AdminClient::new(&self.server).with_cacert(self.cacert.as_deref())
    }
}

/// Runs a parsed command line. Returns the process exit code.
impl Cli {
    /// How traces are exported, for `serve` and `demo` with an OTLP endpoint (the flag or the
    /// standard variables); None otherwise.
    pub fn traces(&self) -> Result<Option<crate::telemetry::Settings>, String> {
        match &self.command {
            Command::Serve(args) | Command::Demo(args) => {
                crate::telemetry::Settings::from_env(args.otlp_endpoint.as_deref())
            }
            _ => Ok(None),
        }
    }
}

pub async fn main(cli: Cli, telemetry: Option<crate::telemetry::Telemetry>) -> ExitCode {
    match cli.command {
        Command::Serve(args) => serve::serve(*args, telemetry).await,
        Command::Demo(args) => serve::demo(*args, telemetry).await,
        Command::Ca { command } => ca::run(command),
        Command::Check { policies, strict } => check::run(&policies, strict),
        Command::Contracts { command } => contracts::run(command).await,
        Command::Test(args) => test::run(args),
        Command::Explain(args) => explain::run(*args),
        Command::Mcp { command } => mcp::run(command).await,
        Command::Db { command } => db::run(command).await,
        Command::Pending { server } => approvals::pending(server.client()).await,
        Command::Approve(d) => approvals::decide(d, Action::Approve).await,
        Command::Deny(d) => approvals::decide(d, Action::Deny).await,
        Command::Revoke(d) => approvals::decide(d, Action::Revoke).await,
        Command::Tokens { command, server } => tokens::run(server.client(), command).await,
        Command::Connections { command, server } => {
            connections::run(server.client(), command).await
        }
        Command::Grants { command, server } => grants::run(server.client(), command).await,
        Command::Audit {
            command,
            server,
            data_dir,
        } => audit::run(command, server.client(), data_dir).await,
        Command::Rollback {
            id,
            job,
            json,
            server,
        } => rollback::rollback(server.client(), id, job, json).await,
        Command::Replay {
            id,
            to,
            json,
            server,
        } => rollback::replay(server.client(), &id, &to, json).await,
        Command::Tools { command, server } => {
            switches::run(server.client(), crate::model::KillScope::Tool, command).await
        }
        Command::Agents { command, server } => {
            switches::run(server.client(), crate::model::KillScope::Agent, command).await
        }
    }
}

/// The error on standard error, and the exit code that says so.
fn fail(message: &str) -> ExitCode {
    eprintln!("toolgate: {message}");
    ExitCode::FAILURE
}
