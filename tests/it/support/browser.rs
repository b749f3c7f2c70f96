//! Headless Chromium for the page tests.

use super::skips;

/// The name of the running test (its thread's name under the harness).
pub fn current_test() -> String {
    std::thread::current()
        .name()
        .unwrap_or("a browser test")
        .to_string()
}

/// Headless Chromium for the page tests: the browser scripts' folder and the browser, or None
/// after saying why (a failure under `TOOLGATE_REQUIRE_BROWSER`).
pub fn browser() -> Option<(std::path::PathBuf, String)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if std::path::Path::new(&chromium).exists() && dir.join("node_modules/playwright-core").exists()
    {
        return Some((dir, chromium));
    }
    assert!(
        std::env::var_os("TOOLGATE_REQUIRE_BROWSER").is_none(),
        "TOOLGATE_REQUIRE_BROWSER is set but {chromium} or tests/browser/node_modules is missing"
    );
    skips::skipped(
        &format!(
            "{} (the approvers' page in headless Chromium)",
            current_test()
        ),
        &format!("{chromium} or tests/browser/node_modules/playwright-core is missing"),
        skips::BROWSER,
    );
    None
}
