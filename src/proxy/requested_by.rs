//! Which model answer asked for a contracted call (issue 32): the call is joined to a tool call
//! a model lately asked of the same agent — exactly (the MCP tool, GraphQL field or a name the
//! contract's `model_tools` lists, with arguments that match), by its arguments alone (every
//! value the model gave is in the request), or by name alone. Two candidates at the best level
//! are recorded as ambiguous, never guessed between; none is recorded too.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Value};

use crate::policy::Tool;
use crate::services::model_asks::{ModelAsk, ModelAsks, PER_AGENT};
use crate::services::Whose;

/// What the call carries, as the join reads it.
pub(super) struct Carried<'a> {
    pub(super) arguments: &'a Value,
    pub(super) query: &'a Value,
    pub(super) params: &'a BTreeMap<String, String>,
}

/// The `requested_by` of a call of `tool` by `agent`; `None` when no model answered the agent
/// through toolgate lately (an agent whose model is elsewhere has nothing to join).
pub(super) fn join(
    asks: &ModelAsks,
    whose: &Whose<'_>,
    elsewhere: Option<Vec<ModelAsk>>,
    tool: &Tool,
    carried: &Carried<'_>,
) -> Option<Value> {
    let names: Vec<&str> = tool
        .model_tools
        .iter()
        .map(String::as_str)
        .chain(tool.mcp.as_ref().map(|m| m.name.as_str()))
        .chain(tool.graphql.as_ref().map(|g| g.field.as_str()))
        .collect();
    let mut values = BTreeSet::new();
    scalars(carried.arguments, &mut values);
    scalars(carried.query, &mut values);
    values.extend(carried.params.values().cloned());
    let found = asks.find(whose, elsewhere, |ask| {
        how(ask, &names, carried.arguments, &values)
    })?;
    let described = |ask: &ModelAsk, how: &str| described(ask, how, &values);
    let rank = |how: &str| match how {
        "exact" => 3,
        "arguments" => 2,
        _ => 1,
    };
    let Some(best) = found.iter().map(|(_, how)| rank(how)).max() else {
        return Some(
            json!({"match": "none", "note": "no model request found: the agent made this call on its own (or was led to it by something other than a model answer through toolgate)"}),
        );
    };
    let mut top: Vec<&(ModelAsk, &str)> = found.iter().filter(|(_, h)| rank(h) == best).collect();
    top.dedup_by(|a, b| a.0.call_id == b.0.call_id && a.0.answer_id == b.0.answer_id);
    Some(match top.as_slice() {
        [(ask, how)] => described(ask, how),
        many => json!({
            "match": "ambiguous",
            "candidates": many.iter().take(5).map(|(a, h)| described(a, h)).collect::<Vec<_>>(),
        }),
    })
}

/// Whether a join found the model call it carries out, exactly or by its arguments (no other
/// replica's answers need reading then).
pub(super) fn settled(joined: &Option<Value>) -> bool {
    joined
        .as_ref()
        .is_some_and(|j| matches!(j["match"].as_str(), Some("exact" | "arguments")))
}

/// The most model answers read back from the shared store per call, and how long the read may
/// take (the join is the call's record, not its gate: past it, the call goes on unjoined).
const ELSEWHERE_MOST: usize = 32;
const ELSEWHERE_WITHIN: std::time::Duration = std::time::Duration::from_secs(2);

/// The tool calls models asked of the agent lately through the other replicas of a shared
/// store (their `model_usage` events that asked for tool calls, newest first, within the join
/// window; at most [`PER_AGENT`] calls): one read on the store's pool. `None` on a store of one
/// process, for an agent that holds no model's contract (it cannot reach a model through
/// toolgate), when the others recorded none, or when the store does not answer in time.
pub(super) async fn recorded_elsewhere(
    app: &crate::app::Gate,
    agent: &crate::policy::Agent,
    policy: &crate::policy::Policy,
) -> Option<Vec<ModelAsk>> {
    // The cheap test first: a store of one process has nothing more to give.
    if !app.store().shared() {
        return None;
    }
    let reaches_a_model = (policy.tools().iter())
        .any(|t| t.kind == crate::policy::ToolKind::Model && agent.may_use(&t.name));
    if !reaches_a_model {
        return None;
    }
    let window = app.model_asks().window();
    let since_ms = crate::base::now_ms().saturating_sub(window.as_millis() as u64);
    let index = crate::store::Index::ModelAnswer;
    let read = app
        .store()
        .recent_events(index, &agent.id, since_ms, ELSEWHERE_MOST);
    let events = tokio::time::timeout(ELSEWHERE_WITHIN, read)
        .await
        .ok()?
        .ok()?;
    let asks: Vec<ModelAsk> = (events.iter())
        .filter_map(|bytes| serde_json::from_slice::<crate::audit::Event>(bytes).ok())
        .flat_map(|e| asks_of(&e))
        .take(PER_AGENT)
        .collect();
    (!asks.is_empty()).then_some(asks)
}

/// The tool calls one recorded model answer asked for. Its arguments are as the audit
/// recorded them: a value the audit redacted matches no call (the join then says `name`).
fn asks_of(e: &crate::audit::Event) -> Vec<ModelAsk> {
    let p = &e.payload;
    // Another replica's clock: an answer stamped in the future is taken as asked now.
    let age = crate::base::now_ms().saturating_sub(e.unix_ms);
    let at = std::time::Instant::now()
        .checked_sub(std::time::Duration::from_millis(age))
        .unwrap_or_else(std::time::Instant::now);
    let text = |v: &Value| v.as_str().map(str::to_string);
    (p["tool_calls"].as_array().into_iter().flatten())
        .map(|call| {
            let request = e.request_id.as_deref().unwrap_or("");
            ModelAsk::new(request, text(&p["model"]), text(&p["answer_id"]), call)
                .within(text(&p["asked_in_job"]), e.user.clone())
                .asked_at(at)
        })
        .collect()
}

/// How `ask` matches the call, if it does.
fn how(
    ask: &ModelAsk,
    names: &[&str],
    arguments: &Value,
    values: &BTreeSet<String>,
) -> Option<&'static str> {
    let named = names.contains(&ask.name.as_str());
    let mut asked = BTreeSet::new();
    scalars(&ask.arguments, &mut asked);
    let all_found = !asked.is_empty() && asked.is_subset(values);
    match (named, all_found || ask.arguments == *arguments) {
        (true, true) => Some("exact"),
        (false, true) if all_found => Some("arguments"),
        (true, false) => Some("name"),
        _ => None,
    }
}

/// Every scalar of a JSON value, as text (numbers and booleans as JSON writes them).
fn scalars(v: &Value, out: &mut BTreeSet<String>) {
    match v {
        Value::String(s) => {
            out.insert(s.clone());
        }
        Value::Number(n) => {
            out.insert(n.to_string());
        }
        Value::Bool(b) => {
            out.insert(b.to_string());
        }
        Value::Array(items) => items.iter().for_each(|i| scalars(i, out)),
        Value::Object(m) => m.values().for_each(|i| scalars(i, out)),
        Value::Null => {}
    }
}

/// One candidate: the model's tool call, how it matched, and which of its arguments the call
/// carries (by name, at the top of the model's input).
fn described(ask: &ModelAsk, how: &str, values: &BTreeSet<String>) -> Value {
    let matched: Vec<&String> = ask
        .arguments
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, v)| {
            let mut mine = BTreeSet::new();
            scalars(v, &mut mine);
            !mine.is_empty() && mine.is_subset(values)
        })
        .map(|(k, _)| k)
        .collect();
    json!({
        "model_request": ask.request_id,
        "model": ask.model,
        "answer_id": ask.answer_id,
        "tool_call_id": ask.call_id,
        "tool": ask.name,
        "arguments": ask.arguments,
        "match": how,
        "matched_fields": matched,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(name: &str, arguments: Value) -> ModelAsk {
        ModelAsk::new(
            "req_m",
            Some("m".into()),
            Some("msg_1".into()),
            &json!({"name": name, "id": "c1", "arguments": arguments}),
        )
    }

    fn values(v: &Value) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        scalars(v, &mut out);
        out
    }

    #[test]
    fn a_call_matches_by_name_and_values_by_values_or_by_name_alone() {
        let asked = ask(
            "refund_payment",
            json!({"payment_intent": "pi_1", "amount": 500}),
        );
        // A form body carries the amount as text: the values still match.
        let sent = json!({"payment_intent": "pi_1", "amount": "500", "reason": "x"});
        let names = ["refund_payment"];
        assert_eq!(how(&asked, &names, &sent, &values(&sent)), Some("exact"));
        assert_eq!(how(&asked, &[], &sent, &values(&sent)), Some("arguments"));
        let other = json!({"payment_intent": "pi_2", "amount": "500"});
        assert_eq!(how(&asked, &names, &other, &values(&other)), Some("name"));
        assert_eq!(how(&asked, &[], &other, &values(&other)), None);
        // A model call with no values never matches by values alone.
        let empty = ask("ping", json!({}));
        assert_eq!(how(&empty, &[], &json!({}), &BTreeSet::new()), None);
    }
}
