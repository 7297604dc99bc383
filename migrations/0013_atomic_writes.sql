-- Atomic (two-phase commit) fan-out writes (QueryService.Execute with
-- COMMIT_MODE_ATOMIC, docs/ATOMIC.md).
--
-- atomic_decisions: the one durable decision per execution. The
-- coordinator inserts COMMIT only after every target prepared; recovery
-- inserts ABORT for a prepared transaction whose execution died undecided.
-- The primary key makes the first insert win: a coordinator that finds
-- ABORT already there rolls back. No foreign key to pgfleet.executions:
-- audit retention may delete an old record, a decision must outlive it
-- while a target still holds the prepared transaction.
CREATE TABLE pgfleet.atomic_decisions (
    execution_id uuid PRIMARY KEY,
    decision     text NOT NULL CHECK (decision IN ('COMMIT', 'ABORT')),
    decided_by   text NOT NULL CHECK (decided_by IN ('coordinator', 'recovery')),
    decided_at   timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- atomic_branches: each target's prepared transaction and where it ended,
-- written by the coordinator when it is done and by recovery as it finishes
-- in-doubt ones; GetExecution reads the phase from here.
CREATE TABLE pgfleet.atomic_branches (
    execution_id uuid NOT NULL,
    target_index integer NOT NULL CHECK (target_index >= 0),
    cloud        text NOT NULL,
    database     text NOT NULL,
    gid          text NOT NULL,
    phase        text NOT NULL
                 CHECK (phase IN ('NOT_PREPARED', 'ROLLED_BACK', 'COMMITTED', 'IN_DOUBT')),
    updated_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (execution_id, target_index)
);

CREATE INDEX atomic_branches_in_doubt ON pgfleet.atomic_branches (updated_at)
    WHERE phase = 'IN_DOUBT';
