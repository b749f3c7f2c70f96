//! `toolgate demo`: the policies (the examples by default) run against the built-in sandbox of
//! the example APIs, routed the way `serve --connect-to HOST:443=ADDR --upstream-ca FILE`
//! routes, and the next steps printed: a read, a refusal, a held refund, the approvers' page
//! and its demo sign-in, and the story of the refund.

use std::path::Path;
use std::sync::Arc;

use crate::config::Config;
use crate::orient::{row, shown};
use crate::policy::{Policy, Published, Role};
use crate::sandbox::{Api, Credentials, Sandbox};
use crate::Serving;

/// Where the sandbox's CA is written (in the data dir), for `--upstream-ca`.
pub const SANDBOX_CA_FILE: &str = "sandbox-ca.pem";
/// The contracts the next steps go through.
const READ_TOOL: &str = "stripe.customers.retrieve";
const REFUND_TOOL: &str = "stripe.refunds.create";
/// The agent the next steps act as, when its published token is in force.
const DEMO_AGENT: &str = "support-bot-staging";
/// The search path for programs, to tell whether `toolgate` is on it.
const PATH_VAR: &str = "PATH";

/// The sandbox the demo runs against and what the policies route to it.
pub struct Demo {
    sandbox: Sandbox,
    /// Hosts the policies name that the sandbox answers for.
    routed: Vec<&'static str>,
    /// Hosts the policies name that the sandbox does not stand in for: reached for real.
    elsewhere: Vec<String>,
    /// The refund's `Idempotency-Key`, new each run (a key already used returns its old answer).
    refund_key: String,
}

/// What the sandbox admits: every credential the contracts give its hosts (port 443), as
/// toolgate injects them.
pub fn credentials(policy: &Policy) -> Credentials {
    let mut c = Credentials::default();
    for tool in policy.tools().iter().filter(|t| t.port == 443) {
        if let Some(api) = Api::of_host(&tool.host) {
            // A person's token (a per-user credential) is never the sandbox's to admit.
            for cred in tool.credentials.values().filter(|c| c.source().is_none()) {
                c.admit(api, cred.header.clone(), cred.header_value());
            }
        }
    }
    c
}

impl Demo {
    /// Starts the sandbox on loopback and routes the policies' hosts it answers for to it
    /// (`config.connect_to`, `config.upstream_ca`). Fails with what to do.
    pub async fn start(config: &mut Config) -> Result<Demo, String> {
        let policy = Policy::load_dir(&config.policies_dir).map_err(|e| {
            format!("{e}\n(toolgate demo runs the example policies: run it in the root of toolgate's source, or give --policies PATH/TO/toolgate/policies)")
        })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let loopback = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        let sandbox = Sandbox::start(loopback, credentials(&policy), provider)
            .await
            .map_err(|e| e.to_string())?;
        let ca = config.data_dir.join(SANDBOX_CA_FILE);
        std::fs::create_dir_all(&config.data_dir)
            .and_then(|()| std::fs::write(&ca, sandbox.ca_pem()))
            .map_err(|e| format!("{}: {e}", ca.display()))?;
        config.upstream_ca.push(ca);
        let mut routed = Vec::new();
        let mut elsewhere = Vec::new();
        for tool in policy.tools() {
            match Api::of_host(&tool.host).filter(|_| tool.port == 443) {
                Some(api) if !routed.contains(&api.host()) => routed.push(api.host()),
                Some(_) => {}
                None => {
                    let host = crate::base::authority(&tool.host, tool.port);
                    if !elsewhere.contains(&host) {
                        elsewhere.push(host);
                    }
                }
            }
        }
        routed.sort_by_key(|h| Api::ALL.iter().position(|a| a.host() == *h));
        for host in &routed {
            config
                .connect_to
                .insert((host.to_string(), 443), sandbox.addr());
        }
        config.demo = true;
        let refund_key = format!("demo-refund-{}", &hex::encode(rand::random::<[u8; 3]>()));
        Ok(Demo {
            sandbox,
            routed,
            elsewhere,
            refund_key,
        })
    }

    pub fn sandbox(&self) -> &Sandbox {
        &self.sandbox
    }

    /// What the sandbox stands in for, for the start-up lines.
    pub fn about(&self) -> Vec<String> {
        let mut out = vec![row(
            "sandbox",
            &format!(
                "https://{}   (built in, for {}; trusted through --upstream-ca)",
                self.sandbox.addr(),
                self.routed.join(", ")
            ),
        )];
        if !self.elsewhere.is_empty() {
            out.push(row(
                "not sandboxed",
                &format!(
                    "{}   (the sandbox does not stand in for them: calls there go to the real hosts)",
                    self.elsewhere.join(", ")
                ),
            ));
        }
        out
    }

    /// The next steps, as commands that run as written from the directory toolgate was
    /// started in.
    pub fn next_steps(&self, s: &Serving<'_>, program: &str) -> Vec<String> {
        let published = s.policy.published_tokens();
        let agent = published
            .iter()
            .filter(|p| p.role == Role::Agent)
            .find(|p| p.id == DEMO_AGENT)
            .or_else(|| published.iter().find(|p| p.role == Role::Agent));
        let refund = s.policy.tool(REFUND_TOOL);
        let approver = approver_for(&published, refund.map(|t| t.approval.groups.as_slice()));
        let hold = refund.map(|t| t.approval.hold.as_secs()).unwrap_or(10);
        let mut out = self.agent_steps(s, agent, hold);
        out.extend(approver_steps(s, approver, program));
        if s.policy.tool(READ_TOOL).is_none() || refund.is_none() {
            out.push(format!(
                "(These steps use the example contracts {READ_TOOL} and {REFUND_TOOL}, which the policies in force do not all have.)"
            ));
        }
        out
    }

    /// What the demo is, and the agent's steps: a read, a refusal, a refund held `hold` seconds
    /// for a person.
    fn agent_steps(&self, s: &Serving<'_>, agent: Option<&Published>, hold: u64) -> Vec<String> {
        let proxy = s.proxy.map(crate::orient::reachable);
        let proxy_url = match (agent, proxy) {
            (Some(a), Some(p)) => format!("http://{}:{}@{p}", a.id, a.token),
            (None, Some(p)) => format!("http://AGENT-ID:TOKEN@{p}"),
            (_, None) => "http://AGENT-ID:TOKEN@PROXY".to_string(),
        };
        let ca = s.config.certs_dir.join(crate::ca::CA_CERT_FILE);
        let curl = format!(
            "curl --proxy {} --cacert {}",
            sh_quote(&proxy_url),
            sh_quote(&shown(&ca))
        );
        let customer = format!(
            "https://api.stripe.com/v1/customers/{}",
            crate::sandbox::DEMO_CUSTOMER
        );
        vec![
            format!(
                "toolgate demo: the policies in {}/ against a built-in sandbox of {} (https://{}, a CA of its own). Nothing leaves this machine.",
                shown(&s.config.policies_dir).trim_end_matches('/'),
                self.routed.join(", "),
                self.sandbox.addr()
            ),
            String::new(),
            format!(
                "Next steps, as the agent {} (in another terminal, in this directory):",
                agent.map(|a| a.id.as_str()).unwrap_or("AGENT-ID")
            ),
            String::new(),
            "1. A read, answered by the sandbox's Stripe (the contract hides the customer's phone and address):".into(),
            format!("   {curl} {customer}"),
            "   The same read from Python (pip install requests):".into(),
            format!("   {}", python_read(&customer, &proxy_url, &ca)),
            String::new(),
            "2. A call no contract allows, refused before it leaves (403 policy_violation):".into(),
            format!("   {curl} https://api.stripe.com/v1/charges"),
            String::new(),
            format!("3. A refund, held for a person: it waits up to {hold} s for an approval, then answers 423 approval_pending with the proposal id (prop_...):"),
            format!(
                "   {curl} https://api.stripe.com/v1/refunds -H 'Idempotency-Key: {}' -d payment_intent={} -d amount=500",
                self.refund_key,
                crate::sandbox::DEMO_PAYMENT_INTENT
            ),
            String::new(),
        ]
    }
}

/// The approver's steps: the approval (on the page or with `program`), then the refund's story.
fn approver_steps(s: &Serving<'_>, approver: Option<&Published>, program: &str) -> Vec<String> {
    let admin = s.admin.map(crate::orient::reachable);
    let token = approver.map(|a| a.token).unwrap_or("APPROVER-TOKEN");
    let server = admin
        .map(|a| format!("http://{a}"))
        .unwrap_or_else(|| "http://ADMIN".into());
    let cli = format!("TOOLGATE_TOKEN={token} {} ", sh_quote(program));
    let who = approver
        .map(|a| format!("the token {} ({}, {})", a.token, a.id, a.groups.join(", ")))
        .unwrap_or_else(|| "an approver's token".into());
    vec![
        format!("4. Approve it on the approvers' page, {server}/, signed in with {who}; or here:"),
        format!("   {cli}approve PROPOSAL_ID --comment 'customer called' --server {server}"),
        "   Then run the refund of step 3 again: the same call now gets the refund, re_...".into(),
        String::new(),
        "5. The story of the refund: who asked, what was proposed, who approved, what was sent, what came back:".into(),
        format!("   {cli}audit story PROPOSAL_ID --server {server}"),
        String::new(),
        "Ctrl-C stops toolgate and the sandbox.".into(),
    ]
}

/// The approver whose published token can decide a call held for `groups` (any approver when
/// the tool names none).
fn approver_for<'a>(
    published: &'a [Published],
    groups: Option<&[String]>,
) -> Option<&'a Published> {
    let approvers = || published.iter().filter(|p| p.role == Role::Approver);
    match groups {
        Some(groups) if !groups.is_empty() => {
            approvers().find(|a| a.groups.iter().any(|g| groups.contains(g)))
        }
        _ => approvers().next(),
    }
}

/// The read in Python with `requests`, proxy and CA given explicitly.
fn python_read(url: &str, proxy: &str, ca: &Path) -> String {
    let lit = |s: &str| serde_json::Value::from(s).to_string();
    let code = format!(
        "import requests; print(requests.get({}, proxies={{\"https\": {}}}, verify={}).json())",
        lit(url),
        lit(proxy),
        lit(&shown(ca))
    );
    format!("python3 -c {}", sh_quote(&code))
}

/// A word as a POSIX shell reads it back unchanged.
pub fn sh_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-./:@=,+%".contains(c));
    match plain {
        true => word.to_string(),
        false => format!("'{}'", word.replace('\'', "'\\''")),
    }
}

/// How to run this toolgate again from the current directory: `toolgate` when that is what the
/// search path finds, else its path (relative when it is below the current directory).
pub fn program() -> String {
    let Ok(me) = std::env::current_exe().and_then(|p| p.canonicalize()) else {
        return "toolgate".into();
    };
    let on_path = std::env::var_os(PATH_VAR).is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            dir.join("toolgate")
                .canonicalize()
                .is_ok_and(|found| found == me)
        })
    });
    if on_path {
        return "toolgate".into();
    }
    let here = std::env::current_dir().and_then(|d| d.canonicalize());
    match here
        .ok()
        .and_then(|d| me.strip_prefix(d).ok().map(Path::to_path_buf))
    {
        Some(rel) => rel.display().to_string(),
        None => me.display().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_quoted_only_when_the_shell_would_change_them() {
        assert_eq!(sh_quote("certs/ca.pem"), "certs/ca.pem");
        assert_eq!(
            sh_quote("http://a:b@127.0.0.1:8080"),
            "http://a:b@127.0.0.1:8080"
        );
        assert_eq!(sh_quote("my certs/ca.pem"), "'my certs/ca.pem'");
        assert_eq!(sh_quote("it's"), "'it'\\''s'");
        assert_eq!(sh_quote(""), "''");
    }

    #[test]
    fn the_sandbox_admits_what_the_example_contracts_inject() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
        let policy = Policy::load_dir(&dir).unwrap();
        let c = credentials(&policy);
        assert_eq!(c.apis(), Api::ALL.to_vec());
        let with = |v: &str| {
            let mut h = http::HeaderMap::new();
            h.insert(
                http::header::AUTHORIZATION,
                http::HeaderValue::from_str(v).unwrap(),
            );
            h
        };
        let key = std::fs::read_to_string(dir.join("demo-secrets/stripe-test.key")).unwrap();
        assert!(c.admits(Api::Stripe, &with(&format!("Bearer {}", key.trim()))));
        assert!(!c.admits(Api::Stripe, &with("Bearer placeholder")));
        let key = std::fs::read_to_string(dir.join("demo-secrets/tickets.key")).unwrap();
        assert!(c.admits(Api::Tickets, &with(&format!("Bearer {}", key.trim()))));
        assert!(!c.admits(Api::Github, &with(&format!("Bearer {}", key.trim()))));
    }

    #[test]
    fn refunds_are_approved_by_a_payments_lead() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
        let policy = Policy::load_dir(&dir).unwrap();
        let published = policy.published_tokens();
        let groups = policy
            .tool(REFUND_TOOL)
            .map(|t| t.approval.groups.as_slice());
        let a = approver_for(&published, groups).unwrap();
        assert_eq!(
            (a.id.as_str(), a.token),
            ("carol@example.com", "demo-carol-token")
        );
    }
}
