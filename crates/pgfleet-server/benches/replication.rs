//! What copying a 1,000,000-row table costs through pgfleet's
//! `ReplicationService/ReplicateTable` compared with `pg_dump | psql` of the same table,
//! measured side by side in one run, in rows per second.
//!
//! One source database holds `public.bench_rows` (bigint primary key, `timestamptz`, `text`,
//! `numeric(12,2)`, `jsonb`, `text[]`; 1,000,000 rows from `generate_series`, then
//! `VACUUM ANALYZE`); one target database has the same table, empty. Each repetition copies
//! the whole table once per side, every side into an empty target (`TRUNCATE` and
//! `CHECKPOINT` before each copy, not timed):
//!
//! - `pgfleet`: `ReplicateTable` with `REPLICATION_MODE_FULL_REFRESH` and the default batch
//!   size (10,000), timed from the request to the `RunFinished` event. The server pages
//!   through the source on the primary key (each page its own read-only transaction running
//!   `COPY (SELECT … ORDER BY id LIMIT n) TO STDOUT`) and writes each batch in one target
//!   transaction through a temporary staging table and `INSERT … ON CONFLICT DO UPDATE`,
//!   remembering the batch's keys; after the last batch it deletes the target rows the
//!   source does not have (none here). One more run with a batch size of 50,000 follows the
//!   repetitions.
//! - `pg_dump|psql`: `pg_dump --data-only --table=public.bench_rows <source> | psql -X -q -v
//!   ON_ERROR_STOP=1 <target>` under `bash -c 'set -o pipefail; …'`: one `COPY` stream, no
//!   upsert. `pg_dump` and `psql` come from `PGFLEET_TEST_PG_BINDIR`, `PATH` or
//!   `/usr/lib/postgresql/*/bin` (the newest).
//! - `direct`: `COPY public.bench_rows TO STDOUT` on a source connection piped into `COPY
//!   public.bench_rows FROM STDIN` on a target connection by sqlx in this process
//!   (`copy_out_raw`, `copy_in_raw`, 1 MiB writes): the lower bound of moving the rows.
//!
//! Every copy must leave exactly the source's row count on the target, and the first copy of
//! each side must leave the same content (`md5(string_agg(t::text, ',' ORDER BY id))` equal
//! on source and target; `string_agg` is limited to 1 GB of text, about 6 million rows of
//! this table). pgfleet's run must end `REPLICATION_OUTCOME_SUCCEEDED` with every row
//! written.
//!
//! The pgfleet side is the real server (`RunningServer::start`, in this process, on
//! 127.0.0.1 with a random port, scheduler off) called through a tonic client as a MASTER
//! user with a bearer token, sessions in Redis. Each run is printed as it ends, then the
//! medians per side and the ratio of pgfleet's to `pg_dump|psql`'s rows per second.
//!
//! Not criterion: one copy takes seconds, so a few repetitions per side replace sampling.
//! Run with
//!
//! ```text
//! cargo bench -p pgfleet-server --bench replication
//! PGFLEET_BENCH_ROWS=200000 PGFLEET_BENCH_REPS=5 cargo bench -p pgfleet-server --bench replication
//! ```
//!
//! `PGFLEET_BENCH_ROWS` sets the row count (default 1,000,000), `PGFLEET_BENCH_REPS` the
//! repetitions per side (default 3). It needs only what `scripts/bootstrap` provides:
//! PostgreSQL on 127.0.0.1:5432 (trust auth, user postgres, with `pg_dump` and `psql`) and
//! Redis on 127.0.0.1:6379, or the servers named by `PGFLEET_TEST_PG_URL` and
//! `PGFLEET_TEST_REDIS_URL`. Its databases (`bench_*`) are dropped at the end.

// The integration tests' harness: a fleet of throwaway databases, a running
// server, logged-in users. A benchmark uses only part of it.
#[path = "../tests/it/support/mod.rs"]
#[allow(dead_code)]
mod support;

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::TryStreamExt as _;
use pgfleet_engine::identity::Role;
use pgfleet_proto::pgfleet::v1 as pb;
use pgfleet_proto::pgfleet::v1::replication_event::Event;
use pgfleet_proto::pgfleet::v1::replication_service_client::ReplicationServiceClient;
use pgfleet_server::app::RunningServer;
use pgfleet_testkit::TestDatabase;
use sqlx::{Connection as _, PgConnection};
use tonic::transport::Channel;

use common::{drop_databases, log_out_and_stop, median, pg_binary};
use support::{Fleet, bearer, target};

const MASTER: &str = "bench-master";
const TABLE: &str = "public.bench_rows";
const DEFAULT_ROWS: u64 = 1_000_000;
const DEFAULT_REPS: usize = 3;
/// `ReplicateTable`'s default (`batch_size = 0`).
const DEFAULT_BATCH: u32 = 10_000;
/// The one extra pgfleet run after the repetitions.
const LARGE_BATCH: u32 = 50_000;
/// Bytes per `CopyData` write of the `direct` side.
const DIRECT_CHUNK: usize = 1 << 20;

const CREATE: &str = "CREATE TABLE public.bench_rows (
    id bigint PRIMARY KEY,
    updated_at timestamptz NOT NULL,
    name text NOT NULL,
    amount numeric(12,2),
    payload jsonb,
    tags text[]
)";

/// `$1`: the row count.
const FILL: &str = "INSERT INTO public.bench_rows
SELECT g,
       timestamptz '2026-01-01 00:00:00+00' + g * interval '1 second',
       'customer ' || g || CASE WHEN g % 50 = 0 THEN E' \"quoted\"\\tand tab' ELSE '' END,
       CASE WHEN g % 10 = 0 THEN NULL ELSE ((g * 7919) % 10000000) / 100.0 END,
       jsonb_build_object('id', g, 'kind', (ARRAY['retail', 'wholesale', 'online'])[1 + g % 3],
                          'score', g % 1000, 'flags', jsonb_build_array(g % 2 = 0, g % 3 = 0)),
       ARRAY['tag' || g % 7, 'tag' || g % 11]
FROM generate_series(1, $1::bigint) AS g";

const HASH: &str = "SELECT md5(coalesce(string_agg(t::text, ',' ORDER BY id), '')) FROM public.bench_rows t";

/// One side of the comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Pgfleet,
    PgDump,
    Direct,
}

impl Side {
    fn label(self) -> &'static str {
        match self {
            Side::Pgfleet => "pgfleet",
            Side::PgDump => "pg_dump|psql",
            Side::Direct => "direct COPY",
        }
    }
}

/// One timed copy.
#[derive(Debug, Clone)]
struct Run {
    side: Side,
    /// Repetition number, from 1; 0 for the large-batch run.
    rep: usize,
    elapsed: Duration,
    rows: u64,
    note: String,
}

impl Run {
    fn rows_per_second(&self) -> f64 {
        self.rows as f64 / self.elapsed.as_secs_f64()
    }
}

/// The server, a logged-in MASTER, and plain connections to the source and the target.
struct Bench {
    server: RunningServer,
    channel: Channel,
    client: ReplicationServiceClient<Channel>,
    token: String,
    rows: u64,
    /// The source's ordered hash, computed once.
    source_hash: String,
    /// Plain connection to cloud `src`, database `app`.
    source: PgConnection,
    /// Plain connection to cloud `dst`, database `app`.
    target: PgConnection,
    source_url: String,
    target_url: String,
    pg_dump: PathBuf,
    psql: PathBuf,
    /// History store, source (`src`) and target (`dst`); dropped by [`Bench::stop`].
    fleet: Fleet,
}

impl Bench {
    async fn start(rows: u64) -> anyhow::Result<Self> {
        let pg_dump = pg_binary("pg_dump")?;
        let psql = pg_binary("psql")?;
        let history = TestDatabase::create("bench_history").await?;
        let source_db = TestDatabase::create("bench_src_app").await?;
        let target_db = TestDatabase::create("bench_dst_app").await?;

        let mut source = source_db.connect().await?;
        let mut target = target_db.connect().await?;
        let started = Instant::now();
        sqlx::raw_sql(CREATE).execute(&mut source).await?;
        sqlx::raw_sql(CREATE).execute(&mut target).await?;
        sqlx::query(FILL)
            .bind(i64::try_from(rows)?)
            .execute(&mut source)
            .await
            .context("filling the source table")?;
        sqlx::raw_sql("VACUUM ANALYZE public.bench_rows")
            .execute(&mut source)
            .await?;
        let size: String = sqlx::query_scalar(
            "SELECT pg_size_pretty(pg_table_size('public.bench_rows')) || ' table, ' \
             || pg_size_pretty(pg_indexes_size('public.bench_rows')) || ' primary key'",
        )
        .fetch_one(&mut source)
        .await?;
        let source_hash = table_hash(&mut source).await?;
        println!(
            "source: {} rows in {TABLE} ({size}), filled and hashed in {:.1} s",
            group(rows as f64),
            started.elapsed().as_secs_f64()
        );

        let source_url = source_db.url().to_owned();
        let target_url = target_db.url().to_owned();
        let fleet = Fleet::with_databases(
            history,
            vec![("src", "app", source_db), ("dst", "app", target_db)],
        )
        .await?;
        // Starting the server applies the history store's migrations: the user comes after.
        let server = fleet.start("").await.context("starting the server")?;
        let channel = support::channel(&server)
            .await
            .context("connecting to the server")?;
        let token = fleet
            .log_in(&channel, MASTER, Role::Master)
            .await
            .context("logging in")?;
        let client = ReplicationServiceClient::new(channel.clone());

        Ok(Self {
            server,
            channel,
            client,
            token,
            rows,
            source_hash,
            source,
            target,
            source_url,
            target_url,
            pg_dump,
            psql,
            fleet,
        })
    }

    /// Logs out (the session's Redis keys go), stops the server, closes the connections and
    /// drops the databases.
    async fn stop(self) -> anyhow::Result<()> {
        log_out_and_stop(self.server, &self.channel, &self.token).await?;
        self.source.close().await?;
        self.target.close().await?;
        drop_databases(self.fleet).await
    }

    /// Empties the target table and writes a checkpoint, so every copy starts alike.
    async fn reset_target(&mut self) -> anyhow::Result<()> {
        sqlx::raw_sql("TRUNCATE public.bench_rows; CHECKPOINT")
            .execute(&mut self.target)
            .await
            .context("emptying the target")?;
        Ok(())
    }

    /// One timed copy of `side` into the empty target, then its checks (not timed).
    async fn run(
        &mut self,
        side: Side,
        rep: usize,
        batch_size: u32,
        check_hash: bool,
    ) -> anyhow::Result<Run> {
        self.reset_target().await?;
        let (elapsed, note) = match side {
            Side::Pgfleet => self.pgfleet(batch_size).await?,
            Side::PgDump => self.pg_dump().await?,
            Side::Direct => self.direct().await?,
        };
        let count: i64 = sqlx::query_scalar("SELECT count(*) FROM public.bench_rows")
            .fetch_one(&mut self.target)
            .await?;
        anyhow::ensure!(
            u64::try_from(count)? == self.rows,
            "{}: the target has {count} rows, the source {}",
            side.label(),
            self.rows
        );
        let mut note = note;
        if check_hash {
            let hash = table_hash(&mut self.target).await?;
            anyhow::ensure!(
                hash == self.source_hash,
                "{}: the target's content differs from the source's ({hash} vs {})",
                side.label(),
                self.source_hash
            );
            note.push_str(if note.is_empty() { "" } else { ", " });
            note.push_str("content = source");
        }
        let run = Run {
            side,
            rep,
            elapsed,
            rows: self.rows,
            note,
        };
        print_run(&run);
        Ok(run)
    }

    /// `ReplicateTable`, full refresh, from the request to `RunFinished`.
    async fn pgfleet(&mut self, batch_size: u32) -> anyhow::Result<(Duration, String)> {
        let request = pb::ReplicateTableRequest {
            source: Some(target("src", "app")),
            targets: vec![target("dst", "app")],
            table: TABLE.to_owned(),
            sync_key: String::new(),
            mode: pb::ReplicationMode::FullRefresh.into(),
            batch_size: if batch_size == DEFAULT_BATCH {
                0
            } else {
                batch_size
            },
            overlap: None,
        };
        let started = Instant::now();
        let mut stream = self
            .client
            .replicate_table(bearer(request, &self.token))
            .await
            .context("ReplicateTable refused the call")?
            .into_inner();
        let mut events = Vec::new();
        let mut elapsed = None;
        while let Some(message) = stream.message().await.context("ReplicateTable's stream failed")? {
            if let Some(event) = message.event.and_then(|e| e.event) {
                if matches!(event, Event::RunFinished(_)) {
                    elapsed = Some(started.elapsed());
                }
                events.push(event);
            }
        }
        let report = || summary(&events);
        let Some(elapsed) = elapsed else {
            anyhow::bail!("no RunFinished event: {}", report());
        };
        let Some(Event::RunFinished(end)) = events.last() else {
            anyhow::bail!("the last event is not RunFinished: {}", report());
        };
        anyhow::ensure!(
            end.outcome == pb::ReplicationOutcome::Succeeded as i32 && end.rows_written == self.rows,
            "the run did not succeed with {} rows written: {}",
            self.rows,
            report()
        );
        let finished = events.iter().find_map(|event| match event {
            Event::TableFinished(done) => Some(done),
            _ => None,
        });
        let Some(finished) = finished else {
            anyhow::bail!("no TableFinished event: {}", report());
        };
        let server = end
            .elapsed
            .map_or(0.0, |d| d.seconds as f64 + f64::from(d.nanos) / 1e9);
        Ok((
            elapsed,
            format!(
                "batch {}, {} batches, server's elapsed {server:.2} s",
                group(f64::from(batch_size)),
                finished.batches
            ),
        ))
    }

    /// `pg_dump --data-only … | psql …`, both processes started and waited for.
    async fn pg_dump(&mut self) -> anyhow::Result<(Duration, String)> {
        let started = Instant::now();
        let output = tokio::process::Command::new("bash")
            .arg("-c")
            .arg(
                "set -o pipefail; \"$1\" --data-only --table=public.bench_rows --dbname=\"$3\" \
                 | \"$2\" -X -q -v ON_ERROR_STOP=1 --dbname=\"$4\"",
            )
            .arg("bench")
            .arg(&self.pg_dump)
            .arg(&self.psql)
            .arg(&self.source_url)
            .arg(&self.target_url)
            .output()
            .await
            .context("running bash")?;
        let elapsed = started.elapsed();
        anyhow::ensure!(
            output.status.success(),
            "pg_dump | psql failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr),
            String::from_utf8_lossy(&output.stdout)
        );
        Ok((elapsed, String::new()))
    }

    /// `COPY … TO STDOUT` on the source piped into `COPY … FROM STDIN` on the target.
    async fn direct(&mut self) -> anyhow::Result<(Duration, String)> {
        let started = Instant::now();
        let (sender, mut receiver) = tokio::sync::mpsc::channel::<Vec<u8>>(8);
        let source = &mut self.source;
        let read = async move {
            let mut chunks = source.copy_out_raw("COPY public.bench_rows TO STDOUT").await?;
            let mut buffer = Vec::with_capacity(DIRECT_CHUNK + (64 << 10));
            while let Some(chunk) = chunks.try_next().await? {
                buffer.extend_from_slice(&chunk);
                if buffer.len() >= DIRECT_CHUNK {
                    let full = std::mem::replace(&mut buffer, Vec::with_capacity(DIRECT_CHUNK + (64 << 10)));
                    if sender.send(full).await.is_err() {
                        anyhow::bail!("the writer stopped");
                    }
                }
            }
            if !buffer.is_empty() && sender.send(buffer).await.is_err() {
                anyhow::bail!("the writer stopped");
            }
            anyhow::Ok(())
        };
        let target = &mut self.target;
        let write = async move {
            let mut copy = target.copy_in_raw("COPY public.bench_rows FROM STDIN").await?;
            while let Some(data) = receiver.recv().await {
                copy.send(data).await?;
            }
            anyhow::Ok(copy.finish().await?)
        };
        let (read, written) = tokio::join!(read, write);
        let elapsed = started.elapsed();
        read.context("COPY TO STDOUT on the source")?;
        let written = written.context("COPY FROM STDIN on the target")?;
        anyhow::ensure!(written == self.rows, "COPY FROM STDIN wrote {written} rows");
        Ok((elapsed, String::new()))
    }
}

/// The events of a pgfleet run for an error message, without the per-batch progress.
fn summary(events: &[Event]) -> String {
    let progress = events
        .iter()
        .filter(|event| matches!(event, Event::TableProgress(_)))
        .count();
    let others: Vec<&Event> = events
        .iter()
        .filter(|event| !matches!(event, Event::TableProgress(_)))
        .collect();
    format!("{progress} TableProgress events, and {others:#?}")
}

/// An ordered hash of the whole table: equal hashes, equal rows. The sort is kept in memory:
/// spilled, it would take about the table's size again in temporary files.
async fn table_hash(connection: &mut PgConnection) -> anyhow::Result<String> {
    sqlx::raw_sql("SET work_mem = '1GB'")
        .execute(&mut *connection)
        .await?;
    Ok(sqlx::query_scalar(HASH).fetch_one(connection).await?)
}

/// `1234567.8` as `1,234,568`.
fn group(value: f64) -> String {
    let digits = format!("{:.0}", value.max(0.0));
    let mut out = String::new();
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

fn print_header() {
    println!(
        "{:<13} {:>4} {:>9} {:>11}  note",
        "side", "run", "seconds", "rows/s"
    );
}

fn print_run(run: &Run) {
    let rep = if run.rep == 0 {
        "+".to_owned()
    } else {
        run.rep.to_string()
    };
    let line = format!(
        "{:<13} {:>4} {:>9.3} {:>11}  {}",
        run.side.label(),
        rep,
        run.elapsed.as_secs_f64(),
        group(run.rows_per_second()),
        run.note
    );
    println!("{}", line.trim_end());
}

async fn bench(rows: u64, reps: usize) -> anyhow::Result<()> {
    let mut bench = Bench::start(rows)
        .await
        .context("setting up (is scripts/bootstrap's PostgreSQL and Redis running?)")?;
    println!(
        "{reps} repetitions per side; pg_dump {}, psql {}\n",
        bench.pg_dump.display(),
        bench.psql.display()
    );
    print_header();
    let mut runs = Vec::new();
    let mut result = async {
        for rep in 1..=reps {
            for side in [Side::Pgfleet, Side::PgDump, Side::Direct] {
                runs.push(bench.run(side, rep, DEFAULT_BATCH, rep == 1).await?);
            }
        }
        anyhow::Ok(())
    }
    .await;
    let mut large = None;
    if result.is_ok() {
        match bench.run(Side::Pgfleet, 0, LARGE_BATCH, false).await {
            Ok(run) => large = Some(run),
            Err(e) => result = Err(e),
        }
    }
    // Clean up even when a copy failed, then report the failure.
    let stopped = bench.stop().await;
    result?;
    stopped.context("cleaning up")?;

    println!("\nmedians over {reps} repetitions ({} rows):", group(rows as f64));
    let mut medians = Vec::new();
    for side in [Side::Pgfleet, Side::PgDump, Side::Direct] {
        let mine: Vec<&Run> = runs.iter().filter(|run| run.side == side).collect();
        let seconds = median(mine.iter().map(|run| run.elapsed.as_secs_f64()).collect());
        let per_second = median(mine.iter().map(|run| run.rows_per_second()).collect());
        println!(
            "{:<13} {:>9.3} s {:>11} rows/s",
            side.label(),
            seconds,
            group(per_second)
        );
        medians.push(per_second);
    }
    if let Some(run) = &large {
        println!(
            "{:<13} {:>9.3} s {:>11} rows/s  (one run, batch {})",
            "pgfleet",
            run.elapsed.as_secs_f64(),
            group(run.rows_per_second()),
            group(f64::from(LARGE_BATCH))
        );
    }
    let (pgfleet, pg_dump, direct) = (medians[0], medians[1], medians[2]);
    println!(
        "\npgfleet / pg_dump|psql: {:.2} (rows/s; pgfleet takes {:.1}x as long)",
        pgfleet / pg_dump,
        pg_dump / pgfleet
    );
    println!(
        "pgfleet / direct COPY:  {:.2}; pg_dump|psql / direct COPY: {:.2}",
        pgfleet / direct,
        pg_dump / direct
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    common::run_rows_and_reps(1, DEFAULT_ROWS, DEFAULT_REPS, bench)
}
