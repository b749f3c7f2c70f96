//! The one place where a refusal becomes a response.
//!
//! Every refusal toolgate makes carries a stable [`Code`], a message that tells the agent (often a
//! language model) what to change, and where the failure came from. The JSON body is the one of
//! DESIGN section 1: `{"error": {"code", "message", "request_id", "tool"}}`.
//!
//! A refusal often comes before the request body was read, or after only part of it: the body
//! finishes itself when dropped (`base::body::Kept`, wrapped around every client request where
//! it enters the proxy), so the answer built here reaches the client over HTTP/1.1 and HTTP/2
//! instead of a reset stream or a closed connection (DESIGN 13).

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

use crate::base::body::{full, ProxyBody};

/// The stable error codes of DESIGN section 1. Agents and SDKs may match on these strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    AuthRequired,
    AuthError,
    /// The person a call acts for could not be established (a bad, expired or foreign
    /// assertion; a required user missing): `auth_error` with status 401, since the agent's
    /// own proxy credentials were good.
    UserAuthError,
    EgressDenied,
    PolicyViolation,
    /// An MCP session toolgate does not know: `policy_violation` with status 404, which an MCP
    /// client answers by opening a new session.
    SessionUnknown,
    ToolDisabled,
    ValidationError,
    PayloadTooLarge,
    /// A body that did not arrive in time: `validation_error` with status 408.
    RequestTimeout,
    IdempotencyKeyRequired,
    IdempotencyConflict,
    RateLimited,
    ApprovalPending,
    ApprovalDenied,
    ApprovalExpired,
    UpstreamTimeout,
    UpstreamError,
    /// The person a call acts for has no live connection for the tool's per-user credential:
    /// the message carries a link for them to connect (409 `user_connection_required`).
    UserConnectionRequired,
    /// The audit log cannot be written now (its store failed or does not answer): nothing is
    /// forwarded that cannot be recorded.
    StoreUnavailable,
    Internal,
}

impl Code {
    /// The code as it appears in the JSON body.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::AuthRequired => "auth_required",
            Code::AuthError | Code::UserAuthError => "auth_error",
            Code::EgressDenied => "egress_denied",
            Code::PolicyViolation | Code::SessionUnknown => "policy_violation",
            Code::ToolDisabled => "tool_disabled",
            Code::ValidationError | Code::PayloadTooLarge | Code::RequestTimeout => {
                "validation_error"
            }
            Code::IdempotencyKeyRequired => "idempotency_key_required",
            Code::IdempotencyConflict => "idempotency_conflict",
            Code::RateLimited => "rate_limited",
            Code::ApprovalPending => "approval_pending",
            Code::ApprovalDenied => "approval_denied",
            Code::ApprovalExpired => "approval_expired",
            Code::UpstreamTimeout => "upstream_timeout",
            Code::UpstreamError => "upstream_error",
            Code::UserConnectionRequired => "user_connection_required",
            Code::StoreUnavailable => "store_unavailable",
            Code::Internal => "internal_error",
        }
    }

    /// The HTTP status that goes with the code.
    pub fn status(self) -> StatusCode {
        match self {
            Code::AuthRequired | Code::AuthError => StatusCode::PROXY_AUTHENTICATION_REQUIRED,
            Code::UserAuthError => StatusCode::UNAUTHORIZED,
            Code::EgressDenied
            | Code::PolicyViolation
            | Code::ToolDisabled
            | Code::ApprovalDenied => StatusCode::FORBIDDEN,
            Code::ValidationError => StatusCode::UNPROCESSABLE_ENTITY,
            Code::SessionUnknown => StatusCode::NOT_FOUND,
            Code::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Code::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Code::IdempotencyKeyRequired => StatusCode::PRECONDITION_REQUIRED,
            Code::IdempotencyConflict | Code::UserConnectionRequired => StatusCode::CONFLICT,
            Code::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Code::ApprovalPending => StatusCode::LOCKED,
            Code::ApprovalExpired => StatusCode::GONE,
            Code::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Code::UpstreamError => StatusCode::BAD_GATEWAY,
            // A refusal toolgate could not decide is still a refusal: fail closed.
            Code::StoreUnavailable | Code::Internal => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Where a failure with this code comes from, for logs and metrics.
    pub fn source(self) -> ErrorSource {
        match self {
            Code::UpstreamTimeout | Code::UpstreamError => ErrorSource::Upstream,
            Code::StoreUnavailable | Code::Internal => ErrorSource::Internal,
            Code::AuthRequired | Code::AuthError | Code::UserAuthError => ErrorSource::Client,
            _ => ErrorSource::Policy,
        }
    }
}

/// Who is to blame for a refusal (pingora's `ErrorSource`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorSource {
    /// The agent sent something toolgate will not accept (credentials, protocol).
    Client,
    /// A policy decided against the request.
    Policy,
    /// The upstream failed or could not be reached.
    Upstream,
    /// toolgate itself could not decide; the request was refused, never forwarded.
    Internal,
}

impl ErrorSource {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorSource::Client => "client",
            ErrorSource::Policy => "policy",
            ErrorSource::Upstream => "upstream",
            ErrorSource::Internal => "internal",
        }
    }
}

/// A request toolgate refuses, with everything needed to answer it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}: {message}", code.as_str())]
pub struct Refusal {
    pub code: Code,
    pub message: String,
    pub tool: Option<String>,
    pub retry_after: Option<u64>,
    pub proposal: Option<String>,
}

impl Refusal {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Refusal {
            code,
            message: message.into(),
            tool: None,
            retry_after: None,
            proposal: None,
        }
    }

    /// The message as the audit log keeps it: the one-time link a `user_connection_required`
    /// refusal gives a person to connect is theirs to use, so its token is left out.
    pub fn recorded_message(&self) -> std::borrow::Cow<'_, str> {
        const AT: &str = "/connect/";
        if self.code != Code::UserConnectionRequired {
            return std::borrow::Cow::Borrowed(&self.message);
        }
        let mut out = String::with_capacity(self.message.len());
        let mut rest = self.message.as_str();
        while let Some(i) = rest.find(AT) {
            out.push_str(&rest[..i + AT.len()]);
            rest = &rest[i + AT.len()..];
            let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            out.push_str("[link not recorded]");
            rest = &rest[end..];
        }
        out.push_str(rest);
        std::borrow::Cow::Owned(out)
    }

    /// Names the tool contract the refusal is about.
    pub fn with_tool(mut self, tool: impl Into<String>) -> Self {
        self.tool = Some(tool.into());
        self
    }

    /// Names the proposal the refusal is about (body field and `Toolgate-Proposal` header).
    pub fn with_proposal(mut self, id: impl Into<String>) -> Self {
        self.proposal = Some(id.into());
        self
    }

    pub fn auth_required() -> Self {
        Refusal::new(
            Code::AuthRequired,
            "proxy credentials are required: set HTTPS_PROXY=http://AGENT_ID:TOKEN@HOST:PORT \
             (Proxy-Authorization: Basic)",
        )
    }

    pub fn auth_error(why: &str) -> Self {
        Refusal::new(
            Code::AuthError,
            format!(
                "proxy credentials rejected: {why}; check the agent id and token in HTTPS_PROXY"
            ),
        )
    }

    pub fn policy(message: impl Into<String>) -> Self {
        Refusal::new(Code::PolicyViolation, message)
    }

    pub fn egress(message: impl Into<String>) -> Self {
        Refusal::new(Code::EgressDenied, message)
    }

    pub fn upstream(message: impl Into<String>) -> Self {
        Refusal::new(Code::UpstreamError, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Refusal::new(Code::Internal, message)
    }

    /// The audit log cannot be written now: the call is refused before anything is sent.
    pub fn store_unavailable() -> Self {
        Refusal::new(
            Code::StoreUnavailable,
            "toolgate cannot write its audit log right now (its store failed or does not answer), \
             and it sends nothing it cannot record; nothing was sent. Retry later",
        )
    }

    /// The JSON body of DESIGN section 1.
    pub fn body(&self, request_id: &str) -> serde_json::Value {
        let mut error = serde_json::json!({
            "code": self.code.as_str(),
            "message": self.message,
            "request_id": request_id,
            "tool": self.tool,
        });
        if let Some(p) = &self.proposal {
            error["proposal"] = serde_json::Value::String(p.clone());
        }
        serde_json::json!({ "error": error })
    }

    /// Turns the refusal into the response the agent gets.
    pub fn into_response(self, request_id: &str) -> Response<ProxyBody> {
        let body = self.body(request_id).to_string();
        let mut resp = Response::new(full(Bytes::from(body)));
        *resp.status_mut() = self.code.status();
        let headers = resp.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if matches!(self.code, Code::AuthRequired | Code::AuthError) {
            headers.insert(
                header::PROXY_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"toolgate\""),
            );
        }
        if let Some(secs) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Some(p) = &self.proposal {
            if let Ok(v) = HeaderValue::from_str(p) {
                headers.insert("toolgate-proposal", v);
            }
        }
        if let Ok(v) = HeaderValue::from_str(request_id) {
            headers.insert(crate::base::net::REQUEST_ID_HEADER, v);
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connect_link_is_answered_but_never_recorded() {
        let r = Refusal::new(
            Code::UserConnectionRequired,
            "alice has not connected gh. Ask them to open https://tg/connect/SECRETLINK (good once) or /connect/OTHER",
        );
        let kept = r.recorded_message();
        assert!(
            !kept.contains("SECRETLINK") && !kept.contains("OTHER"),
            "{kept}"
        );
        assert!(
            kept.contains("https://tg/connect/[link not recorded] (good once)"),
            "{kept}"
        );
        assert_eq!(r.code.status(), http::StatusCode::CONFLICT);
        assert_eq!(r.code.as_str(), "user_connection_required");
        let other = Refusal::new(Code::PolicyViolation, "see /connect/x");
        assert_eq!(other.recorded_message(), "see /connect/x");
    }

    proptest::proptest! {
        #[test]
        fn any_message_is_recorded_without_panic(m in ".{0,120}") {
            let r = Refusal::new(Code::UserConnectionRequired, m);
            let _ = r.recorded_message();
        }
    }

    #[test]
    fn body_has_the_design_shape() {
        let r = Refusal::policy("no tool contract matches").with_tool("stripe.x");
        let v = r.body("req_1");
        assert_eq!(v["error"]["code"], "policy_violation");
        assert_eq!(v["error"]["request_id"], "req_1");
        assert_eq!(v["error"]["tool"], "stripe.x");
    }

    #[test]
    fn auth_refusals_ask_for_credentials() {
        let resp = Refusal::auth_required().into_response("req_1");
        assert_eq!(resp.status(), 407);
        assert!(resp.headers().contains_key(header::PROXY_AUTHENTICATE));
        assert!(resp.headers().contains_key("toolgate-request-id"));
    }

    #[test]
    fn an_unwritable_audit_log_is_503_store_unavailable() {
        let r = Refusal::store_unavailable();
        assert_eq!(r.code.as_str(), "store_unavailable");
        assert_eq!(r.code.status(), 503);
        assert_eq!(r.code.source(), ErrorSource::Internal);
    }

    #[test]
    fn oversized_body_is_a_validation_error_with_413() {
        assert_eq!(Code::PayloadTooLarge.as_str(), "validation_error");
        assert_eq!(Code::PayloadTooLarge.status(), 413);
    }
}
