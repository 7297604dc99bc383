//! The SQL text the copy engine sends, and the one piece of COPY output it
//! reads back (the last row's keys).
//!
//! Column names come from the catalog and are always quoted here
//! ([`quote_ident`]); table and type names are PostgreSQL's own renderings
//! (`format('%I.%I')`, `format_type`), already quoted by it. Values never
//! appear in the text: a `COPY (SELECT …)` cannot take bind parameters, so
//! keyset positions are bound to `set_config` first and read back inside
//! the query with `current_setting` (see [`SourceQuery`]).

/// Prefix of the transaction-local settings that carry keyset values into
/// the source's `COPY (SELECT …)`.
const SETTING_PREFIX: &str = "pgfleet_copy";

/// The temporary table a batch is staged in on a target (dropped on commit).
pub const BATCH_TABLE: &str = "pg_temp.pgfleet_copy_batch";

/// The temporary table holding every source primary key seen by a full
/// refresh on a target, for the final delete. Lives for the session.
pub const KEYS_TABLE: &str = "pg_temp.pgfleet_copy_source_keys";

/// A column name as a quoted SQL identifier: always quoted, so the catalog's
/// exact spelling (case, spaces, quotes) is what PostgreSQL sees.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Comma-separated quoted names, optionally qualified by `alias`.
fn column_list(names: &[String], alias: Option<&str>) -> String {
    names
        .iter()
        .map(|name| match alias {
            Some(alias) => format!("{alias}.{}", quote_ident(name)),
            None => quote_ident(name),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The name of the setting carrying the value of key column `index`.
pub fn key_setting(index: usize) -> String {
    format!("{SETTING_PREFIX}.k{index}")
}

/// The setting carrying the inclusive lower bound of the sync key.
pub fn from_setting() -> String {
    format!("{SETTING_PREFIX}.from")
}

/// The setting carrying the overlap window (an interval).
pub fn overlap_setting() -> String {
    format!("{SETTING_PREFIX}.overlap")
}

/// `CAST(current_setting('…') AS type)`: a bound value inside a COPY query.
fn setting_as(setting: &str, type_name: &str) -> String {
    format!("CAST(pg_catalog.current_setting('{setting}') AS {type_name})")
}

/// A key column: its name and `format_type` rendering.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyColumn {
    pub name: String,
    pub type_name: String,
}

/// Where a page of the source starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageStart {
    /// No lower bound.
    Beginning,
    /// The sync key at least `from` (minus the overlap window when `overlap`).
    From { overlap: bool },
    /// Strictly after a keyset position (one setting per key column).
    After,
}

/// How the source is paged: the copied columns, the key (sync key first
/// for incremental copies, then the primary key) and whether rows without a
/// sync key are left out.
#[derive(Debug, Clone)]
pub struct SourceQuery {
    /// `format('%I.%I')` of the source table.
    pub table: String,
    /// Columns copied, in the source's order.
    pub columns: Vec<String>,
    /// The keyset: (sync key, primary key…) or (primary key…).
    pub key: Vec<KeyColumn>,
    /// Incremental: the first key column is the sync key; NULL sync keys
    /// cannot be ordered against a watermark and are not copied.
    pub incremental: bool,
}

impl SourceQuery {
    /// `COPY (SELECT … ORDER BY key LIMIT n) TO STDOUT`, reading bounds from
    /// the settings of [`key_setting`], [`from_setting`], [`overlap_setting`].
    pub fn copy_out(&self, start: PageStart, limit: u32) -> String {
        let mut conditions = Vec::new();
        if self.incremental
            && let Some(sync) = self.key.first()
        {
            conditions.push(format!("{} IS NOT NULL", quote_ident(&sync.name)));
        }
        match start {
            PageStart::Beginning => {}
            PageStart::From { overlap } => {
                if let Some(sync) = self.key.first() {
                    let mut bound = setting_as(&from_setting(), &sync.type_name);
                    if overlap {
                        bound = format!("{bound} - {}", setting_as(&overlap_setting(), "interval"));
                    }
                    conditions.push(format!("{} >= {bound}", quote_ident(&sync.name)));
                }
            }
            PageStart::After => {
                let names: Vec<String> = self.key.iter().map(|k| k.name.clone()).collect();
                let values: Vec<String> = self
                    .key
                    .iter()
                    .enumerate()
                    .map(|(index, key)| setting_as(&key_setting(index), &key.type_name))
                    .collect();
                conditions.push(format!(
                    "({}) > ({})",
                    column_list(&names, None),
                    values.join(", ")
                ));
            }
        }
        let filter = if conditions.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", conditions.join(" AND "))
        };
        let order: Vec<String> = self.key.iter().map(|k| k.name.clone()).collect();
        format!(
            "COPY (SELECT {} FROM {}{filter} ORDER BY {} LIMIT {limit}) TO STDOUT",
            column_list(&self.columns, None),
            self.table,
            column_list(&order, None),
        )
    }
}

/// The statements of a target batch for one table.
#[derive(Debug, Clone)]
pub struct TargetStatements {
    /// `format('%I.%I')` of the target table.
    pub table: String,
    pub columns: Vec<String>,
    pub primary_key: Vec<String>,
}

impl TargetStatements {
    /// The batch's staging table: the target's columns and defaults, gone at
    /// commit.
    pub fn create_batch_table(&self) -> String {
        format!(
            "CREATE TEMPORARY TABLE {} (LIKE {} INCLUDING DEFAULTS) ON COMMIT DROP",
            BATCH_TABLE.trim_start_matches("pg_temp."),
            self.table
        )
    }

    /// A page straight into the target table (a copy that found it empty).
    pub fn copy_into_table(&self) -> String {
        format!(
            "COPY {} ({}) FROM STDIN",
            self.table,
            column_list(&self.columns, None)
        )
    }

    /// Whether the target table has no rows.
    pub fn is_empty(&self) -> String {
        format!("SELECT NOT EXISTS (SELECT 1 FROM {})", self.table)
    }

    pub fn copy_in(&self) -> String {
        format!(
            "COPY {BATCH_TABLE} ({}) FROM STDIN",
            column_list(&self.columns, None)
        )
    }

    /// Upserts the staged batch by primary key; every other column takes the
    /// source's value.
    pub fn upsert(&self) -> String {
        let updates: Vec<String> = self
            .columns
            .iter()
            .filter(|column| !self.primary_key.contains(column))
            .map(|column| format!("{0} = EXCLUDED.{0}", quote_ident(column)))
            .collect();
        let action = if updates.is_empty() {
            "NOTHING".to_owned()
        } else {
            format!("UPDATE SET {}", updates.join(", "))
        };
        format!(
            "INSERT INTO {} AS t ({columns}) SELECT {columns} FROM {BATCH_TABLE} ON CONFLICT ({}) DO {action}",
            self.table,
            column_list(&self.primary_key, None),
            columns = column_list(&self.columns, None),
        )
    }

    /// The session's table of source keys (full refresh), typed like the
    /// target's key columns.
    pub fn create_keys_table(&self) -> [String; 2] {
        [
            format!("DROP TABLE IF EXISTS {KEYS_TABLE}"),
            format!(
                "CREATE TEMPORARY TABLE {} AS SELECT {} FROM {} WITH NO DATA",
                KEYS_TABLE.trim_start_matches("pg_temp."),
                column_list(&self.primary_key, None),
                self.table
            ),
        ]
    }

    /// Adds the staged batch's keys to the session's key table.
    pub fn remember_keys(&self) -> String {
        let keys = column_list(&self.primary_key, None);
        format!("INSERT INTO {KEYS_TABLE} ({keys}) SELECT {keys} FROM {BATCH_TABLE}")
    }

    /// Removes target rows whose key the source did not have.
    pub fn delete_missing(&self) -> String {
        let matches: Vec<String> = self
            .primary_key
            .iter()
            .map(|key| format!("k.{0} = t.{0}", quote_ident(key)))
            .collect();
        format!(
            "DELETE FROM {} AS t WHERE NOT EXISTS (SELECT 1 FROM {KEYS_TABLE} AS k WHERE {})",
            self.table,
            matches.join(" AND ")
        )
    }

    pub fn analyze_keys(&self) -> String {
        format!("ANALYZE {KEYS_TABLE}")
    }

    pub fn drop_keys_table(&self) -> String {
        format!("DROP TABLE IF EXISTS {KEYS_TABLE}")
    }

    /// The target's current newest sync key, as text.
    pub fn max_of(&self, column: &str) -> String {
        format!(
            "SELECT pg_catalog.max({})::text FROM {}",
            quote_ident(column),
            self.table
        )
    }
}

/// What subtracting two sync key values gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyDifference {
    /// Integers and numeric: a number, not a time.
    Number,
    /// `date - date`: whole days.
    Days,
    /// Timestamps: an interval.
    Interval,
}

/// How far behind each watermark is: the table's newest sync key, its row
/// count (when `count`, else NULL) and, for each watermark bound in `$1`
/// (text, in order), the difference as text and, for temporal keys, in
/// seconds. One row per watermark, or one row with NULLs for none.
pub fn source_lag(table: &str, sync_key: &KeyColumn, difference: KeyDifference, count: bool) -> String {
    let key = quote_ident(&sync_key.name);
    let watermark = format!("CAST(w.value AS {})", sync_key.type_name);
    let seconds = match difference {
        KeyDifference::Number => "NULL::float8".to_owned(),
        KeyDifference::Days => format!("(s.newest - {watermark})::float8 * 86400"),
        KeyDifference::Interval => {
            format!("pg_catalog.date_part('epoch', s.newest - {watermark})::float8")
        }
    };
    let rows = if count {
        "pg_catalog.count(*)"
    } else {
        "NULL::bigint"
    };
    format!(
        "SELECT s.newest::text, s.row_count, (s.newest - {watermark})::text, {seconds} \
         FROM (SELECT pg_catalog.max({key}) AS newest, {rows} AS row_count FROM {table}) s \
         LEFT JOIN unnest($1::text[]) WITH ORDINALITY AS w(value, n) ON true ORDER BY w.n"
    )
}

/// `SELECT count(*)` of a table.
pub fn count_all(table: &str) -> String {
    format!("SELECT pg_catalog.count(*) FROM {table}")
}

/// Rows in a chunk of COPY text output: each ends with a newline (newlines
/// inside values are escaped as `\n`).
pub fn count_rows(data: &[u8]) -> u64 {
    data.iter().filter(|byte| **byte == b'\n').count() as u64
}

/// The fields at `indexes` of the last row of COPY text output, unescaped;
/// `None` for an empty output or a missing field, `Some(None)` inside for
/// NULL (`\N`). Values are UTF-8 (sqlx sets `client_encoding`).
pub fn last_row_fields(data: &[u8], indexes: &[usize]) -> Option<Vec<Option<String>>> {
    let body = data.strip_suffix(b"\n")?;
    let start = body
        .iter()
        .rposition(|byte| *byte == b'\n')
        .map_or(0, |at| at + 1);
    let fields: Vec<&[u8]> = body[start..].split(|byte| *byte == b'\t').collect();
    indexes
        .iter()
        .map(|index| fields.get(*index).map(|field| unescape(field)))
        .collect::<Option<Vec<_>>>()
        .map(|values| values.into_iter().collect())
}

/// One field of COPY text format: `\N` is NULL; backslash escapes as
/// PostgreSQL writes them (`\\`, `\b`, `\f`, `\n`, `\r`, `\t`, `\v`, and a
/// backslash before any other character stands for that character).
fn unescape(field: &[u8]) -> Option<String> {
    if field == b"\\N" {
        return None;
    }
    let mut out = Vec::with_capacity(field.len());
    let mut bytes = field.iter().copied();
    while let Some(byte) = bytes.next() {
        if byte != b'\\' {
            out.push(byte);
            continue;
        }
        match bytes.next() {
            Some(b'b') => out.push(0x08),
            Some(b'f') => out.push(0x0c),
            Some(b'n') => out.push(b'\n'),
            Some(b'r') => out.push(b'\r'),
            Some(b't') => out.push(b'\t'),
            Some(b'v') => out.push(0x0b),
            Some(other) => out.push(other),
            None => out.push(b'\\'),
        }
    }
    Some(String::from_utf8_lossy(&out).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_always_quoted() {
        for (name, quoted) in [
            ("id", "\"id\""),
            ("Order", "\"Order\""),
            ("a\"b", "\"a\"\"b\""),
            ("x; DROP TABLE t; --", "\"x; DROP TABLE t; --\""),
            ("ünï côdé", "\"ünï côdé\""),
            ("\"", "\"\"\"\""),
        ] {
            assert_eq!(quote_ident(name), quoted, "{name:?}");
        }
    }

    fn key(name: &str, type_name: &str) -> KeyColumn {
        KeyColumn {
            name: name.to_owned(),
            type_name: type_name.to_owned(),
        }
    }

    #[test]
    fn source_pages_bind_their_bounds_through_settings() {
        let query = SourceQuery {
            table: "public.orders".to_owned(),
            columns: vec!["id".to_owned(), "updated_at".to_owned(), "Note".to_owned()],
            key: vec![key("updated_at", "timestamp with time zone"), key("id", "bigint")],
            incremental: true,
        };
        assert_eq!(
            query.copy_out(PageStart::Beginning, 10),
            "COPY (SELECT \"id\", \"updated_at\", \"Note\" FROM public.orders WHERE \"updated_at\" IS NOT NULL \
             ORDER BY \"updated_at\", \"id\" LIMIT 10) TO STDOUT"
        );
        let from = query.copy_out(PageStart::From { overlap: true }, 10);
        assert!(
            from.contains(
                "\"updated_at\" >= CAST(pg_catalog.current_setting('pgfleet_copy.from') AS timestamp with time zone) \
                 - CAST(pg_catalog.current_setting('pgfleet_copy.overlap') AS interval)"
            ),
            "{from}"
        );
        let after = query.copy_out(PageStart::After, 10);
        assert!(
            after.contains(
                "(\"updated_at\", \"id\") > (CAST(pg_catalog.current_setting('pgfleet_copy.k0') AS timestamp with time zone), \
                 CAST(pg_catalog.current_setting('pgfleet_copy.k1') AS bigint))"
            ),
            "{after}"
        );
        let full = SourceQuery {
            incremental: false,
            key: vec![key("id", "bigint")],
            ..query
        };
        assert!(!full.copy_out(PageStart::Beginning, 5).contains("WHERE"));
    }

    #[test]
    fn target_statements_upsert_every_non_key_column() {
        let statements = TargetStatements {
            table: "public.\"Orders\"".to_owned(),
            columns: vec!["id".to_owned(), "line".to_owned(), "note".to_owned()],
            primary_key: vec!["id".to_owned(), "line".to_owned()],
        };
        assert_eq!(
            statements.upsert(),
            "INSERT INTO public.\"Orders\" AS t (\"id\", \"line\", \"note\") SELECT \"id\", \"line\", \"note\" \
             FROM pg_temp.pgfleet_copy_batch ON CONFLICT (\"id\", \"line\") DO UPDATE SET \"note\" = EXCLUDED.\"note\""
        );
        assert_eq!(
            statements.delete_missing(),
            "DELETE FROM public.\"Orders\" AS t WHERE NOT EXISTS (SELECT 1 FROM pg_temp.pgfleet_copy_source_keys AS k \
             WHERE k.\"id\" = t.\"id\" AND k.\"line\" = t.\"line\")"
        );
        let keys_only = TargetStatements {
            columns: vec!["id".to_owned()],
            primary_key: vec!["id".to_owned()],
            ..statements
        };
        assert!(keys_only.upsert().ends_with("DO NOTHING"));
    }

    #[test]
    fn the_last_row_of_copy_text_is_unescaped() {
        let data = b"1\tfirst\t\\N\n2\ttab\\there\\\\ new\\nline \xc3\xa9\t2024-01-02 03:04:05+00\n";
        assert_eq!(count_rows(data), 2);
        assert_eq!(
            last_row_fields(data, &[2, 0, 1]),
            Some(vec![
                Some("2024-01-02 03:04:05+00".to_owned()),
                Some("2".to_owned()),
                Some("tab\there\\ new\nline é".to_owned()),
            ])
        );
        assert_eq!(last_row_fields(b"7\t\\N\n", &[1]), Some(vec![None]));
        assert_eq!(last_row_fields(b"", &[0]), None);
        assert_eq!(last_row_fields(b"1\t2\n", &[5]), None);
        assert_eq!(
            last_row_fields(b"only\n", &[0]),
            Some(vec![Some("only".to_owned())])
        );
    }
}
