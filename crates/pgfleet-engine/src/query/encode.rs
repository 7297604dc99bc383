//! The caller's row type, built straight from decoded result values.
//!
//! The engine decodes each PostgreSQL value once ([`Cell`]) and hands it to
//! a [`RowEncoder`] chosen by the caller (the server's writes wire cells),
//! so a value is moved into the outgoing message without an intermediate
//! row and without copying its bytes again.

/// A decoded result value.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Null,
    Bool(bool),
    /// int2, int4, int8 and oid.
    Int(i64),
    /// float4 and float8.
    Double(f64),
    /// text, varchar, bpchar, name.
    Text(String),
    Bytes(Vec<u8>),
    /// json and jsonb, as text.
    Json(String),
    /// Any other type, rendered by PostgreSQL's output function (psql's text).
    Formatted(String),
}

/// A result column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub type_oid: u32,
    /// PostgreSQL's `format_type` (`timestamp with time zone`, `integer[]`).
    pub type_name: String,
}

/// Builds rows of the caller's type. Associated functions only: the engine
/// is monomorphized for each encoder, with no dynamic dispatch per cell.
pub trait RowEncoder: 'static {
    /// One result row as the caller sends it.
    type Row: Send + std::fmt::Debug + 'static;

    /// An empty row with room for `columns` cells.
    fn row(columns: usize) -> Self::Row;

    /// Appends the next cell.
    fn push(row: &mut Self::Row, cell: Cell);

    /// Replaces cell `column` (a value PostgreSQL rendered after the row was
    /// built with a placeholder there).
    fn replace(row: &mut Self::Row, column: usize, cell: Cell);

    /// The exact bytes `row` adds to a message carrying rows: what byte
    /// budgets and batch sizes count.
    fn encoded_len(row: &Self::Row) -> u64;
}

/// Rows as plain cell vectors, sized by their values' bytes: for tools and
/// tests that want the values themselves.
#[derive(Debug, Clone, Copy, Default)]
pub struct CellRows;

impl RowEncoder for CellRows {
    type Row = Vec<Cell>;

    fn row(columns: usize) -> Self::Row {
        Vec::with_capacity(columns)
    }

    fn push(row: &mut Self::Row, cell: Cell) {
        row.push(cell);
    }

    fn replace(row: &mut Self::Row, column: usize, cell: Cell) {
        if let Some(slot) = row.get_mut(column) {
            *slot = cell;
        }
    }

    fn encoded_len(row: &Self::Row) -> u64 {
        row.iter()
            .map(|cell| match cell {
                Cell::Null => 1,
                Cell::Bool(_) => 2,
                Cell::Int(_) | Cell::Double(_) => 9,
                Cell::Text(text) | Cell::Json(text) | Cell::Formatted(text) => 5 + text.len() as u64,
                Cell::Bytes(bytes) => 5 + bytes.len() as u64,
            })
            .sum::<u64>()
            + 5
    }
}
