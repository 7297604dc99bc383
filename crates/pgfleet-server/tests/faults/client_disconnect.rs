//! The client disconnects mid-transaction and mid-stream: the target's
//! transaction rolls back exactly once, its connection is reset before
//! anyone reuses it, no statement is left in `pg_stat_activity`, and the
//! record says the target was cancelled.

use std::time::Duration;

use futures::StreamExt as _;
use pgfleet_proto::pgfleet::v1 as pb;
use pgfleet_testkit::wait_until;

use crate::support::{Session, bearer, count, fleet_database, run_sql, session};
use crate::trail::{
    admin, backends, closed_records, execute, execute_stream, marker, query, rollbacks, running, settle,
};

/// What must hold once the caller of a write on aws/app left: one
/// rollback more than `rollbacks_before`, nothing left running or open, no
/// pooled connection that skipped its reset, nothing written, and the
/// record closed with aws cancelled.
async fn assert_cleaned_up(s: &Session, tag: &str, rollbacks_before: i64) -> anyhow::Result<()> {
    let admin = admin().await?;
    let name = fleet_database(s, "aws", "app").name().to_owned();
    settle(&admin, &name).await?;
    // A connection back in its pool after DISCARD ALL shows that as its
    // last statement; one returned as it was would still show the write.
    for (state, last) in backends(&admin, &name).await? {
        assert!(
            !last.contains(tag),
            "a connection kept its state ({state}): {last}"
        );
    }
    assert_eq!(
        count(s, "aws", "app", "items").await?,
        0,
        "the abandoned write committed"
    );

    let record = closed_records(&s.fleet.history, Duration::from_secs(20))
        .await?
        .into_iter()
        .find(|record| record.query.contains(tag))
        .ok_or_else(|| anyhow::anyhow!("the write is not on record"))?;
    let aws = record.outcome("aws").expect("aws's outcome");
    assert!(!aws.success && !aws.outcome_unknown, "{aws:?}");
    let code = aws
        .error
        .as_ref()
        .map(|error| error.code.as_str())
        .unwrap_or_default();
    assert!(code.contains("CANCELLED"), "{aws:?}");
    assert_ne!(record.status, "SUCCEEDED");

    // Backends report their statistics when they go idle, within seconds.
    wait_until(Duration::from_secs(20), Duration::from_millis(200), async || {
        anyhow::Ok(rollbacks(&admin, &name).await? > rollbacks_before)
    })
    .await?;
    assert_eq!(rollbacks(&admin, &name).await? - rollbacks_before, 1, "rollbacks");
    admin.close().await;

    // The pool serves the next call.
    let after = query(&s.channel)
        .execute(bearer(
            execute(Some("aws"), "app", "SELECT count(*) FROM items"),
            &s.user,
        ))
        .await?
        .into_inner();
    assert!(after.success, "{after:?}");
    Ok(())
}

async fn prepare() -> anyhow::Result<(Session, i64)> {
    let s = session("").await?;
    run_sql(
        &s,
        "aws",
        "app",
        "CREATE TABLE items (id int PRIMARY KEY, note text)",
    )
    .await?;
    let admin = admin().await?;
    let name = fleet_database(&s, "aws", "app").name().to_owned();
    let before = rollbacks(&admin, &name).await?;
    admin.close().await;
    Ok((s, before))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_gone_mid_transaction_rolls_back_once_and_resets_the_connection() -> anyhow::Result<()> {
    let (s, before) = prepare().await?;
    let tag = marker("left-mid-transaction");
    // The second statement is a write (sent as it is, so it shows in
    // pg_stat_activity) that sleeps.
    let sql = format!(
        "INSERT INTO items VALUES (1, 'first');\n\
         INSERT INTO items (id, note) SELECT 2, '{tag}' FROM pg_sleep(60);\n\
         INSERT INTO items VALUES (3, 'never')"
    );
    let call = tokio::spawn({
        let channel = s.channel.clone();
        let token = s.user.clone();
        async move {
            query(&channel)
                .execute(bearer(execute(Some("aws"), "app", &sql), &token))
                .await
        }
    });
    let admin = admin().await?;
    running(&admin, fleet_database(&s, "aws", "app").name(), &tag).await?;
    admin.close().await;
    // The client goes away: its HTTP/2 stream is reset.
    call.abort();
    assert!(call.await.is_err_and(|error| error.is_cancelled()));

    assert_cleaned_up(&s, &tag, before).await?;
    s.server.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_gone_mid_stream_rolls_back_once_and_resets_the_connection() -> anyhow::Result<()> {
    let (s, before) = prepare().await?;
    let tag = marker("left-mid-stream");
    let sql = format!(
        "INSERT INTO items VALUES (1, '{tag}');\n\
         SELECT i, repeat('x', 100) AS pad FROM generate_series(1, 5000000) i"
    );
    let mut stream = query(&s.channel)
        .execute_stream(bearer(execute_stream(Some("aws"), "app", &sql), &s.user))
        .await?
        .into_inner();
    // Read until rows arrive, then leave.
    loop {
        let message = stream
            .next()
            .await
            .ok_or_else(|| anyhow::anyhow!("the stream ended before any row"))??;
        if let Some(pb::execute_stream_response::Event::RowBatch(batch)) = message.event {
            assert!(!batch.rows.is_empty());
            break;
        }
    }
    drop(stream);

    assert_cleaned_up(&s, &tag, before).await?;
    s.server.shutdown().await?;
    Ok(())
}
