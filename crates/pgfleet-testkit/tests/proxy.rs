//! The fault proxy in front of the real test PostgreSQL: pass, cut, blackhole, latency,
//! reset, drop.

use std::str::FromStr as _;
use std::time::{Duration, Instant};

use pgfleet_testkit::{FaultProxy, ProxyMode, pg_admin_url, wait_until};
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection as _, PgConnection};

/// Long enough for a local round trip, short enough to keep the suite quick.
const SHORT: Duration = Duration::from_millis(400);
/// Bound on anything that should fail or succeed promptly, so a bug hangs no test.
const PROMPT: Duration = Duration::from_secs(5);

async fn proxy() -> anyhow::Result<(FaultProxy, PgConnectOptions)> {
    let admin = PgConnectOptions::from_str(&pg_admin_url())?;
    let proxy = FaultProxy::start(format!("{}:{}", admin.get_host(), admin.get_port())).await?;
    let through = admin.host("127.0.0.1").port(proxy.port());
    Ok((proxy, through))
}

async fn connect(options: &PgConnectOptions) -> anyhow::Result<PgConnection> {
    Ok(tokio::time::timeout(PROMPT, PgConnection::connect_with(options)).await??)
}

async fn select_one(conn: &mut PgConnection) -> Result<i32, sqlx::Error> {
    sqlx::query_scalar("SELECT 1").fetch_one(conn).await
}

#[tokio::test]
async fn passes_traffic_and_counts_connections() -> anyhow::Result<()> {
    let (proxy, options) = proxy().await?;
    assert_eq!(proxy.mode(), ProxyMode::Pass);
    let mut conn = connect(&options).await?;
    assert_eq!(select_one(&mut conn).await?, 1);
    assert_eq!(proxy.connection_count(), 1);
    assert_eq!(proxy.accepted_count(), 1);

    conn.close().await?;
    wait_until(PROMPT, Duration::from_millis(20), async || {
        proxy.connection_count() == 0
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn cut_breaks_live_and_new_connections_and_pass_recovers() -> anyhow::Result<()> {
    let (proxy, options) = proxy().await?;
    let mut live = connect(&options).await?;
    assert_eq!(select_one(&mut live).await?, 1);

    proxy.cut();
    let after_cut = tokio::time::timeout(PROMPT, select_one(&mut live)).await?;
    assert!(after_cut.is_err(), "query on a cut connection: {after_cut:?}");
    let new = tokio::time::timeout(PROMPT, PgConnection::connect_with(&options)).await?;
    assert!(new.is_err(), "connecting through a cut proxy succeeded");
    wait_until(PROMPT, Duration::from_millis(20), async || {
        proxy.connection_count() == 0
    })
    .await?;

    proxy.pass();
    let mut again = connect(&options).await?;
    assert_eq!(select_one(&mut again).await?, 1);
    Ok(())
}

#[tokio::test]
async fn blackhole_hangs_traffic_until_pass() -> anyhow::Result<()> {
    let (proxy, options) = proxy().await?;
    let mut live = connect(&options).await?;

    proxy.blackhole();
    let mut stuck = tokio::spawn(async move {
        let one = select_one(&mut live).await;
        (one, live)
    });
    assert!(
        tokio::time::timeout(SHORT, &mut stuck).await.is_err(),
        "a query answered through a blackhole"
    );
    assert!(
        tokio::time::timeout(SHORT, PgConnection::connect_with(&options))
            .await
            .is_err(),
        "a connect finished through a blackhole"
    );
    // Held, not closed: the first connection is still counted.
    assert!(proxy.connection_count() >= 1);

    // The network comes back: the held query completes.
    proxy.pass();
    let (one, _live) = tokio::time::timeout(PROMPT, stuck).await??;
    assert_eq!(one?, 1);
    Ok(())
}

#[tokio::test]
async fn latency_delays_round_trips() -> anyhow::Result<()> {
    let (proxy, options) = proxy().await?;
    let mut conn = connect(&options).await?;
    let delay = Duration::from_millis(150);

    proxy.latency(delay);
    assert_eq!(proxy.mode(), ProxyMode::Latency(delay));
    let started = Instant::now();
    assert_eq!(select_one(&mut conn).await?, 1);
    let took = started.elapsed();
    assert!(took >= delay, "a query took {took:?} with {delay:?} latency");
    Ok(())
}

#[tokio::test]
async fn reset_connections_closes_open_ones_only() -> anyhow::Result<()> {
    let (proxy, options) = proxy().await?;
    let mut old = connect(&options).await?;
    assert_eq!(select_one(&mut old).await?, 1);

    proxy.reset_connections();
    let after = tokio::time::timeout(PROMPT, select_one(&mut old)).await?;
    assert!(after.is_err(), "query on a reset connection: {after:?}");
    assert_eq!(proxy.mode(), ProxyMode::Pass);
    let mut new = connect(&options).await?;
    assert_eq!(select_one(&mut new).await?, 1);
    Ok(())
}

#[tokio::test]
async fn dropping_the_proxy_closes_everything() -> anyhow::Result<()> {
    let (proxy, options) = proxy().await?;
    let mut conn = connect(&options).await?;
    drop(proxy);
    let after = tokio::time::timeout(PROMPT, select_one(&mut conn)).await?;
    assert!(after.is_err(), "query through a dropped proxy: {after:?}");
    wait_until(PROMPT, Duration::from_millis(20), async || {
        tokio::time::timeout(SHORT, PgConnection::connect_with(&options))
            .await
            .is_ok_and(|connected| connected.is_err())
    })
    .await?;
    Ok(())
}
