//! The audit log under load: a writer slower than the request path makes requests wait (the
//! queue stays bounded, nothing is dropped), events carry their request's time, and stories
//! and searches read only their own events through the indexes.

use std::time::{Duration, Instant};

use crate::support::*;
use toolgate::audit::{Audit, Filter, Record};

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_writer_makes_requests_wait_and_loses_nothing() {
    let (_pki, upstream, gate) = GateBuilder::examples()
        .config(|c| {
            c.guards.audit_queue = 4;
            c.guards.audit_write_delay = Duration::from_millis(150);
        })
        .with_upstream()
        .await;
    let mut calls = Vec::new();
    for i in 0..24 {
        let client = staging(&gate);
        calls.push(tokio::spawn(async move {
            let url = format!("https://api.stripe.com/v1/customers/cus_slow{i}");
            send(&client, "GET", &url, &[], "").await.unwrap().status
        }));
    }
    for c in calls {
        assert_eq!(c.await.unwrap(), 200);
    }
    assert_eq!(upstream.count(), 24);
    // Every request has its event once the writer catches up.
    let what = "the writer catches up with the 24 requests";
    audit_events_once(&gate, "kind=request", what, |got| {
        let slow = |e: &&serde_json::Value| {
            let path = e["payload"]["path"].as_str().unwrap_or("");
            path.contains("cus_slow")
        };
        got.iter().filter(slow).count() == 24
    })
    .await;
    // The queue never held more than its bound (memory stays flat): requests waited instead.
    let m = gate
        .admin("GET", "/metrics", Some("demo-carol-token"), None)
        .await
        .text();
    let peak = metric(&m, "toolgate_audit_queued_peak");
    assert!(peak <= 4.0, "the queue held {peak} events");
    assert!(peak >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_carries_its_request_time_not_the_writers() {
    let (_pki, _upstream, gate) = GateBuilder::examples()
        .config(|c| {
            c.guards.audit_queue = 1;
            c.guards.audit_write_delay = Duration::from_secs(2);
        })
        .with_upstream()
        .await;
    let client = staging(&gate);
    // The first read's event occupies the one place in the queue for 2 s; the second read
    // waits for room before its answer, and is recorded later than it was asked.
    send(
        &client,
        "GET",
        "https://api.stripe.com/v1/customers/cus_t1",
        &[],
        "",
    )
    .await
    .unwrap();
    let asked = toolgate::base::now_ms();
    let started = Instant::now();
    let got = send(
        &client,
        "GET",
        "https://api.stripe.com/v1/customers/cus_t2",
        &[],
        "",
    )
    .await
    .unwrap();
    assert_eq!(got.status, 200);
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "the request waited for the slow writer"
    );
    let what = "the second read's event is written";
    let all = audit_events_once(&gate, "kind=request", what, |all| {
        all.iter()
            .any(|e| e["payload"]["path"] == "/v1/customers/cus_t2")
    })
    .await;
    let event = all
        .into_iter()
        .find(|e| e["payload"]["path"] == "/v1/customers/cus_t2")
        .unwrap();
    let at = event["unix_ms"].as_u64().unwrap();
    assert!(
        at >= asked && at < asked + 1000,
        "the event says {at}, the request was made at {asked}"
    );
}

fn record(i: u64) -> Record {
    Record {
        kind: toolgate::audit::Kind::Request,
        request_id: Some(format!("req_{i}")),
        job: Some(format!("job_{}", i / 10)),
        agent: Some(format!("agent_{}", i % 50)),
        tool: Some(format!("tool_{}", i % 7)),
        payload: serde_json::json!({"method": "GET", "path": format!("/v1/x/{i}")}),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stories_and_searches_read_only_their_own_events_among_200k() {
    let dir = tempfile::tempdir().unwrap();
    let store = toolgate::store::open(dir.path()).unwrap();
    let audit = Audit::open(&store).unwrap();
    const N: u64 = 200_000;
    for i in 0..N {
        audit.record(record(i)).await;
    }
    audit.record_durable(record(N)).await.unwrap();

    let before = audit.decoded();
    let story = audit.story("req_123457").unwrap();
    assert_eq!(story.len(), 1);
    assert_eq!(story[0].request_id.as_deref(), Some("req_123457"));
    let read = audit.decoded() - before;
    assert!(read <= 4, "the story of one request decoded {read} events");

    // A job's story: its ten requests.
    let before = audit.decoded();
    let story = audit.story("job_4321").unwrap();
    assert_eq!(story.len(), 10);
    let read = audit.decoded() - before;
    assert!(read <= 40, "the story of one job decoded {read} events");

    // A search by agent reads that agent's events only (one in fifty).
    let before = audit.decoded();
    let found = audit
        .search(&Filter {
            agent: Some("agent_7".into()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(found.len(), (0..=N).filter(|i| i % 50 == 7).count());
    let read = audit.decoded() - before;
    assert!(
        read <= found.len() as u64,
        "the search decoded {read} events"
    );
    assert_eq!(audit.verify().unwrap(), N + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_retention_purges_old_events_in_the_sweep_and_the_rest_verifies() {
    let (_pki, _upstream, gate) = GateBuilder::examples().with_upstream().await;
    let dir = gate.into_dir().await;
    // Forty days ago, five events; now, one.
    {
        let store = toolgate::store::open(&dir.path().join("data")).unwrap();
        let audit = Audit::open(&store).unwrap();
        let old = toolgate::base::now_ms() - 40 * 86_400_000;
        for i in 0..5 {
            let mut r = record(i);
            r.at_ms = old + i;
            audit.record(r).await;
        }
        audit.record_durable(record(99)).await.unwrap();
        assert!(audit.close(Duration::from_secs(10)).await);
    }
    let gate = GateBuilder::reopen(dir)
        .config(|c| {
            c.guards.audit_retention = Some(Duration::from_secs(31 * 86_400));
            c.guards.sweep_interval = Duration::from_millis(100);
        })
        .start()
        .await;
    let purged = || async {
        let v = gate
            .admin("GET", "/api/audit/verify", Some("demo-carol-token"), None)
            .await
            .json();
        assert_eq!(v["ok"], true, "{v}");
        let purges = v["purges"].clone();
        (!purges.as_array().unwrap().is_empty()).then_some(purges)
    };
    let within = Duration::from_secs(20);
    let purges = poll::until_some("the sweep purges", within, purged).await;
    assert_eq!(purges[0]["removed"], 5, "{purges}");
    assert_eq!(purges[0]["by"], "toolgate");
    assert!(audit_events(&gate, "")
        .await
        .iter()
        .all(|e| e["request_id"] != "req_0"));
}
