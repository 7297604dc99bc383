//! Do the copies of a table agree? `QueryService/CompareTables` without the
//! wire: checksums over primary-key ranges computed inside each PostgreSQL,
//! bisecting only the ranges whose checksums differ (as data-diff does), so
//! identical tables are compared without moving their rows and a handful of
//! differences cost a few small ranges.
//!
//! - Checked like a read before any connection ([`prepare`]): the
//!   database's targets (first = the reference), the caller's access (API-key
//!   allow-lists, READER's `reader_user` login), and the optional filter,
//!   which must parse, with the table, as one plain read.
//! - Each target runs in one `REPEATABLE READ READ ONLY` transaction for the
//!   whole comparison: one snapshot per side, and PostgreSQL refuses any
//!   write, whatever the filter holds.
//! - A range's checksum: `count(*)` and the sum (numeric) of
//!   `hashtextextended(ROW(key, columns…)::text, 0)`, grouped into
//!   `segments` sub-ranges in one query. A sub-range whose checksums differ is split again, until it
//!   holds at most `leaf_rows` rows on every side; then its keys and row
//!   hashes are read and compared.
//! - Keys: one integer primary-key column (smallint, integer, bigint).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgfleet_registry::{Registry, Route, Target};
use tokio::sync::mpsc;

use crate::RequestError;
use crate::identity::Identity;
use crate::query::plan::{ExecuteSpec, Plan, Scope};
use crate::replication::catalog::{TableShape, read_tables};
use crate::replication::sql::quote_ident;
use crate::replication::validate::parse_table_name;

/// Sub-ranges per checksum query, unless the request says otherwise.
pub const DEFAULT_SEGMENTS: u32 = 32;
/// A range with at most this many rows on every side is compared row by row.
pub const DEFAULT_LEAF_ROWS: u64 = 1000;
/// Integer type oids a key may have.
const INTEGER_TYPES: [u32; 3] = [20, 21, 23];

/// What to compare.
#[derive(Debug, Clone, Default)]
pub struct CompareSpec {
    pub database: String,
    /// `schema.table` (unqualified: `public`).
    pub table: String,
    /// Clouds to compare, the first being the reference; empty: every cloud
    /// that has the database, in configuration order.
    pub clouds: Vec<String>,
    /// Columns compared besides the key; empty: every column.
    pub columns: Vec<String>,
    /// A boolean SQL expression on the table's columns; empty: every row.
    pub filter: String,
    /// 0: [`DEFAULT_SEGMENTS`].
    pub segments: u32,
    /// 0: [`DEFAULT_LEAF_ROWS`].
    pub leaf_rows: u64,
    /// Statement timeout on each target; `None`: `query.default_timeout`.
    pub timeout: Option<Duration>,
}

/// How a key differs on a target from the reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DifferenceKind {
    /// In the reference, not on the target.
    Missing,
    /// On the target, not in the reference.
    Extra,
    /// On both, with different values.
    Changed,
}

/// What a comparison reports, in order: `Started`, `Difference`s, `Finished`.
#[derive(Debug, Clone)]
pub enum CompareEvent {
    Started {
        reference: Target,
        targets: Vec<Target>,
        key_column: String,
        columns: Vec<String>,
    },
    Difference {
        target: Target,
        key: i64,
        kind: DifferenceKind,
    },
    Finished(Summary),
}

/// The end of a comparison.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub identical: bool,
    pub differences: u64,
    /// Rows that crossed the wire from every target (checksum rows, key
    /// bounds, leaf rows).
    pub rows_transferred: u64,
    /// Rows of the compared tables (after the filter), every target summed:
    /// what a full read would have moved.
    pub rows_in_tables: u64,
    /// Queries sent, every target summed.
    pub queries: u64,
    pub duration: Duration,
}

/// A comparison checked and ready to run.
#[derive(Debug)]
pub struct Prepared {
    spec: CompareSpec,
    plan: Arc<Plan>,
    schema: String,
    table: String,
}

impl Prepared {
    pub fn targets(&self) -> &[Target] {
        &self.plan.targets
    }
}

/// Checks `spec` as `identity` would read it, before any connection.
pub async fn prepare(
    spec: CompareSpec,
    identity: &Identity,
    config: &pgfleet_config::FleetConfig,
    registry: &Registry,
) -> Result<Prepared, RequestError> {
    if spec.table.trim().is_empty() {
        return Err(RequestError::invalid("table", "required"));
    }
    // Unqualified: `public`, as the request documents.
    let (schema, table) = parse_table_name(&spec.table)
        .or_else(|error| parse_table_name(&format!("public.{}", spec.table)).map_err(|_| error))
        .map_err(|message| RequestError::invalid("table", message))?;
    if spec.segments == 1 || spec.segments > 1024 {
        return Err(RequestError::invalid(
            "segments",
            "must be 0 (default 32) or 2 to 1024",
        ));
    }
    if let Err(message) = check_expression_shape(&spec.filter) {
        return Err(RequestError::invalid("filter", message));
    }
    let qualified = format!("{}.{}", quote_ident(&schema), quote_ident(&table));
    let filter = if spec.filter.trim().is_empty() {
        "true"
    } else {
        spec.filter.as_str()
    };
    // The filter as a WHERE and as a value: each must be one plain read.
    for text in [
        format!("SELECT 1 FROM {qualified} WHERE ({filter})"),
        format!("SELECT ({filter})::boolean FROM {qualified}"),
    ] {
        let execute = ExecuteSpec {
            query: text.clone(),
            database: if spec.clouds.is_empty() {
                spec.database.clone()
            } else {
                String::new()
            },
            scope: if spec.clouds.is_empty() {
                Scope::AllClouds
            } else {
                Scope::Targets(
                    spec.clouds
                        .iter()
                        .map(|cloud| Target {
                            cloud: cloud.clone(),
                            database: spec.database.clone(),
                        })
                        .collect(),
                )
            },
            timeout: spec.timeout,
            read_only: true,
            ..ExecuteSpec::default()
        };
        let analysis = crate::query::parser::analyze(&text).await?;
        let plan =
            Plan::new(&execute, identity, config, registry, analysis).map_err(|error| match error {
                // The text and its read-only check are the filter's doing.
                RequestError::InvalidArgument { field, message }
                    if field == "query" || field == "read_only" =>
                {
                    RequestError::invalid("filter", message)
                }
                other => other,
            })?;
        let one_read = plan.statements.len() == 1
            && plan.statements[0].class == pgfleet_sqlcheck::StatementClass::Read
            && !plan.writes;
        if !one_read {
            return Err(RequestError::invalid(
                "filter",
                "must be one boolean expression on the table's columns",
            ));
        }
        if plan.targets.len() < 2 {
            return Err(RequestError::FailedPrecondition(format!(
                "{} has {} copy in scope: a comparison needs at least two",
                spec.database,
                plan.targets.len()
            )));
        }
        if text.starts_with("SELECT (") {
            return Ok(Prepared {
                spec,
                plan: Arc::new(plan),
                schema,
                table,
            });
        }
    }
    Err(RequestError::Internal("the filter checks did not run".to_owned()))
}

/// Refuses a filter that could leave the parentheses pgfleet puts around
/// it: a `)` closing more than it opened, a `;`, or a comment or dollar
/// quote (which this scan does not follow), outside string literals and
/// quoted identifiers. PostgreSQL's parser then sees one expression.
fn check_expression_shape(filter: &str) -> Result<(), &'static str> {
    let bytes = filter.as_bytes();
    let mut depth: u32 = 0;
    let mut at = 0;
    while at < bytes.len() {
        match bytes[at] {
            quote @ (b'\'' | b'"') => {
                // E'…' strings take backslash escapes.
                let escapes = quote == b'\'' && at > 0 && matches!(bytes[at - 1], b'E' | b'e');
                at += 1;
                loop {
                    match bytes.get(at) {
                        None => return Err("an unterminated string or quoted identifier"),
                        Some(b'\\') if escapes => at += 2,
                        Some(&c) if c == quote => {
                            if bytes.get(at + 1) == Some(&quote) {
                                at += 2;
                            } else {
                                break;
                            }
                        }
                        Some(_) => at += 1,
                    }
                }
            }
            b'(' => depth += 1,
            b')' => {
                depth = depth
                    .checked_sub(1)
                    .ok_or("a ')' without its '(': the filter must be one expression")?;
            }
            b';' => return Err("must be one expression, without ';'"),
            b'$' => return Err("dollar quotes and parameters are not allowed in a filter"),
            b'-' if bytes.get(at + 1) == Some(&b'-') => return Err("comments are not allowed in a filter"),
            b'/' if bytes.get(at + 1) == Some(&b'*') => return Err("comments are not allowed in a filter"),
            _ => {}
        }
        at += 1;
    }
    if depth == 0 {
        Ok(())
    } else {
        Err("a '(' without its ')'")
    }
}

/// One target's connection, in its snapshot, and its query counts.
struct Side {
    target: Target,
    checkout: pgfleet_registry::Checkout,
    rows: u64,
    queries: u64,
}

/// The SQL a comparison sends, from catalog names only (quoted) and the
/// checked filter.
struct Sql {
    from: String,
    key: String,
    row: String,
    filter: String,
}

impl Sql {
    fn hash(&self) -> String {
        // hashtextextended: PostgreSQL's own 64-bit text hash, several times
        // cheaper than md5 over millions of rows; summed as numeric.
        format!("hashtextextended({}::text, 0)", self.row)
    }

    fn bounds(&self) -> String {
        format!(
            "SELECT min({k})::int8, max({k})::int8, count(*)::int8 FROM {f} WHERE ({w})",
            k = self.key,
            f = self.from,
            w = self.filter
        )
    }

    fn checksums(&self) -> String {
        format!(
            "SELECT floor(({k}::numeric - $1) / $3)::int8 AS segment, count(*)::int8, sum({h})::text \
             FROM {f} WHERE {k} >= $1 AND {k} <= $2 AND ({w}) GROUP BY 1",
            k = self.key,
            h = self.hash(),
            f = self.from,
            w = self.filter
        )
    }

    fn leaf(&self) -> String {
        format!(
            "SELECT {k}::int8, md5({r}::text) FROM {f} WHERE {k} >= $1 AND {k} <= $2 AND ({w}) ORDER BY 1",
            k = self.key,
            r = self.row,
            f = self.from,
            w = self.filter
        )
    }
}

/// Runs `prepared`; events go to `events` as they are found. Errors after
/// the start (a target lost mid-way) end the stream with that error.
pub async fn run(
    registry: &Registry,
    prepared: Prepared,
    events: mpsc::Sender<Result<CompareEvent, RequestError>>,
) {
    if let Err(error) = run_inner(registry, &prepared, &events).await {
        let _ = events.send(Err(error)).await;
    }
}

async fn run_inner(
    registry: &Registry,
    prepared: &Prepared,
    events: &mpsc::Sender<Result<CompareEvent, RequestError>>,
) -> Result<(), RequestError> {
    let started = Instant::now();
    let plan = &prepared.plan;
    let spec = &prepared.spec;
    let name = format!(
        "{}.{}",
        quote_ident(&prepared.schema),
        quote_ident(&prepared.table)
    );
    // The shape, from each target's catalog: one key, same columns.
    let mut shapes: Vec<TableShape> = Vec::new();
    for target in &plan.targets {
        let shape = read_tables(registry, target, std::slice::from_ref(&name), plan.timeout)
            .await
            .map_err(|error| RequestError::Unavailable(error.to_string()))?
            .into_iter()
            .next()
            .flatten()
            .filter(TableShape::is_table)
            .ok_or_else(|| RequestError::NotFound(format!("{target}: no table {name}")))?;
        shapes.push(shape);
    }
    let reference = &shapes[0];
    let [key] = reference.primary_key.as_slice() else {
        return Err(RequestError::FailedPrecondition(format!(
            "{name} on {}: CompareTables needs a primary key of one integer column",
            plan.targets[0]
        )));
    };
    let key_column = reference
        .column(key)
        .filter(|column| INTEGER_TYPES.contains(&column.base_type))
        .ok_or_else(|| {
            RequestError::FailedPrecondition(format!(
                "{name}: key {key} is not smallint, integer or bigint (other keys are not supported yet)"
            ))
        })?;
    let columns: Vec<String> = if spec.columns.is_empty() {
        reference
            .columns
            .iter()
            .filter(|c| c.name != key_column.name)
            .map(|c| c.name.clone())
            .collect()
    } else {
        for (index, column) in spec.columns.iter().enumerate() {
            if reference.column(column).is_none() {
                return Err(RequestError::invalid(
                    format!("columns[{index}]"),
                    format!("{name} has no column {column:?}"),
                ));
            }
        }
        spec.columns.clone()
    };
    for (target, shape) in plan.targets.iter().zip(&shapes).skip(1) {
        let same_key = shape.primary_key == reference.primary_key;
        let same_columns = std::iter::once(&key_column.name).chain(&columns).all(|name| {
            shape.column(name).map(|c| &c.type_name) == reference.column(name).map(|c| &c.type_name)
        });
        if !same_key || !same_columns {
            return Err(RequestError::FailedPrecondition(format!(
                "{name} on {target} differs in shape from {} (primary key, compared columns or their types)",
                plan.targets[0]
            )));
        }
    }
    let sql = Sql {
        from: name.clone(),
        key: quote_ident(&key_column.name),
        row: format!(
            "ROW({})",
            std::iter::once(&key_column.name)
                .chain(&columns)
                .map(|c| quote_ident(c))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        filter: if spec.filter.trim().is_empty() {
            "true".to_owned()
        } else {
            spec.filter.clone()
        },
    };
    let _ = events
        .send(Ok(CompareEvent::Started {
            reference: plan.targets[0].clone(),
            targets: plan.targets.clone(),
            key_column: key_column.name.clone(),
            columns: columns.clone(),
        }))
        .await;

    let mut sides = open_sides(registry, plan).await?;
    let result = compare(&mut sides, &sql, spec, events).await;
    for side in &mut sides {
        // Read only: nothing to keep. A failed rollback closes the connection.
        if sqlx::query("ROLLBACK")
            .execute(side.checkout.connection_mut())
            .await
            .is_err()
            || !pgfleet_registry::discard_session(side.checkout.connection_mut()).await
        {
            side.checkout.connection.close_on_drop();
        }
    }
    let (differences, rows_in_tables) = result?;
    let summary = Summary {
        identical: differences == 0,
        differences,
        rows_transferred: sides.iter().map(|s| s.rows).sum(),
        rows_in_tables,
        queries: sides.iter().map(|s| s.queries).sum(),
        duration: started.elapsed(),
    };
    let _ = events.send(Ok(CompareEvent::Finished(summary))).await;
    Ok(())
}

async fn open_sides(registry: &Registry, plan: &Plan) -> Result<Vec<Side>, RequestError> {
    let route = if plan.reader_login {
        Route::ReaderLogin
    } else {
        Route::Read
    };
    let mut sides = Vec::new();
    for target in &plan.targets {
        let mut checkout = registry.acquire(target, route).await?;
        let connection = checkout.connection_mut();
        let begun = async {
            sqlx::query("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                .execute(&mut *connection)
                .await?;
            sqlx::query("SELECT set_config('statement_timeout', $1, true)")
                .bind(plan.timeout.as_millis().to_string())
                .execute(&mut *connection)
                .await
        }
        .await;
        if let Err(error) = begun {
            checkout.connection.close_on_drop();
            return Err(target_error(target, &error));
        }
        sides.push(Side {
            target: target.clone(),
            checkout,
            rows: 0,
            queries: 0,
        });
    }
    Ok(sides)
}

fn target_error(target: &Target, error: &sqlx::Error) -> RequestError {
    let failure = crate::query::TargetFailure::from_sqlx(error);
    let message = format!("{target}: {}", failure.message);
    match failure.code {
        crate::query::FailureCode::Unavailable => RequestError::Unavailable(message),
        _ => RequestError::FailedPrecondition(message),
    }
}

/// Per segment index: (rows, checksum as text).
type Checksums = BTreeMap<i64, (i64, String)>;

/// The comparison proper: (differences, rows of the tables).
async fn compare(
    sides: &mut [Side],
    sql: &Sql,
    spec: &CompareSpec,
    events: &mpsc::Sender<Result<CompareEvent, RequestError>>,
) -> Result<(u64, u64), RequestError> {
    let segments = i128::from(if spec.segments == 0 {
        DEFAULT_SEGMENTS
    } else {
        spec.segments
    });
    let leaf_rows = i64::try_from(if spec.leaf_rows == 0 {
        DEFAULT_LEAF_ROWS
    } else {
        spec.leaf_rows
    })
    .unwrap_or(i64::MAX);
    let mut low = i64::MAX;
    let mut high = i64::MIN;
    let mut rows_in_tables = 0_u64;
    let bounds = sql.bounds();
    for side in sides.iter_mut() {
        let (min, max, count): (Option<i64>, Option<i64>, i64) =
            sqlx::query_as(sqlx::AssertSqlSafe(bounds.clone()))
                .fetch_one(side.checkout.connection_mut())
                .await
                .map_err(|error| target_error(&side.target, &error))?;
        side.queries += 1;
        side.rows += 1;
        rows_in_tables += u64::try_from(count).unwrap_or(0);
        if let (Some(min), Some(max)) = (min, max) {
            low = low.min(min);
            high = high.max(max);
        }
    }
    if low > high {
        return Ok((0, rows_in_tables));
    }
    let mut differences = 0_u64;
    let mut pending = vec![(low, high)];
    let checksums_sql = sql.checksums();
    let leaf_sql = sql.leaf();
    while let Some((low, high)) = pending.pop() {
        if events.is_closed() {
            return Err(RequestError::Aborted(
                "the caller left; the comparison stopped".to_owned(),
            ));
        }
        let width = i128::from(high) - i128::from(low) + 1;
        let step = i64::try_from((width + segments - 1) / segments)
            .unwrap_or(i64::MAX)
            .max(1);
        let mut per_side: Vec<Checksums> = Vec::with_capacity(sides.len());
        for side in sides.iter_mut() {
            let rows: Vec<(i64, i64, Option<String>)> =
                sqlx::query_as(sqlx::AssertSqlSafe(checksums_sql.clone()))
                    .bind(low)
                    .bind(high)
                    .bind(step)
                    .fetch_all(side.checkout.connection_mut())
                    .await
                    .map_err(|error| target_error(&side.target, &error))?;
            side.queries += 1;
            side.rows += rows.len() as u64;
            per_side.push(
                rows.into_iter()
                    .map(|(segment, count, sum)| (segment, (count, sum.unwrap_or_default())))
                    .collect(),
            );
        }
        let mut segments_seen: Vec<i64> = per_side.iter().flat_map(|c| c.keys().copied()).collect();
        segments_seen.sort_unstable();
        segments_seen.dedup();
        // Pushed in reverse so ranges are compared in key order.
        let mut deeper = Vec::new();
        for segment in segments_seen {
            let reference = per_side[0].get(&segment);
            if per_side.iter().skip(1).all(|c| c.get(&segment) == reference) {
                continue;
            }
            let start = i128::from(low) + i128::from(segment) * i128::from(step);
            let end = (start + i128::from(step) - 1).min(i128::from(high));
            let (Ok(start), Ok(end)) = (i64::try_from(start), i64::try_from(end)) else {
                continue;
            };
            let most = per_side
                .iter()
                .filter_map(|c| c.get(&segment).map(|(count, _)| *count))
                .max()
                .unwrap_or(0);
            if most <= leaf_rows || start == end {
                differences += compare_rows(sides, &leaf_sql, (start, end), events).await?;
            } else {
                deeper.push((start, end));
            }
        }
        pending.extend(deeper.into_iter().rev());
    }
    Ok((differences, rows_in_tables))
}

/// Reads the keys and row hashes of `range` on every side and reports how
/// each other side differs from the first.
async fn compare_rows(
    sides: &mut [Side],
    leaf_sql: &str,
    (start, end): (i64, i64),
    events: &mpsc::Sender<Result<CompareEvent, RequestError>>,
) -> Result<u64, RequestError> {
    let mut per_side: Vec<BTreeMap<i64, String>> = Vec::with_capacity(sides.len());
    for side in sides.iter_mut() {
        let rows: Vec<(i64, String)> = sqlx::query_as(sqlx::AssertSqlSafe(leaf_sql.to_owned()))
            .bind(start)
            .bind(end)
            .fetch_all(side.checkout.connection_mut())
            .await
            .map_err(|error| target_error(&side.target, &error))?;
        side.queries += 1;
        side.rows += rows.len() as u64;
        per_side.push(rows.into_iter().collect());
    }
    let mut found = 0_u64;
    let reference = &per_side[0];
    for (side, rows) in sides.iter().zip(&per_side).skip(1) {
        let mut differences: Vec<(i64, DifferenceKind)> = Vec::new();
        for (key, hash) in reference {
            match rows.get(key) {
                None => differences.push((*key, DifferenceKind::Missing)),
                Some(other) if other != hash => differences.push((*key, DifferenceKind::Changed)),
                Some(_) => {}
            }
        }
        for key in rows.keys() {
            if !reference.contains_key(key) {
                differences.push((*key, DifferenceKind::Extra));
            }
        }
        differences.sort_unstable();
        for (key, kind) in differences {
            found += 1;
            let _ = events
                .send(Ok(CompareEvent::Difference {
                    target: side.target.clone(),
                    key,
                    kind,
                }))
                .await;
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::check_expression_shape;

    #[test]
    fn a_filter_cannot_leave_its_parentheses() {
        for (case, filter, fits) in [
            ("plain", "id BETWEEN 1 AND 10", true),
            ("nested", "(a = 1 OR (b = 2)) AND c IN (1, 2)", true),
            ("paren in a string", "note = ')' OR note = 'it''s ('", true),
            ("paren in an identifier", "\"we)ird\" = 1", true),
            (
                "escaped quote in E string",
                "note = E'\\') UNION SELECT (1'",
                true,
            ),
            ("closes early", "true) UNION SELECT (1", false),
            ("a second statement", "true; DELETE FROM t", false),
            ("unbalanced", "(true", false),
            ("line comment", "true -- )", false),
            ("block comment", "true /* ) */", false),
            ("dollar quote", "note = $$)$$", false),
            ("unterminated string", "note = ')", false),
        ] {
            assert_eq!(check_expression_shape(filter).is_ok(), fits, "{case}: {filter}");
        }
    }
}
