//! What the JSON API and the page both do: throw kill switches, and answer a rollback.

use axum::http::StatusCode;

use tracing::{info, warn};

use super::auth::{api_error, ApiError};
use crate::app::Console;
use crate::model::KillScope;
use crate::policy::Approver;
use crate::rollback::Outcome;
use crate::store::{now_unix, KillSwitch, KillTarget};

/// The HTTP status for one undo's outcome.
pub(crate) fn rollback_status(outcome: Outcome) -> StatusCode {
    match outcome {
        Outcome::Undone => StatusCode::OK,
        Outcome::AwaitingApproval => StatusCode::ACCEPTED,
        Outcome::NotFound => StatusCode::NOT_FOUND,
        Outcome::AlreadyUndone => StatusCode::CONFLICT,
        Outcome::NotUndoable => StatusCode::UNPROCESSABLE_ENTITY,
        Outcome::Failed => StatusCode::BAD_GATEWAY,
        Outcome::Refused => StatusCode::FORBIDDEN,
    }
}

/// Throws (`disable`) or resets a kill switch for a tool or an agent, for the API and the page
/// alike. Anyone who may approve may stop things; only an admin may start them again. Returns
/// the switch's target.
pub(crate) async fn apply_switch(
    app: &Console,
    who: &Approver,
    scope: KillScope,
    name: &str,
    disable: bool,
    reason: Option<String>,
) -> Result<KillTarget, ApiError> {
    let policy = app.policy();
    let kind = scope.as_str();
    let target = KillTarget::of(scope, name).filter(|t| match t {
        KillTarget::Tool(n) => policy.tool(n).is_some(),
        KillTarget::Agent(n) => policy.agent(n).is_some(),
    });
    let Some(target) = target else {
        return Err(api_error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no {kind} named {name:?} in the policies in force"),
        ));
    };
    if !disable && !who.is_admin() {
        return Err(api_error(
            StatusCode::FORBIDDEN,
            "policy_violation",
            format!(
                "enabling a {kind} needs an approver in group admin; {} is not",
                who.id
            ),
        ));
    }
    let key = target.to_string();
    let value = disable.then(|| KillSwitch {
        by: who.id.clone(),
        reason: reason
            .filter(|r| !r.trim().is_empty())
            .unwrap_or_else(|| "no reason given".into()),
        at_unix: now_unix(),
    });
    if let Err(e) = app.kill().set(&target, value).await {
        warn!(error = %e, %key, "kill switch could not be stored");
        return Err(api_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "internal_error",
            format!("the kill switch could not be stored: {e}"),
        ));
    }
    info!(%key, by = %who.id, disabled = disable, "kill switch");
    Ok(target)
}
