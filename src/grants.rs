//! Time-bound grants (DESIGN section 10): an approver in group `admin` lends an agent one tool
//! its `tools` globs do not name, until a time or a revocation. On the request path a grant
//! only adds the tool to the agent's list; every other check still applies. The grant, each
//! use and its end are audit events naming who granted, why and until when.

use std::sync::Arc;

use serde_json::{json, Value};
use tracing::warn;

use crate::app::Core;
use crate::error::Refusal;
use crate::model::{Grant, GrantEnd};
use crate::policy::{Agent, Tool};
use crate::store::{now_unix, StoreError};

/// The longest a grant may last.
pub const MAX_GRANT_SECS: u64 = 7 * 24 * 3600;

fn store_down(e: StoreError) -> Refusal {
    Refusal::internal(format!(
        "the grant store is unavailable ({e}); the call was not sent"
    ))
}

/// The grant's facts as its audit events carry them.
pub fn facts(g: &Grant) -> Value {
    json!({
        "grant": g.id,
        "tool": g.tool,
        "granted_by": g.granted_by,
        "reason": g.reason,
        "until": crate::audit::rfc3339(g.until_unix.saturating_mul(1000)),
    })
}

/// The agent as it stands for one call of `tool`: with the live grant that lends it the tool,
/// when its own globs do not name it. Without the store it cannot tell: refused.
pub(crate) async fn for_tool(
    app: &Core,
    agent: Arc<Agent>,
    tool: &str,
) -> Result<Arc<Agent>, Refusal> {
    if agent.holds(tool) {
        return Ok(agent);
    }
    live(app, agent, |t| t == tool).await
}

/// The agent as it stands on an MCP endpoint serving `tools`: with every live grant of one of
/// them.
pub(crate) async fn for_tools(
    app: &Core,
    agent: Arc<Agent>,
    tools: &[Arc<Tool>],
) -> Result<Arc<Agent>, Refusal> {
    if tools.iter().all(|t| agent.holds(&t.name)) {
        return Ok(agent);
    }
    live(app, agent, |name| tools.iter().any(|t| t.name == name)).await
}

async fn live(
    app: &Core,
    agent: Arc<Agent>,
    wanted: impl Fn(&str) -> bool,
) -> Result<Arc<Agent>, Refusal> {
    let now = now_unix();
    let grants: Vec<Grant> = app
        .principals()
        .grants_of(&agent.id)
        .await
        .map_err(store_down)?
        .into_iter()
        .filter(|g| g.live(now) && wanted(&g.tool))
        .collect();
    if grants.is_empty() {
        return Ok(agent);
    }
    Ok(Arc::new(agent.with_grants(grants)))
}

/// How a grant ends: an approver takes it back, or its time is up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    Revoked,
    Expired,
}

impl Ending {
    /// As the grant's record stores it.
    pub fn as_str(self) -> &'static str {
        match self {
            Ending::Revoked => "revoked",
            Ending::Expired => "expired",
        }
    }

    fn kind(self) -> crate::audit::Kind {
        match self {
            Ending::Revoked => crate::audit::Kind::GrantRevoked,
            Ending::Expired => crate::audit::Kind::GrantExpired,
        }
    }
}

/// Ends a grant (revoked by an approver, or expired) and records its end, unless it had ended
/// already: then None.
pub async fn end(app: &Core, id: &str, how: Ending, by: &str) -> Result<Option<Grant>, StoreError> {
    let end = GrantEnd {
        how: how.as_str().to_string(),
        by: by.to_string(),
        at_unix: now_unix(),
    };
    let Some(g) = app.store().grant_end(id, end).await? else {
        return Ok(None);
    };
    app.principals().grants_changed(&g.agent).await;
    let mut payload = facts(&g);
    payload["by"] = json!(by);
    app.audit()
        .record(crate::audit::Record {
            kind: how.kind(),
            agent: Some(g.agent.clone()),
            tool: Some(g.tool.clone()),
            payload,
            ..Default::default()
        })
        .await;
    Ok(Some(g))
}

/// Records the expiry of every grant whose time is up and whose end nobody recorded yet (the
/// sweep; on replicas, whichever gets there first). Returns how many it ended.
pub async fn expire_due(app: &Core) -> Result<usize, StoreError> {
    let now = now_unix();
    let mut ended = 0;
    for g in app.store().grant_open(None).await? {
        if g.until_unix <= now
            && end(app, &g.id, Ending::Expired, "toolgate")
                .await?
                .is_some()
        {
            ended += 1;
        }
    }
    Ok(ended)
}

/// Watches every grant not yet ended, at start: their expiry is recorded at its time after a
/// restart too.
pub async fn watch_open(app: Arc<Core>) {
    match app.store().grant_open(None).await {
        Ok(open) => {
            for g in &open {
                watch(app.clone(), g);
            }
        }
        Err(e) => warn!(error = %e, "open grants could not be read; the sweep records their ends"),
    }
}

/// Records the grant's expiry at its time (the sweep does it too, when another replica granted
/// it or this one could not read the store at start).
pub fn watch(app: Arc<Core>, g: &Grant) {
    let id = g.id.clone();
    let wait_ms = g
        .until_unix
        .saturating_mul(1000)
        .saturating_sub(crate::base::now_ms());
    tokio::spawn(async move {
        tokio::select! {
            _ = app.cancel().cancelled() => {}
            _ = tokio::time::sleep(std::time::Duration::from_millis(wait_ms)) => {
                if let Err(e) = end(&app, &id, Ending::Expired, "toolgate").await {
                    warn!(grant = %id, error = %e, "the grant's expiry could not be recorded; the sweep will try again");
                }
            }
        }
    });
}
