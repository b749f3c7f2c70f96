//! GitHub's REST API as the example contracts use it: repositories (read, delete) and issues
//! (open, update, list), with GitHub's objects and errors (`{"message", "documentation_url",
//! "status"}`).

use std::collections::BTreeMap;

use http::HeaderName;
use serde_json::{json, Value};

use super::{random_id, Call, Reply};

/// The organisation the example agents belong to, and its repositories.
pub const DEMO_ORG: &str = "acme";
pub const DEMO_REPO: &str = "widgets";
const API_VERSION: &str = "2022-11-28";

/// What GitHub holds.
#[derive(Debug, Default)]
pub struct Github {
    /// "owner/repo" -> repository.
    pub repos: BTreeMap<String, Value>,
    /// ("owner/repo", number) -> issue.
    pub issues: BTreeMap<(String, u64), Value>,
    next_id: u64,
    /// Requests answered (GitHub counts them against the token's rate limit).
    served: u64,
}

/// GitHub's answer without a valid token.
pub fn unauthorized() -> Reply {
    error(401, "Bad credentials", "https://docs.github.com/rest")
}

fn error(status: u16, message: &str, docs: &str) -> Reply {
    Reply::json(
        status,
        &json!({"message": message, "documentation_url": docs, "status": status.to_string()}),
    )
}

fn not_found() -> Reply {
    error(404, "Not Found", "https://docs.github.com/rest")
}

fn now() -> String {
    let t = time::OffsetDateTime::now_utc();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

fn repo(id: u64, owner: &str, name: &str, description: &str, private: bool) -> Value {
    let full = format!("{owner}/{name}");
    let api = format!("https://api.github.com/repos/{full}");
    json!({
        "id": id, "node_id": format!("R_kgDO{}", random_id(6)), "name": name, "full_name": full,
        "private": private,
        "owner": {"login": owner, "id": 9_919_000 + id % 1000, "type": "Organization",
                  "url": format!("https://api.github.com/users/{owner}"),
                  "html_url": format!("https://github.com/{owner}")},
        "html_url": format!("https://github.com/{full}"), "description": description,
        "fork": false, "url": api, "issues_url": format!("{api}/issues{{/number}}"),
        "default_branch": "main", "open_issues_count": 0, "has_issues": true,
        "archived": false, "disabled": false,
        "visibility": if private { "private" } else { "public" },
        "created_at": "2024-01-26T19:01:12Z", "updated_at": "2026-11-20T09:14:43Z",
        "pushed_at": "2026-11-20T09:06:43Z", "language": "Rust", "forks_count": 0,
        "stargazers_count": 12, "watchers_count": 12, "size": 1108, "topics": []
    })
}

impl Github {
    /// acme's repositories `widgets` (private, one open issue) and `website` (public).
    pub fn seeded() -> Github {
        let mut g = Github {
            next_id: 1_800_000_000,
            ..Github::default()
        };
        for (id, name, description, private) in [
            (734_512_001, DEMO_REPO, "Widgets, the product", true),
            (734_512_002, "website", "acme.com", false),
        ] {
            g.repos.insert(
                format!("{DEMO_ORG}/{name}"),
                repo(id, DEMO_ORG, name, description, private),
            );
        }
        let first = json!({"title": "Checkout button overlaps the total on small screens",
                           "body": "Seen on a 360px wide phone.", "labels": ["bug"]});
        g.open_issue(DEMO_ORG, DEMO_REPO, &first);
        g
    }

    /// Answers a call with a valid token.
    pub fn handle(&mut self, call: &Call) -> Reply {
        let mut reply = self.route(call);
        if !reply.body.is_empty() {
            reply = reply.with(
                http::header::CONTENT_TYPE,
                "application/json; charset=utf-8",
            );
        }
        self.served += 1;
        let remaining = 5000u64.saturating_sub(self.served);
        reply
            .with(
                HeaderName::from_static("x-github-request-id"),
                format!("{}:{}", random_id(4), random_id(8)).to_uppercase(),
            )
            .with(
                HeaderName::from_static("x-github-api-version-selected"),
                API_VERSION,
            )
            .with(HeaderName::from_static("x-ratelimit-limit"), "5000")
            .with(
                HeaderName::from_static("x-ratelimit-remaining"),
                remaining.to_string(),
            )
    }

    fn route(&mut self, call: &Call) -> Reply {
        let parts: Vec<&str> = call.path.trim_start_matches('/').split('/').collect();
        let fields = call.json().unwrap_or(Value::Null);
        match (call.method.as_str(), parts.as_slice()) {
            ("GET", ["repos", owner, repo]) => match self.repos.get(&format!("{owner}/{repo}")) {
                Some(r) => Reply::json(200, r),
                None => not_found(),
            },
            ("DELETE", ["repos", owner, repo]) => {
                let full = format!("{owner}/{repo}");
                match self.repos.remove(&full) {
                    Some(_) => {
                        self.issues.retain(|(r, _), _| *r != full);
                        Reply::empty(204)
                    }
                    None => not_found(),
                }
            }
            ("GET", ["repos", owner, repo, "issues"]) => self.list_issues(owner, repo),
            ("POST", ["repos", owner, repo, "issues"]) => self.create_issue(owner, repo, &fields),
            ("GET", ["repos", owner, repo, "issues", n]) => {
                match self
                    .issues
                    .get(&(format!("{owner}/{repo}"), n.parse().unwrap_or(0)))
                {
                    Some(i) => Reply::json(200, i),
                    None => not_found(),
                }
            }
            ("PATCH", ["repos", owner, repo, "issues", n]) => {
                self.update_issue(owner, repo, n, &fields)
            }
            _ => not_found(),
        }
    }

    fn list_issues(&self, owner: &str, repo: &str) -> Reply {
        let full = format!("{owner}/{repo}");
        if !self.repos.contains_key(&full) {
            return not_found();
        }
        let open: Vec<&Value> = self
            .issues
            .iter()
            .rev()
            .filter(|((r, _), i)| *r == full && i["state"] == "open")
            .map(|(_, i)| i)
            .collect();
        Reply::json(200, &json!(open))
    }

    fn create_issue(&mut self, owner: &str, repo: &str, fields: &Value) -> Reply {
        if !self.repos.contains_key(&format!("{owner}/{repo}")) {
            return not_found();
        }
        if fields["title"].as_str().is_none_or(str::is_empty) && !fields["title"].is_number() {
            return Reply::json(
                422,
                &json!({"message": "Validation Failed",
                        "errors": [{"resource": "Issue", "code": "missing_field", "field": "title"}],
                        "documentation_url": "https://docs.github.com/rest/issues/issues#create-an-issue",
                        "status": "422"}),
            );
        }
        let issue = self.open_issue(owner, repo, fields);
        Reply::json(201, &issue).with(http::header::LOCATION, issue["url"].as_str().unwrap_or(""))
    }

    /// Adds an issue and returns it.
    fn open_issue(&mut self, owner: &str, repo: &str, fields: &Value) -> Value {
        let full = format!("{owner}/{repo}");
        let number = self
            .issues
            .keys()
            .filter(|(r, _)| *r == full)
            .map(|(_, n)| *n)
            .max()
            .unwrap_or(0)
            + 1;
        self.next_id += 1;
        let url = format!("https://api.github.com/repos/{full}/issues/{number}");
        let labels: Vec<Value> = fields["labels"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(|l| json!({"name": l, "color": "d73a4a", "default": l == "bug"}))
            .collect();
        let at = now();
        let issue = json!({
            "id": self.next_id, "node_id": format!("I_kwDO{}", random_id(10)), "url": url,
            "repository_url": format!("https://api.github.com/repos/{full}"),
            "html_url": format!("https://github.com/{full}/issues/{number}"),
            "number": number, "state": "open", "state_reason": null,
            "title": fields["title"].as_str().map(str::to_string).unwrap_or_else(|| fields["title"].to_string()),
            "body": fields.get("body").cloned().unwrap_or(Value::Null),
            "user": {"login": "acme-support-bot[bot]", "id": 41_898_282, "type": "Bot"},
            "labels": labels, "assignee": null, "assignees": [], "milestone": null,
            "locked": false, "comments": 0, "closed_at": null, "created_at": at, "updated_at": at,
            "author_association": "NONE"
        });
        self.issues.insert((full.clone(), number), issue.clone());
        if let Some(r) = self.repos.get_mut(&full) {
            r["open_issues_count"] = json!(r["open_issues_count"].as_u64().unwrap_or(0) + 1);
        }
        issue
    }

    fn update_issue(&mut self, owner: &str, repo: &str, n: &str, fields: &Value) -> Reply {
        let full = format!("{owner}/{repo}");
        let Some(issue) = self.issues.get_mut(&(full.clone(), n.parse().unwrap_or(0))) else {
            return not_found();
        };
        let was_open = issue["state"] == "open";
        for key in [
            "title",
            "body",
            "state",
            "state_reason",
            "assignees",
            "milestone",
        ] {
            if let Some(v) = fields.get(key) {
                issue[key] = v.clone();
            }
        }
        if let Some(labels) = fields["labels"].as_array() {
            issue["labels"] = labels
                .iter()
                .filter_map(Value::as_str)
                .map(|l| json!({"name": l, "color": "d73a4a", "default": false}))
                .collect();
        }
        let at = now();
        issue["updated_at"] = json!(at);
        let open = issue["state"] == "open";
        match open {
            true => issue["closed_at"] = Value::Null,
            false if was_open => {
                issue["closed_at"] = json!(at);
                if issue["state_reason"].is_null() {
                    issue["state_reason"] = json!("completed");
                }
            }
            false => {}
        }
        let issue = issue.clone();
        if let Some(r) = self.repos.get_mut(&full) {
            let count = r["open_issues_count"].as_u64().unwrap_or(0);
            r["open_issues_count"] = json!(match (was_open, open) {
                (true, false) => count.saturating_sub(1),
                (false, true) => count + 1,
                _ => count,
            });
        }
        Reply::json(200, &issue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    fn json_call(method: Method, path: &str, body: Value) -> Call {
        Call::new(method, path)
            .header("content-type", "application/json")
            .body(body.to_string())
    }

    #[test]
    fn repositories_are_read_and_deleted() {
        let mut g = Github::seeded();
        let got = g.handle(&Call::new(Method::GET, "/repos/acme/widgets"));
        assert_eq!(got.status, 200);
        let r = got.body_json();
        assert_eq!(
            (r["full_name"].as_str(), r["private"].as_bool()),
            (Some("acme/widgets"), Some(true))
        );
        assert_eq!(r["open_issues_count"], 1);
        assert!(got.header("x-github-request-id").is_some());
        let got = g.handle(&Call::new(Method::GET, "/repos/other/payroll"));
        assert_eq!(
            (got.status.as_u16(), got.body_json()["message"].as_str()),
            (404, Some("Not Found"))
        );
        let got = g.handle(&Call::new(Method::DELETE, "/repos/acme/website"));
        assert_eq!((got.status.as_u16(), got.body.len()), (204, 0));
        assert!(!g.repos.contains_key("acme/website"));
    }

    #[test]
    fn issues_are_opened_numbered_closed_and_listed() {
        let mut g = Github::seeded();
        let got = g.handle(&json_call(
            Method::POST,
            "/repos/acme/widgets/issues",
            json!({"title": "Refund flow", "body": "Customer called", "labels": ["support"]}),
        ));
        assert_eq!(got.status, 201);
        let issue = got.body_json();
        assert_eq!(
            (issue["number"].as_u64(), issue["state"].as_str()),
            (Some(2), Some("open"))
        );
        assert_eq!(issue["labels"][0]["name"], "support");
        assert_eq!(got.header("location"), issue["url"].as_str());
        let got = g.handle(&json_call(
            Method::POST,
            "/repos/acme/widgets/issues",
            json!({"body": "x"}),
        ));
        assert_eq!(got.status, 422);
        let got = g.handle(&json_call(
            Method::PATCH,
            "/repos/acme/widgets/issues/2",
            json!({"state": "closed"}),
        ));
        let closed = got.body_json();
        assert_eq!(
            (closed["state"].as_str(), closed["state_reason"].as_str()),
            (Some("closed"), Some("completed"))
        );
        assert!(closed["closed_at"].is_string());
        let got = g.handle(&Call::new(Method::GET, "/repos/acme/widgets/issues"));
        let open = got.body_json();
        assert_eq!(open.as_array().map(Vec::len), Some(1));
        assert_eq!(g.repos["acme/widgets"]["open_issues_count"], 1);
        let got = g.handle(&json_call(
            Method::PATCH,
            "/repos/acme/widgets/issues/9",
            json!({"state": "closed"}),
        ));
        assert_eq!(got.status, 404);
    }

    #[test]
    fn a_bad_token_gets_githubs_answer() {
        let got = unauthorized();
        assert_eq!(
            (got.status.as_u16(), got.body_json()["message"].as_str()),
            (401, Some("Bad credentials"))
        );
    }
}
