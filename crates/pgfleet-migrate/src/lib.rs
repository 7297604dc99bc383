//! Versioned schema migrations for every copy of a fleet database.

mod apply;
mod drift;
mod failure;
mod plan;
mod rollout;
mod set;
mod status;
mod tracking;

pub use apply::{
    AppliedStep, ApplyError, ApplyEvent, ApplyOptions, ApplyReport, DEFAULT_LOCK_WAIT, MigrationFailed,
    RepairError, Repaired, RollbackError, RolledBack, SkipReason, apply_on_target, repair_checksum,
    rollback_newest,
};
pub use drift::{Difference, DriftError, ObjectKind, SchemaObject, SchemaSnapshot, diff, schema_snapshot};
pub use failure::PgFailure;
pub use plan::{Plan, PlanError, PlannedMigration, PlannedStatement, Refusal, plan, plan_from_status};
pub use rollout::{NotRun, RolloutOptions, RolloutPolicy, RolloutReport, TargetOutcome, rollout};
pub use set::{
    Checksum, Direction, FileName, Migration, MigrationSet, NO_TRANSACTION_MARKER, Script, SetError,
};
pub use status::{FleetStatus, MigrationState, MigrationStatus, TargetStatus, TargetSummary, status};
pub use tracking::{
    AppliedMigration, LockError, RecordedFailure, TARGET_LOCK, TRACKING_SCHEMA, TrackingError,
};
