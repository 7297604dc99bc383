//! `BackupError`: what went wrong, in the caller's terms, and its one
//! mapping to a `RequestError` (so to a gRPC status).

use pgfleet_engine::RequestError;
use pgfleet_engine::audit::AuditError;

/// A backup call refused or failed as a whole (per-target failures of a run
/// are events, not errors).
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// A request field that cannot be used, named as the request names it.
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    /// The object changed since the caller read it (policy revision).
    #[error("{0}")]
    Aborted(String),
    /// The state of the target or of the backup does not allow it (a
    /// non-empty restore target without confirmation, a corrupted object,
    /// a wrong key, a `pg_dump` older than the server).
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    PermissionDenied(String),
    /// The object store or a target cannot be reached.
    #[error("{0}")]
    Unavailable(String),
    /// pgfleet's own history store.
    #[error("history store: {0}")]
    HistoryStore(#[from] sqlx::Error),
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error("internal error: {0}")]
    Internal(String),
}

impl BackupError {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// An object store failure: the storage is unreachable, full or refuses.
    pub fn storage(what: &str, error: &object_store::Error) -> Self {
        match error {
            object_store::Error::NotFound { .. } => {
                Self::NotFound(format!("{what}: not in the backup storage"))
            }
            other => Self::Unavailable(format!("backup storage: {what}: {other}")),
        }
    }
}

impl From<BackupError> for RequestError {
    fn from(error: BackupError) -> Self {
        match error {
            BackupError::Invalid { field, reason } => RequestError::invalid(field, reason),
            BackupError::NotFound(message) => RequestError::NotFound(message),
            BackupError::AlreadyExists(message) => RequestError::AlreadyExists(message),
            BackupError::Aborted(message) => RequestError::Aborted(message),
            BackupError::FailedPrecondition(message) => RequestError::FailedPrecondition(message),
            BackupError::PermissionDenied(message) => RequestError::PermissionDenied(message),
            BackupError::Unavailable(message) => RequestError::Unavailable(message),
            BackupError::HistoryStore(error) => RequestError::history_store(error),
            BackupError::Audit(error) => RequestError::from(error),
            BackupError::Internal(message) => RequestError::Internal(message),
        }
    }
}
