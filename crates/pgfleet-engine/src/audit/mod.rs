//! The write-ahead, tamper-evident audit trail in the history store.
//!
//! - An execution is **opened** (row inserted as RUNNING, chain link
//!   appended, committed) before any target is touched; if that cannot be
//!   done within `audit.write_timeout` the execution is refused and nothing
//!   runs. The caller gets an [`OpenExecution`]; dropping it unused closes the
//!   record as REFUSED, so a record never claims work that did not happen.
//! - Each target's outcome is added as it finishes (not yet covered by the
//!   chain), then the record is **closed** once (status, outcomes, second
//!   chain link). Targets never heard from are recorded as unknown.
//! - [`maintenance`]: a writer lease per server; RUNNING records of a server
//!   whose lease expired are closed as INTERRUPTED; retention.
//! - [`chain`]: appending in commit order across replicas, keyed with the
//!   chain key ([`keys`]); the seal; verification; [`checkpoint`]s of the
//!   head, signed for keeping outside the history store.
//! - [`search`]: filters, keyset pages, export in chain order.
//! - [`import`]: records written already closed (the old system's history,
//!   imported), linked after the head.

pub mod chain;
pub mod checkpoint;
pub mod import;
pub mod keys;
pub mod maintenance;
pub mod record;
pub mod search;

use std::sync::Arc;
use std::time::{Duration, Instant};

use pgfleet_config::AuditConfig;
use sqlx::PgPool;
use sqlx::types::Json;
use tokio::sync::oneshot;
use tracing::Instrument as _;
use uuid::Uuid;

use crate::{AuditWrite, Observer};

pub use record::{
    Actor, ExecutionRow, Kind, NewExecution, RecordedError, RecordedFinding, RecordedOutcome, RecordedTarget,
    Status, TargetScope,
};

use record::{LinkKind, execution_columns};

/// Why the audit trail could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The history store did not answer within the bounded wait.
    #[error("the audit trail could not be written within {0:?}")]
    TimedOut(Duration),
    /// The history store failed.
    #[error("audit store error: {0}")]
    Store(#[from] sqlx::Error),
    /// The configured chain keys cannot be used.
    #[error(transparent)]
    Key(#[from] keys::ChainKeyError),
    /// The chain is keyed and this server has no key: it may not append.
    #[error(
        "the audit chain is keyed since sequence {keyed_since} but this server has no chain key: configure \
         [audit.chain] key or key_file"
    )]
    KeyRequired { keyed_since: i64 },
    /// The chain's seal names a key this server does not have.
    #[error(
        "the audit chain's {what} is signed with key {key_id:?}, which is not configured (configured: \
         {configured}): configure that key as [audit.chain] key, or in previous_keys after a rotation \
         (if no key ever had that id, the history store was altered)"
    )]
    UnknownKey {
        what: &'static str,
        key_id: String,
        configured: String,
    },
    /// Checkpoints need a chain key.
    #[error("no audit chain key is configured: checkpoints cannot be signed or verified")]
    Unkeyed,
    /// The head does not verify: signing it would certify tampering.
    #[error("the audit chain head does not verify ({0}): run VerifyChain")]
    HeadUnverified(String),
}

/// Pauses between attempts to close a record after its targets finished.
const CLOSE_RETRY_DELAYS: [Duration; 6] = [
    Duration::from_millis(100),
    Duration::from_millis(500),
    Duration::from_secs(2),
    Duration::from_secs(5),
    Duration::from_secs(15),
    Duration::from_secs(30),
];

/// The audit trail of one server instance.
#[derive(Debug)]
pub struct AuditLog {
    pool: PgPool,
    settings: AuditConfig,
    /// This server instance; RUNNING records carry it so that only records
    /// of a dead instance are closed as INTERRUPTED.
    writer_id: Uuid,
    /// Where write latencies go; none for tools and tests without a server.
    observer: Option<Arc<dyn Observer>>,
    /// The chain keys of `settings.chain`, read once.
    keys: keys::ChainKeys,
}

impl AuditLog {
    /// Reads the chain keys `settings.chain` names; without one this fails
    /// unless `allow_unkeyed`.
    pub fn new(pool: PgPool, settings: AuditConfig) -> Result<Arc<Self>, AuditError> {
        Self::build(pool, settings, None)
    }

    /// An audit log whose writes are timed and reported to `observer`.
    pub fn with_observer(
        pool: PgPool,
        settings: AuditConfig,
        observer: Arc<dyn Observer>,
    ) -> Result<Arc<Self>, AuditError> {
        Self::build(pool, settings, Some(observer))
    }

    fn build(
        pool: PgPool,
        settings: AuditConfig,
        observer: Option<Arc<dyn Observer>>,
    ) -> Result<Arc<Self>, AuditError> {
        let keys = keys::ChainKeys::load(&settings.chain)?;
        Ok(Arc::new(Self {
            pool,
            settings,
            writer_id: Uuid::now_v7(),
            observer,
            keys,
        }))
    }

    /// Seals the chain under this server's key, or refuses to run without
    /// one on a keyed chain ([`chain::prepare`]); call once before serving.
    pub async fn prepare_chain(&self) -> Result<(), AuditError> {
        chain::prepare(&self.pool, &self.keys).await
    }

    pub fn keys(&self) -> &keys::ChainKeys {
        &self.keys
    }

    fn observe(&self, operation: AuditWrite, succeeded: bool, started: Instant) {
        if let Some(observer) = &self.observer {
            observer.audit_write(operation, succeeded, started.elapsed());
        }
    }

    pub fn settings(&self) -> &AuditConfig {
        &self.settings
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub fn writer_id(&self) -> Uuid {
        self.writer_id
    }

    /// Opens the record of `new` and commits it, within
    /// `audit.write_timeout`. The insert runs in its own task: if it
    /// commits after the caller stopped waiting (timeout, or the call was
    /// dropped), that task closes the record as REFUSED.
    pub async fn open(self: &Arc<Self>, new: NewExecution) -> Result<OpenExecution, AuditError> {
        let (reply, opened) = oneshot::channel();
        let log = Arc::clone(self);
        let span = audit_span("open", new.id);
        tokio::spawn(
            async move {
                let started = Instant::now();
                let result = log.insert_opened(&new).await;
                log.observe(AuditWrite::Open, result.is_ok(), started);
                if let Err(Ok(row)) = reply.send(result) {
                    log.close_with_retries(row.id, Status::Refused, not_run_outcomes(&row))
                        .await;
                }
            }
            .instrument(span)
            .in_current_span(),
        );
        let wait = self.settings.write_timeout;
        match tokio::time::timeout(wait, opened).await {
            Err(_elapsed) => Err(AuditError::TimedOut(wait)),
            // The insert task panicked: treat like a store failure.
            Ok(Err(_dropped)) => Err(AuditError::Store(sqlx::Error::WorkerCrashed)),
            Ok(Ok(result)) => result.map(|row| OpenExecution {
                log: Arc::clone(self),
                row: Some(row),
            }),
        }
    }

    async fn insert_opened(&self, new: &NewExecution) -> Result<ExecutionRow, AuditError> {
        let (actor_kind, user_id, username, key_id, key_name, system) = match &new.actor {
            Actor::User { id, username } => ("user", Some(*id), Some(username.as_str()), None, None, None),
            Actor::ApiKey { id, name } => ("api_key", None, None, Some(*id), Some(name.as_str()), None),
            Actor::System(name) => ("system", None, None, None, None, Some(name.as_str())),
        };
        let mut transaction = self.pool.begin().await?;
        let row: ExecutionRow = sqlx::query_as(concat!(
            "INSERT INTO pgfleet.executions AS e (id, kind, actor_kind, actor_user_id, actor_username, \
             actor_api_key_id, actor_api_key_name, actor_system, actor_role, client_address, request_id, \
             query, query_redacted, fingerprint, statement_classes, database, pg_schema, scope, targets, \
             read_only, confirmed_dangerous, findings, replication_job_id, writer_id, started_at, status) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, \
             $20, $21, $22, $23, $24, clock_timestamp(), 'RUNNING') RETURNING ",
            execution_columns!()
        ))
        .bind(new.id)
        .bind(new.kind.as_str())
        .bind(actor_kind)
        .bind(user_id)
        .bind(username)
        .bind(key_id)
        .bind(key_name)
        .bind(system)
        .bind(new.role.as_str())
        .bind(&new.client_address)
        .bind(&new.request_id)
        .bind(&new.query)
        .bind(new.query_redacted)
        .bind(&new.fingerprint)
        .bind(&new.statement_classes)
        .bind(&new.database)
        .bind(&new.pg_schema)
        .bind(new.scope.as_str())
        .bind(Json(&new.targets))
        .bind(new.read_only)
        .bind(new.confirmed_dangerous)
        .bind(Json(&new.findings))
        .bind(new.replication_job_id)
        .bind(self.writer_id)
        .fetch_one(&mut *transaction)
        .await?;
        chain::append(&mut transaction, &self.keys, &row, LinkKind::Opened).await?;
        transaction.commit().await?;
        Ok(row)
    }

    /// Adds one target's outcome to a RUNNING record as soon as it is known,
    /// so a crash before the record is closed loses as little as possible.
    /// Best effort: the close writes every outcome again.
    pub async fn add_outcome(&self, id: Uuid, outcome: &RecordedOutcome) {
        let update = sqlx::query(
            "UPDATE pgfleet.executions SET outcomes = outcomes || jsonb_build_array($2::jsonb) \
             WHERE id = $1 AND status = 'RUNNING'",
        )
        .bind(id)
        .bind(Json(outcome))
        .execute(&self.pool);
        let started = Instant::now();
        let written = tokio::time::timeout(self.settings.write_timeout, update)
            .instrument(audit_span("outcome", id))
            .await;
        self.observe(AuditWrite::Outcome, matches!(written, Ok(Ok(_))), started);
        match written {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => {
                tracing::warn!(execution_id = %id, %error, "cannot record a target's outcome yet")
            }
            Err(_) => tracing::warn!(execution_id = %id, "recording a target's outcome timed out"),
        }
    }

    /// Closes a RUNNING record once: status, outcomes and the closing link,
    /// in one transaction. `Ok(None)` when the record was no longer RUNNING
    /// (closed as INTERRUPTED by another server that took this one for dead).
    pub async fn close(
        &self,
        id: Uuid,
        status: Status,
        outcomes: &[RecordedOutcome],
    ) -> Result<Option<ExecutionRow>, AuditError> {
        let started = Instant::now();
        let closed = self
            .close_row(id, status, outcomes)
            .instrument(audit_span("close", id))
            .await;
        self.observe(AuditWrite::Close, closed.is_ok(), started);
        closed
    }

    async fn close_row(
        &self,
        id: Uuid,
        status: Status,
        outcomes: &[RecordedOutcome],
    ) -> Result<Option<ExecutionRow>, AuditError> {
        let mut transaction = self.pool.begin().await?;
        let row: Option<ExecutionRow> = sqlx::query_as(concat!(
            "UPDATE pgfleet.executions AS e SET finished_at = clock_timestamp(), status = $2, success = $3, \
             outcomes = $4 WHERE e.id = $1 AND e.status = 'RUNNING' RETURNING ",
            execution_columns!()
        ))
        .bind(id)
        .bind(status.as_str())
        .bind(status == Status::Succeeded)
        .bind(Json(outcomes))
        .fetch_optional(&mut *transaction)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        chain::append(&mut transaction, &self.keys, &row, LinkKind::Closed).await?;
        transaction.commit().await?;
        Ok(Some(row))
    }

    /// [`AuditLog::close`], retried with backoff while the store is
    /// unreachable; a record that still cannot be closed stays RUNNING and
    /// is logged.
    pub async fn close_with_retries(&self, id: Uuid, status: Status, outcomes: Vec<RecordedOutcome>) {
        for delay in CLOSE_RETRY_DELAYS.iter().copied().chain([Duration::ZERO]) {
            let attempt =
                tokio::time::timeout(self.settings.write_timeout, self.close(id, status, &outcomes));
            match attempt.await {
                Ok(Ok(Some(_))) => return,
                Ok(Ok(None)) => {
                    tracing::warn!(execution_id = %id, status = status.as_str(),
                        "audit record was already closed (this server was taken for dead); its outcome is in the log only");
                    return;
                }
                Ok(Err(error)) => tracing::warn!(execution_id = %id, %error, "cannot close audit record yet"),
                Err(_) => tracing::warn!(execution_id = %id, "closing audit record timed out"),
            }
            if delay.is_zero() {
                break;
            }
            tokio::time::sleep(delay).await;
        }
        tracing::error!(execution_id = %id, status = status.as_str(),
            "audit record left RUNNING: the history store stayed unreachable");
    }
}

/// The span of one audit-trail write (the execution id is no secret: it is
/// what Execute answers).
fn audit_span(operation: &'static str, execution_id: Uuid) -> tracing::Span {
    tracing::info_span!(
        "audit.write",
        otel.name = %format_args!("audit.{operation}"),
        operation,
        execution_id = %execution_id,
    )
}

/// Every target of `row` not yet reported, as unknown.
fn unknown_outcomes(row: &ExecutionRow, why: &str) -> Vec<RecordedOutcome> {
    row.targets
        .0
        .iter()
        .map(|target| {
            row.outcomes
                .0
                .iter()
                .find(|known| &known.target == target)
                .cloned()
                .unwrap_or_else(|| RecordedOutcome::unknown(target.clone(), why))
        })
        .collect()
}

/// Closes a record in the background (from a destructor, or after the
/// caller stopped waiting), retrying while the store is unreachable.
fn close_detached(log: &Arc<AuditLog>, id: Uuid, status: Status, outcomes: Vec<RecordedOutcome>) {
    let log = Arc::clone(log);
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(async move { log.close_with_retries(id, status, outcomes).await }.in_current_span());
    }
}

/// Every target of `row`, as not run (the record was refused).
fn not_run_outcomes(row: &ExecutionRow) -> Vec<RecordedOutcome> {
    row.targets
        .0
        .iter()
        .map(|target| RecordedOutcome {
            outcome_unknown: false,
            ..RecordedOutcome::unknown(target.clone(), "not run: refused before any target was touched")
        })
        .collect()
}

/// An opened record whose targets have not been started yet.
///
/// Hand it to [`OpenExecution::started`] when the first target starts;
/// dropping it instead closes the record as REFUSED (nothing ran).
#[derive(Debug)]
pub struct OpenExecution {
    log: Arc<AuditLog>,
    row: Option<ExecutionRow>,
}

impl OpenExecution {
    pub fn id(&self) -> Uuid {
        self.row.as_ref().map(|row| row.id).unwrap_or_default()
    }

    /// The targets are about to run: from here the record is closed with
    /// their outcomes by the returned [`RunningExecution`].
    pub fn started(mut self) -> RunningExecution {
        let row = self.row.take();
        RunningExecution {
            log: Arc::clone(&self.log),
            row,
        }
    }
}

impl Drop for OpenExecution {
    fn drop(&mut self) {
        let Some(row) = self.row.take() else {
            return;
        };
        close_detached(&self.log, row.id, Status::Refused, not_run_outcomes(&row));
    }
}

/// A record whose targets are running.
#[derive(Debug)]
pub struct RunningExecution {
    log: Arc<AuditLog>,
    row: Option<ExecutionRow>,
}

impl RunningExecution {
    pub fn id(&self) -> Uuid {
        self.row.as_ref().map(|row| row.id).unwrap_or_default()
    }

    pub async fn add_outcome(&self, outcome: &RecordedOutcome) {
        self.log.add_outcome(self.id(), outcome).await;
    }

    /// Closes the record with every target's outcome; targets missing from
    /// `outcomes` are recorded as unknown.
    pub async fn finish(mut self, outcomes: Vec<RecordedOutcome>) {
        let Some(mut row) = self.row.take() else {
            return;
        };
        row.outcomes = Json(outcomes);
        let outcomes = unknown_outcomes(&row, "the target did not report an outcome");
        let status = Status::from_outcomes(&outcomes);
        // One attempt while the caller waits (its response follows the
        // closed record); if the store is slow, keep trying in the
        // background rather than holding the response.
        let first = tokio::time::timeout(
            self.log.settings.write_timeout,
            self.log.close(row.id, status, &outcomes),
        );
        if let Ok(Ok(_)) = first.await {
            return;
        }
        close_detached(&self.log, row.id, status, outcomes);
    }
}

impl Drop for RunningExecution {
    fn drop(&mut self) {
        let Some(row) = self.row.take() else {
            return;
        };
        // Dropped without finish (a panic in the recorder): what ran is not
        // known; say so rather than leaving the record RUNNING.
        let outcomes = unknown_outcomes(&row, "the server lost track of this target");
        close_detached(&self.log, row.id, Status::Interrupted, outcomes);
    }
}
