//! Shared helpers for the tests that cross the network: a test PKI (`pki`), loopback upstreams
//! (`upstreams`, `fakes`, `mcp_fake`, `gh_fake`), toolgate started in-process by one builder (`gate`),
//! clients that go through it as an agent would (`clients`), bounded polling (`poll`), and
//! what the suites that need outside pieces share (`browser`, `netns`, `pg`, `process`, `skips`).

pub mod browser;
pub mod clients;
pub mod fakes;
pub mod gate;
pub mod gh_fake;
pub mod mcp_fake;
pub mod netns;
pub mod otlp;
pub mod pg;
pub mod pki;
pub mod poll;
pub mod process;
pub mod skips;
pub mod upstreams;

pub use browser::*;
pub use clients::*;
pub use gate::*;
pub use pki::*;
pub use upstreams::*;
