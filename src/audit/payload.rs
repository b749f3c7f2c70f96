//! The payloads of the main event families as typed structs: what the writers build and the
//! readers (stories, search lines, the traffic pages, replay) read. The stored form is the
//! JSON object they serialise to, key for key what the writers wrote before they were typed
//! (keys sort as they always did: a payload is a `serde_json::Value` map), so that stored
//! events and their hashes do not change.
//!
//! Reading is lenient: a field an older event lacks is its default, a field this build does not
//! name is ignored, and a payload that does not read at all reads as the default (an event is
//! always told, never refused).

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use super::{Event, Kind};

/// `request`: what was asked; for a read told in one event, with its decision and answer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Asked {
    pub method: String,
    pub host: String,
    pub port: u16,
    pub path: String,
    pub query: String,
    pub peer: String,
    /// The call this request undoes (a rollback's request).
    pub undoes: Option<String>,
    /// The approver who asked for the undo.
    pub asked_by: Option<String>,
    #[serde(skip_serializing_if = "Value::is_null")]
    pub headers: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision: Option<Decision>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response: Option<Response>,
    /// The client went away before the call was told.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub client_gone: bool,
    /// Which model answer asked for the call (`match`: exact, arguments, name, ambiguous or
    /// none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requested_by: Option<Value>,
    /// The call's trace (W3C trace id), when traces are on: the link from the story to it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
}

/// `decision`: whether the call goes on (also folded into a read's `request`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Decision {
    /// `allowed`, `dry_run`, `held for approval`, `refused`, `batch`, ...
    pub outcome: String,
    /// The tool's mode (`auto`, `approve`, `dry_run`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// A refusal's code, status and message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The proposal a held call joined.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proposal: Option<String>,
    /// Where a refusal happened, when not in the call's own request (`commit on approval`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub at: Option<String>,
    /// The body as recorded, for a call that goes on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
    /// For a call no contract matched, the shape of its body, never its values:
    /// `{"format": "json" | "form", "shape": <types and keys>}` ([`crate::base::shape`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_shape: Option<Value>,
}

impl Decision {
    /// Whether the call was refused.
    pub fn refused(&self) -> bool {
        self.outcome == "refused"
    }
}

/// `proposal`: a call held for approval.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Proposed {
    pub summary: String,
    pub required: u32,
    pub groups: Vec<String>,
    pub method: String,
    pub url: String,
    pub sha256: String,
    pub body: Value,
    pub risk: String,
}

/// `commit`: a call with side effects about to be sent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Commit {
    pub method: String,
    pub url: String,
    pub sha256: String,
    /// The body as recorded (a call sent at once).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
    /// The approvals that let it through (an approved proposal).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approvals: Option<Value>,
}

/// `response`: the upstream's answer (also folded into a read's `request`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Response {
    /// None when the exchange did not end.
    pub status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub headers: Option<Value>,
    /// The body as recorded (`{"json": ..}`, `{"text": .., "bytes": ..}`, `{"streamed": true}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u64>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub client_gone: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub unfinished: bool,
}

impl Response {
    /// The status as the lines people read show it (`null` when the exchange did not end).
    pub fn status_text(&self) -> String {
        status_text(self.status)
    }

    /// The answer's JSON: recorded as JSON, or as text that parses.
    pub fn answer(&self) -> Value {
        let body = self.body.as_ref().unwrap_or(&Value::Null);
        match &body["json"] {
            Value::Null => body["text"]
                .as_str()
                .and_then(|t| serde_json::from_str(t).ok())
                .unwrap_or_default(),
            json => json.clone(),
        }
    }
}

/// What became of an undo, as the API, the CLI, the page and the `rollback` event say it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RollbackOutcome {
    /// The undo was sent and the upstream took it.
    Undone,
    /// The undo waits for more approvers.
    AwaitingApproval,
    /// No committed call by that id.
    NotFound,
    /// Undone before (or an undo is under way).
    AlreadyUndone,
    /// The call changed nothing, or is itself an undo, or its tool declares why not.
    NotUndoable,
    /// The undo was sent and the upstream refused it.
    Failed,
    /// toolgate did not send it.
    Refused,
}

impl RollbackOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            RollbackOutcome::Undone => "undone",
            RollbackOutcome::AwaitingApproval => "awaiting_approval",
            RollbackOutcome::NotFound => "not_found",
            RollbackOutcome::AlreadyUndone => "already_undone",
            RollbackOutcome::NotUndoable => "not_undoable",
            RollbackOutcome::Failed => "failed",
            RollbackOutcome::Refused => "refused",
        }
    }
}

impl std::fmt::Display for RollbackOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `rollback`: an undo of the event's call.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Rollback {
    pub by: String,
    /// None when a newer version wrote an outcome this build does not know.
    #[serde(deserialize_with = "known")]
    pub outcome: Option<RollbackOutcome>,
    pub undo_request: String,
    pub method: String,
    pub path: String,
    pub status: Option<u16>,
    pub message: String,
}

/// `approval`, `denial`, `revocation`, `cancellation`: an act on a proposal.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Act {
    pub by: String,
    /// The approver's comment (a cancellation by toolgate says `reason` instead).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The proposal's state after the act.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approvals: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub required: Option<u32>,
    /// When an approved call is sent: `on_approval` or `on_retry`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub send: Option<String>,
    /// Until when an approved call may be sent again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    /// How the approver signed in, when through an identity provider: "signed in via NAME".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
}

impl Act {
    /// What an approval that completed its proposal leads to, in plain words: sent at once, or
    /// when the agent sends the call again, until the proposal expires.
    pub fn leads_to(&self) -> Option<String> {
        if self.state.as_deref() != Some("approved") {
            return None;
        }
        Some(match self.send.as_deref() {
            Some("on_approval") => "approved; sent at once on approval".to_string(),
            _ => format!(
                "approved; sent when the agent sends the call again, until {}",
                self.until.as_deref().unwrap_or("it expires")
            ),
        })
    }
}

/// An event's payload read by its kind: the families above typed, the rest as stored.
#[derive(Debug, Clone, PartialEq)]
pub enum Payload<'a> {
    /// Boxed: the largest by far.
    Request(Box<Asked>),
    Decision(Decision),
    Proposal(Proposed),
    Commit(Commit),
    Response(Response),
    Rollback(Rollback),
    Act(Act),
    Other(&'a Value),
}

impl Payload<'_> {
    /// Whether it holds the upstream's answer: a response, or a read told in one event.
    pub fn answers(&self) -> bool {
        match self {
            Payload::Response(_) => true,
            Payload::Request(r) => r.response.is_some(),
            _ => false,
        }
    }
}

impl Event {
    /// The payload, read as its kind's type.
    pub fn body(&self) -> Payload<'_> {
        match &self.kind {
            Kind::Request => Payload::Request(Box::new(self.read())),
            Kind::Decision => Payload::Decision(self.read()),
            Kind::Proposal => Payload::Proposal(self.read()),
            Kind::Commit => Payload::Commit(self.read()),
            Kind::Response => Payload::Response(self.read()),
            Kind::Rollback => Payload::Rollback(self.read()),
            k if k.is_approval_act() => Payload::Act(self.read()),
            _ => Payload::Other(&self.payload),
        }
    }

    /// The payload as `T`; the default when it does not read as one.
    pub fn read<T: DeserializeOwned + Default>(&self) -> T {
        T::deserialize(&self.payload).unwrap_or_default()
    }

    /// A text field of a payload no struct describes (empty when absent).
    pub fn text(&self, field: &str) -> &str {
        self.payload[field].as_str().unwrap_or("")
    }
}

/// A number as the lines people read show it (`null` when absent, as the stored JSON says).
pub fn status_text<T: std::fmt::Display>(n: Option<T>) -> String {
    n.map_or_else(|| "null".to_string(), |n| n.to_string())
}

/// A payload as it is stored.
pub fn to_value(payload: &impl Serialize) -> Value {
    serde_json::to_value(payload).unwrap_or_default()
}

/// A payload as it is stored, its large fields (bodies, headers: `take` takes them out) moved in
/// rather than copied through the serializer: what the request path records on every call.
fn moved_in<T: Serialize>(
    mut payload: T,
    take: impl FnOnce(&mut T) -> Vec<(&'static str, Value)>,
) -> Value {
    let fields = take(&mut payload);
    let mut v = to_value(&payload);
    if let Value::Object(m) = &mut v {
        for (key, value) in fields.into_iter().filter(|(_, v)| !v.is_null()) {
            m.insert(key.to_string(), value);
        }
    }
    v
}

impl Asked {
    /// As stored (see [`moved_in`]).
    pub fn into_value(self) -> Value {
        moved_in(self, |a| vec![("headers", std::mem::take(&mut a.headers))])
    }
}

impl Decision {
    /// As stored (see [`moved_in`]).
    pub fn into_value(self) -> Value {
        moved_in(self, |d| vec![("body", d.body.take().unwrap_or_default())])
    }
}

impl Commit {
    /// As stored (see [`moved_in`]).
    pub fn into_value(self) -> Value {
        moved_in(self, |c| {
            vec![
                ("body", c.body.take().unwrap_or_default()),
                ("approvals", c.approvals.take().unwrap_or_default()),
            ]
        })
    }
}

impl Response {
    /// As stored (see [`moved_in`]).
    pub fn into_value(self) -> Value {
        moved_in(self, |r| {
            vec![
                ("headers", r.headers.take().unwrap_or_default()),
                ("body", r.body.take().unwrap_or_default()),
            ]
        })
    }
}

/// A value this build may not know (written by a newer version): None then, never an error.
fn known<'de, D: Deserializer<'de>, T: DeserializeOwned>(d: D) -> Result<Option<T>, D::Error> {
    Ok(T::deserialize(Value::deserialize(d)?).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Each family as its writer builds it serialises to the bytes the untyped writer wrote.
    #[test]
    fn the_typed_payloads_serialise_as_the_untyped_ones_did() {
        let same = |typed: Value, untyped: Value| {
            assert_eq!(
                serde_json::to_vec(&typed).unwrap(),
                serde_json::to_vec(&untyped).unwrap()
            )
        };
        let undoes: Option<&str> = None;
        let mut asked = json!({"method": "GET", "host": "api.x", "port": 443, "path": "/v1/a",
            "query": "", "peer": "127.0.0.1:1", "undoes": undoes, "asked_by": undoes});
        asked["headers"] = json!({"accept": "*/*"});
        let typed = Asked {
            method: "GET".into(),
            host: "api.x".into(),
            port: 443,
            path: "/v1/a".into(),
            peer: "127.0.0.1:1".into(),
            headers: json!({"accept": "*/*"}),
            ..Asked::default()
        };
        same(to_value(&typed), asked);
        same(
            to_value(&Decision {
                outcome: "held for approval".into(),
                mode: Some("approve".into()),
                proposal: Some("prop_1".into()),
                ..Decision::default()
            }),
            json!({"outcome": "held for approval", "mode": "approve", "proposal": "prop_1"}),
        );
        same(
            to_value(&Response {
                status: Some(200),
                headers: Some(json!({})),
                body: Some(json!({"text": "{}", "bytes": 2})),
                latency_ms: Some(4),
                ..Response::default()
            }),
            json!({"status": 200, "headers": {}, "body": {"text": "{}", "bytes": 2}, "latency_ms": 4}),
        );
        same(to_value(&Response::default()), json!({"status": null}));
        same(
            to_value(&Rollback {
                by: "carol".into(),
                outcome: Some(RollbackOutcome::AlreadyUndone),
                undo_request: "req_2".into(),
                method: "DELETE".into(),
                path: "/v1/x".into(),
                status: None,
                message: "m".into(),
            }),
            json!({"by": "carol", "outcome": "already_undone", "undo_request": "req_2",
                "method": "DELETE", "path": "/v1/x", "status": null, "message": "m"}),
        );
        same(
            to_value(&Act {
                by: "toolgate".into(),
                reason: Some("why".into()),
                ..Act::default()
            }),
            json!({"by": "toolgate", "reason": "why"}),
        );
    }

    #[test]
    fn a_payload_written_by_a_newer_version_still_reads() {
        let r: Rollback =
            serde_json::from_value(json!({"by": "c", "outcome": "queued", "x": 1})).unwrap();
        assert_eq!((r.by.as_str(), r.outcome), ("c", None));
        for o in [
            RollbackOutcome::Undone,
            RollbackOutcome::AwaitingApproval,
            RollbackOutcome::NotFound,
            RollbackOutcome::AlreadyUndone,
            RollbackOutcome::NotUndoable,
            RollbackOutcome::Failed,
            RollbackOutcome::Refused,
        ] {
            assert_eq!(to_value(&o), json!(o.as_str()));
        }
    }

    #[test]
    fn moving_large_fields_in_stores_the_same_bytes() {
        let asked = Asked {
            method: "POST".into(),
            host: "api.stripe.com".into(),
            port: 443,
            path: "/v1/refunds".into(),
            headers: json!({"content-type": "application/json"}),
            ..Asked::default()
        };
        let decision = Decision {
            outcome: "allowed".into(),
            mode: Some("auto".into()),
            body: Some(json!({"json": {"amount": 500}, "bytes": 14})),
            ..Decision::default()
        };
        let response = Response {
            status: Some(200),
            headers: Some(json!({"content-type": "application/json"})),
            body: Some(json!({"streamed": true})),
            latency_ms: Some(3),
            ..Response::default()
        };
        let commit = Commit {
            method: "POST".into(),
            url: "https://api.stripe.com/v1/refunds".into(),
            sha256: "ab".into(),
            body: Some(json!({"json": {"amount": 500}, "bytes": 14})),
            approvals: Some(json!([{"by": "carol@example.com"}])),
        };
        let same = |a: Value, b: Value| assert_eq!(a.to_string(), b.to_string());
        same(commit.clone().into_value(), to_value(&commit));
        same(asked.clone().into_value(), to_value(&asked));
        same(decision.clone().into_value(), to_value(&decision));
        same(response.clone().into_value(), to_value(&response));
        let bare = Decision {
            outcome: "refused".into(),
            ..Decision::default()
        };
        same(bare.clone().into_value(), to_value(&bare));
    }
}
