//! The admin listener's connections (and `--metrics-listen`'s): accepted, over TLS when the
//! listener serves it, each request told its peer (`ConnectInfo`, which `peer` reads), all
//! ended gracefully at shutdown.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::tls::Served;

/// How long a client may take to send a request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// What a listener serves and how.
pub(crate) struct Listening {
    pub(crate) router: Router,
    pub(crate) tls: Option<Arc<Served>>,
    pub(crate) handshake_timeout: Duration,
    pub(crate) cancel: CancellationToken,
    /// The listener's name in the logs.
    pub(crate) what: &'static str,
}

/// Accepts connections until `cancel`, then waits for the open ones to finish the request they
/// are on.
pub(crate) async fn serve(listener: TcpListener, how: Listening) {
    let how = Arc::new(how);
    let open = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            _ = how.cancel.cancelled() => break,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                if let Err(e) = stream.set_nodelay(true) {
                    debug!(error = %e, "could not set TCP_NODELAY");
                }
                open.spawn(connection(stream, peer, how.clone()));
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                warn!(listener = how.what, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    open.close();
    open.wait().await;
}

/// One connection: the TLS handshake first when the listener serves TLS.
async fn connection(stream: TcpStream, peer: SocketAddr, how: Arc<Listening>) {
    let Some(tls) = &how.tls else {
        return http(stream, peer, &how).await;
    };
    let handshake = tokio::time::timeout(how.handshake_timeout, tls.acceptor().accept(stream));
    tokio::select! {
        done = handshake => match done {
            Ok(Ok(stream)) => http(stream, peer, &how).await,
            Ok(Err(e)) => debug!(listener = how.what, %peer, error = %e, "TLS handshake failed"),
            Err(_) => debug!(listener = how.what, %peer, "TLS handshake timed out"),
        },
        _ = how.cancel.cancelled() => {}
    }
}

/// HTTP/1.1 on a connection, every request handed to the router with its peer.
async fn http<T>(io: T, peer: SocketAddr, how: &Listening)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let router = how.router.clone();
    let svc = hyper::service::service_fn(move |mut req: http::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        let mut router = router.clone();
        async move {
            let resp = tower_service::Service::call(&mut router, req).await;
            Ok::<_, Infallible>(resp.unwrap_or_else(|never| match never {}))
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    tokio::select! {
        res = conn.as_mut() => if let Err(e) = res {
            debug!(listener = how.what, %peer, error = %e, "connection ended with an error");
        },
        _ = how.cancel.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}
