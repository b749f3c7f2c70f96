//! The compiled, typed model of a policy set: agents, approvers, credentials and tools as the
//! request path reads them. Nothing here knows the TOML format (`compile` turns definitions
//! into these) or how a request finds them (`lookup`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::template::PathTemplate;
use super::{contract, response, rules};

/// A policy set failed to load. The message names the file and, where the TOML parser knows it,
/// the line.
#[derive(Debug, thiserror::Error)]
#[error("{}: {message}", path.display())]
pub struct PolicyError {
    pub path: PathBuf,
    pub message: String,
}

impl PolicyError {
    pub(super) fn new(path: &Path, message: impl Into<String>) -> Self {
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
    pub(super) token_sha256: Option<[u8; 32]>,
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
    /// Whether its calls must name the person they act for.
    pub users: Users,
    /// The person the request acts for: none as the policy defines it, set for one request by
    /// [`Agent::acting_for`].
    pub user: Option<Arc<EndUser>>,
}

/// Whether an agent's calls name the person they act for (`users = "required"`), or may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Users {
    #[default]
    Optional,
    Required,
}

/// The person a call acts for: from the issued token it came with, or from the signed
/// assertion it carried (`Toolgate-User-Assertion`), verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndUser {
    pub id: String,
    pub groups: Vec<String>,
    /// What named them: `token tok_…` or `identity provider NAME`.
    pub via: String,
    /// The verified assertion that named them, when one did (a token exchange sends it).
    pub assertion: Option<Assertion>,
}

/// A verified user assertion as the call carried it, and its provider: never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Assertion {
    pub provider: String,
    pub token: Arc<str>,
}

impl std::fmt::Debug for Assertion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Assertion")
            .field("provider", &self.provider)
            .finish_non_exhaustive()
    }
}

/// `[[identity_provider]]`: an issuer of signed assertions about people (an OIDC provider),
/// its keys, and how its tokens name the person.
#[derive(Debug)]
pub struct IdentityProvider {
    pub name: String,
    pub issuer: String,
    pub audience: String,
    pub keys: JwksSource,
    /// Asymmetric algorithms only (never `none`, never HMAC).
    pub algorithms: Vec<jsonwebtoken::Algorithm>,
    pub user_claim: String,
    pub groups_claim: Option<String>,
    pub leeway: std::time::Duration,
    /// Sign-in to the page through this provider.
    pub login: Option<Login>,
    /// The provider's group → the toolgate group it grants at sign-in.
    pub group_map: std::collections::BTreeMap<String, String>,
}

/// The page's OIDC client at an identity provider (authorization code with PKCE).
#[derive(Debug)]
pub struct Login {
    pub client_id: String,
    pub client_secret: ClientSecret,
    pub scopes: Vec<String>,
    /// Given explicitly; else read from the issuer's `/.well-known/openid-configuration`.
    pub endpoints: Option<LoginEndpoints>,
}

/// Where the browser is sent to sign in, and where the code is exchanged.
#[derive(Debug, Clone)]
pub struct LoginEndpoints {
    pub authorize_url: String,
    pub token: HttpsUrl,
}

/// An `https://` URL split the way the upstream client takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpsUrl {
    pub host: String,
    pub port: u16,
    pub path: String,
}

/// A client secret: never printed.
pub struct ClientSecret(pub String);

impl std::fmt::Debug for ClientSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientSecret(..)")
    }
}

/// Where an identity provider's keys come from: a file (read at load), or the provider's
/// `jwks_uri` (fetched and kept fresh by the gateway).
#[derive(Debug)]
pub enum JwksSource {
    File(Arc<jsonwebtoken::jwk::JwkSet>),
    Url {
        host: String,
        port: u16,
        path: String,
    },
}

impl Agent {
    /// The agent as it stands for one request made for `user`.
    pub fn acting_for(self: &Arc<Agent>, user: EndUser) -> Arc<Agent> {
        let mut agent = Agent::clone(self);
        agent.user = Some(Arc::new(user));
        Arc::new(agent)
    }
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
    pub(super) fn parse(s: Option<&str>) -> Result<Mode, String> {
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

    /// Renders a binding template such as `{agent.attrs.github_org}` for this agent. `None`
    /// when the agent lacks what the template names: the binding then refuses (fail closed).
    pub fn render_binding(&self, template: &str) -> Option<String> {
        let mut out = String::new();
        let mut rest = template;
        while let Some(start) = rest.find('{') {
            out.push_str(&rest[..start]);
            let end = rest[start..].find('}')? + start;
            let name = &rest[start + 1..end];
            let value = match name {
                "agent.id" => Some(self.id.clone()),
                "agent.owner" => Some(self.owner.clone()),
                "agent.tenant" => self.tenant.clone(),
                "agent.environment" => Some(self.environment.clone()),
                other => other
                    .strip_prefix("agent.attrs.")
                    .and_then(|k| self.attrs.get(k).cloned()),
            }?;
            out.push_str(&value);
            rest = &rest[end + 1..];
        }
        out.push_str(rest);
        Some(out)
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

impl Idempotency {
    /// `key` or `payload`, as written in policies.
    pub fn as_str(self) -> &'static str {
        match self {
            Idempotency::Key => "key",
            Idempotency::Payload => "payload",
        }
    }
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
#[derive(Debug, Clone)]
pub struct Approver {
    pub id: String,
    pub(super) token_sha256: [u8; 32],
    pub groups: Vec<String>,
    /// On the page, signed in through an identity provider: "signed in via NAME" (what their
    /// acts record).
    pub signed_in_via: Option<String>,
    /// The identity provider they sign in to the page through (`sso = "NAME"`).
    pub sso: Option<String>,
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
    /// Where a per-user credential's token comes from; None: a shared secret (`value`).
    per_user: Option<PerUser>,
    /// The header value's template (`"Bearer {secret}"`), for a per-user token.
    format: String,
}

/// Where a per-user credential's token comes from.
#[derive(Debug, Clone)]
pub enum PerUser {
    /// The end user's token from this `[[connection]]` (its name).
    Connection(String),
    /// A token exchanged for the end user's assertion (RFC 8693).
    Exchange(Arc<Exchange>),
}

/// `exchange = { ... }`: the token endpoint and what is asked of it.
#[derive(Debug)]
pub struct Exchange {
    pub token: HttpsUrl,
    pub audience: Option<String>,
    pub scope: Option<String>,
    pub client_id: String,
    pub client_secret: ClientSecret,
    pub identity_provider: Option<String>,
    /// The RFC 8693 URN of the assertion's type.
    pub subject_token_type: &'static str,
}

/// `[[connection]]`: an OAuth client toolgate runs the authorization-code flow with (PKCE
/// always), once per person.
#[derive(Debug)]
pub struct Connection {
    pub name: String,
    pub authorize_url: String,
    pub token: HttpsUrl,
    pub revoke: Option<HttpsUrl>,
    pub client_id: String,
    pub client_secret: ClientSecret,
    pub scopes: Vec<String>,
    /// How toolgate authenticates to the token and revocation endpoints.
    pub client_auth: ClientAuth,
    /// The ID token claim that must name the person (`user_claim`): a link opened by someone
    /// else connects nothing.
    pub user_claim: Option<String>,
}

/// A client's authentication at a provider's token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// HTTP Basic (`client_secret_basic`, RFC 6749's default).
    Basic,
    /// The id and secret in the form (`client_secret_post`).
    Post,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("name", &self.name)
            .field("header", &self.header)
            .field("per_user", &self.per_user)
            .finish_non_exhaustive()
    }
}

impl Credential {
    /// A credential whose header value (`value`, marked sensitive) holds `secret`.
    pub(super) fn new(
        name: String,
        header: http::HeaderName,
        value: http::HeaderValue,
        secret: String,
    ) -> Credential {
        Credential {
            name,
            header,
            value,
            secret,
            per_user: None,
            format: String::new(),
        }
    }

    /// A per-user credential: its token is found for each call ([`Credential::with_token`]).
    /// Until then it carries no value at all.
    pub(super) fn per_user(
        name: String,
        header: http::HeaderName,
        format: String,
        per_user: PerUser,
    ) -> Credential {
        Credential {
            name,
            header,
            value: http::HeaderValue::from_static(""),
            secret: String::new(),
            per_user: Some(per_user),
            format,
        }
    }

    /// Where a per-user credential's token comes from (None: a shared secret).
    pub fn source(&self) -> Option<&PerUser> {
        self.per_user.as_ref()
    }

    /// This per-user credential filled with one person's `token`: what a call injects.
    pub fn with_token(&self, token: &str) -> Result<Credential, String> {
        let mut value = http::HeaderValue::from_str(&self.format.replace("{secret}", token))
            .map_err(|_| "the token holds characters not allowed in a header".to_string())?;
        value.set_sensitive(true);
        Ok(Credential {
            name: self.name.clone(),
            header: self.header.clone(),
            value,
            secret: token.to_string(),
            per_user: None,
            format: String::new(),
        })
    }

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
    /// A GraphQL root field: matched by its endpoint, operation type and field name.
    pub graphql: Option<GraphqlSpec>,
    /// What of the answer is kept and shown.
    pub response: Option<Arc<response::ResponseSpec>>,
    /// What the tool is: an API, or a model whose answers are metered.
    pub kind: ToolKind,
    /// The team that answers for the tool (shown, never enforced).
    pub owner: Option<String>,
    pub risk: Option<Risk>,
    /// How a committed call is undone, if it can be.
    pub rollback: Option<Rollback>,
    /// The approval summary template (`{body.amount}`…); None: method and path.
    pub summary: Option<String>,
    /// JSON pointers of body (or MCP argument) fields the audit log never records.
    pub redact: Vec<String>,
    /// Request headers forwarded besides the defaults.
    pub headers: Vec<String>,
    /// The names models use for this tool in their tool calls (`refund_payment`): a call is
    /// joined to the model answer that asked for it by these names.
    pub model_tools: Vec<String>,
    /// Whether the upstream gets the call's trace context (`propagate_trace`).
    pub propagate_trace: bool,
    /// How much of a model's answer the audit keeps (`model_answer`; a model tool).
    pub model_answer: ModelAnswerLimits,
}

/// `model_answer`: how much of one model answer the audit keeps, so that an answer cannot
/// flood the log: its tool calls, each call's arguments, and the model's own text (none unless
/// a policy asks for it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelAnswerLimits {
    pub tool_calls: usize,
    pub argument_bytes: usize,
    pub text_bytes: usize,
}

impl ModelAnswerLimits {
    /// The most `model_answer` may ask for of each.
    pub const MAX: ModelAnswerLimits = ModelAnswerLimits {
        tool_calls: 256,
        argument_bytes: 64 * 1024,
        text_bytes: 64 * 1024,
    };
}

impl Default for ModelAnswerLimits {
    fn default() -> Self {
        ModelAnswerLimits {
            tool_calls: 32,
            argument_bytes: 8 * 1024,
            text_bytes: 0,
        }
    }
}

/// `kind`: what a tool is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ToolKind {
    /// An API (the default).
    #[default]
    Api,
    /// A model: its answers are read for token usage.
    Model,
}

impl ToolKind {
    pub(super) fn parse(s: Option<&str>) -> Result<ToolKind, String> {
        match s {
            None | Some("api") => Ok(ToolKind::Api),
            Some("model") => Ok(ToolKind::Model),
            Some(other) => Err(format!("kind {other:?} is not one of api, model")),
        }
    }
}

/// `risk`: a label shown to approvers and rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Risk {
    Low,
    Medium,
    High,
    Critical,
}

impl Risk {
    pub(super) fn parse(s: &str) -> Result<Risk, String> {
        match s {
            "low" => Ok(Risk::Low),
            "medium" => Ok(Risk::Medium),
            "high" => Ok(Risk::High),
            "critical" => Ok(Risk::Critical),
            other => Err(format!(
                "risk {other:?} is not one of low, medium, high, critical"
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Risk::Low => "low",
            Risk::Medium => "medium",
            Risk::High => "high",
            Risk::Critical => "critical",
        }
    }
}

impl Tool {
    /// Its risk as proposals and rules show it: empty when it declares none.
    pub fn risk_text(&self) -> &'static str {
        self.risk.map(Risk::as_str).unwrap_or_default()
    }
}

/// `rollback`: how a committed call is undone.
#[derive(Debug, Clone)]
pub enum Rollback {
    /// It cannot be, for the reason given.
    None(String),
    /// By a request whose path and body are templates over the call and its response
    /// (`{response.id}`, `{params.x}`, `{body.x}`, `{query.x}`).
    Request {
        method: http::Method,
        path: String,
        body: Option<serde_json::Value>,
    },
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

/// What a GraphQL contract names: one root field of one operation type.
#[derive(Debug)]
pub struct GraphqlSpec {
    pub operation: crate::graphql::OperationType,
    /// The schema's field name (`createIssue`), never an alias.
    pub field: String,
    /// The field's arguments after variable substitution, closed (a field declared without
    /// `arguments` takes none).
    pub arguments: Arc<contract::Schema>,
}

impl GraphqlSpec {
    /// `mutation.createIssue`, as written in the contract.
    pub fn label(&self) -> String {
        format!("{}.{}", self.operation.as_str(), self.field)
    }
}

/// Default body limit per tool.
pub const DEFAULT_MAX_BODY: usize = 1024 * 1024;

/// A tool that matched a request, with the path parameters it captured.
#[derive(Debug, Clone)]
pub struct Matched {
    pub tool: Arc<Tool>,
    pub params: BTreeMap<String, String>,
}
