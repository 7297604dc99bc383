//! What the fault tests read besides the API: the audit trail as the history
//! store holds it, and the backends PostgreSQL lists for a database. Reading
//! the store directly (not HistoryService) keeps these checks working while
//! the server under test is dead or cut from the store.

use std::time::Duration;

use pgfleet_engine::audit::RecordedOutcome;
use pgfleet_proto::pgfleet::v1 as pb;
use pgfleet_proto::pgfleet::v1::fleet_service_client::FleetServiceClient;
use pgfleet_proto::pgfleet::v1::query_service_client::QueryServiceClient;
use pgfleet_testkit::{TestDatabase, wait_until};
use sqlx::types::Json;
use tonic::transport::Channel;
use uuid::Uuid;

pub fn query(channel: &Channel) -> QueryServiceClient<Channel> {
    QueryServiceClient::new(channel.clone()).max_decoding_message_size(64 * 1024 * 1024)
}

fn scope(cloud: Option<&str>) -> pb::execute_request::Scope {
    match cloud {
        Some(cloud) => pb::execute_request::Scope::Cloud(cloud.to_owned()),
        None => pb::execute_request::Scope::AllClouds(pb::AllClouds {}),
    }
}

/// An Execute of `sql` on `database` in `cloud` (every cloud with `None`).
pub fn execute(cloud: Option<&str>, database: &str, sql: &str) -> pb::ExecuteRequest {
    pb::ExecuteRequest {
        query: sql.to_owned(),
        database: database.to_owned(),
        scope: Some(scope(cloud)),
        ..Default::default()
    }
}

/// [`execute`] as an ExecuteStream request.
pub fn execute_stream(cloud: Option<&str>, database: &str, sql: &str) -> pb::ExecuteStreamRequest {
    let scope = match scope(cloud) {
        pb::execute_request::Scope::Cloud(cloud) => pb::execute_stream_request::Scope::Cloud(cloud),
        _ => pb::execute_stream_request::Scope::AllClouds(pb::AllClouds {}),
    };
    pb::ExecuteStreamRequest {
        query: sql.to_owned(),
        database: database.to_owned(),
        scope: Some(scope),
        ..Default::default()
    }
}

/// The health of `cloud`/`database`'s primary, as GetHealth reports it.
pub async fn target_health(
    s: &crate::support::Session,
    cloud: &str,
    database: &str,
) -> anyhow::Result<pb::TargetHealth> {
    let health = FleetServiceClient::new(s.channel.clone())
        .get_health(crate::support::bearer(
            pb::GetHealthRequest {
                cloud: cloud.to_owned(),
                database: database.to_owned(),
            },
            &s.master,
        ))
        .await?
        .into_inner();
    health
        .targets
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("no health for {cloud}/{database}"))
}

/// A marker to find a statement by in `pg_stat_activity` and in the trail.
pub fn marker(what: &str) -> String {
    format!("{what}-{}", Uuid::new_v4().simple())
}

/// One execution record as stored.
#[derive(Debug, sqlx::FromRow)]
pub struct StoredRecord {
    pub id: Uuid,
    pub kind: String,
    pub status: String,
    pub query: String,
    pub outcomes: Json<Vec<RecordedOutcome>>,
}

impl StoredRecord {
    /// The outcome recorded for `cloud`'s target.
    pub fn outcome(&self, cloud: &str) -> Option<&RecordedOutcome> {
        self.outcomes
            .0
            .iter()
            .find(|outcome| outcome.target.cloud == cloud)
    }
}

/// Every record (queries, replication runs…), oldest first.
pub async fn stored_records(history: &TestDatabase) -> anyhow::Result<Vec<StoredRecord>> {
    let pool = history.pool().await?;
    let records = sqlx::query_as(
        "SELECT id, kind, status, query, outcomes FROM pgfleet.executions ORDER BY started_at",
    )
    .fetch_all(&pool)
    .await?;
    pool.close().await;
    Ok(records)
}

/// The records once none is RUNNING any more (closed by the server,
/// its background retries, or the sweep of a dead server's records).
pub async fn closed_records(history: &TestDatabase, within: Duration) -> anyhow::Result<Vec<StoredRecord>> {
    wait_until(within, Duration::from_millis(200), async || {
        let records = stored_records(history).await?;
        anyhow::Ok(records.iter().all(|record| record.status != "RUNNING"))
    })
    .await?;
    stored_records(history).await
}

/// A pool on the admin login of the shared PostgreSQL (the statistics views
/// of every database).
pub async fn admin() -> anyhow::Result<sqlx::PgPool> {
    Ok(sqlx::PgPool::connect(&pgfleet_testkit::pg_admin_url()).await?)
}

/// The client backends connected to database `name` (`state`, `query`),
/// the caller's own excluded.
pub async fn backends(admin: &sqlx::PgPool, name: &str) -> anyhow::Result<Vec<(String, String)>> {
    Ok(sqlx::query_as(
        "SELECT coalesce(state, ''), query FROM pg_stat_activity \
         WHERE datname = $1 AND backend_type = 'client backend' AND pid <> pg_backend_pid()",
    )
    .bind(name)
    .fetch_all(admin)
    .await?)
}

/// Waits until no backend of database `name` runs a statement or is left
/// inside a transaction (the tests' databases see no other traffic).
pub async fn settle(admin: &sqlx::PgPool, name: &str) -> anyhow::Result<()> {
    wait_until(Duration::from_secs(15), Duration::from_millis(100), async || {
        let backends = backends(admin, name).await?;
        anyhow::Ok(
            !backends
                .iter()
                .any(|(state, _)| state == "active" || state.starts_with("idle in transaction")),
        )
    })
    .await
    .map_err(|error| anyhow::anyhow!("database {name} did not settle: {error}"))
}

/// Waits until a backend of database `name` is running a statement that
/// contains `text`.
pub async fn running(admin: &sqlx::PgPool, name: &str, text: &str) -> anyhow::Result<()> {
    wait_until(Duration::from_secs(15), Duration::from_millis(20), async || {
        let backends = backends(admin, name).await?;
        anyhow::Ok(
            backends
                .iter()
                .any(|(state, query)| state == "active" && query.contains(text)),
        )
    })
    .await
}

/// Waits until no backend of database `name` runs a statement containing
/// `text` (it ended, or was cancelled or timed out on the server).
pub async fn stopped(admin: &sqlx::PgPool, name: &str, text: &str) -> anyhow::Result<()> {
    wait_until(Duration::from_secs(15), Duration::from_millis(100), async || {
        let backends = backends(admin, name).await?;
        anyhow::Ok(
            !backends
                .iter()
                .any(|(state, query)| state == "active" && query.contains(text)),
        )
    })
    .await
    .map_err(|error| anyhow::anyhow!("{text} still runs on {name}: {error}"))
}

/// Transactions of database `name` that rolled back, as the statistics
/// collector has them (backends report when they go idle, within seconds).
pub async fn rollbacks(admin: &sqlx::PgPool, name: &str) -> anyhow::Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT xact_rollback FROM pg_stat_database WHERE datname = $1")
            .bind(name)
            .fetch_one(admin)
            .await?,
    )
}
