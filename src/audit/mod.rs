//! The audit log: append-only events in the store (`store::EventLog`), each carrying the
//! sha256 of the one before, so that `verify` finds an edited or removed event; indexed by
//! request, proposal, job, agent, tool, kind, error code and time in the same atomic write, so
//! that a story or a search reads only its own events. Secrets are redacted before anything
//! is written.
//!
//! Records queue for one writer thread (`writer.rs`). The queue is bounded: when it is full,
//! `record` waits for room (the request path slows down; nothing is dropped and memory does
//! not grow). Events that a commit depends on are flushed before the request goes on (several
//! concurrent commits share one flush). `close` drains the queue and flushes it.
//!
//! A batch the store refuses is written again until the store takes it; meanwhile the log is
//! not [`Audit::writable`], and the request path refuses to forward what it could not record.

mod event;
mod kind;
pub mod ocsf;
pub mod payload;
mod query;
mod redact;
mod traffic;
mod unmatched;
mod writer;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::{oneshot, Semaphore};
use tracing::{info, warn};

pub use event::{Event, Record};
pub use kind::Kind;
pub use payload::{Payload, RollbackOutcome};
pub use query::{describe, parse_time, summary, time_filter, Filter};
pub use redact::{
    body_json, cap_text, headers_json, scrub_outcome, Redactor, HEADERS_CAP, HEADER_VALUE_CAP,
    MAX_HEADERS_RECORDED, REDACTED, SECRET_HEADERS, URI_CAP,
};
pub use traffic::{Page, Row, TrafficFilter, PAGE_ROWS};
pub use unmatched::{UnmatchedCalls, UNMATCHED_MAX};

use crate::base::now_ms;
use crate::store::{EventLog, StoreError};
use writer::{Health, Msg, Writer};

/// How the log is opened.
#[derive(Debug, Clone)]
pub struct Options {
    /// A pause before each batch the writer takes (a test hook; zero in production).
    pub write_delay: Duration,
    /// Records that may wait for the writer at once. Past this, `record` waits for room.
    pub queue: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            write_delay: Duration::ZERO,
            queue: crate::base::AUDIT_QUEUE,
        }
    }
}

/// The log: a handle for writers and readers.
pub struct Audit {
    tx: Mutex<Option<mpsc::Sender<Msg>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// The writer thread, to wake when a record waits to be durable.
    wake: std::thread::Thread,
    /// Room in the queue: a permit per record waiting for the writer.
    room: Arc<Semaphore>,
    capacity: usize,
    /// The most records that waited at once.
    peak: AtomicU64,
    log: Arc<dyn EventLog>,
    /// Whether the writer's last batch was written (and when to give up at exit).
    health: Arc<Health>,
    /// The store, for whether it answers (a shared store's health watch).
    store: crate::store::Store,
    /// Events of refusals not recorded because the queue was full while the log could not be
    /// written.
    unrecorded: AtomicU64,
    pub redactor: Arc<Redactor>,
    /// Flush latency of the last group commit, in microseconds (for /metrics).
    pub last_flush_us: Arc<AtomicU64>,
    /// Events read back from the store since the log was opened (reads stay bounded by what a
    /// query returns; tests check it).
    decoded: AtomicU64,
}

/// The cap on bodies recorded in events.
pub const BODY_CAP: usize = 16 * 1024;

pub(crate) fn rfc3339(ms: u64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

impl Drop for Audit {
    /// The writer writes what is queued and ends; the store is released with it.
    fn drop(&mut self) {
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
        // Nobody waits any longer: a batch the store keeps refusing is given up.
        self.health.give_up.store(true, Ordering::Relaxed);
        if let Some(w) = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = w.join();
        }
    }
}

const ANCHOR: &[u8] = b"anchor";
const PURGES: &[u8] = b"purges";

/// What a purge removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PurgeReport {
    pub removed: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// The purge stopped early: older events were kept for an audit sink that has not
    /// delivered them.
    pub kept_for_sinks: bool,
}

/// Refuses a purge that would remove events younger than the retention minimum.
pub fn check_purge_cut(before_ms: u64, min_age: Duration) -> Result<(), String> {
    let earliest = now_ms().saturating_sub(min_age.as_millis() as u64);
    if before_ms > earliest {
        return Err(format!(
            "events younger than the retention minimum ({}s) are never purged; the latest cut allowed now is {}",
            min_age.as_secs(),
            rfc3339(earliest)
        ));
    }
    Ok(())
}

/// The sequence number and hash the next event chains to: the newest event's, or the anchor a
/// purge left.
fn chain_head(log: &dyn EventLog) -> Result<(u64, String), StoreError> {
    Ok(match log.last()? {
        Some(v) => {
            let e: Event = serde_json::from_slice(&v)?;
            (e.seq, e.hash)
        }
        None => match log.meta_get(ANCHOR)? {
            Some(v) => {
                let a: Value = serde_json::from_slice(&v)?;
                (
                    a["seq"].as_u64().unwrap_or(0),
                    a["hash"].as_str().unwrap_or("").to_string(),
                )
            }
            None => (0, String::new()),
        },
    })
}

/// The meta key that says every event has its index entries.
const INDEXED: &[u8] = b"indexed_v1";

impl Audit {
    /// Opens the log in the store and starts its writer thread.
    pub fn open(store: &crate::store::Store) -> Result<Audit, StoreError> {
        Audit::open_with(store, Options::default())
    }

    pub fn open_with(store: &crate::store::Store, opts: Options) -> Result<Audit, StoreError> {
        let log = store.event_log()?;
        index_older_events(log.as_ref())?;
        let (tx, rx) = mpsc::channel::<Msg>();
        let (seq, prev) = chain_head(log.as_ref())?;
        let last_flush_us = Arc::new(AtomicU64::new(0));
        let redactor = Arc::new(Redactor::new());
        let capacity = opts.queue.max(1);
        let room = Arc::new(Semaphore::new(capacity));
        let health = Arc::new(Health::default());
        health.writable.store(true, Ordering::Relaxed);
        let writer = Writer {
            log: log.clone(),
            redactor: redactor.clone(),
            flush_gauge: last_flush_us.clone(),
            room: room.clone(),
            health: health.clone(),
            delay: opts.write_delay,
            seq,
            prev,
        };
        let writer = std::thread::Builder::new()
            .name("toolgate-audit".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| {
                StoreError::from_message(format!("could not start the audit writer: {e}"))
            })?;
        Ok(Audit {
            tx: Mutex::new(Some(tx)),
            wake: writer.thread().clone(),
            writer: Mutex::new(Some(writer)),
            room,
            capacity,
            peak: AtomicU64::new(0),
            log,
            health,
            store: store.clone(),
            unrecorded: AtomicU64::new(0),
            redactor,
            last_flush_us,
            decoded: AtomicU64::new(0),
        })
    }

    fn send(
        &self,
        mut rec: Record,
        ack: Option<oneshot::Sender<Result<u64, String>>>,
        roomed: bool,
        keep: bool,
    ) -> bool {
        if rec.at_ms == 0 {
            rec.at_ms = now_ms();
        }
        let durable = ack.is_some();
        let msg = Msg {
            rec: Box::new(rec),
            ack,
            roomed,
            keep,
        };
        let sent = self
            .tx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(|tx| tx.send(msg).is_ok());
        if sent && durable {
            self.wake.unpark();
        }
        if !sent && roomed {
            self.room.add_permits(1);
        }
        sent
    }

    /// Waits for room in the queue (backpressure), then queues the event. Its time is now.
    pub async fn record(&self, mut rec: Record) {
        if rec.at_ms == 0 {
            rec.at_ms = now_ms();
        }
        self.record_from(move || Some(rec)).await;
    }

    /// Waits for room in the queue, then queues what `take` gives. The record is taken only
    /// once there is room, so that a caller dropped while it waits (a client gone) still holds
    /// it, and its own guard can record it.
    pub async fn record_from(&self, take: impl FnOnce() -> Option<Record>) {
        let roomed = self.room.acquire().await.map(|p| p.forget()).is_ok();
        match take() {
            Some(rec) => self.queue(rec, roomed),
            None if roomed => self.room.add_permits(1),
            None => {}
        }
        let queued = self.queued().0;
        self.peak.fetch_max(queued, Ordering::Relaxed);
    }

    /// Queues the event if the queue has room now; otherwise it is not recorded and counted.
    /// For refusals made because the log cannot be written: the queue does not drain then,
    /// and a refusal must not wait for it.
    pub fn record_if_room(&self, rec: Record) {
        match self.room.try_acquire() {
            Ok(p) => {
                p.forget();
                self.queue(rec, true);
            }
            Err(_) => {
                let n = self.unrecorded.fetch_add(1, Ordering::Relaxed) + 1;
                if n.is_power_of_two() {
                    warn!(
                        unrecorded = n,
                        "the audit queue is full while the log cannot be written: refusals are answered without their events"
                    );
                }
            }
        }
    }

    /// Batch writes the store refused so far (each retry counts), and refusals answered
    /// without their events because the queue was full while the log could not be written.
    pub fn write_failures(&self) -> (u64, u64) {
        (
            self.health.failures.load(Ordering::Relaxed),
            self.unrecorded.load(Ordering::Relaxed),
        )
    }

    /// Whether an event recorded now can be written: the writer's last batch was (none failed
    /// since), and the store answers. Nothing may be forwarded while it is false.
    pub fn writable(&self) -> bool {
        self.health.writable.load(Ordering::Relaxed) && self.store.healthy()
    }

    /// Records waiting for the writer now, and the most that ever waited at once.
    pub fn queued(&self) -> (u64, u64) {
        let now = self.capacity.saturating_sub(self.room.available_permits()) as u64;
        (now, self.peak.load(Ordering::Relaxed).max(now))
    }

    /// Queues an event from code that cannot wait (policy reloads, stream ends, the guard of a
    /// request whose client went away). Takes room
    /// when there is some; past the bound it queues anyway: such callers are few and rare.
    pub fn record_now(&self, rec: Record) {
        let roomed = self.room.try_acquire().map(|p| p.forget()).is_ok();
        self.queue(rec, roomed);
    }

    fn queue(&self, rec: Record, roomed: bool) {
        if !self.send(rec, None, roomed, false) {
            warn!("the audit log is closed; an event was not recorded");
        }
    }

    /// Records an event and waits until it is durable. An error means the caller must not go
    /// on with what the event records (fail closed).
    pub async fn record_durable(&self, rec: Record) -> Result<u64, String> {
        if !self.writable() {
            return Err("the audit log cannot be written now".into());
        }
        self.durable(rec, false).await
    }

    /// Records what already happened (a committed call's answer) and waits until it is
    /// durable. If the log cannot be written now, the event is kept and written once the store
    /// takes it; the error then only says that it is not durable yet.
    pub async fn record_happened(&self, rec: Record) -> Result<u64, String> {
        if !self.writable() {
            self.record(rec).await;
            return Err("the audit log cannot be written now; the event is kept for later".into());
        }
        self.durable(rec, true).await
    }

    async fn durable(&self, rec: Record, keep: bool) -> Result<u64, String> {
        let (tx, rx) = oneshot::channel();
        if !self.send(rec, Some(tx), false, keep) {
            return Err("the audit writer is not running".into());
        }
        match tokio::time::timeout(Duration::from_secs(30), rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err("the audit writer stopped".into()),
            Err(_) => Err("the audit flush timed out".into()),
        }
    }

    /// Stops taking records, lets the writer write and flush everything queued, and waits
    /// for it (up to `limit`). Returns false if it did not finish in time.
    pub async fn close(&self, limit: Duration) -> bool {
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
        let Some(writer) = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return true;
        };
        let log = self.log.clone();
        let drained = tokio::task::spawn_blocking(move || {
            let _ = writer.join();
            log.sync()
        });
        let drained = tokio::time::timeout(limit, drained).await;
        // Past the limit, a batch the store keeps refusing is given up so that the process
        // can leave (the writer says how many events it could not write).
        self.health.give_up.store(true, Ordering::Relaxed);
        match drained {
            Ok(Ok(Ok(()))) => true,
            Ok(Ok(Err(e))) => {
                warn!(error = %e, "the audit log's last flush failed");
                false
            }
            _ => false,
        }
    }

    fn decode(&self, bytes: &[u8]) -> Result<Event, StoreError> {
        self.decoded.fetch_add(1, Ordering::Relaxed);
        Ok(serde_json::from_slice(bytes)?)
    }

    /// How many events were read back from the store so far.
    pub fn decoded(&self) -> u64 {
        self.decoded.load(Ordering::Relaxed)
    }

    /// The time of the oldest event, if any.
    pub fn oldest_ms(&self) -> Result<Option<u64>, StoreError> {
        self.events(0)
            .next()
            .transpose()
            .map(|e| e.map(|e| e.unix_ms))
    }

    /// The newest event's sequence number and hash (what the next event chains to).
    pub fn head(&self) -> Result<(u64, String), StoreError> {
        chain_head(self.log.as_ref())
    }

    /// One event by its sequence number.
    pub fn event(&self, seq: u64) -> Result<Option<Event>, StoreError> {
        self.log.get(seq)?.map(|v| self.decode(&v)).transpose()
    }

    /// Every event from `from_seq` on, in order, read as it is consumed (an export streams).
    pub fn events(&self, from_seq: u64) -> impl Iterator<Item = Result<Event, StoreError>> + '_ {
        self.log.scan(from_seq).map(|item| {
            let (_, v) = item?;
            self.decode(&v)
        })
    }

    /// What `audit export` writes: every event, or those at or after `since_ms` (through the
    /// time index), read as consumed.
    pub fn export(
        &self,
        since_ms: Option<u64>,
    ) -> Box<dyn Iterator<Item = Result<Event, StoreError>> + '_> {
        match since_ms {
            Some(ms) => Box::new(self.events_since(ms)),
            None => Box::new(self.events(0)),
        }
    }

    /// Events whose time is at or after `since_ms`, in time order, read as consumed.
    pub fn events_since(
        &self,
        since_ms: u64,
    ) -> impl Iterator<Item = Result<Event, StoreError>> + '_ {
        self.log
            .in_time(since_ms, u64::MAX)
            .filter_map(|seq| match seq {
                Ok(seq) => self.event(seq).transpose(),
                Err(e) => Some(Err(e)),
            })
    }

    /// Checks the chain. `Ok(n)`: n events verified. `Err((seq, why))`: the first bad one.
    /// A purge that runs meanwhile moves the start of the chain (its events go, its anchor
    /// comes): a check that fails at its very first event looks again, a few times.
    pub fn verify(&self) -> Result<u64, (u64, String)> {
        let mut tries = 0;
        loop {
            match self.verify_once() {
                Err((_, _, 0)) if tries < 5 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err((seq, why, _)) => return Err((seq, why)),
                Ok(n) => return Ok(n),
            }
        }
    }

    /// One pass of [`Audit::verify`]; an error also says how many events had verified.
    fn verify_once(&self) -> Result<u64, (u64, String, u64)> {
        let (mut expect_seq, mut prev) = match self.log.meta_get(ANCHOR) {
            Ok(Some(v)) => {
                let a: Value = serde_json::from_slice(&v).unwrap_or_default();
                (
                    a["seq"].as_u64().unwrap_or(0) + 1,
                    a["hash"].as_str().unwrap_or("").to_string(),
                )
            }
            _ => (1, String::new()),
        };
        let mut n = 0;
        for item in self.log.scan(0) {
            let (key_seq, v) = item.map_err(|e| (expect_seq, e.to_string(), n))?;
            let e = self.decode(&v).map_err(|err| {
                (
                    key_seq,
                    format!("event {key_seq} is not readable: {err}"),
                    n,
                )
            })?;
            if e.seq != expect_seq || key_seq != e.seq {
                return Err((
                    expect_seq,
                    format!("event {expect_seq} is missing (found {})", e.seq),
                    n,
                ));
            }
            if e.prev != prev {
                return Err((
                    e.seq,
                    format!("event {} does not chain to the one before", e.seq),
                    n,
                ));
            }
            if e.compute_hash() != e.hash {
                return Err((
                    e.seq,
                    format!("event {} was changed after it was written", e.seq),
                    n,
                ));
            }
            prev = e.hash;
            expect_seq += 1;
            n += 1;
        }
        Ok(n)
    }

    /// Removes events older than `before_ms`, keeping the chain verifiable from an anchor (the
    /// last removed event's sequence and hash). The purge itself is then recorded twice: as a
    /// `purge` event in the chain, and in the list of purges `verify` reports, which no later
    /// purge removes.
    pub async fn purge(
        &self,
        before_ms: u64,
        by: &str,
        reason: &str,
        delivered: Option<u64>,
    ) -> Result<PurgeReport, StoreError> {
        let mut report = PurgeReport::default();
        let mut anchor: Option<(u64, String)> = None;
        // Never purge the newest event: it anchors the next append.
        let newest = chain_head(self.log.as_ref())?.0;
        // A thousand at a time, each round scanning afresh (a removal rewrites stored blocks).
        let mut from = 0;
        loop {
            let mut doomed = Vec::new();
            for item in self.log.scan(from) {
                let (k, v) = item?;
                let e = self.decode(&v)?;
                // An event an audit sink has not delivered stays (its only copy is here).
                if delivered.is_some_and(|d| e.seq > d) && e.unix_ms < before_ms && k < newest {
                    report.kept_for_sinks = true;
                }
                if e.unix_ms >= before_ms
                    || k >= newest
                    || report.kept_for_sinks
                    || doomed.len() == 1000
                {
                    break;
                }
                report.first_seq.get_or_insert(e.seq);
                report.last_seq = Some(e.seq);
                anchor = Some((e.seq, e.hash.clone()));
                doomed.push(e.stored(Vec::new()));
            }
            let Some(last) = doomed.last().map(|e| e.seq) else {
                break;
            };
            report.removed += doomed.len() as u64;
            self.log.remove(&doomed)?;
            from = last + 1;
        }
        if let Some((seq, hash)) = anchor {
            self.log.meta_put(
                ANCHOR,
                serde_json::to_vec(&json!({"seq": seq, "hash": hash}))?,
            )?;
        }
        let entry = json!({
            "by": by,
            "reason": reason,
            "before": rfc3339(before_ms),
            "removed": report.removed,
            "from_seq": report.first_seq,
            "to_seq": report.last_seq,
            "at": rfc3339(now_ms()),
        });
        let mut purges = self.purges()?;
        purges.push(entry.clone());
        self.log.meta_put(PURGES, serde_json::to_vec(&purges)?)?;
        let log = self.log.clone();
        tokio::task::spawn_blocking(move || log.sync())
            .await
            .map_err(|e| StoreError::from_message(format!("the purge's flush stopped: {e}")))??;
        self.record_durable(Record {
            kind: Kind::Purge,
            payload: entry,
            ..Default::default()
        })
        .await
        .map_err(StoreError::from_message)?;
        Ok(report)
    }

    /// What opening the log repaired after crashes (a torn tail cut off, events lost with
    /// it), oldest first: `{"at_unix", "note"}` each.
    pub fn recoveries(&self) -> Result<Vec<Value>, StoreError> {
        Ok(match self.log.meta_get(crate::store::RECOVERIES)? {
            Some(v) => serde_json::from_slice(&v)?,
            None => Vec::new(),
        })
    }

    /// Every purge so far (who, why, which range), oldest first.
    pub fn purges(&self) -> Result<Vec<Value>, StoreError> {
        Ok(match self.log.meta_get(PURGES)? {
            Some(v) => serde_json::from_slice(&v)?,
            None => Vec::new(),
        })
    }
}

/// A log written before the indexes existed gets them, once, at open.
fn index_older_events(log: &dyn EventLog) -> Result<(), StoreError> {
    if log.meta_get(INDEXED)?.is_some() {
        return Ok(());
    }
    let mut batch = Vec::new();
    let mut total = 0u64;
    for item in log.scan(0) {
        let (_, bytes) = item?;
        let e: Event = serde_json::from_slice(&bytes)?;
        batch.push(e.stored(bytes));
        if batch.len() == 10_000 {
            total += batch.len() as u64;
            log.index(&std::mem::take(&mut batch))?;
        }
    }
    total += batch.len() as u64;
    log.index(&batch)?;
    log.meta_put(INDEXED, b"1".to_vec())?;
    if total > 0 {
        log.sync()?;
        info!(
            events = total,
            "indexed the audit log written by an earlier version"
        );
    }
    Ok(())
}
