//! `toolgate grants add|revoke|list`: time-bound grants, through the admin API.

use std::process::ExitCode;

use clap::Subcommand;

use crate::client::{of_agent, AdminClient};

use super::fail;

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

/// `toolgate grants add|revoke|list`.
pub(super) async fn run(client: AdminClient<'_>, command: GrantsCommand) -> ExitCode {
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
    let json = match client.expect(method, &path, body, &[200, 201]).await {
        Ok(json) => json,
        Err(e) => return fail(&e),
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
