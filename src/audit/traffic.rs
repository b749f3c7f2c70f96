//! Captured traffic as a reviewer reads it: one row per request, newest first, filtered and
//! paged with a stable cursor. A page walks one audit index backwards (the agent's, the error
//! code's, the tool's, the job's, or every request's) and reads only the events of the requests
//! it shows, so it costs the same among millions of events as among a hundred.

use std::collections::HashSet;

use super::payload::{Decision, Response};
use super::query::time_filter;
use super::{Audit, Event, Kind, Payload};
use crate::store::Index;
use serde::{Deserialize, Serialize};

/// Rows per page unless asked otherwise, and the most a page may ask for.
pub const PAGE_ROWS: usize = 50;
const MAX_ROWS: usize = 500;
/// Events a page examines at most before it stops and hands back a cursor (a filter that
/// matches little never makes one page read the whole log).
const SCAN_CAP: usize = 5_000;

/// The filters of `/traffic` and `GET /api/traffic` (those of `audit search`, and more).
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
pub struct TrafficFilter {
    pub agent: Option<String>,
    pub tool: Option<String>,
    pub host: Option<String>,
    /// An error code, or `allowed` / `held` / `dry_run`.
    pub code: Option<String>,
    pub status: Option<String>,
    pub job: Option<String>,
    /// The id of the issued token the calls came in with.
    pub token: Option<String>,
    /// The person the calls acted for.
    pub user: Option<String>,
    pub since: Option<String>,
    pub until: Option<String>,
    /// Text in the path.
    pub q: Option<String>,
    /// Where the previous page stopped.
    pub cursor: Option<String>,
    pub limit: Option<usize>,
}

impl TrafficFilter {
    fn given(v: &Option<String>) -> Option<&str> {
        v.as_deref().map(str::trim).filter(|s| !s.is_empty())
    }

    /// The filters as a query string (without the cursor), for links.
    pub fn query(&self) -> String {
        let mut q = form_urlencoded::Serializer::new(String::new());
        for (k, v) in [
            ("agent", &self.agent),
            ("tool", &self.tool),
            ("host", &self.host),
            ("code", &self.code),
            ("status", &self.status),
            ("job", &self.job),
            ("token", &self.token),
            ("user", &self.user),
            ("since", &self.since),
            ("until", &self.until),
            ("q", &self.q),
        ] {
            if let Some(v) = Self::given(v) {
                q.append_pair(k, v);
            }
        }
        q.finish()
    }
}

/// One captured request, as the list shows it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Row {
    pub request_id: String,
    pub time: String,
    pub unix_ms: u64,
    pub agent: String,
    pub owner: String,
    pub method: String,
    pub host: String,
    pub path: String,
    pub tool: String,
    pub tool_version: Option<u32>,
    /// allowed, dry_run, held, refused, or what toolgate did with a batch or a session message.
    pub decision: String,
    /// The refusal's code, if refused.
    pub code: String,
    /// The refusal's message, or the proposal's summary.
    pub message: String,
    /// The status the agent got (the upstream's, or toolgate's refusal).
    pub status: Option<u64>,
    pub latency_ms: Option<u64>,
    pub job: String,
    pub proposal: String,
    /// The id of the issued token the agent came in with (empty: its static token).
    pub token: String,
    /// The person the call acted for (empty: none).
    pub user: String,
    /// The grant that lent the agent the tool, if one did.
    pub grant: String,
    /// The agent was answered with a refusal (a held call's 423): events of its proposal
    /// recorded later (the commit its approval or a retry made) do not change what it got.
    #[serde(skip)]
    answered: bool,
}

/// A page of rows, and the cursor of the next one (none: the list ends here).
#[derive(Debug, Serialize)]
pub struct Page {
    pub requests: Vec<Row>,
    pub next_cursor: Option<String>,
}

impl Row {
    /// The row of a request, from its events (in sequence order).
    pub fn of(request_id: &str, events: &[Event]) -> Row {
        let mut row = Row {
            request_id: request_id.to_string(),
            ..Row::default()
        };
        for e in events {
            if row.agent.is_empty() {
                row.agent = e.agent.clone().unwrap_or_default();
            }
            if let Some(o) = &e.owner {
                row.owner = o.clone();
            }
            if let Some(t) = &e.tool {
                row.tool = t.clone();
                row.tool_version = e.tool_version;
            }
            if let Some(j) = &e.job {
                row.job = j.clone();
            }
            if let Some(pr) = &e.proposal {
                row.proposal = pr.clone();
            }
            if let Some(t) = &e.token {
                row.token = t.clone();
            }
            if let Some(u) = &e.user {
                row.user = u.clone();
            }
            row.add(e);
        }
        row
    }

    /// What one of the request's events adds to its row.
    fn add(&mut self, e: &Event) {
        match e.body() {
            Payload::Request(r) => {
                self.time = e.time.clone();
                self.unix_ms = e.unix_ms;
                self.method = r.method;
                self.host = r.host;
                self.path = r.path;
                if let Some(d) = &r.decision {
                    self.decision_from(d);
                }
                if let Some(response) = &r.response {
                    self.response_from(response);
                }
            }
            Payload::Decision(d) => self.decision_from(&d),
            Payload::Proposal(p) => {
                self.decision = "held".into();
                self.message = p.summary;
            }
            Payload::Response(r) if !self.answered => self.response_from(&r),
            Payload::Other(p) => match e.kind {
                Kind::GrantUsed => self.grant = e.text("grant").to_string(),
                // Answered from a committed proposal's stored answer (a held call's retry).
                Kind::IdempotentReplay if !self.answered => {
                    if let Some(status) = p["status"].as_u64() {
                        self.status = Some(status);
                    }
                }
                _ => {}
            },
            _ => {}
        }
    }

    fn decision_from(&mut self, d: &Decision) {
        if self.answered {
            return;
        }
        let outcome = match d.outcome.as_str() {
            // A call that joined a proposal (the same call sent again) is a held call too.
            "held for approval" => "held",
            other => other,
        };
        // A held call's later refusal (expiry, denial) is its outcome; a held call that went on
        // stays "held".
        if self.decision == "held" && outcome != "refused" {
            return;
        }
        let code = d.code.as_deref().unwrap_or("");
        if d.refused() {
            self.code = code.to_string();
            self.status = d.status.map(u64::from);
            self.answered = true;
            // Still waiting for approval when its hold ended: held, answered 423.
            if code == "approval_pending" {
                self.decision = "held".into();
                return;
            }
            self.message = d.message.clone().unwrap_or_default();
        }
        self.decision = outcome.to_string();
    }

    fn response_from(&mut self, r: &Response) {
        if let Some(status) = r.status {
            self.status = Some(u64::from(status));
        }
        if let Some(ms) = r.latency_ms {
            self.latency_ms = Some(ms);
        }
    }

    /// Whether the row passes the filters an index did not already apply.
    fn passes(&self, f: &TrafficFilter, since: Option<u64>, until: Option<u64>) -> bool {
        let given = TrafficFilter::given;
        let eq = |want: Option<&str>, have: &str| want.is_none_or(|w| w.eq_ignore_ascii_case(have));
        let code_ok = match given(&f.code) {
            None => true,
            Some(c @ ("allowed" | "held" | "dry_run" | "refused")) => self.decision == c,
            Some(c) => self.code == c,
        };
        let status_ok =
            given(&f.status).is_none_or(|s| self.status.is_some_and(|have| have.to_string() == s));
        code_ok
            && status_ok
            && eq(given(&f.agent), &self.agent)
            && eq(given(&f.tool), &self.tool)
            && eq(given(&f.host), &self.host)
            && given(&f.job).is_none_or(|j| self.job == j)
            && given(&f.q).is_none_or(|q| self.path.contains(q))
            && since.is_none_or(|s| self.unix_ms >= s)
            && until.is_none_or(|u| self.unix_ms < u)
    }
}

/// What a request's own event already rules out (path text, host, agent, time), before the
/// request's other events are read.
fn request_may_pass(e: &Event, f: &TrafficFilter, since: Option<u64>, until: Option<u64>) -> bool {
    let Payload::Request(r) = e.body() else {
        return true;
    };
    let given = TrafficFilter::given;
    given(&f.q).is_none_or(|q| r.path.contains(q))
        && given(&f.host).is_none_or(|h| r.host.eq_ignore_ascii_case(h))
        && given(&f.agent).is_none_or(|a| e.agent.as_deref() == Some(a))
        && since.is_none_or(|s| e.unix_ms >= s)
        && until.is_none_or(|u| e.unix_ms < u)
}

/// The index a page walks, and the value it walks it under.
fn walk(f: &TrafficFilter) -> (Index, String) {
    let given = TrafficFilter::given;
    let code = given(&f.code).filter(|c| !matches!(*c, "allowed" | "held" | "dry_run" | "refused"));
    [
        (Index::Agent, given(&f.agent)),
        (Index::Code, code),
        (Index::Tool, given(&f.tool)),
        (Index::Job, given(&f.job)),
        (Index::Token, given(&f.token)),
        (Index::User, given(&f.user)),
    ]
    .into_iter()
    .find_map(|(i, v)| v.map(|v| (i, v.to_string())))
    .unwrap_or((Index::Kind, Kind::Request.as_str().to_string()))
}

/// Whether an event is listed by the index a page walks.
fn in_walk(e: &Event, (index, value): &(Index, String)) -> bool {
    match index {
        Index::Agent => e.agent.as_deref() == Some(value),
        Index::Code => e.payload["code"].as_str() == Some(value),
        Index::Tool => e.tool.as_deref() == Some(value),
        Index::Job => e.job.as_deref() == Some(value),
        Index::Token => e.token.as_deref() == Some(value),
        Index::User => e.user.as_deref() == Some(value),
        Index::ModelRequest => e.payload["requested_by"]["model_request"].as_str() == Some(value),
        Index::Kind => e.kind.as_str() == value,
        Index::ModelAnswer => e.kind == Kind::ModelUsage && e.agent.as_deref() == Some(value),
        Index::Request | Index::Proposal => false,
    }
}

impl Audit {
    /// A page of captured requests, newest first. Each request is listed once over all pages:
    /// at its newest event in the walked index.
    pub fn traffic(&self, f: &TrafficFilter) -> Result<Page, String> {
        let since = time_filter("since", &f.since)?;
        let until = time_filter("until", &f.until)?;
        let limit = f.limit.unwrap_or(PAGE_ROWS).clamp(1, MAX_ROWS);
        let before = match TrafficFilter::given(&f.cursor) {
            Some(c) => c
                .parse::<u64>()
                .map_err(|_| format!("cursor {c:?} is not one this list handed out"))?,
            None => u64::MAX,
        };
        let walked = walk(f);
        let err = |e: crate::store::StoreError| e.to_string();
        let mut rows = Vec::new();
        let mut seen = HashSet::new();
        for (examined, seq) in self.log.lookup_rev(walked.0, &walked.1, before).enumerate() {
            let seq = seq.map_err(err)?;
            if examined >= SCAN_CAP {
                return Ok(Page {
                    requests: rows,
                    next_cursor: Some((seq + 1).to_string()),
                });
            }
            let Some(e) = self.event(seq).map_err(err)? else {
                continue;
            };
            if since.is_some_and(|s| e.unix_ms.saturating_add(60_000) < s) {
                // Older than the range (with a minute's slack: a request's event is stamped when
                // it arrived, and written after its first events).
                break;
            }
            let Some(rid) = e.request_id.clone() else {
                continue;
            };
            if !seen.insert(rid.clone()) || !request_may_pass(&e, f, since, until) {
                continue;
            }
            // A read told in one event is the whole request: nothing more to read.
            let told_whole = matches!(e.body(), Payload::Request(r) if r.response.is_some());
            let events = match told_whole {
                true => vec![e],
                false => self.request_events(&rid).map_err(err)?,
            };
            // Listed where its newest event in this index is: once, whatever the page.
            let newest = events
                .iter()
                .filter(|x| in_walk(x, &walked))
                .map(|x| x.seq)
                .max();
            if newest != Some(seq) {
                continue;
            }
            let row = Row::of(&rid, &events);
            if row.method.is_empty() || !row.passes(f, since, until) {
                continue;
            }
            rows.push(row);
            if rows.len() == limit {
                return Ok(Page {
                    requests: rows,
                    next_cursor: Some(seq.to_string()),
                });
            }
        }
        Ok(Page {
            requests: rows,
            next_cursor: None,
        })
    }

    /// The events of one request, in order.
    pub fn request_events(&self, request_id: &str) -> Result<Vec<Event>, crate::store::StoreError> {
        let mut out = Vec::new();
        for seq in self.log.lookup(Index::Request, request_id) {
            out.extend(self.event(seq?)?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn event(seq: u64, kind: &str, request: &str, payload: Value) -> Event {
        Event {
            seq,
            time: String::new(),
            unix_ms: seq,
            kind: Kind::parse(kind),
            request_id: Some(request.into()),
            job: None,
            proposal: Some("prop_1".into()),
            agent: Some("bot".into()),
            owner: None,
            tool: Some("t".into()),
            tool_version: Some(1),
            token: None,
            user: None,
            payload,
            prev: String::new(),
            hash: String::new(),
        }
    }

    #[test]
    fn a_held_call_shows_423_and_the_retry_that_sent_it_the_upstream_answer() {
        let asked = json!({"method": "POST", "host": "h", "path": "/p"});
        // The first request: held, answered 423; the approval and its commit carry its id.
        let first = [
            event(1, "request", "req_1", asked.clone()),
            event(2, "proposal", "req_1", json!({"summary": "Refund 1"})),
            event(
                3,
                "decision",
                "req_1",
                json!({"outcome": "held for approval"}),
            ),
            event(
                4,
                "decision",
                "req_1",
                json!({"outcome": "refused", "code": "approval_pending", "status": 423, "message": "needs approval"}),
            ),
            event(6, "commit", "req_1", json!({})),
            event(
                7,
                "response",
                "req_1",
                json!({"status": 200, "latency_ms": 41}),
            ),
        ];
        let row = Row::of("req_1", &first);
        assert_eq!(
            (
                row.decision.as_str(),
                row.status,
                row.latency_ms,
                row.code.as_str()
            ),
            ("held", Some(423), None, "approval_pending")
        );
        assert_eq!(row.message, "Refund 1");
        // The same call again: it joined the proposal, sent it, and got the upstream's answer.
        let retry = [
            event(8, "request", "req_2", asked.clone()),
            event(
                9,
                "decision",
                "req_2",
                json!({"outcome": "held for approval"}),
            ),
            event(10, "commit", "req_2", json!({})),
            event(
                11,
                "response",
                "req_2",
                json!({"status": 200, "latency_ms": 41}),
            ),
        ];
        let row = Row::of("req_2", &retry);
        assert_eq!(
            (row.decision.as_str(), row.status, row.latency_ms),
            ("held", Some(200), Some(41))
        );
        // Answered from the stored result.
        let stored = [
            event(12, "request", "req_3", asked),
            event(
                13,
                "decision",
                "req_3",
                json!({"outcome": "held for approval"}),
            ),
            event(14, "idempotent_replay", "req_3", json!({"status": 200})),
        ];
        assert_eq!(Row::of("req_3", &stored).status, Some(200));
    }
}
