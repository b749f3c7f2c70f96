//! Wake-ups for calls held on a proposal: a decision notifies the waiting request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

#[derive(Default)]
pub struct Waiters {
    map: Mutex<HashMap<String, Arc<Notify>>>,
}

impl Waiters {
    /// What to wait on for proposal `id`.
    pub fn get(&self, id: &str) -> Arc<Notify> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > 4096 {
            map.retain(|_, n| Arc::strong_count(n) > 1);
        }
        map.entry(id.to_string()).or_default().clone()
    }

    /// Wakes everything waiting on proposal `id`.
    pub fn notify(&self, id: &str) {
        self.get(id).notify_waiters();
    }
}
