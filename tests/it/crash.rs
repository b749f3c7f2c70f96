//! The audit log across crashes: toolgate (the real binary) SIGKILLed at a random moment while
//! agents send written calls through it to a real TLS upstream, in rounds on one data dir.
//! After each kill `audit verify` passes and every call a client saw acknowledged has its
//! commit event; a segment's tail torn on purpose is cut off and reported (in toolgate's log,
//! its metrics and `audit verify`), never silently dropped.

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::binary::{admin_api, routed, start_binary};
use crate::support::process::{exited, signal};
use crate::support::*;

const BIN: &str = env!("CARGO_BIN_EXE_toolgate");
const ROUNDS: usize = 5;
/// Agents sending at once (half over HTTP/1.1, half over HTTP/2).
const AGENTS: usize = 8;
/// The most calls one agent sends in a round (the kill comes well before).
const CALLS: usize = 500;

/// Request ids of the written calls a client saw acknowledged (a 2xx).
type Acked = Arc<Mutex<Vec<String>>>;

/// Sends written calls until the proxy goes away (or `CALLS`), recording each acknowledged one.
async fn agent(client: TestClient, round: usize, n: usize, acked: Acked) {
    for i in 0..CALLS {
        let key = format!("crash-{round}-{n}-{i}");
        let got = send(
            &client,
            "POST",
            "https://api.stripe.com/v1/customers",
            &[FORM, ("idempotency-key", &key)],
            format!("name={key}"),
        )
        .await;
        let Ok(got) = got else {
            return;
        };
        if got.status.is_success() {
            let id = got.headers["toolgate-request-id"].to_str().unwrap();
            acked.lock().unwrap().push(id.to_string());
        }
    }
}

fn toolgate(args: &[&str], data: &std::path::Path) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .output()
        .unwrap()
}

/// The request ids of the commit events in the log (read offline, as an operator would).
fn committed(data: &std::path::Path) -> BTreeSet<String> {
    let out = toolgate(&["audit", "export"], data);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["kind"] == "commit")
        .filter_map(|e| e["request_id"].as_str().map(str::to_string))
        .collect()
}

/// `audit verify` passes; returns what it printed.
fn verified(data: &std::path::Path) -> String {
    let out = toolgate(&["audit", "verify"], data);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One round: toolgate started on the data dir, agents sending, a SIGKILL once a random number
/// of calls were acknowledged. Returns the acknowledged request ids.
async fn round(dir: &std::path::Path, args: &[&str], round: usize) -> Vec<String> {
    let (mut child, proxy, _, _log) = start_binary(dir, args);
    let ca = std::fs::read_to_string(dir.join("certs/ca.pem")).unwrap();
    let acked: Acked = Arc::default();
    let mut agents = Vec::new();
    for n in 0..AGENTS {
        let version = if n % 2 == 0 {
            http::Version::HTTP_11
        } else {
            http::Version::HTTP_2
        };
        let client = client_via(
            proxy,
            Some(("support-bot-staging", "demo-staging-token")),
            &ca,
            version,
        );
        agents.push(tokio::spawn(agent(client, round, n, acked.clone())));
    }
    let kill_at = rand::random_range(10..400usize);
    poll::until("calls are acknowledged", Duration::from_secs(60), || {
        let n = acked.lock().unwrap().len();
        std::future::ready(n >= kill_at)
    })
    .await;
    signal(child.0.id(), "-KILL");
    exited(&mut child, "SIGKILL ends toolgate", Duration::from_secs(10)).await;
    for a in agents {
        // A call cut off mid-answer may panic its task: it was not acknowledged.
        let _ = tokio::time::timeout(Duration::from_secs(30), a).await;
    }
    let ids = acked.lock().unwrap().clone();
    ids
}

/// Cuts the last segment in the middle of its last block.
fn tear(data: &std::path::Path) {
    let events = data.join("events");
    let last = std::fs::read_dir(&events)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .max()
        .unwrap();
    let bytes = std::fs::read(&last).unwrap();
    assert!(bytes.len() > 8, "the last segment holds a block");
    // Frames: length (u32), CRC-32, payload. Find the last one's start.
    let mut off = 0usize;
    let mut start = 0usize;
    while off + 8 <= bytes.len() {
        start = off;
        off += 8 + u32::from_be_bytes(bytes[off..off + 4].try_into().unwrap()) as usize;
    }
    let cut = start + 8 + (off - start - 8) / 2;
    let f = std::fs::OpenOptions::new().write(true).open(&last).unwrap();
    f.set_len(cut as u64).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_under_load_loses_no_acknowledged_event_and_a_torn_tail_is_reported() {
    let started = Instant::now();
    let (_pki, upstream, dir, args) = routed("api.stripe.com", "30s").await;
    // Far more calls than the example's rate limit lets through in a round.
    let stripe = dir.path().join("policies/stripe.toml");
    let text = std::fs::read_to_string(&stripe).unwrap();
    std::fs::write(
        &stripe,
        text.replacen("\"30/minute\"", "\"100000/minute\"", 1),
    )
    .unwrap();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let data = dir.path().join("data");
    let mut all = Vec::new();
    for r in 0..ROUNDS {
        let acked = round(dir.path(), &args, r).await;
        assert!(!acked.is_empty());
        let committed = committed(&data);
        let missing: Vec<&String> = acked.iter().filter(|id| !committed.contains(*id)).collect();
        assert!(
            missing.is_empty(),
            "round {r}: acknowledged, not in the log: {missing:?}"
        );
        let said = verified(&data);
        assert!(!said.contains("recovered"), "nothing was torn yet: {said}");
        all.extend(acked);
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "rounds take too long"
        );
    }
    assert!(upstream.count() >= all.len());

    // A tail torn as a crash mid-write would leave it: the next start cuts it off and says so.
    tear(&data);
    let (mut child, _, admin, log) = start_binary(dir.path(), &args);
    let metrics = admin_api(&admin, "GET", "/metrics", "demo-carol-token", None).await;
    assert!(
        metrics.text().contains("toolgate_audit_recoveries_total 1"),
        "{}",
        metrics.text()
    );
    signal(child.0.id(), "-TERM");
    let status = exited(
        &mut child,
        "SIGTERM stops toolgate",
        Duration::from_secs(30),
    )
    .await;
    assert!(status.success());
    let log = log.join().unwrap().join("\n");
    assert!(log.contains("torn tail truncated at seq"), "{log}");
    let after = verified(&data);
    assert!(
        after.contains("recovered: torn tail truncated at seq"),
        "{after}"
    );
}
