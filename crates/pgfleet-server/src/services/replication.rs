//! `pgfleet.v1.ReplicationService`: replication jobs (create, read, list,
//! update, delete), their runs (RunJob, through [`JobRunner`]) and status,
//! and one-shot table copies (ReplicateTable), converted between wire and
//! [`pgfleet_engine::replication`] types here.
//!
//! API keys (never MASTER, so read-only here) see only jobs whose source and
//! targets are all in their allow-list; other jobs do not exist for them.

use std::sync::Arc;
use std::time::Duration;

use crate::status::request_status;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use pgfleet_config::FleetConfig;
use pgfleet_proto::pgfleet::v1 as pb;
use pgfleet_proto::pgfleet::v1::{
    CreateJobRequest, CreateJobResponse, DeleteJobRequest, DeleteJobResponse, GetJobRequest, GetJobResponse,
    GetStatusRequest, GetStatusResponse, ListJobsRequest, ListJobsResponse, ReplicateTableRequest,
    ReplicateTableResponse, RunJobRequest, RunJobResponse, UpdateJobRequest, UpdateJobResponse,
    replication_service_server,
};
use pgfleet_registry::{Registry, Target};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::ResponseStream;
use super::convert;
use pgfleet_engine::RequestError;
use pgfleet_engine::audit::{Actor, AuditLog};
use pgfleet_engine::identity::{Identity, Principal};
use pgfleet_engine::replication::copy::{Start, TableOutcome};
use pgfleet_engine::replication::jobs::JobStore;
use pgfleet_engine::replication::run::{self, RunEvent, RunOutcome, RunPlan};
use pgfleet_engine::replication::runner::{self, JobRunner, RunBy, copy_settings, plan_tables};
use pgfleet_engine::replication::state::{JobState, PairState, RunStore, StoredOutcome};
use pgfleet_engine::replication::status::{self, PairReading};
use pgfleet_engine::replication::validate::{self, RequestKind};
use pgfleet_engine::replication::{DEFAULT_BATCH_SIZE, Job, JobField, JobSpec, Mode};
/// Page size when the request names none.
const DEFAULT_PAGE_SIZE: i64 = 50;
/// Largest page a request may ask for.
const MAX_PAGE_SIZE: i64 = 500;
/// Prefix of page tokens, so a token of another format is refused.
const PAGE_TOKEN_PREFIX: &str = "v1:";

/// Serves `pgfleet.v1.ReplicationService`.
#[derive(Clone)]
pub struct ReplicationService {
    registry: Arc<Registry>,
    jobs: JobStore,
    /// Runs of stored jobs (shared with the scheduler).
    runner: Arc<JobRunner>,
    config: Arc<FleetConfig>,
    /// The server's audit trail: every run is on record before it starts.
    audit: Arc<AuditLog>,
}

impl ReplicationService {
    pub fn new(
        registry: Arc<Registry>,
        jobs: JobStore,
        runner: Arc<JobRunner>,
        config: Arc<FleetConfig>,
        audit: Arc<AuditLog>,
    ) -> Self {
        Self {
            registry,
            jobs,
            runner,
            config,
            audit,
        }
    }

    fn runs(&self) -> &RunStore {
        self.runner.runs()
    }

    /// Bound on each catalog statement while checking a job: the same as a
    /// query's default, so a locked catalog fails the call instead of
    /// holding it.
    fn catalog_timeout(&self) -> Duration {
        self.config.query.default_timeout
    }

    /// Checks `spec` completely (fields, access, name, catalogs) and returns
    /// it with its tables in PostgreSQL's spelling. `unchanged` is the job
    /// an update starts from: catalogs are read again only when what they
    /// decide (source, targets, tables, sync key, overlap) changed, and the
    /// job's own name is not "taken".
    async fn check(
        &self,
        identity: &Identity,
        mut spec: JobSpec,
        unchanged: Option<&Job>,
    ) -> Result<JobSpec, RequestError> {
        validate::check_fields(&spec, &self.registry).map_err(|error| error.in_request(RequestKind::Job))?;
        // API keys cannot hold MASTER today; refusing targets outside an
        // allow-list keeps that true should keys ever manage jobs.
        if let Some(target) = std::iter::once(&spec.source)
            .chain(&spec.targets)
            .find(|target| !identity.may_access(target))
        {
            return Err(RequestError::PermissionDenied(format!(
                "this API key may not access {target}"
            )));
        }
        let renamed = unchanged.is_none_or(|job| job.spec.name != spec.name);
        // Checked before the catalogs so a taken name costs no target
        // round trip; the unique constraint still decides on insert.
        if renamed && self.jobs.name_exists(&spec.name).await? {
            return Err(RequestError::AlreadyExists(format!(
                "a replication job named {:?} already exists",
                spec.name
            )));
        }
        let recheck = unchanged.is_none_or(|job| {
            let old = &job.spec;
            old.source != spec.source
                || old.targets != spec.targets
                || old.tables != spec.tables
                || old.sync_key != spec.sync_key
                || (spec.overlap.is_some() && old.overlap != spec.overlap)
        });
        if recheck {
            spec.tables = validate::check_catalogs(&self.registry, &spec, self.catalog_timeout())
                .await
                .map_err(|error| error.in_request(RequestKind::Job))?;
        }
        Ok(spec)
    }

    /// The stored job, unless it does not exist for this caller.
    async fn visible_job(&self, identity: &Identity, id: Uuid) -> Result<Job, RequestError> {
        self.jobs
            .get(id)
            .await?
            .filter(|job| visible(identity, &job.spec))
            .ok_or_else(|| not_found(id))
    }
}

impl ReplicationService {
    /// Checks a ReplicateTable request completely (fields, access, the
    /// source's table) and plans its run. Target tables are checked by each
    /// target's copy, so one unfit target fails alone.
    async fn one_shot_plan(
        &self,
        identity: &Identity,
        message: &ReplicateTableRequest,
    ) -> Result<(JobSpec, RunPlan), RequestError> {
        let mode = match pb::ReplicationMode::try_from(message.mode) {
            Ok(pb::ReplicationMode::Incremental) => Mode::Incremental,
            Ok(pb::ReplicationMode::FullRefresh | pb::ReplicationMode::Unspecified) => Mode::FullRefresh,
            Err(_) => {
                return Err(RequestError::invalid(
                    "mode",
                    format!("unknown value {}", message.mode),
                ));
            }
        };
        let spec = JobSpec {
            // Only to satisfy the job checks; a one-shot copy has no name.
            name: "replicate-table".to_owned(),
            source: message
                .source
                .as_ref()
                .map(target_from_wire)
                .unwrap_or_else(|| Target::new("", "")),
            targets: message.targets.iter().map(target_from_wire).collect(),
            tables: vec![message.table.clone()],
            sync_key: (!message.sync_key.is_empty()).then(|| message.sync_key.clone()),
            interval: None,
            enabled: false,
            mode,
            batch_size: match message.batch_size {
                0 => DEFAULT_BATCH_SIZE,
                size => size,
            },
            overlap: duration_from_wire(message.overlap.as_ref(), "overlap")?.filter(|d| !d.is_zero()),
        };
        validate::check_fields(&spec, &self.registry)
            .map_err(|error| error.in_request(RequestKind::ReplicateTable))?;
        if let Some(target) = std::iter::once(&spec.source)
            .chain(&spec.targets)
            .find(|target| !identity.may_access(target))
        {
            return Err(RequestError::PermissionDenied(format!(
                "this API key may not access {target}"
            )));
        }
        let settings = copy_settings(&spec, &self.config);
        let table = plan_tables(&self.registry, &spec, &settings, RequestKind::ReplicateTable)
            .await?
            .pop()
            .ok_or_else(|| RequestError::Internal("a one-shot copy planned no table".to_owned()))?;
        let tables = vec![table.table().to_owned()];
        let start = match mode {
            Mode::Incremental => Start::TargetMax,
            Mode::FullRefresh => Start::Beginning,
        };
        let plan = RunPlan {
            job_id: None,
            mode,
            tables: vec![table],
            starts: vec![vec![start; spec.targets.len()]],
            targets: spec.targets.clone(),
        };
        Ok((JobSpec { tables, ..spec }, plan))
    }
}

fn outcome_to_wire(outcome: RunOutcome) -> pb::ReplicationOutcome {
    match outcome {
        RunOutcome::Succeeded => pb::ReplicationOutcome::Succeeded,
        RunOutcome::Partial => pb::ReplicationOutcome::Partial,
        RunOutcome::Failed => pb::ReplicationOutcome::Failed,
        RunOutcome::Cancelled => pb::ReplicationOutcome::Cancelled,
    }
}

fn event_to_wire(event: RunEvent) -> pb::ReplicationEvent {
    use pb::replication_event::Event;
    let event = match event {
        RunEvent::Started {
            run_id,
            job_id,
            tables,
            targets,
            mode,
            started_at,
        } => Event::RunStarted(pb::RunStarted {
            run_id: run_id.to_string(),
            job_id: job_id.map(|id| id.to_string()).unwrap_or_default(),
            tables,
            targets: targets.iter().map(convert::target).collect(),
            mode: mode_to_wire(mode).into(),
            started_at: Some(convert::timestamp(started_at)),
        }),
        RunEvent::Progress {
            table,
            target,
            progress,
        } => Event::TableProgress(pb::TableProgress {
            table,
            target: Some(convert::target(&target)),
            rows_read: progress.counters.rows_read,
            rows_written: progress.counters.rows_written,
            batches: progress.counters.batches,
            elapsed: Some(convert::duration(progress.elapsed)),
            watermark: progress.watermark.unwrap_or_default(),
        }),
        RunEvent::Failed { table, target, error } => Event::Error(pb::ReplicationError {
            table,
            target: Some(convert::target(&target)),
            error: Some(convert::target_error(*error)),
        }),
        RunEvent::TableFinished {
            table,
            target,
            result,
        } => {
            let (outcome, error) = match result.outcome {
                TableOutcome::Succeeded => (pb::ReplicationOutcome::Succeeded, None),
                TableOutcome::Failed(error) => (
                    pb::ReplicationOutcome::Failed,
                    Some(convert::target_error(*error)),
                ),
                TableOutcome::Cancelled => (pb::ReplicationOutcome::Cancelled, None),
            };
            Event::TableFinished(pb::TableFinished {
                table,
                target: Some(convert::target(&target)),
                outcome: outcome.into(),
                rows_read: result.counters.rows_read,
                rows_written: result.counters.rows_written,
                rows_deleted: result.counters.rows_deleted,
                batches: result.counters.batches,
                elapsed: Some(convert::duration(result.elapsed)),
                watermark: result.watermark.unwrap_or_default(),
                error,
            })
        }
        RunEvent::Finished {
            outcome,
            finished_at,
            elapsed,
            rows_read,
            rows_written,
        } => Event::RunFinished(pb::RunFinished {
            outcome: outcome_to_wire(outcome).into(),
            finished_at: Some(convert::timestamp(finished_at)),
            elapsed: Some(convert::duration(elapsed)),
            rows_read,
            rows_written,
        }),
    };
    pb::ReplicationEvent { event: Some(event) }
}

fn not_found(id: Uuid) -> RequestError {
    RequestError::NotFound(format!("no replication job {id}"))
}

/// True when the caller may see a job touching these targets.
fn visible(identity: &Identity, spec: &JobSpec) -> bool {
    std::iter::once(&spec.source)
        .chain(&spec.targets)
        .all(|target| identity.may_access(target))
}

/// What `created_by` records: the username, or the key's label.
fn actor_name(identity: &Identity) -> String {
    match &identity.principal {
        Principal::User { username, .. } => username.clone(),
        Principal::ApiKey { .. } => identity.label(),
    }
}

fn parse_id(text: &str, field: &str) -> Result<Uuid, RequestError> {
    if text.is_empty() {
        return Err(RequestError::invalid(field, "required"));
    }
    Uuid::parse_str(text).map_err(|_| RequestError::invalid(field, format!("{text:?} is not a UUID")))
}

fn target_from_wire(wire: &pb::Target) -> Target {
    Target::new(&wire.cloud, &wire.database)
}

/// A wire duration; `field` names it in errors.
fn duration_from_wire(
    wire: Option<&prost_types::Duration>,
    field: &str,
) -> Result<Option<Duration>, RequestError> {
    // Checked here rather than by prost-types' `TryFrom`, which negates the
    // seconds of a negative duration and overflows (a panic in debug builds)
    // on `seconds: i64::MIN`, as the request fuzzer found.
    wire.map(
        |value| match (u64::try_from(value.seconds), u32::try_from(value.nanos)) {
            (Ok(seconds), Ok(nanos)) if nanos < 1_000_000_000 => Ok(Duration::new(seconds, nanos)),
            _ => Err(RequestError::invalid(
                field,
                "must be a non-negative, normalized duration",
            )),
        },
    )
    .transpose()
}

fn mode_from_wire(wire: i32) -> Result<Mode, RequestError> {
    match pb::ReplicationMode::try_from(wire) {
        Ok(pb::ReplicationMode::Incremental) => Ok(Mode::Incremental),
        Ok(pb::ReplicationMode::FullRefresh) => Ok(Mode::FullRefresh),
        Ok(pb::ReplicationMode::Unspecified) => Err(RequestError::invalid(
            "job.mode",
            "required: REPLICATION_MODE_INCREMENTAL or REPLICATION_MODE_FULL_REFRESH",
        )),
        Err(_) => Err(RequestError::invalid("job.mode", format!("unknown value {wire}"))),
    }
}

fn mode_to_wire(mode: Mode) -> pb::ReplicationMode {
    match mode {
        Mode::Incremental => pb::ReplicationMode::Incremental,
        Mode::FullRefresh => pb::ReplicationMode::FullRefresh,
    }
}

/// Sets `field` of `spec` from the wire job. Values are only converted
/// here; [`validate::check_fields`] judges them.
fn set_field(spec: &mut JobSpec, wire: &pb::ReplicationJob, field: JobField) -> Result<(), RequestError> {
    match field {
        JobField::Name => spec.name.clone_from(&wire.name),
        JobField::Source => {
            let source = wire
                .source
                .as_ref()
                .ok_or_else(|| RequestError::invalid("job.source", "required"))?;
            spec.source = target_from_wire(source);
        }
        JobField::Targets => spec.targets = wire.targets.iter().map(target_from_wire).collect(),
        JobField::Tables => spec.tables.clone_from(&wire.tables),
        JobField::SyncKey => spec.sync_key = (!wire.sync_key.is_empty()).then(|| wire.sync_key.clone()),
        JobField::Interval => spec.interval = duration_from_wire(wire.interval.as_ref(), "job.interval")?,
        JobField::Enabled => spec.enabled = wire.enabled,
        JobField::Mode => spec.mode = mode_from_wire(wire.mode)?,
        JobField::BatchSize => {
            spec.batch_size = match wire.batch_size {
                0 => DEFAULT_BATCH_SIZE,
                size => size,
            };
        }
        JobField::Overlap => {
            // A zero window is no window.
            spec.overlap = duration_from_wire(wire.overlap.as_ref(), "job.overlap")?.filter(|d| !d.is_zero());
        }
    }
    Ok(())
}

/// The spec of a CreateJob request; output-only fields are ignored.
fn spec_from_wire(wire: &pb::ReplicationJob) -> Result<JobSpec, RequestError> {
    let mut spec = JobSpec {
        name: String::new(),
        source: Target::new("", ""),
        targets: Vec::new(),
        tables: Vec::new(),
        sync_key: None,
        interval: None,
        enabled: false,
        mode: Mode::FullRefresh,
        batch_size: DEFAULT_BATCH_SIZE,
        overlap: None,
    };
    for field in JobField::ALL {
        set_field(&mut spec, wire, field)?;
    }
    Ok(spec)
}

/// The fields an update mask names.
fn mask_fields(mask: Option<&prost_types::FieldMask>) -> Result<Vec<JobField>, RequestError> {
    let invalid = |why: String| RequestError::invalid("update_mask", why);
    let paths = mask.map(|mask| mask.paths.as_slice()).unwrap_or_default();
    if paths.is_empty() {
        return Err(invalid(
            "required: the fields to change, e.g. \"enabled,interval\"".to_owned(),
        ));
    }
    let mut fields = Vec::new();
    for path in paths {
        let field = match path.as_str() {
            "*" => {
                fields.extend(JobField::ALL);
                continue;
            }
            "name" => JobField::Name,
            "source" => JobField::Source,
            "targets" => JobField::Targets,
            "tables" => JobField::Tables,
            "sync_key" => JobField::SyncKey,
            "interval" => JobField::Interval,
            "enabled" => JobField::Enabled,
            "mode" => JobField::Mode,
            "batch_size" => JobField::BatchSize,
            "overlap" => JobField::Overlap,
            "id" | "created_at" | "updated_at" | "created_by" | "next_run_at" => {
                return Err(invalid(format!("{path} is output only")));
            }
            other => return Err(invalid(format!("{other:?} is not a field of ReplicationJob"))),
        };
        fields.push(field);
    }
    fields.sort_unstable();
    fields.dedup();
    Ok(fields)
}

fn spec_to_wire(spec: JobSpec) -> pb::ReplicationJob {
    pb::ReplicationJob {
        name: spec.name,
        source: Some(convert::target(&spec.source)),
        targets: spec.targets.iter().map(convert::target).collect(),
        tables: spec.tables,
        sync_key: spec.sync_key.unwrap_or_default(),
        interval: spec.interval.map(convert::duration),
        enabled: spec.enabled,
        mode: mode_to_wire(spec.mode).into(),
        batch_size: spec.batch_size,
        overlap: spec.overlap.map(convert::duration),
        ..Default::default()
    }
}

fn job_to_wire(job: Job) -> pb::ReplicationJob {
    let next_run_at = next_run_at(&job).map(convert::timestamp);
    pb::ReplicationJob {
        id: job.id.to_string(),
        created_at: Some(convert::timestamp(job.created_at)),
        updated_at: Some(convert::timestamp(job.updated_at)),
        created_by: job.created_by,
        next_run_at,
        ..spec_to_wire(job.spec)
    }
}

fn page_size(requested: i32) -> Result<i64, RequestError> {
    match i64::from(requested) {
        0 => Ok(DEFAULT_PAGE_SIZE),
        size @ 1..=MAX_PAGE_SIZE => Ok(size),
        other => Err(RequestError::invalid(
            "page_size",
            format!("{other} is outside 1..={MAX_PAGE_SIZE} (0 for the default {DEFAULT_PAGE_SIZE})"),
        )),
    }
}

/// A page token: the name of the last job of the previous page (jobs are
/// ordered by their unique name).
fn encode_page_token(last_name: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{PAGE_TOKEN_PREFIX}{last_name}"))
}

fn decode_page_token(token: &str) -> Result<Option<String>, RequestError> {
    if token.is_empty() {
        return Ok(None);
    }
    let invalid = || RequestError::invalid("page_token", "not a token from a previous response");
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
    let text = String::from_utf8(bytes).map_err(|_| invalid())?;
    text.strip_prefix(PAGE_TOKEN_PREFIX)
        .filter(|name| !name.is_empty())
        .map(|name| Some(name.to_owned()))
        .ok_or_else(invalid)
}

#[tonic::async_trait]
impl replication_service_server::ReplicationService for ReplicationService {
    type RunJobStream = ResponseStream<RunJobResponse>;
    type ReplicateTableStream = ResponseStream<ReplicateTableResponse>;

    async fn create_job(
        &self,
        request: Request<CreateJobRequest>,
    ) -> Result<Response<CreateJobResponse>, Status> {
        let identity = super::identity(&request)?.clone();
        let request = request.into_inner();
        let wire = request
            .job
            .ok_or_else(|| RequestError::invalid("job", "required"))
            .map_err(request_status)?;
        let spec = self
            .check(&identity, spec_from_wire(&wire).map_err(request_status)?, None)
            .await
            .map_err(request_status)?;
        let created_by = actor_name(&identity);
        if request.validate_only {
            return Ok(Response::new(CreateJobResponse {
                job: Some(pb::ReplicationJob {
                    created_by,
                    ..spec_to_wire(spec)
                }),
            }));
        }
        let job = self
            .jobs
            .create(&spec, &created_by)
            .await
            .map_err(RequestError::from)
            .map_err(request_status)?;
        tracing::info!(job = %job.id, name = %job.spec.name, by = %identity.label(), "replication job created");
        Ok(Response::new(CreateJobResponse {
            job: Some(job_to_wire(job)),
        }))
    }

    async fn update_job(
        &self,
        request: Request<UpdateJobRequest>,
    ) -> Result<Response<UpdateJobResponse>, Status> {
        let identity = super::identity(&request)?.clone();
        let request = request.into_inner();
        let wire = request
            .job
            .ok_or_else(|| RequestError::invalid("job", "required"))
            .map_err(request_status)?;
        let id = parse_id(&wire.id, "job.id").map_err(request_status)?;
        let fields = mask_fields(request.update_mask.as_ref()).map_err(request_status)?;
        let current = self.visible_job(&identity, id).await.map_err(request_status)?;
        let mut spec = current.spec.clone();
        for field in fields {
            set_field(&mut spec, &wire, field).map_err(request_status)?;
        }
        let spec = self
            .check(&identity, spec, Some(&current))
            .await
            .map_err(request_status)?;
        // Written only if nobody changed the job since it was read above
        // (ABORTED otherwise): the checks ran against that version.
        let job = self
            .jobs
            .update(id, current.revision, &spec)
            .await
            .map_err(RequestError::from)
            .map_err(request_status)?
            .ok_or_else(|| not_found(id))
            .map_err(request_status)?;
        self.runs()
            .forget_positions(
                job.id,
                &job.spec.tables,
                &job.spec.targets,
                current.spec.restarts_positions(&job.spec),
            )
            .await
            .map_err(RequestError::history_store)
            .map_err(request_status)?;
        tracing::info!(job = %job.id, name = %job.spec.name, by = %identity.label(), "replication job updated");
        Ok(Response::new(UpdateJobResponse {
            job: Some(job_to_wire(job)),
        }))
    }

    async fn delete_job(
        &self,
        request: Request<DeleteJobRequest>,
    ) -> Result<Response<DeleteJobResponse>, Status> {
        let identity = super::identity(&request)?.clone();
        let id = parse_id(&request.get_ref().id, "id").map_err(request_status)?;
        // Through visible_job so an API key could never delete what it
        // cannot see.
        self.visible_job(&identity, id).await.map_err(request_status)?;
        if !self
            .jobs
            .delete(id)
            .await
            .map_err(RequestError::from)
            .map_err(request_status)?
        {
            return Err(request_status(not_found(id)));
        }
        tracing::info!(job = %id, by = %identity.label(), "replication job deleted");
        Ok(Response::new(DeleteJobResponse {}))
    }

    async fn get_job(&self, request: Request<GetJobRequest>) -> Result<Response<GetJobResponse>, Status> {
        let identity = super::identity(&request)?;
        let id = parse_id(&request.get_ref().id, "id").map_err(request_status)?;
        let job = self.visible_job(identity, id).await.map_err(request_status)?;
        Ok(Response::new(GetJobResponse {
            job: Some(job_to_wire(job)),
        }))
    }

    async fn list_jobs(
        &self,
        request: Request<ListJobsRequest>,
    ) -> Result<Response<ListJobsResponse>, Status> {
        let identity = super::identity(&request)?;
        let message = request.get_ref();
        let limit = page_size(message.page_size).map_err(request_status)?;
        let mut after = decode_page_token(&message.page_token).map_err(request_status)?;
        let wanted = usize::try_from(limit).unwrap_or(usize::MAX);
        // One more than asked tells whether another page exists. Jobs an API
        // key may not see are skipped, so reading may take several rounds.
        let mut jobs = Vec::new();
        loop {
            let batch = self
                .jobs
                .list(after.as_deref(), limit + 1)
                .await
                .map_err(RequestError::from)
                .map_err(request_status)?;
            let exhausted = batch.len() <= wanted;
            after = batch.last().map(|job| job.spec.name.clone());
            jobs.extend(batch.into_iter().filter(|job| visible(identity, &job.spec)));
            if exhausted || jobs.len() > wanted {
                break;
            }
        }
        let next_page_token = if jobs.len() > wanted {
            jobs.truncate(wanted);
            jobs.last()
                .map(|job| encode_page_token(&job.spec.name))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(ListJobsResponse {
            jobs: jobs.into_iter().map(job_to_wire).collect(),
            next_page_token,
        }))
    }

    async fn run_job(&self, request: Request<RunJobRequest>) -> Result<Response<Self::RunJobStream>, Status> {
        let identity = super::identity(&request)?.clone();
        let origin = super::origin(&request);
        let message = request.into_inner();
        let id = parse_id(&message.job_id, "job_id").map_err(request_status)?;
        let job = self.visible_job(&identity, id).await.map_err(request_status)?;
        let tables = pick_tables(&job, &message.tables).map_err(request_status)?;
        let targets = pick_targets(&job, &message.targets).map_err(request_status)?;
        let lock = self.runner.lock(&job).await.map_err(request_status)?;
        let by = RunBy {
            actor: Actor::of(&identity),
            role: identity.role,
            origin,
        };
        let cancel = self.runner.run_token();
        let events = self
            .runner
            .launch(lock, &job, tables, targets, by, cancel.clone())
            .await
            .map_err(request_status)?;
        tracing::info!(job = %job.id, name = %job.spec.name, by = %identity.label(), "replication job run on demand");
        Ok(Response::new(event_stream(events, cancel, |event| {
            RunJobResponse { event: Some(event) }
        })))
    }

    async fn replicate_table(
        &self,
        request: Request<ReplicateTableRequest>,
    ) -> Result<Response<Self::ReplicateTableStream>, Status> {
        let identity = super::identity(&request)?.clone();
        let origin = super::origin(&request);
        let message = request.into_inner();
        let (spec, plan) = self
            .one_shot_plan(&identity, &message)
            .await
            .map_err(request_status)?;
        let by = RunBy {
            actor: Actor::of(&identity),
            role: identity.role,
            origin,
        };
        // Nothing is copied unless the run is on record first.
        let open = self
            .audit
            .open(runner::run_record(&spec, by, None))
            .await
            .map_err(|error| match RequestError::from(error) {
                RequestError::Unavailable(message) => {
                    RequestError::Unavailable(format!("{message}: the copy was refused and no target saw it"))
                }
                other => other,
            })
            .map_err(request_status)?;
        tracing::info!(run = %open.id(), by = %identity.label(), "{}", runner::describe_run(&spec));
        let cancel = self.runner.run_token();
        let events = run::start(
            Arc::clone(&self.registry),
            Arc::new(plan),
            open.started(),
            cancel.clone(),
            None,
            Arc::clone(self.runner.observer()),
        );
        Ok(Response::new(event_stream(events, cancel, |event| {
            ReplicateTableResponse { event: Some(event) }
        })))
    }

    async fn get_status(
        &self,
        request: Request<GetStatusRequest>,
    ) -> Result<Response<GetStatusResponse>, Status> {
        let identity = super::identity(&request)?;
        let message = request.get_ref();
        let jobs = if message.job_id.is_empty() {
            self.all_visible_jobs(identity).await.map_err(request_status)?
        } else {
            vec![
                self.visible_job(
                    identity,
                    parse_id(&message.job_id, "job_id").map_err(request_status)?,
                )
                .await
                .map_err(request_status)?,
            ]
        };
        let ids: Vec<Uuid> = jobs.iter().map(|job| job.id).collect();
        let store = RequestError::history_store;
        let mut states = self
            .runs()
            .jobs(&ids)
            .await
            .map_err(store)
            .map_err(request_status)?;
        let pairs = self
            .runs()
            .pairs(&ids)
            .await
            .map_err(store)
            .map_err(request_status)?;
        let running = self
            .runs()
            .running(&ids)
            .await
            .map_err(store)
            .map_err(request_status)?;
        let mut statuses = Vec::with_capacity(jobs.len());
        for job in jobs {
            let state = states.remove(&job.id).unwrap_or_default();
            let job_pairs: Vec<&PairState> = pairs.iter().filter(|pair| pair.job_id == job.id).collect();
            let running = running.contains(&job.id);
            let tables = status::measure_job(
                &self.registry,
                &job,
                &job_pairs,
                !message.skip_row_counts,
                self.catalog_timeout(),
                self.runner.observer().as_ref(),
            )
            .await
            .into_iter()
            .map(|reading| pair_status(running, reading))
            .collect();
            statuses.push(job_status(&job, &state, running, tables));
        }
        Ok(Response::new(GetStatusResponse { jobs: statuses }))
    }
}

impl ReplicationService {
    /// Every job the caller may see, in name order.
    async fn all_visible_jobs(&self, identity: &Identity) -> Result<Vec<Job>, RequestError> {
        let mut jobs = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self.jobs.list(after.as_deref(), MAX_PAGE_SIZE).await?;
            let last = page.len() < usize::try_from(MAX_PAGE_SIZE).unwrap_or(usize::MAX);
            after = page.last().map(|job| job.spec.name.clone());
            jobs.extend(page.into_iter().filter(|job| visible(identity, &job.spec)));
            if last {
                return Ok(jobs);
            }
        }
    }
}

/// The job's requested tables (all of them for none), each one of its own.
fn pick_tables(job: &Job, requested: &[String]) -> Result<Vec<String>, RequestError> {
    let mut tables = Vec::new();
    for (index, table) in requested.iter().enumerate() {
        if !job.spec.tables.contains(table) {
            return Err(RequestError::invalid(
                format!("tables[{index}]"),
                format!(
                    "{table:?} is not a table of job {:?} (its tables: {})",
                    job.spec.name,
                    job.spec.tables.join(", ")
                ),
            ));
        }
        if !tables.contains(table) {
            tables.push(table.clone());
        }
    }
    Ok(tables)
}

/// The job's requested targets (all of them for none), each one of its own.
fn pick_targets(job: &Job, requested: &[pb::Target]) -> Result<Vec<Target>, RequestError> {
    let mut targets = Vec::new();
    for (index, wire) in requested.iter().enumerate() {
        let target = target_from_wire(wire);
        if !job.spec.targets.contains(&target) {
            let names: Vec<String> = job.spec.targets.iter().map(ToString::to_string).collect();
            return Err(RequestError::invalid(
                format!("targets[{index}]"),
                format!(
                    "{target} is not a target of job {:?} (its targets: {})",
                    job.spec.name,
                    names.join(", ")
                ),
            ));
        }
        if !targets.contains(&target) {
            targets.push(target);
        }
    }
    Ok(targets)
}

/// A run's events as a response stream. Dropping the stream (client gone,
/// deadline) cancels the run: the copies stop at their next batch boundary.
fn event_stream<T: Send + 'static>(
    events: tokio::sync::mpsc::Receiver<RunEvent>,
    cancel: CancellationToken,
    wrap: fn(pb::ReplicationEvent) -> T,
) -> ResponseStream<T> {
    let guard = cancel.drop_guard();
    Box::pin(futures::stream::unfold(
        (events, guard),
        move |(mut events, guard)| async move {
            let event = events.recv().await?;
            Some((Ok(wrap(event_to_wire(event))), (events, guard)))
        },
    ))
}

/// A stored outcome on the wire. RUNNING while nobody holds the job's lock
/// means the server running it died mid-run: that run failed (the next one
/// resumes from the saved positions).
fn stored_outcome_to_wire(stored: Option<&str>, running: bool) -> pb::ReplicationOutcome {
    match stored.and_then(StoredOutcome::parse) {
        None => pb::ReplicationOutcome::Unspecified,
        Some(StoredOutcome::Running) if !running => pb::ReplicationOutcome::Failed,
        Some(StoredOutcome::Running) => pb::ReplicationOutcome::Running,
        Some(StoredOutcome::Succeeded) => pb::ReplicationOutcome::Succeeded,
        Some(StoredOutcome::Partial) => pb::ReplicationOutcome::Partial,
        Some(StoredOutcome::Failed) => pb::ReplicationOutcome::Failed,
        Some(StoredOutcome::Cancelled) => pb::ReplicationOutcome::Cancelled,
    }
}

fn job_status(
    job: &Job,
    state: &JobState,
    running: bool,
    tables: Vec<pb::TableTargetStatus>,
) -> pb::JobStatus {
    let last_outcome = stored_outcome_to_wire(state.last_outcome.as_deref(), running);
    pb::JobStatus {
        job_id: job.id.to_string(),
        job_name: job.spec.name.clone(),
        enabled: job.spec.enabled,
        running,
        last_run_started_at: state.last_run_started_at.map(convert::timestamp),
        last_run_finished_at: state.last_run_finished_at.map(convert::timestamp),
        last_outcome: last_outcome.into(),
        next_run_at: next_run_at(job).map(convert::timestamp),
        tables,
        last_error: state
            .last_error
            .as_ref()
            .map(|error| convert::recorded_error(&error.0)),
    }
}

fn pair_status(running: bool, reading: PairReading<'_>) -> pb::TableTargetStatus {
    let stored = reading.stored;
    pb::TableTargetStatus {
        table: reading.table.to_owned(),
        target: Some(convert::target(reading.target)),
        last_run_started_at: stored.and_then(|p| p.last_run_started_at).map(convert::timestamp),
        last_run_finished_at: stored
            .and_then(|p| p.last_run_finished_at)
            .map(convert::timestamp),
        last_outcome: stored_outcome_to_wire(stored.and_then(|p| p.last_outcome.as_deref()), running).into(),
        last_run_rows_written: stored
            .map(|p| u64::try_from(p.last_run_rows_written).unwrap_or_default())
            .unwrap_or_default(),
        watermark: stored.and_then(|p| p.watermark.clone()).unwrap_or_default(),
        source_max_sync_key: reading.source_newest.unwrap_or_default(),
        lag: reading.lag.seconds.map(convert::signed_seconds),
        lag_text: reading.lag.text.unwrap_or_default(),
        source_row_count: reading.source_rows,
        target_row_count: reading.target_rows,
        row_count_difference: reading
            .source_rows
            .zip(reading.target_rows)
            .map(|(source, target)| source - target),
        last_error: stored
            .and_then(|p| p.last_error.as_ref())
            .map(|error| convert::recorded_error(&error.0)),
        last_error_at: stored.and_then(|p| p.last_error_at).map(convert::timestamp),
    }
}

/// When the scheduler runs the job next: unset unless it is enabled with
/// an interval. Before its first scheduled run a job is due since it was
/// last changed (the scheduler's next tick runs it).
fn next_run_at(job: &Job) -> Option<chrono::DateTime<chrono::Utc>> {
    (job.spec.enabled && job.spec.interval.is_some()).then_some(job.next_run_at.unwrap_or(job.updated_at))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the request fuzzer: `seconds: i64::MIN` panicked (an
    /// overflow inside prost-types' conversion) instead of being refused.
    #[test]
    fn durations_from_the_wire_are_checked_without_overflow() {
        let wire = |seconds, nanos| prost_types::Duration { seconds, nanos };
        for (value, ok) in [
            (wire(90, 5), Some(Duration::new(90, 5))),
            (wire(0, 0), Some(Duration::ZERO)),
            (wire(i64::MIN, 0), None),
            (wire(i64::MIN, i32::MIN), None),
            (wire(-1, 0), None),
            (wire(0, -1), None),
            (wire(1, 1_000_000_000), None),
            (
                wire(i64::MAX, 999_999_999),
                Some(Duration::new(i64::MAX as u64, 999_999_999)),
            ),
        ] {
            let converted = duration_from_wire(Some(&value), "job.interval");
            match ok {
                Some(expected) => assert_eq!(converted.ok().flatten(), Some(expected), "{value:?}"),
                None => assert!(
                    matches!(&converted, Err(RequestError::InvalidArgument { field, .. }) if field == "job.interval"),
                    "{value:?}: {converted:?}"
                ),
            }
        }
    }

    #[test]
    fn masks_name_fields_and_refuse_output_only_ones() {
        let mask = |paths: &[&str]| prost_types::FieldMask {
            paths: paths.iter().map(|p| (*p).to_owned()).collect(),
        };
        assert_eq!(
            mask_fields(Some(&mask(&["interval", "enabled", "interval"]))).ok(),
            Some(vec![JobField::Interval, JobField::Enabled])
        );
        assert_eq!(
            mask_fields(Some(&mask(&["*"]))).ok().map(|f| f.len()),
            Some(JobField::ALL.len())
        );
        for (paths, expected) in [
            (&[][..], "update_mask: required"),
            (&["created_by"][..], "update_mask: created_by is output only"),
            (
                &["source.cloud"][..],
                "update_mask: \"source.cloud\" is not a field",
            ),
        ] {
            let error = mask_fields(Some(&mask(paths)))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(error.starts_with(expected), "{paths:?}: {error}");
        }
        assert!(mask_fields(None).is_err());
    }

    #[test]
    fn a_run_without_a_lock_holder_is_not_running() {
        assert_eq!(
            stored_outcome_to_wire(Some("RUNNING"), true),
            pb::ReplicationOutcome::Running
        );
        assert_eq!(
            stored_outcome_to_wire(Some("RUNNING"), false),
            pb::ReplicationOutcome::Failed
        );
        assert_eq!(
            stored_outcome_to_wire(Some("CANCELLED"), false),
            pb::ReplicationOutcome::Cancelled
        );
        assert_eq!(
            stored_outcome_to_wire(None, false),
            pb::ReplicationOutcome::Unspecified
        );
    }

    #[test]
    fn page_tokens_round_trip() {
        let token = encode_page_token("orders-to-analytics");
        assert_eq!(
            decode_page_token(&token).ok(),
            Some(Some("orders-to-analytics".to_owned()))
        );
        assert_eq!(decode_page_token("").ok(), Some(None));
        assert!(decode_page_token("not a token").is_err());
        assert!(decode_page_token(&URL_SAFE_NO_PAD.encode("v2:x")).is_err());
        assert!(page_size(0).is_ok_and(|size| size == DEFAULT_PAGE_SIZE));
        assert!(page_size(500).is_ok());
        assert!(page_size(501).is_err());
        assert!(page_size(-1).is_err());
    }

    #[test]
    fn wire_jobs_convert_with_defaults_and_field_paths() {
        let wire = pb::ReplicationJob {
            name: "j".to_owned(),
            source: Some(pb::Target {
                cloud: "aws".to_owned(),
                database: "app".to_owned(),
            }),
            mode: pb::ReplicationMode::FullRefresh.into(),
            overlap: Some(prost_types::Duration { seconds: 0, nanos: 0 }),
            ..Default::default()
        };
        let spec = spec_from_wire(&wire).ok();
        assert_eq!(spec.as_ref().map(|s| s.batch_size), Some(DEFAULT_BATCH_SIZE));
        assert_eq!(spec.as_ref().map(|s| s.overlap), Some(None));
        let negative = pb::ReplicationJob {
            interval: Some(prost_types::Duration {
                seconds: -1,
                nanos: 0,
            }),
            ..wire.clone()
        };
        let error = spec_from_wire(&negative)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(error.starts_with("job.interval:"), "{error}");
        let unspecified = pb::ReplicationJob { mode: 0, ..wire };
        let error = spec_from_wire(&unspecified)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(error.starts_with("job.mode:"), "{error}");
    }
}
