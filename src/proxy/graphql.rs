//! A GraphQL endpoint (DESIGN section 15): every operation behind one `POST /graphql`, told
//! apart by the document. The request is read as GraphQL over HTTP, its operation chosen and
//! checked (`crate::graphql`), and each root field held to the contract that names it
//! (`checks::graphql`); the strictest field decides for the whole document
//! (`verdict::graphql`), whose call then takes the request path's decide phase as one call:
//! read, written once (by field and arguments), held for approval or previewed. Refusals are
//! answered in GraphQL's own error shape, so that `gh` and Octokit print toolgate's message.

use std::sync::Arc;

use http::{Request, Response};
use serde_json::{json, Value};

use super::body::{self, ProxyBody};
use super::ctx::{Reply, RequestCtx};
use super::read::read_body;
use super::request::{self, Answer, Fielded};
use crate::app::Gate;
use crate::checks::graphql::{self as checks, Field};
use crate::error::Refusal;
use crate::graphql::{self, Operation};
use crate::policy::{Agent, Tool};

/// A request to a GraphQL endpoint serving `tools`.
#[tracing::instrument(level = "debug", name = "graphql", skip_all, fields(request_id = %ctx.id, phase = "graphql"))]
pub(super) async fn process(
    app: &Arc<Gate>,
    ctx: &mut RequestCtx,
    agent: Arc<Agent>,
    tools: Vec<Arc<Tool>>,
    req: Request<ProxyBody>,
) -> Result<Answer, Refusal> {
    ctx.reply = Reply::Graphql;
    ctx.owner = Some(agent.owner.clone());
    let agent = crate::grants::for_tools(app, agent, &tools).await?;
    let (host, port, path) = (&ctx.target.host, ctx.target.port, req.uri().path());
    let at = format!("{host}{path}");
    // The body is read with the limits of a field the agent holds here.
    let Some(via) = tools.iter().find(|t| agent.may_use(&t.name)).cloned() else {
        return Err(Refusal::policy(format!(
            "agent {} holds no GraphQL field on {at}; ask for a contract for the field you need",
            agent.id
        )));
    };
    // A GET's query string is the document and its variables: not recorded where a contract
    // redacts an argument (the decision event records the arguments, redacted).
    if tools.iter().any(|t| !t.redact.is_empty()) {
        ctx.redact_asked_query();
    }
    let limits = checks::limits(&ctx.policy, &tools, (host, port, path));
    let (parts, incoming) = req.into_parts();
    let read = read_body(app, &agent.id, &via, parts, incoming).await?;
    let parts = &read.parts;
    let asked = checks::request_of(&parts.method, parts.uri.query(), &parts.headers, &read.body)?;
    let op = graphql::extract(&asked, &limits)?;
    let mut fields = checks::fields(&agent, &tools, &at, parts, &op)?;
    for f in &fields {
        request::tool_enabled(app, &f.tool)?;
    }
    let undo = ctx.target.undoes().is_some();
    let i = crate::verdict::graphql::decisive(&agent, &fields, &parts.headers, undo)?;
    let response = checks::response_of(&fields)?;
    let body_event = body_event(&op, &fields, &asked.query, read.body.len());
    admit_others(app, &agent, &fields, i).await?;
    let field = fields.swap_remove(i);
    ctx.matched(&field.tool);
    let fielded = Fielded {
        op,
        field,
        response,
        body_event,
    };
    let checked = request::graphql_call(ctx, agent, fielded, read)?;
    match request::decide(app, ctx, checked).await? {
        Answer::Preview(call) => Ok(Answer::Stored(preview(
            &ctx.id,
            call.tool(),
            call.arguments(),
        ))),
        answer => Ok(answer),
    }
}

/// A dry run as a GraphQL client reads it: no data, and an error whose message says what
/// toolgate would have sent (the deciding field and its arguments) and that nothing was.
fn preview(request_id: &str, tool: &Tool, arguments: &Value) -> Response<ProxyBody> {
    let field = tool.graphql.as_ref().map(|g| g.label()).unwrap_or_default();
    let message = format!(
        "dry run: toolgate would send GraphQL field {field} with arguments {arguments}; nothing was sent (tool {} runs in dry-run mode for this agent)",
        tool.name
    );
    let answer = json!({
        "data": null,
        "errors": [{"message": message, "extensions": {
            "code": "dry_run", "request_id": request_id, "tool": tool.name, "arguments": arguments,
        }}],
    });
    let mut resp = Response::new(body::full(answer.to_string()));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp.headers_mut()
        .insert("toolgate-dry-run", http::HeaderValue::from_static("true"));
    resp
}

/// The rate limits of the fields besides the one that decides (whose own the decide phase
/// admits), for a document sent at once: every field sent counts.
async fn admit_others(
    app: &Gate,
    agent: &Agent,
    fields: &[Field],
    decisive: usize,
) -> Result<(), Refusal> {
    let headers = http::HeaderMap::new();
    let sent_at_once = matches!(
        crate::verdict::route(agent, &fields[decisive].tool, &headers, false),
        Ok(crate::verdict::Route::Read | crate::verdict::Route::Write(_))
    );
    if !sent_at_once {
        return Ok(());
    }
    let mut admitted: Vec<&str> = vec![&fields[decisive].tool.name];
    for f in fields {
        if !admitted.contains(&f.tool.name.as_str()) {
            app.limiter().admit(&agent.id, &f.tool).await?;
            admitted.push(&f.tool.name);
        }
    }
    Ok(())
}

/// The operation as the audit log records it: each root field with its contract and its
/// arguments (fields the contract names redacted); the document itself only when no contract
/// redacts anything (a literal in it could be a redacted value).
fn body_event(op: &Operation, fields: &[Field], document: &str, bytes: usize) -> Value {
    let listed: Vec<Value> = fields
        .iter()
        .map(|f| {
            let mut arguments = f.root.arguments.clone();
            for pointer in &f.tool.redact {
                if let Some(v) = arguments.pointer_mut(pointer) {
                    *v = Value::String(crate::audit::REDACTED.into());
                }
            }
            json!({
                "field": f.root.name,
                "alias": f.root.alias,
                "tool": f.tool.name,
                "arguments": arguments,
            })
        })
        .collect();
    let mut graphql = json!({
        "operation": op.kind.as_str(),
        "name": op.name,
        "fields": listed,
    });
    if fields.iter().all(|f| f.tool.redact.is_empty()) {
        graphql["document"] =
            Value::String(crate::audit::cap_text(document, crate::audit::BODY_CAP));
    }
    json!({ "graphql": graphql, "bytes": bytes })
}

/// A refusal as a GraphQL client reads it: toolgate's status and headers, and a body in
/// GraphQL's `errors` shape with toolgate's code and the request id.
pub(super) fn refusal_answer(refusal: Refusal, request_id: &str) -> Response<ProxyBody> {
    let errors = graphql::errors_body(&refusal, request_id).to_string();
    let mut resp = refusal.into_response(request_id);
    *resp.body_mut() = body::full(errors);
    resp
}
