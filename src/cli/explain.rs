//! `toolgate explain`: one request through the proxy's decision phases, each phase's verdict
//! printed (the contract it matched, or the closest ones and why not; the schema error; the
//! rule) — what a person runs when an agent says "I was refused".

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};

use crate::config::env;
use crate::policy::Policy;
use crate::verdict::cases::{describe, method_and_url};
use crate::verdict::{closest, evaluate, Asked, Who, World};

use super::fail;

#[derive(Debug, clap::Args)]
pub struct ExplainArgs {
    /// The policy folder.
    #[arg(long, env = env::POLICIES, default_value = "./policies")]
    pub policies: PathBuf,
    /// The agent that sent the request.
    #[arg(long, required_unless_present = "source", conflicts_with = "source")]
    pub agent: Option<String>,
    /// Or its source address (an agent of the transparent listener).
    #[arg(long)]
    pub source: Option<IpAddr>,
    /// The request's method.
    pub method: String,
    /// The request's URL, absolute: https://host/path?query.
    pub url: String,
    /// A file holding the body (JSON when it starts with { or [, else a form, unless
    /// --header names the Content-Type).
    #[arg(long, conflicts_with = "json")]
    pub body: Option<PathBuf>,
    /// The body as JSON text.
    #[arg(long)]
    pub json: Option<String>,
    /// A header, `Name: value` (repeatable).
    #[arg(long = "header", short = 'H')]
    pub headers: Vec<String>,
    /// A kill switch thrown, `tool:NAME` or `agent:ID` (repeatable).
    #[arg(long)]
    pub disabled: Vec<String>,
    /// A tool lent to the agent by a live grant (repeatable).
    #[arg(long)]
    pub grant: Vec<String>,
    /// The person the call acts for.
    #[arg(long = "for-user", value_name = "ID")]
    pub for_user: Option<String>,
    /// A group of that person (repeatable).
    #[arg(long = "user-group", value_name = "GROUP")]
    pub user_group: Vec<String>,
    /// What the agent already spent of the tool's budget in the current period.
    #[arg(long)]
    pub spent: Option<f64>,
}

/// Prints every phase's verdict; exit status 0 whatever the verdict (1 on a bad argument).
pub(super) fn run(args: ExplainArgs) -> ExitCode {
    let policy = match Policy::load_dir_dry(&args.policies) {
        Ok(p) => p,
        Err(e) => return fail(&e.to_string()),
    };
    let (asked, world) = match asked(&args) {
        Ok(a) => a,
        Err(e) => return fail(&e),
    };
    let who = match &asked.who {
        Who::Agent(id) => format!("agent {id}"),
        Who::Source(ip) => format!("source {ip}"),
    };
    say!("request: {} {} as {who}", asked.method, asked.url);
    let verdict = evaluate(&policy, &asked, &world);
    for phase in &verdict.phases {
        let mark = if phase.passed { "ok" } else { "REFUSED" };
        say!("  {:<13} {mark:<7} {}", phase.name, phase.note);
        if phase.name == "match" && !phase.passed {
            near(&policy, &asked);
        }
    }
    say!("verdict: {}", describe(&verdict));
    ExitCode::SUCCESS
}

/// The contracts closest to an unmatched request, and why each does not match.
fn near(policy: &Policy, asked: &Asked) {
    let host = asked.url.host().unwrap_or("").to_ascii_lowercase();
    let port = asked.url.port_u16().unwrap_or(443);
    let lines = closest(policy, &host, port, &asked.method, asked.url.path(), 3);
    if lines.is_empty() {
        return;
    }
    say!("  {:<13} closest contracts on {host}:", "");
    for line in lines {
        say!("  {:<13}   {line}", "");
    }
}

/// The request and the state the arguments describe.
fn asked(args: &ExplainArgs) -> Result<(Asked, World), String> {
    let who = match (&args.agent, args.source) {
        (Some(id), _) => Who::Agent(id.clone()),
        (None, Some(ip)) => Who::Source(ip),
        (None, None) => return Err("give --agent ID or --source ADDRESS".into()),
    };
    let (method, url) = method_and_url(&args.method, &args.url)?;
    let mut headers = HeaderMap::new();
    for h in &args.headers {
        let (name, value) = h
            .split_once(':')
            .ok_or_else(|| format!("--header {h:?}: write Name: value"))?;
        let name = HeaderName::from_bytes(name.trim().to_ascii_lowercase().as_bytes())
            .map_err(|_| format!("--header {h:?}: not a header name"))?;
        let value = HeaderValue::from_str(value.trim())
            .map_err(|_| format!("--header {h:?}: not a header value"))?;
        headers.append(name, value);
    }
    let body = match (&args.body, &args.json) {
        (Some(path), _) => std::fs::read(path)
            .map(Bytes::from)
            .map_err(|e| format!("{}: {e}", path.display()))?,
        (None, Some(text)) => Bytes::from(text.clone()),
        (None, None) => Bytes::new(),
    };
    if !body.is_empty() && !headers.contains_key(http::header::CONTENT_TYPE) {
        let first = body.iter().find(|b| !b.is_ascii_whitespace());
        let ctype = match (args.json.is_some(), first) {
            (true, _) | (_, Some(b'{' | b'[')) => "application/json",
            _ => "application/x-www-form-urlencoded",
        };
        headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    }
    let mut world = World::given(&args.disabled, args.grant.clone())?;
    world.spent = args.spent;
    world.acting_for(args.for_user.clone(), args.user_group.clone());
    Ok((
        Asked {
            who,
            method,
            url,
            headers,
            body,
        },
        world,
    ))
}
