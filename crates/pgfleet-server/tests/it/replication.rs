//! ReplicationService jobs end to end: a real server, its history store and
//! a fleet of real databases (aws and gcp, each with app and analytics)
//! whose catalogs decide whether a job may be stored.

use std::time::Duration;

use pgfleet_engine::replication::jobs::{JobStore, JobStoreError};
use pgfleet_proto::pgfleet::v1 as pb;
use pgfleet_proto::pgfleet::v1::replication_service_client::ReplicationServiceClient;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::support::{
    Session, api_key, auth_client, bad_field, bearer, fleet_database, run_sql, session, target,
};

/// The table every database of the fleet gets.
const ORDERS: &str = "CREATE TABLE public.orders (
    id bigint PRIMARY KEY,
    amount numeric(12,2) NOT NULL,
    note text,
    seq integer NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now()
)";

fn client(s: &Session) -> ReplicationServiceClient<Channel> {
    ReplicationServiceClient::new(s.channel.clone())
}

/// Runs `sql` on every database of the fleet.
async fn run_everywhere(s: &Session, sql: &str) -> anyhow::Result<()> {
    for (cloud, name) in [
        ("aws", "app"),
        ("aws", "analytics"),
        ("gcp", "app"),
        ("gcp", "analytics"),
    ] {
        run_sql(s, cloud, name, sql).await?;
    }
    Ok(())
}

/// A valid incremental job of `public.orders` from aws/app to gcp/app and
/// gcp/analytics.
fn job(name: &str) -> pb::ReplicationJob {
    pb::ReplicationJob {
        name: name.to_owned(),
        source: Some(target("aws", "app")),
        targets: vec![target("gcp", "app"), target("gcp", "analytics")],
        tables: vec!["public.orders".to_owned()],
        sync_key: "updated_at".to_owned(),
        interval: Some(prost_types::Duration {
            seconds: 300,
            nanos: 0,
        }),
        enabled: true,
        mode: pb::ReplicationMode::Incremental.into(),
        batch_size: 0,
        overlap: Some(prost_types::Duration { seconds: 5, nanos: 0 }),
        ..Default::default()
    }
}

async fn create(
    s: &Session,
    job: pb::ReplicationJob,
    validate_only: bool,
) -> Result<pb::ReplicationJob, Status> {
    let response = client(s)
        .create_job(bearer(
            pb::CreateJobRequest {
                job: Some(job),
                validate_only,
            },
            &s.master,
        ))
        .await?;
    Ok(response.into_inner().job.unwrap_or_default())
}

async fn list_all(s: &Session, token: &str, page_size: i32) -> Result<Vec<pb::ReplicationJob>, Status> {
    let mut jobs = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client(s)
            .list_jobs(bearer(
                pb::ListJobsRequest {
                    page_size,
                    page_token: page_token.clone(),
                },
                token,
            ))
            .await?
            .into_inner();
        jobs.extend(page.jobs);
        if page.next_page_token.is_empty() {
            return Ok(jobs);
        }
        page_token = page.next_page_token;
    }
}

fn mask(paths: &[&str]) -> Option<prost_types::FieldMask> {
    Some(prost_types::FieldMask {
        paths: paths.iter().map(|p| (*p).to_owned()).collect(),
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn jobs_round_trip_create_get_list_update_delete() -> anyhow::Result<()> {
    let s = session("").await?;
    run_everywhere(&s, ORDERS).await?;

    // Created as given, with defaults resolved, the table in PostgreSQL's
    // spelling and the creator recorded.
    let before = chrono::Utc::now().timestamp() - 1;
    let created = create(
        &s,
        pb::ReplicationJob {
            tables: vec!["Public.ORDERS".to_owned()],
            ..job("orders-to-gcp")
        },
        false,
    )
    .await?;
    assert!(uuid::Uuid::parse_str(&created.id).is_ok(), "{}", created.id);
    assert_eq!(created.name, "orders-to-gcp");
    assert_eq!(created.source, Some(target("aws", "app")));
    assert_eq!(
        created.targets,
        [target("gcp", "app"), target("gcp", "analytics")]
    );
    assert_eq!(created.tables, ["public.orders"]);
    assert_eq!(created.sync_key, "updated_at");
    assert_eq!(created.interval.map(|d| d.seconds), Some(300));
    assert_eq!(created.overlap.map(|d| d.seconds), Some(5));
    assert_eq!(created.batch_size, 10_000, "0 means the default");
    assert_eq!(created.mode, pb::ReplicationMode::Incremental as i32);
    assert!(created.enabled);
    assert_eq!(created.created_by, "s-master");
    assert!(created.created_at.as_ref().is_some_and(|t| t.seconds >= before));
    assert_eq!(created.created_at, created.updated_at);
    // Enabled with an interval and never run: due at once.
    assert!(
        created.next_run_at.as_ref().is_some_and(|t| t.seconds >= before),
        "{:?}",
        created.next_run_at
    );

    let got = client(&s)
        .get_job(bearer(
            pb::GetJobRequest {
                id: created.id.clone(),
            },
            &s.reader,
        ))
        .await?
        .into_inner()
        .job;
    assert_eq!(got.as_ref(), Some(&created));

    // A taken name is ALREADY_EXISTS, whatever else the job says.
    let duplicate = create(&s, job("orders-to-gcp"), false).await.err();
    assert_eq!(duplicate.map(|e| e.code()), Some(Code::AlreadyExists));

    // validate_only checks everything and stores nothing.
    let checked = create(&s, job("only-checked"), true).await?;
    assert_eq!(checked.id, "");
    assert_eq!(checked.name, "only-checked");
    assert_eq!(checked.tables, ["public.orders"]);
    let duplicate_checked = create(&s, job("orders-to-gcp"), true).await.err();
    assert_eq!(duplicate_checked.map(|e| e.code()), Some(Code::AlreadyExists));

    // Listing: ordered by name, in pages, for every role.
    for name in ["c-job", "a-job", "b-job", "d-job"] {
        create(&s, job(name), false).await?;
    }
    let first = client(&s)
        .list_jobs(bearer(
            pb::ListJobsRequest {
                page_size: 2,
                page_token: String::new(),
            },
            &s.user,
        ))
        .await?
        .into_inner();
    let names: Vec<&str> = first.jobs.iter().map(|j| j.name.as_str()).collect();
    assert_eq!(names, ["a-job", "b-job"]);
    assert!(!first.next_page_token.is_empty());
    for (token, page_size) in [(&s.user, 2), (&s.reader, 0), (&s.master, 500), (&s.master, 1)] {
        let names: Vec<String> = list_all(&s, token, page_size)
            .await?
            .into_iter()
            .map(|j| j.name)
            .collect();
        assert_eq!(
            names,
            ["a-job", "b-job", "c-job", "d-job", "orders-to-gcp"],
            "page size {page_size}"
        );
    }
    for bad_size in [501, -1] {
        let error = client(&s)
            .list_jobs(bearer(
                pb::ListJobsRequest {
                    page_size: bad_size,
                    page_token: String::new(),
                },
                &s.user,
            ))
            .await
            .err();
        assert_eq!(error.map(|e| bad_field(&e)).as_deref(), Some("page_size"));
    }
    let error = client(&s)
        .list_jobs(bearer(
            pb::ListJobsRequest {
                page_size: 0,
                page_token: "garbage".to_owned(),
            },
            &s.user,
        ))
        .await
        .err();
    assert_eq!(error.map(|e| bad_field(&e)).as_deref(), Some("page_token"));

    // An API key sees only jobs whose databases are all in its allow-list:
    // every job here writes to gcp.
    for (cloud, expected) in [("aws", 0), ("*", 5)] {
        let key = auth_client(&s.channel)
            .create_api_key(bearer(
                pb::CreateApiKeyRequest {
                    name: format!("svc-{}", expected),
                    role: pb::Role::Reader.into(),
                    expires_at: None,
                    allowed_targets: vec![pb::TargetPattern {
                        cloud: cloud.to_owned(),
                        database: "*".to_owned(),
                    }],
                },
                &s.master,
            ))
            .await?
            .into_inner()
            .secret;
        let listed = client(&s)
            .list_jobs(api_key(pb::ListJobsRequest::default(), &key))
            .await?
            .into_inner()
            .jobs;
        assert_eq!(listed.len(), expected, "key for {cloud}/*");
        let got = client(&s)
            .get_job(api_key(
                pb::GetJobRequest {
                    id: created.id.clone(),
                },
                &key,
            ))
            .await
            .map(|_| Code::Ok)
            .unwrap_or_else(|e| e.code());
        assert_eq!(got, if expected == 0 { Code::NotFound } else { Code::Ok });
    }

    // Only MASTER manages jobs.
    let denied = client(&s)
        .create_job(bearer(
            pb::CreateJobRequest {
                job: Some(job("by-user")),
                validate_only: false,
            },
            &s.user,
        ))
        .await
        .err();
    assert_eq!(denied.map(|e| e.code()), Some(Code::PermissionDenied));

    // Update: only the masked fields change; the rest stay as stored.
    let updated = client(&s)
        .update_job(bearer(
            pb::UpdateJobRequest {
                job: Some(pb::ReplicationJob {
                    id: created.id.clone(),
                    enabled: false,
                    interval: Some(prost_types::Duration {
                        seconds: 60,
                        nanos: 0,
                    }),
                    name: "ignored-because-not-masked".to_owned(),
                    tables: vec!["public.nothing".to_owned()],
                    ..Default::default()
                }),
                update_mask: mask(&["enabled", "interval"]),
            },
            &s.master,
        ))
        .await?
        .into_inner()
        .job
        .unwrap_or_default();
    assert!(!updated.enabled);
    assert_eq!(updated.interval.map(|d| d.seconds), Some(60));
    assert_eq!(updated.name, created.name);
    assert_eq!(updated.tables, created.tables);
    assert_eq!(updated.targets, created.targets);
    assert_eq!(updated.created_at, created.created_at);
    assert_eq!(updated.created_by, "s-master");
    let instant = |t: &Option<prost_types::Timestamp>| t.as_ref().map(|t| (t.seconds, t.nanos));
    assert!(instant(&updated.updated_at) > instant(&created.updated_at));

    // Clearing a field through the mask: interval unset means on demand.
    let on_demand = client(&s)
        .update_job(bearer(
            pb::UpdateJobRequest {
                job: Some(pb::ReplicationJob {
                    id: created.id.clone(),
                    mode: pb::ReplicationMode::FullRefresh.into(),
                    ..Default::default()
                }),
                update_mask: mask(&["interval", "mode"]),
            },
            &s.master,
        ))
        .await?
        .into_inner()
        .job
        .unwrap_or_default();
    assert_eq!(on_demand.interval, None);
    assert_eq!(on_demand.mode, pb::ReplicationMode::FullRefresh as i32);
    assert_eq!(on_demand.sync_key, "updated_at");

    // Update refusals: mask required, output-only fields, taken names,
    // unknown and malformed ids.
    let update = |job: pb::ReplicationJob, update_mask: Option<prost_types::FieldMask>| {
        let mut client = client(&s);
        let master = s.master.clone();
        async move {
            client
                .update_job(bearer(
                    pb::UpdateJobRequest {
                        job: Some(job),
                        update_mask,
                    },
                    &master,
                ))
                .await
                .err()
        }
    };
    let with_id = |id: &str| pb::ReplicationJob {
        id: id.to_owned(),
        name: "a-job".to_owned(),
        ..Default::default()
    };
    let no_mask = update(with_id(&created.id), None).await;
    assert_eq!(no_mask.map(|e| bad_field(&e)).as_deref(), Some("update_mask"));
    let output_only = update(with_id(&created.id), mask(&["enabled", "created_at"])).await;
    assert_eq!(
        output_only.as_ref().map(|e| (e.code(), bad_field(e))),
        Some((Code::InvalidArgument, "update_mask".to_owned()))
    );
    let taken = update(with_id(&created.id), mask(&["name"])).await;
    assert_eq!(taken.map(|e| e.code()), Some(Code::AlreadyExists));
    let unknown = update(with_id(&uuid::Uuid::new_v4().to_string()), mask(&["name"])).await;
    assert_eq!(unknown.map(|e| e.code()), Some(Code::NotFound));
    let malformed = update(with_id("not-a-uuid"), mask(&["name"])).await;
    assert_eq!(malformed.map(|e| bad_field(&e)).as_deref(), Some("job.id"));

    // A changed table list is checked against the catalogs again.
    run_sql(
        &s,
        "aws",
        "app",
        "CREATE TABLE public.loose (id int, updated_at timestamptz)",
    )
    .await?;
    let unkeyed = update(
        pb::ReplicationJob {
            id: created.id.clone(),
            tables: vec!["public.orders".to_owned(), "public.loose".to_owned()],
            ..Default::default()
        },
        mask(&["tables"]),
    )
    .await;
    assert_eq!(
        unkeyed.as_ref().map(Status::code),
        Some(Code::FailedPrecondition),
        "{unkeyed:?}"
    );

    // An update checked against an older version of the job is not written.
    let history = s.fleet.history.pool().await?;
    let store = JobStore::new(history.clone());
    let id = uuid::Uuid::parse_str(&created.id)?;
    let stored = store.get(id).await?.expect("stored job");
    assert_eq!(stored.revision, 3, "created, then updated twice");
    let stale = store.update(id, stored.revision - 1, &stored.spec).await;
    assert!(matches!(stale, Err(JobStoreError::Conflict(_))), "{stale:?}");
    assert_eq!(store.get(id).await?.map(|job| job.revision), Some(3));

    // Delete takes the job's watermarks with it.
    sqlx::query(
        "INSERT INTO pgfleet.replication_watermarks (job_id, table_name, cloud, database, watermark) \
         VALUES ($1, 'public.orders', 'gcp', 'app', '2024-01-01 00:00:00+00')",
    )
    .bind(uuid::Uuid::parse_str(&created.id)?)
    .execute(&history)
    .await?;
    client(&s)
        .delete_job(bearer(
            pb::DeleteJobRequest {
                id: created.id.clone(),
            },
            &s.master,
        ))
        .await?;
    let watermarks: i64 = sqlx::query_scalar("SELECT count(*) FROM pgfleet.replication_watermarks")
        .fetch_one(&history)
        .await?;
    assert_eq!(watermarks, 0);
    history.close().await;
    for token in [&s.master, &s.reader] {
        let gone = client(&s)
            .get_job(bearer(
                pb::GetJobRequest {
                    id: created.id.clone(),
                },
                token,
            ))
            .await
            .err();
        assert_eq!(gone.map(|e| e.code()), Some(Code::NotFound));
    }
    let again = client(&s)
        .delete_job(bearer(
            pb::DeleteJobRequest {
                id: created.id.clone(),
            },
            &s.master,
        ))
        .await
        .err();
    assert_eq!(again.map(|e| e.code()), Some(Code::NotFound));
    let malformed = client(&s)
        .get_job(bearer(pb::GetJobRequest { id: "42".to_owned() }, &s.user))
        .await
        .err();
    assert_eq!(malformed.map(|e| bad_field(&e)).as_deref(), Some("id"));
    let names: Vec<String> = list_all(&s, &s.master, 0)
        .await?
        .into_iter()
        .map(|j| j.name)
        .collect();
    assert_eq!(names, ["a-job", "b-job", "c-job", "d-job"]);

    // Status lists every job a caller may see, in name order, never run yet.
    let status = client(&s)
        .get_status(bearer(
            pb::GetStatusRequest {
                skip_row_counts: true,
                ..Default::default()
            },
            &s.reader,
        ))
        .await?
        .into_inner();
    let names: Vec<&str> = status.jobs.iter().map(|j| j.job_name.as_str()).collect();
    assert_eq!(names, ["a-job", "b-job", "c-job", "d-job"]);
    assert!(
        status
            .jobs
            .iter()
            .all(|j| j.last_outcome == pb::ReplicationOutcome::Unspecified as i32 && !j.running)
    );

    s.server.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn catalogs_refuse_tables_that_cannot_be_copied() -> anyhow::Result<()> {
    let s = session("").await?;
    run_everywhere(&s, ORDERS).await?;
    run_everywhere(&s, "CREATE TABLE public.events (id bigint, at timestamptz)").await?;
    // gcp/analytics drifted: a column changed type, one is missing, one extra.
    run_sql(
        &s,
        "gcp",
        "analytics",
        "DROP TABLE public.orders; CREATE TABLE public.orders (
            id bigint PRIMARY KEY, amount text NOT NULL, seq integer NOT NULL DEFAULT 0,
            updated_at timestamptz NOT NULL DEFAULT now(), extra int)",
    )
    .await?;
    run_everywhere(&s, "CREATE VIEW public.order_view AS SELECT * FROM public.orders").await?;
    run_sql(
        &s,
        "gcp",
        "app",
        "CREATE TABLE public.only_here (id int PRIMARY KEY)",
    )
    .await?;
    run_sql(
        &s,
        "aws",
        "app",
        "CREATE TABLE public.only_here (id int PRIMARY KEY)",
    )
    .await?;

    let refusal = |job: pb::ReplicationJob| {
        let s = &s;
        async move {
            match create(s, job, true).await {
                Ok(job) => panic!("accepted {job:?}"),
                Err(status) => status,
            }
        }
    };

    // No primary key on the source: the table and the source are named.
    let status = refusal(pb::ReplicationJob {
        tables: vec!["public.events".to_owned()],
        sync_key: "at".to_owned(),
        overlap: None,
        ..job("events")
    })
    .await;
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(
        status
            .message()
            .contains("public.events on aws/app (the source) has no primary key"),
        "{}",
        status.message()
    );

    // Column mismatches are listed per target, never patched.
    let status = refusal(job("drifted")).await;
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    let message = status.message();
    for phrase in [
        "public.orders on gcp/analytics differs from aws/app",
        "column \"amount\" is text instead of numeric(12,2)",
        "column \"note\" (text) is missing",
        "column \"extra\" (integer) is not on the source",
    ] {
        assert!(message.contains(phrase), "{phrase:?} not in {message}");
    }
    assert!(!message.contains("gcp/app"), "gcp/app matches: {message}");
    let columns: Vec<String> = sqlx::query_scalar(
        "SELECT column_name::text FROM information_schema.columns \
         WHERE table_schema = 'public' AND table_name = 'orders' ORDER BY ordinal_position",
    )
    .fetch_all(&mut fleet_database(&s, "gcp", "analytics").connect().await?)
    .await?;
    assert_eq!(
        columns,
        ["id", "amount", "seq", "updated_at", "extra"],
        "nothing patched"
    );

    // Missing on a target, and not a table at all.
    let status = refusal(pb::ReplicationJob {
        tables: vec!["public.only_here".to_owned()],
        sync_key: String::new(),
        overlap: None,
        mode: pb::ReplicationMode::FullRefresh.into(),
        targets: vec![target("gcp", "app"), target("aws", "analytics")],
        ..job("missing")
    })
    .await;
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status
            .message()
            .contains("public.only_here does not exist on aws/analytics"),
        "{}",
        status.message()
    );
    let status = refusal(pb::ReplicationJob {
        tables: vec!["public.order_view".to_owned()],
        targets: vec![target("gcp", "app")],
        ..job("view")
    })
    .await;
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().contains("is a view, not a table"),
        "{}",
        status.message()
    );

    // The sync key must be a column of an orderable type.
    let only_app = |job: pb::ReplicationJob| pb::ReplicationJob {
        targets: vec![target("gcp", "app")],
        ..job
    };
    for (sync_key, overlap, field, phrase) in [
        ("note", None, "job.sync_key", "public.orders.note is text"),
        ("nope", None, "job.sync_key", "has no column \"nope\""),
        ("seq", Some(5), "job.overlap", "public.orders.seq is integer"),
    ] {
        let status = refusal(only_app(pb::ReplicationJob {
            sync_key: sync_key.to_owned(),
            overlap: overlap.map(|seconds| prost_types::Duration { seconds, nanos: 0 }),
            ..job("keys")
        }))
        .await;
        assert_eq!(
            (status.code(), bad_field(&status)),
            (Code::InvalidArgument, field.to_owned()),
            "{sync_key}: {status:?}"
        );
        assert!(
            status.message().contains(phrase),
            "{sync_key}: {}",
            status.message()
        );
    }
    // Integer keys are fine without an overlap window.
    let accepted = create(
        &s,
        only_app(pb::ReplicationJob {
            sync_key: "seq".to_owned(),
            overlap: None,
            ..job("integer-key")
        }),
        true,
    )
    .await?;
    assert_eq!(accepted.sync_key, "seq");

    // Nothing was stored by any of this.
    assert!(list_all(&s, &s.master, 0).await?.is_empty());
    s.server.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_fields_name_the_field() -> anyhow::Result<()> {
    let s = session("").await?;
    run_everywhere(&s, ORDERS).await?;

    type Edit = fn(&mut pb::ReplicationJob);
    let cases: [(&str, Edit, Code, &str); 17] = [
        (
            "empty name",
            |j| j.name.clear(),
            Code::InvalidArgument,
            "job.name",
        ),
        (
            "odd name",
            |j| j.name = "a b".to_owned(),
            Code::InvalidArgument,
            "job.name",
        ),
        (
            "no source",
            |j| j.source = None,
            Code::InvalidArgument,
            "job.source",
        ),
        (
            "no targets",
            |j| j.targets.clear(),
            Code::InvalidArgument,
            "job.targets",
        ),
        (
            "target without cloud",
            |j| j.targets[1].cloud.clear(),
            Code::InvalidArgument,
            "job.targets[1].cloud",
        ),
        (
            "unknown cloud",
            |j| j.targets[1].cloud = "azure".to_owned(),
            Code::NotFound,
            "job.targets[1]: no cloud \"azure\"",
        ),
        (
            "unknown database",
            |j| j.source = Some(target("aws", "billing")),
            Code::NotFound,
            "job.source: no database \"billing\" in cloud \"aws\"",
        ),
        (
            "source as target",
            |j| j.targets[0] = target("aws", "app"),
            Code::InvalidArgument,
            "job.targets[0]",
        ),
        (
            "duplicate target",
            |j| j.targets[1] = target("gcp", "app"),
            Code::InvalidArgument,
            "job.targets[1]",
        ),
        (
            "no tables",
            |j| j.tables.clear(),
            Code::InvalidArgument,
            "job.tables",
        ),
        (
            "unqualified table",
            |j| j.tables = vec!["orders".to_owned()],
            Code::InvalidArgument,
            "job.tables[0]",
        ),
        (
            "duplicate table",
            |j| j.tables.push("PUBLIC.orders".to_owned()),
            Code::InvalidArgument,
            "job.tables[1]",
        ),
        (
            "incremental without sync key",
            |j| j.sync_key.clear(),
            Code::InvalidArgument,
            "job.sync_key",
        ),
        (
            "sub-second interval",
            |j| {
                j.interval = Some(prost_types::Duration {
                    seconds: 0,
                    nanos: 500_000_000,
                })
            },
            Code::InvalidArgument,
            "job.interval",
        ),
        ("no mode", |j| j.mode = 0, Code::InvalidArgument, "job.mode"),
        (
            "huge batch",
            |j| j.batch_size = 50_000_000,
            Code::InvalidArgument,
            "job.batch_size",
        ),
        (
            "negative overlap",
            |j| {
                j.overlap = Some(prost_types::Duration {
                    seconds: -5,
                    nanos: 0,
                })
            },
            Code::InvalidArgument,
            "job.overlap",
        ),
    ];
    let mut failures = Vec::new();
    for (case, edit, code, field) in cases {
        let mut wire = job("fields");
        edit(&mut wire);
        match create(&s, wire, false).await {
            Ok(_) => failures.push(format!("{case}: accepted")),
            Err(status) => {
                let named = if code == Code::InvalidArgument {
                    bad_field(&status) == field
                } else {
                    status.message().starts_with(field)
                };
                if status.code() != code || !named {
                    failures.push(format!(
                        "{case}: got {:?} {:?} (field {:?}), expected {code:?} {field:?}",
                        status.code(),
                        status.message(),
                        bad_field(&status)
                    ));
                }
            }
        }
    }
    let missing_job = client(&s)
        .create_job(bearer(pb::CreateJobRequest::default(), &s.master))
        .await
        .err();
    assert_eq!(missing_job.map(|e| bad_field(&e)).as_deref(), Some("job"));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(list_all(&s, &s.master, 0).await?.is_empty());
    s.server.shutdown().await?;
    Ok(())
}

/// `[[replication.jobs]]` for [`jobs_declared_in_the_file_are_created_then_kept_as_declared`].
/// `then` is declared last: once it is stored, the others were applied.
fn declared_jobs(interval: &str, enabled: bool, then: &str) -> String {
    let mut declared = format!(
        "scheduler = false\n\
         [[replication.jobs]]\nname = 'declared-missing'\nsource = 'aws/app'\ntargets = ['gcp/app']\n\
         tables = ['public.no_such_table']\n\
         [[replication.jobs]]\nname = 'declared-orders'\nsource = 'aws/app'\ntargets = ['gcp/app']\n\
         tables = ['public.orders']\nsync_key = 'updated_at'\ninterval = '{interval}'\nenabled = {enabled}\n"
    );
    if !then.is_empty() {
        declared.push_str(&format!(
            "[[replication.jobs]]\nname = '{then}'\nsource = 'aws/app'\ntargets = ['gcp/app']\ntables = ['public.orders']\n"
        ));
    }
    declared
}

/// Jobs in the file are made stored jobs at start (the seed set its jobs up
/// at start): created the first time, updated to match the file after an
/// edit (the same job, not a new one), left alone when they already match;
/// a job that does not fit its tables is refused without stopping the server.
#[tokio::test(flavor = "multi_thread")]
async fn jobs_declared_in_the_file_are_created_then_kept_as_declared() -> anyhow::Result<()> {
    use pgfleet_engine::replication::Mode;
    use pgfleet_engine::replication::declared::DECLARED_BY;

    let mut fleet = crate::support::Fleet::create().await?;
    for (cloud, name) in [("aws", "app"), ("gcp", "app")] {
        let database = fleet
            .databases
            .iter()
            .find(|(c, n, _)| c == cloud && n == name)
            .map(|(_, _, db)| db)
            .ok_or_else(|| anyhow::anyhow!("no {cloud}/{name}"))?;
        sqlx::query(ORDERS).execute(&database.pool().await?).await?;
    }
    let store = JobStore::new(fleet.history.pool().await?);
    let stored = async |store: &JobStore, want: &dyn Fn(&pgfleet_engine::replication::Job) -> bool| {
        pgfleet_testkit::wait_until(Duration::from_secs(20), Duration::from_millis(50), async || {
            anyhow::Ok(
                store
                    .get_by_name("declared-orders")
                    .await?
                    .is_some_and(|job| want(&job)),
            )
        })
        .await?;
        anyhow::Ok(
            store
                .get_by_name("declared-orders")
                .await?
                .expect("waited for it"),
        )
    };

    fleet.replication_toml = declared_jobs("5m", true, "");
    let server = fleet.start("").await?;
    let created = stored(&store, &|_| true).await?;
    assert_eq!(created.created_by, DECLARED_BY);
    assert_eq!(
        created.spec.tables,
        ["public.orders"],
        "checked and spelled as PostgreSQL does"
    );
    assert_eq!(
        created.spec.mode,
        Mode::Incremental,
        "a sync key and no mode: incremental"
    );
    assert_eq!(created.spec.interval, Some(Duration::from_secs(300)));
    // Declared before the good one and refused: never stored.
    assert!(store.get_by_name("declared-missing").await?.is_none());
    server.shutdown().await?;

    fleet.replication_toml = declared_jobs("10m", false, "");
    let server = fleet.start("").await?;
    let updated = stored(&store, &|job| job.revision > created.revision).await?;
    assert_eq!(updated.id, created.id, "the stored job is updated, not replaced");
    assert_eq!(updated.spec.interval, Some(Duration::from_secs(600)));
    assert!(!updated.spec.enabled);
    server.shutdown().await?;

    // Unchanged but for a job declared after it: once that one is stored,
    // this one was looked at, and left as it was.
    fleet.replication_toml = declared_jobs("10m", false, "declared-marker");
    let server = fleet.start("").await?;
    pgfleet_testkit::wait_until(Duration::from_secs(20), Duration::from_millis(50), async || {
        anyhow::Ok(store.get_by_name("declared-marker").await?.is_some())
    })
    .await?;
    let unchanged = store.get_by_name("declared-orders").await?.expect("still stored");
    assert_eq!(unchanged, updated, "an unchanged declaration rewrote the job");
    server.shutdown().await?;
    Ok(())
}
