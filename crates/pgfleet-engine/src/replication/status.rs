//! How far behind each copy of a job is (GetStatus), measured now on the
//! databases themselves: the source's newest sync key and row count per
//! table, the lag of each stored watermark behind that newest key, and each
//! target's row count. Every statement is read-only and bounded.

use std::time::Duration;

use pgfleet_registry::{ReadOnlyError, Registry, RegistryError, Route, Target};

use super::Job;
use super::catalog::{self, TableShape};
use super::sql::{self, KeyColumn};
use super::state::PairState;
use super::validate;
use crate::Observer;

/// Why a table could not be measured on one database.
#[derive(Debug, thiserror::Error)]
pub enum MeasureError {
    #[error(transparent)]
    Connect(#[from] RegistryError),
    #[error("{0}")]
    Query(#[from] sqlx::Error),
}

/// A row of [`sql::source_lag`]: newest sync key, row count, and one
/// watermark's lag as text and in seconds.
type LagRow = (Option<String>, Option<i64>, Option<String>, Option<f64>);

/// One watermark's distance behind the source's newest sync key.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Lag {
    /// PostgreSQL's rendering of `newest - watermark` (`00:05:12`, `1520`).
    pub text: Option<String>,
    /// In seconds, for temporal keys.
    pub seconds: Option<f64>,
}

/// A table at the source.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SourceMeasure {
    /// The newest sync key value as text; `None` without a sync key or rows.
    pub newest: Option<String>,
    pub row_count: Option<i64>,
    /// One per watermark asked about, in order (default for `None`s).
    pub lags: Vec<Lag>,
}

/// One (table, target) pair of a job, measured now.
#[derive(Debug, Clone)]
pub struct PairReading<'a> {
    pub table: &'a str,
    pub target: &'a Target,
    /// What the run store keeps about the pair (nothing before its first run).
    pub stored: Option<&'a PairState>,
    /// The source's newest sync key value as text.
    pub source_newest: Option<String>,
    pub source_rows: Option<i64>,
    /// The stored watermark's distance behind `source_newest`.
    pub lag: Lag,
    pub target_rows: Option<i64>,
}

/// Every (table, target) pair of `job`, in the job's order, measured now on
/// its source and targets (row counts only when `count`); `pairs` is what
/// the run store keeps about the job. A database that cannot be measured
/// leaves its fields unset and is logged: a status never fails for one
/// unreachable copy. Each lag in seconds goes to `observer` (runs do not
/// measure the source's newest key, so this is where lag is known).
pub async fn measure_job<'a>(
    registry: &Registry,
    job: &'a Job,
    pairs: &[&'a PairState],
    count: bool,
    timeout: Duration,
    observer: &dyn Observer,
) -> Vec<PairReading<'a>> {
    let spec = &job.spec;
    let job_id = job.id.to_string();
    let shapes = catalog::read_tables(registry, &spec.source, &spec.tables, timeout)
        .await
        .inspect_err(
            |error| tracing::warn!(job = %job.id, %error, "cannot read the source catalog for status"),
        )
        .unwrap_or_default();
    let mut readings = Vec::with_capacity(spec.tables.len() * spec.targets.len());
    for (index, table) in spec.tables.iter().enumerate() {
        let stored: Vec<Option<&PairState>> = spec
            .targets
            .iter()
            .map(|target| {
                pairs
                    .iter()
                    .find(|pair| pair.table_name == *table && pair.target() == *target)
                    .copied()
            })
            .collect();
        let watermarks: Vec<Option<String>> = stored
            .iter()
            .map(|pair| pair.and_then(|pair| pair.watermark.clone()))
            .collect();
        let source = match shapes.get(index).cloned().flatten() {
            Some(shape) => measure_source(
                registry,
                &spec.source,
                &shape,
                spec.sync_key.as_deref(),
                &watermarks,
                count,
                timeout,
            )
            .await
            .inspect_err(
                |error| tracing::warn!(job = %job.id, %table, %error, "cannot measure the source for status"),
            )
            .unwrap_or_default(),
            None => SourceMeasure::default(),
        };
        for (position, target) in spec.targets.iter().enumerate() {
            let target_rows = if count {
                count_rows(registry, target, table, timeout)
                    .await
                    .inspect_err(|error| tracing::warn!(job = %job.id, %table, %target, %error, "cannot count target rows for status"))
                    .ok()
            } else {
                None
            };
            let lag = source.lags.get(position).cloned().unwrap_or_default();
            if let Some(seconds) = lag.seconds {
                observer.replication_lag(&job_id, table, target, seconds);
            }
            readings.push(PairReading {
                table,
                target,
                stored: stored.get(position).copied().flatten(),
                source_newest: source.newest.clone(),
                source_rows: source.row_count,
                lag,
                target_rows,
            });
        }
    }
    readings
}

/// Measures `shape` at `source`: its newest `sync_key`, its rows when
/// `count`, and the lag of each of `watermarks`.
pub async fn measure_source(
    registry: &Registry,
    source: &Target,
    shape: &TableShape,
    sync_key: Option<&str>,
    watermarks: &[Option<String>],
    count: bool,
    timeout: Duration,
) -> Result<SourceMeasure, MeasureError> {
    let key = sync_key.and_then(|name| {
        let column = shape.column(name)?;
        let difference = validate::key_difference(column.base_type)?;
        Some((
            KeyColumn {
                name: column.name.clone(),
                type_name: column.type_name.clone(),
            },
            difference,
        ))
    });
    let Some((key, difference)) = key else {
        let row_count = if count {
            Some(count_rows(registry, source, &shape.name, timeout).await?)
        } else {
            None
        };
        return Ok(SourceMeasure {
            newest: None,
            row_count,
            lags: vec![Lag::default(); watermarks.len()],
        });
    };
    let known: Vec<String> = watermarks.iter().flatten().cloned().collect();
    let statement = sql::source_lag(&shape.name, &key, difference, count);
    let rows: Vec<LagRow> = read(registry, source, timeout, statement, Some(&known)).await?;
    let (newest, row_count) = rows
        .first()
        .map(|(newest, rows, _, _)| (newest.clone(), *rows))
        .unwrap_or_default();
    let mut measured = rows.into_iter().filter(|_| !known.is_empty());
    let lags = watermarks
        .iter()
        .map(|watermark| match watermark {
            Some(_) => measured
                .next()
                .map(|(_, _, text, seconds)| Lag { text, seconds })
                .unwrap_or_default(),
            None => Lag::default(),
        })
        .collect();
    Ok(SourceMeasure {
        newest,
        row_count,
        lags,
    })
}

/// `count(*)` of `table` at `target`.
pub async fn count_rows(
    registry: &Registry,
    target: &Target,
    table: &str,
    timeout: Duration,
) -> Result<i64, MeasureError> {
    let rows: Vec<(i64,)> = read(registry, target, timeout, sql::count_all(table), None).await?;
    Ok(rows.first().map_or(0, |(count,)| *count))
}

/// The rows of `statement` (with `watermarks` bound as `$1` if given),
/// in a bounded read-only transaction on `target`'s primary (where copies
/// write; a replica may lag behind them).
async fn read<T>(
    registry: &Registry,
    target: &Target,
    timeout: Duration,
    statement: String,
    watermarks: Option<&[String]>,
) -> Result<Vec<T>, MeasureError>
where
    T: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> + Send + Unpin,
{
    registry
        .read_only(target, Route::Write, timeout, async |connection| {
            let mut query = sqlx::query_as::<_, T>(sqlx::AssertSqlSafe(statement)).persistent(false);
            if let Some(watermarks) = watermarks {
                query = query.bind(watermarks);
            }
            query.fetch_all(&mut *connection).await
        })
        .await
        .map_err(|error| match error {
            ReadOnlyError::Acquire(error) => MeasureError::Connect(error),
            ReadOnlyError::Query(error) => MeasureError::Query(error),
        })
}
