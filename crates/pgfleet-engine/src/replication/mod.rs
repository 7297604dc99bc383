//! Replication jobs: what a job is ([`JobSpec`], [`Job`]), where jobs are
//! stored ([`jobs::JobStore`], the history store), what the targets' catalogs
//! say about a job's tables ([`catalog`]) and whether a job may be stored
//! ([`validate`]), how a table is copied onto a target ([`copy`], with its
//! SQL in [`sql`]) and how a run of several copies is driven and audited
//! ([`run`]); runs of stored jobs under their lock, resuming from saved
//! positions ([`runner`], with their bookkeeping in [`state`]), the
//! scheduler that starts them on one replica at a time ([`scheduler`]) and
//! how far behind each copy is ([`status`]); jobs declared in the
//! configuration, made stored jobs at start ([`declared`]).

pub mod catalog;
pub mod copy;
pub mod declared;
pub mod jobs;
pub mod run;
pub mod runner;
pub mod scheduler;
pub mod sql;
pub mod state;
pub mod status;
pub mod validate;

use std::time::Duration;

use chrono::{DateTime, Utc};
use pgfleet_registry::Target;
use uuid::Uuid;

/// Rows per batch when a job names none (the API's 0).
pub const DEFAULT_BATCH_SIZE: u32 = 10_000;
/// Largest batch: a batch is held in memory and is one target transaction,
/// so it bounds both the server's memory and the targets' lock time.
pub const MAX_BATCH_SIZE: u32 = 1_000_000;
/// Shortest schedule: below this a job would run back to back and the
/// scheduler's lock traffic would dominate.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// Longest schedule interval and overlap window: longer ones are almost
/// certainly a unit mistake, and the bound keeps millisecond columns far
/// from overflow.
pub const MAX_WINDOW: Duration = Duration::from_secs(366 * 24 * 3600);
/// Most tables in one job; validation reads every one from every target.
pub const MAX_TABLES: usize = 200;
/// Most targets in one job.
pub const MAX_TARGETS: usize = 32;
/// Longest job name.
pub const MAX_NAME_CHARS: usize = 100;

/// How a job copies its tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Rows past each target's watermark, upserted by primary key.
    Incremental,
    /// The whole table, removing rows gone from the source.
    FullRefresh,
}

impl Mode {
    /// The name stored in `replication_jobs.mode`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Incremental => "INCREMENTAL",
            Mode::FullRefresh => "FULL_REFRESH",
        }
    }

    /// Parses a stored name.
    pub fn parse(stored: &str) -> Option<Self> {
        match stored {
            "INCREMENTAL" => Some(Mode::Incremental),
            "FULL_REFRESH" => Some(Mode::FullRefresh),
            _ => None,
        }
    }
}

/// What a job's owner chooses: everything but identity and bookkeeping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobSpec {
    pub name: String,
    pub source: Target,
    pub targets: Vec<Target>,
    /// Schema-qualified. Once checked against the source's catalog, in
    /// PostgreSQL's own spelling (`format('%I.%I')`).
    pub tables: Vec<String>,
    /// A column name as in the catalog; `None` for full refresh without one.
    pub sync_key: Option<String>,
    /// `None`: on demand only.
    pub interval: Option<Duration>,
    pub enabled: bool,
    pub mode: Mode,
    /// Resolved: never 0.
    pub batch_size: u32,
    /// `None`: no overlap window.
    pub overlap: Option<Duration>,
}

/// Why nothing is copied onto a copy configured `read_only = true` (said
/// when a job is checked and again by the copy itself).
pub fn read_only_refusal(target: &Target) -> String {
    format!("{target} is read_only in the configuration: pgfleet writes nothing to it")
}

impl JobSpec {
    /// True when the saved positions of a job updated from `self` to
    /// `updated` mean nothing any more (another source, mode or sync key);
    /// positions of dropped tables and targets are left over either way.
    pub fn restarts_positions(&self, updated: &JobSpec) -> bool {
        self.source != updated.source || self.mode != updated.mode || self.sync_key != updated.sync_key
    }
}

/// A stored job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub id: Uuid,
    pub spec: JobSpec,
    /// Bumped by every update; see [`jobs::JobStore::update`].
    pub revision: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Username (or API key label) of the creator.
    pub created_by: String,
    /// When the scheduler last planned the next run for; `None` until its
    /// first scheduled run (an enabled job with an interval is then due).
    pub next_run_at: Option<DateTime<Utc>>,
}

/// A field of a job an update may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum JobField {
    Name,
    Source,
    Targets,
    Tables,
    SyncKey,
    Interval,
    Enabled,
    Mode,
    BatchSize,
    Overlap,
}

impl JobField {
    /// Every field an update may change, for `*` masks.
    pub const ALL: [JobField; 10] = [
        JobField::Name,
        JobField::Source,
        JobField::Targets,
        JobField::Tables,
        JobField::SyncKey,
        JobField::Interval,
        JobField::Enabled,
        JobField::Mode,
        JobField::BatchSize,
        JobField::Overlap,
    ];
}

// How replication's errors answer a request that cannot be served as a whole.

use crate::RequestError;

use self::catalog::CatalogError;
use self::copy::CopyError;
use self::jobs::JobStoreError;

impl From<JobStoreError> for RequestError {
    fn from(error: JobStoreError) -> Self {
        match error {
            JobStoreError::NameTaken(_) => RequestError::AlreadyExists(error.to_string()),
            JobStoreError::Conflict(_) => RequestError::Aborted(error.to_string()),
            JobStoreError::Corrupt { .. } => RequestError::Internal(error.to_string()),
            JobStoreError::Store(error) => RequestError::history_store(error),
        }
    }
}

impl From<CatalogError> for RequestError {
    fn from(error: CatalogError) -> Self {
        match error {
            CatalogError::Connect(error) => error.into(),
            CatalogError::TimedOut(_) | CatalogError::ConnectionLost { .. } => {
                RequestError::Unavailable(error.to_string())
            }
            CatalogError::Query { .. } => RequestError::Internal(error.to_string()),
        }
    }
}

/// A copy that cannot even start (the table cannot be planned); failures
/// during a run are reported per target instead.
impl From<CopyError> for RequestError {
    fn from(error: CopyError) -> Self {
        match error {
            CopyError::Connect(error) => error.into(),
            CopyError::Catalog(error) => error.into(),
            CopyError::Unfit(message) => RequestError::FailedPrecondition(message),
            CopyError::Cancelled => RequestError::Aborted(error.to_string()),
            CopyError::Source { .. } | CopyError::Target { .. } => {
                RequestError::Unavailable(error.to_string())
            }
            CopyError::Malformed(..) => RequestError::Internal(error.to_string()),
        }
    }
}
