//! Turning PostgreSQL result values into wire cells, faithfully.
//!
//! sqlx reads every result in PostgreSQL's binary format. Types with an
//! obvious protobuf form (bool, integers, floats, text, bytea, json) are
//! decoded here, and so are two whose text does not depend on any setting
//! (numeric and uuid, written exactly as their output functions write them).
//! Every other type (numeric, date/time, intervals, arrays,
//! ranges, enums, geometric, network, extension types...) is sent back to the
//! same connection as a typed binary parameter of `SELECT format('%s', $n)`,
//! so PostgreSQL's own output function renders it: the text is exactly what
//! psql shows under the session's DateStyle, IntervalStyle and TimeZone, for
//! any type that has binary I/O, including ones created a moment ago in the
//! same transaction. Two types PostgreSQL will not take back as a parameter
//! are handled here: `void` (whose output is always empty) and anonymous
//! records (`SELECT ROW(1, 'a')`, `SELECT t FROM t`: "input of anonymous
//! composite types is not implemented"), taken apart from their binary form
//! (each field carries its type) and put together as `record_out` does.

use super::encode::{Cell, Column, RowEncoder};
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::postgres::types::Oid;
use sqlx::postgres::{PgArgumentBuffer, PgArguments, PgColumn, PgRow, PgTypeInfo, PgValueRef};
use sqlx::{
    Arguments, Column as _, Encode, PgConnection, Postgres, Row as _, Type, TypeInfo as _, ValueRef as _,
};

/// PostgreSQL allows at most this many parameters in one statement.
const MAX_PARAMS: usize = 65_535;

/// Type OIDs decoded in Rust (pg_type.dat; stable across versions).
mod oid {
    pub const BOOL: u32 = 16;
    pub const BYTEA: u32 = 17;
    pub const NAME: u32 = 19;
    pub const INT8: u32 = 20;
    pub const INT2: u32 = 21;
    pub const INT4: u32 = 23;
    pub const TEXT: u32 = 25;
    pub const OID: u32 = 26;
    pub const JSON: u32 = 114;
    pub const NUMERIC: u32 = 1700;
    pub const UUID: u32 = 2950;
    pub const FLOAT4: u32 = 700;
    pub const FLOAT8: u32 = 701;
    pub const UNKNOWN: u32 = 705;
    pub const BPCHAR: u32 = 1042;
    pub const VARCHAR: u32 = 1043;
    pub const JSONB: u32 = 3802;
    pub const RECORD: u32 = 2249;
    pub const VOID: u32 = 2278;
}

/// How a column's values travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decoding {
    Bool,
    Int2,
    Int4,
    Int8,
    Oid,
    Float4,
    Float8,
    Text,
    Bytea,
    Json,
    Jsonb,
    /// numeric, written as `numeric_out` does.
    Numeric,
    /// uuid, written as `uuid_out` does.
    Uuid,
    /// void (a function that returns nothing): always empty text.
    Void,
    /// Rendered by PostgreSQL's output function.
    Formatted,
}

fn decoding_for(type_oid: u32) -> Decoding {
    match type_oid {
        oid::BOOL => Decoding::Bool,
        oid::INT2 => Decoding::Int2,
        oid::INT4 => Decoding::Int4,
        oid::INT8 => Decoding::Int8,
        oid::OID => Decoding::Oid,
        oid::FLOAT4 => Decoding::Float4,
        oid::FLOAT8 => Decoding::Float8,
        oid::TEXT | oid::VARCHAR | oid::BPCHAR | oid::NAME | oid::UNKNOWN => Decoding::Text,
        oid::BYTEA => Decoding::Bytea,
        oid::JSON => Decoding::Json,
        oid::JSONB => Decoding::Jsonb,
        oid::NUMERIC => Decoding::Numeric,
        oid::UUID => Decoding::Uuid,
        oid::VOID => Decoding::Void,
        _ => Decoding::Formatted,
    }
}

/// The columns of one result, with how each is decoded.
#[derive(Debug, Clone)]
pub struct ResultShape {
    pub columns: Vec<Column>,
    decodings: Vec<Decoding>,
}

impl ResultShape {
    /// No columns (a statement that returns none).
    pub fn empty() -> Self {
        Self {
            columns: Vec::new(),
            decodings: Vec::new(),
        }
    }

    /// The shape of `row`'s result; type names come from PostgreSQL's
    /// `format_type` (e.g. `timestamp with time zone`, `integer[]`).
    pub async fn of(columns: &[PgColumn], connection: &mut PgConnection) -> Result<Self, sqlx::Error> {
        if columns.is_empty() {
            return Ok(Self::empty());
        }
        let oids: Vec<u32> = columns.iter().map(|c| type_oid(c.type_info())).collect();
        let names = match type_names::known(&oids) {
            Some(names) => names,
            None => {
                let names: Vec<String> = sqlx::query_scalar(
                    "SELECT format_type(t, NULL) FROM unnest($1::oid[]) WITH ORDINALITY AS u(t, n) ORDER BY n",
                )
                .bind(oids.iter().map(|o| Oid(*o)).collect::<Vec<_>>())
                .fetch_all(&mut *connection)
                .await?;
                type_names::remember(&oids, &names);
                names
            }
        };
        let columns = columns
            .iter()
            .zip(&oids)
            .zip(names.into_iter().chain(std::iter::repeat(String::new())))
            .map(|((column, oid), name)| Column {
                name: column.name().to_owned(),
                type_oid: *oid,
                type_name: if name.is_empty() {
                    column.type_info().name().to_owned()
                } else {
                    name
                },
            })
            .collect();
        Ok(Self {
            columns,
            decodings: oids.into_iter().map(decoding_for).collect(),
        })
    }

    /// Whether some column's values are rendered by PostgreSQL, so
    /// converting rows of this shape needs the connection.
    pub fn renders_on_server(&self) -> bool {
        self.decodings.contains(&Decoding::Formatted)
    }

    /// Converts `rows` (all of this shape) to the caller's rows, rendering
    /// the formatted columns through `connection`.
    pub async fn convert<E: RowEncoder>(
        &self,
        rows: &[PgRow],
        connection: &mut PgConnection,
    ) -> Result<Vec<E::Row>, ValueError> {
        let (mut converted, pending) = self.decode_rows::<E>(rows)?;
        let mut leaves = Vec::new();
        let values = pending
            .iter()
            .map(|(_, _, oid, bytes)| Rendered::plan(*oid, bytes, &mut leaves))
            .collect::<Result<Vec<_>, _>>()?;
        let mut texts = Vec::with_capacity(leaves.len());
        for chunk in leaves.chunks(MAX_PARAMS.min(4096)) {
            texts.extend(render(chunk.iter().copied(), connection).await?);
        }
        for ((row, column, _, _), value) in pending.iter().zip(values) {
            E::replace(&mut converted[*row], *column, Cell::Formatted(value.text(&texts)));
        }
        Ok(converted)
    }

    /// Converts `rows` of a shape that [`renders_on_server`](Self::renders_on_server)
    /// is false for, without the connection (which may be busy reading them).
    pub fn convert_plain<E: RowEncoder>(&self, rows: &[PgRow]) -> Result<Vec<E::Row>, ValueError> {
        let (converted, pending) = self.decode_rows::<E>(rows)?;
        if pending.is_empty() {
            Ok(converted)
        } else {
            Err(ValueError::Malformed {
                type_name: "formatted",
                reason: "a value needs PostgreSQL to render it".to_owned(),
            })
        }
    }

    /// Rows with every cell decoded here, and the (row, column, oid,
    /// binary value) of each non-null cell PostgreSQL must render (left
    /// NULL in the rows until then).
    #[allow(clippy::type_complexity)]
    fn decode_rows<E: RowEncoder>(
        &self,
        rows: &[PgRow],
    ) -> Result<(Vec<E::Row>, Vec<(usize, usize, u32, Vec<u8>)>), ValueError> {
        let mut converted: Vec<E::Row> = Vec::with_capacity(rows.len());
        let mut pending: Vec<(usize, usize, u32, Vec<u8>)> = Vec::new();
        for (row_index, row) in rows.iter().enumerate() {
            let mut cells = E::row(self.decodings.len());
            for (column, decoding) in self.decodings.iter().enumerate() {
                let value = row.try_get_raw(column)?;
                if value.is_null() {
                    E::push(&mut cells, Cell::Null);
                    continue;
                }
                if *decoding == Decoding::Formatted {
                    pending.push((
                        row_index,
                        column,
                        type_oid(&value.type_info()),
                        value.as_bytes()?.to_vec(),
                    ));
                    E::push(&mut cells, Cell::Null); // replaced by `convert`
                    continue;
                }
                E::push(&mut cells, decode(*decoding, value)?);
            }
            converted.push(cells);
        }
        Ok((converted, pending))
    }
}

/// The `format_type` names of built-in types, learnt once per process: a
/// built-in type's OID and name are fixed by PostgreSQL's catalog data
/// (`pg_type.dat`) and always visible (`pg_catalog`), so they are the same
/// on every server and in every session. Other types (extensions, enums,
/// domains) differ between databases and are always asked for.
mod type_names {
    use std::collections::HashMap;
    use std::sync::{LazyLock, RwLock};

    /// Below `FirstNormalObjectId`: assigned by initdb, never by a user.
    const FIRST_NORMAL_OBJECT_ID: u32 = 16_384;

    static NAMES: LazyLock<RwLock<HashMap<u32, String>>> = LazyLock::new(RwLock::default);

    /// Every name, when each OID is a built-in type seen before.
    pub(super) fn known(oids: &[u32]) -> Option<Vec<String>> {
        let names = NAMES.read().ok()?;
        oids.iter().map(|oid| names.get(oid).cloned()).collect()
    }

    /// Keeps the names of the built-in types among `oids`.
    pub(super) fn remember(oids: &[u32], names: &[String]) {
        let Ok(mut known) = NAMES.write() else { return };
        for (oid, name) in oids.iter().zip(names) {
            if *oid < FIRST_NORMAL_OBJECT_ID && !name.is_empty() && known.len() < 4096 {
                known.insert(*oid, name.clone());
            }
        }
    }
}

/// How a value PostgreSQL renders becomes text: one rendered value, or an
/// anonymous record put together from its fields.
enum Rendered {
    /// The text PostgreSQL rendered for `leaves[i]`.
    Leaf(usize),
    /// Text known without PostgreSQL: a `void` field (empty) or one of type
    /// `unknown` (an untyped literal in `ROW(...)`, which cannot be a
    /// parameter either; its binary form is its text).
    Known(String),
    /// An anonymous record's fields (`None`: NULL).
    Record(Vec<Option<Rendered>>),
}

impl Rendered {
    /// Plans `bytes` (of type `oid`): values PostgreSQL renders go to
    /// `leaves`; an anonymous record is taken apart (`record_send`'s format:
    /// the field count, then per field its type OID, its length or -1 for
    /// NULL, and its bytes), its fields planned in turn.
    fn plan<'a>(oid: u32, bytes: &'a [u8], leaves: &mut Vec<(u32, &'a [u8])>) -> Result<Self, ValueError> {
        match oid {
            oid::VOID => Ok(Self::Known(String::new())),
            oid::UNKNOWN => Ok(Self::Known(utf8(bytes, "unknown")?)),
            oid::RECORD => {
                let mut rest = bytes;
                let count = take_i32(&mut rest)?;
                let mut fields = Vec::with_capacity(usize::try_from(count).unwrap_or(0).min(1664));
                for _ in 0..count {
                    let field_oid = take_i32(&mut rest)? as u32;
                    let length = take_i32(&mut rest)?;
                    let Ok(length) = usize::try_from(length) else {
                        fields.push(None);
                        continue;
                    };
                    let (value, tail) = rest
                        .split_at_checked(length)
                        .ok_or_else(|| malformed_record("a field runs past the value"))?;
                    rest = tail;
                    fields.push(Some(Self::plan(field_oid, value, leaves)?));
                }
                Ok(Self::Record(fields))
            }
            _ => {
                leaves.push((oid, bytes));
                Ok(Self::Leaf(leaves.len() - 1))
            }
        }
    }

    /// The text, `texts` being what PostgreSQL rendered for the leaves.
    fn text(&self, texts: &[String]) -> String {
        match self {
            Self::Leaf(index) => texts.get(*index).cloned().unwrap_or_default(),
            Self::Known(text) => text.clone(),
            Self::Record(fields) => {
                let mut text = String::from("(");
                for (index, field) in fields.iter().enumerate() {
                    if index > 0 {
                        text.push(',');
                    }
                    if let Some(field) = field {
                        push_record_field(&mut text, &field.text(texts));
                    }
                }
                text.push(')');
                text
            }
        }
    }
}

/// One field's text as `record_out` writes it: in double quotes (with `"`
/// and `\` doubled) when it is empty or holds `"`, `\`, a parenthesis, a
/// comma or white space.
fn push_record_field(record: &mut String, field: &str) {
    let quote = field.is_empty()
        || field.chars().any(|c| {
            matches!(
                c,
                '"' | '\\' | '(' | ')' | ',' | ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c'
            )
        });
    if !quote {
        record.push_str(field);
        return;
    }
    record.push('"');
    for c in field.chars() {
        if matches!(c, '"' | '\\') {
            record.push(c);
        }
        record.push(c);
    }
    record.push('"');
}

fn take_i32(rest: &mut &[u8]) -> Result<i32, ValueError> {
    let (head, tail) = rest
        .split_first_chunk::<4>()
        .ok_or_else(|| malformed_record("it ends inside a field header"))?;
    *rest = tail;
    Ok(i32::from_be_bytes(*head))
}

fn malformed_record(reason: &str) -> ValueError {
    ValueError::Malformed {
        type_name: "record",
        reason: reason.to_owned(),
    }
}

/// A value that could not be turned into a cell.
#[derive(Debug, thiserror::Error)]
pub enum ValueError {
    #[error("reading a result value: {0}")]
    Read(#[from] sqlx::Error),
    #[error("reading a result value: {0}")]
    Decode(#[from] BoxDynError),
    #[error("malformed {type_name} value from the server: {reason}")]
    Malformed { type_name: &'static str, reason: String },
}

fn type_oid(info: &PgTypeInfo) -> u32 {
    info.oid().map_or(0, |o| o.0)
}

fn fixed<const N: usize>(bytes: &[u8], type_name: &'static str) -> Result<[u8; N], ValueError> {
    bytes.try_into().map_err(|_| ValueError::Malformed {
        type_name,
        reason: format!("expected {N} bytes, got {}", bytes.len()),
    })
}

fn utf8(bytes: &[u8], type_name: &'static str) -> Result<String, ValueError> {
    String::from_utf8(bytes.to_vec()).map_err(|e| ValueError::Malformed {
        type_name,
        reason: e.to_string(),
    })
}

fn decode(decoding: Decoding, value: PgValueRef<'_>) -> Result<Cell, ValueError> {
    let bytes = value.as_bytes()?;
    let cell = match decoding {
        Decoding::Bool => Cell::Bool(fixed::<1>(bytes, "bool")?[0] != 0),
        Decoding::Int2 => Cell::Int(i16::from_be_bytes(fixed(bytes, "int2")?).into()),
        Decoding::Int4 => Cell::Int(i32::from_be_bytes(fixed(bytes, "int4")?).into()),
        Decoding::Int8 => Cell::Int(i64::from_be_bytes(fixed(bytes, "int8")?)),
        Decoding::Oid => Cell::Int(u32::from_be_bytes(fixed(bytes, "oid")?).into()),
        Decoding::Float4 => Cell::Double(f32::from_be_bytes(fixed(bytes, "float4")?).into()),
        Decoding::Float8 => Cell::Double(f64::from_be_bytes(fixed(bytes, "float8")?)),
        Decoding::Text => Cell::Text(utf8(bytes, "text")?),
        Decoding::Bytea => Cell::Bytes(bytes.to_vec()),
        Decoding::Json => Cell::Json(utf8(bytes, "json")?),
        Decoding::Jsonb => match bytes.split_first() {
            // jsonb's binary format: a version byte (1), then the text form.
            Some((1, text)) => Cell::Json(utf8(text, "jsonb")?),
            _ => {
                return Err(ValueError::Malformed {
                    type_name: "jsonb",
                    reason: "unknown jsonb binary version".to_owned(),
                });
            }
        },
        Decoding::Numeric => Cell::Formatted(numeric_text(bytes)?),
        Decoding::Uuid => Cell::Formatted(
            uuid::Uuid::from_bytes(fixed(bytes, "uuid")?)
                .hyphenated()
                .to_string(),
        ),
        Decoding::Void => Cell::Formatted(String::new()),
        Decoding::Formatted => {
            return Err(ValueError::Malformed {
                type_name: "formatted",
                reason: "formatted values are rendered by the server".to_owned(),
            });
        }
    };
    Ok(cell)
}

/// numeric's binary form (`numeric_send`: digit count, weight of the first
/// base-10000 digit, sign, display scale, digits) as `numeric_out` writes
/// it (`get_str_from_var`): no exponent, exactly `dscale` fraction digits.
fn numeric_text(bytes: &[u8]) -> Result<String, ValueError> {
    use std::fmt::Write as _;
    let malformed = |reason: &str| ValueError::Malformed {
        type_name: "numeric",
        reason: reason.to_owned(),
    };
    let word = |at: usize| bytes.get(at..at + 2).map(|b| u16::from_be_bytes([b[0], b[1]]));
    let (Some(ndigits), Some(weight), Some(sign), Some(dscale)) = (word(0), word(2), word(4), word(6)) else {
        return Err(malformed("shorter than its header"));
    };
    let weight = i32::from(weight.cast_signed());
    let ndigits = usize::from(ndigits);
    if bytes.len() != 8 + 2 * ndigits {
        return Err(malformed("length does not match its digit count"));
    }
    let mut digits = Vec::with_capacity(ndigits);
    for index in 0..ndigits {
        match word(8 + 2 * index) {
            Some(digit) if digit < 10_000 => digits.push(digit),
            _ => return Err(malformed("a digit outside 0..9999")),
        }
    }
    let mut text = String::new();
    match sign {
        0xC000 => return Ok("NaN".to_owned()),
        0xD000 => return Ok("Infinity".to_owned()),
        0xF000 => return Ok("-Infinity".to_owned()),
        0x4000 => text.push('-'),
        0x0000 => {}
        _ => return Err(malformed("unknown sign")),
    }
    let digit = |index: i32| {
        usize::try_from(index)
            .ok()
            .and_then(|index| digits.get(index).copied())
            .unwrap_or(0)
    };
    if weight < 0 {
        text.push('0');
    } else {
        for index in 0..=weight {
            // The first base-10000 digit without its leading zeros.
            let _ = if index == 0 {
                write!(text, "{}", digit(index))
            } else {
                write!(text, "{:04}", digit(index))
            };
        }
    }
    let dscale = usize::from(dscale & 0x3FFF);
    if dscale > 0 {
        text.push('.');
        let start = text.len();
        let mut index = weight + 1;
        while text.len() - start < dscale {
            let _ = write!(text, "{:04}", digit(index));
            index += 1;
        }
        text.truncate(start + dscale);
    }
    Ok(text)
}

/// A binary value bound as a parameter of its own type (`None`: NULL).
pub(crate) struct RawValue<'a> {
    pub(crate) oid: u32,
    pub(crate) bytes: Option<&'a [u8]>,
}

impl Type<Postgres> for RawValue<'_> {
    fn type_info() -> PgTypeInfo {
        // Always overridden per value by `produces`.
        PgTypeInfo::with_oid(Oid(oid::UNKNOWN))
    }

    fn compatible(_: &PgTypeInfo) -> bool {
        true
    }
}

impl Encode<'_, Postgres> for RawValue<'_> {
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        match self.bytes {
            Some(bytes) => {
                buf.extend_from_slice(bytes);
                Ok(IsNull::No)
            }
            None => Ok(IsNull::Yes),
        }
    }

    fn produces(&self) -> Option<PgTypeInfo> {
        Some(PgTypeInfo::with_oid(Oid(self.oid)))
    }
}

/// PostgreSQL's text output of each (type, binary value).
async fn render<'a>(
    values: impl ExactSizeIterator<Item = (u32, &'a [u8])>,
    connection: &mut PgConnection,
) -> Result<Vec<String>, ValueError> {
    let count = values.len();
    if count == 0 {
        return Ok(Vec::new());
    }
    let mut arguments = PgArguments::default();
    for (oid, bytes) in values {
        arguments
            .add(RawValue {
                oid,
                bytes: Some(bytes),
            })
            .map_err(|e| ValueError::Read(sqlx::Error::Encode(e)))?;
    }
    // Not cached: sqlx keys prepared statements by text, and the same text
    // must never be reused with other parameter types.
    let text = render_sql(count);
    let row = sqlx::query_with(sqlx::AssertSqlSafe(text), arguments)
        .persistent(false)
        .fetch_one(&mut *connection)
        .await?;
    (0..count)
        .map(|i| row.try_get::<String, _>(i).map_err(ValueError::from))
        .collect()
}

fn render_sql(count: usize) -> String {
    let mut sql = String::with_capacity(count * 20 + 8);
    sql.push_str("SELECT ");
    for index in 1..=count {
        if index > 1 {
            sql.push_str(", ");
        }
        sql.push_str(&format!("format('%s', ${index})"));
    }
    sql
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_anonymous_record_is_written_as_record_out_writes_it() {
        // ROW(1, NULL, ROW('x y')) as record_send sends it.
        let mut inner = Vec::new();
        inner.extend(1_i32.to_be_bytes());
        inner.extend(25_i32.to_be_bytes());
        inner.extend(3_i32.to_be_bytes());
        inner.extend(b"x y");
        let mut bytes = Vec::new();
        bytes.extend(3_i32.to_be_bytes());
        bytes.extend(23_i32.to_be_bytes());
        bytes.extend(4_i32.to_be_bytes());
        bytes.extend(1_i32.to_be_bytes());
        bytes.extend(25_i32.to_be_bytes());
        bytes.extend((-1_i32).to_be_bytes());
        bytes.extend(2249_i32.to_be_bytes());
        bytes.extend(i32::try_from(inner.len()).expect("small").to_be_bytes());
        bytes.extend(&inner);
        let mut leaves = Vec::new();
        let plan = Rendered::plan(oid::RECORD, &bytes, &mut leaves).expect("well formed");
        assert_eq!(leaves, [(23, &1_i32.to_be_bytes()[..]), (25, &b"x y"[..])]);
        let text = plan.text(&["1".to_owned(), "x y".to_owned()]);
        assert_eq!(text, r#"(1,,"(""x y"")")"#);
        assert!(Rendered::plan(oid::RECORD, &bytes[..10], &mut Vec::new()).is_err());
    }

    #[test]
    fn record_fields_are_quoted_only_when_record_out_would() {
        let mut text = String::new();
        for field in ["plain", "", "a\"b", "back\\slash", "tab\there"] {
            push_record_field(&mut text, field);
            text.push('|');
        }
        assert_eq!(text, r#"plain|""|"a""b"|"back\\slash"|"tab	here"|"#);
    }

    #[test]
    fn render_sql_numbers_every_parameter() {
        assert_eq!(render_sql(2), "SELECT format('%s', $1), format('%s', $2)");
    }

    #[test]
    fn typed_columns_are_decoded_here_and_the_rest_formatted() {
        assert_eq!(decoding_for(oid::INT4), Decoding::Int4);
        assert_eq!(decoding_for(oid::JSONB), Decoding::Jsonb);
        assert_eq!(decoding_for(1700), Decoding::Numeric, "numeric");
        assert_eq!(decoding_for(1184), Decoding::Formatted, "timestamptz");
    }

    #[test]
    fn malformed_numerics_are_errors_not_panics() {
        let cases: [(&str, &[u8]); 4] = [
            ("empty", &[]),
            ("short header", &[0, 1, 0, 0]),
            ("missing digit", &[0, 1, 0, 0, 0, 0, 0, 0]),
            ("digit past 9999", &[0, 1, 0, 0, 0, 0, 0, 0, 0x27, 0x10]),
        ];
        for (name, bytes) in cases {
            assert!(numeric_text(bytes).is_err(), "{name}");
        }
    }
}
