//! A local stand-in for the APIs the example policies name (`toolgate demo`): Stripe (customers,
//! payment intents, refunds), GitHub (repositories, issues), SendGrid (mail send) and the
//! example MCP server (tickets). One HTTPS server on loopback with a CA of its own answers for
//! all four hosts, told apart by the host a request is sent to, with the real APIs' objects and
//! status codes (`cus_…`, `pi_…`, `re_…`, GitHub's repositories and issues, SendGrid's 202).
//!
//! Like the real APIs, each one admits only its credentials: the sandbox is given the header
//! values toolgate injects (the policies' secrets), and a request that did not come through
//! toolgate gets the API's own 401. Nothing here knows about toolgate's policies; it is reached
//! the way any upstream is, through `--connect-to` and `--upstream-ca`.

mod github;
mod sendgrid;
mod stripe;
mod tickets;
mod tls;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::crypto::CryptoProvider;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use github::{Github, DEMO_ORG, DEMO_REPO};
pub use sendgrid::Sendgrid;
pub use stripe::{Stripe, DEMO_CUSTOMER, DEMO_PAYMENT_INTENT};
pub use tickets::Tickets;

/// The largest request body the sandbox reads (the real APIs' limits are of this order).
const MAX_BODY: usize = 1 << 20;
/// How long a client may take to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The sandbox could not start.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("the sandbox could not listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the sandbox's certificates: {0}")]
    Certificate(String),
}

/// One of the APIs the sandbox stands in for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Api {
    Stripe,
    Github,
    Sendgrid,
    Tickets,
}

impl Api {
    pub const ALL: [Api; 4] = [Api::Stripe, Api::Github, Api::Sendgrid, Api::Tickets];

    /// The host the real API (or the example MCP server) is reached at, on port 443.
    pub fn host(self) -> &'static str {
        match self {
            Api::Stripe => "api.stripe.com",
            Api::Github => "api.github.com",
            Api::Sendgrid => "api.sendgrid.com",
            Api::Tickets => "mcp.tickets.example",
        }
    }

    /// The API served at `host` (any case, no port).
    pub fn of_host(host: &str) -> Option<Api> {
        Api::ALL
            .into_iter()
            .find(|a| a.host().eq_ignore_ascii_case(host))
    }

    /// The API a path belongs to, for a request sent to the sandbox by its own address (a
    /// replay to it names no API host).
    fn of_path(path: &str) -> Option<Api> {
        match path {
            p if p.starts_with("/v1/") => Some(Api::Stripe),
            p if p.starts_with("/repos/") || p.starts_with("/user") => Some(Api::Github),
            p if p.starts_with("/v3/") => Some(Api::Sendgrid),
            "/mcp" => Some(Api::Tickets),
            _ => None,
        }
    }

    /// The API's own answer to a request without a credential it accepts.
    fn unauthorized(self, headers: &HeaderMap) -> Reply {
        match self {
            Api::Stripe => stripe::unauthorized(headers),
            Api::Github => github::unauthorized(),
            Api::Sendgrid => sendgrid::unauthorized(),
            Api::Tickets => tickets::unauthorized(),
        }
    }
}

/// The credentials each API admits: exact header values (`Authorization: Bearer sk_test_…`).
#[derive(Debug, Default, Clone)]
pub struct Credentials(HashMap<Api, Vec<(HeaderName, HeaderValue)>>);

impl Credentials {
    /// Admits `name: value` at `api`.
    pub fn admit(&mut self, api: Api, name: HeaderName, value: HeaderValue) {
        let list = self.0.entry(api).or_default();
        if !list.iter().any(|(n, v)| *n == name && *v == value) {
            list.push((name, value));
        }
    }

    /// Whether the request carries one of `api`'s credentials.
    pub fn admits(&self, api: Api, headers: &HeaderMap) -> bool {
        self.0.get(&api).is_some_and(|list| {
            list.iter()
                .any(|(name, value)| headers.get_all(name).iter().any(|v| v == value))
        })
    }

    /// The APIs with at least one credential.
    pub fn apis(&self) -> Vec<Api> {
        Api::ALL
            .into_iter()
            .filter(|a| self.0.get(a).is_some_and(|l| !l.is_empty()))
            .collect()
    }
}

/// One request as an API sees it.
#[derive(Debug, Clone)]
pub struct Call {
    pub method: Method,
    pub path: String,
    /// The query string, without `?`.
    pub query: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Call {
    /// A call with no headers or body (tests build on it).
    pub fn new(method: Method, path_and_query: &str) -> Call {
        let (path, query) = path_and_query
            .split_once('?')
            .unwrap_or((path_and_query, ""));
        Call {
            method,
            path: path.to_string(),
            query: query.to_string(),
            headers: HeaderMap::new(),
            body: Bytes::new(),
        }
    }

    /// The same call with `name: value` added.
    pub fn header(mut self, name: &str, value: &str) -> Call {
        if let (Ok(n), Ok(v)) = (HeaderName::try_from(name), HeaderValue::from_str(value)) {
            self.headers.append(n, v);
        }
        self
    }

    /// The same call with `body`.
    pub fn body(mut self, body: impl Into<Bytes>) -> Call {
        self.body = body.into();
        self
    }

    fn header_str(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as JSON, if it is.
    fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// An API's answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: Vec<(HeaderName, String)>,
    pub body: Bytes,
}

impl Reply {
    /// A JSON answer.
    pub fn json(status: u16, body: &Value) -> Reply {
        Reply {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            headers: vec![(http::header::CONTENT_TYPE, "application/json".to_string())],
            body: Bytes::from(body.to_string()),
        }
    }

    /// An answer with no body.
    pub fn empty(status: u16) -> Reply {
        Reply {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    /// The same answer with a header added (or its content type replaced).
    pub fn with(mut self, name: HeaderName, value: impl Into<String>) -> Reply {
        if name == http::header::CONTENT_TYPE {
            self.headers.retain(|(n, _)| *n != name);
        }
        self.headers.push((name, value.into()));
        self
    }

    /// The body as JSON (tests read answers this way).
    pub fn body_json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.as_str().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn into_response(self) -> Response<Full<Bytes>> {
        let mut resp = Response::new(Full::new(self.body));
        *resp.status_mut() = self.status;
        for (name, value) in self.headers {
            if let Ok(v) = HeaderValue::from_str(&value) {
                resp.headers_mut().append(name, v);
            }
        }
        resp
    }
}

/// What the four APIs hold.
#[derive(Debug)]
pub struct World {
    pub stripe: Stripe,
    pub github: Github,
    pub sendgrid: Sendgrid,
    pub tickets: Tickets,
}

impl World {
    /// The APIs with their example objects: a customer and a paid payment intent at Stripe,
    /// acme's repositories at GitHub, a few tickets at the MCP server.
    pub fn seeded() -> World {
        World {
            stripe: Stripe::seeded(),
            github: Github::seeded(),
            sendgrid: Sendgrid::default(),
            tickets: Tickets::seeded(),
        }
    }

    /// Answers a call that `api` admitted.
    pub fn handle(&mut self, api: Api, call: &Call) -> Reply {
        match api {
            Api::Stripe => self.stripe.handle(call),
            Api::Github => self.github.handle(call),
            Api::Sendgrid => self.sendgrid.handle(call),
            Api::Tickets => self.tickets.handle(call),
        }
    }
}

/// The sandbox serving on loopback. Dropping it stops the listener.
pub struct Sandbox {
    addr: SocketAddr,
    ca_pem: String,
    world: Arc<Mutex<World>>,
    stop: CancellationToken,
}

impl Sandbox {
    /// Serves the seeded APIs on `bind` (port 0: an ephemeral one) with a new CA, admitting
    /// `credentials`.
    pub async fn start(
        bind: SocketAddr,
        credentials: Credentials,
        provider: Arc<CryptoProvider>,
    ) -> Result<Sandbox, SandboxError> {
        let hosts: Vec<&str> = Api::ALL.iter().map(|a| a.host()).collect();
        let (ca_pem, tls) = tls::server(&hosts, provider).map_err(SandboxError::Certificate)?;
        let listener = TcpListener::bind(bind)
            .await
            .map_err(|source| SandboxError::Bind { addr: bind, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| SandboxError::Bind { addr: bind, source })?;
        let world = Arc::new(Mutex::new(World::seeded()));
        let stop = CancellationToken::new();
        let shared = Shared {
            world: world.clone(),
            credentials: Arc::new(credentials),
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        tokio::spawn(accept_loop(listener, acceptor, shared, stop.clone()));
        Ok(Sandbox {
            addr,
            ca_pem,
            world,
            stop,
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its CA certificate (PEM): what toolgate's `--upstream-ca` trusts.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// What the APIs hold now.
    pub fn world(&self) -> MutexGuard<'_, World> {
        lock(&self.world)
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn lock(world: &Mutex<World>) -> MutexGuard<'_, World> {
    // A panic while answering leaves plain data behind; keep serving it.
    world.lock().unwrap_or_else(|p| p.into_inner())
}

/// What every connection shares.
#[derive(Clone)]
struct Shared {
    world: Arc<Mutex<World>>,
    credentials: Arc<Credentials>,
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    shared: Shared,
    stop: CancellationToken,
) {
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "sandbox: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let (acceptor, shared, stop) = (acceptor.clone(), shared.clone(), stop.clone());
        tokio::spawn(async move {
            let Ok(Ok(tls)) =
                tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
            else {
                return;
            };
            let svc = hyper::service::service_fn(move |req| answer(req, shared.clone()));
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection(TokioIo::new(tls), svc);
            tokio::select! {
                _ = conn => {}
                _ = stop.cancelled() => {}
            }
        });
    }
}

/// The host a request was sent to: the URI's (HTTP/2) or the `Host` header's, without a port.
fn host_of(parts: &http::request::Parts) -> String {
    let raw = parts
        .uri
        .host()
        .map(str::to_string)
        .or_else(|| {
            parts
                .headers
                .get(http::header::HOST)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        })
        .unwrap_or_default();
    crate::base::split_host_port(&raw, 443)
        .map(|(h, _)| h)
        .unwrap_or(raw)
}

async fn answer(
    req: Request<Incoming>,
    shared: Shared,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            let too_big = serde_json::json!({"error": {"message": "request body too large"}});
            return Ok(Reply::json(413, &too_big).into_response());
        }
    };
    let host = host_of(&parts);
    let call = Call {
        method: parts.method,
        path: parts.uri.path().to_string(),
        query: parts.uri.query().unwrap_or("").to_string(),
        headers: parts.headers,
        body,
    };
    let Some(api) = Api::of_host(&host).or_else(|| Api::of_path(&call.path)) else {
        let body = serde_json::json!({"error": {"message": format!("the sandbox does not serve {host:?}")}});
        return Ok(Reply::json(421, &body).into_response());
    };
    let reply = match shared.credentials.admits(api, &call.headers) {
        true => lock(&shared.world).handle(api, &call),
        false => api.unauthorized(&call.headers),
    };
    Ok(reply.into_response())
}

/// Random letters and digits, as the APIs' ids are made of.
fn random_id(len: usize) -> String {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    (0..len)
        .map(|_| ALPHABET[usize::from(rand::random::<u8>()) % ALPHABET.len()] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stripe_key() -> (HeaderName, HeaderValue) {
        (
            http::header::AUTHORIZATION,
            HeaderValue::from_static("Bearer sk_test_demo"),
        )
    }

    #[test]
    fn hosts_and_paths_name_their_api() {
        assert_eq!(Api::of_host("API.Stripe.com"), Some(Api::Stripe));
        assert_eq!(Api::of_host("mcp.tickets.example"), Some(Api::Tickets));
        assert_eq!(Api::of_host("api.example.com"), None);
        assert_eq!(Api::of_path("/v1/refunds"), Some(Api::Stripe));
        assert_eq!(Api::of_path("/repos/acme/widgets"), Some(Api::Github));
        assert_eq!(Api::of_path("/v3/mail/send"), Some(Api::Sendgrid));
        assert_eq!(Api::of_path("/elsewhere"), None);
    }

    #[test]
    fn credentials_admit_exactly_their_header_values() {
        let mut c = Credentials::default();
        let (name, value) = stripe_key();
        c.admit(Api::Stripe, name.clone(), value.clone());
        c.admit(Api::Stripe, name, value);
        assert_eq!(c.apis(), vec![Api::Stripe]);
        let with = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(http::header::AUTHORIZATION, HeaderValue::from_static(v));
            h
        };
        assert!(c.admits(Api::Stripe, &with("Bearer sk_test_demo")));
        assert!(!c.admits(Api::Stripe, &with("Bearer sk_test_other")));
        assert!(!c.admits(Api::Stripe, &HeaderMap::new()));
        assert!(!c.admits(Api::Github, &with("Bearer sk_test_demo")));
    }

    #[test]
    fn ids_look_like_the_apis_ids() {
        let id = random_id(24);
        assert_eq!(id.len(), 24);
        assert!(id.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(random_id(24), id);
    }

    /// A request over real TLS to the sandbox, trusting only its CA.
    async fn over_tls(
        sandbox: &Sandbox,
        host: &str,
        req: Request<Full<Bytes>>,
    ) -> (StatusCode, Value) {
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for der in rustls::pki_types::CertificateDer::pem_slice_iter(sandbox.ca_pem().as_bytes()) {
            roots.add(der.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let tcp = tokio::net::TcpStream::connect(sandbox.addr())
            .await
            .unwrap();
        let name = rustls::pki_types::ServerName::try_from(host.to_string()).unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(name, tcp)
            .await
            .unwrap();
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn);
        let resp = send.send_request(req).await.unwrap();
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    #[tokio::test]
    async fn over_tls_it_answers_with_its_credential_and_refuses_without() {
        let mut credentials = Credentials::default();
        let (name, value) = stripe_key();
        credentials.admit(Api::Stripe, name, value);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let sandbox = Sandbox::start("127.0.0.1:0".parse().unwrap(), credentials, provider)
            .await
            .unwrap();
        let get = |auth: Option<&str>| {
            let mut b = Request::get(format!("/v1/customers/{}", stripe::DEMO_CUSTOMER))
                .header("host", "api.stripe.com");
            if let Some(a) = auth {
                b = b.header("authorization", a);
            }
            b.body(Full::new(Bytes::new())).unwrap()
        };
        let (status, body) = over_tls(&sandbox, "api.stripe.com", get(None)).await;
        assert_eq!(status, 401, "{body}");
        assert_eq!(body["error"]["type"], "invalid_request_error");
        let (status, body) =
            over_tls(&sandbox, "api.stripe.com", get(Some("Bearer sk_test_demo"))).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["id"], stripe::DEMO_CUSTOMER);
        assert_eq!(body["object"], "customer");
        // GitHub admits nothing it was not given.
        let req = Request::get("/repos/acme/widgets")
            .header("host", "api.github.com")
            .header("authorization", "Bearer sk_test_demo")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let (status, body) = over_tls(&sandbox, "api.github.com", req).await;
        assert_eq!(
            (status.as_u16(), body["message"].as_str()),
            (401, Some("Bad credentials"))
        );
    }
}
