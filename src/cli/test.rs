//! `toolgate test`: policy test cases evaluated without network or store, as a table of
//! PASS/FAIL (or JSON), exit status 1 on any failure. The evaluation is
//! [`crate::verdict::evaluate`], the proxy's own decision phases.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde_json::{json, Value};

use crate::config::env;
use crate::policy::{Policy, TESTS_DIR};
use crate::verdict::cases::{self, describe, Case};
use crate::verdict::{evaluate, Outcome, Verdict};

use super::fail;

#[derive(Debug, clap::Args)]
pub struct TestArgs {
    /// The policy folder to test.
    #[arg(long, env = env::POLICIES, default_value = "./policies")]
    pub policies: PathBuf,
    /// Cases files; without any, every `*.toml` in the policy folder's `tests/`.
    pub files: Vec<PathBuf>,
    /// One JSON document instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// One case's result.
struct Row {
    file: String,
    case: Case,
    verdict: Verdict,
    /// Why the case failed; `None` when it passed.
    why: Option<String>,
}

/// Runs the cases: exit status 1 when one fails, or when the policies or a file do not load.
pub(super) fn run(args: TestArgs) -> ExitCode {
    let policy = match Policy::load_dir_dry(&args.policies) {
        Ok(p) => p,
        Err(e) => return fail(&e.to_string()),
    };
    let files = match case_files(&args.policies, args.files) {
        Ok(f) => f,
        Err(e) => return fail(&e),
    };
    let mut rows = Vec::new();
    for path in &files {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => return fail(&format!("{}: {e}", path.display())),
        };
        let parsed = match cases::parse(&text) {
            Ok(c) => c,
            Err(e) => return fail(&format!("{}: {e}", path.display())),
        };
        let file = path.file_name().map_or_else(
            || path.display().to_string(),
            |n| n.to_string_lossy().into(),
        );
        for case in parsed {
            let verdict = evaluate(&policy, &case.asked, &case.world);
            let why = case.expect.judge(&verdict);
            rows.push(Row {
                file: file.clone(),
                case,
                verdict,
                why,
            });
        }
    }
    let failed = rows.iter().filter(|r| r.why.is_some()).count();
    match args.json {
        true => say!("{}", report(&rows)),
        false => table(&rows),
    }
    match failed {
        0 => ExitCode::SUCCESS,
        n => fail(&format!("{n} of {} case(s) failed", rows.len())),
    }
}

/// The files named, or every `*.toml` of `DIR/tests/` in name order.
fn case_files(dir: &Path, named: Vec<PathBuf>) -> Result<Vec<PathBuf>, String> {
    if !named.is_empty() {
        return Ok(named);
    }
    let tests = dir.join(TESTS_DIR);
    let entries = std::fs::read_dir(&tests).map_err(|e| {
        format!(
            "{}: {e}; write cases in {TESTS_DIR}/*.toml of the policy folder, or name the files",
            tests.display()
        )
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(format!("no *.toml cases in {}", tests.display()));
    }
    Ok(files)
}

/// The table: a row per case, and under a failure what was expected, decided and why.
fn table(rows: &[Row]) {
    let width = rows
        .iter()
        .map(|r| r.case.name.chars().count())
        .max()
        .unwrap_or(4)
        .clamp(4, 60);
    let file_width = rows.iter().map(|r| r.file.len()).max().unwrap_or(4).max(4);
    say!("RESULT {:<file_width$} {:<width$} DECIDED", "FILE", "CASE");
    for row in rows {
        let result = if row.why.is_some() { "FAIL" } else { "PASS" };
        say!(
            "{result:<6} {:<file_width$} {:<width$} {}",
            row.file,
            row.case.name,
            short(&row.verdict)
        );
        if let Some(why) = &row.why {
            say!("       expected: {}", row.case.expect.describe());
            say!("       decided:  {}", describe(&row.verdict));
            say!("       why:      {why}");
            if let Some(phase) = row.verdict.phases.iter().find(|p| !p.passed) {
                say!("       phase:    {} ({})", phase.name, phase.note);
            }
        }
    }
    let failed = rows.iter().filter(|r| r.why.is_some()).count();
    say!();
    say!(
        "{} case(s): {} passed, {failed} failed",
        rows.len(),
        rows.len() - failed
    );
}

/// A verdict in a table cell: outcome, tool, and the credential or the refusal's code.
fn short(verdict: &Verdict) -> String {
    let tool = verdict.tool.as_deref().unwrap_or("-");
    match &verdict.outcome {
        Outcome::Forward { credential } => format!(
            "forward {tool} ({})",
            credential.as_deref().unwrap_or("no credential")
        ),
        Outcome::Refused(r) => format!("refuse {} ({tool})", r.code.as_str()),
        Outcome::Unsupported(_) => "not evaluated".into(),
        other => format!("{} {tool}", other.word()),
    }
}

/// The JSON report.
fn report(rows: &[Row]) -> Value {
    let cases: Vec<Value> = rows
        .iter()
        .map(|r| {
            let (code, message, credential) = match &r.verdict.outcome {
                Outcome::Refused(x) => (Some(x.code.as_str()), Some(x.message.clone()), None),
                Outcome::Forward { credential } => (None, None, credential.clone()),
                Outcome::Unsupported(why) => (None, Some(why.clone()), None),
                _ => (None, None, None),
            };
            json!({
                "file": r.file,
                "name": r.case.name,
                "passed": r.why.is_none(),
                "expected": r.case.expect.describe(),
                "decided": {
                    "outcome": r.verdict.outcome.word(),
                    "tool": r.verdict.tool,
                    "credential": credential,
                    "code": code,
                    "message": message,
                },
                "why": r.why,
            })
        })
        .collect();
    let failed = rows.iter().filter(|r| r.why.is_some()).count();
    json!({"passed": rows.len() - failed, "failed": failed, "cases": cases})
}
