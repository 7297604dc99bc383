//! All-or-nothing fan-out writes: two-phase commit across the targets of
//! one execution (`COMMIT_MODE_ATOMIC`, docs/ATOMIC.md).
//!
//! 1. Refused before anything runs ([`check_plan`], [`check_targets`]): a
//!    plan that is not on record, not transactional or READ ONLY, and any
//!    target with `max_prepared_transactions = 0`.
//! 2. Every target runs the plan in its transaction and ends it with
//!    `PREPARE TRANSACTION '<gid>'` ([`super::gid`]) instead of `COMMIT`.
//! 3. Only when every target prepared (and the caller is still there) the
//!    coordinator inserts the decision COMMIT into
//!    `pgfleet.atomic_decisions`; the first decision inserted for an
//!    execution wins, so a recovery runner that already decided ABORT makes
//!    the coordinator roll back. Anything else decides ABORT.
//! 4. `COMMIT PREPARED` or `ROLLBACK PREPARED` on every target that
//!    prepared (or may have: PREPARE sent, connection lost); a target that
//!    cannot be reached keeps its prepared transaction, recorded IN_DOUBT
//!    in `pgfleet.atomic_branches`, for recovery (`crate::atomic_recovery`).
//!
//! The coordinator is the execution's recorder: targets' `Finished` events
//! are held until phase 2 is done, then sent with the final outcome (success
//! only once committed), and the audit record is closed with command tags
//! that name the phases (`PREPARE TRANSACTION`, `COMMIT PREPARED`,
//! `ROLLBACK PREPARED`). The caller sees rows as they come.

use std::sync::Arc;
use std::time::Duration;

use pgfleet_registry::{Registry, Route, Target};
use sqlx::{PgConnection, PgPool};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::audited::{TargetLog, recorded_target};
use super::failure::{FailureCode, TargetFailure};
use super::gid;
use super::plan::Plan;
use super::run::{Access, TargetEvent, TargetOutcome};
use super::{RowEncoder, start_targets};
use crate::audit::OpenExecution;
use crate::{Observer, RequestError};

/// The environment variable of the test-only pause points (see
/// [`pause_point`]); never set in production.
pub const FAILPOINT_ENV: &str = "PGFLEET_TEST_FAILPOINT";

/// How long pgfleet waits for its own statements on a target (the
/// `max_prepared_transactions` check, COMMIT/ROLLBACK PREPARED).
const TARGET_WORK_TIMEOUT: Duration = Duration::from_secs(10);

/// What was decided for an execution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Commit,
    Abort,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Commit => "COMMIT",
            Decision::Abort => "ABORT",
        }
    }

    fn parse(stored: &str) -> Option<Self> {
        match stored {
            "COMMIT" => Some(Decision::Commit),
            "ABORT" => Some(Decision::Abort),
            _ => None,
        }
    }
}

/// Where one target's prepared transaction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Failed or not reached before PREPARE: nothing kept.
    NotPrepared,
    RolledBack,
    Committed,
    /// Prepared (or maybe) and not finished: recovery will.
    InDoubt,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::NotPrepared => "NOT_PREPARED",
            Phase::RolledBack => "ROLLED_BACK",
            Phase::Committed => "COMMITTED",
            Phase::InDoubt => "IN_DOUBT",
        }
    }

    pub fn parse(stored: &str) -> Option<Self> {
        [
            Phase::NotPrepared,
            Phase::RolledBack,
            Phase::Committed,
            Phase::InDoubt,
        ]
        .into_iter()
        .find(|phase| phase.as_str() == stored)
    }
}

/// Refusals that need no connection: atomic mode is for writes on record
/// that run in a transaction block.
pub fn check_plan(plan: &Plan, on_record: bool) -> Result<(), RequestError> {
    let refuse = |why: &str| Err(RequestError::invalid("commit_mode", why));
    if !plan.transactional {
        return refuse(
            "COMMIT_MODE_ATOMIC needs a transaction to prepare; this statement cannot run in a transaction block",
        );
    }
    if plan.read_only || !on_record {
        return refuse("COMMIT_MODE_ATOMIC is for executions that write; this one only reads");
    }
    Ok(())
}

/// Refuses the execution unless every target allows prepared transactions
/// (`max_prepared_transactions > 0` on the member that takes writes), before
/// anything is on record or runs.
pub async fn check_targets(registry: &Registry, plan: &Plan) -> Result<(), RequestError> {
    let checks = plan.targets.iter().map(|target| async move {
        let setting = registry
            .read_only(target, Route::Write, TARGET_WORK_TIMEOUT, async |connection| {
                sqlx::query_scalar::<_, String>("SELECT current_setting('max_prepared_transactions')")
                    .fetch_one(connection)
                    .await
            })
            .await;
        match setting {
            Ok(value) if value.trim() == "0" => Err(RequestError::FailedPrecondition(format!(
                "{target}: max_prepared_transactions = 0, so this target cannot prepare transactions; \
                 COMMIT_MODE_ATOMIC needs max_prepared_transactions > 0 (a server restart setting)"
            ))),
            Ok(_) => Ok(()),
            Err(pgfleet_registry::ReadOnlyError::Acquire(error)) => Err(match RequestError::from(error) {
                RequestError::Unavailable(message) => RequestError::Unavailable(format!(
                    "{target}: cannot check max_prepared_transactions ({message}); nothing was run"
                )),
                other => other,
            }),
            Err(pgfleet_registry::ReadOnlyError::Query(error)) => Err(RequestError::Unavailable(format!(
                "{target}: cannot check max_prepared_transactions ({}); nothing was run",
                TargetFailure::from_sqlx(&error).message
            ))),
        }
    });
    for result in futures::future::join_all(checks).await {
        result?;
    }
    Ok(())
}

/// Inserts `decision` for `execution` unless one is there already, and
/// returns the decision that stands (the first inserted).
pub async fn decide(
    store: &PgPool,
    execution: Uuid,
    decision: Decision,
    decided_by: &str,
) -> Result<Decision, sqlx::Error> {
    let inserted: Option<String> = sqlx::query_scalar(
        "INSERT INTO pgfleet.atomic_decisions (execution_id, decision, decided_by) VALUES ($1, $2, $3) \
         ON CONFLICT (execution_id) DO NOTHING RETURNING decision",
    )
    .bind(execution)
    .bind(decision.as_str())
    .bind(decided_by)
    .fetch_optional(store)
    .await?;
    if inserted.is_some() {
        return Ok(decision);
    }
    // Another decision was there first (read in a new statement: the
    // conflicting insert may have committed after the first one's snapshot).
    match decision_of(store, execution).await? {
        Some(standing) => Ok(standing),
        None => Err(sqlx::Error::RowNotFound),
    }
}

/// The stored decision of `execution`, if any.
pub async fn decision_of(store: &PgPool, execution: Uuid) -> Result<Option<Decision>, sqlx::Error> {
    let stored: Option<String> =
        sqlx::query_scalar("SELECT decision FROM pgfleet.atomic_decisions WHERE execution_id = $1")
            .bind(execution)
            .fetch_optional(store)
            .await?;
    Ok(stored.as_deref().and_then(Decision::parse))
}

/// One target's branch as stored in `pgfleet.atomic_branches`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Branch {
    pub target_index: usize,
    pub target: Target,
    pub phase: Phase,
}

/// Writes (or moves) the phase of target `index` of `execution`;
/// `updated_at` moves only with the phase (the in-doubt age counts from it).
pub async fn store_branch(
    store: &PgPool,
    execution: Uuid,
    index: usize,
    target: &Target,
    phase: Phase,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO pgfleet.atomic_branches (execution_id, target_index, cloud, database, gid, phase) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (execution_id, target_index) \
         DO UPDATE SET phase = EXCLUDED.phase, updated_at = clock_timestamp() \
         WHERE atomic_branches.phase <> EXCLUDED.phase",
    )
    .bind(execution)
    .bind(i32::try_from(index).unwrap_or(i32::MAX))
    .bind(&target.cloud)
    .bind(&target.database)
    .bind(gid::gid(execution, index))
    .bind(phase.as_str())
    .execute(store)
    .await?;
    Ok(())
}

/// The stored branches of `execution`, by target index.
pub async fn branches(store: &PgPool, execution: Uuid) -> Result<Vec<Branch>, sqlx::Error> {
    let rows: Vec<(i32, String, String, String)> = sqlx::query_as(
        "SELECT target_index, cloud, database, phase FROM pgfleet.atomic_branches \
         WHERE execution_id = $1 ORDER BY target_index",
    )
    .bind(execution)
    .fetch_all(store)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(index, cloud, database, phase)| {
            Some(Branch {
                target_index: usize::try_from(index).ok()?,
                target: Target { cloud, database },
                phase: Phase::parse(&phase)?,
            })
        })
        .collect())
}

/// How finishing one prepared transaction went.
#[derive(Debug)]
pub enum Finished {
    /// COMMIT PREPARED or ROLLBACK PREPARED succeeded.
    Done,
    /// The target holds no prepared transaction of that gid.
    Missing,
    /// Not reached, or PostgreSQL refused: the branch stays in doubt.
    Failed(Box<TargetFailure>),
}

/// `COMMIT PREPARED` or `ROLLBACK PREPARED` of `execution`'s branch
/// `index` on `target`, bounded in time.
pub async fn finish_branch(
    registry: &Registry,
    target: &Target,
    execution: Uuid,
    index: usize,
    decision: Decision,
) -> Finished {
    let mut checkout = match registry.acquire(target, Route::Write).await {
        Ok(checkout) => checkout,
        Err(error) => {
            return Finished::Failed(Box::new(TargetFailure::new(
                FailureCode::Unavailable,
                error.to_string(),
            )));
        }
    };
    let finished = tokio::time::timeout(
        TARGET_WORK_TIMEOUT,
        finish_on(checkout.connection_mut(), &gid::gid(execution, index), decision),
    )
    .await;
    match finished {
        Ok(Ok(())) => Finished::Done,
        Ok(Err(error)) => {
            let failure = TargetFailure::from_sqlx(&error);
            // 42704 undefined_object: "prepared transaction … does not exist".
            if failure.sqlstate() == Some("42704") {
                Finished::Missing
            } else {
                if failure.code == FailureCode::Unavailable {
                    checkout.connection.close_on_drop();
                }
                Finished::Failed(Box::new(failure))
            }
        }
        Err(_) => {
            checkout.connection.close_on_drop();
            Finished::Failed(Box::new(TargetFailure::new(
                FailureCode::DeadlineExceeded,
                format!(
                    "{} PREPARED did not answer within {TARGET_WORK_TIMEOUT:?}",
                    decision.as_str()
                ),
            )))
        }
    }
}

async fn finish_on(connection: &mut PgConnection, gid: &str, decision: Decision) -> Result<(), sqlx::Error> {
    let verb = match decision {
        Decision::Commit => "COMMIT",
        Decision::Abort => "ROLLBACK",
    };
    // The gid is pgfleet's own (a UUID and an integer): nothing to quote.
    sqlx::query(sqlx::AssertSqlSafe(format!("{verb} PREPARED '{gid}'")))
        .execute(connection)
        .await?;
    Ok(())
}

/// Test-only pause points, named by [`FAILPOINT_ENV`]: `atomic-after-prepare`
/// (every target prepared, nothing decided) and `atomic-after-decision`
/// (COMMIT stored, nothing finished). The coordinator logs and waits there
/// forever, so a test can kill the process at a known point.
async fn pause_point(name: &str, execution: Uuid) {
    if std::env::var(FAILPOINT_ENV).is_ok_and(|value| value == name) {
        tracing::warn!(%execution, failpoint = name, "paused at a test failpoint");
        std::future::pending::<()>().await;
    }
}

/// Starts `plan` on every target as one atomic execution on record as
/// `record`; events arrive as from [`super::dispatch`], each target's
/// `Finished` once its transaction is committed, rolled back or in doubt.
/// `store` is the history store, where the decision and phases go.
pub fn dispatch<E: RowEncoder>(
    registry: Arc<Registry>,
    plan: Arc<Plan>,
    cancel: CancellationToken,
    observer: Arc<dyn Observer>,
    record: OpenExecution,
    store: PgPool,
) -> mpsc::Receiver<(usize, TargetEvent<E::Row>)> {
    let execution = record.started();
    let id = execution.id();
    let mut upstream = start_targets::<E>(
        Arc::clone(&registry),
        Arc::clone(&plan),
        cancel.clone(),
        observer,
        Access::Prepare(id),
    );
    let (sender, downstream) = mpsc::channel(upstream.max_capacity());
    tokio::spawn(tracing::Instrument::in_current_span(async move {
        let count = plan.targets.len();
        let mut logs: Vec<TargetLog> = (0..count).map(|_| TargetLog::default()).collect();
        let mut prepared: Vec<Option<TargetOutcome>> = vec![None; count];
        let mut caller_gone = false;
        while let Some((index, event)) = upstream.recv().await {
            let event = match event {
                TargetEvent::Finished(outcome) => {
                    if let Some(slot) = prepared.get_mut(index) {
                        *slot = Some(*outcome);
                    }
                    continue;
                }
                TargetEvent::StatementDone(done) => {
                    if let Some(log) = logs.get_mut(index) {
                        log.statement_done(&done);
                    }
                    TargetEvent::StatementDone(done)
                }
                other => other,
            };
            if !caller_gone && sender.send((index, event)).await.is_err() {
                caller_gone = true;
            }
        }
        let all_prepared = prepared.iter().all(|o| o.as_ref().is_some_and(|o| o.success));
        // Listed before anything is decided: should this process die now,
        // GetExecution and the in-doubt gauge show every prepared branch
        // until recovery finishes it (recovery also finds them unlisted).
        for (index, outcome) in prepared.iter().enumerate() {
            if outcome.as_ref().is_some_and(|o| o.success || o.outcome_unknown)
                && let Err(error) =
                    store_branch(&store, id, index, &plan.targets[index], Phase::InDoubt).await
            {
                tracing::warn!(execution_id = %id, %error, "cannot list a prepared branch");
            }
        }
        // The caller leaving before the decision aborts: nobody waits for it.
        let decision = if all_prepared && !cancel.is_cancelled() {
            pause_point("atomic-after-prepare", id).await;
            match decide(&store, id, Decision::Commit, "coordinator").await {
                Ok(decision) => Some(decision),
                Err(error) => {
                    // Did the insert commit? Not known: leave every branch
                    // prepared; recovery finishes them by what is stored.
                    tracing::error!(execution_id = %id, %error,
                        "cannot store the commit decision: the prepared transactions stay in doubt");
                    None
                }
            }
        } else {
            if let Err(error) = decide(&store, id, Decision::Abort, "coordinator").await {
                // Presumed abort: an execution without a decision is rolled
                // back by recovery once its record is closed.
                tracing::warn!(execution_id = %id, %error, "cannot store the abort decision");
            }
            Some(Decision::Abort)
        };
        if decision == Some(Decision::Commit) {
            pause_point("atomic-after-decision", id).await;
        }
        let finishing = prepared.into_iter().enumerate().map(|(index, outcome)| {
            let registry = Arc::clone(&registry);
            let plan = Arc::clone(&plan);
            let store = store.clone();
            async move {
                let target = &plan.targets[index];
                let outcome = outcome.unwrap_or_else(lost_outcome);
                let (phase, outcome) = second_phase(&registry, target, id, index, decision, outcome).await;
                if let Err(error) = store_branch(&store, id, index, target, phase).await {
                    tracing::warn!(execution_id = %id, %target, %error, "cannot store a branch's phase");
                }
                (phase, outcome)
            }
        });
        let finished = futures::future::join_all(finishing).await;
        let mut outcomes = Vec::with_capacity(count);
        for (index, ((phase, outcome), mut log)) in finished.into_iter().zip(logs).enumerate() {
            note_phase(&mut log, phase);
            let recorded = log.finish(recorded_target(&plan.targets[index]), &outcome);
            execution.add_outcome(&recorded).await;
            outcomes.push(recorded);
            if !caller_gone
                && sender
                    .send((index, TargetEvent::Finished(Box::new(outcome))))
                    .await
                    .is_err()
            {
                caller_gone = true;
            }
        }
        execution.finish(outcomes).await;
    }));
    downstream
}

/// The phases as PostgreSQL's own command tags, so the record says how the
/// target's transaction ended (an IN_DOUBT branch shows only its PREPARE).
fn note_phase(log: &mut TargetLog, phase: Phase) {
    if phase == Phase::NotPrepared {
        return;
    }
    log.push_tag("PREPARE TRANSACTION");
    match phase {
        Phase::Committed => log.push_tag("COMMIT PREPARED"),
        Phase::RolledBack => log.push_tag("ROLLBACK PREPARED"),
        Phase::NotPrepared | Phase::InDoubt => {}
    }
}

/// A target whose task ended without reporting (a bug): may have prepared.
fn lost_outcome() -> TargetOutcome {
    TargetOutcome {
        success: false,
        error: Some(TargetFailure::new(
            FailureCode::Internal,
            "the target's task ended without a result",
        )),
        duration: Duration::ZERO,
        failed_statement_index: None,
        outcome_unknown: true,
        replica: String::new(),
        skipped_replicas: Vec::new(),
        rows: 0,
    }
}

/// Applies `decision` to one target and says how its transaction ended,
/// with the outcome the caller and the record get.
async fn second_phase(
    registry: &Registry,
    target: &Target,
    execution: Uuid,
    index: usize,
    decision: Option<Decision>,
    mut outcome: TargetOutcome,
) -> (Phase, TargetOutcome) {
    // Prepared for sure, or PREPARE sent and the answer lost.
    let maybe_prepared = outcome.success || outcome.outcome_unknown;
    if !maybe_prepared {
        return (Phase::NotPrepared, outcome);
    }
    let Some(decision) = decision else {
        outcome.success = false;
        outcome.outcome_unknown = true;
        outcome.error = Some(TargetFailure::new(
            FailureCode::Unavailable,
            "prepared, but the commit decision could not be stored: the transaction stays prepared \
             until recovery finishes it by the stored decision",
        ));
        return (Phase::InDoubt, outcome);
    };
    let finished = finish_branch(registry, target, execution, index, decision).await;
    let prepared_for_sure = outcome.success;
    match (decision, finished) {
        (Decision::Commit, Finished::Done) => (Phase::Committed, outcome),
        // Only pgfleet finishes its gids, by the same decision: another
        // runner committed it first.
        (Decision::Commit, Finished::Missing) if prepared_for_sure => (Phase::Committed, outcome),
        (Decision::Abort, Finished::Done) => {
            outcome.success = false;
            outcome.outcome_unknown = false;
            if prepared_for_sure {
                outcome.error = Some(TargetFailure::new(
                    FailureCode::Aborted,
                    "prepared, then rolled back: another target failed (or the call ended) before the \
                     commit decision, so no target committed",
                ));
            }
            (Phase::RolledBack, outcome)
        }
        // The PREPARE whose answer was lost never took effect.
        (Decision::Abort, Finished::Missing) if !prepared_for_sure => {
            outcome.outcome_unknown = false;
            (Phase::NotPrepared, outcome)
        }
        (decision, Finished::Missing) => {
            outcome.success = false;
            outcome.outcome_unknown = true;
            outcome.error = Some(TargetFailure::new(
                FailureCode::DataLoss,
                format!(
                    "the prepared transaction was gone before {} PREPARED: it was finished outside pgfleet",
                    decision.as_str()
                ),
            ));
            (Phase::InDoubt, outcome)
        }
        (decision, Finished::Failed(failure)) => {
            outcome.success = false;
            outcome.outcome_unknown = true;
            outcome.error = Some(TargetFailure::new(
                failure.code,
                format!(
                    "decided {}, but {} PREPARED failed ({}): the transaction stays prepared on this target \
                     until recovery finishes it",
                    decision.as_str(),
                    decision.as_str(),
                    failure.message
                ),
            ));
            (Phase::InDoubt, outcome)
        }
    }
}
