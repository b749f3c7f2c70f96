//! Audit sinks, with real receivers and the real binary: an HTTP collector that fails every
//! third batch and is down for a while in the middle of a run, then toolgate SIGKILLed and
//! restarted: the collector ends with every sequence number (duplicates allowed, none missing)
//! and the chain verifies from what it received. A real rsyslog, started by the test on a
//! loopback port with a configuration of its own, receives every event as an RFC 5424 line
//! with the OCSF JSON. A file sink rotates.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;

use crate::support::process::{copy_dir, serve_command, signal, start_command, ChildGuard};
use crate::support::*;

const BIN: &str = env!("CARGO_BIN_EXE_toolgate");

/// An HTTP collector: keeps every OCSF event of the batches it acknowledges; refuses every
/// third batch, and every batch while it is down.
#[derive(Default)]
struct Collector {
    events: Mutex<BTreeMap<u64, Value>>,
    received: AtomicU64,
    batches: AtomicU64,
    refused: AtomicU64,
    down: AtomicBool,
}

impl Collector {
    async fn start() -> (Arc<Collector>, String) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let c = Arc::new(Collector::default());
        let kept = c.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let c = kept.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| c.clone().take(req));
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        (c, format!("http://{addr}/ingest"))
    }

    async fn take(
        self: Arc<Self>,
        req: Request<Incoming>,
    ) -> Result<Response<Full<Bytes>>, Infallible> {
        assert_eq!(req.headers()["authorization"], "Bearer sink-token-1");
        let body = req.into_body().collect().await.unwrap().to_bytes();
        let n = self.batches.fetch_add(1, Ordering::SeqCst) + 1;
        if self.down.load(Ordering::SeqCst) || n % 3 == 0 {
            self.refused.fetch_add(1, Ordering::SeqCst);
            return Ok(Response::builder()
                .status(503)
                .body(Full::default())
                .unwrap());
        }
        let mut events = self.events.lock().unwrap();
        for line in body.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let v: Value = serde_json::from_slice(line).unwrap();
            self.received.fetch_add(1, Ordering::SeqCst);
            events.insert(v["metadata"]["sequence"].as_u64().unwrap(), v);
        }
        Ok(Response::new(Full::default()))
    }

    fn highest(&self) -> u64 {
        self.events
            .lock()
            .unwrap()
            .keys()
            .next_back()
            .copied()
            .unwrap_or(0)
    }
}

/// `n` refused calls (each one audit event or two), from `tasks` agents' tunnels at once.
async fn calls(proxy: std::net::SocketAddr, ca: &str, n: usize, tasks: usize) {
    let mut all = Vec::new();
    for _ in 0..tasks {
        let client = client_via(
            proxy,
            Some(("support-bot-staging", "demo-staging-token")),
            ca,
            http::Version::HTTP_2,
        );
        all.push(tokio::spawn(async move {
            for _ in 0..n / tasks {
                let got = send(&client, "GET", "https://api.stripe.com/v1/balance", &[], "")
                    .await
                    .unwrap();
                assert_eq!(got.status, 403);
            }
        }));
    }
    for t in all {
        t.await.unwrap();
    }
}

async fn head(admin: &str) -> (u64, Value) {
    let out = tokio::process::Command::new("curl")
        .args(["-sf", &format!("http://{admin}/healthz?detail")])
        .output()
        .await
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    (v["audit_head"].as_u64().unwrap_or(0), v)
}

fn serve(dir: &std::path::Path, sink: &str) -> crate::support::process::Started {
    let mut cmd = serve_command(BIN, dir);
    cmd.args(["--connect-to", "api.stripe.com:443=127.0.0.1:9"])
        .args(["--audit-sink", sink, "--audit-sink-token-env", "SINK_TOKEN"])
        .env("SINK_TOKEN", "sink-token-1");
    start_command(cmd)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_sink_loses_nothing_through_failures_an_outage_and_a_kill() {
    let (collector, url) = Collector::start().await;
    let dir = tempfile::tempdir().unwrap();
    copy_dir(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies"),
        &dir.path().join("policies"),
    );
    let (child, proxy, admin, _log) = serve(dir.path(), &url);
    let ca = std::fs::read_to_string(dir.path().join("certs/ca.pem")).unwrap();
    calls(proxy, &ca, 7000, 4).await;
    // Down for a while in the middle of the run: calls go on, the sink falls behind.
    collector.down.store(true, Ordering::SeqCst);
    calls(proxy, &ca, 7000, 4).await;
    let (_, detail) = head(&admin).await;
    assert!(detail["sinks"][0]["lag"].as_u64().unwrap() > 0, "{detail}");
    collector.down.store(false, Ordering::SeqCst);
    calls(proxy, &ca, 3000, 4).await;
    // Killed mid-stream: what it had not delivered is delivered after the restart.
    let mut child: ChildGuard = child;
    signal(child.0.id(), "-KILL");
    let _ = child.0.wait();
    let (_child, proxy, admin, _log) = serve(dir.path(), &url);
    calls(proxy, &ca, 3000, 4).await;
    let (last, _) = head(&admin).await;
    assert!(last >= 20_000, "{last}");
    poll::until("the collector has every event", poll::SOON * 4, || {
        let c = collector.clone();
        let admin = admin.clone();
        async move {
            let (last, _) = head(&admin).await;
            c.highest() >= last
        }
    })
    .await;
    let (last, detail) = head(&admin).await;
    let events = collector.events.lock().unwrap().clone();
    let seqs: Vec<u64> = events.keys().copied().collect();
    assert_eq!(
        seqs,
        (1..=last).collect::<Vec<_>>(),
        "every sequence number, none missing"
    );
    assert!(
        collector.refused.load(Ordering::SeqCst) > 2,
        "batches were refused"
    );
    let mut prev: Option<String> = None;
    for (seq, v) in &events {
        let e: toolgate::audit::Event = serde_json::from_value(v["unmapped"].clone()).unwrap();
        assert_eq!(e.seq, *seq);
        assert_eq!(e.compute_hash(), e.hash, "event {seq} hashes as recorded");
        if let Some(p) = &prev {
            assert_eq!(&e.prev, p, "the chain holds at {seq}");
        }
        prev = Some(e.hash);
    }
    eprintln!(
        "{} events, {} received (duplicates included), {} batches refused; {detail}",
        events.len(),
        collector.received.load(Ordering::SeqCst),
        collector.refused.load(Ordering::SeqCst)
    );
}

/// rsyslog on a free loopback port, as a foreground process with a configuration of its own,
/// writing what it receives (RFC 5424) to `out`. None when rsyslog is not installed.
fn rsyslog(dir: &std::path::Path, out: &std::path::Path) -> Option<(ChildGuard, u16)> {
    let bin = ["/usr/sbin/rsyslogd", "/sbin/rsyslogd"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let conf = dir.join("rsyslog.conf");
    std::fs::write(
        &conf,
        format!(
            "global(workDirectory=\"{work}\" maxMessageSize=\"256k\")\n\
             module(load=\"imtcp\")\n\
             input(type=\"imtcp\" address=\"127.0.0.1\" port=\"{port}\")\n\
             *.* action(type=\"omfile\" file=\"{out}\" template=\"RSYSLOG_SyslogProtocol23Format\")\n",
            work = dir.display(),
            out = out.display(),
        ),
    )
    .unwrap();
    let child = std::process::Command::new(bin)
        .arg("-n")
        .arg("-f")
        .arg(&conf)
        .arg("-i")
        .arg(dir.join("rsyslog.pid"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    Some((ChildGuard(child), port))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsyslog_receives_every_event_as_an_rfc5424_line_with_ocsf() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("received.log");
    let Some((_rsyslog, port)) = rsyslog(dir.path(), &out) else {
        if std::env::var("TOOLGATE_REQUIRE_SDKS").as_deref() == Ok("1") {
            panic!(
                "TOOLGATE_REQUIRE_SDKS=1 but rsyslog is not installed (apt-get install rsyslog)"
            );
        }
        crate::support::skips::skipped(
            "sinks::rsyslog",
            "rsyslog is not installed",
            "apt-get install rsyslog",
        );
        return;
    };
    poll::until("rsyslog listens", poll::SOON, || async move {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
    })
    .await;
    copy_dir(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies"),
        &dir.path().join("policies"),
    );
    let (_child, proxy, admin, _log) = serve(dir.path(), &format!("syslog+tcp://127.0.0.1:{port}"));
    let ca = std::fs::read_to_string(dir.path().join("certs/ca.pem")).unwrap();
    calls(proxy, &ca, 100, 2).await;
    let lines = |out: &std::path::Path| std::fs::read_to_string(out).unwrap_or_default();
    // A loaded machine (the whole suite at once) slows rsyslog's file output: a minute's bound.
    let within = std::time::Duration::from_secs(60);
    poll::until("rsyslog wrote every event", within, || {
        let (out, admin) = (out.clone(), admin.clone());
        async move {
            let (last, _) = head(&admin).await;
            let text = lines(&out);
            last > 0 && text.lines().count() as u64 >= last
        }
    })
    .await;
    let (last, _) = head(&admin).await;
    let mut seqs = Vec::new();
    for line in lines(&out).lines() {
        // <PRI>1 TIMESTAMP HOST toolgate - MSGID [toolgate@32473 seq="N"] {OCSF}
        assert!(line.starts_with('<'), "{line}");
        let fields: Vec<&str> = line.splitn(8, ' ').collect();
        assert_eq!(
            fields[0].split('>').nth(1),
            Some("1"),
            "RFC 5424 version: {line}"
        );
        assert_eq!(fields[3], "toolgate", "{line}");
        let json = &line[line.find('{').unwrap()..];
        let v: Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {line}"));
        let seq = v["metadata"]["sequence"].as_u64().unwrap();
        assert!(line.contains(&format!("seq=\"{seq}\"")), "{line}");
        seqs.push(seq);
    }
    seqs.sort();
    seqs.dedup();
    assert_eq!(
        seqs,
        (1..=last).collect::<Vec<_>>(),
        "every event, as one line each"
    );
}

#[tokio::test]
async fn retention_keeps_what_a_sink_has_not_delivered_unless_forced() {
    let sink = toolgate::config::parse_audit_sink("http://127.0.0.1:9/down", None).unwrap();
    let (_pki, _upstream, gate) = GateBuilder::examples()
        .config(move |c| {
            c.guards.audit_retention_min = std::time::Duration::ZERO;
            c.audit_sinks = vec![sink.clone()];
        })
        .with_upstream()
        .await;
    let client = gate.client(
        Some(("support-bot-staging", "demo-staging-token")),
        http::Version::HTTP_11,
    );
    for i in 0..3 {
        let url = format!("https://api.stripe.com/v1/customers/cus_{i}");
        send(&client, "GET", &url, &[], "").await.unwrap();
    }
    let unix = || toolgate::base::now_ms() / 1000;
    let written_by = unix() + 1;
    poll::until("the clock is past the events' second", poll::SOON, || {
        std::future::ready(unix() > written_by)
    })
    .await;
    let purge = |force: bool| {
        let gate = &gate;
        let body = serde_json::json!({"before": unix().to_string(), "reason": "r", "force": force});
        async move {
            gate.admin(
                "POST",
                "/api/audit/purge",
                Some("demo-dave-token"),
                Some(body),
            )
            .await
            .json()
        }
    };
    let kept = purge(false).await;
    assert_eq!(kept["removed"], 0, "{kept}");
    assert_eq!(kept["kept_for_sinks"], true, "{kept}");
    assert!(kept["note"].as_str().unwrap().contains("force"), "{kept}");
    let forced = purge(true).await;
    assert!(forced["removed"].as_u64().unwrap() > 0, "{forced}");
}

#[tokio::test]
async fn a_file_sink_writes_json_lines_and_rotates_by_size() {
    let out = tempfile::tempdir().unwrap();
    let path = out.path().join("audit.jsonl");
    let spec = format!("file://{}?max_bytes=1KiB&keep=2", path.display());
    let sink = toolgate::config::parse_audit_sink(&spec, None).unwrap();
    let (_pki, _upstream, gate) = GateBuilder::examples()
        .config(move |c| c.audit_sinks = vec![sink.clone()])
        .with_upstream()
        .await;
    let client = gate.client(
        Some(("support-bot-staging", "demo-staging-token")),
        http::Version::HTTP_11,
    );
    let rotated = |i: u32| std::path::PathBuf::from(format!("{}.{i}", path.display()));
    // Rounds of calls, each delivered (as a batch of its own) before the next.
    for round in 0..4 {
        for i in 0..3 {
            let url = format!("https://api.stripe.com/v1/customers/cus_{round}_{i}");
            send(&client, "GET", &url, &[], "").await.unwrap();
        }
        let needle = format!("cus_{round}_2");
        poll::until("the round is in the file", poll::SOON, || {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            std::future::ready(text.contains(&needle))
        })
        .await;
    }
    poll::until("the file sink rotated", poll::SOON, || {
        std::future::ready(rotated(2).exists())
    })
    .await;
    assert!(!rotated(3).exists(), "two rotated files are kept");
    let first = std::fs::read_to_string(rotated(1)).unwrap();
    for line in first.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        assert!(v["metadata"]["sequence"].as_u64().is_some());
    }
}

#[tokio::test]
async fn a_syslog_tls_sink_sends_octet_counted_rfc5424_over_verified_tls() {
    let pki = Pki::new("syslog CA");
    let tls = tokio_rustls::TlsAcceptor::from(pki.server_config(&["localhost"]));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let got: Arc<Mutex<Vec<u8>>> = Arc::default();
    let kept = got.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (tls, kept) = (tls.clone(), kept.clone());
            tokio::spawn(async move {
                use tokio::io::AsyncReadExt;
                let Ok(mut s) = tls.accept(tcp).await else {
                    return;
                };
                let mut buf = [0u8; 65536];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        return;
                    }
                    kept.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            });
        }
    });
    let sink = toolgate::config::parse_audit_sink(&format!("syslog+tls://localhost:{port}"), None)
        .unwrap();
    let ca = pki.ca_path.clone();
    let (_pki, _upstream, gate) = GateBuilder::examples()
        .config(move |c| {
            c.audit_sinks = vec![sink.clone()];
            c.upstream_ca.push(ca.clone());
        })
        .with_upstream()
        .await;
    let client = gate.client(
        Some(("support-bot-staging", "demo-staging-token")),
        http::Version::HTTP_11,
    );
    for i in 0..5 {
        let url = format!("https://api.stripe.com/v1/customers/cus_{i}");
        send(&client, "GET", &url, &[], "").await.unwrap();
    }
    let seqs = |bytes: &[u8]| {
        let mut rest = bytes;
        let mut seqs = Vec::new();
        while let Some(sp) = rest.iter().position(|b| *b == b' ') {
            let len: usize = std::str::from_utf8(&rest[..sp]).unwrap().parse().unwrap();
            if rest.len() < sp + 1 + len {
                break;
            }
            let msg = std::str::from_utf8(&rest[sp + 1..sp + 1 + len]).unwrap();
            let v: Value = serde_json::from_str(&msg[msg.find('{').unwrap()..]).unwrap();
            seqs.push(v["metadata"]["sequence"].as_u64().unwrap());
            rest = &rest[sp + 1 + len..];
        }
        seqs
    };
    poll::until("five reads reach the syslog server", poll::SOON, || {
        let n = seqs(&got.lock().unwrap()).len();
        std::future::ready(n >= 5)
    })
    .await;
    let s = seqs(&got.lock().unwrap());
    assert_eq!(
        s,
        (1..=s.len() as u64).collect::<Vec<_>>(),
        "in order from the first"
    );
}

#[tokio::test]
async fn a_sink_that_falls_behind_raises_the_alarm_and_never_holds_calls_back() {
    let sink = toolgate::config::parse_audit_sink("http://127.0.0.1:9/down", None).unwrap();
    let (_pki, upstream, gate) = GateBuilder::examples()
        .config(move |c| {
            c.audit_sinks = vec![sink.clone()];
            c.audit_sink_max_lag = 3;
        })
        .with_upstream()
        .await;
    let client = gate.client(
        Some(("support-bot-staging", "demo-staging-token")),
        http::Version::HTTP_11,
    );
    // The receiver is down: every call still goes through at once.
    for i in 0..6 {
        let url = format!("https://api.stripe.com/v1/customers/cus_{i}");
        let got = send(&client, "GET", &url, &[], "").await.unwrap();
        assert_eq!(got.status, 200);
    }
    assert_eq!(upstream.count(), 6);
    let admin = gate.admin_addr.to_string();
    let detail = poll::until_some("the sink's lag raises the alarm", poll::SOON, || {
        let admin = admin.clone();
        async move {
            let (_, v) = head(&admin).await;
            let sink = v["sinks"][0].clone();
            let failing = sink["failures"].as_u64().unwrap_or(0) > 0;
            (sink["alarm"] == true && failing).then_some(v)
        }
    })
    .await;
    assert!(detail["sinks"][0]["lag"].as_u64().unwrap() > 3, "{detail}");
    assert!(detail["sinks"][0]["last_error"].is_string(), "{detail}");
    let metrics = gate
        .admin("GET", "/metrics", Some("demo-riley-token"), None)
        .await
        .text();
    assert!(metrics.contains("toolgate_store_alarm 1"), "{metrics}");
    assert!(
        metrics.contains("toolgate_audit_sink_lag_events{sink="),
        "{metrics}"
    );
}
