//! The registry against real PostgreSQL databases, with clouds behind a
//! fault proxy to model outages.

use std::path::Path;
use std::time::{Duration, Instant};

use pgfleet_config::{FileFormat, FleetConfig, HealthConfig, Inputs, ProcessEnv};
use pgfleet_registry::{HealthStatus, Member, Registry, RegistryError, Route, Target, probe_all};
use pgfleet_testkit::{FaultProxy, TestDatabase};

/// One `[[clouds]]` entry: (cloud, database name, port, real database, extra TOML lines).
struct CloudSpec<'a> {
    cloud: &'a str,
    port: u16,
    database: &'a str,
    extra: &'a str,
}

fn fleet(clouds: &[CloudSpec<'_>]) -> FleetConfig {
    let mut text = String::from(
        "[history]\nhost='127.0.0.1'\nuser='postgres'\ndatabase='postgres'\n\
         [retry]\nmax_attempts=3\ninitial_backoff='10ms'\nmax_backoff='50ms'\nmax_elapsed='3s'\n",
    );
    for spec in clouds {
        text.push_str(&format!(
            "[[clouds]]\nname='{cloud}'\n[[clouds.databases]]\nname='app'\nhost='127.0.0.1'\nport={port}\n\
             user='postgres'\ndatabase='{database}'\nsslmode='disable'\n\
             pool={{max_connections=4, acquire_timeout='1s'}}\n{extra}\n",
            cloud = spec.cloud,
            port = spec.port,
            database = spec.database,
            extra = spec.extra,
        ));
    }
    pgfleet_config::load_str(
        &text,
        FileFormat::Toml,
        Path::new("test.toml"),
        &Inputs {
            variables: &ProcessEnv,
            overrides: Vec::new(),
        },
    )
    .unwrap_or_else(|e| panic!("test config: {e}\n{text}"))
    .config
}

fn fast_health() -> HealthConfig {
    HealthConfig {
        interval: Duration::from_secs(60),
        probe_timeout: Duration::from_secs(2),
        degraded_latency: Duration::from_secs(1),
        ..HealthConfig::default()
    }
}

fn status_of(registry: &Registry, target: &Target, member: &Member) -> HealthStatus {
    registry
        .health_snapshot()
        .into_iter()
        .find(|h| &h.target == target && &h.member == member)
        .map(|h| h.status)
        .unwrap_or_else(|| panic!("no health entry for {target} {member}"))
}

#[tokio::test]
async fn serves_healthy_clouds_while_another_is_down() -> anyhow::Result<()> {
    let aws_db = TestDatabase::create("reg_aws").await?;
    let gcp_db = TestDatabase::create("reg_gcp").await?;
    let gcp_proxy = FaultProxy::start(format!("{}:{}", gcp_db.host(), gcp_db.port())).await?;
    gcp_proxy.cut();

    let registry = Registry::new(&fleet(&[
        CloudSpec {
            cloud: "aws",
            port: aws_db.port(),
            database: aws_db.name(),
            extra: "",
        },
        CloudSpec {
            cloud: "gcp",
            port: gcp_proxy.port(),
            database: gcp_db.name(),
            extra: "",
        },
    ]));
    let aws = Target::new("aws", "app");
    let gcp = Target::new("gcp", "app");
    assert_eq!(
        registry.targets_for_database("app"),
        vec![aws.clone(), gcp.clone()]
    );
    assert_eq!(
        status_of(&registry, &aws, &Member::Primary),
        HealthStatus::Unknown,
        "no probe yet"
    );

    probe_all(&registry, &fast_health()).await;
    assert_eq!(
        status_of(&registry, &aws, &Member::Primary),
        HealthStatus::Healthy
    );
    let gcp_health = registry
        .health_snapshot()
        .into_iter()
        .find(|h| h.target == gcp)
        .expect("gcp health");
    assert_eq!(gcp_health.status, HealthStatus::Unhealthy);
    assert!(gcp_health.last_error.is_some() && gcp_health.last_error_at.is_some());

    let mut checkout = registry.acquire(&aws, Route::Write).await?;
    let one: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(checkout.connection_mut())
        .await?;
    assert_eq!(one, 1);
    drop(checkout);

    let started = Instant::now();
    let error = registry
        .acquire(&gcp, Route::Write)
        .await
        .expect_err("gcp is cut");
    match &error {
        RegistryError::Unavailable { target, attempts, .. } => {
            assert_eq!(target, &gcp);
            assert!(*attempts >= 2, "transient failures are retried: {error}");
        }
        other => panic!("expected Unavailable, got {other}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "bounded by retry.max_elapsed"
    );

    // The cloud comes back: the next probe and the next acquire see it.
    gcp_proxy.pass();
    probe_all(&registry, &fast_health()).await;
    assert_eq!(
        status_of(&registry, &gcp, &Member::Primary),
        HealthStatus::Healthy
    );
    registry.acquire(&gcp, Route::Write).await?;

    registry.close().await;
    Ok(())
}

#[tokio::test]
async fn unknown_target_and_permanent_errors_are_not_retried() -> anyhow::Result<()> {
    let db = TestDatabase::create("reg_perm").await?;
    let registry = Registry::new(&fleet(&[CloudSpec {
        cloud: "aws",
        port: db.port(),
        database: "pgfleet_no_such_database",
        extra: "",
    }]));
    match registry.acquire(&Target::new("azure", "app"), Route::Read).await {
        Err(RegistryError::UnknownTarget { cloud, database }) => {
            assert_eq!((cloud.as_str(), database.as_str()), ("azure", "app"));
        }
        other => panic!("expected UnknownTarget, got {other:?}"),
    }
    match registry.acquire(&Target::new("aws", "app"), Route::Write).await {
        Err(RegistryError::Connect { source, .. }) => {
            let code = source
                .as_database_error()
                .and_then(|e| e.code())
                .map(|c| c.into_owned());
            assert_eq!(code.as_deref(), Some("3D000"), "invalid_catalog_name: {source}");
        }
        other => panic!("expected Connect, got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn reads_follow_read_preference_and_replica_health() -> anyhow::Result<()> {
    let primary_db = TestDatabase::create("reg_primary").await?;
    let replica_db = TestDatabase::create("reg_replica").await?;
    let primary_proxy = FaultProxy::start(format!("{}:{}", primary_db.host(), primary_db.port())).await?;
    let replica_proxy = FaultProxy::start(format!("{}:{}", replica_db.host(), replica_db.port())).await?;
    let replica = |preference: &str| {
        format!(
            "read_preference='{preference}'\nreplicas=[{{name='r1', host='127.0.0.1', port={}, database='{}'}}]",
            replica_proxy.port(),
            replica_db.name()
        )
    };
    let replica_pref = replica("replica");
    let fallback_pref = replica("primary_then_replica");
    let registry = Registry::new(&fleet(&[
        CloudSpec {
            cloud: "a",
            port: primary_proxy.port(),
            database: primary_db.name(),
            extra: &replica_pref,
        },
        CloudSpec {
            cloud: "b",
            port: primary_proxy.port(),
            database: primary_db.name(),
            extra: &fallback_pref,
        },
    ]));
    let a = Target::new("a", "app");
    let b = Target::new("b", "app");
    let r1 = Member::Replica("r1".to_owned());
    probe_all(&registry, &fast_health()).await;

    // read_preference = replica: reads go to the healthy replica, writes never do.
    assert_eq!(registry.acquire(&a, Route::Read).await?.member, r1);
    assert_eq!(registry.acquire(&a, Route::Write).await?.member, Member::Primary);
    // primary_then_replica: the primary while it is healthy.
    assert_eq!(registry.acquire(&b, Route::Read).await?.member, Member::Primary);

    // The replica dies: reads fall back to the primary.
    replica_proxy.cut();
    probe_all(&registry, &fast_health()).await;
    assert_eq!(status_of(&registry, &a, &r1), HealthStatus::Unhealthy);
    assert_eq!(registry.acquire(&a, Route::Read).await?.member, Member::Primary);

    // The primary dies and the replica is back: primary_then_replica fails reads over.
    replica_proxy.pass();
    primary_proxy.cut();
    probe_all(&registry, &fast_health()).await;
    assert_eq!(
        status_of(&registry, &b, &Member::Primary),
        HealthStatus::Unhealthy
    );
    let mut checkout = registry.acquire(&b, Route::Read).await?;
    assert_eq!(checkout.member, r1);
    let database: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(checkout.connection_mut())
        .await?;
    assert_eq!(database, replica_db.name(), "the read really ran on the replica");
    Ok(())
}

#[tokio::test]
async fn health_snapshot_reports_pool_counters_without_io() -> anyhow::Result<()> {
    let db = TestDatabase::create("reg_counts").await?;
    let registry = Registry::new(&fleet(&[CloudSpec {
        cloud: "aws",
        port: db.port(),
        database: db.name(),
        extra: "",
    }]));
    let target = Target::new("aws", "app");
    let first = registry.acquire(&target, Route::Write).await?;
    let second = registry.acquire(&target, Route::Write).await?;
    let health = registry.health_snapshot().remove(0);
    assert_eq!(health.pool_size, 2);
    assert_eq!(health.pool_idle, 0);
    drop((first, second));
    pgfleet_testkit::wait_until(Duration::from_secs(5), Duration::from_millis(20), async || {
        registry.health_snapshot()[0].pool_idle == 2
    })
    .await?;
    registry.close().await;
    assert!(
        registry
            .pool(&target, &Member::Primary)
            .is_some_and(|p| p.is_closed())
    );
    Ok(())
}
