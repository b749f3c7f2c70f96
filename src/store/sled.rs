//! The local store: sled under `--data-dir`. Trees: `idempotency`, `budgets`, `kill_switches`,
//! `proposals` and `proposal_by_call`, `commits` (the ledger), `jobs`, `sessions`, and the audit
//! log's `audit` and `audit_meta`. Writes that a decision depends on are flushed before the call
//! goes on (one flush thread, group commit).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::de::DeserializeOwned;

use super::{
    Backend, BudgetStore, Committed, CounterStore, EventLog, GrantStore, IdemRecord,
    IdempotencyStore, JobClaim, KillStore, KillSwitch, KillTarget, LedgerStore, MemoryCounters,
    Proposal, ProposalStore, Session, SessionStore, StoreError, TokenStore,
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
    /// Agent tokens by id, and their ids by the token's hash.
    tokens: sled::Tree,
    token_hashes: sled::Tree,
    /// Time-bound grants by id (ended ones are kept for a while).
    grants: sled::Tree,
    counters: MemoryCounters,
    flusher: Arc<Flusher>,
    sealer: Sealer,
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    Ok(serde_json::from_slice(bytes)?)
}

impl SledStore {
    pub fn open(dir: &Path) -> Result<SledStore, StoreError> {
        let at =
            |e: &dyn std::fmt::Display| StoreError::from_message(format!("{}: {e}", dir.display()));
        std::fs::create_dir_all(dir).map_err(|e| at(&e))?;
        let path = dir.join("store");
        let db = sled::Config::new()
            .path(&path)
            .cache_capacity(CACHE_BYTES)
            .use_compression(compressed(&path))
            .compression_factor(3)
            .open()
            .map_err(|e| match &e {
                // sled locks its files: another process holds this data dir. sled says so only
                // in the text of an I/O error (its lock's WouldBlock formatted into it).
                sled::Error::Io(io)
                    if io.kind() == std::io::ErrorKind::WouldBlock
                        || io.to_string().contains("could not acquire lock") =>
                {
                    StoreError::from_message(format!(
                        "the data dir {} is in use by another toolgate (its store is locked). Stop that one, or give this one its own --data-dir; replicas share one store through --database-url",
                        dir.display()
                    ))
                }
                _ => at(&e),
            })?;
        Ok(SledStore {
            idem: db.open_tree("idempotency")?,
            budgets: db.open_tree("budgets")?,
            kill: db.open_tree("kill_switches")?,
            proposals: db.open_tree("proposals")?,
            proposal_index: db.open_tree("proposal_by_call")?,
            ledger: db.open_tree(LEDGER)?,
            jobs: db.open_tree("jobs")?,
            sessions: db.open_tree("sessions")?,
            tokens: db.open_tree("tokens")?,
            token_hashes: db.open_tree("token_hashes")?,
            grants: db.open_tree("grants")?,
            counters: MemoryCounters::default(),
            flusher: Flusher::start(db.clone())?,
            sealer: Sealer::open(dir)?,
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
        Self::keyed(&self.budgets, |v| Ok(read_f64(Some(v))))
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
        self.db.size_on_disk().unwrap_or(0)
    }

    fn sealer(&self) -> &Sealer {
        &self.sealer
    }

    fn event_log(&self) -> Result<Arc<dyn EventLog>, StoreError> {
        Ok(Arc::new(SledEventLog {
            events: self.db.open_tree("audit")?,
            meta: self.db.open_tree("audit_meta")?,
            flusher: self.flusher.clone(),
            blocks: BlockWriter::new(),
        }))
    }
}

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
                decode::<IdemRecord>(v).is_ok_and(|r| r.created_unix < before_unix)
            })
            .await?;
        Ok(removed.len())
    }
}

fn read_f64(bytes: Option<&[u8]>) -> f64 {
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
            let current = read_f64(old);
            if current + amount > max {
                answer = Err(current);
                old.map(|b| b.to_vec())
            } else {
                answer = Ok(current + amount);
                Some((current + amount).to_be_bytes().to_vec())
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
                decode::<Proposal>(v)
                    .is_ok_and(|p| p.finished_unix().is_some_and(|t| t < before_unix))
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
                decode::<Committed>(v).is_ok_and(|c| c.unix_ms < before_ms)
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
                decode::<JobClaim>(v).is_ok_and(|j| j.since_unix < before_unix)
            })
            .await?;
        Ok(removed.len())
    }
}

#[async_trait]
impl TokenStore for SledStore {
    async fn token_put(&self, t: &super::AgentToken) -> Result<(), StoreError> {
        self.tokens.insert(&t.id, serde_json::to_vec(t)?)?;
        self.token_hashes.insert(&t.sha256, t.id.as_bytes())?;
        self.flusher.flush().await
    }

    async fn token_get(&self, id: &str) -> Result<Option<super::AgentToken>, StoreError> {
        Self::get(&self.tokens, id)
    }

    async fn token_by_hash(&self, sha256: &str) -> Result<Option<super::AgentToken>, StoreError> {
        match self.token_hashes.get(sha256)? {
            Some(id) => Self::get(&self.tokens, &String::from_utf8_lossy(&id)),
            None => Ok(None),
        }
    }

    async fn token_list(&self, now_unix: u64) -> Result<Vec<super::AgentToken>, StoreError> {
        let mut all: Vec<super::AgentToken> = Self::all(&self.tokens)?;
        all.retain(|t| t.expires_unix > now_unix);
        Ok(all)
    }
}

#[async_trait]
impl GrantStore for SledStore {
    async fn grant_put(&self, g: &super::Grant) -> Result<(), StoreError> {
        // Grants are rare: drop those that ended long ago on the way.
        let cut = now_unix().saturating_sub(super::ENDED_GRANT_KEEP_SECS);
        for old in Self::all::<super::Grant>(&self.grants)? {
            if old.ended.as_ref().is_some_and(|e| e.at_unix < cut) {
                self.grants.remove(&old.id)?;
            }
        }
        self.grants.insert(&g.id, serde_json::to_vec(g)?)?;
        self.flusher.flush().await
    }

    async fn grant_get(&self, id: &str) -> Result<Option<super::Grant>, StoreError> {
        Self::get(&self.grants, id)
    }

    async fn grant_open(&self, agent: Option<&str>) -> Result<Vec<super::Grant>, StoreError> {
        let mut all: Vec<super::Grant> = Self::all(&self.grants)?;
        all.retain(|g| g.ended.is_none() && agent.is_none_or(|a| g.agent == a));
        Ok(all)
    }

    async fn grant_end(
        &self,
        id: &str,
        end: super::GrantEnd,
    ) -> Result<Option<super::Grant>, StoreError> {
        // Another request ending it at the same moment makes the swap fail: read it again.
        for _ in 0..16 {
            let Some(old) = self.grants.get(id)? else {
                return Ok(None);
            };
            let mut g: super::Grant = decode(&old)?;
            if g.ended.is_some() {
                return Ok(None);
            }
            g.ended = Some(end.clone());
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
            if decode::<Session>(&v).map_or(true, |s| s.expires_unix <= now) {
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

/// The audit log: one tree holds the events (8-byte big-endian sequence keys, whose first
/// byte is 0 for any sequence below 2^56) and, after them, the index entries (keys starting
/// with 0xFF), so that events and their entries are written in one atomic batch.
///
/// An index entry is a posting list per written batch: `0xFF tag value 0x00 first-seq` holds
/// the sequence numbers of that batch's events with that value, so a batch of a thousand reads
/// by one agent writes one agent entry, not a thousand. The time index is the same per second:
/// `0xFF 'T' second first-seq` holds (milliseconds, sequence) pairs.
struct SledEventLog {
    events: sled::Tree,
    meta: sled::Tree,
    flusher: Arc<Flusher>,
    blocks: BlockWriter,
}

const INDEX: u8 = 0xFF;
const TIME: u8 = b'T';

/// `0xFF tag value 0x00`: the prefix of an index's entries for one value. A value holding a
/// NUL is not indexed (no id, name or code has one).
fn index_prefix(index: super::Index, value: &str) -> Option<Vec<u8>> {
    if value.as_bytes().contains(&0) {
        return None;
    }
    let mut k = Vec::with_capacity(value.len() + 11);
    k.extend_from_slice(&[INDEX, index.tag()]);
    k.extend_from_slice(value.as_bytes());
    k.push(0);
    Some(k)
}

fn time_prefix(second: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(18);
    k.extend_from_slice(&[INDEX, TIME]);
    k.extend_from_slice(&second.to_be_bytes());
    k
}

fn u64s(bytes: &[u8]) -> impl Iterator<Item = u64> + '_ {
    bytes
        .chunks_exact(8)
        .filter_map(|c| <[u8; 8]>::try_from(c).ok())
        .map(u64::from_be_bytes)
}

/// The posting lists of a group of events: index entries by prefix, time entries by second.
#[derive(Default)]
struct Postings {
    named: std::collections::BTreeMap<Vec<u8>, Vec<u64>>,
    times: std::collections::BTreeMap<u64, Vec<(u64, u64)>>,
}

impl Postings {
    fn of(events: &[super::StoredEvent]) -> Postings {
        let mut p = Postings::default();
        for e in events {
            for (index, value) in &e.keys {
                if let Some(prefix) = index_prefix(*index, value) {
                    p.named.entry(prefix).or_default().push(e.seq);
                }
            }
            p.times
                .entry(e.unix_ms / 1000)
                .or_default()
                .push((e.unix_ms, e.seq));
        }
        p
    }

    fn write(self, batch: &mut sled::Batch) {
        for (mut key, seqs) in self.named {
            key.extend_from_slice(&seqs[0].to_be_bytes());
            let value: Vec<u8> = seqs.iter().flat_map(|s| s.to_be_bytes()).collect();
            batch.insert(key, value);
        }
        for (second, pairs) in self.times {
            let mut key = time_prefix(second);
            key.extend_from_slice(&pairs[0].1.to_be_bytes());
            let value: Vec<u8> = pairs
                .iter()
                .flat_map(|(ms, seq)| ms.to_be_bytes().into_iter().chain(seq.to_be_bytes()))
                .collect();
            batch.insert(key, value);
        }
    }
}

impl SledEventLog {
    /// Rewrites the entries under `prefix` without the sequence numbers in `gone`; `pairs`:
    /// the entries are time entries ((ms, seq) pairs).
    fn drop_postings(
        &self,
        prefix: &[u8],
        gone: &std::collections::BTreeSet<u64>,
        pairs: bool,
        batch: &mut sled::Batch,
    ) -> Result<(), StoreError> {
        let width = if pairs { 16 } else { 8 };
        for item in self.events.scan_prefix(prefix) {
            let (k, v) = item?;
            let kept: Vec<u8> = v
                .chunks_exact(width)
                .filter(|c| !u64s(&c[width - 8..]).any(|s| gone.contains(&s)))
                .flatten()
                .copied()
                .collect();
            if kept.is_empty() {
                batch.remove(k);
            } else if kept.len() != v.len() {
                batch.insert(k, kept);
            }
        }
        Ok(())
    }
}

/// A value holding several events (one written batch) starts with `BLOCK` or `ZBLOCK`; a value
/// holding one event is that event's JSON (which starts with `{`), as every earlier version
/// wrote it.
const BLOCK: u8 = 1;
/// A block compressed with zstd: `ZBLOCK`, the plain block's length (u32), the frame.
const ZBLOCK: u8 = 2;
/// No block is larger (a corrupt length must not ask for gigabytes).
const MAX_BLOCK: usize = 256 << 20;
/// zstd level for blocks: the events of a batch are alike, so the fast level already keeps
/// a read under 1 KiB on disk.
const ZSTD_LEVEL: i32 = 1;

/// Writes blocks with one zstd context, reused for every batch (only the writer and purge
/// write blocks, so the lock is not contended).
struct BlockWriter(std::sync::Mutex<zstd::block::Compressor>);

impl BlockWriter {
    fn new() -> BlockWriter {
        BlockWriter(std::sync::Mutex::new(zstd::block::Compressor::new()))
    }

    /// The events of a batch in one value: (seq, length, bytes) for each, compressed. One key
    /// and one page write per batch instead of one per event.
    fn encode(&self, events: &[(u64, Vec<u8>)]) -> Vec<u8> {
        let size = events.iter().map(|(_, b)| b.len() + 12).sum::<usize>();
        let mut plain = Vec::with_capacity(size);
        for (seq, bytes) in events {
            plain.extend_from_slice(&seq.to_be_bytes());
            plain.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
            plain.extend_from_slice(bytes);
        }
        let frame = match self.0.lock() {
            Ok(mut z) => z.compress(&plain, ZSTD_LEVEL).ok(),
            Err(_) => None,
        };
        match frame {
            Some(frame) if plain.len() <= MAX_BLOCK => {
                let mut out = Vec::with_capacity(frame.len() + 5);
                out.push(ZBLOCK);
                out.extend_from_slice(&(plain.len() as u32).to_be_bytes());
                out.extend_from_slice(&frame);
                out
            }
            // Uncompressed, as the version before wrote blocks.
            _ => {
                plain.insert(0, BLOCK);
                plain
            }
        }
    }
}

/// The events a stored value holds: itself under its key's sequence, or a block's. A block
/// that does not decompress is an error (the chain check reports where).
fn block_events(key_seq: u64, v: &[u8]) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
    let plain;
    let mut rest = match v.first() {
        Some(&BLOCK) => &v[1..],
        Some(&ZBLOCK) if v.len() >= 5 => {
            let len = u32::from_be_bytes([v[1], v[2], v[3], v[4]]) as usize;
            if len > MAX_BLOCK {
                return Err(StoreError::from_message(format!(
                    "audit block at {key_seq}: length {len} is not a block's"
                )));
            }
            plain = zstd::block::decompress(&v[5..], len).map_err(|e| {
                StoreError::from_message(format!("audit block at {key_seq} is corrupt: {e}"))
            })?;
            &plain[..]
        }
        _ => return Ok(vec![(key_seq, v.to_vec())]),
    };
    let mut out = Vec::new();
    while rest.len() >= 12 {
        let seq = u64s(&rest[..8]).next().unwrap_or(0);
        let len = u32::from_be_bytes([rest[8], rest[9], rest[10], rest[11]]) as usize;
        let Some(bytes) = rest.get(12..12 + len) else {
            break;
        };
        out.push((seq, bytes.to_vec()));
        rest = &rest[12 + len..];
    }
    Ok(out)
}

fn key_seq(k: &[u8]) -> u64 {
    <[u8; 8]>::try_from(k).map(u64::from_be_bytes).unwrap_or(0)
}

impl SledEventLog {
    /// The stored value (its key's sequence and bytes) that holds event `seq`, if any.
    fn holding(&self, seq: u64) -> Result<Option<(u64, sled::IVec)>, StoreError> {
        let key = seq.to_be_bytes();
        match self.events.range(..=key.as_slice()).next_back() {
            Some(item) => {
                let (k, v) = item?;
                Ok(Some((key_seq(&k), v)))
            }
            None => Ok(None),
        }
    }
}

impl EventLog for SledEventLog {
    fn last(&self) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(item) = self.events.range(..[INDEX].as_slice()).next_back() else {
            return Ok(None);
        };
        let (k, v) = item?;
        Ok(block_events(key_seq(&k), &v)?.pop().map(|(_, b)| b))
    }

    fn append(&self, events: Vec<super::StoredEvent>) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        let postings = Postings::of(&events);
        match events.as_slice() {
            [] => {}
            [one] => batch.insert(&one.seq.to_be_bytes(), one.bytes.as_slice()),
            [first, ..] => {
                let key = first.seq.to_be_bytes();
                let all: Vec<(u64, Vec<u8>)> =
                    events.into_iter().map(|e| (e.seq, e.bytes)).collect();
                batch.insert(&key, self.blocks.encode(&all));
            }
        }
        postings.write(&mut batch);
        self.events.apply_batch(batch)?;
        Ok(())
    }

    fn index(&self, events: &[super::StoredEvent]) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        Postings::of(events).write(&mut batch);
        self.events.apply_batch(batch)?;
        Ok(())
    }

    fn get(&self, seq: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let Some((k, v)) = self.holding(seq)? else {
            return Ok(None);
        };
        Ok(block_events(k, &v)?
            .into_iter()
            .find(|(s, _)| *s == seq)
            .map(|(_, b)| b))
    }

    fn scan(
        &self,
        from_seq: u64,
    ) -> Box<dyn Iterator<Item = Result<(u64, Vec<u8>), StoreError>> + Send + '_> {
        // From the value holding `from_seq` (a block may start before it).
        let start = match self.holding(from_seq) {
            Ok(Some((k, _))) => k,
            Ok(None) => from_seq,
            Err(e) => return Box::new(std::iter::once(Err(e))),
        };
        let from = start.to_be_bytes();
        Box::new(
            self.events
                .range(from.as_slice()..[INDEX].as_slice())
                .flat_map(move |item| -> Vec<Result<(u64, Vec<u8>), StoreError>> {
                    match item {
                        // A key's sequence (0 if unreadable; the chain check says so).
                        Ok((k, v)) => match block_events(key_seq(&k), &v) {
                            Ok(events) => events
                                .into_iter()
                                .filter(|(s, _)| *s >= from_seq)
                                .map(Ok)
                                .collect(),
                            Err(e) => vec![Err(e)],
                        },
                        Err(e) => vec![Err(e.into())],
                    }
                }),
        )
    }

    fn lookup(&self, index: super::Index, value: &str) -> super::Seqs<'_> {
        let Some(prefix) = index_prefix(index, value) else {
            return Box::new(std::iter::empty());
        };
        Box::new(
            self.events
                .scan_prefix(prefix)
                .flat_map(|item| -> Vec<Result<u64, StoreError>> {
                    match item {
                        Ok((_, v)) => u64s(&v).map(Ok).collect(),
                        Err(e) => vec![Err(e.into())],
                    }
                }),
        )
    }

    fn lookup_rev(&self, index: super::Index, value: &str, before: u64) -> super::Seqs<'_> {
        let Some(prefix) = index_prefix(index, value) else {
            return Box::new(std::iter::empty());
        };
        // Entries are keyed by their first sequence number: those starting below `before`.
        let mut end = prefix.clone();
        end.extend_from_slice(&before.to_be_bytes());
        Box::new(self.events.range(prefix..end).rev().flat_map(
            move |item| -> Vec<Result<u64, StoreError>> {
                match item {
                    Ok((_, v)) => {
                        let mut seqs: Vec<u64> = u64s(&v).filter(|s| *s < before).collect();
                        seqs.reverse();
                        seqs.into_iter().map(Ok).collect()
                    }
                    Err(e) => vec![Err(e.into())],
                }
            },
        ))
    }

    fn in_time(&self, from_ms: u64, until_ms: u64) -> super::Seqs<'_> {
        let start = time_prefix(from_ms / 1000);
        let end = time_prefix((until_ms / 1000).saturating_add(1));
        Box::new(self.events.range(start..end).flat_map(
            move |item| -> Vec<Result<u64, StoreError>> {
                match item {
                    Ok((_, v)) => v
                        .chunks_exact(16)
                        .filter_map(|c| {
                            let mut it = u64s(c);
                            Some((it.next()?, it.next()?))
                        })
                        .filter(|(ms, _)| (from_ms..until_ms).contains(ms))
                        .map(|(_, seq)| Ok(seq))
                        .collect(),
                    Err(e) => vec![Err(e.into())],
                }
            },
        ))
    }

    fn remove(&self, events: &[super::StoredEvent]) -> Result<(), StoreError> {
        let gone: std::collections::BTreeSet<u64> = events.iter().map(|e| e.seq).collect();
        let postings = Postings::of(events);
        let mut batch = sled::Batch::default();
        for prefix in postings.named.keys() {
            self.drop_postings(prefix, &gone, false, &mut batch)?;
        }
        for second in postings.times.keys() {
            self.drop_postings(&time_prefix(*second), &gone, true, &mut batch)?;
        }
        // Each value holding a removed event is removed, or rewritten without it.
        let mut done = std::collections::BTreeSet::new();
        for seq in &gone {
            let Some((k, v)) = self.holding(*seq)? else {
                continue;
            };
            if !done.insert(k) {
                continue;
            }
            let kept: Vec<(u64, Vec<u8>)> = block_events(k, &v)?
                .into_iter()
                .filter(|(s, _)| !gone.contains(s))
                .collect();
            batch.remove(&k.to_be_bytes());
            match kept.as_slice() {
                [] => {}
                [(s, b)] => batch.insert(&s.to_be_bytes(), b.as_slice()),
                [(s, _), ..] => batch.insert(&s.to_be_bytes(), self.blocks.encode(&kept)),
            }
        }
        self.events.apply_batch(batch)?;
        Ok(())
    }

    fn meta_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.meta.get(key)?.map(|v| v.to_vec()))
    }

    fn meta_put(&self, key: &[u8], value: Vec<u8>) -> Result<(), StoreError> {
        self.meta.insert(key, value)?;
        Ok(())
    }

    fn sync(&self) -> Result<(), StoreError> {
        self.flusher.flush_blocking()
    }
}

impl Drop for Flusher {
    /// The last handle to the store is gone: the thread flushes what is queued, ends, and lets go
    /// of the database, so that it can be opened again at once.
    fn drop(&mut self) {
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = t.join();
        }
    }
}

/// How a waiting writer is answered: a oneshot for async callers, a plain channel for
/// threads (which may run inside a runtime, where a oneshot's blocking receive panics).
enum FlushAck {
    Async(tokio::sync::oneshot::Sender<Result<(), String>>),
    Blocking(std::sync::mpsc::Sender<Result<(), String>>),
}

impl FlushAck {
    fn answer(self, result: Result<(), String>) {
        let _ = match self {
            FlushAck::Async(tx) => tx.send(result).map_err(|_| ()),
            FlushAck::Blocking(tx) => tx.send(result).map_err(|_| ()),
        };
    }
}

/// The one thread that flushes the database. sled 0.34 deadlocks when flushes run concurrently
/// (every IO thread ends up parked in `flush()`), so nothing else ever calls `flush`: writers
/// ask this thread, and every request that arrived while a flush ran is answered by the next
/// single flush (group commit). A write made before asking is covered by the answer.
pub struct Flusher {
    tx: std::sync::Mutex<Option<std::sync::mpsc::Sender<FlushAck>>>,
    thread: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Flusher {
    fn start(db: sled::Db) -> Result<std::sync::Arc<Flusher>, StoreError> {
        let (tx, rx) = std::sync::mpsc::channel::<FlushAck>();
        let thread = std::thread::Builder::new()
            .name("toolgate-flush".into())
            .spawn(move || {
                // Ends when the store is closed (the channel closes).
                while let Ok(first) = rx.recv() {
                    let mut waiting = vec![first];
                    waiting.extend(rx.try_iter());
                    let result = db.flush().map(|_| ()).map_err(|e| e.to_string());
                    for ack in waiting {
                        ack.answer(result.clone());
                    }
                }
            })
            .map_err(|e| {
                StoreError::from_message(format!("could not start the flush thread: {e}"))
            })?;
        Ok(std::sync::Arc::new(Flusher {
            tx: std::sync::Mutex::new(Some(tx)),
            thread: std::sync::Mutex::new(Some(thread)),
        }))
    }

    fn ask(&self, ack: FlushAck) -> Result<(), StoreError> {
        self.tx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .ok_or_else(|| StoreError::from_message("the store is closed".to_string()))?
            .send(ack)
            .map_err(|_| StoreError::from_message("the flush thread is not running".to_string()))
    }

    /// Waits until every write made before the call is durable.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let (ack, rx) = tokio::sync::oneshot::channel();
        self.ask(FlushAck::Async(ack))?;
        rx.await
            .map_err(|_| StoreError::from_message("the flush thread stopped".to_string()))?
            .map_err(StoreError::from_message)
    }

    /// The same, for threads (the audit writer, blocking readers).
    pub fn flush_blocking(&self) -> Result<(), StoreError> {
        let (ack, rx) = std::sync::mpsc::channel();
        self.ask(FlushAck::Blocking(ack))?;
        rx.recv()
            .map_err(|_| StoreError::from_message("the flush thread stopped".to_string()))?
            .map_err(StoreError::from_message)
    }
}

/// Seals small records at rest (ChaCha20-Poly1305 under a key in `seal.key` beside the store,
/// readable by its owner only): what a held call will send may contain values that look like
/// secrets, which are shown redacted but must be sent as they were.
#[derive(Clone)]
pub struct Sealer {
    key: std::sync::Arc<ring::aead::LessSafeKey>,
}

impl Sealer {
    pub(super) fn open(dir: &Path) -> Result<Sealer, StoreError> {
        let path = dir.join("seal.key");
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key: [u8; 32] = rand::random();
                match write_private(&path, &key) {
                    Ok(()) => key.to_vec(),
                    // Another replica sharing the directory wrote it first: use theirs.
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => std::fs::read(&path)
                        .map_err(|e| {
                            StoreError::from_message(format!("{}: {e}", path.display()))
                        })?,
                    Err(e) => {
                        return Err(StoreError::from_message(format!("{}: {e}", path.display())))
                    }
                }
            }
            Err(e) => return Err(StoreError::from_message(format!("{}: {e}", path.display()))),
        };
        let key =
            ring::aead::UnboundKey::new(&ring::aead::CHACHA20_POLY1305, &bytes).map_err(|_| {
                StoreError::from_message(format!("{}: not a 32-byte key", path.display()))
            })?;
        Ok(Sealer {
            key: std::sync::Arc::new(ring::aead::LessSafeKey::new(key)),
        })
    }

    /// Base64 of nonce and ciphertext.
    pub fn seal(&self, plain: &[u8]) -> Result<String, StoreError> {
        use base64::Engine;
        let nonce: [u8; 12] = rand::random();
        let mut buf = plain.to_vec();
        self.key
            .seal_in_place_append_tag(
                ring::aead::Nonce::assume_unique_for_key(nonce),
                ring::aead::Aad::empty(),
                &mut buf,
            )
            .map_err(|_| StoreError::from_message("could not seal a record".to_string()))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        Ok(base64::engine::general_purpose::STANDARD.encode(out))
    }

    /// The plain text of a sealed record; `None` when it was altered or sealed under another key.
    pub fn open_sealed(&self, sealed: &str) -> Option<Vec<u8>> {
        use base64::Engine;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(sealed)
            .ok()?;
        if raw.len() < 12 {
            return None;
        }
        let (nonce, rest) = raw.split_at(12);
        let nonce = ring::aead::Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut buf = rest.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, ring::aead::Aad::empty(), &mut buf)
            .ok()?;
        Some(plain.to_vec())
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path)?.write_all(bytes)
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

    #[test]
    fn sealed_records_open_only_unaltered_and_under_their_key() {
        let dir = tempfile::tempdir().unwrap();
        let sealed = {
            let store = SledStore::open(dir.path()).unwrap();
            store.sealer().seal(b"x-token: sk_live_1").unwrap()
        };
        assert!(!sealed.contains("sk_live"));
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(
            store.sealer().open_sealed(&sealed).unwrap(),
            b"x-token: sk_live_1"
        );
        let mut bad = sealed.into_bytes();
        bad[20] = if bad[20] == b'A' { b'B' } else { b'A' };
        assert!(store
            .sealer()
            .open_sealed(&String::from_utf8(bad).unwrap())
            .is_none());
        let other = tempfile::tempdir().unwrap();
        let s2 = SledStore::open(other.path()).unwrap();
        let sealed = s2.sealer().seal(b"x").unwrap();
        assert!(store.sealer().open_sealed(&sealed).is_none());
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

    fn stored(seq: u64, ms: u64, agent: &str) -> crate::store::StoredEvent {
        crate::store::StoredEvent {
            seq,
            unix_ms: ms,
            bytes: format!("event {seq}").into_bytes(),
            keys: vec![
                (crate::store::Index::Agent, agent.to_string()),
                (crate::store::Index::Request, format!("req_{seq}")),
            ],
        }
    }

    #[test]
    fn the_event_log_finds_events_by_posting_lists_and_forgets_removed_ones() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let log = store.event_log().unwrap();
        let a = crate::store::Index::Agent;
        log.append(vec![
            stored(1, 1_000, "x"),
            stored(2, 1_500, "y"),
            stored(3, 2_100, "x"),
        ])
        .unwrap();
        log.append(vec![stored(4, 2_200, "x")]).unwrap();
        let seqs = |i, v: &str| log.lookup(i, v).collect::<Result<Vec<_>, _>>().unwrap();
        assert_eq!(seqs(a, "x"), [1, 3, 4]);
        assert_eq!(seqs(crate::store::Index::Request, "req_2"), [2]);
        assert!(seqs(a, "nobody").is_empty());
        let mut t: Vec<u64> = log.in_time(1_400, 2_150).collect::<Result<_, _>>().unwrap();
        t.sort();
        assert_eq!(t, [2, 3]);
        assert_eq!(log.last().unwrap().unwrap(), b"event 4");
        assert_eq!(log.scan(3).count(), 2);
        log.remove(&[stored(1, 1_000, "x"), stored(2, 1_500, "y")])
            .unwrap();
        assert_eq!(seqs(a, "x"), [3, 4]);
        assert!(seqs(a, "y").is_empty());
        assert!(log.get(1).unwrap().is_none());
        let t: Vec<u64> = log.in_time(0, u64::MAX).collect::<Result<_, _>>().unwrap();
        assert_eq!(t, [3, 4]);
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

    #[test]
    fn blocks_are_compressed_and_older_plain_blocks_still_read() {
        let events: Vec<(u64, Vec<u8>)> = (7..107)
            .map(|s| {
                (
                    s,
                    format!(r#"{{"seq":{s},"kind":"request","agent":"a"}}"#).into_bytes(),
                )
            })
            .collect();
        let plain_len: usize = events.iter().map(|(_, b)| b.len() + 12).sum();
        let z = BlockWriter::new().encode(&events);
        assert_eq!(z[0], ZBLOCK);
        assert!(z.len() * 4 < plain_len, "{} vs {plain_len}", z.len());
        assert_eq!(block_events(7, &z).unwrap(), events);
        // A block as the version before wrote it: 0x01 and the plain entries.
        let mut old = vec![BLOCK];
        for (s, b) in &events {
            old.extend_from_slice(&s.to_be_bytes());
            old.extend_from_slice(&(b.len() as u32).to_be_bytes());
            old.extend_from_slice(b);
        }
        assert_eq!(block_events(7, &old).unwrap(), events);
        // One event's JSON is itself.
        assert_eq!(block_events(3, b"{}").unwrap(), [(3, b"{}".to_vec())]);
        // A damaged frame is an error, not a silently shorter log.
        let mut bad = z.clone();
        let at = bad.len() / 2;
        bad[at] ^= 0xFF;
        bad.truncate(bad.len() - 3);
        assert!(block_events(7, &bad).is_err());
        let mut huge = z;
        huge[1..5].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(block_events(7, &huge).is_err());
    }
}
