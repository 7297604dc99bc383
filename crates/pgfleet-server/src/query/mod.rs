//! Running one SQL text on many targets at once.
//!
//! - [`plan`]: request → checked [`Plan`] (targets, schema, timeout, roles,
//!   dangerous statements); everything refusable is refused before any
//!   connection is taken.
//! - [`run`]: one target: one connection, one transaction, one statement at
//!   a time through the extended protocol, events as they happen, the
//!   connection reset before it goes back.
//! - [`values`]: result values to wire cells, rendered by PostgreSQL where
//!   psql's text is the faithful form.
//! - [`dispatch`] starts every target concurrently and merges their events
//!   into one bounded channel, so a slow consumer slows the reads.

pub mod audited;
pub mod plan;
pub mod run;
pub mod values;

use std::sync::Arc;

use pgfleet_registry::Registry;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use plan::{ExecuteFields, Plan, Scope};
pub use run::{EventSink, StatementOutcome, TargetEvent, TargetOutcome};

/// Events buffered per target before its reads pause.
const EVENTS_PER_TARGET: usize = 4;

/// Starts `plan` on every target; events arrive tagged with the target's
/// index in `plan.targets`, each target ending with `Finished`. Cancelling
/// `cancel` cancels the running statements on their servers.
pub fn dispatch(
    registry: Arc<Registry>,
    plan: Arc<Plan>,
    cancel: CancellationToken,
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
        // Spawned, not polled by the caller: a target's cleanup (cancel on
        // the server, rollback, reset) runs even when the call is gone.
        tokio::spawn(async move {
            let target = &plan.targets[index];
            run::run_target(&registry, &plan, target, sink, cancel).await;
        });
    }
    receiver
}
