//! What an apply would do on one target, decided from its status; no writes.

use pgfleet_sqlcheck::{DangerFinding, SourcePosition};
use sqlx::PgConnection;

use crate::set::MigrationSet;
use crate::status::{self, MigrationState, TargetStatus};
use crate::tracking::TrackingError;

/// Why an apply is refused on a target before anything runs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "applied migrations changed since they were applied (versions {versions:?}): restore the files, or repair the recorded checksums"
    )]
    ChecksumDrift { versions: Vec<i64> },
    #[error(
        "the target has applied versions the set does not have ({versions:?}): the set is older than the target, or files were removed"
    )]
    UnknownApplied { versions: Vec<i64> },
    #[error(
        "version {version} is not applied but version {newest_applied} is: versions are applied in order, never below the newest applied one"
    )]
    OutOfOrder { version: i64, newest_applied: i64 },
    #[error("version {version} is not in the set")]
    NotInSet { version: i64 },
    /// The copy is configured `read_only = true`: decided by the caller,
    /// which knows the configuration.
    #[error("the copy is read_only in the configuration: pgfleet writes nothing to it")]
    ReadOnly,
}

/// One statement of a planned migration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedStatement {
    /// Where it starts in the file.
    pub position: SourcePosition,
    /// PostgreSQL's command tag (`ALTER TABLE`).
    pub command: String,
    /// What makes it dangerous, from pgfleet-sqlcheck; empty if nothing.
    pub findings: Vec<DangerFinding>,
}

/// One migration an apply would run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedMigration {
    pub version: i64,
    pub name: String,
    pub file: String,
    /// Runs outside a transaction block, recorded after it succeeds.
    pub no_transaction: bool,
    pub statements: Vec<PlannedStatement>,
    /// Its last attempt on this target failed.
    pub failed_before: bool,
}

/// What an apply would do on one target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The newest version applied there now.
    pub newest_applied: Option<i64>,
    /// The migrations it would run, in order; empty when up to date.
    pub migrations: Vec<PlannedMigration>,
}

/// Planning failed: the target could not be read, or an apply would be refused.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    Tracking(#[from] TrackingError),
    #[error("apply would be refused: {0}")]
    Refused(#[from] Refusal),
}

/// What [`apply_on_target`](crate::apply_on_target) would run on the target
/// behind `conn` now, up to `up_to` (every pending version when `None`).
/// Reads only (a READ ONLY transaction will do).
pub async fn plan(
    conn: &mut PgConnection,
    set: &MigrationSet,
    up_to: Option<i64>,
) -> Result<Plan, PlanError> {
    let status = status::status(conn, set).await?;
    Ok(plan_from_status(set, &status, up_to)?)
}

/// The plan for a target whose status is known; no I/O.
pub fn plan_from_status(
    set: &MigrationSet,
    status: &TargetStatus,
    up_to: Option<i64>,
) -> Result<Plan, Refusal> {
    if let Some(version) = up_to
        && set.get(version).is_none()
    {
        return Err(Refusal::NotInSet { version });
    }
    let drifted = status.drifted();
    if !drifted.is_empty() {
        return Err(Refusal::ChecksumDrift { versions: drifted });
    }
    let unknown = status.unknown();
    if !unknown.is_empty() {
        return Err(Refusal::UnknownApplied { versions: unknown });
    }
    let newest_applied = status.newest_applied();
    let mut migrations = Vec::new();
    for entry in &status.migrations {
        let pending = matches!(entry.state, MigrationState::Pending | MigrationState::Failed(_));
        if !pending || up_to.is_some_and(|up_to| entry.version > up_to) {
            continue;
        }
        if let Some(newest) = newest_applied
            && entry.version < newest
        {
            return Err(Refusal::OutOfOrder {
                version: entry.version,
                newest_applied: newest,
            });
        }
        let Some(migration) = set.get(entry.version) else {
            continue; // pending versions come from the set
        };
        migrations.push(PlannedMigration {
            version: migration.version(),
            name: migration.name().to_owned(),
            file: migration.up().file().to_owned(),
            no_transaction: migration.up().no_transaction(),
            statements: migration
                .up()
                .statements()
                .iter()
                .map(|s| PlannedStatement {
                    position: s.span.start,
                    command: s.command.clone(),
                    findings: s.findings.clone(),
                })
                .collect(),
            failed_before: matches!(entry.state, MigrationState::Failed(_)),
        });
    }
    Ok(Plan {
        newest_applied,
        migrations,
    })
}
