//! What `QueryService/CompareTables` moves and costs on two copies of a
//! 1,000,000-row table that differ in 7 rows, next to reading both copies
//! whole with `COPY … TO STDOUT`, in one run.
//!
//! aws/app and gcp/app (throwaway databases on the local PostgreSQL) each
//! hold `public.orders (id bigint primary key, customer int, note text)`
//! from `generate_series`; gcp's copy then gets 3 updates, 2 inserts and 2
//! deletes spread across the keys. Each repetition times:
//!
//! - `compare`: CompareTables as a READER (defaults: 32 segments, leaf
//!   ranges of at most 1000 rows), from the request to `CompareFinished`,
//!   which also reports the rows that crossed the wire and the rows of both
//!   tables (what a full read moves). The 7 keys must be reported.
//! - `copy`: `COPY public.orders TO STDOUT` of both copies, one after the
//!   other, by sqlx in this process (`copy_out_raw`), bytes counted and
//!   dropped: the lower bound of reading both tables to compare them
//!   outside the database.
//!
//! Prints each run, then the medians. Not criterion: one comparison takes
//! seconds. Run with `cargo bench -p pgfleet-server --bench compare`
//! (`PGFLEET_BENCH_ROWS`, default 1,000,000; `PGFLEET_BENCH_REPS`, default 3).

#[path = "../tests/it/support/mod.rs"]
#[allow(dead_code)]
mod support;

// The runner shared with the other benches (their other helpers unused here).
#[allow(dead_code)]
mod common;

use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::TryStreamExt as _;
use pgfleet_proto::pgfleet::v1 as pb;
use pgfleet_proto::pgfleet::v1::query_service_client::QueryServiceClient;

use support::{bearer, orders_sql, run_sql, session};

async fn bench(rows: u64, reps: usize) -> anyhow::Result<()> {
    let s = session("").await?;
    for cloud in ["aws", "gcp"] {
        run_sql(&s, cloud, "app", &orders_sql(rows)).await?;
    }
    let (a, b, c) = (rows / 7, rows / 2, rows - 1);
    run_sql(
        &s,
        "gcp",
        "app",
        &format!(
            "UPDATE orders SET note = 'changed' WHERE id IN (17, {b});\n\
             UPDATE orders SET customer = NULL WHERE id = {c};\n\
             INSERT INTO orders VALUES ({} , 1, 'extra'), (0, 2, 'extra');\n\
             DELETE FROM orders WHERE id IN ({a}, {});",
            rows + 7,
            rows * 3 / 4
        ),
    )
    .await?;
    println!("compare: two copies of {rows} rows differing in 7, {reps} repetitions");
    let mut compare_times = Vec::new();
    let mut copy_times = Vec::new();
    for rep in 1..=reps {
        let started = Instant::now();
        let mut stream = QueryServiceClient::new(s.channel.clone())
            .compare_tables(bearer(
                pb::CompareTablesRequest {
                    database: "app".to_owned(),
                    table: "public.orders".to_owned(),
                    ..Default::default()
                },
                &s.reader,
            ))
            .await?
            .into_inner();
        let mut differences = 0;
        let mut finished = None;
        while let Some(message) = stream.message().await? {
            match message.event {
                Some(pb::compare_tables_response::Event::Difference(_)) => differences += 1,
                Some(pb::compare_tables_response::Event::Finished(summary)) => finished = Some(summary),
                _ => {}
            }
        }
        let elapsed = started.elapsed();
        let summary = finished.context("no CompareFinished")?;
        anyhow::ensure!(differences == 7, "{differences} differences reported, 7 expected");
        println!(
            "  run {rep}: compare {:>8.3} s, {} rows crossed the wire of {} ({:.4}%), {} queries",
            elapsed.as_secs_f64(),
            summary.rows_transferred,
            summary.rows_in_tables,
            100.0 * summary.rows_transferred as f64 / summary.rows_in_tables.max(1) as f64,
            summary.queries
        );
        compare_times.push(elapsed);

        let started = Instant::now();
        let mut bytes = 0_u64;
        let mut copied = 0_u64;
        for cloud in ["aws", "gcp"] {
            let mut connection = s.fleet.database(cloud, "app").connect().await?;
            let mut out = connection.copy_out_raw("COPY public.orders TO STDOUT").await?;
            while let Some(chunk) = out.try_next().await? {
                bytes += chunk.len() as u64;
                copied += chunk.iter().filter(|&&b| b == b'\n').count() as u64;
            }
        }
        let elapsed = started.elapsed();
        println!(
            "  run {rep}: COPY of both {:>8.3} s, {copied} rows, {:.1} MiB",
            elapsed.as_secs_f64(),
            bytes as f64 / 1_048_576.0
        );
        copy_times.push(elapsed);
    }
    let seconds = |times: Vec<Duration>| common::median(times.iter().map(Duration::as_secs_f64).collect());
    let (compare, copy) = (seconds(compare_times), seconds(copy_times));
    println!(
        "median: compare {compare:.3} s, COPY of both tables {copy:.3} s (compare / COPY = {:.2})",
        compare / copy.max(f64::EPSILON)
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    common::run_rows_and_reps(100, 1_000_000, 3, bench)
}
