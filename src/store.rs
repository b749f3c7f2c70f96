//! The sled store under `--data-dir`: idempotency records, budgets and kill switches. The audit
//! log extends it. Writes that a decision depends on are flushed before the call leaves.

use std::path::Path;

pub use crate::base::now_unix;

#[derive(Debug, thiserror::Error)]
#[error("store: {0}")]
pub struct StoreError(String);

impl StoreError {
    pub fn from_message(message: String) -> Self {
        StoreError(message)
    }
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        StoreError(e.to_string())
    }
}

impl From<serde_json::Error> for StoreError {
    fn from(e: serde_json::Error) -> Self {
        StoreError(format!("corrupt record: {e}"))
    }
}

/// The audit log's storage: events keyed by sequence number, and a small tree of facts about
/// the log (the anchor a purge leaves, the list of purges).
#[derive(Clone)]
pub struct EventLog {
    events: sled::Tree,
    meta: sled::Tree,
}

impl EventLog {
    /// The newest event, if any.
    pub fn last(&self) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.events.last()?.map(|(_, v)| v.to_vec()))
    }

    /// Appends events in one atomic write: all of them or none.
    pub fn append(&self, events: Vec<(u64, Vec<u8>)>) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for (seq, bytes) in events {
            batch.insert(&seq.to_be_bytes(), bytes);
        }
        self.events.apply_batch(batch)?;
        Ok(())
    }

    /// Every event in sequence order, with the sequence number its key says (0 if unreadable).
    pub fn iter(&self) -> impl Iterator<Item = Result<(u64, Vec<u8>), StoreError>> + '_ {
        self.events.iter().map(|item| {
            let (k, v) = item?;
            let seq = <[u8; 8]>::try_from(k.as_ref())
                .map(u64::from_be_bytes)
                .unwrap_or(0);
            Ok((seq, v.to_vec()))
        })
    }

    pub fn remove(&self, seq: u64) -> Result<(), StoreError> {
        self.events.remove(seq.to_be_bytes())?;
        Ok(())
    }

    pub fn meta_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.meta.get(key)?.map(|v| v.to_vec()))
    }

    pub fn meta_put(&self, key: &[u8], value: Vec<u8>) -> Result<(), StoreError> {
        self.meta.insert(key, value)?;
        Ok(())
    }
}

/// The tree of committed calls.
pub const LEDGER: &str = "commits";

pub use crate::model::{IdemRecord, IdemState, JobClaim, KillSwitch, Outcome};

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

/// The store. Cheap to clone (sled handles are reference counted).
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    idem: sled::Tree,
    budgets: sled::Tree,
    kill: sled::Tree,
    flusher: std::sync::Arc<Flusher>,
    sealer: Sealer,
}

type FlushAck = tokio::sync::oneshot::Sender<Result<(), String>>;

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
                        let _ = ack.send(result.clone());
                    }
                }
            })
            .map_err(|e| StoreError(format!("could not start the flush thread: {e}")))?;
        Ok(std::sync::Arc::new(Flusher {
            tx: std::sync::Mutex::new(Some(tx)),
            thread: std::sync::Mutex::new(Some(thread)),
        }))
    }

    fn ask(&self) -> Result<tokio::sync::oneshot::Receiver<Result<(), String>>, StoreError> {
        let (ack, rx) = tokio::sync::oneshot::channel();
        self.tx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .ok_or_else(|| StoreError("the store is closed".into()))?
            .send(ack)
            .map_err(|_| StoreError("the flush thread is not running".into()))?;
        Ok(rx)
    }

    /// Waits until every write made before the call is durable.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.ask()?
            .await
            .map_err(|_| StoreError("the flush thread stopped".into()))?
            .map_err(StoreError)
    }

    /// The same, for threads outside the async runtime (the audit writer).
    pub fn flush_blocking(&self) -> Result<(), StoreError> {
        self.ask()?
            .blocking_recv()
            .map_err(|_| StoreError("the flush thread stopped".into()))?
            .map_err(StoreError)
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
    fn open(dir: &Path) -> Result<Sealer, StoreError> {
        let path = dir.join("seal.key");
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key: [u8; 32] = rand::random();
                write_private(&path, &key)
                    .map_err(|e| StoreError(format!("{}: {e}", path.display())))?;
                key.to_vec()
            }
            Err(e) => return Err(StoreError(format!("{}: {e}", path.display()))),
        };
        let key = ring::aead::UnboundKey::new(&ring::aead::CHACHA20_POLY1305, &bytes)
            .map_err(|_| StoreError(format!("{}: not a 32-byte key", path.display())))?;
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
            .map_err(|_| StoreError("could not seal a record".into()))?;
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

impl Store {
    /// The sealer of this data dir.
    pub fn sealer(&self) -> &Sealer {
        &self.sealer
    }

    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError(format!("{}: {e}", dir.display())))?;
        let db = sled::Config::new()
            .path(dir.join("store"))
            .open()
            .map_err(|e| StoreError(format!("{}: {e}", dir.display())))?;
        Ok(Store {
            idem: db.open_tree("idempotency")?,
            budgets: db.open_tree("budgets")?,
            kill: db.open_tree("kill_switches")?,
            flusher: Flusher::start(db.clone())?,
            sealer: Sealer::open(dir)?,
            db,
        })
    }

    /// The one flusher of this database.
    pub fn flusher(&self) -> std::sync::Arc<Flusher> {
        self.flusher.clone()
    }

    /// Makes every write so far durable (group commit with every concurrent caller).
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.flusher.flush().await
    }

    /// Bytes the store takes on disk.
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }

    /// Removes the records of tree `name` whose value `expired` says is past its time, and
    /// flushes. Returns the keys removed.
    pub async fn expire(
        &self,
        name: &str,
        expired: impl Fn(&[u8]) -> bool,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        let tree = self.db.open_tree(name)?;
        let mut removed = Vec::new();
        for item in tree.iter() {
            let (k, v) = item?;
            // Compare-and-swap: a record rewritten since it was read is left for the next sweep.
            if expired(&v) && tree.compare_and_swap(&k, Some(&v), None::<&[u8]>)?.is_ok() {
                removed.push(k.to_vec());
            }
        }
        if !removed.is_empty() {
            self.flush().await?;
        }
        Ok(removed)
    }

    /// The audit log's storage.
    pub fn event_log(&self) -> Result<EventLog, StoreError> {
        Ok(EventLog {
            events: self.db.open_tree("audit")?,
            meta: self.db.open_tree("audit_meta")?,
        })
    }

    /// Writes a ledger entry (keyed by its request id). Not flushed: the caller's next store
    /// write flushes it.
    pub fn ledger_put(&self, c: &crate::model::Committed) -> Result<(), StoreError> {
        self.db
            .open_tree(LEDGER)?
            .insert(c.request_id.as_bytes(), serde_json::to_vec(c)?)?;
        Ok(())
    }

    /// The ledger entry of a request id.
    pub fn ledger_get(
        &self,
        request_id: &str,
    ) -> Result<Option<crate::model::Committed>, StoreError> {
        match self.db.open_tree(LEDGER)?.get(request_id.as_bytes())? {
            Some(v) => Ok(Some(serde_json::from_slice(&v)?)),
            None => Ok(None),
        }
    }

    /// Every ledger entry, in key order.
    pub fn ledger_all(&self) -> Result<Vec<crate::model::Committed>, StoreError> {
        let mut out = Vec::new();
        for item in self.db.open_tree(LEDGER)?.iter() {
            let (_, v) = item?;
            out.push(serde_json::from_slice(&v)?);
        }
        Ok(out)
    }

    /// Claims `job` for `agent` (owned by `owner`) unless it is held already. `Ok(None)`: this
    /// agent, or another agent of the same owner, may use it. `Ok(Some(holder))`: it belongs
    /// to that other agent. Written without a flush: a claim lost in a crash is made again.
    pub fn claim_job(
        &self,
        job: &str,
        agent: &str,
        owner: &str,
    ) -> Result<Option<String>, StoreError> {
        let tree = self.db.open_tree("jobs")?;
        let claim = JobClaim {
            agent: agent.to_string(),
            owner: owner.to_string(),
            since_unix: now_unix(),
        };
        let bytes = serde_json::to_vec(&claim)?;
        let held = match tree.compare_and_swap(job, None::<&[u8]>, Some(bytes))? {
            Ok(()) => return Ok(None),
            Err(e) => e.current,
        };
        let Some(held) = held else {
            return Ok(None);
        };
        let held: JobClaim = serde_json::from_slice(&held)?;
        if held.agent == agent || (!owner.is_empty() && held.owner == owner) {
            Ok(None)
        } else {
            Ok(Some(held.agent))
        }
    }

    pub fn idem_get(&self, id: &str) -> Result<Option<IdemRecord>, StoreError> {
        match self.idem.get(id)? {
            Some(bytes) => Ok(Some(serde_json::from_slice(&bytes)?)),
            None => Ok(None),
        }
    }

    /// Writes a record and flushes it.
    pub async fn idem_put(&self, id: &str, rec: &IdemRecord) -> Result<(), StoreError> {
        self.idem.insert(id, serde_json::to_vec(rec)?)?;
        self.flush().await
    }

    pub async fn idem_remove(&self, id: &str) -> Result<(), StoreError> {
        self.idem.remove(id)?;
        self.flush().await
    }

    /// Adds `amount` to the budget `key` unless that would pass `max`. Returns the new total, or
    /// `Err(current)` when refused. Atomic against concurrent calls; flushed.
    pub async fn budget_add(
        &self,
        key: &str,
        amount: f64,
        max: f64,
    ) -> Result<Result<f64, f64>, StoreError> {
        let mut refused_at = None;
        let mut new_total = 0.0;
        self.budgets.fetch_and_update(key, |old| {
            let current = old
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map(f64::from_be_bytes)
                .unwrap_or(0.0);
            if current + amount > max {
                refused_at = Some(current);
                old.map(|b| b.to_vec())
            } else {
                refused_at = None;
                new_total = current + amount;
                Some(new_total.to_be_bytes().to_vec())
            }
        })?;
        if let Some(current) = refused_at {
            return Ok(Err(current));
        }
        self.flush().await?;
        Ok(Ok(new_total))
    }

    pub fn budget_get(&self, key: &str) -> Result<f64, StoreError> {
        Ok(self
            .budgets
            .get(key)?
            .and_then(|b| <[u8; 8]>::try_from(b.as_ref()).ok())
            .map(f64::from_be_bytes)
            .unwrap_or(0.0))
    }

    /// All thrown kill switches, keyed `tool:NAME` or `agent:ID`.
    pub fn kill_switches(&self) -> Result<Vec<(String, KillSwitch)>, StoreError> {
        let mut out = Vec::new();
        for item in self.kill.iter() {
            let (k, v) = item?;
            out.push((
                String::from_utf8_lossy(&k).into_owned(),
                serde_json::from_slice(&v)?,
            ));
        }
        Ok(out)
    }

    /// Throws (`Some`) or resets (`None`) a kill switch, durably.
    pub async fn kill_set(&self, key: &str, value: Option<&KillSwitch>) -> Result<(), StoreError> {
        match value {
            Some(v) => {
                self.kill.insert(key, serde_json::to_vec(v)?)?;
            }
            None => {
                self.kill.remove(key)?;
            }
        }
        self.flush().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn budgets_survive_a_reopen_and_refuse_past_the_max() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
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
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.budget_get("k").unwrap(), 500.0);
    }

    #[test]
    fn sealed_records_open_only_unaltered_and_under_their_key() {
        let dir = tempfile::tempdir().unwrap();
        let sealed = {
            let store = Store::open(dir.path()).unwrap();
            store.sealer().seal(b"x-token: sk_live_1").unwrap()
        };
        assert!(!sealed.contains("sk_live"));
        let store = Store::open(dir.path()).unwrap();
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
        let s2 = Store::open(other.path()).unwrap();
        let sealed = s2.sealer().seal(b"x").unwrap();
        assert!(store.sealer().open_sealed(&sealed).is_none());
    }

    #[tokio::test]
    async fn kill_switches_persist() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            let k = KillSwitch {
                by: "carol".into(),
                reason: "incident".into(),
                at_unix: 1,
            };
            store.kill_set("tool:x", Some(&k)).await.unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let all = store.kill_switches().unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].0, "tool:x");
        store.kill_set("tool:x", None).await.unwrap();
        assert!(store.kill_switches().unwrap().is_empty());
    }
}

/// One async lock per key, so that concurrent duplicates of a call wait for the first one's
/// outcome instead of executing again. Entries are dropped once nobody holds them.
#[derive(Default)]
pub struct KeyedLocks {
    map: std::sync::Mutex<
        std::collections::HashMap<String, std::sync::Weak<tokio::sync::Mutex<()>>>,
    >,
}

impl KeyedLocks {
    pub async fn lock(&self, key: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
            if map.len() > 1024 {
                map.retain(|_, w| w.strong_count() > 0);
            }
            match map.get(key).and_then(std::sync::Weak::upgrade) {
                Some(l) => l,
                None => {
                    let l = std::sync::Arc::new(tokio::sync::Mutex::new(()));
                    map.insert(key.to_string(), std::sync::Arc::downgrade(&l));
                    l
                }
            }
        };
        lock.lock_owned().await
    }
}

impl Store {
    fn proposals(&self) -> Result<sled::Tree, StoreError> {
        Ok(self.db.open_tree("proposals")?)
    }

    fn proposal_index(&self) -> Result<sled::Tree, StoreError> {
        Ok(self.db.open_tree("proposal_by_call")?)
    }

    /// Writes a proposal (and, when given, the index from its call identity) and flushes.
    pub async fn put_proposal(
        &self,
        p: &crate::model::Proposal,
        index: bool,
    ) -> Result<(), StoreError> {
        self.proposals()?.insert(&p.id, serde_json::to_vec(p)?)?;
        if index {
            self.proposal_index()?
                .insert(&p.identity, p.id.as_bytes())?;
        }
        self.flush().await
    }

    pub fn get_proposal(&self, id: &str) -> Result<Option<crate::model::Proposal>, StoreError> {
        match self.proposals()?.get(id)? {
            Some(b) => Ok(Some(serde_json::from_slice(&b)?)),
            None => Ok(None),
        }
    }

    /// The latest proposal made for a call identity.
    pub fn proposal_for(
        &self,
        identity: &str,
    ) -> Result<Option<crate::model::Proposal>, StoreError> {
        match self.proposal_index()?.get(identity)? {
            Some(id) => self.get_proposal(&String::from_utf8_lossy(&id)),
            None => Ok(None),
        }
    }

    pub fn list_proposals(&self) -> Result<Vec<crate::model::Proposal>, StoreError> {
        let mut out = Vec::new();
        for item in self.proposals()?.iter() {
            let (_, v) = item?;
            out.push(serde_json::from_slice(&v)?);
        }
        Ok(out)
    }
}
