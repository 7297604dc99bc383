//! pgfleet-server's integration tests, as one test binary (`it`): every
//! module drives the real server (in this process, or the `pgfleet` binary
//! as a child) against real PostgreSQL and Redis. One binary links the
//! server and its dependencies once, where a binary per file linked them
//! once per file. nextest runs every test in a process of its own, named
//! `module::test` in binary `it` (e.g. `cargo nextest run --workspace -E
//! 'binary(it) and test(/^query::/)'`).
//!
//! - `support`: the harness (a fleet of throwaway databases, a running
//!   server, logged-in clients); the benchmarks include it too.
//! - `auth`: AuthService and the authentication gate.
//! - `backup`: BackupService: policies, runs on two clouds into a local
//!   directory, verify, restore, retention, a target killed mid-dump.
//! - `browser`: a page in headless Chromium calls pgfleet through grpc-web.
//! - `console`: the web console driven in headless Chromium (playwright-core).
//! - `edges`: TLS and mTLS, message and stream limits, the query rate
//!   limit, client addresses behind a trusted proxy.
//! - `failover`: writes follow a promoted streaming replica.
//! - `fleet`: FleetService, with live and unreachable clouds.
//! - `fuzz_grpc_web`: grpc-web framing, content types and base64 at random.
//! - `fuzz_requests`: every RPC with random requests and callers.
//! - `grpc_web`: grpc-web and CORS at the HTTP level.
//! - `health`: per-service `grpc.health.v1`, `/healthz` and `/readyz`
//!   while the history store or Redis is cut.
//! - `history`: HistoryService and the write-ahead audit trail.
//! - `insights`: InsightsService: the slow-query log, statement statistics
//!   merged across copies (pg_stat_statements on an initdb cluster),
//!   activity and backend signals.
//! - `legacy_import`: `pgfleet import-legacy` from a fixture of the old
//!   Dual Database Manager's schema.
//! - `limits`: the rate limits on expensive calls, shared by two servers
//!   through Redis, and with Redis cut.
//! - `migrations`: MigrationService across clouds, grpcurl and `pgfleet
//!   migrations …`.
//! - `observability`: `/metrics` and the JSON log file.
//! - `python_client`: a Python client generated from the proto files.
//! - `query`: QueryService.
//! - `reload`: SIGHUP reloads the database list of `pgfleet serve`.
//! - `replication`: ReplicationService jobs.
//! - `replication_copy`: ReplicateTable.
//! - `replication_runs`: stored jobs run by RunJob and the scheduler.
//! - `secrets`: no secret in the `pgfleet` binary's output.
//! - `security_audit`: the audit chain against a writer of the history
//!   store.
//! - `security_auth`: logins, API keys and refused attempts.
//! - `security_logins`: READER statements under the unprivileged
//!   `reader_user`.
//! - `security_sql`: statement classification and fail-closed execution.
//! - `server`: the server shell, grpcurl and the `pgfleet` commands.
//! - `tracing_export`: spans reach an OTLP collector.

mod support;

mod atomic;
mod auth;
mod backup;
mod browser;
mod compare;
mod console;
mod edges;
mod failover;
mod fleet;
mod fuzz_grpc_web;
mod fuzz_requests;
mod grpc_web;
mod health;
mod history;
mod insights;
mod legacy_import;
mod limits;
mod migrations;
mod observability;
mod python_client;
mod query;
mod reload;
mod replication;
mod replication_copy;
mod replication_runs;
mod secrets;
mod security_audit;
mod security_auth;
mod security_logins;
mod security_sql;
mod server;
mod tracing_export;
