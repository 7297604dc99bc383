//! The tracking tables on each target and the advisory lock that serialises
//! the writers of one target.
//!
//! The target is the source of truth for what it has: `pgfleet.schema_migrations`
//! holds one row per applied version, written in the same transaction as the
//! migration itself. `pgfleet.schema_migration_failures` keeps the last failed
//! attempt of each version not yet applied, so status can say "failed" (with
//! SQLSTATE and position) from the target alone; it is written after the
//! failed attempt rolled back, and cleared when the version is applied.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::failure::PgFailure;
use crate::set::Checksum;

/// The schema of pgfleet's tables on a target; never part of a schema snapshot.
pub const TRACKING_SCHEMA: &str = "pgfleet";

/// The advisory lock (two-key space) every pgfleet writer of a target holds
/// while it changes the schema or the tracking tables: `"pgfl"`, `"migr"` in
/// ASCII. The first key is the server's history-store namespace, so pgfleet's
/// locks are recognisable in `pg_locks` wherever they are taken.
pub const TARGET_LOCK: (i32, i32) = (0x7067_666c, 0x6d69_6772);

/// Creates the tables if missing. Only run with [`TARGET_LOCK`] held, so two
/// pgfleet writers never race on `CREATE … IF NOT EXISTS` (which is not safe
/// against a concurrent create of the same name).
const CREATE_TABLES: &str = "\
CREATE TABLE IF NOT EXISTS pgfleet.schema_migrations (
    version bigint PRIMARY KEY CHECK (version > 0),
    name text NOT NULL,
    checksum bytea NOT NULL CHECK (octet_length(checksum) = 32),
    applied_at timestamptz NOT NULL DEFAULT now(),
    applied_by text NOT NULL,
    duration_ms bigint NOT NULL,
    execution_id uuid,
    no_transaction boolean NOT NULL DEFAULT false
);
CREATE TABLE IF NOT EXISTS pgfleet.schema_migration_failures (
    version bigint PRIMARY KEY,
    name text NOT NULL,
    checksum bytea NOT NULL,
    failed_at timestamptz NOT NULL DEFAULT now(),
    failed_by text NOT NULL,
    execution_id uuid,
    sqlstate text,
    message text NOT NULL,
    detail text,
    hint text,
    position integer
);
";

/// One row of `pgfleet.schema_migrations`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedMigration {
    pub version: i64,
    pub name: String,
    pub checksum: Checksum,
    pub applied_at: DateTime<Utc>,
    pub applied_by: String,
    pub duration: Duration,
    /// The audit record of the run that applied it, when the caller gave one.
    pub execution_id: Option<Uuid>,
    pub no_transaction: bool,
}

/// The last failed attempt of a version that is not applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedFailure {
    pub version: i64,
    pub name: String,
    pub checksum: Checksum,
    pub failed_at: DateTime<Utc>,
    pub failed_by: String,
    pub execution_id: Option<Uuid>,
    /// What PostgreSQL said (position into the up file).
    pub failure: PgFailure,
}

/// What a target has, as read from its tracking tables.
#[derive(Debug, Clone, Default)]
pub(crate) struct TrackingRows {
    pub(crate) exists: bool,
    pub(crate) applied: Vec<AppliedMigration>,
    pub(crate) failures: Vec<RecordedFailure>,
}

/// Reading or writing the tracking tables failed.
#[derive(Debug, thiserror::Error)]
pub enum TrackingError {
    #[error("the tracking tables of the target: {0}")]
    Query(Box<PgFailure>),
    #[error("pgfleet.schema_migrations holds a checksum of {bytes} bytes for version {version}, not 32")]
    BadChecksum { version: i64, bytes: usize },
}

impl From<sqlx::Error> for TrackingError {
    fn from(error: sqlx::Error) -> Self {
        Self::Query(Box::new(PgFailure::from_sqlx(&error)))
    }
}

/// Reads both tables without writing anything (so it runs in a READ ONLY
/// transaction); a target pgfleet never migrated has neither and reads as empty.
pub(crate) async fn read(conn: &mut PgConnection) -> Result<TrackingRows, TrackingError> {
    let (applied_exists, failures_exist): (bool, bool) = sqlx::query_as(
        "SELECT to_regclass('pgfleet.schema_migrations') IS NOT NULL, \
                to_regclass('pgfleet.schema_migration_failures') IS NOT NULL",
    )
    .fetch_one(&mut *conn)
    .await?;
    let mut rows = TrackingRows {
        exists: applied_exists,
        ..TrackingRows::default()
    };
    if applied_exists {
        type Row = (
            i64,
            String,
            Vec<u8>,
            DateTime<Utc>,
            String,
            i64,
            Option<Uuid>,
            bool,
        );
        let applied: Vec<Row> = sqlx::query_as(
            "SELECT version, name, checksum, applied_at, applied_by, duration_ms, execution_id, no_transaction \
             FROM pgfleet.schema_migrations ORDER BY version",
        )
        .fetch_all(&mut *conn)
        .await?;
        for (version, name, checksum, applied_at, applied_by, duration_ms, execution_id, no_transaction) in
            applied
        {
            rows.applied.push(AppliedMigration {
                version,
                name,
                checksum: checksum_of(version, &checksum)?,
                applied_at,
                applied_by,
                duration: Duration::from_millis(u64::try_from(duration_ms).unwrap_or(0)),
                execution_id,
                no_transaction,
            });
        }
    }
    if failures_exist {
        type Row = (
            i64,
            String,
            Vec<u8>,
            DateTime<Utc>,
            String,
            Option<Uuid>,
            Option<String>,
            String,
            Option<String>,
            Option<String>,
            Option<i32>,
        );
        let failures: Vec<Row> = sqlx::query_as(
            "SELECT version, name, checksum, failed_at, failed_by, execution_id, sqlstate, message, detail, hint, position \
             FROM pgfleet.schema_migration_failures ORDER BY version",
        )
        .fetch_all(&mut *conn)
        .await?;
        for (
            version,
            name,
            checksum,
            failed_at,
            failed_by,
            execution_id,
            sqlstate,
            message,
            detail,
            hint,
            position,
        ) in failures
        {
            rows.failures.push(RecordedFailure {
                version,
                name,
                checksum: checksum_of(version, &checksum)?,
                failed_at,
                failed_by,
                execution_id,
                failure: PgFailure {
                    sqlstate,
                    message,
                    detail,
                    hint,
                    position: position.and_then(|p| u32::try_from(p).ok()),
                    ..PgFailure::default()
                },
            });
        }
    }
    Ok(rows)
}

fn checksum_of(version: i64, bytes: &[u8]) -> Result<Checksum, TrackingError> {
    Checksum::from_slice(bytes).ok_or(TrackingError::BadChecksum {
        version,
        bytes: bytes.len(),
    })
}

/// Creates the tracking schema and tables if they are missing. Call with
/// [`TARGET_LOCK`] held. Nothing is created when they exist, so a login
/// without CREATE on the database works once a DBA created the schema (and
/// `CREATE SCHEMA IF NOT EXISTS` checks that privilege even when the schema exists).
pub(crate) async fn ensure(conn: &mut PgConnection) -> Result<(), TrackingError> {
    use sqlx::Connection as _;
    let (schema, applied, failures): (bool, bool, bool) = sqlx::query_as(
        "SELECT to_regnamespace('pgfleet') IS NOT NULL, \
                to_regclass('pgfleet.schema_migrations') IS NOT NULL, \
                to_regclass('pgfleet.schema_migration_failures') IS NOT NULL",
    )
    .fetch_one(&mut *conn)
    .await?;
    if applied && failures {
        return Ok(());
    }
    let mut transaction = conn.begin().await?;
    if !schema {
        sqlx::raw_sql("CREATE SCHEMA IF NOT EXISTS pgfleet")
            .execute(&mut *transaction)
            .await?;
    }
    sqlx::raw_sql(CREATE_TABLES).execute(&mut *transaction).await?;
    transaction.commit().await?;
    Ok(())
}

/// What is written with an applied version.
pub(crate) struct NewRow<'a> {
    pub(crate) version: i64,
    pub(crate) name: &'a str,
    pub(crate) checksum: Checksum,
    pub(crate) by: &'a str,
    pub(crate) duration: Duration,
    pub(crate) execution_id: Option<Uuid>,
    pub(crate) no_transaction: bool,
}

/// Inserts the tracking row of an applied version and forgets its failed attempts.
pub(crate) async fn record_applied(conn: &mut PgConnection, row: &NewRow<'_>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO pgfleet.schema_migrations \
             (version, name, checksum, applied_by, duration_ms, execution_id, no_transaction) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(row.version)
    .bind(row.name)
    .bind(row.checksum.as_bytes().as_slice())
    .bind(row.by)
    .bind(i64::try_from(row.duration.as_millis()).unwrap_or(i64::MAX))
    .bind(row.execution_id)
    .bind(row.no_transaction)
    .execute(&mut *conn)
    .await?;
    sqlx::query("DELETE FROM pgfleet.schema_migration_failures WHERE version = $1")
        .bind(row.version)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Keeps the failed attempt of `row.version` (replacing an older one).
pub(crate) async fn record_failure(
    conn: &mut PgConnection,
    row: &NewRow<'_>,
    failure: &PgFailure,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO pgfleet.schema_migration_failures \
             (version, name, checksum, failed_by, execution_id, sqlstate, message, detail, hint, position) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
         ON CONFLICT (version) DO UPDATE SET \
             name = EXCLUDED.name, checksum = EXCLUDED.checksum, failed_at = now(), \
             failed_by = EXCLUDED.failed_by, execution_id = EXCLUDED.execution_id, \
             sqlstate = EXCLUDED.sqlstate, message = EXCLUDED.message, detail = EXCLUDED.detail, \
             hint = EXCLUDED.hint, position = EXCLUDED.position",
    )
    .bind(row.version)
    .bind(row.name)
    .bind(row.checksum.as_bytes().as_slice())
    .bind(row.by)
    .bind(row.execution_id)
    .bind(failure.sqlstate.as_deref())
    .bind(&failure.message)
    .bind(failure.detail.as_deref())
    .bind(failure.hint.as_deref())
    .bind(failure.position.and_then(|p| i32::try_from(p).ok()))
    .execute(&mut *conn)
    .await
    .map(drop)
}

/// Why the target lock was not obtained.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another pgfleet writer held the target for all of `waited`.
    #[error(
        "another pgfleet run holds this target's migration lock (waited {waited:?}); try again when it is done"
    )]
    Busy { waited: Duration },
    #[error("taking the migration lock: {0}")]
    Query(Box<PgFailure>),
}

/// Takes [`TARGET_LOCK`] for the session, waiting at most `wait`.
///
/// Polls `pg_try_advisory_lock` instead of blocking in `pg_advisory_lock`, so
/// no session setting (`lock_timeout`) of the caller's connection is changed
/// and a cancelled caller never leaves a lock request queued on the server.
pub(crate) async fn lock(conn: &mut PgConnection, wait: Duration) -> Result<Duration, LockError> {
    let started = Instant::now();
    let mut pause = Duration::from_millis(20);
    loop {
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, $2)")
            .bind(TARGET_LOCK.0)
            .bind(TARGET_LOCK.1)
            .fetch_one(&mut *conn)
            .await
            .map_err(|e| LockError::Query(Box::new(PgFailure::from_sqlx(&e))))?;
        if locked {
            return Ok(started.elapsed());
        }
        let waited = started.elapsed();
        if waited >= wait {
            return Err(LockError::Busy { waited });
        }
        tokio::time::sleep(pause.min(wait - waited)).await;
        pause = (pause * 2).min(Duration::from_millis(500));
    }
}

/// Releases [`TARGET_LOCK`]. A lost connection released it already, so a
/// failure here is only logged.
pub(crate) async fn unlock(conn: &mut PgConnection) {
    let released = sqlx::query_scalar::<_, bool>("SELECT pg_advisory_unlock($1, $2)")
        .bind(TARGET_LOCK.0)
        .bind(TARGET_LOCK.1)
        .fetch_one(&mut *conn)
        .await;
    match released {
        Ok(true) => {}
        Ok(false) => tracing::warn!("the migration lock was not held when releasing it"),
        Err(e) => tracing::debug!(error = %e, "releasing the migration lock failed (connection gone?)"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_lock_key_spells_pgfl_migr() {
        assert_eq!(super::TARGET_LOCK.0.to_be_bytes(), *b"pgfl");
        assert_eq!(super::TARGET_LOCK.1.to_be_bytes(), *b"migr");
    }
}
