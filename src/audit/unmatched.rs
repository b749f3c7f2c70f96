//! The calls refused because no tool contract matched them, read back for `toolgate contracts
//! suggest` and the reviewers' "Refused: no contract" page: each decision event of code
//! `policy_violation` whose message starts with [`NO_CONTRACT`], joined with its request's
//! event. What leaves here are shapes (types and keys), never a body's or a query's values.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::payload::{Asked, Decision};
use super::{Audit, Filter, Kind};
use crate::model::{Unmatched, NO_CONTRACT};

/// The most refused calls one read returns (the newest).
pub const UNMATCHED_MAX: usize = 10_000;

/// Refused calls, oldest first, and whether older ones were left out.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct UnmatchedCalls {
    pub calls: Vec<Unmatched>,
    pub truncated: bool,
}

impl Audit {
    /// The calls refused for want of a contract since a time and by an agent (both optional),
    /// the newest `max` of them. Reads the error code's index, and each call's own events.
    pub fn unmatched(
        &self,
        since: Option<String>,
        agent: Option<String>,
        max: usize,
    ) -> Result<UnmatchedCalls, String> {
        let f = Filter {
            agent,
            code: Some("policy_violation".into()),
            kind: Some(Kind::Decision.as_str().to_string()),
            since,
            ..Filter::default()
        };
        let refused: Vec<_> = self
            .search(&f)?
            .into_iter()
            .filter(|e| {
                e.payload["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with(NO_CONTRACT))
            })
            .collect();
        let truncated = refused.len() > max;
        let mut calls = Vec::new();
        for e in refused.iter().skip(refused.len().saturating_sub(max)) {
            let Some(id) = e.request_id.as_deref() else {
                continue;
            };
            let events = self.request_events(id).map_err(|e| e.to_string())?;
            let Some(asked) = events.iter().find(|r| r.kind == Kind::Request) else {
                continue;
            };
            let asked: Asked = asked.read();
            let decision: Decision = e.read();
            calls.push(call_of(
                e.agent.clone().unwrap_or_default(),
                e.unix_ms,
                id,
                asked,
                decision,
            ));
        }
        Ok(UnmatchedCalls { calls, truncated })
    }
}

fn call_of(agent: String, unix_ms: u64, id: &str, asked: Asked, decision: Decision) -> Unmatched {
    let shape = decision.body_shape.unwrap_or(Value::Null);
    let query_shape = match asked.query.as_str() {
        "" => None,
        q => crate::policy::contract::decode_form(q.as_bytes())
            .ok()
            .map(|v| crate::base::shape::of(&v)),
    };
    Unmatched {
        request_id: id.to_string(),
        unix_ms,
        agent,
        method: asked.method,
        host: asked.host,
        port: asked.port,
        path: asked.path,
        body_format: shape["format"].as_str().map(str::to_string),
        body_shape: Some(shape["shape"].clone()).filter(|s| !s.is_null()),
        query_shape,
    }
}
