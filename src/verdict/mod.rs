//! Dry evaluation: what the proxy would decide about one request, without a network, a store
//! or a clock (`toolgate test` and `toolgate explain`). It runs the decision phases the proxy
//! runs, in the proxy's order, with the same functions: identify, egress, job, path, match,
//! kill switch, authorize, path parameters, query, body, rules, budget field, headers, decide.
//! The pure parts of the proxy's phases live here ([`route`], [`no_match`], [`canonical`], the
//! kill-switch refusals, [`arguments`]) and the proxy calls them, so the two cannot drift.
//!
//! What needs state is given, not looked up: kill switches and grants come with the request
//! ([`World`]: kill switches, grants, a budget spent); rate limits, idempotency records, job owners, MCP pins and DNS
//! are not evaluated (the phases that read them say so).

pub mod cases;
pub(crate) mod graphql;
pub(crate) mod mcp;
mod near;

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Method, Uri};
use serde_json::Value;

use crate::base::authority;
use crate::checks::{
    authorize, budget_amount, check_rules, forwarded_headers, idempotency_key, validate_body,
    validate_path, validate_query, validation,
};
use crate::error::{Code, Refusal};
use crate::model::{Grant, KillSwitch, KillTarget};
use crate::policy::{check_path, Agent, Credential, Mode, Policy, SideEffects, Tool};

pub use near::closest;

/// Who sends the request: an agent by id (the proxy listener), or a source address (the
/// transparent listener).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Who {
    Agent(String),
    Source(IpAddr),
}

/// One request, as a case or `explain` gives it.
#[derive(Debug, Clone)]
pub struct Asked {
    pub who: Who,
    pub method: Method,
    /// Absolute: `https://host[:port]/path?query`.
    pub url: Uri,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// The state a store would hold, as given: kill switches thrown and tools granted.
#[derive(Debug, Clone, Default)]
pub struct World {
    pub disabled: Vec<KillTarget>,
    /// Tools lent to the request's agent by a live grant.
    pub grants: Vec<String>,
    /// What the agent already spent of the tool's budget in the current period.
    pub spent: Option<f64>,
    /// The person the call acts for (as a token issued for them or a verified assertion would
    /// name them).
    pub user: Option<crate::policy::EndUser>,
}

impl World {
    /// The state as written: kill switches as `tool:NAME` or `agent:ID`, tools granted.
    pub fn given(disabled: &[String], grants: Vec<String>) -> Result<World, String> {
        let disabled = disabled
            .iter()
            .map(|d| {
                KillTarget::parse(d)
                    .ok_or_else(|| format!("disabled {d:?}: write tool:NAME or agent:ID"))
            })
            .collect::<Result<_, _>>()?;
        Ok(World {
            disabled,
            grants,
            spent: None,
            user: None,
        })
    }

    /// The person named by id and groups, if any.
    pub fn acting_for(&mut self, user: Option<String>, groups: Vec<String>) {
        self.user = user.map(|id| crate::policy::EndUser {
            id,
            groups,
            via: "the case".into(),
            assertion: None,
        });
    }
}

/// What the proxy would do with the request.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Sent upstream (a read, or a write sent at once), with this credential.
    Forward { credential: Option<String> },
    /// Held for approval.
    Hold,
    /// Previewed, nothing sent.
    DryRun,
    /// Refused with this code and message.
    Refused(Refusal),
    /// Something the evaluator cannot judge (an MCP batch): the reason.
    Unsupported(String),
}

impl Outcome {
    /// `forward`, `hold`, `dry_run`, `refuse` or `unsupported`.
    pub fn word(&self) -> &'static str {
        match self {
            Outcome::Forward { .. } => "forward",
            Outcome::Hold => "hold",
            Outcome::DryRun => "dry_run",
            Outcome::Refused(_) => "refuse",
            Outcome::Unsupported(_) => "unsupported",
        }
    }
}

/// One phase's verdict: passed (with what it found) or where the request stopped.
#[derive(Debug, Clone)]
pub struct Phase {
    pub name: &'static str,
    pub passed: bool,
    pub note: String,
}

/// The evaluation of one request: the tool it matched, the outcome, every phase on the way.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub tool: Option<String>,
    pub outcome: Outcome,
    pub phases: Vec<Phase>,
}

/// Evaluates `asked` under `policy` as the proxy would, with `world` as the store's state.
pub fn evaluate(policy: &Policy, asked: &Asked, world: &World) -> Verdict {
    let mut trail = Trail::default();
    let outcome = match phases(policy, asked, world, &mut trail) {
        Ok(outcome) => outcome,
        Err(refusal) => Outcome::Refused(refusal),
    };
    Verdict {
        tool: trail.tool,
        outcome,
        phases: trail.phases,
    }
}

/// The phases walked so far, and the tool once one matched.
#[derive(Default)]
struct Trail {
    phases: Vec<Phase>,
    tool: Option<String>,
}

impl Trail {
    /// Records a phase that passed.
    fn ok(&mut self, name: &'static str, note: impl Into<String>) {
        self.phases.push(Phase {
            name,
            passed: true,
            note: note.into(),
        });
    }

    /// Records a phase's result: what it found, or the refusal that stops the request.
    fn check<T>(
        &mut self,
        name: &'static str,
        result: Result<T, Refusal>,
        note: impl FnOnce(&T) -> String,
    ) -> Result<T, Refusal> {
        match &result {
            Ok(v) => self.ok(name, note(v)),
            Err(r) => self.phases.push(Phase {
                name,
                passed: false,
                note: format!("{}: {}", r.code.as_str(), r.message),
            }),
        }
        result
    }
}

/// Every phase: the connection's (identify, egress), then the request's.
fn phases(
    policy: &Policy,
    asked: &Asked,
    world: &World,
    t: &mut Trail,
) -> Result<Outcome, Refusal> {
    let agent = t.check("identify", identify(policy, &asked.who), |a| {
        format!(
            "agent {} (owner {}, environment {})",
            a.id, a.owner, a.environment
        )
    })?;
    let (host, port) = t.check("egress", egress(policy, &asked.url), |(h, p)| {
        format!(
            "{} is named by a contract (its DNS answer is not checked)",
            authority(h, *p)
        )
    })?;
    t.check("job", job(&asked.headers), |j| match j {
        Some(j) => format!("Toolgate-Job {j} (who holds it is not checked)"),
        None => "no Toolgate-Job: the call belongs to its tunnel".into(),
    })?;
    let kill = agent_switch(world, &agent).and_then(|()| not_connect(&asked.method));
    t.check("kill switch", kill, |()| {
        format!("agent {} is not disabled", agent.id)
    })?;
    let path = asked.url.path();
    t.check("path", canonical(path), |()| format!("{path} is canonical"))?;
    let agent = t.check("user", person(world, agent), |a| match &a.user {
        Some(u) => format!("acting for {} (groups: {})", u.id, u.groups.join(", ")),
        None => "the call names no person".into(),
    })?;
    let endpoint = policy.mcp_endpoint(&host, port, path);
    let at = Target {
        host: &host,
        port,
        path,
    };
    let graphql = policy.graphql_endpoint(&host, port, path);
    if !graphql.is_empty() {
        return graphql::evaluate(policy, asked, world, agent, graphql, &at, t);
    }
    if endpoint.is_empty() {
        http_call(policy, asked, world, agent, &at, t)
    } else {
        mcp::evaluate(asked, world, agent, endpoint, &at, t)
    }
}

/// The agent as it acts for the world's person; an agent that must name one refuses a call
/// that names none (as the proxy's identify phase does).
fn person(world: &World, agent: Arc<Agent>) -> Result<Arc<Agent>, Refusal> {
    match &world.user {
        Some(user) => Ok(agent.acting_for(user.clone())),
        None if agent.users == crate::policy::Users::Required => Err(Refusal::new(
            Code::UserAuthError,
            format!(
                "agent {} acts for people, and this call names none",
                agent.id
            ),
        )),
        None => Ok(agent),
    }
}

/// Where a request goes.
struct Target<'a> {
    host: &'a str,
    port: u16,
    path: &'a str,
}

/// The agent the request comes from.
fn identify(policy: &Policy, who: &Who) -> Result<Arc<Agent>, Refusal> {
    match who {
        Who::Agent(id) => policy.agent(id).cloned().ok_or_else(|| {
            Refusal::auth_error(&format!(
                "unknown agent or wrong token (no agent {id:?} in the policies)"
            ))
        }),
        Who::Source(ip) => policy.agent_for_source(*ip).ok_or_else(|| {
            Refusal::new(
                Code::AuthRequired,
                format!(
                    "{} is not the source address of any agent: add it to an [[agent]]'s sources, or send requests through the proxy listener with Proxy-Authorization",
                    ip.to_canonical()
                ),
            )
        }),
    }
}

/// The egress check of the host a URL names (its DNS answer aside): host and port as the proxy
/// reads them, a plain `http://` URL on port 80 meaning the contract's TLS port.
fn egress(policy: &Policy, url: &Uri) -> Result<(String, u16), Refusal> {
    let host = url
        .host()
        .ok_or_else(|| Refusal::policy("the URL has no host: write it as https://host/path"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    let port = match (url.scheme_str(), url.port_u16()) {
        (Some("http"), None | Some(80)) => policy.port_for_host(&host).unwrap_or(443),
        (_, Some(p)) => p,
        (_, None) => 443,
    };
    if !policy.allows_host(&host, port) {
        return Err(Refusal::egress(format!(
            "{} is not named by any tool contract; toolgate only connects to hosts that a [[tool]] entry names",
            authority(&host, port)
        )));
    }
    Ok((host, port))
}

/// The `Toolgate-Job` header's form.
fn job(headers: &HeaderMap) -> Result<Option<String>, Refusal> {
    let Some(value) = headers.get("toolgate-job") else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .filter(|j| crate::base::job_id_ok(j))
        .map(|j| Some(j.to_string()))
        .ok_or_else(|| validation(format!("Toolgate-Job must be {}", crate::base::JOB_ID_RULE)))
}

fn agent_switch(world: &World, agent: &Agent) -> Result<(), Refusal> {
    match world
        .disabled
        .contains(&KillTarget::Agent(agent.id.clone()))
    {
        true => Err(agent_disabled(&agent.id, &given_switch())),
        false => Ok(()),
    }
}

fn tool_switch(world: &World, tool: &Tool) -> Result<(), Refusal> {
    match world
        .disabled
        .contains(&KillTarget::Tool(tool.name.clone()))
    {
        true => Err(tool_disabled(tool, &given_switch())),
        false => Ok(()),
    }
}

/// A kill switch a case throws.
fn given_switch() -> KillSwitch {
    KillSwitch {
        by: "the test case".into(),
        reason: "disabled in the case".into(),
        at_unix: 0,
    }
}

fn not_connect(method: &Method) -> Result<(), Refusal> {
    match *method == Method::CONNECT {
        true => Err(Refusal::policy(
            "CONNECT inside a tunnel is not allowed; open one tunnel per host through toolgate",
        )),
        false => Ok(()),
    }
}

/// The agent with a grant for each tool of `world.grants` its globs do not name.
fn lend(agent: Arc<Agent>, world: &World, wanted: impl Fn(&str) -> bool) -> Arc<Agent> {
    let grants: Vec<Grant> = world
        .grants
        .iter()
        .filter(|name| wanted(name) && !agent.holds(name))
        .map(|name| Grant {
            id: "grant_case".into(),
            agent: agent.id.clone(),
            tool: name.clone(),
            granted_by: "the test case".into(),
            reason: "granted in the case".into(),
            created_unix: 0,
            until_unix: u64::MAX,
            ended: None,
        })
        .collect();
    match grants.is_empty() {
        true => agent,
        false => Arc::new(agent.with_grants(grants)),
    }
}

/// A request to a contracted path: match, then the checks of its tool, then decide.
fn http_call(
    policy: &Policy,
    asked: &Asked,
    world: &World,
    agent: Arc<Agent>,
    at: &Target<'_>,
    t: &mut Trail,
) -> Result<Outcome, Refusal> {
    let method = &asked.method;
    let found = policy
        .match_tool(at.host, at.port, method, at.path)
        .ok_or_else(|| no_match(policy, at.host, at.port, method, at.path));
    let matched = t.check("match", found, |m| {
        format!(
            "tool {} ({} {})",
            m.tool.name,
            m.tool.method,
            m.tool.path.as_str()
        )
    })?;
    let tool = matched.tool.clone();
    t.tool = Some(tool.name.clone());
    t.check("kill switch", tool_switch(world, &tool), |()| {
        format!("tool {} is not disabled", tool.name)
    })?;
    let agent = lend(agent, world, |name| name == tool.name);
    let credential = t.check(
        "authorize",
        authorize(&agent, &tool, &matched.params),
        |c| credential_note(&agent, c.as_deref()),
    )?;
    t.check("path params", validate_path(&tool, &matched.params), |()| {
        params_note(&matched.params)
    })?;
    let query = t.check(
        "query",
        validate_query(&tool, asked.url.query()),
        |q| match q.is_null() {
            true => "no query string".into(),
            false => format!("{q}"),
        },
    )?;
    let parts = parts_of(asked);
    let amount = checked_body(asked, &agent, &tool, &parts, &matched.params, &query, t)?;
    let call = Decided {
        credential,
        amount,
        spent: world.spent,
    };
    decide(&agent, &tool, &asked.headers, call, t)
}

/// The body's size, form and schema, the rules, the budget field and the headers.
fn checked_body(
    asked: &Asked,
    agent: &Agent,
    tool: &Tool,
    parts: &http::request::Parts,
    params: &std::collections::BTreeMap<String, String>,
    query: &Value,
    t: &mut Trail,
) -> Result<Option<f64>, Refusal> {
    t.check("body size", within_limit(tool, asked), |n| {
        format!("{n} bytes, within {}", tool.max_body_bytes)
    })?;
    let body = t.check(
        "body",
        validate_body(tool, &asked.headers, &asked.body),
        |b| match b.is_null() {
            true => "no body".into(),
            false => "passes the contract's schema".into(),
        },
    )?;
    let rules = check_rules(agent, tool, parts, params, query, &body);
    t.check("rules", rules, |()| {
        format!("{} rule(s) hold", tool.rules.len())
    })?;
    let amount = t.check("budget field", budget_amount(tool, &body), |a| match a {
        Some(n) => format!("asks {n} of the budget"),
        None => "no budget".into(),
    })?;
    t.check("headers", forwarded_headers(tool, &asked.headers), |h| {
        format!("{} header(s) forwarded", h.len())
    })?;
    Ok(amount)
}

fn credential_note(agent: &Agent, credential: Option<&Credential>) -> String {
    let name = credential.map_or("none", |c| c.name.as_str());
    format!(
        "agent {} may use it; credential {name} for environment {}",
        agent.id, agent.environment
    )
}

fn params_note(params: &std::collections::BTreeMap<String, String>) -> String {
    match params.is_empty() {
        true => "none".into(),
        false => params
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(", "),
    }
}

/// The request's head as the phases read it (the URI in origin form, as inside a tunnel).
fn parts_of(asked: &Asked) -> http::request::Parts {
    let mut req = http::Request::new(());
    *req.method_mut() = asked.method.clone();
    *req.uri_mut() = asked
        .url
        .path_and_query()
        .and_then(|p| p.as_str().parse().ok())
        .unwrap_or_default();
    *req.headers_mut() = asked.headers.clone();
    req.into_parts().0
}

/// The body within its tool's limit (declared, then as sent).
fn within_limit(tool: &Tool, asked: &Asked) -> Result<usize, Refusal> {
    let declared = asked
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let over = declared.is_some_and(|n| n > tool.max_body_bytes as u64)
        || asked.body.len() > tool.max_body_bytes;
    match over {
        true => Err(too_large(tool)),
        false => Ok(asked.body.len()),
    }
}

/// What the decide phase takes of a checked call: its credential, what it asks of its tool's
/// budget, and what the case says was spent already.
pub(super) struct Decided {
    pub(super) credential: Option<Arc<Credential>>,
    pub(super) amount: Option<f64>,
    pub(super) spent: Option<f64>,
}

/// The decide phase's verdict as an outcome; a call held or sent at once must fit its budget.
fn decide(
    agent: &Agent,
    tool: &Tool,
    headers: &HeaderMap,
    call: Decided,
    t: &mut Trail,
) -> Result<Outcome, Refusal> {
    let route = t.check("decide", route(agent, tool, headers, false), |r| {
        let limits = "rate limit and idempotency records are not checked";
        match r {
            Route::Preview => format!("dry run (mode {}): previewed", tool.mode.as_str()),
            Route::Propose => "mode approve: held for approval".to_string(),
            Route::Read => format!("a read, sent at once ({limits})"),
            Route::Write(_) => format!("a write, sent at once ({limits})"),
        }
    })?;
    if matches!(route, Route::Propose | Route::Write(_)) {
        let fits = budget_fits(agent, tool, call.amount, call.spent);
        t.check("budget", fits, String::clone)?;
    }
    Ok(match route {
        Route::Preview => Outcome::DryRun,
        Route::Propose => Outcome::Hold,
        Route::Read | Route::Write(_) => Outcome::Forward {
            credential: call.credential.map(|c| c.name.clone()),
        },
    })
}

/// Whether `amount` fits the agent's budget for the tool with `spent` used in this period (the
/// proxy's arithmetic and refusal); without `spent`, not checked.
fn budget_fits(
    agent: &Agent,
    tool: &Tool,
    amount: Option<f64>,
    spent: Option<f64>,
) -> Result<String, Refusal> {
    let (Some(budget), Some(amount)) = (&tool.budget, amount) else {
        return Ok("no budget".into());
    };
    let Some(spent) = spent else {
        return Ok(format!(
            "asks {amount} of {} per {}; what was spent is not given (spent = N in a case)",
            budget.max,
            budget.per.as_str()
        ));
    };
    match crate::store::rules::budget_add(spent, amount, budget.max) {
        Ok(total) => Ok(format!(
            "{spent} spent + {amount} = {total}, within {}",
            budget.max
        )),
        Err(used) => Err(crate::limits::budget_exceeded(
            tool, &agent.id, used, amount,
        )),
    }
}

/// What the decide phase does with a call that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Route {
    /// A preview, nothing sent.
    Preview,
    /// A proposal, held for approval.
    Propose,
    /// A call without side effects, sent at once.
    Read,
    /// A call with side effects, sent at once under its idempotency key (if its tool is keyed).
    Write(Option<String>),
}

/// The decide phase's choice: deny, preview, hold for approval, read or write. `undo`: the call
/// is an undo an approver asked for (never previewed, never held).
pub(crate) fn route(
    agent: &Agent,
    tool: &Tool,
    headers: &HeaderMap,
    undo: bool,
) -> Result<Route, Refusal> {
    if tool.mode == Mode::Deny {
        return Err(Refusal::policy(format!(
            "tool {} is in mode deny: no agent may call it",
            tool.name
        )));
    }
    let asked_dry_run = headers
        .get("toolgate-dry-run")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| matches!(v.trim(), "1" | "true"));
    let dry_run = !undo
        && (tool.mode == Mode::DryRun
            || (tool.side_effects != SideEffects::None && (agent.dry_run || asked_dry_run)));
    if dry_run {
        return Ok(Route::Preview);
    }
    // Limits that hold for calls held for approval as much as for calls sent at once.
    let key = idempotency_key(tool, headers)?.map(str::to_string);
    if tool.mode == Mode::Approve && !undo {
        return Ok(Route::Propose);
    }
    if tool.side_effects == SideEffects::None {
        return Ok(Route::Read);
    }
    Ok(Route::Write(key))
}

/// The path as sent must be canonical: toolgate matches it as it is and never normalises it.
pub(crate) fn canonical(path: &str) -> Result<(), Refusal> {
    check_path(path).map_err(|e| {
        Refusal::policy(format!(
            "{e}; send the path in canonical form, toolgate does not normalise it"
        ))
    })
}

/// No contract matches: the refusal lists what the contracts on the host allow.
pub(crate) fn no_match(
    policy: &Policy,
    host: &str,
    port: u16,
    method: &Method,
    path: &str,
) -> Refusal {
    let known: Vec<String> = policy
        .tools()
        .iter()
        .filter(|t| t.port == port && t.host == host)
        .take(20)
        .map(|t| format!("{} {}", t.method, t.path.as_str()))
        .collect();
    Refusal::policy(format!(
        "{} {method} {path} on {}; the contracts on this host allow: {}",
        crate::model::NO_CONTRACT,
        authority(host, port),
        known.join(", ")
    ))
}

/// A disabled tool's refusal.
pub(crate) fn tool_disabled(tool: &Tool, k: &KillSwitch) -> Refusal {
    Refusal::new(
        Code::ToolDisabled,
        format!(
            "tool {} is disabled by {}: {}; do not retry until it is enabled",
            tool.name, k.by, k.reason
        ),
    )
}

/// A disabled agent's refusal.
pub(crate) fn agent_disabled(agent: &str, k: &KillSwitch) -> Refusal {
    Refusal::new(
        Code::ToolDisabled,
        format!(
            "agent {agent} is disabled by {}: {}; no call is sent until it is enabled",
            k.by, k.reason
        ),
    )
}

/// A body over its tool's limit.
pub(crate) fn too_large(tool: &Tool) -> Refusal {
    Refusal::new(
        Code::PayloadTooLarge,
        format!(
            "the request body is larger than tool {}'s limit of {} bytes",
            tool.name, tool.max_body_bytes
        ),
    )
}

/// The checks of a tool call an adapter read from a message (an MCP `tools/call`), its
/// arguments in the place of a body: permissions and credential, the arguments' depth and
/// schema, the rules and the budget field.
pub(crate) fn arguments(
    agent: &Agent,
    tool: &Tool,
    parts: &http::request::Parts,
    arguments: &Value,
) -> Result<(Option<Arc<Credential>>, Option<f64>), Refusal> {
    let credential = authorize(agent, tool, &Default::default())?;
    let amount = crate::checks::arguments_pass(agent, tool, parts, arguments)?;
    Ok((credential, amount))
}

#[cfg(test)]
mod tests;
