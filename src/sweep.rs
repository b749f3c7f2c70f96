//! Expiry: idempotency records, finished proposals and rollback-ledger entries are removed once
//! older than their retention (`--idempotency-retention`, `--proposal-retention`,
//! `--ledger-retention`), so the store does not grow without end; and the store's size is
//! watched against `--store-alarm`.

use std::sync::Arc;

use tracing::{info, warn};

use crate::store::{now_unix, IdemRecord, StoreError};
use crate::Gate;

/// What one sweep removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Swept {
    pub idempotency: usize,
    pub proposals: usize,
    pub ledger: usize,
}

/// Sweeps every `sweep_interval` until shutdown.
pub(crate) async fn run(gate: Arc<Gate>) {
    let mut tick = tokio::time::interval(gate.config.guards.sweep_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = gate.cancel.cancelled() => return,
            _ = tick.tick() => {
                match once(&gate).await {
                    Ok(s) if s != Swept::default() => info!(idempotency = s.idempotency, proposals = s.proposals, ledger = s.ledger, "expired records removed"),
                    Ok(_) => {}
                    Err(e) => warn!(error = %e, "the expiry sweep failed"),
                }
                let size = gate.store.size_on_disk();
                if size > gate.config.guards.store_alarm_bytes {
                    warn!(bytes = size, alarm = gate.config.guards.store_alarm_bytes, "the store is larger than --store-alarm");
                }
            }
        }
    }
}

/// One sweep over the three kinds of records.
pub async fn once(gate: &Gate) -> Result<Swept, StoreError> {
    let g = &gate.config.guards;
    let now = now_unix();
    let idem_cut = now.saturating_sub(g.idempotency_retention.as_secs());
    let idempotency = gate
        .store
        .expire("idempotency", |v| {
            serde_json::from_slice::<IdemRecord>(v).is_ok_and(|r| r.created_unix < idem_cut)
        })
        .await?
        .len();

    // Open proposals past their time become `expired` (with their audit event) first.
    crate::approval::list(gate, None).await?;
    let prop_cut = now.saturating_sub(g.proposal_retention.as_secs());
    let removed = gate
        .store
        .expire("proposals", |v| {
            serde_json::from_slice::<crate::model::Proposal>(v)
                .is_ok_and(|p| p.finished_unix().is_some_and(|t| t < prop_cut))
        })
        .await?;
    // The index from a call identity to a removed proposal goes with it.
    gate.store
        .expire("proposal_by_call", |v| removed.iter().any(|k| k == v))
        .await?;

    let ledger_cut = now
        .saturating_sub(g.ledger_retention.as_secs())
        .saturating_mul(1000);
    let ledger = gate
        .store
        .expire(crate::store::LEDGER, |v| {
            serde_json::from_slice::<crate::model::Committed>(v)
                .is_ok_and(|c| c.unix_ms < ledger_cut)
        })
        .await?
        .len();
    // A job's claim lasts as long as its calls can still be rolled back.
    let job_cut = now.saturating_sub(g.ledger_retention.as_secs());
    gate.store
        .expire("jobs", |v| {
            serde_json::from_slice::<crate::store::JobClaim>(v)
                .is_ok_and(|j| j.since_unix < job_cut)
        })
        .await?;
    Ok(Swept {
        idempotency,
        proposals: removed.len(),
        ledger,
    })
}
