//! A target's pool busy past its `acquire_timeout` (overload, not a fault
//! of the target): that target answers RESOURCE_EXHAUSTED at once (no
//! retries that would multiply the wait), the others complete, and the
//! next call after the load gets a connection.

use pgfleet_proto::pgfleet::v1 as pb;

use crate::support::{ProxiedCloud, bearer, session};
use crate::trail::{admin, execute, query, running};

#[tokio::test(flavor = "multi_thread")]
async fn a_pool_busy_past_its_queue_limit_answers_resource_exhausted_for_that_target_only()
-> anyhow::Result<()> {
    let azure = ProxiedCloud::start("f_pool_azure").await?;
    azure.sql("CREATE TABLE marks (n int)").await?;
    let clouds = format!(
        "{}pool = {{ max_connections = 1, acquire_timeout = '500ms' }}\n",
        azure.toml()
    );
    let s = session(&clouds).await?;
    // The one connection, busy for three seconds.
    let holder = tokio::spawn({
        let channel = s.channel.clone();
        let token = s.user.clone();
        async move {
            query(&channel)
                .execute(bearer(
                    execute(
                        Some("azure"),
                        "app",
                        "INSERT INTO marks SELECT 1 FROM pg_sleep(3)",
                    ),
                    &token,
                ))
                .await
        }
    });
    let admin = admin().await?;
    running(&admin, azure.database.name(), "pg_sleep").await?;

    let response = query(&s.channel)
        .execute(bearer(execute(None, "app", "SELECT 1"), &s.user))
        .await?
        .into_inner();
    for result in &response.results {
        let cloud = result
            .target
            .as_ref()
            .map(|t| t.cloud.as_str())
            .unwrap_or_default();
        if cloud == "azure" {
            let error = result.error.as_ref().expect("azure's error");
            assert_eq!(error.code, pb::ErrorCode::ResourceExhausted as i32, "{error:?}");
            assert!(
                error.message.contains("pool.max_connections"),
                "{}",
                error.message
            );
        } else {
            assert!(result.success, "{result:?}");
        }
    }
    let held = holder.await??.into_inner();
    assert!(held.success, "{held:?}");
    let after = query(&s.channel)
        .execute(bearer(execute(Some("azure"), "app", "SELECT 1"), &s.user))
        .await?
        .into_inner();
    assert!(after.success, "{after:?}");
    admin.close().await;
    s.server.shutdown().await?;
    Ok(())
}
