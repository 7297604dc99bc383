//! What a target's catalog says about the tables of a job: whether each
//! exists and is a table, its columns with their types, and its primary key.
//!
//! Read from the target's primary (`Route::Write`): that is where copies
//! read and write, and a replica may not have replayed recent DDL yet.
//! Table names are bind parameters resolved by `to_regclass`, never spliced
//! into SQL.

use std::collections::HashMap;
use std::time::Duration;

use pgfleet_registry::{ReadOnlyError, Registry, RegistryError, Route, Target};
use sqlx::PgConnection;
use sqlx::postgres::types::Oid;

/// One column of a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    /// `format_type` with the modifier, e.g. `numeric(12,2)`, compared
    /// between source and targets.
    pub type_name: String,
    /// The type's oid, or its base type's for a domain; decides what a sync
    /// key may be.
    pub base_type: u32,
    /// A generated column (cannot be written).
    pub generated: bool,
}

/// A table as one target's catalog describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableShape {
    /// `format('%I.%I', schema, table)`: PostgreSQL's spelling of the name.
    pub name: String,
    /// `pg_class.relkind`: `r` table, `p` partitioned table, `v` view, ...
    pub kind: char,
    /// In column order.
    pub columns: Vec<Column>,
    /// Primary key columns in key order; empty without a primary key.
    pub primary_key: Vec<String>,
}

impl TableShape {
    /// True for relations rows can be copied into and out of with keys.
    pub fn is_table(&self) -> bool {
        matches!(self.kind, 'r' | 'p')
    }

    /// What the relation is, for messages.
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            'r' => "table",
            'p' => "partitioned table",
            'v' => "view",
            'm' => "materialized view",
            'f' => "foreign table",
            'S' => "sequence",
            'i' | 'I' => "index",
            'c' => "composite type",
            _ => "relation",
        }
    }

    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|column| column.name == name)
    }
}

/// Why a catalog could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// No connection (unknown target, unreachable, refused).
    #[error(transparent)]
    Connect(#[from] RegistryError),
    /// The catalog query ran past the statement timeout.
    #[error("{0}: the catalog query timed out")]
    TimedOut(Target),
    /// The connection broke while reading.
    #[error("{target}: reading the catalog failed: {source}")]
    ConnectionLost {
        target: Target,
        #[source]
        source: sqlx::Error,
    },
    /// Anything else: a bug or an unexpected catalog.
    #[error("{target}: catalog query failed: {source}")]
    Query {
        target: Target,
        #[source]
        source: sqlx::Error,
    },
}

impl CatalogError {
    /// A failed catalog statement, classified: timed out, connection lost,
    /// or the query itself.
    pub fn from_query(target: &Target, error: sqlx::Error) -> Self {
        let timed_out = matches!(&error, sqlx::Error::Database(db) if db.code().as_deref() == Some("57014"));
        let connection_lost = pgfleet_registry::is_transient(&error)
            || matches!(error, sqlx::Error::Protocol(_) | sqlx::Error::WorkerCrashed)
            || matches!(&error, sqlx::Error::Database(db) if db.code().is_some_and(|code| code.starts_with("57P")));
        let target = target.clone();
        if timed_out {
            CatalogError::TimedOut(target)
        } else if connection_lost {
            CatalogError::ConnectionLost {
                target,
                source: error,
            }
        } else {
            CatalogError::Query {
                target,
                source: error,
            }
        }
    }
}

#[derive(sqlx::FromRow)]
struct RelationRow {
    position: i64,
    oid: Option<Oid>,
    name: Option<String>,
    kind: Option<String>,
}

#[derive(sqlx::FromRow)]
struct ColumnRow {
    table_oid: Oid,
    name: String,
    type_name: String,
    base_type: Oid,
    generated: bool,
}

#[derive(sqlx::FromRow)]
struct KeyRow {
    table_oid: Oid,
    name: String,
}

/// The shape of each of `tables` on `target`, in the same order; `None` for
/// a name that resolves to nothing. Names must be schema-qualified and
/// syntactically valid (`to_regclass` raises on malformed names); see
/// [`super::validate::parse_table_name`]. Every statement stops after
/// `timeout`.
pub async fn read_tables(
    registry: &Registry,
    target: &Target,
    tables: &[String],
    timeout: Duration,
) -> Result<Vec<Option<TableShape>>, CatalogError> {
    registry
        .read_only(target, Route::Write, timeout, async |connection| {
            read(connection, tables).await
        })
        .await
        .map_err(|error| match error {
            ReadOnlyError::Acquire(error) => CatalogError::Connect(error),
            ReadOnlyError::Query(error) => CatalogError::from_query(target, error),
        })
}

async fn read(
    transaction: &mut PgConnection,
    tables: &[String],
) -> Result<Vec<Option<TableShape>>, sqlx::Error> {
    let relations: Vec<RelationRow> = sqlx::query_as(concat!(
        "SELECT i.position, c.oid, ",
        // %I raises on NULL, which an unknown name yields.
        "CASE WHEN c.oid IS NOT NULL THEN pg_catalog.format('%I.%I', n.nspname, c.relname) END AS name, ",
        "c.relkind::text AS kind ",
        "FROM unnest($1::text[]) WITH ORDINALITY AS i(name, position) ",
        "LEFT JOIN pg_catalog.pg_class AS c ON c.oid = pg_catalog.to_regclass(i.name) ",
        "LEFT JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace ",
        "ORDER BY i.position"
    ))
    .bind(tables)
    .fetch_all(&mut *transaction)
    .await?;
    let oids: Vec<Oid> = relations.iter().filter_map(|relation| relation.oid).collect();
    let columns: Vec<ColumnRow> = sqlx::query_as(concat!(
        "SELECT a.attrelid AS table_oid, a.attname::text AS name, ",
        "pg_catalog.format_type(a.atttypid, a.atttypmod) AS type_name, ",
        // A domain copies like its base type.
        "CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE a.atttypid END AS base_type, ",
        "a.attgenerated <> '' AS generated ",
        "FROM pg_catalog.pg_attribute AS a ",
        "JOIN pg_catalog.pg_type AS t ON t.oid = a.atttypid ",
        "WHERE a.attrelid = ANY($1) AND a.attnum > 0 AND NOT a.attisdropped ",
        "ORDER BY a.attrelid, a.attnum"
    ))
    .bind(&oids)
    .fetch_all(&mut *transaction)
    .await?;
    let keys: Vec<KeyRow> = sqlx::query_as(concat!(
        "SELECT k.conrelid AS table_oid, a.attname::text AS name ",
        "FROM pg_catalog.pg_constraint AS k ",
        "CROSS JOIN LATERAL unnest(k.conkey) WITH ORDINALITY AS u(attnum, position) ",
        "JOIN pg_catalog.pg_attribute AS a ON a.attrelid = k.conrelid AND a.attnum = u.attnum ",
        "WHERE k.conrelid = ANY($1) AND k.contype = 'p' ",
        "ORDER BY k.conrelid, u.position"
    ))
    .bind(&oids)
    .fetch_all(&mut *transaction)
    .await?;

    let mut columns_by_table: HashMap<u32, Vec<Column>> = HashMap::new();
    for row in columns {
        columns_by_table.entry(row.table_oid.0).or_default().push(Column {
            name: row.name,
            type_name: row.type_name,
            base_type: row.base_type.0,
            generated: row.generated,
        });
    }
    let mut keys_by_table: HashMap<u32, Vec<String>> = HashMap::new();
    for row in keys {
        keys_by_table.entry(row.table_oid.0).or_default().push(row.name);
    }
    let mut shapes = vec![None; tables.len()];
    for relation in relations {
        let (Some(oid), Some(name), Some(kind)) = (relation.oid, relation.name, relation.kind) else {
            continue;
        };
        let slot = usize::try_from(relation.position)
            .ok()
            .and_then(|position| position.checked_sub(1))
            .and_then(|index| shapes.get_mut(index));
        if let Some(slot) = slot {
            *slot = Some(TableShape {
                name,
                kind: kind.chars().next().unwrap_or('?'),
                // Cloned, not taken: two names may resolve to one table.
                columns: columns_by_table.get(&oid.0).cloned().unwrap_or_default(),
                primary_key: keys_by_table.get(&oid.0).cloned().unwrap_or_default(),
            });
        }
    }
    Ok(shapes)
}
