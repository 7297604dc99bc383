//! The copy engine: one table from the source onto one target, in batches.
//!
//! Each (table, target) pair reads its own pages from the source, so a slow
//! or failing target never holds the others and each can start from its own
//! position (a stored watermark, or the target's newest sync key). The cost
//! is one source read per target.
//!
//! - **Reading**: keyset pages on (sync key, primary key) for incremental
//!   copies and on the primary key for full refresh, `batch_size` rows per
//!   page, each page one `REPEATABLE READ READ ONLY` transaction on the
//!   source's primary running `COPY (SELECT … ORDER BY … LIMIT n) TO STDOUT`.
//!   The page's bounds are bound as parameters to `set_config` and read back
//!   with `current_setting`, because COPY takes no bind parameters (see
//!   [`super::sql`]). The next page is read while the current batch is
//!   written, one page ahead at most. Rows whose sync key is NULL cannot be placed against
//!   a watermark and are not copied incrementally (full refresh copies them).
//! - **Writing**: per batch, one target transaction: a temporary staging
//!   table `(LIKE target INCLUDING DEFAULTS) ON COMMIT DROP`, `COPY … FROM
//!   STDIN` of the page's bytes as read, then `INSERT … SELECT … ON CONFLICT
//!   (primary key) DO UPDATE` of every other column. Generated columns are
//!   neither read nor written: the target computes them.
//! - **Into an empty table**: a copy from the beginning that finds the
//!   target table empty writes each page with a plain `COPY … FROM STDIN`
//!   into the table itself: nothing there to conflict with or delete, so no
//!   staging, upsert or key table (the speed of `pg_dump | psql`). A re-run
//!   after an interruption finds rows and takes the upsert path, so re-runs
//!   stay idempotent. If rows appear in the table meanwhile (another writer:
//!   a page's COPY fails on a duplicate key), that page and the rest are
//!   upserted; a full refresh then skips its final delete (the keys of the
//!   pages copied directly were not recorded), which leaves the other
//!   writer's rows to the next full refresh, and says so in the log.
//! - **Deletes (full refresh)**: every batch transaction also adds the
//!   batch's primary keys to a session temporary table on the target; after
//!   the last batch one transaction deletes the target rows whose key is not
//!   in it. Equality on keys, unlike comparing keyset ranges, does not depend
//!   on source and target sorting text the same way (collations may differ
//!   between clouds), so a row is never deleted for being in "the wrong
//!   range". Nothing is deleted unless every batch committed.
//! - **What is guaranteed**: every page is a consistent snapshot, the run as
//!   a whole is not (pages are separate transactions, so vacuum is never held
//!   back for the length of a copy). A row committed late with a sync key
//!   older than the position already passed is missed by this run; an
//!   incremental start re-reads the rows at the start value (ties) and, with
//!   an overlap window, those within the window before it, so such rows are
//!   picked up by the next run as long as they commit within the window.
//!   Upserts make every re-read harmless, so re-runs are idempotent.
//! - **Stopping**: the cancel token is looked at between batches only: a
//!   batch in flight commits (or fails) as a whole, and committed batches
//!   stay.

use std::time::{Duration, Instant};

use futures::TryStreamExt as _;
use pgfleet_registry::{
    Checkout, Registry, RegistryError, Route, Target, begin_bounded, statement_timeout_setting,
};
use sqlx::{Connection as _, PgConnection};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Mode;
use super::catalog::{self, CatalogError, TableShape};
use super::sql::{self, KeyColumn, PageStart, SourceQuery, TargetStatements, count_rows, last_row_fields};
use super::validate::{self, Fitting, Invalid, RequestKind};
use crate::query::{FailureCode, TargetFailure};

/// How a table is copied.
#[derive(Debug, Clone)]
pub struct CopySettings {
    pub mode: Mode,
    /// Required for [`Mode::Incremental`]; a column of the table.
    pub sync_key: Option<String>,
    /// Rows per page and per target transaction; never 0.
    pub batch_size: u32,
    /// Incremental starts re-read this much before their start value.
    pub overlap: Option<Duration>,
    /// Bound on every statement of a copy (a page read, a batch write).
    pub statement_timeout: Duration,
    /// Bound on the target catalog read before the first batch.
    pub catalog_timeout: Duration,
}

/// Why a table could not be copied (or copied completely) onto a target.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// No connection to the source or the target.
    #[error(transparent)]
    Connect(#[from] RegistryError),
    /// The target's catalog could not be read.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// The table cannot be copied as it is (no primary key, a generated key
    /// column, a target table missing or differing from the source).
    #[error("{0}")]
    Unfit(String),
    /// A statement on the source failed.
    #[error("reading {table} from {target} (the source) failed: {source}")]
    Source {
        target: Target,
        table: String,
        #[source]
        source: sqlx::Error,
    },
    /// A statement on the target failed; its batch was rolled back.
    #[error("writing {table} to {target} failed: {source}")]
    Target {
        target: Target,
        table: String,
        #[source]
        source: sqlx::Error,
    },
    /// COPY output without the key fields it must have: a bug.
    #[error("unexpected COPY output for {0}: {1}")]
    Malformed(String, String),
    /// The run was cancelled; committed batches stay.
    #[error("cancelled at a batch boundary; committed batches stay")]
    Cancelled,
}

impl CopyError {
    /// This failure as reported for its target (TableFinished, audit),
    /// with PostgreSQL's SQLSTATE and fields when it came from PostgreSQL.
    pub fn target_error(&self) -> TargetFailure {
        let plain = |code: FailureCode| TargetFailure::new(code, self.to_string());
        match self {
            CopyError::Connect(RegistryError::UnknownTarget { .. }) => plain(FailureCode::NotFound),
            CopyError::Connect(_) | CopyError::Catalog(CatalogError::Connect(_)) => {
                plain(FailureCode::Unavailable)
            }
            CopyError::Catalog(CatalogError::TimedOut(_)) => plain(FailureCode::DeadlineExceeded),
            CopyError::Catalog(CatalogError::ConnectionLost { .. }) => plain(FailureCode::Unavailable),
            CopyError::Catalog(CatalogError::Query { .. }) | CopyError::Malformed(..) => {
                plain(FailureCode::Internal)
            }
            CopyError::Unfit(_) => plain(FailureCode::FailedPrecondition),
            CopyError::Cancelled => plain(FailureCode::Cancelled),
            CopyError::Source { source, .. } | CopyError::Target { source, .. } => {
                // Keep the driver's classification and PostgreSQL's fields,
                // but say which side and table failed.
                let mut error = TargetFailure::from_sqlx(source);
                error.message = self.to_string();
                error
            }
        }
    }
}

/// A keyset position: the last row copied, as text of its key values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// The sync key's value (incremental copies only): the watermark.
    pub sync_key: Option<String>,
    /// The primary key's values in key order (`replication_watermarks.last_key`).
    pub primary_key: Vec<String>,
}

impl Position {
    /// The keyset values in page order: sync key first when there is one.
    fn values(&self) -> Vec<String> {
        self.sync_key.iter().chain(&self.primary_key).cloned().collect()
    }
}

/// Where a table starts on a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// The whole table (full refresh, first incremental copy).
    Beginning,
    /// Incremental: from the target's own newest sync key, inclusive (rows
    /// with the same key may not all be there yet), minus the overlap
    /// window; the whole table when the target has no rows.
    TargetMax,
    /// Incremental: strictly after a committed position (a stored
    /// watermark); with an overlap window, from the watermark minus the
    /// window instead.
    After(Position),
}

/// Counts of a (table, target) copy so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub rows_read: u64,
    pub rows_written: u64,
    pub rows_deleted: u64,
    /// Committed batches.
    pub batches: u64,
}

/// After each committed batch.
#[derive(Debug, Clone)]
pub struct Progress {
    pub counters: Counters,
    pub elapsed: Duration,
    /// Incremental: text of the last committed sync key value.
    pub watermark: Option<String>,
    /// The last committed row: where a later run resumes (RunJob stores it
    /// in `replication_watermarks` once the batch has committed).
    pub position: Option<Position>,
}

/// How a (table, target) copy ended.
#[derive(Debug, Clone)]
pub enum TableOutcome {
    Succeeded,
    Failed(Box<TargetFailure>),
    Cancelled,
}

/// The end of a (table, target) copy.
#[derive(Debug, Clone)]
pub struct TableResult {
    pub outcome: TableOutcome,
    pub counters: Counters,
    pub elapsed: Duration,
    pub watermark: Option<String>,
    pub position: Option<Position>,
}

/// What a copy reports, tagged with its indexes in the run.
#[derive(Debug)]
pub struct CopyEvent {
    pub table: usize,
    pub target: usize,
    pub update: CopyUpdate,
}

#[derive(Debug)]
pub enum CopyUpdate {
    Progress(Progress),
    Finished(Box<TableResult>),
}

/// Where a copy's events go. The channel is bounded: a consumer that falls
/// behind holds the copy at its next batch.
#[derive(Debug, Clone)]
pub struct ProgressSink {
    pub table: usize,
    pub target: usize,
    pub sender: mpsc::Sender<CopyEvent>,
}

impl ProgressSink {
    pub async fn send(&self, update: CopyUpdate) {
        // A closed channel means nobody records the run any more; the copy
        // carries on to its end either way.
        let _ = self
            .sender
            .send(CopyEvent {
                table: self.table,
                target: self.target,
                update,
            })
            .await;
    }
}

/// One table checked on the source, ready to be copied to any target.
#[derive(Debug, Clone)]
pub struct TablePlan {
    pub source: Target,
    /// The source's table.
    pub shape: TableShape,
    pub settings: CopySettings,
    query: SourceQuery,
    /// Indexes into `query.columns` of the keyset columns, in keyset order.
    key_indexes: Vec<usize>,
}

impl TablePlan {
    /// The plan for `shape` (read from the source's catalog and checked by
    /// [`validate::fit`]); refuses what the engine cannot page through.
    pub fn new(source: Target, shape: TableShape, settings: CopySettings) -> Result<Self, CopyError> {
        if shape.primary_key.is_empty() {
            return Err(CopyError::Unfit(format!(
                "{} on {source} (the source) has no primary key",
                shape.name
            )));
        }
        let columns: Vec<String> = shape
            .columns
            .iter()
            .filter(|column| !column.generated)
            .map(|column| column.name.clone())
            .collect();
        let incremental = settings.mode == Mode::Incremental;
        let sync_key = match (&settings.sync_key, incremental) {
            (Some(key), true) => Some(key.clone()),
            (None, true) => {
                return Err(CopyError::Unfit(
                    "an incremental copy needs a sync key".to_owned(),
                ));
            }
            (_, false) => None,
        };
        let key_names: Vec<String> = sync_key
            .into_iter()
            // A sync key that is also the (first) primary key column would
            // appear twice; harmless, but pointless.
            .chain(shape.primary_key.iter().cloned())
            .collect();
        let mut key = Vec::with_capacity(key_names.len());
        let mut key_indexes = Vec::with_capacity(key_names.len());
        for name in key_names {
            let column = shape
                .column(&name)
                .ok_or_else(|| CopyError::Unfit(format!("{} has no column {name:?}", shape.name)))?;
            // Generated columns are not copied, so they cannot be read back
            // from a page to continue after it.
            let index = columns.iter().position(|c| *c == name).ok_or_else(|| {
                CopyError::Unfit(format!(
                    "{}.{name} is a generated column and cannot be a key of a copy",
                    shape.name
                ))
            })?;
            key.push(KeyColumn {
                name,
                type_name: column.type_name.clone(),
            });
            key_indexes.push(index);
        }
        let query = SourceQuery {
            table: shape.name.clone(),
            columns,
            key,
            incremental,
        };
        Ok(Self {
            source,
            shape,
            settings,
            query,
            key_indexes,
        })
    }

    /// `format('%I.%I')` of the table on the source.
    pub fn table(&self) -> &str {
        &self.shape.name
    }

    fn incremental(&self) -> bool {
        self.query.incremental
    }

    /// The target's table, checked against the source's as a job would be
    /// (same primary key, column names and types).
    fn check_target(&self, target: &Target, shape: Option<TableShape>) -> Result<TableShape, CopyError> {
        let fitting = Fitting {
            source: &self.source,
            targets: std::slice::from_ref(target),
            tables: std::slice::from_ref(&self.shape.name),
            sync_key: self.settings.sync_key.as_deref(),
            overlap: self.settings.overlap,
        };
        let shapes = [vec![shape.clone()]];
        match (
            validate::fit(fitting, &[Some(self.shape.clone())], &shapes),
            shape,
        ) {
            (Ok(_), Some(shape)) => Ok(shape),
            (Ok(_), None) => Err(CopyError::Unfit(format!(
                "{} does not exist on {target}",
                self.shape.name
            ))),
            (Err(Invalid::Unfit { problems }), _) => Err(CopyError::Unfit(problems.join("; "))),
            (Err(other), _) => Err(CopyError::Unfit(other.in_request(RequestKind::Job).to_string())),
        }
    }

    /// The position of the last row of a page.
    fn position_of(&self, page: &[u8]) -> Result<Position, CopyError> {
        let malformed = |why: &str| CopyError::Malformed(self.shape.name.clone(), why.to_owned());
        let fields = last_row_fields(page, &self.key_indexes).ok_or_else(|| malformed("no key fields"))?;
        let mut values = fields
            .into_iter()
            .collect::<Option<Vec<String>>>()
            .ok_or_else(|| malformed("a NULL key"))?;
        let sync_key = if self.incremental() && !values.is_empty() {
            Some(values.remove(0))
        } else {
            None
        };
        Ok(Position {
            sync_key,
            primary_key: values,
        })
    }
}

/// What the source is asked for next.
enum Page {
    Beginning,
    /// Incremental start value (inclusive), text of the sync key.
    From(String),
    After(Vec<String>),
}

/// The running state of one copy, kept so a failure still reports how far
/// it got.
struct State {
    started: Instant,
    counters: Counters,
    watermark: Option<String>,
    position: Option<Position>,
}

impl State {
    fn progress(&self) -> Progress {
        Progress {
            counters: self.counters,
            elapsed: self.started.elapsed(),
            watermark: self.watermark.clone(),
            position: self.position.clone(),
        }
    }
}

/// Copies `plan`'s table onto `target` from `start`, reporting each
/// committed batch through `sink`. Never fails as a call: the result says
/// how it ended.
pub async fn copy_table(
    registry: &Registry,
    plan: &TablePlan,
    target: &Target,
    start: Start,
    sink: &ProgressSink,
    cancel: &CancellationToken,
) -> TableResult {
    let mut state = State {
        started: Instant::now(),
        counters: Counters::default(),
        watermark: None,
        position: None,
    };
    let outcome = match copy(registry, plan, target, start, sink, cancel, &mut state).await {
        Ok(()) => TableOutcome::Succeeded,
        Err(CopyError::Cancelled) => TableOutcome::Cancelled,
        Err(error) => {
            tracing::warn!(table = %plan.table(), %target, %error, "replication copy failed");
            TableOutcome::Failed(Box::new(error.target_error()))
        }
    };
    TableResult {
        outcome,
        counters: state.counters,
        elapsed: state.started.elapsed(),
        watermark: state.watermark,
        position: state.position,
    }
}

async fn copy(
    registry: &Registry,
    plan: &TablePlan,
    target: &Target,
    start: Start,
    sink: &ProgressSink,
    cancel: &CancellationToken,
    state: &mut State,
) -> Result<(), CopyError> {
    if cancel.is_cancelled() {
        return Err(CopyError::Cancelled);
    }
    // Also checked when a job is stored, but the file may have changed
    // since: the copy itself refuses, so no path writes to such a copy.
    if registry
        .database_config(target)
        .is_some_and(|database| database.read_only)
    {
        return Err(CopyError::Unfit(super::read_only_refusal(target)));
    }
    // Checked before anything is written: a mismatch is reported, never
    // patched.
    let shapes = catalog::read_tables(
        registry,
        target,
        &[plan.table().to_owned()],
        plan.settings.catalog_timeout,
    )
    .await?;
    let copy_shape = plan.check_target(target, shapes.into_iter().next().flatten())?;
    let statements = TargetStatements {
        table: copy_shape.name,
        columns: plan.query.columns.clone(),
        primary_key: plan.shape.primary_key.clone(),
    };
    // Held for the whole table: the full refresh's key table lives in its
    // session.
    let mut writer = registry.acquire(target, Route::Write).await?;
    let result = copy_batches(
        registry,
        plan,
        target,
        &statements,
        start,
        &mut writer,
        sink,
        cancel,
        state,
    )
    .await;
    match &result {
        // Clean transaction boundaries: the target only needs its session
        // temporary table and statement cache dropped.
        Ok(()) | Err(CopyError::Cancelled) => {
            // DISCARD ALL also drops the full refresh's temporary key table.
            if !pgfleet_registry::discard_session(writer.connection_mut()).await {
                writer.connection.close_on_drop();
            }
        }
        // The state of the connection is unknown after a failure.
        Err(_) => writer.connection.close_on_drop(),
    }
    result
}

#[allow(clippy::too_many_arguments)] // the pieces of one copy, kept apart for borrowing
async fn copy_batches(
    registry: &Registry,
    plan: &TablePlan,
    target: &Target,
    statements: &TargetStatements,
    start: Start,
    writer: &mut Checkout,
    sink: &ProgressSink,
    cancel: &CancellationToken,
    state: &mut State,
) -> Result<(), CopyError> {
    let on_target = |source| CopyError::Target {
        target: target.clone(),
        table: statements.table.clone(),
        source,
    };
    let full_refresh = plan.settings.mode == Mode::FullRefresh;
    if full_refresh {
        for statement in statements.create_keys_table() {
            sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
                .execute(writer.connection_mut())
                .await
                .map_err(on_target)?;
        }
    }
    let page = match start {
        Start::Beginning => Page::Beginning,
        _ if !plan.incremental() => Page::Beginning,
        Start::After(position) => {
            state.watermark.clone_from(&position.sync_key);
            let page = match (&position.sync_key, plan.settings.overlap) {
                // The window reaches back before the position: restart
                // from the watermark minus the window.
                (Some(watermark), Some(_)) => Page::From(watermark.clone()),
                _ => Page::After(position.values()),
            };
            state.position = Some(position);
            page
        }
        Start::TargetMax => {
            let sync_key = plan.query.key.first().map(|k| k.name.clone()).unwrap_or_default();
            let newest = target_max(
                writer.connection_mut(),
                statements,
                &sync_key,
                plan.settings.statement_timeout,
            )
            .await
            .map_err(on_target)?;
            match newest {
                None => Page::Beginning,
                Some(newest) => {
                    state.watermark = Some(newest.clone());
                    Page::From(newest)
                }
            }
        }
    };
    let batch_size = u64::from(plan.settings.batch_size.max(1));
    if cancel.is_cancelled() {
        return Err(CopyError::Cancelled);
    }
    // See the module's "Into an empty table".
    let mut direct = matches!(page, Page::Beginning)
        && target_is_empty(
            writer.connection_mut(),
            statements,
            plan.settings.statement_timeout,
        )
        .await
        .map_err(on_target)?;
    let started_direct = direct;
    let mut data = read_source_page(registry, plan, &page).await?;
    loop {
        let rows = count_rows(&data);
        state.counters.rows_read += rows;
        if rows == 0 {
            break;
        }
        let position = plan.position_of(&data)?;
        let last_page = rows < batch_size;
        let next_page = Page::After(position.values());
        // The next page is read while this batch is written, so the source
        // and the target work at the same time (as `pg_dump | psql` do)
        // instead of taking turns. A read is only a read in its own
        // snapshot: one made ahead of a write that then fails or is
        // cancelled costs nothing but itself.
        let write = write_batch(
            writer.connection_mut(),
            statements,
            &data,
            full_refresh && !started_direct,
            plan.settings.statement_timeout,
            &mut direct,
        );
        let (written, next) = if last_page || cancel.is_cancelled() {
            (write.await, None)
        } else {
            let (written, next) = tokio::join!(write, read_source_page(registry, plan, &next_page));
            (written, Some(next))
        };
        state.counters.rows_written += written.map_err(on_target)?;
        state.counters.batches += 1;
        if plan.incremental() {
            state.watermark.clone_from(&position.sync_key);
        }
        state.position = Some(position);
        // Waits while the consumer is behind: a slow client slows the copy.
        sink.send(CopyUpdate::Progress(state.progress())).await;
        if last_page {
            break;
        }
        if cancel.is_cancelled() {
            return Err(CopyError::Cancelled);
        }
        data = match next {
            Some(next) => next?,
            None => read_source_page(registry, plan, &next_page).await?,
        };
    }
    if full_refresh && started_direct {
        // The table was empty: nothing of the target's own to delete.
        if !direct {
            tracing::warn!(
                target = %target,
                table = %statements.table,
                "rows appeared in the target table while a full refresh copied into it empty; \
                 they are left to the next full refresh"
            );
        }
    } else if full_refresh {
        // Deleting before every page committed would remove rows not yet
        // reached; a cancelled run deletes nothing.
        if cancel.is_cancelled() {
            return Err(CopyError::Cancelled);
        }
        state.counters.rows_deleted = delete_missing(
            writer.connection_mut(),
            statements,
            plan.settings.statement_timeout,
        )
        .await
        .map_err(on_target)?;
    }
    Ok(())
}

/// The target's newest sync key as text, in a bounded read-only
/// transaction; `None` when the target has no rows with one.
async fn target_max(
    connection: &mut PgConnection,
    statements: &TargetStatements,
    sync_key: &str,
    timeout: Duration,
) -> Result<Option<String>, sqlx::Error> {
    let mut transaction = pgfleet_registry::begin_read_only(connection, timeout).await?;
    let newest = sqlx::query_scalar(sqlx::AssertSqlSafe(statements.max_of(sync_key)))
        .persistent(false)
        .fetch_one(&mut *transaction)
        .await?;
    transaction.commit().await?;
    Ok(newest)
}

/// One page of the source. The connection is taken for the page only, so
/// a run with more targets than the source's pool has connections shares
/// them batch by batch; it comes from the primary, because a replica may lag
/// behind the positions already copied. It carries no session state (every
/// setting is transaction-local) unless the read failed, when it is closed.
async fn read_source_page(registry: &Registry, plan: &TablePlan, page: &Page) -> Result<Vec<u8>, CopyError> {
    let mut reader = registry.acquire(&plan.source, Route::Write).await?;
    match read_page(reader.connection_mut(), plan, page).await {
        Ok(data) => Ok(data),
        Err(source) => {
            reader.connection.close_on_drop();
            Err(CopyError::Source {
                target: plan.source.clone(),
                table: plan.table().to_owned(),
                source,
            })
        }
    }
}

/// One page of the source as COPY text, in one read-only snapshot.
async fn read_page(
    connection: &mut PgConnection,
    plan: &TablePlan,
    page: &Page,
) -> Result<Vec<u8>, sqlx::Error> {
    let mut names = vec!["statement_timeout".to_owned()];
    let mut values = vec![statement_timeout_setting(plan.settings.statement_timeout)];
    let start = match page {
        Page::Beginning => PageStart::Beginning,
        Page::From(value) => {
            names.push(sql::from_setting());
            values.push(value.clone());
            if let Some(overlap) = plan.settings.overlap {
                names.push(sql::overlap_setting());
                values.push(format!("{} milliseconds", overlap.as_millis()));
            }
            PageStart::From {
                overlap: plan.settings.overlap.is_some(),
            }
        }
        Page::After(keys) => {
            for (index, value) in keys.iter().enumerate() {
                names.push(sql::key_setting(index));
                values.push(value.clone());
            }
            PageStart::After
        }
    };
    let mut transaction = connection
        .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await?;
    sqlx::query(
        "SELECT pg_catalog.set_config(s.name, s.value, true) FROM unnest($1::text[], $2::text[]) AS s(name, value)",
    )
    .bind(&names)
    .bind(&values)
    .execute(&mut *transaction)
    .await?;
    let statement = plan.query.copy_out(start, plan.settings.batch_size.max(1));
    let mut data = Vec::new();
    {
        let mut chunks = transaction.copy_out_raw(&statement).await?;
        while let Some(chunk) = chunks.try_next().await? {
            data.extend_from_slice(&chunk);
        }
    }
    transaction.commit().await?;
    Ok(data)
}

/// Whether the target table has no rows, in a bounded read-only
/// transaction.
async fn target_is_empty(
    connection: &mut PgConnection,
    statements: &TargetStatements,
    timeout: Duration,
) -> Result<bool, sqlx::Error> {
    let mut transaction = pgfleet_registry::begin_read_only(connection, timeout).await?;
    let empty = sqlx::query_scalar(sqlx::AssertSqlSafe(statements.is_empty()))
        .persistent(false)
        .fetch_one(&mut *transaction)
        .await?;
    transaction.commit().await?;
    Ok(empty)
}

/// Writes one page in one target transaction: straight into the table
/// while `direct` (see the module's "Into an empty table"), which a
/// duplicate key turns off for this page and the rest, otherwise upserted;
/// returns the rows written.
async fn write_batch(
    connection: &mut PgConnection,
    statements: &TargetStatements,
    data: &[u8],
    remember_keys: bool,
    timeout: Duration,
    direct: &mut bool,
) -> Result<u64, sqlx::Error> {
    if *direct {
        match copy_into_table(connection, statements, data, timeout).await {
            Ok(written) => return Ok(written),
            Err(sqlx::Error::Database(error)) if error.code().as_deref() == Some("23505") => {
                // Rolled back as a whole; the upsert below writes the page.
                *direct = false;
            }
            Err(error) => return Err(error),
        }
    }
    let mut transaction = begin_bounded(connection, "BEGIN", timeout).await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(statements.create_batch_table()))
        .execute(&mut *transaction)
        .await?;
    let mut copy = transaction.copy_in_raw(&statements.copy_in()).await?;
    copy.send(data).await?;
    copy.finish().await?;
    let written = sqlx::raw_sql(sqlx::AssertSqlSafe(statements.upsert()))
        .execute(&mut *transaction)
        .await?
        .rows_affected();
    if remember_keys {
        sqlx::raw_sql(sqlx::AssertSqlSafe(statements.remember_keys()))
            .execute(&mut *transaction)
            .await?;
    }
    transaction.commit().await?;
    Ok(written)
}

/// One page with a plain COPY into the target table, in one transaction.
async fn copy_into_table(
    connection: &mut PgConnection,
    statements: &TargetStatements,
    data: &[u8],
    timeout: Duration,
) -> Result<u64, sqlx::Error> {
    let mut transaction = begin_bounded(connection, "BEGIN", timeout).await?;
    let mut copy = transaction.copy_in_raw(&statements.copy_into_table()).await?;
    copy.send(data).await?;
    let written = copy.finish().await?;
    transaction.commit().await?;
    Ok(written)
}

/// Full refresh's last step: removes target rows the source no longer has.
async fn delete_missing(
    connection: &mut PgConnection,
    statements: &TargetStatements,
    timeout: Duration,
) -> Result<u64, sqlx::Error> {
    let mut transaction = begin_bounded(connection, "BEGIN", timeout).await?;
    // Fresh statistics so the anti-join is planned for the real key count.
    sqlx::raw_sql(sqlx::AssertSqlSafe(statements.analyze_keys()))
        .execute(&mut *transaction)
        .await?;
    let deleted = sqlx::raw_sql(sqlx::AssertSqlSafe(statements.delete_missing()))
        .execute(&mut *transaction)
        .await?
        .rows_affected();
    sqlx::raw_sql(sqlx::AssertSqlSafe(statements.drop_keys_table()))
        .execute(&mut *transaction)
        .await?;
    transaction.commit().await?;
    Ok(deleted)
}
