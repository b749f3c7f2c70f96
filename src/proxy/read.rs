//! Reading a request's body whole, as it arrives, within bounds: a size limit (a declared
//! length over it is refused before a byte is read), a time limit, and the agent's (and
//! everyone's) cap on buffered bytes, which every byte kept is held against until the request
//! is done. The phases read a call's body with the tool's limits ([`read_body`]); a call no
//! contract matches reads a little of it for its shape ([`within`]).

use std::time::Duration;

use bytes::Bytes;
use http::header;
use http_body_util::BodyExt;

use super::body::ProxyBody;
use crate::app::Gate;
use crate::error::{Code, Refusal};
use crate::guard::{BodyReservation, Exceeded};
use crate::policy::Tool;
use crate::verdict;

/// A request's body, read whole within the caps, with its head.
pub(super) struct Read {
    pub(super) parts: http::request::Parts,
    pub(super) body: Bytes,
    /// The body's bytes held against the buffer caps until the call is done.
    pub(super) buffered: BodyReservation,
}

/// Why a body was not read whole.
pub(super) enum Short {
    /// Larger than the limit (declared, or as it arrived).
    TooLarge,
    /// The agent's or everyone's cap on buffered bytes.
    OverCap(Exceeded),
    /// The body broke off.
    Unreadable(String),
    /// It did not arrive whole in time.
    TooSlow,
}

/// Reads `body` whole for `agent`: at most `limit` bytes, within `time`.
pub(super) async fn within(
    app: &Gate,
    agent: &str,
    parts: &http::request::Parts,
    body: ProxyBody,
    limit: usize,
    time: Duration,
) -> Result<(Bytes, BodyReservation), Short> {
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(Short::TooLarge);
    }
    let mut reservation = app.caps().body(agent);
    let read = async {
        // Frame by frame, with the limits checked as data arrives.
        let mut body = body;
        let mut out = bytes::BytesMut::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| Short::Unreadable(e.to_string()))?;
            if let Ok(data) = frame.into_data() {
                if out.len() + data.len() > limit {
                    return Err(Short::TooLarge);
                }
                reservation.grow(data.len()).map_err(Short::OverCap)?;
                out.extend_from_slice(&data);
            }
        }
        Ok(out.freeze())
    };
    match tokio::time::timeout(time, read).await {
        Ok(read) => read.map(|bytes| (bytes, reservation)),
        Err(_) => Err(Short::TooSlow),
    }
}

/// Reads a call's body whole, as it arrives: within the tool's size limit, the body read
/// timeout, and the agent's (and everyone's) cap on buffered bytes.
pub(super) async fn read_body(
    app: &Gate,
    agent: &str,
    tool: &Tool,
    parts: http::request::Parts,
    body: ProxyBody,
) -> Result<Read, Refusal> {
    let timeout = app.config().guards.body_read_timeout;
    let read = within(app, agent, &parts, body, tool.max_body_bytes, timeout).await;
    let (body, buffered) = read.map_err(|short| refused(short, agent, tool, timeout))?;
    Ok(Read {
        parts,
        body,
        buffered,
    })
}

/// The refusal of a call's body that was not read whole.
fn refused(short: Short, agent: &str, tool: &Tool, timeout: Duration) -> Refusal {
    match short {
        Short::TooLarge => verdict::too_large(tool),
        Short::OverCap(e) => {
            let message = match e {
                Exceeded::Agent(cap) => format!(
                    "agent {agent} already has {cap} bytes of request bodies in toolgate's buffers, its cap; send fewer large bodies at once"
                ),
                Exceeded::Total(cap) => format!(
                    "toolgate is buffering its maximum of {cap} bytes of request bodies; retry shortly"
                ),
            };
            let mut r = Refusal::new(Code::RateLimited, message);
            r.retry_after = Some(1);
            r
        }
        Short::Unreadable(e) => {
            crate::checks::validation(format!("the request body could not be read: {e}"))
        }
        Short::TooSlow => Refusal::new(
            Code::RequestTimeout,
            format!(
                "the request body did not arrive whole within {}s; send it at once",
                timeout.as_secs_f64()
            ),
        ),
    }
}
