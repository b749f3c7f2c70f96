//! Reading the log: stories, search, and the lines people read.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::payload::{status_text, Act, Asked, Response};
use super::{Audit, Event, Kind, Payload, RollbackOutcome};
use crate::store::{Index, StoreError};

/// The answers a story gives, before its events: who asked, who approved, what executed, what
/// changed, what was rolled back.
pub fn summary(events: &[Event]) -> Vec<String> {
    let mut answers = Answers::default();
    for e in events {
        answers.add(e);
    }
    answers.lines()
}

/// What a story's events answer, as they are read.
#[derive(Default)]
struct Answers {
    /// Which model answers asked for the calls.
    why: Vec<String>,
    /// The model turns told (model answers that asked for tool calls), in order.
    turns: Vec<Turn>,
    /// The requests that were model calls (their answers change nothing).
    model_calls: BTreeSet<String>,
    /// (model request, tool call id) → the calls that carried the tool call out.
    led_to: std::collections::BTreeMap<(String, String), Vec<String>>,
    asked: BTreeSet<String>,
    proposed: Vec<String>,
    approved: Vec<String>,
    executed: Vec<String>,
    /// What each call changed, by its request id.
    changed: Vec<(Option<String>, String)>,
    undone: Vec<String>,
}

impl Answers {
    fn add(&mut self, e: &Event) {
        let tool = e.tool.as_deref().unwrap_or("-");
        match e.body() {
            Payload::Request(r) => {
                if let Some(by) = &r.requested_by {
                    self.why.push(requested_by_text(by));
                    self.led(by, e.request_id.as_deref().unwrap_or("-"), tool);
                }
                if let (None, Some(agent)) = (&r.undoes, &e.agent) {
                    self.asked.insert(asker(agent, e, e.owner.as_deref()));
                }
                if let Some(response) = &r.response {
                    // A read told in one event.
                    let status = response.status_text();
                    let told = format!("{tool} answered {status}");
                    self.changed.push((e.request_id.clone(), told));
                }
            }
            Payload::Decision(_) => {
                if let (Some(agent), Some(owner)) = (&e.agent, &e.owner) {
                    self.asked.remove(&asker(agent, e, None));
                    self.asked.insert(asker(agent, e, Some(owner)));
                }
            }
            Payload::Proposal(p) => self
                .proposed
                .push(format!("{} (payload sha256 {})", p.summary, p.sha256)),
            Payload::Act(a) if e.kind == Kind::Approval => self.approved.push(format!(
                "{}{} at {}{}{}",
                a.by,
                a.via
                    .as_ref()
                    .map(|v| format!(" ({v})"))
                    .unwrap_or_default(),
                e.time,
                comment(&a, ": \"", "\""),
                a.leads_to().map(|n| format!(" ({n})")).unwrap_or_default()
            )),
            Payload::Commit(c) => self.executed.push(format!("{} {}", c.method, c.url)),
            Payload::Response(r) => self
                .changed
                .push((e.request_id.clone(), what_changed(tool, &r))),
            Payload::Rollback(r) if r.outcome == Some(RollbackOutcome::Undone) => {
                self.undone.push(format!(
                    "{} by {}: {} {} answered {} (via {})",
                    e.request_id.as_deref().unwrap_or("-"),
                    r.by,
                    r.method,
                    r.path,
                    status_text(r.status),
                    r.undo_request
                ))
            }
            Payload::Other(p) if e.kind == Kind::ModelUsage => {
                self.model_calls.extend(e.request_id.clone());
                self.turns.extend(Turn::of(e, p));
            }
            Payload::Other(_) if e.kind == Kind::GrantUsed => self.approved.push(format!(
                "{} by grant {} until {} ({})",
                e.text("granted_by"),
                e.text("grant"),
                e.text("until"),
                e.text("reason")
            )),
            _ => {}
        }
    }

    /// Notes which model tool call (`requested_by`, exact or by arguments or name) `request`
    /// carried out.
    fn led(&mut self, by: &Value, request: &str, tool: &str) {
        let how = by["match"].as_str().unwrap_or("?");
        let candidates = by["candidates"].as_array().into_iter().flatten();
        for c in std::iter::once(by).chain(candidates) {
            let (Some(m), Some(id)) = (c["model_request"].as_str(), c["tool_call_id"].as_str())
            else {
                continue;
            };
            self.led_to
                .entry((m.to_string(), id.to_string()))
                .or_default()
                .push(format!("{request} {tool} (matched {how})"));
        }
    }

    /// The model turns, each tool call it asked for with the calls it led to.
    fn turn_lines(&self) -> Vec<String> {
        self.turns
            .iter()
            .map(|t| {
                let calls: Vec<String> = (t.calls.iter())
                    .map(|(name, id)| {
                        let led = self.led_to.get(&(t.request.clone(), id.clone()));
                        let led = led.map_or("no call in this story".into(), |l| l.join(", "));
                        format!("{name} ({id}) -> {led}")
                    })
                    .collect();
                format!(
                    "model turn:    {} {} in answer {} asked for {}",
                    t.request,
                    t.model,
                    t.answer,
                    calls.join("; ")
                )
            })
            .collect()
    }

    fn lines(self) -> Vec<String> {
        let turns = self.turn_lines();
        // A model's answer changes nothing: what changed are the calls.
        let changed: Vec<String> = (self.changed.iter())
            .filter(|(r, _)| !r.as_ref().is_some_and(|r| self.model_calls.contains(r)))
            .map(|(_, told)| told.clone())
            .collect();
        // An agent listed bare and with its owner is listed once.
        let asked: Vec<String> = (self.asked.iter())
            .filter(|a| {
                a.contains(' ') || !self.asked.iter().any(|b| b.starts_with(&format!("{a} ")))
            })
            .cloned()
            .collect();
        let join = |v: Vec<String>| match v.is_empty() {
            true => "-".to_string(),
            false => v.join("; "),
        };
        let why = match self.why.is_empty() {
            true => Vec::new(),
            false => vec![format!("why (the model): {}", self.why.join("; "))],
        };
        turns
            .into_iter()
            .chain(why)
            .chain([
                format!("who asked:     {}", join(asked)),
                format!("what was proposed: {}", join(self.proposed)),
                format!("who approved:  {}", join(self.approved)),
                format!("what executed: {}", join(self.executed)),
                format!("what changed:  {}", join(changed)),
                format!("rolled back:   {}", join(self.undone)),
            ])
            .collect()
    }
}

/// A model answer that asked for tool calls (a `model_usage` event that recorded some).
struct Turn {
    request: String,
    model: String,
    answer: String,
    /// (tool name, tool call id) of each call asked for.
    calls: Vec<(String, String)>,
}

impl Turn {
    fn of(e: &Event, p: &Value) -> Option<Turn> {
        let calls: Vec<(String, String)> = (p["tool_calls"].as_array()?.iter())
            .map(|c| {
                let text = |f: &str| c[f].as_str().unwrap_or("?").to_string();
                (text("name"), text("id"))
            })
            .collect();
        (!calls.is_empty()).then(|| Turn {
            request: e.request_id.clone().unwrap_or_default(),
            model: p["model"].as_str().unwrap_or("a model").to_string(),
            answer: p["answer_id"].as_str().unwrap_or("?").to_string(),
            calls,
        })
    }
}

/// A call's `requested_by`, in words: "claude-x asked for refund_payment {…} in answer msg_1
/// (model request req_…; matched exact)".
fn requested_by_text(by: &Value) -> String {
    let one = |c: &Value| {
        format!(
            "{} asked for {} {} in answer {} (model request {}; matched {})",
            c["model"].as_str().unwrap_or("a model"),
            c["tool"].as_str().unwrap_or("?"),
            c["arguments"],
            c["answer_id"].as_str().unwrap_or("?"),
            c["model_request"].as_str().unwrap_or("?"),
            c["match"].as_str().unwrap_or("?"),
        )
    };
    match by["match"].as_str() {
        Some("none") => "no model request found (worth a reviewer's look)".to_string(),
        Some("ambiguous") => format!(
            "ambiguous: {}",
            by["candidates"]
                .as_array()
                .into_iter()
                .flatten()
                .map(one)
                .collect::<Vec<_>>()
                .join(" or ")
        ),
        _ => one(by),
    }
}

/// An act's comment between `open` and `close`; nothing when it has none.
fn comment(a: &Act, open: &str, close: &str) -> String {
    match a.comment.as_deref().unwrap_or("") {
        "" => String::new(),
        c => format!("{open}{c}{close}"),
    }
}

/// What a committed call changed, in the words of its answer: "stripe.refunds.create created
/// refund re_123 (status succeeded, amount 100)". Falls back to the status when the answer
/// names no object.
fn what_changed(tool: &str, response: &Response) -> String {
    let status = response.status_text();
    let answer = response.answer();
    if let Some(told) = graphql_changed(tool, &answer, &status) {
        return told;
    }
    let id = answer["id"]
        .as_str()
        .map(str::to_string)
        .or_else(|| answer["id"].as_u64().map(|n| n.to_string()))
        .or_else(|| answer["number"].as_u64().map(|n| format!("#{n}")));
    let (Some(id), true) = (id, response.status.is_some_and(|s| s < 400)) else {
        return format!("{tool} answered {status}");
    };
    let mut parts = tool.rsplit('.');
    let action = parts.next().unwrap_or("");
    let kind = parts.next().unwrap_or("object");
    let verb = match action {
        "create" | "send" => "created",
        "delete" => "deleted",
        "cancel" => "cancelled",
        _ => "changed",
    };
    let object = answer["object"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| kind.trim_end_matches('s').to_string());
    format!("{tool} {verb} {object} {id}{}", telling(&answer))
}

/// What a GraphQL mutation changed, in the words of its answer: "github.graphql.createIssue
/// created issue #42 (acme/widgets)" from `{"data": {"createIssue": {"issue": {...}}}}`, or the
/// error it answered with. `None` when the answer is not GraphQL's shape.
fn graphql_changed(tool: &str, answer: &Value, status: &str) -> Option<String> {
    let top = answer.as_object()?;
    if !top
        .keys()
        .all(|k| matches!(k.as_str(), "data" | "errors" | "extensions"))
    {
        return None;
    }
    let (field, result) = answer["data"].as_object()?.iter().next()?;
    if let (Value::Null, Some(error)) = (result, answer["errors"][0]["message"].as_str()) {
        return Some(format!(
            "{tool} answered {status} with the GraphQL error: {error}"
        ));
    }
    let split = field.find(|c: char| c.is_ascii_uppercase())?;
    let (verb, object) = field.split_at(split);
    let verbed = match verb {
        "create" => "created",
        "add" => "added",
        "delete" => "deleted",
        "remove" => "removed",
        "update" => "updated",
        "merge" => "merged",
        "close" => "closed",
        "reopen" => "reopened",
        _ => "changed",
    };
    let key = format!("{}{}", object[..1].to_ascii_lowercase(), &object[1..]);
    let inner = match &result[&key] {
        Value::Object(_) => &result[&key],
        _ => result.as_object()?.values().find(|v| v.is_object())?,
    };
    let id = inner["number"]
        .as_u64()
        .map(|n| format!("#{n}"))
        .or_else(|| inner["id"].as_str().map(str::to_string))?;
    let place = inner["repository"]["nameWithOwner"]
        .as_str()
        .map(|r| format!(" ({r})"))
        .unwrap_or_default();
    Some(format!("{tool} {verbed} {} {id}{place}", spaced(object)))
}

/// `PullRequest` as `pull request`.
fn spaced(camel: &str) -> String {
    let mut out = String::new();
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push(' ');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

/// The fields of an answer worth telling: a kept answer whole, a whole answer by its telling
/// fields only. Empty when there are none.
fn telling(answer: &Value) -> String {
    const TELLING: [&str; 8] = [
        "status", "state", "amount", "currency", "title", "email", "number", "name",
    ];
    let scalars: Vec<(&String, &Value)> = answer
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(k, v)| {
                    !matches!(k.as_str(), "id" | "object")
                        && (v.is_string() || v.is_number() || v.is_boolean())
                })
                .collect()
        })
        .unwrap_or_default();
    let told: Vec<String> = scalars
        .iter()
        .filter(|(k, _)| scalars.len() <= 6 || TELLING.contains(&k.as_str()))
        .take(6)
        .map(|(k, v)| match v.as_str() {
            Some(s) => format!("{k} {s}"),
            None => format!("{k} {v}"),
        })
        .collect();
    match told.is_empty() {
        true => String::new(),
        false => format!(" ({})", told.join(", ")),
    }
}

/// What a request event says: the call, and for a read told in one event its decision and
/// answer.
fn request_line(r: &Asked) -> String {
    let asked = format!("{} {} {}", r.method, r.host, r.path);
    let Some(response) = &r.response else {
        return asked;
    };
    let decision = r.decision.clone().unwrap_or_default();
    format!(
        "{asked}: {} (mode {}), upstream answered {} in {} ms",
        decision.outcome,
        decision.mode.as_deref().unwrap_or(""),
        response.status_text(),
        status_text(response.latency_ms)
    )
}

/// Who asked, as a story says it: "support-bot-staging for alice@example.com (owner ops@…)".
fn asker(agent: &str, e: &Event, owner: Option<&str>) -> String {
    let user = e
        .user
        .as_ref()
        .map(|u| format!(" for {u}"))
        .unwrap_or_default();
    match owner {
        Some(o) => format!("{agent}{user} (owner {o})"),
        None => format!("{agent}{user}"),
    }
}

/// A line of a story for people.
pub fn describe(e: &Event) -> String {
    let mut token = match &e.token {
        Some(t) => format!(" [token {t}]"),
        None => String::new(),
    };
    if let Some(u) = &e.user {
        token.push_str(&format!(" [for {u}]"));
    }
    format!(
        "{}  #{:<5} {:<17} {:<22} {:<28} {}{token}",
        e.time,
        e.seq,
        e.kind,
        e.agent.as_deref().unwrap_or("-"),
        e.tool.as_deref().unwrap_or("-"),
        what(e),
    )
}

/// What an event says, by its payload's type.
fn what(e: &Event) -> String {
    match e.body() {
        Payload::Request(r) => request_line(&r),
        Payload::Decision(d) if d.refused() => format!(
            "refused: {} ({})",
            d.code.unwrap_or_default(),
            d.message.unwrap_or_default()
        ),
        Payload::Decision(d) => format!("{} (mode {})", d.outcome, d.mode.unwrap_or_default()),
        Payload::Proposal(p) => format!(
            "proposed: {} — needs {} approval(s) from {}",
            p.summary,
            p.required,
            Value::from(p.groups)
        ),
        Payload::Act(a) => format!(
            "{} by {}{}{}{}",
            e.kind,
            a.by,
            a.via
                .as_ref()
                .map(|v| format!(" ({v})"))
                .unwrap_or_default(),
            comment(&a, ": ", ""),
            a.leads_to().map(|n| format!(" — {n}")).unwrap_or_default()
        ),
        Payload::Commit(c) => format!(
            "commit: sending {} {} (payload sha256 {})",
            c.method, c.url, c.sha256
        ),
        Payload::Response(r) => format!(
            "upstream answered {} in {} ms",
            r.status_text(),
            status_text(r.latency_ms)
        ),
        Payload::Rollback(r) => match r.outcome {
            Some(RollbackOutcome::Undone) => format!(
                "rolled back by {} via {} ({} {} answered {})",
                r.by,
                r.undo_request,
                r.method,
                r.path,
                status_text(r.status)
            ),
            _ => format!("rollback by {} {}: {}", r.by, e.text("outcome"), r.message),
        },
        Payload::Other(p) => other_line(e, p),
    }
}

/// The line of an event whose payload has no type of its own.
fn other_line(e: &Event, p: &Value) -> String {
    let s = |k: &str| e.text(k);
    match &e.kind {
        Kind::UpstreamError => format!("upstream failed: {} ({})", s("code"), s("message")),
        Kind::DryRun => "dry run: previewed, nothing sent".to_string(),
        Kind::IdempotentReplay => format!(
            "replayed the stored outcome of request {}",
            s("original_request")
        ),
        Kind::KillSwitch => format!(
            "kill switch {} {} by {}: {}",
            s("target"),
            s("state"),
            s("by"),
            s("reason")
        ),
        Kind::Replay => match p["status"].as_u64() {
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
        Kind::PolicyReload => format!("policies reloaded: {}", s("result")),
        Kind::Expiry => "expired without a decision".to_string(),
        Kind::OutcomeUnknown => s("note").to_string(),
        kind => principal_line(e).unwrap_or_else(|| kind.to_string()),
    }
}

/// The line of a grant's or an issued token's event.
fn principal_line(e: &Event) -> Option<String> {
    let s = |k: &str| e.text(k);
    let grant = || {
        format!(
            "grant {} by {} until {}: {}",
            s("grant"),
            s("granted_by"),
            s("until"),
            s("reason")
        )
    };
    Some(match e.kind {
        Kind::GrantAdded => format!("granted: {}", grant()),
        Kind::GrantUsed => format!("allowed by {}", grant()),
        Kind::GrantRevoked => format!("revoked by {}: {}", s("by"), grant()),
        Kind::GrantExpired => format!("expired: {}", grant()),
        Kind::TokenIssued => format!(
            "token {} issued by {} until {}",
            s("token"),
            s("by"),
            s("expires")
        ),
        Kind::TokenRevoked => format!("token {} revoked by {}", s("token"), s("by")),
        _ => return None,
    })
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
    /// The id of an issued token: every event of the calls made with it.
    pub token: Option<String>,
    /// The person calls acted for: every event of them.
    #[serde(default)]
    pub user: Option<String>,
    /// A model call's request id: the calls its answer led to.
    #[serde(default)]
    pub model_request: Option<String>,
    pub since: Option<String>,
    pub until: Option<String>,
}

impl Audit {
    /// Events matching every given filter, in order. Reads one index range (agent, tool,
    /// error code, kind, or time, whichever the filter names first), never the whole log
    /// unless the filter names nothing.
    pub fn search(&self, f: &Filter) -> Result<Vec<Event>, String> {
        let since = time_filter("since", &f.since)?;
        let until = time_filter("until", &f.until)?;
        let given = |field: &Option<String>| field.clone().filter(|x| !x.is_empty());
        let want = |field: &Option<String>, value: Option<&str>| match given(field) {
            None => true,
            Some(w) => value == Some(w.as_str()),
        };
        let keep = |e: &Event| {
            !(since.is_some_and(|s| e.unix_ms < s) || until.is_some_and(|u| e.unix_ms >= u))
                && want(&f.agent, e.agent.as_deref())
                && want(&f.tool, e.tool.as_deref())
                && want(&f.kind, Some(e.kind.as_str()))
                && want(&f.code, e.payload["code"].as_str())
                && want(&f.token, e.token.as_deref())
                && want(&f.user, e.user.as_deref())
                && given(&f.model_request).is_none_or(|m| {
                    e.payload["requested_by"]["model_request"].as_str() == Some(m.as_str())
                })
        };
        let indexed = [
            (Index::Token, given(&f.token)),
            (Index::User, given(&f.user)),
            (Index::ModelRequest, given(&f.model_request)),
            (Index::Agent, given(&f.agent)),
            (Index::Tool, given(&f.tool)),
            (Index::Code, given(&f.code)),
            (Index::Kind, given(&f.kind)),
        ]
        .into_iter()
        .find_map(|(index, value)| value.map(|v| (index, v)));
        let err = |e: StoreError| e.to_string();
        let mut out = Vec::new();
        match indexed {
            Some((index, value)) => {
                for seq in self.log.lookup(index, &value) {
                    self.push_if(seq.map_err(err)?, &keep, &mut out)?;
                }
            }
            None if since.is_some() || until.is_some() => {
                let mut seqs = self
                    .log
                    .in_time(since.unwrap_or(0), until.unwrap_or(u64::MAX))
                    .collect::<Result<Vec<u64>, _>>()
                    .map_err(err)?;
                seqs.sort_unstable();
                for seq in seqs {
                    self.push_if(seq, &keep, &mut out)?;
                }
            }
            None => {
                for e in self.events(0) {
                    out.push(e.map_err(err)?);
                }
            }
        }
        Ok(out)
    }

    fn push_if(
        &self,
        seq: u64,
        keep: &dyn Fn(&Event) -> bool,
        out: &mut Vec<Event>,
    ) -> Result<(), String> {
        if let Some(e) = self.event(seq).map_err(|e| e.to_string())? {
            if keep(&e) {
                out.push(e);
            }
        }
        Ok(())
    }

    /// The events that tell the story of a request, proposal or job id: the events naming it,
    /// then everything about the requests and proposals those events name. Reads only those
    /// events, through the indexes.
    pub fn story(&self, id: &str) -> Result<Vec<Event>, StoreError> {
        let mut requests = BTreeSet::new();
        let mut proposals = BTreeSet::new();
        let mut jobs = BTreeSet::new();
        for index in [Index::Request, Index::Proposal, Index::Job] {
            for seq in self.seqs(index, id)? {
                let Some(e) = self.event(seq)? else { continue };
                requests.extend(e.request_id.clone());
                proposals.extend(e.proposal.clone());
                if e.job.as_deref() == Some(id) {
                    jobs.insert(id.to_string());
                }
            }
        }
        // Proposals pull in every request that joined them, and those requests' events.
        let mut seqs = BTreeSet::new();
        for p in &proposals {
            for seq in self.seqs(Index::Proposal, p)? {
                if let Some(e) = self.event(seq)? {
                    requests.extend(e.request_id.clone());
                }
                seqs.insert(seq);
            }
        }
        for r in &requests {
            seqs.extend(self.seqs(Index::Request, r)?);
        }
        for j in &jobs {
            seqs.extend(self.seqs(Index::Job, j)?);
        }
        let mut out = Vec::with_capacity(seqs.len());
        for seq in &seqs {
            out.extend(self.event(*seq)?);
        }
        // The model turns that asked for the calls: the story begins with the model.
        let turns: BTreeSet<String> = out.iter().flat_map(model_requests).collect();
        let mut more = BTreeSet::new();
        for m in turns.iter().filter(|m| !requests.contains(*m)) {
            more.extend(
                self.seqs(Index::Request, m)?
                    .into_iter()
                    .filter(|s| !seqs.contains(s)),
            );
        }
        for seq in more {
            out.extend(self.event(seq)?);
        }
        out.sort_by_key(|e| e.seq);
        Ok(out)
    }

    fn seqs(&self, index: Index, value: &str) -> Result<Vec<u64>, StoreError> {
        self.log.lookup(index, value).collect()
    }
}

/// The model requests a request event's `requested_by` names (one, or each ambiguous
/// candidate's).
fn model_requests(e: &Event) -> Vec<String> {
    let by = match (e.kind == Kind::Request).then(|| &e.payload["requested_by"]) {
        Some(by) if by.is_object() => by,
        _ => return Vec::new(),
    };
    std::iter::once(by)
        .chain(by["candidates"].as_array().into_iter().flatten())
        .filter_map(|c| c["model_request"].as_str().map(str::to_string))
        .collect()
}

/// A filter's time (`since`, `until`): none when empty, else parsed or refused by name.
pub fn time_filter(name: &str, value: &Option<String>) -> Result<Option<u64>, String> {
    match value.as_deref().filter(|s| !s.is_empty()) {
        Some(s) => parse_time(s).map(Some).ok_or_else(|| {
            format!("{name} {s:?} is not a time (RFC 3339, YYYY-MM-DD or unix seconds)")
        }),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(kind: &str, payload: serde_json::Value) -> Event {
        Event {
            seq: 1,
            time: "2026-11-22T05:30:04Z".into(),
            unix_ms: 0,
            kind: Kind::parse(kind),
            request_id: Some("req_1".into()),
            job: None,
            proposal: Some("prop_1".into()),
            agent: Some("bot".into()),
            owner: Some("alice@example.com".into()),
            tool: Some("stripe.refunds.create".into()),
            tool_version: Some(1),
            token: None,
            user: None,
            payload,
            prev: String::new(),
            hash: String::new(),
        }
    }

    #[test]
    fn the_summary_says_what_was_proposed_and_what_the_approval_leads_to() {
        let events = [
            event(
                "proposal",
                json!({"summary": "Refund 100 of pi_1", "sha256": "abc"}),
            ),
            event(
                "approval",
                json!({"by": "carol", "comment": "customer called", "state": "approved", "send": "on_retry", "until": "2026-11-22T06:30:01Z"}),
            ),
        ];
        let lines = summary(&events).join("\n");
        assert!(
            lines.contains("what was proposed: Refund 100 of pi_1 (payload sha256 abc)"),
            "{lines}"
        );
        assert!(
            lines.contains("who approved:  carol at 2026-11-22T05:30:04Z: \"customer called\" (approved; sent when the agent sends the call again, until 2026-11-22T06:30:01Z)"),
            "{lines}"
        );
        assert!(describe(&events[1]).ends_with(
            "approval by carol: customer called — approved; sent when the agent sends the call again, until 2026-11-22T06:30:01Z"
        ));
        let now = event(
            "approval",
            json!({"by": "carol", "comment": "", "state": "approved", "send": "on_approval"}),
        );
        assert!(describe(&now).ends_with("approval by carol — approved; sent at once on approval"));
        // An approval that does not complete the proposal leads nowhere yet.
        let first = event("approval", json!({"by": "carol", "state": "pending"}));
        assert!(describe(&first).ends_with("approval by carol"));
    }

    fn answered(body: serde_json::Value) -> Response {
        Response {
            status: Some(200),
            body: Some(json!({ "json": body })),
            ..Response::default()
        }
    }

    #[test]
    fn a_graphql_mutation_is_told_by_its_field_and_answer() {
        let tool = "github.graphql.createIssue";
        let created = answered(json!({"data": {"createIssue": {"issue": {
            "number": 42, "repository": {"nameWithOwner": "acme/widgets"}}}}}));
        assert_eq!(
            what_changed(tool, &created),
            "github.graphql.createIssue created issue #42 (acme/widgets)"
        );
        let merged =
            answered(json!({"data": {"mergePullRequest": {"pullRequest": {"id": "PR_1"}}}}));
        assert_eq!(
            what_changed("gh.merge", &merged),
            "gh.merge merged pull request PR_1"
        );
        let failed = answered(
            json!({"data": {"createIssue": null}, "errors": [{"message": "Could not resolve"}]}),
        );
        assert!(what_changed(tool, &failed).ends_with("with the GraphQL error: Could not resolve"));
        // Nothing to name: the status, as for any answer.
        let bare = answered(json!({"data": {"deleteRef": {"clientMutationId": null}}}));
        assert!(what_changed("gh.deleteRef", &bare).starts_with("gh.deleteRef answered 200"));
        // A REST answer with a data key among others is not read as GraphQL.
        let rest = answered(json!({"id": "re_1", "data": {"x": {"y": {"id": "z"}}}}));
        assert!(what_changed("stripe.refunds.create", &rest).contains("re_1"));
    }
}
