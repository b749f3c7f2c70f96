//! Policy files → a compiled policy set: every definition validated once into the typed values
//! of `types`, and added to the lookups of `lookup` (which refuse duplicates and clashes).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::base::split_host_port;

use super::file::{self, AgentDef, PolicyFile, ToolDef};
use super::lookup::Policy;
use super::template::PathTemplate;
use super::types::{
    Agent, ApprovalSpec, Approver, BodyFormat, BodySpec, Budget, Connection, Credential,
    GraphqlSpec, Idempotency, McpSpec, Mode, ModelAnswerLimits, Period, PolicyError, RateLimit,
    Risk, SendOn, SideEffects, Tool, ToolKind, Users, DEFAULT_MAX_BODY,
};
use super::{connection_def, contract, graphql_def, identity_def, response, rollback_def, rules};

/// Reads and parses every `*.toml` file under `dir` (recursively, in name order).
pub(super) fn read_dir(dir: &Path) -> Result<Vec<(PathBuf, PolicyFile)>, PolicyError> {
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
    Ok(parsed)
}

/// Builds a policy set from parsed files, reading secrets through `env`.
pub(super) fn build(
    files: Vec<(PathBuf, PolicyFile)>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Policy, PolicyError> {
    // Connections, then credentials: tools in any file may name credentials from any other,
    // and credentials connections from any other.
    let connections = compile_connections(&files, env)?;
    let credentials = compile_credentials(&files, &connections, env)?;
    let mut policy = Policy::default();
    policy.set_connections(connections.into_iter().collect());
    let mut names = HashSet::new();
    let mut endpoints = Vec::new();
    for (path, file) in files {
        endpoints.extend(file.graphql_endpoint.into_iter().map(|d| (path.clone(), d)));
        for def in file.reviewer {
            let as_approver = file::ApproverDef {
                id: def.id,
                token_sha256: def.token_sha256,
                token_env: def.token_env,
                groups: Vec::new(),
                sso: def.sso,
            };
            let reviewer = compile_approver(&path, as_approver, env)?;
            let at = |m| PolicyError::new(&path, m);
            policy.add_reviewer(reviewer).map_err(at)?;
        }
        for def in file.identity_provider {
            let at = |m| PolicyError::new(&path, m);
            let provider = identity_def::compile(&path, def, env).map_err(at)?;
            policy.add_identity_provider(provider).map_err(at)?;
        }
        for def in file.approver {
            let approver = compile_approver(&path, def, env)?;
            let at = |m| PolicyError::new(&path, m);
            policy.add_approver(approver).map_err(at)?;
        }
        for def in file.agent {
            let agent = compile_agent(&path, def, env)?;
            policy
                .add_agent(agent)
                .map_err(|m| PolicyError::new(&path, m))?;
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
    exchanges_name_known_providers(&policy, &credentials)?;
    for (path, def) in endpoints {
        let (at, limits) = graphql_endpoint(def).map_err(|m| PolicyError::new(&path, m))?;
        policy
            .add_graphql_limits(at, limits)
            .map_err(|m| PolicyError::new(&path, m))?;
    }
    Ok(policy)
}

/// An `exchange` naming an `identity_provider` names one the policy defines.
fn exchanges_name_known_providers(
    policy: &Policy,
    credentials: &HashMap<String, Arc<Credential>>,
) -> Result<(), PolicyError> {
    for c in credentials.values() {
        let Some(super::types::PerUser::Exchange(x)) = c.source() else {
            continue;
        };
        if let Some(p) = x.identity_provider.as_deref() {
            if policy.identity_provider_named(p).is_none() {
                let at = policy.files.last().cloned().unwrap_or_default();
                return Err(PolicyError::new(
                    &at,
                    format!("credential {:?}: exchange names identity_provider {p:?}, which no [[identity_provider]] defines", c.name),
                ));
            }
        }
    }
    Ok(())
}

/// Deepest a `[[graphql_endpoint]]` may allow (the parser's own nesting limit is far above).
const GRAPHQL_DEPTH_MAX: usize = 64;
/// Widest a `[[graphql_endpoint]]` may allow.
const GRAPHQL_ROOT_FIELDS_MAX: usize = 100;

/// `[[graphql_endpoint]]`: the endpoint (host, port, literal path) and its limits.
fn graphql_endpoint(
    def: file::GraphqlEndpointDef,
) -> Result<((String, u16, String), crate::graphql::Limits), String> {
    let (host, port) = split_host_port(&def.host, def.port.unwrap_or(443)).ok_or_else(|| {
        format!(
            "graphql_endpoint host {:?} is not HOST or HOST:PORT",
            def.host
        )
    })?;
    let defaults = crate::graphql::Limits::default();
    let max_depth = def.max_depth.unwrap_or(defaults.max_depth);
    let max_root_fields = def.max_root_fields.unwrap_or(defaults.max_root_fields);
    if !(1..=GRAPHQL_DEPTH_MAX).contains(&max_depth) {
        return Err(format!(
            "graphql_endpoint {host}{}: max_depth must be between 1 and {GRAPHQL_DEPTH_MAX}",
            def.path
        ));
    }
    if !(1..=GRAPHQL_ROOT_FIELDS_MAX).contains(&max_root_fields) {
        return Err(format!(
            "graphql_endpoint {host}{}: max_root_fields must be between 1 and {GRAPHQL_ROOT_FIELDS_MAX}",
            def.path
        ));
    }
    let limits = crate::graphql::Limits {
        max_depth,
        max_root_fields,
        allow_introspection: false,
    };
    Ok(((host, port, def.path), limits))
}

/// Every file's `[[connection]]` by name (a name defined twice is an error).
fn compile_connections(
    files: &[(PathBuf, PolicyFile)],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<HashMap<String, Arc<Connection>>, PolicyError> {
    let mut connections = HashMap::new();
    for (path, file) in files {
        for def in &file.connection {
            let c =
                connection_def::compile(path, def, env).map_err(|m| PolicyError::new(path, m))?;
            if connections.contains_key(&c.name) {
                return Err(PolicyError::new(
                    path,
                    format!("connection {:?} is defined twice", c.name),
                ));
            }
            connections.insert(c.name.clone(), Arc::new(c));
        }
    }
    Ok(connections)
}

/// Every file's credentials by name (a name defined twice is an error).
fn compile_credentials(
    files: &[(PathBuf, PolicyFile)],
    connections: &HashMap<String, Arc<Connection>>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<HashMap<String, Arc<Credential>>, PolicyError> {
    let mut credentials: HashMap<String, Arc<Credential>> = HashMap::new();
    for (path, file) in files {
        for def in &file.credential {
            let per_user = connection_def::per_user_credential(path, def, connections, env)
                .map_err(|m| PolicyError::new(path, format!("credential {:?}: {m}", def.name)))?;
            let cred = match per_user {
                Some(c) => c,
                None => compile_credential(path, def, env)?,
            };
            if credentials.contains_key(&cred.name) {
                return Err(PolicyError::new(
                    path,
                    format!("credential {:?} is defined twice", cred.name),
                ));
            }
            credentials.insert(cred.name.clone(), Arc::new(cred));
        }
    }
    Ok(credentials)
}

pub(super) fn collect_toml(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), PolicyError> {
    collect_under(dir, out)?;
    // The policy tests beside the policies (`toolgate test`) are cases, not policy.
    let tests = dir.join(super::TESTS_DIR);
    out.retain(|p| !p.starts_with(&tests));
    Ok(())
}

fn collect_under(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), PolicyError> {
    let entries = std::fs::read_dir(dir).map_err(|e| PolicyError::new(dir, e.to_string()))?;
    for entry in entries {
        let entry = entry.map_err(|e| PolicyError::new(dir, e.to_string()))?;
        let path = entry.path();
        let ty = entry
            .file_type()
            .map_err(|e| PolicyError::new(&path, e.to_string()))?;
        if ty.is_dir() {
            collect_under(&path, out)?;
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
        signed_in_via: None,
        sso: def.sso,
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
        users: match def.users.as_deref() {
            None | Some("optional") => Users::Optional,
            Some("required") => Users::Required,
            Some(other) => {
                return Err(err(format!(
                    "users {other:?}: write \"required\" (every call names the person it acts for) or \"optional\""
                )))
            }
        },
        user: None,
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
    Ok(Credential::new(def.name.clone(), header, value, secret))
}

/// What a call to the tool may carry, how often and how much, and what of its answer is kept.
struct Shape {
    body: Option<BodySpec>,
    max_body_bytes: usize,
    query: Option<Arc<contract::Schema>>,
    mcp: Option<McpSpec>,
    graphql: Option<GraphqlSpec>,
    response: Option<Arc<response::ResponseSpec>>,
    idempotency: Option<Idempotency>,
    idempotency_window: std::time::Duration,
    rate_limit: Option<RateLimit>,
    budget: Option<Budget>,
    params: Vec<(String, String)>,
    path_schema: Option<Arc<contract::Schema>>,
    rules: Vec<rules::Rule>,
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
    let rollback = def
        .rollback
        .as_ref()
        .map(|r| rollback_def::compile(r).map_err(err))
        .transpose()?;
    let mode = Mode::parse(def.mode.as_deref()).map_err(err)?;
    let creds = tool_credentials(&def, credentials, &err)?;
    // A GraphQL query reads, as a GET does; a mutation says what it changes.
    let reads = graphql_def::is_query(&def).then_some(http::Method::GET);
    let side_effects = compile_side_effects(&def, reads.as_ref().unwrap_or(&method), &err)?;
    let (kind, risk) = compile_labels(&def, &err)?;
    let model_answer = compile_model_answer(&def, kind, &err)?;
    let shape = compile_shape(path, &def, &template, side_effects, &err)?;
    let approval = compile_approval(&def, &err)?;
    Ok(Tool {
        approval,
        mcp: shape.mcp,
        graphql: shape.graphql,
        response: shape.response,
        mode,
        side_effects,
        body: shape.body,
        max_body_bytes: shape.max_body_bytes,
        query: shape.query,
        idempotency: shape.idempotency,
        idempotency_window: shape.idempotency_window,
        rate_limit: shape.rate_limit,
        budget: shape.budget,
        params: shape.params,
        path_schema: shape.path_schema,
        rules: shape.rules,
        credentials: creds,
        name: def.name,
        version: def.version,
        host,
        port,
        method,
        path: template,
        kind,
        risk,
        rollback,
        owner: def.owner,
        summary: def.summary,
        redact: def.redact,
        model_tools: def.model_tools,
        headers: def.headers,
        propagate_trace: def.propagate_trace,
        model_answer,
    })
}

/// `model_answer`, on a model tool only, each limit within [`ModelAnswerLimits::MAX`].
fn compile_model_answer(
    def: &ToolDef,
    kind: ToolKind,
    err: &dyn Fn(String) -> PolicyError,
) -> Result<ModelAnswerLimits, PolicyError> {
    let mut limits = ModelAnswerLimits::default();
    let Some(m) = &def.model_answer else {
        return Ok(limits);
    };
    if kind != ToolKind::Model {
        return Err(err(
            "model_answer applies to a model's answers: set kind = \"model\" or remove it".into(),
        ));
    }
    let max = ModelAnswerLimits::MAX;
    for (name, set, into, most) in [
        (
            "tool_calls",
            m.tool_calls,
            &mut limits.tool_calls,
            max.tool_calls,
        ),
        (
            "argument_bytes",
            m.argument_bytes,
            &mut limits.argument_bytes,
            max.argument_bytes,
        ),
        (
            "text_bytes",
            m.text_bytes,
            &mut limits.text_bytes,
            max.text_bytes,
        ),
    ] {
        match set {
            Some(n) if n > most => {
                return Err(err(format!("model_answer.{name} = {n} is above {most}")))
            }
            Some(n) => *into = n,
            None => {}
        }
    }
    Ok(limits)
}

/// The credential to inject per agent environment, each defined by some `[[credential]]`.
fn tool_credentials(
    def: &ToolDef,
    credentials: &HashMap<String, Arc<Credential>>,
    err: &dyn Fn(String) -> PolicyError,
) -> Result<BTreeMap<String, Arc<Credential>>, PolicyError> {
    let mut creds = BTreeMap::new();
    for (environment, name) in &def.credential {
        let cred = credentials.get(name).ok_or_else(|| {
            err(format!(
                "credential {name:?} (for environment {environment:?}) is not defined by any [[credential]]"
            ))
        })?;
        creds.insert(environment.clone(), cred.clone());
    }
    Ok(creds)
}

/// The body, query, MCP arguments, answer, limits, path parameters and rules, with the
/// schemas they name loaded (relative to the policy file), checked in this order.
fn compile_shape(
    path: &Path,
    def: &ToolDef,
    template: &PathTemplate,
    side_effects: SideEffects,
    err: &dyn Fn(String) -> PolicyError,
) -> Result<Shape, PolicyError> {
    let base = path.parent().unwrap_or(Path::new("."));
    let load_schema = |rel: &str| -> Result<Arc<contract::Schema>, PolicyError> {
        contract::Schema::load(&base.join(rel))
            .map(Arc::new)
            .map_err(err)
    };
    let (body, max_body_bytes) = compile_body(def, &load_schema, err)?;
    let query = def.query_schema.as_deref().map(load_schema).transpose()?;
    let graphql = graphql_def::compile(def, template, &load_schema, err)?;
    let mcp = compile_mcp(def, &load_schema, err)?;
    let response = compile_response(def, &load_schema, err)?;
    let (idempotency, idempotency_window) = compile_idempotency(def, side_effects, err)?;
    let rate_limit = def
        .rate_limit
        .as_deref()
        .map(|text| parse_rate(text).map_err(|e| err(format!("rate_limit: {e}"))))
        .transpose()?;
    let has_body = body.is_some() || mcp.is_some() || graphql.is_some();
    let budget = compile_budget(def, has_body, err)?;
    let params = compile_params(def, template, err)?;
    let path_schema = compile_path_params(def, template, err)?;
    let rules = def
        .rules
        .iter()
        .map(|r| rules::Rule::compile(&r.deny_if, &r.message))
        .collect::<Result<Vec<_>, _>>()
        .map_err(err)?;
    Ok(Shape {
        body,
        max_body_bytes,
        query,
        mcp,
        graphql,
        response,
        idempotency,
        idempotency_window,
        rate_limit,
        budget,
        params,
        path_schema,
        rules,
    })
}

/// `body = { format, schema, max_bytes }`, and the body limit (the default without one).
fn compile_body(
    def: &ToolDef,
    load_schema: &dyn Fn(&str) -> Result<Arc<contract::Schema>, PolicyError>,
    err: &dyn Fn(String) -> PolicyError,
) -> Result<(Option<BodySpec>, usize), PolicyError> {
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
    Ok((body, max_body_bytes))
}

/// `response = { keep, hide, schema }`: pointers that are pointers, and a schema that loads.
fn compile_response(
    def: &ToolDef,
    load_schema: &dyn Fn(&str) -> Result<Arc<contract::Schema>, PolicyError>,
    err: &dyn Fn(String) -> PolicyError,
) -> Result<Option<Arc<response::ResponseSpec>>, PolicyError> {
    let Some(r) = &def.response else {
        return Ok(None);
    };
    if let Some(bad) = r.keep.iter().chain(&r.hide).find(|p| !p.starts_with('/')) {
        return Err(err(format!(
            "response field {bad:?} must be a JSON pointer such as /id or /card/last4"
        )));
    }
    if let Some(bad) = graphql_def::outside_field(def, &r.keep, &r.hide) {
        return Err(err(bad));
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
    Ok(Some(Arc::new(response::ResponseSpec {
        keep: r.keep.clone(),
        hide: r.hide.clone(),
        schema: r.schema.as_deref().map(load_schema).transpose()?,
        mcp,
    })))
}

/// An HTTP tool's method, or POST for an MCP tool (which names none, or POST).
fn compile_method(
    def: &ToolDef,
    err: &dyn Fn(String) -> PolicyError,
) -> Result<http::Method, PolicyError> {
    if def.graphql.is_some() {
        return graphql_def::method(def).map_err(err);
    }
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
        if def.pin.is_some() || (def.arguments.is_some() && def.graphql.is_none()) {
            return Err(err(
                "arguments and pin are for MCP tools (and arguments for GraphQL fields): add mcp_tool or graphql".into()
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

/// `kind` and `risk` hold only what they may, and `redact` only JSON pointers.
fn compile_labels(
    def: &ToolDef,
    err: &dyn Fn(String) -> PolicyError,
) -> Result<(ToolKind, Option<Risk>), PolicyError> {
    let risk = def
        .risk
        .as_deref()
        .map(Risk::parse)
        .transpose()
        .map_err(err)?;
    let kind = ToolKind::parse(def.kind.as_deref()).map_err(err)?;
    if let Some(bad) = def.redact.iter().find(|p| !p.starts_with('/')) {
        return Err(err(format!(
            "redact entry {bad:?} must be a JSON pointer such as /card/number"
        )));
    }
    Ok((kind, risk))
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
