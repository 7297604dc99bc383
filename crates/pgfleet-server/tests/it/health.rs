//! `grpc.health.v1` per service, `/healthz` and `/readyz` follow pgfleet's
//! own stores: the history store and Redis, each behind a fault proxy that
//! the tests cut and restore, watched with tonic-health's real client and
//! an HTTP/1.1 client.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use pgfleet_server::app::RunningServer;
use pgfleet_testkit::{FaultProxy, RedisServer, wait_until};
use tonic::transport::Channel;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};

use crate::support::{Fleet, channel};

/// Checks every 100 ms, each within 500 ms.
const FAST_CHECKS: &str = "[health]\ndependency_interval = '100ms'\ndependency_timeout = '500ms'\n";

const OVERALL: &str = "";
const AUTH: &str = "pgfleet.v1.AuthService";
/// Every pgfleet service but Auth.
const OTHERS: [&str; 5] = [
    "pgfleet.v1.QueryService",
    "pgfleet.v1.HistoryService",
    "pgfleet.v1.ReplicationService",
    "pgfleet.v1.FleetService",
    "pgfleet.v1.MigrationService",
];

async fn status_of(channel: &Channel, service: &str) -> anyhow::Result<ServingStatus> {
    let response = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await?
        .into_inner();
    Ok(response.status())
}

/// The status of each service in `services`, in order.
async fn statuses(channel: &Channel, services: &[&str]) -> anyhow::Result<Vec<ServingStatus>> {
    let mut all = Vec::new();
    for service in services {
        all.push(status_of(channel, service).await?);
    }
    Ok(all)
}

/// GET `path` on the metrics listener: (status code, body).
async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Empty<Bytes>>();
    let response = client.get(format!("http://{addr}{path}").parse()?).await?;
    let code = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((code, String::from_utf8(body.to_vec())?))
}

/// A server of `fleet` with fast dependency checks and a metrics listener.
async fn start(mut fleet: Fleet) -> anyhow::Result<(Fleet, RunningServer, Channel, SocketAddr)> {
    fleet.server_toml = "metrics_addr = '127.0.0.1:0'\n".to_owned();
    let server = fleet.start(FAST_CHECKS).await?;
    let channel = channel(&server).await?;
    let metrics = server
        .metrics_addr()
        .ok_or_else(|| anyhow::anyhow!("no metrics listener"))?;
    Ok((fleet, server, channel, metrics))
}

/// Waits until `services` all report `want`.
async fn wait_for(channel: &Channel, services: &[&str], want: ServingStatus) -> anyhow::Result<()> {
    wait_until(Duration::from_secs(20), Duration::from_millis(50), async || {
        let now = statuses(channel, services).await?;
        anyhow::ensure!(now.iter().all(|status| *status == want), "{services:?}: {now:?}");
        anyhow::Ok(true)
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cut_history_store_takes_every_service_down_until_it_is_back() -> anyhow::Result<()> {
    let mut fleet = Fleet::create().await?;
    let proxy = FaultProxy::start(format!("{}:{}", fleet.history.host(), fleet.history.port())).await?;
    fleet.history_port = Some(proxy.port());
    let (_fleet, server, channel, metrics) = start(fleet).await?;
    let every = [&[OVERALL, AUTH][..], &OTHERS[..]].concat();
    assert!(
        statuses(&channel, &every)
            .await?
            .iter()
            .all(|status| *status == ServingStatus::Serving)
    );
    assert_eq!(
        get(metrics, "/readyz").await?,
        (200, "ready\nhistory_store: up\nredis: up\n".to_owned())
    );

    proxy.cut();
    // Every call past the auth gate reads its caller there: all six go.
    wait_for(&channel, &every[1..], ServingStatus::NotServing).await?;
    assert_eq!(
        status_of(&channel, OVERALL).await?,
        ServingStatus::Serving,
        "liveness stays"
    );
    assert_eq!(get(metrics, "/healthz").await?, (200, "ok\n".to_owned()));
    let (code, body) = get(metrics, "/readyz").await?;
    assert_eq!(code, 503, "{body}");
    assert_eq!(body, "not ready\nhistory_store: down\nredis: up\n");
    let (_, scraped) = get(metrics, "/metrics").await?;
    assert!(
        scraped.contains("pgfleet_dependency_up{dependency=\"history_store\"} 0"),
        "{scraped}"
    );

    proxy.pass();
    wait_for(&channel, &every, ServingStatus::Serving).await?;
    wait_until(Duration::from_secs(10), Duration::from_millis(50), async || {
        anyhow::Ok(get(metrics, "/readyz").await?.0 == 200)
    })
    .await?;
    assert_eq!(get(metrics, "/healthz").await?.0, 200);
    server.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cut_redis_takes_auth_down_and_leaves_the_rest_serving() -> anyhow::Result<()> {
    let redis = RedisServer::start().await?;
    let proxy = FaultProxy::start(format!("127.0.0.1:{}", redis.port())).await?;
    let mut fleet = Fleet::create().await?;
    fleet.redis_url = Some(format!("redis://127.0.0.1:{}", proxy.port()));
    let (_fleet, server, channel, metrics) = start(fleet).await?;
    assert_eq!(status_of(&channel, AUTH).await?, ServingStatus::Serving);
    assert_eq!(get(metrics, "/readyz").await?.0, 200);

    proxy.cut();
    wait_for(&channel, &[AUTH], ServingStatus::NotServing).await?;
    // API keys (history store) still reach them.
    assert!(
        statuses(&channel, &[&[OVERALL][..], &OTHERS[..]].concat())
            .await?
            .iter()
            .all(|status| *status == ServingStatus::Serving)
    );
    assert_eq!(get(metrics, "/healthz").await?.0, 200);
    let (code, body) = get(metrics, "/readyz").await?;
    assert_eq!(
        (code, body.as_str()),
        (503, "not ready\nhistory_store: up\nredis: down\n")
    );
    assert!(!body.contains("127.0.0.1"), "no address in the body: {body}");
    let (_, scraped) = get(metrics, "/metrics").await?;
    assert!(
        scraped.contains("pgfleet_dependency_up{dependency=\"redis\"} 0"),
        "{scraped}"
    );

    proxy.pass();
    wait_for(&channel, &[AUTH], ServingStatus::Serving).await?;
    wait_until(Duration::from_secs(10), Duration::from_millis(50), async || {
        anyhow::Ok(
            get(metrics, "/readyz").await? == (200, "ready\nhistory_store: up\nredis: up\n".to_owned()),
        )
    })
    .await?;
    server.shutdown().await?;
    Ok(())
}
