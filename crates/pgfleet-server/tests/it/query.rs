//! QueryService against real databases standing for clouds.

use std::time::Duration;

use pgfleet_proto::pgfleet::v1 as pb;
use pgfleet_proto::pgfleet::v1::query_service_client::QueryServiceClient;
use tonic::Code;
use tonic::transport::Channel;
use tonic_types::StatusExt;

use crate::support::{self, ProxiedCloud, bearer, resident_bytes, session};

fn client(channel: &Channel) -> QueryServiceClient<Channel> {
    QueryServiceClient::new(channel.clone()).max_decoding_message_size(64 * 1024 * 1024)
}

fn execute(query: &str, database: &str) -> pb::ExecuteRequest {
    pb::ExecuteRequest {
        query: query.to_owned(),
        database: database.to_owned(),
        scope: Some(pb::execute_request::Scope::AllClouds(pb::AllClouds {})),
        ..Default::default()
    }
}

fn cell_text(cell: &pb::Cell) -> String {
    use pb::cell::Kind;
    match &cell.kind {
        Some(Kind::NullValue(_)) | None => "NULL".to_owned(),
        Some(Kind::BoolValue(v)) => if *v { "t" } else { "f" }.to_owned(),
        Some(Kind::IntValue(v)) => v.to_string(),
        Some(Kind::DoubleValue(v)) => v.to_string(),
        Some(Kind::TextValue(v) | Kind::JsonValue(v) | Kind::FormattedValue(v)) => v.clone(),
        Some(Kind::BytesValue(v)) => {
            format!("\\x{}", v.iter().map(|b| format!("{b:02x}")).collect::<String>())
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn fans_out_to_every_cloud_and_reports_each_target() -> anyhow::Result<()> {
    let s = session("").await?;
    let response = client(&s.channel)
        .execute(bearer(
            execute("SELECT current_database() AS db, 41 + 1 AS answer", "app"),
            &s.reader,
        ))
        .await?
        .into_inner();
    assert!(response.success, "{response:?}");
    assert_eq!(response.results.len(), 2);
    for result in &response.results {
        let target = result.target.as_ref().expect("target");
        let expected_db = s
            .fleet
            .databases
            .iter()
            .find(|(cloud, name, _)| *cloud == target.cloud && *name == target.database)
            .map(|(_, _, db)| db.name().to_owned())
            .expect("configured");
        let statement = &result.statements[0];
        assert_eq!(statement.command_tag, "SELECT 1");
        assert_eq!(statement.columns[0].name, "db");
        assert_eq!(statement.columns[0].type_name, "name");
        assert_eq!(statement.columns[1].type_name, "integer");
        let row = &statement.rows[0];
        assert_eq!(cell_text(&row.cells[0]), expected_db);
        assert_eq!(cell_text(&row.cells[1]), "42");
    }
    s.server.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_target_fails_alone_and_the_others_succeed() -> anyhow::Result<()> {
    let azure = ProxiedCloud::start("q_azure_app").await?;
    let s = session(&azure.toml()).await?;
    azure.proxy.cut();
    let response = client(&s.channel)
        .execute(bearer(execute("SELECT 1 AS one", "app"), &s.reader))
        .await?
        .into_inner();
    assert!(!response.success, "partial failure is not success");
    assert_eq!(response.results.len(), 3);
    for result in &response.results {
        let cloud = result
            .target
            .as_ref()
            .map(|t| t.cloud.as_str())
            .unwrap_or_default();
        if cloud == "azure" {
            assert!(!result.success);
            let error = result.error.as_ref().expect("error");
            assert_eq!(error.code, pb::ErrorCode::Unavailable as i32, "{error:?}");
            assert!(error.message.contains("azure/app"), "{}", error.message);
        } else {
            assert!(result.success, "{cloud}: {result:?}");
            assert_eq!(cell_text(&result.statements[0].rows[0].cells[0]), "1");
        }
    }
    // Back again: all three answer.
    azure.proxy.pass();
    let response = client(&s.channel)
        .execute(bearer(execute("SELECT 1 AS one", "app"), &s.reader))
        .await?
        .into_inner();
    assert!(response.success, "{response:?}");
    s.server.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_statement_rolls_back_its_target_only() -> anyhow::Result<()> {
    let s = session("").await?;
    for (cloud, name, db) in &s.fleet.databases {
        if name != "app" {
            continue;
        }
        let pool = db.pool().await?;
        sqlx::query("CREATE TABLE accounts (id int PRIMARY KEY, owner text NOT NULL)")
            .execute(&pool)
            .await?;
        if cloud == "gcp" {
            sqlx::query("INSERT INTO accounts VALUES (2, 'already here')")
                .execute(&pool)
                .await?;
        }
        pool.close().await;
    }
    let text = "INSERT INTO accounts VALUES (1, 'first');\nINSERT INTO accounts VALUES (2, 'second')";
    let response = client(&s.channel)
        .execute(bearer(execute(text, "app"), &s.user))
        .await?
        .into_inner();
    assert!(!response.success);
    for result in &response.results {
        let cloud = result
            .target
            .as_ref()
            .map(|t| t.cloud.clone())
            .unwrap_or_default();
        let db = &s
            .fleet
            .databases
            .iter()
            .find(|(c, n, _)| *c == cloud && n == "app")
            .expect("db")
            .2;
        let pool = db.pool().await?;
        let ids: Vec<i32> = sqlx::query_scalar("SELECT id FROM accounts ORDER BY id")
            .fetch_all(&pool)
            .await?;
        pool.close().await;
        if cloud == "aws" {
            assert!(result.success, "{result:?}");
            assert_eq!(
                result
                    .statements
                    .iter()
                    .map(|s| s.command_tag.as_str())
                    .collect::<Vec<_>>(),
                ["INSERT 0 1", "INSERT 0 1"]
            );
            assert_eq!(ids, [1, 2]);
        } else {
            assert!(!result.success);
            assert_eq!(result.failed_statement_index, Some(1));
            let postgres = result
                .error
                .as_ref()
                .and_then(|e| e.postgres.clone())
                .expect("postgres error");
            assert_eq!(postgres.sqlstate, "23505");
            assert_eq!(postgres.detail, "Key (id)=(2) already exists.");
            assert_eq!(postgres.constraint_name, "accounts_pkey");
            assert_eq!(postgres.table_name, "accounts");
            assert_eq!(ids, [2], "statement 0 was rolled back on gcp");
        }
    }

    // Errors keep hint and position too.
    let response = client(&s.channel)
        .execute(bearer(
            execute("SELECT nosuchcolumn FROM accounts", "app"),
            &s.reader,
        ))
        .await?
        .into_inner();
    let postgres = response.results[0]
        .error
        .as_ref()
        .and_then(|e| e.postgres.clone())
        .expect("error");
    assert_eq!(postgres.sqlstate, "42703");
    assert_eq!(postgres.position, 8);
    let response = client(&s.channel)
        .execute(bearer(execute("SELECT * FROM acounts", "app"), &s.reader))
        .await?
        .into_inner();
    let postgres = response.results[0]
        .error
        .as_ref()
        .and_then(|e| e.postgres.clone())
        .expect("error");
    assert_eq!(postgres.sqlstate, "42P01");
    s.server.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_are_refused_precisely_before_anything_runs() -> anyhow::Result<()> {
    let s = session("").await?;
    let mut query = client(&s.channel);
    let cases: Vec<(pb::ExecuteRequest, Code, &str)> = vec![
        (execute("", "app"), Code::InvalidArgument, "query"),
        (
            execute("   -- only a comment\n", "app"),
            Code::InvalidArgument,
            "query",
        ),
        (
            execute(&format!("SELECT '{}'", "x".repeat(2 * 1024 * 1024)), "app"),
            Code::InvalidArgument,
            "query",
        ),
        (execute("SELECT 1", "nope"), Code::NotFound, ""),
        (execute("SELECT 1", ""), Code::InvalidArgument, "database"),
        (
            pb::ExecuteRequest {
                scope: Some(pb::execute_request::Scope::Cloud("oracle-cloud".to_owned())),
                ..execute("SELECT 1", "app")
            },
            Code::NotFound,
            "",
        ),
        (
            pb::ExecuteRequest {
                pg_schema: "secret_schema".to_owned(),
                ..execute("SELECT 1", "app")
            },
            Code::InvalidArgument,
            "pg_schema",
        ),
        (
            pb::ExecuteRequest {
                timeout: Some(prost_types::Duration {
                    seconds: 301,
                    nanos: 0,
                }),
                ..execute("SELECT 1", "app")
            },
            Code::InvalidArgument,
            "timeout",
        ),
        (
            execute("SELECT 1;\nSELEC 2", "app"),
            Code::InvalidArgument,
            "query",
        ),
        (
            execute("BEGIN; SELECT 1; COMMIT", "app"),
            Code::InvalidArgument,
            "query",
        ),
        (execute("VACUUM; SELECT 1", "app"), Code::InvalidArgument, "query"),
    ];
    for (request, code, field) in cases {
        let shown = request.query.chars().take(40).collect::<String>();
        let status = query
            .execute(bearer(request, &s.master))
            .await
            .expect_err("refused");
        assert_eq!(status.code(), code, "{shown:?}: {}", status.message());
        if !field.is_empty() {
            let details = status.get_error_details();
            let violation = details.bad_request().map(|b| b.field_violations[0].field.clone());
            assert_eq!(violation.as_deref(), Some(field), "{shown:?}");
        }
    }
    let parse = query
        .execute(bearer(execute("SELECT 1;\nSELEC 2", "app"), &s.master))
        .await
        .expect_err("parse error");
    assert!(
        parse.message().contains("line 2, column 1"),
        "{}",
        parse.message()
    );
    s.server.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn dangerous_statements_need_master_and_confirmation() -> anyhow::Result<()> {
    let s = session("").await?;
    let mut query = client(&s.channel);
    query
        .execute(bearer(execute("CREATE TABLE doomed (id int)", "app"), &s.master))
        .await?;
    let as_user = query
        .execute(bearer(execute("DROP TABLE doomed", "app"), &s.user))
        .await
        .expect_err("USER");
    assert_eq!(as_user.code(), Code::PermissionDenied);
    let unconfirmed = query
        .execute(bearer(
            execute("DELETE FROM doomed; DROP TABLE doomed", "app"),
            &s.master,
        ))
        .await
        .expect_err("unconfirmed");
    assert_eq!(unconfirmed.code(), Code::FailedPrecondition);
    for finding in ["DELETE_WITHOUT_WHERE", "DROP"] {
        assert!(
            unconfirmed.message().contains(finding),
            "{}",
            unconfirmed.message()
        );
    }
    for (_, name, db) in &s.fleet.databases {
        if name == "app" {
            let pool = db.pool().await?;
            let exists: Option<String> = sqlx::query_scalar("SELECT to_regclass('doomed')::text")
                .fetch_one(&pool)
                .await?;
            assert_eq!(exists.as_deref(), Some("doomed"), "nothing ran");
            pool.close().await;
        }
    }
    let confirmed = query
        .execute(bearer(
            pb::ExecuteRequest {
                confirm_dangerous: true,
                ..execute("DROP TABLE doomed", "app")
            },
            &s.master,
        ))
        .await?
        .into_inner();
    assert!(confirmed.success, "{confirmed:?}");
    assert_eq!(confirmed.confirmed_findings[0].code, "DROP");
    assert_eq!(confirmed.results[0].statements[0].command_tag, "DROP TABLE");
    s.server.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn timeouts_and_cancellation_stop_the_statement_on_the_server() -> anyhow::Result<()> {
    let s = session("").await?;
    // statement_timeout from the request's timeout.
    let response = client(&s.channel)
        .execute(bearer(
            pb::ExecuteRequest {
                timeout: Some(prost_types::Duration { seconds: 1, nanos: 0 }),
                scope: Some(pb::execute_request::Scope::Cloud("aws".to_owned())),
                ..execute("SELECT pg_sleep(20)", "app")
            },
            &s.reader,
        ))
        .await?
        .into_inner();
    let error = response.results[0].error.clone().expect("timed out");
    assert_eq!(error.code, pb::ErrorCode::DeadlineExceeded as i32, "{error:?}");
    assert_eq!(error.postgres.map(|p| p.sqlstate).as_deref(), Some("57014"));

    // The client's deadline passes: the server-side statement is cancelled.
    let marker = format!("cancel-me-{}", uuid::Uuid::new_v4().simple());
    let mut request = bearer(
        pb::ExecuteRequest {
            scope: Some(pb::execute_request::Scope::Cloud("aws".to_owned())),
            ..execute(&format!("SELECT pg_sleep(30), '{marker}'"), "app")
        },
        &s.reader,
    );
    request.set_timeout(Duration::from_millis(1500));
    let status = client(&s.channel).execute(request).await.expect_err("deadline");
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{status:?}"
    );
    let admin = sqlx::PgPool::connect(&pgfleet_testkit::pg_admin_url()).await?;
    let running = || {
        let admin = admin.clone();
        let marker = marker.clone();
        async move {
            let count: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%' || $1 || '%' AND pid <> pg_backend_pid()",
            )
            .bind(&marker)
            .fetch_one(&admin)
            .await?;
            Ok::<bool, sqlx::Error>(count == 0)
        }
    };
    pgfleet_testkit::wait_until(Duration::from_secs(1), Duration::from_millis(50), running).await?;
    admin.close().await;

    // The pool is usable afterwards.
    let after = client(&s.channel)
        .execute(bearer(execute("SELECT 1", "app"), &s.reader))
        .await?
        .into_inner();
    assert!(after.success);
    s.server.shutdown().await?;
    Ok(())
}

/// Expressions of at least 40 PostgreSQL types; each must come back as psql
/// prints it (typed cells compared by value).
const TYPED_EXPRESSIONS: &[&str] = &[
    "true",
    "32767::int2",
    "(-2147483648)::int4",
    "9223372036854775807::int8",
    "1.5::float4",
    "'NaN'::float8",
    "'-Infinity'::float8",
    "0.1::float8",
    "123456789012345678901234567890.123456789::numeric",
    "'NaN'::numeric",
    "'Infinity'::numeric",
    "'hello, world'::text",
    "'ab'::varchar(5)",
    "'ab'::char(5)",
    "'x'::\"char\"",
    "'a_name'::name",
    "'\\x00ff10'::bytea",
    "'{\"b\": 1, \"a\": [1, 2]}'::json",
    "'{\"b\": 1, \"a\": [1, 2]}'::jsonb",
    "'2024-02-29'::date",
    "'0044-03-15 BC'::date",
    "'infinity'::date",
    "'13:45:07.123456'::time",
    "'13:45:07+05:30'::timetz",
    "'2024-02-29 13:45:07.5'::timestamp",
    "'2024-02-29 13:45:07.5+02'::timestamptz",
    "'-infinity'::timestamptz",
    "'1 year 2 months 3 days 04:05:06.789'::interval",
    "'-1 day -00:00:01'::interval",
    "ARRAY[1, NULL, 3]::int4[]",
    "ARRAY['a b', 'c\"d', NULL, '']::text[]",
    "'{{1,2},{3,4}}'::int8[]",
    "ARRAY['2024-01-01'::date]",
    "int4range(1, 10)",
    "'[2024-01-01,2024-02-01)'::daterange",
    "tstzrange('2024-01-01 00:00+00', '2024-01-02 00:00+00')",
    "numrange(1.5, 2.5, '[]')",
    "'happy'::mood",
    "5::positive_int",
    "ROW(1, 'x y')::pair",
    "point(1.5, 2)",
    "line '{1,2,3}'",
    "lseg '[(0,0),(1,1)]'",
    "box '(1,1),(0,0)'",
    "path '[(0,0),(1,1),(2,0)]'",
    "polygon '((0,0),(1,1),(1,0))'",
    "circle '<(1,1),2>'",
    "'192.168.1.1'::inet",
    "'2001:db8::1/64'::inet",
    "'10.0.0.0/8'::cidr",
    "'08:00:2b:01:02:03'::macaddr",
    "'08:00:2b:01:02:03:04:05'::macaddr8",
    "B'1011'::bit(4)",
    "B'101'::varbit",
    "12.34::money",
    "'a1b2c3d4-0000-4000-8000-000000000001'::uuid",
    "'<a>x</a>'::xml",
    "'fat cat'::tsvector",
    "'fat & cat'::tsquery",
    "'0/16B3748'::pg_lsn",
    "'pg_class'::regclass",
    "42::oid",
    "'\"a\"=>\"1\", \"b\"=>NULL'::hstore",
    "'Mixed Case'::citext",
    // numeric and uuid are written in Rust: more of their edge cases.
    "'-Infinity'::numeric",
    "0::numeric",
    "0.000::numeric",
    "(-0.000123)::numeric",
    "(-12345.6789)::numeric(20, 2)",
    "10000::numeric",
    "1e20::numeric",
    "1.5e-20::numeric",
    "99999999.99990000::numeric",
    "'00000000-0000-0000-0000-000000000000'::uuid",
    "'FFFFFFFF-ABCD-4000-8000-00000000000A'::uuid",
    // Types PostgreSQL does not take back as parameters: written in Rust.
    "pg_sleep(0)",
    "ROW(1, 'x y', NULL, '', 'a\"b', ROW(2, 'c'), ROW())",
];

#[tokio::test(flavor = "multi_thread")]
async fn every_type_comes_back_as_psql_prints_it() -> anyhow::Result<()> {
    let s = session("").await?;
    let aws_app = &s
        .fleet
        .databases
        .iter()
        .find(|(c, n, _)| c == "aws" && n == "app")
        .expect("aws app")
        .2;
    let pool = aws_app.pool().await?;
    for setup in [
        "CREATE TYPE mood AS ENUM ('sad', 'happy')",
        "CREATE DOMAIN positive_int AS int CHECK (VALUE > 0)",
        "CREATE TYPE pair AS (a int, b text)",
        "CREATE EXTENSION IF NOT EXISTS hstore",
        "CREATE EXTENSION IF NOT EXISTS citext",
    ] {
        sqlx::query(setup).execute(&pool).await?;
    }
    pool.close().await;
    assert!(TYPED_EXPRESSIONS.len() >= 60);

    let select = format!(
        "SELECT {}, NULL::int AS nothing",
        TYPED_EXPRESSIONS
            .iter()
            .enumerate()
            .map(|(i, e)| format!("{e} AS c{i}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let response = client(&s.channel)
        .execute(bearer(
            pb::ExecuteRequest {
                scope: Some(pb::execute_request::Scope::Cloud("aws".to_owned())),
                ..execute(&select, "app")
            },
            &s.reader,
        ))
        .await?
        .into_inner();
    assert!(response.success, "{:?}", response.results[0].error);
    let statement = &response.results[0].statements[0];
    let cells = &statement.rows[0].cells;

    // psql itself, same server, UTC and ISO dates as pgfleet's sessions.
    let output = std::process::Command::new("psql")
        .env("PGTZ", "UTC")
        .env("PGDATESTYLE", "ISO, MDY")
        .args(["-X", "-A", "-t", "-F", "\u{1f}", "-v", "ON_ERROR_STOP=1"])
        .args([
            "-h",
            aws_app.host(),
            "-p",
            &aws_app.port().to_string(),
            "-U",
            aws_app.user(),
            "-d",
            aws_app.name(),
        ])
        .args(["-c", &select])
        .output()?;
    assert!(
        output.status.success(),
        "psql: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let psql = String::from_utf8(output.stdout)?;
    let expected: Vec<&str> = psql.trim_end_matches('\n').split('\u{1f}').collect();
    assert_eq!(expected.len(), TYPED_EXPRESSIONS.len() + 1);

    let mut mismatches = Vec::new();
    for (index, expression) in TYPED_EXPRESSIONS.iter().enumerate() {
        let cell = &cells[index];
        let want = expected[index];
        let matches = match &cell.kind {
            Some(pb::cell::Kind::DoubleValue(got)) => match want {
                "NaN" => got.is_nan(),
                "Infinity" => *got == f64::INFINITY,
                "-Infinity" => *got == f64::NEG_INFINITY,
                text => text.parse::<f64>().is_ok_and(|w| w == *got),
            },
            _ => cell_text(cell) == want,
        };
        if !matches {
            mismatches.push(format!(
                "{expression} ({}): pgfleet {:?} vs psql {want:?}",
                statement.columns[index].type_name, cell.kind
            ));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} mismatches:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
    assert!(matches!(
        cells.last().and_then(|c| c.kind.clone()),
        Some(pb::cell::Kind::NullValue(_))
    ));
    // Typed cells where protobuf has a type for it.
    assert!(matches!(cells[0].kind, Some(pb::cell::Kind::BoolValue(true))));
    assert!(matches!(cells[3].kind, Some(pb::cell::Kind::IntValue(i64::MAX))));
    assert!(matches!(cells[5].kind, Some(pb::cell::Kind::DoubleValue(v)) if v.is_nan()));
    assert!(matches!(&cells[16].kind, Some(pb::cell::Kind::BytesValue(b)) if b == &[0, 0xff, 0x10]));
    assert!(matches!(&cells[18].kind, Some(pb::cell::Kind::JsonValue(_))));
    assert_eq!(statement.columns[25].type_name, "timestamp with time zone");
    assert_eq!(statement.columns[37].type_name, "mood");

    // The one known gap fails loudly and cleanly, and the pool stays usable.
    let multirange = client(&s.channel)
        .execute(bearer(
            pb::ExecuteRequest {
                scope: Some(pb::execute_request::Scope::Cloud("aws".to_owned())),
                ..execute("SELECT '{[1,3), [5,7)}'::int4multirange AS m", "app")
            },
            &s.reader,
        ))
        .await?
        .into_inner();
    let error = multirange.results[0]
        .error
        .clone()
        .expect("multirange is not supported");
    assert_eq!(error.code, pb::ErrorCode::Unimplemented as i32, "{error:?}");
    assert!(error.message.contains("cast it to text"), "{}", error.message);
    let as_text = client(&s.channel)
        .execute(bearer(
            pb::ExecuteRequest {
                scope: Some(pb::execute_request::Scope::Cloud("aws".to_owned())),
                ..execute("SELECT '{[1,3), [5,7)}'::int4multirange::text AS m", "app")
            },
            &s.reader,
        ))
        .await?
        .into_inner();
    assert_eq!(
        cell_text(&as_text.results[0].statements[0].rows[0].cells[0]),
        "{[1,3),[5,7)}"
    );
    s.server.shutdown().await?;
    Ok(())
}

/// Writes hidden in texts a READER may send. Each must be refused before
/// running or fail inside PostgreSQL's READ ONLY transaction.
const HIDDEN_WRITES: &[&str] = &[
    "WITH gone AS (DELETE FROM guard RETURNING *) SELECT * FROM gone",
    "SELECT * INTO stolen FROM guard",
    "CREATE TABLE stolen AS SELECT * FROM guard",
    "SELECT nextval('seq')",
    "SELECT setval('seq', 100)",
    "SELECT * FROM guard FOR UPDATE",
    "SELECT writes()",
    "SELECT v FROM guard WHERE writes() > 0",
    "COPY guard TO PROGRAM 'touch /tmp/pgfleet-pwned'",
    "COPY guard FROM STDIN",
    "DO $$ BEGIN DELETE FROM guard; END $$",
    "CALL wipe()",
    "SET ROLE postgres",
    "SET SESSION AUTHORIZATION postgres",
    "SELECT set_config('default_transaction_read_only', 'off', false)",
    "LOCK TABLE guard IN ACCESS EXCLUSIVE MODE",
    "NOTIFY pgfleet_channel, 'hello'",
    "PREPARE wipe_it AS DELETE FROM guard",
    "EXECUTE wipe_it",
    "SELECT 1; /* just a comment */ DELETE FROM guard",
    "SELECT 1 -- comment\n; DELETE FROM guard",
    "COMMIT; DELETE FROM guard",
    "SELECT 1; SET TRANSACTION READ WRITE; DELETE FROM guard",
    "SET TRANSACTION READ WRITE",
    "EXPLAIN ANALYZE DELETE FROM guard",
    "SELECT pg_advisory_lock(1)",
    "SELECT dblink_exec('dbname=postgres', 'DELETE FROM guard')",
    "SELECT pg_read_file('/etc/hostname')",
    "SELECT lo_import('/etc/hostname')",
    "SELECT pg_terminate_backend(pg_backend_pid())",
    "SELECT pg_cancel_backend(1)",
    "TRUNCATE guard",
    "INSERT INTO guard VALUES (2)",
    "UPDATE guard SET v = 3",
    "DELETE FROM guard WHERE v = 1",
    "MERGE INTO guard USING (SELECT 1 AS v) s ON guard.v = s.v WHEN MATCHED THEN DELETE",
    "LISTEN pgfleet_channel",
    "DISCARD ALL",
    "VACUUM guard",
    "ALTER SEQUENCE seq RESTART WITH 50",
];

#[tokio::test(flavor = "multi_thread")]
async fn a_reader_cannot_write_whatever_the_sql_hides() -> anyhow::Result<()> {
    let s = session("").await?;
    for (_, name, db) in &s.fleet.databases {
        if name != "app" {
            continue;
        }
        let pool = db.pool().await?;
        for setup in [
            "CREATE TABLE guard (v int)",
            "INSERT INTO guard VALUES (1)",
            "CREATE SEQUENCE seq",
            "CREATE FUNCTION writes() RETURNS int LANGUAGE sql AS 'INSERT INTO guard VALUES (99) RETURNING v'",
            "CREATE PROCEDURE wipe() LANGUAGE sql AS 'DELETE FROM guard'",
        ] {
            sqlx::query(setup).execute(&pool).await?;
        }
        pool.close().await;
    }
    // A file of this run only: another process may use /tmp too.
    let pwned = format!("/tmp/pgfleet-pwned-{}", std::process::id());
    let mut outcomes = Vec::new();
    for text in HIDDEN_WRITES {
        let text = &text.replace("/tmp/pgfleet-pwned", &pwned);
        let result = client(&s.channel)
            .execute(bearer(execute(text, "app"), &s.reader))
            .await;
        let outcome = match result {
            Err(status) => {
                assert!(
                    matches!(status.code(), Code::PermissionDenied | Code::InvalidArgument),
                    "{text}: {status:?}"
                );
                format!("refused ({:?})", status.code())
            }
            Ok(response) => {
                let response = response.into_inner();
                assert!(!response.success, "{text} succeeded for a READER: {response:?}");
                let codes: Vec<String> = response
                    .results
                    .iter()
                    .map(|r| {
                        r.error
                            .as_ref()
                            .and_then(|e| e.postgres.as_ref())
                            .map_or_else(String::new, |p| p.sqlstate.clone())
                    })
                    .collect();
                // 25006: read-only transaction; 42501: insufficient privilege.
                assert!(
                    codes.iter().all(|c| c == "25006" || c == "42501"),
                    "{text}: {codes:?}"
                );
                format!("failed in PostgreSQL ({})", codes.join(","))
            }
        };
        outcomes.push(format!("{text:?} -> {outcome}"));
    }
    // A dollar-quoted string that only looks like statements is just a read.
    let harmless = client(&s.channel)
        .execute(bearer(
            execute("SELECT $$; DELETE FROM guard; $$ AS text", "app"),
            &s.reader,
        ))
        .await?
        .into_inner();
    assert!(harmless.success);
    // read_only = true holds for a USER too.
    let read_only = client(&s.channel)
        .execute(bearer(
            pb::ExecuteRequest {
                read_only: true,
                ..execute("DELETE FROM guard WHERE v = 1", "app")
            },
            &s.user,
        ))
        .await
        .expect_err("read_only");
    assert_eq!(read_only.code(), Code::InvalidArgument);

    for (_, name, db) in &s.fleet.databases {
        if name != "app" {
            continue;
        }
        let pool = db.pool().await?;
        let rows: Vec<i32> = sqlx::query_scalar("SELECT v FROM guard ORDER BY v")
            .fetch_all(&pool)
            .await?;
        assert_eq!(rows, [1], "guard changed; outcomes:\n{}", outcomes.join("\n"));
        let (last, called): (i64, bool) = sqlx::query_as("SELECT last_value, is_called FROM seq")
            .fetch_one(&pool)
            .await?;
        assert_eq!((last, called), (1, false), "sequence advanced");
        let stolen: Option<String> = sqlx::query_scalar("SELECT to_regclass('stolen')::text")
            .fetch_one(&pool)
            .await?;
        assert_eq!(stolen, None);
        // pg_locks is server-wide: only this database's locks are this
        // test's (other tests' migration and job locks come and go).
        let locks: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' \
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        )
        .fetch_one(&pool)
        .await?;
        assert_eq!(locks, 0, "no advisory lock leaked");
        pool.close().await;
    }
    assert!(!std::path::Path::new(&pwned).exists(), "COPY TO PROGRAM ran");
    s.server.shutdown().await?;
    Ok(())
}

fn stream_request(
    query: &str,
    scope: pb::execute_stream_request::Scope,
    batch_size: u32,
) -> pb::ExecuteStreamRequest {
    pb::ExecuteStreamRequest {
        query: query.to_owned(),
        database: "app".to_owned(),
        scope: Some(scope),
        batch_size,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn streams_interleave_targets_in_order_per_target() -> anyhow::Result<()> {
    let s = session("").await?;
    let mut stream = client(&s.channel)
        .execute_stream(bearer(
            stream_request(
                "SELECT g FROM generate_series(1, 3000) g; SELECT 'done' AS status",
                pb::execute_stream_request::Scope::AllClouds(pb::AllClouds {}),
                250,
            ),
            &s.reader,
        ))
        .await?
        .into_inner();
    use pb::execute_stream_response::Event;
    let mut kinds = Vec::new();
    let mut rows_per_target = std::collections::BTreeMap::<String, Vec<i64>>::new();
    let mut finished = None;
    while let Some(message) = stream.message().await? {
        let event = message.event.expect("event");
        let (kind, cloud) = match &event {
            Event::ExecutionStarted(started) => {
                assert_eq!(started.targets.len(), 2);
                ("started", String::new())
            }
            Event::TargetStarted(t) => ("target_started", t.target.clone().unwrap_or_default().cloud),
            Event::ResultHeader(h) => ("header", h.target.clone().unwrap_or_default().cloud),
            Event::RowBatch(batch) => {
                let cloud = batch.target.clone().unwrap_or_default().cloud;
                assert!(batch.rows.len() <= 250);
                if batch.statement_index == 0 {
                    let values = rows_per_target.entry(cloud.clone()).or_default();
                    values.extend(batch.rows.iter().map(|r| match r.cells[0].kind {
                        Some(pb::cell::Kind::IntValue(v)) => v,
                        _ => -1,
                    }));
                }
                ("rows", cloud)
            }
            Event::StatementSummary(summary) => {
                ("statement", summary.target.clone().unwrap_or_default().cloud)
            }
            Event::TargetSummary(summary) => {
                assert!(summary.success, "{summary:?}");
                assert_eq!(summary.statements.len(), 2);
                assert_eq!(summary.statements[0].command_tag, "SELECT 3000");
                ("target_summary", summary.target.clone().unwrap_or_default().cloud)
            }
            Event::ExecutionFinished(done) => {
                finished = Some(done.success);
                ("finished", String::new())
            }
            Event::ResultComparison(_) => panic!("a comparison without compare"),
        };
        kinds.push((kind, cloud));
    }
    assert_eq!(finished, Some(true));
    assert_eq!(kinds.first().map(|k| k.0), Some("started"));
    assert_eq!(kinds.last().map(|k| k.0), Some("finished"));
    for (cloud, values) in &rows_per_target {
        assert_eq!(values.len(), 3000, "{cloud}");
        assert!(
            values.windows(2).all(|w| w[1] == w[0] + 1),
            "{cloud}: rows in order"
        );
    }
    assert_eq!(rows_per_target.len(), 2);
    s.server.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn five_million_rows_to_a_slow_client_keep_server_memory_flat() -> anyhow::Result<()> {
    let s = session("").await?;
    let baseline = resident_bytes();
    // The default 30 s statement timeout is what a loaded 2-core machine
    // needs for five million rows to a slow client; this test is about
    // memory, not speed, so it allows the longest timeout the server takes.
    let request = pb::ExecuteStreamRequest {
        timeout: Some(prost_types::Duration {
            seconds: 300,
            nanos: 0,
        }),
        ..stream_request(
            "SELECT g AS n, 'row number ' || g AS label FROM generate_series(1, 5000000) g",
            pb::execute_stream_request::Scope::Cloud("aws".to_owned()),
            5000,
        )
    };
    let mut stream = client(&s.channel)
        .execute_stream(bearer(request, &s.reader))
        .await?
        .into_inner();
    let mut rows: u64 = 0;
    let mut messages: u64 = 0;
    let mut peak = baseline;
    let mut last_value = 0;
    let mut success = false;
    while let Some(message) = stream.message().await? {
        messages += 1;
        match message.event {
            Some(pb::execute_stream_response::Event::RowBatch(batch)) => {
                rows += batch.rows.len() as u64;
                if let Some(Some(pb::cell::Kind::IntValue(v))) =
                    batch.rows.last().map(|r| r.cells[0].kind.clone())
                {
                    last_value = v;
                }
            }
            Some(pb::execute_stream_response::Event::ExecutionFinished(done)) => success = done.success,
            _ => {}
        }
        // A deliberately slow reader for the first stretch: if the server
        // did not wait for it, the whole result would pile up in memory.
        if messages < 150 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if messages.is_multiple_of(20) {
            peak = peak.max(resident_bytes());
        }
    }
    assert!(success);
    assert_eq!(rows, 5_000_000);
    assert_eq!(last_value, 5_000_000);
    let growth = peak.saturating_sub(baseline);
    eprintln!(
        "resident memory: baseline {} MiB, peak {} MiB",
        baseline >> 20,
        peak >> 20
    );
    // The result is ~150 MB as protobuf; buffering it would blow far past this.
    assert!(
        growth < 96 * 1024 * 1024,
        "server memory grew by {} MiB",
        growth / (1024 * 1024)
    );
    s.server.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn positional_params_travel_separately_from_the_sql() -> anyhow::Result<()> {
    let s = session("").await?;
    use pb::query_param::Value;
    let param = |value: Value| pb::QueryParam {
        value: Some(value),
        type_name: String::new(),
    };
    let request = pb::ExecuteRequest {
        params: vec![
            param(Value::IntValue(41)),
            param(Value::TextValue("'; DROP TABLE x; --".to_owned())),
            param(Value::NullValue(0)),
            param(Value::BytesValue(vec![1, 2, 3])),
            param(Value::BoolValue(true)),
            param(Value::DoubleValue(0.5)),
        ],
        scope: Some(pb::execute_request::Scope::Cloud("aws".to_owned())),
        ..execute(
            "SELECT $1 + 1 AS n, $2 AS text, $3::int IS NULL AS null_ok, $4 AS bytes, $5 AS flag, $6 * 2 AS half",
            "app",
        )
    };
    let response = client(&s.channel)
        .execute(bearer(request, &s.reader))
        .await?
        .into_inner();
    assert!(response.success, "{response:?}");
    let cells: Vec<String> = response.results[0].statements[0].rows[0]
        .cells
        .iter()
        .map(cell_text)
        .collect();
    assert_eq!(cells, ["42", "'; DROP TABLE x; --", "t", "\\x010203", "t", "1"]);

    // With a type name, PostgreSQL parses the value as that type.
    let typed = |value: Value, type_name: &str| pb::QueryParam {
        value: Some(value),
        type_name: type_name.to_owned(),
    };
    let request = pb::ExecuteRequest {
        params: vec![
            typed(Value::TextValue("12345678901234567890.5".to_owned()), "numeric"),
            typed(Value::TextValue("2024-02-29 10:00+02".to_owned()), "timestamptz"),
            typed(Value::TextValue("{1,2,3}".to_owned()), "int4[]"),
            typed(Value::NullValue(0), "uuid"),
            typed(Value::IntValue(7), "int2"),
        ],
        scope: Some(pb::execute_request::Scope::Cloud("aws".to_owned())),
        ..execute(
            "SELECT $1 + 1 AS n, $2 AS at, array_length($3, 1) AS len, pg_typeof($4)::text AS null_type, pg_typeof($5)::text AS small",
            "app",
        )
    };
    let response = client(&s.channel)
        .execute(bearer(request, &s.reader))
        .await?
        .into_inner();
    assert!(response.success, "{response:?}");
    let cells: Vec<String> = response.results[0].statements[0].rows[0]
        .cells
        .iter()
        .map(cell_text)
        .collect();
    assert_eq!(
        cells,
        [
            "12345678901234567891.5",
            "2024-02-29 08:00:00+00",
            "3",
            "uuid",
            "smallint"
        ]
    );
    let bad_literal = client(&s.channel)
        .execute(bearer(
            pb::ExecuteRequest {
                params: vec![typed(Value::TextValue("not a date".to_owned()), "date")],
                scope: Some(pb::execute_request::Scope::Cloud("aws".to_owned())),
                ..execute("SELECT $1", "app")
            },
            &s.reader,
        ))
        .await?
        .into_inner();
    let error = bad_literal.results[0].error.clone().expect("error");
    assert_eq!(error.postgres.map(|p| p.sqlstate).as_deref(), Some("22007"));
    let unknown_type = client(&s.channel)
        .execute(bearer(
            pb::ExecuteRequest {
                params: vec![typed(Value::TextValue("x".to_owned()), "no_such_type")],
                scope: Some(pb::execute_request::Scope::Cloud("aws".to_owned())),
                ..execute("SELECT $1", "app")
            },
            &s.reader,
        ))
        .await?
        .into_inner();
    let error = unknown_type.results[0].error.clone().expect("error");
    assert_eq!(error.code, pb::ErrorCode::InvalidArgument as i32, "{error:?}");

    let two_statements = client(&s.channel)
        .execute(bearer(
            pb::ExecuteRequest {
                params: vec![param(Value::IntValue(1))],
                ..execute("SELECT $1; SELECT 2", "app")
            },
            &s.reader,
        ))
        .await
        .expect_err("params need one statement");
    assert_eq!(two_statements.code(), Code::InvalidArgument);
    s.server.shutdown().await?;
    Ok(())
}

/// ExecuteRequest.statements: one transaction per target, each statement
/// with its own bound parameters (a transfer without splicing amounts into
/// SQL); all of it or nothing on each target, on record as one execution.
#[tokio::test(flavor = "multi_thread")]
async fn a_transaction_binds_each_statements_own_parameters() -> anyhow::Result<()> {
    use pb::query_param::Value;
    let s = session("").await?;
    for cloud in ["aws", "gcp"] {
        support::run_sql(
            &s,
            cloud,
            "app",
            "CREATE TABLE ledger (id int PRIMARY KEY, balance numeric NOT NULL CHECK (balance >= 0));
             INSERT INTO ledger VALUES (1, 100), (2, 0)",
        )
        .await?;
    }
    let amount = |text: &str| pb::QueryParam {
        value: Some(Value::TextValue(text.to_owned())),
        type_name: "numeric".to_owned(),
    };
    let id = |id: i64| pb::QueryParam {
        value: Some(Value::IntValue(id)),
        type_name: String::new(),
    };
    let statement = |query: &str, params: Vec<pb::QueryParam>| pb::ParameterizedStatement {
        query: query.to_owned(),
        params,
    };
    let transfer = |from: i64, to: i64, how_much: &str| pb::ExecuteRequest {
        statements: vec![
            statement(
                "UPDATE ledger SET balance = balance + $1 WHERE id = $2",
                vec![amount(how_much), id(to)],
            ),
            statement(
                "-- the paying side\nUPDATE ledger SET balance = balance - $1 WHERE id = $2;",
                vec![amount(how_much), id(from)],
            ),
            statement("SELECT id, balance FROM ledger ORDER BY id", vec![]),
        ],
        ..execute("", "app")
    };

    let response = client(&s.channel)
        .execute(bearer(transfer(1, 2, "30.5"), &s.user))
        .await?
        .into_inner();
    assert!(response.success, "{response:?}");
    assert_eq!(response.results.len(), 2, "both clouds");
    for result in &response.results {
        let tags: Vec<&str> = result.statements.iter().map(|s| s.command_tag.as_str()).collect();
        assert_eq!(tags, ["UPDATE 1", "UPDATE 1", "SELECT 2"], "{result:?}");
        let rows: Vec<Vec<String>> = result.statements[2]
            .rows
            .iter()
            .map(|row| row.cells.iter().map(cell_text).collect())
            .collect();
        assert_eq!(rows, [["1", "69.5"], ["2", "30.5"]]);
    }

    // Overdrawn: the second statement fails its CHECK, so the first one
    // (already run on the target) is rolled back with it.
    let overdrawn = client(&s.channel)
        .execute(bearer(transfer(1, 2, "500"), &s.user))
        .await?
        .into_inner();
    assert!(!overdrawn.success);
    for result in &overdrawn.results {
        assert_eq!(result.failed_statement_index, Some(1), "{result:?}");
        let sqlstate = result
            .error
            .as_ref()
            .and_then(|e| e.postgres.as_ref())
            .map(|p| p.sqlstate.clone());
        assert_eq!(sqlstate.as_deref(), Some("23514"));
    }
    for cloud in ["aws", "gcp"] {
        let balances = support::scalar(
            &s,
            cloud,
            "app",
            "SELECT string_agg(balance::text, ',' ORDER BY id) FROM ledger",
        )
        .await?;
        assert_eq!(
            balances.as_deref(),
            Some("69.5,30.5"),
            "nothing half-applied on {cloud}"
        );
    }

    // On record as one execution, with both statements' text.
    let record = support::recorded(&s, &response.execution_id).await?;
    assert!(record.success, "{record:?}");
    assert!(
        record.query.contains("balance + $1") && record.query.contains("balance - $1"),
        "{}",
        record.query
    );

    // Refusals name the entry and the field within it.
    let refusals: Vec<(&str, pb::ExecuteRequest, &str, Code, &str)> = vec![
        (
            "a READER's transfer",
            transfer(1, 2, "1"),
            &s.reader,
            Code::PermissionDenied,
            "",
        ),
        (
            "a parameter without a value",
            pb::ExecuteRequest {
                statements: vec![
                    statement("SELECT $1::int", vec![id(1)]),
                    statement(
                        "SELECT $1::int",
                        vec![pb::QueryParam {
                            value: None,
                            type_name: String::new(),
                        }],
                    ),
                ],
                ..execute("", "app")
            },
            &s.user,
            Code::InvalidArgument,
            "statements[1].params[0].value",
        ),
        (
            "a second statement hidden in an entry",
            pb::ExecuteRequest {
                statements: vec![statement("SELECT $1::int; DELETE FROM ledger", vec![id(1)])],
                ..execute("", "app")
            },
            &s.master,
            Code::InvalidArgument,
            "statements[0].query",
        ),
        (
            "statements and a query",
            pb::ExecuteRequest {
                statements: vec![statement("SELECT 1", vec![])],
                ..execute("SELECT 2", "app")
            },
            &s.user,
            Code::InvalidArgument,
            "query",
        ),
    ];
    for (name, request, token, code, field) in refusals {
        let status = client(&s.channel)
            .execute(bearer(request, token))
            .await
            .expect_err(name);
        assert_eq!(status.code(), code, "{name}: {}", status.message());
        if !field.is_empty() {
            assert_eq!(support::bad_field(&status), field, "{name}");
        }
    }
    for cloud in ["aws", "gcp"] {
        let rows = support::scalar(&s, cloud, "app", "SELECT count(*)::text FROM ledger").await?;
        assert_eq!(rows.as_deref(), Some("2"), "no refused request ran on {cloud}");
    }
    s.server.shutdown().await?;
    Ok(())
}

/// A NUL byte is refused with its position, shown once: Execute's message
/// carries it, Validate's has it in its fields only.
#[tokio::test(flavor = "multi_thread")]
async fn a_nul_byte_is_located_once() -> anyhow::Result<()> {
    let s = session("").await?;
    let mut query = client(&s.channel);
    let status = query
        .execute(bearer(execute("SELECT 1\0", "app"), &s.reader))
        .await
        .expect_err("a NUL byte is refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
    assert!(status.message().contains("NUL byte"), "{}", status.message());
    assert_eq!(
        status.message().matches("line 1, column 9").count(),
        1,
        "{}",
        status.message()
    );

    let answer = query
        .validate(bearer(
            pb::ValidateRequest {
                query: "SELECT 1\0".to_owned(),
            },
            &s.reader,
        ))
        .await?
        .into_inner();
    assert!(!answer.valid);
    let error = answer.parse_error.expect("parse error");
    assert_eq!(error.message, "the SQL text contains a NUL byte");
    assert_eq!(
        (error.line, error.column, error.byte_offset),
        (1, 9, 8),
        "{error:?}"
    );
    s.server.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn validate_reports_positions_classes_and_findings_without_a_database() -> anyhow::Result<()> {
    let s = session("").await?;
    let mut query = client(&s.channel);
    let broken = query
        .validate(bearer(
            pb::ValidateRequest {
                query: "SELECT 1;\nSELECT * FROM t WHERE".to_owned(),
            },
            &s.reader,
        ))
        .await?
        .into_inner();
    assert!(!broken.valid);
    let error = broken.parse_error.expect("parse error");
    assert_eq!((error.line, error.column), (2, 22), "{error:?}"); // just past the end

    let fine = query
        .validate(bearer(
            pb::ValidateRequest {
                query: "SELECT 1;\nDELETE FROM accounts;\nVACUUM".to_owned(),
            },
            &s.reader,
        ))
        .await?
        .into_inner();
    assert!(fine.valid);
    assert!(fine.requires_confirmation);
    assert_eq!(fine.required_role, pb::Role::Master as i32);
    let classes: Vec<i32> = fine.statements.iter().map(|st| st.statement_class).collect();
    assert_eq!(
        classes,
        [
            pb::StatementClass::Read as i32,
            pb::StatementClass::Write as i32,
            pb::StatementClass::Utility as i32
        ]
    );
    assert_eq!(fine.statements[1].findings[0].code, "DELETE_WITHOUT_WHERE");
    assert_eq!((fine.statements[1].line, fine.statements[1].column), (2, 1));
    assert!(fine.statements[2].cannot_run_in_transaction);
    assert_eq!(fine.fingerprint.len(), 16);
    s.server.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn grpcurl_runs_queries_end_to_end() -> anyhow::Result<()> {
    let s = session("").await?;
    let addr = s.server.local_addr().to_string();
    let header = format!("authorization: Bearer {}", s.reader);
    let body = serde_json::json!({
        "query": "SELECT 6 * 7 AS answer, '2024-02-29 12:00+00'::timestamptz AS at",
        "database": "app",
        "allClouds": {},
    })
    .to_string();
    let (ok, stdout, stderr) = tokio::task::spawn_blocking({
        let addr = addr.clone();
        let header = header.clone();
        move || {
            support::run_grpcurl(&[
                "-plaintext",
                "-H",
                &header,
                "-d",
                &body,
                &addr,
                "pgfleet.v1.QueryService/Execute",
            ])
        }
    })
    .await?;
    assert!(ok, "{stderr}");
    let response: serde_json::Value = serde_json::from_str(&stdout)?;
    assert_eq!(response["success"], true, "{stdout}");
    let results = response["results"].as_array().expect("results");
    assert_eq!(results.len(), 2);
    for result in results {
        let cells = &result["statements"][0]["rows"][0]["cells"];
        // int64 is a JSON string in proto3's JSON mapping.
        assert_eq!(cells[0]["intValue"], "42", "{stdout}");
        assert_eq!(cells[1]["formattedValue"], "2024-02-29 12:00:00+00", "{stdout}");
    }

    let stream_body = serde_json::json!({
        "query": "SELECT g FROM generate_series(1, 10) g",
        "database": "app",
        "cloud": "gcp",
        "batchSize": 4,
    })
    .to_string();
    let (ok, stdout, stderr) = tokio::task::spawn_blocking(move || {
        support::run_grpcurl(&[
            "-plaintext",
            "-H",
            &header,
            "-d",
            &stream_body,
            &addr,
            "pgfleet.v1.QueryService/ExecuteStream",
        ])
    })
    .await?;
    assert!(ok, "{stderr}");
    assert_eq!(stdout.matches("\"rowBatch\"").count(), 3, "{stdout}");
    assert!(stdout.contains("\"executionFinished\""), "{stdout}");
    s.server.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn readers_run_through_the_databases_read_only_login() -> anyhow::Result<()> {
    let database = pgfleet_testkit::TestDatabase::create("q_reader_login").await?;
    let role = format!("pgfleet_ro_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let pool = database.pool().await?;
    for statement in [
        format!("CREATE ROLE {role} LOGIN"),
        "CREATE TABLE public_data (v int)".to_owned(),
        "CREATE TABLE private_data (v int)".to_owned(),
        format!("GRANT SELECT ON public_data TO {role}"),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(statement)).execute(&pool).await?;
    }
    let extra = format!(
        "[[clouds]]\nname = 'onprem'\n[[clouds.databases]]\nname = 'app'\nhost = '{}'\nport = {}\nuser = '{}'\n\
         database = '{}'\nsslmode = 'disable'\nschemas = ['public']\nreader_user = '{role}'\n",
        database.host(),
        database.port(),
        database.user(),
        database.name()
    );
    let s = session(&extra).await?;
    let on_prem = |query: &str| pb::ExecuteRequest {
        scope: Some(pb::execute_request::Scope::Cloud("onprem".to_owned())),
        ..execute(query, "app")
    };
    let reader = client(&s.channel)
        .execute(bearer(
            on_prem("SELECT current_user::text, count(*) FROM public_data"),
            &s.reader,
        ))
        .await?
        .into_inner();
    assert!(reader.success, "{reader:?}");
    assert_eq!(cell_text(&reader.results[0].statements[0].rows[0].cells[0]), role);
    // The login's privileges are the last layer: no grant, no read.
    let denied = client(&s.channel)
        .execute(bearer(on_prem("SELECT * FROM private_data"), &s.reader))
        .await?
        .into_inner();
    let error = denied.results[0].error.clone().expect("denied");
    assert_eq!(error.postgres.map(|p| p.sqlstate).as_deref(), Some("42501"));
    let user = client(&s.channel)
        .execute(bearer(on_prem("SELECT current_user::text"), &s.user))
        .await?
        .into_inner();
    assert_eq!(
        cell_text(&user.results[0].statements[0].rows[0].cells[0]),
        database.user()
    );
    s.server.shutdown().await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP OWNED BY {role}")))
        .execute(&pool)
        .await?;
    pool.close().await;
    database.drop_now().await?;
    let admin = sqlx::PgPool::connect(&pgfleet_testkit::pg_admin_url()).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP ROLE {role}")))
        .execute(&admin)
        .await?;
    admin.close().await;
    Ok(())
}

// --- Byte budgets: no caller can make the server hold a result. ---

/// A gigabyte of result: a thousand rows of a megabyte each.
const GIGABYTE_QUERY: &str = "SELECT repeat('x', 1000000) AS wide FROM generate_series(1, 1000)";

/// Samples this process's resident memory every 10 ms until dropped; the
/// highest figure seen so far.
struct PeakSampler {
    peak: std::sync::Arc<std::sync::atomic::AtomicU64>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl PeakSampler {
    fn start() -> Self {
        use std::sync::atomic::Ordering;
        let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(resident_bytes()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (p, s) = (peak.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(resident_bytes(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        Self { peak, stop }
    }

    fn peak(&self) -> u64 {
        self.peak.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for PeakSampler {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

const MIB: u64 = 1024 * 1024;

/// Resident memory once the server let go: allocators hand pages back
/// lazily, so allow it a moment.
async fn settled_resident(baseline: u64) -> u64 {
    let mut now = resident_bytes();
    for _ in 0..20 {
        if now.saturating_sub(baseline) < 50 * MIB {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        now = resident_bytes();
    }
    now
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gigabyte_through_execute_stops_at_the_response_budget_and_memory_returns() -> anyhow::Result<()> {
    let s = session("").await?;
    // Warm up (pools, caches) so the baseline is the server at rest.
    let warm = client(&s.channel)
        .execute(bearer(execute("SELECT 1", "app"), &s.reader))
        .await?
        .into_inner();
    assert!(warm.success);
    let check = |response: pb::ExecuteResponse| {
        assert!(!response.success);
        assert_eq!(response.results.len(), 2);
        let mut held: u64 = 0;
        for result in &response.results {
            let error = result.error.as_ref().expect("a target error");
            assert_eq!(
                error.code,
                i32::from(pb::ErrorCode::ResourceExhausted),
                "{error:?}"
            );
            assert!(
                error.message.contains("query.max_response_bytes = "),
                "the limit is named: {}",
                error.message
            );
            assert_eq!(result.failed_statement_index, Some(0));
            held += result
                .statements
                .iter()
                .map(|st| st.rows.len() as u64)
                .sum::<u64>();
        }
        // 16 MiB of message limit by default: about 16 one-megabyte rows.
        assert!(held <= 16, "rows returned: {held}");
    };

    // One attempt: before the budget it took the server to 3 GB.
    let baseline = resident_bytes();
    let sampler = PeakSampler::start();
    let response = client(&s.channel)
        .execute(bearer(execute(GIGABYTE_QUERY, "app"), &s.reader))
        .await?
        .into_inner();
    check(response);
    let peak = sampler.peak();
    let after = settled_resident(baseline).await;
    eprintln!(
        "one call: baseline {} MiB, peak {} MiB, after {} MiB",
        baseline / MIB,
        peak / MIB,
        after / MIB
    );
    assert!(
        after.saturating_sub(baseline) < 50 * MIB,
        "memory stayed {} MiB above the baseline",
        after.saturating_sub(baseline) / MIB
    );

    // Four at once, each on both clouds: bounded by four budgets.
    let calls = (0..4).map(|_| {
        let mut client = client(&s.channel);
        let request = bearer(execute(GIGABYTE_QUERY, "app"), &s.reader);
        async move { client.execute(request).await }
    });
    for response in futures::future::join_all(calls).await {
        check(response?.into_inner());
    }
    let peak = sampler.peak();
    drop(sampler);
    eprintln!("four calls: peak {} MiB", peak / MIB);
    assert!(
        peak.saturating_sub(baseline) < 512 * MIB,
        "four gigabyte results in parallel grew the server by {} MiB",
        peak.saturating_sub(baseline) / MIB
    );
    // The connections were closed, not drained: the targets still serve.
    let again = client(&s.channel)
        .execute(bearer(execute("SELECT 2", "app"), &s.reader))
        .await?
        .into_inner();
    assert!(again.success, "{again:?}");
    s.server.shutdown().await?;
    Ok(())
}

/// Reads 200 rows of a megabyte from a gigabyte ExecuteStream, slowly at
/// first, then leaves; returns how many batches arrived.
async fn read_a_gigabyte_stream_partly(s: &support::Session) -> anyhow::Result<usize> {
    let mut stream = client(&s.channel)
        .execute_stream(bearer(
            stream_request(
                GIGABYTE_QUERY,
                pb::execute_stream_request::Scope::Cloud("aws".to_owned()),
                500,
            ),
            &s.reader,
        ))
        .await?
        .into_inner();
    let mut rows = 0_usize;
    let mut batches = 0_usize;
    while let Some(message) = stream.message().await? {
        if let Some(pb::execute_stream_response::Event::RowBatch(batch)) = message.event {
            use prost::Message as _;
            // query.max_batch_bytes defaults to 4 MiB.
            assert!(
                batch.encoded_len() as u64 <= 4 * MIB + 4096,
                "{}",
                batch.encoded_len()
            );
            rows += batch.rows.len();
            batches += 1;
            // A slow reader: the server must wait, not buffer.
            if batches < 20 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            // 200 MB is enough to see it bounded; then the caller leaves.
            if rows >= 200 {
                break;
            }
        }
    }
    assert!(
        batches >= 50,
        "a megabyte row per batch or so: {batches} batches for {rows} rows"
    );
    Ok(batches)
}

/// The stream is bounded while it runs (the peak), and repeated calls do
/// not pile up: four calls in a row leave no more resident than one call
/// may use at its peak. Not "back to the baseline": glibc keeps freed pages
/// of its per-thread arenas for reuse, 40 to 80 MiB here depending on which
/// threads ran the calls (measured over eight calls: a plateau, not a
/// growth); a call that kept its batches would add 60+ MiB each time, past
/// the bound by the fourth.
#[tokio::test(flavor = "multi_thread")]
async fn a_gigabyte_through_execute_stream_arrives_in_bounded_batches_and_memory_does_not_grow()
-> anyhow::Result<()> {
    let s = session("").await?;
    let baseline = resident_bytes();
    let sampler = PeakSampler::start();
    let batches = read_a_gigabyte_stream_partly(&s).await?;
    let peak = sampler.peak();
    drop(sampler);
    for _ in 0..3 {
        read_a_gigabyte_stream_partly(&s).await?;
    }
    let after_four = settled_resident(baseline).await;
    eprintln!(
        "resident memory: baseline {} MiB, peak {} MiB, after four calls {} MiB ({batches} batches)",
        baseline / MIB,
        peak / MIB,
        after_four / MIB
    );
    assert!(
        peak.saturating_sub(baseline) < 128 * MIB,
        "grew by {} MiB",
        peak.saturating_sub(baseline) / MIB
    );
    assert!(
        after_four.saturating_sub(baseline) < 128 * MIB,
        "four calls left {} MiB above the baseline",
        after_four.saturating_sub(baseline) / MIB
    );
    s.server.shutdown().await?;
    Ok(())
}

/// The row batches of one statement of a stream (other events skipped);
/// fails on a target that did not succeed.
async fn stream_batches(
    s: &support::Session,
    token: &str,
    query: &str,
    statement: u32,
) -> anyhow::Result<Vec<pb::RowBatch>> {
    let mut stream = client(&s.channel)
        .execute_stream(bearer(
            stream_request(
                query,
                pb::execute_stream_request::Scope::Cloud("aws".to_owned()),
                0,
            ),
            token,
        ))
        .await?
        .into_inner();
    let mut batches = Vec::new();
    while let Some(message) = stream.message().await? {
        match message.event {
            Some(pb::execute_stream_response::Event::RowBatch(batch))
                if batch.statement_index == statement =>
            {
                batches.push(batch);
            }
            Some(pb::execute_stream_response::Event::TargetSummary(summary)) => {
                anyhow::ensure!(summary.success, "{query}: {:?}", summary.error);
            }
            _ => {}
        }
    }
    Ok(batches)
}

#[tokio::test(flavor = "multi_thread")]
async fn wide_rows_are_split_into_batches_by_bytes_whatever_reads_them() -> anyhow::Result<()> {
    let s = session("[query]\nmax_batch_bytes = 65536\n").await?;
    support::run_sql(
        &s,
        "aws",
        "app",
        "CREATE TABLE wide (id int PRIMARY KEY, body text)",
    )
    .await?;
    // 20 rows of 20 kB: 400 kB, at most three rows per 64 KiB batch.
    let cases = [
        (
            "cursor read",
            "SELECT g, repeat('x', 20000) FROM generate_series(1, 20) g",
            0,
            &s.reader,
        ),
        (
            "RETURNING",
            "INSERT INTO wide SELECT g, repeat('y', 20000) FROM generate_series(1, 20) g RETURNING id, body",
            0,
            &s.user,
        ),
        (
            "FETCH from the caller's cursor",
            "DECLARE c CURSOR FOR SELECT g, repeat('z', 20000) FROM generate_series(1, 20) g; FETCH ALL FROM c",
            1,
            &s.reader,
        ),
        (
            "EXPLAIN",
            "EXPLAIN (VERBOSE) SELECT * FROM generate_series(1, 2) AS a(x) WHERE x::text = repeat('w', 20000)",
            0,
            &s.reader,
        ),
    ];
    for (name, query, statement, token) in cases {
        let batches = stream_batches(&s, token, query, statement).await?;
        let rows: usize = batches.iter().map(|b| b.rows.len()).sum();
        for batch in &batches {
            use prost::Message as _;
            assert!(
                batch.encoded_len() <= 65536 + 1024,
                "{name}: a batch of {} bytes",
                batch.encoded_len()
            );
        }
        if name == "EXPLAIN" {
            assert!(rows >= 1, "{name}: the plan came back");
            continue;
        }
        assert_eq!(rows, 20, "{name}");
        assert!(batches.len() >= 7, "{name}: {} batches", batches.len());
    }
    assert_eq!(support::count(&s, "aws", "app", "wide").await?, 20);
    s.server.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_row_larger_than_a_batch_fails_its_statement_naming_the_limit() -> anyhow::Result<()> {
    let s = session("[query]\nmax_batch_bytes = 65536\n").await?;
    let response = client(&s.channel)
        .execute(bearer(
            execute("SELECT repeat('x', 100000) AS big", "app"),
            &s.reader,
        ))
        .await?
        .into_inner();
    assert!(!response.success);
    for result in &response.results {
        let error = result.error.as_ref().expect("error");
        assert_eq!(error.code, i32::from(pb::ErrorCode::ResourceExhausted));
        assert!(
            error
                .message
                .contains("larger than query.max_batch_bytes = 65536 "),
            "{}",
            error.message
        );
    }
    s.server.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_write_whose_returning_is_over_the_budget_is_rolled_back_and_on_record() -> anyhow::Result<()> {
    let s = session("[query]\nmax_response_bytes = 65536\n").await?;
    support::run_sql(
        &s,
        "aws",
        "app",
        "CREATE TABLE wide (id int PRIMARY KEY, body text)",
    )
    .await?;
    let mut request = execute(
        "INSERT INTO wide SELECT g, repeat('y', 10000) FROM generate_series(1, 50) g RETURNING id, body",
        "",
    );
    request.scope = Some(pb::execute_request::Scope::Targets(pb::TargetList {
        targets: vec![support::target("aws", "app")],
    }));
    let response = client(&s.channel)
        .execute(bearer(request, &s.user))
        .await?
        .into_inner();
    assert!(!response.success);
    let result = &response.results[0];
    let error = result.error.as_ref().expect("error");
    assert_eq!(error.code, i32::from(pb::ErrorCode::ResourceExhausted));
    assert!(
        error.message.contains("query.max_response_bytes = 65536") && error.message.contains("rolled back"),
        "{}",
        error.message
    );
    // The table agrees: nothing of the write stayed.
    assert_eq!(support::count(&s, "aws", "app", "wide").await?, 0);
    // And the history says it failed.
    let record = support::recorded(&s, &response.execution_id).await?;
    assert!(!record.success, "{record:?}");
    assert_eq!(record.outcomes.len(), 1);
    assert!(!record.outcomes[0].success);
    assert_eq!(record.outcomes[0].failed_statement_index, Some(0));
    s.server.shutdown().await?;
    Ok(())
}

/// A cloud `solo` whose database `app` is aws's `app` through a pool of one
/// connection, so consecutive calls share a session.
fn solo_copy_toml(fleet: &support::Fleet) -> String {
    let database = fleet.database("aws", "app");
    format!(
        "[[clouds]]\nname = 'solo'\n[[clouds.databases]]\nname = 'app'\nhost = '{}'\nport = {}\n\
         user = '{}'\ndatabase = '{}'\nsslmode = 'disable'\n[clouds.databases.pool]\nmax_connections = 1\n",
        database.host(),
        database.port(),
        database.user(),
        database.name()
    )
}

/// The light reset between calls (no `DISCARD ALL`): what one call leaves
/// on its session (settings, prepared statements, LISTEN, temporary tables,
/// cursors held open) is gone for the next call on the same connection,
/// and the connection is kept (same backend).
#[tokio::test(flavor = "multi_thread")]
async fn the_next_call_on_a_connection_finds_nothing_the_last_one_left() -> anyhow::Result<()> {
    let fleet = support::Fleet::create().await?;
    let solo = solo_copy_toml(&fleet);
    let s = support::session_on(fleet, &solo).await?;
    let on_solo = |query: &str| pb::ExecuteRequest {
        scope: Some(pb::execute_request::Scope::Cloud("solo".to_owned())),
        ..execute(query, "app")
    };
    let cells = |response: &pb::ExecuteResponse, statement: usize| -> Vec<String> {
        response.results[0].statements[statement].rows[0]
            .cells
            .iter()
            .map(cell_text)
            .collect()
    };
    let leave = client(&s.channel)
        .execute(bearer(
            on_solo(
                "SET TimeZone = 'Asia/Tokyo'; PREPARE leftover AS SELECT 1; LISTEN pgfleet_left; \
                 CREATE TEMP TABLE scratch (v int); DECLARE held CURSOR WITH HOLD FOR SELECT 1; \
                 SELECT pg_backend_pid(), current_setting('TimeZone')",
            ),
            &s.master,
        ))
        .await?
        .into_inner();
    assert!(leave.success, "{leave:?}");
    let left = cells(&leave, 5);
    assert_eq!(left[1], "Asia/Tokyo", "the setting applied within the call");
    for _ in 0..2 {
        let check = client(&s.channel)
            .execute(bearer(
                on_solo(
                    "SELECT pg_backend_pid(), current_setting('TimeZone') <> 'Asia/Tokyo', \
                     (SELECT count(*) FROM pg_prepared_statements WHERE name = 'leftover'), \
                     (SELECT count(*) FROM pg_listening_channels()), \
                     to_regclass('pg_temp.scratch') IS NULL, \
                     (SELECT count(*) FROM pg_cursors WHERE name = 'held')",
                ),
                &s.master,
            ))
            .await?
            .into_inner();
        assert!(check.success, "{check:?}");
        assert_eq!(
            cells(&check, 0),
            [left[0].as_str(), "t", "0", "0", "t", "0"],
            "pid (same connection), setting reset, no prepared statement, no LISTEN, \
             no temporary table, no cursor"
        );
    }
    s.server.shutdown().await?;
    Ok(())
}

/// Pools check only connections idle for longer than `check_after_idle`
/// (1 s by default); a pooled connection the server ended while it sat
/// idle for less is found broken when the next call begins on it, replaced,
/// and that call goes on: nothing of it had run.
#[tokio::test(flavor = "multi_thread")]
async fn a_pooled_connection_ended_while_idle_is_replaced_and_the_call_goes_on() -> anyhow::Result<()> {
    let fleet = support::Fleet::create().await?;
    // One connection, checked only after a minute idle: the next call must
    // get the very connection that was ended.
    let solo = solo_copy_toml(&fleet).replace(
        "max_connections = 1\n",
        "max_connections = 1\ncheck_after_idle = '1m'\n",
    );
    let s = support::session_on(fleet, &solo).await?;
    let backend = async || -> anyhow::Result<String> {
        let response = client(&s.channel)
            .execute(bearer(
                pb::ExecuteRequest {
                    scope: Some(pb::execute_request::Scope::Cloud("solo".to_owned())),
                    ..execute("SELECT pg_backend_pid()", "app")
                },
                &s.master,
            ))
            .await?
            .into_inner();
        anyhow::ensure!(response.success, "{response:?}");
        Ok(cell_text(&response.results[0].statements[0].rows[0].cells[0]))
    };
    let first = backend().await?;
    let admin = s.fleet.database("aws", "app").pool().await?;
    let ended: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1::int, 5000)")
        .bind(&first)
        .fetch_one(&admin)
        .await?;
    assert!(ended, "the pooled backend ended");
    let second = backend().await?;
    assert_ne!(second, first, "a new connection served the call");
    assert_eq!(backend().await?, second, "and stays in the pool");
    s.server.shutdown().await?;
    Ok(())
}
