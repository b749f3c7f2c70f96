//! The composition root: builds every service from the configuration, once, and hands the
//! listeners their handles: the proxy's [`Gate`] and the admin listener's [`Console`], over the
//! [`Core`] they share. Modules above take the narrowest handle they need; every handle and
//! service keeps its own state private.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::audit::Audit;
use crate::ca::CertAuthority;
use crate::config::Config;
use crate::guard::{Caps, PerSource};
use crate::limits::RateLimiter;
use crate::metrics::Metrics;
use crate::notify::Notifier;
use crate::policy::Policy;
use crate::services::{KeyedLocks, KillSwitches, Policies, Sessions, Waiters};
use crate::store::Store;
use crate::tls::Served;
use crate::upstream::{Routes, Upstream, UpstreamSetupError};

/// toolgate could not start. Nothing was served.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("policies: {0}")]
    Policy(#[from] crate::policy::PolicyError),
    #[error("CA: {0}")]
    Ca(#[from] crate::ca::CaError),
    #[error("upstream: {0}")]
    Upstream(#[from] UpstreamSetupError),
    #[error("{0}")]
    Store(#[from] crate::store::StoreError),
    #[error("--upstream-ca {path}: {message}")]
    UpstreamCa { path: String, message: String },
    #[error("{0}")]
    Tls(#[from] crate::tls::TlsError),
    /// The listeners and the configuration disagree (a TLS listener without its certificate).
    #[error("{0}")]
    Listeners(String),
}

/// What every part of toolgate that acts on a call shares: the configuration, the policy in
/// force, the store and the audit log, the upstream client, and the services that own state
/// (locks, kill switches, waiters, notifications, limits, tokens and grants as the request path
/// reads them, metrics, per-address counts), with the process's lifetime (shutdown, tasks).
/// `commit`, `approval`, `grants`, `replay` and `sweep` take it; the proxy's [`Gate`] and the
/// admin listener's [`Console`] hold it.
pub struct Core {
    config: Config,
    policies: Policies,
    store: Store,
    audit: Arc<Audit>,
    upstream: Upstream,
    locks: KeyedLocks,
    kill: KillSwitches,
    waiters: Waiters,
    notifier: Notifier,
    limiter: RateLimiter,
    principals: crate::services::Principals,
    /// Identity providers' keys fetched from their `jwks_uri`.
    jwks: crate::services::Jwks,
    /// People's OAuth connections (sealed in the store).
    vault: crate::services::Vault,
    /// The tool calls models lately asked of each agent.
    model_asks: Arc<crate::services::ModelAsks>,
    metrics: Metrics,
    /// The audit sinks (`--audit-sink`).
    sinks: crate::sink::Sinks,
    sources: PerSource,
    cancel: CancellationToken,
    abandon: CancellationToken,
    tasks: TaskTracker,
}

impl Core {
    /// Loads the store, the audit log, the policies and the kill switches, and builds the
    /// services on them, failing before anything is served.
    async fn new(config: Config, tls: rustls::ClientConfig) -> Result<Core, StartError> {
        let store = crate::store::open_configured(
            config.database_url.as_deref(),
            &config.data_dir,
            &config.certs_dir,
        )
        .await?;
        let audit = Arc::new(Audit::open_with(
            &store,
            crate::audit::Options {
                write_delay: config.guards.audit_write_delay,
                queue: config.guards.audit_queue,
            },
        )?);
        let policies = Policies::load(&config.policies_dir, audit.clone())?;
        let kill = KillSwitches::load(store.clone(), audit.clone()).await?;
        let tasks = TaskTracker::new();
        let notifier = Notifier::new(
            tls.clone(),
            config.webhook.clone(),
            config.admin_url.clone(),
            tasks.clone(),
        );
        let routes = Arc::new(Routes::new(config.connect_to.clone()));
        let sinks =
            crate::sink::Sinks::new(&config.audit_sinks, tls.clone(), config.audit_sink_max_lag);
        Ok(Core {
            upstream: Upstream::new(tls, routes, config.upstream_timeout),
            limiter: RateLimiter::new(store.clone()),
            locks: KeyedLocks::default(),
            waiters: Waiters::new(&store),
            principals: crate::services::Principals::new(&store),
            jwks: crate::services::Jwks::default(),
            vault: crate::services::Vault::new(store.clone(), audit.clone()),
            model_asks: Arc::new(crate::services::ModelAsks::new(config.model_join_window)),
            metrics: Metrics::with_traces(config.traces.clone()),
            sinks,
            sources: PerSource::default(),
            cancel: CancellationToken::new(),
            abandon: CancellationToken::new(),
            config,
            policies,
            tasks,
            store,
            audit,
            kill,
            notifier,
        })
    }

    /// The policy set in force now.
    pub fn policy(&self) -> Arc<Policy> {
        self.policies.current()
    }

    /// The longest a send can take: a proposal `committing` for longer was abandoned.
    pub fn in_flight_limit(&self) -> std::time::Duration {
        self.config.upstream_timeout
            + self.config.shutdown_grace
            + std::time::Duration::from_secs(60)
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The policy set in force and its reload.
    pub fn policies(&self) -> &Policies {
        &self.policies
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn audit(&self) -> &Arc<Audit> {
        &self.audit
    }

    /// The audit sinks.
    pub fn sinks(&self) -> &crate::sink::Sinks {
        &self.sinks
    }

    pub fn upstream(&self) -> &Upstream {
        &self.upstream
    }

    pub fn locks(&self) -> &KeyedLocks {
        &self.locks
    }

    pub fn kill(&self) -> &KillSwitches {
        &self.kill
    }

    pub fn waiters(&self) -> &Waiters {
        &self.waiters
    }

    pub fn notifier(&self) -> &Notifier {
        &self.notifier
    }

    pub fn limiter(&self) -> &RateLimiter {
        &self.limiter
    }

    /// Issued tokens and grants as the request path reads them (fresh within a second).
    pub fn principals(&self) -> &crate::services::Principals {
        &self.principals
    }

    /// Identity providers' keys fetched from their `jwks_uri`.
    pub fn jwks(&self) -> &crate::services::Jwks {
        &self.jwks
    }

    /// People's OAuth connections.
    pub fn vault(&self) -> &crate::services::Vault {
        &self.vault
    }

    /// The tool calls models lately asked of each agent.
    pub fn model_asks(&self) -> &Arc<crate::services::ModelAsks> {
        &self.model_asks
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Refusals and failed authentications per source address.
    pub fn sources(&self) -> &PerSource {
        &self.sources
    }

    /// Cancelled at shutdown; long waits select on it.
    pub fn cancel(&self) -> &CancellationToken {
        &self.cancel
    }

    /// Cancelled when the shutdown grace is over: connections still open are closed and
    /// upstream exchanges still running are ended, so that their requests' guards record them
    /// before the audit log closes.
    pub fn abandon(&self) -> &CancellationToken {
        &self.abandon
    }

    /// Request and background tasks that shutdown waits for.
    pub fn tasks(&self) -> &TaskTracker {
        &self.tasks
    }
}

/// The proxy's handle: the [`Core`], and what only the listeners that take agents' calls use
/// (the CA that mints leaves, the connection caps, what MCP servers listed and who opened their
/// sessions).
pub struct Gate {
    core: Arc<Core>,
    ca: CertAuthority,
    /// Per-agent and global caps (tunnels, buffered bodies).
    caps: Arc<Caps>,
    /// Client connections open at once.
    connections: Arc<tokio::sync::Semaphore>,
    /// What MCP servers last listed for their pinned tools.
    pins: crate::services::Pins,
    /// Which agent opened each MCP session.
    mcp_sessions: crate::services::McpSessions,
    /// The proxy's TLS listener's certificate (`--listen-tls-cert/-key`).
    listen_tls: Option<Arc<Served>>,
}

impl std::ops::Deref for Gate {
    type Target = Core;

    fn deref(&self) -> &Core {
        &self.core
    }
}

impl Gate {
    /// The core, for what outlives a request (an approval's commit, a watch).
    pub fn core(&self) -> &Arc<Core> {
        &self.core
    }

    pub fn ca(&self) -> &CertAuthority {
        &self.ca
    }

    pub fn caps(&self) -> &Arc<Caps> {
        &self.caps
    }

    pub fn connections(&self) -> &Arc<tokio::sync::Semaphore> {
        &self.connections
    }

    pub fn pins(&self) -> &crate::services::Pins {
        &self.pins
    }

    pub fn mcp_sessions(&self) -> &crate::services::McpSessions {
        &self.mcp_sessions
    }

    /// The certificate the proxy's TLS listener serves, when it has one.
    pub fn listen_tls(&self) -> Option<&Arc<Served>> {
        self.listen_tls.as_ref()
    }
}

/// The admin listener's handle: the [`Core`], the page's sessions, and the [`Gate`] an undo
/// goes through (an undo is a call toolgate sends through every phase of the proxy).
pub struct Console {
    gate: Arc<Gate>,
    sessions: Sessions,
    /// Sign-ins through identity providers under way, and the providers' endpoints.
    oidc: crate::services::oidc::Oidc,
    /// The admin listener's certificate (`--admin-tls-cert/-key`), also `--metrics-listen`'s.
    admin_tls: Option<Arc<Served>>,
}

impl std::ops::Deref for Console {
    type Target = Core;

    fn deref(&self) -> &Core {
        &self.gate.core
    }
}

impl Console {
    /// The core, for what outlives a request.
    pub fn core(&self) -> &Arc<Core> {
        &self.gate.core
    }

    /// The proxy's handle, for the calls toolgate sends itself (undos).
    pub fn gate(&self) -> &Arc<Gate> {
        &self.gate
    }

    /// The approvers' and reviewers' page sessions.
    pub fn sessions(&self) -> &Sessions {
        &self.sessions
    }

    /// The page's sign-ins through identity providers.
    pub fn oidc(&self) -> &crate::services::oidc::Oidc {
        &self.oidc
    }

    /// The certificate the admin listener serves, when it serves TLS.
    pub fn admin_tls(&self) -> Option<&Arc<Served>> {
        self.admin_tls.as_ref()
    }
}

/// Loads everything the listeners need, failing before anything is served: the proxy's
/// [`Gate`] and the admin listener's [`Console`], over one [`Core`].
pub async fn start(config: Config) -> Result<(Arc<Gate>, Arc<Console>), StartError> {
    // One crypto provider, passed explicitly everywhere.
    let provider: Arc<CryptoProvider> = Arc::new(rustls::crypto::ring::default_provider());
    let ca = CertAuthority::load_or_init(&config.certs_dir, provider.clone())?;
    // The proxy's TLS listener speaks HTTP/1.1 to agents (CONNECT and absolute form); the
    // admin listener too.
    let served = |flag, files: &Option<crate::config::TlsFiles>| {
        files
            .as_ref()
            .map(|f| Served::load(flag, &f.cert, &f.key, provider.clone(), &[b"http/1.1"]))
            .transpose()
            .map(|s| s.map(Arc::new))
    };
    let listen_tls = served("--listen-tls-cert", &config.listen_tls)?;
    let admin_tls = served("--admin-tls-cert", &config.admin_tls)?;
    let tls = crate::upstream::client_tls(provider, &read_roots(&config.upstream_ca)?)?;
    let guards = config.guards.clone();
    let core = Arc::new(Core::new(config, tls).await?);
    let gate = Arc::new(Gate {
        caps: Caps::new(guards.clone()),
        connections: Arc::new(tokio::sync::Semaphore::new(guards.max_connections)),
        pins: crate::services::Pins::default(),
        mcp_sessions: crate::services::McpSessions::default(),
        listen_tls,
        ca,
        core,
    });
    let console = Arc::new(Console {
        sessions: Sessions::new(gate.store().clone(), gate.config().session_ttl),
        oidc: Default::default(),
        gate: gate.clone(),
        admin_tls,
    });
    Ok((gate, console))
}

/// The certificates of every `--upstream-ca` file.
pub fn read_roots(
    paths: &[std::path::PathBuf],
) -> Result<Vec<CertificateDer<'static>>, StartError> {
    let mut roots = Vec::new();
    for path in paths {
        let failed = |message: String| StartError::UpstreamCa {
            path: path.display().to_string(),
            message,
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .and_then(|it| it.collect::<Result<_, _>>())
            .map_err(|e| failed(e.to_string()))?;
        if certs.is_empty() {
            return Err(failed("no PEM certificates in the file".into()));
        }
        roots.extend(certs);
    }
    Ok(roots)
}
