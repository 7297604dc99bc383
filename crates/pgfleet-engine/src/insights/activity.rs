//! What runs on each target now, and stopping it.
//!
//! `ListActivity` reads `pg_stat_activity` of the target's database on its
//! primary (main login: an unprivileged one sees only its own texts) with
//! the locks each backend waits for and `pg_blocking_pids`. Texts leave
//! with every literal `$n`.
//!
//! `CancelBackend` / `TerminateBackend` are MASTER's (the RPC table), act
//! only on a backend of the target's own database, and refuse pgfleet's own
//! history-store connections: a backend is one of those when the history
//! store has a backend with the same pid and the same `backend_start`
//! (checked on the history store itself, so it holds whatever names the
//! configuration gives the servers). Each signal is on record (committed)
//! before it is sent, like a write.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use pgfleet_registry::{Registry, Route, Target};
use sqlx::PgPool;
use uuid::Uuid;

use super::{READ_TIMEOUT, read_failure, without_literals};
use crate::RequestError;
use crate::audit::{AuditLog, Kind, NewExecution, RecordedOutcome, TargetScope};
use crate::identity::Identity;
use crate::migrations::Caller;
use crate::query::TargetFailure;
use crate::query::audited::{recorded_error, recorded_target};

/// What ListActivity asks.
#[derive(Debug, Clone, Default)]
pub struct ActivitySpec {
    pub database: String,
    /// Empty: every cloud with the database.
    pub cloud: String,
    /// Only backends whose statement (or open transaction, when idle in
    /// one) is at least this old.
    pub min_age: Option<Duration>,
}

/// A lock a backend waits for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockWait {
    pub lock_type: String,
    pub mode: String,
    /// `schema.table`, when on a relation.
    pub relation: String,
}

/// One backend of a target's database.
#[derive(Debug, Clone)]
pub struct Backend {
    pub pid: i32,
    pub user: String,
    pub application_name: String,
    pub client_address: String,
    pub state: String,
    pub wait_event_type: String,
    pub wait_event: String,
    /// Literals as `$n`; empty when the text could not even be scanned.
    pub query: String,
    pub query_age: Option<Duration>,
    pub transaction_age: Option<Duration>,
    pub blocked_by: Vec<i32>,
    pub waiting_for: Vec<LockWait>,
    /// One of pgfleet's own history-store connections.
    pub pgfleet_own: bool,
}

/// The backends of one target, or why they could not be read.
#[derive(Debug)]
pub struct TargetActivity {
    pub target: Target,
    pub backends: Result<Vec<Backend>, TargetFailure>,
}

type ActivityRow = (
    i32,
    String,
    String,
    String,
    String,
    String,
    String,
    String,
    Option<f64>,
    Option<f64>,
    Vec<i32>,
    Vec<String>,
    DateTime<Utc>,
);

const ACTIVITY_SQL: &str = "\
SELECT a.pid, coalesce(a.usename::text, ''), coalesce(a.application_name, ''), \
       coalesce(host(a.client_addr), ''), coalesce(a.state, ''), coalesce(a.wait_event_type, ''), \
       coalesce(a.wait_event, ''), coalesce(a.query, ''), \
       extract(epoch FROM now() - CASE WHEN a.state = 'active' THEN a.query_start ELSE a.xact_start END)::float8 AS age, \
       extract(epoch FROM now() - a.xact_start)::float8, \
       pg_blocking_pids(a.pid), \
       coalesce((SELECT array_agg(l.locktype || '|' || l.mode || '|' || coalesce(l.relation::regclass::text, '') \
                                  ORDER BY l.locktype, l.mode) \
                 FROM pg_locks l WHERE l.pid = a.pid AND NOT l.granted), '{}'), \
       a.backend_start \
FROM pg_stat_activity a \
WHERE a.datname = current_database() AND a.backend_type = 'client backend' AND a.pid <> pg_backend_pid() \
ORDER BY age DESC NULLS LAST, a.pid";

/// `pg_stat_activity` of every target of `spec`, read concurrently.
pub async fn list_activity(
    registry: &Arc<Registry>,
    history: &PgPool,
    identity: &Identity,
    spec: &ActivitySpec,
) -> Result<Vec<TargetActivity>, RequestError> {
    let targets = super::resolve_targets(registry, identity, &spec.database, &spec.cloud)?;
    let own = history_backends(history).await;
    let reads = targets.into_iter().map(|target| {
        let registry = Arc::clone(registry);
        let own = own.clone();
        let min_age = spec.min_age;
        async move {
            let read = registry
                .read_only(&target, Route::Write, READ_TIMEOUT, async |connection| {
                    sqlx::query_as::<_, ActivityRow>(ACTIVITY_SQL)
                        .fetch_all(&mut *connection)
                        .await
                })
                .await;
            let backends = match read {
                Ok(rows) => Ok(backends(rows, &own, min_age).await),
                Err(error) => Err(read_failure(error)),
            };
            TargetActivity { target, backends }
        }
    });
    Ok(futures::future::join_all(reads).await)
}

async fn backends(
    rows: Vec<ActivityRow>,
    own: &HashSet<(i32, i64)>,
    min_age: Option<Duration>,
) -> Vec<Backend> {
    let rows: Vec<ActivityRow> = rows
        .into_iter()
        .filter(|row| match min_age {
            None => true,
            Some(min) => row.8.is_some_and(|age| age >= min.as_secs_f64()),
        })
        .collect();
    let texts = without_literals(rows.iter().map(|row| row.7.clone()).collect()).await;
    rows.into_iter()
        .zip(texts.into_iter().chain(std::iter::repeat(None)))
        .map(|(row, text)| Backend {
            pid: row.0,
            user: row.1,
            application_name: row.2,
            client_address: row.3,
            state: row.4,
            wait_event_type: row.5,
            wait_event: row.6,
            query: text.unwrap_or_default(),
            query_age: row.8.map(seconds),
            transaction_age: row.9.map(seconds),
            blocked_by: row.10,
            waiting_for: row
                .11
                .iter()
                .map(|lock| {
                    let mut parts = lock.splitn(3, '|');
                    LockWait {
                        lock_type: parts.next().unwrap_or_default().to_owned(),
                        mode: parts.next().unwrap_or_default().to_owned(),
                        relation: parts.next().unwrap_or_default().to_owned(),
                    }
                })
                .collect(),
            pgfleet_own: own.contains(&(row.0, row.12.timestamp_micros())),
        })
        .collect()
}

fn seconds(value: f64) -> Duration {
    Duration::try_from_secs_f64(value.max(0.0)).unwrap_or_default()
}

/// The history store's own backends of its database, as (pid,
/// backend_start in microseconds): pgfleet's connections. Empty when it
/// cannot be asked (ListActivity still answers; a signal is then refused).
async fn history_backends(history: &PgPool) -> HashSet<(i32, i64)> {
    sqlx::query_as::<_, (i32, DateTime<Utc>)>(
        "SELECT pid, backend_start FROM pg_stat_activity WHERE datname = current_database()",
    )
    .fetch_all(history)
    .await
    .map(|rows| {
        rows.into_iter()
            .map(|(pid, start)| (pid, start.timestamp_micros()))
            .collect()
    })
    .unwrap_or_default()
}

/// Which signal to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendSignal {
    /// `pg_cancel_backend`: the running statement fails, the session stays.
    Cancel,
    /// `pg_terminate_backend`: the session ends.
    Terminate,
}

impl BackendSignal {
    fn function(self) -> &'static str {
        match self {
            BackendSignal::Cancel => "pg_cancel_backend",
            BackendSignal::Terminate => "pg_terminate_backend",
        }
    }
}

/// Which backend to signal, and how.
#[derive(Debug, Clone)]
pub struct SignalSpec {
    /// The target the backend runs on (its primary).
    pub target: Target,
    pub pid: i32,
    pub signal: BackendSignal,
}

/// A signal that was sent.
#[derive(Debug, Clone)]
pub struct Signalled {
    /// The audit record of the signal.
    pub execution_id: Uuid,
    /// PostgreSQL's answer: false when no backend was signalled.
    pub signalled: bool,
}

/// Sends `signal` to backend `pid` of `target`'s primary (see the module docs).
pub async fn signal_backend(
    registry: &Registry,
    history: &PgPool,
    audit: &Arc<AuditLog>,
    caller: &Caller,
    identity: &Identity,
    spec: &SignalSpec,
) -> Result<Signalled, RequestError> {
    let SignalSpec { target, pid, signal } = spec;
    let (pid, signal) = (*pid, *signal);
    if target.cloud.is_empty() || target.database.is_empty() {
        return Err(RequestError::invalid(
            "target",
            "must name a cloud and a database",
        ));
    }
    if pid <= 0 {
        return Err(RequestError::invalid(
            "pid",
            "must be a backend's process id (from ListActivity)",
        ));
    }
    if registry.database_config(target).is_none() {
        return Err(RequestError::NotFound(format!("no target {target}")));
    }
    if !identity.may_access(target) {
        return Err(RequestError::PermissionDenied(format!(
            "{} may not reach {target} (API key allow-list)",
            identity.label()
        )));
    }
    let mut checkout = registry.acquire(target, Route::Write).await?;
    let backend: Option<(Option<String>, DateTime<Utc>, bool)> = sqlx::query_as(
        "SELECT datname::text, backend_start, datname = current_database() \
         FROM pg_stat_activity WHERE pid = $1 AND backend_start IS NOT NULL",
    )
    .bind(pid)
    .fetch_optional(checkout.connection_mut())
    .await
    .map_err(|error| RequestError::Unavailable(format!("{target}: {error}")))?;
    let Some((database, started, same_database)) = backend else {
        return Err(RequestError::NotFound(format!("{target} has no backend {pid}")));
    };
    if !same_database {
        return Err(RequestError::FailedPrecondition(format!(
            "backend {pid} is connected to {}, not to {target}'s database",
            database.map_or_else(|| "no database".to_owned(), |name| format!("{name:?}"))
        )));
    }
    let own: Option<bool> = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_stat_activity \
                        WHERE pid = $1 AND backend_start = $2 AND datname = current_database())",
    )
    .bind(pid)
    .bind(started)
    .fetch_optional(history)
    .await
    .map_err(RequestError::history_store)?;
    if own != Some(false) {
        return Err(RequestError::FailedPrecondition(format!(
            "backend {pid} of {target} is one of pgfleet's own history-store connections"
        )));
    }

    let function = signal.function();
    let query = format!(
        "-- pgfleet {} backend {pid} of {target}\nSELECT {function}({pid})",
        match signal {
            BackendSignal::Cancel => "cancel",
            BackendSignal::Terminate => "terminate",
        }
    );
    let record = audit.open(new_execution(target, caller, query)).await?.started();
    let execution_id = record.id();
    let begun = Instant::now();
    let answer = sqlx::query_scalar::<_, bool>(sqlx::AssertSqlSafe(format!("SELECT {function}($1)")))
        .bind(pid)
        .fetch_one(checkout.connection_mut())
        .await;
    let failure = answer.as_ref().err().map(TargetFailure::from_sqlx);
    let duration = begun.elapsed();
    record
        .finish(vec![RecordedOutcome {
            target: recorded_target(target),
            success: failure.is_none(),
            command_tags: vec!["SELECT 1".to_owned()],
            rows_affected: 0,
            duration_micros: u64::try_from(duration.as_micros()).unwrap_or(u64::MAX),
            error: failure.as_ref().map(recorded_error),
            outcome_unknown: false,
            failed_statement_index: failure.as_ref().map(|_| 0),
            replica: String::new(),
        }])
        .await;
    match answer {
        Ok(signalled) => Ok(Signalled {
            execution_id,
            signalled,
        }),
        Err(error) => Err(RequestError::FailedPrecondition(format!(
            "{target}: {function} failed: {}",
            TargetFailure::from_sqlx(&error).message
        ))),
    }
}

fn new_execution(target: &Target, caller: &Caller, query: String) -> NewExecution {
    NewExecution {
        id: Uuid::now_v7(),
        kind: Kind::Query,
        actor: caller.actor.clone(),
        role: caller.role,
        client_address: caller.origin.client_address.clone(),
        request_id: caller.origin.request_id.clone(),
        query,
        query_redacted: false,
        fingerprint: String::new(),
        statement_classes: vec!["UTILITY".to_owned()],
        database: target.database.clone(),
        pg_schema: String::new(),
        scope: TargetScope::Targets,
        targets: vec![recorded_target(target)],
        read_only: false,
        confirmed_dangerous: false,
        findings: Vec::new(),
        replication_job_id: None,
    }
}
