//! Writes follow the primary: a cloud whose configured primary is stopped
//! and whose streaming replica (made with `pg_basebackup`) is promoted
//! takes the next write on the promoted replica; while no member is
//! writable, writes fail UNAVAILABLE naming the target and nothing lands on
//! the standby.

use std::time::Duration;

use pgfleet_proto::pgfleet::v1 as pb;
use pgfleet_proto::pgfleet::v1::fleet_service_client::FleetServiceClient;
use pgfleet_proto::pgfleet::v1::query_service_client::QueryServiceClient;
use pgfleet_testkit::{PgCluster, TestDatabase, wait_until};

use sqlx::Connection as _;

use crate::support::{Session, bearer, session};

fn insert(id: i32) -> pb::ExecuteRequest {
    pb::ExecuteRequest {
        query: format!("INSERT INTO events VALUES ({id})"),
        database: "app".to_owned(),
        scope: Some(pb::execute_request::Scope::Cloud("onprem".to_owned())),
        ..Default::default()
    }
}

async fn write(s: &Session, id: i32) -> anyhow::Result<pb::TargetResult> {
    let response = QueryServiceClient::new(s.channel.clone())
        .execute(bearer(insert(id), &s.user))
        .await?
        .into_inner();
    response
        .results
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("no target result"))
}

/// The role GetHealth reports for the onprem member named `replica`
/// (empty: the configured primary).
async fn role(s: &Session, replica: &str) -> anyhow::Result<pb::ServerRole> {
    let health = FleetServiceClient::new(s.channel.clone())
        .get_health(bearer(
            pb::GetHealthRequest {
                cloud: "onprem".to_owned(),
                database: "app".to_owned(),
            },
            &s.master,
        ))
        .await?
        .into_inner();
    let member = health
        .targets
        .iter()
        .find(|target| target.replica == replica)
        .ok_or_else(|| anyhow::anyhow!("no member {replica:?} in {health:?}"))?;
    Ok(member.role())
}

async fn rows_on(cluster: &PgCluster, database: &str) -> anyhow::Result<Vec<i32>> {
    let mut connection = sqlx::PgConnection::connect(&cluster.database_url(database)).await?;
    Ok(sqlx::query_scalar("SELECT id FROM events ORDER BY id")
        .fetch_all(&mut connection)
        .await?)
}

#[tokio::test(flavor = "multi_thread")]
async fn writes_follow_a_promoted_replica() -> anyhow::Result<()> {
    let primary = PgCluster::start().await?;
    let database = TestDatabase::create_on(&primary.admin_url(), "failover").await?;
    sqlx::raw_sql("CREATE TABLE events (id int PRIMARY KEY)")
        .execute(&database.pool().await?)
        .await?;
    let standby = PgCluster::start_replica_of(&primary).await?;
    standby.wait_for_replay().await?;
    let extra = format!(
        "[[clouds]]\nname = 'onprem'\n[[clouds.databases]]\nname = 'app'\nhost = '127.0.0.1'\nport = {}\n\
         user = '{}'\ndatabase = '{}'\nsslmode = 'disable'\nschemas = ['public']\n\
         pool = {{ acquire_timeout = '2s' }}\n\
         [[clouds.databases.replicas]]\nname = 'standby'\nhost = '127.0.0.1'\nport = {}\n\
         [health]\ninterval = '200ms'\nprobe_timeout = '1s'\n\
         [retry]\nmax_elapsed = '1s'\n",
        primary.port(),
        database.user(),
        database.name(),
        standby.port(),
    );
    let s = session(&extra).await?;

    let first = write(&s, 1).await?;
    assert!(first.success, "{first:?}");
    assert_eq!(first.replica, "", "written on the configured primary");
    wait_until(Duration::from_secs(10), Duration::from_millis(100), async || {
        matches!(
            (role(&s, "").await, role(&s, "standby").await),
            (Ok(pb::ServerRole::Primary), Ok(pb::ServerRole::Standby))
        )
    })
    .await?;

    // The primary is gone and nobody promoted the standby yet: no member
    // takes writes, and the standby never gets one.
    primary.stop().await?;
    let refused = write(&s, 2).await?;
    assert!(!refused.success, "{refused:?}");
    let error = refused.error.clone().unwrap_or_default();
    assert_eq!(error.code(), pb::ErrorCode::Unavailable, "{error:?}");
    assert!(error.message.contains("onprem/app"), "{error:?}");

    // The cloud's failover promotes the standby: the next write goes there.
    standby.promote().await?;
    let moved = write(&s, 3).await?;
    assert!(moved.success, "{moved:?}");
    assert_eq!(moved.replica, "standby", "written on the promoted replica");
    assert_eq!(rows_on(&standby, database.name()).await?, [1, 3]);
    wait_until(Duration::from_secs(10), Duration::from_millis(100), async || {
        matches!(role(&s, "standby").await, Ok(pb::ServerRole::Primary))
    })
    .await?;
    s.server.shutdown().await?;
    Ok(())
}
