//! Whether pgfleet's own dependencies answer, and what that means for its
//! services: the [`DependencyWatcher`] checks the history store (`SELECT 1`
//! on its pool) and Redis (`PING` on the server's pool, when `[redis]` is
//! configured) every `health.dependency_interval`, and from what it sees
//! sets the per-service `grpc.health.v1` statuses, the
//! `pgfleet_dependency_up` gauge and [`Readiness`] (`/readyz`).
//!
//! Which service needs what ([`needs`]): every pgfleet service needs the
//! history store, because the auth gate reads the caller's user or API key
//! row there on every call (and Login reads the user); so a history store
//! that does not answer makes all six NOT_SERVING, not only Query and
//! History. Redis holds sessions and login counters: without it Login,
//! Logout and every session-token call fail, so AuthService is NOT_SERVING;
//! the other services still serve API-key callers and stay SERVING.
//!
//! The overall status (`""`) is not touched here: it is the process's
//! liveness, SERVING until shutdown (`app.rs`), so an orchestrator does not
//! restart a healthy process for an outage of a store it cannot fix.

use std::fmt::Write as _;
use std::time::Duration;

use pgfleet_config::HealthConfig;
use pgfleet_proto::pgfleet::v1::auth_service_server::AuthServiceServer;
use pgfleet_proto::pgfleet::v1::backup_service_server::BackupServiceServer;
use pgfleet_proto::pgfleet::v1::fleet_service_server::FleetServiceServer;
use pgfleet_proto::pgfleet::v1::history_service_server::HistoryServiceServer;
use pgfleet_proto::pgfleet::v1::migration_service_server::MigrationServiceServer;
use pgfleet_proto::pgfleet::v1::query_service_server::QueryServiceServer;
use pgfleet_proto::pgfleet::v1::replication_service_server::ReplicationServiceServer;
use sqlx::PgPool;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::server::NamedService;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::redis_pool::RedisPool;
use crate::services::{
    AuthService, BackupService, FleetService, HistoryService, MigrationService, QueryService,
    ReplicationService,
};
use crate::telemetry::Metrics;

/// A store pgfleet itself depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dependency {
    HistoryStore,
    Redis,
}

impl Dependency {
    /// The name in logs, `/readyz` and the `dependency` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Dependency::HistoryStore => "history_store",
            Dependency::Redis => "redis",
        }
    }
}

/// Every pgfleet service with the dependencies it cannot serve without
/// (see the module doc for why).
fn needs() -> [(&'static str, &'static [Dependency]); 7] {
    use Dependency::{HistoryStore, Redis};
    [
        (AuthServiceServer::<AuthService>::NAME, &[HistoryStore, Redis]),
        (QueryServiceServer::<QueryService>::NAME, &[HistoryStore]),
        (HistoryServiceServer::<HistoryService>::NAME, &[HistoryStore]),
        (
            ReplicationServiceServer::<ReplicationService>::NAME,
            &[HistoryStore],
        ),
        (FleetServiceServer::<FleetService>::NAME, &[HistoryStore]),
        (MigrationServiceServer::<MigrationService>::NAME, &[HistoryStore]),
        (BackupServiceServer::<BackupService>::NAME, &[HistoryStore]),
    ]
}

/// What the last round of checks saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DependencyState {
    pub history_store: bool,
    /// `None` without `[redis]`.
    pub redis: Option<bool>,
    /// Set at shutdown: not ready for new traffic whatever the stores say.
    pub draining: bool,
}

impl DependencyState {
    /// Whether `dependency` answered (an unconfigured one counts as up).
    pub fn is_up(&self, dependency: Dependency) -> bool {
        match dependency {
            Dependency::HistoryStore => self.history_store,
            Dependency::Redis => self.redis.unwrap_or(true),
        }
    }

    /// Ready for traffic: every dependency up and not draining.
    pub fn ready(&self) -> bool {
        !self.draining && self.history_store && self.redis != Some(false)
    }

    /// The `/readyz` body: the verdict, then each configured dependency.
    pub fn report(&self) -> String {
        let mut text = String::from(if self.ready() { "ready\n" } else { "not ready\n" });
        if self.draining {
            text.push_str("shutting down\n");
        }
        let mut line = |dependency: Dependency, up: bool| {
            let _ = writeln!(
                text,
                "{}: {}",
                dependency.as_str(),
                if up { "up" } else { "down" }
            );
        };
        line(Dependency::HistoryStore, self.history_store);
        if let Some(up) = self.redis {
            line(Dependency::Redis, up);
        }
        text
    }
}

/// The state `/readyz` reads; cheap to clone.
#[derive(Clone)]
pub struct Readiness(watch::Receiver<DependencyState>);

impl Readiness {
    /// The state as of the last check.
    pub fn current(&self) -> DependencyState {
        *self.0.borrow()
    }
}

/// Marks the server as draining; cheap to clone.
#[derive(Clone)]
pub struct DrainSignal(watch::Sender<DependencyState>);

impl DrainSignal {
    /// `/readyz` answers 503 from now on.
    pub fn draining(&self) {
        self.0.send_modify(|state| state.draining = true);
    }
}

/// What the watcher checks and where it reports.
pub struct Dependencies {
    pub history: PgPool,
    pub redis: Option<RedisPool>,
    pub reporter: HealthReporter,
    pub metrics: Metrics,
}

/// The running checks; stopped by [`DependencyWatcher::stop`].
pub struct DependencyWatcher {
    state: watch::Sender<DependencyState>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl DependencyWatcher {
    /// Checks once, so statuses and readiness are right from the first
    /// call (this waits at most `health.dependency_timeout`), then keeps
    /// checking in the background.
    pub async fn start(dependencies: Dependencies, config: &HealthConfig) -> (Self, Readiness) {
        let timeout = config.dependency_timeout;
        let first = check(&dependencies, timeout).await;
        announce(&dependencies, None, first).await;
        let (state, readiness) = watch::channel(first);
        let stop = CancellationToken::new();
        let task = tokio::spawn(watch_loop(
            dependencies,
            state.clone(),
            config.dependency_interval,
            timeout,
            stop.clone(),
        ));
        (Self { state, stop, task }, Readiness(readiness))
    }

    /// What the shutdown uses to mark the server draining.
    pub fn drain_signal(&self) -> DrainSignal {
        DrainSignal(self.state.clone())
    }

    /// Stops checking.
    pub async fn stop(self) {
        self.stop.cancel();
        if let Err(error) = self.task.await {
            tracing::warn!(%error, "dependency watcher task failed");
        }
    }
}

async fn watch_loop(
    dependencies: Dependencies,
    state: watch::Sender<DependencyState>,
    interval: Duration,
    timeout: Duration,
    stop: CancellationToken,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate and `start` has just checked.
    ticks.tick().await;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let seen = check(&dependencies, timeout).await;
        let before = *state.borrow();
        let seen = DependencyState {
            draining: before.draining,
            ..seen
        };
        if seen != before {
            announce(&dependencies, Some(before), seen).await;
            state.send_replace(seen);
        }
    }
}

/// One round: both stores at once, each within `timeout`.
async fn check(dependencies: &Dependencies, timeout: Duration) -> DependencyState {
    let history = async {
        let select = sqlx::query("SELECT 1").execute(&dependencies.history);
        match tokio::time::timeout(timeout, select).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err(format!("no answer within {timeout:?}")),
        }
    };
    let redis = async {
        match &dependencies.redis {
            Some(pool) => Some(pool.ping(timeout).await.map_err(|error| error.to_string())),
            None => None,
        }
    };
    let (history, redis) = tokio::join!(history, redis);
    if let Err(error) = &history {
        tracing::debug!(%error, "history store check failed");
    }
    if let Some(Err(error)) = &redis {
        tracing::debug!(%error, "Redis check failed");
    }
    DependencyState {
        history_store: history.is_ok(),
        redis: redis.map(|answer| answer.is_ok()),
        draining: false,
    }
}

/// Applies `now` to the health statuses and gauges, and logs each
/// dependency that changed since `before` (at start, with no `before`,
/// each one that is down).
async fn announce(dependencies: &Dependencies, before: Option<DependencyState>, now: DependencyState) {
    let configured = [
        Some(Dependency::HistoryStore),
        now.redis.map(|_| Dependency::Redis),
    ];
    for dependency in configured.into_iter().flatten() {
        let up = now.is_up(dependency);
        dependencies.metrics.dependency_up(dependency.as_str(), up);
        let changed = before.is_none_or(|before| before.is_up(dependency) != up);
        let affected = || {
            needs()
                .iter()
                .filter(|(_, needed)| needed.contains(&dependency))
                .map(|(service, _)| *service)
                .collect::<Vec<_>>()
                .join(", ")
        };
        match (changed, up, before.is_some()) {
            (false, _, _) | (true, true, false) => {}
            (true, true, true) => tracing::info!(
                dependency = dependency.as_str(),
                services = %affected(),
                "dependency answers again; its services are SERVING"
            ),
            (true, false, _) => tracing::warn!(
                dependency = dependency.as_str(),
                services = %affected(),
                "dependency does not answer; its services are NOT_SERVING until it does"
            ),
        }
    }
    for (service, needed) in needs() {
        let status = if needed.iter().all(|dependency| now.is_up(*dependency)) {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        dependencies.reporter.set_service_status(service, status).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_needs_every_configured_dependency() {
        let state = |history_store, redis| DependencyState {
            history_store,
            redis,
            draining: false,
        };
        assert!(state(true, None).ready());
        assert!(state(true, Some(true)).ready());
        assert!(!state(false, Some(true)).ready());
        assert!(!state(true, Some(false)).ready());
        assert_eq!(
            state(true, Some(false)).report(),
            "not ready\nhistory_store: up\nredis: down\n"
        );
        assert_eq!(state(true, None).report(), "ready\nhistory_store: up\n");
        let draining = DependencyState {
            draining: true,
            ..state(true, None)
        };
        assert!(!draining.ready());
    }

    #[test]
    fn every_service_needs_the_history_store_and_only_auth_needs_redis() {
        for (service, needed) in needs() {
            assert!(needed.contains(&Dependency::HistoryStore), "{service}");
            assert_eq!(
                needed.contains(&Dependency::Redis),
                service == "pgfleet.v1.AuthService",
                "{service}"
            );
        }
    }
}
