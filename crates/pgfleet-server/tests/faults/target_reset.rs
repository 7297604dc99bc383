//! A target's connection reset mid-stream, after N bytes of results: that
//! target fails with its own error, the others complete, and the broken
//! connection never goes back to its pool.

use futures::StreamExt as _;
use pgfleet_proto::pgfleet::v1 as pb;

use crate::support::{ProxiedCloud, bearer, session};
use crate::trail::{execute, execute_stream, query, target_health};

const ROWS: u64 = 20_000;

/// The pool of azure/app as GetHealth reports it.
async fn azure_pool(s: &crate::support::Session) -> anyhow::Result<pb::PoolStats> {
    target_health(s, "azure", "app")
        .await?
        .pool
        .ok_or_else(|| anyhow::anyhow!("no pool for azure/app"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_target_reset_after_n_bytes_fails_alone_and_its_connection_is_dropped() -> anyhow::Result<()> {
    let azure = ProxiedCloud::start("f_reset_azure").await?;
    let s = session(&azure.toml()).await?;
    // One connection to azure opened and back in its pool, idle (a USER's
    // read goes through the main login, whose pool GetHealth reports).
    let warm = query(&s.channel)
        .execute(bearer(execute(Some("azure"), "app", "SELECT 1"), &s.user))
        .await?
        .into_inner();
    assert!(warm.success, "{warm:?}");
    let before = azure_pool(&s).await?;
    assert!(before.size >= 1 && before.idle == before.size, "{before:?}");

    // About 2 MB of results per target; azure's link dies after 64 KiB of
    // them (counted from now on the pooled connection, from the start on
    // any new one).
    azure.proxy.close_after(None, Some(64 * 1024));
    let sql = format!("SELECT i, repeat('x', 100) AS pad FROM generate_series(1, {ROWS}) i");
    let mut stream = query(&s.channel)
        .execute_stream(bearer(execute_stream(None, "app", &sql), &s.user))
        .await?
        .into_inner();
    let mut rows_of = std::collections::HashMap::<String, u64>::new();
    let mut summaries = Vec::new();
    let mut finished = None;
    while let Some(message) = stream.next().await {
        match message?.event {
            Some(pb::execute_stream_response::Event::RowBatch(batch)) => {
                let cloud = batch.target.map(|t| t.cloud).unwrap_or_default();
                *rows_of.entry(cloud).or_default() += batch.rows.len() as u64;
            }
            Some(pb::execute_stream_response::Event::TargetSummary(summary)) => summaries.push(summary),
            Some(pb::execute_stream_response::Event::ExecutionFinished(done)) => finished = Some(done),
            _ => {}
        }
    }
    assert_eq!(summaries.len(), 3, "{summaries:?}");
    for summary in &summaries {
        let cloud = summary
            .target
            .as_ref()
            .map(|t| t.cloud.clone())
            .unwrap_or_default();
        if cloud == "azure" {
            assert!(!summary.success, "{summary:?}");
            let error = summary.error.as_ref().expect("azure's own error");
            assert_eq!(error.code, pb::ErrorCode::Unavailable as i32, "{error:?}");
            assert!(error.message.contains("connection lost"), "{}", error.message);
            assert!(rows_of.get("azure").copied().unwrap_or(0) < ROWS, "{rows_of:?}");
        } else {
            assert!(summary.success, "{cloud}: {summary:?}");
            assert_eq!(rows_of.get(&cloud).copied(), Some(ROWS), "{cloud}");
        }
    }
    assert!(!finished.expect("ExecutionFinished").success);

    // The reset connection was closed, not pooled: azure's pool has one
    // connection less, all idle (a broken one handed back would still count
    // in `size`).
    let pool = azure_pool(&s).await?;
    assert_eq!(
        (pool.size, pool.idle),
        (before.size - 1, before.size - 1),
        "{pool:?}"
    );

    // Back: every call on azure works, the first one included.
    azure.proxy.pass();
    for _ in 0..3 {
        let after = query(&s.channel)
            .execute(bearer(execute(Some("azure"), "app", "SELECT 1"), &s.user))
            .await?
            .into_inner();
        assert!(after.success, "{after:?}");
    }
    s.server.shutdown().await?;
    Ok(())
}
