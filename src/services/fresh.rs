//! A map whose entries are used for a while after they were read, then read again: what the
//! request path keeps of records that change rarely (issued tokens, grants, MCP pins).

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Entries kept at most; past it, the stale ones are dropped (and, if none is, the oldest).
const MAX_ENTRIES: usize = 10_000;

/// Values by key, each with when it was put; an entry older than `ttl` is not given out.
pub struct Fresh<K, V> {
    ttl: Duration,
    map: Mutex<HashMap<K, (V, Instant)>>,
}

impl<K: Eq + Hash + Clone, V: Clone> Fresh<K, V> {
    pub fn new(ttl: Duration) -> Self {
        Fresh {
            ttl,
            map: Mutex::new(HashMap::new()),
        }
    }

    /// The value put under `key` within the last `ttl`.
    pub fn get<Q: Eq + Hash + ?Sized>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
    {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.get(key)
            .filter(|(_, at)| at.elapsed() < self.ttl)
            .map(|(v, _)| v.clone())
    }

    pub fn put(&self, key: K, value: V) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_ENTRIES && !map.contains_key(&key) {
            let ttl = self.ttl;
            map.retain(|_, (_, at)| at.elapsed() < ttl);
            if map.len() >= MAX_ENTRIES {
                // What is dropped is read again (or, for an MCP session, opened again).
                let oldest = map.iter().min_by_key(|(_, (_, at))| *at).map(|(k, _)| k);
                if let Some(k) = oldest.cloned() {
                    map.remove(&k);
                }
            }
        }
        map.insert(key, (value, Instant::now()));
    }

    pub fn forget<Q: Eq + Hash + ?Sized>(&self, key: &Q)
    where
        K: Borrow<Q>,
    {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }
}
