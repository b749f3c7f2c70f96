//! The command line of DESIGN section 6.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::config::{env, parse_duration, Config};
use crate::model::KillScope;

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

mod contracts;

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
pub enum DbCommand {
    /// Apply the schema migrations this version knows (replicas also do it at start).
    Migrate {
        #[arg(long, env = env::DATABASE_URL)]
        database_url: String,
    },
    /// Move a stopped toolgate's open state (proposals, kill switches, idempotency records,
    /// budgets, rollback ledger, job claims) from its sled data dir into the database. Records
    /// the database already holds are left as they are; the audit log stays where it is.
    Import {
        #[arg(long, env = env::DATABASE_URL)]
        database_url: String,
        /// The data dir of the single-process toolgate (stopped).
        #[arg(long)]
        data_dir: PathBuf,
        /// Where the replicas' seal key is (their `--certs`): held calls are sealed again
        /// under it.
        #[arg(long, env = env::CERTS, default_value = "./certs")]
        certs: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// Issue AGENT a token that works for --ttl (its proxy password); printed once.
    Issue {
        agent: String,
        #[arg(long)]
        ttl: String,
        /// The job the token's calls belong to.
        #[arg(long)]
        job: Option<String>,
        /// Print {"id","token","agent","job","expires"}.
        #[arg(long)]
        json: bool,
    },
    /// End a token now.
    Revoke { id: String },
    /// Live tokens (never the tokens themselves), of AGENT or of all.
    List { agent: Option<String> },
}

#[derive(Debug, Subcommand)]
pub enum GrantsCommand {
    /// Lend AGENT one TOOL its policy does not name, for a time (every other check still
    /// applies).
    Add {
        agent: String,
        tool: String,
        /// How long it lasts, e.g. 1h (at most 7d).
        #[arg(long = "for")]
        lasts: String,
        /// Why the agent needs it (recorded with the grant and each use).
        #[arg(long)]
        reason: String,
        /// Print the grant as JSON.
        #[arg(long)]
        json: bool,
    },
    /// End a grant now.
    Revoke { id: String },
    /// Live grants, of AGENT or of all.
    List { agent: Option<String> },
}

#[derive(Debug, Subcommand)]
pub enum McpCommand {
    /// List the tools an MCP server offers now, each with its pin (`sha256:…` over its
    /// description and input schema) and how it stands against the contracts. Uses the
    /// credential the contracts give the endpoint.
    Pin {
        /// The server's endpoint, e.g. https://mcp.tickets.example/mcp
        url: String,
        #[arg(long, env = env::POLICIES, default_value = "./policies")]
        policies: PathBuf,
        /// Whose credential to use, when the contracts name several environments.
        #[arg(long)]
        environment: Option<String>,
        #[arg(long = "connect-to", env = env::CONNECT_TO, value_delimiter = ',')]
        connect_to: Vec<String>,
        #[arg(long = "upstream-ca", env = env::UPSTREAM_CA, value_delimiter = ',')]
        upstream_ca: Vec<PathBuf>,
    },
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
    /// Draft tool contracts: `contracts import SPEC` from an OpenAPI document.
    Contracts {
        #[command(subcommand)]
        command: contracts::ContractsCommand,
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
    /// Short-lived agent tokens, through a running server's admin API (group admin, or a group
    /// the agent names in token_issuers).
    Tokens {
        #[command(subcommand)]
        command: TokensCommand,
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
    Approve {
        id: String,
        #[arg(long)]
        comment: Option<String>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Deny a proposal.
    Deny {
        id: String,
        #[arg(long)]
        comment: Option<String>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Revoke an approval before its commit starts.
    Revoke {
        id: String,
        #[arg(long)]
        comment: Option<String>,
        #[command(flatten)]
        server: ServerArgs,
    },
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

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// The story of a request, proposal or job id: who asked, what was proposed, who approved,
    /// what was sent, what came back.
    Story {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Events by agent, tool, refusal code, kind and time.
    Search {
        #[arg(long)]
        agent: Option<String>,
        #[arg(long)]
        tool: Option<String>,
        #[arg(long)]
        code: Option<String>,
        #[arg(long)]
        kind: Option<String>,
        /// The id of an issued token (tok_…): the calls made with it.
        #[arg(long)]
        token: Option<String>,
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        until: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Every event since a time, as JSON Lines (the schema is in the README).
    Export {
        #[arg(long)]
        since: Option<String>,
    },
    /// Checks the hash chain; names the first bad sequence number.
    Verify,
    /// Removes events older than a time; the rest stays verifiable.
    Purge {
        #[arg(long)]
        before: String,
        /// Why (recorded in the purge event).
        #[arg(long, default_value = "")]
        reason: String,
        /// With --data-dir: the youngest events that may be removed (the server uses its own
        /// --audit-retention-min).
        #[arg(long, env = env::AUDIT_RETENTION_MIN, default_value = "30d")]
        audit_retention_min: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum SwitchCommand {
    /// List them with their kill-switch state.
    List,
    /// Stop it now, on open tunnels too (any approver).
    Disable {
        name: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Allow it again (an approver in group admin).
    Enable { name: String },
}

/// Where the admin API is; the approver token comes from TOOLGATE_TOKEN.
#[derive(Debug, clap::Args)]
pub struct ServerArgs {
    #[arg(long, env = env::SERVER, default_value = "http://127.0.0.1:8081", global = true)]
    pub server: String,
}

#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Create certs/ca.pem and certs/ca-key.pem (the key is readable by its owner only).
    Init {
        #[arg(long, env = env::CERTS, default_value = "./certs")]
        certs: PathBuf,
        /// Replace an existing CA (agents must then trust the new one).
        #[arg(long)]
        force: bool,
    },
    /// Print the CA certificate (PEM) for agents to trust.
    Export {
        #[arg(long, env = env::CERTS, default_value = "./certs")]
        certs: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Where agents connect (HTTPS_PROXY).
    #[arg(long, env = env::LISTEN, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// The approvers' page, the admin API, /metrics and /healthz.
    #[arg(long, env = env::ADMIN_LISTEN, default_value = "127.0.0.1:8081")]
    pub admin_listen: SocketAddr,
    #[arg(long, env = env::POLICIES, default_value = "./policies")]
    pub policies: PathBuf,
    #[arg(long, env = env::DATA_DIR, default_value = "./data")]
    pub data_dir: PathBuf,
    #[arg(long, env = env::CERTS, default_value = "./certs")]
    pub certs: PathBuf,
    /// Route HOST:PORT to ADDR:PORT instead of DNS (tests, sandboxes). Repeatable; in the
    /// environment variable, separate several with commas.
    #[arg(long = "connect-to", env = env::CONNECT_TO, value_delimiter = ',')]
    pub connect_to: Vec<String>,
    /// Extra PEM roots trusted for upstream TLS, on top of the webpki roots. Repeatable.
    #[arg(long = "upstream-ca", env = env::UPSTREAM_CA, value_delimiter = ',')]
    pub upstream_ca: Vec<PathBuf>,
    /// How long an upstream may take to start answering (e.g. 30s).
    #[arg(long, env = env::UPSTREAM_TIMEOUT, default_value = "30s")]
    pub upstream_timeout: String,
    /// How long in-flight requests get to finish on SIGTERM or Ctrl-C.
    #[arg(long, env = env::SHUTDOWN_GRACE, default_value = "10s")]
    pub shutdown_grace: String,
    /// How often the policy folder is checked for changes (SIGHUP reloads at once).
    #[arg(long, env = env::RELOAD_INTERVAL, default_value = "2s")]
    pub reload_interval: String,
    /// A webhook (Slack-compatible JSON) for every new proposal; a tool's approval.webhook wins.
    #[arg(long, env = env::WEBHOOK)]
    pub webhook: Option<String>,
    /// The approvers' page as approvers reach it, for links in notifications.
    #[arg(long, env = env::ADMIN_URL)]
    pub admin_url: Option<String>,
    /// How long a request body may take to arrive whole (408 validation_error after).
    #[arg(long, env = env::BODY_READ_TIMEOUT, default_value = "30s")]
    pub body_read_timeout: String,
    /// A connection or tunnel with no traffic and no request in flight is closed after this.
    #[arg(long, env = env::IDLE_TIMEOUT, default_value = "120s")]
    pub idle_timeout: String,
    /// Client connections open at once, all agents together.
    #[arg(long, env = env::MAX_CONNECTIONS, default_value_t = 4096)]
    pub max_connections: usize,
    /// Tunnels one agent may hold open at once (429 rate_limited beyond).
    #[arg(long, env = env::MAX_CONNECTIONS_PER_AGENT, default_value_t = 256)]
    pub max_connections_per_agent: usize,
    /// Connections one address that no agent's `sources` holds may have open on the transparent
    /// listener (such addresses together: a quarter of --max-connections); more are closed.
    #[arg(long, env = env::MAX_CONNECTIONS_PER_UNKNOWN_SOURCE, default_value_t = 4)]
    pub max_connections_per_unknown_source: usize,
    /// Concurrent HTTP/2 streams per tunnel.
    #[arg(long, env = env::MAX_STREAMS, default_value_t = 64)]
    pub max_streams: u32,
    /// Request-body bytes one agent may have in toolgate's buffers at once.
    #[arg(long, env = env::MAX_BUFFERED_PER_AGENT, default_value = "64MiB")]
    pub max_buffered_per_agent: String,
    /// Request-body bytes buffered at once, all agents together.
    #[arg(long, env = env::MAX_BUFFERED, default_value = "512MiB")]
    pub max_buffered: String,
    /// Idempotency records are removed after this.
    #[arg(long, env = env::IDEMPOTENCY_RETENTION, default_value = "48h")]
    pub idempotency_retention: String,
    /// Finished proposals are removed after this.
    #[arg(long, env = env::PROPOSAL_RETENTION, default_value = "30d")]
    pub proposal_retention: String,
    /// Rollback-ledger entries are removed after this (they can no longer be undone).
    #[arg(long, env = env::LEDGER_RETENTION, default_value = "90d")]
    pub ledger_retention: String,
    /// `toolgate_store_alarm` on /metrics turns 1 when the store passes this size.
    #[arg(long, env = env::STORE_ALARM, default_value = "8GiB")]
    pub store_alarm: String,
    /// `audit purge` never removes events younger than this.
    #[arg(long, env = env::AUDIT_RETENTION_MIN, default_value = "30d")]
    pub audit_retention_min: String,
    /// Purge audit events older than this in the background (off unless set; at least
    /// --audit-retention-min).
    #[arg(long, env = env::AUDIT_RETENTION)]
    pub audit_retention: Option<String>,
    /// Also serve /metrics without a token on this address (a private scrape network).
    #[arg(long, env = env::METRICS_LISTEN)]
    pub metrics_listen: Option<SocketAddr>,
    /// Keep all shared state in PostgreSQL (replicas on one database act as one gateway)
    /// instead of sled in --data-dir: postgres://USER[:PASS]@HOST:PORT/DB.
    #[arg(long, env = env::DATABASE_URL)]
    pub database_url: Option<String>,
    /// Accept connections the kernel redirected from an agent network (nftables/iptables
    /// REDIRECT or DNAT of ports 443 and 80) on this address; agents are known by `sources`.
    #[arg(long, env = env::TRANSPARENT_LISTEN)]
    pub transparent_listen: Option<SocketAddr>,
}

fn flag_duration(flag: &str, value: &str) -> Result<std::time::Duration, String> {
    parse_duration(value).map_err(|e| format!("--{flag}: {e}"))
}

fn flag_size(flag: &str, value: &str) -> Result<u64, String> {
    crate::base::parse_size(value).map_err(|e| format!("--{flag}: {e}"))
}

impl ServeArgs {
    /// Validates the flags into a [`Config`].
    pub fn config(&self) -> Result<Config, String> {
        let mut config = Config::new(
            self.policies.clone(),
            self.data_dir.clone(),
            self.certs.clone(),
        );
        for spec in &self.connect_to {
            config.add_connect_to(spec)?;
        }
        config.database_url = self.database_url.clone().filter(|u| !u.is_empty());
        config.upstream_ca = self.upstream_ca.clone();
        config.upstream_timeout = parse_duration(&self.upstream_timeout)
            .map_err(|e| format!("--upstream-timeout: {e}"))?;
        config.shutdown_grace =
            parse_duration(&self.shutdown_grace).map_err(|e| format!("--shutdown-grace: {e}"))?;
        config.reload_interval = parse_duration(&self.reload_interval)
            .map_err(|e| format!("--reload-interval: {e}"))?
            .max(std::time::Duration::from_millis(50));
        config.webhook = self.webhook.clone().filter(|w| !w.is_empty());
        if let Some(w) = &config.webhook {
            if !(w.starts_with("http://") || w.starts_with("https://")) {
                return Err(format!("--webhook {w:?}: expected an http(s) URL"));
            }
        }
        config.admin_url = self.admin_url.clone().unwrap_or_default();
        let g = &mut config.guards;
        g.body_read_timeout = flag_duration("body-read-timeout", &self.body_read_timeout)?;
        g.idle_timeout = flag_duration("idle-timeout", &self.idle_timeout)?;
        g.max_connections = self.max_connections.max(1);
        g.max_connections_per_agent = self.max_connections_per_agent.max(1);
        g.max_connections_per_unknown_source = self.max_connections_per_unknown_source;
        g.max_streams = self.max_streams.max(1);
        g.max_buffered_per_agent =
            flag_size("max-buffered-per-agent", &self.max_buffered_per_agent)? as usize;
        g.max_buffered = flag_size("max-buffered", &self.max_buffered)? as usize;
        g.idempotency_retention =
            flag_duration("idempotency-retention", &self.idempotency_retention)?;
        g.proposal_retention = flag_duration("proposal-retention", &self.proposal_retention)?;
        g.ledger_retention = flag_duration("ledger-retention", &self.ledger_retention)?;
        g.store_alarm_bytes = flag_size("store-alarm", &self.store_alarm)?;
        g.audit_retention_min = flag_duration("audit-retention-min", &self.audit_retention_min)?;
        if let Some(r) = self.audit_retention.as_deref().filter(|r| !r.is_empty()) {
            let r = flag_duration("audit-retention", r)?;
            if r < g.audit_retention_min {
                return Err(format!(
                    "--audit-retention {}s is shorter than --audit-retention-min {}s: events younger than the minimum are never purged",
                    r.as_secs(),
                    g.audit_retention_min.as_secs()
                ));
            }
            g.audit_retention = Some(r);
        }
        Ok(config)
    }
}

/// Runs a parsed command line. Returns the process exit code.
pub async fn main(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Serve(args) => serve(*args).await,
        Command::Demo(args) => demo(*args).await,
        Command::Ca { command } => match command {
            CaCommand::Init { certs, force } => match crate::ca::init(&certs, force) {
                Ok(true) => {
                    say!("created {}", certs.join(crate::ca::CA_CERT_FILE).display());
                    ExitCode::SUCCESS
                }
                Ok(false) => {
                    say!(
                        "{} already exists; use --force to replace it",
                        certs.join(crate::ca::CA_CERT_FILE).display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e.to_string()),
            },
            CaCommand::Export { certs } => match crate::ca::export(&certs) {
                Ok(pem) => {
                    say!(raw "{pem}");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&format!("{e} (run `toolgate ca init` first)")),
            },
        },
        Command::Check { policies, strict } => check(&policies, strict),
        Command::Contracts { command } => contracts::run(command),
        Command::Mcp {
            command:
                McpCommand::Pin {
                    url,
                    policies,
                    environment,
                    connect_to,
                    upstream_ca,
                },
        } => {
            let how = (connect_to.as_slice(), upstream_ca.as_slice());
            match mcp_pin(&url, &policies, environment.as_deref(), how).await {
                Ok(lines) => {
                    for line in lines {
                        say!("{line}");
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e),
            }
        }
        Command::Db {
            command: DbCommand::Migrate { database_url },
        } => db_migrate(&database_url).await,
        Command::Db {
            command:
                DbCommand::Import {
                    database_url,
                    data_dir,
                    certs,
                },
        } => db_import(&database_url, &data_dir, &certs).await,
        Command::Pending { server } => pending(&server.server).await,
        Command::Tokens { command, server } => tokens(&server.server, command).await,
        Command::Grants { command, server } => grants(&server.server, command).await,
        Command::Approve {
            id,
            comment,
            server,
        } => decide(&server.server, &id, "approve", comment).await,
        Command::Deny {
            id,
            comment,
            server,
        } => decide(&server.server, &id, "deny", comment).await,
        Command::Revoke {
            id,
            comment,
            server,
        } => decide(&server.server, &id, "revoke", comment).await,
        Command::Audit {
            command,
            server,
            data_dir,
        } => audit(command, &server.server, data_dir).await,
        Command::Rollback {
            id,
            job,
            json,
            server,
        } => rollback(&server.server, id, job, json).await,
        Command::Replay {
            id,
            to,
            json,
            server,
        } => replay(&server.server, &id, &to, json).await,
        Command::Tools { command, server } => switches(command, server, KillScope::Tool).await,
        Command::Agents { command, server } => switches(command, server, KillScope::Agent).await,
    }
}

/// Calls the admin API. Returns the status and the JSON body.
pub async fn admin_call(
    server: &str,
    method: http::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> Result<(u16, serde_json::Value), String> {
    use http_body_util::BodyExt;
    let resp = admin_request(server, method, path, body).await?;
    let status = resp.status().as_u16();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("{server}{path}: {e}"))?
        .to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    Ok((status, json))
}

/// Sends one request to the admin API with the approver token; the answer's head (its body
/// is read by the caller, whole or as it streams).
async fn admin_request(
    server: &str,
    method: http::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> Result<http::Response<hyper::body::Incoming>, String> {
    use http_body_util::Full;
    let token = std::env::var(env::TOKEN)
        .map_err(|_| format!("set {} to an approver token", env::TOKEN))?;
    let url = format!("{}{}", server.trim_end_matches('/'), path);
    let mut req = http::Request::builder()
        .method(method)
        .uri(&url)
        .header(http::header::AUTHORIZATION, format!("Bearer {token}"));
    if body.is_some() {
        req = req.header(http::header::CONTENT_TYPE, "application/json");
    }
    let req = req
        .body(Full::new(bytes::Bytes::from(
            body.map(|b| b.to_string()).unwrap_or_default(),
        )))
        .map_err(|e| format!("{url}: {e}"))?;
    let client: hyper_util::client::legacy::Client<_, Full<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(hyper_util::client::legacy::connect::HttpConnector::new());
    // Long enough for a job's rollback or a replay, each call bounded by the upstream timeout.
    tokio::time::timeout(std::time::Duration::from_secs(300), client.request(req))
        .await
        .map_err(|_| format!("{url}: no answer within 300s"))?
        .map_err(|e| format!("{url}: {e} (is toolgate serving there? see --server)"))
}

/// `audit export`: JSON Lines, written as they are read (from the stopped store) or as they
/// arrive (from the server), so that memory stays flat whatever the log's size.
async fn export_cmd(
    offline: Option<&crate::audit::Audit>,
    server: &str,
    since: Option<String>,
) -> ExitCode {
    use std::io::Write;
    let since_ms = match crate::audit::time_filter("since", &since) {
        Ok(since) => since,
        Err(why) => return fail(&why),
    };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if let Some(a) = offline {
        for e in a.export(since_ms) {
            match e {
                Ok(e) => {
                    let _ = writeln!(out, "{}", serde_json::to_string(&e).unwrap_or_default());
                }
                Err(e) => return fail(&e.to_string()),
            }
        }
        let _ = out.flush();
        return ExitCode::SUCCESS;
    }
    let path = format!("/api/audit/export?{}", query_param("since", &since));
    let resp = match admin_request(server, http::Method::GET, &path, None).await {
        Ok(r) => r,
        Err(e) => return fail(&e),
    };
    if !resp.status().is_success() {
        return fail(&format!("{}: the export was refused", resp.status()));
    }
    let mut body = resp.into_body();
    while let Some(frame) = http_body_util::BodyExt::frame(&mut body).await {
        match frame {
            Ok(f) => {
                if let Some(chunk) = f.data_ref() {
                    let _ = out.write_all(chunk);
                }
            }
            Err(e) => return fail(&format!("the export stopped: {e}")),
        }
    }
    let _ = out.flush();
    ExitCode::SUCCESS
}

/// Runs an audit command against a running server, or a stopped one's store.
async fn audit(command: AuditCommand, server: &str, data_dir: Option<PathBuf>) -> ExitCode {
    use crate::audit::Filter;
    let offline = match open_offline(data_dir.as_deref()) {
        Ok(a) => a,
        Err(e) => return fail(&e),
    };
    match command {
        AuditCommand::Story { id, json } => story_cmd(offline.as_ref(), server, &id, json).await,
        AuditCommand::Search {
            agent,
            tool,
            code,
            kind,
            token,
            since,
            until,
            json,
        } => {
            let f = Filter {
                agent,
                tool,
                code,
                kind,
                token,
                since,
                until,
            };
            print_events(search_events(offline.as_ref(), server, &f).await, json)
        }
        AuditCommand::Export { since } => export_cmd(offline.as_ref(), server, since).await,
        AuditCommand::Verify => verify_cmd(offline.as_ref(), server).await,
        AuditCommand::Purge {
            before,
            reason,
            audit_retention_min,
        } => {
            let removed = match &offline {
                Some(a) => purge_offline(a, &before, &reason, &audit_retention_min).await,
                None => match admin_call(
                    server,
                    http::Method::POST,
                    "/api/audit/purge",
                    Some(serde_json::json!({ "before": before, "reason": reason })),
                )
                .await
                {
                    Ok((200, v)) => Ok(v["removed"].as_u64().unwrap_or(0)),
                    Ok((status, v)) => Err(format!(
                        "{status}: {}",
                        v["error"]["message"].as_str().unwrap_or("")
                    )),
                    Err(e) => Err(e),
                },
            };
            match removed {
                Ok(n) => {
                    say!("removed {n} events; the rest still verifies");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e),
            }
        }
    }
}

/// `toolgate db migrate`: the schema this version needs, applied once whatever runs at once.
async fn db_migrate(url: &str) -> ExitCode {
    match crate::store::PgStore::migrate_url(url).await {
        Ok(applied) if applied.is_empty() => {
            say!("the database is up to date");
            ExitCode::SUCCESS
        }
        Ok(applied) => {
            let list: Vec<String> = applied.iter().map(i32::to_string).collect();
            say!("applied migrations {}", list.join(", "));
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e.to_string()),
    }
}

/// `toolgate mcp pin URL`: the server's tools now, against the contracts.
async fn mcp_pin(
    url: &str,
    policies: &std::path::Path,
    environment: Option<&str>,
    (connect_to, upstream_ca): (&[String], &[PathBuf]),
) -> Result<Vec<String>, String> {
    let (host, port, path) = crate::mcp_pin::parse_endpoint(url)?;
    let policy = crate::policy::Policy::load_dir(policies).map_err(|e| e.to_string())?;
    let (tools, credential) =
        crate::mcp_pin::contracted(&policy, (&host, port, &path), environment)?;
    let mut routes = std::collections::HashMap::new();
    for spec in connect_to {
        let (from, to) = crate::config::parse_connect_to(spec)?;
        routes.insert(from, to);
    }
    let roots = crate::app::read_roots(upstream_ca).map_err(|e| e.to_string())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = crate::upstream::client_tls(provider, &roots).map_err(|e| e.to_string())?;
    let routes = Arc::new(crate::upstream::Routes::new(routes));
    let upstream = crate::upstream::Upstream::new(tls, routes, Duration::from_secs(30));
    let listed =
        crate::mcp_pin::list(&upstream, (&host, port, &path), credential.as_deref()).await?;
    Ok(crate::mcp_pin::report(&listed, &tools))
}

/// `toolgate db import`: a stopped toolgate's open state moved into the database, and the move
/// recorded in the database's audit chain with where the old chain ends (and whether it
/// verified), so the two logs read as one story.
async fn db_import(url: &str, data_dir: &std::path::Path, certs: &std::path::Path) -> ExitCode {
    use crate::store::Store;
    if !data_dir.join("store").join("db").exists() {
        return fail(&format!(
            "{} is not a toolgate data dir (no sled database in it)",
            data_dir.display()
        ));
    }
    let from = match crate::store::SledStore::open(data_dir) {
        Ok(s) => Arc::new(s),
        Err(e) => return fail(&format!("{e} (stop the toolgate using it first)")),
    };
    let to = match crate::store::PgStore::connect(url, certs) {
        Ok(s) => Arc::new(s),
        Err(e) => return fail(&e.to_string()),
    };
    if let Err(e) = to.migrate().await {
        return fail(&e.to_string());
    }
    let old_chain = match old_chain(from.clone()).await {
        Ok(v) => v,
        Err(e) => return fail(&e),
    };
    let done = match crate::store::import(&from, to.as_ref()).await {
        Ok(done) => done,
        Err(e) => {
            return fail(&format!(
                "import stopped: {e} (run it again: what is in is kept)"
            ))
        }
    };
    let to: Store = to;
    let recorded = async {
        let audit = crate::audit::Audit::open(&to).map_err(|e| e.to_string())?;
        let mut payload = serde_json::to_value(&done).map_err(|e| e.to_string())?;
        payload["data_dir"] = data_dir.display().to_string().into();
        payload["source_audit"] = old_chain.clone();
        let seq = audit
            .record_durable(crate::audit::Record {
                kind: crate::audit::Kind::StoreImport,
                payload,
                ..Default::default()
            })
            .await?;
        audit.close(Duration::from_secs(10)).await;
        Ok::<_, String>(seq)
    };
    if let Err(e) = recorded.await {
        return fail(&format!(
            "imported, but the audit event was not written: {e}"
        ));
    }
    say!(
        "imported {} proposals, {} kill switches, {} idempotency records, {} budgets, \
         {} ledger entries, {} job claims, {} tokens, {} grants; {} already in the database \
         (left as they were)",
        done.proposals,
        done.kill_switches,
        done.idempotency_records,
        done.budgets,
        done.ledger_entries,
        done.job_claims,
        done.tokens,
        done.grants,
        done.skipped
    );
    if done.unsealable > 0 {
        eprintln!(
            "warning: {} held calls' headers did not open under {}/seal.key: they were \
             imported without them and can be decided but not sent",
            done.unsealable,
            data_dir.display()
        );
    }
    say!(
        "the audit log stays in {} ({}): read it with `toolgate audit … --data-dir`",
        data_dir.display(),
        old_chain["verified"]
    );
    ExitCode::SUCCESS
}

/// The old audit chain checked, and where it ends: recorded with the import.
async fn old_chain(from: Arc<crate::store::SledStore>) -> Result<serde_json::Value, String> {
    let store: crate::store::Store = from;
    let audit = crate::audit::Audit::open(&store).map_err(|e| e.to_string())?;
    let (seq, hash) = audit.head().map_err(|e| e.to_string())?;
    let verified = match audit.verify() {
        Ok(n) => format!("{n} events verified"),
        Err((at, why)) => format!("DOES NOT VERIFY at event {at}: {why}"),
    };
    audit.close(Duration::from_secs(10)).await;
    Ok(serde_json::json!({"last_seq": seq, "last_hash": hash, "verified": verified}))
}

/// With `--data-dir`: the audit log of a stopped toolgate, opened directly.
fn open_offline(data_dir: Option<&std::path::Path>) -> Result<Option<crate::audit::Audit>, String> {
    let Some(dir) = data_dir else {
        return Ok(None);
    };
    let store = crate::store::open(dir)
        .map_err(|e| format!("{e} (is toolgate still running on it? then use --server instead)"))?;
    crate::audit::Audit::open(&store)
        .map(Some)
        .map_err(|e| e.to_string())
}

/// `GET path` on the admin API; its JSON, or the error's message.
async fn online_get(server: &str, path: String) -> Result<serde_json::Value, String> {
    match admin_call(server, http::Method::GET, &path, None).await {
        Ok((200, json)) => Ok(json),
        Ok((status, json)) => Err(format!(
            "{status}: {}",
            json["error"]["message"]
                .as_str()
                .unwrap_or("request failed")
        )),
        Err(e) => Err(e),
    }
}

fn events_of(v: &serde_json::Value) -> Vec<crate::audit::Event> {
    serde_json::from_value(v["events"].clone()).unwrap_or_default()
}

/// `k=v&`, URL-encoded, or nothing.
fn query_param(k: &str, v: &Option<String>) -> String {
    match v {
        Some(x) => format!(
            "{k}={}&",
            form_urlencoded::byte_serialize(x.as_bytes()).collect::<String>()
        ),
        None => String::new(),
    }
}

/// The events a filter selects, from the stopped store or the server.
async fn search_events(
    offline: Option<&crate::audit::Audit>,
    server: &str,
    f: &crate::audit::Filter,
) -> Result<Vec<crate::audit::Event>, String> {
    if let Some(a) = offline {
        return a.search(f);
    }
    let q = query_param;
    let path = format!(
        "/api/audit/search?{}{}{}{}{}{}{}",
        q("agent", &f.agent),
        q("tool", &f.tool),
        q("code", &f.code),
        q("kind", &f.kind),
        q("token", &f.token),
        q("since", &f.since),
        q("until", &f.until)
    );
    online_get(server, path).await.map(|v| events_of(&v))
}

/// One line per event: JSON (the export schema) or as people read it.
fn print_events(events: Result<Vec<crate::audit::Event>, String>, json: bool) -> ExitCode {
    match events {
        Ok(events) => {
            for e in &events {
                if json {
                    say!("{}", serde_json::to_string(e).unwrap_or_default());
                } else {
                    say!("{}", crate::audit::describe(e));
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

/// `audit story ID`: the summary, then every event (or JSON).
async fn story_cmd(
    offline: Option<&crate::audit::Audit>,
    server: &str,
    id: &str,
    json: bool,
) -> ExitCode {
    let events = match offline {
        Some(a) => a.story(id).map_err(|e| e.to_string()),
        None => online_get(server, format!("/api/audit/story/{id}"))
            .await
            .map(|v| events_of(&v)),
    };
    let events = match events {
        Ok(e) if e.is_empty() => return fail(&format!("no events mention {id}")),
        Ok(e) => e,
        Err(e) => return fail(&e),
    };
    if json {
        say!("{}", serde_json::json!({"id": id, "events": events}));
    } else {
        say!("The story of {id}:");
        for line in crate::audit::summary(&events) {
            say!("  {line}");
        }
        say!();
        for e in &events {
            say!("{}", crate::audit::describe(e));
        }
    }
    ExitCode::SUCCESS
}

/// `audit verify`: the chain, and every purge so far.
async fn verify_cmd(offline: Option<&crate::audit::Audit>, server: &str) -> ExitCode {
    let online = |path: String| online_get(server, path);
    let mut purges = Vec::new();
    let result = match offline {
        Some(a) => {
            purges = a.purges().unwrap_or_default();
            a.verify()
        }
        None => match online("/api/audit/verify".into()).await {
            Ok(v) if v["ok"] == true => {
                purges = v["purges"].as_array().cloned().unwrap_or_default();
                Ok(v["events"].as_u64().unwrap_or(0))
            }
            Ok(v) => Err((
                v["seq"].as_u64().unwrap_or(0),
                v["reason"].as_str().unwrap_or("").to_string(),
            )),
            Err(e) => return fail(&e),
        },
    };
    match result {
        Ok(n) => {
            say!("ok: {n} events, the chain is intact");
            purges.iter().for_each(print_purge);
            ExitCode::SUCCESS
        }
        Err((seq, why)) => fail(&format!("chain broken at event {seq}: {why}")),
    }
}

/// One line of `audit verify` about an earlier purge.
fn print_purge(p: &serde_json::Value) {
    say!(
        "purged: {} events (seq {}..{}) older than {}, by {} at {}{}",
        p["removed"],
        p["from_seq"],
        p["to_seq"],
        p["before"].as_str().unwrap_or("?"),
        p["by"].as_str().unwrap_or("?"),
        p["at"].as_str().unwrap_or("?"),
        p["reason"]
            .as_str()
            .filter(|r| !r.is_empty())
            .map(|r| format!(": {r}"))
            .unwrap_or_default()
    );
}

/// A purge of a stopped toolgate's store, by whoever holds its files.
async fn purge_offline(
    audit: &crate::audit::Audit,
    before: &str,
    reason: &str,
    min: &str,
) -> Result<u64, String> {
    let ms = crate::audit::parse_time(before)
        .ok_or_else(|| format!("--before {before:?} is not a time"))?;
    let min = parse_duration(min).map_err(|e| format!("--audit-retention-min: {e}"))?;
    crate::audit::check_purge_cut(ms, min)?;
    let by = format!(
        "local:{} (--data-dir)",
        std::env::var("USER").unwrap_or_else(|_| "operator".into())
    );
    audit
        .purge(ms, &by, reason)
        .await
        .map(|r| r.removed)
        .map_err(|e| e.to_string())
}

fn show_proposal(p: &serde_json::Value) {
    let s = |k: &str| p[k].as_str().unwrap_or("").to_string();
    say!(
        "{}  {}  {}  [{}]  agent {} (owner {})  {}/{} approvals  {}",
        s("id"),
        s("state"),
        s("tool"),
        s("risk"),
        s("agent"),
        s("owner"),
        p["approvals"].as_array().map(|a| a.len()).unwrap_or(0),
        p["policy"]["required"].as_u64().unwrap_or(1),
        s("summary")
    );
}

/// `toolgate grants add|revoke|list`.
async fn grants(server: &str, command: GrantsCommand) -> ExitCode {
    let (method, path, body) = match &command {
        GrantsCommand::Add {
            agent,
            tool,
            lasts,
            reason,
            ..
        } => (
            http::Method::POST,
            "/api/grants".to_string(),
            Some(serde_json::json!({"agent": agent, "tool": tool, "for": lasts, "reason": reason})),
        ),
        GrantsCommand::Revoke { id } => (http::Method::DELETE, format!("/api/grants/{id}"), None),
        GrantsCommand::List { agent } => (
            http::Method::GET,
            of_agent("/api/grants", agent.as_deref()),
            None,
        ),
    };
    let json = match admin_answer(server, method, &path, body).await {
        Ok(json) => json,
        Err(code) => return code,
    };
    let line = |g: &serde_json::Value| {
        let s = |k: &str| g[k].as_str().unwrap_or("").to_string();
        format!(
            "{}  {}  {}  until {}  by {}: {}",
            s("id"),
            s("agent"),
            s("tool"),
            s("until"),
            s("granted_by"),
            s("reason")
        )
    };
    match command {
        GrantsCommand::Add { json: true, .. } => say!("{json}"),
        GrantsCommand::Add { .. } => say!("{}", line(&json)),
        GrantsCommand::Revoke { id } => say!("revoked {id}"),
        GrantsCommand::List { .. } => {
            for g in json["grants"].as_array().cloned().unwrap_or_default() {
                say!("{}", line(&g));
            }
        }
    }
    ExitCode::SUCCESS
}

/// A list's path, narrowed to one agent when one is named.
fn of_agent(path: &str, agent: Option<&str>) -> String {
    match agent {
        Some(a) => format!(
            "{path}?{}",
            form_urlencoded::Serializer::new(String::new())
                .append_pair("agent", a)
                .finish()
        ),
        None => path.to_string(),
    }
}

/// An admin API call's JSON answer when it succeeded; else the error printed and the exit code.
async fn admin_answer(
    server: &str,
    method: http::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> Result<serde_json::Value, ExitCode> {
    match admin_call(server, method, path, body).await {
        Ok((200 | 201, json)) => Ok(json),
        Ok((status, json)) => Err(fail(&format!(
            "{status}: {}",
            json["error"]["message"]
                .as_str()
                .unwrap_or("request failed")
        ))),
        Err(e) => Err(fail(&e)),
    }
}

/// `toolgate tokens issue|revoke|list`.
async fn tokens(server: &str, command: TokensCommand) -> ExitCode {
    let (method, path, body) = match &command {
        TokensCommand::Issue {
            agent, ttl, job, ..
        } => (
            http::Method::POST,
            format!("/api/agents/{agent}/tokens"),
            Some(serde_json::json!({"ttl": ttl, "job": job})),
        ),
        TokensCommand::Revoke { id } => (http::Method::DELETE, format!("/api/tokens/{id}"), None),
        TokensCommand::List { agent } => (
            http::Method::GET,
            of_agent("/api/tokens", agent.as_deref()),
            None,
        ),
    };
    let json = match admin_answer(server, method, &path, body).await {
        Ok(json) => json,
        Err(code) => return code,
    };
    match command {
        TokensCommand::Issue { json: true, .. } => say!("{json}"),
        TokensCommand::Issue { .. } => {
            say!("{}", json["token"].as_str().unwrap_or(""));
            eprintln!(
                "token {} for {} until {} (shown once; use it as the agent's proxy password)",
                json["id"].as_str().unwrap_or(""),
                json["agent"].as_str().unwrap_or(""),
                json["expires"].as_str().unwrap_or("")
            );
        }
        TokensCommand::Revoke { id } => say!("revoked {id}"),
        TokensCommand::List { .. } => {
            for t in json["tokens"].as_array().cloned().unwrap_or_default() {
                say!(
                    "{}  {}  until {}  job {}  issued by {}",
                    t["id"].as_str().unwrap_or(""),
                    t["agent"].as_str().unwrap_or(""),
                    t["expires"].as_str().unwrap_or(""),
                    t["job"].as_str().unwrap_or("-"),
                    t["issued_by"].as_str().unwrap_or("")
                );
            }
        }
    }
    ExitCode::SUCCESS
}

async fn pending(server: &str) -> ExitCode {
    match admin_call(
        server,
        http::Method::GET,
        "/api/proposals?state=pending",
        None,
    )
    .await
    {
        Ok((200, json)) => {
            let list = json["proposals"].as_array().cloned().unwrap_or_default();
            if list.is_empty() {
                say!("nothing is waiting for approval");
            }
            for p in &list {
                show_proposal(p);
            }
            ExitCode::SUCCESS
        }
        Ok((status, json)) => fail(&format!(
            "{status}: {}",
            json["error"]["message"]
                .as_str()
                .unwrap_or("request failed")
        )),
        Err(e) => fail(&e),
    }
}

async fn decide(server: &str, id: &str, action: &str, comment: Option<String>) -> ExitCode {
    let body = serde_json::json!({ "comment": comment.unwrap_or_default() });
    match admin_call(
        server,
        http::Method::POST,
        &format!("/api/proposals/{id}/{action}"),
        Some(body),
    )
    .await
    {
        Ok((200, json)) => {
            show_proposal(&json);
            // What the decision leads to, plainly: "approved; sent when the agent sends the
            // call again, until …", or the upstream's answer when the approval sent it.
            if let Some(text) = json["status_text"].as_str() {
                say!("{text}");
            }
            ExitCode::SUCCESS
        }
        Ok((status, json)) => fail(&format!(
            "{status}: {}",
            json["error"]["message"]
                .as_str()
                .unwrap_or("request failed")
        )),
        Err(e) => fail(&e),
    }
}

fn seg(s: &str) -> String {
    crate::rollback::percent_encode_segment(s).collect()
}

async fn rollback(server: &str, id: Option<String>, job: Option<String>, json: bool) -> ExitCode {
    let path = match (&id, &job) {
        (_, Some(job)) => format!("/api/jobs/{}/rollback", seg(job)),
        (Some(id), None) => format!("/api/rollback/{}", seg(id)),
        (None, None) => return fail("give a request or proposal id, or --job JOB"),
    };
    let (status, body) = match admin_call(server, http::Method::POST, &path, None).await {
        Ok(r) => r,
        Err(e) => return fail(&e),
    };
    if json {
        say!("{body}");
    }
    let reports: Vec<serde_json::Value> = match body.get("results") {
        Some(serde_json::Value::Array(a)) => a.clone(),
        _ if body.get("outcome").is_some() => vec![body.clone()],
        _ => {
            return fail(&format!(
                "{status}: {}",
                body["error"]["message"]
                    .as_str()
                    .unwrap_or("request failed")
            ))
        }
    };
    let mut complete = true;
    for r in &reports {
        let outcome = r["outcome"].as_str().unwrap_or("?");
        use crate::rollback::Outcome;
        complete &= match serde_json::from_value::<Outcome>(r["outcome"].clone()) {
            Ok(Outcome::Undone) => true,
            Ok(Outcome::AlreadyUndone) => job.is_some(),
            _ => false,
        };
        if !json {
            say!(
                "{:<15} {:<28} {:<28} {}",
                outcome,
                r["request_id"].as_str().unwrap_or("-"),
                r["tool"].as_str().unwrap_or("-"),
                r["message"].as_str().unwrap_or("")
            );
        }
    }
    if complete {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

async fn replay(server: &str, id: &str, to: &str, json: bool) -> ExitCode {
    let path = format!("/api/replay/{}", seg(id));
    let body = serde_json::json!({ "to": to });
    let (status, body) = match admin_call(server, http::Method::POST, &path, Some(body)).await {
        Ok(r) => r,
        Err(e) => return fail(&e),
    };
    if status != 200 {
        return fail(&format!(
            "{status}: {}",
            body["error"]["message"]
                .as_str()
                .unwrap_or("request failed")
        ));
    }
    if json {
        say!("{body}");
    }
    let mut all_sent = true;
    for r in body["results"].as_array().into_iter().flatten() {
        all_sent &= r["outcome"] == "sent";
        if !json {
            say!(
                "{:<8} {:<28} {:<24} {} {} -> {} {}",
                r["outcome"].as_str().unwrap_or("?"),
                r["request_id"].as_str().unwrap_or("-"),
                r["tool"].as_str().unwrap_or("-"),
                r["method"].as_str().unwrap_or(""),
                r["path"].as_str().unwrap_or(""),
                r["status"],
                r["message"].as_str().unwrap_or("")
            );
        }
    }
    if all_sent {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

async fn switches(command: SwitchCommand, server: ServerArgs, scope: KillScope) -> ExitCode {
    let (kind, server) = (scope.plural(), server.server.as_str());
    let (method, path, body) = match &command {
        SwitchCommand::List => (http::Method::GET, format!("/api/{kind}"), None),
        SwitchCommand::Disable { name, reason } => (
            http::Method::POST,
            format!("/api/{kind}/{name}/disable"),
            Some(serde_json::json!({ "reason": reason })),
        ),
        SwitchCommand::Enable { name } => (
            http::Method::POST,
            format!("/api/{kind}/{name}/enable"),
            None,
        ),
    };
    let (status, json) = match admin_call(server, method, &path, body).await {
        Ok(r) => r,
        Err(e) => return fail(&e),
    };
    if !(200..300).contains(&status) {
        let msg = json["error"]["message"]
            .as_str()
            .unwrap_or("request failed");
        return fail(&format!("{status}: {msg}"));
    }
    let state = |v: &serde_json::Value| match v.get("disabled") {
        Some(d) if !d.is_null() => format!(
            "DISABLED by {} ({})",
            d["by"].as_str().unwrap_or("?"),
            d["reason"].as_str().unwrap_or("")
        ),
        _ => "enabled".to_string(),
    };
    match command {
        SwitchCommand::List => {
            let key = scope.key();
            for item in json[kind].as_array().into_iter().flatten() {
                say!("{:<32} {}", item[key].as_str().unwrap_or("?"), state(item));
            }
        }
        SwitchCommand::Disable { name, .. } | SwitchCommand::Enable { name } => {
            say!("{name}: {}", state(&json));
        }
    }
    ExitCode::SUCCESS
}

fn fail(message: &str) -> ExitCode {
    eprintln!("toolgate: {message}");
    ExitCode::FAILURE
}

fn check(dir: &std::path::Path, strict: bool) -> ExitCode {
    let policy = match crate::policy::Policy::load_dir(dir) {
        Ok(p) => p,
        Err(e) => return fail(&e.to_string()),
    };
    let warnings = match crate::policy::lint::lint_dir(dir) {
        Ok(w) => w,
        Err(e) => return fail(&e.to_string()),
    };
    say!(
        "{:<32} {:>3} {:<18} {:<8} {:<12} {:<8} {:<11} UNDO",
        "TOOL",
        "VER",
        "OWNER",
        "RISK",
        "SIDE-EFFECTS",
        "MODE",
        "IDEMPOTENCY"
    );
    for tool in policy.tools() {
        let d = &tool.def;
        let undo = match &d.rollback {
            Some(r) if r.none.is_some() => "none".to_string(),
            Some(r) => format!(
                "{} {}",
                r.method.as_deref().unwrap_or("?"),
                r.path.as_deref().unwrap_or("?")
            ),
            None => "-".to_string(),
        };
        say!(
            "{:<32} {:>3} {:<18} {:<8} {:<12} {:<8} {:<11} {}",
            tool.name,
            tool.version,
            d.owner.as_deref().unwrap_or("-"),
            d.risk.as_deref().unwrap_or("-"),
            d.side_effects.as_deref().unwrap_or("-"),
            d.mode.as_deref().unwrap_or("auto"),
            d.idempotency.as_deref().unwrap_or("-"),
            undo
        );
    }
    let notes = check_notes(&policy);
    if !notes.is_empty() {
        say!();
    }
    for line in &notes {
        say!("{line}");
    }
    if !warnings.is_empty() {
        say!();
    }
    for w in &warnings {
        say!("{w}");
    }
    let refused = launch_gate(&policy);
    if !refused.is_empty() {
        say!();
        for line in &refused {
            say!("launch gate: {line}");
        }
        return fail(&format!(
            "the policies fail the launch gate ({} finding(s) above)",
            refused.len()
        ));
    }
    if strict && !warnings.is_empty() {
        return fail(&format!(
            "--strict: {} warning(s) above; fix them or run without --strict",
            warnings.len()
        ));
    }
    say!(
        "ok: {} tools from {} files{}",
        policy.tools().len(),
        policy.files.len(),
        match warnings.len() {
            0 => String::new(),
            n => format!(", {n} warning(s)"),
        }
    );
    ExitCode::SUCCESS
}

/// What `check` says beside the table: which schemas are closed, where `expand` could bring
/// hidden fields back, and what cannot be undone (or where an undo leads nowhere).
fn check_notes(policy: &crate::policy::Policy) -> Vec<String> {
    let mut notes = schema_notes(policy);
    notes.extend(expand_notes(policy));
    let mut undo = Vec::new();
    for tool in policy.tools() {
        if tool.side_effects == crate::policy::SideEffects::None {
            continue;
        }
        match tool.def.rollback.as_ref() {
            Some(r) if r.none.is_some() => undo.push(format!(
                "{}: cannot be undone: {}",
                tool.name,
                r.none.as_deref().unwrap_or("")
            )),
            None => undo.push(format!("{}: declares no undo", tool.name)),
            Some(r) => {
                if let Some(warning) = undo_target_warning(policy, tool, r) {
                    undo.push(warning);
                }
            }
        }
    }
    notes.extend(undo);
    notes
}

/// What no policy set may go to production with: one credential shared by every tool, an
/// irreversible tool that runs without approval, a tool with side effects whose body or
/// arguments nobody described.
fn launch_gate(policy: &crate::policy::Policy) -> Vec<String> {
    use crate::policy::{Mode, SideEffects};
    let mut refused = Vec::new();
    let with_credentials: Vec<_> = policy
        .tools()
        .iter()
        .filter(|t| !t.credentials.is_empty())
        .collect();
    if with_credentials.len() > 1 {
        let names = |t: &crate::policy::Tool| -> std::collections::BTreeSet<String> {
            t.credentials.values().map(|c| c.name.clone()).collect()
        };
        let mut shared = names(with_credentials[0]);
        for t in &with_credentials[1..] {
            let mine = names(t);
            shared.retain(|n| mine.contains(n));
        }
        for name in shared {
            refused.push(format!(
                "credential {name} is shared by every tool ({}): give each API, or each tool, a credential of its own",
                with_credentials.len()
            ));
        }
    }
    for t in policy.tools() {
        if t.side_effects == SideEffects::Irreversible && t.mode == Mode::Auto {
            refused.push(format!(
                "{} is irreversible and runs in mode auto: hold it for approval (mode = \"approve\") or deny it",
                t.name
            ));
        }
        let described = t.mcp.is_some() || t.body.as_ref().is_none_or(|b| b.schema.is_some());
        if t.side_effects != SideEffects::None && !described {
            refused.push(format!(
                "{} has side effects but no body schema: describe what it may send (body = {{ format = …, schema = \"…\" }})",
                t.name
            ));
        }
    }
    refused
}

/// Which object schemas `check` treats as closed, and which accept any keys.
fn schema_notes(policy: &crate::policy::Policy) -> Vec<String> {
    let mut notes = Vec::new();
    for tool in policy.tools() {
        let schemas = tool
            .body
            .as_ref()
            .and_then(|b| b.schema.as_ref())
            .map(|s| ("body", s))
            .into_iter()
            .chain(tool.query.as_ref().map(|s| ("query", s)));
        for (what, schema) in schemas {
            if !schema.closed.is_empty() {
                notes.push(format!(
                    "{}: {what} schema: {} object schema(s) without additionalProperties are treated as closed (unknown fields refused)",
                    tool.name,
                    schema.closed.len()
                ));
            }
            if !schema.open.is_empty() {
                notes.push(format!(
                    "{}: {what} schema: free-form objects accept any keys at {}",
                    tool.name,
                    schema.open.join(", ")
                ));
            }
        }
    }
    notes
}

/// Where a response contract's `hide` can be gone around: another tool on the same host admits
/// `expand` (Stripe's way to answer with whole related objects, so `expand[]=customer` on a
/// payment intent returns the customer with the fields `customers.retrieve` hides).
fn expand_notes(policy: &crate::policy::Policy) -> Vec<String> {
    let admits_expand = |tool: &crate::policy::Tool| {
        let body = tool.body.as_ref().and_then(|b| b.schema.as_ref());
        body.into_iter()
            .chain(tool.query.as_ref())
            .any(|s| s.value.pointer("/properties/expand").is_some())
    };
    let mut notes = Vec::new();
    for hiding in policy.tools() {
        let Some(hidden) = hiding.response.as_ref().filter(|r| !r.hide.is_empty()) else {
            continue;
        };
        for other in policy.tools() {
            if other.name != hiding.name && other.host == hiding.host && admits_expand(other) {
                notes.push(format!(
                    "{}: admits `expand`, which answers with whole related objects, while {} hides {} of its answers: an expanded object carries those fields past that hide. Remove `expand` from {}'s schema",
                    other.name,
                    hiding.name,
                    hidden.hide.join(", "),
                    other.name
                ));
            }
        }
    }
    notes
}

/// A rollback template must lead to a contract an undo can go through.
fn undo_target_warning(
    policy: &crate::policy::Policy,
    tool: &crate::policy::Tool,
    r: &crate::policy::file::RollbackDef,
) -> Option<String> {
    let method =
        http::Method::from_bytes(r.method.as_deref()?.to_ascii_uppercase().as_bytes()).ok()?;
    let template = r.path.as_deref()?;
    // Each placeholder stands for one path segment.
    let sample: String = regex::Regex::new(r"\{[^}]*\}")
        .ok()?
        .replace_all(template, "x")
        .into_owned();
    let text = format!("{method} {template}");
    match policy.match_tool(&tool.host, tool.port, &method, &sample) {
        None => Some(format!(
            "warning: {}: its rollback {text} matches no tool contract on {}; add one, or every undo is refused",
            tool.name, tool.host
        )),
        Some(m) if m.tool.mode == crate::policy::Mode::Deny => Some(format!(
            "warning: {}: its rollback {text} goes to tool {}, which is in mode deny; every undo is refused",
            tool.name, m.tool.name
        )),
        Some(m) => Some(format!(
            "{}: undone by {text} through tool {}",
            tool.name, m.tool.name
        )),
    }
}

/// Binds the listeners the flags name.
async fn bind(args: &ServeArgs) -> Result<crate::Listeners, String> {
    let at = |flag: &'static str, addr: SocketAddr| async move {
        tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::AddrInUse => format!(
                    "--{flag} {addr}: {e} (another toolgate, or another program, holds it: stop it, or choose another address, e.g. --{flag} 127.0.0.1:0)"
                ),
                _ => format!("--{flag} {addr}: {e}"),
            })
    };
    let proxy = at("listen", args.listen).await?;
    let admin = at("admin-listen", args.admin_listen).await?;
    let metrics = match args.metrics_listen {
        Some(addr) => Some(at("metrics-listen", addr).await?),
        None => None,
    };
    let transparent = match args.transparent_listen {
        Some(addr) => Some(at("transparent-listen", addr).await?),
        None => None,
    };
    Ok(crate::Listeners {
        proxy,
        admin,
        metrics,
        transparent,
    })
}

async fn serve(args: ServeArgs) -> ExitCode {
    let config = match args.config() {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    let listeners = match bind(&args).await {
        Ok(l) => l,
        Err(e) => return fail(&e),
    };
    match crate::run_with(listeners, config, shutdown_signal(), crate::orient::print).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e.to_string()),
    }
}

/// `toolgate demo`: serve against the sandbox, then say what to try.
async fn demo(args: ServeArgs) -> ExitCode {
    let mut config = match args.config() {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    let listeners = match bind(&args).await {
        Ok(l) => l,
        Err(e) => return fail(&e),
    };
    let demo = match crate::demo::Demo::start(&mut config).await {
        Ok(d) => d,
        Err(e) => return fail(&e),
    };
    let program = crate::demo::program();
    let result = crate::run_with(listeners, config, shutdown_signal(), |s| {
        crate::orient::print_lines(&crate::orient::lines(s, &demo.about()));
        for line in demo.next_steps(s, &program) {
            say!("{line}");
        }
    })
    .await;
    drop(demo);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e.to_string()),
    }
}

/// Resolves on Ctrl-C or SIGTERM. The handlers are installed when this is called, not when the
/// future is first polled: a SIGTERM while toolgate is still starting stops it gracefully too,
/// instead of killing it mid-start.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate()).ok();
        let int = signal(SignalKind::interrupt()).ok();
        async move {
            let recv = |s: Option<tokio::signal::unix::Signal>| async move {
                match s {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = recv(term) => {},
                _ = recv(int) => {},
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
