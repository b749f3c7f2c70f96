//! A call no tool contract matches: refused, and recorded with the shape of its body (types and
//! keys, never values: [`crate::base::shape`]) so that `toolgate contracts suggest` can draft
//! the contract it lacked. The body is read only within [`SHAPE_CAP`] and the body read
//! timeout (at most a second: a refusal is not held back for its body); a body larger or slower than that, or neither JSON nor a form, is refused the same
//! way with no shape.

use http::Request;
use serde_json::{json, Value};

use super::body::ProxyBody;
use super::ctx::RequestCtx;
use crate::app::Gate;
use crate::error::Refusal;
use crate::policy::{contract, BodyFormat};

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
    let (parts, body) = req.into_parts();
    let media_type = crate::checks::media_type(&parts.headers)?;
    let format = crate::checks::body_format(&media_type)?;
    // A refusal is not held back for its body: the shape is noted if the body arrives soon.
    let time = app.config().guards.body_read_timeout.min(SHAPE_WAIT);
    let (bytes, _held) = super::read::within(app, agent, &parts, body, SHAPE_CAP, time)
        .await
        .ok()?;
    if bytes.is_empty() {
        return None;
    }
    let (value, format) = match format {
        BodyFormat::Json => (contract::parse_json_strict(&bytes).ok()?, "json"),
        BodyFormat::Form => (contract::decode_form(&bytes).ok()?, "form"),
    };
    Some(json!({"format": format, "shape": crate::base::shape::of(&value)}))
}
