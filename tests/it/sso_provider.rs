//! The page's SSO sign-in against a real OpenID Provider: the certified `oidc-provider` npm
//! package (tests/oidc), run by the test as a node child process over HTTPS with the test
//! PKI's certificate (toolgate's upstream client speaks HTTPS only), its endpoints read from
//! its discovery document and its keys from its jwks_uri, and its devInteractions login form
//! posted by the test.

use std::collections::HashMap;
use std::path::Path;

use crate::sso::{cookie_of, recorded};
use crate::support::*;
use bytes::Bytes;
use http_body_util::Full;
use serde_json::{json, Value};
use tokio::io::AsyncBufReadExt;

const CLIENT: &str = "toolgate-page";
const SECRET: &str = "provider-test-secret";
/// Where toolgate asks the provider to send the browser back (under `--admin-url`).
const REDIRECT: &str = "http://admin/login/oidc/callback";

/// oidc-provider on loopback, stopped when dropped.
pub struct NodeIdp {
    _child: tokio::process::Child,
    /// Its standard output, kept open: node fails writing to a closed pipe.
    _stdout: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    _dir: tempfile::TempDir,
    pub port: u16,
    tls: std::sync::Arc<rustls::ClientConfig>,
}

/// Starts oidc-provider, or None after saying why it cannot run here (a failure under
/// `TOOLGATE_REQUIRE_BROWSER`, which CI sets where node and the test packages are installed).
async fn oidc_provider(pki: &Pki, groups: Value) -> Option<NodeIdp> {
    oidc_provider_at(pki, groups, REDIRECT, 0).await
}

/// oidc-provider on `port` (0: any free one), sending browsers back to `redirect`.
pub async fn oidc_provider_at(
    pki: &Pki,
    groups: Value,
    redirect: &str,
    port: u16,
) -> Option<NodeIdp> {
    let env = [
        ("CLIENT_ID", CLIENT.to_string()),
        ("CLIENT_SECRET", SECRET.to_string()),
        ("REDIRECT_URI", redirect.to_string()),
        ("GROUPS", groups.to_string()),
    ];
    node_server(pki, "provider.mjs", port, &env).await
}

/// A script of tests/oidc run by node on `port` (0: any free one) with the test PKI's
/// certificate for idp.acme.test and api.github.test (CERT, KEY, CA) and `env`, once it prints
/// `{"port": N}`. None after saying why it cannot run here.
pub async fn node_server(
    pki: &Pki,
    script: &str,
    port: u16,
    env: &[(&str, String)],
) -> Option<NodeIdp> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oidc");
    let node = std::process::Command::new("node").arg("--version").output();
    if node.is_err() || !dir.join("node_modules/oidc-provider").exists() {
        assert!(
            std::env::var_os("TOOLGATE_REQUIRE_BROWSER").is_none(),
            "TOOLGATE_REQUIRE_BROWSER is set but node or tests/oidc/node_modules is missing"
        );
        skips::skipped(
            "sso_provider (a real OpenID Provider, oidc-provider on node)",
            "node or tests/oidc/node_modules/oidc-provider is missing",
            "apt-get install nodejs npm; (cd tests/oidc && npm ci)",
        );
        return None;
    }
    let files = tempfile::tempdir().unwrap();
    let (cert, key) = pki.server_pem(&["idp.acme.test", "api.github.test"]);
    std::fs::write(files.path().join("cert.pem"), cert).unwrap();
    std::fs::write(files.path().join("key.pem"), key).unwrap();
    std::fs::write(files.path().join("ca.pem"), pki.ca_pem()).unwrap();
    let mut command = tokio::process::Command::new("node");
    command
        .arg(dir.join(script))
        .current_dir(&dir)
        .env("CERT", files.path().join("cert.pem"))
        .env("KEY", files.path().join("key.pem"))
        .env("CA", files.path().join("ca.pem"))
        .env("PORT", port.to_string())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command.spawn().unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(poll::SOON, lines.next_line())
        .await
        .expect("oidc-provider started")
        .unwrap()
        .expect("oidc-provider printed its port");
    let started: Value = serde_json::from_str(&first).unwrap();
    let port = started["port"].as_u64().unwrap() as u16;
    let tls = std::sync::Arc::new(client_tls(&pki.ca_pem(), &[b"http/1.1"]));
    Some(NodeIdp {
        _child: child,
        _stdout: lines,
        _dir: files,
        port,
        tls,
    })
}

impl NodeIdp {
    pub fn issuer(&self) -> String {
        format!("https://idp.acme.test:{}", self.port)
    }

    /// One request to the provider, as the browser would send it, with the jar's cookies.
    pub async fn send(
        &self,
        jar: &mut HashMap<String, String>,
        method: &str,
        path: &str,
        form: Option<String>,
    ) -> Answer {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .unwrap();
        let name = rustls::pki_types::ServerName::try_from("idp.acme.test").unwrap();
        let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await
            .unwrap();
        let cookies: Vec<String> = jar.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut req = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", format!("idp.acme.test:{}", self.port))
            .header("cookie", cookies.join("; "));
        if form.is_some() {
            req = req.header("content-type", "application/x-www-form-urlencoded");
        }
        let req = req
            .body(Full::new(Bytes::from(form.unwrap_or_default())))
            .unwrap();
        let answer = http1_over(tls, req).await;
        for set in answer.headers.get_all("set-cookie") {
            let pair = set.to_str().unwrap().split(';').next().unwrap();
            if let Some((k, v)) = pair.split_once('=') {
                match v.is_empty() {
                    true => jar.remove(k),
                    false => jar.insert(k.to_string(), v.to_string()),
                };
            }
        }
        answer
    }

    /// Signs `email` in at the provider from `authorize` (toolgate's redirect), following its
    /// redirects and posting its login and consent forms: where it sends the browser back.
    async fn sign_in(&self, authorize: &str, email: &str) -> String {
        self.sign_in_until(authorize, email, REDIRECT).await
    }

    /// [`NodeIdp::sign_in`] for a client whose redirect URI begins with `redirect`.
    pub async fn sign_in_until(&self, authorize: &str, email: &str, redirect: &str) -> String {
        let mut jar = HashMap::new();
        let origin = self.issuer();
        let mut answer = self
            .send(
                &mut jar,
                "GET",
                authorize.strip_prefix(&origin).unwrap(),
                None,
            )
            .await;
        for _ in 0..12 {
            if answer.status.is_redirection() {
                let to = answer.headers["location"].to_str().unwrap().to_string();
                if to.starts_with(redirect) {
                    return to;
                }
                let path = to.strip_prefix(&origin).unwrap_or(&to).to_string();
                answer = self.send(&mut jar, "GET", &path, None).await;
                continue;
            }
            let html = answer.text();
            assert_eq!(
                answer.status,
                200,
                "{}",
                html.split("<body>").last().unwrap_or(&html)
            );
            let at = html.find("action=\"").expect("a form") + 8;
            let action = html[at..at + html[at..].find('"').unwrap()].to_string();
            let form = match html.contains("name=\"login\"") {
                true => format!(
                    "prompt=login&login={}&password=any",
                    email.replace('@', "%40")
                ),
                false => "prompt=consent".to_string(),
            };
            let path = action.strip_prefix(&origin).unwrap_or(&action).to_string();
            answer = self.send(&mut jar, "POST", &path, Some(form)).await;
        }
        panic!(
            "the provider never sent the browser back: {}",
            answer.text()
        );
    }
}

pub fn policy(issuer: &str) -> String {
    format!(
        r#"
[[identity_provider]]
name = "acme-sso"
issuer = "{issuer}"
audience = "toolgate"
jwks_url = "{issuer}/jwks"
groups_claim = "groups"
login = {{ client_id = "{CLIENT}", client_secret_env = "ACME_PROVIDER_SECRET" }}
group_map = {{ "idp-payments" = "payments-leads" }}

[[approver]]
id = "carol@example.com"
token_env = "CAROL_PROVIDER_TOKEN"
"#
    )
}

/// Through toolgate's sign-in and the provider's: toolgate's answer at the callback.
async fn through(gate: &Toolgate, idp: &NodeIdp, email: &str) -> Answer {
    let start = gate.page("GET", "/login/oidc/acme-sso", None, None).await;
    assert_eq!(start.status, 303, "{}", start.text());
    let binding = cookie_of(&start, "tg_oidc").unwrap();
    let authorize = start.headers["location"].to_str().unwrap().to_string();
    let back = idp.sign_in(&authorize, email).await;
    let query = back.split_once('?').unwrap().1;
    gate.page(
        "GET",
        &format!("/login/oidc/callback?{query}"),
        Some(&binding),
        None,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn carol_signs_in_through_a_real_openid_provider_and_eve_is_refused() {
    std::env::set_var("ACME_PROVIDER_SECRET", SECRET);
    std::env::set_var("CAROL_PROVIDER_TOKEN", "carol-provider-token");
    let pki = Pki::new("test idp CA");
    let groups = json!({"carol@example.com": ["idp-payments"]});
    let Some(idp) = oidc_provider(&pki, groups).await else {
        return;
    };
    let idp_addr: std::net::SocketAddr = ([127, 0, 0, 1], idp.port).into();
    let port = idp.port;
    let gate = GateBuilder::new()
        .policy("sso.toml", policy(&idp.issuer()))
        .routed_to(&pki, idp_addr)
        .config(move |c| {
            c.connect_to
                .insert(("idp.acme.test".into(), port), idp_addr);
            c.admin_url = "http://admin".into();
        })
        .start()
        .await;
    let carol = through(&gate, &idp, "carol@example.com").await;
    assert_eq!(carol.status, 200, "{}", carol.text());
    let session = cookie_of(&carol, "tg_session").expect("a session");
    let queue = gate.page("GET", "/queue", Some(&session), None).await;
    assert_eq!(queue.status, 200, "{}", queue.text());

    let eve = through(&gate, &idp, "eve@example.com").await;
    assert_eq!(eve.status, 403, "{}", eve.text());
    assert!(eve.text().contains("eve@example.com") && eve.text().contains("not an approver"));

    let signed = recorded(&gate, "carol-provider-token", "sign_in", 1).await;
    assert_eq!(signed[0]["payload"]["via"], "signed in via acme-sso");
    assert_eq!(signed[0]["payload"]["groups"], json!(["payments-leads"]));
}

async fn next(
    lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
) -> String {
    tokio::time::timeout(std::time::Duration::from_secs(60), lines.next_line())
        .await
        .expect("the browser script stalled")
        .unwrap()
        .expect("the browser script ended early")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn carol_signs_in_with_sso_in_a_real_browser_and_approves_a_held_call() {
    let Some((browser_dir, chromium)) = browser() else {
        return;
    };
    std::env::set_var("ACME_PROVIDER_SECRET", SECRET);
    let pki = Pki::new("test upstream and idp CA");
    let upstream = Upstream::start(pki.server_config(&API_HOSTS)).await;
    // The provider's issuer names its port, which toolgate's policy names: a free port, held
    // until the provider starts, so that toolgate's own listeners (bound to port 0 meanwhile)
    // cannot take it.
    let reserved = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = reserved.local_addr().unwrap().port();
    let issuer = format!("https://idp.acme.test:{port}");
    let idp_addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    // carol is the examples' approver (group payments-leads); she signs in through acme-sso.
    let sso = policy(&issuer);
    let sso = &sso[..sso.find("[[approver]]").unwrap()];
    let gate = GateBuilder::examples()
        .policy("sso.toml", sso)
        .routed_to(&pki, upstream.addr)
        .config(move |c| {
            c.connect_to
                .insert(("idp.acme.test".into(), port), idp_addr);
        })
        .start()
        .await;
    let admin = format!("http://{}", gate.admin_addr);
    let redirect = format!("{admin}/login/oidc/callback");
    drop(reserved);
    let Some(_idp) = oidc_provider_at(&pki, json!({}), &redirect, port).await else {
        return;
    };
    let mut node = tokio::process::Command::new("node")
        .arg(browser_dir.join("sso.mjs"))
        .args([
            admin.as_str(),
            "acme-sso",
            "carol@example.com",
            "Refund 77 (minor units) of pi_sso_browser",
        ])
        .env("CHROMIUM", &chromium)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(node.stdout.take().unwrap()).lines();
    assert_eq!(next(&mut lines).await, "READY");
    let client = staging(&gate);
    let held = tokio::spawn(async move {
        let headers = [FORM, ("idempotency-key", "sso-browser-1")];
        let body = "payment_intent=pi_sso_browser&amount=77";
        send(
            &client,
            "POST",
            "https://api.stripe.com/v1/refunds",
            &headers,
            body,
        )
        .await
    });
    assert_eq!(next(&mut lines).await, "SEEN");
    let state = next(&mut lines).await;
    assert!(
        ["STATE approved", "STATE committing", "STATE committed"].contains(&state.as_str()),
        "{state}"
    );
    assert!(node.wait().await.unwrap().success());
    let _ = held.await;

    let signed = recorded(&gate, "demo-carol-token", "sign_in", 1).await;
    assert_eq!(signed[0]["payload"]["who"], "carol@example.com");
    assert_eq!(signed[0]["payload"]["via"], "signed in via acme-sso");
    // The proposal's story names carol and how she signed in.
    let approval = recorded(&gate, "demo-carol-token", "approval", 1).await;
    let proposal = approval[0]["proposal"].as_str().unwrap();
    let path = format!("/api/audit/story/{proposal}");
    let story = gate
        .admin("GET", &path, Some("demo-carol-token"), None)
        .await
        .text();
    assert!(
        story.contains("carol@example.com (signed in via acme-sso)"),
        "{story}"
    );
}
