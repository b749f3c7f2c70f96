//! The local store: sled under `--data-dir`. Trees: `idempotency`, `budgets`, `kill_switches`,
//! `proposals` and `proposal_by_call`, `commits` (the ledger), `jobs`, `sessions`, and the audit
//! log's `audit` and `audit_meta`. Writes that a decision depends on are flushed before the call
//! goes on (one flush thread, group commit).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::de::DeserializeOwned;

mod block;
mod flush;
mod kv;
mod log;
mod recover;
mod segment;

pub use self::flush::Flusher;
use self::log::SledEventLog;
pub use super::Sealer;

use super::{
    Backend, BudgetStore, Committed, CounterStore, EventLog, GrantStore, IdemRecord,
    IdempotencyStore, JobClaim, KillStore, KillSwitch, KillTarget, LedgerStore, MemoryCounters,
    Proposal, ProposalStore, Session, SessionStore, SinkCursorStore, StoreError, TokenStore,
    VaultStore,
};
use crate::base::now_unix;

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        StoreError::from_message(e.to_string())
    }
}

/// sled's page cache (its default, 1 GiB, is most of a small gateway's memory).
const CACHE_BYTES: u64 = 64 * 1024 * 1024;

/// Whether the database at `path` compresses its pages with sled's own zstd: only a database
/// created so (by the version before the audit log compressed its blocks itself); sled cannot
/// change it afterwards. A new one does not: sled creates a compression context for every page
/// it writes, which cost more than the rest of the audit writer together.
fn compressed(path: &Path) -> bool {
    // The file ends in a binary checksum: read it as bytes.
    match std::fs::read(path.join("conf")) {
        Ok(conf) => String::from_utf8_lossy(&conf)
            .lines()
            .any(|l| l.trim() == "use_compression: true"),
        Err(_) => false,
    }
}

/// Whether sled could not open because another handle holds its lock.
fn locked(e: &sled::Error) -> bool {
    // sled says so only in the text of an I/O error (its lock's WouldBlock formatted into it).
    matches!(e, sled::Error::Io(io) if io.kind() == std::io::ErrorKind::WouldBlock
        || io.to_string().contains("could not acquire lock"))
}

/// How long a lock held is tried again (see `open_db`).
const LOCK_WAIT: Duration = Duration::from_secs(2);

/// Opens sled at `path`. A lock held is tried again for a moment, because closing a store does
/// not release sled's lock at once, even when every handle (and our flush thread, joined when
/// the last one goes) is gone: the lock lives as long as sled's data file, and tasks on sled
/// 0.34's IO thread pool hold the file after the last handle. Two were found in its source:
/// the task that writes a sealed IO buffer (`pagecache/iobuf.rs`, `maybe_seal_and_write_iobuf`)
/// wakes the flush waiting for it before it lets go of its `Arc<IoBufs>`, and the task that
/// cuts freed segments off the end of the file (`pagecache/segment.rs`, `truncate`: `set_len`
/// and `sync_all`) holds the config, and so the file, until that `fsync` returns, and neither a
/// flush nor a drop waits for it. sled has no way to wait for them. Only a reopen in the same
/// process (tests, a restart in-process) meets them: another process's lock is released when
/// it exits.
fn open_db(dir: &Path, path: &Path) -> Result<sled::Db, StoreError> {
    let config = sled::Config::new()
        .path(path)
        .cache_capacity(CACHE_BYTES)
        .use_compression(compressed(path))
        .compression_factor(3)
        // Only the flush thread flushes: it syncs the audit segments first.
        .flush_every_ms(None);
    let until = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match config.open() {
            Ok(db) => return Ok(db),
            Err(e) if locked(&e) && std::time::Instant::now() < until => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) if locked(&e) => {
                return Err(StoreError::from_message(format!(
                    "the data dir {} is in use by another toolgate (its store is locked). Stop that one, or give this one its own --data-dir; replicas share one store through --database-url",
                    dir.display()
                )))
            }
            Err(e) => return Err(StoreError::from_message(format!("{}: {e}", dir.display()))),
        }
    }
}

/// The tree of committed calls.
const LEDGER: &str = "commits";

/// The sled store. Its handles are reference counted; the database closes when the last one
/// (and the flush thread) is gone.
pub struct SledStore {
    db: sled::Db,
    idem: sled::Tree,
    budgets: sled::Tree,
    kill: sled::Tree,
    proposals: sled::Tree,
    proposal_index: sled::Tree,
    ledger: sled::Tree,
    jobs: sled::Tree,
    sessions: sled::Tree,
    /// Audit sinks' cursors: sink id → the last acknowledged sequence number (big-endian).
    cursors: sled::Tree,
    /// Agent tokens by id, and their ids by the token's hash.
    tokens: sled::Tree,
    token_hashes: sled::Tree,
    /// Time-bound grants by id (ended ones are kept for a while).
    grants: sled::Tree,
    /// Per-user connections, links and authorizations under way (sealed by the vault).
    vault: sled::Tree,
    counters: MemoryCounters,
    flusher: Arc<Flusher>,
    sealer: Sealer,
    /// The audit log (one per store: its segments have one writer).
    log: Arc<SledEventLog>,
}

impl Drop for SledStore {
    /// sled flushes all its trees when a tree's last handle drops (the database's own first,
    /// with `db`): the audit segment is synced before, so no index entry becomes durable
    /// before the block it points at.
    fn drop(&mut self) {
        if let Err(e) = self.log.segments.sync() {
            tracing::warn!("could not sync the audit segment at close: {e}");
        }
    }
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    Ok(serde_json::from_slice(bytes)?)
}

impl SledStore {
    pub fn open(dir: &Path) -> Result<SledStore, StoreError> {
        Self::open_with(dir, segment::SEGMENT_BYTES, true)
    }

    /// The same, without recovering the audit log: a log that needs a recovery (or holds
    /// damage) is an error, and its segment files are not changed (`audit verify --data-dir`).
    pub fn open_inspect(dir: &Path) -> Result<SledStore, StoreError> {
        Self::open_with(dir, segment::SEGMENT_BYTES, false)
    }

    /// With audit segments closed at `segment_bytes` (small ones in tests).
    #[cfg(test)]
    fn open_sized(dir: &Path, segment_bytes: u64) -> Result<SledStore, StoreError> {
        Self::open_with(dir, segment_bytes, true)
    }

    /// `repair`: a torn tail is cut off and unindexed blocks are indexed.
    fn open_with(dir: &Path, segment_bytes: u64, repair: bool) -> Result<SledStore, StoreError> {
        let at =
            |e: &dyn std::fmt::Display| StoreError::from_message(format!("{}: {e}", dir.display()));
        std::fs::create_dir_all(dir).map_err(|e| at(&e))?;
        let path = dir.join("store");
        let db = open_db(dir, &path)?;
        let flusher = Flusher::start(db.clone())?;
        let log = Arc::new(SledEventLog::open(
            &db,
            dir,
            flusher.clone(),
            segment_bytes,
            repair,
        )?);
        Ok(SledStore {
            idem: db.open_tree("idempotency")?,
            budgets: db.open_tree("budgets")?,
            kill: db.open_tree("kill_switches")?,
            proposals: db.open_tree("proposals")?,
            proposal_index: db.open_tree("proposal_by_call")?,
            ledger: db.open_tree(LEDGER)?,
            jobs: db.open_tree("jobs")?,
            sessions: db.open_tree("sessions")?,
            cursors: db.open_tree("sink_cursors")?,
            tokens: db.open_tree("tokens")?,
            token_hashes: db.open_tree("token_hashes")?,
            grants: db.open_tree("grants")?,
            vault: db.open_tree("vault")?,
            counters: MemoryCounters::default(),
            flusher,
            sealer: Sealer::open(dir)?,
            log,
            db,
        })
    }

    /// Removes the records of `tree` that `expired` says are past their time (compare-and-swap:
    /// a record rewritten since it was read is left for the next sweep), and flushes. Returns
    /// the keys removed.
    async fn expire(
        &self,
        tree: &sled::Tree,
        expired: impl Fn(&[u8]) -> bool,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut removed = Vec::new();
        for item in tree.iter() {
            let (k, v) = item?;
            if expired(&v) && tree.compare_and_swap(&k, Some(&v), None::<&[u8]>)?.is_ok() {
                removed.push(k.to_vec());
            }
        }
        if !removed.is_empty() {
            self.flusher.flush().await?;
        }
        Ok(removed)
    }

    fn all<T: DeserializeOwned>(tree: &sled::Tree) -> Result<Vec<T>, StoreError> {
        let mut out = Vec::new();
        for item in tree.iter() {
            let (_, v) = item?;
            out.push(decode(&v)?);
        }
        Ok(out)
    }

    fn get<T: DeserializeOwned>(tree: &sled::Tree, key: &str) -> Result<Option<T>, StoreError> {
        tree.get(key)?.map(|v| decode(&v)).transpose()
    }

    /// Every record of a tree with its key (for `db import`: the request path reads by key).
    fn keyed<T>(
        tree: &sled::Tree,
        read: impl Fn(&[u8]) -> Result<T, StoreError>,
    ) -> Result<Vec<(String, T)>, StoreError> {
        let mut out = Vec::new();
        for item in tree.iter() {
            let (k, v) = item?;
            out.push((String::from_utf8_lossy(&k).into_owned(), read(&v)?));
        }
        Ok(out)
    }

    /// Every idempotency record by its identity.
    pub fn idem_all(&self) -> Result<Vec<(String, IdemRecord)>, StoreError> {
        Self::keyed(&self.idem, decode)
    }

    /// Every budget total by its key.
    pub fn budget_all(&self) -> Result<Vec<(String, f64)>, StoreError> {
        Self::keyed(&self.budgets, |v| Ok(kv::read_f64(Some(v))))
    }

    /// Every job claim by its job.
    pub fn job_all(&self) -> Result<Vec<(String, JobClaim)>, StoreError> {
        Self::keyed(&self.jobs, decode)
    }
}

#[async_trait]
impl Backend for SledStore {
    async fn flush(&self) -> Result<(), StoreError> {
        self.flusher.flush().await
    }

    fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0) + self.log.segments.bytes()
    }

    fn sealer(&self) -> &Sealer {
        &self.sealer
    }

    fn event_log(&self) -> Result<Arc<dyn EventLog>, StoreError> {
        Ok(self.log.clone())
    }
}
