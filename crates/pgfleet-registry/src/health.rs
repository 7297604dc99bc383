//! The background health monitor and the snapshot it keeps.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use pgfleet_config::HealthConfig;
use serde::Serialize;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::pools::{MemberEntry, Registry};
use crate::privileges::login_privileges;
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

impl MemberHealth {
    pub(crate) fn from_entry(target: &Target, member: &MemberEntry) -> Self {
        let state = member.state.lock();
        let (
            status,
            latency,
            last_error,
            last_error_category,
            last_error_at,
            last_checked_at,
            consecutive_failures,
        ) = match &state {
            Ok(s) => (
                s.status,
                s.latency,
                s.last_error.clone(),
                s.last_error_category,
                s.last_error_at,
                s.last_checked_at,
                s.consecutive_failures,
            ),
            Err(_) => (HealthStatus::Unknown, None, None, None, None, None, 0),
        };
        Self {
            target: target.clone(),
            member: member.member.clone(),
            status,
            latency,
            pool_size: member.pool.size(),
            pool_idle: u32::try_from(member.pool.num_idle()).unwrap_or(u32::MAX),
            pool_waiting: member.waiting.load(Ordering::Relaxed),
            last_error,
            last_error_category,
            last_error_at,
            last_checked_at,
            consecutive_failures,
        }
    }
}

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
        sqlx::query("SELECT 1").execute(&mut *connection).await?;
        Ok::<_, sqlx::Error>(started.elapsed())
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
        Ok(Ok(latency)) => {
            state.consecutive_failures = 0;
            state.latency = Some(latency);
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
