//! GraphQL as toolgate reads it: a GraphQL-over-HTTP request (`http`) parsed with
//! `apollo-parser`, its operation chosen, fragments expanded, and every root field it touches
//! listed with its alias and its arguments after variable substitution (`walk`, `value`), so that
//! each root field can be held to a contract (`graphql = "mutation.createIssue"`) as a REST call
//! or an MCP tool is. What toolgate cannot hold to a contract is refused with a typed
//! [`GraphqlError`]: subscriptions, introspection, too deep or too wide documents, a mutation
//! called twice, directives other than `@include`/`@skip`, variables of the wrong type, a
//! mutation over GET.
//!
//! Fields under `@include`/`@skip` count as touched whatever the condition: toolgate judges
//! what the document could run.

mod error;
mod http;
mod types;
mod value;
mod walk;

use serde_json::Value;

pub use error::{errors_body, GraphqlError};
pub use http::{Request, Via};
pub use types::{name_of, TypeRef};
pub use value::constant;

/// The parser's own nesting limit (selection sets, lists and objects in values, list types):
/// deep enough for any document within [`Limits::max_depth`], low enough that parsing never
/// runs out of stack on a proxy worker thread.
const PARSER_RECURSION: usize = 200;

/// Tokens parsed at most: the body limit already bounds a request, this bounds the tree.
const PARSER_TOKENS: usize = 200_000;

/// What an operation runs: GraphQL's three operation types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OperationType {
    Query,
    Mutation,
    Subscription,
}

impl OperationType {
    /// `query`, `mutation` or `subscription`, as written in a document and in a contract.
    pub fn as_str(self) -> &'static str {
        match self {
            OperationType::Query => "query",
            OperationType::Mutation => "mutation",
            OperationType::Subscription => "subscription",
        }
    }

    pub fn parse(s: &str) -> Option<OperationType> {
        match s {
            "query" => Some(OperationType::Query),
            "mutation" => Some(OperationType::Mutation),
            "subscription" => Some(OperationType::Subscription),
            _ => None,
        }
    }
}

/// Whether `name` is a GraphQL name (`[_A-Za-z][_0-9A-Za-z]*`).
pub fn is_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b == b'_' || b.is_ascii_alphabetic())
        && bytes.all(|b| b == b'_' || b.is_ascii_alphanumeric())
}

/// A root field as a contract or a command names it, `OPERATION.FIELD` (`mutation.createIssue`):
/// a query or a mutation (subscriptions cannot be contracted) and a GraphQL name. The message
/// says what to write instead; the caller says where it was written.
pub fn parse_label(text: &str) -> Result<(OperationType, String), String> {
    let Some((op, field)) = text.split_once('.') else {
        return Err(
            "is not OPERATION.FIELD: write query.FIELD or mutation.FIELD (for example mutation.createIssue)".into(),
        );
    };
    let operation = match OperationType::parse(op) {
        Some(OperationType::Subscription) => {
            return Err(
                "subscriptions cannot be contracted (toolgate refuses them); choose a query or a mutation".into(),
            )
        }
        Some(t) => t,
        None => {
            return Err(format!(
                "unknown operation type {op:?}: write query.{field} or mutation.{field}"
            ))
        }
    };
    if !is_name(field) {
        return Err(format!(
            "{field:?} is not a GraphQL field name (letters, digits and _, not starting with a digit)"
        ));
    }
    Ok((operation, field.to_string()))
}

/// The root fields that read the schema itself.
pub const INTROSPECTION_FIELDS: [&str; 2] = ["__schema", "__type"];

/// How large a document may be, and whether it may read the schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Fields nested at most this deep (a root field is at depth 1).
    pub max_depth: usize,
    /// Distinct root fields at most.
    pub max_root_fields: usize,
    /// `__schema` and `__type` are listed as root fields instead of refused.
    pub allow_introspection: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_depth: 15,
            max_root_fields: 10,
            allow_introspection: false,
        }
    }
}

/// One root field the operation runs.
#[derive(Debug, Clone, PartialEq)]
pub struct RootField {
    /// The alias it is asked under, if any.
    pub alias: Option<String>,
    /// The schema's field name (`createIssue`).
    pub name: String,
    /// Its arguments as a JSON object, variables substituted; an argument naming a variable
    /// that was not passed (and has no default) is left out, as GraphQL does.
    pub arguments: Value,
    /// Whether an alias is written anywhere below it (its answer then has keys a response
    /// contract's pointers do not name).
    pub nested_alias: bool,
    /// Whether it executes: `false` when an `@skip`/`@include` condition turns it off. Such a
    /// field is still held to its contract (toolgate judges what the document could run), but
    /// is no part of what the call does (its identity).
    pub runs: bool,
}

impl RootField {
    /// The key its result has in the answer's `data`: the alias, else the name.
    pub fn key(&self) -> &str {
        self.alias.as_deref().unwrap_or(&self.name)
    }
}

/// The operation a request runs and the root fields it touches, in document order.
#[derive(Debug, Clone, PartialEq)]
pub struct Operation {
    pub kind: OperationType,
    pub name: Option<String>,
    pub fields: Vec<RootField>,
}

/// Reads a request: parses the document, chooses the operation, checks it, lists its root fields.
pub fn extract(req: &Request, limits: &Limits) -> Result<Operation, GraphqlError> {
    let tree = apollo_parser::Parser::new(&req.query)
        .recursion_limit(PARSER_RECURSION)
        .token_limit(PARSER_TOKENS)
        .parse();
    if let Some(e) = tree.errors().next() {
        // The parser's message quotes the token it met (`expected Name, got "4111…"`): the
        // token could be a value the audit redacts, so only what was expected is said.
        let message = e.message();
        let message = message.split(", got ").next().unwrap_or(message);
        return Err(GraphqlError::Syntax(format!(
            "{message} at byte {}",
            e.index()
        )));
    }
    let defs = walk::Definitions::of(tree.document())?;
    let op = defs.select(req.operation_name.as_deref())?;
    let kind = walk::operation_type(op);
    match (kind, req.via) {
        (OperationType::Subscription, _) => {
            return Err(GraphqlError::Subscription(walk::first_field(op)))
        }
        (OperationType::Mutation, Via::Get) => {
            return Err(GraphqlError::MutationOverGet(walk::first_field(op)))
        }
        _ => {}
    }
    walk::directives(op.directives(), "the operation")?;
    for def in op
        .variable_definitions()
        .iter()
        .flat_map(|d| d.variable_definitions())
    {
        let name = types::name_of(def.variable().and_then(|v| v.name()));
        walk::directives(def.directives(), &format!("variable ${name}"))?;
    }
    let vars = value::Variables::resolve(op.variable_definitions(), &req.variables)?;
    let mut fields = Vec::new();
    walk::Walk::new(&defs, &vars, limits).roots(op.selection_set(), &mut fields, true)?;
    check_fields(kind, &fields, limits)?;
    Ok(Operation {
        kind,
        name: op.name().map(|n| n.text().to_string()),
        fields,
    })
}

/// The limits and rules on the root fields as a whole.
fn check_fields(
    kind: OperationType,
    fields: &[RootField],
    limits: &Limits,
) -> Result<(), GraphqlError> {
    if fields.len() > limits.max_root_fields {
        return Err(GraphqlError::TooManyFields {
            count: fields.len(),
            limit: limits.max_root_fields,
        });
    }
    if !limits.allow_introspection {
        if let Some(f) = fields
            .iter()
            .find(|f| INTROSPECTION_FIELDS.contains(&f.name.as_str()))
        {
            return Err(GraphqlError::Introspection(f.name.clone()));
        }
    }
    if kind == OperationType::Mutation {
        for (i, f) in fields.iter().enumerate() {
            let same: Vec<&str> = fields[i..]
                .iter()
                .filter(|o| o.name == f.name)
                .map(RootField::key)
                .collect();
            if same.len() > 1 {
                return Err(GraphqlError::RepeatedMutation {
                    field: f.name.clone(),
                    keys: same.join(", "),
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
