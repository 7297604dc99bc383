//! Redis (the session store) cut, then blackholed, during bursts of calls:
//! every call is either authenticated or refused, never let through: a
//! live session runs or gets UNAVAILABLE, a logged-out or forged one never
//! runs, and only the writes that answered success are in the table.

use std::time::Duration;

use base64::Engine as _;
use pgfleet_engine::identity::Role;
use pgfleet_proto::pgfleet::v1 as pb;
use pgfleet_testkit::{FaultProxy, RedisServer, wait_until};
use tonic::Code;

use crate::support::{Fleet, auth_client, bearer, channel};
use crate::trail::{execute, query};

/// Calls per burst, cycling through the three credentials.
const BURST: i32 = 60;

#[tokio::test(flavor = "multi_thread")]
async fn with_redis_cut_or_blackholed_every_call_is_authenticated_or_refused() -> anyhow::Result<()> {
    let redis = RedisServer::start().await?;
    let proxy = FaultProxy::start(format!("127.0.0.1:{}", redis.port())).await?;
    let mut fleet = Fleet::create().await?;
    fleet.redis_url = Some(format!("redis://127.0.0.1:{}", proxy.port()));
    let server = fleet.start("").await?;
    let channel = channel(&server).await?;
    let live = fleet.log_in(&channel, "redis-live", Role::User).await?;
    let gone = fleet.log_in(&channel, "redis-gone", Role::User).await?;
    auth_client(&channel)
        .logout(bearer(pb::LogoutRequest {}, &gone))
        .await?;
    // A token of the right shape that no login issued.
    let random: Vec<u8> = [uuid::Uuid::new_v4(), uuid::Uuid::new_v4()]
        .iter()
        .flat_map(|id| id.as_bytes().to_vec())
        .collect();
    let forged = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random);
    let target = fleet.database("aws", "app").pool().await?;
    sqlx::query("CREATE TABLE items (id int PRIMARY KEY)")
        .execute(&target)
        .await?;

    let mut ran = Vec::new();
    for (burst, fault) in [("cut", 0), ("blackhole", 1)] {
        let mut calls = Vec::new();
        for n in 0..BURST {
            let id = fault * BURST + n;
            let token = [&live, &gone, &forged][usize::try_from(n % 3)?].clone();
            let channel = channel.clone();
            calls.push(tokio::spawn(async move {
                let sql = format!("INSERT INTO items VALUES ({id})");
                let result = query(&channel)
                    .execute(bearer(execute(Some("aws"), "app", &sql), &token))
                    .await;
                (id, n % 3, result)
            }));
            if n == BURST / 3 {
                match burst {
                    "cut" => proxy.cut(),
                    _ => proxy.blackhole(),
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        for call in calls {
            let (id, credential, result) = tokio::time::timeout(Duration::from_secs(30), call)
                .await
                .map_err(|_| anyhow::anyhow!("{burst}: a call never answered"))??;
            match (credential, result) {
                (0, Ok(response)) => {
                    assert!(response.get_ref().success, "{burst} {id}: {response:?}");
                    ran.push(id);
                }
                (0, Err(status)) => assert_eq!(status.code(), Code::Unavailable, "{burst} {id}: {status:?}"),
                (_, Ok(response)) => panic!("{burst} {id}: let through without a live session: {response:?}"),
                (_, Err(status)) => assert!(
                    matches!(status.code(), Code::Unauthenticated | Code::Unavailable),
                    "{burst} {id}: {status:?}"
                ),
            }
        }
        proxy.pass();
        // Back: the live session works again, the others still do not.
        wait_until(Duration::from_secs(15), Duration::from_millis(100), async || {
            auth_client(&channel)
                .me(bearer(pb::MeRequest {}, &live))
                .await
                .is_ok()
        })
        .await?;
        for token in [&gone, &forged] {
            let status = auth_client(&channel)
                .me(bearer(pb::MeRequest {}, token))
                .await
                .expect_err("refused");
            assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
        }
    }
    let mut rows: Vec<i32> = sqlx::query_scalar("SELECT id FROM items")
        .fetch_all(&target)
        .await?;
    rows.sort_unstable();
    ran.sort_unstable();
    assert_eq!(rows, ran, "the rows are exactly the writes that answered success");
    assert!(!ran.is_empty(), "no call ran before the faults");
    target.close().await;
    server.shutdown().await?;
    Ok(())
}
