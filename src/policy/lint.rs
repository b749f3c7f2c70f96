//! Mistakes a policy set loads with but that people rarely mean, found by `toolgate check`: an
//! agent's tool glob that names no tool, an approval group no approver belongs to (or with fewer
//! approvers than the approval needs), a credential no tool uses, a tool no agent may call. Each
//! names the file and line it is about. They are warnings: the set is valid, and `check
//! --strict` turns them into errors.
//!
//! Lines come from the TOML parser's spans (`toml::de::DeTable`), so a finding points at the
//! glob, group, credential or tool name itself.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::types::{glob_match, PolicyError};

mod gate;
pub use gate::{launch_gate, notes};

/// One warning about a policy set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub path: PathBuf,
    /// 1-based.
    pub line: usize,
    pub message: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}: warning: {}",
            self.path.display(),
            self.line,
            self.message
        )
    }
}

/// A string of a policy file and where it is.
struct At {
    value: String,
    path: PathBuf,
    line: usize,
}

#[derive(Default)]
struct Seen {
    /// Agent id, its tool globs.
    agents: Vec<(At, Vec<At>)>,
    /// Approver groups: group -> approver ids.
    groups: BTreeMap<String, BTreeSet<String>>,
    /// Credential names as defined.
    credentials: Vec<At>,
    /// Tool name, the credentials it names, its approval (groups, required) if any.
    tools: Vec<(At, Vec<String>, Option<Approval>)>,
}

struct Approval {
    groups: Vec<At>,
    required: u64,
    /// The line of `approval = …` (or of the tool when there is none).
    line: usize,
}

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset)
        .map(|t| t.matches('\n').count() + 1)
        .unwrap_or(1)
}

/// The entries of an array of tables such as `[[agent]]`.
fn entries<'a, 'i>(doc: &'a DeTable<'i>, key: &str) -> Vec<&'a DeTable<'i>> {
    doc.get(key)
        .and_then(|v| v.get_ref().as_array())
        .map(|a| a.iter().filter_map(|v| v.get_ref().as_table()).collect())
        .unwrap_or_default()
}

fn string_at(table: &DeTable<'_>, key: &str, path: &Path, text: &str) -> Option<At> {
    let v: &Spanned<DeValue<'_>> = table.get(key)?;
    Some(At {
        value: v.get_ref().as_str()?.to_string(),
        path: path.to_path_buf(),
        line: line_of(text, v.span().start),
    })
}

fn strings_at(table: &DeTable<'_>, key: &str, path: &Path, text: &str) -> Vec<At> {
    table
        .get(key)
        .and_then(|v| v.get_ref().as_array())
        .map(|a| {
            a.iter()
                .filter_map(|v| {
                    Some(At {
                        value: v.get_ref().as_str()?.to_string(),
                        path: path.to_path_buf(),
                        line: line_of(text, v.span().start),
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

fn read(seen: &mut Seen, path: &Path, text: &str) {
    // A file that does not parse fails the load, which `check` reports first.
    let Ok(doc) = DeTable::parse(text) else {
        return;
    };
    let doc = doc.get_ref();
    for agent in entries(doc, "agent") {
        if let Some(id) = string_at(agent, "id", path, text) {
            seen.agents
                .push((id, strings_at(agent, "tools", path, text)));
        }
    }
    for approver in entries(doc, "approver") {
        let Some(id) = string_at(approver, "id", path, text) else {
            continue;
        };
        for g in strings_at(approver, "groups", path, text) {
            seen.groups
                .entry(g.value)
                .or_default()
                .insert(id.value.clone());
        }
    }
    for cred in entries(doc, "credential") {
        seen.credentials.extend(string_at(cred, "name", path, text));
    }
    for tool in entries(doc, "tool") {
        let Some(name) = string_at(tool, "name", path, text) else {
            continue;
        };
        let creds = tool
            .get("credential")
            .and_then(|v| v.get_ref().as_table())
            .map(|t| {
                t.iter()
                    .filter_map(|(_, v)| v.get_ref().as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let approval = match (
            tool.get("mode").and_then(|m| m.get_ref().as_str()),
            tool.get("approval"),
        ) {
            (Some("approve"), Some(a)) => a.get_ref().as_table().map(|t| Approval {
                groups: strings_at(t, "groups", path, text),
                required: t
                    .get("required")
                    .and_then(|r| r.get_ref().as_integer())
                    .and_then(|i| i.as_str().parse().ok())
                    .unwrap_or(1),
                line: line_of(text, a.span().start),
            }),
            (Some("approve"), None) => Some(Approval {
                groups: Vec::new(),
                required: 1,
                line: name.line,
            }),
            _ => None,
        };
        seen.tools.push((name, creds, approval));
    }
}

/// The warnings for a policy set given as its files' (path, text), in file order.
pub fn lint(files: &[(PathBuf, String)]) -> Vec<Finding> {
    let mut seen = Seen::default();
    for (path, text) in files {
        read(&mut seen, path, text);
    }
    let mut out = unmatched_globs(&seen);
    out.extend(undecidable_approvals(&seen));
    out.extend(unused_credentials(&seen));
    out.extend(uncalled_tools(&seen));
    out
}

impl At {
    /// A warning about this string.
    fn warn(&self, message: String) -> Finding {
        Finding {
            path: self.path.clone(),
            line: self.line,
            message,
        }
    }
}

/// An agent's tools glob that names no tool.
fn unmatched_globs(seen: &Seen) -> Vec<Finding> {
    let tool_names: Vec<&str> = seen
        .tools
        .iter()
        .map(|(t, _, _)| t.value.as_str())
        .collect();
    let mut out = Vec::new();
    for (agent, globs) in &seen.agents {
        for glob in globs {
            if !tool_names.iter().any(|t| glob_match(&glob.value, t)) {
                out.push(glob.warn(format!(
                    "agent {}: tools glob {:?} matches no tool (a typo, or a tool that was removed?)",
                    agent.value, glob.value
                )));
            }
        }
    }
    out
}

/// An approval group no approver belongs to, or an approval needing more approvers than may
/// decide.
fn undecidable_approvals(seen: &Seen) -> Vec<Finding> {
    let approvers: BTreeSet<&String> = seen.groups.values().flatten().collect();
    let mut out = Vec::new();
    for (tool, _, approval) in &seen.tools {
        let Some(a) = approval else { continue };
        for g in a
            .groups
            .iter()
            .filter(|g| !seen.groups.contains_key(&g.value))
        {
            out.push(g.warn(format!(
                "tool {}: approval group {:?} has no approver: no approver belongs to it",
                tool.value, g.value
            )));
        }
        // Who may decide: the named groups' members, or any approver when none are named.
        let deciders: BTreeSet<&String> = match a.groups.is_empty() {
            true => approvers.clone(),
            false => a
                .groups
                .iter()
                .filter_map(|g| seen.groups.get(&g.value))
                .flatten()
                .collect(),
        };
        if !deciders.is_empty() && (deciders.len() as u64) < a.required {
            let names: Vec<&str> = deciders.iter().map(|s| s.as_str()).collect();
            out.push(Finding {
                path: tool.path.clone(),
                line: a.line,
                message: format!(
                    "tool {}: its approval needs {} different approvers, but only {} may decide ({}): no call of it can ever be approved",
                    tool.value,
                    a.required,
                    deciders.len(),
                    names.join(", ")
                ),
            });
        }
    }
    out
}

/// A credential no tool names.
fn unused_credentials(seen: &Seen) -> Vec<Finding> {
    let used: BTreeSet<&String> = seen.tools.iter().flat_map(|(_, c, _)| c).collect();
    seen.credentials
        .iter()
        .filter(|cred| !used.contains(&cred.value))
        .map(|cred| cred.warn(format!("credential {:?} is used by no tool", cred.value)))
        .collect()
}

/// A tool no agent's tools glob names.
fn uncalled_tools(seen: &Seen) -> Vec<Finding> {
    let called = |tool: &At| {
        seen.agents
            .iter()
            .any(|(_, globs)| globs.iter().any(|g| glob_match(&g.value, &tool.value)))
    };
    seen.tools
        .iter()
        .filter(|(tool, _, _)| !called(tool))
        .map(|(tool, _, _)| {
            tool.warn(format!(
                "tool {} may be called by no agent: no agent's tools glob names it (only a grant could lend it)",
                tool.value
            ))
        })
        .collect()
}

/// [`lint`] over the `*.toml` files of a policy folder (as `Policy::load_dir` reads them).
pub fn lint_dir(dir: &Path) -> Result<Vec<Finding>, super::PolicyError> {
    let mut paths = Vec::new();
    super::compile::collect_toml(dir, &mut paths)?;
    paths.sort();
    let mut files = Vec::new();
    for path in paths {
        let text =
            std::fs::read_to_string(&path).map_err(|e| PolicyError::new(&path, e.to_string()))?;
        files.push((path, text));
    }
    Ok(lint(&files))
}

#[cfg(test)]
mod tests {
    use super::*;

    const AGENTS: &str = r#"
[[agent]]
id = "bot"
token_sha256 = "00"
owner = "o"
environment = "staging"
tools = ["stripe.*",
         "githb.*"]

[[approver]]
id = "carol"
token_sha256 = "00"
groups = ["payments-leads"]

[[credential]]
name = "stripe"
env = "S"
header = "Authorization"
format = "Bearer {secret}"

[[credential]]
name = "unused"
env = "U"
header = "Authorization"
format = "Bearer {secret}"
"#;

    const TOOLS: &str = r#"
[[tool]]
name = "stripe.refunds.create"
host = "api.stripe.com"
method = "POST"
path = "/v1/refunds"
mode = "approve"
credential = { staging = "stripe" }
approval = { groups = ["payments-leads", "payments-lead"], required = 1 }

[[tool]]
name = "stripe.customers.delete"
host = "api.stripe.com"
method = "DELETE"
path = "/v1/customers/{id}"
mode = "approve"
credential = { staging = "stripe" }
approval = { groups = ["payments-leads"], required = 2 }

[[tool]]
name = "github.repos.get"
host = "api.github.com"
method = "GET"
path = "/repos/{o}/{r}"
"#;

    fn found() -> Vec<String> {
        lint(&[
            (PathBuf::from("p/agents.toml"), AGENTS.to_string()),
            (PathBuf::from("p/tools.toml"), TOOLS.to_string()),
        ])
        .iter()
        .map(Finding::to_string)
        .collect()
    }

    #[test]
    fn a_glob_that_matches_no_tool_is_named_at_its_line() {
        let f = found();
        assert!(
            f.iter().any(|l| l.starts_with(
                "p/agents.toml:8: warning: agent bot: tools glob \"githb.*\" matches no tool"
            )),
            "{f:#?}"
        );
        assert!(!f.iter().any(|l| l.contains("\"stripe.*\"")), "{f:#?}");
    }

    #[test]
    fn an_approval_group_without_approvers_is_named() {
        let f = found();
        assert!(
            f.iter().any(|l| l.starts_with("p/tools.toml:9: warning: tool stripe.refunds.create: approval group \"payments-lead\" has no approver")),
            "{f:#?}"
        );
        assert!(
            f.iter().any(|l| l.starts_with("p/tools.toml:18: warning: tool stripe.customers.delete: its approval needs 2 different approvers, but only 1 may decide (carol)")),
            "{f:#?}"
        );
    }

    #[test]
    fn a_credential_no_tool_uses_is_named() {
        let f = found();
        assert!(
            f.iter().any(|l| l.starts_with(
                "p/agents.toml:22: warning: credential \"unused\" is used by no tool"
            )),
            "{f:#?}"
        );
        assert!(
            !f.iter().any(|l| l.contains("credential \"stripe\"")),
            "{f:#?}"
        );
    }

    #[test]
    fn a_tool_no_agent_may_call_is_named() {
        let f = found();
        assert!(
            f.iter().any(|l| l.starts_with(
                "p/tools.toml:21: warning: tool github.repos.get may be called by no agent"
            )),
            "{f:#?}"
        );
        assert_eq!(f.len(), 5, "{f:#?}");
    }

    #[test]
    fn the_example_policies_have_no_warnings() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
        let found = lint_dir(&dir).unwrap();
        assert!(found.is_empty(), "{found:#?}");
    }
}
