//! Where stored jobs' runs stand, in the history store: per job (last run,
//! next scheduled run, why a run could not start) and per (table, target)
//! (watermark and resume position, last run, last error); and the job lock
//! that lets exactly one runner at a time run a job across every server
//! replica sharing the store.
//!
//! The lock is a session-level PostgreSQL advisory lock held on a dedicated
//! connection for the whole run (not a pooled one: a run may last hours and
//! must not take a connection from the requests). A lock, unlike a "running"
//! flag, cannot outlive its holder: when the server dies or its connection
//! breaks, PostgreSQL releases it. Whether a job runs is read from
//! `pg_locks`, for the same reason.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use pgfleet_registry::Target;
use sqlx::postgres::PgConnectOptions;
use sqlx::types::Json;
use sqlx::{ConnectOptions as _, Connection as _, PgConnection, PgPool};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::copy::Position;
use crate::advisory_locks::{REPLICATION_JOB_SEED as LOCK_SEED, replication_job_key};
use crate::audit::RecordedError;

/// Longest wait for one bookkeeping statement of a run; a history store that
/// slow only delays watermarks (the next run re-copies from the last saved).
const STATE_TIMEOUT: Duration = Duration::from_secs(10);

/// How a run, or one (table, target) of it, ended, as stored in
/// `last_outcome` (a `ReplicationOutcome` name without its prefix).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredOutcome {
    Running,
    Succeeded,
    Partial,
    Failed,
    Cancelled,
}

impl StoredOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            StoredOutcome::Running => "RUNNING",
            StoredOutcome::Succeeded => "SUCCEEDED",
            StoredOutcome::Partial => "PARTIAL",
            StoredOutcome::Failed => "FAILED",
            StoredOutcome::Cancelled => "CANCELLED",
        }
    }

    pub fn parse(stored: &str) -> Option<Self> {
        [
            StoredOutcome::Running,
            StoredOutcome::Succeeded,
            StoredOutcome::Partial,
            StoredOutcome::Failed,
            StoredOutcome::Cancelled,
        ]
        .into_iter()
        .find(|outcome| outcome.as_str() == stored)
    }
}

/// A job's last run and next scheduled run.
#[derive(Debug, Clone, Default, sqlx::FromRow)]
pub struct JobState {
    pub job_id: Uuid,
    pub last_run_id: Option<Uuid>,
    pub last_run_started_at: Option<DateTime<Utc>>,
    pub last_run_finished_at: Option<DateTime<Utc>>,
    pub last_outcome: Option<String>,
    pub last_error: Option<Json<RecordedError>>,
    pub next_run_at: Option<DateTime<Utc>>,
}

/// One (table, target) of a job: its watermark and last run.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PairState {
    pub job_id: Uuid,
    pub table_name: String,
    pub cloud: String,
    pub database: String,
    pub watermark: Option<String>,
    pub last_key: Option<Vec<String>>,
    pub last_run_id: Option<Uuid>,
    pub last_run_started_at: Option<DateTime<Utc>>,
    pub last_run_finished_at: Option<DateTime<Utc>>,
    pub last_outcome: Option<String>,
    pub last_run_rows_written: i64,
    pub last_error: Option<Json<RecordedError>>,
    pub last_error_at: Option<DateTime<Utc>>,
}

impl PairState {
    pub fn target(&self) -> Target {
        Target::new(&self.cloud, &self.database)
    }

    /// Where the next incremental run of this pair resumes; `None` before
    /// the first committed batch.
    pub fn position(&self) -> Option<Position> {
        self.last_key.as_ref().map(|key| Position {
            sync_key: self.watermark.clone(),
            primary_key: key.clone(),
        })
    }
}

/// Run bookkeeping in the history store. Cheap to clone.
#[derive(Debug, Clone)]
pub struct RunStore {
    pool: PgPool,
}

impl RunStore {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Every stored (table, target) of these jobs.
    pub async fn pairs(&self, job_ids: &[Uuid]) -> Result<Vec<PairState>, sqlx::Error> {
        sqlx::query_as(
            "SELECT job_id, table_name, cloud, database, watermark, last_key, last_run_id, \
             last_run_started_at, last_run_finished_at, last_outcome, last_run_rows_written, \
             last_error, last_error_at \
             FROM pgfleet.replication_watermarks WHERE job_id = ANY($1) \
             ORDER BY job_id, table_name, cloud, database",
        )
        .bind(job_ids)
        .fetch_all(&self.pool)
        .await
    }

    /// The state rows of these jobs, by job.
    pub async fn jobs(&self, job_ids: &[Uuid]) -> Result<HashMap<Uuid, JobState>, sqlx::Error> {
        let rows: Vec<JobState> = sqlx::query_as(
            "SELECT job_id, last_run_id, last_run_started_at, last_run_finished_at, last_outcome, \
             last_error, next_run_at FROM pgfleet.replication_job_state WHERE job_id = ANY($1)",
        )
        .bind(job_ids)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|row| (row.job_id, row)).collect())
    }

    /// Which of these jobs some runner (on any replica) holds the lock of.
    pub async fn running(&self, job_ids: &[Uuid]) -> Result<HashSet<Uuid>, sqlx::Error> {
        // A bigint advisory key shows in pg_locks as classid (high 32 bits),
        // objid (low 32 bits) and objsubid 1.
        let rows: Vec<(Uuid,)> = sqlx::query_as(concat!(
            "SELECT j.id FROM unnest($1::uuid[]) AS j(id) \
             CROSS JOIN LATERAL (SELECT ",
            replication_job_key!("j.id", "$2"),
            " AS key) k \
             WHERE EXISTS (SELECT 1 FROM pg_catalog.pg_locks l \
                 WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 \
                   AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database()) \
                   AND l.classid::bigint = ((k.key >> 32) & 4294967295) \
                   AND l.objid::bigint = (k.key & 4294967295))",
        ))
        .bind(job_ids)
        .bind(LOCK_SEED)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|(id,)| id).collect())
    }

    /// Enabled jobs with an interval whose next run is due, soonest first.
    pub async fn due_jobs(&self, limit: i64) -> Result<Vec<Uuid>, sqlx::Error> {
        let rows: Vec<(Uuid,)> = sqlx::query_as(
            "SELECT j.id FROM pgfleet.replication_jobs j \
             LEFT JOIN pgfleet.replication_job_state s ON s.job_id = j.id \
             WHERE j.enabled AND j.interval_ms IS NOT NULL \
               AND (s.next_run_at IS NULL OR s.next_run_at <= now()) \
             ORDER BY s.next_run_at NULLS FIRST, j.id LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|(id,)| id).collect())
    }

    /// Under the job's lock: true (and the next run set one interval from
    /// now) when the job is still enabled and due. Read again under the lock
    /// because another replica may have run it since the due list was read.
    pub async fn claim_due(&self, job_id: Uuid) -> Result<bool, sqlx::Error> {
        let claimed: Option<(Uuid,)> = sqlx::query_as(
            "INSERT INTO pgfleet.replication_job_state AS s (job_id, next_run_at) \
             SELECT j.id, now() + j.interval_ms * interval '1 millisecond' \
             FROM pgfleet.replication_jobs j \
             WHERE j.id = $1 AND j.enabled AND j.interval_ms IS NOT NULL \
             ON CONFLICT (job_id) DO UPDATE SET next_run_at = EXCLUDED.next_run_at \
             WHERE s.next_run_at IS NULL OR s.next_run_at <= now() \
             RETURNING s.job_id",
        )
        .bind(job_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(claimed.is_some())
    }

    /// A run starts: the job and each of its (table, target) pairs show it
    /// as RUNNING (watermarks kept).
    pub async fn run_started(
        &self,
        job_id: Uuid,
        run_id: Uuid,
        tables: &[String],
        targets: &[Target],
    ) -> Result<(), sqlx::Error> {
        let mut pair_tables = Vec::new();
        let mut clouds = Vec::new();
        let mut databases = Vec::new();
        for table in tables {
            for target in targets {
                pair_tables.push(table.clone());
                clouds.push(target.cloud.clone());
                databases.push(target.database.clone());
            }
        }
        let mut transaction = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO pgfleet.replication_job_state AS s \
             (job_id, last_run_id, last_run_started_at, last_outcome) VALUES ($1, $2, now(), 'RUNNING') \
             ON CONFLICT (job_id) DO UPDATE SET last_run_id = $2, last_run_started_at = now(), \
             last_run_finished_at = NULL, last_outcome = 'RUNNING', last_error = NULL",
        )
        .bind(job_id)
        .bind(run_id)
        .execute(&mut *transaction)
        .await?;
        sqlx::query(
            "INSERT INTO pgfleet.replication_watermarks AS w \
             (job_id, table_name, cloud, database, last_run_id, last_run_started_at, last_outcome) \
             SELECT $1, p.table_name, p.cloud, p.database, $2, now(), 'RUNNING' \
             FROM unnest($3::text[], $4::text[], $5::text[]) AS p(table_name, cloud, database) \
             ON CONFLICT (job_id, table_name, cloud, database) DO UPDATE SET last_run_id = $2, \
             last_run_started_at = now(), last_run_finished_at = NULL, last_outcome = 'RUNNING', \
             last_run_rows_written = 0",
        )
        .bind(job_id)
        .bind(run_id)
        .bind(&pair_tables)
        .bind(&clouds)
        .bind(&databases)
        .execute(&mut *transaction)
        .await?;
        transaction.commit().await
    }

    /// A batch committed on the target: the pair resumes after `position`.
    pub async fn save_position(
        &self,
        job_id: Uuid,
        table: &str,
        target: &Target,
        position: &Position,
        rows_written: u64,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE pgfleet.replication_watermarks SET watermark = $5, last_key = $6, \
             last_run_rows_written = $7, updated_at = now() \
             WHERE job_id = $1 AND table_name = $2 AND cloud = $3 AND database = $4",
        )
        .bind(job_id)
        .bind(table)
        .bind(&target.cloud)
        .bind(&target.database)
        .bind(&position.sync_key)
        .bind(&position.primary_key)
        .bind(i64::try_from(rows_written).unwrap_or(i64::MAX))
        .execute(&self.pool)
        .await
        .map(drop)
    }

    /// A (table, target) of run `run_id` ended. A success clears the pair's
    /// last error, a failure replaces it, a cancellation leaves it.
    #[allow(clippy::too_many_arguments)] // one row's columns
    pub async fn pair_finished(
        &self,
        job_id: Uuid,
        run_id: Uuid,
        table: &str,
        target: &Target,
        outcome: StoredOutcome,
        rows_written: u64,
        error: Option<&RecordedError>,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE pgfleet.replication_watermarks SET last_run_finished_at = now(), last_outcome = $6, \
             last_run_rows_written = $7, \
             last_error = CASE WHEN $6 = 'SUCCEEDED' THEN NULL ELSE coalesce($8, last_error) END, \
             last_error_at = CASE WHEN $6 = 'SUCCEEDED' THEN NULL WHEN $8 IS NOT NULL THEN now() \
                             ELSE last_error_at END \
             WHERE job_id = $1 AND table_name = $2 AND cloud = $3 AND database = $4 AND last_run_id = $5",
        )
        .bind(job_id)
        .bind(table)
        .bind(&target.cloud)
        .bind(&target.database)
        .bind(run_id)
        .bind(outcome.as_str())
        .bind(i64::try_from(rows_written).unwrap_or(i64::MAX))
        .bind(error.map(Json))
        .execute(&self.pool)
        .await
        .map(drop)
    }

    /// Run `run_id` ended (unless a later run already replaced it).
    pub async fn run_finished(
        &self,
        job_id: Uuid,
        run_id: Uuid,
        outcome: StoredOutcome,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE pgfleet.replication_job_state SET last_run_finished_at = now(), last_outcome = $3 \
             WHERE job_id = $1 AND last_run_id = $2",
        )
        .bind(job_id)
        .bind(run_id)
        .bind(outcome.as_str())
        .execute(&self.pool)
        .await
        .map(drop)
    }

    /// A run of the job could not start (its source table no longer fits,
    /// the source is unreachable…): shown by GetStatus as a failed run.
    pub async fn run_refused(&self, job_id: Uuid, error: &RecordedError) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO pgfleet.replication_job_state AS s \
             (job_id, last_run_id, last_run_started_at, last_run_finished_at, last_outcome, last_error) \
             VALUES ($1, NULL, now(), now(), 'FAILED', $2) \
             ON CONFLICT (job_id) DO UPDATE SET last_run_id = NULL, last_run_started_at = now(), \
             last_run_finished_at = now(), last_outcome = 'FAILED', last_error = $2",
        )
        .bind(job_id)
        .bind(Json(error))
        .execute(&self.pool)
        .await
        .map(drop)
    }

    /// Forgets the positions of pairs a job no longer has, and every
    /// position when what they are positions of changed (source, mode or
    /// sync key): the next run starts those afresh.
    pub async fn forget_positions(
        &self,
        job_id: Uuid,
        tables: &[String],
        targets: &[Target],
        everything: bool,
    ) -> Result<(), sqlx::Error> {
        let clouds: Vec<&str> = targets.iter().map(|t| t.cloud.as_str()).collect();
        let databases: Vec<&str> = targets.iter().map(|t| t.database.as_str()).collect();
        sqlx::query(
            "DELETE FROM pgfleet.replication_watermarks w WHERE w.job_id = $1 AND ($2 \
             OR NOT (w.table_name = ANY($3)) \
             OR NOT EXISTS (SELECT 1 FROM unnest($4::text[], $5::text[]) AS t(cloud, database) \
                            WHERE t.cloud = w.cloud AND t.database = w.database))",
        )
        .bind(job_id)
        .bind(everything)
        .bind(tables)
        .bind(&clouds)
        .bind(&databases)
        .execute(&self.pool)
        .await
        .map(drop)
    }

    /// Takes the job's lock on a connection of its own; `None` when another
    /// runner holds it.
    pub async fn try_lock(&self, job_id: Uuid) -> Result<Option<JobLock>, sqlx::Error> {
        let options: PgConnectOptions = (*self.pool.connect_options()).clone();
        let mut connection = options
            .application_name("pgfleet-replication-lock")
            .connect()
            .await?;
        let locked: bool = sqlx::query_scalar(concat!(
            "SELECT pg_try_advisory_lock(",
            replication_job_key!("$1", "$2"),
            ")"
        ))
        .bind(job_id.to_string())
        .bind(LOCK_SEED)
        .fetch_one(&mut connection)
        .await?;
        if locked {
            Ok(Some(JobLock { connection, job_id }))
        } else {
            // Closing the session releases nothing of ours; errors do not matter.
            let _ = connection.close().await;
            Ok(None)
        }
    }
}

/// A job's lock, held by its session until [`JobLock::hold`] ends.
#[derive(Debug)]
pub struct JobLock {
    connection: PgConnection,
    job_id: Uuid,
}

/// Why [`JobLock::hold`] stopped a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    Disabled,
    Deleted,
    /// The lock's session broke or did not answer: another replica may take
    /// the job now, so this runner stops.
    LockLost,
}

impl JobLock {
    /// Releases the lock and closes its session.
    pub async fn release(mut self) {
        // Closing the session releases the lock; unlocking first says so
        // explicitly and frees it even if the close is slow.
        let _ = tokio::time::timeout(
            STATE_TIMEOUT,
            sqlx::query(concat!(
                "SELECT pg_advisory_unlock(",
                replication_job_key!("$1", "$2"),
                ")"
            ))
            .bind(self.job_id.to_string())
            .bind(LOCK_SEED)
            .execute(&mut self.connection),
        )
        .await;
        let _ = self.connection.close().await;
    }

    /// Holds the lock until `done` fires, then releases it. Every
    /// `interval` it checks, on the lock's own session, that the job still
    /// exists and (if it was enabled when the run started) is still enabled;
    /// otherwise, or when the session fails, it fires `stop` so the copies
    /// end at their next batch boundary, and keeps holding the lock until
    /// `done`, so no other runner starts while they finish.
    pub async fn hold(
        mut self,
        was_enabled: bool,
        interval: Duration,
        done: CancellationToken,
        stop: CancellationToken,
    ) -> Option<StopReason> {
        let mut reason = None;
        while reason.is_none() {
            tokio::select! {
                () = done.cancelled() => break,
                () = tokio::time::sleep(interval) => {}
            }
            let check = sqlx::query_scalar("SELECT enabled FROM pgfleet.replication_jobs WHERE id = $1")
                .bind(self.job_id)
                .fetch_optional(&mut self.connection);
            reason = match tokio::time::timeout(STATE_TIMEOUT, check).await {
                Ok(Ok(Some(true))) => None,
                Ok(Ok(Some(false))) => was_enabled.then_some(StopReason::Disabled),
                Ok(Ok(None)) => Some(StopReason::Deleted),
                Ok(Err(_)) | Err(_) => Some(StopReason::LockLost),
            };
            if let Some(reason) = reason {
                tracing::info!(job = %self.job_id, ?reason, "replication run stopping at the next batch boundary");
                stop.cancel();
            }
        }
        done.cancelled().await;
        self.release().await;
        reason
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_outcomes_round_trip() {
        for outcome in [
            StoredOutcome::Running,
            StoredOutcome::Succeeded,
            StoredOutcome::Partial,
            StoredOutcome::Failed,
            StoredOutcome::Cancelled,
        ] {
            assert_eq!(StoredOutcome::parse(outcome.as_str()), Some(outcome));
        }
        assert_eq!(StoredOutcome::parse("running"), None);
    }
}
