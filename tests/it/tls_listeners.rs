//! TLS on toolgate's own listeners: agents reach the proxy over TLS (`--listen-tls`,
//! `HTTPS_PROXY=https://…`) with curl, Python `requests` and `httpx`, and Node (undici,
//! `https-proxy-agent`), and a read, a refusal and a held call behave as over plain HTTP while
//! the bytes on the wire carry no credential in clear; the admin listener's page, API, /metrics
//! and the CLI over TLS, with `Secure` cookies; certificates rotated by changing their files;
//! `--trusted-proxies` honoured only from the proxies it names.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::fakes::Fakes;
use crate::support::*;

const AGENT: &str = "support-bot-staging";
const TOKEN: &str = "demo-staging-token";
const CAROL: &str = "demo-carol-token";
const HOSTS: [&str; 2] = ["localhost", "127.0.0.1"];

/// A TCP relay between a client and toolgate that keeps every byte passing either way: what a
/// capture on the network between them would see.
struct Relay {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<u8>>>,
}

impl Relay {
    async fn start(to: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let keep = seen.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(to).await else {
                    continue;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pump(cr, sw, keep.clone()));
                tokio::spawn(pump(sr, cw, keep.clone()));
            }
        });
        Relay { addr, seen }
    }

    /// Everything seen so far, lower-cased (header names are case-insensitive).
    fn seen(&self) -> String {
        String::from_utf8_lossy(&self.seen.lock().unwrap()).to_ascii_lowercase()
    }

    /// Asserts that nothing an eavesdropper could use passed in clear.
    fn assert_opaque(&self) {
        let seen = self.seen();
        assert!(
            seen.len() > 1000,
            "the relay saw the exchange ({} bytes)",
            seen.len()
        );
        let basic = base64_of(&format!("{AGENT}:{TOKEN}")).to_ascii_lowercase();
        for secret in [
            "proxy-authorization",
            TOKEN,
            &basic,
            "connect api.",
            "api.stripe.com",
        ] {
            assert!(
                !seen.contains(secret),
                "{secret:?} crossed the wire in clear"
            );
        }
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    seen: Arc<Mutex<Vec<u8>>>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0 || to.write_all(&buf[..n]).await.is_err() {
            break;
        }
        seen.lock().unwrap().extend_from_slice(&buf[..n]);
    }
    let _ = to.shutdown().await;
}

fn base64_of(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// The example policies over the fakes, with a plain and a TLS proxy listener.
async fn gate_with_tls_proxy() -> (Fakes, Toolgate, ServedFiles) {
    let pki = Pki::new("listener CA");
    let files = pki.served_files(&HOSTS);
    let (_upstream_pki, fakes, gate) = GateBuilder::examples()
        .listen_tls(&files)
        .config(|c| c.upstream_timeout = Duration::from_secs(10))
        .with_fakes()
        .await;
    (fakes, gate, files)
}

/// One file holding the listener's CA and toolgate's (for clients that take one bundle).
fn bundle(dir: &Path, files: &ServedFiles, gate: &Toolgate) -> PathBuf {
    let path = dir.join("bundle.pem");
    std::fs::write(&path, format!("{}\n{}", files.ca_pem, gate.ca_pem)).unwrap();
    path
}

/// Whether curl is missing (then `suite` is recorded as skipped).
fn no_curl(suite: &str) -> bool {
    let missing = std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_err();
    if missing {
        crate::support::skips::skipped(suite, "curl is not installed", "apt-get install curl");
    }
    missing
}

/// curl through `proxy` (a URL), trusting `proxy_ca` for the proxy and toolgate's CA for the
/// API: the status and the body.
async fn curl(proxy: &str, proxy_ca: Option<&Path>, ca: &Path, args: &[&str]) -> (u16, String) {
    let mut cmd = tokio::process::Command::new("curl");
    cmd.args(["-sS", "--max-time", "40", "--proxy", proxy, "--cacert"])
        .arg(ca)
        .args(["-w", "\n%{http_code}"]);
    if let Some(p) = proxy_ca {
        cmd.arg("--proxy-cacert").arg(p);
    }
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.args(args).output())
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or((&text, "0"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    (code.trim().parse().unwrap_or(0), format!("{body}{stderr}"))
}

/// A read (after an automatic write), a refusal and a held call through `proxy` with curl:
/// each step's status and the refusal's error code.
async fn curl_steps(proxy: &str, proxy_ca: Option<&Path>, ca: &Path, tag: &str) -> Vec<Value> {
    let key = format!("Idempotency-Key: {tag}-cust");
    let email = format!("email={tag}@acme.com");
    let (code, created) = curl(
        proxy,
        proxy_ca,
        ca,
        &[
            "-H",
            &key,
            "-d",
            &email,
            "https://api.stripe.com/v1/customers",
        ],
    )
    .await;
    assert_eq!(code, 200, "{created}");
    let id = serde_json::from_str::<Value>(&created).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (read, got) = curl(
        proxy,
        proxy_ca,
        ca,
        &[&format!("https://api.stripe.com/v1/customers/{id}")],
    )
    .await;
    assert!(got.contains(&format!("{tag}@acme.com")), "{got}");
    let bad = format!("Idempotency-Key: {tag}-bad");
    let (refused, why) = curl(
        proxy,
        proxy_ca,
        ca,
        &[
            "-H",
            &bad,
            "-d",
            &email,
            "-d",
            "tax_exempt=sometimes",
            "https://api.stripe.com/v1/customers",
        ],
    )
    .await;
    let code_of = |body: &str| {
        serde_json::from_str::<Value>(body)
            .map(|v| v["error"]["code"].clone())
            .unwrap_or(Value::Null)
    };
    let refund = format!("Idempotency-Key: {tag}-refund");
    let pi = format!("payment_intent=pi_{tag}");
    let (held, _) = curl(
        proxy,
        proxy_ca,
        ca,
        &[
            "-H",
            &refund,
            "-d",
            &pi,
            "-d",
            "amount=300",
            "https://api.stripe.com/v1/refunds",
        ],
    )
    .await;
    vec![
        serde_json::json!({"step": "read", "status": read}),
        serde_json::json!({"step": "refused", "status": refused, "code": code_of(&why), "tax_exempt": why.contains("tax_exempt")}),
        serde_json::json!({"step": "held", "status": held}),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_through_the_tls_listener_behaves_as_over_plain_http_and_shows_nothing_in_clear() {
    if no_curl("tls_listeners::curl_through_the_tls_listener_behaves_as_over_plain_http_and_shows_nothing_in_clear") {
        return;
    }
    let (fakes, gate, files) = gate_with_tls_proxy().await;
    let approving = approver(&gate, "released over TLS");
    let dir = tempfile::tempdir().unwrap();
    let listener_ca = dir.path().join("listener-ca.pem");
    std::fs::write(&listener_ca, &files.ca_pem).unwrap();
    let ca = gate.ca_path();

    let plain = format!("http://{AGENT}:{TOKEN}@{}", gate.addr);
    let over_plain = curl_steps(&plain, None, &ca, "plain").await;
    let relay = Relay::start(gate.tls_addr.unwrap()).await;
    let tls = format!("https://{AGENT}:{TOKEN}@{}", relay.addr);
    let over_tls = curl_steps(&tls, Some(&listener_ca), &ca, "tls").await;
    approving.abort();
    assert_eq!(
        over_plain, over_tls,
        "the same answers over TLS as over plain HTTP"
    );
    assert_eq!(over_tls[0]["status"], 200);
    assert_eq!(over_tls[1]["status"], 422, "{over_tls:?}");
    assert_eq!(
        over_tls[1]["tax_exempt"], true,
        "the refusal's message reaches curl"
    );
    assert_eq!(
        over_tls[2]["status"], 200,
        "the held refund was released while curl waited"
    );
    relay.assert_opaque();
    {
        let st = fakes.state.lock().unwrap();
        let refunds: Vec<&str> = st
            .refunds
            .iter()
            .filter_map(|r| r["payment_intent"].as_str())
            .collect();
        assert!(
            refunds.contains(&"pi_tls") && refunds.contains(&"pi_plain"),
            "{refunds:?}"
        );
    }

    // The control: through the same kind of relay, the plain listener shows the credential.
    let clear = Relay::start(gate.addr).await;
    let plain = format!("http://{AGENT}:{TOKEN}@{}", clear.addr);
    let (code, _) = curl(
        &plain,
        None,
        &ca,
        &["https://api.stripe.com/v1/customers/cus_none"],
    )
    .await;
    assert!(code > 0);
    assert!(
        clear.seen().contains("proxy-authorization: basic"),
        "the relay records what passes"
    );

    // A client that does not trust the listener's certificate gets nowhere, and nothing is sent.
    let (code, why) = curl(
        &tls,
        None,
        &ca,
        &["https://api.stripe.com/v1/customers/cus_none"],
    )
    .await;
    assert_eq!(code, 0, "{why}");
}

fn sdk_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk")
}

fn skip(why: &str) {
    if std::env::var("TOOLGATE_REQUIRE_SDKS").as_deref() == Ok("1") {
        panic!("TOOLGATE_REQUIRE_SDKS=1 but {why}");
    }
    crate::support::skips::skipped("tls_listeners_sdks", why, crate::support::skips::SDKS);
}

/// Each client's steps: a read, a refusal whose message reaches the caller, a held call
/// released while it waits.
fn assert_steps(steps: &[Value], clients: &[&str]) {
    for client in clients {
        let step = |name: &str| {
            steps
                .iter()
                .find(|s| s["client"] == *client && s["step"] == name)
                .unwrap_or_else(|| panic!("{client} did not report {name}: {steps:#?}"))
        };
        assert_eq!(step("read")["status"], 200, "{client}: {}", step("read"));
        let refused = step("refused");
        assert_eq!(refused["status"], 422, "{client}: {refused}");
        assert!(
            refused["body"].as_str().unwrap().contains("tax_exempt"),
            "{client}: {refused}"
        );
        assert_eq!(step("held")["status"], 200, "{client}: {}", step("held"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_and_node_clients_reach_the_tls_listener() {
    let python = sdk_dir().join(".venv/bin/python");
    let modules = sdk_dir().join("node_modules");
    let have_python = python.exists()
        && std::process::Command::new(&python)
            .args(["-c", "import requests, httpx"])
            .status()
            .is_ok_and(|s| s.success());
    if !have_python {
        return skip("requests and httpx are not installed in tests/sdk/.venv");
    }
    if !(modules.join("undici").exists() && modules.join("https-proxy-agent").exists()) {
        return skip("undici and https-proxy-agent are not installed in tests/sdk/node_modules");
    }
    let (_fakes, gate, files) = gate_with_tls_proxy().await;
    let approving = approver(&gate, "released over TLS");
    let dir = tempfile::tempdir().unwrap();
    let bundle = bundle(dir.path(), &files, &gate);
    let relay = Relay::start(gate.tls_addr.unwrap()).await;
    let proxy = format!("https://{AGENT}:{TOKEN}@{}", relay.addr);
    let run = format!("r{}", std::process::id());

    let mut py = tokio::process::Command::new(&python);
    py.arg(sdk_dir().join("tls_agent.py"))
        .env("TOOLGATE_PROXY", &proxy)
        .env("TOOLGATE_CA_BUNDLE", &bundle)
        .env("SDK_RUN", &run)
        .env_remove("HTTPS_PROXY")
        .env_remove("https_proxy");
    let steps = crate::sdk::run_agent(py).await;
    assert_steps(&steps, &["requests", "httpx"]);

    let mut node = tokio::process::Command::new("node");
    node.arg(sdk_dir().join("tls_agent.mjs"))
        .current_dir(sdk_dir())
        .env("TOOLGATE_PROXY", &proxy)
        .env("TOOLGATE_CA_BUNDLE", &bundle)
        .env("SDK_RUN", &run);
    let steps = crate::sdk::run_agent(node).await;
    assert_steps(&steps, &["undici", "https-proxy-agent"]);
    approving.abort();
    relay.assert_opaque();
}

/// One HTTP/1.1 request to the admin listener over TLS (trusting `ca`).
async fn admin_tls(
    gate: &Toolgate,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Answer {
    let stream = TcpStream::connect(gate.admin_addr).await.unwrap();
    let ca = gate.admin_ca.as_deref().unwrap();
    let tls = tls_over(stream, "localhost", ca, &[]).await.unwrap();
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    http1_over(
        tls,
        req.body(Full::new(Bytes::from(body.to_string()))).unwrap(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_serves_page_api_metrics_and_cli_over_tls() {
    let pki = Pki::new("admin CA");
    let files = pki.served_files(&HOSTS);
    let gate = GateBuilder::examples()
        .admin_tls(&files)
        .metrics()
        .start()
        .await;
    let bearer = format!("Bearer {CAROL}");

    let api = admin_tls(
        &gate,
        "GET",
        "/api/proposals",
        &[("authorization", &bearer)],
        "",
    )
    .await;
    assert_eq!(api.status, 200, "{}", api.text());
    let metrics = admin_tls(&gate, "GET", "/metrics", &[("authorization", &bearer)], "").await;
    assert_eq!(metrics.status, 200, "{}", metrics.text());
    // --metrics-listen serves TLS with the admin listener's certificate.
    let stream = TcpStream::connect(gate.metrics_addr.unwrap())
        .await
        .unwrap();
    let tls = tls_over(stream, "localhost", &files.ca_pem, &[])
        .await
        .unwrap();
    let req = Request::get("/metrics").header("host", "localhost");
    let scraped = http1_over(tls, req.body(Full::new(Bytes::new())).unwrap()).await;
    assert_eq!(scraped.status, 200, "{}", scraped.text());
    assert!(scraped.text().contains("toolgate_"), "{}", scraped.text());
    let form = [FORM];
    let login = admin_tls(&gate, "POST", "/login", &form, &format!("token={CAROL}")).await;
    assert_eq!(login.status, 303, "{}", login.text());
    let cookie = login.headers["set-cookie"].to_str().unwrap().to_string();
    assert!(
        cookie.contains("; Secure"),
        "the session cookie is Secure over TLS: {cookie}"
    );
    assert!(cookie.contains("HttpOnly"), "{cookie}");
    let session = cookie.split(';').next().unwrap();
    let queue = admin_tls(&gate, "GET", "/queue", &[("cookie", session)], "").await;
    assert_eq!(queue.status, 200, "{}", queue.text());

    // Plain HTTP to the TLS listener gets no answer a browser would take.
    let mut stream = TcpStream::connect(gate.admin_addr).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: admin\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    assert!(
        !answer.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );

    // The CLI: --server https://… with --cacert; without it, the certificate is refused.
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("admin-ca.pem");
    std::fs::write(&ca, &files.ca_pem).unwrap();
    let server = format!("https://localhost:{}", gate.admin_addr.port());
    let cli = |with_ca: bool| {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_toolgate"));
        cmd.args(["pending", "--server", &server])
            .env("TOOLGATE_TOKEN", CAROL);
        if with_ca {
            cmd.arg("--cacert").arg(&ca);
        }
        cmd.env_remove("TOOLGATE_CACERT").output()
    };
    let out = cli(true).await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(false).await.unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).to_ascii_lowercase();
    assert!(
        err.contains("certificate") || err.contains("unknownissuer"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_cookie_is_not_secure_over_plain_http() {
    let gate = GateBuilder::examples().start().await;
    let login = gate
        .page("POST", "/login", None, Some(format!("token={CAROL}")))
        .await;
    let cookie = login.headers["set-cookie"].to_str().unwrap().to_string();
    assert!(!cookie.contains("Secure"), "{cookie}");
}

/// The leaf certificate a TLS listener presents now.
async fn presented(addr: SocketAddr, ca: &str) -> Option<Vec<u8>> {
    let stream = TcpStream::connect(addr).await.ok()?;
    let tls = tls_over(stream, "localhost", ca, &[]).await.ok()?;
    let (_, conn) = tls.get_ref();
    Some(conn.peer_certificates()?.first()?.to_vec())
}

fn leaf_der(cert_pem: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(cert_pem.as_bytes())
        .unwrap()
        .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_when_their_files_change_and_a_bad_pair_keeps_the_old() {
    if no_curl(
        "tls_listeners::certificates_rotate_when_their_files_change_and_a_bad_pair_keeps_the_old",
    ) {
        return;
    }
    let pki = Pki::new("rotating CA");
    let proxy_files = pki.served_files(&HOSTS);
    let admin_files = pki.served_files(&HOSTS);
    let gate = GateBuilder::examples()
        .no_plain_proxy()
        .listen_tls(&proxy_files)
        .admin_tls(&admin_files)
        .start()
        .await;
    let ca = pki.ca_pem();
    let proxy = gate.tls_addr.unwrap();
    let first = presented(proxy, &ca).await.unwrap();
    assert_eq!(
        first,
        leaf_der(&std::fs::read_to_string(&proxy_files.cert).unwrap())
    );

    for (addr, files) in [(proxy, &proxy_files), (gate.admin_addr, &admin_files)] {
        let next = pki.server_pem(&HOSTS);
        files.write(&next);
        let want = leaf_der(&next.0);
        poll::until_some("the new certificate is served", poll::SOON, || async {
            (presented(addr, &ca).await? == want).then_some(())
        })
        .await;
        // A key that is not the certificate's: the pair in service stays, handshakes go on.
        std::fs::write(
            &files.key,
            rcgen::KeyPair::generate().unwrap().serialize_pem(),
        )
        .unwrap();
        let broken_at = std::time::Instant::now();
        while broken_at.elapsed() < Duration::from_millis(600) {
            assert_eq!(presented(addr, &ca).await.as_deref(), Some(want.as_slice()));
        }
    }

    // The rotated proxy listener carries calls as before.
    let proxy_ca = tempfile::tempdir().unwrap();
    let listener_ca = proxy_ca.path().join("ca.pem");
    std::fs::write(&listener_ca, &ca).unwrap();
    let url = format!("https://{AGENT}:{TOKEN}@{proxy}");
    let (code, body) = curl(
        &url,
        Some(&listener_ca),
        &gate.ca_path(),
        &["https://api.unnamed-example.com/"],
    )
    .await;
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("not named by any tool contract"), "{body}");
}

/// Failed sign-ins with `X-Forwarded-For: forwarded`, until the admin listener refuses one
/// with 429: how many it took, and the refusal's message.
async fn failures_until_limited(gate: &Toolgate, forwarded: &str) -> (usize, String) {
    for n in 1..=10 {
        let stream = TcpStream::connect(gate.admin_addr).await.unwrap();
        let req = Request::builder()
            .method("POST")
            .uri("/login")
            .header("host", "admin")
            .header("x-forwarded-for", forwarded)
            .header(FORM.0, FORM.1)
            .body(Full::new(Bytes::from("token=wrong")))
            .unwrap();
        let got = http1_over(stream, req).await;
        if got.status == 429 {
            return (n, got.message());
        }
        assert_eq!(got.status, 401, "{}", got.text());
    }
    (usize::MAX, String::new())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_client_address_is_taken_only_from_trusted_proxies() {
    let limited = |trusted: &[&str]| {
        let trusted: Vec<String> = trusted.iter().map(|s| s.to_string()).collect();
        GateBuilder::examples().config(move |c| {
            c.guards.auth_failures_per_minute = 3;
            c.trusted_proxies =
                toolgate::config::TrustedProxies::parse(&trusted, Default::default()).unwrap();
        })
    };
    // Loopback is the load balancer: each client it names has its own count.
    let gate = limited(&["127.0.0.0/8"]).start().await;
    let (n, message) = failures_until_limited(&gate, "198.51.100.1, 203.0.113.7").await;
    assert_eq!(n, 4, "three failures, then 429");
    assert!(
        message.contains("203.0.113.7"),
        "the rightmost untrusted address: {message}"
    );
    let (n, message) = failures_until_limited(&gate, "203.0.113.8").await;
    assert_eq!(n, 4, "another client has its own count: {message}");
    assert!(message.contains("203.0.113.8"), "{message}");

    // Trusting another network: the header is the client's own words, and ignored.
    let gate = limited(&["10.0.0.0/8"]).start().await;
    let (n, _) = failures_until_limited(&gate, "203.0.113.7").await;
    assert_eq!(n, 4);
    let (n, message) = failures_until_limited(&gate, "203.0.113.8").await;
    assert_eq!(n, 1, "the same peer, whatever it claims");
    assert!(message.contains("127.0.0.1"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_certificate_from_ca_issue_needs_only_toolgates_ca() {
    if no_curl("tls_listeners::a_listener_certificate_from_ca_issue_needs_only_toolgates_ca") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    crate::support::process::copy_dir(&root.join("policies"), &dir.path().join("policies"));
    let certs = dir.path().join("certs");
    let tls = dir.path().join("tls");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_toolgate"))
            .args(args)
            .arg("--certs")
            .arg(&certs)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&["ca", "init"]);
    let out = tls.to_string_lossy().into_owned();
    run(&[
        "ca",
        "issue",
        "localhost",
        "127.0.0.1",
        "--days",
        "30",
        "--out",
        &out,
    ]);
    let ca = certs.join("ca.pem");
    let files = ServedFiles::existing(
        tls.join("toolgate.pem"),
        tls.join("toolgate-key.pem"),
        std::fs::read_to_string(&ca).unwrap(),
    );
    let gate = GateBuilder::reopen(dir)
        .no_plain_proxy()
        .listen_tls(&files)
        .start()
        .await;
    let url = format!("https://{AGENT}:{TOKEN}@{}", gate.tls_addr.unwrap());
    let (code, body) = curl(&url, Some(&ca), &ca, &["https://api.unnamed-example.com/"]).await;
    assert_eq!(code, 403, "one CA file for both hops: {body}");
    assert!(body.contains("not named by any tool contract"), "{body}");
}
