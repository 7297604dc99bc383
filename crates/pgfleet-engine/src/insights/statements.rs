//! `pg_stat_statements` of every copy of a database, merged.
//!
//! The same statement has a different `queryid` on each copy (it hashes
//! the catalog OIDs the statement resolved to), so copies are merged by
//! libpg_query's fingerprint of the normalized text, which depends on the
//! text alone: the `SELECT … FROM orders WHERE id = $1` of aws and gcp is
//! one row with a column per target. A text that does not parse stays a
//! row of its own target (keyed by its `queryid`). Texts leave with every
//! literal `$n`.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use pgfleet_registry::{ReadOnlyError, Registry, Route, Target};

use super::{READ_TIMEOUT, read_failure};
use crate::RequestError;
use crate::identity::Identity;

/// Statements returned when the request names no number.
pub const DEFAULT_TOP: u32 = 20;
/// Most statements one answer may hold.
pub const MAX_TOP: u32 = 500;
/// The "slower on X" threshold when the request names none.
pub const DEFAULT_SLOWER_FACTOR: f64 = 2.0;
/// Statements read per target (by total time): the merged top is taken
/// from these.
const STATEMENTS_PER_TARGET: i64 = 1000;

/// What "top" means.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum StatementOrder {
    #[default]
    TotalTime,
    MeanTime,
    Calls,
    Rows,
    SharedBlocksRead,
    SharedBlocksHit,
}

/// What GetStatementStats asks.
#[derive(Debug, Clone, Default)]
pub struct StatsSpec {
    pub database: String,
    /// 0: [`DEFAULT_TOP`].
    pub top: u32,
    pub order: StatementOrder,
    /// 0: [`DEFAULT_SLOWER_FACTOR`].
    pub slower_factor: f64,
}

/// The counters of one statement on one target.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetStats {
    pub target: Target,
    pub calls: i64,
    pub total_time: Duration,
    pub mean_time: Duration,
    pub rows: i64,
    pub shared_blocks_hit: i64,
    pub shared_blocks_read: i64,
}

/// One statement across the copies.
#[derive(Debug, Clone, PartialEq)]
pub struct MergedStatement {
    /// 16 hex digits (or `queryid:…` for a text that does not parse).
    pub fingerprint: String,
    pub query: String,
    /// In the order of [`StatementStats::sources`].
    pub per_target: Vec<TargetStats>,
    /// The target with the highest mean time, when on two or more.
    pub slowest: Option<Target>,
    /// Slowest mean over fastest mean (1 when alone).
    pub slower_factor: f64,
    /// "8.0× slower on gcp/app than on aws/app", past the threshold.
    pub highlight: Option<String>,
}

impl TargetStats {
    fn zero(target: Target) -> Self {
        Self {
            target,
            calls: 0,
            total_time: Duration::ZERO,
            mean_time: Duration::ZERO,
            rows: 0,
            shared_blocks_hit: 0,
            shared_blocks_read: 0,
        }
    }
}

impl MergedStatement {
    pub fn total_calls(&self) -> i64 {
        self.per_target.iter().map(|t| t.calls).sum()
    }

    pub fn total_time(&self) -> Duration {
        self.per_target.iter().map(|t| t.total_time).sum()
    }

    fn sort_key(&self, order: StatementOrder) -> f64 {
        let sum = |f: fn(&TargetStats) -> i64| self.per_target.iter().map(f).sum::<i64>() as f64;
        match order {
            StatementOrder::TotalTime => self.total_time().as_secs_f64(),
            StatementOrder::MeanTime => self
                .per_target
                .iter()
                .map(|t| t.mean_time.as_secs_f64())
                .fold(0.0, f64::max),
            StatementOrder::Calls => sum(|t| t.calls),
            StatementOrder::Rows => sum(|t| t.rows),
            StatementOrder::SharedBlocksRead => sum(|t| t.shared_blocks_read),
            StatementOrder::SharedBlocksHit => sum(|t| t.shared_blocks_hit),
        }
    }
}

/// Whether a target's statistics were read.
#[derive(Debug, Clone, PartialEq)]
pub struct StatsSource {
    pub target: Target,
    /// `None` when read; else why not.
    pub unavailable: Option<String>,
}

/// The answer: every copy, then the merged top.
#[derive(Debug, Clone)]
pub struct StatementStats {
    pub sources: Vec<StatsSource>,
    pub statements: Vec<MergedStatement>,
}

type StatementRow = (i64, String, i64, f64, f64, i64, i64, i64);

/// Why a target's statistics are missing, in the caller's terms.
enum Missing {
    NotInstalled,
    Failed(String),
}

async fn read_target(registry: &Registry, target: &Target) -> Result<Vec<StatementRow>, Missing> {
    let read = registry
        .read_only(target, Route::Write, READ_TIMEOUT, async |connection| {
            let schema: Option<String> = sqlx::query_scalar(
                "SELECT n.nspname::text FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace \
                 WHERE e.extname = 'pg_stat_statements'",
            )
            .fetch_optional(&mut *connection)
            .await?;
            let Some(schema) = schema else {
                return Ok(None);
            };
            // The extension's schema, quoted by PostgreSQL (never spliced raw).
            let quoted: String = sqlx::query_scalar("SELECT quote_ident($1)")
                .bind(&schema)
                .fetch_one(&mut *connection)
                .await?;
            let rows = sqlx::query_as::<_, StatementRow>(sqlx::AssertSqlSafe(format!(
                "SELECT coalesce(s.queryid, 0), coalesce(s.query, ''), s.calls, s.total_exec_time, s.mean_exec_time, \
                        s.rows, s.shared_blks_hit, s.shared_blks_read \
                 FROM {quoted}.pg_stat_statements s \
                 WHERE s.dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) \
                   AND s.calls > 0 \
                 ORDER BY s.total_exec_time DESC LIMIT $1"
            )))
            .bind(STATEMENTS_PER_TARGET)
            .fetch_all(&mut *connection)
            .await?;
            Ok(Some(rows))
        })
        .await;
    match read {
        Ok(Some(rows)) => Ok(rows),
        Ok(None) => Err(Missing::NotInstalled),
        Err(ReadOnlyError::Query(error))
            if error
                .as_database_error()
                .and_then(|e| e.code())
                .is_some_and(|code| code == "55000") =>
        {
            Err(Missing::Failed(
                "pg_stat_statements is installed but not loaded: add it to shared_preload_libraries and restart"
                    .to_owned(),
            ))
        }
        Err(error) => Err(Missing::Failed(read_failure(error).message)),
    }
}

/// Reads every copy of `spec.database` and merges (see the module docs).
pub async fn statement_stats(
    registry: &Arc<Registry>,
    identity: &Identity,
    spec: &StatsSpec,
) -> Result<StatementStats, RequestError> {
    let top = match spec.top {
        0 => DEFAULT_TOP,
        n if n > MAX_TOP => return Err(RequestError::invalid("top", format!("at most {MAX_TOP}"))),
        n => n,
    };
    let factor = if spec.slower_factor == 0.0 {
        DEFAULT_SLOWER_FACTOR
    } else if spec.slower_factor.is_finite() && spec.slower_factor >= 1.0 {
        spec.slower_factor
    } else {
        return Err(RequestError::invalid(
            "slower_factor",
            "at least 1 (or 0 for the default, 2)",
        ));
    };
    let targets = super::resolve_targets(registry, identity, &spec.database, "")?;
    let reads = targets.iter().map(|target| read_target(registry, target));
    let answers = futures::future::join_all(reads).await;

    let mut sources = Vec::new();
    let mut per_target: Vec<(Target, Vec<StatementRow>)> = Vec::new();
    for (target, answer) in targets.into_iter().zip(answers) {
        let unavailable = match answer {
            Ok(rows) => {
                per_target.push((target.clone(), rows));
                None
            }
            Err(Missing::NotInstalled) => Some(
                "pg_stat_statements is not installed in this database \
                 (CREATE EXTENSION pg_stat_statements, with it in shared_preload_libraries)"
                    .to_owned(),
            ),
            Err(Missing::Failed(why)) => Some(why),
        };
        sources.push(StatsSource { target, unavailable });
    }
    let statements = merge(per_target, &sources, factor).await;
    let mut statements = statements;
    statements.sort_by(|a, b| {
        b.sort_key(spec.order)
            .partial_cmp(&a.sort_key(spec.order))
            .unwrap_or(Ordering::Equal)
            .then_with(|| a.fingerprint.cmp(&b.fingerprint))
    });
    statements.truncate(top as usize);
    Ok(StatementStats { sources, statements })
}

async fn merge(
    per_target: Vec<(Target, Vec<StatementRow>)>,
    sources: &[StatsSource],
    factor: f64,
) -> Vec<MergedStatement> {
    // Fingerprints on the blocking pool: the parser is one thread, and a
    // target may bring a thousand texts.
    let texts: Vec<String> = per_target
        .iter()
        .flat_map(|(_, rows)| rows.iter().map(|row| row.1.clone()))
        .collect();
    let fingerprints: Vec<Option<u64>> = tokio::task::spawn_blocking(move || {
        texts
            .iter()
            .map(|text| pgfleet_sqlcheck::fingerprint(text).ok().map(|f| f.0))
            .collect()
    })
    .await
    .unwrap_or_default();
    let mut fingerprints = fingerprints.into_iter().chain(std::iter::repeat(None));
    // pg_stat_statements keeps utility statements' literals (a CREATE ROLE's
    // password, before PostgreSQL 16): every text leaves with them as `$n`,
    // and a text the scanner cannot read is not shown at all.
    let all_texts: Vec<String> = per_target
        .iter()
        .flat_map(|(_, rows)| rows.iter().map(|row| row.1.clone()))
        .collect();
    let mut scrubbed = super::without_literals(all_texts)
        .await
        .into_iter()
        .chain(std::iter::repeat(None));

    let mut merged: BTreeMap<String, (String, BTreeMap<Target, TargetStats>)> = BTreeMap::new();
    for (target, rows) in per_target {
        for (queryid, _text, calls, total_ms, _mean_ms, rows, hit, read) in rows {
            let shown = scrubbed.next().flatten().unwrap_or_default();
            let key = match fingerprints.next().flatten() {
                Some(fingerprint) => format!("{fingerprint:016x}"),
                None => format!("queryid:{queryid}"),
            };
            let entry = merged.entry(key).or_insert_with(|| (shown, BTreeMap::new()));
            let stats = entry
                .1
                .entry(target.clone())
                .or_insert_with(|| TargetStats::zero(target.clone()));
            stats.calls += calls;
            stats.total_time += Duration::try_from_secs_f64(total_ms.max(0.0) / 1000.0).unwrap_or_default();
            stats.rows += rows;
            stats.shared_blocks_hit += hit;
            stats.shared_blocks_read += read;
        }
    }
    merged
        .into_iter()
        .map(|(fingerprint, (query, by_target))| {
            let mut per_target: Vec<TargetStats> = sources
                .iter()
                .filter_map(|source| by_target.get(&source.target).cloned())
                .collect();
            for stats in &mut per_target {
                // Mean over the merged entries: total over calls.
                stats.mean_time = if stats.calls > 0 {
                    stats.total_time / u32::try_from(stats.calls).unwrap_or(u32::MAX)
                } else {
                    Duration::ZERO
                };
            }
            let (slowest, slower_factor, highlight) = compare(&per_target, factor);
            MergedStatement {
                fingerprint,
                query,
                per_target,
                slowest,
                slower_factor,
                highlight,
            }
        })
        .collect()
}

/// The slowest target by mean time, its factor over the fastest, and the
/// highlight when the factor reaches `threshold`.
fn compare(per_target: &[TargetStats], threshold: f64) -> (Option<Target>, f64, Option<String>) {
    if per_target.len() < 2 {
        return (None, 1.0, None);
    }
    let by_mean = |a: &&TargetStats, b: &&TargetStats| a.mean_time.cmp(&b.mean_time);
    let (Some(slowest), Some(fastest)) = (
        per_target.iter().max_by(by_mean),
        per_target.iter().min_by(by_mean),
    ) else {
        return (None, 1.0, None);
    };
    let fastest_secs = fastest.mean_time.as_secs_f64();
    let factor = if fastest_secs > 0.0 {
        slowest.mean_time.as_secs_f64() / fastest_secs
    } else if slowest.mean_time.is_zero() {
        1.0
    } else {
        f64::INFINITY
    };
    let highlight = (factor >= threshold && slowest.target != fastest.target).then(|| {
        let times = if factor.is_finite() {
            format!("{factor:.1}×")
        } else {
            "far".to_owned()
        };
        format!("{times} slower on {} than on {}", slowest.target, fastest.target)
    });
    (
        Some(slowest.target.clone()),
        if factor.is_finite() { factor } else { f64::MAX },
        highlight,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(cloud: &str, mean_ms: u64) -> TargetStats {
        TargetStats {
            calls: 1,
            mean_time: Duration::from_millis(mean_ms),
            ..TargetStats::zero(Target::new(cloud, "app"))
        }
    }

    #[test]
    fn the_slowest_copy_is_named_with_its_factor() {
        let (slowest, factor, highlight) = compare(&[stats("aws", 10), stats("gcp", 80)], 2.0);
        assert_eq!(slowest, Some(Target::new("gcp", "app")));
        assert!((factor - 8.0).abs() < 1e-9, "{factor}");
        assert_eq!(
            highlight.as_deref(),
            Some("8.0× slower on gcp/app than on aws/app")
        );
    }

    #[test]
    fn copies_within_the_factor_are_not_highlighted_and_one_copy_alone_never() {
        assert_eq!(compare(&[stats("aws", 10), stats("gcp", 15)], 2.0).2, None);
        assert_eq!(compare(&[stats("aws", 10)], 2.0), (None, 1.0, None));
    }
}
