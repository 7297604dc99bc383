//! An extra initdb cluster starts, serves, dies and comes back on the same port.

use pgfleet_testkit::{PgCluster, TestDatabase};
use sqlx::{Connection as _, PgConnection};

async fn select_one(conn: &mut PgConnection) -> Result<i32, sqlx::Error> {
    sqlx::query_scalar("SELECT 1").fetch_one(conn).await
}

#[tokio::test]
async fn cluster_starts_dies_and_comes_back() -> anyhow::Result<()> {
    let cluster = PgCluster::start().await?;
    let port = cluster.port();
    assert!(cluster.is_running().await?);
    assert_eq!(
        cluster.admin_url(),
        format!("postgres://postgres@127.0.0.1:{port}/postgres")
    );

    let mut live = PgConnection::connect(&cluster.admin_url()).await?;
    assert_eq!(select_one(&mut live).await?, 1);
    let cloud_url = cluster.create_database("cloud_a").await?;
    let mut cloud = PgConnection::connect(&cloud_url).await?;
    let name: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&mut cloud)
        .await?;
    assert_eq!(name, "cloud_a");
    let throwaway = TestDatabase::create_on(&cluster.admin_url(), "testkit_cluster").await?;
    assert_eq!(throwaway.port(), port);
    throwaway.drop_now().await?;

    cluster.kill().await?;
    assert!(!cluster.is_running().await?);
    assert!(select_one(&mut live).await.is_err(), "query on a killed server");
    assert!(
        PgConnection::connect(&cluster.admin_url()).await.is_err(),
        "connect to a killed server"
    );
    assert!(cluster.kill().await.is_err(), "killing a stopped cluster");

    cluster.restart().await?;
    assert_eq!(cluster.port(), port);
    let mut back = PgConnection::connect(&cloud_url).await?;
    assert_eq!(select_one(&mut back).await?, 1);
    back.close().await?;

    // restart of a running cluster stops it first.
    cluster.restart().await?;
    cluster.stop().await?;
    assert!(!cluster.is_running().await?);

    let data_dir = cluster.data_dir().to_owned();
    assert!(data_dir.exists());
    cluster.restart().await?;
    drop(cluster);
    assert!(!data_dir.exists(), "Drop left {}", data_dir.display());
    Ok(())
}
