-- `pgfleet import-legacy`: users and query history moved in from the
-- Node.js Dual Database Manager (schema `dual_db_manager`).
--
-- Imported history rows are audit records of their own kind, appended to the
-- chain after the head with their original times; the import itself is a
-- record too.
ALTER TABLE pgfleet.executions DROP CONSTRAINT executions_kind_check;
ALTER TABLE pgfleet.executions ADD CONSTRAINT executions_kind_check
    CHECK (kind IN ('QUERY', 'REPLICATION_RUN', 'MIGRATION_APPLY', 'MIGRATION_ROLLBACK', 'MIGRATION_REPAIR',
                    'REPLICA_PROMOTION', 'IMPORTED_QUERY', 'LEGACY_IMPORT'));

-- What was imported, by its key in the old schema, so that running the
-- import again imports nothing twice: also after audit retention deleted
-- imported records, or after an imported user was renamed or deleted.
-- Never updated; deleted only with the history store.
CREATE TABLE pgfleet.legacy_imports (
    -- 'users' (keyed by the old username, unique there and never renamed
    -- by the old system) or 'query_history' (keyed by its uuid, which is
    -- also the imported record's id).
    legacy_table text        NOT NULL,
    legacy_key   text        NOT NULL,
    -- The old row's id (users.id is a serial; query_history.id the uuid).
    legacy_id    text        NOT NULL,
    -- What it became: a user, or an execution record.
    user_id      uuid,
    execution_id uuid,
    -- The LEGACY_IMPORT record of the run that imported it.
    import_id    uuid        NOT NULL,
    imported_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (legacy_table, legacy_key),
    CONSTRAINT legacy_imports_table_check CHECK (legacy_table IN ('users', 'query_history')),
    CONSTRAINT legacy_imports_target_check
        CHECK ((legacy_table = 'users') = (user_id IS NOT NULL)
               AND (legacy_table = 'query_history') = (execution_id IS NOT NULL))
);
