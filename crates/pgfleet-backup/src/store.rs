//! Policies and the backup catalog in pgfleet's history store (migration
//! `0011_backups.sql`).

use chrono::{DateTime, Utc};
use pgfleet_registry::Target;
use sqlx::PgPool;
use sqlx::types::Json;
use uuid::Uuid;

use crate::BackupError;
use crate::policy::{DumpFormat, Policy, PolicySpec};

/// `backup_policies` rows.
#[derive(Debug, Clone)]
pub struct PolicyStore {
    pool: PgPool,
}

#[derive(sqlx::FromRow)]
struct PolicyRow {
    id: Uuid,
    spec: Json<PolicySpec>,
    revision: i64,
    created_by: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    next_run_at: Option<DateTime<Utc>>,
}

impl From<PolicyRow> for Policy {
    fn from(row: PolicyRow) -> Self {
        Policy {
            id: row.id,
            spec: row.spec.0,
            revision: row.revision,
            created_by: row.created_by,
            created_at: row.created_at,
            updated_at: row.updated_at,
            next_run_at: row.next_run_at,
        }
    }
}

// Column lists are constants; `AssertSqlSafe` below only ever wraps them.
const POLICY_COLUMNS: &str = "id, spec, revision, created_by, created_at, updated_at, next_run_at";

fn taken(error: sqlx::Error, name: &str) -> BackupError {
    if error
        .as_database_error()
        .is_some_and(|e| e.code().as_deref() == Some("23505"))
    {
        BackupError::AlreadyExists(format!("a backup policy named {name:?} already exists"))
    } else {
        BackupError::HistoryStore(error)
    }
}

impl PolicyStore {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    pub async fn create(&self, spec: &PolicySpec, created_by: &str) -> Result<Policy, BackupError> {
        let row: PolicyRow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "INSERT INTO pgfleet.backup_policies (id, name, spec, created_by, next_run_at) \
             VALUES ($1, $2, $3, $4, $5) RETURNING {POLICY_COLUMNS}"
        )))
        .bind(Uuid::now_v7())
        .bind(&spec.name)
        .bind(Json(spec))
        .bind(created_by)
        .bind(spec.next_run_after(Utc::now()))
        .fetch_one(&self.pool)
        .await
        .map_err(|error| taken(error, &spec.name))?;
        Ok(row.into())
    }

    /// Replaces the spec if the stored revision is still `revision`:
    /// `Aborted` when someone changed it since, `NotFound` when it is gone.
    pub async fn update(&self, id: Uuid, revision: i64, spec: &PolicySpec) -> Result<Policy, BackupError> {
        let row: Option<PolicyRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "UPDATE pgfleet.backup_policies SET name = $3, spec = $4, revision = revision + 1, \
             updated_at = now(), next_run_at = $5 WHERE id = $1 AND revision = $2 RETURNING {POLICY_COLUMNS}"
        )))
        .bind(id)
        .bind(revision)
        .bind(&spec.name)
        .bind(Json(spec))
        .bind(spec.next_run_after(Utc::now()))
        .fetch_optional(&self.pool)
        .await
        .map_err(|error| taken(error, &spec.name))?;
        match row {
            Some(row) => Ok(row.into()),
            None if self.get(id).await?.is_some() => Err(BackupError::Aborted(format!(
                "backup policy {id} changed since it was read; read it again"
            ))),
            None => Err(not_found(id)),
        }
    }

    pub async fn delete(&self, id: Uuid) -> Result<bool, BackupError> {
        let deleted = sqlx::query("DELETE FROM pgfleet.backup_policies WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(deleted.rows_affected() == 1)
    }

    pub async fn get(&self, id: Uuid) -> Result<Option<Policy>, BackupError> {
        let row: Option<PolicyRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {POLICY_COLUMNS} FROM pgfleet.backup_policies WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(Policy::from))
    }

    /// Policies by name after `after`, at most `limit`.
    pub async fn list(&self, after: Option<&str>, limit: i64) -> Result<Vec<Policy>, BackupError> {
        let rows: Vec<PolicyRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {POLICY_COLUMNS} FROM pgfleet.backup_policies WHERE ($1::text IS NULL OR name > $1) \
             ORDER BY name LIMIT $2"
        )))
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(Policy::from).collect())
    }

    /// Ids of policies whose next run is due at `now`.
    pub async fn due(&self, now: DateTime<Utc>) -> Result<Vec<Uuid>, BackupError> {
        Ok(sqlx::query_scalar(
            "SELECT id FROM pgfleet.backup_policies WHERE next_run_at <= $1 ORDER BY next_run_at",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Moves the next run of `id` (under its lock, before a scheduled run).
    pub async fn set_next_run(&self, id: Uuid, next: Option<DateTime<Utc>>) -> Result<(), BackupError> {
        sqlx::query("UPDATE pgfleet.backup_policies SET next_run_at = $2 WHERE id = $1")
            .bind(id)
            .bind(next)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

pub fn not_found(id: Uuid) -> BackupError {
    BackupError::NotFound(format!("no backup policy {id}"))
}

/// Where a backup stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackupStatus {
    Running,
    Succeeded,
    Failed,
}

impl BackupStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            BackupStatus::Running => "RUNNING",
            BackupStatus::Succeeded => "SUCCEEDED",
            BackupStatus::Failed => "FAILED",
        }
    }

    fn parse(text: &str) -> Self {
        match text {
            "SUCCEEDED" => BackupStatus::Succeeded,
            "FAILED" => BackupStatus::Failed,
            _ => BackupStatus::Running,
        }
    }
}

/// One backup of one target, as catalogued.
#[derive(Debug, Clone)]
pub struct BackupRecord {
    pub id: Uuid,
    pub policy_id: Option<Uuid>,
    pub policy_name: String,
    pub target: Target,
    pub status: BackupStatus,
    pub format: DumpFormat,
    pub encrypted: bool,
    pub object_key: String,
    pub manifest_key: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub raw_bytes: u64,
    pub compressed_bytes: u64,
    pub stored_bytes: u64,
    pub stored_sha256: String,
    pub raw_sha256: String,
    pub server_version: String,
    pub pg_dump_version: String,
    pub execution_id: Uuid,
    pub error: String,
}

#[derive(sqlx::FromRow)]
struct BackupRow {
    id: Uuid,
    policy_id: Option<Uuid>,
    policy_name: String,
    cloud: String,
    database: String,
    status: String,
    format: String,
    encrypted: bool,
    object_key: String,
    manifest_key: String,
    started_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
    raw_bytes: i64,
    compressed_bytes: i64,
    stored_bytes: i64,
    stored_sha256: String,
    raw_sha256: String,
    server_version: String,
    pg_dump_version: String,
    execution_id: Uuid,
    error: String,
}

const BACKUP_COLUMNS: &str = "id, policy_id, policy_name, cloud, database, status, format, encrypted, object_key, \
     manifest_key, started_at, finished_at, raw_bytes, compressed_bytes, stored_bytes, stored_sha256, raw_sha256, \
     server_version, pg_dump_version, execution_id, error";

impl From<BackupRow> for BackupRecord {
    fn from(row: BackupRow) -> Self {
        let size = |n: i64| u64::try_from(n).unwrap_or(0);
        BackupRecord {
            id: row.id,
            policy_id: row.policy_id,
            policy_name: row.policy_name,
            target: Target::new(row.cloud, row.database),
            status: BackupStatus::parse(&row.status),
            format: DumpFormat::parse(&row.format).unwrap_or_default(),
            encrypted: row.encrypted,
            object_key: row.object_key,
            manifest_key: row.manifest_key,
            started_at: row.started_at,
            finished_at: row.finished_at,
            raw_bytes: size(row.raw_bytes),
            compressed_bytes: size(row.compressed_bytes),
            stored_bytes: size(row.stored_bytes),
            stored_sha256: row.stored_sha256,
            raw_sha256: row.raw_sha256,
            server_version: row.server_version,
            pg_dump_version: row.pg_dump_version,
            execution_id: row.execution_id,
            error: row.error,
        }
    }
}

/// Filters of ListBackups (empty: any).
#[derive(Debug, Clone, Default)]
pub struct BackupFilter {
    pub cloud: String,
    pub database: String,
    pub policy_id: Option<Uuid>,
    /// Failed backups too (otherwise only SUCCEEDED ones are listed).
    pub include_failed: bool,
}

/// `backups` rows.
#[derive(Debug, Clone)]
pub struct BackupCatalog {
    pool: PgPool,
}

fn signed(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl BackupCatalog {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    pub async fn insert_running(&self, record: &BackupRecord) -> Result<(), BackupError> {
        sqlx::query(
            "INSERT INTO pgfleet.backups (id, policy_id, policy_name, cloud, database, status, format, encrypted, \
             object_key, manifest_key, started_at, execution_id) \
             VALUES ($1, $2, $3, $4, $5, 'RUNNING', $6, $7, $8, $9, $10, $11)",
        )
        .bind(record.id)
        .bind(record.policy_id)
        .bind(&record.policy_name)
        .bind(&record.target.cloud)
        .bind(&record.target.database)
        .bind(record.format.as_str())
        .bind(record.encrypted)
        .bind(&record.object_key)
        .bind(&record.manifest_key)
        .bind(record.started_at)
        .bind(record.execution_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Closes a RUNNING row as SUCCEEDED with what was measured.
    pub async fn succeeded(&self, record: &BackupRecord) -> Result<(), BackupError> {
        sqlx::query(
            "UPDATE pgfleet.backups SET status = 'SUCCEEDED', finished_at = $2, raw_bytes = $3, \
             compressed_bytes = $4, stored_bytes = $5, stored_sha256 = $6, raw_sha256 = $7, server_version = $8, \
             pg_dump_version = $9 WHERE id = $1 AND status = 'RUNNING'",
        )
        .bind(record.id)
        .bind(record.finished_at)
        .bind(signed(record.raw_bytes))
        .bind(signed(record.compressed_bytes))
        .bind(signed(record.stored_bytes))
        .bind(&record.stored_sha256)
        .bind(&record.raw_sha256)
        .bind(&record.server_version)
        .bind(&record.pg_dump_version)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn failed(&self, id: Uuid, error: &str) -> Result<(), BackupError> {
        sqlx::query(
            "UPDATE pgfleet.backups SET status = 'FAILED', finished_at = now(), error = $2 \
             WHERE id = $1 AND status = 'RUNNING'",
        )
        .bind(id)
        .bind(error)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn get(&self, id: Uuid) -> Result<Option<BackupRecord>, BackupError> {
        let row: Option<BackupRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {BACKUP_COLUMNS} FROM pgfleet.backups WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(BackupRecord::from))
    }

    /// Newest first; `after` is the (started_at, id) of the previous page's last.
    pub async fn list(
        &self,
        filter: &BackupFilter,
        after: Option<(DateTime<Utc>, Uuid)>,
        limit: i64,
    ) -> Result<Vec<BackupRecord>, BackupError> {
        let rows: Vec<BackupRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {BACKUP_COLUMNS} FROM pgfleet.backups \
             WHERE ($1 = '' OR cloud = $1) AND ($2 = '' OR database = $2) \
             AND ($3::uuid IS NULL OR policy_id = $3) \
             AND (status = 'SUCCEEDED' OR ($4 AND status = 'FAILED')) \
             AND ($5::timestamptz IS NULL OR (started_at, id) < ($5, $6)) \
             ORDER BY started_at DESC, id DESC LIMIT $7"
        )))
        .bind(&filter.cloud)
        .bind(&filter.database)
        .bind(filter.policy_id)
        .bind(filter.include_failed)
        .bind(after.map(|(at, _)| at))
        .bind(after.map(|(_, id)| id))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(BackupRecord::from).collect())
    }

    /// Every backup of `target` (any status but RUNNING), newest first.
    pub async fn of_target(
        &self,
        target: &Target,
        policy_id: Option<Uuid>,
    ) -> Result<Vec<BackupRecord>, BackupError> {
        let rows: Vec<BackupRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {BACKUP_COLUMNS} FROM pgfleet.backups WHERE cloud = $1 AND database = $2 \
             AND ($3::uuid IS NULL OR policy_id = $3) AND status <> 'RUNNING' \
             ORDER BY started_at DESC, id DESC"
        )))
        .bind(&target.cloud)
        .bind(&target.database)
        .bind(policy_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(BackupRecord::from).collect())
    }

    pub async fn delete(&self, id: Uuid) -> Result<bool, BackupError> {
        let deleted = sqlx::query("DELETE FROM pgfleet.backups WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(deleted.rows_affected() == 1)
    }
}
