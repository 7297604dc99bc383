//! Assembling and running the server: pools, health, gRPC services,
//! graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use pgfleet_config::{FleetConfig, LoadedConfig, Secret};
use pgfleet_proto::pgfleet::v1::auth_service_server::AuthServiceServer;
use pgfleet_proto::pgfleet::v1::backup_service_server::BackupServiceServer;
use pgfleet_proto::pgfleet::v1::fleet_service_server::FleetServiceServer;
use pgfleet_proto::pgfleet::v1::history_service_server::HistoryServiceServer;
use pgfleet_proto::pgfleet::v1::insights_service_server::InsightsServiceServer;
use pgfleet_proto::pgfleet::v1::migration_service_server::MigrationServiceServer;
use pgfleet_proto::pgfleet::v1::query_service_server::QueryServiceServer;
use pgfleet_proto::pgfleet::v1::replication_service_server::ReplicationServiceServer;
use pgfleet_registry::{HealthMonitor, Registry, Reloaded, Target, connect_options};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::auth::gate::AuthLayer;
use crate::auth::{AuthError, Authenticator, SessionStore, SessionStoreError};
use crate::browser::{BrowserAccess, BrowserConfigError};
use crate::console::ConsoleAssetsLayer;
use crate::edge::{
    self, ClientAddressLayer, ExpensiveCallLimitLayer, ExpensiveCallLimiter, QueryRateLimitLayer, ServerTls,
    TlsError, transport::MessageLimit,
};
use crate::readiness::{Dependencies, DependencyWatcher};
use crate::redis_pool::{RedisPool, RedisPoolError};
use crate::services::{
    AuthService, FleetService, HistoryService, InsightsService, MigrationService, QueryService,
    ReplicationService,
};
use crate::telemetry::Metrics;
use crate::telemetry::exposition::MetricsListener;
use crate::telemetry::rpc::RpcLayer;
use pgfleet_engine::audit::{self, AuditLog};
use pgfleet_engine::history_store::{self, HistoryStoreError};
use pgfleet_engine::insights::slow_log::SlowQueryLog;
use pgfleet_engine::migrations::Migrations;
use pgfleet_engine::replication::{self, jobs::JobStore, runner::JobRunner, state::RunStore};

/// Longest wait for the history store at start when migrations run.
const STARTUP_STORE_WAIT: Duration = Duration::from_secs(30);

/// Why the server could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    HistoryStore(#[from] HistoryStoreError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot build the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("gRPC transport failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("cannot set up authentication: {0}")]
    Auth(#[from] AuthError),
    #[error("cannot set up the session store: {0}")]
    SessionStore(#[from] SessionStoreError),
    #[error("cannot set up the Redis pool: {0}")]
    Redis(#[from] RedisPoolError),
    #[error("server task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("cannot set up browser access: {0}")]
    Browser(#[from] BrowserConfigError),
    #[error("TLS on the gRPC port: {0}")]
    Tls(#[from] TlsError),
    #[error("cannot define the metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("cannot prepare the audit trail: {0}")]
    Audit(#[from] pgfleet_engine::audit::AuditError),
    #[error("{0}")]
    Migrations(pgfleet_engine::migrations::MigrationError),
    #[error("import-legacy: {0}")]
    LegacyImport(#[from] crate::legacy_import_cli::ImportError),
    #[error("backups: {0}")]
    Backup(#[from] pgfleet_backup::BackupError),
}

/// One listener serving until shutdown.
type Serving = std::pin::Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>>;

/// A started server. Dropping it does not stop it; call [`RunningServer::shutdown`].
pub struct RunningServer {
    addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    console_addr: Option<SocketAddr>,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), ServeError>>,
    /// Reloaded on SIGHUP ([`RunningServer::reload`]).
    registry: Arc<Registry>,
    /// What the server started with, to tell which changes a reload skips.
    started_with: FleetConfig,
    /// The history store's pool, whose password a reload may rotate.
    history: PgPool,
    /// The history store password new connections use now.
    history_password: Mutex<Secret>,
}

impl RunningServer {
    /// Binds `server.listen_addr` (port 0 picks a free one), applies
    /// migrations when configured, and starts serving in the background.
    pub async fn start(loaded: LoadedConfig) -> Result<Self, ServeError> {
        let config = loaded.config;
        let started_with = config.clone();
        // Before anything is started that an error here would leave running.
        let browser = BrowserAccess::new(&config.server)?;
        // Edges: certificate problems stop the start before anything runs.
        let tls = match &config.server.tls {
            Some(files) => Some(ServerTls::load(files).await?),
            None => None,
        };
        let history = history_store::pool(&config.history);
        if config.server.run_migrations {
            history_store::migrate(&history, &config.history, STARTUP_STORE_WAIT).await?;
        }

        // One pool for everything kept in Redis.
        let redis_pool = match &config.redis {
            Some(redis) => Some(RedisPool::new(redis)?),
            None => None,
        };
        let sessions = match redis_pool.clone().zip(config.redis.as_ref()) {
            Some((pool, redis)) => SessionStore::on_redis(pool, redis),
            None => {
                tracing::warn!(
                    "no [redis] configured: sessions live in this process only; \
                     run a single replica, and expect logins to end when it restarts"
                );
                SessionStore::memory()
            }
        };
        let authenticator = Authenticator::new(history.clone(), sessions, config.auth.clone()).await?;
        // Observability: one set of series per server.
        let metrics = Metrics::new()?;
        // The chain key is read and the chain sealed under it before
        // anything can append (the maintenance task below does).
        let audit =
            AuditLog::with_observer(history.clone(), config.audit.clone(), Arc::new(metrics.clone()))?;
        match audit.prepare_chain().await {
            Ok(()) => {}
            // Unreachable now: the first append seals it, and a server
            // without the key is refused there.
            Err(error @ (audit::AuditError::Store(_) | audit::AuditError::TimedOut(_))) => {
                tracing::warn!(%error, "cannot check the audit chain's key at start")
            }
            Err(refused) => return Err(refused.into()),
        }
        let audit_maintenance = CancellationToken::new();
        let audit_task = audit::maintenance::spawn(Arc::clone(&audit), audit_maintenance.clone());
        // Insights: the slow-query log and its retention.
        let slow_log = SlowQueryLog::new(history.clone(), config.insights.clone());
        let slow_log_retention = Arc::clone(&slow_log).spawn_retention(audit_maintenance.clone());

        let registry = Arc::new(Registry::new(&config));
        let reloadable = Arc::clone(&registry);
        let rotatable_history = history.clone();
        metrics.watch_fleet(Arc::clone(&registry), config.insights.alerts.clone())?;
        let shared_config = Arc::new(config.clone());
        let monitor = HealthMonitor::spawn(Arc::clone(&registry), config.health.clone());
        // Atomic executions' prepared transactions left behind: at start,
        // then every interval (one runner across servers: advisory lock).
        let atomic_recovery = pgfleet_engine::atomic_recovery::spawn(
            Arc::clone(&registry),
            history.clone(),
            config.atomic.recovery_interval,
            Arc::new(metrics.clone()),
            audit_maintenance.clone(),
        );

        // Fired at shutdown before the calls drain: runs (on demand and
        // scheduled) stop at their next batch boundary, so the drain ends.
        let replication_shutdown = CancellationToken::new();
        let jobs = JobStore::new(history.clone());
        let runner = Arc::new(JobRunner::new(
            Arc::clone(&registry),
            RunStore::new(history.clone()),
            Arc::clone(&audit),
            Arc::clone(&shared_config),
            replication_shutdown.clone(),
            Arc::new(metrics.clone()),
        ));
        if !config.replication.jobs.is_empty() {
            tokio::spawn(replication::declared::apply_all(
                config.replication.jobs.clone(),
                jobs.clone(),
                RunStore::new(history.clone()),
                Arc::clone(&registry),
                config.query.default_timeout,
                replication_shutdown.clone(),
            ));
        }
        let scheduler = config.replication.scheduler.then(|| {
            replication::scheduler::spawn(
                Arc::clone(&runner),
                jobs.clone(),
                config.replication.clone(),
                replication_shutdown.clone(),
            )
        });

        // Backups (BackupService, its scheduler): stopped with the replication runs.
        let backups = Arc::new(pgfleet_backup::run::Backups::new(
            Arc::clone(&registry),
            Arc::clone(&audit),
            history.clone(),
            &config.backup,
            Arc::new(metrics.clone()),
        )?);
        let backup_scheduler = config.backup.scheduler.then(|| {
            pgfleet_backup::scheduler::spawn(
                Arc::clone(&backups),
                history.clone(),
                config.backup.scheduler_tick,
                replication_shutdown.clone(),
            )
        });

        let listen_addr = config.server.listen_addr;
        let listener = TcpListener::bind(listen_addr)
            .await
            .map_err(|source| ServeError::Bind {
                addr: listen_addr,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| ServeError::Bind {
            addr: listen_addr,
            source,
        })?;
        let console_listener = match config.server.console_addr {
            Some(console_addr) => {
                Some(
                    TcpListener::bind(console_addr)
                        .await
                        .map_err(|source| ServeError::Bind {
                            addr: console_addr,
                            source,
                        })?,
                )
            }
            None => None,
        };
        let console_addr = console_listener
            .as_ref()
            .map(TcpListener::local_addr)
            .transpose()
            .map_err(|source| ServeError::Bind {
                addr: config.server.console_addr.unwrap_or(listen_addr),
                source,
            })?;
        // Per-service health from the stores every call needs; the overall
        // status ("") is liveness and stays SERVING until shutdown.
        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        let (dependency_watcher, readiness) = DependencyWatcher::start(
            Dependencies {
                history: history.clone(),
                redis: redis_pool.clone(),
                reporter: health_reporter.clone(),
                metrics: metrics.clone(),
            },
            &config.health,
        )
        .await;
        let metrics_listener = match config.server.metrics_addr {
            Some(metrics_addr) => {
                match MetricsListener::start(metrics_addr, metrics.clone(), readiness.clone()).await {
                    Ok(listener) => Some(listener),
                    Err(source) => {
                        // Not left checking for a server that never ran.
                        dependency_watcher.stop().await;
                        return Err(ServeError::Bind {
                            addr: metrics_addr,
                            source,
                        });
                    }
                }
            }
            None => None,
        };
        let metrics_addr = metrics_listener.as_ref().map(MetricsListener::local_addr);

        let limit = MessageLimit::of(&config.server);
        let expensive_limiter = ExpensiveCallLimiter::new(
            &config.rate_limits,
            redis_pool.clone().zip(config.redis.as_ref()),
            readiness,
            metrics.clone(),
        );

        // grpcurl and older clients still ask v1alpha; serve both, each
        // listing the other so either one shows the whole server.
        let reflection_v1 =
            reflection_builder(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET).build_v1()?;
        let reflection_v1alpha =
            reflection_builder(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET).build_v1alpha()?;

        let shutdown = CancellationToken::new();
        let grace = config.server.shutdown_grace;
        // Spans, request ids and metrics of every call, refused ones too;
        // inside grpc-web so they see plain gRPC trailers. Then
        // authentication, the per-identity query rate limit and the limits
        // on expensive calls (they need the identity).
        let call_layers = tower::ServiceBuilder::new()
            .layer(RpcLayer::new(metrics.clone()))
            .layer(AuthLayer::new(Arc::clone(&authenticator), metrics.clone()))
            .layer(QueryRateLimitLayer::new(config.query.rate_limit.as_ref()))
            .layer(ExpensiveCallLimitLayer::new(expensive_limiter))
            // Innermost, so metrics and spans see the corrected code.
            .layer(tower::util::MapResponseLayer::new(
                crate::status::correct_framing_status,
            ));
        // One set of services, served on the gRPC port and, when configured,
        // on the console's (same layers, same state, same limits).
        let mut routes = tonic::service::RoutesBuilder::default();
        routes
            .add_service(crate::sized!(health_service, limit))
            .add_service(crate::sized!(reflection_v1, limit))
            .add_service(crate::sized!(reflection_v1alpha, limit))
            .add_service(crate::sized!(
                AuthServiceServer::new(AuthService::new(
                    authenticator,
                    Arc::clone(&registry),
                    metrics.clone(),
                )),
                limit
            ))
            .add_service(crate::sized!(
                QueryServiceServer::new(QueryService::new(
                    Arc::clone(&registry),
                    Arc::clone(&shared_config),
                    Arc::clone(&audit),
                    metrics.clone(),
                    Arc::clone(&slow_log),
                )),
                limit
            ))
            .add_service(crate::sized!(
                InsightsServiceServer::new(InsightsService::new(
                    Arc::clone(&registry),
                    history.clone(),
                    Arc::clone(&audit),
                    slow_log,
                    config.query.max_query_bytes,
                )),
                limit
            ))
            .add_service(crate::sized!(
                HistoryServiceServer::new(HistoryService::new(
                    Arc::clone(&audit),
                    config.response_budget_bytes(),
                )),
                limit
            ))
            .add_service(crate::sized!(
                ReplicationServiceServer::new(ReplicationService::new(
                    Arc::clone(&registry),
                    jobs,
                    runner,
                    Arc::clone(&shared_config),
                    Arc::clone(&audit),
                )),
                limit
            ))
            .add_service(crate::sized!(
                FleetServiceServer::new(FleetService::new(
                    Arc::clone(&registry),
                    Arc::clone(&shared_config),
                    Arc::clone(&audit),
                )),
                limit
            ))
            .add_service(crate::sized!(
                MigrationServiceServer::new(MigrationService::new(Migrations::new(
                    Arc::clone(&registry),
                    Arc::clone(&shared_config),
                    Arc::clone(&audit),
                ))),
                limit
            ))
            .add_service(crate::sized!(
                BackupServiceServer::new(crate::services::BackupService::new(
                    Arc::clone(&backups),
                    replication_shutdown.clone(),
                )),
                limit
            ));
        let routes = routes.routes();
        // Layers run outside in: client address; browsers (CORS answers
        // preflights, which carry no credentials, before the auth gate;
        // grpc-web calls become plain gRPC before it, so the gate authorizes
        // them like any other call); authentication; then the per-identity
        // query rate limit and the limits on expensive calls (they need the
        // identity).
        let router = edge::transport::builder(&config.server)
            .accept_http1(browser.accept_http1())
            .layer(ClientAddressLayer::new(&config.server.trusted_proxies))
            .layer(browser.cors())
            .layer(browser.grpc_web())
            .layer(call_layers.clone())
            .add_routes(routes.clone());
        // The console's page and files first (never past the gate: they hold
        // no data and the login page needs none), then its calls, always
        // grpc-web, from its own origin (no CORS).
        let console_router = console_listener.map(|listener| {
            let router = edge::transport::builder(&config.server)
                .accept_http1(true)
                .layer(ConsoleAssetsLayer)
                .layer(ClientAddressLayer::new(&config.server.trusted_proxies))
                .layer(tonic_web::GrpcWebLayer::new())
                .layer(call_layers)
                .add_routes(routes);
            (edge::transport::tcp_incoming(listener, &config.server), router)
        });
        let incoming = edge::transport::tcp_incoming(listener, &config.server);

        let stop = shutdown.clone();
        let task = tokio::spawn(async move {
            let stop_accepting = {
                let stop = stop.clone();
                let reporter = health_reporter.clone();
                let replication_shutdown = replication_shutdown.clone();
                let drain = dependency_watcher.drain_signal();
                async move {
                    stop.cancelled().await;
                    replication_shutdown.cancel();
                    // Load balancers see NOT_SERVING (and /readyz 503) while
                    // in-flight calls drain.
                    drain.draining();
                    reporter
                        .set_service_status("", tonic_health::ServingStatus::NotServing)
                        .await;
                }
            };
            // With TLS only TLS is served; tonic keeps its own connect-info
            // types either way (`Request::remote_addr` works on both).
            // The console's port speaks TLS too when the gRPC port does.
            let console: Serving = match (console_router, &tls) {
                (Some((console_incoming, console_router)), Some(tls)) => {
                    Box::pin(console_router.serve_with_incoming_shutdown(
                        edge::tls::incoming(console_incoming, Arc::clone(tls)),
                        stop.clone().cancelled_owned(),
                    ))
                }
                (Some((console_incoming, console_router)), None) => Box::pin(
                    console_router
                        .serve_with_incoming_shutdown(console_incoming, stop.clone().cancelled_owned()),
                ),
                (None, _) => Box::pin(std::future::ready(Ok(()))),
            };
            let grpc: Serving = match tls {
                Some(tls) => Box::pin(
                    router.serve_with_incoming_shutdown(edge::tls::incoming(incoming, tls), stop_accepting),
                ),
                None => Box::pin(router.serve_with_incoming_shutdown(incoming, stop_accepting)),
            };
            let serving = async move {
                let (grpc, console) = tokio::join!(grpc, console);
                grpc.and(console)
            };
            tokio::pin!(serving);
            let result = tokio::select! {
                result = &mut serving => result.map_err(ServeError::from),
                () = async {
                    stop.cancelled().await;
                    tokio::time::sleep(grace).await;
                } => {
                    tracing::warn!(grace = ?grace, "in-flight calls still running after the shutdown grace period; closing");
                    Ok(())
                }
            };
            replication_shutdown.cancel();
            if let Some(scheduler) = scheduler {
                // Its runs stop at their next batch boundary; bounded like
                // the calls, so a stuck target cannot hold the exit.
                if tokio::time::timeout(grace, scheduler).await.is_err() {
                    tracing::warn!("scheduled replication runs still going after the grace period; closing");
                }
            }
            if let Some(scheduler) = backup_scheduler
                && tokio::time::timeout(grace, scheduler).await.is_err()
            {
                tracing::warn!("scheduled backups still going after the grace period; closing");
            }
            monitor.stop().await;
            dependency_watcher.stop().await;
            // After the calls drained: the records they opened are closed,
            // so the lease can go.
            audit_maintenance.cancel();
            if let Err(error) = audit_task.await {
                tracing::warn!(%error, "audit maintenance task failed");
            }
            let _ = slow_log_retention.await;
            let _ = atomic_recovery.await;
            close_pools(&registry, &history).await;
            // Last: the final scrape sees the drained server.
            if let Some(metrics_listener) = metrics_listener {
                metrics_listener.stop().await;
            }
            tracing::info!("pgfleet stopped");
            result
        });
        tracing::info!(%addr, console = ?console_addr, tls = config.server.tls.is_some(), "pgfleet listening");
        Ok(Self {
            addr,
            metrics_addr,
            console_addr,
            shutdown,
            task,
            registry: reloadable,
            history_password: Mutex::new(started_with.history.password.clone()),
            started_with,
            history: rotatable_history,
        })
    }

    /// Applies the database list (`[[clouds]]`) of a newly loaded
    /// configuration: added clouds and databases are served at once, removed
    /// ones refuse new requests while queries already running on them
    /// finish. A changed password (a rotated `password_file`) replaces the
    /// target's pools like any other change to it, and the history store's
    /// password is used by its new connections. Other settings need a
    /// restart; a reload that changes them says so in the log and leaves
    /// them as they were.
    pub fn reload(&self, loaded: &LoadedConfig) -> Reloaded {
        if settings_besides_clouds(&loaded.config) != settings_besides_clouds(&self.started_with) {
            tracing::warn!(
                config = %loaded.path.display(),
                "only the database list ([[clouds]]) and passwords are reloaded; restart pgfleet to apply the other changes"
            );
        }
        self.rotate_history_password(&loaded.config.history.password);
        let reloaded = self.registry.reload(&loaded.config);
        let names = |targets: &[Target]| {
            targets
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        tracing::info!(
            config = %loaded.path.display(),
            added = %names(&reloaded.added),
            removed = %names(&reloaded.removed),
            changed = %names(&reloaded.changed),
            "database list reloaded"
        );
        reloaded
    }

    /// Makes the history store's new connections log in with `password`
    /// (its connections already open stay as they are); only the password,
    /// since pointing the audit trail elsewhere needs a restart.
    fn rotate_history_password(&self, password: &Secret) {
        let mut current = self
            .history_password
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if *current == *password {
            return;
        }
        let mut connection = self.started_with.history.connection();
        connection.password = password.clone();
        self.history.set_connect_options(connect_options(&connection));
        *current = password.clone();
        tracing::info!("history store password changed: new connections use the new one");
    }

    /// Serves until `stop` resolves, reloading the database list from
    /// `config_path` on every SIGHUP. A file that does not load (syntax,
    /// validation, a missing variable) is reported and changes nothing.
    pub async fn run_with_reload(
        self,
        config_path: &std::path::Path,
        stop: impl Future<Output = ()>,
    ) -> Result<(), ServeError> {
        tokio::pin!(stop);
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            match signal(SignalKind::hangup()) {
                Ok(mut hangups) => loop {
                    tokio::select! {
                        () = &mut stop => break,
                        _ = hangups.recv() => match pgfleet_config::load(config_path) {
                            Ok(loaded) => {
                                self.reload(&loaded);
                            }
                            Err(error) => tracing::error!(
                                config = %config_path.display(),
                                %error,
                                "SIGHUP: the configuration does not load; the database list is unchanged"
                            ),
                        },
                    }
                },
                Err(error) => {
                    tracing::warn!(%error, "cannot listen for SIGHUP; the database list will not be reloaded");
                    stop.await;
                }
            }
        }
        #[cfg(not(unix))]
        stop.await;
        tracing::info!("shutdown requested");
        self.shutdown().await
    }

    /// The address the gRPC listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address the web console is served on, when `server.console_addr` is set.
    pub fn console_addr(&self) -> Option<SocketAddr> {
        self.console_addr
    }

    /// The address `/metrics` is served on, when `server.metrics_addr` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Stops accepting, lets in-flight calls finish within the grace period,
    /// then closes every pool.
    pub async fn shutdown(self) -> Result<(), ServeError> {
        self.shutdown.cancel();
        self.task.await?
    }

    /// Runs until `signal` resolves, then shuts down gracefully.
    pub async fn run_until(self, signal: impl Future<Output = ()>) -> Result<(), ServeError> {
        signal.await;
        tracing::info!("shutdown requested");
        self.shutdown().await
    }
}

fn reflection_builder(other_reflection_version: &'static [u8]) -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pgfleet_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        // The `google.rpc` error details (`BadRequest`, `RetryInfo`) that
        // statuses carry: without them a reflection client such as grpcurl
        // cannot decode a status's details and shows raw bytes.
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(other_reflection_version)
}

async fn close_pools(registry: &Registry, history: &PgPool) {
    // Bounded: a connection stuck in a dead network must not hold the exit.
    let closing = async {
        registry.close().await;
        history.close().await;
    };
    if tokio::time::timeout(Duration::from_secs(5), closing)
        .await
        .is_err()
    {
        tracing::warn!("pools did not close within 5s");
    }
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let interrupt = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
}

/// Everything but the database list, to compare two configurations.
fn settings_besides_clouds(config: &FleetConfig) -> serde_json::Value {
    let mut value = serde_json::to_value(config).unwrap_or_default();
    if let Some(settings) = value.as_object_mut() {
        settings.remove("clouds");
    }
    value
}

/// Loads nothing, starts nothing: the config a server would start with,
/// for `check-config`.
pub fn describe(loaded: &LoadedConfig) -> String {
    pgfleet_config::render_redacted(&loaded.config)
}
