//! The state records on PostgreSQL: every interface but the audit log, one table each.

use super::*;
use crate::store::rules;

#[async_trait]
impl IdempotencyStore for PgStore {
    async fn idem_get(&self, id: &str) -> Result<Option<IdemRecord>, StoreError> {
        self.get("SELECT record FROM idempotency WHERE id = $1", id)
            .await
    }

    async fn idem_swap(
        &self,
        id: &str,
        expected_request: Option<&str>,
        new: &IdemRecord,
    ) -> Result<bool, StoreError> {
        let record = serde_json::to_vec(new)?;
        let created = big(new.created_unix);
        let n = match expected_request {
            // The unique key decides who sends.
            None => {
                self.execute(
                    "INSERT INTO idempotency (id, request_id, created_unix, record)
                     VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO NOTHING",
                    &[&id, &new.request_id, &created, &record],
                )
                .await?
            }
            Some(holder) => {
                self.execute(
                    "UPDATE idempotency SET request_id = $2, created_unix = $3, record = $4
                     WHERE id = $1 AND request_id = $5",
                    &[&id, &new.request_id, &created, &record, &holder],
                )
                .await?
            }
        };
        Ok(n == 1)
    }

    async fn idem_put(&self, id: &str, rec: &IdemRecord) -> Result<(), StoreError> {
        let record = serde_json::to_vec(rec)?;
        self.execute(
            "INSERT INTO idempotency (id, request_id, created_unix, record) VALUES ($1, $2, $3, $4)
             ON CONFLICT (id) DO UPDATE SET request_id = $2, created_unix = $3, record = $4",
            &[&id, &rec.request_id, &big(rec.created_unix), &record],
        )
        .await?;
        Ok(())
    }

    async fn idem_remove(&self, id: &str) -> Result<(), StoreError> {
        self.execute("DELETE FROM idempotency WHERE id = $1", &[&id])
            .await?;
        Ok(())
    }

    async fn idem_expire(&self, before_unix: u64) -> Result<usize, StoreError> {
        let n = self
            .execute(
                "DELETE FROM idempotency WHERE created_unix < $1",
                &[&big(before_unix)],
            )
            .await?;
        Ok(n as usize)
    }
}

#[async_trait]
impl BudgetStore for PgStore {
    async fn budget_add(
        &self,
        key: &str,
        amount: f64,
        max: f64,
    ) -> Result<Result<f64, f64>, StoreError> {
        // Keys may hold NUL separators: bytea, not text.
        let key = key.as_bytes();
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        tx.execute(
            "INSERT INTO budgets (key, total) VALUES ($1, 0) ON CONFLICT (key) DO NOTHING",
            &[&key],
        )
        .await?;
        let current: f64 = tx
            .query_one(
                "SELECT total FROM budgets WHERE key = $1 FOR UPDATE",
                &[&key],
            )
            .await?
            .get(0);
        let total = match rules::budget_add(current, amount, max) {
            Ok(total) => total,
            refused => return Ok(refused),
        };
        tx.execute(
            "UPDATE budgets SET total = $2 WHERE key = $1",
            &[&key, &total],
        )
        .await?;
        tx.commit().await?;
        Ok(Ok(total))
    }

    async fn budget_get(&self, key: &str) -> Result<f64, StoreError> {
        let key = key.as_bytes();
        let client = self.pool.get().await?;
        Ok(client
            .query_opt("SELECT total FROM budgets WHERE key = $1", &[&key])
            .await?
            .map_or(0.0, |r| r.get(0)))
    }
}

#[async_trait]
impl CounterStore for PgStore {
    /// A token bucket shared by every replica, on the database's clock.
    async fn take_token(
        &self,
        key: &str,
        capacity: u32,
        per: Duration,
    ) -> Result<Result<(), u64>, StoreError> {
        let bucket = rules::Bucket { capacity, per };
        let key = key.as_bytes();
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        tx.execute(
            "INSERT INTO counters (key, tokens, updated_ms)
             VALUES ($1, $2, (extract(epoch from clock_timestamp()) * 1000)::bigint)
             ON CONFLICT (key) DO NOTHING",
            &[&key, &bucket.full()],
        )
        .await?;
        let row = tx
            .query_one(
                "SELECT tokens, updated_ms, (extract(epoch from clock_timestamp()) * 1000)::bigint
                 FROM counters WHERE key = $1 FOR UPDATE",
                &[&key],
            )
            .await?;
        let (tokens, updated, now): (f64, i64, i64) = (row.get(0), row.get(1), row.get(2));
        let elapsed = Duration::from_millis(u64::try_from(now - updated).unwrap_or(0));
        let (left, answer) = bucket.take(tokens, elapsed);
        tx.execute(
            "UPDATE counters SET tokens = $2, updated_ms = $3 WHERE key = $1",
            &[&key, &left, &now],
        )
        .await?;
        tx.commit().await?;
        Ok(answer)
    }
}

#[async_trait]
impl KillStore for PgStore {
    async fn kill_list(&self) -> Result<Vec<(KillTarget, KillSwitch)>, StoreError> {
        let client = self.pool.get().await?;
        let rows = client
            .query("SELECT target, record FROM kill_switches", &[])
            .await?;
        rows.iter()
            .map(|r| {
                let key: &str = r.get(0);
                let target = KillTarget::parse(key).ok_or_else(|| {
                    StoreError::from_message(format!("corrupt record: kill switch key {key:?}"))
                })?;
                Ok((target, decode(r.get::<_, &[u8]>(1))?))
            })
            .collect()
    }

    async fn kill_set(
        &self,
        target: &KillTarget,
        value: Option<&KillSwitch>,
    ) -> Result<(), StoreError> {
        let key = target.to_string();
        match value {
            Some(v) => {
                self.execute(
                    "INSERT INTO kill_switches (target, record) VALUES ($1, $2)
                     ON CONFLICT (target) DO UPDATE SET record = $2",
                    &[&key, &serde_json::to_vec(v)?],
                )
                .await?
            }
            None => {
                self.execute("DELETE FROM kill_switches WHERE target = $1", &[&key])
                    .await?
            }
        };
        Ok(())
    }
}

/// A proposal's columns besides its record: its state and when it finished (for expiry).
fn proposal_columns(p: &Proposal) -> (&'static str, Option<i64>) {
    (p.state.as_str(), p.finished_unix().map(big))
}

/// Inserts a proposal's row as it is (`over`: in place of one with the same id).
async fn insert_proposal(
    tx: &deadpool_postgres::Transaction<'_>,
    p: &Proposal,
    over: bool,
) -> Result<(), StoreError> {
    let (state, finished) = proposal_columns(p);
    let sql = match over {
        false => {
            "INSERT INTO proposals (id, state, finished_unix, record, version)
             VALUES ($1, $2, $3, $4, $5)"
        }
        true => {
            "INSERT INTO proposals (id, state, finished_unix, record, version)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (id) DO UPDATE SET state = $2, finished_unix = $3, record = $4,
                version = $5"
        }
    };
    let record = serde_json::to_vec(p)?;
    tx.execute(sql, &[&p.id, &state, &finished, &record, &big(p.version)])
        .await?;
    Ok(())
}

#[async_trait]
impl ProposalStore for PgStore {
    async fn proposal_create(
        &self,
        p: &Proposal,
        replacing: Option<&str>,
    ) -> Result<bool, StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        insert_proposal(&tx, p, false).await?;
        // The index row is the compare-and-set: a concurrent insert or update of the same
        // identity waits for this one and then finds its condition false.
        let claimed = match replacing {
            None => {
                tx.execute(
                    "INSERT INTO proposal_by_call (identity, id) VALUES ($1, $2)
                     ON CONFLICT (identity) DO NOTHING",
                    &[&p.identity, &p.id],
                )
                .await?
            }
            Some(old) => {
                tx.execute(
                    "UPDATE proposal_by_call SET id = $2 WHERE identity = $1 AND id = $3",
                    &[&p.identity, &p.id, &old],
                )
                .await?
            }
        };
        if claimed != 1 {
            tx.rollback().await?;
            return Ok(false);
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn proposal_swap(&self, seen: &Proposal, next: &Proposal) -> Result<bool, StoreError> {
        let mut next = next.clone();
        next.version = seen.version + 1;
        let (state, finished) = proposal_columns(&next);
        // State and version checked in the statement that writes: one atomic step.
        let n = self
            .execute(
                "UPDATE proposals SET state = $2, finished_unix = $3, record = $4, version = $5
                 WHERE id = $1 AND state = $6 AND version = $7",
                &[
                    &seen.id,
                    &state,
                    &finished,
                    &serde_json::to_vec(&next)?,
                    &big(next.version),
                    &seen.state.as_str(),
                    &big(seen.version),
                ],
            )
            .await?;
        Ok(n == 1)
    }

    async fn proposal_restore(&self, p: &Proposal) -> Result<(), StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        insert_proposal(&tx, p, true).await?;
        tx.execute(
            "INSERT INTO proposal_by_call (identity, id) VALUES ($1, $2)
             ON CONFLICT (identity) DO UPDATE SET id = $2",
            &[&p.identity, &p.id],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn proposal_get(&self, id: &str) -> Result<Option<Proposal>, StoreError> {
        self.get("SELECT record FROM proposals WHERE id = $1", id)
            .await
    }

    async fn proposal_for(&self, identity: &str) -> Result<Option<Proposal>, StoreError> {
        self.get(
            "SELECT p.record FROM proposal_by_call c JOIN proposals p ON p.id = c.id
             WHERE c.identity = $1",
            identity,
        )
        .await
    }

    async fn proposal_list(&self) -> Result<Vec<Proposal>, StoreError> {
        self.all("SELECT record FROM proposals ORDER BY id").await
    }

    async fn proposal_in_state(&self, state: State) -> Result<Vec<Proposal>, StoreError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT record FROM proposals WHERE state = $1 ORDER BY id",
                &[&state.as_str()],
            )
            .await?;
        rows.iter().map(|r| decode(r.get::<_, &[u8]>(0))).collect()
    }

    async fn proposal_expire(&self, before_unix: u64) -> Result<usize, StoreError> {
        // The index rows go with their proposal (ON DELETE CASCADE).
        let n = self
            .execute(
                "DELETE FROM proposals WHERE finished_unix < $1",
                &[&big(before_unix)],
            )
            .await?;
        Ok(n as usize)
    }
}

#[async_trait]
impl LedgerStore for PgStore {
    async fn ledger_put(&self, c: &Committed) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO ledger (request_id, unix_ms, record) VALUES ($1, $2, $3)
             ON CONFLICT (request_id) DO UPDATE SET unix_ms = $2, record = $3",
            &[&c.request_id, &big(c.unix_ms), &serde_json::to_vec(c)?],
        )
        .await?;
        Ok(())
    }

    async fn ledger_get(&self, request_id: &str) -> Result<Option<Committed>, StoreError> {
        self.get(
            "SELECT record FROM ledger WHERE request_id = $1",
            request_id,
        )
        .await
    }

    async fn ledger_all(&self) -> Result<Vec<Committed>, StoreError> {
        self.all("SELECT record FROM ledger ORDER BY unix_ms").await
    }

    async fn ledger_expire(&self, before_ms: u64) -> Result<usize, StoreError> {
        let n = self
            .execute("DELETE FROM ledger WHERE unix_ms < $1", &[&big(before_ms)])
            .await?;
        Ok(n as usize)
    }

    async fn job_claim(
        &self,
        job: &str,
        agent: &str,
        owner: &str,
    ) -> Result<Option<String>, StoreError> {
        let client = self.pool.get().await?;
        let claimed = client
            .query_opt(
                "INSERT INTO jobs (job, agent, owner, since_unix) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (job) DO NOTHING RETURNING agent",
                &[&job, &agent, &owner, &big(now_unix())],
            )
            .await?;
        if claimed.is_some() {
            return Ok(None);
        }
        let Some(row) = client
            .query_opt("SELECT agent, owner FROM jobs WHERE job = $1", &[&job])
            .await?
        else {
            return Ok(None);
        };
        let held = JobClaim {
            agent: row.get(0),
            owner: row.get(1),
            since_unix: 0,
        };
        Ok(held.holder_against(agent, owner))
    }

    async fn job_expire(&self, before_unix: u64) -> Result<usize, StoreError> {
        let n = self
            .execute(
                "DELETE FROM jobs WHERE since_unix < $1",
                &[&big(before_unix)],
            )
            .await?;
        Ok(n as usize)
    }
}

#[async_trait]
impl TokenStore for PgStore {
    async fn token_put(&self, t: &crate::store::AgentToken) -> Result<(), StoreError> {
        let record = serde_json::to_vec(t)?;
        self.execute(
            "INSERT INTO tokens (id, sha256, expires_unix, record) VALUES ($1, $2, $3, $4)
             ON CONFLICT (id) DO UPDATE SET record = $4",
            &[&t.id, &t.sha256, &big(t.expires_unix), &record],
        )
        .await?;
        Ok(())
    }

    async fn token_get(&self, id: &str) -> Result<Option<crate::store::AgentToken>, StoreError> {
        self.get("SELECT record FROM tokens WHERE id = $1", id)
            .await
    }

    async fn token_by_hash(
        &self,
        sha256: &str,
    ) -> Result<Option<crate::store::AgentToken>, StoreError> {
        self.get("SELECT record FROM tokens WHERE sha256 = $1", sha256)
            .await
    }

    async fn token_list(&self, now_unix: u64) -> Result<Vec<crate::store::AgentToken>, StoreError> {
        let mut all: Vec<crate::store::AgentToken> =
            self.all("SELECT record FROM tokens ORDER BY id").await?;
        all.retain(|t| rules::token_unexpired(t, now_unix));
        Ok(all)
    }
}

#[async_trait]
impl GrantStore for PgStore {
    async fn grant_put(&self, g: &crate::store::Grant) -> Result<(), StoreError> {
        // Grants are rare: drop those that ended long ago on the way.
        let cut = rules::ended_grant_cut(now_unix());
        self.execute("DELETE FROM grants WHERE ended_unix < $1", &[&big(cut)])
            .await?;
        self.execute(
            "INSERT INTO grants (id, agent, record) VALUES ($1, $2, $3)",
            &[&g.id, &g.agent, &serde_json::to_vec(g)?],
        )
        .await?;
        Ok(())
    }

    async fn grant_get(&self, id: &str) -> Result<Option<crate::store::Grant>, StoreError> {
        self.get("SELECT record FROM grants WHERE id = $1", id)
            .await
    }

    async fn grant_open(
        &self,
        agent: Option<&str>,
    ) -> Result<Vec<crate::store::Grant>, StoreError> {
        match agent {
            Some(a) => {
                self.all_by(
                    "SELECT record FROM grants WHERE agent = $1 AND ended_unix IS NULL",
                    a,
                )
                .await
            }
            None => {
                self.all("SELECT record FROM grants WHERE ended_unix IS NULL ORDER BY id")
                    .await
            }
        }
    }

    async fn grant_end(
        &self,
        id: &str,
        end: crate::store::GrantEnd,
    ) -> Result<Option<crate::store::Grant>, StoreError> {
        let Some(old) = self.grant_get(id).await? else {
            return Ok(None);
        };
        let at = big(end.at_unix);
        let Some(g) = rules::end_grant(old, end) else {
            return Ok(None);
        };
        // Only the first to end it changes the row.
        let n = self
            .execute(
                "UPDATE grants SET ended_unix = $2, record = $3 WHERE id = $1 AND ended_unix IS NULL",
                &[&id, &at, &serde_json::to_vec(&g)?],
            )
            .await?;
        Ok((n == 1).then_some(g))
    }
}

#[async_trait]
impl SessionStore for PgStore {
    async fn session_put(&self, key: &str, s: &Session) -> Result<(), StoreError> {
        // Sign-ins are rare: drop the expired sessions on the way.
        self.execute(
            "DELETE FROM sessions WHERE expires_unix <= $1",
            &[&big(now_unix())],
        )
        .await?;
        self.execute(
            "INSERT INTO sessions (key, expires_unix, record) VALUES ($1, $2, $3)
             ON CONFLICT (key) DO UPDATE SET expires_unix = $2, record = $3",
            &[&key, &big(s.expires_unix), &serde_json::to_vec(s)?],
        )
        .await?;
        Ok(())
    }

    async fn session_get(&self, key: &str) -> Result<Option<Session>, StoreError> {
        self.get("SELECT record FROM sessions WHERE key = $1", key)
            .await
    }

    async fn session_remove(&self, key: &str) -> Result<(), StoreError> {
        self.execute("DELETE FROM sessions WHERE key = $1", &[&key])
            .await?;
        Ok(())
    }
}

#[async_trait]
impl SinkCursorStore for PgStore {
    async fn cursor_get(&self, sink: &str) -> Result<u64, StoreError> {
        let client = self.pool.get().await?;
        let statement = client
            .prepare_cached("SELECT seq FROM sink_cursors WHERE sink = $1")
            .await?;
        let row = client.query_opt(&statement, &[&sink]).await?;
        Ok(row.map_or(0, |r| u64::try_from(r.get::<_, i64>(0)).unwrap_or(0)))
    }

    async fn cursor_advance(&self, sink: &str, seq: u64) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO sink_cursors (sink, seq) VALUES ($1, $2)
             ON CONFLICT (sink) DO UPDATE SET seq = GREATEST(sink_cursors.seq, $2)",
            &[&sink, &big(seq)],
        )
        .await?;
        Ok(())
    }

    async fn cursor_list(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let client = self.pool.get().await?;
        let statement = client
            .prepare_cached("SELECT sink, seq FROM sink_cursors")
            .await?;
        let rows = client.query(&statement, &[]).await?;
        Ok(rows
            .iter()
            .map(|r| {
                (
                    r.get::<_, String>(0),
                    u64::try_from(r.get::<_, i64>(1)).unwrap_or(0),
                )
            })
            .collect())
    }
}

#[async_trait]
impl VaultStore for PgStore {
    async fn vault_get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let client = self.pool.get().await?;
        let statement = client
            .prepare_cached("SELECT record FROM vault WHERE key = $1")
            .await?;
        let row = client.query_opt(&statement, &[&key]).await?;
        Ok(row.map(|r| r.get::<_, Vec<u8>>(0)))
    }

    async fn vault_swap(
        &self,
        key: &str,
        seen: Option<&[u8]>,
        next: Option<&[u8]>,
    ) -> Result<bool, StoreError> {
        let n = match (seen, next) {
            (None, Some(next)) => {
                self.execute(
                    "INSERT INTO vault (key, record) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
                    &[&key, &next],
                )
                .await?
            }
            (Some(seen), Some(next)) => {
                self.execute(
                    "UPDATE vault SET record = $3 WHERE key = $1 AND record = $2",
                    &[&key, &seen, &next],
                )
                .await?
            }
            (Some(seen), None) => {
                self.execute(
                    "DELETE FROM vault WHERE key = $1 AND record = $2",
                    &[&key, &seen],
                )
                .await?
            }
            (None, None) => u64::from(self.vault_get(key).await?.is_none()),
        };
        Ok(n == 1)
    }

    async fn vault_scan(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let client = self.pool.get().await?;
        let statement = client
            .prepare_cached(
                "SELECT key, record FROM vault WHERE left(key, length($1)) = $1 ORDER BY key",
            )
            .await?;
        let rows = client.query(&statement, &[&prefix]).await?;
        Ok(rows
            .iter()
            .map(|r| (r.get::<_, String>(0), r.get::<_, Vec<u8>>(1)))
            .collect())
    }
}
