//! Whether a job may be stored. First its fields on their own ([`check_fields`]:
//! names, limits, configured targets), then against the catalogs of its
//! source and targets ([`check_catalogs`]: every table exists and is a table,
//! has a primary key, has the source's columns and types on every target,
//! and the sync key is a column of an orderable type). Mismatches are
//! reported, never patched.
//!
//! Errors are typed ([`Invalid`]) and name the spec's field ([`FieldPath`]);
//! the request that carried the spec decides how the field is spelled
//! ([`RequestKind`]): `job.targets[1].cloud` in CreateJob and UpdateJob,
//! `targets[1].cloud` and `table` in ReplicateTable.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use pgfleet_registry::{Registry, Target};

use super::catalog::{self, CatalogError, TableShape};
use super::{
    JobSpec, MAX_BATCH_SIZE, MAX_NAME_CHARS, MAX_TABLES, MAX_TARGETS, MAX_WINDOW, MIN_INTERVAL, Mode,
};
use crate::RequestError;

/// Where in a [`JobSpec`] a problem is (field, index, part), whichever
/// request carried the spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldPath {
    Name,
    Source(Part),
    Targets,
    Target(usize, Part),
    Tables,
    Table(usize),
    SyncKey,
    Interval,
    Overlap,
    BatchSize,
}

/// Which part of a target field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Whole,
    Cloud,
    Database,
}

/// The request a spec came in, which decides how its fields are named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// CreateJob and UpdateJob: the spec is their `job` field.
    Job,
    /// ReplicateTable: the fields at the top level, its one table `table`.
    ReplicateTable,
    /// A `[[replication.jobs]]` entry of the configuration: its keys.
    Declared,
}

impl FieldPath {
    /// The field's path in `request` (`job.targets[1].cloud`, `table`).
    pub fn path(self, request: RequestKind) -> String {
        let part = |part: Part| match part {
            Part::Whole => "",
            Part::Cloud => ".cloud",
            Part::Database => ".database",
        };
        let field = match self {
            FieldPath::Name => "name".to_owned(),
            FieldPath::Source(p) => format!("source{}", part(p)),
            FieldPath::Targets => "targets".to_owned(),
            FieldPath::Target(index, p) => format!("targets[{index}]{}", part(p)),
            FieldPath::Tables if request == RequestKind::ReplicateTable => "table".to_owned(),
            FieldPath::Tables => "tables".to_owned(),
            FieldPath::Table(_) if request == RequestKind::ReplicateTable => "table".to_owned(),
            FieldPath::Table(index) => format!("tables[{index}]"),
            FieldPath::SyncKey => "sync_key".to_owned(),
            FieldPath::Interval => "interval".to_owned(),
            FieldPath::Overlap => "overlap".to_owned(),
            FieldPath::BatchSize => "batch_size".to_owned(),
        };
        match request {
            RequestKind::Job => format!("job.{field}"),
            RequestKind::ReplicateTable | RequestKind::Declared => field,
        }
    }
}

/// Why a spec may not be stored or run.
#[derive(Debug, thiserror::Error)]
pub enum Invalid {
    /// A field is wrong, on its own or against the catalogs.
    #[error("{message}")]
    Field { field: FieldPath, message: String },
    /// A target names a cloud or database that is not configured.
    #[error("{message}")]
    Unknown { field: FieldPath, message: String },
    /// A target is configured `read_only = true`.
    #[error("{message}")]
    ReadOnly { field: FieldPath, message: String },
    /// The databases do not fit the spec: every table and target concerned.
    #[error("{}", .problems.join("; "))]
    Unfit { problems: Vec<String> },
    /// A catalog could not be read.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
}

impl Invalid {
    fn field(field: FieldPath, message: impl Into<String>) -> Self {
        Invalid::Field {
            field,
            message: message.into(),
        }
    }

    /// The refusal of `request`: its field names, its wording.
    pub fn in_request(self, request: RequestKind) -> RequestError {
        match self {
            Invalid::Field { field, message } => RequestError::invalid(field.path(request), message),
            Invalid::Unknown { field, message } => {
                RequestError::NotFound(format!("{}: {message}", field.path(request)))
            }
            Invalid::ReadOnly { field, message } => {
                RequestError::FailedPrecondition(format!("{}: {message}", field.path(request)))
            }
            Invalid::Unfit { problems } => RequestError::FailedPrecondition(format!(
                "{}: {}",
                match request {
                    RequestKind::Job | RequestKind::Declared => "the tables do not fit the job",
                    RequestKind::ReplicateTable => "the table cannot be copied",
                },
                problems.join("; ")
            )),
            Invalid::Catalog(error) => error.into(),
        }
    }
}

/// What [`fit`] checks a spec's tables against: the spec without what the
/// catalogs do not decide (name, schedule, batch size).
#[derive(Debug, Clone, Copy)]
pub struct Fitting<'a> {
    pub source: &'a Target,
    pub targets: &'a [Target],
    pub tables: &'a [String],
    pub sync_key: Option<&'a str>,
    pub overlap: Option<Duration>,
}

impl JobSpec {
    /// What the catalogs must fit.
    pub fn fitting(&self) -> Fitting<'_> {
        Fitting {
            source: &self.source,
            targets: &self.targets,
            tables: &self.tables,
            sync_key: self.sync_key.as_deref(),
            overlap: self.overlap,
        }
    }
}

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
pub fn check_fields(spec: &JobSpec, registry: &Registry) -> Result<(), Invalid> {
    check_name(&spec.name)?;
    check_target(registry, &spec.source, FieldPath::Source)?;
    if spec.targets.is_empty() {
        return Err(Invalid::field(
            FieldPath::Targets,
            "at least one target is required",
        ));
    }
    if spec.targets.len() > MAX_TARGETS {
        return Err(Invalid::field(
            FieldPath::Targets,
            format!("{} targets; at most {MAX_TARGETS}", spec.targets.len()),
        ));
    }
    let mut seen = HashSet::new();
    for (index, target) in spec.targets.iter().enumerate() {
        let field = |part| FieldPath::Target(index, part);
        check_target(registry, target, field)?;
        if registry
            .database_config(target)
            .is_some_and(|database| database.read_only)
        {
            return Err(Invalid::ReadOnly {
                field: field(Part::Whole),
                message: super::read_only_refusal(target),
            });
        }
        if *target == spec.source {
            return Err(Invalid::field(
                field(Part::Whole),
                format!("{target} is the source; a table cannot be copied onto itself"),
            ));
        }
        if !seen.insert(target) {
            return Err(Invalid::field(
                field(Part::Whole),
                format!("{target} is listed twice"),
            ));
        }
    }
    check_tables(&spec.tables)?;
    match (&spec.sync_key, spec.mode) {
        (None, Mode::Incremental) => {
            return Err(Invalid::field(
                FieldPath::SyncKey,
                "required for REPLICATION_MODE_INCREMENTAL",
            ));
        }
        (Some(key), _) if key.len() > MAX_IDENTIFIER_BYTES => {
            return Err(Invalid::field(
                FieldPath::SyncKey,
                format!("longer than {MAX_IDENTIFIER_BYTES} bytes"),
            ));
        }
        _ => {}
    }
    check_window(spec.interval, FieldPath::Interval, MIN_INTERVAL)?;
    check_window(spec.overlap, FieldPath::Overlap, Duration::ZERO)?;
    if spec.batch_size == 0 || spec.batch_size > MAX_BATCH_SIZE {
        return Err(Invalid::field(
            FieldPath::BatchSize,
            format!(
                "{} is outside 1..={MAX_BATCH_SIZE} (0 for the default)",
                spec.batch_size
            ),
        ));
    }
    Ok(())
}

fn check_name(name: &str) -> Result<(), Invalid> {
    let invalid = |why: String| Invalid::field(FieldPath::Name, why);
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

/// A target named in the configuration; `field` names its parts.
fn check_target(
    registry: &Registry,
    target: &Target,
    field: impl Fn(Part) -> FieldPath,
) -> Result<(), Invalid> {
    if target.cloud.is_empty() {
        return Err(Invalid::field(field(Part::Cloud), "required"));
    }
    if target.database.is_empty() {
        return Err(Invalid::field(field(Part::Database), "required"));
    }
    if registry.database_config(target).is_some() {
        return Ok(());
    }
    let cloud_known = registry.targets().iter().any(|known| known.cloud == target.cloud);
    Err(Invalid::Unknown {
        field: field(Part::Whole),
        message: if cloud_known {
            format!("no database {:?} in cloud {:?}", target.database, target.cloud)
        } else {
            format!("no cloud {:?}", target.cloud)
        },
    })
}

fn check_tables(tables: &[String]) -> Result<(), Invalid> {
    if tables.is_empty() {
        return Err(Invalid::field(
            FieldPath::Tables,
            "at least one table is required",
        ));
    }
    if tables.len() > MAX_TABLES {
        return Err(Invalid::field(
            FieldPath::Tables,
            format!("{} tables; at most {MAX_TABLES}", tables.len()),
        ));
    }
    let mut seen = HashMap::new();
    for (index, table) in tables.iter().enumerate() {
        let field = FieldPath::Table(index);
        let parsed = parse_table_name(table).map_err(|why| Invalid::field(field, why))?;
        if let Some(first) = seen.insert(parsed, index) {
            return Err(Invalid::field(
                field,
                format!(
                    "names the same table as {}",
                    FieldPath::Table(first).path(RequestKind::Job)
                ),
            ));
        }
    }
    Ok(())
}

/// A schedule interval or overlap window: stored in whole milliseconds, so
/// finer values are refused rather than silently rounded.
fn check_window(value: Option<Duration>, field: FieldPath, min: Duration) -> Result<(), Invalid> {
    let Some(value) = value else {
        return Ok(());
    };
    if value < min {
        return Err(Invalid::field(
            field,
            format!(
                "{} is shorter than {}",
                humantime::format_duration(value),
                humantime::format_duration(min)
            ),
        ));
    }
    if value > MAX_WINDOW {
        return Err(Invalid::field(
            field,
            format!("longer than {}", humantime::format_duration(MAX_WINDOW)),
        ));
    }
    if value.subsec_nanos() % 1_000_000 != 0 {
        return Err(Invalid::field(field, "must be a whole number of milliseconds"));
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
) -> Result<Vec<String>, Invalid> {
    let source = catalog::read_tables(registry, &spec.source, &spec.tables, timeout);
    let targets = futures::future::join_all(
        spec.targets
            .iter()
            .map(|target| catalog::read_tables(registry, target, &spec.tables, timeout)),
    );
    let (source, targets) = tokio::join!(source, targets);
    let source = source?;
    let targets = targets.into_iter().collect::<Result<Vec<_>, _>>()?;
    fit(spec.fitting(), &source, &targets)
}

/// The decision of [`check_catalogs`] from the shapes read: `source[i]` and
/// `targets[t][i]` are `spec.tables[i]` on the source and on
/// `spec.targets[t]`. Problems of the request (duplicate tables, sync key,
/// overlap) are INVALID_ARGUMENT; problems of the databases are one
/// FAILED_PRECONDITION listing every table and target concerned.
pub fn fit(
    spec: Fitting<'_>,
    source: &[Option<TableShape>],
    targets: &[Vec<Option<TableShape>>],
) -> Result<Vec<String>, Invalid> {
    let mut problems = Vec::new();
    let mut sync_key_problems = Vec::new();
    let mut non_temporal_key = None;
    let mut canonical = Vec::with_capacity(spec.tables.len());
    let mut seen = HashMap::new();
    let from = spec.source;
    for (index, table) in spec.tables.iter().enumerate() {
        let Some(shape) = source.get(index).and_then(Option::as_ref) else {
            problems.push(format!("{table} does not exist on {from} (the source)"));
            canonical.push(table.clone());
            continue;
        };
        if let Some(first) = seen.insert(shape.name.clone(), index) {
            return Err(Invalid::field(
                FieldPath::Table(index),
                format!(
                    "names the same table as {} ({})",
                    FieldPath::Table(first).path(RequestKind::Job),
                    shape.name
                ),
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
        if let Some(key) = spec.sync_key {
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
        return Err(Invalid::field(
            FieldPath::SyncKey,
            format!(
                "{}; a sync key must be a column of type {SYNC_KEY_TYPES}",
                sync_key_problems.join("; ")
            ),
        ));
    }
    if let (Some(_), Some(key)) = (spec.overlap, non_temporal_key) {
        return Err(Invalid::field(
            FieldPath::Overlap,
            format!("an overlap window needs a timestamp or date sync key, but {key}"),
        ));
    }
    if !problems.is_empty() {
        return Err(Invalid::Unfit { problems });
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
        let f = FieldPath::Interval;
        assert!(check_window(None, f, MIN_INTERVAL).is_ok());
        assert!(check_window(Some(Duration::from_secs(60)), f, MIN_INTERVAL).is_ok());
        assert!(check_window(Some(Duration::from_millis(999)), f, MIN_INTERVAL).is_err());
        assert!(check_window(Some(Duration::from_micros(1_000_500)), f, MIN_INTERVAL).is_err());
        assert!(check_window(Some(MAX_WINDOW + Duration::from_secs(1)), f, MIN_INTERVAL).is_err());
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

    /// [`fit`] as CreateJob reports it.
    fn fit_job(
        spec: &JobSpec,
        source: &[Option<TableShape>],
        targets: &[Vec<Option<TableShape>>],
    ) -> Result<Vec<String>, RequestError> {
        fit(spec.fitting(), source, targets).map_err(|error| error.in_request(RequestKind::Job))
    }

    #[test]
    fn fields_are_named_as_each_request_names_them() {
        let cases = [
            (
                FieldPath::Target(1, Part::Cloud),
                "job.targets[1].cloud",
                "targets[1].cloud",
            ),
            (FieldPath::Table(0), "job.tables[0]", "table"),
            (FieldPath::Source(Part::Whole), "job.source", "source"),
            (FieldPath::SyncKey, "job.sync_key", "sync_key"),
        ];
        for (field, job, one_shot) in cases {
            assert_eq!(field.path(RequestKind::Job), job);
            assert_eq!(field.path(RequestKind::ReplicateTable), one_shot);
        }
        let unfit = || Invalid::Unfit {
            problems: vec!["public.t has no primary key".to_owned()],
        };
        assert_eq!(
            unfit().in_request(RequestKind::Job).to_string(),
            "the tables do not fit the job: public.t has no primary key"
        );
        assert_eq!(
            unfit().in_request(RequestKind::ReplicateTable).to_string(),
            "the table cannot be copied: public.t has no primary key"
        );
        let unknown = Invalid::Unknown {
            field: FieldPath::Source(Part::Whole),
            message: "no cloud \"x\"".to_owned(),
        };
        assert_eq!(
            unknown.in_request(RequestKind::ReplicateTable).to_string(),
            "source: no cloud \"x\""
        );
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
        let error = fit_job(
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
            fit_job(
                &spec(Some("updated_at"), Some(Duration::from_secs(5))),
                &[Some(source.clone())],
                &same
            )
            .ok(),
            Some(vec!["public.t".to_owned()])
        );
        let wrong_type = fit_job(&spec(Some("note"), None), &[Some(source.clone())], &same)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            wrong_type.starts_with("job.sync_key: public.t.note is text"),
            "{wrong_type}"
        );
        let overlap_on_integer = fit_job(
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
        let missing = fit_job(&spec(None, None), &[None], &[vec![None]])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            missing.contains("public.t does not exist on aws/app (the source)"),
            "{missing}"
        );
    }
}
