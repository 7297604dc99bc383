//! `pgfleet.v1.BackupService`: policies, runs, the backup catalog, verify,
//! restore and health, converted between wire and [`pgfleet_backup`] types
//! here.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use pgfleet_backup::BackupError;
use pgfleet_backup::policy::{DumpFormat, Policy, PolicySpec, Retention, TargetName, TargetSelection};
use pgfleet_backup::run::{BackupCaller, Backups, RestoreEvent, RestoreSpec, RunEvent, RunSpec};
use pgfleet_backup::store::{BackupFilter, BackupRecord, BackupStatus};
use pgfleet_engine::RequestError;
use pgfleet_engine::audit::Actor;
use pgfleet_engine::identity::{Identity, Principal};
use pgfleet_proto::pgfleet::v1 as pb;
use pgfleet_proto::pgfleet::v1::backup_service_server;
use pgfleet_registry::Target;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::ResponseStream;
use super::convert;
use crate::status::request_status;

/// Page size when the request names none.
const DEFAULT_PAGE_SIZE: i64 = 50;
/// Largest page a request may ask for.
const MAX_PAGE_SIZE: i64 = 500;

/// Serves `pgfleet.v1.BackupService`.
#[derive(Clone)]
pub struct BackupService {
    backups: Arc<Backups>,
    /// Fired at shutdown: runs and restores stop.
    shutdown: CancellationToken,
}

impl BackupService {
    pub fn new(backups: Arc<Backups>, shutdown: CancellationToken) -> Self {
        Self { backups, shutdown }
    }

    fn caller<T>(request: &Request<T>) -> Result<(Identity, BackupCaller), Status> {
        let identity = super::identity(request)?.clone();
        let caller = BackupCaller {
            actor: Actor::of(&identity),
            role: identity.role,
            origin: super::origin(request),
        };
        Ok((identity, caller))
    }

    async fn policy(&self, id: Uuid) -> Result<Policy, RequestError> {
        self.backups
            .policies()
            .get(id)
            .await?
            .ok_or_else(|| RequestError::from(pgfleet_backup::store::not_found(id)))
    }
}

fn status(error: BackupError) -> Status {
    request_status(RequestError::from(error))
}

fn parse_id(text: &str, field: &str) -> Result<Uuid, RequestError> {
    if text.is_empty() {
        return Err(RequestError::invalid(field, "required"));
    }
    Uuid::parse_str(text).map_err(|_| RequestError::invalid(field, format!("{text:?} is not a UUID")))
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

fn created_by(identity: &Identity) -> String {
    match &identity.principal {
        Principal::User { username, .. } => format!("user:{username}"),
        _ => identity.label(),
    }
}

fn target_name(wire: &pb::Target) -> TargetName {
    TargetName {
        cloud: wire.cloud.clone(),
        database: wire.database.clone(),
    }
}

fn optional_duration(wire: Option<&prost_types::Duration>, field: &str) -> Result<Option<u64>, RequestError> {
    wire.map(|d| convert::duration_from_wire(d, field).map(|d| d.as_secs()))
        .transpose()
}

fn nonzero(count: u32) -> Option<u32> {
    (count != 0).then_some(count)
}

/// A wire policy as a spec (field checks are the domain's).
fn spec_from_wire(wire: &pb::BackupPolicy) -> Result<PolicySpec, RequestError> {
    use pb::backup_targets::Selection;
    let targets = match wire.targets.as_ref().and_then(|t| t.selection.as_ref()) {
        None => return Err(RequestError::invalid("policy.targets", "required")),
        Some(Selection::AllCloudsDatabase(database)) => TargetSelection::AllClouds {
            database: database.clone(),
        },
        Some(Selection::CloudDatabase(target)) => TargetSelection::Cloud {
            cloud: target.cloud.clone(),
            database: target.database.clone(),
        },
        Some(Selection::Targets(list)) => TargetSelection::Targets {
            targets: list.targets.iter().map(target_name).collect(),
        },
    };
    let format = match pb::BackupFormat::try_from(wire.format) {
        Ok(pb::BackupFormat::Unspecified | pb::BackupFormat::Custom) => DumpFormat::Custom,
        Ok(pb::BackupFormat::Plain) => DumpFormat::Plain,
        Err(_) => return Err(RequestError::invalid("policy.format", "unknown format")),
    };
    let retention = wire.retention.as_ref().map_or(Ok(Retention::default()), |r| {
        Ok::<_, RequestError>(Retention {
            keep_last: nonzero(r.keep_last),
            keep_within_secs: optional_duration(r.keep_within.as_ref(), "policy.retention.keep_within")?,
            keep_daily: nonzero(r.keep_daily),
            keep_weekly: nonzero(r.keep_weekly),
            keep_monthly: nonzero(r.keep_monthly),
        })
    })?;
    Ok(PolicySpec {
        name: wire.name.clone(),
        targets,
        schedule: (!wire.schedule.trim().is_empty()).then(|| wire.schedule.trim().to_owned()),
        time_zone: if wire.time_zone.is_empty() {
            "UTC".to_owned()
        } else {
            wire.time_zone.clone()
        },
        format,
        compression_level: if wire.compression_level == 0 {
            pgfleet_backup::policy::DEFAULT_COMPRESSION_LEVEL
        } else {
            wire.compression_level
        },
        retention,
        max_age_secs: optional_duration(wire.max_age.as_ref(), "policy.max_age")?,
        enabled: wire.enabled,
    })
}

fn format_to_wire(format: DumpFormat) -> pb::BackupFormat {
    match format {
        DumpFormat::Custom => pb::BackupFormat::Custom,
        DumpFormat::Plain => pb::BackupFormat::Plain,
    }
}

fn wire_target(target: &TargetName) -> pb::Target {
    pb::Target {
        cloud: target.cloud.clone(),
        database: target.database.clone(),
    }
}

fn secs(secs: Option<u64>) -> Option<prost_types::Duration> {
    secs.map(|s| convert::duration(Duration::from_secs(s)))
}

fn policy_to_wire(policy: Policy) -> pb::BackupPolicy {
    use pb::backup_targets::Selection;
    let spec = policy.spec;
    let selection = match spec.targets {
        TargetSelection::AllClouds { database } => Selection::AllCloudsDatabase(database),
        TargetSelection::Cloud { cloud, database } => {
            Selection::CloudDatabase(pb::Target { cloud, database })
        }
        TargetSelection::Targets { targets } => Selection::Targets(pb::BackupTargetList {
            targets: targets.iter().map(wire_target).collect(),
        }),
    };
    pb::BackupPolicy {
        id: policy.id.to_string(),
        name: spec.name,
        targets: Some(pb::BackupTargets {
            selection: Some(selection),
        }),
        schedule: spec.schedule.unwrap_or_default(),
        time_zone: spec.time_zone,
        format: format_to_wire(spec.format).into(),
        compression_level: spec.compression_level,
        retention: Some(pb::Retention {
            keep_last: spec.retention.keep_last.unwrap_or(0),
            keep_within: secs(spec.retention.keep_within_secs),
            keep_daily: spec.retention.keep_daily.unwrap_or(0),
            keep_weekly: spec.retention.keep_weekly.unwrap_or(0),
            keep_monthly: spec.retention.keep_monthly.unwrap_or(0),
        }),
        max_age: secs(spec.max_age_secs),
        enabled: spec.enabled,
        revision: policy.revision,
        created_by: policy.created_by,
        create_time: Some(convert::timestamp(policy.created_at)),
        update_time: Some(convert::timestamp(policy.updated_at)),
        next_run_time: policy.next_run_at.map(convert::timestamp),
    }
}

fn backup_to_wire(backup: BackupRecord) -> pb::Backup {
    pb::Backup {
        id: backup.id.to_string(),
        target: Some(convert::target(&backup.target)),
        policy_id: backup.policy_id.map(|id| id.to_string()).unwrap_or_default(),
        policy_name: backup.policy_name,
        status: match backup.status {
            BackupStatus::Succeeded => pb::BackupStatus::Succeeded,
            BackupStatus::Failed => pb::BackupStatus::Failed,
            BackupStatus::Running => pb::BackupStatus::Unspecified,
        }
        .into(),
        format: format_to_wire(backup.format).into(),
        encrypted: backup.encrypted,
        object_key: backup.object_key,
        manifest_key: backup.manifest_key,
        start_time: Some(convert::timestamp(backup.started_at)),
        finish_time: backup.finished_at.map(convert::timestamp),
        raw_bytes: backup.raw_bytes,
        compressed_bytes: backup.compressed_bytes,
        stored_bytes: backup.stored_bytes,
        stored_sha256: backup.stored_sha256,
        raw_sha256: backup.raw_sha256,
        server_version: backup.server_version,
        pg_dump_version: backup.pg_dump_version,
        execution_id: backup.execution_id.to_string(),
        error: backup.error,
    }
}

/// Page tokens of ListBackups: the (started_at, id) of the last backup.
fn encode_backup_token(backup: &BackupRecord) -> String {
    URL_SAFE_NO_PAD.encode(format!(
        "b1:{}:{}",
        backup.started_at.timestamp_micros(),
        backup.id
    ))
}

fn decode_backup_token(token: &str) -> Result<Option<(DateTime<Utc>, Uuid)>, RequestError> {
    if token.is_empty() {
        return Ok(None);
    }
    let invalid = || RequestError::invalid("page_token", "not a token from a previous response");
    let text =
        String::from_utf8(URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?).map_err(|_| invalid())?;
    let rest = text.strip_prefix("b1:").ok_or_else(invalid)?;
    let (micros, id) = rest.split_once(':').ok_or_else(invalid)?;
    let at = micros
        .parse::<i64>()
        .ok()
        .and_then(DateTime::from_timestamp_micros)
        .ok_or_else(invalid)?;
    let id = Uuid::parse_str(id).map_err(|_| invalid())?;
    Ok(Some((at, id)))
}

fn encode_policy_token(name: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("p1:{name}"))
}

fn decode_policy_token(token: &str) -> Result<Option<String>, RequestError> {
    if token.is_empty() {
        return Ok(None);
    }
    let invalid = || RequestError::invalid("page_token", "not a token from a previous response");
    let text =
        String::from_utf8(URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?).map_err(|_| invalid())?;
    text.strip_prefix("p1:")
        .filter(|name| !name.is_empty())
        .map(|name| Some(name.to_owned()))
        .ok_or_else(invalid)
}

fn run_event_to_wire(event: RunEvent) -> pb::RunBackupResponse {
    use pb::run_backup_response::Event;
    let event = match event {
        RunEvent::Started { target, backup_id } => Event::Started(pb::BackupStarted {
            target: Some(convert::target(&target)),
            backup_id: backup_id.to_string(),
        }),
        RunEvent::Progress {
            target,
            raw_bytes,
            stored_bytes,
            elapsed,
        } => Event::Progress(pb::BackupProgress {
            target: Some(convert::target(&target)),
            bytes_read: raw_bytes,
            bytes_written: stored_bytes,
            elapsed: Some(convert::duration(elapsed)),
        }),
        RunEvent::Finished { target, outcome } => {
            let (backup, error) = match outcome {
                Ok(backup) => (Some(backup_to_wire(*backup)), String::new()),
                Err(error) => (None, error),
            };
            Event::Finished(pb::BackupFinished {
                target: Some(convert::target(&target)),
                backup,
                error,
            })
        }
        RunEvent::Done {
            execution_id,
            succeeded,
            failed,
        } => Event::Done(pb::BackupRunDone {
            execution_id: execution_id.to_string(),
            succeeded: u32::try_from(succeeded).unwrap_or(u32::MAX),
            failed: u32::try_from(failed).unwrap_or(u32::MAX),
        }),
    };
    pb::RunBackupResponse { event: Some(event) }
}

fn restore_event_to_wire(event: RestoreEvent) -> pb::RestoreBackupResponse {
    use pb::restore_backup_response::Event;
    let event = match event {
        RestoreEvent::Checked { stored_bytes } => Event::Checked(pb::RestoreChecked { stored_bytes }),
        RestoreEvent::Progress { raw_bytes, elapsed } => Event::Progress(pb::RestoreProgress {
            bytes_restored: raw_bytes,
            elapsed: Some(convert::duration(elapsed)),
        }),
        RestoreEvent::Done {
            execution_id,
            raw_bytes,
        } => Event::Done(pb::RestoreDone {
            execution_id: execution_id.to_string(),
            success: true,
            error: String::new(),
            bytes_restored: raw_bytes,
        }),
        RestoreEvent::Failed {
            execution_id,
            message,
        } => Event::Done(pb::RestoreDone {
            execution_id: execution_id.to_string(),
            success: false,
            error: message,
            bytes_restored: 0,
        }),
    };
    pb::RestoreBackupResponse { event: Some(event) }
}

/// A stream of `events`; dropping it (the client went away) cancels the work.
fn event_stream<E: Send + 'static, T: Send + 'static>(
    events: tokio::sync::mpsc::Receiver<E>,
    cancel: CancellationToken,
    wrap: fn(E) -> T,
) -> ResponseStream<T> {
    let guard = cancel.drop_guard();
    Box::pin(futures::stream::unfold(
        (events, guard),
        move |(mut events, guard)| async move {
            let event = events.recv().await?;
            Some((Ok(wrap(event)), (events, guard)))
        },
    ))
}

#[tonic::async_trait]
impl backup_service_server::BackupService for BackupService {
    type RunBackupStream = ResponseStream<pb::RunBackupResponse>;
    type RestoreBackupStream = ResponseStream<pb::RestoreBackupResponse>;

    async fn create_policy(
        &self,
        request: Request<pb::CreatePolicyRequest>,
    ) -> Result<Response<pb::CreatePolicyResponse>, Status> {
        let (identity, caller) = Self::caller(&request)?;
        let wire = request
            .into_inner()
            .policy
            .ok_or_else(|| request_status(RequestError::invalid("policy", "required")))?;
        let spec = spec_from_wire(&wire).map_err(request_status)?;
        let policy = self
            .backups
            .create_policy(&spec, &caller, &created_by(&identity))
            .await
            .map_err(status)?;
        tracing::info!(policy = %policy.id, name = %policy.spec.name, by = %identity.label(), "backup policy created");
        Ok(Response::new(pb::CreatePolicyResponse {
            policy: Some(policy_to_wire(policy)),
        }))
    }

    async fn update_policy(
        &self,
        request: Request<pb::UpdatePolicyRequest>,
    ) -> Result<Response<pb::UpdatePolicyResponse>, Status> {
        let (identity, caller) = Self::caller(&request)?;
        let wire = request
            .into_inner()
            .policy
            .ok_or_else(|| request_status(RequestError::invalid("policy", "required")))?;
        let id = parse_id(&wire.id, "policy.id").map_err(request_status)?;
        let spec = spec_from_wire(&wire).map_err(request_status)?;
        let revision = if wire.revision == 0 {
            self.policy(id).await.map_err(request_status)?.revision
        } else {
            wire.revision
        };
        let policy = self
            .backups
            .update_policy(id, revision, &spec, &caller)
            .await
            .map_err(status)?;
        tracing::info!(policy = %policy.id, by = %identity.label(), "backup policy updated");
        Ok(Response::new(pb::UpdatePolicyResponse {
            policy: Some(policy_to_wire(policy)),
        }))
    }

    async fn delete_policy(
        &self,
        request: Request<pb::DeletePolicyRequest>,
    ) -> Result<Response<pb::DeletePolicyResponse>, Status> {
        let (identity, caller) = Self::caller(&request)?;
        let id = parse_id(&request.get_ref().id, "id").map_err(request_status)?;
        self.backups.delete_policy(id, &caller).await.map_err(status)?;
        tracing::info!(policy = %id, by = %identity.label(), "backup policy deleted");
        Ok(Response::new(pb::DeletePolicyResponse {}))
    }

    async fn get_policy(
        &self,
        request: Request<pb::GetPolicyRequest>,
    ) -> Result<Response<pb::GetPolicyResponse>, Status> {
        let id = parse_id(&request.get_ref().id, "id").map_err(request_status)?;
        let policy = self.policy(id).await.map_err(request_status)?;
        Ok(Response::new(pb::GetPolicyResponse {
            policy: Some(policy_to_wire(policy)),
        }))
    }

    async fn list_policies(
        &self,
        request: Request<pb::ListPoliciesRequest>,
    ) -> Result<Response<pb::ListPoliciesResponse>, Status> {
        let message = request.get_ref();
        let limit = page_size(message.page_size).map_err(request_status)?;
        let after = decode_policy_token(&message.page_token).map_err(request_status)?;
        let mut policies = self
            .backups
            .policies()
            .list(after.as_deref(), limit + 1)
            .await
            .map_err(status)?;
        let wanted = usize::try_from(limit).unwrap_or(usize::MAX);
        let next_page_token = if policies.len() > wanted {
            policies.truncate(wanted);
            policies
                .last()
                .map(|p| encode_policy_token(&p.spec.name))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListPoliciesResponse {
            policies: policies.into_iter().map(policy_to_wire).collect(),
            next_page_token,
        }))
    }

    async fn run_backup(
        &self,
        request: Request<pb::RunBackupRequest>,
    ) -> Result<Response<Self::RunBackupStream>, Status> {
        let (identity, caller) = Self::caller(&request)?;
        let message = request.into_inner();
        let spec = if !message.policy_id.is_empty() {
            if !message.targets.is_empty() {
                return Err(request_status(RequestError::invalid(
                    "targets",
                    "give a policy_id or targets, not both",
                )));
            }
            let id = parse_id(&message.policy_id, "policy_id").map_err(request_status)?;
            let policy = self.policy(id).await.map_err(request_status)?;
            let targets = policy
                .spec
                .targets
                .resolve(self.backups.registry(), "policy.targets")
                .map_err(status)?;
            RunSpec::of_policy(policy, targets)
        } else {
            if message.targets.is_empty() {
                return Err(request_status(RequestError::invalid(
                    "policy_id",
                    "give a policy_id or targets",
                )));
            }
            let selection = TargetSelection::Targets {
                targets: message.targets.iter().map(target_name).collect(),
            };
            let targets: Vec<Target> =
                selection
                    .resolve(self.backups.registry(), "")
                    .map_err(|error| match error {
                        BackupError::Invalid { field, reason } => status(BackupError::invalid(
                            field.trim_start_matches('.').to_owned(),
                            reason,
                        )),
                        other => status(other),
                    })?;
            RunSpec {
                policy: None,
                targets,
                format: DumpFormat::Custom,
                compression_level: pgfleet_backup::policy::DEFAULT_COMPRESSION_LEVEL,
            }
        };
        let cancel = self.shutdown.child_token();
        let events = self
            .backups
            .start_run(spec, &caller, cancel.clone())
            .await
            .map_err(status)?;
        tracing::info!(by = %identity.label(), "backup run started on demand");
        Ok(Response::new(event_stream(events, cancel, run_event_to_wire)))
    }

    async fn list_backups(
        &self,
        request: Request<pb::ListBackupsRequest>,
    ) -> Result<Response<pb::ListBackupsResponse>, Status> {
        let message = request.get_ref();
        let limit = page_size(message.page_size).map_err(request_status)?;
        let after = decode_backup_token(&message.page_token).map_err(request_status)?;
        let policy_id = if message.policy_id.is_empty() {
            None
        } else {
            Some(parse_id(&message.policy_id, "policy_id").map_err(request_status)?)
        };
        let filter = BackupFilter {
            cloud: message.cloud.clone(),
            database: message.database.clone(),
            policy_id,
            include_failed: message.include_failed,
        };
        let mut backups = self
            .backups
            .list(&filter, after, limit + 1)
            .await
            .map_err(status)?;
        let wanted = usize::try_from(limit).unwrap_or(usize::MAX);
        let next_page_token = if backups.len() > wanted {
            backups.truncate(wanted);
            backups.last().map(encode_backup_token).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListBackupsResponse {
            backups: backups.into_iter().map(backup_to_wire).collect(),
            next_page_token,
        }))
    }

    async fn get_backup(
        &self,
        request: Request<pb::GetBackupRequest>,
    ) -> Result<Response<pb::GetBackupResponse>, Status> {
        let id = parse_id(&request.get_ref().id, "id").map_err(request_status)?;
        let backup = self.backups.get(id).await.map_err(status)?;
        Ok(Response::new(pb::GetBackupResponse {
            backup: Some(backup_to_wire(backup)),
        }))
    }

    async fn verify_backup(
        &self,
        request: Request<pb::VerifyBackupRequest>,
    ) -> Result<Response<pb::VerifyBackupResponse>, Status> {
        let id = parse_id(&request.get_ref().id, "id").map_err(request_status)?;
        let verified = self.backups.verify(id).await.map_err(status)?;
        Ok(Response::new(pb::VerifyBackupResponse {
            stored_bytes: verified.stored_bytes,
            raw_bytes: verified.raw_bytes,
        }))
    }

    async fn restore_backup(
        &self,
        request: Request<pb::RestoreBackupRequest>,
    ) -> Result<Response<Self::RestoreBackupStream>, Status> {
        let (identity, caller) = Self::caller(&request)?;
        let message = request.into_inner();
        let backup_id = parse_id(&message.backup_id, "backup_id").map_err(request_status)?;
        let target = message
            .target
            .as_ref()
            .map(|t| Target::new(&t.cloud, &t.database))
            .ok_or_else(|| request_status(RequestError::invalid("target", "required")))?;
        let spec = RestoreSpec {
            backup_id,
            target,
            clean: message.clean,
            confirm_dangerous: message.confirm_dangerous,
        };
        let cancel = self.shutdown.child_token();
        let events = self
            .backups
            .start_restore(spec, &caller, cancel.clone())
            .await
            .map_err(status)?;
        tracing::info!(backup = %backup_id, by = %identity.label(), "backup restore started");
        Ok(Response::new(event_stream(events, cancel, restore_event_to_wire)))
    }

    async fn delete_backup(
        &self,
        request: Request<pb::DeleteBackupRequest>,
    ) -> Result<Response<pb::DeleteBackupResponse>, Status> {
        let (identity, caller) = Self::caller(&request)?;
        let id = parse_id(&request.get_ref().id, "id").map_err(request_status)?;
        self.backups.delete_backup(id, &caller).await.map_err(status)?;
        tracing::info!(backup = %id, by = %identity.label(), "backup deleted");
        Ok(Response::new(pb::DeleteBackupResponse {}))
    }

    async fn get_backup_health(
        &self,
        _request: Request<pb::GetBackupHealthRequest>,
    ) -> Result<Response<pb::GetBackupHealthResponse>, Status> {
        let now = Utc::now();
        let health = self.backups.health(now).await.map_err(status)?;
        let targets = health
            .into_iter()
            .map(|h| {
                let age = h.last_success.as_ref().map(|b| {
                    let finished = b.finished_at.unwrap_or(b.started_at);
                    convert::duration((now - finished).to_std().unwrap_or_default())
                });
                pb::TargetBackupHealth {
                    target: Some(convert::target(&h.target)),
                    state: if h.degraded {
                        pb::BackupHealthState::Degraded
                    } else {
                        pb::BackupHealthState::Healthy
                    }
                    .into(),
                    last_success: h.last_success.map(backup_to_wire),
                    age,
                    failures_since_success: h.failures_since_success,
                    recent_stored_bytes: h.recent_sizes,
                    max_age: h.max_age.map(convert::duration),
                }
            })
            .collect();
        Ok(Response::new(pb::GetBackupHealthResponse { targets }))
    }
}
