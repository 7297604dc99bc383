-- Where each replication job's runs stand: read by GetStatus and the
-- scheduler. Which job is running right now is not stored: the job's
-- advisory lock on this database says so (pg_locks), and a lock, unlike a
-- flag, cannot outlive the server that held it.

CREATE TABLE pgfleet.replication_job_state (
    job_id               uuid        PRIMARY KEY
                                     REFERENCES pgfleet.replication_jobs (id) ON DELETE CASCADE,
    -- The audit record (pgfleet.executions.id) of the last run.
    last_run_id          uuid,
    last_run_started_at  timestamptz,
    -- NULL while that run is going (or if its server died during it).
    last_run_finished_at timestamptz,
    -- A ReplicationOutcome name without its prefix: RUNNING, SUCCEEDED…
    last_outcome         text,
    -- Why the last run could not start at all (source table unfit, source
    -- unreachable…), as recorded errors are: {"code", "message", "sqlstate"…}.
    last_error           jsonb,
    -- When the scheduler runs the job next; set under the job's lock when a
    -- scheduled run starts, so replicas agree on it.
    next_run_at          timestamptz
);

-- The last run of each (table, target), beside its watermark.
ALTER TABLE pgfleet.replication_watermarks
    ADD COLUMN last_run_id           uuid,
    ADD COLUMN last_run_started_at   timestamptz,
    ADD COLUMN last_run_finished_at  timestamptz,
    ADD COLUMN last_outcome          text,
    ADD COLUMN last_run_rows_written bigint NOT NULL DEFAULT 0,
    -- The last failure (kept until a later run of the pair succeeds).
    ADD COLUMN last_error            jsonb,
    ADD COLUMN last_error_at         timestamptz;
