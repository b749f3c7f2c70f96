//! The policy phases over a GraphQL request: the request read as GraphQL over HTTP, its
//! operation's root fields each held to the contract that names it (the agent may use it, its
//! arguments pass its schema and rules), the one credential the request can carry, and the
//! response contract its answer is held to. The proxy's GraphQL adapter runs them on every
//! request; a commit runs them again on the stored request ([`recheck`]).

use std::sync::Arc;

use http::{header, Method};
use sha2::{Digest, Sha256};

use super::{authorize, forwarded_headers, validation, Rechecked, StoredCall};
use crate::error::Refusal;
use crate::graphql::{self, Limits, Operation, RootField, INTROSPECTION_FIELDS};
use crate::policy::contract;
use crate::policy::response::ResponseSpec;
use crate::policy::{Agent, Credential, Policy, Tool};

/// One root field of an operation, with the contract that names it and what that contract
/// gives the call: the credential for the agent's environment, and what it asks of the budget.
pub(crate) struct Field {
    pub root: RootField,
    pub tool: Arc<Tool>,
    pub credential: Option<Arc<Credential>>,
    pub amount: Option<f64>,
}

/// The request as GraphQL over HTTP: a POST's JSON body, or a GET's query string.
pub(crate) fn request_of(
    method: &Method,
    query: Option<&str>,
    headers: &http::HeaderMap,
    body: &[u8],
) -> Result<graphql::Request, Refusal> {
    match *method {
        Method::GET if !body.is_empty() => Err(validation(
            "a GraphQL GET carries its request in the query string only: send no body",
        )),
        Method::GET if query.is_some_and(|q| q.contains(';')) => Err(validation(
            "a GraphQL GET's query string must not contain a raw ';' (some servers split parameters on it): encode it as %3B",
        )),
        Method::GET => Ok(graphql::Request::from_query_string(query.unwrap_or(""))?),
        Method::POST if query.is_some() => Err(validation(
            "a GraphQL POST carries its request in the body only: send no query string (some servers read query, variables or operationName from it first)",
        )),
        Method::POST => {
            let json = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split(';').next())
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
            if !json {
                return Err(validation(
                    "a GraphQL POST is JSON: send Content-Type: application/json with {\"query\", \"variables\", \"operationName\"}",
                ));
            }
            let body = contract::parse_json_strict(body)
                .map_err(|e| validation(format!("a GraphQL POST body must be JSON: {e}")))?;
            Ok(graphql::Request::from_json(&body)?)
        }
        ref other => Err(Refusal::policy(format!(
            "a GraphQL endpoint takes POST (and GET for queries), not {other}"
        ))),
    }
}

/// The limits a document at an endpoint is read with: the endpoint's own (or the defaults),
/// introspection allowed when a contract there names `__schema` or `__type`.
pub(crate) fn limits(policy: &Policy, tools: &[Arc<Tool>], at: (&str, u16, &str)) -> Limits {
    let (host, port, path) = at;
    let mut limits = policy.graphql_limits(host, port, path);
    limits.allow_introspection = tools.iter().any(|t| {
        t.graphql
            .as_ref()
            .is_some_and(|g| INTROSPECTION_FIELDS.contains(&g.field.as_str()))
    });
    limits
}

/// Each root field of `op` held to its contract among `tools` (the endpoint's): a field no
/// contract names is refused, and so is one the agent may not use or whose arguments fail the
/// contract's schema, rules or budget field. `at` names the endpoint in messages.
pub(crate) fn fields(
    agent: &Agent,
    tools: &[Arc<Tool>],
    at: &str,
    parts: &http::request::Parts,
    op: &Operation,
) -> Result<Vec<Field>, Refusal> {
    let mut out = Vec::with_capacity(op.fields.len());
    for root in &op.fields {
        let label = format!("{}.{}", op.kind.as_str(), root.name);
        let tool = tools
            .iter()
            .find(|t| {
                t.graphql
                    .as_ref()
                    .is_some_and(|g| g.operation == op.kind && g.field == root.name)
            })
            .cloned()
            .ok_or_else(|| {
                Refusal::policy(format!(
                    "no contract allows GraphQL field {label} on {at}; ask only for the fields your contracts name (toolgate refused the whole document, nothing was sent)"
                ))
            })?;
        let (credential, amount) = field_checks(agent, &tool, parts, root)?;
        out.push(Field {
            root: root.clone(),
            tool,
            credential,
            amount,
        });
    }
    one_credential(&out)?;
    Ok(out)
}

/// One field's checks: the agent may use its contract (with the credential of its
/// environment), and its arguments pass the schema, the rules and the budget field.
fn field_checks(
    agent: &Agent,
    tool: &Tool,
    parts: &http::request::Parts,
    root: &RootField,
) -> Result<(Option<Arc<Credential>>, Option<f64>), Refusal> {
    let credential = authorize(agent, tool, &Default::default())?;
    forwarded_headers(tool, &parts.headers)?;
    let amount = super::arguments_pass(agent, tool, parts, &root.arguments)?;
    Ok((credential, amount))
}

/// A request carries one credential: fields whose contracts send different ones cannot share
/// a document.
fn one_credential(fields: &[Field]) -> Result<(), Refusal> {
    let name = |f: &Field| f.credential.as_ref().map(|c| c.name.clone());
    let Some(first) = fields.first() else {
        return Ok(());
    };
    match fields.iter().find(|f| name(f) != name(first)) {
        None => Ok(()),
        Some(other) => Err(Refusal::policy(format!(
            "GraphQL fields {} and {} are sent with different credentials: send them in separate requests",
            first.root.name, other.root.name
        ))),
    }
}

/// The response contract the answer to `fields` is held to: none when no field has one; the
/// field's own when it is the only field; else the fields' contracts together (hidden fields
/// of each hidden; kept fields of each kept, and the whole answer of a field whose contract
/// keeps it whole; a schema only for a field alone). A field with a response contract must be
/// asked without an alias: its pointers are written at `/data/FIELD`.
pub(crate) fn response_of(fields: &[Field]) -> Result<Option<Arc<ResponseSpec>>, Refusal> {
    let with: Vec<(&Field, &Arc<ResponseSpec>)> = fields
        .iter()
        .filter_map(|f| f.tool.response.as_ref().map(|r| (f, r)))
        .collect();
    if let Some((f, _)) = with
        .iter()
        .find(|(f, r)| f.root.nested_alias && !r.hide.is_empty())
    {
        return Err(Refusal::policy(format!(
            "GraphQL field {} hides fields of its answer, and the document asks for some of them under an alias: ask for its fields without aliases",
            f.root.name
        )));
    }
    if let Some((f, _)) = with.iter().find(|(f, _)| f.root.alias.is_some()) {
        return Err(Refusal::policy(format!(
            "GraphQL field {} is asked under the alias {:?}, and its contract's response rules apply at /data/{}: ask for it without an alias",
            f.root.name,
            f.root.key(),
            f.root.name
        )));
    }
    match (with.as_slice(), fields.len()) {
        ([], _) => Ok(None),
        ([(_, spec)], 1) => Ok(Some((*spec).clone())),
        _ => Ok(Some(Arc::new(together(fields)))),
    }
}

/// Several fields' response contracts as one.
fn together(fields: &[Field]) -> ResponseSpec {
    let mut spec = ResponseSpec::default();
    let keeps_fields = fields
        .iter()
        .any(|f| f.tool.response.as_ref().is_some_and(|r| !r.keep.is_empty()));
    for f in fields {
        let own = f.tool.response.as_deref();
        spec.hide
            .extend(own.iter().flat_map(|r| r.hide.iter().cloned()));
        if !keeps_fields {
            continue;
        }
        match own.filter(|r| !r.keep.is_empty()) {
            Some(r) => spec.keep.extend(r.keep.iter().cloned()),
            None => spec.keep.push(format!("/data/{}", escape(f.root.key()))),
        }
    }
    if keeps_fields {
        spec.keep.push("/errors".into());
    }
    spec
}

/// A key as a JSON pointer token.
fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// What makes two GraphQL calls the same call: the operation type, and each root field that
/// runs with its arguments (not aliases, not the fields selected from the answer, not a field
/// `@skip` turns off), in document order.
pub(crate) fn identity(op: &Operation) -> String {
    let mut h = Sha256::new();
    h.update(b"graphql\0");
    h.update(op.kind.as_str());
    for f in op.fields.iter().filter(|f| f.runs) {
        h.update([0]);
        h.update(crate::mcp::call_identity(&f.name, &f.arguments));
    }
    hex::encode(h.finalize())
}

/// [`super::recheck`] of a stored GraphQL request (an approved proposal at commit): the
/// endpoint still serves `tool`'s field, and every root field of the stored document is still
/// contracted, allowed to the agent, with arguments that pass. The body is the arguments of
/// `tool`'s field.
pub(crate) fn recheck(
    policy: &Policy,
    agent: &Agent,
    tool: &Tool,
    call: &StoredCall<'_>,
    uri: &http::Uri,
) -> Result<Rechecked, Refusal> {
    let path = uri.path();
    let tools = policy.graphql_endpoint(call.host, call.port, path);
    let gone = || {
        Refusal::policy(format!(
            "GraphQL field {} is no longer contracted at {}{path}",
            tool.name, call.host
        ))
    };
    if !tools.iter().any(|t| t.name == tool.name) {
        return Err(gone());
    }
    let request = request_of(call.method, uri.query(), call.headers, call.body)?;
    let op = graphql::extract(
        &request,
        &limits(policy, &tools, (call.host, call.port, path)),
    )?;
    let mut req = http::Request::new(());
    *req.method_mut() = call.method.clone();
    *req.uri_mut() = uri.clone();
    *req.headers_mut() = call.headers.clone();
    let (parts, ()) = req.into_parts();
    let at = format!("{}{path}", call.host);
    let mut fields = fields(agent, &tools, &at, &parts, &op)?;
    let i = fields
        .iter()
        .position(|f| f.tool.name == tool.name)
        .ok_or_else(gone)?;
    let field = fields.swap_remove(i);
    Ok(Rechecked {
        credential: field.credential,
        body: field.root.arguments,
    })
}
