//! The web console end to end: the real server with `server.console_addr`,
//! real databases, and console/e2e/console.mjs driving the built console in
//! Debian's headless Chromium through playwright-core (which never downloads
//! a browser). The script does what a DBA does and prints what the page
//! showed as one JSON object; this test checks it against the databases.
//! Screenshots of every page land in target/console-e2e/.

use std::net::SocketAddr;
use std::path::PathBuf;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use prost::Message;

use pgfleet_engine::identity::Role;
use serde_json::Value;

use pgfleet_proto::pgfleet::v1 as pb;

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
    let server = fleet.start("").await?;
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
        "reader",
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
