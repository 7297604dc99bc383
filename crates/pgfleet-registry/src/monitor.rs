//! The background health monitor: probes every member on an interval and
//! records what it saw in the member's health state.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use chrono::Utc;

use pgfleet_config::HealthConfig;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::health::{HealthStatus, error_category};
use crate::pools::{MemberEntry, Registry};
use crate::privileges::login_privileges;
use crate::target::Target;

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
        let mut connection = member.pool.acquire().await?;
        let started = Instant::now();
        // The same one round trip as `SELECT 1`, and it tells primaries
        // from standbys, so writes can follow a failover.
        let in_recovery: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()")
            .fetch_one(&mut *connection)
            .await?;
        Ok::<_, sqlx::Error>((started.elapsed(), in_recovery))
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
        Ok(Ok((latency, in_recovery))) => {
            state.consecutive_failures = 0;
            state.latency = Some(latency);
            state.in_recovery = Some(in_recovery);
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
