//! Services: each owns its state behind private fields and keeps it consistent with the store
//! and the audit log. `app.rs` builds them from the configuration.

pub mod connections;
pub mod fresh;
pub mod jwks;
pub mod kill;
pub mod locks;
pub mod mcp_sessions;
pub mod model_asks;
pub mod oidc;
pub mod pins;
pub mod policies;
pub mod principals;
pub mod sessions;
pub mod waiters;

pub use connections::Vault;
pub use jwks::Jwks;
pub use kill::KillSwitches;
pub use locks::{KeyedLocks, LockKey};
pub use mcp_sessions::McpSessions;
pub use model_asks::{ModelAsks, Whose};
pub use pins::Pins;
pub use policies::Policies;
pub use principals::Principals;
pub use sessions::Sessions;
pub use waiters::Waiters;
