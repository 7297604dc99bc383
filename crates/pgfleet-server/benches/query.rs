//! What a query costs through pgfleet's `QueryService` compared with its direct
//! alternative, measured side by side in one run: first a table with one row per figure
//! of issue #19 (pgfleet, the direct side, their ratio), then criterion groups for the
//! fixed cost of a call and the cost per row.
//!
//! The table (medians of interleaved calls: one pgfleet call, one direct call, and again):
//!
//! - `select_1`: `SELECT 1` on one target through `Execute` as a READER (no audit write)
//!   against plain sqlx (`fetch_all` on a `PgPool`), p50 of each and the difference.
//! - `concurrent_32`: 32 clients calling `SELECT 1` at once, rounds of 32 calls; calls per
//!   second through pgfleet against sqlx with a pool of pgfleet's size (10).
//! - `rows_10k_mixed`: 10,000 rows of int, text, timestamptz, numeric, uuid and jsonb through
//!   `Execute` against sqlx decoding every value (numeric as its raw bytes: sqlx decodes it
//!   only with a decimal crate this workspace does not build).
//! - `stream_rows`: `ExecuteStream` of `SELECT g FROM generate_series(1, n) g`
//!   (`PGFLEET_BENCH_STREAM_ROWS`, default 10,000,000) against `psql -c "COPY (…) TO
//!   STDOUT"` read to the end; rows per second, and the growth of this process's resident
//!   memory (the server runs in it) while the stream ran.
//! - `fan_out_16`: `SELECT 1` on 16 targets (16 clouds configured on the same database) and
//!   on one of them; p50 of each, ratio 16 / 1.
//! - `write_audited`: `INSERT` of one row as a USER (audited: the history store's row is
//!   written before the target runs it) against the same `INSERT` through sqlx.
//! - `validator`: statements per second through `pgfleet_sqlcheck::analyze` against
//!   `pg_query::parse` alone, on the same texts.
//!
//! The replication row comes from `benches/replication.rs`.
//!
//! The pgfleet side is the real server (`RunningServer::start`, in this process, on
//! 127.0.0.1 with a random port) called through a tonic client with bearer tokens, sessions
//! in Redis: authentication gate, planning, per-target transaction, result conversion and
//! protobuf encoding/decoding are all measured.
//!
//! Run with
//!
//! ```text
//! cargo bench -p pgfleet-server --bench query                  # table, then criterion
//! PGFLEET_BENCH_TABLE_ONLY=1 cargo bench -p pgfleet-server --bench query
//! PGFLEET_BENCH_STREAM_ROWS=1000000 PGFLEET_BENCH_CALLS=100 cargo bench -p pgfleet-server --bench query
//! ```
//!
//! `PGFLEET_BENCH_CALLS` sets the calls per side of the latency rows (default 300; the
//! 10,000-row row makes a tenth of them, at least 10). It needs only what
//! `scripts/bootstrap` provides: PostgreSQL on 127.0.0.1:5432 (trust auth, user postgres,
//! with `psql`) and Redis on 127.0.0.1:6379, or the servers named by `PGFLEET_TEST_PG_URL`
//! and `PGFLEET_TEST_REDIS_URL`. Its databases (`bench_*`) are dropped at the end.

// The integration tests' harness: a fleet of throwaway databases, a running
// server, logged-in users. A benchmark uses only part of it.
#[path = "../tests/it/support/mod.rs"]
#[allow(dead_code)]
mod support;

// Teardown shared with the other benches (their other helpers unused here).
#[allow(dead_code)]
mod common;

use std::hint::black_box;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use criterion::{Criterion, SamplingMode, Throughput};
use pgfleet_engine::identity::Role;
use pgfleet_proto::pgfleet::v1 as pb;
use pgfleet_proto::pgfleet::v1::auth_service_client::AuthServiceClient;
use pgfleet_proto::pgfleet::v1::query_service_client::QueryServiceClient;
use pgfleet_server::app::RunningServer;
use pgfleet_testkit::TestDatabase;
use sqlx::postgres::{PgPoolOptions, PgRow};
use sqlx::{PgPool, Row as _};
use tokio::runtime::Runtime;
use tonic::transport::Channel;

use common::{drop_databases, log_out_and_stop};
use support::{Fleet, bearer, resident_bytes};

const TINY: &str = "SELECT 1";
const WIDE: &str = "SELECT g, g::text, now() FROM generate_series(1, 10000) g";
const MIXED: &str = "SELECT g, 'row ' || g, timestamptz '2024-01-01 00:00+00' + g * interval '1 second', \
     g / 7.0, md5(g::text)::uuid, jsonb_build_object('g', g, 'tags', jsonb_build_array('a', g)) \
     FROM generate_series(1, 10000) g";
const WIDE_ROWS: usize = 10_000;
const WRITE: &str = "INSERT INTO bench_writes (v) VALUES (1)";
const READER: &str = "bench-reader";
const USER: &str = "bench-user";
/// Clouds configured on the same database for the fan-out row.
const FAN_OUT: usize = 16;
/// pgfleet's default pool size per target (`[pool] max_connections`).
const POOL_SIZE: u32 = 10;
const CONCURRENT: usize = 32;

// Shared with the other validator benchmark.
#[path = "../../pgfleet-sqlcheck/benches/shared/validated.rs"]
mod validated;
use validated::VALIDATED;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

/// The server, logged-in clients, and sqlx pools on the very databases the server targets.
struct Bench {
    server: RunningServer,
    channel: Channel,
    client: QueryServiceClient<Channel>,
    token: String,
    user_token: String,
    /// Plain sqlx on cloud `aws`, database `app`, as many connections as pgfleet's pool.
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
        let aws = PgPoolOptions::new()
            .max_connections(POOL_SIZE)
            .connect_with(aws_app.connect_options())
            .await?;
        let gcp = gcp_app.pool().await?;
        sqlx::query("CREATE TABLE bench_writes (id bigserial PRIMARY KEY, v int)")
            .execute(&aws)
            .await?;
        let fleet =
            Fleet::with_databases(history, vec![("aws", "app", aws_app), ("gcp", "app", gcp_app)]).await?;
        // 16 more clouds, each with a database `fan` that is aws's `app`. One
        // connection per pool: a fan-out call takes one per target, and 16
        // full pools beside the others would pass PostgreSQL's default
        // max_connections (100).
        let database = fleet.database("aws", "app");
        let fan_out: String = (1..=FAN_OUT)
            .map(|i| {
                format!(
                    "[[clouds]]\nname = 'f{i:02}'\n[[clouds.databases]]\nname = 'fan'\nhost = '{}'\n\
                     port = {}\nuser = '{}'\ndatabase = '{}'\nsslmode = 'disable'\n{}\
                     [clouds.databases.pool]\nmin_connections = 0\nmax_connections = 1\n",
                    database.host(),
                    database.port(),
                    database.user(),
                    database.name(),
                    support::reader_toml()
                )
            })
            .collect();
        // Starting the server applies the history store's migrations: the users come after.
        let server = fleet.start(&fan_out).await.context("starting the server")?;
        let channel = support::channel(&server)
            .await
            .context("connecting to the server")?;
        let token = fleet
            .log_in(&channel, READER, Role::Reader)
            .await
            .context("logging in")?;
        let user_token = fleet
            .log_in(&channel, USER, Role::User)
            .await
            .context("logging in")?;
        let client = QueryServiceClient::new(channel.clone()).max_decoding_message_size(64 << 20);
        Ok(Self {
            server,
            channel,
            client,
            token,
            user_token,
            aws,
            gcp,
            fleet,
        })
    }

    /// Logs out (the sessions' Redis keys go), stops the server, closes the pools and drops
    /// the databases.
    async fn stop(self) -> anyhow::Result<()> {
        // The USER session first; `log_out_and_stop` ends the MASTER's.
        AuthServiceClient::new(self.channel.clone())
            .logout(bearer(pb::LogoutRequest {}, &self.user_token))
            .await
            .context("logging out")?;
        log_out_and_stop(self.server, &self.channel, &self.token).await?;
        self.aws.close().await;
        self.gcp.close().await;
        drop_databases(self.fleet).await
    }

    /// One `Execute` call on database `database`; panics unless every target succeeded
    /// with `rows` rows.
    async fn call(
        &self,
        query: &str,
        database: &str,
        scope: pb::execute_request::Scope,
        token: &str,
        (targets, rows): (usize, usize),
    ) {
        let request = bearer(
            pb::ExecuteRequest {
                query: query.to_owned(),
                database: database.to_owned(),
                scope: Some(scope),
                ..Default::default()
            },
            token,
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

    /// One `Execute` call as the READER on `app`.
    async fn pgfleet(&self, query: &str, scope: pb::execute_request::Scope, targets: usize, rows: usize) {
        self.call(query, "app", scope, &self.token, (targets, rows)).await;
    }

    /// Rows per second of `ExecuteStream` over `SELECT g FROM generate_series(1, rows) g`,
    /// and the largest growth of resident memory seen while it ran.
    async fn stream(&self, rows: usize) -> (f64, u64) {
        let request = bearer(
            pb::ExecuteStreamRequest {
                query: format!("SELECT g FROM generate_series(1, {rows}) g"),
                database: "app".to_owned(),
                scope: Some(pb::execute_stream_request::Scope::Cloud("aws".to_owned())),
                timeout: Some(prost_types::Duration {
                    seconds: 300,
                    nanos: 0,
                }),
                ..Default::default()
            },
            &self.token,
        );
        let before = resident_bytes();
        let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(before));
        let sampler = {
            let peak = std::sync::Arc::clone(&peak);
            tokio::spawn(async move {
                loop {
                    peak.fetch_max(resident_bytes(), std::sync::atomic::Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        };
        let started = Instant::now();
        let mut stream = self
            .client
            .clone()
            .execute_stream(request)
            .await
            .expect("ExecuteStream failed")
            .into_inner();
        let mut received = 0_usize;
        let mut succeeded = false;
        while let Some(message) = stream.message().await.expect("stream message") {
            match message.event {
                Some(pb::execute_stream_response::Event::RowBatch(batch)) => received += batch.rows.len(),
                Some(pb::execute_stream_response::Event::ExecutionFinished(finished)) => {
                    succeeded = finished.success;
                }
                _ => {}
            }
        }
        let elapsed = started.elapsed();
        sampler.abort();
        assert!(succeeded, "the stream did not succeed");
        assert_eq!(received, rows, "streamed rows");
        let growth = peak
            .load(std::sync::atomic::Ordering::Relaxed)
            .saturating_sub(before);
        (rows as f64 / elapsed.as_secs_f64(), growth)
    }

    /// Rows per second of `psql -c "COPY (SELECT g FROM generate_series(1, rows) g) TO
    /// STDOUT"` on the same database, its output read to the end.
    fn psql_copy(&self, rows: usize) -> anyhow::Result<f64> {
        // A shared server may be out of connections for a moment.
        let mut last = None;
        for _ in 0..10 {
            match self.psql_copy_once(rows) {
                Ok(rate) => return Ok(rate),
                Err(error) if error.to_string().contains("too many clients") => {
                    last = Some(error);
                    std::thread::sleep(Duration::from_secs(1));
                }
                Err(error) => return Err(error),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("psql did not run")))
    }

    fn psql_copy_once(&self, rows: usize) -> anyhow::Result<f64> {
        let database = self.fleet.database("aws", "app");
        let started = Instant::now();
        let output = std::process::Command::new("psql")
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", database.host(), "-p", &database.port().to_string()])
            .args(["-U", database.user(), "-d", database.name()])
            .args([
                "-c",
                &format!("COPY (SELECT g FROM generate_series(1, {rows}) g) TO STDOUT"),
            ])
            .output()
            .context("running psql")?;
        let elapsed = started.elapsed();
        anyhow::ensure!(
            output.status.success(),
            "psql: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let lines = output.stdout.iter().filter(|b| **b == b'\n').count();
        anyhow::ensure!(lines == rows, "psql returned {lines} rows, not {rows}");
        Ok(rows as f64 / elapsed.as_secs_f64())
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

/// [`MIXED`] through sqlx, every value decoded (numeric: its raw bytes).
async fn sqlx_mixed(pool: &PgPool) {
    use sqlx::ValueRef as _;
    let rows: Vec<PgRow> = sqlx::query(MIXED).fetch_all(pool).await.expect("sqlx mixed rows");
    assert_eq!(rows.len(), WIDE_ROWS, "rows");
    for row in &rows {
        let numeric = row.try_get_raw(3).expect("a numeric");
        assert!(!numeric.is_null());
        let values: (i32, String, DateTime<Utc>, uuid::Uuid, serde_json::Value) = (
            row.try_get(0).expect("an int4"),
            row.try_get(1).expect("a text"),
            row.try_get(2).expect("a timestamptz"),
            row.try_get(4).expect("a uuid"),
            row.try_get(5).expect("a jsonb"),
        );
        black_box((values, numeric.as_bytes().ok().map(<[u8]>::len)));
    }
}

/// The median of `samples` (sorted here).
fn median(samples: &mut [Duration]) -> Duration {
    samples.sort_unstable();
    samples.get(samples.len() / 2).copied().unwrap_or_default()
}

fn ms(duration: Duration) -> String {
    format!("{:.3} ms", duration.as_secs_f64() * 1000.0)
}

/// Times `calls` interleaved calls of each side; their medians.
async fn interleaved<A, B>(
    calls: usize,
    mut pgfleet: impl FnMut() -> A,
    mut direct: impl FnMut() -> B,
) -> (Duration, Duration)
where
    A: std::future::Future<Output = ()>,
    B: std::future::Future<Output = ()>,
{
    // Warm both sides' pools and caches first.
    for _ in 0..3 {
        pgfleet().await;
        direct().await;
    }
    let mut ours = Vec::with_capacity(calls);
    let mut theirs = Vec::with_capacity(calls);
    for _ in 0..calls {
        let started = Instant::now();
        pgfleet().await;
        ours.push(started.elapsed());
        let started = Instant::now();
        direct().await;
        theirs.push(started.elapsed());
    }
    (median(&mut ours), median(&mut theirs))
}

/// Statements per second of `work` over [`VALIDATED`].
fn validated_per_second(rounds: usize, work: impl Fn(&str)) -> f64 {
    let started = Instant::now();
    for _ in 0..rounds {
        for text in VALIDATED {
            work(black_box(text));
        }
    }
    (rounds * VALIDATED.len()) as f64 / started.elapsed().as_secs_f64()
}

/// Measures every row and prints the table.
async fn table(bench: &Bench) -> anyhow::Result<()> {
    let calls = env_usize("PGFLEET_BENCH_CALLS", 300);
    let stream_rows = env_usize("PGFLEET_BENCH_STREAM_ROWS", 10_000_000);
    let mut lines = vec![
        "| figure | pgfleet | direct | ratio | target |".to_owned(),
        "|---|---|---|---|---|".to_owned(),
    ];

    let (ours, theirs) = interleaved(
        calls,
        || bench.pgfleet(TINY, aws(), 1, 1),
        || async {
            black_box(sqlx_tiny(&bench.aws).await);
        },
    )
    .await;
    lines.push(format!(
        "| `SELECT 1` p50 (READER, `Execute`) vs sqlx | {} | {} | +{} | ≤ +0.3 ms |",
        ms(ours),
        ms(theirs),
        ms(ours.saturating_sub(theirs))
    ));

    let rounds = (calls / 10).max(5);
    let concurrently = |pgfleet: bool| async move {
        let started = Instant::now();
        for _ in 0..rounds {
            let calls = (0..CONCURRENT).map(|_| async {
                if pgfleet {
                    bench.pgfleet(TINY, aws(), 1, 1).await;
                } else {
                    black_box(sqlx_tiny(&bench.aws).await);
                }
            });
            futures::future::join_all(calls).await;
        }
        (rounds * CONCURRENT) as f64 / started.elapsed().as_secs_f64()
    };
    concurrently(true).await;
    concurrently(false).await;
    let (ours, theirs) = (concurrently(true).await, concurrently(false).await);
    lines.push(format!(
        "| calls/s at {CONCURRENT} concurrent clients (pool {POOL_SIZE}) | {ours:.0} | {theirs:.0} | {:.2} | ≥ 0.7 |",
        ours / theirs
    ));

    let (ours, theirs) = interleaved(
        (calls / 10).max(10),
        || bench.pgfleet(MIXED, aws(), 1, WIDE_ROWS),
        || sqlx_mixed(&bench.aws),
    )
    .await;
    lines.push(format!(
        "| 10,000 rows int/text/timestamptz/numeric/uuid/jsonb p50 | {} | {} | {:.1}× | ≤ 1.5× |",
        ms(ours),
        ms(theirs),
        ours.as_secs_f64() / theirs.as_secs_f64()
    ));

    let (ours, growth) = bench.stream(stream_rows).await;
    let theirs = bench.psql_copy(stream_rows)?;
    lines.push(format!(
        "| `ExecuteStream` of {stream_rows} rows, rows/s (RSS growth {} MiB) vs `psql` COPY TO STDOUT | {ours:.0} | {theirs:.0} | {:.2} | ≥ 0.5, < 100 MiB |",
        growth >> 20,
        ours / theirs
    ));

    let fan = |clouds: pb::execute_request::Scope, targets: usize| {
        bench.call(TINY, "fan", clouds, &bench.token, (targets, 1))
    };
    let (ours, theirs) = interleaved(
        calls / 3,
        || fan(all_clouds(), FAN_OUT),
        || fan(pb::execute_request::Scope::Cloud("f01".to_owned()), 1),
    )
    .await;
    lines.push(format!(
        "| fan-out to {FAN_OUT} targets vs 1 target, p50 (both pgfleet) | {} | {} | {:.2} | ≤ 1.5 |",
        ms(ours),
        ms(theirs),
        ours.as_secs_f64() / theirs.as_secs_f64()
    ));

    let (ours, theirs) = interleaved(
        calls / 3,
        || bench.call(WRITE, "app", aws(), &bench.user_token, (1, 0)),
        || async {
            sqlx::query(WRITE).execute(&bench.aws).await.expect("sqlx INSERT");
        },
    )
    .await;
    lines.push(format!(
        "| write p50 (USER, audited) vs sqlx | {} | {} | {:.1}× | ≤ 2× |",
        ms(ours),
        ms(theirs),
        ours.as_secs_f64() / theirs.as_secs_f64()
    ));

    let rounds = env_usize("PGFLEET_BENCH_VALIDATE_ROUNDS", 2_000);
    let analyze = |text: &str| {
        black_box(pgfleet_sqlcheck::analyze(text).expect("valid SQL"));
    };
    let parse = |text: &str| {
        black_box(pg_query::parse(text, 0).expect("valid SQL"));
    };
    validated_per_second(rounds / 10, analyze);
    validated_per_second(rounds / 10, parse);
    let (ours, theirs) = (
        validated_per_second(rounds, analyze),
        validated_per_second(rounds, parse),
    );
    lines.push(format!(
        "| statements/s, `pgfleet_sqlcheck::analyze` vs `pg_query::parse` | {ours:.0} | {theirs:.0} | {:.2} | ≥ 0.8 |",
        ours / theirs
    ));
    lines.push(
        "| replication of 1,000,000 rows vs `pg_dump \\| psql` | see `--bench replication` | | | ≥ 1.0 |"
            .to_owned(),
    );
    println!("\n{}\n", lines.join("\n"));
    Ok(())
}

fn criterion_groups(c: &mut Criterion, runtime: &Runtime, bench: &Bench) {
    let mut group = c.benchmark_group("select_1");
    group.bench_function("pgfleet", |b| {
        b.to_async(runtime).iter(|| bench.pgfleet(TINY, aws(), 1, 1));
    });
    group.bench_function("sqlx", |b| b.to_async(runtime).iter(|| sqlx_tiny(&bench.aws)));
    group.finish();

    let mut group = c.benchmark_group("rows_10k");
    group.throughput(Throughput::Elements(WIDE_ROWS as u64));
    // Tens of milliseconds per call: the same iteration count in every sample keeps the
    // run short (linear sampling would need 210 calls at least).
    group.sampling_mode(SamplingMode::Flat);
    group.measurement_time(Duration::from_secs(8));
    group.bench_function("pgfleet", |b| {
        b.to_async(runtime)
            .iter(|| bench.pgfleet(WIDE, aws(), 1, WIDE_ROWS));
    });
    group.bench_function("sqlx", |b| b.to_async(runtime).iter(|| sqlx_wide(&bench.aws)));
    group.finish();

    let mut group = c.benchmark_group("fan_out_2");
    group.bench_function("pgfleet", |b| {
        b.to_async(runtime)
            .iter(|| bench.pgfleet(TINY, all_clouds(), 2, 1));
    });
    group.bench_function("sqlx", |b| {
        b.to_async(runtime)
            .iter(|| async { tokio::join!(sqlx_tiny(&bench.aws), sqlx_tiny(&bench.gcp)) });
    });
    group.finish();
}

fn main() {
    // The server's own runtime's threads (see `pgfleet serve`).
    let runtime: Runtime = tokio::runtime::Builder::new_multi_thread()
        .thread_stack_size(pgfleet_server::RUNTIME_THREAD_STACK_BYTES)
        .enable_all()
        .build()
        .expect("building the tokio runtime");
    let bench = runtime
        .block_on(Bench::start())
        .expect("setting up (is scripts/bootstrap's PostgreSQL and Redis running?)");
    runtime.block_on(table(&bench)).expect("measuring the table");
    if std::env::var_os("PGFLEET_BENCH_TABLE_ONLY").is_none() {
        let mut criterion = Criterion::default()
            .sample_size(20)
            .warm_up_time(Duration::from_secs(2))
            .measurement_time(Duration::from_secs(5))
            .configure_from_args();
        criterion_groups(&mut criterion, &runtime, &bench);
        criterion.final_summary();
    }
    runtime.block_on(bench.stop()).expect("cleaning up");
}
