//! What toolgate says when it starts, for the person who started it (on standard error, beside
//! the log): where agents connect, the CA they must trust, the approvers' page, where the
//! policies and the data are, and a warning while the published demo tokens are in force.
//! The tokens themselves are never printed here: standard error often ends up in a log.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;

use crate::policy::{Published, Role};
use crate::Serving;

/// An address as a person connects to it: a listener on every interface is reached on loopback
/// from the same machine.
pub fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), addr.port())
        }
        _ => addr,
    }
}

/// A path as given, without a leading `./` (the defaults have one).
pub fn shown(path: &Path) -> String {
    path.strip_prefix(".").unwrap_or(path).display().to_string()
}

/// One row of the start-up lines.
pub fn row(what: &str, value: &str) -> String {
    format!("  {what:<17}{value}")
}

/// The start-up lines, with `extra` rows before the warning.
pub fn lines(s: &Serving<'_>, extra: &[String]) -> Vec<String> {
    let mut out = vec!["toolgate is serving:".to_string()];
    let mut row = |what: &str, value: String| out.push(row(what, &value));
    if let Some(proxy) = s.proxy.map(reachable) {
        row(
            "agents' proxy",
            format!("http://{proxy}   (HTTPS_PROXY=http://AGENT-ID:TOKEN@{proxy})"),
        );
    }
    if let Some(proxy) = s.proxy_tls.map(reachable) {
        row(
            "agents' proxy",
            format!(
                "https://{proxy}   (HTTPS_PROXY=https://AGENT-ID:TOKEN@{proxy}; TLS to toolgate too)"
            ),
        );
    }
    if let Some(t) = s.transparent {
        row(
            "transparent",
            format!(
                "{t}   (connections redirected from agent networks; agents known by their sources)"
            ),
        );
    }
    row(
        "agents trust",
        format!(
            "{}   (`toolgate ca export` prints it)",
            shown(&s.config.certs_dir.join(crate::ca::CA_CERT_FILE))
        ),
    );
    let scheme = match s.config.admin_tls.is_some() {
        true => "https",
        false => "http",
    };
    if let Some(admin) = s.admin.map(reachable) {
        row(
            "approvers' page",
            format!("{scheme}://{admin}/   (the admin API under /api/, /metrics, /healthz)"),
        );
    }
    if let Some(m) = s.metrics.map(reachable) {
        row("metrics", format!("{scheme}://{m}/metrics"));
    }
    row(
        "policies",
        format!(
            "{}   ({} tools from {} files; reloaded when they change)",
            shown(&s.config.policies_dir),
            s.policy.tools().len(),
            s.policy.files.len()
        ),
    );
    let data = match &s.config.database_url {
        Some(_) => "PostgreSQL (--database-url), shared by the replicas".to_string(),
        None => format!(
            "{}   (audit log, proposals, state)",
            shown(&s.config.data_dir)
        ),
    };
    row("data", data);
    out.extend(extra.iter().cloned());
    out.extend(published_warning(&s.policy.published_tokens()));
    out
}

/// The warning while published tokens sign someone in: who, never the tokens.
pub fn published_warning(published: &[Published]) -> Vec<String> {
    if published.is_empty() {
        return Vec::new();
    }
    let names = |role: Role| -> Vec<&str> {
        published
            .iter()
            .filter(|p| p.role == role)
            .map(|p| p.id.as_str())
            .collect()
    };
    let mut who = String::new();
    for (role, label) in [
        (Role::Agent, "agents"),
        (Role::Approver, "approvers"),
        (Role::Reviewer, "reviewers"),
    ] {
        let list = names(role);
        if !list.is_empty() {
            let _ = write!(
                who,
                "{}{label} {}",
                if who.is_empty() { "" } else { "; " },
                list.join(", ")
            );
        }
    }
    vec![
        format!("WARNING: the published demo tokens are in force ({who}): anyone who has read the README can act as them."),
        "         Give each its own token (token_sha256, or token_env) in the policies before anything real goes through toolgate.".to_string(),
    ]
}

/// Writes the start-up lines to standard error.
pub fn print(s: &Serving<'_>) {
    print_lines(&lines(s, &[]));
}

/// Writes lines to standard error (quietly giving up if it is closed).
pub fn print_lines(lines: &[String]) {
    let mut err = std::io::stderr().lock();
    for line in lines {
        if writeln!(err, "{line}").is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_examples_are_warned_about_by_name_and_never_by_token() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
        let policy = crate::policy::Policy::load_dir(&dir).unwrap();
        let config = crate::Config::new(dir.clone(), "data".into(), "certs".into());
        let s = Serving {
            proxy: Some("0.0.0.0:8080".parse().unwrap()),
            proxy_tls: None,
            admin: Some("127.0.0.1:8081".parse().unwrap()),
            metrics: None,
            transparent: None,
            config: &config,
            policy: &policy,
        };
        let text = lines(&s, &[]).join("\n");
        assert!(text.contains("http://127.0.0.1:8080"), "{text}");
        assert!(text.contains("http://127.0.0.1:8081/"), "{text}");
        assert!(text.contains("certs/ca.pem"), "{text}");
        assert!(text.contains(&dir.display().to_string()), "{text}");
        assert!(text.contains("agents support-bot-prod, support-bot-staging; approvers carol@example.com, dave@example.com; reviewers riley@example.com"), "{text}");
        for token in crate::policy::PUBLISHED_TOKENS {
            assert!(!text.contains(token), "no token is printed: {text}");
        }
        assert!(published_warning(&[]).is_empty());
    }
}
