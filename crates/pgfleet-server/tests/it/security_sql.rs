//! Statement classification and fail-closed execution, through the real
//! server against real PostgreSQL: EXPLAIN read by the statement it
//! explains, option lists read as PostgreSQL reads them, large-object and
//! other side-effect functions, the SET allow-list, READ ONLY for anything
//! not on record, the parser off the async runtime, Validate's rate limit,
//! ALTER SYSTEM redacted in the record.

use std::time::{Duration, Instant};

use pgfleet_proto::pgfleet::v1 as pb;
use pgfleet_proto::pgfleet::v1::fleet_service_client::FleetServiceClient;
use pgfleet_proto::pgfleet::v1::history_service_client::HistoryServiceClient;
use pgfleet_proto::pgfleet::v1::query_service_client::QueryServiceClient;
use tonic::Code;
use tonic::transport::Channel;
use tonic_types::StatusExt;

use crate::support::{Fleet, Session, bearer, login, run_sql, scalar, session, session_on};

fn query(channel: &Channel) -> QueryServiceClient<Channel> {
    QueryServiceClient::new(channel.clone())
}

fn on_aws(text: &str) -> pb::ExecuteRequest {
    pb::ExecuteRequest {
        query: text.to_owned(),
        database: "app".to_owned(),
        scope: Some(pb::execute_request::Scope::Cloud("aws".to_owned())),
        ..Default::default()
    }
}

async fn run(
    s: &Session,
    token: &str,
    request: pb::ExecuteRequest,
) -> Result<pb::ExecuteResponse, tonic::Status> {
    query(&s.channel)
        .execute(bearer(request, token))
        .await
        .map(tonic::Response::into_inner)
}

async fn record(s: &Session, id: &str) -> anyhow::Result<pb::ExecutionRecord> {
    Ok(HistoryServiceClient::new(s.channel.clone())
        .get_execution(bearer(pb::GetExecutionRequest { id: id.to_owned() }, &s.master))
        .await?
        .into_inner()
        .execution
        .unwrap_or_default())
}

async fn records_of(s: &Session, username: &str) -> anyhow::Result<usize> {
    Ok(HistoryServiceClient::new(s.channel.clone())
        .list_executions(bearer(
            pb::ListExecutionsRequest {
                filter: Some(pb::ExecutionFilter {
                    username: username.to_owned(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            &s.master,
        ))
        .await?
        .into_inner()
        .executions
        .len())
}

async fn count(s: &Session, sql: &str) -> anyhow::Result<i64> {
    Ok(scalar(s, "aws", "app", &format!("SELECT ({sql})::text"))
        .await?
        .unwrap_or_default()
        .parse()?)
}

#[tokio::test(flavor = "multi_thread")]
async fn explain_is_read_by_what_it_explains_and_option_repeats_are_refused() -> anyhow::Result<()> {
    let s = session("").await?;
    run_sql(
        &s,
        "aws",
        "app",
        "CREATE TABLE customers (id int PRIMARY KEY); INSERT INTO customers SELECT generate_series(1, 30)",
    )
    .await?;
    let repeated = "EXPLAIN (ANALYZE false, ANALYZE) DELETE FROM customers WHERE id = 25";
    for (who, token) in [("reader", &s.reader), ("user", &s.user), ("master", &s.master)] {
        let status = run(&s, token, on_aws(repeated)).await.expect_err(who);
        assert_eq!(status.code(), Code::InvalidArgument, "{who}: {status:?}");
        assert!(
            status.message().contains("ANALYZE is given more than once")
                && status.message().contains("column 25"),
            "{who}: {}",
            status.message()
        );
    }
    for text in [
        "EXPLAIN (ANALYZE, SPEED) SELECT 1",
        "EXPLAIN (ANALYZE yes) DELETE FROM customers WHERE id = 25",
        "VACUUM (FULL false, FULL) customers",
    ] {
        let status = run(&s, &s.master, on_aws(text)).await.expect_err(text);
        assert_eq!(status.code(), Code::InvalidArgument, "{text}: {status:?}");
    }
    assert_eq!(count(&s, "SELECT count(*) FROM customers").await?, 30);

    // EXPLAIN of a DELETE is a write with or without ANALYZE: a READER is
    // refused, a USER's runs on record.
    for text in [
        "EXPLAIN DELETE FROM customers WHERE id = 25",
        "EXPLAIN ANALYZE DELETE FROM customers WHERE id = 25",
    ] {
        let status = run(&s, &s.reader, on_aws(text)).await.expect_err(text);
        assert_eq!(status.code(), Code::PermissionDenied, "{text}: {status:?}");
    }
    let done = run(
        &s,
        &s.user,
        on_aws("EXPLAIN ANALYZE DELETE FROM customers WHERE id = 25"),
    )
    .await?;
    assert!(done.success, "{done:?}");
    assert_eq!(count(&s, "SELECT count(*) FROM customers").await?, 29);
    let recorded = record(&s, &done.execution_id).await?;
    assert!(recorded.query.contains("DELETE FROM customers"), "{recorded:?}");
    assert_eq!(
        recorded.statement_classes,
        [i32::from(pb::StatementClass::Write)],
        "{recorded:?}"
    );
    assert!(recorded.outcomes.iter().all(|o| o.success), "{recorded:?}");

    // Side-effect functions behind EXPLAIN are refused for a READER, and
    // nothing happened (no large object).
    for text in [
        "EXPLAIN ANALYZE SELECT lo_import('/etc/hostname')",
        "EXPLAIN (ANALYZE false, ANALYZE) SELECT lo_import('/etc/hostname')",
        "EXPLAIN ANALYZE SELECT lo_creat(-1)",
        "EXPLAIN ANALYZE SELECT lo_from_bytea(0, 'x')",
        "EXPLAIN ANALYZE SELECT pg_notify('c', 'x')",
        "EXPLAIN ANALYZE SELECT pg_advisory_lock(1)",
        "EXPLAIN ANALYZE SELECT pg_cancel_backend(pg_backend_pid())",
        "EXPLAIN ANALYZE SELECT pg_read_file('/etc/hostname')",
        "SELECT set_config('standard_conforming_strings', 'off', true)",
    ] {
        let status = run(&s, &s.reader, on_aws(text)).await.expect_err(text);
        assert!(
            matches!(status.code(), Code::PermissionDenied | Code::InvalidArgument),
            "{text}: {status:?}"
        );
    }
    assert_eq!(
        count(&s, "SELECT count(*) FROM pg_largeobject_metadata").await?,
        0
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_read_that_writes_is_not_on_record_so_it_runs_read_only() -> anyhow::Result<()> {
    let s = session("").await?;
    // The classifier cannot see into a function: `SELECT sneaky()` is a read.
    run_sql(
        &s,
        "aws",
        "app",
        "CREATE TABLE guard (v int);
         CREATE FUNCTION sneaky() RETURNS int LANGUAGE sql VOLATILE AS 'INSERT INTO guard VALUES (1) RETURNING v'",
    )
    .await?;
    for (who, token) in [("user", &s.user), ("master", &s.master)] {
        let done = run(&s, token, on_aws("SELECT sneaky()")).await?;
        assert!(!done.success, "{who}: {done:?}");
        let sqlstates: Vec<String> = done
            .results
            .iter()
            .map(|r| {
                r.error
                    .as_ref()
                    .and_then(|e| e.postgres.as_ref())
                    .map_or_else(String::new, |p| p.sqlstate.clone())
            })
            .collect();
        assert_eq!(sqlstates, ["25006"], "{who}: {done:?}");
    }
    assert_eq!(count(&s, "SELECT count(*) FROM guard").await?, 0);
    // Nothing ran read-write without a record: no record, no write.
    assert_eq!(records_of(&s, "s-user").await?, 0);
    // A write the classifier sees runs read-write, on record.
    let done = run(&s, &s.user, on_aws("INSERT INTO guard VALUES (2)")).await?;
    assert!(done.success, "{done:?}");
    assert_eq!(records_of(&s, "s-user").await?, 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn set_is_allow_listed_and_set_config_is_dangerous() -> anyhow::Result<()> {
    let s = session("").await?;
    for (text, setting) in [
        (
            "SET standard_conforming_strings = off",
            "standard_conforming_strings",
        ),
        ("SET backslash_quote = on", "backslash_quote"),
        (
            "SET session_replication_role = replica",
            "session_replication_role",
        ),
        (
            "SET default_transaction_read_only = off",
            "default_transaction_read_only",
        ),
    ] {
        let status = run(&s, &s.master, on_aws(text)).await.expect_err(text);
        assert_eq!(status.code(), Code::InvalidArgument, "{text}: {status:?}");
        assert!(status.message().contains(setting), "{text}: {}", status.message());
    }
    let status = run(&s, &s.user, on_aws("SELECT set_config('search_path', 'x', true)"))
        .await
        .expect_err("set_config by a USER");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let status = run(
        &s,
        &s.master,
        on_aws("SELECT set_config('search_path', 'x', true)"),
    )
    .await
    .expect_err("set_config unconfirmed");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    let done = run(
        &s,
        &s.master,
        on_aws("SET statement_timeout = '5s'; SHOW statement_timeout"),
    )
    .await?;
    assert!(done.success, "{done:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn alter_system_is_redacted_in_the_record() -> anyhow::Result<()> {
    let s = session("").await?;
    // An invalid value: PostgreSQL refuses it, so the shared server's
    // configuration is never touched; the record is written first anyway.
    let done = run(
        &s,
        &s.master,
        pb::ExecuteRequest {
            confirm_dangerous: true,
            ..on_aws("ALTER SYSTEM SET work_mem = 'hunter2-secret'")
        },
    )
    .await?;
    assert!(!done.success, "{done:?}");
    let recorded = record(&s, &done.execution_id).await?;
    assert!(recorded.query_redacted, "{recorded:?}");
    assert!(!recorded.query.contains("hunter2"), "{}", recorded.query);
    assert!(recorded.query.contains("ALTER SYSTEM"), "{}", recorded.query);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn validate_is_rate_limited_per_identity_with_retry_info() -> anyhow::Result<()> {
    let s = session_on(
        Fleet::create().await?,
        "[query.rate_limit]\nper_second = 0.01\nburst = 2\n",
    )
    .await?;
    let validate = |token: &str| {
        let mut client = query(&s.channel);
        let request = bearer(
            pb::ValidateRequest {
                query: "SELECT 1".to_owned(),
            },
            token,
        );
        async move { client.validate(request).await }
    };
    for call in 1..=2 {
        let answer = validate(&s.reader).await?.into_inner();
        assert!(answer.valid, "call {call}");
    }
    let status = validate(&s.reader).await.expect_err("over the burst");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let retry = status
        .get_error_details()
        .retry_info()
        .and_then(|info| info.retry_delay)
        .expect("a RetryInfo with a delay");
    assert!(retry > Duration::ZERO, "{retry:?}");
    // Executions have their own bucket; other identities theirs.
    assert!(run(&s, &s.reader, on_aws("SELECT 1")).await?.success);
    assert!(validate(&s.user).await?.into_inner().valid);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn login_and_health_answer_while_huge_invalid_texts_are_validated() -> anyhow::Result<()> {
    let s = session("").await?;
    let password = s
        .fleet
        .create_user("s-timed", pgfleet_engine::identity::Role::Reader)
        .await?;
    let health = || {
        let mut client = FleetServiceClient::new(s.channel.clone());
        let request = bearer(pb::GetHealthRequest::default(), &s.reader);
        async move { client.get_health(request).await }
    };
    // Baselines on an idle server: login hashes a password, health asks
    // every database; the bound is 100 ms on top of what they cost idle.
    let started = Instant::now();
    login(&s.channel, "s-timed", &password).await?;
    let login_idle = started.elapsed();
    let started = Instant::now();
    health().await?;
    let health_idle = started.elapsed();

    // About 400,000 tokens, invalid at the very end.
    let huge = format!("SELECT {} 1 1", "1 +".repeat(133_333));
    let mut validations = Vec::new();
    for _ in 0..8 {
        let mut client = query(&s.channel);
        let request = bearer(pb::ValidateRequest { query: huge.clone() }, &s.reader);
        validations.push(tokio::spawn(async move { client.validate(request).await }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    login(&s.channel, "s-timed", &password).await?;
    let login_busy = started.elapsed();
    let started = Instant::now();
    health().await?;
    let health_busy = started.elapsed();
    let still_validating = validations.iter().any(|v| !v.is_finished());
    for validation in validations {
        let answer = validation.await??.into_inner();
        assert!(!answer.valid);
        assert!(answer.parse_error.is_some_and(|e| e.byte_offset > 0));
    }
    assert!(
        still_validating,
        "the validations ended before login and health were timed"
    );
    let bound = Duration::from_millis(100);
    assert!(
        login_busy < login_idle + bound,
        "login took {login_busy:?} (idle {login_idle:?})"
    );
    assert!(
        health_busy < health_idle + bound,
        "health took {health_busy:?} (idle {health_idle:?})"
    );
    Ok(())
}
