-- The audit trail: one row per execution, written before any target is
-- touched (status RUNNING) and closed after, plus an append-only hash chain
-- over both moments. The server is the only writer; nothing here is ever
-- updated except a RUNNING row being closed once.

CREATE TABLE pgfleet.executions (
    id                  uuid        PRIMARY KEY,
    kind                text        NOT NULL,
    -- Who: exactly one of user / api key / system, and the role acted with.
    actor_kind          text        NOT NULL,
    actor_user_id       uuid,
    actor_username      text,
    actor_api_key_id    uuid,
    actor_api_key_name  text,
    actor_system        text,
    actor_role          text        NOT NULL,
    client_address      text        NOT NULL DEFAULT '',
    request_id          text        NOT NULL DEFAULT '',
    query               text        NOT NULL,
    -- The text may carry credentials, so `query` holds it with every
    -- literal replaced by $n (pg_query's normalize).
    query_redacted      boolean     NOT NULL DEFAULT false,
    fingerprint         text        NOT NULL DEFAULT '',
    statement_classes   text[]      NOT NULL DEFAULT '{}',
    database            text        NOT NULL DEFAULT '',
    pg_schema           text        NOT NULL DEFAULT '',
    scope               text        NOT NULL,
    -- [{"cloud": …, "database": …}, …]
    targets             jsonb       NOT NULL,
    read_only           boolean     NOT NULL,
    confirmed_dangerous boolean     NOT NULL,
    -- [{"code": …, "reason": …, "statement_index": …}, …]
    findings            jsonb       NOT NULL DEFAULT '[]',
    replication_job_id  uuid,
    -- The server instance that runs it (see audit_writers).
    writer_id           uuid        NOT NULL,
    started_at          timestamptz NOT NULL,
    -- Set when the row is closed.
    finished_at         timestamptz,
    status              text        NOT NULL,
    success             boolean     NOT NULL DEFAULT false,
    -- One object per target: success, command tags, rows affected,
    -- duration, error with SQLSTATE, outcome_unknown. Never result rows.
    outcomes            jsonb       NOT NULL DEFAULT '[]',
    CONSTRAINT executions_kind_check CHECK (kind IN ('QUERY', 'REPLICATION_RUN')),
    CONSTRAINT executions_actor_check CHECK (actor_kind IN ('user', 'api_key', 'system')),
    CONSTRAINT executions_role_check CHECK (actor_role IN ('MASTER', 'USER', 'READER')),
    CONSTRAINT executions_scope_check CHECK (scope IN ('ALL_CLOUDS', 'CLOUD', 'TARGETS', 'REPLICATION')),
    CONSTRAINT executions_status_check
        CHECK (status IN ('RUNNING', 'SUCCEEDED', 'FAILED', 'PARTIAL', 'INTERRUPTED', 'REFUSED')),
    CONSTRAINT executions_closed_check CHECK ((status = 'RUNNING') = (finished_at IS NULL))
);

-- Newest first with keyset pagination, overall and per filter.
CREATE INDEX executions_started ON pgfleet.executions (started_at DESC, id DESC);
CREATE INDEX executions_user ON pgfleet.executions (actor_user_id, started_at DESC);
CREATE INDEX executions_username ON pgfleet.executions (actor_username, started_at DESC);
CREATE INDEX executions_api_key ON pgfleet.executions (actor_api_key_id, started_at DESC);
CREATE INDEX executions_database ON pgfleet.executions (database, started_at DESC);
CREATE INDEX executions_fingerprint ON pgfleet.executions (fingerprint);
CREATE INDEX executions_classes ON pgfleet.executions USING gin (statement_classes);
CREATE INDEX executions_targets ON pgfleet.executions USING gin (targets jsonb_path_ops);
CREATE INDEX executions_outcomes ON pgfleet.executions USING gin (outcomes jsonb_path_ops);
CREATE INDEX executions_running ON pgfleet.executions (writer_id) WHERE status = 'RUNNING';

-- The chain: each execution is linked twice, when opened (before any target
-- runs) and when closed. `hash` = SHA-256 over the previous hash, the
-- sequence, the link kind and the record's canonical content at that
-- moment, recomputed from the executions row by VerifyChain.
CREATE TABLE pgfleet.audit_chain (
    sequence     bigint      PRIMARY KEY,
    execution_id uuid        NOT NULL,
    link         text        NOT NULL,
    prev_hash    text        NOT NULL,
    hash         text        NOT NULL,
    appended_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT audit_chain_link_check CHECK (link IN ('opened', 'closed')),
    CONSTRAINT audit_chain_once UNIQUE (execution_id, link)
);

-- One row: the chain's head (locked by every append, which makes sequence
-- numbers gapless and in commit order across server replicas) and the
-- anchor retention leaves when it deletes the oldest records.
CREATE TABLE pgfleet.audit_chain_head (
    singleton         boolean     PRIMARY KEY DEFAULT true,
    sequence          bigint      NOT NULL,
    hash              text        NOT NULL,
    anchor_sequence   bigint      NOT NULL DEFAULT 0,
    anchor_hash       text        NOT NULL DEFAULT '',
    anchor_updated_at timestamptz,
    CONSTRAINT audit_chain_head_singleton CHECK (singleton)
);
INSERT INTO pgfleet.audit_chain_head (sequence, hash) VALUES (0, '');

-- Live server instances; a lease not renewed in time means the server died
-- and its RUNNING records are closed as INTERRUPTED by another one.
CREATE TABLE pgfleet.audit_writers (
    id           uuid        PRIMARY KEY,
    hostname     text        NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now()
);
