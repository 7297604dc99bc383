//! What one audit record holds, as stored, and its canonical content for
//! the hash chain.
//!
//! The canonical content is computed from the row as read back from the
//! database (never from the values the server meant to write), so the hash
//! written and the hash recomputed by verification see the same bytes.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::types::Json;
use uuid::Uuid;

use crate::identity::{Identity, Principal, Role};

/// The state of a record (`executions.status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Running,
    Succeeded,
    Failed,
    Partial,
    Interrupted,
    Refused,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Running => "RUNNING",
            Status::Succeeded => "SUCCEEDED",
            Status::Failed => "FAILED",
            Status::Partial => "PARTIAL",
            Status::Interrupted => "INTERRUPTED",
            Status::Refused => "REFUSED",
        }
    }

    pub fn parse(stored: &str) -> Option<Self> {
        [
            Status::Running,
            Status::Succeeded,
            Status::Failed,
            Status::Partial,
            Status::Interrupted,
            Status::Refused,
        ]
        .into_iter()
        .find(|status| status.as_str() == stored)
    }

    /// The closing status of a finished execution from its targets' outcomes.
    pub fn from_outcomes(outcomes: &[RecordedOutcome]) -> Self {
        let succeeded = outcomes.iter().filter(|o| o.success).count();
        if succeeded == outcomes.len() {
            Status::Succeeded
        } else if succeeded == 0 {
            Status::Failed
        } else {
            Status::Partial
        }
    }
}

/// What kind of work a record describes (`executions.kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Query,
    ReplicationRun,
    /// A migration rollout (`MigrationService.ApplyMigrations`, `pgfleet migrations apply`).
    MigrationApply,
    /// The down file of the newest version, on each chosen target.
    MigrationRollback,
    /// A recorded checksum replaced by the file's.
    MigrationRepair,
    /// A replica promoted to primary (`FleetService.PromoteReplica`).
    ReplicaPromotion,
    /// A row of the old system's `query_history`, imported by
    /// `pgfleet import-legacy` ([`super::import`]).
    ImportedQuery,
    /// A `pgfleet import-legacy` run.
    LegacyImport,
    /// A backup of one or more targets (`BackupService.RunBackup`, the scheduler).
    BackupRun,
    /// A backup restored onto a target (`BackupService.RestoreBackup`).
    BackupRestore,
    /// A backup policy created, updated or deleted.
    BackupPolicy,
    /// A stored backup deleted (`BackupService.DeleteBackup`).
    BackupDelete,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Query => "QUERY",
            Kind::ReplicationRun => "REPLICATION_RUN",
            Kind::MigrationApply => "MIGRATION_APPLY",
            Kind::MigrationRollback => "MIGRATION_ROLLBACK",
            Kind::MigrationRepair => "MIGRATION_REPAIR",
            Kind::ReplicaPromotion => "REPLICA_PROMOTION",
            Kind::ImportedQuery => "IMPORTED_QUERY",
            Kind::LegacyImport => "LEGACY_IMPORT",
            Kind::BackupRun => "BACKUP_RUN",
            Kind::BackupRestore => "BACKUP_RESTORE",
            Kind::BackupPolicy => "BACKUP_POLICY",
            Kind::BackupDelete => "BACKUP_DELETE",
        }
    }
}

/// How the targets were chosen (`executions.scope`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetScope {
    AllClouds,
    Cloud,
    Targets,
    Replication,
}

impl TargetScope {
    pub fn as_str(self) -> &'static str {
        match self {
            TargetScope::AllClouds => "ALL_CLOUDS",
            TargetScope::Cloud => "CLOUD",
            TargetScope::Targets => "TARGETS",
            TargetScope::Replication => "REPLICATION",
        }
    }
}

/// Who ran an execution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    User {
        id: Uuid,
        username: String,
    },
    ApiKey {
        id: Uuid,
        name: String,
    },
    /// pgfleet itself, e.g. `replication-scheduler`.
    System(String),
}

impl Actor {
    pub fn of(identity: &Identity) -> Self {
        match &identity.principal {
            Principal::User { id, username } => Actor::User {
                id: *id,
                username: username.clone(),
            },
            Principal::ApiKey { id, name, .. } => Actor::ApiKey {
                id: *id,
                name: name.clone(),
            },
        }
    }
}

/// A (cloud, database) pair as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedTarget {
    pub cloud: String,
    pub database: String,
}

/// A dangerous statement that was run with confirmation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedFinding {
    pub code: String,
    pub reason: String,
    pub statement_index: u32,
}

/// Why a target failed, as recorded: enough to search and to alert on,
/// never data from result rows.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RecordedError {
    /// The wire `ErrorCode` name, e.g. `ERROR_CODE_ABORTED`.
    pub code: String,
    pub message: String,
    /// PostgreSQL's SQLSTATE; empty when the failure did not come from it.
    #[serde(default)]
    pub sqlstate: String,
    #[serde(default)]
    pub detail: String,
    #[serde(default)]
    pub hint: String,
    #[serde(default)]
    pub position: u32,
}

/// One target's outcome (an element of `executions.outcomes`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedOutcome {
    pub target: RecordedTarget,
    pub success: bool,
    pub command_tags: Vec<String>,
    pub rows_affected: u64,
    pub duration_micros: u64,
    pub error: Option<RecordedError>,
    /// The connection was lost after COMMIT was sent, or the server stopped
    /// before the target reported: whether it committed is not known.
    pub outcome_unknown: bool,
    pub failed_statement_index: Option<u32>,
    /// The replica a read was routed to; empty for the primary.
    #[serde(default)]
    pub replica: String,
}

impl RecordedOutcome {
    /// The outcome of a target nobody heard back from.
    pub fn unknown(target: RecordedTarget, why: &str) -> Self {
        Self {
            target,
            success: false,
            command_tags: Vec::new(),
            rows_affected: 0,
            duration_micros: 0,
            error: Some(RecordedError {
                code: "ERROR_CODE_UNKNOWN".to_owned(),
                message: why.to_owned(),
                ..RecordedError::default()
            }),
            outcome_unknown: true,
            failed_statement_index: None,
            replica: String::new(),
        }
    }
}

/// A record about to be opened: everything known before any target runs.
#[derive(Debug, Clone)]
pub struct NewExecution {
    pub id: Uuid,
    pub kind: Kind,
    pub actor: Actor,
    pub role: Role,
    pub client_address: String,
    pub request_id: String,
    /// The SQL text, or its redacted form when `query_redacted`.
    pub query: String,
    pub query_redacted: bool,
    pub fingerprint: String,
    /// Distinct statement classes, wire names without prefix (`WRITE`).
    pub statement_classes: Vec<String>,
    pub database: String,
    pub pg_schema: String,
    pub scope: TargetScope,
    pub targets: Vec<RecordedTarget>,
    pub read_only: bool,
    pub confirmed_dangerous: bool,
    pub findings: Vec<RecordedFinding>,
    pub replication_job_id: Option<Uuid>,
}

/// Column list of `executions` in [`ExecutionRow`] order, qualified by `e`.
macro_rules! execution_columns {
    () => {
        "e.id, e.kind, e.actor_kind, e.actor_user_id, e.actor_username, e.actor_api_key_id, \
         e.actor_api_key_name, e.actor_system, e.actor_role, e.client_address, e.request_id, \
         e.query, e.query_redacted, e.fingerprint, e.statement_classes, e.database, e.pg_schema, e.scope, \
         e.targets, e.read_only, e.confirmed_dangerous, e.findings, e.replication_job_id, \
         e.writer_id, e.started_at, e.finished_at, e.status, e.success, e.outcomes"
    };
}
pub(crate) use execution_columns;

/// One `executions` row as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ExecutionRow {
    pub id: Uuid,
    pub kind: String,
    pub actor_kind: String,
    pub actor_user_id: Option<Uuid>,
    pub actor_username: Option<String>,
    pub actor_api_key_id: Option<Uuid>,
    pub actor_api_key_name: Option<String>,
    pub actor_system: Option<String>,
    pub actor_role: String,
    pub client_address: String,
    pub request_id: String,
    pub query: String,
    pub query_redacted: bool,
    pub fingerprint: String,
    pub statement_classes: Vec<String>,
    pub database: String,
    pub pg_schema: String,
    pub scope: String,
    pub targets: Json<Vec<RecordedTarget>>,
    pub read_only: bool,
    pub confirmed_dangerous: bool,
    pub findings: Json<Vec<RecordedFinding>>,
    pub replication_job_id: Option<Uuid>,
    pub writer_id: Uuid,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub status: String,
    pub success: bool,
    pub outcomes: Json<Vec<RecordedOutcome>>,
}

/// What the opening link covers: everything fixed before any target runs.
#[derive(Serialize)]
struct OpenedContent<'a> {
    id: &'a Uuid,
    kind: &'a str,
    actor_kind: &'a str,
    actor_user_id: &'a Option<Uuid>,
    actor_username: &'a Option<String>,
    actor_api_key_id: &'a Option<Uuid>,
    actor_api_key_name: &'a Option<String>,
    actor_system: &'a Option<String>,
    actor_role: &'a str,
    client_address: &'a str,
    request_id: &'a str,
    query: &'a str,
    query_redacted: bool,
    fingerprint: &'a str,
    statement_classes: &'a [String],
    database: &'a str,
    pg_schema: &'a str,
    scope: &'a str,
    targets: &'a [RecordedTarget],
    read_only: bool,
    confirmed_dangerous: bool,
    findings: &'a [RecordedFinding],
    replication_job_id: &'a Option<Uuid>,
    writer_id: &'a Uuid,
    started_at: &'a DateTime<Utc>,
}

/// What the closing link covers: how it ended.
#[derive(Serialize)]
struct ClosedContent<'a> {
    id: &'a Uuid,
    finished_at: &'a Option<DateTime<Utc>>,
    status: &'a str,
    success: bool,
    outcomes: &'a [RecordedOutcome],
}

/// Which moment of a record a chain link covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkKind {
    Opened,
    Closed,
}

impl LinkKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LinkKind::Opened => "opened",
            LinkKind::Closed => "closed",
        }
    }

    pub fn parse(stored: &str) -> Option<Self> {
        match stored {
            "opened" => Some(LinkKind::Opened),
            "closed" => Some(LinkKind::Closed),
            _ => None,
        }
    }
}

impl ExecutionRow {
    /// The canonical bytes the `link` of this record hashes: JSON with a
    /// fixed field order (struct order) and no floats, so it is stable
    /// across serde_json versions and round trips through jsonb.
    pub fn canonical_content(&self, link: LinkKind) -> Vec<u8> {
        let encoded = match link {
            LinkKind::Opened => serde_json::to_vec(&OpenedContent {
                id: &self.id,
                kind: &self.kind,
                actor_kind: &self.actor_kind,
                actor_user_id: &self.actor_user_id,
                actor_username: &self.actor_username,
                actor_api_key_id: &self.actor_api_key_id,
                actor_api_key_name: &self.actor_api_key_name,
                actor_system: &self.actor_system,
                actor_role: &self.actor_role,
                client_address: &self.client_address,
                request_id: &self.request_id,
                query: &self.query,
                query_redacted: self.query_redacted,
                fingerprint: &self.fingerprint,
                statement_classes: &self.statement_classes,
                database: &self.database,
                pg_schema: &self.pg_schema,
                scope: &self.scope,
                targets: &self.targets.0,
                read_only: self.read_only,
                confirmed_dangerous: self.confirmed_dangerous,
                findings: &self.findings.0,
                replication_job_id: &self.replication_job_id,
                writer_id: &self.writer_id,
                started_at: &self.started_at,
            }),
            LinkKind::Closed => serde_json::to_vec(&ClosedContent {
                id: &self.id,
                finished_at: &self.finished_at,
                status: &self.status,
                success: self.success,
                outcomes: &self.outcomes.0,
            }),
        };
        // Serializing these structs cannot fail: no maps with non-string
        // keys, no custom Serialize that errors.
        encoded.unwrap_or_default()
    }
}

/// The hash of one chain link.
pub fn link_hash(prev_hash: &str, sequence: i64, link: LinkKind, content: &[u8]) -> String {
    let mut input = format!("pgfleet-audit-v1\n{prev_hash}\n{sequence}\n{}\n", link.as_str()).into_bytes();
    input.extend_from_slice(content);
    crate::digest::hex_sha256(&input)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(success: bool) -> RecordedOutcome {
        RecordedOutcome {
            success,
            ..RecordedOutcome::unknown(
                RecordedTarget {
                    cloud: "aws".to_owned(),
                    database: "app".to_owned(),
                },
                "test",
            )
        }
    }

    #[test]
    fn closing_status_follows_the_targets() {
        assert_eq!(
            Status::from_outcomes(&[outcome(true), outcome(true)]),
            Status::Succeeded
        );
        assert_eq!(
            Status::from_outcomes(&[outcome(false), outcome(false)]),
            Status::Failed
        );
        assert_eq!(
            Status::from_outcomes(&[outcome(true), outcome(false)]),
            Status::Partial
        );
        for status in [Status::Running, Status::Interrupted, Status::Refused] {
            assert_eq!(Status::parse(status.as_str()), Some(status));
        }
    }

    #[test]
    fn a_link_hash_depends_on_every_input() {
        let base = link_hash("ab", 7, LinkKind::Opened, b"{}");
        assert_eq!(base.len(), 64);
        assert_ne!(base, link_hash("ac", 7, LinkKind::Opened, b"{}"));
        assert_ne!(base, link_hash("ab", 8, LinkKind::Opened, b"{}"));
        assert_ne!(base, link_hash("ab", 7, LinkKind::Closed, b"{}"));
        assert_ne!(base, link_hash("ab", 7, LinkKind::Opened, b"{ }"));
        assert_eq!(base, link_hash("ab", 7, LinkKind::Opened, b"{}"));
    }
}
