//! Extra initdb clusters: start, serve, die and come back on the same port; carry
//! settings; stream to replicas that pause, lag, catch up and get promoted.

use std::time::Duration;

use pgfleet_testkit::{PgCluster, PgClusterBuilder, TestDatabase, wait_until};
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

#[tokio::test]
async fn settings_load_pg_stat_statements_and_reload() -> anyhow::Result<()> {
    let cluster = PgCluster::builder()
        .setting("shared_preload_libraries", "pg_stat_statements")
        .setting("log_min_duration_statement", "250ms")
        // A custom setting shows the value arrives quoted as given.
        .setting("pgfleet.note", r"it's a \ test")
        .start()
        .await?;
    let mut conn = cluster.connect().await?;
    sqlx::query("CREATE EXTENSION pg_stat_statements")
        .execute(&mut conn)
        .await?;
    // An alias, unlike a literal, survives the normalisation of the statement text.
    sqlx::query("SELECT count(*) FROM pg_class AS testkit_marker")
        .execute(&mut conn)
        .await?;
    let rows = sqlx::query("SELECT * FROM pg_stat_statements")
        .fetch_all(&mut conn)
        .await?;
    assert!(!rows.is_empty(), "pg_stat_statements is empty");
    let calls: i64 = sqlx::query_scalar(
        "SELECT coalesce(sum(calls), 0)::int8 FROM pg_stat_statements WHERE query LIKE '%testkit_marker%'",
    )
    .fetch_one(&mut conn)
    .await?;
    assert_eq!(calls, 1, "calls of the marked statement");
    let show = async |name: &str| -> anyhow::Result<String> {
        let mut fresh = cluster.connect().await?;
        let sql = format!("SHOW {name}");
        Ok(sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .fetch_one(&mut fresh)
            .await?)
    };
    assert_eq!(show("log_min_duration_statement").await?, "250ms");
    assert_eq!(show("pgfleet.note").await?, r"it's a \ test");

    cluster.set_setting("log_min_duration_statement", 0)?;
    cluster.reload().await?;
    assert_eq!(show("log_min_duration_statement").await?, "0");
    conn.close().await?;
    Ok(())
}

#[tokio::test]
async fn prepared_transactions_follow_max_prepared_transactions() -> anyhow::Result<()> {
    let cluster = PgCluster::builder()
        .setting("max_prepared_transactions", 10)
        .start()
        .await?;
    let mut conn = cluster.connect().await?;
    let mut other = cluster.connect().await?;
    sqlx::query("CREATE TABLE t (id int)").execute(&mut conn).await?;
    let count = async |conn: &mut PgConnection| -> Result<i64, sqlx::Error> {
        sqlx::query_scalar("SELECT count(*) FROM t").fetch_one(conn).await
    };
    let prepared = async |conn: &mut PgConnection| -> Result<Vec<String>, sqlx::Error> {
        sqlx::query_scalar("SELECT gid FROM pg_prepared_xacts ORDER BY gid")
            .fetch_all(conn)
            .await
    };

    sqlx::raw_sql("BEGIN; INSERT INTO t VALUES (1); PREPARE TRANSACTION 'testkit_1'")
        .execute(&mut conn)
        .await?;
    assert_eq!(prepared(&mut other).await?, ["testkit_1"]);
    assert_eq!(count(&mut other).await?, 0, "prepared, not committed");
    sqlx::query("COMMIT PREPARED 'testkit_1'")
        .execute(&mut other)
        .await?;
    assert_eq!(count(&mut other).await?, 1);

    // A prepared transaction survives a crash, which is what two-phase recovery relies on.
    sqlx::raw_sql("BEGIN; INSERT INTO t VALUES (2); PREPARE TRANSACTION 'testkit_2'")
        .execute(&mut conn)
        .await?;
    cluster.kill().await?;
    assert!(!cluster.accepts_connections().await);
    cluster.restart().await?;
    assert!(cluster.accepts_connections().await);
    let mut after = cluster.connect().await?;
    assert_eq!(prepared(&mut after).await?, ["testkit_2"]);
    sqlx::query("ROLLBACK PREPARED 'testkit_2'")
        .execute(&mut after)
        .await?;
    assert_eq!(count(&mut after).await?, 1);
    after.close().await?;

    // The setting is what allows them: at 0 (PostgreSQL's default) PREPARE is refused.
    cluster.set_setting("max_prepared_transactions", 0)?;
    cluster.restart().await?;
    let mut off = cluster.connect().await?;
    let refused = sqlx::raw_sql("BEGIN; PREPARE TRANSACTION 'testkit_3'")
        .execute(&mut off)
        .await
        .err()
        .and_then(|e| e.into_database_error())
        .and_then(|e| e.code().map(|code| code.into_owned()));
    assert_eq!(
        refused.as_deref(),
        Some("55000"),
        "PREPARE with max_prepared_transactions = 0"
    );
    Ok(())
}

#[tokio::test]
async fn bad_settings_are_refused_before_anything_starts() {
    let cases: [(&str, PgClusterBuilder, &str); 6] = [
        (
            "reserved port",
            PgCluster::builder().setting("port", 5999),
            "set by the test kit",
        ),
        (
            "reserved socket directory",
            PgCluster::builder().setting("unix_socket_directories", "/tmp"),
            "set by the test kit",
        ),
        (
            "not a name",
            PgCluster::builder().setting("Work-Mem", "1MB"),
            "not a PostgreSQL setting name",
        ),
        (
            "newline in a value",
            PgCluster::builder().setting("work_mem", "1MB\nfsync = on"),
            "control character",
        ),
        (
            "slot without a primary",
            PgCluster::builder().replication_slot("s1"),
            "for replicas",
        ),
        (
            "empty name",
            PgCluster::builder().setting("", 1),
            "not a PostgreSQL setting name",
        ),
    ];
    for (case, builder, want) in cases {
        let err = builder.start().await.err().map(|e| format!("{e:#}"));
        assert!(
            err.as_deref().is_some_and(|e| e.contains(want)),
            "case {case}: {err:?}"
        );
    }
}

#[tokio::test]
async fn replica_streams_lags_while_paused_and_is_writable_after_promote() -> anyhow::Result<()> {
    let primary = PgCluster::start().await?;
    let mut on_primary = primary.connect().await?;
    sqlx::raw_sql("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1)")
        .execute(&mut on_primary)
        .await?;

    let replica = PgCluster::builder()
        .replica_of(&primary)
        .replication_slot("testkit_slot")
        .start()
        .await?;
    assert_ne!(replica.port(), primary.port());
    assert_eq!(replica.primary_port(), Some(primary.port()));
    assert_eq!(replica.replication_slot(), Some("testkit_slot"));
    assert!(replica.is_in_recovery().await?);
    assert!(!primary.is_in_recovery().await?);
    let (state, slot_active): (String, bool) = sqlx::query_as(
        "SELECT r.state, s.active FROM pg_stat_replication r \
         JOIN pg_replication_slots s ON s.active_pid = r.pid \
         WHERE r.application_name = $1 AND s.slot_name = 'testkit_slot'",
    )
    .bind(replica.application_name())
    .fetch_one(&mut on_primary)
    .await?;
    assert_eq!((state.as_str(), slot_active), ("streaming", true));
    let mut on_replica = replica.connect().await?;
    let receiver: String = sqlx::query_scalar("SELECT status FROM pg_stat_wal_receiver")
        .fetch_one(&mut on_replica)
        .await?;
    assert_eq!(receiver, "streaming");

    let ids = async |conn: &mut PgConnection| -> Result<Vec<i32>, sqlx::Error> {
        sqlx::query_scalar("SELECT id FROM t ORDER BY id")
            .fetch_all(conn)
            .await
    };
    assert_eq!(ids(&mut on_replica).await?, [1], "the base backup's row");
    sqlx::query("INSERT INTO t VALUES (2)")
        .execute(&mut on_primary)
        .await?;
    replica.wait_for_replay().await?;
    assert_eq!(
        ids(&mut on_replica).await?,
        [1, 2],
        "a row streamed after the backup"
    );
    let write = sqlx::query("INSERT INTO t VALUES (99)")
        .execute(&mut on_replica)
        .await
        .err()
        .and_then(|e| e.into_database_error())
        .and_then(|e| e.code().map(|code| code.into_owned()));
    assert_eq!(write.as_deref(), Some("25006"), "a write on a replica");

    replica.pause_replay().await?;
    assert!(replica.is_replay_paused().await?);
    sqlx::query("INSERT INTO t VALUES (3)")
        .execute(&mut on_primary)
        .await?;
    // Received but not replayed: the replica has the WAL and still shows the old data.
    wait_until(Duration::from_secs(10), Duration::from_millis(20), async || {
        let mut conn = replica.connect().await?;
        let pending: bool = sqlx::query_scalar("SELECT pg_last_wal_receive_lsn() > pg_last_wal_replay_lsn()")
            .fetch_one(&mut conn)
            .await?;
        anyhow::Ok(pending)
    })
    .await?;
    let lag = replica.replay_lag().await?;
    assert!(lag.bytes > 0, "no lag while paused: {lag:?}");
    assert!(
        lag.time.is_some_and(|t| t > Duration::ZERO),
        "no lag time while paused: {lag:?}"
    );
    assert_eq!(ids(&mut on_replica).await?, [1, 2], "replayed while paused");

    replica.resume_replay().await?;
    assert!(!replica.is_replay_paused().await?);
    replica.wait_for_replay().await?;
    assert_eq!(ids(&mut on_replica).await?, [1, 2, 3], "caught up after resume");

    // The primary goes away and the replica takes over.
    primary.stop().await?;
    replica.promote().await?;
    assert!(!replica.is_in_recovery().await?);
    assert!(
        replica.replay_lag().await.is_err(),
        "replay lag of a promoted cluster"
    );
    let mut promoted = replica.connect().await?;
    sqlx::query("INSERT INTO t VALUES (4)")
        .execute(&mut promoted)
        .await?;
    assert_eq!(ids(&mut promoted).await?, [1, 2, 3, 4]);
    Ok(())
}

#[tokio::test]
async fn replica_helpers_refuse_a_primary() -> anyhow::Result<()> {
    let primary = PgCluster::start().await?;
    assert_eq!(primary.primary_port(), None);
    assert_eq!(primary.application_name(), None);
    assert!(primary.replay_lag().await.is_err());
    assert!(primary.wait_for_replay().await.is_err());
    assert!(primary.promote().await.is_err(), "promoting a primary");
    Ok(())
}
