//! Where `analyze`'s time goes, beside `pg_query::parse` alone (issue #19's
//! "validator" row: statements/s through `analyze` / through `pg_query::parse`).
//!
//! Every function runs over the same five texts as the server bench's
//! `VALIDATED` (`benches/shared/validated.rs`, shared with it), so criterion's
//! elements/s are statements/s and the rows compare directly:
//! - `pg_query_parse`: the baseline, `pg_query::parse` on the bench thread;
//! - `analyze`, `parse` and `fingerprint`: this crate's entry points, from
//!   the bench's main thread (8 MiB of stack: libpg_query runs on it);
//! - `analyze_from_2mib_thread`: `analyze` from a thread with tokio's 2 MiB
//!   stack, which hands every text to the crate's parser thread;
//! - `pg_query_scan`, `pg_query_scan_tokens`, `pg_query_fingerprint`,
//!   `pg_query_normalize`: the other libpg_query passes `analyze` makes;
//! - `hop`: an empty round trip to a thread of its own over the same kind of
//!   channels `engine.rs` used for its parser thread (what a text paid to
//!   get there and back before any parsing).
//!
//! `cargo bench -p pgfleet-sqlcheck --bench analyze`

use std::hint::black_box;
use std::sync::mpsc;
use std::thread;
use std::time::Instant;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

// Shared with the other validator benchmark.
#[path = "shared/validated.rs"]
mod validated;
use validated::VALIDATED;

type Job = Box<dyn FnOnce() + Send>;

/// A thread that runs jobs sent to it, as `engine.rs`'s parser thread did.
fn hop_thread() -> mpsc::Sender<Job> {
    let (jobs, inbox) = mpsc::channel::<Job>();
    thread::Builder::new()
        .name("bench-hop".into())
        .stack_size(64 * 1024 * 1024)
        .spawn(move || {
            for job in inbox {
                job();
            }
        })
        .expect("the hop thread starts");
    jobs
}

fn each_text(work: impl Fn(&'static str)) -> impl Fn() {
    move || {
        for text in VALIDATED {
            work(black_box(text));
        }
    }
}

fn analyze(c: &mut Criterion) {
    let mut group = c.benchmark_group("validated");
    group.throughput(Throughput::Elements(VALIDATED.len() as u64));

    let run = each_text(|text| {
        black_box(pg_query::parse(text, 0).expect("valid SQL"));
    });
    group.bench_function("pg_query_parse", |b| b.iter(&run));

    let run = each_text(|text| {
        black_box(pgfleet_sqlcheck::analyze(text).expect("valid SQL"));
    });
    group.bench_function("analyze", |b| b.iter(&run));

    // From a thread with tokio's 2 MiB stack: too little to run libpg_query
    // on, so every text goes to the crate's parser thread and back.
    group.bench_function("analyze_from_2mib_thread", |b| {
        b.iter_custom(|iters| {
            thread::Builder::new()
                .stack_size(2 * 1024 * 1024)
                .spawn(move || {
                    let started = Instant::now();
                    for _ in 0..iters {
                        for text in VALIDATED {
                            black_box(pgfleet_sqlcheck::analyze(black_box(text)).expect("valid SQL"));
                        }
                    }
                    started.elapsed()
                })
                .expect("the 2 MiB thread starts")
                .join()
                .expect("the 2 MiB thread finishes")
        })
    });

    let run = each_text(|text| {
        black_box(pgfleet_sqlcheck::parse(text).expect("valid SQL"));
    });
    group.bench_function("parse", |b| b.iter(&run));

    let run = each_text(|text| {
        black_box(pgfleet_sqlcheck::fingerprint(text).expect("valid SQL"));
    });
    group.bench_function("fingerprint", |b| b.iter(&run));

    let run = each_text(|text| {
        black_box(pg_query::scan(text).expect("valid SQL"));
    });
    group.bench_function("pg_query_scan", |b| b.iter(&run));

    let run = each_text(|text| {
        black_box(pg_query::scan_tokens(text).expect("valid SQL"));
    });
    group.bench_function("pg_query_scan_tokens", |b| b.iter(&run));

    let run = each_text(|text| {
        black_box(pg_query::fingerprint(text, 0, 0).expect("valid SQL"));
    });
    group.bench_function("pg_query_fingerprint", |b| b.iter(&run));

    let run = each_text(|text| {
        black_box(pg_query::normalize(text).expect("valid SQL"));
    });
    group.bench_function("pg_query_normalize", |b| b.iter(&run));

    let jobs = hop_thread();
    let run = each_text(|text| {
        let (reply, answer) = mpsc::sync_channel(1);
        jobs.send(Box::new(move || {
            let _ = reply.send(text.len());
        }))
        .expect("the hop thread runs");
        black_box(answer.recv().expect("the hop thread answers"));
    });
    group.bench_function("hop", |b| b.iter(&run));

    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(std::time::Duration::from_secs(1))
        .measurement_time(std::time::Duration::from_secs(3));
    targets = analyze
}
criterion_main!(benches);
