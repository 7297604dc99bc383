//! Turning PostgreSQL result values into wire cells, faithfully.
//!
//! sqlx reads every result in PostgreSQL's binary format. Types with an
//! obvious protobuf form (bool, integers, floats, text, bytea, json) are
//! decoded here. Every other type (numeric, date/time, intervals, arrays,
//! ranges, enums, geometric, network, extension types...) is sent back to the
//! same connection as a typed binary parameter of `SELECT format('%s', $n)`,
//! so PostgreSQL's own output function renders it: the text is exactly what
//! psql shows under the session's DateStyle, IntervalStyle and TimeZone, for
//! any type that has binary I/O, including ones created a moment ago in the
//! same transaction.

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
    pub const FLOAT4: u32 = 700;
    pub const FLOAT8: u32 = 701;
    pub const UNKNOWN: u32 = 705;
    pub const BPCHAR: u32 = 1042;
    pub const VARCHAR: u32 = 1043;
    pub const JSONB: u32 = 3802;
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
        let names: Vec<String> = sqlx::query_scalar(
            "SELECT format_type(t, NULL) FROM unnest($1::oid[]) WITH ORDINALITY AS u(t, n) ORDER BY n",
        )
        .bind(oids.iter().map(|o| Oid(*o)).collect::<Vec<_>>())
        .fetch_all(&mut *connection)
        .await?;
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
        for chunk in pending.chunks(MAX_PARAMS.min(4096)) {
            let texts = render(
                chunk.iter().map(|(_, _, oid, bytes)| (*oid, bytes.as_slice())),
                connection,
            )
            .await?;
            for ((row, column, _, _), text) in chunk.iter().zip(texts) {
                E::replace(&mut converted[*row], *column, Cell::Formatted(text));
            }
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
        Decoding::Formatted => {
            return Err(ValueError::Malformed {
                type_name: "formatted",
                reason: "formatted values are rendered by the server".to_owned(),
            });
        }
    };
    Ok(cell)
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
    fn render_sql_numbers_every_parameter() {
        assert_eq!(render_sql(2), "SELECT format('%s', $1), format('%s', $2)");
    }

    #[test]
    fn typed_columns_are_decoded_here_and_the_rest_formatted() {
        assert_eq!(decoding_for(oid::INT4), Decoding::Int4);
        assert_eq!(decoding_for(oid::JSONB), Decoding::Jsonb);
        assert_eq!(decoding_for(1700), Decoding::Formatted, "numeric");
        assert_eq!(decoding_for(1184), Decoding::Formatted, "timestamptz");
    }
}
