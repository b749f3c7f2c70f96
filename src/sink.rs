//! Audit sinks (`--audit-sink`): every audit event streamed as OCSF to a SIEM's collector, a
//! syslog server or a file, at least once and in order. Each sink reads the log in sequence
//! order from its cursor in the store, sends a batch, and moves the cursor past the batch only
//! when the receiver acknowledged it (an HTTP 2xx, Elasticsearch's `errors: false`, a syslog
//! stream's or a file's write made durable); a failure is retried with backoff from the same
//! cursor, so after a restart (or on another replica of a shared store) delivery resumes where
//! the last acknowledged batch ended. Receivers drop duplicates by `metadata.sequence`.
//!
//! A sink never changes what the gateway decides: it reads the log the request path writes, so
//! a receiver that is down only makes the sink fall behind (its lag is on `/metrics` and
//! `/healthz?detail`, and past `--audit-sink-max-lag` it raises the store alarm).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

use crate::audit::{Audit, Event};
use crate::config::{AuditSink, SinkFormat, SinkTarget};
use crate::store::Store;

/// Events in one batch, at most.
const BATCH: usize = 500;
/// How often an idle sink looks for new events.
const IDLE_POLL: Duration = Duration::from_millis(200);
/// The longest wait between two tries of a failing sink.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long a receiver may take to acknowledge a batch.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// One sink's state, for `/metrics` and `/healthz`.
#[derive(Debug, Default)]
pub struct Status {
    /// The last acknowledged sequence number.
    pub delivered: AtomicU64,
    /// Events acknowledged since start.
    pub sent: AtomicU64,
    /// Failed tries since start.
    pub failures: AtomicU64,
    /// The last failure, until a batch goes through.
    pub last_error: Mutex<Option<String>>,
}

/// The configured sinks and their states.
pub struct Sinks {
    sinks: Vec<(AuditSink, Arc<Status>)>,
    tls: rustls::ClientConfig,
    max_lag: u64,
}

impl Sinks {
    pub fn new(sinks: &[AuditSink], tls: rustls::ClientConfig, max_lag: u64) -> Sinks {
        Sinks {
            sinks: sinks.iter().map(|s| (s.clone(), Arc::default())).collect(),
            tls,
            max_lag,
        }
    }

    /// Starts one task per sink; they end when `cancel` fires.
    pub fn start(&self, store: Store, audit: Arc<Audit>, cancel: CancellationToken) {
        for (sink, status) in &self.sinks {
            let sender = Sender::new(sink, &self.tls);
            let run = Runner {
                id: sink.id.clone(),
                store: store.clone(),
                audit: audit.clone(),
                status: status.clone(),
            };
            tokio::spawn(run.run(sender, cancel.clone()));
        }
    }

    /// Each sink with its lag behind `head` (the log's last sequence number).
    fn lags(&self, head: u64) -> impl Iterator<Item = (&str, &Status, u64)> {
        self.sinks.iter().map(move |(s, st)| {
            let delivered = st.delivered.load(Ordering::Relaxed);
            (s.id.as_str(), st.as_ref(), head.saturating_sub(delivered))
        })
    }

    /// Whether a sink is further behind than `--audit-sink-max-lag`.
    pub fn alarm(&self, head: u64) -> bool {
        self.lags(head).any(|(_, _, lag)| lag > self.max_lag)
    }

    /// The sinks' metrics in Prometheus text format.
    pub fn render(&self, head: u64) -> String {
        if self.sinks.is_empty() {
            return String::new();
        }
        let families: [Family; 3] = [
            (
                "toolgate_audit_sink_lag_events",
                "gauge",
                "Audit events not yet acknowledged by the sink.",
                |_, lag| lag,
            ),
            (
                "toolgate_audit_sink_delivered_total",
                "counter",
                "Events the sink acknowledged since start.",
                |st, _| st.sent.load(Ordering::Relaxed),
            ),
            (
                "toolgate_audit_sink_failures_total",
                "counter",
                "Failed deliveries (each retried).",
                |st, _| st.failures.load(Ordering::Relaxed),
            ),
        ];
        let mut out = String::new();
        for (name, kind, help, value) in families {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
            for (id, st, lag) in self.lags(head) {
                let id = id.replace(['"', '\\', '\n'], "");
                out.push_str(&format!("{name}{{sink=\"{id}\"}} {}\n", value(st, lag)));
            }
        }
        out
    }

    /// The sinks as `/healthz?detail` shows them.
    pub fn detail(&self, head: u64) -> Value {
        let sinks: Vec<Value> = self
            .lags(head)
            .map(|(id, st, lag)| {
                let error = st
                    .last_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone();
                json!({
                    "sink": id,
                    "delivered": st.delivered.load(Ordering::Relaxed),
                    "lag": lag,
                    "failures": st.failures.load(Ordering::Relaxed),
                    "last_error": error,
                    "alarm": lag > self.max_lag,
                })
            })
            .collect();
        json!(sinks)
    }

    /// The lowest cursor of all sinks (what retention must keep), if any sink is configured.
    pub async fn lowest_cursor(&self, store: &Store) -> Option<u64> {
        let mut lowest = None;
        for (sink, _) in &self.sinks {
            let c = store.cursor_get(&sink.id).await.unwrap_or(0);
            lowest = Some(lowest.map_or(c, |l: u64| l.min(c)));
        }
        lowest
    }
}

/// A metric family of the sinks: name, type, help, and its value from a sink's state and lag.
type Family = (
    &'static str,
    &'static str,
    &'static str,
    fn(&Status, u64) -> u64,
);

/// One sink's loop.
struct Runner {
    id: String,
    store: Store,
    audit: Arc<Audit>,
    status: Arc<Status>,
}

impl Runner {
    async fn run(self, mut sender: Sender, cancel: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let wait = match self.step(&mut sender).await {
                Ok(true) => {
                    backoff = Duration::from_millis(100);
                    Duration::ZERO
                }
                Ok(false) => IDLE_POLL,
                Err(e) => {
                    self.status.failures.fetch_add(1, Ordering::Relaxed);
                    let mut last = self
                        .status
                        .last_error
                        .lock()
                        .unwrap_or_else(|p| p.into_inner());
                    if last.is_none() {
                        tracing::warn!(sink = %self.id, error = %e, "an audit sink failed; retrying from its cursor");
                    }
                    *last = Some(e);
                    drop(last);
                    sender.reset();
                    let wait = backoff;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    wait
                }
            };
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Sends the next batch: Ok(true) when one was acknowledged, Ok(false) when there was none.
    async fn step(&self, sender: &mut Sender) -> Result<bool, String> {
        let cursor = self
            .store
            .cursor_get(&self.id)
            .await
            .map_err(|e| format!("the store: {e}"))?;
        self.status.delivered.fetch_max(cursor, Ordering::Relaxed);
        let audit = self.audit.clone();
        let batch = tokio::task::spawn_blocking(move || {
            audit
                .events(cursor + 1)
                .take(BATCH)
                .collect::<Result<Vec<Event>, _>>()
        })
        .await
        .map_err(|e| format!("reading the log: {e}"))?
        .map_err(|e| format!("reading the log: {e}"))?;
        let Some(last) = batch.last().map(|e| e.seq) else {
            return Ok(false);
        };
        tokio::time::timeout(SEND_TIMEOUT, sender.send(&batch))
            .await
            .map_err(|_| format!("no acknowledgment within {}s", SEND_TIMEOUT.as_secs()))??;
        self.store
            .cursor_advance(&self.id, last)
            .await
            .map_err(|e| format!("the store: {e}"))?;
        self.status.delivered.fetch_max(last, Ordering::Relaxed);
        self.status
            .sent
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        *self
            .status
            .last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = None;
        Ok(true)
    }
}

type HttpClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
>;

/// What a sink sends with.
enum Sender {
    Http {
        client: Box<HttpClient>,
        url: String,
        format: SinkFormat,
        token: Option<String>,
    },
    Syslog {
        host: String,
        port: u16,
        tls: Option<tokio_rustls::TlsConnector>,
        conn: Option<Box<dyn Stream>>,
    },
    File {
        path: std::path::PathBuf,
        max_bytes: u64,
        keep: u32,
    },
}

/// A syslog connection: TCP, or TLS over it.
trait Stream: tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncWrite + Send + Unpin> Stream for T {}

impl Sender {
    fn new(sink: &AuditSink, tls: &rustls::ClientConfig) -> Sender {
        match &sink.target {
            SinkTarget::Http { url, format, token } => {
                let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
                http.enforce_http(false);
                http.set_nodelay(true);
                let connector = hyper_rustls::HttpsConnectorBuilder::new()
                    .with_tls_config(tls.clone())
                    .https_or_http()
                    .enable_http1()
                    .wrap_connector(http);
                let client = hyper_util::client::legacy::Client::builder(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .build(connector);
                Sender::Http {
                    client: Box::new(client),
                    url: url.clone(),
                    format: *format,
                    token: token.clone(),
                }
            }
            SinkTarget::Syslog { host, port, tls: t } => Sender::Syslog {
                host: host.clone(),
                port: *port,
                tls: t.then(|| tokio_rustls::TlsConnector::from(Arc::new(tls.clone()))),
                conn: None,
            },
            SinkTarget::File {
                path,
                max_bytes,
                keep,
            } => Sender::File {
                path: path.clone(),
                max_bytes: *max_bytes,
                keep: *keep,
            },
        }
    }

    /// Forgets a connection that failed.
    fn reset(&mut self) {
        if let Sender::Syslog { conn, .. } = self {
            *conn = None;
        }
    }

    async fn send(&mut self, batch: &[Event]) -> Result<(), String> {
        match self {
            Sender::Http {
                client,
                url,
                format,
                token,
            } => send_http(client, url, *format, token.as_deref(), batch).await,
            Sender::Syslog {
                host,
                port,
                tls,
                conn,
            } => {
                if conn.is_none() {
                    *conn = Some(connect(host, *port, tls.as_ref()).await?);
                }
                let Some(stream) = conn.as_mut() else {
                    return Err("no syslog connection".into());
                };
                let bytes = syslog_frames(batch);
                stream
                    .write_all(&bytes)
                    .await
                    .map_err(|e| format!("syslog: {e}"))?;
                stream.flush().await.map_err(|e| format!("syslog: {e}"))
            }
            Sender::File {
                path,
                max_bytes,
                keep,
            } => write_file(path, *max_bytes, *keep, batch).await,
        }
    }
}

/// A batch as one HTTP request body, in the receiver's format.
fn http_body(format: SinkFormat, batch: &[Event]) -> Vec<u8> {
    let mut out = Vec::with_capacity(batch.len() * 1024);
    for e in batch {
        let ocsf = crate::audit::ocsf::event(e);
        let line = match format {
            SinkFormat::Jsonl => ocsf,
            SinkFormat::Hec => json!({
                "time": e.unix_ms as f64 / 1000.0,
                "source": "toolgate",
                "sourcetype": "ocsf",
                "event": ocsf,
            }),
            SinkFormat::Elastic => {
                let action = json!({"index": {"_id": format!("{}-{}", e.seq, e.hash)}});
                out.extend_from_slice(action.to_string().as_bytes());
                out.push(b'\n');
                ocsf
            }
        };
        out.extend_from_slice(line.to_string().as_bytes());
        out.push(b'\n');
    }
    out
}

async fn send_http(
    client: &HttpClient,
    url: &str,
    format: SinkFormat,
    token: Option<&str>,
    batch: &[Event],
) -> Result<(), String> {
    let mut req = http::Request::post(url).header("content-type", "application/x-ndjson");
    if let Some(t) = token {
        let scheme = if format == SinkFormat::Hec {
            "Splunk"
        } else {
            "Bearer"
        };
        req = req.header("authorization", format!("{scheme} {t}"));
    }
    let req = req
        .body(Full::new(Bytes::from(http_body(format, batch))))
        .map_err(|e| format!("{url}: {e}"))?;
    let resp = client
        .request(req)
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("{url}: {e}"))?
        .to_bytes();
    if !status.is_success() {
        return Err(format!("{url} answered {status}"));
    }
    if format == SinkFormat::Elastic {
        let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        if v["errors"] != Value::Bool(false) {
            return Err(format!("{url}: the bulk request was not taken whole"));
        }
    }
    Ok(())
}

/// A syslog connection to `host:port`, over TLS when `tls` is set.
async fn connect(
    host: &str,
    port: u16,
    tls: Option<&tokio_rustls::TlsConnector>,
) -> Result<Box<dyn Stream>, String> {
    let tcp = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("syslog {host}:{port}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let Some(tls) = tls else {
        return Ok(Box::new(tcp));
    };
    let name = rustls::pki_types::ServerName::try_from(host.to_string())
        .map_err(|e| format!("syslog {host}: {e}"))?;
    let stream = tls
        .connect(name, tcp)
        .await
        .map_err(|e| format!("syslog {host}:{port}: TLS: {e}"))?;
    Ok(Box::new(stream))
}

/// The batch as RFC 5424 messages with octet-counting framing (RFC 6587): `LEN SP MSG`, one
/// event each, facility local0, severity from the event, the OCSF JSON as the message.
fn syslog_frames(batch: &[Event]) -> Vec<u8> {
    let host = hostname();
    let mut out = Vec::with_capacity(batch.len() * 1024);
    for e in batch {
        let ocsf = crate::audit::ocsf::event(e);
        let severity = match ocsf["severity_id"].as_u64() {
            Some(3..) => 4,
            Some(2) => 5,
            _ => 6,
        };
        let msg = format!(
            "<{}>1 {} {host} toolgate - {} [toolgate@32473 seq=\"{}\"] {}",
            16 * 8 + severity,
            e.time,
            e.kind.as_str().replace(' ', "_"),
            e.seq,
            ocsf
        );
        out.extend_from_slice(format!("{} {msg}", msg.len()).as_bytes());
    }
    out
}

/// This machine's name for syslog's HOSTNAME field (`-` when unknown).
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty() && h.is_ascii() && !h.contains(' '))
        .unwrap_or_else(|| "-".into())
}

/// Appends the batch as JSON lines, made durable; the file is rotated (`path.1` … `path.K`)
/// when it would pass `max_bytes`.
async fn write_file(
    path: &std::path::Path,
    max_bytes: u64,
    keep: u32,
    batch: &[Event],
) -> Result<(), String> {
    let body = http_body(SinkFormat::Jsonl, batch);
    let err = |e: std::io::Error| format!("{}: {e}", path.display());
    let size = tokio::fs::metadata(path)
        .await
        .map(|m| m.len())
        .unwrap_or(0);
    if size > 0 && size + body.len() as u64 > max_bytes {
        for i in (1..keep.max(1)).rev() {
            let from = rotated(path, i);
            if tokio::fs::try_exists(&from).await.unwrap_or(false) {
                tokio::fs::rename(&from, rotated(path, i + 1))
                    .await
                    .map_err(err)?;
            }
        }
        tokio::fs::rename(path, rotated(path, 1))
            .await
            .map_err(err)?;
    }
    let mut f = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .await
        .map_err(err)?;
    f.write_all(&body).await.map_err(err)?;
    f.sync_data().await.map_err(err)
}

fn rotated(path: &std::path::Path, i: u32) -> std::path::PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{i}"));
    std::path::PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(seq: u64) -> Event {
        Event {
            seq,
            time: "2026-12-04T10:00:00.000Z".into(),
            unix_ms: 1_796_378_400_000,
            kind: crate::audit::Kind::Request,
            request_id: Some("req_1".into()),
            job: None,
            proposal: None,
            agent: Some("bot".into()),
            owner: None,
            tool: None,
            tool_version: None,
            token: None,
            user: None,
            payload: json!({"method": "GET", "note": "naïve ✓"}),
            prev: "p".into(),
            hash: format!("h{seq}"),
        }
    }

    #[test]
    fn http_batches_are_written_in_the_receivers_format() {
        let batch = [ev(1), ev(2)];
        let lines = |f| -> Vec<Value> {
            let body = http_body(f, &batch);
            let text = String::from_utf8(body).unwrap();
            text.lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect()
        };
        let jsonl = lines(SinkFormat::Jsonl);
        assert_eq!(jsonl.len(), 2);
        assert_eq!(jsonl[1]["metadata"]["sequence"], 2);
        let hec = lines(SinkFormat::Hec);
        assert_eq!(hec[0]["sourcetype"], "ocsf");
        assert_eq!(hec[0]["event"]["metadata"]["sequence"], 1);
        let bulk = lines(SinkFormat::Elastic);
        assert_eq!(bulk.len(), 4, "an action line before each document");
        assert_eq!(bulk[0]["index"]["_id"], "1-h1");
        assert_eq!(bulk[3]["metadata"]["uid"], "h2");
    }

    #[test]
    fn syslog_frames_count_octets_and_follow_rfc5424() {
        let bytes = syslog_frames(&[ev(7), ev(8)]);
        let mut rest = bytes.as_slice();
        let mut seen = 0;
        while !rest.is_empty() {
            let sp = rest.iter().position(|b| *b == b' ').unwrap();
            let len: usize = std::str::from_utf8(&rest[..sp]).unwrap().parse().unwrap();
            let msg = std::str::from_utf8(&rest[sp + 1..sp + 1 + len]).unwrap();
            assert!(msg.starts_with("<134>1 2026-12-04T10:00:00.000Z "), "{msg}");
            assert!(
                msg.contains(" toolgate - request [toolgate@32473 seq=\""),
                "{msg}"
            );
            let json = &msg[msg.find('{').unwrap()..];
            let v: Value = serde_json::from_str(json).unwrap();
            assert_eq!(v["metadata"]["sequence"], 7 + seen);
            rest = &rest[sp + 1 + len..];
            seen += 1;
        }
        assert_eq!(seen, 2);
    }
}
