//! The sled store's records: every state interface but the audit log, one tree each.

use super::*;
use crate::store::rules;

#[async_trait]
impl IdempotencyStore for SledStore {
    async fn idem_get(&self, id: &str) -> Result<Option<IdemRecord>, StoreError> {
        Self::get(&self.idem, id)
    }

    async fn idem_swap(
        &self,
        id: &str,
        expected_request: Option<&str>,
        new: &IdemRecord,
    ) -> Result<bool, StoreError> {
        let current = self.idem.get(id)?;
        let holder = match &current {
            Some(bytes) => Some(decode::<IdemRecord>(bytes)?.request_id),
            None => None,
        };
        if holder.as_deref() != expected_request {
            return Ok(false);
        }
        let swapped = self
            .idem
            .compare_and_swap(id, current, Some(serde_json::to_vec(new)?))?
            .is_ok();
        if swapped {
            self.flusher.flush().await?;
        }
        Ok(swapped)
    }

    async fn idem_put(&self, id: &str, rec: &IdemRecord) -> Result<(), StoreError> {
        self.idem.insert(id, serde_json::to_vec(rec)?)?;
        self.flusher.flush().await
    }

    async fn idem_remove(&self, id: &str) -> Result<(), StoreError> {
        self.idem.remove(id)?;
        self.flusher.flush().await
    }

    async fn idem_expire(&self, before_unix: u64) -> Result<usize, StoreError> {
        let removed = self
            .expire(&self.idem, |v| {
                decode::<IdemRecord>(v)
                    .is_ok_and(|r| rules::before_cut(r.created_unix, before_unix))
            })
            .await?;
        Ok(removed.len())
    }
}

pub(super) fn read_f64(bytes: Option<&[u8]>) -> f64 {
    bytes
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(f64::from_be_bytes)
        .unwrap_or(0.0)
}

#[async_trait]
impl BudgetStore for SledStore {
    async fn budget_add(
        &self,
        key: &str,
        amount: f64,
        max: f64,
    ) -> Result<Result<f64, f64>, StoreError> {
        let mut answer = Ok(0.0);
        self.budgets.fetch_and_update(key, |old| {
            answer = rules::budget_add(read_f64(old), amount, max);
            match answer {
                Err(_) => old.map(|b| b.to_vec()),
                Ok(total) => Some(total.to_be_bytes().to_vec()),
            }
        })?;
        if answer.is_ok() {
            self.flusher.flush().await?;
        }
        Ok(answer)
    }

    async fn budget_get(&self, key: &str) -> Result<f64, StoreError> {
        Ok(read_f64(self.budgets.get(key)?.as_deref()))
    }
}

#[async_trait]
impl CounterStore for SledStore {
    async fn take_token(
        &self,
        key: &str,
        capacity: u32,
        per: Duration,
    ) -> Result<Result<(), u64>, StoreError> {
        self.counters.take_token(key, capacity, per).await
    }
}

#[async_trait]
impl KillStore for SledStore {
    async fn kill_list(&self) -> Result<Vec<(KillTarget, KillSwitch)>, StoreError> {
        let mut out = Vec::new();
        for item in self.kill.iter() {
            let (k, v) = item?;
            let key = String::from_utf8_lossy(&k);
            let target = KillTarget::parse(&key).ok_or_else(|| {
                StoreError::from_message(format!("corrupt record: kill switch key {key:?}"))
            })?;
            out.push((target, decode(&v)?));
        }
        Ok(out)
    }

    async fn kill_set(
        &self,
        target: &KillTarget,
        value: Option<&KillSwitch>,
    ) -> Result<(), StoreError> {
        let key = target.to_string();
        match value {
            Some(v) => {
                self.kill.insert(key, serde_json::to_vec(v)?)?;
            }
            None => {
                self.kill.remove(key)?;
            }
        }
        self.flusher.flush().await
    }
}

#[async_trait]
impl ProposalStore for SledStore {
    async fn proposal_create(
        &self,
        p: &Proposal,
        replacing: Option<&str>,
    ) -> Result<bool, StoreError> {
        self.proposals.insert(&p.id, serde_json::to_vec(p)?)?;
        let claimed = self
            .proposal_index
            .compare_and_swap(
                &p.identity,
                replacing.map(str::as_bytes),
                Some(p.id.as_bytes()),
            )?
            .is_ok();
        if !claimed {
            // Another request made the call's proposal first: this one was never visible.
            self.proposals.remove(&p.id)?;
            return Ok(false);
        }
        self.flusher.flush().await?;
        Ok(true)
    }

    async fn proposal_swap(&self, seen: &Proposal, next: &Proposal) -> Result<bool, StoreError> {
        let Some(current) = self.proposals.get(&seen.id)? else {
            return Ok(false);
        };
        let stored = decode::<Proposal>(&current)?;
        if stored.state != seen.state || stored.version != seen.version {
            return Ok(false);
        }
        let mut next = next.clone();
        next.version = seen.version + 1;
        // Against the exact bytes read: a write in between (any field) makes this one lose.
        let swapped = self
            .proposals
            .compare_and_swap(&seen.id, Some(current), Some(serde_json::to_vec(&next)?))?
            .is_ok();
        if swapped {
            self.flusher.flush().await?;
        }
        Ok(swapped)
    }

    async fn proposal_restore(&self, p: &Proposal) -> Result<(), StoreError> {
        self.proposals.insert(&p.id, serde_json::to_vec(p)?)?;
        self.proposal_index.insert(&p.identity, p.id.as_bytes())?;
        self.flusher.flush().await
    }

    async fn proposal_get(&self, id: &str) -> Result<Option<Proposal>, StoreError> {
        Self::get(&self.proposals, id)
    }

    async fn proposal_for(&self, identity: &str) -> Result<Option<Proposal>, StoreError> {
        match self.proposal_index.get(identity)? {
            Some(id) => Self::get(&self.proposals, &String::from_utf8_lossy(&id)),
            None => Ok(None),
        }
    }

    async fn proposal_list(&self) -> Result<Vec<Proposal>, StoreError> {
        Self::all(&self.proposals)
    }

    async fn proposal_expire(&self, before_unix: u64) -> Result<usize, StoreError> {
        let removed = self
            .expire(&self.proposals, |v| {
                decode::<Proposal>(v).is_ok_and(|p| {
                    p.finished_unix()
                        .is_some_and(|t| rules::before_cut(t, before_unix))
                })
            })
            .await?;
        // The index from a call identity to a removed proposal goes with it.
        self.expire(&self.proposal_index, |v| removed.iter().any(|k| k == v))
            .await?;
        Ok(removed.len())
    }
}

#[async_trait]
impl LedgerStore for SledStore {
    async fn ledger_put(&self, c: &Committed) -> Result<(), StoreError> {
        self.ledger
            .insert(c.request_id.as_bytes(), serde_json::to_vec(c)?)?;
        Ok(())
    }

    async fn ledger_get(&self, request_id: &str) -> Result<Option<Committed>, StoreError> {
        Self::get(&self.ledger, request_id)
    }

    async fn ledger_all(&self) -> Result<Vec<Committed>, StoreError> {
        Self::all(&self.ledger)
    }

    async fn ledger_expire(&self, before_ms: u64) -> Result<usize, StoreError> {
        let removed = self
            .expire(&self.ledger, |v| {
                decode::<Committed>(v).is_ok_and(|c| rules::before_cut(c.unix_ms, before_ms))
            })
            .await?;
        Ok(removed.len())
    }

    async fn job_claim(
        &self,
        job: &str,
        agent: &str,
        owner: &str,
    ) -> Result<Option<String>, StoreError> {
        let claim = JobClaim {
            agent: agent.to_string(),
            owner: owner.to_string(),
            since_unix: now_unix(),
        };
        let bytes = serde_json::to_vec(&claim)?;
        // Written without a flush: a claim lost in a crash is made again.
        let held = match self
            .jobs
            .compare_and_swap(job, None::<&[u8]>, Some(bytes))?
        {
            Ok(()) => return Ok(None),
            Err(e) => e.current,
        };
        let Some(held) = held else {
            return Ok(None);
        };
        Ok(decode::<JobClaim>(&held)?.holder_against(agent, owner))
    }

    async fn job_expire(&self, before_unix: u64) -> Result<usize, StoreError> {
        let removed = self
            .expire(&self.jobs, |v| {
                decode::<JobClaim>(v).is_ok_and(|j| rules::before_cut(j.since_unix, before_unix))
            })
            .await?;
        Ok(removed.len())
    }
}

#[async_trait]
impl TokenStore for SledStore {
    async fn token_put(&self, t: &crate::store::AgentToken) -> Result<(), StoreError> {
        self.tokens.insert(&t.id, serde_json::to_vec(t)?)?;
        self.token_hashes.insert(&t.sha256, t.id.as_bytes())?;
        self.flusher.flush().await
    }

    async fn token_get(&self, id: &str) -> Result<Option<crate::store::AgentToken>, StoreError> {
        Self::get(&self.tokens, id)
    }

    async fn token_by_hash(
        &self,
        sha256: &str,
    ) -> Result<Option<crate::store::AgentToken>, StoreError> {
        match self.token_hashes.get(sha256)? {
            Some(id) => Self::get(&self.tokens, &String::from_utf8_lossy(&id)),
            None => Ok(None),
        }
    }

    async fn token_list(&self, now_unix: u64) -> Result<Vec<crate::store::AgentToken>, StoreError> {
        let mut all: Vec<crate::store::AgentToken> = Self::all(&self.tokens)?;
        all.retain(|t| rules::token_unexpired(t, now_unix));
        Ok(all)
    }
}

#[async_trait]
impl GrantStore for SledStore {
    async fn grant_put(&self, g: &crate::store::Grant) -> Result<(), StoreError> {
        // Grants are rare: drop those that ended long ago on the way.
        let cut = rules::ended_grant_cut(now_unix());
        for old in Self::all::<crate::store::Grant>(&self.grants)? {
            if rules::grant_ended_before(&old, cut) {
                self.grants.remove(&old.id)?;
            }
        }
        self.grants.insert(&g.id, serde_json::to_vec(g)?)?;
        self.flusher.flush().await
    }

    async fn grant_get(&self, id: &str) -> Result<Option<crate::store::Grant>, StoreError> {
        Self::get(&self.grants, id)
    }

    async fn grant_open(
        &self,
        agent: Option<&str>,
    ) -> Result<Vec<crate::store::Grant>, StoreError> {
        let mut all: Vec<crate::store::Grant> = Self::all(&self.grants)?;
        all.retain(|g| rules::grant_open(g, agent));
        Ok(all)
    }

    async fn grant_end(
        &self,
        id: &str,
        end: crate::store::GrantEnd,
    ) -> Result<Option<crate::store::Grant>, StoreError> {
        // Another request ending it at the same moment makes the swap fail: read it again.
        for _ in 0..16 {
            let Some(old) = self.grants.get(id)? else {
                return Ok(None);
            };
            let Some(g) = rules::end_grant(decode(&old)?, end.clone()) else {
                return Ok(None);
            };
            let new = serde_json::to_vec(&g)?;
            if self
                .grants
                .compare_and_swap(id, Some(old), Some(new))?
                .is_ok()
            {
                self.flusher.flush().await?;
                return Ok(Some(g));
            }
        }
        Err(StoreError::from_message(format!(
            "grant {id} kept changing while it was being ended"
        )))
    }
}

#[async_trait]
impl SessionStore for SledStore {
    async fn session_put(&self, key: &str, s: &Session) -> Result<(), StoreError> {
        // Sign-ins are rare: drop the expired sessions on the way.
        let now = now_unix();
        for item in self.sessions.iter() {
            let (k, v) = item?;
            if decode::<Session>(&v).map_or(true, |s| rules::session_expired(&s, now)) {
                self.sessions.remove(k)?;
            }
        }
        self.sessions.insert(key, serde_json::to_vec(s)?)?;
        self.flusher.flush().await
    }

    async fn session_get(&self, key: &str) -> Result<Option<Session>, StoreError> {
        Self::get(&self.sessions, key)
    }

    async fn session_remove(&self, key: &str) -> Result<(), StoreError> {
        self.sessions.remove(key)?;
        self.flusher.flush().await
    }
}

#[async_trait]
impl SinkCursorStore for SledStore {
    async fn cursor_get(&self, sink: &str) -> Result<u64, StoreError> {
        Ok(self.cursors.get(sink)?.map(|v| seq_of(&v)).unwrap_or(0))
    }

    async fn cursor_advance(&self, sink: &str, seq: u64) -> Result<(), StoreError> {
        self.cursors.fetch_and_update(sink, |old| {
            let old = old.map(seq_of).unwrap_or(0);
            Some(old.max(seq).to_be_bytes().to_vec())
        })?;
        self.flusher.flush().await
    }

    async fn cursor_list(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let mut out = Vec::new();
        for item in self.cursors.iter() {
            let (k, v) = item?;
            out.push((String::from_utf8_lossy(&k).into_owned(), seq_of(&v)));
        }
        Ok(out)
    }
}

#[async_trait]
impl VaultStore for SledStore {
    async fn vault_get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.vault.get(key)?.map(|v| v.to_vec()))
    }

    async fn vault_swap(
        &self,
        key: &str,
        seen: Option<&[u8]>,
        next: Option<&[u8]>,
    ) -> Result<bool, StoreError> {
        let swapped = self.vault.compare_and_swap(key, seen, next)?.is_ok();
        if swapped {
            self.flusher.flush().await?;
        }
        Ok(swapped)
    }

    async fn vault_scan(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let mut out = Vec::new();
        for item in self.vault.scan_prefix(prefix) {
            let (k, v) = item?;
            out.push((String::from_utf8_lossy(&k).into_owned(), v.to_vec()));
        }
        Ok(out)
    }
}

/// A stored cursor (8 bytes, big-endian); anything else reads as 0.
fn seq_of(v: &[u8]) -> u64 {
    <[u8; 8]>::try_from(v).map(u64::from_be_bytes).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn budgets_survive_a_reopen_and_refuse_past_the_max() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SledStore::open(dir.path()).unwrap();
            assert_eq!(
                store.budget_add("k", 300.0, 500.0).await.unwrap(),
                Ok(300.0)
            );
            assert_eq!(
                store.budget_add("k", 300.0, 500.0).await.unwrap(),
                Err(300.0)
            );
            assert_eq!(
                store.budget_add("k", 200.0, 500.0).await.unwrap(),
                Ok(500.0)
            );
        }
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(store.budget_get("k").await.unwrap(), 500.0);
    }

    #[tokio::test]
    async fn kill_switches_persist() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SledStore::open(dir.path()).unwrap();
            let k = KillSwitch {
                by: "carol".into(),
                reason: "incident".into(),
                at_unix: 1,
            };
            store
                .kill_set(&KillTarget::Tool("x".into()), Some(&k))
                .await
                .unwrap();
        }
        let store = SledStore::open(dir.path()).unwrap();
        let all = store.kill_list().await.unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].0.to_string(), "tool:x");
        store
            .kill_set(&KillTarget::Tool("x".into()), None)
            .await
            .unwrap();
        assert!(store.kill_list().await.unwrap().is_empty());
    }

    fn record(request_id: &str) -> IdemRecord {
        IdemRecord {
            state: crate::model::IdemState::InFlight,
            payload_sha256: "p".into(),
            created_unix: 10,
            request_id: request_id.into(),
            outcome: None,
        }
    }

    #[tokio::test]
    async fn idempotency_swap_lets_one_caller_win() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        assert!(store.idem_swap("c", None, &record("r1")).await.unwrap());
        // A second caller that also saw no record loses.
        assert!(!store.idem_swap("c", None, &record("r2")).await.unwrap());
        assert!(!store
            .idem_swap("c", Some("r0"), &record("r2"))
            .await
            .unwrap());
        assert!(store
            .idem_swap("c", Some("r1"), &record("r3"))
            .await
            .unwrap());
        assert_eq!(store.idem_get("c").await.unwrap().unwrap().request_id, "r3");
        assert_eq!(store.idem_expire(11).await.unwrap(), 1);
        assert!(store.idem_get("c").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn job_claims_belong_to_one_agent_or_its_owner() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(store.job_claim("j", "a1", "alice").await.unwrap(), None);
        assert_eq!(store.job_claim("j", "a2", "alice").await.unwrap(), None);
        assert_eq!(
            store.job_claim("j", "b1", "bob").await.unwrap(),
            Some("a1".to_string())
        );
    }

    #[tokio::test]
    async fn a_data_dir_with_sled_page_compression_opens_as_it_was_written() {
        let dir = tempfile::tempdir().unwrap();
        {
            // What the version before block compression wrote.
            let db = sled::Config::new()
                .path(dir.path().join("store"))
                .use_compression(true)
                .open()
                .unwrap();
            db.open_tree("kill_switches")
                .unwrap()
                .insert(
                    "tool:x",
                    serde_json::to_vec(&KillSwitch {
                        by: "carol".into(),
                        reason: "old".into(),
                        at_unix: 1,
                    })
                    .unwrap(),
                )
                .unwrap();
            db.flush().unwrap();
        }
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(store.kill_list().await.unwrap().len(), 1);
        assert!(compressed(&dir.path().join("store")));
        // A new one leaves compression to the audit blocks.
        let fresh = tempfile::tempdir().unwrap();
        drop(SledStore::open(fresh.path()).unwrap());
        assert!(!compressed(&fresh.path().join("store")));
    }
}
