//! `[insights.alerts]` checked against the health monitor's view of each
//! member: what GetHealth reports as breaches and `/metrics` exports as
//! `pgfleet_threshold_breached`. Evaluated on the monitor's last probe
//! (no I/O), so both always agree with the health snapshot.

use pgfleet_config::AlertThresholds;
use pgfleet_registry::MemberHealth;

/// One configured threshold on one member, with what was measured.
#[derive(Debug, Clone, PartialEq)]
pub struct ThresholdCheck {
    /// `target_latency`, `probe_failures`, `pool_waiting`, `replication_lag`:
    /// the configuration key, also the metric label.
    pub threshold: &'static str,
    /// What was measured (seconds for durations; +Inf for an unknown lag).
    pub value: f64,
    /// The configured limit, in the same unit.
    pub limit: f64,
    pub breached: bool,
}

/// Every configured threshold that applies to `member` (the replication lag
/// only to a standby, the latency only once a probe answered).
pub fn check(thresholds: &AlertThresholds, member: &MemberHealth) -> Vec<ThresholdCheck> {
    let mut checks = Vec::new();
    let mut push = |threshold, value: f64, limit: f64| {
        checks.push(ThresholdCheck {
            threshold,
            value,
            limit,
            breached: value > limit,
        });
    };
    if let (Some(limit), Some(latency)) = (thresholds.target_latency, member.latency) {
        push("target_latency", latency.as_secs_f64(), limit.as_secs_f64());
    }
    if let Some(limit) = thresholds.probe_failures {
        push(
            "probe_failures",
            f64::from(member.consecutive_failures),
            f64::from(limit),
        );
    }
    if let Some(limit) = thresholds.pool_waiting {
        push("pool_waiting", f64::from(member.pool_waiting), f64::from(limit));
    }
    if let (Some(limit), Some(lag)) = (thresholds.replication_lag, member.replay_lag) {
        let seconds = lag.time.map_or(f64::INFINITY, |time| time.as_secs_f64());
        push("replication_lag", seconds, limit.as_secs_f64());
    }
    checks
}
