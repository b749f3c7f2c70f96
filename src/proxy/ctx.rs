//! One request's context, [`RequestCtx`]: what every phase reads and adds to (its id, the one
//! policy snapshot it is judged by, the tunnel it came on, the job, who and what), and the
//! record phase's state: the request's own audit event, held until the next event of the
//! request, and recorded on every exit — by the phases, at the rescue point, or, when hyper
//! drops the request because its client went away, by the context's `Drop`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::Value;

use http::Method;

use crate::audit::{Audit, Kind, Record};
use crate::base::new_request_id;
use crate::policy::Policy;

/// What the tunnel or absolute-form request is bound to: the agent and the target that were
/// checked at the proxy layer. The target never comes from a `Host` header.
#[derive(Clone)]
pub(crate) struct Target {
    pub(super) agent_id: String,
    pub(super) host: String,
    pub(super) port: u16,
    /// The client's address, as events record it (formatted once per tunnel).
    pub(super) peer: String,
    /// The tunnel (or connection) the request came on: the job of calls that name none.
    pub(super) tunnel_id: String,
    pub(super) origin: Origin,
    /// The issued token the agent came in with, if any (checked again on every request).
    pub(super) token: Option<Arc<crate::model::AgentToken>>,
    /// The person an undo acts for: the one the call it undoes acted for.
    pub(super) user: Option<Arc<crate::policy::EndUser>>,
}

/// Who sent a request: an agent through the proxy, or toolgate itself on an approver's word.
#[derive(Debug, Clone)]
pub(crate) enum Origin {
    Agent,
    /// The undo of a committed call: it is neither held for approval nor previewed, because an
    /// approver asked for it; every other phase applies.
    Undo {
        of: String,
        by: String,
    },
}

impl Target {
    /// An agent's target on the proxy listener or a redirected connection: the host `outer`
    /// asked for, on `port`, for the tunnel (or connection) `tunnel_id`.
    pub(super) fn of(outer: &Outer, port: u16, tunnel_id: String) -> Target {
        Target {
            agent_id: outer.agent.clone().unwrap_or_default(),
            host: outer.host.clone(),
            port,
            peer: outer.peer.to_string(),
            tunnel_id,
            origin: Origin::Agent,
            token: outer.token.clone(),
            user: None,
        }
    }

    /// The undo of committed call `c`, asked for by approver `by`: sent by toolgate as the
    /// call's agent, to its host, in its job.
    pub(crate) fn undo(c: &crate::model::Committed, by: &str) -> Target {
        Target {
            agent_id: c.agent.clone(),
            host: c.host.clone(),
            port: c.port,
            peer: std::net::SocketAddr::from(([127, 0, 0, 1], 0)).to_string(),
            tunnel_id: c.job.clone(),
            origin: Origin::Undo {
                of: c.request_id.clone(),
                by: by.to_string(),
            },
            token: None,
            user: c.user.as_ref().map(|id| {
                Arc::new(crate::policy::EndUser {
                    id: id.clone(),
                    groups: c.user_groups.clone(),
                    via: format!("the call it undoes ({})", c.request_id),
                    assertion: None,
                })
            }),
        }
    }

    /// The call being undone, when toolgate itself sends an undo.
    pub(super) fn undoes(&self) -> Option<&str> {
        match &self.origin {
            Origin::Undo { of, .. } => Some(of),
            Origin::Agent => None,
        }
    }
}

/// How a refusal of this request is written: as toolgate's JSON error, inside an MCP message
/// the client sent, or in GraphQL's `errors` shape.
#[derive(Debug, Clone, Default)]
pub(crate) enum Reply {
    #[default]
    Http,
    Mcp(McpReply),
    Graphql,
}

/// A refusal of an MCP message: as the tool's result (a `tools/call`), or as a JSON-RPC error
/// (another message).
#[derive(Debug, Clone)]
pub(crate) enum McpReply {
    ToolResult(Value),
    Error(Option<Value>),
}

/// A request on the proxy listener (or a redirected connection) before a tunnel exists: who
/// sent it (once known) and what it asked, for a refusal's record.
#[derive(Clone)]
pub(super) struct Outer {
    pub(super) request_id: String,
    pub(super) started: Instant,
    pub(super) peer: SocketAddr,
    pub(super) agent: Option<String>,
    /// The issued token the agent came in with, if any.
    pub(super) token: Option<Arc<crate::model::AgentToken>>,
    /// The host asked for, once known (`-` until then).
    pub(super) host: String,
    pub(super) method: Method,
    /// The request's target as asked (a CONNECT's HOST:PORT, an absolute URL).
    pub(super) target: String,
}

impl Outer {
    pub(super) fn new(peer: SocketAddr, method: Method, target: String) -> Outer {
        Outer {
            request_id: new_request_id(),
            started: Instant::now(),
            peer,
            agent: None,
            token: None,
            host: "-".into(),
            method,
            target,
        }
    }
}

/// One request's context, from the moment its head is read to its record phase.
pub(crate) struct RequestCtx {
    pub(super) id: String,
    pub(super) started: Instant,
    /// The policy set this request is judged by, read once: a reload meanwhile applies to the
    /// next request, never to half of this one.
    pub(super) policy: Arc<Policy>,
    pub(super) target: Arc<Target>,
    pub(super) job: String,
    pub(super) owner: Option<String>,
    pub(super) tool: Option<String>,
    pub(super) version: Option<u32>,
    /// The id of the issued token the request came in with.
    pub(super) token: Option<String>,
    /// The person the request acts for, once established.
    pub(super) user: Option<Arc<crate::policy::EndUser>>,
    pub(super) reply: Reply,
    /// The shape of the body of a call no contract matched, for its refusal's record.
    pub(super) body_shape: Option<Value>,
    /// The request's event, not yet recorded.
    held: Mutex<Option<Record>>,
    /// Where the held event goes if the request is dropped.
    pub(super) audit: Arc<Audit>,
    /// The call's span (disabled when traces are off): phases note what they learn on it.
    pub(super) span: tracing::Span,
}

impl RequestCtx {
    pub(super) fn new(
        id: String,
        started: Instant,
        policy: Arc<Policy>,
        target: Arc<Target>,
        audit: Arc<Audit>,
    ) -> RequestCtx {
        RequestCtx {
            id,
            started,
            policy,
            job: target.tunnel_id.clone(),
            token: target.token.as_ref().map(|t| t.id.clone()),
            target,
            owner: None,
            tool: None,
            version: None,
            user: None,
            reply: Reply::Http,
            body_shape: None,
            held: Mutex::new(None),
            audit,
            span: tracing::Span::none(),
        }
    }

    /// The agent the request came from.
    pub(super) fn agent(&self) -> &str {
        &self.target.agent_id
    }

    /// The job the request named (`Toolgate-Job`, or its token's job); `None` for the tunnel's
    /// own job, which every request has.
    pub(super) fn named_job(&self) -> Option<&str> {
        (self.job != self.target.tunnel_id).then_some(self.job.as_str())
    }

    /// Notes the tool the request matched (every later event names it).
    pub(super) fn matched(&mut self, tool: &crate::policy::Tool) {
        self.tool = Some(tool.name.clone());
        self.version = Some(tool.version);
    }

    /// An event of this request: who and what, as the phases learnt it.
    pub(crate) fn rec(&self, kind: Kind, payload: Value) -> Record {
        Record {
            kind,
            request_id: Some(self.id.clone()),
            job: Some(self.job.clone()),
            proposal: None,
            agent: Some(self.target.agent_id.clone()),
            owner: self.owner.clone(),
            tool: self.tool.clone(),
            tool_version: self.version,
            token: self.token.clone(),
            user: self.user.as_ref().map(|u| u.id.clone()),
            payload,
            at_ms: 0,
        }
    }

    /// Holds the request's own event (stamped now, the request's time).
    pub(super) fn hold_request(&self, payload: Value) {
        let mut rec = self.rec(Kind::Request, payload);
        rec.at_ms = crate::base::now_ms();
        *self.held.lock().unwrap_or_else(|p| p.into_inner()) = Some(rec);
    }

    /// Writes the held request event's query string as `[REDACTED]`: it carries values a
    /// contract redacts (a GraphQL GET's document and variables).
    pub(super) fn redact_asked_query(&self) {
        self.with_held(|m| {
            let asked = m.get("query").and_then(Value::as_str);
            if asked.is_some_and(|q| !q.is_empty()) {
                m.insert("query".into(), Value::String(crate::audit::REDACTED.into()));
            }
        });
    }

    /// Writes which model answer asked for the call into the held request event.
    pub(super) fn note_requested_by(&self, requested_by: Value) {
        self.with_held(|m| {
            m.insert("requested_by".into(), requested_by);
        });
    }

    /// Changes the held request event's payload, if it is still held.
    fn with_held(&self, change: impl FnOnce(&mut serde_json::Map<String, Value>)) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(Value::Object(m)) = held.as_mut().map(|r| &mut r.payload) {
            change(m);
        }
    }

    /// The held request event, if it is still held.
    pub(super) fn take_request(&self) -> Option<Record> {
        self.held.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Records the held request event, if any is still held. It stays held while the queue
    /// has no room, so that a request dropped meanwhile still records it.
    pub(super) async fn flush(&self) {
        self.audit.record_from(|| self.take_request()).await;
    }

    /// Records the held request event without waiting for room (see
    /// [`crate::audit::Audit::record_if_room`]).
    pub(super) fn flush_if_room(&self) {
        if let Some(rec) = self.take_request() {
            self.audit.record_if_room(rec);
        }
    }

    /// A copy for a task of its own (what it records comes after the request's own event,
    /// which stays here).
    pub(super) fn detached(&self) -> RequestCtx {
        RequestCtx {
            id: self.id.clone(),
            started: self.started,
            policy: self.policy.clone(),
            target: self.target.clone(),
            job: self.job.clone(),
            owner: self.owner.clone(),
            tool: self.tool.clone(),
            version: self.version,
            token: self.token.clone(),
            user: self.user.clone(),
            reply: self.reply.clone(),
            body_shape: None,
            held: Mutex::new(None),
            audit: self.audit.clone(),
            span: self.span.clone(),
        }
    }

    /// Records an event of this request, after the request's own event.
    pub(super) async fn record(&self, kind: Kind, payload: Value) {
        self.flush().await;
        self.record_beside(kind, payload).await;
    }

    /// Records an event of this request while its own event stays held, so that a read is
    /// still told in one event after it: what let the request through (a grant's use).
    pub(super) async fn record_beside(&self, kind: Kind, payload: Value) {
        self.audit.record(self.rec(kind, payload)).await;
    }

    /// Records a record of this request as given (its kind and payload set by the caller).
    pub(super) async fn record_as(&self, rec: Record) {
        self.audit.record(rec).await;
    }

    /// Records a record of this request without waiting for room.
    pub(super) fn record_if_room(&self, rec: Record) {
        self.audit.record_if_room(rec);
    }
}

impl Drop for RequestCtx {
    /// The record phase of a request dropped mid-way (its client went away): what was asked is
    /// recorded all the same, without waiting (a drop cannot).
    fn drop(&mut self) {
        if let Some(mut rec) = self.take_request() {
            if let Value::Object(m) = &mut rec.payload {
                m.insert("client_gone".into(), Value::Bool(true));
            }
            self.audit.record_now(rec);
        }
    }
}
