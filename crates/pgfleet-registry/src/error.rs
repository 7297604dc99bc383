//! What the registry can fail with, in the caller's terms.

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
    /// A non-transient failure while connecting (bad password, unknown database…).
    #[error("{target} ({member}) refused the connection: {source}")]
    Connect {
        target: Target,
        member: Member,
        #[source]
        source: sqlx::Error,
    },
}
