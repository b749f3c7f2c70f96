//! toolgate started in-process on ephemeral loopback ports, with one builder for every
//! variation the tests need: which policies, which upstream, which listeners, which settings.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Version};
use http_body_util::Full;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

use super::clients::{admin_at, client_via, http1_over, Answer, TestClient};
use super::fakes::Fakes;
use super::pki::{Pki, ServedFiles};
use super::upstreams::{example_apis, Upstream, API_HOSTS};

/// toolgate running in-process on ephemeral loopback ports.
pub struct Toolgate {
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// The transparent listener, when started with one.
    pub transparent_addr: Option<SocketAddr>,
    /// The proxy's TLS listener, when started with one ([`GateBuilder::listen_tls`]).
    pub tls_addr: Option<SocketAddr>,
    /// The CA (PEM) of the admin listener's certificate, when it serves TLS.
    pub admin_ca: Option<String>,
    /// `--metrics-listen`, when started with it ([`GateBuilder::metrics`]).
    pub metrics_addr: Option<SocketAddr>,
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

/// A setting a test changes before toolgate starts.
type Configure<'a> = Box<dyn FnOnce(&mut toolgate::Config) + Send + 'a>;

/// Builds the toolgate a test runs against: the policies folder, the upstreams it routes to,
/// its listeners and any other setting, then starts it in-process.
///
/// ```ignore
/// let (pki, upstream, gate) = GateBuilder::examples().policy("extra.toml", x).with_upstream().await;
/// let gate = GateBuilder::reopen(dir).config(|c| c.upstream_timeout = t).start().await;
/// ```
pub struct GateBuilder<'a> {
    /// Policy files (relative path, text); a later file replaces an earlier one of its name.
    files: Vec<(String, String)>,
    /// A directory laid out by an earlier toolgate, started over instead of `files`.
    dir: Option<tempfile::TempDir>,
    /// None: no plain proxy listener.
    proxy_bind: Option<String>,
    transparent_bind: Option<String>,
    /// The proxy's TLS listener's certificate files.
    listen_tls: Option<ServedFiles>,
    /// The admin listener's certificate files.
    admin_tls: Option<ServedFiles>,
    /// A `--metrics-listen` listener too.
    metrics: bool,
    /// The example API hosts routed to this address, trusting this CA.
    route: Option<(SocketAddr, PathBuf)>,
    config: Vec<Configure<'a>>,
}

impl<'a> GateBuilder<'a> {
    /// An empty policies folder.
    pub fn new() -> GateBuilder<'a> {
        GateBuilder {
            files: Vec::new(),
            dir: None,
            proxy_bind: Some("127.0.0.1:0".into()),
            transparent_bind: None,
            listen_tls: None,
            admin_tls: None,
            metrics: false,
            route: None,
            config: Vec::new(),
        }
    }

    /// The standard test policy ([`base_policy`]: agent `bot`, Stripe-shaped tools) as
    /// `base.toml`.
    pub fn base() -> GateBuilder<'a> {
        GateBuilder::new().policy("base.toml", base_policy())
    }

    /// The repository's example policies ([`example_policies`]), reloaded every 100 ms.
    pub fn examples() -> GateBuilder<'a> {
        let mut b = GateBuilder::new();
        b.files = example_policies();
        b.config(|c| c.reload_interval = Duration::from_millis(100))
    }

    /// The directory (policies, certs, data) of a toolgate that was stopped, started over.
    pub fn reopen(dir: tempfile::TempDir) -> GateBuilder<'a> {
        let mut b = GateBuilder::new();
        b.dir = Some(dir);
        b
    }

    /// Adds the policy file `name`, or replaces the one of that name.
    pub fn policy(mut self, name: &str, text: impl Into<String>) -> GateBuilder<'a> {
        self.files.retain(|(n, _)| n != name);
        self.files.push((name.to_string(), text.into()));
        self
    }

    /// [`GateBuilder::policy`] for each of `files`.
    pub fn policies(self, files: &[(&str, String)]) -> GateBuilder<'a> {
        files
            .iter()
            .fold(self, |b, (name, text)| b.policy(name, text.clone()))
    }

    /// The proxy listens on `bind` (else an ephemeral loopback port).
    pub fn proxy_bind(mut self, bind: &str) -> GateBuilder<'a> {
        self.proxy_bind = Some(bind.to_string());
        self
    }

    /// No plain proxy listener (`--listen none`).
    pub fn no_plain_proxy(mut self) -> GateBuilder<'a> {
        self.proxy_bind = None;
        self
    }

    /// A TLS proxy listener too (`--listen-tls`), serving `files`.
    pub fn listen_tls(mut self, files: &ServedFiles) -> GateBuilder<'a> {
        self.listen_tls = Some(files.clone());
        self
    }

    /// A `--metrics-listen` listener on an ephemeral loopback port.
    pub fn metrics(mut self) -> GateBuilder<'a> {
        self.metrics = true;
        self
    }

    /// The admin listener serves TLS (`--admin-tls-cert/-key`) with `files`.
    pub fn admin_tls(mut self, files: &ServedFiles) -> GateBuilder<'a> {
        self.admin_tls = Some(files.clone());
        self
    }

    /// A transparent listener on `bind` too.
    pub fn transparent(mut self, bind: &str) -> GateBuilder<'a> {
        self.transparent_bind = Some(bind.to_string());
        self
    }

    /// Routes the example API hosts ([`API_HOSTS`]) to `addr`, trusting `pki`, with a 1.5 s
    /// upstream timeout.
    pub fn routed_to(mut self, pki: &Pki, addr: SocketAddr) -> GateBuilder<'a> {
        self.route = Some((addr, pki.ca_path.clone()));
        self
    }

    /// Any other setting; applied after the routes, in the order given.
    pub fn config(
        mut self,
        configure: impl FnOnce(&mut toolgate::Config) + Send + 'a,
    ) -> GateBuilder<'a> {
        self.config.push(Box::new(configure));
        self
    }

    /// Starts toolgate and returns once its listeners are bound.
    pub async fn start(self) -> Toolgate {
        let dir = match self.dir {
            Some(dir) => dir,
            None => lay_out(&self.files),
        };
        let certs = dir.path().join("certs");
        let ca_pem = toolgate::ca::export(&certs).unwrap();
        let mut config =
            toolgate::Config::new(dir.path().join("policies"), dir.path().join("data"), certs);
        if let Some((addr, ca)) = self.route {
            for host in API_HOSTS {
                config
                    .add_connect_to(&format!("{host}:443={addr}"))
                    .unwrap();
            }
            config.upstream_ca.push(ca);
            config.upstream_timeout = Duration::from_millis(1500);
        }
        config.listen_tls = self.listen_tls.as_ref().map(ServedFiles::files);
        config.admin_tls = self.admin_tls.as_ref().map(ServedFiles::files);
        for configure in self.config {
            configure(&mut config);
        }
        let proxy = match &self.proxy_bind {
            Some(bind) => Some(TcpListener::bind(bind).await.unwrap()),
            None => None,
        };
        let proxy_tls = match &self.listen_tls {
            Some(_) => Some(TcpListener::bind("127.0.0.1:0").await.unwrap()),
            None => None,
        };
        let tls_addr = proxy_tls.as_ref().map(|l| l.local_addr().unwrap());
        let metrics = match self.metrics {
            true => Some(TcpListener::bind("127.0.0.1:0").await.unwrap()),
            false => None,
        };
        let metrics_addr = metrics.as_ref().map(|l| l.local_addr().unwrap());
        let admin_ca = self.admin_tls.as_ref().map(|f| f.ca_pem.clone());
        let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let transparent = match &self.transparent_bind {
            Some(bind) => Some(TcpListener::bind(bind).await.unwrap()),
            None => None,
        };
        // Without a plain listener, `addr` is the TLS one.
        let addr = proxy
            .as_ref()
            .map(|l| l.local_addr().unwrap())
            .or(tls_addr)
            .unwrap();
        let admin_addr = admin.local_addr().unwrap();
        let transparent_addr = transparent.as_ref().map(|l| l.local_addr().unwrap());
        let (tx, rx) = oneshot::channel::<()>();
        let listeners = toolgate::Listeners {
            proxy,
            proxy_tls,
            admin,
            metrics,
            transparent,
        };
        let handle = tokio::spawn(async move {
            let ran = toolgate::run(listeners, config, async move {
                let _ = rx.await;
            })
            .await;
            // A gate that could not start says why (its listeners are closed: clients get
            // "connection refused", which alone tells nothing).
            if let Err(e) = &ran {
                eprintln!("toolgate did not start: {e}");
            }
            ran
        });
        ready(admin_addr, admin_ca.as_deref(), &handle).await;
        Toolgate {
            addr,
            admin_addr,
            transparent_addr,
            tls_addr,
            admin_ca,
            metrics_addr,
            ca_pem,
            dir,
            shutdown: Some(tx),
            handle: Some(handle),
        }
    }

    /// Starts a recording [`Upstream`] for the example API hosts under a fresh test PKI, and
    /// toolgate routed to it.
    pub async fn with_upstream(self) -> (Pki, Upstream, Toolgate) {
        let pki = Pki::new("test upstream CA");
        let upstream = Upstream::start(pki.server_config(&API_HOSTS)).await;
        let gate = self.routed_to(&pki, upstream.addr).start().await;
        (pki, upstream, gate)
    }

    /// Starts the stateful fakes of the example APIs ([`example_apis`]), and toolgate routed
    /// to them.
    pub async fn with_fakes(self) -> (Pki, Fakes, Toolgate) {
        let (pki, fakes) = example_apis().await;
        let gate = self.routed_to(&pki, fakes.addr).start().await;
        (pki, fakes, gate)
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

/// A directory with `policies` (file name, contents) and a fresh CA under `certs`.
fn lay_out(policies: &[(String, String)]) -> tempfile::TempDir {
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

/// Waits until the gate serves (its admin listener answers `/healthz`); a gate that stopped
/// instead (it could not start) fails the test with why, rather than leaving its clients to
/// meet a closed port.
async fn ready(
    admin: SocketAddr,
    admin_ca: Option<&str>,
    handle: &tokio::task::JoinHandle<Result<(), toolgate::StartError>>,
) {
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
    async fn healthz<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S) -> Option<()> {
        let ask = b"GET /healthz HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n";
        stream.write_all(ask).await.ok()?;
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer).await;
        answer.starts_with(b"HTTP/1.1 200").then_some(())
    }
    let serves = || async move {
        let stream = TcpStream::connect(admin).await.ok()?;
        match admin_ca {
            None => healthz(stream).await,
            Some(ca) => {
                healthz(
                    super::clients::tls_over(stream, "localhost", ca, &[])
                        .await
                        .ok()?,
                )
                .await
            }
        }
    };
    super::poll::until_some("toolgate serves", Duration::from_secs(60), || async {
        assert!(
            !handle.is_finished(),
            "toolgate stopped before it served (the reason is printed above)"
        );
        serves().await
    })
    .await;
}
