//! The one flush thread: group commit of sled writes that a decision waits for.

use super::*;

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

/// What must be durable before sled's files are (the audit log's segments: an indexed event
/// is always on disk).
type BeforeFlush = Box<dyn Fn() -> Result<(), String> + Send + Sync>;

/// How often the flush thread flushes writes nobody waits for (sled's own background flush is
/// off: it would make index entries durable before the segment bytes they point at).
pub(super) const FLUSH_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// One flush: the hook first (the audit segment's `fdatasync`), then sled's files.
fn flush_once(
    db: &sled::Db,
    hook: &std::sync::OnceLock<BeforeFlush>,
    trace: &Trace,
) -> Result<(), String> {
    match hook.get() {
        Some(f) => f(),
        None => Ok(()),
    }?;
    db.flush().map_err(|e| e.to_string())?;
    noted(trace);
    Ok(())
}

/// The flush thread: answers requests (group commit), flushes every `FLUSH_EVERY` when nobody
/// asked, and once more when the store closes.
fn run(
    db: &sled::Db,
    hook: &std::sync::OnceLock<BeforeFlush>,
    rx: &std::sync::mpsc::Receiver<FlushAck>,
    trace: &Trace,
) {
    loop {
        match rx.recv_timeout(FLUSH_EVERY) {
            Ok(first) => {
                let mut waiting = vec![first];
                waiting.extend(rx.try_iter());
                let result = flush_once(db, hook, trace);
                for ack in waiting {
                    ack.answer(result.clone());
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                if let Err(e) = flush_once(db, hook, trace) {
                    tracing::warn!("the periodic store flush failed: {e}");
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                if let Err(e) = flush_once(db, hook, trace) {
                    tracing::warn!("the store's last flush failed: {e}");
                }
                return;
            }
        }
    }
}

/// In tests: the store's journal of syncs, index writes and flushes (`segment::Step`).
#[cfg(test)]
pub(super) type Trace = super::segment::Journal;
#[cfg(not(test))]
type Trace = ();

#[cfg(test)]
fn noted(trace: &Trace) {
    super::segment::note(trace, super::segment::Step::Flushed);
}
#[cfg(not(test))]
fn noted(_: &Trace) {}

/// The one thread that flushes the database. sled 0.34 deadlocks when flushes run concurrently
/// (every IO thread ends up parked in `flush()`), so nothing else ever calls `flush`: writers
/// ask this thread, and every request that arrived while a flush ran is answered by the next
/// single flush (group commit). A write made before asking is covered by the answer.
pub struct Flusher {
    before: std::sync::Arc<std::sync::OnceLock<BeforeFlush>>,
    tx: std::sync::Mutex<Option<std::sync::mpsc::Sender<FlushAck>>>,
    thread: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
    #[cfg(test)]
    pub(super) trace: Trace,
}

impl Flusher {
    pub(super) fn start(db: sled::Db) -> Result<std::sync::Arc<Flusher>, StoreError> {
        let (tx, rx) = std::sync::mpsc::channel::<FlushAck>();
        let before = std::sync::Arc::new(std::sync::OnceLock::<BeforeFlush>::new());
        let hook = before.clone();
        #[allow(clippy::let_unit_value)]
        let trace = Trace::default();
        #[allow(clippy::let_unit_value, clippy::clone_on_copy, clippy::unit_arg)]
        let thread_trace = trace.clone();
        let thread = std::thread::Builder::new()
            .name("toolgate-flush".into())
            .spawn(move || run(&db, &hook, &rx, &thread_trace))
            .map_err(|e| {
                StoreError::from_message(format!("could not start the flush thread: {e}"))
            })?;
        Ok(std::sync::Arc::new(Flusher {
            before,
            tx: std::sync::Mutex::new(Some(tx)),
            thread: std::sync::Mutex::new(Some(thread)),
            #[cfg(test)]
            trace,
        }))
    }

    /// Runs `f` before every flush from now on (set once; a second call is ignored).
    pub(super) fn before_flush(&self, f: BeforeFlush) {
        let _ = self.before.set(f);
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
