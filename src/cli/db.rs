//! `toolgate db migrate|import`: the PostgreSQL store's schema, and a stopped single-process
//! toolgate's open state moved into it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Subcommand;

use crate::config::env;
use crate::store::{Imported, PgStore, SledStore, Store};

use super::fail;

#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Apply the schema migrations this version knows (replicas also do it at start).
    Migrate {
        #[arg(long, env = env::DATABASE_URL)]
        database_url: String,
    },
    /// Move a stopped toolgate's open state (proposals, kill switches, idempotency records,
    /// budgets, rollback ledger, job claims) from its sled data dir into the database. Records
    /// the database already holds are left as they are; the audit log stays where it is.
    Import {
        #[arg(long, env = env::DATABASE_URL)]
        database_url: String,
        /// The data dir of the single-process toolgate (stopped).
        #[arg(long)]
        data_dir: PathBuf,
        /// Where the replicas' seal key is (their `--certs`): held calls are sealed again
        /// under it.
        #[arg(long, env = env::CERTS, default_value = "./certs")]
        certs: PathBuf,
    },
}

pub(super) async fn run(command: DbCommand) -> ExitCode {
    let done = match command {
        DbCommand::Migrate { database_url } => migrate(&database_url).await,
        DbCommand::Import {
            database_url,
            data_dir,
            certs,
        } => import(&database_url, &data_dir, &certs).await,
    };
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

/// `toolgate db migrate`: the schema this version needs, applied once whatever runs at once.
async fn migrate(url: &str) -> Result<(), String> {
    let applied = crate::store::PgStore::migrate_url(url)
        .await
        .map_err(|e| e.to_string())?;
    if applied.is_empty() {
        say!("the database is up to date");
    } else {
        let list: Vec<String> = applied.iter().map(i32::to_string).collect();
        say!("applied migrations {}", list.join(", "));
    }
    Ok(())
}

/// `toolgate db import`: a stopped toolgate's open state moved into the database, and the move
/// recorded in the database's audit chain with where the old chain ends (and whether it
/// verified), so the two logs read as one story.
async fn import(url: &str, data_dir: &Path, certs: &Path) -> Result<(), String> {
    let (from, to) = open_both(url, data_dir, certs).await?;
    let old_chain = old_chain(from.clone()).await?;
    let done = crate::store::import(&from, to.as_ref())
        .await
        .map_err(|e| format!("import stopped: {e} (run it again: what is in is kept)"))?;
    record_import(to, data_dir, &done, &old_chain)
        .await
        .map_err(|e| format!("imported, but the audit event was not written: {e}"))?;
    print_imported(&done, data_dir, &old_chain);
    Ok(())
}

/// The data dir's sled store (its toolgate stopped) and the database, migrated.
async fn open_both(
    url: &str,
    data_dir: &Path,
    certs: &Path,
) -> Result<(Arc<SledStore>, Arc<PgStore>), String> {
    if !data_dir.join("store").join("db").exists() {
        return Err(format!(
            "{} is not a toolgate data dir (no sled database in it)",
            data_dir.display()
        ));
    }
    let from =
        SledStore::open(data_dir).map_err(|e| format!("{e} (stop the toolgate using it first)"))?;
    let to = PgStore::connect(url, certs).map_err(|e| e.to_string())?;
    to.migrate().await.map_err(|e| e.to_string())?;
    Ok((Arc::new(from), Arc::new(to)))
}

/// The `store.import` event in the database's audit chain: what was moved, from where, and
/// where the old chain ends.
async fn record_import(
    to: Arc<PgStore>,
    data_dir: &Path,
    done: &Imported,
    old_chain: &serde_json::Value,
) -> Result<u64, String> {
    let to: Store = to;
    let audit = crate::audit::Audit::open(&to).map_err(|e| e.to_string())?;
    let mut payload = serde_json::to_value(done).map_err(|e| e.to_string())?;
    payload["data_dir"] = data_dir.display().to_string().into();
    payload["source_audit"] = old_chain.clone();
    let seq = audit
        .record_durable(crate::audit::Record {
            kind: crate::audit::Kind::StoreImport,
            payload,
            ..Default::default()
        })
        .await?;
    audit.close(Duration::from_secs(10)).await;
    Ok(seq)
}

/// What the import did, and where the old audit log stays.
fn print_imported(done: &Imported, data_dir: &Path, old_chain: &serde_json::Value) {
    say!(
        "imported {} proposals, {} kill switches, {} idempotency records, {} budgets, \
         {} ledger entries, {} job claims, {} tokens, {} grants, {} connections; {} already in \
         the database (left as they were)",
        done.proposals,
        done.kill_switches,
        done.idempotency_records,
        done.budgets,
        done.ledger_entries,
        done.job_claims,
        done.tokens,
        done.grants,
        done.connections,
        done.skipped
    );
    if done.unsealable > 0 {
        eprintln!(
            "warning: {} held calls' headers did not open under {}/seal.key: they were \
             imported without them and can be decided but not sent",
            done.unsealable,
            data_dir.display()
        );
    }
    say!(
        "the audit log stays in {} ({}): read it with `toolgate audit … --data-dir`",
        data_dir.display(),
        old_chain["verified"]
    );
}

/// The old audit chain checked, and where it ends: recorded with the import.
async fn old_chain(from: Arc<SledStore>) -> Result<serde_json::Value, String> {
    let store: Store = from;
    let audit = crate::audit::Audit::open(&store).map_err(|e| e.to_string())?;
    let (seq, hash) = audit.head().map_err(|e| e.to_string())?;
    let verified = match audit.verify() {
        Ok(n) => format!("{n} events verified"),
        Err((at, why)) => format!("DOES NOT VERIFY at event {at}: {why}"),
    };
    audit.close(Duration::from_secs(10)).await;
    Ok(serde_json::json!({"last_seq": seq, "last_hash": hash, "verified": verified}))
}
