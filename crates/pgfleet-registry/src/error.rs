//! What the registry can fail with, in the caller's terms.

use pgfleet_config::SslMode;

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
    /// A non-transient failure while connecting (bad password, unknown database…).
    #[error("{target} ({member}) refused the connection: {source}")]
    Connect {
        target: Target,
        member: Member,
        #[source]
        source: sqlx::Error,
    },
}
