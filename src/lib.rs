//! toolgate: a TLS-intercepting egress gateway that makes AI-agent tool calls safe to run in
//! production. See DESIGN.md for the outside interface; this crate is a library with a thin
//! binary so that tests can start the whole server in-process on ephemeral ports.

pub mod admin;
pub mod approval;
pub mod audit;
pub mod base;
pub mod ca;
pub mod checks;
pub mod cli;
pub mod commit;
pub mod config;
pub mod error;
pub mod guard;
pub mod ledger;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod model;
pub mod notify;
pub mod policy;
pub mod proxy;
pub mod replay;
pub mod rollback;
pub mod store;
pub mod sweep;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

pub use config::Config;
use policy::Policy;
use proxy::upstream::{Routes, Upstream};

/// The listeners `run` serves on, bound by the caller (tests bind `127.0.0.1:0`).
pub struct Listeners {
    pub proxy: TcpListener,
    pub admin: TcpListener,
    /// `/metrics` without a token, for a private scrape network (`--metrics-listen`).
    pub metrics: Option<TcpListener>,
}

/// toolgate could not start. Nothing was served.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("policies: {0}")]
    Policy(#[from] policy::PolicyError),
    #[error("CA: {0}")]
    Ca(#[from] ca::CaError),
    #[error("upstream: {0}")]
    Upstream(#[from] proxy::upstream::UpstreamSetupError),
    #[error("{0}")]
    Store(#[from] store::StoreError),
    #[error("--upstream-ca {path}: {message}")]
    UpstreamCa { path: String, message: String },
}

/// The state shared by every connection.
pub struct Gate {
    pub(crate) config: Config,
    policy: RwLock<Arc<Policy>>,
    pub(crate) ca: ca::CertAuthority,
    pub(crate) upstream: Upstream,
    pub(crate) cancel: CancellationToken,
    pub(crate) tasks: TaskTracker,
    pub(crate) store: store::Store,
    pub(crate) limiter: limits::RateLimiter,
    pub(crate) idem_locks: store::KeyedLocks,
    /// Thrown kill switches (`tool:NAME`, `agent:ID`), mirrored from the store for the hot path.
    kill: RwLock<HashMap<String, store::KillSwitch>>,
    /// The fingerprint of the policy folder the policy in force was loaded from.
    policy_fingerprint: std::sync::Mutex<u64>,
    pub(crate) waiters: approval::Waiters,
    pub(crate) webhook: Arc<notify::WebhookClient>,
    pub(crate) sessions: admin::Sessions,
    pub audit: Arc<audit::Audit>,
    pub(crate) metrics: metrics::Metrics,
    /// Per-agent and global caps (tunnels, buffered bodies).
    pub(crate) caps: Arc<guard::Caps>,
    /// Client connections open at once.
    pub(crate) connections: Arc<tokio::sync::Semaphore>,
    /// Refusals and failed authentications per source address.
    pub(crate) sources: guard::PerSource,
}

impl Gate {
    /// Loads everything `serve` needs, failing before anything is served.
    pub fn new(config: Config) -> Result<Gate, StartError> {
        // One crypto provider, passed explicitly everywhere.
        let provider: Arc<CryptoProvider> = Arc::new(rustls::crypto::ring::default_provider());
        let policy_fingerprint = fingerprint(&config.policies_dir);
        let policy = Policy::load_dir(&config.policies_dir)?;
        let store = store::Store::open(&config.data_dir)?;
        let kill = store.kill_switches()?.into_iter().collect();
        let audit = Arc::new(audit::Audit::open(&store)?);
        audit.redactor.set_secrets(policy.secrets());
        let ca = ca::CertAuthority::load_or_init(&config.certs_dir, provider.clone())?;
        let mut extra_roots = Vec::new();
        for path in &config.upstream_ca {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<Result<_, _>>())
                .map_err(|e| StartError::UpstreamCa {
                    path: path.display().to_string(),
                    message: e.to_string(),
                })?;
            if certs.is_empty() {
                return Err(StartError::UpstreamCa {
                    path: path.display().to_string(),
                    message: "no PEM certificates in the file".into(),
                });
            }
            extra_roots.extend(certs);
        }
        let routes = Arc::new(Routes::new(config.connect_to.clone()));
        let webhook = {
            let mut roots = rustls::RootCertStore::empty();
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            for der in &extra_roots {
                roots
                    .add(der.clone())
                    .map_err(proxy::upstream::UpstreamSetupError::Tls)?;
            }
            let tls = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(proxy::upstream::UpstreamSetupError::Tls)?
                .with_root_certificates(roots)
                .with_no_client_auth();
            Arc::new(notify::client(tls))
        };
        let upstream = Upstream::new(provider, routes, &extra_roots, config.upstream_timeout)?;
        let caps = guard::Caps::new(config.guards.clone());
        let connections = Arc::new(tokio::sync::Semaphore::new(config.guards.max_connections));
        Ok(Gate {
            caps,
            connections,
            sources: guard::PerSource::default(),
            config,
            policy: RwLock::new(Arc::new(policy)),
            ca,
            upstream,
            cancel: CancellationToken::new(),
            tasks: TaskTracker::new(),
            store,
            limiter: limits::RateLimiter::default(),
            idem_locks: store::KeyedLocks::default(),
            kill: RwLock::new(kill),
            policy_fingerprint: std::sync::Mutex::new(policy_fingerprint),
            waiters: approval::Waiters::default(),
            webhook,
            sessions: admin::Sessions::default(),
            audit,
            metrics: metrics::Metrics::default(),
        })
    }

    /// The kill switch thrown for `key` (`tool:NAME` or `agent:ID`), if any.
    pub fn kill_switch(&self, key: &str) -> Option<store::KillSwitch> {
        self.kill
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned()
    }

    /// All thrown kill switches.
    pub fn kill_switches(&self) -> HashMap<String, store::KillSwitch> {
        self.kill.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Throws or resets a kill switch: durable first, then in force for the very next request.
    pub async fn set_kill_switch(
        &self,
        key: &str,
        value: Option<store::KillSwitch>,
    ) -> Result<(), store::StoreError> {
        self.store.kill_set(key, value.as_ref()).await?;
        let (state, by, reason) = match &value {
            Some(k) => ("disabled", k.by.clone(), k.reason.clone()),
            None => ("enabled", String::new(), String::new()),
        };
        self.audit.record(audit::Record {
            kind: "kill_switch",
            payload: serde_json::json!({"target": key, "state": state, "by": by, "reason": reason}),
            ..Default::default()
        });
        let mut kill = self.kill.write().unwrap_or_else(|p| p.into_inner());
        match value {
            Some(v) => {
                kill.insert(key.to_string(), v);
            }
            None => {
                kill.remove(key);
            }
        }
        Ok(())
    }

    /// Loads the policy folder again. The new set replaces the old one whole; if it fails to
    /// load, the old one stays in force and the reason is returned (and logged).
    pub fn reload(&self) -> Result<(), policy::PolicyError> {
        let print = fingerprint(&self.config.policies_dir);
        match Policy::load_dir(&self.config.policies_dir) {
            Ok(new) => {
                let tools = new.tools().len();
                self.audit.redactor.set_secrets(new.secrets());
                self.audit.record(audit::Record {
                    kind: "policy_reload",
                    payload: serde_json::json!({"result": "loaded", "tools": tools}),
                    ..Default::default()
                });
                *self.policy.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(new);
                *self
                    .policy_fingerprint
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = print;
                info!(tools, "policies reloaded");
                Ok(())
            }
            Err(e) => {
                // Remember the broken set's fingerprint so it is not retried every tick.
                *self
                    .policy_fingerprint
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = print;
                warn!(error = %e, "policy reload failed; the previous policies stay in force");
                self.audit.record(audit::Record {
                    kind: "policy_reload",
                    payload: serde_json::json!({"result": "refused; the previous policies stay in force", "error": e.to_string()}),
                    ..Default::default()
                });
                Err(e)
            }
        }
    }

    /// Reloads when any file under the policy folder changed since the last load.
    fn reload_if_changed(&self) {
        let print = fingerprint(&self.config.policies_dir);
        let last = *self
            .policy_fingerprint
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if print != last {
            let _ = self.reload();
        }
    }

    /// The policy set in force now.
    pub fn policy(&self) -> Arc<Policy> {
        // A poisoned lock still holds a complete policy: writers only swap an Arc.
        self.policy
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Runs toolgate on already-bound listeners until `shutdown` resolves, then stops accepting and
/// gives in-flight requests `config.shutdown_grace` to finish.
pub async fn run(
    listeners: Listeners,
    config: Config,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), StartError> {
    let grace = config.shutdown_grace;
    let mut config = config;
    if config.admin_url.is_empty() {
        if let Ok(addr) = listeners.admin.local_addr() {
            config.admin_url = format!("http://{addr}");
        }
    }
    let gate = Arc::new(Gate::new(config)?);
    approval::recover(&gate.store, &gate.audit).await?;
    let policy = gate.policy();
    info!(
        proxy = %listeners.proxy.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        admin = %listeners.admin.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        tools = policy.tools().len(),
        files = policy.files.len(),
        "toolgate serving"
    );
    let admin = tokio::spawn(admin::serve(listeners.admin, gate.clone()));
    if let Some(metrics) = listeners.metrics {
        tokio::spawn(admin::serve_metrics(metrics, gate.clone()));
    }
    let sweeper = tokio::spawn(sweep::run(gate.clone()));
    let watcher = tokio::spawn(watch_policies(gate.clone()));
    proxy::accept_loop(gate.clone(), listeners.proxy, shutdown).await;

    info!("shutting down: no new connections; waiting for in-flight requests");
    let deadline = tokio::time::Instant::now() + grace;
    gate.cancel.cancel();
    gate.tasks.close();
    if tokio::time::timeout_at(deadline, gate.tasks.wait())
        .await
        .is_err()
    {
        warn!(
            grace_s = grace.as_secs_f64(),
            "in-flight requests did not finish in time; closing them"
        );
    }
    if tokio::time::timeout_at(deadline, admin).await.is_err() {
        warn!("admin connections did not close within the grace period; closing them");
    }
    // What was written is made durable once more; bounded, so a sick disk cannot hold the exit.
    if let Ok(Err(e)) =
        tokio::time::timeout(std::time::Duration::from_secs(5), gate.store.flush()).await
    {
        warn!(error = %e, "the final flush failed");
    }
    let _ = tokio::time::timeout_at(deadline, async {
        let _ = watcher.await;
        let _ = sweeper.await;
    })
    .await;
    close(
        gate,
        tokio::time::Instant::now() + std::time::Duration::from_secs(2),
    )
    .await;
    Ok(())
}

/// Lets go of the store when the last task using it is done (bounded by `deadline`), so that
/// the data dir can be opened again as soon as `run` returns.
async fn close(gate: Arc<Gate>, deadline: tokio::time::Instant) {
    let mut gate = gate;
    loop {
        match Arc::try_unwrap(gate) {
            Ok(g) => {
                // The audit writer and the flusher finish their queues and end here.
                let _ = tokio::task::spawn_blocking(move || drop(g)).await;
                return;
            }
            Err(still_shared) => {
                if tokio::time::Instant::now() >= deadline {
                    warn!("some tasks still hold the store at exit");
                    return;
                }
                gate = still_shared;
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}

/// A cheap fingerprint of every file under `dir` (names, sizes, modification times), so that an
/// edit to a policy, a schema or a secret file triggers a reload.
fn fingerprint(dir: &std::path::Path) -> u64 {
    use std::hash::{Hash, Hasher};
    fn walk(
        dir: &std::path::Path,
        out: &mut Vec<(std::path::PathBuf, u64, Option<std::time::SystemTime>)>,
    ) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            // Follow symlinks: mounted config maps swap a symlink on update.
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            if meta.is_dir() {
                walk(&path, out);
            } else {
                out.push((path, meta.len(), meta.modified().ok()));
            }
        }
    }
    let mut files = Vec::new();
    walk(dir, &mut files);
    files.sort();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    files.hash(&mut h);
    h.finish()
}

/// Reloads policies on SIGHUP and when the folder changes, until shutdown.
async fn watch_policies(gate: Arc<Gate>) {
    #[cfg(unix)]
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut tick = tokio::time::interval(gate.config.reload_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        #[cfg(unix)]
        let hup_recv = async {
            match hup.as_mut() {
                Some(h) => {
                    h.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let hup_recv = std::future::pending::<()>();
        tokio::select! {
            _ = gate.cancel.cancelled() => return,
            _ = hup_recv => {
                info!("SIGHUP: reloading policies");
                let _ = gate.reload();
            }
            _ = tick.tick() => gate.reload_if_changed(),
        }
    }
}
