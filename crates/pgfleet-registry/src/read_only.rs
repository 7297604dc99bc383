//! Bounded transactions for pgfleet's own work on a target (catalog reads,
//! replication batches): every statement in them stops after a timeout; and
//! the session reset a connection needs before it goes back to its pool.

use std::time::Duration;

use sqlx::{Connection as _, PgConnection, Postgres, Row as _, Transaction};

use crate::error::RegistryError;
use crate::pools::{Registry, STATEMENT_CACHE_CAPACITY};
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

/// What `DISCARD ALL` resets except `DEALLOCATE ALL`, in one simple-query
/// message (one round trip), then whether a transaction was already open
/// before it and the session's prepared statements: those of a caller's
/// `PREPARE`, and those of the protocol (sqlx's).
///
/// `RESET ALL` leaves the role alone (`role` is not reset by it), hence
/// `SET SESSION AUTHORIZATION DEFAULT` and `RESET ROLE` first. In the
/// implicit transaction of this message `now()` is the time the message
/// arrived, which is `statement_timestamp()`; an older `now()` means a
/// transaction was left open and these statements ran inside it.
macro_rules! reset_session_sql {
    () => {
        "CLOSE ALL; UNLISTEN *; SET SESSION AUTHORIZATION DEFAULT; RESET ROLE; \
     RESET ALL; SELECT pg_catalog.pg_advisory_unlock_all(); DISCARD TEMP; DISCARD SEQUENCES; \
     DISCARD PLANS; \
     SELECT pg_catalog.now() = pg_catalog.statement_timestamp(), \
     (SELECT count(*) FROM pg_catalog.pg_prepared_statements WHERE from_sql), \
     (SELECT count(*) FROM pg_catalog.pg_prepared_statements WHERE NOT from_sql)"
    };
}
const RESET_SESSION: &str = reset_session_sql!();
/// [`RESET_SESSION`] after the `COMMIT` of a read-only transaction: one
/// round trip for both.
const COMMIT_AND_RESET_SESSION: &str = concat!("COMMIT; ", reset_session_sql!());

/// Resets a session for the next caller of its pool like [`discard_session`]
/// in one round trip, keeping the statements sqlx prepared before the call
/// (`cached_before`: [`sqlx::Connection::cached_statements_size`] at
/// checkout). pgfleet's own statements are fixed texts of a fixed shape;
/// when the call prepared any statement under a name (a caller's text, a
/// description of a cursor), sqlx's statements are all closed first, so
/// nothing of a caller's statement outlives the call. A caller's `PREPARE`
/// (or `DEALLOCATE` of sqlx's statements) ends with `DEALLOCATE ALL` and an
/// empty cache. False when the connection must not be reused (a
/// transaction was still open, or a statement failed).
///
/// With `commit_read_only`, the open transaction is first committed in the
/// same message: only for a `READ ONLY` transaction, whose `COMMIT` has
/// nothing to make durable and cannot fail but with the connection (which
/// is then not reused), so nobody needs its answer apart.
pub async fn reset_session(
    connection: &mut PgConnection,
    cached_before: usize,
    commit_read_only: bool,
) -> bool {
    let cached = connection.cached_statements_size();
    // The cache grows on each insert and evicts only when full: the same
    // size below capacity means nothing was prepared under a name.
    let prepared_in_call = cached != cached_before || cached >= STATEMENT_CACHE_CAPACITY;
    if prepared_in_call && connection.clear_cached_statements().await.is_err() {
        return false;
    }
    let reset = if commit_read_only {
        COMMIT_AND_RESET_SESSION
    } else {
        RESET_SESSION
    };
    let rows = match sqlx::raw_sql(reset).fetch_all(&mut *connection).await {
        Ok(rows) => rows,
        Err(_) => return false,
    };
    let Some(row) = rows.last() else {
        return false;
    };
    let (Ok(outside_transaction), Ok(from_sql), Ok(protocol)) = (
        row.try_get::<bool, _>(0),
        row.try_get::<i64, _>(1),
        row.try_get::<i64, _>(2),
    ) else {
        return false;
    };
    if !outside_transaction {
        return false;
    }
    if from_sql == 0 && usize::try_from(protocol).ok() == Some(connection.cached_statements_size()) {
        return true;
    }
    connection.clear_cached_statements().await.is_ok()
        && sqlx::raw_sql("DEALLOCATE ALL")
            .execute(&mut *connection)
            .await
            .is_ok()
}
