//! Running one SQL text on many targets at once.
//!
//! - [`plan`]: request → checked [`Plan`] (targets, schema, timeout, roles,
//!   dangerous statements); everything refusable is refused before any
//!   connection is taken.
//! - [`run`]: one target: one connection, one transaction, one statement at
//!   a time through the extended protocol, events as they happen, the
//!   connection reset before it goes back.
//! - [`params`]: positional parameters and how they are bound.
//! - [`statements`]: a transaction given statement by statement, each with
//!   its own parameters, checked as one text.
//! - [`parser`]: the SQL check, on the blocking pool behind a bound.
//! - [`budget`]: byte limits on results, checked as each row arrives.
//! - [`values`]: result values to [`Cell`]s, rendered by PostgreSQL where
//!   psql's text is the faithful form; [`encode`]: the caller's
//!   [`RowEncoder`] turns them into its own rows.
//! - [`failure`]: why a target failed, PostgreSQL's fields kept.
//! - [`dispatch`] starts every target concurrently and merges their events
//!   into one bounded channel, so a slow consumer slows the reads. It is
//!   also the one place that decides a target's transaction mode: an
//!   execution without an open audit record runs `BEGIN READ ONLY`, whatever
//!   the caller's role and whatever the classifier said (fail closed: a
//!   classifier miss fails with SQLSTATE 25006 instead of writing unaudited).
//! - [`atomic`]: all-or-nothing writes across the targets (two-phase
//!   commit), on record like any write; [`gid`]: their prepared
//!   transactions' global ids.

pub mod atomic;
pub mod audited;
pub mod budget;
pub mod encode;
pub mod failure;
pub mod gid;
pub mod params;
pub mod parser;
pub mod plan;
pub mod run;
pub mod statements;
pub mod values;

use std::sync::Arc;

use pgfleet_registry::Registry;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::Observer;
use crate::audit::OpenExecution;

pub use encode::{Cell, CellRows, Column, RowEncoder};
pub use failure::{FailureCode, PostgresError, TargetFailure};
pub use params::{Param, ParamValue};
pub use plan::{ExecuteSpec, Finding, Plan, Scope};
use run::Access;
pub use run::{EventSink, StatementOutcome, TargetEvent, TargetOutcome};
pub use statements::StatementSpec;

/// Events buffered per target before its reads pause.
const EVENTS_PER_TARGET: usize = 4;

/// Starts `plan` on every target; events arrive tagged with the target's
/// index in `plan.targets`, each target ending with `Finished`, rows built
/// by `E`. Cancelling `cancel` cancels the running statements on their
/// servers; every target's outcome is reported to `observer`.
///
/// `record` is the execution's open audit record, if it is on record: only
/// then may the targets run read-write (and the events then pass through
/// the recorder, which closes the record). Without one every target runs
/// `BEGIN READ ONLY`; a plan that cannot run in a transaction block is
/// never run unrecorded.
///
/// Each target runs in a `target` span, a child of the caller's span: its
/// names and the statement fingerprint, never the text or parameters.
pub fn dispatch<E: RowEncoder>(
    registry: Arc<Registry>,
    plan: Arc<Plan>,
    cancel: CancellationToken,
    observer: Arc<dyn Observer>,
    record: Option<OpenExecution>,
) -> mpsc::Receiver<(usize, TargetEvent<E::Row>)> {
    let access = match &record {
        Some(_) if !plan.read_only => Access::ReadWrite,
        Some(_) => Access::ReadOnly,
        None if plan.transactional => Access::ReadOnly,
        // VACUUM, CREATE INDEX CONCURRENTLY…: no transaction to make READ
        // ONLY. Such statements are never reads, so they are always on
        // record; reaching here is a bug, and it fails closed.
        None => Access::Refused,
    };
    debug_assert!(
        access != Access::Refused,
        "a statement that cannot run in a transaction block reached dispatch without an audit record"
    );
    let events = start_targets::<E>(registry, Arc::clone(&plan), cancel, observer, access);
    match record {
        Some(open) => audited::record(open.started(), plan, events),
        None => events,
    }
}

/// Starts every target of `plan` with `access`; `atomic` uses it with
/// [`Access::Prepare`].
fn start_targets<E: RowEncoder>(
    registry: Arc<Registry>,
    plan: Arc<Plan>,
    cancel: CancellationToken,
    observer: Arc<dyn Observer>,
    access: Access,
) -> mpsc::Receiver<(usize, TargetEvent<E::Row>)> {
    let (sender, receiver) = mpsc::channel(EVENTS_PER_TARGET * plan.targets.len().max(1));
    for index in 0..plan.targets.len() {
        let registry = Arc::clone(&registry);
        let plan = Arc::clone(&plan);
        let cancel = cancel.clone();
        let sink = EventSink {
            index,
            sender: sender.clone(),
        };
        let observer = Arc::clone(&observer);
        let span = target_span(&plan, index);
        // Spawned, not polled by the caller: a target's cleanup (cancel on
        // the server, rollback, reset) runs even when the call is gone.
        // Inside the caller's span too, so its lines keep the request id
        // even when the filter drops the `target` span.
        tokio::spawn(
            async move {
                let target = &plan.targets[index];
                run::run_target::<E>(&registry, &plan, target, access, sink, cancel, observer.as_ref()).await;
            }
            .instrument(span)
            .in_current_span(),
        );
    }
    receiver
}

/// The span of one target of `plan`; `run::run_target` records its outcome.
fn target_span(plan: &Plan, index: usize) -> tracing::Span {
    let Some(target) = plan.targets.get(index) else {
        return tracing::Span::none();
    };
    tracing::info_span!(
        "target",
        otel.name = "query.target",
        otel.status_code = tracing::field::Empty,
        db.system = "postgresql",
        cloud = %target.cloud,
        database = %target.database,
        query.fingerprint = %format_args!("{:016x}", plan.fingerprint),
        query.statements = plan.statements.len(),
        success = tracing::field::Empty,
        sqlstate = tracing::field::Empty,
        replica = tracing::field::Empty,
    )
}
