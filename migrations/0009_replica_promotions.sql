-- Replica promotions (FleetService.PromoteReplica) are audited like executions.
ALTER TABLE pgfleet.executions DROP CONSTRAINT executions_kind_check;
ALTER TABLE pgfleet.executions ADD CONSTRAINT executions_kind_check
    CHECK (kind IN ('QUERY', 'REPLICATION_RUN', 'MIGRATION_APPLY', 'MIGRATION_ROLLBACK', 'MIGRATION_REPAIR',
                    'REPLICA_PROMOTION'));
