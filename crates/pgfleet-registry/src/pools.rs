//! The pools themselves and the acquisition path.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::Instant;

use pgfleet_config::{
    ConnectionConfig, DatabaseConfig, FleetConfig, PoolConfig, ReadPreference, RetryConfig, SslMode,
};
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgSslMode};
use sqlx::{PgConnection, Postgres};

use crate::error::RegistryError;
use crate::health::{HealthStatus, MemberHealth, MemberState};
use crate::retry::{Backoff, is_transient, tls_failure};
use crate::target::{Member, Route, Target};

/// sqlx connect options for one server, as every pgfleet pool builds them.
pub fn connect_options(connection: &ConnectionConfig) -> PgConnectOptions {
    let mut options = PgConnectOptions::new()
        .host(&connection.host)
        .port(connection.port)
        .username(&connection.user)
        .database(&connection.database)
        .application_name("pgfleet")
        .ssl_mode(match connection.sslmode {
            SslMode::Disable => PgSslMode::Disable,
            SslMode::Prefer => PgSslMode::Prefer,
            SslMode::Require => PgSslMode::Require,
            SslMode::VerifyCa => PgSslMode::VerifyCa,
            SslMode::VerifyFull => PgSslMode::VerifyFull,
        });
    if !connection.password.is_empty() {
        options = options.password(connection.password.expose());
    }
    if let Some(ca) = &connection.ssl_root_cert {
        options = options.ssl_root_cert(ca);
    }
    options
}

/// sqlx pool options from a pool section.
pub fn pool_options(pool: &PoolConfig) -> PgPoolOptions {
    PgPoolOptions::new()
        .min_connections(pool.min_connections)
        .max_connections(pool.max_connections)
        .acquire_timeout(pool.acquire_timeout)
        .idle_timeout(pool.idle_timeout)
        .max_lifetime(pool.max_lifetime)
}

/// A connection handed out by the registry, with the member it came from.
#[derive(Debug)]
pub struct Checkout {
    /// The pooled connection; returns to its pool when dropped.
    pub connection: PoolConnection<Postgres>,
    /// Which server of the target it is connected to.
    pub member: Member,
    /// Connected through the database's `reader_user` login.
    pub reader_login: bool,
}

impl Checkout {
    /// The connection, for running statements.
    pub fn connection_mut(&mut self) -> &mut PgConnection {
        &mut self.connection
    }
}

pub(crate) struct MemberEntry {
    pub(crate) member: Member,
    pub(crate) pool: PgPool,
    /// The same server through `reader_user`, when configured.
    pub(crate) reader_pool: Option<PgPool>,
    pub(crate) state: Mutex<MemberState>,
    /// Callers currently waiting in `acquire` (sqlx does not count them).
    pub(crate) waiting: AtomicU32,
}

impl MemberEntry {
    fn status(&self) -> HealthStatus {
        self.state
            .lock()
            .map(|s| s.status)
            .unwrap_or(HealthStatus::Unknown)
    }

    fn usable(&self) -> bool {
        matches!(self.status(), HealthStatus::Healthy | HealthStatus::Degraded)
    }
}

struct TargetEntry {
    config: DatabaseConfig,
    /// `members[0]` is the primary, the rest replicas in config order.
    members: Vec<MemberEntry>,
    next_replica: AtomicUsize,
}

/// Every target's pools. Cheap to share behind an `Arc`.
pub struct Registry {
    targets: BTreeMap<Target, TargetEntry>,
    retry: RetryConfig,
}

impl Registry {
    /// Builds one lazy pool per target and replica; connects nothing yet.
    /// Must be called inside a tokio runtime.
    pub fn new(config: &FleetConfig) -> Self {
        let mut targets = BTreeMap::new();
        for cloud in &config.clouds {
            for database in &cloud.databases {
                let mut members = vec![member_entry(
                    Member::Primary,
                    &database.connection(),
                    &database.pool,
                    database,
                )];
                for (name, connection) in database.replica_connections() {
                    members.push(member_entry(
                        Member::Replica(name),
                        &connection,
                        &database.pool,
                        database,
                    ));
                }
                targets.insert(
                    Target::new(&cloud.name, &database.name),
                    TargetEntry {
                        config: database.clone(),
                        members,
                        next_replica: AtomicUsize::new(0),
                    },
                );
            }
        }
        Self {
            targets,
            retry: config.retry.clone(),
        }
    }

    /// Every configured target, in (cloud, database) order.
    pub fn targets(&self) -> impl Iterator<Item = &Target> {
        self.targets.keys()
    }

    /// The targets that hold `database`, one per cloud (the seed's mode "both").
    pub fn targets_for_database(&self, database: &str) -> Vec<Target> {
        self.targets
            .keys()
            .filter(|t| t.database == database)
            .cloned()
            .collect()
    }

    /// The configuration of one target.
    pub fn database_config(&self, target: &Target) -> Option<&DatabaseConfig> {
        self.targets.get(target).map(|entry| &entry.config)
    }

    /// The pool of one member, for callers that manage their own
    /// connections (replication, introspection).
    pub fn pool(&self, target: &Target, member: &Member) -> Option<&PgPool> {
        self.targets
            .get(target)?
            .members
            .iter()
            .find(|m| &m.member == member)
            .map(|m| &m.pool)
    }

    /// The pool a [`Checkout`] came from (the reader login's when it used
    /// one), e.g. to open a second connection that may cancel its backend.
    pub fn pool_of(&self, target: &Target, checkout_member: &Member, reader_login: bool) -> Option<&PgPool> {
        let entry = self
            .targets
            .get(target)?
            .members
            .iter()
            .find(|m| &m.member == checkout_member)?;
        if reader_login {
            entry.reader_pool.as_ref()
        } else {
            Some(&entry.pool)
        }
    }

    /// A connection to the member `route` selects, retrying transient
    /// connection failures with backoff. Only the connection is retried: no
    /// statement has been sent yet.
    pub async fn acquire(&self, target: &Target, route: Route) -> Result<Checkout, RegistryError> {
        let entry = self
            .targets
            .get(target)
            .ok_or_else(|| RegistryError::UnknownTarget {
                cloud: target.cloud.clone(),
                database: target.database.clone(),
            })?;
        let member = select_member(entry, route);
        let (pool, reader_login) = match (&member.reader_pool, route) {
            (Some(reader_pool), Route::ReaderLogin) => (reader_pool, true),
            _ => (&member.pool, false),
        };
        let started = Instant::now();
        let mut backoff = Backoff::new(&self.retry);
        loop {
            member.waiting.fetch_add(1, Ordering::Relaxed);
            let result = pool.acquire().await;
            member.waiting.fetch_sub(1, Ordering::Relaxed);
            let error = match result {
                Ok(connection) => {
                    return Ok(Checkout {
                        connection,
                        member: member.member.clone(),
                        reader_login,
                    });
                }
                Err(error) => error,
            };
            record_failure(member, &error);
            if let Some(reason) = tls_failure(&error) {
                return Err(RegistryError::Tls {
                    target: target.clone(),
                    member: member.member.clone(),
                    sslmode: entry.config.sslmode,
                    reason,
                });
            }
            if !is_transient(&error) {
                return Err(RegistryError::Connect {
                    target: target.clone(),
                    member: member.member.clone(),
                    source: error,
                });
            }
            match backoff.next_delay() {
                Some(delay) if started.elapsed() + delay < self.retry.max_elapsed => {
                    tracing::debug!(%target, member = %member.member, ?delay, error = %error, "connection attempt failed; retrying");
                    tokio::time::sleep(delay).await;
                }
                _ => {
                    return Err(RegistryError::Unavailable {
                        target: target.clone(),
                        member: member.member.clone(),
                        attempts: backoff.attempts(),
                        message: error.to_string(),
                    });
                }
            }
        }
    }

    /// Health of every member, from the monitor's last probes and the pools'
    /// counters; touches no database.
    pub fn health_snapshot(&self) -> Vec<MemberHealth> {
        self.members()
            .map(|(target, member)| MemberHealth::from_entry(target, member))
            .collect()
    }

    pub(crate) fn members(&self) -> impl Iterator<Item = (&Target, &MemberEntry)> {
        self.targets
            .iter()
            .flat_map(|(target, entry)| entry.members.iter().map(move |member| (target, member)))
    }

    /// Closes every pool: waits for checked-out connections to come back.
    pub async fn close(&self) {
        futures::future::join_all(
            self.members()
                .flat_map(|(_, member)| std::iter::once(&member.pool).chain(member.reader_pool.as_ref()))
                .map(PgPool::close),
        )
        .await;
    }
}

fn member_entry(
    member: Member,
    connection: &ConnectionConfig,
    pool: &PoolConfig,
    database: &DatabaseConfig,
) -> MemberEntry {
    let reader_pool = database.reader_user.as_ref().map(|user| {
        let reader = ConnectionConfig {
            user: user.clone(),
            password: database.reader_password.clone().unwrap_or_default(),
            ..connection.clone()
        };
        pool_options(pool).connect_lazy_with(connect_options(&reader))
    });
    MemberEntry {
        member,
        pool: pool_options(pool).connect_lazy_with(connect_options(connection)),
        reader_pool,
        state: Mutex::new(MemberState::default()),
        waiting: AtomicU32::new(0),
    }
}

fn record_failure(member: &MemberEntry, error: &sqlx::Error) {
    if let Ok(mut state) = member.state.lock() {
        state.record_error(error.to_string());
    }
}

fn select_member(entry: &TargetEntry, route: Route) -> &MemberEntry {
    let primary = &entry.members[0];
    let replicas = &entry.members[1..];
    if route == Route::Write || replicas.is_empty() {
        return primary;
    }
    let healthy_replica = || {
        let start = entry.next_replica.fetch_add(1, Ordering::Relaxed);
        (0..replicas.len())
            .map(|offset| &replicas[(start + offset) % replicas.len()])
            .find(|replica| replica.usable())
    };
    match entry.config.read_preference {
        ReadPreference::Primary => primary,
        ReadPreference::Replica => healthy_replica().unwrap_or(primary),
        ReadPreference::PrimaryThenReplica if primary.status() == HealthStatus::Unhealthy => {
            healthy_replica().unwrap_or(primary)
        }
        ReadPreference::PrimaryThenReplica => primary,
    }
}
