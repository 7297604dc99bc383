//! Putting an execution on the audit trail: the record opened before the
//! targets start, and a recorder between the targets and the caller that
//! closes it with every target's outcome.
//!
//! The recorder is its own task: the record is closed even when the caller
//! is gone (client cancel, deadline), with the outcomes the cancelled
//! targets report.

use std::sync::Arc;

use pgfleet_sqlcheck::StatementClass;
use tokio::sync::mpsc;
use uuid::Uuid;

use super::failure::TargetFailure;
use super::plan::{ExecuteSpec, Plan, Scope};
use super::run::{StatementOutcome, TargetEvent, TargetOutcome};
use crate::audit::{
    Actor, Kind, NewExecution, RecordedError, RecordedFinding, RecordedOutcome, RecordedTarget,
    RunningExecution, TargetScope,
};
use crate::identity::Identity;

/// Where a request came from, for the record.
#[derive(Debug, Clone, Default)]
pub struct Origin {
    pub client_address: String,
    pub request_id: String,
}

/// True when `plan` must be on record before it runs: anything that is not
/// a plain read, and plain reads too when `audit.reads` is set.
pub fn must_record(plan: &Plan, record_reads: bool) -> bool {
    record_reads || plan.writes || plan.statements.iter().any(|s| s.class != StatementClass::Read)
}

/// The stored name of a statement class (`WRITE`).
pub(crate) fn class_name(class: StatementClass) -> &'static str {
    match class {
        StatementClass::Read => "READ",
        StatementClass::Write => "WRITE",
        StatementClass::Ddl => "DDL",
        StatementClass::TransactionControl => "TRANSACTION_CONTROL",
        StatementClass::Session => "SESSION",
        StatementClass::Utility => "UTILITY",
    }
}

pub fn recorded_target(target: &pgfleet_registry::Target) -> RecordedTarget {
    RecordedTarget {
        cloud: target.cloud.clone(),
        database: target.database.clone(),
    }
}

/// The record of `plan` as requested by `identity`.
pub fn new_execution(fields: &ExecuteSpec, plan: &Plan, identity: &Identity, origin: Origin) -> NewExecution {
    let mut statement_classes: Vec<String> = Vec::new();
    for statement in &plan.statements {
        let name = class_name(statement.class);
        if !statement_classes.iter().any(|known| known == name) {
            statement_classes.push(name.to_owned());
        }
    }
    NewExecution {
        id: Uuid::now_v7(),
        kind: Kind::Query,
        actor: Actor::of(identity),
        role: identity.role,
        client_address: origin.client_address,
        request_id: origin.request_id,
        query: plan
            .redacted_query
            .clone()
            .unwrap_or_else(|| fields.text().into_owned()),
        query_redacted: plan.redacted_query.is_some(),
        fingerprint: format!("{:016x}", plan.fingerprint),
        statement_classes,
        database: fields.database.clone(),
        pg_schema: fields.pg_schema.clone(),
        scope: match fields.scope {
            Scope::AllClouds => TargetScope::AllClouds,
            Scope::Cloud(_) => TargetScope::Cloud,
            Scope::Targets(_) => TargetScope::Targets,
        },
        targets: plan.targets.iter().map(recorded_target).collect(),
        read_only: plan.read_only,
        confirmed_dangerous: !plan.confirmed_findings.is_empty(),
        findings: plan
            .confirmed_findings
            .iter()
            .map(|finding| RecordedFinding {
                code: finding.code.clone(),
                reason: finding.reason.clone(),
                statement_index: finding.statement_index,
            })
            .collect(),
        replication_job_id: None,
    }
}

/// A target failure as recorded (SQLSTATE, detail, hint, position kept).
pub fn recorded_error(error: &TargetFailure) -> RecordedError {
    let postgres = error.postgres.clone().unwrap_or_default();
    RecordedError {
        code: error.code.as_str().to_owned(),
        message: error.message.clone(),
        sqlstate: postgres.sqlstate,
        detail: postgres.detail,
        hint: postgres.hint,
        position: postgres.position,
    }
}

/// What the recorder learns about one target.
#[derive(Default)]
pub(super) struct TargetLog {
    command_tags: Vec<String>,
    rows_affected: u64,
    outcome: Option<RecordedOutcome>,
}

impl TargetLog {
    pub(super) fn statement_done(&mut self, done: &StatementOutcome) {
        self.command_tags.push(done.command_tag.clone());
        self.rows_affected = self.rows_affected.saturating_add(done.rows_affected);
    }

    /// A command tag pgfleet ran itself (an atomic execution's
    /// `COMMIT PREPARED`…), after the statements'.
    pub(super) fn push_tag(&mut self, tag: &str) {
        self.command_tags.push(tag.to_owned());
    }

    pub(super) fn finish(&mut self, target: RecordedTarget, outcome: &TargetOutcome) -> RecordedOutcome {
        let recorded = RecordedOutcome {
            target,
            success: outcome.success,
            command_tags: std::mem::take(&mut self.command_tags),
            rows_affected: self.rows_affected,
            duration_micros: u64::try_from(outcome.duration.as_micros()).unwrap_or(u64::MAX),
            error: outcome.error.as_ref().map(recorded_error),
            outcome_unknown: outcome.outcome_unknown,
            failed_statement_index: outcome.failed_statement_index,
            replica: outcome.replica.clone(),
        };
        self.outcome = Some(recorded.clone());
        recorded
    }
}

/// Passes `upstream`'s events through unchanged (same bounded buffer, so
/// flow control still reaches PostgreSQL) while noting each target's
/// outcome, and closes `execution` when every target has ended.
pub fn record<R: Send + 'static>(
    execution: RunningExecution,
    plan: Arc<Plan>,
    mut upstream: mpsc::Receiver<(usize, TargetEvent<R>)>,
) -> mpsc::Receiver<(usize, TargetEvent<R>)> {
    let (sender, downstream) = mpsc::channel(upstream.max_capacity());
    // In the caller's span: the record's closing write belongs to the call.
    tokio::spawn(tracing::Instrument::in_current_span(async move {
        let mut logs: Vec<TargetLog> = plan.targets.iter().map(|_| TargetLog::default()).collect();
        let mut running = plan.targets.len();
        let mut caller_gone = false;
        while let Some((index, event)) = upstream.recv().await {
            if let Some(log) = logs.get_mut(index) {
                match &event {
                    TargetEvent::StatementDone(done) => log.statement_done(done),
                    TargetEvent::Finished(outcome) => {
                        let recorded = log.finish(recorded_target(&plan.targets[index]), outcome);
                        running = running.saturating_sub(1);
                        // The last one goes straight into the closing write
                        // below: writing it on its own first would only
                        // delay the answer.
                        if running > 0 {
                            execution.add_outcome(&recorded).await;
                        }
                    }
                    _ => {}
                }
            }
            // The caller may leave; the targets then stop on the cancel
            // token and their outcomes are still recorded here.
            if !caller_gone && sender.send((index, event)).await.is_err() {
                caller_gone = true;
            }
        }
        let outcomes = logs.into_iter().filter_map(|log| log.outcome).collect();
        execution.finish(outcomes).await;
    }));
    downstream
}
