//! Throwaway databases are really created on the test server and really dropped.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pgfleet_testkit::{TestDatabase, pg_admin_url, sweep_stale_databases};
use sqlx::{AssertSqlSafe, Connection as _, PgConnection};

async fn admin() -> anyhow::Result<PgConnection> {
    Ok(PgConnection::connect(&pg_admin_url()).await?)
}

async fn exists(name: &str) -> anyhow::Result<bool> {
    let mut conn = admin().await?;
    let found = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(name)
        .fetch_one(&mut conn)
        .await?;
    conn.close().await?;
    Ok(found)
}

#[tokio::test]
async fn database_is_created_and_dropped_by_drop_now() -> anyhow::Result<()> {
    let db = TestDatabase::create("testkit_db").await?;
    let name = db.name().to_owned();
    assert!(name.starts_with("testkit_db_"), "{name}");
    assert!(name.len() <= 63, "{name}");
    assert!(exists(&name).await?, "{name} missing from pg_database");
    assert_eq!(db.database(), name);
    assert!(db.url().ends_with(&format!("/{name}")), "{}", db.url());
    assert_eq!(db.user(), "postgres");
    assert!(db.port() > 0 && !db.host().is_empty());

    let pool = db.pool().await?;
    let current: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&pool)
        .await?;
    assert_eq!(current, name);
    let mut conn = db.connect().await?;
    let one: i32 = sqlx::query_scalar("SELECT 1").fetch_one(&mut conn).await?;
    assert_eq!(one, 1);

    // Open sessions do not keep it alive.
    db.drop_now().await?;
    assert!(!exists(&name).await?, "{name} still in pg_database");
    Ok(())
}

#[tokio::test]
async fn drop_inside_a_runtime_drops_the_database() -> anyhow::Result<()> {
    let db = TestDatabase::create("testkit_db").await?;
    let name = db.name().to_owned();
    let pool = db.pool().await?;
    sqlx::query("CREATE TABLE t (id int)").execute(&pool).await?;

    drop(db);
    assert!(!exists(&name).await?, "{name} survived Drop");
    assert!(
        sqlx::query("SELECT 1").execute(&pool).await.is_err(),
        "the pool's session should have been terminated"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_on_a_multi_thread_runtime_drops_the_database() -> anyhow::Result<()> {
    let db = TestDatabase::create("testkit_db").await?;
    let name = db.name().to_owned();
    drop(db);
    assert!(!exists(&name).await?, "{name} survived Drop");
    Ok(())
}

#[tokio::test]
async fn names_are_unique_and_prefixes_checked() -> anyhow::Result<()> {
    let (a, b) = tokio::try_join!(
        TestDatabase::create("testkit_db"),
        TestDatabase::create("testkit_db")
    )?;
    assert_ne!(a.name(), b.name());

    let cases = ["Upper", "1digit", "semi;colon", "", &"p".repeat(44)];
    for prefix in cases {
        let err = TestDatabase::create(prefix).await.err().map(|e| format!("{e:#}"));
        assert!(
            err.as_deref().is_some_and(|e| e.contains("prefix")),
            "prefix {prefix:?}: {err:?}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn sweep_drops_only_stale_test_databases() -> anyhow::Result<()> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let stale = format!("testkit_sweep_{}_0123abcd", now - 7 * 3600);
    let fresh = format!("testkit_sweep_{now}_0123abcd");
    let other = "testkit_sweep_not_ours".to_owned();
    let mut conn = admin().await?;
    for name in [&stale, &fresh, &other] {
        sqlx::raw_sql(AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name}")))
            .execute(&mut conn)
            .await?;
        sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await?;
    }

    let dropped =
        sweep_stale_databases(&pg_admin_url(), "testkit_sweep", Duration::from_secs(6 * 3600)).await?;
    assert_eq!(dropped, vec![stale.clone()]);
    assert!(!exists(&stale).await?);
    assert!(exists(&fresh).await? && exists(&other).await?);

    for name in [&fresh, &other] {
        sqlx::raw_sql(AssertSqlSafe(format!("DROP DATABASE {name}")))
            .execute(&mut conn)
            .await?;
    }
    Ok(())
}
