//! The Prometheus series pgfleet exports on `server.metrics_addr`.
//!
//! One [`Metrics`] per server, each with its own `prometheus::Registry`
//! (no process-wide default registry), so two servers in one process (tests)
//! never share series. Counters and histograms are updated where things
//! happen; pool and health gauges are read from the fleet registry's
//! snapshot at scrape time ([`FleetCollector`]), so they are never stale and
//! cost nothing between scrapes.
//!
//! Label values are bounded: methods come from a closed list, targets and
//! replication tables from the configuration and stored jobs, SQLSTATE
//! classes are two characters. No label ever holds a username, a query
//! text or a parameter.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use pgfleet_registry::{HealthStatus, Member, Registry, Target};
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, TextEncoder};

pub use pgfleet_engine::AuditWrite;
use pgfleet_engine::Observer;
use pgfleet_engine::query::TargetOutcome;

/// Latency buckets (seconds) for calls and per-target queries: from a
/// sub-millisecond `SELECT 1` to streams and long statements.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// Audit writes are single-row transactions bounded by `audit.write_timeout`
/// (5 s by default).
const AUDIT_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The `replication_job` label of one-shot `ReplicateTable` copies (stored
/// jobs use their id). Not `job`: Prometheus sets that label itself.
pub use pgfleet_engine::replication::run::ADHOC_JOB as ADHOC_REPLICATION;

/// Why a `Login` failed, as counted (never who tried).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginFailure {
    /// Unknown username or wrong password (deliberately not told apart).
    InvalidCredentials,
    /// Right password, deactivated account.
    Deactivated,
    /// Too many attempts for the username or the client address.
    Throttled,
    /// Empty or malformed fields.
    InvalidRequest,
    /// The session or user store failed.
    Unavailable,
}

impl LoginFailure {
    const ALL: [LoginFailure; 5] = [
        LoginFailure::InvalidCredentials,
        LoginFailure::Deactivated,
        LoginFailure::Throttled,
        LoginFailure::InvalidRequest,
        LoginFailure::Unavailable,
    ];

    /// The `reason` label.
    pub fn as_str(self) -> &'static str {
        match self {
            LoginFailure::InvalidCredentials => "invalid_credentials",
            LoginFailure::Deactivated => "deactivated",
            LoginFailure::Throttled => "throttled",
            LoginFailure::InvalidRequest => "invalid_request",
            LoginFailure::Unavailable => "unavailable",
        }
    }

    /// The reason behind the status `Login` answered with.
    pub fn of(status: &tonic::Status) -> Self {
        match status.code() {
            tonic::Code::Unauthenticated => LoginFailure::InvalidCredentials,
            tonic::Code::PermissionDenied => LoginFailure::Deactivated,
            tonic::Code::ResourceExhausted => LoginFailure::Throttled,
            tonic::Code::InvalidArgument => LoginFailure::InvalidRequest,
            _ => LoginFailure::Unavailable,
        }
    }
}

/// Why a call was refused, as counted in `pgfleet_refused_calls_total`
/// (never who: the log line of the refusal says that).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalReason {
    /// A method that needs credentials was called without any.
    NoCredentials,
    /// A credential header that cannot be read (or two credentials).
    MalformedCredentials,
    /// A session token that is unknown or expired.
    InvalidSession,
    /// An API key that is unknown, wrong, revoked or expired.
    InvalidApiKey,
    /// An API key whose creator is no longer an active MASTER.
    ApiKeyCreator,
    /// A deactivated (or deleted) account.
    Deactivated,
    /// A wrong password (or unknown username) on Login or ChangePassword.
    InvalidPassword,
    /// A login refused by throttling, before its password was checked.
    Throttled,
    /// A role below the method's (the auth gate's table).
    Role,
    /// A path pgfleet grants nobody.
    UnknownMethod,
    /// PERMISSION_DENIED from the service itself: an execution's statement
    /// class above the role, a target outside an API key's allow-list, ...
    Denied,
}

impl RefusalReason {
    #[cfg(test)]
    const ALL: [RefusalReason; 11] = [
        RefusalReason::NoCredentials,
        RefusalReason::MalformedCredentials,
        RefusalReason::InvalidSession,
        RefusalReason::InvalidApiKey,
        RefusalReason::ApiKeyCreator,
        RefusalReason::Deactivated,
        RefusalReason::InvalidPassword,
        RefusalReason::Throttled,
        RefusalReason::Role,
        RefusalReason::UnknownMethod,
        RefusalReason::Denied,
    ];

    /// The `reason` label (and the log's `reason` field).
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalReason::NoCredentials => "no_credentials",
            RefusalReason::MalformedCredentials => "malformed_credentials",
            RefusalReason::InvalidSession => "invalid_session",
            RefusalReason::InvalidApiKey => "invalid_api_key",
            RefusalReason::ApiKeyCreator => "api_key_creator",
            RefusalReason::Deactivated => "deactivated",
            RefusalReason::InvalidPassword => "invalid_password",
            RefusalReason::Throttled => "throttled",
            RefusalReason::Role => "role",
            RefusalReason::UnknownMethod => "unknown_method",
            RefusalReason::Denied => "denied",
        }
    }
}

/// Every series of one server. Cheap to clone (one `Arc`).
#[derive(Clone)]
pub struct Metrics(Arc<Series>);

struct Series {
    registry: prometheus::Registry,
    rpc_requests: IntCounterVec,
    rpc_duration: HistogramVec,
    target_queries: IntCounterVec,
    target_errors: IntCounterVec,
    target_duration: HistogramVec,
    replication_rows: IntCounterVec,
    replication_lag: prometheus::GaugeVec,
    audit_write: HistogramVec,
    login_failures: IntCounterVec,
    refused_calls: IntCounterVec,
    login_guessing: prometheus::IntCounter,
    dependency_up: IntGaugeVec,
    backup_degraded: IntGaugeVec,
    backup_age: prometheus::GaugeVec,
    rate_limited_calls: IntCounterVec,
    atomic_in_doubt: prometheus::IntGauge,
    atomic_in_doubt_oldest: prometheus::Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn counter(
    registry: &prometheus::Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntCounterVec> {
    let vec = IntCounterVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(vec.clone()))?;
    Ok(vec)
}

fn histogram(
    registry: &prometheus::Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> prometheus::Result<HistogramVec> {
    let vec = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets.to_vec()), labels)?;
    registry.register(Box::new(vec.clone()))?;
    Ok(vec)
}

impl Metrics {
    /// Defines every series in a registry of its own. Fails only if a
    /// definition below is malformed (a bug caught by any test).
    pub fn new() -> prometheus::Result<Self> {
        let registry = prometheus::Registry::new();
        let target = &["cloud", "database"];
        let replication = &["replication_job", "table", "cloud", "database"];
        let rpc = &["service", "method", "code"];
        let series = Series {
            rpc_requests: counter(
                &registry,
                "pgfleet_rpc_requests_total",
                "gRPC calls handled, by method and status code (refusals by the auth gate included)",
                rpc,
            )?,
            rpc_duration: histogram(
                &registry,
                "pgfleet_rpc_duration_seconds",
                "gRPC call duration until the status was sent (streams: until their last message)",
                rpc,
                LATENCY_BUCKETS,
            )?,
            target_queries: counter(
                &registry,
                "pgfleet_target_queries_total",
                "SQL executions on one target (each target of an Execute or ExecuteStream call)",
                target,
            )?,
            target_errors: counter(
                &registry,
                "pgfleet_target_query_errors_total",
                "Failed executions on one target, by pgfleet error code and SQLSTATE class (first two characters; none without SQLSTATE)",
                &["cloud", "database", "code", "sqlstate_class"],
            )?,
            target_duration: histogram(
                &registry,
                "pgfleet_target_query_duration_seconds",
                "Duration of an execution on one target, connection acquisition included",
                target,
                LATENCY_BUCKETS,
            )?,
            replication_rows: counter(
                &registry,
                "pgfleet_replication_rows_copied_total",
                "Rows written to replication targets, counted per committed batch",
                replication,
            )?,
            replication_lag: {
                let vec = prometheus::GaugeVec::new(
                    Opts::new(
                        "pgfleet_replication_lag_seconds",
                        "How far a target's watermark is behind the source's newest sync key (time keys), as measured by the last GetStatus",
                    ),
                    replication,
                )?;
                registry.register(Box::new(vec.clone()))?;
                vec
            },
            audit_write: histogram(
                &registry,
                "pgfleet_audit_write_duration_seconds",
                "Audit trail writes in the history store, by operation and result",
                &["operation", "result"],
                AUDIT_BUCKETS,
            )?,
            login_failures: counter(
                &registry,
                "pgfleet_login_failures_total",
                "Failed Login calls by reason",
                &["reason"],
            )?,
            refused_calls: counter(
                &registry,
                "pgfleet_refused_calls_total",
                "Calls refused for the caller's credentials or rights (failed logins, the auth gate, PERMISSION_DENIED from a service), by method, status code and reason",
                &["service", "method", "code", "reason"],
            )?,
            login_guessing: {
                let counter = prometheus::IntCounter::new(
                    "pgfleet_login_guessing_detected_total",
                    "Times one username passed auth.login_username_slowdown_after failed logins (from all addresses) within auth.login_window: password guessing; the log names the account",
                )?;
                registry.register(Box::new(counter.clone()))?;
                counter
            },
            dependency_up: {
                let vec = IntGaugeVec::new(
                    Opts::new(
                        "pgfleet_dependency_up",
                        "1 while one of pgfleet's own stores (history_store, redis) answered its last check (every health.dependency_interval), else 0",
                    ),
                    &["dependency"],
                )?;
                registry.register(Box::new(vec.clone()))?;
                vec
            },
            backup_degraded: {
                let vec = IntGaugeVec::new(
                    Opts::new(
                        "pgfleet_backup_degraded",
                        "1 while a target covered by a backup policy has no successful backup within the policy's max_age, else 0 (read by the backup scheduler each tick and by GetBackupHealth)",
                    ),
                    &["cloud", "database"],
                )?;
                registry.register(Box::new(vec.clone()))?;
                vec
            },
            backup_age: {
                let vec = prometheus::GaugeVec::new(
                    Opts::new(
                        "pgfleet_backup_last_success_age_seconds",
                        "Age of a target's newest successful backup, as of the last health reading",
                    ),
                    &["cloud", "database"],
                )?;
                registry.register(Box::new(vec.clone()))?;
                vec
            },
            atomic_in_doubt: {
                let gauge = prometheus::IntGauge::new(
                    "pgfleet_atomic_in_doubt_transactions",
                    "Prepared transactions of atomic executions not finished yet (they hold their locks on the targets), as of the last atomic recovery pass (every atomic.recovery_interval)",
                )?;
                registry.register(Box::new(gauge.clone()))?;
                gauge
            },
            atomic_in_doubt_oldest: {
                let gauge = prometheus::Gauge::new(
                    "pgfleet_atomic_in_doubt_oldest_seconds",
                    "Age of the oldest in-doubt prepared transaction of an atomic execution (0 when there is none), as of the last atomic recovery pass",
                )?;
                registry.register(Box::new(gauge.clone()))?;
                gauge
            },
            rate_limited_calls: counter(
                &registry,
                "pgfleet_rate_limited_calls_total",
                "Calls refused by a rate limit before reaching their service, by method and bucket (identity, address; store_unavailable: refused because Redis did not answer and rate_limits.on_redis_error = \"closed\")",
                &["service", "method", "bucket"],
            )?,
            registry,
        };
        // Every reason exists from the start, so a rate() over a fresh
        // server is 0 rather than absent.
        for reason in LoginFailure::ALL {
            series.login_failures.with_label_values(&[reason.as_str()]);
        }
        Ok(Self(Arc::new(series)))
    }

    /// Adds the fleet's pool and health gauges, read from `registry` at
    /// every scrape.
    pub fn watch_fleet(
        &self,
        registry: Arc<Registry>,
        alerts: pgfleet_config::AlertThresholds,
    ) -> prometheus::Result<()> {
        self.0
            .registry
            .register(Box::new(FleetCollector::new(registry, alerts)?))
    }

    /// Every series in Prometheus' text exposition format.
    pub fn render(&self) -> Result<String, prometheus::Error> {
        TextEncoder::new().encode_to_string(&self.0.registry.gather())
    }

    /// One gRPC call ended with `code` after `elapsed`.
    pub(crate) fn rpc_finished(&self, service: &str, method: &str, code: &str, elapsed: Duration) {
        let labels = [service, method, code];
        self.0.rpc_requests.with_label_values(&labels).inc();
        self.0
            .rpc_duration
            .with_label_values(&labels)
            .observe(elapsed.as_secs_f64());
    }

    /// One target of an execution ended.
    pub fn target_finished(&self, target: &Target, outcome: &TargetOutcome) {
        let labels = [target.cloud.as_str(), target.database.as_str()];
        self.0.target_queries.with_label_values(&labels).inc();
        self.0
            .target_duration
            .with_label_values(&labels)
            .observe(outcome.duration.as_secs_f64());
        if outcome.success {
            return;
        }
        let (code, sqlstate) = match &outcome.error {
            Some(error) => (
                error.code.label(),
                error.sqlstate().map_or("none", sqlstate_class),
            ),
            None => ("unknown".to_owned(), "none"),
        };
        self.0
            .target_errors
            .with_label_values(&[labels[0], labels[1], code.as_str(), sqlstate])
            .inc();
    }

    /// `rows` more rows committed on `target` by a replication run.
    pub fn replication_rows(&self, job: &str, table: &str, target: &Target, rows: u64) {
        self.0
            .replication_rows
            .with_label_values(&[job, table, &target.cloud, &target.database])
            .inc_by(rows);
    }

    /// The lag of `table` on `target`, as GetStatus just measured it.
    pub fn replication_lag(&self, job: &str, table: &str, target: &Target, seconds: f64) {
        self.0
            .replication_lag
            .with_label_values(&[job, table, &target.cloud, &target.database])
            .set(seconds);
    }

    /// One audit-trail write took `elapsed`.
    pub fn audit_write(&self, operation: AuditWrite, succeeded: bool, elapsed: Duration) {
        let result = if succeeded { "ok" } else { "error" };
        self.0
            .audit_write
            .with_label_values(&[operation.as_str(), result])
            .observe(elapsed.as_secs_f64());
    }

    /// A `Login` failed.
    pub fn login_failed(&self, reason: LoginFailure) {
        self.0.login_failures.with_label_values(&[reason.as_str()]).inc();
    }

    /// A call to `path` was refused with `code` for `reason`. The method
    /// labels come from the closed table, whatever the path.
    pub fn call_refused(&self, path: &str, code: tonic::Code, reason: RefusalReason) {
        let (service, method) = super::rpc::method_labels(path);
        self.0
            .refused_calls
            .with_label_values(&[service, method, super::rpc::code_name(code), reason.as_str()])
            .inc();
    }

    /// One username just passed the guessing threshold.
    pub fn login_guessing_detected(&self) {
        self.0.login_guessing.inc();
    }

    /// The last check of `dependency` (`readiness`) found it `up` or not.
    pub fn dependency_up(&self, dependency: &str, up: bool) {
        self.0
            .dependency_up
            .with_label_values(&[dependency])
            .set(i64::from(up));
    }

    /// A call to `path` was refused by a rate limit's `bucket`. The method
    /// labels come from the closed table, whatever the path.
    pub fn rate_limited(&self, path: &str, bucket: &'static str) {
        let (service, method) = super::rpc::method_labels(path);
        self.0
            .rate_limited_calls
            .with_label_values(&[service, method, bucket])
            .inc();
    }
}

/// The engine's events, counted.
impl Observer for Metrics {
    fn target_finished(&self, target: &Target, outcome: &TargetOutcome) {
        Metrics::target_finished(self, target, outcome);
    }

    fn audit_write(&self, write: AuditWrite, succeeded: bool, elapsed: Duration) {
        Metrics::audit_write(self, write, succeeded, elapsed);
    }

    fn replication_rows(&self, job: &str, table: &str, target: &Target, rows: u64) {
        Metrics::replication_rows(self, job, table, target, rows);
    }

    fn replication_lag(&self, job: &str, table: &str, target: &Target, seconds: f64) {
        Metrics::replication_lag(self, job, table, target, seconds);
    }

    fn backup_health(&self, target: &Target, degraded: bool, last_success_age_seconds: Option<f64>) {
        let labels = [target.cloud.as_str(), target.database.as_str()];
        self.0
            .backup_degraded
            .with_label_values(&labels)
            .set(i64::from(degraded));
        if let Some(age) = last_success_age_seconds {
            self.0.backup_age.with_label_values(&labels).set(age);
        }
    }

    fn atomic_in_doubt(&self, count: u64, oldest: Option<Duration>) {
        self.0
            .atomic_in_doubt
            .set(i64::try_from(count).unwrap_or(i64::MAX));
        self.0
            .atomic_in_doubt_oldest
            .set(oldest.map_or(0.0, |age| age.as_secs_f64()));
    }
}

/// The class of a SQLSTATE (`23505` → `23`); `none` for anything that is
/// not one, so a label can only take a bounded set of values.
fn sqlstate_class(sqlstate: &str) -> &str {
    match sqlstate.get(..2) {
        Some(class) if sqlstate.len() == 5 && sqlstate.bytes().all(|b| b.is_ascii_alphanumeric()) => class,
        _ => "none",
    }
}

/// Pool and health gauges of every member of the fleet, read from
/// [`Registry::health_snapshot`] (no I/O) when Prometheus scrapes.
struct FleetCollector {
    registry: Arc<Registry>,
    pool_size: IntGaugeVec,
    pool_idle: IntGaugeVec,
    pool_waiting: IntGaugeVec,
    health: IntGaugeVec,
    replay_lag: GaugeVec,
    database_size: IntGaugeVec,
    /// `[insights.alerts]`, checked against each member at every scrape.
    alerts: pgfleet_config::AlertThresholds,
    threshold_breached: IntGaugeVec,
    /// Scrapes reset and refill the gauges; one at a time.
    collecting: Mutex<()>,
}

impl FleetCollector {
    fn new(registry: Arc<Registry>, alerts: pgfleet_config::AlertThresholds) -> prometheus::Result<Self> {
        let member = &["cloud", "database", "member"];
        Ok(Self {
            registry,
            alerts,
            threshold_breached: IntGaugeVec::new(
                Opts::new(
                    "pgfleet_threshold_breached",
                    "1 when a member is past a configured [insights.alerts] threshold at its last probe, else 0",
                ),
                &["cloud", "database", "member", "threshold"],
            )?,
            pool_size: IntGaugeVec::new(
                Opts::new(
                    "pgfleet_pool_size",
                    "Open connections of a target's pool, idle ones included",
                ),
                member,
            )?,
            pool_idle: IntGaugeVec::new(
                Opts::new(
                    "pgfleet_pool_idle",
                    "Open connections of a target's pool not in use",
                ),
                member,
            )?,
            pool_waiting: IntGaugeVec::new(
                Opts::new(
                    "pgfleet_pool_waiting",
                    "Callers waiting for a connection of a target's pool",
                ),
                member,
            )?,
            health: IntGaugeVec::new(
                Opts::new(
                    "pgfleet_target_health",
                    "Health of a target's member at its last probe: 1 for the current state, 0 for the others",
                ),
                &["cloud", "database", "member", "state"],
            )?,
            replay_lag: GaugeVec::new(
                Opts::new(
                    "pgfleet_replica_replay_lag_seconds",
                    "A standby member's replay lag at its last probe (0 when all it received is replayed)",
                ),
                member,
            )?,
            database_size: IntGaugeVec::new(
                Opts::new(
                    "pgfleet_database_size_bytes",
                    "Size of a target's database on a member at its last probe",
                ),
                member,
            )?,
            collecting: Mutex::new(()),
        })
    }
}

fn health_label(status: HealthStatus) -> &'static str {
    match status {
        HealthStatus::Unknown => "unknown",
        HealthStatus::Healthy => "healthy",
        HealthStatus::Degraded => "degraded",
        HealthStatus::Unhealthy => "unhealthy",
    }
}

impl Collector for FleetCollector {
    fn desc(&self) -> Vec<&Desc> {
        let mut descs: Vec<&Desc> = [&self.pool_size, &self.pool_idle, &self.pool_waiting, &self.health]
            .into_iter()
            .flat_map(|vec| vec.desc())
            .collect();
        descs.extend(self.replay_lag.desc());
        descs.extend(self.database_size.desc());
        descs.extend(self.threshold_breached.desc());
        descs
    }

    fn collect(&self) -> Vec<MetricFamily> {
        // A poisoned lock only means a scrape panicked; the gauges are
        // rebuilt from scratch below anyway.
        let _one_at_a_time = self
            .collecting
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for vec in [&self.pool_size, &self.pool_idle, &self.pool_waiting, &self.health] {
            vec.reset();
        }
        self.replay_lag.reset();
        self.database_size.reset();
        self.threshold_breached.reset();
        for member in self.registry.health_snapshot() {
            let name = match &member.member {
                Member::Primary => "primary",
                Member::Replica(name) => name.as_str(),
            };
            let labels = [
                member.target.cloud.as_str(),
                member.target.database.as_str(),
                name,
            ];
            self.pool_size
                .with_label_values(&labels)
                .set(i64::from(member.pool_size));
            self.pool_idle
                .with_label_values(&labels)
                .set(i64::from(member.pool_idle));
            self.pool_waiting
                .with_label_values(&labels)
                .set(i64::from(member.pool_waiting));
            if let Some(lag) = member.replay_lag {
                // Behind by an unknown time (nothing replayed since it
                // started): +Inf, past any alert threshold.
                let seconds = lag.time.map_or(f64::INFINITY, |time| time.as_secs_f64());
                self.replay_lag.with_label_values(&labels).set(seconds);
            }
            if let Some(size) = member.database_size {
                self.database_size
                    .with_label_values(&labels)
                    .set(i64::try_from(size).unwrap_or(i64::MAX));
            }
            for check in pgfleet_engine::insights::alerts::check(&self.alerts, &member) {
                self.threshold_breached
                    .with_label_values(&[labels[0], labels[1], labels[2], check.threshold])
                    .set(i64::from(check.breached));
            }
            for state in [
                HealthStatus::Unknown,
                HealthStatus::Healthy,
                HealthStatus::Degraded,
                HealthStatus::Unhealthy,
            ] {
                self.health
                    .with_label_values(&[labels[0], labels[1], labels[2], health_label(state)])
                    .set(i64::from(member.status == state));
            }
        }
        let mut families: Vec<MetricFamily> =
            [&self.pool_size, &self.pool_idle, &self.pool_waiting, &self.health]
                .into_iter()
                .flat_map(|vec| vec.collect())
                .collect();
        families.extend(self.replay_lag.collect());
        families.extend(self.database_size.collect());
        families.extend(self.threshold_breached.collect());
        families
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstate_classes_are_bounded() {
        for (sqlstate, class) in [
            ("23505", "23"),
            ("42P01", "42"),
            ("57014", "57"),
            ("", "none"),
            ("2", "none"),
            ("23505x", "none"),
            ("é3505", "none"),
        ] {
            assert_eq!(sqlstate_class(sqlstate), class, "{sqlstate:?}");
        }
    }

    #[test]
    fn every_series_is_defined_and_rendered() -> anyhow::Result<()> {
        let metrics = Metrics::new()?;
        metrics.login_failed(LoginFailure::Throttled);
        metrics.rpc_finished("pgfleet.v1.AuthService", "Login", "OK", Duration::from_millis(3));
        metrics.call_refused(
            "/pgfleet.v1.QueryService/Execute",
            tonic::Code::PermissionDenied,
            RefusalReason::Denied,
        );
        // A made-up path cannot mint a series.
        metrics.call_refused(
            "/evil/Path",
            tonic::Code::Unauthenticated,
            RefusalReason::UnknownMethod,
        );
        metrics.login_guessing_detected();
        let text = metrics.render()?;
        assert!(
            text.contains(
                "pgfleet_refused_calls_total{code=\"PERMISSION_DENIED\",method=\"Execute\",reason=\"denied\",service=\"pgfleet.v1.QueryService\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "pgfleet_refused_calls_total{code=\"UNAUTHENTICATED\",method=\"unknown\",reason=\"unknown_method\",service=\"unknown\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains("pgfleet_login_guessing_detected_total 1"), "{text}");
        let reasons: std::collections::HashSet<&str> =
            RefusalReason::ALL.iter().map(|reason| reason.as_str()).collect();
        assert_eq!(
            reasons.len(),
            RefusalReason::ALL.len(),
            "reason labels are distinct"
        );
        assert!(
            text.contains("pgfleet_login_failures_total{reason=\"throttled\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("pgfleet_login_failures_total{reason=\"deactivated\"} 0"),
            "{text}"
        );
        assert!(
            text.contains(
                "pgfleet_rpc_requests_total{code=\"OK\",method=\"Login\",service=\"pgfleet.v1.AuthService\"} 1"
            ),
            "{text}"
        );
        Ok(())
    }
}
