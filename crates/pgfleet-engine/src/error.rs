//! Why a request cannot be served as a whole. Per-target failures are not
//! errors of the call; they are reported in that target's outcome
//! ([`crate::query::TargetFailure`]). The server maps each variant to one gRPC
//! status code, in one place.

use pgfleet_registry::RegistryError;

use crate::audit::AuditError;

/// Why a data-plane request was refused before or instead of running.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// A request field is wrong; `field` is its protobuf path
    /// (`targets[1].cloud`, `pg_schema`).
    #[error("{field}: {message}")]
    InvalidArgument { field: String, message: String },
    /// A named cloud, database or target does not exist in the config, or
    /// a named object (replication job) does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The object to create (or a new name) is taken.
    #[error("{0}")]
    AlreadyExists(String),
    /// The caller's role or API key allow-list does not cover this.
    #[error("{0}")]
    PermissionDenied(String),
    /// Valid, but the state forbids it (e.g. dangerous statements without
    /// confirmation).
    #[error("{0}")]
    FailedPrecondition(String),
    /// A concurrent change got there first; reading again and retrying
    /// may succeed.
    #[error("{0}")]
    Aborted(String),
    /// A server-wide bound is reached (too many texts waiting for the SQL
    /// check); retrying later may succeed.
    #[error("{0}")]
    ResourceExhausted(String),
    /// A dependency (target database, history store) cannot be reached.
    #[error("{0}")]
    Unavailable(String),
    /// A bug or an unexpected state; details are logged, not returned.
    #[error("internal error: {0}")]
    Internal(String),
}

impl RequestError {
    /// Shorthand for [`RequestError::InvalidArgument`].
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl From<RegistryError> for RequestError {
    fn from(error: RegistryError) -> Self {
        match error {
            unknown @ RegistryError::UnknownTarget { .. } => RequestError::NotFound(unknown.to_string()),
            refused @ (RegistryError::NoReaderLogin { .. } | RegistryError::PrivilegedReaderLogin { .. }) => {
                RequestError::FailedPrecondition(refused.to_string())
            }
            busy @ RegistryError::PoolExhausted { .. } => RequestError::ResourceExhausted(busy.to_string()),
            other => RequestError::Unavailable(other.to_string()),
        }
    }
}

impl From<AuditError> for RequestError {
    fn from(error: AuditError) -> Self {
        match error {
            AuditError::TimedOut(_) => RequestError::Unavailable(format!("history store: {error}")),
            AuditError::Store(error) => RequestError::history_store(error),
            AuditError::KeyRequired { .. }
            | AuditError::UnknownKey { .. }
            | AuditError::Unkeyed
            | AuditError::HeadUnverified(_) => RequestError::FailedPrecondition(error.to_string()),
            AuditError::Key(_) => RequestError::Internal(error.to_string()),
        }
    }
}

impl RequestError {
    /// A failed history store statement: UNAVAILABLE when the store could not
    /// be reached, INVALID_ARGUMENT when the request's text holds a NUL byte
    /// (PostgreSQL takes none in a text value, and protobuf strings may hold
    /// one: the request fuzzer found `ListExecutions` with a filter of
    /// `"\0"` answering INTERNAL), INTERNAL otherwise.
    pub fn history_store(error: sqlx::Error) -> RequestError {
        if holds_nul_byte(&error) {
            RequestError::invalid(
                "request",
                "a text field holds a NUL byte (U+0000), which pgfleet cannot store or search for",
            )
        } else if pgfleet_registry::is_unreachable(&error) {
            RequestError::Unavailable(format!("history store unavailable: {error}"))
        } else {
            RequestError::Internal(format!("history store: {error}"))
        }
    }
}

/// SQLSTATE 22021 (`character_not_in_repertoire`): "invalid byte sequence for
/// encoding UTF8: 0x00", PostgreSQL's answer to a NUL byte in a text parameter
/// (the only byte of valid UTF-8 it refuses).
fn holds_nul_byte(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .and_then(|e| e.code())
        .is_some_and(|code| code == "22021")
}
