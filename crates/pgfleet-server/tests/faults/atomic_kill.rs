//! SIGKILL of the `pgfleet` binary in the middle of an atomic (two-phase)
//! write, at the test-only pause points of `PGFLEET_TEST_FAILPOINT`
//! (docs/ATOMIC.md), then a restart: killed after every target prepared and
//! before the decision, every target rolls back; killed after the commit
//! decision with one target unreachable (fault proxy cut), the reachable
//! one commits at restart, the other stays in doubt (GetExecution and the
//! gauge show it) and commits once it is reachable again.

use std::time::Duration;

use pgfleet_engine::identity::Role;
use pgfleet_proto::pgfleet::v1 as pb;
use pgfleet_proto::pgfleet::v1::history_service_client::HistoryServiceClient;
use pgfleet_proto::pgfleet::v1::query_service_client::QueryServiceClient;
use pgfleet_testkit::{FaultProxy, PgCluster, TestDatabase};
use sqlx::Connection as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tonic::transport::Channel;

use crate::support::{Fleet, ServerProcess, bearer, login, send_signal, spawn_server_binary_with};

/// Short leases (a dead server's records are INTERRUPTED within a second)
/// and frequent recovery passes.
const SETTINGS: &str = "[audit]\nheartbeat_interval = '200ms'\nwriter_lease = '1s'\n\
                        [atomic]\nrecovery_interval = '200ms'\n";

async fn prepared_cluster() -> anyhow::Result<PgCluster> {
    PgCluster::builder()
        .setting("max_prepared_transactions", 32)
        .start()
        .await
}

async fn accounts(database: &TestDatabase) -> anyhow::Result<()> {
    let mut connection = database.connect().await?;
    sqlx::raw_sql("CREATE TABLE accounts (id int PRIMARY KEY, balance int NOT NULL); INSERT INTO accounts VALUES (1, 100)")
        .execute(&mut connection)
        .await?;
    connection.close().await?;
    Ok(())
}

async fn balance(database: &TestDatabase) -> anyhow::Result<i32> {
    let mut connection = database.connect().await?;
    let balance = sqlx::query_scalar("SELECT balance FROM accounts WHERE id = 1")
        .fetch_one(&mut connection)
        .await?;
    connection.close().await?;
    Ok(balance)
}

async fn gids(database: &TestDatabase) -> anyhow::Result<Vec<String>> {
    let mut connection = database.connect().await?;
    let gids = sqlx::query_scalar(
        "SELECT gid FROM pg_prepared_xacts WHERE database = current_database() ORDER BY gid",
    )
    .fetch_all(&mut connection)
    .await?;
    connection.close().await?;
    Ok(gids)
}

/// Polls `check` every 100 ms until it holds, for at most 60 s.
async fn eventually<F, Fut>(what: &str, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    for _ in 0..600 {
        if check().await? {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("not within 60 s: {what}")
}

struct Binary {
    process: ServerProcess,
    channel: Channel,
    _dir: tempfile::TempDir,
}

async fn start(fleet: &Fleet, extra: &str, failpoint: Option<&str>) -> anyhow::Result<Binary> {
    let port = pgfleet_testkit::free_port()?;
    let dir = tempfile::tempdir()?;
    let config_path = dir.path().join("pgfleet.toml");
    let text = fleet.config_toml(extra).replace(
        "listen_addr = '127.0.0.1:0'",
        &format!("listen_addr = '127.0.0.1:{port}'"),
    );
    std::fs::write(&config_path, text)?;
    let env: Vec<(&str, &str)> = failpoint
        .map(|name| (pgfleet_engine::query::atomic::FAILPOINT_ENV, name))
        .into_iter()
        .collect();
    let (process, channel) = spawn_server_binary_with(&config_path, port, None, &env).await?;
    Ok(Binary {
        process,
        channel,
        _dir: dir,
    })
}

async fn kill(binary: &mut Binary) -> anyhow::Result<()> {
    send_signal(&binary.process, "KILL").await?;
    tokio::time::timeout(Duration::from_secs(30), binary.process.wait())
        .await
        .map_err(|_| anyhow::anyhow!("pgfleet did not exit"))??;
    Ok(())
}

fn atomic_update() -> pb::ExecuteRequest {
    pb::ExecuteRequest {
        query: "UPDATE accounts SET balance = balance - 30 WHERE id = 1".to_owned(),
        database: "app".to_owned(),
        commit_mode: pb::CommitMode::Atomic.into(),
        ..Default::default()
    }
}

/// The one atomic execution's id, from the history store.
async fn execution_id(history: &TestDatabase) -> anyhow::Result<Option<uuid::Uuid>> {
    let mut connection = history.connect().await?;
    let id = sqlx::query_scalar("SELECT id FROM pgfleet.executions WHERE kind = 'QUERY'")
        .fetch_optional(&mut connection)
        .await?;
    connection.close().await?;
    Ok(id)
}

async fn phases(
    channel: &Channel,
    token: &str,
    id: uuid::Uuid,
) -> anyhow::Result<Vec<(String, pb::AtomicPhase)>> {
    let record = HistoryServiceClient::new(channel.clone())
        .get_execution(bearer(pb::GetExecutionRequest { id: id.to_string() }, token))
        .await?
        .into_inner()
        .execution
        .unwrap_or_default();
    let mut phases: Vec<(String, pb::AtomicPhase)> = record
        .outcomes
        .iter()
        .map(|o| (o.target.clone().unwrap_or_default().cloud, o.atomic_phase()))
        .collect();
    phases.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(phases)
}

/// `/metrics` of a server, as text.
async fn scrape(port: u16) -> anyhow::Result<String> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .await?;
    let mut text = String::new();
    stream.read_to_string(&mut text).await?;
    Ok(text)
}

/// The value of an unlabelled gauge in a scrape.
fn gauge(scrape: &str, name: &str) -> Option<f64> {
    scrape
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_after_every_target_prepared_and_before_the_decision_every_target_rolls_back_at_restart()
-> anyhow::Result<()> {
    let first = prepared_cluster().await?;
    let second = prepared_cluster().await?;
    let aws = TestDatabase::create_on(&first.admin_url(), "akp_aws_app").await?;
    let gcp = TestDatabase::create_on(&second.admin_url(), "akp_gcp_app").await?;
    accounts(&aws).await?;
    accounts(&gcp).await?;
    let history = TestDatabase::create("akp_history").await?;
    let fleet = Fleet::with_databases(history, vec![("aws", "app", aws), ("gcp", "app", gcp)]).await?;

    let mut binary = start(&fleet, SETTINGS, Some("atomic-after-prepare")).await?;
    let password = fleet.create_user("akp-user", Role::User).await?;
    let token = login(&binary.channel, "akp-user", &password).await?;
    let call = tokio::spawn({
        let channel = binary.channel.clone();
        let token = token.clone();
        async move {
            QueryServiceClient::new(channel)
                .execute(bearer(atomic_update(), &token))
                .await
        }
    });
    eventually("both targets prepared", || async {
        Ok(gids(fleet.database("aws", "app")).await?.len() == 1
            && gids(fleet.database("gcp", "app")).await?.len() == 1)
    })
    .await?;
    kill(&mut binary).await?;
    assert!(call.await?.is_err(), "the call died with the server");
    // Still prepared, holding their changes back, until a server recovers them.
    for cloud in ["aws", "gcp"] {
        assert_eq!(gids(fleet.database(cloud, "app")).await?.len(), 1, "{cloud}");
    }

    let restarted = start(&fleet, SETTINGS, None).await?;
    eventually("every prepared transaction finished", || async {
        Ok(gids(fleet.database("aws", "app")).await?.is_empty()
            && gids(fleet.database("gcp", "app")).await?.is_empty())
    })
    .await?;
    for cloud in ["aws", "gcp"] {
        assert_eq!(
            balance(fleet.database(cloud, "app")).await?,
            100,
            "{cloud}: rolled back"
        );
    }
    let id = execution_id(&fleet.history)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no record"))?;
    let mut store = fleet.history.connect().await?;
    let decided: (String, String) =
        sqlx::query_as("SELECT decision, decided_by FROM pgfleet.atomic_decisions WHERE execution_id = $1")
            .bind(id)
            .fetch_one(&mut store)
            .await?;
    assert_eq!(decided, ("ABORT".to_owned(), "recovery".to_owned()));
    let status: String = sqlx::query_scalar("SELECT status FROM pgfleet.executions WHERE id = $1")
        .bind(id)
        .fetch_one(&mut store)
        .await?;
    assert_eq!(status, "INTERRUPTED");
    assert_eq!(
        phases(&restarted.channel, &token, id).await?,
        [
            ("aws".to_owned(), pb::AtomicPhase::RolledBack),
            ("gcp".to_owned(), pb::AtomicPhase::RolledBack)
        ]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_after_the_commit_decision_with_one_target_unreachable_it_commits_when_the_target_returns()
-> anyhow::Result<()> {
    let first = prepared_cluster().await?;
    let second = prepared_cluster().await?;
    let aws = TestDatabase::create_on(&first.admin_url(), "akd_aws_app").await?;
    let gcp = TestDatabase::create_on(&second.admin_url(), "akd_gcp_app").await?;
    accounts(&aws).await?;
    accounts(&gcp).await?;
    gcp.grant_reader().await?;
    // gcp is reached only through the proxy.
    let proxy = FaultProxy::start(format!("{}:{}", gcp.host(), gcp.port())).await?;
    let gcp_toml = format!(
        "[[clouds]]\nname = 'gcp'\n[[clouds.databases]]\nname = 'app'\nhost = '127.0.0.1'\nport = {}\n\
         user = '{}'\ndatabase = '{}'\nsslmode = 'disable'\nschemas = ['public']\n{}",
        proxy.port(),
        gcp.user(),
        gcp.name(),
        crate::support::reader_toml()
    );
    let history = TestDatabase::create("akd_history").await?;
    let mut fleet = Fleet::with_databases(history, vec![("aws", "app", aws)]).await?;
    let metrics_port = pgfleet_testkit::free_port()?;
    fleet.server_toml = format!("metrics_addr = '127.0.0.1:{metrics_port}'\n");
    let extra = format!("{gcp_toml}{SETTINGS}");

    let mut binary = start(&fleet, &extra, Some("atomic-after-decision")).await?;
    let password = fleet.create_user("akd-user", Role::User).await?;
    let token = login(&binary.channel, "akd-user", &password).await?;
    let call = tokio::spawn({
        let channel = binary.channel.clone();
        let token = token.clone();
        async move {
            QueryServiceClient::new(channel)
                .execute(bearer(atomic_update(), &token))
                .await
        }
    });
    let history = &fleet.history;
    eventually("the commit decision stored", || async {
        let Some(id) = execution_id(history).await? else {
            return Ok(false);
        };
        let mut store = history.connect().await?;
        let decided: Option<String> =
            sqlx::query_scalar("SELECT decision FROM pgfleet.atomic_decisions WHERE execution_id = $1")
                .bind(id)
                .fetch_optional(&mut store)
                .await?;
        Ok(decided.as_deref() == Some("COMMIT"))
    })
    .await?;
    proxy.cut();
    kill(&mut binary).await?;
    assert!(call.await?.is_err(), "the call died with the server");

    let restarted = start(&fleet, &extra, None).await?;
    let aws = fleet.database("aws", "app");
    eventually("aws committed by recovery", || async {
        Ok(gids(aws).await?.is_empty() && balance(aws).await? == 70)
    })
    .await?;
    // gcp (checked directly, not through the cut proxy) still holds it.
    assert_eq!(gids(&gcp).await?.len(), 1);
    assert_eq!(balance(&gcp).await?, 100);
    let id = execution_id(&fleet.history)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no record"))?;
    assert_eq!(
        phases(&restarted.channel, &token, id).await?,
        [
            ("aws".to_owned(), pb::AtomicPhase::Committed),
            ("gcp".to_owned(), pb::AtomicPhase::InDoubt)
        ]
    );
    eventually("the gauge counts the in-doubt transaction", || async {
        let text = scrape(metrics_port).await?;
        Ok(gauge(&text, "pgfleet_atomic_in_doubt_transactions") == Some(1.0)
            && gauge(&text, "pgfleet_atomic_in_doubt_oldest_seconds").is_some_and(|age| age > 0.0))
    })
    .await?;

    proxy.pass();
    eventually("gcp committed once reachable", || async {
        Ok(gids(&gcp).await?.is_empty() && balance(&gcp).await? == 70)
    })
    .await?;
    assert_eq!(
        phases(&restarted.channel, &token, id).await?,
        [
            ("aws".to_owned(), pb::AtomicPhase::Committed),
            ("gcp".to_owned(), pb::AtomicPhase::Committed)
        ]
    );
    eventually("the gauge is back to zero", || async {
        Ok(gauge(
            &scrape(metrics_port).await?,
            "pgfleet_atomic_in_doubt_transactions",
        ) == Some(0.0))
    })
    .await?;
    Ok(())
}
