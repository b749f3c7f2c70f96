//! The database schema: one migration per version, applied in order (see `migrate`).

/// The schema, one migration per version. A version, once released, never changes.
pub(super) const MIGRATIONS: &[(i32, &str)] = &[
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
    (
        7,
        "CREATE TABLE sink_cursors (sink text PRIMARY KEY, seq bigint NOT NULL);",
    ),
    (
        8,
        "CREATE TABLE vault (key text PRIMARY KEY, record bytea NOT NULL);",
    ),
];
