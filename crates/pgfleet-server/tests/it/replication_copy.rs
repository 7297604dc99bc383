//! ReplicateTable end to end: a real server copying tables between real
//! databases (aws and gcp, each with app and analytics), checked by ordered
//! hashes of source and targets, and the run's record in the audit trail.

use pb::replication_event::Event;
use pgfleet_proto::pgfleet::v1 as pb;
use pgfleet_proto::pgfleet::v1::history_service_client::HistoryServiceClient;
use pgfleet_proto::pgfleet::v1::replication_service_client::ReplicationServiceClient;
use tonic::{Code, Status};

use crate::support::{Session, bad_field, bearer, count, run_sql, scalar, session, table_hash, target};

fn client(s: &Session) -> ReplicationServiceClient<tonic::transport::Channel> {
    ReplicationServiceClient::new(s.channel.clone())
}

/// Every event of one ReplicateTable call.
async fn replicate(
    s: &Session,
    request: pb::ReplicateTableRequest,
    token: &str,
) -> Result<Vec<Event>, Status> {
    let mut stream = client(s)
        .replicate_table(bearer(request, token))
        .await?
        .into_inner();
    let mut events = Vec::new();
    while let Some(message) = stream.message().await? {
        if let Some(event) = message.event.and_then(|e| e.event) {
            events.push(event);
        }
    }
    Ok(events)
}

fn request(
    table: &str,
    targets: &[(&str, &str)],
    mode: pb::ReplicationMode,
    batch_size: u32,
) -> pb::ReplicateTableRequest {
    pb::ReplicateTableRequest {
        source: Some(target("aws", "app")),
        targets: targets.iter().map(|(c, d)| target(c, d)).collect(),
        table: table.to_owned(),
        sync_key: String::new(),
        mode: mode.into(),
        batch_size,
        overlap: None,
    }
}

/// The TableFinished of each target, by "cloud/database".
fn finished(events: &[Event]) -> Vec<(String, pb::TableFinished)> {
    events
        .iter()
        .filter_map(|event| match event {
            Event::TableFinished(done) => {
                let t = done.target.clone().unwrap_or_default();
                Some((format!("{}/{}", t.cloud, t.database), done.clone()))
            }
            _ => None,
        })
        .collect()
}

fn finished_for<'a>(events: &'a [(String, pb::TableFinished)], name: &str) -> &'a pb::TableFinished {
    events
        .iter()
        .find(|(target, _)| target == name)
        .map(|(_, done)| done)
        .unwrap_or_else(|| panic!("no TableFinished for {name}: {events:?}"))
}

fn run_finished(events: &[Event]) -> pb::RunFinished {
    match events.last() {
        Some(Event::RunFinished(done)) => *done,
        other => panic!("the last event is not RunFinished: {other:?}"),
    }
}

fn run_id(events: &[Event]) -> String {
    match events.first() {
        Some(Event::RunStarted(started)) => started.run_id.clone(),
        other => panic!("the first event is not RunStarted: {other:?}"),
    }
}

/// A table with many types, created on the databases named.
const KINDS: &str = "CREATE TABLE public.kinds (
    id integer PRIMARY KEY,
    label text,
    amount numeric(14,4),
    at timestamptz,
    doc jsonb,
    payload bytea,
    tags text[],
    scores integer[],
    \"Mixed Case\" boolean,
    doubled integer GENERATED ALWAYS AS (id * 2) STORED
)";

const KINDS_ROWS: &str = "INSERT INTO public.kinds (id, label, amount, at, doc, payload, tags, scores, \"Mixed Case\")
SELECT i,
       CASE WHEN i % 7 = 0 THEN NULL
            ELSE 'row ' || i || E' \"dq\" ''sq'' back\\\\slash\\nnew line\\ttab ünïcødé 🚀 \\\\N' END,
       CASE WHEN i % 5 = 0 THEN NULL ELSE (i * 1.2345)::numeric(14,4) END,
       CASE WHEN i % 11 = 0 THEN NULL ELSE timestamptz '2024-01-01 00:00:00+00' + i * interval '1 minute 0.5 second' END,
       CASE WHEN i % 13 = 0 THEN NULL ELSE jsonb_build_object('i', i, 'text', E'a\\tb\\nc \"q\"', 'list', jsonb_build_array(i, 'x')) END,
       CASE WHEN i % 17 = 0 THEN NULL ELSE decode(lpad(to_hex(i), 8, '0') || '00ff5c0a09', 'hex') END,
       CASE WHEN i % 3 = 0 THEN NULL ELSE ARRAY['a', E'b,c', NULL, E'\"d\"', E'e\\nf'] END,
       ARRAY[i, NULL, -i],
       CASE WHEN i % 2 = 0 THEN NULL ELSE i % 4 = 1 END
FROM generate_series(1, 2500) AS i";

#[tokio::test(flavor = "multi_thread")]
async fn full_refresh_copies_every_type_and_removes_rows_deleted_at_the_source() -> anyhow::Result<()> {
    let s = session("").await?;
    for (cloud, name) in [("aws", "app"), ("gcp", "app"), ("aws", "analytics")] {
        run_sql(&s, cloud, name, KINDS).await?;
    }
    run_sql(&s, "aws", "app", KINDS_ROWS).await?;
    // Rows the source never had: a full refresh removes them.
    run_sql(
        &s,
        "gcp",
        "app",
        "INSERT INTO public.kinds (id, label) VALUES (100000, 'stray'), (-5, 'stray')",
    )
    .await?;

    let targets = [("gcp", "app"), ("aws", "analytics")];
    let events = replicate(
        &s,
        request("public.kinds", &targets, pb::ReplicationMode::Unspecified, 1000),
        &s.master,
    )
    .await?;
    let source_hash = table_hash(&s, "aws", "app", "public.kinds").await?;
    for (cloud, name) in targets {
        assert_eq!(
            table_hash(&s, cloud, name, "public.kinds").await?,
            source_hash,
            "{cloud}/{name}"
        );
    }
    let done = finished(&events);
    let gcp = finished_for(&done, "gcp/app");
    assert_eq!(gcp.outcome, pb::ReplicationOutcome::Succeeded as i32, "{gcp:?}");
    assert_eq!((gcp.rows_read, gcp.rows_written, gcp.batches), (2500, 2500, 3));
    assert_eq!(gcp.rows_deleted, 2);
    assert_eq!(finished_for(&done, "aws/analytics").rows_deleted, 0);
    let progress: Vec<&pb::TableProgress> = events
        .iter()
        .filter_map(|event| match event {
            Event::TableProgress(p) if p.target.as_ref().is_some_and(|t| t.cloud == "gcp") => Some(p),
            _ => None,
        })
        .collect();
    assert_eq!(
        progress.iter().map(|p| p.rows_written).collect::<Vec<_>>(),
        [1000, 2000, 2500]
    );
    let end = run_finished(&events);
    assert_eq!(end.outcome, pb::ReplicationOutcome::Succeeded as i32);
    assert_eq!((end.rows_read, end.rows_written), (5000, 5000));

    // Deletes and an update at the source; the next full refresh follows.
    run_sql(
        &s,
        "aws",
        "app",
        "DELETE FROM public.kinds WHERE id % 10 = 3; UPDATE public.kinds SET label = E'changed\\ttab' WHERE id = 1",
    )
    .await?;
    let events = replicate(
        &s,
        request("public.kinds", &targets, pb::ReplicationMode::FullRefresh, 600),
        &s.master,
    )
    .await?;
    let source_hash = table_hash(&s, "aws", "app", "public.kinds").await?;
    for (cloud, name) in targets {
        assert_eq!(
            table_hash(&s, cloud, name, "public.kinds").await?,
            source_hash,
            "{cloud}/{name} after deletes"
        );
        assert_eq!(count(&s, cloud, name, "public.kinds").await?, 2250);
    }
    let done = finished(&events);
    assert_eq!(finished_for(&done, "gcp/app").rows_deleted, 250);
    assert_eq!(finished_for(&done, "gcp/app").batches, 4);

    s.server.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_copy_into_an_empty_table_goes_on_with_upserts_when_rows_appear_meanwhile() -> anyhow::Result<()> {
    let s = session("").await?;
    for (cloud, name) in [("aws", "app"), ("gcp", "app")] {
        run_sql(&s, cloud, name, KINDS).await?;
    }
    run_sql(&s, "aws", "app", KINDS_ROWS).await?;
    // Another writer: with the first page copied straight into the empty
    // table, a row appears whose key the third page carries, so that page's
    // plain COPY fails on the duplicate and must be upserted instead.
    run_sql(
        &s,
        "gcp",
        "app",
        "CREATE TABLE public.interfered (at timestamptz);
         CREATE FUNCTION public.interfere() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           IF NOT EXISTS (SELECT 1 FROM public.interfered) THEN
             INSERT INTO public.interfered VALUES (now());
             INSERT INTO public.kinds (id, label) VALUES (2400, 'another writer');
           END IF;
           RETURN NULL;
         END $$;
         CREATE TRIGGER interfere AFTER INSERT ON public.kinds
           FOR EACH STATEMENT EXECUTE FUNCTION public.interfere();",
    )
    .await?;
    let events = replicate(
        &s,
        request(
            "public.kinds",
            &[("gcp", "app")],
            pb::ReplicationMode::FullRefresh,
            1000,
        ),
        &s.master,
    )
    .await?;
    let done = finished(&events);
    let gcp = finished_for(&done, "gcp/app");
    assert_eq!(gcp.outcome, pb::ReplicationOutcome::Succeeded as i32, "{gcp:?}");
    assert_eq!((gcp.rows_read, gcp.rows_written, gcp.batches), (2500, 2500, 3));
    assert_eq!(
        count(&s, "gcp", "app", "public.interfered").await?,
        1,
        "the other writer wrote"
    );
    assert_eq!(
        scalar(&s, "gcp", "app", "SELECT label FROM public.kinds WHERE id = 2400").await?,
        scalar(&s, "aws", "app", "SELECT label FROM public.kinds WHERE id = 2400").await?,
        "the other writer's row took the source's values"
    );
    assert_eq!(
        table_hash(&s, "gcp", "app", "public.kinds").await?,
        table_hash(&s, "aws", "app", "public.kinds").await?
    );
    // A re-run finds rows and upserts, removing what the source lacks.
    run_sql(
        &s,
        "gcp",
        "app",
        "INSERT INTO public.kinds (id, label) VALUES (-1, 'stray')",
    )
    .await?;
    let events = replicate(
        &s,
        request(
            "public.kinds",
            &[("gcp", "app")],
            pb::ReplicationMode::FullRefresh,
            1000,
        ),
        &s.master,
    )
    .await?;
    assert_eq!(finished_for(&finished(&events), "gcp/app").rows_deleted, 1);
    assert_eq!(
        table_hash(&s, "gcp", "app", "public.kinds").await?,
        table_hash(&s, "aws", "app", "public.kinds").await?
    );
    s.server.shutdown().await?;
    Ok(())
}

const ORDERS: &str = "CREATE TABLE public.orders (
    id bigint PRIMARY KEY,
    amount numeric(12,2) NOT NULL,
    note text,
    updated_at timestamptz NOT NULL
)";

fn incremental(targets: &[(&str, &str)], batch_size: u32, overlap_secs: i64) -> pb::ReplicateTableRequest {
    pb::ReplicateTableRequest {
        sync_key: "updated_at".to_owned(),
        overlap: (overlap_secs > 0).then_some(prost_types::Duration {
            seconds: overlap_secs,
            nanos: 0,
        }),
        ..request(
            "public.orders",
            targets,
            pb::ReplicationMode::Incremental,
            batch_size,
        )
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn incremental_picks_up_inserts_and_updates_and_is_idempotent() -> anyhow::Result<()> {
    let s = session("").await?;
    for (cloud, name) in [("aws", "app"), ("gcp", "app")] {
        run_sql(&s, cloud, name, ORDERS).await?;
    }
    // Ties on the sync key: ten rows per second.
    run_sql(
        &s,
        "aws",
        "app",
        "INSERT INTO public.orders SELECT i, i / 100.0, 'order ' || i, \
         timestamptz '2024-01-01 00:00:00+00' + (i / 10) * interval '1 second' FROM generate_series(1, 3000) AS i",
    )
    .await?;
    let targets = [("gcp", "app")];
    let first = replicate(&s, incremental(&targets, 700, 0), &s.master).await?;
    let done = finished(&first);
    let gcp = finished_for(&done, "gcp/app");
    assert_eq!(gcp.outcome, pb::ReplicationOutcome::Succeeded as i32, "{gcp:?}");
    assert_eq!((gcp.rows_written, gcp.batches), (3000, 5));
    assert_eq!(gcp.watermark, "2024-01-01 00:05:00+00");
    assert_eq!(
        table_hash(&s, "gcp", "app", "public.orders").await?,
        table_hash(&s, "aws", "app", "public.orders").await?
    );

    // New rows, updated rows (their sync key moves), and a row that ties
    // with the target's newest sync key but was not there yet.
    run_sql(
        &s,
        "aws",
        "app",
        "INSERT INTO public.orders SELECT i, i, 'new ' || i, timestamptz '2024-02-01 00:00:00+00' + i * interval '1 ms' \
         FROM generate_series(3001, 3100) AS i;
         UPDATE public.orders SET note = 'updated', amount = amount + 1, \
         updated_at = timestamptz '2024-03-01 00:00:00+00' + id * interval '1 ms' WHERE id % 60 = 0;
         INSERT INTO public.orders VALUES (5000, 1, 'tie', timestamptz '2024-03-01 00:00:00+00' + 3000 * interval '1 ms')",
    )
    .await?;
    let second = replicate(&s, incremental(&targets, 700, 0), &s.master).await?;
    assert_eq!(
        table_hash(&s, "gcp", "app", "public.orders").await?,
        table_hash(&s, "aws", "app", "public.orders").await?
    );
    let written = finished_for(&finished(&second), "gcp/app").rows_written;
    // 100 inserts, 50 updates, the tie row, plus the rows at the old
    // watermark (re-read because rows with the same sync key may arrive).
    assert!((151..=170).contains(&written), "{written} rows written");

    // Nothing changed: a re-run writes only the rows at the watermark.
    let third = replicate(&s, incremental(&targets, 700, 0), &s.master).await?;
    let third = finished(&third);
    let again = finished_for(&third, "gcp/app");
    assert!(again.rows_written <= 2, "{again:?}");
    assert_eq!(
        table_hash(&s, "gcp", "app", "public.orders").await?,
        table_hash(&s, "aws", "app", "public.orders").await?
    );

    // A row committed late with an older sync key: only an overlap window
    // that reaches back to it picks it up.
    run_sql(
        &s,
        "aws",
        "app",
        "INSERT INTO public.orders VALUES (6000, 2, 'late', timestamptz '2024-03-01 00:00:01+00')",
    )
    .await?;
    replicate(&s, incremental(&targets, 700, 0), &s.master).await?;
    assert_eq!(count(&s, "gcp", "app", "public.orders").await?, 3101);
    replicate(&s, incremental(&targets, 700, 3600), &s.master).await?;
    assert_eq!(count(&s, "gcp", "app", "public.orders").await?, 3102);
    assert_eq!(
        table_hash(&s, "gcp", "app", "public.orders").await?,
        table_hash(&s, "aws", "app", "public.orders").await?
    );

    s.server.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_target_does_not_stop_the_others_and_the_run_is_audited() -> anyhow::Result<()> {
    let s = session("").await?;
    run_sql(&s, "aws", "app", ORDERS).await?;
    run_sql(&s, "gcp", "app", ORDERS).await?;
    // gcp/analytics has no such table; aws/analytics refuses some rows.
    run_sql(
        &s,
        "aws",
        "analytics",
        &format!("{ORDERS}; ALTER TABLE public.orders ADD CONSTRAINT small CHECK (amount < 10)"),
    )
    .await?;
    run_sql(
        &s,
        "aws",
        "app",
        "INSERT INTO public.orders SELECT i, i / 100.0, 'order ' || i, now() FROM generate_series(1, 1500) AS i",
    )
    .await?;
    let targets = [("gcp", "app"), ("gcp", "analytics"), ("aws", "analytics")];
    let events = replicate(
        &s,
        request("public.orders", &targets, pb::ReplicationMode::FullRefresh, 500),
        &s.master,
    )
    .await?;
    let done = finished(&events);
    let ok = finished_for(&done, "gcp/app");
    assert_eq!(ok.outcome, pb::ReplicationOutcome::Succeeded as i32, "{ok:?}");
    assert_eq!(
        table_hash(&s, "gcp", "app", "public.orders").await?,
        table_hash(&s, "aws", "app", "public.orders").await?
    );
    let missing = finished_for(&done, "gcp/analytics");
    assert_eq!(missing.outcome, pb::ReplicationOutcome::Failed as i32);
    let error = missing.error.clone().unwrap_or_default();
    assert_eq!(error.code, pb::ErrorCode::FailedPrecondition as i32, "{error:?}");
    assert!(
        error
            .message
            .contains("public.orders does not exist on gcp/analytics"),
        "{error:?}"
    );
    let refused = finished_for(&done, "aws/analytics");
    assert_eq!(refused.outcome, pb::ReplicationOutcome::Failed as i32);
    let error = refused.error.clone().unwrap_or_default();
    assert_eq!(
        error.postgres.as_ref().map(|p| p.sqlstate.as_str()),
        Some("23514"),
        "{error:?}"
    );
    // The first batch (amounts below 5) committed before the second failed.
    assert_eq!((refused.batches, refused.rows_written), (1, 500));
    assert_eq!(count(&s, "aws", "analytics", "public.orders").await?, 500);
    assert!(
        events.iter().any(|e| matches!(e, Event::Error(failure)
            if failure.target.as_ref().is_some_and(|t| t.database == "analytics" && t.cloud == "gcp"))),
        "{events:?}"
    );
    assert_eq!(
        run_finished(&events).outcome,
        pb::ReplicationOutcome::Partial as i32
    );

    // The run is on record, closed with one outcome per target.
    let id = run_id(&events);
    let record = HistoryServiceClient::new(s.channel.clone())
        .get_execution(bearer(pb::GetExecutionRequest { id: id.clone() }, &s.master))
        .await?
        .into_inner()
        .execution
        .unwrap_or_default();
    assert_eq!(record.kind, pb::RecordKind::ReplicationRun as i32);
    assert_eq!(record.status, pb::ExecutionStatus::Partial as i32);
    assert_eq!(
        record.query,
        "replicate public.orders aws/app -> gcp/app, gcp/analytics, aws/analytics (full_refresh)"
    );
    assert_eq!(
        record.actor.clone().and_then(|a| a.principal),
        Some(pb::actor::Principal::Username("s-master".to_owned()))
    );
    assert_eq!(record.targets.len(), 3);
    let outcome = |cloud: &str, name: &str| {
        record
            .outcomes
            .iter()
            .find(|o| o.target.as_ref() == Some(&target(cloud, name)))
            .cloned()
            .unwrap_or_else(|| panic!("no outcome for {cloud}/{name}: {record:?}"))
    };
    let ok = outcome("gcp", "app");
    assert!(ok.success && ok.rows_affected == 1500, "{ok:?}");
    let refused = outcome("aws", "analytics");
    assert!(!refused.success);
    assert_eq!(refused.rows_affected, 500);
    assert_eq!(
        refused.error.and_then(|e| e.postgres).map(|p| p.sqlstate),
        Some("23514".to_owned())
    );
    let missing = outcome("gcp", "analytics");
    assert_eq!(
        missing.error.map(|e| e.code),
        Some(pb::ErrorCode::FailedPrecondition as i32)
    );

    s.server.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn only_master_replicates_and_requests_are_checked_before_anything_runs() -> anyhow::Result<()> {
    let s = session("").await?;
    run_sql(&s, "aws", "app", ORDERS).await?;
    run_sql(&s, "gcp", "app", ORDERS).await?;
    run_sql(&s, "aws", "app", "CREATE TABLE public.loose (a int, b text)").await?;
    let full = request(
        "public.orders",
        &[("gcp", "app")],
        pb::ReplicationMode::FullRefresh,
        0,
    );
    for token in [&s.user, &s.reader] {
        let denied = replicate(&s, full.clone(), token).await.err();
        assert_eq!(denied.map(|e| e.code()), Some(Code::PermissionDenied));
    }

    let no_key = replicate(
        &s,
        request(
            "public.loose",
            &[("gcp", "app")],
            pb::ReplicationMode::FullRefresh,
            0,
        ),
        &s.master,
    )
    .await
    .err()
    .unwrap_or_else(|| Status::ok(""));
    assert_eq!(no_key.code(), Code::FailedPrecondition, "{no_key:?}");
    assert!(no_key.message().contains("has no primary key"), "{no_key:?}");

    let no_sync_key = replicate(
        &s,
        pb::ReplicateTableRequest {
            mode: pb::ReplicationMode::Incremental.into(),
            ..full.clone()
        },
        &s.master,
    )
    .await
    .err()
    .unwrap_or_else(|| Status::ok(""));
    assert_eq!(bad_field(&no_sync_key), "sync_key", "{no_sync_key:?}");

    let onto_itself = replicate(
        &s,
        pb::ReplicateTableRequest {
            targets: vec![target("aws", "app")],
            ..full.clone()
        },
        &s.master,
    )
    .await
    .err()
    .unwrap_or_else(|| Status::ok(""));
    assert_eq!(bad_field(&onto_itself), "targets[0]", "{onto_itself:?}");

    let unknown = replicate(
        &s,
        pb::ReplicateTableRequest {
            targets: vec![target("azure", "app")],
            ..full.clone()
        },
        &s.master,
    )
    .await
    .err()
    .map(|e| e.code());
    assert_eq!(unknown, Some(Code::NotFound));

    let unqualified = replicate(
        &s,
        pb::ReplicateTableRequest {
            table: "orders".to_owned(),
            ..full.clone()
        },
        &s.master,
    )
    .await
    .err()
    .unwrap_or_else(|| Status::ok(""));
    assert_eq!(bad_field(&unqualified), "table", "{unqualified:?}");

    // Refused calls copied nothing and left no record.
    assert_eq!(count(&s, "gcp", "app", "public.orders").await?, 0);
    let mut history = s.fleet.history.connect().await?;
    let recorded: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pgfleet.executions WHERE kind = 'REPLICATION_RUN'")
            .fetch_one(&mut history)
            .await?;
    assert_eq!(recorded, 0);

    s.server.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn cancelling_the_call_stops_at_a_batch_boundary_and_deletes_nothing() -> anyhow::Result<()> {
    let s = session("").await?;
    run_sql(&s, "aws", "app", ORDERS).await?;
    run_sql(&s, "gcp", "app", ORDERS).await?;
    run_sql(
        &s,
        "aws",
        "app",
        "INSERT INTO public.orders SELECT i, 1, 'order ' || i, now() FROM generate_series(1, 20000) AS i",
    )
    .await?;
    // A row the source does not have: only a completed full refresh may
    // delete it.
    run_sql(
        &s,
        "gcp",
        "app",
        "INSERT INTO public.orders VALUES (-1, 1, 'stray', now())",
    )
    .await?;
    let mut stream = client(&s)
        .replicate_table(bearer(
            request(
                "public.orders",
                &[("gcp", "app")],
                pb::ReplicationMode::FullRefresh,
                100,
            ),
            &s.master,
        ))
        .await?
        .into_inner();
    let mut run_id = String::new();
    while let Some(message) = stream.message().await? {
        match message.event.and_then(|e| e.event) {
            Some(Event::RunStarted(started)) => run_id = started.run_id,
            Some(Event::TableProgress(_)) => break,
            _ => {}
        }
    }
    drop(stream);

    // The record closes once the copy stopped; the target then holds whole
    // batches only, and the stray row.
    let mut history = s.fleet.history.connect().await?;
    let mut status = String::new();
    for _ in 0..100 {
        status = sqlx::query_scalar("SELECT status FROM pgfleet.executions WHERE id = $1::uuid")
            .bind(&run_id)
            .fetch_one(&mut history)
            .await?;
        if status != "RUNNING" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(status, "FAILED");
    let code: Option<String> = sqlx::query_scalar(
        "SELECT outcomes -> 0 -> 'error' ->> 'code' FROM pgfleet.executions WHERE id = $1::uuid",
    )
    .bind(&run_id)
    .fetch_one(&mut history)
    .await?;
    assert_eq!(code.as_deref(), Some("ERROR_CODE_CANCELLED"));
    let copied = count(&s, "gcp", "app", "public.orders").await? - 1;
    assert!(
        copied > 0 && copied < 20000 && copied % 100 == 0,
        "{copied} rows copied"
    );
    assert_eq!(
        scalar(&s, "gcp", "app", "SELECT note FROM public.orders WHERE id = -1").await?,
        Some("stray".to_owned())
    );

    s.server.shutdown().await?;
    Ok(())
}
