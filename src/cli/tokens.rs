//! `toolgate tokens issue|revoke|list`: short-lived agent tokens, through the admin API.

use std::process::ExitCode;

use clap::Subcommand;

use crate::client::{of_agent, AdminClient};

use super::fail;

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
        /// The person every call made with it acts for (its audit events, rules and approvals
        /// name them).
        #[arg(long = "for-user", value_name = "ID")]
        for_user: Option<String>,
        /// Print {"id","token","agent","job","user","expires"}.
        #[arg(long)]
        json: bool,
    },
    /// End a token now.
    Revoke { id: String },
    /// Live tokens (never the tokens themselves), of AGENT or of all.
    List { agent: Option<String> },
}

/// `toolgate tokens issue|revoke|list`.
pub(super) async fn run(client: AdminClient<'_>, command: TokensCommand) -> ExitCode {
    let (method, path, body) = match &command {
        TokensCommand::Issue {
            agent,
            ttl,
            job,
            for_user,
            ..
        } => (
            http::Method::POST,
            format!("/api/agents/{agent}/tokens"),
            Some(serde_json::json!({"ttl": ttl, "job": job, "user": for_user})),
        ),
        TokensCommand::Revoke { id } => (http::Method::DELETE, format!("/api/tokens/{id}"), None),
        TokensCommand::List { agent } => (
            http::Method::GET,
            of_agent("/api/tokens", agent.as_deref()),
            None,
        ),
    };
    let json = match client.expect(method, &path, body, &[200, 201]).await {
        Ok(json) => json,
        Err(e) => return fail(&e),
    };
    match command {
        TokensCommand::Issue { json: true, .. } => say!("{json}"),
        TokensCommand::Issue { .. } => {
            say!("{}", json["token"].as_str().unwrap_or(""));
            let user = json["user"]
                .as_str()
                .map(|u| format!(" acting for {u}"))
                .unwrap_or_default();
            eprintln!(
                "token {} for {}{user} until {} (shown once; use it as the agent's proxy password)",
                json["id"].as_str().unwrap_or(""),
                json["agent"].as_str().unwrap_or(""),
                json["expires"].as_str().unwrap_or("")
            );
        }
        TokensCommand::Revoke { id } => say!("revoked {id}"),
        TokensCommand::List { .. } => {
            for t in json["tokens"].as_array().cloned().unwrap_or_default() {
                say!(
                    "{}  {}  until {}  job {}  for {}  issued by {}",
                    t["id"].as_str().unwrap_or(""),
                    t["agent"].as_str().unwrap_or(""),
                    t["expires"].as_str().unwrap_or(""),
                    t["job"].as_str().unwrap_or("-"),
                    t["user"].as_str().unwrap_or("-"),
                    t["issued_by"].as_str().unwrap_or("")
                );
            }
        }
    }
    ExitCode::SUCCESS
}
