//! Finding what a request is about in a compiled policy set: the agent behind a token or a
//! source address, the approver or reviewer behind an admin token, the tool a request (or an
//! MCP call) is for, and the hosts the egress allow-list names. The routes are built here too,
//! as tools are added, so that a tool that would match another's requests is refused.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::template::Router;
use super::types::{Agent, Approver, Matched, Tool};

/// One host's HTTP tools, a router per port and method.
type HostRoutes = HashMap<(u16, http::Method), Router<Arc<Tool>>>;

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
    /// The GraphQL fields, few: matched by endpoint and then by operation type and field.
    graphql_tools: Vec<Arc<Tool>>,
    /// Issuers of signed assertions about the people agents act for.
    identity_providers: Vec<Arc<super::types::IdentityProvider>>,
    /// Per-user OAuth connections by name.
    connections: std::collections::BTreeMap<String, Arc<super::types::Connection>>,
    /// The limits of GraphQL endpoints declared with `[[graphql_endpoint]]` (host, port, path).
    graphql_limits: Vec<((String, u16, String), crate::graphql::Limits)>,
    /// The ports each host is named with, in the order of the tools: the egress allow-list,
    /// looked up per connection.
    ports: HashMap<String, Vec<u16>>,
    /// The files the set was loaded from, for logs.
    pub files: Vec<PathBuf>,
}

impl Policy {
    /// Adds a compiled agent, refusing a second agent of the same id or one whose sources
    /// overlap another's.
    pub(super) fn add_agent(&mut self, agent: Agent) -> Result<(), String> {
        if self.agents.contains_key(&agent.id) {
            return Err(format!("agent {:?} is defined twice", agent.id));
        }
        if let Some(clash) = overlapping_sources(&agent, self.agents.values()) {
            return Err(clash);
        }
        self.agents.insert(agent.id.clone(), Arc::new(agent));
        Ok(())
    }

    /// Adds an approver, refusing an id already taken by an approver or a reviewer.
    pub(super) fn add_approver(&mut self, approver: Approver) -> Result<(), String> {
        if self.principal_taken(&approver.id) {
            return Err(format!(
                "approver {:?} is defined twice (or is a reviewer)",
                approver.id
            ));
        }
        self.approvers.push(Arc::new(approver));
        Ok(())
    }

    /// Adds a reviewer, refusing an id already taken by a reviewer or an approver.
    pub(super) fn add_reviewer(&mut self, reviewer: Approver) -> Result<(), String> {
        if self.principal_taken(&reviewer.id) {
            return Err(format!(
                "reviewer {:?} is defined twice (or is an approver)",
                reviewer.id
            ));
        }
        self.reviewers.push(Arc::new(reviewer));
        Ok(())
    }

    fn principal_taken(&self, id: &str) -> bool {
        self.approvers
            .iter()
            .chain(&self.reviewers)
            .any(|a| a.id == id)
    }

    /// Adds a compiled tool to the routes, refusing one that would match the same requests as
    /// a tool already in (the message names both).
    pub(super) fn add_tool(&mut self, tool: Arc<Tool>) -> Result<(), String> {
        // An MCP or GraphQL endpoint and an HTTP contract may not share a request at all; MCP
        // tools on one endpoint are told apart by the server's tool name, GraphQL fields by
        // their operation type and name.
        let special = tool.mcp.is_some() || tool.graphql.is_some();
        let clashing = if special {
            self.tools.iter().find_map(|other| clash(other, &tool))
        } else {
            self.mcp_tools
                .iter()
                .chain(&self.graphql_tools)
                .find_map(|other| clash(other, &tool))
        };
        if let Some(clash) = clashing {
            return Err(clash);
        }
        if tool.mcp.is_some() {
            self.mcp_tools.push(tool.clone());
        } else if tool.graphql.is_some() {
            self.graphql_tools.push(tool.clone());
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
        served_at(&self.mcp_tools, host, port, path)
    }

    /// The GraphQL fields contracted at an endpoint (empty: `path` on that host is no GraphQL
    /// endpoint). `path` must have passed [`check_path`].
    pub fn graphql_endpoint(&self, host: &str, port: u16, path: &str) -> Vec<Arc<Tool>> {
        served_at(&self.graphql_tools, host, port, path)
    }

    /// Adds an identity provider, refusing a second of the same name or issuer.
    pub(super) fn add_identity_provider(
        &mut self,
        provider: super::types::IdentityProvider,
    ) -> Result<(), String> {
        if let Some(other) = self
            .identity_providers
            .iter()
            .find(|p| p.name == provider.name || p.issuer == provider.issuer)
        {
            return Err(format!(
                "identity providers {:?} and {:?} share a name or an issuer: an assertion names its issuer, which must name one provider",
                other.name, provider.name
            ));
        }
        self.identity_providers.push(Arc::new(provider));
        Ok(())
    }

    /// The identity provider whose issuer is `issuer`.
    pub fn identity_provider(&self, issuer: &str) -> Option<&Arc<super::types::IdentityProvider>> {
        self.identity_providers.iter().find(|p| p.issuer == issuer)
    }

    /// The identity provider named `name`.
    pub fn identity_provider_named(
        &self,
        name: &str,
    ) -> Option<&Arc<super::types::IdentityProvider>> {
        self.identity_providers.iter().find(|p| p.name == name)
    }

    /// The identity providers approvers and reviewers sign in to the page through.
    pub fn login_providers(&self) -> impl Iterator<Item = &Arc<super::types::IdentityProvider>> {
        self.identity_providers.iter().filter(|p| p.login.is_some())
    }

    /// Sets the per-user OAuth connections (compiled before the credentials that name them).
    pub(super) fn set_connections(
        &mut self,
        connections: std::collections::BTreeMap<String, Arc<super::types::Connection>>,
    ) {
        self.connections = connections;
    }

    /// The `[[connection]]` named `name`.
    pub fn connection(&self, name: &str) -> Option<&Arc<super::types::Connection>> {
        self.connections.get(name)
    }

    /// Every `[[connection]]`, by name.
    pub fn connections(&self) -> impl Iterator<Item = &Arc<super::types::Connection>> {
        self.connections.values()
    }

    /// Whether any identity provider is declared.
    pub fn has_identity_providers(&self) -> bool {
        !self.identity_providers.is_empty()
    }

    /// Declares the limits of a GraphQL endpoint, which must serve contracted fields and be
    /// declared once.
    pub(super) fn add_graphql_limits(
        &mut self,
        at: (String, u16, String),
        limits: crate::graphql::Limits,
    ) -> Result<(), String> {
        let (host, port, path) = (&at.0, at.1, &at.2);
        if self.graphql_endpoint(host, port, path).is_empty() {
            return Err(format!(
                "graphql_endpoint {host}:{port}{path} serves no contracted GraphQL field: declare its limits beside a [[tool]] with graphql = \"...\" on that host and path"
            ));
        }
        if self.graphql_limits.iter().any(|(a, _)| *a == at) {
            return Err(format!(
                "graphql_endpoint {host}:{port}{path} is declared twice"
            ));
        }
        self.graphql_limits.push((at, limits));
        Ok(())
    }

    /// The limits a document sent to a GraphQL endpoint is read with: declared, else the
    /// defaults (introspection is the caller's to allow).
    pub fn graphql_limits(&self, host: &str, port: u16, path: &str) -> crate::graphql::Limits {
        self.graphql_limits
            .iter()
            .find(|((h, p, pa), _)| *p == port && h.eq_ignore_ascii_case(host) && pa == path)
            .map(|(_, l)| l.clone())
            .unwrap_or_default()
    }

    /// The contract of one GraphQL root field at an endpoint, if any. `path` must have passed
    /// [`check_path`].
    pub fn graphql_field(
        &self,
        host: &str,
        port: u16,
        path: &str,
        operation: crate::graphql::OperationType,
        field: &str,
    ) -> Option<Arc<Tool>> {
        self.graphql_endpoint(host, port, path)
            .into_iter()
            .find(|t| {
                t.graphql
                    .as_ref()
                    .is_some_and(|g| g.operation == operation && g.field == field)
            })
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

/// The tools of `list` served at an endpoint (host in any case).
fn served_at(list: &[Arc<Tool>], host: &str, port: u16, path: &str) -> Vec<Arc<Tool>> {
    list.iter()
        .filter(|t| t.port == port && t.host.eq_ignore_ascii_case(host))
        .filter(|t| t.path.matches(path).is_some())
        .cloned()
        .collect()
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

/// What tells apart the tools served at one endpoint.
enum Served<'a> {
    Http,
    Mcp(&'a str),
    Graphql(String),
}

impl Served<'_> {
    fn of(tool: &Tool) -> Served<'_> {
        match (&tool.mcp, &tool.graphql) {
            (Some(m), _) => Served::Mcp(&m.name),
            (None, Some(g)) => Served::Graphql(g.label()),
            (None, None) => Served::Http,
        }
    }
}

/// Why two tools of which one or both are MCP tools or GraphQL fields cannot both be loaded, if
/// they cannot: requests both could match (MCP tools share an endpoint and differ by the
/// server's tool name, GraphQL fields by operation type and name). A GraphQL endpoint takes GET
/// as well as POST, so its method is no way apart.
fn clash(other: &Tool, tool: &Tool) -> Option<String> {
    let graphql = other.graphql.is_some() || tool.graphql.is_some();
    let same_endpoint = other.host == tool.host
        && other.port == tool.port
        && (graphql || other.method == tool.method)
        && other.path.overlaps(&tool.path);
    match (same_endpoint, Served::of(other), Served::of(tool)) {
        (false, _, _) => None,
        (true, Served::Mcp(a), Served::Mcp(b)) if a == b => Some(format!(
            "tools {:?} and {:?} both contract MCP tool {:?} on {}{}",
            other.name, tool.name, a, tool.host, tool.path.as_str()
        )),
        (true, Served::Graphql(a), Served::Graphql(b)) if a == b => Some(format!(
            "tools {:?} and {:?} both contract GraphQL field {a} on {}{}: one contract per field and endpoint",
            other.name, tool.name, tool.host, tool.path.as_str()
        )),
        (true, Served::Mcp(_), Served::Mcp(_)) | (true, Served::Graphql(_), Served::Graphql(_)) => {
            None
        }
        (true, _, _) => Some(format!(
            "tools {:?} ({} {}) and {:?} ({} {}) could match the same request on {}; make their paths distinct",
            other.name, other.method, other.path.as_str(),
            tool.name, tool.method, tool.path.as_str(), tool.host
        )),
    }
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
