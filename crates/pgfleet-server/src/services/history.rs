//! `pgfleet.v1.HistoryService`: reading the audit trail.

use std::sync::Arc;

use crate::status::request_status;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::DateTime;
use pgfleet_proto::pgfleet::v1 as pb;
use pgfleet_proto::pgfleet::v1::history_service_server;
use prost::Message as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::ResponseStream;
use super::convert::{self, role_to_wire};
use pgfleet_engine::RequestError;
use pgfleet_engine::audit::chain::{self, ChainWarning, CheckpointCheck, Link, Verification, WarningKind};
use pgfleet_engine::audit::checkpoint::{Checkpoint, CheckpointRejection};
use pgfleet_engine::audit::search::{self, Filter, PageCursor, StoredExecution, Visibility};
use pgfleet_engine::audit::{AuditLog, RecordedOutcome};
use pgfleet_engine::identity::Role;
use pgfleet_engine::query::atomic;

/// Page size when the request names none.
const DEFAULT_PAGE_SIZE: i32 = 50;
/// Largest page a request may ask for.
const MAX_PAGE_SIZE: i32 = 500;
/// Records read per round trip while exporting; also the most held in memory.
const EXPORT_BATCH: i64 = 500;

/// Serves `pgfleet.v1.HistoryService`.
#[derive(Clone)]
pub struct HistoryService {
    audit: Arc<AuditLog>,
    /// Bytes of records one ListExecutions page may hold (the unary
    /// response budget): a page stops short of it and says so with a token.
    page_bytes: u64,
}

impl HistoryService {
    pub fn new(audit: Arc<AuditLog>, page_bytes: u64) -> Self {
        Self { audit, page_bytes }
    }
}

/// Longest `query_contains`: a search term, not a document; a longer one
/// would make every row's ILIKE scan it.
const MAX_QUERY_CONTAINS_BYTES: usize = 1024;
/// Longest other text filter (names, fingerprints).
const MAX_FILTER_TEXT_BYTES: usize = 256;
/// Largest legacy `offset`: PostgreSQL reads and discards every skipped
/// record; beyond this page with `page_token`.
const MAX_OFFSET: i32 = 10_000;

/// Refuses a text filter longer than `max` bytes, naming its field.
fn check_filter_text(text: &str, field: &str, name: &str, max: usize) -> Result<(), RequestError> {
    if text.len() > max {
        return Err(RequestError::invalid(
            format!("{field}.{name}"),
            format!("is {} bytes; at most {max}", text.len()),
        ));
    }
    Ok(())
}

/// The stored name of a wire enum value: its proto name without the
/// enum's prefix (`STATEMENT_CLASS_WRITE` → `WRITE`).
fn stored_name(wire_name: &str, prefix: &str) -> String {
    wire_name.strip_prefix(prefix).unwrap_or(wire_name).to_owned()
}

fn wire_name(stored: &str, prefix: &str) -> String {
    format!("{prefix}{stored}")
}

/// Checks and converts a wire filter; `field` is its path in the request.
fn filter_from_wire(wire: Option<&pb::ExecutionFilter>, field: &str) -> Result<Filter, RequestError> {
    let Some(wire) = wire else {
        return Ok(Filter::default());
    };
    check_filter_text(
        &wire.query_contains,
        field,
        "query_contains",
        MAX_QUERY_CONTAINS_BYTES,
    )?;
    for (name, text) in [
        ("database", &wire.database),
        ("cloud", &wire.cloud),
        ("username", &wire.username),
        ("fingerprint", &wire.fingerprint),
    ] {
        check_filter_text(text, field, name, MAX_FILTER_TEXT_BYTES)?;
    }
    let non_empty = |text: &str| (!text.is_empty()).then(|| text.to_owned());
    let time = |value: Option<&prost_types::Timestamp>, name: &str| {
        value
            .map(|t| {
                convert::timestamp_to_chrono(t)
                    .ok_or_else(|| RequestError::invalid(format!("{field}.{name}"), "not a valid timestamp"))
            })
            .transpose()
    };
    let start_time = time(wire.start_time.as_ref(), "start_time")?;
    let end_time = time(wire.end_time.as_ref(), "end_time")?;
    if let (Some(start), Some(end)) = (start_time, end_time)
        && end <= start
    {
        return Err(RequestError::invalid(
            format!("{field}.end_time"),
            format!(
                "{} is not after start_time {}",
                end.to_rfc3339(),
                start.to_rfc3339()
            ),
        ));
    }
    let enum_filter = |value: i32, name: &str, known: Option<&str>, prefix: &str| match known {
        None => Err(RequestError::invalid(
            format!("{field}.{name}"),
            format!("unknown value {value}"),
        )),
        Some(_) if value == 0 => Ok(None),
        Some(wire_name) => Ok(Some(stored_name(wire_name, prefix))),
    };
    let statement_class = enum_filter(
        wire.statement_class,
        "statement_class",
        pb::StatementClass::try_from(wire.statement_class)
            .ok()
            .map(|c| c.as_str_name()),
        "STATEMENT_CLASS_",
    )?;
    let status = enum_filter(
        wire.status,
        "status",
        pb::ExecutionStatus::try_from(wire.status)
            .ok()
            .map(|c| c.as_str_name()),
        "EXECUTION_STATUS_",
    )?;
    let kind = enum_filter(
        wire.kind,
        "kind",
        pb::RecordKind::try_from(wire.kind).ok().map(|c| c.as_str_name()),
        "RECORD_KIND_",
    )?;
    let api_key_id = match wire.api_key_id.as_str() {
        "" => None,
        text => Some(parse_uuid(text, &format!("{field}.api_key_id"))?),
    };
    Ok(Filter {
        database: non_empty(&wire.database),
        cloud: non_empty(&wire.cloud),
        username: non_empty(&wire.username.to_lowercase()),
        success: wire.success,
        statement_class,
        start_time,
        end_time,
        query_contains: non_empty(&wire.query_contains),
        status,
        kind,
        api_key_id,
        fingerprint: non_empty(&wire.fingerprint),
    })
}

fn parse_uuid(text: &str, field: &str) -> Result<Uuid, RequestError> {
    Uuid::parse_str(text).map_err(|_| RequestError::invalid(field, format!("{text:?} is not a UUID")))
}

/// A page token: where the page ended and a digest of the filter it was
/// made for, so a token is never applied to another filter by mistake.
fn encode_page_token(cursor: PageCursor, filter_digest: &str) -> String {
    let text = format!(
        "v1.{}.{}.{filter_digest}",
        cursor.started_at.timestamp_micros(),
        cursor.id.simple()
    );
    URL_SAFE_NO_PAD.encode(text)
}

fn decode_page_token(token: &str, filter_digest: &str) -> Result<PageCursor, RequestError> {
    let invalid = |why: &str| RequestError::invalid("page_token", why);
    let bytes = URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| invalid("not a token from a previous response"))?;
    let text = String::from_utf8(bytes).map_err(|_| invalid("not a token from a previous response"))?;
    let parts: Vec<&str> = text.split('.').collect();
    let [version, micros, id, digest] = parts[..] else {
        return Err(invalid("not a token from a previous response"));
    };
    if version != "v1" {
        return Err(invalid("not a token from a previous response"));
    }
    if digest != filter_digest {
        return Err(invalid("the token was made for a different filter"));
    }
    let started_at = micros
        .parse::<i64>()
        .ok()
        .and_then(DateTime::from_timestamp_micros)
        .ok_or_else(|| invalid("not a token from a previous response"))?;
    let id = Uuid::parse_str(id).map_err(|_| invalid("not a token from a previous response"))?;
    Ok(PageCursor { started_at, id })
}

fn filter_digest(filter: Option<&pb::ExecutionFilter>) -> String {
    let encoded = filter.map(|f| f.encode_to_vec()).unwrap_or_default();
    crate::auth::credentials::hex_sha256(&encoded)[..16].to_owned()
}

fn wire_link(link: Link) -> pb::ChainLink {
    pb::ChainLink {
        sequence: u64::try_from(link.sequence).unwrap_or(0),
        hash: link.hash,
        prev_hash: link.prev_hash,
    }
}

fn wire_checkpoint(checkpoint: &Checkpoint) -> pb::ChainCheckpoint {
    let unsigned = |n: i64| u64::try_from(n).unwrap_or(0);
    pb::ChainCheckpoint {
        head_sequence: unsigned(checkpoint.head_sequence),
        head_hash: checkpoint.head_hash.clone(),
        anchor_sequence: unsigned(checkpoint.anchor_sequence),
        anchor_hash: checkpoint.anchor_hash.clone(),
        keyed_since: unsigned(checkpoint.keyed_since),
        created_at: Some(convert::timestamp(checkpoint.created_at)),
        key_id: checkpoint.key_id.clone(),
        signature: checkpoint.signature.clone(),
        signed_text: checkpoint.signed_text(),
    }
}

/// A checkpoint from the wire, its fields checked and its signature
/// verified with the configured keys; errors name the field under
/// `checkpoint`.
fn checkpoint_from_wire(
    wire: &pb::ChainCheckpoint,
    keys: &pgfleet_engine::audit::keys::ChainKeys,
) -> Result<Checkpoint, RequestError> {
    let field = |name: &str| format!("checkpoint.{name}");
    let sequence = |value: u64, name: &str| {
        i64::try_from(value).map_err(|_| RequestError::invalid(field(name), "out of range"))
    };
    let created_at = wire
        .created_at
        .as_ref()
        .ok_or_else(|| RequestError::invalid(field("created_at"), "required"))
        .and_then(|at| {
            convert::timestamp_to_chrono(at)
                .ok_or_else(|| RequestError::invalid(field("created_at"), "not a valid timestamp"))
        })?;
    let checkpoint = Checkpoint {
        head_sequence: sequence(wire.head_sequence, "head_sequence")?,
        head_hash: wire.head_hash.clone(),
        anchor_sequence: sequence(wire.anchor_sequence, "anchor_sequence")?,
        anchor_hash: wire.anchor_hash.clone(),
        keyed_since: sequence(wire.keyed_since, "keyed_since")?,
        created_at,
        key_id: wire.key_id.clone(),
        signature: wire.signature.clone(),
    };
    if !wire.signed_text.is_empty() && wire.signed_text != checkpoint.signed_text() {
        return Err(RequestError::invalid(
            field("signed_text"),
            "differs from the text the checkpoint's fields make",
        ));
    }
    if keys.current().is_none() {
        return Err(RequestError::FailedPrecondition(
            "no audit chain key is configured: a checkpoint cannot be verified".to_owned(),
        ));
    }
    match checkpoint.verify(keys) {
        Ok(_) => Ok(checkpoint),
        Err(rejection @ CheckpointRejection::UnknownKey(_)) => {
            Err(RequestError::invalid(field("key_id"), rejection.to_string()))
        }
        Err(rejection @ CheckpointRejection::BadSignature(_)) => {
            Err(RequestError::invalid(field("signature"), rejection.to_string()))
        }
    }
}

fn wire_warning(warning: ChainWarning) -> pb::ChainWarning {
    let kind = match warning.kind {
        WarningKind::AnchorWithinRetention => pb::ChainWarningKind::AnchorWithinRetention,
        WarningKind::StaleRunning => pb::ChainWarningKind::StaleRunning,
        WarningKind::Unkeyed => pb::ChainWarningKind::Unkeyed,
    };
    pb::ChainWarning {
        kind: kind.into(),
        message: warning.message,
        execution_id: warning.execution_id.map(|id| id.to_string()).unwrap_or_default(),
    }
}

fn wire_verification(verification: Verification, checkpoint: Option<&Checkpoint>) -> pb::VerifyChainResponse {
    let unsigned = |n: i64| u64::try_from(n).unwrap_or(0);
    let ok = verification.ok();
    let checkpoint_check = verification.checkpoint.map(|check| {
        let (comparison, reason) = match check {
            CheckpointCheck::Matched => (pb::CheckpointComparison::Matched, String::new()),
            CheckpointCheck::PastRetention => (pb::CheckpointComparison::PastRetention, String::new()),
            CheckpointCheck::Mismatch(reason) => (pb::CheckpointComparison::Mismatch, reason),
        };
        pb::CheckpointCheck {
            comparison: comparison.into(),
            reason,
        }
    });
    pb::VerifyChainResponse {
        ok,
        records_checked: verification.records_checked,
        first_broken: verification.first_break.map(|broken| pb::ChainBreak {
            sequence: unsigned(broken.sequence),
            execution_id: broken.execution_id.map(|id| id.to_string()).unwrap_or_default(),
            reason: broken.reason,
            expected_hash: broken.expected_hash,
            stored_hash: broken.stored_hash,
        }),
        anchor: verification.anchor.map(|anchor| pb::ChainAnchor {
            sequence: unsigned(anchor.sequence),
            hash: anchor.hash,
            updated_at: anchor.updated_at.map(convert::timestamp),
            newest_deleted_started_at: anchor.newest_deleted_started_at.map(convert::timestamp),
        }),
        last: verification.last.map(wire_link),
        keyed: verification.keyed,
        head: Some(pb::ChainLink {
            sequence: unsigned(verification.head.0),
            hash: verification.head.1,
            prev_hash: String::new(),
        }),
        keyed_since: verification.keyed_since.map_or(0, unsigned),
        unkeyed_links_checked: verification.unkeyed_links_checked,
        key_ids: verification.key_ids.into_iter().collect(),
        executions_checked: verification.executions_checked,
        checkpoint_check,
        warnings: verification.warnings.into_iter().map(wire_warning).collect(),
        checkpoint: checkpoint.map(wire_checkpoint),
    }
}

fn wire_target(target: pgfleet_engine::audit::RecordedTarget) -> pb::Target {
    pb::Target {
        cloud: target.cloud,
        database: target.database,
    }
}

fn wire_outcome(outcome: RecordedOutcome) -> pb::TargetOutcome {
    let error = outcome.error.as_ref().map(convert::recorded_error);
    pb::TargetOutcome {
        target: Some(wire_target(outcome.target)),
        success: outcome.success,
        command_tags: outcome.command_tags,
        rows_affected: outcome.rows_affected,
        duration: Some(convert::duration(std::time::Duration::from_micros(
            outcome.duration_micros,
        ))),
        error,
        outcome_unknown: outcome.outcome_unknown,
        failed_statement_index: outcome.failed_statement_index,
        // Only GetExecution reads the branches (`with_atomic_phases`).
        atomic_phase: pb::AtomicPhase::Unspecified.into(),
    }
}

/// Sets each outcome's phase from the execution's atomic branches (none for
/// an execution that was not atomic), as recovery last left them.
fn with_atomic_phases(record: &mut pb::ExecutionRecord, branches: &[atomic::Branch]) {
    for branch in branches {
        let phase = match branch.phase {
            atomic::Phase::NotPrepared => pb::AtomicPhase::NotPrepared,
            atomic::Phase::RolledBack => pb::AtomicPhase::RolledBack,
            atomic::Phase::Committed => pb::AtomicPhase::Committed,
            atomic::Phase::InDoubt => pb::AtomicPhase::InDoubt,
        };
        let same = |target: &Option<pb::Target>| {
            target
                .as_ref()
                .is_some_and(|t| t.cloud == branch.target.cloud && t.database == branch.target.database)
        };
        match record.outcomes.iter_mut().find(|o| same(&o.target)) {
            Some(outcome) => outcome.atomic_phase = phase.into(),
            // A RUNNING record whose server died has no outcomes yet; the
            // branch still says where that target's transaction is.
            None => record.outcomes.push(pb::TargetOutcome {
                target: Some(wire_target(pgfleet_engine::audit::RecordedTarget {
                    cloud: branch.target.cloud.clone(),
                    database: branch.target.database.clone(),
                })),
                success: branch.phase == atomic::Phase::Committed,
                outcome_unknown: branch.phase == atomic::Phase::InDoubt,
                atomic_phase: phase.into(),
                ..Default::default()
            }),
        }
    }
}

/// The wire form of a stored record.
fn wire_record(stored: StoredExecution) -> pb::ExecutionRecord {
    let opened = stored.opened().map(wire_link);
    let closed = stored.closed().map(wire_link);
    let row = stored.row;
    let principal = match row.actor_kind.as_str() {
        "user" => row.actor_username.map(pb::actor::Principal::Username),
        "api_key" => Some(pb::actor::Principal::ApiKey(pb::ApiKeyRef {
            id: row.actor_api_key_id.map(|id| id.to_string()).unwrap_or_default(),
            name: row.actor_api_key_name.unwrap_or_default(),
        })),
        _ => row.actor_system.map(pb::actor::Principal::System),
    };
    let enum_value = |stored: &str, prefix: &str, parse: fn(&str) -> Option<i32>| {
        parse(&wire_name(stored, prefix)).unwrap_or(0)
    };
    pb::ExecutionRecord {
        id: row.id.to_string(),
        actor: Some(pb::Actor {
            principal,
            role: Role::parse(&row.actor_role).map_or(0, |role| role_to_wire(role).into()),
        }),
        client_address: row.client_address,
        request_id: row.request_id,
        query: row.query,
        query_redacted: row.query_redacted,
        fingerprint: row.fingerprint,
        statement_classes: row
            .statement_classes
            .iter()
            .map(|class| {
                enum_value(class, "STATEMENT_CLASS_", |name| {
                    pb::StatementClass::from_str_name(name).map(Into::into)
                })
            })
            .collect(),
        database: row.database,
        targets: row.targets.0.into_iter().map(wire_target).collect(),
        scope: enum_value(&row.scope, "TARGET_SCOPE_", |name| {
            pb::TargetScope::from_str_name(name).map(Into::into)
        }),
        started_at: Some(convert::timestamp(row.started_at)),
        finished_at: row.finished_at.map(convert::timestamp),
        status: enum_value(&row.status, "EXECUTION_STATUS_", |name| {
            pb::ExecutionStatus::from_str_name(name).map(Into::into)
        }),
        success: row.success,
        confirmed_dangerous: row.confirmed_dangerous,
        findings: row
            .findings
            .0
            .into_iter()
            .map(|finding| pb::DangerFinding {
                code: finding.code,
                reason: finding.reason,
                statement_index: finding.statement_index,
            })
            .collect(),
        outcomes: row.outcomes.0.into_iter().map(wire_outcome).collect(),
        opened,
        kind: enum_value(&row.kind, "RECORD_KIND_", |name| {
            pb::RecordKind::from_str_name(name).map(Into::into)
        }),
        replication_job_id: row
            .replication_job_id
            .map(|id| id.to_string())
            .unwrap_or_default(),
        pg_schema: row.pg_schema,
        read_only: row.read_only,
        closed,
    }
}

#[tonic::async_trait]
impl history_service_server::HistoryService for HistoryService {
    type ExportExecutionsStream = ResponseStream<pb::ExportExecutionsResponse>;

    async fn list_executions(
        &self,
        request: Request<pb::ListExecutionsRequest>,
    ) -> Result<Response<pb::ListExecutionsResponse>, Status> {
        let identity = super::identity(&request)?.clone();
        let request = request.into_inner();
        let filter = filter_from_wire(request.filter.as_ref(), "filter").map_err(request_status)?;
        let page_size = match request.page_size {
            0 => DEFAULT_PAGE_SIZE,
            size @ 1..=MAX_PAGE_SIZE => size,
            other => {
                return Err(request_status(RequestError::invalid(
                    "page_size",
                    format!("{other} is outside 1..={MAX_PAGE_SIZE} (0 for the default {DEFAULT_PAGE_SIZE})"),
                )));
            }
        };
        if request.offset < 0 {
            return Err(request_status(RequestError::invalid(
                "offset",
                "must not be negative",
            )));
        }
        if request.offset > MAX_OFFSET {
            return Err(request_status(RequestError::invalid(
                "offset",
                format!(
                    "{} is above {MAX_OFFSET}; page further with page_token",
                    request.offset
                ),
            )));
        }
        let digest = filter_digest(request.filter.as_ref());
        let cursor = match request.page_token.as_str() {
            "" => None,
            _ if request.offset > 0 => {
                return Err(request_status(RequestError::invalid(
                    "offset",
                    "cannot be combined with page_token",
                )));
            }
            token => Some(decode_page_token(token, &digest).map_err(request_status)?),
        };
        // Non-MASTER callers only ever see their own records; a username filter
        // naming someone else then simply matches nothing.
        let visibility = Visibility::of(&identity);
        let pool = self.audit.pool();
        let limit = i64::from(page_size);
        // One more than asked tells whether another page exists.
        let ((mut records, cut_short), total) = tokio::try_join!(
            search::page(
                pool,
                visibility,
                &filter,
                cursor,
                i64::from(request.offset),
                limit + 1,
                self.page_bytes,
            ),
            search::count(pool, visibility, &filter),
        )
        .map_err(RequestError::from)
        .map_err(request_status)?;
        // A page cut short by bytes is shorter than asked, and has a next.
        let more = cut_short || i64::try_from(records.len()).unwrap_or(i64::MAX) > limit;
        records.truncate(usize::try_from(page_size).unwrap_or(0));
        let next_page_token = match records.last() {
            Some(last) if more => encode_page_token(
                PageCursor {
                    started_at: last.row.started_at,
                    id: last.row.id,
                },
                &digest,
            ),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListExecutionsResponse {
            executions: records.into_iter().map(wire_record).collect(),
            next_page_token,
            total_count: total,
        }))
    }

    async fn get_execution(
        &self,
        request: Request<pb::GetExecutionRequest>,
    ) -> Result<Response<pb::GetExecutionResponse>, Status> {
        let identity = super::identity(&request)?.clone();
        let id = parse_uuid(&request.get_ref().id, "id").map_err(request_status)?;
        let stored = search::get(self.audit.pool(), Visibility::of(&identity), id)
            .await
            .map_err(RequestError::from)
            .map_err(request_status)?
            .ok_or_else(|| RequestError::NotFound(format!("execution {id} not found")))
            .map_err(request_status)?;
        let branches = atomic::branches(self.audit.pool(), id)
            .await
            .map_err(RequestError::history_store)
            .map_err(request_status)?;
        let mut execution = wire_record(stored);
        with_atomic_phases(&mut execution, &branches);
        Ok(Response::new(pb::GetExecutionResponse {
            execution: Some(execution),
        }))
    }

    async fn export_executions(
        &self,
        request: Request<pb::ExportExecutionsRequest>,
    ) -> Result<Response<Self::ExportExecutionsStream>, Status> {
        let identity = super::identity(&request)?.clone();
        let request = request.into_inner();
        let filter = filter_from_wire(request.filter.as_ref(), "filter").map_err(request_status)?;
        let mut after = i64::try_from(request.after_sequence)
            .map_err(|_| RequestError::invalid("after_sequence", "out of range"))
            .map_err(request_status)?;
        // Non-MASTER callers only ever see their own records; a username filter
        // naming someone else then simply matches nothing.
        let visibility = Visibility::of(&identity);
        let pool = self.audit.pool().clone();
        // One batch in flight: the stream reads the next batch only when the
        // client has taken the previous one.
        let (sender, receiver) = mpsc::channel(usize::try_from(EXPORT_BATCH).unwrap_or(1));
        tokio::spawn(async move {
            loop {
                let batch = match search::export_batch(&pool, visibility, &filter, after, EXPORT_BATCH).await
                {
                    Ok(batch) => batch,
                    Err(error) => {
                        let _ = sender.send(Err(request_status(RequestError::from(error)))).await;
                        return;
                    }
                };
                let complete = i64::try_from(batch.len()).unwrap_or(i64::MAX) < EXPORT_BATCH;
                for stored in batch {
                    if let Some(opened) = stored.opened() {
                        after = opened.sequence;
                    }
                    let message = pb::ExportExecutionsResponse {
                        execution: Some(wire_record(stored)),
                    };
                    if sender.send(Ok(message)).await.is_err() {
                        return;
                    }
                }
                if complete {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }

    async fn verify_chain(
        &self,
        request: Request<pb::VerifyChainRequest>,
    ) -> Result<Response<pb::VerifyChainResponse>, Status> {
        let request = request.into_inner();
        let bound = |value: u64, field: &str| -> Result<Option<i64>, RequestError> {
            match value {
                0 => Ok(None),
                n => i64::try_from(n)
                    .map(Some)
                    .map_err(|_| RequestError::invalid(field, "out of range")),
            }
        };
        let from = bound(request.from_sequence, "from_sequence").map_err(request_status)?;
        let to = bound(request.to_sequence, "to_sequence").map_err(request_status)?;
        if let (Some(from), Some(to)) = (from, to)
            && to < from
        {
            return Err(request_status(RequestError::invalid(
                "to_sequence",
                format!("{to} is before from_sequence {from}"),
            )));
        }
        let given = request
            .checkpoint
            .as_ref()
            .map(|wire| checkpoint_from_wire(wire, self.audit.keys()))
            .transpose()
            .map_err(request_status)?;
        let verification = chain::verify(&self.audit, from, to, given.as_ref())
            .await
            .map_err(RequestError::from)
            .map_err(request_status)?;
        // A fresh checkpoint only of a head just verified whole; a head that
        // moved since the walk is checked again by `chain::checkpoint`.
        let fresh = if verification.ok() && verification.complete && verification.keyed {
            Some(
                chain::checkpoint(&self.audit)
                    .await
                    .map_err(RequestError::from)
                    .map_err(request_status)?,
            )
        } else {
            None
        };
        Ok(Response::new(wire_verification(verification, fresh.as_ref())))
    }

    async fn export_chain_checkpoint(
        &self,
        _request: Request<pb::ExportChainCheckpointRequest>,
    ) -> Result<Response<pb::ExportChainCheckpointResponse>, Status> {
        let checkpoint = chain::checkpoint(&self.audit)
            .await
            .map_err(RequestError::from)
            .map_err(request_status)?;
        let key = self
            .audit
            .keys()
            .find(&checkpoint.key_id)
            .ok_or_else(|| RequestError::Internal("the signing key vanished".to_owned()))
            .map_err(request_status)?;
        Ok(Response::new(pb::ExportChainCheckpointResponse {
            checkpoint: Some(wire_checkpoint(&checkpoint)),
            public_key: key.public_key().to_vec(),
            public_key_pem: key.public_key_pem(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip_and_are_bound_to_their_filter() {
        let cursor = PageCursor {
            started_at: DateTime::from_timestamp_micros(1_700_000_000_123_456).expect("valid"),
            id: Uuid::now_v7(),
        };
        let token = encode_page_token(cursor, "abc");
        assert_eq!(decode_page_token(&token, "abc").ok(), Some(cursor));
        let other = decode_page_token(&token, "abd").err().map(|e| e.to_string());
        assert_eq!(
            other.as_deref(),
            Some("page_token: the token was made for a different filter")
        );
        assert!(decode_page_token("garbage!", "abc").is_err());
    }

    #[test]
    fn inverted_date_ranges_name_the_field() {
        let wire = pb::ExecutionFilter {
            start_time: Some(prost_types::Timestamp {
                seconds: 100,
                nanos: 0,
            }),
            end_time: Some(prost_types::Timestamp {
                seconds: 50,
                nanos: 0,
            }),
            ..Default::default()
        };
        let error = filter_from_wire(Some(&wire), "filter")
            .err()
            .map(|e| e.to_string());
        assert!(
            error
                .as_deref()
                .is_some_and(|e| e.starts_with("filter.end_time:")),
            "{error:?}"
        );
    }
}
