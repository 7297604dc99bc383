//! `[rate_limits]`: the limits on expensive calls, shared by two server
//! instances of one fleet through one Redis (the fleet's own key prefix,
//! so parallel tests never share a bucket), per identity and per client
//! address, and what they do while Redis is cut.

use std::time::Duration;

use pgfleet_proto::pgfleet::v1 as pb;
use pgfleet_proto::pgfleet::v1::fleet_service_client::FleetServiceClient;
use pgfleet_proto::pgfleet::v1::history_service_client::HistoryServiceClient;
use pgfleet_proto::pgfleet::v1::query_service_client::QueryServiceClient;
use pgfleet_proto::pgfleet::v1::replication_service_client::ReplicationServiceClient;
use pgfleet_testkit::{FaultProxy, RedisServer, wait_until};
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

use crate::support::{Fleet, api_key, assert_rate_limited, auth_client, bearer, channel, forwarded, target};
use pgfleet_engine::identity::Role;

/// One token per 100 s: nothing refills while a test runs.
const SLOW: &str = "per_second = 0.01";

fn schemas_request() -> pb::ListSchemasRequest {
    pb::ListSchemasRequest {
        target: Some(target("aws", "app")),
        ..Default::default()
    }
}

/// ListSchemas on `channel` with `request`: the status code (OK or the
/// refusal) and the refusal itself.
async fn list_schemas(channel: &Channel, request: Request<pb::ListSchemasRequest>) -> (Code, Option<Status>) {
    match FleetServiceClient::new(channel.clone())
        .list_schemas(request)
        .await
    {
        Ok(_) => (Code::Ok, None),
        Err(status) => (status.code(), Some(status)),
    }
}

/// RESOURCE_EXHAUSTED with a RetryInfo of at most 100 s (one token's
/// time at [`SLOW`]), naming `who`.
fn assert_exhausted(status: Option<Status>, who: &str) {
    let status = status.expect("a refusal");
    assert_rate_limited(&status, who, Duration::from_secs(100));
}

#[tokio::test(flavor = "multi_thread")]
async fn two_instances_share_one_burst_per_identity() -> anyhow::Result<()> {
    let fleet = Fleet::create().await?;
    let limits = format!("[rate_limits.introspection.per_identity]\n{SLOW}\nburst = 3\n");
    let limits = format!("{limits}[rate_limits.replication.per_identity]\n{SLOW}\nburst = 1\n");
    let a = fleet.start(&limits).await?;
    let b = fleet.start(&limits).await?;
    let (on_a, on_b) = (channel(&a).await?, channel(&b).await?);
    let user = fleet.log_in(&on_a, "limited", Role::User).await?;
    let other = fleet.log_in(&on_b, "unlimited", Role::Reader).await?;

    let mut codes = Vec::new();
    for on in [&on_a, &on_b, &on_a] {
        codes.push(list_schemas(on, bearer(schemas_request(), &user)).await.0);
    }
    assert_eq!(codes, [Code::Ok; 3], "within the burst, across both instances");
    let (code, refused) = list_schemas(&on_b, bearer(schemas_request(), &user)).await;
    assert_eq!(code, Code::ResourceExhausted);
    assert_exhausted(refused, "user:limited");
    let (_, refused) = list_schemas(&on_a, bearer(schemas_request(), &user)).await;
    assert_exhausted(refused, "introspection rate limit of user:limited");
    // CompareTables draws on the same bucket, refused before it reads anything.
    let compare = QueryServiceClient::new(on_b.clone())
        .compare_tables(bearer(
            pb::CompareTablesRequest {
                database: "app".to_owned(),
                table: "t".to_owned(),
                ..Default::default()
            },
            &user,
        ))
        .await;
    assert_exhausted(compare.err(), "introspection rate limit of user:limited");

    // Another identity has buckets of its own; other groups are not limited.
    assert_eq!(
        list_schemas(&on_b, bearer(schemas_request(), &other)).await.0,
        Code::Ok
    );
    let export = HistoryServiceClient::new(on_a.clone())
        .export_executions(bearer(pb::ExportExecutionsRequest::default(), &user))
        .await;
    assert!(export.is_ok(), "{:?}", export.err());

    // Replication: RunJob and ReplicateTable draw on one bucket. The first
    // call reaches the service (no such job: NOT_FOUND); the refused ones
    // never do.
    let master = fleet.log_in(&on_b, "operator", Role::Master).await?;
    let run_job = pb::RunJobRequest {
        job_id: uuid::Uuid::new_v4().to_string(),
        ..Default::default()
    };
    let first = ReplicationServiceClient::new(on_a.clone())
        .run_job(bearer(run_job.clone(), &master))
        .await
        .err()
        .map(|status| status.code());
    assert_eq!(first, Some(Code::NotFound));
    let refused = ReplicationServiceClient::new(on_b.clone())
        .run_job(bearer(run_job, &master))
        .await
        .err();
    assert_exhausted(refused, "replication rate limit of user:operator");
    let refused = ReplicationServiceClient::new(on_a.clone())
        .replicate_table(bearer(pb::ReplicateTableRequest::default(), &master))
        .await
        .err();
    assert_exhausted(refused, "user:operator");

    a.shutdown().await?;
    b.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn one_client_address_shares_a_bucket_across_identities_and_instances() -> anyhow::Result<()> {
    let mut fleet = Fleet::create().await?;
    fleet.server_toml = "trusted_proxies = ['127.0.0.1/32']\n".to_owned();
    let limits = format!("[rate_limits.export.per_address]\n{SLOW}\nburst = 2\n");
    let a = fleet.start(&limits).await?;
    let b = fleet.start(&limits).await?;
    let (on_a, on_b) = (channel(&a).await?, channel(&b).await?);
    let first = fleet.log_in(&on_a, "first", Role::Reader).await?;
    let second = fleet.log_in(&on_a, "second", Role::Reader).await?;

    let export = async |on: &Channel, token: &str, client: &str| {
        // As forwarded by the trusted proxy (127.0.0.1) for `client`.
        let request = forwarded(pb::ExportExecutionsRequest::default(), token, client);
        HistoryServiceClient::new(on.clone())
            .export_executions(request)
            .await
            .err()
    };
    assert!(export(&on_a, &first, "203.0.113.7").await.is_none());
    assert!(export(&on_b, &second, "203.0.113.7").await.is_none());
    // Two identities, two instances, one address: its burst is spent.
    let refused = export(&on_a, &second, "203.0.113.7").await;
    assert_exhausted(refused, "export rate limit of address 203.0.113.7");
    // Another address is not.
    assert!(export(&on_b, &first, "203.0.113.8").await.is_none());

    a.shutdown().await?;
    b.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn with_redis_cut_open_falls_back_to_local_buckets_and_closed_refuses() -> anyhow::Result<()> {
    let redis = RedisServer::start().await?;
    let proxy = FaultProxy::start(format!("127.0.0.1:{}", redis.port())).await?;
    let mut fleet = Fleet::create().await?;
    fleet.redis_url = Some(format!("redis://127.0.0.1:{}", proxy.port()));
    let limits = |on_redis_error: &str| {
        format!(
            "[rate_limits]\non_redis_error = '{on_redis_error}'\n[rate_limits.introspection.per_identity]\n{SLOW}\nburst = 2\n"
        )
    };
    let open = fleet.start(&limits("open")).await?;
    let closed = fleet.start(&limits("closed")).await?;
    let (on_open, on_closed) = (channel(&open).await?, channel(&closed).await?);
    // An API key: the gate checks it in the history store, so it still
    // gets past the gate while Redis (sessions) is down.
    let master = fleet.log_in(&on_open, "admin", Role::Master).await?;
    let key = auth_client(&on_open)
        .create_api_key(bearer(
            pb::CreateApiKeyRequest {
                name: "crawler".to_owned(),
                role: pb::Role::Reader.into(),
                expires_at: None,
                allowed_targets: vec![pb::TargetPattern {
                    cloud: "*".to_owned(),
                    database: "*".to_owned(),
                }],
            },
            &master,
        ))
        .await?
        .into_inner()
        .secret;

    proxy.cut();
    // Open: this instance's own buckets, still limited.
    let mut codes = Vec::new();
    for _ in 0..3 {
        codes.push(list_schemas(&on_open, api_key(schemas_request(), &key)).await.0);
    }
    assert_eq!(codes, [Code::Ok, Code::Ok, Code::ResourceExhausted]);
    // Closed: refused without an answer from Redis.
    let (code, refused) = list_schemas(&on_closed, api_key(schemas_request(), &key)).await;
    assert_eq!(code, Code::Unavailable, "{refused:?}");
    let message = refused
        .map(|status| status.message().to_owned())
        .unwrap_or_default();
    assert!(message.contains("rate limit store is unavailable"), "{message}");
    assert!(!message.contains("127.0.0.1"), "{message}");

    // Back: the shared bucket (untouched during the cut) serves again.
    proxy.pass();
    wait_until(Duration::from_secs(20), Duration::from_millis(100), async || {
        let (code, refused) = list_schemas(&on_closed, api_key(schemas_request(), &key)).await;
        anyhow::ensure!(code != Code::Unavailable, "still unavailable");
        anyhow::ensure!(code == Code::Ok, "{refused:?}");
        anyhow::Ok(true)
    })
    .await?;

    open.shutdown().await?;
    closed.shutdown().await?;
    Ok(())
}
