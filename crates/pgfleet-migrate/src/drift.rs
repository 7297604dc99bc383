//! The live schema of a target, read from the catalogs, and the differences
//! between two targets: the schema integrity check across clouds.
//!
//! Objects are compared by name and by PostgreSQL's own rendering of their
//! definition (`format_type`, `pg_get_indexdef`, `pg_get_constraintdef`,
//! `pg_get_viewdef`, `pg_get_functiondef`), so equal definitions compare
//! equal whatever text created them. pgfleet's own schema, the system
//! schemas and objects that belong to extensions are left out.

use std::collections::BTreeMap;
use std::fmt;

use sqlx::PgConnection;

use crate::failure::PgFailure;

/// What kind of object a snapshot entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ObjectKind {
    Table,
    Column,
    Index,
    Constraint,
    View,
    Function,
}

impl ObjectKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectKind::Table => "table",
            ObjectKind::Column => "column",
            ObjectKind::Index => "index",
            ObjectKind::Constraint => "constraint",
            ObjectKind::View => "view",
            ObjectKind::Function => "function",
        }
    }
}

impl fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One object of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaObject {
    /// The table it belongs to (columns, indexes, constraints), so a missing
    /// table is reported once rather than with each of its parts.
    pub table: Option<String>,
    /// What is compared: `type`, `not_null`, `default`, `definition`…
    pub attributes: BTreeMap<&'static str, String>,
}

impl SchemaObject {
    fn describe(&self) -> String {
        self.attributes
            .iter()
            .map(|(name, value)| format!("{name}: {value}"))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// The schema of one target: every object by kind and qualified name
/// (identifiers quoted where PostgreSQL would need it).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SchemaSnapshot {
    pub objects: BTreeMap<(ObjectKind, String), SchemaObject>,
}

/// One difference between a reference target and another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    pub kind: ObjectKind,
    /// Qualified name: `public.accounts`, `public.accounts.email`, `public.f(integer)`.
    pub object: String,
    /// The attribute that differs; `None` when the object exists on one side only.
    pub aspect: Option<&'static str>,
    /// On the reference target; `None` when it lacks the object.
    pub reference: Option<String>,
    /// On the other target; `None` when it lacks the object.
    pub other: Option<String>,
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind, self.object)?;
        match (&self.aspect, &self.reference, &self.other) {
            (Some(aspect), reference, other) => write!(
                f,
                ": {aspect} is {} on the reference, {} here",
                reference.as_deref().unwrap_or("(none)"),
                other.as_deref().unwrap_or("(none)")
            ),
            (None, Some(reference), None) => write!(f, ": missing here (reference has {reference})"),
            (None, None, Some(other)) => write!(f, ": only here ({other})"),
            (None, _, _) => Ok(()),
        }
    }
}

/// Reading the catalogs failed.
#[derive(Debug, thiserror::Error)]
#[error("reading the schema of the target: {0}")]
pub struct DriftError(pub Box<PgFailure>);

impl From<sqlx::Error> for DriftError {
    fn from(error: sqlx::Error) -> Self {
        Self(Box::new(PgFailure::from_sqlx(&error)))
    }
}

/// ` AND` conditions keeping namespace `$n` when it is a user schema other
/// than pgfleet's and, if `$1` (a text array) is not empty, one of `$1`.
macro_rules! user_schema {
    ($n:literal) => {
        concat!(
            " AND ",
            $n,
            ".nspname <> 'pgfleet' AND ",
            $n,
            ".nspname <> 'information_schema'",
            " AND ",
            $n,
            ".nspname NOT LIKE 'pg\\_%'",
            " AND (cardinality($1::text[]) = 0 OR ",
            $n,
            ".nspname = ANY($1::text[]))"
        )
    };
}

/// ` AND` condition leaving out objects created by an extension.
macro_rules! not_extension {
    ($catalog:literal, $oid:literal) => {
        concat!(
            " AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d WHERE d.classid = '",
            $catalog,
            "'::regclass AND d.objid = ",
            $oid,
            " AND d.deptype = 'e')"
        )
    };
}

const TABLES: &str = concat!(
    "SELECT format('%I.%I', n.nspname, c.relname), c.relkind::text, c.relpersistence::text \
     FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
     WHERE c.relkind IN ('r', 'p')",
    user_schema!("n"),
    not_extension!("pg_class", "c.oid")
);

const COLUMNS: &str = concat!(
    "SELECT format('%I.%I', n.nspname, c.relname), quote_ident(a.attname), \
            format_type(a.atttypid, a.atttypmod), a.attnotnull, \
            pg_get_expr(ad.adbin, ad.adrelid), a.attidentity::text, a.attgenerated::text \
     FROM pg_catalog.pg_attribute a \
     JOIN pg_catalog.pg_class c ON c.oid = a.attrelid \
     JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
     LEFT JOIN pg_catalog.pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum \
     WHERE c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped",
    user_schema!("n"),
    not_extension!("pg_class", "c.oid")
);

const INDEXES: &str = concat!(
    "SELECT format('%I.%I', n.nspname, ic.relname), format('%I.%I', n.nspname, t.relname), \
            pg_get_indexdef(i.indexrelid) \
     FROM pg_catalog.pg_index i \
     JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid \
     JOIN pg_catalog.pg_class t ON t.oid = i.indrelid \
     JOIN pg_catalog.pg_namespace n ON n.oid = ic.relnamespace \
     WHERE true",
    user_schema!("n"),
    not_extension!("pg_class", "t.oid")
);

const CONSTRAINTS: &str = concat!(
    "SELECT format('%I.%I', n.nspname, t.relname), quote_ident(co.conname), co.contype::text, \
            pg_get_constraintdef(co.oid) \
     FROM pg_catalog.pg_constraint co \
     JOIN pg_catalog.pg_class t ON t.oid = co.conrelid \
     JOIN pg_catalog.pg_namespace n ON n.oid = t.relnamespace \
     WHERE true",
    user_schema!("n"),
    not_extension!("pg_class", "t.oid")
);

const VIEWS: &str = concat!(
    "SELECT format('%I.%I', n.nspname, c.relname), c.relkind::text, pg_get_viewdef(c.oid, true) \
     FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
     WHERE c.relkind IN ('v', 'm')",
    user_schema!("n"),
    not_extension!("pg_class", "c.oid")
);

const FUNCTIONS: &str = concat!(
    "SELECT format('%I.%I(%s)', n.nspname, p.proname, pg_get_function_identity_arguments(p.oid)), \
            p.prokind::text, \
            CASE WHEN p.prokind IN ('f', 'p') THEN pg_get_functiondef(p.oid) \
                 ELSE pg_get_function_result(p.oid) END \
     FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
     WHERE true",
    user_schema!("n"),
    not_extension!("pg_proc", "p.oid")
);

/// Reads the schema of the target behind `conn`: the schemas named in
/// `schemas`, or every user schema when empty (`pgfleet` never). Reads only.
pub async fn schema_snapshot(
    conn: &mut PgConnection,
    schemas: &[&str],
) -> Result<SchemaSnapshot, DriftError> {
    let schemas: Vec<String> = schemas.iter().map(|s| (*s).to_owned()).collect();
    let mut snapshot = SchemaSnapshot::default();
    let mut add = |kind, name: String, table: Option<String>, attributes: Vec<(&'static str, String)>| {
        snapshot.objects.insert(
            (kind, name),
            SchemaObject {
                table,
                attributes: attributes.into_iter().collect(),
            },
        );
    };

    let tables: Vec<(String, String, String)> = sqlx::query_as(TABLES)
        .bind(&schemas)
        .fetch_all(&mut *conn)
        .await?;
    for (name, relkind, persistence) in tables {
        let kind = if relkind == "p" {
            "partitioned table"
        } else {
            "table"
        };
        let persistence = if persistence == "u" { "unlogged" } else { "logged" };
        add(
            ObjectKind::Table,
            name,
            None,
            vec![("kind", kind.to_owned()), ("persistence", persistence.to_owned())],
        );
    }

    type ColumnRow = (String, String, String, bool, Option<String>, String, String);
    let columns: Vec<ColumnRow> = sqlx::query_as(COLUMNS)
        .bind(&schemas)
        .fetch_all(&mut *conn)
        .await?;
    for (table, column, data_type, not_null, default, identity, generated) in columns {
        let mut attributes = vec![
            ("type", data_type),
            ("not_null", not_null.to_string()),
            ("default", default.unwrap_or_else(|| "(none)".to_owned())),
        ];
        if !identity.is_empty() {
            attributes.push(("identity", identity));
        }
        if !generated.is_empty() {
            attributes.push(("generated", generated));
        }
        add(
            ObjectKind::Column,
            format!("{table}.{column}"),
            Some(table),
            attributes,
        );
    }

    let indexes: Vec<(String, String, String)> = sqlx::query_as(INDEXES)
        .bind(&schemas)
        .fetch_all(&mut *conn)
        .await?;
    for (name, table, definition) in indexes {
        add(
            ObjectKind::Index,
            name,
            Some(table),
            vec![("definition", definition)],
        );
    }

    let constraints: Vec<(String, String, String, String)> = sqlx::query_as(CONSTRAINTS)
        .bind(&schemas)
        .fetch_all(&mut *conn)
        .await?;
    for (table, name, contype, definition) in constraints {
        add(
            ObjectKind::Constraint,
            format!("{table}.{name}"),
            Some(table),
            vec![("type", contype), ("definition", definition)],
        );
    }

    let views: Vec<(String, String, String)> =
        sqlx::query_as(VIEWS).bind(&schemas).fetch_all(&mut *conn).await?;
    for (name, relkind, definition) in views {
        let kind = if relkind == "m" {
            "materialized view"
        } else {
            "view"
        };
        add(
            ObjectKind::View,
            name,
            None,
            vec![("kind", kind.to_owned()), ("definition", definition)],
        );
    }

    let functions: Vec<(String, String, String)> = sqlx::query_as(FUNCTIONS)
        .bind(&schemas)
        .fetch_all(&mut *conn)
        .await?;
    for (name, prokind, definition) in functions {
        add(
            ObjectKind::Function,
            name,
            None,
            vec![("kind", prokind), ("definition", definition)],
        );
    }
    Ok(snapshot)
}

/// Every difference of `other` against `reference`, by kind then name. An
/// object missing on one side is one difference (its table's columns,
/// indexes and constraints are not listed again when the whole table is missing).
pub fn diff(reference: &SchemaSnapshot, other: &SchemaSnapshot) -> Vec<Difference> {
    let table_only_in = |snapshot: &SchemaSnapshot, absent: &SchemaSnapshot, object: &SchemaObject| {
        object.table.as_ref().is_some_and(|table| {
            let key = (ObjectKind::Table, table.clone());
            snapshot.objects.contains_key(&key) && !absent.objects.contains_key(&key)
        })
    };
    let mut differences = Vec::new();
    for ((kind, name), object) in &reference.objects {
        match other.objects.get(&(*kind, name.clone())) {
            None => {
                if !table_only_in(reference, other, object) {
                    differences.push(Difference {
                        kind: *kind,
                        object: name.clone(),
                        aspect: None,
                        reference: Some(object.describe()),
                        other: None,
                    });
                }
            }
            Some(theirs) => {
                let aspects: std::collections::BTreeSet<&'static str> = object
                    .attributes
                    .keys()
                    .chain(theirs.attributes.keys())
                    .copied()
                    .collect();
                for aspect in aspects {
                    let ours = object.attributes.get(aspect);
                    let their = theirs.attributes.get(aspect);
                    if ours != their {
                        differences.push(Difference {
                            kind: *kind,
                            object: name.clone(),
                            aspect: Some(aspect),
                            reference: ours.cloned(),
                            other: their.cloned(),
                        });
                    }
                }
            }
        }
    }
    for ((kind, name), object) in &other.objects {
        if !reference.objects.contains_key(&(*kind, name.clone())) && !table_only_in(other, reference, object)
        {
            differences.push(Difference {
                kind: *kind,
                object: name.clone(),
                aspect: None,
                reference: None,
                other: Some(object.describe()),
            });
        }
    }
    differences.sort_by(|a, b| (a.kind, &a.object, a.aspect).cmp(&(b.kind, &b.object, b.aspect)));
    differences
}

#[cfg(test)]
mod tests {
    use super::*;

    type Entry<'a> = (
        ObjectKind,
        &'a str,
        Option<&'a str>,
        &'a [(&'static str, &'a str)],
    );

    fn snapshot(objects: &[Entry<'_>]) -> SchemaSnapshot {
        SchemaSnapshot {
            objects: objects
                .iter()
                .map(|(kind, name, table, attributes)| {
                    (
                        (*kind, (*name).to_owned()),
                        SchemaObject {
                            table: table.map(str::to_owned),
                            attributes: attributes.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
                        },
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn a_missing_table_is_one_difference_and_changed_columns_name_the_aspect() {
        use ObjectKind::*;
        let reference = snapshot(&[
            (Table, "public.a", None, &[("kind", "table")]),
            (Column, "public.a.id", Some("public.a"), &[("type", "integer")]),
            (Table, "public.b", None, &[("kind", "table")]),
            (Column, "public.b.x", Some("public.b"), &[("type", "integer")]),
        ]);
        let other = snapshot(&[
            (Table, "public.a", None, &[("kind", "table")]),
            (Column, "public.a.id", Some("public.a"), &[("type", "bigint")]),
            (Column, "public.a.extra", Some("public.a"), &[("type", "text")]),
        ]);
        let differences = diff(&reference, &other);
        let shown: Vec<String> = differences.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "table public.b: missing here (reference has kind: table)",
                "column public.a.extra: only here (type: text)",
                "column public.a.id: type is integer on the reference, bigint here",
            ],
        );
        assert!(diff(&reference, &reference).is_empty());
    }
}
