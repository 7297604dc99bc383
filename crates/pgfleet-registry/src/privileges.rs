//! What a login may do beyond its grants: the attributes and predefined
//! roles that let SQL reach the server itself (read or write its files, run
//! programs, signal other backends, read other sessions' statements), read
//! past every grant (`pg_read_all_data` reads `pg_authid`'s password
//! hashes), or escape privileges (superuser, CREATEROLE, REPLICATION,
//! BYPASSRLS).
//!
//! A READER's execution runs under the database's `reader_user` only when
//! that login has none of them, so reading `pg_authid` or calling
//! `pg_read_file` fails in PostgreSQL's own privilege check (42501), whatever
//! the statement classifier thought of the text.

use std::sync::LazyLock;

use sqlx::PgConnection;

/// The predefined roles a reader login must not be a member of (directly or
/// through other roles, inherited or not: `SET ROLE` reaches either).
/// `pg_monitor` is refused through `pg_read_all_stats`.
pub const READER_FORBIDDEN_ROLES: [&str; 6] = [
    "pg_read_server_files",
    "pg_write_server_files",
    "pg_execute_server_program",
    "pg_signal_backend",
    "pg_read_all_data",
    "pg_read_all_stats",
];

/// The session's login and what it holds of the above.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginPrivileges {
    /// `session_user`: the login itself, not a role set later.
    pub user: String,
    /// `SUPERUSER`, `CREATEROLE`, `REPLICATION`, `BYPASSRLS` and memberships
    /// in [`READER_FORBIDDEN_ROLES`], in that order; empty for an unprivileged
    /// login. A superuser lists only `SUPERUSER` (it holds everything).
    pub excess: Vec<String>,
}

impl LoginPrivileges {
    /// True when the login holds nothing a reader must not have.
    pub fn is_unprivileged(&self) -> bool {
        self.excess.is_empty()
    }
}

/// `session_user` and, as one `text[]`, what it holds of the above
/// ([`LoginPrivileges::excess`]), from `pg_roles` (readable by every login):
/// the columns of one row, to put after `SELECT` (the roles are
/// [`READER_FORBIDDEN_ROLES`], written in as literals: no caller input).
/// Shared by [`login_privileges`] and the query path's set-up message,
/// which checks a reader login in the round trip that begins its
/// transaction.
pub fn login_privileges_columns() -> &'static str {
    static COLUMNS: LazyLock<String> = LazyLock::new(|| {
        let roles = READER_FORBIDDEN_ROLES
            .iter()
            .map(|role| format!("'{role}'"))
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "(SELECT r.rolname::text FROM pg_catalog.pg_roles AS r WHERE r.rolname = session_user), \
             (SELECT pg_catalog.array_remove(ARRAY[\
             CASE WHEN r.rolsuper THEN 'SUPERUSER' END::text, \
             CASE WHEN r.rolcreaterole AND NOT r.rolsuper THEN 'CREATEROLE' END::text, \
             CASE WHEN r.rolreplication AND NOT r.rolsuper THEN 'REPLICATION' END::text, \
             CASE WHEN r.rolbypassrls AND NOT r.rolsuper THEN 'BYPASSRLS' END::text\
             ], NULL) || ARRAY(\
             SELECT p.name FROM pg_catalog.unnest(ARRAY[{roles}]::text[]) WITH ORDINALITY AS p(name, n) \
             WHERE NOT r.rolsuper AND pg_catalog.to_regrole(p.name) IS NOT NULL \
             AND pg_catalog.pg_has_role(r.oid, pg_catalog.to_regrole(p.name), 'MEMBER') ORDER BY p.n) \
             FROM pg_catalog.pg_roles AS r WHERE r.rolname = session_user)"
        )
    });
    // to_regrole: a predefined role this server version lacks is no risk.
    COLUMNS.as_str()
}

/// Reads the session login's attributes and memberships
/// ([`login_privileges_columns`]). One fixed statement, no caller input.
pub async fn login_privileges(connection: &mut PgConnection) -> Result<LoginPrivileges, sqlx::Error> {
    let (user, excess): (String, Vec<String>) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {}",
        login_privileges_columns()
    )))
    .fetch_one(connection)
    .await?;
    Ok(LoginPrivileges { user, excess })
}
