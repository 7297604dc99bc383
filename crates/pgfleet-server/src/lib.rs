//! The pgfleet tonic server: one process serving `AuthService`,
//! `QueryService`, `HistoryService`, `ReplicationService` and `FleetService`
//! (package `pgfleet.v1`), plus `grpc.health.v1` and server reflection.
//!
//! `main.rs` only calls [`cli::main`]; tests drive the same code through
//! [`app::RunningServer`].

pub mod advisory_locks;
pub mod app;
pub mod audit;
pub mod auth;
pub mod browser;
pub mod cli;
pub mod edge;
pub mod history_store;
pub mod identity;
pub mod query;
pub mod replication;
pub mod request_error;
pub mod services;
mod status;
pub mod telemetry;
