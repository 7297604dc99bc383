//! Changing which server of a target is its primary: `PromoteReplica`, for a
//! cloud without an external failover manager.
//!
//! A promotion is refused unless confirmed, unless the replica is a standby
//! now, and while any other member of the target still answers as a primary
//! (two primaries would accept diverging writes: split brain). It is on
//! record (committed) before `pg_promote()` runs, like every write.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pgfleet_registry::{Member, Registry, Target};
use uuid::Uuid;

use crate::RequestError;
use crate::audit::{AuditLog, Kind, NewExecution, RecordedOutcome, TargetScope};
use crate::migrations::Caller;
use crate::query::audited::{recorded_error, recorded_target};
use crate::query::{FailureCode, TargetFailure};

/// Longest `pg_promote` wait a caller may ask for.
pub const MAX_PROMOTE_WAIT: Duration = Duration::from_secs(300);
/// `pg_promote`'s own default wait.
pub const DEFAULT_PROMOTE_WAIT: Duration = Duration::from_secs(60);

/// What to promote.
#[derive(Debug, Clone)]
pub struct PromoteSpec {
    pub target: Target,
    /// The configured name of the replica.
    pub replica: String,
    /// The caller confirms an irreversible change of primary.
    pub confirm: bool,
    /// How long `pg_promote` waits for the promotion to finish.
    pub wait: Duration,
}

/// A promotion that finished.
#[derive(Debug, Clone)]
pub struct Promoted {
    /// The audit record of the promotion.
    pub execution_id: Uuid,
    pub duration: Duration,
}

/// Promotes `spec.replica` of `spec.target` (see the module docs).
pub async fn promote_replica(
    registry: &Registry,
    audit: &Arc<AuditLog>,
    spec: &PromoteSpec,
    caller: &Caller,
) -> Result<Promoted, RequestError> {
    if !spec.confirm {
        return Err(RequestError::FailedPrecondition(
            "promoting a replica changes the target's primary for good: set confirm = true".to_owned(),
        ));
    }
    if spec.wait.is_zero() || spec.wait > MAX_PROMOTE_WAIT {
        return Err(RequestError::invalid("wait", "between 1 second and 5 minutes"));
    }
    let members = registry.members(&spec.target);
    if members.is_empty() {
        return Err(RequestError::NotFound(format!("no target {}", spec.target)));
    }
    let replica = Member::Replica(spec.replica.clone());
    if !members.contains(&replica) {
        return Err(RequestError::NotFound(format!(
            "{} has no replica {:?}",
            spec.target, spec.replica
        )));
    }
    let mut checkout = registry.acquire_member(&spec.target, &replica).await?;
    if !checkout.in_recovery().await.map_err(unavailable)? {
        return Err(RequestError::FailedPrecondition(format!(
            "{replica} of {} is already a primary",
            spec.target
        )));
    }
    refuse_a_second_primary(registry, &spec.target, &replica).await?;

    let query = format!(
        "-- pgfleet promote {replica} of {}\nSELECT pg_promote(true, {})",
        spec.target,
        spec.wait.as_secs()
    );
    let record = audit.open(new_execution(spec, caller, query)).await?.started();
    let execution_id = record.id();
    let started = Instant::now();
    let wait_seconds = i32::try_from(spec.wait.as_secs()).unwrap_or(i32::MAX);
    let promoted = sqlx::query_scalar::<_, bool>("SELECT pg_promote(true, $1)")
        .bind(wait_seconds)
        .fetch_one(checkout.connection_mut())
        .await;
    let failure = match &promoted {
        Ok(true) => None,
        Ok(false) => Some(TargetFailure::new(
            FailureCode::Unavailable,
            format!(
                "{replica} of {} did not finish promoting within {}s; GetHealth shows its role",
                spec.target,
                spec.wait.as_secs()
            ),
        )),
        Err(error) => Some(TargetFailure::from_sqlx(error)),
    };
    let duration = started.elapsed();
    record
        .finish(vec![RecordedOutcome {
            target: recorded_target(&spec.target),
            success: failure.is_none(),
            command_tags: vec!["SELECT 1".to_owned()],
            rows_affected: 0,
            duration_micros: u64::try_from(duration.as_micros()).unwrap_or(u64::MAX),
            error: failure.as_ref().map(recorded_error),
            outcome_unknown: false,
            failed_statement_index: failure.as_ref().map(|_| 0),
            replica: spec.replica.clone(),
        }])
        .await;
    match failure {
        None => Ok(Promoted {
            execution_id,
            duration,
        }),
        Some(failure) => Err(RequestError::Unavailable(failure.message)),
    }
}

/// Refuses while a member of `target` other than `replica` answers as a
/// primary. A member that does not answer is taken as gone: fencing it is
/// the caller's part (the confirmation says so).
async fn refuse_a_second_primary(
    registry: &Registry,
    target: &Target,
    replica: &Member,
) -> Result<(), RequestError> {
    for member in registry.members(target) {
        if member == *replica {
            continue;
        }
        let answer = match registry.acquire_member(target, &member).await {
            Ok(mut checkout) => checkout.in_recovery().await,
            Err(_) => continue,
        };
        if matches!(answer, Ok(false)) {
            return Err(RequestError::FailedPrecondition(format!(
                "{member} of {target} still answers as a primary: stop or fence it first \
                 (promoting now would leave two primaries)"
            )));
        }
    }
    Ok(())
}

/// A role check's failure: the server stopped answering.
fn unavailable(error: sqlx::Error) -> RequestError {
    RequestError::Unavailable(error.to_string())
}

fn new_execution(spec: &PromoteSpec, caller: &Caller, query: String) -> NewExecution {
    NewExecution {
        id: Uuid::now_v7(),
        kind: Kind::ReplicaPromotion,
        actor: caller.actor.clone(),
        role: caller.role,
        client_address: caller.origin.client_address.clone(),
        request_id: caller.origin.request_id.clone(),
        query,
        query_redacted: false,
        fingerprint: String::new(),
        statement_classes: vec!["UTILITY".to_owned()],
        database: spec.target.database.clone(),
        pg_schema: String::new(),
        scope: TargetScope::Targets,
        targets: vec![recorded_target(&spec.target)],
        read_only: false,
        confirmed_dangerous: true,
        findings: Vec::new(),
        replication_job_id: None,
    }
}
