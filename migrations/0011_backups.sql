-- Backups (BackupService): policies, and one row per backup of one target.
--
-- The backup objects and their JSON manifests live in the object store; these
-- rows are the catalog pgfleet lists, pages and filters, and what the
-- scheduler and the health view read. A backup is listed only once its
-- object and manifest are stored (status SUCCEEDED); a failed or interrupted
-- one stays as FAILED (for health), with no object left behind.

ALTER TABLE pgfleet.executions DROP CONSTRAINT executions_kind_check;
ALTER TABLE pgfleet.executions ADD CONSTRAINT executions_kind_check
    CHECK (kind IN ('QUERY', 'REPLICATION_RUN', 'MIGRATION_APPLY', 'MIGRATION_ROLLBACK', 'MIGRATION_REPAIR',
                    'REPLICA_PROMOTION', 'IMPORTED_QUERY', 'LEGACY_IMPORT',
                    'BACKUP_RUN', 'BACKUP_RESTORE', 'BACKUP_POLICY', 'BACKUP_DELETE'));

CREATE TABLE pgfleet.backup_policies (
    id          uuid        PRIMARY KEY,
    name        text        NOT NULL UNIQUE,
    -- The policy as pgfleet_backup::PolicySpec (targets, schedule, format,
    -- compression, retention, max_age, enabled); validated before it is written.
    spec        jsonb       NOT NULL,
    -- Bumped by every update: an update names the revision it read.
    revision    bigint      NOT NULL DEFAULT 1,
    created_by  text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    -- When the scheduler runs it next (NULL: not scheduled); moved under the
    -- policy's advisory lock before each scheduled run.
    next_run_at timestamptz
);

CREATE TABLE pgfleet.backups (
    id              uuid        PRIMARY KEY,
    -- NULL for an on-demand backup of explicit targets, or once the policy is deleted.
    policy_id       uuid        REFERENCES pgfleet.backup_policies (id) ON DELETE SET NULL,
    policy_name     text        NOT NULL DEFAULT '',
    cloud           text        NOT NULL,
    database        text        NOT NULL,
    status          text        NOT NULL CHECK (status IN ('RUNNING', 'SUCCEEDED', 'FAILED')),
    format          text        NOT NULL CHECK (format IN ('CUSTOM', 'PLAIN')),
    encrypted       boolean     NOT NULL,
    object_key      text        NOT NULL,
    manifest_key    text        NOT NULL,
    started_at      timestamptz NOT NULL,
    finished_at     timestamptz,
    raw_bytes       bigint      NOT NULL DEFAULT 0,
    compressed_bytes bigint     NOT NULL DEFAULT 0,
    stored_bytes    bigint      NOT NULL DEFAULT 0,
    stored_sha256   text        NOT NULL DEFAULT '',
    raw_sha256      text        NOT NULL DEFAULT '',
    server_version  text        NOT NULL DEFAULT '',
    pg_dump_version text        NOT NULL DEFAULT '',
    -- The BACKUP_RUN audit record the backup was made under.
    execution_id    uuid        NOT NULL,
    -- Why it failed: the step, and the last lines of pg_dump's stderr (the password
    -- reaches pg_dump through its environment only, so it never prints it).
    error           text        NOT NULL DEFAULT ''
);

CREATE INDEX backups_target_started ON pgfleet.backups (cloud, database, started_at DESC);
CREATE INDEX backups_policy_started ON pgfleet.backups (policy_id, started_at DESC);
