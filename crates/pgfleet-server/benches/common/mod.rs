//! What the benches share besides the test harness: stopping a bench's
//! server and dropping its databases, the PostgreSQL client programs to
//! compare against, settings from the environment, and medians.

use std::path::PathBuf;

use anyhow::Context as _;
use pgfleet_proto::pgfleet::v1 as pb;
use pgfleet_proto::pgfleet::v1::auth_service_client::AuthServiceClient;
use pgfleet_server::app::RunningServer;
use tonic::transport::Channel;

use crate::support::{Fleet, bearer};

/// Logs `token` out (its session's Redis keys go) and stops the server.
pub async fn log_out_and_stop(server: RunningServer, channel: &Channel, token: &str) -> anyhow::Result<()> {
    AuthServiceClient::new(channel.clone())
        .logout(bearer(pb::LogoutRequest {}, token))
        .await
        .context("logging out")?;
    server.shutdown().await.context("stopping the server")?;
    Ok(())
}

/// Drops the fleet's databases and its history store.
pub async fn drop_databases(fleet: Fleet) -> anyhow::Result<()> {
    let Fleet {
        history, databases, ..
    } = fleet;
    history.drop_now().await?;
    for (_, _, database) in databases {
        database.drop_now().await?;
    }
    Ok(())
}

/// `name` from `PGFLEET_TEST_PG_BINDIR`, `PATH`, or the newest `/usr/lib/postgresql/*/bin`.
pub fn pg_binary(name: &str) -> anyhow::Result<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os(pgfleet_testkit::PG_BINDIR_ENV)
        .map(PathBuf::from)
        .into_iter()
        .collect();
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .collect();
    versions.sort_by_key(|(version, _)| std::cmp::Reverse(*version));
    dirs.extend(versions.into_iter().map(|(_, dir)| dir));
    dirs.into_iter()
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| anyhow::anyhow!("{name} not found in PATH or /usr/lib/postgresql/*/bin"))
}

/// `name` from the environment as a number (`_` allowed between digits), or `default`.
pub fn env_number<T: std::str::FromStr>(name: &str, default: T) -> anyhow::Result<T> {
    match std::env::var(name) {
        Ok(text) => text
            .replace('_', "")
            .parse()
            .map_err(|_| anyhow::anyhow!("{name}={text:?} is not a positive number")),
        Err(_) => Ok(default),
    }
}

/// A bench's `main`: `PGFLEET_BENCH_ROWS` (at least `min_rows`) and
/// `PGFLEET_BENCH_REPS` from the environment or the bench's defaults, then
/// `bench(rows, reps)` on a multi-threaded runtime. `cargo bench` passes
/// `--bench` (and any filter): nothing to choose from the arguments.
pub fn run_rows_and_reps<F, Fut>(
    min_rows: u64,
    default_rows: u64,
    default_reps: usize,
    bench: F,
) -> anyhow::Result<()>
where
    F: FnOnce(u64, usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let rows: u64 = env_number("PGFLEET_BENCH_ROWS", default_rows)?;
    let reps: usize = env_number("PGFLEET_BENCH_REPS", default_reps)?;
    anyhow::ensure!(
        rows >= min_rows && reps > 0,
        "PGFLEET_BENCH_ROWS must be at least {min_rows} and PGFLEET_BENCH_REPS above 0"
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    runtime.block_on(bench(rows, reps))
}

/// The median of `values` (NaN for none).
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    match values.len() {
        0 => f64::NAN,
        n if n.is_multiple_of(2) => (values[middle - 1] + values[middle]) / 2.0,
        _ => values[middle],
    }
}
