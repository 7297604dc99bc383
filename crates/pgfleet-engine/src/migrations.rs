//! Fleet schema migrations: pgfleet-migrate's model run on the registry's
//! targets, with the set of each database (its configured directory or the
//! upload kept in the history store), the per-database lock, and the audit
//! trail. Used by the gRPC `MigrationService` and by `pgfleet migrations …`.
//!
//! - Reads (status, plan, drift) run in READ ONLY transactions on each
//!   target's primary (the source of truth; a replica may lag), under the
//!   main login: pgfleet's own catalog and tracking queries, never user SQL.
//! - Writers (apply, rollback, repair) hold the database's [`MigrationLock`]
//!   in the history store for the whole run, then each target's own lock
//!   (pgfleet-migrate); their audit record is opened (committed) before any
//!   target is touched, and closed with every target's outcome.
//! - An apply is checked on every reachable target first: one target that
//!   would refuse it (a changed applied file, a version unknown to the set,
//!   out of order) refuses the whole call before anything runs.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::future::join_all;
use pgfleet_config::FleetConfig;
use pgfleet_migrate::{
    ApplyError, ApplyEvent, ApplyOptions, Difference, LockError, MigrationFailed, MigrationSet, NotRun,
    PgFailure, Plan, Refusal, RepairError, Repaired, RollbackError, RolledBack, RolloutOptions, SetError,
    TargetOutcome, TargetStatus, TrackingError,
};
use pgfleet_registry::{Registry, RegistryError, Route, Target, begin_read_only, discard_session};
use sqlx::PgConnection;
use sqlx::types::Json;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::RequestError;
use crate::advisory_locks::MigrationLock;
use crate::audit::{
    Actor, AuditError, AuditLog, Kind, NewExecution, OpenExecution, RecordedOutcome, RecordedTarget,
    TargetScope,
};
use crate::identity::{Identity, Role};
use crate::query::audited::{Origin, recorded_error, recorded_target};
use crate::query::{FailureCode, PostgresError, TargetFailure};

/// Longest lock wait a caller may ask for.
pub const MAX_LOCK_WAIT: Duration = Duration::from_secs(600);

/// Which copies of the database a call is about.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Selection {
    /// Every cloud that has the database.
    #[default]
    AllClouds,
    Cloud(String),
    /// An explicit list; each must be a copy of the scope's database.
    Targets(Vec<Target>),
}

/// A fleet database and which of its copies.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrationScope {
    pub database: String,
    pub selection: Selection,
}

/// Who asks: a caller of the API (its allow-list applies), or pgfleet's
/// command line (acting as MASTER, recorded as a system actor).
#[derive(Debug, Clone)]
pub struct Caller {
    pub actor: Actor,
    pub role: Role,
    /// `user:alice`, `api_key:deploy`, `cli:ci`: written to `applied_by`.
    pub label: String,
    pub origin: Origin,
    /// The API identity, whose API-key allow-list limits the targets.
    identity: Option<Identity>,
}

impl Caller {
    pub fn of(identity: &Identity, origin: Origin) -> Self {
        Self {
            actor: Actor::of(identity),
            role: identity.role,
            label: identity.label(),
            origin,
            identity: Some(identity.clone()),
        }
    }

    /// `pgfleet migrations …` run by `who` (e.g. the OS user).
    pub fn command_line(who: &str) -> Self {
        let label = format!("cli:{who}");
        Self {
            actor: Actor::System(label.clone()),
            role: Role::Master,
            label,
            origin: Origin::default(),
            identity: None,
        }
    }
}

/// Where a database's set comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetSource {
    /// `[[migrations]] dir` of the configuration.
    Directory(PathBuf),
    /// The last upload.
    Uploaded { by: String, at: DateTime<Utc> },
}

/// A database's migration set, checked.
#[derive(Debug, Clone)]
pub struct LoadedSet {
    pub database: String,
    pub set: MigrationSet,
    pub source: SetSource,
}

/// Why a migration call was refused as a whole (per-target failures are
/// reported per target).
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    #[error(transparent)]
    Request(#[from] RequestError),
    /// The set does not load; `field` is the request field it came from.
    #[error("{context}: {source}")]
    Set {
        field: String,
        context: String,
        #[source]
        source: Box<SetError>,
    },
    #[error(
        "database {database:?} has no migration set: configure a [[migrations]] directory for it, or upload one (UploadMigrationSet)"
    )]
    NoSet { database: String },
    #[error(
        "database {database:?} takes its migrations from the configured directory {}: uploads are refused so that one place says what its schema is", dir.display()
    )]
    DirectoryConfigured { database: String, dir: PathBuf },
    #[error("{}", refusals(.0))]
    Refused(Vec<(Target, Refusal)>),
    #[error(
        "another pgfleet run holds the migrations of database {database:?} (waited {waited:?}); try again when it is done"
    )]
    Busy { database: String, waited: Duration },
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error("history store: {0}")]
    Store(#[from] sqlx::Error),
}

fn refusals(refused: &[(Target, Refusal)]) -> String {
    let each: Vec<String> = refused.iter().map(|(t, r)| format!("{t}: {r}")).collect();
    format!("apply refused before anything ran: {}", each.join("; "))
}

impl From<MigrationError> for RequestError {
    fn from(error: MigrationError) -> Self {
        let message = error.to_string();
        match error {
            MigrationError::Request(request) => request,
            MigrationError::Set { field, .. } => RequestError::InvalidArgument {
                field,
                message: message.clone(),
            },
            MigrationError::NoSet { .. }
            | MigrationError::DirectoryConfigured { .. }
            | MigrationError::Refused(_) => RequestError::FailedPrecondition(message),
            MigrationError::Busy { .. } => RequestError::Aborted(message),
            MigrationError::Audit(audit) => match RequestError::from(audit) {
                RequestError::Unavailable(message) => {
                    RequestError::Unavailable(format!("{message}: refused, no target was touched"))
                }
                other => other,
            },
            MigrationError::Store(store) => RequestError::history_store(store),
        }
    }
}

/// The file a set error names (the second file for a duplicate version).
fn set_error_file(error: &SetError) -> Option<&str> {
    match error {
        SetError::Io { .. } => None,
        SetError::DuplicateVersion { second, .. } => Some(second),
        SetError::NotUtf8 { file }
        | SetError::BadFileName { file, .. }
        | SetError::DuplicateFile { file }
        | SetError::DownWithoutUp { file, .. }
        | SetError::Gap { file, .. }
        | SetError::Parse { file, .. }
        | SetError::Empty { file }
        | SetError::TransactionControl { file, .. }
        | SetError::NeedsNoTransaction { file, .. }
        | SetError::NoTransactionNeedsOneStatement { file, .. }
        | SetError::MisplacedMarker { file, .. } => Some(file),
    }
}

/// A failure of pgfleet-migrate on one target, in the engine's terms.
pub fn pg_failure(code_if_refused: FailureCode, failure: &PgFailure) -> TargetFailure {
    let code = if failure.connection_lost {
        FailureCode::Unavailable
    } else if failure.sqlstate.is_some() {
        code_if_refused
    } else {
        FailureCode::Unknown
    };
    TargetFailure {
        code,
        message: failure.to_string(),
        postgres: failure.sqlstate.as_ref().map(|sqlstate| PostgresError {
            sqlstate: sqlstate.clone(),
            severity: "ERROR".to_owned(),
            message: failure.message.clone(),
            detail: failure.detail.clone().unwrap_or_default(),
            hint: failure.hint.clone().unwrap_or_default(),
            position: failure.position.unwrap_or(0),
            schema_name: failure.schema.clone().unwrap_or_default(),
            table_name: failure.table.clone().unwrap_or_default(),
            column_name: failure.column.clone().unwrap_or_default(),
            constraint_name: failure.constraint.clone().unwrap_or_default(),
            ..PostgresError::default()
        }),
    }
}

fn registry_failure(error: &RegistryError) -> TargetFailure {
    let code = match error {
        RegistryError::UnknownTarget { .. } => FailureCode::NotFound,
        _ => FailureCode::Unavailable,
    };
    TargetFailure::new(code, error.to_string())
}

fn tracking_failure(error: &TrackingError) -> TargetFailure {
    match error {
        TrackingError::Query(failure) => pg_failure(FailureCode::Aborted, failure),
        other => TargetFailure::new(FailureCode::DataLoss, other.to_string()),
    }
}

fn lock_failure(error: &LockError) -> TargetFailure {
    match error {
        LockError::Busy { .. } => TargetFailure::new(FailureCode::Aborted, error.to_string()),
        LockError::Query(failure) => pg_failure(FailureCode::Aborted, failure),
    }
}

/// Why a target's apply failed, with where in which file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetApplyFailure {
    pub failure: TargetFailure,
    /// The version that failed, when one did.
    pub version: Option<i64>,
    pub line_column: Option<(usize, usize)>,
    /// The change may have taken effect before the connection was lost.
    pub outcome_unknown: bool,
}

impl TargetApplyFailure {
    fn of(failure: TargetFailure) -> Self {
        Self {
            failure,
            version: None,
            line_column: None,
            outcome_unknown: false,
        }
    }

    fn migration(failed: &MigrationFailed) -> Self {
        Self {
            failure: pg_failure(FailureCode::Aborted, &failed.failure),
            version: Some(failed.version),
            line_column: failed.line_column,
            outcome_unknown: failed.outcome_unknown,
        }
    }
}

fn apply_failure(error: &ApplyError) -> TargetApplyFailure {
    match error {
        ApplyError::Lock(lock) => TargetApplyFailure::of(lock_failure(lock)),
        ApplyError::Tracking(tracking) => TargetApplyFailure::of(tracking_failure(tracking)),
        ApplyError::Refused(refusal) => TargetApplyFailure::of(TargetFailure::new(
            FailureCode::FailedPrecondition,
            refusal.to_string(),
        )),
        ApplyError::Migration(failed) => TargetApplyFailure::migration(failed),
    }
}

fn rollback_failure(error: &RollbackError) -> TargetApplyFailure {
    match error {
        RollbackError::Lock(lock) => TargetApplyFailure::of(lock_failure(lock)),
        RollbackError::Tracking(tracking) => TargetApplyFailure::of(tracking_failure(tracking)),
        RollbackError::Failed(failed) => TargetApplyFailure::migration(failed),
        refused => TargetApplyFailure::of(TargetFailure::new(
            FailureCode::FailedPrecondition,
            refused.to_string(),
        )),
    }
}

fn repair_failure(error: &RepairError) -> TargetFailure {
    match error {
        RepairError::Lock(lock) => lock_failure(lock),
        RepairError::Tracking(tracking) => tracking_failure(tracking),
        refused => TargetFailure::new(FailureCode::FailedPrecondition, refused.to_string()),
    }
}

/// What an apply asks for.
#[derive(Debug, Clone, Default)]
pub struct ApplySpec {
    pub scope: MigrationScope,
    /// Up to this version (inclusive); `None`: every pending version.
    pub up_to: Option<i64>,
    pub rollout: RolloutOptions,
    /// How long to wait for another run (database and target locks).
    pub lock_wait: Duration,
}

/// What a rollback or repair asks for: a version on some copies.
#[derive(Debug, Clone, Default)]
pub struct VersionSpec {
    pub scope: MigrationScope,
    pub version: i64,
    pub lock_wait: Duration,
}

/// How one target's part of an apply ended.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TargetApplyResult {
    /// Versions this apply ran there.
    pub applied: Vec<i64>,
    pub failure: Option<TargetApplyFailure>,
    pub not_run: Option<NotRun>,
    pub newest_applied: Option<i64>,
}

impl TargetApplyResult {
    pub fn success(&self) -> bool {
        self.failure.is_none() && self.not_run.is_none()
    }
}

/// Progress of an apply, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RolloutEvent {
    Target {
        target: Target,
        event: ApplyEvent,
    },
    TargetFinished {
        target: Target,
        result: Box<TargetApplyResult>,
    },
    Finished {
        success: bool,
        duration: Duration,
        failed: Vec<Target>,
    },
}

/// An apply that passed every check and is on record; [`PreparedApply::run`] runs it.
pub struct PreparedApply {
    engine: Migrations,
    set: LoadedSet,
    targets: Vec<Target>,
    options: ApplyOptions,
    rollout: RolloutOptions,
    lock: MigrationLock,
    record: OpenExecution,
}

/// A write (rollback or repair) on each target, with the record it is under.
#[derive(Debug, Clone)]
pub struct WriteReport<R> {
    pub execution_id: Uuid,
    pub results: Vec<(Target, Result<R, TargetApplyFailure>)>,
}

/// The drift of every target against a reference.
#[derive(Debug, Clone)]
pub struct DriftReport {
    pub reference: Target,
    pub targets: Vec<(Target, Result<Vec<Difference>, TargetFailure>)>,
}

/// Fleet schema migrations: the targets (registry), the sets (configuration
/// and history store) and the audit trail.
#[derive(Clone)]
pub struct Migrations {
    registry: Arc<Registry>,
    config: Arc<FleetConfig>,
    audit: Arc<AuditLog>,
}

impl Migrations {
    pub fn new(registry: Arc<Registry>, config: Arc<FleetConfig>, audit: Arc<AuditLog>) -> Self {
        Self {
            registry,
            config,
            audit,
        }
    }

    /// Bound on each statement of pgfleet's own reads on a target.
    fn read_timeout(&self) -> Duration {
        self.config.query.default_timeout
    }

    /// The copies `scope` names, checked against the fleet and the caller's
    /// allow-list (an API key cannot tell "not configured" from "not yours").
    pub fn resolve(&self, scope: &MigrationScope, caller: &Caller) -> Result<Vec<Target>, RequestError> {
        let hidden = |error: RequestError| match (&error, &caller.identity) {
            (RequestError::NotFound(_), Some(identity))
                if matches!(identity.principal, crate::identity::Principal::ApiKey { .. }) =>
            {
                RequestError::PermissionDenied(format!(
                    "{} may not reach the targets of this request (API key allow-list)",
                    identity.label()
                ))
            }
            _ => error,
        };
        let targets = self.resolve_unchecked(scope).map_err(hidden)?;
        if let Some(identity) = &caller.identity
            && targets.iter().any(|t| !identity.may_access(t))
        {
            return Err(RequestError::PermissionDenied(format!(
                "{} may not reach the targets of this request (API key allow-list)",
                identity.label()
            )));
        }
        Ok(targets)
    }

    fn resolve_unchecked(&self, scope: &MigrationScope) -> Result<Vec<Target>, RequestError> {
        let database = &scope.database;
        if database.is_empty() {
            return Err(RequestError::invalid(
                "scope.database",
                "must name a configured database",
            ));
        }
        let all = self.registry.targets_for_database(database);
        if all.is_empty() {
            return Err(RequestError::NotFound(format!(
                "database {database:?} is not configured in any cloud"
            )));
        }
        match &scope.selection {
            Selection::AllClouds => Ok(all),
            Selection::Cloud(cloud) => {
                let chosen: Vec<Target> = all.into_iter().filter(|t| &t.cloud == cloud).collect();
                if chosen.is_empty() {
                    return Err(RequestError::NotFound(format!(
                        "cloud {cloud:?} has no database {database:?}"
                    )));
                }
                Ok(chosen)
            }
            Selection::Targets(list) => {
                if list.is_empty() {
                    return Err(RequestError::invalid(
                        "scope.targets.targets",
                        "name at least one target",
                    ));
                }
                let mut seen = BTreeSet::new();
                list.iter()
                    .enumerate()
                    .map(|(index, target)| {
                        let field = |name: &str| format!("scope.targets.targets[{index}].{name}");
                        if !target.database.is_empty() && &target.database != database {
                            return Err(RequestError::invalid(
                                field("database"),
                                format!(
                                    "{:?} is not {database:?}: a migration call is about the copies of one database",
                                    target.database
                                ),
                            ));
                        }
                        let resolved = Target::new(target.cloud.clone(), database.clone());
                        if !all.contains(&resolved) {
                            return Err(RequestError::NotFound(format!(
                                "scope.targets.targets[{index}]: cloud {:?} has no database {database:?}",
                                target.cloud
                            )));
                        }
                        if !seen.insert(resolved.clone()) {
                            return Err(RequestError::invalid(
                                field("cloud"),
                                format!("{resolved} is listed twice"),
                            ));
                        }
                        Ok(resolved)
                    })
                    .collect()
            }
        }
    }

    /// The set of `database`: its configured directory (read now, so added
    /// files count at once), or else its last upload.
    pub async fn load_set(&self, database: &str) -> Result<LoadedSet, MigrationError> {
        if self.registry.targets_for_database(database).is_empty() {
            return Err(RequestError::NotFound(format!(
                "database {database:?} is not configured in any cloud"
            ))
            .into());
        }
        if let Some(dir) = self.config.migrations_dir(database) {
            let dir = dir.to_owned();
            let reading = dir.clone();
            // Parsing with libpg_query and reading files: off the async threads.
            let set = tokio::task::spawn_blocking(move || MigrationSet::load_dir(reading))
                .await
                .map_err(|e| RequestError::Internal(format!("loading a migration set: {e}")))?
                .map_err(|source| MigrationError::Set {
                    field: "scope.database".to_owned(),
                    context: format!("the migrations of {database:?} in {}", dir.display()),
                    source: Box::new(source),
                })?;
            return Ok(LoadedSet {
                database: database.to_owned(),
                set,
                source: SetSource::Directory(dir),
            });
        }
        type Row = (Json<Vec<StoredFile>>, String, DateTime<Utc>);
        let row: Option<Row> = sqlx::query_as(
            "SELECT files, uploaded_by, uploaded_at FROM pgfleet.migration_sets WHERE database = $1",
        )
        .bind(database)
        .fetch_optional(self.audit.pool())
        .await?;
        let Some((Json(files), by, at)) = row else {
            return Err(MigrationError::NoSet {
                database: database.to_owned(),
            });
        };
        let set = tokio::task::spawn_blocking(move || {
            MigrationSet::from_sources(files.into_iter().map(|f| (f.name, f.sql)))
        })
        .await
        .map_err(|e| RequestError::Internal(format!("loading a migration set: {e}")))?
        .map_err(|source| MigrationError::Set {
            field: "scope.database".to_owned(),
            context: format!("the uploaded migrations of {database:?}"),
            source: Box::new(source),
        })?;
        Ok(LoadedSet {
            database: database.to_owned(),
            set,
            source: SetSource::Uploaded { by, at },
        })
    }

    /// Checks `files` as a whole set and keeps it as the set of `database`
    /// (replacing the previous upload). Refused when a directory is
    /// configured for it.
    pub async fn store_set(
        &self,
        database: &str,
        files: Vec<(String, String)>,
        caller: &Caller,
    ) -> Result<LoadedSet, MigrationError> {
        if database.is_empty() {
            return Err(RequestError::invalid("database", "must name a configured database").into());
        }
        if self.registry.targets_for_database(database).is_empty() {
            return Err(RequestError::NotFound(format!(
                "database {database:?} is not configured in any cloud"
            ))
            .into());
        }
        if let Some(identity) = &caller.identity
            && self
                .registry
                .targets_for_database(database)
                .iter()
                .any(|t| !identity.may_access(t))
        {
            return Err(RequestError::PermissionDenied(format!(
                "{} may not reach every copy of {database:?} (API key allow-list)",
                identity.label()
            ))
            .into());
        }
        if let Some(dir) = self.config.migrations_dir(database) {
            return Err(MigrationError::DirectoryConfigured {
                database: database.to_owned(),
                dir: dir.to_owned(),
            });
        }
        if files.is_empty() {
            return Err(RequestError::invalid("files", "a set holds at least one file").into());
        }
        let names: Vec<String> = files.iter().map(|(name, _)| name.clone()).collect();
        let checking = files.clone();
        let set = tokio::task::spawn_blocking(move || MigrationSet::from_sources(checking))
            .await
            .map_err(|e| RequestError::Internal(format!("checking a migration set: {e}")))?
            .map_err(|source| {
                let index = set_error_file(&source).and_then(|file| names.iter().position(|n| n == file));
                MigrationError::Set {
                    field: index.map_or_else(|| "files".to_owned(), |i| format!("files[{i}]")),
                    context: "the uploaded set".to_owned(),
                    source: Box::new(source),
                }
            })?;
        let mut stored: Vec<StoredFile> = files
            .into_iter()
            .map(|(name, sql)| StoredFile { name, sql })
            .collect();
        stored.sort_by(|a, b| a.name.cmp(&b.name));
        let at: DateTime<Utc> = sqlx::query_scalar(
            "INSERT INTO pgfleet.migration_sets (database, files, uploaded_by) VALUES ($1, $2, $3) \
             ON CONFLICT (database) DO UPDATE SET files = EXCLUDED.files, uploaded_by = EXCLUDED.uploaded_by, \
             uploaded_at = now() RETURNING uploaded_at",
        )
        .bind(database)
        .bind(Json(&stored))
        .bind(&caller.label)
        .fetch_one(self.audit.pool())
        .await?;
        Ok(LoadedSet {
            database: database.to_owned(),
            set,
            source: SetSource::Uploaded {
                by: caller.label.clone(),
                at,
            },
        })
    }

    /// Where every target of `scope` stands (an unreachable one in its entry).
    pub async fn status(
        &self,
        scope: &MigrationScope,
        caller: &Caller,
    ) -> Result<(LoadedSet, Vec<(Target, Result<TargetStatus, TargetFailure>)>), MigrationError> {
        let targets = self.resolve(scope, caller)?;
        let set = self.load_set(&scope.database).await?;
        let statuses = join_all(targets.iter().map(|t| self.read_status(t, &set.set))).await;
        Ok((set, targets.into_iter().zip(statuses).collect()))
    }

    /// What an apply would run on each target of `scope`.
    pub async fn plan(
        &self,
        scope: &MigrationScope,
        up_to: Option<i64>,
        caller: &Caller,
    ) -> Result<(LoadedSet, Vec<(Target, Result<Plan, TargetFailure>)>), MigrationError> {
        let targets = self.resolve(scope, caller)?;
        let set = self.load_set(&scope.database).await?;
        check_up_to(&set.set, up_to)?;
        let plans = join_all(targets.iter().map(|t| async {
            if self.is_read_only(t) {
                return Err(TargetFailure::new(
                    FailureCode::FailedPrecondition,
                    Refusal::ReadOnly.to_string(),
                ));
            }
            let status = self.read_status(t, &set.set).await?;
            pgfleet_migrate::plan_from_status(&set.set, &status, up_to)
                .map_err(|refusal| TargetFailure::new(FailureCode::FailedPrecondition, refusal.to_string()))
        }))
        .await;
        Ok((set, targets.into_iter().zip(plans).collect()))
    }

    /// True when `target` is configured `read_only = true`.
    fn is_read_only(&self, target: &Target) -> bool {
        self.registry
            .database_config(target)
            .is_some_and(|database| database.read_only)
    }

    /// Refuses, before anything is locked or recorded, a write that would
    /// reach a copy configured `read_only = true` (as executions are): the
    /// caller names the other targets explicitly.
    fn refuse_read_only(&self, targets: &[Target]) -> Result<(), MigrationError> {
        let refused: Vec<(Target, Refusal)> = targets
            .iter()
            .filter(|target| self.is_read_only(target))
            .map(|target| (target.clone(), Refusal::ReadOnly))
            .collect();
        if refused.is_empty() {
            Ok(())
        } else {
            Err(MigrationError::Refused(refused))
        }
    }

    async fn read_status(&self, target: &Target, set: &MigrationSet) -> Result<TargetStatus, TargetFailure> {
        let mut checkout = self
            .registry
            .acquire(target, Route::Write)
            .await
            .map_err(|e| registry_failure(&e))?;
        let mut transaction = begin_read_only(checkout.connection_mut(), self.read_timeout())
            .await
            .map_err(|e| TargetFailure::from_sqlx(&e))?;
        let status = pgfleet_migrate::status(&mut transaction, set)
            .await
            .map_err(|e| tracking_failure(&e))?;
        if let Err(error) = transaction.rollback().await {
            tracing::debug!(%target, %error, "ending a read-only status transaction failed");
        }
        Ok(status)
    }

    /// Checks, locks and records an apply: the call-level refusals happen
    /// here, before anything runs.
    pub async fn prepare_apply(
        &self,
        spec: ApplySpec,
        caller: &Caller,
    ) -> Result<PreparedApply, MigrationError> {
        let targets = self.resolve(&spec.scope, caller)?;
        self.refuse_read_only(&targets)?;
        let set = self.load_set(&spec.scope.database).await?;
        check_up_to(&set.set, spec.up_to)?;
        let lock = self.lock_database(&spec.scope.database, spec.lock_wait).await?;
        // Under the database lock nobody else changes what the targets
        // have, so this check stands for the run (an unreachable target
        // fails in the rollout instead).
        let checks = join_all(targets.iter().map(|t| self.read_status(t, &set.set))).await;
        let mut refused = Vec::new();
        let mut planned: Vec<i64> = Vec::new();
        for (target, status) in targets.iter().zip(&checks) {
            let Ok(status) = status else { continue };
            match pgfleet_migrate::plan_from_status(&set.set, status, spec.up_to) {
                Ok(plan) => planned.extend(plan.migrations.iter().map(|m| m.version)),
                Err(refusal) => refused.push((target.clone(), refusal)),
            }
        }
        if !refused.is_empty() {
            lock.release().await;
            return Err(MigrationError::Refused(refused));
        }
        planned.sort_unstable();
        planned.dedup();
        let mut query = format!(
            "-- pgfleet migrations apply: {} up to {}, policy {:?}{}\n",
            set.database,
            spec.up_to
                .map_or_else(|| "the newest version".to_owned(), |v| v.to_string()),
            spec.rollout.policy,
            if spec.rollout.stop_on_first_failure {
                ", stop on first failure"
            } else {
                ""
            }
        );
        describe_versions(&mut query, &set.set, &planned);
        let new = self.new_execution(Kind::MigrationApply, &spec.scope, &targets, caller, query);
        let record = match self.audit.open(new).await {
            Ok(record) => record,
            Err(error) => {
                lock.release().await;
                return Err(error.into());
            }
        };
        let options = ApplyOptions {
            up_to: spec.up_to,
            applied_by: caller.label.clone(),
            execution_id: Some(record.id()),
            lock_wait: spec.lock_wait,
        };
        Ok(PreparedApply {
            engine: self.clone(),
            set,
            targets,
            options,
            rollout: spec.rollout,
            lock,
            record,
        })
    }

    async fn lock_database(&self, database: &str, wait: Duration) -> Result<MigrationLock, MigrationError> {
        match MigrationLock::acquire(self.audit.pool(), database, wait).await? {
            Ok(lock) => Ok(lock),
            Err(waited) => Err(MigrationError::Busy {
                database: database.to_owned(),
                waited,
            }),
        }
    }

    fn new_execution(
        &self,
        kind: Kind,
        scope: &MigrationScope,
        targets: &[Target],
        caller: &Caller,
        query: String,
    ) -> NewExecution {
        NewExecution {
            id: Uuid::now_v7(),
            kind,
            actor: caller.actor.clone(),
            role: caller.role,
            client_address: caller.origin.client_address.clone(),
            request_id: caller.origin.request_id.clone(),
            query,
            query_redacted: false,
            fingerprint: String::new(),
            statement_classes: vec!["DDL".to_owned()],
            database: scope.database.clone(),
            pg_schema: String::new(),
            scope: match scope.selection {
                Selection::AllClouds => TargetScope::AllClouds,
                Selection::Cloud(_) => TargetScope::Cloud,
                Selection::Targets(_) => TargetScope::Targets,
            },
            targets: targets.iter().map(recorded_target).collect(),
            read_only: false,
            confirmed_dangerous: false,
            findings: Vec::new(),
            replication_job_id: None,
        }
    }

    /// Runs the down file of `spec.version` on each target whose newest
    /// applied version it is (refused on the others), all at once.
    pub async fn rollback(
        &self,
        spec: VersionSpec,
        caller: &Caller,
    ) -> Result<WriteReport<RolledBack>, MigrationError> {
        let mut query = format!(
            "-- pgfleet migrations rollback: {} version {}\n",
            spec.scope.database, spec.version
        );
        let (version, wait) = (spec.version, spec.lock_wait);
        self.write_each(
            Kind::MigrationRollback,
            &spec,
            caller,
            &mut query,
            move |conn, set| {
                Box::pin(async move {
                    pgfleet_migrate::rollback_newest(conn, set, Some(version), wait)
                        .await
                        .map_err(|e| rollback_failure(&e))
                })
            },
        )
        .await
    }

    /// Records the file's checksum for the applied `spec.version` on each target.
    pub async fn repair(
        &self,
        spec: VersionSpec,
        caller: &Caller,
    ) -> Result<WriteReport<Repaired>, MigrationError> {
        let mut query = format!(
            "-- pgfleet migrations repair-checksum: {} version {}\n",
            spec.scope.database, spec.version
        );
        let (version, wait) = (spec.version, spec.lock_wait);
        self.write_each(
            Kind::MigrationRepair,
            &spec,
            caller,
            &mut query,
            move |conn, set| {
                Box::pin(async move {
                    pgfleet_migrate::repair_checksum(conn, set, version, wait)
                        .await
                        .map_err(|e| TargetApplyFailure::of(repair_failure(&e)))
                })
            },
        )
        .await
    }

    /// Locks the database, opens the record, runs `write` on every target at
    /// once, closes the record with their outcomes.
    async fn write_each<R: Clone + Send>(
        &self,
        kind: Kind,
        spec: &VersionSpec,
        caller: &Caller,
        query: &mut String,
        write: impl for<'a> Fn(
            &'a mut PgConnection,
            &'a MigrationSet,
        ) -> futures::future::BoxFuture<'a, Result<R, TargetApplyFailure>>,
    ) -> Result<WriteReport<R>, MigrationError> {
        if spec.version <= 0 {
            return Err(RequestError::invalid("version", "name the version (1 or more)").into());
        }
        let targets = self.resolve(&spec.scope, caller)?;
        self.refuse_read_only(&targets)?;
        let set = self.load_set(&spec.scope.database).await?;
        if set.set.get(spec.version).is_none() {
            return Err(RequestError::invalid(
                "version",
                format!("version {} is not in the set of {:?}", spec.version, set.database),
            )
            .into());
        }
        describe_versions(query, &set.set, &[spec.version]);
        let lock = self.lock_database(&spec.scope.database, spec.lock_wait).await?;
        let new = self.new_execution(kind, &spec.scope, &targets, caller, std::mem::take(query));
        let record = match self.audit.open(new).await {
            Ok(record) => record.started(),
            Err(error) => {
                lock.release().await;
                return Err(error.into());
            }
        };
        let execution_id = record.id();
        let results = join_all(targets.iter().map(|target| {
            let write = &write;
            let set = &set.set;
            let record = &record;
            async move {
                let started = Instant::now();
                let result = match self.registry.acquire(target, Route::Write).await {
                    Err(error) => Err(TargetApplyFailure::of(registry_failure(&error))),
                    Ok(mut checkout) => {
                        let result = write(checkout.connection_mut(), set).await;
                        reset(checkout).await;
                        result
                    }
                };
                let outcome = recorded_outcome(target, result.as_ref().err(), started.elapsed());
                record.add_outcome(&outcome).await;
                (target.clone(), result, outcome)
            }
        }))
        .await;
        let outcomes = results.iter().map(|(_, _, o)| o.clone()).collect();
        record.finish(outcomes).await;
        lock.release().await;
        Ok(WriteReport {
            execution_id,
            results: results.into_iter().map(|(t, r, _)| (t, r)).collect(),
        })
    }

    /// Compares every target of `scope` with `reference` (the first target
    /// when `None`; any copy of the database).
    pub async fn drift(
        &self,
        scope: &MigrationScope,
        reference: Option<Target>,
        schemas: &[String],
        caller: &Caller,
    ) -> Result<DriftReport, MigrationError> {
        let targets = self.resolve(scope, caller)?;
        let reference = match reference {
            Some(reference) => {
                let wanted = MigrationScope {
                    database: scope.database.clone(),
                    selection: Selection::Targets(vec![reference]),
                };
                self.resolve(&wanted, caller)
                    .map_err(|error| match error {
                        RequestError::InvalidArgument { message, .. } => {
                            RequestError::invalid("reference", message)
                        }
                        other => other,
                    })?
                    .remove(0)
            }
            None => targets[0].clone(),
        };
        let schemas: Vec<&str> = schemas.iter().map(String::as_str).collect();
        let reference_snapshot = self.snapshot(&reference, &schemas).await.map_err(|failure| {
            RequestError::Unavailable(format!("reference {reference}: {}", failure.message))
        })?;
        let others: Vec<Target> = targets.into_iter().filter(|t| *t != reference).collect();
        let snapshots = join_all(others.iter().map(|t| self.snapshot(t, &schemas))).await;
        Ok(DriftReport {
            targets: others
                .into_iter()
                .zip(snapshots)
                .map(|(t, s)| (t, s.map(|s| pgfleet_migrate::diff(&reference_snapshot, &s))))
                .collect(),
            reference,
        })
    }

    async fn snapshot(
        &self,
        target: &Target,
        schemas: &[&str],
    ) -> Result<pgfleet_migrate::SchemaSnapshot, TargetFailure> {
        let mut checkout = self
            .registry
            .acquire(target, Route::Write)
            .await
            .map_err(|e| registry_failure(&e))?;
        let mut transaction = begin_read_only(checkout.connection_mut(), self.read_timeout())
            .await
            .map_err(|e| TargetFailure::from_sqlx(&e))?;
        let snapshot = pgfleet_migrate::schema_snapshot(&mut transaction, schemas)
            .await
            .map_err(|e| pg_failure(FailureCode::Aborted, &e.0))?;
        if let Err(error) = transaction.rollback().await {
            tracing::debug!(%target, %error, "ending a read-only snapshot transaction failed");
        }
        Ok(snapshot)
    }
}

impl PreparedApply {
    /// The audit record of this apply.
    pub fn execution_id(&self) -> Uuid {
        self.record.id()
    }

    pub fn targets(&self) -> &[Target] {
        &self.targets
    }

    pub fn set(&self) -> &LoadedSet {
        &self.set
    }

    /// Runs the rollout to its end, sending progress to `events` (a closed
    /// receiver stops nothing: a schema change is not interrupted because
    /// its caller left). Closes the record and releases the lock. The
    /// channel is unbounded so a slow reader never holds a migration (and its
    /// locks) open; it is bounded in fact: a few events per (target,
    /// migration) of a set that was loaded whole.
    pub async fn run(self, events: mpsc::UnboundedSender<RolloutEvent>) -> bool {
        let Self {
            engine,
            set,
            targets,
            options,
            rollout,
            lock,
            record,
        } = self;
        let started = Instant::now();
        let record = record.started();
        let report = pgfleet_migrate::rollout(
            targets,
            rollout,
            |t| t.cloud.as_str(),
            |target| {
                let target = target.clone();
                let events = events.clone();
                let engine = &engine;
                let set = &set.set;
                let options = &options;
                let record = &record;
                async move {
                    let began = Instant::now();
                    let result = engine.apply_target(&target, set, options, &events).await;
                    let outcome = recorded_outcome(&target, result.failure.as_ref(), began.elapsed());
                    record.add_outcome(&outcome).await;
                    let _ = events.send(RolloutEvent::TargetFinished {
                        target: target.clone(),
                        result: Box::new(result.clone()),
                    });
                    if result.success() {
                        Ok(outcome)
                    } else {
                        Err(outcome)
                    }
                }
            },
        )
        .await;
        let mut outcomes = Vec::new();
        let mut failed = Vec::new();
        for (target, outcome) in report.outcomes {
            match outcome {
                TargetOutcome::Done(recorded) => outcomes.push(recorded),
                TargetOutcome::Failed(recorded) => {
                    failed.push(target);
                    outcomes.push(recorded);
                }
                TargetOutcome::NotRun(reason) => {
                    let why = match reason {
                        NotRun::CanaryFailed => "not run: a target of the canary cloud failed",
                        NotRun::EarlierFailure => "not run: an earlier target failed (stop on first failure)",
                    };
                    outcomes.push(RecordedOutcome {
                        outcome_unknown: false,
                        ..RecordedOutcome::unknown(recorded_target(&target), why)
                    });
                    let _ = events.send(RolloutEvent::TargetFinished {
                        target: target.clone(),
                        result: Box::new(TargetApplyResult {
                            not_run: Some(reason),
                            ..TargetApplyResult::default()
                        }),
                    });
                    failed.push(target);
                }
            }
        }
        record.finish(outcomes).await;
        lock.release().await;
        let success = failed.is_empty();
        let _ = events.send(RolloutEvent::Finished {
            success,
            duration: started.elapsed(),
            failed,
        });
        success
    }
}

impl Migrations {
    async fn apply_target(
        &self,
        target: &Target,
        set: &MigrationSet,
        options: &ApplyOptions,
        events: &mpsc::UnboundedSender<RolloutEvent>,
    ) -> TargetApplyResult {
        let mut checkout = match self.registry.acquire(target, Route::Write).await {
            Ok(checkout) => checkout,
            Err(error) => {
                return TargetApplyResult {
                    failure: Some(TargetApplyFailure::of(registry_failure(&error))),
                    ..TargetApplyResult::default()
                };
            }
        };
        let mut applied = Vec::new();
        let result = pgfleet_migrate::apply_on_target(checkout.connection_mut(), set, options, |event| {
            if let ApplyEvent::Applied { version, .. } = &event {
                applied.push(*version);
            }
            let _ = events.send(RolloutEvent::Target {
                target: target.clone(),
                event,
            });
        })
        .await;
        reset(checkout).await;
        match result {
            Ok(report) => TargetApplyResult {
                applied,
                newest_applied: report.newest_applied,
                ..TargetApplyResult::default()
            },
            Err(error) => {
                let newest_applied = match &error {
                    ApplyError::Migration(failed) => failed.applied_before.last().copied(),
                    _ => None,
                };
                TargetApplyResult {
                    applied,
                    failure: Some(apply_failure(&error)),
                    newest_applied,
                    ..TargetApplyResult::default()
                }
            }
        }
    }
}

/// Resets a connection a migration used before it goes back to its pool
/// (a migration may `SET` anything); one that cannot be reset is closed.
async fn reset(mut checkout: pgfleet_registry::Checkout) {
    if !discard_session(checkout.connection_mut()).await {
        drop(checkout.connection.detach());
    }
}

fn check_up_to(set: &MigrationSet, up_to: Option<i64>) -> Result<(), MigrationError> {
    match up_to {
        Some(version) if set.get(version).is_none() => Err(RequestError::invalid(
            "up_to_version",
            format!(
                "version {version} is not in the set (newest: {})",
                set.newest_version()
                    .map_or_else(|| "none".to_owned(), |v| v.to_string())
            ),
        )
        .into()),
        _ => Ok(()),
    }
}

/// Appends each version's file and checksum to an audit record's text, so
/// the record pins what ran.
fn describe_versions(query: &mut String, set: &MigrationSet, versions: &[i64]) {
    for version in versions {
        if let Some(migration) = set.get(*version) {
            query.push_str(&format!(
                "-- {} sha256:{}{}\n",
                migration.up().file(),
                migration.checksum(),
                migration
                    .down()
                    .map_or_else(String::new, |down| format!(" (down: {})", down.file()))
            ));
        }
    }
}

fn recorded_outcome(
    target: &Target,
    failure: Option<&TargetApplyFailure>,
    duration: Duration,
) -> RecordedOutcome {
    RecordedOutcome {
        target: RecordedTarget {
            cloud: target.cloud.clone(),
            database: target.database.clone(),
        },
        success: failure.is_none(),
        command_tags: Vec::new(),
        rows_affected: 0,
        duration_micros: u64::try_from(duration.as_micros()).unwrap_or(u64::MAX),
        error: failure.map(|f| {
            let mut error = recorded_error(&f.failure);
            if let Some(version) = f.version {
                error.message = format!("version {version}: {}", error.message);
            }
            error
        }),
        outcome_unknown: failure.is_some_and(|f| f.outcome_unknown),
        failed_statement_index: None,
        replica: String::new(),
    }
}

/// A file of an uploaded set, as kept in `pgfleet.migration_sets`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct StoredFile {
    name: String,
    sql: String,
}
