//! Records that are stored or shown: proposals and the request they hold, upstream outcomes,
//! idempotency records, kill switches and job claims. Their serde form is the stored format.

use base64::Engine;
use http::{header, HeaderName, Response};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::base::body::ProxyBody;
use crate::base::{authority, strip_hop_by_hop};

/// An upstream answer, kept so that a duplicate call gets it back instead of executing again.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Outcome {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// Base64 of the body.
    pub body: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdemState {
    /// Marked before the request left; no outcome stored yet. Found after a crash, it means the
    /// outcome is unknown and the call is never sent again.
    InFlight,
    Done,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IdemRecord {
    pub state: IdemState,
    pub payload_sha256: String,
    pub created_unix: u64,
    pub request_id: String,
    pub outcome: Option<Outcome>,
}

/// A short-lived token an approver issued for an agent (DESIGN section 10). Only the token's
/// sha256 is stored; the token itself is shown once, when issued.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentToken {
    pub id: String,
    pub agent: String,
    /// Calls made with it belong to this job.
    #[serde(default)]
    pub job: Option<String>,
    pub sha256: String,
    pub issued_by: String,
    pub issued_unix: u64,
    pub expires_unix: u64,
    #[serde(default)]
    pub revoked: bool,
    /// The person every call made with it acts for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

impl AgentToken {
    /// Whether it lets its agent in at `now`.
    pub fn live(&self, now: u64) -> bool {
        !self.revoked && now < self.expires_unix
    }
}

/// A time-bound grant (DESIGN section 10): an approver in group `admin` lends an agent one
/// tool it does not hold until `until_unix`; every other check still applies to its calls.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Grant {
    pub id: String,
    pub agent: String,
    pub tool: String,
    pub granted_by: String,
    pub reason: String,
    pub created_unix: u64,
    pub until_unix: u64,
    /// How it ended (revoked, or its expiry recorded); None while it has not.
    #[serde(default)]
    pub ended: Option<GrantEnd>,
}

/// The end of a grant: `revoked` by an approver, or `expired` (by `toolgate`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct GrantEnd {
    pub how: String,
    pub by: String,
    pub at_unix: u64,
}

impl Grant {
    /// Whether it lets its agent use its tool at `now`.
    pub fn live(&self, now: u64) -> bool {
        self.ended.is_none() && now < self.until_unix
    }
}

/// Which agent a job id belongs to.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobClaim {
    pub agent: String,
    pub owner: String,
    pub since_unix: u64,
}

impl JobClaim {
    /// Who holds the job against `agent` (of `owner`): None if it may use it (its own claim,
    /// or one by an agent of the same owner), else the holding agent.
    pub fn holder_against(self, agent: &str, owner: &str) -> Option<String> {
        if self.agent == agent || (!owner.is_empty() && self.owner == owner) {
            None
        } else {
            Some(self.agent)
        }
    }
}

/// A thrown kill switch.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KillSwitch {
    pub by: String,
    pub reason: String,
    pub at_unix: u64,
}

/// What kind of thing a kill switch stops: a tool or an agent (`tool` / `agent` in stored keys
/// and on the admin pages' paths).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KillScope {
    Tool,
    Agent,
}

impl KillScope {
    /// The scope named `name` (`tool` or `agent`).
    pub fn parse(name: &str) -> Option<KillScope> {
        match name {
            "tool" => Some(KillScope::Tool),
            "agent" => Some(KillScope::Agent),
            _ => None,
        }
    }

    /// `tool` or `agent`.
    pub fn as_str(self) -> &'static str {
        match self {
            KillScope::Tool => "tool",
            KillScope::Agent => "agent",
        }
    }

    /// The admin API's collection: `tools` or `agents`.
    pub fn plural(self) -> &'static str {
        match self {
            KillScope::Tool => "tools",
            KillScope::Agent => "agents",
        }
    }

    /// The field that names an item of the admin API's collection: `name` or `id`.
    pub fn key(self) -> &'static str {
        match self {
            KillScope::Tool => "name",
            KillScope::Agent => "id",
        }
    }
}

/// What a kill switch stops: every call of a tool, or every call of an agent. Stored and shown
/// as `tool:NAME` / `agent:ID`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KillTarget {
    Tool(String),
    Agent(String),
}

impl KillTarget {
    /// Reads `tool:NAME` or `agent:ID`.
    pub fn parse(key: &str) -> Option<KillTarget> {
        let (scope, name) = key.split_once(':')?;
        KillTarget::of(KillScope::parse(scope)?, name)
    }

    /// The target of `scope` named `name`; none for an empty name.
    pub fn of(scope: KillScope, name: &str) -> Option<KillTarget> {
        let name = Some(name.to_string()).filter(|n| !n.is_empty())?;
        Some(match scope {
            KillScope::Tool => KillTarget::Tool(name),
            KillScope::Agent => KillTarget::Agent(name),
        })
    }

    pub fn scope(&self) -> KillScope {
        match self {
            KillTarget::Tool(_) => KillScope::Tool,
            KillTarget::Agent(_) => KillScope::Agent,
        }
    }

    pub fn name(&self) -> &str {
        match self {
            KillTarget::Tool(n) | KillTarget::Agent(n) => n,
        }
    }
}

impl std::fmt::Display for KillTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.scope().as_str(), self.name())
    }
}

/// A signed-in approver's session on the admin pages (stored under a hash of its cookie).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Session {
    /// The approver's id, or the reviewer's.
    pub approver: String,
    /// A reviewer's session: reads, never acts.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reviewer: bool,
    pub csrf: String,
    pub expires_unix: u64,
    /// Groups the sign-in granted beside the approver's own (an identity provider's groups
    /// through its `group_map`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// Signed in through an identity provider: "signed in via NAME".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Pending,
    Approved,
    Committing,
    Committed,
    Failed,
    Denied,
    Expired,
    Cancelled,
    Revoked,
    OutcomeUnknown,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Approved => "approved",
            State::Committing => "committing",
            State::Committed => "committed",
            State::Failed => "failed",
            State::Denied => "denied",
            State::Expired => "expired",
            State::Cancelled => "cancelled",
            State::Revoked => "revoked",
            State::OutcomeUnknown => "outcome_unknown",
        }
    }

    pub fn parse(s: &str) -> Option<State> {
        [
            State::Pending,
            State::Approved,
            State::Committing,
            State::Committed,
            State::Failed,
            State::Denied,
            State::Expired,
            State::Cancelled,
            State::Revoked,
            State::OutcomeUnknown,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
    }

    /// Still waiting for people or for the agent to claim it.
    pub fn is_open(self) -> bool {
        matches!(self, State::Pending | State::Approved)
    }
}

/// Who decided, when, and what they said.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Decision {
    pub by: String,
    pub at_unix: u64,
    #[serde(default)]
    pub comment: String,
}

/// The exact request that will be sent, secrets excluded (the credential is injected at commit).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredRequest {
    pub method: String,
    pub host: String,
    pub port: u16,
    pub path_and_query: String,
    pub headers: Vec<(String, String)>,
    /// Base64 of the body bytes.
    pub body: String,
    pub sha256: String,
    /// The headers exactly as they will be sent, sealed at rest (`headers` shows them redacted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed_headers: Option<String>,
}

impl StoredRequest {
    pub fn url(&self) -> String {
        format!(
            "https://{}{}",
            authority(&self.host, self.port),
            self.path_and_query
        )
    }

    pub fn body_bytes(&self) -> Vec<u8> {
        base64::engine::general_purpose::STANDARD
            .decode(&self.body)
            .unwrap_or_default()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Proposal {
    pub id: String,
    pub state: State,
    /// How many times the stored record has changed: every change is a compare-and-set on the
    /// state and this version read before it (`ProposalStore::proposal_swap`), so of two
    /// replicas deciding at once one wins and the other reads again.
    #[serde(default)]
    pub version: u64,
    pub tool: String,
    pub tool_version: u32,
    pub risk: String,
    pub agent: String,
    pub owner: String,
    pub environment: String,
    pub job: String,
    pub request_id: String,
    pub summary: String,
    pub request: StoredRequest,
    /// sha256 of agent, tool and payload: the same call sent again joins this proposal.
    pub identity: String,
    pub created_unix: u64,
    pub expires_unix: u64,
    pub required: u32,
    pub groups: Vec<String>,
    pub allow_self_approval: bool,
    #[serde(default)]
    pub approvals: Vec<Decision>,
    /// The denial, revocation or cancellation.
    #[serde(default)]
    pub decision: Option<Decision>,
    #[serde(default)]
    pub note: Option<String>,
    #[serde(default)]
    pub outcome: Option<Outcome>,
    #[serde(default)]
    pub committed_unix: Option<u64>,
    /// When a replica began sending it (state `committing`).
    #[serde(default)]
    pub committing_unix: Option<u64>,
    /// Which replica is sending it, on a shared store (`committing`): once that replica stops
    /// showing it is alive, the commit is abandoned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub committing_by: Option<String>,
    /// The id of the issued token the call came in with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// The person the call acts for, and their groups as the call named them (the commit
    /// judges the call for them again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub user_groups: Vec<String>,
    /// Which model answer asked for the call (the join of its request event).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_by: Option<Value>,
}

impl Proposal {
    /// When it was decided for good (committed, denied, revoked, cancelled, expired), as far as
    /// the record tells; open ones are not finished.
    pub fn finished_unix(&self) -> Option<u64> {
        if self.state.is_open() || self.state == State::Committing {
            return None;
        }
        Some(
            self.committed_unix
                .or(self.decision.as_ref().map(|d| d.at_unix))
                .unwrap_or(if self.state == State::Expired {
                    self.expires_unix
                } else {
                    self.created_unix
                }),
        )
    }

    /// The JSON the API and the CLI show. The body is shown as text when it is UTF-8.
    pub fn view(&self) -> Value {
        let body = self.request.body_bytes();
        let body_text = String::from_utf8(body.clone()).unwrap_or_else(|_| {
            format!(
                "base64:{}",
                base64::engine::general_purpose::STANDARD.encode(&body)
            )
        });
        json!({
            "id": self.id,
            "state": self.state.as_str(),
            "tool": self.tool,
            "tool_version": self.tool_version,
            "risk": self.risk,
            "agent": self.agent,
            "owner": self.owner,
            "environment": self.environment,
            "job": self.job,
            "request_id": self.request_id,
            "token": self.token,
            "user": self.user,
            "requested_by": self.requested_by,
            "summary": self.summary,
            "request": {
                "method": self.request.method,
                "url": self.request.url(),
                "headers": self.request.headers,
                "body": body_text,
                "sha256": self.request.sha256,
            },
            "created_unix": self.created_unix,
            "expires_unix": self.expires_unix,
            "policy": {"groups": self.groups, "required": self.required, "allow_self_approval": self.allow_self_approval},
            "approvals": self.approvals,
            "decision": self.decision,
            "note": self.note,
            "outcome_status": self.outcome.as_ref().map(|o| o.status),
            "committed_unix": self.committed_unix,
        })
    }
}

/// A stored upstream answer (an idempotent call's or a committed proposal's) as a response.
pub fn stored_answer(outcome: &Outcome) -> Response<ProxyBody> {
    use base64::Engine;
    let body = base64::engine::general_purpose::STANDARD
        .decode(&outcome.body)
        .unwrap_or_default();
    let mut resp = Response::new(crate::base::body::full(body));
    *resp.status_mut() = http::StatusCode::from_u16(outcome.status).unwrap_or(http::StatusCode::OK);
    for (k, v) in &outcome.headers {
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            http::HeaderValue::from_str(v),
        ) {
            resp.headers_mut().append(k, v);
        }
    }
    strip_hop_by_hop(resp.headers_mut());
    // The body is whole; hyper sets the length.
    resp.headers_mut().remove(header::CONTENT_LENGTH);
    resp
}

/// One call as toolgate tells it once the request path has read it: who sent what to where, in
/// which job. The request path makes it (or an approved proposal, [`Call::of_proposal`]);
/// approval, the commit routine, the ledger and replay take it, and the ledger's stored form
/// ([`Committed`]) is made from it.
#[derive(Debug, Clone, Default)]
pub struct Call {
    pub request_id: String,
    /// The proposal it was held in, if it was.
    pub proposal: Option<String>,
    pub job: String,
    pub agent: String,
    pub tool: String,
    pub tool_version: u32,
    pub host: String,
    pub port: u16,
    pub method: String,
    pub path_and_query: String,
    pub content_type: Option<String>,
    /// The body as sent.
    pub body: bytes::Bytes,
    /// The body (or an MCP call's arguments) as its contract reads it.
    pub body_json: Value,
    /// Set on an undo: the call it undoes.
    pub undoes: Option<String>,
    /// The person it acts for, and their groups as the call named them.
    pub user: Option<String>,
    pub user_groups: Vec<String>,
}

impl Call {
    /// Where the call goes.
    pub fn url(&self) -> String {
        format!(
            "https://{}{}",
            authority(&self.host, self.port),
            self.path_and_query
        )
    }

    /// An approved proposal's call (its body as it will be sent, and as its contract reads it).
    pub fn of_proposal(p: &Proposal, body: bytes::Bytes, body_json: Value) -> Call {
        let content_type = p
            .request
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
            .map(|(_, v)| v.clone());
        Call {
            request_id: p.request_id.clone(),
            proposal: Some(p.id.clone()),
            job: p.job.clone(),
            agent: p.agent.clone(),
            tool: p.tool.clone(),
            tool_version: p.tool_version,
            host: p.request.host.clone(),
            port: p.request.port,
            method: p.request.method.clone(),
            path_and_query: p.request.path_and_query.clone(),
            content_type,
            body,
            body_json,
            undoes: None,
            user: p.user.clone(),
            user_groups: p.user_groups.clone(),
        }
    }
}

impl From<&Committed> for Call {
    /// A committed call as the ledger keeps it (its body as recorded, secrets redacted).
    fn from(c: &Committed) -> Call {
        Call {
            request_id: c.request_id.clone(),
            proposal: c.proposal.clone(),
            job: c.job.clone(),
            agent: c.agent.clone(),
            tool: c.tool.clone(),
            tool_version: c.tool_version,
            host: c.host.clone(),
            port: c.port,
            method: c.method.clone(),
            path_and_query: c.path_and_query.clone(),
            content_type: c.content_type.clone(),
            body: bytes::Bytes::from(c.body_text.clone()),
            body_json: c.body.clone(),
            undoes: c.undoes.clone(),
            user: c.user.clone(),
            user_groups: c.user_groups.clone(),
        }
    }
}

/// One committed call of a tool with side effects, and the upstream's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Committed {
    pub request_id: String,
    pub proposal: Option<String>,
    pub job: String,
    pub agent: String,
    pub tool: String,
    pub tool_version: u32,
    pub host: String,
    pub port: u16,
    pub method: String,
    pub path_and_query: String,
    pub content_type: Option<String>,
    /// The request body as sent, with secrets redacted.
    pub body_text: String,
    /// The request body as the contract decoded it, redacted.
    pub body: Value,
    pub status: u16,
    /// The upstream's answer as JSON (scrubbed), or null.
    pub response: Value,
    pub unix_ms: u64,
    /// Set on an undo request: the call it undid.
    #[serde(default)]
    pub undoes: Option<String>,
    /// The person the call acted for (its undo acts for them too), and their groups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub user_groups: Vec<String>,
    /// Set once this call was undone.
    #[serde(default)]
    pub undone: Option<Undone>,
    /// How many undo attempts were sent (each gets its own idempotency key).
    #[serde(default)]
    pub attempts: u32,
    /// Approvers who asked for the undo so far, when the undo tool needs more than one.
    #[serde(default)]
    pub undo_approvals: Vec<UndoApproval>,
}

/// One approver's request for an undo that needs several.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UndoApproval {
    pub by: String,
    pub unix_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Undone {
    pub by: String,
    pub request_id: String,
    pub status: u16,
    pub unix_ms: u64,
}

/// The message of a refusal because no tool contract matched the call: its first words, which
/// `contracts suggest` reads the audit log by (the code alone, `policy_violation`, has other
/// causes).
pub const NO_CONTRACT: &str = "no tool contract matches";

/// A call refused because no tool contract matched it, as `contracts suggest` and the
/// reviewers' "Refused: no contract" page read it: what was asked, and the shapes of its body
/// and query ([`crate::base::shape`]), never their values.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Unmatched {
    pub request_id: String,
    pub unix_ms: u64,
    pub agent: String,
    pub method: String,
    pub host: String,
    pub port: u16,
    pub path: String,
    /// `json` or `form`; none when the call had no body toolgate could read as either.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_format: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_shape: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query_shape: Option<Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kill_targets_read_and_write_their_stored_keys() {
        let t = KillTarget::parse("tool:stripe.refunds.create").unwrap();
        assert_eq!(t, KillTarget::Tool("stripe.refunds.create".into()));
        assert_eq!(t.to_string(), "tool:stripe.refunds.create");
        assert_eq!(
            KillTarget::of(KillScope::Agent, "bot"),
            KillTarget::parse("agent:bot")
        );
        for bad in ["tool:", "job:x", "agent", ""] {
            assert!(KillTarget::parse(bad).is_none(), "{bad}");
        }
        assert!(KillTarget::of(KillScope::Tool, "").is_none());
    }
}
