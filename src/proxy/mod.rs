//! The proxy: accept, authenticate, CONNECT, TLS interception, and the per-request phases.
//!
//! A request goes through named phases: `authenticate` (outer connection), `egress` (CONNECT
//! target), then per request inside the tunnel `match_tool`, `forward`, and `record`, which runs
//! on every exit, refusals included.

mod exchange;
pub(crate) mod mcp;
pub mod model;
pub(crate) mod request;
pub mod rewind;
pub mod scrub;
pub(crate) mod transparent;

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use http::{header, HeaderValue, Method, Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info, warn};

use crate::base::{body, new_id, split_host_port};
use crate::error::{Code, Refusal};
use crate::guard::{Activity, TunnelSlot, Watched};
use crate::policy::{Agent, Policy};
use crate::upstream::{self, EgressError};
use crate::App;
use body::{empty, ProxyBody};
use rewind::{detect, Protocol, Rewind};

pub use crate::base::net::REQUEST_ID_HEADER;

/// How long a client may take to send a request's headers (never longer than the idle timeout:
/// a connection whose request has not arrived is idle as far as toolgate is concerned).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// The most an HTTP/1.1 request head (request line and headers) may take; beyond, 431.
const MAX_HEADER_BYTES: usize = 64 * 1024;
/// HTTP/2 flow-control windows: what one stream, and one tunnel, may have in flight unread.
const H2_STREAM_WINDOW: u32 = 256 * 1024;
const H2_CONNECTION_WINDOW: u32 = 1024 * 1024;
/// The most of a request body that toolgate reads (and drops) after answering without it, so
/// that the client gets the answer (see [`body::Kept`]); past it, the exchange is cut short.
const FINISH_CAP: usize = 16 << 20;

/// Accepts proxy connections until `shutdown` resolves.
pub(crate) async fn accept_loop(
    app: Arc<App>,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        // At the connection cap, further clients wait in the kernel's backlog.
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            p = app.connections.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    if let Err(e) = stream.set_nodelay(true) {
                        debug!(error = %e, "could not set TCP_NODELAY");
                    }
                    app.tasks.spawn(serve_client(app.clone(), stream, peer, Arc::new(permit)));
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
}

/// Serves one agent connection: HTTP/1.1 to the proxy itself (CONNECT or absolute form).
/// The connection holds `slot` (one of `--max-connections`) as long as it is open, tunnels
/// upgraded from it included.
async fn serve_client(app: Arc<App>, stream: TcpStream, peer: SocketAddr, slot: ConnectionSlot) {
    // Counted against its address until a request authenticates: one address cannot hold the
    // listener's slots with request heads that never finish.
    let Some(unauthenticated) = app.caps.unauthenticated(peer.ip()) else {
        return too_many_unauthenticated(&app, peer);
    };
    let unauthenticated = Arc::new(std::sync::Mutex::new(Some(unauthenticated)));
    let activity = Activity::new();
    let g = app.clone();
    let a = activity.clone();
    let svc = service_fn(move |req| {
        let app = g.clone();
        let in_flight = a.request();
        let slot = slot.clone();
        let unauthenticated = unauthenticated.clone();
        async move {
            let resp = outer(app, peer, req, (slot, unauthenticated)).await;
            drop(in_flight);
            Ok::<_, Infallible>(resp)
        }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout(&app))
        .max_buf_size(MAX_HEADER_BYTES)
        .serve_connection(TokioIo::new(Watched::new(stream, activity.clone())), svc)
        .with_upgrades();
    tokio::pin!(conn);
    let idle = app.config.guards.idle_timeout;
    tokio::select! {
        res = conn.as_mut() => if let Err(e) = res { debug!(%peer, error = %e, "client connection ended with an error") },
        _ = app.cancel.cancelled() => {
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = app.abandon.cancelled() => debug!(%peer, "client connection closed at the end of the shutdown grace"),
            }
        }
        _ = activity.idle(idle) => debug!(%peer, "idle client connection closed"),
    }
}

/// A connection from an address holding its cap of unauthenticated connections, closed
/// unserved (logged once a minute per address).
fn too_many_unauthenticated(app: &App, peer: SocketAddr) {
    let (count, _) = app.sources.count(peer.ip(), "unauthenticated_over_cap");
    if count == 1 {
        warn!(
            %peer, decision = "refused", per_address = crate::guard::UNAUTHENTICATED_PER_ADDRESS,
            "a proxy connection from an address that holds its cap of connections not yet \
             authenticated; closed (further ones from this address this minute are closed \
             without a log line)"
        );
    }
}

/// A client's request as the phases take it: its body finishes itself when they leave it unread,
/// so that every answer, refusals first, reaches the client over HTTP/1.1 and HTTP/2 alike.
pub(crate) fn kept(app: &App, req: Request<Incoming>) -> Request<ProxyBody> {
    let expect_continue = req
        .headers()
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let finish = body::Finish {
        cap: FINISH_CAP,
        within: app.config.guards.body_read_timeout,
    };
    req.map(|b| body::Kept::new(body::stream(b), finish, expect_continue).boxed_unsync())
}

/// The header-read timeout of every HTTP/1.1 connection.
fn header_read_timeout(app: &App) -> Duration {
    HEADER_READ_TIMEOUT.min(app.config.guards.idle_timeout)
}

/// One of the `--max-connections` client connections.
type ConnectionSlot = Arc<tokio::sync::OwnedSemaphorePermit>;

/// A connection's place in its address's count of unauthenticated connections, until a
/// request on it authenticates.
type Unauthenticated = Arc<std::sync::Mutex<Option<crate::guard::UnauthenticatedSlot>>>;

/// What the tunnel or absolute-form request is bound to: the agent and the target that were
/// checked at the proxy layer. The target never comes from a `Host` header.
#[derive(Clone)]
pub(crate) struct Target {
    agent_id: String,
    host: String,
    port: u16,
    /// The client's address, as events record it (formatted once per tunnel).
    peer: String,
    /// The tunnel (or connection) the request came on: the job of calls that name none.
    tunnel_id: String,
    origin: Origin,
    /// The issued token the agent came in with, if any (checked again on every request).
    token: Option<Arc<crate::model::AgentToken>>,
}

/// Who sent a request: an agent through the proxy, or toolgate itself on an approver's word.
#[derive(Debug, Clone)]
pub(crate) enum Origin {
    Agent,
    /// The undo of a committed call: it is neither held for approval nor previewed, because an
    /// approver asked for it; every other phase applies.
    Undo {
        of: String,
        by: String,
    },
}

/// A call toolgate makes itself on an agent's behalf (an undo), through every phase an agent's
/// call takes, with its own request id and audit events. Returns that id, the answer, and the
/// refusal code when toolgate refused it.
pub(crate) async fn internal_call(
    app: Arc<App>,
    agent_id: &str,
    host: &str,
    port: u16,
    job: &str,
    origin: Origin,
    req: Request<ProxyBody>,
) -> (String, Response<ProxyBody>, Option<Code>) {
    let request_id = new_id("req");
    let target = Target {
        agent_id: agent_id.to_string(),
        host: host.to_string(),
        port,
        peer: SocketAddr::from(([127, 0, 0, 1], 0)).to_string(),
        tunnel_id: job.to_string(),
        origin,
        token: None,
    };
    let (resp, code) = handle(app, &target, req, request_id.clone(), Instant::now()).await;
    (request_id, resp, code)
}

/// The authenticate phase: `Proxy-Authorization: Basic base64(agent-id:token)`. The token is
/// the agent's static token, or one an approver issued it (then returned too).
async fn authenticate(
    app: &App,
    policy: &Policy,
    headers: &http::HeaderMap,
) -> Result<(Arc<Agent>, Option<Arc<crate::model::AgentToken>>), Refusal> {
    let (id, token) = basic_credentials(headers)?;
    if let Some(agent) = policy.authenticate(&id, &token) {
        return Ok((agent, None));
    }
    let wrong = || Refusal::auth_error("unknown agent or wrong token");
    let hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(token.as_bytes()));
    let issued = app
        .store
        .token_by_hash(&hash)
        .await
        .map_err(|e| Refusal::internal(format!("the token store is unavailable ({e})")))?
        .filter(|t| t.agent == id)
        .ok_or_else(wrong)?;
    in_force(Some(&issued), &issued.id)?;
    app.principals.seen_token(&issued);
    let agent = policy.agent(&id).cloned().ok_or_else(wrong)?;
    Ok((agent, Some(Arc::new(issued))))
}

/// Whether the issued token `id` (as found in the store) still lets its agent in: not expired,
/// not revoked.
fn in_force(found: Option<&crate::model::AgentToken>, id: &str) -> Result<(), Refusal> {
    if found.is_some_and(|t| t.live(crate::base::now_unix())) {
        return Ok(());
    }
    let why = format!("token {id} has expired or was revoked; ask for a new one");
    Err(Refusal::auth_error(&why))
}

/// The agent id and token of `Proxy-Authorization: Basic …`.
fn basic_credentials(headers: &http::HeaderMap) -> Result<(String, String), Refusal> {
    let Some(value) = headers.get(header::PROXY_AUTHORIZATION) else {
        return Err(Refusal::auth_required());
    };
    let value = value
        .to_str()
        .map_err(|_| Refusal::auth_error("the header is not ASCII"))?;
    let (scheme, encoded) = value
        .split_once(' ')
        .ok_or_else(|| Refusal::auth_error("expected `Basic <base64>`"))?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(Refusal::auth_error("only the Basic scheme is supported"));
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|_| Refusal::auth_error("the Basic credentials are not valid base64"))?;
    let decoded = String::from_utf8(decoded)
        .map_err(|_| Refusal::auth_error("the credentials are not UTF-8"))?;
    let (id, token) = decoded
        .split_once(':')
        .ok_or_else(|| Refusal::auth_error("expected agent-id:token"))?;
    Ok((id.to_string(), token.to_string()))
}

/// The proxy-level service: authenticates, then opens a tunnel or handles an absolute-form
/// plain-HTTP request.
async fn outer(
    app: Arc<App>,
    peer: SocketAddr,
    req: Request<Incoming>,
    (slot, unauthenticated): (ConnectionSlot, Unauthenticated),
) -> Response<ProxyBody> {
    let started = Instant::now();
    let request_id = new_id("req");
    let policy = app.policy();
    let req = kept(&app, req);
    let method = req.method().clone();
    let target_text = req.uri().to_string();
    let (agent, token) = match authenticate(&app, &policy, req.headers()).await {
        Ok(found) => {
            // The connection is an agent's now: its address's count of strangers drops.
            unauthenticated
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            found
        }
        Err(refusal) => {
            record_refusal(
                &app,
                (&request_id, started),
                (None, peer),
                "-",
                &method,
                &target_text,
                &refusal,
            )
            .await;
            return refusal.into_response(&request_id);
        }
    };
    if method == Method::CONNECT {
        let who = (agent, peer, slot, token);
        return connect(app, &policy, who, req, request_id, started).await;
    }
    let absolute = matches!(req.uri().scheme_str(), Some("http") | Some("https"));
    let Some(host) = req.uri().host().filter(|_| absolute) else {
        let refusal = Refusal::policy(
            "toolgate is a forward proxy: send requests through it with HTTPS_PROXY (CONNECT) or \
             HTTP_PROXY (absolute-form URLs), not to it directly",
        );
        record_refusal(
            &app,
            (&request_id, started),
            (Some(&agent.id), peer),
            "-",
            &method,
            &target_text,
            &refusal,
        )
        .await;
        return refusal.into_response(&request_id);
    };
    let host = host.to_string();
    let port = req.uri().port_u16();
    plain_http(
        app,
        &policy,
        (&agent, peer, token),
        (&host, port),
        req,
        request_id,
        started,
    )
    .await
}

/// A plain-HTTP request for `host` (absolute form, or a redirected connection's `Host`): sent
/// upstream over TLS — toolgate never forwards a request, nor a credential, in clear text. Port
/// 80 (or none) means the contract's TLS port.
async fn plain_http(
    app: Arc<App>,
    policy: &Policy,
    (agent, peer, token): (&Agent, SocketAddr, Option<Arc<crate::model::AgentToken>>),
    (host, port): (&str, Option<u16>),
    req: Request<ProxyBody>,
    request_id: String,
    started: Instant,
) -> Response<ProxyBody> {
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    let port = match port {
        None | Some(80) => policy.port_for_host(&host).unwrap_or(443),
        Some(p) => p,
    };
    if let Err(refusal) = egress(&app, policy, &host, port).await {
        let target_text = req.uri().to_string();
        record_refusal(
            &app,
            (&request_id, started),
            (Some(&agent.id), peer),
            &host,
            req.method(),
            &target_text,
            &refusal,
        )
        .await;
        return refusal.into_response(&request_id);
    }
    let target = Target {
        agent_id: agent.id.clone(),
        host,
        port,
        peer: peer.to_string(),
        tunnel_id: new_id("conn"),
        origin: Origin::Agent,
        token,
    };
    handle(app, &target, req, request_id, started).await.0
}

/// The egress phase: the host must be named by a contract, and must not resolve to a private
/// address unless `--connect-to` routes it explicitly.
async fn egress(app: &App, policy: &Policy, host: &str, port: u16) -> Result<(), Refusal> {
    if !policy.allows_host(host, port) {
        return Err(Refusal::egress(format!(
            "{} is not named by any tool contract; toolgate only connects to hosts that a [[tool]] entry names",
            upstream::authority(host, port)
        )));
    }
    match app.upstream.routes().resolve(host, port).await {
        Ok(_) => Ok(()),
        Err(e @ EgressError::Forbidden { .. }) => Err(Refusal::egress(e.to_string())),
        Err(e @ EgressError::Dns { .. }) => Err(Refusal::upstream(e.to_string())),
    }
}

/// Answers a CONNECT: the target is decided before the 200, then the tunnel is served.
async fn connect(
    app: Arc<App>,
    policy: &Policy,
    (agent, peer, connection, token): (
        Arc<Agent>,
        SocketAddr,
        ConnectionSlot,
        Option<Arc<crate::model::AgentToken>>,
    ),
    req: Request<ProxyBody>,
    request_id: String,
    started: Instant,
) -> Response<ProxyBody> {
    let authority = req.uri().authority().map(|a| a.as_str().to_string());
    let (host, port, slot) = match admit_tunnel(&app, policy, &agent.id, authority.as_deref()).await
    {
        Ok(admitted) => admitted,
        Err(((host, port), target_text, refusal)) => {
            record_refusal(
                &app,
                (&request_id, started),
                (Some(&agent.id), peer),
                &host,
                &Method::CONNECT,
                &target_text,
                &refusal,
            )
            .await;
            if refused_inside(&app, &refusal, (&host, port), peer) {
                return refuse_inside(app, req, (host, refusal), connection);
            }
            return refusal.into_response(&request_id);
        }
    };
    let target_text = upstream::authority(&host, port);
    let target = Target {
        agent_id: agent.id.clone(),
        host,
        port,
        peer: peer.to_string(),
        tunnel_id: new_id("tun"),
        origin: Origin::Agent,
        token,
    };
    info!(
        request_id = %request_id, agent = %agent.id, host = %target.host, method = "CONNECT",
        path = %target_text, decision = "tunnel", status = 200u16,
        latency_ms = started.elapsed().as_secs_f64() * 1000.0, "tunnel opened"
    );
    let g = app.clone();
    app.tasks.spawn(async move {
        match hyper::upgrade::on(req).await {
            Ok(upgraded) => {
                tunnel(g, Arc::new(target), TokioIo::new(upgraded), slot).await;
                drop(connection);
            }
            Err(e) => debug!(error = %e, "CONNECT upgrade failed"),
        }
    });
    let mut resp = Response::new(empty());
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    resp
}

/// Whether a CONNECT target may be tunnelled to: a HOST:PORT, past the egress check, within the
/// agent's cap of tunnels. Refused: the host and port, the target as the refusal records it,
/// and why.
async fn admit_tunnel(
    app: &Arc<App>,
    policy: &Policy,
    agent: &str,
    authority: Option<&str>,
) -> Result<(String, u16, crate::guard::TunnelSlot), ((String, u16), String, Refusal)> {
    let Some((host, port)) = authority.and_then(|a| split_host_port(a, 443)) else {
        let refusal = Refusal::policy("CONNECT needs a HOST:PORT target");
        return Err((("-".into(), 0), "-".into(), refusal));
    };
    let admitted = match egress(app, policy, &host, port).await {
        Ok(()) => app.caps.tunnel(agent).ok_or_else(|| tunnel_cap(app, agent)),
        Err(refusal) => Err(refusal),
    };
    match admitted {
        Ok(slot) => Ok((host, port, slot)),
        Err(refusal) => {
            let target_text = upstream::authority(&host, port);
            Err(((host, port), target_text, refusal))
        }
    }
}

/// How many refused tunnels one address gets answered inside TLS per minute; past it, a refused
/// CONNECT is answered 403 at the proxy as before. Each costs a minted certificate (CPU, and a
/// place in the CA's bounded cache), so a stream of made-up host names cannot spend either.
const REFUSED_INSIDE_PER_MINUTE: u32 = 60;

/// Whether a refused CONNECT is answered inside the tunnel: an egress refusal of a host name on
/// port 443, within the address's budget. Clients and SDKs show a CONNECT's own status only as
/// "tunnel failed, 403" and drop its body; inside the tunnel the refusal reaches them whole,
/// status and JSON, as the transparent listener's refusals do.
fn refused_inside(
    app: &App,
    refusal: &Refusal,
    (host, port): (&str, u16),
    peer: SocketAddr,
) -> bool {
    let name_like = !host.is_empty()
        && host.parse::<IpAddr>().is_err()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    if refusal.code != Code::EgressDenied || port != 443 || !name_like {
        return false;
    }
    let (count, _) = app.sources.count(peer.ip(), "refused_inside_tls");
    count <= REFUSED_INSIDE_PER_MINUTE
}

/// Completes a refused CONNECT (200), then the TLS handshake with a certificate for `host`
/// (the client's SNI must name it), contacts no upstream, and answers every request in the
/// tunnel with `refusal`: its status and JSON error, which curl and the SDKs show.
fn refuse_inside(
    app: Arc<App>,
    req: Request<ProxyBody>,
    (host, refusal): (String, Refusal),
    connection: ConnectionSlot,
) -> Response<ProxyBody> {
    let g = app.clone();
    app.tasks.spawn(async move {
        let Ok(upgraded) = hyper::upgrade::on(req).await else {
            return;
        };
        let activity = Activity::new();
        let io = Watched::new(TokioIo::new(upgraded), activity.clone());
        let limit = g.config.handshake_timeout;
        let Some(start) = client_hello(io, limit, "-").await else {
            return;
        };
        let sni = start
            .client_hello()
            .server_name()
            .map(str::to_ascii_lowercase);
        if sni.as_deref() != Some(host.as_str()) {
            return;
        }
        if let Some(tls) = finish_handshake(&g, start, &host, limit).await {
            transparent::answer_every_request(&g, tls, refusal, &activity).await;
        }
        drop(connection);
    });
    Response::new(empty())
}

/// An agent holding its cap of tunnels asks for one more.
fn tunnel_cap(app: &App, agent: &str) -> Refusal {
    let mut refusal = Refusal::new(
        Code::RateLimited,
        format!(
            "agent {agent} already holds {} open tunnels through toolgate, its cap; reuse or close one",
            app.config.guards.max_connections_per_agent
        ),
    );
    refusal.retry_after = Some(1);
    refusal
}

/// Serves a tunnel: TLS (intercepted with a minted leaf) or plain HTTP, told apart by the first
/// bytes; anything else is closed.
async fn tunnel<T>(app: Arc<App>, target: Arc<Target>, io: T, _slot: TunnelSlot)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Activity::new();
    let mut io = Watched::new(io, activity.clone());
    let limit = app.config.handshake_timeout;
    let (protocol, prefix) = match detect(&mut io, limit).await {
        Ok(found) => found,
        Err(e) => {
            warn!(agent = %target.agent_id, host = %target.host, error = %e, "tunnel closed");
            return;
        }
    };
    let io = Rewind::new(prefix, io);
    match protocol {
        Protocol::Http => serve_inner(app, target, io, activity).await,
        Protocol::Tls => {
            let Some(start) = client_hello(io, limit, &target.agent_id).await else {
                return;
            };
            let sni = start
                .client_hello()
                .server_name()
                .map(|s| s.to_ascii_lowercase());
            let sni_ok = match &sni {
                Some(name) => *name == target.host,
                // Clients send no SNI for IP literals.
                None => target.host.parse::<IpAddr>().is_ok(),
            };
            if !sni_ok {
                warn!(
                    agent = %target.agent_id, host = %target.host, sni = ?sni,
                    decision = "refused", code = Code::EgressDenied.as_str(),
                    "TLS SNI does not match the CONNECT host; tunnel closed"
                );
                return;
            }
            if let Some(tls) = finish_handshake(&app, start, &target.host, limit).await {
                serve_inner(app, target, tls, activity).await;
            }
        }
    }
}

/// The first half of an intercepted TLS handshake: the client's hello (for its SNI).
async fn client_hello<T>(
    io: T,
    limit: Duration,
    agent: &str,
) -> Option<tokio_rustls::StartHandshake<T>>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let acceptor = tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), io);
    match tokio::time::timeout(limit, acceptor).await {
        Ok(Ok(start)) => Some(start),
        Ok(Err(e)) => {
            warn!(%agent, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            warn!(%agent, "TLS handshake timed out");
            None
        }
    }
}

/// The second half: toolgate's leaf for `host` (minted once, then cached).
async fn finish_handshake<T>(
    app: &App,
    start: tokio_rustls::StartHandshake<T>,
    host: &str,
    limit: Duration,
) -> Option<tokio_rustls::server::TlsStream<T>>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let config = match app.ca.server_config(host) {
        Ok(c) => c,
        Err(e) => {
            warn!(%host, error = %e, "could not mint a certificate");
            return None;
        }
    };
    match tokio::time::timeout(limit, start.into_stream(config)).await {
        Ok(Ok(tls)) => Some(tls),
        Ok(Err(e)) => {
            warn!(%host, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            warn!(%host, "TLS handshake timed out");
            None
        }
    }
}

/// Serves HTTP/1.1 or HTTP/2 requests inside a tunnel.
async fn serve_inner<T>(app: Arc<App>, target: Arc<Target>, io: T, activity: Arc<Activity>)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let who = format!("agent {} host {}", target.agent_id, target.host);
    let g = app.clone();
    let t = target.clone();
    let a = activity.clone();
    let svc = service_fn(move |req| {
        let app = g.clone();
        let target = t.clone();
        let in_flight = a.request();
        async move {
            let started = Instant::now();
            let request_id = new_id("req");
            let req = kept(&app, req);
            let (resp, _) = handle(app, &target, req, request_id, started).await;
            drop(in_flight);
            Ok::<_, Infallible>(resp)
        }
    });
    serve_http(&app, io, svc, &activity, &who).await;
}

/// Serves HTTP/1.1 or HTTP/2 (whichever the client speaks) on a connection: a tunnel's, or one
/// the transparent listener took. Every such connection has the same guards: the header-read
/// timeout (HTTP/1.1), the idle timeout (both: no bytes moving and no request in flight, which
/// also ends a request head or an HTTP/2 preface that stopped half-way), the HTTP/2 stream and
/// window limits, and a graceful end at shutdown. `who` names the connection in the logs.
pub(crate) async fn serve_http<T, S>(app: &App, io: T, svc: S, activity: &Activity, who: &str)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<
            Request<Incoming>,
            Response = Response<ProxyBody>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let guards = &app.config.guards;
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout(app))
        .max_buf_size(MAX_HEADER_BYTES);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(guards.max_streams)
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONNECTION_WINDOW)
        .max_header_list_size(MAX_HEADER_BYTES as u32)
        .max_pending_accept_reset_streams(Some(64))
        .max_local_error_reset_streams(Some(256));
    let conn = builder.serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    tokio::select! {
        res = conn.as_mut() => if let Err(e) = res {
            debug!(conn = %who, error = %e, "connection ended with an error")
        },
        _ = app.cancel.cancelled() => {
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = app.abandon.cancelled() => debug!(conn = %who, "connection closed at the end of the shutdown grace"),
            }
        }
        _ = activity.idle(guards.idle_timeout) => {
            debug!(conn = %who, "idle connection closed");
        }
    }
}

/// One request inside a tunnel (or in absolute form): every phase, then the record phase; a
/// refusal from any phase is answered at the one rescue point, [`rescue`].
async fn handle(
    app: Arc<App>,
    target: &Target,
    req: Request<ProxyBody>,
    request_id: String,
    started: Instant,
) -> (Response<ProxyBody>, Option<Code>) {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let (job, job_refused) = match job_of(&app, target, req.headers()).await {
        Ok(job) => (job, None),
        Err(refusal) => (target.tunnel_id.clone(), Some(refusal)),
    };
    let mut trail = asked(&app, target, &req, (request_id.clone(), job));
    let result = match job_refused {
        Some(refusal) => Err(refusal),
        None => request::process(&app, target, req, &mut trail).await,
    };
    let (mut resp, refused) = match result {
        Ok(resp) => (resp, None),
        Err(refusal) => {
            let code = refusal.code;
            (rescue(&app, &trail, refusal).await, Some(code))
        }
    };
    // A path that recorded nothing else still records what was asked.
    trail.flush(&app.audit).await;
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    let (decision, code) = match refused {
        None => ("forwarded", ""),
        Some(code) => ("refused", code.as_str()),
    };
    let tool_name = trail.tool.as_deref().unwrap_or("-");
    let status = resp.status().as_u16();
    app.metrics
        .observe(tool_name, decision, status, started.elapsed().as_secs_f64());
    info!(
        request_id = %request_id, agent = %target.agent_id, peer = %target.peer, host = %target.host,
        method = %method, path = %path, tool = tool_name, decision, code, status,
        latency_ms = started.elapsed().as_secs_f64() * 1000.0, "request"
    );
    (resp, refused)
}

/// The start of the record phase: a request's trail, holding what was asked until the next
/// event of the request (or folded into one event with the answer of a read).
fn asked(
    app: &App,
    target: &Target,
    req: &Request<ProxyBody>,
    (request_id, job): (String, String),
) -> request::Trail {
    let mut trail =
        request::Trail::new(request_id, job, target.agent_id.clone(), app.audit.clone());
    trail.token = target.token.as_ref().map(|t| t.id.clone());
    let (undoes, asked_by) = match &target.origin {
        Origin::Undo { of, by } => (Some(of.as_str()), Some(by.as_str())),
        Origin::Agent => (None, None),
    };
    let mut asked = serde_json::json!({
        "method": req.method().as_str(),
        "host": target.host,
        "port": target.port,
        "path": crate::audit::cap_text(req.uri().path(), crate::audit::URI_CAP),
        "query": crate::audit::cap_text(req.uri().query().unwrap_or(""), crate::audit::URI_CAP),
        "peer": target.peer,
        "undoes": undoes,
        "asked_by": asked_by,
    });
    // Set apart: `json!` would copy the map through a serializer.
    asked["headers"] = crate::audit::headers_json(req.headers());
    trail.hold_request(asked);
    trail
}

/// The one rescue point: a refusal from any phase is recorded and answered here, as JSON with
/// its code (or, for an MCP message, as the JSON-RPC error its client reads).
async fn rescue(app: &App, trail: &request::Trail, refusal: Refusal) -> Response<ProxyBody> {
    let refusal = match &trail.tool {
        Some(t) if refusal.tool.is_none() => refusal.with_tool(t.clone()),
        _ => refusal,
    };
    if refusal.code.source() == crate::error::ErrorSource::Upstream {
        warn!(request_id = %trail.request_id, error = %refusal.message, "upstream failure");
    }
    record_refused(app, trail, &refusal).await;
    match &trail.mcp {
        Some(reply) => mcp::refusal_answer(reply, &refusal),
        None => refusal.into_response(&trail.request_id),
    }
}

/// The record phase of a refused request: what was asked, then the refusal.
async fn record_refused(app: &App, trail: &request::Trail, refusal: &Refusal) {
    let code = refusal.code;
    let mut rec = trail.rec(
        crate::audit::Kind::Decision,
        serde_json::json!({"outcome": "refused", "code": code.as_str(), "status": code.status().as_u16(), "message": refusal.message}),
    );
    rec.proposal = refusal.proposal.clone();
    if code == Code::StoreUnavailable {
        // The log's queue does not drain while it cannot be written: the refusal is recorded
        // if there is room, and never waits for it.
        trail.flush_if_room(&app.audit);
        app.audit.record_if_room(rec);
    } else {
        trail.flush(&app.audit).await;
        app.audit.record(rec).await;
    }
}

/// The job a request belongs to: its `Toolgate-Job`, else its tunnel. A job belongs to the agent
/// that named it first (or to agents of the same owner): another agent naming it is refused, so
/// it cannot slip calls into someone else's story or rollback set.
async fn job_of(app: &App, target: &Target, headers: &http::HeaderMap) -> Result<String, Refusal> {
    if let Some(t) = &target.token {
        // Checked on every request: an expiry or a revocation ends an open tunnel too.
        let current = app
            .principals
            .token(&t.id)
            .await
            .map_err(|e| Refusal::internal(format!("the token store is unavailable ({e})")))?;
        in_force(current.as_ref(), &t.id)?;
        // A job-bound token's calls belong to its job.
        if let Some(job) = &t.job {
            return Ok(job.clone());
        }
    }
    let Some(value) = headers.get("toolgate-job") else {
        return Ok(target.tunnel_id.clone());
    };
    let job = value
        .to_str()
        .ok()
        .filter(|j| crate::base::job_id_ok(j))
        .ok_or_else(|| {
            Refusal::new(
                Code::ValidationError,
                format!("Toolgate-Job must be {}", crate::base::JOB_ID_RULE),
            )
        })?;
    // Toolgate's own calls (undos) carry the job of the call they undo.
    if matches!(target.origin, Origin::Undo { .. }) {
        return Ok(job.to_string());
    }
    let owner = app
        .policy()
        .agent(&target.agent_id)
        .map(|a| a.owner.clone())
        .unwrap_or_default();
    match app.store.job_claim(job, &target.agent_id, &owner).await {
        Ok(None) => Ok(job.to_string()),
        Ok(Some(holder)) => Err(Refusal::policy(format!(
            "job {job} belongs to agent {holder}; name a job of your own in Toolgate-Job"
        ))),
        Err(e) => Err(Refusal::internal(format!(
            "the job store is unavailable ({e}); nothing was sent"
        ))),
    }
}

/// The record phase for refusals that happen before a tunnel exists. What one refusal records
/// is capped, and a flood of one kind from one address is recorded as its first events plus a
/// count: unauthenticated clients must not be able to fill the disk.
async fn record_refusal(
    app: &App,
    (request_id, started): (&str, Instant),
    (agent, peer): (Option<&str>, SocketAddr),
    host: &str,
    method: &Method,
    path: &str,
    refusal: &Refusal,
) {
    let (count, ended) = app.sources.count(peer.ip(), refusal.code.as_str());
    if let Some(n) = ended.filter(|n| *n > REFUSALS_RECORDED_PER_MINUTE) {
        app.audit.record(crate::audit::Record {
            kind: crate::audit::Kind::Decision,
            agent: agent.map(str::to_string),
            payload: serde_json::json!({
                "outcome": "refused", "code": refusal.code.as_str(), "peer": peer.ip().to_string(),
                "repeated": n - REFUSALS_RECORDED_PER_MINUTE,
                "note": "refusals of this kind from this address in the minute before, not recorded one by one",
            }),
            ..Default::default()
        }).await;
    }
    if count <= REFUSALS_RECORDED_PER_MINUTE {
        app.audit.record(crate::audit::Record {
            kind: crate::audit::Kind::Decision,
            request_id: Some(request_id.to_string()),
            agent: agent.map(str::to_string),
            payload: serde_json::json!({
                "outcome": "refused", "code": refusal.code.as_str(), "status": refusal.code.status().as_u16(),
                "message": crate::audit::cap_text(&refusal.message, crate::audit::URI_CAP),
                "method": method.as_str(),
                "host": crate::audit::cap_text(host, 256),
                "target": crate::audit::cap_text(path, crate::audit::URI_CAP),
                "peer": peer.ip().to_string(),
            }),
            ..Default::default()
        }).await;
    }
    info!(
        request_id = %request_id, agent = agent.unwrap_or("-"), host = %crate::audit::cap_text(host, 256), method = %method,
        path = %crate::audit::cap_text(path, 256), tool = "-", decision = "refused", code = refusal.code.as_str(),
        status = refusal.code.status().as_u16(),
        latency_ms = started.elapsed().as_secs_f64() * 1000.0, "request"
    );
}

/// Refusals of one kind from one address recorded one by one per minute; the rest are counted.
const REFUSALS_RECORDED_PER_MINUTE: u32 = 20;
