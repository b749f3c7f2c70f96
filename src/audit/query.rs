//! Reading the log: stories, search, and the lines people read.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::{Audit, Event};
use crate::store::{Index, StoreError};

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
        if e.kind == "request" && !p["response"].is_null() {
            // A read told in one event.
            changed.push(format!(
                "{} answered {}",
                e.tool.as_deref().unwrap_or("-"),
                p["response"]["status"]
            ));
        }
        match e.kind.as_str() {
            "decision" => {
                if let (Some(agent), Some(owner)) = (&e.agent, &e.owner) {
                    asked.remove(agent);
                    asked.insert(format!("{agent} (owner {owner})"));
                }
            }
            "approval" => approved.push(match s("comment") {
                c if c.is_empty() => format!("{} at {}", s("by"), e.time),
                c => format!("{} at {} ({c:?})", s("by"), e.time),
            }),
            "commit" => executed.push(format!("{} {}", s("method"), s("url"))),
            "response" => changed.push(what_changed(e.tool.as_deref().unwrap_or("-"), p)),
            "grant.used" => approved.push(format!(
                "{} by grant {} until {} ({})",
                s("granted_by"),
                s("grant"),
                s("until"),
                s("reason")
            )),
            "rollback" if s("outcome") == "undone" => undone.push(format!(
                "{} by {}: {} {} answered {} (via {})",
                e.request_id.as_deref().unwrap_or("-"),
                s("by"),
                s("method"),
                s("path"),
                p["status"],
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

/// What a committed call changed, in the words of its answer: "stripe.refunds.create created
/// refund re_123 (status succeeded, amount 100)". Falls back to the status when the answer
/// names no object.
fn what_changed(tool: &str, response: &serde_json::Value) -> String {
    let status = &response["status"];
    let parsed;
    let answer = match &response["body"]["json"] {
        serde_json::Value::Null => {
            parsed = response["body"]["text"]
                .as_str()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(t).ok())
                .unwrap_or_default();
            &parsed
        }
        json => json,
    };
    let id = answer["id"]
        .as_str()
        .map(str::to_string)
        .or_else(|| answer["id"].as_u64().map(|n| n.to_string()))
        .or_else(|| answer["number"].as_u64().map(|n| format!("#{n}")));
    let (Some(id), true) = (id, status.as_u64().is_some_and(|s| s < 400)) else {
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
    const TELLING: [&str; 8] = [
        "status", "state", "amount", "currency", "title", "email", "number", "name",
    ];
    let scalars: Vec<(&String, &serde_json::Value)> = answer
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
    // A kept answer is told whole; a whole answer by its telling fields only.
    let told: Vec<String> = scalars
        .iter()
        .filter(|(k, _)| scalars.len() <= 6 || TELLING.contains(&k.as_str()))
        .take(6)
        .map(|(k, v)| match v.as_str() {
            Some(s) => format!("{k} {s}"),
            None => format!("{k} {v}"),
        })
        .collect();
    let details = match told.is_empty() {
        true => String::new(),
        false => format!(" ({})", told.join(", ")),
    };
    format!("{tool} {verb} {object} {id}{details}")
}

/// What a request event says: the call, and for a read told in one event its decision and
/// answer.
fn request_line(p: &serde_json::Value) -> String {
    let s = |k: &str| p[k].as_str().unwrap_or("").to_string();
    let asked = format!("{} {} {}", s("method"), s("host"), s("path"));
    if p["response"].is_null() {
        return asked;
    }
    format!(
        "{asked}: {} (mode {}), upstream answered {} in {} ms",
        p["decision"]["outcome"].as_str().unwrap_or(""),
        p["decision"]["mode"].as_str().unwrap_or(""),
        p["response"]["status"],
        p["response"]["latency_ms"]
    )
}

/// A line of a story for people.
pub fn describe(e: &Event) -> String {
    let p = &e.payload;
    let s = |k: &str| p[k].as_str().unwrap_or("").to_string();
    let what = match e.kind.as_str() {
        "request" => request_line(p),
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
        other => principal_line(other, p).unwrap_or_else(|| other.to_string()),
    };
    let token = match &e.token {
        Some(t) => format!(" [token {t}]"),
        None => String::new(),
    };
    format!(
        "{}  #{:<5} {:<17} {:<22} {:<28} {what}{token}",
        e.time,
        e.seq,
        e.kind,
        e.agent.as_deref().unwrap_or("-"),
        e.tool.as_deref().unwrap_or("-"),
    )
}

/// The line of a grant's or an issued token's event.
fn principal_line(kind: &str, p: &serde_json::Value) -> Option<String> {
    let s = |k: &str| p[k].as_str().unwrap_or("").to_string();
    let grant = || {
        format!(
            "grant {} by {} until {}: {}",
            s("grant"),
            s("granted_by"),
            s("until"),
            s("reason")
        )
    };
    Some(match kind {
        "grant.added" => format!("granted: {}", grant()),
        "grant.used" => format!("allowed by {}", grant()),
        "grant.revoked" => format!("revoked by {}: {}", s("by"), grant()),
        "grant.expired" => format!("expired: {}", grant()),
        "token.issued" => format!(
            "token {} issued by {} until {}",
            s("token"),
            s("by"),
            s("expires")
        ),
        "token.revoked" => format!("token {} revoked by {}", s("token"), s("by")),
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
        };
        let indexed = [
            (Index::Token, given(&f.token)),
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
        for seq in seqs {
            out.extend(self.event(seq)?);
        }
        Ok(out)
    }

    fn seqs(&self, index: Index, value: &str) -> Result<Vec<u64>, StoreError> {
        self.log.lookup(index, value).collect()
    }
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
