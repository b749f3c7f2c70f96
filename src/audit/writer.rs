//! The one writer: a thread that takes queued records in batches, chains, redacts and seals
//! them, writes each batch with its index entries in one atomic write, and flushes once per
//! batch when anyone waits for durability (group commit). It gives the queue's room back as
//! it goes, so a slow disk makes the request path wait rather than the queue grow.
//!
//! A batch the store refuses is kept and written again (after a pause that grows to a bound)
//! until the store takes it: the log is marked unwritable meanwhile, so that the request path
//! refuses what it could not record, and the queue stops draining, so that nothing is dropped.
//! A durable record's caller is told at once: a commit's caller does not go on, and its event is
//! then not written, since what it records does not happen; an event of what already happened
//! (`keep`) stays in the batch.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, Semaphore};
use tracing::{error, warn};

use super::{rfc3339, Event, Record, Redactor};
use crate::store::EventLog;

/// A queued record, the durability wait of its caller if any, and whether it holds a unit
/// of the queue's room.
pub(super) struct Msg {
    pub rec: Box<Record>,
    pub ack: Option<oneshot::Sender<Result<u64, String>>>,
    pub roomed: bool,
    /// A durable record of what already happened: when its write fails its caller is told,
    /// and the event stays in the batch to be written again.
    pub keep: bool,
}

/// The most records written in one batch.
const BATCH: usize = 1024;
/// The most sealed bytes written in one append (the store's block, one segment frame, holds
/// at most 256 MiB), and what an event's index keys and framing add at most, counted.
const BATCH_BYTES: usize = 32 << 20;
const EVENT_OVERHEAD: usize = 4096;
/// How long the writer lets a batch fill when nobody waits for durability: a write costs
/// about the same for one event as for a hundred (one block, one posting list per index
/// value), and the request path never waits for it (only for room in the queue). It sleeps
/// rather than blocking on the queue, so a sender does not have to wake it for every event;
/// a durable record wakes it at once (`Audit::send` unparks it). Short enough that a batch's
/// work is short: on a core shared with the request path, a batch is a pause in serving
/// (20 ms batches made p99 at c=16 about 6 ms on the benchmark, 5 ms batches about 4.3 ms, at
/// the same CPU per request; 2 ms batches cost 12 % more CPU per request).
const LINGER: Duration = Duration::from_millis(5);
/// How often a batch is chained again when other replicas keep appending first.
const APPEND_TRIES: usize = 64;
/// The first pause before a failed batch is written again, and the longest.
const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(1);
/// What a caller whose event was not written before the log gave up at exit is told.
const GIVEN_UP: &str = "the audit log closed before this event was written";

/// Whether the log can be written, as the writer last found it, and whether it must give up
/// on a batch it cannot write (the process is leaving).
#[derive(Default)]
pub(super) struct Health {
    /// False from a failed batch until a batch is written again.
    pub writable: AtomicBool,
    /// Batch writes the store refused (each retry counts).
    pub failures: AtomicU64,
    /// Set when the log closes and its time is up: a failing batch is tried once more, then
    /// given up (and said so), so that the process can exit.
    pub give_up: AtomicBool,
}

pub(super) struct Writer {
    pub log: Arc<dyn EventLog>,
    pub redactor: Arc<Redactor>,
    pub flush_gauge: Arc<AtomicU64>,
    pub room: Arc<Semaphore>,
    pub health: Arc<Health>,
    /// A pause before each batch (a test hook: a writer slower than the request path).
    pub delay: Duration,
    pub seq: u64,
    pub prev: String,
}

/// A durable record's caller, waiting to hear whether (and under which number) it was written.
type Ack = oneshot::Sender<Result<u64, String>>;

impl Writer {
    /// Writes batches until every sender is gone and the queue is empty.
    pub fn run(mut self, rx: mpsc::Receiver<Msg>) {
        while let Ok(first) = rx.recv() {
            if !self.delay.is_zero() {
                std::thread::sleep(self.delay);
            }
            let mut batch = vec![first];
            Self::fill(&rx, &mut batch);
            self.write(batch);
        }
    }

    /// Adds to a batch what arrives within `LINGER`, until it is full, someone waits for it
    /// to be durable, or every sender is gone.
    fn fill(rx: &mpsc::Receiver<Msg>, batch: &mut Vec<Msg>) {
        let until = Instant::now() + LINGER;
        let mut durable = batch.iter().any(|m| m.ack.is_some());
        loop {
            while batch.len() < BATCH {
                match rx.try_recv() {
                    Ok(msg) => {
                        durable |= msg.ack.is_some();
                        batch.push(msg);
                    }
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => return,
                }
            }
            let left = until.saturating_duration_since(Instant::now());
            if durable || batch.len() >= BATCH || left.is_zero() {
                return;
            }
            std::thread::park_timeout(left);
        }
    }

    /// One batch: chained, redacted, written, flushed if anyone waits. A batch the store refuses
    /// is written again until it is taken (or the log gives up at exit). A batch of more bytes
    /// than a store block holds is written in groups, each made durable and answered before the
    /// next is tried: no caller waits on a group that is not its own.
    fn write(&mut self, batch: Vec<Msg>) {
        let mut room = 0;
        let mut rest = Vec::with_capacity(batch.len());
        // Where the chain stood before this batch: a failed write continues from here.
        let mut before = (self.seq, self.prev.clone());
        for msg in batch {
            room += usize::from(msg.roomed);
            let mut e = self.event(*msg.rec);
            let bytes = self.link(&mut e);
            rest.push(((e, bytes), msg.ack.map(|ack| (ack, msg.keep))));
        }
        let mut first = true;
        while !rest.is_empty() {
            let n = group_len(rest.iter().map(|((_, bytes), _)| bytes.len()));
            let (mut events, mut acks): (Vec<_>, Vec<_>) = rest.drain(..n).unzip();
            if !first {
                // Chained again from where the group before it left the chain.
                (self.seq, self.prev) = before.clone();
                for (e, bytes) in events.iter_mut() {
                    *bytes = self.link(e);
                }
            }
            first = false;
            let (failures, failed) =
                self.append_until_taken(&mut events, &mut acks, before.clone());
            if let Some((e, _)) = events.last() {
                before = (e.seq, e.hash.clone());
            }
            let synced = self.acknowledge(&events, acks, failed.is_some());
            let given_up = failed.is_some();
            self.settle_health(failed, synced, failures, events.is_empty());
            if given_up {
                // The process is leaving: the groups not tried are not written either.
                for (_, ack) in rest.drain(..) {
                    if let Some((ack, _)) = ack {
                        let _ = ack.send(Err(GIVEN_UP.into()));
                    }
                }
            }
        }
        self.room.add_permits(room);
    }

    /// Tells a written group's waiting callers: flushed once if any waits, then each its
    /// number, or the flush's error. A group given up has none left waiting.
    fn acknowledge(
        &self,
        events: &[(Event, Vec<u8>)],
        acks: Vec<Option<(Ack, bool)>>,
        given_up: bool,
    ) -> Result<(), String> {
        if !acks.iter().any(Option::is_some) {
            return Ok(());
        }
        let synced = if given_up {
            Err(GIVEN_UP.to_string())
        } else {
            let started = Instant::now();
            let synced = self.log.sync().map_err(|e| e.to_string());
            self.flush_gauge
                .store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
            synced
        };
        for (ack, (e, _)) in acks.into_iter().zip(events) {
            if let Some((ack, _)) = ack {
                let _ = ack.send(synced.clone().map(|()| e.seq));
            }
        }
        synced
    }

    /// Appends the batch, and while the store refuses it, keeps it and tries again after a
    /// pause, chained again from where the chain stood `before`. Durable callers are told of
    /// the first failure at once and their events dropped unless they asked to be kept (a
    /// commit's caller does not go on: what its event records does not happen). Returns how
    /// many tries failed, and what was given up at exit (the error and how many events).
    fn append_until_taken(
        &mut self,
        events: &mut Vec<(Event, Vec<u8>)>,
        acks: &mut Vec<Option<(Ack, bool)>>,
        before: (u64, String),
    ) -> (u32, Option<(String, usize)>) {
        let mut failures = 0u32;
        loop {
            let Err(e) = self.append(events) else {
                return (failures, None);
            };
            (self.seq, self.prev) = before.clone();
            self.health.writable.store(false, Ordering::Relaxed);
            self.health.failures.fetch_add(1, Ordering::Relaxed);
            failures += 1;
            let mut kept = Vec::with_capacity(events.len());
            for (event, ack) in std::mem::take(events).into_iter().zip(std::mem::take(acks)) {
                if let Some((ack, keep)) = ack {
                    let _ = ack.send(Err(e.clone()));
                    if !keep {
                        continue;
                    }
                }
                kept.push(event);
            }
            *events = kept;
            *acks = events.iter().map(|_| None).collect();
            if failures == 1 || failures % 30 == 0 {
                error!(error = %e, events = events.len(), tries = failures,
                    "audit write failed; the batch is kept and written again, and calls are refused until it is");
            }
            if events.is_empty() {
                return (failures, None);
            }
            if self.health.give_up.load(Ordering::Relaxed) {
                return (failures, Some((e, events.len())));
            }
            std::thread::sleep(retry_pause(failures));
            for (e, bytes) in events.iter_mut() {
                *bytes = self.link(e);
            }
        }
    }

    /// Whether the log is writable after a batch: only a batch written and flushed says so.
    fn settle_health(
        &self,
        failed: Option<(String, usize)>,
        synced: Result<(), String>,
        failures: u32,
        emptied: bool,
    ) {
        match (failed, synced) {
            (Some((e, lost)), _) => {
                error!(error = %e, events = lost, "the audit log closed before the store took these events; they were not written");
            }
            (None, Err(e)) => {
                // Written but not known to be durable: the log is not trusted until a batch is.
                self.health.writable.store(false, Ordering::Relaxed);
                error!(error = %e, "audit flush failed");
            }
            // A batch emptied by its failures (durable records only) proves nothing.
            (None, Ok(())) if failures == 0 || !emptied => {
                if failures > 0 {
                    warn!(tries = failures + 1, "the audit log is written again");
                }
                self.health.writable.store(true, Ordering::Relaxed);
            }
            (None, Ok(())) => {}
        }
    }

    /// Appends sealed `events` (their bytes are taken). A shared log that another replica
    /// appended to first answers a conflict: the batch is chained again from the log's new head,
    /// sealed again and retried.
    fn append(&mut self, events: &mut [(Event, Vec<u8>)]) -> Result<(), String> {
        for _ in 0..APPEND_TRIES {
            let writes = events
                .iter_mut()
                .map(|(e, bytes)| e.stored(std::mem::take(bytes)))
                .collect();
            match self.log.append(writes) {
                Ok(()) => return Ok(()),
                Err(e) if e.is_conflict() => {
                    let (seq, prev) =
                        super::chain_head(self.log.as_ref()).map_err(|e| e.to_string())?;
                    (self.seq, self.prev) = (seq, prev);
                    for (e, bytes) in events.iter_mut() {
                        *bytes = self.link(e);
                    }
                }
                Err(e) => return Err(e.to_string()),
            }
        }
        Err(format!(
            "the shared audit log moved on {APPEND_TRIES} times while appending; this batch was not written"
        ))
    }

    /// The event for a record, not yet chained nor redacted ([`Writer::link`] redacts it).
    fn event(&self, rec: Record) -> Event {
        let payload = rec.payload;
        Event {
            seq: 0,
            time: rfc3339(rec.at_ms),
            unix_ms: rec.at_ms,
            kind: rec.kind,
            request_id: rec.request_id,
            job: rec.job,
            proposal: rec.proposal,
            agent: rec.agent,
            owner: rec.owner,
            tool: rec.tool,
            tool_version: rec.tool_version,
            token: rec.token,
            user: rec.user,
            payload,
            prev: String::new(),
            hash: String::new(),
        }
    }

    /// Makes `e` the next event of the chain (its sequence number and the previous hash),
    /// redacts and seals it; returns its bytes. Nothing unredacted is returned or kept: the
    /// sealed bytes are read for anything redaction could rewrite (most events hold none, and
    /// are serialised once), and when they hold some the payload is redacted and sealed again.
    fn link(&mut self, e: &mut Event) -> Vec<u8> {
        self.seq += 1;
        e.seq = self.seq;
        e.prev = std::mem::take(&mut self.prev);
        let mut bytes = e.seal();
        if self.redactor.may_rewrite(&bytes) {
            self.redactor.value_in_place(&mut e.payload);
            bytes = e.seal();
        }
        self.prev = e.hash.clone();
        bytes
    }
}

/// How many of the events of `sizes` sealed bytes (at least one) one append takes: up to
/// `BATCH_BYTES`.
fn group_len(mut sizes: impl ExactSizeIterator<Item = usize>) -> usize {
    let all = sizes.len();
    let mut total = 0;
    sizes
        .position(|size| {
            total += size + EVENT_OVERHEAD;
            total > BATCH_BYTES
        })
        .unwrap_or(all)
        .max(1)
}

/// The pause before a failed batch's `failures`th try again: doubling, within a bound.
fn retry_pause(failures: u32) -> Duration {
    RETRY_FIRST
        .saturating_mul(1u32 << failures.saturating_sub(1).min(8))
        .min(RETRY_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Index, Seqs, StoreError, StoredEvent};

    /// A log that refuses appends while `fail` is set (a disk error, a database gone), and
    /// counts the refusals.
    struct Flaky {
        inner: Arc<dyn EventLog>,
        fail: AtomicBool,
        /// Set: the next append taken sets `fail` (a disk lost after one write).
        then_fail: AtomicBool,
        refused: AtomicU64,
        /// The bytes of each append taken.
        sizes: std::sync::Mutex<Vec<usize>>,
    }

    impl EventLog for Flaky {
        fn last(&self) -> crate::store::Result<Option<Vec<u8>>> {
            self.inner.last()
        }
        fn append(&self, events: Vec<StoredEvent>) -> crate::store::Result<()> {
            if self.fail.load(Ordering::SeqCst) {
                self.refused.fetch_add(1, Ordering::SeqCst);
                return Err(StoreError::from_message("the disk is gone".into()));
            }
            let size = events.iter().map(|e| e.bytes.len()).sum();
            self.inner.append(events)?;
            self.sizes.lock().unwrap().push(size);
            if self.then_fail.load(Ordering::SeqCst) {
                self.fail.store(true, Ordering::SeqCst);
            }
            Ok(())
        }
        fn index(&self, events: &[StoredEvent]) -> crate::store::Result<()> {
            self.inner.index(events)
        }
        fn get(&self, seq: u64) -> crate::store::Result<Option<Vec<u8>>> {
            self.inner.get(seq)
        }
        fn scan(
            &self,
            from_seq: u64,
        ) -> Box<dyn Iterator<Item = crate::store::Result<(u64, Vec<u8>)>> + Send + '_> {
            self.inner.scan(from_seq)
        }
        fn lookup(&self, index: Index, value: &str) -> Seqs<'_> {
            self.inner.lookup(index, value)
        }
        fn lookup_rev(&self, index: Index, value: &str, before: u64) -> Seqs<'_> {
            self.inner.lookup_rev(index, value, before)
        }
        fn in_time(&self, from_ms: u64, until_ms: u64) -> Seqs<'_> {
            self.inner.in_time(from_ms, until_ms)
        }
        fn remove(&self, events: &[StoredEvent]) -> crate::store::Result<()> {
            self.inner.remove(events)
        }
        fn meta_get(&self, key: &[u8]) -> crate::store::Result<Option<Vec<u8>>> {
            self.inner.meta_get(key)
        }
        fn meta_put(&self, key: &[u8], value: Vec<u8>) -> crate::store::Result<()> {
            self.inner.meta_put(key, value)
        }
        fn sync(&self) -> crate::store::Result<()> {
            self.inner.sync()
        }
    }

    fn msg(request: &str, ack: Option<Ack>) -> Msg {
        Msg {
            rec: Box::new(Record {
                kind: crate::audit::Kind::Request,
                request_id: Some(request.into()),
                ..Default::default()
            }),
            ack,
            roomed: false,
            keep: false,
        }
    }

    /// Polls `done` every 10 ms, up to 5 s.
    fn until(what: &str, done: impl Fn() -> bool) {
        for _ in 0..500 {
            if done() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("{what} did not happen within 5 s");
    }

    /// The same on sled as on PostgreSQL: a batch the store refuses is kept and written again
    /// once it is taken, chained where the chain stood; the log is unwritable meanwhile; durable
    /// callers are told at once, and a commit's event is not written while an event of what
    /// already happened is.
    /// A log over a fresh store that refuses appends while its `fail` is set (`then_fail`:
    /// from after its next append taken).
    fn flaky(dir: &std::path::Path, then_fail: bool) -> Arc<Flaky> {
        let store = crate::store::open(dir).unwrap();
        Arc::new(Flaky {
            inner: store.event_log().unwrap(),
            fail: AtomicBool::new(false),
            then_fail: AtomicBool::new(then_fail),
            refused: AtomicU64::new(0),
            sizes: Default::default(),
        })
    }

    /// A writer on `log` whose batches are what is sent within `delay` before each.
    fn writer_on(log: Arc<Flaky>, health: Arc<Health>, delay: Duration) -> Writer {
        Writer {
            log,
            redactor: Arc::new(Redactor::new()),
            flush_gauge: Arc::new(AtomicU64::new(0)),
            room: Arc::new(Semaphore::new(16)),
            health,
            delay,
            seq: 0,
            prev: String::new(),
        }
    }

    #[test]
    fn a_refused_batch_is_written_again_and_the_chain_stays_whole() {
        let dir = tempfile::tempdir().unwrap();
        let log = flaky(dir.path(), false);
        let health = Arc::new(Health::default());
        health.writable.store(true, Ordering::SeqCst);
        // What is sent within the pause before a batch is one batch.
        let writer = writer_on(log.clone(), health.clone(), Duration::from_millis(100));
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::spawn(move || writer.run(rx));
        let written = || log.scan(0).count();
        tx.send(msg("r1", None)).unwrap();
        until("the first write", || written() == 1);

        log.fail.store(true, Ordering::SeqCst);
        let (ack, commit) = oneshot::channel();
        let (ack_kept, happened) = oneshot::channel();
        tx.send(msg("r2", None)).unwrap();
        tx.send(msg("commit", Some(ack))).unwrap();
        let mut kept = msg("happened", Some(ack_kept));
        kept.keep = true;
        tx.send(kept).unwrap();
        tx.send(msg("r3", None)).unwrap();
        until("a refused write", || {
            !health.writable.load(Ordering::SeqCst)
        });
        assert!(commit.blocking_recv().unwrap().is_err(), "told at once");
        assert!(happened.blocking_recv().unwrap().is_err(), "told at once");
        until("a retry", || log.refused.load(Ordering::SeqCst) >= 2);
        assert_eq!(written(), 1);

        log.fail.store(false, Ordering::SeqCst);
        until("the write again", || health.writable.load(Ordering::SeqCst));
        drop(tx);
        thread.join().unwrap();

        let events: Vec<Event> = log
            .scan(0)
            .map(|item| serde_json::from_slice(&item.unwrap().1).unwrap())
            .collect();
        let ids: Vec<&str> = events
            .iter()
            .filter_map(|e| e.request_id.as_deref())
            .collect();
        assert_eq!(ids, ["r1", "r2", "happened", "r3"]);
        let mut prev = String::new();
        for (n, e) in events.iter().enumerate() {
            assert_eq!(e.seq, n as u64 + 1);
            assert_eq!(e.prev, prev);
            assert_eq!(e.compute_hash(), e.hash);
            prev = e.hash.clone();
        }
    }

    /// A batch of more bytes than one append takes is written in several, chained whole,
    /// each within the bound (a store block past its frame limit would be unreadable).
    /// A caller whose event went in a batch's first group is answered once that group is
    /// durable, not held until a later group (refused here) is written.
    #[test]
    fn a_group_written_is_answered_while_a_later_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let log = flaky(dir.path(), true);
        let writer = writer_on(
            log.clone(),
            Arc::new(Health::default()),
            Duration::from_millis(200),
        );
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::spawn(move || writer.run(rx));
        let big = serde_json::Value::String("x".repeat(BATCH_BYTES / 3 + 1024));
        let (ack, done) = oneshot::channel();
        let mut first = msg("r0", Some(ack));
        first.rec.payload = big.clone();
        tx.send(first).unwrap();
        for n in 1..4 {
            let mut m = msg(&format!("r{n}"), None);
            m.rec.payload = big.clone();
            tx.send(m).unwrap();
        }
        let (answered_tx, answered) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = answered_tx.send(done.blocking_recv());
        });
        let got = answered.recv_timeout(Duration::from_secs(10));
        until("the later group refused", || {
            log.refused.load(Ordering::SeqCst) > 0
        });
        log.then_fail.store(false, Ordering::SeqCst);
        log.fail.store(false, Ordering::SeqCst);
        assert_eq!(
            got.unwrap().unwrap(),
            Ok(1),
            "held behind the refused group"
        );
        drop(tx);
        thread.join().unwrap();
        assert_eq!(log.scan(0).count(), 4);
    }

    #[test]
    fn a_batch_of_many_bytes_is_written_in_appends_within_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let log = flaky(dir.path(), false);
        let writer = writer_on(
            log.clone(),
            Arc::new(Health::default()),
            Duration::from_millis(200),
        );
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::spawn(move || writer.run(rx));
        let big = serde_json::Value::String("x".repeat(BATCH_BYTES / 3 + 1024));
        let (ack, done) = oneshot::channel();
        for n in 0..4 {
            let mut m = msg(&format!("r{n}"), None);
            m.rec.payload = big.clone();
            tx.send(m).unwrap();
        }
        tx.send(msg("last", Some(ack))).unwrap();
        assert_eq!(done.blocking_recv().unwrap(), Ok(5));
        drop(tx);
        thread.join().unwrap();
        let sizes = log.sizes.lock().unwrap().clone();
        assert!(sizes.len() >= 2, "{sizes:?}");
        assert!(sizes.iter().all(|s| *s <= BATCH_BYTES), "{sizes:?}");
        let events: Vec<Event> = log
            .scan(0)
            .map(|item| serde_json::from_slice(&item.unwrap().1).unwrap())
            .collect();
        let mut prev = String::new();
        for (n, e) in events.iter().enumerate() {
            assert_eq!(e.seq, n as u64 + 1);
            assert_eq!(e.prev, prev);
            assert_eq!(e.compute_hash(), e.hash);
            prev = e.hash.clone();
        }
        assert_eq!(events.len(), 5);
    }

    #[test]
    fn the_pause_between_tries_grows_to_its_bound() {
        assert_eq!(retry_pause(1), RETRY_FIRST);
        assert_eq!(retry_pause(2), RETRY_FIRST * 2);
        assert_eq!(retry_pause(40), RETRY_MAX);
    }
}
