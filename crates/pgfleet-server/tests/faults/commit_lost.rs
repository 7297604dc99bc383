//! A target's connection lost after COMMIT was sent: whether it committed
//! is not known, and the record says so (outcome unknown), never success,
//! nor "cancelled" as if it surely rolled back.

use std::time::Duration;

use pgfleet_proto::pgfleet::v1 as pb;
use pgfleet_testkit::wait_until;
use tokio::task::JoinHandle;

use crate::support::{ProxiedCloud, Session, bearer, run_sql, session};
use crate::trail::{admin, closed_records, execute, query, running};

/// azure/app's `items` table, whose COMMIT takes two seconds (a deferred
/// constraint trigger sleeps at commit time), so a fault can strike while
/// COMMIT is in flight; the others' `items` commit at once.
async fn slow_commit_fleet(prefix: &str) -> anyhow::Result<(ProxiedCloud, Session)> {
    let azure = ProxiedCloud::start(prefix).await?;
    azure
        .sql(
            "CREATE TABLE items (id int PRIMARY KEY);\n\
             CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN PERFORM pg_sleep(2); RETURN NULL; END $$;\n\
             CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT ON items \
             DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION slow_commit()",
        )
        .await?;
    let clouds = format!(
        "{}pool = {{ max_connections = 2, acquire_timeout = '2s' }}\n",
        azure.toml()
    );
    let s = session(&clouds).await?;
    for cloud in ["aws", "gcp"] {
        run_sql(&s, cloud, "app", "CREATE TABLE items (id int PRIMARY KEY)").await?;
    }
    Ok((azure, s))
}

/// `INSERT INTO items VALUES (1)` on `cloud` (every cloud with `None`) as
/// a USER, returned once azure is in its COMMIT.
async fn write_in_commit(
    azure: &ProxiedCloud,
    s: &Session,
    cloud: Option<&'static str>,
) -> anyhow::Result<JoinHandle<Result<tonic::Response<pb::ExecuteResponse>, tonic::Status>>> {
    let call = tokio::spawn({
        let channel = s.channel.clone();
        let token = s.user.clone();
        async move {
            query(&channel)
                .execute(bearer(
                    execute(cloud, "app", "INSERT INTO items VALUES (1)"),
                    &token,
                ))
                .await
        }
    });
    let admin = admin().await?;
    running(&admin, azure.database.name(), "COMMIT").await?;
    admin.close().await;
    Ok(call)
}

/// Rows of azure's `items`, read directly.
async fn azure_rows(azure: &ProxiedCloud) -> anyhow::Result<i64> {
    let mut connection = azure.database.connect().await?;
    Ok(sqlx::query_scalar("SELECT count(*) FROM items")
        .fetch_one(&mut connection)
        .await?)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_dropped_after_commit_was_sent_is_on_record_as_unknown() -> anyhow::Result<()> {
    let (azure, s) = slow_commit_fleet("f_commit_reset").await?;
    let call = write_in_commit(&azure, &s, None).await?;
    // The link dies with COMMIT on its way: both sides are reset.
    azure.proxy.cut();

    let response = call.await??.into_inner();
    assert!(!response.success, "{response:?}");
    for result in &response.results {
        let cloud = result
            .target
            .as_ref()
            .map(|t| t.cloud.as_str())
            .unwrap_or_default();
        if cloud == "azure" {
            assert!(!result.success && result.outcome_unknown, "{result:?}");
        } else {
            assert!(result.success && !result.outcome_unknown, "{result:?}");
        }
    }
    let record = closed_records(&s.fleet.history, Duration::from_secs(20))
        .await?
        .into_iter()
        .find(|record| record.id.to_string() == response.execution_id)
        .ok_or_else(|| anyhow::anyhow!("the write is not on record"))?;
    assert_eq!(record.status, "PARTIAL");
    let outcome = record.outcome("azure").expect("azure's outcome");
    assert!(!outcome.success && outcome.outcome_unknown, "{outcome:?}");

    // And rightly unknown: PostgreSQL finished the COMMIT it had received.
    wait_until(Duration::from_secs(15), Duration::from_millis(100), async || {
        anyhow::Ok(azure_rows(&azure).await? == 1)
    })
    .await?;
    s.server.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_call_cancelled_while_commit_is_unanswered_is_on_record_as_unknown() -> anyhow::Result<()> {
    let (azure, s) = slow_commit_fleet("f_commit_blackhole").await?;
    let call = write_in_commit(&azure, &s, Some("azure")).await?;
    // The network goes dead with COMMIT sent, and the caller gives up:
    // pgfleet can neither hear the answer nor cancel the statement.
    azure.proxy.blackhole();
    call.abort();
    let record = closed_records(&s.fleet.history, Duration::from_secs(40))
        .await?
        .into_iter()
        .find(|record| record.query.contains("INSERT INTO items"))
        .ok_or_else(|| anyhow::anyhow!("the write is not on record"))?;
    let outcome = record.outcome("azure").expect("azure's outcome");
    assert!(!outcome.success, "{outcome:?}");
    assert!(
        outcome.outcome_unknown,
        "a COMMIT nobody answered is recorded as known: {outcome:?}"
    );
    assert_ne!(record.status, "SUCCEEDED");

    // And rightly unknown: nothing reached PostgreSQL to stop that COMMIT.
    azure.proxy.pass();
    wait_until(Duration::from_secs(15), Duration::from_millis(100), async || {
        anyhow::Ok(azure_rows(&azure).await? == 1)
    })
    .await?;
    s.server.shutdown().await?;
    Ok(())
}
