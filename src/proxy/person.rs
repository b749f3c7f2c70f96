//! The person a request acts for (DESIGN section 16): named by the issued token it came
//! with, or by the signed assertion it carries (verified with its provider's keys, from a file
//! or fetched), or both when they agree; an undo acts for the person of the call it undoes.

use std::sync::Arc;

use super::ctx::{Origin, RequestCtx};
use crate::app::Gate;
use crate::error::{Code, Refusal};
use crate::policy::{EndUser, Policy};

/// The person the request acts for: named by the issued token it came with, or by the signed
/// assertion it carries (verified), or both when they agree. A bad assertion is refused, never
/// ignored.
pub(super) async fn user_of(
    app: &Gate,
    ctx: &mut RequestCtx,
    headers: &http::HeaderMap,
) -> Result<(), Refusal> {
    // An undo acts for the person the call it undoes acted for.
    if let Origin::Undo { .. } = ctx.target.origin {
        ctx.user = ctx.target.user.clone();
        return Ok(());
    }
    let mut given = headers.get_all(crate::identity::ASSERTION_HEADER).iter();
    let (first, second) = (given.next(), given.next());
    if second.is_some() {
        return Err(Refusal::new(
            Code::UserAuthError,
            "Toolgate-User-Assertion is given more than once: send one person's assertion",
        ));
    }
    let assertion = match first {
        None => None,
        Some(v) => Some(v.to_str().map_err(|_| {
            Refusal::new(
                Code::UserAuthError,
                "the user assertion (Toolgate-User-Assertion) is not text: send the token as it was issued",
            )
        })?),
    };
    let of_token = ctx.target.token.as_ref().and_then(|t| {
        t.user.as_ref().map(|u| crate::policy::EndUser {
            id: u.clone(),
            groups: Vec::new(),
            via: format!("token {}", t.id),
            assertion: None,
        })
    });
    let asserted = match assertion {
        Some(a) => Some(asserted(app, &ctx.policy, a.trim()).await?),
        None => None,
    };
    let user = match (of_token, asserted) {
        (Some(t), Some(a)) if t.id != a.id => {
            return Err(Refusal::new(
                Code::UserAuthError,
                format!(
                    "the user assertion names {} but the agent's token was issued for {}: a token issued for a person acts for them only",
                    a.id, t.id
                ),
            ))
        }
        (_, Some(a)) => Some(a),
        (t, None) => t,
    };
    ctx.user = user.map(Arc::new);
    Ok(())
}

/// The person an assertion names, verified with its provider's keys.
async fn asserted(app: &Gate, policy: &Policy, assertion: &str) -> Result<EndUser, Refusal> {
    let read = crate::identity::read(policy, assertion)?;
    let keys = app
        .jwks()
        .of(app.upstream(), &read.provider, read.kid())
        .await
        .map_err(|why| {
            Refusal::new(
                Code::UserAuthError,
                format!("the user assertion (Toolgate-User-Assertion) cannot be verified now: {why}; nothing was sent"),
            )
        })?;
    let mut user = read.verify(&keys)?;
    user.assertion = Some(crate::policy::Assertion {
        provider: read.provider.name.clone(),
        token: Arc::from(assertion),
    });
    Ok(user)
}
