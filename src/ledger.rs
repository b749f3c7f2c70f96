//! The ledger of committed calls: every call with side effects that was sent, with what it asked
//! and what the upstream answered, for rollback and replay.

use serde_json::Value;

use crate::audit::Redactor;
use crate::model::{Call, Committed};
use crate::store::{Store, StoreError};

/// Records a committed call in the ledger, whatever the upstream answered (`status`, and
/// `response`, the scrubbed answer): a replay re-sends it; only a 2xx can be undone. Written
/// without a flush of its own; the caller's next store write flushes it.
pub(crate) async fn record(
    store: &Store,
    redactor: &Redactor,
    call: &Call,
    status: u16,
    response: &[u8],
) {
    let entry = Committed {
        request_id: call.request_id.clone(),
        proposal: call.proposal.clone(),
        job: call.job.clone(),
        agent: call.agent.clone(),
        tool: call.tool.clone(),
        tool_version: call.tool_version,
        host: call.host.clone(),
        port: call.port,
        method: call.method.clone(),
        path_and_query: call.path_and_query.clone(),
        content_type: call.content_type.clone(),
        body_text: redactor.text(&String::from_utf8_lossy(&call.body)),
        body: redactor.value(&call.body_json),
        status,
        response: serde_json::from_slice(response).unwrap_or(Value::Null),
        unix_ms: crate::base::now_ms(),
        undoes: call.undoes.clone(),
        user: call.user.clone(),
        user_groups: call.user_groups.clone(),
        undone: None,
        attempts: 0,
        undo_approvals: Vec::new(),
    };
    if let Err(e) = store.ledger_put(&entry).await {
        tracing::error!(request_id = %call.request_id, error = %e, "could not record the commit for rollback");
    }
}

/// The ledger entry for a request id or a proposal id.
pub async fn find(store: &Store, id: &str) -> Result<Option<Committed>, StoreError> {
    if let Some(c) = store.ledger_get(id).await? {
        return Ok(Some(c));
    }
    Ok(all(store)
        .await?
        .into_iter()
        .find(|c| c.proposal.as_deref() == Some(id)))
}

/// Every entry, oldest first.
pub async fn all(store: &Store) -> Result<Vec<Committed>, StoreError> {
    let mut out = store.ledger_all().await?;
    out.sort_by_key(|c| c.unix_ms);
    Ok(out)
}
