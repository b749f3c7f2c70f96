//! Why a GraphQL request is refused: one variant per failure, each with the stable code it is
//! answered with and a message that names the field (or variable, fragment, directive) and says
//! what to change.

use serde_json::{json, Value};

use crate::error::{Code, Refusal};

/// A GraphQL request toolgate will not pass on.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GraphqlError {
    /// The HTTP request is not GraphQL over HTTP (no `query`, `variables` not an object…).
    #[error("not a GraphQL request: {0}")]
    Request(String),
    /// The document does not parse.
    #[error("the GraphQL document does not parse: {0}; send one valid GraphQL document")]
    Syntax(String),
    /// The document is valid syntax but not an executable request (type definitions, an
    /// undefined or repeated name, a fragment that spreads itself, a variable not declared…).
    #[error("the GraphQL document is not a valid request: {0}")]
    Invalid(String),
    /// Several operations, and no `operationName` to choose one.
    #[error("the document holds {count} operations ({names}) and no operationName says which to run: send one operation per request, or name it in operationName")]
    SeveralOperations { count: usize, names: String },
    /// `operationName` names no operation of the document.
    #[error("operationName {0:?} names no operation of the document")]
    UnknownOperation(String),
    /// A `subscription`: a stream toolgate cannot hold to a contract.
    #[error(
        "subscriptions are not allowed through toolgate (field {0}): use a query or a mutation"
    )]
    Subscription(String),
    /// A mutation sent as GET (GraphQL over HTTP allows only queries there).
    #[error("mutation {0} was sent as GET: send mutations with POST")]
    MutationOverGet(String),
    /// `__schema` or `__type` without a contract that allows it.
    #[error("introspection ({0}) is not allowed: no contract allows it")]
    Introspection(String),
    /// Fields nested deeper than the limit.
    #[error("field {field} has fields nested more than {limit} levels deep (the limit): ask for fewer nested fields, or split the request")]
    TooDeep { field: String, limit: usize },
    /// More selections, once fragments are expanded, than toolgate checks.
    #[error("the document has more than {0} selections once its fragments are expanded: split it into smaller requests")]
    TooLarge(usize),
    /// More root fields than the limit.
    #[error("the operation asks for at least {count} root fields, more than the limit of {limit}: split it into several requests")]
    TooManyFields { count: usize, limit: usize },
    /// The same mutation field more than once (through aliases).
    #[error("mutation field {field} is called more than once in one document (as {keys}): send each call in a request of its own")]
    RepeatedMutation { field: String, keys: String },
    /// A directive other than `@include` and `@skip`.
    #[error("directive @{directive} (on {at}) is not allowed: only @include and @skip are")]
    Directive { directive: String, at: String },
    /// A variable missing, or of a type its declaration does not allow.
    #[error("variable ${name}: {why}")]
    Variable { name: String, why: String },
}

impl GraphqlError {
    /// The stable code: a request that is not valid GraphQL (or does not match its own
    /// declarations) is a `validation_error`; one that asks for what toolgate does not allow
    /// is a `policy_violation`.
    pub fn code(&self) -> Code {
        match self {
            GraphqlError::Request(_)
            | GraphqlError::Syntax(_)
            | GraphqlError::Invalid(_)
            | GraphqlError::SeveralOperations { .. }
            | GraphqlError::UnknownOperation(_)
            | GraphqlError::Variable { .. } => Code::ValidationError,
            GraphqlError::Subscription(_)
            | GraphqlError::MutationOverGet(_)
            | GraphqlError::Introspection(_)
            | GraphqlError::TooDeep { .. }
            | GraphqlError::TooLarge(_)
            | GraphqlError::TooManyFields { .. }
            | GraphqlError::RepeatedMutation { .. }
            | GraphqlError::Directive { .. } => Code::PolicyViolation,
        }
    }
}

impl From<GraphqlError> for Refusal {
    fn from(e: GraphqlError) -> Refusal {
        Refusal::new(e.code(), e.to_string())
    }
}

/// A refusal in the shape a GraphQL client reads and prints (`gh`, Octokit):
/// `{"errors":[{"message", "extensions":{"code", "request_id"}}]}`, with toolgate's stable code
/// and the request id, so that the agent sees toolgate's message and what to change.
pub fn errors_body(refusal: &Refusal, request_id: &str) -> Value {
    let mut extensions = json!({
        "code": refusal.code.as_str(),
        "request_id": request_id,
    });
    if let Some(tool) = &refusal.tool {
        extensions["tool"] = Value::String(tool.clone());
    }
    if let Some(p) = &refusal.proposal {
        extensions["proposal"] = Value::String(p.clone());
    }
    json!({ "errors": [{ "message": refusal.message, "extensions": extensions }] })
}
