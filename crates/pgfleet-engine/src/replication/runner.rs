//! Runs of stored jobs, for RunJob and the scheduler alike: take the job's
//! lock, plan its tables from the source's catalog, put the run on record,
//! resume each (table, target) from its stored position, and keep the
//! lock (watching that the job stays enabled) until the run has ended.
//!
//! Positions are saved after the batch they describe committed on the
//! target ([`run::JobLedger`]); a crash in between re-copies that one batch,
//! which the upserts make harmless, and never skips rows.

use std::sync::Arc;

use pgfleet_config::FleetConfig;
use pgfleet_registry::{Registry, Target};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::copy::{CopySettings, Start, TablePlan};
use super::run::{self, JobLedger, RunEvent, RunPlan};
use super::state::{JobLock, RunStore};
use super::validate::{Fitting, RequestKind};
use super::{Job, JobSpec, Mode, catalog, validate};
use crate::Observer;
use crate::RequestError;
use crate::audit::{Actor, AuditLog, Kind, NewExecution, RecordedError, RecordedTarget, TargetScope};
use crate::identity::Role;
use crate::query::FailureCode;
use crate::query::audited::Origin;

/// Who starts a run, as the audit record names them.
#[derive(Debug, Clone)]
pub struct RunBy {
    pub actor: Actor,
    pub role: Role,
    pub origin: Origin,
}

impl RunBy {
    /// The scheduler: pgfleet itself.
    pub fn scheduler() -> Self {
        Self {
            actor: Actor::System("replication-scheduler".to_owned()),
            role: Role::Master,
            origin: Origin {
                client_address: String::new(),
                request_id: Uuid::now_v7().to_string(),
            },
        }
    }
}

/// Starts runs of stored jobs. Shared by the service and the scheduler.
#[derive(Clone)]
pub struct JobRunner {
    registry: Arc<Registry>,
    runs: RunStore,
    audit: Arc<AuditLog>,
    config: Arc<FleetConfig>,
    /// Fired when the server shuts down: every run stops at its next batch
    /// boundary (its record is closed, its positions kept).
    shutdown: CancellationToken,
    /// Where the runs' copied rows are counted.
    observer: Arc<dyn Observer>,
}

impl JobRunner {
    pub fn new(
        registry: Arc<Registry>,
        runs: RunStore,
        audit: Arc<AuditLog>,
        config: Arc<FleetConfig>,
        shutdown: CancellationToken,
        observer: Arc<dyn Observer>,
    ) -> Self {
        Self {
            registry,
            runs,
            audit,
            config,
            shutdown,
            observer,
        }
    }

    /// Where runs report their progress (ReplicateTable's runs too).
    pub fn observer(&self) -> &Arc<dyn Observer> {
        &self.observer
    }

    pub fn runs(&self) -> &RunStore {
        &self.runs
    }

    /// A token cancelled by the caller or by server shutdown.
    pub fn run_token(&self) -> CancellationToken {
        self.shutdown.child_token()
    }

    /// The job's lock, or ABORTED when it runs elsewhere (any replica).
    pub async fn lock(&self, job: &Job) -> Result<JobLock, RequestError> {
        self.runs
            .try_lock(job.id)
            .await
            .map_err(RequestError::history_store)?
            .ok_or_else(|| {
                RequestError::Aborted(format!(
                    "replication job {:?} ({}) is already running",
                    job.spec.name, job.id
                ))
            })
    }

    /// Runs `tables` × `targets` of `job` (all of them when empty) under
    /// its `lock`. The run stops at a batch boundary when `cancel` fires,
    /// when the job is deleted, or (if enabled now) disabled. A refusal
    /// before anything is copied is kept as the job's last outcome.
    pub async fn launch(
        &self,
        lock: JobLock,
        job: &Job,
        tables: Vec<String>,
        targets: Vec<Target>,
        by: RunBy,
        cancel: CancellationToken,
    ) -> Result<mpsc::Receiver<RunEvent>, RequestError> {
        match self.prepare(job, tables, targets, by).await {
            Ok((plan, new)) => self.begin(lock, job, plan, new, cancel).await,
            Err(error) => {
                let recorded = RecordedError {
                    code: error_code(&error).as_str().to_owned(),
                    message: error.to_string(),
                    ..RecordedError::default()
                };
                if let Err(store) = self.runs.run_refused(job.id, &recorded).await {
                    tracing::warn!(job = %job.id, error = %store, "cannot record why a replication run was refused");
                }
                lock.release().await;
                Err(error)
            }
        }
    }

    /// The plan of the run and its audit record, from the job, the source's
    /// catalog and the stored positions.
    async fn prepare(
        &self,
        job: &Job,
        tables: Vec<String>,
        targets: Vec<Target>,
        by: RunBy,
    ) -> Result<(RunPlan, NewExecution), RequestError> {
        let spec = JobSpec {
            tables: if tables.is_empty() {
                job.spec.tables.clone()
            } else {
                tables
            },
            targets: if targets.is_empty() {
                job.spec.targets.clone()
            } else {
                targets
            },
            ..job.spec.clone()
        };
        let settings = copy_settings(&spec, &self.config);
        let table_plans = plan_tables(&self.registry, &spec, &settings, RequestKind::Job).await?;
        let positions = self
            .runs
            .pairs(&[job.id])
            .await
            .map_err(RequestError::history_store)?;
        let starts = table_plans
            .iter()
            .map(|table| {
                spec.targets
                    .iter()
                    .map(|target| match spec.mode {
                        Mode::FullRefresh => Start::Beginning,
                        Mode::Incremental => positions
                            .iter()
                            .find(|pair| pair.table_name == table.table() && pair.target() == *target)
                            .and_then(|pair| pair.position())
                            .map_or(Start::TargetMax, Start::After),
                    })
                    .collect()
            })
            .collect();
        let new = run_record(&spec, by, Some(job.id));
        let plan = RunPlan {
            job_id: Some(job.id),
            mode: spec.mode,
            tables: table_plans,
            targets: spec.targets,
            starts,
        };
        Ok((plan, new))
    }

    async fn begin(
        &self,
        lock: JobLock,
        job: &Job,
        plan: RunPlan,
        new: NewExecution,
        cancel: CancellationToken,
    ) -> Result<mpsc::Receiver<RunEvent>, RequestError> {
        let run_id = new.id;
        let open = match self.audit.open(new).await {
            Ok(open) => open,
            Err(error) => {
                lock.release().await;
                return Err(match RequestError::from(error) {
                    RequestError::Unavailable(message) => RequestError::Unavailable(format!(
                        "{message}: the run was refused and no target saw it"
                    )),
                    other => other,
                });
            }
        };
        let tables: Vec<String> = plan.tables.iter().map(|t| t.table().to_owned()).collect();
        // Bookkeeping, not safety: without these rows the positions of this
        // run are not saved and the next one starts where this one did.
        if let Err(error) = self
            .runs
            .run_started(job.id, run_id, &tables, &plan.targets)
            .await
        {
            tracing::warn!(job = %job.id, run = %run_id, %error, "cannot mark the replication run as running");
        }
        let done = CancellationToken::new();
        let holder = tokio::spawn(lock.hold(
            job.spec.enabled,
            self.config.replication.watch_interval,
            done.clone(),
            cancel.clone(),
        ));
        let ledger = JobLedger::new(self.runs.clone(), job.id, run_id, plan.mode, done, holder);
        Ok(run::start(
            Arc::clone(&self.registry),
            Arc::new(plan),
            open.started(),
            cancel,
            Some(ledger),
            Arc::clone(&self.observer),
        ))
    }
}

/// How every table of `spec` is copied.
pub fn copy_settings(spec: &JobSpec, config: &FleetConfig) -> CopySettings {
    CopySettings {
        mode: spec.mode,
        sync_key: spec.sync_key.clone(),
        batch_size: spec.batch_size,
        overlap: spec.overlap,
        statement_timeout: config.query.max_timeout,
        catalog_timeout: config.query.default_timeout,
    }
}

/// Reads `spec`'s tables from its source's catalog and plans their copies.
/// The source alone decides: each target's table is checked by its copy,
/// so one unfit target fails alone.
pub async fn plan_tables(
    registry: &Registry,
    spec: &JobSpec,
    settings: &CopySettings,
    request: RequestKind,
) -> Result<Vec<TablePlan>, RequestError> {
    let shapes = catalog::read_tables(registry, &spec.source, &spec.tables, settings.catalog_timeout).await?;
    let source_only = Fitting {
        targets: &[],
        ..spec.fitting()
    };
    validate::fit(source_only, &shapes, &[]).map_err(|error| error.in_request(request))?;
    shapes
        .into_iter()
        .map(|shape| {
            let shape =
                shape.ok_or_else(|| RequestError::Internal("checked table has no shape".to_owned()))?;
            Ok(TablePlan::new(spec.source.clone(), shape, settings.clone())?)
        })
        .collect()
}

/// The audit record of a run of `spec`, e.g. `replicate public.orders
/// aws/app -> gcp/app (incremental)`.
pub fn run_record(spec: &JobSpec, by: RunBy, job_id: Option<Uuid>) -> NewExecution {
    NewExecution {
        id: Uuid::now_v7(),
        kind: Kind::ReplicationRun,
        actor: by.actor,
        role: by.role,
        client_address: by.origin.client_address,
        request_id: by.origin.request_id,
        query: describe_run(spec),
        query_redacted: false,
        fingerprint: String::new(),
        statement_classes: vec!["WRITE".to_owned()],
        database: spec.source.database.clone(),
        pg_schema: String::new(),
        scope: TargetScope::Replication,
        targets: spec
            .targets
            .iter()
            .map(|target| RecordedTarget {
                cloud: target.cloud.clone(),
                database: target.database.clone(),
            })
            .collect(),
        read_only: false,
        confirmed_dangerous: false,
        findings: Vec::new(),
        replication_job_id: job_id,
    }
}

/// The audit record's description of a run, e.g.
/// `replicate public.orders aws/app -> gcp/app, gcp/analytics (full_refresh)`.
pub fn describe_run(spec: &JobSpec) -> String {
    let targets: Vec<String> = spec.targets.iter().map(ToString::to_string).collect();
    format!(
        "replicate {} {} -> {} ({})",
        spec.tables.join(", "),
        spec.source,
        targets.join(", "),
        spec.mode.as_str().to_ascii_lowercase()
    )
}

/// The code a refused run is recorded with.
fn error_code(error: &RequestError) -> FailureCode {
    match error {
        RequestError::InvalidArgument { .. } => FailureCode::InvalidArgument,
        RequestError::NotFound(_) => FailureCode::NotFound,
        RequestError::AlreadyExists(_) => FailureCode::AlreadyExists,
        RequestError::PermissionDenied(_) => FailureCode::PermissionDenied,
        RequestError::FailedPrecondition(_) => FailureCode::FailedPrecondition,
        RequestError::Aborted(_) => FailureCode::Aborted,
        RequestError::ResourceExhausted(_) => FailureCode::ResourceExhausted,
        RequestError::Unavailable(_) => FailureCode::Unavailable,
        RequestError::Internal(_) => FailureCode::Internal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_are_described_with_every_target() {
        let spec = JobSpec {
            name: "n".to_owned(),
            source: Target::new("aws", "app"),
            targets: vec![Target::new("gcp", "app"), Target::new("azure", "app")],
            tables: vec!["public.orders".to_owned()],
            sync_key: None,
            interval: None,
            enabled: false,
            mode: Mode::FullRefresh,
            batch_size: 1,
            overlap: None,
        };
        assert_eq!(
            describe_run(&spec),
            "replicate public.orders aws/app -> gcp/app, azure/app (full_refresh)"
        );
        let record = run_record(&spec, RunBy::scheduler(), None);
        assert_eq!(record.actor, Actor::System("replication-scheduler".to_owned()));
        assert_eq!(record.targets.len(), 2);
        assert_eq!(
            error_code(&RequestError::Aborted(String::new())),
            FailureCode::Aborted
        );
    }
}
