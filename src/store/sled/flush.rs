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

/// The one thread that flushes the database. sled 0.34 deadlocks when flushes run concurrently
/// (every IO thread ends up parked in `flush()`), so nothing else ever calls `flush`: writers
/// ask this thread, and every request that arrived while a flush ran is answered by the next
/// single flush (group commit). A write made before asking is covered by the answer.
pub struct Flusher {
    tx: std::sync::Mutex<Option<std::sync::mpsc::Sender<FlushAck>>>,
    thread: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Flusher {
    pub(super) fn start(db: sled::Db) -> Result<std::sync::Arc<Flusher>, StoreError> {
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
