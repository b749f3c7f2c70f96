//! A call no tool contract matches: refused, and recorded with the shape of its body (types and
//! keys, never values: [`crate::base::shape`]) so that `toolgate contracts suggest` can draft
//! the contract it lacked. The body is read only within [`SHAPE_CAP`] and the body read
//! timeout (at most a second: a refusal is not held back for its body); a body larger or slower than that, or neither JSON nor a form, is refused the same
//! way with no shape.

use http::{header, Request};
use http_body_util::BodyExt;
use serde_json::{json, Value};

use super::body::ProxyBody;
use super::ctx::RequestCtx;
use crate::app::Gate;
use crate::error::Refusal;
use crate::policy::contract;

/// The most body bytes read to learn a refused call's shape.
const SHAPE_CAP: usize = 16 * 1024;
/// The longest a refusal waits for the body whose shape it notes (a body slower than that is
/// refused all the same, with no shape).
const SHAPE_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// The refusal of a call no contract matches, with its body's shape noted for the record.
pub(super) async fn refuse(app: &Gate, ctx: &mut RequestCtx, req: Request<ProxyBody>) -> Refusal {
    let target = &ctx.target;
    let (method, path) = (req.method(), req.uri().path());
    let refusal = crate::verdict::no_match(&ctx.policy, &target.host, target.port, method, path);
    ctx.body_shape = shape_of_body(app, ctx.agent(), req).await;
    refusal
}

/// `{"format": "json" | "form", "shape": …}`, when the body is one of those and small.
async fn shape_of_body(app: &Gate, agent: &str, req: Request<ProxyBody>) -> Option<Value> {
    let (parts, mut body) = req.into_parts();
    let ctype = crate::checks::media_type(&parts.headers)?;
    let format = if ctype == "application/json" || ctype.ends_with("+json") {
        "json"
    } else if ctype == "application/x-www-form-urlencoded" {
        "form"
    } else {
        return None;
    };
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > SHAPE_CAP as u64) {
        return None;
    }
    let mut reservation = app.caps().body(agent);
    let read = async {
        let mut out = bytes::BytesMut::new();
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.ok()?.into_data() {
                if out.len() + data.len() > SHAPE_CAP {
                    return None;
                }
                reservation.grow(data.len()).ok()?;
                out.extend_from_slice(&data);
            }
        }
        Some(out.freeze())
    };
    // A refusal is not held back for its body: the shape is noted if the body arrives soon.
    let timeout = app.config().guards.body_read_timeout.min(SHAPE_WAIT);
    let bytes = tokio::time::timeout(timeout, read).await.ok()??;
    if bytes.is_empty() {
        return None;
    }
    let value = match format {
        "json" => contract::parse_json_strict(&bytes).ok()?,
        _ => contract::decode_form(&bytes).ok()?,
    };
    Some(json!({"format": format, "shape": crate::base::shape::of(&value)}))
}
