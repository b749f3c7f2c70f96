//! `toolgate db import --data-dir DIR`: the open state of a stopped single-process toolgate
//! (sled) moved to the shared store, so that switching to replicas loses no held call, no kill
//! switch, no idempotency record, no issued token, no grant and no person's connection. Nothing already in the target
//! is overwritten: a record the target holds stays as it is and is counted as skipped, so
//! running the import twice is safe.
//!
//! The audit log is not moved: its chain and hashes are the evidence as written, and it stays
//! readable and verifiable where it is (`toolgate audit … --data-dir DIR`).

use super::{
    Backend, GrantStore, KillStore, LedgerStore, ProposalStore, SledStore, StoreError, TokenStore,
    VaultStore,
};

/// What an import wrote and what it left because the target already had it.
#[derive(Debug, Default, serde::Serialize)]
pub struct Imported {
    pub proposals: usize,
    pub kill_switches: usize,
    pub idempotency_records: usize,
    pub budgets: usize,
    pub ledger_entries: usize,
    pub job_claims: usize,
    /// Issued agent tokens not yet expired (as hashes, as they were stored).
    pub tokens: usize,
    /// Grants that have not ended.
    pub grants: usize,
    /// People's connections (sealed again under the target's key).
    pub connections: usize,
    /// Records the target already held (left as they were).
    pub skipped: usize,
    /// Held calls whose sealed headers did not open under the data dir's key: imported without
    /// them, so they can be decided and read but never sent.
    pub unsealable: usize,
}

/// Copies the open state of `from` into `to`. Proposals keep their sealed headers, sealed again
/// under the target's key (replicas share `--certs/seal.key`; the data dir had its own).
pub async fn import(from: &SledStore, to: &dyn Backend) -> Result<Imported, StoreError> {
    let mut done = Imported::default();
    import_proposals(from, to, &mut done).await?;
    import_decisions(from, to, &mut done).await?;
    import_principals(from, to, &mut done).await?;
    import_connections(from, to, &mut done).await?;
    to.flush().await?;
    Ok(done)
}

/// Proposals, oldest first, so that the index from a call to its latest proposal ends where it
/// was.
async fn import_proposals(
    from: &SledStore,
    to: &dyn Backend,
    done: &mut Imported,
) -> Result<(), StoreError> {
    let mut proposals = from.proposal_list().await?;
    proposals.sort_by_key(|p| p.created_unix);
    for mut p in proposals {
        if to.proposal_get(&p.id).await?.is_some() {
            done.skipped += 1;
            continue;
        }
        if let Some(sealed) = p.request.sealed_headers.take() {
            match from.sealer().open_sealed(&sealed) {
                Some(plain) => p.request.sealed_headers = Some(to.sealer().seal(&plain)?),
                None => done.unsealable += 1,
            }
        }
        to.proposal_restore(&p).await?;
        done.proposals += 1;
    }
    Ok(())
}

/// What earlier calls decided: kill switches, idempotency records, budgets, the ledger and the
/// job claims.
async fn import_decisions(
    from: &SledStore,
    to: &dyn Backend,
    done: &mut Imported,
) -> Result<(), StoreError> {
    let present = to.kill_list().await?;
    for (target, switch) in from.kill_list().await? {
        if present.iter().any(|(t, _)| *t == target) {
            done.skipped += 1;
            continue;
        }
        to.kill_set(&target, Some(&switch)).await?;
        done.kill_switches += 1;
    }
    for (id, record) in from.idem_all()? {
        if to.idem_swap(&id, None, &record).await? {
            done.idempotency_records += 1;
        } else {
            done.skipped += 1;
        }
    }
    for (key, total) in from.budget_all()? {
        if to.budget_get(&key).await? != 0.0 {
            done.skipped += 1;
            continue;
        }
        to.budget_add(&key, total, f64::INFINITY).await?.ok();
        done.budgets += 1;
    }
    for entry in from.ledger_all().await? {
        if to.ledger_get(&entry.request_id).await?.is_some() {
            done.skipped += 1;
            continue;
        }
        to.ledger_put(&entry).await?;
        done.ledger_entries += 1;
    }
    for (job, claim) in from.job_all()? {
        match to.job_claim(&job, &claim.agent, &claim.owner).await? {
            None => done.job_claims += 1,
            Some(_) => done.skipped += 1,
        }
    }
    Ok(())
}

/// People's connections: each record opened under the data dir's key and sealed again under
/// the target's (one that does not open is counted as unsealable and left).
async fn import_connections(
    from: &SledStore,
    to: &dyn Backend,
    done: &mut Imported,
) -> Result<(), StoreError> {
    for (key, raw) in from.vault_scan("conn/").await? {
        let plain = std::str::from_utf8(&raw)
            .ok()
            .and_then(|s| from.sealer().open_sealed(s));
        let Some(plain) = plain else {
            done.unsealable += 1;
            continue;
        };
        let sealed = to.sealer().seal(&plain)?;
        match to.vault_swap(&key, None, Some(sealed.as_bytes())).await? {
            true => done.connections += 1,
            false => done.skipped += 1,
        }
    }
    Ok(())
}

/// Issued tokens still in force and grants still open.
async fn import_principals(
    from: &SledStore,
    to: &dyn Backend,
    done: &mut Imported,
) -> Result<(), StoreError> {
    for t in from.token_list(super::now_unix()).await? {
        if to.token_get(&t.id).await?.is_some() {
            done.skipped += 1;
            continue;
        }
        to.token_put(&t).await?;
        done.tokens += 1;
    }
    for g in from.grant_open(None).await? {
        if to.grant_get(&g.id).await?.is_some() {
            done.skipped += 1;
            continue;
        }
        to.grant_put(&g).await?;
        done.grants += 1;
    }
    Ok(())
}
