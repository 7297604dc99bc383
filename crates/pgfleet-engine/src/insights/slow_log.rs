//! The slow-query log: every target of a pgfleet execution (reads included)
//! whose duration reaches `insights.slow_query_threshold`, kept in
//! `pgfleet.slow_queries` (migration `0012_insights.sql`).
//!
//! Only the normalized text is kept: libpg_query's normalization, then the
//! scanner's literal replacement over it (libpg_query leaves the values of
//! `SET` statements alone), so no value or credential reaches the log.
//! Recording happens on a task of its own after the target finished: it
//! never slows or fails the execution it describes.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use pgfleet_config::InsightsConfig;
use pgfleet_registry::Target;
use sqlx::PgPool;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::identity::{Identity, Role};
use crate::query::{Plan, TargetOutcome};
use crate::{Observer, RequestError};

/// Entries per page when the request names none.
pub const DEFAULT_PAGE_SIZE: u32 = 50;
/// Most entries one page may hold.
pub const MAX_PAGE_SIZE: u32 = 1000;
/// Entries deleted per retention statement.
const RETENTION_BATCH: i64 = 10_000;
/// Entries being written at once. A slow or cut history store must not
/// turn a burst of slow queries into an unbounded heap of waiting tasks:
/// past this many, an entry is dropped with a warning (the execution it
/// describes is unaffected, and the audit trail is a separate path).
const MAX_ENTRIES_IN_FLIGHT: usize = 256;

/// One slow target of one execution, as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct SlowQuery {
    pub id: i64,
    pub recorded_at: DateTime<Utc>,
    pub target: Target,
    /// The replica that ran it; empty for the primary.
    pub replica: String,
    /// libpg_query fingerprint, 16 hex digits (as the audit trail's).
    pub fingerprint: String,
    pub normalized_query: String,
    pub duration: Duration,
    pub rows: u64,
    /// `user:alice`, `api_key:etl`.
    pub actor: String,
    pub success: bool,
    pub request_id: String,
}

/// What a search keeps; every field narrows it.
#[derive(Debug, Clone, Default)]
pub struct SlowQueryFilter {
    pub cloud: Option<String>,
    pub database: Option<String>,
    pub fingerprint: Option<String>,
    pub min_duration: Option<Duration>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub actor: Option<String>,
}

/// One page of a search, newest first.
#[derive(Debug, Clone, Default)]
pub struct SlowQueryPage {
    pub entries: Vec<SlowQuery>,
    /// The id to continue after, when more entries match.
    pub next_after: Option<i64>,
}

/// The log in the history store, with its settings.
#[derive(Debug)]
pub struct SlowQueryLog {
    pool: PgPool,
    settings: InsightsConfig,
    in_flight: Arc<Semaphore>,
}

impl SlowQueryLog {
    pub fn new(pool: PgPool, settings: InsightsConfig) -> Arc<Self> {
        Arc::new(Self {
            pool,
            settings,
            in_flight: Arc::new(Semaphore::new(MAX_ENTRIES_IN_FLIGHT)),
        })
    }

    /// The duration from which a target is recorded; `None` records nothing.
    pub fn threshold(&self) -> Option<Duration> {
        Some(self.settings.slow_query_threshold).filter(|threshold| !threshold.is_zero())
    }

    /// An [`Observer`] for one execution of `plan` by `identity`: reports to
    /// `inner` as before, and records each target that reached the threshold.
    pub fn observer(
        self: &Arc<Self>,
        plan: &Arc<Plan>,
        identity: &Identity,
        request_id: &str,
        inner: Arc<dyn Observer>,
    ) -> Arc<dyn Observer> {
        if self.threshold().is_none() {
            return inner;
        }
        Arc::new(SlowQueryTap {
            log: Arc::clone(self),
            plan: Arc::clone(plan),
            actor: identity.label(),
            request_id: request_id.to_owned(),
            inner,
        })
    }

    /// Stores one entry; its text must already be normalized.
    async fn insert(&self, entry: &SlowQuery) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO pgfleet.slow_queries \
             (cloud, database, replica, fingerprint, normalized_query, duration_micros, rows, actor, success, request_id) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&entry.target.cloud)
        .bind(&entry.target.database)
        .bind(&entry.replica)
        .bind(&entry.fingerprint)
        .bind(&entry.normalized_query)
        .bind(i64::try_from(entry.duration.as_micros()).unwrap_or(i64::MAX))
        .bind(i64::try_from(entry.rows).unwrap_or(i64::MAX))
        .bind(&entry.actor)
        .bind(entry.success)
        .bind(&entry.request_id)
        .execute(&self.pool)
        .await
        .map(|_| ())
    }

    /// A page of entries matching `filter`, newest first, after the entry
    /// `after` (a previous page's `next_after`). USER and READER see their
    /// own entries only; a filter naming someone else is refused.
    pub async fn search(
        &self,
        identity: &Identity,
        mut filter: SlowQueryFilter,
        after: Option<i64>,
        page_size: u32,
    ) -> Result<SlowQueryPage, RequestError> {
        let page_size = match page_size {
            0 => DEFAULT_PAGE_SIZE,
            n if n > MAX_PAGE_SIZE => {
                return Err(RequestError::invalid(
                    "page_size",
                    format!("at most {MAX_PAGE_SIZE}"),
                ));
            }
            n => n,
        };
        if identity.role != Role::Master {
            let own = identity.label();
            if filter.actor.as_ref().is_some_and(|actor| *actor != own) {
                return Err(RequestError::PermissionDenied(
                    "only MASTER may search other callers' slow queries".to_owned(),
                ));
            }
            filter.actor = Some(own);
        }
        let min_micros = filter
            .min_duration
            .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
        let rows: Vec<SlowQueryRow> = sqlx::query_as(
            "SELECT id, recorded_at, cloud, database, replica, fingerprint, normalized_query, \
                    duration_micros, rows, actor, success, request_id \
             FROM pgfleet.slow_queries \
             WHERE ($1::text IS NULL OR cloud = $1) \
               AND ($2::text IS NULL OR database = $2) \
               AND ($3::text IS NULL OR fingerprint = $3) \
               AND ($4::bigint IS NULL OR duration_micros >= $4) \
               AND ($5::timestamptz IS NULL OR recorded_at >= $5) \
               AND ($6::timestamptz IS NULL OR recorded_at < $6) \
               AND ($7::text IS NULL OR actor = $7) \
               AND ($8::bigint IS NULL OR id < $8) \
             ORDER BY id DESC LIMIT $9",
        )
        .bind(&filter.cloud)
        .bind(&filter.database)
        .bind(&filter.fingerprint)
        .bind(min_micros)
        .bind(filter.since)
        .bind(filter.until)
        .bind(&filter.actor)
        .bind(after)
        .bind(i64::from(page_size) + 1)
        .fetch_all(&self.pool)
        .await
        .map_err(RequestError::history_store)?;
        let more = rows.len() > page_size as usize;
        let entries: Vec<SlowQuery> = rows
            .into_iter()
            .take(page_size as usize)
            .map(SlowQuery::from)
            .collect();
        let next_after = if more {
            entries.last().map(|last| last.id)
        } else {
            None
        };
        Ok(SlowQueryPage { entries, next_after })
    }

    /// Deletes entries past the retention age, then the oldest past the
    /// count; returns how many went.
    pub async fn prune(&self) -> Result<u64, sqlx::Error> {
        let age =
            chrono::Duration::from_std(self.settings.slow_query_retention).unwrap_or(chrono::Duration::MAX);
        let cutoff = Utc::now()
            .checked_sub_signed(age)
            .unwrap_or(DateTime::<Utc>::MIN_UTC);
        let mut deleted = 0;
        loop {
            let aged = sqlx::query(
                "DELETE FROM pgfleet.slow_queries WHERE id IN \
                 (SELECT id FROM pgfleet.slow_queries WHERE recorded_at < $1 ORDER BY id LIMIT $2)",
            )
            .bind(cutoff)
            .bind(RETENTION_BATCH)
            .execute(&self.pool)
            .await?
            .rows_affected();
            deleted += aged;
            if aged < RETENTION_BATCH as u64 {
                break;
            }
        }
        let keep = i64::try_from(self.settings.slow_query_max_entries).unwrap_or(i64::MAX);
        deleted += sqlx::query(
            "DELETE FROM pgfleet.slow_queries WHERE id < \
             (SELECT id FROM pgfleet.slow_queries ORDER BY id DESC OFFSET $1 - 1 LIMIT 1)",
        )
        .bind(keep)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(deleted)
    }

    /// Prunes every `insights.retention_interval` until `stop`.
    pub fn spawn_retention(self: Arc<Self>, stop: CancellationToken) -> JoinHandle<()> {
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(self.settings.retention_interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = ticks.tick() => {}
                }
                match self.prune().await {
                    Ok(0) => {}
                    Ok(deleted) => tracing::debug!(deleted, "slow-query log pruned"),
                    Err(error) => tracing::warn!(%error, "cannot prune the slow-query log"),
                }
            }
        })
    }
}

#[derive(sqlx::FromRow)]
struct SlowQueryRow {
    id: i64,
    recorded_at: DateTime<Utc>,
    cloud: String,
    database: String,
    replica: String,
    fingerprint: String,
    normalized_query: String,
    duration_micros: i64,
    rows: i64,
    actor: String,
    success: bool,
    request_id: String,
}

impl From<SlowQueryRow> for SlowQuery {
    fn from(row: SlowQueryRow) -> Self {
        Self {
            id: row.id,
            recorded_at: row.recorded_at,
            target: Target::new(row.cloud, row.database),
            replica: row.replica,
            fingerprint: row.fingerprint,
            normalized_query: row.normalized_query,
            duration: Duration::from_micros(u64::try_from(row.duration_micros).unwrap_or(0)),
            rows: u64::try_from(row.rows).unwrap_or(0),
            actor: row.actor,
            success: row.success,
            request_id: row.request_id,
        }
    }
}

/// The observer of one execution: passes everything on, and records the
/// targets that reached the threshold.
#[derive(Debug)]
struct SlowQueryTap {
    log: Arc<SlowQueryLog>,
    plan: Arc<Plan>,
    actor: String,
    request_id: String,
    inner: Arc<dyn Observer>,
}

impl Observer for SlowQueryTap {
    fn target_finished(&self, target: &Target, outcome: &TargetOutcome) {
        self.inner.target_finished(target, outcome);
        let Some(threshold) = self.log.threshold() else {
            return;
        };
        if outcome.duration < threshold {
            return;
        }
        let Ok(permit) = Arc::clone(&self.log.in_flight).try_acquire_owned() else {
            tracing::warn!(%target, "slow query not logged: {MAX_ENTRIES_IN_FLIGHT} entries are already waiting for the history store");
            return;
        };
        let log = Arc::clone(&self.log);
        let normalized = self.plan.normalized_query.clone();
        let entry = SlowQuery {
            id: 0,
            recorded_at: Utc::now(),
            target: target.clone(),
            replica: outcome.replica.clone(),
            fingerprint: format!("{:016x}", self.plan.fingerprint),
            normalized_query: String::new(),
            duration: outcome.duration,
            rows: outcome.rows,
            actor: self.actor.clone(),
            success: outcome.success,
            request_id: self.request_id.clone(),
        };
        // Off the target's task: the log never holds up an execution.
        tokio::spawn(async move {
            let _permit = permit;
            let Some(Some(text)) = super::without_literals(vec![normalized]).await.pop() else {
                tracing::warn!(target = %entry.target, "slow query not logged: its text could not be normalized");
                return;
            };
            let entry = SlowQuery {
                normalized_query: text,
                ..entry
            };
            if let Err(error) = log.insert(&entry).await {
                tracing::warn!(target = %entry.target, %error, "cannot write the slow-query log");
            }
        });
    }

    fn audit_write(&self, write: crate::AuditWrite, succeeded: bool, elapsed: Duration) {
        self.inner.audit_write(write, succeeded, elapsed);
    }

    fn replication_rows(&self, job: &str, table: &str, target: &Target, rows: u64) {
        self.inner.replication_rows(job, table, target, rows);
    }

    fn replication_lag(&self, job: &str, table: &str, target: &Target, seconds: f64) {
        self.inner.replication_lag(job, table, target, seconds);
    }
}
