//! Why the work on one target failed: a gRPC-like code, a message, and the
//! PostgreSQL error with every field when the database reported one.
//!
//! One type from the connection to the caller: the server turns it into
//! its wire message, the audit trail stores it ([`crate::audit::RecordedError`]),
//! metrics label it by [`FailureCode::label`].

use sqlx::postgres::{PgDatabaseError, PgErrorPosition};

/// The class of a target failure. Numbered like gRPC status codes
/// (`google.rpc.Code`); the stored names ([`as_str`](Self::as_str)) are the
/// API's `ErrorCode` names, so stored records read back the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureCode {
    Cancelled,
    Unknown,
    InvalidArgument,
    DeadlineExceeded,
    NotFound,
    AlreadyExists,
    PermissionDenied,
    ResourceExhausted,
    FailedPrecondition,
    Aborted,
    OutOfRange,
    Unimplemented,
    Internal,
    Unavailable,
    DataLoss,
    Unauthenticated,
}

impl FailureCode {
    /// Every code, in gRPC order.
    pub const ALL: [FailureCode; 16] = [
        FailureCode::Cancelled,
        FailureCode::Unknown,
        FailureCode::InvalidArgument,
        FailureCode::DeadlineExceeded,
        FailureCode::NotFound,
        FailureCode::AlreadyExists,
        FailureCode::PermissionDenied,
        FailureCode::ResourceExhausted,
        FailureCode::FailedPrecondition,
        FailureCode::Aborted,
        FailureCode::OutOfRange,
        FailureCode::Unimplemented,
        FailureCode::Internal,
        FailureCode::Unavailable,
        FailureCode::DataLoss,
        FailureCode::Unauthenticated,
    ];

    /// The stored name (`ERROR_CODE_ABORTED`).
    pub fn as_str(self) -> &'static str {
        match self {
            FailureCode::Cancelled => "ERROR_CODE_CANCELLED",
            FailureCode::Unknown => "ERROR_CODE_UNKNOWN",
            FailureCode::InvalidArgument => "ERROR_CODE_INVALID_ARGUMENT",
            FailureCode::DeadlineExceeded => "ERROR_CODE_DEADLINE_EXCEEDED",
            FailureCode::NotFound => "ERROR_CODE_NOT_FOUND",
            FailureCode::AlreadyExists => "ERROR_CODE_ALREADY_EXISTS",
            FailureCode::PermissionDenied => "ERROR_CODE_PERMISSION_DENIED",
            FailureCode::ResourceExhausted => "ERROR_CODE_RESOURCE_EXHAUSTED",
            FailureCode::FailedPrecondition => "ERROR_CODE_FAILED_PRECONDITION",
            FailureCode::Aborted => "ERROR_CODE_ABORTED",
            FailureCode::OutOfRange => "ERROR_CODE_OUT_OF_RANGE",
            FailureCode::Unimplemented => "ERROR_CODE_UNIMPLEMENTED",
            FailureCode::Internal => "ERROR_CODE_INTERNAL",
            FailureCode::Unavailable => "ERROR_CODE_UNAVAILABLE",
            FailureCode::DataLoss => "ERROR_CODE_DATA_LOSS",
            FailureCode::Unauthenticated => "ERROR_CODE_UNAUTHENTICATED",
        }
    }

    /// The code a stored name names; `None` for anything else.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|code| code.as_str() == name)
    }

    /// A metric label: `aborted`, `unavailable`… (a bounded set).
    pub fn label(self) -> String {
        self.as_str()
            .trim_start_matches("ERROR_CODE_")
            .to_ascii_lowercase()
    }
}

/// PostgreSQL's error report, every field kept (empty or 0 when absent).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PostgresError {
    pub sqlstate: String,
    pub severity: String,
    pub message: String,
    pub detail: String,
    pub hint: String,
    /// 1-based character offset in the failing statement; 0 when none.
    pub position: u32,
    pub internal_position: u32,
    pub internal_query: String,
    pub r#where: String,
    pub schema_name: String,
    pub table_name: String,
    pub column_name: String,
    pub data_type_name: String,
    pub constraint_name: String,
}

/// Why one target failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetFailure {
    pub code: FailureCode,
    pub message: String,
    /// Set when PostgreSQL reported the error.
    pub postgres: Option<PostgresError>,
}

impl TargetFailure {
    /// A failure that PostgreSQL did not report.
    pub fn new(code: FailureCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            postgres: None,
        }
    }

    /// A PostgreSQL or connection error, every field kept.
    pub fn from_sqlx(error: &sqlx::Error) -> Self {
        match error {
            sqlx::Error::Database(database) => {
                let Some(pg) = database.try_downcast_ref::<PgDatabaseError>() else {
                    return Self::new(FailureCode::Aborted, database.message());
                };
                let code = match pg.code() {
                    "57014" => FailureCode::DeadlineExceeded,
                    "25006" | "42501" => FailureCode::PermissionDenied,
                    _ => FailureCode::Aborted,
                };
                let (position, internal_position, internal_query) = match pg.position() {
                    Some(PgErrorPosition::Original(at)) => (at, 0, String::new()),
                    Some(PgErrorPosition::Internal { position, query }) => (0, position, query.to_owned()),
                    None => (0, 0, String::new()),
                };
                let as_u32 = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
                Self {
                    code,
                    message: pg.message().to_owned(),
                    postgres: Some(PostgresError {
                        sqlstate: pg.code().to_owned(),
                        severity: format!("{:?}", pg.severity()).to_uppercase(),
                        message: pg.message().to_owned(),
                        detail: pg.detail().unwrap_or_default().to_owned(),
                        hint: pg.hint().unwrap_or_default().to_owned(),
                        position: as_u32(position),
                        internal_position: as_u32(internal_position),
                        internal_query,
                        r#where: pg.r#where().unwrap_or_default().to_owned(),
                        schema_name: pg.schema().unwrap_or_default().to_owned(),
                        table_name: pg.table().unwrap_or_default().to_owned(),
                        column_name: pg.column().unwrap_or_default().to_owned(),
                        data_type_name: pg.data_type().unwrap_or_default().to_owned(),
                        constraint_name: pg.constraint().unwrap_or_default().to_owned(),
                    }),
                }
            }
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => {
                Self::new(FailureCode::Unavailable, format!("connection lost: {error}"))
            }
            // sqlx 0.9 looks up unknown column types in pg_type and does not
            // know typtype 'm' (multirange): say so instead of its raw message.
            sqlx::Error::ColumnDecode { index, source }
                if index == "\"typtype\"" && source.to_string().contains("109") =>
            {
                Self::new(
                    FailureCode::Unimplemented,
                    "a column has a multirange type, which pgfleet's PostgreSQL driver (sqlx 0.9) cannot \
                     describe yet; cast it to text (e.g. col::text)",
                )
            }
            other => Self::new(FailureCode::Unknown, other.to_string()),
        }
    }

    /// The SQLSTATE, when PostgreSQL reported the failure.
    pub fn sqlstate(&self) -> Option<&str> {
        self.postgres.as_ref().map(|postgres| postgres.sqlstate.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_through_their_stored_names() {
        for code in FailureCode::ALL {
            assert_eq!(FailureCode::parse(code.as_str()), Some(code));
        }
        assert_eq!(FailureCode::parse("ABORTED"), None);
        assert_eq!(FailureCode::Aborted.label(), "aborted");
        assert_eq!(FailureCode::DeadlineExceeded.label(), "deadline_exceeded");
    }
}
