//! Skipped suites, made visible. A test that cannot run here (a browser, an SDK, PostgreSQL or
//! network namespaces missing) says so on standard error, which the harness shows only for
//! failures, and adds a line to a list under `target/`; `tests/zz_skipped.rs`, the test binary
//! `cargo test` runs after `it`, prints the list of this run at the very end of its output.

use std::io::Write;

/// The list, in the target directory's scratch space.
pub const LIST: &str = concat!(env!("CARGO_TARGET_TMPDIR"), "/toolgate-skips.txt");

/// Where each kind of missing piece is installed from.
pub const SDKS: &str = "python3 -m venv tests/sdk/.venv && tests/sdk/.venv/bin/pip install -r tests/sdk/requirements.txt; (cd tests/sdk && npm ci); see tests/sdk/README.md";
/// The GitHub CLI (the GraphQL tests; required with the SDKs, under TOOLGATE_REQUIRE_SDKS).
pub const GH: &str = "apt-get install gh; see tests/sdk/README.md";
pub const BROWSER: &str =
    "apt-get install chromium; (cd tests/browser && npm ci); see tests/sdk/README.md";
pub const POSTGRES: &str = "apt-get install postgresql; see tests/sdk/README.md";
pub const NETNS: &str = "run the tests as root (or with CAP_NET_ADMIN) with iproute2, nftables and curl installed; see tests/sdk/README.md";

/// The `cargo test` run a test binary belongs to: every binary of a run is started by the same
/// cargo process.
pub fn run_id() -> u32 {
    std::os::unix::process::parent_id()
}

/// Records that `suite` skipped because of `why`, and what to install for it.
pub fn skipped(suite: &str, why: &str, install: &str) {
    eprintln!("SKIPPED {suite}: {why}; to run it: {install}");
    let clean = |s: &str| s.replace(['\t', '\n'], " ");
    let line = format!(
        "{}\t{}\t{}\t{}\n",
        run_id(),
        clean(suite),
        clean(why),
        clean(install)
    );
    // One write per line on a file opened for appending: lines of parallel tests do not mix.
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(LIST)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = written {
        eprintln!("could not add the skip to {LIST}: {e}");
    }
}
