//! The audit log end to end: every decision recorded, the story of a job in one command,
//! secrets nowhere on disk, tamper evidence, durability across SIGKILL, and purge.

use std::process::Command;
use std::time::Duration;

use crate::support::*;
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_toolgate");

/// One event of a segment block as stored: sequence, time, index keys (tag, value), bytes.
type Stored = (u64, u64, Vec<(u8, Vec<u8>)>, Vec<u8>);

/// Where the block holding event `seq` is, as the directory in the store's `audit` tree says
/// (key `0xFE first-seq`; value segment, offset, length, last seq): its key and its events
/// (read from the segment file: a frame of length, CRC-32 and payload; the payload 0x03, the
/// plain length, then a zstd frame of the events).
fn holding(tree: &sled::Tree, events: &std::path::Path, seq: u64) -> (sled::IVec, Vec<Stored>) {
    let mut top = vec![0xFE];
    top.extend_from_slice(&seq.to_be_bytes());
    let (k, v) = tree
        .range([0xFE].as_slice()..=top.as_slice())
        .next_back()
        .unwrap()
        .unwrap();
    let num = |at: usize| u64::from_be_bytes(v[at..at + 8].try_into().unwrap());
    let len = u32::from_be_bytes(v[16..20].try_into().unwrap()) as usize;
    let file = std::fs::read(events.join(format!("{:012}.seg", num(0)))).unwrap();
    let at = num(8) as usize + 8;
    let payload = &file[at..at + len];
    assert_eq!(payload[0], 3);
    let plain_len = u32::from_be_bytes(payload[1..5].try_into().unwrap()) as usize;
    let plain = zstd::block::decompress(&payload[5..], plain_len).unwrap();
    let (mut out, mut r) = (Vec::new(), &plain[..]);
    let take = |n: usize, r: &mut &[u8]| {
        let (h, t) = r.split_at(n);
        *r = t;
        h.to_vec()
    };
    while !r.is_empty() {
        let seq = u64::from_be_bytes(take(8, &mut r).try_into().unwrap());
        let ms = u64::from_be_bytes(take(8, &mut r).try_into().unwrap());
        let mut keys = Vec::new();
        for _ in 0..take(1, &mut r)[0] {
            let tag = take(1, &mut r)[0];
            let n = u16::from_be_bytes(take(2, &mut r).try_into().unwrap()) as usize;
            keys.push((tag, take(n, &mut r)));
        }
        let n = u32::from_be_bytes(take(4, &mut r).try_into().unwrap()) as usize;
        out.push((seq, ms, keys, take(n, &mut r)));
    }
    (k, out)
}

/// Writes `events` as a new block at the end of the last segment, and points the directory
/// at it instead of the block under `key` (what someone with the files and the format can do:
/// only the hash chain tells).
fn replace(tree: &sled::Tree, dir: &std::path::Path, key: &[u8], events: &[Stored]) {
    let old_seg = tree.get(key).unwrap().unwrap()[..8].to_vec();
    let mut seg_key = vec![0xFC];
    seg_key.extend_from_slice(&old_seg);
    seg_key.extend_from_slice(&key[1..]);
    tree.remove(key).unwrap();
    tree.remove(seg_key).unwrap();
    let (Some(first), Some(last)) = (events.first(), events.last()) else {
        return;
    };
    let mut plain = Vec::new();
    for (seq, ms, keys, bytes) in events {
        plain.extend_from_slice(&seq.to_be_bytes());
        plain.extend_from_slice(&ms.to_be_bytes());
        plain.push(keys.len() as u8);
        for (tag, v) in keys {
            plain.push(*tag);
            plain.extend_from_slice(&(v.len() as u16).to_be_bytes());
            plain.extend_from_slice(v);
        }
        plain.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        plain.extend_from_slice(bytes);
    }
    let mut payload = vec![3u8];
    payload.extend_from_slice(&(plain.len() as u32).to_be_bytes());
    payload.extend_from_slice(&zstd::block::compress(&plain, 1).unwrap());
    let seg = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            e.unwrap()
                .file_name()
                .to_str()?
                .strip_suffix(".seg")?
                .parse::<u64>()
                .ok()
        })
        .max()
        .unwrap();
    let path = dir.join(format!("{seg:012}.seg"));
    let off = std::fs::metadata(&path).unwrap().len();
    let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&crc32fast::hash(&payload).to_be_bytes());
    frame.extend_from_slice(&payload);
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    f.write_all(&frame).unwrap();
    f.sync_all().unwrap();
    let mut value = seg.to_be_bytes().to_vec();
    value.extend_from_slice(&off.to_be_bytes());
    value.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    value.extend_from_slice(&last.0.to_be_bytes());
    let mut dir_key = vec![0xFE];
    dir_key.extend_from_slice(&first.0.to_be_bytes());
    let mut seg_key = vec![0xFC];
    seg_key.extend_from_slice(&seg.to_be_bytes());
    seg_key.extend_from_slice(&first.0.to_be_bytes());
    tree.insert(dir_key, value).unwrap();
    tree.insert(seg_key, &[]).unwrap();
}

async fn events(gate: &Toolgate, query: &str) -> Vec<Value> {
    audit_events(gate, query).await
}

/// Every event of the log, once the batched writer has written the response event of
/// `proposal`'s commit (what was recorded before it is written with it, or before it).
async fn answered(gate: &Toolgate, proposal: &str) -> Vec<Value> {
    let what = format!("the answer to proposal {proposal} is written");
    audit_events_once(gate, "", &what, |all| {
        all.iter()
            .any(|e| e["kind"] == "response" && e["proposal"] == proposal)
    })
    .await
}

/// Waits until `n` events of `kind` are written (they are written behind the calls).
async fn written_n(gate: &Toolgate, kind: &str, n: usize) {
    let what = format!("{n} {kind} events are written");
    audit_events_once(gate, &format!("kind={kind}"), &what, |e| e.len() >= n).await;
}

fn kinds_for(all: &[Value], request_id: &str) -> Vec<String> {
    all.iter()
        .filter(|e| e["request_id"] == request_id)
        .map(|e| e["kind"].as_str().unwrap().to_string())
        .collect()
}

const QUICK: &str = r#"
[[tool]]
name = "stripe.quick_refunds.create"
host = "api.stripe.com"
method = "POST"
path = "/v1/quick_refunds"
side_effects = "irreversible"
mode = "approve"
idempotency = "key"
body = { format = "form" }
credential = { staging = "stripe-test" }
summary = "Quick refund {body.amount} of {body.payment_intent}"
approval = { groups = ["payments-leads"], hold = "300ms" }

[[tool]]
name = "stripe.echo"
host = "api.stripe.com"
method = "POST"
path = "/v1/echo"
side_effects = "none"
body = { format = "form" }
query_schema = "echo.query.json"
credential = { staging = "stripe-test" }
"#;

fn extra() -> Vec<(&'static str, String)> {
    vec![
        ("audit-test.toml", QUICK.to_string()),
        (
            "echo.query.json",
            json!({"type": "object", "additionalProperties": {"type": "string"}}).to_string(),
        ),
    ]
}

#[tokio::test]
async fn every_request_and_every_commit_is_recorded_in_order() {
    let (_pki, _upstream, gate) = GateBuilder::examples()
        .policies(&extra())
        .with_upstream()
        .await;
    let client = staging(&gate);
    let read = send(
        &client,
        "GET",
        "https://api.stripe.com/v1/customers/cus_1",
        &[],
        "",
    )
    .await
    .unwrap();
    let write = send(
        &client,
        "POST",
        "https://api.stripe.com/v1/customers",
        &[FORM, ("idempotency-key", "a-1")],
        "name=Ann",
    )
    .await
    .unwrap();
    let refused = send(&client, "GET", "https://api.stripe.com/v1/charges", &[], "")
        .await
        .unwrap();
    let held = send(
        &client,
        "POST",
        "https://api.stripe.com/v1/quick_refunds",
        &[FORM, ("idempotency-key", "a-2")],
        "payment_intent=pi_1&amount=5",
    )
    .await
    .unwrap();
    let id = held.headers["toolgate-proposal"]
        .to_str()
        .unwrap()
        .to_string();
    gate.admin(
        "POST",
        &format!("/api/proposals/{id}/approve"),
        Some("demo-carol-token"),
        Some(json!({"comment": "ok"})),
    )
    .await;
    let committed = send(
        &client,
        "POST",
        "https://api.stripe.com/v1/quick_refunds",
        &[FORM, ("idempotency-key", "a-3")],
        "payment_intent=pi_1&amount=5",
    )
    .await
    .unwrap();
    assert_eq!(committed.status, 200);

    let all = answered(&gate, &id).await;
    let rid = |a: &Answer| {
        a.headers["toolgate-request-id"]
            .to_str()
            .unwrap()
            .to_string()
    };
    // A read sent at once is one event: what was asked, the decision and the answer.
    assert_eq!(kinds_for(&all, &rid(&read)), ["request"]);
    let read_event = all
        .iter()
        .find(|e| e["request_id"] == rid(&read).as_str())
        .unwrap();
    assert_eq!(read_event["payload"]["decision"]["outcome"], "allowed");
    assert_eq!(read_event["payload"]["response"]["status"], 200);
    assert!(read_event["tool"].is_string());
    assert_eq!(
        kinds_for(&all, &rid(&write)),
        ["request", "decision", "commit", "response"]
    );
    assert_eq!(kinds_for(&all, &rid(&refused)), ["request", "decision"]);
    let refusal = all
        .iter()
        .find(|e| e["request_id"] == rid(&refused).as_str() && e["kind"] == "decision")
        .unwrap();
    assert_eq!(refusal["payload"]["code"], "policy_violation");

    // Every commit of an approve-mode tool has its proposal and approval before it.
    let of_proposal: Vec<&Value> = all
        .iter()
        .filter(|e| e["proposal"] == id.as_str())
        .collect();
    let seq_of = |kind: &str| {
        of_proposal
            .iter()
            .find(|e| e["kind"] == kind)
            .map(|e| e["seq"].as_u64().unwrap())
            .unwrap_or_else(|| panic!("no {kind}"))
    };
    assert!(seq_of("proposal") < seq_of("approval"));
    assert!(seq_of("approval") < seq_of("commit"));
    assert!(seq_of("commit") < seq_of("response"));
    let approval = of_proposal
        .iter()
        .find(|e| e["kind"] == "approval")
        .unwrap();
    assert_eq!(approval["payload"]["by"], "carol@example.com");

    // The chain is intact, and /metrics counts what happened.
    let v = gate
        .admin("GET", "/api/audit/verify", Some("demo-carol-token"), None)
        .await
        .json();
    assert_eq!(v["ok"], true);
    // Metrics need an approver's token.
    assert_eq!(gate.admin("GET", "/metrics", None, None).await.status, 401);
    let metrics = gate
        .admin("GET", "/metrics", Some("demo-carol-token"), None)
        .await;
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(text.contains("toolgate_store_bytes "), "{text}");
    assert!(text.contains("toolgate_store_alarm 0"), "{text}");
    assert!(text.contains("toolgate_requests_total{tool=\"stripe.customers.retrieve\",decision=\"forwarded\",status=\"200\"} 1"), "{text}");
    assert!(text.contains("toolgate_request_duration_seconds_count"));
    assert!(text.contains("toolgate_pending_proposals 0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_story_of_a_job_comes_from_one_command() {
    let (_pki, _upstream, gate) = GateBuilder::examples()
        .policies(&extra())
        .with_upstream()
        .await;
    let client = staging(&gate);
    let job = ("toolgate-job", "job-42");
    send(
        &client,
        "POST",
        "https://api.stripe.com/v1/customers",
        &[FORM, job, ("idempotency-key", "j-1")],
        "name=Ann",
    )
    .await
    .unwrap();
    send(
        &client,
        "POST",
        "https://api.github.com/repos/acme/web/issues",
        &[JSON, job],
        json!({"title": "Refund issued"}).to_string(),
    )
    .await
    .unwrap();
    let held = send(
        &client,
        "POST",
        "https://api.stripe.com/v1/quick_refunds",
        &[FORM, job, ("idempotency-key", "j-2")],
        "payment_intent=pi_42&amount=900",
    )
    .await
    .unwrap();
    let id = held.headers["toolgate-proposal"]
        .to_str()
        .unwrap()
        .to_string();
    gate.admin(
        "POST",
        &format!("/api/proposals/{id}/approve"),
        Some("demo-carol-token"),
        Some(json!({"comment": "customer called"})),
    )
    .await;
    let done = send(
        &client,
        "POST",
        "https://api.stripe.com/v1/quick_refunds",
        &[FORM, job, ("idempotency-key", "j-3")],
        "payment_intent=pi_42&amount=900",
    )
    .await
    .unwrap();
    assert_eq!(done.status, 200);
    answered(&gate, &id).await;

    let out = Command::new(BIN)
        .args([
            "audit",
            "story",
            "job-42",
            "--server",
            &format!("http://{}", gate.admin_addr),
        ])
        .env("TOOLGATE_TOKEN", "demo-carol-token")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let story = String::from_utf8_lossy(&out.stdout).to_string();
    let at = |needle: &str| {
        story
            .find(needle)
            .unwrap_or_else(|| panic!("{needle:?} not in:\n{story}"))
    };
    // All three calls, in order, with who approved (the events, after the summary that also
    // says what was proposed).
    assert!(story.contains("what was proposed: Quick refund 900 of pi_42 (payload sha256 "));
    assert!(at("stripe.customers.create") < at("github.issues.create"));
    assert!(at("github.issues.create") < at("proposed: Quick refund 900 of pi_42 — needs"));
    assert!(
        at("proposed: Quick refund 900 of pi_42 — needs")
            < at("approval by carol@example.com: customer called")
    );
    assert!(
        at("approval by carol@example.com")
            < at("commit: sending POST https://api.stripe.com/v1/quick_refunds")
    );
    assert!(story.contains("upstream answered 200"));

    // A reader that went away (`| head -1`) ends the command quietly, no panic (issue 23 row 13).
    for json in [false, true] {
        let mut cmd = Command::new(BIN);
        cmd.args([
            "audit",
            "story",
            "job-42",
            "--server",
            &format!("http://{}", gate.admin_addr),
        ]);
        if json {
            cmd.arg("--json");
        }
        let mut child = cmd
            .env("TOOLGATE_TOKEN", "demo-carol-token")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(out.status.success(), "{:?}: {stderr}", out.status);
    }

    // The proposal id tells the same story of the refund, as JSON for machines.
    let out = Command::new(BIN)
        .args([
            "audit",
            "story",
            &id,
            "--json",
            "--server",
            &format!("http://{}", gate.admin_addr),
        ])
        .env("TOOLGATE_TOKEN", "demo-carol-token")
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let kinds = texts(&v, "events", "kind");
    for k in ["request", "proposal", "approval", "commit", "response"] {
        assert!(kinds.contains(&k), "{k} missing from {kinds:?}");
    }
}

/// One secret of each kind the redactor knows.
const SECRETS: [&str; 11] = [
    "sk_live_51Habcdefghijklmnop",
    "sk_test_51Habcdefghijklmnop",
    "rk_live_51Habcdefghijklmnop",
    "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
    "gho_abcdefghijklmnopqrstuvwxyz0123456789",
    "github_pat_11AAAAAAA0abcdefghijklmnopqrstuv",
    "SG.abcdefghijklmnopqrstuv.wxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123",
    "AKIAIOSFODNN7EXAMPLE",
    "-----BEGIN PRIVATE KEY-----MIIEvQIBADANBgkqhkiG9w0BAQEFAASC-----END PRIVATE KEY-----",
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhZ2VudCJ9.dBjftJeZ4CVPmB92K27uhbUJU1p1r",
    "Bearer opaque-token-0123456789",
];

fn files_under(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            files_under(&p, out);
        } else {
            out.push(p);
        }
    }
}

#[tokio::test]
async fn no_secret_reaches_the_data_directory() {
    let (_pki, _upstream, gate) = GateBuilder::examples()
        .policies(&extra())
        .with_upstream()
        .await;
    let client = staging(&gate);
    let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    for (i, secret) in SECRETS.iter().enumerate() {
        let header_safe = secret.replace('\n', " ");
        // In a header, a body, a query string, and echoed back by the upstream.
        let got = send(
            &client,
            "POST",
            &format!("https://api.stripe.com/v1/echo?note={}", enc(secret)),
            &[
                FORM,
                ("x-echo", "1"),
                ("x-note", header_safe.as_str()),
                ("authorization", "Bearer agent-own-secret-123"),
            ],
            format!("field={}&n={i}", enc(secret)),
        )
        .await
        .unwrap();
        assert_eq!(got.status, 200, "{}", String::from_utf8_lossy(&got.body));
        // A refused request with the secret in its body is recorded too.
        send(
            &client,
            "POST",
            "https://api.stripe.com/v1/customers",
            &[FORM, ("idempotency-key", &format!("s-{i}"))],
            format!("description={}&evil=1", enc(secret)),
        )
        .await
        .unwrap();
    }
    // A held proposal and a mutating call whose upstream echoes the injected credential.
    send(
        &client,
        "POST",
        "https://api.stripe.com/v1/quick_refunds",
        &[FORM, ("idempotency-key", "s-q"), ("x-note", SECRETS[0])],
        "payment_intent=pi_s",
    )
    .await
    .unwrap();
    written_n(&gate, "proposal", 1).await;
    let data = gate.dir.path().join("data");
    let dir = gate.into_dir().await; // stopped: everything flushed
    let mut files = Vec::new();
    files_under(&data, &mut files);
    assert!(!files.is_empty());
    let injected = "sk_test_toolgate_demo_placeholder";
    for f in files {
        let bytes = std::fs::read(&f).unwrap();
        for secret in SECRETS.iter().chain([&injected, &"agent-own-secret-123"]) {
            let needle = secret.as_bytes();
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle),
                "{secret:?} found in {}",
                f.display()
            );
        }
    }
    drop(dir);
}

#[tokio::test]
async fn a_changed_byte_makes_verify_fail_and_name_the_event() {
    let (_pki, _upstream, gate) = GateBuilder::examples()
        .policies(&extra())
        .with_upstream()
        .await;
    let client = staging(&gate);
    for i in 0..6 {
        send(
            &client,
            "GET",
            &format!("https://api.stripe.com/v1/customers/cus_{i}"),
            &[],
            "",
        )
        .await
        .unwrap();
    }
    written_n(&gate, "request", 6).await;
    let dir = gate.into_dir().await;
    let data = dir.path().join("data");
    let segments = data.join("events");
    let verify = || {
        Command::new(BIN)
            .args(["audit", "verify", "--data-dir"])
            .arg(&data)
            .output()
            .unwrap()
    };
    let out = verify();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Change one byte inside event 5.
    {
        let db = sled::Config::new().path(data.join("store")).open().unwrap();
        let tree = db.open_tree("audit").unwrap();
        let (key, mut events) = holding(&tree, &segments, 5);
        let bytes = &mut events.iter_mut().find(|e| e.0 == 5).unwrap().3;
        let at = bytes
            .windows(7)
            .position(|w| w == b"cus_1\"," || w == b"/v1/cus")
            .unwrap_or(bytes.len() / 2);
        bytes[at] = if bytes[at] == b'x' { b'y' } else { b'x' };
        replace(&tree, &segments, &key, &events);
        db.flush().unwrap();
    }
    let out = verify();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("event 5"), "{err}");

    // Remove an event instead: verify names the gap.
    {
        let db = sled::Config::new().path(data.join("store")).open().unwrap();
        let tree = db.open_tree("audit").unwrap();
        let (key, mut events) = holding(&tree, &segments, 5);
        events.retain(|e| e.0 != 5);
        replace(&tree, &segments, &key, &events);
        db.flush().unwrap();
    }
    let out = verify();
    assert!(String::from_utf8_lossy(&out.stderr).contains("event 5"));
}

/// A block as an earlier version kept it in sled: one event's JSON alone, or 0x02, the plain
/// length and a zstd frame of (seq, length, bytes) per event.
fn legacy_value(events: &[Stored]) -> Vec<u8> {
    if let [(_, _, _, one)] = events {
        return one.clone();
    }
    let mut plain = Vec::new();
    for (s, _, _, b) in events {
        plain.extend_from_slice(&s.to_be_bytes());
        plain.extend_from_slice(&(b.len() as u32).to_be_bytes());
        plain.extend_from_slice(b);
    }
    let mut out = vec![2u8];
    out.extend_from_slice(&(plain.len() as u32).to_be_bytes());
    out.extend_from_slice(&zstd::block::compress(&plain, 1).unwrap());
    out
}

/// One flipped byte in a block that later blocks follow is damage, not a torn tail: the offline
/// `audit verify` names the segment and offset and changes nothing (cutting there would drop
/// acknowledged events).
#[tokio::test]
async fn a_damaged_segment_is_reported_never_cut() {
    let (_pki, _upstream, gate) = GateBuilder::examples()
        .policies(&extra())
        .with_upstream()
        .await;
    let client = staging(&gate);
    for i in 0..5 {
        let url = format!("https://api.stripe.com/v1/customers/cus_{i}");
        send(&client, "GET", &url, &[], "").await.unwrap();
        written_n(&gate, "request", i + 1).await;
    }
    let dir = gate.into_dir().await;
    let data = dir.path().join("data");
    let last = std::fs::read_dir(data.join("events"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .max()
        .unwrap();
    let mut bytes = std::fs::read(&last).unwrap();
    let first_len = u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize;
    assert!(8 + first_len < bytes.len(), "more than one block");
    bytes[8 + first_len / 2] ^= 0x10;
    std::fs::write(&last, &bytes).unwrap();
    let out = Command::new(BIN)
        .args(["audit", "verify", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("corrupt audit segment"), "{said}");
    assert!(said.contains("offset 0"), "{said}");
    assert!(said.contains(&last.display().to_string()), "{said}");
    assert_eq!(
        std::fs::read(&last).unwrap(),
        bytes,
        "verify changed the segment"
    );
}

/// A data dir written by an earlier version (the events in sled's `audit` tree, under 8-byte
/// sequence keys, no segment files): `audit verify --data-dir` refuses until toolgate has
/// started on it once, changing nothing; the start moves its blocks into segments, the chain
/// verifies, and the indexes it had still find the events.
#[tokio::test]
async fn a_data_dir_of_an_earlier_version_opens_and_verifies() {
    let (_pki, _upstream, gate) = GateBuilder::examples()
        .policies(&extra())
        .with_upstream()
        .await;
    let client = staging(&gate);
    let mut ids = Vec::new();
    for i in 0..5 {
        let url = format!("https://api.stripe.com/v1/customers/cus_{i}");
        let got = send(&client, "GET", &url, &[], "").await.unwrap();
        ids.push(
            got.headers["toolgate-request-id"]
                .to_str()
                .unwrap()
                .to_string(),
        );
    }
    written_n(&gate, "request", 5).await;
    let dir = gate.into_dir().await;
    let data = dir.path().join("data");
    let segments = data.join("events");
    let run = |args: &[&str]| {
        let out = Command::new(BIN)
            .args(args)
            .arg("--data-dir")
            .arg(&data)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let before = run(&["audit", "verify"]);
    {
        let db = sled::Config::new().path(data.join("store")).open().unwrap();
        let tree = db.open_tree("audit").unwrap();
        let firsts: Vec<u64> = tree
            .range([0xFE].as_slice()..[0xFF].as_slice())
            .map(|kv| u64::from_be_bytes(kv.unwrap().0[1..9].try_into().unwrap()))
            .collect();
        for first in firsts {
            let (_, events) = holding(&tree, &segments, first);
            tree.insert(first.to_be_bytes(), legacy_value(&events))
                .unwrap();
        }
        for kv in tree.range([0xFC].as_slice()..[0xFF].as_slice()) {
            tree.remove(kv.unwrap().0).unwrap();
        }
        db.flush().unwrap();
    }
    std::fs::remove_dir_all(&segments).unwrap();

    // Inspection does not move the events (that writes the store): it says what to do.
    let out = Command::new(BIN)
        .args(["audit", "verify", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("earlier version"), "{said}");
    assert!(
        said.contains("start toolgate on this data dir once"),
        "{said}"
    );
    assert!(!segments.exists(), "inspection wrote segments");
    // A start moves them.
    let gate = GateBuilder::reopen(dir).start().await;
    let _dir = gate.into_dir().await;

    assert_eq!(run(&["audit", "verify"]), before);
    let story = run(&["audit", "story", &ids[3], "--json"]);
    assert!(story.contains("cus_3"), "{story}");
    let db = sled::Config::new().path(data.join("store")).open().unwrap();
    let tree = db.open_tree("audit").unwrap();
    assert_eq!(
        tree.range(..[0xFC].as_slice()).count(),
        0,
        "moved out of sled"
    );
    assert!(std::fs::read_dir(&segments).unwrap().count() > 0);
}

#[tokio::test]
async fn purge_keeps_the_rest_verifiable() {
    let (_pki, _upstream, gate) = GateBuilder::examples()
        .policies(&extra())
        .config(|c| c.guards.audit_retention_min = std::time::Duration::ZERO)
        .with_upstream()
        .await;
    let client = staging(&gate);
    for i in 0..3 {
        send(
            &client,
            "GET",
            &format!("https://api.stripe.com/v1/customers/cus_{i}"),
            &[],
            "",
        )
        .await
        .unwrap();
    }
    written_n(&gate, "request", 3).await;
    // The cut is a whole second: one after every event so far.
    let unix = || toolgate::base::now_ms() / 1000;
    let written_by = unix();
    let later = || std::future::ready(unix() > written_by);
    poll::until("the clock is past the events' second", poll::SOON, later).await;
    let before = events(&gate, "").await.len();
    let now = unix();
    let purge = |who: &'static str, cut: u64| {
        let gate = &gate;
        async move {
            gate.admin(
                "POST",
                "/api/audit/purge",
                Some(who),
                Some(json!({"before": cut.to_string(), "reason": "retention policy"})),
            )
            .await
        }
    };
    // Not an admin: refused, nothing removed.
    let got = purge("demo-carol-token", now).await;
    assert_eq!(got.status, 403, "{}", got.text());
    // Into the future: refused whatever the retention minimum.
    let got = purge("demo-dave-token", now + 3600).await;
    assert_eq!(got.status, 400, "{}", got.text());
    assert!(got.text().contains("retention minimum"), "{}", got.text());
    assert_eq!(events(&gate, "").await.len(), before);

    let got = purge("demo-dave-token", now).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.json()["removed"].as_u64().unwrap() as usize, before - 1);
    send(
        &client,
        "GET",
        "https://api.stripe.com/v1/customers/cus_9",
        &[],
        "",
    )
    .await
    .unwrap();
    let what = "the read after the purge is written";
    audit_events_once(&gate, "kind=request", what, |e| {
        e.iter()
            .any(|e| e["payload"]["path"] == "/v1/customers/cus_9")
    })
    .await;
    let v = gate
        .admin("GET", "/api/audit/verify", Some("demo-carol-token"), None)
        .await
        .json();
    assert_eq!(v["ok"], true, "{v}");
    // The newest event before the cut, the purge event, and the read after it.
    assert!(v["events"].as_u64().unwrap() >= 3);
    // The purge says who, why and what range, in the chain and in verify's answer.
    let p = &v["purges"][0];
    assert_eq!(p["by"], "dave@example.com", "{v}");
    assert_eq!(p["reason"], "retention policy");
    assert_eq!(p["removed"].as_u64().unwrap() as usize, before - 1);
    assert_eq!(p["from_seq"], 1);
    let all = events(&gate, "").await;
    let e = all
        .iter()
        .find(|e| e["kind"] == "purge")
        .expect("a purge event");
    assert_eq!(e["payload"]["by"], "dave@example.com");
}

#[tokio::test]
async fn purge_never_reaches_inside_the_default_retention_minimum() {
    let (_pki, _upstream, gate) = GateBuilder::examples()
        .policies(&extra())
        .with_upstream()
        .await;
    let ten_days_ago = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 10 * 86400;
    let got = gate
        .admin(
            "POST",
            "/api/audit/purge",
            Some("demo-dave-token"),
            Some(json!({"before": ten_days_ago.to_string()})),
        )
        .await;
    assert_eq!(got.status, 400, "{}", got.text());
}

#[tokio::test]
async fn model_calls_record_provider_model_and_usage_also_when_streamed() {
    let tool = r#"
[[agent]]
id = "writer"
token_sha256 = "WRITER"
owner = "alice@example.com"
environment = "staging"
tools = ["openai.*"]

[[credential]]
name = "openai"
file = "demo-secrets/stripe-test.key"
header = "Authorization"
format = "Bearer {secret}"

[[tool]]
name = "openai.chat"
host = "api.openai.com"
method = "POST"
path = "/v1/chat/completions"
side_effects = "none"
kind = "model"
body = { format = "json" }
credential = { staging = "openai" }
redact = ["/messages"]
"#
    .replace("WRITER", &sha256_hex("writer-token"));
    let (_pki, _upstream, gate) = GateBuilder::examples()
        .policies(&[("model.toml", tool)])
        .with_upstream()
        .await;
    let client = gate.client(Some(("writer", "writer-token")), http::Version::HTTP_11);
    let url = "https://api.openai.com/v1/chat/completions";
    let streamed = send(&client, "POST", url, &[JSON], json!({"model": "gpt-test", "stream": true, "messages": [{"role": "user", "content": "my diary"}]}).to_string())
        .await
        .unwrap();
    assert_eq!(streamed.status, 200);
    assert!(String::from_utf8_lossy(&streamed.body).contains("[DONE]"));
    let plain = send(
        &client,
        "POST",
        url,
        &[JSON],
        json!({"model": "gpt-test", "messages": []}).to_string(),
    )
    .await
    .unwrap();
    assert_eq!(plain.status, 200);
    written_n(&gate, "model_usage", 2).await;

    let usage = events(&gate, "kind=model_usage").await;
    assert_eq!(usage.len(), 2, "{usage:?}");
    let s = usage
        .iter()
        .find(|e| e["payload"]["streamed"] == true)
        .unwrap();
    assert_eq!(s["payload"]["provider"], "openai");
    assert_eq!(s["payload"]["model"], "gpt-test-1");
    assert_eq!(s["payload"]["usage"]["total_tokens"], 18);
    let p = usage
        .iter()
        .find(|e| e["payload"]["streamed"] == false)
        .unwrap();
    assert_eq!(p["payload"]["usage"]["prompt_tokens"], 5);

    // The contract's redacted field never reaches the log.
    let all = events(&gate, "tool=openai.chat").await;
    assert!(!serde_json::to_string(&all).unwrap().contains("my diary"));
}

const DELAYED: &str = r#"
[[tool]]
name = "stripe.delayed.get"
host = "api.stripe.com"
method = "GET"
path = "/delay/{ms}"
credential = { staging = "stripe-test" }

[[tool]]
name = "stripe.delayed.create"
host = "api.stripe.com"
method = "POST"
path = "/delay/{ms}"
side_effects = "reversible"
idempotency = "key"
body = { format = "form" }
credential = { staging = "stripe-test" }
"#;

/// Sends `method path` on a tunnel of its own speaking `alpn`, gives up after `patience` (the
/// response future dropped: an HTTP/2 stream reset), and, for HTTP/1.1, closes the connection.
/// Returns what is left of the tunnel (an HTTP/2 connection stays open).
async fn give_up_on(
    gate: &Toolgate,
    alpn: &[u8],
    (method, path, headers): (&str, &str, &[(&str, &str)]),
    patience: Duration,
) -> tokio::task::JoinHandle<()> {
    use http_body_util::Full;
    let (status, _, stream) = raw_connect(
        gate.addr,
        "api.stripe.com:443",
        Some(("support-bot-staging", "demo-staging-token")),
    )
    .await;
    assert_eq!(status, 200);
    let tls = tls_over(stream, "api.stripe.com", &gate.ca_pem, &[alpn])
        .await
        .unwrap();
    let io = hyper_util::rt::TokioIo::new(tls);
    let mut req = http::Request::builder()
        .method(method)
        .uri(format!("https://api.stripe.com{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let body = if method == "POST" { "name=Ann" } else { "" };
    let req = req.body(Full::new(bytes::Bytes::from(body))).unwrap();
    if alpn == b"h2" {
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                .await
                .unwrap();
        let conn = tokio::spawn(async move {
            let _ = conn.await;
        });
        let answer = tokio::time::timeout(patience, sender.send_request(req)).await;
        assert!(answer.is_err(), "the client gave up before the answer");
        // The stream is reset; the connection stays open.
        conn
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        let conn = tokio::spawn(async move {
            let _ = conn.await;
        });
        let answer = tokio::time::timeout(patience, sender.send_request(req)).await;
        assert!(answer.is_err(), "the client gave up before the answer");
        // The connection closes under the request.
        conn.abort();
        drop(sender);
        conn
    }
}

/// The event of the call to `path` (one event: the request with its decision and answer),
/// once it is in the log (polled, up to 10 s).
async fn event_of_path(gate: &Toolgate, path: &str) -> Value {
    let what = format!("the event for {path} with its answer is written");
    poll::until_some(&what, poll::SOON, || async {
        exported(gate).await.into_iter().find(|e| {
            e["kind"] == "request"
                && e["payload"]["path"] == path
                && !e["payload"]["response"].is_null()
        })
    })
    .await
}

/// A read whose client gives up before the (slow) answer is recorded all the same, when the
/// answer comes: marked `client_gone`, with the upstream's status, over HTTP/1.1 (connection
/// closed) and HTTP/2 (stream reset). The upstream got each request once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_whose_client_gives_up_is_recorded_with_the_status_it_would_have_had() {
    let extra = [("delayed.toml", DELAYED.to_string())];
    let (_pki, upstream, gate) = GateBuilder::examples()
        .policies(&extra)
        .config(|c| {
            c.upstream_timeout = Duration::from_secs(10);
        })
        .with_upstream()
        .await;
    for (alpn, path) in [
        (&b"http/1.1"[..], "/delay/1200"),
        (&b"h2"[..], "/delay/1201"),
    ] {
        let conn = give_up_on(&gate, alpn, ("GET", path, &[]), Duration::from_millis(300)).await;
        let e = event_of_path(&gate, path).await;
        let version = String::from_utf8_lossy(alpn);
        assert_eq!(e["tool"], "stripe.delayed.get", "{version}: {e}");
        assert_eq!(
            e["payload"]["decision"]["outcome"], "allowed",
            "{version}: {e}"
        );
        assert_eq!(
            e["payload"]["response"]["client_gone"], true,
            "{version}: {e}"
        );
        assert_eq!(e["payload"]["response"]["status"], 200, "{version}: {e}");
        let sent = upstream
            .received()
            .iter()
            .filter(|r| r.path == path)
            .count();
        assert_eq!(sent, 1, "{version}: the upstream got the request once");
        let request_id = e["request_id"].as_str().unwrap();
        let all = exported(&gate).await;
        assert_eq!(
            kinds_for(&all, request_id),
            ["request"],
            "{version}: one event tells the call"
        );
        conn.abort();
    }
    let v = gate
        .admin("GET", "/api/audit/verify", Some("demo-carol-token"), None)
        .await
        .json();
    assert_eq!(v["ok"], true, "{v}");
}

/// A graceful stop whose grace ends before a slow read is answered: the read is ended then,
/// and recorded (its answer unfinished) before the audit log closes, not lost with the runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_still_in_flight_when_the_grace_ends_is_recorded_before_exit() {
    let extra = [("delayed.toml", DELAYED.to_string())];
    let (_pki, upstream, gate) = GateBuilder::examples()
        .policies(&extra)
        .config(|c| {
            c.upstream_timeout = Duration::from_secs(10);
            c.shutdown_grace = Duration::from_millis(300);
        })
        .with_upstream()
        .await;
    let client = staging(&gate);
    let path = "/delay/5000";
    let read = tokio::spawn(async move {
        send(
            &client,
            "GET",
            &format!("https://api.stripe.com{path}"),
            &[],
            "",
        )
        .await
    });
    let reached = || std::future::ready(upstream.received().iter().any(|r| r.path == path));
    poll::until("the read reaches the upstream", poll::SOON, reached).await;
    assert_eq!(upstream.count(), 1, "the read reached the upstream");
    let dir = gate.into_dir().await;
    let _ = read.await;
    let gate = GateBuilder::reopen(dir).start().await;
    let e = event_of_path(&gate, path).await;
    assert_eq!(e["payload"]["decision"]["outcome"], "allowed", "{e}");
    assert_eq!(e["payload"]["response"]["unfinished"], true, "{e}");
    let v = gate
        .admin("GET", "/api/audit/verify", Some("demo-carol-token"), None)
        .await
        .json();
    assert_eq!(v["ok"], true, "{v}");
}

/// A write whose client gives up before the (slow) answer is committed and settled all the
/// same: its response event has the upstream's status, and a retry with the same key gets the
/// stored answer rather than "outcome unknown". The upstream got it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_client_gives_up_is_settled_and_its_retry_gets_the_answer() {
    let extra = [("delayed.toml", DELAYED.to_string())];
    let (_pki, upstream, gate) = GateBuilder::examples()
        .policies(&extra)
        .config(|c| {
            c.upstream_timeout = Duration::from_secs(10);
        })
        .with_upstream()
        .await;
    let path = "/delay/1300";
    let key = ("idempotency-key", "gone-1");
    let headers = [FORM, key];
    let conn = give_up_on(
        &gate,
        b"http/1.1",
        ("POST", path, &headers),
        Duration::from_millis(300),
    )
    .await;
    let recorded = || async {
        let all = exported(&gate).await;
        let commit = all
            .iter()
            .find(|e| e["kind"] == "commit" && e["tool"] == "stripe.delayed.create")?;
        all.iter()
            .find(|e| e["kind"] == "response" && e["request_id"] == commit["request_id"])
            .cloned()
    };
    let what = "the committed call's answer is recorded";
    let response = poll::until_some(what, poll::SOON, recorded).await;
    assert_eq!(response["payload"]["status"], 200, "{response}");
    conn.abort();
    let retry = send(
        &staging(&gate),
        "POST",
        &format!("https://api.stripe.com{path}"),
        &headers,
        "name=Ann",
    )
    .await
    .unwrap();
    assert_eq!(retry.status, 200, "{}", retry.text());
    assert_eq!(retry.headers["toolgate-replayed"], "true");
    let sent = upstream
        .received()
        .iter()
        .filter(|r| r.path == path)
        .count();
    assert_eq!(sent, 1, "the upstream got the call once");
}
