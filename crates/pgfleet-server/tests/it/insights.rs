//! InsightsService on real databases: the slow-query log of pgfleet's own
//! executions (normalized, no literal), pg_stat_statements merged across
//! the copies of a database (on an initdb cluster started with
//! `shared_preload_libraries = pg_stat_statements`, next to a copy without
//! the extension), ListActivity and CancelBackend on a 60 s `pg_sleep`, and
//! the refusal to signal pgfleet's own history-store connections.

use std::time::Duration;

use pgfleet_proto::pgfleet::v1 as pb;
use pgfleet_proto::pgfleet::v1::history_service_client::HistoryServiceClient;
use pgfleet_proto::pgfleet::v1::insights_service_client::InsightsServiceClient;
use pgfleet_proto::pgfleet::v1::query_service_client::QueryServiceClient;
use pgfleet_testkit::{PgCluster, TestDatabase};
use sqlx::Connection as _;
use tonic::transport::Channel;

use crate::support::{Fleet, bearer, fleet_database, session, session_on, target};

/// A literal that looks like a credential: it must never reach the slow log.
const SECRET_LITERAL: &str = "P@ssw0rd-hunter2-insights";

fn insights(channel: &Channel) -> InsightsServiceClient<Channel> {
    InsightsServiceClient::new(channel.clone())
}

/// Waits (bounded) until the slow log holds at least `count` entries for
/// `database`: entries are written just after each target finished.
async fn slow_entries(
    channel: &Channel,
    token: &str,
    database: &str,
    count: usize,
) -> anyhow::Result<Vec<pb::SlowQuery>> {
    for _ in 0..100 {
        let page = insights(channel)
            .search_slow_queries(bearer(
                pb::SearchSlowQueriesRequest {
                    database: database.to_owned(),
                    ..Default::default()
                },
                token,
            ))
            .await?
            .into_inner();
        if page.slow_queries.len() >= count {
            return Ok(page.slow_queries);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("fewer than {count} slow-query entries for {database} after 10 s")
}

/// aws and gcp copies of `app` on a cluster with pg_stat_statements loaded
/// and installed, azure's copy on the shared server without it. The view
/// `pace` answers at once on aws and azure, and sleeps 400 ms on gcp: the
/// classic "one copy is slow" fleet.
#[tokio::test(flavor = "multi_thread")]
async fn a_statement_slow_on_one_copy_is_in_the_slow_log_without_literals_and_named_slowest()
-> anyhow::Result<()> {
    let cluster = PgCluster::builder()
        .setting("shared_preload_libraries", "pg_stat_statements")
        .start()
        .await?;
    let aws = TestDatabase::create_on(&cluster.admin_url(), "ins_aws_app").await?;
    let gcp = TestDatabase::create_on(&cluster.admin_url(), "ins_gcp_app").await?;
    let azure = TestDatabase::create("ins_azure_app").await?;
    for (db, pace) in [
        (&aws, "SELECT 1 AS x"),
        (&gcp, "SELECT 1 AS x FROM pg_sleep(0.4)"),
        (&azure, "SELECT 1 AS x"),
    ] {
        let mut connection = db.connect().await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE VIEW pace AS {pace}")))
            .execute(&mut connection)
            .await?;
        if db.port() == cluster.port() {
            sqlx::raw_sql("CREATE EXTENSION pg_stat_statements")
                .execute(&mut connection)
                .await?;
        }
        connection.close().await?;
    }
    let history = TestDatabase::create("ins_history").await?;
    let fleet = Fleet::with_databases(
        history,
        vec![("aws", "app", aws), ("azure", "app", azure), ("gcp", "app", gcp)],
    )
    .await?;
    let s = session_on(fleet, "[insights]\nslow_query_threshold = '200ms'\n").await?;

    // pgfleet's own executions, on every copy: only gcp's passes 200 ms.
    let text = format!("SELECT x FROM pace WHERE '{SECRET_LITERAL}' <> ''");
    for _ in 0..2 {
        let response = QueryServiceClient::new(s.channel.clone())
            .execute(bearer(
                pb::ExecuteRequest {
                    query: text.clone(),
                    database: "app".to_owned(),
                    ..Default::default()
                },
                &s.user,
            ))
            .await?
            .into_inner();
        assert!(response.success, "{response:?}");
    }
    let entries = slow_entries(&s.channel, &s.master, "app", 2).await?;
    assert_eq!(entries.len(), 2, "{entries:#?}");
    for entry in &entries {
        assert_eq!(
            entry.target,
            Some(target("gcp", "app")),
            "only the slow copy: {entry:?}"
        );
        assert_eq!(entry.actor, "user:s-user");
        assert_eq!(entry.fingerprint.len(), 16, "{entry:?}");
        assert_eq!(entry.rows, 1, "{entry:?}");
        assert!(entry.success);
        assert!(entry.normalized_query.contains("$1"), "{entry:?}");
        assert!(
            !entry.normalized_query.contains("hunter2"),
            "a literal in the log: {entry:?}"
        );
        let duration = entry.duration.unwrap_or_default();
        assert!(duration.seconds > 0 || duration.nanos >= 200_000_000, "{entry:?}");
    }
    // Nowhere in the stored rows either.
    let mut store = s.fleet.history.connect().await?;
    let leaked: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pgfleet.slow_queries WHERE normalized_query LIKE '%hunter2%'",
    )
    .fetch_one(&mut store)
    .await?;
    assert_eq!(leaked, 0);
    // Filters and pages: one entry per page, then the second, then none.
    let mut client = insights(&s.channel);
    let first = client
        .search_slow_queries(bearer(
            pb::SearchSlowQueriesRequest {
                cloud: "gcp".to_owned(),
                fingerprint: entries[0].fingerprint.clone(),
                page_size: 1,
                ..Default::default()
            },
            &s.master,
        ))
        .await?
        .into_inner();
    assert_eq!(first.slow_queries.len(), 1);
    assert!(!first.next_page_token.is_empty());
    let second = client
        .search_slow_queries(bearer(
            pb::SearchSlowQueriesRequest {
                cloud: "gcp".to_owned(),
                fingerprint: entries[0].fingerprint.clone(),
                page_size: 1,
                page_token: first.next_page_token.clone(),
                ..Default::default()
            },
            &s.master,
        ))
        .await?
        .into_inner();
    assert_eq!(second.slow_queries.len(), 1);
    assert!(second.slow_queries[0].id < first.slow_queries[0].id);
    assert!(second.next_page_token.is_empty());
    let on_aws = client
        .search_slow_queries(bearer(
            pb::SearchSlowQueriesRequest {
                cloud: "aws".to_owned(),
                ..Default::default()
            },
            &s.master,
        ))
        .await?
        .into_inner();
    assert!(on_aws.slow_queries.is_empty(), "{on_aws:?}");
    // A READER sees its own entries only (none), and may not name another caller.
    let own = client
        .search_slow_queries(bearer(pb::SearchSlowQueriesRequest::default(), &s.reader))
        .await?
        .into_inner();
    assert!(own.slow_queries.is_empty(), "{own:?}");
    let other = client
        .search_slow_queries(bearer(
            pb::SearchSlowQueriesRequest {
                actor: "user:s-user".to_owned(),
                ..Default::default()
            },
            &s.reader,
        ))
        .await
        .expect_err("someone else's entries");
    assert_eq!(other.code(), tonic::Code::PermissionDenied);

    // The application's own traffic on each copy, as pg_stat_statements sees it.
    for cloud in ["aws", "gcp"] {
        let mut connection = fleet_database(&s, cloud, "app").connect().await?;
        for _ in 0..3 {
            sqlx::query("SELECT x FROM pace WHERE $1 <> ''")
                .bind(SECRET_LITERAL)
                .fetch_all(&mut connection)
                .await?;
        }
        connection.close().await?;
    }
    let stats = client
        .get_statement_stats(bearer(
            pb::GetStatementStatsRequest {
                database: "app".to_owned(),
                top: 50,
                order_by: pb::StatementOrder::MeanTime.into(),
                ..Default::default()
            },
            &s.reader,
        ))
        .await?
        .into_inner();
    let source = |cloud: &str| {
        stats
            .targets
            .iter()
            .find(|t| t.target == Some(target(cloud, "app")))
            .cloned()
            .unwrap_or_else(|| panic!("no source {cloud}: {stats:?}"))
    };
    assert!(source("aws").available && source("gcp").available, "{stats:?}");
    let azure = source("azure");
    assert!(!azure.available);
    assert!(
        azure.reason.contains("pg_stat_statements is not installed"),
        "{azure:?}"
    );
    let pace = stats
        .statements
        .iter()
        .find(|statement| statement.query.contains("FROM pace WHERE $1"))
        .unwrap_or_else(|| panic!("the pace statement is not merged: {stats:#?}"));
    assert_eq!(pace.per_target.len(), 2, "one row, a column per copy: {pace:#?}");
    assert_eq!(pace.total_calls, 6);
    assert_eq!(pace.slowest, Some(target("gcp", "app")));
    assert!(pace.slower_factor >= 2.0, "{pace:?}");
    assert!(
        pace.highlight.contains("slower on gcp/app than on aws/app"),
        "{pace:?}"
    );
    assert!(!pace.query.contains("hunter2"));
    // Ordered by the slowest copy's mean time.
    let slowest_mean = |statement: &pb::MergedStatement| {
        statement
            .per_target
            .iter()
            .filter_map(|t| t.mean_time.map(|d| d.seconds as f64 + f64::from(d.nanos) / 1e9))
            .fold(0.0, f64::max)
    };
    let means: Vec<f64> = stats.statements.iter().map(slowest_mean).collect();
    assert!(means.windows(2).all(|pair| pair[0] >= pair[1]), "{means:?}");
    Ok(())
}

/// A 60 s `pg_sleep` on aws/app is listed with its normalized text and
/// cancelled by a MASTER within a second; the cancellation is on record;
/// READER may list but not cancel.
#[tokio::test(flavor = "multi_thread")]
async fn a_long_sleep_is_listed_and_cancelled_on_record_by_a_master_only() -> anyhow::Result<()> {
    let s = session("").await?;
    let mut sleeper = fleet_database(&s, "aws", "app").connect().await?;
    sqlx::query("SET application_name = 'insights-sleeper'")
        .execute(&mut sleeper)
        .await?;
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut sleeper)
        .await?;
    let sleeping = tokio::spawn(async move {
        let result = sqlx::query("SELECT pg_sleep(60)").execute(&mut sleeper).await;
        (result, sleeper)
    });

    let mut client = insights(&s.channel);
    let mut found = None;
    for _ in 0..100 {
        let activity = client
            .list_activity(bearer(
                pb::ListActivityRequest {
                    database: "app".to_owned(),
                    cloud: "aws".to_owned(),
                    min_duration: Some(prost_types::Duration {
                        seconds: 0,
                        nanos: 100_000_000,
                    }),
                },
                &s.reader,
            ))
            .await?
            .into_inner();
        assert_eq!(activity.targets.len(), 1, "{activity:?}");
        found = activity.targets[0]
            .backends
            .iter()
            .find(|b| b.pid == pid)
            .cloned();
        if found.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let backend = found.ok_or_else(|| anyhow::anyhow!("the sleeping backend was never listed"))?;
    assert_eq!(backend.application_name, "insights-sleeper");
    assert_eq!(backend.state, "active");
    assert_eq!(backend.query, "SELECT pg_sleep($1)", "{backend:?}");
    assert!(!backend.pgfleet_own);

    let refused = client
        .cancel_backend(bearer(
            pb::CancelBackendRequest {
                target: Some(target("aws", "app")),
                pid,
            },
            &s.reader,
        ))
        .await
        .expect_err("READER may not cancel");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);

    let cancelled = client
        .cancel_backend(bearer(
            pb::CancelBackendRequest {
                target: Some(target("aws", "app")),
                pid,
            },
            &s.master,
        ))
        .await?
        .into_inner();
    assert!(cancelled.signalled);
    let (result, _sleeper) = tokio::time::timeout(Duration::from_secs(1), sleeping).await??;
    let error = result.expect_err("the sleep was cancelled");
    let code = error
        .as_database_error()
        .and_then(|e| e.code())
        .map(|c| c.into_owned());
    assert_eq!(code.as_deref(), Some("57014"), "{error}");

    let record = HistoryServiceClient::new(s.channel.clone())
        .get_execution(bearer(
            pb::GetExecutionRequest {
                id: cancelled.execution_id.clone(),
            },
            &s.master,
        ))
        .await?
        .into_inner();
    let record = record.execution.ok_or_else(|| anyhow::anyhow!("no record"))?;
    assert!(
        record.query.contains(&format!("pg_cancel_backend({pid})")),
        "{record:?}"
    );
    assert!(record.success, "{record:?}");
    Ok(())
}

/// A database that is also the history store's: pgfleet's own connections
/// are flagged by ListActivity and refused by CancelBackend and
/// TerminateBackend; a pid of another database is refused too.
#[tokio::test(flavor = "multi_thread")]
async fn pgfleet_own_history_connections_are_never_signalled() -> anyhow::Result<()> {
    let fleet = Fleet::create().await?;
    let history = &fleet.history;
    let extra = format!(
        "[[clouds]]\nname = 'self'\n[[clouds.databases]]\nname = 'store'\nhost = '{}'\nport = {}\nuser = '{}'\n\
         database = '{}'\nsslmode = 'disable'\nschemas = ['public']\n",
        history.host(),
        history.port(),
        history.user(),
        history.name()
    );
    let s = session_on(fleet, &extra).await?;
    let mut client = insights(&s.channel);
    let activity = client
        .list_activity(bearer(
            pb::ListActivityRequest {
                database: "store".to_owned(),
                ..Default::default()
            },
            &s.master,
        ))
        .await?
        .into_inner();
    let own = activity.targets[0]
        .backends
        .iter()
        .find(|b| b.pgfleet_own)
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no pgfleet connection flagged: {activity:?}"))?;
    for terminate in [false, true] {
        let status = if terminate {
            client
                .terminate_backend(bearer(
                    pb::TerminateBackendRequest {
                        target: Some(target("self", "store")),
                        pid: own.pid,
                    },
                    &s.master,
                ))
                .await
                .map(|_| ())
        } else {
            client
                .cancel_backend(bearer(
                    pb::CancelBackendRequest {
                        target: Some(target("self", "store")),
                        pid: own.pid,
                    },
                    &s.master,
                ))
                .await
                .map(|_| ())
        }
        .expect_err("pgfleet's own connection");
        assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
        assert!(
            status.message().contains("pgfleet's own history-store"),
            "{status:?}"
        );
    }
    // A backend of another database (gcp/app's) through aws/app: refused.
    let mut other = fleet_database(&s, "gcp", "app").connect().await?;
    let other_pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut other)
        .await?;
    let status = client
        .terminate_backend(bearer(
            pb::TerminateBackendRequest {
                target: Some(target("aws", "app")),
                pid: other_pid,
            },
            &s.master,
        ))
        .await
        .expect_err("another database's backend");
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    let alive: i32 = sqlx::query_scalar("SELECT 1").fetch_one(&mut other).await?;
    assert_eq!(alive, 1);
    Ok(())
}

/// `accounts` has an index on `email` on aws only: ExplainQuery shows an
/// Index Scan on aws and a Seq Scan on gcp, and the recommendations tell
/// gcp to create the index aws has. A duplicate index (aws) and a sequence
/// near its maximum (gcp) are reported with their evidence.
#[tokio::test(flavor = "multi_thread")]
async fn an_index_missing_on_one_copy_shows_in_plans_and_recommendations() -> anyhow::Result<()> {
    let s = session("").await?;
    for cloud in ["aws", "gcp"] {
        crate::support::run_sql(
            &s,
            cloud,
            "app",
            "CREATE TABLE accounts (id int PRIMARY KEY, email text NOT NULL); \
             INSERT INTO accounts SELECT n, 'someone-' || n || '@example.com' FROM generate_series(1, 20000) n;",
        )
        .await?;
    }
    crate::support::run_sql(
        &s,
        "aws",
        "app",
        "CREATE INDEX accounts_email ON accounts (email); CREATE INDEX accounts_email_again ON accounts (email);",
    )
    .await?;
    crate::support::run_sql(
        &s,
        "gcp",
        "app",
        "CREATE SEQUENCE nearly_done MAXVALUE 10; SELECT setval('nearly_done', 9);",
    )
    .await?;
    for cloud in ["aws", "gcp"] {
        crate::support::run_sql(&s, cloud, "app", "ANALYZE accounts").await?;
    }

    let mut client = insights(&s.channel);
    let lookup = "SELECT id FROM accounts WHERE email = 'someone-42@example.com'";
    let explained = client
        .explain_query(bearer(
            pb::ExplainQueryRequest {
                query: lookup.to_owned(),
                database: "app".to_owned(),
                analyze: false,
            },
            &s.reader,
        ))
        .await?
        .into_inner();
    assert_eq!(explained.plans.len(), 2, "{explained:#?}");
    let shape = |cloud: &str| {
        explained
            .plans
            .iter()
            .find(|plan| plan.target == Some(target(cloud, "app")))
            .map(|plan| plan.shape.join("\n"))
            .unwrap_or_default()
    };
    assert!(shape("aws").contains("using accounts_email"), "{explained:#?}");
    assert!(
        shape("gcp").contains("Seq Scan on public.accounts"),
        "{explained:#?}"
    );
    assert!(explained.shapes_differ);
    assert_eq!(explained.differences.len(), 1, "{explained:#?}");
    assert!(
        explained.differences[0].starts_with("gcp/app: Seq Scan on public.accounts where aws/app has"),
        "{explained:#?}"
    );

    // ANALYZE: MASTER's, and for reads only.
    let refused = client
        .explain_query(bearer(
            pb::ExplainQueryRequest {
                query: lookup.to_owned(),
                database: "app".to_owned(),
                analyze: true,
            },
            &s.reader,
        ))
        .await
        .expect_err("READER may not ANALYZE");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    let refused = client
        .explain_query(bearer(
            pb::ExplainQueryRequest {
                query: "DELETE FROM accounts".to_owned(),
                database: "app".to_owned(),
                analyze: true,
            },
            &s.master,
        ))
        .await
        .expect_err("ANALYZE of a write");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    let analyzed = client
        .explain_query(bearer(
            pb::ExplainQueryRequest {
                query: lookup.to_owned(),
                database: "app".to_owned(),
                analyze: true,
            },
            &s.master,
        ))
        .await?
        .into_inner();
    assert!(
        analyzed
            .plans
            .iter()
            .all(|plan| plan.plan_json.contains("Actual Rows")),
        "{analyzed:#?}"
    );
    // A write explained without ANALYZE is planned, never run.
    let planned = client
        .explain_query(bearer(
            pb::ExplainQueryRequest {
                query: "DELETE FROM accounts".to_owned(),
                database: "app".to_owned(),
                analyze: false,
            },
            &s.user,
        ))
        .await?
        .into_inner();
    assert!(
        planned.plans.iter().all(|plan| plan.error.is_none()),
        "{planned:#?}"
    );
    let left = crate::support::scalar(&s, "gcp", "app", "SELECT count(*)::text FROM accounts").await?;
    assert_eq!(left.as_deref(), Some("20000"));

    let found = client
        .get_recommendations(bearer(
            pb::GetRecommendationsRequest {
                database: "app".to_owned(),
            },
            &s.reader,
        ))
        .await?
        .into_inner();
    assert!(found.unread.is_empty(), "{found:#?}");
    let of = |cloud: &str, kind: pb::RecommendationKind| {
        found
            .recommendations
            .iter()
            .filter(|r| r.target == Some(target(cloud, "app")) && r.kind == i32::from(kind))
            .cloned()
            .collect::<Vec<_>>()
    };
    let missing = of("gcp", pb::RecommendationKind::IndexMissingOnCopy);
    assert_eq!(missing.len(), 1, "{found:#?}");
    assert_eq!(missing[0].object, "public.accounts");
    assert!(
        missing[0]
            .advice
            .contains("CREATE INDEX ON public.accounts USING btree (email)")
            && missing[0].advice.contains("aws/app"),
        "{missing:?}"
    );
    assert!(
        of("aws", pb::RecommendationKind::IndexMissingOnCopy).is_empty(),
        "{found:#?}"
    );
    let duplicate = of("aws", pb::RecommendationKind::DuplicateIndex);
    assert_eq!(duplicate.len(), 1, "{found:#?}");
    assert!(
        duplicate[0]
            .advice
            .contains("public.accounts_email and public.accounts_email_again"),
        "{duplicate:?}"
    );
    let sequence = of("gcp", pb::RecommendationKind::SequenceNearMaximum);
    assert_eq!(sequence.len(), 1, "{found:#?}");
    assert_eq!(sequence[0].evidence, "last_value=9 max_value=10");
    Ok(())
}

/// GET `/metrics` over a plain HTTP/1.0 request; the body.
async fn scrape(addr: std::net::SocketAddr) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: pgfleet\r\n\r\n")
        .await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    anyhow::ensure!(
        response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200"),
        "{response}"
    );
    Ok(response)
}

/// A latency threshold below any real probe's round trip: every member is
/// past it, GetHealth names the breach with its value, and `/metrics` has
/// `pgfleet_threshold_breached` at 1 for it; a threshold nobody reaches
/// (pool_waiting) is 0 there and absent from GetHealth.
#[tokio::test(flavor = "multi_thread")]
async fn a_breached_threshold_shows_in_get_health_and_metrics() -> anyhow::Result<()> {
    let mut fleet = Fleet::create().await?;
    fleet.server_toml = "metrics_addr = '127.0.0.1:0'\n".to_owned();
    let s = session_on(
        fleet,
        "[health]\ninterval = '200ms'\n[insights.alerts]\ntarget_latency = '1us'\npool_waiting = 1000\n",
    )
    .await?;
    let mut fleet_client =
        pgfleet_proto::pgfleet::v1::fleet_service_client::FleetServiceClient::new(s.channel.clone());
    let mut breached = None;
    for _ in 0..100 {
        let health = fleet_client
            .get_health(bearer(
                pb::GetHealthRequest {
                    cloud: "aws".to_owned(),
                    database: "app".to_owned(),
                },
                &s.reader,
            ))
            .await?
            .into_inner();
        breached = health.targets.first().filter(|t| !t.breaches.is_empty()).cloned();
        if breached.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let health = breached.ok_or_else(|| anyhow::anyhow!("no breach reported by GetHealth"))?;
    assert_eq!(health.breaches.len(), 1, "{health:?}");
    let breach = &health.breaches[0];
    assert_eq!(breach.threshold, "target_latency");
    assert!(
        breach.value > breach.limit && (breach.limit - 1e-6).abs() < 1e-12,
        "{breach:?}"
    );

    let metrics = scrape(s.server.metrics_addr().expect("metrics_addr is configured")).await?;
    assert!(
        metrics.contains(
            "pgfleet_threshold_breached{cloud=\"aws\",database=\"app\",member=\"primary\",threshold=\"target_latency\"} 1"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "pgfleet_threshold_breached{cloud=\"aws\",database=\"app\",member=\"primary\",threshold=\"pool_waiting\"} 0"
        ),
        "{metrics}"
    );
    Ok(())
}

/// The service end to end through the real grpcurl (reflection, JSON):
/// listed, plans compared, recommendations, the slow log, activity, and a
/// READER's CancelBackend refused.
#[tokio::test(flavor = "multi_thread")]
async fn grpcurl_reaches_every_insights_rpc() -> anyhow::Result<()> {
    let s = session("[insights]\nslow_query_threshold = '1ms'\n").await?;
    crate::support::run_sql(
        &s,
        "aws",
        "app",
        "CREATE TABLE orders (id int PRIMARY KEY, total numeric)",
    )
    .await?;
    crate::support::run_sql(
        &s,
        "gcp",
        "app",
        "CREATE TABLE orders (id int PRIMARY KEY, total numeric)",
    )
    .await?;
    let addr = s.server.local_addr().to_string();
    let master = format!("authorization: Bearer {}", s.master);
    let reader = format!("authorization: Bearer {}", s.reader);
    let call = |header: &str, body: &str, method: &str| {
        crate::support::run_grpcurl(&[
            "-plaintext",
            "-H",
            header,
            "-d",
            body,
            &addr,
            &format!("pgfleet.v1.InsightsService/{method}"),
        ])
    };

    let (ok, listed, stderr) =
        crate::support::run_grpcurl(&["-plaintext", &addr, "list", "pgfleet.v1.InsightsService"]);
    assert!(ok, "{stderr}");
    for method in [
        "SearchSlowQueries",
        "ListActivity",
        "CancelBackend",
        "TerminateBackend",
        "GetStatementStats",
        "ExplainQuery",
        "GetRecommendations",
    ] {
        assert!(
            listed.contains(&format!("pgfleet.v1.InsightsService.{method}")),
            "{listed}"
        );
    }

    let (ok, out, stderr) = call(
        &master,
        r#"{"query": "SELECT total FROM orders WHERE id = 7", "database": "app", "analyze": true}"#,
        "ExplainQuery",
    );
    assert!(ok, "{stderr}");
    let explained: serde_json::Value = serde_json::from_str(&out)?;
    assert_eq!(explained["plans"].as_array().map(Vec::len), Some(2), "{out}");
    assert!(
        out.contains("on public.orders") && out.contains("Actual Rows"),
        "{out}"
    );

    let (ok, out, stderr) = call(&reader, r#"{"database": "app"}"#, "GetRecommendations");
    assert!(ok, "{stderr}");
    serde_json::from_str::<serde_json::Value>(&out)?;

    let (ok, _, stderr) = call(&reader, r#"{"database": "app"}"#, "GetStatementStats");
    assert!(ok, "{stderr}");

    // A read through pgfleet past the 1 ms threshold, then its entry.
    let query = crate::support::run_grpcurl(&[
        "-plaintext",
        "-H",
        &master,
        "-d",
        r#"{"query": "SELECT pg_sleep(0.01), 'not-in-the-log'", "database": "app", "cloud": "aws"}"#,
        &addr,
        "pgfleet.v1.QueryService/Execute",
    ]);
    assert!(query.0, "{}", query.2);
    let mut entries = Vec::new();
    for _ in 0..100 {
        let (ok, out, stderr) = call(
            &master,
            r#"{"cloud": "aws", "pageSize": 10}"#,
            "SearchSlowQueries",
        );
        assert!(ok, "{stderr}");
        let page: serde_json::Value = serde_json::from_str(&out)?;
        entries = page["slowQueries"].as_array().cloned().unwrap_or_default();
        if !entries.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let text = entries
        .iter()
        .find_map(|entry| {
            entry["normalizedQuery"]
                .as_str()
                .filter(|q| q.contains("pg_sleep"))
        })
        .ok_or_else(|| anyhow::anyhow!("no slow entry: {entries:?}"))?;
    assert_eq!(text, "SELECT pg_sleep($1), $2");

    let (ok, out, stderr) = call(&reader, r#"{"database": "app"}"#, "ListActivity");
    assert!(ok, "{stderr}");
    assert!(out.contains("\"targets\""), "{out}");

    let (ok, _, stderr) = call(
        &reader,
        r#"{"target": {"cloud": "aws", "database": "app"}, "pid": 1}"#,
        "CancelBackend",
    );
    assert!(!ok);
    assert!(stderr.contains("PermissionDenied"), "{stderr}");
    Ok(())
}
