//! The background health monitor: probes every member on an interval and
//! records what it saw in the member's health state.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use chrono::Utc;

use pgfleet_config::HealthConfig;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::health::{HealthStatus, ReplayLag, error_category};
use crate::pools::{MemberEntry, Registry};
use crate::privileges::login_privileges;
use crate::retry::is_unreachable;
use crate::target::Target;

/// What a probe reads: role; on a standby the replay lag in time (zero
/// when all it received is replayed, else the age of the last replayed
/// transaction: it grows while replay is paused or slow) and in bytes; the
/// database's size.
const PROBE: &str = "SELECT pg_is_in_recovery(), \
     CASE WHEN pg_is_in_recovery() THEN \
       CASE WHEN pg_last_wal_receive_lsn() IS NOT DISTINCT FROM pg_last_wal_replay_lsn() THEN 0 \
       ELSE extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8 END END, \
     CASE WHEN pg_is_in_recovery() THEN \
       coalesce(pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()), 0)::int8 END, \
     pg_database_size(current_database())";

/// Probes every member of a registry on an interval until stopped.
pub struct HealthMonitor {
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

impl HealthMonitor {
    /// Starts probing now (a first round right away), then every `interval`.
    pub fn spawn(registry: Arc<Registry>, config: HealthConfig) -> Self {
        let cancel = CancellationToken::new();
        let token = cancel.clone();
        let task = tokio::spawn(async move {
            let mut ticker = tokio::time::interval(config.interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = token.cancelled() => break,
                    _ = ticker.tick() => probe_all(&registry, &config).await,
                }
            }
        });
        Self { cancel, task }
    }

    /// Stops probing and waits for the current round to end.
    pub async fn stop(self) {
        self.cancel.cancel();
        if let Err(error) = self.task.await {
            tracing::warn!(%error, "health monitor task ended abnormally");
        }
    }
}

/// One probe of every member, concurrently.
pub async fn probe_all(registry: &Registry, config: &HealthConfig) {
    let entries = registry.entries();
    futures::future::join_all(entries.iter().flat_map(|(target, entry)| {
        entry
            .members
            .iter()
            .map(move |member| probe(target, member, config))
    }))
    .await;
}

async fn probe(target: &Target, member: &MemberEntry, config: &HealthConfig) {
    let outcome = tokio::time::timeout(config.probe_timeout, async {
        // The pool checks only connections idle past `check_after_idle`
        // (pools.rs): one broken since, while idle, fails here and is
        // replaced, at most once per connection the pool holds; the probe
        // is about the server, not about a connection it already lost.
        let mut replaced: u32 = 0;
        let (started, (in_recovery, lag_seconds, lag_bytes, size)) = loop {
            let mut connection = member.pool.acquire().await?;
            let started = Instant::now();
            // One round trip, like `SELECT 1`: the role (so writes can follow
            // a failover), a standby's replay lag (so lagging replicas can be
            // skipped for reads) and the database's size.
            let probed: Result<(bool, Option<f64>, Option<i64>, i64), sqlx::Error> =
                sqlx::query_as(PROBE).fetch_one(&mut *connection).await;
            match probed {
                Ok(row) => break (started, row),
                Err(error)
                    if is_unreachable(&error) && replaced < member.pool.options().get_max_connections() =>
                {
                    drop(connection.detach());
                    replaced += 1;
                }
                Err(error) => return Err(error),
            }
        };
        let replay_lag = in_recovery.then(|| ReplayLag {
            time: lag_seconds
                .map(|seconds| Duration::try_from_secs_f64(seconds.max(0.0)).unwrap_or_default()),
            bytes: u64::try_from(lag_bytes.unwrap_or(0)).unwrap_or(0),
        });
        Ok::<_, sqlx::Error>((started.elapsed(), in_recovery, replay_lag, size))
    })
    .await;
    if matches!(outcome, Ok(Ok(_))) && !member.logins_checked.swap(true, Ordering::Relaxed) {
        warn_about_logins(target, member).await;
    }
    let Ok(mut state) = member.state.lock() else {
        return;
    };
    state.last_checked_at = Some(Utc::now());
    match outcome {
        Ok(Ok((latency, in_recovery, replay_lag, size))) => {
            state.consecutive_failures = 0;
            state.latency = Some(latency);
            state.in_recovery = Some(in_recovery);
            state.replay_lag = replay_lag;
            state.database_size = u64::try_from(size).ok();
            state.status = if latency > config.degraded_latency {
                HealthStatus::Degraded
            } else {
                HealthStatus::Healthy
            };
        }
        Ok(Err(error)) => {
            tracing::debug!(%target, member = %member.member, %error, "health probe failed");
            state.consecutive_failures = state.consecutive_failures.saturating_add(1);
            state.record_error(error.to_string(), error_category(&error));
        }
        Err(_) => {
            state.consecutive_failures = state.consecutive_failures.saturating_add(1);
            state.record_error(
                format!("no answer within {}", humantime_duration(config.probe_timeout)),
                "timeout",
            );
        }
    }
}

/// Once per member, at its first successful probe: a warning for a main
/// login that is a superuser (writes do not need it; nothing is refused,
/// existing setups keep working) and for a missing or privileged
/// `reader_user` (READER executions are refused until it is fixed).
async fn warn_about_logins(target: &Target, member: &MemberEntry) {
    let check = async {
        let mut connection = member.pool.acquire().await?;
        let main = login_privileges(&mut connection).await?;
        drop(connection);
        if main.excess.iter().any(|excess| excess == "SUPERUSER") {
            tracing::warn!(%target, member = %member.member, user = %main.user,
                "the main login is a superuser; USER and MASTER statements run with every privilege \
                 (a login that owns or is granted the tables is enough, see docs/SECURITY.md)");
        }
        match &member.reader_pool {
            None => tracing::warn!(%target, member = %member.member,
                "no reader_user: READER executions on this database are refused (docs/SECURITY.md)"),
            Some(pool) => {
                let mut connection = pool.acquire().await?;
                let reader = login_privileges(&mut connection).await?;
                if !reader.is_unprivileged() {
                    tracing::warn!(%target, member = %member.member, user = %reader.user,
                        excess = ?reader.excess,
                        "reader_user is privileged: READER executions on this database are refused");
                }
            }
        }
        Ok::<_, sqlx::Error>(())
    };
    if let Err(error) = check.await {
        tracing::debug!(%target, member = %member.member, %error, "could not check the logins' privileges");
    }
}

fn humantime_duration(duration: Duration) -> String {
    format!("{:.1}s", duration.as_secs_f64())
}
