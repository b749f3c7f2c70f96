//! The command line of DESIGN section 6.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{env, parse_duration, Config};

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
    Serve(ServeArgs),
    /// Manage the local certificate authority agents trust.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
    /// Validate a policy folder without serving; prints the tools and exits non-zero on error.
    Check {
        #[arg(long, env = env::POLICIES, default_value = "./policies")]
        policies: PathBuf,
    },
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
        config.upstream_ca = self.upstream_ca.clone();
        config.upstream_timeout = parse_duration(&self.upstream_timeout)
            .map_err(|e| format!("--upstream-timeout: {e}"))?;
        config.shutdown_grace =
            parse_duration(&self.shutdown_grace).map_err(|e| format!("--shutdown-grace: {e}"))?;
        Ok(config)
    }
}

/// Runs a parsed command line. Returns the process exit code.
pub async fn main(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Ca { command } => match command {
            CaCommand::Init { certs, force } => match crate::ca::init(&certs, force) {
                Ok(true) => {
                    println!("created {}", certs.join(crate::ca::CA_CERT_FILE).display());
                    ExitCode::SUCCESS
                }
                Ok(false) => {
                    println!(
                        "{} already exists; use --force to replace it",
                        certs.join(crate::ca::CA_CERT_FILE).display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e.to_string()),
            },
            CaCommand::Export { certs } => match crate::ca::export(&certs) {
                Ok(pem) => {
                    print!("{pem}");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&format!("{e} (run `toolgate ca init` first)")),
            },
        },
        Command::Check { policies } => check(&policies),
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("toolgate: {message}");
    ExitCode::FAILURE
}

fn check(dir: &std::path::Path) -> ExitCode {
    let policy = match crate::policy::Policy::load_dir(dir) {
        Ok(p) => p,
        Err(e) => return fail(&e.to_string()),
    };
    println!(
        "{:<32} {:>3} {:<18} {:<8} {:<12} {:<8} {:<11} UNDO",
        "TOOL", "VER", "OWNER", "RISK", "SIDE-EFFECTS", "MODE", "IDEMPOTENCY"
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
        println!(
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
    println!(
        "ok: {} tools from {} files",
        policy.tools().len(),
        policy.files.len()
    );
    ExitCode::SUCCESS
}

async fn serve(args: ServeArgs) -> ExitCode {
    let config = match args.config() {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    let proxy = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(l) => l,
        Err(e) => return fail(&format!("--listen {}: {e}", args.listen)),
    };
    let admin = match tokio::net::TcpListener::bind(args.admin_listen).await {
        Ok(l) => l,
        Err(e) => return fail(&format!("--admin-listen {}: {e}", args.admin_listen)),
    };
    let listeners = crate::Listeners { proxy, admin };
    match crate::run(listeners, config, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e.to_string()),
    }
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {},
                    _ = term.recv() => {},
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
