//! Limits per agent per tool: rate limits (a token bucket that refills `count` tokens per
//! period) and budgets (a sum of a body field per period, kept in the store).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use crate::base::now_unix;
use crate::error::{Code, Refusal};
use crate::policy::{Budget, RateLimit, Tool};
use crate::store::Store;

struct Bucket {
    tokens: f64,
    last: Instant,
}

#[derive(Default)]
pub struct RateLimiter {
    buckets: Mutex<HashMap<(String, String), Bucket>>,
}

impl RateLimiter {
    /// Counts a call of `tool` by `agent` against the tool's rate limit, if it has one.
    pub(crate) fn admit(&self, agent: &str, tool: &Tool) -> Result<(), Refusal> {
        match &tool.rate_limit {
            Some(limit) => self
                .check(agent, &tool.name, limit)
                .map_err(|secs| rate_limited(tool, secs)),
            None => Ok(()),
        }
    }

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

/// The store key of an agent's budget for a tool in the current period.
fn budget_key(agent: &str, tool: &Tool, budget: &Budget) -> String {
    format!("{agent}\0{}\0{}", tool.name, budget.per.bucket(now_unix()))
}

fn budget_exceeded(tool: &Tool, agent: &str, used: f64, amount: f64) -> Refusal {
    let (field, max, per) = tool
        .budget
        .as_ref()
        .map(|b| (b.field.as_str(), b.max, b.per.as_str()))
        .unwrap_or(("?", 0.0, "?"));
    Refusal::policy(format!(
        "budget exceeded: tool {} allows a total {field} of {max} per {per} for agent {agent}; {used} is used and this call asks for {amount}",
        tool.name
    ))
}

/// Checks, without charging, that `amount` still fits the agent's budget (a proposal is
/// refused at once when it could never be committed).
pub(crate) fn check_budget(
    store: &Store,
    agent: &str,
    tool: &Tool,
    amount: Option<f64>,
) -> Result<(), Refusal> {
    let (Some(budget), Some(amount)) = (&tool.budget, amount) else {
        return Ok(());
    };
    let used = store
        .budget_get(&budget_key(agent, tool, budget))
        .map_err(|e| {
            Refusal::internal(format!(
                "the budget store is unavailable ({e}); nothing was sent"
            ))
        })?;
    if used + amount > budget.max {
        return Err(budget_exceeded(tool, agent, used, amount));
    }
    Ok(())
}

/// A charge to give back if the call does not take effect.
pub(crate) type Charge = Option<(String, f64)>;

/// Charges `amount` to the agent's budget, durably, or refuses the call.
pub(crate) async fn charge_budget(
    store: &Store,
    agent: &str,
    tool: &Tool,
    amount: Option<f64>,
) -> Result<Charge, Refusal> {
    let (Some(budget), Some(amount)) = (&tool.budget, amount) else {
        return Ok(None);
    };
    let key = budget_key(agent, tool, budget);
    match store.budget_add(&key, amount, budget.max).await {
        Ok(Ok(_)) => Ok(Some((key, amount))),
        Ok(Err(used)) => Err(budget_exceeded(tool, agent, used, amount)),
        Err(e) => Err(Refusal::internal(format!(
            "the budget store is unavailable ({e}); the call was not sent"
        ))),
    }
}

/// Gives a charge back (the call was not sent, or the upstream refused it).
pub(crate) async fn refund_budget(store: &Store, charge: Charge) {
    if let Some((key, amount)) = charge {
        if let Err(e) = store.budget_add(&key, -amount, f64::MAX).await {
            tracing::error!(error = %e, "could not give a budget charge back");
        }
    }
}

/// Admits a new proposal: the rate limit counts it, and its amount must fit the budget now.
pub(crate) fn admit_proposal(
    (limiter, store): (&RateLimiter, &Store),
    agent: &str,
    tool: &Tool,
    amount: Option<f64>,
) -> Result<(), Refusal> {
    limiter.admit(agent, tool)?;
    check_budget(store, agent, tool, amount)
}

fn rate_limited(tool: &Tool, secs: u64) -> Refusal {
    let mut r = Refusal::new(
        Code::RateLimited,
        format!(
            "rate limit of tool {} reached ({} per agent); retry after {secs}s",
            tool.name,
            tool.rate_limit
                .as_ref()
                .map(|l| l.text.as_str())
                .unwrap_or("")
        ),
    );
    r.retry_after = Some(secs);
    r
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
