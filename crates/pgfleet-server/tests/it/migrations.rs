//! MigrationService through the real server, on real databases: the `app`
//! database on two clouds of the shared test server plus an `initdb` cluster
//! ("onprem", behind a fault proxy), its set in a `[[migrations]]` directory.
//! Also grpcurl and `pgfleet migrations …` end to end.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use pgfleet_proto::pgfleet::v1 as pb;
use pgfleet_proto::pgfleet::v1::apply_migrations_response::Event;
use pgfleet_proto::pgfleet::v1::migration_service_client::MigrationServiceClient;
use pgfleet_testkit::{FaultProxy, PgCluster, TestDatabase, wait_until};
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::support::{Session, bearer, target};

/// Five migrations, then a sixth.
const FILES: &[(&str, &str)] = &[
    (
        "0001_accounts.sql",
        "CREATE TABLE accounts (\n    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,\n    email text NOT NULL\n);\n",
    ),
    ("0001_accounts.down.sql", "DROP TABLE accounts;\n"),
    (
        "0002_orders.sql",
        "CREATE TABLE orders (\n    id bigint PRIMARY KEY,\n    account_id bigint NOT NULL REFERENCES accounts (id),\n    total numeric(12, 2) NOT NULL DEFAULT 0\n);\n",
    ),
    (
        "0003_accounts_email_index.sql",
        "-- pgfleet:no-transaction\nCREATE INDEX CONCURRENTLY accounts_email ON accounts (email);\n",
    ),
    (
        "0004_big_orders.sql",
        "CREATE VIEW big_orders AS SELECT * FROM orders WHERE total > 100;\n",
    ),
    (
        "0005_account_total.sql",
        "CREATE FUNCTION account_total(a bigint) RETURNS numeric LANGUAGE sql STABLE\nAS $$ SELECT coalesce(sum(total), 0) FROM orders WHERE account_id = a $$;\n",
    ),
    (
        "0005_account_total.down.sql",
        "DROP FUNCTION account_total(bigint);\n",
    ),
];

const SIXTH: &[(&str, &str)] = &[
    (
        "0006_email_check.sql",
        "ALTER TABLE accounts ADD COLUMN nickname text;\nALTER TABLE accounts ADD CONSTRAINT accounts_email_has_at CHECK (email LIKE '%@%');\n",
    ),
    (
        "0006_email_check.down.sql",
        "ALTER TABLE accounts DROP CONSTRAINT accounts_email_has_at;\nALTER TABLE accounts DROP COLUMN nickname;\n",
    ),
];

fn write_files(dir: &Path, files: &[(&str, &str)]) -> anyhow::Result<()> {
    for (name, sql) in files {
        std::fs::write(dir.join(name), sql)?;
    }
    Ok(())
}

/// The third target: a database in its own `initdb` cluster, reached through
/// a fault proxy, as cloud "onprem".
struct Onprem {
    _cluster: PgCluster,
    database: TestDatabase,
    proxy: Arc<FaultProxy>,
}

impl Onprem {
    async fn start() -> anyhow::Result<Self> {
        let cluster = PgCluster::start().await?;
        let database = TestDatabase::create_on(&cluster.admin_url(), "mig_onprem").await?;
        let proxy = Arc::new(FaultProxy::start(format!("{}:{}", database.host(), database.port())).await?);
        Ok(Self {
            _cluster: cluster,
            database,
            proxy,
        })
    }

    fn toml(&self) -> String {
        format!(
            "[[clouds]]\nname = 'onprem'\n[[clouds.databases]]\nname = 'app'\nhost = '127.0.0.1'\nport = {}\n\
             user = '{}'\ndatabase = '{}'\nsslmode = 'disable'\nschemas = ['public']\n\
             pool = {{ acquire_timeout = '2s' }}\n",
            self.proxy.port(),
            self.database.user(),
            self.database.name(),
        )
    }

    async fn sql(&self, sql: &str) -> anyhow::Result<()> {
        let mut connection = self.database.connect().await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
            .execute(&mut connection)
            .await?;
        Ok(())
    }
}

/// Extra configuration: the onprem cloud, short connection retries, and the
/// migrations directory of `app`.
fn extra(onprem: Option<&Onprem>, dir: &Path) -> String {
    format!(
        "{}[retry]\nmax_elapsed = '1s'\n[[migrations]]\ndatabase = 'app'\ndir = '{}'\n",
        onprem.map(Onprem::toml).unwrap_or_default(),
        dir.display()
    )
}

fn client(channel: &Channel) -> MigrationServiceClient<Channel> {
    MigrationServiceClient::new(channel.clone())
}

fn scope(database: &str) -> Option<pb::MigrationScope> {
    Some(pb::MigrationScope {
        database: database.to_owned(),
        selection: None,
    })
}

fn apply_request(policy: pb::RolloutPolicy) -> pb::ApplyMigrationsRequest {
    pb::ApplyMigrationsRequest {
        scope: scope("app"),
        policy: policy.into(),
        ..Default::default()
    }
}

/// Every event of an apply, in order.
async fn apply(
    channel: &Channel,
    token: &str,
    request: pb::ApplyMigrationsRequest,
) -> Result<Vec<Event>, Status> {
    let mut stream = client(channel)
        .apply_migrations(bearer(request, token))
        .await?
        .into_inner();
    let mut events = Vec::new();
    while let Some(message) = stream.message().await? {
        events.extend(message.event);
    }
    Ok(events)
}

fn finished(events: &[Event]) -> Vec<pb::TargetFinished> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::TargetFinished(f) => Some(f.clone()),
            _ => None,
        })
        .collect()
}

fn finished_of(events: &[Event], cloud: &str) -> anyhow::Result<pb::TargetFinished> {
    finished(events)
        .into_iter()
        .find(|f| f.target.as_ref().is_some_and(|t| t.cloud == cloud))
        .with_context(|| format!("no TargetFinished for {cloud}: {events:?}"))
}

fn rollout_finished(events: &[Event]) -> anyhow::Result<pb::RolloutFinished> {
    match events.last() {
        Some(Event::RolloutFinished(done)) => Ok(done.clone()),
        other => bail!("the last event should be RolloutFinished: {other:?}"),
    }
}

fn execution_id(events: &[Event]) -> anyhow::Result<String> {
    match events.first() {
        Some(Event::RolloutStarted(started)) => Ok(started.execution_id.clone()),
        other => bail!("the first event should be RolloutStarted: {other:?}"),
    }
}

async fn status(s: &Session, token: &str) -> Result<pb::GetMigrationStatusResponse, Status> {
    Ok(client(&s.channel)
        .get_migration_status(bearer(
            pb::GetMigrationStatusRequest { scope: scope("app") },
            token,
        ))
        .await?
        .into_inner())
}

fn target_status<'a>(
    response: &'a pb::GetMigrationStatusResponse,
    cloud: &str,
) -> anyhow::Result<&'a pb::TargetMigrationStatus> {
    response
        .targets
        .iter()
        .find(|t| t.target.as_ref().is_some_and(|t| t.cloud == cloud))
        .with_context(|| format!("no status for {cloud}"))
}

fn state_of(target: &pb::TargetMigrationStatus, version: i64) -> Option<pb::MigrationState> {
    target
        .migrations
        .iter()
        .find(|m| m.version == version)
        .and_then(|m| pb::MigrationState::try_from(m.state).ok())
}

/// Runs one query on the history store; the first column as text.
async fn history_scalar(s: &Session, sql: &str, id: &str) -> anyhow::Result<Option<String>> {
    let mut connection = s.fleet.history.connect().await?;
    Ok(sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .bind(uuid::Uuid::parse_str(id)?)
        .fetch_optional(&mut connection)
        .await?)
}

async fn has_column(database: &TestDatabase, column: &str) -> anyhow::Result<bool> {
    let mut connection = database.connect().await?;
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM information_schema.columns \
         WHERE table_schema = 'public' AND table_name = 'accounts' AND column_name = $1)",
    )
    .bind(column)
    .fetch_one(&mut connection)
    .await?)
}

#[tokio::test]
async fn a_fleet_rollout_through_the_server() -> anyhow::Result<()> {
    pgfleet_testkit::require_services().await?;
    let dir = tempfile::tempdir()?;
    write_files(dir.path(), FILES)?;
    let onprem = Onprem::start().await?;
    let s = crate::support::session(&extra(Some(&onprem), dir.path())).await?;
    let aws = crate::support::fleet_database(&s, "aws", "app");

    // A fresh fleet: everything pending everywhere, nothing created by reading.
    let fresh = status(&s, &s.reader).await?;
    assert_eq!(fresh.source, pb::MigrationSetSource::Directory as i32);
    assert_eq!((fresh.newest_in_set, fresh.newest_applied), (5, 0));
    assert_eq!(fresh.behind.len(), 3, "{fresh:?}");
    assert!(!fresh.up_to_date);
    for t in &fresh.targets {
        assert!(t.error.is_none() && !t.tracked, "{t:?}");
        assert_eq!(t.pending, [1, 2, 3, 4, 5]);
    }
    let plan = client(&s.channel)
        .plan_migrations(bearer(
            pb::PlanMigrationsRequest {
                scope: scope("app"),
                up_to_version: 0,
            },
            &s.reader,
        ))
        .await?
        .into_inner();
    for t in &plan.targets {
        let versions: Vec<i64> = t.migrations.iter().map(|m| m.version).collect();
        assert_eq!(versions, [1, 2, 3, 4, 5], "{t:?}");
    }

    // READER and USER may look, not apply.
    for token in [&s.reader, &s.user] {
        let refused = apply(&s.channel, token, apply_request(pb::RolloutPolicy::AllAtOnce)).await;
        assert_eq!(refused.err().map(|e| e.code()), Some(Code::PermissionDenied));
    }

    // Five migrations everywhere, on record.
    let events = apply(&s.channel, &s.master, apply_request(pb::RolloutPolicy::AllAtOnce)).await?;
    assert!(rollout_finished(&events)?.success, "{events:?}");
    for cloud in ["aws", "gcp", "onprem"] {
        assert_eq!(finished_of(&events, cloud)?.applied, [1, 2, 3, 4, 5], "{cloud}");
    }
    let id = execution_id(&events)?;
    let recorded = crate::support::scalar(
        &s,
        "gcp",
        "app",
        "SELECT string_agg(DISTINCT execution_id::text, ',') FROM pgfleet.schema_migrations",
    )
    .await?;
    assert_eq!(
        recorded.as_deref(),
        Some(id.as_str()),
        "the tracking rows name the record"
    );
    let record = history_scalar(
        &s,
        "SELECT kind || ' ' || status FROM pgfleet.executions WHERE id = $1",
        &id,
    )
    .await?;
    assert_eq!(record.as_deref(), Some("MIGRATION_APPLY SUCCEEDED"));
    let done = status(&s, &s.reader).await?;
    assert!(done.up_to_date, "{done:?}");
    assert_eq!(done.newest_applied, 5);

    // A sixth migration that fails on the canary cloud only (its data breaks
    // the new constraint): the rollout stops, nothing of 6 stays there.
    crate::support::run_sql(
        &s,
        "aws",
        "app",
        "INSERT INTO accounts (email) VALUES ('no at sign')",
    )
    .await?;
    write_files(dir.path(), SIXTH)?;
    let plan = client(&s.channel)
        .plan_migrations(bearer(
            pb::PlanMigrationsRequest {
                scope: scope("app"),
                up_to_version: 6,
            },
            &s.reader,
        ))
        .await?
        .into_inner();
    let planned = &plan.targets[0].migrations;
    ensure!(planned.len() == 1 && planned[0].version == 6, "{plan:?}");
    assert!(
        planned[0].statements.iter().all(|st| !st.findings.is_empty()),
        "ALTER is dangerous: {planned:?}"
    );
    let events = apply(
        &s.channel,
        &s.master,
        apply_request(pb::RolloutPolicy::OneCloudThenRest),
    )
    .await?;
    assert!(!rollout_finished(&events)?.success);
    let aws_done = finished_of(&events, "aws")?;
    let error = aws_done.error.context("aws failed")?;
    assert_eq!(error.code, pb::ErrorCode::Aborted as i32);
    assert_eq!(error.postgres.map(|p| p.sqlstate).as_deref(), Some("23514"));
    let failed_event = events
        .iter()
        .find_map(|e| match e {
            Event::MigrationFailed(f) => Some(f.clone()),
            _ => None,
        })
        .context("a MigrationFailed event")?;
    assert_eq!(
        (failed_event.version, failed_event.file.as_str()),
        (6, "0006_email_check.sql")
    );
    for cloud in ["gcp", "onprem"] {
        assert_eq!(
            finished_of(&events, cloud)?.not_run,
            pb::TargetNotRunReason::CanaryFailed as i32,
            "{cloud}"
        );
    }
    assert!(!has_column(aws, "nickname").await?, "half-applied on aws");
    let after = status(&s, &s.reader).await?;
    let aws_status = target_status(&after, "aws")?;
    assert_eq!(state_of(aws_status, 6), Some(pb::MigrationState::Failed));
    let failure = aws_status
        .migrations
        .iter()
        .find(|m| m.version == 6)
        .and_then(|m| m.failure.clone())
        .context("failure of 6")?;
    assert_eq!(failure.postgres.map(|p| p.sqlstate).as_deref(), Some("23514"));
    assert!(aws_status.needs_attention);
    assert_eq!(after.behind.len(), 3);

    // Data fixed: the canary passes, the rest follows.
    crate::support::run_sql(
        &s,
        "aws",
        "app",
        "UPDATE accounts SET email = 'fixed@example.com'",
    )
    .await?;
    let events = apply(
        &s.channel,
        &s.master,
        apply_request(pb::RolloutPolicy::OneCloudThenRest),
    )
    .await?;
    assert!(rollout_finished(&events)?.success, "{events:?}");
    assert!(status(&s, &s.reader).await?.up_to_date);

    // A column added by hand on gcp is drift against aws.
    crate::support::run_sql(&s, "gcp", "app", "ALTER TABLE accounts ADD COLUMN by_hand text").await?;
    let drift = client(&s.channel)
        .check_schema_drift(bearer(
            pb::CheckSchemaDriftRequest {
                scope: scope("app"),
                reference: Some(target("aws", "app")),
                schemas: Vec::new(),
            },
            &s.reader,
        ))
        .await?
        .into_inner();
    assert!(drift.drift);
    for t in &drift.targets {
        let cloud = t.target.as_ref().map(|t| t.cloud.as_str()).unwrap_or_default();
        let objects: Vec<&str> = t.differences.iter().map(|d| d.object.as_str()).collect();
        match cloud {
            "gcp" => assert_eq!(objects, ["public.accounts.by_hand"], "{t:?}"),
            "onprem" => assert!(objects.is_empty(), "{t:?}"),
            other => bail!("unexpected target {other}"),
        }
    }
    crate::support::run_sql(&s, "gcp", "app", "ALTER TABLE accounts DROP COLUMN by_hand").await?;

    // An applied file edited: status says so, applies are refused until the
    // checksum is repaired.
    std::fs::write(
        dir.path().join("0002_orders.sql"),
        format!("-- reviewed\n{}", FILES[2].1),
    )?;
    let drifted = status(&s, &s.reader).await?;
    assert_eq!(
        state_of(target_status(&drifted, "gcp")?, 2),
        Some(pb::MigrationState::ChecksumDrift)
    );
    let refused = apply(&s.channel, &s.master, apply_request(pb::RolloutPolicy::AllAtOnce)).await;
    match refused {
        Err(status) => {
            assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
            assert!(status.message().contains("changed"), "{}", status.message());
        }
        Ok(events) => bail!("an apply over a changed file must be refused: {events:?}"),
    }
    let repaired = client(&s.channel)
        .repair_checksum(bearer(
            pb::RepairChecksumRequest {
                scope: scope("app"),
                version: 2,
                lock_timeout: None,
            },
            &s.master,
        ))
        .await?
        .into_inner();
    assert!(
        repaired.success && repaired.results.iter().all(|r| r.changed),
        "{repaired:?}"
    );
    assert!(status(&s, &s.reader).await?.up_to_date);

    // Rollback of the newest version, on record; a second one is refused
    // per target (5 is the newest now).
    let rolled = client(&s.channel)
        .rollback_migration(bearer(
            pb::RollbackMigrationRequest {
                scope: scope("app"),
                version: 6,
                lock_timeout: None,
            },
            &s.master,
        ))
        .await?
        .into_inner();
    assert!(rolled.success, "{rolled:?}");
    assert!(rolled.results.iter().all(|r| r.newest_applied == 5));
    assert!(!has_column(aws, "nickname").await?);
    let record = history_scalar(
        &s,
        "SELECT kind || ' ' || status FROM pgfleet.executions WHERE id = $1",
        &rolled.execution_id,
    )
    .await?;
    assert_eq!(record.as_deref(), Some("MIGRATION_ROLLBACK SUCCEEDED"));
    let again = client(&s.channel)
        .rollback_migration(bearer(
            pb::RollbackMigrationRequest {
                scope: scope("app"),
                version: 6,
                lock_timeout: None,
            },
            &s.master,
        ))
        .await?
        .into_inner();
    assert!(!again.success);
    for r in &again.results {
        assert_eq!(
            r.error.as_ref().map(|e| e.code),
            Some(pb::ErrorCode::FailedPrecondition as i32),
            "{r:?}"
        );
    }
    let after = status(&s, &s.reader).await?;
    assert!(after.targets.iter().all(|t| t.pending == [6]), "{after:?}");
    Ok(())
}

#[tokio::test]
async fn two_servers_apply_each_migration_once() -> anyhow::Result<()> {
    pgfleet_testkit::require_services().await?;
    let dir = tempfile::tempdir()?;
    write_files(dir.path(), FILES)?;
    let extra = extra(None, dir.path());
    let s = crate::support::session(&extra).await?;
    // A second replica of the same fleet (sessions are shared in Redis).
    let second = s.fleet.start(&extra).await?;
    let second_channel = crate::support::channel(&second).await?;

    let request = apply_request(pb::RolloutPolicy::AllAtOnce);
    let (one, two) = tokio::join!(
        apply(&s.channel, &s.master, request.clone()),
        apply(&second_channel, &s.master, request)
    );
    let (one, two) = (one?, two?);
    assert!(rollout_finished(&one)?.success && rollout_finished(&two)?.success);
    for cloud in ["aws", "gcp"] {
        let mut applied = finished_of(&one, cloud)?.applied;
        applied.extend(finished_of(&two, cloud)?.applied);
        applied.sort_unstable();
        assert_eq!(applied, [1, 2, 3, 4, 5], "{cloud}: each version once");
        let rows = crate::support::scalar(
            &s,
            cloud,
            "app",
            "SELECT count(*)::text || ' ' || count(DISTINCT execution_id)::text FROM pgfleet.schema_migrations",
        )
        .await?;
        assert_eq!(rows.as_deref(), Some("5 1"), "{cloud}: one run applied them all");
    }
    second.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn a_target_cut_during_the_rollout_is_caught_up_by_the_next_apply() -> anyhow::Result<()> {
    pgfleet_testkit::require_services().await?;
    let dir = tempfile::tempdir()?;
    write_files(
        dir.path(),
        &[
            ("0001_first.sql", "CREATE TABLE first (id int);\n"),
            (
                "0002_slow.sql",
                "CREATE TABLE slow (id int);\nSELECT pg_sleep(2);\n",
            ),
        ],
    )?;
    let onprem = Onprem::start().await?;
    let s = crate::support::session(&extra(Some(&onprem), dir.path())).await?;

    // The outage starts while version 2 runs on onprem.
    let mut stream = client(&s.channel)
        .apply_migrations(bearer(apply_request(pb::RolloutPolicy::AllAtOnce), &s.master))
        .await?
        .into_inner();
    let mut events = Vec::new();
    while let Some(message) = stream.message().await? {
        if let Some(Event::MigrationStarted(started)) = &message.event
            && started.version == 2
            && started.target.as_ref().is_some_and(|t| t.cloud == "onprem")
        {
            let proxy = Arc::clone(&onprem.proxy);
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                proxy.cut();
            });
        }
        events.extend(message.event);
    }
    assert!(!rollout_finished(&events)?.success);
    for cloud in ["aws", "gcp"] {
        assert_eq!(finished_of(&events, cloud)?.applied, [1, 2], "{cloud}");
    }
    let lost = finished_of(&events, "onprem")?;
    assert_eq!(lost.applied, [1]);
    assert_eq!(
        lost.error.map(|e| e.code),
        Some(pb::ErrorCode::Unavailable as i32)
    );

    // While it is down, status shows it behind and unreachable.
    let down = status(&s, &s.reader).await?;
    let onprem_status = target_status(&down, "onprem")?;
    assert!(
        onprem_status.error.is_some() && onprem_status.behind,
        "{onprem_status:?}"
    );
    assert_eq!(down.behind, [target("onprem", "app")]);

    // Back up: nothing of version 2 stayed, and the next apply catches up.
    onprem.proxy.pass();
    wait_until(Duration::from_secs(20), Duration::from_millis(200), async || {
        let now = status(&s, &s.reader).await?;
        anyhow::Ok(target_status(&now, "onprem")?.pending == [2])
    })
    .await?;
    onprem
        .sql("SELECT 1")
        .await
        .context("onprem reachable directly")?;
    let events = apply(&s.channel, &s.master, apply_request(pb::RolloutPolicy::AllAtOnce)).await?;
    assert!(rollout_finished(&events)?.success, "{events:?}");
    assert_eq!(finished_of(&events, "onprem")?.applied, [2]);
    assert!(finished_of(&events, "aws")?.applied.is_empty());
    assert!(status(&s, &s.reader).await?.up_to_date);
    Ok(())
}

/// grpcurl off the test's runtime thread (the server runs on it).
async fn grpcurl(args: Vec<String>) -> anyhow::Result<(bool, String, String)> {
    Ok(tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        crate::support::run_grpcurl(&args)
    })
    .await?)
}

fn call(header: &str, body: &str, addr: &str, method: &str) -> Vec<String> {
    ["-plaintext", "-H", header, "-d", body, addr, method]
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
}

#[tokio::test]
async fn grpcurl_and_the_command_line() -> anyhow::Result<()> {
    pgfleet_testkit::require_services().await?;
    let dir = tempfile::tempdir()?;
    write_files(dir.path(), &FILES[..4])?;
    let extra = extra(None, dir.path());
    let s = crate::support::session(&extra).await?;
    let addr = s.server.local_addr().to_string();
    let header = format!("authorization: Bearer {}", s.master);

    // `analytics` has no directory: its set is uploaded, then applied.
    let upload = serde_json::json!({
        "database": "analytics",
        "files": [
            {"name": "0001_events.sql", "sql": "CREATE TABLE events (id bigint PRIMARY KEY);\n"},
            {"name": "0002_events_at.sql", "sql": "ALTER TABLE events ADD COLUMN at timestamptz;\n"},
        ],
    })
    .to_string();
    let (ok, out, err) = grpcurl(call(
        &header,
        &upload,
        &addr,
        "pgfleet.v1.MigrationService/UploadMigrationSet",
    ))
    .await?;
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("0002_events_at.sql"), "{out}");
    let bad = serde_json::json!({
        "database": "analytics",
        "files": [{"name": "0001_broken.sql", "sql": "CREATE TABLE (;\n"}],
    })
    .to_string();
    let (ok, out, err) = grpcurl(call(
        &header,
        &bad,
        &addr,
        "pgfleet.v1.MigrationService/UploadMigrationSet",
    ))
    .await?;
    assert!(!ok, "{out}");
    assert!(
        err.contains("InvalidArgument") && err.contains("0001_broken.sql, line 1"),
        "{err}"
    );
    let apply =
        serde_json::json!({"scope": {"database": "analytics"}, "policy": "ROLLOUT_POLICY_ONE_BY_ONE"})
            .to_string();
    let (ok, out, err) = grpcurl(call(
        &header,
        &apply,
        &addr,
        "pgfleet.v1.MigrationService/ApplyMigrations",
    ))
    .await?;
    assert!(ok, "{out}\n{err}");
    assert!(
        out.contains("rolloutFinished") && out.contains("\"success\": true"),
        "{out}"
    );
    let status = serde_json::json!({"scope": {"database": "analytics"}}).to_string();
    let (ok, out, err) = grpcurl(call(
        &header,
        &status,
        &addr,
        "pgfleet.v1.MigrationService/GetMigrationStatus",
    ))
    .await?;
    assert!(ok && out.contains("\"upToDate\": true"), "{out}\n{err}");

    // The command line against the same configuration, no server involved.
    let config = dir.path().join("pgfleet.toml");
    std::fs::write(&config, s.fleet.config_toml(&extra))?;
    let pgfleet = async |args: &[&str]| {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_pgfleet"))
            .args(["--config", &config.to_string_lossy(), "migrations"])
            .args(args)
            .env_remove("PGFLEET_LOG")
            .output()
            .await
    };
    let behind = pgfleet(&["status", "--database", "app"]).await?;
    let text = String::from_utf8_lossy(&behind.stdout);
    assert_eq!(behind.status.code(), Some(1), "behind exits 1: {text}");
    assert!(text.contains("pending [1, 2, 3]"), "{text}");
    let plan = pgfleet(&["plan", "--database", "app", "--cloud", "gcp", "--to", "2"]).await?;
    let text = String::from_utf8_lossy(&plan.stdout);
    assert!(plan.status.success(), "{text}");
    assert!(
        text.contains("0002_orders.sql") && !text.contains("0003"),
        "{text}"
    );
    let applied = pgfleet(&["apply", "--database", "app", "--policy", "one-cloud-then-rest"]).await?;
    let text = String::from_utf8_lossy(&applied.stdout);
    assert!(
        applied.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&applied.stderr)
    );
    assert!(text.contains("applied 3 accounts_email_index"), "{text}");
    let current = pgfleet(&["status", "--database", "app"]).await?;
    let text = String::from_utf8_lossy(&current.stdout);
    assert!(current.status.success() && text.contains("up to date"), "{text}");
    let applied_by = crate::support::scalar(
        &s,
        "aws",
        "app",
        "SELECT min(applied_by) FROM pgfleet.schema_migrations",
    )
    .await?;
    assert!(applied_by.is_some_and(|by| by.starts_with("cli:")));
    // A version that does not exist: refused, exit status non-zero.
    let refused = pgfleet(&["apply", "--database", "app", "--to", "9"]).await?;
    assert!(!refused.status.success());
    Ok(())
}

/// A copy configured `read_only = true` (`frozen/app`, over gcp's analytics
/// database) takes no migration: a fleet-wide apply naming it is refused
/// before anything runs anywhere, its plan says why, and an apply that
/// names the other copies goes on.
#[tokio::test]
async fn read_only_copies_take_no_migrations() -> anyhow::Result<()> {
    pgfleet_testkit::require_services().await?;
    let dir = tempfile::tempdir()?;
    write_files(dir.path(), FILES)?;
    let fleet = crate::support::Fleet::create().await?;
    let frozen = format!(
        "{}{}",
        crate::support::frozen_copy_toml(&fleet)?,
        extra(None, dir.path())
    );
    let s = crate::support::session_on(fleet, &frozen).await?;

    let refused = apply(&s.channel, &s.master, apply_request(pb::RolloutPolicy::AllAtOnce))
        .await
        .expect_err("frozen/app is read_only");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(
        refused.message().contains("frozen/app") && refused.message().contains("read_only"),
        "{refused:?}"
    );
    for cloud in ["aws", "gcp"] {
        let tracked = crate::support::scalar(
            &s,
            cloud,
            "app",
            "SELECT to_regclass('pgfleet.schema_migrations')::text",
        )
        .await?;
        assert_eq!(tracked, None, "{cloud}: nothing ran");
    }

    let plan = client(&s.channel)
        .plan_migrations(bearer(
            pb::PlanMigrationsRequest {
                scope: scope("app"),
                ..Default::default()
            },
            &s.master,
        ))
        .await?
        .into_inner();
    let frozen_plan = plan
        .targets
        .iter()
        .find(|t| t.target.as_ref().is_some_and(|t| t.cloud == "frozen"))
        .ok_or_else(|| anyhow::anyhow!("no plan for frozen/app: {plan:?}"))?;
    let why = frozen_plan
        .error
        .as_ref()
        .map(|e| e.message.clone())
        .unwrap_or_default();
    assert!(why.contains("read_only"), "{frozen_plan:?}");

    let named = pb::ApplyMigrationsRequest {
        scope: Some(pb::MigrationScope {
            database: "app".to_owned(),
            selection: Some(pb::migration_scope::Selection::Targets(pb::TargetList {
                targets: vec![
                    crate::support::target("aws", "app"),
                    crate::support::target("gcp", "app"),
                ],
            })),
        }),
        ..apply_request(pb::RolloutPolicy::AllAtOnce)
    };
    let events = apply(&s.channel, &s.master, named).await?;
    assert!(rollout_finished(&events)?.success);
    s.server.shutdown().await?;
    Ok(())
}
