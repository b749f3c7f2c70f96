//! The real binary: `serve` with SIGHUP reload and SIGTERM shutdown, `check`, and `ca`.

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::process::{copy_dir, exited, signal, ChildGuard, Started};
use crate::support::*;
use http_body_util::StreamBody;

const BIN: &str = env!("CARGO_BIN_EXE_toolgate");

pub(crate) fn start_binary(dir: &std::path::Path, extra: &[&str]) -> Started {
    process::start_serve(BIN, dir, extra)
}

/// SIGTERM, then waits (up to `limit`) for a clean exit.
async fn stop_cleanly(child: &mut ChildGuard, limit: Duration) {
    signal(child.0.id(), "-TERM");
    let status = exited(child, "SIGTERM stops toolgate", limit).await;
    assert!(status.success(), "{status}");
}

/// A recording upstream for `host`, the example policies in a fresh folder, and the `serve`
/// flags that route `host` to that upstream with `timeout` for upstream answers.
pub(crate) async fn routed(
    host: &str,
    timeout: &str,
) -> (Pki, Upstream, tempfile::TempDir, Vec<String>) {
    let pki = Pki::new("test upstream CA");
    let upstream = Upstream::start(pki.server_config(&[host])).await;
    let dir = tempfile::tempdir().unwrap();
    copy_dir(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies"),
        &dir.path().join("policies"),
    );
    let args = vec![
        "--connect-to".to_string(),
        format!("{host}:443={}", upstream.addr),
        "--upstream-ca".to_string(),
        pki.ca_path.to_string_lossy().into_owned(),
        "--upstream-timeout".to_string(),
        timeout.to_string(),
    ];
    (pki, upstream, dir, args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_in_flight_when_toolgate_is_killed_is_never_sent_again() {
    let (_pki, upstream, dir, args) = routed("api.github.com", "60s").await;
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (mut child, proxy, _, _log) = start_binary(dir.path(), &args);
    let ca_pem = std::fs::read_to_string(dir.path().join("certs/ca.pem")).unwrap();
    let agent = Some(("support-bot-staging", "demo-staging-token"));
    let body = serde_json::json!({"title": "hang-upstream"}).to_string();
    let url = "https://api.github.com/repos/acme/web/issues";

    let client = client_via(proxy, agent, &ca_pem, http::Version::HTTP_11);
    let b = body.clone();
    let in_flight = tokio::spawn(async move { send(&client, "POST", url, &[JSON], &b).await });
    reaches(&upstream, "the call reaches the upstream").await;
    assert_eq!(upstream.count(), 1, "the call reached the upstream");
    signal(child.0.id(), "-KILL");
    let _ = child.0.wait();
    let _ = in_flight.await;

    let (_child, proxy, _, _log) = start_binary(dir.path(), &args);
    let client = client_via(proxy, agent, &ca_pem, http::Version::HTTP_11);
    let got = send(&client, "POST", url, &[JSON], &body).await.unwrap();
    assert_eq!(
        (got.status.as_u16(), got.code().as_str()),
        (409, "idempotency_conflict")
    );
    assert!(got.message().contains("unknown"), "{}", got.message());
    // A sleep: a window in which a retry sent behind the refusal would show.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(upstream.count(), 1, "the retry was not sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_reloads_on_sighup_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies");
    copy_dir(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies"),
        &policies,
    );
    // Nothing is forwarded in this test; the route only spares a DNS lookup at CONNECT.
    let (mut child, proxy, admin, log) = start_binary(
        dir.path(),
        &[
            "--reload-interval",
            "1h",
            "--connect-to",
            "api.stripe.com:443=127.0.0.1:9",
        ],
    );
    let pid = child.0.id();

    let ca = std::fs::read_to_string(dir.path().join("certs/ca.pem")).unwrap();
    let client = client_via(
        proxy,
        Some(("support-bot-staging", "demo-staging-token")),
        &ca,
        http::Version::HTTP_11,
    );
    let url = "https://api.stripe.com/v1/balance";
    let got = send(&client, "GET", url, &[], "").await.unwrap();
    assert!(
        got.message().contains("no tool contract matches"),
        "{}",
        got.message()
    );

    std::fs::write(
        policies.join("balance.toml"),
        "[[tool]]\nname = \"stripe.balance.get\"\nhost = \"api.stripe.com\"\nmethod = \"GET\"\npath = \"/v1/balance\"\nmode = \"deny\"\n",
    )
    .unwrap();
    signal(pid, "-HUP");
    let denied = || async {
        let got = send(&client, "GET", url, &[], "").await.unwrap();
        got.message().contains("mode deny")
    };
    poll::until("SIGHUP reloads the policies", poll::SOON, denied).await;
    let health = Command::new("curl")
        .args(["-sf", &format!("http://{admin}/healthz")])
        .output();
    if let Ok(out) = health {
        assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n");
    }

    stop_cleanly(&mut child, Duration::from_secs(20)).await;
    let log = log.join().unwrap().join("\n");
    assert!(log.contains("policies reloaded"));
    // The injected demo secrets never reach the log.
    assert!(!log.contains("sk_test_toolgate_demo_placeholder"));
    assert!(!log.contains("demo-staging-token"));
}

#[test]
fn check_passes_on_the_examples_and_fails_on_a_broken_folder() {
    let out = Command::new(BIN)
        .args([
            "check",
            "--policies",
            concat!(env!("CARGO_MANIFEST_DIR"), "/policies"),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("stripe.refunds.create"));
    assert!(table.contains("cannot be undone"));
    // The example schemas are imported closed: nothing is left for `check` to close.
    assert!(!table.contains("treated as closed"), "{table}");
    assert!(table.contains(
        "stripe.customers.create: undone by DELETE /v1/customers/{response.id} through tool stripe.customers.delete"
    ));
    assert!(
        !table.contains("launch gate"),
        "the examples pass the launch gate: {table}"
    );
    assert!(!table.contains("matches no tool contract"), "{table}");
    assert!(!table.contains("admits `expand`"), "{table}");

    // A tool that admits Stripe's `expand` beside one that hides fields: check says how the
    // hidden fields could come back (issue 23 row 9), and still passes.
    let expand_dir = tempfile::tempdir().unwrap();
    copy_dir(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies"),
        expand_dir.path(),
    );
    let schema = expand_dir
        .path()
        .join("schemas/stripe/payment_intents.create.json");
    let mut with_expand: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&schema).unwrap()).unwrap();
    with_expand["properties"]["expand"] =
        serde_json::json!({"type": "array", "items": {"type": "string"}});
    std::fs::write(&schema, with_expand.to_string()).unwrap();
    let out = Command::new(BIN)
        .args(["check", "--policies"])
        .arg(expand_dir.path())
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{table}");
    assert!(
        table.contains("stripe.payment_intents.create: admits `expand`")
            && table.contains("stripe.customers.retrieve hides /phone, /address, /shipping"),
        "{table}"
    );

    // The launch gate: one credential for every tool, an irreversible tool in auto, a tool with
    // side effects and a body nobody described. Each is named, and check fails.
    let gate_dir = tempfile::tempdir().unwrap();
    std::fs::write(
        gate_dir.path().join("gate.toml"),
        r#"
[[credential]]
name = "one-key"
env = "PATH"
header = "Authorization"
format = "Bearer {secret}"

[[tool]]
name = "a.read"
host = "api.example.com"
method = "GET"
path = "/a"
credential = { prod = "one-key" }

[[tool]]
name = "a.send"
host = "api.example.com"
method = "POST"
path = "/send"
side_effects = "irreversible"
idempotency = "payload"
body = { format = "json" }
credential = { prod = "one-key" }
"#,
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["check", "--policies"])
        .arg(gate_dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for finding in [
        "launch gate: credential one-key is shared by every tool (2)",
        "launch gate: a.send is irreversible and runs in mode auto",
        "launch gate: a.send has side effects but no body schema",
    ] {
        assert!(text.contains(finding), "{finding}: {text}");
    }
    assert!(String::from_utf8_lossy(&out.stderr).contains("fail the launch gate"));

    // An undo that leads nowhere is warned about; a malformed one is a load error.
    let dir = tempfile::tempdir().unwrap();
    // `check` over a folder holding one tool with `rollback`.
    let check_with = |rollback: &str| {
        std::fs::write(
            dir.path().join("x.toml"),
            format!(
                "[[tool]]\nname = \"x.create\"\nhost = \"api.example.com\"\nmethod = \"POST\"\npath = \"/x\"\nside_effects = \"reversible\"\nidempotency = \"key\"\nrollback = {rollback}\n"
            ),
        )
        .unwrap();
        Command::new(BIN)
            .args(["check", "--policies"])
            .arg(dir.path())
            .output()
            .unwrap()
    };
    let out = check_with(r#"{ method = "DELETE", path = "/x/{response.id}" }"#);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(
            "warning: x.create: its rollback DELETE /x/{response.id} matches no tool contract"
        ),
        "{text}"
    );
    let out = check_with(r#"{ method = "DELETE", path = "/x/{agent.token}" }"#);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("must name response.x, params.x, body.x or query.x"));

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.toml"),
        "[[tool]]\nname = \"x\"\nhost = \"api.example.com\"\nmethod = \"GET\"\npath = \"/x\"\nmdoe = \"deny\"\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["check", "--policies"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml") && err.contains("mdoe") && err.contains("line 6"),
        "{err}"
    );
}

#[test]
fn ca_init_and_export() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let out = Command::new(BIN)
        .args(["ca", "init", "--certs"])
        .arg(&certs)
        .output()
        .unwrap();
    assert!(out.status.success());
    let out = Command::new(BIN)
        .args(["ca", "export", "--certs"])
        .arg(&certs)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("-----BEGIN CERTIFICATE-----"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(certs.join("ca-key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "the CA key is readable by its owner only");
    }
}

/// Calls the admin API of a toolgate run as a child process.
pub(crate) async fn admin_api(
    admin: &str,
    method: &str,
    path: &str,
    token: &str,
    body: Option<serde_json::Value>,
) -> Answer {
    let stream = tokio::net::TcpStream::connect(admin).await.unwrap();
    let mut req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "admin")
        .header("authorization", format!("Bearer {token}"));
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    let req = req
        .body(http_body_util::Full::new(bytes::Bytes::from(
            body.map(|b| b.to_string()).unwrap_or_default(),
        )))
        .unwrap();
    http1_over(stream, req).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_during_a_commit_the_proposal_is_outcome_unknown_and_never_resent() {
    let (_pki, upstream, dir, args) = routed("api.stripe.com", "60s").await;
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (mut child, proxy, admin, _log) = start_binary(dir.path(), &args);
    let ca_pem = std::fs::read_to_string(dir.path().join("certs/ca.pem")).unwrap();
    let agent = Some(("support-bot-staging", "demo-staging-token"));
    let url = "https://api.stripe.com/v1/refunds";
    let body = "payment_intent=hang-upstream&amount=100";

    let client = client_via(proxy, agent, &ca_pem, http::Version::HTTP_11);
    let held = tokio::spawn(async move {
        send(
            &client,
            "POST",
            url,
            &[FORM, ("idempotency-key", "kill-1")],
            body,
        )
        .await
    });
    let id = first_pending(&admin).await;
    // Refunds are sent on approval: the approver's request waits for the send, which hangs.
    let approving = {
        let (admin, path) = (admin.clone(), format!("/api/proposals/{id}/approve"));
        tokio::spawn(
            async move { admin_api(&admin, "POST", &path, "demo-carol-token", None).await },
        )
    };
    // The approval commits; the upstream receives it and hangs.
    reaches(&upstream, "the approved call reaches the upstream").await;
    assert_eq!(upstream.count(), 1);
    signal(child.0.id(), "-KILL");
    let _ = child.0.wait();
    let _ = held.await;
    let _ = approving.await;

    let (_child, proxy, admin, _log) = start_binary(dir.path(), &args);
    let got = admin_api(
        &admin,
        "GET",
        &format!("/api/proposals/{id}"),
        "demo-carol-token",
        None,
    )
    .await;
    assert_eq!(got.json()["state"], "outcome_unknown");
    let client = client_via(proxy, agent, &ca_pem, http::Version::HTTP_11);
    let got = send(
        &client,
        "POST",
        url,
        &[FORM, ("idempotency-key", "kill-2")],
        body,
    )
    .await
    .unwrap();
    assert_eq!(got.status, 409, "{}", String::from_utf8_lossy(&got.body));
    assert!(
        got.message().contains("outcome is unknown"),
        "{}",
        got.message()
    );
    // A sleep: a window in which a call sent again behind the refusal would show.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(upstream.count(), 1, "nothing was sent again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_right_after_a_commit_keeps_its_commit_and_response_events() {
    let (_pki, _upstream, dir, args) = routed("api.stripe.com", "30s").await;
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (mut child, proxy, _, _log) = start_binary(dir.path(), &args);
    let ca_pem = std::fs::read_to_string(dir.path().join("certs/ca.pem")).unwrap();
    let client = client_via(
        proxy,
        Some(("support-bot-staging", "demo-staging-token")),
        &ca_pem,
        http::Version::HTTP_11,
    );
    let got = send(
        &client,
        "POST",
        "https://api.stripe.com/v1/customers",
        &[FORM, ("idempotency-key", "sigkill-1")],
        "name=Ann",
    )
    .await
    .unwrap();
    assert_eq!(got.status, 200);
    signal(child.0.id(), "-KILL");
    let _ = child.0.wait();
    let request_id = got.headers["toolgate-request-id"].to_str().unwrap();
    let out = Command::new(BIN)
        .args(["audit", "story", request_id, "--json", "--data-dir"])
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let kinds = texts(&v, "events", "kind");
    assert!(
        kinds.contains(&"commit") && kinds.contains(&"response"),
        "{kinds:?}"
    );
    let out = Command::new(BIN)
        .args(["audit", "verify", "--data-dir"])
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Resident and peak memory (KiB) and open file descriptors of a process, from /proc.
fn footprint(pid: u32) -> (u64, u64, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0);
    (field("VmRSS:"), field("VmHWM:"), fds)
}

/// `GET /healthz` on the admin listener, with a deadline.
async fn healthz(admin: &str) -> bool {
    let probe = async {
        let stream = tokio::net::TcpStream::connect(admin).await.ok()?;
        let req = http::Request::get("/healthz")
            .header("host", "admin")
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .ok()?;
        Some(http1_over(stream, req).await.status == 200)
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), probe).await,
        Ok(Some(true))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_concurrent_writes_completes_while_healthz_answers_and_sigterm_exits() {
    let (_pki, upstream, dir, args) = routed("api.github.com", "30s").await;
    let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
    args.extend(["--shutdown-grace", "3s"]);
    let (mut child, proxy, admin, _log) = start_binary(dir.path(), &args);
    let ca_pem = std::fs::read_to_string(dir.path().join("certs/ca.pem")).unwrap();

    // /healthz is asked every 50 ms for as long as the burst lasts.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (s, a) = (stop.clone(), admin.clone());
    let prober = tokio::spawn(async move {
        let (mut asked, mut failed) = (0, 0);
        while !s.load(std::sync::atomic::Ordering::Relaxed) {
            asked += 1;
            if !healthz(&a).await {
                failed += 1;
            }
            // A sleep: the probe's pace for as long as the burst lasts.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (asked, failed)
    });
    for round in 0..3 {
        let mut calls = Vec::new();
        for i in 0..48 {
            // Every call on its own connection, each a distinct write.
            let client = client_via(
                proxy,
                Some(("support-bot-staging", "demo-staging-token")),
                &ca_pem,
                http::Version::HTTP_11,
            );
            let body = serde_json::json!({"title": format!("burst {round}-{i}")}).to_string();
            calls.push(tokio::spawn(async move {
                send(
                    &client,
                    "POST",
                    "https://api.github.com/repos/acme/web/issues",
                    &[JSON],
                    &body,
                )
                .await
                .map(|a| a.status.as_u16())
            }));
        }
        let answers = tokio::time::timeout(
            Duration::from_secs(60),
            futures_util::future::join_all(calls),
        )
        .await
        .expect("the burst froze the gateway");
        for a in answers {
            assert_eq!(a.unwrap().unwrap(), 200);
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (asked, failed) = prober.await.unwrap();
    assert!(asked > 0);
    assert_eq!(
        failed, 0,
        "/healthz failed {failed} of {asked} times during the burst"
    );
    assert_eq!(
        upstream.count(),
        144,
        "each write reached the upstream exactly once"
    );

    stop_cleanly(&mut child, Duration::from_secs(10)).await;
}

/// HTTP/2 over a CONNECT tunnel to `api.github.com`, as the example staging agent.
async fn h2_tunnel(
    proxy: std::net::SocketAddr,
    ca_pem: &str,
) -> Option<hyper::client::conn::http2::SendRequest<StreamBody<ChunkStream>>> {
    let (status, _, stream) = raw_connect(
        proxy,
        "api.github.com:443",
        Some(("support-bot-staging", "demo-staging-token")),
    )
    .await;
    if status != 200 {
        return None;
    }
    let tls = tls_over(stream, "api.github.com", ca_pem, &[b"h2"])
        .await
        .ok()?;
    let (sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .ok()?;
    tokio::spawn(conn);
    Some(sender)
}

type ChunkStream = futures_util::stream::BoxStream<
    'static,
    Result<hyper::body::Frame<bytes::Bytes>, std::convert::Infallible>,
>;

/// A body that sends `sent` bytes of a declared larger one, then stalls for `stall`.
fn half_sent(sent: usize, stall: Duration) -> StreamBody<ChunkStream> {
    use futures_util::StreamExt;
    let chunk = bytes::Bytes::from(vec![b'a'; 64 * 1024]);
    let chunks = sent / chunk.len();
    let s = futures_util::stream::iter(
        (0..chunks).map(move |_| Ok(hyper::body::Frame::data(chunk.clone()))),
    )
    .chain(futures_util::stream::once(async move {
        // A sleep: a client that stalls mid-body is the point.
        tokio::time::sleep(stall).await;
        Ok(hyper::body::Frame::data(bytes::Bytes::new()))
    }))
    .boxed();
    StreamBody::new(s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_bodies_on_many_h2_streams_stay_within_the_caps_and_time_out() {
    let (_pki, upstream, dir, args) = routed("api.github.com", "30s").await;
    let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
    args.extend([
        "--body-read-timeout",
        "2s",
        "--max-buffered-per-agent",
        "16MiB",
        "--max-buffered",
        "64MiB",
        "--max-streams",
        "32",
    ]);
    let (child, proxy, _admin, _log) = start_binary(dir.path(), &args);
    let pid = child.0.id();
    let ca_pem = std::fs::read_to_string(dir.path().join("certs/ca.pem")).unwrap();
    let (rss_before, _, _) = footprint(pid);

    // 10 tunnels x 200 streams, each declaring 1 MB and sending half of it.
    let mut calls = Vec::new();
    for _ in 0..10 {
        let sender = h2_tunnel(proxy, &ca_pem).await.expect("tunnel");
        for i in 0..200 {
            let mut sender = sender.clone();
            calls.push(tokio::spawn(async move {
                let req = http::Request::post("https://api.github.com/repos/acme/web/issues")
                    .header("content-type", "application/json")
                    .header("content-length", (1usize << 20).to_string())
                    .body(half_sent(512 * 1024, Duration::from_secs(30)))
                    .unwrap();
                let _ = i;
                if sender.ready().await.is_err() {
                    return None;
                }
                let resp = sender.send_request(req).await.ok()?;
                let status = resp.status().as_u16();
                let body = http_body_util::BodyExt::collect(resp.into_body())
                    .await
                    .ok()?
                    .to_bytes();
                Some((status, body))
            }));
        }
    }
    // Peak memory while the attack runs and the timeouts fire.
    let mut peak = 0;
    let until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < until {
        peak = peak.max(footprint(pid).0);
        // A sleep: the sampling pace over a fixed window of attack.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let answers = tokio::time::timeout(
        Duration::from_secs(60),
        futures_util::future::join_all(calls),
    )
    .await
    .expect("half-sent bodies were never answered");
    let mut codes = std::collections::BTreeMap::new();
    for (status, body) in answers.into_iter().flat_map(|a| a.unwrap()) {
        let v: serde_json::Value = serde_json::from_slice(&body).expect("a JSON refusal");
        *codes
            .entry((
                status,
                v["error"]["code"].as_str().unwrap_or("").to_string(),
            ))
            .or_insert(0) += 1;
    }
    // Every stream that got an answer got a JSON refusal: timed out, or over the caps.
    assert!(!codes.is_empty());
    for (status, code) in codes.keys() {
        assert!(
            matches!(
                (*status, code.as_str()),
                (408, "validation_error") | (429, "rate_limited")
            ),
            "{codes:?}"
        );
    }
    assert!(
        codes.contains_key(&(408, "validation_error".to_string())),
        "{codes:?}"
    );
    assert_eq!(upstream.count(), 0, "nothing half-sent went upstream");
    let grew_mb = peak.saturating_sub(rss_before) / 1024;
    eprintln!("RSS before {rss_before} KiB, peak {peak} KiB, answers {codes:?}");
    assert!(
        grew_mb < 200,
        "memory grew by {grew_mb} MB under the attack"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_so_one_agent_cannot_hold_every_descriptor() {
    let (_pki, upstream, dir, args) = routed("api.github.com", "30s").await;
    let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
    args.extend([
        "--idle-timeout",
        "2s",
        "--max-connections",
        "64",
        "--max-connections-per-agent",
        "16",
    ]);
    let (child, proxy, _admin, _log) = start_binary(dir.path(), &args);
    let pid = child.0.id();
    let ca_pem = std::fs::read_to_string(dir.path().join("certs/ca.pem")).unwrap();
    let (_, _, fds_before) = footprint(pid);

    // One agent opens tunnels and holds them idle; past its cap it is refused.
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..24 {
        let (status, head, stream) = raw_connect(
            proxy,
            "api.github.com:443",
            Some(("support-bot-staging", "demo-staging-token")),
        )
        .await;
        match status {
            200 => held.push(stream),
            429 => {
                assert!(head.contains("rate_limited"), "{head}");
                refused += 1;
            }
            other => panic!("unexpected {other}: {head}"),
        }
    }
    assert_eq!((held.len(), refused), (16, 8));
    // And 100 more bare connections that never send a byte.
    let mut bare = Vec::new();
    for _ in 0..100 {
        bare.push(tokio::net::TcpStream::connect(proxy).await.unwrap());
    }
    // A sleep: a window for the bare connections to be taken; what is asserted is that the
    // descriptors stay under the cap whatever was taken in it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, _, fds_held) = footprint(pid);
    assert!(
        fds_held <= fds_before + 64 + 8,
        "open descriptors went from {fds_before} to {fds_held} past the connection cap"
    );

    // Another agent still gets through once the idle ones are closed.
    let other = client_via(
        proxy,
        Some(("support-bot-prod", "demo-prod-token")),
        &ca_pem,
        http::Version::HTTP_11,
    );
    let got = tokio::time::timeout(
        Duration::from_secs(20),
        send(
            &other,
            "GET",
            "https://api.github.com/repos/acme/web",
            &[],
            "",
        ),
    )
    .await
    .expect("another agent was starved")
    .unwrap();
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(upstream.count(), 1);
    // The held tunnels were closed by toolgate.
    let mut buf = [0u8; 1];
    for mut s in held {
        use tokio::io::AsyncReadExt;
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("an idle tunnel stayed open");
        assert!(matches!(n, Ok(0) | Err(_)), "an idle tunnel stayed open");
    }
    drop(bare);
}

/// CPU time (user + system, in clock ticks) a process has used.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    n(11) + n(12)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_descriptors_the_accept_loop_backs_off_and_recovers() {
    if Command::new("prlimit").arg("--version").output().is_err() {
        crate::support::skips::skipped(
            "out_of_descriptors_the_accept_loop_backs_off_and_recovers",
            "prlimit is not installed",
            "apt-get install util-linux",
        );
        return;
    }
    let (_pki, upstream, dir, args) = routed("api.github.com", "30s").await;
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (mut child, proxy, _admin, log) = start_binary(dir.path(), &args);
    let pid = child.0.id();
    let ca_pem = std::fs::read_to_string(dir.path().join("certs/ca.pem")).unwrap();
    // Leave toolgate a handful of descriptors above what it holds now.
    let (_, _, fds) = footprint(pid);
    let limit = format!("--nofile={0}:{0}", fds + 6);
    let ok = Command::new("prlimit")
        .args(["--pid", &pid.to_string(), &limit])
        .status()
        .unwrap();
    assert!(ok.success());
    let mut held = Vec::new();
    for _ in 0..40 {
        held.push(tokio::net::TcpStream::connect(proxy).await.unwrap());
    }
    let full = || std::future::ready(footprint(pid).2 >= fds + 6);
    poll::until("toolgate runs out of descriptors", poll::SOON, full).await;
    let before = cpu_ticks(pid);
    // A sleep: the window over which the CPU the accept loop burns is measured.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let used = cpu_ticks(pid) - before;
    // A spinning accept loop burns a whole core: about 200 ticks in 2 s.
    assert!(
        used < 60,
        "toolgate used {used} ticks in 2 s out of descriptors"
    );
    drop(held);
    let client = client_via(
        proxy,
        Some(("support-bot-staging", "demo-staging-token")),
        &ca_pem,
        http::Version::HTTP_11,
    );
    let got = tokio::time::timeout(
        Duration::from_secs(20),
        send(
            &client,
            "GET",
            "https://api.github.com/repos/acme/web",
            &[],
            "",
        ),
    )
    .await
    .expect("toolgate did not recover")
    .unwrap();
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(upstream.count(), 1);
    signal(pid, "-TERM");
    let _ = child.0.wait();
    let lines = log.join().unwrap();
    assert!(
        lines.iter().any(|l| l.contains("accept failed")),
        "the accept errors were logged"
    );
}

/// Reads on 16 connections, SIGTERM in the middle of them: every request the upstream received
/// has its audit event after the stop, and the chain verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_leaves_every_forwarded_request_audited() {
    let pki = Pki::new("test upstream CA");
    let upstream = Upstream::start(pki.server_config(&["api.stripe.com"])).await;
    let dir = tempfile::tempdir().unwrap();
    copy_dir(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/policies"),
        &dir.path().join("policies"),
    );
    let route = format!("api.stripe.com:443={}", upstream.addr);
    let ca = pki.ca_path.to_string_lossy().into_owned();
    let args = [
        "--connect-to",
        &route,
        "--upstream-ca",
        &ca,
        "--shutdown-grace",
        "5s",
    ];
    let (mut child, proxy, _, _log) = start_binary(dir.path(), &args);
    let ca_pem = std::fs::read_to_string(dir.path().join("certs/ca.pem")).unwrap();

    let mut workers = Vec::new();
    for w in 0..16 {
        let client = client_via(
            proxy,
            Some(("bench", "bench-token")),
            &ca_pem,
            http::Version::HTTP_11,
        );
        workers.push(tokio::spawn(async move {
            for i in 0..5000 {
                let url = format!("https://api.stripe.com/v1/customers/cus_{w}_{i}");
                match send(&client, "GET", &url, &[], "").await {
                    Ok(a) if a.status == 200 => {}
                    _ => return i,
                }
            }
            5000
        }));
    }
    let under_way = || std::future::ready(upstream.count() >= 100);
    poll::until(
        "the readers are under way",
        Duration::from_secs(30),
        under_way,
    )
    .await;
    stop_cleanly(&mut child, Duration::from_secs(30)).await;
    for w in workers {
        let _ = w.await;
    }

    let received: std::collections::BTreeSet<String> =
        upstream.received().into_iter().map(|r| r.path).collect();
    assert!(received.len() > 50, "only {} requests", received.len());
    let data = dir.path().join("data");
    let out = Command::new(BIN)
        .args(["audit", "export", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let audited: std::collections::BTreeSet<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["kind"] == "request")
        .filter_map(|e| e["payload"]["path"].as_str().map(str::to_string))
        .collect();
    let missing: Vec<&String> = received.difference(&audited).collect();
    assert!(
        missing.is_empty(),
        "{} of {} forwarded requests have no audit event: {:?}",
        missing.len(),
        received.len(),
        &missing[..missing.len().min(5)]
    );
    let out = Command::new(BIN)
        .args(["audit", "verify", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Two replicas (real processes) on one PostgreSQL database: one is killed while sending an
/// approved call; the other finds the commit abandoned once the dead replica's heartbeat stops,
/// turns it into `outcome_unknown`, and never sends it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_commit_leaves_outcome_unknown_on_the_others() {
    let Some(cluster) = crate::support::pg::Cluster::start("a_replica_killed_mid_commit") else {
        return;
    };
    let (_pki, upstream, dir, mut args) = routed("api.stripe.com", "60s").await;
    args.extend(["--database-url".to_string(), cluster.url.clone()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (mut a, proxy_a, admin_a, _log_a) = start_binary(dir.path(), &args);
    let (_b, proxy_b, admin_b, _log_b) = start_binary(dir.path(), &args);
    let ca_pem = std::fs::read_to_string(dir.path().join("certs/ca.pem")).unwrap();
    let agent = Some(("support-bot-staging", "demo-staging-token"));
    let url = "https://api.stripe.com/v1/refunds";
    let body = "payment_intent=hang-upstream&amount=100";
    let refund = |proxy| {
        let client = client_via(proxy, agent, &ca_pem, http::Version::HTTP_11);
        async move {
            send(
                &client,
                "POST",
                url,
                &[FORM, ("idempotency-key", "replica-kill-1")],
                body,
            )
            .await
        }
    };

    // Held and approved on A (refunds are sent on approval): A sends it and the upstream hangs.
    let held = tokio::spawn(refund(proxy_a));
    let id = first_pending(&admin_a).await;
    let approving = {
        let (admin, path) = (admin_a.clone(), format!("/api/proposals/{id}/approve"));
        tokio::spawn(
            async move { admin_api(&admin, "POST", &path, "demo-carol-token", None).await },
        )
    };
    reaches(&upstream, "A sends the approved call").await;
    assert_eq!(upstream.count(), 1, "A is sending it");
    let path = format!("/api/proposals/{id}");
    let got = admin_api(&admin_b, "GET", &path, "demo-carol-token", None).await;
    assert_eq!(
        got.json()["state"],
        "committing",
        "B leaves a live replica's commit alone"
    );

    signal(a.0.id(), "-KILL");
    let _ = a.0.wait();
    let _ = held.await;
    let _ = approving.await;

    // B finds it abandoned within the lease (5 s) and its next look (every 2 s).
    let killed = Instant::now();
    let unknown = || async {
        let got = admin_api(&admin_b, "GET", &path, "demo-carol-token", None).await;
        got.json()["state"] == "outcome_unknown"
    };
    let what = "B finds the dead replica's commit abandoned";
    poll::until(what, Duration::from_secs(20), unknown).await;
    assert!(
        killed.elapsed() < Duration::from_secs(10),
        "found in {:?}",
        killed.elapsed()
    );

    // The agent's retry through B is told the outcome is unknown; nothing is sent again.
    let got = refund(proxy_b).await.unwrap();
    assert_eq!(got.status, 409, "{}", got.text());
    assert!(
        got.message().contains("outcome is unknown"),
        "{}",
        got.message()
    );
    // A sleep: a window in which a call sent again behind the refusal would show.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(upstream.count(), 1, "nothing was sent again");
}

/// The id of the first pending proposal, once one appears (polled).
async fn first_pending(admin: &str) -> String {
    poll::until_some("a proposal is pending", poll::SOON, || async {
        let got = admin_api(
            admin,
            "GET",
            "/api/proposals?state=pending",
            "demo-carol-token",
            None,
        )
        .await;
        let first = got.json()["proposals"].as_array()?.first()?.clone();
        Some(first["id"].as_str().unwrap().to_string())
    })
    .await
}

/// Waits until `upstream` received a request.
async fn reaches(upstream: &Upstream, what: &str) {
    poll::until(what, poll::SOON, || {
        std::future::ready(upstream.count() >= 1)
    })
    .await;
}

/// Issue 23 row 14: a second toolgate on a data dir another one holds stops at once with an
/// error naming the data dir and saying what holds it, not sled's raw lock error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_toolgate_on_the_same_data_dir_says_so() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies"),
        &dir.path().join("policies"),
    );
    let (mut first, _, _, _log) = start_binary(dir.path(), &[]);
    let data = dir.path().join("data");
    let second = crate::support::process::serve_command(BIN, dir.path())
        .output()
        .unwrap();
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains("in use by another toolgate"), "{stderr}");
    assert!(stderr.contains(&data.display().to_string()), "{stderr}");
    assert!(
        !stderr.contains("WouldBlock") && !stderr.contains("panicked"),
        "{stderr}"
    );
    stop_cleanly(&mut first, Duration::from_secs(20)).await;
}

/// Issue 25: `toolgate check` warns of what people get wrong (each warning naming its file and
/// line), passes with warnings, and fails on them with `--strict`; the examples pass `--strict`.
#[test]
fn check_warns_of_likely_mistakes_by_file_and_line_and_strict_fails_on_them() {
    let out = Command::new(BIN)
        .args([
            "check",
            "--strict",
            "--policies",
            concat!(env!("CARGO_MANIFEST_DIR"), "/policies"),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the examples pass --strict: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!text.contains("warning: agent"), "{text}");

    let hash = "0".repeat(64);
    let policy = format!(
        r#"# A policy folder with one of each mistake.
[[agent]]
id = "bot"
token_sha256 = "{hash}"
owner = "o@example.com"
environment = "prod"
tools = ["a.read", "a.typo*"]

[[approver]]
id = "carol@example.com"
token_sha256 = "{hash}"
groups = ["leads"]

[[credential]]
name = "used-key"
env = "PATH"
header = "Authorization"
format = "Bearer {{secret}}"

[[credential]]
name = "spare-key"
env = "PATH"
header = "Authorization"
format = "Bearer {{secret}}"

[[tool]]
name = "a.read"
host = "api.example.com"
method = "GET"
path = "/a"
mode = "approve"
credential = {{ prod = "used-key" }}
approval = {{ groups = ["leeds"] }}

[[tool]]
name = "a.orphan"
host = "api.example.com"
method = "GET"
path = "/orphan"
"#
    );
    let line = |needle: &str| {
        policy
            .lines()
            .position(|l| l.contains(needle))
            .map(|i| i + 1)
            .unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mistakes.toml");
    std::fs::write(&file, &policy).unwrap();
    let run = |strict: bool| {
        let mut cmd = Command::new(BIN);
        cmd.arg("check");
        if strict {
            cmd.arg("--strict");
        }
        cmd.arg("--policies").arg(dir.path()).output().unwrap()
    };
    let out = run(false);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "warnings alone pass: {text}");
    let at = |needle: &str| format!("{}:{}: warning: ", file.display(), line(needle));
    for expected in [
        format!(
            "{}agent bot: tools glob \"a.typo*\" matches no tool",
            at("tools = [")
        ),
        format!(
            "{}tool a.read: approval group \"leeds\" has no approver",
            at("approval = {")
        ),
        format!(
            "{}credential \"spare-key\" is used by no tool",
            at("name = \"spare-key\"")
        ),
        format!(
            "{}tool a.orphan may be called by no agent",
            at("name = \"a.orphan\"")
        ),
    ] {
        assert!(text.contains(&expected), "{expected}\nin:\n{text}");
    }
    assert!(
        text.contains("ok: 2 tools from 1 files, 4 warning(s)"),
        "{text}"
    );

    let out = run(true);
    assert!(!out.status.success(), "--strict fails on a warning");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--strict: 4 warning(s)"), "{err}");
}
