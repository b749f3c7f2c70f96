//! Stateful loopback HTTPS fakes of the three APIs the example contracts cover, answering with
//! the real response shapes (Stripe's from `tests/fixtures/stripe-fixtures.json`, a copy of
//! stripe/openapi's fixtures). One server answers for `api.stripe.com`, `api.github.com` and
//! `api.sendgrid.com`, told apart by the `Host` (or `:authority`) it is sent; each API accepts
//! only its real key, so a request without toolgate's injected credential gets the API's own 401.
//! `toolgate demo`'s sandbox (`src/sandbox/`) is the product's version of these; the fakes stay
//! for the tests' hooks (every request recorded, a slow answer on demand, keys per test).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde_json::{json, Value};
use tokio::net::TcpListener;

/// The real keys each API accepts (`Authorization: Bearer <key>`).
#[derive(Clone, Debug)]
pub struct Keys {
    pub stripe: Vec<String>,
    pub github: Vec<String>,
    pub sendgrid: Vec<String>,
}

/// A demo key from `policies/demo-secrets`.
fn demo_secret(name: &str) -> String {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/demo-secrets");
    std::fs::read_to_string(root.join(name))
        .unwrap()
        .trim()
        .to_string()
}

impl Keys {
    /// The example policies' demo keys (policies/demo-secrets), for every environment.
    pub fn examples() -> Keys {
        Keys {
            stripe: vec![
                demo_secret("stripe-test.key"),
                demo_secret("stripe-live.key"),
            ],
            github: vec![demo_secret("github.key")],
            sendgrid: vec![demo_secret("sendgrid.key")],
        }
    }

    /// The example sandbox keys.
    pub fn sandbox() -> Keys {
        Keys {
            stripe: vec![demo_secret("stripe-sandbox.key")],
            github: vec![demo_secret("github-sandbox.key")],
            sendgrid: vec![demo_secret("sendgrid-sandbox.key")],
        }
    }
}

/// One request as the fake received it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub authorization: Option<String>,
    pub body: String,
    pub status: u16,
}

/// What the fake APIs hold.
#[derive(Debug, Default)]
pub struct State {
    pub customers: BTreeMap<String, Value>,
    pub deleted_customers: Vec<String>,
    pub payment_intents: BTreeMap<String, Value>,
    pub refunds: Vec<Value>,
    /// "owner/repo" -> repository.
    pub repos: BTreeMap<String, Value>,
    /// ("owner/repo", number) -> issue.
    pub issues: BTreeMap<(String, u64), Value>,
    pub mails: Vec<Value>,
    pub seen: Vec<Seen>,
    next: u64,
}

impl State {
    fn id(&mut self, prefix: &str) -> String {
        self.next += 1;
        format!("{prefix}_Fake{:010}", self.next)
    }
}

pub struct Fakes {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<State>>,
}

impl Fakes {
    /// Serves the fakes with `tls` (a certificate for the three API hosts), accepting `keys`.
    /// `acme/widgets` exists from the start.
    pub async fn start(tls: Arc<rustls::ServerConfig>, keys: Keys) -> Fakes {
        Fakes::start_on("127.0.0.1:0", tls, keys).await
    }

    pub async fn start_on(bind: &str, tls: Arc<rustls::ServerConfig>, keys: Keys) -> Fakes {
        let listener = TcpListener::bind(bind).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        state
            .lock()
            .unwrap()
            .repos
            .insert("acme/widgets".into(), repo_json("acme", "widgets"));
        let (st, keys) = (state.clone(), Arc::new(keys));
        super::upstreams::serve_https(listener, tls, move |req| {
            handle(req, st.clone(), keys.clone())
        });
        Fakes { addr, state }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    /// Requests that reached the fake with `method` and a path starting with `prefix`.
    pub fn count(&self, method: &str, prefix: &str) -> usize {
        self.seen()
            .iter()
            .filter(|s| s.method == method && s.path.starts_with(prefix))
            .count()
    }
}

fn fixtures() -> &'static Value {
    static F: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    F.get_or_init(|| {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/stripe-fixtures.json");
        serde_json::from_str::<Value>(&std::fs::read_to_string(path).unwrap()).unwrap()["resources"]
            .clone()
    })
}

fn repo_json(owner: &str, name: &str) -> Value {
    json!({
        "id": 1296269, "node_id": "MDEwOlJlcG9zaXRvcnkxMjk2MjY5", "name": name,
        "full_name": format!("{owner}/{name}"), "private": true,
        "owner": {"login": owner, "id": 1, "type": "Organization", "url": format!("https://api.github.com/users/{owner}")},
        "html_url": format!("https://github.com/{owner}/{name}"),
        "url": format!("https://api.github.com/repos/{owner}/{name}"),
        "description": "Widgets", "fork": false, "default_branch": "main",
        "open_issues_count": 0, "has_issues": true, "archived": false, "disabled": false,
        "visibility": "private", "created_at": "2024-01-26T19:01:12Z", "updated_at": "2024-01-26T19:14:43Z",
        "pushed_at": "2024-01-26T19:06:43Z"
    })
}

fn issue_json(owner: &str, repo: &str, number: u64, fields: &Value) -> Value {
    let url = format!("https://api.github.com/repos/{owner}/{repo}/issues/{number}");
    json!({
        "id": 1000 + number, "node_id": "MDU6SXNzdWUx", "url": url,
        "repository_url": format!("https://api.github.com/repos/{owner}/{repo}"),
        "html_url": format!("https://github.com/{owner}/{repo}/issues/{number}"),
        "number": number, "state": "open", "state_reason": null,
        "title": fields["title"], "body": fields.get("body").cloned().unwrap_or(Value::Null),
        "user": {"login": "toolgate-bot", "id": 2, "type": "Bot"},
        "labels": fields.get("labels").cloned().unwrap_or(json!([])).as_array().cloned().unwrap_or_default()
            .iter().map(|l| json!({"name": l})).collect::<Vec<_>>(),
        "assignees": [], "locked": false, "comments": 0, "closed_at": null,
        "created_at": "2026-11-22T10:00:00Z", "updated_at": "2026-11-22T10:00:00Z",
        "author_association": "NONE"
    })
}

fn respond(status: u16, body: Value) -> Response<Full<Bytes>> {
    let bytes = if body.is_null() {
        Bytes::new()
    } else {
        Bytes::from(body.to_string())
    };
    let mut b = Response::builder().status(status);
    if !bytes.is_empty() {
        b = b.header("content-type", "application/json");
    }
    b.header("request-id", "req_fake")
        .body(Full::new(bytes))
        .unwrap()
}

fn form(body: &str) -> BTreeMap<String, String> {
    form_urlencoded::parse(body.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn stripe_error(
    status: u16,
    kind: &str,
    code: Option<&str>,
    message: &str,
) -> Response<Full<Bytes>> {
    respond(
        status,
        json!({"error": {"type": kind, "code": code, "message": message, "request_log_url": "https://dashboard.stripe.com/test/logs/req_fake"}}),
    )
}

/// The key an `Authorization: Bearer <key>` (or GitHub's `token <key>`) carries; "" for none.
pub fn api_key(authorization: Option<&str>) -> &str {
    authorization
        .and_then(|a| {
            a.strip_prefix("Bearer ")
                .or_else(|| a.strip_prefix("token "))
        })
        .unwrap_or("")
}

/// A request body read whole, as text.
pub async fn body_text(body: Incoming) -> String {
    let bytes = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    String::from_utf8_lossy(&bytes).into_owned()
}

async fn handle(
    req: Request<Incoming>,
    state: Arc<Mutex<State>>,
    keys: Arc<Keys>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let host = req
        .uri()
        .host()
        .map(str::to_string)
        .or_else(|| {
            req.headers()
                .get("host")
                .and_then(|v| v.to_str().ok())
                .map(|h| h.split(':').next().unwrap_or("").to_string())
        })
        .unwrap_or_default();
    let method = req.method().as_str().to_string();
    let path = req.uri().path().to_string();
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let authorization = header("authorization");
    let body = body_text(req.into_body()).await;
    let token = api_key(authorization.as_deref()).to_string();
    // A sandbox is reached by its own name: tell the API by the path there.
    let api = if host.contains("stripe") || path.starts_with("/v1/") {
        "stripe"
    } else if host.contains("github") || path.starts_with("/repos/") {
        "github"
    } else if host.contains("sendgrid") || path.starts_with("/v3/") {
        "sendgrid"
    } else {
        ""
    };
    // A body asking for it is answered slowly (0.8 s), as a real API under load may be: calls
    // racing one in flight.
    if body.contains("slow-upstream") {
        // A sleep: a slow upstream is the point.
        tokio::time::sleep(Duration::from_millis(800)).await;
    }
    let mut st = state.lock().unwrap();
    let resp = if api == "stripe" {
        if !keys.stripe.contains(&token) {
            stripe_error(
                401,
                "invalid_request_error",
                None,
                "Invalid API Key provided",
            )
        } else {
            stripe(&mut st, &method, &path, &body)
        }
    } else if api == "github" {
        if !keys.github.contains(&token) {
            respond(
                401,
                json!({"message": "Bad credentials", "documentation_url": "https://docs.github.com/rest", "status": "401"}),
            )
        } else {
            github(&mut st, &method, &path, &body)
        }
    } else if api == "sendgrid" {
        if !keys.sendgrid.contains(&token) {
            respond(
                401,
                json!({"errors": [{"field": null, "message": "The provided authorization grant is invalid, expired, or revoked"}]}),
            )
        } else {
            sendgrid(&mut st, &method, &path, &body)
        }
    } else {
        respond(
            421,
            json!({"message": format!("the fakes do not serve {host:?}")}),
        )
    };
    st.seen.push(Seen {
        method,
        path,
        authorization,
        body,
        status: resp.status().as_u16(),
    });
    Ok(resp)
}

fn stripe(st: &mut State, method: &str, path: &str, body: &str) -> Response<Full<Bytes>> {
    let f = form(body);
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (method, parts.as_slice()) {
        ("POST", ["v1", "customers"]) => {
            let id = st.id("cus");
            let mut c = fixtures()["customer"].clone();
            c["id"] = json!(id);
            c["email"] = f.get("email").map(|v| json!(v)).unwrap_or(Value::Null);
            c["name"] = f.get("name").map(|v| json!(v)).unwrap_or(Value::Null);
            c["description"] = f
                .get("description")
                .map(|v| json!(v))
                .unwrap_or(Value::Null);
            c["discount"] = Value::Null;
            c["created"] = json!(1_763_800_000);
            let metadata: serde_json::Map<String, Value> = f
                .iter()
                .filter_map(|(k, v)| {
                    k.strip_prefix("metadata[")
                        .and_then(|r| r.strip_suffix(']'))
                        .map(|k| (k.to_string(), json!(v)))
                })
                .collect();
            c["metadata"] = Value::Object(metadata);
            st.customers.insert(id, c.clone());
            respond(200, c)
        }
        ("GET", ["v1", "customers"]) => {
            let data: Vec<Value> = st.customers.values().rev().cloned().collect();
            respond(
                200,
                json!({"object": "list", "data": data, "has_more": false, "url": "/v1/customers"}),
            )
        }
        ("GET", ["v1", "customers", id]) => match st.customers.get(*id) {
            Some(c) => respond(200, c.clone()),
            None => stripe_error(
                404,
                "invalid_request_error",
                Some("resource_missing"),
                &format!("No such customer: '{id}'"),
            ),
        },
        ("DELETE", ["v1", "customers", id]) => match st.customers.remove(*id) {
            Some(_) => {
                st.deleted_customers.push(id.to_string());
                respond(
                    200,
                    json!({"id": id, "object": "customer", "deleted": true}),
                )
            }
            None => stripe_error(
                404,
                "invalid_request_error",
                Some("resource_missing"),
                &format!("No such customer: '{id}'"),
            ),
        },
        ("POST", ["v1", "payment_intents"]) => {
            if f.get("payment_method").map(String::as_str) == Some("pm_card_chargeDeclined")
                && f.get("confirm").map(String::as_str) == Some("true")
            {
                return stripe_error(
                    402,
                    "card_error",
                    Some("card_declined"),
                    "Your card was declined.",
                );
            }
            let id = st.id("pi");
            let mut pi = fixtures()["payment_intent"].clone();
            pi["id"] = json!(id);
            pi["amount"] = json!(f
                .get("amount")
                .and_then(|a| a.parse::<u64>().ok())
                .unwrap_or(0));
            pi["currency"] = json!(f.get("currency").cloned().unwrap_or_default());
            pi["customer"] = f.get("customer").map(|v| json!(v)).unwrap_or(Value::Null);
            pi["status"] = json!("requires_payment_method");
            pi["canceled_at"] = Value::Null;
            pi["last_payment_error"] = Value::Null;
            pi["client_secret"] = json!(format!("{id}_secret_fake"));
            st.payment_intents.insert(id, pi.clone());
            respond(200, pi)
        }
        ("POST", ["v1", "payment_intents", id, "cancel"]) => {
            match st.payment_intents.get_mut(*id) {
                Some(pi) => {
                    pi["status"] = json!("canceled");
                    pi["cancellation_reason"] = f
                        .get("cancellation_reason")
                        .map(|v| json!(v))
                        .unwrap_or(Value::Null);
                    respond(200, pi.clone())
                }
                None => stripe_error(
                    404,
                    "invalid_request_error",
                    Some("resource_missing"),
                    &format!("No such payment_intent: '{id}'"),
                ),
            }
        }
        ("POST", ["v1", "refunds"]) => {
            let id = st.id("re");
            let mut r = fixtures()["refund"].clone();
            r["id"] = json!(id);
            r["amount"] = json!(f
                .get("amount")
                .and_then(|a| a.parse::<u64>().ok())
                .unwrap_or(0));
            r["payment_intent"] = f
                .get("payment_intent")
                .map(|v| json!(v))
                .unwrap_or(Value::Null);
            st.refunds.push(r.clone());
            respond(200, r)
        }
        _ => stripe_error(
            404,
            "invalid_request_error",
            None,
            &format!("Unrecognized request URL ({method}: {path})"),
        ),
    }
}

fn github(st: &mut State, method: &str, path: &str, body: &str) -> Response<Full<Bytes>> {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let fields: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let not_found = || {
        respond(
            404,
            json!({"message": "Not Found", "documentation_url": "https://docs.github.com/rest", "status": "404"}),
        )
    };
    match (method, parts.as_slice()) {
        ("GET", ["repos", owner, repo]) => match st.repos.get(&format!("{owner}/{repo}")) {
            Some(r) => respond(200, r.clone()),
            None => not_found(),
        },
        ("DELETE", ["repos", owner, repo]) => match st.repos.remove(&format!("{owner}/{repo}")) {
            Some(_) => respond(204, Value::Null),
            None => not_found(),
        },
        ("POST", ["repos", owner, repo, "issues"]) => {
            let full = format!("{owner}/{repo}");
            if !st.repos.contains_key(&full) {
                return not_found();
            }
            if fields["title"].as_str().unwrap_or("").is_empty() {
                return respond(
                    422,
                    json!({"message": "Validation Failed", "errors": [{"resource": "Issue", "code": "missing_field", "field": "title"}], "status": "422"}),
                );
            }
            let number = st.issues.keys().filter(|(r, _)| r == &full).count() as u64 + 1;
            let issue = issue_json(owner, repo, number, &fields);
            st.issues.insert((full, number), issue.clone());
            respond(201, issue)
        }
        ("GET", ["repos", owner, repo, "issues"]) => {
            let full = format!("{owner}/{repo}");
            let list: Vec<Value> = st
                .issues
                .iter()
                .filter(|((r, _), i)| r == &full && i["state"] == "open")
                .map(|(_, i)| i.clone())
                .collect();
            respond(200, Value::Array(list))
        }
        ("PATCH", ["repos", owner, repo, "issues", n]) => {
            let key = (format!("{owner}/{repo}"), n.parse::<u64>().unwrap_or(0));
            match st.issues.get_mut(&key) {
                Some(issue) => {
                    if let Value::Object(m) = &fields {
                        for (k, v) in m {
                            issue[k] = v.clone();
                        }
                    }
                    if issue["state"] == "closed" {
                        issue["closed_at"] = json!("2026-11-22T10:05:00Z");
                    }
                    respond(200, issue.clone())
                }
                None => not_found(),
            }
        }
        _ => not_found(),
    }
}

fn sendgrid(st: &mut State, method: &str, path: &str, body: &str) -> Response<Full<Bytes>> {
    match (method, path) {
        ("POST", "/v3/mail/send") => {
            let mail: Value = match serde_json::from_str(body) {
                Ok(v) => v,
                Err(_) => {
                    return respond(
                        400,
                        json!({"errors": [{"message": "Bad Request", "field": null, "help": null}]}),
                    )
                }
            };
            st.mails.push(mail);
            respond(202, Value::Null)
        }
        ("GET", "/v3/templates") => respond(
            200,
            json!({"result": [{"id": "d-fake0001", "name": "Ticket update", "generation": "dynamic", "updated_at": "2026-11-01 10:00:00", "versions": []}],
                   "_metadata": {"self": "https://api.sendgrid.com/v3/templates?page_size=10", "count": 1}}),
        ),
        _ => respond(
            404,
            json!({"errors": [{"field": null, "message": "resource not found"}]}),
        ),
    }
}
