//! Versioned schema migrations rolled out to every copy of a fleet database:
//! the domain logic, without wire types (the server is the wire boundary: it
//! maps these types to `MigrationService`, the audit trail and the CLI).
//!
//! - [`MigrationSet`]: `NNNN_name.sql` files (and optional `NNNN_name.down.sql`),
//!   with their SHA-256 [`Checksum`], parsed and classified by pgfleet-sqlcheck
//!   when loaded; [`SetError`] names the file (and line/column) at fault.
//! - [`status`] / [`FleetStatus`]: applied, pending, failed, checksum drift and
//!   unknown versions per target, and which targets are behind.
//! - [`plan`]: what an apply would run, with each statement's dangerous findings.
//! - [`apply_on_target`], [`repair_checksum`], [`rollback_newest`]: the writers.
//! - [`rollout`]: [`RolloutPolicy`] across targets, generic over how a target
//!   is reached.
//! - [`schema_snapshot`] / [`diff`]: the live schema from the catalogs, compared.
//!
//! Invariants:
//! - The target is the source of truth: `pgfleet.schema_migrations` on each
//!   target says what it has; nothing here caches it.
//! - A version and its tracking row commit together, or neither does (a
//!   `-- pgfleet:no-transaction` file holds one statement and is recorded right
//!   after it succeeds).
//! - Every writer of a target holds [`TARGET_LOCK`] and re-reads the status
//!   under it, so each version runs at most once per target whoever applies.
//! - Reads ([`status`], [`plan`], [`schema_snapshot`]) write nothing, so they run
//!   in READ ONLY transactions; the tracking tables are created by the first
//!   writer only.
//! - No apply runs over a changed applied file, an applied version unknown to
//!   the set, or out of order: it is refused with a typed [`Refusal`].
//! - No dependency on tonic, prost or pgfleet-proto.

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
