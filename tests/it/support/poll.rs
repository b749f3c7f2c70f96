//! Waiting for a condition instead of sleeping a fixed time: poll it, bounded, and fail naming
//! what never happened.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// How often a condition is polled.
const EVERY: Duration = Duration::from_millis(20);

/// How long to wait for what takes milliseconds on an idle machine (an event written behind a
/// call, a reload, a listing catching up): generous, since the suite runs beside other builds.
pub const SOON: Duration = Duration::from_secs(15);

/// Polls `probe` until it gives a value, for at most `within`; panics saying `what` did not
/// happen.
pub async fn until_some<T, F, Fut>(what: &str, within: Duration, probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    match eventually(within, probe).await {
        Some(value) => value,
        None => panic!("timed out after {within:?} waiting until {what}"),
    }
}

/// Polls `probe` until it gives a value, for at most `within`; None when the time is up (for a
/// caller whose failure says more than what it waited for).
pub async fn eventually<T, F, Fut>(within: Duration, mut probe: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = probe().await {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
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
