//! The pools themselves and the acquisition path.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use pgfleet_config::{
    CloudConfig, ConnectionConfig, DatabaseConfig, FleetConfig, PoolConfig, ReadPreference, RetryConfig,
    SslMode,
};
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgSslMode};
use sqlx::{Connection as _, PgConnection, Postgres, Row as _};

use crate::error::RegistryError;
use crate::health::{HealthStatus, MemberHealth, MemberState};
use crate::privileges::login_privileges;
use crate::retry::{Backoff, is_transient, tls_failure};
use crate::target::{Member, Route, Target};

/// Statements sqlx keeps prepared per connection (its default, set
/// explicitly by [`connect_options`] because `reset_session` relies on it:
/// the cache only evicts when full).
pub const STATEMENT_CACHE_CAPACITY: usize = 100;

/// sqlx connect options for one server, as every pgfleet pool builds them.
pub fn connect_options(connection: &ConnectionConfig) -> PgConnectOptions {
    let mut options = PgConnectOptions::new()
        .host(&connection.host)
        .port(connection.port)
        .username(&connection.user)
        .database(&connection.database)
        .application_name("pgfleet")
        .statement_cache_capacity(STATEMENT_CACHE_CAPACITY)
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
///
/// sqlx pings every connection it hands out by default: a round trip on
/// every call, paid again for each pool a call touches. Here only a
/// connection idle for longer than `check_after_idle` is pinged (PgBouncer's
/// `server_check_delay`): those are the ones an outage or a server restart
/// may have broken unseen. A connection reused sooner that is broken all the
/// same fails its first message; the query path replaces it then
/// (`pgfleet_engine::query::run`), and other users see a failed call, as
/// they would for a connection broken during the call.
pub fn pool_options(pool: &PoolConfig) -> PgPoolOptions {
    let check_after_idle = pool.check_after_idle;
    PgPoolOptions::new()
        .min_connections(pool.min_connections)
        .max_connections(pool.max_connections)
        .acquire_timeout(pool.acquire_timeout)
        .idle_timeout(pool.idle_timeout)
        .max_lifetime(pool.max_lifetime)
        .test_before_acquire(false)
        .before_acquire(move |connection, metadata| {
            Box::pin(async move {
                if metadata.idle_for >= check_after_idle {
                    // An error discards the connection and the pool
                    // opens another, as sqlx's own ping does.
                    connection.ping().await?;
                }
                Ok(true)
            })
        })
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
    /// Replicas this read passed over for being further behind than
    /// `max_replica_lag` when it was routed; empty for writes.
    pub lagging: Vec<LaggingReplica>,
}

/// A replica a read passed over: its replay lag was past the database's
/// `max_replica_lag`, or unknown (no probe measured it yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaggingReplica {
    /// The replica's configured name.
    pub name: String,
    /// How far behind the last probe measured it; `None` when unknown.
    pub replay_lag: Option<Duration>,
}

impl Checkout {
    /// The connection, for running statements.
    pub fn connection_mut(&mut self) -> &mut PgConnection {
        &mut self.connection
    }

    /// Whether the server of this connection is a standby in recovery
    /// (`pg_is_in_recovery()`), asked on this very connection.
    pub async fn in_recovery(&mut self) -> Result<bool, sqlx::Error> {
        // The simple protocol: one round trip, nothing prepared (the
        // connection may come back holding no prepared statement).
        let row = sqlx::raw_sql("SELECT pg_catalog.pg_is_in_recovery()")
            .fetch_one(&mut *self.connection)
            .await?;
        row.try_get(0)
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
    /// The logins' privileges were looked at (and warned about) once.
    pub(crate) logins_checked: AtomicBool,
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

    /// This replica as a read that passed it over reports it.
    fn lagging(&self) -> LaggingReplica {
        LaggingReplica {
            name: match &self.member {
                Member::Replica(name) => name.clone(),
                Member::Primary => "primary".to_owned(),
            },
            replay_lag: self
                .state
                .lock()
                .ok()
                .and_then(|state| state.replay_lag.and_then(|lag| lag.time)),
        }
    }

    /// Whether this member's replay is within `max_lag` at the last probe:
    /// a primary (a promoted replica) always is; a standby of unknown lag
    /// is not, so a bounded read never goes to a replica nobody measured.
    fn within_lag(&self, max_lag: Option<Duration>) -> bool {
        let Some(max_lag) = max_lag else {
            return true;
        };
        self.state
            .lock()
            .is_ok_and(|state| match (state.in_recovery, state.replay_lag) {
                (Some(false), _) => true,
                (_, Some(lag)) => lag.time.is_some_and(|time| time <= max_lag),
                _ => false,
            })
    }
}

pub(crate) struct TargetEntry {
    config: DatabaseConfig,
    /// `members[0]` is the primary, the rest replicas in config order.
    pub(crate) members: Vec<MemberEntry>,
    next_replica: AtomicUsize,
}

impl TargetEntry {
    /// Lazy pools for one database and its replicas; connects nothing.
    fn new(database: &DatabaseConfig) -> Self {
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
        Self {
            config: database.clone(),
            members,
            next_replica: AtomicUsize::new(0),
        }
    }

    async fn close(&self) {
        futures::future::join_all(
            self.members
                .iter()
                .flat_map(|member| std::iter::once(&member.pool).chain(member.reader_pool.as_ref()))
                .map(PgPool::close),
        )
        .await;
    }
}

/// The database list of one configuration, with its pools.
struct Fleet {
    clouds: Vec<CloudConfig>,
    targets: BTreeMap<Target, Arc<TargetEntry>>,
}

/// What [`Registry::reload`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reloaded {
    pub added: Vec<Target>,
    pub removed: Vec<Target>,
    /// Same name, other settings: new pools replace the old ones.
    pub changed: Vec<Target>,
}

impl Reloaded {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

/// Every target's pools. Cheap to share behind an `Arc`.
///
/// The database list can be replaced while the server runs
/// ([`Registry::reload`]): every call works on the snapshot it loaded, so a
/// request that resolved its targets keeps their pools even if they are
/// removed meanwhile.
pub struct Registry {
    fleet: ArcSwap<Fleet>,
    retry: RetryConfig,
}

impl Registry {
    /// Builds one lazy pool per target and replica; connects nothing yet.
    /// Must be called inside a tokio runtime.
    pub fn new(config: &FleetConfig) -> Self {
        let targets = configured(config)
            .map(|(target, database)| (target, Arc::new(TargetEntry::new(database))))
            .collect();
        Self {
            fleet: ArcSwap::from_pointee(Fleet {
                clouds: config.clouds.clone(),
                targets,
            }),
            retry: config.retry.clone(),
        }
    }

    /// Replaces the database list with `config`'s. Unchanged targets keep
    /// their pools and health; added and changed ones get new lazy pools.
    /// The pools of removed and changed targets close once the connections
    /// checked out of them come back, so queries running on them finish.
    /// Other settings (retry) are kept as they were.
    /// Must be called inside a tokio runtime.
    pub fn reload(&self, config: &FleetConfig) -> Reloaded {
        let old = self.fleet.load_full();
        let mut reloaded = Reloaded::default();
        let mut targets = BTreeMap::new();
        for (target, database) in configured(config) {
            let entry = match old.targets.get(&target) {
                Some(entry) if entry.config == *database => Arc::clone(entry),
                Some(_) => {
                    reloaded.changed.push(target.clone());
                    Arc::new(TargetEntry::new(database))
                }
                None => {
                    reloaded.added.push(target.clone());
                    Arc::new(TargetEntry::new(database))
                }
            };
            targets.insert(target, entry);
        }
        let retired: Vec<Arc<TargetEntry>> = old
            .targets
            .iter()
            .filter(|(target, entry)| {
                let kept = targets.get(*target).is_some_and(|new| Arc::ptr_eq(new, entry));
                if !targets.contains_key(*target) {
                    reloaded.removed.push((*target).clone());
                }
                !kept
            })
            .map(|(_, entry)| Arc::clone(entry))
            .collect();
        self.fleet.store(Arc::new(Fleet {
            clouds: config.clouds.clone(),
            targets,
        }));
        if !retired.is_empty() {
            tokio::spawn(async move {
                futures::future::join_all(retired.iter().map(|entry| entry.close())).await;
            });
        }
        reloaded
    }

    /// The configured clouds with their databases, as last (re)loaded.
    pub fn clouds(&self) -> Vec<CloudConfig> {
        self.fleet.load().clouds.clone()
    }

    /// Every configured target, in (cloud, database) order.
    pub fn targets(&self) -> Vec<Target> {
        self.fleet.load().targets.keys().cloned().collect()
    }

    /// The targets that hold `database`, one per cloud (the seed's mode "both").
    pub fn targets_for_database(&self, database: &str) -> Vec<Target> {
        self.fleet
            .load()
            .targets
            .keys()
            .filter(|t| t.database == database)
            .cloned()
            .collect()
    }

    /// The configuration of one target.
    pub fn database_config(&self, target: &Target) -> Option<DatabaseConfig> {
        self.fleet
            .load()
            .targets
            .get(target)
            .map(|entry| entry.config.clone())
    }

    /// The pool of one member, for callers that manage their own
    /// connections (replication, introspection).
    pub fn pool(&self, target: &Target, member: &Member) -> Option<PgPool> {
        self.fleet
            .load()
            .targets
            .get(target)?
            .members
            .iter()
            .find(|m| &m.member == member)
            .map(|m| m.pool.clone())
    }

    /// The pool a [`Checkout`] came from (the reader login's when it used
    /// one), e.g. to open a second connection that may cancel its backend.
    pub fn pool_of(&self, target: &Target, checkout_member: &Member, reader_login: bool) -> Option<PgPool> {
        let fleet = self.fleet.load();
        let entry = fleet
            .targets
            .get(target)?
            .members
            .iter()
            .find(|m| &m.member == checkout_member)?;
        if reader_login {
            entry.reader_pool.clone()
        } else {
            Some(entry.pool.clone())
        }
    }

    /// A connection to the member `route` selects, retrying transient
    /// connection failures with backoff. Only the connection is retried: no
    /// statement has been sent yet.
    ///
    /// Writes go to the member that is primary now, which after a failover
    /// may be a configured replica: candidates are tried in the order the
    /// last probes suggest (see [`write_candidates`]) and each checkout is
    /// checked with `pg_is_in_recovery()` on its own connection (libpq's
    /// `target_session_attrs=read-write`), so a write never lands on a
    /// standby, whatever the probes said.
    pub async fn acquire(&self, target: &Target, route: Route) -> Result<Checkout, RegistryError> {
        let entry =
            self.fleet
                .load()
                .targets
                .get(target)
                .cloned()
                .ok_or_else(|| RegistryError::UnknownTarget {
                    cloud: target.cloud.clone(),
                    database: target.database.clone(),
                })?;
        if route != Route::Write {
            let (member, lagging) = select_member(&entry, route);
            let mut checkout = self.connect(target, &entry, member, route).await?;
            checkout.lagging = lagging;
            return Ok(checkout);
        }
        // The first candidate's failure says most (where writes should have
        // gone: a wrong password or a TLS error must not read as "no
        // writable member" because a standby answered after it).
        let mut first_error = None;
        for member in write_candidates(&entry) {
            let mut checkout = match self.connect(target, &entry, member, route).await {
                Ok(checkout) => checkout,
                Err(error) => {
                    first_error.get_or_insert(error);
                    continue;
                }
            };
            match checkout.in_recovery().await {
                Ok(in_recovery) => {
                    if let Ok(mut state) = member.state.lock() {
                        state.in_recovery = Some(in_recovery);
                    }
                    if !in_recovery {
                        return Ok(checkout);
                    }
                }
                Err(error) => {
                    record_failure(member, &error);
                    // The connection broke under the check: not reused.
                    drop(checkout.connection.detach());
                    first_error.get_or_insert(RegistryError::Unavailable {
                        target: target.clone(),
                        member: member.member.clone(),
                        attempts: 1,
                        message: error.to_string(),
                    });
                }
            }
        }
        Err(first_error.unwrap_or(RegistryError::NoWritableMember {
            target: target.clone(),
        }))
    }

    /// A connection to one named member of `target` through its main login
    /// (for administration: promotion and its checks), with the usual
    /// connection retries.
    pub async fn acquire_member(&self, target: &Target, member: &Member) -> Result<Checkout, RegistryError> {
        let unknown = || RegistryError::UnknownTarget {
            cloud: target.cloud.clone(),
            database: target.database.clone(),
        };
        let entry = self
            .fleet
            .load()
            .targets
            .get(target)
            .cloned()
            .ok_or_else(unknown)?;
        let chosen = entry
            .members
            .iter()
            .find(|candidate| candidate.member == *member)
            .ok_or_else(unknown)?;
        self.connect(target, &entry, chosen, Route::Read).await
    }

    /// The members of `target` (primary first), empty for an unknown one.
    pub fn members(&self, target: &Target) -> Vec<Member> {
        self.fleet
            .load()
            .targets
            .get(target)
            .map(|entry| entry.members.iter().map(|m| m.member.clone()).collect())
            .unwrap_or_default()
    }

    /// A connection to `member`, through the pool `route` asks for.
    async fn connect(
        &self,
        target: &Target,
        entry: &TargetEntry,
        member: &MemberEntry,
        route: Route,
    ) -> Result<Checkout, RegistryError> {
        let (pool, reader_login) = match (&member.reader_pool, route) {
            (Some(reader_pool), Route::ReaderLogin | Route::ReaderLoginCheckedByCaller) => {
                (reader_pool, true)
            }
            (None, Route::ReaderLogin | Route::ReaderLoginCheckedByCaller) => {
                return Err(RegistryError::NoReaderLogin {
                    target: target.clone(),
                });
            }
            _ => (&member.pool, false),
        };
        let started = Instant::now();
        let mut backoff = Backoff::new(&self.retry);
        loop {
            member.waiting.fetch_add(1, Ordering::Relaxed);
            let result = pool.acquire().await;
            member.waiting.fetch_sub(1, Ordering::Relaxed);
            let error = match result {
                Ok(mut connection) if route == Route::ReaderLogin => {
                    check_reader_login(target, &member.member, &mut connection).await?;
                    return Ok(Checkout {
                        connection,
                        member: member.member.clone(),
                        reader_login,
                        lagging: Vec::new(),
                    });
                }
                Ok(connection) => {
                    return Ok(Checkout {
                        connection,
                        member: member.member.clone(),
                        reader_login,
                        lagging: Vec::new(),
                    });
                }
                Err(error) => error,
            };
            // Every connection busy until the wait ran out: the pool's limit,
            // not the member's health (the probes say how the member is).
            if matches!(error, sqlx::Error::PoolTimedOut) && pool_is_full(pool) {
                return Err(RegistryError::PoolExhausted {
                    target: target.clone(),
                    member: member.member.clone(),
                    max_connections: pool.options().get_max_connections(),
                    waited: pool.options().get_acquire_timeout(),
                });
            }
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
        self.entries()
            .iter()
            .flat_map(|(target, entry)| entry.members.iter().map(move |member| member.health(target)))
            .collect()
    }

    /// The targets of the current list with their pools.
    pub(crate) fn entries(&self) -> Vec<(Target, Arc<TargetEntry>)> {
        self.fleet
            .load()
            .targets
            .iter()
            .map(|(target, entry)| (target.clone(), Arc::clone(entry)))
            .collect()
    }

    /// Closes every pool: waits for checked-out connections to come back.
    pub async fn close(&self) {
        futures::future::join_all(self.entries().iter().map(|(_, entry)| entry.close())).await;
    }
}

/// Every (target, database) of a configuration, in config order.
fn configured(config: &FleetConfig) -> impl Iterator<Item = (Target, &DatabaseConfig)> {
    config.clouds.iter().flat_map(|cloud| {
        cloud
            .databases
            .iter()
            .map(move |database| (Target::new(&cloud.name, &database.name), database))
    })
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
        logins_checked: AtomicBool::new(false),
    }
}

/// Refuses a reader connection whose login is privileged. Checked on every
/// checkout, not once per pool: a grant made while pgfleet runs counts from
/// the next READER execution on, and the check is one catalog lookup.
async fn check_reader_login(
    target: &Target,
    member: &Member,
    connection: &mut PoolConnection<Postgres>,
) -> Result<(), RegistryError> {
    let privileges = match login_privileges(connection).await {
        Ok(privileges) => privileges,
        Err(source) => {
            // The connection's state is unknown: do not hand it out again.
            connection.close_on_drop();
            return Err(RegistryError::Connect {
                target: target.clone(),
                member: member.clone(),
                source,
            });
        }
    };
    if privileges.is_unprivileged() {
        return Ok(());
    }
    tracing::warn!(%target, %member, user = %privileges.user, excess = ?privileges.excess,
        "reader_user is privileged; READER executions refused");
    Err(RegistryError::PrivilegedReaderLogin {
        target: target.clone(),
        member: member.clone(),
        login: Box::new(privileges),
    })
}

/// Every connection of `pool` is open and checked out. (Connections still
/// being established count in the size too: a pool whose connects all hang
/// reads as full, and its callers are told so instead of waiting longer.)
fn pool_is_full(pool: &PgPool) -> bool {
    pool.size() >= pool.options().get_max_connections() && pool.num_idle() == 0
}

fn record_failure(member: &MemberEntry, error: &sqlx::Error) {
    if let Ok(mut state) = member.state.lock() {
        state.record_error(error.to_string(), crate::health::error_category(error));
    }
}

/// Where a write is tried, in order: members the last probes saw as
/// primary, then those of unknown role, then those seen in recovery (a
/// promotion may have come since), and members that did not answer last;
/// the configuration's order (primary first) within each.
fn write_candidates(entry: &TargetEntry) -> Vec<&MemberEntry> {
    let mut candidates: Vec<(u8, &MemberEntry)> = entry
        .members
        .iter()
        .map(|member| {
            let (status, in_recovery) = member
                .state
                .lock()
                .map(|state| (state.status, state.in_recovery))
                .unwrap_or((HealthStatus::Unknown, None));
            let rank = match (status, in_recovery) {
                (HealthStatus::Unhealthy, _) => 3,
                (_, Some(false)) => 0,
                (_, None) => 1,
                (_, Some(true)) => 2,
            };
            (rank, member)
        })
        .collect();
    candidates.sort_by_key(|(rank, _)| *rank);
    candidates.into_iter().map(|(_, member)| member).collect()
}

/// The member a read (or a write, always the configured primary here) is
/// routed to, with the replicas it passed over for lag.
fn select_member(entry: &TargetEntry, route: Route) -> (&MemberEntry, Vec<LaggingReplica>) {
    let primary = &entry.members[0];
    let replicas = &entry.members[1..];
    if route == Route::Write || replicas.is_empty() {
        return (primary, Vec::new());
    }
    let max_lag = entry.config.max_replica_lag;
    let healthy_replica = || {
        let start = entry.next_replica.fetch_add(1, Ordering::Relaxed);
        let chosen = (0..replicas.len())
            .map(|offset| &replicas[(start + offset) % replicas.len()])
            .find(|replica| replica.usable() && replica.within_lag(max_lag));
        // Every usable replica past the bound, whichever was chosen.
        let lagging = replicas
            .iter()
            // The bound first: without one, no replica's state is locked.
            .filter(|replica| !replica.within_lag(max_lag) && replica.usable())
            .map(MemberEntry::lagging)
            .collect();
        (chosen, lagging)
    };
    let (chosen, lagging) = match entry.config.read_preference {
        ReadPreference::Primary => (None, Vec::new()),
        ReadPreference::Replica => healthy_replica(),
        ReadPreference::PrimaryThenReplica if primary.status() == HealthStatus::Unhealthy => {
            healthy_replica()
        }
        ReadPreference::PrimaryThenReplica => (None, Vec::new()),
    };
    (chosen.unwrap_or(primary), lagging)
}

impl MemberEntry {
    /// This member's health as reported (a snapshot of its state).
    pub(crate) fn health(&self, target: &Target) -> MemberHealth {
        let member = self;
        let state = member.state.lock();
        let (
            status,
            in_recovery,
            replay_lag,
            database_size,
            latency,
            last_error,
            last_error_category,
            last_error_at,
            last_checked_at,
            consecutive_failures,
        ) = match &state {
            Ok(s) => (
                s.status,
                s.in_recovery,
                s.replay_lag,
                s.database_size,
                s.latency,
                s.last_error.clone(),
                s.last_error_category,
                s.last_error_at,
                s.last_checked_at,
                s.consecutive_failures,
            ),
            Err(_) => (
                HealthStatus::Unknown,
                None,
                None,
                None,
                None,
                None,
                None,
                None,
                None,
                0,
            ),
        };
        MemberHealth {
            target: target.clone(),
            member: member.member.clone(),
            status,
            in_recovery,
            replay_lag,
            database_size,
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
