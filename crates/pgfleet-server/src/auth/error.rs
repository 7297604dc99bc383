//! Everything that can go wrong while authenticating a call or managing
//! users and keys. Mapped to `tonic::Status` in [`crate::status`] only.

use std::time::Duration;

use crate::telemetry::metrics::RefusalReason;

/// An authentication, authorization or account-management failure.
///
/// Messages are shown to callers: none of them carries a password, token,
/// key secret or hash, and store errors keep their detail for the log only.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No credentials, or credentials that do not identify anyone (bad or
    /// expired token, revoked key, deactivated user).
    #[error("{0}")]
    Unauthenticated(&'static str),
    /// Authenticated, but the role or allow-list does not cover the call.
    #[error("{0}")]
    PermissionDenied(String),
    /// A request field is wrong; `field` is its protobuf name (with an index
    /// for repeated fields, e.g. `allowed_targets[1].cloud`).
    #[error("{field}: {message}")]
    InvalidArgument { field: String, message: String },
    /// A unique field is taken.
    #[error("{field} {value:?} is already taken")]
    AlreadyExists { field: &'static str, value: String },
    /// The named user or key does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request is valid but the current state forbids it (last MASTER,
    /// password change through an API key, ...).
    #[error("{0}")]
    FailedPrecondition(String),
    /// Too many login attempts; retry after the delay.
    #[error(
        "too many failed logins for this {scope}; retry in {}s",
        retry_after.as_millis().div_ceil(1000).max(1)
    )]
    RateLimited {
        scope: &'static str,
        retry_after: Duration,
    },
    /// The session store (Redis) cannot be reached. Never a reason to let a
    /// call through.
    #[error("the session store is unavailable; retry shortly")]
    SessionStoreUnavailable(#[source] SessionStoreError),
    /// The history store (users, keys) cannot be reached.
    #[error("the user store is unavailable; retry shortly")]
    UserStoreUnavailable(#[source] sqlx::Error),
    /// A bug or an unexpected state; details are logged, not returned.
    #[error("internal error: {0}")]
    Internal(String),
}

impl AuthError {
    /// Shorthand for [`AuthError::InvalidArgument`].
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl From<sqlx::Error> for AuthError {
    fn from(error: sqlx::Error) -> Self {
        match &error {
            unreachable if pgfleet_registry::is_unreachable(unreachable) => {
                AuthError::UserStoreUnavailable(error)
            }
            sqlx::Error::Database(_)
            | sqlx::Error::RowNotFound
            | sqlx::Error::ColumnDecode { .. }
            | sqlx::Error::ColumnNotFound(_)
            | sqlx::Error::Decode(_)
            | sqlx::Error::TypeNotFound { .. } => AuthError::Internal(format!("user store: {error}")),
            _ => AuthError::UserStoreUnavailable(error),
        }
    }
}

impl From<SessionStoreError> for AuthError {
    fn from(error: SessionStoreError) -> Self {
        AuthError::SessionStoreUnavailable(error)
    }
}

/// A call the auth gate refused: the error the caller gets, and what the
/// log and the metrics say about it.
#[derive(Debug)]
pub struct Refusal {
    pub error: AuthError,
    /// Why, when the caller's credentials or rights are the cause; `None`
    /// for failures of pgfleet's own (a store down, a bug).
    pub reason: Option<RefusalReason>,
    /// Who, as far as known and safe to log (`user:alice`,
    /// `api_key:billing`); never a token, secret or password.
    pub who: Option<String>,
}

impl Refusal {
    pub fn new(error: AuthError, reason: RefusalReason) -> Self {
        Self {
            error,
            reason: Some(reason),
            who: None,
        }
    }

    /// The same refusal, naming who was refused.
    pub fn by(mut self, who: impl Into<String>) -> Self {
        self.who = Some(who.into());
        self
    }
}

impl From<AuthError> for Refusal {
    fn from(error: AuthError) -> Self {
        Self {
            error,
            reason: None,
            who: None,
        }
    }
}

/// Why the session store failed.
#[derive(Debug, thiserror::Error)]
pub enum SessionStoreError {
    /// Redis did not answer (no connection, a failed command, a timeout).
    #[error(transparent)]
    Redis(#[from] crate::redis_pool::RedisPoolError),
    /// A script answered something it never returns.
    #[error("unexpected Redis reply: {0}")]
    UnexpectedReply(String),
    /// A stored session could not be decoded.
    #[error("malformed session record: {0}")]
    Malformed(#[from] serde_json::Error),
}
