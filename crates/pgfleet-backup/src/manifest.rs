//! The JSON manifest stored beside each backup object: everything needed to
//! check and restore it without pgfleet's history store.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::policy::{DumpFormat, TargetName};

/// Version of the manifest's layout.
pub const MANIFEST_VERSION: u32 = 1;

/// One backup's manifest (`<object>.manifest.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub manifest_version: u32,
    pub backup_id: Uuid,
    pub target: TargetName,
    pub policy_id: Option<Uuid>,
    pub policy_name: String,
    /// `SHOW server_version` of the target.
    pub server_version: String,
    /// `pg_dump --version`.
    pub pg_dump_version: String,
    pub format: DumpFormat,
    /// Always `zstd`.
    pub compression: String,
    pub compression_level: i32,
    /// `age-x25519` or empty (not encrypted).
    pub encryption: String,
    /// The age recipients (public keys) it was encrypted to.
    pub recipients: Vec<String>,
    /// The object's key in the backup storage.
    pub object_key: String,
    /// Bytes pg_dump wrote, after zstd, and as stored (after age).
    pub raw_bytes: u64,
    pub compressed_bytes: u64,
    pub stored_bytes: u64,
    /// Lower-case hex SHA-256 of the stored object, and of pg_dump's output.
    pub stored_sha256: String,
    pub raw_sha256: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    /// The BACKUP_RUN audit record.
    pub execution_id: Uuid,
}
