//! `GetRecommendations`: advice from each copy's catalogs and statistics
//! views, each with the figures it rests on, and the indexes one copy lacks
//! that others have.
//!
//! Thresholds are fixed here (not configuration) so every copy is judged
//! alike; they flag what deserves a look, never act.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use pgfleet_registry::{Registry, Route, Target};
use sqlx::PgConnection;

use super::{READ_TIMEOUT, read_failure};
use crate::RequestError;
use crate::identity::Identity;
use crate::query::TargetFailure;

/// Sequential scans, and live rows, from which a table mostly read by
/// sequential scans is an index candidate.
const CANDIDATE_SEQ_SCANS: i64 = 50;
const CANDIDATE_LIVE_ROWS: i64 = 10_000;
/// Changed rows since the last ANALYZE, absolute and as a share of the live
/// rows, from which a table's statistics are stale.
const STALE_CHANGED_ROWS: i64 = 1_000;
const STALE_CHANGED_SHARE: f64 = 0.2;
/// Dead tuples, absolute and as a share of the live ones.
const DEAD_TUPLES: i64 = 1_000;
const DEAD_SHARE: f64 = 0.2;
/// Share of a sequence's range used from which it is near its maximum.
const SEQUENCE_USED_SHARE: f64 = 0.8;

/// What a recommendation is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RecommendationKind {
    IndexCandidate,
    UnusedIndex,
    DuplicateIndex,
    StaleStatistics,
    DeadTuples,
    SequenceNearMaximum,
    IndexMissingOnCopy,
}

/// One piece of advice for one copy.
#[derive(Debug, Clone, PartialEq)]
pub struct Recommendation {
    pub target: Target,
    pub kind: RecommendationKind,
    /// `schema.name` of the table, index or sequence.
    pub object: String,
    pub advice: String,
    pub evidence: String,
}

/// Every copy's recommendations, and the copies that could not be read.
#[derive(Debug, Clone, Default)]
pub struct Recommendations {
    pub recommendations: Vec<Recommendation>,
    pub unread: Vec<(Target, TargetFailure)>,
}

/// What one copy's catalogs said.
struct CopyReport {
    findings: Vec<(RecommendationKind, String, String, String)>,
    tables: BTreeSet<String>,
    /// Index definition without its name (`CREATE INDEX ON public.t USING
    /// btree (c)`) → the table it is on.
    indexes: BTreeMap<String, String>,
}

/// Reads every copy of `database` (its primary) and judges it.
pub async fn recommendations(
    registry: &Arc<Registry>,
    identity: &Identity,
    database: &str,
) -> Result<Recommendations, RequestError> {
    let targets = super::resolve_targets(registry, identity, database, "")?;
    let reads = futures::future::join_all(targets.iter().map(|target| {
        registry.read_only(target, Route::Write, READ_TIMEOUT, async |connection| {
            read_copy(connection).await
        })
    }))
    .await;
    let mut answer = Recommendations::default();
    let mut copies: Vec<(Target, CopyReport)> = Vec::new();
    for (target, read) in targets.into_iter().zip(reads) {
        match read {
            Ok(report) => copies.push((target, report)),
            Err(error) => answer.unread.push((target, read_failure(error))),
        }
    }
    for (target, report) in &copies {
        for (kind, object, advice, evidence) in &report.findings {
            answer.recommendations.push(Recommendation {
                target: target.clone(),
                kind: *kind,
                object: object.clone(),
                advice: advice.clone(),
                evidence: evidence.clone(),
            });
        }
    }
    answer.recommendations.extend(missing_indexes(&copies));
    answer
        .recommendations
        .sort_by(|a, b| (&a.target, a.kind, &a.object).cmp(&(&b.target, b.kind, &b.object)));
    Ok(answer)
}

/// An index some copies have and another copy lacks, on a table that copy
/// has (a missing table is schema drift, which CheckSchemaDrift reports).
fn missing_indexes(copies: &[(Target, CopyReport)]) -> Vec<Recommendation> {
    let mut found = Vec::new();
    for (target, report) in copies {
        for (definition, table) in copies.iter().flat_map(|(_, other)| other.indexes.iter()) {
            if report.indexes.contains_key(definition) || !report.tables.contains(table) {
                continue;
            }
            let holders: Vec<String> = copies
                .iter()
                .filter(|(_, other)| other.indexes.contains_key(definition))
                .map(|(holder, _)| holder.to_string())
                .collect();
            let recommendation = Recommendation {
                target: target.clone(),
                kind: RecommendationKind::IndexMissingOnCopy,
                object: table.clone(),
                advice: format!("{definition} (as on {})", holders.join(", ")),
                evidence: format!("present on {}; absent here", holders.join(", ")),
            };
            if !found.contains(&recommendation) {
                found.push(recommendation);
            }
        }
    }
    found
}

/// A table, seq_scan, idx_scan, n_live_tup, n_dead_tup,
/// n_mod_since_analyze, seq_tup_read, never analysed.
type TableStatsRow = (String, i64, i64, i64, i64, i64, i64, bool);

async fn read_copy(connection: &mut PgConnection) -> Result<CopyReport, sqlx::Error> {
    let mut findings = Vec::new();
    let tables: Vec<TableStatsRow> = sqlx::query_as(
        "SELECT quote_ident(schemaname) || '.' || quote_ident(relname), seq_scan, coalesce(idx_scan, 0), \
                n_live_tup, n_dead_tup, n_mod_since_analyze, seq_tup_read, \
                last_analyze IS NULL AND last_autoanalyze IS NULL \
         FROM pg_stat_user_tables ORDER BY 1",
    )
    .fetch_all(&mut *connection)
    .await?;
    for (table, seq_scan, idx_scan, live, dead, changed, seq_read, never_analyzed) in &tables {
        if *seq_scan >= CANDIDATE_SEQ_SCANS && *live >= CANDIDATE_LIVE_ROWS && seq_scan > idx_scan {
            findings.push((
                RecommendationKind::IndexCandidate,
                table.clone(),
                format!(
                    "{table} is read mostly by sequential scans: index the columns its frequent filters use"
                ),
                format!("seq_scan={seq_scan} idx_scan={idx_scan} seq_tup_read={seq_read} n_live_tup={live}"),
            ));
        }
        if *never_analyzed && live + dead + changed > 0 {
            findings.push((
                RecommendationKind::StaleStatistics,
                table.clone(),
                format!("ANALYZE {table}: it was never analysed"),
                format!(
                    "last_analyze and last_autoanalyze empty; n_live_tup={live} n_mod_since_analyze={changed}"
                ),
            ));
        } else if *changed >= STALE_CHANGED_ROWS && (*changed as f64) > STALE_CHANGED_SHARE * (*live as f64) {
            findings.push((
                RecommendationKind::StaleStatistics,
                table.clone(),
                format!("ANALYZE {table}: many rows changed since its statistics were made"),
                format!("n_mod_since_analyze={changed} n_live_tup={live}"),
            ));
        }
        if *dead >= DEAD_TUPLES && (*dead as f64) > DEAD_SHARE * (*live as f64) {
            findings.push((
                RecommendationKind::DeadTuples,
                table.clone(),
                format!("VACUUM {table} (and check autovacuum keeps up)"),
                format!("n_dead_tup={dead} n_live_tup={live}"),
            ));
        }
    }

    let unused: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT quote_ident(s.schemaname) || '.' || quote_ident(s.indexrelname), \
                quote_ident(s.schemaname) || '.' || quote_ident(s.relname), \
                pg_size_pretty(pg_relation_size(s.indexrelid)) \
         FROM pg_stat_user_indexes s JOIN pg_index i ON i.indexrelid = s.indexrelid \
         WHERE s.idx_scan = 0 AND NOT i.indisunique AND NOT i.indisprimary \
           AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = s.indexrelid) \
         ORDER BY 1",
    )
    .fetch_all(&mut *connection)
    .await?;
    for (index, table, size) in unused {
        findings.push((
            RecommendationKind::UnusedIndex,
            index.clone(),
            format!("{index} on {table} was never used: consider dropping it (check the other copies and replicas first)"),
            format!("idx_scan=0 size={size} since the statistics were last reset"),
        ));
    }

    let duplicates: Vec<(String, Vec<String>)> = sqlx::query_as(
        "SELECT quote_ident(n.nspname) || '.' || quote_ident(t.relname), \
                array_agg(quote_ident(n.nspname) || '.' || quote_ident(c.relname) ORDER BY c.relname) \
         FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_class t ON t.oid = i.indrelid \
         JOIN pg_namespace n ON n.oid = t.relnamespace \
         WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%' \
         GROUP BY 1, i.indrelid, i.indkey::text, i.indclass::text, i.indcollation::text, \
                  coalesce(pg_get_expr(i.indexprs, i.indrelid), ''), coalesce(pg_get_expr(i.indpred, i.indrelid), '') \
         HAVING count(*) > 1 ORDER BY 1",
    )
    .fetch_all(&mut *connection)
    .await?;
    for (table, indexes) in duplicates {
        findings.push((
            RecommendationKind::DuplicateIndex,
            indexes.first().cloned().unwrap_or_default(),
            format!(
                "{} index the same columns of {table} the same way: keep one",
                indexes.join(" and ")
            ),
            format!(
                "identical key, operator classes, collations, expressions and predicate: {}",
                indexes.join(", ")
            ),
        ));
    }

    let sequences: Vec<(String, i64, i64, f64)> = sqlx::query_as(
        "SELECT quote_ident(schemaname) || '.' || quote_ident(sequencename), last_value, max_value, \
                (CASE WHEN increment_by > 0 THEN (last_value::numeric - min_value) \
                      ELSE (max_value::numeric - last_value) END \
                 / nullif(max_value::numeric - min_value, 0))::float8 \
         FROM pg_sequences WHERE last_value IS NOT NULL \
           AND schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1",
    )
    .fetch_all(&mut *connection)
    .await?;
    for (sequence, last, max, used) in sequences {
        if used >= SEQUENCE_USED_SHARE {
            findings.push((
                RecommendationKind::SequenceNearMaximum,
                sequence.clone(),
                format!(
                    "{sequence} has used {:.0}% of its range: widen it (and its columns) before it runs out",
                    used * 100.0
                ),
                format!("last_value={last} max_value={max}"),
            ));
        }
    }

    let indexes: Vec<(String, String)> = sqlx::query_as(
        "SELECT regexp_replace(pg_get_indexdef(i.indexrelid), ' INDEX \\S+ ON ', ' INDEX ON '), \
                quote_ident(n.nspname) || '.' || quote_ident(t.relname) \
         FROM pg_index i JOIN pg_class t ON t.oid = i.indrelid JOIN pg_namespace n ON n.oid = t.relnamespace \
         WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'",
    )
    .fetch_all(&mut *connection)
    .await?;
    let all_tables: Vec<String> = sqlx::query_scalar(
        "SELECT quote_ident(n.nspname) || '.' || quote_ident(t.relname) \
         FROM pg_class t JOIN pg_namespace n ON n.oid = t.relnamespace \
         WHERE t.relkind IN ('r', 'p', 'm') \
           AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'",
    )
    .fetch_all(&mut *connection)
    .await?;
    Ok(CopyReport {
        findings,
        tables: all_tables.into_iter().collect(),
        indexes: indexes.into_iter().collect(),
    })
}
