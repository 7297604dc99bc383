//! What one statement does: its class, command tag, whether it can write, and
//! what about it is dangerous — decided from its whole parse tree.
//!
//! The top-level node gives the statement its base class and command tag (the
//! tags follow PostgreSQL's `CreateCommandTag`). Then the whole tree is searched
//! for what can write from inside a read: data-modifying statements (writable
//! CTEs, `COPY (DELETE … RETURNING)`), `SELECT … INTO`, locking clauses and
//! calls to [`SIDE_EFFECT_FUNCTIONS`](crate::SIDE_EFFECT_FUNCTIONS). Any of
//! those turns a would-be read into a write. Functions not in that table are
//! assumed not to write: a user-defined function that writes is caught by the
//! `READ ONLY` transaction pgfleet runs reads in, not here.

use std::fmt;

use pg_query::protobuf::{
    AExprKind, AlterSubscriptionType, AlterTableType, BoolExprType, DiscardMode, DropBehavior,
    LockClauseStrength, ObjectType, ReindexObjectType, TransactionStmtKind, VariableSetKind,
};
use serde::Serialize;

use crate::functions::{QualifiedName, SideEffectFunction, lookup_side_effect_function};
use crate::options::{OptionError, Options};
use crate::tree::{Descend, Node, Tree, relation_name, string_values};

/// What kind of statement this is, for deciding which roles may run it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StatementClass {
    /// Nothing in the statement can write: SELECT, VALUES, TABLE, SHOW, FETCH,
    /// EXPLAIN without ANALYZE, `COPY … TO STDOUT`, DECLARE CURSOR of a read.
    Read,
    /// Changes table data (DML), or reads in a way that writes: writable CTEs,
    /// locking clauses, side-effect functions, COPY FROM, TRUNCATE, EXECUTE.
    Write,
    /// Creates, changes or removes schema objects, roles, databases or
    /// privileges; also `SELECT … INTO`, CREATE TABLE AS, REFRESH MATERIALIZED VIEW.
    Ddl,
    /// Begins, ends or changes a transaction: BEGIN, COMMIT, ROLLBACK,
    /// SAVEPOINT, PREPARE TRANSACTION, `SET TRANSACTION`, `SET transaction_read_only`.
    TransactionControl,
    /// Changes only this session's state: SET, RESET, DISCARD, LISTEN, UNLISTEN,
    /// PREPARE, DEALLOCATE, CLOSE, SET CONSTRAINTS.
    Session,
    /// Maintenance and everything else: VACUUM, ANALYZE, CLUSTER, REINDEX,
    /// CHECKPOINT, LOCK, NOTIFY, DO, CALL, LOAD.
    Utility,
}

impl StatementClass {
    pub fn as_str(self) -> &'static str {
        match self {
            StatementClass::Read => "read",
            StatementClass::Write => "write",
            StatementClass::Ddl => "ddl",
            StatementClass::TransactionControl => "transaction_control",
            StatementClass::Session => "session",
            StatementClass::Utility => "utility",
        }
    }
}

impl fmt::Display for StatementClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a statement needs MASTER and `confirm_dangerous`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DangerCode {
    /// DROP of any object (also DROP OWNED, DROP DATABASE, DROP ROLE…).
    Drop,
    /// ALTER of any object (also RENAME, ALTER … OWNER/SET SCHEMA).
    Alter,
    /// ALTER SYSTEM: rewrites the server's configuration.
    AlterSystem,
    /// TRUNCATE: removes every row.
    Truncate,
    /// DELETE without WHERE (or with an always-true one), anywhere in the statement.
    DeleteWithoutWhere,
    /// UPDATE without WHERE (or with an always-true one), anywhere in the statement.
    UpdateWithoutWhere,
    /// GRANT, REVOKE, ALTER DEFAULT PRIVILEGES.
    Privileges,
    /// CREATE/ALTER/DROP ROLE or USER, REASSIGN OWNED.
    Role,
    /// CREATE/ALTER/DROP DATABASE.
    Database,
    /// VACUUM FULL: rewrites tables under an exclusive lock.
    VacuumFull,
    /// CLUSTER: rewrites tables under an exclusive lock.
    Cluster,
    /// REINDEX: rebuilds indexes, blocking writes unless CONCURRENTLY.
    Reindex,
    /// `COPY … PROGRAM`: runs a shell command on the database server.
    CopyProgram,
    /// `COPY … FROM/TO 'file'`: reads or writes a file on the database server.
    CopyServerFile,
    /// DO: runs an anonymous code block this crate cannot inspect.
    DoBlock,
    /// SET ROLE / SET SESSION AUTHORIZATION: changes whose privileges apply.
    SetRole,
    /// LOAD: loads a shared library into the server process.
    LoadLibrary,
    /// PREPARE TRANSACTION / COMMIT PREPARED / ROLLBACK PREPARED.
    PreparedTransaction,
    /// CREATE EXTENSION: installs code, possibly functions that reach outside the database.
    Extension,
    /// CREATE OR REPLACE: silently replaces an existing definition.
    ReplaceDefinition,
    /// A call to a dangerous entry of [`SIDE_EFFECT_FUNCTIONS`](crate::SIDE_EFFECT_FUNCTIONS).
    SideEffectFunction,
}

impl DangerCode {
    /// The stable code, as sent over the API.
    pub fn as_str(self) -> &'static str {
        match self {
            DangerCode::Drop => "drop",
            DangerCode::Alter => "alter",
            DangerCode::AlterSystem => "alter_system",
            DangerCode::Truncate => "truncate",
            DangerCode::DeleteWithoutWhere => "delete_without_where",
            DangerCode::UpdateWithoutWhere => "update_without_where",
            DangerCode::Privileges => "privileges",
            DangerCode::Role => "role",
            DangerCode::Database => "database",
            DangerCode::VacuumFull => "vacuum_full",
            DangerCode::Cluster => "cluster",
            DangerCode::Reindex => "reindex",
            DangerCode::CopyProgram => "copy_program",
            DangerCode::CopyServerFile => "copy_server_file",
            DangerCode::DoBlock => "do_block",
            DangerCode::SetRole => "set_role",
            DangerCode::LoadLibrary => "load_library",
            DangerCode::PreparedTransaction => "prepared_transaction",
            DangerCode::Extension => "extension",
            DangerCode::ReplaceDefinition => "replace_definition",
            DangerCode::SideEffectFunction => "side_effect_function",
        }
    }
}

impl fmt::Display for DangerCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One dangerous thing a statement does.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct DangerFinding {
    pub code: DangerCode,
    /// What it does, naming the objects involved where the tree has them.
    pub reason: String,
}

/// Everything decided about one statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Verdict {
    pub(crate) class: StatementClass,
    pub(crate) command: String,
    pub(crate) can_write: bool,
    pub(crate) requires_no_transaction_block: bool,
    pub(crate) is_transaction_control: bool,
    pub(crate) findings: Vec<DangerFinding>,
    pub(crate) notes: Vec<String>,
    /// Why the statement is refused before it runs (a repeated or unknown
    /// option, a setting outside the allow-list); the first reason found.
    pub(crate) refusal: Option<OptionError>,
}

impl Verdict {
    fn new(class: StatementClass, command: impl Into<String>) -> Self {
        let can_write = matches!(
            class,
            StatementClass::Write | StatementClass::Ddl | StatementClass::Utility
        );
        Verdict {
            class,
            command: command.into(),
            can_write,
            requires_no_transaction_block: false,
            is_transaction_control: class == StatementClass::TransactionControl,
            findings: Vec::new(),
            notes: Vec::new(),
            refusal: None,
        }
    }

    fn refuse(&mut self, error: OptionError) {
        self.refusal.get_or_insert(error);
    }

    fn finding(&mut self, code: DangerCode, reason: impl Into<String>) {
        if !self.findings.iter().any(|f| f.code == code) {
            self.findings.push(DangerFinding {
                code,
                reason: reason.into(),
            });
        }
    }

    fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    fn no_transaction_block(mut self, required: bool) -> Self {
        self.requires_no_transaction_block = required;
        self
    }
}

/// Classifies one statement from its tree.
pub(crate) fn classify(statement: &Tree) -> Verdict {
    let Some(root) = statement.as_node() else {
        let mut verdict = Verdict::new(StatementClass::Utility, "UNKNOWN");
        verdict.note("the parser returned no statement node; treated as able to write");
        return verdict;
    };
    if root.kind == "ExplainStmt" {
        return explain(root);
    }
    let mut verdict = base(root);
    absorb_effects(&mut verdict, root, &Effects::of(statement));
    generic_findings(&mut verdict, root);
    verdict
}

/// Every function called anywhere in the statement (definitions included),
/// lower-cased, in order of appearance, without repeats.
pub(crate) fn functions_called(statement: &Tree) -> Vec<QualifiedName> {
    let mut names: Vec<QualifiedName> = Vec::new();
    statement.walk(&mut |node| {
        if node.kind == "FuncCall"
            && let Some(name) = QualifiedName::from_parts(&string_values(node.list("funcname")))
            && !names.contains(&name)
        {
            names.push(name);
        }
        Descend::Yes
    });
    names
}

/// Every option EXPLAIN knows (PostgreSQL 13 to 18), and those of them
/// that take a boolean.
const EXPLAIN_OPTIONS: &[&str] = &[
    "analyze",
    "verbose",
    "costs",
    "settings",
    "generic_plan",
    "buffers",
    "serialize",
    "wal",
    "timing",
    "summary",
    "memory",
    "format",
];
const EXPLAIN_BOOLEAN_OPTIONS: &[&str] = &[
    "analyze",
    "verbose",
    "costs",
    "settings",
    "generic_plan",
    "buffers",
    "wal",
    "timing",
    "summary",
    "memory",
];

/// EXPLAIN is classified as the statement it explains, with or without
/// ANALYZE: a planned DELETE needs what the DELETE needs and is on record.
/// Reading ANALYZE right matters only for the notes then; its options are
/// still read strictly, since a list read wrongly is a list to refuse.
fn explain(root: &Node) -> Verdict {
    let inner = classify(root.field("query"));
    let options = Options::read(root.list("options"), "EXPLAIN", Some(EXPLAIN_OPTIONS)).and_then(|options| {
        options.check_booleans(EXPLAIN_BOOLEAN_OPTIONS)?;
        options.boolean("analyze")
    });
    let (analyze, refusal) = match options {
        Ok(analyze) => (analyze == Some(true), None),
        Err(error) => (false, Some(error)),
    };
    let mut notes = vec![if analyze {
        format!("EXPLAIN ANALYZE runs the {} it explains", inner.command)
    } else if inner.class == StatementClass::Read {
        "EXPLAIN without ANALYZE plans the statement without running it".to_owned()
    } else {
        format!(
            "EXPLAIN without ANALYZE only plans the {}, but is classified as the statement it explains: it needs the same role and goes on record",
            inner.command
        )
    }];
    notes.extend(inner.notes);
    Verdict {
        command: "EXPLAIN".into(),
        notes,
        refusal: inner.refusal.or(refusal),
        ..inner
    }
}

/// Class, tag and statement-specific findings from the top-level node.
fn base(root: &Node) -> Verdict {
    use StatementClass::{Ddl, Read, Session, Utility, Write};
    match root.kind {
        "SelectStmt" if root.has("into_clause") => Verdict::new(Ddl, "SELECT INTO"),
        "SelectStmt" => Verdict::new(Read, "SELECT"),
        "InsertStmt" => Verdict::new(Write, "INSERT"),
        "UpdateStmt" => Verdict::new(Write, "UPDATE"),
        "DeleteStmt" => Verdict::new(Write, "DELETE"),
        "MergeStmt" => Verdict::new(Write, "MERGE"),
        "TruncateStmt" => {
            let mut verdict = Verdict::new(Write, "TRUNCATE TABLE");
            let cascade = if cascades(root) {
                " and of every table with a foreign key to them (CASCADE)"
            } else {
                ""
            };
            verdict.finding(
                DangerCode::Truncate,
                format!("TRUNCATE removes every row of {}{cascade}", objects(root)),
            );
            verdict
        }
        "CopyStmt" => copy(root),
        "ExecuteStmt" => {
            let mut verdict = Verdict::new(Write, "EXECUTE");
            verdict.note(
                "EXECUTE runs a prepared statement whose text is not part of this one, so it may write",
            );
            verdict
        }
        "VariableShowStmt" => Verdict::new(Read, "SHOW"),
        "DeclareCursorStmt" => {
            let mut verdict = Verdict::new(Read, "DECLARE CURSOR");
            const CURSOR_OPT_HOLD: i64 = 0x0020;
            if root.int("options") & CURSOR_OPT_HOLD != 0 {
                verdict.note("WITH HOLD keeps the cursor open after the transaction ends, in the session");
            }
            verdict
        }
        "FetchStmt" => Verdict::new(Read, if root.bool("ismove") { "MOVE" } else { "FETCH" }),
        "ClosePortalStmt" => {
            let all = root.text("portalname").is_none_or(str::is_empty);
            Verdict::new(Session, if all { "CLOSE CURSOR ALL" } else { "CLOSE CURSOR" })
        }
        "PrepareStmt" => {
            let mut verdict = Verdict::new(Session, "PREPARE");
            verdict.note("PREPARE only stores the statement; findings apply when EXECUTE runs it");
            verdict
        }
        "DeallocateStmt" => Verdict::new(
            Session,
            if root.bool("isall") {
                "DEALLOCATE ALL"
            } else {
                "DEALLOCATE"
            },
        ),
        "ListenStmt" => Verdict::new(Session, "LISTEN"),
        "UnlistenStmt" => Verdict::new(Session, "UNLISTEN"),
        "ConstraintsSetStmt" => Verdict::new(Session, "SET CONSTRAINTS"),
        "DiscardStmt" => discard(root),
        "VariableSetStmt" => variable_set(root),
        "TransactionStmt" => transaction(root),
        "VacuumStmt" => vacuum(root),
        "ClusterStmt" => {
            let mut verdict = Verdict::new(Utility, "CLUSTER").no_transaction_block(!root.has("relation"));
            verdict.finding(
                DangerCode::Cluster,
                "CLUSTER rewrites tables under an ACCESS EXCLUSIVE lock, blocking all reads and writes on them",
            );
            verdict
        }
        "ReindexStmt" => reindex(root),
        "CheckPointStmt" => Verdict::new(Utility, "CHECKPOINT"),
        "LockStmt" => Verdict::new(Utility, "LOCK TABLE"),
        "NotifyStmt" => Verdict::new(Utility, "NOTIFY"),
        "DoStmt" => {
            let mut verdict = Verdict::new(Utility, "DO");
            verdict.finding(
                DangerCode::DoBlock,
                "DO runs an anonymous code block whose effects cannot be checked",
            );
            verdict
        }
        "CallStmt" => {
            let mut verdict = Verdict::new(Utility, "CALL");
            verdict.note("CALL runs a procedure, which may write, run DDL, commit or roll back");
            verdict
        }
        "LoadStmt" => {
            let mut verdict = Verdict::new(Utility, "LOAD");
            verdict.finding(
                DangerCode::LoadLibrary,
                "LOAD loads a shared library into the server process",
            );
            verdict
        }
        kind => match ddl_command(root) {
            Some(command) => ddl(root, command),
            None => {
                let mut verdict = Verdict::new(Utility, command_from_kind(kind));
                verdict.note(format!(
                    "{kind} is not a statement kind this check knows; treated as able to write"
                ));
                verdict
            }
        },
    }
}

fn copy(root: &Node) -> Verdict {
    let mut verdict = Verdict::new(StatementClass::Write, "COPY");
    // PostgreSQL refuses repeats itself ("conflicting or redundant options");
    // refusing them here too keeps one rule for every option list.
    if let Err(error) = Options::read(root.list("options"), "COPY", None) {
        verdict.refuse(error);
    }
    let direction = if root.bool("is_from") { "FROM" } else { "TO" };
    if root.bool("is_program") {
        verdict.finding(
            DangerCode::CopyProgram,
            format!("COPY … {direction} PROGRAM runs a shell command on the database server as its operating-system user"),
        );
    } else if root.text("filename").is_some_and(|f| !f.is_empty()) {
        let verb = if root.bool("is_from") { "reads" } else { "writes" };
        verdict.finding(
            DangerCode::CopyServerFile,
            format!("COPY … {direction} a file {verb} a file on the database server"),
        );
    } else if !root.bool("is_from") {
        verdict.class = StatementClass::Read;
        verdict.can_write = false;
    }
    verdict
}

fn discard(root: &Node) -> Verdict {
    let target = enum_value::<DiscardMode>(root.int("target"));
    let (command, all) = match target {
        Some(DiscardMode::DiscardPlans) => ("DISCARD PLANS", false),
        Some(DiscardMode::DiscardSequences) => ("DISCARD SEQUENCES", false),
        Some(DiscardMode::DiscardTemp) => ("DISCARD TEMP", false),
        _ => ("DISCARD ALL", true),
    };
    Verdict::new(StatementClass::Session, command).no_transaction_block(all)
}

fn variable_set(root: &Node) -> Verdict {
    let kind = enum_value::<VariableSetKind>(root.int("kind"));
    let reset = matches!(
        kind,
        Some(VariableSetKind::VarReset | VariableSetKind::VarResetAll)
    );
    let command = if reset { "RESET" } else { "SET" };
    let name = root.text("name").unwrap_or_default().to_lowercase();
    match name.as_str() {
        // These change the transaction pgfleet wraps the statement in (e.g. out of READ ONLY).
        "transaction"
        | "transaction snapshot"
        | "transaction_read_only"
        | "transaction_isolation"
        | "transaction_deferrable" => {
            let mut verdict = Verdict::new(StatementClass::TransactionControl, command);
            verdict.note("changes the mode of the current transaction");
            verdict
        }
        "role" | "session_authorization" if !reset => {
            let mut verdict = Verdict::new(StatementClass::Session, command);
            let what = if name == "role" {
                "SET ROLE"
            } else {
                "SET SESSION AUTHORIZATION"
            };
            verdict.finding(
                DangerCode::SetRole,
                format!("{what} changes the role whose privileges apply"),
            );
            verdict
        }
        _ => {
            let mut verdict = Verdict::new(StatementClass::Session, command);
            // RESET only goes back to the server's default; SET is checked.
            if !reset && let Err(message) = settable(&name) {
                verdict.refuse(OptionError {
                    message,
                    offset: None,
                });
            }
            verdict
        }
    }
}

/// Settings that change how the text after them is read: pgfleet's parser
/// always reads it with PostgreSQL's defaults, so after such a SET the
/// server and this check would read the same text differently.
const PARSE_SETTINGS: &[&str] = &[
    "standard_conforming_strings",
    "backslash_quote",
    "escape_string_warning",
];

/// Settings a statement may SET (with `enable_*` planner switches): query
/// planning, timeouts, output formats and locale, nothing that changes
/// parsing, privileges, the transaction or the connection's protocol.
pub(crate) const SETTABLE: &[&str] = &[
    "application_name",
    "bytea_output",
    "client_min_messages",
    "constraint_exclusion",
    "cpu_index_tuple_cost",
    "cpu_operator_cost",
    "cpu_tuple_cost",
    "cursor_tuple_fraction",
    "datestyle",
    "default_statistics_target",
    "default_text_search_config",
    "effective_cache_size",
    "effective_io_concurrency",
    "extra_float_digits",
    "from_collapse_limit",
    "geqo",
    "hash_mem_multiplier",
    "idle_in_transaction_session_timeout",
    "intervalstyle",
    "jit",
    "join_collapse_limit",
    "lc_monetary",
    "lc_numeric",
    "lc_time",
    "lock_timeout",
    "maintenance_work_mem",
    "max_parallel_workers_per_gather",
    "parallel_setup_cost",
    "parallel_tuple_cost",
    "plan_cache_mode",
    "random_page_cost",
    "search_path",
    "seq_page_cost",
    "statement_timeout",
    "temp_buffers",
    "timezone",
    "work_mem",
];

/// Whether `SET name` is allowed; the refusal says why not.
fn settable(name: &str) -> Result<(), String> {
    if PARSE_SETTINGS.contains(&name) {
        return Err(format!(
            "SET {name} changes how PostgreSQL reads the text that follows, which pgfleet's check would then read differently; it is refused"
        ));
    }
    if SETTABLE.contains(&name) || name.starts_with("enable_") {
        return Ok(());
    }
    Err(format!(
        "SET {name}: the setting {name} is not in pgfleet's allow-list of settings a statement may change (planner, timeouts, formats, locale, search_path: see docs/SECURITY.md)"
    ))
}

fn transaction(root: &Node) -> Verdict {
    use TransactionStmtKind as K;
    let kind = enum_value::<K>(root.int("kind"));
    let command = match kind {
        Some(K::TransStmtStart) => "START TRANSACTION",
        Some(K::TransStmtCommit) => "COMMIT",
        Some(K::TransStmtRollback | K::TransStmtRollbackTo) => "ROLLBACK",
        Some(K::TransStmtSavepoint) => "SAVEPOINT",
        Some(K::TransStmtRelease) => "RELEASE",
        Some(K::TransStmtPrepare) => "PREPARE TRANSACTION",
        Some(K::TransStmtCommitPrepared) => "COMMIT PREPARED",
        Some(K::TransStmtRollbackPrepared) => "ROLLBACK PREPARED",
        Some(K::TransStmtBegin | K::Undefined) | None => "BEGIN",
    };
    let mut verdict = Verdict::new(StatementClass::TransactionControl, command);
    if matches!(
        kind,
        Some(K::TransStmtPrepare | K::TransStmtCommitPrepared | K::TransStmtRollbackPrepared)
    ) {
        verdict.can_write = true;
        verdict.requires_no_transaction_block = kind != Some(K::TransStmtPrepare);
        verdict.finding(
            DangerCode::PreparedTransaction,
            format!("{command} acts on a two-phase transaction that outlives the session and holds its locks until resolved"),
        );
    }
    verdict
}

/// The options of VACUUM and ANALYZE (PostgreSQL 13 to 18).
const VACUUM_OPTIONS: &[&str] = &[
    "verbose",
    "analyze",
    "freeze",
    "full",
    "disable_page_skipping",
    "skip_locked",
    "index_cleanup",
    "process_main",
    "process_toast",
    "truncate",
    "parallel",
    "buffer_usage_limit",
    "skip_database_stats",
    "only_database_stats",
];
const ANALYZE_OPTIONS: &[&str] = &["verbose", "skip_locked", "buffer_usage_limit"];
const VACUUM_BOOLEAN_OPTIONS: &[&str] = &[
    "verbose",
    "analyze",
    "freeze",
    "full",
    "disable_page_skipping",
    "skip_locked",
    "process_main",
    "process_toast",
    "truncate",
    "skip_database_stats",
    "only_database_stats",
];

fn vacuum(root: &Node) -> Verdict {
    let is_vacuum = root.bool("is_vacuumcmd");
    let mut verdict = Verdict::new(
        StatementClass::Utility,
        if is_vacuum { "VACUUM" } else { "ANALYZE" },
    )
    .no_transaction_block(is_vacuum);
    let (command, known) = if is_vacuum {
        ("VACUUM", VACUUM_OPTIONS)
    } else {
        ("ANALYZE", ANALYZE_OPTIONS)
    };
    let full = Options::read(root.list("options"), command, Some(known)).and_then(|options| {
        options.check_booleans(VACUUM_BOOLEAN_OPTIONS)?;
        options.boolean("full")
    });
    let full = full.unwrap_or_else(|error| {
        verdict.refuse(error);
        None
    });
    if is_vacuum && full == Some(true) {
        verdict.finding(
            DangerCode::VacuumFull,
            "VACUUM FULL rewrites tables under an ACCESS EXCLUSIVE lock, blocking all reads and writes on them",
        );
    }
    verdict
}

fn reindex(root: &Node) -> Verdict {
    let mut refusal = None;
    let concurrently = option_flag(
        root.list("params"),
        "REINDEX",
        Some(&["concurrently", "tablespace", "verbose"]),
        "concurrently",
        &mut refusal,
    ) == Some(true);
    let many = matches!(
        enum_value::<ReindexObjectType>(root.int("kind")),
        Some(
            ReindexObjectType::ReindexObjectSchema
                | ReindexObjectType::ReindexObjectSystem
                | ReindexObjectType::ReindexObjectDatabase
        )
    );
    let mut verdict =
        Verdict::new(StatementClass::Utility, "REINDEX").no_transaction_block(concurrently || many);
    verdict.refusal = refusal;
    let blocking = if concurrently {
        ""
    } else {
        ", blocking writes (and reads that use them) while it runs"
    };
    verdict.finding(DangerCode::Reindex, format!("REINDEX rebuilds indexes{blocking}"));
    verdict
}

/// The command tag of a DDL statement, or `None` if `root` is not DDL.
fn ddl_command(root: &Node) -> Option<String> {
    let object = |field: &str| object_type_name(root.int(field));
    let fixed = match root.kind {
        "CreateStmt" => "CREATE TABLE",
        "CreateSchemaStmt" => "CREATE SCHEMA",
        "CreateTableSpaceStmt" => "CREATE TABLESPACE",
        "DropTableSpaceStmt" => "DROP TABLESPACE",
        "AlterTableSpaceOptionsStmt" => "ALTER TABLESPACE",
        "CreateExtensionStmt" => "CREATE EXTENSION",
        "AlterExtensionStmt" | "AlterExtensionContentsStmt" => "ALTER EXTENSION",
        "CreateFdwStmt" => "CREATE FOREIGN DATA WRAPPER",
        "AlterFdwStmt" => "ALTER FOREIGN DATA WRAPPER",
        "CreateForeignServerStmt" => "CREATE SERVER",
        "AlterForeignServerStmt" => "ALTER SERVER",
        "CreateUserMappingStmt" => "CREATE USER MAPPING",
        "AlterUserMappingStmt" => "ALTER USER MAPPING",
        "DropUserMappingStmt" => "DROP USER MAPPING",
        "CreateForeignTableStmt" => "CREATE FOREIGN TABLE",
        "ImportForeignSchemaStmt" => "IMPORT FOREIGN SCHEMA",
        "CommentStmt" => "COMMENT",
        "SecLabelStmt" => "SECURITY LABEL",
        "AlterDefaultPrivilegesStmt" => "ALTER DEFAULT PRIVILEGES",
        "CompositeTypeStmt" | "CreateEnumStmt" | "CreateRangeStmt" => "CREATE TYPE",
        "AlterEnumStmt" | "AlterTypeStmt" => "ALTER TYPE",
        "ViewStmt" => "CREATE VIEW",
        "IndexStmt" => "CREATE INDEX",
        "RuleStmt" => "CREATE RULE",
        "CreateSeqStmt" => "CREATE SEQUENCE",
        "AlterSeqStmt" => "ALTER SEQUENCE",
        "CreatedbStmt" => "CREATE DATABASE",
        "AlterDatabaseStmt" | "AlterDatabaseSetStmt" | "AlterDatabaseRefreshCollStmt" => "ALTER DATABASE",
        "DropdbStmt" => "DROP DATABASE",
        "AlterSystemStmt" => "ALTER SYSTEM",
        "RefreshMatViewStmt" => "REFRESH MATERIALIZED VIEW",
        "CreateDomainStmt" => "CREATE DOMAIN",
        "AlterDomainStmt" => "ALTER DOMAIN",
        "CreateConversionStmt" => "CREATE CONVERSION",
        "CreateCastStmt" => "CREATE CAST",
        "CreateOpClassStmt" => "CREATE OPERATOR CLASS",
        "CreateOpFamilyStmt" => "CREATE OPERATOR FAMILY",
        "AlterOpFamilyStmt" => "ALTER OPERATOR FAMILY",
        "AlterOperatorStmt" => "ALTER OPERATOR",
        "AlterTsdictionaryStmt" => "ALTER TEXT SEARCH DICTIONARY",
        "AlterTsconfigurationStmt" => "ALTER TEXT SEARCH CONFIGURATION",
        "CreateTrigStmt" => "CREATE TRIGGER",
        "CreateEventTrigStmt" => "CREATE EVENT TRIGGER",
        "AlterEventTrigStmt" => "ALTER EVENT TRIGGER",
        "CreatePlangStmt" => "CREATE LANGUAGE",
        "CreateRoleStmt" => "CREATE ROLE",
        "AlterRoleStmt" | "AlterRoleSetStmt" => "ALTER ROLE",
        "DropRoleStmt" => "DROP ROLE",
        "DropOwnedStmt" => "DROP OWNED",
        "ReassignOwnedStmt" => "REASSIGN OWNED",
        "CreatePolicyStmt" => "CREATE POLICY",
        "AlterPolicyStmt" => "ALTER POLICY",
        "CreateAmStmt" => "CREATE ACCESS METHOD",
        "CreatePublicationStmt" => "CREATE PUBLICATION",
        "AlterPublicationStmt" => "ALTER PUBLICATION",
        "CreateSubscriptionStmt" => "CREATE SUBSCRIPTION",
        "AlterSubscriptionStmt" => "ALTER SUBSCRIPTION",
        "DropSubscriptionStmt" => "DROP SUBSCRIPTION",
        "AlterCollationStmt" => "ALTER COLLATION",
        "CreateStatsStmt" => "CREATE STATISTICS",
        "AlterStatsStmt" => "ALTER STATISTICS",
        "CreateTransformStmt" => "CREATE TRANSFORM",
        "DropStmt" => return Some(format!("DROP {}", object("remove_type"))),
        "RenameStmt" => return Some(format!("ALTER {}", renamed_object_name(root.int("rename_type")))),
        "AlterObjectSchemaStmt" | "AlterOwnerStmt" | "AlterObjectDependsStmt" => {
            return Some(format!("ALTER {}", object("object_type")));
        }
        "AlterTableStmt" | "AlterTableMoveAllStmt" | "AlterFunctionStmt" => {
            return Some(format!("ALTER {}", object("objtype")));
        }
        "DefineStmt" => return Some(format!("CREATE {}", object("kind"))),
        "CreateFunctionStmt" => {
            return Some(
                if root.bool("is_procedure") {
                    "CREATE PROCEDURE"
                } else {
                    "CREATE FUNCTION"
                }
                .into(),
            );
        }
        "CreateTableAsStmt" => {
            let command = if enum_value::<ObjectType>(root.int("objtype")) == Some(ObjectType::ObjectMatview)
            {
                "CREATE MATERIALIZED VIEW"
            } else if root.bool("is_select_into") {
                "SELECT INTO"
            } else {
                "CREATE TABLE AS"
            };
            return Some(command.into());
        }
        "GrantStmt" => return Some(if root.bool("is_grant") { "GRANT" } else { "REVOKE" }.into()),
        "GrantRoleStmt" => {
            return Some(
                if root.bool("is_grant") {
                    "GRANT ROLE"
                } else {
                    "REVOKE ROLE"
                }
                .into(),
            );
        }
        _ => return None,
    };
    Some(fixed.into())
}

fn ddl(root: &Node, command: String) -> Verdict {
    let mut refusal = None;
    let no_block = match root.kind {
        "CreatedbStmt"
        | "DropdbStmt"
        | "AlterSystemStmt"
        | "CreateTableSpaceStmt"
        | "DropTableSpaceStmt"
        | "DropSubscriptionStmt" => true,
        "AlterDatabaseStmt" => match Options::read(root.list("options"), "ALTER DATABASE", None) {
            Ok(options) => options.has("tablespace"),
            Err(error) => {
                refusal = Some(error);
                false
            }
        },
        "IndexStmt" | "DropStmt" => root.bool("concurrent"),
        "CreateSubscriptionStmt" => {
            let options = root.list("options");
            let command = "CREATE SUBSCRIPTION";
            option_flag(options, command, None, "create_slot", &mut refusal) != Some(false)
                && option_flag(options, command, None, "connect", &mut refusal) != Some(false)
        }
        "AlterSubscriptionStmt" => match enum_value::<AlterSubscriptionType>(root.int("kind")) {
            Some(AlterSubscriptionType::AlterSubscriptionRefresh) => true,
            Some(
                AlterSubscriptionType::AlterSubscriptionSetPublication
                | AlterSubscriptionType::AlterSubscriptionAddPublication
                | AlterSubscriptionType::AlterSubscriptionDropPublication,
            ) => {
                option_flag(
                    root.list("options"),
                    "ALTER SUBSCRIPTION",
                    None,
                    "refresh",
                    &mut refusal,
                ) != Some(false)
            }
            _ => false,
        },
        "AlterTableStmt" => root.list("cmds").iter().filter_map(Tree::as_node).any(|cmd| {
            enum_value::<AlterTableType>(cmd.int("subtype")) == Some(AlterTableType::AtDetachPartition)
                && cmd.node("def").is_some_and(|def| def.bool("concurrent"))
        }),
        _ => false,
    };
    let mut verdict = Verdict::new(StatementClass::Ddl, command.as_str()).no_transaction_block(no_block);
    verdict.refusal = refusal;
    match root.kind {
        "GrantStmt" | "GrantRoleStmt" | "AlterDefaultPrivilegesStmt" => {
            verdict.finding(
                DangerCode::Privileges,
                format!("{command} changes who may read or change data"),
            );
        }
        "CreateRoleStmt" | "AlterRoleStmt" | "AlterRoleSetStmt" | "DropRoleStmt" | "ReassignOwnedStmt" => {
            verdict.finding(
                DangerCode::Role,
                format!("{command} changes the roles that log in and own objects"),
            );
        }
        "CreatedbStmt"
        | "AlterDatabaseStmt"
        | "AlterDatabaseSetStmt"
        | "AlterDatabaseRefreshCollStmt"
        | "DropdbStmt" => {
            verdict.finding(
                DangerCode::Database,
                format!("{command} acts on a whole database"),
            );
        }
        "AlterSystemStmt" => {
            verdict.finding(
                DangerCode::AlterSystem,
                "ALTER SYSTEM rewrites postgresql.auto.conf, the configuration of the whole server",
            );
        }
        "CreateExtensionStmt" => {
            verdict.finding(
                DangerCode::Extension,
                format!(
                    "CREATE EXTENSION {} installs code, possibly functions that reach outside the database",
                    root.text("extname").unwrap_or("?")
                ),
            );
        }
        _ => {}
    }
    verdict
}

/// DROP anything, ALTER anything, CREATE OR REPLACE: decided from the tag and tree.
fn generic_findings(verdict: &mut Verdict, root: &Node) {
    let command = verdict.command.clone();
    if command.starts_with("DROP ") {
        let cascade = if cascades(root) {
            ", and CASCADE also drops everything that depends on it"
        } else {
            ""
        };
        verdict.finding(
            DangerCode::Drop,
            format!("{command} {} removes it permanently{cascade}", objects(root)),
        );
    }
    if command.starts_with("ALTER ") && command != "ALTER DEFAULT PRIVILEGES" {
        verdict.finding(
            DangerCode::Alter,
            format!("{command} {} changes an existing definition", objects(root)),
        );
    }
    if root.bool("replace") {
        verdict.finding(
            DangerCode::ReplaceDefinition,
            format!("{command} OR REPLACE silently replaces an existing definition of the same name"),
        );
    }
}

/// What the whole tree does beyond the top-level statement.
struct Effects<'t> {
    data_changes: Vec<&'t Node>,
    locking: Vec<&'static str>,
    select_into: bool,
    functions: Vec<(QualifiedName, &'static SideEffectFunction)>,
}

impl<'t> Effects<'t> {
    fn of(statement: &'t Tree) -> Self {
        let mut effects = Effects {
            data_changes: Vec::new(),
            locking: Vec::new(),
            select_into: false,
            functions: Vec::new(),
        };
        statement.walk(&mut |node| {
            match node.kind {
                // Bodies stored for later, not run by this statement.
                "CreateFunctionStmt" | "RuleStmt" | "CreateTrigStmt" | "ViewStmt" | "CreatePolicyStmt"
                | "AlterPolicyStmt" => return Descend::No,
                "InsertStmt" | "UpdateStmt" | "DeleteStmt" | "MergeStmt" => effects.data_changes.push(node),
                "LockingClause" => effects.locking.push(locking_strength(node.int("strength"))),
                "SelectStmt" if node.has("into_clause") => effects.select_into = true,
                "FuncCall" => {
                    if let Some(name) = QualifiedName::from_parts(&string_values(node.list("funcname")))
                        && let Some(entry) = lookup_side_effect_function(&name)
                        && !effects.functions.iter().any(|(known, _)| *known == name)
                    {
                        effects.functions.push((name, entry));
                    }
                }
                _ => {}
            }
            Descend::Yes
        });
        effects
    }
}

fn absorb_effects(verdict: &mut Verdict, root: &Node, effects: &Effects<'_>) {
    let nested: Vec<&Node> = effects
        .data_changes
        .iter()
        .copied()
        .filter(|n| !std::ptr::eq(*n, root))
        .collect();
    if verdict.class == StatementClass::Read {
        if effects.select_into {
            verdict.class = StatementClass::Ddl;
            verdict.can_write = true;
            verdict.note("SELECT … INTO creates a table");
        } else if !nested.is_empty() || !effects.locking.is_empty() || !effects.functions.is_empty() {
            verdict.class = StatementClass::Write;
            verdict.can_write = true;
        }
    }
    for change in &nested {
        verdict.note(format!(
            "contains a data-modifying {} on {}",
            change.kind.trim_end_matches("Stmt").to_uppercase(),
            relation_name(change.node("relation"))
        ));
    }
    for strength in &effects.locking {
        verdict.note(format!("{strength} locks the rows it reads"));
    }
    for (name, entry) in &effects.functions {
        verdict.note(format!("calls {name}, which {}", entry.reason));
        if entry.dangerous {
            verdict.finding(
                DangerCode::SideEffectFunction,
                format!("calls {name}, which {}", entry.reason),
            );
        }
    }
    for change in &effects.data_changes {
        let (code, verb) = match change.kind {
            "DeleteStmt" => (DangerCode::DeleteWithoutWhere, "DELETE"),
            "UpdateStmt" => (DangerCode::UpdateWithoutWhere, "UPDATE"),
            _ => continue,
        };
        let table = relation_name(change.node("relation"));
        let problem = match change.field("where_clause") {
            Tree::Absent => "has no WHERE clause",
            condition if always_true(condition) => "has a WHERE clause that is always true",
            _ => continue,
        };
        let effect = if code == DangerCode::DeleteWithoutWhere {
            "removes"
        } else {
            "changes"
        };
        verdict.finding(
            code,
            format!("{verb} on {table} {problem} and {effect} every row"),
        );
    }
}

/// `WHERE true`, `WHERE 1 = 1`, `WHERE id = id`, `'t'::bool`, and ORs / ANDs of those.
fn always_true(expr: &Tree) -> bool {
    let Some(node) = expr.as_node() else { return false };
    match node.kind {
        "AConst" => node
            .node("val")
            .is_some_and(|v| v.kind == "Boolean" && v.bool("boolval")),
        "AExpr" => {
            enum_value::<AExprKind>(node.int("kind")) == Some(AExprKind::AexprOp)
                && string_values(node.list("name")) == ["="]
                && node
                    .node("lexpr")
                    .is_some_and(|l| matches!(l.kind, "AConst" | "ColumnRef"))
                && node.field("lexpr") == node.field("rexpr")
        }
        "BoolExpr" => {
            let args = node.list("args");
            match enum_value::<BoolExprType>(node.int("boolop")) {
                Some(BoolExprType::OrExpr) => args.iter().any(always_true),
                Some(BoolExprType::AndExpr) => !args.is_empty() && args.iter().all(always_true),
                _ => false,
            }
        }
        "TypeCast" => {
            let to_bool = node
                .node("type_name")
                .is_some_and(|t| matches!(string_values(t.list("names")).last(), Some(&"bool" | &"boolean")));
            let truthy = node
                .node("arg")
                .filter(|arg| arg.kind == "AConst")
                .and_then(|arg| arg.node("val"))
                .and_then(|v| v.text("sval"))
                .is_some_and(|s| {
                    matches!(s.to_lowercase().as_str(), "t" | "true" | "y" | "yes" | "on" | "1")
                });
            always_true(node.field("arg")) || (to_bool && truthy)
        }
        _ => false,
    }
}

/// `name`'s boolean value in `list`, read by [`Options`]; a list it
/// refuses is kept in `refusal` (the first one wins) and reads as absent.
fn option_flag(
    list: &[Tree],
    command: &'static str,
    known: Option<&[&str]>,
    name: &str,
    refusal: &mut Option<OptionError>,
) -> Option<bool> {
    match Options::read(list, command, known).and_then(|options| options.boolean(name)) {
        Ok(value) => value,
        Err(error) => {
            refusal.get_or_insert(error);
            None
        }
    }
}

fn cascades(root: &Node) -> bool {
    enum_value::<DropBehavior>(root.int("behavior")) == Some(DropBehavior::DropCascade)
}

/// The objects a statement names, for reasons: `public.t, u`, `ROLE alice`…
fn objects(root: &Node) -> String {
    let mut names: Vec<String> = Vec::new();
    for field in ["objects", "relations", "roles"] {
        names.extend(root.list(field).iter().filter_map(object_name));
    }
    for field in ["relation", "object", "role"] {
        names.extend(object_name(root.field(field)));
    }
    for field in [
        "dbname",
        "tablespacename",
        "subname",
        "servername",
        "extname",
        "name",
    ] {
        names.extend(root.text(field).filter(|s| !s.is_empty()).map(str::to_owned));
    }
    if names.is_empty() {
        String::from("(unnamed)")
    } else {
        names.join(", ")
    }
}

fn object_name(item: &Tree) -> Option<String> {
    if let Some(text) = item.as_text() {
        return Some(text.to_owned());
    }
    let node = item.as_node()?;
    let joined = |list: &[Tree]| Some(string_values(list).join(".")).filter(|s| !s.is_empty());
    match node.kind {
        "List" => joined(node.list("items")),
        "String" => node.text("sval").map(str::to_owned),
        "TypeName" => joined(node.list("names")),
        "ObjectWithArgs" => joined(node.list("objname")),
        "RangeVar" => Some(relation_name(Some(node))),
        "RoleSpec" => node
            .text("rolename")
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .or(Some("CURRENT_ROLE".into())),
        _ => None,
    }
}

fn enum_value<E: TryFrom<i32>>(value: i64) -> Option<E> {
    i32::try_from(value).ok().and_then(|v| E::try_from(v).ok())
}

fn locking_strength(value: i64) -> &'static str {
    match enum_value::<LockClauseStrength>(value) {
        Some(LockClauseStrength::LcsForkeyshare) => "FOR KEY SHARE",
        Some(LockClauseStrength::LcsForshare) => "FOR SHARE",
        Some(LockClauseStrength::LcsFornokeyupdate) => "FOR NO KEY UPDATE",
        _ => "FOR UPDATE",
    }
}

fn renamed_object_name(value: i64) -> &'static str {
    match enum_value::<ObjectType>(value) {
        Some(ObjectType::ObjectColumn | ObjectType::ObjectTabconstraint) => "TABLE",
        Some(ObjectType::ObjectAttribute) => "TYPE",
        Some(ObjectType::ObjectDomconstraint) => "DOMAIN",
        _ => object_type_name(value),
    }
}

/// SQL's name for an object type, as in `DROP <name>`.
fn object_type_name(value: i64) -> &'static str {
    use ObjectType as O;
    match enum_value::<O>(value) {
        Some(O::ObjectAccessMethod) => "ACCESS METHOD",
        Some(O::ObjectAggregate) => "AGGREGATE",
        Some(O::ObjectAmop | O::ObjectAmproc | O::ObjectOpfamily) => "OPERATOR FAMILY",
        Some(O::ObjectAttribute | O::ObjectType) => "TYPE",
        Some(O::ObjectCast) => "CAST",
        Some(O::ObjectColumn | O::ObjectDefault | O::ObjectTabconstraint | O::ObjectTable) => "TABLE",
        Some(O::ObjectCollation) => "COLLATION",
        Some(O::ObjectConversion) => "CONVERSION",
        Some(O::ObjectDatabase) => "DATABASE",
        Some(O::ObjectDefacl) => "DEFAULT PRIVILEGES",
        Some(O::ObjectDomain | O::ObjectDomconstraint) => "DOMAIN",
        Some(O::ObjectEventTrigger) => "EVENT TRIGGER",
        Some(O::ObjectExtension) => "EXTENSION",
        Some(O::ObjectFdw) => "FOREIGN DATA WRAPPER",
        Some(O::ObjectForeignServer) => "SERVER",
        Some(O::ObjectForeignTable) => "FOREIGN TABLE",
        Some(O::ObjectFunction) => "FUNCTION",
        Some(O::ObjectIndex) => "INDEX",
        Some(O::ObjectLanguage) => "LANGUAGE",
        Some(O::ObjectLargeobject) => "LARGE OBJECT",
        Some(O::ObjectMatview) => "MATERIALIZED VIEW",
        Some(O::ObjectOpclass) => "OPERATOR CLASS",
        Some(O::ObjectOperator) => "OPERATOR",
        Some(O::ObjectParameterAcl) => "PARAMETER",
        Some(O::ObjectPolicy) => "POLICY",
        Some(O::ObjectProcedure) => "PROCEDURE",
        Some(O::ObjectPublication | O::ObjectPublicationNamespace | O::ObjectPublicationRel) => "PUBLICATION",
        Some(O::ObjectRole) => "ROLE",
        Some(O::ObjectRoutine) => "ROUTINE",
        Some(O::ObjectRule) => "RULE",
        Some(O::ObjectSchema) => "SCHEMA",
        Some(O::ObjectSequence) => "SEQUENCE",
        Some(O::ObjectSubscription) => "SUBSCRIPTION",
        Some(O::ObjectStatisticExt) => "STATISTICS",
        Some(O::ObjectTablespace) => "TABLESPACE",
        Some(O::ObjectTransform) => "TRANSFORM",
        Some(O::ObjectTrigger) => "TRIGGER",
        Some(O::ObjectTsconfiguration) => "TEXT SEARCH CONFIGURATION",
        Some(O::ObjectTsdictionary) => "TEXT SEARCH DICTIONARY",
        Some(O::ObjectTsparser) => "TEXT SEARCH PARSER",
        Some(O::ObjectTstemplate) => "TEXT SEARCH TEMPLATE",
        Some(O::ObjectUserMapping) => "USER MAPPING",
        Some(O::ObjectView) => "VIEW",
        Some(O::Undefined) | None => "OBJECT",
    }
}

/// `AlterFooBarStmt` → `ALTER FOO BAR`, for statement kinds newer than this crate.
fn command_from_kind(kind: &str) -> String {
    let mut command = String::new();
    for (i, c) in kind.trim_end_matches("Stmt").char_indices() {
        if c.is_uppercase() && i > 0 {
            command.push(' ');
        }
        command.extend(c.to_uppercase());
    }
    command
}

#[cfg(test)]
mod set_tests {
    use crate::{DangerCode, StatementClass};

    type Expected = Result<(StatementClass, bool), &'static str>;

    /// One row per SET text: allowed (class, whether dangerous) or refused.
    #[test]
    fn set_is_classified_by_an_allow_list() {
        // (text, Ok((class, dangerous)) or Err(words of the refusal))
        let cases: &[(&str, Expected)] = &[
            (
                "SET search_path = app, public",
                Ok((StatementClass::Session, false)),
            ),
            (
                "SET statement_timeout = '5s'",
                Ok((StatementClass::Session, false)),
            ),
            (
                "SET LOCAL work_mem = '64MB'",
                Ok((StatementClass::Session, false)),
            ),
            ("SET TIME ZONE 'UTC'", Ok((StatementClass::Session, false))),
            ("SET enable_seqscan = off", Ok((StatementClass::Session, false))),
            ("SET jit = off", Ok((StatementClass::Session, false))),
            (
                "RESET standard_conforming_strings",
                Ok((StatementClass::Session, false)),
            ),
            ("RESET ALL", Ok((StatementClass::Session, false))),
            ("SET ROLE admin", Ok((StatementClass::Session, true))),
            (
                "SET SESSION AUTHORIZATION admin",
                Ok((StatementClass::Session, true)),
            ),
            (
                "SET transaction_read_only = off",
                Ok((StatementClass::TransactionControl, false)),
            ),
            (
                "SET standard_conforming_strings = off",
                Err("standard_conforming_strings changes how"),
            ),
            ("SET backslash_quote = on", Err("backslash_quote changes how")),
            (
                "SET escape_string_warning = off",
                Err("escape_string_warning changes how"),
            ),
            (
                "SET default_transaction_read_only = off",
                Err("default_transaction_read_only is not in"),
            ),
            ("SET client_encoding = 'LATIN1'", Err("client_encoding is not in")),
            ("SET NAMES 'LATIN1'", Err("client_encoding is not in")),
            (
                "SET session_replication_role = replica",
                Err("session_replication_role is not in"),
            ),
            (
                "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
                Err("is not in"),
            ),
        ];
        for (sql, expected) in cases {
            match (expected, crate::analyze(sql)) {
                (Ok((class, dangerous)), Ok(analysis)) => {
                    let statement = &analysis.statements[0];
                    assert_eq!(statement.class, *class, "{sql}");
                    assert_eq!(
                        !statement.findings.is_empty(),
                        *dangerous,
                        "{sql}: {:?}",
                        statement.findings
                    );
                }
                (Err(words), Err(error)) => {
                    assert!(error.message().contains(words), "{sql}: {error}");
                    assert_eq!(error.position().map(|p| p.offset), Some(0), "{sql}");
                }
                (expected, got) => panic!("{sql}: expected {expected:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn set_config_anywhere_is_dangerous() {
        for sql in [
            "SELECT set_config('standard_conforming_strings', 'off', false)",
            "SELECT 1 WHERE set_config('role', 'admin', true) IS NOT NULL",
            "EXPLAIN SELECT pg_catalog.set_config('search_path', 'x', true)",
        ] {
            let analysis = crate::analyze(sql).expect("parses");
            let statement = &analysis.statements[0];
            assert_eq!(statement.class, StatementClass::Write, "{sql}");
            assert!(
                statement
                    .findings
                    .iter()
                    .any(|f| f.code == DangerCode::SideEffectFunction),
                "{sql}: {:?}",
                statement.findings
            );
        }
    }

    #[test]
    fn explain_is_classified_by_what_it_explains() {
        for (sql, class, dangerous) in [
            ("EXPLAIN SELECT 1", StatementClass::Read, false),
            ("EXPLAIN DELETE FROM t WHERE id = 1", StatementClass::Write, false),
            (
                "EXPLAIN (ANALYZE false) DELETE FROM t WHERE id = 1",
                StatementClass::Write,
                false,
            ),
            (
                "EXPLAIN SELECT lo_import('/etc/passwd')",
                StatementClass::Write,
                true,
            ),
            ("EXPLAIN SELECT pg_notify('c', 'x')", StatementClass::Write, false),
            ("EXPLAIN SELECT pg_advisory_lock(1)", StatementClass::Write, false),
            ("EXPLAIN SELECT pg_cancel_backend(1)", StatementClass::Write, true),
            (
                "EXPLAIN SELECT pg_read_file('/etc/passwd')",
                StatementClass::Write,
                true,
            ),
            ("EXPLAIN SELECT lo_creat(-1)", StatementClass::Write, false),
            (
                "EXPLAIN SELECT lo_from_bytea(0, 'x')",
                StatementClass::Write,
                false,
            ),
            ("EXPLAIN SELECT lowrite(0, 'x')", StatementClass::Write, false),
        ] {
            let analysis = crate::analyze(sql).expect("parses");
            let statement = &analysis.statements[0];
            assert_eq!(statement.command, "EXPLAIN", "{sql}");
            assert_eq!(statement.class, class, "{sql}");
            assert_eq!(
                !statement.findings.is_empty(),
                dangerous,
                "{sql}: {:?}",
                statement.findings
            );
        }
    }

    #[test]
    fn alter_system_is_redacted() {
        let analysis =
            crate::analyze("ALTER SYSTEM SET primary_conninfo = 'host=x password=hunter2'").expect("parses");
        assert!(analysis.may_carry_credentials());
        assert!(
            !analysis.normalized.contains("hunter2"),
            "{}",
            analysis.normalized
        );
    }
}
