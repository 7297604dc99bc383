//! pgfleet's own database: its pool and its migrations.

use std::time::Duration;

use pgfleet_config::HistoryStoreConfig;
use pgfleet_registry::{connect_options, pool_options};
use sqlx::PgPool;
use sqlx::migrate::Migrator;

/// The migrations in `migrations/`, embedded in the binary.
pub static MIGRATOR: Migrator = sqlx::migrate!("../../migrations");

/// Why the history store could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum HistoryStoreError {
    /// Not reachable within the wait.
    #[error("history store {host}:{port}/{database} is unreachable: {source}")]
    Unreachable {
        host: String,
        port: u16,
        database: String,
        #[source]
        source: sqlx::Error,
    },
    /// A migration failed; the store is left as the failed migration's
    /// transaction left it (rolled back).
    #[error("history store migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// A lazy pool on the history store; connects on first use.
pub fn pool(config: &HistoryStoreConfig) -> PgPool {
    pool_options(&config.pool).connect_lazy_with(connect_options(&config.connection()))
}

/// Applies pending migrations. Concurrent replicas are serialized by sqlx's
/// advisory lock, so every replica may call this at start.
pub async fn migrate(
    pool: &PgPool,
    config: &HistoryStoreConfig,
    wait: Duration,
) -> Result<(), HistoryStoreError> {
    let unreachable = |source| HistoryStoreError::Unreachable {
        host: config.host.clone(),
        port: config.port,
        database: config.database.clone(),
        source,
    };
    let mut connection = tokio::time::timeout(wait, pool.acquire())
        .await
        .map_err(|_| unreachable(sqlx::Error::PoolTimedOut))?
        .map_err(unreachable)?;
    MIGRATOR.run(&mut *connection).await?;
    Ok(())
}
