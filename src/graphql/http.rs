//! GraphQL over HTTP as a client sends it: a POST whose JSON body holds `query`, `variables` and
//! `operationName`, or a GET with the same as query parameters (`variables` JSON-encoded).
//! Anything the upstream could read differently from toolgate is refused: a parameter given
//! twice, a key toolgate does not know, a batch.

use serde_json::{Map, Value};

use super::error::GraphqlError;

/// How the request came: GraphQL over HTTP allows only queries over GET.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Get,
    Post,
}

/// One GraphQL request: the document, its variables and the operation to run.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub query: String,
    pub variables: Map<String, Value>,
    pub operation_name: Option<String>,
    pub via: Via,
}

/// The keys of a POST body besides `query`, `variables` and `operationName`: `extensions` is
/// for the client and server (persisted-query hashes, tracing) and carries no field.
const EXTENSIONS: &str = "extensions";

impl Request {
    /// A POST body, already parsed as JSON.
    pub fn from_json(body: &Value) -> Result<Request, GraphqlError> {
        let Some(obj) = body.as_object() else {
            let why = match body {
                Value::Array(_) => {
                    "a batch (a JSON array) is not accepted: send one request per POST"
                }
                _ => "the body must be a JSON object with query, variables and operationName",
            };
            return Err(GraphqlError::Request(why.into()));
        };
        if let Some(key) = obj.keys().find(|k| {
            !matches!(
                k.as_str(),
                "query" | "variables" | "operationName" | EXTENSIONS
            )
        }) {
            return Err(GraphqlError::Request(format!(
                "unknown key {key:?} in the body: a GraphQL request holds query, variables, operationName and extensions"
            )));
        }
        let query = match obj.get("query") {
            Some(Value::String(q)) => q.clone(),
            Some(_) => return Err(GraphqlError::Request("query must be a string".into())),
            None => {
                return Err(GraphqlError::Request(
                    "the body has no query: send the document itself (persisted queries by hash alone are not accepted)".into(),
                ))
            }
        };
        let variables = match obj.get("variables") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(v)) => v.clone(),
            Some(_) => {
                return Err(GraphqlError::Request(
                    "variables must be a JSON object".into(),
                ))
            }
        };
        let operation_name = match obj.get("operationName") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => {
                return Err(GraphqlError::Request(
                    "operationName must be a string".into(),
                ))
            }
        };
        Ok(Request {
            query,
            variables,
            operation_name,
            via: Via::Post,
        })
    }

    /// A GET's query string (without the `?`).
    pub fn from_query_string(qs: &str) -> Result<Request, GraphqlError> {
        let (mut query, mut variables, mut operation_name) = (None, None, None);
        for (key, value) in form_urlencoded::parse(qs.as_bytes()) {
            let slot = match key.as_ref() {
                "query" => &mut query,
                "variables" => &mut variables,
                "operationName" => &mut operation_name,
                EXTENSIONS => continue,
                other => {
                    return Err(GraphqlError::Request(format!(
                        "unknown query parameter {other:?}: a GraphQL GET takes query, variables, operationName and extensions"
                    )))
                }
            };
            if slot.replace(value.into_owned()).is_some() {
                return Err(GraphqlError::Request(format!(
                    "query parameter {key:?} is given twice: give it once"
                )));
            }
        }
        let query = query.ok_or_else(|| {
            GraphqlError::Request("a GraphQL GET needs the query parameter `query`".into())
        })?;
        let variables = match variables.as_deref().map(serde_json::from_str::<Value>) {
            None => Map::new(),
            Some(Ok(Value::Object(v))) => v,
            Some(Ok(Value::Null)) => Map::new(),
            Some(_) => {
                return Err(GraphqlError::Request(
                    "the variables parameter must be a JSON object".into(),
                ))
            }
        };
        Ok(Request {
            query,
            variables,
            operation_name: operation_name.filter(|n| !n.is_empty()),
            via: Via::Get,
        })
    }
}
