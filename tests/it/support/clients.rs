//! Clients that go through toolgate as an agent would (a tunnelling hyper client, a raw CONNECT,
//! TLS over an open tunnel) and that call its admin listener, and the answers they read.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::gate::Toolgate;
use super::pki::client_tls;
use super::poll;

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

/// Approves every pending proposal as carol (with `comment`), polling the admin API every
/// 100 ms, until aborted (at most 3000 rounds).
pub fn approver(gate: &Toolgate, comment: &str) -> tokio::task::JoinHandle<()> {
    approver_at(gate.admin_addr, comment)
}

/// [`approver`] for the admin listener at `admin` (a toolgate run as a child process).
pub fn approver_at(admin: SocketAddr, comment: &str) -> tokio::task::JoinHandle<()> {
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
            // A sleep: the pace of a stand-in approver that runs until the test drops it.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
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

/// The audit events `query` finds, once `ready` holds for them: the log is written behind the
/// calls, so it is polled (bounded); `what` names the wait in a failure.
pub async fn audit_events_once(
    gate: &Toolgate,
    query: &str,
    what: &str,
    ready: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let ready = &ready;
    poll::until_some(what, poll::SOON, move || async move {
        let events = audit_events(gate, query).await;
        ready(&events).then_some(events)
    })
    .await
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

/// The id of the pending proposal whose summary contains `containing` ("" for the first one),
/// as the admin API at `admin` lists it; polled until it appears.
pub async fn pending_proposal(admin: SocketAddr, containing: &str) -> String {
    let what = format!("a pending proposal names {containing:?}");
    poll::until_some(&what, poll::SOON, || async {
        let list = admin_at(
            admin,
            "GET",
            "/api/proposals?state=pending",
            Some("demo-carol-token"),
            None,
        )
        .await
        .json();
        list["proposals"].as_array().and_then(|l| {
            l.iter()
                .find(|p| {
                    p["summary"]
                        .as_str()
                        .is_some_and(|s| s.contains(containing))
                })
                .and_then(|p| p["id"].as_str().map(str::to_string))
        })
    })
    .await
}
