//! What the engine reports while it works, for whoever keeps metrics.
//!
//! The engine never touches gauges or counters: it tells an [`Observer`]
//! what happened, in domain terms, and the server's telemetry decides what
//! to count. Every method has a no-op default; `()` observes nothing (tools
//! and tests without metrics).

use std::time::Duration;

use pgfleet_registry::Target;

use crate::query::TargetOutcome;

/// The audit trail's writes, each timed on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditWrite {
    /// The write-ahead insert and its chain link (before any target runs).
    Open,
    /// One target's outcome added to a running record.
    Outcome,
    /// The closing update and its chain link.
    Close,
}

impl AuditWrite {
    /// The name used in logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditWrite::Open => "open",
            AuditWrite::Outcome => "outcome",
            AuditWrite::Close => "close",
        }
    }
}

/// Receives the engine's events. Called inline on the engine's tasks: keep
/// implementations cheap and non-blocking.
pub trait Observer: Send + Sync + std::fmt::Debug + 'static {
    /// A target of an execution ended (success or not).
    fn target_finished(&self, _target: &Target, _outcome: &TargetOutcome) {}

    /// A write to the audit trail ended after `elapsed`.
    fn audit_write(&self, _write: AuditWrite, _succeeded: bool, _elapsed: Duration) {}

    /// A replication run committed `rows` more rows of `table` on `target`;
    /// `job` is the job's id, or [`crate::replication::run::ADHOC_JOB`].
    fn replication_rows(&self, _job: &str, _table: &str, _target: &Target, _rows: u64) {}

    /// A status measured the copy of `table` on `target` `seconds` behind
    /// its source (temporal sync keys only).
    fn replication_lag(&self, _job: &str, _table: &str, _target: &Target, _seconds: f64) {}

    /// A backup health reading of `target` (pgfleet-backup): DEGRADED or
    /// not, and the age of its newest successful backup, if any.
    fn backup_health(&self, _target: &Target, _degraded: bool, _last_success_age_seconds: Option<f64>) {}

    /// After an atomic recovery pass: prepared transactions of atomic
    /// executions still in doubt (they hold their locks on the targets),
    /// and the oldest one's age.
    fn atomic_in_doubt(&self, _count: u64, _oldest: Option<Duration>) {}
}

/// Reports nothing: for tools and tests without metrics.
impl Observer for () {}
