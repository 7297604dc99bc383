-- Fleet schema migrations (MigrationService).
--
-- A database without a migrations directory in the configuration gets its
-- set uploaded through the API: the files are kept here, one row per fleet
-- database, replaced whole by the next upload. The set was checked
-- (names, versions, SQL) before it was stored.

CREATE TABLE pgfleet.migration_sets (
    database    text        PRIMARY KEY,
    -- [{"name": "0001_init.sql", "sql": "…"}, …], in file name order.
    files       jsonb       NOT NULL,
    uploaded_at timestamptz NOT NULL DEFAULT now(),
    -- Who uploaded it (`user:alice`, `api_key:deploy`).
    uploaded_by text        NOT NULL
);

-- Applies, rollbacks and checksum repairs are audited like executions.
ALTER TABLE pgfleet.executions DROP CONSTRAINT executions_kind_check;
ALTER TABLE pgfleet.executions ADD CONSTRAINT executions_kind_check
    CHECK (kind IN ('QUERY', 'REPLICATION_RUN', 'MIGRATION_APPLY', 'MIGRATION_ROLLBACK', 'MIGRATION_REPAIR'));
