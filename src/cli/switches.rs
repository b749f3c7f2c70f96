//! `toolgate tools|agents list|disable|enable`: kill switches, through the admin API.

use std::process::ExitCode;

use clap::Subcommand;

use crate::client::{error_text, AdminClient};
use crate::model::KillScope;

use super::fail;

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

/// `toolgate tools|agents list|disable|enable`.
pub(super) async fn run(
    client: AdminClient<'_>,
    of: KillScope,
    command: SwitchCommand,
) -> ExitCode {
    let kind = of.plural();
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
    let (status, json) = match client.call(method, &path, body).await {
        Ok(r) => r,
        Err(e) => return fail(&e),
    };
    if !(200..300).contains(&status) {
        return fail(&error_text(status, &json));
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
            for item in json[kind].as_array().into_iter().flatten() {
                say!(
                    "{:<32} {}",
                    item[of.key()].as_str().unwrap_or("?"),
                    state(item)
                );
            }
        }
        SwitchCommand::Disable { name, .. } | SwitchCommand::Enable { name } => {
            say!("{name}: {}", state(&json));
        }
    }
    ExitCode::SUCCESS
}
