//! Function names as called in SQL, and the one table of functions with side effects.

use std::fmt;

use serde::Serialize;

/// A function name as written in a call, lower-cased: `nextval`, `pg_catalog.set_config`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct QualifiedName {
    /// The schema, when the call names one (`pg_catalog` in `pg_catalog.now()`).
    pub schema: Option<String>,
    pub name: String,
}

impl QualifiedName {
    /// Builds a name from the parts of a call (`[catalog.][schema.]name`); the
    /// catalog, which PostgreSQL requires to be the current database, is dropped.
    pub(crate) fn from_parts(parts: &[&str]) -> Option<Self> {
        let (name, rest) = parts.split_last()?;
        Some(Self {
            schema: rest.last().map(|s| s.to_lowercase()),
            name: name.to_lowercase(),
        })
    }
}

impl fmt::Display for QualifiedName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.schema {
            Some(schema) => write!(f, "{schema}.{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// What calling a function does beyond computing its result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FunctionEffect {
    /// Changes data, sequences, large objects or indexes, or assigns a transaction ID.
    Writes,
    /// Changes the session's settings or takes locks that outlive the statement.
    SessionState,
    /// Acts on other sessions or servers: signals, notifications, other connections, jobs.
    OtherSessions,
    /// Reads, lists or writes files on the database server.
    ServerFiles,
    /// Administers the server: configuration, WAL, replication, backups, statistics.
    ServerAdmin,
    /// Runs SQL text passed as an argument, which this crate cannot inspect.
    RunsSql,
}

/// How an entry of [`SIDE_EFFECT_FUNCTIONS`] matches a function name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NameMatch {
    /// The name is exactly this.
    Exact,
    /// The name starts with this (a family such as `dblink*` or `lo_*`).
    Prefix,
}

/// A function whose call makes a statement more than a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct SideEffectFunction {
    /// Lower-case name, or name prefix when `matching` is [`NameMatch::Prefix`].
    pub name: &'static str,
    pub matching: NameMatch,
    pub effect: FunctionEffect,
    /// Whether a call is also a [`crate::DangerCode::SideEffectFunction`] finding
    /// (needs MASTER and confirmation), not only a write.
    pub dangerous: bool,
    /// Why, in words for the person who wrote the SQL.
    pub reason: &'static str,
}

impl SideEffectFunction {
    /// Whether this entry covers `name` (a bare, lower-case function name).
    pub fn matches(&self, name: &str) -> bool {
        match self.matching {
            NameMatch::Exact => name == self.name,
            NameMatch::Prefix => name.starts_with(self.name),
        }
    }
}

const fn entry(
    name: &'static str,
    matching: NameMatch,
    effect: FunctionEffect,
    dangerous: bool,
    reason: &'static str,
) -> SideEffectFunction {
    SideEffectFunction {
        name,
        matching,
        effect,
        dangerous,
        reason,
    }
}

use FunctionEffect::{OtherSessions, RunsSql, ServerAdmin, ServerFiles, SessionState, Writes};
use NameMatch::{Exact, Prefix};

const SEQUENCE: &str = "advances or sets a sequence; the change survives a rollback";
const XID: &str = "assigns a transaction ID, which turns a read into a writing transaction";
const LARGE_OBJECT: &str = "creates, changes, opens or removes a large object";
const INDEX: &str = "changes the contents of an index";
const STATS: &str = "overwrites the planner statistics stored in the catalog";
const ADVISORY: &str =
    "takes or releases an advisory lock, which can outlive the statement and block other sessions";
const SERVER_FILE_READ: &str = "reads a file or directory on the database server";
const ADMINPACK: &str = "writes, renames, removes or syncs a file on the database server";
const SLOT: &str = "creates, drops, copies or advances a replication slot, or consumes its changes";
const ORIGIN: &str = "creates, drops, advances or binds a replication origin";
const BACKUP: &str = "starts or stops an online backup";
const RECOVERY: &str = "controls recovery or promotes a standby";
const STATS_RESET: &str = "resets the server's cumulative statistics";
const CRON: &str = "schedules or changes a job that runs SQL later in another session (pg_cron)";
const XML_QUERY: &str = "runs the SQL text it is given, which this check cannot see into";

/// Every function pgfleet knows to do more than compute a value, in one place.
///
/// Names are compared without their schema and lower-cased (so a user function
/// named `myschema.nextval` is treated like the built-in: the safe mistake).
/// [`lookup_side_effect_function`] returns the first entry that matches, so exact
/// names come before the prefixes that would also cover them. `pg_sleep` is
/// deliberately absent: it only waits, and the statement timeout bounds it.
pub static SIDE_EFFECT_FUNCTIONS: &[SideEffectFunction] = &[
    // Data, sequences, large objects, indexes, transaction IDs.
    entry("nextval", Exact, Writes, false, SEQUENCE),
    entry("setval", Exact, Writes, false, SEQUENCE),
    entry("txid_current", Exact, Writes, false, XID),
    entry("pg_current_xact_id", Exact, Writes, false, XID),
    entry(
        "lo_import",
        Exact,
        ServerFiles,
        true,
        "reads a file on the database server into a large object",
    ),
    entry(
        "lo_export",
        Exact,
        ServerFiles,
        true,
        "writes a large object to a file on the database server",
    ),
    entry("lo_", Prefix, Writes, false, LARGE_OBJECT),
    entry("loread", Exact, Writes, false, LARGE_OBJECT),
    entry("lowrite", Exact, Writes, false, LARGE_OBJECT),
    entry(
        "pg_logical_emit_message",
        Exact,
        Writes,
        false,
        "writes a message into the write-ahead log",
    ),
    entry("brin_summarize_new_values", Exact, Writes, false, INDEX),
    entry("brin_summarize_range", Exact, Writes, false, INDEX),
    entry("brin_desummarize_range", Exact, Writes, false, INDEX),
    entry("gin_clean_pending_list", Exact, Writes, false, INDEX),
    entry(
        "pg_import_system_collations",
        Exact,
        Writes,
        false,
        "creates collations in the catalog",
    ),
    entry("pg_restore_relation_stats", Exact, Writes, false, STATS),
    entry("pg_restore_attribute_stats", Exact, Writes, false, STATS),
    entry("pg_clear_relation_stats", Exact, Writes, false, STATS),
    entry("pg_clear_attribute_stats", Exact, Writes, false, STATS),
    // Session state.
    entry(
        "set_config",
        Exact,
        SessionState,
        true,
        "changes any setting for the session or transaction (role, read-only mode, how strings are parsed), with a name and value only known when it runs",
    ),
    entry("pg_advisory_", Prefix, SessionState, false, ADVISORY),
    entry("pg_try_advisory_", Prefix, SessionState, false, ADVISORY),
    entry(
        "setseed",
        Exact,
        SessionState,
        false,
        "changes the session's random seed",
    ),
    // Other sessions and servers.
    entry(
        "pg_notify",
        Exact,
        OtherSessions,
        false,
        "sends a notification to every session listening on the channel",
    ),
    entry(
        "pg_terminate_backend",
        Exact,
        OtherSessions,
        true,
        "terminates another session",
    ),
    entry(
        "pg_cancel_backend",
        Exact,
        OtherSessions,
        true,
        "cancels another session's query",
    ),
    entry(
        "dblink",
        Prefix,
        OtherSessions,
        true,
        "runs SQL over a separate connection, outside this transaction and its read-only mode",
    ),
    entry(
        "pg_background_",
        Prefix,
        OtherSessions,
        true,
        "runs SQL in a background worker, outside this transaction",
    ),
    entry("schedule", Exact, OtherSessions, true, CRON),
    entry("schedule_in_database", Exact, OtherSessions, true, CRON),
    entry("alter_job", Exact, OtherSessions, true, CRON),
    entry("unschedule", Exact, OtherSessions, true, CRON),
    // Files on the server.
    entry("pg_read_file", Exact, ServerFiles, true, SERVER_FILE_READ),
    entry("pg_read_binary_file", Exact, ServerFiles, true, SERVER_FILE_READ),
    entry("pg_stat_file", Exact, ServerFiles, true, SERVER_FILE_READ),
    entry("pg_ls_", Prefix, ServerFiles, true, SERVER_FILE_READ),
    entry("pg_file_write", Exact, ServerFiles, true, ADMINPACK),
    entry("pg_file_rename", Exact, ServerFiles, true, ADMINPACK),
    entry("pg_file_unlink", Exact, ServerFiles, true, ADMINPACK),
    entry("pg_file_sync", Exact, ServerFiles, true, ADMINPACK),
    // Server administration.
    entry(
        "pg_reload_conf",
        Exact,
        ServerAdmin,
        true,
        "reloads the server configuration",
    ),
    entry(
        "pg_rotate_logfile",
        Exact,
        ServerAdmin,
        true,
        "rotates the server log file",
    ),
    entry(
        "pg_switch_wal",
        Exact,
        ServerAdmin,
        true,
        "forces a switch to a new write-ahead log file",
    ),
    entry(
        "pg_create_restore_point",
        Exact,
        ServerAdmin,
        true,
        "writes a named restore point into the write-ahead log",
    ),
    entry(
        "pg_log_standby_snapshot",
        Exact,
        ServerAdmin,
        true,
        "writes a snapshot record into the write-ahead log",
    ),
    entry(
        "pg_log_backend_memory_contexts",
        Exact,
        ServerAdmin,
        true,
        "makes another backend dump its memory contexts into the server log",
    ),
    entry("pg_promote", Exact, ServerAdmin, true, RECOVERY),
    entry("pg_wal_replay_pause", Exact, ServerAdmin, true, RECOVERY),
    entry("pg_wal_replay_resume", Exact, ServerAdmin, true, RECOVERY),
    entry("pg_backup_start", Exact, ServerAdmin, true, BACKUP),
    entry("pg_backup_stop", Exact, ServerAdmin, true, BACKUP),
    entry("pg_start_backup", Exact, ServerAdmin, true, BACKUP),
    entry("pg_stop_backup", Exact, ServerAdmin, true, BACKUP),
    entry("pg_stat_reset", Prefix, ServerAdmin, true, STATS_RESET),
    entry("pg_stat_statements_reset", Exact, ServerAdmin, true, STATS_RESET),
    entry(
        "pg_create_physical_replication_slot",
        Exact,
        ServerAdmin,
        true,
        SLOT,
    ),
    entry(
        "pg_create_logical_replication_slot",
        Exact,
        ServerAdmin,
        true,
        SLOT,
    ),
    entry("pg_drop_replication_slot", Exact, ServerAdmin, true, SLOT),
    entry(
        "pg_copy_physical_replication_slot",
        Exact,
        ServerAdmin,
        true,
        SLOT,
    ),
    entry("pg_copy_logical_replication_slot", Exact, ServerAdmin, true, SLOT),
    entry("pg_replication_slot_advance", Exact, ServerAdmin, true, SLOT),
    entry("pg_logical_slot_get_changes", Exact, ServerAdmin, true, SLOT),
    entry(
        "pg_logical_slot_get_binary_changes",
        Exact,
        ServerAdmin,
        true,
        SLOT,
    ),
    entry("pg_sync_replication_slots", Exact, ServerAdmin, true, SLOT),
    entry("pg_replication_origin_create", Exact, ServerAdmin, true, ORIGIN),
    entry("pg_replication_origin_drop", Exact, ServerAdmin, true, ORIGIN),
    entry("pg_replication_origin_advance", Exact, ServerAdmin, true, ORIGIN),
    entry(
        "pg_replication_origin_session_setup",
        Exact,
        ServerAdmin,
        true,
        ORIGIN,
    ),
    entry(
        "pg_replication_origin_session_reset",
        Exact,
        ServerAdmin,
        true,
        ORIGIN,
    ),
    entry(
        "pg_replication_origin_xact_setup",
        Exact,
        ServerAdmin,
        true,
        ORIGIN,
    ),
    entry(
        "pg_replication_origin_xact_reset",
        Exact,
        ServerAdmin,
        true,
        ORIGIN,
    ),
    entry(
        "pg_truncate_visibility_map",
        Exact,
        ServerAdmin,
        true,
        "truncates a table's visibility map (pg_visibility)",
    ),
    // SQL passed as text.
    entry("query_to_xml", Exact, RunsSql, false, XML_QUERY),
    entry("query_to_xmlschema", Exact, RunsSql, false, XML_QUERY),
    entry("query_to_xml_and_xmlschema", Exact, RunsSql, false, XML_QUERY),
    entry("ts_stat", Exact, RunsSql, false, XML_QUERY),
];

/// The [`SIDE_EFFECT_FUNCTIONS`] entry for a called function, if any. The schema
/// is ignored: see [`SIDE_EFFECT_FUNCTIONS`].
pub fn lookup_side_effect_function(name: &QualifiedName) -> Option<&'static SideEffectFunction> {
    let bare = name.name.to_lowercase();
    SIDE_EFFECT_FUNCTIONS.iter().find(|entry| entry.matches(&bare))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bare(name: &str) -> QualifiedName {
        QualifiedName {
            schema: None,
            name: name.to_owned(),
        }
    }

    #[test]
    fn lookups() {
        let cases: &[(&str, Option<FunctionEffect>)] = &[
            ("nextval", Some(Writes)),
            ("NEXTVAL", Some(Writes)),
            ("lo_export", Some(ServerFiles)),
            ("lo_unlink", Some(Writes)),
            ("pg_advisory_xact_lock_shared", Some(SessionState)),
            ("pg_try_advisory_lock", Some(SessionState)),
            ("dblink_exec", Some(OtherSessions)),
            ("pg_ls_waldir", Some(ServerFiles)),
            ("pg_stat_reset_shared", Some(ServerAdmin)),
            ("pg_sleep", None),
            ("now", None),
            ("currval", None),
            ("txid_current_if_assigned", None),
        ];
        for (name, effect) in cases {
            assert_eq!(
                lookup_side_effect_function(&bare(name)).map(|e| e.effect),
                *effect,
                "case {name}"
            );
        }
    }

    #[test]
    fn exact_entries_are_not_shadowed_by_an_earlier_prefix() {
        for (i, entry) in SIDE_EFFECT_FUNCTIONS.iter().enumerate() {
            let first = SIDE_EFFECT_FUNCTIONS.iter().position(|e| e.matches(entry.name));
            assert_eq!(first, Some(i), "entry {} is shadowed", entry.name);
        }
    }

    #[test]
    fn schema_is_ignored_and_catalog_dropped() {
        let name = QualifiedName::from_parts(&["db", "PG_CATALOG", "SetVal"]).expect("name");
        assert_eq!(name.to_string(), "pg_catalog.setval");
        assert!(lookup_side_effect_function(&name).is_some());
    }
}
