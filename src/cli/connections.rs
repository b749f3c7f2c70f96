//! `toolgate connections link|list|revoke`: people's OAuth connections, through the admin API.

use std::process::ExitCode;

use clap::Subcommand;

use crate::client::AdminClient;

use super::fail;

#[derive(Debug, Subcommand)]
pub enum ConnectionsCommand {
    /// A one-time link for USER to connect CONNECTION (a [[connection]]): they open it, sign in
    /// at the provider and consent; their calls then carry their own token.
    Link {
        user: String,
        connection: String,
        /// How long the link works (default 15m).
        #[arg(long)]
        ttl: Option<String>,
        /// Print {"user","connection","link","expires"}.
        #[arg(long)]
        json: bool,
    },
    /// The connections people made (never their tokens), of --user or of all.
    List {
        #[arg(long)]
        user: Option<String>,
    },
    /// Revoke USER's CONNECTION (toolgate forgets the tokens and tells the provider).
    Revoke { user: String, connection: String },
}

/// `toolgate connections link|list|revoke`.
pub(super) async fn run(client: AdminClient<'_>, command: ConnectionsCommand) -> ExitCode {
    let (method, path, body) = match &command {
        ConnectionsCommand::Link {
            user,
            connection,
            ttl,
            ..
        } => (
            http::Method::POST,
            "/api/connections/link".to_string(),
            Some(serde_json::json!({"user": user, "connection": connection, "ttl": ttl})),
        ),
        ConnectionsCommand::List { user } => {
            let path = match user {
                Some(u) => format!(
                    "/api/connections?{}",
                    form_urlencoded::Serializer::new(String::new())
                        .append_pair("user", u)
                        .finish()
                ),
                None => "/api/connections".to_string(),
            };
            (http::Method::GET, path, None)
        }
        ConnectionsCommand::Revoke { user, connection } => (
            http::Method::POST,
            "/api/connections/revoke".to_string(),
            Some(serde_json::json!({"user": user, "connection": connection})),
        ),
    };
    let json = match client.expect(method, &path, body, &[200, 201]).await {
        Ok(json) => json,
        Err(e) => return fail(&e),
    };
    match command {
        ConnectionsCommand::Link { json: true, .. } => say!("{json}"),
        ConnectionsCommand::Link { .. } => {
            say!("{}", json["link"].as_str().unwrap_or(""));
            eprintln!(
                "a one-time link for {} to connect {}, until {}",
                json["user"].as_str().unwrap_or(""),
                json["connection"].as_str().unwrap_or(""),
                json["expires"].as_str().unwrap_or("")
            );
        }
        ConnectionsCommand::List { .. } => {
            for c in json["connections"].as_array().cloned().unwrap_or_default() {
                let state = match c["reason"].as_str() {
                    Some(r) => format!("{} ({r})", c["state"].as_str().unwrap_or("")),
                    None => c["state"].as_str().unwrap_or("").to_string(),
                };
                let scopes: Vec<&str> = c["scopes"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|s| s.as_str()).collect())
                    .unwrap_or_default();
                say!(
                    "{}  {}  {}  scopes {}  linked {}",
                    c["user"].as_str().unwrap_or(""),
                    c["connection"].as_str().unwrap_or(""),
                    state,
                    scopes.join(" "),
                    c["linked"].as_str().unwrap_or("")
                );
            }
        }
        ConnectionsCommand::Revoke { user, connection } => {
            say!("revoked {user}'s connection {connection}");
            if let Some(why) = json["provider_refused"].as_str() {
                eprintln!("the provider's revocation endpoint refused: {why}");
            }
        }
    }
    ExitCode::SUCCESS
}
