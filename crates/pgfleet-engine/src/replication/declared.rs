//! Jobs declared in the configuration (`[[replication.jobs]]`), as the
//! service this replaces set its jobs up at start: each is checked like a
//! CreateJob (fields, then the catalogs of its source and targets) and
//! created, or the stored job of that name is updated to match. The file
//! wins over changes made through the API since the last start; a job
//! removed from the file stays stored (deleting is the API's DeleteJob).
//!
//! Several replicas may start at once: the job's unique name and the
//! store's revision check decide, and the loser reads the job again.

use std::time::Duration;

use pgfleet_config::{DeclaredJobConfig, DeclaredJobMode};
use pgfleet_registry::{Registry, Target};

use super::jobs::{JobStore, JobStoreError};
use super::state::RunStore;
use super::validate::{self, RequestKind};
use super::{DEFAULT_BATCH_SIZE, Job, JobSpec, Mode};
use crate::RequestError;

/// `created_by` of a job the configuration created.
pub const DECLARED_BY: &str = "configuration";

/// Attempts of one job when replicas race on it; each attempt reads the
/// stored job again.
const ATTEMPTS: usize = 3;

/// What applying one declared job did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    Created(Job),
    Updated(Job),
    /// The stored job already matched the file.
    Unchanged(Job),
}

impl Applied {
    /// The stored job, as it is now.
    pub fn job(&self) -> &Job {
        match self {
            Applied::Created(job) | Applied::Updated(job) | Applied::Unchanged(job) => job,
        }
    }
}

/// Why a declared job could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum DeclaredJobError {
    /// The job does not fit the fleet (a field, a missing table, a sync key
    /// of the wrong type): fixing the file is the only remedy.
    #[error("{0}")]
    Refused(RequestError),
    /// A target or the history store cannot be reached now; trying again
    /// later may succeed.
    #[error("{0}")]
    Unavailable(String),
}

impl DeclaredJobError {
    /// True when trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, DeclaredJobError::Unavailable(_))
    }
}

impl From<RequestError> for DeclaredJobError {
    fn from(error: RequestError) -> Self {
        match error {
            RequestError::Unavailable(message) => DeclaredJobError::Unavailable(message),
            refused => DeclaredJobError::Refused(refused),
        }
    }
}

impl From<JobStoreError> for DeclaredJobError {
    fn from(error: JobStoreError) -> Self {
        DeclaredJobError::from(RequestError::from(error))
    }
}

/// The job a declaration describes, before its tables are checked.
pub fn spec_of(declared: &DeclaredJobConfig) -> JobSpec {
    let target = |text: &str| {
        let (cloud, database) = DeclaredJobConfig::parse_target(text).unwrap_or((text, ""));
        Target::new(cloud, database)
    };
    let mode = match declared.mode {
        Some(DeclaredJobMode::Incremental) => Mode::Incremental,
        Some(DeclaredJobMode::FullRefresh) => Mode::FullRefresh,
        None if declared.sync_key.is_some() => Mode::Incremental,
        None => Mode::FullRefresh,
    };
    JobSpec {
        name: declared.name.clone(),
        source: target(&declared.source),
        targets: declared.targets.iter().map(|text| target(text)).collect(),
        tables: declared.tables.clone(),
        sync_key: declared.sync_key.clone(),
        interval: declared.interval,
        enabled: declared.enabled,
        mode,
        batch_size: declared.batch_size.unwrap_or(DEFAULT_BATCH_SIZE),
        overlap: declared.overlap,
    }
}

/// Creates `declared` as a stored job, or updates the stored job of its
/// name to match it. Positions saved by runs are kept unless the update
/// changes what they mean (source, mode, sync key).
pub async fn apply(
    declared: &DeclaredJobConfig,
    jobs: &JobStore,
    runs: &RunStore,
    registry: &Registry,
    catalog_timeout: Duration,
) -> Result<Applied, DeclaredJobError> {
    let mut spec = spec_of(declared);
    let refused = |error: validate::Invalid| DeclaredJobError::from(error.in_request(RequestKind::Declared));
    validate::check_fields(&spec, registry).map_err(refused)?;
    spec.tables = validate::check_catalogs(registry, &spec, catalog_timeout)
        .await
        .map_err(refused)?;
    let mut last_race = None;
    for _ in 0..ATTEMPTS {
        let outcome = match jobs.get_by_name(&spec.name).await? {
            Some(stored) if stored.spec == spec => return Ok(Applied::Unchanged(stored)),
            Some(stored) => match jobs.update(stored.id, stored.revision, &spec).await {
                Ok(Some(job)) => {
                    runs.forget_positions(
                        job.id,
                        &job.spec.tables,
                        &job.spec.targets,
                        stored.spec.restarts_positions(&job.spec),
                    )
                    .await
                    .map_err(RequestError::history_store)?;
                    return Ok(Applied::Updated(job));
                }
                // Deleted or changed since it was read: read it again.
                Ok(None) => Err(JobStoreError::Conflict(stored.id)),
                Err(error) => Err(error),
            },
            None => jobs.create(&spec, DECLARED_BY).await.map(Applied::Created),
        };
        match outcome {
            Ok(applied) => return Ok(applied),
            // Another replica wrote the job between the read and the write.
            Err(race @ (JobStoreError::NameTaken(_) | JobStoreError::Conflict(_))) => last_race = Some(race),
            Err(error) => return Err(error.into()),
        }
    }
    Err(last_race.map(DeclaredJobError::from).unwrap_or_else(|| {
        DeclaredJobError::Unavailable("the job kept changing while it was applied".to_owned())
    }))
}

/// Applies every declared job, each on its own: a job refused is logged
/// and left (the file must change); a job that cannot be checked now (a
/// target or the history store down) is tried again with a growing pause
/// until it is applied or `stop` fires. Runs in the background from start,
/// so a cloud that is down does not hold the server up.
pub async fn apply_all(
    declared: Vec<DeclaredJobConfig>,
    jobs: JobStore,
    runs: RunStore,
    registry: std::sync::Arc<Registry>,
    catalog_timeout: Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut pending: Vec<(usize, DeclaredJobConfig)> = declared.into_iter().enumerate().collect();
    let mut pause = RETRY_PAUSE_FIRST;
    while !pending.is_empty() {
        let mut retry = Vec::new();
        for (index, job) in pending {
            let at = format!("replication.jobs[{index}]");
            match apply(&job, &jobs, &runs, &registry, catalog_timeout).await {
                Ok(applied) => {
                    let outcome = match &applied {
                        Applied::Created(_) => "created",
                        Applied::Updated(_) => "updated to match the configuration",
                        Applied::Unchanged(_) => "already as configured",
                    };
                    tracing::info!(job = %applied.job().id, name = %job.name, "{at}: replication job {outcome}");
                }
                Err(error) if error.is_transient() => {
                    tracing::warn!(name = %job.name, %error, retry_in = ?pause, "{at}: cannot apply the replication job now");
                    retry.push((index, job));
                }
                Err(error) => {
                    tracing::error!(name = %job.name, %error, "{at}: replication job refused; fix the configuration");
                }
            }
        }
        pending = retry;
        if pending.is_empty() {
            break;
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(RETRY_PAUSE_LONGEST);
    }
}

/// First pause before a declared job that could not be checked is tried again.
const RETRY_PAUSE_FIRST: Duration = Duration::from_secs(1);
/// Longest pause between tries.
const RETRY_PAUSE_LONGEST: Duration = Duration::from_secs(60);

#[cfg(test)]
mod tests {
    use super::*;

    fn declared() -> DeclaredJobConfig {
        DeclaredJobConfig {
            name: "orders".to_owned(),
            source: "aws/app".to_owned(),
            targets: vec!["gcp/app".to_owned()],
            tables: vec!["public.orders".to_owned()],
            sync_key: Some("updated_at".to_owned()),
            interval: Some(Duration::from_secs(60)),
            mode: None,
            batch_size: None,
            overlap: None,
            enabled: true,
        }
    }

    #[test]
    fn a_sync_key_makes_the_mode_incremental_unless_said_otherwise() {
        let spec = spec_of(&declared());
        assert_eq!(spec.mode, Mode::Incremental);
        assert_eq!(spec.source, Target::new("aws", "app"));
        assert_eq!(spec.targets, [Target::new("gcp", "app")]);
        assert_eq!(spec.batch_size, DEFAULT_BATCH_SIZE);
        let full = DeclaredJobConfig {
            mode: Some(DeclaredJobMode::FullRefresh),
            ..declared()
        };
        assert_eq!(spec_of(&full).mode, Mode::FullRefresh);
        let keyless = DeclaredJobConfig {
            sync_key: None,
            ..declared()
        };
        assert_eq!(spec_of(&keyless).mode, Mode::FullRefresh);
    }
}
