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
