//! In-process locks by key, so that concurrent duplicates of a call wait for the first one's
//! outcome instead of executing again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

/// What a lock serialises.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LockKey {
    /// A call with side effects, by its idempotency identity.
    Call(String),
    /// Undoing one committed call, by its request id.
    Undo(String),
}

/// One async lock per key. Entries are dropped once nobody holds them.
#[derive(Default)]
pub struct KeyedLocks {
    map: Mutex<HashMap<LockKey, Weak<tokio::sync::Mutex<()>>>>,
}

impl KeyedLocks {
    pub async fn lock(&self, key: LockKey) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
            if map.len() > 1024 {
                map.retain(|_, w| w.strong_count() > 0);
            }
            match map.get(&key).and_then(Weak::upgrade) {
                Some(l) => l,
                None => {
                    let l = Arc::new(tokio::sync::Mutex::new(()));
                    map.insert(key, Arc::downgrade(&l));
                    l
                }
            }
        };
        lock.lock_owned().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_same_key_waits_and_another_key_does_not() {
        let locks = KeyedLocks::default();
        let held = locks.lock(LockKey::Call("a".into())).await;
        // Another key (and the same text under another kind) is free.
        let _b = locks.lock(LockKey::Undo("a".into())).await;
        let waiting = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            locks.lock(LockKey::Call("a".into())),
        )
        .await;
        assert!(waiting.is_err());
        drop(held);
        let _again = locks.lock(LockKey::Call("a".into())).await;
    }
}
