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

use super::postgres_log::PgEventLog;
use super::{
    Backend, BudgetStore, Committed, CounterStore, EventLog, GrantStore, IdemRecord,
    IdempotencyStore, JobClaim, KillStore, KillSwitch, KillTarget, LedgerStore, Proposal,
    ProposalStore, Sealer, SessionStore, StoreError, TokenStore,
};
use crate::base::now_unix;
use crate::model::{Session, State};

/// The schema, one migration per version. A version, once released, never changes.
const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        "CREATE TABLE idempotency (id text PRIMARY KEY, request_id text NOT NULL,
        created_unix bigint NOT NULL, record bytea NOT NULL);
     CREATE TABLE budgets (key bytea PRIMARY KEY, total double precision NOT NULL);
     CREATE TABLE counters (key bytea PRIMARY KEY, tokens double precision NOT NULL,
        updated_ms bigint NOT NULL);
     CREATE TABLE kill_switches (target text PRIMARY KEY, record bytea NOT NULL);
     CREATE TABLE proposals (id text PRIMARY KEY, state text NOT NULL, finished_unix bigint,
        record bytea NOT NULL);
     CREATE TABLE proposal_by_call (identity text PRIMARY KEY,
        id text NOT NULL REFERENCES proposals (id) ON DELETE CASCADE);
     CREATE TABLE ledger (request_id text PRIMARY KEY, unix_ms bigint NOT NULL,
        record bytea NOT NULL);
     CREATE TABLE jobs (job text PRIMARY KEY, agent text NOT NULL, owner text NOT NULL,
        since_unix bigint NOT NULL);
     CREATE TABLE sessions (key text PRIMARY KEY, expires_unix bigint NOT NULL,
        record bytea NOT NULL);",
    ),
    (
        2,
        "CREATE TABLE audit_events (seq bigint PRIMARY KEY, unix_ms bigint NOT NULL,
            event bytea NOT NULL);
         CREATE INDEX audit_events_time ON audit_events (unix_ms);
         CREATE TABLE audit_index (tag smallint NOT NULL, value text NOT NULL,
            seq bigint NOT NULL, PRIMARY KEY (tag, value, seq));
         CREATE INDEX audit_index_seq ON audit_index (seq);
         CREATE TABLE audit_meta (key bytea PRIMARY KEY, value bytea NOT NULL);",
    ),
    (
        3,
        "CREATE TABLE replicas (id text PRIMARY KEY, seen_ms bigint NOT NULL);
         CREATE INDEX proposals_committing ON proposals (id) WHERE state = 'committing';",
    ),
    (
        4,
        "CREATE TABLE tokens (id text PRIMARY KEY, sha256 text NOT NULL UNIQUE,
            expires_unix bigint NOT NULL, record bytea NOT NULL);",
    ),
    (
        5,
        "CREATE TABLE grants (id text PRIMARY KEY, agent text NOT NULL,
            ended_unix bigint, record bytea NOT NULL);
         CREATE INDEX grants_open ON grants (agent) WHERE ended_unix IS NULL;",
    ),
    (
        6,
        "ALTER TABLE proposals ADD COLUMN version bigint NOT NULL DEFAULT 0;",
    ),
];

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

    fn shared(&self) -> bool {
        true
    }

    fn healthy(&self) -> bool {
        self.healthy.load(std::sync::atomic::Ordering::Relaxed)
    }

    async fn announce(&self, topic: &str) -> Result<(), StoreError> {
        self.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &topic])
            .await?;
        Ok(())
    }

    /// LISTENs on a connection of its own, reconnecting a second after it is lost.
    fn subscribe(&self) -> Option<tokio::sync::mpsc::Receiver<String>> {
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
async fn listen(target: &Target, tx: &tokio::sync::mpsc::Sender<String>) -> Result<(), StoreError> {
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
                    if tx.send(n.payload().to_string()).await.is_err() {
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

#[async_trait]
impl IdempotencyStore for PgStore {
    async fn idem_get(&self, id: &str) -> Result<Option<IdemRecord>, StoreError> {
        self.get("SELECT record FROM idempotency WHERE id = $1", id)
            .await
    }

    async fn idem_swap(
        &self,
        id: &str,
        expected_request: Option<&str>,
        new: &IdemRecord,
    ) -> Result<bool, StoreError> {
        let record = serde_json::to_vec(new)?;
        let created = big(new.created_unix);
        let n = match expected_request {
            // The unique key decides who sends.
            None => {
                self.execute(
                    "INSERT INTO idempotency (id, request_id, created_unix, record)
                     VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO NOTHING",
                    &[&id, &new.request_id, &created, &record],
                )
                .await?
            }
            Some(holder) => {
                self.execute(
                    "UPDATE idempotency SET request_id = $2, created_unix = $3, record = $4
                     WHERE id = $1 AND request_id = $5",
                    &[&id, &new.request_id, &created, &record, &holder],
                )
                .await?
            }
        };
        Ok(n == 1)
    }

    async fn idem_put(&self, id: &str, rec: &IdemRecord) -> Result<(), StoreError> {
        let record = serde_json::to_vec(rec)?;
        self.execute(
            "INSERT INTO idempotency (id, request_id, created_unix, record) VALUES ($1, $2, $3, $4)
             ON CONFLICT (id) DO UPDATE SET request_id = $2, created_unix = $3, record = $4",
            &[&id, &rec.request_id, &big(rec.created_unix), &record],
        )
        .await?;
        Ok(())
    }

    async fn idem_remove(&self, id: &str) -> Result<(), StoreError> {
        self.execute("DELETE FROM idempotency WHERE id = $1", &[&id])
            .await?;
        Ok(())
    }

    async fn idem_expire(&self, before_unix: u64) -> Result<usize, StoreError> {
        let n = self
            .execute(
                "DELETE FROM idempotency WHERE created_unix < $1",
                &[&big(before_unix)],
            )
            .await?;
        Ok(n as usize)
    }
}

#[async_trait]
impl BudgetStore for PgStore {
    async fn budget_add(
        &self,
        key: &str,
        amount: f64,
        max: f64,
    ) -> Result<Result<f64, f64>, StoreError> {
        // Keys may hold NUL separators: bytea, not text.
        let key = key.as_bytes();
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        tx.execute(
            "INSERT INTO budgets (key, total) VALUES ($1, 0) ON CONFLICT (key) DO NOTHING",
            &[&key],
        )
        .await?;
        let current: f64 = tx
            .query_one(
                "SELECT total FROM budgets WHERE key = $1 FOR UPDATE",
                &[&key],
            )
            .await?
            .get(0);
        if current + amount > max {
            return Ok(Err(current));
        }
        tx.execute(
            "UPDATE budgets SET total = $2 WHERE key = $1",
            &[&key, &(current + amount)],
        )
        .await?;
        tx.commit().await?;
        Ok(Ok(current + amount))
    }

    async fn budget_get(&self, key: &str) -> Result<f64, StoreError> {
        let key = key.as_bytes();
        let client = self.pool.get().await?;
        Ok(client
            .query_opt("SELECT total FROM budgets WHERE key = $1", &[&key])
            .await?
            .map_or(0.0, |r| r.get(0)))
    }
}

#[async_trait]
impl CounterStore for PgStore {
    /// A token bucket shared by every replica, on the database's clock.
    async fn take_token(
        &self,
        key: &str,
        capacity: u32,
        per: Duration,
    ) -> Result<Result<(), u64>, StoreError> {
        let capacity = f64::from(capacity);
        let per_ms = capacity / (per.as_secs_f64() * 1000.0).max(f64::MIN_POSITIVE);
        let key = key.as_bytes();
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        tx.execute(
            "INSERT INTO counters (key, tokens, updated_ms)
             VALUES ($1, $2, (extract(epoch from clock_timestamp()) * 1000)::bigint)
             ON CONFLICT (key) DO NOTHING",
            &[&key, &capacity],
        )
        .await?;
        let row = tx
            .query_one(
                "SELECT tokens, updated_ms, (extract(epoch from clock_timestamp()) * 1000)::bigint
                 FROM counters WHERE key = $1 FOR UPDATE",
                &[&key],
            )
            .await?;
        let (tokens, updated, now): (f64, i64, i64) = (row.get(0), row.get(1), row.get(2));
        let elapsed = (now - updated).max(0) as f64;
        let tokens = (tokens + elapsed * per_ms).min(capacity);
        let (left, answer) = if tokens >= 1.0 {
            (tokens - 1.0, Ok(()))
        } else {
            let wait_s = (1.0 - tokens) / per_ms / 1000.0;
            (tokens, Err(wait_s.ceil().max(1.0) as u64))
        };
        tx.execute(
            "UPDATE counters SET tokens = $2, updated_ms = $3 WHERE key = $1",
            &[&key, &left, &now],
        )
        .await?;
        tx.commit().await?;
        Ok(answer)
    }
}

#[async_trait]
impl KillStore for PgStore {
    async fn kill_list(&self) -> Result<Vec<(KillTarget, KillSwitch)>, StoreError> {
        let client = self.pool.get().await?;
        let rows = client
            .query("SELECT target, record FROM kill_switches", &[])
            .await?;
        rows.iter()
            .map(|r| {
                let key: &str = r.get(0);
                let target = KillTarget::parse(key).ok_or_else(|| {
                    StoreError::from_message(format!("corrupt record: kill switch key {key:?}"))
                })?;
                Ok((target, decode(r.get::<_, &[u8]>(1))?))
            })
            .collect()
    }

    async fn kill_set(
        &self,
        target: &KillTarget,
        value: Option<&KillSwitch>,
    ) -> Result<(), StoreError> {
        let key = target.to_string();
        match value {
            Some(v) => {
                self.execute(
                    "INSERT INTO kill_switches (target, record) VALUES ($1, $2)
                     ON CONFLICT (target) DO UPDATE SET record = $2",
                    &[&key, &serde_json::to_vec(v)?],
                )
                .await?
            }
            None => {
                self.execute("DELETE FROM kill_switches WHERE target = $1", &[&key])
                    .await?
            }
        };
        Ok(())
    }
}

/// A proposal's columns besides its record: its state and when it finished (for expiry).
fn proposal_columns(p: &Proposal) -> (&'static str, Option<i64>) {
    (p.state.as_str(), p.finished_unix().map(big))
}

/// Inserts a proposal's row as it is (`over`: in place of one with the same id).
async fn insert_proposal(
    tx: &deadpool_postgres::Transaction<'_>,
    p: &Proposal,
    over: bool,
) -> Result<(), StoreError> {
    let (state, finished) = proposal_columns(p);
    let sql = match over {
        false => {
            "INSERT INTO proposals (id, state, finished_unix, record, version)
             VALUES ($1, $2, $3, $4, $5)"
        }
        true => {
            "INSERT INTO proposals (id, state, finished_unix, record, version)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (id) DO UPDATE SET state = $2, finished_unix = $3, record = $4,
                version = $5"
        }
    };
    let record = serde_json::to_vec(p)?;
    tx.execute(sql, &[&p.id, &state, &finished, &record, &big(p.version)])
        .await?;
    Ok(())
}

#[async_trait]
impl ProposalStore for PgStore {
    async fn proposal_create(
        &self,
        p: &Proposal,
        replacing: Option<&str>,
    ) -> Result<bool, StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        insert_proposal(&tx, p, false).await?;
        // The index row is the compare-and-set: a concurrent insert or update of the same
        // identity waits for this one and then finds its condition false.
        let claimed = match replacing {
            None => {
                tx.execute(
                    "INSERT INTO proposal_by_call (identity, id) VALUES ($1, $2)
                     ON CONFLICT (identity) DO NOTHING",
                    &[&p.identity, &p.id],
                )
                .await?
            }
            Some(old) => {
                tx.execute(
                    "UPDATE proposal_by_call SET id = $2 WHERE identity = $1 AND id = $3",
                    &[&p.identity, &p.id, &old],
                )
                .await?
            }
        };
        if claimed != 1 {
            tx.rollback().await?;
            return Ok(false);
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn proposal_swap(&self, seen: &Proposal, next: &Proposal) -> Result<bool, StoreError> {
        let mut next = next.clone();
        next.version = seen.version + 1;
        let (state, finished) = proposal_columns(&next);
        // State and version checked in the statement that writes: one atomic step.
        let n = self
            .execute(
                "UPDATE proposals SET state = $2, finished_unix = $3, record = $4, version = $5
                 WHERE id = $1 AND state = $6 AND version = $7",
                &[
                    &seen.id,
                    &state,
                    &finished,
                    &serde_json::to_vec(&next)?,
                    &big(next.version),
                    &seen.state.as_str(),
                    &big(seen.version),
                ],
            )
            .await?;
        Ok(n == 1)
    }

    async fn proposal_restore(&self, p: &Proposal) -> Result<(), StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        insert_proposal(&tx, p, true).await?;
        tx.execute(
            "INSERT INTO proposal_by_call (identity, id) VALUES ($1, $2)
             ON CONFLICT (identity) DO UPDATE SET id = $2",
            &[&p.identity, &p.id],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn proposal_get(&self, id: &str) -> Result<Option<Proposal>, StoreError> {
        self.get("SELECT record FROM proposals WHERE id = $1", id)
            .await
    }

    async fn proposal_for(&self, identity: &str) -> Result<Option<Proposal>, StoreError> {
        self.get(
            "SELECT p.record FROM proposal_by_call c JOIN proposals p ON p.id = c.id
             WHERE c.identity = $1",
            identity,
        )
        .await
    }

    async fn proposal_list(&self) -> Result<Vec<Proposal>, StoreError> {
        self.all("SELECT record FROM proposals ORDER BY id").await
    }

    async fn proposal_in_state(&self, state: State) -> Result<Vec<Proposal>, StoreError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT record FROM proposals WHERE state = $1 ORDER BY id",
                &[&state.as_str()],
            )
            .await?;
        rows.iter().map(|r| decode(r.get::<_, &[u8]>(0))).collect()
    }

    async fn proposal_expire(&self, before_unix: u64) -> Result<usize, StoreError> {
        // The index rows go with their proposal (ON DELETE CASCADE).
        let n = self
            .execute(
                "DELETE FROM proposals WHERE finished_unix < $1",
                &[&big(before_unix)],
            )
            .await?;
        Ok(n as usize)
    }
}

#[async_trait]
impl LedgerStore for PgStore {
    async fn ledger_put(&self, c: &Committed) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO ledger (request_id, unix_ms, record) VALUES ($1, $2, $3)
             ON CONFLICT (request_id) DO UPDATE SET unix_ms = $2, record = $3",
            &[&c.request_id, &big(c.unix_ms), &serde_json::to_vec(c)?],
        )
        .await?;
        Ok(())
    }

    async fn ledger_get(&self, request_id: &str) -> Result<Option<Committed>, StoreError> {
        self.get(
            "SELECT record FROM ledger WHERE request_id = $1",
            request_id,
        )
        .await
    }

    async fn ledger_all(&self) -> Result<Vec<Committed>, StoreError> {
        self.all("SELECT record FROM ledger ORDER BY unix_ms").await
    }

    async fn ledger_expire(&self, before_ms: u64) -> Result<usize, StoreError> {
        let n = self
            .execute("DELETE FROM ledger WHERE unix_ms < $1", &[&big(before_ms)])
            .await?;
        Ok(n as usize)
    }

    async fn job_claim(
        &self,
        job: &str,
        agent: &str,
        owner: &str,
    ) -> Result<Option<String>, StoreError> {
        let client = self.pool.get().await?;
        let claimed = client
            .query_opt(
                "INSERT INTO jobs (job, agent, owner, since_unix) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (job) DO NOTHING RETURNING agent",
                &[&job, &agent, &owner, &big(now_unix())],
            )
            .await?;
        if claimed.is_some() {
            return Ok(None);
        }
        let Some(row) = client
            .query_opt("SELECT agent, owner FROM jobs WHERE job = $1", &[&job])
            .await?
        else {
            return Ok(None);
        };
        let held = JobClaim {
            agent: row.get(0),
            owner: row.get(1),
            since_unix: 0,
        };
        Ok(held.holder_against(agent, owner))
    }

    async fn job_expire(&self, before_unix: u64) -> Result<usize, StoreError> {
        let n = self
            .execute(
                "DELETE FROM jobs WHERE since_unix < $1",
                &[&big(before_unix)],
            )
            .await?;
        Ok(n as usize)
    }
}

#[async_trait]
impl TokenStore for PgStore {
    async fn token_put(&self, t: &super::AgentToken) -> Result<(), StoreError> {
        let record = serde_json::to_vec(t)?;
        self.execute(
            "INSERT INTO tokens (id, sha256, expires_unix, record) VALUES ($1, $2, $3, $4)
             ON CONFLICT (id) DO UPDATE SET record = $4",
            &[&t.id, &t.sha256, &big(t.expires_unix), &record],
        )
        .await?;
        Ok(())
    }

    async fn token_get(&self, id: &str) -> Result<Option<super::AgentToken>, StoreError> {
        self.get("SELECT record FROM tokens WHERE id = $1", id)
            .await
    }

    async fn token_by_hash(&self, sha256: &str) -> Result<Option<super::AgentToken>, StoreError> {
        self.get("SELECT record FROM tokens WHERE sha256 = $1", sha256)
            .await
    }

    async fn token_list(&self, now_unix: u64) -> Result<Vec<super::AgentToken>, StoreError> {
        let mut all: Vec<super::AgentToken> =
            self.all("SELECT record FROM tokens ORDER BY id").await?;
        all.retain(|t| t.expires_unix > now_unix);
        Ok(all)
    }
}

#[async_trait]
impl GrantStore for PgStore {
    async fn grant_put(&self, g: &super::Grant) -> Result<(), StoreError> {
        // Grants are rare: drop those that ended long ago on the way.
        let cut = now_unix().saturating_sub(super::ENDED_GRANT_KEEP_SECS);
        self.execute("DELETE FROM grants WHERE ended_unix < $1", &[&big(cut)])
            .await?;
        self.execute(
            "INSERT INTO grants (id, agent, record) VALUES ($1, $2, $3)",
            &[&g.id, &g.agent, &serde_json::to_vec(g)?],
        )
        .await?;
        Ok(())
    }

    async fn grant_get(&self, id: &str) -> Result<Option<super::Grant>, StoreError> {
        self.get("SELECT record FROM grants WHERE id = $1", id)
            .await
    }

    async fn grant_open(&self, agent: Option<&str>) -> Result<Vec<super::Grant>, StoreError> {
        match agent {
            Some(a) => {
                self.all_by(
                    "SELECT record FROM grants WHERE agent = $1 AND ended_unix IS NULL",
                    a,
                )
                .await
            }
            None => {
                self.all("SELECT record FROM grants WHERE ended_unix IS NULL ORDER BY id")
                    .await
            }
        }
    }

    async fn grant_end(
        &self,
        id: &str,
        end: super::GrantEnd,
    ) -> Result<Option<super::Grant>, StoreError> {
        let Some(mut g) = self.grant_get(id).await? else {
            return Ok(None);
        };
        if g.ended.is_some() {
            return Ok(None);
        }
        let at = big(end.at_unix);
        g.ended = Some(end);
        // Only the first to end it changes the row.
        let n = self
            .execute(
                "UPDATE grants SET ended_unix = $2, record = $3 WHERE id = $1 AND ended_unix IS NULL",
                &[&id, &at, &serde_json::to_vec(&g)?],
            )
            .await?;
        Ok((n == 1).then_some(g))
    }
}

#[async_trait]
impl SessionStore for PgStore {
    async fn session_put(&self, key: &str, s: &Session) -> Result<(), StoreError> {
        // Sign-ins are rare: drop the expired sessions on the way.
        self.execute(
            "DELETE FROM sessions WHERE expires_unix <= $1",
            &[&big(now_unix())],
        )
        .await?;
        self.execute(
            "INSERT INTO sessions (key, expires_unix, record) VALUES ($1, $2, $3)
             ON CONFLICT (key) DO UPDATE SET expires_unix = $2, record = $3",
            &[&key, &big(s.expires_unix), &serde_json::to_vec(s)?],
        )
        .await?;
        Ok(())
    }

    async fn session_get(&self, key: &str) -> Result<Option<Session>, StoreError> {
        self.get("SELECT record FROM sessions WHERE key = $1", key)
            .await
    }

    async fn session_remove(&self, key: &str) -> Result<(), StoreError> {
        self.execute("DELETE FROM sessions WHERE key = $1", &[&key])
            .await?;
        Ok(())
    }
}
