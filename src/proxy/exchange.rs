//! The forward phase of a call sent at once without a commit (a read, an MCP message), made to
//! outlive its client. hyper drops a request's future when the client goes away (an HTTP/1.1
//! connection closed, an HTTP/2 stream reset); a call that reached the upstream must still be
//! recorded (DESIGN 13, audit before forward). So the upstream exchange runs as a task of its
//! own, and the call's event is a guard, [`CallEvent`], that is recorded on every exit: with the
//! answer, or marked `client_gone` with the status the answer had.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use http::{Request, Response};
use hyper::body::Incoming;
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tracing::info;

use super::body::ProxyBody;
use super::ctx::{RequestCtx, Target};
use crate::app::Gate;
use crate::audit::{Audit, Kind, Record};
use crate::error::Refusal;

/// What is known of a call's answer, for the event recorded when nobody is left to read it.
enum Known {
    /// The exchange did not end (the shutdown grace was over first).
    Nothing,
    /// The upstream answered: its status and how long it took.
    Answer(Value),
    /// The exchange failed: the `upstream_error` payload.
    Failed(Value),
}

/// A forwarded call's events, not yet recorded. Whoever ends the call records them; if nobody
/// does (the request was dropped), dropping this records them without waiting, marked
/// `client_gone`, with what is known of the answer.
pub(super) struct CallEvent {
    audit: Arc<Audit>,
    /// The request's own event, if it was still held: the decision and the answer fold into it.
    held: Option<Record>,
    /// Who and what, for the events recorded apart.
    base: Record,
    /// The decision's payload, until it is recorded.
    decision: Option<Value>,
    known: Known,
    started: Instant,
    /// Events on their way to the queue (waiting for room).
    pending: VecDeque<Record>,
}

impl CallEvent {
    /// The events of `ctx`'s call as it is forwarded, with `decision`: the request's own event
    /// taken from the context into them (the forward phase records them, whatever happens to
    /// the client).
    pub(super) fn of(ctx: &RequestCtx, decision: Value, started: Instant) -> CallEvent {
        CallEvent {
            audit: ctx.audit.clone(),
            held: ctx.take_request(),
            base: ctx.rec(Kind::Decision, Value::Null),
            decision: Some(decision),
            known: Known::Nothing,
            started,
            pending: VecDeque::new(),
        }
    }

    fn event(&self, kind: crate::audit::Kind, payload: Value) -> Record {
        Record {
            kind,
            payload,
            ..self.base.clone()
        }
    }

    /// The events that tell the call with `payload` as its `kind` (response or upstream
    /// error): one when the request's event is still held and the answer folds into it (a
    /// read told in one event), else the decision and then the answer. Nothing once told.
    fn told(&mut self, kind: crate::audit::Kind, payload: Value, fold: bool) -> Vec<Record> {
        let Some(decision) = self.decision.take() else {
            return Vec::new();
        };
        match self.held.take() {
            Some(mut rec) if fold => {
                // The one event of the call says who and what, as the phases learnt it.
                rec.owner = self.base.owner.clone();
                rec.tool = self.base.tool.clone();
                rec.tool_version = self.base.tool_version;
                if let Value::Object(m) = &mut rec.payload {
                    m.insert("decision".into(), decision);
                    m.insert(kind.as_str().into(), payload);
                }
                vec![rec]
            }
            held => {
                let mut out: Vec<Record> = held.into_iter().collect();
                out.push(self.event(Kind::Decision, decision));
                out.push(self.event(kind, payload));
                out
            }
        }
    }

    /// The events of a call whose client went away: the answer as far as it is known.
    fn gone(&mut self) -> Vec<Record> {
        match std::mem::replace(&mut self.known, Known::Nothing) {
            Known::Answer(mut response) => {
                response["client_gone"] = Value::Bool(true);
                self.told(Kind::Response, response, true)
            }
            Known::Failed(mut failure) => {
                failure["client_gone"] = Value::Bool(true);
                self.told(Kind::UpstreamError, failure, false)
            }
            Known::Nothing => self.told(
                Kind::Response,
                json!({"status": null, "unfinished": true}),
                true,
            ),
        }
    }

    /// Queues the pending events, each once there is room; what a drop interrupts stays
    /// pending for the guard.
    async fn drain(&mut self) {
        let audit = self.audit.clone();
        while !self.pending.is_empty() {
            audit.record_from(|| self.pending.pop_front()).await;
        }
    }

    /// Records the call with its answer (`response`): folded into the request's event when
    /// that is still held, so that a read is one event.
    pub(super) async fn record(mut self, response: Value) {
        let told = self.told(Kind::Response, response, true);
        self.pending.extend(told);
        self.drain().await;
    }

    /// Records the call with its answer as separate events: the request's, the decision, the
    /// response (a model's answer, whose usage is recorded apart when its stream ends).
    pub(super) async fn record_apart(mut self, response: Value) {
        let told = self.told(Kind::Response, response, false);
        self.pending.extend(told);
        self.drain().await;
    }

    /// Records an event about the answer before the answer itself (the request's own event
    /// first, so the call is then told in separate events).
    pub(super) async fn record_first(&mut self, kind: crate::audit::Kind, payload: Value) {
        self.pending.extend(self.held.take());
        let rec = self.event(kind, payload);
        self.pending.push_back(rec);
        self.drain().await;
    }

    /// Records a failed exchange: the decision and the upstream error.
    async fn record_failure(mut self) {
        if let Known::Failed(failure) = std::mem::replace(&mut self.known, Known::Nothing) {
            let told = self.told(Kind::UpstreamError, failure, false);
            self.pending.extend(told);
        }
        self.drain().await;
    }
}

impl Drop for CallEvent {
    /// The record phase of a call whose request was dropped: recorded without waiting (a drop
    /// cannot), marked `client_gone`.
    fn drop(&mut self) {
        let mut left: Vec<Record> = self.pending.drain(..).collect();
        left.extend(self.gone());
        for rec in left {
            self.audit.record_now(rec);
        }
    }
}

/// The forward phase: sends `request` upstream from a task of its own, which ends the exchange
/// (and records the call) even when the client goes away meanwhile. A failure is recorded
/// here; an answer comes back with the call's event, for the caller to record with it.
pub(super) async fn forward(
    app: &Gate,
    target: &Target,
    request: Request<ProxyBody>,
    mut event: CallEvent,
) -> Result<(Response<Incoming>, CallEvent), Refusal> {
    let sending = app
        .upstream()
        .forward_detached(&target.host, target.port, request);
    let (tx, rx) = oneshot::channel();
    let abandon = app.abandon().clone();
    app.tasks().spawn(async move {
        // At the end of the shutdown grace the exchange is ended: dropped here, the event is
        // recorded as unfinished while the audit log still takes it.
        let result = tokio::select! {
            r = sending => r,
            _ = abandon.cancelled() => return,
        };
        let latency_ms = event.started.elapsed().as_millis() as u64;
        event.known = match &result {
            Ok(resp) => Known::Answer(json!({
                "status": resp.status().as_u16(),
                "latency_ms": latency_ms,
            })),
            Err(f) => Known::Failed(json!({
                "code": f.refusal.code.as_str(),
                "message": f.refusal.message,
                "sent": !f.not_sent,
            })),
        };
        if let Err((_unread, mut event)) = tx.send((result, event)) {
            info!(
                request_id = event.base.request_id.as_deref().unwrap_or("-"),
                latency_ms,
                "the client went away before the answer; the call is recorded without it"
            );
            let told = event.gone();
            event.pending.extend(told);
            event.drain().await;
        }
    });
    let (result, event) = rx
        .await
        .map_err(|_| Refusal::internal("the upstream exchange ended without an answer; retry"))?;
    match result {
        Ok(resp) => Ok((resp, event)),
        Err(f) => {
            event.record_failure().await;
            Err(f.refusal)
        }
    }
}
