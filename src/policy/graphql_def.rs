//! `graphql = "mutation.createIssue"`: a GraphQL root field as a contract, checked at load (the
//! operation type, the field's name, what a GraphQL call cannot carry), with the closed schema of
//! its arguments.

use std::sync::Arc;

use serde_json::json;

use crate::graphql::{OperationType, INTROSPECTION_FIELDS};

use super::contract;
use super::file::ToolDef;
use super::template::PathTemplate;
use super::types::{GraphqlSpec, PolicyError};

/// `query.FIELD` or `mutation.FIELD`.
pub(super) fn parse_field(text: &str) -> Result<(OperationType, String), String> {
    let (operation, field) =
        crate::graphql::parse_label(text).map_err(|why| match why.starts_with("is not") {
            true => format!("graphql {text:?} {why}"),
            false => format!("graphql {text:?}: {why}"),
        })?;
    let field = field.as_str();
    let introspection = INTROSPECTION_FIELDS.contains(&field);
    if field.starts_with("__") && !(introspection && operation == OperationType::Query) {
        return Err(format!(
            "graphql {text:?}: names starting with __ are GraphQL's own; of them only query.__schema and query.__type (introspection) can be contracted"
        ));
    }
    Ok((operation, field.to_string()))
}

/// The field a `[[tool]]` with `graphql` contracts, and what such a tool may not carry.
pub(super) fn compile(
    def: &ToolDef,
    template: &PathTemplate,
    load_schema: &dyn Fn(&str) -> Result<Arc<contract::Schema>, PolicyError>,
    err: &dyn Fn(String) -> PolicyError,
) -> Result<Option<GraphqlSpec>, PolicyError> {
    let Some(text) = &def.graphql else {
        return Ok(None);
    };
    let (operation, field) = parse_field(text).map_err(err)?;
    let refuse = |m: &str| Err(err(m.to_string()));
    if def.mcp_tool.is_some() {
        return refuse("a tool is an MCP tool (mcp_tool) or a GraphQL field (graphql), not both");
    }
    if def.body.is_some() || def.query_schema.is_some() {
        return refuse("a GraphQL field describes its arguments (arguments = \"schema.json\"), not a body or query");
    }
    if def.pin.is_some() {
        return refuse("pin is for MCP tools: remove it");
    }
    if def.idempotency.as_deref() == Some("key") {
        return refuse(
            "GraphQL clients send no Idempotency-Key: use idempotency = \"payload\" (the same field with the same arguments within the window is one call)",
        );
    }
    if def.rollback.as_ref().is_some_and(|r| r.none.is_none()) {
        return refuse("a GraphQL field's undo cannot be an HTTP request template yet: declare rollback = { none = \"why\" }");
    }
    if template.params().next().is_some() {
        return refuse(
            "a GraphQL endpoint's path is literal (such as /graphql): remove the {parameters}",
        );
    }
    if !def.params.is_empty() || !def.path_params.is_empty() {
        return refuse("params and path_params bind path parameters, and a GraphQL endpoint has none: bind arguments with rules over request.arguments");
    }
    let arguments = match def.arguments.as_deref() {
        Some(path) => load_schema(path)?,
        // A field declared without arguments takes none.
        None => Arc::new(
            contract::Schema::from_value(
                "(no arguments)",
                json!({"type": "object", "properties": {}}),
            )
            .map_err(err)?,
        ),
    };
    Ok(Some(GraphqlSpec {
        operation,
        field,
        arguments,
    }))
}

/// The method of a GraphQL field's contract: none (or POST). toolgate reads POST requests at
/// the endpoint, and GET requests too for queries, as GraphQL over HTTP allows.
/// Checked first, so that a misnamed field is the error a person reads (not what follows from it).
pub(super) fn method(def: &ToolDef) -> Result<http::Method, String> {
    if let Some(text) = &def.graphql {
        parse_field(text)?;
    }
    match def.method.to_ascii_uppercase().as_str() {
        "" | "POST" => Ok(http::Method::POST),
        other => Err(format!(
            "a GraphQL field is called with POST to its endpoint (or GET, for a query, which toolgate reads without being told); remove method {other:?}"
        )),
    }
}

/// A GraphQL field's response pointer that does not point into the field's own answer
/// (`/data/FIELD`, or `/errors`), as the message that says so; `None` when all do (or the tool
/// is not a GraphQL field).
pub(super) fn outside_field(def: &ToolDef, keep: &[String], hide: &[String]) -> Option<String> {
    let (_, field) = parse_field(def.graphql.as_deref()?).ok()?;
    let own = format!("/data/{field}");
    let inside = |p: &str, base: &str| p == base || p.starts_with(&format!("{base}/"));
    let bad = keep
        .iter()
        .chain(hide)
        .find(|p| !inside(p, &own) && !inside(p, "/errors"))?;
    Some(format!(
        "response field {bad:?}: a GraphQL field's response pointers start at its own answer, {own} (or /errors); for example {own}/issue/url"
    ))
}

/// Whether the tool contracts a query field (which reads, as a GET does).
pub(super) fn is_query(def: &ToolDef) -> bool {
    def.graphql
        .as_deref()
        .and_then(|t| parse_field(t).ok())
        .is_some_and(|(op, _)| op == OperationType::Query)
}
