//! The old Node.js Dual Database Manager's schema (`dual_db_manager`), read
//! for `pgfleet import-legacy`: its users and its query history, and how a
//! history row becomes an audit record ([`imported_record`]).
//!
//! Read in one REPEATABLE READ READ ONLY transaction, so users and history
//! come from one snapshot even while the old system still runs. The old
//! columns are `timestamp` without time zone, written by `NOW()` in the old
//! server's session time zone; they are read as `timestamptz` in the
//! session's `TimeZone` (the old server's default, or `options=-c
//! TimeZone=…` in the URL), which gives back the instants the old system
//! meant.
//!
//! The `--from` URL carries a password: it never appears in an error or a
//! description ([`LegacySource::describe`] names host, port and database;
//! errors have the password scrubbed).

use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};
use uuid::Uuid;

use crate::audit::import::{ClosedRecord, RecordActor};
use crate::audit::{Kind, RecordedError, RecordedOutcome, RecordedTarget, Status, TargetScope};
use crate::identity::Role;

/// Why the old system could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LegacyError {
    /// The `--from` URL does not parse (the URL itself is never repeated).
    #[error("the legacy database URL is not a valid postgres:// URL: {0}")]
    Url(String),
    /// Connecting or reading failed; the message has the password scrubbed.
    #[error("legacy database {source_name}: {message}")]
    Read { source_name: String, message: String },
    /// The database has no `dual_db_manager` schema with the old tables.
    #[error(
        "legacy database {0} has no dual_db_manager.users and dual_db_manager.query_history: \
         is this the Dual Database Manager's history database?"
    )]
    NotLegacy(String),
}

/// The old system's history database, from a `postgres://` URL.
pub struct LegacySource {
    options: PgConnectOptions,
    /// The URL's password, as written and decoded, only to scrub it from
    /// error messages.
    password: Vec<String>,
}

impl std::fmt::Debug for LegacySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LegacySource")
            .field("source", &self.describe())
            .finish()
    }
}

impl LegacySource {
    pub fn parse(url: &str) -> Result<Self, LegacyError> {
        let password: Vec<String> = url::Url::parse(url)
            .ok()
            .and_then(|parsed| {
                parsed
                    .password()
                    .map(|raw| vec![percent_decoded(raw), raw.to_owned()])
            })
            .unwrap_or_default();
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(LegacyError::Url(
                "it must start with postgres:// or postgresql://".to_owned(),
            ));
        }
        let options = PgConnectOptions::from_str(url)
            .map_err(|error| LegacyError::Url(scrub(&error.to_string(), &password)))?;
        Ok(Self { options, password })
    }

    /// `host:port/database`: no user, no password.
    pub fn describe(&self) -> String {
        format!(
            "{}:{}/{}",
            self.options.get_host(),
            self.options.get_port(),
            self.options.get_database().unwrap_or_default()
        )
    }

    fn failed(&self, error: &sqlx::Error) -> LegacyError {
        LegacyError::Read {
            source_name: self.describe(),
            message: scrub(&error.to_string(), &self.password),
        }
    }

    /// Every user and history row, from one snapshot, oldest first.
    pub async fn read(&self) -> Result<Snapshot, LegacyError> {
        let mut connection = PgConnection::connect_with(&self.options)
            .await
            .map_err(|error| self.failed(&error))?;
        let read = self.read_on(&mut connection).await;
        // Closing is courtesy; what was read is what counts.
        let _ = connection.close().await;
        read
    }

    async fn read_on(&self, connection: &mut PgConnection) -> Result<Snapshot, LegacyError> {
        let failed = |error: sqlx::Error| self.failed(&error);
        sqlx::query("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .execute(&mut *connection)
            .await
            .map_err(failed)?;
        let tables: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM (VALUES ('users'), ('query_history')) AS t (name) \
             WHERE to_regclass(format('dual_db_manager.%I', t.name)) IS NOT NULL",
        )
        .fetch_one(&mut *connection)
        .await
        .map_err(failed)?;
        if tables != 2 {
            return Err(LegacyError::NotLegacy(self.describe()));
        }
        let users: Vec<LegacyUser> = sqlx::query_as(
            "SELECT id, username::text, email::text, name::text, password_hash::text, role::text, is_active, \
             created_at::timestamptz AS created_at, last_login::timestamptz AS last_login \
             FROM dual_db_manager.users ORDER BY id",
        )
        .fetch_all(&mut *connection)
        .await
        .map_err(failed)?;
        let history: Vec<LegacyQuery> = sqlx::query_as(
            "SELECT h.id, h.user_id, u.username::text AS username, h.query, h.database_name::text, \
             h.execution_mode::text, h.cloud_results, h.overall_success, \
             h.created_at::timestamptz AS created_at \
             FROM dual_db_manager.query_history h LEFT JOIN dual_db_manager.users u ON u.id = h.user_id \
             ORDER BY h.created_at NULLS FIRST, h.id",
        )
        .fetch_all(&mut *connection)
        .await
        .map_err(failed)?;
        sqlx::query("COMMIT")
            .execute(&mut *connection)
            .await
            .map_err(failed)?;
        Ok(Snapshot { users, history })
    }
}

/// `text` with every form of the password replaced by `<redacted>`.
fn scrub(text: &str, password: &[String]) -> String {
    password
        .iter()
        .filter(|form| !form.is_empty())
        .fold(text.to_owned(), |text, form| {
            text.replace(form.as_str(), "<redacted>")
        })
}

/// `%XX` escapes of a URL component decoded (as libpq and sqlx read them).
fn percent_decoded(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| raw.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What the old system holds.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub users: Vec<LegacyUser>,
    /// Oldest first: the order they are appended to the chain.
    pub history: Vec<LegacyQuery>,
}

/// A row of `dual_db_manager.users`. `password_hash` is a bcrypt hash kept
/// as it is; it is never printed (`Debug` leaves it out).
#[derive(Clone, sqlx::FromRow)]
pub struct LegacyUser {
    pub id: i32,
    pub username: String,
    pub email: String,
    pub name: Option<String>,
    pub password_hash: String,
    pub role: String,
    /// Nullable in the old schema; NULL is taken as inactive.
    pub is_active: Option<bool>,
    pub created_at: Option<DateTime<Utc>>,
    pub last_login: Option<DateTime<Utc>>,
}

impl std::fmt::Debug for LegacyUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LegacyUser")
            .field("id", &self.id)
            .field("username", &self.username)
            .field("role", &self.role)
            .field("is_active", &self.is_active)
            .finish_non_exhaustive()
    }
}

impl LegacyUser {
    /// The old role in pgfleet's terms (the old schema allowed the same three).
    pub fn role(&self) -> Option<Role> {
        Role::parse(self.role.trim())
    }

    /// Active only when the old system said so: a NULL `is_active` is not
    /// a yes.
    pub fn active(&self) -> bool {
        self.is_active == Some(true)
    }
}

/// A row of `dual_db_manager.query_history`, with its user's name.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct LegacyQuery {
    pub id: Uuid,
    pub user_id: Option<i32>,
    /// NULL when `user_id` is NULL or names no user any more.
    pub username: Option<String>,
    pub query: String,
    pub database_name: String,
    /// `both`, or one cloud's name.
    pub execution_mode: String,
    /// `{cloud: {success, result, error, duration_ms, statementCount}}`.
    pub cloud_results: Value,
    pub overall_success: bool,
    pub created_at: Option<DateTime<Utc>>,
}

/// How the SQL text of an imported row is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredText {
    pub query: String,
    pub redacted: bool,
    pub fingerprint: String,
    pub statement_classes: Vec<String>,
}

impl StoredText {
    /// What pgfleet would have stored for `query`: as given, unless it may
    /// carry credentials, then normalized (every literal `$n`). A text
    /// pgfleet cannot analyse (the old system also recorded syntax errors)
    /// cannot be cleared, so it is stored normalized too, or withheld when
    /// even that fails.
    pub async fn of(query: &str) -> Self {
        let analysis = match crate::query::parser::analyze(query).await {
            Ok(Ok(analysis)) => analysis,
            Ok(Err(_)) | Err(_) => {
                let normalized = pgfleet_sqlcheck::replace_literals(query).unwrap_or_else(|_| {
                    "-- withheld by import-legacy: the text neither parses nor scans".to_owned()
                });
                return Self {
                    query: normalized,
                    redacted: true,
                    fingerprint: String::new(),
                    statement_classes: Vec::new(),
                };
            }
        };
        let redacted = analysis.may_carry_credentials();
        let mut statement_classes: Vec<String> = Vec::new();
        for statement in &analysis.statements {
            let name = crate::query::audited::class_name(statement.class);
            if !statement_classes.iter().any(|known| known == name) {
                statement_classes.push(name.to_owned());
            }
        }
        Self {
            query: if redacted {
                analysis.normalized.clone()
            } else {
                query.to_owned()
            },
            redacted,
            fingerprint: analysis.fingerprint.to_string(),
            statement_classes,
        }
    }
}

/// The audit record of `row`, run by `actor` with `role`; `None` when the
/// row has no `created_at` (its time cannot be kept, so it is not made up).
pub fn imported_record(
    row: &LegacyQuery,
    text: StoredText,
    actor: RecordActor,
    role: Role,
) -> Option<ClosedRecord> {
    let at = row.created_at?;
    let outcomes = outcomes(&row.cloud_results, &row.database_name);
    let status = if outcomes.is_empty() {
        if row.overall_success {
            Status::Succeeded
        } else {
            Status::Failed
        }
    } else {
        Status::from_outcomes(&outcomes)
    };
    let (scope, targets) = match row.execution_mode.as_str() {
        "both" => (
            TargetScope::AllClouds,
            outcomes.iter().map(|o| o.target.clone()).collect(),
        ),
        cloud => (
            TargetScope::Cloud,
            vec![RecordedTarget {
                cloud: cloud.to_owned(),
                database: row.database_name.clone(),
            }],
        ),
    };
    Some(ClosedRecord {
        // The id the old system gave its client stays the record's id.
        id: row.id,
        kind: Kind::ImportedQuery,
        actor,
        role,
        query: text.query,
        query_redacted: text.redacted,
        fingerprint: text.fingerprint,
        statement_classes: text.statement_classes,
        database: row.database_name.clone(),
        scope,
        targets,
        // The old system wrote its row once, after the clouds answered:
        // that one time is both ends.
        started_at: Some(at),
        finished_at: Some(at),
        status,
        success: row.overall_success,
        outcomes,
    })
}

/// One outcome per cloud of `cloud_results`, in cloud name order. Result
/// rows are never kept: only success, command tags, row counts, duration
/// and the error.
pub fn outcomes(cloud_results: &Value, database: &str) -> Vec<RecordedOutcome> {
    let Some(clouds) = cloud_results.as_object() else {
        return Vec::new();
    };
    clouds
        .iter()
        .map(|(cloud, result)| {
            let success = result.get("success").and_then(Value::as_bool).unwrap_or(false);
            // One result object per statement, or one for the whole text.
            let statements: Vec<&Value> = match result.get("result") {
                Some(Value::Array(each)) => each.iter().collect(),
                Some(one @ Value::Object(_)) => vec![one],
                _ => Vec::new(),
            };
            let command_tags = statements
                .iter()
                .filter_map(|s| s.get("command").and_then(Value::as_str))
                .map(str::to_owned)
                .collect();
            let rows_affected = statements
                .iter()
                .filter_map(|s| s.get("rowCount").and_then(Value::as_u64))
                .sum();
            let duration_micros = result
                .get("duration_ms")
                .and_then(Value::as_f64)
                .filter(|ms| ms.is_finite() && *ms >= 0.0)
                .map_or(0, |ms| (ms * 1000.0).round() as u64);
            let error = match result.get("error") {
                None | Some(Value::Null) => None,
                Some(Value::String(message)) => Some(RecordedError {
                    code: "ERROR_CODE_UNKNOWN".to_owned(),
                    message: message.clone(),
                    ..RecordedError::default()
                }),
                Some(other) => Some(RecordedError {
                    code: "ERROR_CODE_UNKNOWN".to_owned(),
                    message: other
                        .get("message")
                        .and_then(Value::as_str)
                        .map_or_else(|| other.to_string(), str::to_owned),
                    // node-postgres puts the SQLSTATE in `code`.
                    sqlstate: other
                        .get("code")
                        .and_then(Value::as_str)
                        .filter(|code| code.len() == 5)
                        .unwrap_or_default()
                        .to_owned(),
                    ..RecordedError::default()
                }),
            };
            RecordedOutcome {
                target: RecordedTarget {
                    cloud: cloud.clone(),
                    database: database.to_owned(),
                },
                success,
                command_tags,
                rows_affected,
                duration_micros,
                error: if success { None } else { error },
                outcome_unknown: false,
                failed_statement_index: None,
                replica: String::new(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn cloud_results_become_outcomes_without_rows() {
        let results = json!({
            "gcp": {"success": false, "error": "relation \"users\" does not exist", "duration_ms": 12},
            "aws": {"success": true, "duration_ms": 45.4, "statementCount": 1,
                    "result": {"rows": [{"secret": "x"}], "rowCount": 2, "command": "UPDATE"}},
        });
        let recorded = outcomes(&results, "db1");
        assert_eq!(recorded.len(), 2);
        let aws = &recorded[0];
        assert_eq!(
            (aws.target.cloud.as_str(), aws.target.database.as_str()),
            ("aws", "db1")
        );
        assert!(aws.success && aws.error.is_none());
        assert_eq!(aws.command_tags, ["UPDATE"]);
        assert_eq!((aws.rows_affected, aws.duration_micros), (2, 45_400));
        let gcp = &recorded[1];
        assert!(!gcp.success);
        assert_eq!(
            gcp.error.as_ref().map(|e| e.message.as_str()),
            Some("relation \"users\" does not exist")
        );
        assert_eq!(gcp.duration_micros, 12_000);
        assert!(outcomes(&json!(null), "db1").is_empty());
        let per_statement = outcomes(
            &json!({"aws": {"success": false, "error": {"message": "boom", "code": "23505"},
                            "result": [{"command": "INSERT", "rowCount": 1}, {"command": "DELETE", "rowCount": 3}]}}),
            "db1",
        );
        assert_eq!(per_statement[0].command_tags, ["INSERT", "DELETE"]);
        assert_eq!(per_statement[0].rows_affected, 4);
        assert_eq!(
            per_statement[0].error.as_ref().map(|e| e.sqlstate.as_str()),
            Some("23505")
        );
    }

    #[test]
    fn passwords_are_scrubbed_and_never_described() {
        let source = LegacySource::parse("postgres://old:s3cr%40t@db.example:6543/history").expect("parses");
        assert_eq!(source.describe(), "db.example:6543/history");
        assert!(!format!("{source:?}").contains("s3cr"));
        assert_eq!(source.password, ["s3cr@t", "s3cr%40t"]);
        assert_eq!(
            scrub("auth failed for s3cr@t", &source.password),
            "auth failed for <redacted>"
        );
        assert!(matches!(
            LegacySource::parse("mysql://x"),
            Err(LegacyError::Url(_))
        ));
        let bad_port = LegacySource::parse("postgres://old:pw-in-url@db.example:port/history");
        assert!(
            matches!(&bad_port, Err(LegacyError::Url(why)) if !why.contains("pw-in-url")),
            "{bad_port:?}"
        );
    }

    #[test]
    fn null_activity_is_inactive_and_roles_map() {
        let user = LegacyUser {
            id: 1,
            username: "a".to_owned(),
            email: "a@x".to_owned(),
            name: None,
            password_hash: "$2a$10$x".to_owned(),
            role: "READER".to_owned(),
            is_active: None,
            created_at: None,
            last_login: None,
        };
        assert!(!user.active());
        assert_eq!(user.role(), Some(Role::Reader));
        assert!(!format!("{user:?}").contains("$2a$"));
    }
}
