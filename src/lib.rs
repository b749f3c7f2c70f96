//! toolgate: a TLS-intercepting egress gateway that makes AI-agent tool calls safe to run in
//! production. See DESIGN.md for the outside interface; this crate is a library with a thin
//! binary so that tests can start the whole server in-process on ephemeral ports.

pub mod admin;
pub mod ca;
pub mod cli;
pub mod config;
pub mod error;
pub mod logging;
pub mod policy;
pub mod proxy;

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
}

impl Gate {
    /// Loads everything `serve` needs, failing before anything is served.
    pub fn new(config: Config) -> Result<Gate, StartError> {
        // One crypto provider, passed explicitly everywhere.
        let provider: Arc<CryptoProvider> = Arc::new(rustls::crypto::ring::default_provider());
        let policy = Policy::load_dir(&config.policies_dir)?;
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
        let upstream = Upstream::new(provider, routes, &extra_roots, config.upstream_timeout)?;
        Ok(Gate {
            config,
            policy: RwLock::new(Arc::new(policy)),
            ca,
            upstream,
            cancel: CancellationToken::new(),
            tasks: TaskTracker::new(),
        })
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
    let gate = Arc::new(Gate::new(config)?);
    let policy = gate.policy();
    info!(
        proxy = %listeners.proxy.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        admin = %listeners.admin.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        tools = policy.tools().len(),
        files = policy.files.len(),
        "toolgate serving"
    );
    let admin = tokio::spawn(admin::serve(listeners.admin, gate.clone()));
    proxy::accept_loop(gate.clone(), listeners.proxy, shutdown).await;

    info!("shutting down: no new connections; waiting for in-flight requests");
    gate.cancel.cancel();
    gate.tasks.close();
    if tokio::time::timeout(grace, gate.tasks.wait())
        .await
        .is_err()
    {
        warn!(
            grace_s = grace.as_secs_f64(),
            "in-flight requests did not finish in time; closing them"
        );
    }
    let _ = admin.await;
    Ok(())
}
