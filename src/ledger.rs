//! The ledger of committed calls: every call with side effects that was sent, with what it asked
//! and what the upstream answered, for rollback and replay.

use serde_json::Value;

use crate::audit::Redactor;
use crate::model::Committed;
use crate::store::{Store, StoreError};

/// What the request path knows about a committed call, for the ledger.
pub(crate) struct CommitFacts<'a> {
    pub request_id: &'a str,
    pub proposal: Option<&'a str>,
    pub job: &'a str,
    pub agent: &'a str,
    pub tool: &'a str,
    pub tool_version: u32,
    pub host: &'a str,
    pub port: u16,
    pub method: &'a str,
    pub path_and_query: &'a str,
    pub content_type: Option<&'a str>,
    pub body: &'a [u8],
    pub body_json: &'a Value,
    pub status: u16,
    /// The scrubbed answer.
    pub response: &'a [u8],
    pub undoes: Option<&'a str>,
}

/// Records a committed call in the ledger, whatever the upstream answered (a replay re-sends it;
/// only a 2xx can be undone). Written without a flush of its own; the caller's next store
/// write flushes it.
pub(crate) async fn record(store: &Store, redactor: &Redactor, f: CommitFacts<'_>) {
    let entry = Committed {
        request_id: f.request_id.to_string(),
        proposal: f.proposal.map(str::to_string),
        job: f.job.to_string(),
        agent: f.agent.to_string(),
        tool: f.tool.to_string(),
        tool_version: f.tool_version,
        host: f.host.to_string(),
        port: f.port,
        method: f.method.to_string(),
        path_and_query: f.path_and_query.to_string(),
        content_type: f.content_type.map(str::to_string),
        body_text: redactor.text(&String::from_utf8_lossy(f.body)),
        body: redactor.value(f.body_json),
        status: f.status,
        response: serde_json::from_slice(f.response).unwrap_or(Value::Null),
        unix_ms: crate::base::now_ms(),
        undoes: f.undoes.map(str::to_string),
        undone: None,
        attempts: 0,
        undo_approvals: Vec::new(),
    };
    if let Err(e) = store.ledger_put(&entry).await {
        tracing::error!(request_id = f.request_id, error = %e, "could not record the commit for rollback");
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
