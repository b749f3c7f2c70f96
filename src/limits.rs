//! Limits per agent per tool: rate limits (a token bucket that refills `count` tokens per
//! period) and budgets (a sum of a body field per period, kept in the store).

use std::sync::Arc;

use crate::base::now_unix;
use crate::error::{Code, Refusal};
use crate::policy::{Budget, Tool};
use crate::store::{CounterStore, Store};

/// Rate limits per agent per tool, counted in the store's counters.
pub struct RateLimiter {
    counters: Arc<dyn CounterStore>,
}

impl RateLimiter {
    pub fn new(counters: Arc<dyn CounterStore>) -> Self {
        RateLimiter { counters }
    }

    /// Counts a call of `tool` by `agent` against the tool's rate limit, if it has one. A
    /// counter store that cannot answer refuses the call (nothing is sent).
    pub(crate) async fn admit(&self, agent: &str, tool: &Tool) -> Result<(), Refusal> {
        let Some(limit) = &tool.rate_limit else {
            return Ok(());
        };
        let key = format!("{agent}\0{}", tool.name);
        match self.counters.take_token(&key, limit.count, limit.per).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(secs)) => Err(rate_limited(tool, secs)),
            Err(e) => Err(Refusal::internal(format!(
                "the rate-limit store is unavailable ({e}); nothing was sent"
            ))),
        }
    }
}

/// The store key of an agent's budget for a tool in the current period.
fn budget_key(agent: &str, tool: &Tool, budget: &Budget) -> String {
    format!("{agent}\0{}\0{}", tool.name, budget.per.bucket(now_unix()))
}

pub(crate) fn budget_exceeded(tool: &Tool, agent: &str, used: f64, amount: f64) -> Refusal {
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
pub(crate) async fn check_budget(
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
        .await
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
pub(crate) async fn admit_proposal(
    limiter: &RateLimiter,
    store: &Store,
    agent: &str,
    tool: &Tool,
    amount: Option<f64>,
) -> Result<(), Refusal> {
    limiter.admit(agent, tool).await?;
    check_budget(store, agent, tool, amount).await
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

    #[tokio::test]
    async fn a_rate_limit_counts_per_agent_and_refuses_with_the_wait() {
        let policy = crate::policy::for_tests(
            r#"
[[tool]]
name = "t"
host = "api.example.test"
method = "GET"
path = "/t"
rate_limit = "2/minute"

[[tool]]
name = "free"
host = "api.example.test"
method = "GET"
path = "/free"
"#,
        );
        let (tool, free) = (policy.tool("t").unwrap(), policy.tool("free").unwrap());
        let rl = RateLimiter::new(Arc::new(crate::store::MemoryCounters::default()));
        assert!(rl.admit("a", tool).await.is_ok());
        assert!(rl.admit("a", tool).await.is_ok());
        let refused = rl.admit("a", tool).await.unwrap_err();
        assert_eq!(refused.code, Code::RateLimited);
        assert!(
            matches!(refused.retry_after, Some(29..=30)),
            "{:?}",
            refused.retry_after
        );
        assert!(rl.admit("b", tool).await.is_ok());
        // A tool without a limit is never counted.
        for _ in 0..5 {
            assert!(rl.admit("a", free).await.is_ok());
        }
    }
}
