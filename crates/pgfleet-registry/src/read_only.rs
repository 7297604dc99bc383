//! A bounded read-only transaction, for pgfleet's own catalog reads on a
//! target (introspection, replication checks).

use std::time::Duration;

use sqlx::{Connection as _, PgConnection, Postgres, Transaction};

/// Begins a `READ ONLY` transaction whose statements stop after
/// `statement_timeout`, so a slow or locked catalog cannot hold the caller
/// (and a pooled connection) forever.
pub async fn begin_read_only(
    connection: &mut PgConnection,
    statement_timeout: Duration,
) -> Result<Transaction<'_, Postgres>, sqlx::Error> {
    let mut transaction = connection.begin_with("BEGIN READ ONLY").await?;
    sqlx::query("SELECT pg_catalog.set_config('statement_timeout', $1, true)")
        .bind(format!("{}ms", statement_timeout.as_millis().max(1)))
        .execute(&mut *transaction)
        .await?;
    Ok(transaction)
}
