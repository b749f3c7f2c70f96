//! Permissions beyond the tool list: path parameters bound to the agent's attributes, and
//! `rules`, CEL expressions over the request, the agent and the tool that deny when they hold.

use serde_json::Value;

/// A `deny_if` rule, compiled at load.
pub struct Rule {
    pub source: String,
    pub message: String,
    program: cel::Program,
}

impl std::fmt::Debug for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rule")
            .field("deny_if", &self.source)
            .field("message", &self.message)
            .finish()
    }
}

impl Rule {
    pub fn compile(source: &str, message: &str) -> Result<Rule, String> {
        let program = cel::Program::compile(source)
            .map_err(|e| format!("rule {source:?} does not parse: {e}"))?;
        Ok(Rule {
            source: source.to_string(),
            message: message.to_string(),
            program,
        })
    }

    /// Evaluates the rule. `Ok(true)` denies. A rule that cannot be evaluated (a missing field,
    /// a type error, a non-boolean result) is an error, and the caller refuses: fail closed.
    pub fn denies(
        &self,
        request: &Value,
        agent: &Value,
        tool: &Value,
        user: &Value,
    ) -> Result<bool, String> {
        let mut ctx = cel::Context::default();
        let vars = [
            ("request", request),
            ("agent", agent),
            ("tool", tool),
            ("user", user),
        ];
        for (name, value) in vars {
            let v = cel::to_value(value).map_err(|e| format!("{name}: {e}"))?;
            ctx.add_variable_from_value(name, v);
        }
        match self.program.execute(&ctx) {
            Ok(cel::Value::Bool(b)) => Ok(b),
            Ok(other) => Err(format!(
                "rule {:?} returned {other:?}, not a boolean",
                self.source
            )),
            Err(e) => Err(format!(
                "rule {:?} could not be evaluated: {e}",
                self.source
            )),
        }
    }
}

/// Checks that a binding template only names things an agent can have.
pub fn check_agent_template(template: &str) -> Result<(), String> {
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        let end = rest[start..]
            .find('}')
            .ok_or_else(|| format!("{template:?} has an unclosed '{{'"))?
            + start;
        let name = &rest[start + 1..end];
        let known = matches!(
            name,
            "agent.id" | "agent.owner" | "agent.tenant" | "agent.environment"
        ) || name
            .strip_prefix("agent.attrs.")
            .is_some_and(|k| !k.is_empty());
        if !known {
            return Err(format!(
                "{template:?} names {{{name}}}; use agent.id, agent.owner, agent.tenant, agent.environment or agent.attrs.NAME"
            ));
        }
        rest = &rest[end + 1..];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rules_deny_when_they_hold_and_fail_closed() {
        let rule = Rule::compile(
            "request.body.personalizations.exists(p, p.to.exists(t, !t.email.endsWith('@' + agent.attrs.email_domain)))",
            "external recipients are not allowed",
        )
        .unwrap();
        let agent = json!({"attrs": {"email_domain": "acme.com"}});
        let inside = json!({"body": {"personalizations": [{"to": [{"email": "a@acme.com"}]}]}});
        let outside = json!({"body": {"personalizations": [{"to": [{"email": "a@acme.com"}, {"email": "x@evil.com"}]}]}});
        assert!(!rule
            .denies(&inside, &agent, &json!({}), &json!({}))
            .unwrap());
        assert!(rule
            .denies(&outside, &agent, &json!({}), &json!({}))
            .unwrap());
        // A missing field is an error, never a silent allow.
        assert!(rule
            .denies(&json!({"body": {}}), &agent, &json!({}), &json!({}))
            .is_err());
        let not_bool = Rule::compile("1 + 1", "x").unwrap();
        assert!(not_bool
            .denies(&json!({}), &agent, &json!({}), &json!({}))
            .is_err());
        assert!(Rule::compile("(((", "x").is_err());
    }

    #[test]
    fn templates() {
        assert!(check_agent_template("{agent.attrs.x}").is_ok());
        assert!(check_agent_template("{request.body}").is_err());
    }
}
