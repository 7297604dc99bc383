//! Recovery of atomic executions' prepared transactions (docs/ATOMIC.md):
//! what a coordinator left prepared because it died, or because a target
//! could not be reached to apply the decision.
//!
//! One pass, under [`HistoryLock::AtomicRecovery`] (one runner across every
//! pgfleet server; a server that finds it taken skips the pass):
//! - lists `pg_prepared_xacts` of every target's database, keeps only gids
//!   that parse as pgfleet's own ([`crate::query::gid::parse`]): any other
//!   prepared transaction is never touched;
//! - leaves alone every branch whose execution's record is RUNNING: its
//!   coordinator may still decide, and finishes what it decided. Once the
//!   record is closed (its coordinator gave up on an unreachable target) or
//!   INTERRUPTED (its server died and its lease expired), finishes each by
//!   the stored decision, deciding ABORT first where there is none;
//! - an IN_DOUBT branch whose gid is gone from a reachable target is done:
//!   rolled back under ABORT; under COMMIT only when the record says that
//!   target succeeded (otherwise it stays listed, for an operator);
//! - unreachable targets keep their branches IN_DOUBT; the count and the
//!   oldest age go to the [`Observer`] (the server's gauges).
//!
//! Decisions and phases are written to `pgfleet.atomic_decisions` and
//! `pgfleet.atomic_branches`, never into the closed (chained) audit record.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use pgfleet_registry::{Registry, Route, Target};
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::Observer;
use crate::advisory_locks::HistoryLock;
use crate::query::atomic::{self, Decision, Finished, Phase};
use crate::query::gid;

/// Bound on listing one target's prepared transactions.
const LIST_TIMEOUT: Duration = Duration::from_secs(10);

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Pass {
    pub committed: u64,
    pub rolled_back: u64,
    /// Branches found prepared and left so (RUNNING record, or COMMIT/
    /// ROLLBACK PREPARED failed).
    pub left_prepared: u64,
    /// Gids gone between the listing and the finish: another runner acted
    /// on them (never expected under the lock).
    pub raced: u64,
    /// Targets whose prepared transactions could not be listed.
    pub unreachable: Vec<Target>,
    /// Branches IN_DOUBT after the pass, and the oldest one's age.
    pub in_doubt: u64,
    pub oldest_in_doubt: Option<Duration>,
}

/// Runs a pass at start and every `interval` until `stop`.
pub fn spawn(
    registry: Arc<Registry>,
    store: PgPool,
    interval: Duration,
    observer: Arc<dyn Observer>,
    stop: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = ticks.tick() => {}
            }
            match recover_once(&registry, &store).await {
                Ok(Some(pass)) => {
                    observer.atomic_in_doubt(pass.in_doubt, pass.oldest_in_doubt);
                    if pass.committed + pass.rolled_back > 0 || pass.in_doubt > 0 {
                        tracing::info!(
                            committed = pass.committed,
                            rolled_back = pass.rolled_back,
                            in_doubt = pass.in_doubt,
                            unreachable = pass.unreachable.len(),
                            "atomic recovery pass"
                        );
                    }
                }
                Ok(None) => tracing::debug!("atomic recovery: another server holds the lock"),
                Err(error) => tracing::warn!(%error, "atomic recovery pass failed"),
            }
        }
    })
}

/// One pass; `Ok(None)` when another server (or session) holds the lock.
pub async fn recover_once(registry: &Registry, store: &PgPool) -> Result<Option<Pass>, sqlx::Error> {
    // The lock lives as long as this transaction; nothing is written in it.
    let mut lock = store.begin().await?;
    if !HistoryLock::AtomicRecovery.try_lock_xact(&mut lock).await? {
        return Ok(None);
    }
    let targets = registry.targets();
    // Each target on its own: one that cannot be reached (connection
    // retries) does not hold back the others' finishing.
    let per_target = futures::future::join_all(
        targets
            .iter()
            .map(|target| recover_target(registry, store, target)),
    )
    .await;
    let mut pass = Pass::default();
    let mut listed_gids: HashSet<(Target, String)> = HashSet::new();
    let mut reachable: HashSet<Target> = HashSet::new();
    for (target, result) in targets.iter().zip(per_target) {
        match result? {
            Some((found, done)) => {
                reachable.insert(target.clone());
                listed_gids.extend(found.into_iter().map(|gid| (target.clone(), gid)));
                pass.committed += done.committed;
                pass.rolled_back += done.rolled_back;
                pass.left_prepared += done.left_prepared;
                pass.raced += done.raced;
            }
            None => pass.unreachable.push(target.clone()),
        }
    }
    sweep_gone(store, &reachable, &listed_gids).await?;
    let (count, oldest): (i64, Option<f64>) = sqlx::query_as(
        "SELECT count(*), extract(epoch FROM clock_timestamp() - min(updated_at))::float8 \
         FROM pgfleet.atomic_branches WHERE phase = 'IN_DOUBT'",
    )
    .fetch_one(store)
    .await?;
    pass.in_doubt = u64::try_from(count).unwrap_or(0);
    pass.oldest_in_doubt = oldest.map(|seconds| Duration::from_secs_f64(seconds.max(0.0)));
    lock.rollback().await?;
    Ok(Some(pass))
}

/// Lists `target`'s pgfleet gids and finishes each; `None` when the target
/// cannot be listed (unreachable).
async fn recover_target(
    registry: &Registry,
    store: &PgPool,
    target: &Target,
) -> Result<Option<(Vec<String>, Pass)>, sqlx::Error> {
    let listed = registry
        .read_only(target, Route::Write, LIST_TIMEOUT, async |connection| {
            sqlx::query_scalar::<_, String>(
                "SELECT gid FROM pg_prepared_xacts WHERE database = current_database() \
                 AND starts_with(gid, $1) ORDER BY prepared",
            )
            .bind(gid::PREFIX)
            .fetch_all(connection)
            .await
        })
        .await;
    let gids = match listed {
        Ok(gids) => gids,
        Err(error) => {
            tracing::warn!(%target, %error, "atomic recovery cannot list this target's prepared transactions");
            return Ok(None);
        }
    };
    let mut pass = Pass::default();
    let mut found = Vec::new();
    for listed in gids {
        // Only what parses back exactly as pgfleet writes it.
        let Some((execution, index)) = gid::parse(&listed) else {
            continue;
        };
        found.push(listed);
        recover_branch(registry, store, target, execution, index, &mut pass).await?;
    }
    Ok(Some((found, pass)))
}

/// The stored status of an execution's record (`None`: no record).
async fn record_status(store: &PgPool, execution: Uuid) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT status FROM pgfleet.executions WHERE id = $1")
        .bind(execution)
        .fetch_optional(store)
        .await
}

async fn recover_branch(
    registry: &Registry,
    store: &PgPool,
    target: &Target,
    execution: Uuid,
    index: usize,
    pass: &mut Pass,
) -> Result<(), sqlx::Error> {
    if record_status(store, execution).await?.as_deref() == Some("RUNNING") {
        // Its coordinator is alive (or its lease has not expired yet): it
        // may still decide, and finishes what it decided itself.
        atomic::store_branch(store, execution, index, target, Phase::InDoubt).await?;
        pass.left_prepared += 1;
        return Ok(());
    }
    let decision = match atomic::decision_of(store, execution).await? {
        Some(decision) => decision,
        None => atomic::decide(store, execution, Decision::Abort, "recovery").await?,
    };
    match atomic::finish_branch(registry, target, execution, index, decision).await {
        Finished::Done => {
            let phase = match decision {
                Decision::Commit => {
                    pass.committed += 1;
                    Phase::Committed
                }
                Decision::Abort => {
                    pass.rolled_back += 1;
                    Phase::RolledBack
                }
            };
            tracing::info!(%target, %execution, decision = decision.as_str(), "atomic recovery finished a prepared transaction");
            atomic::store_branch(store, execution, index, target, phase).await?;
        }
        Finished::Missing => pass.raced += 1,
        Finished::Failed(failure) => {
            tracing::warn!(%target, %execution, error = %failure.message, "atomic recovery could not finish a prepared transaction");
            atomic::store_branch(store, execution, index, target, Phase::InDoubt).await?;
            pass.left_prepared += 1;
        }
    }
    Ok(())
}

/// IN_DOUBT branches on reachable targets whose gid is no longer prepared.
async fn sweep_gone(
    store: &PgPool,
    reachable: &HashSet<Target>,
    listed: &HashSet<(Target, String)>,
) -> Result<(), sqlx::Error> {
    let rows: Vec<(Uuid, i32, String, String, String)> = sqlx::query_as(
        "SELECT execution_id, target_index, cloud, database, gid FROM pgfleet.atomic_branches \
         WHERE phase = 'IN_DOUBT'",
    )
    .fetch_all(store)
    .await?;
    for (execution, index, cloud, database, branch_gid) in rows {
        let target = Target { cloud, database };
        let Ok(index) = usize::try_from(index) else {
            continue;
        };
        if !reachable.contains(&target)
            || listed.contains(&(target.clone(), branch_gid))
            || record_status(store, execution).await?.as_deref() == Some("RUNNING")
        {
            continue;
        }
        let phase = match atomic::decision_of(store, execution).await? {
            Some(Decision::Commit) => {
                if committed_on_record(store, execution, &target).await? {
                    Phase::Committed
                } else {
                    tracing::error!(%target, %execution,
                        "decided COMMIT, but the prepared transaction is gone and the record does not say it committed: \
                         left IN_DOUBT for an operator");
                    continue;
                }
            }
            Some(Decision::Abort) => Phase::RolledBack,
            // Undecided and gone: it never committed (only a COMMIT decision
            // commits), so nothing of it is kept.
            None => Phase::RolledBack,
        };
        atomic::store_branch(store, execution, index, &target, phase).await?;
    }
    Ok(())
}

/// The record of `execution` says `target` succeeded.
async fn committed_on_record(store: &PgPool, execution: Uuid, target: &Target) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pgfleet.executions e, jsonb_array_elements(e.outcomes) o \
         WHERE e.id = $1 AND o->'target'->>'cloud' = $2 AND o->'target'->>'database' = $3 \
         AND (o->>'success')::boolean)",
    )
    .bind(execution)
    .bind(&target.cloud)
    .bind(&target.database)
    .fetch_one(store)
    .await
}
