//! What backing up a database of about 1.1 GiB costs through pgfleet's
//! `BackupService/RunBackup` compared with `pg_dump --format=custom | zstd | age` of the same
//! database, side by side in one run: time, throughput, sizes and peak resident memory.
//!
//! One database holds `public.big` (the integration test's table: `id` and about 1 KiB of
//! hex per row, 1,100,000 rows, unlogged; `pg_dump` writes about 1.06 GiB and zstd keeps a
//! little more than half). Each repetition backs it up once per side:
//!
//! - `pgfleet`: `RunBackup` of the target without a policy (custom format, zstd level 3, age
//!   to one X25519 recipient, a local directory), timed from the request to the `Done` event.
//!   pg_dump runs as the server's child; the server hashes the dump, compresses, encrypts,
//!   hashes the stored bytes and uploads in 8 MiB parts, then writes the manifest and the
//!   catalog row.
//! - `pg_dump|zstd|age`: `pg_dump --format=custom --compress=0 | zstd -3 -T1 | age -r
//!   <recipient> > file` under `bash -c 'set -o pipefail; …'`: the same dump, level,
//!   recipient and disk, no checksums or catalog. The same `pg_dump` on both sides
//!   (`backup.pg_bin_dir`).
//!
//! Peak memory is the highest sum of `VmRSS` over a process and its descendants, sampled
//! every 20 ms: for pgfleet this bench's process (server, client, runtime) and its pg_dump,
//! for the baseline bash and its three programs. `growth` is pgfleet's peak above the
//! process's resident size when the run began (what the backup itself holds).
//!
//! The pgfleet side is the real server (`RunningServer::start`, in this process, on
//! 127.0.0.1 with a random port, scheduler off) called through a tonic client as a MASTER
//! user with a bearer token. Run with
//!
//! ```text
//! cargo bench -p pgfleet-server --bench backup
//! PGFLEET_BENCH_ROWS=300000 PGFLEET_BENCH_REPS=3 cargo bench -p pgfleet-server --bench backup
//! ```
//!
//! `PGFLEET_BENCH_ROWS` sets the row count (default 1,100,000: about 1 KiB each),
//! `PGFLEET_BENCH_REPS` the repetitions per side (default 2). It needs what
//! `scripts/bootstrap` provides: PostgreSQL on 127.0.0.1:5432 (trust, user postgres, with
//! `pg_dump`), Redis on 127.0.0.1:6379, and `zstd` and `age` on `PATH`. Its databases
//! (`bench_*`) are dropped at the end, its backups are written under a temporary directory.

// The integration tests' harness: a fleet of throwaway databases, a running
// server, logged-in users, the table and the memory sampler. A benchmark uses
// only part of it.
#[path = "../tests/it/support/mod.rs"]
#[allow(dead_code)]
mod support;

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use age::secrecy::ExposeSecret as _;
use anyhow::Context as _;
use pgfleet_engine::identity::Role;
use pgfleet_proto::pgfleet::v1 as pb;
use pgfleet_proto::pgfleet::v1::backup_service_client::BackupServiceClient;
use pgfleet_proto::pgfleet::v1::run_backup_response::Event;
use pgfleet_server::app::RunningServer;
use pgfleet_testkit::TestDatabase;
use tonic::transport::Channel;

use common::{drop_databases, log_out_and_stop, median, pg_binary};
use support::{Fleet, RssSampler, bearer, big_table_sql, target};

const MASTER: &str = "bench-master";
const DEFAULT_ROWS: u64 = 1_100_000;
const DEFAULT_REPS: usize = 2;
/// `RunBackup` without a policy compresses at this level; the baseline's zstd does too.
const ZSTD_LEVEL: i32 = 3;
const MIB: f64 = 1024.0 * 1024.0;

/// One side of the comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Pgfleet,
    Pipeline,
}

impl Side {
    fn label(self) -> &'static str {
        match self {
            Side::Pgfleet => "pgfleet",
            Side::Pipeline => "pg_dump|zstd|age",
        }
    }
}

/// One timed backup.
#[derive(Debug, Clone)]
struct Run {
    side: Side,
    rep: usize,
    elapsed: Duration,
    /// The dump's size (pgfleet counts it; the baseline makes the same dump).
    raw_bytes: u64,
    stored_bytes: u64,
    peak_rss: u64,
    /// Peak above the resident size when the run began.
    growth: u64,
}

impl Run {
    fn mib_per_second(&self) -> f64 {
        self.raw_bytes as f64 / MIB / self.elapsed.as_secs_f64()
    }
}

struct Bench {
    server: RunningServer,
    channel: Channel,
    client: BackupServiceClient<Channel>,
    token: String,
    /// The database's URL for the baseline's pg_dump.
    url: String,
    recipient: String,
    pg_dump: PathBuf,
    /// Holds the key, pgfleet's backups and the baseline's files.
    dir: tempfile::TempDir,
    /// The last pgfleet run's dump size, for the baseline's throughput.
    raw_bytes: u64,
    fleet: Fleet,
}

impl Bench {
    async fn start(rows: u64) -> anyhow::Result<Self> {
        let pg_dump = pg_binary("pg_dump")?;
        let history = TestDatabase::create("bench_history").await?;
        let database = TestDatabase::create("bench_backup_app").await?;
        let started = Instant::now();
        let mut connection = database.connect().await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(big_table_sql(rows)))
            .execute(&mut connection)
            .await
            .context("filling public.big")?;
        let size: String = sqlx::query_scalar("SELECT pg_size_pretty(pg_table_size('public.big'))")
            .fetch_one(&mut connection)
            .await?;
        println!(
            "source: {rows} rows in public.big ({size}), filled in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        let url = database.url().to_owned();

        let dir = tempfile::tempdir()?;
        let identity = age::x25519::Identity::generate();
        let identity_file = dir.path().join("backup.key");
        std::fs::write(
            &identity_file,
            format!("{}\n", identity.to_string().expose_secret()),
        )?;
        let recipient = identity.to_public().to_string();
        let bin_dir = pg_dump
            .parent()
            .context("pg_dump has no directory")?
            .to_path_buf();
        let backup_toml = format!(
            "[backup]\ndir = '{}'\nrecipients = ['{recipient}']\nidentity_file = '{}'\npg_bin_dir = '{}'\n\
             scheduler = false\n",
            dir.path().join("pgfleet").display(),
            identity_file.display(),
            bin_dir.display()
        );
        let fleet = Fleet::with_databases(history, vec![("aws", "app", database)]).await?;
        let server = fleet.start(&backup_toml).await.context("starting the server")?;
        let channel = support::channel(&server)
            .await
            .context("connecting to the server")?;
        let token = fleet
            .log_in(&channel, MASTER, Role::Master)
            .await
            .context("logging in")?;
        Ok(Self {
            server,
            client: BackupServiceClient::new(channel.clone()),
            channel,
            token,
            url,
            recipient,
            pg_dump,
            dir,
            raw_bytes: 0,
            fleet,
        })
    }

    async fn stop(self) -> anyhow::Result<()> {
        log_out_and_stop(self.server, &self.channel, &self.token).await?;
        drop_databases(self.fleet).await
    }

    async fn run(&mut self, side: Side, rep: usize) -> anyhow::Result<Run> {
        let run = match side {
            Side::Pgfleet => self.pgfleet(rep).await?,
            Side::Pipeline => self.pipeline(rep).await?,
        };
        print_run(&run);
        Ok(run)
    }

    /// `RunBackup` of aws/app, from the request to `Done`; the backup is deleted after.
    async fn pgfleet(&mut self, rep: usize) -> anyhow::Result<Run> {
        let request = pb::RunBackupRequest {
            policy_id: String::new(),
            targets: vec![target("aws", "app")],
        };
        let sampler = RssSampler::start(std::process::id());
        let started = Instant::now();
        let mut stream = self
            .client
            .run_backup(bearer(request, &self.token))
            .await
            .context("RunBackup refused the call")?
            .into_inner();
        let mut events = Vec::new();
        while let Some(message) = stream.message().await? {
            events.extend(message.event);
        }
        let elapsed = started.elapsed();
        let baseline = sampler.baseline;
        let peak_rss = sampler.stop();
        let backup = events
            .iter()
            .find_map(|event| match event {
                Event::Finished(finished) if finished.error.is_empty() => finished.backup.clone(),
                _ => None,
            })
            .with_context(|| format!("the backup failed: {events:?}"))?;
        self.client
            .delete_backup(bearer(pb::DeleteBackupRequest { id: backup.id }, &self.token))
            .await
            .context("deleting the backup")?;
        self.raw_bytes = backup.raw_bytes;
        Ok(Run {
            side: Side::Pgfleet,
            rep,
            elapsed,
            raw_bytes: backup.raw_bytes,
            stored_bytes: backup.stored_bytes,
            peak_rss,
            growth: peak_rss.saturating_sub(baseline),
        })
    }

    /// `pg_dump | zstd | age > file`, its file deleted after.
    async fn pipeline(&mut self, rep: usize) -> anyhow::Result<Run> {
        let out = self.dir.path().join("pipeline.dump.zst.age");
        let script = format!(
            "set -o pipefail; \"$0\" --format=custom --compress=0 --dbname=\"$1\" \
             | zstd -q -{ZSTD_LEVEL} -T1 | age -r \"$2\" > \"$3\""
        );
        let mut command = std::process::Command::new("bash");
        command
            .arg("-c")
            .arg(script)
            .arg(&self.pg_dump)
            .arg(&self.url)
            .arg(&self.recipient)
            .arg(&out);
        let started = Instant::now();
        let child = command
            .spawn()
            .context("running bash (and zstd and age: scripts/bootstrap installs them)")?;
        let sampler = RssSampler::start(child.id());
        let output = tokio::task::spawn_blocking(move || child.wait_with_output()).await??;
        let elapsed = started.elapsed();
        let baseline = sampler.baseline;
        let peak_rss = sampler.stop();
        anyhow::ensure!(output.status.success(), "the pipeline failed: {}", output.status);
        let stored_bytes = std::fs::metadata(&out)?.len();
        remove(&out)?;
        Ok(Run {
            side: Side::Pipeline,
            rep,
            elapsed,
            raw_bytes: self.raw_bytes,
            stored_bytes,
            peak_rss,
            growth: peak_rss.saturating_sub(baseline),
        })
    }
}

fn remove(path: &Path) -> anyhow::Result<()> {
    std::fs::remove_file(path).with_context(|| format!("removing {}", path.display()))
}

fn print_header() {
    println!(
        "{:<17} {:>4} {:>9} {:>9} {:>10} {:>10} {:>9} {:>9}",
        "side", "run", "seconds", "MiB/s", "dump MiB", "stored MiB", "peak MiB", "growth"
    );
}

fn print_run(run: &Run) {
    println!(
        "{:<17} {:>4} {:>9.2} {:>9.1} {:>10.1} {:>10.1} {:>9.1} {:>9.1}",
        run.side.label(),
        run.rep,
        run.elapsed.as_secs_f64(),
        run.mib_per_second(),
        run.raw_bytes as f64 / MIB,
        run.stored_bytes as f64 / MIB,
        run.peak_rss as f64 / MIB,
        run.growth as f64 / MIB
    );
}

async fn bench(rows: u64, reps: usize) -> anyhow::Result<()> {
    let mut bench = Bench::start(rows)
        .await
        .context("setting up (is scripts/bootstrap's PostgreSQL and Redis running?)")?;
    println!(
        "{reps} repetitions per side; pg_dump {}, zstd -{ZSTD_LEVEL} -T1, age 1 recipient\n",
        bench.pg_dump.display()
    );
    print_header();
    let mut runs = Vec::new();
    let result = async {
        for rep in 1..=reps {
            for side in [Side::Pgfleet, Side::Pipeline] {
                runs.push(bench.run(side, rep).await?);
            }
        }
        anyhow::Ok(())
    }
    .await;
    // Clean up even when a backup failed, then report the failure.
    let stopped = bench.stop().await;
    result?;
    stopped.context("cleaning up")?;

    println!("\nmedians over {reps} repetitions:");
    let mut throughput = Vec::new();
    for side in [Side::Pgfleet, Side::Pipeline] {
        let mine: Vec<&Run> = runs.iter().filter(|run| run.side == side).collect();
        let seconds = median(mine.iter().map(|run| run.elapsed.as_secs_f64()).collect());
        let per_second = median(mine.iter().map(|run| run.mib_per_second()).collect());
        let peak = median(mine.iter().map(|run| run.peak_rss as f64 / MIB).collect());
        let growth = median(mine.iter().map(|run| run.growth as f64 / MIB).collect());
        println!(
            "{:<17} {seconds:>9.2} s {per_second:>9.1} MiB/s  peak {peak:>7.1} MiB (growth {growth:.1} MiB)",
            side.label()
        );
        throughput.push(per_second);
    }
    println!(
        "\npgfleet / pg_dump|zstd|age: {:.2} (MiB/s of dump)",
        throughput[0] / throughput[1]
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    common::run_rows_and_reps(1, DEFAULT_ROWS, DEFAULT_REPS, bench)
}
