//! Conversions between wire (prost) types and domain types shared by the
//! services.

use std::time::Duration;

use chrono::{DateTime, Utc};
use pgfleet_proto::pgfleet::v1 as pb;
use prost_types::Timestamp;

use pgfleet_registry::Target;

use crate::identity::Role;

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
pub fn target_error(error: &crate::audit::RecordedError) -> pb::TargetError {
    pb::TargetError {
        code: pb::ErrorCode::from_str_name(&error.code)
            .unwrap_or(pb::ErrorCode::Unknown)
            .into(),
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
