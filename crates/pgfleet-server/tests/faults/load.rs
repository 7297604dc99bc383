//! The load test: 500 concurrent ExecuteStream and 200 concurrent Execute
//! calls across the fleet's four targets, in two rounds, against the
//! `pgfleet` binary on loopback. What must hold: no error but
//! RESOURCE_EXHAUSTED from a pool whose queue wait passed its
//! `acquire_timeout`; never more connections to a target than its pool
//! size (sampled from `pg_stat_activity` throughout); the server's resident
//! memory and file descriptors the same after the second round as after
//! the first. p50/p99 are reported (printed and written to
//! `target/load-last.txt`), not asserted.
//!
//! Minutes of all cores: `#[ignore]`d, run by `just load` (`scripts/load`).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use pgfleet_engine::identity::Role;
use pgfleet_proto::pgfleet::v1 as pb;
use tonic::transport::{Channel, Endpoint};

use crate::support::{Fleet, bearer, child_output, send_signal, spawn_server_binary, workspace_root};
use crate::trail::{admin, execute, execute_stream, query};

const STREAMS: usize = 500;
const EXECUTES: usize = 200;
/// `pool.max_connections` of every target.
const POOL_SIZE: i64 = 10;
/// HTTP/2 connections the calls are spread over (each well under the
/// server's `max_concurrent_streams`).
const CHANNELS: usize = 8;
const ROWS_PER_STREAM: usize = 1000;

/// A failed call's code (the call's status, or its target's error) and
/// message.
type Failure = (String, String);

/// One call: which kind, how long, and how it failed if it did.
struct Call {
    stream: bool,
    took: Duration,
    error: Option<Failure>,
}

fn status_failure(status: &tonic::Status) -> Failure {
    (format!("{:?}", status.code()), status.message().to_owned())
}

fn target_failure(error: &pb::TargetError) -> Failure {
    (format!("{:?}", error.code()), error.message.clone())
}

async fn stream_call(channel: Channel, token: String, cloud: &str, database: &str) -> Option<Failure> {
    let sql = format!("SELECT i, md5(i::text) AS digest FROM generate_series(1, {ROWS_PER_STREAM}) i");
    let mut stream = match query(&channel)
        .execute_stream(bearer(execute_stream(Some(cloud), database, &sql), &token))
        .await
    {
        Ok(response) => response.into_inner(),
        Err(status) => return Some(status_failure(&status)),
    };
    let mut rows = 0;
    while let Some(message) = stream.next().await {
        match message {
            Ok(message) => match message.event {
                Some(pb::execute_stream_response::Event::RowBatch(batch)) => rows += batch.rows.len(),
                Some(pb::execute_stream_response::Event::TargetSummary(summary)) => {
                    if let Some(error) = summary.error {
                        return Some(target_failure(&error));
                    }
                }
                _ => {}
            },
            Err(status) => return Some(status_failure(&status)),
        }
    }
    (rows != ROWS_PER_STREAM).then(|| ("rows".to_owned(), format!("{rows} rows arrived")))
}

async fn execute_call(channel: Channel, token: String, cloud: &str, database: &str) -> Option<Failure> {
    let sql = "SELECT count(*) FROM generate_series(1, 10000)";
    match query(&channel)
        .execute(bearer(execute(Some(cloud), database, sql), &token))
        .await
    {
        Ok(response) => response
            .into_inner()
            .results
            .into_iter()
            .find_map(|result| result.error.as_ref().map(target_failure)),
        Err(status) => Some(status_failure(&status)),
    }
}

/// The `p`th percentile (nearest rank) of `sorted`.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Resident memory (KiB) and open descriptors of process `pid`.
fn footprint(pid: u32) -> anyhow::Result<(u64, usize)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS for {pid}"))?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count();
    Ok((rss, fds))
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "load test, minutes of every core: run with `just load`"]
async fn load_500_streams_and_200_executes_across_four_targets() -> anyhow::Result<()> {
    let mut fleet = Fleet::create().await?;
    fleet.database_toml = format!("pool = {{ max_connections = {POOL_SIZE}, acquire_timeout = '10s' }}\n");
    let port = pgfleet_testkit::free_port()?;
    let dir = tempfile::tempdir()?;
    let config_path = dir.path().join("pgfleet.toml");
    // The default Redis settings (a 2 s wait, 16 connections), not the test
    // fleets' short wait: the 700 calls share them (`RedisPool`).
    let text = fleet
        .config_toml("")
        .replace(
            "listen_addr = '127.0.0.1:0'",
            &format!("listen_addr = '127.0.0.1:{port}'"),
        )
        .replace("connect_timeout = '500ms'\n", "");
    std::fs::write(&config_path, text)?;
    let (mut server, first_channel) = spawn_server_binary(&config_path, port).await?;
    let pid = server.id().ok_or_else(|| anyhow::anyhow!("pgfleet exited"))?;
    let token = fleet.log_in(&first_channel, "load-user", Role::User).await?;
    let mut channels = Vec::new();
    for _ in 0..CHANNELS {
        channels.push(
            Endpoint::from_shared(format!("http://127.0.0.1:{port}"))?
                .connect()
                .await?,
        );
    }
    let targets: Vec<(String, String, String)> = fleet
        .databases
        .iter()
        .map(|(cloud, name, db)| (cloud.clone(), name.clone(), db.name().to_owned()))
        .collect();

    // The most connections each target's database had per login, sampled
    // all along.
    let most: Arc<Mutex<HashMap<String, i64>>> = Arc::default();
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = tokio::spawn({
        let most = Arc::clone(&most);
        let sampling = Arc::clone(&sampling);
        let names: Vec<String> = targets.iter().map(|(_, _, db)| db.clone()).collect();
        let admin = admin().await?;
        async move {
            while sampling.load(Ordering::SeqCst) {
                // Per login: a target has a pool for its main login and one
                // for its reader login, each of POOL_SIZE.
                let counts: Vec<(String, i64)> = sqlx::query_as(
                    "SELECT datname || ' as ' || usename, count(*) FROM pg_stat_activity \
                     WHERE datname = ANY($1) AND pid <> pg_backend_pid() GROUP BY datname, usename",
                )
                .bind(&names)
                .fetch_all(&admin)
                .await?;
                if let Ok(mut most) = most.lock() {
                    for (name, count) in counts {
                        let seen = most.entry(name).or_default();
                        *seen = (*seen).max(count);
                    }
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            admin.close().await;
            anyhow::Ok(())
        }
    });

    let mut report = String::new();
    let mut footprints = Vec::new();
    // Per code: how many, and the first message.
    let mut errors: BTreeMap<String, (usize, String)> = BTreeMap::new();
    for round in 1..=2 {
        let started = Instant::now();
        let mut calls = Vec::new();
        for i in 0..STREAMS + EXECUTES {
            let (cloud, database, _) = targets[i % targets.len()].clone();
            let channel = channels[i % CHANNELS].clone();
            let token = token.clone();
            let stream = i < STREAMS;
            calls.push(tokio::spawn(async move {
                let began = Instant::now();
                let error = if stream {
                    stream_call(channel, token, &cloud, &database).await
                } else {
                    execute_call(channel, token, &cloud, &database).await
                };
                Call {
                    stream,
                    took: began.elapsed(),
                    error,
                }
            }));
        }
        let mut finished = Vec::new();
        for call in calls {
            finished.push(
                tokio::time::timeout(Duration::from_secs(300), call)
                    .await
                    .map_err(|_| anyhow::anyhow!("round {round}: a call did not finish"))??,
            );
        }
        let wall = started.elapsed();
        // Let the server drop what the round left (closed streams, tasks)
        // before reading its footprint.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (rss, fds) = footprint(pid)?;
        footprints.push((rss, fds));
        for call in &finished {
            if let Some((code, message)) = &call.error {
                errors
                    .entry(code.clone())
                    .or_insert_with(|| (0, message.clone()))
                    .0 += 1;
            }
        }
        for (kind, is_stream) in [("ExecuteStream", true), ("Execute", false)] {
            let mut took: Vec<Duration> = finished
                .iter()
                .filter(|call| call.stream == is_stream)
                .map(|call| call.took)
                .collect();
            took.sort_unstable();
            report.push_str(&format!(
                "round {round}: {kind} x{}: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms\n",
                took.len(),
                percentile(&took, 50.0).as_secs_f64() * 1000.0,
                percentile(&took, 99.0).as_secs_f64() * 1000.0,
                took.last().copied().unwrap_or_default().as_secs_f64() * 1000.0,
            ));
        }
        report.push_str(&format!(
            "round {round}: {} calls in {:.1} s; server RSS {:.1} MiB, {fds} open fds\n",
            finished.len(),
            wall.as_secs_f64(),
            rss as f64 / 1024.0
        ));
    }
    sampling.store(false, Ordering::SeqCst);
    sampler.await??;
    let most = most.lock().map(|most| most.clone()).unwrap_or_default();
    report.push_str(&format!(
        "errors: {errors:?}\nmost connections per target and login (pool size {POOL_SIZE}): {:?}\n",
        most.values().collect::<Vec<_>>()
    ));
    println!("{report}");
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    std::fs::write(target_dir.join("load-last.txt"), &report)?;

    if !errors.is_empty() {
        // Why, as the server logged it (before the assertions fail).
        send_signal(&server, "TERM").await?;
        let output = child_output(&mut server).await?;
        for line in output
            .lines()
            .filter(|line| line.contains("WARN") || line.contains("ERROR"))
            .take(10)
        {
            println!("server: {line}");
        }
    }
    assert!(
        errors.keys().all(|code| code == "ResourceExhausted"),
        "errors other than RESOURCE_EXHAUSTED: {errors:?}"
    );
    assert!(
        most.len() >= targets.len(),
        "every target was seen busy: {most:?}"
    );
    assert!(most.values().all(|&count| count <= POOL_SIZE), "{most:?}");
    let ((rss_1, fds_1), (rss_2, fds_2)) = (footprints[0], footprints[1]);
    assert!(
        rss_2 <= rss_1 + rss_1 / 5 + 16 * 1024,
        "resident memory grew from {rss_1} KiB to {rss_2} KiB"
    );
    assert!(
        fds_2 <= fds_1 + 8,
        "file descriptors grew from {fds_1} to {fds_2}"
    );

    send_signal(&server, "TERM").await?;
    let exited = tokio::time::timeout(Duration::from_secs(30), server.wait()).await??;
    assert!(exited.success());
    Ok(())
}
