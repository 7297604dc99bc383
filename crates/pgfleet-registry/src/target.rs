//! Names of the things the registry holds.

use std::fmt;

use serde::Serialize;

/// One database in one cloud: what a query runs on.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Target {
    /// Cloud name from the config (`aws`).
    pub cloud: String,
    /// Database name from the config (`db1`).
    pub database: String,
}

impl Target {
    /// A target from its two names.
    pub fn new(cloud: impl Into<String>, database: impl Into<String>) -> Self {
        Self {
            cloud: cloud.into(),
            database: database.into(),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.cloud, self.database)
    }
}

/// One server behind a target: its primary or one of its replicas.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Member {
    /// The read-write primary.
    Primary,
    /// A read replica, by its configured name.
    Replica(String),
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Member::Primary => f.write_str("primary"),
            Member::Replica(name) => write!(f, "replica {name}"),
        }
    }
}

/// What a connection will be used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Anything that may write: the member that is primary now (the
    /// configured primary, or a replica promoted since), checked on the
    /// connection itself.
    Write,
    /// A read: follows the database's `read_preference`.
    Read,
    /// A read by a READER: like `Read`, but through the database's
    /// `reader_user` login when one is configured, so PostgreSQL's own
    /// privileges forbid writes whatever the statement does. The login is
    /// refused when privileged ([`crate::login_privileges`]), checked on
    /// this checkout.
    ReaderLogin,
    /// [`Route::ReaderLogin`] for a caller that checks the login itself in
    /// the first message it sends on the connection
    /// ([`crate::login_privileges_columns`]) and runs nothing of the
    /// caller's if it is privileged: the query path, which saves a round
    /// trip per call so.
    ReaderLoginCheckedByCaller,
}
