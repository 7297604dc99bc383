//! Runs enabled jobs on their interval. Every replica may run a scheduler:
//! each tick it reads which jobs are due, takes a due job's advisory lock
//! (skipping jobs another runner holds), checks again under the lock that
//! the job is still due and moves its next run one interval on
//! ([`RunStore::claim_due`]), then runs it. A job therefore runs on one
//! replica at a time and once per interval whatever the number of
//! replicas. Schedules live in the history store, so they survive restarts.

use std::collections::HashSet;
use std::sync::Arc;

use pgfleet_config::ReplicationConfig;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::jobs::JobStore;
use super::run::{RunEvent, RunOutcome};
use super::runner::{JobRunner, RunBy};
use crate::RequestError;

/// Starts the scheduler; it stops when `shutdown` fires, after its runs
/// stopped at their batch boundaries (they watch the same token).
pub fn spawn(
    runner: Arc<JobRunner>,
    jobs: JobStore,
    config: ReplicationConfig,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut active: JoinSet<Uuid> = JoinSet::new();
        let mut running: HashSet<Uuid> = HashSet::new();
        let capacity = usize::try_from(config.max_concurrent_runs).unwrap_or(usize::MAX);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(config.scheduler_tick) => {}
            }
            while let Some(finished) = active.try_join_next() {
                match finished {
                    Ok(job_id) => {
                        running.remove(&job_id);
                    }
                    Err(error) => tracing::warn!(%error, "a scheduled replication run failed"),
                }
            }
            if running.len() >= capacity {
                continue;
            }
            let due = match runner
                .runs()
                .due_jobs(i64::try_from(capacity).unwrap_or(i64::MAX))
                .await
            {
                Ok(due) => due,
                Err(error) => {
                    tracing::warn!(%error, "replication scheduler cannot read due jobs");
                    continue;
                }
            };
            for job_id in due {
                if running.len() >= capacity || shutdown.is_cancelled() {
                    break;
                }
                if running.contains(&job_id) {
                    continue;
                }
                if let Some(run) = start_due(&runner, &jobs, job_id).await {
                    running.insert(job_id);
                    active.spawn(run);
                }
            }
        }
        while active.join_next().await.is_some() {}
    })
}

/// Starts `job_id` if this replica gets its lock and it is still due; the
/// returned future drives the run to its end.
async fn start_due(
    runner: &JobRunner,
    jobs: &JobStore,
    job_id: Uuid,
) -> Option<impl Future<Output = Uuid> + Send + 'static> {
    let job = match jobs.get(job_id).await {
        Ok(Some(job)) => job,
        Ok(None) => return None,
        Err(error) => {
            tracing::warn!(job = %job_id, %error, "replication scheduler cannot read a job");
            return None;
        }
    };
    let lock = match runner.lock(&job).await {
        Ok(lock) => lock,
        // Another replica (or an on-demand run) holds it: not ours this time.
        Err(RequestError::Aborted(_)) => return None,
        Err(error) => {
            tracing::warn!(job = %job_id, %error, "replication scheduler cannot take a job's lock");
            return None;
        }
    };
    match runner.runs().claim_due(job_id).await {
        Ok(true) => {}
        Ok(false) => {
            lock.release().await;
            return None;
        }
        Err(error) => {
            tracing::warn!(job = %job_id, %error, "replication scheduler cannot claim a job");
            lock.release().await;
            return None;
        }
    }
    tracing::info!(job = %job_id, name = %job.spec.name, "scheduled replication run starting");
    let events = runner
        .launch(
            lock,
            &job,
            Vec::new(),
            Vec::new(),
            RunBy::scheduler(),
            runner.run_token(),
        )
        .await;
    let mut events = match events {
        Ok(events) => events,
        Err(error) => {
            tracing::warn!(job = %job_id, name = %job.spec.name, %error, "scheduled replication run refused");
            return None;
        }
    };
    Some(async move {
        while let Some(event) = events.recv().await {
            if let RunEvent::Finished {
                outcome,
                elapsed,
                rows_written,
                ..
            } = event
            {
                let level_ok = matches!(outcome, RunOutcome::Succeeded);
                if level_ok {
                    tracing::info!(job = %job_id, ?elapsed, rows_written, "scheduled replication run succeeded");
                } else {
                    tracing::warn!(job = %job_id, ?outcome, ?elapsed, rows_written, "scheduled replication run did not succeed");
                }
            }
        }
        job_id
    })
}
