//! A call's trace: the `toolgate.call` span the driver opens for each request (the phases'
//! spans are its children), continued from the agent's `traceparent`, and the attributes it
//! ends with. Attributes follow the OpenTelemetry semantic conventions (HTTP server, GenAI
//! `execute_tool`, MCP) plus toolgate's own `toolgate.*`; nothing of a body, a header value, a
//! query string or a credential is put in a span, and the path is redacted as the audit log
//! redacts it.
//!
//! Without `--otlp-endpoint` no layer wants these spans: they are disabled, and every function
//! here returns at once.

use http::{Method, Request};
use opentelemetry::trace::Status;
use opentelemetry::KeyValue;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use super::body::ProxyBody;
use super::ctx::{RequestCtx, Target};
use crate::app::Gate;
use crate::error::{Code, Refusal};

/// The call span of one request, a child of the agent's span when it sent a `traceparent`.
pub(super) fn call_span(
    app: &Gate,
    target: &Target,
    req: &Request<ProxyBody>,
    request_id: &str,
) -> Span {
    let span = tracing::debug_span!("toolgate.call", otel.kind = "server");
    if span.is_disabled() {
        return span;
    }
    if let Some(cx) = crate::telemetry::remote_parent(req.headers()) {
        // Not yet started: the parent is always taken.
        let _ = span.set_parent(cx);
    }
    let path = crate::audit::cap_text(req.uri().path(), 512);
    let attributes = [
        ("http.request.method", req.method().as_str().to_string()),
        ("url.path", app.audit().redactor.text(&path)),
        ("url.scheme", "https".to_string()),
        ("server.address", target.host.clone()),
        ("toolgate.agent", target.agent_id.clone()),
        ("toolgate.request_id", request_id.to_string()),
    ];
    for (k, v) in attributes {
        span.set_attribute(k, v);
    }
    span.set_attribute("server.port", i64::from(target.port));
    span
}

/// The call's trace id (32 hex digits), when its span is exported.
pub(super) fn trace_id(ctx: &RequestCtx) -> Option<String> {
    use opentelemetry::trace::TraceContextExt as _;
    if ctx.span.is_disabled() {
        return None;
    }
    let cx = ctx.span.context();
    let span = cx.span();
    let sc = span.span_context();
    (sc.is_valid() && sc.is_sampled()).then(|| sc.trace_id().to_string())
}

/// What the call span ends with: who and what, the decision and the status.
pub(super) fn ended(ctx: &RequestCtx, method: &Method, status: u16, refused: Option<Code>) {
    let span = &ctx.span;
    if span.is_disabled() {
        return;
    }
    if let Some(tool) = &ctx.tool {
        span.set_attribute("toolgate.tool", tool.clone());
        span.set_attribute("gen_ai.tool.name", tool.clone());
        span.set_attribute("gen_ai.operation.name", "execute_tool");
    }
    let named = [
        ("toolgate.owner", ctx.owner.clone()),
        ("toolgate.user", ctx.user.as_ref().map(|u| u.id.clone())),
        ("toolgate.job", Some(ctx.job.clone())),
    ];
    for (k, v) in named {
        if let Some(v) = v.filter(|v| !v.is_empty()) {
            span.set_attribute(k, v);
        }
    }
    span.set_attribute("http.response.status_code", i64::from(status));
    let decision = match refused {
        None => "forwarded",
        Some(_) => "refused",
    };
    span.set_attribute("toolgate.decision", decision);
    if let Some(code) = refused {
        span.set_attribute("toolgate.code", code.as_str());
        span.set_attribute("error.type", code.as_str());
    }
    if status >= 500 {
        span.set_status(Status::error(format!("{status} {}", method.as_str())));
    }
}

/// A refusal, as an event of the call's span: its code, never its message (which may quote
/// what the agent sent).
pub(super) fn refused(ctx: &RequestCtx, refusal: &Refusal) {
    if ctx.span.is_disabled() {
        return;
    }
    let mut attributes = vec![KeyValue::new("toolgate.code", refusal.code.as_str())];
    if let Some(p) = &refusal.proposal {
        attributes.push(KeyValue::new("toolgate.proposal", p.clone()));
        ctx.span.set_attribute("toolgate.proposal", p.clone());
    }
    let name = match refusal.code.source() {
        crate::error::ErrorSource::Upstream => "upstream failure",
        _ => "denial",
    };
    ctx.span.add_event(name, attributes);
}

/// Notes an MCP message's method (and session) on the call span.
pub(super) fn mcp_method(ctx: &RequestCtx, method: &str, session: Option<&str>) {
    if ctx.span.is_disabled() {
        return;
    }
    ctx.span
        .set_attribute("mcp.method.name", method.to_string());
    if let Some(s) = session {
        ctx.span.set_attribute("mcp.session.id", s.to_string());
    }
}

/// Marks an outgoing request so that the upstream client sends the call's trace context with
/// it (`propagate_trace = true` on the tool): the upstream's spans join the agent's trace.
pub(super) fn propagate(out: &mut Request<ProxyBody>, tool: &crate::policy::Tool) {
    if tool.propagate_trace {
        out.extensions_mut().insert(crate::upstream::PropagateTrace);
    }
}
