//! Background upkeep of the audit trail, on every server replica:
//!
//! - the writer lease: a row in `audit_writers` renewed every
//!   `audit.heartbeat_interval`;
//! - closing as INTERRUPTED the RUNNING records of servers whose lease
//!   expired (they crashed or lost the store), with what they had reported;
//! - retention: deleting records older than `audit.retention` in bounded
//!   batches, moving the chain's anchor (signed with the chain key) so what
//!   remains still verifies;
//! - a signed checkpoint of the chain's head in the log every
//!   `audit.chain.checkpoint_log_interval`, for a log collector to carry
//!   out of reach of whoever can write the history store.

use std::collections::HashSet;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::record::execution_columns;
use super::{AuditError, AuditLog, ExecutionRow, Status, unknown_outcomes};
use crate::advisory_locks::HistoryLock;

/// How far a retention batch may grow past `audit.retention_batch` to find
/// a place where no record straddles the cut.
const MAX_BATCH_GROWTH: i64 = 64;

/// Starts the heartbeat, sweep and retention loop; it registers this
/// server's lease first and removes it when `stop` is cancelled.
pub fn spawn(log: Arc<AuditLog>, stop: CancellationToken) -> JoinHandle<()> {
    tokio::spawn(async move {
        let settings = log.settings().clone();
        let mut heartbeat = tokio::time::interval(settings.heartbeat_interval);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut retention = tokio::time::interval(settings.retention_interval);
        retention.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let checkpoint_every = settings.chain.checkpoint_log_interval;
        let log_checkpoints = !checkpoint_every.is_zero() && log.keys().current().is_some();
        // `interval` refuses zero; the branch is off then anyway.
        let mut checkpoints = tokio::time::interval(checkpoint_every.max(std::time::Duration::from_secs(1)));
        checkpoints.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = heartbeat.tick() => {
                    if let Err(error) = renew_lease(&log).await {
                        tracing::warn!(%error, "cannot renew the audit writer lease");
                        continue;
                    }
                    match interrupt_dead_writers(&log).await {
                        Ok(0) => {}
                        Ok(closed) => tracing::warn!(closed, "closed RUNNING audit records of servers that stopped as INTERRUPTED"),
                        Err(error) => tracing::warn!(%error, "cannot check for interrupted executions"),
                    }
                }
                _ = retention.tick(), if settings.retention.is_some() => {
                    match apply_retention(&log).await {
                        Ok(0) => {}
                        Ok(deleted) => tracing::info!(deleted, "audit retention deleted old records"),
                        Err(error) => tracing::warn!(%error, "audit retention failed"),
                    }
                }
                _ = checkpoints.tick(), if log_checkpoints => log_checkpoint(&log).await,
            }
        }
        let release = sqlx::query("DELETE FROM pgfleet.audit_writers WHERE id = $1")
            .bind(log.writer_id())
            .execute(log.pool());
        if let Ok(Err(error)) = tokio::time::timeout(settings.write_timeout, release).await {
            tracing::warn!(%error, "cannot release the audit writer lease");
        }
    })
}

/// Where checkpoint lines go: a log filter or a collector's route can pick
/// them out by this target.
pub const CHECKPOINT_LOG_TARGET: &str = "pgfleet::audit::checkpoint";

/// Signs a checkpoint of the head and logs it; a head that does not verify
/// is logged as an error (it is what tampering looks like from here).
async fn log_checkpoint(log: &AuditLog) {
    let signed = tokio::time::timeout(log.settings().write_timeout, super::chain::checkpoint(log)).await;
    match signed {
        Ok(Ok(checkpoint)) => tracing::info!(
            target: CHECKPOINT_LOG_TARGET,
            head_sequence = checkpoint.head_sequence,
            key_id = %checkpoint.key_id,
            checkpoint = %checkpoint.to_log_json(),
            "signed audit chain checkpoint"
        ),
        Ok(Err(error @ AuditError::HeadUnverified(_))) => {
            tracing::error!(target: CHECKPOINT_LOG_TARGET, %error, "no audit chain checkpoint signed")
        }
        Ok(Err(error)) => {
            tracing::warn!(target: CHECKPOINT_LOG_TARGET, %error, "cannot sign an audit chain checkpoint")
        }
        Err(_) => {
            tracing::warn!(target: CHECKPOINT_LOG_TARGET, "signing an audit chain checkpoint timed out")
        }
    }
}

async fn renew_lease(log: &AuditLog) -> Result<(), AuditError> {
    let hostname = std::env::var("HOSTNAME").unwrap_or_default();
    let renew = sqlx::query(
        "INSERT INTO pgfleet.audit_writers (id, hostname) VALUES ($1, $2) \
         ON CONFLICT (id) DO UPDATE SET heartbeat_at = now()",
    )
    .bind(log.writer_id())
    .bind(hostname)
    .execute(log.pool());
    tokio::time::timeout(log.settings().write_timeout, renew)
        .await
        .map_err(|_| AuditError::TimedOut(log.settings().write_timeout))??;
    Ok(())
}

/// Closes every RUNNING record whose writer holds no live lease (crashed,
/// or cut from the store for longer than the lease) as INTERRUPTED, keeping
/// the outcomes it reported and marking the others unknown. Only records
/// older than the lease qualify, so a server that has just started and not
/// yet written its lease never loses its records. Returns how many were
/// closed.
pub async fn interrupt_dead_writers(log: &AuditLog) -> Result<u64, AuditError> {
    let lease_secs = log.settings().writer_lease.as_secs_f64();
    let orphans: Vec<ExecutionRow> = sqlx::query_as(concat!(
        "SELECT ",
        execution_columns!(),
        " FROM pgfleet.executions e WHERE e.status = 'RUNNING' AND e.writer_id <> $1 \
         AND e.started_at < now() - make_interval(secs => $2) \
         AND NOT EXISTS (SELECT 1 FROM pgfleet.audit_writers w WHERE w.id = e.writer_id \
         AND w.heartbeat_at > now() - make_interval(secs => $2)) \
         ORDER BY e.started_at LIMIT 1000"
    ))
    .bind(log.writer_id())
    .bind(lease_secs)
    .fetch_all(log.pool())
    .await?;
    let mut closed = 0;
    for row in orphans {
        let outcomes = unknown_outcomes(
            &row,
            "the server running this execution stopped before it reported",
        );
        if log.close(row.id, Status::Interrupted, &outcomes).await?.is_some() {
            closed += 1;
        }
    }
    sqlx::query("DELETE FROM pgfleet.audit_writers WHERE heartbeat_at <= now() - make_interval(secs => $1)")
        .bind(lease_secs)
        .execute(log.pool())
        .await?;
    Ok(closed)
}

#[derive(sqlx::FromRow)]
struct RetentionCandidate {
    sequence: i64,
    execution_id: Uuid,
    link: String,
    hash: String,
    old_enough: Option<bool>,
}

/// Deletes records started before `now - audit.retention`, oldest first,
/// `audit.retention_batch` links per transaction. The chain is only cut
/// where no record straddles the cut (both links of every deleted record
/// are deleted), and the anchor keeps the last deleted link's hash so the
/// first retained link still verifies. Returns the records deleted.
pub async fn apply_retention(log: &AuditLog) -> Result<u64, AuditError> {
    let Some(age) = log.settings().retention else {
        return Ok(0);
    };
    let batch = i64::from(log.settings().retention_batch);
    let mut deleted_total = 0;
    loop {
        let mut transaction = log.pool().begin().await?;
        // One replica at a time; the others skip this round.
        let locked = HistoryLock::AuditRetention
            .try_lock_xact(&mut transaction)
            .await?;
        if !locked {
            return Ok(deleted_total);
        }
        let (anchor, anchor_started_at): (i64, Option<DateTime<Utc>>) =
            sqlx::query_as("SELECT anchor_sequence, anchor_started_at FROM pgfleet.audit_chain_head")
                .fetch_one(&mut *transaction)
                .await?;
        // A batch full of records still open at its end has no place to
        // cut: look further (records overlap only as much as executions
        // run concurrently).
        let mut limit = batch;
        let (candidates, (cut_sequence, cut_hash)) = loop {
            let candidates: Vec<RetentionCandidate> = sqlx::query_as(
                "SELECT c.sequence, c.execution_id, c.link, c.hash, \
                 (e.status <> 'RUNNING' AND e.started_at < now() - make_interval(secs => $2)) AS old_enough \
                 FROM pgfleet.audit_chain c LEFT JOIN pgfleet.executions e ON e.id = c.execution_id \
                 WHERE c.sequence > $1 ORDER BY c.sequence LIMIT $3",
            )
            .bind(anchor)
            .bind(age.as_secs_f64())
            .bind(limit)
            .fetch_all(&mut *transaction)
            .await?;
            let full = i64::try_from(candidates.len()).unwrap_or(i64::MAX) >= limit;
            match retention_cut(&candidates) {
                Some(cut) => break (candidates, cut),
                None if full && limit < batch.saturating_mul(MAX_BATCH_GROWTH) => {
                    limit = limit.saturating_mul(2)
                }
                None => return Ok(deleted_total),
            }
        };
        let execution_ids: Vec<Uuid> = sqlx::query_scalar(
            "DELETE FROM pgfleet.audit_chain WHERE sequence > $1 AND sequence <= $2 \
             AND link = 'opened' RETURNING execution_id",
        )
        .bind(anchor)
        .bind(cut_sequence)
        .fetch_all(&mut *transaction)
        .await?;
        sqlx::query("DELETE FROM pgfleet.audit_chain WHERE sequence > $1 AND sequence <= $2")
            .bind(anchor)
            .bind(cut_sequence)
            .execute(&mut *transaction)
            .await?;
        let deleted_started: Vec<DateTime<Utc>> =
            sqlx::query_scalar("DELETE FROM pgfleet.executions WHERE id = ANY($1) RETURNING started_at")
                .bind(&execution_ids)
                .fetch_all(&mut *transaction)
                .await?;
        let deleted = u64::try_from(deleted_started.len()).unwrap_or(u64::MAX);
        // The newest start among everything ever deleted: VerifyChain
        // flags it when it is younger than retention allows.
        let newest_deleted = deleted_started.into_iter().chain(anchor_started_at).max();
        let (key_id, anchor_mac) = match log.keys().current() {
            Some(key) => (
                key.id().to_owned(),
                key.anchor_mac(cut_sequence, &cut_hash, newest_deleted),
            ),
            None => (String::new(), String::new()),
        };
        sqlx::query(
            "UPDATE pgfleet.audit_chain_head SET anchor_sequence = $1, anchor_hash = $2, \
             anchor_updated_at = now(), anchor_started_at = $3, anchor_key_id = $4, anchor_mac = $5",
        )
        .bind(cut_sequence)
        .bind(&cut_hash)
        .bind(newest_deleted)
        .bind(key_id)
        .bind(anchor_mac)
        .execute(&mut *transaction)
        .await?;
        transaction.commit().await?;
        deleted_total += deleted;
        if i64::try_from(candidates.len()).unwrap_or(i64::MAX) < limit {
            return Ok(deleted_total);
        }
    }
}

/// The last link of the longest prefix of `candidates` that is old enough
/// and leaves no record with one link on each side of the cut.
fn retention_cut(candidates: &[RetentionCandidate]) -> Option<(i64, String)> {
    let mut open: HashSet<Uuid> = HashSet::new();
    let mut cut = None;
    for candidate in candidates {
        if candidate.old_enough != Some(true) {
            break;
        }
        match candidate.link.as_str() {
            "opened" => {
                open.insert(candidate.execution_id);
            }
            _ => {
                open.remove(&candidate.execution_id);
            }
        }
        if open.is_empty() {
            cut = Some((candidate.sequence, candidate.hash.clone()));
        }
    }
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(sequence: i64, id: u128, link: &str, old: bool) -> RetentionCandidate {
        RetentionCandidate {
            sequence,
            execution_id: Uuid::from_u128(id),
            link: link.to_owned(),
            hash: format!("h{sequence}"),
            old_enough: Some(old),
        }
    }

    #[test]
    fn the_cut_never_splits_a_record() {
        // 1 opens, 2 opens, 1 closes, 2 closes, 3 opens (young).
        let links = [
            link(1, 1, "opened", true),
            link(2, 2, "opened", true),
            link(3, 1, "closed", true),
            link(4, 2, "closed", true),
            link(5, 3, "opened", false),
        ];
        assert_eq!(retention_cut(&links), Some((4, "h4".to_owned())));
        // Record 2 still open when the young one appears: cut before it.
        let links = [
            link(1, 1, "opened", true),
            link(2, 1, "closed", true),
            link(3, 2, "opened", true),
            link(4, 3, "opened", false),
            link(5, 2, "closed", true),
        ];
        assert_eq!(retention_cut(&links), Some((2, "h2".to_owned())));
        assert_eq!(retention_cut(&[link(1, 1, "opened", false)]), None);
    }
}
