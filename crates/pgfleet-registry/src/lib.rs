//! One sqlx pool per fleet target (cloud, database) and per read replica,
//! with a background health monitor, retrying connection acquisition and
//! read routing.
//!
//! Pools are created lazily so the server starts and serves even when some
//! clouds are unreachable: those targets show as unhealthy and their
//! requests fail on their own, never the whole fleet.
//!
//! Invariant: this crate never runs a caller's statement. It hands out
//! connections; a statement that may have reached a server is the caller's
//! to report, never retried here.

mod error;
mod health;
mod monitor;
mod pools;
mod privileges;
mod read_only;
mod retry;
mod target;

pub use error::RegistryError;
pub use health::{HealthStatus, MemberHealth, ReplayLag, error_category};
pub use monitor::{HealthMonitor, probe_all};
pub use pools::{
    Checkout, LaggingReplica, Registry, Reloaded, STATEMENT_CACHE_CAPACITY, connect_options, pool_options,
};
pub use privileges::{LoginPrivileges, READER_FORBIDDEN_ROLES, login_privileges, login_privileges_columns};
pub use read_only::{
    ReadOnlyError, begin_bounded, begin_read_only, discard_session, reset_session, statement_timeout_setting,
};
pub use retry::{Backoff, is_transient, is_unreachable};
pub use target::{Member, Route, Target};
