//! Stable-Rust fuzzing: proptest runs bounded by a case count or a time budget.
//!
//! cargo-fuzz needs a nightly toolchain, so each fuzz harness is a normal
//! `#[test]` that hands a strategy and a property to [`run`]. By default a
//! harness runs its own small case count (what `scripts/test` and CI run);
//! `PGFLEET_FUZZ_CASES` sets the count for every harness, and
//! `PGFLEET_FUZZ_SECONDS` instead runs fresh batches until that much time has
//! passed (`just fuzz 60`). A failure is shrunk and its seed saved under
//! `proptest-regressions/` next to the harness, as `proptest!` does, so the
//! next run replays it first.

use std::time::{Duration, Instant};

use proptest::strategy::Strategy;
use proptest::test_runner::{Config, FileFailurePersistence, TestCaseResult, TestRunner};

/// Number of cases for every harness, overriding its default.
pub const FUZZ_CASES_ENV: &str = "PGFLEET_FUZZ_CASES";
/// Seconds each harness runs for (batches of cases until the time is up).
pub const FUZZ_SECONDS_ENV: &str = "PGFLEET_FUZZ_SECONDS";

/// Cases per batch in a timed run: small, so a run ends close to its budget.
const BATCH: u32 = 16;

/// What one harness run did.
#[derive(Debug, Clone, Copy)]
pub struct FuzzReport {
    pub cases: u64,
    pub elapsed: Duration,
}

fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

/// Runs `property` on values of `strategy`: `default_cases` of them, or as the
/// environment says (module docs). Panics with the shrunk failing value and
/// proptest's message when the property fails or panics; prints
/// `fuzz <name>: <cases> cases in <seconds>s` otherwise.
///
/// `source_file` is the harness's `file!()`: the regression file is named after it.
pub fn run<S: Strategy>(
    name: &str,
    source_file: &'static str,
    default_cases: u32,
    strategy: S,
    property: impl Fn(S::Value) -> TestCaseResult,
) -> FuzzReport {
    let started = Instant::now();
    let budget = env_number(FUZZ_SECONDS_ENV).map(Duration::from_secs);
    let cases = env_number(FUZZ_CASES_ENV)
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or(default_cases);
    let config = |cases: u32| Config {
        cases,
        source_file: Some(source_file),
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        // Harnesses may do I/O (a server, a database): never fork, and keep
        // shrinking short so a failure is reported within minutes.
        max_shrink_iters: 256,
        ..Config::default()
    };
    let mut done: u64 = 0;
    loop {
        let batch = if budget.is_some() { BATCH } else { cases };
        let mut runner = TestRunner::new(config(batch));
        if let Err(failure) = runner.run(&strategy, &property) {
            panic!("fuzz {name}: failed after {done} passing cases: {failure}");
        }
        done += u64::from(batch);
        match budget {
            Some(budget) if started.elapsed() < budget => continue,
            _ => break,
        }
    }
    let report = FuzzReport {
        cases: done,
        elapsed: started.elapsed(),
    };
    eprintln!(
        "fuzz {name}: {} cases in {:.1}s",
        report.cases,
        report.elapsed.as_secs_f64()
    );
    report
}
