//! The upstream side: where a host may be reached (egress), the pooled TLS client that verifies
//! upstream certificates, and forwarding with hop-by-hop headers stripped.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{header, Request, Response, Uri, Version};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;
use tokio::net::TcpStream;

use crate::base::body::ProxyBody;
pub use crate::base::{authority, strip_hop_by_hop};
use crate::error::Refusal;

/// How long a DNS lookup and a TCP connect may take.
const DNS_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why toolgate will not connect to an address.
#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    #[error("{host} resolves to {addr}, a private, loopback, link-local or metadata address; toolgate does not connect there (route it explicitly with --connect-to if you mean it)")]
    Forbidden { host: String, addr: IpAddr },
    #[error("could not resolve {host}: {source}")]
    Dns { host: String, source: io::Error },
}

/// Where each upstream is reached: explicit `--connect-to` routes first, then DNS with the
/// private-address check.
#[derive(Debug, Default)]
pub struct Routes {
    connect_to: HashMap<(String, u16), SocketAddr>,
}

impl Routes {
    pub fn new(connect_to: HashMap<(String, u16), SocketAddr>) -> Self {
        Routes { connect_to }
    }

    /// True when `--connect-to` routes this host and port explicitly.
    pub fn is_routed(&self, host: &str, port: u16) -> bool {
        self.connect_to
            .contains_key(&(host.to_ascii_lowercase(), port))
    }

    /// The addresses to connect to for `host:port`, refusing forbidden ones. Runs at CONNECT
    /// time (so a refusal comes before any TLS) and again at connect time (so a DNS answer that
    /// changed in between cannot smuggle a private address in).
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, EgressError> {
        if let Some(addr) = self.connect_to.get(&(host.to_ascii_lowercase(), port)) {
            return Ok(vec![*addr]);
        }
        let addrs: Vec<SocketAddr> = if let Ok(ip) = host.parse::<IpAddr>() {
            vec![SocketAddr::new(ip, port)]
        } else {
            let lookup = tokio::net::lookup_host((host, port));
            match tokio::time::timeout(DNS_TIMEOUT, lookup).await {
                Ok(Ok(addrs)) => addrs.collect(),
                Ok(Err(source)) => {
                    return Err(EgressError::Dns {
                        host: host.to_string(),
                        source,
                    })
                }
                Err(_) => {
                    return Err(EgressError::Dns {
                        host: host.to_string(),
                        source: io::Error::new(io::ErrorKind::TimedOut, "lookup timed out"),
                    })
                }
            }
        };
        // One forbidden answer refuses the host: a record set that mixes public and private
        // addresses is a rebinding attempt or a misconfiguration.
        if let Some(bad) = addrs.iter().find(|a| !is_public(a.ip())) {
            return Err(EgressError::Forbidden {
                host: host.to_string(),
                addr: bad.ip(),
            });
        }
        if addrs.is_empty() {
            return Err(EgressError::Dns {
                host: host.to_string(),
                source: io::Error::new(io::ErrorKind::NotFound, "no addresses"),
            });
        }
        Ok(addrs)
    }
}

/// False for loopback, private, link-local (169.254.169.254, the cloud metadata service,
/// among them), shared, documentation, multicast, reserved and unspecified addresses.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_documentation()
        || ip.is_multicast()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || a >= 240)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    let s = ip.segments();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (s[0] & 0xfe00) == 0xfc00 // unique local
        || (s[0] & 0xffc0) == 0xfe80 // link local
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        || (s[0] == 0x64 && s[1] == 0xff9b) // NAT64 can reach private IPv4
        || (s[0] == 0 && s[1] == 0 && s[2] == 0 && s[3] == 0 && s[4] == 0 && s[5] == 0))
    // IPv4-compatible
}

/// A connector that only opens TCP connections the egress rules allow, with `TCP_NODELAY`.
#[derive(Clone)]
pub struct EgressConnector {
    routes: Arc<Routes>,
}

impl tower_service::Service<Uri> for EgressConnector {
    type Response = TokioIo<TcpStream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, io::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), io::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let routes = self.routes.clone();
        Box::pin(async move {
            let host = uri
                .host()
                .map(|h| h.trim_start_matches('[').trim_end_matches(']').to_string())
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no host in URI"))?;
            let port = uri.port_u16().unwrap_or(443);
            let addrs = routes
                .resolve(&host, port)
                .await
                .map_err(io::Error::other)?;
            let mut last = None;
            for addr in addrs {
                match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
                    Ok(Ok(stream)) => {
                        stream.set_nodelay(true)?;
                        return Ok(TokioIo::new(stream));
                    }
                    Ok(Err(e)) => {
                        last = Some(io::Error::new(e.kind(), format!("connect to {addr}: {e}")))
                    }
                    Err(_) => {
                        last = Some(io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!("connect to {addr} timed out after {CONNECT_TIMEOUT:?}"),
                        ))
                    }
                }
            }
            Err(last.unwrap_or_else(|| io::Error::other("no address to connect to")))
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamSetupError {
    #[error("{path}: {message}")]
    Ca { path: String, message: String },
    #[error("upstream TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// TLS over `connector`, HTTPS only, offering HTTP/2 and HTTP/1.1.
fn https<C>(tls: rustls::ClientConfig, connector: C) -> HttpsConnector<C> {
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .enable_http2()
        .wrap_connector(connector)
}

/// A forward that failed, and whether the request can be known not to have reached the upstream.
#[derive(Debug)]
pub struct Failure {
    pub refusal: Refusal,
    pub not_sent: bool,
}

/// The pooled client toolgate forwards with.
pub struct Upstream {
    client: Client<HttpsConnector<EgressConnector>, ProxyBody>,
    sandbox: Client<HttpsConnector<EgressConnector>, ProxyBody>,
    routes: Arc<Routes>,
    timeout: Duration,
}

/// The TLS client configuration for everything toolgate calls out to (upstreams, webhooks):
/// the public web roots plus `--upstream-ca`, under the one crypto provider.
pub fn client_tls(
    provider: Arc<CryptoProvider>,
    extra_roots: &[CertificateDer<'static>],
) -> Result<rustls::ClientConfig, UpstreamSetupError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for der in extra_roots {
        roots.add(der.clone())?;
    }
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

impl Upstream {
    pub fn new(tls: rustls::ClientConfig, routes: Arc<Routes>, timeout: Duration) -> Self {
        // Replays go to the sandbox an operator names under the same egress rules: a private
        // or loopback address only where `--connect-to` routes the sandbox's name there.
        let sandbox = Client::builder(TokioExecutor::new()).build(https(
            tls.clone(),
            EgressConnector {
                routes: routes.clone(),
            },
        ));
        let https = https(
            tls,
            EgressConnector {
                routes: routes.clone(),
            },
        );
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(64)
            .build(https);
        Upstream {
            client,
            sandbox,
            routes,
            timeout,
        }
    }

    pub fn routes(&self) -> &Routes {
        &self.routes
    }

    /// Sends `req` to `https://host:port` with the request's path and query. The request's own
    /// URI authority and `Host` header are ignored: the target comes from the tunnel.
    pub async fn forward(
        &self,
        host: &str,
        port: u16,
        req: Request<ProxyBody>,
    ) -> Result<Response<Incoming>, Failure> {
        send(&self.client, self.timeout, host, port, req).await
    }

    /// [`Upstream::forward`] as a future that borrows nothing, for a task of its own.
    pub fn forward_detached(
        &self,
        host: &str,
        port: u16,
        req: Request<ProxyBody>,
    ) -> impl std::future::Future<Output = Result<Response<Incoming>, Failure>> + Send + 'static
    {
        let (client, timeout, host) = (self.client.clone(), self.timeout, host.to_string());
        // Run in a task of its own, the exchange stays in the trace of the call that sent it.
        let parent = tracing::Span::current();
        let exchange = async move { send(&client, timeout, &host, port, req).await };
        tracing::Instrument::instrument(exchange, parent)
    }

    /// Sends a replay to a sandbox at `host:port` on a client of its own (no pooled connection
    /// is shared with real upstreams); the `Host` is the sandbox's.
    pub async fn send_to_sandbox(
        &self,
        host: &str,
        port: u16,
        req: Request<ProxyBody>,
    ) -> Result<Response<Incoming>, Failure> {
        send(&self.sandbox, self.timeout, host, port, req).await
    }
}

async fn send<C>(
    client: &Client<C, ProxyBody>,
    timeout: Duration,
    host: &str,
    port: u16,
    mut req: Request<ProxyBody>,
) -> Result<Response<Incoming>, Failure>
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    let authority = authority(host, port);
    let path_and_query = req
        .uri()
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or("/");
    let uri: Uri = format!("https://{authority}{path_and_query}")
        .parse()
        .map_err(|e| Failure {
            refusal: Refusal::policy(format!("the request URI is not valid: {e}")),
            not_sent: true,
        })?;
    *req.uri_mut() = uri;
    // The client picks HTTP/1.1 or HTTP/2 per upstream connection (ALPN); the client side's
    // version does not carry over.
    *req.version_mut() = Version::HTTP_11;
    strip_hop_by_hop(req.headers_mut());
    req.headers_mut().remove(header::HOST);
    let span = client_span(&mut req, host, port);
    let exchange = tokio::time::timeout(timeout, client.request(req));
    let result = tracing::Instrument::instrument(exchange, span.clone()).await;
    answered(&span, &result);
    match result {
            Err(_) => Err(Failure {
                refusal: Refusal::new(
                    crate::error::Code::UpstreamTimeout,
                    format!(
                        "{authority} did not answer within {}s; the call may or may not have taken effect upstream",
                        timeout.as_secs_f64()
                    ),
                ),
                not_sent: false,
            }),
            Ok(Err(e)) => Err(Failure {
                refusal: classify(&authority, &e),
                // A connect error means no byte of the request left toolgate.
                not_sent: e.is_connect(),
            }),
            Ok(Ok(mut resp)) => {
                strip_hop_by_hop(resp.headers_mut());
                Ok(resp)
            }
        }
}

/// Marks a request whose upstream gets the call's trace context (`traceparent`, `tracestate`):
/// set for tools with `propagate_trace = true`.
#[derive(Debug, Clone, Copy)]
pub struct PropagateTrace;

/// The exchange's client span (disabled when traces are off). A request marked
/// [`PropagateTrace`] carries its context upstream.
fn client_span(req: &mut Request<ProxyBody>, host: &str, port: u16) -> tracing::Span {
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let span = tracing::debug_span!("upstream", otel.kind = "client", otel.name = %req.method());
    if span.is_disabled() {
        return span;
    }
    span.set_attribute("http.request.method", req.method().as_str().to_string());
    span.set_attribute("server.address", host.to_string());
    span.set_attribute("server.port", i64::from(port));
    if req.extensions().get::<PropagateTrace>().is_some() {
        crate::telemetry::inject(&span.context(), req.headers_mut());
    }
    span
}

/// Notes the upstream's status (or the failure) on the exchange's span.
fn answered<E: std::fmt::Display, T>(
    span: &tracing::Span,
    result: &Result<Result<Response<Incoming>, E>, T>,
) {
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    if span.is_disabled() {
        return;
    }
    match result {
        Ok(Ok(resp)) => {
            let status = resp.status().as_u16();
            span.set_attribute("http.response.status_code", i64::from(status));
            if status >= 500 {
                span.set_attribute("error.type", status.to_string());
                span.set_status(opentelemetry::trace::Status::error(status.to_string()));
            }
        }
        Ok(Err(_)) => span.set_attribute("error.type", "upstream_error"),
        Err(_) => span.set_attribute("error.type", "upstream_timeout"),
    }
}

/// Turns a client error into the refusal the agent sees, naming the cause.
fn classify(authority: &str, err: &hyper_util::client::legacy::Error) -> Refusal {
    let mut causes: Vec<String> = Vec::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            if let Some(inner) = io.get_ref() {
                if let Some(egress) = inner.downcast_ref::<EgressError>() {
                    return match egress {
                        EgressError::Forbidden { .. } => Refusal::egress(egress.to_string()),
                        EgressError::Dns { .. } => Refusal::upstream(egress.to_string()),
                    };
                }
            }
        }
        let msg = e.to_string();
        if !causes.iter().any(|c| c.contains(&msg)) {
            causes.push(msg);
        }
        cur = e.source();
    }
    let what = if err.is_connect() {
        "could not connect to"
    } else {
        "the request failed at"
    };
    Refusal::upstream(format!(
        "{what} {authority}: {}",
        causes.into_iter().skip(1).collect::<Vec<_>>().join(": ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_addresses_are_not_public() {
        for bad in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "64:ff9b::a00:1",
        ] {
            assert!(!is_public(bad.parse().unwrap()), "{bad}");
        }
        for good in ["1.1.1.1", "140.82.112.3", "2606:4700::1111"] {
            assert!(is_public(good.parse().unwrap()), "{good}");
        }
    }

    #[tokio::test]
    async fn ip_literals_are_checked_and_routes_bypass_the_check() {
        let mut map = HashMap::new();
        map.insert(
            ("api.example.com".to_string(), 443),
            "127.0.0.1:9".parse().unwrap(),
        );
        let routes = Routes::new(map);
        assert!(matches!(
            routes.resolve("169.254.169.254", 80).await,
            Err(EgressError::Forbidden { .. })
        ));
        assert_eq!(
            routes.resolve("API.example.com", 443).await.unwrap(),
            vec!["127.0.0.1:9".parse().unwrap()]
        );
        assert!(routes.is_routed("api.example.com", 443));
    }
}
