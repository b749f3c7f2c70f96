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
