//! The launch gate and the notes `toolgate check` prints beside its table. The gate is what no
//! policy set may go to production with (one credential shared by every tool, an irreversible
//! tool that runs without approval, a tool with side effects whose body nobody described); the
//! notes say which schemas are closed, where `expand` could bring hidden fields back, and what
//! cannot be undone. Unlike the lint's warnings they read the compiled [`Policy`].

use crate::policy::{Mode, Policy, Rollback, SideEffects, Tool};

/// What `check` says beside the table: which schemas are closed, where `expand` could bring
/// hidden fields back, and what cannot be undone (or where an undo leads nowhere).
pub fn notes(policy: &Policy) -> Vec<String> {
    let mut notes = schema_notes(policy);
    notes.extend(expand_notes(policy));
    let mut undo = Vec::new();
    for tool in policy.tools() {
        if tool.side_effects == SideEffects::None {
            continue;
        }
        match tool.rollback.as_ref() {
            Some(Rollback::None(why)) => {
                undo.push(format!("{}: cannot be undone: {why}", tool.name))
            }
            None => undo.push(format!("{}: declares no undo", tool.name)),
            Some(Rollback::Request { method, path, .. }) => {
                if let Some(warning) = undo_target_warning(policy, tool, method, path) {
                    undo.push(warning);
                }
            }
        }
    }
    notes.extend(undo);
    notes
}

/// What no policy set may go to production with: one credential shared by every tool, an
/// irreversible tool that runs without approval, a tool with side effects whose body or
/// arguments nobody described.
pub fn launch_gate(policy: &Policy) -> Vec<String> {
    let mut refused = Vec::new();
    let with_credentials: Vec<_> = policy
        .tools()
        .iter()
        .filter(|t| !t.credentials.is_empty())
        .collect();
    if with_credentials.len() > 1 {
        let names = |t: &Tool| -> std::collections::BTreeSet<String> {
            t.credentials.values().map(|c| c.name.clone()).collect()
        };
        let mut shared = names(with_credentials[0]);
        for t in &with_credentials[1..] {
            let mine = names(t);
            shared.retain(|n| mine.contains(n));
        }
        for name in shared {
            refused.push(format!(
                "credential {name} is shared by every tool ({}): give each API, or each tool, a credential of its own",
                with_credentials.len()
            ));
        }
    }
    for t in policy.tools() {
        if t.side_effects == SideEffects::Irreversible && t.mode == Mode::Auto {
            refused.push(format!(
                "{} is irreversible and runs in mode auto: hold it for approval (mode = \"approve\") or deny it",
                t.name
            ));
        }
        let described = t.mcp.is_some()
            || t.graphql.is_some()
            || t.body.as_ref().is_none_or(|b| b.schema.is_some());
        if t.side_effects != SideEffects::None && !described {
            refused.push(format!(
                "{} has side effects but no body schema: describe what it may send (body = {{ format = …, schema = \"…\" }})",
                t.name
            ));
        }
    }
    refused
}

/// Which object schemas `check` treats as closed, and which accept any keys.
fn schema_notes(policy: &Policy) -> Vec<String> {
    let mut notes = Vec::new();
    for tool in policy.tools() {
        let schemas = tool
            .body
            .as_ref()
            .and_then(|b| b.schema.as_ref())
            .map(|s| ("body", s))
            .into_iter()
            .chain(tool.query.as_ref().map(|s| ("query", s)));
        for (what, schema) in schemas {
            if !schema.closed.is_empty() {
                notes.push(format!(
                    "{}: {what} schema: {} object schema(s) without additionalProperties are treated as closed (unknown fields refused)",
                    tool.name,
                    schema.closed.len()
                ));
            }
            if !schema.open.is_empty() {
                notes.push(format!(
                    "{}: {what} schema: free-form objects accept any keys at {}",
                    tool.name,
                    schema.open.join(", ")
                ));
            }
        }
    }
    notes
}

/// Where a response contract's `hide` can be gone around: another tool on the same host admits
/// `expand` (Stripe's way to answer with whole related objects, so `expand[]=customer` on a
/// payment intent returns the customer with the fields `customers.retrieve` hides).
fn expand_notes(policy: &Policy) -> Vec<String> {
    let admits_expand = |tool: &Tool| {
        let body = tool.body.as_ref().and_then(|b| b.schema.as_ref());
        body.into_iter()
            .chain(tool.query.as_ref())
            .any(|s| s.value.pointer("/properties/expand").is_some())
    };
    let mut notes = Vec::new();
    for hiding in policy.tools() {
        let Some(hidden) = hiding.response.as_ref().filter(|r| !r.hide.is_empty()) else {
            continue;
        };
        for other in policy.tools() {
            if other.name != hiding.name && other.host == hiding.host && admits_expand(other) {
                notes.push(format!(
                    "{}: admits `expand`, which answers with whole related objects, while {} hides {} of its answers: an expanded object carries those fields past that hide. Remove `expand` from {}'s schema",
                    other.name,
                    hiding.name,
                    hidden.hide.join(", "),
                    other.name
                ));
            }
        }
    }
    notes
}

/// A rollback template must lead to a contract an undo can go through.
fn undo_target_warning(
    policy: &Policy,
    tool: &Tool,
    method: &http::Method,
    template: &str,
) -> Option<String> {
    // Each placeholder stands for one path segment.
    let sample: String = regex::Regex::new(r"\{[^}]*\}")
        .ok()?
        .replace_all(template, "x")
        .into_owned();
    let text = format!("{method} {template}");
    match policy.match_tool(&tool.host, tool.port, method, &sample) {
        None => Some(format!(
            "warning: {}: its rollback {text} matches no tool contract on {}; add one, or every undo is refused",
            tool.name, tool.host
        )),
        Some(m) if m.tool.mode == Mode::Deny => Some(format!(
            "warning: {}: its rollback {text} goes to tool {}, which is in mode deny; every undo is refused",
            tool.name, m.tool.name
        )),
        Some(m) => Some(format!(
            "{}: undone by {text} through tool {}",
            tool.name, m.tool.name
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(text: &str) -> Policy {
        let file = toml::from_str(text).unwrap();
        let env = |name: &str| (name == "KEY").then(|| "secret".to_string());
        Policy::build(vec![("p.toml".into(), file)], &env).unwrap()
    }

    const SHARED: &str = r#"
[[credential]]
name = "one-key"
env = "KEY"
header = "Authorization"
format = "Bearer {secret}"

[[tool]]
name = "a.read"
host = "api.example.com"
method = "GET"
path = "/a"
credential = { prod = "one-key" }

[[tool]]
name = "a.send"
host = "api.example.com"
method = "POST"
path = "/send"
side_effects = "irreversible"
idempotency = "payload"
body = { format = "json" }
credential = { prod = "one-key" }
"#;

    #[test]
    fn the_launch_gate_names_each_finding() {
        let refused = launch_gate(&policy(SHARED));
        assert_eq!(refused.len(), 3, "{refused:#?}");
        assert!(refused[0].starts_with("credential one-key is shared by every tool (2)"));
        assert!(refused[1].starts_with("a.send is irreversible and runs in mode auto"));
        assert!(refused[2].starts_with("a.send has side effects but no body schema"));
    }

    #[test]
    fn a_tool_without_undo_is_noted() {
        let notes = notes(&policy(SHARED));
        assert_eq!(notes, vec!["a.send: declares no undo".to_string()]);
    }

    #[test]
    fn a_held_tool_of_its_own_passes_the_gate() {
        let text = SHARED
            .replace("\"irreversible\"", "\"irreversible\"\nmode = \"approve\"")
            .replace("body = { format = \"json\" }\n", "")
            .replacen("credential = { prod = \"one-key\" }\n", "", 1);
        assert!(launch_gate(&policy(&text)).is_empty());
    }
}
