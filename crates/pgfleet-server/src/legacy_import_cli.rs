//! `pgfleet import-legacy --from postgres://…`: moves the old Node.js Dual
//! Database Manager's users and query history into pgfleet.
//!
//! - Users keep their bcrypt hash as it was (so their passwords keep
//!   working; pgfleet re-hashes at the first login), role, active flag,
//!   e-mail, name, creation and last login times. A user whose username or
//!   e-mail pgfleet already has is a conflict: reported, never overwritten.
//!   A user pgfleet cannot take as it is (a hash that is not bcrypt, a
//!   username or e-mail pgfleet refuses) is refused with the reason.
//! - History rows become audit records of kind `IMPORTED_QUERY` with the old
//!   row's id and time, appended after the chain's head between the two
//!   links of the run's own `LEGACY_IMPORT` record
//!   ([`pgfleet_engine::audit::import`]).
//! - Idempotent: what was imported is listed in `pgfleet.legacy_imports`
//!   by its old key, and a run decides what is new under an advisory lock.
//! - All or nothing: users, records and the list commit in one history-store
//!   transaction. `--dry-run` plans the same way and changes nothing.
//!
//! Neither password hashes nor the URL's password are ever printed or
//! logged; the URL can come from `PGFLEET_LEGACY_URL` to keep it out of the
//! process list.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::time::Duration;

use clap::Args;
use pgfleet_config::LoadedConfig;
use pgfleet_engine::advisory_locks::HistoryLock;
use pgfleet_engine::audit::import::{self as audit_import, ClosedRecord, RecordActor};
use pgfleet_engine::audit::{AuditError, AuditLog, Kind, Status, TargetScope};
use pgfleet_engine::history_store::{self, HistoryStoreError};
use pgfleet_engine::identity::Role;
use pgfleet_engine::legacy::{self, LegacyError, LegacyQuery, LegacySource, LegacyUser, StoredText};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::auth::AuthError;
use crate::auth::fields;
use crate::auth::passwords::check_foreign_hash;
use crate::auth::users::{ImportedUser, NewUser, UserStore};

/// The system actor of the import's own record.
const IMPORT_ACTOR: &str = "import-legacy";

/// `pgfleet import-legacy`
#[derive(Debug, Args)]
pub struct ImportLegacyArgs {
    /// The old system's history database, `postgres://user:password@host:port/database`
    /// (libpq URL parameters such as `sslmode` apply). Prefer the environment
    /// variable: a command line is visible to every local user.
    #[arg(long = "from", env = "PGFLEET_LEGACY_URL", hide_env_values = true)]
    from: LegacyUrl,
    /// Print what would be imported, skipped and refused; change nothing.
    #[arg(long)]
    dry_run: bool,
}

/// The `--from` URL: it carries a password, so it is never shown, not even
/// in `Debug` output.
#[derive(Clone)]
pub struct LegacyUrl(String);

impl From<String> for LegacyUrl {
    fn from(url: String) -> Self {
        Self(url)
    }
}

impl fmt::Debug for LegacyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Why an import did not happen.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error(transparent)]
    Legacy(#[from] LegacyError),
    #[error(transparent)]
    HistoryStore(#[from] HistoryStoreError),
    #[error("history store: {0}")]
    Store(#[from] sqlx::Error),
    #[error("audit trail: {0}")]
    Audit(#[from] AuditError),
    #[error("users: {0}")]
    Auth(#[from] AuthError),
}

/// What happens to one old user.
#[derive(Debug, Clone, PartialEq, Eq)]
enum UserAction {
    Create,
    /// A previous run imported it as this pgfleet user.
    AlreadyImported(Uuid),
    /// Its username or e-mail belongs to another pgfleet user.
    Conflict(String),
    /// pgfleet cannot take it as it is.
    Refused(String),
}

/// One old user and its fate.
struct PlannedUser<'a> {
    legacy: &'a LegacyUser,
    /// As pgfleet stores it (lower case), or the old one lower-cased when
    /// pgfleet refuses it.
    username: String,
    email: String,
    name: String,
    role: Option<Role>,
    action: UserAction,
}

/// What happens to one history row.
#[derive(Debug, Clone, PartialEq, Eq)]
enum HistoryAction {
    Import,
    AlreadyImported,
    Conflict(String),
    Refused(String),
}

/// Everything a run would do.
struct Plan<'a> {
    users: Vec<PlannedUser<'a>>,
    history: Vec<(&'a LegacyQuery, HistoryAction)>,
}

impl Plan<'_> {
    fn users_to_create(&self) -> usize {
        self.users
            .iter()
            .filter(|u| u.action == UserAction::Create)
            .count()
    }

    fn history_to_import(&self) -> usize {
        self.history
            .iter()
            .filter(|(_, a)| *a == HistoryAction::Import)
            .count()
    }

    /// Something was refused or conflicts: the run needs a look.
    fn needs_attention(&self) -> bool {
        self.users
            .iter()
            .any(|u| matches!(u.action, UserAction::Conflict(_) | UserAction::Refused(_)))
            || self
                .history
                .iter()
                .any(|(_, a)| matches!(a, HistoryAction::Conflict(_) | HistoryAction::Refused(_)))
    }

    fn summary(&self) -> String {
        let count_users = |f: fn(&UserAction) -> bool| self.users.iter().filter(|u| f(&u.action)).count();
        let count_history = |f: fn(&HistoryAction) -> bool| self.history.iter().filter(|(_, a)| f(a)).count();
        format!(
            "users: {} to create, {} already imported, {} in conflict, {} refused; \
             history: {} to import, {} already imported, {} in conflict, {} refused",
            self.users_to_create(),
            count_users(|a| matches!(a, UserAction::AlreadyImported(_))),
            count_users(|a| matches!(a, UserAction::Conflict(_))),
            count_users(|a| matches!(a, UserAction::Refused(_))),
            self.history_to_import(),
            count_history(|a| *a == HistoryAction::AlreadyImported),
            count_history(|a| matches!(a, HistoryAction::Conflict(_))),
            count_history(|a| matches!(a, HistoryAction::Refused(_))),
        )
    }
}

/// Runs the command; `Ok(false)` when some user or row was refused or in
/// conflict (the rest was imported), so the process exits 1.
pub async fn run(loaded: &LoadedConfig, args: ImportLegacyArgs) -> Result<bool, ImportError> {
    let source = LegacySource::parse(&args.from.0)?;
    let snapshot = source.read().await?;
    println!(
        "legacy database {}: {} user(s), {} history row(s)",
        source.describe(),
        snapshot.users.len(),
        snapshot.history.len()
    );
    let config = &loaded.config;
    let history_pool = history_store::pool(&config.history);
    let result = async {
        history_store::migrate(&history_pool, &config.history, Duration::from_secs(30)).await?;
        let audit = AuditLog::new(history_pool.clone(), config.audit.clone())?;
        audit.prepare_chain().await?;
        let mut transaction = history_pool.begin().await?;
        HistoryLock::LegacyImport.lock_xact(&mut transaction).await?;
        let plan = plan(&mut transaction, &snapshot.users, &snapshot.history).await?;
        print_plan(&plan);
        println!("{}", plan.summary());
        if args.dry_run {
            transaction.rollback().await?;
            println!("dry run: nothing was changed");
            return Ok(!plan.needs_attention());
        }
        if plan.users_to_create() == 0 && plan.history_to_import() == 0 {
            transaction.rollback().await?;
            println!("nothing to import");
            return Ok(!plan.needs_attention());
        }
        let done = import(&mut transaction, &audit, &source, &plan).await?;
        transaction.commit().await?;
        println!(
            "imported {} user(s) and {} history record(s) (import record {})",
            done.users, done.records, done.import_id
        );
        Ok(!plan.needs_attention() && done.late_conflicts == 0)
    }
    .await;
    history_pool.close().await;
    result
}

/// Decides, under the import lock, what each old user and row becomes.
async fn plan<'a>(
    connection: &mut PgConnection,
    users: &'a [LegacyUser],
    history: &'a [LegacyQuery],
) -> Result<Plan<'a>, ImportError> {
    let user_keys: Vec<String> = users.iter().map(|u| u.username.clone()).collect();
    let history_keys: Vec<String> = history.iter().map(|h| h.id.to_string()).collect();
    let imported_users: HashMap<String, Uuid> = sqlx::query_as::<_, (String, Uuid)>(
        "SELECT legacy_key, user_id FROM pgfleet.legacy_imports \
         WHERE legacy_table = 'users' AND legacy_key = ANY($1)",
    )
    .bind(&user_keys)
    .fetch_all(&mut *connection)
    .await?
    .into_iter()
    .collect();
    let imported_history: HashSet<String> = sqlx::query_scalar(
        "SELECT legacy_key FROM pgfleet.legacy_imports \
         WHERE legacy_table = 'query_history' AND legacy_key = ANY($1)",
    )
    .bind(&history_keys)
    .fetch_all(&mut *connection)
    .await?
    .into_iter()
    .collect();
    let ids: Vec<Uuid> = history.iter().map(|h| h.id).collect();
    let existing_records: HashSet<Uuid> =
        sqlx::query_scalar("SELECT id FROM pgfleet.executions WHERE id = ANY($1)")
            .bind(&ids)
            .fetch_all(&mut *connection)
            .await?
            .into_iter()
            .collect();

    let mut planned: Vec<PlannedUser<'a>> = users
        .iter()
        .map(|legacy| check_user(legacy, &imported_users))
        .collect();
    let candidates: Vec<&PlannedUser<'_>> = planned
        .iter()
        .filter(|u| u.action == UserAction::Create)
        .collect();
    let (taken_names, taken_emails) = UserStore::taken(
        connection,
        &candidates.iter().map(|u| u.username.clone()).collect::<Vec<_>>(),
        &candidates.iter().map(|u| u.email.clone()).collect::<Vec<_>>(),
    )
    .await?;
    // Names and e-mails the old system told apart by case only collide
    // here too: the first (lowest old id) wins.
    let mut claimed_names: HashSet<String> = HashSet::new();
    let mut claimed_emails: HashSet<String> = HashSet::new();
    for user in &mut planned {
        if user.action != UserAction::Create {
            continue;
        }
        let email = user.email.to_lowercase();
        if taken_names.contains(&user.username) {
            user.action = UserAction::Conflict(format!(
                "pgfleet already has a user named {:?}; not overwritten",
                user.username
            ));
        } else if claimed_names.contains(&user.username) {
            user.action = UserAction::Conflict(format!(
                "another old user is also {:?} in lower case and is imported instead",
                user.username
            ));
        } else if taken_emails.contains(&email) || claimed_emails.contains(&email) {
            user.action = UserAction::Conflict(format!(
                "the e-mail {:?} belongs to another user; not overwritten",
                user.email
            ));
        } else {
            claimed_names.insert(user.username.clone());
            claimed_emails.insert(email);
        }
    }

    let history = history
        .iter()
        .map(|row| {
            let action = if imported_history.contains(&row.id.to_string()) {
                HistoryAction::AlreadyImported
            } else if row.created_at.is_none() {
                HistoryAction::Refused("no created_at: its time cannot be kept".to_owned())
            } else if existing_records.contains(&row.id) {
                HistoryAction::Conflict("an audit record with this id exists already".to_owned())
            } else {
                HistoryAction::Import
            };
            (row, action)
        })
        .collect();
    Ok(Plan {
        users: planned,
        history,
    })
}

/// One old user checked on its own: already imported, refused, or a
/// candidate (conflicts are decided with the others).
fn check_user<'a>(legacy: &'a LegacyUser, imported: &HashMap<String, Uuid>) -> PlannedUser<'a> {
    let mut user = PlannedUser {
        legacy,
        username: legacy.username.to_lowercase(),
        email: legacy.email.trim().to_owned(),
        name: legacy.name.clone().unwrap_or_default(),
        role: legacy.role(),
        action: UserAction::Create,
    };
    if let Some(id) = imported.get(&legacy.username) {
        user.action = UserAction::AlreadyImported(*id);
        return user;
    }
    if let Err(reason) = take_as_it_is(&mut user) {
        user.action = UserAction::Refused(reason);
    }
    user
}

/// Puts `user`'s fields in pgfleet's form, or says why pgfleet cannot take
/// it as it is: the same checks as `pgfleet user create`, and a bcrypt hash.
fn take_as_it_is(user: &mut PlannedUser<'_>) -> Result<(), String> {
    let legacy = user.legacy;
    // The field checks' errors name their field already.
    user.username = fields::normalize_username("username", &legacy.username).map_err(|e| e.to_string())?;
    user.email = fields::check_email(&legacy.email).map_err(|e| e.to_string())?;
    user.name = fields::check_display_name("name", &user.name, 200).map_err(|e| e.to_string())?;
    if user.role.is_none() {
        return Err(format!("unknown role {:?}", legacy.role));
    }
    check_foreign_hash(&legacy.password_hash).map_err(|reason| format!("password hash: {reason}"))
}

fn print_plan(plan: &Plan<'_>) {
    for user in &plan.users {
        let what = match &user.action {
            UserAction::Create => format!(
                "create as {} {}",
                user.role.map_or("?", Role::as_str),
                if user.legacy.active() {
                    "(active)"
                } else {
                    "(inactive)"
                }
            ),
            UserAction::AlreadyImported(id) => format!("skip: already imported as {id}"),
            UserAction::Conflict(reason) => format!("conflict: {reason}"),
            UserAction::Refused(reason) => format!("refused: {reason}"),
        };
        println!(
            "user {:?} (old id {}): {what}",
            user.legacy.username, user.legacy.id
        );
    }
    // History can be long: the rows that need a look, one line each.
    for (row, action) in &plan.history {
        let what = match action {
            HistoryAction::Conflict(reason) => format!("conflict: {reason}"),
            HistoryAction::Refused(reason) => format!("refused: {reason}"),
            HistoryAction::Import | HistoryAction::AlreadyImported => continue,
        };
        println!("history {}: {what}", row.id);
    }
}

/// What a run wrote.
struct Imported {
    users: usize,
    records: usize,
    import_id: Uuid,
    /// Users taken by someone else between the plan and the insert.
    late_conflicts: usize,
}

/// Writes the plan in the caller's transaction: users, records (after the
/// chain's head, bracketed by the import's own record), and the list of
/// what was imported.
async fn import(
    connection: &mut PgConnection,
    audit: &AuditLog,
    source: &LegacySource,
    plan: &Plan<'_>,
) -> Result<Imported, ImportError> {
    let import_id = Uuid::now_v7();
    // Old username → (pgfleet id if it is this person's account, name, role).
    let mut accounts: HashMap<&str, (Option<Uuid>, String, Option<Role>)> = HashMap::new();
    let mut created: Vec<String> = Vec::new();
    let mut ledger = Ledger::default();
    let mut late_conflicts = 0;
    for user in &plan.users {
        let id = match &user.action {
            UserAction::AlreadyImported(id) => Some(*id),
            UserAction::Create => {
                let Some(role) = user.role else { continue };
                let inserted = UserStore::insert_imported(
                    connection,
                    &ImportedUser {
                        user: NewUser {
                            username: &user.username,
                            email: &user.email,
                            name: &user.name,
                            password_hash: &user.legacy.password_hash,
                            role,
                        },
                        active: user.legacy.active(),
                        created_at: user.legacy.created_at,
                        last_login_at: user.legacy.last_login,
                    },
                )
                .await?;
                match inserted {
                    Some(record) => {
                        created.push(format!(
                            "{} ({}{})",
                            record.username,
                            record.role(),
                            if record.active { "" } else { ", inactive" }
                        ));
                        ledger.push(
                            "users",
                            &user.legacy.username,
                            user.legacy.id.to_string(),
                            Some(record.id),
                            None,
                        );
                        Some(record.id)
                    }
                    None => {
                        late_conflicts += 1;
                        println!(
                            "user {:?}: conflict: taken by another user while importing; not overwritten",
                            user.legacy.username
                        );
                        None
                    }
                }
            }
            UserAction::Conflict(_) | UserAction::Refused(_) => None,
        };
        accounts.insert(&user.legacy.username, (id, user.username.clone(), user.role));
    }

    let mut records = Vec::new();
    for (row, action) in &plan.history {
        if *action != HistoryAction::Import {
            continue;
        }
        let (actor, role) = actor_of(row, &accounts);
        let text = StoredText::of(&row.query).await;
        let Some(record) = legacy::imported_record(row, text, actor, role) else {
            continue;
        };
        ledger.push(
            "query_history",
            &row.id.to_string(),
            row.id.to_string(),
            None,
            Some(row.id),
        );
        records.push(record);
    }

    let import = ClosedRecord {
        id: import_id,
        kind: Kind::LegacyImport,
        actor: RecordActor::System(IMPORT_ACTOR.to_owned()),
        role: Role::Master,
        query: format!(
            "import-legacy from {}: {} user(s) created{}{}; {} history record(s) imported",
            source.describe(),
            created.len(),
            if created.is_empty() { "" } else { ": " },
            created.join(", "),
            records.len()
        ),
        query_redacted: false,
        fingerprint: String::new(),
        statement_classes: Vec::new(),
        database: String::new(),
        scope: TargetScope::Targets,
        targets: Vec::new(),
        started_at: None,
        finished_at: None,
        status: Status::Succeeded,
        success: true,
        outcomes: Vec::new(),
    };
    audit_import::write(connection, audit, &import, &records).await?;
    ledger.write(connection, import_id).await?;
    Ok(Imported {
        users: created.len(),
        records: records.len(),
        import_id,
        late_conflicts,
    })
}

/// Who ran an old row, and with what role: its user's pgfleet account when
/// it was imported; by name only when the name belongs to someone else in
/// pgfleet (conflict) or was refused; the old user id when the row names
/// no user. The old history did not record roles: the user's role at
/// import time stands in (USER, which running a write required, without a
/// user).
fn actor_of(
    row: &LegacyQuery,
    accounts: &HashMap<&str, (Option<Uuid>, String, Option<Role>)>,
) -> (RecordActor, Role) {
    match row.username.as_deref().and_then(|name| accounts.get(name)) {
        Some((id, username, role)) => (
            RecordActor::User {
                id: *id,
                username: username.clone(),
            },
            role.unwrap_or(Role::User),
        ),
        None => (
            RecordActor::System(match row.user_id {
                Some(id) => format!("legacy-user-{id}"),
                None => "legacy-unknown-user".to_owned(),
            }),
            Role::User,
        ),
    }
}

/// Rows of `pgfleet.legacy_imports` to write.
#[derive(Default)]
struct Ledger {
    tables: Vec<&'static str>,
    keys: Vec<String>,
    ids: Vec<String>,
    users: Vec<Option<Uuid>>,
    executions: Vec<Option<Uuid>>,
}

impl Ledger {
    fn push(
        &mut self,
        table: &'static str,
        key: &str,
        id: String,
        user: Option<Uuid>,
        execution: Option<Uuid>,
    ) {
        self.tables.push(table);
        self.keys.push(key.to_owned());
        self.ids.push(id);
        self.users.push(user);
        self.executions.push(execution);
    }

    async fn write(&self, connection: &mut PgConnection, import_id: Uuid) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO pgfleet.legacy_imports (legacy_table, legacy_key, legacy_id, user_id, execution_id, \
             import_id) SELECT l.legacy_table, l.legacy_key, l.legacy_id, l.user_id, l.execution_id, $6 \
             FROM unnest($1::text[], $2::text[], $3::text[], $4::uuid[], $5::uuid[]) \
             AS l (legacy_table, legacy_key, legacy_id, user_id, execution_id)",
        )
        .bind(&self.tables)
        .bind(&self.keys)
        .bind(&self.ids)
        .bind(&self.users)
        .bind(&self.executions)
        .bind(import_id)
        .execute(connection)
        .await
        .map(drop)
    }
}
