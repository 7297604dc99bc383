//! What the registry can fail with, in the caller's terms.

use pgfleet_config::SslMode;

use crate::privileges::LoginPrivileges;
use crate::target::{Member, Target};

/// Why no connection could be handed out.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// No such (cloud, database) in the configuration.
    #[error("no database {database:?} in cloud {cloud:?}")]
    UnknownTarget { cloud: String, database: String },
    /// The server could not be reached within the retry budget.
    #[error("{target} ({member}) is unavailable after {attempts} attempt(s): {message}")]
    Unavailable {
        target: Target,
        member: Member,
        attempts: u32,
        /// The driver's last error; never holds a password (sqlx does not
        /// echo connect options).
        message: String,
    },
    /// The TLS handshake with the server failed (certificate not signed by
    /// `ssl_root_cert`, wrong host name, server without TLS…). Not retried:
    /// the same certificate fails the same way.
    #[error("{target} ({member}): TLS to PostgreSQL failed (sslmode {}): {reason}", sslmode.as_str())]
    Tls {
        target: Target,
        member: Member,
        sslmode: SslMode,
        /// rustls' or sqlx's reason; names no secret.
        reason: String,
    },
    /// A READER's execution needs the database's `reader_user`, and none is
    /// configured: it would otherwise run under the main login, which may
    /// be a superuser.
    #[error(
        "READER executions on {target} are refused: the database has no reader_user. Create a login \
         without superuser, CREATEROLE, REPLICATION, BYPASSRLS or membership in pg_read_server_files, \
         pg_write_server_files, pg_execute_server_program, pg_signal_backend, pg_read_all_data or \
         pg_read_all_stats, grant it CONNECT, USAGE \
         on the schemas and SELECT on the tables, and set reader_user (and reader_password) on database \
         {:?} of cloud {:?} (docs/SECURITY.md)", target.database, target.cloud
    )]
    NoReaderLogin { target: Target },
    /// The database's `reader_user` holds an attribute or a predefined role
    /// that reaches the server itself (files, programs, other backends) or
    /// escapes privileges.
    #[error(
        "READER executions on {target} are refused: its reader_user {:?} ({member}) holds {}; \
         configure as reader_user a login without superuser, CREATEROLE, REPLICATION, BYPASSRLS or \
         membership in pg_read_server_files, pg_write_server_files, pg_execute_server_program, \
         pg_signal_backend, pg_read_all_data or pg_read_all_stats (docs/SECURITY.md)", login.user, login.excess.join(", ")
    )]
    PrivilegedReaderLogin {
        target: Target,
        member: Member,
        /// Boxed: keeps every `Result<_, RegistryError>` small.
        login: Box<LoginPrivileges>,
    },
    /// Writes need a primary, and every member answered as a standby in
    /// recovery (the configuration names only standbys, or a promotion is
    /// under way). When a member could not be reached, its own error is
    /// returned instead.
    #[error(
        "{target} has no writable member: every member that answered is in recovery (a standby); \
         writes resume once one is promoted"
    )]
    NoWritableMember { target: Target },
    /// Every connection of the member's pool stayed in use for the pool's
    /// whole `acquire_timeout`: the target is busy, not down. Not retried
    /// (another wait would only double the caller's); the caller may retry
    /// later or raise `pool.max_connections`.
    #[error(
        "{target} ({member}): all {max_connections} connections of its pool stayed busy for {waited:?}; \
         retry later or raise pool.max_connections"
    )]
    PoolExhausted {
        target: Target,
        member: Member,
        max_connections: u32,
        waited: std::time::Duration,
    },
    /// A non-transient failure while connecting (bad password, unknown database…).
    #[error("{target} ({member}) refused the connection: {source}")]
    Connect {
        target: Target,
        member: Member,
        #[source]
        source: sqlx::Error,
    },
}
