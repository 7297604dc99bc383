//! What a command-line subcommand that writes audit records runs inside:
//! the history store migrated, the audit chain ready, a writer lease like a
//! server's (so its open records are not taken for a dead server's while it
//! runs) and the registry; all closed in order whatever the command returned.
//! `pgfleet backup …` and `pgfleet migrations …` use it.

use std::sync::Arc;
use std::time::Duration;

use pgfleet_config::FleetConfig;
use pgfleet_engine::audit::{self, AuditLog};
use pgfleet_engine::history_store;
use pgfleet_registry::Registry;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::app::ServeError;

/// How long a command waits for the history store at start.
const STORE_WAIT: Duration = Duration::from_secs(30);

/// What the command is given.
pub struct AuditedCommand {
    pub history: PgPool,
    pub audit: Arc<AuditLog>,
    pub registry: Arc<Registry>,
    /// `$USER`, for the command's system actor (`cli:<user>`).
    pub user: String,
}

/// Runs `command` with the history store, the audit log and the registry of
/// `config`, then stops the lease and closes the pools.
pub async fn run<T>(
    config: &FleetConfig,
    command: impl AsyncFnOnce(&AuditedCommand) -> Result<T, ServeError>,
) -> Result<T, ServeError> {
    let history = history_store::pool(&config.history);
    let result = async {
        history_store::migrate(&history, &config.history, STORE_WAIT).await?;
        let audit = AuditLog::new(history.clone(), config.audit.clone())?;
        audit.prepare_chain().await?;
        let stop = CancellationToken::new();
        let lease = audit::maintenance::spawn(Arc::clone(&audit), stop.clone());
        let context = AuditedCommand {
            history: history.clone(),
            audit,
            registry: Arc::new(Registry::new(config)),
            user: std::env::var("USER").unwrap_or_else(|_| "unknown".to_owned()),
        };
        let outcome = command(&context).await;
        stop.cancel();
        if let Err(error) = lease.await {
            tracing::warn!(%error, "audit lease task failed");
        }
        context.registry.close().await;
        outcome
    }
    .await;
    history.close().await;
    result
}
