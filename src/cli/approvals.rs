//! `toolgate pending|approve|deny|revoke`: proposals waiting for a person, and their decisions,
//! through the admin API.

use std::process::ExitCode;

use crate::approval::Action;
use crate::client::AdminClient;

use super::{fail, Decision};

/// One line about a proposal: who, what, how far its approvals got.
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

/// `toolgate pending`: the proposals waiting for a decision, one line each.
pub(super) async fn pending(client: AdminClient<'_>) -> ExitCode {
    let json = match client.get("/api/proposals?state=pending").await {
        Ok(json) => json,
        Err(e) => return fail(&e),
    };
    let list = json["proposals"].as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        say!("nothing is waiting for approval");
    }
    for p in &list {
        show_proposal(p);
    }
    ExitCode::SUCCESS
}

/// `toolgate approve|deny|revoke ID`: the decision, and what it leads to.
pub(super) async fn decide(d: Decision, action: Action) -> ExitCode {
    let body = serde_json::json!({ "comment": d.comment.unwrap_or_default() });
    let path = format!("/api/proposals/{}/{}", d.id, action.as_str());
    let client = d.server.client();
    let json = match client
        .expect(http::Method::POST, &path, Some(body), &[200])
        .await
    {
        Ok(json) => json,
        Err(e) => return fail(&e),
    };
    show_proposal(&json);
    // What the decision leads to, plainly: "approved; sent when the agent sends the call
    // again, until …", or the upstream's answer when the approval sent it.
    if let Some(text) = json["status_text"].as_str() {
        say!("{text}");
    }
    ExitCode::SUCCESS
}
