//! `toolgate audit …`: stories, search, export, verify and purge, through a running server's
//! admin API or, with `--data-dir`, on a stopped toolgate's store.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use crate::client::{query_param, AdminClient};
use crate::config::{env, parse_duration};

use super::fail;

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// The story of a request, proposal or job id: who asked, what was proposed, who approved,
    /// what was sent, what came back.
    Story {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Events by agent, tool, refusal code, kind and time.
    Search {
        #[arg(long)]
        agent: Option<String>,
        #[arg(long)]
        tool: Option<String>,
        #[arg(long)]
        code: Option<String>,
        #[arg(long)]
        kind: Option<String>,
        /// The id of an issued token (tok_…): the calls made with it.
        #[arg(long)]
        token: Option<String>,
        /// A person (alice@example.com): the calls made for them.
        #[arg(long)]
        user: Option<String>,
        /// A model call's request id (req_…): the calls its answer led to.
        #[arg(long = "model-request")]
        model_request: Option<String>,
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        until: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Every event since a time, as JSON Lines (the schema is in the README), or as OCSF
    /// events (`--format ocsf`, for a SIEM).
    Export {
        #[arg(long)]
        since: Option<String>,
        /// `toolgate` (the audit log's own events) or `ocsf`.
        #[arg(long, value_enum, default_value = "toolgate")]
        format: ExportFormat,
    },
    /// Checks the hash chain; names the first bad sequence number.
    Verify,
    /// Removes events older than a time; the rest stays verifiable.
    Purge {
        #[arg(long)]
        before: String,
        /// Why (recorded in the purge event).
        #[arg(long, default_value = "")]
        reason: String,
        /// With --data-dir: the youngest events that may be removed (the server uses its own
        /// --audit-retention-min).
        #[arg(long, env = env::AUDIT_RETENTION_MIN, default_value = "30d")]
        audit_retention_min: String,
        /// Through the server: also purge events an audit sink has not delivered yet.
        #[arg(long)]
        force: bool,
    },
}

/// What `audit export` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    /// The audit log's events as stored (hash-chained).
    Toolgate,
    /// OCSF events (schema 1.8.0), the audit event under `unmapped`.
    Ocsf,
}

/// Runs an audit command against a running server, or a stopped one's store.
pub(super) async fn run(
    command: AuditCommand,
    client: AdminClient<'_>,
    data_dir: Option<PathBuf>,
) -> ExitCode {
    use crate::audit::Filter;
    // Only a purge changes a stopped store; the rest read it as it is.
    let repair = matches!(command, AuditCommand::Purge { .. });
    let offline = match open_offline(data_dir.as_deref(), repair) {
        Ok(a) => a,
        Err(e) => return fail(&e),
    };
    match command {
        AuditCommand::Story { id, json } => story_cmd(offline.as_ref(), client, &id, json).await,
        AuditCommand::Search {
            agent,
            tool,
            code,
            kind,
            token,
            user,
            model_request,
            since,
            until,
            json,
        } => {
            let f = Filter {
                agent,
                tool,
                code,
                kind,
                token,
                user,
                model_request,
                since,
                until,
            };
            print_events(search_events(offline.as_ref(), client, &f).await, json)
        }
        AuditCommand::Export { since, format } => {
            export_cmd(offline.as_ref(), client, since, format).await
        }
        AuditCommand::Verify => verify_cmd(offline.as_ref(), client).await,
        AuditCommand::Purge {
            before,
            reason,
            audit_retention_min,
            force,
        } => {
            let removed = match &offline {
                Some(a) => purge_offline(a, &before, &reason, &audit_retention_min).await,
                None => purge_online(client, &before, &reason, force).await,
            };
            match removed {
                Ok(n) => {
                    say!("removed {n} events; the rest still verifies");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e),
            }
        }
    }
}

/// A purge by the running server (which applies its own retention minimum).
async fn purge_online(
    client: AdminClient<'_>,
    before: &str,
    reason: &str,
    force: bool,
) -> Result<u64, String> {
    let body = serde_json::json!({ "before": before, "reason": reason, "force": force });
    match client
        .call(http::Method::POST, "/api/audit/purge", Some(body))
        .await?
    {
        (200, v) => {
            if let Some(note) = v["note"].as_str() {
                say!("{note}");
            }
            Ok(v["removed"].as_u64().unwrap_or(0))
        }
        (status, v) => Err(format!(
            "{status}: {}",
            v["error"]["message"].as_str().unwrap_or("")
        )),
    }
}

/// `audit export`: JSON Lines, written as they are read (from the stopped store) or as they
/// arrive (from the server), so that memory stays flat whatever the log's size.
async fn export_cmd(
    offline: Option<&crate::audit::Audit>,
    client: AdminClient<'_>,
    since: Option<String>,
    format: ExportFormat,
) -> ExitCode {
    use std::io::Write;
    let since_ms = match crate::audit::time_filter("since", &since) {
        Ok(since) => since,
        Err(why) => return fail(&why),
    };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if let Some(a) = offline {
        for e in a.export(since_ms) {
            match e {
                Ok(e) => {
                    let line = match format {
                        ExportFormat::Toolgate => serde_json::to_string(&e),
                        ExportFormat::Ocsf => serde_json::to_string(&crate::audit::ocsf::event(&e)),
                    };
                    let _ = writeln!(out, "{}", line.unwrap_or_default());
                }
                Err(e) => return fail(&e.to_string()),
            }
        }
        let _ = out.flush();
        return ExitCode::SUCCESS;
    }
    let path = format!("/api/audit/export?{}", query_param("since", &since));
    let resp = match client.request(http::Method::GET, &path, None).await {
        Ok(r) => r,
        Err(e) => return fail(&e),
    };
    if !resp.status().is_success() {
        return fail(&format!("{}: the export was refused", resp.status()));
    }
    let mut body = resp.into_body();
    // OCSF: each line (one event) mapped as it arrives; a line may span chunks.
    let mut partial: Vec<u8> = Vec::new();
    while let Some(frame) = http_body_util::BodyExt::frame(&mut body).await {
        match frame {
            Ok(f) => {
                let Some(chunk) = f.data_ref() else { continue };
                if format == ExportFormat::Toolgate {
                    let _ = out.write_all(chunk);
                    continue;
                }
                partial.extend_from_slice(chunk);
                if let Err(e) = write_ocsf_lines(&mut partial, &mut out) {
                    return fail(&e);
                }
            }
            Err(e) => return fail(&format!("the export stopped: {e}")),
        }
    }
    partial.push(b'\n');
    if let Err(e) = write_ocsf_lines(&mut partial, &mut out) {
        return fail(&e);
    }
    let _ = out.flush();
    ExitCode::SUCCESS
}

/// Writes the whole lines of `partial` (audit events) as OCSF events, keeping the rest.
fn write_ocsf_lines(partial: &mut Vec<u8>, out: &mut impl std::io::Write) -> Result<(), String> {
    let Some(end) = partial.iter().rposition(|b| *b == b'\n') else {
        return Ok(());
    };
    let rest = partial.split_off(end + 1);
    for line in partial
        .split(|b| *b == b'\n')
        .filter(|l| !l.trim_ascii().is_empty())
    {
        let e: crate::audit::Event = serde_json::from_slice(line)
            .map_err(|e| format!("the server sent an event this build cannot read ({e})"))?;
        let ocsf = crate::audit::ocsf::event(&e);
        let _ = writeln!(out, "{}", serde_json::to_string(&ocsf).unwrap_or_default());
    }
    *partial = rest;
    Ok(())
}

/// With `--data-dir`: the audit log of a stopped toolgate, opened directly; `repair`: its
/// audit log recovered after a crash (else one that needs it is an error, and nothing changes).
pub(super) fn open_offline(
    data_dir: Option<&std::path::Path>,
    repair: bool,
) -> Result<Option<crate::audit::Audit>, String> {
    let Some(dir) = data_dir else {
        return Ok(None);
    };
    let open = if repair {
        crate::store::open
    } else {
        crate::store::open_inspect
    };
    let store = open(dir)
        .map_err(|e| format!("{e} (is toolgate still running on it? then use --server instead)"))?;
    crate::audit::Audit::open(&store)
        .map(Some)
        .map_err(|e| e.to_string())
}

fn events_of(v: &serde_json::Value) -> Vec<crate::audit::Event> {
    serde_json::from_value(v["events"].clone()).unwrap_or_default()
}

/// The events a filter selects, from the stopped store or the server.
async fn search_events(
    offline: Option<&crate::audit::Audit>,
    client: AdminClient<'_>,
    f: &crate::audit::Filter,
) -> Result<Vec<crate::audit::Event>, String> {
    if let Some(a) = offline {
        return a.search(f);
    }
    let q = query_param;
    let path = format!(
        "/api/audit/search?{}{}{}{}{}{}{}{}{}",
        q("agent", &f.agent),
        q("tool", &f.tool),
        q("code", &f.code),
        q("kind", &f.kind),
        q("token", &f.token),
        q("user", &f.user),
        q("model_request", &f.model_request),
        q("since", &f.since),
        q("until", &f.until)
    );
    client.get(&path).await.map(|v| events_of(&v))
}

/// One line per event: JSON (the export schema) or as people read it.
fn print_events(events: Result<Vec<crate::audit::Event>, String>, json: bool) -> ExitCode {
    match events {
        Ok(events) => {
            for e in &events {
                if json {
                    say!("{}", serde_json::to_string(e).unwrap_or_default());
                } else {
                    say!("{}", crate::audit::describe(e));
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

/// `audit story ID`: the summary, then every event (or JSON).
async fn story_cmd(
    offline: Option<&crate::audit::Audit>,
    client: AdminClient<'_>,
    id: &str,
    json: bool,
) -> ExitCode {
    let events = match offline {
        Some(a) => a.story(id).map_err(|e| e.to_string()),
        None => client
            .get(&format!("/api/audit/story/{id}"))
            .await
            .map(|v| events_of(&v)),
    };
    let events = match events {
        Ok(e) if e.is_empty() => return fail(&format!("no events mention {id}")),
        Ok(e) => e,
        Err(e) => return fail(&e),
    };
    if json {
        say!("{}", serde_json::json!({"id": id, "events": events}));
    } else {
        say!("The story of {id}:");
        for line in crate::audit::summary(&events) {
            say!("  {line}");
        }
        say!();
        for e in &events {
            say!("{}", crate::audit::describe(e));
        }
    }
    ExitCode::SUCCESS
}

/// `audit verify`: the chain, and every purge so far.
async fn verify_cmd(offline: Option<&crate::audit::Audit>, client: AdminClient<'_>) -> ExitCode {
    let mut purges = Vec::new();
    let mut recoveries = Vec::new();
    let result = match offline {
        Some(a) => {
            purges = a.purges().unwrap_or_default();
            recoveries = a.recoveries().unwrap_or_default();
            a.verify()
        }
        None => match client.get("/api/audit/verify").await {
            Ok(v) if v["ok"] == true => {
                purges = v["purges"].as_array().cloned().unwrap_or_default();
                recoveries = v["recoveries"].as_array().cloned().unwrap_or_default();
                Ok(v["events"].as_u64().unwrap_or(0))
            }
            Ok(v) => Err((
                v["seq"].as_u64().unwrap_or(0),
                v["reason"].as_str().unwrap_or("").to_string(),
            )),
            Err(e) => return fail(&e),
        },
    };
    match result {
        Ok(n) => {
            say!("ok: {n} events, the chain is intact");
            purges.iter().for_each(print_purge);
            for r in &recoveries {
                say!("recovered: {}", r["note"].as_str().unwrap_or("?"));
            }
            ExitCode::SUCCESS
        }
        Err((seq, why)) => fail(&format!("chain broken at event {seq}: {why}")),
    }
}

/// One line of `audit verify` about an earlier purge.
fn print_purge(p: &serde_json::Value) {
    say!(
        "purged: {} events (seq {}..{}) older than {}, by {} at {}{}",
        p["removed"],
        p["from_seq"],
        p["to_seq"],
        p["before"].as_str().unwrap_or("?"),
        p["by"].as_str().unwrap_or("?"),
        p["at"].as_str().unwrap_or("?"),
        p["reason"]
            .as_str()
            .filter(|r| !r.is_empty())
            .map(|r| format!(": {r}"))
            .unwrap_or_default()
    );
}

/// A purge of a stopped toolgate's store, by whoever holds its files.
async fn purge_offline(
    audit: &crate::audit::Audit,
    before: &str,
    reason: &str,
    min: &str,
) -> Result<u64, String> {
    let ms = crate::audit::parse_time(before)
        .ok_or_else(|| format!("--before {before:?} is not a time"))?;
    let min = parse_duration(min).map_err(|e| format!("--audit-retention-min: {e}"))?;
    crate::audit::check_purge_cut(ms, min)?;
    let by = format!(
        "local:{} (--data-dir)",
        std::env::var("USER").unwrap_or_else(|_| "operator".into())
    );
    // A stopped store's sinks are not running: the operator's purge is what they asked for.
    audit
        .purge(ms, &by, reason, None)
        .await
        .map(|r| r.removed)
        .map_err(|e| e.to_string())
}
