//! Storage behind an interface. Everything toolgate keeps between requests goes through the
//! traits of this module: idempotency records, budgets, rate-limit counters, kill switches,
//! proposals, the rollback ledger and job claims, admin sessions, and the audit log. The one
//! implementation today is sled under `--data-dir` (`sled.rs`); nothing outside this folder
//! touches sled.
//!
//! The traits are written for a networked store as much as for a local one: every call is
//! fallible, the state ones are async, and where two callers (or two replicas) could race, the
//! operation is a compare-and-set that says who won. A write that returns `Ok` is durable.

mod counters;
mod import;
mod postgres;
pub mod rules;
mod seal;
mod sled;
mod topic;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

pub use self::import::{import, Imported};
pub use self::postgres::PgStore;
pub use self::seal::Sealer;
pub use self::sled::SledStore;
pub use self::topic::Topic;
pub use crate::base::now_unix;
pub use crate::model::{
    AgentToken, Committed, Grant, GrantEnd, IdemRecord, IdemState, JobClaim, KillSwitch,
    KillTarget, Outcome, Proposal, Session,
};
pub use counters::MemoryCounters;

#[derive(Debug, thiserror::Error)]
#[error("store: {message}")]
pub struct StoreError {
    message: String,
    /// Someone else wrote first (a shared store's compare-and-set lost): read and try again.
    conflict: bool,
}

impl StoreError {
    pub fn from_message(message: String) -> Self {
        StoreError {
            message,
            conflict: false,
        }
    }

    pub fn conflict(message: String) -> Self {
        StoreError {
            message,
            conflict: true,
        }
    }

    pub fn is_conflict(&self) -> bool {
        self.conflict
    }
}

impl From<serde_json::Error> for StoreError {
    fn from(e: serde_json::Error) -> Self {
        StoreError::from_message(format!("corrupt record: {e}"))
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// At-most-once records of calls with side effects, keyed by their idempotency identity.
#[async_trait]
pub trait IdempotencyStore: Send + Sync {
    async fn idem_get(&self, id: &str) -> Result<Option<IdemRecord>>;

    /// Writes `new` when the record stored under `id` is still the one of request
    /// `expected_request` (`None`: no record). `Ok(false)`: another call changed it first and
    /// nothing was written. Durable when `Ok(true)`.
    async fn idem_swap(
        &self,
        id: &str,
        expected_request: Option<&str>,
        new: &IdemRecord,
    ) -> Result<bool>;

    /// Overwrites the record (the owner of an in-flight record storing its outcome). Durable.
    async fn idem_put(&self, id: &str, rec: &IdemRecord) -> Result<()>;

    /// Forgets a record (a call that sent nothing may be retried). Durable.
    async fn idem_remove(&self, id: &str) -> Result<()>;

    /// Removes records created before `before_unix`; returns how many.
    async fn idem_expire(&self, before_unix: u64) -> Result<usize>;
}

/// Sums per budget key (agent, tool and period).
#[async_trait]
pub trait BudgetStore: Send + Sync {
    /// Adds `amount` unless the total would pass `max`, atomically against every other caller.
    /// `Ok(Ok(total))`: added (durable); `Ok(Err(current))`: refused, nothing changed.
    async fn budget_add(
        &self,
        key: &str,
        amount: f64,
        max: f64,
    ) -> Result<std::result::Result<f64, f64>>;

    async fn budget_get(&self, key: &str) -> Result<f64>;
}

/// Rate-limit counters: token buckets that refill `capacity` tokens per `per`.
#[async_trait]
pub trait CounterStore: Send + Sync {
    /// Takes a token from bucket `key`, or says how many whole seconds until one is free.
    async fn take_token(
        &self,
        key: &str,
        capacity: u32,
        per: Duration,
    ) -> Result<std::result::Result<(), u64>>;
}

/// Thrown kill switches.
#[async_trait]
pub trait KillStore: Send + Sync {
    async fn kill_list(&self) -> Result<Vec<(KillTarget, KillSwitch)>>;

    /// Throws (`Some`) or resets (`None`) a kill switch. Durable.
    async fn kill_set(&self, target: &KillTarget, value: Option<&KillSwitch>) -> Result<()>;
}

/// ProposalStore (held calls) and the index from a call's identity to its latest proposal.
///
/// A stored proposal changes only by compare-and-set (`proposal_swap`): its state and version
/// are checked in the same atomic step that writes the next record, on sled and on PostgreSQL
/// alike. That, not a lock in one process, is what makes a decision final and a commit happen
/// at most once across replicas.
#[async_trait]
pub trait ProposalStore: Send + Sync {
    /// Writes a new proposal and points its call identity at it, unless the identity points
    /// at a proposal other than `replacing` (`None`: at none) by then: another request or
    /// replica made one first. `Ok(false)`: nothing was written; read the identity again.
    /// Durable when `Ok(true)`.
    async fn proposal_create(&self, p: &Proposal, replacing: Option<&str>) -> Result<bool>;

    /// Writes `next` only while the stored proposal is still `seen`: same state, same version.
    /// The record written carries version `seen.version + 1`. `Ok(false)`: another caller
    /// changed it first; nothing was written. Durable when `Ok(true)`.
    async fn proposal_swap(&self, seen: &Proposal, next: &Proposal) -> Result<bool>;

    /// Copies a proposal in as it is, with its index entry (`toolgate db import` only: no
    /// decision or commit goes through here).
    async fn proposal_restore(&self, p: &Proposal) -> Result<()>;

    async fn proposal_get(&self, id: &str) -> Result<Option<Proposal>>;

    /// The latest proposal made for a call identity.
    async fn proposal_for(&self, identity: &str) -> Result<Option<Proposal>>;

    async fn proposal_list(&self) -> Result<Vec<Proposal>>;

    /// The proposals in `state` (the sweep's look for abandoned commits).
    async fn proposal_in_state(&self, state: crate::model::State) -> Result<Vec<Proposal>> {
        let mut all = self.proposal_list().await?;
        all.retain(|p| p.state == state);
        Ok(all)
    }

    /// Removes proposals finished before `before_unix` (and their index entries).
    async fn proposal_expire(&self, before_unix: u64) -> Result<usize>;
}

/// The rollback ledger of committed calls, and the claims of job ids by agents.
#[async_trait]
pub trait LedgerStore: Send + Sync {
    /// Writes an entry (keyed by its request id). Made durable by the caller's next durable
    /// write (a commit is always followed by one).
    async fn ledger_put(&self, c: &Committed) -> Result<()>;

    async fn ledger_get(&self, request_id: &str) -> Result<Option<Committed>>;

    /// Every entry, in no particular order.
    async fn ledger_all(&self) -> Result<Vec<Committed>>;

    /// Removes entries committed before `before_ms`; returns how many.
    async fn ledger_expire(&self, before_ms: u64) -> Result<usize>;

    /// Claims `job` for `agent` (owned by `owner`) unless someone holds it already (a
    /// compare-and-set). `Ok(None)`: this agent, or another agent of the same owner, may use
    /// it. `Ok(Some(holder))`: it belongs to that other agent.
    async fn job_claim(&self, job: &str, agent: &str, owner: &str) -> Result<Option<String>>;

    /// Removes job claims made before `before_unix`.
    async fn job_expire(&self, before_unix: u64) -> Result<usize>;
}

/// Admin sessions, keyed by a hash of the cookie (the cookie itself is never stored).
#[async_trait]
pub trait SessionStore: Send + Sync {
    async fn session_put(&self, key: &str, s: &Session) -> Result<()>;
    async fn session_get(&self, key: &str) -> Result<Option<Session>>;
    async fn session_remove(&self, key: &str) -> Result<()>;
}

/// Declares the indexes and their one-byte tags once: the enum, `tag`, `from_tag` and `ALL`
/// cannot disagree (a variant added without a tag does not compile, and `from_tag` knows it).
macro_rules! indexes {
    ($($(#[$doc:meta])* $variant:ident = $tag:literal,)*) => {
        /// The audit log's secondary indexes: which events name a request, a proposal, a job,
        /// an agent, a tool, an event kind or an error code.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
        pub enum Index {
            $($(#[$doc])* $variant,)*
        }

        impl Index {
            /// Every index.
            pub const ALL: &'static [Index] = &[$(Index::$variant,)*];

            /// The one-byte tag of the index in stored keys.
            pub fn tag(self) -> u8 {
                match self {
                    $(Index::$variant => $tag,)*
                }
            }

            /// The index a stored tag names.
            pub fn from_tag(tag: u8) -> Option<Index> {
                match tag {
                    $($tag => Some(Index::$variant),)*
                    _ => None,
                }
            }
        }
    };
}

indexes! {
    Request = b'r',
    Proposal = b'p',
    Job = b'j',
    Agent = b'a',
    Tool = b't',
    Kind = b'k',
    Code = b'c',
    /// The issued token a call came in with.
    Token = b'o',
    /// The person a call acted for.
    User = b'u',
    /// The model call whose answer asked for a call.
    ModelRequest = b'q',
    /// The model answers an agent got (its `model_usage` events), by agent: where a replica
    /// finds the tool calls models asked of the agent through the others.
    ModelAnswer = b'm',
}

/// One audit event as the log stores it: its bytes, and what it is found by.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub seq: u64,
    pub unix_ms: u64,
    pub bytes: Vec<u8>,
    pub keys: Vec<(Index, String)>,
}

/// The audit meta key of what opening the log repaired after a crash (a torn tail cut off,
/// events lost with it): a JSON list of `{"at_unix", "note"}`, which `audit verify` reports.
pub const RECOVERIES: &[u8] = b"recoveries";

/// Sequence numbers of events, ascending.
pub type Seqs<'a> = Box<dyn Iterator<Item = Result<u64>> + Send + 'a>;

/// The audit log's storage: events keyed by sequence number, their indexes (by id, name and
/// time), and a few facts about the log (the anchor a purge leaves, the list of purges).
/// Blocking: its one writer is a thread that batches events (group commit), and its readers
/// run on blocking threads.
pub trait EventLog: Send + Sync {
    /// The newest event, if any.
    fn last(&self) -> Result<Option<Vec<u8>>>;
    /// Appends events with their index entries in one atomic write: all of them or none. Not
    /// yet durable (`sync`). Appending an event again rewrites it and its entries.
    fn append(&self, events: Vec<StoredEvent>) -> Result<()>;
    /// Writes the index entries of events already stored (a log written before the indexes).
    fn index(&self, events: &[StoredEvent]) -> Result<()>;
    fn get(&self, seq: u64) -> Result<Option<Vec<u8>>>;
    /// Events from `from_seq` on, in sequence order.
    fn scan(&self, from_seq: u64) -> Box<dyn Iterator<Item = Result<(u64, Vec<u8>)>> + Send + '_>;
    /// The events an index lists under `value`.
    fn lookup(&self, index: Index, value: &str) -> Seqs<'_>;
    /// The events an index lists under `value` with sequence numbers below `before`, newest
    /// first (a page of a list read backwards).
    fn lookup_rev(&self, index: Index, value: &str, before: u64) -> Seqs<'_>;
    /// The events whose time is in `[from_ms, until_ms)`, in time order to the second.
    fn in_time(&self, from_ms: u64, until_ms: u64) -> Seqs<'_>;
    /// Removes events and their index entries (a purge), in one atomic write.
    fn remove(&self, events: &[StoredEvent]) -> Result<()>;
    fn meta_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>>;
    fn meta_put(&self, key: &[u8], value: Vec<u8>) -> Result<()>;
    /// Makes everything written so far durable.
    fn sync(&self) -> Result<()>;
}

/// Short-lived agent tokens, found by their hash (authentication) or their id (revocation).
#[async_trait]
pub trait TokenStore: Send + Sync {
    /// Writes a token record (a new one, or one revoked). Durable.
    async fn token_put(&self, t: &AgentToken) -> Result<()>;
    async fn token_get(&self, id: &str) -> Result<Option<AgentToken>>;
    async fn token_by_hash(&self, sha256: &str) -> Result<Option<AgentToken>>;
    /// Every token not yet expired (revoked ones included).
    async fn token_list(&self, now_unix: u64) -> Result<Vec<AgentToken>>;
}

/// Time-bound grants, found by id or by agent.
#[async_trait]
pub trait GrantStore: Send + Sync {
    /// Writes a new grant. Durable.
    async fn grant_put(&self, g: &Grant) -> Result<()>;
    async fn grant_get(&self, id: &str) -> Result<Option<Grant>>;
    /// Grants that have not ended (live ones, and expired ones whose end is not yet recorded),
    /// of `agent` or of all.
    async fn grant_open(&self, agent: Option<&str>) -> Result<Vec<Grant>>;
    /// Ends a grant unless it has ended already (by another request or replica): the ended
    /// grant when this call ended it, else None. Durable.
    async fn grant_end(&self, id: &str, end: GrantEnd) -> Result<Option<Grant>>;
}

/// Where each audit sink is: the sequence number of the last event its receiver acknowledged.
/// Durable, and shared by the replicas of a shared store (a sink resumes where the last
/// acknowledged batch ended, on any replica).
#[async_trait]
pub trait SinkCursorStore: Send + Sync {
    /// The sink's cursor (0: nothing delivered yet).
    async fn cursor_get(&self, sink: &str) -> Result<u64>;
    /// Moves the sink's cursor forward to `seq` (never back: of two replicas delivering the
    /// same events, the later acknowledgment wins). Durable when it returns.
    async fn cursor_advance(&self, sink: &str, seq: u64) -> Result<()>;
    /// Every sink's cursor.
    async fn cursor_list(&self) -> Result<Vec<(String, u64)>>;
}

/// The vault of per-user OAuth connections, with the one-time links and authorizations that
/// make them and the leases of their refreshes: records the store keeps as given (the vault
/// seals them first) under text keys, changed only by compare-and-set on the whole record, so
/// that a link is used once and one replica refreshes a token at a time.
#[async_trait]
pub trait VaultStore: Send + Sync {
    async fn vault_get(&self, key: &str) -> Result<Option<Vec<u8>>>;

    /// Writes `next` (None: removes the record) only while the record under `key` is still
    /// `seen` (None: there is none). `Ok(false)`: another caller changed it first; nothing was
    /// written. Durable when `Ok(true)`.
    async fn vault_swap(&self, key: &str, seen: Option<&[u8]>, next: Option<&[u8]>)
        -> Result<bool>;

    /// Every record whose key begins with `prefix`, in key order.
    async fn vault_scan(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>>;
}

/// One storage backend: every interface above, and what the process needs of the whole.
#[async_trait]
pub trait Backend:
    IdempotencyStore
    + BudgetStore
    + CounterStore
    + KillStore
    + ProposalStore
    + LedgerStore
    + SessionStore
    + TokenStore
    + GrantStore
    + SinkCursorStore
    + VaultStore
{
    /// Makes every write so far durable.
    async fn flush(&self) -> Result<()>;
    /// Bytes the store takes (0 when unknown).
    fn size_on_disk(&self) -> u64;
    /// Seals small records at rest.
    fn sealer(&self) -> &Sealer;
    /// The audit log's storage.
    fn event_log(&self) -> Result<Arc<dyn EventLog>>;
    /// Whether other processes (replicas) share this store, so that what they decide must be
    /// looked for here rather than announced in-process.
    fn shared(&self) -> bool {
        false
    }
    /// The newest audit events (their stored bytes) an index lists under `value`, of time
    /// `since_ms` or later, at most `most`, newest first: one read on the store's own pool,
    /// never on the audit log's writer. A local store has none to give: what its one process
    /// saw, it saw itself.
    async fn recent_events(
        &self,
        _index: Index,
        _value: &str,
        _since_ms: u64,
        _most: usize,
    ) -> Result<Vec<Vec<u8>>> {
        Ok(Vec::new())
    }
    /// Whether the store answered lately. A local store is there while the process is.
    fn healthy(&self) -> bool {
        true
    }
    /// Tells the other replicas sharing the store that `topic` changed.
    /// Nobody else shares a local store: nothing to tell.
    async fn announce(&self, _topic: &Topic) -> Result<()> {
        Ok(())
    }
    /// This process's name among the replicas sharing the store (None: a local store).
    fn replica(&self) -> Option<&str> {
        None
    }
    /// The replicas that showed they are alive within the last few seconds, by the store's
    /// clock (a local store has only this process).
    async fn replicas_alive(&self) -> Result<Vec<String>> {
        Ok(Vec::new())
    }
    /// What other replicas announce, for as long as the runtime runs (None: a local store).
    fn subscribe(&self) -> Option<tokio::sync::mpsc::Receiver<Topic>> {
        None
    }
}

/// The storage every part of toolgate shares.
pub type Store = Arc<dyn Backend>;

/// Opens the local store under a data dir.
pub fn open(dir: &std::path::Path) -> Result<Store> {
    Ok(Arc::new(SledStore::open(dir)?))
}

/// The same, for reading a stopped toolgate's store: the audit log is not recovered (one that
/// needs it, or is damaged, is an error) and its segment files are not changed.
pub fn open_inspect(dir: &std::path::Path) -> Result<Store> {
    Ok(Arc::new(SledStore::open_inspect(dir)?))
}

/// The store a configuration names: PostgreSQL at `database_url` (migrated to this version's
/// schema first; the seal key in `shared_dir`, which replicas share), else sled in `data_dir`.
pub async fn open_configured(
    database_url: Option<&str>,
    data_dir: &std::path::Path,
    shared_dir: &std::path::Path,
) -> Result<Store> {
    match database_url {
        Some(url) => {
            let store = PgStore::connect(url, shared_dir)?;
            store.migrate().await?;
            store.watch_health();
            Ok(Arc::new(store))
        }
        None => open(data_dir),
    }
}

#[cfg(test)]
mod tests {
    use super::Index;

    /// Every index reads back from its tag, and no two share one (the tag is the index in
    /// stored keys and blocks).
    #[test]
    fn every_index_reads_back_from_its_tag() {
        for i in Index::ALL {
            assert_eq!(Index::from_tag(i.tag()), Some(*i), "{i:?}");
        }
        let tags: std::collections::BTreeSet<u8> = Index::ALL.iter().map(|i| i.tag()).collect();
        assert_eq!(tags.len(), Index::ALL.len());
        assert_eq!(Index::from_tag(b'm'), Some(Index::ModelAnswer));
        assert_eq!(Index::from_tag(0), None);
    }
}
