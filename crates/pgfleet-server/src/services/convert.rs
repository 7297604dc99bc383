//! Conversions between wire (prost) types and the engine's domain types,
//! shared by the services: the server's half of the boundary.
//!
//! Requests become engine specs through [`FromWire`] (a local trait: the
//! orphan rule forbids `TryFrom` between a prost type and an engine type,
//! both foreign here); engine results become wire messages through plain
//! functions; rows are built straight into wire cells by [`WireRows`].

use std::time::Duration;

use chrono::{DateTime, Utc};
use pgfleet_proto::pgfleet::v1 as pb;
use prost_types::Timestamp;

use pgfleet_registry::Target;

use pgfleet_engine::RequestError;
use pgfleet_engine::identity::Role;
use pgfleet_engine::query::{
    Cell, Column, FailureCode, Finding, Param, ParamValue, RowEncoder, TargetFailure,
};
use prost::Message as _;

pub fn role_to_wire(role: Role) -> pb::Role {
    match role {
        Role::Reader => pb::Role::Reader,
        Role::User => pb::Role::User,
        Role::Master => pb::Role::Master,
    }
}

/// The role a wire value names; `None` for ROLE_UNSPECIFIED and unknown
/// numbers.
pub fn role_from_wire(wire: i32) -> Option<Role> {
    match pb::Role::try_from(wire).ok()? {
        pb::Role::Unspecified => None,
        pb::Role::Reader => Some(Role::Reader),
        pb::Role::User => Some(Role::User),
        pb::Role::Master => Some(Role::Master),
    }
}

pub fn target(target: &Target) -> pb::Target {
    pb::Target {
        cloud: target.cloud.clone(),
        database: target.database.clone(),
    }
}

/// A wire duration; durations past its range (about 292 billion years)
/// saturate.
pub fn duration(value: Duration) -> prost_types::Duration {
    prost_types::Duration::try_from(value).unwrap_or(prost_types::Duration {
        seconds: i64::MAX,
        nanos: 999_999_999,
    })
}

/// Replicas a read passed over for lag, on the wire.
pub fn skipped_replicas(skipped: Vec<pgfleet_registry::LaggingReplica>) -> Vec<pb::SkippedReplica> {
    skipped
        .into_iter()
        .map(|replica| pb::SkippedReplica {
            name: replica.name,
            replay_lag: replica.replay_lag.map(duration),
        })
        .collect()
}

/// A signed number of seconds (a lag may be negative when a target holds
/// rows the source no longer has) as a wire duration, to the microsecond.
pub fn signed_seconds(seconds: f64) -> prost_types::Duration {
    let micros = (seconds * 1_000_000.0).round();
    // `as` saturates for floats out of range (and maps NaN to 0).
    let micros = micros as i64;
    prost_types::Duration {
        seconds: micros / 1_000_000,
        // Same sign as `seconds`, as the Duration type requires.
        nanos: i32::try_from((micros % 1_000_000) * 1000).unwrap_or(0),
    }
}

/// A recorded target error on the wire, PostgreSQL's fields kept.
pub fn recorded_error(error: &pgfleet_engine::audit::RecordedError) -> pb::TargetError {
    pb::TargetError {
        code: error_code(FailureCode::parse(&error.code).unwrap_or(FailureCode::Unknown)).into(),
        message: error.message.clone(),
        postgres: (!error.sqlstate.is_empty()).then(|| pb::PostgresError {
            sqlstate: error.sqlstate.clone(),
            message: error.message.clone(),
            detail: error.detail.clone(),
            hint: error.hint.clone(),
            position: error.position,
            ..Default::default()
        }),
    }
}

/// A wire request checked into an engine spec: the fields only the wire
/// can get wrong (an unset oneof, a malformed duration) are refused here
/// with their field path; everything else is the engine's to check.
pub trait FromWire<W>: Sized {
    fn from_wire(wire: W) -> Result<Self, RequestError>;
}

/// A wire duration as a `Duration`; `field` names it in the refusal.
pub fn duration_from_wire(wire: &prost_types::Duration, field: &str) -> Result<Duration, RequestError> {
    let valid = wire.seconds >= 0 && (0..1_000_000_000).contains(&wire.nanos);
    u64::try_from(wire.seconds)
        .ok()
        .filter(|_| valid)
        .map(|seconds| Duration::new(seconds, u32::try_from(wire.nanos).unwrap_or(0)))
        .ok_or_else(|| RequestError::invalid(field, "must be a positive duration"))
}

/// Query parameters, each with a value and a sane type name; `field` names
/// the list in the request (`params`, `statements[1].params`).
pub fn params_from_wire(params: Vec<pb::QueryParam>, field: &str) -> Result<Vec<Param>, RequestError> {
    params
        .into_iter()
        .enumerate()
        .map(|(index, param)| {
            use pb::query_param::Value;
            let type_name = param.type_name.trim();
            if type_name.len() > 200 {
                return Err(RequestError::invalid(
                    format!("{field}[{index}].type_name"),
                    "too long",
                ));
            }
            let value = match param.value {
                None => {
                    return Err(RequestError::invalid(
                        format!("{field}[{index}].value"),
                        "must be set",
                    ));
                }
                Some(Value::NullValue(_)) => ParamValue::Null,
                Some(Value::BoolValue(v)) => ParamValue::Bool(v),
                Some(Value::IntValue(v)) => ParamValue::Int(v),
                Some(Value::DoubleValue(v)) => ParamValue::Double(v),
                Some(Value::TextValue(v)) => ParamValue::Text(v),
                Some(Value::BytesValue(v)) => ParamValue::Bytes(v),
            };
            Ok(Param {
                value,
                type_name: (!type_name.is_empty()).then(|| type_name.to_owned()),
            })
        })
        .collect()
}

/// Targets named on the wire (checked against the fleet by the engine).
pub fn targets_from_wire(targets: Vec<pb::Target>) -> Vec<Target> {
    targets
        .into_iter()
        .map(|target| Target::new(target.cloud, target.database))
        .collect()
}

/// The wire code of a target failure (same numbers and names).
pub fn error_code(code: FailureCode) -> pb::ErrorCode {
    match code {
        FailureCode::Cancelled => pb::ErrorCode::Cancelled,
        FailureCode::Unknown => pb::ErrorCode::Unknown,
        FailureCode::InvalidArgument => pb::ErrorCode::InvalidArgument,
        FailureCode::DeadlineExceeded => pb::ErrorCode::DeadlineExceeded,
        FailureCode::NotFound => pb::ErrorCode::NotFound,
        FailureCode::AlreadyExists => pb::ErrorCode::AlreadyExists,
        FailureCode::PermissionDenied => pb::ErrorCode::PermissionDenied,
        FailureCode::ResourceExhausted => pb::ErrorCode::ResourceExhausted,
        FailureCode::FailedPrecondition => pb::ErrorCode::FailedPrecondition,
        FailureCode::Aborted => pb::ErrorCode::Aborted,
        FailureCode::OutOfRange => pb::ErrorCode::OutOfRange,
        FailureCode::Unimplemented => pb::ErrorCode::Unimplemented,
        FailureCode::Internal => pb::ErrorCode::Internal,
        FailureCode::Unavailable => pb::ErrorCode::Unavailable,
        FailureCode::DataLoss => pb::ErrorCode::DataLoss,
        FailureCode::Unauthenticated => pb::ErrorCode::Unauthenticated,
    }
}

/// A target failure on the wire, every PostgreSQL field kept.
pub fn target_error(failure: TargetFailure) -> pb::TargetError {
    pb::TargetError {
        code: error_code(failure.code).into(),
        message: failure.message,
        postgres: failure.postgres.map(|pg| pb::PostgresError {
            sqlstate: pg.sqlstate,
            severity: pg.severity,
            message: pg.message,
            detail: pg.detail,
            hint: pg.hint,
            position: pg.position,
            internal_position: pg.internal_position,
            internal_query: pg.internal_query,
            r#where: pg.r#where,
            schema_name: pg.schema_name,
            table_name: pg.table_name,
            column_name: pg.column_name,
            data_type_name: pg.data_type_name,
            constraint_name: pg.constraint_name,
        }),
    }
}

pub fn column(column: Column) -> pb::Column {
    pb::Column {
        name: column.name,
        type_oid: column.type_oid,
        type_name: column.type_name,
    }
}

pub fn columns(columns: Vec<Column>) -> Vec<pb::Column> {
    columns.into_iter().map(column).collect()
}

pub fn finding(finding: &Finding) -> pb::DangerFinding {
    pb::DangerFinding {
        code: finding.code.clone(),
        reason: finding.reason.clone(),
        statement_index: finding.statement_index,
    }
}

/// Result rows built straight into wire cells: each decoded value is moved
/// into its `pb::Cell`, with no intermediate row.
pub struct WireRows;

impl WireRows {
    fn cell(cell: Cell) -> pb::Cell {
        use pb::cell::Kind;
        let kind = match cell {
            Cell::Null => Kind::NullValue(prost_types::NullValue::NullValue.into()),
            Cell::Bool(value) => Kind::BoolValue(value),
            Cell::Int(value) => Kind::IntValue(value),
            Cell::Double(value) => Kind::DoubleValue(value),
            Cell::Text(value) => Kind::TextValue(value),
            Cell::Bytes(value) => Kind::BytesValue(value),
            Cell::Json(value) => Kind::JsonValue(value),
            Cell::Formatted(value) => Kind::FormattedValue(value),
        };
        pb::Cell { kind: Some(kind) }
    }
}

impl RowEncoder for WireRows {
    type Row = pb::Row;

    fn row(columns: usize) -> pb::Row {
        pb::Row {
            cells: Vec::with_capacity(columns),
        }
    }

    fn push(row: &mut pb::Row, cell: Cell) {
        row.cells.push(Self::cell(cell));
    }

    fn replace(row: &mut pb::Row, column: usize, cell: Cell) {
        if let Some(slot) = row.cells.get_mut(column) {
            *slot = Self::cell(cell);
        }
    }

    fn encoded_len(row: &pb::Row) -> u64 {
        let len = row.encoded_len();
        // Field tag (one byte) + length prefix + the row.
        (1 + prost::length_delimiter_len(len) + len) as u64
    }
}

pub fn timestamp(time: DateTime<Utc>) -> Timestamp {
    Timestamp {
        seconds: time.timestamp(),
        // Always in 0..1e9 for a valid DateTime.
        nanos: i32::try_from(time.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

/// `None` for out-of-range or denormalized timestamps.
pub fn timestamp_to_chrono(wire: &Timestamp) -> Option<DateTime<Utc>> {
    let nanos = u32::try_from(wire.nanos).ok().filter(|n| *n < 1_000_000_000)?;
    DateTime::from_timestamp(wire.seconds, nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_seconds_keep_sign_and_microseconds() {
        let wire = signed_seconds(312.25);
        assert_eq!((wire.seconds, wire.nanos), (312, 250_000_000));
        let wire = signed_seconds(-1.5);
        assert_eq!((wire.seconds, wire.nanos), (-1, -500_000_000));
        assert_eq!(signed_seconds(f64::NAN).seconds, 0);
    }

    #[test]
    fn failure_codes_are_the_wire_codes() {
        for code in FailureCode::ALL {
            assert_eq!(error_code(code).as_str_name(), code.as_str());
        }
    }

    #[test]
    fn a_batch_of_rows_weighs_no_more_than_its_rows() {
        let row = |len: usize| {
            let mut row = WireRows::row(1);
            WireRows::push(&mut row, Cell::Text("x".repeat(len)));
            row
        };
        let rows = vec![row(100), row(3), row(70_000)];
        let counted: u64 = rows.iter().map(WireRows::encoded_len).sum();
        let batch = pb::RowBatch {
            rows,
            ..Default::default()
        };
        assert!(batch.encoded_len() as u64 <= counted);
    }

    #[test]
    fn roles_and_timestamps_round_trip() {
        for role in [Role::Reader, Role::User, Role::Master] {
            assert_eq!(role_from_wire(role_to_wire(role).into()), Some(role));
        }
        assert_eq!(role_from_wire(0), None);
        assert_eq!(role_from_wire(99), None);
        let now = Utc::now();
        assert_eq!(timestamp_to_chrono(&timestamp(now)), Some(now));
        assert_eq!(
            timestamp_to_chrono(&Timestamp {
                seconds: 0,
                nanos: -1
            }),
            None
        );
    }
}
