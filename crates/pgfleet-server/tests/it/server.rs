//! The server shell end to end: a real server on real databases, reached
//! with the real grpcurl binary, and the `pgfleet` binary's commands.

use std::process::Command;

use pgfleet_engine::identity::Role;

use crate::support::{Fleet, run_grpcurl};

#[tokio::test(flavor = "multi_thread")]
async fn grpcurl_lists_every_service_and_health_is_serving() -> anyhow::Result<()> {
    let fleet = Fleet::create().await?;
    let server = fleet.start("").await?;
    let addr = server.local_addr().to_string();

    let listing = tokio::task::spawn_blocking({
        let addr = addr.clone();
        move || run_grpcurl(&["-plaintext", &addr, "list"])
    })
    .await?;
    assert!(listing.0, "grpcurl list failed: {}", listing.2);
    let services: Vec<&str> = listing.1.lines().collect();
    for expected in [
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "pgfleet.v1.AuthService",
        "pgfleet.v1.FleetService",
        "pgfleet.v1.HistoryService",
        "pgfleet.v1.QueryService",
        "pgfleet.v1.ReplicationService",
    ] {
        assert!(
            services.contains(&expected),
            "{expected} missing from {services:?}"
        );
    }

    let health = tokio::task::spawn_blocking({
        let addr = addr.clone();
        move || run_grpcurl(&["-plaintext", &addr, "grpc.health.v1.Health/Check"])
    })
    .await?;
    assert!(health.0, "{}", health.2);
    assert!(health.1.contains("\"SERVING\""), "{}", health.1);

    let per_service = tokio::task::spawn_blocking({
        let addr = addr.clone();
        move || {
            run_grpcurl(&[
                "-plaintext",
                "-d",
                r#"{"service":"pgfleet.v1.QueryService"}"#,
                &addr,
                "grpc.health.v1.Health/Check",
            ])
        }
    })
    .await?;
    assert!(
        per_service.1.contains("\"SERVING\""),
        "{} {}",
        per_service.1,
        per_service.2
    );

    let describe = tokio::task::spawn_blocking({
        let addr = addr.clone();
        move || run_grpcurl(&["-plaintext", &addr, "describe", "pgfleet.v1.QueryService"])
    })
    .await?;
    assert!(describe.0, "{}", describe.2);
    assert!(describe.1.contains("rpc Execute"), "{}", describe.1);

    // Anonymous calls are refused; Login through grpcurl gives a token.
    let anonymous = tokio::task::spawn_blocking({
        let addr = addr.clone();
        move || {
            run_grpcurl(&[
                "-plaintext",
                "-d",
                "{}",
                &addr,
                "pgfleet.v1.FleetService/GetConfiguration",
            ])
        }
    })
    .await?;
    assert!(anonymous.2.contains("Code: Unauthenticated"), "{}", anonymous.2);
    let password = fleet.create_user("ops", Role::Master).await?;
    let login = tokio::task::spawn_blocking({
        let addr = addr.clone();
        let body = serde_json::json!({"username": "ops", "password": password}).to_string();
        move || run_grpcurl(&["-plaintext", "-d", &body, &addr, "pgfleet.v1.AuthService/Login"])
    })
    .await?;
    assert!(login.0, "{}", login.2);
    let token = serde_json::from_str::<serde_json::Value>(&login.1)?["token"]
        .as_str()
        .map(str::to_owned)
        .expect("token in the Login response");

    // A write through grpcurl is on record, and the chain verifies.
    let history = tokio::task::spawn_blocking({
        let addr = addr.clone();
        let header = format!("authorization: Bearer {token}");
        move || {
            let write = run_grpcurl(&[
                "-plaintext",
                "-H",
                &header,
                "-d",
                r#"{"query": "CREATE TABLE grpcurl_made (id int)", "database": "app", "cloud": "aws"}"#,
                &addr,
                "pgfleet.v1.QueryService/Execute",
            ]);
            let verify = run_grpcurl(&[
                "-plaintext",
                "-H",
                &header,
                "-d",
                "{}",
                &addr,
                "pgfleet.v1.HistoryService/VerifyChain",
            ]);
            (write, verify)
        }
    })
    .await?;
    assert!(history.0.0, "{}", history.0.2);
    let written: serde_json::Value = serde_json::from_str(&history.0.1)?;
    assert_eq!(written["success"], true, "{written}");
    let verified: serde_json::Value = serde_json::from_str(&history.1.1)?;
    assert_eq!(verified["ok"], true, "{verified}");
    assert_eq!(verified["recordsChecked"], "2", "{verified}");

    // Replication status of a fleet without jobs: an empty answer, not an error.
    let status = tokio::task::spawn_blocking({
        let addr = addr.clone();
        let header = format!("authorization: Bearer {token}");
        move || {
            run_grpcurl(&[
                "-plaintext",
                "-H",
                &header,
                "-d",
                "{}",
                &addr,
                "pgfleet.v1.ReplicationService/GetStatus",
            ])
        }
    })
    .await?;
    assert!(status.0, "{}", status.2);
    let compact: String = status.1.split_whitespace().collect();
    assert_eq!(compact, "{}", "{}", status.1);

    server.shutdown().await?;
    Ok(())
}

/// Reflection serves the `google.rpc` error details, so grpcurl decodes a
/// `BadRequest` into its field violations instead of printing raw bytes.
#[tokio::test(flavor = "multi_thread")]
async fn grpcurl_decodes_bad_request_field_violations() -> anyhow::Result<()> {
    let fleet = Fleet::create().await?;
    let server = fleet.start("").await?;
    let addr = server.local_addr().to_string();

    let refused = tokio::task::spawn_blocking(move || {
        run_grpcurl(&[
            "-plaintext",
            "-format-error",
            "-d",
            r#"{"username": "", "password": "whatever"}"#,
            &addr,
            "pgfleet.v1.AuthService/Login",
        ])
    })
    .await?;
    assert!(!refused.0, "an empty username must be refused: {}", refused.1);
    assert!(
        !refused.2.contains("not recognized"),
        "grpcurl could not resolve the detail type: {}",
        refused.2
    );
    // -format-error: the status as JSON on stderr, details decoded by type.
    let status: serde_json::Value =
        serde_json::from_str(&refused.2).map_err(|error| anyhow::anyhow!("{error}: stderr {}", refused.2))?;
    assert_eq!(status["code"], 3, "INVALID_ARGUMENT: {status}");
    assert_eq!(
        status["details"],
        serde_json::json!([{
            "@type": "type.googleapis.com/google.rpc.BadRequest",
            "fieldViolations": [{"field": "username", "description": "must not be empty"}]
        }]),
        "{status}"
    );

    server.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn starts_with_an_unreachable_cloud_and_applies_migrations() -> anyhow::Result<()> {
    let fleet = Fleet::create().await?;
    let dead_port = pgfleet_testkit::free_port()?;
    let server = fleet
        .start(&format!(
            "[[clouds]]\nname = 'azure'\n[[clouds.databases]]\nname = 'app'\nhost = '127.0.0.1'\nport = {dead_port}\n\
             user = 'postgres'\ndatabase = 'nowhere'\nsslmode = 'disable'\n"
        ))
        .await?;
    let addr = server.local_addr().to_string();
    let health = tokio::task::spawn_blocking(move || {
        run_grpcurl(&["-plaintext", &addr, "grpc.health.v1.Health/Check"])
    })
    .await?;
    assert!(health.1.contains("\"SERVING\""), "{} {}", health.1, health.2);

    let pool = fleet.history.pool().await?;
    let schema: Option<String> =
        sqlx::query_scalar("SELECT nspname::text FROM pg_namespace WHERE nspname = 'pgfleet'")
            .fetch_optional(&pool)
            .await?;
    assert_eq!(schema.as_deref(), Some("pgfleet"), "migrations ran at start");
    pool.close().await;

    server.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_stops_accepting_connections() -> anyhow::Result<()> {
    let fleet = Fleet::create().await?;
    let server = fleet.start("").await?;
    let addr = server.local_addr();
    server.shutdown().await?;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "listener closed after shutdown"
    );
    Ok(())
}

#[test]
fn check_config_reports_every_problem_and_redacts_secrets() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[history]\nhost='h'\nuser='u'\ndatabase='d'\n\
         [[clouds]]\nname='aws'\n[[clouds.databases]]\nname='db1'\nhost='a'\nport=0\nuser='u'\ndatabase='d'\n\
         [[clouds]]\nname='aws'\n[[clouds.databases]]\nname='db1'\nhost='a'\nuser='u'\ndatabase='d'\n",
    )?;
    let output = Command::new(env!("CARGO_BIN_EXE_pgfleet"))
        .args(["--config", bad.to_str().unwrap_or_default(), "check-config"])
        .output()?;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("clouds[0].databases[0].port: must be 1-65535"),
        "{stderr}"
    );
    assert!(
        stderr.contains("clouds[1].name: duplicate cloud name \"aws\""),
        "{stderr}"
    );

    let good = dir.path().join("good.json");
    std::fs::write(
        &good,
        r#"{"primary": {"cloudName": "aws", "db_configs": [{"name": "db1", "host": "h", "port": 5432,
            "user": "u", "password": "${PGFLEET_TEST_SECRET}", "database": "d", "schemas": ["public"], "defaultSchema": "public"}]},
            "history": {"host": "h", "port": 5432, "user": "u", "password": "${PGFLEET_TEST_SECRET}", "database": "d"}}"#,
    )?;
    let output = Command::new(env!("CARGO_BIN_EXE_pgfleet"))
        .env("PGFLEET_TEST_SECRET", "correct-horse-battery")
        .args(["--config", good.to_str().unwrap_or_default(), "check-config"])
        .output()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stdout.contains("<redacted>"), "{stdout}");
    assert!(!stdout.contains("correct-horse-battery") && !stderr.contains("correct-horse-battery"));
    assert!(stdout.contains("name = \"aws\""), "{stdout}");
    Ok(())
}
