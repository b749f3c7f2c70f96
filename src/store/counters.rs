//! Rate-limit counters in memory: what one process needs (the limits of a single toolgate are
//! its own; a shared store counts across replicas).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::rules;
use super::{CounterStore, Result};

struct Bucket {
    tokens: f64,
    last: Instant,
}

#[derive(Default)]
pub struct MemoryCounters {
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl MemoryCounters {
    /// Takes a token at `now`, or returns how many whole seconds until one is available.
    pub fn take_at(
        &self,
        key: &str,
        capacity: u32,
        per: Duration,
        now: Instant,
    ) -> std::result::Result<(), u64> {
        let rule = rules::Bucket { capacity, per };
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if !buckets.contains_key(key) {
            buckets.insert(
                key.to_string(),
                Bucket {
                    tokens: rule.full(),
                    last: now,
                },
            );
        }
        let Some(bucket) = buckets.get_mut(key) else {
            return Ok(());
        };
        let (left, answer) = rule.take(bucket.tokens, now.saturating_duration_since(bucket.last));
        bucket.tokens = left;
        bucket.last = now;
        answer
    }
}

#[async_trait]
impl CounterStore for MemoryCounters {
    async fn take_token(
        &self,
        key: &str,
        capacity: u32,
        per: Duration,
    ) -> Result<std::result::Result<(), u64>> {
        Ok(self.take_at(key, capacity, per, Instant::now()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_refills_over_its_period() {
        let c = MemoryCounters::default();
        let t0 = Instant::now();
        let per = Duration::from_secs(60);
        assert_eq!(c.take_at("k", 2, per, t0), Ok(()));
        assert_eq!(c.take_at("k", 2, per, t0), Ok(()));
        assert_eq!(c.take_at("k", 2, per, t0), Err(30));
        assert_eq!(c.take_at("other", 2, per, t0), Ok(()));
        assert_eq!(c.take_at("k", 2, per, t0 + Duration::from_secs(30)), Ok(()));
    }
}
