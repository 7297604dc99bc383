//! Signals to the real `pgfleet serve` process: SIGTERM during a fan-out
//! write (one that ends within the shutdown grace and one that does not)
//! and during a replication run; SIGKILL during writes, then a restart.
//! Each target's outcome is on record; no target holds half a write; a
//! dead server's records are swept to INTERRUPTED and the chain verifies.

use std::time::Duration;

use pgfleet_engine::identity::Role;
use pgfleet_proto::pgfleet::v1 as pb;
use pgfleet_proto::pgfleet::v1::history_service_client::HistoryServiceClient;
use pgfleet_proto::pgfleet::v1::replication_service_client::ReplicationServiceClient;
use tonic::transport::Channel;

use crate::support::{
    Fleet, ProxiedCloud, ServerProcess, bearer, channel, database_hash, login, send_signal,
    spawn_server_binary, target,
};
use crate::trail::{StoredRecord, admin, closed_records, execute, query, running};

/// Short leases, so a restarted server sweeps a dead one's records soon.
const LEASE: &str = "[audit]\nheartbeat_interval = '200ms'\nwriter_lease = '1s'\n";

/// `pgfleet serve` on a free port with `fleet`'s configuration and `extra`.
struct Binary {
    process: ServerProcess,
    channel: Channel,
    _dir: tempfile::TempDir,
}

async fn start_binary(fleet: &Fleet, extra: &str) -> anyhow::Result<Binary> {
    let port = pgfleet_testkit::free_port()?;
    let dir = tempfile::tempdir()?;
    let config_path = dir.path().join("pgfleet.toml");
    let text = fleet.config_toml(extra).replace(
        "listen_addr = '127.0.0.1:0'",
        &format!("listen_addr = '127.0.0.1:{port}'"),
    );
    std::fs::write(&config_path, text)?;
    let (process, channel) = spawn_server_binary(&config_path, port).await?;
    Ok(Binary {
        process,
        channel,
        _dir: dir,
    })
}

/// Waits for the process to exit; returns whether it exited with success.
async fn exited(binary: &mut Binary) -> anyhow::Result<bool> {
    let status = tokio::time::timeout(Duration::from_secs(30), binary.process.wait())
        .await
        .map_err(|_| anyhow::anyhow!("pgfleet did not exit"))??;
    Ok(status.success())
}

/// Sends `pair_write(1, sleep)` to every app target as a USER and returns
/// the call once every target is sleeping in it.
async fn write_in_flight(
    fleet: &Fleet,
    binary: &Binary,
    token: String,
    sleep: &str,
) -> anyhow::Result<tokio::task::JoinHandle<Result<tonic::Response<pb::ExecuteResponse>, tonic::Status>>> {
    let sql = pair_write(1, sleep);
    let call = tokio::spawn({
        let channel = binary.channel.clone();
        async move {
            query(&channel)
                .execute(bearer(execute(None, "app", &sql), &token))
                .await
        }
    });
    let admin = admin().await?;
    for (_, name, database) in &fleet.databases {
        if name == "app" {
            running(&admin, database.name(), "pg_sleep").await?;
        }
    }
    admin.close().await;
    Ok(call)
}

/// `items (id int PRIMARY KEY)` on aws/app and gcp/app.
async fn items_tables(fleet: &Fleet) -> anyhow::Result<()> {
    for (_, name, database) in &fleet.databases {
        if name == "app" {
            let pool = database.pool().await?;
            sqlx::query("CREATE TABLE items (id int PRIMARY KEY)")
                .execute(&pool)
                .await?;
            pool.close().await;
        }
    }
    Ok(())
}

/// The ids in `cloud`'s `items` (app database).
async fn item_ids(fleet: &Fleet, cloud: &str) -> anyhow::Result<Vec<i32>> {
    let pool = fleet.database(cloud, "app").pool().await?;
    let ids = sqlx::query_scalar("SELECT id FROM items ORDER BY id")
        .fetch_all(&pool)
        .await?;
    pool.close().await;
    Ok(ids)
}

/// The write that inserts `id` and then `id + 1000` after `sleep`.
fn pair_write(id: i32, sleep: &str) -> String {
    format!("INSERT INTO items VALUES ({id});\nINSERT INTO items SELECT {id} + 1000 FROM pg_sleep({sleep})")
}

/// What must hold for the record of `pair_write(id, _)` on every app
/// target: both rows or neither (never half a write), and rows there only
/// if the outcome says success or unknown; a success has its rows.
async fn assert_whole(fleet: &Fleet, record: &StoredRecord, id: i32) -> anyhow::Result<()> {
    assert_ne!(record.status, "RUNNING", "{record:?}");
    for cloud in ["aws", "gcp"] {
        let ids = item_ids(fleet, cloud).await?;
        let (first, second) = (ids.contains(&id), ids.contains(&(id + 1000)));
        assert_eq!(first, second, "{cloud} holds half of write {id}");
        let outcome = record
            .outcome(cloud)
            .unwrap_or_else(|| panic!("no outcome for {cloud} in {record:?}"));
        if outcome.success {
            assert!(first, "{cloud}: write {id} recorded as done but absent");
        } else if !outcome.outcome_unknown {
            assert!(
                !first,
                "{cloud}: write {id} recorded as not done but present: {outcome:?}"
            );
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_a_fan_out_write_within_the_grace_finish_on_record() -> anyhow::Result<()> {
    let fleet = Fleet::create().await?;
    let mut binary = start_binary(&fleet, LEASE).await?;
    let token = fleet.log_in(&binary.channel, "term-writer", Role::User).await?;
    items_tables(&fleet).await?;

    // The grace is 2 s (the fleet's [server] table); this write needs 1 s.
    let call = write_in_flight(&fleet, &binary, token, "1").await?;
    send_signal(&binary.process, "TERM").await?;
    let response = call.await??.into_inner();
    assert!(response.success, "{response:?}");
    assert!(exited(&mut binary).await?, "pgfleet exited with an error");

    let records = closed_records(&fleet.history, Duration::from_secs(20)).await?;
    let record = records
        .iter()
        .find(|record| record.id.to_string() == response.execution_id)
        .ok_or_else(|| anyhow::anyhow!("the write is not on record"))?;
    assert_eq!(record.status, "SUCCEEDED");
    assert_whole(&fleet, record, 1).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_past_the_grace_leaves_every_target_whole_and_on_record() -> anyhow::Result<()> {
    let fleet = Fleet::create().await?;
    let mut binary = start_binary(&fleet, LEASE).await?;
    let token = fleet.log_in(&binary.channel, "term-writer", Role::User).await?;
    items_tables(&fleet).await?;

    let call = write_in_flight(&fleet, &binary, token, "30").await?;
    send_signal(&binary.process, "TERM").await?;
    assert!(exited(&mut binary).await?, "pgfleet exited with an error");
    // The caller learns nothing certain: an error, or an answer saying the
    // targets did not succeed.
    if let Ok(response) = call.await? {
        assert!(!response.get_ref().success, "{response:?}");
    }

    // A server started after it closes whatever the first left open.
    let restarted = fleet.start(LEASE).await?;
    let records = closed_records(&fleet.history, Duration::from_secs(30)).await?;
    let record = records
        .iter()
        .find(|record| record.query.starts_with("INSERT INTO items VALUES (1);"))
        .ok_or_else(|| anyhow::anyhow!("the write is not on record"))?;
    assert_ne!(record.status, "SUCCEEDED", "{record:?}");
    assert_whole(&fleet, record, 1).await?;
    restarted.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_during_writes_then_restart_sweeps_them_to_interrupted_and_the_chain_verifies()
-> anyhow::Result<()> {
    const WRITES: i32 = 12;
    let fleet = Fleet::create().await?;
    let mut binary = start_binary(&fleet, LEASE).await?;
    let token = fleet.log_in(&binary.channel, "kill-writer", Role::User).await?;
    items_tables(&fleet).await?;

    // Writes of 0 to 5.5 s: some done, some in flight when the kill comes.
    let mut calls = Vec::new();
    for id in 0..WRITES {
        let sql = pair_write(id, &format!("{}", f64::from(id) * 0.5));
        let channel = binary.channel.clone();
        let token = token.clone();
        calls.push(tokio::spawn(async move {
            query(&channel)
                .execute(bearer(execute(None, "app", &sql), &token))
                .await
        }));
    }
    // Once the first writes answered, the others still sleeping.
    let mut answered = Vec::new();
    for call in calls.drain(..2) {
        answered.push(call.await??.into_inner());
    }
    send_signal(&binary.process, "KILL").await?;
    assert!(!exited(&mut binary).await?, "killed");
    for call in calls {
        let _ = call.await?;
    }

    let restarted = fleet.start(LEASE).await?;
    let records = closed_records(&fleet.history, Duration::from_secs(30)).await?;
    let mut interrupted = 0;
    for id in 0..WRITES {
        let prefix = format!("INSERT INTO items VALUES ({id});");
        let Some(record) = records.iter().find(|record| record.query.starts_with(&prefix)) else {
            // Never opened: it never ran.
            for cloud in ["aws", "gcp"] {
                assert!(
                    !item_ids(&fleet, cloud).await?.contains(&id),
                    "{id} ran unrecorded"
                );
            }
            continue;
        };
        if record.status == "INTERRUPTED" {
            interrupted += 1;
        }
        assert_whole(&fleet, record, id).await?;
    }
    for response in &answered {
        assert!(response.success, "{response:?}");
        let record = records
            .iter()
            .find(|record| record.id.to_string() == response.execution_id)
            .ok_or_else(|| anyhow::anyhow!("an answered write is not on record"))?;
        assert_eq!(record.status, "SUCCEEDED");
    }
    assert!(
        interrupted >= 1,
        "no write was in flight at the kill: {records:?}"
    );

    let channel = channel(&restarted).await?;
    let password = fleet.create_user("kill-auditor", Role::Master).await?;
    let auditor = login(&channel, "kill-auditor", &password).await?;
    let verified = HistoryServiceClient::new(channel.clone())
        .verify_chain(bearer(pb::VerifyChainRequest::default(), &auditor))
        .await?
        .into_inner();
    assert!(verified.ok, "{:?}", verified.first_broken);
    restarted.shutdown().await?;
    Ok(())
}

/// The source table of the replication test and its rows.
const EVENTS: &str = "CREATE TABLE public.events (id bigint PRIMARY KEY, updated_at timestamptz NOT NULL, \
                      payload text NOT NULL)";

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_during_a_replication_run_leaves_each_target_on_record_and_resumable() -> anyhow::Result<()> {
    let azure = ProxiedCloud::start("f_term_azure").await?;
    let fleet = Fleet::create().await?;
    let extra = format!("{}{LEASE}", azure.toml());
    let mut binary = start_binary(&fleet, &extra).await?;
    let password = fleet.create_user("term-master", Role::Master).await?;
    let master = login(&binary.channel, "term-master", &password).await?;
    let source = fleet.database("aws", "app");
    let source_pool = source.pool().await?;
    sqlx::raw_sql(EVENTS).execute(&source_pool).await?;
    sqlx::query(
        "INSERT INTO public.events SELECT g, timestamptz '2026-01-01' + g * interval '1 second', \
         repeat('x', 200) FROM generate_series(1, 20000) g",
    )
    .execute(&source_pool)
    .await?;
    azure.sql(EVENTS).await?;
    // About 250 KB/s to azure: the run takes a while there.
    azure.proxy.bandwidth(250_000);
    let replication = |channel: &Channel| ReplicationServiceClient::new(channel.clone());
    let job_id = replication(&binary.channel)
        .create_job(bearer(
            pb::CreateJobRequest {
                job: Some(pb::ReplicationJob {
                    name: "term-events".to_owned(),
                    source: Some(target("aws", "app")),
                    targets: vec![target("azure", "app")],
                    tables: vec!["public.events".to_owned()],
                    sync_key: "updated_at".to_owned(),
                    enabled: false,
                    mode: pb::ReplicationMode::Incremental.into(),
                    batch_size: 500,
                    ..Default::default()
                }),
                validate_only: false,
            },
            &master,
        ))
        .await?
        .into_inner()
        .job
        .map(|job| job.id)
        .unwrap_or_default();

    let mut stream = replication(&binary.channel)
        .run_job(bearer(
            pb::RunJobRequest {
                job_id: job_id.clone(),
                ..Default::default()
            },
            &master,
        ))
        .await?
        .into_inner();
    // Two batches committed on azure, then SIGTERM.
    let mut batches = 0;
    while batches < 2 {
        let message = stream
            .message()
            .await?
            .ok_or_else(|| anyhow::anyhow!("the run ended before two batches"))?;
        if let Some(pb::replication_event::Event::TableProgress(progress)) =
            message.event.and_then(|event| event.event)
        {
            batches = progress.batches;
        }
    }
    send_signal(&binary.process, "TERM").await?;
    let mut last = None;
    while let Ok(Some(message)) = stream.message().await {
        last = message.event.and_then(|event| event.event);
    }
    assert!(exited(&mut binary).await?, "pgfleet exited with an error");
    if let Some(pb::replication_event::Event::RunFinished(done)) = &last {
        assert_eq!(done.outcome(), pb::ReplicationOutcome::Cancelled, "{done:?}");
    }

    // On record, with azure's outcome; a restarted server resumes and
    // completes the copy.
    azure.proxy.pass();
    let restarted = fleet.start(&extra).await?;
    let records = closed_records(&fleet.history, Duration::from_secs(30)).await?;
    let run = records
        .iter()
        .find(|record| record.kind == "REPLICATION_RUN")
        .ok_or_else(|| anyhow::anyhow!("the run is not on record: {records:?}"))?;
    assert_ne!(run.status, "SUCCEEDED", "{run:?}");
    let outcome = run.outcome("azure").expect("azure's outcome");
    assert!(!outcome.success, "{outcome:?}");

    let channel = channel(&restarted).await?;
    let master = login(&channel, "term-master", &password).await?;
    let mut resumed = replication(&channel)
        .run_job(bearer(
            pb::RunJobRequest {
                job_id,
                ..Default::default()
            },
            &master,
        ))
        .await?
        .into_inner();
    let mut finished = None;
    while let Some(message) = resumed.message().await? {
        if let Some(pb::replication_event::Event::RunFinished(done)) = message.event.and_then(|e| e.event) {
            finished = Some(done);
        }
    }
    let finished = finished.ok_or_else(|| anyhow::anyhow!("no RunFinished"))?;
    assert_eq!(
        finished.outcome(),
        pb::ReplicationOutcome::Succeeded,
        "{finished:?}"
    );
    assert_eq!(
        database_hash(&azure.database, "public.events").await?,
        database_hash(source, "public.events").await?
    );
    source_pool.close().await;
    restarted.shutdown().await?;
    Ok(())
}
