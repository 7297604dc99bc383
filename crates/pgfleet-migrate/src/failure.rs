//! A failed call to a target, every field PostgreSQL sent kept, so the server
//! can show SQLSTATE, detail, hint and position, and tell a refused statement
//! from a lost connection.

use std::fmt;

use sqlx::postgres::{PgDatabaseError, PgErrorPosition};

/// What went wrong talking to one target.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PgFailure {
    /// The SQLSTATE (`23514`), when PostgreSQL answered with an error.
    pub sqlstate: Option<String>,
    /// PostgreSQL's message, or the driver's for a connection failure.
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
    /// 1-based position in characters into the text sent (the migration file).
    pub position: Option<u32>,
    pub schema: Option<String>,
    pub table: Option<String>,
    pub column: Option<String>,
    pub constraint: Option<String>,
    /// The connection failed or was lost (the server maps this to UNAVAILABLE);
    /// false when PostgreSQL refused a statement.
    pub connection_lost: bool,
}

impl PgFailure {
    /// Keeps every field of a PostgreSQL error; any other sqlx error becomes
    /// its message, marked as a lost connection when it is one.
    pub fn from_sqlx(error: &sqlx::Error) -> Self {
        match error {
            sqlx::Error::Database(database) => {
                let Some(pg) = database.try_downcast_ref::<PgDatabaseError>() else {
                    return Self {
                        sqlstate: database.code().map(|c| c.into_owned()),
                        message: database.message().to_owned(),
                        ..Self::default()
                    };
                };
                let position = match pg.position() {
                    Some(PgErrorPosition::Original(at)) => u32::try_from(at).ok(),
                    _ => None,
                };
                let owned = |field: Option<&str>| field.map(str::to_owned);
                Self {
                    sqlstate: Some(pg.code().to_owned()),
                    message: pg.message().to_owned(),
                    detail: owned(pg.detail()),
                    hint: owned(pg.hint()),
                    position,
                    schema: owned(pg.schema()),
                    table: owned(pg.table()),
                    column: owned(pg.column()),
                    constraint: owned(pg.constraint()),
                    connection_lost: false,
                }
            }
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => Self {
                message: format!("connection lost: {error}"),
                connection_lost: true,
                ..Self::default()
            },
            other => Self {
                message: other.to_string(),
                ..Self::default()
            },
        }
    }

    /// The SQLSTATE is `code`.
    pub fn is(&self, code: &str) -> bool {
        self.sqlstate.as_deref() == Some(code)
    }

    /// Line and column (1-based, columns in characters) of [`position`](Self::position)
    /// in `sql`, the text that was sent.
    pub fn line_column(&self, sql: &str) -> Option<(usize, usize)> {
        let position = usize::try_from(self.position?).ok()?;
        let mut line = 1;
        let mut column = 1;
        for (index, ch) in sql.chars().enumerate() {
            if index + 1 == position {
                return Some((line, column));
            }
            if ch == '\n' {
                line += 1;
                column = 1;
            } else {
                column += 1;
            }
        }
        // PostgreSQL points one past the end for "at end of input".
        (position == sql.chars().count() + 1).then_some((line, column))
    }
}

impl From<sqlx::Error> for PgFailure {
    fn from(error: sqlx::Error) -> Self {
        Self::from_sqlx(&error)
    }
}

impl fmt::Display for PgFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(sqlstate) = &self.sqlstate {
            write!(f, "{sqlstate}: ")?;
        }
        f.write_str(&self.message)?;
        if let Some(detail) = &self.detail {
            write!(f, " (detail: {detail})")?;
        }
        if let Some(hint) = &self.hint {
            write!(f, " (hint: {hint})")?;
        }
        Ok(())
    }
}

impl std::error::Error for PgFailure {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_to_lines_and_columns() {
        let sql = "SELECT 1;\nSELEC é x;\n";
        let at = |position| PgFailure {
            position: Some(position),
            ..PgFailure::default()
        };
        let cases = [
            (1, Some((1, 1))),
            (11, Some((2, 1))),
            (17, Some((2, 7))),
            (22, Some((3, 1))),
            (23, None),
        ];
        for (position, want) in cases {
            assert_eq!(at(position).line_column(sql), want, "position {position}");
        }
        assert_eq!(PgFailure::default().line_column(sql), None);
    }
}
