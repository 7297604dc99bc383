//! Primaries and standbys on real streaming replicas (`pg_basebackup`):
//! writes follow a promoted replica (UNAVAILABLE naming the target while no
//! member is writable, nothing on the standby), and reads skip a replica
//! whose replay is paused past `max_replica_lag`; PromoteReplica is
//! confirmed, audited, and refused while the old primary still answers.

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
    Ok(member(s, replica).await?.role())
}

/// GetHealth's entry for the onprem member named `replica`.
async fn member(s: &Session, replica: &str) -> anyhow::Result<pb::TargetHealth> {
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
    health
        .targets
        .into_iter()
        .find(|target| target.replica == replica)
        .ok_or_else(|| anyhow::anyhow!("no member {replica:?}"))
}

async fn rows_on(cluster: &PgCluster, database: &str) -> anyhow::Result<Vec<i32>> {
    let mut connection = sqlx::PgConnection::connect(&cluster.database_url(database)).await?;
    Ok(sqlx::query_scalar("SELECT id FROM events ORDER BY id")
        .fetch_all(&mut connection)
        .await?)
}

/// The onprem cloud: `app` on `primary` with `standby` as its replica,
/// `database_settings` added to the database; fast probes and retries.
fn onprem(
    primary: &PgCluster,
    standby: &PgCluster,
    database: &TestDatabase,
    database_settings: &str,
) -> String {
    format!(
        "[[clouds]]\nname = 'onprem'\n[[clouds.databases]]\nname = 'app'\nhost = '127.0.0.1'\nport = {}\n\
         user = '{}'\ndatabase = '{}'\nsslmode = 'disable'\nschemas = ['public']\n\
         pool = {{ acquire_timeout = '2s' }}\n{database_settings}\
         [[clouds.databases.replicas]]\nname = 'standby'\nhost = '127.0.0.1'\nport = {}\n\
         [health]\ninterval = '200ms'\nprobe_timeout = '1s'\n\
         [retry]\nmax_elapsed = '1s'\n",
        primary.port(),
        database.user(),
        database.name(),
        standby.port(),
    )
}

/// A primary with table `events` in a fresh database, and a streaming
/// standby of it that has replayed everything.
async fn replicated() -> anyhow::Result<(PgCluster, PgCluster, TestDatabase)> {
    let primary = PgCluster::start().await?;
    let database = TestDatabase::create_on(&primary.admin_url(), "failover").await?;
    sqlx::raw_sql("CREATE TABLE events (id int PRIMARY KEY)")
        .execute(&database.pool().await?)
        .await?;
    let standby = PgCluster::start_replica_of(&primary).await?;
    standby.wait_for_replay().await?;
    Ok((primary, standby, database))
}

#[tokio::test(flavor = "multi_thread")]
async fn writes_follow_a_promoted_replica() -> anyhow::Result<()> {
    let (primary, standby, database) = replicated().await?;
    let s = session(&onprem(&primary, &standby, &database, "")).await?;

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

/// Which member answered a read of `events` on onprem ("" for the primary).
async fn read_from(s: &Session) -> anyhow::Result<String> {
    Ok(read_result(s).await?.replica)
}

/// The result of a read of `events` on onprem.
async fn read_result(s: &Session) -> anyhow::Result<pb::TargetResult> {
    let response = QueryServiceClient::new(s.channel.clone())
        .execute(bearer(
            pb::ExecuteRequest {
                query: "SELECT count(*) FROM events".to_owned(),
                database: "app".to_owned(),
                scope: Some(pb::execute_request::Scope::Cloud("onprem".to_owned())),
                ..Default::default()
            },
            &s.user,
        ))
        .await?
        .into_inner();
    let result = response
        .results
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("no target result"))?;
    anyhow::ensure!(result.success, "read failed: {result:?}");
    Ok(result)
}

#[tokio::test(flavor = "multi_thread")]
async fn reads_skip_a_replica_behind_max_replica_lag() -> anyhow::Result<()> {
    let (primary, standby, database) = replicated().await?;
    let settings = "read_preference = 'replica'\nmax_replica_lag = '1s'\n";
    let s = session(&onprem(&primary, &standby, &database, settings)).await?;

    // Caught up: reads go to the replica, and health shows it measured.
    wait_until(Duration::from_secs(10), Duration::from_millis(100), async || {
        read_from(&s).await.is_ok_and(|member| member == "standby")
    })
    .await?;
    assert_eq!(read_result(&s).await?.skipped_replicas, [], "nothing skipped");
    let caught_up = member(&s, "standby").await?;
    assert_eq!(caught_up.role(), pb::ServerRole::Standby);
    assert_eq!(
        caught_up.replay_lag.map(|lag| lag.seconds),
        Some(0),
        "{caught_up:?}"
    );
    assert!(caught_up.database_size_bytes.unwrap_or(0) > 0, "{caught_up:?}");

    // A transaction replayed since the standby started, so its lag has a
    // time. Then replay is paused while the primary keeps writing: once the
    // standby is more than a second behind, reads go to the primary.
    let writer = database.pool().await?;
    sqlx::query("INSERT INTO events VALUES (0)")
        .execute(&writer)
        .await?;
    standby.wait_for_replay().await?;
    standby.pause_replay().await?;
    wait_until(Duration::from_secs(20), Duration::from_millis(200), async || {
        let wrote = sqlx::query("INSERT INTO events SELECT coalesce(max(id), 0) + 1 FROM events")
            .execute(&writer)
            .await
            .is_ok();
        let answered = read_result(&s).await?;
        let standby = member(&s, "standby").await?;
        // The result says which replica was passed over, and how far behind.
        let skipped_behind = answered.skipped_replicas.iter().any(|skipped| {
            skipped.name == "standby" && skipped.replay_lag.is_some_and(|lag| lag.seconds >= 1)
        });
        anyhow::ensure!(
            wrote && answered.replica.is_empty() && skipped_behind,
            "read answered by {:?}, skipped {:?}; standby lag {:?}, {} bytes",
            answered.replica,
            answered.skipped_replicas,
            standby.replay_lag,
            standby.replay_lag_bytes
        );
        anyhow::Ok(true)
    })
    .await?;
    let behind = member(&s, "standby").await?;
    assert!(
        behind.replay_lag.is_some_and(|lag| lag.seconds >= 1),
        "{behind:?}"
    );
    assert!(behind.replay_lag_bytes > 0, "{behind:?}");

    // Caught up again: reads come back to the replica.
    standby.resume_replay().await?;
    wait_until(Duration::from_secs(10), Duration::from_millis(100), async || {
        read_from(&s).await.is_ok_and(|member| member == "standby")
    })
    .await?;
    writer.close().await;
    s.server.shutdown().await?;
    Ok(())
}

fn promote(replica: &str, confirm: bool) -> pb::PromoteReplicaRequest {
    pb::PromoteReplicaRequest {
        target: Some(crate::support::target("onprem", "app")),
        replica: replica.to_owned(),
        confirm,
        wait: None,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn promote_replica_is_confirmed_audited_and_never_makes_two_primaries() -> anyhow::Result<()> {
    use tonic::Code;
    let (primary, standby, database) = replicated().await?;
    let s = session(&onprem(&primary, &standby, &database, "")).await?;
    let fleet = FleetServiceClient::new(s.channel.clone());

    let refusals = [
        (
            promote("standby", true),
            s.user.as_str(),
            Code::PermissionDenied,
            "",
        ),
        (
            promote("standby", false),
            s.master.as_str(),
            Code::FailedPrecondition,
            "confirm",
        ),
        (
            promote("nope", true),
            s.master.as_str(),
            Code::NotFound,
            "no replica",
        ),
        // The primary still answers: promoting would make two primaries.
        (
            promote("standby", true),
            s.master.as_str(),
            Code::FailedPrecondition,
            "still answers as a primary",
        ),
    ];
    for (request, token, code, says) in refusals {
        let status = fleet
            .clone()
            .promote_replica(bearer(request, token))
            .await
            .expect_err("refused");
        assert_eq!(status.code(), code, "{}", status.message());
        assert!(status.message().contains(says), "{}", status.message());
    }
    assert!(standby.is_in_recovery().await?, "nothing was promoted");

    primary.stop().await?;
    let promoted = fleet
        .clone()
        .promote_replica(bearer(promote("standby", true), &s.master))
        .await?
        .into_inner();
    assert!(!standby.is_in_recovery().await?, "the standby is the primary now");
    let record = crate::support::recorded(&s, &promoted.execution_id).await?;
    assert_eq!(record.kind(), pb::RecordKind::ReplicaPromotion);
    assert!(record.success, "{record:?}");

    let moved = write(&s, 7).await?;
    assert!(moved.success && moved.replica == "standby", "{moved:?}");
    let again = fleet
        .clone()
        .promote_replica(bearer(promote("standby", true), &s.master))
        .await
        .expect_err("already a primary");
    assert_eq!(again.code(), Code::FailedPrecondition, "{}", again.message());
    assert!(
        again.message().contains("already a primary"),
        "{}",
        again.message()
    );
    s.server.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_target_whose_members_are_all_standbys_refuses_writes() -> anyhow::Result<()> {
    let (_primary, standby, database) = replicated().await?;
    // Both configured members are the standby: nothing takes writes.
    let s = session(&onprem(&standby, &standby, &database, "")).await?;
    let refused = write(&s, 1).await?;
    assert!(!refused.success, "{refused:?}");
    let error = refused.error.clone().unwrap_or_default();
    assert_eq!(error.code(), pb::ErrorCode::Unavailable, "{error:?}");
    assert!(
        error.message.contains("onprem/app has no writable member"),
        "{error:?}"
    );
    assert_eq!(rows_on(&standby, database.name()).await?, Vec::<i32>::new());
    s.server.shutdown().await?;
    Ok(())
}
