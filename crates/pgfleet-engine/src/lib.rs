//! pgfleet's domain engine: what the services do, without the wire.
//!
//! - [`query`]: a SQL text checked into a [`query::Plan`] (targets, roles,
//!   dangerous statements, budgets) and run on every target concurrently,
//!   results out as [`query::TargetEvent`]s, rows encoded by the caller's
//!   [`query::RowEncoder`] straight into its own row type.
//! - [`audit`]: the write-ahead, tamper-evident audit trail.
//! - [`replication`]: table copies between targets, stored jobs, their
//!   runs, locks and schedule.
//! - [`identity`]: callers, roles, API-key target patterns.
//! - [`insights`]: the slow-query log, activity and backend signals,
//!   fleet-wide statement statistics.
//! - [`migrations`]: fleet schema migrations (pgfleet-migrate) on the
//!   registry's targets, with their sets, locks and audit records.
//! - [`topology`]: promoting a replica to primary, with its checks.
//! - [`legacy`]: the old Node.js system's users and query history, read
//!   for `pgfleet import-legacy`.
//! - [`compare`]: do a table's copies agree? Checksums over key ranges
//!   inside each PostgreSQL, bisecting only the ranges that differ.
//! - [`atomic_recovery`]: finishing atomic executions' prepared
//!   transactions by their stored decision (one runner across servers).
//! - [`advisory_locks`], [`history_store`]: pgfleet's own database.
//! - [`Observer`]: what the engine reports as it works (target outcomes,
//!   audit write latencies, replication rows and lag), for the server's
//!   metrics.
//!
//! Architecture invariant: this crate depends on neither tonic nor prost.
//! Requests arrive as domain specs (the server's `FromWire` of each wire
//! request), failures leave as [`RequestError`] (one gRPC status each, mapped
//! by the server) or as per-target [`query::TargetFailure`]s.

pub mod advisory_locks;
pub mod atomic_recovery;
pub mod audit;
pub mod compare;
pub mod digest;
pub mod error;
pub mod history_store;
pub mod identity;
pub mod insights;
pub mod legacy;
pub mod migrations;
mod observer;
pub mod query;
pub mod replication;
pub mod topology;

pub use error::RequestError;
pub use observer::{AuditWrite, Observer};
