//! The composition root: builds every service from the configuration, once, and hands the
//! result to the listeners. Modules above take `&App` and use the services they need; each
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
}

/// The services every connection shares.
pub struct App {
    pub(crate) config: Config,
    /// The policy set in force and its reload.
    pub(crate) policies: Policies,
    pub(crate) ca: CertAuthority,
    pub(crate) upstream: Upstream,
    /// Cancelled at shutdown; long waits select on it.
    pub(crate) cancel: CancellationToken,
    /// Cancelled when the shutdown grace is over: connections still open are closed and
    /// upstream exchanges still running are ended, so that their requests' guards record them
    /// before the audit log closes.
    pub(crate) abandon: CancellationToken,
    /// Request and background tasks that shutdown waits for.
    pub(crate) tasks: TaskTracker,
    pub(crate) store: Store,
    pub(crate) audit: Arc<Audit>,
    pub(crate) limiter: RateLimiter,
    pub(crate) locks: KeyedLocks,
    pub(crate) kill: KillSwitches,
    pub(crate) waiters: Waiters,
    pub(crate) notifier: Notifier,
    pub(crate) sessions: Sessions,
    pub(crate) metrics: Metrics,
    /// Per-agent and global caps (tunnels, buffered bodies).
    pub(crate) caps: Arc<Caps>,
    /// Client connections open at once.
    pub(crate) connections: Arc<tokio::sync::Semaphore>,
    /// Refusals and failed authentications per source address.
    pub(crate) sources: PerSource,
    /// What MCP servers last listed for their pinned tools.
    pub(crate) pins: crate::services::Pins,
    /// Which agent opened each MCP session.
    pub(crate) mcp_sessions: crate::services::McpSessions,
    /// Issued tokens and grants as the request path reads them (fresh within a second).
    pub(crate) principals: crate::services::Principals,
}

impl App {
    /// The longest a send can take: a proposal `committing` for longer was abandoned.
    pub fn in_flight_limit(&self) -> std::time::Duration {
        self.config.upstream_timeout
            + self.config.shutdown_grace
            + std::time::Duration::from_secs(60)
    }

    /// Loads everything the listeners need, failing before anything is served.
    pub async fn new(config: Config) -> Result<App, StartError> {
        // One crypto provider, passed explicitly everywhere.
        let provider: Arc<CryptoProvider> = Arc::new(rustls::crypto::ring::default_provider());
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
        let ca = CertAuthority::load_or_init(&config.certs_dir, provider.clone())?;
        let tls = crate::upstream::client_tls(provider, &read_roots(&config.upstream_ca)?)?;
        let tasks = TaskTracker::new();
        let notifier = Notifier::new(
            tls.clone(),
            config.webhook.clone(),
            config.admin_url.clone(),
            tasks.clone(),
        );
        let routes = Arc::new(Routes::new(config.connect_to.clone()));
        Ok(App {
            upstream: Upstream::new(tls, routes, config.upstream_timeout),
            caps: Caps::new(config.guards.clone()),
            connections: Arc::new(tokio::sync::Semaphore::new(config.guards.max_connections)),
            sources: PerSource::default(),
            pins: crate::services::Pins::default(),
            mcp_sessions: crate::services::McpSessions::default(),
            limiter: RateLimiter::new(store.clone()),
            sessions: Sessions::new(store.clone()),
            locks: KeyedLocks::default(),
            waiters: Waiters::new(&store),
            principals: crate::services::Principals::new(&store),
            metrics: Metrics::default(),
            cancel: CancellationToken::new(),
            abandon: CancellationToken::new(),
            config,
            policies,
            ca,
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
