//! Assembling and running the server: pools, health, gRPC services,
//! graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use pgfleet_config::LoadedConfig;
use pgfleet_proto::pgfleet::v1::auth_service_server::AuthServiceServer;
use pgfleet_proto::pgfleet::v1::fleet_service_server::FleetServiceServer;
use pgfleet_proto::pgfleet::v1::history_service_server::HistoryServiceServer;
use pgfleet_proto::pgfleet::v1::query_service_server::QueryServiceServer;
use pgfleet_proto::pgfleet::v1::replication_service_server::ReplicationServiceServer;
use pgfleet_registry::{HealthMonitor, Registry};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;

use crate::audit::{self, AuditLog};
use crate::auth::gate::AuthLayer;
use crate::auth::{AuthError, Authenticator, SessionStore, SessionStoreError};
use crate::history_store::{self, HistoryStoreError};
use crate::replication::{self, jobs::JobStore, runner::JobRunner, state::RunStore};
use crate::services::{AuthService, FleetService, HistoryService, QueryService, ReplicationService};
use crate::telemetry::Metrics;
use crate::telemetry::exposition::MetricsListener;
use crate::telemetry::rpc::RpcLayer;

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
    #[error("server task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("cannot define the metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// A started server. Dropping it does not stop it; call [`RunningServer::shutdown`].
pub struct RunningServer {
    addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), ServeError>>,
}

impl RunningServer {
    /// Binds `server.listen_addr` (port 0 picks a free one), applies
    /// migrations when configured, and starts serving in the background.
    pub async fn start(loaded: LoadedConfig) -> Result<Self, ServeError> {
        let config = loaded.config;
        let history = history_store::pool(&config.history);
        if config.server.run_migrations {
            history_store::migrate(&history, &config.history, STARTUP_STORE_WAIT).await?;
        }

        let sessions = match &config.redis {
            Some(redis) => SessionStore::redis(redis)?,
            None => {
                tracing::warn!(
                    "no [redis] configured: sessions live in this process only; \
                     run a single replica, and expect logins to end when it restarts"
                );
                SessionStore::memory()
            }
        };
        let authenticator = Authenticator::new(history.clone(), sessions, config.auth.clone()).await?;
        // Observability (issue #7): one set of series per server.
        let metrics = Metrics::new()?;
        let configured_targets: Arc<[(String, String)]> = config
            .clouds
            .iter()
            .flat_map(|cloud| {
                cloud
                    .databases
                    .iter()
                    .map(|db| (cloud.name.clone(), db.name.clone()))
            })
            .collect();

        let audit = AuditLog::with_metrics(history.clone(), config.audit.clone(), metrics.clone());
        let audit_maintenance = CancellationToken::new();
        let audit_task = audit::maintenance::spawn(Arc::clone(&audit), audit_maintenance.clone());

        let registry = Arc::new(Registry::new(&config));
        metrics.watch_fleet(Arc::clone(&registry))?;
        let shared_config = Arc::new(config.clone());
        let monitor = HealthMonitor::spawn(Arc::clone(&registry), config.health.clone());

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
            metrics.clone(),
        ));
        let scheduler = config.replication.scheduler.then(|| {
            replication::scheduler::spawn(
                Arc::clone(&runner),
                jobs.clone(),
                config.replication.clone(),
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
        let metrics_listener = match config.server.metrics_addr {
            Some(metrics_addr) => Some(
                MetricsListener::start(metrics_addr, metrics.clone())
                    .await
                    .map_err(|source| ServeError::Bind {
                        addr: metrics_addr,
                        source,
                    })?,
            ),
            None => None,
        };
        let metrics_addr = metrics_listener.as_ref().map(MetricsListener::local_addr);

        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        health_reporter
            .set_serving::<AuthServiceServer<AuthService>>()
            .await;
        health_reporter
            .set_serving::<QueryServiceServer<QueryService>>()
            .await;
        health_reporter
            .set_serving::<HistoryServiceServer<HistoryService>>()
            .await;
        health_reporter
            .set_serving::<ReplicationServiceServer<ReplicationService>>()
            .await;
        health_reporter
            .set_serving::<FleetServiceServer<FleetService>>()
            .await;

        // grpcurl and older clients still ask v1alpha; serve both, each
        // listing the other so either one shows the whole server.
        let reflection_v1 =
            reflection_builder(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET).build_v1()?;
        let reflection_v1alpha =
            reflection_builder(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET).build_v1alpha()?;

        let shutdown = CancellationToken::new();
        let grace = config.server.shutdown_grace;
        let router = tonic::transport::Server::builder()
            // Outermost: spans, request ids and metrics see refused calls too.
            .layer(RpcLayer::new(metrics.clone()))
            .layer(AuthLayer::new(Arc::clone(&authenticator)))
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(AuthServiceServer::new(AuthService::new(
                authenticator,
                configured_targets,
                metrics.clone(),
            )))
            .add_service(QueryServiceServer::new(QueryService::new(
                Arc::clone(&registry),
                Arc::clone(&shared_config),
                Arc::clone(&audit),
                metrics,
            )))
            .add_service(HistoryServiceServer::new(HistoryService::new(Arc::clone(&audit))))
            .add_service(ReplicationServiceServer::new(ReplicationService::new(
                Arc::clone(&registry),
                jobs,
                runner,
                Arc::clone(&shared_config),
                Arc::clone(&audit),
            )))
            .add_service(FleetServiceServer::new(FleetService::new(
                Arc::clone(&registry),
                Arc::clone(&shared_config),
            )));

        let stop = shutdown.clone();
        let task = tokio::spawn(async move {
            let stop_accepting = {
                let stop = stop.clone();
                let reporter = health_reporter.clone();
                let replication_shutdown = replication_shutdown.clone();
                async move {
                    stop.cancelled().await;
                    replication_shutdown.cancel();
                    // Load balancers see NOT_SERVING while in-flight calls drain.
                    reporter
                        .set_service_status("", tonic_health::ServingStatus::NotServing)
                        .await;
                }
            };
            let serving =
                router.serve_with_incoming_shutdown(TcpListenerStream::new(listener), stop_accepting);
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
            monitor.stop().await;
            // After the calls drained: the records they opened are closed,
            // so the lease can go.
            audit_maintenance.cancel();
            if let Err(error) = audit_task.await {
                tracing::warn!(%error, "audit maintenance task failed");
            }
            close_pools(&registry, &history).await;
            // Last: the final scrape sees the drained server.
            if let Some(metrics_listener) = metrics_listener {
                metrics_listener.stop().await;
            }
            tracing::info!("pgfleet stopped");
            result
        });
        tracing::info!(%addr, "pgfleet listening");
        Ok(Self {
            addr,
            metrics_addr,
            shutdown,
            task,
        })
    }

    /// The address the gRPC listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
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

/// Loads nothing, starts nothing: the config a server would start with,
/// for `check-config`.
pub fn describe(loaded: &LoadedConfig) -> String {
    pgfleet_config::render_redacted(&loaded.config)
}
