//! `pgfleet.v1.MigrationService`: fleet schema migrations. Wire requests
//! become engine specs, engine results become wire messages; the work is
//! `pgfleet_engine::migrations`'.

use std::time::Duration;

use pgfleet_engine::RequestError;
use pgfleet_engine::migrations::{
    ApplySpec, Caller, LoadedSet, MigrationScope, Migrations, RolloutEvent, Selection, SetSource,
    TargetApplyFailure, TargetApplyResult, VersionSpec,
};
use pgfleet_migrate::{
    ApplyEvent, DEFAULT_LOCK_WAIT, MigrationSet, MigrationState, NotRun, ObjectKind, RolloutOptions,
    RolloutPolicy, SkipReason, TargetStatus,
};
use pgfleet_proto::pgfleet::v1 as pb;
use pgfleet_proto::pgfleet::v1::migration_service_server;
use pgfleet_registry::Target;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Request, Response, Status};

use super::ResponseStream;
use super::convert::{self, FromWire};
use crate::status::request_status;
use futures::StreamExt as _;

/// Serves `pgfleet.v1.MigrationService`.
#[derive(Clone)]
pub struct MigrationService {
    engine: Migrations,
}

impl MigrationService {
    pub fn new(engine: Migrations) -> Self {
        Self { engine }
    }
}

fn caller<T>(request: &Request<T>) -> Result<Caller, Status> {
    Ok(Caller::of(super::identity(request)?, super::origin(request)))
}

fn failed(error: impl Into<RequestError>) -> Status {
    request_status(error.into())
}

impl FromWire<Option<pb::MigrationScope>> for MigrationScope {
    fn from_wire(wire: Option<pb::MigrationScope>) -> Result<Self, RequestError> {
        use pb::migration_scope::Selection as Wire;
        let wire =
            wire.ok_or_else(|| RequestError::invalid("scope", "must be set (at least its database)"))?;
        let selection = match wire.selection {
            None | Some(Wire::AllClouds(_)) => Selection::AllClouds,
            Some(Wire::Cloud(cloud)) => Selection::Cloud(cloud),
            Some(Wire::Targets(list)) => Selection::Targets(convert::targets_from_wire(list.targets)),
        };
        Ok(Self {
            database: wire.database,
            selection,
        })
    }
}

fn lock_wait(wire: Option<&prost_types::Duration>) -> Result<Duration, RequestError> {
    let Some(wire) = wire else {
        return Ok(DEFAULT_LOCK_WAIT);
    };
    let wait = convert::duration_from_wire(wire, "lock_timeout")?;
    if wait > pgfleet_engine::migrations::MAX_LOCK_WAIT {
        return Err(RequestError::invalid("lock_timeout", "at most 10 minutes"));
    }
    Ok(wait)
}

fn up_to(version: i64) -> Result<Option<i64>, RequestError> {
    match version {
        0 => Ok(None),
        v if v < 0 => Err(RequestError::invalid(
            "up_to_version",
            "0 (every pending version) or a version",
        )),
        v => Ok(Some(v)),
    }
}

fn policy_from_wire(wire: i32) -> Result<RolloutPolicy, RequestError> {
    match pb::RolloutPolicy::try_from(wire) {
        Ok(pb::RolloutPolicy::Unspecified | pb::RolloutPolicy::AllAtOnce) => Ok(RolloutPolicy::AllAtOnce),
        Ok(pb::RolloutPolicy::OneCloudThenRest) => Ok(RolloutPolicy::OneCloudThenRest),
        Ok(pb::RolloutPolicy::OneByOne) => Ok(RolloutPolicy::OneByOne),
        Err(_) => Err(RequestError::invalid("policy", format!("unknown value {wire}"))),
    }
}

fn policy_to_wire(policy: RolloutPolicy) -> pb::RolloutPolicy {
    match policy {
        RolloutPolicy::AllAtOnce => pb::RolloutPolicy::AllAtOnce,
        RolloutPolicy::OneCloudThenRest => pb::RolloutPolicy::OneCloudThenRest,
        RolloutPolicy::OneByOne => pb::RolloutPolicy::OneByOne,
    }
}

impl FromWire<pb::ApplyMigrationsRequest> for ApplySpec {
    fn from_wire(wire: pb::ApplyMigrationsRequest) -> Result<Self, RequestError> {
        Ok(Self {
            scope: MigrationScope::from_wire(wire.scope)?,
            up_to: up_to(wire.up_to_version)?,
            rollout: RolloutOptions {
                policy: policy_from_wire(wire.policy)?,
                stop_on_first_failure: wire.stop_on_first_failure,
            },
            lock_wait: lock_wait(wire.lock_timeout.as_ref())?,
        })
    }
}

fn version_spec(
    scope: Option<pb::MigrationScope>,
    version: i64,
    lock_timeout: Option<&prost_types::Duration>,
) -> Result<VersionSpec, RequestError> {
    Ok(VersionSpec {
        scope: MigrationScope::from_wire(scope)?,
        version,
        lock_wait: lock_wait(lock_timeout)?,
    })
}

fn source(set: &LoadedSet) -> pb::MigrationSetSource {
    match set.source {
        SetSource::Directory(_) => pb::MigrationSetSource::Directory,
        SetSource::Uploaded { .. } => pb::MigrationSetSource::Uploaded,
    }
}

fn as_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn infos(set: &MigrationSet) -> Vec<pb::MigrationInfo> {
    set.migrations()
        .iter()
        .map(|m| pb::MigrationInfo {
            version: m.version(),
            name: m.name().to_owned(),
            file: m.up().file().to_owned(),
            checksum: m.checksum().to_hex(),
            has_down: m.down().is_some(),
            no_transaction: m.up().no_transaction(),
        })
        .collect()
}

fn target_error(failure: pgfleet_engine::query::TargetFailure) -> Option<pb::TargetError> {
    Some(convert::target_error(failure))
}

fn target_status(set: &MigrationSet, target: &Target, status: TargetStatus) -> pb::TargetMigrationStatus {
    let pending = status.pending();
    let migrations = status
        .migrations
        .iter()
        .map(|entry| {
            let file_checksum = set
                .get(entry.version)
                .map(|m| m.checksum().to_hex())
                .unwrap_or_default();
            let mut wire = pb::MigrationVersionStatus {
                version: entry.version,
                name: entry.name.clone(),
                state: match entry.state {
                    MigrationState::Applied(_) => pb::MigrationState::Applied,
                    MigrationState::Pending => pb::MigrationState::Pending,
                    MigrationState::Failed(_) => pb::MigrationState::Failed,
                    MigrationState::ChecksumDrift { .. } => pb::MigrationState::ChecksumDrift,
                    MigrationState::Unknown(_) => pb::MigrationState::Unknown,
                }
                .into(),
                file_checksum,
                ..Default::default()
            };
            match &entry.state {
                MigrationState::Applied(row)
                | MigrationState::ChecksumDrift { applied: row, .. }
                | MigrationState::Unknown(row) => {
                    wire.applied_checksum = row.checksum.to_hex();
                    wire.applied_at = Some(convert::timestamp(row.applied_at));
                    wire.applied_by = row.applied_by.clone();
                    wire.duration = Some(convert::duration(row.duration));
                    wire.execution_id = row.execution_id.map(|id| id.to_string()).unwrap_or_default();
                    wire.no_transaction = row.no_transaction;
                }
                MigrationState::Failed(recorded) => {
                    let line_column = set
                        .get(entry.version)
                        .and_then(|m| recorded.failure.line_column(m.up().sql()));
                    let postgres = convert::target_error(pgfleet_engine::migrations::pg_failure(
                        pgfleet_engine::query::FailureCode::Aborted,
                        &recorded.failure,
                    ))
                    .postgres;
                    wire.failure = Some(pb::MigrationFailure {
                        postgres,
                        line: line_column.map_or(0, |(l, _)| as_u32(l)),
                        column: line_column.map_or(0, |(_, c)| as_u32(c)),
                        failed_at: Some(convert::timestamp(recorded.failed_at)),
                        failed_by: recorded.failed_by.clone(),
                        execution_id: recorded.execution_id.map(|id| id.to_string()).unwrap_or_default(),
                    });
                }
                MigrationState::Pending => {}
            }
            wire
        })
        .collect();
    pb::TargetMigrationStatus {
        target: Some(convert::target(target)),
        error: None,
        tracked: status.tracked,
        migrations,
        newest_applied: status.newest_applied().unwrap_or(0),
        behind: !pending.is_empty(),
        needs_attention: !(status.failed().is_empty()
            && status.drifted().is_empty()
            && status.unknown().is_empty()),
        pending,
    }
}

fn plan_to_wire(target: &Target, plan: pgfleet_migrate::Plan) -> pb::TargetMigrationPlan {
    pb::TargetMigrationPlan {
        target: Some(convert::target(target)),
        error: None,
        newest_applied: plan.newest_applied.unwrap_or(0),
        migrations: plan
            .migrations
            .into_iter()
            .map(|m| pb::PlannedMigration {
                version: m.version,
                name: m.name,
                file: m.file,
                no_transaction: m.no_transaction,
                failed_before: m.failed_before,
                statements: m
                    .statements
                    .into_iter()
                    .enumerate()
                    .map(|(index, s)| pb::PlannedMigrationStatement {
                        line: as_u32(s.position.line),
                        column: as_u32(s.position.column),
                        command: s.command,
                        findings: s
                            .findings
                            .iter()
                            .map(|f| pb::DangerFinding {
                                code: f.code.as_str().to_uppercase(),
                                reason: f.reason.clone(),
                                statement_index: as_u32(index),
                            })
                            .collect(),
                    })
                    .collect(),
            })
            .collect(),
    }
}

fn failure_fields(failure: Option<TargetApplyFailure>) -> (Option<pb::TargetError>, u32, u32, bool) {
    match failure {
        None => (None, 0, 0, false),
        Some(f) => (
            Some(convert::target_error(f.failure)),
            f.line_column.map_or(0, |(l, _)| as_u32(l)),
            f.line_column.map_or(0, |(_, c)| as_u32(c)),
            f.outcome_unknown,
        ),
    }
}

fn finished_to_wire(target: &Target, result: TargetApplyResult) -> pb::TargetFinished {
    let success = result.success();
    let not_run = match result.not_run {
        None => pb::TargetNotRunReason::Unspecified,
        Some(NotRun::CanaryFailed) => pb::TargetNotRunReason::CanaryFailed,
        Some(NotRun::EarlierFailure) => pb::TargetNotRunReason::EarlierFailure,
    };
    let (error, _, _, outcome_unknown) = failure_fields(result.failure);
    pb::TargetFinished {
        target: Some(convert::target(target)),
        success,
        applied: result.applied,
        error,
        not_run: not_run.into(),
        newest_applied: result.newest_applied.unwrap_or(0),
        outcome_unknown,
    }
}

fn event_to_wire(event: RolloutEvent, files: &MigrationSet) -> pb::ApplyMigrationsResponse {
    use pb::apply_migrations_response::Event;
    let event = match event {
        RolloutEvent::Target { target, event } => {
            let target = Some(convert::target(&target));
            match event {
                ApplyEvent::Locked { waited, pending } => Event::TargetLocked(pb::TargetLocked {
                    target,
                    waited: Some(convert::duration(waited)),
                    pending,
                }),
                ApplyEvent::Started { version, name } => Event::MigrationStarted(pb::MigrationStarted {
                    target,
                    version,
                    name,
                }),
                ApplyEvent::Applied {
                    version,
                    name,
                    duration,
                } => Event::MigrationApplied(pb::MigrationApplied {
                    target,
                    version,
                    name,
                    duration: Some(convert::duration(duration)),
                }),
                ApplyEvent::Failed {
                    version,
                    name,
                    failure,
                    line_column,
                } => Event::MigrationFailed(pb::MigrationFailed {
                    target,
                    version,
                    file: files
                        .get(version)
                        .map(|m| m.up().file().to_owned())
                        .unwrap_or_default(),
                    name,
                    error: Some(convert::target_error(pgfleet_engine::migrations::pg_failure(
                        pgfleet_engine::query::FailureCode::Aborted,
                        &failure,
                    ))),
                    line: line_column.map_or(0, |(l, _)| as_u32(l)),
                    column: line_column.map_or(0, |(_, c)| as_u32(c)),
                }),
                ApplyEvent::Skipped {
                    version,
                    name,
                    reason,
                } => Event::MigrationSkipped(pb::MigrationSkipped {
                    target,
                    version,
                    name,
                    reason: match reason {
                        SkipReason::AppliedConcurrently => pb::MigrationSkipReason::AppliedConcurrently,
                        SkipReason::EarlierFailed => pb::MigrationSkipReason::EarlierFailed,
                    }
                    .into(),
                }),
            }
        }
        RolloutEvent::TargetFinished { target, result } => {
            Event::TargetFinished(finished_to_wire(&target, *result))
        }
        RolloutEvent::Finished {
            success,
            duration,
            failed,
        } => Event::RolloutFinished(pb::RolloutFinished {
            success,
            duration: Some(convert::duration(duration)),
            failed: failed.iter().map(convert::target).collect(),
        }),
    };
    pb::ApplyMigrationsResponse { event: Some(event) }
}

fn object_kind(kind: ObjectKind) -> pb::SchemaObjectKind {
    match kind {
        ObjectKind::Table => pb::SchemaObjectKind::Table,
        ObjectKind::Column => pb::SchemaObjectKind::Column,
        ObjectKind::Index => pb::SchemaObjectKind::Index,
        ObjectKind::Constraint => pb::SchemaObjectKind::Constraint,
        ObjectKind::View => pb::SchemaObjectKind::View,
        ObjectKind::Function => pb::SchemaObjectKind::Function,
    }
}

#[tonic::async_trait]
impl migration_service_server::MigrationService for MigrationService {
    type ApplyMigrationsStream = ResponseStream<pb::ApplyMigrationsResponse>;

    async fn get_migration_status(
        &self,
        request: Request<pb::GetMigrationStatusRequest>,
    ) -> Result<Response<pb::GetMigrationStatusResponse>, Status> {
        let caller = caller(&request)?;
        let scope = MigrationScope::from_wire(request.into_inner().scope).map_err(failed)?;
        let (set, statuses) = self.engine.status(&scope, &caller).await.map_err(failed)?;
        let summary = pgfleet_migrate::FleetStatus::new(
            &set.set,
            statuses
                .iter()
                .map(|(t, s)| (t.clone(), s.clone().map_err(|f| f.message))),
        );
        let targets = statuses
            .into_iter()
            .map(|(target, status)| match status {
                Ok(status) => target_status(&set.set, &target, status),
                Err(failure) => pb::TargetMigrationStatus {
                    target: Some(convert::target(&target)),
                    error: target_error(failure),
                    behind: true,
                    needs_attention: true,
                    ..Default::default()
                },
            })
            .collect();
        Ok(Response::new(pb::GetMigrationStatusResponse {
            database: set.database.clone(),
            source: source(&set).into(),
            newest_in_set: summary.newest_in_set.unwrap_or(0),
            newest_applied: summary.newest_applied().unwrap_or(0),
            targets,
            behind: summary.behind().into_iter().map(convert::target).collect(),
            needing_attention: summary
                .needing_attention()
                .into_iter()
                .map(convert::target)
                .collect(),
            up_to_date: summary.is_up_to_date(),
        }))
    }

    async fn plan_migrations(
        &self,
        request: Request<pb::PlanMigrationsRequest>,
    ) -> Result<Response<pb::PlanMigrationsResponse>, Status> {
        let caller = caller(&request)?;
        let wire = request.into_inner();
        let scope = MigrationScope::from_wire(wire.scope).map_err(failed)?;
        let up_to = up_to(wire.up_to_version).map_err(failed)?;
        let (set, plans) = self.engine.plan(&scope, up_to, &caller).await.map_err(failed)?;
        Ok(Response::new(pb::PlanMigrationsResponse {
            database: set.database,
            targets: plans
                .into_iter()
                .map(|(target, plan)| match plan {
                    Ok(plan) => plan_to_wire(&target, plan),
                    Err(failure) => pb::TargetMigrationPlan {
                        target: Some(convert::target(&target)),
                        error: target_error(failure),
                        ..Default::default()
                    },
                })
                .collect(),
        }))
    }

    async fn apply_migrations(
        &self,
        request: Request<pb::ApplyMigrationsRequest>,
    ) -> Result<Response<Self::ApplyMigrationsStream>, Status> {
        let caller = caller(&request)?;
        let spec = ApplySpec::from_wire(request.into_inner()).map_err(failed)?;
        let policy = spec.rollout.policy;
        let prepared = self.engine.prepare_apply(spec, &caller).await.map_err(failed)?;
        let started = pb::ApplyMigrationsResponse {
            event: Some(pb::apply_migrations_response::Event::RolloutStarted(
                pb::RolloutStarted {
                    execution_id: prepared.execution_id().to_string(),
                    targets: prepared.targets().iter().map(convert::target).collect(),
                    policy: policy_to_wire(policy).into(),
                    newest_in_set: prepared.set().set.newest_version().unwrap_or(0),
                },
            )),
        };
        let files = prepared.set().set.clone();
        let (sender, receiver) = mpsc::unbounded_channel();
        // Its own task: the rollout finishes (and its record closes) even if
        // the caller goes away.
        tokio::spawn(prepared.run(sender));
        let events =
            UnboundedReceiverStream::new(receiver).map(move |event| Ok(event_to_wire(event, &files)));
        let stream = futures::stream::once(async move { Ok(started) }).chain(events);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn rollback_migration(
        &self,
        request: Request<pb::RollbackMigrationRequest>,
    ) -> Result<Response<pb::RollbackMigrationResponse>, Status> {
        let caller = caller(&request)?;
        let wire = request.into_inner();
        let spec = version_spec(wire.scope, wire.version, wire.lock_timeout.as_ref()).map_err(failed)?;
        let report = self.engine.rollback(spec, &caller).await.map_err(failed)?;
        let results: Vec<pb::TargetRollbackResult> = report
            .results
            .into_iter()
            .map(|(target, result)| match result {
                Ok(done) => pb::TargetRollbackResult {
                    target: Some(convert::target(&target)),
                    success: true,
                    version: done.version,
                    name: done.name,
                    duration: Some(convert::duration(done.duration)),
                    newest_applied: done.newest_applied.unwrap_or(0),
                    ..Default::default()
                },
                Err(failure) => {
                    let version = failure.version.unwrap_or(0);
                    let (error, line, column, outcome_unknown) = failure_fields(Some(failure));
                    pb::TargetRollbackResult {
                        target: Some(convert::target(&target)),
                        version,
                        error,
                        line,
                        column,
                        outcome_unknown,
                        ..Default::default()
                    }
                }
            })
            .collect();
        Ok(Response::new(pb::RollbackMigrationResponse {
            execution_id: report.execution_id.to_string(),
            success: results.iter().all(|r| r.success),
            results,
        }))
    }

    async fn repair_checksum(
        &self,
        request: Request<pb::RepairChecksumRequest>,
    ) -> Result<Response<pb::RepairChecksumResponse>, Status> {
        let caller = caller(&request)?;
        let wire = request.into_inner();
        let spec = version_spec(wire.scope, wire.version, wire.lock_timeout.as_ref()).map_err(failed)?;
        let report = self.engine.repair(spec, &caller).await.map_err(failed)?;
        let results: Vec<pb::TargetRepairResult> = report
            .results
            .into_iter()
            .map(|(target, result)| match result {
                Ok(repaired) => pb::TargetRepairResult {
                    target: Some(convert::target(&target)),
                    success: true,
                    changed: repaired.old != repaired.new,
                    old_checksum: repaired.old.to_hex(),
                    new_checksum: repaired.new.to_hex(),
                    error: None,
                },
                Err(failure) => pb::TargetRepairResult {
                    target: Some(convert::target(&target)),
                    error: Some(convert::target_error(failure.failure)),
                    ..Default::default()
                },
            })
            .collect();
        Ok(Response::new(pb::RepairChecksumResponse {
            execution_id: report.execution_id.to_string(),
            success: results.iter().all(|r| r.success),
            results,
        }))
    }

    async fn check_schema_drift(
        &self,
        request: Request<pb::CheckSchemaDriftRequest>,
    ) -> Result<Response<pb::CheckSchemaDriftResponse>, Status> {
        let caller = caller(&request)?;
        let wire = request.into_inner();
        let scope = MigrationScope::from_wire(wire.scope).map_err(failed)?;
        let reference = wire.reference.map(|t| Target::new(t.cloud, t.database));
        let report = self
            .engine
            .drift(&scope, reference, &wire.schemas, &caller)
            .await
            .map_err(failed)?;
        let targets: Vec<pb::TargetSchemaDrift> = report
            .targets
            .into_iter()
            .map(|(target, result)| match result {
                Ok(differences) => pb::TargetSchemaDrift {
                    target: Some(convert::target(&target)),
                    error: None,
                    differences: differences
                        .into_iter()
                        .map(|d| pb::SchemaDifference {
                            kind: object_kind(d.kind).into(),
                            description: d.to_string(),
                            object: d.object,
                            aspect: d.aspect.unwrap_or_default().to_owned(),
                            reference_value: d.reference.unwrap_or_default(),
                            target_value: d.other.unwrap_or_default(),
                        })
                        .collect(),
                },
                Err(failure) => pb::TargetSchemaDrift {
                    target: Some(convert::target(&target)),
                    error: target_error(failure),
                    differences: Vec::new(),
                },
            })
            .collect();
        Ok(Response::new(pb::CheckSchemaDriftResponse {
            reference: Some(convert::target(&report.reference)),
            drift: targets
                .iter()
                .any(|t| t.error.is_some() || !t.differences.is_empty()),
            targets,
        }))
    }

    async fn upload_migration_set(
        &self,
        request: Request<pb::UploadMigrationSetRequest>,
    ) -> Result<Response<pb::UploadMigrationSetResponse>, Status> {
        let caller = caller(&request)?;
        let wire = request.into_inner();
        let files = wire.files.into_iter().map(|f| (f.name, f.sql)).collect();
        let set = self
            .engine
            .store_set(&wire.database, files, &caller)
            .await
            .map_err(failed)?;
        let uploaded_at = match &set.source {
            SetSource::Uploaded { at, .. } => Some(convert::timestamp(*at)),
            SetSource::Directory(_) => None,
        };
        Ok(Response::new(pb::UploadMigrationSetResponse {
            database: set.database.clone(),
            migrations: infos(&set.set),
            uploaded_at,
        }))
    }

    async fn get_migration_set(
        &self,
        request: Request<pb::GetMigrationSetRequest>,
    ) -> Result<Response<pb::GetMigrationSetResponse>, Status> {
        let caller = caller(&request)?;
        let wire = request.into_inner();
        // The same scope checks as the other calls (allow-list included).
        let scope = MigrationScope {
            database: wire.database.clone(),
            selection: Selection::AllClouds,
        };
        self.engine.resolve(&scope, &caller).map_err(failed)?;
        let set = self.engine.load_set(&wire.database).await.map_err(failed)?;
        let files = if wire.include_files {
            set.set
                .migrations()
                .iter()
                .flat_map(|m| std::iter::once(m.up()).chain(m.down()))
                .map(|script| pb::MigrationFile {
                    name: script.file().to_owned(),
                    sql: script.sql().to_owned(),
                })
                .collect()
        } else {
            Vec::new()
        };
        let (uploaded_by, uploaded_at) = match &set.source {
            SetSource::Uploaded { by, at } => (by.clone(), Some(convert::timestamp(*at))),
            SetSource::Directory(_) => (String::new(), None),
        };
        Ok(Response::new(pb::GetMigrationSetResponse {
            database: set.database.clone(),
            source: source(&set).into(),
            migrations: infos(&set.set),
            files,
            uploaded_by,
            uploaded_at,
        }))
    }
}
