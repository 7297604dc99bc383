//! Where a target stands against a migration set, and where the fleet stands.

use std::collections::BTreeMap;

use sqlx::PgConnection;

use crate::set::{Checksum, MigrationSet};
use crate::tracking::{self, AppliedMigration, RecordedFailure, TrackingError};

/// The state of one version on one target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MigrationState {
    /// Applied, with the checksum of the file in the set.
    Applied(AppliedMigration),
    /// In the set, not applied, never failed (or its failure was not recorded).
    Pending,
    /// In the set, not applied; its last attempt failed.
    Failed(RecordedFailure),
    /// Applied, but the file in the set has changed since.
    ChecksumDrift {
        applied: AppliedMigration,
        file: Checksum,
    },
    /// Applied on the target, not in the set (a newer set, or a file removed).
    Unknown(AppliedMigration),
}

impl MigrationState {
    /// The version is applied on the target (whatever its checksum).
    pub fn is_applied(&self) -> bool {
        matches!(
            self,
            MigrationState::Applied(_) | MigrationState::ChecksumDrift { .. } | MigrationState::Unknown(_)
        )
    }

    /// A lower-case word for logs and the wire: `applied`, `pending`, `failed`,
    /// `checksum_drift`, `unknown`.
    pub fn as_str(&self) -> &'static str {
        match self {
            MigrationState::Applied(_) => "applied",
            MigrationState::Pending => "pending",
            MigrationState::Failed(_) => "failed",
            MigrationState::ChecksumDrift { .. } => "checksum_drift",
            MigrationState::Unknown(_) => "unknown",
        }
    }
}

/// One version on one target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationStatus {
    pub version: i64,
    /// The set's name for it, or the tracking row's for an unknown version.
    pub name: String,
    pub state: MigrationState,
}

/// Every version of the set and every version applied on one target.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TargetStatus {
    /// By version, oldest first.
    pub migrations: Vec<MigrationStatus>,
    /// The tracking table exists (pgfleet has migrated this target before).
    pub tracked: bool,
}

impl TargetStatus {
    /// Combines a set and what a target recorded; no I/O.
    pub(crate) fn compute(set: &MigrationSet, rows: tracking::TrackingRows) -> Self {
        let mut applied: BTreeMap<i64, AppliedMigration> =
            rows.applied.into_iter().map(|row| (row.version, row)).collect();
        let mut failures: BTreeMap<i64, RecordedFailure> =
            rows.failures.into_iter().map(|row| (row.version, row)).collect();
        let mut migrations: Vec<MigrationStatus> = set
            .migrations()
            .iter()
            .map(|migration| {
                let version = migration.version();
                let state = match applied.remove(&version) {
                    Some(row) if row.checksum == migration.checksum() => MigrationState::Applied(row),
                    Some(row) => MigrationState::ChecksumDrift {
                        applied: row,
                        file: migration.checksum(),
                    },
                    None => match failures.remove(&version) {
                        Some(failure) => MigrationState::Failed(failure),
                        None => MigrationState::Pending,
                    },
                };
                MigrationStatus {
                    version,
                    name: migration.name().to_owned(),
                    state,
                }
            })
            .collect();
        migrations.extend(applied.into_values().map(|row| MigrationStatus {
            version: row.version,
            name: row.name.clone(),
            state: MigrationState::Unknown(row),
        }));
        migrations.sort_by_key(|m| m.version);
        Self {
            migrations,
            tracked: rows.exists,
        }
    }

    /// The highest applied version, `None` when nothing is applied.
    pub fn newest_applied(&self) -> Option<i64> {
        self.migrations
            .iter()
            .filter(|m| m.state.is_applied())
            .map(|m| m.version)
            .max()
    }

    /// Versions of the set not applied (pending or failed), oldest first.
    pub fn pending(&self) -> Vec<i64> {
        self.versions(|s| matches!(s, MigrationState::Pending | MigrationState::Failed(_)))
    }

    /// Versions whose last attempt failed.
    pub fn failed(&self) -> Vec<i64> {
        self.versions(|s| matches!(s, MigrationState::Failed(_)))
    }

    /// Applied versions whose file changed.
    pub fn drifted(&self) -> Vec<i64> {
        self.versions(|s| matches!(s, MigrationState::ChecksumDrift { .. }))
    }

    /// Applied versions that are not in the set.
    pub fn unknown(&self) -> Vec<i64> {
        self.versions(|s| matches!(s, MigrationState::Unknown(_)))
    }

    /// The state of `version`, if the set or the target has it.
    pub fn state(&self, version: i64) -> Option<&MigrationState> {
        self.migrations
            .iter()
            .find(|m| m.version == version)
            .map(|m| &m.state)
    }

    fn versions(&self, keep: impl Fn(&MigrationState) -> bool) -> Vec<i64> {
        self.migrations
            .iter()
            .filter(|m| keep(&m.state))
            .map(|m| m.version)
            .collect()
    }
}

/// Reads where one target stands. Writes nothing, so `conn` may be a READ ONLY
/// (and time-bounded) transaction, e.g. pgfleet-registry's `begin_read_only`.
pub async fn status(conn: &mut PgConnection, set: &MigrationSet) -> Result<TargetStatus, TrackingError> {
    let rows = tracking::read(conn).await?;
    Ok(TargetStatus::compute(set, rows))
}

/// One target in a [`FleetStatus`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetSummary<K> {
    pub target: K,
    /// The target's status, or why it could not be read (the target is down).
    pub status: Result<TargetStatus, String>,
}

impl<K> TargetSummary<K> {
    /// Not up to date with the set: something pending, or unreachable.
    pub fn is_behind(&self) -> bool {
        self.status.as_ref().map_or(true, |s| !s.pending().is_empty())
    }

    /// Up to date or not, something needs a person: a failed, drifted or
    /// unknown version, or an unreachable target.
    pub fn needs_attention(&self) -> bool {
        self.status.as_ref().map_or(true, |s| {
            !(s.failed().is_empty() && s.drifted().is_empty() && s.unknown().is_empty())
        })
    }
}

/// Where every target of one fleet database stands. Generic over the target
/// key so the server can use its registry's `Target` and tests a plain name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetStatus<K> {
    /// The newest version of the set.
    pub newest_in_set: Option<i64>,
    /// In the order given.
    pub targets: Vec<TargetSummary<K>>,
}

impl<K> FleetStatus<K> {
    /// Summarises per-target results (an `Err` is an unreachable target).
    pub fn new<E: std::fmt::Display>(
        set: &MigrationSet,
        targets: impl IntoIterator<Item = (K, Result<TargetStatus, E>)>,
    ) -> Self {
        Self {
            newest_in_set: set.newest_version(),
            targets: targets
                .into_iter()
                .map(|(target, status)| TargetSummary {
                    target,
                    status: status.map_err(|e| e.to_string()),
                })
                .collect(),
        }
    }

    /// Targets with pending versions, or unreachable.
    pub fn behind(&self) -> Vec<&K> {
        self.targets
            .iter()
            .filter(|t| t.is_behind())
            .map(|t| &t.target)
            .collect()
    }

    /// Targets with a failed, drifted or unknown version, or unreachable.
    pub fn needing_attention(&self) -> Vec<&K> {
        self.targets
            .iter()
            .filter(|t| t.needs_attention())
            .map(|t| &t.target)
            .collect()
    }

    /// The newest version applied on any reachable target.
    pub fn newest_applied(&self) -> Option<i64> {
        self.targets
            .iter()
            .filter_map(|t| t.status.as_ref().ok()?.newest_applied())
            .max()
    }

    /// Every target is reachable, has every version of the set and nothing
    /// needs attention.
    pub fn is_up_to_date(&self) -> bool {
        self.targets
            .iter()
            .all(|t| !t.is_behind() && !t.needs_attention())
    }
}
