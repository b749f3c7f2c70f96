//! The rules every store applies, written once over plain data: retention cut-offs, the
//! token-bucket arithmetic of rate limits, the budget check, which tokens and sessions are
//! past their time, and when a grant ends or is open. The sled store calls them on the records
//! it reads; the PostgreSQL store calls them where it computes in Rust, and its SQL says the
//! same (`WHERE at < $cut`, `expires_unix <= $now`, `ended_unix IS NULL`) where the database
//! must decide in the statement that writes.

use std::time::Duration;

use crate::model::{AgentToken, Grant, GrantEnd, Session};

/// How long a grant's record is kept after it ended (its events stay in the audit log).
pub const ENDED_GRANT_KEEP_SECS: u64 = 30 * 24 * 3600;

/// Where a retention window that keeps `keep` (in the unit of `now`) before `now` begins:
/// records stamped before it go.
pub fn retention_cut(now: u64, keep: u64) -> u64 {
    now.saturating_sub(keep)
}

/// Whether a record stamped `at` is past a retention cut (a record at the cut stays).
pub fn before_cut(at: u64, cut: u64) -> bool {
    at < cut
}

/// The cut before which ended grants are dropped.
pub fn ended_grant_cut(now: u64) -> u64 {
    retention_cut(now, ENDED_GRANT_KEEP_SECS)
}

/// Whether a grant ended before `cut` (a grant that has not ended is kept).
pub fn grant_ended_before(g: &Grant, cut: u64) -> bool {
    g.ended.as_ref().is_some_and(|e| before_cut(e.at_unix, cut))
}

/// Whether a grant has not ended and is `agent`'s (any agent's when None).
pub fn grant_open(g: &Grant, agent: Option<&str>) -> bool {
    g.ended.is_none() && agent.is_none_or(|a| g.agent == a)
}

/// The grant ended by `end`, or None when it has ended already: only the first end counts.
pub fn end_grant(mut g: Grant, end: GrantEnd) -> Option<Grant> {
    if g.ended.is_some() {
        return None;
    }
    g.ended = Some(end);
    Some(g)
}

/// Whether a token is listed at `now`: not yet expired (revoked ones included).
pub fn token_unexpired(t: &AgentToken, now: u64) -> bool {
    t.expires_unix > now
}

/// Whether a session is past its time at `now`.
pub fn session_expired(s: &Session, now: u64) -> bool {
    s.expires_unix <= now
}

/// Adds `amount` to a budget's `current` total unless the sum would pass `max`: the new total,
/// or `Err(current)` (refused; the total stays).
pub fn budget_add(current: f64, amount: f64, max: f64) -> Result<f64, f64> {
    if current + amount > max {
        Err(current)
    } else {
        Ok(current + amount)
    }
}

/// A token bucket of `capacity` tokens that refills `capacity` per `per`.
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    pub capacity: u32,
    pub per: Duration,
}

impl Bucket {
    /// The tokens of a bucket seen for the first time: full.
    pub fn full(self) -> f64 {
        f64::from(self.capacity)
    }

    /// Refills `tokens` for `elapsed`, then takes one: the tokens left, and `Ok` or the whole
    /// seconds (at least one) until a token is free.
    pub fn take(self, tokens: f64, elapsed: Duration) -> (f64, Result<(), u64>) {
        let capacity = self.full();
        let per_sec = capacity / self.per.as_secs_f64().max(f64::MIN_POSITIVE);
        let tokens = (tokens + elapsed.as_secs_f64() * per_sec).min(capacity);
        if tokens >= 1.0 {
            (tokens - 1.0, Ok(()))
        } else {
            let wait = (1.0 - tokens) / per_sec;
            (tokens, Err(wait.ceil().max(1.0) as u64))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn grant(agent: &str, ended_at: Option<u64>) -> Grant {
        Grant {
            id: "g".into(),
            agent: agent.into(),
            tool: "t".into(),
            granted_by: "carol".into(),
            reason: "r".into(),
            created_unix: 1,
            until_unix: 100,
            ended: ended_at.map(|at_unix| GrantEnd {
                how: "revoked".into(),
                by: "carol".into(),
                at_unix,
            }),
        }
    }

    #[test]
    fn retention_keeps_what_is_at_or_after_the_cut() {
        assert_eq!(retention_cut(100, 30), 70);
        assert_eq!(retention_cut(10, 30), 0);
        assert!(before_cut(69, 70));
        assert!(!before_cut(70, 70));
        assert_eq!(ended_grant_cut(ENDED_GRANT_KEEP_SECS + 5), 5);
    }

    #[test]
    fn grants_end_once_and_are_open_until_then() {
        let open = grant("bot", None);
        assert!(grant_open(&open, None));
        assert!(grant_open(&open, Some("bot")));
        assert!(!grant_open(&open, Some("other")));
        assert!(!grant_ended_before(&open, u64::MAX));
        let end = GrantEnd {
            how: "expired".into(),
            by: "toolgate".into(),
            at_unix: 50,
        };
        let ended = end_grant(open, end.clone()).unwrap();
        assert_eq!(ended.ended.as_ref(), Some(&end));
        assert!(!grant_open(&ended, None));
        assert!(end_grant(ended.clone(), end).is_none());
        assert!(grant_ended_before(&ended, 51));
        assert!(!grant_ended_before(&ended, 50));
        assert!(!grant_ended_before(&grant("bot", Some(60)), 60));
    }

    #[test]
    fn tokens_and_sessions_are_past_their_time_at_their_expiry() {
        let token = AgentToken {
            id: "t".into(),
            agent: "bot".into(),
            job: None,
            sha256: "h".into(),
            issued_by: "carol".into(),
            issued_unix: 0,
            expires_unix: 10,
            revoked: true,
            user: None,
        };
        assert!(token_unexpired(&token, 9));
        assert!(!token_unexpired(&token, 10));
        let session = Session {
            approver: "carol".into(),
            reviewer: false,
            csrf: "c".into(),
            expires_unix: 10,
            groups: Vec::new(),
            via: None,
        };
        assert!(!session_expired(&session, 9));
        assert!(session_expired(&session, 10));
    }

    #[test]
    fn budgets_refuse_past_the_max_and_keep_their_total() {
        assert_eq!(budget_add(0.0, 300.0, 500.0), Ok(300.0));
        assert_eq!(budget_add(300.0, 300.0, 500.0), Err(300.0));
        assert_eq!(budget_add(300.0, 200.0, 500.0), Ok(500.0));
    }

    #[test]
    fn a_bucket_refills_over_its_period() {
        let b = Bucket {
            capacity: 2,
            per: Duration::from_secs(60),
        };
        let (t, ok) = b.take(b.full(), Duration::ZERO);
        assert_eq!((t, ok), (1.0, Ok(())));
        let (t, ok) = b.take(t, Duration::ZERO);
        assert_eq!((t, ok), (0.0, Ok(())));
        assert_eq!(b.take(t, Duration::ZERO), (0.0, Err(30)));
        assert_eq!(b.take(t, Duration::from_secs(30)).1, Ok(()));
    }

    proptest! {
        #[test]
        fn a_budget_never_passes_its_max(
            current in 0.0f64..1e6, amount in 0.0f64..1e6, max in 0.0f64..2e6,
        ) {
            match budget_add(current, amount, max) {
                Ok(total) => prop_assert!(total <= max && total == current + amount),
                Err(kept) => prop_assert!(kept == current && current + amount > max),
            }
        }

        #[test]
        fn a_bucket_stays_within_its_capacity_and_waits_at_least_a_second(
            capacity in 1u32..1000, per_ms in 1u64..100_000_000,
            tokens in 0.0f64..1000.0, elapsed_ms in 0u64..100_000_000,
        ) {
            let b = Bucket { capacity, per: Duration::from_millis(per_ms) };
            let start = tokens.min(b.full());
            let (left, answer) = b.take(start, Duration::from_millis(elapsed_ms));
            prop_assert!(left >= 0.0 && left <= b.full());
            match answer {
                Ok(()) => prop_assert!(left <= b.full() - 1.0),
                Err(wait) => prop_assert!(wait >= 1 && left < 1.0),
            }
        }

        #[test]
        fn a_full_bucket_gives_its_capacity_at_once(capacity in 1u32..200, per_s in 1u64..86_400) {
            let b = Bucket { capacity, per: Duration::from_secs(per_s) };
            let mut tokens = b.full();
            for _ in 0..capacity {
                let (left, answer) = b.take(tokens, Duration::ZERO);
                prop_assert_eq!(answer, Ok(()));
                tokens = left;
            }
            prop_assert!(b.take(tokens, Duration::ZERO).1.is_err());
        }
    }
}
