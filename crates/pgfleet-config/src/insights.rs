//! `[insights]`: the slow-query log and the thresholds the health monitor
//! checks (`[insights.alerts]`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::lenient::lenient_u64;

/// The slow-query log of pgfleet's own executions, and alert thresholds.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct InsightsConfig {
    /// An execution whose duration on a target reaches this is recorded in
    /// the slow-query log (normalized text, never values); `0s` records
    /// nothing.
    #[serde(with = "humantime_serde")]
    pub slow_query_threshold: Duration,
    /// Entries older than this are deleted.
    #[serde(with = "humantime_serde")]
    pub slow_query_retention: Duration,
    /// At most this many entries are kept (the oldest go first).
    #[serde(deserialize_with = "lenient_u64")]
    pub slow_query_max_entries: u64,
    /// Time between two retention passes.
    #[serde(with = "humantime_serde")]
    pub retention_interval: Duration,
    /// Thresholds checked against the health monitor's view of every
    /// member (`[insights.alerts]`); an unset one is not checked.
    pub alerts: AlertThresholds,
}

/// `[insights.alerts]`: what counts as a breach, per member of a target.
/// Breaches show in `FleetService/GetHealth` and as
/// `pgfleet_threshold_breached` on `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertThresholds {
    /// The health probe's round trip.
    #[serde(with = "humantime_serde")]
    pub target_latency: Option<Duration>,
    /// Probes failed in a row (the member's error rate as the monitor sees it).
    pub probe_failures: Option<u32>,
    /// Callers waiting for a pooled connection.
    pub pool_waiting: Option<u32>,
    /// A standby's replay lag (unknown lag counts as past it).
    #[serde(with = "humantime_serde")]
    pub replication_lag: Option<Duration>,
}

impl Default for InsightsConfig {
    fn default() -> Self {
        Self {
            slow_query_threshold: Duration::from_secs(1),
            slow_query_retention: Duration::from_secs(7 * 24 * 3600),
            slow_query_max_entries: 100_000,
            retention_interval: Duration::from_secs(60),
            alerts: AlertThresholds::default(),
        }
    }
}
