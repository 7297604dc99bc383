//! Whether a job may be stored. First its fields on their own ([`check_fields`]:
//! names, limits, configured targets), then against the catalogs of its
//! source and targets ([`check_catalogs`]: every table exists and is a table,
//! has a primary key, has the source's columns and types on every target,
//! and the sync key is a column of an orderable type). Mismatches are
//! reported, never patched.
//!
//! Errors name the request field, e.g. `job.targets[1].cloud`: the job is
//! the `job` field of both CreateJob and UpdateJob.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use pgfleet_registry::{Registry, Target};

use super::catalog::{self, TableShape};
use super::{
    JobSpec, MAX_BATCH_SIZE, MAX_NAME_CHARS, MAX_TABLES, MAX_TARGETS, MAX_WINDOW, MIN_INTERVAL, Mode,
};
use pgfleet_engine::RequestError;

/// PostgreSQL's identifier limit (NAMEDATALEN - 1): longer names are
/// silently truncated by the server, so they would name another object.
const MAX_IDENTIFIER_BYTES: usize = 63;

/// What a sync key column's type allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SyncKeyKind {
    /// Timestamps and dates: lag is a duration and an overlap window applies.
    Temporal,
    /// Integers and numeric: ordered, but not a time.
    Ordinal,
}

/// The sync key kind of a (base) type oid; `None` for types a sync key
/// cannot have. Built-in oids are fixed across PostgreSQL versions.
fn sync_key_kind(base_type: u32) -> Option<SyncKeyKind> {
    match base_type {
        // date, timestamp, timestamptz
        1082 | 1114 | 1184 => Some(SyncKeyKind::Temporal),
        // int2, int4, int8, numeric
        21 | 23 | 20 | 1700 => Some(SyncKeyKind::Ordinal),
        _ => None,
    }
}

/// What subtracting two values of a sync key's (base) type gives, for lag.
pub fn key_difference(base_type: u32) -> Option<super::sql::KeyDifference> {
    use super::sql::KeyDifference;
    match (base_type, sync_key_kind(base_type)?) {
        (1082, _) => Some(KeyDifference::Days),
        (_, SyncKeyKind::Temporal) => Some(KeyDifference::Interval),
        (_, SyncKeyKind::Ordinal) => Some(KeyDifference::Number),
    }
}

const SYNC_KEY_TYPES: &str = "timestamp, timestamptz, date, smallint, integer, bigint or numeric";

/// Splits a schema-qualified table name into (schema, table) as PostgreSQL
/// reads it: unquoted parts fold to lower case, `"quoted"` parts are exact
/// (with `""` for a quote). The error says what is wrong with the text.
pub fn parse_table_name(text: &str) -> Result<(String, String), String> {
    let mut parts = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        let mut part = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    None => return Err("unterminated quoted identifier".to_owned()),
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        part.push('"');
                    }
                    Some('"') => break,
                    Some(c) => part.push(c),
                }
            }
            if part.is_empty() {
                return Err("empty quoted identifier".to_owned());
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == '.' {
                    break;
                }
                if !(c.is_alphanumeric() || c == '_' || c == '$') {
                    return Err(format!(
                        "unexpected {c:?}: unquoted names hold letters, digits, _ and $ (quote others)"
                    ));
                }
                // PostgreSQL folds only ASCII letters of unquoted names.
                part.push(c.to_ascii_lowercase());
                chars.next();
            }
            match part.chars().next() {
                None => return Err("must be schema-qualified, e.g. \"public.orders\"".to_owned()),
                Some(first) if first.is_ascii_digit() || first == '$' => {
                    return Err(format!("an unquoted name cannot start with {first:?}"));
                }
                Some(_) => {}
            }
        }
        if part.len() > MAX_IDENTIFIER_BYTES {
            return Err(format!("{part:?} is longer than {MAX_IDENTIFIER_BYTES} bytes"));
        }
        parts.push(part);
        match chars.next() {
            None => break,
            Some('.') => {}
            Some(c) => return Err(format!("unexpected {c:?} after a quoted name")),
        }
    }
    match <[String; 2]>::try_from(parts) {
        Ok([schema, table]) => Ok((schema, table)),
        Err(parts) if parts.len() < 2 => Err("must be schema-qualified, e.g. \"public.orders\"".to_owned()),
        Err(_) => Err("must be schema.table; other databases cannot be named".to_owned()),
    }
}

/// Checks what can be checked without a connection. Unknown clouds and
/// databases are NOT_FOUND; everything else INVALID_ARGUMENT naming the field.
pub fn check_fields(spec: &JobSpec, registry: &Registry) -> Result<(), RequestError> {
    check_name(&spec.name)?;
    check_target(registry, &spec.source, "job.source")?;
    if spec.targets.is_empty() {
        return Err(RequestError::invalid(
            "job.targets",
            "at least one target is required",
        ));
    }
    if spec.targets.len() > MAX_TARGETS {
        return Err(RequestError::invalid(
            "job.targets",
            format!("{} targets; at most {MAX_TARGETS}", spec.targets.len()),
        ));
    }
    let mut seen = HashSet::new();
    for (index, target) in spec.targets.iter().enumerate() {
        let field = format!("job.targets[{index}]");
        check_target(registry, target, &field)?;
        if *target == spec.source {
            return Err(RequestError::invalid(
                field,
                format!("{target} is the source; a table cannot be copied onto itself"),
            ));
        }
        if !seen.insert(target) {
            return Err(RequestError::invalid(field, format!("{target} is listed twice")));
        }
    }
    check_tables(&spec.tables)?;
    match (&spec.sync_key, spec.mode) {
        (None, Mode::Incremental) => {
            return Err(RequestError::invalid(
                "job.sync_key",
                "required for REPLICATION_MODE_INCREMENTAL",
            ));
        }
        (Some(key), _) if key.len() > MAX_IDENTIFIER_BYTES => {
            return Err(RequestError::invalid(
                "job.sync_key",
                format!("longer than {MAX_IDENTIFIER_BYTES} bytes"),
            ));
        }
        _ => {}
    }
    check_window(spec.interval, "job.interval", MIN_INTERVAL)?;
    check_window(spec.overlap, "job.overlap", Duration::ZERO)?;
    if spec.batch_size == 0 || spec.batch_size > MAX_BATCH_SIZE {
        return Err(RequestError::invalid(
            "job.batch_size",
            format!(
                "{} is outside 1..={MAX_BATCH_SIZE} (0 for the default)",
                spec.batch_size
            ),
        ));
    }
    Ok(())
}

fn check_name(name: &str) -> Result<(), RequestError> {
    let invalid = |why: String| RequestError::invalid("job.name", why);
    let Some(first) = name.chars().next() else {
        return Err(invalid("required".to_owned()));
    };
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(invalid(format!("longer than {MAX_NAME_CHARS} characters")));
    }
    // Names show up in logs, metrics and URLs: keep them plain.
    if !first.is_ascii_alphanumeric() {
        return Err(invalid("must start with a letter or digit".to_owned()));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(invalid(format!(
            "{bad:?} is not allowed; use letters, digits, '-', '_' and '.'"
        )));
    }
    Ok(())
}

/// A target named in the configuration; `field` is its request path.
fn check_target(registry: &Registry, target: &Target, field: &str) -> Result<(), RequestError> {
    if target.cloud.is_empty() {
        return Err(RequestError::invalid(format!("{field}.cloud"), "required"));
    }
    if target.database.is_empty() {
        return Err(RequestError::invalid(format!("{field}.database"), "required"));
    }
    if registry.database_config(target).is_some() {
        return Ok(());
    }
    let cloud_known = registry.targets().iter().any(|known| known.cloud == target.cloud);
    Err(RequestError::NotFound(if cloud_known {
        format!(
            "{field}: no database {:?} in cloud {:?}",
            target.database, target.cloud
        )
    } else {
        format!("{field}: no cloud {:?}", target.cloud)
    }))
}

fn check_tables(tables: &[String]) -> Result<(), RequestError> {
    if tables.is_empty() {
        return Err(RequestError::invalid(
            "job.tables",
            "at least one table is required",
        ));
    }
    if tables.len() > MAX_TABLES {
        return Err(RequestError::invalid(
            "job.tables",
            format!("{} tables; at most {MAX_TABLES}", tables.len()),
        ));
    }
    let mut seen = HashMap::new();
    for (index, table) in tables.iter().enumerate() {
        let field = format!("job.tables[{index}]");
        let parsed = parse_table_name(table).map_err(|why| RequestError::invalid(&field, why))?;
        if let Some(first) = seen.insert(parsed, index) {
            return Err(RequestError::invalid(
                field,
                format!("names the same table as job.tables[{first}]"),
            ));
        }
    }
    Ok(())
}

/// A schedule interval or overlap window: stored in whole milliseconds, so
/// finer values are refused rather than silently rounded.
fn check_window(value: Option<Duration>, field: &str, min: Duration) -> Result<(), RequestError> {
    let Some(value) = value else {
        return Ok(());
    };
    if value < min {
        return Err(RequestError::invalid(
            field,
            format!(
                "{} is shorter than {}",
                humantime::format_duration(value),
                humantime::format_duration(min)
            ),
        ));
    }
    if value > MAX_WINDOW {
        return Err(RequestError::invalid(
            field,
            format!("longer than {}", humantime::format_duration(MAX_WINDOW)),
        ));
    }
    if value.subsec_nanos() % 1_000_000 != 0 {
        return Err(RequestError::invalid(
            field,
            "must be a whole number of milliseconds",
        ));
    }
    Ok(())
}

/// Reads the tables from the source and every target (concurrently) and
/// checks that the job fits them; returns the tables in PostgreSQL's
/// spelling, as they are to be stored. The spec's fields must have passed
/// [`check_fields`].
pub async fn check_catalogs(
    registry: &Registry,
    spec: &JobSpec,
    timeout: Duration,
) -> Result<Vec<String>, RequestError> {
    let source = catalog::read_tables(registry, &spec.source, &spec.tables, timeout);
    let targets = futures::future::join_all(
        spec.targets
            .iter()
            .map(|target| catalog::read_tables(registry, target, &spec.tables, timeout)),
    );
    let (source, targets) = tokio::join!(source, targets);
    let source = source?;
    let targets = targets.into_iter().collect::<Result<Vec<_>, _>>()?;
    fit(spec, &source, &targets)
}

/// The decision of [`check_catalogs`] from the shapes read: `source[i]` and
/// `targets[t][i]` are `spec.tables[i]` on the source and on
/// `spec.targets[t]`. Problems of the request (duplicate tables, sync key,
/// overlap) are INVALID_ARGUMENT; problems of the databases are one
/// FAILED_PRECONDITION listing every table and target concerned.
pub fn fit(
    spec: &JobSpec,
    source: &[Option<TableShape>],
    targets: &[Vec<Option<TableShape>>],
) -> Result<Vec<String>, RequestError> {
    let mut problems = Vec::new();
    let mut sync_key_problems = Vec::new();
    let mut non_temporal_key = None;
    let mut canonical = Vec::with_capacity(spec.tables.len());
    let mut seen = HashMap::new();
    let from = &spec.source;
    for (index, table) in spec.tables.iter().enumerate() {
        let Some(shape) = source.get(index).and_then(Option::as_ref) else {
            problems.push(format!("{table} does not exist on {from} (the source)"));
            canonical.push(table.clone());
            continue;
        };
        if let Some(first) = seen.insert(shape.name.clone(), index) {
            return Err(RequestError::invalid(
                format!("job.tables[{index}]"),
                format!("names the same table as job.tables[{first}] ({})", shape.name),
            ));
        }
        canonical.push(shape.name.clone());
        if !shape.is_table() {
            problems.push(format!(
                "{table} on {from} (the source) is a {}, not a table",
                shape.kind_name()
            ));
            continue;
        }
        if shape.primary_key.is_empty() {
            problems.push(format!("{table} on {from} (the source) has no primary key"));
        }
        if let Some(key) = &spec.sync_key {
            match shape.column(key) {
                None => sync_key_problems.push(format!("{table} on {from} has no column {key:?}")),
                Some(column) => match sync_key_kind(column.base_type) {
                    None => sync_key_problems.push(format!("{table}.{key} is {}", column.type_name)),
                    Some(SyncKeyKind::Ordinal) => {
                        non_temporal_key
                            .get_or_insert_with(|| format!("{table}.{key} is {}", column.type_name));
                    }
                    Some(SyncKeyKind::Temporal) => {}
                },
            }
        }
        for (target, shapes) in spec.targets.iter().zip(targets) {
            match shapes.get(index).and_then(Option::as_ref) {
                None => problems.push(format!("{table} does not exist on {target}")),
                Some(copy) => {
                    let differences = differences(shape, copy);
                    if !differences.is_empty() {
                        problems.push(format!(
                            "{table} on {target} differs from {from}: {}",
                            differences.join(", ")
                        ));
                    }
                }
            }
        }
    }
    if !sync_key_problems.is_empty() {
        return Err(RequestError::invalid(
            "job.sync_key",
            format!(
                "{}; a sync key must be a column of type {SYNC_KEY_TYPES}",
                sync_key_problems.join("; ")
            ),
        ));
    }
    if let (Some(_), Some(key)) = (spec.overlap, non_temporal_key) {
        return Err(RequestError::invalid(
            "job.overlap",
            format!("an overlap window needs a timestamp or date sync key, but {key}"),
        ));
    }
    if !problems.is_empty() {
        return Err(RequestError::FailedPrecondition(format!(
            "the tables do not fit the job: {}",
            problems.join("; ")
        )));
    }
    Ok(canonical)
}

/// How a target's table differs from the source's, one phrase each.
fn differences(source: &TableShape, copy: &TableShape) -> Vec<String> {
    if !copy.is_table() {
        return vec![format!("it is a {}, not a table", copy.kind_name())];
    }
    let mut found = Vec::new();
    // Upserts need the same key on both sides (ON CONFLICT names it).
    if !source.primary_key.is_empty() && copy.primary_key != source.primary_key {
        found.push(if copy.primary_key.is_empty() {
            format!(
                "no primary key (the source's is ({}))",
                source.primary_key.join(", ")
            )
        } else {
            format!(
                "primary key ({}) instead of ({})",
                copy.primary_key.join(", "),
                source.primary_key.join(", ")
            )
        });
    }
    for column in &source.columns {
        match copy.column(&column.name) {
            None => found.push(format!(
                "column {:?} ({}) is missing",
                column.name, column.type_name
            )),
            Some(other) if other.type_name != column.type_name => found.push(format!(
                "column {:?} is {} instead of {}",
                column.name, other.type_name, column.type_name
            )),
            Some(other) if other.generated != column.generated => found.push(if column.generated {
                format!("column {:?} is generated on the source but not here", column.name)
            } else {
                format!("column {:?} is generated here but not on the source", column.name)
            }),
            Some(_) => {}
        }
    }
    for column in &copy.columns {
        if source.column(&column.name).is_none() {
            found.push(format!(
                "column {:?} ({}) is not on the source",
                column.name, column.type_name
            ));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::catalog::Column;
    use super::*;

    #[test]
    fn table_names_parse_like_postgresql() {
        let ok = |text: &str, schema: &str, table: &str| {
            assert_eq!(
                parse_table_name(text),
                Ok((schema.to_owned(), table.to_owned())),
                "{text}"
            );
        };
        ok("public.orders", "public", "orders");
        ok("Public.Orders", "public", "orders");
        ok("\"Sales\".\"Order \"\"Lines\"\"\"", "Sales", "Order \"Lines\"");
        ok("s1.t$2", "s1", "t$2");
        for bad in [
            "",
            "orders",
            "public.",
            ".orders",
            "a.b.c",
            "public.ord ers",
            "public.\"orders",
            "public.\"\"",
            "public.1orders",
            "public.orders;drop",
            "\"a\"x.b",
        ] {
            assert!(parse_table_name(bad).is_err(), "{bad:?} should be refused");
        }
        let long = format!("public.{}", "x".repeat(64));
        assert!(parse_table_name(&long).is_err());
    }

    #[test]
    fn job_names_are_plain() {
        assert!(check_name("orders-to-analytics_v2.1").is_ok());
        for bad in ["", "-x", "a b", "a/b", "ä"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_name(&"a".repeat(MAX_NAME_CHARS + 1)).is_err());
    }

    #[test]
    fn windows_are_bounded_whole_milliseconds() {
        assert!(check_window(None, "f", MIN_INTERVAL).is_ok());
        assert!(check_window(Some(Duration::from_secs(60)), "f", MIN_INTERVAL).is_ok());
        assert!(check_window(Some(Duration::from_millis(999)), "f", MIN_INTERVAL).is_err());
        assert!(check_window(Some(Duration::from_micros(1_000_500)), "f", MIN_INTERVAL).is_err());
        assert!(check_window(Some(MAX_WINDOW + Duration::from_secs(1)), "f", MIN_INTERVAL).is_err());
    }

    fn column(name: &str, type_name: &str, base_type: u32) -> Column {
        Column {
            name: name.to_owned(),
            type_name: type_name.to_owned(),
            base_type,
            generated: false,
        }
    }

    fn shape(columns: Vec<Column>, primary_key: &[&str]) -> TableShape {
        TableShape {
            name: "public.t".to_owned(),
            kind: 'r',
            columns,
            primary_key: primary_key.iter().map(|c| (*c).to_owned()).collect(),
        }
    }

    fn spec(sync_key: Option<&str>, overlap: Option<Duration>) -> JobSpec {
        JobSpec {
            name: "j".to_owned(),
            source: Target::new("aws", "app"),
            targets: vec![Target::new("gcp", "app")],
            tables: vec!["public.t".to_owned()],
            sync_key: sync_key.map(str::to_owned),
            interval: None,
            enabled: true,
            mode: Mode::Incremental,
            batch_size: 10,
            overlap,
        }
    }

    #[test]
    fn fit_reports_every_difference_and_checks_the_sync_key() {
        let source = shape(
            vec![
                column("id", "bigint", 20),
                column("amount", "numeric(12,2)", 1700),
                column("note", "text", 25),
                column("updated_at", "timestamp with time zone", 1184),
            ],
            &["id"],
        );
        let target = shape(
            vec![
                column("id", "bigint", 20),
                column("amount", "text", 25),
                column("updated_at", "timestamp with time zone", 1184),
                column("extra", "integer", 23),
            ],
            &[],
        );
        let error = fit(
            &spec(Some("updated_at"), None),
            &[Some(source.clone())],
            &[vec![Some(target)]],
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        for phrase in [
            "public.t on gcp/app differs from aws/app",
            "no primary key (the source's is (id))",
            "column \"amount\" is text instead of numeric(12,2)",
            "column \"note\" (text) is missing",
            "column \"extra\" (integer) is not on the source",
        ] {
            assert!(error.contains(phrase), "{phrase:?} not in {error}");
        }

        let same = [vec![Some(source.clone())]];
        assert_eq!(
            fit(
                &spec(Some("updated_at"), Some(Duration::from_secs(5))),
                &[Some(source.clone())],
                &same
            )
            .ok(),
            Some(vec!["public.t".to_owned()])
        );
        let wrong_type = fit(&spec(Some("note"), None), &[Some(source.clone())], &same)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            wrong_type.starts_with("job.sync_key: public.t.note is text"),
            "{wrong_type}"
        );
        let overlap_on_integer = fit(
            &spec(Some("id"), Some(Duration::from_secs(5))),
            &[Some(source.clone())],
            &same,
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(
            overlap_on_integer.starts_with("job.overlap:"),
            "{overlap_on_integer}"
        );
        let missing = fit(&spec(None, None), &[None], &[vec![None]])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            missing.contains("public.t does not exist on aws/app (the source)"),
            "{missing}"
        );
    }
}
