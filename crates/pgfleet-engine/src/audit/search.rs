//! Reading the audit trail: one filter, applied the same way to pages,
//! counts, single records and exports, always narrowed to what the caller
//! may see.
//!
//! The SQL is static (every filter is a parameter that may be NULL), so
//! there is no string building and no injection surface.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use super::AuditError;
use super::chain::Link;
use super::record::{ExecutionRow, execution_columns};
use crate::identity::{Identity, Principal, Role};

/// Whose records a caller may read: MASTER users everything; other users
/// their own; API keys the executions made with that key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Visibility {
    user_id: Option<Uuid>,
    api_key_id: Option<Uuid>,
}

impl Visibility {
    pub fn of(identity: &Identity) -> Self {
        match &identity.principal {
            Principal::User { .. } if identity.role == Role::Master => Self::default(),
            Principal::User { id, .. } => Self {
                user_id: Some(*id),
                api_key_id: None,
            },
            Principal::ApiKey { id, .. } => Self {
                user_id: None,
                api_key_id: Some(*id),
            },
        }
    }
}

/// Which records; `None` fields do not filter.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub database: Option<String>,
    pub cloud: Option<String>,
    pub username: Option<String>,
    pub success: Option<bool>,
    /// Stored class name (`WRITE`).
    pub statement_class: Option<String>,
    pub start_time: Option<DateTime<Utc>>,
    pub end_time: Option<DateTime<Utc>>,
    pub query_contains: Option<String>,
    /// Stored status name (`FAILED`).
    pub status: Option<String>,
    /// Stored kind name (`QUERY`).
    pub kind: Option<String>,
    pub api_key_id: Option<Uuid>,
    pub fingerprint: Option<String>,
}

/// A record with its chain links.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StoredExecution {
    #[sqlx(flatten)]
    pub row: ExecutionRow,
    opened_sequence: Option<i64>,
    opened_hash: Option<String>,
    opened_prev_hash: Option<String>,
    closed_sequence: Option<i64>,
    closed_hash: Option<String>,
    closed_prev_hash: Option<String>,
}

impl StoredExecution {
    /// About what the record weighs on the wire: its texts plus a generous
    /// allowance per target, outcome and finding.
    pub fn approximate_bytes(&self) -> u64 {
        let row = &self.row;
        let texts = row.query.len() + row.fingerprint.len() + row.database.len() + row.client_address.len();
        let parts = row.targets.0.len() + row.outcomes.0.len() * 2 + row.findings.0.len();
        (1024 + texts + parts * 256) as u64
    }

    pub fn opened(&self) -> Option<Link> {
        link(&self.opened_sequence, &self.opened_hash, &self.opened_prev_hash)
    }

    pub fn closed(&self) -> Option<Link> {
        link(&self.closed_sequence, &self.closed_hash, &self.closed_prev_hash)
    }
}

fn link(sequence: &Option<i64>, hash: &Option<String>, prev_hash: &Option<String>) -> Option<Link> {
    Some(Link {
        sequence: (*sequence)?,
        hash: hash.clone()?,
        prev_hash: prev_hash.clone()?,
    })
}

/// Where the previous page ended (newest first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageCursor {
    pub started_at: DateTime<Utc>,
    pub id: Uuid,
}

/// Records with their links: `SELECT` list and joins, `e` the record.
macro_rules! stored_select {
    () => {
        concat!(
            "SELECT ",
            execution_columns!(),
            ", o.sequence AS opened_sequence, o.hash AS opened_hash, o.prev_hash AS opened_prev_hash, \
             c.sequence AS closed_sequence, c.hash AS closed_hash, c.prev_hash AS closed_prev_hash \
             FROM pgfleet.executions e \
             LEFT JOIN pgfleet.audit_chain o ON o.execution_id = e.id AND o.link = 'opened' \
             LEFT JOIN pgfleet.audit_chain c ON c.execution_id = e.id AND c.link = 'closed' "
        )
    };
}

/// The visibility and filter condition; parameters `$1`..`$14`, bound by
/// [`bind_filter!`] in this order.
macro_rules! filter_condition {
    () => {
        "($1::uuid IS NULL OR e.actor_user_id = $1) \
         AND ($2::uuid IS NULL OR e.actor_api_key_id = $2) \
         AND ($3::text IS NULL OR e.database = $3) \
         AND ($4::text IS NULL OR e.targets @> jsonb_build_array(jsonb_build_object('cloud', $4::text))) \
         AND ($5::text IS NULL OR e.actor_username = $5) \
         AND ($6::bool IS NULL OR e.success = $6) \
         AND ($7::text IS NULL OR e.statement_classes @> ARRAY[$7::text]) \
         AND ($8::timestamptz IS NULL OR e.started_at >= $8) \
         AND ($9::timestamptz IS NULL OR e.started_at < $9) \
         AND ($10::text IS NULL OR e.query ILIKE '%' || $10::text || '%' ESCAPE '\\') \
         AND ($11::text IS NULL OR e.status = $11) \
         AND ($12::text IS NULL OR e.kind = $12) \
         AND ($13::uuid IS NULL OR e.actor_api_key_id = $13) \
         AND ($14::text IS NULL OR e.fingerprint = $14)"
    };
}

macro_rules! bind_filter {
    ($query:expr, $visibility:expr, $filter:expr) => {
        $query
            .bind($visibility.user_id)
            .bind($visibility.api_key_id)
            .bind(&$filter.database)
            .bind(&$filter.cloud)
            .bind(&$filter.username)
            .bind($filter.success)
            .bind(&$filter.statement_class)
            .bind($filter.start_time)
            .bind($filter.end_time)
            .bind($filter.query_contains.as_deref().map(escape_like))
            .bind(&$filter.status)
            .bind(&$filter.kind)
            .bind($filter.api_key_id)
            .bind(&$filter.fingerprint)
    };
}

/// `text` as a literal inside an ILIKE pattern.
fn escape_like(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '\\' | '%' | '_') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

/// One page, newest first: after `cursor` (keyset) or after skipping
/// `offset` records (the legacy shape). Records are read one at a time and
/// the page ends early once they weigh `max_bytes` (at least one record),
/// so a page of large query texts never sits in memory whole. True with
/// the records when the page was cut short by `max_bytes`.
pub async fn page(
    pool: &PgPool,
    visibility: Visibility,
    filter: &Filter,
    cursor: Option<PageCursor>,
    offset: i64,
    limit: i64,
    max_bytes: u64,
) -> Result<(Vec<StoredExecution>, bool), AuditError> {
    use futures::TryStreamExt as _;
    let query = sqlx::query_as::<_, StoredExecution>(concat!(
        stored_select!(),
        "WHERE ",
        filter_condition!(),
        " AND ($15::timestamptz IS NULL OR (e.started_at, e.id) < ($15, $16::uuid)) \
         ORDER BY e.started_at DESC, e.id DESC LIMIT $17 OFFSET $18"
    ));
    let mut rows = bind_filter!(query, visibility, filter)
        .bind(cursor.map(|c| c.started_at))
        .bind(cursor.map(|c| c.id))
        .bind(limit)
        .bind(offset)
        .fetch(pool);
    let mut page: Vec<StoredExecution> = Vec::new();
    let mut bytes = 0_u64;
    while let Some(record) = rows.try_next().await? {
        bytes = bytes.saturating_add(record.approximate_bytes());
        if !page.is_empty() && bytes > max_bytes {
            return Ok((page, true));
        }
        page.push(record);
    }
    Ok((page, false))
}

/// How many records match, over all pages.
pub async fn count(pool: &PgPool, visibility: Visibility, filter: &Filter) -> Result<i64, AuditError> {
    let query = sqlx::query_scalar(concat!(
        "SELECT count(*) FROM pgfleet.executions e WHERE ",
        filter_condition!()
    ));
    Ok(bind_filter!(query, visibility, filter).fetch_one(pool).await?)
}

/// One record, if it exists and the caller may see it.
pub async fn get(
    pool: &PgPool,
    visibility: Visibility,
    id: Uuid,
) -> Result<Option<StoredExecution>, AuditError> {
    let query = sqlx::query_as(concat!(
        stored_select!(),
        "WHERE ",
        filter_condition!(),
        " AND e.id = $15"
    ));
    Ok(bind_filter!(query, visibility, &Filter::default())
        .bind(id)
        .fetch_optional(pool)
        .await?)
}

/// The next `limit` records in chain order (by opening link) after
/// `after_sequence`.
pub async fn export_batch(
    pool: &PgPool,
    visibility: Visibility,
    filter: &Filter,
    after_sequence: i64,
    limit: i64,
) -> Result<Vec<StoredExecution>, AuditError> {
    let query = sqlx::query_as(concat!(
        stored_select!(),
        "WHERE ",
        filter_condition!(),
        " AND o.sequence > $15 ORDER BY o.sequence LIMIT $16"
    ));
    Ok(bind_filter!(query, visibility, filter)
        .bind(after_sequence)
        .bind(limit)
        .fetch_all(pool)
        .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_wildcards_are_literal() {
        assert_eq!(escape_like(r"50%_off\now"), r"50\%\_off\\now");
    }
}
