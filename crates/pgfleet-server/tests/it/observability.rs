//! Observability end to end, with real servers, databases and clients:
//! `/metrics` scraped over HTTP after real calls, and the JSON log file of
//! the real `pgfleet` binary read after it stopped.
//! Trace export is tested in `tracing_export.rs`: its test installs the
//! process-wide subscriber.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use axum::body::Bytes;
use http_body_util::{BodyExt as _, Empty};
use pb::replication_event::Event;
use pgfleet_config::{FileFormat, Inputs, LoadedConfig, ProcessEnv};
use pgfleet_engine::identity::Role;
use pgfleet_proto::pgfleet::v1 as pb;
use pgfleet_proto::pgfleet::v1::fleet_service_client::FleetServiceClient;
use pgfleet_proto::pgfleet::v1::query_service_client::QueryServiceClient;
use pgfleet_proto::pgfleet::v1::replication_service_client::ReplicationServiceClient;
use pgfleet_server::app::RunningServer;
use tonic::Code;
use tonic::metadata::MetadataValue;

use crate::support::{Fleet, bearer, channel, login, target};

/// One sample of the text exposition: name, labels, value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses Prometheus' text format (comments skipped; label values here
/// never hold escaped quotes).
fn parse_exposition(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(|line| {
            let (series, value) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("bad line {line:?}"));
            let (name, labels) = match series.split_once('{') {
                None => (series, BTreeMap::new()),
                Some((name, rest)) => {
                    let body = rest
                        .strip_suffix('}')
                        .unwrap_or_else(|| panic!("bad labels {line:?}"));
                    let labels = body
                        .split("\",")
                        .filter(|pair| !pair.is_empty())
                        .map(|pair| {
                            let (key, value) = pair
                                .split_once("=\"")
                                .unwrap_or_else(|| panic!("bad label {pair:?}"));
                            (key.to_owned(), value.trim_end_matches('"').to_owned())
                        })
                        .collect();
                    (name, labels)
                }
            };
            Sample {
                name: name.to_owned(),
                labels,
                value: value.parse().unwrap_or_else(|_| panic!("bad value {line:?}")),
            }
        })
        .collect()
}

/// The value of the one sample of `name` with exactly `labels` (the other
/// labels of the series are not compared).
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let matching: Vec<&Sample> = samples
        .iter()
        .filter(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect();
    assert!(
        matching.len() <= 1,
        "{name} {labels:?} matches several series: {matching:?}"
    );
    matching.first().map(|s| s.value)
}

/// GET /metrics with a real HTTP/1.1 client: (content type, body).
async fn scrape(addr: SocketAddr) -> anyhow::Result<(String, String)> {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Empty<Bytes>>();
    let response = client.get(format!("http://{addr}/metrics").parse()?).await?;
    anyhow::ensure!(response.status() == 200, "status {}", response.status());
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((content_type, String::from_utf8(body.to_vec())?))
}

/// The fleet's config with `server.metrics_addr` on a free port, set the
/// way operators do it: an environment override.
fn config_with_metrics(fleet: &Fleet) -> LoadedConfig {
    let text = fleet.config_toml("");
    pgfleet_config::load_str(
        &text,
        FileFormat::Toml,
        Path::new("observability.toml"),
        &Inputs {
            variables: &ProcessEnv,
            overrides: vec![(
                "PGFLEET__SERVER__METRICS_ADDR".to_owned(),
                "127.0.0.1:0".to_owned(),
            )],
        },
    )
    .unwrap_or_else(|e| panic!("test config: {e}\n{text}"))
}

/// Runs `sql` directly on one fleet database (not through pgfleet).
async fn run_sql_on(fleet: &Fleet, cloud: &str, name: &str, sql: &str) -> anyhow::Result<()> {
    let database = fleet
        .databases
        .iter()
        .find(|(c, n, _)| c == cloud && n == name)
        .map(|(_, _, db)| db)
        .unwrap_or_else(|| panic!("no database {name} in cloud {cloud}"));
    let mut connection = database.connect().await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(&mut connection)
        .await?;
    Ok(())
}

const EVENTS_TABLE: &str =
    "CREATE TABLE public.events (id bigint PRIMARY KEY, updated_at timestamptz NOT NULL, kind text)";

fn execute_on(query: &str, targets: &[(&str, &str)], params: Vec<pb::QueryParam>) -> pb::ExecuteRequest {
    pb::ExecuteRequest {
        query: query.to_owned(),
        scope: Some(pb::execute_request::Scope::Targets(pb::TargetList {
            targets: targets.iter().map(|(c, d)| target(c, d)).collect(),
        })),
        params,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_scrape_shows_calls_targets_pools_replication_audit_and_logins() -> anyhow::Result<()> {
    let fleet = Fleet::create().await?;
    let server = RunningServer::start(config_with_metrics(&fleet)).await?;
    let metrics_addr = server.metrics_addr().expect("metrics_addr is configured");
    assert_ne!(metrics_addr, server.local_addr());
    let channel = channel(&server).await?;
    let password = fleet.create_user("obs-admin", Role::Master).await?;

    // Two failed logins (one with a username that must appear nowhere),
    // one that works, one call refused by the auth gate.
    let wrong = login(&channel, "mallory-obs-intruder", "not-the-password-123").await;
    assert_eq!(wrong.err().map(|s| s.code()), Some(Code::Unauthenticated));
    let empty = login(&channel, "", "x").await;
    assert_eq!(empty.err().map(|s| s.code()), Some(Code::InvalidArgument));
    let token = login(&channel, "obs-admin", &password).await?;
    let refused = FleetServiceClient::new(channel.clone())
        .get_health(pb::GetHealthRequest::default())
        .await;
    assert_eq!(refused.err().map(|s| s.code()), Some(Code::Unauthenticated));

    // A write through pgfleet (on record: audit open and close) that
    // creates the table on aws only, then a read on two targets: aws
    // succeeds, gcp fails with SQLSTATE 42P01 (class 42).
    let mut query = QueryServiceClient::new(channel.clone());
    let created = query
        .execute(bearer(
            execute_on(EVENTS_TABLE, &[("aws", "app")], vec![]),
            &token,
        ))
        .await?
        .into_inner();
    assert!(created.success, "{created:?}");
    let read = query
        .execute(bearer(
            execute_on(
                "SELECT count(*) FROM public.events WHERE kind <> $1",
                &[("aws", "app"), ("gcp", "app")],
                vec![pb::QueryParam {
                    value: Some(pb::query_param::Value::TextValue("obs-param-value".to_owned())),
                    type_name: String::new(),
                }],
            ),
            &token,
        ))
        .await?
        .into_inner();
    let sqlstates: Vec<(String, String)> = read
        .results
        .iter()
        .map(|r| {
            (
                r.target.as_ref().map(|t| t.cloud.clone()).unwrap_or_default(),
                r.error
                    .as_ref()
                    .and_then(|e| e.postgres.as_ref())
                    .map(|p| p.sqlstate.clone())
                    .unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        sqlstates,
        [
            ("aws".to_owned(), String::new()),
            ("gcp".to_owned(), "42P01".to_owned())
        ]
    );

    // A stored job copies 30 rows aws/app → gcp/app; a newer source row
    // (one hour later, not copied) gives GetStatus a lag to measure.
    let rows = "INSERT INTO public.events SELECT g, timestamptz '2026-01-01 00:00:00+00' + g * interval '1 second', \
                'k' FROM generate_series(1, 30) g";
    run_sql_on(&fleet, "aws", "app", rows).await?;
    run_sql_on(&fleet, "gcp", "app", EVENTS_TABLE).await?;
    let mut replication = ReplicationServiceClient::new(channel.clone());
    let job = replication
        .create_job(bearer(
            pb::CreateJobRequest {
                job: Some(pb::ReplicationJob {
                    name: "obs-events".to_owned(),
                    source: Some(target("aws", "app")),
                    targets: vec![target("gcp", "app")],
                    tables: vec!["public.events".to_owned()],
                    sync_key: "updated_at".to_owned(),
                    mode: pb::ReplicationMode::Incremental.into(),
                    batch_size: 10,
                    ..Default::default()
                }),
                validate_only: false,
            },
            &token,
        ))
        .await?
        .into_inner()
        .job
        .map(|j| j.id)
        .unwrap_or_default();
    let mut run = replication
        .run_job(bearer(
            pb::RunJobRequest {
                job_id: job.clone(),
                ..Default::default()
            },
            &token,
        ))
        .await?
        .into_inner();
    let mut last = None;
    while let Some(message) = run.message().await? {
        last = message.event.and_then(|e| e.event);
    }
    match last {
        Some(Event::RunFinished(done)) => {
            assert_eq!(done.outcome(), pb::ReplicationOutcome::Succeeded, "{done:?}");
        }
        other => panic!("the run did not finish: {other:?}"),
    }
    run_sql_on(
        &fleet,
        "aws",
        "app",
        "INSERT INTO public.events VALUES (31, timestamptz '2026-01-01 00:00:30+00' + interval '1 hour', 'late')",
    )
    .await?;
    let status = replication
        .get_status(bearer(
            pb::GetStatusRequest {
                job_id: job.clone(),
                skip_row_counts: true,
            },
            &token,
        ))
        .await?
        .into_inner();
    let reported_lag = status
        .jobs
        .first()
        .and_then(|j| j.tables.first())
        .and_then(|t| t.lag.as_ref())
        .map(|lag| lag.seconds as f64 + f64::from(lag.nanos) / 1e9)
        .expect("GetStatus reports a lag");
    assert_eq!(reported_lag, 3600.0);

    let (content_type, text) = scrape(metrics_addr).await?;
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let samples = parse_exposition(&text);
    let at_least = |name: &str, labels: &[(&str, &str)], minimum: f64| {
        let found =
            value(&samples, name, labels).unwrap_or_else(|| panic!("no {name} {labels:?} in:\n{text}"));
        assert!(
            found >= minimum,
            "{name} {labels:?} = {found}, expected at least {minimum}"
        );
    };

    // Calls, by method and status; refusals of the gate included.
    let login_labels = |code| {
        [
            ("service", "pgfleet.v1.AuthService"),
            ("method", "Login"),
            ("code", code),
        ]
    };
    at_least("pgfleet_rpc_requests_total", &login_labels("OK"), 1.0);
    at_least(
        "pgfleet_rpc_requests_total",
        &login_labels("UNAUTHENTICATED"),
        1.0,
    );
    at_least(
        "pgfleet_rpc_requests_total",
        &login_labels("INVALID_ARGUMENT"),
        1.0,
    );
    at_least(
        "pgfleet_rpc_requests_total",
        &[
            ("service", "pgfleet.v1.FleetService"),
            ("method", "GetHealth"),
            ("code", "UNAUTHENTICATED"),
        ],
        1.0,
    );
    let execute = [
        ("service", "pgfleet.v1.QueryService"),
        ("method", "Execute"),
        ("code", "OK"),
    ];
    at_least("pgfleet_rpc_requests_total", &execute, 2.0);
    at_least("pgfleet_rpc_duration_seconds_count", &execute, 2.0);
    // A stream is counted when it ended, with its status from the trailers.
    at_least(
        "pgfleet_rpc_requests_total",
        &[
            ("service", "pgfleet.v1.ReplicationService"),
            ("method", "RunJob"),
            ("code", "OK"),
        ],
        1.0,
    );

    // Per target: executions, errors by SQLSTATE class, latency.
    at_least(
        "pgfleet_target_queries_total",
        &[("cloud", "aws"), ("database", "app")],
        2.0,
    );
    at_least(
        "pgfleet_target_queries_total",
        &[("cloud", "gcp"), ("database", "app")],
        1.0,
    );
    at_least(
        "pgfleet_target_query_errors_total",
        &[
            ("cloud", "gcp"),
            ("database", "app"),
            ("code", "aborted"),
            ("sqlstate_class", "42"),
        ],
        1.0,
    );
    assert!(
        !samples
            .iter()
            .any(|s| s.name == "pgfleet_target_query_errors_total"
                && s.labels.get("cloud").map(String::as_str) == Some("aws")),
        "aws never failed:\n{text}"
    );
    at_least(
        "pgfleet_target_query_duration_seconds_count",
        &[("cloud", "gcp"), ("database", "app")],
        1.0,
    );

    // Pools and health of every member, read at scrape time.
    for (cloud, database) in [
        ("aws", "app"),
        ("aws", "analytics"),
        ("gcp", "app"),
        ("gcp", "analytics"),
    ] {
        let member = [("cloud", cloud), ("database", database), ("member", "primary")];
        for gauge in ["pgfleet_pool_size", "pgfleet_pool_idle", "pgfleet_pool_waiting"] {
            at_least(gauge, &member, 0.0);
        }
        let states: f64 = ["unknown", "healthy", "degraded", "unhealthy"]
            .iter()
            .map(|state| {
                value(
                    &samples,
                    "pgfleet_target_health",
                    &[
                        ("cloud", cloud),
                        ("database", database),
                        ("member", "primary"),
                        ("state", state),
                    ],
                )
                .unwrap_or_else(|| panic!("no health state {state} for {cloud}/{database}"))
            })
            .sum();
        assert_eq!(states, 1.0, "exactly one state of {cloud}/{database} is current");
    }
    // aws/app ran statements: its pool holds the connection it returned.
    at_least(
        "pgfleet_pool_size",
        &[("cloud", "aws"), ("database", "app"), ("member", "primary")],
        1.0,
    );
    assert_eq!(
        value(
            &samples,
            "pgfleet_pool_waiting",
            &[("cloud", "aws"), ("database", "app"), ("member", "primary")]
        ),
        Some(0.0)
    );

    // Replication: every committed row, and the lag GetStatus measured.
    let pair = [
        ("replication_job", job.as_str()),
        ("table", "public.events"),
        ("cloud", "gcp"),
        ("database", "app"),
    ];
    assert_eq!(
        value(&samples, "pgfleet_replication_rows_copied_total", &pair),
        Some(30.0)
    );
    assert_eq!(
        value(&samples, "pgfleet_replication_lag_seconds", &pair),
        Some(reported_lag)
    );

    // The audit trail: the DDL and the run were opened and closed.
    at_least(
        "pgfleet_audit_write_duration_seconds_count",
        &[("operation", "open"), ("result", "ok")],
        2.0,
    );
    at_least(
        "pgfleet_audit_write_duration_seconds_count",
        &[("operation", "close"), ("result", "ok")],
        2.0,
    );

    // Login failures by reason; never who.
    at_least(
        "pgfleet_login_failures_total",
        &[("reason", "invalid_credentials")],
        1.0,
    );
    at_least(
        "pgfleet_login_failures_total",
        &[("reason", "invalid_request")],
        1.0,
    );
    assert_eq!(
        value(
            &samples,
            "pgfleet_login_failures_total",
            &[("reason", "throttled")]
        ),
        Some(0.0)
    );
    for secret in [
        "mallory-obs-intruder",
        "not-the-password-123",
        password.as_str(),
        "obs-param-value",
        token.as_str(),
    ] {
        assert!(!text.contains(secret), "{secret:?} is in the metrics");
    }

    // The listener lives and dies with the server.
    server.shutdown().await?;
    assert!(
        tokio::net::TcpStream::connect(metrics_addr).await.is_err(),
        "metrics listener closed after shutdown"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn no_metrics_listener_unless_configured() -> anyhow::Result<()> {
    let fleet = Fleet::create().await?;
    let server = fleet.start("").await?;
    assert_eq!(server.metrics_addr(), None);
    server.shutdown().await?;
    Ok(())
}

/// A JSON log line's spans, innermost last (`spans`), as objects.
fn spans_of(line: &serde_json::Value) -> Vec<&serde_json::Map<String, serde_json::Value>> {
    line["spans"]
        .as_array()
        .map(|spans| spans.iter().filter_map(serde_json::Value::as_object).collect())
        .unwrap_or_default()
}

fn rpc_span_of(line: &serde_json::Value) -> Option<&serde_json::Map<String, serde_json::Value>> {
    spans_of(line)
        .into_iter()
        .find(|span| span.get("name").and_then(|n| n.as_str()) == Some("rpc"))
}

/// Every JSON line of every log file in `directory`.
fn read_log_lines(directory: &Path) -> anyhow::Result<(String, Vec<serde_json::Value>)> {
    let mut text = String::new();
    for entry in std::fs::read_dir(directory)? {
        let path = entry?.path();
        if path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("pgfleet.") && n.ends_with(".log"))
        {
            text.push_str(&std::fs::read_to_string(&path)?);
        }
    }
    let lines = text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect();
    Ok((text, lines))
}

/// The gRPC address the binary logged once it listened.
fn listening_addr(lines: &[serde_json::Value]) -> Option<String> {
    lines
        .iter()
        .find(|line| line["fields"]["message"] == "pgfleet listening")
        .and_then(|line| line["fields"]["addr"].as_str().map(str::to_owned))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_binary_writes_json_log_files_whose_call_lines_carry_the_request_id() -> anyhow::Result<()> {
    let fleet = Fleet::create().await?;
    let dir = tempfile::tempdir()?;
    let logs = dir.path().join("logs");
    let config = dir.path().join("pgfleet.toml");
    std::fs::write(
        &config,
        format!(
            "{}\n[log]\nformat = 'json'\nlevel = 'info,pgfleet_server=debug,pgfleet_engine=debug,sqlx=warn'\nfile = '{}'\nrotation = 'daily'\n",
            fleet.config_toml(""),
            logs.display()
        ),
    )?;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_pgfleet"))
        .args(["--config", config.to_str().unwrap_or_default(), "serve"])
        // The file decides: no filter or format from the test's environment.
        .env_remove("PGFLEET_LOG")
        .env_remove("RUST_LOG")
        .env_remove("PGFLEET_LOG_FORMAT")
        .stderr(std::process::Stdio::piped())
        .spawn()?;

    // The file itself says where the server listens (port 0 was asked for).
    let mut addr = None;
    for _ in 0..300 {
        if logs.is_dir() {
            addr = listening_addr(&read_log_lines(&logs)?.1);
        }
        if addr.is_some() || child.try_wait()?.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let Some(addr) = addr else {
        let _ = child.kill();
        let output = child.wait_with_output()?;
        panic!(
            "the server did not start: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let password = fleet.create_user("log-admin", Role::Master).await?;
    let token = login(&channel, "log-admin", &password).await?;

    // A call with its own request id, on two targets, one failing; its
    // parameter must appear nowhere.
    let request_id = format!("obs-logs-{}", uuid::Uuid::new_v4().simple());
    let mut request = bearer(
        execute_on(
            "SELECT $1::text FROM public.only_here",
            &[("aws", "app"), ("gcp", "app")],
            vec![pb::QueryParam {
                value: Some(pb::query_param::Value::TextValue("log-param-secret".to_owned())),
                type_name: String::new(),
            }],
        ),
        &token,
    );
    request
        .metadata_mut()
        .insert("x-request-id", MetadataValue::try_from(request_id.as_str())?);
    run_sql_on(&fleet, "aws", "app", "CREATE TABLE public.only_here (x int)").await?;
    let response = QueryServiceClient::new(channel.clone()).execute(request).await?;
    assert_eq!(
        response
            .metadata()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok()),
        Some(request_id.as_str())
    );
    // A refused login without a request id: the server makes one up,
    // answers with it and logs with it.
    let refused = login(&channel, "log-admin", "wrong-password-log-test")
        .await
        .expect_err("wrong password");
    let generated = refused
        .metadata()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .expect("a generated request id in the answer");
    drop(channel);

    // SIGTERM: drain, stop, flush the file writer.
    let terminated = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()?;
    assert!(terminated.success());
    let output = tokio::task::spawn_blocking(move || child.wait_with_output()).await??;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let (text, lines) = read_log_lines(&logs)?;
    assert!(
        lines
            .iter()
            .any(|line| line["fields"]["message"] == "pgfleet stopped"),
        "the last line reached the file before exit"
    );
    // Every line logged inside a call names its request id.
    let in_calls: Vec<&serde_json::Value> = lines.iter().filter(|line| rpc_span_of(line).is_some()).collect();
    for line in &in_calls {
        let id = rpc_span_of(line)
            .and_then(|span| span.get("request_id"))
            .and_then(|v| v.as_str());
        assert!(
            id.is_some_and(|id| !id.is_empty()),
            "a call's line without request id: {line}"
        );
    }
    let of_call: Vec<&&serde_json::Value> = in_calls
        .iter()
        .filter(|line| {
            rpc_span_of(line)
                .and_then(|span| span.get("request_id"))
                .and_then(|v| v.as_str())
                == Some(request_id.as_str())
        })
        .collect();
    let message =
        |line: &serde_json::Value| line["fields"]["message"].as_str().unwrap_or_default().to_owned();
    // Both targets' lines (inside their `target` spans) and the call's end.
    let targets_done: Vec<String> = of_call
        .iter()
        .filter(|line| message(line) == "target finished")
        .filter_map(|line| {
            spans_of(line)
                .into_iter()
                .find(|span| span.get("name").and_then(|n| n.as_str()) == Some("target"))
                .map(|span| {
                    format!(
                        "{}/{} {}",
                        span["cloud"].as_str().unwrap_or("?"),
                        span["database"].as_str().unwrap_or("?"),
                        line["fields"]["sqlstate"].as_str().unwrap_or("?")
                    )
                })
        })
        .collect();
    let mut sorted = targets_done.clone();
    sorted.sort();
    assert_eq!(sorted, ["aws/app ", "gcp/app 42P01"], "{targets_done:?}");
    let finished: Vec<&&&serde_json::Value> = of_call
        .iter()
        .filter(|line| message(line) == "call finished")
        .collect();
    assert_eq!(finished.len(), 1, "{of_call:?}");
    assert_eq!(finished[0]["fields"]["code"], "OK");
    assert_eq!(
        rpc_span_of(finished[0])
            .and_then(|s| s.get("rpc.method"))
            .and_then(|v| v.as_str()),
        Some("Execute")
    );
    assert_eq!(
        rpc_span_of(finished[0])
            .and_then(|s| s.get("identity"))
            .and_then(|v| v.as_str()),
        Some("user:log-admin")
    );
    // The refused login's line carries the id the caller was given.
    assert!(
        in_calls.iter().any(|line| {
            message(line) == "call finished"
                && line["fields"]["code"] == "UNAUTHENTICATED"
                && rpc_span_of(line)
                    .and_then(|s| s.get("request_id"))
                    .and_then(|v| v.as_str())
                    == Some(generated.as_str())
        }),
        "no line of the refused login with request id {generated}"
    );
    for secret in [
        "log-param-secret",
        "wrong-password-log-test",
        password.as_str(),
        token.as_str(),
    ] {
        assert!(!text.contains(secret), "{secret:?} is in the log file");
    }
    Ok(())
}
