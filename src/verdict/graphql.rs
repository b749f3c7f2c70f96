//! The decide phase over a GraphQL operation's root fields: the strictest of their routes
//! decides for the whole document (a document touching a field held for approval is held; one
//! reading allowed fields only is read), and what must be judged alone is alone.

use http::HeaderMap;

use super::{route, Route};
use crate::checks::graphql::Field;
use crate::error::Refusal;
use crate::policy::Agent;

/// The field whose tool decides for the document: the first of the strictest route (held for
/// approval, then previewed, then written, then read). A field held for approval, or charged to
/// a budget, must be the document's only field: an approver judges one call, and a budget is
/// charged for one.
pub(crate) fn decisive(
    agent: &Agent,
    fields: &[Field],
    headers: &HeaderMap,
    undo: bool,
) -> Result<usize, Refusal> {
    let mut best: Option<(usize, u8)> = None;
    for (i, f) in fields.iter().enumerate() {
        let rank = match route(agent, &f.tool, headers, undo)? {
            Route::Read => 0,
            Route::Write(_) => 1,
            Route::Preview => 2,
            Route::Propose => 3,
        };
        if fields.len() > 1 {
            alone(f, rank == 3)?;
        }
        if best.is_none_or(|(_, r)| rank > r) {
            best = Some((i, rank));
        }
    }
    best.map(|(i, _)| i)
        .ok_or_else(|| Refusal::policy("the GraphQL operation selects no root field"))
}

/// Refuses a field that must be alone in its document.
fn alone(f: &Field, held: bool) -> Result<(), Refusal> {
    let why = match (held, f.tool.budget.is_some()) {
        (true, _) => "is held for approval",
        (false, true) => "is charged to a budget",
        (false, false) => return Ok(()),
    };
    Err(Refusal::policy(format!(
        "GraphQL field {} ({}) {why} and must be alone in its document: send it in a request of its own",
        f.root.name, f.tool.name
    )))
}

/// A request to the GraphQL endpoint serving `tools`, evaluated dry: read as GraphQL, each root
/// field held to its contract, then the decide phase of the field that decides.
pub(super) fn evaluate(
    policy: &crate::policy::Policy,
    asked: &super::Asked,
    world: &super::World,
    agent: std::sync::Arc<Agent>,
    tools: Vec<std::sync::Arc<crate::policy::Tool>>,
    at: &super::Target<'_>,
    t: &mut super::Trail,
) -> Result<super::Outcome, Refusal> {
    let agent = super::lend(agent, world, |name| tools.iter().any(|t| t.name == name));
    let via = tools.iter().find(|t| agent.may_use(&t.name)).cloned();
    let via = via.ok_or_else(|| {
        Refusal::policy(format!(
            "agent {} holds no GraphQL field on {}{}; ask for a contract for the field you need",
            agent.id, at.host, at.path
        ))
    });
    let via = t.check("endpoint", via, |v| {
        format!(
            "{} field(s) contracted; the body limit of {}",
            tools.len(),
            v.name
        )
    })?;
    t.check("body size", super::within_limit(&via, asked), |n| {
        format!("{n} bytes")
    })?;
    let parts = super::parts_of(asked);
    let request = crate::checks::graphql::request_of(
        &asked.method,
        asked.url.query(),
        &asked.headers,
        &asked.body,
    );
    let request = t.check("request", request, |_| "GraphQL over HTTP".into())?;
    let limits = crate::checks::graphql::limits(policy, &tools, (at.host, at.port, at.path));
    let op = crate::graphql::extract(&request, &limits).map_err(Refusal::from);
    let op = t.check("operation", op, |op| {
        let names: Vec<String> = op.fields.iter().map(|f| f.name.clone()).collect();
        format!("{} {}", op.kind.as_str(), names.join(", "))
    })?;
    let endpoint = format!("{}{}", at.host, at.path);
    let fields = crate::checks::graphql::fields(&agent, &tools, &endpoint, &parts, &op);
    let mut fields = t.check("fields", fields, |f| {
        let tools: Vec<&str> = f.iter().map(|f| f.tool.name.as_str()).collect();
        format!(
            "each field contracted, its arguments pass: {}",
            tools.join(", ")
        )
    })?;
    for f in &fields {
        t.check("kill switch", super::tool_switch(world, &f.tool), |()| {
            format!("tool {} is not disabled", f.tool.name)
        })?;
    }
    let i = decisive(&agent, &fields, &asked.headers, false)?;
    crate::checks::graphql::response_of(&fields)?;
    let field = fields.swap_remove(i);
    t.tool = Some(field.tool.name.clone());
    let call = super::Decided {
        credential: field.credential,
        amount: field.amount,
        spent: world.spent,
    };
    super::decide(&agent, &field.tool, &asked.headers, call, t)
}
