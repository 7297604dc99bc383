//! Running a plan on one target: one connection, one transaction, each
//! statement on its own through the extended protocol, events out as they
//! happen, the connection reset (or dropped) before it goes back.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::TryStreamExt as _;
use pgfleet_registry::{Checkout, LaggingReplica, Member, Registry, RegistryError, Route, Target};
use sqlx::postgres::types::Oid;
use sqlx::postgres::{PgArguments, PgQueryResult, PgRow, PgTypeInfo};
use sqlx::{
    Arguments as _, Connection, Either, Executor, PgConnection, Row as _, SqlSafeStr, Statement as _,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::budget::{Budgets, Exceeded, row_bytes, split_by_bytes};
use super::encode::{Column, RowEncoder};
use super::failure::{FailureCode, TargetFailure};
use super::params::ParamValue;
use super::plan::{Plan, PlannedStatement};
use super::values::{RawValue, ResultShape, ValueError};
use crate::Observer;

/// Name of the cursor large reads are fetched through.
const CURSOR: &str = "pgfleet_cursor";

/// What one target reports, in order; rows are the caller's encoder's
/// (see [`RowEncoder`]).
#[derive(Debug)]
pub enum TargetEvent<R> {
    Started {
        replica: String,
        /// Replicas passed over for lag.
        skipped_replicas: Vec<LaggingReplica>,
    },
    Header {
        statement: u32,
        columns: Vec<Column>,
    },
    Rows {
        statement: u32,
        rows: Vec<R>,
    },
    StatementDone(StatementOutcome),
    Finished(Box<TargetOutcome>),
}

#[derive(Debug, Clone)]
pub struct StatementOutcome {
    pub index: u32,
    pub command_tag: String,
    pub rows_affected: u64,
    pub duration: Duration,
    /// The unary row cap cut the rows short.
    pub truncated: bool,
}

#[derive(Debug, Clone)]
pub struct TargetOutcome {
    pub success: bool,
    pub error: Option<TargetFailure>,
    pub duration: Duration,
    pub failed_statement_index: Option<u32>,
    pub outcome_unknown: bool,
    pub replica: String,
    /// Replicas this read passed over for being past `max_replica_lag`.
    pub skipped_replicas: Vec<LaggingReplica>,
    /// Rows returned or affected by the statements that finished.
    pub rows: u64,
}

/// How a target's transaction begins. Decided in one place,
/// [`super::dispatch`], from whether the execution has an open audit record:
/// nothing outside `query` can ask for a read-write transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Access {
    /// `BEGIN READ ONLY`: PostgreSQL refuses any write (SQLSTATE 25006).
    ReadOnly,
    /// `BEGIN` (or no transaction block for a lone non-transactional
    /// statement): only for an execution on record.
    ReadWrite,
    /// Not run at all: a non-transactional statement without a record.
    Refused,
    /// `BEGIN`, and `PREPARE TRANSACTION` instead of `COMMIT`: one branch
    /// of an atomic execution ([`super::atomic`]), on record like
    /// `ReadWrite`.
    Prepare(uuid::Uuid),
}

/// Where a target's events go; `index` tags them with the target.
pub struct EventSink<R> {
    pub index: usize,
    pub sender: mpsc::Sender<(usize, TargetEvent<R>)>,
}

impl<R> EventSink<R> {
    /// Sends one event; waits while the consumer is behind (flow control).
    /// False when the consumer is gone.
    async fn send(&self, event: TargetEvent<R>) -> bool {
        self.sender.send((self.index, event)).await.is_ok()
    }
}

/// Why the work on a target stopped.
enum Stop {
    /// PostgreSQL (or the connection) failed a statement. `shift` is the
    /// length of text pgfleet put before the statement (the cursor's
    /// DECLARE), taken off the error position.
    Statement {
        index: u32,
        error: sqlx::Error,
        shift: u32,
    },
    /// Setting up the transaction failed.
    Setup(sqlx::Error),
    Value {
        index: u32,
        error: ValueError,
    },
    /// A parameter's declared type does not exist on this target.
    Param {
        index: u32,
        message: String,
    },
    /// A result went past a byte budget: the statement is cancelled and
    /// the connection closed without COMMIT, so PostgreSQL rolls it back.
    Budget {
        index: u32,
        exceeded: Exceeded,
    },
    /// The caller went away or the deadline passed.
    Cancelled {
        index: Option<u32>,
    },
    /// Refused before anything of the caller's ran (a privileged reader
    /// login). Boxed: keeps every `Result<_, Stop>` small.
    Refused(Box<TargetFailure>),
}

impl Stop {
    /// The connection failed under the statement (as opposed to the server
    /// refusing it).
    fn lost_connection(&self) -> bool {
        match self {
            Self::Statement { error, .. } | Self::Setup(error) => {
                TargetFailure::from_sqlx(error).code == FailureCode::Unavailable
            }
            _ => false,
        }
    }
}

/// Runs `plan` on `target` and reports through `sink`. Never panics on
/// database input; every outcome ends with one `Finished` event, reported
/// to `observer` and noted on the current (`target`) span first.
pub(super) async fn run_target<E: RowEncoder>(
    registry: &Registry,
    plan: &Plan,
    target: &Target,
    access: Access,
    sink: EventSink<E::Row>,
    cancel: CancellationToken,
    observer: &dyn Observer,
) {
    let outcome = if access == Access::Refused {
        refused_outcome()
    } else {
        run_on_target::<E>(registry, plan, target, access, &sink, cancel).await
    };
    observer.target_finished(target, &outcome);
    note_on_span(&outcome);
    sink.send(TargetEvent::Finished(Box::new(outcome))).await;
}

/// The outcome on the current span: success, SQLSTATE (never the message,
/// which may quote a value), and the replica that ran it.
fn note_on_span(outcome: &TargetOutcome) {
    let span = tracing::Span::current();
    span.record("success", outcome.success);
    span.record("replica", outcome.replica.as_str());
    let sqlstate = outcome.error.as_ref().and_then(TargetFailure::sqlstate);
    if let Some(sqlstate) = sqlstate {
        span.record("sqlstate", sqlstate);
    }
    if !outcome.success {
        span.record("otel.status_code", "ERROR");
    }
    let code = outcome.error.as_ref().map_or("", |error| error.code.as_str());
    tracing::debug!(
        success = outcome.success,
        code,
        sqlstate = sqlstate.unwrap_or(""),
        elapsed_ms = outcome.duration.as_secs_f64() * 1000.0,
        "target finished"
    );
}

async fn run_on_target<E: RowEncoder>(
    registry: &Registry,
    plan: &Plan,
    target: &Target,
    access: Access,
    sink: &EventSink<E::Row>,
    cancel: CancellationToken,
) -> TargetOutcome {
    let started = Instant::now();
    let (mut checkout, set_up) = match begin(registry, plan, target, access, &cancel).await {
        Ok(begun) => begun,
        Err(None) => return cancelled_outcome(started, None, String::new()),
        Err(Some(failure)) => {
            return TargetOutcome {
                success: false,
                error: Some(failure),
                duration: started.elapsed(),
                failed_statement_index: None,
                outcome_unknown: false,
                replica: String::new(),
                skipped_replicas: Vec::new(),
                rows: 0,
            };
        }
    };
    // What sqlx had prepared before this call (see `reset`).
    let cached_before = checkout.connection_mut().cached_statements_size();
    let server = Server {
        registry,
        target,
        member: checkout.member.clone(),
        reader_login: checkout.reader_login,
    };
    let replica = match &server.member {
        Member::Primary => String::new(),
        Member::Replica(name) => name.clone(),
    };
    if !sink
        .send(TargetEvent::Started {
            replica: replica.clone(),
            skipped_replicas: checkout.lagging.clone(),
        })
        .await
    {
        cancel.cancel();
    }

    let commit_sent = AtomicBool::new(false);
    let rows = AtomicU64::new(0);
    let run = match set_up {
        Ok(SetUp {
            privileged: Some(login),
            ..
        }) => {
            let refusal = RegistryError::PrivilegedReaderLogin {
                target: target.clone(),
                member: server.member.clone(),
                login,
            };
            tracing::warn!(%target, member = %server.member, "reader_user is privileged; READER executions refused");
            // Nothing of the caller's ran (the cursor was declared, not
            // read): the reset rolls the transaction back.
            Run {
                result: Err(Stop::Refused(Box::new(TargetFailure::new(
                    FailureCode::FailedPrecondition,
                    refusal.to_string(),
                )))),
                completed: true,
                backend: None,
            }
        }
        Ok(set_up) => {
            run_to_the_end::<E>(
                &server,
                checkout.connection_mut(),
                (plan, set_up),
                access,
                sink,
                &cancel,
                (&commit_sent, &rows),
            )
            .await
        }
        // The caller's statement failed in the set-up's message: the
        // connection is as after any failed statement.
        Err(stop @ Stop::Statement { .. }) => Run {
            result: Err(stop),
            completed: true,
            backend: None,
        },
        Err(stop) => Run {
            result: Err(stop),
            completed: false,
            backend: None,
        },
    };
    let over_budget = matches!(run.result, Err(Stop::Budget { .. }));
    if over_budget && let Some(pid) = run.backend {
        // The statement may still be producing rows nobody will read: stop
        // it there rather than drain them through this connection.
        server.cancel_backend(pid).await;
    }
    // Over budget the connection is closed unread: without COMMIT,
    // PostgreSQL rolls the transaction back.
    let reusable = run.completed
        && !over_budget
        && reset(
            checkout.connection_mut(),
            run.result.is_ok(),
            cached_before,
            commits_with_reset(plan, access),
        )
        .await;
    let mut outcome = match run.result {
        Ok(()) => TargetOutcome {
            success: true,
            error: None,
            duration: started.elapsed(),
            failed_statement_index: None,
            outcome_unknown: false,
            replica,
            skipped_replicas: Vec::new(),
            rows: 0,
        },
        Err(stop) => failure_outcome(
            stop,
            started,
            replica,
            commit_sent.load(Ordering::Relaxed),
            run.completed,
        ),
    };
    outcome.skipped_replicas = std::mem::take(&mut checkout.lagging);
    outcome.rows = rows.load(Ordering::Relaxed);
    if !reusable {
        // Unknown state (broken connection, cancelled mid-protocol): never
        // hand it to the next caller.
        let _ = checkout.connection.detach().close().await;
    }
    outcome
}

/// A connection for `plan` on `target` with its transaction set up
/// ([`set_up`], which also says which backend runs it); `Err(None)` when
/// cancelled first.
///
/// Pools check only connections that sat idle (`check_after_idle`), so a
/// pooled connection may turn out broken here, at the first message. Nothing
/// of the plan has run then (and nothing commits without `COMMIT`): the
/// connection is closed and another taken, at most once per connection the
/// pool can hold, after which the pool has had to open a new one.
async fn begin(
    registry: &Registry,
    plan: &Plan,
    target: &Target,
    access: Access,
    cancel: &CancellationToken,
) -> Result<(Checkout, Result<SetUp, Stop>), Option<TargetFailure>> {
    let schema = plan.schema_for(target);
    let mut replaced: u32 = 0;
    loop {
        let mut checkout = acquire(registry, plan, target, cancel).await?;
        let reader_login = checkout.reader_login;
        let set_up = set_up(checkout.connection_mut(), plan, access, (&schema, reader_login)).await;
        // A backend ended while the connection sat idle answers the next
        // message with its FATAL (57P01…) or not at all.
        let broken = set_up.as_ref().is_err_and(|stop| match stop {
            Stop::Setup(error) => pgfleet_registry::is_unreachable(error),
            _ => false,
        });
        // The pool is looked up only for a broken connection: not on every call.
        let may_replace = || {
            registry
                .pool_of(target, &checkout.member, checkout.reader_login)
                .is_some_and(|pool| replaced < pool.options().get_max_connections())
        };
        if !broken || cancel.is_cancelled() || !may_replace() {
            return Ok((checkout, set_up));
        }
        tracing::debug!(%target, "a pooled connection was broken before the call began on it; replacing it");
        let _ = checkout.connection.detach().close().await;
        replaced += 1;
    }
}

/// A connection for `plan` on `target`: `Err(None)` when cancelled first.
async fn acquire(
    registry: &Registry,
    plan: &Plan,
    target: &Target,
    cancel: &CancellationToken,
) -> Result<Checkout, Option<TargetFailure>> {
    // A READER's execution never leaves its unprivileged login, whatever
    // the plan says about writing: the login is the guarantee.
    // The reader login's privileges are checked in `set_up`'s message.
    let route = if plan.reader_login {
        Route::ReaderLoginCheckedByCaller
    } else if plan.writes {
        Route::Write
    } else {
        Route::Read
    };
    let acquired = tokio::select! {
        acquired = registry.acquire(target, route) => acquired,
        () = cancel.cancelled() => return Err(None),
    };
    acquired.map_err(|error| {
        let code = match error {
            RegistryError::NoReaderLogin { .. } | RegistryError::PrivilegedReaderLogin { .. } => {
                FailureCode::FailedPrecondition
            }
            RegistryError::PoolExhausted { .. } => FailureCode::ResourceExhausted,
            _ => FailureCode::Unavailable,
        };
        Some(TargetFailure::new(code, error.to_string()))
    })
}

/// The server a checkout's connection is on, to cancel a statement from a
/// second connection of the same login.
struct Server<'a> {
    registry: &'a Registry,
    target: &'a Target,
    member: Member,
    reader_login: bool,
}

impl Server<'_> {
    /// Cancels `pid` from a second connection of the same login (a role may
    /// always cancel its own backends).
    /// Bounded by the pool's `acquire_timeout`: the driver's connect has no
    /// timeout of its own, and a server behind a dead network would hold the
    /// target's task, its pool slot and the caller's response for as long as
    /// the network stays dead.
    async fn cancel_backend(&self, pid: i32) {
        let target = self.target;
        let Some(pool) = self.registry.pool_of(target, &self.member, self.reader_login) else {
            return;
        };
        let options = pool.connect_options();
        let cancel = async {
            let mut connection = PgConnection::connect_with(&options).await?;
            let cancelled = sqlx::query_scalar::<_, bool>("SELECT pg_cancel_backend($1)")
                .bind(pid)
                .fetch_one(&mut connection)
                .await;
            let _ = connection.close().await;
            cancelled
        };
        match tokio::time::timeout(pool.options().get_acquire_timeout(), cancel).await {
            Ok(Ok(cancelled)) => tracing::debug!(%target, pid, cancelled, "cancelled the running statement"),
            Ok(Err(error)) => tracing::warn!(%target, %error, "could not cancel a statement"),
            Err(_) => {
                tracing::warn!(%target, pid, "could not reach the server in time to cancel a statement")
            }
        }
    }
}

/// How the statements of a plan ended on one connection.
struct Run {
    result: Result<(), Stop>,
    /// The work ran to its end (or to its error): the connection is in a
    /// known state and may be reset for reuse.
    completed: bool,
    /// The backend running the statements, once known.
    backend: Option<i32>,
}

/// Runs the statements until they end, the call is cancelled or the
/// deadline passes; then cancels the running statement on the server and
/// waits a little for the work to see it.
async fn run_to_the_end<E: RowEncoder>(
    server: &Server<'_>,
    connection: &mut PgConnection,
    (plan, set_up): (&Plan, SetUp),
    access: Access,
    sink: &EventSink<E::Row>,
    cancel: &CancellationToken,
    (commit_sent, rows): (&AtomicBool, &AtomicU64),
) -> Run {
    let backend_pid = set_up.backend_pid;
    let work = run_statements::<E>(connection, (plan, set_up), access, sink, (commit_sent, rows));
    tokio::pin!(work);
    // A backstop: statement_timeout should fire first.
    let deadline = tokio::time::sleep(plan.timeout + Duration::from_secs(1));
    tokio::pin!(deadline);
    let first = tokio::select! {
        result = &mut work => Some(result),
        () = cancel.cancelled() => None,
        () = &mut deadline => None,
    };
    if let Some(result) = first {
        return Run {
            result,
            completed: true,
            backend: Some(backend_pid),
        };
    }
    // The statement may still run on the server: cancel it there (from
    // another connection, as libpq does), then let the work see the error
    // and leave the connection in a known state.
    server.cancel_backend(backend_pid).await;
    let (result, completed) = match tokio::time::timeout(Duration::from_secs(5), &mut work).await {
        Ok(Ok(())) => (Ok(()), true),
        // The connection broke with COMMIT sent: no cancellation that surely
        // rolled back; `failure_outcome` records it as unknown.
        Ok(Err(stop @ Stop::Statement { .. }))
            if commit_sent.load(Ordering::Relaxed) && stop.lost_connection() =>
        {
            (Err(stop), true)
        }
        Ok(Err(
            Stop::Statement { index, .. }
            | Stop::Value { index, .. }
            | Stop::Param { index, .. }
            | Stop::Budget { index, .. },
        )) => (Err(Stop::Cancelled { index: Some(index) }), true),
        Ok(Err(_)) => (Err(Stop::Cancelled { index: None }), true),
        Err(_) => (Err(Stop::Cancelled { index: None }), false),
    };
    Run {
        result,
        completed,
        backend: Some(backend_pid),
    }
}

/// What [`set_up`] did on the connection.
#[derive(Debug)]
struct SetUp {
    /// The backend running the call (to cancel its statement).
    backend_pid: i32,
    /// The first statement's cursor is declared already.
    declared_first: bool,
    /// A reader login found privileged: nothing more may run.
    privileged: Option<Box<pgfleet_registry::LoginPrivileges>>,
}

/// Begins the transaction, sets `statement_timeout` and `search_path` (local
/// to the transaction when there is one; otherwise for the session, which
/// the reset undoes afterwards) and learns the backend's pid, in one
/// simple-query message: one round trip where the extended protocol took
/// six. No value in it comes from the caller unquoted: the timeout is a
/// number and the schema a string literal that PostgreSQL quotes as an
/// identifier.
///
/// When the first statement is a plain read without parameters, the same
/// message also declares its cursor ([`first_declared_here`]): the
/// extended protocol would take two more round trips (sqlx describes a
/// statement before it binds it). The caller's text is one statement the
/// validator parsed whole, after `BEGIN READ ONLY` (or the audited `BEGIN`)
/// and the settings, so it runs exactly as the cursor's own `DECLARE` would;
/// its errors, with their positions, are the statement's.
///
/// On a reader login the same `SELECT` also reads the login's privileges
/// ([`pgfleet_registry::login_privileges_columns`], one more round trip
/// otherwise); a privileged login runs nothing of the caller's: a `DECLARE`
/// in the message only plans the cursor, whose query runs at its first
/// `FETCH`, and the transaction is rolled back.
async fn set_up(
    connection: &mut PgConnection,
    plan: &Plan,
    access: Access,
    (schema, reader_login): (&str, bool),
) -> Result<SetUp, Stop> {
    let begin = match (plan.transactional, access) {
        (false, _) => "",
        (true, Access::ReadWrite | Access::Prepare(_)) => "BEGIN; ",
        (true, Access::ReadOnly | Access::Refused) => "BEGIN READ ONLY; ",
    };
    let schema = string_literal(schema).ok_or_else(|| {
        Stop::Setup(sqlx::Error::Protocol(
            "the schema name contains a NUL character".to_owned(),
        ))
    })?;
    let timeout_ms = plan.timeout.as_millis();
    let local = plan.transactional;
    let mut setup = format!(
        "{begin}SELECT pg_catalog.pg_backend_pid(), \
         pg_catalog.set_config('statement_timeout', '{timeout_ms}', {local}), \
         pg_catalog.set_config('search_path', pg_catalog.quote_ident({schema}), {local})"
    );
    if reader_login {
        setup.push_str(", ");
        setup.push_str(pgfleet_registry::login_privileges_columns());
    }
    let first = first_declared_here(plan);
    let mut shift = 0;
    if let Some(first) = first {
        setup.push_str("; ");
        setup.push_str(&declare_prefix());
        shift = u32::try_from(setup.chars().count()).unwrap_or(0);
        setup.push_str(&first.text);
    }
    // Every result read (not `fetch_one`): an error of the DECLARE comes
    // after the settings' row.
    let rows = sqlx::raw_sql(sqlx::AssertSqlSafe(setup))
        .fetch_all(&mut *connection)
        .await
        .map_err(|error| match (first, &error) {
            (Some(first), sqlx::Error::Database(_)) if !pgfleet_registry::is_unreachable(&error) => {
                Stop::Statement {
                    index: first.index,
                    error,
                    shift,
                }
            }
            _ => Stop::Setup(error),
        })?;
    let row = rows.first().ok_or(Stop::Setup(sqlx::Error::RowNotFound))?;
    let backend_pid = row.try_get(0).map_err(Stop::Setup)?;
    let privileged = if reader_login {
        let user: String = row.try_get(3).map_err(Stop::Setup)?;
        let excess: Vec<String> = row.try_get(4).map_err(Stop::Setup)?;
        (!excess.is_empty()).then(|| Box::new(pgfleet_registry::LoginPrivileges { user, excess }))
    } else {
        None
    };
    Ok(SetUp {
        backend_pid,
        declared_first: first.is_some(),
        privileged,
    })
}

/// The first statement, when [`set_up`] declares its cursor: a plain read
/// in a transaction, with no parameters and no `$` in its text (a `$1`
/// without parameters is refused differently by the simple protocol; a
/// dollar-quoted text simply takes the usual path).
fn first_declared_here(plan: &Plan) -> Option<&PlannedStatement> {
    let first = plan.statements.first()?;
    (plan.transactional && first.cursorable && first.params.is_empty() && !first.text.contains('$'))
        .then_some(first)
}

/// The text put before a statement to declare its cursor.
fn declare_prefix() -> String {
    format!("DECLARE {CURSOR} NO SCROLL CURSOR FOR ")
}

/// `text` as an SQL string literal in escape syntax (`E'...'`, as libpq's
/// `PQescapeLiteral` writes it), whose meaning does not depend on
/// `standard_conforming_strings`; none for text with a NUL, which no
/// PostgreSQL string can hold.
fn string_literal(text: &str) -> Option<String> {
    if text.contains('\0') {
        return None;
    }
    let mut literal = String::with_capacity(text.len() + 3);
    literal.push_str("E'");
    for c in text.chars() {
        match c {
            '\'' => literal.push_str("''"),
            '\\' => literal.push_str("\\\\"),
            c => literal.push(c),
        }
    }
    literal.push('\'');
    Some(literal)
}

/// Ends any open transaction and resets the session
/// ([`pgfleet_registry::reset_session`]: role, settings, LISTEN, advisory
/// locks, cursors, temp tables, a caller's prepared statements, and every
/// statement sqlx prepared during the call). False when the connection must
/// not be reused.
async fn reset(
    connection: &mut PgConnection,
    succeeded: bool,
    cached_before: usize,
    commit_read_only: bool,
) -> bool {
    if !succeeded {
        // Harmless outside a transaction (a warning only).
        if sqlx::raw_sql("ROLLBACK").execute(&mut *connection).await.is_err() {
            return false;
        }
    }
    pgfleet_registry::reset_session(connection, cached_before, succeeded && commit_read_only).await
}

/// A `READ ONLY` transaction is committed by the reset's own message (one
/// round trip for both; see [`pgfleet_registry::reset_session`]): its rows
/// are all read by then, and its `COMMIT` decides nothing.
fn commits_with_reset(plan: &Plan, access: Access) -> bool {
    plan.transactional && access == Access::ReadOnly
}

/// Runs every statement of the plan, in one transaction unless the plan says
/// otherwise.
async fn run_statements<E: RowEncoder>(
    connection: &mut PgConnection,
    (plan, set_up): (&Plan, SetUp),
    access: Access,
    sink: &EventSink<E::Row>,
    (commit_sent, rows): (&AtomicBool, &AtomicU64),
) -> Result<(), Stop> {
    // `set_up` began the transaction (and may have declared the first
    // statement's cursor).
    for (position, statement) in plan.statements.iter().enumerate() {
        let declared = position == 0 && set_up.declared_first;
        let done = run_statement::<E>(connection, plan, (statement, declared), sink).await?;
        rows.fetch_add(done, Ordering::Relaxed);
    }
    if plan.transactional && !commits_with_reset(plan, access) {
        // PREPARE, like COMMIT, may have taken effect if the connection is
        // lost once it was sent: the same "outcome unknown".
        let end = match access {
            Access::Prepare(execution) => {
                format!("PREPARE TRANSACTION '{}'", super::gid::gid(execution, sink.index))
            }
            _ => "COMMIT".to_owned(),
        };
        commit_sent.store(true, Ordering::Relaxed);
        sqlx::raw_sql(sqlx::AssertSqlSafe(end))
            .execute(&mut *connection)
            .await
            .map_err(|error| Stop::Statement {
                index: plan.statements.last().map_or(0, |s| s.index),
                error,
                shift: 0,
            })?;
    }
    Ok(())
}

async fn run_statement<E: RowEncoder>(
    connection: &mut PgConnection,
    plan: &Plan,
    (statement, declared): (&PlannedStatement, bool),
    sink: &EventSink<E::Row>,
) -> Result<u64, Stop> {
    let index = statement.index;
    let started = Instant::now();
    let (arguments, types) = bind_params(connection, statement).await?;
    let (tag, rows_affected, truncated) = if statement.cursorable {
        let cursor = if declared {
            Cursor::Declared
        } else {
            Cursor::Declare(arguments)
        };
        read_through_cursor::<E>(connection, plan, statement, cursor, sink).await?
    } else {
        read_direct::<E>(connection, plan, statement, arguments, &types, sink).await?
    };
    sink.send(TargetEvent::StatementDone(StatementOutcome {
        index,
        command_tag: command_tag(&tag, rows_affected),
        rows_affected,
        duration: started.elapsed(),
        truncated,
    }))
    .await;
    Ok(rows_affected)
}

/// Rows of the first FETCH, before any row size is known: small, so a
/// result of huge rows never arrives many at a time.
const FIRST_FETCH_ROWS: usize = 8;

/// Rows arrived but not yet sent, with the size estimated for each.
#[derive(Default)]
struct Held {
    rows: Vec<PgRow>,
    estimates: Vec<u64>,
    bytes: u64,
}

impl Held {
    /// Admits `row` under `budgets` and holds it.
    fn push(&mut self, row: PgRow, budgets: &Budgets) -> Result<u64, Exceeded> {
        let bytes = row_bytes(&row);
        budgets.admit(bytes, self.bytes)?;
        self.rows.push(row);
        self.estimates.push(bytes);
        self.bytes += bytes;
        Ok(bytes)
    }

    /// Lets go of rows past `keep` (cut by the row cap), refunding them.
    fn truncate(&mut self, keep: usize, budgets: &Budgets) -> Result<(), Exceeded> {
        if keep >= self.rows.len() {
            return Ok(());
        }
        let dropped: u64 = self.estimates[keep..].iter().sum();
        self.rows.truncate(keep);
        self.estimates.truncate(keep);
        self.bytes -= dropped;
        budgets.settle(dropped, 0)
    }
}

/// Whether a read's cursor is still to declare.
enum Cursor {
    /// Declared by [`set_up`] in its message.
    Declared,
    /// To declare with these arguments.
    Declare(PgArguments),
}

/// A plain read: DECLARE a cursor and FETCH it in batches whose row count
/// follows the size of the rows seen, each row admitted under the budgets
/// as it arrives.
///
/// Both go through sqlx's named statements, which the reset closes since
/// the call prepared them: a caller's text must not outlive the call, and a
/// FETCH's description is its cursor's. Not the unnamed statement: sqlx
/// looks up an unknown column type (an enum, a composite) between the
/// statement's Parse and its Bind, with queries that destroy it (SQLSTATE
/// 26000, seen in `every_type_comes_back_as_psql_prints_it`).
async fn read_through_cursor<E: RowEncoder>(
    connection: &mut PgConnection,
    plan: &Plan,
    statement: &PlannedStatement,
    cursor: Cursor,
    sink: &EventSink<E::Row>,
) -> Result<(String, u64, bool), Stop> {
    let index = statement.index;
    let fail = |error| Stop::Statement {
        index,
        error,
        shift: 0,
    };
    let over = |exceeded| Stop::Budget { index, exceeded };
    let budgets = &plan.budgets;
    if let Cursor::Declare(arguments) = cursor {
        let prefix = declare_prefix();
        let shift = u32::try_from(prefix.chars().count()).unwrap_or(0);
        sqlx::query_with(
            sqlx::AssertSqlSafe(format!("{prefix}{}", statement.text)),
            arguments,
        )
        .execute(&mut *connection)
        .await
        .map_err(|error| Stop::Statement { index, error, shift })?;
    }
    let mut shape: Option<ResultShape> = None;
    let mut total: u64 = 0;
    let mut truncated = false;
    let mut fetch_rows = plan.batch_size.min(FIRST_FETCH_ROWS);
    loop {
        let fetch_sql = format!("FETCH FORWARD {fetch_rows} FROM {CURSOR}");
        let mut held = Held::default();
        let mut largest: u64 = 0;
        {
            // Row by row, not fetch_all: a row past a budget stops the read
            // before the next one is held.
            let mut stream = sqlx::query(sqlx::AssertSqlSafe(fetch_sql.clone())).fetch(&mut *connection);
            while let Some(row) = stream.try_next().await.map_err(fail)? {
                largest = largest.max(held.push(row, budgets).map_err(over)?);
            }
        }
        if shape.is_none() {
            let described = match held.rows.first() {
                Some(row) => ResultShape::of(row.columns(), connection).await.map_err(fail)?,
                // No row to learn the columns from: describe the cursor.
                None => describe(connection, &fetch_sql).await,
            };
            sink.send(TargetEvent::Header {
                statement: index,
                columns: described.columns.clone(),
            })
            .await;
            shape = Some(described);
        }
        let fetched = held.rows.len();
        if let Some(limit) = plan.row_limit {
            let room = usize::try_from(limit.saturating_sub(total)).unwrap_or(usize::MAX);
            truncated = fetched > room;
            held.truncate(room, budgets).map_err(over)?;
        }
        let kept = held.rows.len();
        if let Some(shape) = &shape
            && kept > 0
        {
            send_held::<E>(connection, plan, shape, held, index, sink).await?;
            total += kept as u64;
        }
        if truncated || fetched < fetch_rows {
            break;
        }
        fetch_rows = next_fetch_rows(plan, largest);
    }
    // COMMIT closes the cursor of the transaction's last statement; another
    // statement may declare it again.
    let last = plan.statements.last().map(|last| last.index) == Some(index);
    if !(plan.transactional && last) {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CLOSE {CURSOR}")))
            .execute(&mut *connection)
            .await
            .map_err(fail)?;
    }
    Ok(("SELECT".to_owned(), total, truncated))
}

/// Rows of the next FETCH: as many rows as the largest seen fit in a batch,
/// at least one, at most the batch size.
fn next_fetch_rows(plan: &Plan, largest_row: u64) -> usize {
    let fit = plan.budgets.batch_bytes / largest_row.max(1);
    usize::try_from(fit)
        .unwrap_or(usize::MAX)
        .clamp(1, plan.batch_size.max(1))
}

/// Any other statement (writes with RETURNING, SHOW, EXPLAIN, FETCH from
/// the caller's cursor, SELECT ... FOR UPDATE): its columns are learnt by
/// preparing it first, so its rows go out in batches while it still runs
/// instead of being held whole. Rows of a shape PostgreSQL must render wait
/// for the end of the statement (the connection is busy until then), within
/// the hold budget.
async fn read_direct<E: RowEncoder>(
    connection: &mut PgConnection,
    plan: &Plan,
    statement: &PlannedStatement,
    arguments: PgArguments,
    types: &[PgTypeInfo],
    sink: &EventSink<E::Row>,
) -> Result<(String, u64, bool), Stop> {
    let index = statement.index;
    let fail = |error| Stop::Statement {
        index,
        error,
        shift: 0,
    };
    let over = |exceeded| Stop::Budget { index, exceeded };
    let budgets = &plan.budgets;
    let mut shape: Option<ResultShape> = None;
    if returns_rows(&statement.command) {
        // Prepared under another text than the one executed (sqlx caches by
        // text), with the same parameter types, so it fails exactly when the
        // execution would; the suffix keeps error positions.
        let prepared = (&mut *connection)
            .prepare_with(
                sqlx::AssertSqlSafe(format!("{}\n", statement.text)).into_sql_str(),
                types,
            )
            .await
            .map_err(fail)?;
        if !prepared.columns().is_empty() {
            match ResultShape::of(prepared.columns(), connection).await {
                Ok(described) => {
                    sink.send(TargetEvent::Header {
                        statement: index,
                        columns: described.columns.clone(),
                    })
                    .await;
                    shape = Some(described);
                }
                Err(error) => tracing::debug!(%error, "could not describe a result before running it"),
            }
        }
    }
    let streams = shape.as_ref().is_some_and(|shape| !shape.renders_on_server());
    let mut held = Held::default();
    let mut returned: u64 = 0;
    let mut affected: u64 = 0;
    let mut truncated = false;
    {
        // fetch_many sees both rows and counts. Its deprecation is about
        // several statements in one text, which pgfleet never sends.
        #[allow(deprecated)]
        let mut results = sqlx::query_with(sqlx::AssertSqlSafe(statement.text.clone()), arguments)
            .fetch_many(&mut *connection);
        while let Some(item) = results.try_next().await.map_err(fail)? {
            let row = match item {
                Either::Left(done) => {
                    affected += PgQueryResult::rows_affected(&done);
                    continue;
                }
                Either::Right(row) => row,
            };
            returned += 1;
            // Past the row cap a row is counted, never held.
            if plan.row_limit.is_some_and(|limit| returned > limit) {
                truncated = true;
                continue;
            }
            held.push(row, budgets).map_err(over)?;
            if let Some(shape) = shape.as_ref().filter(|_| streams)
                && (held.bytes >= budgets.batch_bytes || held.rows.len() >= plan.batch_size)
            {
                let batch = std::mem::take(&mut held);
                let converted = shape
                    .convert_plain::<E>(&batch.rows)
                    .map_err(|error| Stop::Value { index, error })?;
                drop(batch.rows);
                send_converted::<E>(plan, converted, batch.bytes, index, sink).await?;
            }
        }
    }
    let shape = match shape {
        Some(shape) => shape,
        None => match held.rows.first() {
            Some(row) => {
                let described = ResultShape::of(row.columns(), connection).await.map_err(fail)?;
                sink.send(TargetEvent::Header {
                    statement: index,
                    columns: described.columns.clone(),
                })
                .await;
                described
            }
            None => ResultShape::empty(),
        },
    };
    if !shape.columns.is_empty() && !held.rows.is_empty() {
        send_held::<E>(connection, plan, &shape, held, index, sink).await?;
    }
    let count = if affected == 0 { returned } else { affected };
    Ok((statement.command.clone(), count, truncated))
}

/// Converts and sends `held` in batches of at most `query.max_batch_bytes`
/// (by estimate, then exactly), letting go of each batch's raw rows once
/// converted.
async fn send_held<E: RowEncoder>(
    connection: &mut PgConnection,
    plan: &Plan,
    shape: &ResultShape,
    held: Held,
    index: u32,
    sink: &EventSink<E::Row>,
) -> Result<(), Stop> {
    let batch_bytes = plan.budgets.batch_bytes;
    let batch_rows = plan.batch_size.max(1);
    let mut rows = held.rows.into_iter();
    let mut estimates = held.estimates.into_iter().peekable();
    loop {
        let mut chunk = Vec::new();
        let mut estimated = 0_u64;
        while let Some(&next) = estimates.peek() {
            if !chunk.is_empty() && (estimated + next > batch_bytes || chunk.len() >= batch_rows) {
                break;
            }
            let Some(row) = rows.next() else { break };
            estimates.next();
            estimated += next;
            chunk.push(row);
        }
        if chunk.is_empty() {
            return Ok(());
        }
        let converted = shape
            .convert::<E>(&chunk, connection)
            .await
            .map_err(|error| Stop::Value { index, error })?;
        drop(chunk);
        send_converted::<E>(plan, converted, estimated, index, sink).await?;
    }
}

/// Settles the response budget with the rows' exact size and sends them,
/// split so no message carries more than `query.max_batch_bytes` of rows.
async fn send_converted<E: RowEncoder>(
    plan: &Plan,
    converted: Vec<E::Row>,
    estimated: u64,
    index: u32,
    sink: &EventSink<E::Row>,
) -> Result<(), Stop> {
    let exact: u64 = converted.iter().map(E::encoded_len).sum();
    plan.budgets
        .settle(estimated, exact)
        .map_err(|exceeded| Stop::Budget { index, exceeded })?;
    for rows in split_by_bytes(
        converted,
        E::encoded_len,
        plan.budgets.batch_bytes,
        plan.batch_size.max(1),
    ) {
        sink.send(TargetEvent::Rows {
            statement: index,
            rows,
        })
        .await;
    }
    Ok(())
}

/// The statement's parameters. A parameter with a type name is converted
/// to that type by PostgreSQL on this target (`CAST($1 AS type)`, the
/// type's own input function for text) and bound in that type's binary
/// form, so the statement sees exactly the declared type.
async fn bind_params(
    connection: &mut PgConnection,
    statement: &PlannedStatement,
) -> Result<(PgArguments, Vec<PgTypeInfo>), Stop> {
    let index = statement.index;
    let fail = |error| Stop::Statement {
        index,
        error,
        shift: 0,
    };
    let mut arguments = PgArguments::default();
    // The type of each bound value, as sqlx sends it with the statement.
    let mut types = Vec::with_capacity(statement.params.len());
    for (position, param) in statement.params.iter().enumerate() {
        let Some(type_name) = &param.type_name else {
            param.value.bind(&mut arguments).map_err(fail)?;
            types.push(param.value.type_info());
            continue;
        };
        let resolved: (Option<Oid>, Option<String>) =
            sqlx::query_as("SELECT to_regtype($1)::oid, format_type(to_regtype($1), NULL)")
                .bind(type_name)
                .fetch_one(&mut *connection)
                .await
                .map_err(fail)?;
        let (Some(oid), Some(canonical)) = resolved else {
            return Err(Stop::Param {
                index,
                message: format!(
                    "{}[{position}].type_name: no type {type_name:?} on this target",
                    statement.params_field
                ),
            });
        };
        types.push(PgTypeInfo::with_oid(oid));
        if matches!(param.value, ParamValue::Null) {
            arguments
                .add(RawValue {
                    oid: oid.0,
                    bytes: None,
                })
                .map_err(|e| fail(sqlx::Error::Encode(e)))?;
            continue;
        }
        // `canonical` is PostgreSQL's own quoted rendering of an existing
        // type, not the caller's text.
        let mut cast_arguments = PgArguments::default();
        param.value.bind(&mut cast_arguments).map_err(fail)?;
        let row = sqlx::query_with(
            sqlx::AssertSqlSafe(format!("SELECT CAST($1 AS {canonical})")),
            cast_arguments,
        )
        .persistent(false)
        .fetch_one(&mut *connection)
        .await
        .map_err(fail)?;
        let value = row.try_get_raw(0).map_err(fail)?;
        let bytes = value
            .as_bytes()
            .map_err(|e| fail(sqlx::Error::Decode(e)))?
            .to_vec();
        arguments
            .add(RawValue {
                oid: oid.0,
                bytes: Some(&bytes),
            })
            .map_err(|e| fail(sqlx::Error::Encode(e)))?;
    }
    Ok((arguments, types))
}

/// Commands that may return rows even when none came back.
fn returns_rows(command: &str) -> bool {
    matches!(
        command,
        "SELECT" | "INSERT" | "UPDATE" | "DELETE" | "MERGE" | "SHOW" | "EXPLAIN" | "FETCH"
    )
}

/// The columns of `sql` without running it, for results with no rows.
/// sqlx cannot describe some types (multiranges); then the header is left
/// empty rather than failing a statement that succeeded.
async fn describe(connection: &mut PgConnection, sql: &str) -> ResultShape {
    let described = (&mut *connection)
        .describe(sqlx::AssertSqlSafe(sql.to_owned()).into_sql_str())
        .await;
    match described {
        Ok(description) => ResultShape::of(description.columns(), connection)
            .await
            .unwrap_or_else(|_| ResultShape::empty()),
        Err(error) => {
            tracing::debug!(%error, "could not describe an empty result");
            ResultShape::empty()
        }
    }
}

/// PostgreSQL's command tag, rebuilt (sqlx does not expose the server's):
/// `INSERT 0 n`, `UPDATE n`, `SELECT n`, or the bare command for DDL.
fn command_tag(command: &str, rows: u64) -> String {
    match command {
        "INSERT" => format!("INSERT 0 {rows}"),
        "UPDATE" | "DELETE" | "MERGE" | "SELECT" | "FETCH" | "MOVE" | "COPY" => format!("{command} {rows}"),
        other => other.to_owned(),
    }
}

/// A non-transactional statement without an audit record: not run (see
/// [`super::dispatch`]); no connection was taken.
fn refused_outcome() -> TargetOutcome {
    TargetOutcome {
        success: false,
        error: Some(TargetFailure::new(
            FailureCode::Internal,
            "not run: a statement that cannot run in a transaction block must be on record, and this execution is not",
        )),
        duration: Duration::ZERO,
        failed_statement_index: None,
        outcome_unknown: false,
        replica: String::new(),
        skipped_replicas: Vec::new(),
        rows: 0,
    }
}

fn cancelled_outcome(started: Instant, index: Option<u32>, replica: String) -> TargetOutcome {
    TargetOutcome {
        success: false,
        error: Some(TargetFailure::new(
            FailureCode::Cancelled,
            "cancelled: the call was cancelled or its deadline passed; the statement was cancelled on the server",
        )),
        duration: started.elapsed(),
        failed_statement_index: index,
        outcome_unknown: false,
        replica,
        skipped_replicas: Vec::new(),
        rows: 0,
    }
}

/// `completed`: the work ended on its own (see [`Run::completed`]); when it
/// did not after COMMIT was sent, the server may have committed.
fn failure_outcome(
    stop: Stop,
    started: Instant,
    replica: String,
    commit_sent: bool,
    completed: bool,
) -> TargetOutcome {
    let (index, error) = match stop {
        Stop::Cancelled { index } if commit_sent && !completed => {
            return TargetOutcome {
                outcome_unknown: true,
                error: Some(TargetFailure::new(
                    FailureCode::Cancelled,
                    "cancelled while COMMIT was in flight, and the server did not answer: whether the \
                     transaction committed is not known",
                )),
                ..cancelled_outcome(started, index, replica)
            };
        }
        Stop::Cancelled { index } => return cancelled_outcome(started, index, replica),
        Stop::Setup(error) => (None, TargetFailure::from_sqlx(&error)),
        Stop::Refused(failure) => (None, *failure),
        Stop::Statement { index, error, shift } => {
            let mut error = TargetFailure::from_sqlx(&error);
            if let Some(postgres) = error.postgres.as_mut()
                && postgres.position > shift
            {
                postgres.position -= shift;
            }
            (Some(index), error)
        }
        Stop::Param { index, message } => (
            Some(index),
            TargetFailure::new(FailureCode::InvalidArgument, message),
        ),
        Stop::Value { index, error } => (
            Some(index),
            TargetFailure::new(FailureCode::Internal, error.to_string()),
        ),
        Stop::Budget { index, exceeded } => (
            Some(index),
            TargetFailure::new(
                FailureCode::ResourceExhausted,
                format!(
                    "statement {index}: {exceeded}; the statement was cancelled and its transaction rolled back"
                ),
            ),
        ),
    };
    // Lost after COMMIT was sent: it may or may not have committed.
    let outcome_unknown = commit_sent && error.code == FailureCode::Unavailable;
    TargetOutcome {
        success: false,
        error: Some(error),
        duration: started.elapsed(),
        failed_statement_index: index,
        outcome_unknown,
        replica,
        skipped_replicas: Vec::new(),
        rows: 0,
    }
}
