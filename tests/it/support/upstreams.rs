//! Loopback HTTPS upstreams: one that records every request and answers by path, and the
//! stateful fakes of the example APIs (`fakes`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, Version};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::Notify;

use super::fakes;
use super::pki::Pki;

/// The hosts the recording upstream has a certificate for, and toolgate routes to it.
pub const API_HOSTS: [&str; 4] = [
    "api.stripe.com",
    "api.github.com",
    "api.sendgrid.com",
    "api.openai.com",
];

/// What the upstream received, one entry per request.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: Method,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub version: Version,
    /// The `:authority` (HTTP/2) or `Host` header (HTTP/1.1) the upstream saw.
    pub authority: String,
}

/// A loopback HTTPS upstream that records every request.
///
/// Paths: `/sse` streams one event, waits for `release_sse`, then sends a second; `/slow` answers
/// after 3 s; `/delay/MS` answers 200 after MS milliseconds; `/download/N` streams N bytes;
/// anything else echoes the request as JSON.
pub struct Upstream {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    pub sse_release: Arc<Notify>,
}

impl Upstream {
    pub async fn start(tls: Arc<rustls::ServerConfig>) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let sse_release = Arc::new(Notify::new());
        let (rec, rel) = (received.clone(), sse_release.clone());
        serve_https(listener, tls, move |req| {
            upstream_handle(req, rec.clone(), rel.clone())
        });
        Upstream {
            addr,
            received,
            sse_release,
        }
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.received.lock().unwrap().len()
    }
}

/// Serves HTTPS on `listener` with `tls` (h2 or HTTP/1.1, as the client chooses), every request
/// answered by `handle`, until the runtime ends: the loop of every loopback fake.
pub fn serve_https<H, Fut, B>(listener: TcpListener, tls: Arc<rustls::ServerConfig>, handle: H)
where
    H: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Response<B>, Infallible>> + Send + 'static,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let _ = stream.set_nodelay(true);
            let (acceptor, handle) = (acceptor.clone(), handle.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let svc = hyper::service::service_fn(handle);
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
}

type UpBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

async fn upstream_handle(
    req: Request<Incoming>,
    received: Arc<Mutex<Vec<Received>>>,
    release: Arc<Notify>,
) -> Result<Response<UpBody>, Infallible> {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let query = parts.uri.query().unwrap_or("").to_string();
    // The download is streamed by the upstream and not recorded in full.
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    received.lock().unwrap().push(Received {
        method: parts.method.clone(),
        path: parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_default(),
        headers: parts.headers.clone(),
        body: body.clone(),
        version: parts.version,
        authority: parts
            .uri
            .authority()
            .map(|a| a.to_string())
            .or_else(|| {
                parts
                    .headers
                    .get("host")
                    .and_then(|h| h.to_str().ok())
                    .map(str::to_string)
            })
            .unwrap_or_default(),
    });
    // A body asking for it gets a refusal from the upstream.
    if body.windows(16).any(|w| w == b"upstream-refuses") {
        return Ok(Response::builder()
            .status(400)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(r#"{"error":{"message":"refused upstream"}}"#)).boxed())
            .unwrap());
    }
    // A body asking for it makes the upstream hang past toolgate's timeout, after receiving it.
    // A sleep: a hanging upstream is the point.
    if body.windows(13).any(|w| w == b"hang-upstream") {
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    let resp = match path.as_str() {
        "/v1/chat/completions" if String::from_utf8_lossy(&body).contains("\"stream\":true") => {
            let events = [
                "data: {\"id\":\"c1\",\"model\":\"gpt-test-1\",\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\n",
                "data: {\"id\":\"c1\",\"model\":\"gpt-test-1\",\"choices\":[{\"delta\":{\"content\":\"lo\"}}]}\n\n",
                "data: {\"id\":\"c1\",\"model\":\"gpt-test-1\",\"choices\":[],\"usage\":{\"prompt_tokens\":11,\"completion_tokens\":7,\"total_tokens\":18}}\n\ndata: [DONE]\n\n",
            ];
            let stream = futures_util::stream::iter(
                events
                    .into_iter()
                    .map(|e| Ok::<_, Infallible>(Frame::data(Bytes::from(e)))),
            );
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(StreamBody::new(stream).boxed())
                .unwrap()
        }
        "/v1/chat/completions" => Response::builder()
            .header("content-type", "application/json")
            .body(
                Full::new(Bytes::from(
                    serde_json::json!({"id": "c2", "model": "gpt-test-1", "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}})
                        .to_string(),
                ))
                .boxed(),
            )
            .unwrap(),
        "/sse" => {
            let stream = futures_util::stream::unfold(0u8, move |state| {
                let release = release.clone();
                async move {
                    match state {
                        0 => Some((Ok(Frame::data(Bytes::from("data: first\n\n"))), 1)),
                        1 => {
                            let _ =
                                tokio::time::timeout(Duration::from_secs(10), release.notified())
                                    .await;
                            Some((Ok(Frame::data(Bytes::from("data: second\n\n"))), 2))
                        }
                        _ => None,
                    }
                }
            });
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(StreamBody::new(stream).boxed())
                .unwrap()
        }
        "/slow" => {
            // A sleep: a slow upstream is the point.
            tokio::time::sleep(Duration::from_secs(3)).await;
            Response::new(Full::new(Bytes::from("slow")).boxed())
        }
        p if p.starts_with("/delay/") => {
            let ms: u64 = p["/delay/".len()..].parse().unwrap_or(0);
            // A sleep: an upstream as slow as the path asks is the point.
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Response::builder()
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(format!(r#"{{"delayed_ms":{ms}}}"#))).boxed())
                .unwrap()
        }
        p if p.starts_with("/download") => {
            let total: usize = p
                .strip_prefix("/download/")
                .or_else(|| query.strip_prefix("bytes="))
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            const CHUNK: usize = 64 * 1024;
            let chunk = Bytes::from(vec![b'x'; CHUNK]);
            let stream = futures_util::stream::unfold(0usize, move |sent| {
                let chunk = chunk.clone();
                async move {
                    if sent >= total {
                        return None;
                    }
                    let n = CHUNK.min(total - sent);
                    Some((Ok(Frame::data(chunk.slice(..n))), sent + n))
                }
            });
            Response::builder()
                .header("content-length", total.to_string())
                .body(StreamBody::new(stream).boxed())
                .unwrap()
        }
        _ if parts.headers.contains_key("x-echo") => {
            // An upstream that echoes what it got, the injected credential included.
            let echo = serde_json::json!({
                "authorization": parts.headers.get("authorization").and_then(|h| h.to_str().ok()),
                "body": String::from_utf8_lossy(&body),
                "query": query,
            });
            Response::builder()
                .header("content-type", "application/json")
                .header(
                    "x-echoed-auth",
                    parts
                        .headers
                        .get("authorization")
                        .cloned()
                        .unwrap_or(http::HeaderValue::from_static("")),
                )
                .body(Full::new(Bytes::from(echo.to_string())).boxed())
                .unwrap()
        }
        _ => {
            let echo = serde_json::json!({
                "method": parts.method.as_str(),
                "path": path,
                "host": parts.headers.get("host").and_then(|h| h.to_str().ok()),
                "version": format!("{:?}", parts.version),
                "body_len": body.len(),
            });
            Response::builder()
                .header("content-type", "application/json")
                .header("x-upstream", "yes")
                .body(Full::new(Bytes::from(echo.to_string())).boxed())
                .unwrap()
        }
    };
    Ok(resp)
}

/// A test PKI and the stateful fakes of the example APIs (Stripe, GitHub, SendGrid) with the
/// example policies' keys, on loopback.
pub async fn example_apis() -> (Pki, fakes::Fakes) {
    let pki = Pki::new("test upstream CA");
    let fakes = fakes::Fakes::start(
        pki.server_config(&["api.stripe.com", "api.github.com", "api.sendgrid.com"]),
        fakes::Keys::examples(),
    )
    .await;
    (pki, fakes)
}
