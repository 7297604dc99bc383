//! The pgfleet tonic server: one process serving `AuthService`,
//! `QueryService`, `HistoryService`, `ReplicationService`, `FleetService`,
//! `MigrationService` and `BackupService`
//! (package `pgfleet.v1`), plus `grpc.health.v1` and server reflection.
//!
//! `main.rs` only calls [`cli::main`]; tests drive the same code through
//! [`app::RunningServer`].

pub mod app;

/// Stack of the async runtime's threads (workers and the blocking pool): 8
/// MiB, so the SQL check (`spawn_blocking` in the engine's `query::parser`)
/// runs libpg_query on its own thread instead of handing each text to
/// sqlcheck's parser thread, which needs 4 MiB left (pgfleet_sqlcheck's
/// `engine`). Pages are committed only when touched.
pub const RUNTIME_THREAD_STACK_BYTES: usize = 8 * 1024 * 1024;
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
