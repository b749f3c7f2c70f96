//! The integration tests: one binary, so the crate is linked once (eighteen binaries each
//! linking it once filled a CI machine's disk). Each module is one suite, named in a test's
//! path: `cargo test --test it proxy::` runs the proxy's, `cargo test --test it
//! acceptance::launch_check_rollback_after_a_partial_failure_unwinds_the_job` one test.
//! Shared helpers are in `support`; `tests/zz_skipped.rs`, a second, tiny binary that runs after
//! this one, prints which suites skipped.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

mod acceptance;
mod approvals;
mod approvals_browser;
mod audit;
mod audit_scale;
mod binary;
mod bypass;
mod connections;
mod contracts;
mod crash;
mod demo;
mod graphql;
mod graphql_adapter;
mod hardening;
mod import;
mod import_graphql;
mod layers;
mod mcp;
mod model_reason;
mod ocsf;
mod people;
mod policy_tests;
mod postgres;
mod principals;
mod proxy;
mod sdk;
mod sinks;
mod sso;
mod sso_provider;
mod store;
mod streaming;
mod suggest;
mod tls_listeners;
mod traces;
mod traffic;
mod transparent;
