//! A fake of GitHub's GraphQL API (`POST https://api.github.com/graphql`) on loopback, for the
//! real GraphQL clients (`gh`, Octokit's `@octokit/graphql`). It logs every request it receives
//! (method, path, `Authorization`, body, and the root fields of the operation it ran), accepts
//! only the example policies' GitHub key (anything else gets GitHub's own 401), and answers the
//! operations those clients send: it parses the document with `apollo-parser`, runs the chosen
//! operation over a small world (`acme/widgets`, the viewer, issues it creates) and returns
//! exactly the fields the document selects, aliases and fragments included. REST requests are
//! logged and answered 404.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use apollo_parser::cst::{self, CstNode};
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use serde_json::{json, Map, Value};
use tokio::net::TcpListener;

use super::fakes::{api_key, body_text, Keys};
use super::pki::Pki;
use super::upstreams::{serve_https, API_HOSTS};

/// One request as the fake received it.
#[derive(Debug, Clone)]
pub struct GhSeen {
    pub method: String,
    /// The path and query.
    pub path: String,
    pub authorization: Option<String>,
    pub body: String,
    /// The GraphQL document (`query`), when the request was GraphQL.
    pub document: Option<String>,
    /// The root fields the operation ran, as `mutation.createIssue` (aliases resolved to the
    /// field they call, one entry per call).
    pub fields: Vec<String>,
    pub status: u16,
}

/// What the fake holds between requests.
#[derive(Debug, Default)]
struct World {
    seen: Vec<GhSeen>,
    issues: u64,
}

/// The fake GitHub GraphQL server.
pub struct GhFake {
    pub addr: SocketAddr,
    world: Arc<Mutex<World>>,
}

impl GhFake {
    /// Serves on an ephemeral loopback port with a certificate of `pki` for the example API
    /// hosts (route them here with `GateBuilder::routed_to`).
    pub async fn start(pki: &Pki) -> GhFake {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let world = Arc::new(Mutex::new(World::default()));
        let keys = Arc::new(Keys::examples().github);
        let w = world.clone();
        serve_https(listener, pki.server_config(&API_HOSTS), move |req| {
            handle(req, w.clone(), keys.clone())
        });
        GhFake { addr, world }
    }

    /// Every request received, in order.
    pub fn seen(&self) -> Vec<GhSeen> {
        self.world.lock().unwrap().seen.clone()
    }

    /// How many times `field` (`mutation.createIssue`) was run.
    pub fn calls(&self, field: &str) -> usize {
        self.seen()
            .iter()
            .flat_map(|s| s.fields.clone())
            .filter(|f| f == field)
            .count()
    }

    /// The JSON body of the first request that ran `field` alone (`mutation.createIssue`).
    pub fn body_of(&self, field: &str) -> Value {
        let seen = self.seen();
        let request = seen
            .iter()
            .find(|s| s.fields == [field])
            .unwrap_or_else(|| panic!("no request ran {field}: {}", self.log()));
        serde_json::from_str(&request.body).unwrap()
    }

    /// Every request, one line each, for failure messages and the report of what a client sent.
    pub fn log(&self) -> String {
        self.seen()
            .iter()
            .map(|s| {
                format!(
                    "{} {} auth={:?} fields={:?} -> {}\n  {}",
                    s.method, s.path, s.authorization, s.fields, s.status, s.body
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn respond(status: u16, body: &Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json; charset=utf-8")
        .header("x-github-request-id", "FAKE:0001")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

async fn handle(
    req: Request<Incoming>,
    world: Arc<Mutex<World>>,
    keys: Arc<Vec<String>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = req.method().as_str().to_string();
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let query_string = req.uri().query().unwrap_or("").to_string();
    let authorization = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = body_text(req.into_body()).await;
    let token = api_key(authorization.as_deref());
    let mut w = world.lock().unwrap();
    let mut seen = GhSeen {
        method: method.clone(),
        path: path.clone(),
        authorization: authorization.clone(),
        body: body.clone(),
        document: None,
        fields: Vec::new(),
        status: 0,
    };
    let (status, answer) = if !keys.iter().any(|k| k == token) {
        (
            401,
            json!({"message": "Bad credentials", "documentation_url": "https://docs.github.com/graphql"}),
        )
    } else if path.starts_with("/graphql") {
        match graphql_request(&method, &query_string, &body) {
            Ok(gql) => {
                seen.document = Some(gql.document.clone());
                run(&mut w, &gql, &mut seen.fields)
            }
            Err(why) => (400, json!({"message": why})),
        }
    } else {
        (
            404,
            json!({"message": "Not Found", "documentation_url": "https://docs.github.com/rest"}),
        )
    };
    seen.status = status;
    w.seen.push(seen);
    Ok(respond(status, &answer))
}

/// A GraphQL-over-HTTP request as the fake reads it.
struct GqlRequest {
    document: String,
    variables: Map<String, Value>,
    operation_name: Option<String>,
}

/// The document, variables and operation name of a GraphQL-over-HTTP request.
fn graphql_request(method: &str, query_string: &str, body: &str) -> Result<GqlRequest, String> {
    let v: Value = if method == "GET" {
        let mut m = Map::new();
        for (k, v) in form_urlencoded::parse(query_string.as_bytes()) {
            let v = if k == "variables" {
                serde_json::from_str(&v).map_err(|e| e.to_string())?
            } else {
                Value::String(v.into_owned())
            };
            m.insert(k.into_owned(), v);
        }
        Value::Object(m)
    } else {
        serde_json::from_str(body).map_err(|e| format!("Problems parsing JSON: {e}"))?
    };
    let document = v["query"]
        .as_str()
        .ok_or("A query attribute must be specified and must be a string.")?
        .to_string();
    let variables = v["variables"].as_object().cloned().unwrap_or_default();
    let operation_name = v["operationName"].as_str().map(str::to_string);
    Ok(GqlRequest {
        document,
        variables,
        operation_name,
    })
}

/// GitHub's answer for a GraphQL error (200 with `errors`, as GitHub answers them).
fn gql_error(message: &str) -> (u16, Value) {
    (200, json!({"errors": [{"message": message}]}))
}

/// Runs the operation: the status and the answer, and the root fields it ran into `fields`.
fn run(w: &mut World, gql: &GqlRequest, fields: &mut Vec<String>) -> (u16, Value) {
    let tree = apollo_parser::Parser::new(&gql.document).parse();
    if let Some(e) = tree.errors().next() {
        return gql_error(&format!("Parse error: {}", e.message()));
    }
    let mut operations = Vec::new();
    let mut fragments = HashMap::new();
    for def in tree.document().definitions() {
        match def {
            cst::Definition::OperationDefinition(op) => operations.push(op),
            cst::Definition::FragmentDefinition(f) => {
                let name = f.fragment_name().and_then(|n| n.name());
                fragments.insert(name.map(|n| n.text().to_string()).unwrap_or_default(), f);
            }
            _ => {}
        }
    }
    let op = match gql.operation_name.as_deref() {
        Some(name) => operations
            .iter()
            .find(|o| o.name().is_some_and(|n| n.text() == name)),
        None if operations.len() == 1 => operations.first(),
        None => None,
    };
    let Some(op) = op else {
        return gql_error("An operation name is required");
    };
    let kind = match op.operation_type() {
        Some(t) if t.mutation_token().is_some() => "mutation",
        Some(t) if t.subscription_token().is_some() => "subscription",
        _ => "query",
    };
    let ctx = Ctx {
        fragments: &fragments,
        variables: &defaults(op, &gql.variables),
    };
    let mut data = Map::new();
    let mut errors = Vec::new();
    for field in ctx.fields(op.selection_set()) {
        let name = name(field.name());
        let key = field
            .alias()
            .and_then(|a| a.name())
            .map(|n| n.text().to_string())
            .unwrap_or_else(|| name.clone());
        fields.push(format!("{kind}.{name}"));
        let args = ctx.arguments(field.arguments());
        let value = match root(w, kind, &name, &args) {
            Ok(v) => ctx.select(&v, field.selection_set()),
            Err(e) => {
                errors.push(json!({"message": e, "path": [key]}));
                Value::Null
            }
        };
        data.insert(key, value);
    }
    let mut answer = json!({ "data": data });
    if !errors.is_empty() {
        answer["errors"] = Value::Array(errors);
    }
    (200, answer)
}

/// The variables with the declared defaults filled in.
fn defaults(op: &cst::OperationDefinition, passed: &Map<String, Value>) -> Map<String, Value> {
    let mut vars = passed.clone();
    let empty = Ctx {
        fragments: &HashMap::new(),
        variables: &Map::new(),
    };
    for def in op
        .variable_definitions()
        .iter()
        .flat_map(|d| d.variable_definitions())
    {
        let var = name(def.variable().and_then(|v| v.name()));
        if let Some(default) = def.default_value().and_then(|d| d.value()) {
            vars.entry(var).or_insert_with(|| empty.value(default));
        }
    }
    vars
}

fn name(n: Option<cst::Name>) -> String {
    n.map(|n| n.text().to_string()).unwrap_or_default()
}

/// The value of a root field in the fake's world, before the selection picks from it.
fn root(w: &mut World, kind: &str, field: &str, args: &Value) -> Result<Value, String> {
    let input = &args["input"];
    let text = |v: &Value| v.as_str().unwrap_or("").to_string();
    match (kind, field) {
        ("query", "viewer") => Ok(json!({
            "__typename": "User", "id": "U_1", "login": "toolgate-bot", "name": "Toolgate Bot",
        })),
        ("query", "repository") => {
            let (owner, repo) = (text(&args["owner"]), text(&args["name"]));
            if (owner.as_str(), repo.as_str()) != ("acme", "widgets") {
                return Err(format!(
                    "Could not resolve to a Repository with the name '{owner}/{repo}'."
                ));
            }
            Ok(repository())
        }
        ("mutation", "createIssue") => {
            w.issues += 1;
            let number = 41 + w.issues;
            Ok(json!({
                "clientMutationId": input["clientMutationId"],
                "issue": {
                    "__typename": "Issue", "id": format!("I_{number}"), "number": number,
                    "title": input["title"], "body": input["body"], "state": "OPEN",
                    "url": format!("https://github.com/acme/widgets/issues/{number}"),
                    "repository": repository(),
                },
            }))
        }
        ("mutation", "addComment") => Ok(json!({
            "clientMutationId": input["clientMutationId"],
            "subject": {"__typename": "Issue", "id": input["subjectId"]},
            "commentEdge": {"node": {
                "id": "IC_1", "body": input["body"],
                "url": "https://github.com/acme/widgets/issues/42#issuecomment-1",
            }},
        })),
        ("mutation", "deleteRef") => Ok(json!({"clientMutationId": input["clientMutationId"]})),
        ("mutation", "mergePullRequest") => Ok(json!({
            "clientMutationId": input["clientMutationId"],
            "pullRequest": {
                "__typename": "PullRequest", "id": input["pullRequestId"], "number": 7,
                "merged": true, "state": "MERGED",
                "url": "https://github.com/acme/widgets/pull/7",
            },
        })),
        _ => Err(format!(
            "Field '{field}' doesn't exist on type '{}'",
            if kind == "mutation" {
                "Mutation"
            } else {
                "Query"
            }
        )),
    }
}

/// `acme/widgets` with every field `gh` reads of a repository.
fn repository() -> Value {
    let empty = json!({"nodes": [], "totalCount": 0, "pageInfo": {"hasNextPage": false, "endCursor": null}});
    json!({
        "__typename": "Repository", "id": "R_1", "databaseId": 1296269, "name": "widgets",
        "nameWithOwner": "acme/widgets", "url": "https://github.com/acme/widgets",
        "owner": {"__typename": "Organization", "id": "O_1", "login": "acme"},
        "description": "Widgets", "homepageUrl": "", "isPrivate": true, "visibility": "PRIVATE",
        "isArchived": false, "isFork": false, "isTemplate": false, "isInOrganization": true,
        "hasIssuesEnabled": true, "hasWikiEnabled": true, "hasProjectsEnabled": true,
        "hasDiscussionsEnabled": false, "viewerPermission": "ADMIN",
        "viewerCanAdminister": true, "viewerCanPush": true,
        "mergeCommitAllowed": true, "squashMergeAllowed": true, "rebaseMergeAllowed": true,
        "defaultBranchRef": {"name": "main", "target": {"oid": "0000000000000000000000000000000000000001"}},
        "parent": null, "issueTemplates": [], "pullRequestTemplates": [],
        "labels": empty, "assignableUsers": empty, "mentionableUsers": empty,
        "milestones": empty, "projects": empty, "projectsV2": empty,
    })
}

/// A document's fragments and the operation's variables, to read selections and values.
struct Ctx<'a> {
    fragments: &'a HashMap<String, cst::FragmentDefinition>,
    variables: &'a Map<String, Value>,
}

impl Ctx<'_> {
    /// The fields of a selection set, fragments and inline fragments expanded.
    fn fields(&self, set: Option<cst::SelectionSet>) -> Vec<cst::Field> {
        let mut out = Vec::new();
        for sel in set.iter().flat_map(|s| s.selections()) {
            match sel {
                cst::Selection::Field(f) => out.push(f),
                cst::Selection::InlineFragment(f) => out.extend(self.fields(f.selection_set())),
                cst::Selection::FragmentSpread(s) => {
                    let n = name(s.fragment_name().and_then(|n| n.name()));
                    if let Some(f) = self.fragments.get(&n) {
                        out.extend(self.fields(f.selection_set()));
                    }
                }
            }
        }
        out
    }

    /// The fields `set` selects of `value`, by their response keys.
    fn select(&self, value: &Value, set: Option<cst::SelectionSet>) -> Value {
        let Some(set) = set else {
            return value.clone();
        };
        match value {
            Value::Array(items) => Value::Array(
                items
                    .iter()
                    .map(|i| self.select(i, Some(set.clone())))
                    .collect(),
            ),
            Value::Object(obj) => {
                let mut out = Map::new();
                for f in self.fields(Some(set.clone())) {
                    let field = name(f.name());
                    let key = f
                        .alias()
                        .and_then(|a| a.name())
                        .map(|n| n.text().to_string())
                        .unwrap_or_else(|| field.clone());
                    let v = obj.get(&field).cloned().unwrap_or(Value::Null);
                    out.insert(key, self.select(&v, f.selection_set()));
                }
                Value::Object(out)
            }
            other => other.clone(),
        }
    }

    fn arguments(&self, args: Option<cst::Arguments>) -> Value {
        let mut out = Map::new();
        for a in args.iter().flat_map(|a| a.arguments()) {
            if let Some(v) = a.value() {
                out.insert(name(a.name()), self.value(v));
            }
        }
        Value::Object(out)
    }

    fn value(&self, v: cst::Value) -> Value {
        match v {
            cst::Value::Variable(var) => self
                .variables
                .get(&name(var.name()))
                .cloned()
                .unwrap_or(Value::Null),
            cst::Value::StringValue(s) => Value::String(String::from(s)),
            cst::Value::IntValue(i) => i
                .source_string()
                .parse()
                .map_or(Value::Null, |n: i64| json!(n)),
            cst::Value::FloatValue(f) => f
                .source_string()
                .parse()
                .map_or(Value::Null, |n: f64| json!(n)),
            cst::Value::BooleanValue(b) => Value::Bool(b.true_token().is_some()),
            cst::Value::NullValue(_) => Value::Null,
            cst::Value::EnumValue(e) => Value::String(e.source_string()),
            cst::Value::ListValue(l) => Value::Array(l.values().map(|v| self.value(v)).collect()),
            cst::Value::ObjectValue(o) => Value::Object(
                o.object_fields()
                    .filter_map(|f| Some((name(f.name()), self.value(f.value()?))))
                    .collect(),
            ),
        }
    }
}
