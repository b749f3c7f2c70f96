//! The transparent listener (`--transparent-listen`): connections the kernel redirected to
//! toolgate (nftables/iptables `REDIRECT` or `DNAT` of an agent network's ports 443 and 80), for
//! clients that ignore `HTTPS_PROXY`. The agent is the one whose `sources` hold the client's
//! address; the host is the TLS SNI (or the `Host` of plain HTTP); the port is the original
//! destination's (`SO_ORIGINAL_DST`). From there on, the same phases as a CONNECT tunnel.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::service::service_fn;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::OwnedSemaphorePermit;
use tracing::{debug, warn};

use super::{
    client_hello, detect, egress, finish_handshake, plain_http, record_outer, refuse_outer,
    serve_http, serve_inner, Outer, Protocol, Rewind, Target,
};
use crate::app::Gate;
use crate::base::{new_id, new_request_id};
use crate::error::{Code, Refusal};
use crate::guard::{Activity, StrangerSlot, Watched};
use crate::policy::Agent;

/// How long a connection from an address that no agent's `sources` holds may stay open at
/// all: it only ever gets refusals.
const STRANGER_LIFETIME: Duration = Duration::from_secs(30);

/// What a redirected connection holds while it is open.
enum Slot {
    /// An agent's connection: one of the `--max-connections` slots.
    Agent { _slot: OwnedSemaphorePermit },
    /// A stranger's: within its address's cap and the strangers' share of the slots.
    Stranger { _slot: StrangerSlot },
}

/// Accepts redirected connections until toolgate stops. `own` are toolgate's own listening
/// addresses: a connection whose original destination is one of them is a loop, refused.
///
/// The client's address decides what a connection may take: an agent's waits for one of the
/// `--max-connections` slots (the next connections wait in the kernel's backlog meanwhile, as
/// on the proxy listener); a stranger's (no agent's `sources` holds it) is closed at once when
/// its address holds its cap or strangers hold their share of the slots, so that strangers
/// can never keep agents, on this listener or the proxy listener, from connecting.
pub(crate) async fn accept_loop(app: Arc<Gate>, listener: TcpListener, own: Vec<SocketAddr>) {
    let own = Arc::new(own);
    loop {
        let (stream, peer) = tokio::select! {
            _ = app.cancel().cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    warn!(error = %e, "transparent accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let agent = app.policy().agent_for_source(peer.ip());
        let slot = match &agent {
            Some(_) => tokio::select! {
                _ = app.cancel().cancelled() => break,
                p = app.connections().clone().acquire_owned() => match p {
                    Ok(p) => Slot::Agent { _slot: p },
                    Err(_) => break,
                },
            },
            None => match app.caps().stranger(peer.ip(), app.connections()) {
                Some(slot) => Slot::Stranger { _slot: slot },
                None => {
                    turned_away(&app, peer);
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let (app2, own) = (app.clone(), own.clone());
        app.tasks().spawn(async move {
            match slot {
                Slot::Agent { .. } => serve(app2, stream, peer, agent, &own).await,
                Slot::Stranger { .. } => {
                    let serving = serve(app2, stream, peer, None, &own);
                    if tokio::time::timeout(STRANGER_LIFETIME, serving).await.is_err() {
                        debug!(%peer, "connection from an unknown source closed at the end of its lifetime");
                    }
                }
            }
            drop(slot);
        });
    }
}

/// A stranger's connection over its caps, closed unserved (logged once a minute per address).
fn turned_away(app: &Gate, peer: SocketAddr) {
    let (count, _) = app.sources().count(peer.ip(), "unknown_source_over_cap");
    if count == 1 {
        warn!(
            %peer, decision = "refused",
            per_address = app.config().guards.max_connections_per_unknown_source,
            all_unknown = app.config().guards.unknown_sources_max(),
            "a connection from an address that no agent's sources holds is over its cap; closed \
             (further ones from this address this minute are closed without a log line)"
        );
    }
}

/// Where the client meant to connect before the kernel redirected it here.
fn original_destination(stream: &TcpStream) -> std::io::Result<SocketAddr> {
    let sock = socket2::SockRef::from(stream);
    let addr = match stream.local_addr()? {
        SocketAddr::V4(_) => sock.original_dst_v4()?,
        SocketAddr::V6(_) => sock.original_dst_v6()?,
    };
    addr.as_socket()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "not an IP address"))
}

/// Whether `dst` is one of toolgate's own listeners (or the connection was not redirected).
fn is_own(dst: SocketAddr, local: SocketAddr, own: &[SocketAddr]) -> bool {
    let same = |a: SocketAddr, b: SocketAddr| {
        a.port() == b.port()
            && (a.ip().to_canonical() == b.ip().to_canonical() || b.ip().is_unspecified())
    };
    same(dst, local) || own.iter().any(|o| same(dst, *o))
}

async fn serve(
    app: Arc<Gate>,
    stream: TcpStream,
    peer: SocketAddr,
    agent: Option<Arc<Agent>>,
    own: &[SocketAddr],
) {
    let started = Instant::now();
    let dst = match (original_destination(&stream), stream.local_addr()) {
        (Ok(dst), Ok(local)) if !is_own(dst, local, own) => dst,
        (Ok(dst), _) => {
            warn!(
                %peer, original_destination = %dst, decision = "refused",
                "a connection to the transparent listener was not redirected from an agent network \
                 (its destination is toolgate itself: a direct connection or a redirect loop); closed"
            );
            return;
        }
        (Err(e), _) => {
            warn!(%peer, error = %e, decision = "refused", "no original destination for a transparent connection (not redirected by the kernel); closed");
            return;
        }
    };
    let activity = Activity::new();
    let mut io = Watched::new(stream, activity.clone());
    let limit = app.config().handshake_timeout;
    let (protocol, prefix) = match detect(&mut io, limit).await {
        Ok(found) => found,
        Err(e) => {
            debug!(%peer, error = %e, "transparent connection closed");
            return;
        }
    };
    let io = Rewind::new(prefix, io);
    match protocol {
        Protocol::Http => plain(app, agent, peer, dst, io, activity).await,
        Protocol::Tls => tls(app, agent, peer, dst, io, activity, started).await,
    }
}

/// A refusal for a client whose address no agent's `sources` holds.
fn unknown_source(peer: SocketAddr) -> Refusal {
    Refusal::new(
        Code::AuthRequired,
        format!(
            "{} is not the source address of any agent: add it to an [[agent]]'s sources, or send \
             requests through the proxy listener with Proxy-Authorization",
            peer.ip().to_canonical()
        ),
    )
}

async fn tls<T>(
    app: Arc<Gate>,
    agent: Option<Arc<Agent>>,
    peer: SocketAddr,
    dst: SocketAddr,
    io: T,
    activity: Arc<Activity>,
    started: Instant,
) where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limit = app.config().handshake_timeout;
    let who = agent.as_ref().map_or("-", |a| a.id.as_str());
    let Some(start) = client_hello(io, limit, who).await else {
        return;
    };
    let policy = app.policy();
    let mut outer = Outer::new(peer, http::Method::CONNECT, "-".into());
    outer.started = started;
    outer.agent = agent.as_ref().map(|a| a.id.clone());
    let refuse = |refusal: Refusal, host: String| {
        let (app, mut outer) = (app.clone(), outer.clone());
        async move {
            outer.target = format!("{host}:{}", dst.port());
            outer.host = host;
            warn!(%peer, host = %outer.host, code = refusal.code.as_str(), "transparent connection refused: {}", refusal.message);
            record_outer(&app, &outer, &refusal).await;
        }
    };
    let Some(host) = start
        .client_hello()
        .server_name()
        .map(str::to_ascii_lowercase)
    else {
        let refusal = Refusal::egress(format!(
            "a TLS connection to {dst} sent no server name (SNI): toolgate cannot tell which API \
             it is for; clients must connect by host name"
        ));
        return refuse(refusal, "-".into()).await;
    };
    // An uncontracted host is refused before any certificate is minted or upstream touched.
    if let Err(refusal) = egress(&app, &policy, &host, dst.port()).await {
        return refuse(refusal, host).await;
    }
    let admitted = match &agent {
        None => Err(unknown_source(peer)),
        Some(a) => match app.caps().tunnel(&a.id) {
            Some(slot) => Ok((a.clone(), slot)),
            None => Err(super::tunnel_cap(&app, &a.id)),
        },
    };
    let Some(tls) = finish_handshake(&app, start, &host, limit).await else {
        return;
    };
    match admitted {
        Ok((_agent, _slot)) => {
            outer.host = host;
            let target = Target::of(&outer, dst.port(), new_id("tun"));
            serve_inner(app.clone(), Arc::new(target), tls, activity).await;
        }
        Err(refusal) => {
            refuse(refusal.clone(), host).await;
            answer_every_request(&app, tls, refusal, &activity).await;
        }
    }
}

/// One request on a redirected port 80: sent on as its agent's call to the API its `Host`
/// names, or refused (an unknown source, or no `Host`) and recorded.
async fn plain_request(
    app: Arc<Gate>,
    agent: Option<Arc<Agent>>,
    peer: SocketAddr,
    default_port: u16,
    req: http::Request<hyper::body::Incoming>,
) -> http::Response<crate::base::body::ProxyBody> {
    let req = super::kept(&app, req);
    let mut outer = Outer::new(peer, req.method().clone(), req.uri().to_string());
    outer.agent = agent.as_ref().map(|a| a.id.clone());
    let host = req
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| crate::base::split_host_port(h, default_port));
    let policy = app.policy();
    if let (Some(_), Some((host, port))) = (&agent, host.clone()) {
        outer.host = host;
        return plain_http(app.clone(), policy, outer, Some(port), req).await;
    }
    // A known source without a Host header is still that agent's refusal.
    let refusal = match &agent {
        None => unknown_source(peer),
        Some(_) => Refusal::new(
            Code::ValidationError,
            "a plain-HTTP request needs a Host header naming the API",
        ),
    };
    if let Some((host, _)) = host {
        outer.host = host;
    }
    refuse_outer(&app, &outer, refusal).await
}

/// Plain HTTP on a redirected port 80: each request's `Host` names its API; it is sent upstream
/// over TLS like an absolute-form request on the proxy listener.
async fn plain<T>(
    app: Arc<Gate>,
    agent: Option<Arc<Agent>>,
    peer: SocketAddr,
    dst: SocketAddr,
    io: T,
    activity: Arc<Activity>,
) where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // An agent's plain-HTTP connection counts against its cap, as a tunnel does.
    let _slot = match &agent {
        None => None,
        Some(a) => match app.caps().tunnel(&a.id) {
            Some(slot) => Some(slot),
            None => {
                let refusal = super::tunnel_cap(&app, &a.id);
                warn!(%peer, agent = %a.id, code = refusal.code.as_str(), "transparent connection refused: {}", refusal.message);
                return answer_every_request(&app, io, refusal, &activity).await;
            }
        },
    };
    let who = format!(
        "plain HTTP from {peer} (agent {})",
        agent.as_ref().map_or("-", |a| a.id.as_str())
    );
    let g = app.clone();
    let a = activity.clone();
    let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let (app, agent) = (g.clone(), agent.clone());
        let activity = &a;
        let in_flight = activity.request();
        async move {
            let resp = plain_request(app, agent, peer, dst.port(), req).await;
            drop(in_flight);
            Ok::<_, Infallible>(resp)
        }
    });
    serve_http(&app, io, svc, &activity, &who).await;
}

/// After a completed handshake with a client toolgate will not serve: every request on the
/// connection gets `refusal` as JSON (under the guards of every connection, and for at most
/// `STRANGER_LIFETIME`).
pub(super) async fn answer_every_request<T>(
    app: &Arc<Gate>,
    io: T,
    refusal: Refusal,
    activity: &Activity,
) where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let g = app.clone();
    let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
        // Its body is finished (not dropped), so that the refusal reaches the client.
        drop(super::kept(&g, req));
        let resp = refusal.clone().into_response(&new_request_id());
        async move { Ok::<_, Infallible>(resp) }
    });
    let serving = serve_http(app, io, svc, activity, "refused client");
    let _ = tokio::time::timeout(STRANGER_LIFETIME, serving).await;
}
