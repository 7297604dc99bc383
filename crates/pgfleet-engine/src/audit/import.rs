//! Records whose work was over before pgfleet wrote them: the old system's
//! query history imported by `pgfleet import-legacy` (kind
//! `IMPORTED_QUERY`), and the import's own record (`LEGACY_IMPORT`).
//!
//! They are inserted closed, with the times given, in the caller's
//! transaction, and linked like any record (opening and closing link, same
//! canonical content, same keys) by [`chain::append_all`], after the
//! current head: the import's opening link, then each imported record's
//! two links in the order given, then the import's closing link. The head
//! is locked only for that last step, so an import blocks live executions'
//! audit writes for as short a time as possible.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use sqlx::types::Json;
use uuid::Uuid;

use super::chain;
use super::record::{LinkKind, execution_columns};
use super::{AuditError, AuditLog, ExecutionRow, Kind, RecordedOutcome, RecordedTarget, Status, TargetScope};
use crate::identity::Role;

/// Who a closed record says acted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordActor {
    /// A user of the old system: the pgfleet account it became, when it
    /// did (not when its name belongs to another pgfleet user).
    User { id: Option<Uuid>, username: String },
    /// pgfleet itself (`import-legacy`), or an old row without a user.
    System(String),
}

/// A record written already closed.
#[derive(Debug, Clone)]
pub struct ClosedRecord {
    pub id: Uuid,
    pub kind: Kind,
    pub actor: RecordActor,
    pub role: Role,
    pub query: String,
    pub query_redacted: bool,
    pub fingerprint: String,
    pub statement_classes: Vec<String>,
    pub database: String,
    pub scope: TargetScope,
    pub targets: Vec<RecordedTarget>,
    /// `None`: the start of the writing transaction.
    pub started_at: Option<DateTime<Utc>>,
    /// `None`: when the row is written.
    pub finished_at: Option<DateTime<Utc>>,
    pub status: Status,
    pub success: bool,
    pub outcomes: Vec<RecordedOutcome>,
}

/// Inserts `import` and `records`, closed, and links them after the head:
/// `import` brackets `records` in the chain. Everything happens in the
/// caller's transaction: nothing is on the chain unless it commits.
pub async fn write(
    connection: &mut PgConnection,
    log: &AuditLog,
    import: &ClosedRecord,
    records: &[ClosedRecord],
) -> Result<(), AuditError> {
    let import_row = insert(connection, log.writer_id(), import).await?;
    let mut rows = Vec::with_capacity(records.len());
    for record in records {
        rows.push(insert(connection, log.writer_id(), record).await?);
    }
    let mut links: Vec<(&ExecutionRow, LinkKind)> = Vec::with_capacity(rows.len() * 2 + 2);
    links.push((&import_row, LinkKind::Opened));
    for row in &rows {
        links.push((row, LinkKind::Opened));
        links.push((row, LinkKind::Closed));
    }
    links.push((&import_row, LinkKind::Closed));
    chain::append_all(connection, log.keys(), &links).await?;
    Ok(())
}

/// Inserts one closed record; the row as stored is what its links hash.
async fn insert(
    connection: &mut PgConnection,
    writer_id: Uuid,
    record: &ClosedRecord,
) -> Result<ExecutionRow, AuditError> {
    let (actor_kind, user_id, username, system) = match &record.actor {
        RecordActor::User { id, username } => ("user", *id, Some(username.as_str()), None),
        RecordActor::System(name) => ("system", None, None, Some(name.as_str())),
    };
    Ok(sqlx::query_as(concat!(
        "INSERT INTO pgfleet.executions AS e (id, kind, actor_kind, actor_user_id, actor_username, \
         actor_system, actor_role, query, query_redacted, fingerprint, statement_classes, database, scope, \
         targets, read_only, confirmed_dangerous, writer_id, started_at, finished_at, status, success, \
         outcomes) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, false, false, $15, \
         coalesce($16, now()), coalesce($17, clock_timestamp()), $18, $19, $20) RETURNING ",
        execution_columns!()
    ))
    .bind(record.id)
    .bind(record.kind.as_str())
    .bind(actor_kind)
    .bind(user_id)
    .bind(username)
    .bind(system)
    .bind(record.role.as_str())
    .bind(&record.query)
    .bind(record.query_redacted)
    .bind(&record.fingerprint)
    .bind(&record.statement_classes)
    .bind(&record.database)
    .bind(record.scope.as_str())
    .bind(Json(&record.targets))
    .bind(writer_id)
    .bind(record.started_at)
    .bind(record.finished_at)
    .bind(record.status.as_str())
    .bind(record.success)
    .bind(Json(&record.outcomes))
    .fetch_one(&mut *connection)
    .await?)
}
