//! Fleet migrations against real PostgreSQL: databases on the shared test
//! server and an `initdb` cluster as "clouds", a fault proxy as an outage.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use pgfleet_migrate::{
    ApplyError, ApplyEvent, ApplyOptions, ApplyReport, FleetStatus, MigrationSet, MigrationState, NotRun,
    ObjectKind, Refusal, RepairError, RollbackError, RolloutOptions, RolloutPolicy, RolloutReport, SetError,
    SkipReason, TARGET_LOCK, TargetOutcome, apply_on_target, diff, plan, repair_checksum, rollback_newest,
    rollout, schema_snapshot, status,
};
use pgfleet_testkit::{FaultProxy, PgCluster, TestDatabase, wait_until};
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection as _, PgConnection};

/// The five migrations every target gets, then the sixth.
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
        "-- Built without blocking writes on a live table.\n-- pgfleet:no-transaction\nCREATE INDEX CONCURRENTLY accounts_email ON accounts (email);\n",
    ),
    (
        "0003_accounts_email_index.down.sql",
        "-- pgfleet:no-transaction\nDROP INDEX CONCURRENTLY accounts_email;\n",
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

fn set_of(files: &[&[(&str, &str)]]) -> anyhow::Result<MigrationSet> {
    Ok(MigrationSet::from_sources(
        files.iter().flat_map(|f| f.iter().copied()),
    )?)
}

/// One fleet target as the tests reach it.
#[derive(Debug, Clone)]
struct Target {
    cloud: &'static str,
    name: String,
    options: PgConnectOptions,
}

impl PartialEq for Target {
    fn eq(&self, other: &Self) -> bool {
        self.cloud == other.cloud && self.name == other.name
    }
}

impl Target {
    fn of(cloud: &'static str, db: &TestDatabase) -> Self {
        Self {
            cloud,
            name: db.name().to_owned(),
            options: db.connect_options(),
        }
    }

    async fn connect(&self) -> anyhow::Result<PgConnection> {
        PgConnection::connect_with(&self.options)
            .await
            .with_context(|| format!("connecting to {}/{}", self.cloud, self.name))
    }
}

async fn apply_all(
    targets: &[Target],
    set: &MigrationSet,
    options: RolloutOptions,
) -> RolloutReport<Target, ApplyReport, ApplyError> {
    rollout(
        targets.to_vec(),
        options,
        |t| t.cloud,
        |t| {
            let t = t.clone();
            async move {
                let mut conn = t.connect().await.map_err(|e| {
                    ApplyError::Tracking(pgfleet_migrate::TrackingError::Query(Box::new(
                        pgfleet_migrate::PgFailure {
                            message: format!("{e:#}"),
                            connection_lost: true,
                            ..Default::default()
                        },
                    )))
                })?;
                apply_on_target(&mut conn, set, &ApplyOptions::new("tests"), |_| {}).await
            }
        },
    )
    .await
}

async fn fleet_status(targets: &[Target], set: &MigrationSet) -> anyhow::Result<FleetStatus<String>> {
    let mut statuses = Vec::new();
    for t in targets {
        let mut conn = t.connect().await?;
        statuses.push((t.cloud.to_owned(), status(&mut conn, set).await));
    }
    Ok(FleetStatus::new(set, statuses))
}

async fn applied_versions(target: &Target) -> anyhow::Result<Vec<i64>> {
    let mut conn = target.connect().await?;
    Ok(
        sqlx::query_scalar("SELECT version FROM pgfleet.schema_migrations ORDER BY version")
            .fetch_all(&mut conn)
            .await?,
    )
}

async fn has_column(target: &Target, table: &str, column: &str) -> anyhow::Result<bool> {
    let mut conn = target.connect().await?;
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM information_schema.columns \
         WHERE table_schema = 'public' AND table_name = $1 AND column_name = $2)",
    )
    .bind(table)
    .bind(column)
    .fetch_one(&mut conn)
    .await?)
}

async fn execute(target: &Target, sql: &'static str) -> anyhow::Result<()> {
    let mut conn = target.connect().await?;
    sqlx::raw_sql(sql).execute(&mut conn).await?;
    Ok(())
}

fn canary() -> RolloutOptions {
    RolloutOptions {
        policy: RolloutPolicy::OneCloudThenRest,
        stop_on_first_failure: true,
    }
}

#[tokio::test]
async fn fresh_fleet_apply_canary_failure_and_rollback() -> anyhow::Result<()> {
    pgfleet_testkit::require_services().await?;
    let aws = TestDatabase::create("migrate").await?;
    let gcp = TestDatabase::create("migrate").await?;
    let cluster = PgCluster::start().await?;
    let onprem = TestDatabase::create_on(&cluster.admin_url(), "migrate").await?;
    let targets = [
        Target::of("aws", &aws),
        Target::of("gcp", &gcp),
        Target::of("onprem", &onprem),
    ];
    let five = set_of(&[FILES])?;

    // A fresh fleet: nothing tracked, everything pending, every target behind.
    let fleet = fleet_status(&targets, &five).await?;
    assert_eq!(fleet.behind().len(), 3, "{fleet:?}");
    assert_eq!(fleet.newest_applied(), None);
    for t in &fleet.targets {
        let s = t.status.as_ref().map_err(|e| anyhow::anyhow!("{e}"))?;
        assert!(
            !s.tracked,
            "{}: status must not create the tracking table",
            t.target
        );
        assert_eq!(s.pending(), [1, 2, 3, 4, 5], "{}", t.target);
    }
    let planned = plan(&mut targets[0].connect().await?, &five, None).await?;
    let versions: Vec<(i64, bool)> = planned
        .migrations
        .iter()
        .map(|m| (m.version, m.no_transaction))
        .collect();
    assert_eq!(
        versions,
        [(1, false), (2, false), (3, true), (4, false), (5, false)]
    );

    // Five migrations everywhere.
    let report = apply_all(&targets, &five, RolloutOptions::default()).await;
    for (t, outcome) in &report.outcomes {
        match outcome {
            TargetOutcome::Done(r) => {
                let applied: Vec<i64> = r.applied.iter().map(|s| s.version).collect();
                assert_eq!(applied, [1, 2, 3, 4, 5], "{}", t.cloud);
            }
            other => bail!("{}: {other:?}", t.cloud),
        }
    }
    let fleet = fleet_status(&targets, &five).await?;
    assert!(fleet.is_up_to_date(), "{fleet:?}");
    assert_eq!(fleet.newest_applied(), Some(5));

    // A sixth migration that fails on the canary cloud only: its data violates
    // the new constraint. The canary stops the rollout; nothing of the sixth
    // (not even its first statement) stays on the failed target.
    execute(&targets[0], "INSERT INTO accounts (email) VALUES ('no at sign')").await?;
    let six = set_of(&[FILES, SIXTH])?;
    let planned = plan(&mut targets[1].connect().await?, &six, None).await?;
    assert_eq!(planned.migrations.len(), 1);
    let alters = &planned.migrations[0].statements;
    assert_eq!(alters.len(), 2);
    assert!(
        alters.iter().all(|s| !s.findings.is_empty()),
        "ALTER is a dangerous finding: {alters:?}"
    );
    assert_eq!(alters[1].position.line, 2);

    let report = apply_all(&targets, &six, canary()).await;
    match report.outcome(&targets[0]) {
        Some(TargetOutcome::Failed(ApplyError::Migration(failed))) => {
            assert_eq!(failed.version, 6);
            assert_eq!(failed.failure.sqlstate.as_deref(), Some("23514"), "{failed:?}");
            assert_eq!(
                failed.failure.constraint.as_deref(),
                Some("accounts_email_has_at")
            );
            assert!(!failed.outcome_unknown);
        }
        other => bail!("the canary should fail on version 6: {other:?}"),
    }
    for t in &targets[1..] {
        assert!(
            matches!(
                report.outcome(t),
                Some(TargetOutcome::NotRun(NotRun::CanaryFailed))
            ),
            "{}: {:?}",
            t.cloud,
            report.outcome(t)
        );
    }
    assert!(
        !has_column(&targets[0], "accounts", "nickname").await?,
        "half-applied"
    );
    assert_eq!(applied_versions(&targets[0]).await?, [1, 2, 3, 4, 5]);
    let failed_status = status(&mut targets[0].connect().await?, &six).await?;
    match failed_status.state(6) {
        Some(MigrationState::Failed(recorded)) => {
            assert!(recorded.failure.is("23514"), "{recorded:?}");
            assert_eq!(recorded.failed_by, "tests");
        }
        other => bail!("version 6 should show as failed: {other:?}"),
    }
    let fleet = fleet_status(&targets, &six).await?;
    assert_eq!(fleet.behind().len(), 3);
    assert_eq!(fleet.needing_attention(), [&"aws".to_owned()]);

    // Data fixed: the canary passes and the rest follows.
    execute(&targets[0], "UPDATE accounts SET email = 'fixed@example.com'").await?;
    let report = apply_all(&targets, &six, canary()).await;
    assert!(report.all_done(), "{:?}", report.outcomes);
    let fleet = fleet_status(&targets, &six).await?;
    assert!(fleet.is_up_to_date(), "the failure record is cleared: {fleet:?}");

    // Rollback of the newest version, then of 5; 4 has no down file.
    for t in &targets {
        let mut conn = t.connect().await?;
        let undone = rollback_newest(&mut conn, &six, Some(6), Duration::from_secs(5)).await?;
        assert_eq!((undone.version, undone.newest_applied), (6, Some(5)));
        assert!(!has_column(t, "accounts", "nickname").await?);
        match rollback_newest(&mut conn, &six, Some(6), Duration::from_secs(5)).await {
            Err(RollbackError::NewestIsNot {
                expected: 6,
                newest: 5,
            }) => {}
            other => bail!("{}: {other:?}", t.cloud),
        }
        rollback_newest(&mut conn, &six, None, Duration::from_secs(5)).await?;
        match rollback_newest(&mut conn, &six, None, Duration::from_secs(5)).await {
            Err(RollbackError::NoDownFile { version: 4, .. }) => {}
            other => bail!("{}: {other:?}", t.cloud),
        }
        assert_eq!(applied_versions(t).await?, [1, 2, 3, 4]);
    }
    Ok(())
}

#[tokio::test]
async fn a_target_cut_during_the_rollout_is_caught_up_by_the_next_apply() -> anyhow::Result<()> {
    pgfleet_testkit::require_services().await?;
    let aws = TestDatabase::create("migrate").await?;
    let gcp = TestDatabase::create("migrate").await?;
    let proxy = Arc::new(FaultProxy::start(format!("{}:{}", gcp.host(), gcp.port())).await?);
    let direct_gcp = Target::of("gcp", &gcp);
    let proxied_gcp = Target {
        options: gcp.connect_options().host("127.0.0.1").port(proxy.port()),
        ..direct_gcp.clone()
    };
    let targets = [Target::of("aws", &aws), proxied_gcp.clone()];
    let set = MigrationSet::from_sources([
        ("0001_first.sql", "CREATE TABLE first (id int);"),
        (
            "0002_slow.sql",
            "CREATE TABLE slow (id int);\nSELECT pg_sleep(2);",
        ),
    ])?;

    let report = rollout(
        targets.to_vec(),
        RolloutOptions::default(),
        |t| t.cloud,
        |t| {
            let (t, set, proxy) = (t.clone(), &set, proxy.clone());
            async move {
                let mut conn = t.connect().await?;
                let on_event = |event: ApplyEvent| {
                    // The outage starts while version 2 runs on gcp.
                    if t.cloud == "gcp" && matches!(event, ApplyEvent::Started { version: 2, .. }) {
                        let proxy = proxy.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(Duration::from_millis(300)).await;
                            proxy.cut();
                        });
                    }
                };
                Ok::<_, anyhow::Error>(
                    apply_on_target(&mut conn, set, &ApplyOptions::new("tests"), on_event).await,
                )
            }
        },
    )
    .await;
    match report.outcome(&targets[0]) {
        Some(TargetOutcome::Done(Ok(r))) => assert_eq!(r.applied.len(), 2),
        other => bail!("aws: {other:?}"),
    }
    match report.outcome(&targets[1]) {
        Some(TargetOutcome::Done(Err(e))) => {
            assert!(e.is_connection_lost(), "{e:?}");
            match e {
                ApplyError::Migration(failed) => {
                    assert_eq!((failed.version, &failed.applied_before[..]), (2, &[1][..]))
                }
                other => bail!("gcp: {other:?}"),
            }
        }
        other => bail!("gcp: {other:?}"),
    }

    // gcp is behind and has nothing of version 2 (its server rolls back once
    // it notices the client is gone, after the sleep).
    wait_until(Duration::from_secs(20), Duration::from_millis(200), async || {
        let mut conn = direct_gcp.connect().await?;
        let s = status(&mut conn, &set).await?;
        let idle: bool = sqlx::query_scalar(
            "SELECT NOT EXISTS (SELECT 1 FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid())",
        )
        .fetch_one(&mut conn)
        .await?;
        anyhow::Ok(idle && s.pending() == [2])
    })
    .await?;
    assert!(!has_column(&direct_gcp, "slow", "id").await?, "half-applied");
    let fleet = fleet_status(&[targets[0].clone(), direct_gcp.clone()], &set).await?;
    assert_eq!(fleet.behind(), [&"gcp".to_owned()]);

    // Back up: the next apply catches gcp up and leaves aws alone.
    proxy.pass();
    let report = apply_all(&targets, &set, RolloutOptions::default()).await;
    match (report.outcome(&targets[0]), report.outcome(&targets[1])) {
        (Some(TargetOutcome::Done(a)), Some(TargetOutcome::Done(g))) => {
            assert!(a.applied.is_empty(), "{a:?}");
            assert_eq!(g.applied.iter().map(|s| s.version).collect::<Vec<_>>(), [2]);
        }
        other => bail!("{other:?}"),
    }
    assert!(fleet_status(&targets, &set).await?.is_up_to_date());
    Ok(())
}

#[tokio::test]
async fn a_column_added_by_hand_is_schema_drift() -> anyhow::Result<()> {
    pgfleet_testkit::require_services().await?;
    let aws = TestDatabase::create("migrate").await?;
    let gcp = TestDatabase::create("migrate").await?;
    let targets = [Target::of("aws", &aws), Target::of("gcp", &gcp)];
    let set = set_of(&[FILES])?;
    assert!(
        apply_all(&targets, &set, RolloutOptions::default())
            .await
            .all_done()
    );

    let snapshot =
        async |t: &Target| -> anyhow::Result<_> { Ok(schema_snapshot(&mut t.connect().await?, &[]).await?) };
    let reference = snapshot(&targets[0]).await?;
    for kind in [
        ObjectKind::Table,
        ObjectKind::Column,
        ObjectKind::Index,
        ObjectKind::Constraint,
        ObjectKind::View,
        ObjectKind::Function,
    ] {
        assert!(
            reference.objects.keys().any(|(k, _)| *k == kind),
            "no {kind} in the snapshot"
        );
    }
    assert!(
        reference
            .objects
            .keys()
            .all(|(_, name)| !name.starts_with("pgfleet.")),
        "pgfleet's own schema is not part of a snapshot"
    );
    assert_eq!(diff(&reference, &snapshot(&targets[1]).await?), []);

    execute(&targets[1], "ALTER TABLE orders ADD COLUMN note text").await?;
    execute(
        &targets[1],
        "ALTER TABLE accounts ALTER COLUMN email TYPE varchar(320)",
    )
    .await?;
    let differences = diff(&reference, &snapshot(&targets[1]).await?);
    // The changed column's type on the other side.
    assert_eq!(
        differences.first().and_then(|d| d.other.as_deref()),
        Some("character varying(320)")
    );
    let shown: Vec<String> = differences.iter().map(ToString::to_string).collect();
    assert_eq!(differences.len(), 2, "{shown:#?}");
    assert_eq!(
        (
            differences[0].kind,
            differences[0].object.as_str(),
            differences[0].aspect,
            differences[0].reference.as_deref()
        ),
        (
            ObjectKind::Column,
            "public.accounts.email",
            Some("type"),
            Some("text")
        ),
        "{shown:#?}"
    );
    assert_eq!(
        (
            differences[1].object.as_str(),
            differences[1].aspect,
            differences[1].reference.as_deref(),
            differences[1].other.as_deref()
        ),
        (
            "public.orders.note",
            None,
            None,
            Some("default: (none); not_null: false; type: text")
        ),
        "{shown:#?}"
    );
    // Only the named schemas when asked.
    assert!(
        schema_snapshot(&mut targets[1].connect().await?, &["other"])
            .await?
            .objects
            .is_empty()
    );
    Ok(())
}

#[tokio::test]
async fn checksum_drift_is_refused_until_repaired() -> anyhow::Result<()> {
    pgfleet_testkit::require_services().await?;
    let db = TestDatabase::create("migrate").await?;
    let target = Target::of("aws", &db);
    let set = set_of(&[FILES])?;
    let mut conn = target.connect().await?;
    apply_on_target(&mut conn, &set, &ApplyOptions::new("tests"), |_| {}).await?;

    // Someone edits an applied file (a comment is a change too).
    let edited: Vec<(&str, String)> = FILES
        .iter()
        .chain(SIXTH)
        .map(|(file, text)| {
            let text = if *file == "0002_orders.sql" {
                format!("-- reviewed\n{text}")
            } else {
                (*text).to_owned()
            };
            (*file, text)
        })
        .collect();
    let edited = MigrationSet::from_sources(edited)?;
    let s = status(&mut conn, &edited).await?;
    assert_eq!(s.drifted(), [2]);
    assert!(matches!(s.state(2), Some(MigrationState::ChecksumDrift { .. })));
    match apply_on_target(&mut conn, &edited, &ApplyOptions::new("tests"), |_| {}).await {
        Err(ApplyError::Refused(Refusal::ChecksumDrift { versions })) => assert_eq!(versions, [2]),
        other => bail!("{other:?}"),
    }
    assert!(matches!(
        plan(&mut conn, &edited, None).await,
        Err(pgfleet_migrate::PlanError::Refused(Refusal::ChecksumDrift { .. }))
    ));
    assert_eq!(applied_versions(&target).await?, [1, 2, 3, 4, 5], "nothing ran");
    match repair_checksum(&mut conn, &edited, 6, Duration::from_secs(5)).await {
        Err(RepairError::NotApplied { version: 6 }) => {}
        other => bail!("{other:?}"),
    }

    let repaired = repair_checksum(&mut conn, &edited, 2, Duration::from_secs(5)).await?;
    ensure!(
        repaired.old != repaired.new && repaired.new == edited.get(2).map(|m| m.checksum()).context("v2")?
    );
    assert!(status(&mut conn, &edited).await?.drifted().is_empty());
    let report = apply_on_target(&mut conn, &edited, &ApplyOptions::new("tests"), |_| {}).await?;
    assert_eq!(report.applied.iter().map(|s| s.version).collect::<Vec<_>>(), [6]);
    Ok(())
}

#[tokio::test]
async fn concurrent_appliers_apply_each_migration_exactly_once() -> anyhow::Result<()> {
    pgfleet_testkit::require_services().await?;
    let aws = TestDatabase::create("migrate").await?;
    let gcp = TestDatabase::create("migrate").await?;
    let targets = [Target::of("aws", &aws), Target::of("gcp", &gcp)];
    // CREATE TABLE without IF NOT EXISTS: running a version twice fails.
    let files: Vec<(String, String)> = (1..=5)
        .map(|v| {
            (
                format!("{v:04}_t{v}.sql"),
                format!("CREATE TABLE t{v} (id int);\nSELECT pg_sleep(0.3);"),
            )
        })
        .collect();
    let set = MigrationSet::from_sources(files)?;

    // Two "server instances", each rolling out to the whole fleet with its
    // own connections, at the same time.
    let instance = async |who: &'static str| {
        rollout(
            targets.to_vec(),
            RolloutOptions::default(),
            |t| t.cloud,
            |t| {
                let (t, set) = (t.clone(), &set);
                async move {
                    let mut conn = t.connect().await?;
                    let mut events = Vec::new();
                    let report =
                        apply_on_target(&mut conn, set, &ApplyOptions::new(who), |e| events.push(e)).await?;
                    anyhow::Ok((report, events))
                }
            },
        )
        .await
    };
    let (first, second) = tokio::join!(instance("one"), instance("two"));
    for (index, t) in targets.iter().enumerate() {
        let mut ran = Vec::new();
        let mut skipped = Vec::new();
        for report in [&first, &second] {
            match &report.outcomes[index].1 {
                TargetOutcome::Done((r, events)) => {
                    ran.extend(r.applied.iter().map(|s| s.version));
                    skipped.extend(events.iter().filter_map(|e| match e {
                        ApplyEvent::Skipped {
                            version,
                            reason: SkipReason::AppliedConcurrently,
                            ..
                        } => Some(*version),
                        _ => None,
                    }));
                }
                other => bail!("{}: {other:?}", t.cloud),
            }
        }
        ran.sort_unstable();
        assert_eq!(ran, [1, 2, 3, 4, 5], "{}: each version ran exactly once", t.cloud);
        assert!(
            !skipped.is_empty(),
            "{}: the second applier saw the first one's work",
            t.cloud
        );
        assert_eq!(applied_versions(t).await?, [1, 2, 3, 4, 5]);
    }

    // A writer that holds the lock makes the next one wait, then refuse.
    let mut holder = targets[0].connect().await?;
    sqlx::query("SELECT pg_advisory_lock($1, $2)")
        .bind(TARGET_LOCK.0)
        .bind(TARGET_LOCK.1)
        .execute(&mut holder)
        .await?;
    let mut conn = targets[0].connect().await?;
    let options = ApplyOptions {
        lock_wait: Duration::from_millis(300),
        ..ApplyOptions::new("tests")
    };
    match apply_on_target(&mut conn, &set, &options, |_| {}).await {
        Err(ApplyError::Lock(pgfleet_migrate::LockError::Busy { waited })) => {
            assert!(waited >= Duration::from_millis(300), "{waited:?}")
        }
        other => bail!("{other:?}"),
    }
    Ok(())
}

#[test]
fn set_loading_errors_name_the_file_and_place() {
    let load = |files: &[(&str, &str)]| MigrationSet::from_sources(files.iter().copied());
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], fn(&SetError) -> bool);
    let cases: &[Case<'_>] = &[
        (
            "gap",
            &[("0001_a.sql", "SELECT 1;"), ("0003_c.sql", "SELECT 1;")],
            |e| matches!(e, SetError::Gap { previous: 1, next: 3, file } if file == "0003_c.sql"),
        ),
        (
            "duplicate version",
            &[("0001_a.sql", "SELECT 1;"), ("0001_b.sql", "SELECT 1;")],
            |e| matches!(e, SetError::DuplicateVersion { version: 1, first, second } if first == "0001_a.sql" && second == "0001_b.sql"),
        ),
        (
            "down without up",
            &[("0001_a.sql", "SELECT 1;"), ("0002_b.down.sql", "SELECT 1;")],
            |e| matches!(e, SetError::DownWithoutUp { file, .. } if file == "0002_b.down.sql"),
        ),
        (
            "down of another name",
            &[("0001_a.sql", "SELECT 1;"), ("0001_b.down.sql", "SELECT 1;")],
            |e| matches!(e, SetError::DownWithoutUp { file, .. } if file == "0001_b.down.sql"),
        ),
        (
            "bad name",
            &[("0001_a.up.sql", "SELECT 1;")],
            |e| matches!(e, SetError::BadFileName { file, .. } if file == "0001_a.up.sql"),
        ),
        (
            "parse error",
            &[(
                "0001_a.sql",
                "SELECT 1;\nCREATE TABLE t (id int,\n  name txt,, x int);",
            )],
            |e| matches!(e, SetError::Parse { file, position: Some(p), .. } if file == "0001_a.sql" && p.line == 3 && p.column == 12),
        ),
        ("empty", &[("0001_a.sql", "-- nothing yet\n")], |e| {
            matches!(e, SetError::Empty { .. })
        }),
        (
            "transaction control",
            &[("0001_a.sql", "CREATE TABLE t (id int);\nCOMMIT;")],
            |e| matches!(e, SetError::TransactionControl { position, .. } if position.line == 2),
        ),
        (
            "concurrently without the marker",
            &[("0001_a.sql", "CREATE INDEX CONCURRENTLY i ON t (a);")],
            |e| matches!(e, SetError::NeedsNoTransaction { position, .. } if position.line == 1),
        ),
        (
            "marker with two statements",
            &[(
                "0001_a.sql",
                "-- pgfleet:no-transaction\nCREATE INDEX CONCURRENTLY i ON t (a);\nSELECT 1;",
            )],
            |e| matches!(e, SetError::NoTransactionNeedsOneStatement { statements: 2, .. }),
        ),
        (
            "misplaced marker",
            &[("0001_a.sql", "SELECT 1;\n-- pgfleet:no-transaction\n")],
            |e| matches!(e, SetError::MisplacedMarker { line: 2, .. }),
        ),
    ];
    for (name, files, expected) in cases {
        match load(files) {
            Err(e) => assert!(expected(&e), "case {name}: unexpected error {e:?} ({e})"),
            Ok(_) => panic!("case {name}: loaded"),
        }
    }
    let parse = load(&[(
        "0001_a.sql",
        "SELECT 1;\nCREATE TABLE t (id int,\n  name txt,, x int);",
    )]);
    let shown = parse.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(
        shown.starts_with("0001_a.sql, line 3, column 12: syntax error"),
        "{shown}"
    );
}

#[test]
fn load_dir_reads_sql_files_only() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    for (file, text) in FILES {
        std::fs::write(dir.path().join(file), text)?;
    }
    std::fs::write(dir.path().join("README.md"), "not a migration")?;
    std::fs::write(dir.path().join(".0009_hidden.sql"), "not valid SQL at all")?;
    std::fs::create_dir(dir.path().join("0010_dir.sql"))?;
    let set = MigrationSet::load_dir(dir.path())?;
    let loaded: Vec<(i64, &str, bool)> = set
        .migrations()
        .iter()
        .map(|m| (m.version(), m.name(), m.down().is_some()))
        .collect();
    assert_eq!(
        loaded,
        [
            (1, "accounts", true),
            (2, "orders", false),
            (3, "accounts_email_index", true),
            (4, "big_orders", false),
            (5, "account_total", true)
        ]
    );
    assert!(set.get(3).is_some_and(|m| m.up().no_transaction()));
    assert_eq!(
        set.get(1).map(|m| m.checksum()),
        Some(pgfleet_migrate::Checksum::of(FILES[0].1))
    );
    match MigrationSet::load_dir(dir.path().join("missing")) {
        Err(SetError::Io { path, .. }) => assert!(path.ends_with("missing")),
        other => panic!("{other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn a_failing_statement_is_located_in_its_file() -> anyhow::Result<()> {
    pgfleet_testkit::require_services().await?;
    let db = TestDatabase::create("migrate").await?;
    let target = Target::of("aws", &db);
    let set = MigrationSet::from_sources([
        ("0001_ok.sql", "CREATE TABLE a (id int);"),
        ("0002_typo.sql", "CREATE TABLE b (id int);\nSELECT nope FROM a;"),
        ("0003_later.sql", "CREATE TABLE c (id int);"),
    ])?;
    let mut conn = target.connect().await?;
    let mut events = Vec::new();
    let result = apply_on_target(&mut conn, &set, &ApplyOptions::new("tests"), |e| events.push(e)).await;
    match result {
        Err(ApplyError::Migration(failed)) => {
            assert_eq!(failed.file, "0002_typo.sql");
            assert_eq!(failed.failure.sqlstate.as_deref(), Some("42703"));
            assert_eq!(failed.line_column, Some((2, 8)), "{failed:?}");
            assert_eq!(failed.applied_before, [1]);
        }
        other => bail!("{other:?}"),
    }
    let kinds: Vec<String> = events
        .iter()
        .map(|e| match e {
            ApplyEvent::Locked { pending, .. } => format!("locked {pending:?}"),
            ApplyEvent::Started { version, .. } => format!("started {version}"),
            ApplyEvent::Applied { version, .. } => format!("applied {version}"),
            ApplyEvent::Failed {
                version,
                failure,
                line_column,
                ..
            } => format!(
                "failed {version} {} {line_column:?}",
                failure.sqlstate.as_deref().unwrap_or("")
            ),
            ApplyEvent::Skipped { version, reason, .. } => format!("skipped {version} {reason:?}"),
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "locked [1, 2, 3]",
            "started 1",
            "applied 1",
            "started 2",
            "failed 2 42703 Some((2, 8))",
            "skipped 3 EarlierFailed",
        ]
    );
    assert!(!has_column(&target, "b", "id").await?, "half-applied");
    match status(&mut conn, &set).await?.state(2) {
        Some(MigrationState::Failed(recorded)) => {
            assert_eq!(recorded.failure.position, Some(33), "{recorded:?}")
        }
        other => bail!("{other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn a_login_without_create_on_the_database_uses_a_schema_made_by_a_dba() -> anyhow::Result<()> {
    pgfleet_testkit::require_services().await?;
    // A cluster of its own: roles are cluster-wide.
    let cluster = PgCluster::start().await?;
    let db = TestDatabase::create_on(&cluster.admin_url(), "migrate").await?;
    let deployer = Target {
        cloud: "onprem",
        name: db.name().to_owned(),
        options: db.connect_options().username("deployer"),
    };
    let set = MigrationSet::from_sources([("0001_a.sql", "CREATE TABLE a (id int);")])?;
    let mut admin = db.connect().await?;
    sqlx::raw_sql("CREATE ROLE deployer LOGIN; GRANT CREATE ON SCHEMA public TO deployer;")
        .execute(&mut admin)
        .await?;

    // Without CREATE on the database, the tracking schema cannot be made...
    let mut conn = deployer.connect().await?;
    match apply_on_target(&mut conn, &set, &ApplyOptions::new("deployer"), |_| {}).await {
        Err(ApplyError::Tracking(pgfleet_migrate::TrackingError::Query(failure))) => {
            assert!(failure.is("42501"), "{failure:?}")
        }
        other => bail!("{other:?}"),
    }
    // ...and once a DBA made it, nothing else needs that privilege.
    sqlx::raw_sql("CREATE SCHEMA pgfleet AUTHORIZATION deployer")
        .execute(&mut admin)
        .await?;
    let report = apply_on_target(&mut conn, &set, &ApplyOptions::new("deployer"), |_| {}).await?;
    assert_eq!(report.applied.len(), 1);
    assert_eq!(applied_versions(&deployer).await?, [1]);
    Ok(())
}
