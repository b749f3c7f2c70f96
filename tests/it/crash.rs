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

/// The segment being written (the highest numbered).
fn last_segment(data: &std::path::Path) -> std::path::PathBuf {
    std::fs::read_dir(data.join("events"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .max()
        .unwrap()
}

/// Where each frame of a segment's bytes starts, and its payload's length. Frames: length
/// (u32), CRC-32, payload; the last may run past the end.
fn frames(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut off = 0usize;
    while off + 8 <= bytes.len() {
        let len = u32::from_be_bytes(bytes[off..off + 4].try_into().unwrap()) as usize;
        out.push((off, len));
        off += 8 + len;
    }
    out
}

/// Leaves what a crash in the middle of a write leaves: the first half of a block after the
/// last one (a copy of the last frame, cut). The blocks already there are indexed, and cutting
/// one of them would be damage, not a torn write.
fn tear(data: &std::path::Path) {
    let last = last_segment(data);
    let mut bytes = std::fs::read(&last).unwrap();
    assert!(bytes.len() > 8, "the last segment holds a block");
    let (start, len) = *frames(&bytes).last().unwrap();
    let half = bytes[start..start + 8 + len / 2].to_vec();
    bytes.extend_from_slice(&half);
    std::fs::write(&last, &bytes).unwrap();
}

/// The example policies routed to a recording upstream, with a rate limit far above what the
/// agents send in a round.
async fn loaded() -> (Pki, Upstream, tempfile::TempDir, Vec<String>) {
    let (pki, upstream, dir, args) = routed("api.stripe.com", "30s").await;
    let stripe = dir.path().join("policies/stripe.toml");
    let text = std::fs::read_to_string(&stripe).unwrap();
    std::fs::write(
        &stripe,
        text.replacen("\"30/minute\"", "\"100000/minute\"", 1),
    )
    .unwrap();
    (pki, upstream, dir, args)
}

/// Starts toolgate, reads its recoveries metric, stops it with SIGTERM; returns its log.
async fn start_and_stop(dir: &std::path::Path, args: &[&str]) -> (String, String) {
    let (mut child, _, admin, log) = start_binary(dir, args);
    let metrics = admin_api(&admin, "GET", "/metrics", "demo-carol-token", None).await;
    signal(child.0.id(), "-TERM");
    let status = exited(
        &mut child,
        "SIGTERM stops toolgate",
        Duration::from_secs(30),
    )
    .await;
    assert!(status.success());
    (metrics.text(), log.join().unwrap().join("\n"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_under_load_loses_no_acknowledged_event_and_a_torn_tail_is_reported() {
    let started = Instant::now();
    let (_pki, upstream, dir, args) = loaded().await;
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
    let (metrics, log) = start_and_stop(dir.path(), &args).await;
    assert!(
        metrics.contains("toolgate_audit_recoveries_total 1"),
        "{metrics}"
    );
    assert!(log.contains("torn tail truncated at seq"), "{log}");
    let after = verified(&data);
    assert!(
        after.contains("recovered: torn tail truncated at seq"),
        "{after}"
    );
}

/// After a SIGKILL under load (HTTP/1.1 and HTTP/2): garbage where a torn write would be (a
/// frame header promising more than follows, then noise) is cut off at the next start and
/// reported, every acknowledged event stays and `audit verify` passes. Then one flipped byte
/// in a frame that indexed frames follow: toolgate refuses to start, and `audit verify` to
/// read, naming the segment and the frame's offset, and the segment is left as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_garbled_tail_is_cut_and_reported_and_a_damaged_indexed_frame_refuses_to_open() {
    let (_pki, _upstream, dir, args) = loaded().await;
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let data = dir.path().join("data");
    let acked = round(dir.path(), &args, 0).await;
    assert!(!acked.is_empty());
    let last = last_segment(&data);
    let good = std::fs::read(&last).unwrap();
    let mut garbled = good.clone();
    garbled.extend_from_slice(&4096u32.to_be_bytes());
    garbled.extend((0..1000).map(|_| rand::random::<u8>()));
    std::fs::write(&last, &garbled).unwrap();
    let (metrics, log) = start_and_stop(dir.path(), &args).await;
    assert!(
        metrics.contains("toolgate_audit_recoveries_total 1"),
        "{metrics}"
    );
    assert!(log.contains("torn tail truncated at seq"), "{log}");
    assert!(log.contains(&format!("offset {}", good.len())), "{log}");
    let after = std::fs::read(&last).unwrap();
    assert_eq!(after[..good.len()], good[..], "only the garbage was cut");
    let said = verified(&data);
    assert!(
        said.contains("recovered: torn tail truncated at seq"),
        "{said}"
    );
    let committed = committed(&data);
    let missing: Vec<&String> = acked.iter().filter(|id| !committed.contains(*id)).collect();
    assert!(
        missing.is_empty(),
        "acknowledged, not in the log: {missing:?}"
    );

    let (bytes, damaged) = damage_a_frame_before_the_last(&last);
    let mut serve = crate::support::process::serve_command(BIN, dir.path());
    let child = serve
        .args(&args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = crate::support::process::ChildGuard(child);
    let status = exited(
        &mut child,
        "toolgate refuses to start",
        Duration::from_secs(30),
    )
    .await;
    assert!(!status.success());
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.0.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    let out = toolgate(&["audit", "verify"], &data);
    assert!(!out.status.success());
    for said in [stderr, String::from_utf8_lossy(&out.stderr).into_owned()] {
        assert!(said.contains("corrupt audit segment"), "{said}");
        assert!(said.contains(&last.display().to_string()), "{said}");
        assert!(said.contains(&format!("offset {damaged}")), "{said}");
    }
    assert_eq!(
        std::fs::read(&last).unwrap(),
        bytes,
        "the segment was changed"
    );
}

/// Flips a byte in the payload of the last segment's second-to-last frame; returns the
/// segment's bytes and that frame's offset.
fn damage_a_frame_before_the_last(last: &std::path::Path) -> (Vec<u8>, usize) {
    let mut bytes = std::fs::read(last).unwrap();
    let frames = frames(&bytes);
    assert!(frames.len() >= 2, "{} frames", frames.len());
    let (off, len) = frames[frames.len() - 2];
    bytes[off + 8 + len / 2] ^= 0x40;
    std::fs::write(last, &bytes).unwrap();
    (bytes, off)
}
