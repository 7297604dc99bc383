//! The one table saying who may call which RPC.
//!
//! Fail closed: a `pgfleet.*` method missing from [`RPC_ACCESS`] is refused
//! for everyone, so a new RPC is unreachable until someone decides its role
//! here (a test walks the descriptor set to make sure none is missing).

use pgfleet_engine::identity::Role;

/// What a method requires of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone, without credentials (health, reflection, Login).
    Public,
    /// A session or API key whose role is at least this one.
    AtLeast(Role),
}

/// Services outside `pgfleet.*` that stay open: load balancers probe health
/// and `grpcurl` needs reflection before anyone has logged in.
const PUBLIC_SERVICES: &[&str] = &[
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
];

/// Every `pgfleet.v1` RPC and its required access, by gRPC path.
pub const RPC_ACCESS: &[(&str, Access)] = {
    use Access::{AtLeast, Public};
    use Role::{Master, Reader};
    &[
        ("/pgfleet.v1.AuthService/Login", Public),
        ("/pgfleet.v1.AuthService/Logout", AtLeast(Reader)),
        ("/pgfleet.v1.AuthService/Me", AtLeast(Reader)),
        ("/pgfleet.v1.AuthService/ChangePassword", AtLeast(Reader)),
        ("/pgfleet.v1.AuthService/CreateUser", AtLeast(Master)),
        ("/pgfleet.v1.AuthService/ListUsers", AtLeast(Master)),
        ("/pgfleet.v1.AuthService/ActivateUsers", AtLeast(Master)),
        ("/pgfleet.v1.AuthService/DeactivateUsers", AtLeast(Master)),
        ("/pgfleet.v1.AuthService/ChangeRole", AtLeast(Master)),
        ("/pgfleet.v1.AuthService/ResetPassword", AtLeast(Master)),
        ("/pgfleet.v1.AuthService/CreateApiKey", AtLeast(Master)),
        ("/pgfleet.v1.AuthService/ListApiKeys", AtLeast(Master)),
        ("/pgfleet.v1.AuthService/RevokeApiKey", AtLeast(Master)),
        // Per-statement rules (READER reads only, dangerous statements need
        // MASTER) are the query service's, on top of this.
        ("/pgfleet.v1.QueryService/Execute", AtLeast(Reader)),
        ("/pgfleet.v1.QueryService/ExecuteStream", AtLeast(Reader)),
        ("/pgfleet.v1.QueryService/Validate", AtLeast(Reader)),
        ("/pgfleet.v1.QueryService/CompareTables", AtLeast(Reader)),
        // USER and READER see only their own executions (history service).
        ("/pgfleet.v1.HistoryService/ListExecutions", AtLeast(Reader)),
        ("/pgfleet.v1.HistoryService/GetExecution", AtLeast(Reader)),
        ("/pgfleet.v1.HistoryService/ExportExecutions", AtLeast(Reader)),
        ("/pgfleet.v1.HistoryService/VerifyChain", AtLeast(Master)),
        (
            "/pgfleet.v1.HistoryService/ExportChainCheckpoint",
            AtLeast(Master),
        ),
        ("/pgfleet.v1.ReplicationService/CreateJob", AtLeast(Master)),
        ("/pgfleet.v1.ReplicationService/UpdateJob", AtLeast(Master)),
        ("/pgfleet.v1.ReplicationService/DeleteJob", AtLeast(Master)),
        ("/pgfleet.v1.ReplicationService/GetJob", AtLeast(Reader)),
        ("/pgfleet.v1.ReplicationService/ListJobs", AtLeast(Reader)),
        ("/pgfleet.v1.ReplicationService/RunJob", AtLeast(Master)),
        ("/pgfleet.v1.ReplicationService/ReplicateTable", AtLeast(Master)),
        ("/pgfleet.v1.ReplicationService/GetStatus", AtLeast(Reader)),
        // Schema changes are MASTER's; everyone may see where the fleet stands.
        ("/pgfleet.v1.MigrationService/GetMigrationStatus", AtLeast(Reader)),
        ("/pgfleet.v1.MigrationService/PlanMigrations", AtLeast(Reader)),
        ("/pgfleet.v1.MigrationService/ApplyMigrations", AtLeast(Master)),
        ("/pgfleet.v1.MigrationService/RollbackMigration", AtLeast(Master)),
        ("/pgfleet.v1.MigrationService/RepairChecksum", AtLeast(Master)),
        ("/pgfleet.v1.MigrationService/CheckSchemaDrift", AtLeast(Reader)),
        ("/pgfleet.v1.MigrationService/UploadMigrationSet", AtLeast(Master)),
        ("/pgfleet.v1.MigrationService/GetMigrationSet", AtLeast(Reader)),
        // Everyone reads insights on the targets they reach; signals are MASTER's.
        ("/pgfleet.v1.InsightsService/SearchSlowQueries", AtLeast(Reader)),
        ("/pgfleet.v1.InsightsService/ListActivity", AtLeast(Reader)),
        ("/pgfleet.v1.InsightsService/CancelBackend", AtLeast(Master)),
        ("/pgfleet.v1.InsightsService/TerminateBackend", AtLeast(Master)),
        ("/pgfleet.v1.InsightsService/GetStatementStats", AtLeast(Reader)),
        // ANALYZE is MASTER's (checked by the engine, with the statement's class).
        ("/pgfleet.v1.InsightsService/ExplainQuery", AtLeast(Reader)),
        ("/pgfleet.v1.InsightsService/GetRecommendations", AtLeast(Reader)),
        // Connection secrets are redacted for everyone but MASTER (fleet service).
        ("/pgfleet.v1.FleetService/GetConfiguration", AtLeast(Reader)),
        ("/pgfleet.v1.FleetService/GetHealth", AtLeast(Reader)),
        ("/pgfleet.v1.FleetService/ListSchemas", AtLeast(Reader)),
        ("/pgfleet.v1.FleetService/ListTables", AtLeast(Reader)),
        ("/pgfleet.v1.FleetService/PromoteReplica", AtLeast(Master)),
        // Backups: MASTER changes and restores; everyone may read and verify.
        ("/pgfleet.v1.BackupService/CreatePolicy", AtLeast(Master)),
        ("/pgfleet.v1.BackupService/UpdatePolicy", AtLeast(Master)),
        ("/pgfleet.v1.BackupService/DeletePolicy", AtLeast(Master)),
        ("/pgfleet.v1.BackupService/GetPolicy", AtLeast(Reader)),
        ("/pgfleet.v1.BackupService/ListPolicies", AtLeast(Reader)),
        ("/pgfleet.v1.BackupService/RunBackup", AtLeast(Master)),
        ("/pgfleet.v1.BackupService/ListBackups", AtLeast(Reader)),
        ("/pgfleet.v1.BackupService/GetBackup", AtLeast(Reader)),
        ("/pgfleet.v1.BackupService/VerifyBackup", AtLeast(Reader)),
        ("/pgfleet.v1.BackupService/RestoreBackup", AtLeast(Master)),
        ("/pgfleet.v1.BackupService/DeleteBackup", AtLeast(Master)),
        ("/pgfleet.v1.BackupService/GetBackupHealth", AtLeast(Reader)),
    ]
};

/// The access `path` requires; `None` means nobody may call it.
pub fn access_for(path: &str) -> Option<Access> {
    if PUBLIC_SERVICES.iter().any(|service| path.starts_with(service)) {
        return Some(Access::Public);
    }
    RPC_ACCESS
        .iter()
        .find(|(method, _)| *method == path)
        .map(|(_, access)| *access)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use prost::Message;
    use prost_types::FileDescriptorSet;

    use super::*;

    /// Every method the server exposes, from the compiled descriptor set.
    fn exposed_methods() -> BTreeSet<String> {
        let set = FileDescriptorSet::decode(pgfleet_proto::FILE_DESCRIPTOR_SET).expect("descriptor set");
        let mut methods = BTreeSet::new();
        for file in set.file {
            for service in &file.service {
                for method in &service.method {
                    methods.insert(format!(
                        "/{}.{}/{}",
                        file.package(),
                        service.name(),
                        method.name()
                    ));
                }
            }
        }
        methods
    }

    #[test]
    fn every_exposed_method_has_exactly_one_rule() {
        let exposed = exposed_methods();
        let listed: BTreeSet<String> = RPC_ACCESS.iter().map(|(path, _)| (*path).to_owned()).collect();
        assert_eq!(listed.len(), RPC_ACCESS.len(), "a method is listed twice");
        assert_eq!(
            exposed, listed,
            "RPC_ACCESS must list exactly the methods in proto/"
        );
    }

    #[test]
    fn unknown_methods_are_closed_and_infrastructure_is_open() {
        assert_eq!(access_for("/pgfleet.v1.QueryService/DropEverything"), None);
        assert_eq!(access_for("/pgfleet.v2.QueryService/Execute"), None);
        assert_eq!(access_for("/other.Service/Call"), None);
        assert_eq!(access_for("/grpc.health.v1.Health/Check"), Some(Access::Public));
        assert_eq!(
            access_for("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"),
            Some(Access::Public)
        );
        assert_eq!(access_for("/pgfleet.v1.AuthService/Login"), Some(Access::Public));
        assert_eq!(
            access_for("/pgfleet.v1.AuthService/CreateUser"),
            Some(Access::AtLeast(Role::Master))
        );
    }
}
