//! The audit log on PostgreSQL: one hash chain for every replica. An append inserts its events
//! under their sequence numbers (the primary key) in one transaction with their index rows; a
//! replica that chained from a stale head loses on the key (`StoreError::is_conflict`), reads the
//! new head and chains again, so the chain never forks.
//!
//! `EventLog` is blocking (its callers are the writer thread and blocking readers), so the log
//! runs its queries on a thread of its own, with its own small runtime and pool.

use std::collections::VecDeque;
use std::sync::mpsc;

use deadpool_postgres::Pool;
use futures_util::future::BoxFuture;

use crate::store::{EventLog, Index, Result, Seqs, StoreError, StoredEvent};

type Job = Box<dyn FnOnce(&tokio::runtime::Runtime, &Pool) + Send>;

/// Rows fetched per query by the iterators (their memory stays bounded by a page).
const PAGE: i64 = 1000;

pub(super) struct PgEventLog {
    jobs: std::sync::Mutex<mpsc::Sender<Job>>,
}

fn big(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn from_big(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

impl PgEventLog {
    /// Starts the log's thread with a pool built there by `make_pool`.
    pub(super) fn start(
        make_pool: impl FnOnce() -> Result<Pool> + Send + 'static,
    ) -> Result<PgEventLog> {
        let (tx, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::sync_channel::<Result<()>>(1);
        std::thread::Builder::new()
            .name("toolgate-pg-audit".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = ready_tx.send(Err(StoreError::from_message(e.to_string())));
                        return;
                    }
                };
                let pool = match runtime.block_on(async { make_pool() }) {
                    Ok(p) => p,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                for job in rx {
                    job(&runtime, &pool);
                }
            })
            .map_err(|e| StoreError::from_message(format!("audit log thread: {e}")))?;
        ready_rx
            .recv()
            .map_err(|_| StoreError::from_message("the audit log thread ended".into()))??;
        Ok(PgEventLog {
            jobs: std::sync::Mutex::new(tx),
        })
    }

    /// Runs `f` on the log's thread and waits for its answer.
    fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(Pool) -> BoxFuture<'static, Result<T>> + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = mpsc::sync_channel(1);
        let job: Job = Box::new(move |runtime, pool| {
            let _ = tx.send(runtime.block_on(f(pool.clone())));
        });
        self.jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(job)
            .map_err(|_| StoreError::from_message("the audit log thread ended".into()))?;
        rx.recv()
            .map_err(|_| StoreError::from_message("the audit log thread ended".into()))?
    }

    /// Pages of `(seq, value)` rows after a sequence number, as one iterator.
    fn paged<'a, T: Send + 'static>(
        &'a self,
        from: u64,
        fetch: impl Fn(Pool, i64) -> BoxFuture<'static, Result<Vec<(u64, T)>>>
            + Send
            + Sync
            + Clone
            + 'static,
    ) -> impl Iterator<Item = Result<(u64, T)>> + Send + 'a {
        let mut buf: VecDeque<(u64, T)> = VecDeque::new();
        // The last sequence returned; the next page starts after it.
        let mut after = big(from) - 1;
        let mut done = false;
        std::iter::from_fn(move || {
            if buf.is_empty() && !done {
                let f = fetch.clone();
                let start = after;
                match self.call(move |pool| f(pool, start)) {
                    Ok(rows) => {
                        done = (rows.len() as i64) < PAGE;
                        buf.extend(rows);
                    }
                    Err(e) => {
                        done = true;
                        return Some(Err(e));
                    }
                }
            }
            let (seq, v) = buf.pop_front()?;
            after = big(seq);
            Some(Ok((seq, v)))
        })
    }
}

fn conflict_or(e: tokio_postgres::Error) -> StoreError {
    if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) {
        StoreError::conflict(format!("postgres: {e}"))
    } else {
        e.into()
    }
}

/// The index rows of events: (tag, value, seq) columns for `unnest`.
/// Whether PostgreSQL can index `value`: no NUL byte, and well within a btree entry.
fn indexable(value: &str) -> bool {
    value.len() <= 1024 && !value.contains('\0')
}

fn index_rows(events: &[StoredEvent]) -> (Vec<i16>, Vec<String>, Vec<i64>) {
    let mut out = (Vec::new(), Vec::new(), Vec::new());
    for e in events {
        // A value PostgreSQL's text or its index could not hold is not indexed (the event is
        // still stored and found by time): one odd value must never stop the log.
        for (index, value) in e.keys.iter().filter(|(_, v)| indexable(v)) {
            out.0.push(i16::from(index.tag()));
            out.1.push(value.clone());
            out.2.push(big(e.seq));
        }
    }
    out
}

impl EventLog for PgEventLog {
    fn last(&self) -> Result<Option<Vec<u8>>> {
        self.call(|pool| {
            Box::pin(async move {
                let client = pool.get().await?;
                Ok(client
                    .query_opt(
                        "SELECT event FROM audit_events ORDER BY seq DESC LIMIT 1",
                        &[],
                    )
                    .await?
                    .map(|r| r.get::<_, Vec<u8>>(0)))
            })
        })
    }

    fn append(&self, events: Vec<StoredEvent>) -> Result<()> {
        self.call(move |pool| {
            Box::pin(async move {
                let seqs: Vec<i64> = events.iter().map(|e| big(e.seq)).collect();
                let times: Vec<i64> = events.iter().map(|e| big(e.unix_ms)).collect();
                let bodies: Vec<&[u8]> = events.iter().map(|e| e.bytes.as_slice()).collect();
                let (tags, values, index_seqs) = index_rows(&events);
                let client = pool.get().await?;
                // One statement (so one transaction and one round trip) for the whole batch:
                // the events and their index entries, all or none.
                let statement = client
                    .prepare_cached(
                        "WITH events AS (
                            INSERT INTO audit_events (seq, unix_ms, event)
                            SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bytea[]))
                         INSERT INTO audit_index (tag, value, seq)
                         SELECT * FROM unnest($4::smallint[], $5::text[], $6::bigint[])
                         ON CONFLICT DO NOTHING",
                    )
                    .await?;
                client
                    .execute(
                        &statement,
                        &[&seqs, &times, &bodies, &tags, &values, &index_seqs],
                    )
                    .await
                    .map_err(conflict_or)?;
                Ok(())
            })
        })
    }

    fn index(&self, events: &[StoredEvent]) -> Result<()> {
        let (tags, values, seqs) = index_rows(events);
        self.call(move |pool| {
            Box::pin(async move {
                let client = pool.get().await?;
                client
                    .execute(
                        "INSERT INTO audit_index (tag, value, seq)
                         SELECT * FROM unnest($1::smallint[], $2::text[], $3::bigint[])
                         ON CONFLICT DO NOTHING",
                        &[&tags, &values, &seqs],
                    )
                    .await?;
                Ok(())
            })
        })
    }

    fn get(&self, seq: u64) -> Result<Option<Vec<u8>>> {
        self.call(move |pool| {
            Box::pin(async move {
                let client = pool.get().await?;
                Ok(client
                    .query_opt(
                        "SELECT event FROM audit_events WHERE seq = $1",
                        &[&big(seq)],
                    )
                    .await?
                    .map(|r| r.get::<_, Vec<u8>>(0)))
            })
        })
    }

    fn scan(&self, from_seq: u64) -> Box<dyn Iterator<Item = Result<(u64, Vec<u8>)>> + Send + '_> {
        Box::new(self.paged(from_seq, |pool, after| {
            Box::pin(async move {
                let client = pool.get().await?;
                let rows = client
                    .query(
                        "SELECT seq, event FROM audit_events WHERE seq > $1 ORDER BY seq LIMIT $2",
                        &[&after, &PAGE],
                    )
                    .await?;
                Ok(rows
                    .iter()
                    .map(|r| (from_big(r.get(0)), r.get::<_, Vec<u8>>(1)))
                    .collect())
            })
        }))
    }

    fn lookup(&self, index: Index, value: &str) -> Seqs<'_> {
        let (tag, value) = (i16::from(index.tag()), value.to_string());
        Box::new(
            self.paged(0, move |pool, after| {
                let value = value.clone();
                Box::pin(async move {
                    let client = pool.get().await?;
                    let rows = client
                        .query(
                            "SELECT seq FROM audit_index WHERE tag = $1 AND value = $2 AND seq > $3
                             ORDER BY seq LIMIT $4",
                            &[&tag, &value, &after, &PAGE],
                        )
                        .await?;
                    Ok(rows.iter().map(|r| (from_big(r.get(0)), ())).collect())
                })
            })
            .map(|r| r.map(|(seq, ())| seq)),
        )
    }

    fn lookup_rev(&self, index: Index, value: &str, before: u64) -> Seqs<'_> {
        let (tag, value) = (i16::from(index.tag()), value.to_string());
        // `paged` hands each query the last sequence returned (at first, `before`).
        Box::new(
            self.paged(before.saturating_add(1), move |pool, below| {
                let value = value.clone();
                Box::pin(async move {
                    let client = pool.get().await?;
                    let rows = client
                        .query(
                            "SELECT seq FROM audit_index WHERE tag = $1 AND value = $2 AND seq < $3
                             ORDER BY seq DESC LIMIT $4",
                            &[&tag, &value, &below, &PAGE],
                        )
                        .await?;
                    Ok(rows.iter().map(|r| (from_big(r.get(0)), ())).collect())
                })
            })
            .map(|r| r.map(|(seq, ())| seq)),
        )
    }

    fn in_time(&self, from_ms: u64, until_ms: u64) -> Seqs<'_> {
        let (from, until) = (big(from_ms), big(until_ms));
        Box::new(
            self.paged(0, move |pool, after| {
                Box::pin(async move {
                    let client = pool.get().await?;
                    let rows = client
                        .query(
                            "SELECT seq FROM audit_events
                             WHERE unix_ms >= $1 AND unix_ms < $2 AND seq > $3
                             ORDER BY seq LIMIT $4",
                            &[&from, &until, &after, &PAGE],
                        )
                        .await?;
                    Ok(rows.iter().map(|r| (from_big(r.get(0)), ())).collect())
                })
            })
            .map(|r| r.map(|(seq, ())| seq)),
        )
    }

    fn remove(&self, events: &[StoredEvent]) -> Result<()> {
        let seqs: Vec<i64> = events.iter().map(|e| big(e.seq)).collect();
        self.call(move |pool| {
            Box::pin(async move {
                let mut client = pool.get().await?;
                let tx = client.transaction().await?;
                tx.execute("DELETE FROM audit_index WHERE seq = ANY($1)", &[&seqs])
                    .await?;
                tx.execute("DELETE FROM audit_events WHERE seq = ANY($1)", &[&seqs])
                    .await?;
                tx.commit().await?;
                Ok(())
            })
        })
    }

    fn meta_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let key = key.to_vec();
        self.call(move |pool| {
            Box::pin(async move {
                let client = pool.get().await?;
                Ok(client
                    .query_opt("SELECT value FROM audit_meta WHERE key = $1", &[&key])
                    .await?
                    .map(|r| r.get::<_, Vec<u8>>(0)))
            })
        })
    }

    fn meta_put(&self, key: &[u8], value: Vec<u8>) -> Result<()> {
        let key = key.to_vec();
        self.call(move |pool| {
            Box::pin(async move {
                let client = pool.get().await?;
                client
                    .execute(
                        "INSERT INTO audit_meta (key, value) VALUES ($1, $2)
                         ON CONFLICT (key) DO UPDATE SET value = $2",
                        &[&key, &value],
                    )
                    .await?;
                Ok(())
            })
        })
    }

    /// Every append is a committed transaction: nothing is waiting to be made durable.
    fn sync(&self) -> Result<()> {
        Ok(())
    }
}
