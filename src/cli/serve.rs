//! `toolgate serve` and `toolgate demo`: the flags turned into a [`Config`], the listeners bound,
//! the server run until Ctrl-C or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::config::{env, parse_duration, Config};
use crate::telemetry::Telemetry;

use super::fail;

#[derive(Debug, clap::Args)]
/// The flags of `serve` and `demo`.
pub struct ServeArgs {
    /// Where agents connect in clear (HTTPS_PROXY=http://…); `none` turns this listener off
    /// (with --listen-tls, agents then reach toolgate over TLS only).
    #[arg(long, env = env::LISTEN, default_value = "127.0.0.1:8080", value_parser = parse_listen)]
    pub listen: Listen,
    /// Where agents connect over TLS (HTTPS_PROXY=https://…), with --listen-tls-cert and
    /// --listen-tls-key. Default 127.0.0.1:8443 once a certificate is given.
    #[arg(long, env = env::LISTEN_TLS)]
    pub listen_tls: Option<SocketAddr>,
    /// The proxy's TLS certificate chain (PEM, leaf first); read again when it changes.
    #[arg(long, env = env::LISTEN_TLS_CERT, requires = "listen_tls_key")]
    pub listen_tls_cert: Option<PathBuf>,
    /// The private key of --listen-tls-cert (PEM); read again when it changes.
    #[arg(long, env = env::LISTEN_TLS_KEY, requires = "listen_tls_cert")]
    pub listen_tls_key: Option<PathBuf>,
    /// The admin listener's (and --metrics-listen's) TLS certificate chain (PEM, leaf first):
    /// the page, the API and /metrics are then served over HTTPS only.
    #[arg(long, env = env::ADMIN_TLS_CERT, requires = "admin_tls_key")]
    pub admin_tls_cert: Option<PathBuf>,
    /// The private key of --admin-tls-cert (PEM).
    #[arg(long, env = env::ADMIN_TLS_KEY, requires = "admin_tls_cert")]
    pub admin_tls_key: Option<PathBuf>,
    /// Proxies (CIDRs or addresses) whose connections to the admin listener may name the client
    /// in --client-ip-header (for the sign-in rate limit and what records who asked). Repeatable;
    /// in the environment variable, separate several with commas. None by default.
    #[arg(long = "trusted-proxies", env = env::TRUSTED_PROXIES, value_delimiter = ',', num_args = 1..)]
    pub trusted_proxies: Vec<String>,
    /// The header the trusted proxies name the client in: x-forwarded-for or forwarded (RFC
    /// 7239). Only this one is read: the other would be the client's own words.
    #[arg(long, env = env::CLIENT_IP_HEADER, default_value = "x-forwarded-for")]
    pub client_ip_header: String,
    /// How approvers and reviewers sign in to the page: token (a pasted token), oidc (an
    /// [[identity_provider]] with login), or both. The API and the CLI take bearer tokens
    /// whatever this says.
    #[arg(long, env = env::PAGE_LOGIN, default_value = "both")]
    pub page_login: String,
    /// How long a page session lasts (sign-out ends it sooner).
    #[arg(long, env = env::SESSION_TTL, default_value = "12h")]
    pub session_ttl: String,
    /// How long a tool call a model asked for (in an answer through toolgate) waits to be
    /// joined to the agent's call that carries it out (at most 24h).
    #[arg(long, env = env::MODEL_JOIN_WINDOW, default_value = "10m")]
    pub model_join_window: String,
    /// The approvers' page, the admin API, /metrics and /healthz.
    #[arg(long, env = env::ADMIN_LISTEN, default_value = "127.0.0.1:8081")]
    pub admin_listen: SocketAddr,
    #[arg(long, env = env::POLICIES, default_value = "./policies")]
    pub policies: PathBuf,
    #[arg(long, env = env::DATA_DIR, default_value = "./data")]
    pub data_dir: PathBuf,
    #[arg(long, env = env::CERTS, default_value = "./certs")]
    pub certs: PathBuf,
    /// Route HOST:PORT to ADDR:PORT instead of DNS (tests, sandboxes). Repeatable; in the
    /// environment variable, separate several with commas.
    #[arg(long = "connect-to", env = env::CONNECT_TO, value_delimiter = ',')]
    pub connect_to: Vec<String>,
    /// Extra PEM roots trusted for upstream TLS, on top of the webpki roots. Repeatable.
    #[arg(long = "upstream-ca", env = env::UPSTREAM_CA, value_delimiter = ',')]
    pub upstream_ca: Vec<PathBuf>,
    /// How long an upstream may take to start answering (e.g. 30s).
    #[arg(long, env = env::UPSTREAM_TIMEOUT, default_value = "30s")]
    pub upstream_timeout: String,
    /// How long in-flight requests get to finish on SIGTERM or Ctrl-C.
    #[arg(long, env = env::SHUTDOWN_GRACE, default_value = "10s")]
    pub shutdown_grace: String,
    /// How often the policy folder is checked for changes (SIGHUP reloads at once).
    #[arg(long, env = env::RELOAD_INTERVAL, default_value = "2s")]
    pub reload_interval: String,
    /// A webhook (Slack-compatible JSON) for every new proposal; a tool's approval.webhook wins.
    #[arg(long, env = env::WEBHOOK)]
    pub webhook: Option<String>,
    /// The approvers' page as approvers reach it, for links in notifications.
    #[arg(long, env = env::ADMIN_URL)]
    pub admin_url: Option<String>,
    /// How long a request body may take to arrive whole (408 validation_error after).
    #[arg(long, env = env::BODY_READ_TIMEOUT, default_value = "30s")]
    pub body_read_timeout: String,
    /// A connection or tunnel with no traffic and no request in flight is closed after this.
    #[arg(long, env = env::IDLE_TIMEOUT, default_value = "120s")]
    pub idle_timeout: String,
    /// Client connections open at once, all agents together.
    #[arg(long, env = env::MAX_CONNECTIONS, default_value_t = 4096)]
    pub max_connections: usize,
    /// Tunnels one agent may hold open at once (429 rate_limited beyond).
    #[arg(long, env = env::MAX_CONNECTIONS_PER_AGENT, default_value_t = 256)]
    pub max_connections_per_agent: usize,
    /// Connections one address that no agent's `sources` holds may have open on the transparent
    /// listener (such addresses together: a quarter of --max-connections); more are closed.
    #[arg(long, env = env::MAX_CONNECTIONS_PER_UNKNOWN_SOURCE, default_value_t = 4)]
    pub max_connections_per_unknown_source: usize,
    /// Concurrent HTTP/2 streams per tunnel.
    #[arg(long, env = env::MAX_STREAMS, default_value_t = 64)]
    pub max_streams: u32,
    /// Request-body bytes one agent may have in toolgate's buffers at once.
    #[arg(long, env = env::MAX_BUFFERED_PER_AGENT, default_value = "64MiB")]
    pub max_buffered_per_agent: String,
    /// Request-body bytes buffered at once, all agents together.
    #[arg(long, env = env::MAX_BUFFERED, default_value = "512MiB")]
    pub max_buffered: String,
    /// Idempotency records are removed after this.
    #[arg(long, env = env::IDEMPOTENCY_RETENTION, default_value = "48h")]
    pub idempotency_retention: String,
    /// Finished proposals are removed after this.
    #[arg(long, env = env::PROPOSAL_RETENTION, default_value = "30d")]
    pub proposal_retention: String,
    /// Rollback-ledger entries are removed after this (they can no longer be undone).
    #[arg(long, env = env::LEDGER_RETENTION, default_value = "90d")]
    pub ledger_retention: String,
    /// `toolgate_store_alarm` on /metrics turns 1 when the store passes this size.
    #[arg(long, env = env::STORE_ALARM, default_value = "8GiB")]
    pub store_alarm: String,
    /// `audit purge` never removes events younger than this.
    #[arg(long, env = env::AUDIT_RETENTION_MIN, default_value = "30d")]
    pub audit_retention_min: String,
    /// Purge audit events older than this in the background (off unless set; at least
    /// --audit-retention-min).
    #[arg(long, env = env::AUDIT_RETENTION)]
    pub audit_retention: Option<String>,
    /// Also serve /metrics without a token on this address (a private scrape network).
    #[arg(long, env = env::METRICS_LISTEN)]
    pub metrics_listen: Option<SocketAddr>,
    /// Keep all shared state in PostgreSQL (replicas on one database act as one gateway)
    /// instead of sled in --data-dir: postgres://USER[:PASS]@HOST:PORT/DB.
    #[arg(long, env = env::DATABASE_URL)]
    pub database_url: Option<String>,
    /// Accept connections the kernel redirected from an agent network (nftables/iptables
    /// REDIRECT or DNAT of ports 443 and 80) on this address; agents are known by `sources`.
    #[arg(long, env = env::TRANSPARENT_LISTEN)]
    pub transparent_listen: Option<SocketAddr>,
    /// Export a trace span per call over OTLP/HTTP to this collector (its base URL;
    /// `/v1/traces` is added). The other standard OTEL_* variables apply (headers, service
    /// name, sampler). Off unless set.
    #[arg(long, env = crate::telemetry::env::OTLP_ENDPOINT)]
    pub otlp_endpoint: Option<String>,
    /// A link from a request's page to its trace: a URL with `{trace_id}` (and `{request_id}`),
    /// e.g. `https://grafana.example/explore?traceId={trace_id}`.
    #[arg(long, env = env::TRACE_URL_TEMPLATE)]
    pub trace_url_template: Option<String>,
    /// Stream every audit event as OCSF to this receiver, from a durable cursor: http(s)://…
    /// (?format=jsonl|hec|elastic), syslog+tcp://HOST:PORT, syslog+tls://HOST:PORT or
    /// file:///path. Repeatable; in the environment variable, separate several with commas.
    #[arg(long = "audit-sink", env = env::AUDIT_SINK, value_delimiter = ',')]
    pub audit_sink: Vec<String>,
    /// The environment variable that holds the HTTP sinks' bearer token.
    #[arg(long, env = env::AUDIT_SINK_TOKEN_ENV)]
    pub audit_sink_token_env: Option<String>,
    /// A sink this many events behind raises toolgate_store_alarm (as a full disk does).
    #[arg(long, env = env::AUDIT_SINK_MAX_LAG, default_value_t = 100_000)]
    pub audit_sink_max_lag: u64,
}

/// `--listen`: an address, or `none`.
#[derive(Debug, Clone, Copy)]
pub struct Listen(pub Option<SocketAddr>);

fn parse_listen(value: &str) -> Result<Listen, String> {
    if value.trim().eq_ignore_ascii_case("none") {
        return Ok(Listen(None));
    }
    value
        .trim()
        .parse()
        .map(|a| Listen(Some(a)))
        .map_err(|e| format!("{e}: expected ADDR:PORT, or none"))
}

/// The default address of the proxy's TLS listener.
const LISTEN_TLS_DEFAULT: &str = "127.0.0.1:8443";

impl ServeArgs {
    /// The TLS listener's address: `--listen-tls`, or its default once a certificate is given.
    fn listen_tls_addr(&self) -> Option<SocketAddr> {
        match (self.listen_tls, &self.listen_tls_cert) {
            (Some(addr), _) => Some(addr),
            (None, Some(_)) => LISTEN_TLS_DEFAULT.parse().ok(),
            (None, None) => None,
        }
    }

    /// The TLS flags into the configuration.
    fn tls_config(&self, config: &mut Config) -> Result<(), String> {
        let pair = |cert: &Option<PathBuf>, key: &Option<PathBuf>| match (cert, key) {
            (Some(cert), Some(key)) => Some(crate::config::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            }),
            _ => None,
        };
        config.listen_tls = pair(&self.listen_tls_cert, &self.listen_tls_key);
        config.admin_tls = pair(&self.admin_tls_cert, &self.admin_tls_key);
        if self.listen_tls.is_some() && config.listen_tls.is_none() {
            return Err(
                "--listen-tls needs --listen-tls-cert FILE and --listen-tls-key FILE".into(),
            );
        }
        if self.listen.0.is_none()
            && config.listen_tls.is_none()
            && self.transparent_listen.is_none()
        {
            return Err("--listen none leaves agents no way in: add --listen-tls with its certificate (or --transparent-listen), or give --listen an address".into());
        }
        let header = crate::config::ClientIpHeader::parse(&self.client_ip_header)?;
        config.trusted_proxies =
            crate::config::TrustedProxies::parse(&self.trusted_proxies, header)?;
        config.page_login = crate::config::PageLogin::parse(&self.page_login)?;
        config.session_ttl = flag_duration("session-ttl", &self.session_ttl)?;
        if config.session_ttl.is_zero() {
            return Err("--session-ttl must be longer than 0s".into());
        }
        config.model_join_window = flag_duration("model-join-window", &self.model_join_window)?;
        if config.model_join_window.is_zero() || config.model_join_window.as_secs() > 24 * 3600 {
            return Err("--model-join-window must be longer than 0s and at most 24h".into());
        }
        if let Some(url) = &self.admin_url {
            if !(url.is_empty() || url.starts_with("http://") || url.starts_with("https://")) {
                return Err(format!(
                    "--admin-url {url:?}: expected an http:// or https:// URL"
                ));
            }
        }
        Ok(())
    }
}

fn flag_duration(flag: &str, value: &str) -> Result<std::time::Duration, String> {
    parse_duration(value).map_err(|e| format!("--{flag}: {e}"))
}

fn flag_size(flag: &str, value: &str) -> Result<u64, String> {
    crate::base::parse_size(value).map_err(|e| format!("--{flag}: {e}"))
}

impl ServeArgs {
    /// Validates the flags into a [`Config`].
    pub fn config(&self) -> Result<Config, String> {
        let mut config = Config::new(
            self.policies.clone(),
            self.data_dir.clone(),
            self.certs.clone(),
        );
        for spec in &self.connect_to {
            config.add_connect_to(spec)?;
        }
        config.database_url = self.database_url.clone().filter(|u| !u.is_empty());
        config.upstream_ca = self.upstream_ca.clone();
        config.upstream_timeout = parse_duration(&self.upstream_timeout)
            .map_err(|e| format!("--upstream-timeout: {e}"))?;
        config.shutdown_grace =
            parse_duration(&self.shutdown_grace).map_err(|e| format!("--shutdown-grace: {e}"))?;
        config.reload_interval = parse_duration(&self.reload_interval)
            .map_err(|e| format!("--reload-interval: {e}"))?
            .max(std::time::Duration::from_millis(50));
        config.webhook = self.webhook.clone().filter(|w| !w.is_empty());
        if let Some(w) = &config.webhook {
            if !(w.starts_with("http://") || w.starts_with("https://")) {
                return Err(format!("--webhook {w:?}: expected an http(s) URL"));
            }
        }
        config.admin_url = self.admin_url.clone().unwrap_or_default();
        self.tls_config(&mut config)?;
        let g = &mut config.guards;
        g.body_read_timeout = flag_duration("body-read-timeout", &self.body_read_timeout)?;
        g.idle_timeout = flag_duration("idle-timeout", &self.idle_timeout)?;
        g.max_connections = self.max_connections.max(1);
        g.max_connections_per_agent = self.max_connections_per_agent.max(1);
        g.max_connections_per_unknown_source = self.max_connections_per_unknown_source;
        g.max_streams = self.max_streams.max(1);
        g.max_buffered_per_agent =
            flag_size("max-buffered-per-agent", &self.max_buffered_per_agent)? as usize;
        g.max_buffered = flag_size("max-buffered", &self.max_buffered)? as usize;
        g.idempotency_retention =
            flag_duration("idempotency-retention", &self.idempotency_retention)?;
        g.proposal_retention = flag_duration("proposal-retention", &self.proposal_retention)?;
        g.ledger_retention = flag_duration("ledger-retention", &self.ledger_retention)?;
        g.store_alarm_bytes = flag_size("store-alarm", &self.store_alarm)?;
        g.audit_retention_min = flag_duration("audit-retention-min", &self.audit_retention_min)?;
        if let Some(r) = self.audit_retention.as_deref().filter(|r| !r.is_empty()) {
            let r = flag_duration("audit-retention", r)?;
            if r < g.audit_retention_min {
                return Err(format!(
                    "--audit-retention {}s is shorter than --audit-retention-min {}s: events younger than the minimum are never purged",
                    r.as_secs(),
                    g.audit_retention_min.as_secs()
                ));
            }
            g.audit_retention = Some(r);
        }
        config.trace_url_template = self.trace_url_template.clone().filter(|t| !t.is_empty());
        let token =
            match &self.audit_sink_token_env {
                Some(var) => Some(std::env::var(var).map_err(|_| {
                    format!("--audit-sink-token-env {var}: the variable is not set")
                })?),
                None => None,
            };
        for spec in self.audit_sink.iter().filter(|s| !s.is_empty()) {
            let sink = crate::config::parse_audit_sink(spec, token.clone())?;
            if config.audit_sinks.iter().any(|s| s.id == sink.id) {
                return Err(format!("--audit-sink {spec}: given twice"));
            }
            config.audit_sinks.push(sink);
        }
        config.audit_sink_max_lag = self.audit_sink_max_lag;
        Ok(config)
    }
}

/// Binds the listeners the flags name.
async fn bind(args: &ServeArgs) -> Result<crate::Listeners, String> {
    let at = |flag: &'static str, addr: SocketAddr| async move {
        tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::AddrInUse => format!(
                    "--{flag} {addr}: {e} (another toolgate, or another program, holds it: stop it, or choose another address, e.g. --{flag} 127.0.0.1:0)"
                ),
                _ => format!("--{flag} {addr}: {e}"),
            })
    };
    let proxy = match args.listen.0 {
        Some(addr) => Some(at("listen", addr).await?),
        None => None,
    };
    let proxy_tls = match args.listen_tls_addr() {
        Some(addr) => Some(at("listen-tls", addr).await?),
        None => None,
    };
    let admin = at("admin-listen", args.admin_listen).await?;
    let metrics = match args.metrics_listen {
        Some(addr) => Some(at("metrics-listen", addr).await?),
        None => None,
    };
    let transparent = match args.transparent_listen {
        Some(addr) => Some(at("transparent-listen", addr).await?),
        None => None,
    };
    Ok(crate::Listeners {
        proxy,
        proxy_tls,
        admin,
        metrics,
        transparent,
    })
}

/// `toolgate serve`: the proxy and the admin listener, until Ctrl-C or SIGTERM.
pub(super) async fn serve(args: ServeArgs, telemetry: Option<Telemetry>) -> ExitCode {
    let mut config = match args.config() {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    config.traces = telemetry.as_ref().map(Telemetry::counts);
    let listeners = match bind(&args).await {
        Ok(l) => l,
        Err(e) => return fail(&e),
    };
    let result = crate::run_with(listeners, config, shutdown_signal(), crate::orient::print).await;
    stop_traces(telemetry).await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e.to_string()),
    }
}

/// Sends the spans still queued before the process ends.
async fn stop_traces(telemetry: Option<Telemetry>) {
    if let Some(t) = telemetry {
        t.shutdown(std::time::Duration::from_secs(3)).await;
    }
}

/// `toolgate demo`: serve against the sandbox, then say what to try.
pub(super) async fn demo(args: ServeArgs, telemetry: Option<Telemetry>) -> ExitCode {
    let mut config = match args.config() {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    config.traces = telemetry.as_ref().map(Telemetry::counts);
    let listeners = match bind(&args).await {
        Ok(l) => l,
        Err(e) => return fail(&e),
    };
    let demo = match crate::demo::Demo::start(&mut config).await {
        Ok(d) => d,
        Err(e) => return fail(&e),
    };
    let program = crate::demo::program();
    let result = crate::run_with(listeners, config, shutdown_signal(), |s| {
        crate::orient::print_lines(&crate::orient::lines(s, &demo.about()));
        for line in demo.next_steps(s, &program) {
            say!("{line}");
        }
    })
    .await;
    drop(demo);
    stop_traces(telemetry).await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e.to_string()),
    }
}

/// Resolves on Ctrl-C or SIGTERM. The handlers are installed when this is called, not when the
/// future is first polled: a SIGTERM while toolgate is still starting stops it gracefully too,
/// instead of killing it mid-start.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate()).ok();
        let int = signal(SignalKind::interrupt()).ok();
        async move {
            let recv = |s: Option<tokio::signal::unix::Signal>| async move {
                match s {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = recv(term) => {},
                _ = recv(int) => {},
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::super::{Cli, Command};

    fn serve(args: &[&str]) -> Result<(super::ServeArgs, crate::Config), String> {
        let argv = ["toolgate", "serve"].iter().chain(args).copied();
        let cli = Cli::try_parse_from(argv).map_err(|e| e.to_string())?;
        match cli.command {
            Command::Serve(a) => a.config().map(|c| (*a, c)),
            _ => Err("not serve".into()),
        }
    }

    #[test]
    fn tls_flags_read_as_documented() {
        let (args, c) = serve(&[]).unwrap();
        assert!(args.listen.0.is_some() && args.listen_tls_addr().is_none());
        assert!(c.listen_tls.is_none() && c.admin_tls.is_none() && !c.admin_https());

        let tls = ["--listen-tls-cert", "p.pem", "--listen-tls-key", "k.pem"];
        let (args, c) = serve(&tls).unwrap();
        assert_eq!(args.listen_tls_addr(), "127.0.0.1:8443".parse().ok());
        assert!(c.listen_tls.is_some());
        let (args, _) = serve(&[&tls[..], &["--listen", "none"]].concat()).unwrap();
        assert!(args.listen.0.is_none());

        let e = serve(&["--listen", "none"]).err().unwrap();
        assert!(e.contains("leaves agents no way in"), "{e}");
        assert!(serve(&["--listen", "none", "--transparent-listen", "0.0.0.0:15001"]).is_ok());
        let e = serve(&["--listen-tls", "0.0.0.0:8443"]).err().unwrap();
        assert!(e.contains("--listen-tls-cert"), "{e}");
        assert!(
            serve(&["--listen-tls-cert", "p.pem"]).is_err(),
            "a key is required"
        );
        assert!(serve(&["--listen", "nowhere"]).is_err());

        let (_, c) = serve(&["--admin-tls-cert", "a.pem", "--admin-tls-key", "k.pem"]).unwrap();
        assert!(c.admin_https());
        let (_, c) = serve(&["--admin-url", "https://toolgate.corp"]).unwrap();
        assert!(
            c.admin_https(),
            "TLS ended in front of toolgate: cookies are Secure too"
        );
        assert!(serve(&["--admin-url", "toolgate.corp"]).is_err());

        let (_, c) = serve(&["--trusted-proxies", "10.0.0.0/8", "192.168.0.1"]).unwrap();
        assert!(c.trusted_proxies.trusts("192.168.0.1".parse().unwrap()));
        let e = serve(&["--trusted-proxies", "lb.local"]).err().unwrap();
        assert!(e.contains("--trusted-proxies"), "{e}");
        let e = serve(&["--client-ip-header", "x-real-ip"]).err().unwrap();
        assert!(e.contains("x-forwarded-for or forwarded"), "{e}");
    }
}
