//! Byte budgets on results, checked row by row as rows arrive from
//! PostgreSQL, so no caller can make the server hold more than the
//! configuration allows.
//!
//! Three limits: a row never weighs more than a batch; a target never holds
//! more unsent rows than `hold_bytes`; a unary call's targets together never
//! hold more than its shared [`ResponseBudget`]. Sizes are estimated from a
//! row's raw values when it arrives, then replaced by the exact encoded size
//! once the row is converted.

use std::sync::atomic::{AtomicU64, Ordering};

use sqlx::postgres::PgRow;
use sqlx::{Row as _, ValueRef as _};

/// Estimated framing of one cell on the wire (tag, length, oneof), plus room
/// for a value PostgreSQL renders longer than its binary form (a timestamp:
/// 8 bytes in, up to 35 out).
const CELL_OVERHEAD: u64 = 32;
/// Framing of one row in a repeated field.
const ROW_OVERHEAD: u64 = 8;

/// The bytes of rows one unary call may hold, shared by all its targets.
#[derive(Debug)]
pub struct ResponseBudget {
    limit: u64,
    used: AtomicU64,
}

impl ResponseBudget {
    pub fn new(limit: u64) -> Self {
        Self {
            limit,
            used: AtomicU64::new(0),
        }
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Bytes charged so far.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Takes `bytes` from the budget; past the limit the budget stays spent
    /// (every other target of the call stops at its next row too).
    fn charge(&self, bytes: u64) -> Result<(), Exceeded> {
        let before = self.used.fetch_add(bytes, Ordering::Relaxed);
        if before.saturating_add(bytes) > self.limit {
            return Err(Exceeded::Response { limit: self.limit });
        }
        Ok(())
    }

    /// Gives back what an estimate overcharged.
    fn refund(&self, bytes: u64) {
        // Never below zero: saturate instead of wrapping.
        let _ = self
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                Some(used.saturating_sub(bytes))
            });
    }
}

/// Which limit a result went past.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exceeded {
    /// One row is larger than a batch may be.
    Row { bytes: u64, limit: u64 },
    /// The unary call's targets together reached `query.max_response_bytes`.
    Response { limit: u64 },
    /// Rows read in one go (one FETCH, or a result PostgreSQL must render
    /// before it can be sent) reached what a target may hold.
    Held { limit: u64 },
}

impl std::fmt::Display for Exceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exceeded::Row { bytes, limit } => write!(
                f,
                "a row of about {bytes} bytes is larger than query.max_batch_bytes = {limit} \
                 (capped by server.max_message_bytes)"
            ),
            Exceeded::Response { limit } => write!(
                f,
                "the result reached query.max_response_bytes = {limit} (capped by server.max_message_bytes); \
                 use ExecuteStream for large results, or narrow the query"
            ),
            Exceeded::Held { limit } => write!(
                f,
                "the rows read at once reached {limit} bytes, what a target may hold \
                 (query.max_response_bytes, capped by server.max_message_bytes); \
                 narrow the query or cast its columns to text"
            ),
        }
    }
}

/// The budgets of one target's run.
#[derive(Debug, Clone)]
pub struct Budgets {
    /// `query.max_batch_bytes`: one batch, and at least one row's worth.
    pub batch_bytes: u64,
    /// Most bytes of unsent rows a target holds at once.
    pub hold_bytes: u64,
    /// Unary calls only: the call's shared budget.
    pub response: Option<std::sync::Arc<ResponseBudget>>,
}

impl Budgets {
    /// Admits one arrived row of `bytes` (see [`row_bytes`]) while `held`
    /// bytes of rows are already held.
    pub fn admit(&self, bytes: u64, held: u64) -> Result<(), Exceeded> {
        if bytes > self.batch_bytes {
            return Err(Exceeded::Row {
                bytes,
                limit: self.batch_bytes,
            });
        }
        // The call's budget first: when both are spent, it is the one the
        // caller can act on.
        if let Some(response) = &self.response {
            response.charge(bytes)?;
        }
        if held.saturating_add(bytes) > self.hold_bytes {
            return Err(Exceeded::Held {
                limit: self.hold_bytes,
            });
        }
        Ok(())
    }

    /// Replaces the estimate charged for converted rows by their exact
    /// encoded size.
    pub fn settle(&self, estimated: u64, exact: u64) -> Result<(), Exceeded> {
        let Some(response) = &self.response else {
            return Ok(());
        };
        if exact > estimated {
            response.charge(exact - estimated)
        } else {
            response.refund(estimated - exact);
            Ok(())
        }
    }
}

/// The estimated wire size of a row as it arrives: its raw values plus
/// framing. Computed from the bytes sqlx already holds, nothing copied.
pub fn row_bytes(row: &PgRow) -> u64 {
    let mut total = ROW_OVERHEAD;
    for column in 0..row.len() {
        let value_len = row
            .try_get_raw(column)
            .ok()
            .filter(|value| !value.is_null())
            .and_then(|value| value.as_bytes().ok().map(<[u8]>::len))
            .unwrap_or(0);
        total = total
            .saturating_add(CELL_OVERHEAD)
            .saturating_add(value_len as u64);
    }
    total
}

/// Splits `rows` into runs of at most `batch_bytes` bytes (as `size` counts
/// them) and `batch_rows` rows each (a row larger than a batch alone in its
/// run).
pub fn split_by_bytes<R>(
    rows: Vec<R>,
    size: impl Fn(&R) -> u64,
    batch_bytes: u64,
    batch_rows: usize,
) -> Vec<Vec<R>> {
    let mut batches = Vec::new();
    let mut current: Vec<R> = Vec::new();
    let mut current_bytes = 0_u64;
    for row in rows {
        let bytes = size(&row);
        if !current.is_empty() && (current_bytes + bytes > batch_bytes || current.len() >= batch_rows) {
            batches.push(std::mem::take(&mut current));
            current_bytes = 0;
        }
        current_bytes += bytes;
        current.push(row);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::query::encode::{Cell, CellRows, RowEncoder as _};

    fn text_row(len: usize) -> Vec<Cell> {
        vec![Cell::Text("x".repeat(len))]
    }

    #[test]
    fn a_shared_budget_stops_every_target_once_spent() {
        let budget = std::sync::Arc::new(ResponseBudget::new(1000));
        let a = Budgets {
            batch_bytes: 600,
            hold_bytes: 10_000,
            response: Some(budget.clone()),
        };
        let b = a.clone();
        assert_eq!(a.admit(500, 0), Ok(()));
        assert_eq!(b.admit(400, 0), Ok(()));
        assert_eq!(b.admit(200, 400), Err(Exceeded::Response { limit: 1000 }));
        assert_eq!(a.admit(1, 500), Err(Exceeded::Response { limit: 1000 }));
    }

    #[test]
    fn rows_larger_than_a_batch_and_holding_too_much_are_refused() {
        let budgets = Budgets {
            batch_bytes: 100,
            hold_bytes: 250,
            response: None,
        };
        assert_eq!(
            budgets.admit(101, 0),
            Err(Exceeded::Row {
                bytes: 101,
                limit: 100
            })
        );
        assert_eq!(budgets.admit(100, 150), Ok(()));
        assert_eq!(budgets.admit(100, 200), Err(Exceeded::Held { limit: 250 }));
    }

    #[test]
    fn settling_replaces_the_estimate_by_the_exact_size() {
        let budget = std::sync::Arc::new(ResponseBudget::new(1000));
        let budgets = Budgets {
            batch_bytes: 1000,
            hold_bytes: 1000,
            response: Some(budget.clone()),
        };
        budgets.admit(800, 0).expect("fits");
        budgets.settle(800, 300).expect("refund");
        assert_eq!(budget.used(), 300);
        assert_eq!(budgets.settle(0, 701), Err(Exceeded::Response { limit: 1000 }));
    }

    #[test]
    fn batches_split_by_bytes_and_rows() {
        let rows: Vec<Vec<Cell>> = (0..10).map(|_| text_row(100)).collect();
        let one = CellRows::encoded_len(&rows[0]);
        let batches = split_by_bytes(rows.clone(), CellRows::encoded_len, one * 3, 100);
        assert_eq!(batches.iter().map(Vec::len).collect::<Vec<_>>(), vec![3, 3, 3, 1]);
        let batches = split_by_bytes(rows, CellRows::encoded_len, one * 100, 4);
        assert_eq!(batches.iter().map(Vec::len).collect::<Vec<_>>(), vec![4, 4, 2]);
    }
}
