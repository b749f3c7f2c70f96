//! `toolgate demo` as a new user meets it: the binary started on ephemeral ports in a fresh
//! folder (the example policies, relative paths, as in the repository's root), and the next
//! steps it prints run exactly as printed: curl through the proxy, the same read with Python's
//! `requests`, the CLI's approve and story. The held refund goes from 423 to the agent's retry
//! getting `re_…`, and its story says who asked, what was proposed, who approved and why, what
//! was sent and what it created.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::support::process::{copy_dir, exited, signal, ChildGuard};
use crate::support::*;
use bytes::Bytes;
use http_body_util::Full;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_toolgate");
const CUSTOMER: &str = "cus_NffrFeUfNV2Hib";
const PAYMENT_INTENT: &str = "pi_3MtwBwLkdIwHu7ix28a3tqPa";

/// `toolgate demo` running in a folder of its own.
struct Demo {
    child: ChildGuard,
    dir: tempfile::TempDir,
    admin: std::net::SocketAddr,
    /// What it printed on standard output: the next steps.
    steps: Vec<String>,
    /// Its standard error up to the next steps (the log and the start-up lines).
    stderr: Vec<String>,
}

impl Demo {
    /// Starts `toolgate demo` over a copy of the example policies whose refunds are held for
    /// `hold`, and reads what it prints until the next steps are complete.
    fn start(hold: &str) -> Demo {
        let dir = tempfile::tempdir().unwrap();
        let policies = dir.path().join("policies");
        copy_dir(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("policies"),
            &policies,
        );
        let stripe = policies.join("stripe.toml");
        let text = std::fs::read_to_string(&stripe).unwrap();
        let held = text.replace("hold = \"10s\"", &format!("hold = \"{hold}\""));
        assert_ne!(text, held, "the refunds' hold is set");
        std::fs::write(&stripe, held).unwrap();
        let mut child = Command::new(BIN)
            .args([
                "demo",
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
            ])
            .args([
                "--policies",
                "policies",
                "--certs",
                "certs",
                "--data-dir",
                "data",
            ])
            .current_dir(dir.path())
            .env("TOOLGATE_LOG_FORMAT", "json")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = lines_of(child.stdout.take().unwrap());
        let err = lines_of(child.stderr.take().unwrap());
        let child = ChildGuard(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut steps = Vec::new();
        while !steps
            .last()
            .is_some_and(|l: &String| l.starts_with("Ctrl-C stops"))
        {
            let left = deadline.saturating_duration_since(Instant::now());
            match out.recv_timeout(left) {
                Ok(line) => steps.push(line),
                Err(e) => panic!("the next steps did not come ({e:?}): {steps:#?}"),
            }
        }
        // Standard error up to the start-up lines' last, printed before the next steps (with the
        // example policies, the end of the warning about their published tokens): the log line
        // with the listeners, where everything is, the sandbox.
        let mut stderr: Vec<String> = Vec::new();
        while !stderr
            .last()
            .is_some_and(|l: &String| l.contains("Give each its own token"))
        {
            let left = deadline.saturating_duration_since(Instant::now());
            match err.recv_timeout(left) {
                Ok(line) => stderr.push(line),
                Err(e) => panic!("the start-up lines did not come ({e:?}): {stderr:#?}"),
            }
        }
        // The rest of the log is drained, so that the child never blocks on a full pipe.
        std::thread::spawn(move || err.into_iter().for_each(drop));
        let admin = stderr
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["message"] == "toolgate serving")
            .map(|v| v["admin"].as_str().unwrap().parse().unwrap())
            .unwrap_or_else(|| panic!("no \"toolgate serving\" line: {stderr:#?}"));
        Demo {
            child,
            dir,
            admin,
            steps,
            stderr,
        }
    }

    /// The printed commands starting with `prefix`, in order.
    fn commands(&self, prefix: &str) -> Vec<String> {
        self.steps
            .iter()
            .map(|l| l.trim())
            .filter(|l| l.starts_with(prefix))
            .map(str::to_string)
            .collect()
    }

    /// The printed text, for failure messages.
    fn printed(&self) -> String {
        self.steps.join("\n")
    }

    /// SIGTERM, then a clean exit within the bound.
    async fn stop(mut self) {
        signal(self.child.0.id(), "-TERM");
        let what = "SIGTERM stops toolgate demo";
        let status = exited(&mut self.child, what, Duration::from_secs(20)).await;
        assert!(status.success(), "{status}");
    }
}

/// The lines of a child's pipe, read by a thread of their own (a quiet child never blocks the
/// test, and a chatty one never blocks on a full pipe).
fn lines_of(pipe: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// Runs a printed command as a shell runs it, in the demo's folder: success, stdout, stderr.
async fn sh(dir: &Path, command: &str) -> (bool, String, String) {
    let run = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .current_dir(dir)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .unwrap_or_else(|_| panic!("{command} did not finish within 60 s"))
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

fn have(program: &str) -> bool {
    Command::new(program).arg("--version").output().is_ok()
}

/// The words of a printed command as the shell splits them (the printed commands quote with
/// single quotes only).
fn words(command: &str) -> Vec<String> {
    let (mut out, mut word, mut quoted, mut any) = (Vec::new(), String::new(), false, false);
    for c in command.chars() {
        match c {
            '\'' => (quoted, any) = (!quoted, true),
            c if c.is_whitespace() && !quoted => {
                if any {
                    out.push(std::mem::take(&mut word));
                }
                any = false;
            }
            c => {
                word.push(c);
                any = true;
            }
        }
    }
    if any {
        out.push(word);
    }
    out
}

/// A printed curl command run as printed (the status taken with `-w`), or, where curl is not
/// installed, the same request sent by the test's client: the status and the JSON answer.
async fn curl(demo: &Demo, command: &str) -> (u16, Value) {
    if have("curl") {
        let (_, out, err) = sh(
            demo.dir.path(),
            &format!("{command} -sS -w '\\n%{{http_code}}'"),
        )
        .await;
        let (body, status) = out
            .rsplit_once('\n')
            .unwrap_or_else(|| panic!("{command}: {out}{err}"));
        let json = serde_json::from_str(body).unwrap_or(Value::Null);
        return (
            status
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("{out}{err}")),
            json,
        );
    }
    // curl --proxy URL --cacert FILE URL [-H 'K: V']... [-d k=v]...
    let w = words(command);
    let arg = |flag: &str| w.iter().position(|x| x == flag).map(|i| w[i + 1].clone());
    let proxy: url_parts::Proxy = url_parts::proxy(&arg("--proxy").unwrap());
    let ca = std::fs::read_to_string(demo.dir.path().join(arg("--cacert").unwrap())).unwrap();
    let url = w
        .iter()
        .find(|x| x.starts_with("https://"))
        .unwrap()
        .clone();
    let mut headers: Vec<(String, String)> = Vec::new();
    let mut form = Vec::new();
    for (i, x) in w.iter().enumerate() {
        match x.as_str() {
            "-H" => {
                let (k, v) = w[i + 1].split_once(':').unwrap();
                headers.push((k.trim().to_lowercase(), v.trim().to_string()));
            }
            "-d" => form.push(w[i + 1].clone()),
            _ => {}
        }
    }
    let client = client_via(
        proxy.addr,
        Some((proxy.user.as_str(), proxy.password.as_str())),
        &ca,
        http::Version::HTTP_11,
    );
    let mut with: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let method = match form.is_empty() {
        true => "GET",
        false => {
            with.push(FORM);
            "POST"
        }
    };
    let got = send(&client, method, &url, &with, &form.join("&"))
        .await
        .unwrap();
    (got.status.as_u16(), got.json())
}

mod url_parts {
    /// `http://USER:PASSWORD@ADDR`.
    pub struct Proxy {
        pub user: String,
        pub password: String,
        pub addr: std::net::SocketAddr,
    }

    pub fn proxy(url: &str) -> Proxy {
        let rest = url.strip_prefix("http://").unwrap();
        let (auth, addr) = rest.rsplit_once('@').unwrap();
        let (user, password) = auth.split_once(':').unwrap();
        Proxy {
            user: user.into(),
            password: password.into(),
            addr: addr.trim_end_matches('/').parse().unwrap(),
        }
    }
}

/// A Python with `requests`: the system's, else the SDKs' virtualenv.
fn python_with_requests() -> Option<String> {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/.venv/bin/python");
    let candidates = ["python3".to_string(), venv.display().to_string()];
    candidates.into_iter().find(|p| {
        Command::new(p)
            .args(["-c", "import requests"])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

/// The browser script's next line (bounded).
async fn next(
    lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
) -> String {
    tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("the browser script stalled")
        .unwrap()
        .expect("the browser script ended early")
}

/// Waits (bounded) until `admin` lists a pending proposal whose summary holds `text`.
async fn proposal_naming(admin: std::net::SocketAddr, text: &str) -> String {
    pending_proposal(admin, text).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_next_steps_run_as_printed_from_a_read_to_a_held_refunds_story() {
    let started = Instant::now();
    let demo = Demo::start("2s");
    let printed = demo.printed();
    let dir = demo.dir.path().to_path_buf();

    // Start-up says where everything is, and warns about the published tokens.
    let stderr = demo.stderr.join("\n");
    for needle in [
        "agents' proxy",
        "agents trust",
        "certs/ca.pem",
        "approvers' page",
        "policies",
        "WARNING: the published demo tokens are in force",
        "sandbox",
    ] {
        assert!(
            stderr.contains(needle),
            "{needle:?} missing from:\n{stderr}"
        );
    }
    assert!(
        !stderr.contains("demo-staging-token"),
        "no token in the log: {stderr}"
    );

    let curls = demo.commands("curl ");
    assert_eq!(curls.len(), 3, "a read, a refusal, a refund:\n{printed}");
    for c in &curls {
        assert!(
            c.starts_with("curl --proxy http://support-bot-staging:demo-staging-token@127.0.0.1:")
                && c.contains("--cacert certs/ca.pem"),
            "{c}"
        );
    }

    // 1. The read: the sandbox's customer, with what the contract hides hidden.
    let (status, customer) = curl(&demo, &curls[0]).await;
    assert_eq!(status, 200, "{customer}");
    assert_eq!(
        (customer["id"].as_str(), customer["object"].as_str()),
        (Some(CUSTOMER), Some("customer"))
    );
    assert_eq!(customer["name"], "Jenny Rosen");
    assert!(
        customer.get("phone").is_none() && customer.get("address").is_none(),
        "{customer}"
    );

    // The same read from Python, as printed.
    let python = demo.commands("python3 -c ");
    assert_eq!(python.len(), 1, "{printed}");
    match python_with_requests() {
        Some(interpreter) => {
            let command = python[0].replacen("python3", &interpreter, 1);
            let (ok, out, err) = sh(&dir, &command).await;
            assert!(
                ok && out.contains(CUSTOMER) && out.contains("Jenny Rosen"),
                "{out}{err}"
            );
        }
        None if std::env::var("TOOLGATE_REQUIRE_SDKS").as_deref() == Ok("1") => {
            panic!("TOOLGATE_REQUIRE_SDKS=1 but no Python has requests")
        }
        None => skips::skipped(
            "the Python read of demo_next_steps_run_as_printed (tests/demo.rs)",
            "no Python with requests",
            skips::SDKS,
        ),
    }

    // 2. The refusal.
    let (status, refused) = curl(&demo, &curls[1]).await;
    assert_eq!(
        (status, refused["error"]["code"].as_str()),
        (403, Some("policy_violation")),
        "{refused}"
    );

    // 3. The refund, held: 423 once the hold is over, with the proposal's id.
    assert!(
        curls[2].contains(&format!("payment_intent={PAYMENT_INTENT}")),
        "{}",
        curls[2]
    );
    let (status, held) = curl(&demo, &curls[2]).await;
    assert_eq!(
        (status, held["error"]["code"].as_str()),
        (423, Some("approval_pending")),
        "{held}"
    );
    let proposal = held["error"]["proposal"].as_str().unwrap().to_string();
    assert!(proposal.starts_with("prop_"), "{held}");
    assert_eq!(proposal_naming(demo.admin, PAYMENT_INTENT).await, proposal);

    // The sign-in page names the demo's tokens (demo mode only).
    let login = admin_at(demo.admin, "GET", "/login", None, None)
        .await
        .text();
    assert!(
        login.contains("demo-carol-token") && login.contains("payments-leads"),
        "{login}"
    );
    assert!(
        !login.contains("demo-staging-token"),
        "agents do not sign in: {login}"
    );

    // 4. Approve it with the printed command, then the agent's same call gets the refund.
    let cli = demo.commands("TOOLGATE_TOKEN=");
    assert_eq!(cli.len(), 2, "approve and story:\n{printed}");
    assert!(
        cli[0].starts_with("TOOLGATE_TOKEN=demo-carol-token "),
        "{}",
        cli[0]
    );
    let page = format!("http://{}/", demo.admin);
    assert!(
        printed.contains(&format!(
            "{page}, signed in with the token demo-carol-token"
        )),
        "{printed}"
    );
    let (ok, out, err) = sh(&dir, &cli[0].replace("PROPOSAL_ID", &proposal)).await;
    assert!(ok, "{}: {out}{err}", cli[0]);
    let (status, refund) = curl(&demo, &curls[2]).await;
    assert_eq!(status, 200, "{refund}");
    let refund_id = refund["id"].as_str().unwrap().to_string();
    assert!(
        refund_id.starts_with("re_") && refund_id.len() == 27,
        "{refund}"
    );
    assert_eq!(
        (refund["object"].as_str(), refund["amount"].as_u64()),
        (Some("refund"), Some(500))
    );
    // Once: the same call again gets the same refund.
    let (_, again) = curl(&demo, &curls[2]).await;
    assert_eq!(again["id"].as_str(), Some(refund_id.as_str()), "{again}");

    // 5. The story, with the printed command.
    let (ok, story, err) = sh(&dir, &cli[1].replace("PROPOSAL_ID", &proposal)).await;
    assert!(ok, "{}: {story}{err}", cli[1]);
    for needle in [
        "who asked:     support-bot-staging (owner alice@example.com)".to_string(),
        format!("proposed: Refund 500 (minor units) of {PAYMENT_INTENT}"),
        "carol@example.com".to_string(),
        "customer called".to_string(),
        "POST https://api.stripe.com/v1/refunds".to_string(),
        format!("created refund {refund_id}"),
    ] {
        assert!(story.contains(&needle), "{needle:?} missing from:\n{story}");
    }
    assert!(
        !story.contains("sk_test_toolgate_demo_placeholder"),
        "no secret in the story"
    );

    // The README's "Try it" runs the same commands, on the default ports.
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .unwrap()
        .replace(" \\\n     ", " ");
    let port = url_parts::proxy(&words(&curls[0])[2]).addr.port();
    for c in curls.iter().chain(&python) {
        let key = c
            .split("Idempotency-Key: ")
            .nth(1)
            .map(|k| k.split('\'').next().unwrap());
        let mut as_documented = c.replace(&format!("127.0.0.1:{port}"), "127.0.0.1:8080");
        if let Some(key) = key {
            as_documented = as_documented.replace(key, "try-it-1");
        }
        assert!(
            readme.contains(&as_documented),
            "the README lacks {as_documented}"
        );
    }
    assert!(
        readme.contains("```sh\ncargo run --release -- demo "),
        "the README's first command"
    );

    demo.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(120),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sandbox_refuses_what_did_not_come_through_toolgate() {
    let demo = Demo::start("2s");
    let first = demo.steps.first().unwrap();
    let addr: std::net::SocketAddr = first
        .split("https://")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .and_then(|a| {
            a.trim_end_matches(|c: char| !c.is_ascii_digit())
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no sandbox address in {first:?}"));
    let ca = std::fs::read_to_string(demo.dir.path().join("data/sandbox-ca.pem")).unwrap();
    for (auth, want) in [(None, 401), (Some("Bearer sk_test_placeholder"), 401)] {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let tls = tls_over(tcp, "api.stripe.com", &ca, &[b"http/1.1"])
            .await
            .unwrap();
        let mut req = http::Request::get(format!("/v1/customers/{CUSTOMER}"))
            .header("host", "api.stripe.com");
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let got = http1_over(tls, req.body(Full::new(Bytes::new())).unwrap()).await;
        assert_eq!(got.status, want, "{}", got.text());
        assert_eq!(got.json()["error"]["type"], "invalid_request_error");
    }
    demo.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_says_where_everything_is_and_warns_only_while_published_tokens_work() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("policies"),
        &dir.path().join("policies"),
    );
    // Nothing is forwarded: serve has no sandbox, and the real hosts are never reached here.
    let (child, _proxy, admin, log) = process::start_serve(BIN, dir.path(), &[]);
    let mut child = child;
    // The start-up lines follow the log line the helper waited for.
    let login = admin_at(admin.parse().unwrap(), "GET", "/login", None, None)
        .await
        .text();
    assert!(login.contains("Approver or reviewer token"), "{login}");
    assert!(
        !login.contains("demo-carol-token"),
        "only the demo names the tokens: {login}"
    );
    signal(child.0.id(), "-TERM");
    let _ = child.0.wait();
    let log = log.join().unwrap().join("\n");
    let ca = dir.path().join("certs/ca.pem").display().to_string();
    for needle in [
        "agents' proxy",
        "approvers' page",
        ca.as_str(),
        "WARNING: the published demo tokens are in force (agents support-bot-prod, support-bot-staging;",
    ] {
        assert!(log.contains(needle), "{needle:?} missing from:\n{log}");
    }
    assert!(!log.contains("sandbox"), "serve runs no sandbox:\n{log}");

    // With the tokens replaced, no warning.
    let agents = dir.path().join("policies/agents.toml");
    let text = std::fs::read_to_string(&agents).unwrap();
    let own = toolgate::policy::PUBLISHED_TOKENS
        .iter()
        .fold(text, |t, token| {
            t.replace(
                &sha256_hex(token),
                &sha256_hex(&format!("{token}-replaced")),
            )
        });
    std::fs::write(&agents, own).unwrap();
    let (mut child, _, _, log) = process::start_serve(BIN, dir.path(), &[]);
    signal(child.0.id(), "-TERM");
    let _ = child.0.wait();
    let log = log.join().unwrap().join("\n");
    assert!(log.contains("agents' proxy"), "{log}");
    assert!(!log.contains("WARNING: the published"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_walk_with_the_approval_on_the_page_in_chromium() {
    let Some((browser_dir, chromium)) = browser() else {
        return;
    };
    let demo = Demo::start("40s");
    let printed = demo.printed();
    let token = printed
        .split("signed in with the token ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no sign-in token in:\n{printed}"))
        .to_string();
    assert_eq!(token, "demo-carol-token");
    let page = format!("http://{}", demo.admin);
    let mut node = tokio::process::Command::new("node")
        .arg(browser_dir.join("approve.mjs"))
        .arg(&page)
        .arg(&token)
        .arg(format!("Refund 500 (minor units) of {PAYMENT_INTENT}"))
        .env("CHROMIUM", &chromium)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines =
        tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(node.stdout.take().unwrap()));
    assert_eq!(next(&mut lines).await, "READY");

    // The agent asks for the refund, as printed; the page approves it while the call is held.
    let refund = demo.commands("curl ")[2].clone();
    let demo = std::sync::Arc::new(demo);
    let held = {
        let demo = demo.clone();
        tokio::spawn(async move { curl(&demo, &refund).await })
    };
    assert_eq!(next(&mut lines).await, "SEEN");
    let payload = next(&mut lines).await;
    assert!(
        payload.contains(&format!("payment_intent={PAYMENT_INTENT}")),
        "{payload}"
    );
    let state = next(&mut lines).await;
    assert!(state.starts_with("STATE "), "{state}");
    let _width = next(&mut lines).await;
    assert!(node.wait().await.unwrap().success());
    let (status, answer) = tokio::time::timeout(Duration::from_secs(60), held)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status, 200, "{answer}");
    let refund_id = answer["id"].as_str().unwrap().to_string();
    assert!(refund_id.starts_with("re_"), "{answer}");

    let proposal = admin_at(
        demo.admin,
        "GET",
        "/api/proposals?state=committed",
        Some(token.as_str()),
        None,
    )
    .await
    .json()["proposals"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let story_cmd = demo.commands("TOOLGATE_TOKEN=")[1].replace("PROPOSAL_ID", &proposal);
    let (ok, story, err) = sh(demo.dir.path(), &story_cmd).await;
    assert!(ok, "{story}{err}");
    assert!(story.contains("approved in the browser"), "{story}");
    assert!(
        story.contains(&format!("created refund {refund_id}")),
        "{story}"
    );
    match std::sync::Arc::try_unwrap(demo) {
        Ok(demo) => demo.stop().await,
        Err(_) => panic!("the held call still holds the demo"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sandboxs_mcp_server_answers_through_toolgate_as_the_contracts_allow() {
    let demo = Demo::start("2s");
    let proxy = url_parts::proxy(&words(&demo.commands("curl ")[0])[2]);
    let ca = std::fs::read_to_string(demo.dir.path().join("certs/ca.pem")).unwrap();
    let client = client_via(
        proxy.addr,
        Some((proxy.user.as_str(), proxy.password.as_str())),
        &ca,
        http::Version::HTTP_11,
    );
    let url = "https://mcp.tickets.example/mcp";
    let post = |session: Option<String>, message: Value| {
        let client = client.clone();
        async move {
            let mut headers = vec![JSON, ("accept", "application/json, text/event-stream")];
            if let Some(s) = &session {
                headers.push(("mcp-session-id", s.as_str()));
            }
            send(&client, "POST", url, &headers, message.to_string())
                .await
                .unwrap()
        }
    };
    let init = serde_json::json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}});
    let got = post(None, init).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.json()["result"]["serverInfo"]["name"], "tickets");
    let session = got.headers["mcp-session-id"].to_str().unwrap().to_string();
    let note = serde_json::json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    assert_eq!(post(Some(session.clone()), note).await.status, 202);

    // Listed: what the contracts name and pin; search_tickets, which none names, is hidden.
    let list = serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"});
    let got = post(Some(session.clone()), list).await.json();
    let names = texts(&got["result"], "tools", "name");
    assert!(
        names.contains(&"get_ticket") && names.contains(&"create_ticket"),
        "{got}"
    );
    assert!(!names.contains(&"search_tickets"), "{got}");

    let call = |name: &str, arguments: Value| {
        serde_json::json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                           "params": {"name": name, "arguments": arguments}})
    };
    let got = post(
        Some(session.clone()),
        call("get_ticket", serde_json::json!({"id": "T-1"})),
    )
    .await;
    assert_eq!(got.status, 200, "{}", got.text());
    let text = got.json()["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(text.contains("Printer on fire"), "{}", got.text());
    // A tool no contract names is refused inside the protocol, before the server sees it.
    let got = post(
        Some(session.clone()),
        call("search_tickets", serde_json::json!({"query": "x"})),
    )
    .await
    .json();
    assert_eq!(got["result"]["isError"], true, "{got}");
    let text = got["result"]["content"][0]["text"].as_str().unwrap_or("");
    assert!(text.contains("policy_violation"), "{got}");
    demo.stop().await;
}
