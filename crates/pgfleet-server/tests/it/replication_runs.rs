//! Stored replication jobs run end to end (RunJob, GetStatus, the
//! scheduler) against real databases: a source (aws/app) and targets in
//! other "clouds", one of them behind a fault proxy to kill it mid-run.
//! Copies are checked by ordered hashes of source and targets.

use std::time::Duration;

use pb::replication_event::Event;
use pgfleet_proto::pgfleet::v1 as pb;
use pgfleet_proto::pgfleet::v1::replication_service_client::ReplicationServiceClient;
use tonic::{Code, Status};

use crate::support::{
    Fleet, ProxiedCloud, Session, bad_field, bearer, channel, count, database_hash, login, run_sql, session,
    table_hash, target,
};

fn client(s: &Session) -> ReplicationServiceClient<tonic::transport::Channel> {
    ReplicationServiceClient::new(s.channel.clone())
}

/// The table every test copies; `updated_at` is the sync key.
const EVENTS_TABLE: &str = "CREATE TABLE public.events (
    id bigint PRIMARY KEY,
    updated_at timestamptz NOT NULL,
    kind text NOT NULL,
    amount numeric(12,2),
    payload jsonb
);
CREATE INDEX events_sync ON public.events (updated_at, id);";

/// `rows` source rows, one second apart from 2026-01-01 00:00:00+00, with
/// many rows sharing a timestamp (ties on the sync key) every 1000 ids.
fn events_rows(from: i64, to: i64) -> String {
    format!(
        "INSERT INTO public.events (id, updated_at, kind, amount, payload) \
         SELECT g, timestamptz '2026-01-01 00:00:00+00' + (g - g % 7) * interval '1 second', \
                'kind ' || (g % 13), (g % 100000) / 100.0, jsonb_build_object('g', g, 's', repeat('x', (g % 20)::int)) \
         FROM generate_series({from}, {to}) g"
    )
}

fn job(
    name: &str,
    targets: &[(&str, &str)],
    mode: pb::ReplicationMode,
    batch_size: u32,
) -> pb::ReplicationJob {
    pb::ReplicationJob {
        name: name.to_owned(),
        source: Some(target("aws", "app")),
        targets: targets.iter().map(|(c, d)| target(c, d)).collect(),
        tables: vec!["public.events".to_owned()],
        sync_key: "updated_at".to_owned(),
        enabled: false,
        mode: mode.into(),
        batch_size,
        ..Default::default()
    }
}

async fn create(s: &Session, job: pb::ReplicationJob) -> anyhow::Result<String> {
    let created = client(s)
        .create_job(bearer(
            pb::CreateJobRequest {
                job: Some(job),
                validate_only: false,
            },
            &s.master,
        ))
        .await?
        .into_inner();
    Ok(created.job.map(|j| j.id).unwrap_or_default())
}

/// Every event of one RunJob call.
async fn run(s: &Session, request: pb::RunJobRequest) -> Result<Vec<Event>, Status> {
    let mut stream = client(s).run_job(bearer(request, &s.master)).await?.into_inner();
    let mut events = Vec::new();
    while let Some(message) = stream.message().await? {
        if let Some(event) = message.event.and_then(|e| e.event) {
            events.push(event);
        }
    }
    Ok(events)
}

fn run_request(job_id: &str) -> pb::RunJobRequest {
    pb::RunJobRequest {
        job_id: job_id.to_owned(),
        ..Default::default()
    }
}

fn outcome(events: &[Event]) -> pb::ReplicationOutcome {
    match events.last() {
        Some(Event::RunFinished(done)) => done.outcome(),
        other => panic!("the last event is not RunFinished: {other:?}"),
    }
}

/// The TableFinished of `cloud`/`database`.
fn finished<'a>(events: &'a [Event], cloud: &str, database: &str) -> &'a pb::TableFinished {
    events
        .iter()
        .find_map(|event| match event {
            Event::TableFinished(done)
                if done
                    .target
                    .as_ref()
                    .is_some_and(|t| t.cloud == cloud && t.database == database) =>
            {
                Some(done)
            }
            _ => None,
        })
        .unwrap_or_else(|| panic!("no TableFinished for {cloud}/{database} in {events:?}"))
}

/// UpdateJob with `enabled = false`.
async fn disable(s: &Session, job_id: &str) -> anyhow::Result<()> {
    client(s)
        .update_job(bearer(
            pb::UpdateJobRequest {
                job: Some(pb::ReplicationJob {
                    id: job_id.to_owned(),
                    enabled: false,
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["enabled".to_owned()],
                }),
            },
            &s.master,
        ))
        .await?;
    Ok(())
}

async fn status(s: &Session, job_id: &str, token: &str) -> anyhow::Result<pb::JobStatus> {
    let mut response = client(s)
        .get_status(bearer(
            pb::GetStatusRequest {
                job_id: job_id.to_owned(),
                skip_row_counts: false,
            },
            token,
        ))
        .await?
        .into_inner();
    anyhow::ensure!(response.jobs.len() == 1, "{response:?}");
    Ok(response.jobs.remove(0))
}

fn pair<'a>(status: &'a pb::JobStatus, cloud: &str, database: &str) -> &'a pb::TableTargetStatus {
    status
        .tables
        .iter()
        .find(|t| {
            t.target
                .as_ref()
                .is_some_and(|t| t.cloud == cloud && t.database == database)
        })
        .unwrap_or_else(|| panic!("no status for {cloud}/{database}: {status:?}"))
}

/// Replication's acceptance run: 1,000,000 rows copied to two targets
/// while one of them is killed mid-run; the other finishes; the next run
/// completes the killed one from its saved position; incremental runs pick
/// up inserts and updates; lag and row counts are reported exactly.
#[tokio::test(flavor = "multi_thread")]
async fn a_million_rows_survive_a_target_killed_mid_run_and_stay_in_step() -> anyhow::Result<()> {
    const ROWS: i64 = 1_000_000;
    let azure = ProxiedCloud::start("r_azure_app").await?;
    let s = session(&azure.toml()).await?;
    run_sql(&s, "aws", "app", EVENTS_TABLE).await?;
    run_sql(&s, "gcp", "app", EVENTS_TABLE).await?;
    azure.sql(EVENTS_TABLE).await?;
    run_sql(&s, "aws", "app", &events_rows(1, ROWS)).await?;
    run_sql(&s, "aws", "app", "VACUUM ANALYZE public.events").await?;
    let job_id = create(
        &s,
        job(
            "events-everywhere",
            &[("gcp", "app"), ("azure", "app")],
            pb::ReplicationMode::Incremental,
            20_000,
        ),
    )
    .await?;

    // Never run: no watermark, no lag, every source row missing.
    let before = status(&s, &job_id, &s.reader).await?;
    let gcp = pair(&before, "gcp", "app");
    assert_eq!(gcp.watermark, "");
    assert!(gcp.lag.is_none());
    assert_eq!(gcp.source_row_count, Some(ROWS));
    assert_eq!(gcp.row_count_difference, Some(ROWS));
    assert_eq!(before.last_outcome(), pb::ReplicationOutcome::Unspecified);

    // Run 1: azure dies after a few committed batches.
    let mut stream = client(&s)
        .run_job(bearer(run_request(&job_id), &s.master))
        .await?
        .into_inner();
    let mut first = Vec::new();
    let mut azure_committed = 0;
    while let Some(message) = stream.message().await? {
        let Some(event) = message.event.and_then(|e| e.event) else {
            continue;
        };
        if let Event::TableProgress(progress) = &event
            && progress.target.as_ref().is_some_and(|t| t.cloud == "azure")
            && azure.proxy.mode() == pgfleet_testkit::ProxyMode::Pass
        {
            azure_committed = progress.rows_written;
            if progress.batches >= 5 {
                azure.proxy.cut();
            }
        }
        first.push(event);
    }
    assert_eq!(
        outcome(&first),
        pb::ReplicationOutcome::Partial,
        "{:?}",
        first.last()
    );
    let gcp_done = finished(&first, "gcp", "app");
    assert_eq!(gcp_done.outcome(), pb::ReplicationOutcome::Succeeded);
    assert_eq!(gcp_done.rows_written, u64::try_from(ROWS)?);
    let azure_failed = finished(&first, "azure", "app");
    assert_eq!(azure_failed.outcome(), pb::ReplicationOutcome::Failed);
    assert!(azure_committed >= 100_000, "{azure_committed}");
    let source_hash = table_hash(&s, "aws", "app", "public.events").await?;
    assert_eq!(table_hash(&s, "gcp", "app", "public.events").await?, source_hash);

    // The failure is in the status, with the position azure got to.
    let after_failure = status(&s, &job_id, &s.user).await?;
    assert_eq!(after_failure.last_outcome(), pb::ReplicationOutcome::Partial);
    assert!(!after_failure.running);
    let azure_status = pair(&after_failure, "azure", "app");
    assert_eq!(azure_status.last_outcome(), pb::ReplicationOutcome::Failed);
    assert!(azure_status.last_error.is_some(), "{azure_status:?}");
    assert!(azure_status.last_error_at.is_some());
    assert!(!azure_status.watermark.is_empty());
    assert_eq!(pair(&after_failure, "gcp", "app").lag_text, "00:00:00");

    // Run 2: azure is back and resumes after its saved position; gcp has
    // nothing to do.
    azure.proxy.pass();
    let second = run(&s, run_request(&job_id)).await?;
    assert_eq!(outcome(&second), pb::ReplicationOutcome::Succeeded, "{second:?}");
    let azure_resumed = finished(&second, "azure", "app");
    assert!(
        azure_resumed.rows_read <= u64::try_from(ROWS)? - azure_committed,
        "azure re-read {} rows after {azure_committed} committed",
        azure_resumed.rows_read
    );
    assert_eq!(finished(&second, "gcp", "app").rows_read, 0);
    assert_eq!(
        database_hash(&azure.database, "public.events").await?,
        source_hash
    );

    // Inserts and updates (newer sync keys) are picked up incrementally,
    // and only they are read.
    run_sql(
        &s,
        "aws",
        "app",
        &format!(
            "{}; UPDATE public.events SET kind = 'updated', updated_at = timestamptz '2026-06-01 00:00:00+00' \
             WHERE id % 1000 = 0",
            events_rows(ROWS + 1, ROWS + 500)
        ),
    )
    .await?;
    let third = run(&s, run_request(&job_id)).await?;
    assert_eq!(outcome(&third), pb::ReplicationOutcome::Succeeded, "{third:?}");
    for cloud in ["gcp", "azure"] {
        let done = finished(&third, cloud, "app");
        assert_eq!(done.rows_written, 1500, "{cloud}: {done:?}");
    }
    let source_hash = table_hash(&s, "aws", "app", "public.events").await?;
    assert_eq!(table_hash(&s, "gcp", "app", "public.events").await?, source_hash);
    assert_eq!(
        database_hash(&azure.database, "public.events").await?,
        source_hash
    );

    // Lag: a source row five minutes newer than the watermark, not copied.
    run_sql(
        &s,
        "aws",
        "app",
        "INSERT INTO public.events (id, updated_at, kind) \
         VALUES (0, timestamptz '2026-06-01 00:05:00+00', 'late')",
    )
    .await?;
    let lagging = status(&s, &job_id, &s.reader).await?;
    assert_eq!(lagging.last_outcome(), pb::ReplicationOutcome::Succeeded);
    for cloud in ["gcp", "azure"] {
        let behind = pair(&lagging, cloud, "app");
        // PostgreSQL's text of the values (its offset is the session's).
        assert!(behind.watermark.starts_with("2026-06-01 00:00:00"), "{behind:?}");
        assert!(
            behind.source_max_sync_key.starts_with("2026-06-01 00:05:00"),
            "{behind:?}"
        );
        assert_eq!(behind.lag.map(|d| (d.seconds, d.nanos)), Some((300, 0)));
        assert_eq!(behind.lag_text, "00:05:00");
        assert_eq!(behind.source_row_count, Some(ROWS + 501));
        assert_eq!(behind.target_row_count, Some(ROWS + 500));
        assert_eq!(behind.row_count_difference, Some(1));
        assert_eq!(behind.last_outcome(), pb::ReplicationOutcome::Succeeded);
        assert!(behind.last_error.is_none(), "a success clears the last error");
    }
    assert_eq!(count(&s, "gcp", "app", "public.events").await?, ROWS + 500);

    s.server.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_refresh_job_removes_rows_deleted_at_the_source() -> anyhow::Result<()> {
    let s = session("").await?;
    for (cloud, name) in [("aws", "app"), ("gcp", "app"), ("gcp", "analytics")] {
        run_sql(&s, cloud, name, EVENTS_TABLE).await?;
    }
    run_sql(&s, "aws", "app", &events_rows(1, 5000)).await?;
    let job_id = create(
        &s,
        job(
            "events-refresh",
            &[("gcp", "app"), ("gcp", "analytics")],
            pb::ReplicationMode::FullRefresh,
            700,
        ),
    )
    .await?;
    let first = run(&s, run_request(&job_id)).await?;
    assert_eq!(outcome(&first), pb::ReplicationOutcome::Succeeded, "{first:?}");
    run_sql(&s, "aws", "app", "DELETE FROM public.events WHERE id % 10 = 3").await?;
    // Only one target this time: the other keeps its rows.
    let second = run(
        &s,
        pb::RunJobRequest {
            job_id: job_id.clone(),
            targets: vec![target("gcp", "app")],
            ..Default::default()
        },
    )
    .await?;
    assert_eq!(outcome(&second), pb::ReplicationOutcome::Succeeded, "{second:?}");
    assert_eq!(finished(&second, "gcp", "app").rows_deleted, 500);
    assert!(
        !second
            .iter()
            .any(|e| matches!(e, Event::TableFinished(f) if f.target.as_ref().is_some_and(|t| t.database == "analytics")))
    );
    assert_eq!(
        table_hash(&s, "gcp", "app", "public.events").await?,
        table_hash(&s, "aws", "app", "public.events").await?
    );
    assert_eq!(count(&s, "gcp", "analytics", "public.events").await?, 5000);
    let refreshed = status(&s, &job_id, &s.master).await?;
    assert_eq!(pair(&refreshed, "gcp", "app").row_count_difference, Some(0));
    assert_eq!(
        pair(&refreshed, "gcp", "analytics").row_count_difference,
        Some(-500)
    );

    // Requests naming what the job does not have say which field is wrong.
    for (request, field) in [
        (
            pb::RunJobRequest {
                job_id: job_id.clone(),
                tables: vec!["public.other".to_owned()],
                ..Default::default()
            },
            "tables[0]",
        ),
        (
            pb::RunJobRequest {
                job_id: job_id.clone(),
                targets: vec![target("gcp", "app"), target("aws", "app")],
                ..Default::default()
            },
            "targets[1]",
        ),
        (run_request("not-a-uuid"), "job_id"),
    ] {
        let error = run(&s, request).await.err();
        assert_eq!(error.as_ref().map(bad_field).as_deref(), Some(field), "{error:?}");
    }
    let missing = run(&s, run_request(&uuid::Uuid::now_v7().to_string()))
        .await
        .err();
    assert_eq!(missing.map(|e| e.code()), Some(Code::NotFound));
    // USER and READER may look, not run.
    let denied = client(&s)
        .run_job(bearer(run_request(&job_id), &s.user))
        .await
        .err();
    assert_eq!(denied.map(|e| e.code()), Some(Code::PermissionDenied));

    s.server.shutdown().await?;
    Ok(())
}

/// A run holds its job: a second RunJob is ABORTED, and disabling the job
/// stops the run at its next batch boundary, keeping what was committed.
#[tokio::test(flavor = "multi_thread")]
async fn a_running_job_cannot_start_twice_and_stops_when_disabled() -> anyhow::Result<()> {
    let s = session("").await?;
    for (cloud, name) in [("aws", "app"), ("gcp", "app")] {
        run_sql(&s, cloud, name, EVENTS_TABLE).await?;
    }
    run_sql(&s, "aws", "app", &events_rows(1, 200_000)).await?;
    let job_id = create(
        &s,
        pb::ReplicationJob {
            enabled: true,
            ..job(
                "events-slow",
                &[("gcp", "app")],
                pb::ReplicationMode::Incremental,
                250,
            )
        },
    )
    .await?;
    let mut stream = client(&s)
        .run_job(bearer(run_request(&job_id), &s.master))
        .await?
        .into_inner();
    let mut events = Vec::new();
    let mut disabled = false;
    while let Some(message) = stream.message().await? {
        let Some(event) = message.event.and_then(|e| e.event) else {
            continue;
        };
        if matches!(&event, Event::TableProgress(p) if p.batches >= 3) && !disabled {
            let again = run(&s, run_request(&job_id)).await.err();
            assert_eq!(again.as_ref().map(Status::code), Some(Code::Aborted), "{again:?}");
            let running = status(&s, &job_id, &s.reader).await?;
            assert!(running.running);
            assert_eq!(running.last_outcome(), pb::ReplicationOutcome::Running);
            assert_eq!(
                pair(&running, "gcp", "app").last_outcome(),
                pb::ReplicationOutcome::Running
            );
            disable(&s, &job_id).await?;
            disabled = true;
        }
        events.push(event);
    }
    assert_eq!(
        outcome(&events),
        pb::ReplicationOutcome::Cancelled,
        "{:?}",
        events.last()
    );
    let stopped = finished(&events, "gcp", "app");
    assert_eq!(stopped.outcome(), pb::ReplicationOutcome::Cancelled);
    assert!(stopped.rows_written < 200_000, "{stopped:?}");
    // Committed batches stay, and the stored position matches them.
    let copied = count(&s, "gcp", "app", "public.events").await?;
    assert_eq!(u64::try_from(copied)?, stopped.rows_written);
    let after = status(&s, &job_id, &s.reader).await?;
    assert!(!after.running);
    assert_eq!(after.last_outcome(), pb::ReplicationOutcome::Cancelled);
    assert!(after.next_run_at.is_none(), "a disabled job is not scheduled");

    // The lock is free again: an on-demand run of the disabled job finishes
    // the copy from where it stopped.
    let rest = run(&s, run_request(&job_id)).await?;
    assert_eq!(outcome(&rest), pb::ReplicationOutcome::Succeeded, "{rest:?}");
    assert_eq!(
        finished(&rest, "gcp", "app").rows_read,
        200_000 - stopped.rows_written
    );
    assert_eq!(
        table_hash(&s, "gcp", "app", "public.events").await?,
        table_hash(&s, "aws", "app", "public.events").await?
    );

    s.server.shutdown().await?;
    Ok(())
}

/// A run's actor, start and end, as the audit trail has them.
type RunOnRecord = (
    Option<String>,
    chrono::DateTime<chrono::Utc>,
    Option<chrono::DateTime<chrono::Utc>>,
);

/// Two servers sharing one history store, both with the scheduler on: the
/// job runs again and again, never on both at once, and its runs are on
/// record as the scheduler's.
#[tokio::test(flavor = "multi_thread")]
async fn two_schedulers_never_run_the_same_job_at_once() -> anyhow::Result<()> {
    let mut fleet = Fleet::create().await?;
    fleet.replication_toml =
        "scheduler = true\nscheduler_tick = '50ms'\nwatch_interval = '100ms'\n".to_owned();
    let first = fleet.start("").await?;
    let second = fleet.start("").await?;
    let password = fleet
        .create_user("sched-master", pgfleet_engine::identity::Role::Master)
        .await?;
    let channel = channel(&first).await?;
    let token = login(&channel, "sched-master", &password).await?;
    let s = Session {
        fleet,
        server: first,
        channel,
        master: token.clone(),
        user: token.clone(),
        reader: token,
    };
    for (cloud, name) in [("aws", "app"), ("gcp", "app")] {
        run_sql(&s, cloud, name, EVENTS_TABLE).await?;
    }
    run_sql(&s, "aws", "app", &events_rows(1, 20_000)).await?;
    // Full refresh in small batches: each run takes a while, and the job is
    // due again one second after a run started.
    let job_id = create(
        &s,
        pb::ReplicationJob {
            enabled: true,
            interval: Some(prost_types::Duration { seconds: 1, nanos: 0 }),
            ..job(
                "events-scheduled",
                &[("gcp", "app")],
                pb::ReplicationMode::FullRefresh,
                400,
            )
        },
    )
    .await?;
    let history = s.fleet.history.pool().await?;
    let runs_on_record = async || -> anyhow::Result<Vec<RunOnRecord>> {
        Ok(sqlx::query_as(
            "SELECT actor_system, started_at, finished_at FROM pgfleet.executions \
             WHERE replication_job_id = $1::uuid ORDER BY started_at",
        )
        .bind(&job_id)
        .fetch_all(&history)
        .await?)
    };
    pgfleet_testkit::wait_until(Duration::from_secs(60), Duration::from_millis(200), async || {
        runs_on_record()
            .await
            .map(|runs| runs.iter().filter(|(_, _, finished)| finished.is_some()).count() >= 4)
            .unwrap_or(false)
    })
    .await?;
    // Stop scheduling before reading the final record.
    disable(&s, &job_id).await?;
    pgfleet_testkit::wait_until(Duration::from_secs(30), Duration::from_millis(100), async || {
        status(&s, &job_id, &s.reader)
            .await
            .is_ok_and(|status| !status.running)
    })
    .await?;
    let runs = runs_on_record().await?;
    assert!(runs.len() >= 4, "{runs:?}");
    for (actor, _, finished) in &runs {
        assert_eq!(actor.as_deref(), Some("replication-scheduler"));
        assert!(finished.is_some(), "{runs:?}");
    }
    for pair in runs.windows(2) {
        let (_, _, earlier_end) = &pair[0];
        let (_, later_start, _) = &pair[1];
        assert!(
            earlier_end.is_some_and(|end| end <= *later_start),
            "two runs overlap: {pair:?}"
        );
    }
    assert_eq!(
        table_hash(&s, "gcp", "app", "public.events").await?,
        table_hash(&s, "aws", "app", "public.events").await?
    );
    second.shutdown().await?;
    s.server.shutdown().await?;
    Ok(())
}

/// A copy configured `read_only = true` (here `frozen/app`, over gcp's
/// analytics database) is never written by replication: a job or a one-shot
/// copy naming it is refused before anything runs, and a job stored before
/// the copy was frozen fails on that target at run time while the others
/// are copied.
#[tokio::test(flavor = "multi_thread")]
async fn read_only_copies_are_never_replication_targets() -> anyhow::Result<()> {
    let fleet = Fleet::create().await?;
    let frozen = crate::support::frozen_copy_toml(&fleet)?;
    let s = crate::support::session_on(fleet, &frozen).await?;
    // frozen/app is gcp/analytics under another name.
    for (cloud, name) in [("aws", "app"), ("gcp", "app"), ("gcp", "analytics")] {
        run_sql(&s, cloud, name, EVENTS_TABLE).await?;
    }
    run_sql(&s, "aws", "app", &events_rows(1, 10)).await?;

    let job = |targets: Vec<pb::Target>| pb::ReplicationJob {
        name: "to-frozen".to_owned(),
        source: Some(target("aws", "app")),
        targets,
        tables: vec!["public.events".to_owned()],
        mode: pb::ReplicationMode::FullRefresh.into(),
        ..Default::default()
    };
    let refused = create(&s, job(vec![target("gcp", "app"), target("frozen", "app")]))
        .await
        .expect_err("a read_only target");
    let status = refused
        .downcast_ref::<Status>()
        .ok_or_else(|| anyhow::anyhow!("not a status: {refused:?}"))?;
    assert!(status.message().contains("frozen/app"), "{status:?}");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(
        status.message().contains("job.targets[1]") && status.message().contains("read_only"),
        "{status:?}"
    );

    // Stored behind validation's back, as if the copy was frozen later.
    let history = s.fleet.history.pool().await?;
    let store = pgfleet_engine::replication::jobs::JobStore::new(history);
    let spec = pgfleet_engine::replication::declared::spec_of(&pgfleet_config::DeclaredJobConfig {
        name: "frozen-later".to_owned(),
        source: "aws/app".to_owned(),
        targets: vec!["gcp/app".to_owned(), "frozen/app".to_owned()],
        tables: vec!["public.events".to_owned()],
        sync_key: None,
        interval: None,
        mode: None,
        batch_size: None,
        overlap: None,
        enabled: true,
    });
    let stored = store.create(&spec, "test").await?;
    let events = run(&s, run_request(&stored.id.to_string())).await?;
    assert_eq!(
        finished(&events, "gcp", "app").outcome(),
        pb::ReplicationOutcome::Succeeded
    );
    let frozen_result = finished(&events, "frozen", "app");
    assert_eq!(frozen_result.outcome(), pb::ReplicationOutcome::Failed);
    let message = frozen_result
        .error
        .as_ref()
        .map(|e| e.message.clone())
        .unwrap_or_default();
    assert!(message.contains("read_only"), "{message}");
    assert_eq!(count(&s, "gcp", "app", "public.events").await?, 10);
    assert_eq!(
        count(&s, "gcp", "analytics", "public.events").await?,
        0,
        "nothing written"
    );
    s.server.shutdown().await?;
    Ok(())
}
