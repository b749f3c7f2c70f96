//! Rate-limit counters in memory: what one process needs (the limits of a single toolgate are
//! its own; a shared store counts across replicas).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;

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
        let capacity = f64::from(capacity);
        let per_sec = capacity / per.as_secs_f64().max(f64::MIN_POSITIVE);
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if !buckets.contains_key(key) {
            buckets.insert(
                key.to_string(),
                Bucket {
                    tokens: capacity,
                    last: now,
                },
            );
        }
        let Some(bucket) = buckets.get_mut(key) else {
            return Ok(());
        };
        let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * per_sec).min(capacity);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - bucket.tokens) / per_sec;
            Err(wait.ceil().max(1.0) as u64)
        }
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
