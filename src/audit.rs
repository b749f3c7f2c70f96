//! The audit log: append-only events in the store (`store::EventLog`), each carrying the sha256 of the one before, so
//! that `verify` finds an edited or removed event. Secrets are redacted before anything is
//! written. Events that a commit depends on are flushed before the request leaves (several
//! concurrent commits share one flush); everything else is written in batches. The writing
//! happens on a thread of its own, off the async reactor.

use std::collections::BTreeSet;
use std::sync::mpsc;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;
use tracing::{error, warn};

use crate::base::now_ms;
use crate::store::{EventLog, StoreError};

/// One event of the log. The field order is the hashing order: do not reorder.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Event {
    pub seq: u64,
    pub time: String,
    pub unix_ms: u64,
    pub kind: String,
    #[serde(default)]
    pub request_id: Option<String>,
    #[serde(default)]
    pub job: Option<String>,
    #[serde(default)]
    pub proposal: Option<String>,
    #[serde(default)]
    pub agent: Option<String>,
    #[serde(default)]
    pub owner: Option<String>,
    #[serde(default)]
    pub tool: Option<String>,
    #[serde(default)]
    pub tool_version: Option<u32>,
    pub payload: Value,
    pub prev: String,
    #[serde(default)]
    pub hash: String,
}

impl Event {
    /// sha256 over the event with an empty `hash`, chained to `prev`.
    pub fn compute_hash(&self) -> String {
        let mut copy = self.clone();
        copy.hash = String::new();
        let bytes = serde_json::to_vec(&copy).unwrap_or_default();
        hex::encode(Sha256::digest(&bytes))
    }
}

/// What a caller records; the writer adds sequence, time and the chain.
#[derive(Debug, Clone, Default)]
pub struct Record {
    pub kind: &'static str,
    pub request_id: Option<String>,
    pub job: Option<String>,
    pub proposal: Option<String>,
    pub agent: Option<String>,
    pub owner: Option<String>,
    pub tool: Option<String>,
    pub tool_version: Option<u32>,
    pub payload: Value,
}

enum Msg {
    Append(Box<Record>, Option<oneshot::Sender<Result<u64, String>>>),
}

/// Redacts secrets from anything about to be written.
pub struct Redactor {
    patterns: Regex,
    secrets: RwLock<Vec<String>>,
}

/// Header names whose values are always redacted.
pub const SECRET_HEADERS: [&str; 9] = [
    "authorization",
    "proxy-authorization",
    "x-api-key",
    "api-key",
    "x-auth-token",
    "x-goog-api-key",
    "private-token",
    "cookie",
    "set-cookie",
];

pub const REDACTED: &str = "[REDACTED]";

impl Redactor {
    pub fn new() -> Redactor {
        // Values that look like keys, wherever they appear.
        let patterns = Regex::new(concat!(
            r"(?:sk|rk)_(?:live|test)_[A-Za-z0-9_]{4,}",
            r"|gh[opusr]_[A-Za-z0-9]{10,}",
            r"|github_pat_[A-Za-z0-9_]{10,}",
            r"|SG\.[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}",
            r"|(?:AKIA|ASIA)[A-Z0-9]{16}",
            r"|-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----",
            r"|eyJ[A-Za-z0-9_\-]{5,}\.[A-Za-z0-9_\-]{5,}\.[A-Za-z0-9_\-]*",
            r"|(?i:bearer)\s+[A-Za-z0-9._~+/=\-]{8,}",
        ))
        .unwrap_or_else(|_| Regex::new("$^").unwrap_or_else(|_| unreachable_regex()));
        Redactor {
            patterns,
            secrets: RwLock::new(Vec::new()),
        }
    }

    /// The injected secrets to scrub wherever they appear (an upstream may echo them).
    pub fn set_secrets(&self, secrets: Vec<String>) {
        let mut s: Vec<String> = secrets.into_iter().filter(|s| s.len() >= 4).collect();
        // Longest first, so a secret that contains another is removed whole.
        s.sort_by_key(|x| std::cmp::Reverse(x.len()));
        s.dedup();
        *self.secrets.write().unwrap_or_else(|p| p.into_inner()) = s;
    }

    pub fn text(&self, s: &str) -> String {
        let mut out = s.to_string();
        for secret in self
            .secrets
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            if out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), REDACTED);
            }
        }
        self.patterns.replace_all(&out, REDACTED).into_owned()
    }

    /// Redacts every string in a JSON value (keys too).
    pub fn value(&self, v: &Value) -> Value {
        match v {
            Value::String(s) => Value::String(self.text(s)),
            Value::Array(a) => Value::Array(a.iter().map(|x| self.value(x)).collect()),
            Value::Object(m) => Value::Object(
                m.iter()
                    .map(|(k, x)| {
                        if SECRET_HEADERS.contains(&k.to_ascii_lowercase().as_str())
                            && x.is_string()
                        {
                            (k.clone(), Value::String(REDACTED.into()))
                        } else {
                            (self.text(k), self.value(x))
                        }
                    })
                    .collect(),
            ),
            other => other.clone(),
        }
    }
}

impl Default for Redactor {
    fn default() -> Self {
        Redactor::new()
    }
}

fn unreachable_regex() -> Regex {
    // A pattern that compiles everywhere; used only if the main one failed to build.
    #[allow(clippy::expect_used)]
    Regex::new("a^").expect("trivial regex")
}

/// An upstream answer with secrets scrubbed, as it is stored and answered: header values and a
/// UTF-8 body go through the redactor (an upstream that echoes the injected credential must not
/// hand it to the agent or to the disk); a binary body is kept as it is.
pub fn scrub_outcome(
    redactor: &Redactor,
    status: u16,
    headers: &http::HeaderMap,
    body: &[u8],
) -> (crate::store::Outcome, bytes::Bytes) {
    use base64::Engine;
    let body = match std::str::from_utf8(body) {
        Ok(text) => bytes::Bytes::from(redactor.text(text)),
        Err(_) => bytes::Bytes::copy_from_slice(body),
    };
    let outcome = crate::store::Outcome {
        status,
        headers: headers
            .iter()
            .map(|(k, v)| {
                let v = String::from_utf8_lossy(v.as_bytes());
                let v = if SECRET_HEADERS.contains(&k.as_str()) {
                    REDACTED.to_string()
                } else {
                    redactor.text(&v)
                };
                (k.to_string(), v)
            })
            .collect(),
        body: base64::engine::general_purpose::STANDARD.encode(&body),
    };
    (outcome, body)
}

/// Headers as a JSON object for an event. Redaction happens when the event is written (on the
/// writer's thread, for every payload), not here on the request path.
pub fn headers_json(headers: &http::HeaderMap) -> Value {
    let mut out = serde_json::Map::new();
    let mut total = 0usize;
    for (k, v) in headers {
        // What one request may make the log keep is bounded: a flood of large headers must not
        // fill the disk.
        if total >= HEADERS_CAP || out.len() >= MAX_HEADERS_RECORDED {
            out.insert("toolgate-truncated".into(), Value::Bool(true));
            break;
        }
        let value = cap_text(&String::from_utf8_lossy(v.as_bytes()), HEADER_VALUE_CAP);
        total += k.as_str().len() + value.len();
        match out.get_mut(k.as_str()) {
            Some(Value::String(prev)) => {
                prev.push_str(", ");
                prev.push_str(&value);
            }
            _ => {
                out.insert(k.as_str().to_string(), Value::String(value));
            }
        }
    }
    Value::Object(out)
}

/// The most one header value, all headers and a URI or path take in an event.
pub const HEADER_VALUE_CAP: usize = 512;
pub const HEADERS_CAP: usize = 4096;
pub const MAX_HEADERS_RECORDED: usize = 64;
pub const URI_CAP: usize = 1024;

/// `text` cut to at most `cap` bytes (on a character boundary), with a mark when cut.
pub fn cap_text(text: &str, cap: usize) -> String {
    if text.len() <= cap {
        return text.to_string();
    }
    let mut end = cap;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…[{} bytes, truncated]", &text[..end], text.len())
}

/// A body for an event: text, capped, with a truncation mark (redacted when written).
pub fn body_json(bytes: &[u8], cap: usize) -> Value {
    let shown = &bytes[..bytes.len().min(cap)];
    let mut v = json!({ "text": String::from_utf8_lossy(shown), "bytes": bytes.len() });
    if bytes.len() > cap {
        v["truncated"] = Value::Bool(true);
    }
    v
}

/// The log: a handle for writers and readers.
pub struct Audit {
    tx: std::sync::Mutex<Option<mpsc::Sender<Msg>>>,
    writer: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
    log: Arc<dyn EventLog>,
    pub redactor: Arc<Redactor>,
    /// Flush latency of the last group commit, in microseconds (for /metrics).
    pub last_flush_us: Arc<std::sync::atomic::AtomicU64>,
}

/// The cap on bodies recorded in events.
pub const BODY_CAP: usize = 16 * 1024;

fn rfc3339(ms: u64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

impl Drop for Audit {
    /// The writer writes what is queued and ends; the store is released with it.
    fn drop(&mut self) {
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(w) = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = w.join();
        }
    }
}

const ANCHOR: &[u8] = b"anchor";
const PURGES: &[u8] = b"purges";

/// What a purge removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PurgeReport {
    pub removed: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
}

/// Refuses a purge that would remove events younger than the retention minimum.
pub fn check_purge_cut(before_ms: u64, min_age: Duration) -> Result<(), String> {
    let earliest = now_ms().saturating_sub(min_age.as_millis() as u64);
    if before_ms > earliest {
        return Err(format!(
            "events younger than the retention minimum ({}s) are never purged; the latest cut allowed now is {}",
            min_age.as_secs(),
            rfc3339(earliest)
        ));
    }
    Ok(())
}

/// The sequence number and hash the next event chains to: the newest event's, or the anchor a
/// purge left.
fn chain_head(log: &dyn EventLog) -> Result<(u64, String), StoreError> {
    Ok(match log.last()? {
        Some(v) => {
            let e: Event = serde_json::from_slice(&v)?;
            (e.seq, e.hash)
        }
        None => match log.meta_get(ANCHOR)? {
            Some(v) => {
                let a: Value = serde_json::from_slice(&v)?;
                (
                    a["seq"].as_u64().unwrap_or(0),
                    a["hash"].as_str().unwrap_or("").to_string(),
                )
            }
            None => (0, String::new()),
        },
    })
}

/// The writer thread's state: where the chain ends, and what it writes with.
struct Writer {
    log: Arc<dyn EventLog>,
    redactor: Arc<Redactor>,
    flush_gauge: Arc<std::sync::atomic::AtomicU64>,
    seq: u64,
    prev: String,
}

impl Writer {
    /// Writes batches until every sender is gone.
    fn run(mut self, rx: mpsc::Receiver<Msg>) {
        while let Ok(first) = rx.recv() {
            let mut batch = vec![first];
            batch.extend(rx.try_iter().take(1023));
            self.write(batch);
        }
    }

    /// One batch: chained, redacted, written atomically, flushed once if anyone waits.
    fn write(&mut self, batch: Vec<Msg>) {
        let mut acks = Vec::new();
        let mut failed: Option<String> = None;
        let before = (self.seq, self.prev.clone());
        let mut writes = Vec::new();
        for Msg::Append(rec, ack) in batch {
            let e = self.chain(*rec);
            writes.push((e.seq, serde_json::to_vec(&e).unwrap_or_default()));
            if let Some(ack) = ack {
                acks.push((ack, e.seq));
            }
        }
        // One atomic write per batch; on failure the chain continues from before it.
        if let Err(err) = self.log.append(writes) {
            failed = Some(err.to_string());
            (self.seq, self.prev) = before;
        }
        if !acks.is_empty() {
            // One flush for every commit waiting in this batch: group commit.
            let started = Instant::now();
            if let Err(err) = self.log.sync() {
                failed = Some(err.to_string());
            }
            self.flush_gauge.store(
                started.elapsed().as_micros() as u64,
                std::sync::atomic::Ordering::Relaxed,
            );
        }
        for (ack, seq) in acks {
            let _ = ack.send(match &failed {
                Some(e) => Err(e.clone()),
                None => Ok(seq),
            });
        }
        if let Some(e) = failed {
            error!(error = %e, "audit write failed");
        }
    }

    /// The next event of the chain for a record.
    fn chain(&mut self, rec: Record) -> Event {
        let ms = now_ms();
        let mut e = Event {
            seq: self.seq + 1,
            time: rfc3339(ms),
            unix_ms: ms,
            kind: rec.kind.to_string(),
            request_id: rec.request_id,
            job: rec.job,
            proposal: rec.proposal,
            agent: rec.agent,
            owner: rec.owner,
            tool: rec.tool,
            tool_version: rec.tool_version,
            // Redacted here, on the writer's thread, before anything is written.
            payload: self.redactor.value(&rec.payload),
            prev: self.prev.clone(),
            hash: String::new(),
        };
        e.hash = e.compute_hash();
        self.seq = e.seq;
        self.prev = e.hash.clone();
        e
    }
}

impl Audit {
    /// Opens the log in the store's database and starts its writer thread.
    pub fn open(store: &crate::store::Store) -> Result<Audit, StoreError> {
        let log = store.event_log()?;
        let (tx, rx) = mpsc::channel::<Msg>();
        let (seq, prev) = chain_head(log.as_ref())?;
        let last_flush_us = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let redactor = Arc::new(Redactor::new());
        let writer = Writer {
            log: log.clone(),
            redactor: redactor.clone(),
            flush_gauge: last_flush_us.clone(),
            seq,
            prev,
        };
        let writer = std::thread::Builder::new()
            .name("toolgate-audit".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| {
                StoreError::from_message(format!("could not start the audit writer: {e}"))
            })?;
        Ok(Audit {
            tx: std::sync::Mutex::new(Some(tx)),
            writer: std::sync::Mutex::new(Some(writer)),
            log,
            redactor,
            last_flush_us,
        })
    }

    fn send(&self, msg: Msg) -> bool {
        self.tx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(|tx| tx.send(msg).is_ok())
    }

    /// Records an event in the next batch; does not wait for a flush.
    pub fn record(&self, rec: Record) {
        if !self.send(Msg::Append(Box::new(rec), None)) {
            warn!("audit writer is gone; an event was not recorded");
        }
    }

    /// Records an event and waits until it is durable. An error means the caller must not go
    /// on with what the event records (fail closed).
    pub async fn record_durable(&self, rec: Record) -> Result<u64, String> {
        let (tx, rx) = oneshot::channel();
        if !self.send(Msg::Append(Box::new(rec), Some(tx))) {
            return Err("the audit writer is not running".into());
        }
        match tokio::time::timeout(Duration::from_secs(30), rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err("the audit writer stopped".into()),
            Err(_) => Err("the audit flush timed out".into()),
        }
    }

    /// Every event, in order.
    pub fn events(&self) -> impl Iterator<Item = Result<Event, StoreError>> + '_ {
        self.log.scan().map(|item| {
            let (_, v) = item?;
            Ok(serde_json::from_slice::<Event>(&v)?)
        })
    }

    /// Checks the chain. `Ok(n)`: n events verified. `Err((seq, why))`: the first bad one.
    pub fn verify(&self) -> Result<u64, (u64, String)> {
        let (mut expect_seq, mut prev) = match self.log.meta_get(ANCHOR) {
            Ok(Some(v)) => {
                let a: Value = serde_json::from_slice(&v).unwrap_or_default();
                (
                    a["seq"].as_u64().unwrap_or(0) + 1,
                    a["hash"].as_str().unwrap_or("").to_string(),
                )
            }
            _ => (1, String::new()),
        };
        let mut n = 0;
        for item in self.log.scan() {
            let (key_seq, v) = item.map_err(|e| (expect_seq, e.to_string()))?;
            let e: Event = serde_json::from_slice(&v)
                .map_err(|err| (key_seq, format!("event {key_seq} is not readable: {err}")))?;
            if e.seq != expect_seq || key_seq != e.seq {
                return Err((
                    expect_seq,
                    format!("event {expect_seq} is missing (found {})", e.seq),
                ));
            }
            if e.prev != prev {
                return Err((
                    e.seq,
                    format!("event {} does not chain to the one before", e.seq),
                ));
            }
            if e.compute_hash() != e.hash {
                return Err((
                    e.seq,
                    format!("event {} was changed after it was written", e.seq),
                ));
            }
            prev = e.hash;
            expect_seq += 1;
            n += 1;
        }
        Ok(n)
    }

    /// Removes events older than `before_ms`, keeping the chain verifiable from an anchor (the
    /// last removed event's sequence and hash). The purge itself is then recorded twice: as a
    /// `purge` event in the chain, and in the list of purges `verify` reports, which no later
    /// purge removes.
    pub async fn purge(
        &self,
        before_ms: u64,
        by: &str,
        reason: &str,
    ) -> Result<PurgeReport, StoreError> {
        let mut report = PurgeReport::default();
        let mut anchor: Option<(u64, String)> = None;
        // Never purge the newest event: it anchors the next append.
        let newest = chain_head(self.log.as_ref())?.0;
        for item in self.log.scan() {
            let (k, v) = item?;
            let e: Event = serde_json::from_slice(&v)?;
            if e.unix_ms >= before_ms || k >= newest {
                break;
            }
            report.first_seq.get_or_insert(e.seq);
            report.last_seq = Some(e.seq);
            anchor = Some((e.seq, e.hash.clone()));
            self.log.remove(k)?;
            report.removed += 1;
        }
        if let Some((seq, hash)) = anchor {
            self.log.meta_put(
                ANCHOR,
                serde_json::to_vec(&json!({"seq": seq, "hash": hash}))?,
            )?;
        }
        let entry = json!({
            "by": by,
            "reason": reason,
            "before": rfc3339(before_ms),
            "removed": report.removed,
            "from_seq": report.first_seq,
            "to_seq": report.last_seq,
            "at": rfc3339(now_ms()),
        });
        let mut purges = self.purges()?;
        purges.push(entry.clone());
        self.log.meta_put(PURGES, serde_json::to_vec(&purges)?)?;
        let log = self.log.clone();
        tokio::task::spawn_blocking(move || log.sync())
            .await
            .map_err(|e| StoreError::from_message(format!("the purge's flush stopped: {e}")))??;
        self.record_durable(Record {
            kind: "purge",
            payload: entry,
            ..Default::default()
        })
        .await
        .map_err(StoreError::from_message)?;
        Ok(report)
    }

    /// Every purge so far (who, why, which range), oldest first.
    pub fn purges(&self) -> Result<Vec<Value>, StoreError> {
        Ok(match self.log.meta_get(PURGES)? {
            Some(v) => serde_json::from_slice(&v)?,
            None => Vec::new(),
        })
    }

    /// The events that tell the story of a request, proposal or job id: the events naming it,
    /// then everything about the requests and proposals those events name.
    pub fn story(&self, id: &str) -> Result<Vec<Event>, StoreError> {
        let all: Vec<Event> = self.events().collect::<Result<_, _>>()?;
        let mut requests = BTreeSet::new();
        let mut proposals = BTreeSet::new();
        let mut jobs = BTreeSet::new();
        for e in &all {
            let hit = e.request_id.as_deref() == Some(id)
                || e.proposal.as_deref() == Some(id)
                || e.job.as_deref() == Some(id);
            if hit {
                requests.extend(e.request_id.clone());
                proposals.extend(e.proposal.clone());
                if e.job.as_deref() == Some(id) {
                    jobs.insert(id.to_string());
                }
            }
        }
        // Proposals pull in every request that joined them, and those requests' events.
        for e in &all {
            if e.proposal.as_ref().is_some_and(|p| proposals.contains(p)) {
                requests.extend(e.request_id.clone());
            }
        }
        Ok(all
            .into_iter()
            .filter(|e| {
                e.request_id.as_ref().is_some_and(|r| requests.contains(r))
                    || e.proposal.as_ref().is_some_and(|p| proposals.contains(p))
                    || e.job.as_ref().is_some_and(|j| jobs.contains(j))
            })
            .collect())
    }
}

/// The answers a story gives, before its events: who asked, who approved, what executed, what
/// changed, what was rolled back.
pub fn summary(events: &[Event]) -> Vec<String> {
    let mut asked = BTreeSet::new();
    let mut approved = Vec::new();
    let mut executed = Vec::new();
    let mut changed = Vec::new();
    let mut undone = Vec::new();
    for e in events {
        let p = &e.payload;
        let s = |k: &str| p[k].as_str().unwrap_or("").to_string();
        if e.kind == "request" && p["undoes"].is_null() {
            if let Some(agent) = &e.agent {
                asked.insert(match &e.owner {
                    Some(o) => format!("{agent} (owner {o})"),
                    None => agent.clone(),
                });
            }
        }
        match e.kind.as_str() {
            "decision" => {
                if let (Some(agent), Some(owner)) = (&e.agent, &e.owner) {
                    asked.remove(agent);
                    asked.insert(format!("{agent} (owner {owner})"));
                }
            }
            "approval" => approved.push(format!("{} at {}", s("by"), e.time)),
            "commit" => executed.push(format!("{} {}", s("method"), s("url"))),
            "response" => changed.push(format!(
                "{} answered {}",
                e.tool.as_deref().unwrap_or("-"),
                p["status"]
            )),
            "rollback" if s("outcome") == "undone" => undone.push(format!(
                "{} by {} via {}",
                e.request_id.as_deref().unwrap_or("-"),
                s("by"),
                s("undo_request")
            )),
            _ => {}
        }
    }
    // An agent listed bare and with its owner is listed once.
    let asked: Vec<String> = asked
        .iter()
        .filter(|a| a.contains(' ') || !asked.iter().any(|b| b.starts_with(&format!("{a} "))))
        .cloned()
        .collect();
    let none = || "-".to_string();
    let join = |v: Vec<String>| if v.is_empty() { none() } else { v.join("; ") };
    vec![
        format!("who asked:     {}", join(asked)),
        format!("who approved:  {}", join(approved)),
        format!("what executed: {}", join(executed)),
        format!("what changed:  {}", join(changed)),
        format!("rolled back:   {}", join(undone)),
    ]
}

/// A line of a story for people.
pub fn describe(e: &Event) -> String {
    let p = &e.payload;
    let s = |k: &str| p[k].as_str().unwrap_or("").to_string();
    let what = match e.kind.as_str() {
        "request" => format!("{} {} {}", s("method"), s("host"), s("path")),
        "decision" => match s("outcome").as_str() {
            "refused" => format!("refused: {} ({})", s("code"), s("message")),
            other => format!("{other} (mode {})", s("mode")),
        },
        "proposal" => format!(
            "proposed: {} — needs {} approval(s) from {}",
            s("summary"),
            p["required"],
            p["groups"]
        ),
        "approval" | "denial" | "revocation" | "cancellation" => {
            format!(
                "{} by {}{}",
                e.kind,
                s("by"),
                if s("comment").is_empty() {
                    String::new()
                } else {
                    format!(": {}", s("comment"))
                }
            )
        }
        "commit" => format!(
            "commit: sending {} {} (payload sha256 {})",
            s("method"),
            s("url"),
            s("sha256")
        ),
        "response" => format!(
            "upstream answered {} in {} ms",
            p["status"], p["latency_ms"]
        ),
        "upstream_error" => format!("upstream failed: {} ({})", s("code"), s("message")),
        "dry_run" => "dry run: previewed, nothing sent".to_string(),
        "idempotent_replay" => format!(
            "replayed the stored outcome of request {}",
            s("original_request")
        ),
        "kill_switch" => format!(
            "kill switch {} {} by {}: {}",
            s("target"),
            s("state"),
            s("by"),
            s("reason")
        ),
        "rollback" => match s("outcome").as_str() {
            "undone" => format!(
                "rolled back by {} via {} ({} {} answered {})",
                s("by"),
                s("undo_request"),
                s("method"),
                s("path"),
                p["status"]
            ),
            other => format!("rollback by {} {other}: {}", s("by"), s("message")),
        },
        "replay" => match p["status"].as_u64() {
            Some(status) => format!(
                "replayed to sandbox {} by {} as {}: answered {status}",
                s("to"),
                s("by"),
                s("replay_id")
            ),
            None => format!(
                "replay to sandbox {} by {} {}: {}",
                s("to"),
                s("by"),
                s("outcome"),
                s("message")
            ),
        },
        "policy_reload" => format!("policies reloaded: {}", s("result")),
        "expiry" => "expired without a decision".to_string(),
        "outcome_unknown" => s("note"),
        other => other.to_string(),
    };
    format!(
        "{}  #{:<5} {:<17} {:<22} {:<28} {}",
        e.time,
        e.seq,
        e.kind,
        e.agent.as_deref().unwrap_or("-"),
        e.tool.as_deref().unwrap_or("-"),
        what
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_covers_keys_headers_and_injected_secrets() {
        let r = Redactor::new();
        r.set_secrets(vec!["plain-secret-value".into()]);
        let corpus = [
            "sk_live_abcdef123456",
            "sk_test_abcdef123456",
            "rk_live_abcdef123456",
            "ghp_abcdefghijklmnop1234",
            "gho_abcdefghijklmnop1234",
            "github_pat_11ABCDEFG0abcdefghijkl",
            "SG.abcdefghijk.lmnopqrstuvwxyz012345",
            "AKIAABCDEFGHIJKLMNOP",
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjMifQ.c2lnbmF0dXJl",
            "-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----",
            "Bearer abcdefghijklmnop",
            "plain-secret-value",
        ];
        for secret in corpus {
            let v = json!({"body": format!("x {secret} y"), "nested": [{"k": secret}]});
            let out = r.value(&v).to_string();
            assert!(!out.contains(secret), "{secret} survived: {out}");
        }
        let v = r.value(&json!({"Authorization": "anything", "x": "fine"}));
        assert_eq!(v["Authorization"], REDACTED);
        assert_eq!(v["x"], "fine");
    }
}

/// Parses a time for filters: RFC 3339, a date (`2026-11-22`, midnight UTC), or unix seconds.
pub fn parse_time(s: &str) -> Option<u64> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return Some(secs * 1000);
    }
    if let Ok(t) = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339) {
        return u64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok();
    }
    let fmt = time::macros::format_description!("[year]-[month]-[day]");
    let date = time::Date::parse(s, &fmt).ok()?;
    u64::try_from(date.midnight().assume_utc().unix_timestamp() * 1000).ok()
}

/// Filters for `audit search`.
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
pub struct Filter {
    pub agent: Option<String>,
    pub tool: Option<String>,
    pub code: Option<String>,
    pub kind: Option<String>,
    pub since: Option<String>,
    pub until: Option<String>,
}

impl Audit {
    /// Events matching every given filter, in order.
    pub fn search(&self, f: &Filter) -> Result<Vec<Event>, String> {
        let since = match f.since.as_deref().filter(|s| !s.is_empty()) {
            Some(s) => Some(parse_time(s).ok_or_else(|| {
                format!("since {s:?} is not a time (RFC 3339, YYYY-MM-DD or unix seconds)")
            })?),
            None => None,
        };
        let until = match f.until.as_deref().filter(|s| !s.is_empty()) {
            Some(s) => Some(parse_time(s).ok_or_else(|| {
                format!("until {s:?} is not a time (RFC 3339, YYYY-MM-DD or unix seconds)")
            })?),
            None => None,
        };
        let want = |field: &Option<String>, value: Option<&str>| match field
            .as_deref()
            .filter(|x| !x.is_empty())
        {
            None => true,
            Some(w) => value == Some(w),
        };
        let mut out = Vec::new();
        for e in self.events() {
            let e = e.map_err(|e| e.to_string())?;
            if since.is_some_and(|s| e.unix_ms < s) || until.is_some_and(|u| e.unix_ms >= u) {
                continue;
            }
            if want(&f.agent, e.agent.as_deref())
                && want(&f.tool, e.tool.as_deref())
                && want(&f.kind, Some(e.kind.as_str()))
                && want(&f.code, e.payload["code"].as_str())
            {
                out.push(e);
            }
        }
        Ok(out)
    }
}
