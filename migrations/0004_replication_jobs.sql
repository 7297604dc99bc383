-- Replication jobs and how far each copy got. Jobs are rows here, not
-- configuration, so they are created over the API, survive restarts and are
-- seen by every server replica sharing this history store.

CREATE TABLE pgfleet.replication_jobs (
    id          uuid        PRIMARY KEY,
    -- Unique and the listing order (keyset pages on name).
    name        text        NOT NULL,
    -- {"cloud": …, "database": …}: configured names, never host names, so a
    -- job follows its databases when their hosts move.
    source      jsonb       NOT NULL,
    -- [{"cloud": …, "database": …}, …], in the order the job was given.
    targets     jsonb       NOT NULL,
    -- Schema-qualified, as PostgreSQL renders them (format('%I.%I')) on the
    -- source when the job was checked, so one spelling names one table.
    tables      text[]      NOT NULL,
    -- A column name as in the catalog; NULL when the job has none (full
    -- refresh only).
    sync_key    text,
    -- NULL: on demand only.
    interval_ms bigint,
    enabled     boolean     NOT NULL,
    mode        text        NOT NULL,
    -- Stored resolved (the API's 0 becomes the default), so a run never
    -- depends on what the default was when the job was created.
    batch_size  integer     NOT NULL,
    -- NULL: no overlap window.
    overlap_ms  bigint,
    -- Bumped by every update: updates are checked against the catalogs
    -- outside any transaction, then written only if nobody changed the job
    -- in between (optimistic concurrency across replicas).
    revision    bigint      NOT NULL DEFAULT 1,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    created_by  text        NOT NULL,
    CONSTRAINT replication_jobs_name_key UNIQUE (name),
    CONSTRAINT replication_jobs_mode_check CHECK (mode IN ('INCREMENTAL', 'FULL_REFRESH')),
    -- Incremental runs page on the sync key; without one they cannot run.
    CONSTRAINT replication_jobs_incremental_key
        CHECK (mode <> 'INCREMENTAL' OR sync_key IS NOT NULL),
    CONSTRAINT replication_jobs_source_object CHECK (jsonb_typeof(source) = 'object'),
    CONSTRAINT replication_jobs_targets_array
        CHECK (jsonb_typeof(targets) = 'array' AND jsonb_array_length(targets) > 0),
    CONSTRAINT replication_jobs_tables_present CHECK (cardinality(tables) > 0),
    CONSTRAINT replication_jobs_batch_size_check CHECK (batch_size > 0),
    CONSTRAINT replication_jobs_interval_check CHECK (interval_ms IS NULL OR interval_ms > 0),
    CONSTRAINT replication_jobs_overlap_check CHECK (overlap_ms IS NULL OR overlap_ms >= 0)
);

-- How far each table has been copied to each target. A row is written only
-- after the target committed the batch it describes: a crash between that
-- commit and this write re-copies one batch on the next run, which the
-- upserts make harmless, and never skips rows. Deleting a job deletes its
-- watermarks (its copied rows stay on the targets).
CREATE TABLE pgfleet.replication_watermarks (
    job_id        uuid        NOT NULL REFERENCES pgfleet.replication_jobs (id) ON DELETE CASCADE,
    -- As in replication_jobs.tables.
    table_name    text        NOT NULL,
    cloud         text        NOT NULL,
    database      text        NOT NULL,
    -- Text of the last copied sync key value (PostgreSQL's own rendering,
    -- cast back with the column's type); NULL before the first batch.
    watermark     text,
    -- Primary key values (text, in key column order) of the last copied row
    -- at the watermark: a run that stopped between rows with the same sync
    -- key resumes after that row, on (sync key, primary key).
    last_key      text[],
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, table_name, cloud, database)
);
