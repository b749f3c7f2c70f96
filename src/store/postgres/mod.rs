//! The shared store on PostgreSQL (`--database-url`): the state records of the traits in
//! `mod.rs`, one table each, for replicas that act as one gateway. Every compare-and-set is one
//! statement or one transaction holding the row, so two replicas racing get one winner.
//!
//! Schema changes are versioned migrations (`MIGRATIONS`), applied in order under an advisory
//! lock, so replicas starting together apply each one once.

use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use serde::de::DeserializeOwned;
use tokio_postgres_rustls::MakeRustlsConnect;

use std::sync::Arc;

mod kv;
mod log;
mod schema;

use self::log::PgEventLog;
use self::schema::MIGRATIONS;
use crate::base::now_unix;
use crate::model::{Session, State};
use crate::store::Topic;
use crate::store::{
    Backend, BudgetStore, Committed, CounterStore, EventLog, GrantStore, IdemRecord,
    IdempotencyStore, JobClaim, KillStore, KillSwitch, KillTarget, LedgerStore, Proposal,
    ProposalStore, Sealer, SessionStore, StoreError, TokenStore,
};
use crate::store::{SinkCursorStore, VaultStore};

/// The database's clock in milliseconds: replicas compare heartbeats on one clock, never their
/// own.
const DB_NOW_MS: &str = "(extract(epoch from clock_timestamp()) * 1000)::bigint";

/// A replica that has not shown it is alive for this long is taken for dead: the commits it
/// left are turned into `outcome_unknown` by the others. Heartbeats come every half second.
const REPLICA_LEASE_MS: i64 = 5_000;

/// The advisory lock replicas take to migrate one at a time.
const MIGRATION_LOCK: i64 = 0x746f_6f6c_6761_7465;

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        match e.as_db_error() {
            Some(db) => StoreError::from_message(format!(
                "postgres: {} ({})",
                db.message(),
                db.code().code()
            )),
            None => StoreError::from_message(with_causes(&e)),
        }
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        StoreError::from_message(with_causes(&e))
    }
}

/// An error and its causes in one line: what went wrong when connecting (a certificate refused,
/// a connection refused) is in the source chain, not in the outer message.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut message = format!("postgres: {e}");
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !message.ends_with(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        cause = c.source();
    }
    message
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    Ok(serde_json::from_slice(bytes)?)
}

/// Seconds and milliseconds as PostgreSQL's bigint (saturating: no record lives past 2^63).
fn big(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The PostgreSQL store: a pool of connections to one database, and the audit log (its own
/// thread and connections, started on first use).
pub struct PgStore {
    pool: Pool,
    target: Target,
    log: std::sync::OnceLock<Arc<PgEventLog>>,
    sealer: Sealer,
    /// Set by the health watch: whether the database answered its last ping.
    healthy: Arc<std::sync::atomic::AtomicBool>,
    /// This process's name among the replicas (host, pid and a random part).
    replica: String,
}

impl PgStore {
    /// Connects (lazily: the pool opens connections as calls need them) to `url`
    /// (`postgres://USER[:PASS]@HOST:PORT/DB`). The password never appears in an error.
    /// `seal_dir` holds the key sealing stored requests; replicas must share it (their
    /// `--certs`), so that any replica opens what another sealed.
    pub fn connect(url: &str, seal_dir: &std::path::Path) -> Result<PgStore, StoreError> {
        let target = parse_url(url)?;
        std::fs::create_dir_all(seal_dir)
            .map_err(|e| StoreError::from_message(format!("{}: {e}", seal_dir.display())))?;
        Ok(PgStore {
            pool: pool(&target, 16)?,
            target,
            log: std::sync::OnceLock::new(),
            sealer: Sealer::open(seal_dir)?,
            healthy: Arc::new(std::sync::atomic::AtomicBool::new(true)),
            replica: replica_name(),
        })
    }

    /// Pings the database every half second (on the current runtime, for as long as it runs):
    /// while it does not answer within a second, `healthy` is false and calls are refused. The
    /// ping is this replica's heartbeat, which tells the others it is alive.
    pub fn watch_health(&self) {
        let (pool, healthy) = (self.pool.clone(), self.healthy.clone());
        let replica = self.replica.clone();
        let beat = format!(
            "INSERT INTO replicas (id, seen_ms) VALUES ($1, {DB_NOW_MS})
             ON CONFLICT (id) DO UPDATE SET seen_ms = EXCLUDED.seen_ms"
        );
        let forget = format!("DELETE FROM replicas WHERE seen_ms < {DB_NOW_MS} - 86400000");
        tokio::spawn(async move {
            let mut was = true;
            for tick in 0u64.. {
                let ping = async {
                    let client = pool.get().await?;
                    client.execute(&beat, &[&replica]).await?;
                    // Replicas gone for a day are forgotten (once a minute is plenty).
                    if tick % 120 == 0 {
                        client.execute(&forget, &[]).await?;
                    }
                    Ok::<_, StoreError>(())
                };
                let ok = matches!(
                    tokio::time::timeout(Duration::from_secs(1), ping).await,
                    Ok(Ok(()))
                );
                healthy.store(ok, std::sync::atomic::Ordering::Relaxed);
                if ok != was {
                    if ok {
                        tracing::warn!("the shared store (PostgreSQL) answers again");
                    } else {
                        tracing::error!("the shared store (PostgreSQL) does not answer: calls are refused until it does");
                    }
                    was = ok;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
    }

    /// Applies the migrations this version knows and the database has not seen; returns the
    /// versions applied now. Safe to run from several replicas at once.
    pub async fn migrate(&self) -> Result<Vec<i32>, StoreError> {
        migrate(&self.pool).await
    }

    /// [`PgStore::migrate`] for `toolgate db migrate`: the database at `url`, nothing else.
    pub async fn migrate_url(url: &str) -> Result<Vec<i32>, StoreError> {
        migrate(&pool(&parse_url(url)?, 1)?).await
    }

    async fn get<T: DeserializeOwned>(
        &self,
        sql: &str,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        let client = self.pool.get().await?;
        let statement = client.prepare_cached(sql).await?;
        match client.query_opt(&statement, &[&key]).await? {
            Some(row) => Ok(Some(decode(row.get::<_, &[u8]>(0))?)),
            None => Ok(None),
        }
    }

    async fn all<T: DeserializeOwned>(&self, sql: &str) -> Result<Vec<T>, StoreError> {
        self.records(sql, &[]).await
    }

    /// [`Self::all`] of the rows a key selects.
    async fn all_by<T: DeserializeOwned>(
        &self,
        sql: &str,
        key: &str,
    ) -> Result<Vec<T>, StoreError> {
        self.records(sql, &[&key]).await
    }

    /// The records (first column) of the rows a statement returns.
    async fn records<T: DeserializeOwned>(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<T>, StoreError> {
        let client = self.pool.get().await?;
        let statement = client.prepare_cached(sql).await?;
        let rows = client.query(&statement, params).await?;
        rows.iter().map(|r| decode(r.get::<_, &[u8]>(0))).collect()
    }

    async fn execute(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<u64, StoreError> {
        let client = self.pool.get().await?;
        // Prepared once per connection: a call is one round trip, not two.
        let statement = client.prepare_cached(sql).await?;
        Ok(client.execute(&statement, params).await?)
    }
}

/// Where the database is and how to reach it: the connection settings and the TLS connector.
/// The connector is always there; `sslmode` decides whether it is used (`disable`: never;
/// unset or `prefer`: when the server offers TLS; `require`, `verify-ca`, `verify-full`: always,
/// or no connection). Whenever TLS is used the server's certificate chain and host name are
/// verified, against the public web roots and the PEM file named by `sslrootcert`: toolgate
/// never accepts a certificate it cannot verify (libpq's `require` would).
#[derive(Clone)]
struct Target {
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
}

/// A replica's name: where it runs and which process it is, plus a random part so that a
/// restarted process with a reused pid is a new replica.
fn replica_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    let random: u32 = rand::random();
    format!("{host}/{}/{random:08x}", std::process::id())
}

/// `--database-url` read (`postgres://USER[:PASS]@HOST:PORT/DB[?sslmode=…&sslrootcert=FILE]`).
/// An error never repeats the URL, which may hold a password.
fn parse_url(url: &str) -> Result<Target, StoreError> {
    let bad = |e: &dyn std::fmt::Display| StoreError::from_message(format!("--database-url: {e}"));
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut root_file = None;
    let mut kept = form_urlencoded::Serializer::new(String::new());
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        match (&*key, &*value) {
            ("sslrootcert", file) => root_file = Some(file.to_string()),
            // tokio-postgres knows disable/prefer/require; we verify in every mode that encrypts.
            ("sslmode", "verify-ca" | "verify-full") => {
                kept.append_pair("sslmode", "require");
            }
            _ => {
                kept.append_pair(&key, &value);
            }
        }
    }
    let kept = kept.finish();
    let url = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{kept}")
    };
    let config: tokio_postgres::Config = url.parse().map_err(|e| bad(&e))?;
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(file) = root_file {
        use rustls::pki_types::{pem::PemObject, CertificateDer};
        let certs: Vec<_> = CertificateDer::pem_file_iter(&file)
            .and_then(|certs| certs.collect::<Result<_, _>>())
            .map_err(|e| bad(&format!("sslrootcert {file}: {e}")))?;
        if certs.is_empty() {
            return Err(bad(&format!("sslrootcert {file}: no certificate in it")));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| bad(&format!("sslrootcert {file}: {e}")))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(&e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Target {
        config,
        tls: MakeRustlsConnect::new(tls),
    })
}

/// A pool of up to `size` connections with bounded waits (a lost database is an error within
/// seconds, never a hang).
fn pool(target: &Target, size: usize) -> Result<Pool, StoreError> {
    let manager = Manager::from_config(
        target.config.clone(),
        target.tls.clone(),
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size)
        .wait_timeout(Some(Duration::from_secs(5)))
        .create_timeout(Some(Duration::from_secs(5)))
        .recycle_timeout(Some(Duration::from_secs(5)))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()
        .map_err(|e| StoreError::from_message(format!("postgres pool: {e}")))
}

#[async_trait]
impl Backend for PgStore {
    /// Every write is a committed transaction when it returns.
    async fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// The database's disk is the database's to watch: `--store-alarm` applies to a data dir.
    fn size_on_disk(&self) -> u64 {
        0
    }

    fn replica(&self) -> Option<&str> {
        Some(&self.replica)
    }

    async fn replicas_alive(&self) -> Result<Vec<String>, StoreError> {
        let client = self.pool.get().await?;
        let sql = format!("SELECT id FROM replicas WHERE seen_ms > {DB_NOW_MS} - $1");
        let rows = client.query(&sql, &[&REPLICA_LEASE_MS]).await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    fn sealer(&self) -> &Sealer {
        &self.sealer
    }

    async fn recent_events(
        &self,
        index: crate::store::Index,
        value: &str,
        since_ms: u64,
        most: usize,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        let client = self.pool.get().await?;
        let (tag, since, most) = (
            i16::from(index.tag()),
            i64::try_from(since_ms).unwrap_or(i64::MAX),
            i64::try_from(most).unwrap_or(i64::MAX),
        );
        let rows = client
            .query(
                "SELECT e.event FROM audit_index i JOIN audit_events e ON e.seq = i.seq
                 WHERE i.tag = $1 AND i.value = $2 AND e.unix_ms >= $3
                 ORDER BY i.seq DESC LIMIT $4",
                &[&tag, &value, &since, &most],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get::<_, Vec<u8>>(0)).collect())
    }

    fn shared(&self) -> bool {
        true
    }

    fn healthy(&self) -> bool {
        self.healthy.load(std::sync::atomic::Ordering::Relaxed)
    }

    async fn announce(&self, topic: &Topic) -> Result<(), StoreError> {
        self.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &topic.to_string()])
            .await?;
        Ok(())
    }

    /// LISTENs on a connection of its own, reconnecting a second after it is lost.
    fn subscribe(&self) -> Option<tokio::sync::mpsc::Receiver<Topic>> {
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        let target = self.target.clone();
        tokio::spawn(async move {
            while !tx.is_closed() {
                if let Err(e) = listen(&target, &tx).await {
                    tracing::debug!(error = %e, "the announcement listener lost its connection");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        Some(rx)
    }

    fn event_log(&self) -> Result<Arc<dyn EventLog>, StoreError> {
        if let Some(log) = self.log.get() {
            return Ok(log.clone());
        }
        let target = self.target.clone();
        let log = Arc::new(PgEventLog::start(move || pool(&target, 2))?);
        Ok(self.log.get_or_init(|| log).clone())
    }
}

/// Applies the migrations the database has not seen, in order, under an advisory lock.
async fn migrate(pool: &Pool) -> Result<Vec<i32>, StoreError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS toolgate_migrations (version integer PRIMARY KEY,
            applied_at timestamptz NOT NULL DEFAULT now())",
    )
    .await?;
    let done: Vec<i32> = tx
        .query("SELECT version FROM toolgate_migrations", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if let Some(newer) = done.iter().find(|v| **v > latest()) {
        return Err(StoreError::from_message(format!(
            "the database is at schema version {newer}, newer than this toolgate knows ({}); \
             run the newer toolgate",
            latest()
        )));
    }
    let mut applied = Vec::new();
    for (version, sql) in MIGRATIONS {
        if done.contains(version) {
            continue;
        }
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO toolgate_migrations (version) VALUES ($1)",
            &[version],
        )
        .await?;
        applied.push(*version);
    }
    tx.commit().await?;
    Ok(applied)
}

/// The channel replicas announce changes on.
const CHANNEL: &str = "toolgate";

/// Forwards what is announced on `CHANNEL` to `tx` until the connection or `tx` ends.
async fn listen(target: &Target, tx: &tokio::sync::mpsc::Sender<Topic>) -> Result<(), StoreError> {
    use futures_util::StreamExt;
    let (client, mut connection) = target.config.connect(target.tls.clone()).await?;
    let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
    let listen = client.batch_execute("LISTEN toolgate");
    tokio::pin!(listen);
    let mut listening = false;
    loop {
        tokio::select! {
            done = &mut listen, if !listening => {
                done?;
                listening = true;
            }
            message = messages.next() => match message {
                Some(Ok(tokio_postgres::AsyncMessage::Notification(n))) => {
                    let Some(topic) = Topic::parse(n.payload()) else { continue };
                    if tx.send(topic).await.is_err() {
                        return Ok(());
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
                None => return Ok(()),
            },
        }
    }
}

/// The newest schema version this toolgate knows.
fn latest() -> i32 {
    MIGRATIONS.last().map_or(0, |(v, _)| *v)
}
