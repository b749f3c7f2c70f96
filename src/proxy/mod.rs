//! The proxy: accept, authenticate, CONNECT, TLS interception, and the per-request phases.
//!
//! A request goes through named phases: `authenticate` (outer connection), `egress` (CONNECT
//! target), then per request inside the tunnel `match_tool`, `forward`, and `record`, which runs
//! on every exit, refusals included.

mod ctx;
mod exchange;
mod graphql;
mod handle;
mod mcp;
pub mod model;
mod person;
mod read;
mod request;
mod requested_by;
pub mod rewind;
pub mod scrub;
pub mod tool_requests;
mod trace;
pub(crate) mod transparent;
mod unmatched;

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

use crate::app::Gate;
use crate::base::{body, new_id, new_request_id, split_host_port};
use crate::error::{Code, Refusal};
use crate::guard::{Activity, TunnelSlot, Watched};
use crate::policy::{Agent, Policy};
use crate::tls::Served;
use crate::upstream::{self, EgressError};
use body::{empty, ProxyBody};
use rewind::{detect, Protocol, Rewind};

pub use crate::base::net::REQUEST_ID_HEADER;
use ctx::Outer;
pub(crate) use ctx::Target;
pub(crate) use handle::internal_call;
use handle::{handle, record_outer, refuse_outer};

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

/// Accepts proxy connections until `shutdown` resolves: plain HTTP, or with `tls` each
/// connection's first exchange is a TLS handshake (`--listen-tls`), and everything after it, the
/// CONNECT with its `Proxy-Authorization` and the tunnel with toolgate's own TLS inside, runs in
/// that session.
pub(crate) async fn accept_loop(
    app: Arc<Gate>,
    listener: TcpListener,
    tls: Option<Arc<Served>>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        // At the connection cap, further clients wait in the kernel's backlog.
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            p = app.connections().clone().acquire_owned() => match p {
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
                    let slot = Arc::new(permit);
                    app.tasks().spawn(serve_client(app.clone(), stream, peer, slot, tls.clone()));
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

/// Serves one agent connection: HTTP/1.1 to the proxy itself (CONNECT or absolute form), in
/// clear or inside the TLS session `tls` serves. The connection holds `slot` (one of
/// `--max-connections`) as long as it is open, tunnels upgraded from it included.
async fn serve_client(
    app: Arc<Gate>,
    stream: TcpStream,
    peer: SocketAddr,
    slot: ConnectionSlot,
    tls: Option<Arc<Served>>,
) {
    // Counted against its address until a request authenticates: one address cannot hold the
    // listener's slots with request heads (or TLS handshakes) that never finish.
    let Some(unauthenticated) = app.caps().unauthenticated(peer.ip()) else {
        return too_many_unauthenticated(&app, peer);
    };
    let unauthenticated = Arc::new(std::sync::Mutex::new(Some(unauthenticated)));
    let Some(tls) = tls else {
        return serve_agent(app, stream, peer, slot, unauthenticated).await;
    };
    let limit = app.config().handshake_timeout;
    tokio::select! {
        done = tokio::time::timeout(limit, tls.acceptor().accept(stream)) => match done {
            Ok(Ok(stream)) => serve_agent(app, stream, peer, slot, unauthenticated).await,
            Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake on the proxy listener failed"),
            Err(_) => debug!(%peer, "TLS handshake on the proxy listener timed out"),
        },
        _ = app.cancel().cancelled() => {}
    }
}

/// [`serve_client`] once the connection speaks HTTP.
async fn serve_agent<T>(
    app: Arc<Gate>,
    stream: T,
    peer: SocketAddr,
    slot: ConnectionSlot,
    unauthenticated: Unauthenticated,
) where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Activity::new();
    let g = app.clone();
    let a = activity.clone();
    let svc = service_fn(move |req| {
        let app = g.clone();
        let in_flight = a.request();
        let conn = Connection {
            slot: slot.clone(),
            unauthenticated: unauthenticated.clone(),
        };
        async move {
            let resp = outer(app, peer, req, conn).await;
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
    let idle = app.config().guards.idle_timeout;
    tokio::select! {
        res = conn.as_mut() => if let Err(e) = res { debug!(%peer, error = %e, "client connection ended with an error") },
        _ = app.cancel().cancelled() => {
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = app.abandon().cancelled() => debug!(%peer, "client connection closed at the end of the shutdown grace"),
            }
        }
        _ = activity.idle(idle) => debug!(%peer, "idle client connection closed"),
    }
}

/// A connection from an address holding its cap of unauthenticated connections, closed
/// unserved (logged once a minute per address).
fn too_many_unauthenticated(app: &Gate, peer: SocketAddr) {
    let (count, _) = app.sources().count(peer.ip(), "unauthenticated_over_cap");
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
pub(crate) fn kept(app: &Gate, req: Request<Incoming>) -> Request<ProxyBody> {
    let expect_continue = req
        .headers()
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let finish = body::Finish {
        cap: FINISH_CAP,
        within: app.config().guards.body_read_timeout,
    };
    req.map(|b| body::Kept::new(body::stream(b), finish, expect_continue).boxed_unsync())
}

/// The header-read timeout of every HTTP/1.1 connection.
fn header_read_timeout(app: &Gate) -> Duration {
    HEADER_READ_TIMEOUT.min(app.config().guards.idle_timeout)
}

/// One of the `--max-connections` client connections.
type ConnectionSlot = Arc<tokio::sync::OwnedSemaphorePermit>;

/// A connection's place in its address's count of unauthenticated connections, until a
/// request on it authenticates.
type Unauthenticated = Arc<std::sync::Mutex<Option<crate::guard::UnauthenticatedSlot>>>;

/// What a client connection holds, for each of its requests.
struct Connection {
    slot: ConnectionSlot,
    unauthenticated: Unauthenticated,
}

/// The authenticate phase: `Proxy-Authorization: Basic base64(agent-id:token)`. The token is
/// the agent's static token, or one an approver issued it (then returned too).
async fn authenticate(
    app: &Gate,
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
        .store()
        .token_by_hash(&hash)
        .await
        .map_err(|e| Refusal::internal(format!("the token store is unavailable ({e})")))?
        .filter(|t| t.agent == id)
        .ok_or_else(wrong)?;
    in_force(Some(&issued), &issued.id)?;
    app.principals().seen_token(&issued);
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
    app: Arc<Gate>,
    peer: SocketAddr,
    req: Request<Incoming>,
    conn: Connection,
) -> Response<ProxyBody> {
    let req = kept(&app, req);
    let mut outer = Outer::new(peer, req.method().clone(), req.uri().to_string());
    let policy = app.policy();
    match authenticate(&app, &policy, req.headers()).await {
        Ok((agent, token)) => {
            // The connection is an agent's now: its address's count of strangers drops.
            conn.unauthenticated
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            outer.agent = Some(agent.id.clone());
            outer.token = token;
        }
        Err(refusal) => return refuse_outer(&app, &outer, refusal).await,
    };
    if outer.method == Method::CONNECT {
        return connect(app, &policy, outer, req, conn.slot).await;
    }
    let absolute = matches!(req.uri().scheme_str(), Some("http") | Some("https"));
    let Some(host) = req.uri().host().filter(|_| absolute) else {
        let refusal = Refusal::policy(
            "toolgate is a forward proxy: send requests through it with HTTPS_PROXY (CONNECT) or \
             HTTP_PROXY (absolute-form URLs), not to it directly",
        );
        return refuse_outer(&app, &outer, refusal).await;
    };
    outer.host = host.to_string();
    let port = req.uri().port_u16();
    plain_http(app, policy, outer, port, req).await
}

/// A plain-HTTP request for `outer.host` (absolute form, or a redirected connection's `Host`):
/// sent upstream over TLS — toolgate never forwards a request, nor a credential, in clear
/// text. Port 80 (or none) means the contract's TLS port.
async fn plain_http(
    app: Arc<Gate>,
    policy: Arc<Policy>,
    mut outer: Outer,
    port: Option<u16>,
    req: Request<ProxyBody>,
) -> Response<ProxyBody> {
    outer.host = outer
        .host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    let port = match port {
        None | Some(80) => policy.port_for_host(&outer.host).unwrap_or(443),
        Some(p) => p,
    };
    if let Err(refusal) = egress(&app, &policy, &outer.host, port).await {
        return refuse_outer(&app, &outer, refusal).await;
    }
    let target = Target::of(&outer, port, new_id("conn"));
    let started = outer.started;
    handle(
        app,
        Arc::new(target),
        policy,
        req,
        outer.request_id,
        started,
    )
    .await
    .0
}

/// The egress phase: the host must be named by a contract, and must not resolve to a private
/// address unless `--connect-to` routes it explicitly.
async fn egress(app: &Gate, policy: &Policy, host: &str, port: u16) -> Result<(), Refusal> {
    if !policy.allows_host(host, port) {
        return Err(Refusal::egress(format!(
            "{} is not named by any tool contract; toolgate only connects to hosts that a [[tool]] entry names",
            upstream::authority(host, port)
        )));
    }
    match app.upstream().routes().resolve(host, port).await {
        Ok(_) => Ok(()),
        Err(e @ EgressError::Forbidden { .. }) => Err(Refusal::egress(e.to_string())),
        Err(e @ EgressError::Dns { .. }) => Err(Refusal::upstream(e.to_string())),
    }
}

/// Answers a CONNECT: the target is decided before the 200, then the tunnel is served.
async fn connect(
    app: Arc<Gate>,
    policy: &Policy,
    mut outer: Outer,
    req: Request<ProxyBody>,
    connection: ConnectionSlot,
) -> Response<ProxyBody> {
    let authority = req.uri().authority().map(|a| a.as_str().to_string());
    let agent = outer.agent.clone().unwrap_or_default();
    let (port, slot) = match admit_tunnel(&app, policy, &mut outer, authority.as_deref()).await {
        Ok(admitted) => admitted,
        Err((port, refusal)) => {
            if refused_inside(&app, &refusal, &outer.host, port, outer.peer) {
                record_outer(&app, &outer, &refusal).await;
                return refuse_inside(app, req, outer.host, refusal, connection);
            }
            return refuse_outer(&app, &outer, refusal).await;
        }
    };
    let target = Target::of(&outer, port, new_id("tun"));
    info!(
        request_id = %outer.request_id, agent = %agent, host = %target.host, method = "CONNECT",
        path = %outer.target, decision = "tunnel", status = 200u16,
        latency_ms = outer.started.elapsed().as_secs_f64() * 1000.0, "tunnel opened"
    );
    let g = app.clone();
    app.tasks().spawn(async move {
        match hyper::upgrade::on(req).await {
            Ok(upgraded) => {
                tunnel(g, Arc::new(target), TokioIo::new(upgraded), slot).await;
                drop(connection);
            }
            Err(e) => debug!(error = %e, "CONNECT upgrade failed"),
        }
    });
    let mut resp = Response::new(empty());
    if let Ok(v) = HeaderValue::from_str(&outer.request_id) {
        resp.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    resp
}

/// Whether a CONNECT target may be tunnelled to: a HOST:PORT, past the egress check, within the
/// agent's cap of tunnels. The host and the target as the refusal records them are noted in
/// `outer`; refused, the port with why.
async fn admit_tunnel(
    app: &Arc<Gate>,
    policy: &Policy,
    outer: &mut Outer,
    authority: Option<&str>,
) -> Result<(u16, crate::guard::TunnelSlot), (u16, Refusal)> {
    let Some((host, port)) = authority.and_then(|a| split_host_port(a, 443)) else {
        outer.target = "-".into();
        return Err((0, Refusal::policy("CONNECT needs a HOST:PORT target")));
    };
    outer.target = upstream::authority(&host, port);
    outer.host = host;
    let agent = outer.agent.as_deref().unwrap_or_default();
    let admitted = match egress(app, policy, &outer.host, port).await {
        Ok(()) => app
            .caps()
            .tunnel(agent)
            .ok_or_else(|| tunnel_cap(app, agent)),
        Err(refusal) => Err(refusal),
    };
    admitted.map(|slot| (port, slot)).map_err(|r| (port, r))
}

/// How many refused tunnels one address gets answered inside TLS per minute; past it, a refused
/// CONNECT is answered 403 at the proxy as before. Each costs a minted certificate (CPU, and a
/// place in the CA's bounded cache), so a stream of made-up host names cannot spend either.
const REFUSED_INSIDE_PER_MINUTE: u32 = 60;

/// Whether a refused CONNECT is answered inside the tunnel: an egress refusal of a host name on
/// port 443, within the address's budget. Clients and SDKs show a CONNECT's own status only as
/// "tunnel failed, 403" and drop its body; inside the tunnel the refusal reaches them whole,
/// status and JSON, as the transparent listener's refusals do.
fn refused_inside(app: &Gate, refusal: &Refusal, host: &str, port: u16, peer: SocketAddr) -> bool {
    let name_like = !host.is_empty()
        && host.parse::<IpAddr>().is_err()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    if refusal.code != Code::EgressDenied || port != 443 || !name_like {
        return false;
    }
    let (count, _) = app.sources().count(peer.ip(), "refused_inside_tls");
    count <= REFUSED_INSIDE_PER_MINUTE
}

/// Completes a refused CONNECT (200), then the TLS handshake with a certificate for `host`
/// (the client's SNI must name it), contacts no upstream, and answers every request in the
/// tunnel with `refusal`: its status and JSON error, which curl and the SDKs show.
fn refuse_inside(
    app: Arc<Gate>,
    req: Request<ProxyBody>,
    host: String,
    refusal: Refusal,
    connection: ConnectionSlot,
) -> Response<ProxyBody> {
    let g = app.clone();
    app.tasks().spawn(async move {
        let Ok(upgraded) = hyper::upgrade::on(req).await else {
            return;
        };
        let activity = Activity::new();
        let io = Watched::new(TokioIo::new(upgraded), activity.clone());
        let limit = g.config().handshake_timeout;
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
fn tunnel_cap(app: &Gate, agent: &str) -> Refusal {
    let mut refusal = Refusal::new(
        Code::RateLimited,
        format!(
            "agent {agent} already holds {} open tunnels through toolgate, its cap; reuse or close one",
            app.config().guards.max_connections_per_agent
        ),
    );
    refusal.retry_after = Some(1);
    refusal
}

/// Serves a tunnel: TLS (intercepted with a minted leaf) or plain HTTP, told apart by the first
/// bytes; anything else is closed.
async fn tunnel<T>(app: Arc<Gate>, target: Arc<Target>, io: T, _slot: TunnelSlot)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Activity::new();
    let mut io = Watched::new(io, activity.clone());
    let limit = app.config().handshake_timeout;
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
    app: &Gate,
    start: tokio_rustls::StartHandshake<T>,
    host: &str,
    limit: Duration,
) -> Option<tokio_rustls::server::TlsStream<T>>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let config = match app.ca().server_config(host) {
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
async fn serve_inner<T>(app: Arc<Gate>, target: Arc<Target>, io: T, activity: Arc<Activity>)
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
            let request_id = new_request_id();
            let req = kept(&app, req);
            let policy = app.policy();
            let (resp, _) = handle(app, target, policy, req, request_id, started).await;
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
pub(crate) async fn serve_http<T, S>(app: &Gate, io: T, svc: S, activity: &Activity, who: &str)
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
    let guards = &app.config().guards;
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
        _ = app.cancel().cancelled() => {
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = app.abandon().cancelled() => debug!(conn = %who, "connection closed at the end of the shutdown grace"),
            }
        }
        _ = activity.idle(guards.idle_timeout) => {
            debug!(conn = %who, "idle connection closed");
        }
    }
}
