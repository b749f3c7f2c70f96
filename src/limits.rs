//! Rate limits per agent per tool: a token bucket that refills `count` tokens per period.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use crate::policy::RateLimit;

struct Bucket {
    tokens: f64,
    last: Instant,
}

#[derive(Default)]
pub struct RateLimiter {
    buckets: Mutex<HashMap<(String, String), Bucket>>,
}

impl RateLimiter {
    /// Takes a token, or returns how many whole seconds until one is available.
    pub fn check(&self, agent: &str, tool: &str, limit: &RateLimit) -> Result<(), u64> {
        self.check_at(agent, tool, limit, Instant::now())
    }

    fn check_at(
        &self,
        agent: &str,
        tool: &str,
        limit: &RateLimit,
        now: Instant,
    ) -> Result<(), u64> {
        let capacity = f64::from(limit.count);
        let per_sec = capacity / limit.per.as_secs_f64();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let bucket = buckets
            .entry((agent.to_string(), tool.to_string()))
            .or_insert(Bucket {
                tokens: capacity,
                last: now,
            });
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn allows_the_count_then_refuses_until_refilled() {
        let limit = crate::policy::parse_rate("2/minute").unwrap();
        let rl = RateLimiter::default();
        let t0 = Instant::now();
        assert!(rl.check_at("a", "t", &limit, t0).is_ok());
        assert!(rl.check_at("a", "t", &limit, t0).is_ok());
        let wait = rl.check_at("a", "t", &limit, t0).unwrap_err();
        assert!((29..=30).contains(&wait), "{wait}");
        // Another agent has its own bucket.
        assert!(rl.check_at("b", "t", &limit, t0).is_ok());
        assert!(rl
            .check_at("a", "t", &limit, t0 + Duration::from_secs(31))
            .is_ok());
    }
}
