//! Atomic (two-phase commit) fan-out writes on `initdb` clusters started
//! with `max_prepared_transactions > 0`: a write that commits everywhere,
//! a write that fails on one target and leaves every target unchanged, and
//! the refusals before anything runs (a target with
//! `max_prepared_transactions = 0`, a plain read).

use pgfleet_proto::pgfleet::v1 as pb;
use pgfleet_proto::pgfleet::v1::query_service_client::QueryServiceClient;
use pgfleet_testkit::{PgCluster, TestDatabase};
use sqlx::Connection as _;

use crate::support::{Fleet, Session, bad_field, bearer, fleet_database, recorded, session_on};

/// A cluster that allows prepared transactions.
async fn prepared_cluster() -> anyhow::Result<PgCluster> {
    PgCluster::builder()
        .setting("max_prepared_transactions", 32)
        .start()
        .await
}

/// Creates `accounts (id int primary key, balance int)` with the given rows.
async fn accounts(database: &TestDatabase, rows: &[(i32, i32)]) -> anyhow::Result<()> {
    let mut connection = database.connect().await?;
    sqlx::raw_sql("CREATE TABLE accounts (id int PRIMARY KEY, balance int NOT NULL CHECK (balance >= 0))")
        .execute(&mut connection)
        .await?;
    for (id, balance) in rows {
        sqlx::query("INSERT INTO accounts VALUES ($1, $2)")
            .bind(id)
            .bind(balance)
            .execute(&mut connection)
            .await?;
    }
    connection.close().await?;
    Ok(())
}

/// `id:balance` of every row, in id order.
async fn balances(s: &Session, cloud: &str) -> anyhow::Result<String> {
    let mut connection = fleet_database(s, cloud, "app").connect().await?;
    let rows: Option<String> =
        sqlx::query_scalar("SELECT string_agg(id || ':' || balance, ',' ORDER BY id) FROM accounts")
            .fetch_one(&mut connection)
            .await?;
    Ok(rows.unwrap_or_default())
}

/// The gids of the prepared transactions of `cloud`'s database.
async fn prepared_gids(s: &Session, cloud: &str) -> anyhow::Result<Vec<String>> {
    let mut connection = fleet_database(s, cloud, "app").connect().await?;
    Ok(sqlx::query_scalar(
        "SELECT gid FROM pg_prepared_xacts WHERE database = current_database() ORDER BY gid",
    )
    .fetch_all(&mut connection)
    .await?)
}

/// The stored decision of execution `id`.
async fn decision(s: &Session, id: &str) -> anyhow::Result<Option<String>> {
    let mut connection = s.fleet.history.connect().await?;
    Ok(
        sqlx::query_scalar("SELECT decision FROM pgfleet.atomic_decisions WHERE execution_id = $1::uuid")
            .bind(id)
            .fetch_optional(&mut connection)
            .await?,
    )
}

fn atomic(query: &str) -> pb::ExecuteRequest {
    pb::ExecuteRequest {
        query: query.to_owned(),
        database: "app".to_owned(),
        commit_mode: pb::CommitMode::Atomic.into(),
        ..Default::default()
    }
}

/// The phase GetExecution shows for `cloud`'s outcome.
fn phase_of(record: &pb::ExecutionRecord, cloud: &str) -> pb::AtomicPhase {
    record
        .outcomes
        .iter()
        .find(|o| o.target.as_ref().is_some_and(|t| t.cloud == cloud))
        .map_or(pb::AtomicPhase::Unspecified, |o| o.atomic_phase())
}

/// aws and gcp copies of `app` on two clusters that allow prepared
/// transactions, each with `accounts` holding `rows`.
async fn two_cluster_session(
    prefix: &str,
    rows: [&[(i32, i32)]; 2],
) -> anyhow::Result<(Session, [PgCluster; 2])> {
    let first = prepared_cluster().await?;
    let second = prepared_cluster().await?;
    let aws = TestDatabase::create_on(&first.admin_url(), &format!("{prefix}_aws_app")).await?;
    let gcp = TestDatabase::create_on(&second.admin_url(), &format!("{prefix}_gcp_app")).await?;
    accounts(&aws, rows[0]).await?;
    accounts(&gcp, rows[1]).await?;
    let history = TestDatabase::create(&format!("{prefix}_history")).await?;
    let fleet = Fleet::with_databases(history, vec![("aws", "app", aws), ("gcp", "app", gcp)]).await?;
    Ok((session_on(fleet, "").await?, [first, second]))
}

#[tokio::test(flavor = "multi_thread")]
async fn an_atomic_write_commits_on_every_target_with_its_decision_and_phases_on_record() -> anyhow::Result<()>
{
    let (s, _clusters) = two_cluster_session("atc", [&[(1, 100)], &[(1, 100)]]).await?;
    let response = QueryServiceClient::new(s.channel.clone())
        .execute(bearer(
            atomic("UPDATE accounts SET balance = balance - 30 WHERE id = 1; INSERT INTO accounts VALUES (2, 30)"),
            &s.user,
        ))
        .await?
        .into_inner();
    assert!(response.success, "{response:#?}");
    for result in &response.results {
        assert!(result.success && !result.outcome_unknown, "{result:#?}");
        let tags: Vec<&str> = result
            .statements
            .iter()
            .map(|st| st.command_tag.as_str())
            .collect();
        assert_eq!(tags, ["UPDATE 1", "INSERT 0 1"], "{result:#?}");
    }
    for cloud in ["aws", "gcp"] {
        assert_eq!(balances(&s, cloud).await?, "1:70,2:30", "{cloud}");
        assert_eq!(
            prepared_gids(&s, cloud).await?,
            Vec::<String>::new(),
            "{cloud}: nothing left prepared"
        );
    }
    assert_eq!(
        decision(&s, &response.execution_id).await?.as_deref(),
        Some("COMMIT")
    );
    let record = recorded(&s, &response.execution_id).await?;
    assert_eq!(record.status(), pb::ExecutionStatus::Succeeded, "{record:#?}");
    for cloud in ["aws", "gcp"] {
        assert_eq!(
            phase_of(&record, cloud),
            pb::AtomicPhase::Committed,
            "{cloud}: {record:#?}"
        );
    }
    for outcome in &record.outcomes {
        assert_eq!(
            outcome.command_tags,
            ["UPDATE 1", "INSERT 0 1", "PREPARE TRANSACTION", "COMMIT PREPARED"],
            "{outcome:#?}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_atomic_write_that_fails_on_one_target_leaves_every_target_unchanged() -> anyhow::Result<()> {
    // gcp already holds id 2: the INSERT fails there after aws prepared.
    let (s, _clusters) = two_cluster_session("atf", [&[(1, 100)], &[(1, 100), (2, 5)]]).await?;
    let before = [balances(&s, "aws").await?, balances(&s, "gcp").await?];
    let response = QueryServiceClient::new(s.channel.clone())
        .execute(bearer(
            atomic("UPDATE accounts SET balance = balance - 30 WHERE id = 1; INSERT INTO accounts VALUES (2, 30)"),
            &s.user,
        ))
        .await?
        .into_inner();
    assert!(!response.success, "{response:#?}");
    let result = |cloud: &str| {
        response
            .results
            .iter()
            .find(|r| r.target.as_ref().is_some_and(|t| t.cloud == cloud))
            .cloned()
            .unwrap_or_default()
    };
    let (aws, gcp) = (result("aws"), result("gcp"));
    assert!(!aws.success && !aws.outcome_unknown, "{aws:#?}");
    let aws_error = aws.error.clone().unwrap_or_default();
    assert_eq!(aws_error.code(), pb::ErrorCode::Aborted, "{aws:#?}");
    assert!(aws_error.message.contains("rolled back"), "{aws:#?}");
    let gcp_error = gcp.error.clone().unwrap_or_default();
    assert_eq!(
        gcp_error.postgres.map(|p| p.sqlstate).unwrap_or_default(),
        "23505",
        "gcp fails on its own unique violation: {gcp:#?}"
    );
    assert_eq!([balances(&s, "aws").await?, balances(&s, "gcp").await?], before);
    for cloud in ["aws", "gcp"] {
        assert_eq!(prepared_gids(&s, cloud).await?, Vec::<String>::new(), "{cloud}");
    }
    assert_eq!(
        decision(&s, &response.execution_id).await?.as_deref(),
        Some("ABORT")
    );
    let record = recorded(&s, &response.execution_id).await?;
    assert_eq!(record.status(), pb::ExecutionStatus::Failed, "{record:#?}");
    assert_eq!(
        phase_of(&record, "aws"),
        pb::AtomicPhase::RolledBack,
        "{record:#?}"
    );
    assert_eq!(
        phase_of(&record, "gcp"),
        pb::AtomicPhase::NotPrepared,
        "{record:#?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn atomic_mode_is_refused_before_anything_runs_on_a_target_without_prepared_transactions()
-> anyhow::Result<()> {
    // aws allows prepared transactions; azure is on the shared server,
    // started with max_prepared_transactions = 0.
    let cluster = prepared_cluster().await?;
    let aws = TestDatabase::create_on(&cluster.admin_url(), "atr_aws_app").await?;
    let azure = TestDatabase::create("atr_azure_app").await?;
    accounts(&aws, &[(1, 100)]).await?;
    accounts(&azure, &[(1, 100)]).await?;
    let mut shared = azure.connect().await?;
    let setting: String = sqlx::query_scalar("SHOW max_prepared_transactions")
        .fetch_one(&mut shared)
        .await?;
    assert_eq!(
        setting, "0",
        "the shared server must not allow prepared transactions for this test"
    );
    let history = TestDatabase::create("atr_history").await?;
    let fleet = Fleet::with_databases(history, vec![("aws", "app", aws), ("azure", "app", azure)]).await?;
    let s = session_on(fleet, "").await?;
    let status = QueryServiceClient::new(s.channel.clone())
        .execute(bearer(
            atomic("UPDATE accounts SET balance = 0 WHERE id = 1"),
            &s.user,
        ))
        .await
        .expect_err("refused");
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    assert!(
        status.message().contains("max_prepared_transactions"),
        "{}",
        status.message()
    );
    assert!(
        status.message().contains("azure"),
        "names the target: {}",
        status.message()
    );
    assert!(
        !status.message().contains("aws"),
        "names only that target: {}",
        status.message()
    );
    for cloud in ["aws", "azure"] {
        assert_eq!(balances(&s, cloud).await?, "1:100", "{cloud} unchanged");
    }
    // Nothing on record either.
    let mut store = s.fleet.history.connect().await?;
    let records: i64 = sqlx::query_scalar("SELECT count(*) FROM pgfleet.executions WHERE kind = 'QUERY'")
        .fetch_one(&mut store)
        .await?;
    assert_eq!(records, 0);

    // A plain read has nothing to commit: INVALID_ARGUMENT on commit_mode.
    let status = QueryServiceClient::new(s.channel.clone())
        .execute(bearer(atomic("SELECT * FROM accounts"), &s.user))
        .await
        .expect_err("refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert_eq!(bad_field(&status), "commit_mode");
    // The same write per target (the default) runs.
    let response = QueryServiceClient::new(s.channel.clone())
        .execute(bearer(
            pb::ExecuteRequest {
                commit_mode: pb::CommitMode::PerTarget.into(),
                ..atomic("UPDATE accounts SET balance = 1 WHERE id = 1")
            },
            &s.user,
        ))
        .await?
        .into_inner();
    assert!(response.success, "{response:#?}");
    Ok(())
}

/// Prepares a transaction inserting `id` into `accounts` of `database`
/// under `gid`, as a coordinator that died would have left it.
async fn leave_prepared(database: &TestDatabase, id: i32, gid: &str) -> anyhow::Result<()> {
    let mut connection = database.connect().await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "BEGIN; INSERT INTO accounts VALUES ({id}, 1); PREPARE TRANSACTION '{gid}'"
    )))
    .execute(&mut connection)
    .await?;
    connection.close().await?;
    Ok(())
}

async fn gids_of(database: &TestDatabase) -> anyhow::Result<Vec<String>> {
    let mut connection = database.connect().await?;
    Ok(sqlx::query_scalar(
        "SELECT gid FROM pg_prepared_xacts WHERE database = current_database() ORDER BY gid",
    )
    .fetch_all(&mut connection)
    .await?)
}

/// Recovery through the engine, without a server (so no loop of its own
/// runs beside the test): pgfleet gids are finished by their decision
/// (COMMIT stored → committed; none, and no RUNNING record → ABORT decided
/// and rolled back), exactly once between two concurrent runners, nothing
/// while another session holds the recovery lock, and other tools'
/// prepared transactions (or gids that only look like pgfleet's) are never
/// touched.
#[tokio::test(flavor = "multi_thread")]
async fn recovery_finishes_pgfleet_gids_by_decision_once_and_never_touches_others() -> anyhow::Result<()> {
    use pgfleet_engine::atomic_recovery::recover_once;
    use pgfleet_engine::query::gid;

    let cluster = prepared_cluster().await?;
    let aws = TestDatabase::create_on(&cluster.admin_url(), "atv_aws_app").await?;
    let gcp = TestDatabase::create_on(&cluster.admin_url(), "atv_gcp_app").await?;
    accounts(&aws, &[]).await?;
    accounts(&gcp, &[]).await?;
    let history = TestDatabase::create("atv_history").await?;
    let store = history.pool().await?;
    pgfleet_engine::history_store::MIGRATOR.run(&store).await?;

    // Six executions: even ones decided COMMIT, odd ones undecided (no
    // record either: their coordinator is gone), each on both targets.
    let executions: Vec<uuid::Uuid> = (0..6).map(|_| uuid::Uuid::now_v7()).collect();
    for (n, execution) in executions.iter().enumerate() {
        let id = i32::try_from(n)?;
        leave_prepared(&aws, id, &gid::gid(*execution, 0)).await?;
        leave_prepared(&gcp, id, &gid::gid(*execution, 1)).await?;
        if n % 2 == 0 {
            sqlx::query(
                "INSERT INTO pgfleet.atomic_decisions (execution_id, decision, decided_by) \
                 VALUES ($1, 'COMMIT', 'coordinator')",
            )
            .bind(execution)
            .execute(&store)
            .await?;
        }
    }
    // Other tools' prepared transactions, one of them pgfleet-like.
    let foreign = [
        "xa:other-tool:1".to_owned(),
        format!("pgfleet:{}:01", executions[0]),
        format!("PGFLEET:{}:0", uuid::Uuid::now_v7()),
    ];
    for (n, other) in foreign.iter().enumerate() {
        leave_prepared(&aws, 100 + i32::try_from(n)?, other).await?;
    }

    let fleet = Fleet::with_databases(
        TestDatabase::create("atv_unused_history").await?,
        vec![("aws", "app", aws), ("gcp", "app", gcp)],
    )
    .await?;
    let config = fleet.config("").config;
    let registry = pgfleet_registry::Registry::new(&config);

    // Another runner holds the lock: this one does nothing.
    let mut holder = store.begin().await?;
    let (namespace, purpose) = pgfleet_engine::advisory_locks::HistoryLock::AtomicRecovery.key();
    sqlx::query("SELECT pg_advisory_xact_lock($1, $2)")
        .bind(namespace)
        .bind(purpose)
        .execute(&mut *holder)
        .await?;
    assert_eq!(recover_once(&registry, &store).await?, None);
    assert_eq!(
        gids_of(fleet.database("aws", "app")).await?.len(),
        6 + foreign.len()
    );
    holder.rollback().await?;

    // Two runners at once: every gid is finished by exactly one of them.
    let (first, second) = tokio::join!(recover_once(&registry, &store), recover_once(&registry, &store));
    let passes: Vec<_> = [first?, second?].into_iter().flatten().collect();
    assert!(!passes.is_empty(), "at least one runner got the lock");
    let committed: u64 = passes.iter().map(|p| p.committed).sum();
    let rolled_back: u64 = passes.iter().map(|p| p.rolled_back).sum();
    let raced: u64 = passes.iter().map(|p| p.raced).sum();
    assert_eq!((committed, rolled_back, raced), (6, 6, 0), "{passes:#?}");
    assert!(
        passes.iter().all(|p| p.unreachable.is_empty() && p.in_doubt == 0),
        "{passes:#?}"
    );

    let mut expected_foreign = foreign.to_vec();
    expected_foreign.sort();
    assert_eq!(
        gids_of(fleet.database("aws", "app")).await?,
        expected_foreign,
        "only others' are left"
    );
    assert_eq!(gids_of(fleet.database("gcp", "app")).await?, Vec::<String>::new());
    for cloud in ["aws", "gcp"] {
        let mut connection = fleet.database(cloud, "app").connect().await?;
        let ids: Vec<i32> = sqlx::query_scalar("SELECT id FROM accounts ORDER BY id")
            .fetch_all(&mut connection)
            .await?;
        assert_eq!(ids, [0, 2, 4], "{cloud}: the committed executions only");
    }
    for (n, execution) in executions.iter().enumerate() {
        let decided: (String, String) = sqlx::query_as(
            "SELECT decision, decided_by FROM pgfleet.atomic_decisions WHERE execution_id = $1",
        )
        .bind(execution)
        .fetch_one(&store)
        .await?;
        let expected = if n % 2 == 0 {
            ("COMMIT", "coordinator")
        } else {
            ("ABORT", "recovery")
        };
        assert_eq!(
            (decided.0.as_str(), decided.1.as_str()),
            expected,
            "execution {n}"
        );
    }
    let phases: Vec<(i32, String)> = sqlx::query_as(
        "SELECT count(*)::int, phase FROM pgfleet.atomic_branches GROUP BY phase ORDER BY phase",
    )
    .fetch_all(&store)
    .await?;
    assert_eq!(
        phases,
        [(6, "COMMITTED".to_owned()), (6, "ROLLED_BACK".to_owned())]
    );

    // A pass with nothing to do changes nothing.
    let idle = recover_once(&registry, &store).await?.expect("the lock is free");
    assert_eq!((idle.committed, idle.rolled_back, idle.raced), (0, 0, 0));
    assert_eq!(gids_of(fleet.database("aws", "app")).await?, expected_foreign);
    let mut aws = fleet.database("aws", "app").connect().await?;
    for other in &foreign {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("ROLLBACK PREPARED '{other}'")))
            .execute(&mut aws)
            .await?;
    }
    store.close().await;
    Ok(())
}
