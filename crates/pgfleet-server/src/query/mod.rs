//! Running one SQL text on many targets at once.
//!
//! - [`plan`]: request → checked [`Plan`] (targets, schema, timeout, roles,
//!   dangerous statements); everything refusable is refused before any
//!   connection is taken.
//! - [`run`]: one target: one connection, one transaction, one statement at
//!   a time through the extended protocol, events as they happen, the
//!   connection reset before it goes back.
//! - [`budget`]: byte limits on results, checked as each row arrives.
//! - [`values`]: result values to wire cells, rendered by PostgreSQL where
//!   psql's text is the faithful form.
//! - [`dispatch`] starts every target concurrently and merges their events
//!   into one bounded channel, so a slow consumer slows the reads.

pub mod audited;
pub mod budget;
pub mod plan;
pub mod run;
pub mod values;

use std::sync::Arc;

use pgfleet_registry::Registry;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::telemetry::Metrics;

pub use plan::{ExecuteFields, Plan, Scope};
pub use run::{EventSink, StatementOutcome, TargetEvent, TargetOutcome};

/// Events buffered per target before its reads pause.
const EVENTS_PER_TARGET: usize = 4;

/// Starts `plan` on every target; events arrive tagged with the target's
/// index in `plan.targets`, each target ending with `Finished`. Cancelling
/// `cancel` cancels the running statements on their servers.
///
/// Each target runs in a `target` span, a child of the caller's span: its
/// names and the statement fingerprint, never the text or parameters.
pub fn dispatch(
    registry: Arc<Registry>,
    plan: Arc<Plan>,
    cancel: CancellationToken,
    metrics: &Metrics,
) -> mpsc::Receiver<(usize, TargetEvent)> {
    let (sender, receiver) = mpsc::channel(EVENTS_PER_TARGET * plan.targets.len().max(1));
    for index in 0..plan.targets.len() {
        let registry = Arc::clone(&registry);
        let plan = Arc::clone(&plan);
        let cancel = cancel.clone();
        let sink = EventSink {
            index,
            sender: sender.clone(),
        };
        let metrics = metrics.clone();
        let span = target_span(&plan, index);
        // Spawned, not polled by the caller: a target's cleanup (cancel on
        // the server, rollback, reset) runs even when the call is gone.
        // Inside the caller's span too, so its lines keep the request id
        // even when the filter drops the `target` span.
        tokio::spawn(
            async move {
                let target = &plan.targets[index];
                run::run_target(&registry, &plan, target, sink, cancel, &metrics).await;
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
