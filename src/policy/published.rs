//! The example policies' tokens are published (in the README and in `policies/agents.toml`):
//! whoever has read them can act as those principals. toolgate finds them by what they open in
//! the policy in force, not by a marker, so a copy of the examples with its tokens kept is found
//! too, and a policy whose hashes were replaced is not.

use super::Policy;

/// Every token the examples publish.
pub const PUBLISHED_TOKENS: [&str; 5] = [
    "demo-staging-token",
    "demo-prod-token",
    "demo-carol-token",
    "demo-dave-token",
    "demo-riley-token",
];

/// What a published token is to the policy in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// It signs an agent in to the proxy.
    Agent,
    /// It signs an approver in to the page and the admin API.
    Approver,
    /// It signs a reviewer in to the traffic pages.
    Reviewer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Agent => "agent",
            Role::Approver => "approver",
            Role::Reviewer => "reviewer",
        }
    }
}

/// A principal that a published token signs in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub role: Role,
    pub id: String,
    pub token: &'static str,
    /// An approver's groups (empty for agents and reviewers).
    pub groups: Vec<String>,
}

impl Policy {
    /// The principals that a published token signs in, agents first, then approvers and
    /// reviewers, each in id order.
    pub fn published_tokens(&self) -> Vec<Published> {
        let mut found = Vec::new();
        let mut agents: Vec<&str> = self.agents().map(|a| a.id.as_str()).collect();
        agents.sort();
        for id in agents {
            for token in PUBLISHED_TOKENS {
                if self.authenticate(id, token).is_some() {
                    found.push(Published {
                        role: Role::Agent,
                        id: id.to_string(),
                        token,
                        groups: Vec::new(),
                    });
                }
            }
        }
        let mut people = Vec::new();
        for token in PUBLISHED_TOKENS {
            if let Some(a) = self.authenticate_approver(token) {
                people.push(Published {
                    role: Role::Approver,
                    id: a.id.clone(),
                    token,
                    groups: a.groups.clone(),
                });
            }
            if let Some(r) = self.authenticate_reviewer(token) {
                people.push(Published {
                    role: Role::Reviewer,
                    id: r.id.clone(),
                    token,
                    groups: Vec::new(),
                });
            }
        }
        people.sort_by(|a, b| (a.role as u8, &a.id).cmp(&(b.role as u8, &b.id)));
        found.extend(people);
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_examples_tokens_are_found_and_replaced_ones_are_not() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
        let policy = Policy::load_dir(&dir).unwrap();
        let found: Vec<(Role, String, &str)> = policy
            .published_tokens()
            .into_iter()
            .map(|p| (p.role, p.id, p.token))
            .collect();
        assert_eq!(
            found,
            vec![
                (
                    Role::Agent,
                    "support-bot-prod".to_string(),
                    "demo-prod-token"
                ),
                (
                    Role::Agent,
                    "support-bot-staging".to_string(),
                    "demo-staging-token"
                ),
                (
                    Role::Approver,
                    "carol@example.com".to_string(),
                    "demo-carol-token"
                ),
                (
                    Role::Approver,
                    "dave@example.com".to_string(),
                    "demo-dave-token"
                ),
                (
                    Role::Reviewer,
                    "riley@example.com".to_string(),
                    "demo-riley-token"
                ),
            ]
        );
        let own = r#"
[[agent]]
id = "bot"
token_sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
owner = "o"
environment = "staging"
tools = []
"#;
        let policy = super::super::for_tests(own);
        assert!(policy.published_tokens().is_empty());
    }
}
