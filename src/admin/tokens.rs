//! Short-lived agent tokens (DESIGN section 10): issued by an approver in group `admin` (or in
//! a group the agent names in `token_issuers`), shown once, stored as a hash, ended by expiry
//! or revocation. `POST /api/agents/{id}/tokens`, `DELETE /api/tokens/{id}`, `GET /api/tokens`.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::auth::{api_error, Approver};
use crate::app::Console;
use crate::model::AgentToken;

/// The longest a token may live.
const MAX_TTL_SECS: u64 = 7 * 24 * 3600;

#[derive(Deserialize)]
pub struct Issue {
    /// How long it lives, e.g. 15m (at most 7 days).
    ttl: String,
    /// The job its calls belong to.
    job: Option<String>,
    /// The person its calls act for.
    user: Option<String>,
}

#[derive(Deserialize, Default)]
pub struct ListQuery {
    agent: Option<String>,
}

fn store_down(e: crate::store::StoreError) -> Response {
    super::auth::store_down("token", e).into_response()
}

fn expires(t: &AgentToken) -> String {
    crate::audit::rfc3339(t.expires_unix.saturating_mul(1000))
}

/// Claims a job-bound token's job for its agent, as its first call naming the job would: a
/// job another agent (of another owner) holds is refused, so the token cannot put calls into
/// someone else's story or rollback set.
async fn claim_job(app: &Console, agent: &crate::policy::Agent, job: &str) -> Result<(), Response> {
    if !crate::base::job_id_ok(job) {
        return Err(api_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_error",
            format!("job must be {}", crate::base::JOB_ID_RULE),
        )
        .into_response());
    }
    match app.store().job_claim(job, &agent.id, &agent.owner).await {
        Ok(None) => Ok(()),
        Ok(Some(holder)) => Err(api_error(
            StatusCode::CONFLICT,
            "conflict",
            format!("job {job} belongs to agent {holder}; choose another job id"),
        )
        .into_response()),
        Err(e) => Err(store_down(e)),
    }
}

/// Whether `who` may issue a token for `agent_id` that lasts `ttl`: the agent, and the lifetime
/// in seconds; else the API's refusal (404, 403, or 422 for a lifetime outside 1s to 7d).
fn may_issue(
    app: &Console,
    who: &crate::policy::Approver,
    agent_id: &str,
    ttl: &str,
) -> Result<(Arc<crate::policy::Agent>, u64), super::auth::ApiError> {
    let Some(agent) = app.policy().agent(agent_id).cloned() else {
        let message = format!("no agent {agent_id}");
        return Err(api_error(StatusCode::NOT_FOUND, "not_found", message));
    };
    if !agent.token_issuer(who) {
        let message = format!(
            "{} may not issue tokens for {agent_id}: that takes group admin or one of its token_issuers",
            who.id
        );
        return Err(api_error(StatusCode::FORBIDDEN, "forbidden", message));
    }
    match crate::base::lifetime_secs(ttl, MAX_TTL_SECS) {
        Some(secs) => Ok((agent, secs)),
        None => {
            let message = format!("ttl {ttl:?} must be a duration from 1s to 7d, e.g. 15m");
            let status = StatusCode::UNPROCESSABLE_ENTITY;
            Err(api_error(status, "validation_error", message))
        }
    }
}

/// `POST /api/agents/{id}/tokens`: a new token, shown once.
pub async fn issue(
    State(app): State<Arc<Console>>,
    Approver(who): Approver,
    Path(agent_id): Path<String>,
    Json(ask): Json<Issue>,
) -> Response {
    let (agent, ttl) = match may_issue(&app, &who, &agent_id, &ask.ttl) {
        Ok(allowed) => allowed,
        Err(refused) => return refused.into_response(),
    };
    let job = ask.job.filter(|j| !j.is_empty());
    if let Some(job) = &job {
        if let Err(e) = claim_job(&app, &agent, job).await {
            return e;
        }
    }
    let user = ask.user.filter(|u| !u.is_empty());
    if user
        .as_deref()
        .is_some_and(|u| !crate::identity::user_id_ok(u))
    {
        let message = format!("user: {}", crate::identity::USER_ID_RULE);
        return api_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_error",
            message,
        )
        .into_response();
    }
    let token = format!("tgt_{}", hex::encode(rand::random::<[u8; 24]>()));
    let now = crate::base::now_unix();
    let issued = AgentToken {
        id: crate::base::new_id("tok"),
        agent: agent_id.clone(),
        job,
        sha256: hex::encode(Sha256::digest(token.as_bytes())),
        issued_by: who.id.clone(),
        issued_unix: now,
        expires_unix: now + ttl,
        revoked: false,
        user,
    };
    if let Err(e) = app.store().token_put(&issued).await {
        return store_down(e);
    }
    app.audit()
        .record(crate::audit::Record {
            kind: crate::audit::Kind::TokenIssued,
            agent: Some(agent_id.clone()),
            job: issued.job.clone(),
            token: Some(issued.id.clone()),
            user: issued.user.clone(),
            payload: json!({"token": issued.id, "by": who.id, "expires": expires(&issued)}),
            ..Default::default()
        })
        .await;
    (
        StatusCode::CREATED,
        Json(json!({
            "id": issued.id, "token": token, "agent": agent_id,
            "job": issued.job, "user": issued.user, "expires": expires(&issued),
        })),
    )
        .into_response()
}

/// `DELETE /api/tokens/{id}`: the token stops working at once.
pub async fn revoke(
    State(app): State<Arc<Console>>,
    Approver(who): Approver,
    Path(id): Path<String>,
) -> Response {
    let mut token = match app.store().token_get(&id).await {
        Ok(Some(t)) => t,
        Ok(None) => {
            return api_error(StatusCode::NOT_FOUND, "not_found", format!("no token {id}"))
                .into_response()
        }
        Err(e) => return store_down(e),
    };
    let may = app
        .policy()
        .agent(&token.agent)
        .is_some_and(|a| a.token_issuer(&who));
    if !may {
        return api_error(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("{} may not revoke tokens of {}", who.id, token.agent),
        )
        .into_response();
    }
    token.revoked = true;
    if let Err(e) = app.store().token_put(&token).await {
        return store_down(e);
    }
    app.principals().token_changed(&token.id).await;
    app.audit()
        .record(crate::audit::Record {
            kind: crate::audit::Kind::TokenRevoked,
            agent: Some(token.agent.clone()),
            token: Some(token.id.clone()),
            payload: json!({"token": token.id, "by": who.id}),
            ..Default::default()
        })
        .await;
    Json(json!({"id": token.id, "revoked": true})).into_response()
}

/// `GET /api/tokens[?agent=ID]`: live tokens (never the tokens themselves).
pub async fn list(
    State(app): State<Arc<Console>>,
    _: Approver,
    Query(q): Query<ListQuery>,
) -> Response {
    let now = crate::base::now_unix();
    let tokens = match app.store().token_list(now).await {
        Ok(t) => t,
        Err(e) => return store_down(e),
    };
    let live: Vec<_> = tokens
        .iter()
        .filter(|t| t.live(now))
        .filter(|t| q.agent.as_deref().is_none_or(|a| t.agent == a))
        .map(|t| {
            json!({"id": t.id, "agent": t.agent, "job": t.job, "user": t.user, "issued_by": t.issued_by,
                   "expires": expires(t)})
        })
        .collect();
    Json(json!({ "tokens": live })).into_response()
}
