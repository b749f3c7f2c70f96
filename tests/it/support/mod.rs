//! Shared helpers for the tests that cross the network: a test PKI, a loopback TLS upstream that
//! speaks HTTP/1.1 and HTTP/2 and records what it received, toolgate started in-process on
//! ephemeral ports, and clients that go through it as an agent would.

pub mod fakes;
pub mod mcp_fake;
pub mod netns;
pub mod pg;
pub mod process;
pub mod skips;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, Notify};

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate authority for test upstreams (standing in for the public web PKI).
pub struct Pki {
    /// The CA certificate (PEM) in a file, for `--upstream-ca`.
    pub ca_path: PathBuf,
    _dir: tempfile::TempDir,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    pub fn new(name: &str) -> Pki {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).unwrap();
        let ca_pem = cert.pem();
        let issuer = Issuer::new(params, key);
        let dir = tempfile::tempdir().unwrap();
        let ca_path = dir.path().join("upstream-ca.pem");
        std::fs::write(&ca_path, &ca_pem).unwrap();
        Pki {
            ca_path,
            _dir: dir,
            issuer,
        }
    }

    /// A certificate for `hosts` and its private key, both PEM (for servers we do not run in
    /// process, such as PostgreSQL).
    pub fn server_pem(&self, hosts: &[&str]) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// A TLS server configuration for `hosts`, offering h2 and http/1.1.
    pub fn server_config(&self, hosts: &[&str]) -> Arc<rustls::ServerConfig> {
        let key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .unwrap();
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(cfg)
    }
}

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
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        let rec = received.clone();
        let rel = sse_release.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let rec = rec.clone();
                let rel = rel.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(move |req| {
                        upstream_handle(req, rec.clone(), rel.clone())
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
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
            tokio::time::sleep(Duration::from_secs(3)).await;
            Response::new(Full::new(Bytes::from("slow")).boxed())
        }
        p if p.starts_with("/delay/") => {
            let ms: u64 = p["/delay/".len()..].parse().unwrap_or(0);
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

/// A directory with `policies` (file name, contents) and a fresh CA under `certs`.
fn lay_out(policies: &[(&str, String)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let pdir = dir.path().join("policies");
    std::fs::create_dir_all(&pdir).unwrap();
    for (name, text) in policies {
        let path = pdir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    toolgate::ca::init(&dir.path().join("certs"), false).unwrap();
    dir
}

/// toolgate running in-process on ephemeral loopback ports.
pub struct Toolgate {
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// The transparent listener, when started with one.
    pub transparent_addr: Option<SocketAddr>,
    pub ca_pem: String,
    pub dir: tempfile::TempDir,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<Result<(), toolgate::StartError>>>,
}

/// The token of the test agent `bot`.
pub const BOT_TOKEN: &str = "bot-token-123";

pub fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(s.as_bytes()))
}

impl Toolgate {
    /// Starts toolgate with `policies` (file name, contents) and a configuration hook.
    pub async fn start(
        policies: &[(&str, String)],
        configure: impl FnOnce(&mut toolgate::Config),
    ) -> Toolgate {
        Toolgate::start_at("127.0.0.1:0", policies, configure).await
    }

    /// [`Toolgate::start`] with the proxy listening on `proxy_bind`.
    pub async fn start_at(
        proxy_bind: &str,
        policies: &[(&str, String)],
        configure: impl FnOnce(&mut toolgate::Config),
    ) -> Toolgate {
        Toolgate::restart_at((proxy_bind, None), lay_out(policies), configure).await
    }

    /// Signals shutdown and waits for `run` to return. The directory (data, certs, policies)
    /// stays until the value is dropped, so a new toolgate can start over the same data.
    pub async fn stop(&mut self) -> Result<(), toolgate::StartError> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match self.handle.take() {
            Some(h) => h.await.unwrap(),
            None => Ok(()),
        }
    }

    /// Starts toolgate over an existing directory laid out by [`Toolgate::start`].
    pub async fn restart_in(
        dir: tempfile::TempDir,
        configure: impl FnOnce(&mut toolgate::Config),
    ) -> Toolgate {
        Toolgate::restart_at(("127.0.0.1:0", None), dir, configure).await
    }

    async fn restart_at(
        (proxy_bind, transparent_bind): (&str, Option<&str>),
        dir: tempfile::TempDir,
        configure: impl FnOnce(&mut toolgate::Config),
    ) -> Toolgate {
        let certs = dir.path().join("certs");
        let ca_pem = toolgate::ca::export(&certs).unwrap();
        let mut config =
            toolgate::Config::new(dir.path().join("policies"), dir.path().join("data"), certs);
        configure(&mut config);
        let proxy = TcpListener::bind(proxy_bind).await.unwrap();
        let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = proxy.local_addr().unwrap();
        let admin_addr = admin.local_addr().unwrap();
        let transparent = match transparent_bind {
            Some(bind) => Some(TcpListener::bind(bind).await.unwrap()),
            None => None,
        };
        let transparent_addr = transparent.as_ref().map(|l| l.local_addr().unwrap());
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(toolgate::run(
            toolgate::Listeners {
                proxy,
                admin,
                metrics: None,
                transparent,
            },
            config,
            async move {
                let _ = rx.await;
            },
        ));
        Toolgate {
            addr,
            admin_addr,
            transparent_addr,
            ca_pem,
            dir,
            shutdown: Some(tx),
            handle: Some(handle),
        }
    }

    /// Takes the directory out, stopping this toolgate first.
    pub async fn into_dir(mut self) -> tempfile::TempDir {
        self.stop().await.unwrap();
        let placeholder = tempfile::tempdir().unwrap();
        std::mem::replace(&mut self.dir, placeholder)
    }

    /// Calls the admin API with a bearer token.
    pub async fn admin(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<serde_json::Value>,
    ) -> Answer {
        admin_at(self.admin_addr, method, path, token, body).await
    }

    /// A page request on the admin listener, with an optional session cookie and form body.
    pub async fn page(
        &self,
        method: &str,
        path: &str,
        cookie: Option<&str>,
        form: Option<String>,
    ) -> Answer {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "admin");
        if let Some(c) = cookie {
            req = req.header("cookie", c);
        }
        if form.is_some() {
            req = req.header("content-type", "application/x-www-form-urlencoded");
        }
        let req = req
            .body(Full::new(Bytes::from(form.unwrap_or_default())))
            .unwrap();
        http1_over(TcpStream::connect(self.admin_addr).await.unwrap(), req).await
    }

    /// Signs in on the admin pages with an approver's or reviewer's token: the session cookie.
    pub async fn sign_in(&self, token: &str) -> String {
        let login = self
            .page("POST", "/login", None, Some(format!("token={token}")))
            .await;
        assert_eq!(login.status, 303, "sign-in: {}", login.text());
        login.headers["set-cookie"]
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_string()
    }

    pub fn ca_path(&self) -> PathBuf {
        self.dir.path().join("certs").join("ca.pem")
    }

    /// A client that tunnels through toolgate as agent `id` with `token`, trusting only
    /// toolgate's CA, speaking `version` inside the tunnel.
    pub fn client(&self, auth: Option<(&str, &str)>, version: Version) -> TestClient {
        client_via(self.addr, auth, &self.ca_pem, version)
    }

    /// The standard client: agent `bot`, HTTP/1.1.
    pub fn bot(&self) -> TestClient {
        self.client(Some(("bot", BOT_TOKEN)), Version::HTTP_11)
    }

    /// Writes a file into the policies folder.
    pub fn write_policy(&self, name: &str, text: &str) {
        std::fs::write(self.dir.path().join("policies").join(name), text).unwrap();
    }
}

impl Drop for Toolgate {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// The text `field` of each item of the list `v[list]`, e.g. the kinds of a story's events:
/// `texts(&story, "events", "kind")`.
pub fn texts<'a>(v: &'a serde_json::Value, list: &str, field: &str) -> Vec<&'a str> {
    v[list]
        .as_array()
        .map(|items| items.iter().filter_map(|i| i[field].as_str()).collect())
        .unwrap_or_default()
}

/// Pulls the value of the first hidden `csrf` input out of a page.
pub fn csrf_of(html: &str) -> String {
    let at = html.find("name=\"csrf\" value=\"").expect("no csrf field") + 19;
    html[at..at + html[at..].find('"').unwrap()].to_string()
}

/// Calls the admin API at `addr` with a bearer token (for tasks that do not hold the
/// [`Toolgate`]).
pub async fn admin_at(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<serde_json::Value>,
) -> Answer {
    let stream = TcpStream::connect(addr).await.unwrap();
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "admin");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    let req = req
        .body(Full::new(Bytes::from(
            body.map(|b| b.to_string()).unwrap_or_default(),
        )))
        .unwrap();
    http1_over(stream, req).await
}

pub type TestClient = Client<HttpsConnector<Tunnel<HttpConnector>>, Full<Bytes>>;

pub fn basic(id: &str, token: &str) -> HeaderValue {
    let enc = base64::engine::general_purpose::STANDARD.encode(format!("{id}:{token}"));
    HeaderValue::from_str(&format!("Basic {enc}")).unwrap()
}

pub fn root_store(pem: &str) -> rustls::RootCertStore {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for der in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        roots.add(der.unwrap()).unwrap();
    }
    roots
}

pub fn client_tls(ca_pem: &str, alpn: &[&[u8]]) -> rustls::ClientConfig {
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(root_store(ca_pem))
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    cfg
}

pub fn client_via(
    proxy: SocketAddr,
    auth: Option<(&str, &str)>,
    ca_pem: &str,
    version: Version,
) -> TestClient {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    let mut tunnel = Tunnel::new(format!("http://{proxy}").parse().unwrap(), http);
    if let Some((id, token)) = auth {
        tunnel = tunnel.with_auth(basic(id, token));
    }
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(client_tls(ca_pem, &[]))
        .https_only();
    let mut client = Client::builder(TokioExecutor::new());
    if version == Version::HTTP_2 {
        client.http2_only(true);
        client.build(builder.enable_http2().wrap_connector(tunnel))
    } else {
        client.build(builder.enable_http1().wrap_connector(tunnel))
    }
}

/// A response read in full.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub version: Version,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    /// The error code of a toolgate refusal.
    pub fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn message(&self) -> String {
        self.json()["error"]["message"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }
}

pub async fn send(
    client: &TestClient,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: impl AsRef<[u8]>,
) -> Result<Answer, hyper_util::client::legacy::Error> {
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(Full::new(Bytes::copy_from_slice(body.as_ref())))
        .unwrap();
    let resp = client.request(req).await?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Ok(Answer {
        status: parts.status,
        headers: parts.headers,
        body,
        version: parts.version,
    })
}

/// Sends a raw CONNECT and reads the proxy's answer head (and body, if any). On 200 the stream
/// is the open tunnel.
pub async fn raw_connect(
    proxy: SocketAddr,
    target: &str,
    auth: Option<(&str, &str)>,
) -> (u16, String, TcpStream) {
    let mut stream = TcpStream::connect(proxy).await.unwrap();
    let mut head = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    if let Some((id, token)) = auth {
        head.push_str(&format!(
            "Proxy-Authorization: {}\r\n",
            basic(id, token).to_str().unwrap()
        ));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut byte))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "proxy closed during CONNECT answer");
        buf.push(byte[0]);
    }
    let head = String::from_utf8(buf).unwrap();
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())
                .flatten()
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).await.unwrap();
    (status, head + &String::from_utf8_lossy(&body), stream)
}

/// TLS over an open tunnel with the given SNI, trusting `ca_pem`.
pub async fn tls_over(
    stream: TcpStream,
    sni: &str,
    ca_pem: &str,
    alpn: &[&[u8]],
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_tls(ca_pem, alpn)));
    let name = ServerName::try_from(sni.to_string()).unwrap();
    connector.connect(name, stream).await
}

/// Sends one HTTP/1.1 request over an established stream with exactly the given headers.
pub async fn http1_over<S>(io: S, req: Request<Full<Bytes>>) -> Answer
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .unwrap();
    tokio::spawn(conn);
    let resp = sender.send_request(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body,
        version: parts.version,
    }
}

/// The standard test policy: agent `bot` and Stripe-shaped tools on `api.stripe.com`.
pub fn base_policy() -> String {
    format!(
        r#"
[[agent]]
id = "bot"
token_sha256 = "{}"
owner = "alice@example.com"
tenant = "acme"
environment = "staging"
tools = ["*"]

[[tool]]
name = "stripe.customers.retrieve"
host = "api.stripe.com"
method = "GET"
path = "/v1/customers/{{customer}}"

[[tool]]
name = "stripe.customers.create"
host = "api.stripe.com"
method = "POST"
path = "/v1/customers"
side_effects = "reversible"
idempotency = "key"
body = {{ format = "form" }}

[[tool]]
name = "test.sse"
host = "api.stripe.com"
method = "GET"
path = "/sse"

[[tool]]
name = "test.slow"
host = "api.stripe.com"
method = "GET"
path = "/slow"

[[tool]]
name = "test.download"
host = "api.stripe.com"
method = "GET"
path = "/download/{{size}}"
"#,
        sha256_hex(BOT_TOKEN)
    )
}

/// An upstream for `hosts` signed by `pki`, and toolgate routing those hosts to it.
pub async fn setup(extra_policy: &str) -> (Pki, Upstream, Toolgate) {
    setup_with(&[("extra.toml", extra_policy.to_string())]).await
}

/// Like [`setup`], with any extra files in the policies folder.
pub async fn setup_with(extra: &[(&str, String)]) -> (Pki, Upstream, Toolgate) {
    let pki = Pki::new("test upstream CA");
    let upstream = Upstream::start(pki.server_config(&["api.stripe.com", "api.github.com"])).await;
    let ca_path = pki.ca_path.clone();
    let addr = upstream.addr;
    let mut policies = vec![("base.toml", base_policy())];
    policies.extend(extra.iter().map(|(n, t)| (*n, t.clone())));
    let gate = Toolgate::start(&policies, move |c| {
        c.add_connect_to(&format!("api.stripe.com:443={addr}"))
            .unwrap();
        c.add_connect_to(&format!("api.github.com:443={addr}"))
            .unwrap();
        c.upstream_ca.push(ca_path);
        c.upstream_timeout = Duration::from_millis(1500);
    })
    .await;
    (pki, upstream, gate)
}

/// The example policies served against the stateful fakes of Stripe, GitHub and SendGrid.
/// Approves every pending proposal as carol (with `comment`), polling the admin API every
/// 100 ms, until aborted (at most 3000 rounds).
pub fn approver(gate: &Toolgate, comment: &str) -> tokio::task::JoinHandle<()> {
    let admin = gate.admin_addr;
    let body = serde_json::json!({ "comment": comment });
    tokio::spawn(async move {
        for _ in 0..3000 {
            let list = admin_at(
                admin,
                "GET",
                "/api/proposals?state=pending",
                Some("demo-carol-token"),
                None,
            )
            .await;
            let list: serde_json::Value = serde_json::from_slice(&list.body).unwrap_or_default();
            for p in list["proposals"].as_array().cloned().unwrap_or_default() {
                let Some(id) = p["id"].as_str() else { continue };
                let path = format!("/api/proposals/{id}/approve");
                admin_at(
                    admin,
                    "POST",
                    &path,
                    Some("demo-carol-token"),
                    Some(body.clone()),
                )
                .await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
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

pub async fn setup_fakes(
    configure: impl FnOnce(&mut toolgate::Config),
) -> (Pki, fakes::Fakes, Toolgate) {
    let (pki, fakes) = example_apis().await;
    let gate = examples_gate(&pki, fakes.addr, &[], configure).await;
    (pki, fakes, gate)
}

/// The example policy files (`policies/`), as (relative path, text).
pub fn example_policies() -> Vec<(String, String)> {
    let mut files = Vec::new();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    collect(&root, &root, &mut files);
    // The example holds every email for a person (the launch gate); the tests that send mail
    // test everything else about it, so they send it at once. The SDK test holds it again.
    for (name, text) in &mut files {
        if name == "sendgrid.toml" {
            let held = "mode = \"approve\"\napproval = { groups = [\"platform-leads\", \"payments-leads\"], required = 1, hold = \"30s\", send = \"on_approval\" }";
            assert!(text.contains(held), "the example holds mail for approval");
            *text = text.replacen(held, "mode = \"auto\"", 1);
        }
    }
    files
}

/// toolgate with the example policies (plus `extra` files, which replace examples of the same
/// name), routing the three API hosts (and
/// OpenAI's) to `addr` and trusting the test PKI.
pub async fn examples_gate(
    pki: &Pki,
    addr: SocketAddr,
    extra: &[(&str, String)],
    configure: impl FnOnce(&mut toolgate::Config),
) -> Toolgate {
    examples_gate_at("127.0.0.1:0", pki, addr, extra, configure).await
}

/// [`examples_gate`] with the proxy (and a transparent listener, if given) on `binds`.
pub async fn examples_gate_with(
    binds: (&str, Option<&str>),
    pki: &Pki,
    addr: SocketAddr,
    extra: &[(&str, String)],
    configure: impl FnOnce(&mut toolgate::Config),
) -> Toolgate {
    let files: Vec<(String, String)> = example_policies()
        .into_iter()
        .filter(|(n, _)| !extra.iter().any(|(e, _)| e == n))
        .collect();
    let mut policies: Vec<(&str, String)> =
        files.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
    policies.extend(extra.iter().map(|(n, t)| (*n, t.clone())));
    let ca = pki.ca_path.clone();
    let dir = lay_out(&policies);
    Toolgate::restart_at(binds, dir, move |c| {
        route_examples(c, addr, ca);
        configure(c);
    })
    .await
}

/// Routes the example API hosts (and OpenAI's) to `addr`, trusting the test CA at `ca`.
pub fn route_examples(c: &mut toolgate::Config, addr: SocketAddr, ca: PathBuf) {
    for host in [
        "api.stripe.com",
        "api.github.com",
        "api.sendgrid.com",
        "api.openai.com",
    ] {
        c.add_connect_to(&format!("{host}:443={addr}")).unwrap();
    }
    c.upstream_ca.push(ca);
    c.upstream_timeout = Duration::from_millis(1500);
    c.reload_interval = Duration::from_millis(100);
}

/// The example policies (plus `extra` files) with the proxy on `proxy_bind`, every example API
/// routed to `addr` and trusted through `pki`.
pub async fn examples_gate_at(
    proxy_bind: &str,
    pki: &Pki,
    addr: SocketAddr,
    extra: &[(&str, String)],
    configure: impl FnOnce(&mut toolgate::Config),
) -> Toolgate {
    examples_gate_with((proxy_bind, None), pki, addr, extra, configure).await
}

/// [`examples_gate_at`] with the proxy on loopback and a transparent listener on
/// `transparent_bind`.
pub async fn examples_gate_transparent(
    transparent_bind: &str,
    pki: &Pki,
    addr: SocketAddr,
    extra: &[(&str, String)],
) -> Toolgate {
    examples_gate_with(
        ("127.0.0.1:0", Some(transparent_bind)),
        pki,
        addr,
        extra,
        |_| {},
    )
    .await
}

/// The repository's own example policies (`policies/`), copied into a fresh folder with `extra`
/// files added, served against one recording upstream for Stripe, GitHub and SendGrid.
pub async fn setup_examples(
    extra: &[(&str, String)],
    configure: impl FnOnce(&mut toolgate::Config),
) -> (Pki, Upstream, Toolgate) {
    let pki = Pki::new("test upstream CA");
    let upstream = Upstream::start(pki.server_config(&[
        "api.stripe.com",
        "api.github.com",
        "api.sendgrid.com",
        "api.openai.com",
    ]))
    .await;
    let gate = examples_gate(&pki, upstream.addr, extra, configure).await;
    (pki, upstream, gate)
}

fn collect(root: &std::path::Path, dir: &std::path::Path, out: &mut Vec<(String, String)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect(root, &path, out);
        } else {
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            out.push((rel, std::fs::read_to_string(&path).unwrap()));
        }
    }
}

/// Every event of the audit log, through the export API, as an approver.
pub async fn exported(gate: &Toolgate) -> Vec<serde_json::Value> {
    let got = gate
        .admin("GET", "/api/audit/export", Some("demo-carol-token"), None)
        .await;
    assert_eq!(got.status, 200, "{}", got.text());
    got.text()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Audit events through the search API (`query` as in `audit search`), as an approver.
pub async fn audit_events(gate: &Toolgate, query: &str) -> Vec<serde_json::Value> {
    let got = gate
        .admin(
            "GET",
            &format!("/api/audit/search?{query}"),
            Some("demo-carol-token"),
            None,
        )
        .await;
    assert_eq!(got.status, 200, "{}", got.text());
    got.json()["events"].as_array().unwrap().clone()
}

/// The example staging agent.
pub fn staging(gate: &Toolgate) -> TestClient {
    gate.client(
        Some(("support-bot-staging", "demo-staging-token")),
        Version::HTTP_11,
    )
}

/// The example prod agent.
pub fn prod(gate: &Toolgate) -> TestClient {
    gate.client(
        Some(("support-bot-prod", "demo-prod-token")),
        Version::HTTP_11,
    )
}

pub const FORM: (&str, &str) = ("content-type", "application/x-www-form-urlencoded");
pub const JSON: (&str, &str) = ("content-type", "application/json");

/// The name of the running test (its thread's name under the harness).
pub fn current_test() -> String {
    std::thread::current()
        .name()
        .unwrap_or("a browser test")
        .to_string()
}

/// Headless Chromium for the page tests: the browser scripts' folder and the browser, or None
/// after saying why (a failure under `TOOLGATE_REQUIRE_BROWSER`).
pub fn browser() -> Option<(std::path::PathBuf, String)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if std::path::Path::new(&chromium).exists() && dir.join("node_modules/playwright-core").exists()
    {
        return Some((dir, chromium));
    }
    assert!(
        std::env::var_os("TOOLGATE_REQUIRE_BROWSER").is_none(),
        "TOOLGATE_REQUIRE_BROWSER is set but {chromium} or tests/browser/node_modules is missing"
    );
    skips::skipped(
        &format!(
            "{} (the approvers' page in headless Chromium)",
            current_test()
        ),
        &format!("{chromium} or tests/browser/node_modules/playwright-core is missing"),
        skips::BROWSER,
    );
    None
}

/// A pending proposal of call `identity`, as a store keeps it.
pub fn stored_proposal(id: &str, identity: &str) -> toolgate::model::Proposal {
    serde_json::from_value(serde_json::json!({
        "id": id, "state": "pending", "tool": "stripe.refunds.create", "tool_version": 1,
        "risk": "high", "agent": "bot", "owner": "o", "environment": "staging", "job": "j",
        "request_id": "req_1", "summary": "s", "identity": identity,
        "created_unix": toolgate::base::now_unix(), "expires_unix": toolgate::base::now_unix() + 3600,
        "required": 1, "groups": [], "allow_self_approval": false,
        "request": {"method": "POST", "host": "api.stripe.com", "port": 443,
                    "path_and_query": "/v1/refunds", "headers": [], "body": "", "sha256": ""}
    }))
    .unwrap()
}

/// The proposal store's compare-and-sets against racing writers, through `stores` (one store
/// shared by tasks, or one per replica on a shared database): of concurrent creations of one
/// call's proposal one wins; of concurrent moves from one read state and version one wins;
/// a record moved on is never written back from an older read.
pub async fn proposal_races(stores: &[toolgate::store::Store]) {
    use toolgate::model::State;
    let n = 16;
    let identity = format!("call-{}", rand_suffix());
    let mut tasks = Vec::new();
    for i in 0..n {
        let store = stores[i % stores.len()].clone();
        let p = stored_proposal(&format!("prop_{i}_{identity}"), &identity);
        tasks.push(tokio::spawn(async move {
            store.proposal_create(&p, None).await.unwrap()
        }));
    }
    let mut created = 0;
    for t in tasks {
        created += usize::from(t.await.unwrap());
    }
    assert_eq!(created, 1, "one proposal per call");
    let seen = stores[0].proposal_for(&identity).await.unwrap().unwrap();
    for loser in 0..n {
        let id = format!("prop_{loser}_{identity}");
        if id != seen.id {
            assert!(
                stores[0].proposal_get(&id).await.unwrap().is_none(),
                "{id} left behind"
            );
        }
    }

    // Decisions from one read: approve, deny, deny, ... one of them lands.
    let mut tasks = Vec::new();
    for i in 0..n {
        let store = stores[i % stores.len()].clone();
        let (seen, mut next) = (seen.clone(), seen.clone());
        next.state = if i % 2 == 0 {
            State::Approved
        } else {
            State::Denied
        };
        tasks.push(tokio::spawn(async move {
            (store.proposal_swap(&seen, &next).await.unwrap(), next.state)
        }));
    }
    let mut won = Vec::new();
    for t in tasks {
        let (ok, state) = t.await.unwrap();
        if ok {
            won.push(state);
        }
    }
    assert_eq!(won.len(), 1, "one decision wins: {won:?}");
    let now = stores[1 % stores.len()]
        .proposal_get(&seen.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(now.state, won[0]);
    assert_eq!(now.version, seen.version + 1);

    // Same state, older version: an approval read before another approval landed loses.
    let mut stale = seen.clone();
    stale.state = now.state;
    let mut over = stale.clone();
    over.note = Some("from a stale read".into());
    assert!(!stores[0].proposal_swap(&stale, &over).await.unwrap());

    // Once committing, nothing read before puts it back to approved.
    if now.state == State::Approved {
        let mut committing = now.clone();
        committing.state = State::Committing;
        assert!(stores[0].proposal_swap(&now, &committing).await.unwrap());
        let mut back = now.clone();
        back.state = State::Approved;
        assert!(!stores[1 % stores.len()]
            .proposal_swap(&now, &back)
            .await
            .unwrap());
        let stored = stores[0].proposal_get(&seen.id).await.unwrap().unwrap();
        assert_eq!(stored.state, State::Committing);
    }

    // A new proposal of the same call replaces only the one its maker read.
    let newer = stored_proposal(&format!("prop_new_{identity}"), &identity);
    assert!(!stores[0]
        .proposal_create(&newer, Some("prop_other"))
        .await
        .unwrap());
    assert!(stores[0]
        .proposal_create(&newer, Some(&seen.id))
        .await
        .unwrap());
    assert_eq!(
        stores[0].proposal_for(&identity).await.unwrap().unwrap().id,
        newer.id
    );
}

fn rand_suffix() -> String {
    format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

/// The id of the pending proposal whose summary contains `containing` ("" for the first one),
/// as the admin API at `admin` lists it; polled until it appears (up to 5 s).
pub async fn pending_proposal(admin: SocketAddr, containing: &str) -> String {
    for _ in 0..200 {
        let list = admin_at(
            admin,
            "GET",
            "/api/proposals?state=pending",
            Some("demo-carol-token"),
            None,
        )
        .await
        .json();
        let found = list["proposals"].as_array().and_then(|l| {
            l.iter()
                .find(|p| {
                    p["summary"]
                        .as_str()
                        .is_some_and(|s| s.contains(containing))
                })
                .and_then(|p| p["id"].as_str().map(str::to_string))
        });
        if let Some(id) = found {
            return id;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("no pending proposal naming {containing:?}");
}
