//! `toolgate mcp pin URL`: the tools an MCP server offers now, with their pins, against the
//! contracts.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Subcommand;

use crate::config::env;

use super::fail;

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

pub(super) async fn run(command: McpCommand) -> ExitCode {
    let McpCommand::Pin {
        url,
        policies,
        environment,
        connect_to,
        upstream_ca,
    } = command;
    match pin(
        &url,
        &policies,
        environment.as_deref(),
        &connect_to,
        &upstream_ca,
    )
    .await
    {
        Ok(lines) => {
            for line in lines {
                say!("{line}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

/// The server's tools now, against the contracts: one line each.
async fn pin(
    url: &str,
    policies: &Path,
    environment: Option<&str>,
    connect_to: &[String],
    upstream_ca: &[PathBuf],
) -> Result<Vec<String>, String> {
    let endpoint = crate::mcp_pin::parse_endpoint(url)?;
    let policy = crate::policy::Policy::load_dir(policies).map_err(|e| e.to_string())?;
    let (tools, credential) = crate::mcp_pin::contracted(&policy, &endpoint, environment)?;
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
    let listed = crate::mcp_pin::list(&upstream, &endpoint, credential.as_deref()).await?;
    Ok(crate::mcp_pin::report(&listed, &tools))
}
