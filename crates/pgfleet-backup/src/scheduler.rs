//! The scheduler of backup policies: each tick, every due policy is run by
//! whichever replica takes its advisory lock first (a session lock on a
//! dedicated history-store connection, keyed by the policy id with
//! [`BACKUP_POLICY_SEED`]); under the lock the policy is read again, its next
//! run moved past now, then it runs, retention included. The lock is held
//! until the run's events are drained (its record closed); a replica that
//! dies releases it with its connection. `next_run_at` lives in the history
//! store, so the schedule survives restarts.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use pgfleet_engine::advisory_locks::BACKUP_POLICY_SEED;
use sqlx::{Connection as _, PgConnection, PgPool};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::BackupError;
use crate::run::{BackupCaller, Backups, RunEvent, RunSpec};

/// The actor of scheduled runs in the audit trail.
pub const SCHEDULER_ACTOR: &str = "backup-scheduler";

/// A policy's lock, held on a connection taken out of the pool.
pub struct PolicyLock {
    connection: PgConnection,
    policy: Uuid,
}

impl PolicyLock {
    /// Takes the lock of `policy` if it is free.
    pub async fn try_acquire(pool: &PgPool, policy: Uuid) -> Result<Option<Self>, BackupError> {
        let mut connection = pool.acquire().await?.detach();
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1::text, $2))")
            .bind(policy.to_string())
            .bind(BACKUP_POLICY_SEED)
            .fetch_one(&mut connection)
            .await?;
        if !locked {
            let _ = connection.close().await;
            return Ok(None);
        }
        Ok(Some(Self { connection, policy }))
    }

    /// Unlocks and closes the connection (closing alone would release it).
    pub async fn release(mut self) {
        let _ = sqlx::query("SELECT pg_advisory_unlock(hashtextextended($1::text, $2))")
            .bind(self.policy.to_string())
            .bind(BACKUP_POLICY_SEED)
            .execute(&mut self.connection)
            .await;
        let _ = self.connection.close().await;
    }
}

/// Runs due policies every `tick` until `shutdown`.
pub fn spawn(
    backups: Arc<Backups>,
    pool: PgPool,
    tick: Duration,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let running: Arc<Mutex<HashSet<Uuid>>> = Arc::default();
        let mut runs = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(tick) => {}
            }
            while runs.try_join_next().is_some() {}
            // Keeps the DEGRADED gauges current between GetBackupHealth calls.
            if let Err(error) = backups.health(Utc::now()).await {
                tracing::debug!(%error, "backup health reading failed");
            }
            let due = match backups.policies().due(Utc::now()).await {
                Ok(due) => due,
                Err(error) => {
                    tracing::warn!(%error, "backup scheduler cannot read due policies");
                    continue;
                }
            };
            for policy in due {
                let fresh = running.lock().map(|mut set| set.insert(policy)).unwrap_or(false);
                if !fresh {
                    continue;
                }
                let backups = Arc::clone(&backups);
                let pool = pool.clone();
                let running = Arc::clone(&running);
                let shutdown = shutdown.clone();
                runs.spawn(async move {
                    if let Err(error) = run_due(&backups, &pool, policy, shutdown).await {
                        tracing::warn!(%error, %policy, "scheduled backup failed to start");
                    }
                    if let Ok(mut set) = running.lock() {
                        set.remove(&policy);
                    }
                });
            }
        }
        // Runs stop with the shutdown token; wait for their records.
        while runs.join_next().await.is_some() {}
    })
}

/// One due policy: lock, re-check, move the schedule, run, drain.
async fn run_due(
    backups: &Arc<Backups>,
    pool: &PgPool,
    id: Uuid,
    shutdown: CancellationToken,
) -> Result<(), BackupError> {
    let Some(lock) = PolicyLock::try_acquire(pool, id).await? else {
        return Ok(());
    };
    let result = run_locked(backups, id, shutdown).await;
    lock.release().await;
    result
}

async fn run_locked(
    backups: &Arc<Backups>,
    id: Uuid,
    shutdown: CancellationToken,
) -> Result<(), BackupError> {
    let now = Utc::now();
    // Another replica may have run it between our read and our lock.
    let Some(policy) = backups.policies().get(id).await? else {
        return Ok(());
    };
    if policy.next_run_at.is_none_or(|next| next > now) {
        return Ok(());
    }
    backups
        .policies()
        .set_next_run(id, policy.spec.next_run_after(now))
        .await?;
    let targets = policy.spec.targets.resolve(backups.registry(), "targets")?;
    tracing::info!(policy = %id, name = %policy.spec.name, "scheduled backup starting");
    let mut events = backups
        .start_run(
            RunSpec::of_policy(policy, targets),
            &BackupCaller::system(SCHEDULER_ACTOR),
            shutdown,
        )
        .await?;
    while let Some(event) = events.recv().await {
        if let RunEvent::Done {
            succeeded, failed, ..
        } = event
        {
            tracing::info!(policy = %id, succeeded, failed, "scheduled backup finished");
        }
    }
    Ok(())
}
