//! SIGHUP reloads the database list of a running `pgfleet serve`: a cloud
//! added to the file is served without a restart, a removed one refuses new
//! requests while a query already running on it finishes, and a file that
//! does not load changes nothing.

use std::time::Duration;

use pgfleet_engine::identity::Role;
use pgfleet_proto::pgfleet::v1 as pb;
use pgfleet_proto::pgfleet::v1::fleet_service_client::FleetServiceClient;
use pgfleet_proto::pgfleet::v1::query_service_client::QueryServiceClient;
use pgfleet_testkit::TestDatabase;
use tonic::Code;
use tonic::transport::Channel;

use crate::support::{Fleet, bearer, child_output, login, send_signal, spawn_server_binary};

fn on(cloud: &str, database: &str, query: &str) -> pb::ExecuteRequest {
    pb::ExecuteRequest {
        query: query.to_owned(),
        database: database.to_owned(),
        scope: Some(pb::execute_request::Scope::Cloud(cloud.to_owned())),
        ..Default::default()
    }
}

/// The first cell of the first row of a one-target Execute, as text.
async fn first_cell(
    channel: &Channel,
    token: &str,
    request: pb::ExecuteRequest,
) -> Result<String, tonic::Status> {
    let response = QueryServiceClient::new(channel.clone())
        .execute(bearer(request, token))
        .await?
        .into_inner();
    let result = response.results.first().cloned().unwrap_or_default();
    if let Some(error) = result.error {
        return Err(tonic::Status::internal(format!("{error:?}")));
    }
    let cell = result
        .statements
        .first()
        .and_then(|statement| statement.rows.first())
        .and_then(|row| row.cells.first())
        .and_then(|cell| cell.kind.clone());
    Ok(match cell {
        Some(pb::cell::Kind::TextValue(text)) => text,
        Some(pb::cell::Kind::IntValue(value)) => value.to_string(),
        other => format!("{other:?}"),
    })
}

async fn cloud_names(channel: &Channel, token: &str) -> anyhow::Result<Vec<String>> {
    let configuration = FleetServiceClient::new(channel.clone())
        .get_configuration(bearer(pb::GetConfigurationRequest::default(), token))
        .await?
        .into_inner();
    Ok(configuration.clouds.into_iter().map(|cloud| cloud.name).collect())
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_adds_and_removes_clouds_without_a_restart() -> anyhow::Result<()> {
    let fleet = Fleet::create().await?;
    let azure = TestDatabase::create("reload_azure_app").await?;
    let port = pgfleet_testkit::free_port()?;
    let dir = tempfile::tempdir()?;
    let config_path = dir.path().join("pgfleet.toml");
    let listen = |text: String| {
        text.replace(
            "listen_addr = '127.0.0.1:0'",
            &format!("listen_addr = '127.0.0.1:{port}'"),
        )
    };
    let original = listen(fleet.config_toml(""));
    std::fs::write(&config_path, &original)?;
    let (mut server, channel) = spawn_server_binary(&config_path, port).await?;
    let password = fleet.create_user("reload-master", Role::Master).await?;
    let token = login(&channel, "reload-master", &password).await?;
    assert_eq!(cloud_names(&channel, &token).await?, ["aws", "gcp"]);

    // A query on gcp that is still running when gcp is removed.
    let running = tokio::spawn({
        let channel = channel.clone();
        let token = token.clone();
        async move { first_cell(&channel, &token, on("gcp", "app", "SELECT 42 FROM pg_sleep(3)")).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;

    // gcp is the last cloud of the file: drop it, add azure.
    let without_gcp = original
        .find("[[clouds]]\nname = 'gcp'")
        .map(|at| original[..at].to_owned())
        .ok_or_else(|| anyhow::anyhow!("no gcp cloud in the config"))?;
    let with_azure = format!(
        "{without_gcp}[[clouds]]\nname = 'azure'\n[[clouds.databases]]\nname = 'app'\nhost = '{}'\nport = {}\n\
         user = '{}'\ndatabase = '{}'\nsslmode = 'disable'\nschemas = ['public']\n",
        azure.host(),
        azure.port(),
        azure.user(),
        azure.name()
    );
    std::fs::write(&config_path, &with_azure)?;
    send_signal(&server, "HUP").await?;
    pgfleet_testkit::wait_until(Duration::from_secs(20), Duration::from_millis(100), async || {
        cloud_names(&channel, &token)
            .await
            .is_ok_and(|names| names == ["aws", "azure"])
    })
    .await?;

    assert_eq!(
        first_cell(&channel, &token, on("azure", "app", "SELECT current_database()")).await?,
        azure.name()
    );
    let removed = first_cell(&channel, &token, on("gcp", "app", "SELECT 1"))
        .await
        .err();
    assert_eq!(
        removed.as_ref().map(tonic::Status::code),
        Some(Code::NotFound),
        "{removed:?}"
    );
    assert_eq!(
        running.await??,
        "42",
        "the query running on the removed cloud finished"
    );

    // A file that does not load changes nothing.
    std::fs::write(&config_path, "[[clouds]\nname = ")?;
    send_signal(&server, "HUP").await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(cloud_names(&channel, &token).await?, ["aws", "azure"]);
    assert_eq!(
        first_cell(&channel, &token, on("azure", "app", "SELECT 7")).await?,
        "7"
    );

    send_signal(&server, "TERM").await?;
    let status = tokio::time::timeout(Duration::from_secs(20), server.wait()).await??;
    assert!(status.success(), "pgfleet serve exited with {status}");
    let output = child_output(&mut server).await?;
    assert!(output.contains("database list reloaded"), "{output}");
    assert!(output.contains("added=azure/app"), "{output}");
    assert!(
        output.contains("the configuration does not load; the database list is unchanged"),
        "{output}"
    );
    Ok(())
}

/// Kubernetes rotates a mounted secret by swapping the file; pgfleet reads
/// `password_file` on every load, so a SIGHUP after the rotation is all it
/// takes. A `.env` file is read again too. The cluster checks passwords
/// (scram), so a stale one is really refused.
#[tokio::test(flavor = "multi_thread")]
async fn sighup_picks_up_a_password_rotated_in_a_mounted_file_and_the_env_file() -> anyhow::Result<()> {
    let fleet = Fleet::create().await?;
    let cluster = pgfleet_testkit::PgCluster::builder()
        .password_auth()
        .start()
        .await?;
    let mut admin = cluster.connect().await?;
    for statement in [
        "CREATE ROLE rotating LOGIN PASSWORD 'first-password'",
        "CREATE DATABASE rotating OWNER rotating",
    ] {
        sqlx::raw_sql(statement).execute(&mut admin).await?;
    }
    let port = pgfleet_testkit::free_port()?;
    let dir = tempfile::tempdir()?;
    let secrets = dir.path().join("secrets");
    std::fs::create_dir(&secrets)?;
    std::fs::write(secrets.join("password"), "first-password\n")?;
    // `${SECRETS}` comes from the .env file in the server's working directory.
    std::fs::write(
        dir.path().join(".env"),
        format!("SECRETS={}\n", secrets.display()),
    )?;
    let config_path = dir.path().join("pgfleet.toml");
    let config = fleet.config_toml(&format!(
        "[[clouds]]\nname = 'vault'\n[[clouds.databases]]\nname = 'app'\nhost = '127.0.0.1'\nport = {}\n\
         user = 'rotating'\npassword_file = '${{SECRETS}}/password'\ndatabase = 'rotating'\nsslmode = 'disable'\n",
        cluster.port()
    ));
    std::fs::write(
        &config_path,
        config.replace(
            "listen_addr = '127.0.0.1:0'",
            &format!("listen_addr = '127.0.0.1:{port}'"),
        ),
    )?;
    let (mut server, channel) =
        crate::support::spawn_server_binary_in(&config_path, port, Some(dir.path())).await?;
    let password = fleet.create_user("rotate-master", Role::Master).await?;
    let token = login(&channel, "rotate-master", &password).await?;
    let whoami = on("vault", "app", "SELECT current_user");
    assert_eq!(first_cell(&channel, &token, whoami.clone()).await?, "rotating");

    // The password changes on the server and its pooled sessions end: the
    // old password no longer opens one.
    let rotate = async |admin: &mut sqlx::PgConnection, password: &str| {
        // A test constant, not input.
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "ALTER ROLE rotating PASSWORD '{password}'; \
             SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'rotating'"
        )))
        .execute(admin)
        .await
    };
    // SIGHUP, then the target answers again (with the password of the file).
    let reloaded_and_connected = async |server: &crate::support::ServerProcess| {
        send_signal(server, "HUP").await?;
        pgfleet_testkit::wait_until(Duration::from_secs(20), Duration::from_millis(100), async || {
            first_cell(&channel, &token, whoami.clone())
                .await
                .is_ok_and(|user| user == "rotating")
        })
        .await
    };
    rotate(&mut admin, "second-password").await?;
    let stale = first_cell(&channel, &token, whoami.clone()).await;
    assert!(stale.is_err(), "the old password still works: {stale:?}");

    // The mounted file is swapped (written aside, renamed over), then SIGHUP.
    std::fs::write(secrets.join("password.new"), "second-password\n")?;
    std::fs::rename(secrets.join("password.new"), secrets.join("password"))?;
    reloaded_and_connected(&server).await?;

    // The .env file now points at another directory: read again on SIGHUP.
    let rotated = dir.path().join("rotated");
    std::fs::create_dir(&rotated)?;
    std::fs::write(rotated.join("password"), "third-password")?;
    std::fs::write(
        dir.path().join(".env"),
        format!("SECRETS={}\n", rotated.display()),
    )?;
    rotate(&mut admin, "third-password").await?;
    reloaded_and_connected(&server).await?;

    send_signal(&server, "TERM").await?;
    let status = tokio::time::timeout(Duration::from_secs(20), server.wait()).await??;
    assert!(status.success(), "pgfleet serve exited with {status}");
    let output = child_output(&mut server).await?;
    assert!(output.contains("changed=vault/app"), "{output}");
    for secret in ["first-password", "second-password", "third-password"] {
        assert!(!output.contains(secret), "a password reached the log");
    }
    Ok(())
}

/// The history store's password rotates too: after the role's password
/// changed and its sessions ended, logins fail (the history store is
/// unreachable with the old one) until the rotated `password_file` is
/// picked up by SIGHUP; then they work again, without a restart.
#[tokio::test(flavor = "multi_thread")]
async fn sighup_rotates_the_history_store_password() -> anyhow::Result<()> {
    let cluster = pgfleet_testkit::PgCluster::builder()
        .password_auth()
        .start()
        .await?;
    let history = TestDatabase::create_on(&cluster.admin_url(), "hist_rotate").await?;
    let mut admin = cluster.connect().await?;
    for statement in [
        "CREATE ROLE historian LOGIN PASSWORD 'history-first'".to_owned(),
        format!("ALTER DATABASE {} OWNER TO historian", history.name()),
    ] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
            .execute(&mut admin)
            .await?;
    }
    let app = TestDatabase::create("hist_rotate_app").await?;
    let fleet = Fleet::with_databases(history, vec![("aws", "app", app)]).await?;

    let port = pgfleet_testkit::free_port()?;
    let dir = tempfile::tempdir()?;
    let secret = dir.path().join("history-password");
    std::fs::write(&secret, "history-first\n")?;
    let config_path = dir.path().join("pgfleet.toml");
    let history_user = format!(
        "[history]\nhost = '{}'\nport = {}\nuser = '{}'\n",
        fleet.history.host(),
        fleet.history.port(),
        fleet.history.user()
    );
    let config = fleet.config_toml("");
    anyhow::ensure!(
        config.contains(&history_user),
        "unexpected [history] table:\n{config}"
    );
    let config = config
        .replace(
            &history_user,
            &format!(
                "[history]\nhost = '{}'\nport = {}\nuser = 'historian'\npassword_file = '{}'\n",
                fleet.history.host(),
                fleet.history.port(),
                secret.display()
            ),
        )
        .replace(
            "listen_addr = '127.0.0.1:0'",
            &format!("listen_addr = '127.0.0.1:{port}'"),
        );
    std::fs::write(&config_path, config)?;
    let (mut server, channel) = spawn_server_binary(&config_path, port).await?;
    // The server migrated the store as historian; users go in as postgres.
    let password = fleet.create_user("history-rotor", Role::Master).await?;
    login(&channel, "history-rotor", &password).await?;

    sqlx::raw_sql(
        "ALTER ROLE historian PASSWORD 'history-second'; \
         SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'historian'",
    )
    .execute(&mut admin)
    .await?;
    let stale = login(&channel, "history-rotor", &password).await;
    assert_eq!(
        stale.as_ref().map_err(tonic::Status::code).err(),
        Some(Code::Unavailable),
        "{stale:?}"
    );

    std::fs::write(&secret, "history-second\n")?;
    send_signal(&server, "HUP").await?;
    pgfleet_testkit::wait_until(Duration::from_secs(20), Duration::from_millis(100), async || {
        login(&channel, "history-rotor", &password).await.is_ok()
    })
    .await?;

    send_signal(&server, "TERM").await?;
    let status = tokio::time::timeout(Duration::from_secs(20), server.wait()).await??;
    assert!(status.success(), "pgfleet serve exited with {status}");
    let output = child_output(&mut server).await?;
    assert!(output.contains("history store password changed"), "{output}");
    assert!(
        !output.contains("history-first") && !output.contains("history-second"),
        "a password reached the log"
    );
    Ok(())
}
