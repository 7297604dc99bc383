//! Stored replication jobs: rows of `pgfleet.replication_jobs` in the history
//! store. The store only reads and writes; whether a job makes sense is
//! decided before it gets here ([`super::validate`]).

use std::time::Duration;

use chrono::{DateTime, Utc};
use pgfleet_registry::Target;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use sqlx::types::Json;
use uuid::Uuid;

use super::{Job, JobSpec, Mode};

/// The unique constraint on job names (migration 0004).
const NAME_CONSTRAINT: &str = "replication_jobs_name_key";

/// Columns every query returns, in [`JobRow`]'s shape. A macro so that
/// `concat!` keeps each statement a literal.
macro_rules! job_columns {
    () => {
        "id, name, source, targets, tables, sync_key, interval_ms, enabled, mode, \
         batch_size, overlap_ms, revision, created_at, updated_at, created_by, \
         (SELECT s.next_run_at FROM pgfleet.replication_job_state s \
          WHERE s.job_id = replication_jobs.id) AS next_run_at"
    };
}

/// Why a job could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum JobStoreError {
    /// Another job already has this name.
    #[error("a replication job named {0:?} already exists")]
    NameTaken(String),
    /// The job changed between being read and being written.
    #[error("replication job {0} was changed concurrently; read it again and retry")]
    Conflict(Uuid),
    /// A stored row does not decode (edited by hand, or a newer schema).
    #[error("replication job {id} is unreadable: {reason}")]
    Corrupt { id: Uuid, reason: String },
    /// The history store failed.
    #[error("history store: {0}")]
    Store(#[from] sqlx::Error),
}

/// Jobs in the history store. Cheap to clone (the pool is shared).
#[derive(Debug, Clone)]
pub struct JobStore {
    pool: PgPool,
}

/// `{"cloud": …, "database": …}` as stored in `source` and `targets`.
#[derive(Debug, Serialize, Deserialize)]
struct StoredTarget {
    cloud: String,
    database: String,
}

impl From<&Target> for StoredTarget {
    fn from(target: &Target) -> Self {
        Self {
            cloud: target.cloud.clone(),
            database: target.database.clone(),
        }
    }
}

impl From<StoredTarget> for Target {
    fn from(stored: StoredTarget) -> Self {
        Target::new(stored.cloud, stored.database)
    }
}

#[derive(sqlx::FromRow)]
struct JobRow {
    id: Uuid,
    name: String,
    source: Json<StoredTarget>,
    targets: Json<Vec<StoredTarget>>,
    tables: Vec<String>,
    sync_key: Option<String>,
    interval_ms: Option<i64>,
    enabled: bool,
    mode: String,
    batch_size: i32,
    overlap_ms: Option<i64>,
    revision: i64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    created_by: String,
    next_run_at: Option<DateTime<Utc>>,
}

impl JobRow {
    fn into_job(self) -> Result<Job, JobStoreError> {
        let id = self.id;
        let corrupt = |reason: String| JobStoreError::Corrupt { id, reason };
        let mode = Mode::parse(&self.mode).ok_or_else(|| corrupt(format!("unknown mode {:?}", self.mode)))?;
        let millis = |value: Option<i64>, column: &str| {
            value
                .map(|ms| {
                    u64::try_from(ms)
                        .map(Duration::from_millis)
                        .map_err(|_| corrupt(format!("negative {column}")))
                })
                .transpose()
        };
        let interval = millis(self.interval_ms, "interval_ms")?;
        let overlap = millis(self.overlap_ms, "overlap_ms")?;
        let batch_size =
            u32::try_from(self.batch_size).map_err(|_| corrupt("negative batch_size".to_owned()))?;
        Ok(Job {
            id,
            spec: JobSpec {
                name: self.name,
                source: self.source.0.into(),
                targets: self.targets.0.into_iter().map(Target::from).collect(),
                tables: self.tables,
                sync_key: self.sync_key,
                interval,
                enabled: self.enabled,
                mode,
                batch_size,
                overlap,
            },
            revision: self.revision,
            created_at: self.created_at,
            updated_at: self.updated_at,
            created_by: self.created_by,
            next_run_at: self.next_run_at,
        })
    }
}

/// Milliseconds for a bigint column. Validation keeps durations to whole
/// milliseconds far below the limit; saturating only guards the cast.
fn millis(duration: Option<Duration>) -> Option<i64> {
    duration.map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A stored name taken by another job becomes [`JobStoreError::NameTaken`].
fn name_taken(error: sqlx::Error, name: &str) -> JobStoreError {
    match &error {
        sqlx::Error::Database(db) if db.constraint() == Some(NAME_CONSTRAINT) => {
            JobStoreError::NameTaken(name.to_owned())
        }
        _ => JobStoreError::Store(error),
    }
}

impl JobStore {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Stores a new job; its id is assigned here.
    pub async fn create(&self, spec: &JobSpec, created_by: &str) -> Result<Job, JobStoreError> {
        let row: JobRow = sqlx::query_as(concat!(
            "INSERT INTO pgfleet.replication_jobs ",
            "(id, name, source, targets, tables, sync_key, interval_ms, enabled, mode, batch_size, ",
            "overlap_ms, created_by) ",
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING ",
            job_columns!()
        ))
        // Time-ordered ids keep the primary key index append-mostly.
        .bind(Uuid::now_v7())
        .bind_spec(spec)
        .bind(created_by)
        .fetch_one(&self.pool)
        .await
        .map_err(|error| name_taken(error, &spec.name))?;
        row.into_job()
    }

    /// The job with this id, if any.
    pub async fn get(&self, id: Uuid) -> Result<Option<Job>, JobStoreError> {
        let row: Option<JobRow> = sqlx::query_as(concat!(
            "SELECT ",
            job_columns!(),
            " FROM pgfleet.replication_jobs WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(JobRow::into_job).transpose()
    }

    /// The job with this name, if any.
    pub async fn get_by_name(&self, name: &str) -> Result<Option<Job>, JobStoreError> {
        let row: Option<JobRow> = sqlx::query_as(concat!(
            "SELECT ",
            job_columns!(),
            " FROM pgfleet.replication_jobs WHERE name = $1"
        ))
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        row.map(JobRow::into_job).transpose()
    }

    /// True when some job has this name.
    pub async fn name_exists(&self, name: &str) -> Result<bool, JobStoreError> {
        let exists =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pgfleet.replication_jobs WHERE name = $1)")
                .bind(name)
                .fetch_one(&self.pool)
                .await?;
        Ok(exists)
    }

    /// Up to `limit` jobs ordered by name, after the name `after` (the last
    /// of the previous page). Names are unique, so the name alone is the key.
    pub async fn list(&self, after: Option<&str>, limit: i64) -> Result<Vec<Job>, JobStoreError> {
        let rows: Vec<JobRow> = sqlx::query_as(concat!(
            "SELECT ",
            job_columns!(),
            " FROM pgfleet.replication_jobs ",
            "WHERE ($1::text IS NULL OR name > $1::text) ORDER BY name LIMIT $2"
        ))
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(JobRow::into_job).collect()
    }

    /// Replaces the job's spec if it is still at `revision` (as read before
    /// the new spec was checked against the catalogs, which happens outside
    /// any transaction). `None` when the job no longer exists;
    /// [`JobStoreError::Conflict`] when someone changed it meanwhile.
    pub async fn update(
        &self,
        id: Uuid,
        revision: i64,
        spec: &JobSpec,
    ) -> Result<Option<Job>, JobStoreError> {
        let row: Option<JobRow> = sqlx::query_as(concat!(
            "UPDATE pgfleet.replication_jobs SET name = $3, source = $4, targets = $5, tables = $6, ",
            "sync_key = $7, interval_ms = $8, enabled = $9, mode = $10, batch_size = $11, overlap_ms = $12, ",
            "revision = revision + 1, updated_at = now() ",
            "WHERE id = $1 AND revision = $2 RETURNING ",
            job_columns!()
        ))
        .bind(id)
        .bind(revision)
        .bind_spec(spec)
        .fetch_optional(&self.pool)
        .await
        .map_err(|error| name_taken(error, &spec.name))?;
        match row {
            Some(row) => row.into_job().map(Some),
            None => {
                let exists: bool = sqlx::query_scalar(
                    "SELECT EXISTS (SELECT 1 FROM pgfleet.replication_jobs WHERE id = $1)",
                )
                .bind(id)
                .fetch_one(&self.pool)
                .await?;
                if exists {
                    Err(JobStoreError::Conflict(id))
                } else {
                    Ok(None)
                }
            }
        }
    }

    /// Deletes the job and (by cascade) its watermarks; false when there was
    /// no such job.
    pub async fn delete(&self, id: Uuid) -> Result<bool, JobStoreError> {
        let deleted = sqlx::query("DELETE FROM pgfleet.replication_jobs WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(deleted.rows_affected() > 0)
    }
}

/// Binds a job's eleven stored fields in column order (`name` … `overlap_ms`),
/// the same for insert and update.
trait BindSpec<'q> {
    fn bind_spec(self, spec: &'q JobSpec) -> Self;
}

impl<'q, O> BindSpec<'q> for sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments> {
    fn bind_spec(self, spec: &'q JobSpec) -> Self {
        self.bind(&spec.name)
            .bind(Json(StoredTarget::from(&spec.source)))
            .bind(Json(
                spec.targets.iter().map(StoredTarget::from).collect::<Vec<_>>(),
            ))
            .bind(&spec.tables)
            .bind(&spec.sync_key)
            .bind(millis(spec.interval))
            .bind(spec.enabled)
            .bind(spec.mode.as_str())
            .bind(i32::try_from(spec.batch_size).unwrap_or(i32::MAX))
            .bind(millis(spec.overlap))
    }
}
