//! Waiting for a condition instead of sleeping a fixed time: poll it, bounded, and fail naming
//! what never happened.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// How often a condition is polled.
const EVERY: Duration = Duration::from_millis(20);

/// Polls `probe` until it gives a value, for at most `within`; panics saying `what` did not
/// happen.
pub async fn until_some<T, F, Fut>(what: &str, within: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting until {what}"
        );
        tokio::time::sleep(EVERY).await;
    }
}

/// Polls `cond` until it holds, for at most `within`; panics saying `what` did not happen.
pub async fn until<F, Fut>(what: &str, within: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    until_some(what, within, || {
        let held = cond();
        async move { held.await.then_some(()) }
    })
    .await
}
