//! The last test binary `cargo test` runs (binaries run in name order: `it`, the integration
//! tests, then this; the library has no doc tests): it prints every suite of this run that
//! skipped, and what to install for it, so a skip is seen at the end of the output instead of
//! lost in a passing test's captured output. A plain `main` (`harness = false` in Cargo.toml),
//! so that what it prints is shown.
//!
//! A binary of its own rather than a test inside `it`: a test there cannot know when all the
//! others have finished (filters, `--skip` and parallel threads change which run and when), and
//! the harness captures what a passing test prints. A second process started after `it` exits
//! sees every skip of the run and prints unhindered; it reads a file, so it does not link the
//! crate and costs a few megabytes.

use std::collections::BTreeMap;

const LIST: &str = concat!(env!("CARGO_TARGET_TMPDIR"), "/toolgate-skips.txt");

fn main() {
    // The binaries of one `cargo test` run share their parent, the cargo process.
    let run = std::os::unix::process::parent_id().to_string();
    let text = std::fs::read_to_string(LIST).unwrap_or_default();
    // Lines of earlier runs (one stopped by a failure, or a run of a few binaries) go too.
    let _ = std::fs::remove_file(LIST);
    let mut skipped: BTreeMap<String, (String, String)> = BTreeMap::new();
    for line in text.lines() {
        let f: Vec<&str> = line.splitn(4, '\t').collect();
        if let [id, suite, why, install] = f.as_slice() {
            if *id == run {
                skipped.insert(suite.to_string(), (why.to_string(), install.to_string()));
            }
        }
    }
    if skipped.is_empty() {
        println!("toolgate: every test suite ran; none was skipped.");
        return;
    }
    println!(
        "toolgate: {} test suite(s) SKIPPED in this run (cargo test passes without them):",
        skipped.len()
    );
    for (suite, (why, install)) in &skipped {
        println!("  SKIPPED {suite}: {why}");
        println!("          to run it: {install}");
    }
    println!("  .ci/run installs all of it and turns a skip into a failure (tests/sdk/README.md).");
}
