//! A replication run: every table of a plan copied onto every target, the
//! run on the audit trail, and its progress as one stream of events.
//!
//! One task per target copies the tables in turn ([`super::copy`]), so a
//! failing target never stops the others. A recorder task sits between the
//! targets and the caller: it notes each target's outcome on the record as
//! soon as the target is done, closes the record when every target has
//! ended, and only then sends [`RunEvent::Finished`], so the caller's last
//! event follows the closed record. The recorder keeps draining when the
//! caller is gone, so the copies stop on the cancel token (at a batch
//! boundary) and their outcomes are still recorded.
//!
//! ReplicateTable builds a plan with [`Start::TargetMax`] or
//! [`Start::Beginning`]; stored jobs ([`super::runner`]) build one from
//! their saved positions ([`Start::After`]) and pass a [`JobLedger`], which
//! the recorder tells of every committed batch (the position is saved after
//! the target committed it) and every finished (table, target), and which
//! releases the job's lock before the caller hears that the run finished.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use pgfleet_registry::{Registry, Target};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::Mode;
use super::copy::{self, CopyUpdate, Progress, ProgressSink, Start, TableOutcome, TablePlan, TableResult};
use super::state::{RunStore, StopReason, StoredOutcome};
use crate::Observer;
use crate::audit::{RecordedError, RecordedOutcome, RunningExecution};
use crate::query::audited::{recorded_error, recorded_target};
use crate::query::{FailureCode, TargetFailure};

/// Events buffered between the copies, the recorder and the caller; small,
/// so a slow caller holds the copies at their next batch.
const EVENT_BUFFER: usize = 16;

/// Everything a run copies.
#[derive(Debug)]
pub struct RunPlan {
    /// The stored job run; `None` for ReplicateTable.
    pub job_id: Option<Uuid>,
    pub mode: Mode,
    pub tables: Vec<TablePlan>,
    pub targets: Vec<Target>,
    /// Where each table starts on each target: `starts[table][target]`;
    /// missing entries start at [`Start::Beginning`].
    pub starts: Vec<Vec<Start>>,
}

/// How a whole run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunOutcome {
    Succeeded,
    /// Some (table, target) pairs failed or were cancelled, others succeeded.
    Partial,
    Failed,
    Cancelled,
}

/// One event of a run, in order: `Started` first, `Finished` last.
#[derive(Debug)]
pub enum RunEvent {
    Started {
        run_id: Uuid,
        job_id: Option<Uuid>,
        tables: Vec<String>,
        targets: Vec<Target>,
        mode: Mode,
        started_at: DateTime<Utc>,
    },
    Progress {
        table: String,
        target: Target,
        progress: Progress,
    },
    /// A (table, target) pair failed; its `TableFinished` follows.
    Failed {
        table: String,
        target: Target,
        error: Box<TargetFailure>,
    },
    TableFinished {
        table: String,
        target: Target,
        result: Box<TableResult>,
    },
    Finished {
        outcome: RunOutcome,
        finished_at: DateTime<Utc>,
        elapsed: Duration,
        /// Over every table and target (each target reads its own pages).
        rows_read: u64,
        rows_written: u64,
    },
}

/// Longest wait for one bookkeeping write of a stored job's run; a slower
/// history store only leaves positions behind (re-copied next time).
const LEDGER_TIMEOUT: Duration = Duration::from_secs(10);

/// A stored job's run as kept in the history store while it goes.
#[derive(Debug)]
pub struct JobLedger {
    runs: RunStore,
    job_id: Uuid,
    run_id: Uuid,
    /// Full refresh restarts from the beginning every run: no positions.
    incremental: bool,
    /// Fired when the run has ended: the lock holder then releases the lock.
    done: CancellationToken,
    holder: JoinHandle<Option<StopReason>>,
}

impl JobLedger {
    pub fn new(
        runs: RunStore,
        job_id: Uuid,
        run_id: Uuid,
        mode: Mode,
        done: CancellationToken,
        holder: JoinHandle<Option<StopReason>>,
    ) -> Self {
        Self {
            runs,
            job_id,
            run_id,
            incremental: mode == Mode::Incremental,
            done,
            holder,
        }
    }

    /// Runs one bookkeeping write; a failure is logged, never fatal.
    async fn write(&self, what: &str, write: impl Future<Output = Result<(), sqlx::Error>>) {
        let failure = match tokio::time::timeout(LEDGER_TIMEOUT, write).await {
            Ok(Ok(())) => return,
            Ok(Err(error)) => error.to_string(),
            Err(_) => format!("no answer within {LEDGER_TIMEOUT:?}"),
        };
        tracing::warn!(job = %self.job_id, run = %self.run_id, error = %failure, "cannot save {what}");
    }

    /// A batch committed on the target.
    async fn batch_committed(&self, table: &str, target: &Target, progress: &Progress) {
        if let (true, Some(position)) = (self.incremental, &progress.position) {
            let save = self.runs.save_position(
                self.job_id,
                table,
                target,
                position,
                progress.counters.rows_written,
            );
            self.write("a replication position", save).await;
        }
    }

    async fn pair_finished(&self, table: &str, target: &Target, result: &TableResult) {
        let (outcome, error) = match &result.outcome {
            TableOutcome::Succeeded => (StoredOutcome::Succeeded, None),
            TableOutcome::Failed(error) => (StoredOutcome::Failed, Some(recorded_error(error))),
            TableOutcome::Cancelled => (StoredOutcome::Cancelled, None),
        };
        let save = self.runs.pair_finished(
            self.job_id,
            self.run_id,
            table,
            target,
            outcome,
            result.counters.rows_written,
            error.as_ref(),
        );
        self.write("a replication outcome", save).await;
    }

    /// Saves the run's outcome and releases the job's lock.
    async fn finish(self, outcome: RunOutcome) {
        let stored = match outcome {
            RunOutcome::Succeeded => StoredOutcome::Succeeded,
            RunOutcome::Partial => StoredOutcome::Partial,
            RunOutcome::Failed => StoredOutcome::Failed,
            RunOutcome::Cancelled => StoredOutcome::Cancelled,
        };
        self.write(
            "a replication run's outcome",
            self.runs.run_finished(self.job_id, self.run_id, stored),
        )
        .await;
        self.done.cancel();
        match self.holder.await {
            Ok(Some(reason)) => {
                tracing::info!(job = %self.job_id, run = %self.run_id, ?reason, "replication run stopped early");
            }
            Ok(None) => {}
            Err(error) => tracing::warn!(job = %self.job_id, %error, "replication lock holder failed"),
        }
    }
}

/// Starts `plan` under its opened record and returns its events. The
/// copies stop at their next batch boundary once `cancel` fires. A stored
/// job's run passes its `ledger`. Committed rows are reported to `observer`.
pub fn start(
    registry: Arc<Registry>,
    plan: Arc<RunPlan>,
    execution: RunningExecution,
    cancel: CancellationToken,
    ledger: Option<JobLedger>,
    observer: Arc<dyn Observer>,
) -> mpsc::Receiver<RunEvent> {
    let (copies, updates) = mpsc::channel(EVENT_BUFFER);
    for target_index in 0..plan.targets.len() {
        let registry = Arc::clone(&registry);
        let plan = Arc::clone(&plan);
        let cancel = cancel.clone();
        let sender = copies.clone();
        // In the caller's span (the RunJob or ReplicateTable call), so the
        // copies' log lines keep its request id.
        tokio::spawn(tracing::Instrument::in_current_span(async move {
            let Some(target) = plan.targets.get(target_index) else {
                return;
            };
            for (table_index, table) in plan.tables.iter().enumerate() {
                let start = plan
                    .starts
                    .get(table_index)
                    .and_then(|starts| starts.get(target_index))
                    .cloned()
                    .unwrap_or(Start::Beginning);
                let sink = ProgressSink {
                    table: table_index,
                    target: target_index,
                    sender: sender.clone(),
                };
                let result = copy::copy_table(&registry, table, target, start, &sink, &cancel).await;
                sink.send(CopyUpdate::Finished(Box::new(result))).await;
            }
        }));
    }
    drop(copies);
    let (sender, events) = mpsc::channel(EVENT_BUFFER);
    let rows = RowCounter::new(&plan, observer);
    tokio::spawn(tracing::Instrument::in_current_span(record(
        plan, execution, updates, sender, cancel, ledger, rows,
    )));
    events
}

/// The job name one-shot `ReplicateTable` copies are reported under
/// (stored jobs use their id).
pub const ADHOC_JOB: &str = "replicate_table";

/// Reports committed rows to the observer as the batches commit: progress
/// reports carry running totals per (table, target), the counter takes the
/// difference.
struct RowCounter {
    observer: Arc<dyn Observer>,
    /// The `replication_job` label: the job's id, or one-shot copies'.
    job: String,
    targets: usize,
    /// Rows already counted, per `table * targets + target`.
    counted: Vec<u64>,
}

impl RowCounter {
    fn new(plan: &RunPlan, observer: Arc<dyn Observer>) -> Self {
        Self {
            observer,
            job: plan
                .job_id
                .map_or_else(|| ADHOC_JOB.to_owned(), |id| id.to_string()),
            targets: plan.targets.len(),
            counted: vec![0; plan.tables.len() * plan.targets.len()],
        }
    }

    fn written(&mut self, table_index: usize, table: &str, target_index: usize, target: &Target, total: u64) {
        let Some(counted) = self.counted.get_mut(table_index * self.targets + target_index) else {
            return;
        };
        let new = total.saturating_sub(*counted);
        *counted = (*counted).max(total);
        if new > 0 {
            self.observer.replication_rows(&self.job, table, target, new);
        }
    }
}

/// What the recorder knows about one target.
#[derive(Default)]
struct TargetLog {
    results: Vec<(String, TableResult)>,
    outcome: Option<RecordedOutcome>,
}

async fn record(
    plan: Arc<RunPlan>,
    execution: RunningExecution,
    mut updates: mpsc::Receiver<copy::CopyEvent>,
    sender: mpsc::Sender<RunEvent>,
    cancel: CancellationToken,
    ledger: Option<JobLedger>,
    mut rows: RowCounter,
) {
    let started = Instant::now();
    let mut caller_gone = false;
    let mut forward = async |event: RunEvent| {
        if !caller_gone && sender.send(event).await.is_err() {
            // Nobody listens: stop the copies at their next batch.
            caller_gone = true;
            cancel.cancel();
        }
    };
    let table_names: Vec<String> = plan.tables.iter().map(|t| t.table().to_owned()).collect();
    forward(RunEvent::Started {
        run_id: execution.id(),
        job_id: plan.job_id,
        tables: table_names.clone(),
        targets: plan.targets.clone(),
        mode: plan.mode,
        started_at: Utc::now(),
    })
    .await;
    let mut logs: Vec<TargetLog> = plan.targets.iter().map(|_| TargetLog::default()).collect();
    let mut rows_read = 0u64;
    let mut rows_written = 0u64;
    let mut succeeded = 0usize;
    let mut cancelled = 0usize;
    while let Some(event) = updates.recv().await {
        let (Some(table), Some(target)) = (table_names.get(event.table), plan.targets.get(event.target))
        else {
            continue;
        };
        match event.update {
            CopyUpdate::Progress(progress) => {
                rows.written(
                    event.table,
                    table,
                    event.target,
                    target,
                    progress.counters.rows_written,
                );
                if let Some(ledger) = &ledger {
                    ledger.batch_committed(table, target, &progress).await;
                }
                forward(RunEvent::Progress {
                    table: table.clone(),
                    target: target.clone(),
                    progress,
                })
                .await;
            }
            CopyUpdate::Finished(result) => {
                rows.written(
                    event.table,
                    table,
                    event.target,
                    target,
                    result.counters.rows_written,
                );
                rows_read += result.counters.rows_read;
                rows_written += result.counters.rows_written;
                match &result.outcome {
                    TableOutcome::Succeeded => succeeded += 1,
                    TableOutcome::Cancelled => cancelled += 1,
                    TableOutcome::Failed(error) => {
                        forward(RunEvent::Failed {
                            table: table.clone(),
                            target: target.clone(),
                            error: error.clone(),
                        })
                        .await;
                    }
                }
                if let Some(ledger) = &ledger {
                    ledger.pair_finished(table, target, &result).await;
                }
                if let Some(log) = logs.get_mut(event.target) {
                    log.results.push((table.clone(), result.as_ref().clone()));
                    if log.results.len() == plan.tables.len() {
                        let recorded = recorded_outcome(target, &log.results);
                        execution.add_outcome(&recorded).await;
                        log.outcome = Some(recorded);
                    }
                }
                forward(RunEvent::TableFinished {
                    table: table.clone(),
                    target: target.clone(),
                    result,
                })
                .await;
            }
        }
    }
    // Targets whose task ended early (a panic) are recorded as unknown by
    // `finish`.
    let outcomes = logs.into_iter().filter_map(|log| log.outcome).collect();
    execution.finish(outcomes).await;
    let total = plan.tables.len() * plan.targets.len();
    let outcome = if succeeded == total {
        RunOutcome::Succeeded
    } else if cancelled > 0 {
        // Only a cancelled call (or shutdown) stops copies early.
        RunOutcome::Cancelled
    } else if succeeded == 0 {
        RunOutcome::Failed
    } else {
        RunOutcome::Partial
    };
    // Before the caller hears of the end: a RunJob right after it must find
    // the lock free.
    if let Some(ledger) = ledger {
        ledger.finish(outcome).await;
    }
    forward(RunEvent::Finished {
        outcome,
        finished_at: Utc::now(),
        elapsed: started.elapsed(),
        rows_read,
        rows_written,
    })
    .await;
}

/// A target's audit outcome from its tables: rows written as
/// `rows_affected`, one summary per table as its "command tags", the first
/// failure as its error.
fn recorded_outcome(target: &Target, results: &[(String, TableResult)]) -> RecordedOutcome {
    let mut error = None;
    let mut command_tags = Vec::with_capacity(results.len());
    let mut rows_affected = 0u64;
    let mut duration = Duration::ZERO;
    for (table, result) in results {
        let counters = result.counters;
        rows_affected += counters.rows_written;
        duration += result.elapsed;
        let ended = match &result.outcome {
            TableOutcome::Succeeded => "copied",
            TableOutcome::Failed(failure) => {
                error.get_or_insert_with(|| recorded_error(failure));
                "failed"
            }
            TableOutcome::Cancelled => {
                error.get_or_insert_with(|| RecordedError {
                    code: FailureCode::Cancelled.as_str().to_owned(),
                    message: copy::CopyError::Cancelled.to_string(),
                    ..RecordedError::default()
                });
                "cancelled"
            }
        };
        command_tags.push(format!(
            "REPLICATE {table} {ended}: {} read, {} written, {} deleted, {} batches",
            counters.rows_read, counters.rows_written, counters.rows_deleted, counters.batches
        ));
    }
    RecordedOutcome {
        target: recorded_target(target),
        success: error.is_none(),
        command_tags,
        rows_affected,
        duration_micros: u64::try_from(duration.as_micros()).unwrap_or(u64::MAX),
        error,
        outcome_unknown: false,
        failed_statement_index: None,
        replica: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::PostgresError;
    use crate::replication::copy::Counters;

    fn result(outcome: TableOutcome, written: u64) -> TableResult {
        TableResult {
            outcome,
            counters: Counters {
                rows_read: written,
                rows_written: written,
                rows_deleted: 1,
                batches: 2,
            },
            elapsed: Duration::from_millis(5),
            watermark: None,
            position: None,
        }
    }

    #[test]
    fn a_target_outcome_sums_its_tables_and_keeps_the_first_error() {
        let target = Target::new("gcp", "app");
        let failure = TargetFailure {
            code: FailureCode::Aborted,
            message: "writing public.b to gcp/app failed".to_owned(),
            postgres: Some(PostgresError {
                sqlstate: "23514".to_owned(),
                ..Default::default()
            }),
        };
        let outcome = recorded_outcome(
            &target,
            &[
                ("public.a".to_owned(), result(TableOutcome::Succeeded, 10)),
                (
                    "public.b".to_owned(),
                    result(TableOutcome::Failed(Box::new(failure)), 3),
                ),
            ],
        );
        assert!(!outcome.success);
        assert_eq!(outcome.rows_affected, 13);
        let error = outcome.error.unwrap_or_default();
        assert_eq!(
            (error.code.as_str(), error.sqlstate.as_str()),
            ("ERROR_CODE_ABORTED", "23514")
        );
        assert_eq!(
            outcome.command_tags[0],
            "REPLICATE public.a copied: 10 read, 10 written, 1 deleted, 2 batches"
        );
        let fine = recorded_outcome(
            &target,
            &[("public.a".to_owned(), result(TableOutcome::Succeeded, 1))],
        );
        assert!(fine.success && fine.error.is_none());
    }
}
