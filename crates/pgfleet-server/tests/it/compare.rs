//! CompareTables on real copies: two 1,000,000-row tables that differ in
//! 7 rows (updates, inserts, deletes spread across the key space) report
//! exactly those 7 keys, having moved a small part of the rows; identical
//! copies, a filter and a column subset; the refusals. `Execute` and
//! `ExecuteStream` with `compare`: a fan-out read's rows per target set
//! against the first target's.

use pgfleet_proto::pgfleet::v1 as pb;
use pgfleet_proto::pgfleet::v1::query_service_client::QueryServiceClient;
use tonic::Code;

use crate::support::{Session, bad_field, bearer, orders_sql, run_sql, session};

/// `orders (id bigint primary key, customer int, note text)` with
/// `rows` rows on aws/app and gcp/app.
async fn orders(s: &Session, rows: i64) -> anyhow::Result<()> {
    for cloud in ["aws", "gcp"] {
        run_sql(s, cloud, "app", &orders_sql(rows)).await?;
    }
    Ok(())
}

/// Runs CompareTables; the differences as (cloud, key, kind) and the summary.
pub async fn compare(
    s: &Session,
    token: &str,
    request: pb::CompareTablesRequest,
) -> Result<(Vec<(String, i64, pb::DifferenceKind)>, pb::CompareFinished), tonic::Status> {
    let mut stream = QueryServiceClient::new(s.channel.clone())
        .compare_tables(bearer(request, token))
        .await?
        .into_inner();
    let mut differences = Vec::new();
    let mut finished = None;
    let mut started = false;
    while let Some(message) = stream.message().await? {
        match message.event {
            Some(pb::compare_tables_response::Event::Started(begin)) => {
                assert!(!started && finished.is_none(), "Started comes first, once");
                assert_eq!(begin.key_column, "id");
                started = true;
            }
            Some(pb::compare_tables_response::Event::Difference(difference)) => {
                differences.push((
                    difference.target.clone().unwrap_or_default().cloud,
                    difference.key,
                    difference.kind(),
                ));
            }
            Some(pb::compare_tables_response::Event::Finished(summary)) => finished = Some(summary),
            None => {}
        }
    }
    differences.sort_by_key(|(cloud, key, _)| (cloud.clone(), *key));
    Ok((differences, finished.unwrap_or_default()))
}

fn request(table: &str) -> pb::CompareTablesRequest {
    pb::CompareTablesRequest {
        database: "app".to_owned(),
        table: table.to_owned(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn two_million_row_copies_differing_in_seven_rows_report_exactly_those_keys() -> anyhow::Result<()> {
    let s = session("").await?;
    orders(&s, 1_000_000).await?;
    let (differences, summary) = compare(&s, &s.reader, request("public.orders")).await?;
    assert_eq!(differences, [], "identical copies");
    assert!(summary.identical, "{summary:?}");
    assert_eq!(summary.rows_in_tables, 2_000_000);
    // Identical: the top-level checksums only.
    assert!(summary.rows_transferred <= 2 * 40, "{summary:?}");

    // gcp's copy drifts: 3 updates, 2 inserts, 2 deletes across the keys.
    run_sql(
        &s,
        "gcp",
        "app",
        "UPDATE orders SET note = 'changed' WHERE id IN (17, 500001);\n\
         UPDATE orders SET customer = NULL WHERE id = 999999;\n\
         INSERT INTO orders VALUES (1000007, 1, 'extra'), (0, 2, 'extra');\n\
         DELETE FROM orders WHERE id IN (250000, 750123);",
    )
    .await?;
    let (differences, summary) = compare(&s, &s.reader, request("orders")).await?;
    use pb::DifferenceKind::{Changed, Extra, Missing};
    let gcp = |key, kind| ("gcp".to_owned(), key, kind);
    assert_eq!(
        differences,
        [
            gcp(0, Extra),
            gcp(17, Changed),
            gcp(250_000, Missing),
            gcp(500_001, Changed),
            gcp(750_123, Missing),
            gcp(999_999, Changed),
            gcp(1_000_007, Extra),
        ]
    );
    assert!(!summary.identical);
    assert_eq!(summary.differences, 7);
    assert_eq!(summary.rows_in_tables, 2_000_000);
    // A few ranges moved, not the tables: under 2% of a full read.
    assert!(
        summary.rows_transferred * 50 < summary.rows_in_tables,
        "{summary:?}"
    );

    // A column subset that leaves out `note`: only the customer change.
    let (differences, _) = compare(
        &s,
        &s.user,
        pb::CompareTablesRequest {
            columns: vec!["customer".to_owned()],
            ..request("orders")
        },
    )
    .await?;
    assert_eq!(
        differences,
        [
            gcp(0, Extra),
            gcp(250_000, Missing),
            gcp(750_123, Missing),
            gcp(999_999, Changed),
            gcp(1_000_007, Extra),
        ]
    );
    // A filter on the first half of the keys.
    let (differences, summary) = compare(
        &s,
        &s.user,
        pb::CompareTablesRequest {
            filter: "id BETWEEN 1 AND 500000".to_owned(),
            ..request("orders")
        },
    )
    .await?;
    assert_eq!(differences, [gcp(17, Changed), gcp(250_000, Missing)]);
    assert_eq!(summary.rows_in_tables, 500_000 + 499_999);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn compare_tables_refuses_what_it_cannot_compare_and_writes_nothing() -> anyhow::Result<()> {
    let s = session("").await?;
    orders(&s, 10).await?;
    for (case, request, code, field) in [
        ("no table", request(""), Code::InvalidArgument, "table"),
        (
            "a filter that writes",
            pb::CompareTablesRequest {
                filter: "id IN (SELECT id FROM orders FOR UPDATE)".to_owned(),
                ..request("orders")
            },
            Code::InvalidArgument,
            "filter",
        ),
        (
            "a filter that closes its parenthesis",
            pb::CompareTablesRequest {
                filter: "true) UNION SELECT (1".to_owned(),
                ..request("orders")
            },
            Code::InvalidArgument,
            "filter",
        ),
        (
            "a second statement",
            pb::CompareTablesRequest {
                filter: "true); DELETE FROM orders; SELECT (true".to_owned(),
                ..request("orders")
            },
            Code::InvalidArgument,
            "filter",
        ),
        (
            "an unknown column",
            pb::CompareTablesRequest {
                columns: vec!["nope".to_owned()],
                ..request("orders")
            },
            Code::InvalidArgument,
            "columns[0]",
        ),
        ("an unknown table", request("public.nope"), Code::NotFound, ""),
        (
            "one copy only",
            pb::CompareTablesRequest {
                clouds: vec!["aws".to_owned()],
                ..request("orders")
            },
            Code::FailedPrecondition,
            "",
        ),
    ] {
        let status = compare(&s, &s.user, request).await.expect_err(case);
        assert_eq!(status.code(), code, "{case}: {status:?}");
        if !field.is_empty() {
            assert_eq!(bad_field(&status), field, "{case}: {status:?}");
        }
    }
    // A READER's writing filter is refused for the role first.
    let status = compare(
        &s,
        &s.reader,
        pb::CompareTablesRequest {
            filter: "id IN (SELECT id FROM orders FOR UPDATE)".to_owned(),
            ..request("orders")
        },
    )
    .await
    .expect_err("a READER's writing filter");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    run_sql(
        &s,
        "aws",
        "app",
        "CREATE TABLE pairs (a int, b int, PRIMARY KEY (a, b))",
    )
    .await?;
    run_sql(
        &s,
        "gcp",
        "app",
        "CREATE TABLE pairs (a int, b int, PRIMARY KEY (a, b))",
    )
    .await?;
    let status = compare(&s, &s.reader, request("pairs"))
        .await
        .expect_err("composite key");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("one integer column"), "{status:?}");
    for cloud in ["aws", "gcp"] {
        assert_eq!(
            crate::support::count(&s, cloud, "app", "orders").await?,
            10,
            "{cloud}"
        );
    }
    Ok(())
}

fn int_row(values: &[i64]) -> pb::Row {
    pb::Row {
        cells: values
            .iter()
            .map(|&value| pb::Cell {
                kind: Some(pb::cell::Kind::IntValue(value)),
            })
            .collect(),
    }
}

fn read_orders(key_columns: &[&str]) -> pb::ExecuteRequest {
    pb::ExecuteRequest {
        query: "SELECT id, note FROM orders ORDER BY id".to_owned(),
        database: "app".to_owned(),
        scope: Some(pb::execute_request::Scope::AllClouds(pb::AllClouds {})),
        compare: Some(pb::RowComparisonSpec {
            key_columns: key_columns.iter().map(|k| (*k).to_owned()).collect(),
            max_samples: 0,
        }),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fan_out_read_with_compare_reports_the_rows_that_differ_per_target() -> anyhow::Result<()> {
    let s = session("").await?;
    orders(&s, 1_000).await?;
    let mut client = QueryServiceClient::new(s.channel.clone());
    let same = client
        .execute(bearer(read_orders(&["id"]), &s.reader))
        .await?
        .into_inner();
    assert!(same.success);
    assert_eq!(same.comparisons.len(), 1, "{:?}", same.comparisons);
    let divergence = &same.comparisons[0].targets[0];
    assert!(divergence.agrees, "{divergence:?}");
    assert_eq!(
        (same.comparisons[0].reference_rows, divergence.rows),
        (1_000, 1_000)
    );

    run_sql(
        &s,
        "gcp",
        "app",
        "UPDATE orders SET note = 'changed' WHERE id = 17;\n\
         DELETE FROM orders WHERE id IN (500, 501);\n\
         INSERT INTO orders VALUES (2000, 1, 'new');",
    )
    .await?;
    let keyed = client
        .execute(bearer(read_orders(&["id"]), &s.reader))
        .await?
        .into_inner();
    let comparison = &keyed.comparisons[0];
    assert_eq!(comparison.reference.clone().unwrap_or_default().cloud, "aws");
    let divergence = &comparison.targets[0];
    assert_eq!(divergence.target.clone().unwrap_or_default().cloud, "gcp");
    assert_eq!(divergence.not_compared, "");
    assert!(!divergence.agrees);
    assert_eq!(
        (divergence.missing, divergence.extra, divergence.changed),
        (2, 1, 1)
    );
    assert_eq!(divergence.missing_samples, [int_row(&[500]), int_row(&[501])]);
    assert_eq!(divergence.extra_samples, [int_row(&[2000])]);
    assert_eq!(divergence.changed_samples, [int_row(&[17])]);
    assert!(!divergence.incomplete);

    // Whole rows: the changed row is one missing and one extra.
    let whole = client
        .execute(bearer(read_orders(&[]), &s.reader))
        .await?
        .into_inner();
    let divergence = &whole.comparisons[0].targets[0];
    assert_eq!(
        (divergence.missing, divergence.extra, divergence.changed),
        (3, 2, 0)
    );
    assert_eq!(divergence.missing_samples.len(), 3);

    // The same through ExecuteStream: after every target's summary, before
    // the last event.
    let mut stream = client
        .execute_stream(bearer(
            pb::ExecuteStreamRequest {
                query: "SELECT id, note FROM orders ORDER BY id".to_owned(),
                database: "app".to_owned(),
                scope: Some(pb::execute_stream_request::Scope::AllClouds(pb::AllClouds {})),
                batch_size: 100,
                compare: Some(pb::RowComparisonSpec {
                    key_columns: vec!["id".to_owned()],
                    max_samples: 1,
                }),
                ..Default::default()
            },
            &s.reader,
        ))
        .await?
        .into_inner();
    let mut kinds = Vec::new();
    let mut streamed = None;
    while let Some(message) = stream.message().await? {
        use pb::execute_stream_response::Event;
        match message.event {
            Some(Event::TargetSummary(_)) => kinds.push("target_summary"),
            Some(Event::ResultComparison(comparison)) => {
                kinds.push("result_comparison");
                streamed = Some(comparison);
            }
            Some(Event::ExecutionFinished(_)) => kinds.push("execution_finished"),
            _ => {}
        }
    }
    assert_eq!(
        kinds,
        [
            "target_summary",
            "target_summary",
            "result_comparison",
            "execution_finished"
        ]
    );
    let divergence = &streamed.unwrap_or_default().targets[0];
    assert_eq!(
        (divergence.missing, divergence.extra, divergence.changed),
        (2, 1, 1)
    );
    assert_eq!(divergence.missing_samples, [int_row(&[500])], "max_samples 1");

    // A key that is not in the result, and results of other shapes.
    let absent = client
        .execute(bearer(read_orders(&["customer"]), &s.reader))
        .await?
        .into_inner();
    assert_eq!(
        absent.comparisons[0].targets[0].not_compared,
        "the key column \"customer\" is not in the result"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn compare_refuses_one_target_and_bad_options_before_anything_runs() -> anyhow::Result<()> {
    let s = session("").await?;
    orders(&s, 10).await?;
    let mut client = QueryServiceClient::new(s.channel.clone());
    for (case, request, field) in [
        (
            "one target",
            pb::ExecuteRequest {
                scope: Some(pb::execute_request::Scope::Cloud("aws".to_owned())),
                ..read_orders(&["id"])
            },
            "compare",
        ),
        (
            "a key column named twice",
            read_orders(&["id", "id"]),
            "compare.key_columns[1]",
        ),
        (
            "too many samples",
            pb::ExecuteRequest {
                compare: Some(pb::RowComparisonSpec {
                    key_columns: Vec::new(),
                    max_samples: 1_001,
                }),
                ..read_orders(&[])
            },
            "compare.max_samples",
        ),
    ] {
        let status = client.execute(bearer(request, &s.reader)).await.expect_err(case);
        assert_eq!(status.code(), Code::InvalidArgument, "{case}: {status:?}");
        assert_eq!(bad_field(&status), field, "{case}: {status:?}");
    }
    Ok(())
}
