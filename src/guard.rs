//! Caps that keep one agent, or anyone who can reach a listener, from exhausting toolgate:
//! tunnels per agent, request-body bytes buffered per agent and in all, idle connections, failed
//! authentications per source, and how much a flood of refusals may write to the audit log.

use std::collections::HashMap;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::Guards;

/// Per-agent and global counters. Shared by every connection.
pub struct Caps {
    limits: Guards,
    tunnels: Arc<PerKey<String>>,
    buffered: Mutex<Buffered>,
    /// Connections per source address that no agent's `sources` holds.
    strangers: Arc<PerKey<IpAddr>>,
    /// The connection slots such sources may take, all together.
    strangers_share: Arc<Semaphore>,
    /// Proxy-listener connections per source address that have not yet authenticated.
    unauthenticated: Arc<PerKey<IpAddr>>,
}

/// How many proxy-listener connections one address may hold open before any of them has
/// authenticated (a request head that is still arriving, say). A client authenticates with its
/// first request, so an agent host's burst of new connections stays far below it, while one
/// address cannot hold the listener's connection slots with half-sent requests.
pub const UNAUTHENTICATED_PER_ADDRESS: usize = 64;

/// Open things counted per key (an agent's tunnels, an address's connections), each taken
/// under a cap and given back when its [`Counted`] drops.
pub struct PerKey<K: std::hash::Hash + Eq> {
    counts: Mutex<HashMap<K, usize>>,
}

impl<K: std::hash::Hash + Eq + Clone> PerKey<K> {
    fn new() -> Arc<PerKey<K>> {
        Arc::new(PerKey {
            counts: Mutex::default(),
        })
    }

    /// One more for `key`, or `None` when it holds `cap` already.
    fn take(self: &Arc<Self>, key: K, cap: usize) -> Option<Counted<K>> {
        let mut map = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(key.clone()).or_insert(0);
        if *n >= cap {
            return None;
        }
        *n += 1;
        Some(Counted {
            of: self.clone(),
            key,
        })
    }
}

/// One open thing of a key; the key's count drops with it.
pub struct Counted<K: std::hash::Hash + Eq> {
    of: Arc<PerKey<K>>,
    key: K,
}

impl<K: std::hash::Hash + Eq> Drop for Counted<K> {
    fn drop(&mut self) {
        let mut map = self.of.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.key);
            }
        }
    }
}

/// One open tunnel of an agent.
pub type TunnelSlot = Counted<String>;

/// A proxy-listener connection that has not authenticated yet: dropped when it does.
pub type UnauthenticatedSlot = Counted<IpAddr>;

#[derive(Default)]
struct Buffered {
    total: usize,
    per_agent: HashMap<String, usize>,
}

/// Which buffer cap a body ran into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exceeded {
    Agent(usize),
    Total(usize),
}

impl Caps {
    pub fn new(limits: Guards) -> Arc<Caps> {
        Arc::new(Caps {
            strangers_share: Arc::new(Semaphore::new(limits.unknown_sources_max())),
            limits,
            tunnels: PerKey::new(),
            buffered: Mutex::default(),
            strangers: PerKey::new(),
            unauthenticated: PerKey::new(),
        })
    }

    /// One of the `connections` (the global `--max-connections` slots) for a source address that
    /// no agent's `sources` holds, or `None` when that address holds its cap or such sources
    /// hold their share of the slots. Never waits: a stranger over its cap is turned away at
    /// once, and cannot keep agents from the slots they are kept.
    pub fn stranger(
        self: &Arc<Self>,
        ip: IpAddr,
        connections: &Arc<Semaphore>,
    ) -> Option<StrangerSlot> {
        let counted = self.strangers.take(
            ip.to_canonical(),
            self.limits.max_connections_per_unknown_source,
        )?;
        let share = self.strangers_share.clone().try_acquire_owned().ok()?;
        let slot = connections.clone().try_acquire_owned().ok()?;
        Some(StrangerSlot {
            _counted: counted,
            _share: share,
            _slot: slot,
        })
    }

    /// A proxy-listener connection from `ip` before it authenticates, or `None` when that
    /// address holds [`UNAUTHENTICATED_PER_ADDRESS`] such connections already.
    pub fn unauthenticated(&self, ip: IpAddr) -> Option<UnauthenticatedSlot> {
        self.unauthenticated
            .take(ip.to_canonical(), UNAUTHENTICATED_PER_ADDRESS)
    }

    /// A tunnel slot for `agent`, or `None` when it already holds its cap.
    pub fn tunnel(&self, agent: &str) -> Option<TunnelSlot> {
        self.tunnels
            .take(agent.to_string(), self.limits.max_connections_per_agent)
    }

    /// An empty reservation of body bytes for `agent`; it grows as the body arrives.
    pub fn body(self: &Arc<Self>, agent: &str) -> BodyReservation {
        BodyReservation {
            caps: self.clone(),
            agent: agent.to_string(),
            held: 0,
        }
    }

    /// Bytes buffered now (for /metrics).
    pub fn buffered_bytes(&self) -> usize {
        self.buffered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .total
    }
}

/// One open connection of a source address that no agent's `sources` holds; its slots are
/// released with it.
pub struct StrangerSlot {
    _counted: Counted<IpAddr>,
    _share: OwnedSemaphorePermit,
    _slot: OwnedSemaphorePermit,
}

/// Body bytes an agent's request holds in toolgate's memory; released when dropped.
pub struct BodyReservation {
    caps: Arc<Caps>,
    agent: String,
    held: usize,
}

impl BodyReservation {
    /// Reserves `n` more bytes, or says which cap they would pass (nothing is reserved then).
    pub fn grow(&mut self, n: usize) -> Result<(), Exceeded> {
        let limits = &self.caps.limits;
        let mut b = self.caps.buffered.lock().unwrap_or_else(|p| p.into_inner());
        let agent_now = b.per_agent.get(&self.agent).copied().unwrap_or(0);
        if agent_now + n > limits.max_buffered_per_agent {
            return Err(Exceeded::Agent(limits.max_buffered_per_agent));
        }
        if b.total + n > limits.max_buffered {
            return Err(Exceeded::Total(limits.max_buffered));
        }
        b.total += n;
        *b.per_agent.entry(self.agent.clone()).or_insert(0) += n;
        self.held += n;
        Ok(())
    }
}

impl Drop for BodyReservation {
    fn drop(&mut self) {
        if self.held == 0 {
            return;
        }
        let mut b = self.caps.buffered.lock().unwrap_or_else(|p| p.into_inner());
        b.total = b.total.saturating_sub(self.held);
        if let Some(n) = b.per_agent.get_mut(&self.agent) {
            *n = n.saturating_sub(self.held);
            if *n == 0 {
                b.per_agent.remove(&self.agent);
            }
        }
    }
}

/// When a connection last moved a byte, and how many requests it has in flight: a connection
/// with neither for the idle timeout is closed.
pub struct Activity {
    epoch: Instant,
    last_ms: AtomicU64,
    in_flight: AtomicUsize,
}

impl Activity {
    pub fn new() -> Arc<Activity> {
        Arc::new(Activity {
            epoch: Instant::now(),
            last_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
        })
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn touch(&self) {
        self.last_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// Marks a request in flight until the guard is dropped.
    pub fn request(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.touch();
        InFlight(self.clone())
    }

    /// Resolves once the connection has been idle for `timeout`.
    pub async fn idle(&self, timeout: Duration) {
        let step = (timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(5));
        loop {
            tokio::time::sleep(step).await;
            let quiet = self
                .now_ms()
                .saturating_sub(self.last_ms.load(Ordering::Relaxed));
            if self.in_flight.load(Ordering::Relaxed) == 0 && quiet >= timeout.as_millis() as u64 {
                return;
            }
        }
    }
}

/// A request in flight on a connection.
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An IO stream that records its activity.
pub struct Watched<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T> Watched<T> {
    pub fn new(inner: T, activity: Arc<Activity>) -> Self {
        activity.touch();
        Watched { inner, activity }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        res
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(res, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        res
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(res, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        res
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Counts events per source address in one-minute windows: failed authentications (to refuse
/// the next ones for a while) and refusals (to record a flood as one summary).
#[derive(Default)]
pub struct PerSource {
    windows: Mutex<HashMap<(IpAddr, &'static str), Window>>,
}

struct Window {
    started: Instant,
    count: u32,
}

const WINDOW: Duration = Duration::from_secs(60);

impl PerSource {
    /// Counts one event; returns how many this source had in the current window, this one
    /// included, and how many the previous window ended with when this one starts it.
    pub fn count(&self, ip: IpAddr, what: &'static str) -> (u32, Option<u32>) {
        let now = Instant::now();
        let mut map = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > 10_000 {
            map.retain(|_, w| now.duration_since(w.started) < WINDOW);
        }
        let w = map.entry((ip, what)).or_insert(Window {
            started: now,
            count: 0,
        });
        let mut ended = None;
        if now.duration_since(w.started) >= WINDOW {
            ended = Some(w.count);
            w.started = now;
            w.count = 0;
        }
        w.count += 1;
        (w.count, ended)
    }

    /// Seconds until a source that passed `max` in this window may try again, if it did.
    pub fn blocked(&self, ip: IpAddr, what: &'static str, max: u32) -> Option<u64> {
        let map = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let w = map.get(&(ip, what))?;
        let age = Instant::now().duration_since(w.started);
        (w.count >= max && age < WINDOW).then(|| (WINDOW - age).as_secs().max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Guards {
        Guards {
            max_connections_per_agent: 2,
            max_buffered_per_agent: 100,
            max_buffered: 150,
            ..Guards::default()
        }
    }

    #[test]
    fn tunnels_per_agent_are_capped_and_released() {
        let caps = Caps::new(limits());
        let a = caps.tunnel("a").unwrap();
        let _b = caps.tunnel("a").unwrap();
        assert!(caps.tunnel("a").is_none());
        assert!(caps.tunnel("other").is_some());
        drop(a);
        assert!(caps.tunnel("a").is_some());
    }

    #[test]
    fn body_bytes_are_capped_per_agent_and_in_all() {
        let caps = Caps::new(limits());
        let mut a = caps.body("a");
        a.grow(60).unwrap();
        assert_eq!(caps.body("a").grow(50), Err(Exceeded::Agent(100)));
        let mut b = caps.body("b");
        b.grow(80).unwrap();
        assert_eq!(caps.body("c").grow(20), Err(Exceeded::Total(150)));
        assert_eq!(caps.buffered_bytes(), 140);
        drop(a);
        drop(b);
        assert_eq!(caps.buffered_bytes(), 0);
        caps.body("c").grow(150).unwrap_err();
        caps.body("c").grow(100).unwrap();
    }

    #[test]
    fn strangers_are_capped_per_address_and_keep_off_the_agents_slots() {
        let limits = Guards {
            max_connections: 8,
            max_connections_per_unknown_source: 1,
            ..Guards::default()
        };
        let caps = Caps::new(limits);
        let connections = Arc::new(Semaphore::new(8));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let c: IpAddr = "10.0.0.3".parse().unwrap();
        let first = caps.stranger(a, &connections).unwrap();
        assert!(caps.stranger(a, &connections).is_none(), "one per address");
        let _second = caps.stranger(b, &connections).unwrap();
        assert!(
            caps.stranger(c, &connections).is_none(),
            "a quarter of the slots"
        );
        assert_eq!(
            connections.available_permits(),
            6,
            "the agents' six are free"
        );
        drop(first);
        assert_eq!(connections.available_permits(), 7);
        assert!(caps.stranger(a, &connections).is_some());
    }

    #[test]
    fn sources_are_counted_per_window() {
        let s = PerSource::default();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        for i in 1..=3 {
            assert_eq!(s.count(ip, "auth"), (i, None));
        }
        assert!(s.blocked(ip, "auth", 3).is_some());
        assert!(s.blocked(ip, "auth", 4).is_none());
        assert!(s.blocked(ip, "other", 1).is_none());
    }
}
