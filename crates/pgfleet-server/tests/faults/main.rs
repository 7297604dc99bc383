//! The fault suite (issue #20), its own test binary (`faults`): each module
//! is one family of faults, driven against the real server (in this process,
//! or the `pgfleet` binary as a child for signals) with real PostgreSQL and
//! Redis behind the test kit's fault proxy, and asserts what a user would
//! expect: nothing lost, nothing half-done without a record, no connection
//! state leaking into the next request. Run one family with e.g.
//! `cargo nextest run --workspace -E 'binary(faults) & test(/^target_reset::/)'`.
//!
//! - `target_reset`: a target's connection reset after N bytes of results.
//! - `target_blackhole`: a target that stops answering mid-statement.
//! - `client_disconnect`: the caller leaves mid-transaction and mid-stream.
//! - `history_store`: the history store slowed, then cut, during writes.
//! - `commit_lost`: a target's connection lost after COMMIT was sent.
//! - `pool_queue`: a pool busy past its queue limit.
//! - `redis`: Redis cut during a burst of calls.
//! - `signals`: SIGTERM during a fan-out write and a replication run,
//!   SIGKILL during writes and the restart that sweeps their records.
//! - `atomic_kill`: SIGKILL during an atomic (two-phase) write, before and
//!   after the decision, and the restart that recovers it.
//! - `load`: the load test, `#[ignore]`d (run by `just load`, see the
//!   docs/RELIABILITY.md).
//!
//! The harness is `tests/it/support`, shared with the `it` binary and the
//! benchmarks; `trail` holds what only this suite reads (the audit trail as
//! stored, backends as PostgreSQL lists them).

#[path = "../it/support/mod.rs"]
#[allow(dead_code)]
mod support;

mod trail;

mod atomic_kill;
mod client_disconnect;
mod commit_lost;
mod history_store;
mod load;
mod pool_queue;
mod redis;
mod signals;
mod target_blackhole;
mod target_reset;
