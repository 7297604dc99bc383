//! A target that blackholes mid-statement (a dead network: nothing answers,
//! nothing is closed): the call's deadline fires and the call returns, the
//! statement does not keep running on the server, the pool slot is freed,
//! and health marks the target down after its failures and up again.

use std::time::Duration;

use pgfleet_proto::pgfleet::v1 as pb;
use pgfleet_testkit::wait_until;

use crate::support::{ProxiedCloud, Session, bearer, session};
use crate::trail::{admin, closed_records, execute, marker, query, running, settle, stopped, target_health};

async fn azure_health(s: &Session) -> anyhow::Result<pb::TargetHealth> {
    target_health(s, "azure", "app").await
}

async fn wait_for_status(s: &Session, status: pb::HealthStatus) -> anyhow::Result<()> {
    wait_until(Duration::from_secs(20), Duration::from_millis(100), async || {
        anyhow::Ok(azure_health(s).await?.status == status as i32)
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_blackholed_target_times_out_frees_its_slot_and_goes_down_then_up() -> anyhow::Result<()> {
    let azure = ProxiedCloud::start("f_blackhole_azure").await?;
    // One connection for azure: a slot the blackhole kept would refuse
    // every later call.
    let clouds = format!(
        "{}pool = {{ max_connections = 1, acquire_timeout = '2s' }}\n",
        azure.toml()
    );
    let s = session(&format!(
        "{clouds}[health]\ninterval = '300ms'\nprobe_timeout = '500ms'\n[retry]\nmax_attempts = 1\n"
    ))
    .await?;
    wait_for_status(&s, pb::HealthStatus::Healthy).await?;
    let admin = admin().await?;
    azure.sql("CREATE TABLE marks (tag text)").await?;

    // A write, so the statement is sent as it is (a plain read would show
    // as a cursor's FETCH) and the trail has its outcome.
    let tag = marker("blackholed");
    let mut request = execute(
        Some("azure"),
        "app",
        &format!("INSERT INTO marks (tag) SELECT '{tag}' FROM pg_sleep(60)"),
    );
    request.timeout = Some(prost_types::Duration { seconds: 2, nanos: 0 });
    let call = tokio::spawn({
        let channel = s.channel.clone();
        let token = s.user.clone();
        async move { query(&channel).execute(bearer(request, &token)).await }
    });
    running(&admin, azure.database.name(), &tag).await?;
    azure.proxy.blackhole();

    // The deadline fires and the call answers, the network still dead.
    let response = tokio::time::timeout(Duration::from_secs(40), call)
        .await
        .map_err(|_| anyhow::anyhow!("the call hung on the blackholed target"))???
        .into_inner();
    assert!(!response.success, "{response:?}");
    let result = &response.results[0];
    let error = result.error.as_ref().expect("azure's error");
    assert!(
        [
            pb::ErrorCode::Cancelled as i32,
            pb::ErrorCode::DeadlineExceeded as i32
        ]
        .contains(&error.code),
        "{error:?}"
    );
    // statement_timeout (set with the transaction) stopped it on the server,
    // which pgfleet could not reach to cancel it.
    stopped(&admin, azure.database.name(), &tag).await?;
    let record = closed_records(&s.fleet.history, Duration::from_secs(20))
        .await?
        .into_iter()
        .find(|record| record.query.contains(&tag))
        .ok_or_else(|| anyhow::anyhow!("the write is not on record"))?;
    assert_ne!(record.status, "SUCCEEDED", "{record:?}");
    let outcome = record.outcome("azure").expect("azure's outcome");
    assert!(!outcome.success, "{outcome:?}");
    // The probes fail meanwhile: azure is down.
    wait_for_status(&s, pb::HealthStatus::Unhealthy).await?;
    assert!(azure_health(&s).await?.consecutive_failures >= 1);

    // Back: healthy again, and the one slot serves calls.
    azure.proxy.pass();
    wait_for_status(&s, pb::HealthStatus::Healthy).await?;
    // The connection the blackhole held was closed: its backend is gone
    // too once the close gets through, no transaction left open.
    settle(&admin, azure.database.name()).await?;
    for _ in 0..3 {
        let after = query(&s.channel)
            .execute(bearer(execute(Some("azure"), "app", "SELECT 1"), &s.user))
            .await?
            .into_inner();
        assert!(after.success, "{after:?}");
    }
    let marks = query(&s.channel)
        .execute(bearer(
            execute(Some("azure"), "app", "SELECT count(*) FROM marks"),
            &s.user,
        ))
        .await?
        .into_inner();
    let count = marks.results[0].statements[0].rows[0].cells[0].kind.clone();
    assert_eq!(
        count,
        Some(pb::cell::Kind::IntValue(0)),
        "the timed-out write ran"
    );
    admin.close().await;
    s.server.shutdown().await?;
    Ok(())
}
