//! `toolgate check`: a policy folder validated without serving, its tools as a table, the
//! lint's warnings and the launch gate's findings (both in [`crate::policy::lint`]).

use std::path::Path;
use std::process::ExitCode;

use crate::policy::lint::{launch_gate, lint_dir, notes};
use crate::policy::Policy;

use super::fail;

/// Validates `dir`: fails on a load error, on a launch-gate finding, and (with `strict`) on a
/// warning.
pub(super) fn run(dir: &Path, strict: bool) -> ExitCode {
    let policy = match Policy::load_dir(dir) {
        Ok(p) => p,
        Err(e) => return fail(&e.to_string()),
    };
    let warnings = match lint_dir(dir) {
        Ok(w) => w,
        Err(e) => return fail(&e.to_string()),
    };
    print_table(&policy);
    paragraph(&notes(&policy));
    paragraph(&warnings);
    let refused = launch_gate(&policy);
    if !refused.is_empty() {
        say!();
        for line in &refused {
            say!("launch gate: {line}");
        }
        return fail(&format!(
            "the policies fail the launch gate ({} finding(s) above)",
            refused.len()
        ));
    }
    if strict && !warnings.is_empty() {
        return fail(&format!(
            "--strict: {} warning(s) above; fix them or run without --strict",
            warnings.len()
        ));
    }
    say!(
        "ok: {} tools from {} files{}",
        policy.tools().len(),
        policy.files.len(),
        match warnings.len() {
            0 => String::new(),
            n => format!(", {n} warning(s)"),
        }
    );
    ExitCode::SUCCESS
}

/// Lines after a blank line, when there are any.
fn paragraph(lines: &[impl std::fmt::Display]) {
    if !lines.is_empty() {
        say!();
    }
    for line in lines {
        say!("{line}");
    }
}

/// One row per tool: its version, owner, risk, side effects, mode, idempotency and undo.
fn print_table(policy: &Policy) {
    say!(
        "{:<32} {:>3} {:<18} {:<8} {:<12} {:<8} {:<11} UNDO",
        "TOOL",
        "VER",
        "OWNER",
        "RISK",
        "SIDE-EFFECTS",
        "MODE",
        "IDEMPOTENCY"
    );
    for tool in policy.tools() {
        let undo = match &tool.rollback {
            Some(crate::policy::Rollback::None(_)) => "none".to_string(),
            Some(crate::policy::Rollback::Request { method, path, .. }) => {
                format!("{method} {path}")
            }
            None => "-".to_string(),
        };
        say!(
            "{:<32} {:>3} {:<18} {:<8} {:<12} {:<8} {:<11} {}",
            tool.name,
            tool.version,
            tool.owner.as_deref().unwrap_or("-"),
            tool.risk.map_or("-", |r| r.as_str()),
            tool.side_effects.as_str(),
            tool.mode.as_str(),
            tool.idempotency.map_or("-", |i| i.as_str()),
            undo
        );
    }
}
