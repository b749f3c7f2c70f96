//! Policies: agents, approvers, credentials and tool contracts, loaded from the TOML files of a
//! folder (DESIGN section 2), validated once into typed values, and matched per request.

pub mod contract;
pub mod file;
pub mod lint;
pub mod published;
pub mod response;
pub mod rollback_def;
pub mod rules;
pub mod template;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::base::split_host_port;

pub use file::{AgentDef, PolicyFile, ToolDef};
pub use published::{Published, Role, PUBLISHED_TOKENS};
pub use template::{check_path, PathError, PathTemplate};

/// A policy set failed to load. The message names the file and, where the TOML parser knows it,
/// the line.
#[derive(Debug, thiserror::Error)]
#[error("{}: {message}", path.display())]
pub struct PolicyError {
    pub path: PathBuf,
    pub message: String,
}

impl PolicyError {
    fn new(path: &Path, message: impl Into<String>) -> Self {
        PolicyError {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }
}

/// A principal that calls through the proxy.
#[derive(Debug, Clone)]
pub struct Agent {
    pub id: String,
    /// None: the agent is known by its `sources` only and cannot use the proxy listener.
    token_sha256: Option<[u8; 32]>,
    pub owner: String,
    pub tenant: Option<String>,
    pub environment: String,
    pub tools: Vec<String>,
    pub attrs: BTreeMap<String, String>,
    pub dry_run: bool,
    /// The networks whose redirected connections are this agent's (transparent listener).
    pub sources: Vec<ipnet::IpNet>,
    /// Approver groups (besides `admin`) that may issue it tokens.
    pub token_issuers: Vec<String>,
    /// Whether its static token lets it in (else only issued tokens do).
    pub static_token: bool,
    /// Live grants lending it tools its `tools` do not name: empty as the policy defines it,
    /// filled in for one request by [`Agent::with_grants`].
    pub granted: Vec<crate::model::Grant>,
}

impl Agent {
    /// Whether `approver` may issue this agent tokens: group `admin`, or a group it names.
    pub fn token_issuer(&self, approver: &Approver) -> bool {
        approver
            .groups
            .iter()
            .any(|g| g == "admin" || self.token_issuers.contains(g))
    }
}

/// What toolgate does with a call that passed every check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Auto,
    DryRun,
    Approve,
    Deny,
}

impl Mode {
    fn parse(s: Option<&str>) -> Result<Mode, String> {
        match s.unwrap_or("auto") {
            "auto" => Ok(Mode::Auto),
            "dry_run" => Ok(Mode::DryRun),
            "approve" => Ok(Mode::Approve),
            "deny" => Ok(Mode::Deny),
            other => Err(format!(
                "mode {other:?} is not one of auto, dry_run, approve, deny"
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Auto => "auto",
            Mode::DryRun => "dry_run",
            Mode::Approve => "approve",
            Mode::Deny => "deny",
        }
    }
}

/// Matches a tool name against an agent's glob (`*` matches any run of characters).
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == name;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !name.starts_with(first) || name.len() < first.len() + last.len() || !name.ends_with(last) {
        return false;
    }
    let mut rest = &name[first.len()..name.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

impl Agent {
    /// True when one of the agent's `tools` globs names the tool, or a grant lends it.
    pub fn may_use(&self, tool: &str) -> bool {
        self.holds(tool) || self.grant(tool).is_some()
    }

    /// True when one of the agent's own `tools` globs names the tool (grants aside).
    pub fn holds(&self, tool: &str) -> bool {
        self.tools.iter().any(|g| glob_match(g, tool))
    }

    /// The grant that lends it `tool`, when its own globs do not name it.
    pub fn grant(&self, tool: &str) -> Option<&crate::model::Grant> {
        self.granted.iter().find(|g| g.tool == tool)
    }

    /// This agent with `grants` in force (those for tools it already holds are left out).
    pub fn with_grants(&self, grants: Vec<crate::model::Grant>) -> Agent {
        let mut agent = self.clone();
        agent.granted = grants
            .into_iter()
            .filter(|g| !self.holds(&g.tool))
            .collect();
        agent
    }
}

/// What a call does to the world, as the contract declares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SideEffects {
    None,
    Reversible,
    Irreversible,
}

impl SideEffects {
    pub fn as_str(self) -> &'static str {
        match self {
            SideEffects::None => "none",
            SideEffects::Reversible => "reversible",
            SideEffects::Irreversible => "irreversible",
        }
    }
}

/// How a mutating call is identified so that it executes at most once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Idempotency {
    /// By its `Idempotency-Key` header (required).
    Key,
    /// By its payload, within the tool's window.
    Payload,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFormat {
    Json,
    Form,
}

/// What a tool's request body must be.
#[derive(Debug)]
pub struct BodySpec {
    pub format: BodyFormat,
    pub schema: Option<Arc<contract::Schema>>,
}

/// `rate_limit = "10/minute"`.
#[derive(Debug, Clone)]
pub struct RateLimit {
    pub count: u32,
    pub per: std::time::Duration,
    pub text: String,
}

/// The period a budget sums over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    Hour,
    Day,
    Week,
    Month,
}

impl Period {
    /// A label for the period containing `unix_secs` (UTC), used as part of the budget key.
    pub fn bucket(self, unix_secs: u64) -> String {
        let days = unix_secs / 86_400;
        match self {
            Period::Hour => format!("h{}", unix_secs / 3600),
            Period::Day => format!("d{days}"),
            Period::Week => format!("w{}", (days + 3) / 7),
            Period::Month => {
                let date = time::OffsetDateTime::from_unix_timestamp(unix_secs as i64)
                    .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
                format!("m{}-{:02}", date.year(), date.month() as u8)
            }
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Period::Hour => "hour",
            Period::Day => "day",
            Period::Week => "week",
            Period::Month => "month",
        }
    }
}

/// `budget = { field = "amount", max = 500000, per = "day" }`: a sum of a body field per agent.
#[derive(Debug, Clone)]
pub struct Budget {
    pub field: String,
    pub max: f64,
    pub per: Period,
}

/// When an approved call is sent (`approval.send`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SendOn {
    /// By the held connection, or when the agent sends the same call again (until the
    /// proposal expires). Nothing is sent for an agent that gave up.
    #[default]
    Retry,
    /// At once, by the approval that completes the proposal, whether or not the agent still
    /// waits; its answer is kept for the agent's next identical call.
    Approval,
}

impl SendOn {
    /// `on_retry` or `on_approval`, as written in policies.
    pub fn as_str(self) -> &'static str {
        match self {
            SendOn::Retry => "on_retry",
            SendOn::Approval => "on_approval",
        }
    }

    /// Reads `on_retry` or `on_approval`.
    pub fn parse(s: &str) -> Option<SendOn> {
        match s {
            "on_retry" => Some(SendOn::Retry),
            "on_approval" => Some(SendOn::Approval),
            _ => None,
        }
    }
}

/// `approval = { groups, required, expires, hold, allow_self_approval, webhook, send }`.
#[derive(Debug, Clone)]
pub struct ApprovalSpec {
    /// Approvers in any of these groups may decide; empty means any approver.
    pub groups: Vec<String>,
    /// Distinct approvers needed.
    pub required: u32,
    pub expires: std::time::Duration,
    /// How long the agent's connection is held waiting for a decision.
    pub hold: std::time::Duration,
    pub allow_self_approval: bool,
    pub webhook: Option<String>,
    /// When the approved call is sent.
    pub send: SendOn,
}

/// A person who may approve held calls and use the admin API.
#[derive(Debug)]
pub struct Approver {
    pub id: String,
    token_sha256: [u8; 32],
    pub groups: Vec<String>,
}

impl Approver {
    /// Whether it is in group `admin` (enables, grants, purges, replays).
    pub fn is_admin(&self) -> bool {
        self.groups.iter().any(|g| g == "admin")
    }
}

/// A real API credential. Only toolgate holds it; it is injected into forwarded requests and
/// never printed (its `Debug` leaves the secret out).
pub struct Credential {
    pub name: String,
    pub header: http::HeaderName,
    value: http::HeaderValue,
    secret: String,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("name", &self.name)
            .field("header", &self.header)
            .finish_non_exhaustive()
    }
}

impl Credential {
    /// The header value to inject, marked sensitive so HTTP/2 never indexes it.
    pub fn header_value(&self) -> http::HeaderValue {
        self.value.clone()
    }

    /// The raw secret, for redaction.
    pub fn secret(&self) -> &str {
        &self.secret
    }
}

/// A tool contract, compiled.
#[derive(Debug)]
pub struct Tool {
    pub name: String,
    pub version: u32,
    /// Lower-case host name or IP literal, without brackets.
    pub host: String,
    pub port: u16,
    pub method: http::Method,
    pub path: PathTemplate,
    pub mode: Mode,
    pub side_effects: SideEffects,
    /// The credential to inject per agent environment.
    pub credentials: BTreeMap<String, Arc<Credential>>,
    /// `None`: the tool takes no body.
    pub body: Option<BodySpec>,
    pub max_body_bytes: usize,
    /// `None`: the tool takes no query string.
    pub query: Option<Arc<contract::Schema>>,
    pub idempotency: Option<Idempotency>,
    pub idempotency_window: std::time::Duration,
    pub rate_limit: Option<RateLimit>,
    pub budget: Option<Budget>,
    /// Path parameters bound to agent templates, e.g. `owner` = `{agent.attrs.github_org}`.
    pub params: Vec<(String, String)>,
    /// The types of the path parameters (`path_params`), as one object schema (parameters
    /// without a type are any string).
    pub path_schema: Option<Arc<contract::Schema>>,
    pub rules: Vec<rules::Rule>,
    pub approval: ApprovalSpec,
    /// An MCP server's tool: matched by its endpoint and name, not by method and path alone.
    pub mcp: Option<McpSpec>,
    /// What of the answer is kept and shown.
    pub response: Option<response::ResponseSpec>,
    pub def: ToolDef,
}

/// What makes a tool an MCP tool.
#[derive(Debug)]
pub struct McpSpec {
    /// `params.name` of `tools/call`.
    pub name: String,
    /// `params.arguments`, closed.
    pub arguments: Arc<contract::Schema>,
    /// `sha256:HEX` over the tool's description and input schema as listed.
    pub pin: Option<String>,
}

/// Default body limit per tool.
pub const DEFAULT_MAX_BODY: usize = 1024 * 1024;

/// A tool that matched a request, with the path parameters it captured.
#[derive(Debug, Clone)]
pub struct Matched {
    pub tool: Arc<Tool>,
    pub params: BTreeMap<String, String>,
}

/// One host's HTTP tools, a router per port and method.
type HostRoutes = HashMap<(u16, http::Method), template::Router<Arc<Tool>>>;

/// A loaded, validated policy set. Immutable: a reload builds a new one and swaps it in whole.
#[derive(Debug, Default)]
pub struct Policy {
    agents: HashMap<String, Arc<Agent>>,
    approvers: Vec<Arc<Approver>>,
    /// Read-only principals of the admin listener (an id and a token; no groups).
    reviewers: Vec<Arc<Approver>>,
    tools: Vec<Arc<Tool>>,
    /// The HTTP tools (MCP tools aside) by host, then port and method: a request is matched
    /// in the time of its path, however many contracts there are.
    routes: HashMap<String, HostRoutes>,
    /// The MCP tools, few: matched by endpoint and then by the server's tool name.
    mcp_tools: Vec<Arc<Tool>>,
    /// The ports each host is named with, in the order of the tools: the egress allow-list,
    /// looked up per connection.
    ports: HashMap<String, Vec<u16>>,
    /// The files the set was loaded from, for logs.
    pub files: Vec<PathBuf>,
}

impl Policy {
    /// Loads every `*.toml` file under `dir` (recursively, in name order).
    pub fn load_dir(dir: &Path) -> Result<Policy, PolicyError> {
        let mut files = Vec::new();
        collect_toml(dir, &mut files)?;
        files.sort();
        if files.is_empty() {
            return Err(PolicyError::new(
                dir,
                "no *.toml policy files found; toolgate refuses to start without policies",
            ));
        }
        let mut parsed = Vec::new();
        for path in &files {
            let text =
                std::fs::read_to_string(path).map_err(|e| PolicyError::new(path, e.to_string()))?;
            let file: PolicyFile = toml::from_str(&text)
                .map_err(|e| PolicyError::new(path, e.to_string().trim_end().to_string()))?;
            parsed.push((path.clone(), file));
        }
        Policy::build(parsed, &|name| std::env::var(name).ok())
    }

    /// Builds a policy set from parsed files. `env` reads environment variables (a parameter so
    /// that nothing reads the process environment implicitly).
    pub fn build(
        files: Vec<(PathBuf, PolicyFile)>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Policy, PolicyError> {
        let mut policy = Policy::default();
        // Credentials first: tools in any file may name credentials from any other.
        let mut credentials: HashMap<String, Arc<Credential>> = HashMap::new();
        for (path, file) in &files {
            for def in &file.credential {
                let cred = compile_credential(path, def, env)?;
                if credentials.contains_key(&cred.name) {
                    return Err(PolicyError::new(
                        path,
                        format!("credential {:?} is defined twice", cred.name),
                    ));
                }
                credentials.insert(cred.name.clone(), Arc::new(cred));
            }
        }
        let mut names = std::collections::HashSet::new();
        for (path, file) in files {
            for def in file.reviewer {
                policy.add_reviewer(&path, def, env)?;
            }
            for def in file.approver {
                let approver = compile_approver(&path, def, env)?;
                let taken = policy.approvers.iter().chain(&policy.reviewers);
                if taken.clone().any(|a| a.id == approver.id) {
                    return Err(PolicyError::new(
                        &path,
                        format!(
                            "approver {:?} is defined twice (or is a reviewer)",
                            approver.id
                        ),
                    ));
                }
                policy.approvers.push(Arc::new(approver));
            }
            for def in file.agent {
                let agent = compile_agent(&path, def, env)?;
                if policy.agents.contains_key(&agent.id) {
                    return Err(PolicyError::new(
                        &path,
                        format!("agent {:?} is defined twice", agent.id),
                    ));
                }
                if let Some(clash) = overlapping_sources(&agent, policy.agents.values()) {
                    return Err(PolicyError::new(&path, clash));
                }
                policy.agents.insert(agent.id.clone(), Arc::new(agent));
            }
            for def in file.tool {
                let tool = compile_tool(&path, def, &credentials)?;
                if !names.insert(tool.name.clone()) {
                    return Err(PolicyError::new(
                        &path,
                        format!("tool {:?} is defined twice", tool.name),
                    ));
                }
                policy
                    .add_tool(Arc::new(tool))
                    .map_err(|m| PolicyError::new(&path, m))?;
            }
            policy.files.push(path);
        }
        Ok(policy)
    }

    /// Adds a compiled tool to the routes, refusing one that would match the same requests as
    /// a tool already in (the message names both).
    fn add_tool(&mut self, tool: Arc<Tool>) -> Result<(), String> {
        // An MCP endpoint and an HTTP contract may not share a request at all; MCP tools on one
        // endpoint are told apart by the server's tool name.
        let others = if tool.mcp.is_some() {
            &self.tools
        } else {
            &self.mcp_tools
        };
        if let Some(clash) = others.iter().find_map(|other| clash(other, &tool)) {
            return Err(clash);
        }
        if tool.mcp.is_some() {
            self.mcp_tools.push(tool.clone());
        } else {
            let router = self
                .routes
                .entry(tool.host.clone())
                .or_default()
                .entry((tool.port, tool.method.clone()))
                .or_default();
            if let Err(other) = router.insert(&tool.path, tool.clone()) {
                return Err(format!(
                    "tools {:?} ({} {}) and {:?} ({} {}) match the same requests on {}: the same literal segments at the same places and parameters at the others; make their paths distinct",
                    other.name, other.method, other.path.as_str(),
                    tool.name, tool.method, tool.path.as_str(), tool.host
                ));
            }
        }
        let ports = self.ports.entry(tool.host.clone()).or_default();
        if !ports.contains(&tool.port) {
            ports.push(tool.port);
        }
        self.tools.push(tool);
        Ok(())
    }

    /// The ports `host` is named with (any case).
    fn ports_of(&self, host: &str) -> Option<&Vec<u16>> {
        match self.ports.get(host) {
            Some(p) => Some(p),
            None if host.bytes().any(|b| b.is_ascii_uppercase()) => {
                self.ports.get(&host.to_ascii_lowercase())
            }
            None => None,
        }
    }

    fn add_reviewer(
        &mut self,
        path: &Path,
        def: file::ReviewerDef,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(), PolicyError> {
        let as_approver = file::ApproverDef {
            id: def.id,
            token_sha256: def.token_sha256,
            token_env: def.token_env,
            groups: Vec::new(),
        };
        let reviewer = compile_approver(path, as_approver, env)?;
        let taken = self.reviewers.iter().chain(&self.approvers);
        if taken.clone().any(|a| a.id == reviewer.id) {
            return Err(PolicyError::new(
                path,
                format!(
                    "reviewer {:?} is defined twice (or is an approver)",
                    reviewer.id
                ),
            ));
        }
        self.reviewers.push(Arc::new(reviewer));
        Ok(())
    }

    pub fn agent(&self, id: &str) -> Option<&Arc<Agent>> {
        self.agents.get(id)
    }

    pub fn tools(&self) -> &[Arc<Tool>] {
        &self.tools
    }

    /// The agent whose `sources` hold `ip` (IPv4-mapped IPv6 addresses count as IPv4). Sources
    /// never overlap across agents (a load error), so there is at most one.
    pub fn agent_for_source(&self, ip: std::net::IpAddr) -> Option<Arc<Agent>> {
        let ip = ip.to_canonical();
        self.agents
            .values()
            .find(|a| a.sources.iter().any(|net| net.contains(&ip)))
            .cloned()
    }

    /// Whether any agent is known by its source address (the transparent listener has users).
    pub fn has_sources(&self) -> bool {
        self.agents.values().any(|a| !a.sources.is_empty())
    }

    /// Checks proxy credentials in constant time over the token hash.
    pub fn authenticate(&self, id: &str, token: &str) -> Option<Arc<Agent>> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        match self.agents.get(id) {
            Some(agent)
                if agent.static_token
                    && agent
                        .token_sha256
                        .is_some_and(|t| bool::from(t.ct_eq(&digest))) =>
            {
                Some(agent.clone())
            }
            Some(_) => None,
            None => {
                // Spend the same work for an unknown id so timing does not reveal which ids exist.
                let _ = [0u8; 32].ct_eq(&digest);
                None
            }
        }
    }

    /// Finds the approver holding `token` (constant time per approver).
    pub fn authenticate_approver(&self, token: &str) -> Option<Arc<Approver>> {
        holder(&self.approvers, token)
    }

    /// Finds the reviewer holding `token` (constant time per reviewer).
    pub fn authenticate_reviewer(&self, token: &str) -> Option<Arc<Approver>> {
        holder(&self.reviewers, token)
    }

    pub fn reviewer(&self, id: &str) -> Option<&Arc<Approver>> {
        self.reviewers.iter().find(|r| r.id == id)
    }

    /// Every credential secret in force, for redaction.
    pub fn secrets(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .tools
            .iter()
            .flat_map(|t| t.credentials.values())
            .map(|c| c.secret().to_string())
            .collect();
        out.sort();
        out.dedup();
        out
    }

    pub fn approver(&self, id: &str) -> Option<&Arc<Approver>> {
        self.approvers.iter().find(|a| a.id == id)
    }

    pub fn agents(&self) -> impl Iterator<Item = &Arc<Agent>> {
        self.agents.values()
    }

    pub fn tool(&self, name: &str) -> Option<&Arc<Tool>> {
        self.tools.iter().find(|t| t.name == name)
    }

    /// True when some tool names this host and port: the egress allow-list.
    pub fn allows_host(&self, host: &str, port: u16) -> bool {
        self.ports_of(host).is_some_and(|p| p.contains(&port))
    }

    /// The port of the first tool naming `host`, for plain-HTTP requests that carry no TLS port.
    pub fn port_for_host(&self, host: &str) -> Option<u16> {
        self.ports_of(host).and_then(|p| p.first().copied())
    }

    /// The MCP tools served at an endpoint (empty: `path` on that host is no MCP endpoint).
    /// `path` must have passed [`check_path`].
    pub fn mcp_endpoint(&self, host: &str, port: u16, path: &str) -> Vec<Arc<Tool>> {
        self.mcp_tools
            .iter()
            .filter(|t| t.port == port && t.host.eq_ignore_ascii_case(host))
            .filter(|t| t.path.matches(path).is_some())
            .cloned()
            .collect()
    }

    /// Finds the tool for a request: a literal path segment wins over a parameter at the same
    /// position. `path` must have passed [`check_path`].
    pub fn match_tool(
        &self,
        host: &str,
        port: u16,
        method: &http::Method,
        path: &str,
    ) -> Option<Matched> {
        let by_host = match self.routes.get(host) {
            Some(r) => r,
            None if host.bytes().any(|b| b.is_ascii_uppercase()) => {
                self.routes.get(&host.to_ascii_lowercase())?
            }
            None => return None,
        };
        let (tool, values) = by_host.get(&(port, method.clone()))?.at(path)?;
        Some(Matched {
            params: tool.path.bind(&values)?,
            tool: tool.clone(),
        })
    }
}

/// The one of `list` holding `token`: every hash compared, in constant time.
fn holder(list: &[Arc<Approver>], token: &str) -> Option<Arc<Approver>> {
    let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    let mut found = None;
    for a in list {
        if bool::from(a.token_sha256.ct_eq(&digest)) {
            found = Some(a.clone());
        }
    }
    found
}

/// Why two tools of which one or both are MCP tools cannot both be loaded, if they cannot:
/// requests both could match (MCP tools share an endpoint and differ by the server's tool name).
fn clash(other: &Tool, tool: &Tool) -> Option<String> {
    let same_endpoint = other.host == tool.host
        && other.port == tool.port
        && other.method == tool.method
        && other.path.overlaps(&tool.path);
    match (same_endpoint, &other.mcp, &tool.mcp) {
        (false, _, _) => None,
        (true, Some(a), Some(b)) if a.name == b.name => Some(format!(
            "tools {:?} and {:?} both contract MCP tool {:?} on {}{}",
            other.name, tool.name, a.name, tool.host, tool.def.path
        )),
        (true, Some(_), Some(_)) => None,
        (true, _, _) => Some(format!(
            "tools {:?} ({} {}) and {:?} ({} {}) could match the same request on {}; make their paths distinct",
            other.name, other.method, other.path.as_str(),
            tool.name, tool.method, tool.path.as_str(), tool.host
        )),
    }
}

fn collect_toml(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), PolicyError> {
    let entries = std::fs::read_dir(dir).map_err(|e| PolicyError::new(dir, e.to_string()))?;
    for entry in entries {
        let entry = entry.map_err(|e| PolicyError::new(dir, e.to_string()))?;
        let path = entry.path();
        let ty = entry
            .file_type()
            .map_err(|e| PolicyError::new(&path, e.to_string()))?;
        if ty.is_dir() {
            collect_toml(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "toml") {
            out.push(path);
        }
    }
    Ok(())
}

fn token_hash(
    token_sha256: &Option<String>,
    token_env: &Option<String>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<[u8; 32], String> {
    match (token_sha256, token_env) {
        (Some(hex_hash), None) => {
            let bytes = hex::decode(hex_hash.trim())
                .map_err(|_| "token_sha256 must be 64 hex characters".to_string())?;
            <[u8; 32]>::try_from(bytes.as_slice())
                .map_err(|_| "token_sha256 must be 64 hex characters".to_string())
        }
        (None, Some(var)) => {
            let token = env(var).filter(|t| !t.is_empty()).ok_or_else(|| {
                format!("token_env names {var}, which is not set in the environment")
            })?;
            Ok(Sha256::digest(token.as_bytes()).into())
        }
        _ => Err("set exactly one of token_sha256 or token_env".into()),
    }
}

fn compile_approver(
    path: &Path,
    def: file::ApproverDef,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Approver, PolicyError> {
    let token_sha256 = token_hash(&def.token_sha256, &def.token_env, env)
        .map_err(|m| PolicyError::new(path, format!("approver {:?}: {m}", def.id)))?;
    Ok(Approver {
        id: def.id,
        token_sha256,
        groups: def.groups,
    })
}

fn compile_agent(
    path: &Path,
    def: AgentDef,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Agent, PolicyError> {
    let err = |m: String| PolicyError::new(path, format!("agent {:?}: {m}", def.id));
    let token_sha256 =
        match (&def.token_sha256, &def.token_env) {
            (Some(hex_hash), None) => {
                let bytes = hex::decode(hex_hash.trim())
                    .map_err(|_| err("token_sha256 must be 64 hex characters".into()))?;
                Some(
                    <[u8; 32]>::try_from(bytes.as_slice())
                        .map_err(|_| err("token_sha256 must be 64 hex characters".into()))?,
                )
            }
            (None, Some(var)) => {
                let token = env(var).filter(|t| !t.is_empty()).ok_or_else(|| {
                    err(format!(
                        "token_env names {var}, which is not set in the environment"
                    ))
                })?;
                Some(Sha256::digest(token.as_bytes()).into())
            }
            (None, None) if !def.sources.is_empty() || !def.static_token => None,
            (None, None) => return Err(err(
                "set one of token_sha256 or token_env (or sources, for the transparent listener)"
                    .into(),
            )),
            _ => return Err(err("set only one of token_sha256 or token_env".into())),
        };
    let sources = def
        .sources
        .iter()
        .map(|s| parse_source(s).map_err(|m| err(format!("sources: {m}"))))
        .collect::<Result<Vec<_>, _>>()?;
    if def.id.is_empty() || def.id.contains(':') {
        return Err(err("id must be non-empty and must not contain ':'".into()));
    }
    Ok(Agent {
        id: def.id.clone(),
        token_sha256,
        owner: def.owner.clone(),
        tenant: def.tenant.clone(),
        environment: def.environment.clone(),
        tools: def.tools.clone(),
        attrs: def.attrs.clone(),
        dry_run: def.dry_run,
        sources,
        token_issuers: def.token_issuers.clone(),
        static_token: def.static_token,
        granted: Vec::new(),
    })
}

/// A source network: `10.0.3.0/28`, `fd00::5/128`, or one address (`10.0.3.7`).
fn parse_source(text: &str) -> Result<ipnet::IpNet, String> {
    let text = text.trim();
    if let Ok(net) = text.parse::<ipnet::IpNet>() {
        if net.trunc() != net {
            return Err(format!(
                "{text:?} has host bits set; write the network ({})",
                net.trunc()
            ));
        }
        return Ok(net);
    }
    text.parse::<std::net::IpAddr>()
        .map(ipnet::IpNet::from)
        .map_err(|_| format!("{text:?} is not an address or a CIDR network"))
}

/// Two agents may not share a source address: a connection would belong to either.
fn overlapping_sources<'a>(
    agent: &Agent,
    others: impl Iterator<Item = &'a Arc<Agent>>,
) -> Option<String> {
    let overlaps =
        |a: &ipnet::IpNet, b: &ipnet::IpNet| a.contains(&b.network()) || b.contains(&a.network());
    for other in others {
        for mine in &agent.sources {
            if let Some(theirs) = other.sources.iter().find(|t| overlaps(mine, t)) {
                return Some(format!(
                    "agent {:?}: source {mine} overlaps agent {:?}'s source {theirs}; a connection must belong to one agent",
                    agent.id, other.id
                ));
            }
        }
    }
    None
}

fn compile_credential(
    path: &Path,
    def: &file::CredentialDef,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Credential, PolicyError> {
    let err = |m: String| PolicyError::new(path, format!("credential {:?}: {m}", def.name));
    let secret = match (&def.env, &def.file) {
        (Some(var), None) => env(var)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| err(format!("environment variable {var} is not set")))?,
        (None, Some(file)) => {
            // Relative paths are relative to the policy file that names them.
            let full = path.parent().unwrap_or(Path::new(".")).join(file);
            std::fs::read_to_string(&full)
                .map_err(|e| err(format!("cannot read {}: {e}", full.display())))?
                .trim_end_matches(['\r', '\n'])
                .to_string()
        }
        _ => return Err(err("set exactly one of env or file".into())),
    };
    if secret.is_empty() {
        return Err(err("the secret is empty".into()));
    }
    if !def.format.contains("{secret}") {
        return Err(err(format!(
            "format {:?} must contain {{secret}}",
            def.format
        )));
    }
    let header = http::HeaderName::from_bytes(def.header.as_bytes()).map_err(|_| {
        err(format!(
            "header {:?} is not a valid header name",
            def.header
        ))
    })?;
    // The error must not echo the value.
    let mut value = http::HeaderValue::from_str(&def.format.replace("{secret}", &secret))
        .map_err(|_| err("the secret contains characters not allowed in a header".into()))?;
    value.set_sensitive(true);
    Ok(Credential {
        name: def.name.clone(),
        header,
        value,
        secret,
    })
}

fn compile_tool(
    path: &Path,
    def: ToolDef,
    credentials: &HashMap<String, Arc<Credential>>,
) -> Result<Tool, PolicyError> {
    let err = |m: String| PolicyError::new(path, format!("tool {:?}: {m}", def.name));
    let (host, port) = split_host_port(&def.host, 443)
        .filter(|(h, _)| !h.is_empty() && !h.contains('/'))
        .ok_or_else(|| err(format!("host {:?} is not HOST or HOST:PORT", def.host)))?;
    let method = compile_method(&def, &err)?;
    let template = PathTemplate::parse(&def.path).map_err(err)?;
    if let Some(r) = &def.rollback {
        rollback_def::validate_def(r).map_err(err)?;
    }
    let mode = Mode::parse(def.mode.as_deref()).map_err(err)?;
    let mut creds = BTreeMap::new();
    for (environment, name) in &def.credential {
        let cred = credentials.get(name).ok_or_else(|| {
            err(format!(
                "credential {name:?} (for environment {environment:?}) is not defined by any [[credential]]"
            ))
        })?;
        creds.insert(environment.clone(), cred.clone());
    }
    let side_effects = compile_side_effects(&def, &method, &err)?;
    check_labels(&def, &err)?;
    let base = path.parent().unwrap_or(Path::new("."));
    let load_schema = |rel: &str| -> Result<Arc<contract::Schema>, PolicyError> {
        contract::Schema::load(&base.join(rel))
            .map(Arc::new)
            .map_err(err)
    };
    let body = match &def.body {
        None => None,
        Some(b) => {
            let format = match b.format.as_str() {
                "json" => BodyFormat::Json,
                "form" => BodyFormat::Form,
                other => return Err(err(format!("body format {other:?} is not json or form"))),
            };
            let schema = b.schema.as_deref().map(load_schema).transpose()?;
            Some(BodySpec { format, schema })
        }
    };
    let max_body_bytes = match def.body.as_ref().and_then(|b| b.max_bytes) {
        Some(n) => usize::try_from(n).map_err(|_| err("body.max_bytes is too large".into()))?,
        None => DEFAULT_MAX_BODY,
    };
    let query = def.query_schema.as_deref().map(load_schema).transpose()?;
    let mcp = compile_mcp(&def, &load_schema, &err)?;
    let response = compile_response(&def, &load_schema, &err)?;
    let (idempotency, idempotency_window) = compile_idempotency(&def, side_effects, &err)?;
    let rate_limit = def
        .rate_limit
        .as_deref()
        .map(|text| parse_rate(text).map_err(|e| err(format!("rate_limit: {e}"))))
        .transpose()?;
    let budget = compile_budget(&def, body.is_some() || mcp.is_some(), &err)?;
    let params = compile_params(&def, &template, &err)?;
    let path_schema = compile_path_params(&def, &template, &err)?;
    let rules = def
        .rules
        .iter()
        .map(|r| rules::Rule::compile(&r.deny_if, &r.message))
        .collect::<Result<Vec<_>, _>>()
        .map_err(err)?;
    let approval = compile_approval(&def, &err)?;
    Ok(Tool {
        approval,
        mcp,
        response,
        mode,
        side_effects,
        body,
        max_body_bytes,
        query,
        idempotency,
        idempotency_window,
        rate_limit,
        budget,
        params,
        path_schema,
        rules,
        credentials: creds,
        name: def.name.clone(),
        version: def.version,
        host,
        port,
        method,
        path: template,
        def,
    })
}

/// `response = { keep, hide, schema }`: pointers that are pointers, and a schema that loads.
fn compile_response(
    def: &ToolDef,
    load_schema: &dyn Fn(&str) -> Result<Arc<contract::Schema>, PolicyError>,
    err: &dyn Fn(String) -> PolicyError,
) -> Result<Option<response::ResponseSpec>, PolicyError> {
    let Some(r) = &def.response else {
        return Ok(None);
    };
    if let Some(bad) = r.keep.iter().chain(&r.hide).find(|p| !p.starts_with('/')) {
        return Err(err(format!(
            "response field {bad:?} must be a JSON pointer such as /id or /card/last4"
        )));
    }
    let mcp = def.mcp_tool.is_some();
    // An MCP answer copies the tool's output into text blocks; toolgate can find a field in
    // every copy only when it names a field of the structured output.
    let under = response::MCP_HIDDEN_UNDER;
    let outside = |p: &&String| {
        !p.strip_prefix(under)
            .is_some_and(|rest| rest.len() > 1 && rest.starts_with('/'))
    };
    if let Some(bad) = r.hide.iter().find(outside).filter(|_| mcp) {
        return Err(err(format!(
            "hide {bad:?}: an MCP tool's answer reaches the agent as its structured content and as text blocks that copy it, and toolgate removes a field from every copy only when it is a field of the structured content: name it as {under}/FIELD (for example {under}/email)"
        )));
    }
    Ok(Some(response::ResponseSpec {
        keep: r.keep.clone(),
        hide: r.hide.clone(),
        schema: r.schema.as_deref().map(load_schema).transpose()?,
        mcp,
    }))
}

/// An HTTP tool's method, or POST for an MCP tool (which names none, or POST).
fn compile_method(
    def: &ToolDef,
    err: &dyn Fn(String) -> PolicyError,
) -> Result<http::Method, PolicyError> {
    Ok(match (&def.mcp_tool, def.method.as_str()) {
        (Some(_), "" | "POST" | "post") => http::Method::POST,
        (Some(_), other) => {
            return Err(err(format!(
                "an MCP tool is called with POST to its endpoint; remove method {other:?}"
            )))
        }
        (None, "") => {
            return Err(err(
                "method is required (or mcp_tool for an MCP tool)".into()
            ))
        }
        (None, m) => http::Method::from_bytes(m.to_ascii_uppercase().as_bytes())
            .map_err(|_| err(format!("method {m:?} is not an HTTP method")))?,
    })
}

/// `mcp_tool` with its argument schema (required), and no HTTP body or query of its own.
fn compile_mcp(
    def: &ToolDef,
    load_schema: &dyn Fn(&str) -> Result<Arc<contract::Schema>, PolicyError>,
    err: &dyn Fn(String) -> PolicyError,
) -> Result<Option<McpSpec>, PolicyError> {
    let Some(name) = &def.mcp_tool else {
        if def.arguments.is_some() || def.pin.is_some() {
            return Err(err(
                "arguments and pin are for MCP tools: add mcp_tool".into()
            ));
        }
        return Ok(None);
    };
    if def.body.is_some() || def.query_schema.is_some() {
        return Err(err(
            "an MCP tool describes its arguments (arguments = \"schema.json\"), not a body or query".into(),
        ));
    }
    if def.idempotency.as_deref() == Some("key") {
        return Err(err(
            "MCP calls carry no Idempotency-Key: use idempotency = \"payload\"".into(),
        ));
    }
    if def.rollback.as_ref().is_some_and(|r| r.none.is_none()) {
        return Err(err(
            "an MCP tool's undo cannot be an HTTP request template yet: declare rollback = { none = \"why\" }".into(),
        ));
    }
    let arguments = def.arguments.as_deref().ok_or_else(|| {
        err(
            "an MCP tool needs arguments = \"schema.json\" (the JSON Schema of its arguments)"
                .into(),
        )
    })?;
    if let Some(pin) = &def.pin {
        let hex = pin.strip_prefix("sha256:").unwrap_or("");
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(err(format!(
                "pin {pin:?} is not sha256:<64 hex> (`toolgate mcp pin URL` prints the current pins)"
            )));
        }
    }
    Ok(Some(McpSpec {
        name: name.clone(),
        arguments: load_schema(arguments)?,
        pin: def.pin.as_ref().map(|p| p.to_ascii_lowercase()),
    }))
}

/// `risk`, `kind` and `redact` hold only what they may.
fn check_labels(def: &ToolDef, err: &dyn Fn(String) -> PolicyError) -> Result<(), PolicyError> {
    if let Some(risk) = def.risk.as_deref() {
        if !matches!(risk, "low" | "medium" | "high" | "critical") {
            return Err(err(format!(
                "risk {risk:?} is not one of low, medium, high, critical"
            )));
        }
    }
    if let Some(kind) = def.kind.as_deref() {
        if !matches!(kind, "api" | "model") {
            return Err(err(format!("kind {kind:?} is not one of api, model")));
        }
    }
    if let Some(bad) = def.redact.iter().find(|p| !p.starts_with('/')) {
        return Err(err(format!(
            "redact entry {bad:?} must be a JSON pointer such as /card/number"
        )));
    }
    Ok(())
}

fn compile_side_effects(
    def: &ToolDef,
    method: &http::Method,
    err: &dyn Fn(String) -> PolicyError,
) -> Result<SideEffects, PolicyError> {
    let safe_method = matches!(
        *method,
        http::Method::GET | http::Method::HEAD | http::Method::OPTIONS
    );
    let side_effects = match def.side_effects.as_deref() {
        Some("none") => SideEffects::None,
        Some("reversible") => SideEffects::Reversible,
        Some("irreversible") => SideEffects::Irreversible,
        None if safe_method => SideEffects::None,
        None => {
            return Err(err(format!(
                "{method} can change things: set side_effects = \"none\", \"reversible\" or \"irreversible\""
            )))
        }
        Some(other) => {
            return Err(err(format!(
                "side_effects {other:?} is not one of none, reversible, irreversible"
            )))
        }
    };
    Ok(side_effects)
}

fn compile_idempotency(
    def: &ToolDef,
    side_effects: SideEffects,
    err: &dyn Fn(String) -> PolicyError,
) -> Result<(Option<Idempotency>, std::time::Duration), PolicyError> {
    let idempotency = match def.idempotency.as_deref() {
        Some("key") => Some(Idempotency::Key),
        Some("payload") => Some(Idempotency::Payload),
        None if side_effects == SideEffects::None => None,
        None => {
            return Err(err(format!(
                "side_effects is {:?}: choose idempotency = \"key\" (the client sends Idempotency-Key) or \"payload\" (identical payloads within the window are one call)",
                side_effects.as_str()
            )))
        }
        Some(other) => return Err(err(format!("idempotency {other:?} is not key or payload"))),
    };
    let idempotency_window = match def.idempotency_window.as_deref() {
        Some(w) => {
            crate::base::parse_duration(w).map_err(|e| err(format!("idempotency_window: {e}")))?
        }
        None => std::time::Duration::from_secs(600),
    };
    Ok((idempotency, idempotency_window))
}

fn compile_budget(
    def: &ToolDef,
    has_body: bool,
    err: &dyn Fn(String) -> PolicyError,
) -> Result<Option<Budget>, PolicyError> {
    let budget = match &def.budget {
        None => None,
        Some(b) => {
            let per = match b.per.as_str() {
                "hour" => Period::Hour,
                "day" => Period::Day,
                "week" => Period::Week,
                "month" => Period::Month,
                other => {
                    return Err(err(format!(
                        "budget.per {other:?} is not hour, day, week or month"
                    )))
                }
            };
            if !has_body {
                return Err(err(
                    "a budget sums a body field, but the tool takes no body".into(),
                ));
            }
            Some(Budget {
                field: b.field.clone(),
                max: b.max,
                per,
            })
        }
    };
    Ok(budget)
}

fn compile_params(
    def: &ToolDef,
    template: &PathTemplate,
    err: &dyn Fn(String) -> PolicyError,
) -> Result<Vec<(String, String)>, PolicyError> {
    let mut params = Vec::new();
    for (name, binding) in &def.params {
        if !template.params().any(|p| p == name) {
            return Err(err(format!(
                "params names {{{name}}}, which is not a parameter of {}",
                def.path
            )));
        }
        rules::check_agent_template(binding).map_err(|e| err(format!("params.{name}: {e}")))?;
        params.push((name.clone(), binding.clone()));
    }
    Ok(params)
}

/// `path_params = { issue_number = { type = "integer" } }`: one schema per parameter of the
/// path, gathered into one object schema the matched parameters are checked against.
fn compile_path_params(
    def: &ToolDef,
    template: &PathTemplate,
    err: &dyn Fn(String) -> PolicyError,
) -> Result<Option<Arc<contract::Schema>>, PolicyError> {
    if def.path_params.is_empty() {
        return Ok(None);
    }
    let mut props = serde_json::Map::new();
    for (name, schema) in &def.path_params {
        if !template.params().any(|p| p == name) {
            return Err(err(format!(
                "path_params names {{{name}}}, which is not a parameter of {}",
                def.path
            )));
        }
        let schema = serde_json::to_value(schema)
            .ok()
            .filter(serde_json::Value::is_object)
            .ok_or_else(|| {
                err(format!(
                    "path_params.{name} must be a JSON Schema written as a table, such as {{ type = \"integer\" }}"
                ))
            })?;
        props.insert(name.clone(), schema);
    }
    // Parameters without a type stay strings of any value.
    let schema = serde_json::json!({"type": "object", "properties": props, "additionalProperties": {"type": "string"}});
    contract::Schema::from_value(&format!("{} path_params", def.name), schema)
        .map(|s| Some(Arc::new(s)))
        .map_err(err)
}

fn compile_approval(
    def: &ToolDef,
    err: &dyn Fn(String) -> PolicyError,
) -> Result<ApprovalSpec, PolicyError> {
    let a = def.approval.clone().unwrap_or(file::ApprovalDef {
        groups: vec![],
        required: None,
        expires: None,
        hold: None,
        allow_self_approval: None,
        webhook: None,
        send: None,
    });
    let dur = |v: &Option<String>,
               default: u64,
               what: &str|
     -> Result<std::time::Duration, PolicyError> {
        match v {
            Some(t) => {
                crate::base::parse_duration(t).map_err(|e| err(format!("approval.{what}: {e}")))
            }
            None => Ok(std::time::Duration::from_secs(default)),
        }
    };
    let required = a.required.unwrap_or(1);
    if required == 0 {
        return Err(err("approval.required must be at least 1".into()));
    }
    if let Some(url) = &a.webhook {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(err(format!(
                "approval.webhook {url:?} must be an http(s) URL"
            )));
        }
    }
    let send = match a.send.as_deref() {
        None => SendOn::default(),
        Some(s) => SendOn::parse(s).ok_or_else(|| {
            err(format!(
                "approval.send {s:?} must be \"on_retry\" or \"on_approval\""
            ))
        })?,
    };
    Ok(ApprovalSpec {
        send,
        groups: a.groups,
        required,
        expires: dur(&a.expires, 3600, "expires")?,
        hold: dur(&a.hold, 10, "hold")?,
        allow_self_approval: a.allow_self_approval.unwrap_or(false),
        webhook: a.webhook,
    })
}

/// Parses `N/second|minute|hour|day`.
pub fn parse_rate(text: &str) -> Result<RateLimit, String> {
    let (n, per) = text
        .split_once('/')
        .ok_or_else(|| format!("{text:?} is not like 10/minute"))?;
    let count: u32 = n
        .trim()
        .parse()
        .ok()
        .filter(|c| *c > 0)
        .ok_or_else(|| format!("{text:?}: the count must be a positive integer"))?;
    let secs = match per.trim() {
        "second" | "s" => 1,
        "minute" | "m" => 60,
        "hour" | "h" => 3600,
        "day" | "d" => 86_400,
        other => {
            return Err(format!(
                "{text:?}: unknown period {other:?} (second, minute, hour, day)"
            ))
        }
    };
    Ok(RateLimit {
        count,
        per: std::time::Duration::from_secs(secs),
        text: text.to_string(),
    })
}

/// A policy set from one TOML text, every `token_env` reading `secret` (for unit tests).
#[cfg(test)]
pub(crate) fn for_tests(toml_text: &str) -> Policy {
    let file: PolicyFile = toml::from_str(toml_text).expect("test policy parses");
    Policy::build(vec![("t.toml".into(), file)], &|_| {
        Some("secret".to_string())
    })
    .expect("test policy builds")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(toml_text: &str) -> Result<Policy, PolicyError> {
        let file: PolicyFile = toml::from_str(toml_text).map_err(|e| PolicyError {
            path: "t.toml".into(),
            message: e.to_string(),
        })?;
        Policy::build(vec![("t.toml".into(), file)], &|v| {
            (v == "TOKEN").then(|| "secret".to_string())
        })
    }

    /// An MCP tool on mcp.example.com/mcp (`extra` lines added), its schema in a temp file.
    fn mcp_tool(name: &str, mcp: &str, extra: &str, schema: &std::path::Path) -> String {
        format!(
            "[[tool]]\nname = \"{name}\"\nhost = \"mcp.example.com\"\npath = \"/mcp\"\nmcp_tool = \"{mcp}\"\narguments = \"{}\"\n{extra}\n",
            schema.display()
        )
    }

    #[test]
    fn mcp_tools_share_an_endpoint_and_are_checked_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let schema = dir.path().join("args.json");
        std::fs::write(
            &schema,
            r#"{"type": "object", "properties": {"id": {"type": "string"}}}"#,
        )
        .unwrap();
        let two = format!(
            "{BASE}{}{}",
            mcp_tool("t.get", "get", "side_effects = \"none\"", &schema),
            mcp_tool(
                "t.create",
                "create",
                "side_effects = \"reversible\"\nidempotency = \"payload\"",
                &schema
            )
        );
        let p = build(&two).unwrap();
        let served = p.mcp_endpoint("mcp.example.com", 443, "/mcp");
        assert_eq!(served.len(), 2);
        assert!(served.iter().all(|t| t.method == http::Method::POST));
        assert!(p.mcp_endpoint("mcp.example.com", 443, "/other").is_empty());
        // MCP tools are never matched by method and path alone.
        assert!(p
            .match_tool("mcp.example.com", 443, &http::Method::POST, "/mcp")
            .is_none());

        let refused = |extra: &str, why: &str| {
            let text = format!("{BASE}{}", mcp_tool("t.x", "x", extra, &schema));
            let err = build(&text).unwrap_err().to_string();
            assert!(err.contains(why), "{extra}: {err}");
        };
        refused(
            "side_effects = \"reversible\"\nidempotency = \"key\"",
            "no Idempotency-Key",
        );
        refused("side_effects = \"none\"\nmethod = \"GET\"", "POST");
        refused(
            "side_effects = \"none\"\nbody = { format = \"json\" }",
            "not a body",
        );
        refused(
            "side_effects = \"none\"\npin = \"sha256:abc\"",
            "sha256:<64 hex>",
        );
        refused(
            "side_effects = \"reversible\"\nidempotency = \"payload\"\nrollback = { method = \"POST\", path = \"/mcp\" }",
            "rollback = { none",
        );
        // An MCP tool hides fields of its structured output, which toolgate finds in every
        // copy of the answer; a field anywhere else it could not.
        for elsewhere in [
            "/email",
            "/result/content/0/text",
            "/result/structuredContent",
            "/result/structuredContent/",
        ] {
            refused(
                &format!("side_effects = \"none\"\nresponse = {{ hide = [\"{elsewhere}\"] }}"),
                "/result/structuredContent/FIELD",
            );
        }
        let hides = format!(
            "{BASE}{}",
            mcp_tool(
                "t.h",
                "h",
                "side_effects = \"none\"\nresponse = { hide = [\"/result/structuredContent/email\"] }",
                &schema
            )
        );
        let policy = build(&hides).unwrap();
        assert!(policy.tool("t.h").unwrap().response.as_ref().unwrap().mcp);
        let no_args = format!(
            "{BASE}[[tool]]\nname = \"t.y\"\nhost = \"mcp.example.com\"\npath = \"/mcp\"\nmcp_tool = \"y\"\nside_effects = \"none\"\n"
        );
        assert!(build(&no_args)
            .unwrap_err()
            .to_string()
            .contains("needs arguments"));
        // The same MCP tool contracted twice on one endpoint, or an HTTP tool on the endpoint.
        let twice = format!(
            "{BASE}{}{}",
            mcp_tool("t.a", "same", "side_effects = \"none\"", &schema),
            mcp_tool("t.b", "same", "side_effects = \"none\"", &schema)
        );
        assert!(build(&twice)
            .unwrap_err()
            .to_string()
            .contains("both contract MCP tool"));
        let http_too = format!(
            "{BASE}{}[[tool]]\nname = \"t.http\"\nhost = \"mcp.example.com\"\nmethod = \"POST\"\npath = \"/mcp\"\nside_effects = \"none\"\n",
            mcp_tool("t.a", "a", "side_effects = \"none\"", &schema)
        );
        assert!(build(&http_too)
            .unwrap_err()
            .to_string()
            .contains("could match the same request"));
    }

    const BASE: &str = r#"
[[agent]]
id = "bot"
token_env = "TOKEN"
owner = "alice@example.com"
environment = "staging"
tools = ["stripe.*"]

[[tool]]
name = "stripe.customers.retrieve"
host = "api.stripe.com"
method = "GET"
path = "/v1/customers/{customer}"
"#;

    #[test]
    fn agents_are_known_by_source_networks_that_never_overlap() {
        let agents = |a: &str, b: &str| {
            format!(
                "{BASE}\n[[agent]]\nid = \"t1\"\nowner = \"o\"\nenvironment = \"staging\"\nsources = [{a}]\n\n\
                 [[agent]]\nid = \"t2\"\nowner = \"o\"\nenvironment = \"staging\"\nsources = [{b}]\n"
            )
        };
        let p = build(&agents(r#""10.0.3.0/28""#, r#""fd00::5/128", "10.0.4.7""#)).unwrap();
        let who = |ip: &str| {
            p.agent_for_source(ip.parse().unwrap())
                .map(|a| a.id.clone())
        };
        assert_eq!(who("10.0.3.9").as_deref(), Some("t1"));
        assert_eq!(who("::ffff:10.0.3.9").as_deref(), Some("t1"));
        assert_eq!(who("10.0.4.7").as_deref(), Some("t2"));
        assert_eq!(who("fd00::5").as_deref(), Some("t2"));
        assert_eq!(who("10.0.3.16"), None);
        // Known by source only: no token works on the proxy listener.
        assert!(p.authenticate("t1", "").is_none());
        let e = build(&agents(r#""10.0.3.0/24""#, r#""10.0.3.8/29""#)).unwrap_err();
        assert!(e.message.contains("overlaps"), "{}", e.message);
        let e = build(&agents(r#""10.0.3.1/24""#, r#""10.0.9.0/24""#)).unwrap_err();
        assert!(e.message.contains("host bits"), "{}", e.message);
        let e = build(&agents(r#""not-an-address""#, r#""10.0.9.0/24""#)).unwrap_err();
        assert!(e.message.contains("not an address"), "{}", e.message);
    }

    #[test]
    fn authenticates_and_matches() {
        let p = build(BASE).unwrap();
        assert!(p.authenticate("bot", "secret").is_some());
        assert!(p.authenticate("bot", "wrong").is_none());
        assert!(p.authenticate("nobody", "secret").is_none());
        assert!(p.allows_host("API.STRIPE.COM", 443));
        assert!(!p.allows_host("api.stripe.com", 8443));
        let m = p
            .match_tool(
                "api.stripe.com",
                443,
                &http::Method::GET,
                "/v1/customers/cus_1",
            )
            .unwrap();
        assert_eq!(m.params["customer"], "cus_1");
        assert!(p
            .match_tool(
                "api.stripe.com",
                443,
                &http::Method::DELETE,
                "/v1/customers/cus_1"
            )
            .is_none());
    }

    #[test]
    fn unknown_keys_name_the_line() {
        let e = build(&format!("{BASE}\nsurprise = 1\n")).unwrap_err();
        assert!(e.message.contains("surprise"), "{e}");
        assert!(e.message.contains("line"), "{e}");
    }

    #[test]
    fn a_literal_segment_wins_and_only_true_duplicates_are_a_load_error() {
        let tool = |name: &str, path: &str| {
            format!("\n[[tool]]\nname = \"{name}\"\nhost = \"api.stripe.com\"\nmethod = \"GET\"\npath = \"{path}\"\n")
        };
        let text = format!(
            "{BASE}{}",
            tool("stripe.customers.search", "/v1/customers/search")
        );
        let p = build(&text).unwrap();
        let name = |host: &str, path: &str| {
            p.match_tool(host, 443, &http::Method::GET, path)
                .map(|m| (m.tool.name.clone(), m.params))
        };
        let (n, params) = name("api.stripe.com", "/v1/customers/search").unwrap();
        assert_eq!((n.as_str(), params.len()), ("stripe.customers.search", 0));
        let (n, params) = name("API.Stripe.com", "/v1/customers/cus_1").unwrap();
        assert_eq!(n, "stripe.customers.retrieve");
        assert_eq!(params["customer"], "cus_1");
        assert!(name("api.stripe.com", "/v1/customers").is_none());
        assert!(p
            .match_tool(
                "api.stripe.com",
                443,
                &http::Method::POST,
                "/v1/customers/search"
            )
            .is_none());
        // The same shape under other parameter names matches the very same requests.
        let text = format!(
            "{BASE}{}",
            tool("stripe.customers.get", "/v1/customers/{id}")
        );
        let e = build(&text).unwrap_err();
        assert!(e.message.contains("match the same requests"), "{e}");
        assert!(
            e.message.contains("stripe.customers.retrieve")
                && e.message.contains("stripe.customers.get"),
            "{e}"
        );
        let e = build(&format!(
            "{BASE}{}",
            tool("stripe.customers.retrieve", "/x")
        ))
        .unwrap_err();
        assert!(e.message.contains("defined twice"), "{e}");
        // Typed path parameters: only parameters of the path, each a schema written as a table.
        let typed = |extra: &str| {
            format!(
                "{BASE}{}{extra}\n",
                tool("stripe.customers.search", "/v1/customers/search/{page}")
            )
        };
        assert!(build(&typed("path_params = { page = { type = \"integer\" } }")).is_ok());
        let e = build(&typed("path_params = { nope = { type = \"integer\" } }")).unwrap_err();
        assert!(
            e.message.contains("{nope}, which is not a parameter"),
            "{e}"
        );
        let e = build(&typed("path_params = { page = \"integer\" }")).unwrap_err();
        assert!(
            e.message
                .contains("must be a JSON Schema written as a table"),
            "{e}"
        );
    }

    #[test]
    fn missing_token_env_names_the_variable() {
        let e = build(&BASE.replace("token_env = \"TOKEN\"", "token_env = \"NOPE\"")).unwrap_err();
        assert!(e.message.contains("NOPE"), "{e}");
    }

    #[test]
    fn credentials_resolve_per_environment_and_never_print_the_secret() {
        let text = format!(
            "{BASE}\ncredential = {{ staging = \"c\" }}\n\n[[credential]]\nname = \"c\"\nenv = \"TOKEN\"\nheader = \"X-Key\"\nformat = \"Token {{secret}}\"\n"
        );
        let p = build(&text).unwrap();
        let tool = &p.tools()[0];
        let cred = &tool.credentials["staging"];
        assert_eq!(cred.header_value(), "Token secret");
        assert!(cred.header_value().is_sensitive());
        assert!(!format!("{:?}", p).contains("Token secret"));
        let missing = BASE.to_string() + "credential = { staging = \"nope\" }\n";
        assert!(build(&missing).unwrap_err().message.contains("\"nope\""));
    }

    #[test]
    fn globs() {
        assert!(glob_match("*", "stripe.refunds.create"));
        assert!(glob_match("stripe.*", "stripe.refunds.create"));
        assert!(glob_match("*.create", "stripe.refunds.create"));
        assert!(glob_match("stripe.*.create", "stripe.refunds.create"));
        assert!(!glob_match("stripe.*", "github.repos.get"));
        assert!(!glob_match(
            "stripe.customers.create",
            "stripe.customers.created"
        ));
        assert!(!glob_match("a*a", "a"));
    }

    #[test]
    fn host_port_splitting() {
        assert_eq!(split_host_port("a.b", 443), Some(("a.b".into(), 443)));
        assert_eq!(split_host_port("A.b:8443", 443), Some(("a.b".into(), 8443)));
        assert_eq!(split_host_port("[::1]:9", 443), Some(("::1".into(), 9)));
        assert_eq!(split_host_port("[::1]", 443), Some(("::1".into(), 443)));
        assert_eq!(split_host_port("a:b", 443), None);
    }
}
