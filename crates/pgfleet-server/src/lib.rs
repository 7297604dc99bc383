//! The pgfleet tonic server: one process serving `AuthService`,
//! `QueryService`, `HistoryService`, `ReplicationService`, `FleetService`,
//! `MigrationService` and `BackupService`
//! (package `pgfleet.v1`), plus `grpc.health.v1` and server reflection.
//!
//! `main.rs` only calls [`cli::main`]; tests drive the same code through
//! [`app::RunningServer`].

pub mod app;
pub mod audited_command;
pub mod auth;
pub mod backup_cli;
pub mod browser;
pub mod cli;
pub mod console;
pub mod edge;
pub mod legacy_import_cli;
pub mod migrations_cli;
pub mod readiness;
pub mod redis_pool;
pub mod services;
mod status;
pub mod telemetry;
