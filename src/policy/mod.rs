//! Policies: agents, approvers, credentials and tool contracts, loaded from the TOML files of a
//! folder (DESIGN section 2), validated once into typed values, and matched per request.
//!
//! `file` is the format people write, `compile` turns it into the typed model of `types`, and
//! `lookup` finds what a request is about in the compiled set.

mod compile;
pub mod connection_def;
pub mod contract;
pub mod file;
mod graphql_def;
pub mod identity_def;
pub mod lint;
mod lookup;
pub mod published;
pub mod response;
pub mod rollback_def;
pub mod rules;
pub mod template;
mod types;

use std::path::{Path, PathBuf};

pub use compile::parse_rate;
pub use file::{AgentDef, PolicyFile, ToolDef};
pub use lookup::Policy;
pub use published::{Published, Role, PUBLISHED_TOKENS};
pub use template::{check_path, PathError, PathTemplate};
pub use types::{
    glob_match, Agent, ApprovalSpec, Approver, Assertion, BodyFormat, BodySpec, Budget, ClientAuth,
    ClientSecret, Connection, Credential, EndUser, Exchange, GraphqlSpec, HttpsUrl, Idempotency,
    IdentityProvider, JwksSource, Login, LoginEndpoints, Matched, McpSpec, Mode, ModelAnswerLimits,
    PerUser, Period, PolicyError, RateLimit, Risk, Rollback, SendOn, SideEffects, Tool, ToolKind,
    Users, DEFAULT_MAX_BODY,
};

/// What an unset secret reads as in [`Policy::load_dir_dry`].
const DRY_SECRET: &str = "unset-in-a-dry-evaluation";

/// The folder of a policy folder that holds its test cases (`toolgate test`), not policy.
pub const TESTS_DIR: &str = "tests";

impl Policy {
    /// Loads every `*.toml` file under `dir` (recursively, in name order), but for the test
    /// cases in `dir/tests/`.
    pub fn load_dir(dir: &Path) -> Result<Policy, PolicyError> {
        let files = compile::read_dir(dir)?;
        Policy::build(files, &|name| std::env::var(name).ok())
    }

    /// Loads `dir` for a dry evaluation (`toolgate test`, `toolgate explain`): a secret or
    /// token named by an environment variable that is not set reads as a placeholder, since
    /// nothing is sent and no one authenticates (CI runs the tests without the real secrets).
    pub fn load_dir_dry(dir: &Path) -> Result<Policy, PolicyError> {
        let files = compile::read_dir(dir)?;
        Policy::build(files, &|name| {
            Some(std::env::var(name).unwrap_or_else(|_| DRY_SECRET.to_string()))
        })
    }

    /// Builds a policy set from parsed files. `env` reads environment variables (a parameter so
    /// that nothing reads the process environment implicitly).
    pub fn build(
        files: Vec<(PathBuf, PolicyFile)>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Policy, PolicyError> {
        compile::build(files, env)
    }
}

/// A policy set from one TOML text, every `token_env` reading `secret` (for unit tests).
#[cfg(test)]
pub(crate) fn for_tests(toml_text: &str) -> Policy {
    let file: PolicyFile = toml::from_str(toml_text).expect("test policy parses");
    Policy::build(vec![("t.toml".into(), file)], &|_| {
        Some("secret".to_string())
    })
    .expect("test policy builds")
}

#[cfg(test)]
mod tests;
