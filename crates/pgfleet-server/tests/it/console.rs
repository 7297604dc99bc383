//! The web console end to end: the real server with `server.console_addr`,
//! real databases, and console/e2e/console.mjs driving the built console in
//! Debian's headless Chromium through playwright-core (which never downloads
//! a browser). The script does what a DBA does and prints what the page
//! showed as one JSON object; this test checks it against the databases.
//! Screenshots of every page land in target/console-e2e/.
//!
//! The fleet has a backup directory (age-encrypted), a migrations directory
//! for `app` and a low slow-query threshold, so the backups, migrations and
//! insights pages have something of the test's own to show.

use std::net::SocketAddr;
use std::path::PathBuf;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use prost::Message;

use pgfleet_engine::identity::Role;
use serde_json::Value;

use pgfleet_proto::pgfleet::v1 as pb;

use pgfleet_proto::pgfleet::v1::backup_service_client::BackupServiceClient;
use pgfleet_proto::pgfleet::v1::query_service_client::QueryServiceClient;
use pgfleet_proto::pgfleet::v1::replication_service_client::ReplicationServiceClient;

use crate::grpc_web::{Wire, client, frames};
use crate::support::{Fleet, api_key, auth_client, bearer, channel, login, target, workspace_root};

/// The console's directory, checked to be built and installed: the test
/// needs `console/dist` (served by the server) and playwright-core.
fn console_dir() -> PathBuf {
    let console = workspace_root().join("console");
    assert!(
        console.join("dist/index.html").is_file() && console.join("node_modules/playwright-core").is_dir(),
        "the console is not built: run scripts/bootstrap (npm ci && npm run build in console/)"
    );
    console
}

async fn sql(fleet: &Fleet, cloud: &str, text: &str) -> anyhow::Result<()> {
    let mut connection = fleet.database(cloud, "app").connect().await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(text.to_owned()))
        .execute(&mut connection)
        .await?;
    Ok(())
}

async fn names(fleet: &Fleet, cloud: &str) -> anyhow::Result<Vec<String>> {
    let mut connection = fleet.database(cloud, "app").connect().await?;
    Ok(sqlx::query_scalar("SELECT name FROM items ORDER BY id")
        .fetch_all(&mut connection)
        .await?)
}

/// Backends of either app database still in `pg_sleep` (by wait event: a
/// streamed read runs through a cursor, whose text is a FETCH).
async fn sleeping(fleet: &Fleet) -> anyhow::Result<i64> {
    let mut connection = fleet.database("aws", "app").connect().await?;
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep' AND datname IN ($1, $2)",
    )
    .bind(fleet.database("aws", "app").name())
    .bind(fleet.database("gcp", "app").name())
    .fetch_one(&mut connection)
    .await?)
}

/// What the backups, migrations and insights pages need: an age key pair
/// and a backup directory, one migration for `app`, and a slow-query
/// threshold the test's `pg_sleep(0.3)` passes.
fn extra_toml(dir: &std::path::Path) -> anyhow::Result<String> {
    use age::secrecy::ExposeSecret as _;
    let identity = age::x25519::Identity::generate();
    let identity_file = dir.join("backup.key");
    std::fs::write(
        &identity_file,
        format!("{}\n", identity.to_string().expose_secret()),
    )?;
    let migrations = dir.join("migrations");
    std::fs::create_dir_all(&migrations)?;
    std::fs::write(
        migrations.join("0001_notes.sql"),
        "CREATE TABLE notes (id bigint PRIMARY KEY, body text NOT NULL);\n",
    )?;
    Ok(format!(
        "[insights]\nslow_query_threshold = '250ms'\n\
         [backup]\ndir = '{}'\nrecipients = ['{}']\nidentity_file = '{}'\nscheduler = false\n\
         [[migrations]]\ndatabase = 'app'\ndir = '{}'\n",
        dir.join("store").display(),
        identity.to_public(),
        identity_file.display(),
        migrations.display()
    ))
}

/// A backup of aws/app made through the API (no policy), its id.
async fn backup_aws_app(channel: &tonic::transport::Channel, token: &str) -> anyhow::Result<String> {
    let mut stream = BackupServiceClient::new(channel.clone())
        .run_backup(bearer(
            pb::RunBackupRequest {
                policy_id: String::new(),
                targets: vec![target("aws", "app")],
            },
            token,
        ))
        .await?
        .into_inner();
    let mut made = None;
    while let Some(message) = stream.message().await? {
        if let Some(pb::run_backup_response::Event::Finished(f)) = message.event {
            anyhow::ensure!(f.error.is_empty(), "the backup failed: {}", f.error);
            made = f.backup.map(|b| b.id);
        }
    }
    made.ok_or_else(|| anyhow::anyhow!("no finished backup"))
}

fn text<'a>(out: &'a Value, pointer: &str) -> &'a str {
    out.pointer(pointer).and_then(Value::as_str).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dba_uses_the_console_in_headless_chromium() -> anyhow::Result<()> {
    let console = console_dir();
    let mut fleet = Fleet::create().await?;
    fleet.server_toml = "console_addr = '127.0.0.1:0'\n".to_owned();
    // Plain HTTP on loopback: a Secure cookie would not be sent back.
    fleet.auth_toml.push_str("cookie_secure = false\n");
    for (cloud, second) in [("aws", "b"), ("gcp", "B")] {
        sql(
            &fleet,
            cloud,
            &format!(
                "CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL);\n\
                 INSERT INTO items VALUES (1, 'a'), (2, '{second}');\n\
                 GRANT SELECT ON items TO {};",
                pgfleet_testkit::TEST_READER
            ),
        )
        .await?;
    }
    // A replication job for the page to run: aws/app's orders into gcp/analytics.
    sql(
        &fleet,
        "aws",
        "CREATE TABLE orders (id bigint PRIMARY KEY, updated_at timestamptz NOT NULL);\n\
         INSERT INTO orders SELECT g, timestamptz '2026-01-01' + g * interval '1 minute' \
         FROM generate_series(1, 3) g;",
    )
    .await?;
    let mut analytics = fleet.database("gcp", "analytics").connect().await?;
    sqlx::raw_sql("CREATE TABLE orders (id bigint PRIMARY KEY, updated_at timestamptz NOT NULL)")
        .execute(&mut analytics)
        .await?;
    let dir = tempfile::tempdir()?;
    let server = fleet.start(&extra_toml(dir.path())?).await?;
    let console_addr = server.console_addr().expect("console_addr is configured");
    let master_password = fleet.create_user("console-master", Role::Master).await?;
    let reader_password = fleet.create_user("console-reader", Role::Reader).await?;
    let channel = channel(&server).await?;
    let master = login(&channel, "console-master", &master_password).await?;
    ReplicationServiceClient::new(channel.clone())
        .create_job(bearer(
            pb::CreateJobRequest {
                job: Some(pb::ReplicationJob {
                    name: "orders-to-analytics".to_owned(),
                    source: Some(target("aws", "app")),
                    targets: vec![target("gcp", "analytics")],
                    tables: vec!["public.orders".to_owned()],
                    sync_key: "updated_at".to_owned(),
                    mode: pb::ReplicationMode::Incremental.into(),
                    ..Default::default()
                }),
                validate_only: false,
            },
            &master,
        ))
        .await?;
    // A policy over both copies of app wanting a backup within the hour, and
    // one backup of aws/app only: gcp/app is DEGRADED until the page runs
    // the policy.
    BackupServiceClient::new(channel.clone())
        .create_policy(bearer(
            pb::CreatePolicyRequest {
                policy: Some(pb::BackupPolicy {
                    name: "app-hourly".to_owned(),
                    targets: Some(pb::BackupTargets {
                        selection: Some(pb::backup_targets::Selection::AllCloudsDatabase("app".to_owned())),
                    }),
                    retention: Some(pb::Retention {
                        keep_last: 5,
                        ..Default::default()
                    }),
                    max_age: Some(prost_types::Duration {
                        seconds: 3600,
                        nanos: 0,
                    }),
                    enabled: false,
                    ..Default::default()
                }),
            },
            &master,
        ))
        .await?;
    let backup_id = backup_aws_app(&channel, &master).await?;
    // Two slow statements on both copies (past the 250 ms threshold), one
    // with the marker the page's filter looks for. (Not `SELECT pg_sleep(…)`:
    // pgfleet fails reading a `void` value.)
    for text in [
        "SELECT 1 AS console_slow_marker FROM pg_sleep(0.3)",
        "SELECT 2 AS console_other FROM pg_sleep(0.3)",
    ] {
        let response = QueryServiceClient::new(channel.clone())
            .execute(bearer(
                pb::ExecuteRequest {
                    query: text.to_owned(),
                    database: "app".to_owned(),
                    ..Default::default()
                },
                &master,
            ))
            .await?
            .into_inner();
        assert!(response.success, "{response:?}");
    }
    // A backend for the insights page to cancel: waiting on an advisory lock
    // another connection holds (not pg_sleep, which the query page counts).
    let mut holder = fleet.database("aws", "app").connect().await?;
    sqlx::raw_sql("SELECT pg_advisory_lock(7431)")
        .execute(&mut holder)
        .await?;
    let mut waiter = fleet.database("aws", "app").connect().await?;
    sqlx::raw_sql("SET application_name = 'console-waiter'")
        .execute(&mut waiter)
        .await?;
    let waiting = tokio::spawn(async move {
        sqlx::raw_sql("SELECT pg_advisory_lock(7431)")
            .execute(&mut waiter)
            .await
            .map(|_| ())
    });
    let screenshots = workspace_root().join("target/console-e2e");
    std::fs::create_dir_all(&screenshots)?;

    let output = tokio::process::Command::new("node")
        .arg(console.join("e2e/console.mjs"))
        .current_dir(&console)
        .env("CONSOLE_URL", format!("http://{console_addr}/"))
        .env("MASTER_USER", "console-master")
        .env("MASTER_PASSWORD", &master_password)
        .env("READER_USER", "console-reader")
        .env("READER_PASSWORD", &reader_password)
        .env("SCREENSHOTS", &screenshots)
        .env("BACKUP_ID", &backup_id)
        .kill_on_drop(true)
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let context = format!(
        "exit {:?}\nstdout:\n{stdout}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let out: Value = serde_json::from_str(stdout.trim()).map_err(|e| anyhow::anyhow!("{e}\n{context}"))?;
    assert_eq!(out["problems"], serde_json::json!([]), "{context}");
    assert!(output.status.success(), "{context}");

    // Logged in by the HttpOnly cookie; a MASTER gets the read-only switch.
    assert_eq!(text(&out, "/who"), "console-master (MASTER)", "{context}");
    assert_eq!(out["masterReadOnlySwitch"], 1, "{context}");

    // One panel per cloud, side by side, gcp's differing row marked on both.
    let fan_out = out["fanOut"].as_array().expect("fanOut panels");
    let panels: Vec<(&str, &str, &Value)> = fan_out
        .iter()
        .map(|p| (text(p, "/target"), text(p, "/state"), &p["rows"]))
        .collect();
    assert_eq!(
        panels,
        vec![
            (
                "aws/app",
                "succeeded",
                &serde_json::json!([["1", "a"], ["2", "b"]])
            ),
            (
                "gcp/app",
                "succeeded",
                &serde_json::json!([["1", "a"], ["2", "B"]])
            ),
        ],
        "{context}"
    );
    assert!(fan_out.iter().all(|p| p["differing"] == 1), "{context}");

    // One grid: the target first, the two rows only one copy has marked.
    assert_eq!(
        out["merged"],
        serde_json::json!({
            "rows": [["aws/app", "1", "a"], ["aws/app", "2", "b"], ["gcp/app", "1", "a"], ["gcp/app", "2", "B"]],
            "differing": 2,
        }),
        "{context}"
    );

    // The merged grid as CSV, a target column first.
    assert_eq!(text(&out, "/csvName"), "result.csv");
    assert_eq!(
        text(&out, "/csv"),
        "target,id,name\r\naws/app,1,a\r\naws/app,2,b\r\ngcp/app,1,a\r\ngcp/app,2,B\r\n",
        "{context}"
    );

    assert_eq!(
        out["keyboard"],
        serde_json::json!(["aws/app=42", "gcp/app=42"]),
        "{context}"
    );
    // One cloud and a list: only the targets picked.
    assert_eq!(out["oneCloud"], serde_json::json!(["gcp/app=t"]), "{context}");
    assert_eq!(out["listed"], serde_json::json!(["aws/app=f"]), "{context}");
    // Read-only on: the server refuses the write, nothing changes.
    assert!(text(&out, "/readOnlyError").contains("read"), "{context}");
    // $1 = 2 on both copies.
    assert_eq!(
        out["withParams"],
        serde_json::json!(["aws/app=b", "gcp/app=B"]),
        "{context}"
    );

    // The parse error underlined at its token, its place said.
    assert_eq!(text(&out, "/underlined"), "SELEC", "{context}");
    assert!(
        text(&out, "/parseStatus").starts_with("Parse error at line 2, column 1"),
        "{context}"
    );

    // The dangerous UPDATE: asked first with its finding, then run on both.
    assert!(
        text(&out, "/dangerDialog").contains("UPDATE_WITHOUT_WHERE"),
        "{context}"
    );
    for panel in out["dangerous"].as_array().expect("dangerous panels") {
        assert_eq!(text(panel, "/state"), "succeeded", "{context}");
        assert_eq!(
            panel["tags"],
            serde_json::json!(["UPDATE 2 (2 rows)"]),
            "{context}"
        );
    }
    assert_eq!(names(&fleet, "aws").await?, ["A", "B"]);
    assert_eq!(names(&fleet, "gcp").await?, ["A", "B"]);

    // Found in history, with both targets' outcomes.
    let record = text(&out, "/historyRecord");
    let execution = text(&out, "/executionText").trim_start_matches("Audit record ");
    assert!(record.contains(execution) && !execution.is_empty(), "{context}");
    assert!(record.contains("dangerous statements confirmed"), "{context}");
    assert!(text(&out, "/chain").starts_with("Chain verified: "), "{context}");
    // The export: the filter's records, one JSON object a line.
    let exported: Vec<Value> = text(&out, "/historyExport")
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(exported.len(), 1, "{context}");
    assert_eq!(exported[0]["id"], execution, "{context}");
    assert_eq!(
        exported[0]["query"], "UPDATE items SET name = upper(name)",
        "{context}"
    );
    assert!(
        record.contains("aws/app\tsucceeded\t2") && record.contains("gcp/app\tsucceeded\t2"),
        "{context}"
    );

    // The slow query ran on both copies, was cancelled, and is gone from
    // pg_stat_activity long before its 600 s: the cancel reached PostgreSQL.
    assert_eq!(text(&out, "/sleepingBefore"), "aws/app=1 gcp/app=1", "{context}");
    for panel in out["cancelled"].as_array().expect("cancelled panels") {
        assert_eq!(text(panel, "/state"), "cancelled", "{context}");
    }
    let mut left = sleeping(&fleet).await?;
    for _ in 0..100 {
        if left == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        left = sleeping(&fleet).await?;
    }
    assert_eq!(left, 0, "the cancelled pg_sleep still runs");

    // The overview: every copy of both databases healthy.
    assert_eq!(
        text(&out, "/fleet"),
        "aws/analytics=HEALTHY aws/app=HEALTHY gcp/analytics=HEALTHY gcp/app=HEALTHY",
        "{context}"
    );

    // The job ran from the page: its progress streamed, the rows copied.
    let progress = out["replicationProgress"].as_array().expect("progress lines");
    assert_eq!(
        progress.last().and_then(Value::as_str),
        Some("finished: SUCCEEDED, 3 rows written"),
        "{context}"
    );
    assert_eq!(
        text(&out, "/replicationStatus"),
        "public.orders\tgcp/analytics\tSUCCEEDED\t00:00:00\t\t3\t3",
        "{context}"
    );
    // The lag chart has a sample from before the run and one from after.
    assert!(out["lagSamples"].as_u64().is_some_and(|n| n >= 2), "{context}");
    let copied: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&mut analytics)
        .await?;
    assert_eq!(copied, 3);

    // Backups: aws/app healthy from the test's backup, gcp/app DEGRADED and
    // marked; the backup listed and verified; the policy run from the page
    // streamed both copies' outcomes and left both healthy.
    assert_eq!(
        text(&out, "/backupHealth"),
        "gcp/app=DEGRADED aws/app=HEALTHY",
        "{context}"
    );
    assert_eq!(out["degradedMarked"], 1, "{context}");
    assert_eq!(text(&out, "/listedBackup"), "aws/app", "{context}");
    assert!(text(&out, "/verified").starts_with("Verified: "), "{context}");
    let backup_progress = out["backupProgress"].as_array().expect("backup progress lines");
    for cloud in ["aws", "gcp"] {
        assert!(
            backup_progress
                .iter()
                .filter_map(Value::as_str)
                .any(|l| l.starts_with(&format!("{cloud}/app: SUCCEEDED"))),
            "{context}"
        );
    }
    assert_eq!(
        backup_progress.last().and_then(Value::as_str),
        Some("done: 2 succeeded, 0 failed"),
        "{context}"
    );
    assert_eq!(
        text(&out, "/backupHealthAfter"),
        "aws/app=HEALTHY gcp/app=HEALTHY",
        "{context}"
    );

    // Migrations: 0001 pending on both copies (nothing applied from the
    // page), and the drift check finds aws/app's orders missing on gcp/app.
    assert!(
        text(&out, "/migrationSummary").starts_with("Not up to date"),
        "{context}"
    );
    assert_eq!(
        out["migrationTargets"],
        serde_json::json!([
            "aws/app: not tracked yet; pending 1",
            "gcp/app: not tracked yet; pending 1"
        ]),
        "{context}"
    );
    assert_eq!(text(&out, "/driftStatus"), "The copies differ.", "{context}");
    let drift = out["drift"].as_array().expect("drift rows");
    assert!(
        drift
            .iter()
            .filter_map(Value::as_str)
            .any(|row| row.starts_with("gcp/app\ttable\tpublic.orders\t")),
        "{context}"
    );
    let mut notes = fleet.database("aws", "app").connect().await?;
    let applied: Option<String> = sqlx::query_scalar("SELECT to_regclass('public.notes')::text")
        .fetch_one(&mut notes)
        .await?;
    assert_eq!(applied, None, "the page applied nothing");

    // Insights: the marked slow statement on both copies, the filter hiding
    // the other one; the waiting backend cancelled from the page.
    let slow = out["slowFiltered"].as_array().expect("slow rows");
    assert_eq!(
        slow.iter()
            .map(|r| text(r, "/target"))
            .collect::<std::collections::BTreeSet<_>>(),
        ["aws/app", "gcp/app"].into_iter().collect(),
        "{context}"
    );
    assert!(
        slow.iter().all(
            |r| text(r, "/query") == "SELECT $1 AS console_slow_marker FROM pg_sleep($2)"
                && text(r, "/caller") == "user:console-master"
        ),
        "{context}"
    );
    assert!(
        out["slowUnfiltered"].as_u64().is_some_and(|n| n >= 4),
        "{context}"
    );
    assert!(
        text(&out, "/cancelSignal").starts_with("Cancel sent to "),
        "{context}"
    );
    let cancelled = tokio::time::timeout(std::time::Duration::from_secs(10), waiting)
        .await
        .map_err(|_| anyhow::anyhow!("the waiting backend was not cancelled"))??;
    let code = cancelled
        .expect_err("the advisory lock wait was cancelled")
        .as_database_error()
        .and_then(|e| e.code())
        .map(|c| c.into_owned());
    assert_eq!(code.as_deref(), Some("57014"), "query_canceled");
    drop(holder);

    // What the MASTER made on the users and keys page works (or, revoked, not).
    let new_user = login(&channel, "console-new", "Harbor-lamp-7781").await?;
    let me = auth_client(&channel)
        .me(bearer(pb::MeRequest {}, &new_user))
        .await?
        .into_inner();
    assert_eq!(me.role, pb::Role::Master as i32, "the role the page changed");
    assert_eq!(text(&out, "/newUserRole"), "MASTER", "{context}");
    let gone = login(&channel, "console-gone", "Harbor-lamp-7781")
        .await
        .expect_err("a deactivated user cannot log in");
    // With the right password pgfleet says why (tests/it/auth.rs).
    assert_eq!(gone.code(), tonic::Code::PermissionDenied);
    assert_eq!(gone.message(), "account is deactivated");
    let me = auth_client(&channel)
        .me(api_key(pb::MeRequest {}, text(&out, "/keptKey")))
        .await?
        .into_inner();
    assert_eq!(me.role, pb::Role::Reader as i32);
    let revoked = auth_client(&channel)
        .me(api_key(pb::MeRequest {}, text(&out, "/revokedKey")))
        .await
        .expect_err("a revoked key is refused");
    assert_eq!(revoked.code(), tonic::Code::Unauthenticated);

    // Logged out, then a READER: no write controls, and a write sent anyway
    // is refused by the server; nothing changed.
    assert_eq!(out["afterLogout"], 1, "{context}");
    assert_eq!(text(&out, "/readerWho"), "console-reader (READER)", "{context}");
    assert_eq!(out["readerReadOnlySwitch"], 0, "{context}");
    assert_eq!(out["readerAccessLink"], 0, "{context}");
    assert_eq!(out["readerRunButtons"], 0, "{context}");
    // Backups: no Run now, but Verify, which a READER may call (and did).
    assert_eq!(out["readerBackupRunButtons"], 0, "{context}");
    assert!(
        text(&out, "/readerVerified").starts_with("Verified: "),
        "{context}"
    );
    // Insights: backends listed, none with Cancel.
    assert!(out["readerBackends"].as_u64().is_some_and(|n| n > 0), "{context}");
    assert_eq!(out["readerCancelButtons"], 0, "{context}");
    assert!(
        text(&out, "/readerError").starts_with("PERMISSION_DENIED"),
        "{context}"
    );
    assert_eq!(names(&fleet, "aws").await?, ["A", "B"]);

    for page in [
        "login",
        "query",
        "parse-error",
        "dangerous",
        "history",
        "cancelled",
        "replication",
        "backups",
        "migrations",
        "insights",
        "reader",
        "reader-backups",
        "reader-insights",
    ] {
        assert!(screenshots.join(format!("{page}.png")).is_file(), "{page}.png");
    }
    server.shutdown().await?;
    Ok(())
}

/// One HTTP/1.1 request to `addr`: status, headers and the whole body.
async fn http(
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> anyhow::Result<(StatusCode, HeaderMap, Bytes)> {
    let mut request = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = client(Wire::Http1)
        .request(request.body(Full::new(Bytes::from(body)))?)
        .await?;
    let (parts, body) = response.into_parts();
    Ok((parts.status, parts.headers, body.collect().await?.to_bytes()))
}

/// A grpc-web call on `addr`: its grpc-status and its one message, if any.
async fn grpc_web<M: Message + Default>(
    addr: SocketAddr,
    path: &str,
    message: &impl Message,
    headers: &[(&str, &str)],
) -> anyhow::Result<(String, HeaderMap, Option<M>)> {
    let payload = message.encode_to_vec();
    let mut framed = vec![0u8];
    framed.extend_from_slice(&u32::try_from(payload.len())?.to_be_bytes());
    framed.extend_from_slice(&payload);
    let mut all = vec![
        ("content-type", "application/grpc-web+proto"),
        ("x-grpc-web", "1"),
    ];
    all.extend_from_slice(headers);
    let (status, response_headers, body) = http(addr, Method::POST, path, &all, framed).await?;
    assert_eq!(status, StatusCode::OK);
    let (messages, trailers) = frames(&body)?;
    let grpc_status = trailers
        .as_ref()
        .and_then(|t| t.get("grpc-status"))
        .or_else(|| response_headers.get("grpc-status"))
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let message = messages.first().map(|m| M::decode(m.clone())).transpose()?;
    Ok((grpc_status, response_headers, message))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_console_port_serves_its_files_before_the_gate_and_its_calls_through_it() -> anyhow::Result<()> {
    let mut fleet = Fleet::create().await?;
    fleet.server_toml = "console_addr = '127.0.0.1:0'\n".to_owned();
    fleet.auth_toml.push_str("cookie_secure = false\n");
    let server = fleet.start("").await?;
    let console = server.console_addr().expect("console_addr is configured");
    let password = fleet.create_user("console-http", Role::Reader).await?;

    // The page, without credentials, with its security headers.
    let (status, headers, body) = http(console, Method::GET, "/", &[], Vec::new()).await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    assert_eq!(headers["cache-control"], "no-cache");
    assert_eq!(headers["x-frame-options"], "DENY");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    let csp = headers["content-security-policy"].to_str()?;
    assert!(
        csp.contains("default-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    let page = String::from_utf8(body.to_vec())?;
    assert!(page.to_ascii_lowercase().starts_with("<!doctype html"), "{page}");
    // A built console names its script; it is served, cached for good.
    if let Some(start) = page.find("/assets/") {
        let script = &page[start..start + page[start..].find('"').unwrap_or(0)];
        let (status, headers, _) = http(console, Method::GET, script, &[], Vec::new()).await?;
        assert_eq!(status, StatusCode::OK, "{script}");
        assert!(headers["cache-control"].to_str()?.contains("immutable"));
    }
    let (status, _, _) = http(console, Method::GET, "/assets/missing.js", &[], Vec::new()).await?;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, _) = http(console, Method::GET, "/../Cargo.toml", &[], Vec::new()).await?;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, headers, _) = http(console, Method::DELETE, "/", &[], Vec::new()).await?;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(headers["allow"], "GET, HEAD, POST");

    // Calls pass the gate like on the gRPC port: refused without credentials,
    // then a Login that sets the HttpOnly cookie, which then suffices.
    let me = pb::MeRequest {};
    let (code, _, _) = grpc_web::<pb::MeResponse>(console, "/pgfleet.v1.AuthService/Me", &me, &[]).await?;
    assert_eq!(code, "16");
    let login = pb::LoginRequest {
        username: "console-http".to_owned(),
        password,
    };
    let (code, headers, _) =
        grpc_web::<pb::LoginResponse>(console, "/pgfleet.v1.AuthService/Login", &login, &[]).await?;
    assert_eq!(code, "0");
    let cookie = headers["set-cookie"].to_str()?;
    assert!(
        cookie.starts_with("pgfleet_session=") && cookie.contains("HttpOnly"),
        "{cookie}"
    );
    let session = cookie.split(';').next().unwrap_or_default();
    let (code, _, who) =
        grpc_web::<pb::MeResponse>(console, "/pgfleet.v1.AuthService/Me", &me, &[("cookie", session)])
            .await?;
    assert_eq!(code, "0");
    assert_eq!(who.map(|w| w.role), Some(pb::Role::Reader as i32));

    // The gRPC port does not serve the console.
    let (_, headers, _) = http(server.local_addr(), Method::GET, "/", &[], Vec::new()).await?;
    assert_ne!(
        headers.get("content-type").and_then(|v| v.to_str().ok()),
        Some("text/html; charset=utf-8")
    );
    server.shutdown().await?;
    Ok(())
}
