//! Expiry: idempotency records, finished proposals and rollback-ledger entries are removed once
//! older than their retention (`--idempotency-retention`, `--proposal-retention`,
//! `--ledger-retention`), so the store does not grow without end; and the store's size is
//! watched against `--store-alarm`.

use std::sync::Arc;

use tracing::{info, warn};

use crate::app::Core;
use crate::store::rules::retention_cut;
use crate::store::{now_unix, StoreError};

/// What one sweep removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Swept {
    pub idempotency: usize,
    pub proposals: usize,
    pub ledger: usize,
    pub audit: u64,
}

/// Sweeps every `sweep_interval` until shutdown.
pub(crate) async fn run(app: Arc<Core>) {
    let mut tick = tokio::time::interval(app.config().guards.sweep_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = app.cancel().cancelled() => return,
            _ = tick.tick() => {
                match once(&app).await {
                    Ok(s) if s != Swept::default() => info!(idempotency = s.idempotency, proposals = s.proposals, ledger = s.ledger, audit = s.audit, "expired records removed"),
                    Ok(_) => {}
                    Err(e) => warn!(error = %e, "the expiry sweep failed"),
                }
                let size = app.store().size_on_disk();
                if size > app.config().guards.store_alarm_bytes {
                    warn!(bytes = size, alarm = app.config().guards.store_alarm_bytes, "the store is larger than --store-alarm");
                }
            }
        }
    }
}

/// One sweep over the three kinds of records.
pub async fn once(app: &Core) -> Result<Swept, StoreError> {
    let g = &app.config().guards;
    let now = now_unix();
    let idempotency = app
        .store()
        .idem_expire(retention_cut(now, g.idempotency_retention.as_secs()))
        .await?;
    // Open proposals past their time become `expired` (with their audit event) first.
    crate::approval::list(app, None).await?;
    let proposals = app
        .store()
        .proposal_expire(retention_cut(now, g.proposal_retention.as_secs()))
        .await?;
    let ledger_cut = retention_cut(now, g.ledger_retention.as_secs());
    let ledger = app
        .store()
        .ledger_expire(ledger_cut.saturating_mul(1000))
        .await?;
    // A job's claim lasts as long as its calls can still be rolled back.
    app.store().job_expire(ledger_cut).await?;
    // Grants whose time is up and whose end no timer recorded (a restart, another replica).
    crate::grants::expire_due(app).await?;
    // Links to connect and authorizations under way that were never used.
    app.vault().sweep().await?;
    Ok(Swept {
        idempotency,
        proposals,
        ledger,
        audit: expire_audit(app).await?,
    })
}

/// With `--audit-retention`: events older than it are purged (a `purge` event and an entry in
/// the list of purges say so; the chain still verifies from its anchor).
async fn expire_audit(app: &Core) -> Result<u64, StoreError> {
    let Some(keep) = app.config().guards.audit_retention else {
        return Ok(0);
    };
    let cut = retention_cut(crate::base::now_ms(), keep.as_millis() as u64);
    if app.audit().oldest_ms()?.is_none_or(|t| t >= cut) {
        return Ok(0);
    }
    let why = format!("--audit-retention {}s", keep.as_secs());
    // Never what a sink has not delivered: retention waits for it.
    let delivered = app.sinks().lowest_cursor(app.store()).await;
    let report = app.audit().purge(cut, "toolgate", &why, delivered).await?;
    if report.kept_for_sinks {
        tracing::warn!("audit retention kept events an audit sink has not delivered yet");
    }
    Ok(report.removed)
}
