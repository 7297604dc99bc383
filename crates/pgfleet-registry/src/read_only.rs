//! Bounded transactions for pgfleet's own work on a target (catalog reads,
//! replication batches): every statement in them stops after a timeout; and
//! the session reset a connection needs before it goes back to its pool.

use std::time::Duration;

use sqlx::{Connection as _, PgConnection, Postgres, Transaction};

use crate::error::RegistryError;
use crate::pools::Registry;
use crate::target::{Route, Target};

/// Why [`Registry::read_only`] has no answer.
#[derive(Debug, thiserror::Error)]
pub enum ReadOnlyError {
    /// No connection to the target.
    #[error(transparent)]
    Acquire(#[from] RegistryError),
    /// The transaction or a statement in it failed.
    #[error(transparent)]
    Query(sqlx::Error),
}

impl Registry {
    /// Runs `work` in a `READ ONLY` transaction on a connection to `target`
    /// (chosen by `route`) whose statements stop after `statement_timeout`,
    /// and commits. After any failure the connection is closed instead of
    /// going back to its pool: its state is unknown.
    pub async fn read_only<T>(
        &self,
        target: &Target,
        route: Route,
        statement_timeout: Duration,
        work: impl AsyncFnOnce(&mut PgConnection) -> Result<T, sqlx::Error>,
    ) -> Result<T, ReadOnlyError> {
        let mut checkout = self.acquire(target, route).await?;
        let result = async {
            let mut transaction = begin_read_only(checkout.connection_mut(), statement_timeout).await?;
            let value = work(&mut transaction).await?;
            transaction.commit().await?;
            Ok(value)
        }
        .await;
        if result.is_err() {
            checkout.connection.close_on_drop();
        }
        result.map_err(ReadOnlyError::Query)
    }
}

/// Begins a transaction with `begin` (e.g. `"BEGIN"`, `"BEGIN READ ONLY"`)
/// whose statements stop after `statement_timeout`, so a slow or locked
/// target cannot hold the caller (and a pooled connection) forever.
pub async fn begin_bounded<'c>(
    connection: &'c mut PgConnection,
    begin: &'static str,
    statement_timeout: Duration,
) -> Result<Transaction<'c, Postgres>, sqlx::Error> {
    let mut transaction = connection.begin_with(begin).await?;
    sqlx::query("SELECT pg_catalog.set_config('statement_timeout', $1, true)")
        .bind(statement_timeout_setting(statement_timeout))
        .execute(&mut *transaction)
        .await?;
    Ok(transaction)
}

/// [`begin_bounded`] with `BEGIN READ ONLY`.
pub async fn begin_read_only(
    connection: &mut PgConnection,
    statement_timeout: Duration,
) -> Result<Transaction<'_, Postgres>, sqlx::Error> {
    begin_bounded(connection, "BEGIN READ ONLY", statement_timeout).await
}

/// The `statement_timeout` setting for `timeout` (whole milliseconds, at
/// least 1: 0 would mean no timeout at all).
pub fn statement_timeout_setting(timeout: Duration) -> String {
    format!("{}ms", timeout.as_millis().max(1))
}

/// Resets a session for the next caller of its pool (`DISCARD ALL`: settings,
/// prepared statements, temporary tables, advisory locks, LISTEN, cursors).
/// False when the connection must not be reused.
pub async fn discard_session(connection: &mut PgConnection) -> bool {
    // sqlx caches prepared statements by text; DISCARD ALL drops them on the
    // server, so the cache must go first or the next caller gets errors.
    if connection.clear_cached_statements().await.is_err() {
        return false;
    }
    sqlx::raw_sql("DISCARD ALL")
        .execute(&mut *connection)
        .await
        .is_ok()
}
