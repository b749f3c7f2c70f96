//! The one writer: a thread that takes queued records in batches, chains, redacts and seals
//! them, writes each batch with its index entries in one atomic write, and flushes once per
//! batch when anyone waits for durability (group commit). It gives the queue's room back as
//! it goes, so a slow disk makes the request path wait rather than the queue grow.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, Semaphore};
use tracing::error;

use super::{rfc3339, Event, Record, Redactor};
use crate::store::EventLog;

/// A queued record, the durability wait of its caller if any, and whether it holds a unit
/// of the queue's room.
pub(super) struct Msg {
    pub rec: Box<Record>,
    pub ack: Option<oneshot::Sender<Result<u64, String>>>,
    pub roomed: bool,
}

/// The most records written in one batch.
const BATCH: usize = 1024;
/// How long the writer lets a batch fill when nobody waits for durability: a write costs
/// about the same for one event as for a hundred (one block, one posting list per index
/// value), and the request path never waits for it (only for room in the queue). It sleeps
/// rather than blocking on the queue, so a sender does not have to wake it for every event;
/// a durable record wakes it at once (`Audit::send` unparks it).
const LINGER: Duration = Duration::from_millis(20);
/// How often a batch is chained again when other replicas keep appending first.
const APPEND_TRIES: usize = 64;
pub(super) struct Writer {
    pub log: Arc<dyn EventLog>,
    pub redactor: Arc<Redactor>,
    pub flush_gauge: Arc<AtomicU64>,
    pub room: Arc<Semaphore>,
    /// A pause before each batch (a test hook: a writer slower than the request path).
    pub delay: Duration,
    pub seq: u64,
    pub prev: String,
}

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

    /// One batch: chained, redacted, written atomically, flushed once if anyone waits.
    fn write(&mut self, batch: Vec<Msg>) {
        let mut acks = Vec::new();
        let before = (self.seq, self.prev.clone());
        let mut events = Vec::with_capacity(batch.len());
        let mut room = 0;
        for msg in batch {
            room += usize::from(msg.roomed);
            let mut e = self.event(*msg.rec);
            let bytes = self.link(&mut e);
            events.push((e, bytes));
            acks.push(msg.ack);
        }
        // One atomic write per batch; on failure the chain continues from before it.
        let mut failed = self.append(&mut events).err();
        if failed.is_some() {
            (self.seq, self.prev) = before;
        }
        let acks: Vec<_> = acks
            .into_iter()
            .zip(&events)
            .filter_map(|(ack, (e, _))| ack.map(|a| (a, e.seq)))
            .collect();
        if !acks.is_empty() && failed.is_none() {
            let started = Instant::now();
            if let Err(err) = self.log.sync() {
                failed = Some(err.to_string());
            }
            self.flush_gauge
                .store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        }
        self.room.add_permits(room);
        for (ack, seq) in acks {
            let _ = ack.send(match &failed {
                Some(e) => Err(e.clone()),
                None => Ok(seq),
            });
        }
        if let Some(e) = failed {
            error!(error = %e, "audit write failed");
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

    /// The event for a record (redacted here, before anything is written), not yet chained.
    fn event(&self, rec: Record) -> Event {
        let mut payload = rec.payload;
        self.redactor.value_in_place(&mut payload);
        Event {
            seq: 0,
            time: rfc3339(rec.at_ms),
            unix_ms: rec.at_ms,
            kind: rec.kind.to_string(),
            request_id: rec.request_id,
            job: rec.job,
            proposal: rec.proposal,
            agent: rec.agent,
            owner: rec.owner,
            tool: rec.tool,
            tool_version: rec.tool_version,
            token: rec.token,
            payload,
            prev: String::new(),
            hash: String::new(),
        }
    }

    /// Makes `e` the next event of the chain (its sequence number and the previous hash) and
    /// seals it; returns its bytes.
    fn link(&mut self, e: &mut Event) -> Vec<u8> {
        self.seq += 1;
        e.seq = self.seq;
        e.prev = std::mem::take(&mut self.prev);
        let bytes = e.seal();
        self.prev = e.hash.clone();
        bytes
    }
}
