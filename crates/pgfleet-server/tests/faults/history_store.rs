//! The history store slowed to 5 s a round trip and then cut, during a
//! burst of writes: every write is either on record and run, or refused and
//! not run; every call returns (nothing waits without bound in a queue);
//! once the store is back every record is closed and the chain verifies.

use std::collections::HashMap;
use std::time::Duration;

use pgfleet_engine::identity::Role;
use pgfleet_proto::pgfleet::v1 as pb;
use pgfleet_proto::pgfleet::v1::history_service_client::HistoryServiceClient;
use pgfleet_testkit::FaultProxy;
use tonic::Code;

use crate::support::{Fleet, bearer, channel, login};
use crate::trail::{closed_records, execute, query};

/// A fleet whose server reaches its history store through a fault proxy,
/// with short audit and pool timeouts so a cut store answers soon.
async fn behind_a_proxy() -> anyhow::Result<(Fleet, FaultProxy, pgfleet_server::app::RunningServer)> {
    let mut fleet = Fleet::create().await?;
    let proxy = FaultProxy::start(format!("{}:{}", fleet.history.host(), fleet.history.port())).await?;
    fleet.history_port = Some(proxy.port());
    let server = fleet
        .start("[audit]\nwrite_timeout = '1s'\n[history.pool]\nacquire_timeout = '2s'\n")
        .await?;
    Ok((fleet, proxy, server))
}

/// Writes sent in each phase: store healthy, slowed, cut.
const PER_PHASE: i32 = 10;

#[tokio::test(flavor = "multi_thread")]
async fn writes_during_a_slow_then_cut_history_store_are_on_record_and_run_or_refused_and_not_run()
-> anyhow::Result<()> {
    let (fleet, proxy, server) = behind_a_proxy().await?;
    let channel = channel(&server).await?;
    let writer = fleet.log_in(&channel, "burst-writer", Role::User).await?;
    let auditor_password = fleet.create_user("burst-auditor", Role::Master).await?;
    let auditor = login(&channel, "burst-auditor", &auditor_password).await?;
    let target = fleet.database("aws", "app").pool().await?;
    sqlx::query("CREATE TABLE items (id int PRIMARY KEY)")
        .execute(&target)
        .await?;

    let mut calls = Vec::new();
    let send = |id: i32| {
        let channel = channel.clone();
        let token = writer.clone();
        let sql = format!("INSERT INTO items VALUES ({id})");
        tokio::spawn(async move {
            let result = query(&channel)
                .execute(bearer(execute(Some("aws"), "app", &sql), &token))
                .await;
            (id, sql, result)
        })
    };
    for id in 0..PER_PHASE {
        calls.push(send(id));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.latency(Duration::from_secs(5));
    for id in PER_PHASE..2 * PER_PHASE {
        calls.push(send(id));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    proxy.cut();
    for id in 2 * PER_PHASE..3 * PER_PHASE {
        calls.push(send(id));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    proxy.pass();

    // Every call answers: none is left waiting on the store.
    let mut answered = HashMap::new();
    for call in calls {
        let (id, sql, result) = tokio::time::timeout(Duration::from_secs(60), call)
            .await
            .map_err(|_| anyhow::anyhow!("a write never answered"))??;
        answered.insert(id, (sql, result));
    }

    let records = closed_records(&fleet.history, Duration::from_secs(90)).await?;
    let rows: Vec<i32> = sqlx::query_scalar("SELECT id FROM items")
        .fetch_all(&target)
        .await?;
    let mut ran_and_recorded = 0;
    for (id, (sql, result)) in &answered {
        let record = records.iter().find(|record| &record.query == sql);
        let ran = rows.contains(id);
        match result {
            Ok(response) => {
                let response = response.get_ref();
                assert!(response.success, "{id}: {response:?}");
                let record = record.unwrap_or_else(|| panic!("{id} ran without a record"));
                assert_eq!(record.status, "SUCCEEDED", "{id}: {record:?}");
                assert!(ran, "{id} answered success but is not in the table");
                ran_and_recorded += 1;
            }
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable, "{id}: {status:?}");
                assert!(!ran, "{id} was refused ({status:?}) but ran");
                if let Some(record) = record {
                    assert_eq!(record.status, "REFUSED", "{id}: {record:?}");
                }
            }
        }
    }
    // Nothing ran that is not on record as run.
    for id in &rows {
        let sql = format!("INSERT INTO items VALUES ({id})");
        let record = records.iter().find(|record| record.query == sql);
        assert_eq!(record.map(|r| r.status.as_str()), Some("SUCCEEDED"), "row {id}");
    }
    assert!(ran_and_recorded >= 1, "the healthy phase ran nothing");
    assert!(
        answered.values().any(|(_, result)| result.is_err()),
        "the faults refused nothing"
    );

    let verified = HistoryServiceClient::new(channel.clone())
        .verify_chain(bearer(pb::VerifyChainRequest::default(), &auditor))
        .await?
        .into_inner();
    assert!(verified.ok, "{:?}", verified.first_broken);
    target.close().await;
    server.shutdown().await?;
    Ok(())
}

/// The auth gate keeps the users it read while the users version in Redis
/// stands: reads that are not on record then need nothing from the history
/// store, and go on while it is cut; a write, which must be on record
/// first, is refused UNAVAILABLE and not run.
#[tokio::test(flavor = "multi_thread")]
async fn reads_go_on_while_the_history_store_is_cut_and_writes_are_refused() -> anyhow::Result<()> {
    let (fleet, proxy, server) = behind_a_proxy().await?;
    let channel = channel(&server).await?;
    let reader = fleet.log_in(&channel, "cached-reader", Role::Reader).await?;
    let writer = fleet.log_in(&channel, "cut-writer", Role::User).await?;
    let target = fleet.database("aws", "app").pool().await?;
    sqlx::query("CREATE TABLE items (id int PRIMARY KEY)")
        .execute(&target)
        .await?;
    let read = async |token: &str| {
        query(&channel)
            .execute(bearer(
                execute(Some("aws"), "app", "SELECT count(*) FROM items"),
                token,
            ))
            .await
    };
    // Both users read once, so both are cached: the write below is
    // refused for want of its record, not of its user.
    assert!(read(&reader).await?.get_ref().success);
    assert!(read(&writer).await?.get_ref().success);

    proxy.cut();
    for _ in 0..3 {
        let response = read(&reader).await?.into_inner();
        assert!(response.success, "{response:?}");
    }
    let refused = query(&channel)
        .execute(bearer(
            execute(Some("aws"), "app", "INSERT INTO items VALUES (1)"),
            &writer,
        ))
        .await
        .expect_err("a write without its record");
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    proxy.pass();
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM items")
        .fetch_one(&target)
        .await?;
    assert_eq!(rows, 0, "the refused write did not run");
    target.close().await;
    server.shutdown().await?;
    Ok(())
}
