//! toolgate: a TLS-intercepting egress gateway that makes AI-agent tool calls safe to run in
//! production. See DESIGN.md for the outside interface; this crate is a library with a thin
//! binary so that tests can start the whole server in-process on ephemeral ports.

pub mod admin;
pub mod app;
pub mod approval;
pub mod audit;
pub mod base;
pub mod ca;
pub mod checks;
pub mod cli;
pub mod client;
pub mod commit;
pub mod config;
pub mod demo;
pub mod error;
pub mod grants;
pub mod graphql;
pub mod guard;
pub mod identity;
pub mod import;
pub mod ledger;
pub mod limits;
pub mod logging;
pub mod mcp;
pub mod mcp_pin;
pub mod metrics;
pub mod model;
pub mod notify;
pub mod orient;
pub mod policy;
pub mod proxy;
pub mod replay;
pub mod rollback;
pub mod sandbox;
pub mod services;
pub mod sink;
pub mod store;
pub mod sweep;
pub mod telemetry;
pub mod tls;
pub mod upstream;
pub mod verdict;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::store::Topic;

pub use app::{Console, Core, Gate, StartError};
pub use config::Config;

/// The listeners `run` serves on, bound by the caller (tests bind `127.0.0.1:0`).
pub struct Listeners {
    /// Agents' proxy in clear (`--listen`; `--listen none` leaves it out).
    pub proxy: Option<TcpListener>,
    /// Agents' proxy over TLS (`--listen-tls`), serving `Config::listen_tls`.
    pub proxy_tls: Option<TcpListener>,
    /// The page, the admin API, /metrics: over TLS when `Config::admin_tls` is set.
    pub admin: TcpListener,
    /// `/metrics` without a token, for a private scrape network (`--metrics-listen`).
    pub metrics: Option<TcpListener>,
    /// Connections the kernel redirected from an agent network (`--transparent-listen`).
    pub transparent: Option<TcpListener>,
}

/// The addresses toolgate listens on: a redirected connection to one of them is a loop.
fn own_addresses<const N: usize>(
    listeners: [Option<&TcpListener>; N],
) -> Vec<std::net::SocketAddr> {
    listeners
        .into_iter()
        .flatten()
        .filter_map(|l| l.local_addr().ok())
        .collect()
}

/// Starts the transparent listener (`--transparent-listen`).
fn serve_transparent(app: &Arc<Gate>, listener: TcpListener, own: Vec<std::net::SocketAddr>) {
    if !app.policy().has_sources() {
        warn!("--transparent-listen is set but no [[agent]] has sources: every redirected connection will be refused");
    }
    info!(transparent = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "transparent listener");
    tokio::spawn(proxy::transparent::accept_loop(app.clone(), listener, own));
}

/// On a shared store, what other replicas decide applies here at once when announced
/// (LISTEN/NOTIFY), and within a second in any case: kill switches are read again every second,
/// and a held call looks at its proposal every second (`approval`). Every two seconds, commits
/// left by a replica that died are turned into `outcome_unknown`.
async fn follow_replicas(app: Arc<Core>) {
    let mut heard = app.store().subscribe();
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    let mut abandoned = tokio::time::interval(std::time::Duration::from_secs(2));
    loop {
        let topic = tokio::select! {
            _ = app.cancel().cancelled() => break,
            _ = abandoned.tick() => {
                // A replica that died while sending leaves its commit: outcome unknown.
                let limit = app.in_flight_limit();
                if let Err(e) = approval::recover(app.store(), app.audit(), limit).await {
                    warn!(error = %e, "could not look for commits abandoned by other replicas");
                }
                continue;
            }
            _ = tick.tick() => None,
            Some(t) = async { heard.as_mut()?.recv().await } => Some(t),
        };
        match topic {
            Some(Topic::Token(id)) => app.principals().token_heard(&id),
            Some(Topic::Grants(agent)) => app.principals().grants_heard(&agent),
            Some(Topic::Proposal(id)) => app.waiters().heard(&id),
            Some(Topic::Kill) | None => {
                if let Err(e) = app.kill().refresh().await {
                    warn!(error = %e, "could not read the kill switches from the shared store");
                }
            }
        }
    }
}

/// How long requests closed at the end of the shutdown grace get to record themselves.
const ABANDON_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// What toolgate serves, once it serves: what the start-up lines people read are made of.
pub struct Serving<'a> {
    pub proxy: Option<std::net::SocketAddr>,
    pub proxy_tls: Option<std::net::SocketAddr>,
    pub admin: Option<std::net::SocketAddr>,
    pub metrics: Option<std::net::SocketAddr>,
    pub transparent: Option<std::net::SocketAddr>,
    pub config: &'a Config,
    pub policy: &'a policy::Policy,
}

impl<'a> Serving<'a> {
    fn of(listeners: &Listeners, config: &'a Config, policy: &'a policy::Policy) -> Serving<'a> {
        let addr = |l: Option<&TcpListener>| l.and_then(|l| l.local_addr().ok());
        Serving {
            proxy: addr(listeners.proxy.as_ref()),
            proxy_tls: addr(listeners.proxy_tls.as_ref()),
            admin: addr(Some(&listeners.admin)),
            metrics: addr(listeners.metrics.as_ref()),
            transparent: addr(listeners.transparent.as_ref()),
            config,
            policy,
        }
    }
}

/// Runs toolgate on already-bound listeners until `shutdown` resolves, then stops accepting and
/// gives in-flight requests `config.shutdown_grace` to finish.
pub async fn run(
    listeners: Listeners,
    config: Config,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), StartError> {
    run_with(listeners, config, shutdown, |_| {}).await
}

/// The configuration as the listeners serve it: a TLS proxy listener comes with its certificate,
/// and the admin URL (for webhook links) defaults to the admin listener's own address.
fn checked_config(listeners: &Listeners, mut config: Config) -> Result<Config, StartError> {
    if listeners.proxy_tls.is_some() != config.listen_tls.is_some() {
        return Err(StartError::Listeners(
            "the proxy's TLS listener (--listen-tls) and its certificate (--listen-tls-cert, \
             --listen-tls-key) go together: give both or neither"
                .into(),
        ));
    }
    if config.admin_url.is_empty() {
        if let Ok(addr) = listeners.admin.local_addr() {
            let scheme = match config.admin_tls.is_some() {
                true => "https",
                false => "http",
            };
            config.admin_url = format!("{scheme}://{addr}");
        }
    }
    Ok(config)
}

/// [`run`], calling `serving` once everything is loaded and the listeners are about to accept
/// (the command line prints where everything is).
pub async fn run_with(
    listeners: Listeners,
    config: Config,
    shutdown: impl Future<Output = ()> + Send,
    serving: impl FnOnce(&Serving<'_>) + Send,
) -> Result<(), StartError> {
    let config = checked_config(&listeners, config)?;
    let grace = config.shutdown_grace;
    let (gate, console) = app::start(config).await?;
    let core = gate.core().clone();
    approval::recover(core.store(), core.audit(), core.in_flight_limit()).await?;
    let policy = core.policy();
    let addr = |l: Option<&TcpListener>| {
        l.and_then(|l| l.local_addr().ok())
            .map(|a| a.to_string())
            .unwrap_or_else(|| "-".into())
    };
    info!(
        proxy = %addr(listeners.proxy.as_ref()),
        proxy_tls = %addr(listeners.proxy_tls.as_ref()),
        admin = %listeners.admin.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        tools = policy.tools().len(),
        files = policy.files.len(),
        "toolgate serving"
    );
    serving(&Serving::of(&listeners, core.config(), &policy));
    let own = own_addresses([
        listeners.proxy.as_ref(),
        listeners.proxy_tls.as_ref(),
        Some(&listeners.admin),
        listeners.metrics.as_ref(),
        listeners.transparent.as_ref(),
    ]);
    if let Some(transparent) = listeners.transparent {
        serve_transparent(&gate, transparent, own);
    }
    let admin = tokio::spawn(admin::serve(listeners.admin, console.clone()));
    if let Some(metrics) = listeners.metrics {
        tokio::spawn(admin::serve_metrics(metrics, console.clone()));
    }
    watch_certificates(&gate, &console);
    let background = [
        tokio::spawn(sweep::run(core.clone())),
        tokio::spawn(watch_policies(core.clone())),
    ];
    tokio::spawn(grants::watch_open(core.clone()));
    core.sinks().start(
        core.store().clone(),
        core.audit().clone(),
        core.cancel().clone(),
    );
    if core.store().shared() {
        tokio::spawn(follow_replicas(core.clone()));
    }
    accept(&gate, listeners.proxy, listeners.proxy_tls, shutdown).await;
    drop((gate, console));
    stop(&core, grace, admin, background).await;
    close(
        core,
        tokio::time::Instant::now() + std::time::Duration::from_secs(2),
    )
    .await;
    Ok(())
}

/// Accepts agents on the proxy's listeners, in clear and over TLS, until `shutdown` resolves.
async fn accept(
    gate: &Arc<Gate>,
    plain: Option<TcpListener>,
    tls: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send,
) {
    let stop = tokio_util::sync::CancellationToken::new();
    let mut loops = Vec::new();
    let served = gate.listen_tls().cloned();
    for (listener, tls) in [(plain, None), (tls, served)] {
        if let Some(listener) = listener {
            let stopped = stop.clone().cancelled_owned();
            loops.push(tokio::spawn(proxy::accept_loop(
                gate.clone(),
                listener,
                tls,
                stopped,
            )));
        }
    }
    shutdown.await;
    stop.cancel();
    for l in loops {
        let _ = l.await;
    }
}

/// Reads the listeners' certificate files again when they change (as often as the policies
/// are looked at), until shutdown.
fn watch_certificates(gate: &Gate, console: &Console) {
    let every = gate.config().reload_interval;
    for served in [gate.listen_tls(), console.admin_tls()]
        .into_iter()
        .flatten()
    {
        tokio::spawn(served.clone().watch(every, gate.cancel().clone()));
    }
}

/// Stops serving: no new connections, in-flight requests get `grace` to finish (then they are
/// closed and record themselves), and every queued audit event is written and flushed.
async fn stop(
    core: &Core,
    grace: std::time::Duration,
    admin: tokio::task::JoinHandle<()>,
    background: [tokio::task::JoinHandle<()>; 2],
) {
    info!("shutting down: no new connections; waiting for in-flight requests");
    let deadline = tokio::time::Instant::now() + grace;
    core.cancel().cancel();
    core.tasks().close();
    if tokio::time::timeout_at(deadline, core.tasks().wait())
        .await
        .is_err()
    {
        warn!(
            grace_s = grace.as_secs_f64(),
            "in-flight requests did not finish in time; closing them"
        );
        // Closed now rather than dropped with the runtime: their guards record them (marked
        // client_gone, or unfinished) while the audit log still takes events.
        core.abandon().cancel();
        let _ = tokio::time::timeout(ABANDON_WAIT, core.tasks().wait()).await;
    }
    if tokio::time::timeout_at(deadline, admin).await.is_err() {
        warn!("admin connections did not close within the grace period; closing them");
    }
    let _ = tokio::time::timeout_at(deadline, async {
        for task in background {
            let _ = task.await;
        }
    })
    .await;
    // Every queued audit event is written and flushed before the process goes: a graceful
    // stop loses none. Bounded, so a sick disk cannot hold the exit forever.
    if !core.audit().close(std::time::Duration::from_secs(30)).await {
        warn!("the audit log did not finish writing its queue in time");
    }
    // What was written is made durable once more; bounded, so a sick disk cannot hold the exit.
    if let Ok(Err(e)) =
        tokio::time::timeout(std::time::Duration::from_secs(5), core.store().flush()).await
    {
        warn!(error = %e, "the final flush failed");
    }
}

/// Lets go of the store when the last task using it is done (bounded by `deadline`), so that
/// the data dir can be opened again as soon as `run` returns. Every [`Gate`] and [`Console`]
/// holds the core: it is let go once they all are.
async fn close(core: Arc<Core>, deadline: tokio::time::Instant) {
    let mut core = core;
    loop {
        match Arc::try_unwrap(core) {
            Ok(c) => {
                // The audit writer and the flusher finish their queues and end here.
                let _ = tokio::task::spawn_blocking(move || drop(c)).await;
                return;
            }
            Err(still_shared) => {
                if tokio::time::Instant::now() >= deadline {
                    warn!("some tasks still hold the store at exit");
                    return;
                }
                core = still_shared;
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}

/// Reloads policies on SIGHUP and when the folder changes, until shutdown.
async fn watch_policies(app: Arc<Core>) {
    #[cfg(unix)]
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut tick = tokio::time::interval(app.config().reload_interval);
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
            _ = app.cancel().cancelled() => return,
            _ = hup_recv => {
                info!("SIGHUP: reloading policies");
                let _ = app.policies().reload();
            }
            _ = tick.tick() => app.policies().reload_if_changed(),
        }
    }
}
