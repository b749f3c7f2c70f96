//! Wake-ups for calls held on a proposal: a decision notifies the waiting request, here and,
//! on a shared store, on every other replica (which hears it through `Backend::subscribe`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use tracing::debug;

use crate::store::Store;

/// What a replica announces when a proposal changes; `wake` takes it apart.
const PROPOSAL: &str = "proposal:";

pub struct Waiters {
    map: Mutex<HashMap<String, Arc<Notify>>>,
    /// The store to announce on when other replicas share it.
    shared: Option<Store>,
}

impl Waiters {
    pub fn new(store: &Store) -> Self {
        Waiters {
            map: Mutex::default(),
            shared: store.shared().then(|| store.clone()),
        }
    }

    /// An announcement heard from another replica: wakes what waits here on that proposal.
    pub fn heard(&self, topic: &str) {
        if let Some(id) = topic.strip_prefix(PROPOSAL) {
            self.get(id).notify_waiters();
        }
    }

    /// What to wait on for proposal `id`.
    pub fn get(&self, id: &str) -> Arc<Notify> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > 4096 {
            map.retain(|_, n| Arc::strong_count(n) > 1);
        }
        map.entry(id.to_string()).or_default().clone()
    }

    /// Wakes everything waiting on proposal `id`, here and on the other replicas.
    pub fn notify(&self, id: &str) {
        self.get(id).notify_waiters();
        if let Some(store) = &self.shared {
            let (store, topic) = (store.clone(), format!("{PROPOSAL}{id}"));
            // Best effort: replicas also look again every second.
            tokio::spawn(async move {
                if let Err(e) = store.announce(&topic).await {
                    debug!(error = %e, "could not announce a proposal change");
                }
            });
        }
    }
}
