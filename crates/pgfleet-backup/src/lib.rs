//! pgfleet's backups: policies, the streaming pipeline `pg_dump` → zstd → age
//! → SHA-256 → object store (multipart), manifests, retention, the scheduler,
//! verification and restores; without wire types.
//!
//! - [`policy`]: `PolicySpec` (targets, cron schedule, format, compression,
//!   retention, `max_age`) and its checks.
//! - [`store`]: policies and the backup catalog in the history store.
//! - [`storage`]: the object store (local directory, S3, GCS, Azure) and
//!   object names; [`manifest`]: the JSON manifest beside each backup.
//! - [`pipeline`]: one target's dump streamed to storage, and a stored
//!   object streamed back (checksum, decrypt, decompress).
//! - [`tools`]: the PostgreSQL client programs (`pg_dump`, `pg_restore`,
//!   `psql`), their versions, and the target's connection in their
//!   environment (never on a command line).
//! - [`run`]: `Backups`, the service's work: a run over a policy's targets
//!   (one task each, audited), verify, restore, delete, health.
//! - [`retention`], [`scheduler`]: what a policy keeps, and its cron runs
//!   (one replica at a time per policy, through an advisory lock).
//!
//! Architecture invariant: no tonic, prost or pgfleet-proto (checked by
//! `scripts/check-layers`); failures leave as [`BackupError`], mapped to a
//! `RequestError` (one gRPC status each) here, to a status by the server.
//! Memory stays bounded whatever a database's size: bytes move through
//! fixed-size buffers and bounded channels only.

pub mod error;
pub mod manifest;
pub mod pipeline;
pub mod policy;
pub mod retention;
pub mod run;
pub mod scheduler;
pub mod storage;
pub mod store;
pub mod tools;

pub use error::BackupError;
