//! What a query costs through pgfleet's `QueryService/Execute` compared with the same query
//! sent with plain sqlx to the same database, measured side by side in one run.
//!
//! Each group has two functions, `pgfleet` and `sqlx`, on the same throwaway databases:
//!
//! - `select_1`: `SELECT 1` on one target (`scope = Cloud("aws")`): the fixed cost of a call.
//! - `rows_10k`: `SELECT g, g::text, now() FROM generate_series(1, 10000) g` on one target:
//!   the cost per row (throughput in rows per second). The sqlx side decodes every value
//!   into Rust types (`i32`, `String`, `DateTime<Utc>`), as the gRPC client gets decoded
//!   cells.
//! - `fan_out_2`: `SELECT 1` on two targets (clouds `aws` and `gcp`, database `app`,
//!   `scope = AllClouds`) against sqlx running it on both pools at once with `tokio::join!`.
//!
//! The pgfleet side is the real server (`RunningServer::start`, in this process, on
//! 127.0.0.1 with a random port) called through a tonic client as a READER user with a
//! bearer token, sessions in Redis: authentication gate, planning, per-target
//! transaction, result conversion and protobuf encoding/decoding are all measured.
//!
//! Run with
//!
//! ```text
//! cargo bench -p pgfleet-server --bench query
//! cargo bench -p pgfleet-server --bench query -- rows_10k     # one group
//! ```
//!
//! It needs only what `scripts/bootstrap` provides: PostgreSQL on 127.0.0.1:5432 (trust
//! auth, user postgres) and Redis on 127.0.0.1:6379, or the servers named by
//! `PGFLEET_TEST_PG_URL` and `PGFLEET_TEST_REDIS_URL`. Its databases (`bench_*`) are
//! dropped at the end.

// The integration tests' harness: a fleet of throwaway databases, a running
// server, logged-in users. A benchmark uses only part of it.
#[path = "../tests/it/support/mod.rs"]
#[allow(dead_code)]
mod support;

// Teardown shared with the other benches (their other helpers unused here).
#[allow(dead_code)]
mod common;

use std::hint::black_box;
use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use pgfleet_engine::identity::Role;
use pgfleet_proto::pgfleet::v1 as pb;
use pgfleet_proto::pgfleet::v1::query_service_client::QueryServiceClient;
use pgfleet_server::app::RunningServer;
use pgfleet_testkit::TestDatabase;
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row as _};
use tokio::runtime::Runtime;
use tonic::transport::Channel;

use common::{drop_databases, log_out_and_stop};
use support::{Fleet, bearer};

const TINY: &str = "SELECT 1";
const WIDE: &str = "SELECT g, g::text, now() FROM generate_series(1, 10000) g";
const WIDE_ROWS: usize = 10_000;
const READER: &str = "bench-reader";

/// The server, a logged-in client, and sqlx pools on the very databases the server targets.
struct Bench {
    server: RunningServer,
    channel: Channel,
    client: QueryServiceClient<Channel>,
    token: String,
    /// Plain sqlx on cloud `aws`, database `app`.
    aws: PgPool,
    /// Plain sqlx on cloud `gcp`, database `app`.
    gcp: PgPool,
    /// History store, `aws` and `gcp` (`app` each, the reader login granted);
    /// dropped by [`Bench::stop`].
    fleet: Fleet,
}

impl Bench {
    async fn start() -> anyhow::Result<Self> {
        let history = TestDatabase::create("bench_history").await?;
        let aws_app = TestDatabase::create("bench_aws_app").await?;
        let gcp_app = TestDatabase::create("bench_gcp_app").await?;
        let aws = aws_app.pool().await?;
        let gcp = gcp_app.pool().await?;
        let fleet =
            Fleet::with_databases(history, vec![("aws", "app", aws_app), ("gcp", "app", gcp_app)]).await?;
        // Starting the server applies the history store's migrations: the user comes after.
        let server = fleet.start("").await.context("starting the server")?;
        let channel = support::channel(&server)
            .await
            .context("connecting to the server")?;
        let token = fleet
            .log_in(&channel, READER, Role::Reader)
            .await
            .context("logging in")?;
        let client = QueryServiceClient::new(channel.clone()).max_decoding_message_size(64 << 20);
        Ok(Self {
            server,
            channel,
            client,
            token,
            aws,
            gcp,
            fleet,
        })
    }

    /// Logs out (the session's Redis keys go), stops the server, closes the pools and drops
    /// the databases.
    async fn stop(self) -> anyhow::Result<()> {
        log_out_and_stop(self.server, &self.channel, &self.token).await?;
        self.aws.close().await;
        self.gcp.close().await;
        drop_databases(self.fleet).await
    }

    /// One `Execute` call; panics unless every target succeeded with `rows` rows.
    async fn pgfleet(&self, query: &str, scope: pb::execute_request::Scope, targets: usize, rows: usize) {
        let request = bearer(
            pb::ExecuteRequest {
                query: query.to_owned(),
                database: "app".to_owned(),
                scope: Some(scope),
                ..Default::default()
            },
            &self.token,
        );
        let response = self
            .client
            .clone()
            .execute(request)
            .await
            .expect("Execute failed")
            .into_inner();
        assert!(
            response.success,
            "Execute did not succeed: {:?}",
            response.results
        );
        assert_eq!(response.results.len(), targets, "targets");
        for result in &response.results {
            let statement = &result.statements[0];
            assert_eq!(statement.rows.len(), rows, "rows");
            assert!(!statement.truncated, "the row cap cut the result");
        }
        black_box(response);
    }
}

fn aws() -> pb::execute_request::Scope {
    pb::execute_request::Scope::Cloud("aws".to_owned())
}

fn all_clouds() -> pb::execute_request::Scope {
    pb::execute_request::Scope::AllClouds(pb::AllClouds {})
}

/// `SELECT 1` through sqlx, decoded.
async fn sqlx_tiny(pool: &PgPool) -> i32 {
    let rows: Vec<PgRow> = sqlx::query(TINY).fetch_all(pool).await.expect("sqlx SELECT 1");
    rows[0].try_get(0).expect("an int4")
}

/// [`WIDE`] through sqlx, every value decoded.
async fn sqlx_wide(pool: &PgPool) {
    let rows: Vec<PgRow> = sqlx::query(WIDE).fetch_all(pool).await.expect("sqlx 10k rows");
    assert_eq!(rows.len(), WIDE_ROWS, "rows");
    for row in &rows {
        let values: (i32, String, DateTime<Utc>) = (
            row.try_get(0).expect("an int4"),
            row.try_get(1).expect("a text"),
            row.try_get(2).expect("a timestamptz"),
        );
        black_box(values);
    }
}

fn query(c: &mut Criterion) {
    let runtime: Runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("building the tokio runtime");
    let bench = runtime
        .block_on(Bench::start())
        .expect("setting up (is scripts/bootstrap's PostgreSQL and Redis running?)");

    let mut group = c.benchmark_group("select_1");
    group.bench_function("pgfleet", |b| {
        b.to_async(&runtime).iter(|| bench.pgfleet(TINY, aws(), 1, 1));
    });
    group.bench_function("sqlx", |b| b.to_async(&runtime).iter(|| sqlx_tiny(&bench.aws)));
    group.finish();

    let mut group = c.benchmark_group("rows_10k");
    group.throughput(Throughput::Elements(WIDE_ROWS as u64));
    // Tens of milliseconds per call: the same iteration count in every sample keeps the
    // run short (linear sampling would need 210 calls at least).
    group.sampling_mode(SamplingMode::Flat);
    group.measurement_time(Duration::from_secs(8));
    group.bench_function("pgfleet", |b| {
        b.to_async(&runtime)
            .iter(|| bench.pgfleet(WIDE, aws(), 1, WIDE_ROWS));
    });
    group.bench_function("sqlx", |b| b.to_async(&runtime).iter(|| sqlx_wide(&bench.aws)));
    group.finish();

    let mut group = c.benchmark_group("fan_out_2");
    group.bench_function("pgfleet", |b| {
        b.to_async(&runtime)
            .iter(|| bench.pgfleet(TINY, all_clouds(), 2, 1));
    });
    group.bench_function("sqlx", |b| {
        b.to_async(&runtime)
            .iter(|| async { tokio::join!(sqlx_tiny(&bench.aws), sqlx_tiny(&bench.gcp)) });
    });
    group.finish();

    runtime.block_on(bench.stop()).expect("cleaning up");
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(5));
    targets = query
}
criterion_main!(benches);
