//! The health snapshot: how each member looked at its last probe (kept by
//! [`crate::monitor`], read through the registry).

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::retry::tls_failure;
use crate::target::{Member, Target};

/// How a member looked at its last probe.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub enum HealthStatus {
    /// Not probed yet.
    #[default]
    Unknown,
    /// Answered within the degraded-latency threshold.
    Healthy,
    /// Answered, but slowly.
    Degraded,
    /// Did not answer.
    Unhealthy,
}

#[derive(Debug, Default)]
pub(crate) struct MemberState {
    pub(crate) status: HealthStatus,
    pub(crate) latency: Option<Duration>,
    pub(crate) last_error: Option<String>,
    pub(crate) last_error_category: Option<&'static str>,
    pub(crate) last_error_at: Option<DateTime<Utc>>,
    pub(crate) last_checked_at: Option<DateTime<Utc>>,
    /// Probes failed since the last successful one.
    pub(crate) consecutive_failures: u32,
    /// `pg_is_in_recovery()` when last seen (by a probe or a write's
    /// checkout): `Some(false)` is a primary, `Some(true)` a standby.
    pub(crate) in_recovery: Option<bool>,
    /// A standby's replay lag at the last probe (see [`MemberHealth`]).
    pub(crate) replay_lag: Option<ReplayLag>,
    /// `pg_database_size` at the last probe.
    pub(crate) database_size: Option<u64>,
}

/// How far a standby's replay is behind what it received, at one probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ReplayLag {
    /// Zero when everything received is replayed; otherwise how long ago
    /// the last replayed transaction committed on the primary. `None` when
    /// behind with no transaction replayed since the standby started:
    /// unknown, so past any bound.
    pub time: Option<Duration>,
    /// Received WAL not replayed yet.
    pub bytes: u64,
}

impl MemberState {
    pub(crate) fn record_error(&mut self, message: String, category: &'static str) {
        self.status = HealthStatus::Unhealthy;
        self.last_error = Some(message);
        self.last_error_category = Some(category);
        self.last_error_at = Some(Utc::now());
    }
}

/// One member's health, as reported by `FleetService/GetHealth`.
#[derive(Debug, Clone, Serialize)]
pub struct MemberHealth {
    pub target: Target,
    pub member: Member,
    pub status: HealthStatus,
    /// The server's role when last seen: `Some(false)` a primary (takes
    /// writes), `Some(true)` a standby in recovery; `None` before it answered.
    /// After a failover the configured primary may be the standby.
    pub in_recovery: Option<bool>,
    /// A standby's replay lag at the last probe; `None` on a primary or
    /// before a probe answered.
    pub replay_lag: Option<ReplayLag>,
    /// Size of the database at the last probe (`pg_database_size`).
    pub database_size: Option<u64>,
    /// Round trip of the last successful probe.
    pub latency: Option<Duration>,
    /// Open connections, idle ones included.
    pub pool_size: u32,
    /// Open connections not in use.
    pub pool_idle: u32,
    /// Callers waiting for a connection.
    pub pool_waiting: u32,
    /// The driver's text: hosts, ports, users. For MASTER only.
    pub last_error: Option<String>,
    /// What kind of failure it was ([`error_category`]), without details:
    /// what other callers see.
    pub last_error_category: Option<&'static str>,
    pub last_error_at: Option<DateTime<Utc>>,
    pub last_checked_at: Option<DateTime<Utc>>,
    /// Probes failed in a row (connection failures of callers not counted).
    pub consecutive_failures: u32,
}

/// A connection failure in a few words that name no host, port, user or
/// server message: what GetHealth shows callers below MASTER.
pub fn error_category(error: &sqlx::Error) -> &'static str {
    if tls_failure(error).is_some() {
        return "TLS handshake failed";
    }
    match error {
        sqlx::Error::Io(io) => match io.kind() {
            std::io::ErrorKind::ConnectionRefused => "connection refused",
            std::io::ErrorKind::TimedOut => "timeout",
            _ => "network error",
        },
        sqlx::Error::PoolTimedOut => "timeout",
        sqlx::Error::Tls(_) => "TLS handshake failed",
        sqlx::Error::Database(db) => match db.code().as_deref() {
            Some("28P01" | "28000") => "authentication failed",
            Some("3D000") => "database does not exist",
            Some("57P03" | "53300") => "server not accepting connections",
            Some("57014") => "timeout",
            _ => "server error",
        },
        _ => "connection failed",
    }
}
