//! Applying pending migrations on one target, repairing a recorded checksum,
//! and undoing the newest version.
//!
//! Every writer holds the target's advisory lock ([`TARGET_LOCK`](crate::TARGET_LOCK))
//! and reads the status again under it, so two appliers (two pgfleet
//! replicas, two callers) never interleave and each version runs once.
//!
//! The lock is a session lock on the caller's connection: a caller that
//! drops the future part-way must not hand the connection to anyone else
//! without resetting it (`DISCARD ALL`, pgfleet-registry's `discard_session`),
//! which also resets settings a migration may have changed with a plain `SET`.

use std::time::{Duration, Instant};

use sqlx::{AssertSqlSafe, Connection as _, PgConnection};
use uuid::Uuid;

use crate::failure::PgFailure;
use crate::plan::{Refusal, plan_from_status};
use crate::set::{Checksum, Migration, MigrationSet, Script};
use crate::status::{MigrationState, TargetStatus};
use crate::tracking::{self, LockError, NewRow, TrackingError};

/// How long a writer waits for another one's lock by default.
pub const DEFAULT_LOCK_WAIT: Duration = Duration::from_secs(30);

/// Who applies, and how far.
#[derive(Debug, Clone)]
pub struct ApplyOptions {
    /// Apply up to this version (inclusive); `None`: every pending version.
    pub up_to: Option<i64>,
    /// Written to `applied_by` (the identity of the caller).
    pub applied_by: String,
    /// The audit record of this run, written to `execution_id`.
    pub execution_id: Option<Uuid>,
    /// How long to wait for another writer of the same target before
    /// refusing with [`LockError::Busy`].
    pub lock_wait: Duration,
}

impl ApplyOptions {
    /// Every pending version, by `applied_by`, waiting [`DEFAULT_LOCK_WAIT`].
    pub fn new(applied_by: impl Into<String>) -> Self {
        Self {
            up_to: None,
            applied_by: applied_by.into(),
            execution_id: None,
            lock_wait: DEFAULT_LOCK_WAIT,
        }
    }
}

/// Why a version was not run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// It was pending when this apply started, and another applier applied it
    /// while this one waited for the lock.
    AppliedConcurrently,
    /// An earlier version failed in this apply.
    EarlierFailed,
}

/// Progress of an apply on one target, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplyEvent {
    /// The target's lock is held (after `waited`); the plan is final.
    Locked {
        waited: Duration,
        pending: Vec<i64>,
    },
    Started {
        version: i64,
        name: String,
    },
    Applied {
        version: i64,
        name: String,
        duration: Duration,
    },
    Failed {
        version: i64,
        name: String,
        failure: Box<PgFailure>,
        /// Line and column of `failure.position` in the up file.
        line_column: Option<(usize, usize)>,
    },
    Skipped {
        version: i64,
        name: String,
        reason: SkipReason,
    },
}

/// One version this apply ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedStep {
    pub version: i64,
    pub name: String,
    pub duration: Duration,
}

/// What an apply did on one target.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ApplyReport {
    pub applied: Vec<AppliedStep>,
    /// Versions another applier ran while this one waited.
    pub applied_concurrently: Vec<i64>,
    /// The newest version applied on the target when the apply ended.
    pub newest_applied: Option<i64>,
}

/// A migration (or a down file) failed on the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationFailed {
    pub version: i64,
    pub name: String,
    pub file: String,
    pub failure: PgFailure,
    /// Line and column of `failure.position` in `file`.
    pub line_column: Option<(usize, usize)>,
    /// Versions this apply ran before the failure (they stay applied).
    pub applied_before: Vec<i64>,
    /// The connection was lost after the change may have taken effect (COMMIT
    /// sent, or a no-transaction statement that succeeded but was not
    /// recorded): read the status again before deciding anything.
    pub outcome_unknown: bool,
}

impl std::fmt::Display for MigrationFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some((line, column)) = self.line_column {
            write!(f, ", line {line}, column {column}")?;
        }
        write!(f, ": {}", self.failure)?;
        if self.outcome_unknown {
            f.write_str(" (the connection was lost after the change may have taken effect)")?;
        }
        Ok(())
    }
}

/// Why an apply stopped.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    Tracking(#[from] TrackingError),
    #[error("apply refused: {0}")]
    Refused(#[from] Refusal),
    #[error("migration {} ({}) failed: {}", .0.version, .0.name, .0)]
    Migration(Box<MigrationFailed>),
}

impl ApplyError {
    /// The target could not be reached or the connection died (UNAVAILABLE).
    pub fn is_connection_lost(&self) -> bool {
        match self {
            ApplyError::Lock(LockError::Query(f)) | ApplyError::Tracking(TrackingError::Query(f)) => {
                f.connection_lost
            }
            ApplyError::Migration(failed) => failed.failure.connection_lost,
            _ => false,
        }
    }
}

/// Applies the pending versions of `set` on the target behind `conn`, up to
/// `options.up_to`, each in its own transaction with its tracking row (a
/// `no-transaction` one alone, recorded after it succeeds). Stops at the
/// first failure, which leaves nothing of that version behind (and records
/// the attempt in `pgfleet.schema_migration_failures` when the target is
/// still reachable).
///
/// Refused before anything runs when an applied file changed (see
/// [`repair_checksum`]), the target has versions the set lacks, or a pending
/// version is older than an applied one.
pub async fn apply_on_target(
    conn: &mut PgConnection,
    set: &MigrationSet,
    options: &ApplyOptions,
    mut on_event: impl FnMut(ApplyEvent),
) -> Result<ApplyReport, ApplyError> {
    // Read before waiting for the lock, so versions another applier runs
    // meanwhile are reported as theirs.
    let before = crate::status::status(conn, set).await?;
    let waited = tracking::lock(conn, options.lock_wait).await?;
    let result = apply_locked(conn, set, options, &before, waited, &mut on_event).await;
    tracking::unlock(conn).await;
    result
}

async fn apply_locked(
    conn: &mut PgConnection,
    set: &MigrationSet,
    options: &ApplyOptions,
    before: &TargetStatus,
    waited: Duration,
    on_event: &mut impl FnMut(ApplyEvent),
) -> Result<ApplyReport, ApplyError> {
    tracking::ensure(conn).await?;
    let now = crate::status::status(conn, set).await?;
    let plan = plan_from_status(set, &now, options.up_to)?;
    on_event(ApplyEvent::Locked {
        waited,
        pending: plan.migrations.iter().map(|m| m.version).collect(),
    });

    let mut report = ApplyReport {
        newest_applied: now.newest_applied(),
        ..ApplyReport::default()
    };
    for entry in &before.migrations {
        let was_pending = matches!(entry.state, MigrationState::Pending | MigrationState::Failed(_));
        let within = options.up_to.is_none_or(|up_to| entry.version <= up_to);
        if was_pending && within && now.state(entry.version).is_some_and(MigrationState::is_applied) {
            report.applied_concurrently.push(entry.version);
            on_event(ApplyEvent::Skipped {
                version: entry.version,
                name: entry.name.clone(),
                reason: SkipReason::AppliedConcurrently,
            });
        }
    }

    let migrations: Vec<&Migration> = plan
        .migrations
        .iter()
        .filter_map(|planned| set.get(planned.version))
        .collect();
    for (index, migration) in migrations.iter().enumerate() {
        on_event(ApplyEvent::Started {
            version: migration.version(),
            name: migration.name().to_owned(),
        });
        // The tracking row, for success and again for a recorded failure.
        let row = || NewRow {
            version: migration.version(),
            name: migration.name(),
            checksum: migration.checksum(),
            by: &options.applied_by,
            duration: Duration::ZERO,
            execution_id: options.execution_id,
            no_transaction: migration.up().no_transaction(),
        };
        match run_script(conn, migration.up(), Record::Applied(row())).await {
            Ok(duration) => {
                on_event(ApplyEvent::Applied {
                    version: migration.version(),
                    name: migration.name().to_owned(),
                    duration,
                });
                report.applied.push(AppliedStep {
                    version: migration.version(),
                    name: migration.name().to_owned(),
                    duration,
                });
                report.newest_applied = Some(migration.version());
            }
            Err(ran) => {
                let failure = *ran.failure;
                if !failure.connection_lost
                    && let Err(e) = tracking::record_failure(conn, &row(), &failure).await
                {
                    tracing::warn!(version = migration.version(), error = %e, "recording a failed migration failed");
                }
                let line_column = failure.line_column(migration.up().sql());
                on_event(ApplyEvent::Failed {
                    version: migration.version(),
                    name: migration.name().to_owned(),
                    failure: Box::new(failure.clone()),
                    line_column,
                });
                for later in migrations.iter().skip(index + 1) {
                    on_event(ApplyEvent::Skipped {
                        version: later.version(),
                        name: later.name().to_owned(),
                        reason: SkipReason::EarlierFailed,
                    });
                }
                return Err(ApplyError::Migration(Box::new(MigrationFailed {
                    version: migration.version(),
                    name: migration.name().to_owned(),
                    file: migration.up().file().to_owned(),
                    failure,
                    line_column,
                    applied_before: report.applied.iter().map(|s| s.version).collect(),
                    outcome_unknown: ran.outcome_unknown,
                })));
            }
        }
    }
    Ok(report)
}

/// The tracking change that goes with a script.
enum Record<'a> {
    /// Insert the row of an applied version.
    Applied(NewRow<'a>),
    /// Delete the row of a version undone.
    Undone(i64),
}

struct RunFailed {
    failure: Box<PgFailure>,
    outcome_unknown: bool,
}

/// Runs `script` and its tracking change: in one transaction, or, for a
/// no-transaction script, the script alone and then the change.
async fn run_script(
    conn: &mut PgConnection,
    script: &Script,
    record: Record<'_>,
) -> Result<Duration, RunFailed> {
    let failed = |outcome_unknown: bool| {
        move |e: sqlx::Error| RunFailed {
            failure: Box::new(PgFailure::from_sqlx(&e)),
            outcome_unknown,
        }
    };
    let started = Instant::now();
    // The file is sent as written (simple query protocol), so PostgreSQL's
    // error positions are positions in the file.
    let sql = AssertSqlSafe(script.sql().to_owned());
    if script.no_transaction() {
        sqlx::raw_sql(sql)
            .execute(&mut *conn)
            .await
            .map_err(failed(false))?;
        let duration = started.elapsed();
        // The statement took effect: from here on, a failure leaves it
        // applied but unrecorded.
        let unrecorded = |failure: PgFailure| RunFailed {
            failure: Box::new(failure),
            outcome_unknown: true,
        };
        let mut transaction = conn.begin().await.map_err(failed(true))?;
        write_record(&mut transaction, &record, duration)
            .await
            .map_err(unrecorded)?;
        transaction.commit().await.map_err(failed(true))?;
        return Ok(duration);
    }
    let mut transaction = conn.begin().await.map_err(failed(false))?;
    let ran = sqlx::raw_sql(sql).execute(&mut *transaction).await;
    let duration = started.elapsed();
    let written = match ran {
        Ok(_) => write_record(&mut transaction, &record, duration).await,
        Err(e) => Err(PgFailure::from_sqlx(&e)),
    };
    if let Err(failure) = written {
        // Explicitly, so the failure row written next is not queued behind
        // sqlx's deferred rollback; a lost connection rolled back already.
        if let Err(rollback) = transaction.rollback().await {
            tracing::debug!(error = %rollback, "rolling back a failed migration failed");
        }
        return Err(RunFailed {
            failure: Box::new(failure),
            outcome_unknown: false,
        });
    }
    transaction.commit().await.map_err(failed(true))?;
    Ok(duration)
}

async fn write_record(
    conn: &mut PgConnection,
    record: &Record<'_>,
    duration: Duration,
) -> Result<(), PgFailure> {
    match record {
        Record::Applied(row) => {
            let row = NewRow { duration, ..*row };
            tracking::record_applied(conn, &row)
                .await
                .map_err(|e| PgFailure::from_sqlx(&e))
        }
        Record::Undone(version) => {
            let deleted = sqlx::query("DELETE FROM pgfleet.schema_migrations WHERE version = $1")
                .bind(version)
                .execute(&mut *conn)
                .await
                .map_err(|e| PgFailure::from_sqlx(&e))?;
            if deleted.rows_affected() != 1 {
                // Under the lock this cannot happen; refuse rather than commit
                // a down file whose version was not recorded.
                return Err(PgFailure {
                    message: format!("the tracking row of version {version} vanished during its rollback"),
                    ..PgFailure::default()
                });
            }
            Ok(())
        }
    }
}

/// What [`repair_checksum`] changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repaired {
    pub version: i64,
    /// The checksum recorded before; equal to `new` when nothing changed.
    pub old: Checksum,
    pub new: Checksum,
}

/// Why a repair or a rollback was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum RepairError {
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    Tracking(#[from] TrackingError),
    #[error("version {version} is not in the set")]
    NotInSet { version: i64 },
    #[error("version {version} is not applied on this target: nothing to repair")]
    NotApplied { version: i64 },
}

/// Records the checksum (and name) of the set's file for an applied
/// `version`, accepting its changed text as what was applied. Nothing runs
/// but the update of the tracking row.
pub async fn repair_checksum(
    conn: &mut PgConnection,
    set: &MigrationSet,
    version: i64,
    lock_wait: Duration,
) -> Result<Repaired, RepairError> {
    let migration = set.get(version).ok_or(RepairError::NotInSet { version })?;
    tracking::lock(conn, lock_wait).await?;
    let result = async {
        let now = crate::status::status(conn, set).await?;
        let old = match now.state(version) {
            Some(MigrationState::Applied(row)) => row.checksum,
            Some(MigrationState::ChecksumDrift { applied, .. }) => applied.checksum,
            _ => return Err(RepairError::NotApplied { version }),
        };
        if old != migration.checksum() {
            sqlx::query("UPDATE pgfleet.schema_migrations SET checksum = $2, name = $3 WHERE version = $1")
                .bind(version)
                .bind(migration.checksum().as_bytes().as_slice())
                .bind(migration.name())
                .execute(&mut *conn)
                .await
                .map_err(TrackingError::from)?;
        }
        Ok(Repaired {
            version,
            old,
            new: migration.checksum(),
        })
    }
    .await;
    tracking::unlock(conn).await;
    result
}

/// The version [`rollback_newest`] undid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolledBack {
    pub version: i64,
    pub name: String,
    pub duration: Duration,
    /// The newest version applied after the rollback.
    pub newest_applied: Option<i64>,
}

/// Why a rollback was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum RollbackError {
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    Tracking(#[from] TrackingError),
    #[error("nothing is applied on this target: nothing to roll back")]
    NothingApplied,
    #[error(
        "the newest applied version is {newest}, not {expected}: refused so that no other version is undone"
    )]
    NewestIsNot { expected: i64, newest: i64 },
    #[error("the newest applied version {version} is not in the set, so its down file is unknown")]
    NotInSet { version: i64 },
    #[error("version {version} ({file}) has no down file: it cannot be rolled back")]
    NoDownFile { version: i64, file: String },
    #[error(
        "version {version} changed since it was applied: its down file may not undo what ran; repair the checksum first if the change is intended"
    )]
    ChecksumDrift { version: i64 },
    #[error("the down file of version {} failed: {}", .0.version, .0)]
    Failed(Box<MigrationFailed>),
}

/// Runs the down file of the newest applied version and deletes its tracking
/// row, in one transaction (a no-transaction down file runs alone, then the
/// row is deleted). With `expected`, refuses unless that version is the
/// newest applied one, so a fleet-wide rollback of version N never undoes
/// N-1 on a target that was behind.
pub async fn rollback_newest(
    conn: &mut PgConnection,
    set: &MigrationSet,
    expected: Option<i64>,
    lock_wait: Duration,
) -> Result<RolledBack, RollbackError> {
    tracking::lock(conn, lock_wait).await?;
    let result = rollback_locked(conn, set, expected).await;
    tracking::unlock(conn).await;
    result
}

async fn rollback_locked(
    conn: &mut PgConnection,
    set: &MigrationSet,
    expected: Option<i64>,
) -> Result<RolledBack, RollbackError> {
    let now = crate::status::status(conn, set).await?;
    let version = now.newest_applied().ok_or(RollbackError::NothingApplied)?;
    if let Some(expected) = expected
        && expected != version
    {
        return Err(RollbackError::NewestIsNot {
            expected,
            newest: version,
        });
    }
    let migration = set.get(version).ok_or(RollbackError::NotInSet { version })?;
    if matches!(now.state(version), Some(MigrationState::ChecksumDrift { .. })) {
        return Err(RollbackError::ChecksumDrift { version });
    }
    let down = migration.down().ok_or_else(|| RollbackError::NoDownFile {
        version,
        file: migration.up().file().to_owned(),
    })?;
    match run_script(conn, down, Record::Undone(version)).await {
        Ok(duration) => Ok(RolledBack {
            version,
            name: migration.name().to_owned(),
            duration,
            newest_applied: now
                .migrations
                .iter()
                .filter(|m| m.version < version && m.state.is_applied())
                .map(|m| m.version)
                .max(),
        }),
        Err(ran) => Err(RollbackError::Failed(Box::new(MigrationFailed {
            version,
            name: migration.name().to_owned(),
            file: down.file().to_owned(),
            line_column: ran.failure.line_column(down.sql()),
            failure: *ran.failure,
            applied_before: Vec::new(),
            outcome_unknown: ran.outcome_unknown,
        }))),
    }
}
