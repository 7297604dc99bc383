//! HistoryService and the write-ahead audit trail, against the real history
//! store and real target databases.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use pgfleet_config::AuditConfig;
use pgfleet_engine::audit::{
    self, Actor, AuditLog, Kind, NewExecution, RecordedOutcome, RecordedTarget, TargetScope,
};
use pgfleet_engine::identity::Role;
use pgfleet_proto::pgfleet::v1 as pb;
use pgfleet_proto::pgfleet::v1::history_service_client::HistoryServiceClient;
use pgfleet_proto::pgfleet::v1::query_service_client::QueryServiceClient;
use pgfleet_testkit::{FaultProxy, wait_until};
use tonic::Code;
use tonic::transport::Channel;
use uuid::Uuid;

use crate::support::{
    self, Fleet, Session, bad_field, bearer, channel, fleet_database, login, run_sql, session,
};

fn history(channel: &Channel) -> HistoryServiceClient<Channel> {
    HistoryServiceClient::new(channel.clone())
}

fn query(channel: &Channel) -> QueryServiceClient<Channel> {
    QueryServiceClient::new(channel.clone())
}

fn on_all_clouds(sql: &str, database: &str) -> pb::ExecuteRequest {
    pb::ExecuteRequest {
        query: sql.to_owned(),
        database: database.to_owned(),
        scope: Some(pb::execute_request::Scope::AllClouds(pb::AllClouds {})),
        ..Default::default()
    }
}

fn on_cloud(sql: &str, cloud: &str) -> pb::ExecuteRequest {
    pb::ExecuteRequest {
        query: sql.to_owned(),
        database: "app".to_owned(),
        scope: Some(pb::execute_request::Scope::Cloud(cloud.to_owned())),
        ..Default::default()
    }
}

async fn app_pool(s: &Session, cloud: &str) -> anyhow::Result<sqlx::PgPool> {
    fleet_database(s, cloud, "app").pool().await
}

async fn count_rows(s: &Session, cloud: &str, table: &str) -> anyhow::Result<i64> {
    let pool = app_pool(s, cloud).await?;
    let count = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
        .fetch_one(&pool)
        .await?;
    pool.close().await;
    Ok(count)
}

async fn get_record(channel: &Channel, token: &str, id: &str) -> Result<pb::ExecutionRecord, tonic::Status> {
    let response = history(channel)
        .get_execution(bearer(pb::GetExecutionRequest { id: id.to_owned() }, token))
        .await?;
    Ok(response.into_inner().execution.unwrap_or_default())
}

async fn verify(channel: &Channel, token: &str) -> anyhow::Result<pb::VerifyChainResponse> {
    Ok(history(channel)
        .verify_chain(bearer(pb::VerifyChainRequest::default(), token))
        .await?
        .into_inner())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_write_is_on_record_with_every_field_and_reads_are_not() -> anyhow::Result<()> {
    let s = session("").await?;
    run_sql(
        &s,
        "aws",
        "app",
        "CREATE TABLE items (id int PRIMARY KEY, name text)",
    )
    .await?;
    // gcp lacks the table: one target fails, the other succeeds.

    let mut request = bearer(
        on_all_clouds("INSERT INTO items VALUES (1, 'one')", "app"),
        &s.user,
    );
    request
        .metadata_mut()
        .insert("x-request-id", "req-audit-1".parse()?);
    let response = query(&s.channel).execute(request).await?;
    assert_eq!(
        response
            .metadata()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok()),
        Some("req-audit-1")
    );
    let response = response.into_inner();
    assert!(!response.success);

    let record = get_record(&s.channel, &s.user, &response.execution_id).await?;
    assert_eq!(record.id, response.execution_id);
    let actor = record.actor.clone().unwrap_or_default();
    assert_eq!(
        actor.principal,
        Some(pb::actor::Principal::Username("s-user".to_owned()))
    );
    assert_eq!(actor.role, i32::from(pb::Role::User));
    assert!(
        record.client_address.starts_with("127.0.0.1:"),
        "{}",
        record.client_address
    );
    assert_eq!(record.request_id, "req-audit-1");
    assert_eq!(record.query, "INSERT INTO items VALUES (1, 'one')");
    assert_eq!(record.kind, i32::from(pb::RecordKind::Query));
    assert_eq!(
        record.statement_classes,
        vec![i32::from(pb::StatementClass::Write)]
    );
    assert_eq!(record.database, "app");
    assert_eq!(record.scope, i32::from(pb::TargetScope::AllClouds));
    assert_eq!(record.targets.len(), 2);
    assert_eq!(record.status, i32::from(pb::ExecutionStatus::Partial));
    assert!(!record.success && !record.confirmed_dangerous && !record.read_only);
    let (started, finished) = (
        record.started_at.unwrap_or_default(),
        record.finished_at.unwrap_or_default(),
    );
    assert!(
        finished.seconds > started.seconds
            || (finished.seconds == started.seconds && finished.nanos >= started.nanos)
    );

    // The fingerprint is the validator's.
    let validated = query(&s.channel)
        .validate(bearer(
            pb::ValidateRequest {
                query: record.query.clone(),
            },
            &s.user,
        ))
        .await?
        .into_inner();
    assert_eq!(record.fingerprint, validated.fingerprint);

    let outcome = |cloud: &str| {
        record
            .outcomes
            .iter()
            .find(|o| o.target.as_ref().is_some_and(|t| t.cloud == cloud))
            .cloned()
            .unwrap_or_default()
    };
    let aws = outcome("aws");
    assert!(aws.success);
    assert_eq!(aws.command_tags, vec!["INSERT 0 1".to_owned()]);
    assert_eq!(aws.rows_affected, 1);
    assert!(aws.duration.is_some() && aws.error.is_none() && !aws.outcome_unknown);
    let gcp = outcome("gcp");
    assert!(!gcp.success);
    let error = gcp.error.unwrap_or_default();
    assert_eq!(
        error.postgres.map(|pg| pg.sqlstate).as_deref(),
        Some("42P01"),
        "undefined_table is kept with its SQLSTATE"
    );
    assert_eq!(gcp.failed_statement_index, Some(0));

    let opened = record.opened.clone().unwrap_or_default();
    let closed = record.closed.clone().unwrap_or_default();
    assert!(opened.sequence >= 1 && closed.sequence > opened.sequence);
    assert_eq!(opened.hash.len(), 64);

    // A plain read is not recorded (audit.reads = false): its id is unknown.
    let read = query(&s.channel)
        .execute(bearer(on_cloud("SELECT 1", "aws"), &s.user))
        .await?
        .into_inner();
    let missing = get_record(&s.channel, &s.user, &read.execution_id).await.err();
    assert_eq!(missing.map(|e| e.code()), Some(Code::NotFound));

    let listed = history(&s.channel)
        .list_executions(bearer(pb::ListExecutionsRequest::default(), &s.master))
        .await?
        .into_inner();
    assert_eq!(listed.total_count, 1);

    let verified = verify(&s.channel, &s.master).await?;
    assert!(verified.ok, "{:?}", verified.first_broken);
    assert_eq!(verified.records_checked, 2);
    s.server.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn passwords_in_sql_never_reach_the_trail() -> anyhow::Result<()> {
    let s = session("").await?;
    let role = format!("audit_probe_{}", Uuid::new_v4().simple());
    let secret = format!("pw-{}", Uuid::new_v4().simple());
    let response = query(&s.channel)
        .execute(bearer(
            pb::ExecuteRequest {
                confirm_dangerous: true,
                ..on_cloud(&format!("CREATE ROLE {role} LOGIN PASSWORD '{secret}'"), "aws")
            },
            &s.master,
        ))
        .await?
        .into_inner();
    // Roles are cluster-wide: remove it whatever happens below.
    run_sql(&s, "aws", "app", &format!("DROP ROLE IF EXISTS {role}")).await?;
    assert!(response.success, "{:?}", response.results);

    let record = get_record(&s.channel, &s.master, &response.execution_id).await?;
    assert!(record.query_redacted);
    assert!(record.confirmed_dangerous);
    assert_eq!(record.findings.first().map(|f| f.code.as_str()), Some("ROLE"));
    assert_eq!(record.query, format!("CREATE ROLE {role} LOGIN PASSWORD $1"));
    let history_pool = s.fleet.history.pool().await?;
    let stored: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pgfleet.executions e WHERE e::text LIKE '%' || $1 || '%'")
            .bind(&secret)
            .fetch_one(&history_pool)
            .await?;
    assert_eq!(stored, 0, "the password is stored in the audit trail");
    history_pool.close().await;
    assert!(verify(&s.channel, &s.master).await?.ok);
    s.server.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn reads_are_recorded_when_configured() -> anyhow::Result<()> {
    let s = session("[audit]\nreads = true\n").await?;
    let read = query(&s.channel)
        .execute(bearer(on_cloud("SELECT 1", "aws"), &s.reader))
        .await?
        .into_inner();
    let record = get_record(&s.channel, &s.reader, &read.execution_id).await?;
    assert_eq!(record.status, i32::from(pb::ExecutionStatus::Succeeded));
    assert_eq!(
        record.statement_classes,
        vec![i32::from(pb::StatementClass::Read)]
    );
    assert!(record.read_only, "READER executions run READ ONLY");
    s.server.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_write_is_refused_when_the_audit_trail_cannot_be_written() -> anyhow::Result<()> {
    let s = session("[audit]\nwrite_timeout = '1s'\n").await?;
    run_sql(&s, "aws", "app", "CREATE TABLE items (id int PRIMARY KEY)").await?;
    run_sql(&s, "gcp", "app", "CREATE TABLE items (id int PRIMARY KEY)").await?;

    // Hold the chain head: logins and sessions still work (users are read
    // from the same store), but no record can be appended.
    let history_pool = s.fleet.history.pool().await?;
    let mut blocker = history_pool.begin().await?;
    sqlx::query("LOCK TABLE pgfleet.audit_chain_head IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *blocker)
        .await?;

    for request in [
        on_all_clouds("INSERT INTO items VALUES (1)", "app"),
        on_all_clouds("CREATE TABLE other (id int)", "app"),
    ] {
        let token = if request.query.starts_with("CREATE") {
            &s.master
        } else {
            &s.user
        };
        let refused = query(&s.channel)
            .execute(bearer(request.clone(), token))
            .await
            .err()
            .unwrap_or_else(|| panic!("{} ran without an audit record", request.query));
        assert_eq!(refused.code(), Code::Unavailable, "{}", refused.message());
        assert!(
            refused.message().contains("no target saw it"),
            "{}",
            refused.message()
        );
    }
    let stream_refused = query(&s.channel)
        .execute_stream(bearer(
            pb::ExecuteStreamRequest {
                query: "INSERT INTO items VALUES (2)".to_owned(),
                database: "app".to_owned(),
                ..Default::default()
            },
            &s.user,
        ))
        .await
        .err()
        .map(|status| status.code());
    assert_eq!(stream_refused, Some(Code::Unavailable));

    // The write that timed out commits its record once the lock goes: it
    // must then say it was refused, not that it ran.
    blocker.rollback().await?;
    for cloud in ["aws", "gcp"] {
        assert_eq!(
            count_rows(&s, cloud, "items").await?,
            0,
            "{cloud} saw a refused write"
        );
        let other: Option<String> = sqlx::query_scalar("SELECT to_regclass('public.other')::text")
            .fetch_one(&app_pool(&s, cloud).await?)
            .await?;
        assert_eq!(other, None, "{cloud} saw a refused CREATE TABLE");
    }
    wait_until(Duration::from_secs(20), Duration::from_millis(100), async || {
        let statuses: Vec<String> = sqlx::query_scalar("SELECT status FROM pgfleet.executions")
            .fetch_all(&history_pool)
            .await?;
        anyhow::Ok(statuses.iter().all(|status| status == "REFUSED"))
    })
    .await?;
    let verified = verify(&s.channel, &s.master).await?;
    assert!(verified.ok, "{:?}", verified.first_broken);
    history_pool.close().await;
    s.server.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn with_the_history_store_down_writes_are_refused_and_nothing_changes() -> anyhow::Result<()> {
    let mut fleet = Fleet::create().await?;
    let proxy = FaultProxy::start(format!("{}:{}", fleet.history.host(), fleet.history.port())).await?;
    fleet.history_port = Some(proxy.port());
    let server = fleet
        .start("[audit]\nwrite_timeout = '1s'\n[history.pool]\nacquire_timeout = '2s'\n")
        .await?;
    let channel = channel(&server).await?;
    let password = fleet.create_user("writer", Role::User).await?;
    let token = login(&channel, "writer", &password).await?;
    let (_, _, aws_app) = fleet
        .databases
        .iter()
        .find(|(cloud, name, _)| cloud == "aws" && name == "app")
        .ok_or_else(|| anyhow::anyhow!("no aws app"))?;
    let target = aws_app.pool().await?;
    sqlx::query("CREATE TABLE items (id int PRIMARY KEY)")
        .execute(&target)
        .await?;

    proxy.cut();
    for sql in [
        "INSERT INTO items VALUES (1)",
        "DELETE FROM items",
        "INSERT INTO items VALUES (2)",
    ] {
        let refused = query(&channel)
            .execute(bearer(on_cloud(sql, "aws"), &token))
            .await
            .err()
            .unwrap_or_else(|| panic!("{sql} ran with the history store down"));
        assert_eq!(refused.code(), Code::Unavailable, "{}", refused.message());
    }
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM items")
        .fetch_one(&target)
        .await?;
    assert_eq!(rows, 0, "a write reached the target without an audit record");

    // Back: the next write runs and is on record.
    proxy.pass();
    let mut response = None;
    wait_until(
        Duration::from_secs(20),
        Duration::from_millis(200),
        async || match query(&channel)
            .execute(bearer(on_cloud("INSERT INTO items VALUES (3)", "aws"), &token))
            .await
        {
            Ok(ok) => {
                response = Some(ok.into_inner());
                anyhow::Ok(true)
            }
            Err(status) if status.code() == Code::Unavailable => anyhow::Ok(false),
            Err(status) => Err(status.into()),
        },
    )
    .await?;
    let id = response.map(|r| r.execution_id).unwrap_or_default();
    let record = get_record(&channel, &token, &id).await?;
    assert_eq!(record.status, i32::from(pb::ExecutionStatus::Succeeded));
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM items")
        .fetch_one(&target)
        .await?;
    assert_eq!(rows, 1);
    target.close().await;
    server.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn hand_edits_to_the_trail_are_found_by_verify_chain() -> anyhow::Result<()> {
    let s = session("").await?;
    run_sql(&s, "aws", "app", "CREATE TABLE items (id int PRIMARY KEY)").await?;
    let mut ids = Vec::new();
    for n in 1..=3 {
        let response = query(&s.channel)
            .execute(bearer(
                on_cloud(&format!("INSERT INTO items VALUES ({n})"), "aws"),
                &s.user,
            ))
            .await?
            .into_inner();
        assert!(response.success);
        ids.push(response.execution_id);
    }
    let clean = verify(&s.channel, &s.master).await?;
    assert!(clean.ok && clean.records_checked == 6, "{clean:?}");

    let history_pool = s.fleet.history.pool().await?;
    let second = Uuid::parse_str(&ids[1])?;
    let record = get_record(&s.channel, &s.master, &ids[1]).await?;
    // Rewrite history: the second INSERT "was" a SELECT.
    sqlx::query("UPDATE pgfleet.executions SET query = 'SELECT 1' WHERE id = $1")
        .bind(second)
        .execute(&history_pool)
        .await?;
    let tampered = verify(&s.channel, &s.master).await?;
    assert!(!tampered.ok);
    let broken = tampered.first_broken.unwrap_or_default();
    assert_eq!(broken.execution_id, ids[1]);
    assert_eq!(broken.sequence, record.opened.unwrap_or_default().sequence);
    assert!(broken.reason.contains("hash mismatch"), "{}", broken.reason);
    assert_ne!(broken.expected_hash, broken.stored_hash);
    assert_eq!(tampered.records_checked, broken.sequence - 1);

    // Put it back: verified again. Then change an outcome instead.
    sqlx::query("UPDATE pgfleet.executions SET query = 'INSERT INTO items VALUES (2)' WHERE id = $1")
        .bind(second)
        .execute(&history_pool)
        .await?;
    assert!(verify(&s.channel, &s.master).await?.ok);
    sqlx::query("UPDATE pgfleet.executions SET success = false, status = 'FAILED' WHERE id = $1")
        .bind(second)
        .execute(&history_pool)
        .await?;
    let broken = verify(&s.channel, &s.master)
        .await?
        .first_broken
        .unwrap_or_default();
    assert!(broken.reason.contains("closed"), "{}", broken.reason);
    sqlx::query("UPDATE pgfleet.executions SET success = true, status = 'SUCCEEDED' WHERE id = $1")
        .bind(second)
        .execute(&history_pool)
        .await?;

    // Deleting a record is found too (its links point at nothing).
    sqlx::query("DELETE FROM pgfleet.executions WHERE id = $1")
        .bind(Uuid::parse_str(&ids[2])?)
        .execute(&history_pool)
        .await?;
    let broken = verify(&s.channel, &s.master)
        .await?
        .first_broken
        .unwrap_or_default();
    assert_eq!(broken.execution_id, ids[2]);
    assert!(broken.reason.contains("missing"), "{}", broken.reason);

    // And so is a deleted link (a gap in the sequence).
    sqlx::query("DELETE FROM pgfleet.audit_chain WHERE execution_id = $1 AND link = 'closed'")
        .bind(Uuid::parse_str(&ids[0])?)
        .execute(&history_pool)
        .await?;
    let broken = verify(&s.channel, &s.master)
        .await?
        .first_broken
        .unwrap_or_default();
    assert!(broken.reason.contains("gap"), "{}", broken.reason);

    // USER may not verify (MASTER only).
    let denied = history(&s.channel)
        .verify_chain(bearer(pb::VerifyChainRequest::default(), &s.user))
        .await
        .err()
        .map(|e| e.code());
    assert_eq!(denied, Some(Code::PermissionDenied));
    history_pool.close().await;
    s.server.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_writes_from_two_servers_form_one_unbroken_chain() -> anyhow::Result<()> {
    // Sessions in each process (no Redis): this test is about the history
    // store, and 200 simultaneous calls should not hinge on a session pool.
    let mut fleet = Fleet::create().await?;
    fleet.redis_url = None;
    let first = fleet.start("").await?;
    let second = fleet.start("").await?;
    let (first_channel, second_channel) = (channel(&first).await?, channel(&second).await?);
    let password = fleet.create_user("burst", Role::User).await?;
    let first_token = login(&first_channel, "burst", &password).await?;
    let second_token = login(&second_channel, "burst", &password).await?;
    let master_password = fleet.create_user("auditor", Role::Master).await?;
    let master = login(&first_channel, "auditor", &master_password).await?;
    let (_, _, aws_app) = fleet
        .databases
        .iter()
        .find(|(cloud, name, _)| cloud == "aws" && name == "app")
        .ok_or_else(|| anyhow::anyhow!("no aws app"))?;
    let target = aws_app.pool().await?;
    sqlx::query("CREATE TABLE items (id int PRIMARY KEY)")
        .execute(&target)
        .await?;

    let mut calls = Vec::new();
    for n in 0..200 {
        let (channel, token) = if n % 2 == 0 {
            (first_channel.clone(), first_token.clone())
        } else {
            (second_channel.clone(), second_token.clone())
        };
        calls.push(tokio::spawn(async move {
            query(&channel)
                .execute(bearer(
                    on_cloud(&format!("INSERT INTO items VALUES ({n})"), "aws"),
                    &token,
                ))
                .await
                .map(|r| r.into_inner())
        }));
    }
    let mut ids = HashSet::new();
    for call in calls {
        let response = call.await??;
        assert!(response.success, "{:?}", response.results);
        ids.insert(response.execution_id);
    }
    assert_eq!(ids.len(), 200);
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM items")
        .fetch_one(&target)
        .await?;
    assert_eq!(rows, 200);

    let verified = verify(&first_channel, &master).await?;
    assert!(verified.ok, "{:?}", verified.first_broken);
    assert_eq!(verified.records_checked, 400, "two links per execution, no gaps");
    assert_eq!(verified.last.unwrap_or_default().sequence, 400);
    let history_pool = fleet.history.pool().await?;
    let writers: i64 = sqlx::query_scalar("SELECT count(DISTINCT writer_id) FROM pgfleet.executions")
        .fetch_one(&history_pool)
        .await?;
    assert_eq!(writers, 2, "both servers wrote");
    history_pool.close().await;
    target.close().await;
    second.shutdown().await?;
    first.shutdown().await?;
    Ok(())
}

/// Writes `count` closed records straight through the audit log (the same
/// code the query service uses), `concurrency` at a time.
async fn write_records(log: &Arc<AuditLog>, count: usize, database: &str) -> anyhow::Result<Vec<Uuid>> {
    let mut ids = Vec::with_capacity(count);
    let mut pending = futures::stream::iter(0..count)
        .map(|n| {
            let log = Arc::clone(log);
            let database = database.to_owned();
            async move {
                let target = RecordedTarget {
                    cloud: "aws".to_owned(),
                    database: database.clone(),
                };
                let open = log
                    .open(NewExecution {
                        id: Uuid::now_v7(),
                        kind: Kind::Query,
                        actor: Actor::System("history-test".to_owned()),
                        role: Role::Master,
                        client_address: String::new(),
                        request_id: format!("bulk-{n}"),
                        query: format!("UPDATE t SET n = {n}"),
                        query_redacted: false,
                        fingerprint: String::new(),
                        statement_classes: vec!["WRITE".to_owned()],
                        database,
                        pg_schema: String::new(),
                        scope: TargetScope::Cloud,
                        targets: vec![target.clone()],
                        read_only: false,
                        confirmed_dangerous: false,
                        findings: Vec::new(),
                        replication_job_id: None,
                    })
                    .await?;
                let id = open.id();
                let running = open.started();
                running
                    .finish(vec![RecordedOutcome {
                        success: true,
                        error: None,
                        outcome_unknown: false,
                        ..RecordedOutcome::unknown(target, "")
                    }])
                    .await;
                anyhow::Ok(id)
            }
        })
        .buffer_unordered(8);
    while let Some(id) = pending.next().await {
        ids.push(id?);
    }
    Ok(ids)
}

#[tokio::test(flavor = "multi_thread")]
async fn pagination_and_export_walk_ten_thousand_records() -> anyhow::Result<()> {
    let s = session("").await?;
    let pool = s.fleet.history.pool().await?;
    let log = AuditLog::new(pool.clone(), s.fleet.audit_config())?;
    let mut written: HashSet<String> = HashSet::new();
    for (database, count) in [("app", 6_000), ("analytics", 4_000)] {
        written.extend(
            write_records(&log, count, database)
                .await?
                .iter()
                .map(Uuid::to_string),
        );
    }
    assert_eq!(written.len(), 10_000);

    // Newest first, 500 per page, while new records keep arriving: the
    // walk sees exactly the 10,000 that existed when it started.
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = history(&s.channel)
            .list_executions(bearer(
                pb::ListExecutionsRequest {
                    page_size: 500,
                    page_token: token.clone(),
                    ..Default::default()
                },
                &s.master,
            ))
            .await?
            .into_inner();
        pages += 1;
        if pages == 2 {
            write_records(&log, 3, "app").await?;
        }
        if pages == 1 {
            assert_eq!(page.total_count, 10_000);
        }
        seen.extend(
            page.executions
                .into_iter()
                .map(|record| (record.started_at.unwrap_or_default(), record.id)),
        );
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let unique: HashSet<&String> = seen.iter().map(|(_, id)| id).collect();
    assert_eq!(unique.len(), seen.len(), "a record appeared twice");
    assert_eq!(seen.len(), 10_000, "records were skipped or new ones leaked in");
    assert!(unique.iter().all(|id| written.contains(*id)));
    for pair in seen.windows(2) {
        let (a, b) = (&pair[0].0, &pair[1].0);
        assert!((a.seconds, a.nanos) >= (b.seconds, b.nanos), "not newest first");
    }

    // A filter narrows pages and count alike; its token only fits it.
    let filter = pb::ExecutionFilter {
        database: "analytics".to_owned(),
        ..Default::default()
    };
    let first = history(&s.channel)
        .list_executions(bearer(
            pb::ListExecutionsRequest {
                filter: Some(filter.clone()),
                page_size: 10,
                ..Default::default()
            },
            &s.master,
        ))
        .await?
        .into_inner();
    assert_eq!(first.total_count, 4_000);
    assert!(first.executions.iter().all(|r| r.database == "analytics"));
    let mismatched = history(&s.channel)
        .list_executions(bearer(
            pb::ListExecutionsRequest {
                page_token: first.next_page_token.clone(),
                ..Default::default()
            },
            &s.master,
        ))
        .await
        .err()
        .map(|status| bad_field(&status));
    assert_eq!(mismatched.as_deref(), Some("page_token"));

    // Export streams every record in chain order, resumable by sequence.
    let mut stream = history(&s.channel)
        .export_executions(bearer(pb::ExportExecutionsRequest::default(), &s.master))
        .await?
        .into_inner();
    let mut exported = Vec::new();
    while let Some(message) = stream.message().await? {
        let record = message.execution.unwrap_or_default();
        exported.push((record.opened.unwrap_or_default().sequence, record.id));
    }
    assert_eq!(exported.len(), 10_003);
    assert!(
        exported.windows(2).all(|pair| pair[0].0 < pair[1].0),
        "not in chain order"
    );
    let resume_after = exported[9_000].0;
    let rest = history(&s.channel)
        .export_executions(bearer(
            pb::ExportExecutionsRequest {
                after_sequence: resume_after,
                filter: None,
            },
            &s.master,
        ))
        .await?
        .into_inner()
        .collect::<Vec<_>>()
        .await;
    assert_eq!(rest.len(), 1_002);
    pool.close().await;
    s.server.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn callers_below_master_only_see_their_own_executions() -> anyhow::Result<()> {
    let s = session("[audit]\nreads = true\n").await?;
    run_sql(&s, "aws", "app", "CREATE TABLE items (id int PRIMARY KEY)").await?;
    let write = query(&s.channel)
        .execute(bearer(on_cloud("INSERT INTO items VALUES (1)", "aws"), &s.user))
        .await?
        .into_inner();
    let read = query(&s.channel)
        .execute(bearer(on_cloud("SELECT count(*) FROM items", "aws"), &s.reader))
        .await?
        .into_inner();

    let list = |token: String, filter: pb::ExecutionFilter| {
        let channel = s.channel.clone();
        async move {
            history(&channel)
                .list_executions(bearer(
                    pb::ListExecutionsRequest {
                        filter: Some(filter),
                        ..Default::default()
                    },
                    &token,
                ))
                .await
                .map(|r| r.into_inner())
        }
    };
    let readers = list(s.reader.clone(), pb::ExecutionFilter::default()).await?;
    assert_eq!(readers.total_count, 1);
    assert_eq!(readers.executions[0].id, read.execution_id);
    let by_name = list(
        s.reader.clone(),
        pb::ExecutionFilter {
            username: "s-user".to_owned(),
            ..Default::default()
        },
    )
    .await?;
    assert_eq!(
        by_name.total_count, 0,
        "a username filter cannot widen what a READER sees"
    );
    let hidden = get_record(&s.channel, &s.reader, &write.execution_id).await.err();
    assert_eq!(hidden.map(|e| e.code()), Some(Code::NotFound));

    let users = list(s.user.clone(), pb::ExecutionFilter::default()).await?;
    assert_eq!(users.total_count, 1);
    assert_eq!(users.executions[0].id, write.execution_id);

    let masters = list(s.master.clone(), pb::ExecutionFilter::default()).await?;
    assert_eq!(masters.total_count, 2);
    let only_user = list(
        s.master.clone(),
        pb::ExecutionFilter {
            username: "s-user".to_owned(),
            statement_class: pb::StatementClass::Write.into(),
            success: Some(true),
            cloud: "aws".to_owned(),
            query_contains: "insert INTO".to_owned(),
            ..Default::default()
        },
    )
    .await?;
    assert_eq!(only_user.total_count, 1);
    let wildcard = list(
        s.master.clone(),
        pb::ExecutionFilter {
            query_contains: "%".to_owned(),
            ..Default::default()
        },
    )
    .await?;
    assert_eq!(wildcard.total_count, 0, "% is a literal in query_contains");
    s.server.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_name_the_field() -> anyhow::Result<()> {
    let s = session("").await?;
    let malformed = get_record(&s.channel, &s.master, "not-a-uuid").await.err();
    assert_eq!(
        malformed.as_ref().map(tonic::Status::code),
        Some(Code::InvalidArgument)
    );
    assert_eq!(malformed.map(|e| bad_field(&e)).as_deref(), Some("id"));
    let unknown = get_record(&s.channel, &s.master, &Uuid::now_v7().to_string())
        .await
        .err();
    assert_eq!(unknown.map(|e| e.code()), Some(Code::NotFound));

    let cases = [
        (
            pb::ListExecutionsRequest {
                filter: Some(pb::ExecutionFilter {
                    start_time: Some(prost_types::Timestamp {
                        seconds: 2_000,
                        nanos: 0,
                    }),
                    end_time: Some(prost_types::Timestamp {
                        seconds: 1_000,
                        nanos: 0,
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            },
            "filter.end_time",
        ),
        (
            pb::ListExecutionsRequest {
                page_size: 501,
                ..Default::default()
            },
            "page_size",
        ),
        (
            pb::ListExecutionsRequest {
                page_size: -1,
                ..Default::default()
            },
            "page_size",
        ),
        (
            pb::ListExecutionsRequest {
                page_token: "bm90IGEgdG9rZW4".to_owned(),
                ..Default::default()
            },
            "page_token",
        ),
        (
            pb::ListExecutionsRequest {
                filter: Some(pb::ExecutionFilter {
                    api_key_id: "nope".to_owned(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            "filter.api_key_id",
        ),
        (
            pb::ListExecutionsRequest {
                filter: Some(pb::ExecutionFilter {
                    status: 42,
                    ..Default::default()
                }),
                ..Default::default()
            },
            "filter.status",
        ),
    ];
    for (request, field) in cases {
        let status = history(&s.channel)
            .list_executions(bearer(request, &s.master))
            .await
            .err()
            .unwrap_or_else(|| panic!("{field}: accepted"));
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{field}: {}",
            status.message()
        );
        assert_eq!(bad_field(&status), field);
    }
    s.server.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn records_of_a_dead_server_are_closed_as_interrupted() -> anyhow::Result<()> {
    let s = session("[audit]\nheartbeat_interval = '200ms'\nwriter_lease = '1s'\n").await?;
    let pool = s.fleet.history.pool().await?;
    // A "server" with a lease opens a record, reports one of two targets
    // and dies: its lease stops being renewed, its record stays RUNNING.
    let dead = AuditLog::new(pool.clone(), s.fleet.audit_config())?;
    sqlx::query("INSERT INTO pgfleet.audit_writers (id, hostname) VALUES ($1, 'doomed')")
        .bind(dead.writer_id())
        .execute(&pool)
        .await?;
    let targets = ["aws", "gcp"].map(|cloud| RecordedTarget {
        cloud: cloud.to_owned(),
        database: "app".to_owned(),
    });
    let open = dead
        .open(NewExecution {
            id: Uuid::now_v7(),
            kind: Kind::Query,
            actor: Actor::System("crashing-server".to_owned()),
            role: Role::Master,
            client_address: String::new(),
            request_id: String::new(),
            query: "DELETE FROM items WHERE id = 1".to_owned(),
            query_redacted: false,
            fingerprint: String::new(),
            statement_classes: vec!["WRITE".to_owned()],
            database: "app".to_owned(),
            pg_schema: String::new(),
            scope: TargetScope::AllClouds,
            targets: targets.to_vec(),
            read_only: false,
            confirmed_dangerous: false,
            findings: Vec::new(),
            replication_job_id: None,
        })
        .await?;
    let id = open.id();
    let running = open.started();
    running
        .add_outcome(&RecordedOutcome {
            success: true,
            error: None,
            outcome_unknown: false,
            command_tags: vec!["DELETE 1".to_owned()],
            rows_affected: 1,
            ..RecordedOutcome::unknown(targets[0].clone(), "")
        })
        .await;
    // The crash: no close, ever, and the lease runs out.
    std::mem::forget(running);
    sqlx::query("UPDATE pgfleet.audit_writers SET heartbeat_at = now() - interval '1 hour' WHERE id = $1")
        .bind(dead.writer_id())
        .execute(&pool)
        .await?;

    let mut record = pb::ExecutionRecord::default();
    wait_until(Duration::from_secs(15), Duration::from_millis(100), async || {
        record = get_record(&s.channel, &s.master, &id.to_string()).await?;
        anyhow::Ok(record.status == i32::from(pb::ExecutionStatus::Interrupted))
    })
    .await?;
    assert!(record.finished_at.is_some() && !record.success);
    let aws = &record.outcomes[0];
    assert!(aws.success && !aws.outcome_unknown && aws.command_tags == vec!["DELETE 1".to_owned()]);
    let gcp = &record.outcomes[1];
    assert!(!gcp.success && gcp.outcome_unknown, "{gcp:?}");
    assert!(verify(&s.channel, &s.master).await?.ok);

    // The live server's own lease is there; the dead one left none.
    let leases: i64 = sqlx::query_scalar("SELECT count(*) FROM pgfleet.audit_writers")
        .fetch_one(&pool)
        .await?;
    assert_eq!(leases, 1);
    pool.close().await;
    s.server.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_deletes_old_records_and_the_rest_still_verifies() -> anyhow::Result<()> {
    let s = session("").await?;
    let pool = s.fleet.history.pool().await?;
    let log = AuditLog::new(
        pool.clone(),
        AuditConfig {
            retention: Some(Duration::from_secs(2)),
            retention_batch: 4,
            ..s.fleet.audit_config()
        },
    )?;
    let old = write_records(&log, 7, "app").await?;
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let young = write_records(&log, 3, "app").await?;

    let deleted = audit::maintenance::apply_retention(&log).await?;
    assert_eq!(deleted, 7);
    let remaining: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM pgfleet.executions ORDER BY id")
        .fetch_all(&pool)
        .await?;
    assert_eq!(remaining, {
        let mut young = young.clone();
        young.sort();
        young
    });
    assert!(old.iter().all(|id| !remaining.contains(id)));

    let verified = verify(&s.channel, &s.master).await?;
    assert!(verified.ok, "{:?}", verified.first_broken);
    assert_eq!(verified.records_checked, 6);
    let anchor = verified.anchor.unwrap_or_default();
    assert_eq!(anchor.sequence, 14);
    assert!(anchor.updated_at.is_some());
    pool.close().await;
    s.server.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_api_key_sees_only_what_it_ran() -> anyhow::Result<()> {
    let s = session("").await?;
    run_sql(&s, "aws", "app", "CREATE TABLE items (id int PRIMARY KEY)").await?;
    let created = support::auth_client(&s.channel)
        .create_api_key(bearer(
            pb::CreateApiKeyRequest {
                name: "etl".to_owned(),
                role: pb::Role::User.into(),
                allowed_targets: vec![pb::TargetPattern {
                    cloud: "aws".to_owned(),
                    database: "app".to_owned(),
                }],
                ..Default::default()
            },
            &s.master,
        ))
        .await?
        .into_inner();
    let key = created.secret.clone();
    let by_key = query(&s.channel)
        .execute(support::api_key(
            on_cloud("INSERT INTO items VALUES (7)", "aws"),
            &key,
        ))
        .await?
        .into_inner();
    query(&s.channel)
        .execute(bearer(on_cloud("INSERT INTO items VALUES (8)", "aws"), &s.user))
        .await?;
    let record = history(&s.channel)
        .get_execution(support::api_key(
            pb::GetExecutionRequest {
                id: by_key.execution_id.clone(),
            },
            &key,
        ))
        .await?
        .into_inner()
        .execution
        .unwrap_or_default();
    match record.actor.and_then(|a| a.principal) {
        Some(pb::actor::Principal::ApiKey(reference)) => assert_eq!(reference.name, "etl"),
        other => panic!("actor {other:?}"),
    }
    let listed = history(&s.channel)
        .list_executions(support::api_key(pb::ListExecutionsRequest::default(), &key))
        .await?
        .into_inner();
    assert_eq!(listed.total_count, 1);
    s.server.shutdown().await?;
    Ok(())
}

// --- Limits on list calls: no list answer is unbounded. ---

#[tokio::test(flavor = "multi_thread")]
async fn list_calls_refuse_oversized_pages_offsets_and_filters_naming_the_field() -> anyhow::Result<()> {
    use pgfleet_proto::pgfleet::v1::fleet_service_client::FleetServiceClient;
    use pgfleet_proto::pgfleet::v1::replication_service_client::ReplicationServiceClient;
    let s = session("").await?;
    let refused = |result: Result<tonic::Status, ()>, field: &str, case: &str| {
        let status = result.unwrap_or_else(|()| panic!("{case}: accepted"));
        assert_eq!(status.code(), Code::InvalidArgument, "{case}: {status:?}");
        assert_eq!(bad_field(&status), field, "{case}: {}", status.message());
    };
    let list = |request: pb::ListExecutionsRequest| {
        let mut client = history(&s.channel);
        let request = bearer(request, &s.master);
        async move { client.list_executions(request).await.err().ok_or(()) }
    };
    let filter = |filter: pb::ExecutionFilter| pb::ListExecutionsRequest {
        filter: Some(filter),
        ..Default::default()
    };
    refused(
        list(filter(pb::ExecutionFilter {
            query_contains: "x".repeat(1025),
            ..Default::default()
        }))
        .await,
        "filter.query_contains",
        "a 1025-byte query_contains",
    );
    refused(
        list(filter(pb::ExecutionFilter {
            username: "u".repeat(257),
            ..Default::default()
        }))
        .await,
        "filter.username",
        "a 257-byte username",
    );
    refused(
        list(pb::ListExecutionsRequest {
            offset: 10_001,
            ..Default::default()
        })
        .await,
        "offset",
        "offset past 10000",
    );
    refused(
        list(pb::ListExecutionsRequest {
            page_size: 501,
            ..Default::default()
        })
        .await,
        "page_size",
        "history page of 501",
    );
    // The biggest accepted filter is fine.
    history(&s.channel)
        .list_executions(bearer(
            filter(pb::ExecutionFilter {
                query_contains: "x".repeat(1024),
                ..Default::default()
            }),
            &s.master,
        ))
        .await?;

    let target = Some(support::target("aws", "app"));
    let tables = FleetServiceClient::new(s.channel.clone())
        .list_tables(bearer(
            pb::ListTablesRequest {
                target: target.clone(),
                page_size: 1001,
                ..Default::default()
            },
            &s.reader,
        ))
        .await;
    refused(tables.err().ok_or(()), "page_size", "ListTables page of 1001");
    let schemas = FleetServiceClient::new(s.channel.clone())
        .list_schemas(bearer(
            pb::ListSchemasRequest {
                target,
                page_size: 1001,
                ..Default::default()
            },
            &s.reader,
        ))
        .await;
    refused(schemas.err().ok_or(()), "page_size", "ListSchemas page of 1001");
    let users = support::auth_client(&s.channel)
        .list_users(bearer(
            pb::ListUsersRequest {
                page_size: 501,
                ..Default::default()
            },
            &s.master,
        ))
        .await;
    refused(users.err().ok_or(()), "page_size", "ListUsers page of 501");
    let jobs = ReplicationServiceClient::new(s.channel.clone())
        .list_jobs(bearer(
            pb::ListJobsRequest {
                page_size: 501,
                ..Default::default()
            },
            &s.master,
        ))
        .await;
    refused(jobs.err().ok_or(()), "page_size", "ListJobs page of 501");
    s.server.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_page_of_large_records_stops_at_the_response_budget_and_continues() -> anyhow::Result<()> {
    let s = session("[query]\nmax_response_bytes = 65536\n").await?;
    run_sql(&s, "aws", "app", "CREATE TABLE notes (body text)").await?;
    // Ten recorded writes of 20 kB texts each: 200 kB of records.
    let padding = "n".repeat(20_000);
    for _ in 0..10 {
        let response = query(&s.channel)
            .execute(bearer(
                on_cloud(&format!("INSERT INTO notes VALUES ('{padding}')"), "aws"),
                &s.user,
            ))
            .await?
            .into_inner();
        assert!(response.success, "{response:?}");
    }
    let mut seen = HashSet::new();
    let mut pages = 0;
    let mut token = String::new();
    loop {
        let page = history(&s.channel)
            .list_executions(bearer(
                pb::ListExecutionsRequest {
                    filter: Some(pb::ExecutionFilter {
                        query_contains: "INSERT INTO notes".to_owned(),
                        ..Default::default()
                    }),
                    page_size: 10,
                    page_token: token.clone(),
                    ..Default::default()
                },
                &s.master,
            ))
            .await?
            .into_inner();
        pages += 1;
        assert!(
            page.executions.len() <= 3,
            "a page of {} records",
            page.executions.len()
        );
        assert_eq!(page.total_count, 10);
        seen.extend(page.executions.iter().map(|e| e.id.clone()));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
        assert!(pages < 20, "pages never end");
    }
    assert_eq!(seen.len(), 10, "every record once, over {pages} pages");
    s.server.shutdown().await?;
    Ok(())
}
