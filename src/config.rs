//! Start-up configuration, validated once into typed values.

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use crate::base::split_host_port;
pub use crate::base::{parse_duration, parse_size};

/// Environment variable names, kept in one place.
pub mod env {
    pub const LISTEN: &str = "TOOLGATE_LISTEN";
    pub const ADMIN_LISTEN: &str = "TOOLGATE_ADMIN_LISTEN";
    pub const POLICIES: &str = "TOOLGATE_POLICIES";
    pub const DATA_DIR: &str = "TOOLGATE_DATA_DIR";
    pub const CERTS: &str = "TOOLGATE_CERTS";
    pub const CONNECT_TO: &str = "TOOLGATE_CONNECT_TO";
    pub const UPSTREAM_CA: &str = "TOOLGATE_UPSTREAM_CA";
    pub const UPSTREAM_TIMEOUT: &str = "TOOLGATE_UPSTREAM_TIMEOUT";
    pub const SHUTDOWN_GRACE: &str = "TOOLGATE_SHUTDOWN_GRACE";
    pub const RELOAD_INTERVAL: &str = "TOOLGATE_RELOAD_INTERVAL";
    pub const WEBHOOK: &str = "TOOLGATE_WEBHOOK";
    pub const ADMIN_URL: &str = "TOOLGATE_ADMIN_URL";
    pub const LOG_FORMAT: &str = "TOOLGATE_LOG_FORMAT";
    pub const TOKEN: &str = "TOOLGATE_TOKEN";
    pub const SERVER: &str = "TOOLGATE_SERVER";
    pub const BODY_READ_TIMEOUT: &str = "TOOLGATE_BODY_READ_TIMEOUT";
    pub const IDLE_TIMEOUT: &str = "TOOLGATE_IDLE_TIMEOUT";
    pub const MAX_CONNECTIONS: &str = "TOOLGATE_MAX_CONNECTIONS";
    pub const MAX_CONNECTIONS_PER_AGENT: &str = "TOOLGATE_MAX_CONNECTIONS_PER_AGENT";
    pub const MAX_CONNECTIONS_PER_UNKNOWN_SOURCE: &str =
        "TOOLGATE_MAX_CONNECTIONS_PER_UNKNOWN_SOURCE";
    pub const MAX_STREAMS: &str = "TOOLGATE_MAX_STREAMS";
    pub const MAX_BUFFERED_PER_AGENT: &str = "TOOLGATE_MAX_BUFFERED_PER_AGENT";
    pub const MAX_BUFFERED: &str = "TOOLGATE_MAX_BUFFERED";
    pub const IDEMPOTENCY_RETENTION: &str = "TOOLGATE_IDEMPOTENCY_RETENTION";
    pub const PROPOSAL_RETENTION: &str = "TOOLGATE_PROPOSAL_RETENTION";
    pub const LEDGER_RETENTION: &str = "TOOLGATE_LEDGER_RETENTION";
    pub const STORE_ALARM: &str = "TOOLGATE_STORE_ALARM";
    pub const AUDIT_RETENTION_MIN: &str = "TOOLGATE_AUDIT_RETENTION_MIN";
    pub const AUDIT_RETENTION: &str = "TOOLGATE_AUDIT_RETENTION";
    pub const METRICS_LISTEN: &str = "TOOLGATE_METRICS_LISTEN";
    pub const TRANSPARENT_LISTEN: &str = "TOOLGATE_TRANSPARENT_LISTEN";
    pub const DATABASE_URL: &str = "TOOLGATE_DATABASE_URL";
    pub const LISTEN_TLS: &str = "TOOLGATE_LISTEN_TLS";
    pub const LISTEN_TLS_CERT: &str = "TOOLGATE_LISTEN_TLS_CERT";
    pub const LISTEN_TLS_KEY: &str = "TOOLGATE_LISTEN_TLS_KEY";
    pub const ADMIN_TLS_CERT: &str = "TOOLGATE_ADMIN_TLS_CERT";
    pub const ADMIN_TLS_KEY: &str = "TOOLGATE_ADMIN_TLS_KEY";
    pub const TRUSTED_PROXIES: &str = "TOOLGATE_TRUSTED_PROXIES";
    pub const PAGE_LOGIN: &str = "TOOLGATE_PAGE_LOGIN";
    pub const SESSION_TTL: &str = "TOOLGATE_SESSION_TTL";
    pub const MODEL_JOIN_WINDOW: &str = "TOOLGATE_MODEL_JOIN_WINDOW";
    pub const CLIENT_IP_HEADER: &str = "TOOLGATE_CLIENT_IP_HEADER";
    pub const CACERT: &str = "TOOLGATE_CACERT";
    pub const TRACE_URL_TEMPLATE: &str = "TOOLGATE_TRACE_URL_TEMPLATE";
    pub const AUDIT_SINK: &str = "TOOLGATE_AUDIT_SINK";
    pub const AUDIT_SINK_TOKEN_ENV: &str = "TOOLGATE_AUDIT_SINK_TOKEN_ENV";
    pub const AUDIT_SINK_MAX_LAG: &str = "TOOLGATE_AUDIT_SINK_MAX_LAG";
}

/// A certificate chain and its private key, PEM files, for a listener that serves TLS. They are
/// read again when they change (see `tls`).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Which header a trusted proxy (`--trusted-proxies`) names the client in. One, chosen by the
/// operator: a proxy passes the other through as the client sent it, so reading both would let
/// a client name its own address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientIpHeader {
    #[default]
    XForwardedFor,
    Forwarded,
}

impl ClientIpHeader {
    pub fn parse(s: &str) -> Result<ClientIpHeader, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "x-forwarded-for" => Ok(ClientIpHeader::XForwardedFor),
            "forwarded" => Ok(ClientIpHeader::Forwarded),
            _ => Err(format!(
                "--client-ip-header {s:?}: expected x-forwarded-for or forwarded"
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ClientIpHeader::XForwardedFor => "x-forwarded-for",
            ClientIpHeader::Forwarded => "forwarded",
        }
    }
}

/// The networks whose connections to the admin listener may name the client they forward.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies {
    pub networks: Vec<ipnet::IpNet>,
    pub header: ClientIpHeader,
}

impl TrustedProxies {
    /// Parses `--trusted-proxies` values: CIDRs, or single addresses (a /32 or /128).
    pub fn parse(values: &[String], header: ClientIpHeader) -> Result<TrustedProxies, String> {
        let mut networks = Vec::new();
        for v in values.iter().map(|v| v.trim()).filter(|v| !v.is_empty()) {
            let net = match v.parse::<ipnet::IpNet>() {
                Ok(n) => n,
                Err(_) => v
                    .parse::<std::net::IpAddr>()
                    .map(ipnet::IpNet::from)
                    .map_err(|_| {
                        format!(
                            "--trusted-proxies {v:?}: expected a CIDR (10.0.0.0/8) or an address"
                        )
                    })?,
            };
            networks.push(net.trunc());
        }
        Ok(TrustedProxies { networks, header })
    }

    /// Whether `ip` is one of the trusted proxies (an IPv4-mapped IPv6 address as its IPv4).
    pub fn trusts(&self, ip: std::net::IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.networks.iter().any(|n| n.contains(&ip))
    }
}

/// Where an audit sink sends the log (`--audit-sink URL`).
#[derive(Debug, Clone, PartialEq)]
pub struct AuditSink {
    /// The sink's name and the key of its cursor: its URL without credentials or options.
    pub id: String,
    pub target: SinkTarget,
}

/// An audit sink's receiver.
#[derive(Debug, Clone, PartialEq)]
pub enum SinkTarget {
    /// `http(s)://…?format=jsonl|hec|elastic`: batches POSTed; a 2xx is the acknowledgment.
    Http {
        url: String,
        format: SinkFormat,
        /// The bearer token (from `--audit-sink-token-env`).
        token: Option<String>,
    },
    /// `syslog+tcp://HOST:PORT`, `syslog+tls://HOST:PORT`: RFC 5424, octet-counted.
    Syslog { host: String, port: u16, tls: bool },
    /// `file:///path?max_bytes=N&keep=K`: JSON lines, rotated by size.
    File {
        path: PathBuf,
        max_bytes: u64,
        keep: u32,
    },
}

/// How an HTTP sink writes a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkFormat {
    /// One OCSF event per line.
    Jsonl,
    /// Splunk's HTTP Event Collector (`{"event": …}` objects, `Authorization: Splunk TOKEN`).
    Hec,
    /// Elasticsearch's bulk API (`index` by the event's hash: a re-delivery overwrites).
    Elastic,
}

/// Parses an `--audit-sink` URL; `token` is the bearer token for HTTP sinks.
pub fn parse_audit_sink(spec: &str, token: Option<String>) -> Result<AuditSink, String> {
    let bad = |why: &str| format!("--audit-sink {spec:?}: {why}");
    if let Some(rest) = spec.strip_prefix("file://") {
        return file_sink(spec, rest);
    }
    let uri: http::Uri = spec.parse().map_err(|e| bad(&format!("not a URL ({e})")))?;
    let scheme = uri.scheme_str().unwrap_or("");
    let query: HashMap<String, String> =
        form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    let authority = uri.authority().map(|a| a.as_str()).unwrap_or("");
    if authority.contains('@') {
        return Err(bad(
            "credentials do not belong in the URL: pass a token with --audit-sink-token-env",
        ));
    }
    let id = format!("{scheme}://{authority}{}", uri.path());
    let target = match scheme {
        "http" | "https" => {
            let format = match query.get("format").map(String::as_str) {
                None | Some("jsonl") => SinkFormat::Jsonl,
                Some("hec") => SinkFormat::Hec,
                Some("elastic") => SinkFormat::Elastic,
                Some(other) => {
                    return Err(bad(&format!(
                        "format={other}: expected jsonl, hec or elastic"
                    )))
                }
            };
            SinkTarget::Http {
                url: id.clone(),
                format,
                token,
            }
        }
        "syslog+tcp" | "syslog+tls" => {
            let (host, port) = (uri.host().unwrap_or(""), uri.port_u16());
            let port = port
                .filter(|_| !host.is_empty())
                .ok_or_else(|| bad("expected syslog+tcp://HOST:PORT"))?;
            SinkTarget::Syslog {
                host: host.trim_matches(['[', ']']).to_string(),
                port,
                tls: scheme == "syslog+tls",
            }
        }
        _ => {
            return Err(bad(
                "expected http://, https://, syslog+tcp://, syslog+tls:// or file:///path",
            ))
        }
    };
    Ok(AuditSink { id, target })
}

/// `file:///path?max_bytes=N&keep=K` (`rest` is what follows `file://`).
fn file_sink(spec: &str, rest: &str) -> Result<AuditSink, String> {
    let bad = |why: &str| format!("--audit-sink {spec:?}: {why}");
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    if !path.starts_with('/') || path.len() < 2 {
        return Err(bad("expected file:///absolute/path"));
    }
    let query: HashMap<String, String> = form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let number = |k: &str, d: u64| match query.get(k) {
        None => Ok(d),
        Some(v) => crate::base::parse_size(v).map_err(|e| bad(&format!("{k}: {e}"))),
    };
    Ok(AuditSink {
        id: format!("file://{path}"),
        target: SinkTarget::File {
            path: PathBuf::from(path),
            max_bytes: number("max_bytes", 100 << 20)?,
            keep: u32::try_from(number("keep", 5)?).unwrap_or(5),
        },
    })
}

/// The limits that keep one agent (or anyone who can reach the listeners) from freezing,
/// exhausting or filling up the gateway. Each has a flag; the defaults are in the README.
#[derive(Debug, Clone)]
pub struct Guards {
    /// How long a request body may take to arrive whole.
    pub body_read_timeout: Duration,
    /// A client connection or tunnel with no bytes moving and no request in flight is closed.
    pub idle_timeout: Duration,
    /// Client connections open at once, all agents together (more wait in the kernel backlog).
    pub max_connections: usize,
    /// Tunnels (and absolute-form connections) one agent may hold open at once.
    pub max_connections_per_agent: usize,
    /// Connections one source address that no agent's `sources` holds may have open at once on
    /// the transparent listener (all such sources together: [`Guards::unknown_sources_max`]).
    pub max_connections_per_unknown_source: usize,
    /// Concurrent HTTP/2 streams per tunnel.
    pub max_streams: u32,
    /// Request-body bytes one agent may have buffered in toolgate at once.
    pub max_buffered_per_agent: usize,
    /// Request-body bytes buffered at once, all agents together.
    pub max_buffered: usize,
    /// Idempotency records older than this are removed.
    pub idempotency_retention: Duration,
    /// Finished proposals older than this are removed (open ones expire first).
    pub proposal_retention: Duration,
    /// Rollback-ledger entries older than this are removed (they can no longer be undone).
    pub ledger_retention: Duration,
    /// `toolgate_store_alarm` turns 1 on /metrics (and a warning is logged) past this size.
    pub store_alarm_bytes: u64,
    /// `audit purge` never removes events younger than this.
    pub audit_retention_min: Duration,
    /// Events older than this are purged by the sweep (never younger than the minimum above).
    pub audit_retention: Option<Duration>,
    /// Audit events that may wait for the writer at once (no flag; tests make it small).
    pub audit_queue: usize,
    /// A pause before each batch the audit writer takes. A test hook (a writer slower than
    /// the request path); zero otherwise, and no flag sets it.
    pub audit_write_delay: Duration,
    /// How often expired records are swept.
    pub sweep_interval: Duration,
    /// Failed sign-ins and failed Bearer checks allowed per source address per minute.
    pub auth_failures_per_minute: u32,
}

impl Default for Guards {
    fn default() -> Self {
        Guards {
            body_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(120),
            max_connections: 4096,
            max_connections_per_agent: 256,
            max_connections_per_unknown_source: 4,
            max_streams: 64,
            max_buffered_per_agent: 64 << 20,
            max_buffered: 512 << 20,
            idempotency_retention: Duration::from_secs(48 * 3600),
            proposal_retention: Duration::from_secs(30 * 86400),
            ledger_retention: Duration::from_secs(90 * 86400),
            store_alarm_bytes: 8 << 30,
            audit_retention_min: Duration::from_secs(30 * 86400),
            audit_retention: None,
            audit_write_delay: Duration::ZERO,
            audit_queue: crate::base::AUDIT_QUEUE,
            sweep_interval: Duration::from_secs(60),
            auth_failures_per_minute: 20,
        }
    }
}

impl Guards {
    /// The client connections that sources no agent's `sources` holds may have open at once,
    /// all together: a quarter of `--max-connections`. They only ever get a refusal, so the
    /// other three quarters are kept for agents (none at all below four connections).
    pub fn unknown_sources_max(&self) -> usize {
        self.max_connections / 4
    }
}

/// How long a model's tool call waits, by default, to be joined to the call that carries it
/// out (`--model-join-window`).
pub const MODEL_JOIN_WINDOW: Duration = Duration::from_secs(600);

/// Everything `serve` needs besides its listeners.
#[derive(Debug, Clone)]
pub struct Config {
    pub policies_dir: PathBuf,
    pub data_dir: PathBuf,
    pub certs_dir: PathBuf,
    /// `--database-url`: the shared store on PostgreSQL for replicas; None: sled in `data_dir`.
    pub database_url: Option<String>,
    /// `--connect-to HOST:PORT=ADDR:PORT`, keyed by lower-case host and port.
    pub connect_to: HashMap<(String, u16), SocketAddr>,
    /// PEM files with extra roots for upstream TLS.
    pub upstream_ca: Vec<PathBuf>,
    /// How long an upstream may take to start answering.
    pub upstream_timeout: Duration,
    /// How long a new tunnel may take to send its first bytes, and a TLS handshake to finish.
    pub handshake_timeout: Duration,
    /// How long in-flight requests get to finish at shutdown.
    pub shutdown_grace: Duration,
    /// How often the policy folder is checked for changes.
    pub reload_interval: Duration,
    /// A webhook for every new proposal (a tool's `approval.webhook` takes precedence).
    pub webhook: Option<String>,
    /// The admin page's URL as approvers reach it, for links in notifications. Empty: derived
    /// from the admin listener's address.
    pub admin_url: String,
    /// Timeouts, caps and expiries.
    pub guards: Guards,
    /// Run by `toolgate demo`: the sign-in page names the published demo tokens in force.
    pub demo: bool,
    /// `--listen-tls-cert/-key`: the certificate of the proxy's TLS listener (`--listen-tls`).
    pub listen_tls: Option<TlsFiles>,
    /// `--admin-tls-cert/-key`: the admin listener (and `--metrics-listen`) serve TLS.
    pub admin_tls: Option<TlsFiles>,
    /// `--trusted-proxies`: who may name the client on the admin listener.
    pub trusted_proxies: TrustedProxies,
    /// The trace exporter's counters, when traces are on (`--otlp-endpoint`).
    pub traces: Option<std::sync::Arc<crate::telemetry::Counts>>,
    /// `--trace-url-template`: a request's page links to its trace.
    pub trace_url_template: Option<String>,
    /// `--audit-sink`: where the audit log is streamed (as OCSF).
    pub audit_sinks: Vec<AuditSink>,
    /// `--audit-sink-max-lag`: a sink this many events behind raises the store alarm.
    pub audit_sink_max_lag: u64,
    /// `--page-login`: how people sign in to the page (the API always takes bearer tokens).
    pub page_login: PageLogin,
    /// `--session-ttl`: how long a page session lasts.
    pub session_ttl: Duration,
    /// How long a model's tool call waits to be joined to the call that carries it out.
    pub model_join_window: Duration,
}

/// `--page-login token|oidc|both`: the page's sign-in with a pasted token, through an identity
/// provider's `login`, or either.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PageLogin {
    Token,
    Oidc,
    #[default]
    Both,
}

impl PageLogin {
    pub fn parse(text: &str) -> Result<PageLogin, String> {
        match text {
            "token" => Ok(PageLogin::Token),
            "oidc" => Ok(PageLogin::Oidc),
            "both" => Ok(PageLogin::Both),
            _ => Err(format!(
                "--page-login {text:?}: expected token, oidc or both"
            )),
        }
    }

    /// Whether a pasted approver or reviewer token signs in on the page.
    pub fn token(self) -> bool {
        self != PageLogin::Oidc
    }

    /// Whether identity providers with `login` sign in on the page.
    pub fn oidc(self) -> bool {
        self != PageLogin::Token
    }
}

impl Config {
    /// A configuration with the defaults of DESIGN section 6, relative to the working directory.
    pub fn new(policies_dir: PathBuf, data_dir: PathBuf, certs_dir: PathBuf) -> Self {
        Config {
            policies_dir,
            data_dir,
            certs_dir,
            database_url: None,
            connect_to: HashMap::new(),
            upstream_ca: Vec::new(),
            upstream_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(10),
            reload_interval: Duration::from_secs(2),
            webhook: None,
            admin_url: String::new(),
            guards: Guards::default(),
            demo: false,
            listen_tls: None,
            admin_tls: None,
            trusted_proxies: TrustedProxies::default(),
            traces: None,
            trace_url_template: None,
            audit_sinks: Vec::new(),
            audit_sink_max_lag: 100_000,
            page_login: PageLogin::Both,
            session_ttl: Duration::from_secs(12 * 3600),
            model_join_window: MODEL_JOIN_WINDOW,
        }
    }

    /// Whether the page is reached over HTTPS (its own TLS, or a TLS-terminating proxy in front
    /// named by an `https://` `--admin-url`): its cookies are then `Secure`.
    pub fn admin_https(&self) -> bool {
        self.admin_tls.is_some() || self.admin_url.starts_with("https://")
    }

    /// Adds a `HOST:PORT=ADDR:PORT` route.
    pub fn add_connect_to(&mut self, spec: &str) -> Result<(), String> {
        let (from, to) = parse_connect_to(spec)?;
        self.connect_to.insert(from, to);
        Ok(())
    }
}

/// Parses `HOST:PORT=ADDR:PORT`. The address side may be a name; it is resolved once, now.
pub fn parse_connect_to(spec: &str) -> Result<((String, u16), SocketAddr), String> {
    let bad = || format!("--connect-to {spec:?}: expected HOST:PORT=ADDR:PORT");
    let (from, to) = spec.split_once('=').ok_or_else(bad)?;
    if !from.contains(':') {
        return Err(bad());
    }
    let (host, port) = split_host_port(from, 443).ok_or_else(bad)?;
    let addr = to
        .trim()
        .to_socket_addrs()
        .map_err(|e| format!("--connect-to {spec:?}: {e}"))?
        .next()
        .ok_or_else(bad)?;
    Ok(((host, port), addr))
}

#[cfg(test)]
mod tests {

    #[test]
    fn audit_sinks_are_read_from_their_urls() {
        let s = parse_audit_sink(
            "https://siem.example:8088/ingest?format=hec",
            Some("t".into()),
        )
        .unwrap();
        assert_eq!(s.id, "https://siem.example:8088/ingest");
        assert!(matches!(
            s.target,
            SinkTarget::Http {
                format: SinkFormat::Hec,
                ..
            }
        ));
        let s = parse_audit_sink("syslog+tls://logs.example:6514", None).unwrap();
        assert_eq!(
            s.target,
            SinkTarget::Syslog {
                host: "logs.example".into(),
                port: 6514,
                tls: true
            }
        );
        let s = parse_audit_sink("file:///var/log/tg.jsonl?max_bytes=1MiB&keep=3", None).unwrap();
        assert_eq!(
            s.target,
            SinkTarget::File {
                path: "/var/log/tg.jsonl".into(),
                max_bytes: 1 << 20,
                keep: 3
            }
        );
        for bad in [
            "ftp://x",
            "syslog+tcp://host",
            "https://user:pw@siem.example/x",
            "http://x/?format=csv",
        ] {
            assert!(parse_audit_sink(bad, None).is_err(), "{bad}");
        }
    }

    use super::*;

    #[test]
    fn connect_to_parses() {
        let ((h, p), a) = parse_connect_to("API.stripe.com:443=127.0.0.1:9000").unwrap();
        assert_eq!((h.as_str(), p), ("api.stripe.com", 443));
        assert_eq!(a, "127.0.0.1:9000".parse().unwrap());
        assert!(parse_connect_to("api.stripe.com=127.0.0.1:1").is_err());
        assert!(parse_connect_to("api.stripe.com:443").is_err());
    }

    #[test]
    fn trusted_proxies_parse() {
        let t = TrustedProxies::parse(
            &[
                "10.0.0.0/8".into(),
                " 192.168.1.7 ".into(),
                "fd00::1/64".into(),
            ],
            ClientIpHeader::default(),
        )
        .unwrap();
        assert!(t.trusts("10.200.0.1".parse().unwrap()));
        assert!(t.trusts("::ffff:10.1.2.3".parse().unwrap()));
        assert!(t.trusts("192.168.1.7".parse().unwrap()));
        assert!(!t.trusts("192.168.1.8".parse().unwrap()));
        assert!(t.trusts("fd00::abcd".parse().unwrap()));
        assert!(TrustedProxies::parse(&["10.0.0.0/33".into()], ClientIpHeader::default()).is_err());
        assert!(TrustedProxies::parse(&["proxy.local".into()], ClientIpHeader::default()).is_err());
        assert_eq!(
            ClientIpHeader::parse("Forwarded").unwrap(),
            ClientIpHeader::Forwarded
        );
        assert!(ClientIpHeader::parse("x-real-ip").is_err());
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_size("1000").unwrap(), 1000);
        assert_eq!(parse_size("2 GiB").unwrap(), 2 << 30);
        assert!(parse_size("lots").is_err());
        assert!(parse_size("5TiB").is_err());
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5y").is_err());
        // Token and grant lifetimes: whole seconds from 1 s to the bound.
        let week = 7 * 24 * 3600;
        assert_eq!(crate::base::lifetime_secs("15m", week), Some(900));
        assert_eq!(crate::base::lifetime_secs("7d", week), Some(week));
        assert_eq!(crate::base::lifetime_secs("8d", week), None);
        assert_eq!(crate::base::lifetime_secs("250ms", week), None);
        assert_eq!(crate::base::lifetime_secs("ten", week), None);
    }
}
