//! Identity providers' keys fetched from their `jwks_uri` (`jwks_url`), kept fresh: fetched on
//! first use, again after [`FRESH_FOR`], and at once when an assertion names a key id the
//! cached set lacks (the provider rotated) — at most once per [`REFETCH_GAP`], so assertions
//! naming made-up key ids cannot make toolgate fetch on every call. A fetch that fails
//! keeps the cached set for up to [`STALE_FOR`]; past that, or with nothing cached, assertions
//! from the provider are refused: toolgate never takes an assertion it could not verify.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{header, Request};
use http_body_util::BodyExt;
use jsonwebtoken::jwk::JwkSet;

use crate::base::body::full;
use crate::policy::identity_def::parse_jwks;
use crate::upstream::Upstream;

/// How long fetched keys are used before they are fetched again.
const FRESH_FOR: Duration = Duration::from_secs(600);
/// The shortest time between two fetches for an unknown key id.
const REFETCH_GAP: Duration = Duration::from_secs(30);
/// How long cached keys still verify when the provider cannot be reached.
const STALE_FOR: Duration = Duration::from_secs(24 * 3600);
/// The largest JWKS read.
const MAX_JWKS: usize = 1024 * 1024;

struct Cached {
    set: Arc<JwkSet>,
    fetched: Instant,
    /// When a key id the set lacked last made toolgate fetch it again.
    missed: Option<Instant>,
}

/// The keys of every provider whose keys are fetched, by URL.
#[derive(Default)]
pub struct Jwks {
    cache: Mutex<HashMap<String, Cached>>,
    /// One fetch at a time: requests that find the keys stale wait for it, not beside it.
    fetching: tokio::sync::Mutex<()>,
}

impl Jwks {
    /// The keys of `provider` (its file's, or its `jwks_uri`'s), fresh enough to verify a token
    /// naming `kid`: what the proxy's assertions and the page's sign-in both verify with.
    pub async fn of(
        &self,
        upstream: &Upstream,
        provider: &crate::policy::IdentityProvider,
        kid: Option<&str>,
    ) -> Result<Arc<JwkSet>, String> {
        match &provider.keys {
            crate::policy::JwksSource::File(set) => Ok(set.clone()),
            crate::policy::JwksSource::Url { host, port, path } => {
                self.keys(upstream, (host, *port, path), kid).await
            }
        }
    }

    /// The keys at `https://host:port/path`, fresh enough to verify an assertion naming `kid`.
    pub async fn keys(
        &self,
        upstream: &Upstream,
        (host, port, path): (&str, u16, &str),
        kid: Option<&str>,
    ) -> Result<Arc<JwkSet>, String> {
        let url = format!("https://{}{path}", crate::base::authority(host, port));
        if let Some(set) = self.usable(&url, kid) {
            return Ok(set);
        }
        let _one = self.fetching.lock().await;
        // Another request may have fetched them while this one waited.
        if let Some(set) = self.usable(&url, kid) {
            return Ok(set);
        }
        let missed = self.lock().get(&url).is_some_and(|c| c.fresh());
        match fetch(upstream, host, port, path).await {
            Ok(set) => {
                let set = Arc::new(set);
                let cached = Cached {
                    set: set.clone(),
                    fetched: Instant::now(),
                    missed: missed.then(Instant::now),
                };
                self.lock().insert(url, cached);
                Ok(set)
            }
            Err(why) => match self.lock().get(&url) {
                Some(c) if c.fetched.elapsed() < STALE_FOR => {
                    tracing::warn!(url, error = %why, "identity provider keys could not be fetched; using the cached ones");
                    Ok(c.set.clone())
                }
                _ => Err(format!(
                    "its provider's keys could not be fetched from {url} ({why})"
                )),
            },
        }
    }

    /// The cached keys, if fresh and (when a key id is named) holding it, or fetched again
    /// lately for a key id they lacked (then the assertion is refused with them).
    fn usable(&self, url: &str, kid: Option<&str>) -> Option<Arc<JwkSet>> {
        let cache = self.lock();
        let c = cache.get(url)?;
        let knows = kid.is_none_or(|k| c.set.find(k).is_some());
        let missed_lately = c.missed.is_some_and(|t| t.elapsed() < REFETCH_GAP);
        (c.fresh() && (knows || missed_lately)).then(|| c.set.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Cached>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Cached {
    fn fresh(&self) -> bool {
        self.fetched.elapsed() < FRESH_FOR
    }
}

/// GETs the JWKS through the upstream client (its egress rules and trust apply).
async fn fetch(upstream: &Upstream, host: &str, port: u16, path: &str) -> Result<JwkSet, String> {
    let mut req = Request::new(full(bytes::Bytes::new()));
    *req.uri_mut() = path.parse().map_err(|_| "a bad path".to_string())?;
    req.headers_mut().insert(
        header::ACCEPT,
        http::HeaderValue::from_static("application/json"),
    );
    let resp = upstream
        .forward(host, port, req)
        .await
        .map_err(|f| f.refusal.message)?;
    if !resp.status().is_success() {
        return Err(format!("it answered {}", resp.status()));
    }
    let body = http_body_util::Limited::new(resp.into_body(), MAX_JWKS)
        .collect()
        .await
        .map_err(|e| format!("its answer could not be read: {e}"))?
        .to_bytes();
    parse_jwks(&body)
}
