//! The policy file format of DESIGN section 2, as written by people. Unknown keys are errors so
//! that a typo (`mdoe = "deny"`) can never silently loosen a policy.

use std::collections::BTreeMap;

use serde::Deserialize;

/// One TOML file: any mix of agents, approvers, credentials and tools.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    #[serde(default)]
    pub agent: Vec<AgentDef>,
    #[serde(default)]
    pub approver: Vec<ApproverDef>,
    /// Security reviewers: read captured traffic and stories on the admin listener, never act.
    #[serde(default)]
    pub reviewer: Vec<ReviewerDef>,
    #[serde(default)]
    pub credential: Vec<CredentialDef>,
    #[serde(default)]
    pub tool: Vec<ToolDef>,
    /// Issuers of signed assertions about the people agents act for.
    #[serde(default)]
    pub identity_provider: Vec<IdentityProviderDef>,
    /// Limits on the documents a GraphQL endpoint takes (defaults when none is declared).
    #[serde(default)]
    pub graphql_endpoint: Vec<GraphqlEndpointDef>,
    /// Per-user OAuth connections (a person links their account once; calls use their token).
    #[serde(default)]
    pub connection: Vec<ConnectionDef>,
}

/// `[[connection]]`: an OAuth client toolgate runs the authorization-code flow (with PKCE) with,
/// once per person, keeping each person's tokens.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionDef {
    pub name: String,
    pub authorize_url: String,
    pub token_url: String,
    pub revoke_url: Option<String>,
    pub client_id: String,
    pub client_secret_env: Option<String>,
    pub client_secret_file: Option<String>,
    #[serde(default)]
    pub scopes: Vec<String>,
    /// `client_secret_basic` (the default) or `client_secret_post`.
    pub client_auth: Option<String>,
    /// The claim of the provider's ID token that must name the person a link is for (an
    /// OpenID provider's; `email` is checked whenever the ID token carries one).
    pub user_claim: Option<String>,
}

/// `exchange = { ... }` of a `[[credential]]`: an RFC 8693 token exchange of the call's
/// verified user assertion for a token for the API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExchangeDef {
    pub token_url: String,
    pub audience: Option<String>,
    pub scope: Option<String>,
    pub client_id: String,
    pub client_secret_env: Option<String>,
    pub client_secret_file: Option<String>,
    /// Only assertions of this `[[identity_provider]]` are exchanged.
    pub identity_provider: Option<String>,
    /// What the assertion is, as RFC 8693 names it: `jwt` (the default), `id_token` or
    /// `access_token`.
    pub subject_token_type: Option<String>,
}

/// `[[identity_provider]]`: who signs assertions about people, with which keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityProviderDef {
    pub name: String,
    pub issuer: String,
    pub audience: String,
    pub jwks_file: Option<String>,
    pub jwks_url: Option<String>,
    #[serde(default)]
    pub algorithms: Vec<String>,
    pub user_claim: Option<String>,
    pub groups_claim: Option<String>,
    pub leeway: Option<String>,
    /// Approvers and reviewers sign in to the page through this provider (OIDC).
    pub login: Option<LoginDef>,
    /// The provider's groups (from `groups_claim`) and the toolgate groups they grant at sign-in.
    #[serde(default)]
    pub group_map: std::collections::BTreeMap<String, String>,
}

/// `login = { ... }` of an `[[identity_provider]]`: the page's OIDC client.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginDef {
    pub client_id: String,
    pub client_secret_env: Option<String>,
    pub client_secret_file: Option<String>,
    #[serde(default)]
    pub scopes: Vec<String>,
    pub authorize_url: Option<String>,
    pub token_url: Option<String>,
}

/// `[[graphql_endpoint]]`: how deep and how wide a document sent to one GraphQL endpoint may be.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GraphqlEndpointDef {
    pub host: String,
    pub port: Option<u16>,
    pub path: String,
    pub max_depth: Option<usize>,
    pub max_root_fields: Option<usize>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentDef {
    pub id: String,
    pub token_sha256: Option<String>,
    pub token_env: Option<String>,
    pub owner: String,
    pub tenant: Option<String>,
    pub environment: String,
    #[serde(default)]
    pub tools: Vec<String>,
    #[serde(default)]
    pub attrs: BTreeMap<String, String>,
    #[serde(default)]
    pub dry_run: bool,
    /// Addresses (CIDR) whose redirected connections are this agent's, on the transparent
    /// listener. An agent with sources may have no token (it never uses the proxy listener).
    #[serde(default)]
    pub sources: Vec<String>,
    /// Approver groups (besides `admin`) whose members may issue this agent short-lived tokens.
    #[serde(default)]
    pub token_issuers: Vec<String>,
    /// false: only issued tokens let the agent in, never its static token.
    #[serde(default = "yes")]
    pub static_token: bool,
    /// "required": every call names the person it acts for; "optional" (the default).
    pub users: Option<String>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApproverDef {
    pub id: String,
    pub token_sha256: Option<String>,
    pub token_env: Option<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    /// The identity provider (its `name`) they sign in to the page through.
    pub sso: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReviewerDef {
    pub id: String,
    pub token_sha256: Option<String>,
    pub token_env: Option<String>,
    /// The identity provider (its `name`) they sign in to the page through.
    pub sso: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialDef {
    pub name: String,
    pub env: Option<String>,
    pub file: Option<String>,
    pub header: String,
    pub format: String,
    /// The end user's token from this `[[connection]]`, in place of a shared secret.
    pub connection: Option<String>,
    /// A token exchanged for the end user's assertion (RFC 8693), in place of a shared secret.
    pub exchange: Option<ExchangeDef>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BodyDef {
    pub format: String,
    pub schema: Option<String>,
    pub max_bytes: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseDef {
    #[serde(default)]
    pub keep: Vec<String>,
    #[serde(default)]
    pub hide: Vec<String>,
    pub schema: Option<String>,
}

/// `model_answer = { tool_calls = 32, argument_bytes = 8192, text_bytes = 0 }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelAnswerDef {
    pub tool_calls: Option<usize>,
    pub argument_bytes: Option<usize>,
    pub text_bytes: Option<usize>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetDef {
    pub field: String,
    pub max: f64,
    pub per: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleDef {
    pub deny_if: String,
    pub message: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalDef {
    #[serde(default)]
    pub groups: Vec<String>,
    pub required: Option<u32>,
    pub expires: Option<String>,
    pub hold: Option<String>,
    pub allow_self_approval: Option<bool>,
    pub webhook: Option<String>,
    /// When an approved call is sent: `on_retry` (the held call, or the agent's same call
    /// again) or `on_approval` (at once, by the approval).
    pub send: Option<String>,
}

/// `rollback = { none = "why" }` or a request template over the call and its response.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackDef {
    pub none: Option<String>,
    pub method: Option<String>,
    pub path: Option<String>,
    pub body: Option<toml::Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolDef {
    pub name: String,
    #[serde(default = "one")]
    pub version: u32,
    pub owner: Option<String>,
    pub description: Option<String>,
    pub risk: Option<String>,
    pub side_effects: Option<String>,
    pub mode: Option<String>,
    pub host: String,
    /// Required for an HTTP tool; an MCP tool is always POST to its endpoint, a GraphQL field
    /// POST (or GET, for a query).
    #[serde(default)]
    pub method: String,
    pub path: String,
    pub body: Option<BodyDef>,
    /// An MCP server's tool (`params.name` of `tools/call`) reached at `host` + `path`.
    pub mcp_tool: Option<String>,
    /// A GraphQL root field at `host` + `path`: `"query.repository"`, `"mutation.createIssue"`.
    pub graphql: Option<String>,
    /// The JSON Schema of an MCP tool's `params.arguments`, or of a GraphQL field's arguments
    /// after variable substitution (closed: unknown fields refused).
    pub arguments: Option<String>,
    /// `sha256:…` over the MCP tool's description and input schema as the server lists them:
    /// a server that changes them has the tool hidden and refused.
    pub pin: Option<String>,
    pub query_schema: Option<String>,
    pub idempotency: Option<String>,
    pub idempotency_window: Option<String>,
    #[serde(default)]
    pub credential: BTreeMap<String, String>,
    pub rate_limit: Option<String>,
    pub budget: Option<BudgetDef>,
    pub summary: Option<String>,
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    /// The JSON Schema of each typed path parameter (`issue_number = { type = "integer" }`):
    /// a matched value of another type is refused. Types never change which contract matches.
    #[serde(default)]
    pub path_params: BTreeMap<String, toml::Value>,
    #[serde(default)]
    pub rules: Vec<RuleDef>,
    pub approval: Option<ApprovalDef>,
    pub rollback: Option<RollbackDef>,
    pub kind: Option<String>,
    #[serde(default)]
    pub redact: Vec<String>,
    /// The names models use for this tool in their tool calls.
    #[serde(default)]
    pub model_tools: Vec<String>,
    /// How much of a model's answer the audit keeps (a `kind = "model"` tool).
    pub model_answer: Option<ModelAnswerDef>,
    /// What of the answer is kept and what the agent sees.
    pub response: Option<ResponseDef>,
    /// Request headers forwarded besides the defaults (and steering headers it allows, such as
    /// `Stripe-Account`).
    #[serde(default)]
    pub headers: Vec<String>,
    /// Send the call's trace context (`traceparent`, `tracestate`) upstream, so that the API's
    /// own spans join the agent's trace. Off by default: third-party APIs learn nothing of it.
    #[serde(default)]
    pub propagate_trace: bool,
}

fn one() -> u32 {
    1
}
